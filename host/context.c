/* Context lifetime, options, and lazy creation of the library handles. */
#include "context.h"

#include <stdlib.h>

#include "cuda_status.h"
#include "error.h"
#include "registry.h"

int condconv_device_count(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear it: no device is an answer, not an error */
        return 0;
    }
    return count;
}

condconv_status condconv_context_create(condconv_context_t *context, int device)
{
    static const char func[] = "condconv_context_create";
    CC_CHECK_NOT_NULL(context, func);
    if (device < 0 && device != CONDCONV_DEVICE_CPU)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: device %d is neither a CUDA ordinal nor CONDCONV_DEVICE_CPU",
                       func, device);
    struct condconv_context c = {0};
    c.device = device;
    c.math = CONDCONV_MATH_F32;
    c.select = CONDCONV_SELECT_MEASURE;
    c.auto_budget_ms = CONDCONV_DEFAULT_AUTO_BUDGET_MS;
    if (device != CONDCONV_DEVICE_CPU) {
        int count = 0;
        cudaError_t err = cudaGetDeviceCount(&count);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            return cc_fail(CONDCONV_STATUS_NO_DEVICE, "%s: no usable CUDA device (cudaGetDeviceCount: %s)", func,
                           cudaGetErrorString(err));
        }
        if (device >= count)
            return cc_fail(CONDCONV_STATUS_NO_DEVICE, "%s: CUDA device %d requested, %d present", func, device, count);
        struct cudaDeviceProp prop;
        CC_CUDA_TRY(cudaGetDeviceProperties(&prop, device), func);
        c.sm_count = prop.multiProcessorCount;
        c.max_smem_per_block_optin = (int)prop.sharedMemPerBlockOptin;
        c.l2_bytes = (size_t)prop.l2CacheSize;
    }
    struct condconv_context *ctx = malloc(sizeof *ctx);
    if (ctx == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    *ctx = c;
    const condconv_status s = cc_registry_add(ctx, CC_HANDLE_CONTEXT, NULL, func);
    if (s != CONDCONV_STATUS_SUCCESS) {
        free(ctx);
        return s;
    }
    *context = ctx;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_context_destroy(condconv_context_t ctx)
{
    if (ctx == NULL) return CONDCONV_STATUS_SUCCESS;
    static const char func[] = "condconv_context_destroy";
    /* Refused while layers use the context (condconv.h), and for a handle
     * that is not live: nothing is released twice. */
    CC_TRY(cc_registry_remove(ctx, CC_HANDLE_CONTEXT, func));
    condconv_status status = CONDCONV_STATUS_SUCCESS;
    if (ctx->cudnn || ctx->cublas || ctx->cublas_workspace) {
        /* Best effort: release everything even when one call fails, report the first failure. */
        cc_device_scope scope;
        condconv_status s = cc_device_scope_begin(ctx, &scope, func);
        if (s == CONDCONV_STATUS_SUCCESS) s = cc_context_set_device(ctx, func);
        if (ctx->cublas) {
            condconv_status t = cc_cublas_status(cublasDestroy(ctx->cublas), "cublasDestroy", func);
            if (s == CONDCONV_STATUS_SUCCESS) s = t;
        }
        if (ctx->cudnn) {
            condconv_status t = cc_cudnn_status(cudnnDestroy(ctx->cudnn), "cudnnDestroy", func);
            if (s == CONDCONV_STATUS_SUCCESS) s = t;
        }
        if (ctx->cublas_workspace) {
            condconv_status t = cc_cuda_status(cudaFree(ctx->cublas_workspace), "cudaFree", func);
            if (s == CONDCONV_STATUS_SUCCESS) s = t;
        }
        status = cc_device_scope_end(&scope, s, func);
    }
    free(ctx);
    return status;
}

condconv_status cc_context_require_gpu(condconv_context_t ctx, const char *func)
{
    if (ctx->device == CONDCONV_DEVICE_CPU)
        return cc_fail(CONDCONV_STATUS_NO_DEVICE,
                       "%s: the layer's context is CPU-only (CONDCONV_DEVICE_CPU); use condconv_forward_cpu or a GPU "
                       "context",
                       func);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_device_scope_begin(condconv_context_t ctx, cc_device_scope *scope, const char *func)
{
    scope->active = 0;
    scope->saved = -1;
    if (ctx->device == CONDCONV_DEVICE_CPU) return CONDCONV_STATUS_SUCCESS; /* never touches CUDA */
    CC_CUDA_TRY(cudaGetDevice(&scope->saved), func);
    scope->active = 1;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_device_scope_end(const cc_device_scope *scope, condconv_status status, const char *func)
{
    if (!scope->active) return status;
    int current = -1;
    cudaError_t err = cudaGetDevice(&current);
    if (err == cudaSuccess && current != scope->saved) err = cudaSetDevice(scope->saved);
    if (err == cudaSuccess || status != CONDCONV_STATUS_SUCCESS) return status; /* the first failure is the news */
    return cc_cuda_status(err, "cudaSetDevice(the caller's device)", func);
}

condconv_status cc_context_set_device(condconv_context_t ctx, const char *func)
{
    CC_TRY(cc_context_require_gpu(ctx, func));
    int current = -1;
    CC_CUDA_TRY(cudaGetDevice(&current), func);
    if (current != ctx->device) CC_CUDA_TRY(cudaSetDevice(ctx->device), func);
    return CONDCONV_STATUS_SUCCESS;
}

/* Binds both handles to the context's stream. cublasSetStream drops a user
 * workspace, so the workspace is set again after it. */
static condconv_status bind_stream(condconv_context_t ctx, const char *func)
{
    if (ctx->cudnn) CC_CUDNN_TRY(cudnnSetStream(ctx->cudnn, ctx->stream), func);
    if (ctx->cublas) {
        CC_CUBLAS_TRY(cublasSetStream(ctx->cublas, ctx->stream), func);
        CC_CUBLAS_TRY(cublasSetWorkspace(ctx->cublas, ctx->cublas_workspace, CC_CUBLAS_WORKSPACE_BYTES), func);
    }
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_context_gpu_begin(condconv_context_t ctx, const char *func)
{
    CC_TRY(cc_context_set_device(ctx, func));
    if (ctx->cudnn && ctx->cublas) return CONDCONV_STATUS_SUCCESS;
    if (ctx->cublas_workspace == NULL) CC_CUDA_TRY(cudaMalloc(&ctx->cublas_workspace, CC_CUBLAS_WORKSPACE_BYTES), func);
    if (ctx->cudnn == NULL) CC_CUDNN_TRY(cudnnCreate(&ctx->cudnn), func);
    if (ctx->cublas == NULL) CC_CUBLAS_TRY(cublasCreate(&ctx->cublas), func);
    return bind_stream(ctx, func);
}

condconv_status condconv_context_set_stream(condconv_context_t ctx, struct CUstream_st *stream)
{
    static const char func[] = "condconv_context_set_stream";
    CC_CHECK_CONTEXT(ctx, func);
    if (stream != NULL) CC_TRY(cc_context_require_gpu(ctx, func));
    ctx->stream = stream;
    if (!(ctx->cudnn || ctx->cublas)) return CONDCONV_STATUS_SUCCESS;
    cc_device_scope scope;
    CC_TRY(cc_device_scope_begin(ctx, &scope, func));
    condconv_status s = cc_context_set_device(ctx, func);
    if (s == CONDCONV_STATUS_SUCCESS) s = bind_stream(ctx, func);
    return cc_device_scope_end(&scope, s, func);
}

condconv_status condconv_context_get_stream(condconv_context_t ctx, struct CUstream_st **stream)
{
    CC_CHECK_CONTEXT(ctx, "condconv_context_get_stream");
    CC_CHECK_NOT_NULL(stream, "condconv_context_get_stream");
    *stream = ctx->stream;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_context_get_device(condconv_context_t ctx, int *device)
{
    CC_CHECK_CONTEXT(ctx, "condconv_context_get_device");
    CC_CHECK_NOT_NULL(device, "condconv_context_get_device");
    *device = ctx->device;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_context_set_math(condconv_context_t ctx, condconv_math math)
{
    static const char func[] = "condconv_context_set_math";
    CC_CHECK_CONTEXT(ctx, func);
    if (math != CONDCONV_MATH_F32 && math != CONDCONV_MATH_TF32)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown math mode %d", func, (int)math);
    ctx->math = math;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_context_get_math(condconv_context_t ctx, condconv_math *math)
{
    CC_CHECK_CONTEXT(ctx, "condconv_context_get_math");
    CC_CHECK_NOT_NULL(math, "condconv_context_get_math");
    *math = ctx->math;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_context_set_algo_select(condconv_context_t ctx, condconv_algo_select select)
{
    static const char func[] = "condconv_context_set_algo_select";
    CC_CHECK_CONTEXT(ctx, func);
    if (select != CONDCONV_SELECT_MEASURE && select != CONDCONV_SELECT_HEURISTIC)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown selection mode %d", func, (int)select);
    ctx->select = select;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_context_get_algo_select(condconv_context_t ctx, condconv_algo_select *select)
{
    CC_CHECK_CONTEXT(ctx, "condconv_context_get_algo_select");
    CC_CHECK_NOT_NULL(select, "condconv_context_get_algo_select");
    *select = ctx->select;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_context_set_auto_budget(condconv_context_t ctx, float milliseconds)
{
    static const char func[] = "condconv_context_set_auto_budget";
    CC_CHECK_CONTEXT(ctx, func);
    /* Written so that NaN fails too. */
    if (!(milliseconds >= 0.0f && milliseconds <= 3.6e6f))
        return cc_fail(CONDCONV_STATUS_BAD_VALUE,
                       "%s: the budget must be between 0 (no bound) and 3.6e6 ms (an hour), not %g", func,
                       (double)milliseconds);
    ctx->auto_budget_ms = milliseconds;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_context_get_auto_budget(condconv_context_t ctx, float *milliseconds)
{
    CC_CHECK_CONTEXT(ctx, "condconv_context_get_auto_budget");
    CC_CHECK_NOT_NULL(milliseconds, "condconv_context_get_auto_budget");
    *milliseconds = ctx->auto_budget_ms;
    return CONDCONV_STATUS_SUCCESS;
}
