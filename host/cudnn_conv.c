/* cuDNN convolution setup and execution for the algorithms built on cuDNN.
 * The legacy cudnnConvolution* API (deprecated in cuDNN 9, still shipped) is
 * used because it expresses grouped convolution, Find/Get algorithm choice
 * and fused bias + ReLU directly; the graph API (cudnn_graph.c) is a
 * candidate beside it (cc_cudnn_conv_create_graph), timed by AUTO. */
#include "cudnn_conv.h"

#include <stdio.h>
#include <string.h>

#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "layer.h"

/* Algorithms needing more workspace than this are not considered. */
#define CC_CUDNN_MAX_WORKSPACE ((size_t)1 << 30)

void cc_cudnn_conv_destroy(cc_cudnn_conv *conv)
{
    if (conv->use_graph) cc_cudnn_graph_destroy(&conv->graph);
    if (conv->x_desc) (void)cudnnDestroyTensorDescriptor(conv->x_desc);
    if (conv->y_desc) (void)cudnnDestroyTensorDescriptor(conv->y_desc);
    if (conv->bias_desc) (void)cudnnDestroyTensorDescriptor(conv->bias_desc);
    if (conv->w_desc) (void)cudnnDestroyFilterDescriptor(conv->w_desc);
    if (conv->conv_desc) (void)cudnnDestroyConvolutionDescriptor(conv->conv_desc);
    if (conv->relu_desc) (void)cudnnDestroyActivationDescriptor(conv->relu_desc);
    memset(conv, 0, sizeof *conv);
}

/* Find (which runs every algorithm cuDNN has) is used only up to this many
 * groups: with thousands of groups some algorithms loop over the groups, and
 * on an H200 Find over 32 x 480 groups did not return in 160 s. Beyond it
 * cuDNN's heuristic ranking is used (bench/results/2026-11-28-nvidia-h200-2). */
#define CC_CUDNN_FIND_MAX_GROUPS 64

/* Which of cuDNN's (algorithm, math type) pairs a plan may run. Every mode
 * admits only algorithms that sum directly (implicit/explicit GEMM, direct):
 * the FFT and Winograd algorithms transform the operands, and an H200 run
 * measured 7e-3 relative error from one on a 5x5 f32 layer, above even the
 * TF32 bound (TF32 keeps 10 mantissa bits, ~1e-3 per product, which direct
 * summation does not amplify; a transform's rounding is amplified by the
 * transform's size). Strict f32 also needs FMA math: cuDNN's DEFAULT math
 * permits TF32 on Ampere and later, which would silently cost ~3 decimal
 * digits. TF32 mode admits FMA and DEFAULT (TF32) math but never
 * TENSOR_OP_MATH_ALLOW_CONVERSION, which may round f32 operands to f16.
 * Half-precision data runs on tensor cores with f32 accumulation, and also
 * sums directly: transforms in 16-bit data would add their rounding to the
 * one the storage type already costs. */
int cc_cudnn_algo_allowed(condconv_dtype dtype, condconv_math math, cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t t)
{
    const int transform = algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT || algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
                          algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD ||
                          algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
    return !transform && cc_cudnn_math_allowed(dtype, math, t);
}

int cc_cudnn_math_allowed(condconv_dtype dtype, condconv_math math, cudnnMathType_t t)
{
    if (dtype != CONDCONV_DTYPE_F32) return 1;
    if (math == CONDCONV_MATH_TF32) return t == CUDNN_FMA_MATH || t == CUDNN_DEFAULT_MATH || t == CUDNN_TENSOR_OP_MATH;
    return t == CUDNN_FMA_MATH;
}

static cudnnDataType_t data_type(condconv_dtype dtype)
{
    return dtype == CONDCONV_DTYPE_F16    ? CUDNN_DATA_HALF
           : dtype == CONDCONV_DTYPE_BF16 ? CUDNN_DATA_BFLOAT16
                                          : CUDNN_DATA_FLOAT;
}

