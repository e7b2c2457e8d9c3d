/* What every row is compared with, measured in the same run on the same
 * stream:
 * - the static convolution of the same shape (the yardstick): one dense
 *   cuDNN convolution, batch N, same groups, the fastest algorithm that
 *   cudnnFindConvolutionForwardAlgorithmEx finds for it (FMA-only kernels
 *   for fp32 rows, TF32 tensor-core kernels allowed for tf32 rows). When the
 *   row has a bias or an activation (--epilogue), the library's own bias +
 *   activation kernel follows it: the same epilogue the CondConv algorithms
 *   run when they do not fuse it, so both sides pay for it the same way.
 * - the ceilings: device-to-device copy bandwidth (bytes read + written) and
 *   a large cuBLAS f32 GEMM, strict FP32 and with TF32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cudnn.h>
#include <nvtx3/nvToolsExt.h>

#include "bench.h"
#include "cudnn_conv.h"
#include "epilogue.h"

#define STATIC_MAX_WORKSPACE ((size_t)1 << 30)

struct bench_static {
    cudnnHandle_t cudnn;
    cudnnTensorDescriptor_t x_desc, y_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    cudnnConvolutionFwdAlgo_t algo;
    void *workspace;
    size_t workspace_bytes;
    float *w, *bias; /* bias [N][Cout]: the epilogue kernel's per-sample layout, every sample the same */
    condconv_activation act;
    long long planes, plane;
    int batch, cout, dtype, layout;
    float *const *x;
    float *const *y;
    cudaStream_t stream;
    char algo_name[40];
    /* --backward: dx and dW of the same convolution, each with its own
     * convolution descriptor (the algorithms may run different math types). */
    int backward;
    cudnnConvolutionDescriptor_t data_desc, filter_desc;
    cudnnConvolutionBwdDataAlgo_t data_algo;
    cudnnConvolutionBwdFilterAlgo_t filter_algo;
    size_t data_ws, filter_ws;
    void *dx, *dw;
};

/* The yardstick keeps to the library's strict-f32 rule (host/cudnn_conv.c):
 * FMA math and direct summation, no FFT or Winograd transforms, so that both
 * sides of a strict-f32 comparison deliver the same accuracy. */
static int strict_f32_algo(cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t t)
{
    return t == CUDNN_FMA_MATH && algo != CUDNN_CONVOLUTION_FWD_ALGO_FFT &&
           algo != CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING && algo != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD &&
           algo != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}

/* One cuDNN handle for the whole run (the bench is single-threaded). */
static cudnnHandle_t shared_cudnn;

void bench_baselines_shutdown(void)
{
    if (shared_cudnn) (void)cudnnDestroy(shared_cudnn);
    shared_cudnn = NULL;
}

/* Uniform values in [-scale, scale), in the dtype, on the device. */
static float *upload_uniform(size_t count, float scale, condconv_dtype dtype, char *err, size_t err_len)
{
    float *host = malloc(sizeof(float) * count), *dev = NULL;
    if (host == NULL) {
        snprintf(err, err_len, "out of host memory");
        return NULL;
    }
    uint32_t state = 0x12345678u;
    for (size_t i = 0; i < count; ++i) {
        state = state * 1664525u + 1013904223u;
        host[i] = scale * ((float)(state >> 8) / 8388608.0f - 1.0f);
    }
    const size_t bytes = bench_dtype_size(dtype) * count;
    (void)condconv_convert(CONDCONV_DTYPE_F32, host, dtype, host, count); /* in place, narrowing */
    cudaError_t e = cudaMalloc((void **)&dev, bytes);
    if (e == cudaSuccess) e = cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice);
    /* Done before the non-blocking stream uses it (cudaMemcpy may return before the DMA lands). */
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    free(host);
    if (e != cudaSuccess) {
        snprintf(err, err_len, "uploading %zu floats: %s", count, cudaGetErrorString(e));
        if (dev) (void)cudaFree(dev);
        return NULL;
    }
    return dev;
}

