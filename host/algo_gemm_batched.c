/* gemm_batched — the convolution as strided-batched GEMMs over samples and
 * groups, with W_b the aggregated per-sample filters (their [Cin/g][kh][kw]
 * order is already the K order), K = Cin/g*kh*kw, P = Ho*Wo.
 *
 * NCHW: for sample n and group j (batch index b = n*g + j),
 *   Y_b [Cout/g][P] = W_b [Cout/g][K] x X_b [K][P]
 * in one call, every batch a fixed stride apart.
 * NHWC: per sample, Y_n [P][Cout] = X_n [P][Cin*kh*kw] x W_n^T, group j
 * taking columns j*K.. of X_n and writing columns j*Cout/g.. of Y_n: one
 * call per group, batched over the samples (group and sample strides differ,
 * so they cannot share one batch index). The natural form for channels-last:
 * no transposes.
 *
 * A 1x1, stride-1, unpadded layer multiplies the input in place; any other
 * layer first gathers its input windows (im2col, in the order of the
 * layout's GEMM) into the workspace, N*Cin*kh*kw*P elements. Half data:
 * cuBLAS's tensor cores with f32 compute, per-sample filters stored in the
 * dtype (rounded once); f32: FMA, TF32 only when the context allows. */
#include <limits.h>
#include <stdio.h>

#include "algo.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "phase_timer.h"

#define CC_GEMM_MAX_BATCH 65535
/* NHWC makes one call per group: past this many, launch overhead would rule. */
#define CC_GEMM_MAX_NHWC_GROUPS 64

static cudaDataType_t data_type(condconv_dtype dtype)
{
    return dtype == CONDCONV_DTYPE_F16 ? CUDA_R_16F : dtype == CONDCONV_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* f32 accumulation for every dtype: half inputs with CUBLAS_COMPUTE_32F run
 * on tensor cores; f32 inputs do only when TF32 is allowed. */
static cublasComputeType_t compute_type(condconv_dtype dtype, condconv_math math)
{
    return dtype == CONDCONV_DTYPE_F32 && math == CONDCONV_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                     : CUBLAS_COMPUTE_32F;
}

static const char *compute_name(condconv_dtype dtype, condconv_math math)
{
    if (dtype != CONDCONV_DTYPE_F32) return "tensor ops, f32 compute";
    return math == CONDCONV_MATH_TF32 ? "fast-tf32 compute" : "f32 compute";
}

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
    if (info->layout == CONDCONV_LAYOUT_NHWC && info->groups > CC_GEMM_MAX_NHWC_GROUPS)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: gemm_batched makes one cuBLAS call per group in NHWC, and %d groups are more than %d such "
                       "calls (depthwise layers run depthwise_fused)",
                       func, info->groups, CC_GEMM_MAX_NHWC_GROUPS);
    return cc_check_int_limits(layer, geom, (long long)geom->n * info->in_channels,
                               (long long)geom->n * info->out_channels, "gemm_batched", func);
}

/* The GEMM calls of the forward on x (gathered or not), the per-sample
 * filters and y; `samples` limits the samples they cover (all of them in a
 * forward; one in prepare's trial call, which then makes one call). */
static cublasStatus_t gemm_calls(const struct condconv_layer *layer, const cc_geometry *geom,
                                 const cc_algo_state *state, const unsigned char *x, const unsigned char *filters,
                                 unsigned char *y, int samples)
{
    const condconv_layer_info *info = &layer->weights->info;
    const size_t elem = cc_dtype_size(info->dtype);
    const cudaDataType_t type = data_type(info->dtype);
    const cublasComputeType_t compute = compute_type(info->dtype, state->math);
    const int p = geom->out_h * geom->out_w;
    const int k = info->in_channels / info->groups * info->kernel_h * info->kernel_w;
    const int cout_g = info->out_channels / info->groups;
    const int groups = samples < geom->n ? 1 : info->groups; /* the trial: one matrix */
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t err = CUBLAS_STATUS_SUCCESS;
    if (info->layout == CONDCONV_LAYOUT_NCHW) {
        /* Row-major Y = W X is column-major Y^T = X^T W^T: A = X_b (P x K, ld P),
         * B = W_b (K x Cout/g, ld K), C = Y_b (P x Cout/g, ld P). */
        const long long stride_x = (long long)k * p, stride_w = (long long)cout_g * k, stride_y = (long long)cout_g * p;
        const int batches = samples * groups;
        /* In chunks of at most 65535 matrices: cuBLAS's batched kernels put the
         * batch on gridDim.z, whose limit is 65535 (batch 128 x 1152 groups of a
         * depthwise layer would exceed it). */
        for (int first = 0; first < batches && err == CUBLAS_STATUS_SUCCESS; first += CC_GEMM_MAX_BATCH) {
            const int count = batches - first < CC_GEMM_MAX_BATCH ? batches - first : CC_GEMM_MAX_BATCH;
            err = cublasGemmStridedBatchedEx(layer->ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_N, p, cout_g, k, &one,
                                             x + (size_t)first * (size_t)stride_x * elem, type, p, stride_x,
                                             filters + (size_t)first * (size_t)stride_w * elem, type, k, stride_w,
                                             &zero, y + (size_t)first * (size_t)stride_y * elem, type, p, stride_y,
                                             count, compute, CUBLAS_GEMM_DEFAULT);
        }
        return err;
    }
    /* Row-major Y_n [P][Cout] is column-major Cout x P (ld Cout). Group j:
     * C = W_nj (Cout/g x K, row-major: column-major K x Cout/g, ld K,
     * transposed) x X_n[:, j*K..] (column-major K x P, ld Cin*kh*kw). */
    const int ldx = k * info->groups;
    const long long stride_x = (long long)ldx * p, stride_w = (long long)layer->weights->sizes.filter_elems,
                    stride_y = (long long)info->out_channels * p;
    for (int j = 0; j < groups && err == CUBLAS_STATUS_SUCCESS; ++j)
        for (int first = 0; first < samples && err == CUBLAS_STATUS_SUCCESS; first += CC_GEMM_MAX_BATCH) {
            const int count = samples - first < CC_GEMM_MAX_BATCH ? samples - first : CC_GEMM_MAX_BATCH;
            err = cublasGemmStridedBatchedEx(
                layer->ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, cout_g, p, k, &one,
                filters + ((size_t)first * (size_t)stride_w + (size_t)j * cout_g * k) * elem, type, k, stride_w,
                x + ((size_t)first * (size_t)stride_x + (size_t)j * k) * elem, type, ldx, stride_x, &zero,
                y + ((size_t)first * (size_t)stride_y + (size_t)j * cout_g) * elem, type, info->out_channels, stride_y,
                count, compute, CUBLAS_GEMM_DEFAULT);
        }
    return err;
}

