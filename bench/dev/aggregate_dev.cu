// Kernel-development driver for batched per-sample aggregation (llm.c's
// dev/cuda habit): a CPU reference, exploratory variants, and a driver that
// validates every variant against the reference before it times it.
//
//   filters[n][j] = sum_e alpha[n][e] * experts[e][j]   (j < |W|, n < N)
//
// Build (from the repository root, on a GPU machine):
//   nvcc -O3 -arch=sm_90 -std=c++17 -Ikernels bench/dev/aggregate_dev.cu kernels/aggregate.cu -o aggregate_dev
// Run: ./aggregate_dev            (validates, then times each variant on the
//                                  EfficientNet-CondConv-B0 1x1 shapes)
//
// Variants:
//   1  one thread per output element (n, j), scalar: reads the experts N times
//      from L2 -- the naive fused layout of where-the-time-goes.md.
//   2  one thread per 4 weights (16-byte loads) and one sample: experts still
//      re-read per sample, but vectorised.
//   3  the library's kernel (kernels/aggregate.cu): 4 weights x 8 samples per
//      thread, alpha staged in shared memory; experts read ceil(N/8) times.
//   4  as 3 with 16 samples per thread: half the expert reads again, twice
//      the registers -- worth it only when L2 bandwidth, not the N*|W| writes,
//      limits. The library keeps whichever of 3 and 4 wins on the card.
//   5  the library's kernel on f16 experts and filters (8 halves x 8 samples
//      per thread, f32 accumulation, one rounding).
//   6  the same on bf16.
//   7-15  the library's candidates (cc_launch_aggregate_variant, which AUTO
//      times at prepare): 7, 8, 9 = variants 0 (8 samples/thread), 1 (16
//      samples/thread) and 2 (1 sample/thread) on f32, 10-12 the same on
//      f16, 13-15 on bf16. Variant 0 is 3/5/6 through the variant entry
//      point; 1 is 4 with the library's fallbacks and biases; 2 is the
//      library's form of 2, for the small N where 1 and 2 beat 3.
// The floor: N*|W| elements written once plus E*|W| read once (from HBM), at
// the device-to-device copy bandwidth the bench measures. Variants 5, 6
// and 10-15 are validated against the reference on the experts rounded to their dtype,
// within one ulp of the dtype (2^-10 relative for f16, 2^-7 for bf16) plus
// the f32 bound.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregate.h"

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));                     \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

// ---------------------------------------------------------------------------
// CPU reference

static void aggregate_cpu(const float *experts, const float *alpha, float *filters, long long w, int n, int e)
{
    for (int s = 0; s < n; ++s)
        for (long long j = 0; j < w; ++j) {
            double acc = 0.0;
            for (int k = 0; k < e; ++k) acc += (double)alpha[s * e + k] * experts[k * w + j];
            filters[s * w + j] = (float)acc;
        }
}

// ---------------------------------------------------------------------------
// GPU kernels

__global__ void aggregate_naive(const float *experts, const float *alpha, float *filters, long long w, int n, int e)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= w * n) return;
    const int s = (int)(i / w);
    const long long j = i - (long long)s * w;
    float acc = 0.0f;
    for (int k = 0; k < e; ++k) acc = fmaf(alpha[s * e + k], experts[k * w + j], acc);
    filters[i] = acc;
}

__global__ void aggregate_vec4_one_sample(const float4 *experts, const float *alpha, float4 *filters, long long w4,
                                          int n, int e)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= w4 * n) return;
    const int s = (int)(i / w4);
    const long long j = i - (long long)s * w4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k < e; ++k) {
        const float a = __ldg(alpha + s * e + k);
        const float4 v = __ldg(experts + k * w4 + j);
        acc.x = fmaf(a, v.x, acc.x);
        acc.y = fmaf(a, v.y, acc.y);
        acc.z = fmaf(a, v.z, acc.z);
        acc.w = fmaf(a, v.w, acc.w);
    }
    filters[i] = acc;
}

template <int kSamples>
__global__ void aggregate_vec4_samples(const float4 *experts, const float *alpha, float4 *filters, long long w4, int n,
                                       int e)
{
    extern __shared__ float alpha_s[];
    const int n0 = blockIdx.y * kSamples;
    for (int i = threadIdx.x; i < kSamples * e; i += blockDim.x)
        alpha_s[i] = (n0 + i / e < n) ? alpha[(size_t)n0 * e + i] : 0.0f;
    __syncthreads();
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= w4) return;
    float4 acc[kSamples];
#pragma unroll
    for (int s = 0; s < kSamples; ++s) acc[s] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k < e; ++k) {
        const float4 v = __ldg(experts + k * w4 + j);
#pragma unroll
        for (int s = 0; s < kSamples; ++s) {
            const float a = alpha_s[s * e + k];
            acc[s].x = fmaf(a, v.x, acc[s].x);
            acc[s].y = fmaf(a, v.y, acc[s].y);
            acc[s].z = fmaf(a, v.z, acc[s].z);
            acc[s].w = fmaf(a, v.w, acc[s].w);
        }
    }
