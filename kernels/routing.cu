// Fused routing: alpha[n][e] = act(b[e] + sum_c W[e][c] * mean_hw x[n][c][hw]).
//
// The pooling is a stream over N*C*H*W floats, and on an H200 the first
// version (one block per sample, one channel per warp at a time) reached 1%
// of DRAM bandwidth: 155 us for 32 x 1152 x 7x7, a chain of load -> shuffle
// -> FMA per channel with one load in flight per lane, on 32 of 132 SMs.
// So now:
//  - a sample's channels are split over `splits` blocks (grid N x splits,
//    chosen by cc_routing_splits to cover the GPU twice);
//  - each warp pools kChannelsPerWarp channels at once, so that many
//    independent loads are in flight before the first shuffle;
//  - the FC is accumulated per warp as before (lane l owns experts l, l+32,
//    ..., the FC weight is stored transposed [C][E] so those reads are one
//    coalesced row) and per-warp partial logits meet in shared memory;
//  - with splits > 1, each block writes its partial logits, and the last
//    block of a sample to finish (an atomic counter per sample, the
//    threadFenceReduction pattern) sums the partials in split order, adds
//    the bias, applies the activation and resets the counter to zero. Sums
//    are in a fixed order, so the result is deterministic.
//
// Element types: x in f32, f16 or bf16 (a template over T); the pooling
// sums, the FC and alpha are f32 whatever T (every half value converts
// exactly). 16-bit x is read 8 elements (16 bytes) at a time where the size
// and the pointer allow, as f32 x is read 4 at a time.
//
// NHWC ([N][HW][C]): a pixel's channels are contiguous, so the threads of a
// block walk channels (16-byte vectors of them) and loop over pixels,
// summing each channel in registers; the splits share a sample's PIXELS,
// not its channels. A block's sums over its pixel range are partial, but
// the logits are linear in the pooled sums (W^T (s1 + s2) / HW =
// W^T s1 / HW + W^T s2 / HW), so each block's partial logits go through
// the same partial-logit + last-block hand-off as NCHW's. Splitting the
// channels instead would read, per pixel, C / splits contiguous elements
// per block: short rows for the smaller C at the end of a network. The
// price of the pixel split is that each block does the whole FC (C * E
// multiply-adds from the L2-resident transposed weights) instead of
// 1/splits of it, about as much work as its share of the pooling at the
// production split (a few pixels times C).
//
// Validated against the CPU reference by tests/test_gpu_forward.c
// (alpha from condconv_forward's routing_out) and tests/test_gpu_routing.c.
#include "element.cuh"
#include "routing.h"

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kPerLane = CC_ROUTING_MAX_EXPERTS / 32;
constexpr int kChannelsPerWarp = 4;

template <typename T>
struct routing_args {
    const T *x;
    const float *weight_t, *bias;
    float *alpha, *partial;
    unsigned int *counters;
    long long hw;
    int channels, experts, splits, channels_per_split, softmax;
    float inv_temperature;
};

// One 16-bit element's bits (the low 16 of `bits`) as a float, exactly.
__device__ __forceinline__ float bits_to_float(unsigned int bits, __half)
{
    return __half2float(__ushort_as_half((unsigned short)bits));
}
__device__ __forceinline__ float bits_to_float(unsigned int bits, __nv_bfloat16)
{
    return __bfloat162float(__ushort_as_bfloat16((unsigned short)bits));
}

// The 8 halves or bfloat16s of a 16-byte word as floats (little-endian: the
// lower address is the low half of each 32-bit word, on the GPU as on x86).
template <typename T>
__device__ __forceinline__ void unpack8(const uint4 v, float (&f)[8])
{
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        f[2 * k] = bits_to_float(w[k] & 0xffffu, T());
        f[2 * k + 1] = bits_to_float(w[k] >> 16, T());
    }
}

// Sum of the 16 bytes at vector index i of p, pairwise (the f32 order of
// the first version, so that f32 results did not change). Streamed once:
// __ldcs keeps L2 for the expert weights that follow.
__device__ __forceinline__ float vec_sum(const float *p, long long i)
{
    const float4 v = __ldcs(reinterpret_cast<const float4 *>(p) + i);
    return (v.x + v.y) + (v.z + v.w);
}
template <typename T>
__device__ __forceinline__ float vec_sum(const T *p, long long i)
{
    // Each word's pair added as it is converted: the same sums as unpacking
    // all 8 first, without the spill ptxas made of that for __half.
    const uint4 v = __ldcs(reinterpret_cast<const uint4 *>(p) + i);
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
    float pair[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) pair[k] = bits_to_float(w[k] & 0xffffu, T()) + bits_to_float(w[k] >> 16, T());
    return (pair[0] + pair[1]) + (pair[2] + pair[3]);
}

