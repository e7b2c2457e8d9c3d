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

/* Candidates (issue 19): variant 0 is the kernel above; AUTO times the
 * others at prepare. */
#define CC_AGGREGATE_VARIANTS 1
cudaError_t cc_launch_aggregate_variant(int variant, int dtype, const void *experts, const float *bias,
                                        const float *alpha, void *filters, float *biases, long long filter_elems,
                                        int cout, int n, int e, cudaStream_t stream);
const char *cc_aggregate_variant_name(int variant);
#ifdef __cplusplus
}
#endif

#endif
