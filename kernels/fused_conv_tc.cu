// Fused CondConv convolution on tensor cores (nvcuda::wmma, f32
// accumulators), NCHW and NHWC: f16 and bf16 on m16n16k16, f32 on TF32
// m16n16k8 (precision::tf32). The f32 kernel (fused_conv.cu) explains the
// fusion; this is the same GEMM with the product on tensor cores and one
// rounding of the mixed weights.
//
// Per sample n and group g the convolution is a GEMM
//   Y[n][g] (Mg x P) = W_n[g] (Mg x K) * X[n][g] (K x P),
//   Mg = Cout/g, P = out_h*out_w, K = taps * Cin/g (implicit: X is read from
//   the input windows directly, zeros outside the image; no gathered copy).
// Columns are pixels of samples, each sample's P padded to Pp, a multiple
// of 16, so that every 16-column wmma fragment lies in ONE sample: the
// flattened column list has N*Pp columns. A block computes BM output
// channels (of one group) x 64 columns (4 fragments), so it spans at most
// S = min(N, 4, 1 + ceil(3 / (Pp/16))) samples (samples_cap). 128 threads,
// 4 warps; warp w owns column fragment w and all BM/16 row fragments, so a
// warp's fragments use one sample's weights. Per K step of 16 (the packed
// layout pads each tap's channels to 16, so a step is one tap):
//   1. mix: a thread owns 8 consecutive weights of one K row of the BM x 16
//      tile; per expert one 16-byte load from the packed experts (each
//      weight read once per block and step, kept in registers, not copied
//      to shared memory), multiplied by alpha in f32 into the sums of the
//      block's samples (f32 registers); each sum is rounded ONCE to the dtype
//      into that sample's A tile in shared memory ([16][BM+8], wmma col_major).
//      This is the only rounding of the weights. f32: the tile is f32 and
//      the sum rounded once to TF32 (wmma::__float_to_tf32, nearest), as
//      the real API wants tf32 fragments filled; 8 weights are two
//      16-byte loads.
//   2. stage the 16 x 64 input tile in the dtype (exact copies, zeros for
//      padding, channels past Cin/g and columns past P): NCHW threads own a
//      column (pixel) and walk channels, NHWC threads own a channel and walk
//      columns, so consecutive threads read consecutive addresses; NHWC with
//      Cin/g % 8 == 0 and x 16-byte aligned: a thread reads 8 channels of a
//      pixel with one 16-byte load (else the 2-byte path). f32: the same
//      with two 16-byte loads (else 4-byte ones), each value rounded to
//      TF32 as it is staged.
//   3. barrier; each warp: B fragment once, for each row fragment the A
//      fragment of its sample's tile, mma_sync into f32; barrier. TF32
//      (k = 8): the same for k rows 0..7, then 8..15 of the tiles.
// Epilogue: accumulators to shared memory (store_matrix_sync, f32), + the
// per-sample bias mixed in f32 in the prologue, cc_activate in f32, rounded
// once to the dtype, scalar stores to NCHW or NHWC (coalesced along pixels
// or channels). Errors: weights u*sum|w x| (one rounding), output u*|y|,
// the f32 sums' own (K+E) 2^-24 relative: the test's bound. f32: weights
// and inputs each cut to TF32 (u = 2^-11 rounded, 2^-10 if a GPU
// truncated), the output not rounded.
//
// Shared memory (bytes, each part 32-byte aligned), under 48 KiB for every
// supported shape (BM 64, S 4, E 128: 33 KiB; f32, whose A and B tiles
// take twice the bytes: 43.5 KiB), so no opt-in is needed:
//   C tile f32 [BM][72] | A tiles dtype [S][16][BM+8] | B tile dtype [16][72]
//   | alpha f32 [S][E] | bias f32 [S][BM]
// The +8 elements of the row pitches keep the wmma pointers 32-byte aligned
// (also at the k = 8 substep of TF32), ldm a multiple of 16 bytes and
// spread the rows over the banks.
// One buffer and two barriers per K step: simple rather than fast (no
// double buffering, no cp.async); the mixing, E 16-byte loads and S*E*8
// FMAs per thread per step, is on the CUDA cores.
//
// Tile instances (x 3 dtypes x {NCHW, NHWC, NHWC 16-byte} = 18 kernels):
// 64x64 and 32x64, 128 threads. cc_fused_tc_choose: 32x64 when Mg mod 64 is in 1..32 (64 rows
// would pad more than half a tile), or when 64x64 has fewer blocks than SMs
// and 32x64 has more (fill the GPU); else 64x64 (half the expert and mixing
// work per column). Columns are the same for both (64, padded per sample to
// 16: at most 15 wasted columns per sample).
//
// No inline PTX; runs on the CPU execution layer (tests/cuda_cpu), whose
// wmma has a scrambled fragment mapping and checks alignment and ldm.
// Validated there by tests/cuda_cpu/test_fused_conv_tc.cpp.
#include <mma.h>

