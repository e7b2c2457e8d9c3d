// Fused CondConv convolution, strict f32 (FMA on the CUDA cores): the
// per-sample kernels W_n = sum_e alpha[n][e] W_e are mixed tile by tile in
// shared memory inside the convolution and never written to global memory.
//
// Per sample n and group g the convolution is a GEMM
//   Y[n][g] (Mg x P) = W_n[g] (Mg x K) * X[n][g] (K x P),
//   Mg = Cout/g, P = out_h*out_w, K = taps * Cin/g (implicit: X is read from
//   the input windows directly, zeros outside the image; no gathered copy).
// A block computes a BM x BN tile: BM output channels of one group by BN
// output columns, a column being a pixel of a sample. Columns are handed
// out in "quads" (4 consecutive pixels of one sample, a sample's last quad
// padded): a block owns a run of consecutive quads of the flattened
// (sample, quad) list, so it spans S samples (BN/4 quads over ceil(P/4)
// per sample, plus one where the run straddles a sample boundary; or
// exactly BN/4 / ceil(P/4) samples when runs are whole samples), and every
// thread's 4 columns lie in one sample. Per K step of 16 rows (within one
// kernel tap: the packed expert layout pads each tap's channels to 16):
//   1. mix: a thread owns 4 consecutive weights of the BM x 16 tile (one
//      16-byte load per expert) and mixes them for every sample of the
//      block, [S x E] x [E x tile], with alpha from shared memory; the S
//      mixed tiles go to shared memory. The experts are read from L2 once
//      per block and K step: once per BN columns, not per sample's P.
//   2. stage the 16 x BN input tile: 16-byte loads for a 1x1 stride-1
//      unpadded NCHW layer with P % 4 == 0 and an aligned x, else 4-byte
//      loads from window origins computed once per thread, zeros outside the
//      image (NHWC always: a step's 16 rows are 16 adjacent channels of a pixel;
//      with config.nhwc_loader = 1, the candidate x_loader_nhwc_cm reads them
//      channel-fastest, 16 bytes at a time where aligned: see there).
//   3. product: a thread owns 8 output channels x 1 or 2 quads (8x4 or 8x8
//      outputs in registers) and reads 16-byte fragments of its sample's
//      mixed tile and of the input tile.
// Double-buffered shared memory, and every global load of step t+1 (input
// tile, and the first 8 or 4 experts of the mixing) is issued before the
// product of step t and consumed after it: the product hides the L2
// latency, and one barrier per K step suffices. Experts past those are
// loaded after the product, in groups, with the partial mixes kept in shared
// memory. Epilogue: + per-sample bias (mixed from the expert biases in the
// prologue), activation (cc_activate), 16-byte stores where aligned (NCHW;
// NHWC y[n][p][o] takes scalar stores, a quad's pixels being Cout apart;
// nhwc_loader 1 stores a pixel's 8 channels, 16 bytes at a time where aligned).
//
// Split-K (config.splits > 1) cuts K into ranges when the output tiles do
// not fill the GPU (7x7 layers, even at batch 128: 1152->192 has 78 tiles of
// 64x256): every block writes its partial tile to a workspace, and the last
// block of a tile to count itself (one atomic counter per tile, the
// threadFenceReduction pattern of kernels/routing.cu) sums the partials in
// split order (deterministic whichever block is last), adds bias and
// activation, and resets the counter to zero for the next launch. The
// partials are laid out as an NCHW y whatever the layout.
//
// Tile instances, each in the NCHW 16-byte and window input paths and the
// NHWC window path, and the NHWC channel-major candidate (16 kernels; the
// layout and the NHWC loader are template parameters):
//   64x256  256 thr, 8x8/thread, 1 block/SM (~225 regs: 8 experts and the
//           input prefetched). Least L2 traffic: 4*(E/256 + 1/64) B/FMA.
//   64x128  256 thr, 8x4, 2 blocks/SM (<= 128 regs, 4 experts prefetched):
//           twice the blocks of 64x256, for grids that do not fill the GPU.
//   32x256  256 thr, 8x4, 2 blocks/SM: narrow Mg (112 wastes less), or more
//           blocks along channels.
//   32x128  128 thr, 8x4, 4 blocks/SM: the smallest problems.
//
// Choice (cc_fused_choose), over tile, column run (as long as shared memory
// allows, or whole samples so that no sample is mixed by two blocks) and
// split-K factor: the cost model estimates the time per SM as the largest of
//   FMA:  blocks per SM x (product FMAs + 1.5 x mixing FMAs)
//         / (128 FMA/clk x 0.75 x hiding), hiding = min(1, 0.4 + 0.6 x
//         accumulators in flight per SM / 512), + 700 clk per K step per
//         late expert group (an L2 round trip only other resident blocks
//         hide), + 2000 clk of fill and drain per round of resident blocks;
//   L2:   bytes the blocks load (E*BM + BN floats per K row, split-K
//         partials) / 24 B/clk/SM (~5.5 TB/s over 132 SMs at 1.755 GHz);
//   DRAM: x + y + packed experts + partials / 14.5 B/clk/SM (3.35 TB/s);
// and keeps the fastest, preferring fewer splits and larger tiles within 3%.
// The constants (0.75 of peak for a SIMT SGEMM, 1.5 for mixing's shared-
// memory round trip, the latencies) are leads for the GPU bench to correct,
// not measurements; the reason string names the tile, run, S, split-K,
// blocks, residency, the estimate and what bounds it.
//
// Floors on an H100 SXM (datasheet 67 TFLOP/s FMA, ~51 by cuBLAS SGEMM;
// 3.35 TB/s), E = 8, us: compute = (convolution + mixing FLOPs) / 51 T
// (mixing is N*E*|W| FMAs, E/P of the convolution: 4% at 14x14, 16% at
// 7x7); memory = (x + y + E*|W|) / 3.35 TB/s. Every layer is compute-bound in
// f32 (arithmetic intensity 32-110 FLOP/B against a ridge of 15), so where it
// lands is FMA efficiency. "model" is cc_fused_choose's estimate: PREDICTED,
// NOT MEASURED (no GPU has run this kernel yet). Static cuDNN strict f32 on
// an H200 ran 112->672 in 41/148 us (N = 32/128) and 1152->192 in 49/121 us
// (bench/anchors), i.e. 2.1-3.1x its compute floor.
//   layer       N    GFLOP  compute  memory | model  x floor  tile   split-K
//   80->480@14   32  0.48     9.8     4.6   |  18.6   1.90   64x256   1
//   80->480@14  128  1.93    39.3    17.1   |  58.5   1.49   64x256   1
//   112->672@14  32  0.94    19.3     6.6   |  32.0   1.66   32x256   1
//   112->672@14 128  3.78    77.1    24.2   | 118.8   1.54   64x256   1
//   480->112@14  32  0.67    13.8     4.9   |  23.0   1.67   64x256   5
//   480->112@14 128  2.70    55.1    18.2   |  80.9   1.47   64x256   2
//   672->112@14  32  0.94    19.3     6.6   |  31.2   1.62   64x256   5
//   672->112@14 128  3.78    77.1    24.2   | 111.9   1.45   64x256   2
//   672->192@7   32  0.40     9.2     2.9   |  15.0   1.63   64x256   6
//   672->192@7  128  1.62    36.9     7.7   |  53.4   1.45   64x256   5
//   192->1152@7  32  0.69    15.8     4.6   |  24.9   1.58   64x256   1
//   192->1152@7 128  2.77    63.3    12.2   |  99.7   1.58   64x256   1
//   1152->192@7  32  0.69    15.8     4.6   |  24.9   1.58   64x256   6
//   1152->192@7 128  2.77    63.3    12.2   |  89.1   1.41   64x256   5
//   1152->320@7  32  1.16    26.4     6.3   |  43.1   1.63   64x256   7
//   1152->320@7 128  4.62   105.5    14.5   | 143.9   1.36   64x256   1
// (bench/dev/fused_dev.cu --model prints this table from the same code.)
// Against the measured static times above the model is at 0.5-0.8x static,
// so the 1.1x target holds if the kernel runs within ~1.4-2x of the model.
//
// E sweep: mixing is N*E*|W| FMAs, which strict f32 cannot avoid, so at 7x7
// t(E=32)/t(E=1) >= (49+32)/(49+1) = 1.62 with perfect overlap; at 14x14 the
// FMA bound is (196+32)/(196+1) = 1.16. Beyond that, expert traffic is
// 4E/BN bytes per FMA (0.5 B/FMA at E = 32 on 64x256: L2-bound) and the
// experts past the prefetched 8 wait on L2 after the product; the model
// puts t(E=32)/t(E=1) at 2.3-3.0. The 1.3 target needs expert tiles shared
// between blocks (thread-block clusters with distributed shared memory, or
// TMA multicast: not in the CPU execution layer) and the late expert groups
// loaded during the product; see the report of issue 13.
//
// No inline PTX: the kernels also run on the CPU execution layer
// (tests/cuda_cpu). Validated there by tests/cuda_cpu/test_fused_conv.cpp and
// on a GPU by bench/dev/fused_dev.cu.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <type_traits>

