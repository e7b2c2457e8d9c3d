// The backward's folded weight gradient (issue 20; backward_wgrad.h has the
// contract, host/backward_plan.h how the folded_wgrad algorithm runs).
//
// One implicit GEMM per group g: M = Cout/g rows (co, a channel of the
// group), R = Cin/g x kh x kw columns (r = (ci', i, j) in the filters' KCRS
// order, j fastest), K = the output pixels of one sample:
//   G_b[co][r] = sum_p dy_b[g * M + co][p] * xcol_b[r][p].
// G_b never reaches memory: a block keeps a 32 x 32 tile of it on chip and
// folds it at once into the two outputs, d_experts[e] += alpha[b][e] G_b
// (E accumulators a tile, registers) and d_alpha[b][e] += <experts[e], G_b>
// over the tile. The baseline writes every G_b (N x |W|) and reads it back;
// here x and dy are read once per tile column / row of the GEMM and the
// outputs are written once.
//
// The kernels:
//
//  1. wgrad_kernel: 256 threads, a block tile of TM = 32 rows (co) x TN = 32
//     columns (r), pixels in chunks of TK = 32. Grid: x the r tiles, y the
//     co tiles x groups, z the expert chunks x batch splits. A block owns
//     one (group, co tile, r tile), a chunk of up to EC = 8 experts and a
//     contiguous range of samples (its batch split). Per sample, G's tile is
//     the sum over the pixel chunks of dy [TK][TM] x xcol [TK][TN], both
//     staged in shared memory as f32 (zeros outside the input plane and past
//     M, R and the pixel count); each thread owns 2 x 2 outputs (rows ty,
//     ty + 16; columns tx, tx + 16) and adds the chunk's 32 products per
//     output in k order (a fixed FMA chain over the sample's pixels). The
//     loads: in NCHW consecutive lanes take consecutive pixels (dy's plane
//     and x's rows are contiguous along the pixels); in NHWC consecutive
//     lanes take consecutive channels of dy and consecutive r of xcol
//     (consecutive channels ci' where kh = kw = 1). Either way a thread's
//     r decode (ci', i, j) is fixed for the whole kernel (4 columns in NCHW,
//     1 in NHWC) and done once; only the pixel decode is per chunk.
//     Then, per expert e of the chunk: acc[e] += alpha[b][e] G (registers,
//     f32), and the d_alpha partial of the tile: each thread's sum of
//     experts[e][co][r] G[co][r] over its 4 outputs (the expert values are
//     loaded once at the kernel's start, 0 outside the tile), a warp's xor
//     shuffle tree, then the 8 warps' sums in order by one thread, into
//     scratch dalpha_part[tile][b][e] (tile = (group, co tile, r tile)).
//     At the end acc goes to d_experts directly when there is one batch
//     split, else to the split's partial part[split][e][Cout][R] in scratch.
//     Why chunks of 8 experts: 32 accumulators + 32 expert values a thread
//     stay in registers at 256 threads (no spills at sm_80/sm_90); E up to
//     128 means up to 16 chunks, each recomputing G (x and dy read again,
//     from L2 mostly): the GEMM is cheap next to spilling E x 4 registers.
//     Why a batch split: N x pixels is the GEMM's long K; the tiles alone
//     are often fewer blocks than an H200 runs at once (e.g. Cout = 64,
//     Cin/g x 9 = 576: 2 x 18 tiles), so the samples are split to reach
//     ~264 blocks (2 waves of 132 SMs), at least one sample a split.
//  2. wgrad_split_reduce_kernel (splits > 1): d_experts = the splits'
//     partials added in split order. E x |w| floats x splits, tiny.
//  3. wgrad_dalpha_finish_kernel: one warp per (sample, expert): the tiles'
//     partials in tile order (lane 0), plus the bias term sum_c bias[e][c]
//     dysum[b][c] (the lanes' chains over c, then a warp xor tree), as
//     backward_mixture.cu's dalpha_finish_kernel.
//
// Determinism: no float atomics anywhere. Every output element and partial
// is written by exactly one thread, every sum is in an order fixed by the
// sizes (a thread's chain over pixels, samples in order, the splits in
// order, the tiles in order, fixed trees), never by the block order or
// timing, and the split count is a function of the sizes only: the same call
// gives the same bits every time.
//
// Element types: x, dy and the experts in T (float, __half, __nv_bfloat16),
// converted exactly to f32 at the load; alpha, bias, dysum and the outputs
// f32; all math f32. Offsets are long long (scratch's partials can pass
// 2^31 elements; the launcher refuses x, dy or experts past 2^31 - 1).
//
// Validated on the CPU execution layer by
// tests/cuda_cpu/test_emu_backward_wgrad.c.
#include <limits.h>

