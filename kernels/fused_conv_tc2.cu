// Fused CondConv convolution on tensor cores, second generation: a
// CANDIDATE that AUTO (measure mode) times against the first generation
// (kernels/fused_conv_tc.cu, variant 0, whose header explains the implicit
// GEMM, the packed experts [g][taps][Cin/g pad 16][E][Cout/g pad 8] and the
// numerics). Same arguments (cc_fused_tc_args), same packed experts (no new
// weight memory), same numerics contract: the mixed weights summed in f32
// registers and rounded ONCE to the dtype (TF32 for f32) into a per-sample A
// tile, inputs copied exactly (f32: rounded to TF32 with __float_to_tf32),
// f32 accumulation, bias and cc_activate in f32, one rounding of the output.
// So gen 1's test bounds hold unchanged. No GPU has run it yet.
//
// Why it should be faster than gen 1 (a read of gen 1 says it is
// latency-bound: per K step each thread issues E dependent-free 16-byte
// global loads and then waits, with nothing in flight during the MMAs):
//   1. Loads in flight: a 2-stage software pipeline. Step k+1's expert slice
//      ([16 K rows][E][BM] of the dtype) and, on the NHWC 16-byte path, its
//      input tile are copied global -> shared with cp.async
//      (__pipeline_memcpy_async, 16 bytes each) right after step k's first
//      barrier, so they are in flight while step k mixes and runs its MMAs;
//      the NCHW and NHWC 2-byte input paths prefetch step k+1's inputs into
//      registers at the same point and store them to the other stage after
//      step k's MMAs (elements of 2 bytes cannot be cp.async'ed one by one).
//      The mixing then reads the experts from shared memory (~30 cycles)
//      instead of L2/HBM (~600).
//   2. Occupancy: __launch_bounds__(128, 2), and shared memory held to
//      113 KiB per block for 2 blocks per SM on H100/H200 (228 KiB per SM,
//      1 KiB reserved per block): while one block waits at a barrier the
//      other issues. The tile height (64, 32 or 16 rows) is cut until the
//      stages fit (cc_fused_tc2_choose).
//   3. Bank conflicts: row pitches of every tile are 16 bytes mod 128 (or
//      make the rows a quarter-warp touches disjoint), see "Shared memory".
// What a GPU must confirm (scripts/device-check.sh, bench/dev/fused_dev):
// faster than gen 1 on the shapes AUTO sees (it is not a given for small E,
// where gen 1's loads are few, nor for E >= 32, where BM drops to 16 or 32
// and the mixing per column doubles); ptxas' 0 spills; that nvcc turns the
// wmma loads into ldmatrix (SASS: LDSM) without conflicts (Nsight Compute:
// l1tex__data_bank_conflicts_pipe_lsu_mem_shared); that 2 blocks per SM are
// resident (achieved occupancy).
//
// Per block: BM output channels (of one group) x 64 columns (4 warps, warp w
// owns column fragment w and all BM/16 row fragments), <= 4 samples, 128
// threads, as gen 1. Per K step of 16 (one tap's padded channels), stage
// st = k & 1:
//     wait_prior(0)        this thread's copies of step k have landed
//     __syncthreads()  (1) everyone's have; everyone is done with step k-1
//                          (its A tiles and stage st^1)
//     issue step k+1 into stage st^1 (cp.async; zeros by ordinary stores;
//                          register prefetch of inputs), commit
//     mix from stage st -> A tiles (f32 sums, one rounding)
//     __syncthreads()  (2) the A tiles are complete
//     MMAs (A tiles, input stage st); register-prefetched inputs -> stage st^1
// A stage is overwritten only after barrier (1) of the step after its last
// reader's step. The epilogue's C tile aliases the expert stages: the last
// reader of a stage (the last mix) is ordered by barrier (2) of the last step,
// and no copy is outstanding then.
//
// Shared memory (bytes; each part 128-byte aligned):
//   expert stages [2][16][rp], rp = round_up(E*BM*es, 128) + (BM*es mod 128)
//     (aliased by the C tile: NCHW f32 [BM][68], NHWC f32 [64][BM+4])
//   | input stages [2][tile]: row-major [16][64 + 16/es] (NCHW, NHWC 2-byte
//     path) or col-major [64][16 + 16/es] (NHWC 16-byte path: a pixel's 8
//     channels are one contiguous 16-byte cp.async)
//   | A tiles [S][16][BM + 16/es] | alpha f32 [S][E] | bias f32 [S][BM]
// Per block at S = 4 (the larger of the two input-tile forms):
//   f16/bf16: E = 8, BM = 64: 48.1 KiB (just past 48 KiB: the opt-in);
//     E = 32, BM = 32: 78.0 KiB; E = 64 (the largest), BM = 16: 75.2 KiB.
//   f32: E = 8, BM = 64: 92.1 KiB; E = 32, BM = 16: 81.8 KiB; E = 46 (the
//     largest that fits 113 KiB), BM = 16: 110.0 KiB.
// Pitches: every row pitch is 16 bytes mod 128 (A: BM+8 halves = 144, 80, 48
// bytes; BM+4 floats = 272, 144, 80; B row-major 144 / 272; B col-major 48 /
// 80; C 272 / 272, 144, 80), so the 8 row addresses of an 8x16-byte
// ldmatrix phase fall in 8 different 16-byte bank groups; every wmma pointer
// is 32-byte aligned (also at the k = 8 substep of TF32) and every ldm a
// multiple of 16 bytes. Conflicts (ways, per 8-thread phase of a 16-byte
// access, per 32 threads of a 2/4-byte one):
//   expert cp.async writes: 1 (consecutive threads, consecutive chunks);
//   mixing reads (16 bytes per expert): 1 for f16/bf16 (a quarter-warp reads
//     one contiguous 128 bytes: rp makes the K rows it spans contiguous mod
//     128); 2 for f32 (a thread's 8 floats are two 16-byte halves 32 bytes
//     apart);
//   A tile stores (16 bytes): 1 at BM = 64 f16, <= 2 otherwise;
//   input stores: NCHW 1 (a warp writes 32 consecutive columns); NHWC 2-byte
//     2 (16 rows of 144 bytes: rows r and r+8 share banks); NHWC cp.async
//     <= 2 (48-byte column pitch);
//   epilogue reads: 1 (NCHW reads C rows along columns, NHWC reads C's
//     col-major columns along channels).
//
// The mix as an MMA (template kMix; cc_fused_tc2_choose_mma_mix, a separate
// candidate "tc gen2 mma-mix" that AUTO times against the CUDA-core mix):
// per K step, A_s[k][m] = sum_e alpha[s][e] W[k][e][m] is, per K row k, an
// [S x E] x [E x BM] product. The four warps take (K row, 32 or 16 columns)
// units in turn; a unit is E/16 wmma products (m8n32k16; m16n16k16 for
// 16-row tiles) of alpha (A, [8 or 16][E + 8] in shared memory, built once
// per block) by the stage's expert rows (B, read in place: an expert's row
// padded by 16 bytes where that avoids ldmatrix conflicts), accumulated in
// f32, stored to the warp's scratch [M][N + 4] and summed into the A tiles.
// Numerics: alpha must be a dtype operand, so per sample it is scaled by a
// power of two sc to |alpha / sc| < 1 and split into hi = dtype(alpha / sc)
// (rows 0..3) and lo = dtype(alpha / sc - hi) (rows 4..7): the products are
// exact in f32, hi + lo carries alpha to 2^-22 (f16) / 2^-16 (bf16) of the
// sample's largest alpha, and the row sums (hi + lo) * sc are rounded once
// to the dtype, as the CUDA-core mix does. Why it should win: the CUDA-core
// mix is S*E*BM*16 FMAs per step (E = 32, BM = 32: 512 per thread, beside
// the step's 2 main MMAs per warp); on tensor cores it is 16*BM/N_mix*E/16
// MMAs (8 per warp at E = 32, BM = 32) plus S*BM*16 conversions. Unmeasured:
// whether the scratch round trip and the extra barrier-free warp work beat
// the FMAs at E = 16; f16/bf16 only (TF32 would cut each expert's weights
// to TF32 before the mix, a different contract) and E a multiple of 16
// (an MMA's K; rows past E would be read).
//
// For a later round (not done here):
//   - 3 stages (wait_prior(1)) where shared memory allows (small E).
//   - a double-buffered A tile, dropping barrier (2) to one per step.
//   - cp.async for the NCHW input tile (4-byte copies of pixel pairs when W
//     is even, stride 1, and the row is aligned).
//
// No inline PTX: <cuda_pipeline.h>'s primitives, which the CPU execution
// layer (tests/cuda_cpu/include/cuda_pipeline.h) emulates with delayed
// copies. Validated there by tests/cuda_cpu/test_fused_conv_tc2.cpp.
#include <cuda_pipeline.h>
#include <mma.h>

