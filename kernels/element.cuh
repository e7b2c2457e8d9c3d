// Element types for the kernels: every kernel family is a template over the
// storage type T (float, __half, __nv_bfloat16) and computes in f32. Loads
// convert exactly (every half and bfloat16 value is a float); stores round
// once, to nearest even. Included by .cu files only.
#ifndef CONDCONV_KERNELS_ELEMENT_CUH
#define CONDCONV_KERNELS_ELEMENT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "formats.h"

__device__ __forceinline__ float cc_to_float(float v) { return v; }
__device__ __forceinline__ float cc_to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float cc_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T cc_from_float(float v);
template <>
__device__ __forceinline__ float cc_from_float<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half cc_from_float<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 cc_from_float<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

// Read-only load through the non-coherent cache, converted to f32.
template <typename T>
__device__ __forceinline__ float cc_load(const T *p)
{
    return cc_to_float(__ldg(p));
}

// Elements of T in one 16-byte access (4 floats, 8 halves).
template <typename T>
struct cc_vec16 {
    static constexpr int count = 16 / (int)sizeof(T);
};

template <typename T>
struct cc_type_tag {
    using type = T;
};

// Calls body(cc_type_tag<T>{}) for the dtype's element type T, so a launcher
// written once as a generic lambda,
//   [&](auto tag) { using T = typename decltype(tag)::type; ... },
// serves every dtype; cudaErrorInvalidValue for an unknown dtype.
template <typename Body>
static inline cudaError_t cc_dispatch_dtype(int dtype, Body &&body)
{
    switch (dtype) {
    case CC_DTYPE_F32: return body(cc_type_tag<float>{});
    case CC_DTYPE_F16: return body(cc_type_tag<__half>{});
    case CC_DTYPE_BF16: return body(cc_type_tag<__nv_bfloat16>{});
    default: return cudaErrorInvalidValue;
    }
}

#endif
