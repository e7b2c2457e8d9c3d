// nvcuda::wmma for kernels compiled as C++ by the CPU execution layer, so
// that tensor-core kernels run on the CPU like the others. Included by
// device.h (the toolkit's <mma.h> is empty for a host compiler).
//
// A fragment is spread over the 32 lanes of a warp, num_elements per lane,
// in an unspecified mapping: here element i of lane L is matrix element
// ((i * 32 + L) * 37) mod (rows * cols), row-major, deliberately unlike the
// GPU's, so a kernel that assumes one mapping fails on one of the two. fill
// and element-wise loops over x[] work in any mapping, as they must.
// load/store/mma are warp-collective: every lane of the warp must call them
// with the same pointer, leading dimension and layout (checked), the pointer
// 32-byte aligned and ldm a multiple of 16 bytes (checked, as a GPU faults).
// mma_sync sums each product in double and rounds once; a GPU's tensor core
// rounds differently, so compare with a tolerance. A tf32 operand must hold
// TF32 values (what __float_to_tf32 returns: the low 13 mantissa bits zero):
// the real API wants tf32 fragments filled with such values, and a GPU's
// tensor core reads only the top 19 bits of a float, so a kernel that forgets
// to round would silently truncate there. mma_sync stops the run on any other
// value instead of truncating it here.
#ifndef CC_CPU_WMMA_H
#define CC_CPU_WMMA_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "engine.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {
};
struct matrix_b {
};
struct accumulator {
};
struct row_major {
};
struct col_major {
};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {
};
} // namespace precision

namespace detail {
template <typename Use, int M, int N, int K>
struct dims;
template <int M, int N, int K>
struct dims<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct dims<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct dims<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};
template <typename T>
struct storage {
    using type = T;
};
template <>
struct storage<precision::tf32> {
    using type = float;
};
// The shapes and types CUDA's WMMA offers for f16, bf16, tf32 and f64.
template <int M, int N, int K, typename T>
constexpr bool supported()
{
    if (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, float>)
        return (M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16) ||
               (std::is_same_v<T, float> && M == 16 && N == 16 && K == 8);
    if (std::is_same_v<T, precision::tf32>) return M == 16 && N == 16 && K == 8;
    if (std::is_same_v<T, double>) return M == 8 && N == 8 && K == 4;
    return false;
}
inline double to_double(float v) { return v; }
inline double to_double(double v) { return v; }
inline double to_double(__half v) { return __half2float(v); }
inline double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
inline T from_double(double v)
{
    if constexpr (std::is_same_v<T, __half>)
        return __double2half(v);
    else if constexpr (std::is_same_v<T, __nv_bfloat16>)
        return __double2bfloat16(v);
    else
        return static_cast<T>(v);
}
// A tf32 operand value: what a tensor core reads is the top 19 bits of the
// float; anything in the low 13 (of a finite value) was not rounded to TF32.
inline bool tf32_representable(float v)
{
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    return (u & 0x1fffu) == 0 || (u & 0x7f800000u) == 0x7f800000u;
}
// Every lane checks its own share of a tf32 operand before the exchange.
template <typename F>
inline void check_tf32(const F &frag, const char *operand)
{
    for (int i = 0; i < F::num_elements; ++i)
        if (!tf32_representable(frag.x[i]))
            cc_cpu::fault(__FILE__, __LINE__,
                          "wmma::mma_sync: precision::tf32 %s fragment holds %.9g (element %d of lane %u), which is "
                          "not a TF32 value: round operands with wmma::__float_to_tf32 when they are loaded (a tensor "
                          "core reads only the top 19 bits of a float)",
                          operand, static_cast<double>(frag.x[i]), i, cc_cpu::lane_id());
}
} // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment
{
    static_assert(detail::supported<M, N, K, T>(), "wmma: this shape and type are not a CUDA WMMA fragment");

  public:
    using use_type = Use;
    using element_type = typename detail::storage<T>::type;
    static constexpr int rows = detail::dims<Use, M, N, K>::rows;
    static constexpr int cols = detail::dims<Use, M, N, K>::cols;
    static constexpr int num_elements = rows * cols / 32;
    element_type x[num_elements];

    // Matrix element (row-major index) held as x[i] by `lane`.
    static constexpr int index(int lane, int i) { return ((i * 32 + lane) * 37) & (rows * cols - 1); }
};

