// The backward pass's reductions (issue 20; backward.h has the contracts).
//
// Determinism first: the issue asks for bitwise-reproducible gradients by
// default, so no kernel here uses float atomics. Every output is one
// thread's FMA chain in a fixed order, or a fixed tree (an xor-shuffle
// warp sum, then the warps in index order), or, for d_alpha's split over
// K, per-split partials in scratch summed in split order by a second tiny
// kernel. None of the orders depends on the grid caps, the block order or
// timing, only on the sizes and on whether the 4-wide paths apply (the
// pointers' alignment), so the same call gives the same bits every time.
//
// The kernels, by cost on an H200 (G [N][K] dominates everything: K up to
// millions, e.g. 1152 * 1152 * 9 = 11.9M, N up to 256, so G alone is up to
// 6 GB in f16):
//
//  1. weighted_sum_kernel: d_experts [E][K] = alpha^T G (and, the same
//     kernel on f32, d_bias = alpha^T dysum). A thread owns 4 consecutive k
//     (one 16-byte load of f32, one 8-byte load of f16/bf16: every warp
//     reads a contiguous 512 or 256 bytes of a G row, coalesced) and kE
//     experts, and walks all N samples, 4 rows of G in flight at a time,
//     with kE x 4 accumulators in registers; alpha for a chunk of samples
//     and the block's kE experts is staged in shared memory (broadcast
//     reads). kE = 16 (4 for E <= 4, so that E = 1 does not run 16x the
//     FMAs): for E > kE the grid has ceil(E / kE) expert tiles, and the
//     tiles of the same k range are adjacent block indices, so they run at
//     the same time and all but the first read G from L2, not DRAM: G
//     comes from DRAM once. Output rows are written once with 16-byte
//     stores.
//  2. dot_partial_kernel: d_alpha [N][E] = G experts^T, an [N x K] . [K x E]
//     product with K huge and N x E small: split-K. A block owns an 8-sample
//     x 8-expert tile and one K range (grid: tiles along x, so that the
//     tiles of one K range run together and share its G rows and expert
//     rows in L2; the K ranges along y); each thread keeps the 64 sums of
//     its tile over its 4-wide columns of the range (8 G loads and 8 expert
//     loads per 256 FMAs), then the block reduces them through shared
//     memory in a fixed tree into its split's partial [N][E] in scratch. G is
//     read ceil(E / 8) times (again adjacent blocks: L2), the experts
//     ceil(N / 8) times (E x K, smaller than G by N / E, and from L2 for
//     the same reason). The split count targets ~1024 blocks (a few waves of
//     132 SMs) and at least 2048 elements a block, so scratch stays small
//     (about 1024 x 64 floats whatever the sizes). The bias term of d_alpha
//     is the same kernel on the f32 dysum and bias, with its own splits.
//  3. alpha_finish_kernel: d_alpha = the partials of every split, in split
//     order (the G splits, then the bias splits). A second launch rather
//     than a last-block hand-off: it costs one tiny launch and needs no
//     counters, fences or zeroed buffers.
//
// Reading G twice (1 and 2) instead of once costs one more stream over G;
// fusing the two would need, per block, both an [E][k-tile] accumulator
// (loop over samples inside) and an [N][E] one (loop over k inside), which
// do not fit in registers together at N = 256, E = 32. A GPU measurement
// should decide whether a fused shared-memory tile is worth it.
//
// The small ones: channel sums (dysum, GAP(x)) with a group of lanes per
// NCHW plane sized to the plane (1 to 32 lanes, so that 7x7 planes do not
// leave 3/4 of a warp idle) or, NHWC, columns of channels over rows of
// pixels (routing.cu's layout); the routing backward as one warp per sample
// for d_logits (the softmax's dot is a warp sum) and one thread per output
// for the FC's gradients (N x C x E is tiny next to G); the pool's share of
// dx as an elementwise read-modify-write, 4 elements a thread.
//
// Element types: G, experts, src, dx in T (float, __half, __nv_bfloat16),
// converted exactly to f32 at the load; everything else f32; all math f32.
// Indices that can pass 2^31 (N x K, E x K, N x C x HW) are long long or
// size_t.
//
// Validated on the CPU execution layer by tests/cuda_cpu/test_emu_backward.c.
#include "backward.h"
#include "element_vec.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Largest E (CONDCONV_MAX_EXPERTS; the public header is C and not included here).
constexpr int kMaxExperts = 128;