#include <algorithm>
#include <mutex>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <type_traits>

#include "common.cuh"
#include "element.cuh"
#include "element_vec.cuh"
#include "formats.h"
#include "fused_conv_tc.h"

namespace {

constexpr int kBK = 16;       // K step, = the channel padding of the packed layout
constexpr int kBN = 64;       // columns per block
constexpr int kThreads = 128; // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kMinBlocks = 2; // the shared-memory budget below is for 2 blocks per SM
constexpr int kMaxSamples = 4;
constexpr int kMPad = 8;    // packed output channels padded to 8
constexpr int kPitchC = 68; // NCHW C tile [BM][68] f32: 272 bytes, 16 mod 128
// Two blocks per SM on H100/H200: 228 KiB per SM, 1 KiB of it reserved per block.
constexpr size_t kSmemBudget = 113 * 1024;

static_assert(kBN / 16 == kWarps, "a warp per column fragment");
static_assert(kMaxSamples == 4, "the tensor-core mix keeps alpha's hi rows in 0..3, lo rows in 4..7");

long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }
long long round_up(long long a, long long b) { return ceil_div(a, b) * b; }

struct tc2_params {
    const void *x;
    void *y;
    const float *alpha, *bias;
    const void *packed;
    long long total_cols; // N * Pp
    int n, cin, cout, cin_g, mg, mg8, cpad, experts, taps, ct, kt_total;
    int h, w, out_w, p, pp;
    int kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
    int s_cap, m_tiles, activation;
    int rp;                                         // expert stage K-row pitch (elements)
    int off_b, b_stage, off_a, off_alpha, off_bias; // bytes
    int off_mix, off_scale, off_scr;                // bytes; the tensor-core mix's parts (else 0)
};

__host__ __device__ inline size_t al128(size_t v) { return (v + 127) & ~(size_t)127; }

// Shared-memory layout, the same on host and device (bytes).
struct smem_layout {
    size_t e_stage, b, b_stage, a, alpha, bias, mix, scale, scr, total;
    int rp; // expert K-row pitch, elements
};

__host__ __device__ inline int pitch_a(int bm, int esize) { return bm + 16 / esize; }
__host__ __device__ inline int pitch_bn(int esize) { return kBN + 16 / esize; } // row-major input tile
__host__ __device__ inline int pitch_bk(int esize) { return kBK + 16 / esize; } // col-major input tile

// The expert mix on tensor cores (kMix, f16/bf16, E % 16 == 0; see "The mix
// as an MMA" above): per K row k and kMixN output channels, an
// [kMixM x 16 experts] x [16 experts x kMixN] wmma product, accumulated over
// the E/16 expert chunks. m8n32k16 where the tile has 32 or 64 rows, m16n16k16
// for 16 rows (rows 8..15 zero).
__host__ __device__ constexpr int mix_n(int bm) { return bm < 32 ? bm : 32; }
__host__ __device__ constexpr int mix_m(int bm) { return 256 / mix_n(bm); }
// An expert's row in a stage (elements): BM, padded by 16 bytes for the
// mix's wmma loads when that makes the 8 rows an ldmatrix phase reads fall in
// different 16-byte bank groups (rows 64 or 128 bytes apart: 4- or 8-way
// conflicts unpadded; 32 bytes apart (BM 16): 2-way, left, as the padding
// would cost the E = 64 tile its fit).
__host__ __device__ constexpr int expert_pitch(int bm, int esize, bool mix)
{
    return mix && bm >= 32 ? bm + 16 / esize : bm;
}
__host__ __device__ constexpr int mix_alpha_pitch(int experts) { return experts + 8; } // 16 bytes mod 32
__host__ __device__ constexpr int mix_scr_pitch(int bm) { return mix_n(bm) + 4; }      // f32, 16 bytes mod 128

