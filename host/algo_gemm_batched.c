/* gemm_batched — the convolution as one strided-batched GEMM over
 * samples x groups: for sample n and group j (batch index b = n*g + j),
 *   Y_b [Cout/g][P] = W_b [Cout/g][K] x X_b [K][P],  K = Cin/g*kh*kw, P = Ho*Wo,
 * with W_b the aggregated per-sample filters (their [Cin/g][kh][kw] order is
 * already the K order). A 1x1, stride-1, unpadded layer multiplies the input
 * in place; any other layer first gathers its input windows (im2col) into
 * the workspace, N*Cin*kh*kw*P floats. TF32 only when the context allows. */
#include <limits.h>
#include <stdio.h>

#include "algo.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "phase_timer.h"

#define CC_GEMM_MAX_BATCH 65535

static int needs_im2col(const condconv_layer_info *info, const cc_geometry *geom)
{
    return info->kernel_h != 1 || info->kernel_w != 1 || info->stride_h != 1 || info->stride_w != 1 || geom->pad_top ||
           geom->pad_bottom || geom->pad_left || geom->pad_right;
}

static condconv_status gemm_check(const struct condconv_layer *layer, const cc_geometry *geom, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const long long p = (long long)geom->out_h * geom->out_w;
    const long long k = (long long)(info->in_channels / info->groups) * info->kernel_h * info->kernel_w;
    if (p > INT_MAX || k > INT_MAX || (long long)geom->n * info->groups > INT_MAX)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: gemm_batched needs Ho*Wo, Cin/g*kh*kw and N*groups below 2^31 (%lld, %lld, %lld)", func, p,
                       k, (long long)geom->n * info->groups);
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
    snprintf(state->backend, sizeof state->backend, "cuBLAS strided-batched GEMM, %s%s",
             math == CONDCONV_MATH_TF32 ? "fast-tf32 compute" : "f32 compute",
             needs_im2col(info, geom) ? ", im2col" : "");
    state->gather = needs_im2col(info, geom);
    if (state->gather) {
        cc_gather_args *a = &state->gather_args;
        a->planes = (long long)geom->n * info->in_channels;
        a->h = geom->h;
        a->w = geom->w;
        a->kernel_h = info->kernel_h;
        a->kernel_w = info->kernel_w;
        a->out_h = geom->out_h;
        a->out_w = geom->out_w;
        a->stride_h = info->stride_h;
        a->stride_w = info->stride_w;
        a->dilation_h = info->dilation_h;
        a->dilation_w = info->dilation_w;
        a->pad_top = geom->pad_top;
        a->pad_left = geom->pad_left;
    }
    state->workspace_bytes = cc_layout_aggregated_workspace(layer, geom, state);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status gemm_run(const struct condconv_layer *layer, const cc_geometry *geom, const cc_algo_state *state,
                                const cc_forward_buffers *buffers, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const float *filters = (const float *)(const void *)(buffers->workspace + state->off_filters);
    const float *biases = info->has_bias ? (const float *)(const void *)(buffers->workspace + state->off_biases) : NULL;
    CC_TRY(cc_run_aggregate(layer, geom, state, buffers, func));
    const float *x;
    CC_TRY(cc_run_gather(layer, state, buffers, &x, func));

    const int p = geom->out_h * geom->out_w;
    const int k = info->in_channels / info->groups * info->kernel_h * info->kernel_w;
    const int cout_g = info->out_channels / info->groups;
    const float one = 1.0f, zero = 0.0f;
    /* Row-major Y = W X is column-major Y^T = X^T W^T: A = X_b (P x K, ld P),
     * B = W_b (K x Cout/g, ld K), C = Y_b (P x Cout/g, ld P). */
    const long long stride_x = (long long)k * p, stride_w = (long long)cout_g * k, stride_y = (long long)cout_g * p;
    const int batches = geom->n * info->groups;
    cublasStatus_t err = CUBLAS_STATUS_SUCCESS;
    CC_PHASE_BEGIN(CC_PHASE_CONV, "condconv.conv", layer->ctx->stream);
    /* In chunks of at most 65535 matrices: cuBLAS's batched kernels put the
     * batch on gridDim.z, whose limit is 65535 (batch 128 x 1152 groups of a
     * depthwise layer would exceed it). */
    for (int first = 0; first < batches && err == CUBLAS_STATUS_SUCCESS; first += CC_GEMM_MAX_BATCH) {
        const int count = batches - first < CC_GEMM_MAX_BATCH ? batches - first : CC_GEMM_MAX_BATCH;
        err = cublasGemmStridedBatchedEx(
            layer->ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_N, p, cout_g, k, &one, x + (size_t)first * (size_t)stride_x,
            CUDA_R_32F, p, stride_x, filters + (size_t)first * (size_t)stride_w, CUDA_R_32F, k, stride_w, &zero,
            buffers->y + (size_t)first * (size_t)stride_y, CUDA_R_32F, p, stride_y, count,
            state->math == CONDCONV_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
    CC_PHASE_END(CC_PHASE_CONV, layer->ctx->stream);
    CC_TRY(cc_cublas_status(err, "cublasGemmStridedBatchedEx", func));
    return cc_run_bias_activation(layer, geom, buffers->y, biases, func);
}

const cc_algo_ops cc_algo_gemm_batched = {CONDCONV_ALGO_GEMM_BATCHED, gemm_check, gemm_prepare, gemm_run};