// The kV elements at p (16-byte aligned when kV > 1) added to s, as floats.
template <int kV>
__device__ __forceinline__ void add_vec(const float *p, float (&s)[kV])
{
    if constexpr (kV == 4) {
        const float4 v = __ldcs(reinterpret_cast<const float4 *>(p));
        s[0] += v.x;
        s[1] += v.y;
        s[2] += v.z;
        s[3] += v.w;
    } else {
        s[0] += __ldcs(p);
    }
}
template <int kV, typename T>
__device__ __forceinline__ void add_vec(const T *p, float (&s)[kV])
{
    if constexpr (kV == 8) {
        float f[8];
        unpack8<T>(__ldcs(reinterpret_cast<const uint4 *>(p)), f);
#pragma unroll
        for (int k = 0; k < 8; ++k) s[k] += f[k];
    } else {
        s[0] += cc_to_float(__ldcs(p));
    }
}

// Sums of kChannelsPerWarp consecutive planes (those below c_end), each
// reduced over the warp: every lane holds every sum.
template <typename T, bool kVec>
__device__ __forceinline__ void plane_sums(const T *__restrict__ first, long long hw, int count, int lane,
                                           float (&sum)[kChannelsPerWarp])
{
#pragma unroll
    for (int u = 0; u < kChannelsPerWarp; ++u) sum[u] = 0.0f;
    if (kVec) {
        // A shift, not a division: hw > 0, and the f32 code stays as it was.
        constexpr int kShift = cc_vec16<T>::count == 8 ? 3 : 2;
        const long long nv = hw >> kShift;
        for (long long i = lane; i < nv; i += 32) {
#pragma unroll
            for (int u = 0; u < kChannelsPerWarp; ++u) {
                if (u < count) sum[u] += vec_sum(first + (long long)u * hw, i);
            }
        }
    } else {
        for (long long i = lane; i < hw; i += 32) {
#pragma unroll
            for (int u = 0; u < kChannelsPerWarp; ++u)
                if (u < count) sum[u] += cc_to_float(__ldcs(first + (long long)u * hw + i));
        }
    }
#pragma unroll
    for (int u = 0; u < kChannelsPerWarp; ++u) sum[u] = cc_warp_sum(sum[u]);
}

// What both layouts do once each warp holds its partial logits in acc: the
// block's sum of them, the split hand-off, the bias and the activation.
// The shared arrays are the kernel's (so that each kernel owns its static
// shared memory).
template <typename T>
__device__ __forceinline__ void finish(const routing_args<T> &a, const float (&acc)[kPerLane],
                                       float (*partial)[CC_ROUTING_MAX_EXPERTS], float *logits, int &is_last)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x, split = blockIdx.y;
    const int experts = a.experts;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int e = lane + 32 * j;
        if (e < experts) partial[warp][e] = acc[j];
    }
    __syncthreads();

    if (a.splits == 1) {
        for (int e = threadIdx.x; e < experts; e += blockDim.x) {
            float z = a.bias[e];
            for (int w = 0; w < kWarps; ++w) z += partial[w][e];
            logits[e] = z;
        }
    } else {
        float *mine = a.partial + ((size_t)n * (size_t)a.splits + (size_t)split) * (size_t)experts;
        for (int e = threadIdx.x; e < experts; e += blockDim.x) {
            float z = 0.0f;
            for (int w = 0; w < kWarps; ++w) z += partial[w][e];
            mine[e] = z;
        }
        // Make this block's partials visible device-wide before it counts itself.
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) is_last = atomicAdd(a.counters + n, 1u) == (unsigned int)(a.splits - 1);
        __syncthreads();
        if (!is_last) return;
        __threadfence();
        const float *all = a.partial + (size_t)n * (size_t)a.splits * (size_t)experts;
        for (int e = threadIdx.x; e < experts; e += blockDim.x) {
            float z = a.bias[e];
            // __ldcg: read from L2, where the other blocks' writes are; this SM's L1 may hold stale lines.
            for (int s = 0; s < a.splits; ++s) z += __ldcg(all + (size_t)s * (size_t)experts + e);
            logits[e] = z;
        }
        if (threadIdx.x == 0) a.counters[n] = 0u; // ready for the next forward
    }
    __syncthreads();

    float *out = a.alpha + (size_t)n * (size_t)experts;
    if (!a.softmax) {
        for (int e = threadIdx.x; e < experts; e += blockDim.x) out[e] = 1.0f / (1.0f + expf(-logits[e]));
        return;
    }
    if (warp != 0) return;
    float v[kPerLane];
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int e = lane + 32 * j;
        v[j] = e < experts ? logits[e] * a.inv_temperature : -INFINITY;
        m = fmaxf(m, v[j]);
    }
    m = cc_warp_max(m);
    float total = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int e = lane + 32 * j;
        v[j] = e < experts ? expf(v[j] - m) : 0.0f;
        total += v[j];
    }
    total = cc_warp_sum(total);
    const float inv_total = 1.0f / total;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int e = lane + 32 * j;
        if (e < experts) out[e] = v[j] * inv_total;
    }
}