#include <algorithm>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common.cuh"
#include "fused_checks.cuh"
#include "element.cuh"
#include "element_vec.cuh"
#include "fused_conv_tc.h"

namespace {

constexpr int kBK = 16;       // K step, = the channel padding of the packed layout
constexpr int kBN = 64;       // columns per block
constexpr int kThreads = 128; // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kMinBlocks = 3;
constexpr int kMaxSamples = 4;   // kBN / 16 fragments, each in one sample
constexpr int kPitchN = kBN + 8; // row pitch of the B and C tiles (elements)
constexpr int kMPad = 8;         // packed output channels padded to 8 (16-byte loads)

static_assert(kBN / 16 == kWarps, "a warp per column fragment");

long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }
long long round_up(long long a, long long b) { return ceil_div(a, b) * b; }

// Everything the kernels need, by value.
struct tc_params {
    const void *x;
    void *y;
    const float *alpha, *bias;
    const void *packed;
    long long total_cols; // N * Pp
    int n, cin, cout, cin_g, mg, mg8, cpad, experts, taps, ct, kt_total;
    int h, w, out_w, p, pp;
    int kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
    int s_cap, m_tiles, activation;
    int off_a, off_b, off_alpha, off_bias; // byte offsets in shared memory
};

// Shared-memory layout, the same on host and device.
struct smem_layout {
    size_t a, b, alpha, bias, total;
};

__host__ __device__ inline size_t al32(size_t v) { return (v + 31) & ~(size_t)31; }

// esize: bytes of an A/B tile element (2 for f16/bf16, 4 for f32/TF32).
__host__ __device__ inline smem_layout layout_for(int bm, int s_cap, int experts, int esize)
{
    smem_layout l;
    l.a = al32((size_t)bm * kPitchN * sizeof(float));
    l.b = l.a + al32((size_t)s_cap * kBK * (bm + 8) * esize);
    l.alpha = l.b + al32((size_t)kBK * kPitchN * esize);
    l.bias = l.alpha + al32((size_t)s_cap * experts * sizeof(float));
    l.total = l.bias + al32((size_t)s_cap * bm * sizeof(float));
    return l;
}

struct alignas(128) tc_smem_unit {
    unsigned char b[128];
};

// The wmma operands per storage type: f16/bf16 m16n16k16; f32 runs TF32
// m16n16k8 (precision::tf32 fragments hold floats), two k-substeps per K
// step of 16.
template <typename T>
struct tc_op {
    using frag = T;
    static constexpr int kK = 16;
};
template <>
struct tc_op<float> {
    using frag = nvcuda::wmma::precision::tf32;
    static constexpr int kK = 8;
};

// A value as it goes into an A/B tile: f16/bf16 rounded once to the dtype
// (exact for inputs, which already are); f32 rounded once to TF32 (nearest,
// ties away: cvt.rna.tf32.f32). The real API wants tf32 fragments filled
// with __float_to_tf32 values (NVIDIA's tf32 GEMM sample converts after
// load_matrix_sync); converting as the tile is written does it once per
// element instead of once per warp that loads it.
template <typename T>
__device__ __forceinline__ T cc_tc_operand(float v)
{
    if constexpr (std::is_same<T, float>::value)
        return nvcuda::wmma::__float_to_tf32(v);
    else
        return cc_from_float<T>(v);
}

// 8 consecutive elements (16-byte aligned): one 16-byte load of 16-bit
// elements, two of floats.
template <typename T>
__device__ __forceinline__ void cc_tc_ldg8(const T *p, float (&f)[8])
{
    if constexpr (std::is_same<T, float>::value) {
        float lo[4], hi[4];
        cc_vec_ldg<float, 4>(p, lo);
        cc_vec_ldg<float, 4>(p + 4, hi);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            f[i] = lo[i];
            f[4 + i] = hi[i];
        }
    } else {
        cc_vec_ldg<T, 8>(p, f);
    }
}

