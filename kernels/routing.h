/* Fused routing: alpha [N][E] = act(FC(GlobalAvgPool(x))) in one launch,
 * with no pooled intermediate in global memory. */
#ifndef CONDCONV_KERNELS_ROUTING_H
#define CONDCONV_KERNELS_ROUTING_H

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest E the routing kernel handles (4 accumulators per lane). */
#define CC_ROUTING_MAX_EXPERTS 128

/* How many blocks share one sample's channels (NCHW) or pixels (NHWC), the
 * same rule for both (routing.cu says why): enough blocks to cover the
 * GPU twice (the pooling is a stream over N*C*H*W floats and wants every
 * SM), never fewer than ~4096 floats or 8 channels a block. 1 means one
 * block per sample, which needs no split buffers. */
int cc_routing_splits(int n, int c, long long hw, int sm_count);

/* Floats of partial logits, and counters, that `splits` > 1 needs. */
static inline size_t cc_routing_partial_elems(int n, int e, int splits)
{
    return splits > 1 ? (size_t)n * (size_t)splits * (size_t)e : 0;
}

/* x in `dtype` (CC_DTYPE_*) and `layout` (CC_LAYOUT_*): [N][C][HW] or
 * [N][HW][C]; weight_t [C][E] (the FC weight transposed), bias [E] and
 * alpha [N][E] are f32 whatever the dtype; the pooling sums in f32.
 * softmax != 0: softmax(logits * inv_temperature), else sigmoid. The splits
 * share a sample's channels (NCHW) or its pixels (NHWC) between blocks;
 * either way each block adds a partial logit vector.
 * splits > 1: `partial` holds cc_routing_partial_elems floats and `counters`
 * N unsigned ints that are zero before the launch (the launch leaves them
 * zero again, so a buffer zeroed once serves every later forward, graph
 * replays included). Forwards that share the buffers must not overlap. */
cudaError_t cc_launch_routing(int dtype, int layout, const void *x, const float *weight_t, const float *bias,
                              float *alpha, int n, int c, long long hw, int e, int softmax, float inv_temperature,
                              int splits, float *partial, unsigned int *counters, cudaStream_t stream);

/* Candidates (issue 19): the same routing computed by different kernels,
 * chosen by an explicit variant that AUTO times at prepare on the user's
 * GPU. 0 is the measured kernel above (cc_launch_routing is variant 0);
 * 1 is the bandwidth design no GPU has measured yet (routing.cu says what
 * a GPU must confirm). */
#define CC_ROUTING_VARIANTS 2

/* Splits for `variant` (0: cc_routing_splits; 1: enough blocks to cover
 * the GPU four times, never fewer than ~1024 elements or one channel a
 * block); 1 for an unknown variant. Both variants' split buffers are
 * sized by cc_routing_partial_elems (variant 1 may use fewer of the
 * `splits`, never more: n * splits * e floats and n counters serve it). */
int cc_routing_splits_variant(int variant, int n, int c, long long hw, int sm_count);

/* cc_launch_routing with the kernel of `variant` (same arguments, the same
 * split-buffer contract); cudaErrorInvalidValue, nothing launched, for a
 * variant outside [0, CC_ROUTING_VARIANTS). */
cudaError_t cc_launch_routing_variant(int variant, int dtype, int layout, const void *x, const float *weight_t,
                                      const float *bias, float *alpha, int n, int c, long long hw, int e, int softmax,
                                      float inv_temperature, int splits, float *partial, unsigned int *counters,
                                      cudaStream_t stream);

/* A short name of `variant` for plan info and benches ("?" if unknown). */
const char *cc_routing_variant_name(int variant);

#ifdef __cplusplus
}
#endif

#endif