static size_t x_bytes(const cc_conv_shape *s)
{
    return cc_dtype_size(s->dtype) * (size_t)s->n * (size_t)s->c * (size_t)s->h * (size_t)s->w;
}
static size_t w_bytes(const cc_conv_shape *s)
{
    return cc_dtype_size(s->dtype) * (size_t)s->k * (size_t)(s->c / s->groups) * (size_t)s->r * (size_t)s->s;
}
static size_t y_bytes(const cc_conv_shape *s)
{
    return cc_dtype_size(s->dtype) * (size_t)s->n * (size_t)s->k * (size_t)s->out_h * (size_t)s->out_w;
}

/* Runs the convolution once on scratch buffers: cuDNN's ranking sometimes
 * offers an algorithm that then fails to execute (PyTorch, too, tries them in
 * order). CUDNN_ERROR means "try the next one". */
static condconv_status try_run(condconv_context_t ctx, const cc_conv_shape *s, cc_scratch *scratch,
                               const cc_cudnn_conv *conv, const char *func)
{
    void *x, *w, *y, *ws;
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, x_bytes(s), &x, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_W, w_bytes(s), &w, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, y_bytes(s), &y, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, conv->workspace_bytes, &ws, func));
    return cc_cudnn_conv_run(ctx, conv, x, w, NULL, y, ws, func);
}

condconv_status cc_cudnn_conv_descriptors(const cc_conv_shape *s, condconv_math math, cc_cudnn_conv *conv,
                                          const char *func)
{
    const cudnnDataType_t type = data_type(s->dtype);
    const cudnnTensorFormat_t format = s->layout == CONDCONV_LAYOUT_NHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    conv->dtype = s->dtype;
    CC_CUDNN_TRY(cudnnCreateTensorDescriptor(&conv->x_desc), func);
    CC_CUDNN_TRY(cudnnCreateTensorDescriptor(&conv->y_desc), func);
    CC_CUDNN_TRY(cudnnCreateFilterDescriptor(&conv->w_desc), func);
    CC_CUDNN_TRY(cudnnCreateConvolutionDescriptor(&conv->conv_desc), func);
    CC_CUDNN_TRY(cudnnSetTensor4dDescriptor(conv->x_desc, format, type, s->n, s->c, s->h, s->w), func);
    CC_CUDNN_TRY(cudnnSetFilter4dDescriptor(conv->w_desc, type, format, s->k, s->c / s->groups, s->r, s->s), func);
    /* f32 accumulation for every dtype (half data: "pseudo-half" config). */
    CC_CUDNN_TRY(cudnnSetConvolution2dDescriptor(conv->conv_desc, s->pad_h, s->pad_w, s->stride_h, s->stride_w,
                                                 s->dilation_h, s->dilation_w, CUDNN_CROSS_CORRELATION,
                                                 CUDNN_DATA_FLOAT),
                 func);
    CC_CUDNN_TRY(cudnnSetConvolutionGroupCount(conv->conv_desc, s->groups), func);
    /* For f32 data, TF32 tensor cores are what CUDNN_DEFAULT_MATH permits on
     * Ampere and later (PyTorch's allow_tf32 sets the same); TENSOR_OP_MATH
     * only permits tensor cores without down-converting the operands. Half
     * data always may use tensor cores. */
    const cudnnMathType_t math_type = s->dtype != CONDCONV_DTYPE_F32 ? CUDNN_TENSOR_OP_MATH
                                      : math == CONDCONV_MATH_TF32   ? CUDNN_DEFAULT_MATH
                                                                     : CUDNN_FMA_MATH;
    CC_CUDNN_TRY(cudnnSetConvolutionMathType(conv->conv_desc, math_type), func);
    int on, oc, oh, ow;
    CC_CUDNN_TRY(cudnnGetConvolution2dForwardOutputDim(conv->conv_desc, conv->x_desc, conv->w_desc, &on, &oc, &oh, &ow),
                 func);
    if (on != s->n || oc != s->k || oh != s->out_h || ow != s->out_w)
        return cc_fail(CONDCONV_STATUS_INTERNAL_ERROR,
                       "%s: cuDNN computes output %dx%dx%dx%d where condconv expects %dx%dx%dx%d", func, on, oc, oh, ow,
                       s->n, s->k, s->out_h, s->out_w);
    CC_CUDNN_TRY(cudnnSetTensor4dDescriptor(conv->y_desc, format, type, s->n, s->k, s->out_h, s->out_w), func);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status choose_algorithm(condconv_context_t ctx, const cc_conv_shape *s, condconv_math math,
                                        condconv_algo_select select, cc_scratch *scratch, cc_cudnn_conv *conv,
                                        const char *func)
{
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    CC_CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(ctx->cudnn, conv->x_desc, conv->w_desc, conv->conv_desc,
                                                        conv->y_desc, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned,
                                                        perf),
                 func);
    conv->measured_ms = -1.0f;
    const int find = select == CONDCONV_SELECT_MEASURE && s->groups <= CC_CUDNN_FIND_MAX_GROUPS;
    if (find) {
        size_t max_ws = 0;
        for (int i = 0; i < returned; ++i)
            if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= CC_CUDNN_MAX_WORKSPACE &&
                perf[i].memory > max_ws)
                max_ws = perf[i].memory;
        void *x, *w, *y, *ws;
        CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, x_bytes(s), &x, func));
        CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_W, w_bytes(s), &w, func));
        CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, y_bytes(s), &y, func));
        CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, max_ws, &ws, func));
        CC_CUDNN_TRY(cudnnFindConvolutionForwardAlgorithmEx(
                         ctx->cudnn, conv->x_desc, x, conv->w_desc, w, conv->conv_desc, conv->y_desc, y,
                         CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf, ws, max_ws),
                     func);
    }
    /* Both lists are sorted best first (measured time, or cuDNN's estimate).
     * Find has run its choices already; a heuristic choice is run once here. */
    for (int i = 0; i < returned; ++i) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > CC_CUDNN_MAX_WORKSPACE ||
            !cc_cudnn_algo_allowed(s->dtype, math, perf[i].algo, perf[i].mathType))
            continue;
        conv->algo = perf[i].algo;
        conv->math_type = perf[i].mathType;
        conv->workspace_bytes = perf[i].memory;
        if (find) conv->measured_ms = perf[i].time;
        CC_CUDNN_TRY(cudnnSetConvolutionMathType(conv->conv_desc, perf[i].mathType), func);
        if (!find) {
            const condconv_status st = try_run(ctx, s, scratch, conv, func);
            if (st == CONDCONV_STATUS_CUDNN_ERROR) continue;
            CC_TRY(st);
        }
        return CONDCONV_STATUS_SUCCESS;
    }
    return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                   "%s: cuDNN offers no forward algorithm for %dx%dx%dx%d, filters %dx%dx%dx%d, groups %d%s", func,
                   s->n, s->c, s->h, s->w, s->k, s->c / s->groups, s->r, s->s, s->groups,
                   math == CONDCONV_MATH_F32 ? " without TF32" : "");
}

