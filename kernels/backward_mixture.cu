// The backward mixture algorithm's kernels (issue 20; backward_mixture.h
// has the contracts, host/backward_plan.h how the algorithm runs).
//
// The stacked tensors. Stacked channel (g, e, c') is (g * E + e) * cpg + c'
// (cpg = Cout / groups), dy's channel (g, c') is g * cpg + c'. In either
// layout, one sample's dy is a sequence of segments of S elements (NCHW:
// a group's cpg planes, S = cpg * plane; NHWC: a pixel's group of cpg
// channels, S = cpg), and the same sample's z or dy_mix is that sequence
// with every segment repeated E times, expert by expert:
//   dy element j of sample b (j < L = Cout * plane, dy's own order)
//   <-> stacked element (q * E + e) * S + r of sample b, q = j / S, r = j % S
// for expert e. All three kernels below index through this one map.
//
// Determinism: no float atomics anywhere. scale_dy and filters write each
// output once (no sums); d_alpha is, per (sample, expert), a fixed tree:
// one thread's FMA chain over its positions of a split in order, the
// block's threads in a fixed two-level tree, then the splits in split
// order by a second kernel (and the bias term's xor-shuffle warp sum). None of these orders depends on the
// grid caps, the block order or timing, only on the sizes and on whether
// the 16-byte path applies (the pointers' alignment), so the same call
// gives the same bits every time.
//
// The kernels, by cost on an H200 (all memory bound; the two cuDNN static
// convolutions around them cost far more):
//
//  1. scale_dy_kernel: dy_mix = alpha * dy in the stacked order. Writes
//     E x |dy| (e.g. N = 256, Cout = 256, 28 x 28, E = 8, f16: 822 MB,
//     ~0.2 ms at ~4.5 TB/s) and reads dy E times, but the E reads of a
//     segment are E consecutive output segments apart, i.e. L2 hits for all
//     but the first: the output stream is the cost. One thread per output
//     vector (16 bytes: 4 f32 or 8 halves, where the rows allow it and the
//     pointers are aligned), grid-stride, consecutive threads on consecutive
//     outputs (coalesced stores). Two 64-bit divisions per vector (hidden
//     behind the 16-byte stores: the kernel is bound by DRAM writes).
//  2. dalpha_partial_kernel: d_alpha[b][e] = <z_be, dy_b>, an N x E set of
//     dot products of length L = Cout x plane (up to thousands x 12544):
//     split over L. A block owns one sample, a tile of 8 experts and one
//     split of L; each thread reads a dy vector once and the 8 experts' z
//     vectors at the same position (up to 9 independent 16-byte loads in
//     flight), 8 FMA chains. The expert tiles of one (sample, split) are
//     adjacent block indices, so they run together and all but one read dy
//     from L2: z (E x |dy|) is read once from DRAM and dominates, like
//     scale_dy's write. The split count targets ~1024 blocks (a few waves of
//     132 SMs) and at least 2048 positions (x up to 8 experts) per block, so
//     scratch stays small (N x E x ceil(1024 / (N x ceil(E / 8))) floats).
//     The block's sum through shared memory in a fixed tree (8 parts of 32
//     threads per expert, then the parts in order), into its split's
//     partial [split][N][E] in scratch.
//  3. dalpha_finish_kernel: one warp per (sample, expert): the partials in
//     split order (lane 0), plus the bias term sum_c bias[e][c] dysum[b][c]
//     (the lanes' chains over c, then a warp xor tree; N x E x Cout FMAs,
//     tiny). A second launch rather than a last-block hand-off: one tiny
//     launch, no counters, fences or zeroed buffers.
//  4. filters_kernel: the stacked filter gradient [g][E][cpg][...] into
//     d_experts [E][Cout][Cin/g][kh][kw] f32: a permutation of whole
//     filters (NCHW filters: each filter's Cin/g x kh x kw block contiguous
//     in both) or, for cuDNN's NHWC filter order [..][kh][kw][Cin/g], a
//     transpose of each filter. One thread per output element: coalesced
//     stores, reads contiguous (NCHW) or strided by Cin/g within one filter
//     (NHWC); the whole tensor is E x |w|, megabytes, so a shared-memory
//     transpose is not worth its code.
//
// Element types: z, dy, dy_mix and the filter gradient in T (float, __half,
// __nv_bfloat16), converted exactly to f32 at the load; alpha, bias, dysum,
// d_alpha, d_experts f32; all math f32, a product rounded once at the store.
// Indices into the tensors are long long (N x E x Cout x plane can pass
// 2^31); the launchers refuse sizes whose element counts pass 2^61.
//
// Validated on the CPU execution layer by
// tests/cuda_cpu/test_emu_backward_mixture.c.
#include <limits.h>

