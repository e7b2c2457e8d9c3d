/* cuDNN backward data and backward filter (cudnn_conv_backward.h), on the
 * legacy API like the forward (cudnn_conv.c), which expresses grouped
 * convolutions and gives each algorithm's determinism. */
#include "cudnn_conv_backward.h"

#include <stdio.h>
#include <string.h>

#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "layer.h"

/* Algorithms needing more workspace than this are not considered (as the forward). */
#define CC_CUDNN_BWD_MAX_WORKSPACE ((size_t)1 << 30)

void cc_cudnn_conv_bwd_destroy(cc_cudnn_conv_bwd *conv)
{
    cc_cudnn_conv_destroy(&conv->data);
    cc_cudnn_conv_destroy(&conv->filter);
    memset(conv, 0, sizeof *conv);
}

static size_t tensor_bytes(const cc_conv_shape *s, int channels, int h, int w)
{
    return cc_dtype_size(s->dtype) * (size_t)s->n * (size_t)channels * (size_t)h * (size_t)w;
}
static size_t filter_bytes(const cc_conv_shape *s)
{
    return cc_dtype_size(s->dtype) * (size_t)s->k * (size_t)(s->c / s->groups) * (size_t)s->r * (size_t)s->s;
}

/* The FFT and Winograd algorithms transform the operands; the reasons the
 * forward refuses them (cudnn_conv.c) hold for the backward too. */
static int data_algo_direct(cudnnConvolutionBwdDataAlgo_t a)
{
    return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
}
static int filter_algo_direct(cudnnConvolutionBwdFilterAlgo_t a)
{
    return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
           a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
}

static condconv_status choose_data(condconv_context_t ctx, const cc_conv_shape *s, condconv_math math,
                                   int deterministic, cc_scratch *scratch, cc_cudnn_conv_bwd *conv, const char *func)
{
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int returned = 0;
    const cc_cudnn_conv *d = &conv->data;
    CC_CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx->cudnn, d->w_desc, d->y_desc, d->conv_desc, d->x_desc,
                                                             CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, perf),
                 func);
    void *w, *dy, *dx, *ws;
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_W, filter_bytes(s), &w, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, tensor_bytes(s, s->k, s->out_h, s->out_w), &dy, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, tensor_bytes(s, s->c, s->h, s->w), &dx, func));
    for (int i = 0; i < returned; ++i) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || (deterministic && perf[i].determinism != CUDNN_DETERMINISTIC) ||
            perf[i].memory > CC_CUDNN_BWD_MAX_WORKSPACE || !data_algo_direct(perf[i].algo) ||
            !cc_cudnn_math_allowed(s->dtype, math, perf[i].mathType))
            continue;
        conv->data_algo = perf[i].algo;
        conv->data_deterministic = perf[i].determinism == CUDNN_DETERMINISTIC;
        conv->data.math_type = perf[i].mathType;
        conv->data_workspace_bytes = perf[i].memory;
        CC_CUDNN_TRY(cudnnSetConvolutionMathType(d->conv_desc, perf[i].mathType), func);
        CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, perf[i].memory, &ws, func));
        const condconv_status st = cc_cudnn_conv_bwd_data(ctx, conv, w, dy, dx, ws, func);
        if (st == CONDCONV_STATUS_CUDNN_ERROR) continue;
        return st;
    }
    return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                   "%s: cuDNN offers no %sdirect backward-data algorithm for %dx%dx%dx%d, filters "
                   "%dx%dx%dx%d, groups %d%s",
                   func, deterministic ? "deterministic " : "", s->n, s->c, s->h, s->w, s->k, s->c / s->groups, s->r,
                   s->s, s->groups, math == CONDCONV_MATH_F32 ? " without TF32" : "");
}

static condconv_status choose_filter(condconv_context_t ctx, const cc_conv_shape *s, condconv_math math,
                                     int deterministic, cc_scratch *scratch, cc_cudnn_conv_bwd *conv, const char *func)
{
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int returned = 0;
    const cc_cudnn_conv *f = &conv->filter;
    CC_CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(ctx->cudnn, f->x_desc, f->y_desc, f->conv_desc,
                                                               f->w_desc, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                               &returned, perf),
                 func);
    void *x, *dy, *dw, *ws;
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, tensor_bytes(s, s->c, s->h, s->w), &x, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, tensor_bytes(s, s->k, s->out_h, s->out_w), &dy, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_W, filter_bytes(s), &dw, func));
    for (int i = 0; i < returned; ++i) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || (deterministic && perf[i].determinism != CUDNN_DETERMINISTIC) ||
            perf[i].memory > CC_CUDNN_BWD_MAX_WORKSPACE || !filter_algo_direct(perf[i].algo) ||
            !cc_cudnn_math_allowed(s->dtype, math, perf[i].mathType))
            continue;
        conv->filter_algo = perf[i].algo;
        conv->filter_deterministic = perf[i].determinism == CUDNN_DETERMINISTIC;
        conv->filter.math_type = perf[i].mathType;
        conv->filter_workspace_bytes = perf[i].memory;
        CC_CUDNN_TRY(cudnnSetConvolutionMathType(f->conv_desc, perf[i].mathType), func);
        CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, perf[i].memory, &ws, func));
        const condconv_status st = cc_cudnn_conv_bwd_filter(ctx, conv, x, dy, dw, ws, func);
        if (st == CONDCONV_STATUS_CUDNN_ERROR) continue;
        return st;
    }
    return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                   "%s: cuDNN offers no %sdirect backward-filter algorithm for %dx%dx%dx%d, filters "
                   "%dx%dx%dx%d, groups %d%s",
                   func, deterministic ? "deterministic " : "", s->n, s->c, s->h, s->w, s->k, s->c / s->groups, s->r,
                   s->s, s->groups, math == CONDCONV_MATH_F32 ? " without TF32" : "");
}