// V (4 or 1) consecutive elements as floats: element_vec.cuh's accesses (16
// bytes of f32 or 8 of a 16-bit type per 4-wide access, p aligned to 4
// elements), __ldg for the read-only inputs.
template <int V, typename T>
__device__ __forceinline__ void ldg_v(const T *p, float (&f)[V])
{
    cc_vec_ldg<T, V>(p, f);
}

// The 4-wide paths need every row they touch aligned to 4 elements: the
// pointer, and a row length that is a multiple of 4.
template <typename T>
static inline bool aligned4(const void *p)
{
    return ((uintptr_t)p % (4u * sizeof(T))) == 0;
}

// ---------------------------------------------------------------------------
// Channel sums.

// NCHW: groups of `lanes` lanes (a power of two, 1 to 32) per plane, 32 /
// lanes planes per warp. A lane sums every lanes-th 4-wide unit of its plane
// with 4 loads in flight (4 chains, added pairwise), then the group's lanes
// meet through xor shuffles. The loop over planes is uniform per block (every
// lane of a warp goes round together: the shuffles name all 32 lanes).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    bwd_channel_sums_nchw_kernel(const T *__restrict__ src, float scale, float *__restrict__ out, long long planes,
                                 long long hw, int lanes)
{
    const long long units = hw / V;
    const int per_block = kThreads / lanes;
    const int group = (int)threadIdx.x / lanes, gl = (int)threadIdx.x % lanes;
    for (long long base = (long long)blockIdx.x * per_block; base < planes; base += (long long)gridDim.x * per_block) {
        const long long plane = base + group;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (plane < planes) {
            const T *p = src + (size_t)plane * (size_t)hw;
            long long u = gl;
            for (; u + 3LL * lanes < units; u += 4LL * lanes) {
                float v[4][V];
#pragma unroll
                for (int k = 0; k < 4; ++k) ldg_v<V>(p + (u + (long long)k * lanes) * V, v[k]);
#pragma unroll
                for (int k = 0; k < 4; ++k)
#pragma unroll
                    for (int i = 0; i < V; ++i) acc[k] += v[k][i];
            }
            for (; u < units; u += lanes) {
                float v[V];
                ldg_v<V>(p + u * V, v);
#pragma unroll
                for (int i = 0; i < V; ++i) acc[0] += v[i];
            }
        }
        float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        for (int offset = lanes >> 1; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
        if (gl == 0 && plane < planes) out[plane] = s * scale;
    }
}

// NHWC: a block sums one sample's chunk of up to kThreads columns (a column:
// V consecutive channels) over all pixels; `width` columns give rows =
// kThreads / width groups of threads, row r summing pixels r, r + rows, ...
// (each row's loads one contiguous run of a pixel's channels: coalesced).
// The rows' sums meet in shared memory and one thread per channel adds them
// in row order. One block per (sample, chunk), no split over pixels: that
// would need partials in scratch, and the sums are a small part of the
// backward (N x C x HW next to G's N x K); a GPU profile should say if
// small-N, large-HW layers need it.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    bwd_channel_sums_nhwc_kernel(const T *__restrict__ src, float scale, float *__restrict__ out, int n, int c,
                                 long long hw)
{
    __shared__ float sums[kThreads * V]; // [row][channel of the chunk]
    const int cols = c / V;
    const int width = min(cols, kThreads), rows = kThreads / width;
    const int row = (int)threadIdx.x / width, col = (int)threadIdx.x - row * width;
    const int c0 = (int)blockIdx.x * width; // first column of the chunk
    for (int b = blockIdx.y; b < n; b += gridDim.y) {
        const T *sample = src + (size_t)b * (size_t)hw * (size_t)c;
        const int u = c0 + col;
        float s[V];
#pragma unroll
        for (int i = 0; i < V; ++i) s[i] = 0.0f;
        if (row < rows && u < cols) {
            const T *column = sample + (size_t)u * V;
            for (long long p = row; p < hw; p += rows) {
                float v[V];
                ldg_v<V>(column + (size_t)p * (size_t)c, v);
#pragma unroll
                for (int i = 0; i < V; ++i) s[i] += v[i];
            }
        }
        __syncthreads(); // the previous sample's readers are done with sums
        if (row < rows) {
#pragma unroll
            for (int i = 0; i < V; ++i) sums[(row * width + col) * V + i] = s[i];
        }
        __syncthreads(); // the rows' sums are in place
        const int chunk = (min(c0 + width, cols) - c0) * V;
        for (int ch = (int)threadIdx.x; ch < chunk; ch += kThreads) {
            float total = 0.0f;
            for (int r = 0; r < rows; ++r) total += sums[r * width * V + ch];
            out[(size_t)b * (size_t)c + (size_t)(c0 * V + ch)] = total * scale;
        }
    }
}

