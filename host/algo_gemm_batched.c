/* gemm_batched — 1x1 convolutions (any stride, no padding) as one
 * strided-batched GEMM: for sample n and group j (batch index b = n*g + j),
 * Y_b [Cout/g][P] = W_b [Cout/g][Cin/g] x X_b [Cin/g][P], P = Ho*Wo. The
 * filters come from the aggregation kernel; a strided 1x1 first subsamples
 * the input into the workspace. TF32 only when the context allows it. */
#include <limits.h>

#include "algo.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "nvtx.h"

static condconv_status gemm_check(const struct condconv_layer *layer, const cc_geometry *geom, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    if (info->kernel_h != 1 || info->kernel_w != 1)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: gemm_batched needs a 1x1 kernel (this layer is %dx%d)",
                       func, info->kernel_h, info->kernel_w);
    if (geom->pad_top || geom->pad_bottom || geom->pad_left || geom->pad_right)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: gemm_batched needs zero padding (padding %d,%d,%d,%d would make border pixels bias-only)",
                       func, geom->pad_top, geom->pad_bottom, geom->pad_left, geom->pad_right);
    if ((long long)geom->out_h * geom->out_w > INT_MAX || (long long)geom->n * info->groups > INT_MAX)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: gemm_batched needs Ho*Wo and N*groups below 2^31", func);
    return cc_check_int_limits(layer, geom, (long long)geom->n * info->in_channels,
                               (long long)geom->n * info->out_channels, "gemm_batched", func);
}

static condconv_status gemm_prepare(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math,
                                    condconv_algo_select select, cc_scratch *scratch, cc_algo_state *state,
                                    const char *func)
{
    (void)select;
    (void)scratch;
    (void)func;
    const condconv_layer_info *info = &layer->weights->info;
    state->algo = CONDCONV_ALGO_GEMM_BATCHED;
    state->math = math;
    state->gather = info->stride_h != 1 || info->stride_w != 1;
    if (state->gather) {
        state->gather_h = geom->out_h;
        state->gather_w = geom->out_w;
        state->gather_stride_h = info->stride_h;
        state->gather_stride_w = info->stride_w;
        state->gather_pad_top = state->gather_pad_left = 0;
    }
    const size_t gather_bytes =
        state->gather ? sizeof(float) * (size_t)geom->n * info->in_channels * geom->out_h * geom->out_w : 0;
    const size_t filter_bytes = sizeof(float) * (size_t)geom->n * (size_t)layer->weights->sizes.filter_elems;
    const size_t bias_bytes = info->has_bias ? sizeof(float) * (size_t)geom->n * info->out_channels : 0;
    state->off_gather = 0;
    state->off_filters = cc_align256(gather_bytes);
    state->off_biases = state->off_filters + cc_align256(filter_bytes);
    state->workspace_bytes = state->off_biases + cc_align256(bias_bytes);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status gemm_run(const struct condconv_layer *layer, const cc_geometry *geom,
                                const cc_algo_state *state, const cc_forward_buffers *buffers, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const float *filters = (const float *)(const void *)(buffers->workspace + state->off_filters);
    const float *biases = info->has_bias ? (const float *)(const void *)(buffers->workspace + state->off_biases) : NULL;
    CC_TRY(cc_run_aggregate(layer, geom, state, buffers, func));
    const float *x;
    CC_TRY(cc_run_gather(layer, geom, state, buffers, &x, func));

    const int p = geom->out_h * geom->out_w;
    const int cin_g = info->in_channels / info->groups, cout_g = info->out_channels / info->groups;
    const float one = 1.0f, zero = 0.0f;
    /* Row-major Y = W X is column-major Y^T = X^T W^T: A = X_b (P x Cin/g,
     * ld P), B = W_b (Cin/g x Cout/g, ld Cin/g), C = Y_b (P x Cout/g, ld P). */
    CC_NVTX_PUSH("condconv.conv");
    const cublasStatus_t err = cublasGemmStridedBatchedEx(
        layer->ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_N, p, cout_g, cin_g, &one, x, CUDA_R_32F, p,
        (long long)cin_g * p, filters, CUDA_R_32F, cin_g, (long long)cout_g * cin_g, &zero, buffers->y, CUDA_R_32F, p,
        (long long)cout_g * p, geom->n * info->groups,
        state->math == CONDCONV_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    CC_NVTX_POP();
    CC_TRY(cc_cublas_status(err, "cublasGemmStridedBatchedEx", func));
    return cc_run_bias_activation(layer, geom, buffers->y, biases, func);
}

const cc_algo_ops cc_algo_gemm_batched = {CONDCONV_ALGO_GEMM_BATCHED, gemm_check, gemm_prepare, gemm_run};
