/* Status names and the thread-local message behind condconv_last_error. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char cc_last_message[512];

const char *condconv_status_string(condconv_status status)
{
    switch (status) {
    case CONDCONV_STATUS_SUCCESS: return "CONDCONV_STATUS_SUCCESS";
    case CONDCONV_STATUS_NULL_POINTER: return "CONDCONV_STATUS_NULL_POINTER";
    case CONDCONV_STATUS_BAD_SIZE: return "CONDCONV_STATUS_BAD_SIZE";
    case CONDCONV_STATUS_BAD_GROUPS: return "CONDCONV_STATUS_BAD_GROUPS";
    case CONDCONV_STATUS_BAD_EXPERTS: return "CONDCONV_STATUS_BAD_EXPERTS";
    case CONDCONV_STATUS_EMPTY_OUTPUT: return "CONDCONV_STATUS_EMPTY_OUTPUT";
    case CONDCONV_STATUS_SIZE_OVERFLOW: return "CONDCONV_STATUS_SIZE_OVERFLOW";
    case CONDCONV_STATUS_MISSING_ROUTING: return "CONDCONV_STATUS_MISSING_ROUTING";
    case CONDCONV_STATUS_WORKSPACE_TOO_SMALL: return "CONDCONV_STATUS_WORKSPACE_TOO_SMALL";
    case CONDCONV_STATUS_BAD_VALUE: return "CONDCONV_STATUS_BAD_VALUE";
    case CONDCONV_STATUS_MISALIGNED: return "CONDCONV_STATUS_MISALIGNED";
    case CONDCONV_STATUS_NOT_SUPPORTED: return "CONDCONV_STATUS_NOT_SUPPORTED";
    case CONDCONV_STATUS_NOT_PREPARED: return "CONDCONV_STATUS_NOT_PREPARED";
    case CONDCONV_STATUS_ALLOC_FAILED: return "CONDCONV_STATUS_ALLOC_FAILED";
    case CONDCONV_STATUS_NO_DEVICE: return "CONDCONV_STATUS_NO_DEVICE";
    case CONDCONV_STATUS_CUDA_ERROR: return "CONDCONV_STATUS_CUDA_ERROR";
    case CONDCONV_STATUS_CUDNN_ERROR: return "CONDCONV_STATUS_CUDNN_ERROR";
    case CONDCONV_STATUS_CUBLAS_ERROR: return "CONDCONV_STATUS_CUBLAS_ERROR";
    case CONDCONV_STATUS_IO_ERROR: return "CONDCONV_STATUS_IO_ERROR";
    case CONDCONV_STATUS_BAD_FILE: return "CONDCONV_STATUS_BAD_FILE";
    case CONDCONV_STATUS_TENSOR_NOT_FOUND: return "CONDCONV_STATUS_TENSOR_NOT_FOUND";
    case CONDCONV_STATUS_TENSOR_MISMATCH: return "CONDCONV_STATUS_TENSOR_MISMATCH";
    case CONDCONV_STATUS_INTERNAL_ERROR: return "CONDCONV_STATUS_INTERNAL_ERROR";
    }
    return "CONDCONV_STATUS_UNKNOWN";
}

const char *condconv_last_error(void) { return cc_last_message; }

int condconv_version(void) { return CONDCONV_VERSION; }

void cc_record_error(condconv_status status, const char *fmt, ...)
{
    int prefix = snprintf(cc_last_message, sizeof cc_last_message, "%s: ", condconv_status_string(status));
    if (prefix < 0 || (size_t)prefix >= sizeof cc_last_message) return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(cc_last_message + prefix, sizeof cc_last_message - (size_t)prefix, fmt, args);
    va_end(args);
}