// NCHW: a block pools the planes of its channel range.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) routing_kernel(const routing_args<T> a)
{
    __shared__ float partial[kWarps][CC_ROUTING_MAX_EXPERTS];
    __shared__ float logits[CC_ROUTING_MAX_EXPERTS];
    __shared__ int is_last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x, split = blockIdx.y;
    const int experts = a.experts;
    const float inv_hw = 1.0f / (float)a.hw;
    const int c_begin = split * a.channels_per_split;
    const int c_end = min(a.channels, c_begin + a.channels_per_split);

    float acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = 0.0f;

    const T *sample = a.x + (size_t)n * (size_t)a.channels * (size_t)a.hw;
    for (int c = c_begin + warp * kChannelsPerWarp; c < c_end; c += kWarps * kChannelsPerWarp) {
        const int count = min(kChannelsPerWarp, c_end - c);
        float sum[kChannelsPerWarp];
        plane_sums<T, kVec>(sample + (size_t)c * (size_t)a.hw, a.hw, count, lane, sum);
#pragma unroll
        for (int u = 0; u < kChannelsPerWarp; ++u) {
            if (u >= count) break;
            const float mean = sum[u] * inv_hw;
            const float *row = a.weight_t + (size_t)(c + u) * (size_t)experts;
#pragma unroll
            for (int j = 0; j < kPerLane; ++j) {
                const int e = lane + 32 * j;
                if (e < experts) acc[j] += __ldg(row + e) * mean;
            }
        }
    }
    finish(a, acc, partial, logits, is_last);
}

// NHWC: a block pools its pixel range of a sample, all channels. The
// channels go in chunks of up to kThreads columns (a column: kV channels,
// one 16-byte vector, or one channel for the scalar loads); a chunk of
// `width` columns gives rows = kThreads / width groups of threads, row r
// summing pixels p_begin + r, p_begin + r + rows, ... so that each row's
// loads are one contiguous run of the pixel's channels (coalesced). At
// least half the threads are busy (rows * width > kThreads - width). The
// rows' sums meet in shared memory; each warp then reduces some of the
// chunk's channels over the rows and adds their FC terms, as NCHW does with
// its planes' sums.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) routing_nhwc_kernel(const routing_args<T> a)
{
    constexpr int kV = kVec ? cc_vec16<T>::count : 1;
    __shared__ float sums[kThreads * kV]; // [row][channel of the chunk]
    __shared__ float partial[kWarps][CC_ROUTING_MAX_EXPERTS];
    __shared__ float logits[CC_ROUTING_MAX_EXPERTS];
    __shared__ int is_last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x, split = blockIdx.y;
    const int experts = a.experts;
    const float inv_hw = 1.0f / (float)a.hw;
    // Balanced pixel ranges; with more splits than pixels some are empty,
    // and those blocks still add (zero) partial logits and count in, as the
    // counter expects `splits` arrivals.
    const long long p_begin = a.hw * split / a.splits, p_end = a.hw * (split + 1) / a.splits;
    const int cols = a.channels / kV;
    const int width = min(cols, kThreads), rows = kThreads / width;
    const int row = (int)threadIdx.x / width, col = (int)threadIdx.x - row * width;

    float acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = 0.0f;

    const T *sample = a.x + (size_t)n * (size_t)a.hw * (size_t)a.channels;
    for (int c0 = 0; c0 < cols; c0 += width) {
        const int c = c0 + col;
        if (row < rows) {
            float s[kV];
#pragma unroll
            for (int k = 0; k < kV; ++k) s[k] = 0.0f;
            if (c < cols) {
                const T *column = sample + (size_t)c * kV;
#pragma unroll 4
                for (long long p = p_begin + row; p < p_end; p += rows)
                    add_vec<kV>(column + (size_t)p * (size_t)a.channels, s);
            }
#pragma unroll
            for (int k = 0; k < kV; ++k) sums[(row * width + col) * kV + k] = s[k];
        }
        __syncthreads();
        const int chunk = (min(c0 + width, cols) - c0) * kV; // channels in this chunk
        for (int ch = warp; ch < chunk; ch += kWarps) {
            float total = 0.0f;
            for (int r = 0; r < rows; ++r) total += sums[r * width * kV + ch];
            const float mean = total * inv_hw; // this block's share of the channel's mean
            const float *wrow = a.weight_t + (size_t)(c0 * kV + ch) * (size_t)experts;
#pragma unroll
            for (int j = 0; j < kPerLane; ++j) {
                const int e = lane + 32 * j;
                if (e < experts) acc[j] += __ldg(wrow + e) * mean;
            }
        }
        __syncthreads(); // the next chunk overwrites sums
    }
    finish(a, acc, partial, logits, is_last);
}

} // namespace

// The same rule for both layouts (the signature has no layout): the floor
// of ~4096 elements a block holds for NHWC's pixel ranges too (hw / splits
// pixels of c channels), and the 8-channel floor, which only NCHW needs,
// costs NHWC parallelism only for c < 16 (rare at a CondConv layer's
// input). More splits than pixels (c > 4096 with tiny hw) leaves
// some NHWC blocks empty, which the kernel handles.
extern "C" int cc_routing_splits(int n, int c, long long hw, int sm_count)
{
    if (n <= 0 || c <= 0 || hw <= 0) return 1;
    const long long want_blocks = 2LL * (sm_count > 0 ? sm_count : 1);
    long long splits = (want_blocks + n - 1) / n;
    const long long by_floats = ((long long)c * hw + 4095) / 4096; // >= ~4096 floats a block
    const long long by_channels = (c + 7) / 8;                     // >= 8 channels a block
    if (splits > by_floats) splits = by_floats;
    if (splits > by_channels) splits = by_channels;
    if (splits > 65535) splits = 65535; // gridDim.y
    return splits < 1 ? 1 : (int)splits;
}

