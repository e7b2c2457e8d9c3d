/* Planning scratch memory (see scratch.h). */
#include "scratch.h"

#include "cuda_status.h"
#include "error.h"

condconv_status cc_scratch_get(cc_scratch *scratch, int slot, size_t bytes, void **out, const char *func)
{
    if (bytes < 256) bytes = 256;
    if (scratch->bytes[slot] < bytes) {
        if (scratch->ptr[slot]) (void)cudaFree(scratch->ptr[slot]);
        scratch->ptr[slot] = NULL;
        scratch->bytes[slot] = 0;
        CC_CUDA_TRY(cudaMalloc(&scratch->ptr[slot], bytes), func);
        scratch->bytes[slot] = bytes;
        /* 0x3c3c3c3c is about 0.0115f: finite, non-zero data, so that no
         * algorithm is timed on zeros or NaNs. */
        CC_CUDA_TRY(cudaMemsetAsync(scratch->ptr[slot], 0x3c, bytes, scratch->stream), func);
    }
    *out = scratch->ptr[slot];
    return CONDCONV_STATUS_SUCCESS;
}

void cc_scratch_free(cc_scratch *scratch)
{
    /* cudaFree synchronises the device, so work that used the buffers is done. */
    for (int i = 0; i < CC_SCRATCH_SLOTS; ++i) {
        if (scratch->ptr[i]) (void)cudaFree(scratch->ptr[i]);
        scratch->ptr[i] = NULL;
        scratch->bytes[i] = 0;
    }
}