#include "common.cuh"
#include "fused_checks.cuh"
#include "fused_conv.h"

namespace {

constexpr int kBK = CC_FUSED_CHANNEL_PAD; // K step = the channel padding: a K step never straddles a tap

// Everything the kernels need, by value (a reference to a kernel parameter
// would force a local-memory copy of it).
struct fused_params {
    const float *x, *alpha, *bias, *packed;
    float *y, *partial;
    unsigned int *counters;
    long long hw, total_quads, y_elems, kk_stride; // kk_stride: floats per packed K row = E * mg4
    int cin, cout, cin_g, mg, mg4, experts, e_pad, kk, ct, kt_total, splits;
    int h, w, out_w, p, gp;
    int kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top, pad_left;
    int qb, s_cap, m_tiles, activation, vec_out;
    int nhwc_vec_x, nhwc_vec_y; // nhwc_loader 1 only: 16-byte x loads, 16-byte y stores
};

// Tile geometry. kQPT quads per thread: 8x8 (2) or 8x4 (1) outputs.
template <int kBM, int kBN, int kQPT>
struct tile_shape {
    static constexpr int kThreads = kBM * kBN / (32 * kQPT);
    static constexpr int kRowGroups = kBM / 8;
    static constexpr int kQuadSlots = kBN / 4 / kQPT;
    static constexpr int kWarpsM = kRowGroups / 4; // a warp covers 4 row groups x 8 quad slots
    // +4 floats between the samples' mixed tiles: two samples read in one
    // quarter warp fall on different banks; keeps 16-byte alignment.
    static constexpr int kAStride = kBK * kBM + 4;
    static constexpr int kSlots = kBK * kBM / 4; // float4 slots of a mixed tile
    static constexpr int kMixSplit = kThreads / kSlots;
    // 2 blocks of 256 (or 4 of 128) threads per SM need <= 128 registers;
    // the 8x8 tile keeps its input and expert prefetch in registers at 1.
    static constexpr int kMinBlocks = kQPT == 2 ? 1 : 512 / kThreads;
    // Experts whose 16-byte loads a mixing thread holds in registers across
    // the product: 8 (E = 8 fully prefetched) where registers allow, else 4.
    static constexpr int kExpertChunk = kQPT == 2 ? 8 : 4;
    static_assert(kBM == 32 || kBM == 64, "8-row groups in 4-lane warp columns");
    static_assert(kRowGroups * kQuadSlots == kThreads, "one product micro-tile per thread");
    static_assert(kMixSplit >= 1 && kMixSplit * kSlots == kThreads, "one mixing slot per thread");
    static_assert(kThreads % kBN == 0 || kBN % kThreads == 0, "input rows split evenly");
    static_assert(kBK * kBN % kThreads == 0 && kBK * kBN % (4 * kThreads) == 0, "whole input loads per thread");
};

__device__ __forceinline__ float4 zero4() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }

__device__ __forceinline__ void fma4(float4 &acc, float a, const float4 &w)
{
    acc.x = fmaf(a, w.x, acc.x);
    acc.y = fmaf(a, w.y, acc.y);
    acc.z = fmaf(a, w.z, acc.z);
    acc.w = fmaf(a, w.w, acc.w);
}

// Input tile loader, 4-byte path: any kernel size, stride, dilation and
// padding. A thread owns one column (a pixel of a sample) for the whole K
// loop, so its window origin is computed once; a K step has one tap, so the
// bounds test is once per step and the thread's rows are one plane apart
// (NCHW) or adjacent channels of one pixel (NHWC). Consecutive threads take
// consecutive pixels: coalesced along x rows in NCHW, Cin floats apart in NHWC.
template <int kBN, int kThreads, int kLayout>
struct x_loader_window {
    static constexpr bool kSwizzled = false; // the input tile is plain [kBK][kBN]
    static constexpr bool kNhwc = kLayout == CC_LAYOUT_NHWC;
    static constexpr int kRows = kBK * kBN / kThreads; // rows per thread
    static constexpr int kRowStep = kThreads / kBN;    // threads per column
    const float *col;
    int iy0, ix0, c, r0;
    bool ok;
    float v[kRows];

    __device__ __forceinline__ void init(const fused_params &a, long long q0, int g, int tid)
    {
        c = tid % kBN;
        r0 = tid / kBN;
        const int lq = c >> 2;
        const long long q = q0 + lq;
        ok = lq < a.qb && q < a.total_quads;
        const long long n = ok ? q / a.gp : 0;
        const int p = ok ? 4 * (int)(q - n * a.gp) + (c & 3) : 0;
        ok = ok && p < a.p;
        const int oy = p / a.out_w, ox = p - oy * a.out_w;
        iy0 = oy * a.stride_h - a.pad_top;
        ix0 = ox * a.stride_w - a.pad_left;
        if (kNhwc) // the group's channel 0 of pixel 0
            col = a.x + (size_t)n * (size_t)a.hw * a.cin + (size_t)g * a.cin_g;
        else
            col = a.x + ((size_t)n * a.cin + (size_t)g * a.cin_g) * (size_t)a.hw;
    }

    __device__ __forceinline__ void load(const fused_params &a, int kt)
    {
        const int tap = kt / a.ct;
        const int ci0 = (kt - tap * a.ct) * kBK + r0;
        const int ky = tap / a.kernel_w, kx = tap - ky * a.kernel_w;
        const int iy = iy0 + ky * a.dilation_h, ix = ix0 + kx * a.dilation_w;
        const bool in = ok && iy >= 0 && iy < a.h && ix >= 0 && ix < a.w;
        const size_t pix = (size_t)iy * a.w + ix;
        const float *src = !in ? a.x : kNhwc ? col + pix * a.cin + ci0 : col + (size_t)ci0 * (size_t)a.hw + pix;
        const size_t row_step = kNhwc ? (size_t)kRowStep : (size_t)kRowStep * (size_t)a.hw;
#pragma unroll
        for (int j = 0; j < kRows; ++j)
            v[j] = (in && ci0 + j * kRowStep < a.cin_g) ? __ldg(src + (size_t)j * row_step) : 0.0f;
    }

    __device__ __forceinline__ void store(float *bs) const
    {
#pragma unroll
        for (int j = 0; j < kRows; ++j) bs[(r0 + j * kRowStep) * kBN + c] = v[j];
    }
};

// Input tile loader, 16-byte path (1x1, stride 1, no padding, P % 4 == 0,
// x aligned): a quad is 4 consecutive floats of a channel plane, and
// kBN/4 consecutive threads read one row of quads.
template <int kBN, int kThreads>
struct x_loader_vec {
    static constexpr bool kSwizzled = false;
    static constexpr int kQuads = kBN / 4;
    static constexpr int kRowStep = kThreads / kQuads;
    static constexpr int kPasses = kBK / kRowStep;
    const float *col;
    int lq, r0;
    bool ok;
    float4 v[kPasses];

    __device__ __forceinline__ void init(const fused_params &a, long long q0, int g, int tid)
    {
        lq = tid % kQuads;
        r0 = tid / kQuads;
        const long long q = q0 + lq;
        ok = lq < a.qb && q < a.total_quads;
        const long long n = ok ? q / a.gp : 0;
        const long long gq = ok ? q - n * a.gp : 0;
        col = a.x + ((size_t)n * a.cin + (size_t)g * a.cin_g) * (size_t)a.hw + 4 * gq;
    }

