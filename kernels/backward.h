/* The backward pass's reductions (issue 20): what the baseline backward
 * runs around cuDNN's backward-filter (the batch as groups, giving the
 * per-sample filter gradients G [N][K]) and backward-data (dx):
 *   - per-channel sums of dy (dysum, for the bias gradients) and of x (the
 *     routing's pooled input, GAP(x));
 *   - the experts' gradients d_experts = alpha^T G, d_bias = alpha^T dysum
 *     and the routing weights' gradients d_alpha = G experts^T (+ the bias
 *     term), all in f32;
 *   - the routing backward (sigmoid or softmax, the FC, the pooling's
 *     share of dx).
 * Every output is summed in a fixed order, with no float atomics, so the
 * gradients are bitwise identical run to run (the deterministic
 * default). backward.cu says how each kernel is laid out and why. */
#ifndef CONDCONV_KERNELS_BACKWARD_H
#define CONDCONV_KERNELS_BACKWARD_H

#include <stddef.h>

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[b][c] = scale * sum over the pixels p of src[b][c][p]; src in `dtype`
 * (CC_DTYPE_*) and `layout` (CC_LAYOUT_*: [N][C][HW] or [N][HW][C]), out f32
 * [N][C]. dysum (scale 1) and GAP(x) (scale 1 / HW). Deterministic. */
cudaError_t cc_launch_bwd_channel_sums(int dtype, int layout, const void *src, float scale, float *out, int n, int c,
                                       long long hw, cudaStream_t stream);

/* Floats of scratch cc_launch_bwd_experts needs for these sizes: the split-K
 * partials of d_alpha (0 for sizes the launcher refuses). */
size_t cc_bwd_experts_scratch_elems(long long filter_elems, int cout, int n, int e);

/* G [N][K] and experts [E][K] in `dtype` (K = filter_elems), alpha [N][E]
 * f32, bias [E][cout] f32 or NULL, dysum [N][cout] f32 (read only when bias
 * is not NULL). Outputs f32, each may be NULL to skip it (at least one not
 * NULL, else cudaErrorInvalidValue):
 *   d_experts [E][K]    = sum_b alpha[b][e] G[b][k]
 *   d_bias    [E][cout] = sum_b alpha[b][e] dysum[b][c]   (NULL when bias is)
 *   d_alpha   [N][E]    = sum_k experts[e][k] G[b][k]
 *                         + (bias ? sum_c bias[e][c] dysum[b][c] : 0)
 * Written, not accumulated; fixed summation orders, no atomics. scratch:
 * cc_bwd_experts_scratch_elems floats (may be NULL when d_alpha is NULL).
 * 1 <= e <= CONDCONV_MAX_EXPERTS (128). */
cudaError_t cc_launch_bwd_experts(int dtype, const void *G, const void *experts, const float *alpha, const float *bias,
                                  const float *dysum, float *d_experts, float *d_bias, float *d_alpha,
                                  long long filter_elems, int cout, int n, int e, float *scratch, cudaStream_t stream);

/* Routing backward for layers that route themselves. alpha, d_alpha [N][E];
 * softmax != 0: alpha = softmax(logits * inv_temperature), so
 *   d_logit = inv_temperature * alpha * (d_alpha - sum_j alpha_j d_alpha_j);
 * else sigmoid: d_logit = d_alpha * alpha * (1 - alpha). pooled [N][C] f32
 * (GAP of x), weight_t [C][E] f32 (the FC weight transposed, as the
 * forward's routing kernel takes it). d_logits [N][E] f32, written (scratch
 * the caller provides). Outputs f32, each may be NULL:
 *   d_routing_weight [E][C] = sum_b d_logit[b][e] pooled[b][c]
 *   d_routing_bias   [E]    = sum_b d_logit[b][e]
 *   d_pooled         [N][C] = sum_e d_logit[b][e] weight_t[c][e]
 * Deterministic, no atomics. 1 <= e <= 128. */
cudaError_t cc_launch_bwd_routing(const float *alpha, const float *d_alpha, int softmax, float inv_temperature,
                                  const float *pooled, const float *weight_t, float *d_logits, float *d_routing_weight,
                                  float *d_routing_bias, float *d_pooled, int n, int c, int e, cudaStream_t stream);

/* dx[b][c][p] += d_pooled[b][c] / hw; dx in `dtype` and `layout`, each
 * element read, added to in f32 and rounded once (the average pool's share
 * of dx, added after cuDNN's backward-data wrote dx). */
cudaError_t cc_launch_bwd_add_pool_grad(int dtype, int layout, void *dx, const float *d_pooled, int n, int c,
                                        long long hw, cudaStream_t stream);

/* The chain rule through a fused activation: out[i] = round(dy[i] *
 * act'(pre[i])) for i < count, pre the pre-activation, all three in `dtype`
 * and the same layout (elementwise); out may be pre (in place) but not dy.
 * act: CC_ACT_RELU or CC_ACT_SILU (kernels/common.cuh); NONE is refused
 * (nothing to do). */
cudaError_t cc_launch_bwd_activation_grad(int dtype, int act, const void *pre, const void *dy, void *out,
                                          long long count, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