static cudnnDataType_t cudnn_type(condconv_dtype dtype)
{
    return dtype == CONDCONV_DTYPE_F16    ? CUDNN_DATA_HALF
           : dtype == CONDCONV_DTYPE_BF16 ? CUDNN_DATA_BFLOAT16
                                          : CUDNN_DATA_FLOAT;
}

/* Half precision: tensor cores, f32 accumulation (the convolution's compute
 * type is float), NHWC filters (KRSC) with NHWC activations, as cuDNN's
 * fast half kernels want them. */
int bench_static_create(bench_static **out, const bench_layer *l, int batch, condconv_math math, condconv_dtype dtype,
                        condconv_layout layout, int has_bias, condconv_activation act, cudaStream_t stream, char *err,
                        size_t err_len)
{
    *out = NULL;
    bench_static *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, err_len, "out of host memory");
        return -1;
    }
    void *find_x = NULL, *find_y = NULL;
    const int pad = bench_layer_pad(l), ho = bench_layer_out(l, l->h), wo = bench_layer_out(l, l->w);
    s->stream = stream;
    s->act = act;
    s->planes = (long long)batch * l->cout;
    s->batch = batch;
    s->cout = l->cout;
    s->dtype = (int)dtype;
    s->layout = (int)layout;
    s->plane = (long long)ho * wo;
    if (shared_cudnn == NULL) CUDNN_TRY(cudnnCreate(&shared_cudnn));
    s->cudnn = shared_cudnn;
    CUDNN_TRY(cudnnSetStream(s->cudnn, stream));
    CUDNN_TRY(cudnnCreateTensorDescriptor(&s->x_desc));
    CUDNN_TRY(cudnnCreateTensorDescriptor(&s->y_desc));
    CUDNN_TRY(cudnnCreateFilterDescriptor(&s->w_desc));
    CUDNN_TRY(cudnnCreateConvolutionDescriptor(&s->conv_desc));
    const cudnnDataType_t type = cudnn_type(dtype);
    const cudnnTensorFormat_t format = layout == CONDCONV_LAYOUT_NHWC ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    const int half = dtype != CONDCONV_DTYPE_F32;
    const size_t es = bench_dtype_size(dtype);
    CUDNN_TRY(cudnnSetTensor4dDescriptor(s->x_desc, format, type, batch, l->cin, l->h, l->w));
    CUDNN_TRY(cudnnSetFilter4dDescriptor(s->w_desc, type, format, l->cout, l->cin / l->groups, l->k, l->k));
    CUDNN_TRY(cudnnSetConvolution2dDescriptor(s->conv_desc, pad, pad, l->stride, l->stride, 1, 1,
                                              CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_TRY(cudnnSetConvolutionGroupCount(s->conv_desc, l->groups));
    CUDNN_TRY(cudnnSetConvolutionMathType(s->conv_desc, half                         ? CUDNN_TENSOR_OP_MATH
                                                        : math == CONDCONV_MATH_TF32 ? CUDNN_DEFAULT_MATH
                                                                                     : CUDNN_FMA_MATH));
    CUDNN_TRY(cudnnSetTensor4dDescriptor(s->y_desc, format, type, batch, l->cout, ho, wo));

    const size_t w_count = (size_t)l->cout * (size_t)(l->cin / l->groups) * (size_t)l->k * (size_t)l->k;
    s->w = upload_uniform(w_count, 1.0f / sqrtf((float)(w_count / (size_t)l->cout)), dtype, err, err_len);
    if (s->w == NULL) goto fail;
    if (has_bias) {
        s->bias = upload_uniform((size_t)s->planes, 0.1f, CONDCONV_DTYPE_F32, err, err_len);
        if (s->bias == NULL) goto fail;
    }

    /* Find: every algorithm cuDNN offers, on scratch buffers, fastest first. */
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    CUDNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(s->cudnn, s->x_desc, s->w_desc, s->conv_desc, s->y_desc,
                                                     CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf));
    size_t max_ws = 0;
    for (int i = 0; i < returned; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= STATIC_MAX_WORKSPACE && perf[i].memory > max_ws)
            max_ws = perf[i].memory;
    const size_t x_bytes = es * (size_t)batch * (size_t)l->cin * (size_t)l->h * (size_t)l->w;
    CUDA_TRY(cudaMalloc(&find_x, x_bytes));
    CUDA_TRY(cudaMalloc(&find_y, es * (size_t)s->planes * (size_t)s->plane));
    CUDA_TRY(cudaMemsetAsync(find_x, 0, x_bytes, stream));
    if (max_ws > 0) CUDA_TRY(cudaMalloc(&s->workspace, max_ws));
    CUDNN_TRY(cudnnFindConvolutionForwardAlgorithmEx(s->cudnn, s->x_desc, find_x, s->w_desc, s->w, s->conv_desc,
                                                     s->y_desc, find_y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned,
                                                     perf, s->workspace, max_ws));
    int chosen = -1;
    for (int i = 0; i < returned && chosen < 0; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= max_ws &&
            (half || math == CONDCONV_MATH_TF32 || strict_f32_algo(perf[i].algo, perf[i].mathType)))
            chosen = i;
    if (chosen < 0) {
        snprintf(err, err_len, "cuDNN found no forward algorithm for this shape%s",
                 math == CONDCONV_MATH_F32 ? " without TF32" : "");
        goto fail;
    }
    s->algo = perf[chosen].algo;
    s->workspace_bytes = perf[chosen].memory;
    CUDNN_TRY(cudnnSetConvolutionMathType(s->conv_desc, perf[chosen].mathType));
    snprintf(s->algo_name, sizeof s->algo_name, "cudnn:%s%s", cc_cudnn_fwd_algo_name(s->algo),
             perf[chosen].mathType == CUDNN_FMA_MATH ? ""
             : half                                  ? "+tc"
                                                     : "+tf32");
    (void)cudaFree(find_x);
    (void)cudaFree(find_y);
    *out = s;
    return 0;
fail:
    if (find_x) (void)cudaFree(find_x);
    if (find_y) (void)cudaFree(find_y);
    bench_static_destroy(s);
    return -1;
}

