/* The context: one CUDA device and stream, lazily created cuDNN and cuBLAS
 * handles (so a CPU-only program never touches the GPU), and options. */
#ifndef CONDCONV_HOST_CONTEXT_H
#define CONDCONV_HOST_CONTEXT_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "condconv.h"

/* cuBLAS gets a workspace of its own from us, so that it never allocates
 * inside a graph capture; 32 MiB is what NVIDIA recommends for Hopper. */
#define CC_CUBLAS_WORKSPACE_BYTES (32u << 20)

struct condconv_context {
    int device; /* CONDCONV_DEVICE_CPU or a CUDA ordinal */
    cudaStream_t stream;
    condconv_math math;
    condconv_algo_select select;
    float auto_budget_ms; /* condconv_context_set_auto_budget; 0 = no bound */
    /* Read off the device at creation. */
    int sm_count;
    int max_smem_per_block_optin;
    size_t l2_bytes;
    /* Created by cc_context_gpu_begin on first use. */
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    void *cublas_workspace;
};

/* Fails with NO_DEVICE on a CPU-only context. */
condconv_status cc_context_require_gpu(condconv_context_t ctx, const char *func);

/* Makes the context's device current on this thread and creates the handles
 * if they do not exist yet (allocates on first call only). Cheap after. */
condconv_status cc_context_gpu_begin(condconv_context_t ctx, const char *func);

/* The caller's current CUDA device, remembered by every public call that
 * may switch devices and put back before it returns (condconv.h promises
 * it): servers drive several GPUs from one thread. A CPU context touches
 * no CUDA (inactive scope). */
typedef struct cc_device_scope {
    int saved;
    int active;
} cc_device_scope;
condconv_status cc_device_scope_begin(condconv_context_t ctx, cc_device_scope *scope, const char *func);
/* Makes the remembered device current again; returns `status`, or the
 * CUDA error of putting it back if `status` was SUCCESS. */
condconv_status cc_device_scope_end(const cc_device_scope *scope, condconv_status status, const char *func);

/* Makes the context's device current; no handle creation, no allocation. */
condconv_status cc_context_set_device(condconv_context_t ctx, const char *func);

#endif
