// Kernel-development driver for the fused routing (llm.c's dev/cuda habit):
// a CPU reference and a driver that validates every variant of
// kernels/routing.cu against it before it times it.
//
//   alpha[n][e] = sigmoid(b[e] + sum_c Wt[c][e] * mean_hw x[n][c][hw])
//
// Build (from the repository root, on a GPU machine):
//   nvcc -O3 -arch=sm_90 -std=c++17 -Ikernels bench/dev/routing_dev.cu kernels/routing.cu -o routing_dev
// Run: ./routing_dev      (validates, then times each variant on the
//                          EfficientNet-CondConv-B0 routing shapes)
//
// Variants (cc_launch_routing_variant, each with its own split count from
// cc_routing_splits_variant for this GPU's SMs):
//   0  the measured kernel: a warp pools 4 planes at a time (scalar loads
//      unless HW is a multiple of the 16-byte vector), the FC serially per
//      warp, 2 x SMs blocks.
//   1  the candidate (issue 19): lane groups sized to the plane with all of
//      a lane's loads in flight, NHWC column x pixel splits, 4 x SMs blocks,
//      the FC and the split hand-off in parallel (routing.cu says why).
// The floor: the bytes read once (x, the transposed weight) and written
// (alpha), at the device-to-device copy bandwidth measured first (bytes
// read + written). Each timed run starts with L2 scrubbed (a 256 MB memset
// outside the timed interval), so x comes from DRAM, as in a network where
// the previous layer's output has long left L2; "hot" repeats without the
// scrub are printed too. Validation: every alpha within 1e-4 + 1e-4 |ref|
// of the double reference (on x rounded to the dtype), and the split
// counters zero after the launch.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats.h"
#include "routing.h"

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));                     \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

// ---------------------------------------------------------------------------
// CPU reference (x in NCHW order as floats, already rounded to the dtype)

static void routing_cpu(const float *x, const float *wt, const float *b, double *alpha, int n, int c, int hw, int e)
{
    for (int s = 0; s < n; ++s) {
        double z[CC_ROUTING_MAX_EXPERTS];
        for (int k = 0; k < e; ++k) z[k] = b[k];
        for (int ch = 0; ch < c; ++ch) {
            double sum = 0.0;
            for (int i = 0; i < hw; ++i) sum += x[((size_t)s * c + ch) * hw + i];
            for (int k = 0; k < e; ++k) z[k] += wt[(size_t)ch * e + k] * (sum / hw);
        }
        for (int k = 0; k < e; ++k) alpha[(size_t)s * e + k] = 1.0 / (1.0 + exp(-z[k]));
    }
}

// ---------------------------------------------------------------------------
// Timing: median of 21 runs, each after an L2 scrub (cold) or back to back (hot).

static float median(float *t, int count)
{
    for (int i = 1; i < count; ++i) // insertion sort
        for (int j = i; j > 0 && t[j] < t[j - 1]; --j) {
            const float v = t[j];
            t[j] = t[j - 1];
            t[j - 1] = v;
        }
    return t[count / 2];
}

struct run_args {
    int variant, dtype, layout, n, c, hw, e, splits;
    const void *x;
    const float *wt, *b;
    float *alpha, *partial;
    unsigned int *counters;
};

static void launch(const run_args &r)
{
    CHECK(cc_launch_routing_variant(r.variant, r.dtype, r.layout, r.x, r.wt, r.b, r.alpha, r.n, r.c, r.hw, r.e, 0, 1.0f,
                                    r.splits, r.splits > 1 ? r.partial : NULL, r.splits > 1 ? r.counters : NULL, 0));
}

static double time_us(const run_args &r, void *scrub, size_t scrub_bytes, bool cold)
{
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i) launch(r);
    float t[21];
    for (int i = 0; i < 21; ++i) {
        if (cold) CHECK(cudaMemsetAsync(scrub, i & 0xff, scrub_bytes, 0));
        CHECK(cudaEventRecord(a));
        launch(r);
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        CHECK(cudaEventElapsedTime(&t[i], a, b));
    }
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    return median(t, 21) * 1e3;
}