// Arguments checked by cc_launch_routing_variant.
static cudaError_t launch_routing_v0(int dtype, int layout, const void *x, const float *weight_t, const float *bias,
                                     float *alpha, int n, int c, long long hw, int e, int softmax,
                                     float inv_temperature, int splits, float *partial, unsigned int *counters,
                                     cudaStream_t stream)
{
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        constexpr int kV = cc_vec16<T>::count;
        routing_args<T> a;
        a.x = static_cast<const T *>(x);
        a.weight_t = weight_t;
        a.bias = bias;
        a.alpha = alpha;
        a.partial = partial;
        a.counters = counters;
        a.hw = hw;
        a.channels = c;
        a.experts = e;
        a.splits = splits;
        a.channels_per_split = (c + splits - 1) / splits;
        a.softmax = softmax;
        a.inv_temperature = inv_temperature;
        const dim3 block(kThreads);
        if (layout == CC_LAYOUT_NHWC) {
            // Every split launches, even one with no pixel (see the kernel).
            const dim3 grid((unsigned int)n, (unsigned int)splits);
            // 16-byte loads need every pixel's row of channels aligned: C a multiple of kV.
            if (c % kV == 0 && cc_aligned16(x))
                return cc_launch(routing_nhwc_kernel<T, true>, grid, block, 0, stream, a);
            return cc_launch(routing_nhwc_kernel<T, false>, grid, block, 0, stream, a);
        }
        // Splits that would own no channel (rounding) are dropped.
        a.splits = (c + a.channels_per_split - 1) / a.channels_per_split;
        const dim3 grid((unsigned int)n, (unsigned int)a.splits);
        if (hw % kV == 0 && cc_aligned16(x)) return cc_launch(routing_kernel<T, true>, grid, block, 0, stream, a);
        return cc_launch(routing_kernel<T, false>, grid, block, 0, stream, a);
    });
}

// ---------------------------------------------------------------------------
// Variant 1, a CANDIDATE (issue 19): the same routing, designed to run near
// DRAM bandwidth. No GPU has measured it; AUTO times it against variant 0 at
// prepare on the user's GPU and keeps the faster (cc_launch_routing_variant).
//
// The floor: x is read once, N*C*HW elements (32 x 1152 x 7x7 f32: 7.2 MB,
// ~1.8 us at ~4 TB/s); the transposed weight (C*E floats) stays in L2 and
// alpha is N*E floats. Variant 0 took 13.5 us there (11%): HW = 49 is not a
// multiple of 4, so it reads scalars, and a warp pools 4 planes with its 32
// lanes striding each 49-element plane (at most 8 loads in flight a lane,
// then a shuffle chain before the next group), on 9 splits x 32 samples =
// 288 blocks (~2 of 256 threads per SM); each warp then does its channels'
// FC one channel at a time (lanes over experts: 24 of 32 idle at E = 8),
// and the last block sums the splits' partials one expert per thread.
// Little's law: 4 TB/s at ~0.8 us of loaded DRAM latency needs ~3.2 MB in
// flight, ~24 KB per SM of an H200's 132. So variant 1:
//  - NCHW: a plane is pooled by a group of Ls lanes, Ls a power of two
//    (1..32) such that a lane has at most kU loads of it (HW = 49: 8 lanes
//    of at most 7 scalar loads; 14x14 f32: 16 lanes of 4 float4 loads), and
//    each lane issues all its loads (unrolled kU deep, independent) before
//    it adds one; a warp pools 32 / Ls planes at once; the planes' means go
//    to shared memory and the block's FC runs once, after them;
//  - NHWC: a block owns a range of channel columns (16-byte vectors; rows of
//    at least 128 bytes a pixel) and, where a sample has more splits than
//    that allows, a range of pixels: splitting channels first does no FC
//    twice (each pixel split repeats its columns' FC); each thread keeps kU
//    pixel loads of its column in flight;
//  - more blocks: 4 x SMs (__launch_bounds__(256, 4): 4 resident per SM),
//    at least 1024 elements a block: 32 x 1152 x 49 -> 17 splits, 544 blocks
//    of 68 channels. In flight per SM: 4 x 256 threads x 7 x 4 B = 28 KB
//    (f32 scalars at HW = 49), 4 x 256 x 4 x 16 B = 64 KB for 16-byte loads;
//  - the FC in parallel: lanes in groups of Le = E rounded up to a power of
//    two (at most 32), a group per channel, so a warp reads 32 / Le rows of
//    the transposed weight in one coalesced access (E = 8: 4 channels, 128
//    bytes); the groups' sums meet by shuffles, the warps' in shared memory;
//  - the last block of a split sample sums the partial logits with all its
//    threads (a stripe of splits each, all loads in flight, then the stripes
//    in order), not one thread per expert walking every split.
// Sums are in a fixed order (deterministic), not variant 0's order. The
// split buffers are variant 0's (cc_routing_partial_elems: variant 1 uses at
// most `splits` of them), with the same contract: counters zero before,
// zero after, and the writers' __threadfence() before the hand-off.
// What a GPU must confirm (bench/dev/routing_dev.cu, then AUTO's timing):
// that it beats variant 0; >= 60% of the byte floor at N >= 32 on the
// EfficientNet-CC-B0 shapes; 4 blocks per SM (registers <= 64, no spills);
// that 7 scalar loads a lane at HW = 49 keep enough bytes in flight (16-bit
// x at HW = 49 has half of them: the weakest case).

