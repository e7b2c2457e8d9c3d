// cuDNN and cuBLAS for the CPU execution layer: direct reference
// implementations of exactly the calls condconv's host code makes, so that
// the algorithms built on them (cudnn_grouped, mixture, gemm_batched) run end
// to end on the CPU. Each call checks its arguments as the documentation
// states and returns the documented status otherwise:
//   cuDNN: the legacy convolution API of the cuDNN 9 API reference
//     (cudnn_cnn library: cudnnSetTensor4dDescriptor, cudnnSetFilter4dDescriptor,
//     cudnnSetConvolution2dDescriptor, cudnnGetConvolution2dForwardOutputDim,
//     cudnnGetConvolutionForwardAlgorithm_v7, cudnnFindConvolutionForwardAlgorithmEx,
//     cudnnConvolutionForward and its table of supported data type
//     configurations, cudnnConvolutionBiasActivationForward; backward:
//     cudnnGetConvolutionBackwardDataAlgorithm_v7,
//     cudnnGetConvolutionBackwardDataWorkspaceSize,
//     cudnnConvolutionBackwardData, cudnnFindConvolutionBackwardDataAlgorithmEx
//     and their BackwardFilter counterparts);
//   cuBLAS: cublasGemmStridedBatchedEx of the cuBLAS library documentation
//     (section "cublasGemmEx()": its table of supported compute, scale and
//     A/B/C type combinations; the leading-dimension and batch rules).
// The arithmetic is exact: double accumulation, alpha and beta applied in
// double, one rounding into the output type (round to nearest even), never
// reading the output when beta is 0. Algorithms are offered as a short list
// with plausible workspace sizes, and an algorithm really uses its whole
// workspace (it is overwritten), so a workspace the host code under-counted
// runs into the guard zones of the emulated cudaMalloc. Pointers must cover
// what the descriptors say (else: a fault, as a GPU's illegal address) and be
// aligned to their element size (else: a fault, as a GPU's misaligned
// address). After every computing call the guard zones are checked.
// Forward, backward data and backward filter share one index walk (walk)
// and one checked, stream-ordered launch (run_checked). The backward
// algorithm lists are adversarial for the host code: non-deterministic
// algorithms and FFT (where it applies) come before the deterministic
// direct one, as real cuDNN may rank them.
#include "cuda_cpu/vector_types.h" // before the toolkit's headers, as in the kernels

#include <cublas_v2.h>
#include <cudnn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <vector>

#include "runtime.h"

// The opaque handle and descriptor types, as this emulation implements them.
struct cudnnContext {
    cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
    bool set = false;
    cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    int n = 0, c = 0, h = 0, w = 0;
};
struct cudnnFilterStruct {
    bool set = false;
    cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    int k = 0, c = 0, h = 0, w = 0;
};
struct cudnnConvolutionStruct {
    bool set = false;
    int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1, groups = 1;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};
struct cudnnActivationStruct {
    bool set = false;
    cudnnActivationMode_t mode = CUDNN_ACTIVATION_RELU;
    double coef = 0.0;
};
struct cublasContext {
    cudaStream_t stream = nullptr;
};

namespace {

template <typename T>
cudnnStatus_t create(T **out, const char *what)
{
    if (out == nullptr) return CUDNN_STATUS_BAD_PARAM;
    if (cc_cpu::inject_alloc_failure(what)) return CUDNN_STATUS_ALLOC_FAILED;
    *out = new T;
    cc_cpu::handle_created();
    return CUDNN_STATUS_SUCCESS;
}

template <typename T>
cudnnStatus_t destroy(T *p)
{
    if (p == nullptr) return CUDNN_STATUS_SUCCESS;
    delete p;
    cc_cpu::handle_destroyed();
    return CUDNN_STATUS_SUCCESS;
}

// --- elements: f32, f16 and bf16 in memory, double in arithmetic -----------------------------------------
enum class elem { f32, f16, bf16, none };

size_t elem_size(elem e) { return e == elem::f32 ? 4 : e == elem::none ? 0 : 2; }

double half_to_double(uint16_t h)
{
    const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v;
    if (exp == 0x1f)
        v = mant != 0 ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    else if (exp == 0)
        v = std::ldexp(mant, -24);
    else
        v = std::ldexp(mant + 1024, exp - 25);
    return sign != 0 ? -v : v;
}

// d rounded to nearest even with `bits` significand bits, at most `max_exp`
// (largest finite = (2 - 2^(1-bits)) * 2^max_exp) and steps no finer than
// 2^min_ulp_exp (subnormals): one rounding, straight from double.
double round_to(double d, int bits, int max_exp, int min_ulp_exp)
{
    if (!std::isfinite(d) || d == 0.0) return d;
    int e;
    (void)std::frexp(d, &e); // |d| in [2^(e-1), 2^e)
    int ulp_exp = e - bits;
    if (ulp_exp < min_ulp_exp) ulp_exp = min_ulp_exp;
    const double r = std::ldexp(std::nearbyint(std::ldexp(d, -ulp_exp)), ulp_exp);
    const double largest = std::ldexp(2.0 - std::ldexp(1.0, 1 - bits), max_exp);
    if (std::fabs(r) > largest) return std::copysign(std::numeric_limits<double>::infinity(), d);
    return r;
}

uint16_t double_to_half(double d)
{
    const double r = round_to(d, 11, 15, -24);
    const uint16_t sign = std::signbit(r) ? 0x8000 : 0;
    if (std::isnan(r)) return 0x7e00;
    if (std::isinf(r)) return sign | 0x7c00;
    const double a = std::fabs(r);
    if (a < std::ldexp(1.0, -14)) return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::ldexp(a, 24)));
    int e;
    const double m = std::frexp(a, &e); // a = m 2^e, m in [0.5, 1)
    const auto mant = static_cast<uint16_t>(std::ldexp(m, 11) - 1024.0);
    return static_cast<uint16_t>(sign | ((e + 14) << 10) | mant);
}