#pragma unroll
    for (int s = 0; s < kSamples; ++s)
        if (n0 + s < n) filters[(size_t)(n0 + s) * w4 + j] = acc[s];
}

// ---------------------------------------------------------------------------
// Launchers

// The dtype of a variant's experts and filters.
static int variant_dtype(int v)
{
    if (v == 5) return CC_DTYPE_F16;
    if (v == 6) return CC_DTYPE_BF16;
    if (v >= 7) return (v - 7) / 3 == 0 ? CC_DTYPE_F32 : (v - 7) / 3 == 1 ? CC_DTYPE_F16 : CC_DTYPE_BF16;
    return CC_DTYPE_F32;
}

// Device buffers of one run: f32 experts and output for variants 1-4, 16-bit
// copies for 5 (f16) and 6 (bf16).
struct buffers {
    const float *experts, *alpha;
    float *filters;
    const void *experts16;
    void *filters16;
};

static void launch(int variant, const buffers &b, long long w, int n, int e, int block)
{
    const float *experts = b.experts, *alpha = b.alpha;
    float *filters = b.filters;
    const long long w4 = w / 4;
    switch (variant) {
    case 1:
        aggregate_naive<<<(unsigned)((w * n + block - 1) / block), block>>>(experts, alpha, filters, w, n, e);
        break;
    case 2:
        aggregate_vec4_one_sample<<<(unsigned)((w4 * n + block - 1) / block), block>>>((const float4 *)experts, alpha,
                                                                                       (float4 *)filters, w4, n, e);
        break;
    case 3: CHECK(cc_launch_aggregate(CC_DTYPE_F32, experts, NULL, alpha, filters, NULL, w, 1, n, e, 0)); break;
    case 5:
    case 6:
        CHECK(cc_launch_aggregate(variant == 5 ? CC_DTYPE_F16 : CC_DTYPE_BF16, b.experts16, NULL, alpha, b.filters16,
                                  NULL, w, 1, n, e, 0));
        break;
    case 7:
    case 8:
    case 9:
    case 10:
    case 11:
    case 12:
    case 13:
    case 14:
    case 15: {
        const bool f32 = variant_dtype(variant) == CC_DTYPE_F32;
        CHECK(cc_launch_aggregate_variant((variant - 7) % 3, variant_dtype(variant),
                                          f32 ? (const void *)experts : b.experts16, NULL, alpha,
                                          f32 ? (void *)filters : b.filters16, NULL, w, 1, n, e, 0));
        break;
    }
    case 4: {
        const dim3 grid((unsigned)((w4 + block - 1) / block), (unsigned)((n + 15) / 16));
        aggregate_vec4_samples<16>
            <<<grid, block, sizeof(float) * 16 * e>>>((const float4 *)experts, alpha, (float4 *)filters, w4, n, e);
        break;
    }
    }
    CHECK(cudaGetLastError());
}

// ---------------------------------------------------------------------------
// Driver: validate every variant, then time it.