namespace {

constexpr int kPoolCap = 1024; // NCHW: channel means one pass holds in shared memory
constexpr int kMinBlocksV1 = 4;

// Loads a lane keeps in flight: 16-byte vectors, or scalars (twice as many).
template <bool kVec>
struct v1_loads {
    static constexpr int value = kVec ? 4 : 8;
};

template <typename T>
struct routing_v1_args {
    const T *x;
    const float *weight_t, *bias;
    float *alpha, *partial;
    unsigned int *counters;
    long long hw;
    int channels, experts, splits, softmax;
    int channels_per_split; // NCHW
    int plane_lanes;        // NCHW: lanes per plane (Ls)
    int channel_splits;     // NHWC: column ranges (splits = column ranges x pixel ranges)
    int expert_lanes;       // Le
    float inv_temperature;
};

// One load of x: a scalar element, or 16 bytes (4 floats, 8 halves). Streamed
// once: __ldcs keeps L2 for the weight.
template <typename T, bool kVec>
struct v1_unit {
    using type = T;
    static constexpr int count = 1;
    static __device__ __forceinline__ T load(const T *p, long long i) { return __ldcs(p + i); }
    static __device__ __forceinline__ T zero() { return cc_from_float<T>(0.0f); }
    static __device__ __forceinline__ float sum(const T &v) { return cc_to_float(v); }
    static __device__ __forceinline__ void add(const T &v, float (&s)[1]) { s[0] += cc_to_float(v); }
};
template <>
struct v1_unit<float, true> {
    using type = float4;
    static constexpr int count = 4;
    static __device__ __forceinline__ float4 load(const float *p, long long i)
    {
        return __ldcs(reinterpret_cast<const float4 *>(p) + i);
    }
    static __device__ __forceinline__ float4 zero() { return make_float4(0.0f, 0.0f, 0.0f, 0.0f); }
    static __device__ __forceinline__ float sum(const float4 &v) { return (v.x + v.y) + (v.z + v.w); }
    static __device__ __forceinline__ void add(const float4 &v, float (&s)[4])
    {
        s[0] += v.x;
        s[1] += v.y;
        s[2] += v.z;
        s[3] += v.w;
    }
};
template <typename T>
struct v1_unit<T, true> { // __half, __nv_bfloat16
    using type = uint4;
    static constexpr int count = 8;
    static __device__ __forceinline__ uint4 load(const T *p, long long i)
    {
        return __ldcs(reinterpret_cast<const uint4 *>(p) + i);
    }
    static __device__ __forceinline__ uint4 zero() { return make_uint4(0u, 0u, 0u, 0u); }
    static __device__ __forceinline__ float sum(const uint4 &v)
    {
        const unsigned int w[4] = {v.x, v.y, v.z, v.w};
        float pair[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) pair[k] = bits_to_float(w[k] & 0xffffu, T()) + bits_to_float(w[k] >> 16, T());
        return (pair[0] + pair[1]) + (pair[2] + pair[3]);
    }
    static __device__ __forceinline__ void add(const uint4 &v, float (&s)[8])
    {
        float f[8];
        unpack8<T>(v, f);
#pragma unroll
        for (int k = 0; k < 8; ++k) s[k] += f[k];
    }
};

// acc += the FC terms of channels c0 .. c0 + m - 1, whose means are in
// pooled[0 .. m): lanes in groups of `le` (a power of two), a group per
// channel, lane l of a group owning experts l, l + le, ...; consecutive
// groups read consecutive rows of the transposed weight (one coalesced run).
__device__ __forceinline__ void fc_v1(const float *__restrict__ weight_t, int experts, int le, const float *pooled,
                                      int c0, int m, float (&acc)[kPerLane])
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int groups = 32 / le, el = lane & (le - 1);
#pragma unroll 4
    for (int i = warp * groups + lane / le; i < m; i += kWarps * groups) {
        const float mean = pooled[i];
        const float *row = weight_t + (size_t)(c0 + i) * (size_t)experts;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
            const int e = el + le * j;
            if (e < experts) acc[j] += __ldg(row + e) * mean;
        }
    }
}

template <typename T>
__device__ __forceinline__ void activate_v1(const routing_v1_args<T> &a, const float *logits)
{
    const int lane = threadIdx.x & 31, experts = a.experts;
    float *out = a.alpha + (size_t)blockIdx.x * (size_t)experts;
    if (!a.softmax) {
        if ((int)threadIdx.x < experts) out[threadIdx.x] = 1.0f / (1.0f + expf(-logits[threadIdx.x]));
        return;
    }
    if (threadIdx.x >= 32) return;
    float v[kPerLane];
    float top = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int e = lane + 32 * j;
        v[j] = e < experts ? logits[e] * a.inv_temperature : -INFINITY;
        top = fmaxf(top, v[j]);
    }
    top = cc_warp_max(top);
    float total = 0.0f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        v[j] = lane + 32 * j < experts ? expf(v[j] - top) : 0.0f;
        total += v[j];
    }
    const float inv_total = 1.0f / cc_warp_sum(total);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j)
        if (lane + 32 * j < experts) out[lane + 32 * j] = v[j] * inv_total;
}