// Device-to-device copy bandwidth (bytes read + written per second).
static double copy_bandwidth(void *scrub, size_t bytes)
{
    const size_t half = bytes / 2;
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    CHECK(cudaMemcpy((char *)scrub + half, scrub, half, cudaMemcpyDeviceToDevice));
    float t[5];
    for (int i = 0; i < 5; ++i) {
        CHECK(cudaEventRecord(a));
        CHECK(cudaMemcpyAsync((char *)scrub + half, scrub, half, cudaMemcpyDeviceToDevice, 0));
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        CHECK(cudaEventElapsedTime(&t[i], a, b));
    }
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    return 2.0 * (double)half / (median(t, 5) * 1e-3);
}

// ---------------------------------------------------------------------------
// Driver: validate every variant, then time it.

int main(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("routing_dev: no CUDA device\n");
        return 77;
    }
    int sm_count = 0;
    CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, 0));
    const size_t scrub_bytes = (size_t)256 << 20;
    void *scrub;
    CHECK(cudaMalloc(&scrub, scrub_bytes));
    const double copy_bw = copy_bandwidth(scrub, scrub_bytes);
    printf("routing_dev: %d SMs, device-to-device copy %.0f GB/s (the floor's bandwidth)\n", sm_count, copy_bw * 1e-9);

    // The routing inputs of EfficientNet-CondConv-B0's CondConv blocks (C x H x W).
    const int shapes[][2] = {{1152, 49}, {672, 196}, {240, 784}, {96, 3136}};
    const int batches[] = {1, 32, 128}, e = 8;
    const int dtypes[] = {CC_DTYPE_F32, CC_DTYPE_F16};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; ++si)
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; ++bi) {
            const int c = shapes[si][0], hw = shapes[si][1], n = batches[bi];
            const size_t elems = (size_t)n * c * hw;
            float *h_x = (float *)malloc(sizeof(float) * elems), *h_wt = (float *)malloc(sizeof(float) * c * e);
            float *h_b = (float *)malloc(sizeof(float) * e), *h_out = (float *)malloc(sizeof(float) * n * e);
            double *h_ref = (double *)malloc(sizeof(double) * n * e);
            float *h_lay = (float *)malloc(sizeof(float) * elems); // x in the layout, as floats
            __half *h_half = (__half *)malloc(sizeof(__half) * elems);
            for (size_t i = 0; i < elems; ++i) h_x[i] = (float)rand() / RAND_MAX * 4.0f - 2.0f;
            for (int i = 0; i < c * e; ++i) h_wt[i] = ((float)rand() / RAND_MAX * 2.0f - 1.0f) / sqrtf((float)c);
            for (int i = 0; i < e; ++i) h_b[i] = (float)rand() / RAND_MAX - 0.5f;
            void *d_x;
            float *d_wt, *d_b, *d_alpha, *d_partial;
            unsigned int *d_counters;
            size_t partial_max = 0;
            for (int v = 0; v < CC_ROUTING_VARIANTS; ++v) {
                const size_t p = cc_routing_partial_elems(n, e, cc_routing_splits_variant(v, n, c, hw, sm_count));
                partial_max = p > partial_max ? p : partial_max;
            }
            CHECK(cudaMalloc(&d_x, sizeof(float) * elems));
            CHECK(cudaMalloc(&d_wt, sizeof(float) * c * e));
            CHECK(cudaMalloc(&d_b, sizeof(float) * e));
            CHECK(cudaMalloc(&d_alpha, sizeof(float) * n * e));
            CHECK(cudaMalloc(&d_partial, sizeof(float) * (partial_max ? partial_max : 1)));
            CHECK(cudaMalloc(&d_counters, sizeof(unsigned int) * n));
            CHECK(cudaMemset(d_counters, 0, sizeof(unsigned int) * n));
            CHECK(cudaMemcpy(d_wt, h_wt, sizeof(float) * c * e, cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(d_b, h_b, sizeof(float) * e, cudaMemcpyHostToDevice));
            for (size_t di = 0; di < sizeof dtypes / sizeof dtypes[0]; ++di) {
                const int dtype = dtypes[di];
                const size_t size = dtype == CC_DTYPE_F32 ? 4 : 2;
                // The reference on x rounded to the dtype.
                float *h_xr = (float *)malloc(sizeof(float) * elems);
                for (size_t i = 0; i < elems; ++i)
                    h_xr[i] = dtype == CC_DTYPE_F32 ? h_x[i] : __half2float(__float2half_rn(h_x[i]));
                routing_cpu(h_xr, h_wt, h_b, h_ref, n, c, hw, e);
                for (int layout = CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout) {
                    for (int s = 0; s < n; ++s)
                        for (int ch = 0; ch < c; ++ch)
                            for (int i = 0; i < hw; ++i) {
                                const size_t from = ((size_t)s * c + ch) * hw + i;
                                const size_t to = layout == CC_LAYOUT_NCHW ? from : ((size_t)s * hw + i) * c + ch;
                                h_lay[to] = h_xr[from];
                            }
                    if (dtype == CC_DTYPE_F32) {
                        CHECK(cudaMemcpy(d_x, h_lay, sizeof(float) * elems, cudaMemcpyHostToDevice));
                    } else {
                        for (size_t i = 0; i < elems; ++i) h_half[i] = __float2half_rn(h_lay[i]);
                        CHECK(cudaMemcpy(d_x, h_half, sizeof(__half) * elems, cudaMemcpyHostToDevice));
                    }
                    const double bytes = (double)elems * size + 4.0 * c * e + 4.0 * n * e;
                    const double floor_us = bytes / copy_bw * 1e6;
                    for (int v = 0; v < CC_ROUTING_VARIANTS; ++v) {
                        run_args r = {v,         dtype,     layout, n,
                                      c,         hw,        e,      cc_routing_splits_variant(v, n, c, hw, sm_count),
                                      d_x,       d_wt,      d_b,    d_alpha,
                                      d_partial, d_counters};
                        CHECK(cudaMemset(d_alpha, 0xff, sizeof(float) * n * e)); // NaN poison
                        launch(r);
                        CHECK(cudaDeviceSynchronize());
                        CHECK(cudaMemcpy(h_out, d_alpha, sizeof(float) * n * e, cudaMemcpyDeviceToHost));
                        int bad = 0;
                        for (int i = 0; i < n * e; ++i) {
                            const double d = fabs(h_out[i] - h_ref[i]);
                            if (!(d <= 1e-4 + 1e-4 * fabs(h_ref[i]))) {
                                if (bad < 3) fprintf(stderr, "  v%d [%d]: %g vs %g\n", v, i, h_out[i], h_ref[i]);
                                ++bad;
                            }
                        }
                        unsigned int *h_counters = (unsigned int *)malloc(sizeof(unsigned int) * n);
                        CHECK(cudaMemcpy(h_counters, d_counters, sizeof(unsigned int) * n, cudaMemcpyDeviceToHost));
                        for (int i = 0; i < n; ++i) bad += h_counters[i] != 0;
                        free(h_counters);
                        const char *what = layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC";
                        if (bad) {
                            printf("N=%3d C=%4d HW=%4d %s %s %-24s: %d mismatches, not timed\n", n, c, hw,
                                   size == 4 ? "f32" : "f16", what, cc_routing_variant_name(v), bad);
                            continue;
                        }
                        const double cold = time_us(r, scrub, scrub_bytes, true);
                        const double hot = time_us(r, scrub, scrub_bytes, false);
                        printf("N=%3d C=%4d HW=%4d %s %s %-24s splits %4d: %8.2f us %7.0f GB/s %5.1f%% of floor "
                               "(%.2f us); hot %8.2f us\n",
                               n, c, hw, size == 4 ? "f32" : "f16", what, cc_routing_variant_name(v), r.splits, cold,
                               bytes / cold * 1e-3, 100.0 * floor_us / cold, floor_us, hot);
                    }
                }
                free(h_xr);
            }
            CHECK(cudaFree(d_x));
            CHECK(cudaFree(d_wt));
            CHECK(cudaFree(d_b));
            CHECK(cudaFree(d_alpha));
            CHECK(cudaFree(d_partial));
            CHECK(cudaFree(d_counters));
            free(h_x);
            free(h_wt);
            free(h_b);
            free(h_out);
            free(h_ref);
            free(h_lay);
            free(h_half);
        }
    CHECK(cudaFree(scrub));
    return 0;
}