    __device__ __forceinline__ void load(const fused_params &a, int kt)
    {
        const int ci0 = kt * kBK + r0; // one tap: K steps are channel steps
#pragma unroll
        for (int j = 0; j < kPasses; ++j) {
            const int ci = ci0 + j * kRowStep;
            v[j] = (ok && ci < a.cin_g) ? __ldg(reinterpret_cast<const float4 *>(col + (size_t)ci * (size_t)a.hw))
                                        : zero4();
        }
    }

    __device__ __forceinline__ void store(float *bs) const
    {
#pragma unroll
        for (int j = 0; j < kPasses; ++j) *reinterpret_cast<float4 *>(bs + (r0 + j * kRowStep) * kBN + 4 * lq) = v[j];
    }
};

// Column swizzle of the input tile for x_loader_nhwc_cm: row r's column c is
// stored at c ^ nhwc_swizzle(r), an XOR of column bit 4 (whole quads, so the
// product's 16-byte reads stay aligned and within their 32-float group).
__host__ __device__ constexpr int nhwc_swizzle(int r) { return ((r >> 2) & 1) << 4; }

// x_loader_nhwc_cm keeps a window origin's coordinates + this in 16 bits
// each: both must lie in [-kOriginBias, kOriginBias).
constexpr int kOriginBias = 1 << 15;

// Input tile loader for NHWC, channel-major: nhwc_loader 1, a CANDIDATE of
// issue 19 that AUTO times against x_loader_window (nhwc_loader 0) at
// prepare on the user's GPU; no GPU has measured it yet, so it never
// replaces loader 0 and is never chosen without that measurement.
//
// Why it should be faster. A K step's 16 rows are 16 adjacent channels of
// one tap, i.e. 64 contiguous bytes of each pixel in NHWC. x_loader_window
// gives consecutive threads consecutive pixels: one warp request reads one
// float from each of 32 pixels Cin floats apart, 32 sectors (32 B) for 128
// useful bytes, and a thread issues 16 such requests per step (64x256):
// 512 sector lookups (and 16 load instructions per thread) per warp and
// step for 2 KiB. Here two consecutive lanes share a pixel, lane h of it
// owning channels 4h..4h+3 and 8+4h..8+4h+3: a warp request reads
// channels 0-7 (or 8-15) of 16 pixels, 16-byte vectors, 32 contiguous
// bytes per pixel: 16 sectors (32 when a pixel's channels are not 32-byte
// aligned) for 512 useful bytes, and a thread issues 4 requests per step:
// 64 sector lookups per warp and step for 2 KiB, 8x fewer, and 4x fewer
// load instructions (LSU issue slots, L1 wavefronts). Two lanes per pixel
// rather than four keep the per-slot window origins to 2 slots a thread
// (4 would spill the 128-register tiles). Without 16-byte alignment (x, or
// Cin/groups not a multiple of 4 floats: every channel offset must be)
// the same channels are read with 4-byte loads: a request reads 2 floats
// 16 bytes apart in one or two sectors of each of 16 pixels (16-32 sectors
// for 128 bytes, against 32 for loader 0).
//
// Shared memory: the same [kBK][kBN] tile as x_loader_window, columns
// swizzled. Unswizzled, the two lanes holding one pixel would write two
// rows (4 apart) of one column, and a row is a multiple of 32 floats: one
// bank, 2-way conflicts on every store. With the column XORed by
// nhwc_swizzle(row) (bit 4 from row bit 2, which is h), a store
// instruction's 16 pixels x 2 lanes land on 32 different banks. The
// product reads a row's 8 consecutive quads per quarter warp (an aligned
// 32-float group, permuted by the XOR): conflict-free as before.
//
// What a GPU must confirm: the time against loader 0 per shape (AUTO's
// measurement at prepare; bench/dev/fused_dev.cu prints both); that the
// loads stay hidden behind the product with 2 pixel slots per thread
// instead of 1 (scripts/check-spills.sh holds every instance to 0 spill
// bytes); and the sectors per request of the x loads and y stores in
// Nsight Compute (l1tex__t_sectors_pipe_lsu_mem_global_op_{ld,st} /
// l1tex__t_requests_pipe_lsu_mem_global_op_{ld,st}).
template <int kBN, int kThreads>
struct x_loader_nhwc_cm {
    static constexpr bool kSwizzled = true;
    static constexpr int kPixels = kThreads / 2;              // pixels per pass: 2 lanes per pixel
    static constexpr int kSlots = kBK * kBN / (8 * kThreads); // pixel slots per thread, kPixels apart
    static_assert(kSlots >= 1 && kSlots * kPixels == kBN, "whole pixels per pass");
    static_assert(kThreads % 32 == 0 && kBN % 32 == 0, "16 pixels x 2 lanes per warp, 32-column swizzle");
    // Registers are tight (the 32-row tiles run at 128 and the swizzled
    // product reads need a second address), so the state is 32-bit: per
    // slot the sample (-1 for a column past the run or its sample) and the
    // window origin (iy0, ix0), each + kOriginBias in 16 bits
    // (cc_fused_nhwc_loader_supported keeps them in range); the lane's
    // column and h come from threadIdx when needed.
    int n_[kSlots];
    unsigned int origin[kSlots];
    int goff;            // the group's channel 0 + this lane's 4h
    float4 v[kSlots][2]; // channels 4h.. and 8+4h.. of the step

    __device__ __forceinline__ void init(const fused_params &a, long long q0, int g, int tid)
    {
        const int h = tid & 1, pix0 = ((tid & 31) >> 1) + 16 * (tid >> 5);
        goff = g * a.cin_g + 4 * h;
#pragma unroll
        for (int j = 0; j < kSlots; ++j) {
            const int c = pix0 + j * kPixels;
            const int lq = c >> 2;
            const long long q = q0 + lq;
            bool ok = lq < a.qb && q < a.total_quads;
            const long long n = ok ? q / a.gp : 0;
            const int p = ok ? 4 * (int)(q - n * a.gp) + (c & 3) : 0;
            ok = ok && p < a.p;
            const int oy = p / a.out_w, ox = p - oy * a.out_w;
            origin[j] = (unsigned int)(oy * a.stride_h - a.pad_top + kOriginBias) << 16 |
                        (unsigned int)(ox * a.stride_w - a.pad_left + kOriginBias);
            n_[j] = ok ? (int)n : -1;
        }
    }

    __device__ __forceinline__ void load(const fused_params &a, int kt)
    {
        const int tap = kt / a.ct;
        const int ci0 = (kt - tap * a.ct) * kBK;
        const int ky = tap / a.kernel_w, kx = tap - ky * a.kernel_w;
        const int dy = ky * a.dilation_h, dx = kx * a.dilation_w;
        const int ci = ci0 + 4 * (int)(threadIdx.x & 1); // this lane's first channel in the step
#pragma unroll
        for (int j = 0; j < kSlots; ++j) {
            const int iy = (int)(origin[j] >> 16) - kOriginBias + dy;
            const int ix = (int)(origin[j] & 0xffffu) - kOriginBias + dx;
            const bool in = n_[j] >= 0 && iy >= 0 && iy < a.h && ix >= 0 && ix < a.w;
            const float *src =
                in ? a.x + ((size_t)n_[j] * (size_t)a.hw + (size_t)iy * a.w + ix) * a.cin + goff + ci0 : a.x;
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                const int cs = ci + 8 * s;
                if (a.nhwc_vec_x) { // a kernel parameter: uniform, no register
                    // cin_g % 4 == 0 here: 4 channels are wholly below cin_g or wholly past it.
                    v[j][s] = (in && cs < a.cin_g) ? __ldg(reinterpret_cast<const float4 *>(src + 8 * s)) : zero4();
                } else {
                    v[j][s].x = (in && cs < a.cin_g) ? __ldg(src + 8 * s) : 0.0f;
                    v[j][s].y = (in && cs + 1 < a.cin_g) ? __ldg(src + 8 * s + 1) : 0.0f;
                    v[j][s].z = (in && cs + 2 < a.cin_g) ? __ldg(src + 8 * s + 2) : 0.0f;
                    v[j][s].w = (in && cs + 3 < a.cin_g) ? __ldg(src + 8 * s + 3) : 0.0f;
                }
            }
        }
    }

    __device__ __forceinline__ void store(float *bs) const
    {
        const int tid = (int)threadIdx.x, h = tid & 1, pix0 = ((tid & 31) >> 1) + 16 * (tid >> 5);
#pragma unroll
        for (int j = 0; j < kSlots; ++j) {
            const int c = pix0 + j * kPixels;
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                const int r = 4 * h + 8 * s; // rows r..r+3: all with row bit 2 = h
                float *dst = bs + r * kBN + (c ^ nhwc_swizzle(r));
                dst[0] = v[j][s].x;
                dst[kBN] = v[j][s].y;
                dst[2 * kBN] = v[j][s].z;
                dst[3 * kBN] = v[j][s].w;
            }
        }
    }
};

