// Device intrinsics for kernels compiled as C++ by the CPU execution layer:
// cache-hinted loads and stores (alignment-checked), device math, bit
// operations, atomics and fences. Included by device.h.
//
// Accuracy: the fast-math forms (__expf, __logf, __fdividef, ...) are the
// correctly rounded libm functions here; the GPU's approximations differ in
// the last bits, so a kernel's tolerance cannot be validated on the CPU.
#ifndef CC_CPU_INTRINSICS_H
#define CC_CPU_INTRINSICS_H

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <type_traits>

#include "engine.h"

// --- loads and stores with cache hints ---------------------------------------
// The hints do not matter on a CPU; the alignment a GPU requires of the
// access (16 bytes for a float4) does, and is checked with the call site.
#define CC_CPU_LOAD(name)                                                                                              \
    template <typename T>                                                                                              \
    inline T name(const T *p, const char *file = __builtin_FILE(), int line = __builtin_LINE())                        \
    {                                                                                                                  \
        ::cc_cpu::check_aligned(p, alignof(T), #name, file, line);                                                     \
        return *p;                                                                                                     \
    }
CC_CPU_LOAD(__ldg)
CC_CPU_LOAD(__ldcg)
CC_CPU_LOAD(__ldca)
CC_CPU_LOAD(__ldcs)
CC_CPU_LOAD(__ldlu)
#undef CC_CPU_LOAD

template <typename T>
inline T __ldcv(const T *p, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    ::cc_cpu::check_aligned(p, alignof(T), "__ldcv", file, line);
    return *static_cast<const volatile T *>(p);
}

#define CC_CPU_STORE(name)                                                                                             \
    template <typename T>                                                                                              \
    inline void name(T *p, T value, const char *file = __builtin_FILE(), int line = __builtin_LINE())                  \
    {                                                                                                                  \
        ::cc_cpu::check_aligned(p, alignof(T), #name, file, line);                                                     \
        *p = value;                                                                                                    \
    }
CC_CPU_STORE(__stwb)
CC_CPU_STORE(__stcg)
CC_CPU_STORE(__stcs)
CC_CPU_STORE(__stwt)
#undef CC_CPU_STORE

// --- integer min/max (the float ones are fminf/fmaxf from libm) --------------
#define CC_CPU_MINMAX(T)                                                                                               \
    inline T min(T a, T b) { return b < a ? b : a; }                                                                   \
    inline T max(T a, T b) { return a < b ? b : a; }
CC_CPU_MINMAX(int)
CC_CPU_MINMAX(unsigned int)
CC_CPU_MINMAX(long)
CC_CPU_MINMAX(unsigned long)
CC_CPU_MINMAX(long long)
CC_CPU_MINMAX(unsigned long long)
CC_CPU_MINMAX(float)
CC_CPU_MINMAX(double)
#undef CC_CPU_MINMAX
// CUDA's mixed-signedness overloads compare as unsigned.
inline unsigned int min(int a, unsigned int b) { return min(static_cast<unsigned int>(a), b); }
inline unsigned int min(unsigned int a, int b) { return min(a, static_cast<unsigned int>(b)); }
inline unsigned int max(int a, unsigned int b) { return max(static_cast<unsigned int>(a), b); }
inline unsigned int max(unsigned int a, int b) { return max(a, static_cast<unsigned int>(b)); }

// --- float math that CUDA has and libm does not --------------------------------
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline float fdividef(float a, float b) { return a / b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float *s, float *c)
{
    *s = sinf(x);
    *c = cosf(x);
}
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); } // NaN -> 0, as on a GPU
// Round-to-nearest forms; a CPU adds and multiplies in the default mode.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline int __float2int_rn(float x) { return static_cast<int>(lrintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline unsigned int __float2uint_rn(float x) { return static_cast<unsigned int>(llrintf(x)); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned int x) { return static_cast<float>(x); }
// Round to TF32 (10 mantissa bits), nearest, ties away from zero (cvt.rna.tf32.f32).
inline float __float_to_tf32(float x)
{
    if (!std::isfinite(x)) return x;
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    u = (u + 0x1000u) & 0xffffe000u;
    float r;
    std::memcpy(&r, &u, sizeof r);
    return r;
}

// --- bit reinterpretation and bit operations ---------------------------------
inline int __float_as_int(float x)
{
    int i;
    std::memcpy(&i, &x, sizeof i);
    return i;
}
inline unsigned int __float_as_uint(float x)
{
    unsigned int i;
    std::memcpy(&i, &x, sizeof i);
    return i;
}
inline float __int_as_float(int i)
{
    float x;
    std::memcpy(&x, &i, sizeof x);
    return x;
}
inline float __uint_as_float(unsigned int i)
{
    float x;
    std::memcpy(&x, &i, sizeof x);
    return x;
}
inline long long __double_as_longlong(double x)
{
    long long i;
    std::memcpy(&i, &x, sizeof i);
    return i;
}
inline double __longlong_as_double(long long i)
{
    double x;
    std::memcpy(&x, &i, sizeof x);
    return x;
}
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned int>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) { return __builtin_bitreverse32(x); }
inline unsigned long long __brevll(unsigned long long x) { return __builtin_bitreverse64(x); }
// The low 24 bits of each operand, sign-extended, multiplied.
inline int __mul24(int a, int b)
{
    const int a24 = static_cast<int>(static_cast<unsigned int>(a) << 8) >> 8;
    const int b24 = static_cast<int>(static_cast<unsigned int>(b) << 8) >> 8;
    return a24 * b24;
}
inline unsigned int __umul24(unsigned int a, unsigned int b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b)
{
    return static_cast<int>((static_cast<long long>(a) * static_cast<long long>(b)) >> 32);
}
inline unsigned int __umulhi(unsigned int a, unsigned int b)
{
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b)
{
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s)
{
    const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<unsigned int>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
}
inline unsigned int __funnelshift_l(unsigned int lo, unsigned int hi, unsigned int shift)
{
    const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
    return static_cast<unsigned int>((v << (shift & 31u)) >> 32);
}
inline unsigned int __funnelshift_r(unsigned int lo, unsigned int hi, unsigned int shift)
{
    const unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
    return static_cast<unsigned int>(v >> (shift & 31u));
}

