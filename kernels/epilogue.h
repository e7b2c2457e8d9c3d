/* Epilogues after a convolution: per-sample bias + activation in place, and
 * the mixture-of-experts combination sum_e alpha_e y_e + bias, activation. */
#ifndef CONDCONV_KERNELS_EPILOGUE_H
#define CONDCONV_KERNELS_EPILOGUE_H

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dst = act(src + bias[n][o]) for a [N][Cout][plane] output, elements in
 * `dtype` (f32 arithmetic, one rounding), bias [N][Cout] f32 or NULL
 * (activation only). src is in src_layout and dst in dst_layout (CC_LAYOUT_*:
 * [N][Cout][plane] or [N][plane][Cout]); src == dst (in place) needs equal
 * layouts, and NCHW -> NHWC transposes (how an algorithm that computes in
 * NCHW hands an NHWC layer its output). NHWC -> NCHW is refused. */
cudaError_t cc_launch_bias_activation(int dtype, int src_layout, const void *src, int dst_layout, void *dst,
                                      const float *bias, int n, int cout, long long plane, int act,
                                      cudaStream_t stream);

/* z, the output of a static grouped conv with E*Cout filters ordered
 * [g][E][Cout/g], -> y:
 *   y[n][o][p] = act(sum_e alpha[n][e] * (z[n][g*E*Cg + e*Cg + o%Cg][p] + bias[e][o]))
 * with g = o / Cg, Cg = Cout/groups. z and y in `dtype` and `layout`
 * (NCHW: z [N][E*Cout][plane], y [N][Cout][plane]; NHWC: z [N][plane][E*Cout],
 * y [N][plane][Cout]); alpha [N][E] and bias [E][Cout] (may be NULL) f32. */
cudaError_t cc_launch_mixture_combine(int dtype, int layout, const void *z, const float *alpha, const float *bias,
                                      void *y, int n, int cout, int groups, int e, long long plane, int act,
                                      cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
