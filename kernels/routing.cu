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

extern "C" cudaError_t cc_launch_routing(int dtype, int layout, const void *x, const float *weight_t, const float *bias,
                                         float *alpha, int n, int c, long long hw, int e, int softmax,
                                         float inv_temperature, int splits, float *partial, unsigned int *counters,
                                         cudaStream_t stream)
{
    if (n <= 0 || c <= 0 || hw <= 0 || e <= 0 || e > CC_ROUTING_MAX_EXPERTS || splits < 1 || splits > 65535 ||
        (splits > 1 && (partial == NULL || counters == NULL)) || (layout != CC_LAYOUT_NCHW && layout != CC_LAYOUT_NHWC))
        return cudaErrorInvalidValue;
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

extern "C" int cc_routing_splits_variant(int variant, int n, int c, long long hw, int sm_count)
{
    return variant == 0 ? cc_routing_splits(n, c, hw, sm_count) : 0;
}

extern "C" cudaError_t cc_launch_routing_variant(int variant, int dtype, int layout, const void *x,
                                                 const float *weight_t, const float *bias, float *alpha, int n, int c,
                                                 long long hw, int e, int softmax, float inv_temperature, int splits,
                                                 float *partial, unsigned int *counters, cudaStream_t stream)
{
    if (variant != 0) return cudaErrorInvalidValue;
    return cc_launch_routing(dtype, layout, x, weight_t, bias, alpha, n, c, hw, e, softmax, inv_temperature, splits,
                             partial, counters, stream);
}

extern "C" const char *cc_routing_variant_name(int variant) { return variant == 0 ? "v0" : "?"; }
