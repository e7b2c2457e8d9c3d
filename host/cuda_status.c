/* CUDA, cuDNN and cuBLAS errors as condconv statuses. */
#include "cuda_status.h"

#include "error.h"

condconv_status cc_cuda_status(cudaError_t err, const char *call, const char *func)
{
    if (err == cudaSuccess) return CONDCONV_STATUS_SUCCESS;
    /* Reset the runtime's last-error state, or a later launch check
     * (cudaGetLastError after a kernel launch) would report this failure
     * again as its own. Sticky errors stay sticky regardless. */
    (void)cudaGetLastError();
    if (err == cudaErrorMemoryAllocation)
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: out of device memory", func, call);
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
        return cc_fail(CONDCONV_STATUS_NO_DEVICE, "%s: %s: %s", func, call, cudaGetErrorString(err));
    return cc_fail(CONDCONV_STATUS_CUDA_ERROR, "%s: %s failed: %s (%s)", func, call, cudaGetErrorName(err),
                   cudaGetErrorString(err));
}

condconv_status cc_cudnn_status(cudnnStatus_t err, const char *call, const char *func)
{
    if (err == CUDNN_STATUS_SUCCESS) return CONDCONV_STATUS_SUCCESS;
    if (err == CUDNN_STATUS_ALLOC_FAILED)
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: cuDNN could not allocate memory", func, call);
    return cc_fail(CONDCONV_STATUS_CUDNN_ERROR, "%s: %s failed: %s", func, call, cudnnGetErrorString(err));
}

condconv_status cc_cublas_status(cublasStatus_t err, const char *call, const char *func)
{
    if (err == CUBLAS_STATUS_SUCCESS) return CONDCONV_STATUS_SUCCESS;
    if (err == CUBLAS_STATUS_ALLOC_FAILED)
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: cuBLAS could not allocate memory", func, call);
    return cc_fail(CONDCONV_STATUS_CUBLAS_ERROR, "%s: %s failed: %s (%s)", func, call, cublasGetStatusName(err),
                   cublasGetStatusString(err));
}
