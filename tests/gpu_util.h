/* Helpers for the GPU tests: skip without a device (exit 77), device
 * buffers, and the CPU reference of a layer with the magnitude bound each
 * GPU element is checked against. */
#ifndef CONDCONV_GPU_UTIL_H
#define CONDCONV_GPU_UTIL_H

#include <stddef.h>

#include <cuda_runtime.h>

#include "test_util.h"

/* Exits with TU_SKIP (77) and says so when no CUDA device is usable. */
void tu_require_gpu(const char *test_name);

/* Aborts the test (exit 1) on a CUDA error: the harness itself is broken. */
#define TU_CUDA(call) tu_cuda_check((call), #call, __FILE__, __LINE__)
void tu_cuda_check(cudaError_t err, const char *call, const char *file, int line);

float *tu_dev_alloc(size_t count); /* count floats, 256-byte aligned */
void *tu_dev_alloc_bytes(size_t bytes);
void tu_to_dev(float *dst, const float *src, size_t count);
void tu_to_host(float *dst, const float *src, size_t count);
void tu_dev_poison(float *dst, size_t count); /* all NaN: unwritten outputs fail */

/* The CPU reference for a layer: y_ref [N][Cout][Ho][Wo], alpha_ref [N][E]
 * (either may be NULL), and mag: the same forward on |x|, |W|, |b|, |alpha|
 * without activation, i.e. sum |w_i x_i| + |b| per output, the scale of the
 * rounding error of any order of summation. alpha_in is used for external
 * routing. Returns 0 on success. */
int tu_reference(const tu_layer_spec *spec, const tu_params *params, int n, int h, int w, const float *x,
                 const float *alpha_in, float *y_ref, float *mag, float *alpha_ref);

#endif
