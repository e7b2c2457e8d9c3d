// Vector accesses of V consecutive elements of T as one load or store,
// converted to and from f32 (element.cuh's traits, element by element):
//   float  x 4: float4          (16 bytes)
//   16-bit x 8: uint4           (16 bytes)
//   16-bit x 4: uint2           (8 bytes: a row of 4 beside a float4 row,
//                                as kernels/backward.cu's 4-wide paths)
//   16-bit x 2: unsigned int    (4 bytes: a pair, for rows that are even
//                                but not a multiple of 8)
//   any    x 1: T
// The 16-bit elements travel as their bit patterns inside the integer word
// (element k in bits 16k.., little-endian as the GPU and the CPU layer
// store them), so no type punning through memory is needed and nvcc keeps
// everything in registers. The caller checks the alignment (cc_aligned16,
// or 4 bytes for pairs) and that V divides the row. Included by .cu files.
#ifndef CONDCONV_KERNELS_ELEMENT_VEC_CUH
#define CONDCONV_KERNELS_ELEMENT_VEC_CUH

#include <type_traits>

#include "element.cuh"

__device__ __forceinline__ unsigned int cc_bits(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned int cc_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

template <typename T>
__device__ __forceinline__ float cc_bits_to_float(unsigned int b);
template <>
__device__ __forceinline__ float cc_bits_to_float<__half>(unsigned int b)
{
    return __half2float(__ushort_as_half((unsigned short)b));
}
template <>
__device__ __forceinline__ float cc_bits_to_float<__nv_bfloat16>(unsigned int b)
{
    return __bfloat162float(__ushort_as_bfloat16((unsigned short)b));
}

// The register type of one access.
template <typename T, int V>
struct cc_vec_raw;
template <typename T>
struct cc_vec_raw<T, 1> {
    using type = T;
};
template <>
struct cc_vec_raw<float, 4> {
    using type = float4;
};
template <typename T>
struct cc_vec_raw<T, 2> {
    static_assert(sizeof(T) == 2, "pairs are for 16-bit elements");
    using type = unsigned int;
};
template <typename T>
struct cc_vec_raw<T, 4> {
    static_assert(sizeof(T) == 2, "4-wide 16-bit accesses are 8 bytes; float x 4 is float4");
    using type = uint2;
};
template <typename T>
struct cc_vec_raw<T, 8> {
    static_assert(sizeof(T) == 2, "8-wide accesses are for 16-bit elements");
    using type = uint4;
};

template <typename T, int V>
__device__ __forceinline__ void cc_vec_unpack(const typename cc_vec_raw<T, V>::type &r, float (&f)[V])
{
    if constexpr (V == 1) {
        f[0] = cc_to_float(r);
    } else if constexpr (std::is_same<T, float>::value) {
        f[0] = r.x;
        f[1] = r.y;
        f[2] = r.z;
        f[3] = r.w;
    } else if constexpr (V == 2) {
        f[0] = cc_bits_to_float<T>(r & 0xffffu);
        f[1] = cc_bits_to_float<T>(r >> 16);
    } else if constexpr (V == 4) {
        const unsigned int w[2] = {r.x, r.y};
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            f[2 * k] = cc_bits_to_float<T>(w[k] & 0xffffu);
            f[2 * k + 1] = cc_bits_to_float<T>(w[k] >> 16);
        }
    } else {
        const unsigned int w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            f[2 * k] = cc_bits_to_float<T>(w[k] & 0xffffu);
            f[2 * k + 1] = cc_bits_to_float<T>(w[k] >> 16);
        }
    }
}

// Rounds each value once (cc_from_float) into the register type.
template <typename T, int V>
__device__ __forceinline__ typename cc_vec_raw<T, V>::type cc_vec_pack(const float (&f)[V])
{
    if constexpr (V == 1) {
        return cc_from_float<T>(f[0]);
    } else if constexpr (std::is_same<T, float>::value) {
        return make_float4(f[0], f[1], f[2], f[3]);
    } else if constexpr (V == 2) {
        return cc_bits(cc_from_float<T>(f[0])) | cc_bits(cc_from_float<T>(f[1])) << 16;
    } else if constexpr (V == 4) {
        return make_uint2(cc_bits(cc_from_float<T>(f[0])) | cc_bits(cc_from_float<T>(f[1])) << 16,
                          cc_bits(cc_from_float<T>(f[2])) | cc_bits(cc_from_float<T>(f[3])) << 16);
    } else {
        unsigned int w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
            w[k] = cc_bits(cc_from_float<T>(f[2 * k])) | cc_bits(cc_from_float<T>(f[2 * k + 1])) << 16;
        return make_uint4(w[0], w[1], w[2], w[3]);
    }
}

// V elements at p (element offset, not vector offset), read-only data: __ldg.
template <typename T, int V>
__device__ __forceinline__ void cc_vec_ldg(const T *p, float (&f)[V])
{
    using R = typename cc_vec_raw<T, V>::type;
    cc_vec_unpack<T, V>(__ldg(reinterpret_cast<const R *>(p)), f);
}

// V elements at p through an ordinary load (data the kernel may also write).
template <typename T, int V>
__device__ __forceinline__ void cc_vec_load(const T *p, float (&f)[V])
{
    using R = typename cc_vec_raw<T, V>::type;
    const R r = *reinterpret_cast<const R *>(p);
    cc_vec_unpack<T, V>(r, f);
}

template <typename T, int V>
__device__ __forceinline__ void cc_vec_store(T *p, const float (&f)[V])
{
    using R = typename cc_vec_raw<T, V>::type;
    *reinterpret_cast<R *>(p) = cc_vec_pack<T, V>(f);
}

#endif
