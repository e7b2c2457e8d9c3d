/* The backward's folded weight gradient (issue 20; host/backward_plan.h
 * says how the folded_wgrad algorithm runs). One implicit GEMM over N x
 * output pixels gives the experts' gradients and the routing weights'
 * gradients without any per-sample filter gradient reaching memory:
 *   G_b[co][r]   = sum_p dy_b[co][p] * xcol_b[r][p]   (a tile of it, on chip)
 *   d_experts[e] = sum_b alpha[b][e] G_b               (E accumulators per tile)
 *   d_alpha[b][e] = <experts[e], G_b> (+ <bias_e, dysum_b>)
 * r = (ci', kh, kw) of one group (Cin/g x kh x kw), co a channel of that
 * group, p an output pixel, xcol_b[r][p] = x_b[g * Cin/g + ci'][oh * sh -
 * pad_top + kh * dh][ow * sw - pad_left + kw * dw] (0 outside the plane).
 *
 * The baseline (cudnn_grouped) writes every G_b (N x |W| in the dtype)
 * and reads it back for the reductions; mixture writes E x |y|. This
 * kernel's traffic is x and dy once per tile row/column plus the outputs.
 * Every output is written, not accumulated, and summed in a fixed order
 * with no float atomics: bitwise reproducible for the same sizes. */
#ifndef CONDCONV_KERNELS_BACKWARD_WGRAD_H
#define CONDCONV_KERNELS_BACKWARD_WGRAD_H

#include <stddef.h>

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The convolution whose weight gradient is taken (the forward's geometry).
 * out_h and out_w are dy's plane; the padding may be asymmetric (only its
 * top and left are needed) and negative (a crop). */
typedef struct cc_wgrad_args {
    int dtype;  /* CC_DTYPE_*: x, dy and experts */
    int layout; /* CC_LAYOUT_NCHW or CC_LAYOUT_NHWC: x and dy */
    int n, cin, h, w;
    int cout, groups, kernel_h, kernel_w;
    int stride_h, stride_w, dilation_h, dilation_w;
    int pad_top, pad_left;
    int out_h, out_w;
    int e; /* experts, 1..128 */
} cc_wgrad_args;

/* Floats of scratch cc_launch_bwd_wgrad needs for these sizes, with both
 * outputs requested (the batch split's partial d_experts and the per-tile
 * partials of d_alpha); 0 for sizes the launcher refuses (it is at least 1
 * for any size it accepts). A function of the sizes only. */
size_t cc_bwd_wgrad_scratch_elems(const cc_wgrad_args *a);

/* x [N][Cin][H][W] or [N][H][W][Cin], dy [N][Cout][out_h][out_w] or
 * [N][out_h][out_w][Cout], experts [E][Cout][Cin/g][kh][kw], all in
 * a->dtype; alpha [N][E] f32; bias [E][Cout] f32 and dysum [N][Cout] f32,
 * or both NULL. Outputs f32, each may be NULL (not both):
 *   d_experts [E][Cout][Cin/g][kh][kw] = sum_b alpha[b][e] G_b
 *   d_alpha   [N][E] = <experts[e], G_b> + (bias ? sum_c bias[e][c] dysum[b][c] : 0)
 * (experts, bias and dysum are read only for d_alpha). G_b's products and
 * sums in f32, never rounded to the dtype; every sum in a fixed order that
 * depends only on the sizes. scratch: cc_bwd_wgrad_scratch_elems floats.
 * cudaErrorInvalidValue for sizes it refuses (non-positive sizes, groups
 * not dividing cin and cout, e outside 1..128, element counts past 2^31 in
 * x, dy or the experts) or NULL pointers it needs. */
cudaError_t cc_launch_bwd_wgrad(const cc_wgrad_args *a, const void *x, const void *dy, const void *experts,
                                const float *alpha, const float *bias, const float *dysum, float *d_experts,
                                float *d_alpha, float *scratch, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