// Mixing of a K step: as[s][r][m] = sum_e alpha[s][e] * W_e[k0 + r][m0 + m]
// for the S samples of the block. A thread owns one slot (4 consecutive
// weights of one row) for the whole K loop and, when there are more threads
// than slots, every kMixSplit-th sample. load() issues the 16-byte loads of
// the first kExpertChunk experts before the product, so that finish() after
// it finds them in registers; later experts are loaded in finish(), a chunk
// at a time, with the partial sums kept in shared memory between chunks, so
// any E runs in a fixed number of registers. Sums run in expert order.
template <int kBM, int kBN, int kQPT>
struct expert_mixer {
    using T = tile_shape<kBM, kBN, kQPT>;
    const float *src; // this slot's weights of expert 0 in K row 0 of the group
    int dst, first_s; // slot offset in a mixed tile, first sample
    bool m_ok;
    float4 wv[T::kExpertChunk];

    __device__ __forceinline__ void init(const fused_params &a, int g, int m0, int tid)
    {
        const int slot = tid % T::kSlots;
        first_s = tid / T::kSlots;
        const int r = slot / (kBM / 4), mq = slot - r * (kBM / 4);
        const int m = m0 + 4 * mq;
        m_ok = m < a.mg4;
        src = m_ok ? a.packed + ((size_t)g * a.kk + r) * (size_t)a.kk_stride + m : a.packed;
        dst = r * kBM + 4 * mq;
    }

    __device__ __forceinline__ void load_chunk(const fused_params &a, const float *row, int e0)
    {
#pragma unroll
        for (int j = 0; j < T::kExpertChunk; ++j)
            wv[j] = (m_ok && e0 + j < a.experts)
                        ? __ldg(reinterpret_cast<const float4 *>(row + (size_t)(e0 + j) * a.mg4))
                        : zero4();
    }

    __device__ __forceinline__ const float *row(const fused_params &a, int kt) const
    {
        return m_ok ? src + (size_t)kt * kBK * (size_t)a.kk_stride : src;
    }

    __device__ __forceinline__ void load(const fused_params &a, int kt) { load_chunk(a, row(a, kt), 0); }

    __device__ __forceinline__ void finish(const fused_params &a, int kt, float *as, const float *alpha_s, int s_count)
    {
        for (int e0 = 0; e0 < a.experts; e0 += T::kExpertChunk) {
            if (e0 > 0) load_chunk(a, row(a, kt), e0);
            for (int s = first_s; s < s_count; s += T::kMixSplit) {
                float *out = as + s * T::kAStride + dst;
                float4 acc = e0 == 0 ? zero4() : *reinterpret_cast<const float4 *>(out);
                const float *al = alpha_s + s * a.e_pad + e0;
#pragma unroll
                for (int j = 0; j < T::kExpertChunk; j += 4) {
                    if (e0 + j >= a.experts) break; // uniform: E = 1 does 4 FMAs, not 8
                    const float4 al4 = *reinterpret_cast<const float4 *>(al + j);
                    fma4(acc, al4.x, wv[j]);
                    fma4(acc, al4.y, wv[j + 1]);
                    fma4(acc, al4.z, wv[j + 2]);
                    fma4(acc, al4.w, wv[j + 3]);
                }
                *reinterpret_cast<float4 *>(out) = acc;
            }
        }
    }
};

// Stores 4 consecutive outputs of one row (a quad), 16 bytes at once when
// the plane allows, else only the pixels below P.
__device__ __forceinline__ void store_quad(float *dst, float4 v, bool vec, int valid)
{
    if (vec) {
        *reinterpret_cast<float4 *>(dst) = v;
        return;
    }
    dst[0] = v.x;
    if (valid > 1) dst[1] = v.y;
    if (valid > 2) dst[2] = v.z;
    if (valid > 3) dst[3] = v.w;
}

__device__ __forceinline__ float4 load_quad_cg(const float *src, bool vec, int valid)
{
    if (vec) return __ldcg(reinterpret_cast<const float4 *>(src));
    float4 v = zero4();
    v.x = __ldcg(src);
    if (valid > 1) v.y = __ldcg(src + 1);
    if (valid > 2) v.z = __ldcg(src + 2);
    if (valid > 3) v.w = __ldcg(src + 3);
    return v;
}