#include "backward_mixture.h"
#include "element_vec.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Largest E (CONDCONV_MAX_EXPERTS; the public header is C and not included here).
constexpr int kMaxExperts = 128;
// Largest element count of any tensor here: long long indices, byte offsets below 2^63.
constexpr long long kMaxElems = 1LL << 61;

// Elements of T in one 16-byte access (4 f32, 8 halves).
template <typename T>
constexpr int vec16()
{
    return cc_vec16<T>::count;
}

template <typename T>
static inline bool aligned16_elems(const void *p)
{
    return cc_aligned16(p);
}

// ---------------------------------------------------------------------------
// 1. dy_mix[b][(g, e, c')][p] = round(alpha[b][e] * dy[b][(g, c')][p]).
//
// u: the output vector (V elements, first element i = u * V). NCHW: i =
// (b * EC + oc) * plane + p, the vector inside one plane (plane % V == 0);
// NHWC: i = (b * plane + p) * EC + oc, the vector inside one (g, e) run of
// cpg channels (cpg % V == 0). ec = E * Cout < 2^31 (the launcher checks).
template <typename T, int V, bool kNhwc>
__global__ void __launch_bounds__(kThreads)
    bwd_mix_scale_dy_kernel(const T *__restrict__ dy, const float *__restrict__ alpha, T *__restrict__ dy_mix,
                            long long vecs, int cout, int cpg, int e_count, long long plane)
{
    const int ec = e_count * cout;
    for (long long u = (long long)blockIdx.x * kThreads + threadIdx.x; u < vecs; u += (long long)gridDim.x * kThreads) {
        const long long i = u * V;
        long long b, src;
        int oc;
        if (kNhwc) {
            const long long pix = i / ec; // b * plane + p
            oc = (int)(i - pix * ec);
            b = pix / plane;
            src = pix * cout;
        } else {
            const long long row = i / plane; // b * EC + oc
            const long long p = i - row * plane;
            b = row / ec;
            oc = (int)(row - b * ec);
            src = b * cout * plane + p;
        }
        const int ge = oc / cpg, c = oc - ge * cpg; // ge = g * E + e
        const int g = ge / e_count, q = ge - g * e_count;
        const long long ch = (long long)g * cpg + c;
        src += kNhwc ? ch : ch * plane;
        const float a = __ldg(alpha + b * e_count + q);
        float v[V];
        cc_vec_ldg<T, V>(dy + src, v);
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = a * v[k];
        cc_vec_store<T, V>(dy_mix + i, v);
    }
}

// ---------------------------------------------------------------------------
// 2. d_alpha partials: partial[split][b][e] = sum over the split's positions
// j of z[b][(j / S * E + e) * S + j % S] * dy[b][j].

constexpr int kTileE = 8;                  // experts per block
constexpr long long kTargetBlocks = 1024;  // a few waves of an H200's 132 SMs
constexpr long long kMinSplitElems = 2048; // positions per block at least (x up to 8 experts)

// Chunks of positions a multiple of 8 (every vector width). A function of
// the sizes only (cc_bwd_mixture_dalpha_scratch_elems sizes scratch with it
// before any pointer exists; layout, groups and dtype do not enter, so
// neither does the summation order's dependence on them).
static cc_split_k dalpha_splits(long long len, int n, int e)
{
    const long long tiles = (long long)n * ((e + kTileE - 1) / kTileE);
    return cc_split_k_for(len, tiles, kTargetBlocks, kMinSplitElems, 8);
}