namespace detail {
struct warp_args {
    const void *ptr;
    unsigned ldm;
    int layout;
};
// Every lane must pass the same arguments, with the alignment a GPU needs.
inline void check_uniform(const void *ptr, unsigned ldm, int layout, size_t element_bytes, const char *what)
{
    const warp_args mine = {ptr, ldm, layout};
    warp_args all[32];
    cc_cpu::warp_collective(cc_cpu::warp_gather, 0xffffffffu, &mine, sizeof mine, all, 0, 32, __FILE__, __LINE__);
    for (const warp_args &a : all)
        if (a.ptr != ptr || a.ldm != ldm || a.layout != layout)
            cc_cpu::fault(__FILE__, __LINE__, "wmma::%s: lanes of the warp pass different pointers, ldm or layout",
                          what);
    if ((reinterpret_cast<uintptr_t>(ptr) & 31u) != 0)
        cc_cpu::fault(__FILE__, __LINE__, "wmma::%s: pointer %p is not 32-byte aligned", what, ptr);
    if ((ldm * element_bytes) % 16 != 0)
        cc_cpu::fault(__FILE__, __LINE__, "wmma::%s: ldm %u is not a multiple of 16 bytes", what, ldm);
}
// Every lane's x[] of a fragment, gathered, as the whole matrix (row-major).
template <typename F>
inline void gather_matrix(const F &frag, double *out)
{
    static_assert(sizeof(frag.x) <= cc_cpu::kWarpGatherBytes, "wmma fragment share too large for the exchange");
    unsigned char all[32][sizeof(frag.x)];
    cc_cpu::warp_collective(cc_cpu::warp_gather, 0xffffffffu, frag.x, sizeof(frag.x), all, 0, 32, __FILE__, __LINE__);
    for (int lane = 0; lane < 32; ++lane) {
        typename F::element_type x[F::num_elements];
        std::memcpy(x, all[lane], sizeof x);
        for (int i = 0; i < F::num_elements; ++i) out[F::index(lane, i)] = to_double(x[i]);
    }
}
template <typename F, typename T>
inline void load(F &frag, const T *ptr, unsigned ldm, int layout, const char *what)
{
    check_uniform(ptr, ldm, layout, sizeof(T), what);
    const int lane = static_cast<int>(cc_cpu::lane_id());
    for (int i = 0; i < F::num_elements; ++i) {
        const int e = F::index(lane, i), r = e / F::cols, c = e % F::cols;
        const size_t at = layout == mem_row_major ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r;
        frag.x[i] = static_cast<typename F::element_type>(ptr[at]);
    }
}
} // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout> &frag,
                          typename fragment<Use, M, N, K, T, Layout>::element_type v)
{
    for (auto &x : frag.x) x = v;
}

// matrix_a / matrix_b: the layout is part of the fragment's type.
template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout> &frag, const P *ptr, unsigned ldm)
{
    static_assert(!std::is_same_v<Use, accumulator>, "wmma: an accumulator load takes a layout_t");
    detail::load(frag, ptr, ldm, std::is_same_v<Layout, col_major> ? mem_col_major : mem_row_major, "load_matrix_sync");
}
template <int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T> &frag, const P *ptr, unsigned ldm, layout_t layout)
{
    detail::load(frag, ptr, ldm, layout, "load_matrix_sync");
}

template <int M, int N, int K, typename T, typename P>
inline void store_matrix_sync(P *ptr, const fragment<accumulator, M, N, K, T> &frag, unsigned ldm, layout_t layout)
{
    using F = fragment<accumulator, M, N, K, T>;
    detail::check_uniform(ptr, ldm, layout, sizeof(P), "store_matrix_sync");
    const int lane = static_cast<int>(cc_cpu::lane_id());
    for (int i = 0; i < F::num_elements; ++i) {
        const int e = F::index(lane, i), r = e / F::cols, c = e % F::cols;
        const size_t at = layout == mem_row_major ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r;
        ptr[at] = static_cast<P>(frag.x[i]);
    }
}

// d = a * b + c over the whole warp.
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC, typename TD>
inline void mma_sync(fragment<accumulator, M, N, K, TD> &d, const fragment<matrix_a, M, N, K, TA, LA> &a,
                     const fragment<matrix_b, M, N, K, TB, LB> &b, const fragment<accumulator, M, N, K, TC> &c,
                     bool satf = false)
{
    (void)satf;
    if constexpr (std::is_same_v<TA, precision::tf32>) detail::check_tf32(a, "matrix_a");
    if constexpr (std::is_same_v<TB, precision::tf32>) detail::check_tf32(b, "matrix_b");
    double am[M * K], bm[K * N], cm[M * N];
    detail::gather_matrix(a, am);
    detail::gather_matrix(b, bm);
    detail::gather_matrix(c, cm);
    using F = fragment<accumulator, M, N, K, TD>;
    const int lane = static_cast<int>(cc_cpu::lane_id());
    for (int i = 0; i < F::num_elements; ++i) {
        const int e = F::index(lane, i), r = e / N, col = e % N;
        double s = cm[e];
        for (int k = 0; k < K; ++k) s += am[r * K + k] * bm[k * N + col];
        d.x[i] = detail::from_double<typename F::element_type>(s);
    }
}

inline float __float_to_tf32(float x) { return ::__float_to_tf32(x); }

} // namespace wmma
} // namespace nvcuda

#endif