double load(elem e, const void *base, size_t i)
{
    if (e == elem::f32) {
        float f;
        std::memcpy(&f, static_cast<const unsigned char *>(base) + 4 * i, 4);
        return f;
    }
    uint16_t h;
    std::memcpy(&h, static_cast<const unsigned char *>(base) + 2 * i, 2);
    if (e == elem::f16) return half_to_double(h);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

void store(elem e, void *base, size_t i, double v)
{
    unsigned char *p = static_cast<unsigned char *>(base);
    if (e == elem::f32) {
        const auto f = static_cast<float>(v); // IEEE conversion: round to nearest even, once
        std::memcpy(p + 4 * i, &f, 4);
    } else if (e == elem::f16) {
        const uint16_t h = double_to_half(v);
        std::memcpy(p + 2 * i, &h, 2);
    } else {
        // bfloat16: float's exponent range, 8 significand bits; the rounded
        // value is a float exactly, whose top half is the bfloat16.
        const auto f = static_cast<float>(round_to(v, 8, 127, -133));
        uint32_t bits;
        std::memcpy(&bits, &f, 4);
        const auto h = std::isnan(f) ? static_cast<uint16_t>(0x7fc0) : static_cast<uint16_t>(bits >> 16);
        std::memcpy(p + 2 * i, &h, 2);
    }
}

// A GPU faults on these; so does the layer (the FAULT line and abort of the
// emulated runtime: a status could be ignored, a wrong access must not be).
void fault_unless(bool ok, const char *call, const char *what, const void *p, size_t bytes, size_t align)
{
    if (!ok) {
        std::fprintf(stderr,
                     "cuda_cpu: FAULT: %s: %s %p, %zu bytes: not (wholly) device memory (a GPU would fault with an "
                     "illegal address)\n",
                     call, what, p, bytes);
        std::fflush(stderr);
        std::abort();
    }
    if (reinterpret_cast<uintptr_t>(p) % align != 0) {
        std::fprintf(stderr,
                     "cuda_cpu: FAULT: %s: %s %p is not aligned to its %zu-byte elements (misaligned address)\n", call,
                     what, p, align);
        std::fflush(stderr);
        std::abort();
    }
}

void check_range(const char *call, const char *what, const void *p, size_t bytes, size_t align)
{
    if (bytes == 0) return;
    fault_unless(p != nullptr && cc_cpu::is_device_range(p, bytes), call, what, p, bytes, align);
}

// --- cuDNN convolution ---------------------------------------------------------------------------------
elem cudnn_elem(cudnnDataType_t t)
{
    return t == CUDNN_DATA_FLOAT      ? elem::f32
           : t == CUDNN_DATA_HALF     ? elem::f16
           : t == CUDNN_DATA_BFLOAT16 ? elem::bf16
                                      : elem::none;
}

bool valid_format(cudnnTensorFormat_t f) { return f == CUDNN_TENSOR_NCHW || f == CUDNN_TENSOR_NHWC; }

size_t tensor_index(const cudnnTensorStruct &t, int n, int c, int h, int w)
{
    if (t.format == CUDNN_TENSOR_NHWC) return ((static_cast<size_t>(n) * t.h + h) * t.w + w) * t.c + c;
    return ((static_cast<size_t>(n) * t.c + c) * t.h + h) * t.w + w;
}

size_t filter_index(const cudnnFilterStruct &f, int k, int c, int r, int s)
{
    if (f.format == CUDNN_TENSOR_NHWC) return ((static_cast<size_t>(k) * f.h + r) * f.w + s) * f.c + c;
    return ((static_cast<size_t>(k) * f.c + c) * f.h + r) * f.w + s;
}

size_t tensor_elems(const cudnnTensorStruct &t) { return static_cast<size_t>(t.n) * t.c * t.h * t.w; }
size_t filter_elems(const cudnnFilterStruct &f) { return static_cast<size_t>(f.k) * f.c * f.h * f.w; }

int out_dim(int in, int pad, int filter, int dil, int stride)
{
    return (in + 2 * pad - (dil * (filter - 1) + 1)) / stride + 1;
}

// Which convolution a call computes: y from x and w (forward), dx from dy and
// w (backward data), dw from x and dy (backward filter). The descriptors are
// always those of x, w and y (dx, dw and dy have the shapes of x, w and y).
enum class conv_kind { forward, backward_data, backward_filter };

// The BAD_PARAM and NOT_SUPPORTED lists (cuDNN API reference) of
// cudnnConvolutionForward, cudnnConvolutionBackwardData and
// cudnnConvolutionBackwardFilter, for the 4-d NCHW/NHWC descriptors condconv
// sets. The lists differ in two places: an output channel count that is not
// a multiple of the group count is BAD_PARAM for the forward and backward
// filter, NOT_SUPPORTED for backward data; y (dy) spatial sizes that are not
// the convolution's are NOT_SUPPORTED for the forward, BAD_PARAM for
// backward data ("dyDesc spatial sizes do not match with the expected size
// as determined by cudnnGetConvolutionNdForwardOutputDim"). Backward filter's
// list names no such case; the emulation refuses it as backward data does.
cudnnStatus_t check_problem(const cudnnTensorStruct *x, const cudnnFilterStruct *w, const cudnnConvolutionStruct *conv,
                            const cudnnTensorStruct *y, conv_kind kind = conv_kind::forward)
{
    if (x == nullptr || w == nullptr || conv == nullptr || y == nullptr || !x->set || !w->set || !conv->set || !y->set)
        return CUDNN_STATUS_BAD_PARAM;
    // "xDesc and wDesc have a non-matching number of input feature maps per
    // image (or group in case of grouped convolutions)"; the batch and the
    // output channels of y and w must agree.
    if (x->c != w->c * conv->groups || y->c != w->k || x->n != y->n) return CUDNN_STATUS_BAD_PARAM;
    // "yDesc or wDesc indicate an output channel count that isn't a multiple of group count".
    if (w->k % conv->groups != 0)
        return kind == conv_kind::backward_data ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_BAD_PARAM;
    // "xDesc, wDesc, and yDesc have a non-matching data type".
    if (x->type != w->type || x->type != y->type) return CUDNN_STATUS_BAD_PARAM;
    // "wDesc has a spatial size that is larger than the input spatial size
    // (including zero-padding size)".
    if (conv->dil_h * (w->h - 1) + 1 > x->h + 2 * conv->pad_h || conv->dil_w * (w->w - 1) + 1 > x->w + 2 * conv->pad_w)
        return CUDNN_STATUS_BAD_PARAM;
    // "yDesc spatial sizes do not match with the expected size as determined
    // by cudnnGetConvolutionNdForwardOutputDim".
    if (y->h != out_dim(x->h, conv->pad_h, w->h, conv->dil_h, conv->u) ||
        y->w != out_dim(x->w, conv->pad_w, w->w, conv->dil_w, conv->v))
        return kind == conv_kind::forward ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_BAD_PARAM;
    // The tables "Supported Datatype Configurations" of the three calls (the
    // same rows in each), for the types condconv uses: FLOAT_CONFIG (float
    // data, float compute), PSEUDO_HALF_CONFIG (half data, float compute),
    // TRUE_HALF_CONFIG (half, half), PSEUDO_BFLOAT16_CONFIG (bfloat16 data,
    // float compute).
    const bool ok =
        (x->type == CUDNN_DATA_FLOAT && conv->compute == CUDNN_DATA_FLOAT) ||
        (x->type == CUDNN_DATA_HALF && (conv->compute == CUDNN_DATA_FLOAT || conv->compute == CUDNN_DATA_HALF)) ||
        (x->type == CUDNN_DATA_BFLOAT16 && conv->compute == CUDNN_DATA_FLOAT);
    if (!ok) return CUDNN_STATUS_NOT_SUPPORTED;
    // The filter's layout follows the tensors' (cuDNN supports NHWC filters with NHWC data only).
    if (w->format != x->format) return CUDNN_STATUS_NOT_SUPPORTED;
    return CUDNN_STATUS_SUCCESS;
}

// Where cuDNN's tables allow the FFT algorithms (forward, backward data and
// backward filter alike): NCHW float data, stride 1, no dilation, and here
// ungrouped. A transform algorithm, which condconv must not take in strict
// f32 or half precision.
bool fft_applies(const cudnnTensorStruct &x, const cudnnConvolutionStruct &conv)
{
    return x.format == CUDNN_TENSOR_NCHW && x.type == CUDNN_DATA_FLOAT && conv.u == 1 && conv.v == 1 &&
           conv.dil_h == 1 && conv.dil_w == 1 && conv.groups == 1;
}

// FFT's workspace: the transforms of the padded images of `images` feature
// maps and of the filters.
size_t fft_workspace(const cudnnTensorStruct &x, const cudnnFilterStruct &w, const cudnnConvolutionStruct &conv,
                     size_t images)
{
    return sizeof(float) * 2 * (images + static_cast<size_t>(w.k) * w.c) * static_cast<size_t>(x.h + 2 * conv.pad_h) *
           static_cast<size_t>(x.w + 2 * conv.pad_w);
}

// The algorithms' workspaces: plausible sizes, and NOT_SUPPORTED where an
// algorithm does not apply. Forward: FFT where fft_applies; GEMM (explicit
// im2col) for NCHW only.
cudnnStatus_t algo_workspace(const cudnnTensorStruct &x, const cudnnFilterStruct &w, const cudnnConvolutionStruct &conv,
                             const cudnnTensorStruct &y, cudnnConvolutionFwdAlgo_t algo, size_t *bytes)
{
    const size_t e = elem_size(cudnn_elem(x.type));
    const size_t patch = static_cast<size_t>(w.c) * w.h * w.w, pixels = static_cast<size_t>(y.h) * y.w;
    switch (algo) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: *bytes = 0; return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM:
        *bytes = sizeof(int) * (patch + 64); // the precomputed filter offsets
        return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM:
        if (x.format != CUDNN_TENSOR_NCHW) return CUDNN_STATUS_NOT_SUPPORTED;
        *bytes = e * patch * pixels; // one image's im2col of one group
        return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT:
        if (!fft_applies(x, conv)) return CUDNN_STATUS_NOT_SUPPORTED;
        *bytes = fft_workspace(x, w, conv, static_cast<size_t>(x.n) * x.c);
        return CUDNN_STATUS_SUCCESS;
    default: return CUDNN_STATUS_NOT_SUPPORTED;
    }
}

// Backward data: ALGO_0 and ALGO_1 (implicit GEMMs) take every problem with
// no workspace; FFT where fft_applies.
cudnnStatus_t algo_workspace(const cudnnTensorStruct &x, const cudnnFilterStruct &w, const cudnnConvolutionStruct &conv,
                             const cudnnTensorStruct &y, cudnnConvolutionBwdDataAlgo_t algo, size_t *bytes)
{
    switch (algo) {
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_0:
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_1: *bytes = 0; return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT:
        if (!fft_applies(x, conv)) return CUDNN_STATUS_NOT_SUPPORTED;
        *bytes = fft_workspace(x, w, conv, static_cast<size_t>(x.n) * (static_cast<size_t>(x.c) + y.c));
        return CUDNN_STATUS_SUCCESS;
    default: return CUDNN_STATUS_NOT_SUPPORTED;
    }
}

// Backward filter: ALGO_0 (atomic adds into dw) needs no workspace; ALGO_3
// "uses some small workspace to precompute some indices" (API reference);
// ALGO_1 a float dw per slice of the batch, summed in a fixed order, and
// the offsets; FFT where fft_applies.
cudnnStatus_t algo_workspace(const cudnnTensorStruct &x, const cudnnFilterStruct &w, const cudnnConvolutionStruct &conv,
                             const cudnnTensorStruct &y, cudnnConvolutionBwdFilterAlgo_t algo, size_t *bytes)
{
    const size_t patch = static_cast<size_t>(w.c) * w.h * w.w;
    switch (algo) {
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0: *bytes = 0; return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3: *bytes = sizeof(int) * (patch + 64); return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1:
        *bytes = sizeof(float) * filter_elems(w) * static_cast<size_t>(std::min(x.n, 4)) + sizeof(int) * (patch + 64);
        return CUDNN_STATUS_SUCCESS;
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT:
        if (!fft_applies(x, conv)) return CUDNN_STATUS_NOT_SUPPORTED;
        *bytes = fft_workspace(x, w, conv, static_cast<size_t>(x.n) * (static_cast<size_t>(x.c) + y.c));
        return CUDNN_STATUS_SUCCESS;
    default: return CUDNN_STATUS_NOT_SUPPORTED;
    }
}

// The algorithms each direction offers, best first (the order of the
// estimates, as Get_v7 sorts them), and their determinism. The determinism
// flags are real cuDNN's: cudnn_ops.h marks CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
// CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 and CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3
// "non-deterministic", and the API reference (cudnnConvolutionBwdDataAlgo_t,
// cudnnConvolutionBwdFilterAlgo_t) says their sums are done "using the
// atomic add operation, thus the results are non-deterministic"; every other
// algorithm is deterministic. The backward lists put the non-deterministic
// ones and FFT (where it applies) before the deterministic direct ALGO_1,
// so that host code which takes the first entry, or the first deterministic
// one without looking at the transforms, is caught.
template <typename Algo>
struct algo_traits;
template <>
struct algo_traits<cudnnConvolutionFwdAlgo_t> {
    static constexpr int count = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    static std::vector<cudnnConvolutionFwdAlgo_t> offered()
    {
        return {CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_CONVOLUTION_FWD_ALGO_GEMM};
    }
    static bool deterministic(cudnnConvolutionFwdAlgo_t /*algo*/) { return true; }
    static bool transform(cudnnConvolutionFwdAlgo_t a) { return a == CUDNN_CONVOLUTION_FWD_ALGO_FFT; }
};
template <>
struct algo_traits<cudnnConvolutionBwdDataAlgo_t> {
    static constexpr int count = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
    static std::vector<cudnnConvolutionBwdDataAlgo_t> offered()
    {
        return {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
                CUDNN_CONVOLUTION_BWD_DATA_ALGO_1};
    }
    static bool deterministic(cudnnConvolutionBwdDataAlgo_t a) { return a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_0; }
    static bool transform(cudnnConvolutionBwdDataAlgo_t a) { return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT; }
};
template <>
struct algo_traits<cudnnConvolutionBwdFilterAlgo_t> {
    static constexpr int count = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    static std::vector<cudnnConvolutionBwdFilterAlgo_t> offered()
    {
        return {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
                CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1};
    }
    static bool deterministic(cudnnConvolutionBwdFilterAlgo_t a)
    {
        return a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 && a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
    }
    static bool transform(cudnnConvolutionBwdFilterAlgo_t a) { return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT; }
};

// The perf list of every algorithm of a direction (Perf: the forward,
// backward data or backward filter perf struct): the offered ones that apply
// first, the others after them with status NOT_SUPPORTED (the Get_v7 calls).
template <typename Perf>
int algorithm_list(const cudnnTensorStruct &x, const cudnnFilterStruct &w, const cudnnConvolutionStruct &conv,
                   const cudnnTensorStruct &y, int requested, Perf *perf)
{
    using Algo = decltype(Perf::algo);
    using traits = algo_traits<Algo>;
    std::vector<Perf> list;
    bool listed[traits::count] = {};
    float estimate = 0.01f;
    for (Algo a : traits::offered()) {
        size_t bytes = 0;
        if (algo_workspace(x, w, conv, y, a, &bytes) != CUDNN_STATUS_SUCCESS) continue;
        Perf p{};
        p.algo = a;
        p.status = CUDNN_STATUS_SUCCESS;
        p.time = estimate;
        estimate *= 2.0f;
        p.memory = bytes;
        p.determinism = traits::deterministic(a) ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
        // Transforms run no tensor ops; the others run the descriptor's math.
        p.mathType = traits::transform(a) ? CUDNN_FMA_MATH : conv.math;
        list.push_back(p);
        listed[a] = true;
    }
    for (int a = 0; a < traits::count; ++a) {
        if (listed[a]) continue;
        Perf p{};
        p.algo = static_cast<Algo>(a);
        p.status = CUDNN_STATUS_NOT_SUPPORTED;
        p.time = -1.0f;
        p.mathType = conv.math;
        list.push_back(p);
    }
    const int n = requested < static_cast<int>(list.size()) ? requested : static_cast<int>(list.size());
    for (int i = 0; i < n; ++i) perf[i] = list[static_cast<size_t>(i)];
    return n;
}

