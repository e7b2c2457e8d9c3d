/* Batched per-sample aggregation: W_b = sum_e alpha_be W_e and
 * bias_b = sum_e alpha_be b_e for every sample, one launch. */
#ifndef CONDCONV_KERNELS_AGGREGATE_H
#define CONDCONV_KERNELS_AGGREGATE_H

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* experts [E][filter_elems] and filters [N][filter_elems] in `dtype`
 * (CC_DTYPE_*), accumulated in f32 and rounded once to dtype; bias [E][cout]
 * (or NULL), alpha [N][E] and biases [N][cout] (ignored when bias is NULL)
 * are f32 whatever the dtype. */
cudaError_t cc_launch_aggregate(int dtype, const void *experts, const float *bias, const float *alpha, void *filters,
                                float *biases, long long filter_elems, int cout, int n, int e, cudaStream_t stream);

/* Candidate kernels for the same computation (issue 19: AUTO times them at
 * prepare on the user's GPU and keeps the fastest; kernels/aggregate.cu says
 * where each may win): 0 is cc_launch_aggregate's kernel (8 samples per
 * thread), 1 the same with 16 samples per thread, 2 one sample per thread
 * (for small N). Same contract and results, bit for bit, as
 * cc_launch_aggregate; a variant outside [0, CC_AGGREGATE_VARIANTS) returns
 * cudaErrorInvalidValue and launches nothing. */
#define CC_AGGREGATE_VARIANTS 3
cudaError_t cc_launch_aggregate_variant(int variant, int dtype, const void *experts, const float *bias,
                                        const float *alpha, void *filters, float *biases, long long filter_elems,
                                        int cout, int n, int e, cudaStream_t stream);
/* A short name of the variant for plan info and benches ("8 samples/thread",
 * ...); "?" for a variant out of range. */
const char *cc_aggregate_variant_name(int variant);

#ifdef __cplusplus
}
#endif

#endif