// The block's partial logits from every thread's acc, the split hand-off,
// the bias and the activation. red, logits and is_last are the kernel's
// shared memory.
template <typename T>
__device__ __forceinline__ void finish_v1(const routing_v1_args<T> &a, float (&acc)[kPerLane],
                                          float (*red)[CC_ROUTING_MAX_EXPERTS], float *logits, int &is_last)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x, split = blockIdx.y, experts = a.experts, le = a.expert_lanes;
    const int e = (int)threadIdx.x; // E <= 128 < kThreads: a thread per expert below
    for (int offset = le; offset < 32; offset <<= 1) {
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], offset);
    }
    if (lane < le) {
#pragma unroll
        for (int j = 0; j < kPerLane; ++j)
            if (lane + le * j < experts) red[warp][lane + le * j] = acc[j];
    }
    __syncthreads(); // the warps' sums are in red
    float z = 0.0f;
    if (e < experts)
        for (int w = 0; w < kWarps; ++w) z += red[w][e];
    if (a.splits == 1) {
        if (e < experts) logits[e] = a.bias[e] + z;
    } else {
        if (e < experts) a.partial[((size_t)n * (size_t)a.splits + (size_t)split) * (size_t)experts + e] = z;
        // Publish this block's partial logits device-wide, then count in.
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) is_last = atomicAdd(a.counters + n, 1u) + 1u == (unsigned int)a.splits;
        __syncthreads(); // is_last is written; every thread is past its read of red
        if (!is_last) return;
        __threadfence(); // the other blocks' partials, read after the count
        // A stripe of splits per thread (q, q + stripes, ...) for one expert:
        // up to kThreads / E loads in flight at once, then the stripes in order.
        const int stripes = kThreads / experts;
        const float *all = a.partial + (size_t)n * (size_t)a.splits * (size_t)experts;
        float *stripe_sums = &red[0][0]; // kWarps * CC_ROUTING_MAX_EXPERTS >= kThreads floats
        if ((int)threadIdx.x < stripes * experts) {
            const int q = (int)threadIdx.x / experts, ee = (int)threadIdx.x - q * experts;
            float sum = 0.0f;
            // __ldcg: from L2, where the other blocks' writes are, not this SM's L1.
            for (int s = q; s < a.splits; s += stripes) sum += __ldcg(all + (size_t)s * (size_t)experts + ee);
            stripe_sums[threadIdx.x] = sum;
        }
        __syncthreads(); // the stripes' sums are in shared memory
        if (e < experts) {
            float total = a.bias[e];
            for (int q = 0; q < stripes; ++q) total += stripe_sums[q * experts + e];
            logits[e] = total;
        }
        if (threadIdx.x == 0) a.counters[n] = 0u; // zero again for the next launch
    }
    __syncthreads(); // logits are complete
    activate_v1(a, logits);
}

