/* Fused routing: alpha [N][E] = act(FC(GlobalAvgPool(x))) in one launch,
 * with no pooled intermediate in global memory. */
#ifndef CONDCONV_KERNELS_ROUTING_H
#define CONDCONV_KERNELS_ROUTING_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest E the routing kernel handles (4 accumulators per lane). */
#define CC_ROUTING_MAX_EXPERTS 128

/* x [N][C][HW]; weight_t [C][E] (the FC weight transposed); bias [E];
 * alpha [N][E]. softmax != 0: softmax(logits * inv_temperature), else sigmoid. */
cudaError_t cc_launch_routing(const float *x, const float *weight_t, const float *bias, float *alpha, int n, int c,
                              long long hw, int e, int softmax, float inv_temperature, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