// ---------------------------------------------------------------------------
// d_experts and d_bias: out[e][k] = sum_b alpha[b][e] src[b][k].

constexpr int kSampleChunk = 64; // samples of alpha staged at a time
constexpr int kExpertTile = 16;  // experts per thread (kE), E > 4
constexpr int kExpertTileSmall = 4;

// Blocks: e_tiles expert tiles x k blocks, the tile index fastest (so the
// tiles of one k range run side by side and share G's rows in L2). gridDim.x
// is a multiple of e_tiles. Each output is an FMA chain over b in order.
template <typename T, int V, int kE>
__global__ void __launch_bounds__(kThreads)
    bwd_weighted_sum_kernel(const T *__restrict__ src, const float *__restrict__ alpha, float *__restrict__ out,
                            long long k_elems, int n, int e_count, int e_tiles)
{
    __shared__ float alpha_s[kSampleChunk][kE];
    const int e0 = (int)(blockIdx.x % (unsigned)e_tiles) * kE;
    const long long k_block = blockIdx.x / (unsigned)e_tiles, k_blocks = gridDim.x / (unsigned)e_tiles;
    const long long vecs = k_elems / V;
    for (long long base = k_block * kThreads; base < vecs; base += k_blocks * kThreads) {
        const long long j = base + threadIdx.x;
        const bool active = j < vecs;
        float acc[kE][V];
#pragma unroll
        for (int q = 0; q < kE; ++q)
#pragma unroll
            for (int i = 0; i < V; ++i) acc[q][i] = 0.0f;
        for (int b0 = 0; b0 < n; b0 += kSampleChunk) {
            const int nb = min(kSampleChunk, n - b0);
            __syncthreads(); // the previous chunk's readers are done with alpha_s
            for (int i = threadIdx.x; i < kSampleChunk * kE; i += kThreads) {
                const int s = i / kE, q = i - s * kE;
                alpha_s[s][q] = s < nb && e0 + q < e_count ? alpha[(size_t)(b0 + s) * e_count + e0 + q] : 0.0f;
            }
            __syncthreads();
            if (!active) continue;
            const T *p = src + (size_t)b0 * (size_t)k_elems + (size_t)j * V;
            int s = 0;
            // 4 rows of G in flight, then their FMAs in sample order.
            for (; s + 4 <= nb; s += 4) {
                float g[4][V];
#pragma unroll
                for (int r = 0; r < 4; ++r) ldg_v<V>(p + (size_t)(s + r) * (size_t)k_elems, g[r]);
#pragma unroll
                for (int r = 0; r < 4; ++r)
#pragma unroll
                    for (int q = 0; q < kE; ++q) {
                        const float a = alpha_s[s + r][q];
#pragma unroll
                        for (int i = 0; i < V; ++i) acc[q][i] = fmaf(a, g[r][i], acc[q][i]);
                    }
            }
            for (; s < nb; ++s) {
                float g[V];
                ldg_v<V>(p + (size_t)s * (size_t)k_elems, g);
#pragma unroll
                for (int q = 0; q < kE; ++q) {
                    const float a = alpha_s[s][q];
#pragma unroll
                    for (int i = 0; i < V; ++i) acc[q][i] = fmaf(a, g[i], acc[q][i]);
                }
            }
        }
        if (active) {
#pragma unroll
            for (int q = 0; q < kE; ++q) {
                if (e0 + q >= e_count) break;
                float *o = out + (size_t)(e0 + q) * (size_t)k_elems + (size_t)j * V;
                cc_vec_store<float, V>(o, acc[q]);
            }
        }
    }
}

template <typename T, int V, int kE>
cudaError_t launch_weighted_sum_tile(const T *src, const float *alpha, float *out, long long k_elems, int n, int e,
                                     cudaStream_t stream)
{
    const int e_tiles = (e + kE - 1) / kE;
    // k blocks capped (the loop strides) so that the grid stays below 2^31 / e_tiles.
    const unsigned int k_blocks = cc_grid_1d(k_elems / V, kThreads, (1u << 24) / (unsigned)e_tiles);
    return cc_launch(bwd_weighted_sum_kernel<T, V, kE>, dim3(k_blocks * (unsigned)e_tiles), dim3(kThreads), 0, stream,
                     src, alpha, out, k_elems, n, e, e_tiles);
}