// Blocks: (sample, expert tile) along x, the expert tile fastest; the split
// along y. len % V == 0 and seg % V == 0 on the vector path, so a vector
// never crosses a segment and every split starts on a vector (chunk % 8 == 0).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    bwd_mix_dalpha_partial_kernel(const T *__restrict__ z, const T *__restrict__ dy, float *__restrict__ partial,
                                  long long len, long long seg, long long chunk, int n, int e_count, int e_tiles)
{
    const int b = (int)(blockIdx.x / (unsigned)e_tiles);
    const int e0 = (int)(blockIdx.x % (unsigned)e_tiles) * kTileE;
    const int ne = min(kTileE, e_count - e0);
    const long long j_begin = (long long)blockIdx.y * chunk;
    const long long j_end = min(len, j_begin + chunk);
    const T *dyb = dy + (size_t)b * (size_t)len;
    const T *zb = z + (size_t)b * (size_t)e_count * (size_t)len;

    float acc[kTileE];
#pragma unroll
    for (int q = 0; q < kTileE; ++q) acc[q] = 0.0f;
    for (long long j = j_begin + (long long)threadIdx.x * V; j < j_end; j += (long long)kThreads * V) {
        float d[V];
        cc_vec_ldg<T, V>(dyb + j, d);
        const long long s = j / seg, r = j - s * seg;
        const T *zs = zb + (size_t)(s * e_count + e0) * (size_t)seg + (size_t)r;
#pragma unroll
        for (int q = 0; q < kTileE; ++q) {
            if (q >= ne) break;
            float x[V];
            cc_vec_ldg<T, V>(zs + (size_t)q * (size_t)seg, x);
#pragma unroll
            for (int k = 0; k < V; ++k) acc[q] = fmaf(x[k], d[k], acc[q]);
        }
    }

    // The block's sums through shared memory (not 8 warp sums: 40 shuffles
    // a thread): every thread writes its 8 sums, 8 threads per expert each
    // add 32 of the 256 (thread p of expert q: threads p, p + 8, ... in
    // order; the row stride of 264 puts a warp's 32 reads on 32 banks), then
    // one thread per expert adds the 8 parts in order.
    constexpr int kParts = 8;
    __shared__ float red[kTileE][kThreads + 8];
    __shared__ float part[kTileE][kParts];
#pragma unroll
    for (int q = 0; q < kTileE; ++q) red[q][threadIdx.x] = acc[q];
    __syncthreads(); // every thread's sums are in red
    if ((int)threadIdx.x < kTileE * kParts) {
        const int q = (int)threadIdx.x / kParts, p = (int)threadIdx.x % kParts;
        float s = 0.0f;
        for (int i = 0; i < kThreads / kParts; ++i) s += red[q][p + kParts * i];
        part[q][p] = s;
    }
    __syncthreads(); // the parts are in place
    if ((int)threadIdx.x < ne) {
        float s = 0.0f;
        for (int p = 0; p < kParts; ++p) s += part[threadIdx.x][p];
        partial[((size_t)blockIdx.y * (size_t)n + (size_t)b) * (size_t)e_count + (size_t)(e0 + (int)threadIdx.x)] = s;
    }
}

// 3. d_alpha[b][e] = the partials in split order + the bias term
// (cc_dalpha_finish, common.cuh: one warp per (b, e)).
__global__ void __launch_bounds__(kThreads)
    bwd_mix_dalpha_finish_kernel(const float *__restrict__ partial, int splits, const float *__restrict__ bias,
                                 const float *__restrict__ dysum, float *__restrict__ d_alpha, int n, int e_count,
                                 int cout)
{
    cc_dalpha_finish(partial, splits, bias, dysum, d_alpha, n, e_count, cout);
}

