// cuDNN and cuBLAS for the CPU execution layer: handles and descriptors
// behave (they are created, set, queried and destroyed, and their creation
// is an allocation event for fault injection), but no convolution or GEMM is
// offered. So the library's algorithms built on cuDNN find no algorithm and
// report CONDCONV_STATUS_NOT_SUPPORTED at prepare, and gemm_batched's GEMM
// fails with CUBLAS_STATUS_NOT_SUPPORTED at run time: only the algorithms
// made of condconv's own kernels run end to end on the CPU.
#include "cuda_cpu/vector_types.h" // before the toolkit's headers, as in the kernels

#include <cublas_v2.h>
#include <cudnn.h>

#include <cstdio>

#include "runtime.h"

// The opaque handle and descriptor types, as this emulation implements them.
struct cudnnContext {
    cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
    int n = 0, c = 0, h = 0, w = 0;
};
struct cudnnFilterStruct {
    int k = 0, c = 0, h = 0, w = 0;
};
struct cudnnConvolutionStruct {
    int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1, groups = 1;
};
struct cudnnActivationStruct {
    cudnnActivationMode_t mode = CUDNN_ACTIVATION_RELU;
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

// Every algorithm cuDNN has, each one not supported here.
cudnnStatus_t no_algorithms(int requested, int *returned, cudnnConvolutionFwdAlgoPerf_t *perf)
{
    if (returned == nullptr || perf == nullptr || requested < 1) return CUDNN_STATUS_BAD_PARAM;
    const int n = requested < CUDNN_CONVOLUTION_FWD_ALGO_COUNT ? requested : CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    for (int i = 0; i < n; ++i) {
        perf[i] = cudnnConvolutionFwdAlgoPerf_t{};
        perf[i].algo = static_cast<cudnnConvolutionFwdAlgo_t>(i);
        perf[i].status = CUDNN_STATUS_NOT_SUPPORTED;
        perf[i].time = -1.0f;
        perf[i].mathType = CUDNN_FMA_MATH;
    }
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
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

const char *cudnnGetErrorString(cudnnStatus_t status)
{
    switch (status) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_ALLOC_FAILED: return "CUDNN_STATUS_ALLOC_FAILED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED (the CPU execution layer runs no cuDNN)";
    default: return "CUDNN_STATUS_UNKNOWN";
    }
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d)
{
    return create(d, "cudnnCreateTensorDescriptor");
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) { return destroy(d); }
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format, cudnnDataType_t type,
                                         int n, int c, int h, int w)
{
    (void)format;
    (void)type;
    if (d == nullptr || n < 1 || c < 1 || h < 1 || w < 1) return CUDNN_STATUS_BAD_PARAM;
    *d = cudnnTensorStruct{n, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d)
{
    return create(d, "cudnnCreateFilterDescriptor");
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) { return destroy(d); }
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type, cudnnTensorFormat_t format,
                                         int k, int c, int h, int w)
{
    (void)format;
    (void)type;
    if (d == nullptr || k < 1 || c < 1 || h < 1 || w < 1) return CUDNN_STATUS_BAD_PARAM;
    *d = cudnnFilterStruct{k, c, h, w};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d)
{
    return create(d, "cudnnCreateConvolutionDescriptor");
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) { return destroy(d); }
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dil_h, int dil_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t compute)
{
    (void)mode;
    (void)compute;
    if (d == nullptr || pad_h < 0 || pad_w < 0 || u < 1 || v < 1 || dil_h < 1 || dil_w < 1)
        return CUDNN_STATUS_BAD_PARAM;
    d->pad_h = pad_h;
    d->pad_w = pad_w;
    d->u = u;
    d->v = v;
    d->dil_h = dil_h;
    d->dil_w = dil_w;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int groups)
{
    if (d == nullptr || groups < 1) return CUDNN_STATUS_BAD_PARAM;
    d->groups = groups;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t math)
{
    (void)math;
    return d == nullptr ? CUDNN_STATUS_BAD_PARAM : CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t conv,
                                                    const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
                                                    int *n, int *c, int *h, int *wo)
{
    if (conv == nullptr || x == nullptr || w == nullptr || n == nullptr || c == nullptr || h == nullptr ||
        wo == nullptr)
        return CUDNN_STATUS_BAD_PARAM;
    *n = x->n;
    *c = w->k;
    *h = (x->h + 2 * conv->pad_h - (conv->dil_h * (w->h - 1) + 1)) / conv->u + 1;
    *wo = (x->w + 2 * conv->pad_w - (conv->dil_w * (w->w - 1) + 1)) / conv->v + 1;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t handle, const cudnnTensorDescriptor_t x,
                                                     const cudnnFilterDescriptor_t w,
                                                     const cudnnConvolutionDescriptor_t conv,
                                                     const cudnnTensorDescriptor_t y, const int requested,
                                                     int *returned, cudnnConvolutionFwdAlgoPerf_t *perf)
{
    (void)handle;
    (void)x;
    (void)w;
    (void)conv;
    (void)y;
    return no_algorithms(requested, returned, perf);
}

cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xd,
                                                     const void *x, const cudnnFilterDescriptor_t wd, const void *w,
                                                     const cudnnConvolutionDescriptor_t conv,
                                                     const cudnnTensorDescriptor_t yd, void *y, const int requested,
                                                     int *returned, cudnnConvolutionFwdAlgoPerf_t *perf,
                                                     void *workspace, size_t workspace_bytes)
{
    (void)handle;
    (void)xd;
    (void)x;
    (void)wd;
    (void)w;
    (void)conv;
    (void)yd;
    (void)y;
    (void)workspace;
    (void)workspace_bytes;
    return no_algorithms(requested, returned, perf);
}

cudnnStatus_t cudnnCreateActivationDescriptor(cudnnActivationDescriptor_t *d)
{
    return create(d, "cudnnCreateActivationDescriptor");
}
cudnnStatus_t cudnnDestroyActivationDescriptor(cudnnActivationDescriptor_t d) { return destroy(d); }
cudnnStatus_t cudnnSetActivationDescriptor(cudnnActivationDescriptor_t d, cudnnActivationMode_t mode,
                                           cudnnNanPropagation_t nan, double coef)
{
    (void)nan;
    (void)coef;
    if (d == nullptr) return CUDNN_STATUS_BAD_PARAM;
    d->mode = mode;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xd,
                                      const void *x, const cudnnFilterDescriptor_t wd, const void *w,
                                      const cudnnConvolutionDescriptor_t conv, cudnnConvolutionFwdAlgo_t algo,
                                      void *workspace, size_t workspace_bytes, const void *beta,
                                      const cudnnTensorDescriptor_t yd, void *y)
{
    (void)handle;
    (void)alpha;
    (void)xd;
    (void)x;
    (void)wd;
    (void)w;
    (void)conv;
    (void)algo;
    (void)workspace;
    (void)workspace_bytes;
    (void)beta;
    (void)yd;
    (void)y;
    return CUDNN_STATUS_NOT_SUPPORTED;
}

cudnnStatus_t cudnnConvolutionBiasActivationForward(
    cudnnHandle_t handle, const void *alpha1, const cudnnTensorDescriptor_t xd, const void *x,
    const cudnnFilterDescriptor_t wd, const void *w, const cudnnConvolutionDescriptor_t conv,
    cudnnConvolutionFwdAlgo_t algo, void *workspace, size_t workspace_bytes, const void *alpha2,
    const cudnnTensorDescriptor_t zd, const void *z, const cudnnTensorDescriptor_t bias_d, const void *bias,
    const cudnnActivationDescriptor_t act, const cudnnTensorDescriptor_t yd, void *y)
{
    (void)handle;
    (void)alpha1;
    (void)xd;
    (void)x;
    (void)wd;
    (void)w;
    (void)conv;
    (void)algo;
    (void)workspace;
    (void)workspace_bytes;
    (void)alpha2;
    (void)zd;
    (void)z;
    (void)bias_d;
    (void)bias;
    (void)act;
    (void)yd;
    (void)y;
    return CUDNN_STATUS_NOT_SUPPORTED;
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

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void *workspace, size_t bytes)
{
    (void)workspace;
    (void)bytes;
    return handle == nullptr ? CUBLAS_STATUS_NOT_INITIALIZED : CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void *alpha, const void *a, cudaDataType a_type,
                                          int lda, long long stride_a, const void *b, cudaDataType b_type, int ldb,
                                          long long stride_b, const void *beta, void *c, cudaDataType c_type, int ldc,
                                          long long stride_c, int batch, cublasComputeType_t compute,
                                          cublasGemmAlgo_t algo)
{
    (void)handle;
    (void)transa;
    (void)transb;
    (void)m;
    (void)n;
    (void)k;
    (void)alpha;
    (void)a;
    (void)a_type;
    (void)lda;
    (void)stride_a;
    (void)b;
    (void)b_type;
    (void)ldb;
    (void)stride_b;
    (void)beta;
    (void)c;
    (void)c_type;
    (void)ldc;
    (void)stride_c;
    (void)batch;
    (void)compute;
    (void)algo;
    return CUBLAS_STATUS_NOT_SUPPORTED;
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

const char *cublasGetStatusString(cublasStatus_t status)
{
    return status == CUBLAS_STATUS_NOT_SUPPORTED ? "the CPU execution layer runs no cuBLAS"
                                                 : cublasGetStatusName(status);
}

} // extern "C"
// NOLINTEND(readability-inconsistent-declaration-parameter-name)