void bench_static_destroy(bench_static *s)
{
    if (s == NULL) return;
    if (s->x_desc) (void)cudnnDestroyTensorDescriptor(s->x_desc);
    if (s->y_desc) (void)cudnnDestroyTensorDescriptor(s->y_desc);
    if (s->w_desc) (void)cudnnDestroyFilterDescriptor(s->w_desc);
    if (s->conv_desc) (void)cudnnDestroyConvolutionDescriptor(s->conv_desc);
    if (s->data_desc) (void)cudnnDestroyConvolutionDescriptor(s->data_desc);
    if (s->filter_desc) (void)cudnnDestroyConvolutionDescriptor(s->filter_desc);
    if (s->dx) (void)cudaFree(s->dx);
    if (s->dw) (void)cudaFree(s->dw);
    if (s->workspace) (void)cudaFree(s->workspace);
    if (s->w) (void)cudaFree(s->w);
    if (s->bias) (void)cudaFree(s->bias);
    free(s);
}

void bench_static_bind(bench_static *s, float *const *x, float *const *y)
{
    s->x = x;
    s->y = y;
}

const char *bench_static_algo(const bench_static *s) { return s->algo_name; }
size_t bench_static_workspace(const bench_static *s) { return s->workspace_bytes; }

/* Phase events as the library records them (forward > conv, epilogue), when
 * the bench has installed its phase timer. */
static void mark(cc_phase p, int end, cudaStream_t stream)
{
    if (cc_phase_timer_current != NULL) cc_phase_record(cc_phase_timer_current, p, end, stream);
}

