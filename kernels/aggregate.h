/* Batched per-sample aggregation: W_b = sum_e alpha_be W_e and
 * bias_b = sum_e alpha_be b_e for every sample, one launch. */
#ifndef CONDCONV_KERNELS_AGGREGATE_H
#define CONDCONV_KERNELS_AGGREGATE_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* experts [E][filter_elems], bias [E][cout] (or NULL), alpha [N][E]
 * -> filters [N][filter_elems], biases [N][cout] (ignored when bias is NULL). */
cudaError_t cc_launch_aggregate(const float *experts, const float *bias, const float *alpha, float *filters,
                                float *biases, long long filter_elems, int cout, int n, int e, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