// One convolution call: y = act(alpha1 * conv(x, w) + alpha2 * z + bias)
// (act, z, bias optional) or y = alpha * conv(x, w) + beta * y (forward);
// dx = alpha * (W^T conv dy) + beta * dx (backward data); dw = alpha * (x
// correlated with dy) + beta * dw (backward filter). Double accumulation,
// one rounding.
struct conv_call {
    const cudnnTensorStruct *xd, *yd;
    const cudnnFilterStruct *wd;
    const cudnnConvolutionStruct *cd;
    conv_kind kind;
    const void *x, *w, *y;   // the three tensors (x or dx, w or dw, y or dy)
    void *out;               // the one computed, one of the three: y, dx or dw by kind
    double alpha, beta;      // beta: weight of out's old value
    const void *z = nullptr; // residual, weight alpha2 (forward)
    double alpha2 = 0.0;
    const void *bias = nullptr; // [1][k][1][1] float (forward)
    bool relu = false;
};

// The one index walk of every direction: for each element (n, k, oh, ow) of
// y and each filter tap (ci, r, s) that lands inside x (padding is zeros),
// tap(x index, w index, y index); after an element's taps, done(y index, k).
template <typename Tap, typename Done>
void walk(const cudnnTensorStruct &x, const cudnnFilterStruct &w, const cudnnConvolutionStruct &cv,
          const cudnnTensorStruct &y, Tap tap, Done done)
{
    const int k_per_group = w.k / cv.groups;
    for (int n = 0; n < y.n; ++n)
        for (int k = 0; k < y.c; ++k) {
            const int c0 = (k / k_per_group) * w.c;
            for (int oh = 0; oh < y.h; ++oh)
                for (int ow = 0; ow < y.w; ++ow) {
                    const size_t yi = tensor_index(y, n, k, oh, ow);
                    for (int ci = 0; ci < w.c; ++ci)
                        for (int r = 0; r < w.h; ++r) {
                            const int ih = oh * cv.u - cv.pad_h + r * cv.dil_h;
                            if (ih < 0 || ih >= x.h) continue;
                            for (int s = 0; s < w.w; ++s) {
                                const int iw = ow * cv.v - cv.pad_w + s * cv.dil_w;
                                if (iw < 0 || iw >= x.w) continue;
                                // CUDNN_CONVOLUTION flips the filter; cross-correlation does not.
                                const int fr = cv.mode == CUDNN_CONVOLUTION ? w.h - 1 - r : r;
                                const int fs = cv.mode == CUDNN_CONVOLUTION ? w.w - 1 - s : s;
                                tap(tensor_index(x, n, c0 + ci, ih, iw), filter_index(w, k, ci, fr, fs), yi);
                            }
                        }
                    done(yi, k);
                }
        }
}

void compute(const conv_call &c)
{
    const cudnnTensorStruct &x = *c.xd, &y = *c.yd;
    const cudnnFilterStruct &w = *c.wd;
    const cudnnConvolutionStruct &cv = *c.cd;
    const elem e = cudnn_elem(x.type);
    // out = alpha * acc + beta * out, rounded once. A zero weight does not
    // read its operand (cuDNN's scaling parameters: "with beta zero the
    // output is not read").
    const auto blend = [&](size_t i, double acc) {
        double v = c.alpha * acc;
        if (c.beta != 0.0) v += c.beta * load(e, c.out, i);
        return v;
    };
    const auto nothing = [](size_t, int) {};
    switch (c.kind) {
    case conv_kind::forward: {
        double acc = 0.0;
        walk(
            x, w, cv, y, [&](size_t xi, size_t wi, size_t) { acc += load(e, c.x, xi) * load(e, c.w, wi); },
            [&](size_t yi, int k) {
                double v = blend(yi, acc);
                if (c.z != nullptr && c.alpha2 != 0.0) v += c.alpha2 * load(e, c.z, yi);
                if (c.bias != nullptr) v += load(elem::f32, c.bias, static_cast<size_t>(k));
                if (c.relu && v < 0.0) v = 0.0;
                store(e, c.out, yi, v);
                acc = 0.0;
            });
        return;
    }
    case conv_kind::backward_data: {
        // Each dx element's sum gathered in double over the whole walk, then rounded once.
        std::vector<double> acc(tensor_elems(x), 0.0);
        walk(
            x, w, cv, y, [&](size_t xi, size_t wi, size_t yi) { acc[xi] += load(e, c.w, wi) * load(e, c.y, yi); },
            nothing);
        for (size_t i = 0; i < acc.size(); ++i) store(e, c.out, i, blend(i, acc[i]));
        return;
    }
    case conv_kind::backward_filter: {
        std::vector<double> acc(filter_elems(w), 0.0);
        walk(
            x, w, cv, y, [&](size_t xi, size_t wi, size_t yi) { acc[wi] += load(e, c.x, xi) * load(e, c.y, yi); },
            nothing);
        for (size_t i = 0; i < acc.size(); ++i) store(e, c.out, i, blend(i, acc[i]));
        return;
    }
    }
}

// The buffers of a convolution: device memory of the described sizes,
// element-aligned; the workspace as large as the algorithm needs, which it
// then uses (overwrites) in full.
// The descriptors' contents as they are at the call: cuDNN reads them when
// called, so a caller may change or destroy them before the work runs.
struct conv_job {
    cudnnTensorStruct x, y;
    cudnnFilterStruct w;
    cudnnConvolutionStruct cv;
    conv_call c;
    void *workspace;
    size_t workspace_need;
};

void run_job(const char *call, conv_job job)
{
    job.c.xd = &job.x;
    job.c.yd = &job.y;
    job.c.wd = &job.w;
    job.c.cd = &job.cv;
    if (job.workspace_need > 0) std::memset(job.workspace, 0xa5, job.workspace_need);
    compute(job.c);
    cc_cpu::check_guards(call);
}

// Checks a convolution call (any direction; Algo: its algorithm enum); then
// runs it on `stream` in stream order (captured into a graph like a kernel),
// or at once when `stream_order` is false (Find, which cuDNN runs
// synchronously). EXECUTION_FAILED when the stream refuses the work (a
// legacy stream during a capture).
template <typename Algo>
cudnnStatus_t run_checked(const char *call, const conv_call &c, Algo algo, void *workspace, size_t workspace_bytes,
                          bool stream_order = false, cudaStream_t stream = nullptr)
{
    size_t need = 0;
    if (algo_workspace(*c.xd, *c.wd, *c.cd, *c.yd, algo, &need) != CUDNN_STATUS_SUCCESS)
        return CUDNN_STATUS_NOT_SUPPORTED; // "the chosen algo does not support the parameters provided"
    // cuDNN fails a call given less workspace than its algorithm needs; the
    // emulation says BAD_PARAM (workSpace is one of the parameters).
    if (workspace_bytes < need || (need > 0 && workspace == nullptr)) return CUDNN_STATUS_BAD_PARAM;
    const size_t e = elem_size(cudnn_elem(c.xd->type));
    const bool fwd = c.kind == conv_kind::forward;
    check_range(call, c.kind == conv_kind::backward_data ? "dx" : "x", c.x, e * tensor_elems(*c.xd), e);
    check_range(call, c.kind == conv_kind::backward_filter ? "dw" : "w", c.w, e * filter_elems(*c.wd), e);
    check_range(call, fwd ? "y" : "dy", c.y, e * tensor_elems(*c.yd), e);
    if (c.z != nullptr) check_range(call, "z", c.z, e * tensor_elems(*c.yd), e);
    if (c.bias != nullptr) check_range(call, "bias", c.bias, sizeof(float) * static_cast<size_t>(c.yd->c), 4);
    check_range(call, "workspace", workspace, need, 1);
    const conv_job job{*c.xd, *c.yd, *c.wd, *c.cd, c, workspace, need};
    if (!stream_order) {
        run_job(call, job);
        return CUDNN_STATUS_SUCCESS;
    }
    return cc_cpu::enqueue(stream, call, [call, job] { run_job(call, job); }) ? CUDNN_STATUS_SUCCESS
                                                                              : CUDNN_STATUS_EXECUTION_FAILED;
}

// The Find calls (cudnnFindConvolution*AlgorithmEx): runs every offered
// algorithm that fits the workspace on the given buffers (the computed one
// is overwritten, alpha 1 and beta 0, as cuDNN's Find does) and reports them
// with their times; the ones needing more workspace than given are reported
// with CUDNN_STATUS_ALLOC_FAILED. Successful ones first, in the list's order.
template <typename Perf>
cudnnStatus_t find_algorithms(const char *call, const conv_call &c, int requested, int *returned, Perf *perf,
                              void *workspace, size_t workspace_bytes)
{
    const int n = algorithm_list(*c.xd, *c.wd, *c.cd, *c.yd, requested, perf);
    for (int i = 0; i < n; ++i) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
        if (perf[i].memory > workspace_bytes) {
            perf[i].status = CUDNN_STATUS_ALLOC_FAILED;
            perf[i].time = -1.0f;
            continue;
        }
        const cudnnStatus_t run = run_checked(call, c, perf[i].algo, workspace, workspace_bytes);
        if (run != CUDNN_STATUS_SUCCESS) perf[i].status = run;
    }
    std::stable_partition(perf, perf + n, [](const Perf &p) { return p.status == CUDNN_STATUS_SUCCESS; });
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}

// --- cuBLAS GEMM ---------------------------------------------------------------------------------------
elem cublas_elem(cudaDataType t)
{
    return t == CUDA_R_32F ? elem::f32 : t == CUDA_R_16F ? elem::f16 : t == CUDA_R_16BF ? elem::bf16 : elem::none;
}

} // namespace

// The cuDNN and cuBLAS entry points, defined with this file's parameter names
// rather than the toolkit headers' own.
// NOLINTBEGIN(readability-inconsistent-declaration-parameter-name)
extern "C" {

// --- cuDNN ---------------------------------------------------------------------------------------------
cudnnStatus_t cudnnCreate(cudnnHandle_t *handle) { return create(handle, "cudnnCreate"); }
cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) { return destroy(handle); }
cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream)
{
    if (handle == nullptr) return CUDNN_STATUS_BAD_PARAM;
    handle->stream = stream;
    return CUDNN_STATUS_SUCCESS;
}

