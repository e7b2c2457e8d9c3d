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
// Validated against the CPU reference by tests/test_gpu_forward.c
// (alpha from condconv_forward's routing_out) and tests/test_gpu_routing.c.
#include "common.cuh"
#include "routing.h"

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kPerLane = CC_ROUTING_MAX_EXPERTS / 32;
constexpr int kChannelsPerWarp = 4;

struct routing_args {
    const float *x, *weight_t, *bias;
    float *alpha, *partial;
    unsigned int *counters;
    long long hw;
    int channels, experts, splits, channels_per_split, softmax;
    float inv_temperature;
};

// Sums of kChannelsPerWarp consecutive planes (those below c_end), each
// reduced over the warp: every lane holds every sum.
template <bool kVec4>
__device__ __forceinline__ void plane_sums(const float *__restrict__ first, long long hw, int count, int lane,
                                           float (&sum)[kChannelsPerWarp])
{
#pragma unroll
    for (int u = 0; u < kChannelsPerWarp; ++u) sum[u] = 0.0f;
    if (kVec4) {
        // Streamed once: __ldcs keeps L2 for the expert weights that follow.
        const long long n4 = hw >> 2;
        for (long long i = lane; i < n4; i += 32) {
#pragma unroll
            for (int u = 0; u < kChannelsPerWarp; ++u) {
                if (u < count) {
                    const float4 v = __ldcs(reinterpret_cast<const float4 *>(first + (long long)u * hw) + i);
                    sum[u] += (v.x + v.y) + (v.z + v.w);
                }
            }
        }
    } else {
        for (long long i = lane; i < hw; i += 32) {
#pragma unroll
            for (int u = 0; u < kChannelsPerWarp; ++u)
                if (u < count) sum[u] += __ldcs(first + (long long)u * hw + i);
        }
    }
#pragma unroll
    for (int u = 0; u < kChannelsPerWarp; ++u) sum[u] = cc_warp_sum(sum[u]);
}

template <bool kVec4>
__global__ void __launch_bounds__(kThreads) routing_kernel(const routing_args a)
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

    const float *sample = a.x + (size_t)n * (size_t)a.channels * (size_t)a.hw;
    for (int c = c_begin + warp * kChannelsPerWarp; c < c_end; c += kWarps * kChannelsPerWarp) {
        const int count = min(kChannelsPerWarp, c_end - c);
        float sum[kChannelsPerWarp];
        plane_sums<kVec4>(sample + (size_t)c * (size_t)a.hw, a.hw, count, lane, sum);
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

} // namespace

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

extern "C" cudaError_t cc_launch_routing(const float *x, const float *weight_t, const float *bias, float *alpha, int n,
                                         int c, long long hw, int e, int softmax, float inv_temperature, int splits,
                                         float *partial, unsigned int *counters, cudaStream_t stream)
{
    if (n <= 0 || c <= 0 || hw <= 0 || e <= 0 || e > CC_ROUTING_MAX_EXPERTS || splits < 1 || splits > 65535 ||
        (splits > 1 && (partial == NULL || counters == NULL)))
        return cudaErrorInvalidValue;
    routing_args a;
    a.x = x;
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
    // Splits that would own no channel (rounding) are dropped.
    a.splits = (c + a.channels_per_split - 1) / a.channels_per_split;
    const dim3 grid((unsigned int)n, (unsigned int)a.splits), block(kThreads);
    if (hw % 4 == 0 && cc_aligned16(x)) return cc_launch(routing_kernel<true>, grid, block, 0, stream, a);
    return cc_launch(routing_kernel<false>, grid, block, 0, stream, a);
}
