/* Device scratch buffers for planning (algorithm search, measurement):
 * allocated on demand, grown when a larger size is asked for, filled with a
 * non-zero pattern, and freed when the plan is made. Never used by forward. */
#ifndef CONDCONV_HOST_SCRATCH_H
#define CONDCONV_HOST_SCRATCH_H

#include <stddef.h>

#include <cuda_runtime.h>

#include "condconv.h"

enum { CC_SCRATCH_X, CC_SCRATCH_Y, CC_SCRATCH_W, CC_SCRATCH_ALPHA, CC_SCRATCH_WORKSPACE, CC_SCRATCH_SLOTS };

typedef struct cc_scratch {
    cudaStream_t stream;
    void *ptr[CC_SCRATCH_SLOTS];
    size_t bytes[CC_SCRATCH_SLOTS];
} cc_scratch;

/* At least `bytes` bytes of slot `slot` (a valid pointer even for 0 bytes). */
condconv_status cc_scratch_get(cc_scratch *scratch, int slot, size_t bytes, void **out, const char *func);
void cc_scratch_free(cc_scratch *scratch);

#endif