template <typename T>
cudaError_t launch_weighted_sum(const T *src, const float *alpha, float *out, long long k_elems, int n, int e,
                                cudaStream_t stream)
{
    const bool vec = k_elems % 4 == 0 && aligned4<T>(src) && cc_aligned16(out);
    if (vec) {
        if (e <= kExpertTileSmall)
            return launch_weighted_sum_tile<T, 4, kExpertTileSmall>(src, alpha, out, k_elems, n, e, stream);
        return launch_weighted_sum_tile<T, 4, kExpertTile>(src, alpha, out, k_elems, n, e, stream);
    }
    if (e <= kExpertTileSmall)
        return launch_weighted_sum_tile<T, 1, kExpertTileSmall>(src, alpha, out, k_elems, n, e, stream);
    return launch_weighted_sum_tile<T, 1, kExpertTile>(src, alpha, out, k_elems, n, e, stream);
}

// ---------------------------------------------------------------------------
// d_alpha: partial[split][b][e] = sum over the split's k of src[b][k] w[e][k].

constexpr int kTileN = 8, kTileE = 8;
constexpr long long kTargetBlocks = 1024;  // a few waves of an H200's 132 SMs
constexpr long long kMinSplitElems = 2048; // 256 threads x 2 loads of 4 at least

// Chunks of K a multiple of 4 (the vector width). A function of the sizes
// only (cc_bwd_experts_scratch_elems sizes scratch with it before any
// pointer exists).
static cc_split_k dot_splits(long long k, int n, int e)
{
    const long long tiles = (long long)((n + kTileN - 1) / kTileN) * ((e + kTileE - 1) / kTileE);
    return cc_split_k_for(k, tiles, kTargetBlocks, kMinSplitElems, 4);
}

// Blocks: (sample tile, expert tile) along x, sample tile fastest; the split
// along y. Each thread: 64 chains over its 4-wide columns of the split in
// order; then the block's fixed tree below.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    bwd_dot_partial_kernel(const T *__restrict__ src, const T *__restrict__ w, float *__restrict__ partial,
                           long long k_elems, long long chunk, int n, int e_count, int n_tiles)
{
    constexpr int kPerRound = 32, kRounds = kTileN * kTileE / kPerRound, kParts = kThreads / kPerRound;
    __shared__ float red[kPerRound][kThreads + 8];
    __shared__ float part[kPerRound][kParts];
    const int b0 = (int)(blockIdx.x % (unsigned)n_tiles) * kTileN;
    const int e0 = (int)(blockIdx.x / (unsigned)n_tiles) * kTileE;
    const int nb = min(kTileN, n - b0), ne = min(kTileE, e_count - e0);
    const long long k_begin = (long long)blockIdx.y * chunk;
    const long long k_end = min(k_elems, k_begin + chunk);

    float acc[kTileN][kTileE];
#pragma unroll
    for (int b = 0; b < kTileN; ++b)
#pragma unroll
        for (int q = 0; q < kTileE; ++q) acc[b][q] = 0.0f;

    const T *src0 = src + (size_t)b0 * (size_t)k_elems;
    const T *w0 = w + (size_t)e0 * (size_t)k_elems;
    for (long long k = k_begin + (long long)threadIdx.x * V; k < k_end; k += (long long)kThreads * V) {
        float g[kTileN][V];
#pragma unroll
        for (int b = 0; b < kTileN; ++b) {
            if (b < nb)
                ldg_v<V>(src0 + (size_t)b * (size_t)k_elems + k, g[b]);
            else
#pragma unroll
                for (int i = 0; i < V; ++i) g[b][i] = 0.0f;
        }
#pragma unroll
        for (int q = 0; q < kTileE; ++q) {
            if (q >= ne) break;
            float x[V];
            ldg_v<V>(w0 + (size_t)q * (size_t)k_elems + k, x);
#pragma unroll
            for (int b = 0; b < kTileN; ++b)
#pragma unroll
                for (int i = 0; i < V; ++i) acc[b][q] = fmaf(g[b][i], x[i], acc[b][q]);
        }
    }

    // The block's sum of each accumulator, 32 at a time through shared
    // memory (not 64 warp sums: 320 shuffles a thread): every thread writes
    // its 32 values, 8 threads per value each add 32 of the 256 (thread p
    // of value o: threads p, p + 8, ... in order; the row stride of 264
    // puts the 32 reads of a warp on 32 banks), then one thread per value
    // adds the 8 parts in order.
    float *flat = &acc[0][0];
#pragma unroll
    for (int round = 0; round < kRounds; ++round) {
        __syncthreads(); // the previous round's readers are done with red
#pragma unroll
        for (int i = 0; i < kPerRound; ++i) red[i][threadIdx.x] = flat[round * kPerRound + i];
        __syncthreads(); // every thread's values are in red
        {
            const int o = (int)threadIdx.x / kParts, p = (int)threadIdx.x % kParts;
            float s = 0.0f;
            for (int i = 0; i < kThreads / kParts; ++i) s += red[o][p + kParts * i];
            part[o][p] = s;
        }
        __syncthreads(); // the parts are in place
        if (threadIdx.x < kPerRound) {
            const int v = round * kPerRound + (int)threadIdx.x, b = v / kTileE, q = v - b * kTileE;
            float s = 0.0f;
            for (int p = 0; p < kParts; ++p) s += part[threadIdx.x][p];
            if (b < nb && q < ne)
                partial[((size_t)blockIdx.y * (size_t)n + (size_t)(b0 + b)) * (size_t)e_count + e0 + q] = s;
        }
    }
}