// --- atomics -----------------------------------------------------------------
// Relaxed, as a GPU's atomics are; the engine sees each one so that under
// TSan a preceding __threadfence() releases through it, and so that the
// store buffer never withholds what atomics wrote (engine.h).
namespace cc_cpu {
template <typename T, typename F>
inline T atomic_rmw(T *addr, F update)
{
    check_aligned(addr, sizeof(T), "atomic", __FILE__, __LINE__);
    atomic_before(addr, sizeof(T));
    T old = __atomic_load_n(addr, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(addr, &old, update(old), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    atomic_after(addr);
    return old;
}
} // namespace cc_cpu

#define CC_CPU_ATOMIC_INT(T)                                                                                           \
    inline T atomicAdd(T *a, T v)                                                                                      \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [v](T o) { return static_cast<T>(o + v); });                                    \
    }                                                                                                                  \
    inline T atomicSub(T *a, T v)                                                                                      \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [v](T o) { return static_cast<T>(o - v); });                                    \
    }                                                                                                                  \
    inline T atomicExch(T *a, T v)                                                                                     \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [v](T) { return v; });                                                          \
    }                                                                                                                  \
    inline T atomicMin(T *a, T v)                                                                                      \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [v](T o) { return v < o ? v : o; });                                            \
    }                                                                                                                  \
    inline T atomicMax(T *a, T v)                                                                                      \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [v](T o) { return o < v ? v : o; });                                            \
    }                                                                                                                  \
    inline T atomicAnd(T *a, T v)                                                                                      \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [v](T o) { return static_cast<T>(o & v); });                                    \
    }                                                                                                                  \
    inline T atomicOr(T *a, T v)                                                                                       \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [v](T o) { return static_cast<T>(o | v); });                                    \
    }                                                                                                                  \
    inline T atomicXor(T *a, T v)                                                                                      \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [v](T o) { return static_cast<T>(o ^ v); });                                    \
    }                                                                                                                  \
    inline T atomicCAS(T *a, T compare, T v)                                                                           \
    {                                                                                                                  \
        return ::cc_cpu::atomic_rmw(a, [compare, v](T o) { return o == compare ? v : o; });                            \
    }
CC_CPU_ATOMIC_INT(int)
CC_CPU_ATOMIC_INT(unsigned int)
CC_CPU_ATOMIC_INT(unsigned long long)
#undef CC_CPU_ATOMIC_INT
inline long long atomicMin(long long *a, long long v)
{
    return ::cc_cpu::atomic_rmw(a, [v](long long o) { return v < o ? v : o; });
}
inline long long atomicMax(long long *a, long long v)
{
    return ::cc_cpu::atomic_rmw(a, [v](long long o) { return o < v ? v : o; });
}
// ((old >= limit) ? 0 : old + 1) and ((old == 0 || old > limit) ? limit : old - 1), as CUDA defines them.
inline unsigned int atomicInc(unsigned int *a, unsigned int limit)
{
    return ::cc_cpu::atomic_rmw(a, [limit](unsigned int o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned int atomicDec(unsigned int *a, unsigned int limit)
{
    return ::cc_cpu::atomic_rmw(a, [limit](unsigned int o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}
// Floating-point atomics through the bit pattern.
inline float atomicAdd(float *a, float v)
{
    static_assert(sizeof(float) == sizeof(unsigned int), "float is 32 bits");
    unsigned int *bits = reinterpret_cast<unsigned int *>(a);
    const unsigned int old =
        ::cc_cpu::atomic_rmw(bits, [v](unsigned int o) { return __float_as_uint(__uint_as_float(o) + v); });
    return __uint_as_float(old);
}
inline double atomicAdd(double *a, double v)
{
    unsigned long long *bits = reinterpret_cast<unsigned long long *>(a);
    const unsigned long long old = ::cc_cpu::atomic_rmw(bits, [v](unsigned long long o) {
        return static_cast<unsigned long long>(
            __double_as_longlong(__longlong_as_double(static_cast<long long>(o)) + v));
    });
    return __longlong_as_double(static_cast<long long>(old));
}
inline float atomicExch(float *a, float v)
{
    unsigned int *bits = reinterpret_cast<unsigned int *>(a);
    return __uint_as_float(::cc_cpu::atomic_rmw(bits, [v](unsigned int) { return __float_as_uint(v); }));
}

// --- fences, clocks, traps -----------------------------------------------------
inline void __threadfence() { ::cc_cpu::thread_fence(); }
inline void __threadfence_block() { ::cc_cpu::thread_fence(); }
inline void __threadfence_system() { ::cc_cpu::thread_fence(); }
inline long long clock64()
{
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}
inline void __nanosleep(unsigned int ns)
{
    const timespec ts{0, static_cast<long>(ns)};
    nanosleep(&ts, nullptr);
}
[[noreturn]] inline void __trap(const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    ::cc_cpu::fault(file, line, "__trap()");
}
[[noreturn]] inline void __brkpt(const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    ::cc_cpu::fault(file, line, "__brkpt()");
}

#endif