// ---------------------------------------------------------------------------
// 4. d_experts[e][g * cpg + c'][ci][y][x] = dw[g][e][c'][ci][y][x] (kNhwc:
// dw[g][e][c'][y][x][ci]). khw = kh * kw, k_elems = Cin/g * khw.
template <typename T, bool kNhwc>
__global__ void __launch_bounds__(kThreads)
    bwd_mix_filters_kernel(const T *__restrict__ dw, float *__restrict__ d_experts, long long total, int e_count,
                           int cout, int cpg, int cin_pg, int khw)
{
    const long long k_elems = (long long)cin_pg * khw;
    for (long long i = (long long)blockIdx.x * kThreads + threadIdx.x; i < total;
         i += (long long)gridDim.x * kThreads) {
        const long long f = i / k_elems, k = i - f * k_elems; // f = e * Cout + co
        const int q = (int)(f / cout), co = (int)(f - (long long)q * cout);
        const int g = co / cpg, c = co - g * cpg;
        const long long src_f = ((long long)g * e_count + q) * cpg + c;
        long long src_k = k;
        if (kNhwc) {
            const long long ci = k / khw, s = k - ci * khw;
            src_k = s * cin_pg + ci;
        }
        d_experts[i] = cc_load(dw + src_f * k_elems + src_k);
    }
}

// ---------------------------------------------------------------------------
// Checks shared by the launchers.

// a * b <= limit for a, b > 0, without overflow.
static bool mul_le(long long a, long long b, long long limit) { return a <= limit / b; }

// The activation sizes of scale_dy and d_alpha: positive, E <= 128, groups
// dividing Cout, E x Cout an int (the stacked channel index), N x E x Cout x
// plane <= 2^61, and d_alpha's grid ((sample, expert tile) along x < 2^31).
static bool mix_sizes_ok(int n, int cout, int groups, int e, long long plane)
{
    if (n <= 0 || cout <= 0 || groups <= 0 || e <= 0 || e > kMaxExperts || plane <= 0 || cout % groups != 0)
        return false;
    const long long ec = (long long)e * cout;
    if (ec > INT_MAX || !mul_le(ec, plane, kMaxElems) || !mul_le(ec * plane, n, kMaxElems)) return false;
    return (long long)n * ((e + kTileE - 1) / kTileE) <= 0x7fffffffLL;
}

static bool layout_ok(int layout) { return layout == CC_LAYOUT_NCHW || layout == CC_LAYOUT_NHWC; }

} // namespace

// ---------------------------------------------------------------------------
// Launchers.

extern "C" cudaError_t cc_launch_bwd_mixture_scale_dy(int dtype, int layout, const void *dy, const float *alpha,
                                                      void *dy_mix, int n, int cout, int groups, int e, long long plane,
                                                      cudaStream_t stream)
{
    if (cc_element_size(dtype) == 0 || !layout_ok(layout) || !mix_sizes_ok(n, cout, groups, e, plane) || dy == NULL ||
        alpha == NULL || dy_mix == NULL)
        return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        constexpr int V = vec16<T>();
        const T *src = static_cast<const T *>(dy);
        T *dst = static_cast<T *>(dy_mix);
        const int cpg = cout / groups;
        const long long total = (long long)n * e * cout * plane;
        const bool nhwc = layout == CC_LAYOUT_NHWC;
        // 16-byte vectors where every vector stays inside one source row:
        // a plane (NCHW) or a (g, e) run of channels (NHWC).
        const bool vec = (nhwc ? cpg % V == 0 : plane % V == 0) && aligned16_elems<T>(dy) && aligned16_elems<T>(dy_mix);
        const long long vecs = vec ? total / V : total;
        const dim3 grid(cc_grid_1d(vecs, kThreads, 1u << 20)), block(kThreads);
        if (nhwc) {
            if (vec)
                return cc_launch(bwd_mix_scale_dy_kernel<T, V, true>, grid, block, 0, stream, src, alpha, dst, vecs,
                                 cout, cpg, e, plane);
            return cc_launch(bwd_mix_scale_dy_kernel<T, 1, true>, grid, block, 0, stream, src, alpha, dst, vecs, cout,
                             cpg, e, plane);
        }
        if (vec)
            return cc_launch(bwd_mix_scale_dy_kernel<T, V, false>, grid, block, 0, stream, src, alpha, dst, vecs, cout,
                             cpg, e, plane);
        return cc_launch(bwd_mix_scale_dy_kernel<T, 1, false>, grid, block, 0, stream, src, alpha, dst, vecs, cout, cpg,
                         e, plane);
    });
}