template <typename T>
cudaError_t launch_dot_partial(const T *src, const T *w, float *partial, long long k_elems, int n, int e,
                               cudaStream_t stream)
{
    const cc_split_k d = dot_splits(k_elems, n, e);
    const int n_tiles = (n + kTileN - 1) / kTileN, e_tiles = (e + kTileE - 1) / kTileE;
    const dim3 grid((unsigned)(n_tiles * e_tiles), (unsigned)d.splits);
    // 4-wide: every row aligned (K a multiple of 4); each split's range then
    // starts and ends on a multiple of 4 (chunk is one, K too).
    if (k_elems % 4 == 0 && aligned4<T>(src) && aligned4<T>(w))
        return cc_launch(bwd_dot_partial_kernel<T, 4>, grid, dim3(kThreads), 0, stream, src, w, partial, k_elems,
                         d.chunk, n, e, n_tiles);
    return cc_launch(bwd_dot_partial_kernel<T, 1>, grid, dim3(kThreads), 0, stream, src, w, partial, k_elems, d.chunk,
                     n, e, n_tiles);
}

// d_alpha[i] = the partials of every split, in split order.
__global__ void __launch_bounds__(kThreads)
    bwd_alpha_finish_kernel(const float *__restrict__ partial, int splits, float *__restrict__ d_alpha, long long count)
{
    for (long long i = (long long)blockIdx.x * kThreads + threadIdx.x; i < count;
         i += (long long)gridDim.x * kThreads) {
        float s = 0.0f;
        for (int k = 0; k < splits; ++k) s += partial[(size_t)k * (size_t)count + (size_t)i];
        d_alpha[i] = s;
    }
}

// ---------------------------------------------------------------------------
// Routing backward.

// One warp per sample: lane l holds experts l, l + 32, ...; the softmax's
// sum_j alpha_j d_alpha_j is a warp sum (fixed xor tree).
__global__ void __launch_bounds__(kThreads)
    bwd_routing_logits_kernel(const float *__restrict__ alpha, const float *__restrict__ d_alpha, int softmax,
                              float inv_temperature, float *__restrict__ d_logits, int n, int e)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    // Uniform per warp: the whole warp goes round together (the shuffles name every lane).
    for (long long b = (long long)blockIdx.x * kWarps + warp; b < n; b += (long long)gridDim.x * kWarps) {
        const float *a = alpha + (size_t)b * e, *da = d_alpha + (size_t)b * e;
        float *out = d_logits + (size_t)b * e;
        if (softmax) {
            float dot = 0.0f;
            for (int j = lane; j < e; j += 32) dot = fmaf(a[j], da[j], dot);
            dot = cc_warp_sum(dot);
            for (int j = lane; j < e; j += 32) out[j] = inv_temperature * (a[j] * (da[j] - dot));
        } else {
            for (int j = lane; j < e; j += 32) out[j] = da[j] * (a[j] * (1.0f - a[j]));
        }
    }
}

