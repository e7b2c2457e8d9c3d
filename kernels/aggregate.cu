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
// Variants (issue 19: a speed idea no GPU has measured ships as a candidate
// beside the measured kernel; AUTO times each candidate at prepare, on the
// user's GPU, and keeps the fastest, so none of them replaces variant 0):
//   0  the kernel above: 4 floats or 8 halves x 8 samples per thread. The
//      measured one (bench/results/2026-11-28-nvidia-h200-2), used by
//      cc_launch_aggregate and wherever no measurement was made.
//   1  the same kernel with 16 samples per thread (kSamples is its tile).
//   2  one sample per thread (aggregate_one_sample_kernel), for small N.
// Each variant's comment says where it may win and what a GPU must confirm.
// All three compute every output by the same chain of f32 FMAs in expert
// order, so their results are bit for bit the same.
//
// Validated on the CPU layer (tests/cuda_cpu/test_emu_aggregate.c) and
// through every algorithm that uses it (tests/test_gpu_forward.c); its
// bandwidth is reported by condconv-bench and bench/dev/aggregate_dev.cu.
#include "aggregate.h"
#include "element_vec.cuh"

namespace {

constexpr int kThreads = 256;

// Samples per thread of variant 0 (the measured kernel) and of variant 1.
constexpr int kSamplesV0 = 8;
constexpr int kSamplesV1 = 16;

// Variant 1: kSamples = 16. A CANDIDATE, timed by AUTO at prepare. Why it
// may win: each expert vector a thread loads is mixed into 16 samples, so
// the experts are re-read ceil(N/16) times from L2 instead of ceil(N/8) and
// the grid has half the blocks along y, each doing twice the FMAs per load.
// Where: mid-size batches (N around 32 on the dev driver's H200 run:
// 11.26 vs 11.62 us at |W|=75264, E=8) where L2 re-reads of the experts, not
// the N*|W| writes, are what limits. Where it loses: N <= 8 (a partial chunk
// of 16 wastes more than half the thread's work; half as many blocks), and
// large N, where the writes dominate and the 64 (f32) or 128 (f16/bf16)
// accumulators per thread cut occupancy (f16: about 150 registers, one
// 256-thread block per SM). No minimum-blocks argument: 2 blocks per SM
// would cap the f16/bf16 instance at 128 registers and spill its 128
// accumulators (scripts/check-spills.sh holds it to 0). A GPU must confirm
// the gain exists at all on the card, beyond noise, for the N it is chosen
// at, and that the f16 instance's low occupancy does not lose it.
//
// V = weights per thread: cc_vec16<T>::count (16 bytes) or 1; kSamples =
// samples per thread (the tile along N: 8 for variant 0, 16 for variant 1).
template <typename T, int V, int kSamples>
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

template <typename T, int kSamples>
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
        return cc_launch(aggregate_kernel<T, kVec, kSamples>, grid, kThreads, smem, stream, experts, bias, alpha,
                         filters, biases, filter_elems, cout, n, e, weight_blocks);
    return cc_launch(aggregate_kernel<T, 1, kSamples>, grid, kThreads, smem, stream, experts, bias, alpha, filters,
                     biases, filter_elems, cout, n, e, weight_blocks);
}

// Variant 2: one sample per thread. A CANDIDATE, timed by AUTO at prepare.
// Why it may win: at small N the 8-sample kernel's grid is |W|/V/256 blocks
// (74 for |W|=75264 f32: about half an H200's SMs) and at N=1 seven of the
// eight accumulator rows of every thread are wasted FMAs and registers. Here
// the grid is |W|/V x N threads, one 16-byte vector of one sample each (the
// widest load a thread issues), with few registers (V accumulators), so
// every SM gets blocks and many loads are in flight per SM. The cost: every
// sample re-reads the experts (E*|W| per sample, from L2 after the first),
// so it should lose once N is past a few samples. The dev driver's scalar
// and one-sample variants took 7.6-8.4 us at N=1 where variant 0 took
// 9.1-9.5 us (H200, |W|=75264, E=8). alpha is read with __ldg, not staged:
// the whole block works on one sample, so the address is uniform (one
// broadcast per warp, an L1 hit after the first) and no barrier is needed.
// A GPU must confirm the N=1 gain through this library kernel (the dev
// variants were f32 only), for f16/bf16 too, and up to which N it holds.
//
// Minimum 4 blocks of 256 threads per SM (half an SM's threads): a cap of
// 64 registers, with 0 spill bytes at sm_80 and sm_90. 6 blocks (40
// registers) spill at sm_80 and 8 (32) at both, so 4 is the most this
// variant can ask for. Blocks past the weight range do the biases of their
// sample.
constexpr int kOneSampleMinBlocks = 4;

