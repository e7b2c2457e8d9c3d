// Fused routing: alpha[n][e] = act(b[e] + sum_c W[e][c] * mean_hw x[n][c][hw]).
//
// One block per sample, 8 warps. Each warp owns channels c = warp, warp + 8,
// ...: its lanes sum the channel's H*W plane (16-byte loads when the plane
// length allows), a butterfly shuffle leaves the mean in every lane, and lane
// l accumulates the FC for experts l, l + 32, l + 64, l + 96 (the FC weight
// is stored transposed, [C][E], so those reads are one coalesced row). The
// pooled vector never leaves registers. Per-warp partial logits meet in
// shared memory and are summed in a fixed order (deterministic), then the
// activation: sigmoid per expert, or softmax over E done by warp 0.
//
// Validated against the CPU reference by tests/test_gpu_forward.c
// (alpha from condconv_forward's routing_out) and tests/test_gpu_routing.c.
#include "common.cuh"
#include "routing.h"

namespace {

constexpr int kWarps = 8;
constexpr int kPerLane = CC_ROUTING_MAX_EXPERTS / 32;

template <bool kVec4>
__device__ __forceinline__ float plane_sum(const float *__restrict__ plane, long long hw, int lane)
{
    float sum = 0.0f;
    if (kVec4) {
        // Streamed once: __ldcs keeps L2 for the expert weights that follow.
        const float4 *p4 = reinterpret_cast<const float4 *>(plane);
        const long long n4 = hw >> 2;
        for (long long i = lane; i < n4; i += 32) {
            const float4 v = __ldcs(p4 + i);
            sum += (v.x + v.y) + (v.z + v.w);
        }
    } else {
        for (long long i = lane; i < hw; i += 32) sum += __ldcs(plane + i);
    }
    return cc_warp_sum(sum);
}

template <bool kVec4>
__global__ void __launch_bounds__(kWarps * 32)
    routing_kernel(const float *__restrict__ x, const float *__restrict__ weight_t, const float *__restrict__ bias,
                   float *__restrict__ alpha, int channels, long long hw, int experts, int softmax,
                   float inv_temperature)
{
    __shared__ float partial[kWarps][CC_ROUTING_MAX_EXPERTS];
    __shared__ float logits[CC_ROUTING_MAX_EXPERTS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x;
    const float inv_hw = 1.0f / (float)hw;

    float acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[j] = 0.0f;

    const float *sample = x + (size_t)n * (size_t)channels * (size_t)hw;
    for (int c = warp; c < channels; c += kWarps) {
        const float mean = plane_sum<kVec4>(sample + (size_t)c * (size_t)hw, hw, lane) * inv_hw;
        const float *row = weight_t + (size_t)c * (size_t)experts;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
            const int e = lane + 32 * j;
            if (e < experts) acc[j] += __ldg(row + e) * mean;
        }
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int e = lane + 32 * j;
        if (e < experts) partial[warp][e] = acc[j];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < experts; e += blockDim.x) {
        float z = bias[e];
        for (int w = 0; w < kWarps; ++w) z += partial[w][e];
        logits[e] = z;
    }
    __syncthreads();

    float *out = alpha + (size_t)n * (size_t)experts;
    if (!softmax) {
        for (int e = threadIdx.x; e < experts; e += blockDim.x) out[e] = 1.0f / (1.0f + expf(-logits[e]));
        return;
    }
    if (warp != 0) return;
    float v[kPerLane];
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
        const int e = lane + 32 * j;
        v[j] = e < experts ? logits[e] * inv_temperature : -INFINITY;
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

extern "C" cudaError_t cc_launch_routing(const float *x, const float *weight_t, const float *bias, float *alpha, int n,
                                         int c, long long hw, int e, int softmax, float inv_temperature,
                                         cudaStream_t stream)
{
    if (n <= 0 || c <= 0 || hw <= 0 || e <= 0 || e > CC_ROUTING_MAX_EXPERTS) return cudaErrorInvalidValue;
    const dim3 grid((unsigned int)n), block(kWarps * 32);
    if (hw % 4 == 0 && cc_aligned16(x))
        routing_kernel<true><<<grid, block, 0, stream>>>(x, weight_t, bias, alpha, c, hw, e, softmax, inv_temperature);
    else
        routing_kernel<false><<<grid, block, 0, stream>>>(x, weight_t, bias, alpha, c, hw, e, softmax, inv_temperature);
    return cudaGetLastError();
}