/* Keeps the fused bias + ReLU only if cuDNN runs it with the chosen algorithm. */
static condconv_status try_fused_bias_relu(condconv_context_t ctx, const cc_conv_shape *s, cc_scratch *scratch,
                                           cc_cudnn_conv *conv, const char *func)
{
    CC_CUDNN_TRY(cudnnCreateTensorDescriptor(&conv->bias_desc), func);
    CC_CUDNN_TRY(cudnnSetTensor4dDescriptor(conv->bias_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, s->k, 1, 1), func);
    CC_CUDNN_TRY(cudnnCreateActivationDescriptor(&conv->relu_desc), func);
    CC_CUDNN_TRY(cudnnSetActivationDescriptor(conv->relu_desc, CUDNN_ACTIVATION_RELU, CUDNN_PROPAGATE_NAN, 0.0), func);
    void *x, *w, *y, *b, *ws;
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, x_bytes(s), &x, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_W, w_bytes(s), &w, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, y_bytes(s), &y, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_ALPHA, sizeof(float) * (size_t)s->k, &b, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, conv->workspace_bytes, &ws, func));
    conv->fused_bias_relu = 1;
    condconv_status st = cc_cudnn_conv_run(ctx, conv, x, w, b, y, ws, func);
    if (st == CONDCONV_STATUS_CUDNN_ERROR) {
        conv->fused_bias_relu = 0; /* not for this algorithm: bias and ReLU go to the epilogue */
        return CONDCONV_STATUS_SUCCESS;
    }
    return st;
}