#include "backward_wgrad.h"
#include "element.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileM = 32; // co rows of a block tile
constexpr int kTileN = 32; // r columns of a block tile
constexpr int kTileK = 32; // pixels a chunk
constexpr int kChunkE = 8; // experts a block
// Largest E (CONDCONV_MAX_EXPERTS; the public header is C and not included here).
constexpr int kMaxExperts = 128;
constexpr long long kTargetBlocks = 264;      // 2 waves of an H200's 132 SMs
constexpr long long kMaxCount = 0x7fffffffLL; // x, dy and the experts
constexpr long long kMaxScratch = 1LL << 50;  // floats of scratch (4 PiB: no real size comes near)

static_assert(kTileM == 32 && kTileN == 32 && kTileK == 32 && kThreads == 256,
              "the load and output mappings below assume 32 x 32 tiles, chunks of 32 and 256 threads");

// The sizes the kernels need, derived once by the launcher (all < 2^31).
struct wgrad_dims {
    int n, cin, h, w, cout;
    int kw, sh, sw, dh, dw, pad_top, pad_left, out_w;
    int e, m, cin_pg, khw, r; // m = Cout/g, r = Cin/g x kh x kw
    int pixels;               // out_h x out_w
    int co_tiles, r_tiles, e_chunks;
    int samples; // samples a batch split (the last may have fewer)
};

// ---------------------------------------------------------------------------
// 1. The implicit GEMM. kNhwc: x and dy in NHWC. dw_out: d_experts (one
// split, dw_split_stride 0), the splits' partials in scratch
// (dw_split_stride = E x Cout x R) or NULL (no d_experts); dalpha_part:
// [tile][N][E] in scratch or NULL (no d_alpha). Both are the same for the
// whole grid, so every barrier below is reached by every thread.
template <typename T, bool kNhwc>
__global__ void __launch_bounds__(kThreads)
    bwd_wgrad_kernel(const T *__restrict__ x, const T *__restrict__ dy, const T *__restrict__ experts,
                     const float *__restrict__ alpha, float *__restrict__ dw_out, long long dw_split_stride,
                     float *__restrict__ dalpha_part, const wgrad_dims d)
{
    const int t = (int)threadIdx.x, lane = t & 31, row = t >> 5;
    const int ty = t >> 4, tx = t & 15; // outputs: rows ty, ty + 16; columns tx, tx + 16
    const int r0 = (int)blockIdx.x * kTileN;
    const int g = (int)blockIdx.y / d.co_tiles, co0 = ((int)blockIdx.y - g * d.co_tiles) * kTileM;
    const int split = (int)blockIdx.z / d.e_chunks;
    const int e0 = ((int)blockIdx.z - split * d.e_chunks) * kChunkE, ne = min(kChunkE, d.e - e0);
    const int b_begin = split * d.samples, b_end = min(d.n, b_begin + d.samples);
    const long long cout = d.cout, r_len = d.r, ch0 = (long long)g * d.cin_pg, dy_ch0 = (long long)g * d.m;

    // The r columns this thread loads (NCHW: row + 8 q; NHWC: lane), decoded
    // once: x's channel and the kernel tap's dilated offsets.
    constexpr int kCols = kNhwc ? 1 : 4;
    long long col_ch[kCols], col_di[kCols], col_dj[kCols];
    bool col_ok[kCols];
#pragma unroll
    for (int q = 0; q < kCols; ++q) {
        const int r = r0 + (kNhwc ? lane : row + 8 * q);
        col_ok[q] = r < d.r;
        const int rr = col_ok[q] ? r : 0;
        const int ci = rr / d.khw, s = rr - ci * d.khw;
        const int i = s / d.kw, j = s - i * d.kw;
        col_ch[q] = ch0 + ci;
        col_di[q] = (long long)i * d.dh;
        col_dj[q] = (long long)j * d.dw;
    }

    // The expert values of this thread's 4 outputs, once (0 outside the tile
    // or past the chunk's experts): d_alpha's dot products.
    float wv[kChunkE][2][2];
#pragma unroll
    for (int q = 0; q < kChunkE; ++q)
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int co = co0 + ty + 16 * i, r = r0 + tx + 16 * j;
                wv[q][i][j] = dalpha_part != NULL && q < ne && co < d.m && r < d.r
                                  ? cc_load(experts + ((e0 + q) * cout + dy_ch0 + co) * r_len + r)
                                  : 0.0f;
            }

    float acc[kChunkE][2][2];