// 8 operands to shared memory (16-byte aligned), each cc_tc_operand'ed.
template <typename T>
__device__ __forceinline__ void cc_tc_store8(T *p, const float (&f)[8])
{
    if constexpr (std::is_same<T, float>::value) {
        float lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = cc_tc_operand<float>(f[i]);
            hi[i] = cc_tc_operand<float>(f[4 + i]);
        }
        cc_vec_store<float, 4>(p, lo);
        cc_vec_store<float, 4>(p + 4, hi);
    } else {
        cc_vec_store<T, 8>(p, f);
    }
}

// Input tile loader. NCHW: a thread owns one column (pixel) and 8 channel
// rows; NHWC: one channel row and 8 columns; NHWC with kVec (Cin/g % 8 == 0,
// x 16-byte aligned): one column and 8 consecutive channels, one 16-byte
// load (two for f32). Window origins once per column.
template <typename T, int kLayout, bool kVec>
struct x_loader {
    static_assert(!kVec || kLayout == CC_LAYOUT_NHWC, "16-byte input loads are for NHWC");
    static constexpr bool kOneCol = kLayout == CC_LAYOUT_NCHW || kVec;
    static constexpr int kCols = kOneCol ? 1 : 8;
    static constexpr int kRows = kBK * kBN / kThreads / kCols;
    static_assert(!kVec || kRows == 8, "one 16-byte load: 8 rows of a column");
    int c0, r0;
    size_t base[kCols]; // element offset of the column's sample and group (channel 0, pixel 0)
    int iy0[kCols], ix0[kCols];
    bool ok[kCols];

    __device__ __forceinline__ int col_of(int j) const { return kOneCol ? c0 : c0 + 8 * j; }
    __device__ __forceinline__ int row_of(int j) const
    {
        return kLayout == CC_LAYOUT_NCHW ? r0 + 2 * j : kVec ? r0 + j : r0;
    }

    __device__ __forceinline__ void init(const tc_params &a, long long col0, int g, int tid)
    {
        if (kLayout == CC_LAYOUT_NCHW) {
            c0 = tid % kBN;
            r0 = tid / kBN; // 0 or 1: rows r0, r0+2, ...
        } else if (kVec) {
            c0 = tid / 2;
            r0 = 8 * (tid % 2); // rows r0 .. r0+7
        } else {
            r0 = tid % kBK;
            c0 = tid / kBK; // 0..7: columns c0, c0+8, ...
        }
#pragma unroll
        for (int j = 0; j < kCols; ++j) {
            const long long c = col0 + col_of(j);
            const long long n = c / a.pp;
            const int p = (int)(c - n * a.pp);
            ok[j] = c < a.total_cols && p < a.p;
            const int pv = ok[j] ? p : 0;
            const int oy = pv / a.out_w, ox = pv - oy * a.out_w;
            iy0[j] = oy * a.stride_h - a.pad_top;
            ix0[j] = ox * a.stride_w - a.pad_left;
            const size_t nn = ok[j] ? (size_t)n : 0;
            base[j] = kLayout == CC_LAYOUT_NCHW ? (nn * a.cin + (size_t)g * a.cin_g) * (size_t)a.h * a.w
                                                : nn * (size_t)a.h * a.w * a.cin + (size_t)g * a.cin_g;
        }
    }