size_t cudnnGetVersion(void) { return CUDNN_VERSION; }

const char *cudnnGetErrorString(cudnnStatus_t status)
{
    switch (status) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_ALLOC_FAILED: return "CUDNN_STATUS_ALLOC_FAILED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    default: return "CUDNN_STATUS_UNKNOWN";
    }
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d)
{
    return create(d, "cudnnCreateTensorDescriptor");
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) { return destroy(d); }
// BAD_PARAM: "at least one of the parameters n, c, h, w was negative or
// format has an invalid enumerant value or dataType has an invalid
// enumerant value"; NOT_SUPPORTED: "the total size of the tensor descriptor
// exceeds the maximum limit of 2 Giga-elements". (Zero sizes are refused
// too: cuDNN's convolutions take no empty tensors, and condconv sets none.)
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format, cudnnDataType_t type,
                                         int n, int c, int h, int w)
{
    if (d == nullptr || n < 1 || c < 1 || h < 1 || w < 1 || !valid_format(format)) return CUDNN_STATUS_BAD_PARAM;
    if (cudnn_elem(type) == elem::none) return CUDNN_STATUS_NOT_SUPPORTED; // types the emulation does not compute
    if (static_cast<double>(n) * c * h * w > 2147483647.0) return CUDNN_STATUS_NOT_SUPPORTED;
    *d = cudnnTensorStruct{true, format, type, n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d)
{
    return create(d, "cudnnCreateFilterDescriptor");
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) { return destroy(d); }
// BAD_PARAM: "at least one of the parameters k, c, h, w is negative or
// dataType or format has an invalid enumerant value".
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type, cudnnTensorFormat_t format,
                                         int k, int c, int h, int w)
{
    if (d == nullptr || k < 1 || c < 1 || h < 1 || w < 1 || !valid_format(format)) return CUDNN_STATUS_BAD_PARAM;
    if (cudnn_elem(type) == elem::none) return CUDNN_STATUS_NOT_SUPPORTED;
    *d = cudnnFilterStruct{true, format, type, k, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d)
{
    return create(d, "cudnnCreateConvolutionDescriptor");
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) { return destroy(d); }
// BAD_PARAM: "the descriptor convDesc is nil"; "one of the parameters
// pad_h, pad_w is strictly negative"; "one of the parameters u, v is
// negative or zero"; "one of the parameters dilation_h, dilation_w is
// negative or zero"; "the parameter mode has an invalid enumerant value".
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dil_h, int dil_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute)
{
    if (d == nullptr || pad_h < 0 || pad_w < 0 || u < 1 || v < 1 || dil_h < 1 || dil_w < 1 ||
        (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION))
        return CUDNN_STATUS_BAD_PARAM;
    d->set = true;
    d->pad_h = pad_h;
    d->pad_w = pad_w;
    d->u = u;
    d->v = v;
    d->dil_h = dil_h;
    d->dil_w = dil_w;
    d->mode = mode;
    d->compute = compute;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int groups)
{
    if (d == nullptr || groups < 1) return CUDNN_STATUS_BAD_PARAM; // "invalid groupCount"
    d->groups = groups;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t math)
{
    // BAD_PARAM: "the descriptor is NULL or the mathType is not a valid enumerant".
    if (d == nullptr || (math != CUDNN_DEFAULT_MATH && math != CUDNN_TENSOR_OP_MATH &&
                         math != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && math != CUDNN_FMA_MATH))
        return CUDNN_STATUS_BAD_PARAM;
    d->math = math;
    return CUDNN_STATUS_SUCCESS;
}

// BAD_PARAM: "one or more of the descriptors has not been created
// correctly"; "the feature maps of the input tensor and output tensor [the
// filter] differ" (input channels != filter channels x groups); "the data
// type of the input tensor and the filter are different".
cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t conv,
                                                    const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
                                                    int *n, int *c, int *h, int *wo)
{
    if (conv == nullptr || x == nullptr || w == nullptr || n == nullptr || c == nullptr || h == nullptr ||
        wo == nullptr || !conv->set || !x->set || !w->set)
        return CUDNN_STATUS_BAD_PARAM;
    if (x->c != w->c * conv->groups || x->type != w->type) return CUDNN_STATUS_BAD_PARAM;
    const int oh = out_dim(x->h, conv->pad_h, w->h, conv->dil_h, conv->u);
    const int ow = out_dim(x->w, conv->pad_w, w->w, conv->dil_w, conv->v);
    if (oh < 1 || ow < 1) return CUDNN_STATUS_BAD_PARAM; // the filter is larger than the padded input
    *n = x->n;
    *c = w->k;
    *h = oh;
    *wo = ow;
    return CUDNN_STATUS_SUCCESS;
}

// BAD_PARAM: "one of the parameters handle, xDesc, wDesc, convDesc, yDesc,
// perfResults, returnedAlgoCount is NULL"; "either yDesc or wDesc have
// different dimensions from xDesc"; "the data types of tensors xDesc, yDesc
// or wDesc are not all the same"; "the number of feature maps in xDesc and
// wDesc differs"; "requestedAlgoCount is less than or equal to 0".
cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t handle, const cudnnTensorDescriptor_t x,
                                                     const cudnnFilterDescriptor_t w,
                                                     const cudnnConvolutionDescriptor_t conv,
                                                     const cudnnTensorDescriptor_t y, const int requested,
                                                     int *returned, cudnnConvolutionFwdAlgoPerf_t *perf)
{
    if (handle == nullptr || returned == nullptr || perf == nullptr || requested < 1) return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(x, w, conv, y);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    *returned = algorithm_list(*x, *w, *conv, *y, requested, perf);
    return CUDNN_STATUS_SUCCESS;
}

// Runs every offered algorithm that fits the workspace on the given buffers
// (y is overwritten, as cuDNN's Find does) and reports them with their
// times; the ones needing more workspace than given are reported with
// CUDNN_STATUS_ALLOC_FAILED. BAD_PARAM as Get_v7, and "x, w or y is NULL".
cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xd,
                                                     const void *x, const cudnnFilterDescriptor_t wd, const void *w,
                                                     const cudnnConvolutionDescriptor_t conv,
                                                     const cudnnTensorDescriptor_t yd, void *y, const int requested,
                                                     int *returned, cudnnConvolutionFwdAlgoPerf_t *perf,
                                                     void *workspace, size_t workspace_bytes)
{
    if (handle == nullptr || returned == nullptr || perf == nullptr || requested < 1 || x == nullptr || w == nullptr ||
        y == nullptr)
        return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(xd, wd, conv, yd);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const conv_call c{xd, yd, wd, conv, conv_kind::forward, x, w, y, y, 1.0, 0.0};
    return find_algorithms("cudnnFindConvolutionForwardAlgorithmEx", c, requested, returned, perf, workspace,
                           workspace_bytes);
}

// --- cuDNN backward convolution (legacy API) -------------------------------------------------------------
// BAD_PARAM: "one of the parameters handle, wDesc, dyDesc, convDesc, dxDesc,
// perfResults, returnedAlgoCount is NULL"; "the numbers of feature maps of
// the input tensor and output tensor differ"; "the dataType of the two
// tensor descriptors or the filter are different"; "requestedAlgoCount is
// less than or equal to 0"; and cudnnConvolutionBackwardData's lists.
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t handle, const cudnnFilterDescriptor_t w,
                                                          const cudnnTensorDescriptor_t dy,
                                                          const cudnnConvolutionDescriptor_t conv,
                                                          const cudnnTensorDescriptor_t dx, const int requested,
                                                          int *returned, cudnnConvolutionBwdDataAlgoPerf_t *perf)
{
    if (handle == nullptr || returned == nullptr || perf == nullptr || requested < 1) return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(dx, w, conv, dy, conv_kind::backward_data);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    *returned = algorithm_list(*dx, *w, *conv, *dy, requested, perf);
    return CUDNN_STATUS_SUCCESS;
}

// BAD_PARAM: "at least one of the following is NULL: handle, dyDesc, wDesc,
// convDesc, dxDesc, sizeInBytes", and the problem checks of the call;
// NOT_SUPPORTED: "the combination of the tensor descriptors, filter
// descriptor and convolution descriptor is not supported for the specified
// algorithm".
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t handle, const cudnnFilterDescriptor_t w,
                                                           const cudnnTensorDescriptor_t dy,
                                                           const cudnnConvolutionDescriptor_t conv,
                                                           const cudnnTensorDescriptor_t dx,
                                                           cudnnConvolutionBwdDataAlgo_t algo, size_t *bytes)
{
    if (handle == nullptr || bytes == nullptr) return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(dx, w, conv, dy, conv_kind::backward_data);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    return algo_workspace(*dx, *w, *conv, *dy, algo, bytes);
}

// dx = alpha (W^T conv dy) + beta dx. BAD_PARAM: "at least one of the
// following is NULL: handle, dyDesc, wDesc, convDesc, dxDesc, dy, w, dx,
// alpha, beta", check_problem's backward-data lists, less workspace than
// the algorithm needs; NOT_SUPPORTED: the algorithm does not support the
// problem.
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void *alpha, const cudnnFilterDescriptor_t wd,
                                           const void *w, const cudnnTensorDescriptor_t dyd, const void *dy,
                                           const cudnnConvolutionDescriptor_t conv, cudnnConvolutionBwdDataAlgo_t algo,
                                           void *workspace, size_t workspace_bytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxd, void *dx)
{
    if (handle == nullptr || alpha == nullptr || beta == nullptr || w == nullptr || dy == nullptr || dx == nullptr)
        return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(dxd, wd, conv, dyd, conv_kind::backward_data);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const double a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    return run_checked("cudnnConvolutionBackwardData",
                       conv_call{dxd, dyd, wd, conv, conv_kind::backward_data, dx, w, dy, dx, a, b}, algo, workspace,
                       workspace_bytes, true, handle->stream);
}

// Find for backward data: runs the offered algorithms on the buffers (dx
// overwritten). BAD_PARAM as Get_v7, and "w, dy or dx is NULL".
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(cudnnHandle_t handle, const cudnnFilterDescriptor_t wd,
                                                          const void *w, const cudnnTensorDescriptor_t dyd,
                                                          const void *dy, const cudnnConvolutionDescriptor_t conv,
                                                          const cudnnTensorDescriptor_t dxd, void *dx,
                                                          const int requested, int *returned,
                                                          cudnnConvolutionBwdDataAlgoPerf_t *perf, void *workspace,
                                                          size_t workspace_bytes)
{
    if (handle == nullptr || returned == nullptr || perf == nullptr || requested < 1 || w == nullptr || dy == nullptr ||
        dx == nullptr)
        return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(dxd, wd, conv, dyd, conv_kind::backward_data);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const conv_call c{dxd, dyd, wd, conv, conv_kind::backward_data, dx, w, dy, dx, 1.0, 0.0};
    return find_algorithms("cudnnFindConvolutionBackwardDataAlgorithmEx", c, requested, returned, perf, workspace,
                           workspace_bytes);
}

