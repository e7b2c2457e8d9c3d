// Batched per-sample kernel aggregation:
//   filters[n][j] = sum_e alpha[n][e] * experts[e][j]     (j < |W|)
//   biases[n][o]  = sum_e alpha[n][e] * bias[e][o]        (o < Cout)
//
// Memory-bound: it must write N*|W| and should read the experts E*|W| as few
// times as possible. Each thread owns one 16-byte vector of consecutive
// weights (4 floats or 8 halves: one load per expert, when |W| is a multiple
// of the vector and experts and filters are 16-byte aligned; else 1 weight)
// and kSamples = 8 samples: an expert's weights are loaded once and mixed into
// 8 samples' accumulators, so the experts are read ceil(N / 8) times (from L2
// after the first), not N times. alpha for the block's 8 samples is staged in
// shared memory. Blocks past the weight range do the biases the same way
// (grid-stride over Cout), so one launch covers both.
//
// Element types: experts and filters in T (float, __half, __nv_bfloat16),
// loads converted exactly to f32, the E-term sum accumulated in f32 by FMA in
// expert order (the f32 instance computes exactly what it did before T), and
// each filter rounded once to T at the store. alpha, bias and biases are f32.
// The per-sample filters are written with ordinary stores: the convolution
// reads them right after, ideally from L2.
//
// Validated on the CPU layer (tests/cuda_cpu/test_emu_aggregate.c) and
// through every algorithm that uses it (tests/test_gpu_forward.c); its
// bandwidth is reported by condconv-bench and bench/dev/aggregate_dev.cu.
#include "aggregate.h"
#include "element_vec.cuh"

namespace {

constexpr int kThreads = 256;
constexpr int kSamples = 8;

// V = weights per thread: cc_vec16<T>::count (16 bytes) or 1.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    aggregate_kernel(const T *__restrict__ experts, const float *__restrict__ bias, const float *__restrict__ alpha,
                     T *__restrict__ filters, float *__restrict__ biases, long long filter_elems, int cout, int n,
                     int e_count, unsigned int weight_blocks)
{
    CC_DYNAMIC_SHARED(float, alpha_s); // [kSamples][E]
    const long long vec_elems = filter_elems / V;
    const unsigned int bias_blocks = gridDim.x - weight_blocks;

    for (int n0 = blockIdx.y * kSamples; n0 < n; n0 += gridDim.y * kSamples) {
        const int samples = min(kSamples, n - n0);
        __syncthreads(); // the previous chunk's readers are done with alpha_s
        for (int i = threadIdx.x; i < kSamples * e_count; i += blockDim.x) {
            const int s = i / e_count;
            alpha_s[i] = s < samples ? alpha[(size_t)(n0 + s) * e_count + (i - s * e_count)] : 0.0f;
        }
        __syncthreads();

        if (blockIdx.x < weight_blocks) {
            for (long long j = (long long)blockIdx.x * kThreads + threadIdx.x; j < vec_elems;
                 j += (long long)weight_blocks * kThreads) {
                float acc[kSamples][V];
#pragma unroll
                for (int s = 0; s < kSamples; ++s)
#pragma unroll
                    for (int k = 0; k < V; ++k) acc[s][k] = 0.0f;
                for (int e = 0; e < e_count; ++e) {
                    float w[V];
                    cc_vec_ldg<T, V>(experts + ((size_t)e * vec_elems + j) * V, w);
#pragma unroll
                    for (int s = 0; s < kSamples; ++s) {
                        const float a = alpha_s[s * e_count + e];
#pragma unroll
                        for (int k = 0; k < V; ++k) acc[s][k] = fmaf(a, w[k], acc[s][k]);
                    }
                }
#pragma unroll
                for (int s = 0; s < kSamples; ++s)
                    if (s < samples) cc_vec_store<T, V>(filters + ((size_t)(n0 + s) * vec_elems + j) * V, acc[s]);
            }
        } else if (bias != nullptr) {
            // long long: o + the stride must not overflow for Cout near INT_MAX.
            for (long long o = (long long)(blockIdx.x - weight_blocks) * kThreads + threadIdx.x; o < cout;
                 o += (long long)bias_blocks * kThreads) {
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

template <typename T>
cudaError_t launch_aggregate(const T *experts, const float *bias, const float *alpha, T *filters, float *biases,
                             long long filter_elems, int cout, int n, int e, cudaStream_t stream)
{
    constexpr int kVec = cc_vec16<T>::count;
    const bool vec = filter_elems % kVec == 0 && cc_aligned16(experts) && cc_aligned16(filters);
    const long long vec_elems = vec ? filter_elems / kVec : filter_elems;
    // Enough blocks along x for the weights (capped: the loop strides), a
    // few more for the biases (capped too: that loop strides as well), and
    // sample chunks along y.
    const unsigned int weight_blocks = cc_grid_1d(vec_elems, kThreads, 1u << 20);
    const unsigned int bias_blocks = bias ? cc_grid_1d(cout, kThreads, 1u << 20) : 0u;
    const dim3 grid(weight_blocks + bias_blocks, cc_grid_1d(n, kSamples, 65535u));
    const size_t smem = sizeof(float) * kSamples * (size_t)e;
    if (vec)
        return cc_launch(aggregate_kernel<T, kVec>, grid, kThreads, smem, stream, experts, bias, alpha, filters, biases,
                         filter_elems, cout, n, e, weight_blocks);
    return cc_launch(aggregate_kernel<T, 1>, grid, kThreads, smem, stream, experts, bias, alpha, filters, biases,
                     filter_elems, cout, n, e, weight_blocks);
}

} // namespace

extern "C" cudaError_t cc_launch_aggregate(int dtype, const void *experts, const float *bias, const float *alpha,
                                           void *filters, float *biases, long long filter_elems, int cout, int n, int e,
                                           cudaStream_t stream)
{
    if (filter_elems <= 0 || cout <= 0 || n <= 0 || e <= 0) return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        return launch_aggregate<T>(static_cast<const T *>(experts), bias, alpha, static_cast<T *>(filters), biases,
                                   filter_elems, cout, n, e, stream);
    });
}

extern "C" cudaError_t cc_launch_aggregate_variant(int variant, int dtype, const void *experts, const float *bias,
                                                   const float *alpha, void *filters, float *biases,
                                                   long long filter_elems, int cout, int n, int e, cudaStream_t stream)
{
    if (variant != 0) return cudaErrorInvalidValue;
    return cc_launch_aggregate(dtype, experts, bias, alpha, filters, biases, filter_elems, cout, n, e, stream);
}

extern "C" const char *cc_aggregate_variant_name(int variant) { return variant == 0 ? "8 samples/thread" : "?"; }
