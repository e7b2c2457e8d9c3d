/* Maps CUDA runtime, cuDNN and cuBLAS return codes to condconv statuses,
 * with a message naming the public entry point and the failing call. */
#ifndef CONDCONV_HOST_CUDA_STATUS_H
#define CONDCONV_HOST_CUDA_STATUS_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "condconv.h"

condconv_status cc_cuda_status(cudaError_t err, const char *call, const char *func);
condconv_status cc_cudnn_status(cudnnStatus_t err, const char *call, const char *func);
condconv_status cc_cublas_status(cublasStatus_t err, const char *call, const char *func);

/* Return from the enclosing function on failure; the message names `call`. */
#define CC_CUDA_TRY(call, func)   CC_TRY(cc_cuda_status((call), #call, func))
#define CC_CUDNN_TRY(call, func)  CC_TRY(cc_cudnn_status((call), #call, func))
#define CC_CUBLAS_TRY(call, func) CC_TRY(cc_cublas_status((call), #call, func))

#endif