// BAD_PARAM: "one of the parameters handle, xDesc, dyDesc, convDesc,
// dwDesc, perfResults, returnedAlgoCount is NULL"; "the numbers of feature
// maps of the input tensor and output tensor differ"; "the dataType of the
// two tensor descriptors or the filter are different"; "requestedAlgoCount
// is less than or equal to 0"; and cudnnConvolutionBackwardFilter's lists.
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t handle, const cudnnTensorDescriptor_t x,
                                                            const cudnnTensorDescriptor_t dy,
                                                            const cudnnConvolutionDescriptor_t conv,
                                                            const cudnnFilterDescriptor_t dw, const int requested,
                                                            int *returned, cudnnConvolutionBwdFilterAlgoPerf_t *perf)
{
    if (handle == nullptr || returned == nullptr || perf == nullptr || requested < 1) return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(x, dw, conv, dy, conv_kind::backward_filter);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    *returned = algorithm_list(*x, *dw, *conv, *dy, requested, perf);
    return CUDNN_STATUS_SUCCESS;
}

// As cudnnGetConvolutionBackwardDataWorkspaceSize, for backward filter.
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t handle, const cudnnTensorDescriptor_t x,
                                                             const cudnnTensorDescriptor_t dy,
                                                             const cudnnConvolutionDescriptor_t conv,
                                                             const cudnnFilterDescriptor_t dw,
                                                             cudnnConvolutionBwdFilterAlgo_t algo, size_t *bytes)
{
    if (handle == nullptr || bytes == nullptr) return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(x, dw, conv, dy, conv_kind::backward_filter);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    return algo_workspace(*x, *dw, *conv, *dy, algo, bytes);
}

// dw = alpha (x correlated with dy) + beta dw. BAD_PARAM: "at least one of
// the following is NULL: handle, xDesc, dyDesc, convDesc, dwDesc, xData,
// dyData, dwData, alpha, beta", check_problem's backward-filter lists, less
// workspace than the algorithm needs; NOT_SUPPORTED: the algorithm does not
// support the problem.
cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xd,
                                             const void *x, const cudnnTensorDescriptor_t dyd, const void *dy,
                                             const cudnnConvolutionDescriptor_t conv,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *workspace,
                                             size_t workspace_bytes, const void *beta,
                                             const cudnnFilterDescriptor_t dwd, void *dw)
{
    if (handle == nullptr || alpha == nullptr || beta == nullptr || x == nullptr || dy == nullptr || dw == nullptr)
        return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(xd, dwd, conv, dyd, conv_kind::backward_filter);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const double a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    return run_checked("cudnnConvolutionBackwardFilter",
                       conv_call{xd, dyd, dwd, conv, conv_kind::backward_filter, x, dw, dy, dw, a, b}, algo, workspace,
                       workspace_bytes, true, handle->stream);
}

// Find for backward filter: runs the offered algorithms on the buffers (dw
// overwritten). BAD_PARAM as Get_v7, and "x, dy or dw is NULL".
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xd,
                                                            const void *x, const cudnnTensorDescriptor_t dyd,
                                                            const void *dy, const cudnnConvolutionDescriptor_t conv,
                                                            const cudnnFilterDescriptor_t dwd, void *dw,
                                                            const int requested, int *returned,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t *perf, void *workspace,
                                                            size_t workspace_bytes)
{
    if (handle == nullptr || returned == nullptr || perf == nullptr || requested < 1 || x == nullptr || dy == nullptr ||
        dw == nullptr)
        return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(xd, dwd, conv, dyd, conv_kind::backward_filter);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const conv_call c{xd, dyd, dwd, conv, conv_kind::backward_filter, x, dw, dy, dw, 1.0, 0.0};
    return find_algorithms("cudnnFindConvolutionBackwardFilterAlgorithmEx", c, requested, returned, perf, workspace,
                           workspace_bytes);
}

cudnnStatus_t cudnnCreateActivationDescriptor(cudnnActivationDescriptor_t *d)
{
    return create(d, "cudnnCreateActivationDescriptor");
}
cudnnStatus_t cudnnDestroyActivationDescriptor(cudnnActivationDescriptor_t d) { return destroy(d); }
// BAD_PARAM: "mode or reluNanOpt has an invalid enumerant value".
cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t d, cudnnActivationMode_t mode,
                                           cudnnNanPropagation_t nan, double coef)
{
    if (d == nullptr || mode < CUDNN_ACTIVATION_SIGMOID || mode > CUDNN_ACTIVATION_SWISH ||
        (nan != CUDNN_NOT_PROPAGATE_NAN && nan != CUDNN_PROPAGATE_NAN))
        return CUDNN_STATUS_BAD_PARAM;
    d->set = true;
    d->mode = mode;
    d->coef = coef;
    return CUDNN_STATUS_SUCCESS;
}

// y = alpha conv(x, w) + beta y. BAD_PARAM/NOT_SUPPORTED: check_problem's
// lists; "at least one of handle, xDesc, wDesc, convDesc, yDesc, x, w, y,
// alpha, beta is NULL"; the algorithm does not support the problem; less
// workspace than the algorithm needs.
cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xd,
                                      const void *x, const cudnnFilterDescriptor_t wd, const void *w,
                                      const cudnnConvolutionDescriptor_t conv, cudnnConvolutionFwdAlgo_t algo,
                                      void *workspace, size_t workspace_bytes, const void *beta,
                                      const cudnnTensorDescriptor_t yd, void *y)
{
    if (handle == nullptr || alpha == nullptr || beta == nullptr || x == nullptr || w == nullptr || y == nullptr)
        return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(xd, wd, conv, yd);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    // Scaling factors are float for every data type but double.
    const double a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    return run_checked("cudnnConvolutionForward", conv_call{xd, yd, wd, conv, conv_kind::forward, x, w, y, y, a, b},
                       algo, workspace, workspace_bytes, true, handle->stream);
}

// y = act(alpha1 conv(x, w) + alpha2 z + bias). Beyond cudnnConvolutionForward's
// checks (API reference): BAD_PARAM when "at least one of handle, xDesc, x,
// wDesc, w, convDesc, zDesc, z, biasDesc, bias, activationDesc, yDesc, y is
// NULL"; "the dimensions of biasDesc and yDesc do not match the
// requirement" (bias is 1 x K x 1 x 1); "zDesc and destDesc do not match";
// NOT_SUPPORTED when "the mode of activationDesc is neither
// CUDNN_ACTIVATION_RELU nor CUDNN_ACTIVATION_IDENTITY", or IDENTITY with an
// algorithm other than IMPLICIT_PRECOMP_GEMM. Emulated for the FLOAT
// configuration with a float bias (what condconv fuses); others NOT_SUPPORTED here.
cudnnStatus_t cudnnConvolutionBiasActivationForward(
    cudnnHandle_t handle, const void *alpha1, const cudnnTensorDescriptor_t xd, const void *x,
    const cudnnFilterDescriptor_t wd, const void *w, const cudnnConvolutionDescriptor_t conv,
    cudnnConvolutionFwdAlgo_t algo, void *workspace, size_t workspace_bytes, const void *alpha2,
    const cudnnTensorDescriptor_t zd, const void *z, const cudnnTensorDescriptor_t bias_d, const void *bias,
    const cudnnActivationDescriptor_t act, const cudnnTensorDescriptor_t yd, void *y)
{
    if (handle == nullptr || alpha1 == nullptr || alpha2 == nullptr || x == nullptr || w == nullptr || z == nullptr ||
        zd == nullptr || bias == nullptr || bias_d == nullptr || act == nullptr || y == nullptr || !zd->set ||
        !bias_d->set || !act->set)
        return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = check_problem(xd, wd, conv, yd);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    if (bias_d->n != 1 || bias_d->c != yd->c || bias_d->h != 1 || bias_d->w != 1) return CUDNN_STATUS_BAD_PARAM;
    if (zd->n != yd->n || zd->c != yd->c || zd->h != yd->h || zd->w != yd->w || zd->format != yd->format ||
        zd->type != yd->type)
        return CUDNN_STATUS_BAD_PARAM;
    if (act->mode != CUDNN_ACTIVATION_RELU &&
        !(act->mode == CUDNN_ACTIVATION_IDENTITY && algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM))
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (xd->type != CUDNN_DATA_FLOAT || bias_d->type != CUDNN_DATA_FLOAT) return CUDNN_STATUS_NOT_SUPPORTED;
    conv_call c{xd, yd, wd, conv, conv_kind::forward, x, w, y, y, *static_cast<const float *>(alpha1), 0.0};
    c.z = z;
    c.alpha2 = *static_cast<const float *>(alpha2);
    c.bias = bias;
    c.relu = act->mode == CUDNN_ACTIVATION_RELU;
    return run_checked("cudnnConvolutionBiasActivationForward", c, algo, workspace, workspace_bytes, true,
                       handle->stream);
}

// --- cuBLAS --------------------------------------------------------------------------------------------
cublasStatus_t cublasCreate_v2(cublasHandle_t *handle)
{
    if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    if (cc_cpu::inject_alloc_failure("cublasCreate")) return CUBLAS_STATUS_ALLOC_FAILED;
    *handle = new cublasContext;
    cc_cpu::handle_created();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle)
{
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    cc_cpu::handle_destroyed();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream)
{
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

// "The workspace pointer has to be aligned to at least 256 bytes, otherwise
// CUBLAS_STATUS_INVALID_VALUE error is returned" (cublasSetWorkspace). The
// emulated GEMM needs no workspace, but the buffer must be device memory.
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t bytes)
{
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return CUBLAS_STATUS_INVALID_VALUE;
    check_range("cublasSetWorkspace", "workspace", workspace, bytes, 256);
    return CUBLAS_STATUS_SUCCESS;
}