extern "C" size_t cc_bwd_mixture_dalpha_scratch_elems(int n, int cout, int e, long long plane)
{
    if (!mix_sizes_ok(n, cout, 1, e, plane)) return 0;
    return (size_t)dalpha_splits((long long)cout * plane, n, e).splits * (size_t)n * (size_t)e;
}

extern "C" cudaError_t cc_launch_bwd_mixture_dalpha(int dtype, int layout, const void *z, const void *dy,
                                                    const float *bias, const float *dysum, float *d_alpha,
                                                    float *scratch, int n, int cout, int groups, int e, long long plane,
                                                    cudaStream_t stream)
{
    // Every argument checked before the first launch: a refused call launches nothing.
    if (cc_element_size(dtype) == 0 || !layout_ok(layout) || !mix_sizes_ok(n, cout, groups, e, plane) || z == NULL ||
        dy == NULL || d_alpha == NULL || scratch == NULL || (bias == NULL) != (dysum == NULL))
        return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        constexpr int V = vec16<T>();
        const long long len = (long long)cout * plane;
        const long long seg = layout == CC_LAYOUT_NHWC ? cout / groups : (long long)(cout / groups) * plane;
        const cc_split_k d = dalpha_splits(len, n, e);
        const int e_tiles = (e + kTileE - 1) / kTileE;
        const dim3 grid((unsigned)(n * e_tiles), (unsigned)d.splits), block(kThreads);
        const T *zt = static_cast<const T *>(z), *dyt = static_cast<const T *>(dy);
        cudaError_t err;
        // 16 bytes: segments a multiple of V (then len is one too) and both pointers aligned.
        if (seg % V == 0 && aligned16_elems<T>(z) && aligned16_elems<T>(dy))
            err = cc_launch(bwd_mix_dalpha_partial_kernel<T, V>, grid, block, 0, stream, zt, dyt, scratch, len, seg,
                            d.chunk, n, e, e_tiles);
        else
            err = cc_launch(bwd_mix_dalpha_partial_kernel<T, 1>, grid, block, 0, stream, zt, dyt, scratch, len, seg,
                            d.chunk, n, e, e_tiles);
        if (err != cudaSuccess) return err;
        const long long count = (long long)n * e;
        return cc_launch(bwd_mix_dalpha_finish_kernel, dim3(cc_grid_1d(count, kWarps, 1u << 16)), block, 0, stream,
                         (const float *)scratch, d.splits, bias, dysum, d_alpha, n, e, cout);
    });
}

extern "C" cudaError_t cc_launch_bwd_mixture_filters(int dtype, int nhwc_filters, const void *dw_grouped,
                                                     float *d_experts, int e, int cout, int cin_per_group, int kh,
                                                     int kw, int groups, cudaStream_t stream)
{
    if (cc_element_size(dtype) == 0 || e <= 0 || e > kMaxExperts || cout <= 0 || cin_per_group <= 0 || kh <= 0 ||
        kw <= 0 || groups <= 0 || cout % groups != 0 || dw_grouped == NULL || d_experts == NULL)
        return cudaErrorInvalidValue;
    // kh x kw an int, and E x Cout x Cin/g x kh x kw <= 2^61.
    const long long khw = (long long)kh * kw;
    if (khw > INT_MAX || !mul_le(khw, cin_per_group, kMaxElems) ||
        !mul_le(khw * cin_per_group, (long long)e * cout, kMaxElems))
        return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        const T *src = static_cast<const T *>(dw_grouped);
        const long long total = (long long)e * cout * cin_per_group * khw;
        const dim3 grid(cc_grid_1d(total, kThreads, 1u << 20)), block(kThreads);
        const int cpg = cout / groups;
        if (nhwc_filters)
            return cc_launch(bwd_mix_filters_kernel<T, true>, grid, block, 0, stream, src, d_experts, total, e, cout,
                             cpg, cin_per_group, (int)khw);
        return cc_launch(bwd_mix_filters_kernel<T, false>, grid, block, 0, stream, src, d_experts, total, e, cout, cpg,
                         cin_per_group, (int)khw);
    });
}
