/* cudaMallocHost and cudaFreeHost for programs linked against the CPU
 * execution layer's emulated runtime (tests/cuda_cpu), which has no pinned
 * memory to give: device memory there is host memory already, so plain
 * malloc/free behave as pinned allocations do for cudaMemcpyAsync. Weak, so
 * that a definition in the emulated runtime itself takes precedence. Used by
 * the emulated build of examples/condconv_server.c (example_server_emu). */
#include <cuda_runtime.h>
#include <stdlib.h>

__attribute__((weak)) cudaError_t cudaMallocHost(void **ptr, size_t size)
{
    if (ptr == NULL) return cudaErrorInvalidValue;
    *ptr = malloc(size ? size : 1);
    return *ptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

__attribute__((weak)) cudaError_t cudaFreeHost(void *ptr)
{
    free(ptr);
    return cudaSuccess;
}