condconv_status cc_cudnn_conv_create(condconv_context_t ctx, const cc_conv_shape *shape, condconv_math math,
                                     condconv_algo_select select, int want_bias_relu, cc_scratch *scratch,
                                     cc_cudnn_conv *conv, const char *func)
{
    memset(conv, 0, sizeof *conv);
    condconv_status st = cc_cudnn_conv_descriptors(shape, math, conv, func);
    if (st == CONDCONV_STATUS_SUCCESS) st = choose_algorithm(ctx, shape, math, select, scratch, conv, func);
    if (st == CONDCONV_STATUS_SUCCESS && want_bias_relu && shape->dtype == CONDCONV_DTYPE_F32)
        st = try_fused_bias_relu(ctx, shape, scratch, conv, func);
    if (st != CONDCONV_STATUS_SUCCESS) cc_cudnn_conv_destroy(conv);
    return st;
}

condconv_status cc_cudnn_conv_create_graph(condconv_context_t ctx, const cc_conv_shape *shape, condconv_math math,
                                           condconv_algo_select select, cc_scratch *scratch, cc_cudnn_conv *conv,
                                           const char *func)
{
    memset(conv, 0, sizeof *conv);
    conv->use_graph = 1;
    conv->dtype = shape->dtype;
    CC_TRY(cc_cudnn_graph_create(ctx, shape, math, select, scratch, &conv->graph, func));
    conv->workspace_bytes = conv->graph.workspace_bytes;
    conv->measured_ms = conv->graph.measured_ms;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_cudnn_conv_run(condconv_context_t ctx, const cc_cudnn_conv *conv, const void *x, const void *w,
                                  const float *bias, void *y, void *workspace, const char *func)
{
    if (conv->use_graph) return cc_cudnn_graph_run(ctx, &conv->graph, x, w, y, workspace, func);
    const float one = 1.0f, zero = 0.0f;
    if (conv->fused_bias_relu) {
        /* z = y with alpha2 = 0: cuDNN's documented way to have no residual. */
        CC_CUDNN_TRY(cudnnConvolutionBiasActivationForward(ctx->cudnn, &one, conv->x_desc, x, conv->w_desc, w,
                                                           conv->conv_desc, conv->algo, workspace,
                                                           conv->workspace_bytes, &zero, conv->y_desc, y,
                                                           conv->bias_desc, bias, conv->relu_desc, conv->y_desc, y),
                     func);
        return CONDCONV_STATUS_SUCCESS;
    }
    CC_CUDNN_TRY(cudnnConvolutionForward(ctx->cudnn, &one, conv->x_desc, x, conv->w_desc, w, conv->conv_desc,
                                         conv->algo, workspace, conv->workspace_bytes, &zero, conv->y_desc, y),
                 func);
    return CONDCONV_STATUS_SUCCESS;
}

const char *cc_cudnn_fwd_algo_name(cudnnConvolutionFwdAlgo_t a)
{
    switch (a) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return "implicit_gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: return "implicit_precomp_gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: return "gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT: return "direct";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT: return "fft";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING: return "fft_tiling";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD: return "winograd";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED: return "winograd_nonfused";
    case CUDNN_CONVOLUTION_FWD_ALGO_COUNT: break;
    }
    return "unknown";
}

void cc_cudnn_conv_describe(const cc_cudnn_conv *conv, char *out, size_t out_len)
{
    if (conv->use_graph) {
        cc_cudnn_graph_describe(&conv->graph, out, out_len);
        return;
    }
    /* FMA is strict f32; DEFAULT lets cuDNN use TF32 tensor cores; the
     * TENSOR_OP variants are never chosen for f32 data here. */
    const char *math = conv->math_type == CUDNN_FMA_MATH       ? "fma"
                       : conv->dtype != CONDCONV_DTYPE_F32     ? "tensor ops, f32 accumulation"
                       : conv->math_type == CUDNN_DEFAULT_MATH ? "tf32 allowed"
                                                               : "tensor ops";
    snprintf(out, out_len, "cuDNN %s %s, %s%s", cc_dtype_name(conv->dtype), cc_cudnn_fwd_algo_name(conv->algo), math,
             conv->fused_bias_relu ? ", bias+relu fused" : "");
}