// C_i = alpha op(A_i) op(B_i) + beta C_i, column-major, i < batch. From the
// cuBLAS documentation (cublasGemmStridedBatchedEx, cublasGemmEx):
//  - NOT_INITIALIZED: the handle was not created;
//  - INVALID_VALUE: m, n, k or batchCount < 0; transa/transb not N, T or C;
//    lda < max(1, m) for op N (else < max(1, k)), ldb < max(1, k) for op N
//    (else < max(1, n)), ldc < max(1, m); alpha or beta NULL;
//  - NOT_SUPPORTED: "the combination of the parameters Atype, Btype and
//    Ctype or the algorithm, algo is not supported" (the real-type rows of
//    cublasGemmEx's table: CUBLAS_COMPUTE_32F takes 16F, 16BF and 32F data
//    with C of the same type or 32F; CUBLAS_COMPUTE_32F_FAST_TF32 (and the
//    other FAST_ types) takes 32F only; 8-bit integer inputs, which cuBLAS
//    also takes, are not emulated); the scale type is float for both.
// alpha and beta are host pointers (the default pointer mode). TF32 permits
// the operands to be rounded; the emulation computes exactly.
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *a, cudaDataType a_type,
                                          int lda, long long stride_a, const void *b, cudaDataType b_type, int ldb,
                                          long long stride_b, const void *beta, void *c, cudaDataType c_type, int ldc,
                                          long long stride_c, int batch, cublasComputeType_t compute,
                                          cublasGemmAlgo_t algo)
{
    if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
    auto op_ok = [](cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; };
    const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
    const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || !op_ok(transa) || !op_ok(transb) || lda < std::max(1, a_rows) ||
        ldb < std::max(1, b_rows) || ldc < std::max(1, m) || alpha == nullptr || beta == nullptr)
        return CUBLAS_STATUS_INVALID_VALUE;
    // The emulation has the default algorithms only (the library asks for CUBLAS_GEMM_DEFAULT).
    if (algo != CUBLAS_GEMM_DEFAULT && algo != CUBLAS_GEMM_DEFAULT_TENSOR_OP) return CUBLAS_STATUS_NOT_SUPPORTED;
    const elem ea = cublas_elem(a_type), ec = cublas_elem(c_type);
    bool types_ok = false;
    if (compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC)
        types_ok = ea != elem::none && a_type == b_type && (c_type == a_type || c_type == CUDA_R_32F);
    else if (compute == CUBLAS_COMPUTE_32F_FAST_TF32 || compute == CUBLAS_COMPUTE_32F_FAST_16F ||
             compute == CUBLAS_COMPUTE_32F_FAST_16BF)
        types_ok = a_type == CUDA_R_32F && b_type == CUDA_R_32F && c_type == CUDA_R_32F;
    if (!types_ok) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS; // quick return
    const size_t sa = elem_size(ea), sc = elem_size(ec);
    const auto span = [](int rows, int cols, int ld) {
        return static_cast<size_t>(cols - 1) * static_cast<size_t>(ld) + static_cast<size_t>(rows);
    };
    const double al = *static_cast<const float *>(alpha), be = *static_cast<const float *>(beta);
    const char *call = "cublasGemmStridedBatchedEx";
    const auto at = [](const void *base, size_t elem_bytes, long long stride, int i) {
        return static_cast<const unsigned char *>(base) + static_cast<ptrdiff_t>(elem_bytes) * stride * i;
    };
    for (int i = 0; i < batch; ++i) {
        if (k > 0) {
            check_range(call, "A", at(a, sa, stride_a, i), sa * span(a_rows, a_cols, lda), sa);
            check_range(call, "B", at(b, sa, stride_b, i), sa * span(b_rows, b_cols, ldb), sa);
        }
        check_range(call, "C", at(c, sc, stride_c, i), sc * span(m, n, ldc), sc);
    }
    // The products, in the stream's order (captured into a graph like a kernel).
    const auto work = [=] {
        for (int i = 0; i < batch; ++i) {
            const unsigned char *ai = at(a, sa, stride_a, i), *bi = at(b, sa, stride_b, i);
            auto *ci = static_cast<unsigned char *>(c) + static_cast<ptrdiff_t>(sc) * stride_c * i;
            for (int col = 0; col < n; ++col)
                for (int row = 0; row < m; ++row) {
                    double acc = 0.0;
                    for (int l = 0; l < k; ++l) {
                        const size_t ia = transa == CUBLAS_OP_N
                                              ? static_cast<size_t>(row) + static_cast<size_t>(l) * lda
                                              : static_cast<size_t>(l) + static_cast<size_t>(row) * lda;
                        const size_t ib = transb == CUBLAS_OP_N
                                              ? static_cast<size_t>(l) + static_cast<size_t>(col) * ldb
                                              : static_cast<size_t>(col) + static_cast<size_t>(l) * ldb;
                        acc += load(ea, ai, ia) * load(ea, bi, ib);
                    }
                    const size_t ic = static_cast<size_t>(row) + static_cast<size_t>(col) * ldc;
                    double v = al * acc;
                    if (be != 0.0) v += be * load(ec, ci, ic); // beta 0: C is not read (BLAS convention)
                    store(ec, ci, ic, v);
                }
        }
        cc_cpu::check_guards(call);
    };
    return cc_cpu::enqueue(handle->stream, call, work) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

// One GEMM: the strided-batched call with a batch of one (the bench's
// tensor-core ceiling; the library itself makes batched calls only).
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *a, cudaDataType a_type, int lda, const void *b,
                            cudaDataType b_type, int ldb, const void *beta, void *c, cudaDataType c_type, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo)
{
    return cublasGemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, a, a_type, lda, 0, b, b_type, ldb, 0,
                                      beta, c, c_type, ldc, 0, 1, compute, algo);
}

