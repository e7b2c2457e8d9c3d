// The half and bfloat16 intrinsics that cuda_fp16.h and cuda_bf16.h declare
// for device code only, for kernels compiled as C++ by the CPU execution
// layer (the types, conversions, +, *, comparisons and __hadd/__hmul/...
// come from the real headers, which support host code). Fused multiply-adds
// round once (through double); the math functions go through float and
// round once more to half, so their last bit may differ from a GPU's.
// Included by device.h.
#ifndef CC_CPU_HALF_H
#define CC_CPU_HALF_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

inline __half __hfma(__half a, __half b, __half c)
{
    return __double2half(std::fma(static_cast<double>(__half2float(a)), static_cast<double>(__half2float(b)),
                                  static_cast<double>(__half2float(c))));
}
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c)
{
    return __halves2half2(__hfma(__low2half(a), __low2half(b), __low2half(c)),
                          __hfma(__high2half(a), __high2half(b), __high2half(c)));
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c)
{
    return __double2bfloat16(std::fma(static_cast<double>(__bfloat162float(a)),
                                      static_cast<double>(__bfloat162float(b)),
                                      static_cast<double>(__bfloat162float(c))));
}

#define CC_CPU_HALF_MATH(name, f)                                                                                      \
    inline __half name(__half x) { return __float2half(f(__half2float(x))); }                                          \
    inline __nv_bfloat16 name(__nv_bfloat16 x) { return __float2bfloat16(f(__bfloat162float(x))); }
CC_CPU_HALF_MATH(hsqrt, sqrtf)
CC_CPU_HALF_MATH(hexp, expf)
CC_CPU_HALF_MATH(hexp2, exp2f)
CC_CPU_HALF_MATH(hlog, logf)
CC_CPU_HALF_MATH(hlog2, log2f)
CC_CPU_HALF_MATH(hsin, sinf)
CC_CPU_HALF_MATH(hcos, cosf)
CC_CPU_HALF_MATH(htrunc, truncf)
CC_CPU_HALF_MATH(hceil, ceilf)
CC_CPU_HALF_MATH(hfloor, floorf)
CC_CPU_HALF_MATH(hrint, rintf)
#undef CC_CPU_HALF_MATH
inline __half hrsqrt(__half x) { return __float2half(1.0f / sqrtf(__half2float(x))); }
inline __half hrcp(__half x) { return __float2half(1.0f / __half2float(x)); }

#endif