inline smem_layout layout_for(int bm, int s_cap, int experts, int esize, bool col_b, bool mix)
{
    smem_layout l;
    const size_t row = (size_t)experts * expert_pitch(bm, esize, mix) * esize;
    // CUDA-core mix: K rows a quarter-warp spans contiguous mod 128 (below);
    // tensor-core mix: a K row 32-byte aligned for wmma (E % 16 == 0 makes it so).
    const size_t rp = mix ? row : al128(row) + ((size_t)bm * esize) % 128;
    l.rp = (int)(rp / esize);
    l.e_stage = kBK * rp;
    const size_t c_bytes = (size_t)std::max(bm * kPitchC, kBN * (bm + 4)) * sizeof(float);
    l.b = al128(std::max(2 * l.e_stage, c_bytes));
    l.b_stage = al128(col_b ? (size_t)kBN * pitch_bk(esize) * esize : (size_t)kBK * pitch_bn(esize) * esize);
    l.a = l.b + 2 * l.b_stage;
    l.alpha = l.a + al128((size_t)s_cap * kBK * pitch_a(bm, esize) * esize);
    l.bias = l.alpha + al128((size_t)s_cap * experts * sizeof(float));
    l.mix = l.bias + al128((size_t)s_cap * bm * sizeof(float));
    l.scale = l.mix;
    l.scr = l.mix;
    l.total = l.mix;
    if (mix) {
        l.scale = l.mix + al128((size_t)mix_m(bm) * mix_alpha_pitch(experts) * esize);
        l.scr = l.scale + al128((size_t)kMaxSamples * sizeof(float));
        l.total = l.scr + al128((size_t)kWarps * mix_m(bm) * mix_scr_pitch(bm) * sizeof(float));
    }
    return l;
}

struct alignas(128) tc2_smem_unit {
    unsigned char b[128];
};

template <typename T>
struct tc2_op {
    using frag = T;
    static constexpr int kK = 16;
};
template <>
struct tc2_op<float> {
    using frag = nvcuda::wmma::precision::tf32;
    static constexpr int kK = 8;
};

// As gen 1: f16/bf16 rounded once to the dtype; f32 rounded once to TF32.
template <typename T>
__device__ __forceinline__ T tc2_operand(float v)
{
    if constexpr (std::is_same<T, float>::value)
        return nvcuda::wmma::__float_to_tf32(v);
    else
        return cc_from_float<T>(v);
}

// 8 consecutive elements of shared memory (16-byte aligned).
template <typename T>
__device__ __forceinline__ void tc2_lds8(const T *p, float (&f)[8])
{
    if constexpr (std::is_same<T, float>::value) {
        float lo[4], hi[4];
        cc_vec_load<float, 4>(p, lo);
        cc_vec_load<float, 4>(p + 4, hi);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            f[i] = lo[i];
            f[4 + i] = hi[i];
        }
    } else {
        cc_vec_load<T, 8>(p, f);
    }
}

template <typename T>
__device__ __forceinline__ void tc2_store8(T *p, const float (&f)[8])
{
    if constexpr (std::is_same<T, float>::value) {
        float lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            lo[i] = tc2_operand<float>(f[i]);
            hi[i] = tc2_operand<float>(f[4 + i]);
        }
        cc_vec_store<float, 4>(p, lo);
        cc_vec_store<float, 4>(p + 4, hi);
    } else {
        cc_vec_store<T, 8>(p, f);
    }
}

// 16 zero bytes (a chunk no copy fills: padding, outside the image).
__device__ __forceinline__ void tc2_zero16(void *p)
{
    const float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    cc_vec_store<float, 4>(static_cast<float *>(p), z);
}

// Input tile loader. kVec (NHWC, Cin/g % 8 == 0, x 16-byte aligned): a
// thread owns one column and 8 consecutive channels, copied with cp.async
// into the col-major tile [64][pitch_bk]. Else (NCHW: a column, 8 channel
// rows; NHWC: a channel row, 8 columns) the values are prefetched into
// registers (fetch) and stored to the row-major tile [16][pitch_bn] later
// (put). Window origins once per column.
template <typename T, int kLayout, bool kVec>
struct x_loader2 {
    static_assert(!kVec || kLayout == CC_LAYOUT_NHWC, "cp.async input copies are for NHWC");
    static constexpr bool kOneCol = kLayout == CC_LAYOUT_NCHW || kVec;
    static constexpr int kCols = kOneCol ? 1 : 8;
    static constexpr int kRows = kBK * kBN / kThreads / kCols;
    static constexpr int kVals = kVec ? 1 : kRows * kCols; // registers of a prefetch
    int c0, r0;
    size_t base[kCols];
    int iy0[kCols], ix0[kCols];
    bool ok[kCols];

    __device__ __forceinline__ int col_of(int j) const { return kOneCol ? c0 : c0 + 8 * j; }
    __device__ __forceinline__ int row_of(int j) const { return kLayout == CC_LAYOUT_NCHW ? r0 + 2 * j : r0; }