condconv_status cc_cudnn_conv_bwd_create(condconv_context_t ctx, const cc_conv_shape *shape, condconv_math math,
                                         int deterministic, int with_filter, cc_scratch *scratch,
                                         cc_cudnn_conv_bwd *conv, const char *func)
{
    memset(conv, 0, sizeof *conv);
    conv->has_filter = with_filter != 0;
    condconv_status st = cc_cudnn_conv_descriptors(shape, math, &conv->data, func);
    if (st == CONDCONV_STATUS_SUCCESS && conv->has_filter)
        st = cc_cudnn_conv_descriptors(shape, math, &conv->filter, func);
    if (st == CONDCONV_STATUS_SUCCESS) st = choose_data(ctx, shape, math, deterministic, scratch, conv, func);
    if (st == CONDCONV_STATUS_SUCCESS && conv->has_filter)
        st = choose_filter(ctx, shape, math, deterministic, scratch, conv, func);
    conv->deterministic = conv->data_deterministic && (!conv->has_filter || conv->filter_deterministic);
    if (st != CONDCONV_STATUS_SUCCESS) cc_cudnn_conv_bwd_destroy(conv);
    return st;
}

condconv_status cc_cudnn_conv_bwd_data(condconv_context_t ctx, const cc_cudnn_conv_bwd *conv, const void *w,
                                       const void *dy, void *dx, void *workspace, const char *func)
{
    const float one = 1.0f, zero = 0.0f;
    const cc_cudnn_conv *d = &conv->data;
    CC_CUDNN_TRY(cudnnConvolutionBackwardData(ctx->cudnn, &one, d->w_desc, w, d->y_desc, dy, d->conv_desc,
                                              conv->data_algo, workspace, conv->data_workspace_bytes, &zero, d->x_desc,
                                              dx),
                 func);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_cudnn_conv_bwd_filter(condconv_context_t ctx, const cc_cudnn_conv_bwd *conv, const void *x,
                                         const void *dy, void *dw, void *workspace, const char *func)
{
    const float one = 1.0f, zero = 0.0f;
    const cc_cudnn_conv *f = &conv->filter;
    if (!conv->has_filter)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: this backward plan has no cuDNN filter direction", func);
    CC_CUDNN_TRY(cudnnConvolutionBackwardFilter(ctx->cudnn, &one, f->x_desc, x, f->y_desc, dy, f->conv_desc,
                                                conv->filter_algo, workspace, conv->filter_workspace_bytes, &zero,
                                                f->w_desc, dw),
                 func);
    return CONDCONV_STATUS_SUCCESS;
}

static const char *data_algo_name(cudnnConvolutionBwdDataAlgo_t a)
{
    switch (a) {
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_0: return "algo_0";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_1: return "algo_1";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT: return "fft";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING: return "fft_tiling";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD: return "winograd";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED: return "winograd_nonfused";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT: break;
    }
    return "unknown";
}

static const char *filter_algo_name(cudnnConvolutionBwdFilterAlgo_t a)
{
    switch (a) {
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0: return "algo_0";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1: return "algo_1";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT: return "fft";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3: return "algo_3";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD: return "winograd";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED: return "winograd_nonfused";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING: return "fft_tiling";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT: break;
    }
    return "unknown";
}

static const char *math_name(condconv_dtype dtype, cudnnMathType_t t)
{
    return t == CUDNN_FMA_MATH           ? "fma"
           : dtype != CONDCONV_DTYPE_F32 ? "tensor ops"
           : t == CUDNN_DEFAULT_MATH     ? "tf32 allowed"
                                         : "tensor ops";
}

void cc_cudnn_conv_bwd_describe(const cc_cudnn_conv_bwd *conv, char *out, size_t out_len)
{
    const condconv_dtype dt = conv->data.dtype;
    if (!conv->has_filter) {
        snprintf(out, out_len, "cuDNN %s bwd data %s, %s; f32 accumulation", cc_dtype_name(dt),
                 data_algo_name(conv->data_algo), math_name(dt, conv->data.math_type));
        return;
    }
    snprintf(out, out_len, "cuDNN %s bwd data %s, %s; bwd filter %s, %s; f32 accumulation", cc_dtype_name(dt),
             data_algo_name(conv->data_algo), math_name(dt, conv->data.math_type), filter_algo_name(conv->filter_algo),
             math_name(dt, conv->filter.math_type));
}