// One thread per output, over three ranges of one index space: the FC
// weight's gradient [E][C] (channel fastest: pooled's row reads coalesce),
// the bias's [E], d_pooled [N][C]; a NULL output's range is empty. Each an
// FMA chain in sample (or expert) order.
__global__ void __launch_bounds__(kThreads)
    bwd_routing_fc_kernel(const float *__restrict__ d_logits, const float *__restrict__ pooled,
                          const float *__restrict__ weight_t, float *__restrict__ d_weight, float *__restrict__ d_bias,
                          float *__restrict__ d_pooled, int n, int c, int e)
{
    const long long w_count = d_weight ? (long long)e * c : 0, b_count = d_bias ? e : 0;
    const long long p_count = d_pooled ? (long long)n * c : 0, total = w_count + b_count + p_count;
    for (long long i = (long long)blockIdx.x * kThreads + threadIdx.x; i < total;
         i += (long long)gridDim.x * kThreads) {
        if (i < w_count) {
            const long long q = i / c, ch = i - q * c;
            float s = 0.0f;
            for (int b = 0; b < n; ++b)
                s = fmaf(__ldg(d_logits + (size_t)b * e + q), __ldg(pooled + (size_t)b * c + ch), s);
            d_weight[i] = s;
        } else if (i < w_count + b_count) {
            const long long q = i - w_count;
            float s = 0.0f;
            for (int b = 0; b < n; ++b) s += __ldg(d_logits + (size_t)b * e + q);
            d_bias[q] = s;
        } else {
            const long long r = i - w_count - b_count, b = r / c, ch = r - b * c;
            const float *dl = d_logits + (size_t)b * e, *wt = weight_t + (size_t)ch * e;
            float s = 0.0f;
            for (int q = 0; q < e; ++q) s = fmaf(__ldg(dl + q), __ldg(wt + q), s);
            d_pooled[r] = s;
        }
    }
}

// ---------------------------------------------------------------------------
// dx += d_pooled / hw: V elements a thread (one plane's, NCHW, hw % 4 == 0;
// one pixel's consecutive channels, NHWC, c % 4 == 0), read, added in f32,
// rounded once.
template <typename T, int V, bool kNhwc>
__global__ void __launch_bounds__(kThreads)
    bwd_add_pool_grad_kernel(T *__restrict__ dx, const float *__restrict__ d_pooled, long long vecs, int c,
                             long long hw)
{
    const float fhw = (float)hw;
    for (long long j = (long long)blockIdx.x * kThreads + threadIdx.x; j < vecs; j += (long long)gridDim.x * kThreads) {
        const long long i = j * V; // first element
        long long bc;              // the (sample, channel) of element i
        if (kNhwc) {
            const long long b = i / (hw * c);
            bc = b * c + i % c;
        } else {
            bc = i / hw;
        }
        T *p = dx + i;
        float v[V];
        cc_vec_load<T, V>(p, v);
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] += d_pooled[kNhwc ? bc + k : bc] / fhw;
        cc_vec_store<T, V>(p, v);
    }
}

// The activation's chain rule: V elements a thread, vector accesses where
// every pointer allows them (the same V for all three, so in place works).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    bwd_activation_grad_kernel(const T *__restrict__ dy, const T *pre, T *out, long long vecs, int act)
{
    for (long long j = (long long)blockIdx.x * kThreads + threadIdx.x; j < vecs; j += (long long)gridDim.x * kThreads) {
        const long long i = j * V;
        float g[V], z[V];
        cc_vec_load<T, V>(dy + i, g);
        cc_vec_load<T, V>(pre + i, z);
#pragma unroll
        for (int k = 0; k < V; ++k) g[k] *= cc_activation_grad(act, z[k]);
        cc_vec_store<T, V>(out + i, g);
    }
}

} // namespace

// ---------------------------------------------------------------------------
// Launchers.