#pragma unroll
    for (int q = 0; q < kChunkE; ++q)
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) acc[q][i][j] = 0.0f;

    // [k][m] and [k][n]; the row pad of 1 puts NCHW's column stores (lanes
    // along k) on 32 banks.
    __shared__ float dys[kTileK][kTileM + 1];
    __shared__ float xs[kTileK][kTileN + 1];
    __shared__ float red[kChunkE][kWarps];

    for (int b = b_begin; b < b_end; ++b) {
        const T *xb = x + (long long)b * d.cin * d.h * d.w;
        const T *dyb = dy + (long long)b * cout * d.pixels;
        float gt[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
        for (int p0 = 0; p0 < d.pixels; p0 += kTileK) {
            if (kNhwc) {
                // dy: lanes along the channels; xcol: lanes along r, 4 pixels a thread.
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int k = row + 8 * q, p = p0 + k;
                    const int co = co0 + lane;
                    const bool p_ok = p < d.pixels;
                    dys[k][lane] = p_ok && co < d.m ? cc_load(dyb + (long long)p * cout + dy_ch0 + co) : 0.0f;
                    float v = 0.0f;
                    if (p_ok && col_ok[0]) {
                        const int oh = p / d.out_w, ow = p - oh * d.out_w;
                        const long long ih = (long long)oh * d.sh - d.pad_top + col_di[0];
                        const long long iw = (long long)ow * d.sw - d.pad_left + col_dj[0];
                        if (ih >= 0 && ih < d.h && iw >= 0 && iw < d.w)
                            v = cc_load(xb + (ih * d.w + iw) * d.cin + col_ch[0]);
                    }
                    xs[k][lane] = v;
                }
            } else {
                // Lanes along the pixels (dy's plane, x's rows): one pixel a thread, 4 rows / columns.
                const int p = p0 + lane;
                const bool p_ok = p < d.pixels;
                const int oh = p_ok ? p / d.out_w : 0, ow = p_ok ? p - oh * d.out_w : 0;
                const long long ih0 = (long long)oh * d.sh - d.pad_top, iw0 = (long long)ow * d.sw - d.pad_left;
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const int m = row + 8 * q, co = co0 + m;
                    dys[lane][m] = p_ok && co < d.m ? cc_load(dyb + (dy_ch0 + co) * d.pixels + p) : 0.0f;
                    float v = 0.0f;
                    const long long ih = ih0 + col_di[q], iw = iw0 + col_dj[q];
                    if (p_ok && col_ok[q] && ih >= 0 && ih < d.h && iw >= 0 && iw < d.w)
                        v = cc_load(xb + (col_ch[q] * d.h + ih) * d.w + iw);
                    xs[lane][m] = v;
                }
            }
            __syncthreads(); // the chunk's tiles are in place
#pragma unroll 8
            for (int k = 0; k < kTileK; ++k) {
                const float a0 = dys[k][ty], a1 = dys[k][ty + 16];
                const float b0 = xs[k][tx], b1 = xs[k][tx + 16];
                gt[0][0] = fmaf(a0, b0, gt[0][0]);
                gt[0][1] = fmaf(a0, b1, gt[0][1]);
                gt[1][0] = fmaf(a1, b0, gt[1][0]);
                gt[1][1] = fmaf(a1, b1, gt[1][1]);
            }
            __syncthreads(); // every thread is done with the chunk's tiles
        }

        if (dw_out != NULL) {
#pragma unroll
            for (int q = 0; q < kChunkE; ++q) {
                if (q >= ne) break;
                const float a = __ldg(alpha + (long long)b * d.e + e0 + q);
#pragma unroll
                for (int i = 0; i < 2; ++i)
#pragma unroll
                    for (int j = 0; j < 2; ++j) acc[q][i][j] = fmaf(a, gt[i][j], acc[q][i][j]);
            }
        }
        if (dalpha_part != NULL) {
            // <experts[e], G_b> over the tile: the thread's 4 products, the
            // warp's xor tree, then the 8 warps in order by thread q.
#pragma unroll
            for (int q = 0; q < kChunkE; ++q) {
                if (q >= ne) break;
                float s = wv[q][0][0] * gt[0][0];
                s = fmaf(wv[q][0][1], gt[0][1], s);
                s = fmaf(wv[q][1][0], gt[1][0], s);
                s = fmaf(wv[q][1][1], gt[1][1], s);
                s = cc_warp_sum(s);
                if (lane == 0) red[q][row] = s;
            }
            __syncthreads(); // the warps' sums are in red
            if (t < ne) {
                float s = 0.0f;
                for (int w = 0; w < kWarps; ++w) s += red[t][w];
                const long long tile = (long long)blockIdx.y * d.r_tiles + blockIdx.x;
                dalpha_part[(tile * d.n + b) * d.e + e0 + t] = s;
            }
            // red is written again only after the next sample's first barrier.
        }
    }

    if (dw_out != NULL) {
        float *out = dw_out + split * dw_split_stride;
#pragma unroll
        for (int q = 0; q < kChunkE; ++q) {
            if (q >= ne) break;
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const int co = co0 + ty + 16 * i, r = r0 + tx + 16 * j;
                    if (co < d.m && r < d.r) out[((e0 + q) * cout + dy_ch0 + co) * r_len + r] = acc[q][i][j];
                }
        }
    }
}

