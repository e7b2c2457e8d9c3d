/* The kernels of the backward's mixture algorithm (issue 20;
 * host/backward_plan.h says how the algorithm runs). The experts are one
 * static convolution with E*Cout filters, ordered [g][E][Cout/g] as the
 * forward's mixture algorithm orders them (cc_weights.dev_experts_grouped),
 * so that no per-sample filter and no per-sample filter gradient is ever
 * formed:
 *   - dy_mix[b][(g, e, c')] = alpha[b][e] dy[b][(g, c')]: the gradient of
 *     the stacked convolution's output z, since y_b = sum_e alpha_be z_be;
 *     cuDNN's static backward data (dx) and backward filter (the stacked
 *     filters' gradient, which is d_experts) then read it;
 *   - d_alpha[b][e] = <z_be, dy_b> (+ <bias_e, dysum_b>), z the stacked
 *     convolution's forward output;
 *   - the stacked filters' gradient, in the grouped order and the dtype
 *     cuDNN writes, into d_experts [E][Cout][Cin/g][kh][kw] f32.
 * Channel (g, e, c') of the stacked tensors is (g * E + e) * (Cout / g) + c',
 * the source channel (g, c') of dy is g * (Cout / g) + c' (cc_launch_mixture_combine's
 * order, kernels/epilogue.h). Every output is written, not accumulated, and
 * summed in a fixed order without atomics: bitwise reproducible. */
#ifndef CONDCONV_KERNELS_BACKWARD_MIXTURE_H
#define CONDCONV_KERNELS_BACKWARD_MIXTURE_H

#include <stddef.h>

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dy [N][Cout][plane] (CC_LAYOUT_NCHW) or [N][plane][Cout] (CC_LAYOUT_NHWC)
 * in `dtype`; alpha [N][E] f32; dy_mix [N][E*Cout][plane] or
 * [N][plane][E*Cout] in `dtype`, every element written:
 *   dy_mix[b][(g, e, c')][p] = round(alpha[b][e] * dy[b][(g, c')][p])
 * (the product in f32, rounded once to the dtype). 1 <= e <= 128, groups
 * divides cout. cudaErrorInvalidValue for bad sizes or NULL pointers. */
cudaError_t cc_launch_bwd_mixture_scale_dy(int dtype, int layout, const void *dy, const float *alpha, void *dy_mix,
                                           int n, int cout, int groups, int e, long long plane, cudaStream_t stream);

/* Floats of scratch cc_launch_bwd_mixture_dalpha needs for these sizes (its
 * split over the plane; 0 for sizes it refuses). */
size_t cc_bwd_mixture_dalpha_scratch_elems(int n, int cout, int e, long long plane);

/* z [N][E*Cout][plane] or [N][plane][E*Cout] (the stacked order above) and
 * dy [N][Cout][plane] or [N][plane][Cout], both in `dtype` and `layout`;
 * bias [E][Cout] f32 and dysum [N][Cout] f32, or both NULL. d_alpha [N][E]
 * f32, written:
 *   d_alpha[b][e] = sum over c', g, p of z[b][(g, e, c')][p] * dy[b][(g, c')][p]
 *                   + (bias ? sum_c bias[e][c] * dysum[b][c] : 0)
 * products and sums in f32, in a fixed order (split over the plane into
 * per-split partials in scratch, then summed in split order).
 * scratch: cc_bwd_mixture_dalpha_scratch_elems floats. */
cudaError_t cc_launch_bwd_mixture_dalpha(int dtype, int layout, const void *z, const void *dy, const float *bias,
                                         const float *dysum, float *d_alpha, float *scratch, int n, int cout,
                                         int groups, int e, long long plane, cudaStream_t stream);

/* The stacked filters' gradient into the experts' gradient:
 * dw_grouped in `dtype`, [g][E][Cout/g][Cin/g][kh][kw] (nhwc_filters == 0)
 * or [g][E][Cout/g][kh][kw][Cin/g] (nhwc_filters != 0, cuDNN's NHWC filter
 * order); d_experts [E][Cout][Cin/g][kh][kw] f32, every element written
 * (an exact conversion). */
cudaError_t cc_launch_bwd_mixture_filters(int dtype, int nhwc_filters, const void *dw_grouped, float *d_experts, int e,
                                          int cout, int cin_per_group, int kh, int kw, int groups, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