extern "C" cudaError_t cc_launch_bwd_channel_sums(int dtype, int layout, const void *src, float scale, float *out,
                                                  int n, int c, long long hw, cudaStream_t stream)
{
    if (n <= 0 || c <= 0 || hw <= 0 || src == NULL || out == NULL ||
        (layout != CC_LAYOUT_NCHW && layout != CC_LAYOUT_NHWC))
        return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        const T *x = static_cast<const T *>(src);
        if (layout == CC_LAYOUT_NCHW) {
            const bool vec = hw % 4 == 0 && aligned4<T>(src);
            const long long units = vec ? hw / 4 : hw;
            // Lanes per plane: enough that each lane has at most ~8 units.
            int lanes = 1;
            while (lanes < 32 && (long long)lanes * 8 < units) lanes <<= 1;
            const long long planes = (long long)n * c;
            const unsigned int blocks = cc_grid_1d(planes, kThreads / lanes, 1u << 20);
            if (vec)
                return cc_launch(bwd_channel_sums_nchw_kernel<T, 4>, dim3(blocks), dim3(kThreads), 0, stream, x, scale,
                                 out, planes, hw, lanes);
            return cc_launch(bwd_channel_sums_nchw_kernel<T, 1>, dim3(blocks), dim3(kThreads), 0, stream, x, scale, out,
                             planes, hw, lanes);
        }
        const bool vec = c % 4 == 0 && aligned4<T>(src);
        const int cols = vec ? c / 4 : c, width = cols < kThreads ? cols : kThreads;
        const dim3 grid((unsigned)((cols + width - 1) / width), cc_grid_1d(n, 1, 65535u));
        if (vec)
            return cc_launch(bwd_channel_sums_nhwc_kernel<T, 4>, grid, dim3(kThreads), 0, stream, x, scale, out, n, c,
                             hw);
        return cc_launch(bwd_channel_sums_nhwc_kernel<T, 1>, grid, dim3(kThreads), 0, stream, x, scale, out, n, c, hw);
    });
}

static bool experts_sizes_ok(long long filter_elems, int cout, int n, int e)
{
    // The last term: dot_partial_kernel's tiles along gridDim.x (< 2^31).
    return filter_elems > 0 && cout > 0 && n > 0 && e > 0 && e <= kMaxExperts &&
           (long long)((n + kTileN - 1) / kTileN) * ((e + kTileE - 1) / kTileE) <= 0x7fffffffLL;
}

extern "C" size_t cc_bwd_experts_scratch_elems(long long filter_elems, int cout, int n, int e)
{
    if (!experts_sizes_ok(filter_elems, cout, n, e)) return 0;
    // The G splits, then the bias term's (counted whether or not a bias comes).
    const int splits = dot_splits(filter_elems, n, e).splits + dot_splits(cout, n, e).splits;
    return (size_t)splits * (size_t)n * (size_t)e;
}

extern "C" cudaError_t cc_launch_bwd_experts(int dtype, const void *G, const void *experts, const float *alpha,
                                             const float *bias, const float *dysum, float *d_experts, float *d_bias,
                                             float *d_alpha, long long filter_elems, int cout, int n, int e,
                                             float *scratch, cudaStream_t stream)
{
    // Every argument checked before the first launch: a refused call launches nothing.
    if (cc_element_size(dtype) == 0 || !experts_sizes_ok(filter_elems, cout, n, e)) return cudaErrorInvalidValue;
    if (d_experts == NULL && d_bias == NULL && d_alpha == NULL) return cudaErrorInvalidValue;
    if (alpha == NULL || (G == NULL && (d_experts != NULL || d_alpha != NULL)) || (d_bias != NULL && bias == NULL))
        return cudaErrorInvalidValue;
    if (bias != NULL && dysum == NULL && (d_bias != NULL || d_alpha != NULL)) return cudaErrorInvalidValue;
    if (d_alpha != NULL && (experts == NULL || scratch == NULL)) return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        const T *g = static_cast<const T *>(G);
        cudaError_t err = cudaSuccess;
        if (d_experts != NULL) err = launch_weighted_sum<T>(g, alpha, d_experts, filter_elems, n, e, stream);
        if (err == cudaSuccess && d_bias != NULL)
            err = launch_weighted_sum<float>(dysum, alpha, d_bias, cout, n, e, stream);
        if (err != cudaSuccess || d_alpha == NULL) return err;
        const int g_splits = dot_splits(filter_elems, n, e).splits;
        err = launch_dot_partial<T>(g, static_cast<const T *>(experts), scratch, filter_elems, n, e, stream);
        int splits = g_splits;
        if (err == cudaSuccess && bias != NULL) {
            err = launch_dot_partial<float>(dysum, bias, scratch + (size_t)g_splits * (size_t)n * (size_t)e, cout, n, e,
                                            stream);
            splits += dot_splits(cout, n, e).splits;
        }
        if (err != cudaSuccess) return err;
        const long long count = (long long)n * e;
        return cc_launch(bwd_alpha_finish_kernel, dim3(cc_grid_1d(count, kThreads, 1u << 16)), dim3(kThreads), 0,
                         stream, (const float *)scratch, splits, d_alpha, count);
    });
}