// ---------------------------------------------------------------------------
// 2. d_experts[i] = the splits' partials part[s][i] in split order.
__global__ void __launch_bounds__(kThreads)
    bwd_wgrad_split_reduce_kernel(const float *__restrict__ part, float *__restrict__ d_experts, long long total,
                                  int splits)
{
    for (long long i = (long long)blockIdx.x * kThreads + threadIdx.x; i < total;
         i += (long long)gridDim.x * kThreads) {
        float s = 0.0f;
        for (int k = 0; k < splits; ++k) s += part[k * total + i];
        d_experts[i] = s;
    }
}

// 3. d_alpha[b][e] = the tiles' partials in tile order + the bias term
// (cc_dalpha_finish, common.cuh: one warp per (b, e)).
__global__ void __launch_bounds__(kThreads)
    bwd_wgrad_dalpha_finish_kernel(const float *__restrict__ partial, long long tiles, const float *__restrict__ bias,
                                   const float *__restrict__ dysum, float *__restrict__ d_alpha, int n, int e_count,
                                   int cout)
{
    cc_dalpha_finish(partial, tiles, bias, dysum, d_alpha, n, e_count, cout);
}

// ---------------------------------------------------------------------------
// Sizes.

// a * b <= limit for a, b > 0, without overflow.
static bool mul_le(long long a, long long b, long long limit) { return a <= limit / b; }

// The launch's geometry: the dims, the tiles of d_alpha's partials, the
// batch split and the grid. False for sizes the launcher refuses. A function
// of the sizes only (cc_bwd_wgrad_scratch_elems sizes scratch with it).
struct wgrad_plan {
    wgrad_dims d;
    long long tiles;  // groups x co tiles x r tiles
    int splits;       // batch splits
    long long weight; // E x Cout x R: d_experts' elements
    dim3 grid;
};

static bool plan_for(const cc_wgrad_args *a, wgrad_plan *p)
{
    if (a == NULL || cc_element_size(a->dtype) == 0 || (a->layout != CC_LAYOUT_NCHW && a->layout != CC_LAYOUT_NHWC))
        return false;
    if (a->n <= 0 || a->cin <= 0 || a->h <= 0 || a->w <= 0 || a->cout <= 0 || a->groups <= 0 || a->kernel_h <= 0 ||
        a->kernel_w <= 0 || a->stride_h <= 0 || a->stride_w <= 0 || a->dilation_h <= 0 || a->dilation_w <= 0 ||
        a->out_h <= 0 || a->out_w <= 0 || a->e <= 0 || a->e > kMaxExperts)
        return false;
    if (a->cin % a->groups != 0 || a->cout % a->groups != 0) return false;
    // Element counts of x, dy and the experts below 2^31.
    const long long hw = (long long)a->h * a->w, pixels = (long long)a->out_h * a->out_w;
    const long long khw = (long long)a->kernel_h * a->kernel_w, cin_pg = a->cin / a->groups;
    if (!mul_le(hw, a->cin, kMaxCount) || !mul_le(hw * a->cin, a->n, kMaxCount)) return false;
    if (!mul_le(pixels, a->cout, kMaxCount) || !mul_le(pixels * a->cout, a->n, kMaxCount)) return false;
    if (!mul_le(khw, cin_pg, kMaxCount) || !mul_le(khw * cin_pg, (long long)a->e * a->cout, kMaxCount)) return false;
    wgrad_dims &d = p->d;
    d.n = a->n;
    d.cin = a->cin;
    d.h = a->h;
    d.w = a->w;
    d.cout = a->cout;
    d.kw = a->kernel_w;
    d.sh = a->stride_h;
    d.sw = a->stride_w;
    d.dh = a->dilation_h;
    d.dw = a->dilation_w;
    d.pad_top = a->pad_top;
    d.pad_left = a->pad_left;
    d.out_w = a->out_w;
    d.e = a->e;
    d.m = a->cout / a->groups;
    d.cin_pg = (int)cin_pg;
    d.khw = (int)khw;
    d.r = (int)(khw * cin_pg);
    d.pixels = (int)pixels;
    d.co_tiles = (d.m + kTileM - 1) / kTileM;
    d.r_tiles = (d.r + kTileN - 1) / kTileN;
    d.e_chunks = (d.e + kChunkE - 1) / kChunkE;
    // gridDim.y: co tiles x groups (a depthwise layer past 65535 channels is refused).
    const long long y = (long long)d.co_tiles * a->groups;
    if (y > 65535) return false;
    p->tiles = y * d.r_tiles;
    // Scratch's element count (d_alpha's partials dominate) far below 2^63.
    if (!mul_le(p->tiles, (long long)d.n * d.e, kMaxScratch)) return false;
    const cc_split_k s = cc_split_k_for(d.n, p->tiles * d.e_chunks, kTargetBlocks, 1, 1);
    p->splits = s.splits;
    d.samples = (int)s.chunk;
    p->weight = (long long)d.e * d.cout * d.r;
    p->grid = dim3((unsigned)d.r_tiles, (unsigned)y, (unsigned)(d.e_chunks * s.splits));
    return true;
}