int bench_static_launch(void *arg, int set, char *err, size_t err_len)
{
    bench_static *s = arg;
    const float one = 1.0f, zero = 0.0f;
    int rc = -1;
    nvtxRangePushA("bench.static");
    mark(CC_PHASE_FORWARD, 0, s->stream);
    mark(CC_PHASE_CONV, 0, s->stream);
    CUDNN_TRY(cudnnConvolutionForward(s->cudnn, &one, s->x_desc, s->x[set], s->w_desc, s->w, s->conv_desc, s->algo,
                                      s->workspace, s->workspace_bytes, &zero, s->y_desc, s->y[set]));
    mark(CC_PHASE_CONV, 1, s->stream);
    if (s->bias != NULL || s->act != CONDCONV_ACTIVATION_NONE) {
        mark(CC_PHASE_EPILOGUE, 0, s->stream);
        CUDA_TRY(cc_launch_bias_activation(s->dtype, s->layout, s->y[set], s->layout, s->y[set], s->bias, s->batch,
                                           s->cout, s->plane, (int)s->act, s->stream));
        mark(CC_PHASE_EPILOGUE, 1, s->stream);
    }
    mark(CC_PHASE_FORWARD, 1, s->stream);
    rc = 0;
fail:
    nvtxRangePop();
    return rc;
}

/* ---------------------------------------------------------------- backward */

/* The rule of the forward's yardstick, per direction: strict f32 keeps to
 * FMA math and direct summation; TF32 and half rows take what cuDNN ranks
 * first. Determinism is not asked of the yardstick: it is what a static
 * layer's training step gets by default (PyTorch, cudnn.benchmark off:
 * cuDNN's heuristic first choice), the bar condconv's deterministic
 * backward has to clear. */
static int bwd_allowed(int half, condconv_math math, int direct, cudnnMathType_t t)
{
    return half || math == CONDCONV_MATH_TF32 || (t == CUDNN_FMA_MATH && direct);
}

static int copy_conv_desc(const bench_layer *l, cudnnConvolutionDescriptor_t *d, char *err, size_t err_len)
{
    const int pad = bench_layer_pad(l);
    CUDNN_TRY(cudnnCreateConvolutionDescriptor(d));
    CUDNN_TRY(cudnnSetConvolution2dDescriptor(*d, pad, pad, l->stride, l->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT));
    CUDNN_TRY(cudnnSetConvolutionGroupCount(*d, l->groups));
    return 0;
fail:
    return -1;
}