// kNhwcLoader (cc_fused_config.nhwc_loader) is a template parameter, like
// kVecX, because it fixes the input tile's shared-memory layout (swizzled
// columns) that the product's reads must match at compile time, and the
// loader's registers; a runtime branch would put the swizzle's index
// arithmetic into loader 0's inner loop.
template <int kBM, int kBN, int kQPT, bool kVecX, int kLayout, int kNhwcLoader>
__global__ void __launch_bounds__(tile_shape<kBM, kBN, kQPT>::kThreads, tile_shape<kBM, kBN, kQPT>::kMinBlocks)
    fused_conv_kernel(const fused_params a)
{
    using T = tile_shape<kBM, kBN, kQPT>;
    static_assert(!kVecX || kLayout == CC_LAYOUT_NCHW, "the 16-byte input path is NCHW's");
    static_assert(kNhwcLoader == 0 || (kNhwcLoader == 1 && kLayout == CC_LAYOUT_NHWC && !kVecX),
                  "the channel-major loader is NHWC's");
    constexpr bool kChannelMajor = kNhwcLoader == 1;
    using loader =
        typename std::conditional<kChannelMajor, x_loader_nhwc_cm<kBN, T::kThreads>,
                                  typename std::conditional<kVecX, x_loader_vec<kBN, T::kThreads>,
                                                            x_loader_window<kBN, T::kThreads, kLayout>>::type>::type;

    CC_DYNAMIC_SHARED(float4, cc_fused_smem);
    __shared__ int is_last;
    float *const as = reinterpret_cast<float *>(cc_fused_smem); // [2][s_cap][kAStride] mixed tiles
    const int as_buf = a.s_cap * T::kAStride;
    float *const bs = as + 2 * as_buf;                 // [2][kBK][kBN] input tiles
    float *const alpha_s = bs + 2 * kBK * kBN;         // [s_cap][e_pad]
    float *const bias_s = alpha_s + a.s_cap * a.e_pad; // [s_cap][kBM]

    const int tid = threadIdx.x;
    const long long q0 = (long long)blockIdx.x * a.qb;
    const int mt = (int)(blockIdx.y % (unsigned int)a.m_tiles);
    const int g = (int)(blockIdx.y / (unsigned int)a.m_tiles);
    const int m0 = mt * kBM;
    const int split = (int)blockIdx.z;
    const int kt_begin = (int)((long long)split * a.kt_total / a.splits);
    const int kt_end = (int)((long long)(split + 1) * a.kt_total / a.splits);
    const long long q_end = min(q0 + a.qb, a.total_quads);
    const int s_first = (int)(q0 / a.gp);
    const int s_count = (int)((q_end - 1) / a.gp) - s_first + 1;

    loader xl;
    xl.init(a, q0, g, tid);
    expert_mixer<kBM, kBN, kQPT> mx;
    mx.init(a, g, m0, tid);
    // The first step's loads fly while alpha and the bias are set up.
    xl.load(a, kt_begin);
    mx.load(a, kt_begin);

    // Routing weights of the block's samples, zero-padded to whole chunks.
    for (int i = tid; i < a.s_cap * a.e_pad; i += T::kThreads) {
        const int s = i / a.e_pad, e = i - s * a.e_pad;
        alpha_s[i] = (s < s_count && e < a.experts) ? __ldg(a.alpha + (size_t)(s_first + s) * a.experts + e) : 0.0f;
    }
    __syncthreads();
    for (int i = tid; i < s_count * kBM; i += T::kThreads) {
        const int s = i / kBM, o = m0 + (i - s * kBM);
        float b = 0.0f;
        if (a.bias != nullptr && o < a.mg) {
            const float *src = a.bias + (size_t)g * a.mg + o;
            for (int e = 0; e < a.experts; ++e) b = fmaf(alpha_s[s * a.e_pad + e], __ldg(src + (size_t)e * a.cout), b);
        }
        bias_s[i] = b;
    }

    // Product micro-tile: 8 rows (row group rg) x kQPT quads. A warp is 4
    // row groups x 8 consecutive quads: A fragments are broadcasts, B
    // fragments 128 contiguous bytes per quarter warp.
    const int warp = tid >> 5, lane = tid & 31;
    const int rg = (warp % T::kWarpsM) * 4 + (lane >> 3);
    const int qs = (warp / T::kWarpsM) * 8 + (lane & 7);
    int a_off[kQPT];
#pragma unroll
    for (int j = 0; j < kQPT; ++j) {
        const int lq = qs + j * T::kQuadSlots;
        const long long q = q0 + lq;
        const bool ok = lq < a.qb && q < a.total_quads;
        // A quad past the end reads sample slot 0 (always mixed) and is never stored.
        const int ls = ok ? (int)(q / a.gp) - s_first : 0;
        a_off[j] = ls * T::kAStride + rg * 8;
    }
    float acc[kQPT][8][4];
#pragma unroll
    for (int j = 0; j < kQPT; ++j)
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[j][i][c] = 0.0f;

    const int steps = kt_end - kt_begin;
    xl.store(bs);
    mx.finish(a, kt_begin, as, alpha_s, s_count);
    __syncthreads();

    for (int t = 0; t < steps; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < steps;
        // All global loads of the next step fly during this step's product.
        if (more) {
            xl.load(a, kt_begin + t + 1);
            mx.load(a, kt_begin + t + 1);
        }

        const float *ab = as + cur * as_buf;
        const float *bb = bs + cur * kBK * kBN;
#pragma unroll
        for (int k = 0; k < kBK; ++k) {
            float4 lo[kQPT], hi[kQPT], bv[kQPT];
#pragma unroll
            for (int j = 0; j < kQPT; ++j) {
                lo[j] = *reinterpret_cast<const float4 *>(ab + a_off[j] + k * kBM);
                hi[j] = *reinterpret_cast<const float4 *>(ab + a_off[j] + k * kBM + 4);
                const int col = 4 * (qs + j * T::kQuadSlots);
                bv[j] =
                    *reinterpret_cast<const float4 *>(bb + k * kBN + (loader::kSwizzled ? col ^ nhwc_swizzle(k) : col));
            }
#pragma unroll
            for (int j = 0; j < kQPT; ++j) {
                const float ar[8] = {lo[j].x, lo[j].y, lo[j].z, lo[j].w, hi[j].x, hi[j].y, hi[j].z, hi[j].w};
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    acc[j][i][0] = fmaf(ar[i], bv[j].x, acc[j][i][0]);
                    acc[j][i][1] = fmaf(ar[i], bv[j].y, acc[j][i][1]);
                    acc[j][i][2] = fmaf(ar[i], bv[j].z, acc[j][i][2]);
                    acc[j][i][3] = fmaf(ar[i], bv[j].w, acc[j][i][3]);
                }
            }
        }

        if (more) {
            xl.store(bs + (cur ^ 1) * kBK * kBN);
            mx.finish(a, kt_begin + t + 1, as + (cur ^ 1) * as_buf, alpha_s, s_count);
        }
        __syncthreads();
    }

    // Epilogue. Each quad: sample n, first pixel p0, `valid` pixels below P.
    const size_t plane = (size_t)a.p;
    if (a.splits > 1) {
        float *mine = a.partial + (size_t)split * (size_t)a.y_elems;
#pragma unroll
        for (int j = 0; j < kQPT; ++j) {
            const int lq = qs + j * T::kQuadSlots;
            const long long q = q0 + lq;
            if (lq >= a.qb || q >= a.total_quads) continue;
            const long long n = q / a.gp;
            const int p0 = 4 * (int)(q - n * a.gp);
            const int valid = min(4, a.p - p0);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int o = m0 + rg * 8 + i;
                if (o >= a.mg) continue;
                const size_t idx = ((size_t)n * a.cout + (size_t)g * a.mg + o) * plane + p0;
                store_quad(mine + idx, make_float4(acc[j][i][0], acc[j][i][1], acc[j][i][2], acc[j][i][3]),
                           a.vec_out != 0, valid);
            }
        }
        // Make this block's partials visible device-wide before it counts itself.
        __threadfence();
        __syncthreads();
        const size_t tile = blockIdx.x + (size_t)gridDim.x * blockIdx.y;
        if (tid == 0) is_last = atomicAdd(a.counters + tile, 1u) == (unsigned int)(a.splits - 1);
        __syncthreads();
        if (!is_last) return;
        __threadfence();
        if (tid == 0) a.counters[tile] = 0u; // ready for the next launch
    }