static condconv_status gemm_prepare(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math,
                                    condconv_algo_select select, cc_scratch *scratch, cc_algo_state *state,
                                    const char *func)
{
    (void)select;
    const condconv_layer_info *info = &layer->weights->info;
    const int nhwc = info->layout == CONDCONV_LAYOUT_NHWC;
    state->algo = CONDCONV_ALGO_GEMM_BATCHED;
    state->math = math;
    snprintf(state->backend, sizeof state->backend, "cuBLAS strided-batched GEMM, %s %s, %s%s%s",
             cc_dtype_name(info->dtype), cc_layout_name(info->layout), compute_name(info->dtype, math),
             needs_im2col(info, geom) ? ", im2col" : "", nhwc && info->groups > 1 ? ", one call per group" : "");
    state->gather = needs_im2col(info, geom);
    if (state->gather) cc_plan_gather_im2col(layer, geom, nhwc ? CC_GATHER_ROWS : CC_GATHER_PLANES, state);
    /* cuBLAS reads x unless it was gathered (im2col), and always writes y. */
    state->workspace_bytes =
        cc_reserve_staging(layer, geom, 1, state, cc_layout_aggregated_workspace(layer, geom, state));
    /* One GEMM of one sample on scratch memory, so that a cuBLAS which cannot
     * run this dtype and compute type (bf16 on an older GPU, say) says so
     * here, where AUTO can skip the candidate, not at the first forward. */
    const size_t elem = cc_dtype_size(info->dtype);
    const size_t taps = (size_t)info->kernel_h * (size_t)info->kernel_w;
    const size_t in_plane = (size_t)geom->h * (size_t)geom->w, out_plane = (size_t)geom->out_h * (size_t)geom->out_w;
    const size_t x_sample = (size_t)info->in_channels * taps * (in_plane > out_plane ? in_plane : out_plane);
    void *x, *w, *y;
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, elem * x_sample, &x, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_W, elem * (size_t)layer->weights->sizes.filter_elems, &w, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, elem * (size_t)(geom->y_elems / (uint64_t)geom->n), &y, func));
    CC_TRY(cc_cublas_status(gemm_calls(layer, geom, state, x, w, y, 1), "cublasGemmStridedBatchedEx (trial)", func));
    return cc_cuda_status(cudaStreamSynchronize(layer->ctx->stream), "cudaStreamSynchronize", func);
}

static condconv_status gemm_run(const struct condconv_layer *layer, const cc_geometry *geom, const cc_algo_state *state,
                                const cc_forward_buffers *buffers, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const unsigned char *filters = buffers->workspace + state->off_filters;
    const float *biases = info->has_bias ? (const float *)(const void *)(buffers->workspace + state->off_biases) : NULL;
    CC_TRY(cc_run_aggregate(layer, geom, state, buffers, func));
    const void *x;
    CC_TRY(cc_run_gather(layer, state, buffers, &x, func));
    CC_PHASE_BEGIN(CC_PHASE_CONV, "condconv.conv", layer->ctx->stream);
    const cublasStatus_t err = gemm_calls(layer, geom, state, x, filters, cc_library_y(state, buffers), geom->n);
    CC_PHASE_END(CC_PHASE_CONV, layer->ctx->stream);
    CC_TRY(cc_cublas_status(err, "cublasGemmStridedBatchedEx", func));
    CC_TRY(cc_unstage_y(layer, state, buffers, func));
    return cc_run_bias_activation(layer, geom, state, buffers, biases, func);
}

const cc_algo_ops cc_algo_gemm_batched = {CONDCONV_ALGO_GEMM_BATCHED, gemm_check, gemm_prepare, gemm_run, NULL, 1};