int bench_static_enable_backward(bench_static *s, const bench_layer *l, condconv_math math, char *err, size_t err_len)
{
    const int half = s->dtype != (int)CONDCONV_DTYPE_F32;
    const size_t es = bench_dtype_size((condconv_dtype)s->dtype);
    const size_t x_bytes = es * (size_t)s->batch * (size_t)l->cin * (size_t)l->h * (size_t)l->w;
    const size_t w_bytes = es * (size_t)l->cout * (size_t)(l->cin / l->groups) * (size_t)l->k * (size_t)l->k;
    if (copy_conv_desc(l, &s->data_desc, err, err_len) != 0 || copy_conv_desc(l, &s->filter_desc, err, err_len) != 0)
        return -1;
    cudnnConvolutionBwdDataAlgoPerf_t dp[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    cudnnConvolutionBwdFilterAlgoPerf_t fp[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int returned = 0, chosen = -1;
    CUDNN_TRY(cudnnSetConvolutionMathType(s->data_desc, half                         ? CUDNN_TENSOR_OP_MATH
                                                        : math == CONDCONV_MATH_TF32 ? CUDNN_DEFAULT_MATH
                                                                                     : CUDNN_FMA_MATH));
    CUDNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(s->cudnn, s->w_desc, s->y_desc, s->data_desc, s->x_desc,
                                                          CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, dp));
    for (int i = 0; i < returned && chosen < 0; ++i)
        if (dp[i].status == CUDNN_STATUS_SUCCESS && dp[i].memory <= STATIC_MAX_WORKSPACE &&
            bwd_allowed(half, math,
                        dp[i].algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 ||
                            dp[i].algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                        dp[i].mathType))
            chosen = i;
    if (chosen < 0) {
        snprintf(err, err_len, "cuDNN offers no backward-data algorithm for this shape");
        return -1;
    }
    s->data_algo = dp[chosen].algo;
    s->data_ws = dp[chosen].memory;
    CUDNN_TRY(cudnnSetConvolutionMathType(s->data_desc, dp[chosen].mathType));
    CUDNN_TRY(cudnnSetConvolutionMathType(s->filter_desc, half                         ? CUDNN_TENSOR_OP_MATH
                                                          : math == CONDCONV_MATH_TF32 ? CUDNN_DEFAULT_MATH
                                                                                       : CUDNN_FMA_MATH));
    CUDNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(s->cudnn, s->x_desc, s->y_desc, s->filter_desc, s->w_desc,
                                                            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, fp));
    chosen = -1;
    for (int i = 0; i < returned && chosen < 0; ++i)
        if (fp[i].status == CUDNN_STATUS_SUCCESS && fp[i].memory <= STATIC_MAX_WORKSPACE &&
            bwd_allowed(half, math,
                        fp[i].algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 ||
                            fp[i].algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
                            fp[i].algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
                        fp[i].mathType))
            chosen = i;
    if (chosen < 0) {
        snprintf(err, err_len, "cuDNN offers no backward-filter algorithm for this shape");
        return -1;
    }
    s->filter_algo = fp[chosen].algo;
    s->filter_ws = fp[chosen].memory;
    CUDNN_TRY(cudnnSetConvolutionMathType(s->filter_desc, fp[chosen].mathType));
    size_t need = s->workspace_bytes;
    if (s->data_ws > need) need = s->data_ws;
    if (s->filter_ws > need) need = s->filter_ws;
    if (need > s->workspace_bytes) {
        if (s->workspace) (void)cudaFree(s->workspace);
        s->workspace = NULL;
        CUDA_TRY(cudaMalloc(&s->workspace, need));
    }
    CUDA_TRY(cudaMalloc(&s->dx, x_bytes));
    CUDA_TRY(cudaMalloc(&s->dw, w_bytes));
    s->backward = 1;
    const size_t len = strlen(s->algo_name);
    snprintf(s->algo_name + len, sizeof s->algo_name - len, "+bwd");
    return 0;
fail:
    return -1;
}

int bench_static_train_launch(void *arg, int set, char *err, size_t err_len)
{
    bench_static *s = arg;
    const float one = 1.0f, zero = 0.0f;
    if (bench_static_launch(arg, set, err, err_len) != 0) return -1;
    int rc = -1;
    nvtxRangePushA("bench.static.backward");
    /* dy is the forward's own output: any O(1) values time the same. */
    CUDNN_TRY(cudnnConvolutionBackwardData(s->cudnn, &one, s->w_desc, s->w, s->y_desc, s->y[set], s->data_desc,
                                           s->data_algo, s->workspace, s->data_ws, &zero, s->x_desc, s->dx));
    CUDNN_TRY(cudnnConvolutionBackwardFilter(s->cudnn, &one, s->x_desc, s->x[set], s->y_desc, s->y[set], s->filter_desc,
                                             s->filter_algo, s->workspace, s->filter_ws, &zero, s->w_desc, s->dw));
    rc = 0;
fail:
    nvtxRangePop();
    return rc;
}

/* ---------------------------------------------------------------- ceilings */