// NCHW: a block pools the planes of its channel range, a group of
// a.plane_lanes lanes per plane, then adds their FC terms.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, kMinBlocksV1) routing_v1_nchw_kernel(const routing_v1_args<T> a)
{
    using U = v1_unit<T, kVec>;
    constexpr int kU = v1_loads<kVec>::value;
    __shared__ float pooled[kPoolCap];
    __shared__ float red[kWarps][CC_ROUTING_MAX_EXPERTS];
    __shared__ float logits[CC_ROUTING_MAX_EXPERTS];
    __shared__ int is_last;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x, split = blockIdx.y;
    const int ls = a.plane_lanes, per_warp = 32 / ls, gl = lane & (ls - 1);
    const float inv_hw = 1.0f / (float)a.hw;
    const long long units = a.hw / U::count; // a plane's loads (hw % count == 0 when kVec)
    const int c_begin = split * a.channels_per_split;
    const int c_end = min(a.channels, c_begin + a.channels_per_split);
    const T *sample = a.x + (size_t)n * (size_t)a.channels * (size_t)a.hw;

    float acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = 0.0f;

    for (int c0 = c_begin; c0 < c_end; c0 += kPoolCap) {
        const int m = min(kPoolCap, c_end - c0);
        // The whole warp goes round together (the shuffles name every lane);
        // its groups take planes base, base + 1, ...
        for (int base = warp * per_warp; base < m; base += kWarps * per_warp) {
            const int i = base + lane / ls;
            float sum = 0.0f;
            if (i < m) {
                const T *plane = sample + (size_t)(c0 + i) * (size_t)a.hw;
                for (long long u = gl; u < units; u += (long long)ls * kU) {
                    typename U::type v[kU];
#pragma unroll
                    for (int k = 0; k < kU; ++k) {
                        const long long q = u + (long long)k * ls;
                        v[k] = q < units ? U::load(plane, q) : U::zero();
                    }
#pragma unroll
                    for (int k = 0; k < kU; ++k) sum += U::sum(v[k]);
                }
            }
            for (int offset = ls >> 1; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
            if (gl == 0 && i < m) pooled[i] = sum * inv_hw;
        }
        __syncthreads(); // the pass's means are in pooled
        fc_v1(a.weight_t, a.experts, a.expert_lanes, pooled, c0, m, acc);
        __syncthreads(); // the next pass overwrites pooled
    }
    finish_v1(a, acc, red, logits, is_last);
}

// NHWC: a block pools its column range (a.channel_splits of them per
// sample) over its pixel range. Columns (a 16-byte vector of channels, or
// one channel) in chunks of up to kThreads: `width` columns give
// rows = kThreads / width groups of threads, row r summing pixels
// p_begin + r, + rows, ... with kU of them in flight; the rows' sums meet
// in shared memory, one thread per channel, and the chunk's FC follows.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, kMinBlocksV1) routing_v1_nhwc_kernel(const routing_v1_args<T> a)
{
    using U = v1_unit<T, kVec>;
    constexpr int kU = v1_loads<true>::value; // a column's pixels in flight (16 bytes or one element each)
    constexpr int kV = U::count;
    __shared__ float sums[kThreads * kV]; // [row][channel of the chunk]; then the chunk's means in row 0
    __shared__ float red[kWarps][CC_ROUTING_MAX_EXPERTS];
    __shared__ float logits[CC_ROUTING_MAX_EXPERTS];
    __shared__ int is_last;
    const int n = blockIdx.x, split = blockIdx.y;
    const float inv_hw = 1.0f / (float)a.hw;
    const int column_splits = a.channel_splits, pixel_splits = a.splits / column_splits;
    const int cs = split % column_splits, ps = split / column_splits;
    const int cols = a.channels / kV; // columns of a pixel's row
    // Balanced, never empty (the launcher keeps the ranges within cols and hw).
    const int u_begin = (int)((long long)cols * cs / column_splits);
    const int u_end = (int)((long long)cols * (cs + 1) / column_splits);
    const long long p_begin = a.hw * ps / pixel_splits, p_end = a.hw * (ps + 1) / pixel_splits;
    const int width = min(u_end - u_begin, kThreads), rows = kThreads / width;
    const int row = (int)threadIdx.x / width, col = (int)threadIdx.x - row * width;
    const long long step = (long long)rows * kU;
    const T *sample = a.x + (size_t)n * (size_t)a.hw * (size_t)a.channels;

    float acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = 0.0f;

    for (int c0 = u_begin; c0 < u_end; c0 += width) {
        const int u = c0 + col;
        float s[kV];
#pragma unroll
        for (int k = 0; k < kV; ++k) s[k] = 0.0f;
        if (row < rows && u < u_end) {
            const T *column = sample + (size_t)u * kV;
            for (long long p = p_begin + row; p < p_end; p += step) {
                typename U::type v[kU];
#pragma unroll
                for (int k = 0; k < kU; ++k) {
                    const long long q = p + (long long)k * rows;
                    v[k] = q < p_end ? U::load(column + (size_t)q * (size_t)a.channels, 0) : U::zero();
                }
#pragma unroll
                for (int k = 0; k < kU; ++k) U::add(v[k], s);
            }
        }
        if (row < rows) {
#pragma unroll
            for (int k = 0; k < kV; ++k) sums[(row * width + col) * kV + k] = s[k];
        }
        __syncthreads(); // the rows' sums are in place
        // The chunk's channels; each one's rows are read, and its mean
        // written, by one thread only.
        const int m = (min(c0 + width, u_end) - c0) * kV;
        for (int ch = (int)threadIdx.x; ch < m; ch += kThreads) {
            float total = 0.0f;
            for (int r = 0; r < rows; ++r) total += sums[r * width * kV + ch];
            sums[ch] = total * inv_hw; // this block's share of the channel's mean
        }
        __syncthreads(); // the chunk's means are in sums[0 .. m)
        fc_v1(a.weight_t, a.experts, a.expert_lanes, sums, c0 * kV, m, acc);
        __syncthreads(); // sums is rewritten by the next chunk
    }
    finish_v1(a, acc, red, logits, is_last);
}

} // namespace

// Variant 1's rule (one for both layouts, as the signature has no layout):
// 4 blocks per SM resident (kMinBlocksV1), each at least ~1024 elements (a
// block's fixed costs: the FC's weight rows, its partial logits, the count)
// and one channel (NCHW's splits are channel ranges; NHWC's launcher maps
// the splits to column and pixel ranges and uses at most as many).
static int routing_splits_v1(int n, int c, long long hw, int sm_count)
{
    if (n <= 0 || c <= 0 || hw <= 0) return 1;
    const long long want_blocks = (long long)kMinBlocksV1 * (sm_count > 0 ? sm_count : 1);
    long long splits = (want_blocks + n - 1) / n;
    const long long by_elements = ((long long)c * hw + 1023) / 1024;
    if (splits > by_elements) splits = by_elements;
    if (splits > c) splits = c;
    if (splits > 65535) splits = 65535; // gridDim.y
    return splits < 1 ? 1 : (int)splits;
}