    __device__ __forceinline__ void init(const tc2_params &a, long long col0, int g, int tid)
    {
        if (kLayout == CC_LAYOUT_NCHW) {
            c0 = tid % kBN;
            r0 = tid / kBN;
        } else if (kVec) {
            c0 = tid / 2;
            r0 = 8 * (tid % 2);
        } else {
            r0 = tid % kBK;
            c0 = tid / kBK;
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

    // kVec: step kt's 8 channels of this thread's pixel -> bs (col-major),
    // asynchronously (zeros stored at once).
    __device__ __forceinline__ void copy_async(const tc2_params &a, int kt, T *bs) const
    {
        const T *x = static_cast<const T *>(a.x);
        const int tap = kt / a.ct;
        const int ci = (kt - tap * a.ct) * kBK + r0; // a multiple of 8: all 8 channels valid or none
        const int ky = tap / a.kernel_w, kx = tap - ky * a.kernel_w;
        const int iy = iy0[0] + ky * a.dilation_h, ix = ix0[0] + kx * a.dilation_w;
        T *dst = bs + c0 * pitch_bk((int)sizeof(T)) + r0;
        constexpr int kChunks = 8 * (int)sizeof(T) / 16; // 1, or 2 for f32
        constexpr int kChunkEl = 16 / (int)sizeof(T);
        if (ok[0] && iy >= 0 && iy < a.h && ix >= 0 && ix < a.w && ci < a.cin_g) {
            const T *src = x + base[0] + ((size_t)iy * a.w + ix) * a.cin + ci;
#pragma unroll
            for (int q = 0; q < kChunks; ++q) __pipeline_memcpy_async(dst + q * kChunkEl, src + q * kChunkEl, 16);
        } else {
#pragma unroll
            for (int q = 0; q < kChunks; ++q) tc2_zero16(dst + q * kChunkEl);
        }
    }

    // Not kVec: step kt's values into registers (zeros for padding).
    __device__ __forceinline__ void fetch(const tc2_params &a, int kt, float (&v)[kVals]) const
    {
        const T *x = static_cast<const T *>(a.x);
        const int tap = kt / a.ct;
        const int ci0 = (kt - tap * a.ct) * kBK;
        const int ky = tap / a.kernel_w, kx = tap - ky * a.kernel_w;
#pragma unroll
        for (int jc = 0; jc < kCols; ++jc) {
            const int iy = iy0[jc] + ky * a.dilation_h, ix = ix0[jc] + kx * a.dilation_w;
            const bool in = ok[jc] && iy >= 0 && iy < a.h && ix >= 0 && ix < a.w;
#pragma unroll
            for (int jr = 0; jr < kRows; ++jr) {
                const int j = kCols == 1 ? jr : jc;
                const int ci = ci0 + row_of(j);
                float val = 0.0f;
                if (in && ci < a.cin_g) {
                    const size_t pix = (size_t)iy * a.w + ix;
                    const size_t at = kLayout == CC_LAYOUT_NCHW ? base[jc] + (size_t)ci * a.h * a.w + pix
                                                                : base[jc] + pix * a.cin + ci;
                    val = cc_load(x + at);
                }
                v[j] = val;
            }
        }
    }

    __device__ __forceinline__ void put(const float (&v)[kVals], T *bs) const
    {
#pragma unroll
        for (int j = 0; j < kVals; ++j) bs[row_of(j) * pitch_bn((int)sizeof(T)) + col_of(j)] = tc2_operand<T>(v[j]);
    }
};

template <typename T, int kBM, int kLayout, bool kVec, bool kMix>
__global__ void __launch_bounds__(kThreads, kMinBlocks) fused_tc2_kernel(const tc2_params a)
{
    using namespace nvcuda;
    static_assert(!kMix || !std::is_same<T, float>::value, "the tensor-core mix is for f16/bf16");
    constexpr int kEs = (int)sizeof(T);
    constexpr int kEPitch = expert_pitch(kBM, kEs, kMix); // an expert's row in a stage
    constexpr int kPitchA = kBM + 16 / kEs;
    constexpr int kPitchB = kVec ? kBK + 16 / kEs : kBN + 16 / kEs;
    constexpr int kPitchCt = kBM + 4; // NHWC C tile, col-major [64][BM+4]
    constexpr int kSlots = kBK * kBM / 8;
    constexpr int kSplit = kThreads / kSlots;
    constexpr int kPer = kMaxSamples / kSplit;
    constexpr int kFragM = kBM / 16;
    constexpr int kChunkEl = 16 / kEs;         // elements of a 16-byte copy
    constexpr int kChunksRow = kBM / kChunkEl; // 16-byte copies per (K row, expert)
    static_assert(kSplit * kSlots == kThreads && kPer * kSplit == kMaxSamples, "mixing slots");

    CC_DYNAMIC_SHARED(tc2_smem_unit, cc_fused_tc2_smem);
    unsigned char *const smem = reinterpret_cast<unsigned char *>(cc_fused_tc2_smem);
    T *const es = reinterpret_cast<T *>(smem);                            // [2][kBK][rp]
    float *const cs = reinterpret_cast<float *>(smem);                    // C tile, after the main loop
    T *const bs = reinterpret_cast<T *>(smem + a.off_b);                  // [2][b_stage bytes]
    T *const as = reinterpret_cast<T *>(smem + a.off_a);                  // [s_cap][kBK][kPitchA]
    float *const alpha_s = reinterpret_cast<float *>(smem + a.off_alpha); // [s_cap][E]
    float *const bias_s = reinterpret_cast<float *>(smem + a.off_bias);   // [s_cap][kBM]
    const int e_stage = kBK * a.rp, b_stage = a.b_stage / kEs;            // elements

    const int tid = threadIdx.x, warp = tid >> 5;
    const long long col0 = (long long)blockIdx.x * kBN;
    const int mt = (int)(blockIdx.y % (unsigned int)a.m_tiles);
    const int g = (int)(blockIdx.y / (unsigned int)a.m_tiles);
    const int m0 = mt * kBM;
    const long long col_end = min(col0 + kBN, a.total_cols);
    const int s_first = (int)(col0 / a.pp);
    const int s_count = (int)((col_end - 1) / a.pp) - s_first + 1; // <= s_cap (host)

    const T *const packed = static_cast<const T *>(a.packed);
    const size_t k_row = (size_t)a.experts * a.mg8;
    const size_t w_group = (size_t)g * a.taps * a.cpad * k_row + (size_t)m0;
    const int chunks = kBK * a.experts * kChunksRow; // 16-byte copies of a K step's expert slice
    // Step kt's expert slice -> stage (16-byte cp.async; chunks past Mg8 are zeros).
    auto issue_experts = [&](int kt, T *stage) {
        const int tap = kt / a.ct, ci0 = (kt - tap * a.ct) * kBK;
        const T *src0 = packed + w_group + ((size_t)tap * a.cpad + ci0) * k_row;
        for (int i = tid; i < chunks; i += kThreads) {
            const int r = i / (a.experts * kChunksRow), rem = i - r * (a.experts * kChunksRow);
            const int e = rem / kChunksRow, q = rem - e * kChunksRow;
            T *dst = stage + r * a.rp + e * kEPitch + q * kChunkEl;
            if (m0 + q * kChunkEl < a.mg8)
                __pipeline_memcpy_async(dst, src0 + r * k_row + (size_t)e * a.mg8 + q * kChunkEl, 16);
            else
                tc2_zero16(dst);
        }
    };

    x_loader2<T, kLayout, kVec> xl;
    xl.init(a, col0, g, tid);
    float xv[x_loader2<T, kLayout, kVec>::kVals];

    // Step 0 in flight while alpha and the bias are read.
    issue_experts(0, es);
    if constexpr (kVec) {
        xl.copy_async(a, 0, bs);
    } else {
        xl.fetch(a, 0, xv);
        xl.put(xv, bs);
    }
    __pipeline_commit();

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
    // Tensor-core mix: alpha as the A operand, per sample s scaled by a power
    // of two sc_s (exact) to |alpha / sc_s| < 1 (f16's range; and its
    // subnormals reach only the terms far below the sample's largest), split
    // into hi = dtype(alpha / sc_s) in row s and lo = dtype(alpha / sc_s - hi)
    // in row 4 + s, so that hi*w and lo*w are exact f32 products and their sum
    // carries alpha to ~2^-22 (f16) / 2^-16 (bf16) of the sample's largest
    // alpha: the mixed weight stays an f32 sum rounded once (the numerics
    // contract), up to that. Rows of absent samples and rows 8.. are zeros.
    T *const alpha_mix = reinterpret_cast<T *>(smem + a.off_mix);         // [kMixM][E + 8]
    float *const scale_s = reinterpret_cast<float *>(smem + a.off_scale); // [kMaxSamples]
    if constexpr (kMix) {
        if (tid < kMaxSamples) {
            float mx = 0.0f;
            for (int e = 0; tid < s_count && e < a.experts; ++e) mx = fmaxf(mx, fabsf(alpha_s[tid * a.experts + e]));
            int ex = 0;
            const bool scaled = mx > 0.0f && mx <= 3.4028235e38f; // finite (NaN fails both)
            if (scaled) frexpf(mx, &ex);
            scale_s[tid] = scaled ? ldexpf(1.0f, ex) : 1.0f;
        }
        __syncthreads(); // the scales are written
        constexpr int kMixM = mix_m(kBM);
        const int ap = mix_alpha_pitch(a.experts);
        for (int i = tid; i < kMixM * a.experts; i += kThreads) {
            const int row = i / a.experts, e = i - row * a.experts, s = row & 3;
            float v = 0.0f;
            if (row < 2 * kMaxSamples && s < s_count) {
                const float scaled = alpha_s[s * a.experts + e] / scale_s[s]; // exact: a power of two
                v = row < kMaxSamples ? scaled : scaled - cc_to_float(cc_from_float<T>(scaled));
            }
            alpha_mix[row * ap + e] = cc_from_float<T>(v);
        }
        // Barrier (1) of step 0 orders these stores before the first mix.
    }

    // Mixing slot: K row r, output channels m0 + 8 mq .. +7; samples first_s, first_s + kSplit, ...
    const int slot = tid % kSlots, first_s = tid / kSlots;
    const int r = slot / (kBM / 8), mq = slot - r * (kBM / 8);

    const long long fcol = col0 + 16 * warp;
    const bool f_active = fcol < a.total_cols; // warp-uniform
    const int f_s = f_active ? (int)(fcol / a.pp) - s_first : 0;

    using FT = typename tc2_op<T>::frag;
    constexpr int kK = tc2_op<T>::kK;
    constexpr int kSub = kBK / kK;
    wmma::fragment<wmma::accumulator, 16, 16, kK, float> acc[kFragM];
#pragma unroll
    for (int i = 0; i < kFragM; ++i) wmma::fill_fragment(acc[i], 0.0f);

    for (int kt = 0; kt < a.kt_total; ++kt) {
        const int st = kt & 1;
        const T *const e_cur = es + st * e_stage;
        const T *const b_cur = bs + st * b_stage;
        T *const e_next = es + (st ^ 1) * e_stage;
        T *const b_next = bs + (st ^ 1) * b_stage;
        __pipeline_wait_prior(0); // this thread's copies of step kt
        __syncthreads();          // (1) everyone's; step kt-1's readers of stage st^1 and the A tiles are done
        const bool more = kt + 1 < a.kt_total;
        if (more) {
            issue_experts(kt + 1, e_next);
            if constexpr (kVec)
                xl.copy_async(a, kt + 1, b_next);
            else
                xl.fetch(a, kt + 1, xv); // stored after the MMAs: in flight meanwhile
        }
        __pipeline_commit();

        if constexpr (kMix) {
            // Per unit (K row rr, channels cc*kMixN..): E/16 MMAs into an
            // f32 accumulator, stored to the warp's scratch, then hi + lo rows
            // summed, scaled back and rounded once into the A tiles.
            constexpr int kMixM = mix_m(kBM), kMixN = mix_n(kBM), kScr = mix_scr_pitch(kBM);
            constexpr int kChunksM = kBM / kMixN;
            float *const scr = reinterpret_cast<float *>(smem + a.off_scr) + warp * kMixM * kScr;
            const int lane = tid & 31, ap = mix_alpha_pitch(a.experts);
            for (int u = warp; u < kBK * kChunksM; u += kWarps) {
                const int rr = u / kChunksM, cc = u - rr * kChunksM;
                wmma::fragment<wmma::accumulator, kMixM, kMixN, 16, float> macc;
                wmma::fill_fragment(macc, 0.0f);
                const T *wk = e_cur + rr * a.rp + cc * kMixN;
                for (int q = 0; q < a.experts / 16; ++q) {
                    wmma::fragment<wmma::matrix_a, kMixM, kMixN, 16, T, wmma::row_major> fa;
                    wmma::fragment<wmma::matrix_b, kMixM, kMixN, 16, T, wmma::row_major> fb;
                    wmma::load_matrix_sync(fa, alpha_mix + 16 * q, ap);
                    wmma::load_matrix_sync(fb, wk + (size_t)16 * q * kEPitch, kEPitch);
                    wmma::mma_sync(macc, fa, fb, macc);
                }
                wmma::store_matrix_sync(scr, macc, kScr, wmma::mem_row_major);
                __syncwarp(); // the scratch is complete
                for (int i = lane; i < kMaxSamples * kMixN; i += 32) {
                    const int s = i / kMixN, m = i - s * kMixN;
                    if (s < s_count) {
                        const float v = (scr[s * kScr + m] + scr[(kMaxSamples + s) * kScr + m]) * scale_s[s];
                        as[(size_t)s * kBK * kPitchA + rr * kPitchA + cc * kMixN + m] = cc_from_float<T>(v);
                    }
                }
                __syncwarp(); // the scratch is read before the next unit's store
            }
        } else {
            // Mix from the stage (zeros past Mg8: no bounds test needed).
            float sum[kPer][8];
#pragma unroll
            for (int j = 0; j < kPer; ++j)
#pragma unroll
                for (int i = 0; i < 8; ++i) sum[j][i] = 0.0f;
            const T *wrow = e_cur + r * a.rp + 8 * mq;
#pragma unroll 4
            for (int e = 0; e < a.experts; ++e) {
                float wv[8];
                tc2_lds8<T>(wrow + e * kEPitch, wv);
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
#pragma unroll
            for (int j = 0; j < kPer; ++j) {
                const int s = first_s + j * kSplit;
                if (s < s_count) tc2_store8<T>(as + (size_t)s * kBK * kPitchA + r * kPitchA + 8 * mq, sum[j]);
            }
        }
        __syncthreads(); // (2) the A tiles are complete

        if (f_active) {
            const T *at = as + (size_t)f_s * kBK * kPitchA;
#pragma unroll
            for (int ks = 0; ks < kSub; ++ks) {
                if constexpr (kVec) {
                    wmma::fragment<wmma::matrix_b, 16, 16, kK, FT, wmma::col_major> fb;
                    wmma::load_matrix_sync(fb, b_cur + 16 * warp * kPitchB + ks * kK, kPitchB);
                    if constexpr (std::is_same<T, float>::value) {
                        // cp.async copied raw f32: rounded to TF32 here, as gen 1 rounds when staging.
#pragma unroll
                        for (int t = 0; t < fb.num_elements; ++t) fb.x[t] = wmma::__float_to_tf32(fb.x[t]);
                    }
#pragma unroll
                    for (int i = 0; i < kFragM; ++i) {
                        wmma::fragment<wmma::matrix_a, 16, 16, kK, FT, wmma::col_major> fa;
                        wmma::load_matrix_sync(fa, at + ks * kK * kPitchA + 16 * i, kPitchA);
                        wmma::mma_sync(acc[i], fa, fb, acc[i]);
                    }
                } else {
                    wmma::fragment<wmma::matrix_b, 16, 16, kK, FT, wmma::row_major> fb;
                    wmma::load_matrix_sync(fb, b_cur + ks * kK * kPitchB + 16 * warp, kPitchB);
#pragma unroll
                    for (int i = 0; i < kFragM; ++i) {
                        wmma::fragment<wmma::matrix_a, 16, 16, kK, FT, wmma::col_major> fa;
                        wmma::load_matrix_sync(fa, at + ks * kK * kPitchA + 16 * i, kPitchA);
                        wmma::mma_sync(acc[i], fa, fb, acc[i]);
                    }
                }
            }
        }
        if constexpr (!kVec) {
            if (more) xl.put(xv, b_next); // stage st^1: last read in step kt-1, next in step kt+1
        }
    }

    // Epilogue: the C tile aliases the expert stages (last read by the last
    // step's mix, before its barrier (2); no copy outstanding).
    if (f_active) {
#pragma unroll
        for (int i = 0; i < kFragM; ++i) {
            if (kLayout == CC_LAYOUT_NCHW)
                wmma::store_matrix_sync(cs + 16 * i * kPitchC + 16 * warp, acc[i], kPitchC, wmma::mem_row_major);
            else
                wmma::store_matrix_sync(cs + 16 * warp * kPitchCt + 16 * i, acc[i], kPitchCt, wmma::mem_col_major);
        }
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
        const float acc_v = kLayout == CC_LAYOUT_NCHW ? cs[m * kPitchC + c] : cs[c * kPitchCt + m];
        const float v = cc_activate(a.activation, acc_v + bias_s[s * kBM + m]);
        const size_t o = (size_t)g * a.mg + m0 + m;
        const size_t at =
            kLayout == CC_LAYOUT_NCHW ? ((size_t)n * a.cout + o) * a.p + p : ((size_t)n * a.p + p) * a.cout + o;
        y[at] = cc_from_float<T>(v);
    }
}

struct derived {
    int cin_g, mg, mg8, cpad, taps, ct, kt_total, p, pp, s_cap;
    long long total_cols;
};

constexpr long long kIntMax = 0x7fffffffLL;

__attribute__((format(printf, 3, 4))) void say2(char *reason, size_t len, const char *fmt, ...)
{
    if (reason == nullptr || len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, len, fmt, ap);
    va_end(ap);
}

// Gen 1's checks (dtype, layout, geometry, int ranges), then gen 2's own.
bool derive(const cc_fused_tc_args *a, derived *d, char *reason, size_t len)
{
    char inner[160];
    if (!cc_fused_tc_supported(a, inner, sizeof inner)) {
        say2(reason, len, "gen 2: %s", inner);
        return false;
    }
    if (a->experts > CC_FUSED_TC2_MAX_EXPERTS) {
        say2(reason, len, "gen 2: %d experts, at most %d (the expert stages must fit shared memory twice)", a->experts,
             CC_FUSED_TC2_MAX_EXPERTS);
        return false;
    }
    d->cin_g = a->in_channels / a->groups;
    d->mg = a->out_channels / a->groups;
    d->mg8 = (int)round_up(d->mg, kMPad);
    d->cpad = (int)round_up(d->cin_g, kBK);
    d->taps = a->kernel_h * a->kernel_w; // < 2^31: gen 1 checked
    d->ct = d->cpad / kBK;
    d->kt_total = d->taps * d->ct;
    d->p = a->out_h * a->out_w;
    d->pp = (int)round_up(d->p, 16);
    d->total_cols = (long long)a->n * d->pp;
    const int fps = d->pp / 16;
    d->s_cap = std::min(std::min(1 + (3 + fps - 1) / fps, kMaxSamples), a->n);
    return true;
}

bool col_b_of(const cc_fused_tc_args *a, const derived &d)
{
    return a->layout == CC_LAYOUT_NHWC && d.cin_g % 8 == 0 && cc_aligned16(a->x);
}

// The dynamic shared memory a config reserves. An NHWC layer whose channels
// allow the cp.async input path takes it only when x is 16-byte aligned,
// which is known only at the call (the library chooses configs on NULL
// pointers at prepare, and runs them on pointers of either alignment class),
// so its configs reserve the larger of the two input-tile forms and the
// launch runs either. `both`: that maximum whatever the layout (supported()
// states one E limit for every layout).
size_t smem_need(const cc_fused_tc_args *a, const derived &d, int bm, bool mix, bool both)
{
    const int esize = (int)cc_element_size(a->dtype);
    const size_t row_form = layout_for(bm, d.s_cap, a->experts, esize, false, mix).total;
    if (!both && (a->layout != CC_LAYOUT_NHWC || d.cin_g % 8 != 0)) return row_form;
    return std::max(row_form, layout_for(bm, d.s_cap, a->experts, esize, true, mix).total);
}

// The tallest tile (from `first` down to 16 rows) whose shared memory fits
// `limit` and whose grid fits 65535 rows; 0 if none.
int fit_bm(const cc_fused_tc_args *a, const derived &d, int first, size_t limit, bool mix, bool both, size_t *smem)
{
    for (int bm = first; bm >= 16; bm /= 2) {
        const size_t s = smem_need(a, d, bm, mix, both);
        if (s <= limit && ceil_div(d.mg, bm) * a->groups <= 65535) {
            *smem = s;
            return bm;
        }
    }
    return 0;
}

template <typename T, int kBM, int kLayout, bool kVec, bool kMix>
cudaError_t launch_instance(dim3 grid, size_t smem, cudaStream_t stream, const tc2_params &p)
{
    // Past 48 KiB the kernel needs the opt-in, per instance and device (as
    // fused_conv.cu): granted the first time a launch needs more than so far,
    // minus the kernel's static shared memory (none: it would be added).
    if (smem > 48 * 1024) {
        constexpr int kDevices = 64;
        static std::mutex lock;
        static size_t granted[kDevices] = {};
        int dev = 0;
        cudaError_t err = cudaGetDevice(&dev);
        if (err != cudaSuccess) return err;
        const std::lock_guard<std::mutex> hold(lock);
        size_t *slot = dev >= 0 && dev < kDevices ? &granted[dev] : nullptr;
        if (slot == nullptr || *slot < smem) {
            err = cudaFuncSetAttribute(reinterpret_cast<const void *>(&fused_tc2_kernel<T, kBM, kLayout, kVec, kMix>),
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            if (err != cudaSuccess) return err;
            if (slot != nullptr) *slot = smem;
        }
    }
    return cc_launch(fused_tc2_kernel<T, kBM, kLayout, kVec, kMix>, grid, dim3(kThreads), smem, stream, p);
}

template <typename T, int kLayout, bool kVec, bool kMix>
cudaError_t launch_layout(int bm, dim3 grid, size_t smem, cudaStream_t stream, const tc2_params &p)
{
    if (bm == 64) return launch_instance<T, 64, kLayout, kVec, kMix>(grid, smem, stream, p);
    if (bm == 32) return launch_instance<T, 32, kLayout, kVec, kMix>(grid, smem, stream, p);
    return launch_instance<T, 16, kLayout, kVec, kMix>(grid, smem, stream, p);
}

// f32 never takes the tensor-core mix (cc_fused_tc2_mma_mix_supported): no instances.
template <typename T, int kLayout, bool kVec>
cudaError_t launch_mix(bool mix, int bm, dim3 grid, size_t smem, cudaStream_t stream, const tc2_params &p)
{
    if constexpr (std::is_same<T, float>::value) {
        if (mix) return cudaErrorInvalidValue;
        return launch_layout<T, kLayout, kVec, false>(bm, grid, smem, stream, p);
    } else {
        return mix ? launch_layout<T, kLayout, kVec, true>(bm, grid, smem, stream, p)
                   : launch_layout<T, kLayout, kVec, false>(bm, grid, smem, stream, p);
    }
}

// The tensor-core mix's own conditions beyond gen 2's.
bool mix_ok(const cc_fused_tc_args *a, char *reason, size_t len)
{
    if (a->dtype == CC_DTYPE_F32) {
        say2(reason, len,
             "gen 2 tensor-core mix: f16/bf16 only (TF32 would cut the f32 experts before they are mixed)");
        return false;
    }
    if (a->experts < 16 || a->experts % 16 != 0) {
        say2(reason, len, "gen 2 tensor-core mix: E = %d, needs a multiple of 16 (the MMA's K is 16 experts)",
             a->experts);
        return false;
    }
    return true;
}

int supported(const cc_fused_tc_args *args, bool mix, char *reason, size_t reason_len)
{
    derived d;
    if (!derive(args, &d, reason, reason_len)) return 0;
    if (mix && !mix_ok(args, reason, reason_len)) return 0;
    size_t smem = 0;
    // The 2-byte input path's tile is the larger one for f32; the col-major
    // one for f16: either way the smaller E limit is the one stated.
    if (fit_bm(args, d, 16, kSmemBudget, mix, true, &smem) == 0) {
        say2(reason, reason_len,
             "gen 2%s: %d experts of %zu bytes with %d samples per block: two expert stages do not fit %zu bytes of "
             "shared memory (two blocks per SM) even with 16-row tiles",
             mix ? " tensor-core mix" : "", args->experts, (size_t)cc_element_size(args->dtype), d.s_cap, kSmemBudget);
        return 0;
    }
    if (reason != nullptr && reason_len > 0) reason[0] = '\0';
    return 1;
}

int choose(const cc_fused_tc_args *args, int sm_count, size_t smem_optin, bool mix, cc_fused_tc_config *cfg)
{
    derived d;
    if (cfg == nullptr || !supported(args, mix, nullptr, 0) || !derive(args, &d, nullptr, 0)) return 0;
    if (sm_count < 1) sm_count = 1;
    const long long col_tiles = ceil_div(d.total_cols, kBN);
    const long long blocks64 = col_tiles * ceil_div(d.mg, 64) * args->groups;
    const long long blocks32 = col_tiles * ceil_div(d.mg, 32) * args->groups;
    const int rem = d.mg % 64;
    const bool pad_rule = rem >= 1 && rem <= 32;
    const bool fill_rule = blocks64 < sm_count && blocks32 > blocks64;
    // Gen 1's rule for 64 or 32 rows, then fewer rows until the stages fit.
    const int first = pad_rule || fill_rule ? 32 : 64;
    const size_t limit = std::min(kSmemBudget, smem_optin);
    size_t smem = 0;
    const int bm = fit_bm(args, d, first, limit, mix, false, &smem);
    if (bm == 0) return 0;
    memset(cfg, 0, sizeof *cfg);
    cfg->tile_m = bm;
    cfg->tile_n = kBN;
    cfg->samples_cap = d.s_cap;
    cfg->smem_bytes = smem;
    cfg->mix_mma = mix ? 1 : 0;
    snprintf(
        cfg->reason, sizeof cfg->reason,
        "gen 2 (cp.async 2 stages%s): wmma %dx%d tile, <= %d samples/block, %lld blocks on %d SMs, %zu B smem (%s)",
        mix ? ", mix on tensor cores" : "", bm, kBN, d.s_cap, col_tiles * ceil_div(d.mg, bm) * args->groups, sm_count,
        smem,
        bm < first  ? "stages fit 2 blocks/SM"
        : pad_rule  ? "Mg mod 64 <= 32"
        : fill_rule ? "64-row tiles leave SMs idle"
                    : "default");
    return 1;
}

} // namespace

extern "C" int cc_fused_tc2_supported(const cc_fused_tc_args *args, char *reason, size_t reason_len)
{
    return supported(args, false, reason, reason_len);
}

extern "C" int cc_fused_tc2_mma_mix_supported(const cc_fused_tc_args *args, char *reason, size_t reason_len)
{
    return supported(args, true, reason, reason_len);
}

extern "C" int cc_fused_tc2_choose(const cc_fused_tc_args *args, int sm_count, size_t smem_optin,
                                   cc_fused_tc_config *cfg)
{
    return choose(args, sm_count, smem_optin, false, cfg);
}

extern "C" int cc_fused_tc2_choose_mma_mix(const cc_fused_tc_args *args, int sm_count, size_t smem_optin,
                                           cc_fused_tc_config *cfg)
{
    return choose(args, sm_count, smem_optin, true, cfg);
}

extern "C" cudaError_t cc_launch_fused_tc2(const cc_fused_tc_args *args, const cc_fused_tc_config *cfg,
                                           cudaStream_t stream)
{
    derived d;
    if (cfg == nullptr || !derive(args, &d, nullptr, 0)) return cudaErrorInvalidValue;
    const bool mix = cfg->mix_mma != 0;
    if ((cfg->mix_mma != 0 && cfg->mix_mma != 1) || (mix && !mix_ok(args, nullptr, 0))) return cudaErrorInvalidValue;
    const int bm = cfg->tile_m;
    if ((bm != 16 && bm != 32 && bm != 64) || cfg->tile_n != kBN || cfg->samples_cap != d.s_cap)
        return cudaErrorInvalidValue;
    const size_t esize = cc_element_size(args->dtype);
    if (args->x == nullptr || args->y == nullptr || args->alpha == nullptr || args->packed == nullptr ||
        !cc_aligned16(args->packed) || (uintptr_t)args->x % esize != 0 || (uintptr_t)args->y % esize != 0)
        return cudaErrorInvalidValue;
    const bool col_b = col_b_of(args, d);
    const smem_layout l = layout_for(bm, d.s_cap, args->experts, (int)esize, col_b, mix);
    if (cfg->smem_bytes != smem_need(args, d, bm, mix, false) || cfg->smem_bytes > kSmemBudget)
        return cudaErrorInvalidValue; // (l.total <= smem_need: the form this call runs fits)
    const long long col_tiles = ceil_div(d.total_cols, kBN);
    const long long m_tiles = ceil_div(d.mg, bm);
    if (col_tiles > kIntMax || m_tiles * args->groups > 65535) return cudaErrorInvalidValue;

    tc2_params p;
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
    p.s_cap = d.s_cap;
    p.m_tiles = (int)m_tiles;
    p.activation = args->activation;
    p.rp = l.rp;
    p.off_b = (int)l.b;
    p.b_stage = (int)l.b_stage;
    p.off_a = (int)l.a;
    p.off_alpha = (int)l.alpha;
    p.off_bias = (int)l.bias;
    p.off_mix = (int)l.mix;
    p.off_scale = (int)l.scale;
    p.off_scr = (int)l.scr;

    const dim3 grid((unsigned int)col_tiles, (unsigned int)(m_tiles * args->groups));
    return cc_dispatch_dtype(args->dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        if (args->layout == CC_LAYOUT_NCHW)
            return launch_mix<T, CC_LAYOUT_NCHW, false>(mix, bm, grid, cfg->smem_bytes, stream, p);
        return col_b ? launch_mix<T, CC_LAYOUT_NHWC, true>(mix, bm, grid, cfg->smem_bytes, stream, p)
                     : launch_mix<T, CC_LAYOUT_NHWC, false>(mix, bm, grid, cfg->smem_bytes, stream, p);
    });
}