// Scratch: d_alpha's partials [tile][N][E], then (splits > 1) the splits'
// partial d_experts [split][E][Cout][R].
static long long dalpha_part_elems(const wgrad_plan &p) { return p.tiles * p.d.n * p.d.e; }
static long long split_part_elems(const wgrad_plan &p) { return p.splits > 1 ? p.splits * p.weight : 0; }

} // namespace

// ---------------------------------------------------------------------------
// Launchers.

extern "C" size_t cc_bwd_wgrad_scratch_elems(const cc_wgrad_args *a)
{
    wgrad_plan p;
    if (!plan_for(a, &p)) return 0;
    return (size_t)(dalpha_part_elems(p) + split_part_elems(p));
}

extern "C" cudaError_t cc_launch_bwd_wgrad(const cc_wgrad_args *a, const void *x, const void *dy, const void *experts,
                                           const float *alpha, const float *bias, const float *dysum, float *d_experts,
                                           float *d_alpha, float *scratch, cudaStream_t stream)
{
    // Every argument checked before the first launch: a refused call launches nothing.
    wgrad_plan p;
    if (!plan_for(a, &p) || x == NULL || dy == NULL || alpha == NULL || (d_experts == NULL && d_alpha == NULL) ||
        (d_alpha != NULL && experts == NULL) || (bias == NULL) != (dysum == NULL))
        return cudaErrorInvalidValue;
    const bool split = d_experts != NULL && p.splits > 1;
    if ((d_alpha != NULL || split) && scratch == NULL) return cudaErrorInvalidValue;
    float *dalpha_part = d_alpha != NULL ? scratch : NULL;
    float *dw_out = split ? scratch + dalpha_part_elems(p) : d_experts;
    const long long dw_split_stride = split ? p.weight : 0;
    return cc_dispatch_dtype(a->dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        const T *xt = static_cast<const T *>(x), *dyt = static_cast<const T *>(dy);
        const T *wt = static_cast<const T *>(experts);
        const dim3 block(kThreads);
        cudaError_t err;
        if (a->layout == CC_LAYOUT_NHWC)
            err = cc_launch(bwd_wgrad_kernel<T, true>, p.grid, block, 0, stream, xt, dyt, wt, alpha, dw_out,
                            dw_split_stride, dalpha_part, p.d);
        else
            err = cc_launch(bwd_wgrad_kernel<T, false>, p.grid, block, 0, stream, xt, dyt, wt, alpha, dw_out,
                            dw_split_stride, dalpha_part, p.d);
        if (err != cudaSuccess) return err;
        if (split) {
            err = cc_launch(bwd_wgrad_split_reduce_kernel, dim3(cc_grid_1d(p.weight, kThreads, 1u << 16)), block, 0,
                            stream, (const float *)dw_out, d_experts, p.weight, p.splits);
            if (err != cudaSuccess) return err;
        }
        if (d_alpha != NULL) {
            const long long count = (long long)p.d.n * p.d.e;
            err = cc_launch(bwd_wgrad_dalpha_finish_kernel, dim3(cc_grid_1d(count, kWarps, 1u << 16)), block, 0, stream,
                            (const float *)dalpha_part, p.tiles, bias, dysum, d_alpha, p.d.n, p.d.e, p.d.cout);
        }
        return err;
    });
}