// The f32 output of `variant` on the host (16-bit outputs converted exactly).
static void download(int variant, const buffers &b, float *out, size_t count, void *scratch)
{
    const int dtype = variant_dtype(variant);
    if (dtype == CC_DTYPE_F32) {
        CHECK(cudaMemcpy(out, b.filters, sizeof(float) * count, cudaMemcpyDeviceToHost));
        return;
    }
    CHECK(cudaMemcpy(scratch, b.filters16, 2 * count, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < count; ++i)
        out[i] = dtype == CC_DTYPE_F16 ? __half2float(((const __half *)scratch)[i])
                                       : __bfloat162float(((const __nv_bfloat16 *)scratch)[i]);
}

int main(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("aggregate_dev: no CUDA device\n");
        return 77;
    }
    // |W| of EfficientNet-CondConv-B0's 1x1 layers: 112x672, 672x112, 1152x192, 1152x320.
    const long long widths[] = {112 * 672, 672 * 112, 1152 * 192, 1152 * 320};
    const int batches[] = {1, 32, 128}, e = 8, variants = 15;
    const int blocks[] = {128, 256, 512};
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; ++wi)
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; ++bi) {
            const long long w = widths[wi];
            const int n = batches[bi];
            float *h_exp = (float *)malloc(sizeof(float) * w * e), *h_alpha = (float *)malloc(sizeof(float) * n * e);
            float *h_ref = (float *)malloc(sizeof(float) * w * n), *h_out = (float *)malloc(sizeof(float) * w * n);
            // The experts rounded to f16 / bf16 (as floats and as their bits), and the reference on them.
            float *h_exp16 = (float *)malloc(sizeof(float) * w * e), *h_ref16 = (float *)malloc(sizeof(float) * w * n);
            __half *h_half = (__half *)malloc(2 * w * e);
            __nv_bfloat16 *h_bf = (__nv_bfloat16 *)malloc(2 * w * e);
            void *scratch = malloc(2 * w * n);
            for (long long i = 0; i < w * e; ++i) h_exp[i] = (float)rand() / RAND_MAX * 2.0f - 1.0f;
            for (int i = 0; i < n * e; ++i) h_alpha[i] = (float)rand() / RAND_MAX;
            for (long long i = 0; i < w * e; ++i) {
                h_half[i] = __float2half_rn(h_exp[i]);
                h_bf[i] = __float2bfloat16_rn(h_exp[i]);
            }
            aggregate_cpu(h_exp, h_alpha, h_ref, w, n, e);
            float *d_exp, *d_alpha, *d_out;
            void *d_exp16, *d_out16;
            CHECK(cudaMalloc(&d_exp, sizeof(float) * w * e));
            CHECK(cudaMalloc(&d_alpha, sizeof(float) * n * e));
            CHECK(cudaMalloc(&d_out, sizeof(float) * w * n));
            CHECK(cudaMalloc(&d_exp16, 2 * w * e));
            CHECK(cudaMalloc(&d_out16, 2 * w * n));
            CHECK(cudaMemcpy(d_exp, h_exp, sizeof(float) * w * e, cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(d_alpha, h_alpha, sizeof(float) * n * e, cudaMemcpyHostToDevice));
            const buffers bufs = {d_exp, d_alpha, d_out, d_exp16, d_out16};
            for (int v = 1; v <= variants; ++v) {
                const int dtype = variant_dtype(v);
                const bool sixteen = dtype != CC_DTYPE_F32, half = dtype == CC_DTYPE_F16;
                if (sixteen) { // the 16-bit experts and their reference
                    CHECK(cudaMemcpy(d_exp16, half ? (const void *)h_half : (const void *)h_bf, 2 * w * e,
                                     cudaMemcpyHostToDevice));
                    for (long long i = 0; i < w * e; ++i)
                        h_exp16[i] = half ? __half2float(h_half[i]) : __bfloat162float(h_bf[i]);
                    aggregate_cpu(h_exp16, h_alpha, h_ref16, w, n, e);
                }
                const float *ref = sixteen ? h_ref16 : h_ref;
                // One ulp of the output dtype relative, on top of f32's bound.
                const float rel = !sixteen ? 0.0f : half ? 1.0f / 1024 : 1.0f / 128;
                const double bytes = (sixteen ? 2.0 : 4.0) * (double)w * (n + e);
                for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; ++k) {
                    if (v >= 3 && v != 4 && k > 0) continue; // the library picks its own block size
                    // NaN poison.
                    CHECK(sixteen ? cudaMemset(d_out16, 0xff, 2 * w * n)
                                  : cudaMemset(d_out, 0xff, sizeof(float) * w * n));
                    launch(v, bufs, w, n, e, blocks[k]);
                    download(v, bufs, h_out, (size_t)(w * n), scratch);
                    long long bad = 0;
                    for (long long i = 0; i < w * n; ++i) {
                        const float d = fabsf(h_out[i] - ref[i]);
                        if (!(d <= 1e-5f + (1e-5f + rel) * fabsf(ref[i]))) {
                            if (bad < 3) fprintf(stderr, "  v%d [%lld]: %g vs %g\n", v, i, h_out[i], ref[i]);
                            ++bad;
                        }
                    }
                    if (bad) {
                        printf("variant %d block %d: %lld mismatches, not timed\n", v, blocks[k], bad);
                        continue;
                    }
                    cudaEvent_t a, b;
                    CHECK(cudaEventCreate(&a));
                    CHECK(cudaEventCreate(&b));
                    for (int r = 0; r < 3; ++r) launch(v, bufs, w, n, e, blocks[k]);
                    float times[21];
                    for (int r = 0; r < 21; ++r) {
                        CHECK(cudaEventRecord(a));
                        launch(v, bufs, w, n, e, blocks[k]);
                        CHECK(cudaEventRecord(b));
                        CHECK(cudaEventSynchronize(b));
                        CHECK(cudaEventElapsedTime(&times[r], a, b));
                    }
                    for (int i = 1; i < 21; ++i) // insertion sort for the median
                        for (int j = i; j > 0 && times[j] < times[j - 1]; --j) {
                            const float t = times[j];
                            times[j] = times[j - 1];
                            times[j - 1] = t;
                        }
                    const double us = times[10] * 1e3;
                    printf("|W|=%7lld N=%3d E=%d variant %2d block %3d: %8.2f us  %7.1f GB/s (floor bytes)", w, n, e, v,
                           blocks[k], us, bytes / us * 1e-3);
                    if (v >= 7)
                        printf("  library %s %s", sixteen ? (half ? "f16" : "bf16") : "f32",
                               cc_aggregate_variant_name((v - 7) % 3));
                    printf("\n");
                    CHECK(cudaEventDestroy(a));
                    CHECK(cudaEventDestroy(b));
                }
            }
            CHECK(cudaFree(d_exp));
            CHECK(cudaFree(d_alpha));
            CHECK(cudaFree(d_out));
            CHECK(cudaFree(d_exp16));
            CHECK(cudaFree(d_out16));
            free(h_exp);
            free(h_alpha);
            free(h_ref);
            free(h_out);
            free(h_exp16);
            free(h_ref16);
            free(h_half);
            free(h_bf);
            free(scratch);
        }
    return 0;
}