static int compare_floats(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

#define CEILING_REPS 7

int bench_measure_ceilings(cudaStream_t stream, size_t free_bytes, bench_ceilings *c, char *err, size_t err_len)
{
    memset(c, 0, sizeof *c);
    void *src = NULL, *dst = NULL;
    float *a = NULL, *b = NULL, *a16 = NULL, *b16 = NULL, *d = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    cublasHandle_t cublas = NULL;
    float ms[CEILING_REPS];
    int rc = -1;
    CUDA_TRY(cudaEventCreate(&start));
    CUDA_TRY(cudaEventCreate(&stop));

    /* Copy: 1 GiB each way, far beyond any L2, or less on a small card. */
    size_t bytes = (size_t)1 << 30;
    while (bytes > ((size_t)64 << 20) && 4 * bytes > free_bytes) bytes /= 2;
    CUDA_TRY(cudaMalloc(&src, bytes));
    CUDA_TRY(cudaMalloc(&dst, bytes));
    CUDA_TRY(cudaMemsetAsync(src, 1, bytes, stream));
    for (int r = 0; r < CEILING_REPS + 2; ++r) {
        CUDA_TRY(cudaEventRecord(start, stream));
        CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
        CUDA_TRY(cudaEventRecord(stop, stream));
        CUDA_TRY(cudaEventSynchronize(stop));
        if (r >= 2) CUDA_TRY(cudaEventElapsedTime(&ms[r - 2], start, stop));
    }
    qsort(ms, CEILING_REPS, sizeof ms[0], compare_floats);
    c->copy_bytes = bytes;
    c->copy_gbps = 2.0 * (double)bytes / ((double)ms[CEILING_REPS / 2] * 1e6);
    (void)cudaFree(src);
    (void)cudaFree(dst);
    src = dst = NULL;

    /* GEMM: n x n x n f32, 8192 where memory allows. */
    int n = 8192;
    while (n > 1024 && 3 * sizeof(float) * (size_t)n * (size_t)n * 2 > free_bytes) n /= 2;
    const size_t elems = (size_t)n * (size_t)n;
    /* Random operands: a product of zeros runs faster than real data (seen
     * on an H200: 13% for bf16) and would overstate the ceiling. */
    a = upload_uniform(elems, 1.0f, CONDCONV_DTYPE_F32, err, err_len);
    b = upload_uniform(elems, 1.0f, CONDCONV_DTYPE_F32, err, err_len);
    a16 = upload_uniform(elems, 1.0f, CONDCONV_DTYPE_F16, err, err_len);
    b16 = upload_uniform(elems, 1.0f, CONDCONV_DTYPE_F16, err, err_len);
    if (a == NULL || b == NULL || a16 == NULL || b16 == NULL) goto fail;
    CUDA_TRY(cudaMalloc((void **)&d, sizeof(float) * elems));
    CUBLAS_TRY(cublasCreate(&cublas));
    CUBLAS_TRY(cublasSetStream(cublas, stream));
    /* Strict f32, TF32, then f16 operands with f32 accumulation (tensor cores). */
    for (int mode = 0; mode < 3; ++mode) {
        const cublasComputeType_t compute = mode == 1 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        const cudaDataType_t in_type = mode == 2 ? CUDA_R_16F : CUDA_R_32F;
        const void *in_a = mode == 2 ? (const void *)a16 : (const void *)a;
        const void *in_b = mode == 2 ? (const void *)b16 : (const void *)b;
        const float one = 1.0f, zero = 0.0f;
        for (int r = 0; r < CEILING_REPS + 2; ++r) {
            CUDA_TRY(cudaEventRecord(start, stream));
            CUBLAS_TRY(cublasGemmEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, in_a, in_type, n, in_b, in_type, n,
                                    &zero, d, CUDA_R_32F, n, compute, CUBLAS_GEMM_DEFAULT));
            CUDA_TRY(cudaEventRecord(stop, stream));
            CUDA_TRY(cudaEventSynchronize(stop));
            if (r >= 2) CUDA_TRY(cudaEventElapsedTime(&ms[r - 2], start, stop));
        }
        qsort(ms, CEILING_REPS, sizeof ms[0], compare_floats);
        const double tflops = 2.0 * (double)n * (double)n * (double)n / ((double)ms[CEILING_REPS / 2] * 1e9);
        if (mode == 0)
            c->sgemm_tflops = tflops;
        else if (mode == 1)
            c->tf32_tflops = tflops;
        else
            c->f16_tflops = tflops;
    }
    c->gemm_size = n;
    c->measured = 1;
    rc = 0;
fail:
    if (cublas) (void)cublasDestroy(cublas);
    if (src) (void)cudaFree(src);
    if (dst) (void)cudaFree(dst);
    if (a) (void)cudaFree(a);
    if (b) (void)cudaFree(b);
    if (a16) (void)cudaFree(a16);
    if (b16) (void)cudaFree(b16);
    if (d) (void)cudaFree(d);
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    return rc;
}
