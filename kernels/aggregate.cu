// Batched per-sample kernel aggregation:
//   filters[n][j] = sum_e alpha[n][e] * experts[e][j]     (j < |W|)
//   biases[n][o]  = sum_e alpha[n][e] * bias[e][o]        (o < Cout)
//
// Memory-bound: it must write N*|W| and should read the experts E*|W| as few
// times as possible. Each thread owns 4 consecutive weights (one 16-byte load
// per expert when |W| % 4 == 0) and kSamples = 8 samples: an expert's 4
// weights are loaded once and mixed into 8 samples' accumulators, so the
// experts are read ceil(N / 8) times (from L2 after the first), not N times.
// alpha for the block's 8 samples is staged in shared memory. Blocks past the
// weight range do the biases the same way, so one launch covers both.
// The per-sample filters are written with ordinary stores: the convolution
// reads them right after, ideally from L2.
//
// Validated against the CPU reference through every algorithm that uses it
// (tests/test_gpu_forward.c); its bandwidth is reported by condconv-bench.
#include "aggregate.h"
#include "common.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kSamples = 8;

template <int kVec>
struct vec_t;
template <>
struct vec_t<4> {
    using type = float4;
};
template <>
struct vec_t<1> {
    using type = float;
};

__device__ __forceinline__ void fma_into(float4 &acc, float a, const float4 &w)
{
    acc.x = fmaf(a, w.x, acc.x);
    acc.y = fmaf(a, w.y, acc.y);
    acc.z = fmaf(a, w.z, acc.z);
    acc.w = fmaf(a, w.w, acc.w);
}
__device__ __forceinline__ void fma_into(float &acc, float a, float w) { acc = fmaf(a, w, acc); }
__device__ __forceinline__ void zero(float4 &v) { v = make_float4(0.f, 0.f, 0.f, 0.f); }
__device__ __forceinline__ void zero(float &v) { v = 0.f; }

template <int kVec>
__global__ void __launch_bounds__(kThreads)
    aggregate_kernel(const float *__restrict__ experts, const float *__restrict__ bias, const float *__restrict__ alpha,
                     float *__restrict__ filters, float *__restrict__ biases, long long filter_elems, int cout, int n,
                     int e_count, unsigned int weight_blocks)
{
    using V = typename vec_t<kVec>::type;
    CC_DYNAMIC_SHARED(float, alpha_s); // [kSamples][E]
    const long long vec_elems = filter_elems / kVec;

    for (int n0 = blockIdx.y * kSamples; n0 < n; n0 += gridDim.y * kSamples) {
        const int samples = min(kSamples, n - n0);
        __syncthreads(); // the previous chunk's readers are done with alpha_s
        for (int i = threadIdx.x; i < kSamples * e_count; i += blockDim.x) {
            const int s = i / e_count;
            alpha_s[i] = s < samples ? alpha[(size_t)(n0 + s) * e_count + (i - s * e_count)] : 0.0f;
        }
        __syncthreads();

        if (blockIdx.x < weight_blocks) {
            const V *src = reinterpret_cast<const V *>(experts);
            V *dst = reinterpret_cast<V *>(filters);
            for (long long j = (long long)blockIdx.x * kThreads + threadIdx.x; j < vec_elems;
                 j += (long long)weight_blocks * kThreads) {
                V acc[kSamples];
#pragma unroll
                for (int s = 0; s < kSamples; ++s) zero(acc[s]);
                for (int e = 0; e < e_count; ++e) {
                    const V w = __ldg(src + (size_t)e * vec_elems + j);
#pragma unroll
                    for (int s = 0; s < kSamples; ++s) fma_into(acc[s], alpha_s[s * e_count + e], w);
                }
#pragma unroll
                for (int s = 0; s < kSamples; ++s)
                    if (s < samples) dst[(size_t)(n0 + s) * vec_elems + j] = acc[s];
            }
        } else if (bias != nullptr) {
            const int o = (int)(blockIdx.x - weight_blocks) * kThreads + threadIdx.x;
            if (o < cout) {
                float acc[kSamples] = {};
                for (int e = 0; e < e_count; ++e) {
                    const float b = __ldg(bias + (size_t)e * cout + o);
#pragma unroll
                    for (int s = 0; s < kSamples; ++s) acc[s] = fmaf(alpha_s[s * e_count + e], b, acc[s]);
                }
#pragma unroll
                for (int s = 0; s < kSamples; ++s)
                    if (s < samples) biases[(size_t)(n0 + s) * cout + o] = acc[s];
            }
        }
    }
}

} // namespace

extern "C" cudaError_t cc_launch_aggregate(const float *experts, const float *bias, const float *alpha, float *filters,
                                           float *biases, long long filter_elems, int cout, int n, int e,
                                           cudaStream_t stream)
{
    if (filter_elems <= 0 || cout <= 0 || n <= 0 || e <= 0) return cudaErrorInvalidValue;
    const bool vec4 = filter_elems % 4 == 0 && cc_aligned16(experts) && cc_aligned16(filters);
    const long long vec_elems = vec4 ? filter_elems / 4 : filter_elems;
    // Enough blocks along x for the weights (capped: the loop strides), a
    // few more for the biases, and sample chunks along y.
    const unsigned int weight_blocks = cc_grid_1d(vec_elems, kThreads, 1u << 20);
    const unsigned int bias_blocks = bias ? cc_grid_1d(cout, kThreads, 1u << 20) : 0u;
    const dim3 grid(weight_blocks + bias_blocks, cc_grid_1d(n, kSamples, 65535u));
    const size_t smem = sizeof(float) * kSamples * (size_t)e;
    if (vec4)
        return cc_launch(aggregate_kernel<4>, grid, kThreads, smem, stream, experts, bias, alpha, filters, biases,
                         filter_elems, cout, n, e, weight_blocks);
    return cc_launch(aggregate_kernel<1>, grid, kThreads, smem, stream, experts, bias, alpha, filters, biases,
                     filter_elems, cout, n, e, weight_blocks);
}