// The versions the headers this layer compiles against name (what the
// bench's report records as the environment).
cublasStatus_t cublasGetProperty(libraryPropertyType type, int *value)
{
    if (value == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
    switch (type) {
    case MAJOR_VERSION: *value = CUBLAS_VER_MAJOR; return CUBLAS_STATUS_SUCCESS;
    case MINOR_VERSION: *value = CUBLAS_VER_MINOR; return CUBLAS_STATUS_SUCCESS;
    case PATCH_LEVEL: *value = CUBLAS_VER_PATCH; return CUBLAS_STATUS_SUCCESS;
    default: return CUBLAS_STATUS_INVALID_VALUE;
    }
}

const char *cublasGetStatusName(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

const char *cublasGetStatusString(cublasStatus_t status) { return cublasGetStatusName(status); }

} // extern "C"
// NOLINTEND(readability-inconsistent-declaration-parameter-name)

// --- cuDNN's graph (backend) API -------------------------------------------------------------------------
// The subset condconv's host/cudnn_graph.c uses, as the cuDNN backend API
// reference describes it: tensor, convolution, convolution-forward
// operation, operation graph, engine heuristics, engine config, engine,
// execution plan and variant pack descriptors; SetAttribute, GetAttribute,
// Finalize, Execute, Destroy. A descriptor set as an attribute of another is
// copied (cuDNN copies it too), so it may be destroyed after. Any attribute
// not listed for a descriptor's type, a wrong attribute type or element
// count, or a setting after Finalize, is BAD_PARAM, so that a misuse in
// the host code is caught. The engines offered are the emulation's own
// (kEngines): FFT and tensor-core engines that take every problem, so that
// the host's filter of numerical notes must refuse them in strict f32, and
// a plain one (no notes) that takes filters up to 5x5 only, so that a shape
// exists with no engine strict f32 may run. Heuristics mode A offers the
// plain engine for ungrouped problems only, mode B always, so that the host
// code's fall-back to mode B is reached. Execute computes exactly like the
// legacy calls (double accumulation, one rounding), in stream order.
namespace {

struct backend_desc;
using backend_ptr = std::shared_ptr<backend_desc>;

struct backend_desc {
    // Pointers and 8-byte members first (no padding between them).
    backend_ptr x, w, y, conv;  // convolution forward operation: copies of its tensors and convolution
    backend_ptr op, graph, cfg; // operation graph (op); heuristics, engine, engine config, plan (graph); plan (cfg)
    std::vector<int64_t> dims, strides;                // tensor
    std::vector<int64_t> pre, post, fstride, dilation; // convolution
    std::vector<int64_t> results;                      // heuristics: engine indices, best first
    std::vector<int64_t> uids;                         // variant pack
    std::vector<void *> ptrs;
    cudnnHandle_t handle = nullptr;
    void *workspace_ptr = nullptr;
    int64_t uid = 0, alignment = 0; // tensor
    int64_t spatial = 0;            // convolution
    int64_t engine = -1;            // engine, engine config, plan
    size_t workspace = 0;           // plan
    double alpha = 0.0, beta = 0.0; // operation
    cudnnBackendDescriptorType_t type;
    cudnnDataType_t dtype = CUDNN_DATA_FLOAT; // tensor
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;  // convolution
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    cudnnBackendHeurMode_t heur_mode = CUDNN_HEUR_MODE_A;
    bool finalized = false;
    bool has_dtype = false, has_uid = false;  // tensor
    bool has_comp = false, has_mode = false;  // convolution
    bool has_alpha = false, has_beta = false; // operation
    bool has_heur_mode = false;               // heuristics
    bool has_workspace = false;               // variant pack

    explicit backend_desc(cudnnBackendDescriptorType_t t) : type(t) {}
};

std::set<backend_desc *> &live_backend()
{
    static std::set<backend_desc *> live;
    return live;
}

backend_desc *as_backend(cudnnBackendDescriptor_t d)
{
    auto *p = static_cast<backend_desc *>(d);
    return live_backend().count(p) != 0 ? p : nullptr;
}

struct emu_engine {
    int64_t index;
    int note_count;
    cudnnBackendNumericalNote_t notes[2]; // the first note_count hold
};
constexpr emu_engine kEngines[] = {
    {1, 1, {CUDNN_NUMERICAL_NOTE_FFT, CUDNN_NUMERICAL_NOTE_FFT}},
    {12, 1, {CUDNN_NUMERICAL_NOTE_TENSOR_CORE, CUDNN_NUMERICAL_NOTE_TENSOR_CORE}},
    {0, 0, {CUDNN_NUMERICAL_NOTE_TENSOR_CORE, CUDNN_NUMERICAL_NOTE_TENSOR_CORE}},
};

const emu_engine *find_engine(int64_t index)
{
    for (const emu_engine &e : kEngines)
        if (e.index == index) return &e;
    return nullptr;
}

// The legacy structs of a finalized operation's tensors and convolution.
bool packed_format(const backend_desc &t, cudnnTensorFormat_t *format)
{
    const std::vector<int64_t> &d = t.dims, &s = t.strides;
    if (s[0] == d[1] * d[2] * d[3] && s[1] == d[2] * d[3] && s[2] == d[3] && s[3] == 1) {
        *format = CUDNN_TENSOR_NCHW;
        return true;
    }
    if (s[0] == d[1] * d[2] * d[3] && s[1] == 1 && s[2] == d[3] * d[1] && s[3] == d[1]) {
        *format = CUDNN_TENSOR_NHWC;
        return true;
    }
    return false;
}

cudnnTensorStruct tensor_of(const backend_desc &t)
{
    cudnnTensorStruct r;
    r.set = packed_format(t, &r.format);
    r.type = t.dtype;
    r.n = static_cast<int>(t.dims[0]);
    r.c = static_cast<int>(t.dims[1]);
    r.h = static_cast<int>(t.dims[2]);
    r.w = static_cast<int>(t.dims[3]);
    return r;
}

cudnnFilterStruct filter_of(const backend_desc &t)
{
    const cudnnTensorStruct s = tensor_of(t);
    cudnnFilterStruct f;
    f.set = s.set;
    f.format = s.format;
    f.type = s.type;
    f.k = s.n;
    f.c = s.c;
    f.h = s.h;
    f.w = s.w;
    return f;
}

cudnnConvolutionStruct conv_of(const backend_desc &op)
{
    const backend_desc &c = *op.conv;
    cudnnConvolutionStruct r;
    r.set = true;
    r.pad_h = static_cast<int>(c.pre[0]);
    r.pad_w = static_cast<int>(c.pre[1]);
    r.u = static_cast<int>(c.fstride[0]);
    r.v = static_cast<int>(c.fstride[1]);
    r.dil_h = static_cast<int>(c.dilation[0]);
    r.dil_w = static_cast<int>(c.dilation[1]);
    // At least 1: a filter with more channels than x is refused by
    // check_problem (channels = filter channels x groups), not divided by.
    r.groups = std::max(1, op.w->dims[1] > 0 ? static_cast<int>(op.x->dims[1] / op.w->dims[1]) : 1);
    r.mode = c.mode;
    r.compute = c.comp;
    r.math = CUDNN_FMA_MATH;
    return r;
}

// Whether an engine takes the graph's problem, and its workspace.
bool engine_applies(int64_t index, const backend_desc &graph, size_t *workspace)
{
    const backend_desc &op = *graph.op;
    const cudnnFilterStruct w = filter_of(*op.w);
    const size_t e = elem_size(cudnn_elem(op.x->dtype));
    const size_t patch = static_cast<size_t>(w.c) * w.h * w.w;
    switch (index) {
    case 1: // FFT: the transformed input and filters
        *workspace = sizeof(float) * 2 *
                     (static_cast<size_t>(op.x->dims[0] * op.x->dims[1]) + static_cast<size_t>(w.k) * w.c) *
                     static_cast<size_t>(op.x->dims[2] + 2 * op.conv->pre[0]) *
                     static_cast<size_t>(op.x->dims[3] + 2 * op.conv->pre[1]);
        return true;
    case 12: // tensor cores: the filters repacked
        *workspace = e * static_cast<size_t>(w.k) * patch;
        return true;
    case 0: // plain: filters up to 5x5, precomputed offsets
        *workspace = sizeof(int) * (patch + 64);
        return w.h <= 5 && w.w <= 5;
    default: return false;
    }
}

bool is_heur_mode(cudnnBackendHeurMode_t m)
{
    return m == CUDNN_HEUR_MODE_INSTANT || m == CUDNN_HEUR_MODE_B || m == CUDNN_HEUR_MODE_FALLBACK ||
           m == CUDNN_HEUR_MODE_A;
}

const auto kOperationGraphHandle = static_cast<cudnnBackendAttributeName_t>(800); // deprecated name in 9.19
const auto kExecutionPlanHandle = static_cast<cudnnBackendAttributeName_t>(400);

// A finalized descriptor of the given type, copied (as cuDNN copies it).
cudnnStatus_t take_desc(cudnnBackendAttributeType_t type, int64_t count, const void *values,
                        cudnnBackendDescriptorType_t want, backend_ptr *out)
{
    if (type != CUDNN_TYPE_BACKEND_DESCRIPTOR || count != 1 || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
    const backend_desc *src = as_backend(*static_cast<const cudnnBackendDescriptor_t *>(values));
    if (src == nullptr || src->type != want || !src->finalized) return CUDNN_STATUS_BAD_PARAM;
    *out = std::make_shared<backend_desc>(*src);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t take_int64s(cudnnBackendAttributeType_t type, int64_t count, const void *values, int64_t min_count,
                          int64_t max_count, std::vector<int64_t> *out)
{
    if (type != CUDNN_TYPE_INT64 || count < min_count || count > max_count || values == nullptr)
        return CUDNN_STATUS_BAD_PARAM;
    const auto *v = static_cast<const int64_t *>(values);
    out->assign(v, v + count);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t take_int64(cudnnBackendAttributeType_t type, int64_t count, const void *values, int64_t *out)
{
    std::vector<int64_t> v;
    const cudnnStatus_t st = take_int64s(type, count, values, 1, 1, &v);
    if (st == CUDNN_STATUS_SUCCESS) *out = v[0];
    return st;
}

cudnnStatus_t take_scale(cudnnBackendAttributeType_t type, int64_t count, const void *values, double *out)
{
    if (count != 1 || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
    if (type == CUDNN_TYPE_FLOAT)
        *out = *static_cast<const float *>(values);
    else if (type == CUDNN_TYPE_DOUBLE)
        *out = *static_cast<const double *>(values);
    else
        return CUDNN_STATUS_BAD_PARAM;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t take_handle(cudnnBackendAttributeType_t type, int64_t count, const void *values, cudnnHandle_t *out)
{
    if (type != CUDNN_TYPE_HANDLE || count != 1 || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
    *out = *static_cast<const cudnnHandle_t *>(values);
    return *out != nullptr ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
}

cudnnStatus_t set_backend(backend_desc &d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                          int64_t count, const void *values)
{
    switch (d.type) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR:
        switch (name) {
        case CUDNN_ATTR_TENSOR_DATA_TYPE:
            if (type != CUDNN_TYPE_DATA_TYPE || count != 1 || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
            d.dtype = *static_cast<const cudnnDataType_t *>(values);
            d.has_dtype = true;
            return CUDNN_STATUS_SUCCESS;
        case CUDNN_ATTR_TENSOR_DIMENSIONS: return take_int64s(type, count, values, 1, CUDNN_DIM_MAX, &d.dims);
        case CUDNN_ATTR_TENSOR_STRIDES: return take_int64s(type, count, values, 1, CUDNN_DIM_MAX, &d.strides);
        case CUDNN_ATTR_TENSOR_UNIQUE_ID: d.has_uid = true; return take_int64(type, count, values, &d.uid);
        case CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT: return take_int64(type, count, values, &d.alignment);
        default: return CUDNN_STATUS_BAD_PARAM;
        }
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR:
        switch (name) {
        case CUDNN_ATTR_CONVOLUTION_COMP_TYPE:
            if (type != CUDNN_TYPE_DATA_TYPE || count != 1 || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
            d.comp = *static_cast<const cudnnDataType_t *>(values);
            d.has_comp = true;
            return CUDNN_STATUS_SUCCESS;
        case CUDNN_ATTR_CONVOLUTION_CONV_MODE:
            if (type != CUDNN_TYPE_CONVOLUTION_MODE || count != 1 || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
            d.mode = *static_cast<const cudnnConvolutionMode_t *>(values);
            d.has_mode = true;
            return CUDNN_STATUS_SUCCESS;
        case CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS: return take_int64(type, count, values, &d.spatial);
        case CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS: return take_int64s(type, count, values, 1, CUDNN_DIM_MAX, &d.pre);
        case CUDNN_ATTR_CONVOLUTION_POST_PADDINGS: return take_int64s(type, count, values, 1, CUDNN_DIM_MAX, &d.post);
        case CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES:
            return take_int64s(type, count, values, 1, CUDNN_DIM_MAX, &d.fstride);
        case CUDNN_ATTR_CONVOLUTION_DILATIONS: return take_int64s(type, count, values, 1, CUDNN_DIM_MAX, &d.dilation);
        default: return CUDNN_STATUS_BAD_PARAM;
        }
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR:
        switch (name) {
        case CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X:
            return take_desc(type, count, values, CUDNN_BACKEND_TENSOR_DESCRIPTOR, &d.x);
        case CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W:
            return take_desc(type, count, values, CUDNN_BACKEND_TENSOR_DESCRIPTOR, &d.w);
        case CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y:
            return take_desc(type, count, values, CUDNN_BACKEND_TENSOR_DESCRIPTOR, &d.y);
        case CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC:
            return take_desc(type, count, values, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, &d.conv);
        case CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA:
            d.has_alpha = true;
            return take_scale(type, count, values, &d.alpha);
        case CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA:
            d.has_beta = true;
            return take_scale(type, count, values, &d.beta);
        default: return CUDNN_STATUS_BAD_PARAM;
        }
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR:
        if (name == CUDNN_ATTR_OPERATIONGRAPH_OPS)
            return take_desc(type, count, values, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, &d.op);
        if (name == kOperationGraphHandle) return take_handle(type, count, values, &d.handle);
        return CUDNN_STATUS_BAD_PARAM;
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR:
        if (name == CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH)
            return take_desc(type, count, values, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &d.graph);
        if (name == CUDNN_ATTR_ENGINEHEUR_MODE) {
            if (type != CUDNN_TYPE_HEUR_MODE || count != 1 || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
            d.heur_mode = *static_cast<const cudnnBackendHeurMode_t *>(values);
            d.has_heur_mode = is_heur_mode(d.heur_mode);
            return d.has_heur_mode ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
        }
        return CUDNN_STATUS_BAD_PARAM;
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
        if (name == CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG)
            return take_desc(type, count, values, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &d.cfg);
        if (name == kExecutionPlanHandle) return take_handle(type, count, values, &d.handle);
        return CUDNN_STATUS_BAD_PARAM;
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR:
        switch (name) {
        case CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS: return take_int64s(type, count, values, 1, 64, &d.uids);
        case CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS: {
            if (type != CUDNN_TYPE_VOID_PTR || count < 1 || count > 64 || values == nullptr)
                return CUDNN_STATUS_BAD_PARAM;
            const auto *p = static_cast<void *const *>(values);
            d.ptrs.assign(p, p + count);
            return CUDNN_STATUS_SUCCESS;
        }
        case CUDNN_ATTR_VARIANT_PACK_WORKSPACE:
            if (type != CUDNN_TYPE_VOID_PTR || count != 1 || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
            d.workspace_ptr = *static_cast<void *const *>(values);
            d.has_workspace = true;
            return CUDNN_STATUS_SUCCESS;
        default: return CUDNN_STATUS_BAD_PARAM;
        }
    default: return CUDNN_STATUS_BAD_PARAM; // engine and engine config descriptors are filled by GetAttribute
    }
}

bool data_type_ok(cudnnDataType_t t)
{
    return t == CUDNN_DATA_FLOAT || t == CUDNN_DATA_HALF || t == CUDNN_DATA_BFLOAT16;
}

cudnnStatus_t finalize_backend(backend_desc &d)
{
    switch (d.type) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: {
        if (!d.has_dtype || !d.has_uid || d.dims.empty() || d.dims.size() != d.strides.size() || d.alignment <= 0 ||
            (d.alignment & (d.alignment - 1)) != 0)
            return CUDNN_STATUS_BAD_PARAM;
        for (size_t i = 0; i < d.dims.size(); ++i)
            if (d.dims[i] <= 0 || d.strides[i] <= 0) return CUDNN_STATUS_BAD_PARAM;
        cudnnTensorFormat_t f;
        // The emulation takes 4-d packed NCHW or NHWC tensors, what condconv sets.
        if (!data_type_ok(d.dtype) || d.dims.size() != 4 || !packed_format(d, &f)) return CUDNN_STATUS_NOT_SUPPORTED;
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR: {
        const auto n = static_cast<size_t>(d.spatial);
        if (!d.has_comp || !d.has_mode || d.spatial < 1 || d.pre.size() != n || d.post.size() != n ||
            d.fstride.size() != n || d.dilation.size() != n)
            return CUDNN_STATUS_BAD_PARAM;
        for (size_t i = 0; i < n; ++i)
            if (d.pre[i] < 0 || d.post[i] < 0 || d.fstride[i] < 1 || d.dilation[i] < 1) return CUDNN_STATUS_BAD_PARAM;
        // The emulation: 2-d, symmetric padding (what condconv sets).
        if (n != 2 || d.pre != d.post) return CUDNN_STATUS_NOT_SUPPORTED;
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR: {
        if (!d.x || !d.w || !d.y || !d.conv || !d.has_alpha || !d.has_beta) return CUDNN_STATUS_BAD_PARAM;
        if (d.x->uid == d.w->uid || d.x->uid == d.y->uid || d.w->uid == d.y->uid) return CUDNN_STATUS_BAD_PARAM;
        if (d.w->dims[1] <= 0 || d.x->dims[1] % d.w->dims[1] != 0) return CUDNN_STATUS_BAD_PARAM;
        const cudnnTensorStruct x = tensor_of(*d.x), y = tensor_of(*d.y);
        const cudnnFilterStruct w = filter_of(*d.w);
        const cudnnConvolutionStruct c = conv_of(d);
        return check_problem(&x, &w, &c, &y);
    }
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: return d.op ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: {
        if (!d.graph || !d.has_heur_mode) return CUDNN_STATUS_BAD_PARAM;
        const bool grouped = d.graph->op->x->dims[1] != d.graph->op->w->dims[1];
        d.results.clear();
        for (const emu_engine &e : kEngines)
            if (e.index != 0 || d.heur_mode != CUDNN_HEUR_MODE_A || !grouped) d.results.push_back(e.index);
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: {
        if (!d.cfg || !d.cfg->graph) return CUDNN_STATUS_BAD_PARAM;
        if (!engine_applies(d.cfg->engine, *d.cfg->graph, &d.workspace)) return CUDNN_STATUS_NOT_SUPPORTED;
        d.graph = d.cfg->graph;
        d.engine = d.cfg->engine;
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR:
        return !d.uids.empty() && d.uids.size() == d.ptrs.size() ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_BAD_PARAM;
    default: return CUDNN_STATUS_BAD_PARAM;
    }
}

cudnnStatus_t get_backend(const backend_desc &d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
                          int64_t requested, int64_t *count, void *values)
{
    if (!d.finalized || count == nullptr || requested < 0) return CUDNN_STATUS_BAD_PARAM;
    switch (d.type) {
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: {
        if (name != CUDNN_ATTR_ENGINEHEUR_RESULTS || type != CUDNN_TYPE_BACKEND_DESCRIPTOR)
            return CUDNN_STATUS_BAD_PARAM;
        const auto n = static_cast<int64_t>(d.results.size());
        if (requested == 0) {
            *count = n;
            return CUDNN_STATUS_SUCCESS;
        }
        if (values == nullptr) return CUDNN_STATUS_BAD_PARAM;
        auto *out = static_cast<cudnnBackendDescriptor_t *>(values);
        const int64_t k = std::min(requested, n);
        for (int64_t i = 0; i < k; ++i) {
            backend_desc *cfg = as_backend(out[i]);
            if (cfg == nullptr || cfg->type != CUDNN_BACKEND_ENGINECFG_DESCRIPTOR) return CUDNN_STATUS_BAD_PARAM;
            cfg->graph = d.graph;
            cfg->engine = d.results[static_cast<size_t>(i)];
            cfg->finalized = true;
        }
        *count = k;
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: {
        if (name != CUDNN_ATTR_ENGINECFG_ENGINE || type != CUDNN_TYPE_BACKEND_DESCRIPTOR || requested != 1 ||
            values == nullptr)
            return CUDNN_STATUS_BAD_PARAM;
        backend_desc *engine = as_backend(*static_cast<cudnnBackendDescriptor_t *>(values));
        if (engine == nullptr || engine->type != CUDNN_BACKEND_ENGINE_DESCRIPTOR) return CUDNN_STATUS_BAD_PARAM;
        engine->graph = d.graph;
        engine->engine = d.engine;
        engine->finalized = true;
        *count = 1;
        return CUDNN_STATUS_SUCCESS;
    }
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR: {
        const emu_engine *e = find_engine(d.engine);
        if (e == nullptr || values == nullptr) return CUDNN_STATUS_BAD_PARAM;
        if (name == CUDNN_ATTR_ENGINE_GLOBAL_INDEX && type == CUDNN_TYPE_INT64 && requested >= 1) {
            *static_cast<int64_t *>(values) = e->index;
            *count = 1;
            return CUDNN_STATUS_SUCCESS;
        }
        if (name == CUDNN_ATTR_ENGINE_NUMERICAL_NOTE && type == CUDNN_TYPE_NUMERICAL_NOTE) {
            const int64_t k = std::min(requested, static_cast<int64_t>(e->note_count));
            for (int64_t i = 0; i < k; ++i)
                static_cast<cudnnBackendNumericalNote_t *>(values)[i] = e->notes[static_cast<size_t>(i)];
            *count = k;
            return CUDNN_STATUS_SUCCESS;
        }
        return CUDNN_STATUS_BAD_PARAM;
    }
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
        if (name != CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE || type != CUDNN_TYPE_INT64 || requested < 1 ||
            values == nullptr)
            return CUDNN_STATUS_BAD_PARAM;
        *static_cast<int64_t *>(values) = static_cast<int64_t>(d.workspace);
        *count = 1;
        return CUDNN_STATUS_SUCCESS;
    default: return CUDNN_STATUS_BAD_PARAM;
    }
}

// The variant pack's pointer for a tensor's unique id, nullptr if absent.
void *pack_pointer(const backend_desc &pack, int64_t uid, bool *found)
{
    for (size_t i = 0; i < pack.uids.size(); ++i)
        if (pack.uids[i] == uid) {
            *found = true;
            return pack.ptrs[i];
        }
    *found = false;
    return nullptr;
}

} // namespace

// NOLINTBEGIN(readability-inconsistent-declaration-parameter-name)
extern "C" {

cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *out)
{
    if (out == nullptr) return CUDNN_STATUS_BAD_PARAM;
    switch (type) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR:
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR:
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: break;
    default: return CUDNN_STATUS_NOT_SUPPORTED; // not emulated: condconv does not use it
    }
    auto *d = new backend_desc(type);
    live_backend().insert(d);
    cc_cpu::handle_created();
    *out = d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t descriptor)
{
    backend_desc *d = as_backend(descriptor);
    if (d == nullptr) return CUDNN_STATUS_BAD_PARAM;
    live_backend().erase(d);
    delete d;
    cc_cpu::handle_destroyed();
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t count, const void *values)
{
    backend_desc *d = as_backend(descriptor);
    if (d == nullptr || d->finalized) return CUDNN_STATUS_BAD_PARAM;
    return set_backend(*d, name, type, count, values);
}

cudnnStatus_t cudnnBackendGetAttribute(cudnnBackendDescriptor_t const descriptor, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t requested, int64_t *count,
                                       void *values)
{
    const backend_desc *d = as_backend(descriptor);
    if (d == nullptr) return CUDNN_STATUS_BAD_PARAM;
    return get_backend(*d, name, type, requested, count, values);
}

cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t descriptor)
{
    backend_desc *d = as_backend(descriptor);
    if (d == nullptr || d->finalized) return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t st = finalize_backend(*d);
    if (st == CUDNN_STATUS_SUCCESS) d->finalized = true;
    return st;
}

// Checks the pack against the plan's graph (every tensor's id present, its
// pointer device memory covering the tensor and aligned as the tensor's
// byte alignment says, the workspace covering the plan's size), then runs
// y = alpha conv(x, w) + beta y in stream order, the workspace overwritten.
cudnnStatus_t cudnnBackendExecute(cudnnHandle_t handle, cudnnBackendDescriptor_t plan_desc,
                                  cudnnBackendDescriptor_t pack_desc)
{
    const backend_desc *plan = as_backend(plan_desc), *pack = as_backend(pack_desc);
    if (handle == nullptr || plan == nullptr || pack == nullptr || !plan->finalized || !pack->finalized ||
        plan->type != CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR || pack->type != CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)
        return CUDNN_STATUS_BAD_PARAM;
    const backend_desc &op = *plan->graph->op;
    const char *call = "cudnnBackendExecute";
    bool fx = false, fw = false, fy = false;
    void *x = pack_pointer(*pack, op.x->uid, &fx), *w = pack_pointer(*pack, op.w->uid, &fw);
    void *y = pack_pointer(*pack, op.y->uid, &fy);
    if (!fx || !fw || !fy || pack->uids.size() != 3) return CUDNN_STATUS_BAD_PARAM;
    if (plan->workspace > 0 && (!pack->has_workspace || pack->workspace_ptr == nullptr)) return CUDNN_STATUS_BAD_PARAM;
    conv_job job{tensor_of(*op.x), tensor_of(*op.y),    filter_of(*op.w), conv_of(op),
                 conv_call{},      pack->workspace_ptr, plan->workspace};
    const size_t e = elem_size(cudnn_elem(op.x->dtype));
    check_range(call, "x", x, e * tensor_elems(job.x), static_cast<size_t>(op.x->alignment));
    check_range(call, "w", w, e * filter_elems(job.w), static_cast<size_t>(op.w->alignment));
    check_range(call, "y", y, e * tensor_elems(job.y), static_cast<size_t>(op.y->alignment));
    check_range(call, "workspace", pack->workspace_ptr, plan->workspace, 1);
    job.c = conv_call{&job.x, &job.y, &job.w, &job.cv, conv_kind::forward, x, w, y, y, op.alpha, op.beta};
    return cc_cpu::enqueue(handle->stream, call, [call, job] { run_job(call, job); }) ? CUDNN_STATUS_SUCCESS
                                                                                      : CUDNN_STATUS_EXECUTION_FAILED;
}

} // extern "C"
// NOLINTEND(readability-inconsistent-declaration-parameter-name)