    // Loads step kt and writes it to bs[16][kPitchN].
    __device__ __forceinline__ void stage(const tc_params &a, int kt, T *bs) const
    {
        const T *x = static_cast<const T *>(a.x);
        const int tap = kt / a.ct;
        const int ci0 = (kt - tap * a.ct) * kBK;
        const int ky = tap / a.kernel_w, kx = tap - ky * a.kernel_w;
        if constexpr (kVec) {
            const int iy = iy0[0] + ky * a.dilation_h, ix = ix0[0] + kx * a.dilation_w;
            const int ci = ci0 + r0; // a multiple of 8: all 8 channels valid or none (Cin/g % 8 == 0)
            float v[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            if (ok[0] && iy >= 0 && iy < a.h && ix >= 0 && ix < a.w && ci < a.cin_g)
                cc_tc_ldg8<T>(x + base[0] + ((size_t)iy * a.w + ix) * a.cin + ci, v);
#pragma unroll
            for (int i = 0; i < 8; ++i) bs[(r0 + i) * kPitchN + c0] = cc_tc_operand<T>(v[i]);
        } else {
#pragma unroll
            for (int jc = 0; jc < kCols; ++jc) {
                const int iy = iy0[jc] + ky * a.dilation_h, ix = ix0[jc] + kx * a.dilation_w;
                const bool in = ok[jc] && iy >= 0 && iy < a.h && ix >= 0 && ix < a.w;
#pragma unroll
                for (int jr = 0; jr < kRows; ++jr) {
                    const int j = kCols == 1 ? jr : jc;
                    const int r = row_of(j), ci = ci0 + r;
                    float v = 0.0f;
                    if (in && ci < a.cin_g) {
                        const size_t pix = (size_t)iy * a.w + ix;
                        const size_t at = kLayout == CC_LAYOUT_NCHW ? base[jc] + (size_t)ci * a.h * a.w + pix
                                                                    : base[jc] + pix * a.cin + ci;
                        v = cc_load(x + at);
                    }
                    bs[r * kPitchN + col_of(j)] = cc_tc_operand<T>(v); // f16/bf16: exact; f32: to TF32
                }
            }
        }
    }
};

// Min 3 blocks per SM (<= 170 registers): the NHWC 2-byte path needs ~160;
// without a minimum ptxas spilled 4 bytes in two sm_80 instances.
template <typename T, int kBM, int kLayout, bool kVec>
__global__ void __launch_bounds__(kThreads, kMinBlocks) fused_tc_kernel(const tc_params a)
{
    using namespace nvcuda;
    constexpr int kPitchA = kBM + 8;           // A tile pitch (elements): [k][m], col_major for wmma
    constexpr int kSlots = kBK * kBM / 8;      // 8-weight slots of a K step's tile
    constexpr int kSplit = kThreads / kSlots;  // threads per slot (samples split between them)
    constexpr int kPer = kMaxSamples / kSplit; // samples per thread
    constexpr int kFragM = kBM / 16;
    static_assert(kSplit * kSlots == kThreads && kPer * kSplit == kMaxSamples, "mixing slots");

    CC_DYNAMIC_SHARED(tc_smem_unit, cc_fused_tc_smem);
    unsigned char *const smem = reinterpret_cast<unsigned char *>(cc_fused_tc_smem);
    float *const cs = reinterpret_cast<float *>(smem);                    // [kBM][kPitchN]
    T *const as = reinterpret_cast<T *>(smem + a.off_a);                  // [s_cap][kBK][kPitchA]
    T *const bs = reinterpret_cast<T *>(smem + a.off_b);                  // [kBK][kPitchN]
    float *const alpha_s = reinterpret_cast<float *>(smem + a.off_alpha); // [s_cap][E]
    float *const bias_s = reinterpret_cast<float *>(smem + a.off_bias);   // [s_cap][kBM]

    const int tid = threadIdx.x, warp = tid >> 5;
    const long long col0 = (long long)blockIdx.x * kBN;
    const int mt = (int)(blockIdx.y % (unsigned int)a.m_tiles);
    const int g = (int)(blockIdx.y / (unsigned int)a.m_tiles);
    const int m0 = mt * kBM;
    const long long col_end = min(col0 + kBN, a.total_cols);
    const int s_first = (int)(col0 / a.pp);
    const int s_count = (int)((col_end - 1) / a.pp) - s_first + 1; // <= s_cap (host)

    for (int i = tid; i < a.s_cap * a.experts; i += kThreads) {
        const int s = i / a.experts, e = i - s * a.experts;
        alpha_s[i] = s < s_count ? __ldg(a.alpha + (size_t)(s_first + s) * a.experts + e) : 0.0f;
    }
    __syncthreads();
    for (int i = tid; i < s_count * kBM; i += kThreads) {
        const int s = i / kBM, m = m0 + (i - s * kBM);
        float b = 0.0f;
        if (a.bias != nullptr && m < a.mg) {
            const float *src = a.bias + (size_t)g * a.mg + m;
            for (int e = 0; e < a.experts; ++e)
                b = fmaf(alpha_s[s * a.experts + e], __ldg(src + (size_t)e * a.cout), b);
        }
        bias_s[i] = b;
    }

    // Mixing slot: K row r, output channels m0 + 8 mq .. +7; samples first_s, first_s + kSplit, ...
    const int slot = tid % kSlots, first_s = tid / kSlots;
    const int r = slot / (kBM / 8), mq = slot - r * (kBM / 8);
    const bool m_ok = m0 + 8 * mq < a.mg8;
    const T *const packed = static_cast<const T *>(a.packed);
    const size_t k_row = (size_t)a.experts * a.mg8; // elements per packed K row
    const size_t w_base = ((size_t)g * a.taps * a.cpad + r) * k_row + (size_t)(m0 + 8 * mq);

    x_loader<T, kLayout, kVec> xl;
    xl.init(a, col0, g, tid);

    // This warp's column fragment and its sample.
    const long long fcol = col0 + 16 * warp;
    const bool f_active = fcol < a.total_cols; // warp-uniform
    const int f_s = f_active ? (int)(fcol / a.pp) - s_first : 0;

    using FT = typename tc_op<T>::frag; // T, or precision::tf32 for f32
    constexpr int kK = tc_op<T>::kK;    // wmma K: 16, or 8 for TF32
    constexpr int kSub = kBK / kK;      // wmma steps per K step
    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[kFragM];
#pragma unroll
    for (int i = 0; i < kFragM; ++i) wmma::fill_fragment(acc[i], 0.0f);

    for (int kt = 0; kt < a.kt_total; ++kt) {
        // 1. mix the experts' weights for the block's samples.
        const int tap = kt / a.ct, ci0 = (kt - tap * a.ct) * kBK;
        float sum[kPer][8];
#pragma unroll
        for (int j = 0; j < kPer; ++j)
#pragma unroll
            for (int i = 0; i < 8; ++i) sum[j][i] = 0.0f;
        if (m_ok) {
            const T *src = packed + w_base + ((size_t)tap * a.cpad + ci0) * k_row;
            for (int e = 0; e < a.experts; ++e) {
                float wv[8];
                cc_tc_ldg8<T>(src + (size_t)e * a.mg8, wv);
#pragma unroll
                for (int j = 0; j < kPer; ++j) {
                    const int s = first_s + j * kSplit;
                    if (s < s_count) {
                        const float al = alpha_s[s * a.experts + e];
#pragma unroll
                        for (int i = 0; i < 8; ++i) sum[j][i] = fmaf(al, wv[i], sum[j][i]);
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < kPer; ++j) {
            const int s = first_s + j * kSplit;
            if (s < s_count) cc_tc_store8<T>(as + (size_t)s * kBK * kPitchA + r * kPitchA + 8 * mq, sum[j]);
        }
        // 2. the input tile.
        xl.stage(a, kt, bs);
        __syncthreads();
        // 3. the product.
        if (f_active) {
            const T *at = as + (size_t)f_s * kBK * kPitchA;
#pragma unroll
            for (int ks = 0; ks < kSub; ++ks) {
                wmma::fragment<wmma::matrix_b, 16, 16, kK, FT, wmma::row_major> fb;
                wmma::load_matrix_sync(fb, bs + ks * kK * kPitchN + 16 * warp, kPitchN);
#pragma unroll
                for (int i = 0; i < kFragM; ++i) {
                    wmma::fragment<wmma::matrix_a, 16, 16, kK, FT, wmma::col_major> fa;
                    wmma::load_matrix_sync(fa, at + ks * kK * kPitchA + 16 * i, kPitchA);
                    wmma::mma_sync(acc[i], fa, fb, acc[i]);
                }
            }
        }
        __syncthreads();
    }

    // Epilogue: accumulators -> shared f32, + bias, activation, one rounding.
    if (f_active) {
#pragma unroll
        for (int i = 0; i < kFragM; ++i)
            wmma::store_matrix_sync(cs + 16 * i * kPitchN + 16 * warp, acc[i], kPitchN, wmma::mem_row_major);
    }
    __syncthreads();
    T *const y = static_cast<T *>(a.y);
    for (int idx = tid; idx < kBM * kBN; idx += kThreads) {
        const int m = kLayout == CC_LAYOUT_NCHW ? idx / kBN : idx % kBM;
        const int c = kLayout == CC_LAYOUT_NCHW ? idx % kBN : idx / kBM;
        const long long col = col0 + c;
        if (col >= a.total_cols || m0 + m >= a.mg) continue;
        const long long n = col / a.pp;
        const int p = (int)(col - n * a.pp);
        if (p >= a.p) continue;
        const int s = (int)n - s_first;
        const float v = cc_activate(a.activation, cs[m * kPitchN + c] + bias_s[s * kBM + m]);
        const size_t o = (size_t)g * a.mg + m0 + m;
        const size_t at =
            kLayout == CC_LAYOUT_NCHW ? ((size_t)n * a.cout + o) * a.p + p : ((size_t)n * a.p + p) * a.cout + o;
        y[at] = cc_from_float<T>(v);
    }
}

using cc_fused_checks::say;

struct derived {
    int cin_g, mg, mg8, cpad, taps, ct, kt_total, p, pp;
    long long total_cols;
};

constexpr long long kIntMax = 0x7fffffffLL;

bool derive(const cc_fused_tc_args *a, derived *d, char *reason, size_t len)
{
    if (a == nullptr) {
        say(reason, len, "fused_tc: no arguments");
        return false;
    }
    if (a->dtype != CC_DTYPE_F16 && a->dtype != CC_DTYPE_BF16 && a->dtype != CC_DTYPE_F32) {
        say(reason, len, "fused_tc: dtype %d, the tensor-core kernel takes f16, bf16 and f32 (TF32)", a->dtype);
        return false;
    }
    if (a->layout != CC_LAYOUT_NCHW && a->layout != CC_LAYOUT_NHWC) {
        say(reason, len, "fused_tc: unknown layout %d", a->layout);
        return false;
    }
    if (!cc_fused_checks::geometry_ok(a, "fused_tc", CC_FUSED_TC_MAX_EXPERTS, reason, len)) return false;
    d->cin_g = a->in_channels / a->groups;
    d->mg = a->out_channels / a->groups;
    d->mg8 = (int)round_up(d->mg, kMPad);
    d->cpad = (int)round_up(d->cin_g, kBK);
    const long long taps = (long long)a->kernel_h * a->kernel_w;
    const long long p = (long long)a->out_h * a->out_w;
    const long long pp = round_up(p, 16);
    // Every int the kernel computes with stays below 2^31; offsets are size_t
    // and every tensor's element count fits an int as well. Each product is
    // checked before it feeds the next (factors <= 2^31: no overflow here).
    const long long x_nc = (long long)a->n * a->in_channels, x_plane = (long long)a->h * a->w;
    const long long y_nc = (long long)a->n * a->out_channels;
    const long long wg = (long long)a->groups * a->experts * d->mg8; // <= (Cout + 7 g) E < 2^42
    const bool too_large = x_nc > kIntMax || x_plane > kIntMax || x_nc * x_plane > kIntMax || y_nc > kIntMax ||
                           p > kIntMax / 2 || y_nc * p > kIntMax || (long long)a->n * pp > kIntMax || taps > kIntMax ||
                           taps * d->cpad > kIntMax || wg > kIntMax || taps * d->cpad * wg > kIntMax ||
                           ceil_div(d->mg, 32) * a->groups > 65535;
    if (too_large) {
        say(reason, len,
            "fused_tc: too large for int indexing (x, y or packed experts past 2^31-1 elements) or too "
            "many groups x channel tiles");
        return false;
    }
    d->taps = (int)taps;
    d->ct = d->cpad / kBK;
    d->kt_total = (int)(taps * d->ct);
    d->p = (int)p;
    d->pp = (int)pp;
    d->total_cols = (long long)a->n * pp;
    return true;
}

// Most samples a block's 4 fragments can touch: ceil(3 / fragments per
// sample) + 1, at most 4 and N.
int samples_cap(const derived &d, int n)
{
    const int fps = d.pp / 16;
    const int cap = 1 + (3 + fps - 1) / fps;
    return std::min(std::min(cap, kMaxSamples), n);
}

template <typename T, int kLayout, bool kVec>
cudaError_t launch_layout(int bm, dim3 grid, size_t smem, cudaStream_t stream, const tc_params &p)
{
    if (bm == 64) return cc_launch(fused_tc_kernel<T, 64, kLayout, kVec>, grid, dim3(kThreads), smem, stream, p);
    return cc_launch(fused_tc_kernel<T, 32, kLayout, kVec>, grid, dim3(kThreads), smem, stream, p);
}

} // namespace

extern "C" int cc_fused_tc_supported(const cc_fused_tc_args *args, char *reason, size_t reason_len)
{
    derived d;
    if (!derive(args, &d, reason, reason_len)) return 0;
    if (reason != nullptr && reason_len > 0) reason[0] = '\0';
    return 1;
}

extern "C" size_t cc_fused_tc_packed_elems(int in_channels, int out_channels, int groups, int kernel_h, int kernel_w,
                                           int experts)
{
    if (in_channels < 1 || out_channels < 1 || groups < 1 || kernel_h < 1 || kernel_w < 1 || experts < 1 ||
        in_channels % groups != 0 || out_channels % groups != 0)
        return 0;
    const size_t cpad = (size_t)round_up(in_channels / groups, kBK);
    const size_t mg8 = (size_t)round_up(out_channels / groups, kMPad);
    return (size_t)groups * (size_t)kernel_h * (size_t)kernel_w * cpad * (size_t)experts * mg8;
}

extern "C" int cc_fused_tc_pack(int dtype, const float *experts, void *packed, int in_channels, int out_channels,
                                int groups, int kernel_h, int kernel_w, int experts_count)
{
    const size_t total = cc_fused_tc_packed_elems(in_channels, out_channels, groups, kernel_h, kernel_w, experts_count);
    if (total == 0 || experts == nullptr || packed == nullptr) return 0;
    if (dtype != CC_DTYPE_F16 && dtype != CC_DTYPE_BF16 && dtype != CC_DTYPE_F32) return 0;
    unsigned short *const out = static_cast<unsigned short *>(packed);
    float *const out32 = static_cast<float *>(packed);
    if (dtype == CC_DTYPE_F32)
        std::fill(out32, out32 + total, 0.0f);
    else
        std::fill(out, out + total, (unsigned short)0); // +0 in both dtypes
    const size_t cin_g = (size_t)(in_channels / groups), mg = (size_t)(out_channels / groups);
    const size_t taps = (size_t)kernel_h * (size_t)kernel_w;
    const size_t cpad = (size_t)round_up((long long)cin_g, kBK), mg8 = (size_t)round_up((long long)mg, kMPad);
    const size_t e_count = (size_t)experts_count;
    // Source [e][g*mg + m][ci][tap] -> packed [g][tap][ci][e][m].
    for (size_t e = 0; e < e_count; ++e)
        for (size_t g = 0; g < (size_t)groups; ++g)
            for (size_t m = 0; m < mg; ++m)
                for (size_t ci = 0; ci < cin_g; ++ci) {
                    const float *src = experts + ((e * (size_t)out_channels + g * mg + m) * cin_g + ci) * taps;
                    for (size_t tap = 0; tap < taps; ++tap) {
                        const float v = src[tap];
                        const size_t at = (((g * taps + tap) * cpad + ci) * e_count + e) * mg8 + m;
                        if (dtype == CC_DTYPE_F32) {
                            out32[at] = v; // kept in f32: the mixed weights are rounded to TF32 once
                            continue;
                        }
                        unsigned short bits;
                        if (dtype == CC_DTYPE_F16) {
                            const __half h = __float2half_rn(v);
                            memcpy(&bits, &h, sizeof bits);
                        } else {
                            const __nv_bfloat16 b = __float2bfloat16_rn(v);
                            memcpy(&bits, &b, sizeof bits);
                        }
                        out[at] = bits;
                    }
                }
    return 1;
}

extern "C" int cc_fused_tc_choose(const cc_fused_tc_args *args, int sm_count, size_t smem_optin,
                                  cc_fused_tc_config *cfg)
{
    derived d;
    if (cfg == nullptr || !derive(args, &d, nullptr, 0)) return 0;
    if (sm_count < 1) sm_count = 1;
    const int s_cap = samples_cap(d, args->n);
    const long long col_tiles = ceil_div(d.total_cols, kBN);
    const long long blocks64 = col_tiles * ceil_div(d.mg, 64) * args->groups;
    const long long blocks32 = col_tiles * ceil_div(d.mg, 32) * args->groups;
    const int rem = d.mg % 64;
    const bool pad_rule = rem >= 1 && rem <= 32;
    const bool fill_rule = blocks64 < sm_count && blocks32 > blocks64;
    int bm = pad_rule || fill_rule ? 32 : 64;
    if (bm == 64 && ceil_div(d.mg, 64) * args->groups > 65535) bm = 32;
    const size_t smem = layout_for(bm, s_cap, args->experts, cc_element_size(args->dtype)).total;
    if (smem > smem_optin || smem > 48 * 1024) return 0;
    memset(cfg, 0, sizeof *cfg);
    cfg->tile_m = bm;
    cfg->tile_n = kBN;
    cfg->samples_cap = s_cap;
    cfg->smem_bytes = smem;
    snprintf(cfg->reason, sizeof cfg->reason, "wmma %dx%d tile, <= %d samples/block, %lld blocks on %d SMs (%s)", bm,
             kBN, s_cap, bm == 64 ? blocks64 : blocks32, sm_count,
             pad_rule    ? "Mg mod 64 <= 32: less row padding"
             : fill_rule ? "64-row tiles leave SMs idle"
                         : "default");
    return 1;
}

extern "C" cudaError_t cc_launch_fused_tc(const cc_fused_tc_args *args, const cc_fused_tc_config *cfg,
                                          cudaStream_t stream)
{
    derived d;
    if (cfg == nullptr || !derive(args, &d, nullptr, 0)) return cudaErrorInvalidValue;
    const int bm = cfg->tile_m;
    if ((bm != 32 && bm != 64) || cfg->tile_n != kBN || cfg->samples_cap != samples_cap(d, args->n) ||
        cfg->mix_mma != 0) // gen 2's
        return cudaErrorInvalidValue;
    const size_t esize = cc_element_size(args->dtype);
    const smem_layout l = layout_for(bm, cfg->samples_cap, args->experts, (int)esize);
    if (cfg->smem_bytes != l.total || l.total > 48 * 1024) return cudaErrorInvalidValue;
    if (args->x == nullptr || args->y == nullptr || args->alpha == nullptr || args->packed == nullptr ||
        !cc_aligned16(args->packed) || (uintptr_t)args->x % esize != 0 || (uintptr_t)args->y % esize != 0)
        return cudaErrorInvalidValue;
    const long long col_tiles = ceil_div(d.total_cols, kBN);
    const long long m_tiles = ceil_div(d.mg, bm);
    if (col_tiles > kIntMax || m_tiles * args->groups > 65535) return cudaErrorInvalidValue;

    tc_params p;
    memset(&p, 0, sizeof p);
    p.x = args->x;
    p.y = args->y;
    p.alpha = args->alpha;
    p.bias = args->expert_bias;
    p.packed = args->packed;
    p.total_cols = d.total_cols;
    p.n = args->n;
    p.cin = args->in_channels;
    p.cout = args->out_channels;
    p.cin_g = d.cin_g;
    p.mg = d.mg;
    p.mg8 = d.mg8;
    p.cpad = d.cpad;
    p.experts = args->experts;
    p.taps = d.taps;
    p.ct = d.ct;
    p.kt_total = d.kt_total;
    p.h = args->h;
    p.w = args->w;
    p.out_w = args->out_w;
    p.p = d.p;
    p.pp = d.pp;
    p.kernel_w = args->kernel_w;
    p.stride_h = args->stride_h;
    p.stride_w = args->stride_w;
    p.dilation_h = args->dilation_h;
    p.dilation_w = args->dilation_w;
    p.pad_top = args->pad_top;
    p.pad_left = args->pad_left;
    p.s_cap = cfg->samples_cap;
    p.m_tiles = (int)m_tiles;
    p.activation = args->activation;
    p.off_a = (int)l.a;
    p.off_b = (int)l.b;
    p.off_alpha = (int)l.alpha;
    p.off_bias = (int)l.bias;

    // NHWC 16-byte input path: 8 channels of a pixel are 16 aligned bytes.
    const bool vec_x = args->layout == CC_LAYOUT_NHWC && d.cin_g % 8 == 0 && cc_aligned16(args->x);
    const dim3 grid((unsigned int)col_tiles, (unsigned int)(m_tiles * args->groups));
    const size_t smem = l.total;
    return cc_dispatch_dtype(args->dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        if (args->layout == CC_LAYOUT_NCHW) return launch_layout<T, CC_LAYOUT_NCHW, false>(bm, grid, smem, stream, p);
        return vec_x ? launch_layout<T, CC_LAYOUT_NHWC, true>(bm, grid, smem, stream, p)
                     : launch_layout<T, CC_LAYOUT_NHWC, false>(bm, grid, smem, stream, p);
    });
}
