// CUDA's vector types (float4, int2, ...) for the CPU execution layer, in
// place of the toolkit's vector_types.h (whose include guard this defines):
// the same names, members, sizes and alignments, but every copy of a type
// that a GPU loads or stores in one wide access (float2, float4, int4, ...)
// checks that the memory is aligned as that access needs, and stops the
// process naming the call site when it is not: on a GPU a misaligned
// 16-byte load or store is a fault (cudaErrorMisalignedAddress), on a CPU
// it just works (or crashes without saying where), and UBSan's alignment
// check does not see whole-struct copies. The types are therefore not
// trivially copyable here; kernels must not depend on that trait.
//
// Must come before any toolkit header: the layer's generated translation
// units include it first, and device.h checks that it did.
#ifndef CC_CPU_VECTOR_TYPES_H
#define CC_CPU_VECTOR_TYPES_H

#ifdef __VECTOR_TYPES_H__
#error "cuda_cpu/vector_types.h must be included before any CUDA header"
#endif
#define __VECTOR_TYPES_H__

#include <cstddef>
#include <cstdint>

// Used by the toolkit's vector_functions.h around the deprecated 4-vectors of
// 8-byte elements; not deprecated here.
#ifndef __NV_SILENCE_DEPRECATION_BEGIN
#define __NV_SILENCE_DEPRECATION_BEGIN
#define __NV_SILENCE_DEPRECATION_END
#endif
#ifndef __NV_SILENCE_HOST_DEPRECATION_BEGIN
#define __NV_SILENCE_HOST_DEPRECATION_BEGIN
#define __NV_SILENCE_HOST_DEPRECATION_END
#endif

namespace cc_cpu {
// Stops the process: a `type` was loaded or stored at a misaligned address
// (engine.cpp). `file` is NULL for a store (the stack trace says where).
[[noreturn]] void misaligned_vector(const void *p, size_t align, const char *type, const char *file, int line);

inline void check_vector(const void *p, size_t align, const char *type, const char *file, int line)
{
    if ((reinterpret_cast<uintptr_t>(p) & (align - 1)) != 0) misaligned_vector(p, align, type, file, line);
}
} // namespace cc_cpu

// Scalar-accessed types (1 and 3 components): plain structs, as in CUDA.
#define CC_CPU_VEC1(name, T)                                                                                           \
    struct name {                                                                                                      \
        T x;                                                                                                           \
    };
#define CC_CPU_VEC3(name, T)                                                                                           \
    struct name {                                                                                                      \
        T x, y, z;                                                                                                     \
    };

