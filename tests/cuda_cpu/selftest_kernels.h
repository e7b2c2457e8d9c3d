/* Launchers of the CPU execution layer's self-test kernels
 * (selftest_kernels.cu), for test_emu_layer.c. */
#ifndef CONDCONV_SELFTEST_KERNELS_H
#define CONDCONV_SELFTEST_KERNELS_H

#include <stddef.h>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Results per thread of st_warp_ops (64 threads): 5 shuffles x 6 widths,
 * then 13 more operations. */
#define ST_WARP_RESULTS (5 * 6 + 13)

cudaError_t st_warp_ops(unsigned *out);
cudaError_t st_atomics(unsigned *counters, float *sum, int *maxv, unsigned *wrap, int blocks);
cudaError_t st_unwritten_shared(unsigned *out);
cudaError_t st_half(const float *x, float *y);
/* a: 32x16 (row-major), b: 16x32 (column-major) of half, bfloat16 and
 * (16x8, 8x16) float for tf32; c: 32x32 floats; d: 5 * 256 floats. */
cudaError_t st_wmma(const void *ah, const void *bh, const void *ab, const void *bb, const float *af, const float *bf,
                    const float *c, float *d);
cudaError_t st_big_dynamic(float *out, int words, int opt_in);
cudaError_t st_big_static(float *out, size_t dynamic_bytes);
cudaError_t st_handoff(float *x, unsigned *flag, float *out, int ordered);
/* A kernel compiled with __launch_bounds__(64), launched with `threads`. */
cudaError_t st_bounded(float *out, int threads, unsigned grid_y);

/* <cuda_pipeline.h>: mode 0 right, 1 stale read (out: the NaN fill), 2 never
 * waited, 3 misaligned destination, 4 destination not shared memory, 5 no
 * barrier after the wait (TSan); src and out 512 floats. */
cudaError_t st_pipeline(const float *src, float *out, int mode);

/* The wrong kernels. */
enum {
    ST_MISALIGNED_LDG,
    ST_MISALIGNED_PLAIN,
    ST_DIVERGENT_BARRIER,
    ST_EARLY_RETURN,
    ST_DEADLOCK,
    ST_SHUFFLE_OUTSIDE_MASK,
    ST_PARTIAL_WARP,
    ST_SPIN,
    ST_SHARED_OVERRUN,
    ST_MISSING_BARRIER,
    ST_WARP_ORDER_SHUFFLE,
    ST_WARP_ORDER_SYNCWARP,
    ST_WMMA_MISALIGNED,
    ST_GLOBAL_OVERRUN, /* n: the first index written (32 floats) */
    ST_WMMA_TF32_UNROUNDED
};
cudaError_t st_wrong(int which, float *x, float *out, int n);

#ifdef __cplusplus
}
#endif

#endif