#pragma unroll
    for (int j = 0; j < kQPT; ++j) {
        const int lq = qs + j * T::kQuadSlots;
        const long long q = q0 + lq;
        if (lq >= a.qb || q >= a.total_quads) continue;
        const long long n = q / a.gp;
        const int p0 = 4 * (int)(q - n * a.gp);
        const int valid = min(4, a.p - p0);
        const int ls = (int)n - s_first;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int o = m0 + rg * 8 + i;
            if (o >= a.mg) continue;
            const size_t idx = ((size_t)n * a.cout + (size_t)g * a.mg + o) * plane + p0;
            float4 v = make_float4(acc[j][i][0], acc[j][i][1], acc[j][i][2], acc[j][i][3]);
            if (a.splits > 1) {
                // Split order, whoever came last: the sum is deterministic.
                // __ldcg: the other blocks' partials are in L2; this SM's L1 may hold stale lines.
                float4 sum = zero4();
                for (int sp = 0; sp < a.splits; ++sp) {
                    const float4 part = sp == split ? v
                                                    : load_quad_cg(a.partial + (size_t)sp * (size_t)a.y_elems + idx,
                                                                   a.vec_out != 0, valid);
                    sum.x += part.x;
                    sum.y += part.y;
                    sum.z += part.z;
                    sum.w += part.w;
                }
                v = sum;
            }
            const float b = bias_s[ls * kBM + rg * 8 + i];
            v.x = cc_activate(a.activation, v.x + b);
            v.y = cc_activate(a.activation, v.y + b);
            v.z = cc_activate(a.activation, v.z + b);
            v.w = cc_activate(a.activation, v.w + b);
            if (kChannelMajor) {
                // Kept in registers (i and the pixel are compile-time
                // indices): stored below, a pixel's 8 channels at once.
                acc[j][i][0] = v.x;
                acc[j][i][1] = v.y;
                acc[j][i][2] = v.z;
                acc[j][i][3] = v.w;
            } else if (kLayout == CC_LAYOUT_NHWC) {
                // y[n][p][channel]: the quad's pixels are Cout floats apart, scalar stores.
                float *dst = a.y + ((size_t)n * plane + p0) * a.cout + (size_t)g * a.mg + o;
                dst[0] = v.x;
                if (valid > 1) dst[a.cout] = v.y;
                if (valid > 2) dst[2 * (size_t)a.cout] = v.z;
                if (valid > 3) dst[3 * (size_t)a.cout] = v.w;
            } else {
                store_quad(a.y + idx, v, a.vec_out != 0, valid);
            }
        }
        if (kChannelMajor) {
            // NHWC, channel-major (nhwc_loader 1): the thread's 8 channels of
            // a pixel are 32 contiguous bytes of y, two 16-byte stores where
            // Cout/groups % 4 == 0 and y is aligned (every channel offset is
            // then a multiple of 4 floats), else 4-byte stores below Mg. A
            // warp store request covers 16 bytes of 4 row groups in each of
            // 8 pixels: 32 sectors for 512 bytes, the other half of each
            // sector written by the next request, 8 requests per quad
            // instead of the scalar path's 32 (32 sectors for 128 bytes each).
            const int o0 = m0 + rg * 8;
            const int left = a.mg - o0; // channels of this row group below Mg
            if (left > 0) {
                float *dst = a.y + ((size_t)n * plane + p0) * a.cout + (size_t)g * a.mg + o0;
#pragma unroll
                for (int px = 0; px < 4; ++px) {
                    if (px >= valid) break;
                    float *d = dst + (size_t)px * a.cout;
                    if (a.nhwc_vec_y) {
                        // left % 4 == 0 here: each half is wholly below Mg or past it.
                        *reinterpret_cast<float4 *>(d) =
                            make_float4(acc[j][0][px], acc[j][1][px], acc[j][2][px], acc[j][3][px]);
                        if (left > 4)
                            *reinterpret_cast<float4 *>(d + 4) =
                                make_float4(acc[j][4][px], acc[j][5][px], acc[j][6][px], acc[j][7][px]);
                    } else {
#pragma unroll
                        for (int i = 0; i < 8; ++i)
                            if (i < left) d[i] = acc[j][i][px];
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Host side: shapes, packing, configs, the cost model, the launcher.

struct tile_info {
    int bm, bn, threads, blocks_per_sm; // blocks_per_sm: the registers' limit (launch bounds)
    const char *name;
};
const tile_info kTiles[CC_FUSED_TILE_COUNT] = {
    {64, 256, 256, 1, "64x256"}, {64, 128, 256, 2, "64x128"}, {32, 256, 256, 2, "32x256"}, {32, 128, 128, 4, "32x128"}};

// Sizes derived from the arguments, shared by the checks, the model and the launcher.
struct derived {
    int cin_g, mg, mg4, cpad, taps, ct, kt_total, e_pad, gp, p;
    long long hw, total_quads, y_elems;
};

long long round_up(long long v, long long m) { return (v + m - 1) / m * m; }
long long ceil_div(long long v, long long m) { return (v + m - 1) / m; }

using cc_fused_checks::say;

bool derive(const cc_fused_args *a, derived *d, char *reason, size_t len)
{
    if (a == nullptr) {
        say(reason, len, "fused: no arguments");
        return false;
    }
    if (!cc_fused_checks::geometry_ok(a, "fused", CC_FUSED_MAX_EXPERTS, reason, len)) return false;
    if (a->layout != CC_LAYOUT_NCHW && a->layout != CC_LAYOUT_NHWC) {
        say(reason, len, "fused: unknown layout %d", a->layout);
        return false;
    }
    d->cin_g = a->in_channels / a->groups;
    d->mg = a->out_channels / a->groups;
    d->mg4 = (int)round_up(d->mg, 4);
    d->cpad = (int)round_up(d->cin_g, CC_FUSED_CHANNEL_PAD);
    const long long taps = (long long)a->kernel_h * a->kernel_w;
    const long long kk = taps * d->cpad;
    const long long p = (long long)a->out_h * a->out_w;
    // Every int the kernel computes with stays below 2^31; offsets are 64-bit.
    if (taps > (1 << 20) || kk > (1LL << 30) || p > (1LL << 30) || (long long)a->w * a->h > (1LL << 40) ||
        ceil_div((long long)d->mg, 32) * a->groups > 65535) {
        say(reason, len, "fused: too large (K %lld, Ho*Wo %lld) or too many groups x channel tiles", kk, p);
        return false;
    }
    d->taps = (int)taps;
    d->ct = d->cpad / kBK;
    d->kt_total = (int)(taps * d->ct);
    d->e_pad = (int)round_up(a->experts, 8); // alpha rows padded to the largest expert chunk
    d->p = (int)p;
    d->gp = (int)ceil_div(p, 4);
    d->hw = (long long)a->h * a->w;
    d->total_quads = (long long)a->n * d->gp;
    d->y_elems = (long long)a->n * a->out_channels * p;
    if (d->total_quads > 0x7fffffffLL) {
        say(reason, len, "fused: N*ceil(Ho*Wo/4) = %lld column quads, at most 2^31-1", d->total_quads);
        return false;
    }
    return true;
}

// Most samples a run of qb quads can span (exact for runs of whole samples,
// which start on sample boundaries).
int samples_cap(int qb, int gp, int n)
{
    const long long s = qb % gp == 0 ? qb / gp : 1 + ceil_div(qb - 1, gp);
    return (int)std::min<long long>(s, n);
}

size_t smem_bytes(int tile, int s_cap, int e_pad)
{
    const tile_info &t = kTiles[tile];
    const size_t floats = 2 * (size_t)s_cap * (size_t)(kBK * t.bm + 4) + 2 * (size_t)kBK * t.bn +
                          (size_t)s_cap * (size_t)e_pad + (size_t)s_cap * (size_t)t.bm;
    return floats * sizeof(float);
}

// The kernel's own static shared memory (is_last: 4 bytes in the PTX, 16 in
// the cubin). The per-block opt-in covers static plus dynamic shared memory
// (cudaFuncSetAttribute refuses a dynamic size past the opt-in less the
// static, and so does the launch), so the dynamic budget is the opt-in less
// this. Issue 18: without it, shapes whose dynamic size reached the opt-in
// exactly (A100: tile 32x128, 32 samples, E 105-112; sm_86/89 cards) failed
// every forward with cudaErrorInvalidValue. tests/cuda_cpu/test_emu_profiles
// launches every config on each card's limits.
constexpr size_t kStaticSmemBytes = 16;

size_t dynamic_budget(size_t smem_optin) { return smem_optin > kStaticSmemBytes ? smem_optin - kStaticSmemBytes : 0; }

// Largest column run (<= BN/4 quads) whose shared memory fits.
int fit_quads(const cc_fused_args *a, const derived &d, int tile, size_t smem_optin)
{
    const size_t budget = dynamic_budget(smem_optin);
    int qb = kTiles[tile].bn / 4;
    while (qb > 1 && smem_bytes(tile, samples_cap(qb, d.gp, a->n), d.e_pad) > budget) --qb;
    return smem_bytes(tile, samples_cap(qb, d.gp, a->n), d.e_pad) <= budget ? qb : 0;
}

void fill_config(const cc_fused_args *a, const derived &d, int tile, int qb, int splits, size_t smem_optin,
                 cc_fused_config *cfg)
{
    const tile_info &t = kTiles[tile];
    cfg->tile = tile;
    cfg->quads_per_block = qb;
    cfg->samples_cap = samples_cap(qb, d.gp, a->n);
    cfg->splits = splits;
    cfg->nhwc_loader = 0; // the measured loader; AUTO sets 1 to time the candidate (issue 19)
    cfg->smem_bytes = smem_bytes(tile, cfg->samples_cap, d.e_pad);
    // Shared memory per SM is the opt-in block limit plus the 1 KiB the
    // runtime reserves per block.
    const int by_smem = (int)((smem_optin + 1024) / (cfg->smem_bytes + kStaticSmemBytes + 1024));
    cfg->blocks_per_sm = std::max(1, std::min(t.blocks_per_sm, by_smem));
    const long long col_tiles = ceil_div(d.total_quads, qb);
    const long long tiles = col_tiles * ceil_div(d.mg, t.bm) * a->groups;
    cfg->partial_elems = splits > 1 ? (size_t)splits * (size_t)d.y_elems : 0;
    cfg->counter_count = splits > 1 ? (size_t)tiles : 0;
    cfg->model_us = 0.0;
    cfg->reason[0] = '\0';
}

// The cost model of the header comment. Returns SM clock cycles; *bound
// names the term that decided.
double model_cycles(const cc_fused_args *a, const derived &d, const cc_fused_config &cfg, int sm_count,
                    const char **bound)
{
    const tile_info &t = kTiles[cfg.tile];
    const double sms = sm_count > 0 ? sm_count : 1;
    const double col_tiles = (double)ceil_div(d.total_quads, cfg.quads_per_block);
    const double blocks = col_tiles * (double)ceil_div(d.mg, t.bm) * a->groups * cfg.splits;
    const double rows = (double)d.kt_total * kBK / cfg.splits; // K rows per block
    const int qb = cfg.quads_per_block;
    const double s_avg = std::min<double>(a->n, qb % d.gp == 0 ? (double)qb / d.gp : 1.0 + (double)(qb - 1) / d.gp);
    const double fma_block = rows * t.bm * (t.bn + 1.5 * a->experts * s_avg);
    const double per_sm = std::ceil(blocks / sms);
    const double resident = std::min<double>(per_sm, cfg.blocks_per_sm);
    // Latency hiding grows with the independent accumulators in flight per
    // SM (warps x outputs per thread); 8 warps of 8x8 or 16 of 8x4 saturate.
    const double in_flight = resident * t.threads / 32.0 * (t.bm * t.bn / t.threads);
    const double occupancy = std::min(1.0, 0.4 + 0.6 * in_flight / 512.0);
    // Experts past the prefetched chunk are loaded after the product, an L2
    // round trip (~700 clk) per K step that only other resident blocks hide.
    const double prefetched = t.bm == 64 && t.bn == 256 ? 8.0 : 4.0; // tile_shape::kExpertChunk
    const double late_chunks = std::ceil(std::max(0.0, a->experts - prefetched) / prefetched);
    const double exposed = late_chunks * 700.0 * (rows / kBK) / resident;
    const double t_fma =
        per_sm * (fma_block / (128.0 * 0.75 * occupancy) + exposed) + std::ceil(per_sm / resident) * 2000.0;
    const double partial_bytes = cfg.splits > 1 ? 2.0 * cfg.splits * (double)d.y_elems * 4.0 : 0.0;
    const double l2_bytes =
        blocks * rows * ((double)a->experts * t.bm + t.bn) * 4.0 + partial_bytes + (double)d.y_elems * 4.0;
    const double t_l2 = l2_bytes / (sms * 24.0);
    const double dram_bytes = 4.0 * ((double)a->n * a->in_channels * (double)d.hw + (double)d.y_elems +
                                     (double)a->groups * d.taps * d.cpad * a->experts * d.mg4) +
                              partial_bytes;
    const double t_dram = dram_bytes / (sms * 14.5);
    double t_max = t_fma;
    *bound = "FMA";
    if (t_l2 > t_max) {
        t_max = t_l2;
        *bound = "L2";
    }
    if (t_dram > t_max) {
        t_max = t_dram;
        *bound = "DRAM";
    }
    return t_max;
}

constexpr double kClockGHz = 1.755; // H100 SXM boost, to state the model in microseconds

template <int kBM, int kBN, int kQPT, bool kVecX, int kLayout, int kNhwcLoader>
cudaError_t launch_instance(dim3 grid, size_t smem, cudaStream_t stream, const fused_params &p)
{
    // Past 48 KiB a kernel needs the opt-in, per instance and device: it is
    // granted the first time a launch needs more than was granted so far (a
    // few times per process; a host-side attribute, no synchronisation).
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
            // The const void * overload: the templated one exists only under nvcc.
            err = cudaFuncSetAttribute(
                reinterpret_cast<const void *>(&fused_conv_kernel<kBM, kBN, kQPT, kVecX, kLayout, kNhwcLoader>),
                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
            if (err != cudaSuccess) return err;
            if (slot != nullptr) *slot = smem;
        }
    }
    return cc_launch(fused_conv_kernel<kBM, kBN, kQPT, kVecX, kLayout, kNhwcLoader>, grid,
                     dim3(tile_shape<kBM, kBN, kQPT>::kThreads), smem, stream, p);
}

template <int kBM, int kBN, int kQPT>
cudaError_t launch_tile(int layout, bool vec_x, int nhwc_loader, dim3 grid, size_t smem, cudaStream_t stream,
                        const fused_params &p)
{
    if (layout == CC_LAYOUT_NHWC)
        return nhwc_loader == 1 ? launch_instance<kBM, kBN, kQPT, false, CC_LAYOUT_NHWC, 1>(grid, smem, stream, p)
                                : launch_instance<kBM, kBN, kQPT, false, CC_LAYOUT_NHWC, 0>(grid, smem, stream, p);
    return vec_x ? launch_instance<kBM, kBN, kQPT, true, CC_LAYOUT_NCHW, 0>(grid, smem, stream, p)
                 : launch_instance<kBM, kBN, kQPT, false, CC_LAYOUT_NCHW, 0>(grid, smem, stream, p);
}

} // namespace

extern "C" int cc_fused_supported(const cc_fused_args *args, char *reason, size_t reason_len)
{
    derived d;
    if (!derive(args, &d, reason, reason_len)) return 0;
    if (reason != nullptr && reason_len > 0) reason[0] = '\0';
    return 1;
}

extern "C" int cc_fused_nhwc_loader_supported(const cc_fused_args *args, int nhwc_loader)
{
    derived d;
    if (!derive(args, &d, nullptr, 0)) return 0;
    if (nhwc_loader == 0) return 1;
    // The channel-major loader replaces NHWC's pixel-major staging; NCHW has
    // none. It keeps each window origin coordinate in 16 bits (kOriginBias).
    if (nhwc_loader != 1 || args->layout != CC_LAYOUT_NHWC) return 0;
    const long long top = -(long long)args->pad_top, left = -(long long)args->pad_left;
    const long long bottom = (long long)(args->out_h - 1) * args->stride_h + top;
    const long long right = (long long)(args->out_w - 1) * args->stride_w + left;
    return top >= -kOriginBias && left >= -kOriginBias && bottom < kOriginBias && right < kOriginBias ? 1 : 0;
}

extern "C" size_t cc_fused_packed_elems(int in_channels, int out_channels, int groups, int kernel_h, int kernel_w,
                                        int experts)
{
    if (in_channels < 1 || out_channels < 1 || groups < 1 || kernel_h < 1 || kernel_w < 1 || experts < 1 ||
        in_channels % groups != 0 || out_channels % groups != 0)
        return 0;
    const long long cpad = round_up(in_channels / groups, CC_FUSED_CHANNEL_PAD);
    const long long mg4 = round_up(out_channels / groups, 4);
    return (size_t)groups * (size_t)kernel_h * (size_t)kernel_w * (size_t)cpad * (size_t)experts * (size_t)mg4;
}

extern "C" int cc_fused_pack(const float *experts, float *packed, int in_channels, int out_channels, int groups,
                             int kernel_h, int kernel_w, int experts_count)
{
    const size_t total = cc_fused_packed_elems(in_channels, out_channels, groups, kernel_h, kernel_w, experts_count);
    if (total == 0 || experts == nullptr || packed == nullptr) return 0;
    std::fill(packed, packed + total, 0.0f);
    const size_t cin_g = (size_t)(in_channels / groups), mg = (size_t)(out_channels / groups);
    const size_t taps = (size_t)kernel_h * (size_t)kernel_w;
    const size_t cpad = (size_t)round_up((long long)cin_g, CC_FUSED_CHANNEL_PAD),
                 mg4 = (size_t)round_up((long long)mg, 4);
    const size_t e_count = (size_t)experts_count;
    // Source [e][g*mg + m][ci][tap] -> packed [g][tap][ci][e][m].
    for (size_t e = 0; e < e_count; ++e)
        for (size_t g = 0; g < (size_t)groups; ++g)
            for (size_t m = 0; m < mg; ++m)
                for (size_t ci = 0; ci < cin_g; ++ci) {
                    const float *src = experts + ((e * (size_t)out_channels + g * mg + m) * cin_g + ci) * taps;
                    for (size_t tap = 0; tap < taps; ++tap)
                        packed[(((g * taps + tap) * cpad + ci) * e_count + e) * mg4 + m] = src[tap];
                }
    return 1;
}

extern "C" int cc_fused_make_config(const cc_fused_args *args, int tile, int splits, size_t smem_optin,
                                    cc_fused_config *cfg)
{
    derived d;
    if (cfg == nullptr || tile < 0 || tile >= CC_FUSED_TILE_COUNT || !derive(args, &d, nullptr, 0)) return 0;
    if (splits < 1 || splits > d.kt_total || splits > 65535) return 0;
    const int qb = fit_quads(args, d, tile, smem_optin);
    if (qb == 0) return 0;
    fill_config(args, d, tile, qb, splits, smem_optin, cfg);
    const char *bound = "";
    cfg->model_us = model_cycles(args, d, *cfg, 132, &bound) / (kClockGHz * 1e3);
    snprintf(cfg->reason, sizeof cfg->reason,
             "%s tile, runs of %d pixel quads (<= %d samples), split-K %d: forced; model %.1f us at 132 SMs",
             kTiles[tile].name, qb, cfg->samples_cap, splits, cfg->model_us);
    return 1;
}

extern "C" int cc_fused_choose(const cc_fused_args *args, int sm_count, size_t smem_optin, int max_splits,
                               cc_fused_config *cfg)
{
    derived d;
    if (cfg == nullptr || !derive(args, &d, nullptr, 0)) return 0;
    if (sm_count < 1) sm_count = 1;
    max_splits = std::max(1, std::min(std::min(max_splits, CC_FUSED_MAX_SPLITS), d.kt_total));
    bool found = false;
    double best = 0.0;
    const char *best_bound = "";
    cc_fused_config c;
    for (int tile = 0; tile < CC_FUSED_TILE_COUNT; ++tile) {
        const int full = fit_quads(args, d, tile, smem_optin);
        if (full == 0) continue;
        // Candidate column runs: as long as fits, or whole samples (S exact,
        // no sample mixed twice) when a sample is shorter than the run.
        int runs[2] = {full, (full / d.gp) * d.gp};
        const int run_count = runs[1] > 0 && runs[1] != full ? 2 : 1;
        for (int r = 0; r < run_count; ++r)
            for (int splits = 1; splits <= max_splits; ++splits) {
                fill_config(args, d, tile, runs[r], splits, smem_optin, &c);
                const char *bound = "";
                const double cycles = model_cycles(args, d, c, sm_count, &bound);
                // Within 3%, keep the earlier candidate: fewer splits, larger tile.
                if (!found || cycles < 0.97 * best) {
                    found = true;
                    best = cycles;
                    best_bound = bound;
                    *cfg = c;
                }
            }
    }
    if (!found) return 0;
    cfg->model_us = best / (kClockGHz * 1e3);
    const tile_info &t = kTiles[cfg->tile];
    const long long blocks =
        ceil_div(d.total_quads, cfg->quads_per_block) * ceil_div(d.mg, t.bm) * args->groups * cfg->splits;
    snprintf(cfg->reason, sizeof cfg->reason,
             "%s tile, runs of %d pixel quads (each expert read mixed for <= %d samples), split-K %d: %lld blocks "
             "on %d SMs at %d/SM; model %.1f us, %s-bound",
             t.name, cfg->quads_per_block, cfg->samples_cap, cfg->splits, blocks, sm_count, cfg->blocks_per_sm,
             cfg->model_us, best_bound);
    return 1;
}

extern "C" cudaError_t cc_launch_fused_conv(const cc_fused_args *args, const cc_fused_config *cfg, cudaStream_t stream)
{
    derived d;
    if (cfg == nullptr || !derive(args, &d, nullptr, 0)) return cudaErrorInvalidValue;
    if (cfg->tile < 0 || cfg->tile >= CC_FUSED_TILE_COUNT) return cudaErrorInvalidValue;
    const tile_info &t = kTiles[cfg->tile];
    const int qb = cfg->quads_per_block;
    if (qb < 1 || qb > t.bn / 4 || cfg->samples_cap != samples_cap(qb, d.gp, args->n) || cfg->splits < 1 ||
        cfg->splits > d.kt_total || cfg->splits > 65535 ||
        cfg->smem_bytes != smem_bytes(cfg->tile, cfg->samples_cap, d.e_pad))
        return cudaErrorInvalidValue;
    if (!cc_fused_nhwc_loader_supported(args, cfg->nhwc_loader)) return cudaErrorInvalidValue;
    if (args->x == nullptr || args->y == nullptr || args->alpha == nullptr || args->packed == nullptr ||
        !cc_aligned16(args->packed))
        return cudaErrorInvalidValue;
    if (cfg->splits > 1 && (args->partial == nullptr || args->counters == nullptr)) return cudaErrorInvalidValue;
    const long long col_tiles = ceil_div(d.total_quads, qb);
    const long long m_tiles = ceil_div(d.mg, t.bm);
    if (col_tiles > 0x7fffffffLL || m_tiles * args->groups > 65535) return cudaErrorInvalidValue;

    fused_params p;
    p.x = args->x;
    p.alpha = args->alpha;
    p.bias = args->expert_bias;
    p.packed = args->packed;
    p.y = args->y;
    p.partial = args->partial;
    p.counters = args->counters;
    p.hw = d.hw;
    p.total_quads = d.total_quads;
    p.y_elems = d.y_elems;
    p.kk_stride = (long long)args->experts * d.mg4;
    p.cin = args->in_channels;
    p.cout = args->out_channels;
    p.cin_g = d.cin_g;
    p.mg = d.mg;
    p.mg4 = d.mg4;
    p.experts = args->experts;
    p.e_pad = d.e_pad;
    p.kk = d.taps * d.cpad;
    p.ct = d.ct;
    p.kt_total = d.kt_total;
    p.splits = cfg->splits;
    p.h = args->h;
    p.w = args->w;
    p.out_w = args->out_w;
    p.p = d.p;
    p.gp = d.gp;
    p.kernel_w = args->kernel_w;
    p.stride_h = args->stride_h;
    p.stride_w = args->stride_w;
    p.dilation_h = args->dilation_h;
    p.dilation_w = args->dilation_w;
    p.pad_top = args->pad_top;
    p.pad_left = args->pad_left;
    p.qb = qb;
    p.s_cap = cfg->samples_cap;
    p.m_tiles = (int)m_tiles;
    p.activation = args->activation;
    p.vec_out = d.p % 4 == 0 && cc_aligned16(args->y) && (cfg->splits == 1 || cc_aligned16(args->partial));
    // The 16-byte input path (NCHW only): a quad is 4 consecutive floats of x.
    const bool vec_x = args->layout == CC_LAYOUT_NCHW && args->kernel_h == 1 && args->kernel_w == 1 &&
                       args->stride_h == 1 && args->stride_w == 1 && args->pad_top == 0 && args->pad_left == 0 &&
                       args->out_h == args->h && args->out_w == args->w && d.hw % 4 == 0 && cc_aligned16(args->x);

    // nhwc_loader 1's vector paths. Loads: x aligned and Cin/groups % 4 == 0
    // (then Cin % 4 == 0 too, and every offset n*H*W*Cin + pixel*Cin +
    // g*Cin/g + channel is a multiple of 4 floats). Stores: y aligned and
    // Cout/groups % 4 == 0 (likewise for Cout and g*Cout/g + channel).
    const bool cm = cfg->nhwc_loader == 1;
    p.nhwc_vec_x = cm && d.cin_g % 4 == 0 && cc_aligned16(args->x);
    p.nhwc_vec_y = cm && d.mg % 4 == 0 && cc_aligned16(args->y);

    const dim3 grid((unsigned int)col_tiles, (unsigned int)(m_tiles * args->groups), (unsigned int)cfg->splits);
    switch (cfg->tile) {
    case CC_FUSED_TILE_64x256:
        return launch_tile<64, 256, 2>(args->layout, vec_x, cfg->nhwc_loader, grid, cfg->smem_bytes, stream, p);
    case CC_FUSED_TILE_64x128:
        return launch_tile<64, 128, 1>(args->layout, vec_x, cfg->nhwc_loader, grid, cfg->smem_bytes, stream, p);
    case CC_FUSED_TILE_32x256:
        return launch_tile<32, 256, 1>(args->layout, vec_x, cfg->nhwc_loader, grid, cfg->smem_bytes, stream, p);
    default: return launch_tile<32, 128, 1>(args->layout, vec_x, cfg->nhwc_loader, grid, cfg->smem_bytes, stream, p);
    }
}