// Wide-accessed types: copying one from memory (a load) or assigning one to
// memory (a store) checks the alignment. The extra defaulted parameters of
// the copy constructor record where the copy was made.
#define CC_CPU_VEC2(name, T, A)                                                                                        \
    struct alignas(A) name {                                                                                           \
        T x, y;                                                                                                        \
        name() = default;                                                                                              \
        constexpr name(T a, T b) : x(a), y(b) {}                                                                       \
        name(const name &o, const char *file = __builtin_FILE(), int line = __builtin_LINE())                          \
        {                                                                                                              \
            ::cc_cpu::check_vector(&o, A, #name, file, line);                                                          \
            x = o.x;                                                                                                   \
            y = o.y;                                                                                                   \
        }                                                                                                              \
        name &operator=(const name &o)                                                                                 \
        {                                                                                                              \
            ::cc_cpu::check_vector(this, A, #name, nullptr, 0);                                                        \
            ::cc_cpu::check_vector(&o, A, #name, nullptr, 0);                                                          \
            x = o.x;                                                                                                   \
            y = o.y;                                                                                                   \
            return *this;                                                                                              \
        }                                                                                                              \
    };
#define CC_CPU_VEC4(name, T, A)                                                                                        \
    struct alignas(A) name {                                                                                           \
        T x, y, z, w;                                                                                                  \
        name() = default;                                                                                              \
        constexpr name(T a, T b, T c, T d) : x(a), y(b), z(c), w(d) {}                                                 \
        name(const name &o, const char *file = __builtin_FILE(), int line = __builtin_LINE())                          \
        {                                                                                                              \
            ::cc_cpu::check_vector(&o, A, #name, file, line);                                                          \
            x = o.x;                                                                                                   \
            y = o.y;                                                                                                   \
            z = o.z;                                                                                                   \
            w = o.w;                                                                                                   \
        }                                                                                                              \
        name &operator=(const name &o)                                                                                 \
        {                                                                                                              \
            ::cc_cpu::check_vector(this, A, #name, nullptr, 0);                                                        \
            ::cc_cpu::check_vector(&o, A, #name, nullptr, 0);                                                          \
            x = o.x;                                                                                                   \
            y = o.y;                                                                                                   \
            z = o.z;                                                                                                   \
            w = o.w;                                                                                                   \
            return *this;                                                                                              \
        }                                                                                                              \
    };

// Alignments as the toolkit's vector_types.h declares them.
CC_CPU_VEC1(char1, signed char)
CC_CPU_VEC1(uchar1, unsigned char)
CC_CPU_VEC2(char2, signed char, 2)
CC_CPU_VEC2(uchar2, unsigned char, 2)
CC_CPU_VEC3(char3, signed char)
CC_CPU_VEC3(uchar3, unsigned char)
CC_CPU_VEC4(char4, signed char, 4)
CC_CPU_VEC4(uchar4, unsigned char, 4)
CC_CPU_VEC1(short1, short)
CC_CPU_VEC1(ushort1, unsigned short)
CC_CPU_VEC2(short2, short, 4)
CC_CPU_VEC2(ushort2, unsigned short, 4)
CC_CPU_VEC3(short3, short)
CC_CPU_VEC3(ushort3, unsigned short)
CC_CPU_VEC4(short4, short, 8)
CC_CPU_VEC4(ushort4, unsigned short, 8)
CC_CPU_VEC1(int1, int)
CC_CPU_VEC1(uint1, unsigned int)
CC_CPU_VEC2(int2, int, 8)
CC_CPU_VEC2(uint2, unsigned int, 8)
CC_CPU_VEC3(int3, int)
CC_CPU_VEC3(uint3, unsigned int)
CC_CPU_VEC4(int4, int, 16)
CC_CPU_VEC4(uint4, unsigned int, 16)
CC_CPU_VEC1(long1, long int)
CC_CPU_VEC1(ulong1, unsigned long)
CC_CPU_VEC2(long2, long int, 2 * sizeof(long int))
CC_CPU_VEC2(ulong2, unsigned long int, 2 * sizeof(unsigned long int))
CC_CPU_VEC3(long3, long int)
CC_CPU_VEC3(ulong3, unsigned long int)
CC_CPU_VEC4(long4, long int, 16)
CC_CPU_VEC4(ulong4, unsigned long int, 16)
CC_CPU_VEC4(long4_16a, long int, 16)
CC_CPU_VEC4(ulong4_16a, unsigned long int, 16)
CC_CPU_VEC4(long4_32a, long int, 32)
CC_CPU_VEC4(ulong4_32a, unsigned long int, 32)
CC_CPU_VEC1(float1, float)
CC_CPU_VEC2(float2, float, 8)
CC_CPU_VEC3(float3, float)
CC_CPU_VEC4(float4, float, 16)
CC_CPU_VEC1(longlong1, long long int)
CC_CPU_VEC1(ulonglong1, unsigned long long int)
CC_CPU_VEC2(longlong2, long long int, 16)
CC_CPU_VEC2(ulonglong2, unsigned long long int, 16)
CC_CPU_VEC3(longlong3, long long int)
CC_CPU_VEC3(ulonglong3, unsigned long long int)
CC_CPU_VEC4(longlong4, long long int, 16)
CC_CPU_VEC4(ulonglong4, unsigned long long int, 16)
CC_CPU_VEC4(longlong4_16a, long long int, 16)
CC_CPU_VEC4(ulonglong4_16a, unsigned long long int, 16)
CC_CPU_VEC4(longlong4_32a, long long int, 32)
CC_CPU_VEC4(ulonglong4_32a, unsigned long long int, 32)
CC_CPU_VEC1(double1, double)
CC_CPU_VEC2(double2, double, 16)
CC_CPU_VEC3(double3, double)
CC_CPU_VEC4(double4, double, 16)
CC_CPU_VEC4(double4_16a, double, 16)
CC_CPU_VEC4(double4_32a, double, 32)
#undef CC_CPU_VEC1
#undef CC_CPU_VEC2
#undef CC_CPU_VEC3
#undef CC_CPU_VEC4

// As the toolkit defines it.
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3(void) const { return uint3{x, y, z}; }
};

#endif