extern "C" cudaError_t cc_launch_bwd_routing(const float *alpha, const float *d_alpha, int softmax,
                                             float inv_temperature, const float *pooled, const float *weight_t,
                                             float *d_logits, float *d_routing_weight, float *d_routing_bias,
                                             float *d_pooled, int n, int c, int e, cudaStream_t stream)
{
    if (n <= 0 || c <= 0 || e <= 0 || e > kMaxExperts || alpha == NULL || d_alpha == NULL || d_logits == NULL)
        return cudaErrorInvalidValue;
    if ((d_routing_weight != NULL && pooled == NULL) || (d_pooled != NULL && weight_t == NULL))
        return cudaErrorInvalidValue;
    cudaError_t err = cc_launch(bwd_routing_logits_kernel, dim3(cc_grid_1d(n, kWarps, 65535u)), dim3(kThreads), 0,
                                stream, alpha, d_alpha, softmax, inv_temperature, d_logits, n, e);
    if (err != cudaSuccess) return err;
    const long long total =
        (d_routing_weight ? (long long)e * c : 0) + (d_routing_bias ? e : 0) + (d_pooled ? (long long)n * c : 0);
    if (total == 0) return cudaSuccess; // only d_logits asked for
    return cc_launch(bwd_routing_fc_kernel, dim3(cc_grid_1d(total, kThreads, 1u << 16)), dim3(kThreads), 0, stream,
                     (const float *)d_logits, pooled, weight_t, d_routing_weight, d_routing_bias, d_pooled, n, c, e);
}

extern "C" cudaError_t cc_launch_bwd_add_pool_grad(int dtype, int layout, void *dx, const float *d_pooled, int n, int c,
                                                   long long hw, cudaStream_t stream)
{
    if (n <= 0 || c <= 0 || hw <= 0 || dx == NULL || d_pooled == NULL ||
        (layout != CC_LAYOUT_NCHW && layout != CC_LAYOUT_NHWC))
        return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        T *x = static_cast<T *>(dx);
        const long long total = (long long)n * c * hw;
        const bool nhwc = layout == CC_LAYOUT_NHWC;
        const bool vec = (nhwc ? c % 4 == 0 : hw % 4 == 0) && aligned4<T>(dx);
        const long long vecs = vec ? total / 4 : total;
        const dim3 grid(cc_grid_1d(vecs, kThreads, 1u << 20)), block(kThreads);
        if (nhwc) {
            if (vec)
                return cc_launch(bwd_add_pool_grad_kernel<T, 4, true>, grid, block, 0, stream, x, d_pooled, vecs, c,
                                 hw);
            return cc_launch(bwd_add_pool_grad_kernel<T, 1, true>, grid, block, 0, stream, x, d_pooled, vecs, c, hw);
        }
        if (vec)
            return cc_launch(bwd_add_pool_grad_kernel<T, 4, false>, grid, block, 0, stream, x, d_pooled, vecs, c, hw);
        return cc_launch(bwd_add_pool_grad_kernel<T, 1, false>, grid, block, 0, stream, x, d_pooled, vecs, c, hw);
    });
}

extern "C" cudaError_t cc_launch_bwd_activation_grad(int dtype, int act, const void *pre, const void *dy, void *out,
                                                     long long count, cudaStream_t stream)
{
    if (count <= 0 || pre == NULL || dy == NULL || out == NULL || out == dy ||
        (act != CC_ACT_RELU && act != CC_ACT_SILU))
        return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        const T *d = static_cast<const T *>(dy), *z = static_cast<const T *>(pre);
        T *o = static_cast<T *>(out);
        const bool vec = count % 4 == 0 && aligned4<T>(dy) && aligned4<T>(pre) && aligned4<T>(out);
        const long long vecs = vec ? count / 4 : count;
        const dim3 grid(cc_grid_1d(vecs, kThreads, 1u << 20)), block(kThreads);
        if (vec) return cc_launch(bwd_activation_grad_kernel<T, 4>, grid, block, 0, stream, d, z, o, vecs, act);
        return cc_launch(bwd_activation_grad_kernel<T, 1>, grid, block, 0, stream, d, z, o, vecs, act);
    });
}