template <typename T, int V>
__global__ void __launch_bounds__(kThreads, kOneSampleMinBlocks)
    aggregate_one_sample_kernel(const T *__restrict__ experts, const float *__restrict__ bias,
                                const float *__restrict__ alpha, T *__restrict__ filters, float *__restrict__ biases,
                                long long filter_elems, int cout, int n, int e_count, unsigned int weight_blocks)
{
    const long long vec_elems = filter_elems / V;
    const unsigned int bias_blocks = gridDim.x - weight_blocks;
    for (int s = blockIdx.y; s < n; s += gridDim.y) {
        const float *alpha_n = alpha + (size_t)s * e_count;
        if (blockIdx.x < weight_blocks) {
            for (long long j = (long long)blockIdx.x * kThreads + threadIdx.x; j < vec_elems;
                 j += (long long)weight_blocks * kThreads) {
                float acc[V];
#pragma unroll
                for (int k = 0; k < V; ++k) acc[k] = 0.0f;
                for (int e = 0; e < e_count; ++e) {
                    float w[V];
                    cc_vec_ldg<T, V>(experts + ((size_t)e * vec_elems + j) * V, w);
                    const float a = __ldg(alpha_n + e);
#pragma unroll
                    for (int k = 0; k < V; ++k) acc[k] = fmaf(a, w[k], acc[k]);
                }
                cc_vec_store<T, V>(filters + ((size_t)s * vec_elems + j) * V, acc);
            }
        } else if (bias != nullptr) {
            // long long: o + the stride must not overflow for Cout near INT_MAX.
            for (long long o = (long long)(blockIdx.x - weight_blocks) * kThreads + threadIdx.x; o < cout;
                 o += (long long)kThreads * bias_blocks) {
                float acc = 0.0f;
                for (int e = 0; e < e_count; ++e)
                    acc = fmaf(__ldg(alpha_n + e), __ldg(bias + (size_t)e * cout + o), acc);
                biases[(size_t)s * cout + o] = acc;
            }
        }
    }
}

template <typename T>
cudaError_t launch_aggregate_one_sample(const T *experts, const float *bias, const float *alpha, T *filters,
                                        float *biases, long long filter_elems, int cout, int n, int e,
                                        cudaStream_t stream)
{
    constexpr int kVec = cc_vec16<T>::count;
    // 16-byte accesses under variant 0's conditions, one weight otherwise.
    const bool wide = cc_aligned16(experts) && cc_aligned16(filters) && filter_elems % kVec == 0;
    const long long vectors = wide ? filter_elems / kVec : filter_elems;
    // Weight blocks along x (capped: the loop strides), bias blocks after
    // them, and one sample per block row along y (capped: the loop strides).
    const unsigned int weight_blocks = cc_grid_1d(vectors, kThreads, 1u << 20);
    const unsigned int bias_blocks = bias ? cc_grid_1d(cout, kThreads, 1u << 20) : 0u;
    const dim3 grid(weight_blocks + bias_blocks, cc_grid_1d(n, 1, 65535u));
    if (wide)
        return cc_launch(aggregate_one_sample_kernel<T, kVec>, grid, kThreads, 0, stream, experts, bias, alpha, filters,
                         biases, filter_elems, cout, n, e, weight_blocks);
    return cc_launch(aggregate_one_sample_kernel<T, 1>, grid, kThreads, 0, stream, experts, bias, alpha, filters,
                     biases, filter_elems, cout, n, e, weight_blocks);
}

} // namespace

extern "C" cudaError_t cc_launch_aggregate_variant(int variant, int dtype, const void *experts, const float *bias,
                                                   const float *alpha, void *filters, float *biases,
                                                   long long filter_elems, int cout, int n, int e, cudaStream_t stream)
{
    if (variant < 0 || variant >= CC_AGGREGATE_VARIANTS) return cudaErrorInvalidValue;
    if (filter_elems <= 0 || cout <= 0 || n <= 0 || e <= 0) return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T *x = static_cast<const T *>(experts);
        T *y = static_cast<T *>(filters);
        switch (variant) {
        case 1: return launch_aggregate<T, kSamplesV1>(x, bias, alpha, y, biases, filter_elems, cout, n, e, stream);
        case 2: return launch_aggregate_one_sample<T>(x, bias, alpha, y, biases, filter_elems, cout, n, e, stream);
        default: return launch_aggregate<T, kSamplesV0>(x, bias, alpha, y, biases, filter_elems, cout, n, e, stream);
        }
    });
}

extern "C" cudaError_t cc_launch_aggregate(int dtype, const void *experts, const float *bias, const float *alpha,
                                           void *filters, float *biases, long long filter_elems, int cout, int n, int e,
                                           cudaStream_t stream)
{
    return cc_launch_aggregate_variant(0, dtype, experts, bias, alpha, filters, biases, filter_elems, cout, n, e,
                                       stream);
}

extern "C" const char *cc_aggregate_variant_name(int variant)
{
    static const char *const names[CC_AGGREGATE_VARIANTS] = {"8 samples/thread", "16 samples/thread",
                                                             "1 sample/thread"};
    return variant >= 0 && variant < CC_AGGREGATE_VARIANTS ? names[variant] : "?";
}