// Arguments checked by cc_launch_routing_variant.
static cudaError_t launch_routing_v1(int dtype, int layout, const void *x, const float *weight_t, const float *bias,
                                     float *alpha, int n, int c, long long hw, int e, int softmax,
                                     float inv_temperature, int splits, float *partial, unsigned int *counters,
                                     cudaStream_t stream)
{
    return cc_dispatch_dtype(dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        constexpr int kV = cc_vec16<T>::count;
        routing_v1_args<T> a;
        a.x = static_cast<const T *>(x);
        a.weight_t = weight_t;
        a.bias = bias;
        a.alpha = alpha;
        a.partial = partial;
        a.counters = counters;
        a.hw = hw;
        a.channels = c;
        a.experts = e;
        a.softmax = softmax;
        a.inv_temperature = inv_temperature;
        a.channels_per_split = 0;
        a.plane_lanes = 1;
        a.channel_splits = 1;
        int le = 1;
        while (le < e && le < 32) le <<= 1;
        a.expert_lanes = le;
        const dim3 block(kThreads);
        if (layout == CC_LAYOUT_NHWC) {
            // 16-byte loads need every pixel's row aligned: x, and C a multiple of kV.
            const bool vec = cc_aligned16(x) && c % kV == 0;
            const long long cols = vec ? c / kV : c;
            // Column ranges of >= 128 bytes a pixel (a coalesced run), then pixel ranges.
            long long column_splits = (long long)c * (long long)sizeof(T) / 128;
            if (column_splits > cols) column_splits = cols;
            if (column_splits > splits) column_splits = splits;
            if (column_splits < 1) column_splits = 1;
            long long pixel_splits = splits / column_splits;
            if (pixel_splits > hw) pixel_splits = hw;
            a.channel_splits = (int)column_splits;
            a.splits = (int)(column_splits * pixel_splits); // <= splits: the buffers suffice
            const dim3 grid((unsigned int)n, (unsigned int)a.splits);
            if (vec) return cc_launch(routing_v1_nhwc_kernel<T, true>, grid, block, 0, stream, a);
            return cc_launch(routing_v1_nhwc_kernel<T, false>, grid, block, 0, stream, a);
        }
        a.channels_per_split = (c + splits - 1) / splits;
        a.splits = (c + a.channels_per_split - 1) / a.channels_per_split; // no split without a channel
        // 16-byte loads need every plane aligned: x, and HW a multiple of kV.
        const bool vec = cc_aligned16(x) && hw % kV == 0;
        const long long units = vec ? hw / kV : hw;
        const int loads = vec ? v1_loads<true>::value : v1_loads<false>::value;
        int ls = 1;
        while (ls < 32 && (long long)ls * loads < units) ls <<= 1;
        a.plane_lanes = ls;
        const dim3 grid((unsigned int)n, (unsigned int)a.splits);
        if (vec) return cc_launch(routing_v1_nchw_kernel<T, true>, grid, block, 0, stream, a);
        return cc_launch(routing_v1_nchw_kernel<T, false>, grid, block, 0, stream, a);
    });
}

extern "C" int cc_routing_splits_variant(int variant, int n, int c, long long hw, int sm_count)
{
    if (variant == 1) return routing_splits_v1(n, c, hw, sm_count);
    if (variant == 0) return cc_routing_splits(n, c, hw, sm_count);
    return 1;
}

extern "C" cudaError_t cc_launch_routing_variant(int variant, int dtype, int layout, const void *x,
                                                 const float *weight_t, const float *bias, float *alpha, int n, int c,
                                                 long long hw, int e, int softmax, float inv_temperature, int splits,
                                                 float *partial, unsigned int *counters, cudaStream_t stream)
{
    // The arguments both variants take, checked once before either launches.
    if (n <= 0 || c <= 0 || hw <= 0 || e <= 0 || e > CC_ROUTING_MAX_EXPERTS || splits < 1 || splits > 65535 ||
        (splits > 1 && (partial == NULL || counters == NULL)) || (layout != CC_LAYOUT_NCHW && layout != CC_LAYOUT_NHWC))
        return cudaErrorInvalidValue;
    if (variant == 0)
        return launch_routing_v0(dtype, layout, x, weight_t, bias, alpha, n, c, hw, e, softmax, inv_temperature, splits,
                                 partial, counters, stream);
    if (variant == 1)
        return launch_routing_v1(dtype, layout, x, weight_t, bias, alpha, n, c, hw, e, softmax, inv_temperature, splits,
                                 partial, counters, stream);
    return cudaErrorInvalidValue;
}

extern "C" cudaError_t cc_launch_routing(int dtype, int layout, const void *x, const float *weight_t, const float *bias,
                                         float *alpha, int n, int c, long long hw, int e, int softmax,
                                         float inv_temperature, int splits, float *partial, unsigned int *counters,
                                         cudaStream_t stream)
{
    return cc_launch_routing_variant(0, dtype, layout, x, weight_t, bias, alpha, n, c, hw, e, softmax, inv_temperature,
                                     splits, partial, counters, stream);
}

extern "C" const char *cc_routing_variant_name(int variant)
{
    switch (variant) {
    case 0: return "v0 warp planes";
    case 1: return "v1 bandwidth";
    default: return "?";
    }
}
