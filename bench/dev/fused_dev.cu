// Kernel-development driver for the fused CondConv convolution (llm.c's
// dev/cuda habit): a CPU double-precision reference, validation of every
// tile config on random shapes, then timing against a cuBLAS strided-batched
// GEMM of the same per-sample problem.
//
//   y[n][o][p] = act(sum_e alpha[n][e] b_e[o] + sum_k W_n[o][k] x_n[k][p]),
//   W_n = sum_e alpha[n][e] W_e   (kernels/fused_conv.cu)
//
// Build (from the repository root, on a GPU machine; CMake target fused_dev):
//   nvcc -O3 -arch=sm_90 -std=c++17 -Ikernels -Iinclude bench/dev/fused_dev.cu kernels/fused_conv.cu
//        kernels/fused_conv_tc.cu kernels/fused_conv_tc2.cu -lcublas -o fused_dev   (one line)
// Run:
//   ./fused_dev            validate, then time the EfficientNet-CondConv-B0 1x1 layers
//   ./fused_dev --model    (no GPU needed) the floors and the cost model's choice per layer
//   ./fused_dev --quick    validation only
//   ./fused_dev --nhwc     NHWC only: validate nhwc_loader 0 and 1 on every
//                          shape, then time them against each other
//   ./fused_dev --tc       tensor cores only: validate gen 1 (fused_conv_tc.cu)
//                          and gen 2 (fused_conv_tc2.cu, the cp.async candidate)
//                          in f16, bf16, TF32, NCHW and NHWC, then time both
//                          (with --quick: validation only)
// Exits 77 without a CUDA device (except --model), 1 on a mismatch.
//
// Variants (every one validated, the chosen one timed, the others with --all):
//   tile 64x256  256 threads, 8x8 outputs per thread, 1 block/SM
//   tile 64x128  256 threads, 8x4, 2 blocks/SM
//   tile 32x256  256 threads, 8x4, 2 blocks/SM
//   tile 32x128  128 threads, 8x4, 4 blocks/SM
//   each with split-K 1..3 and, through a small shared-memory limit, short
//   column runs; each in the 16-byte (1x1 stride 1, P % 4 == 0) and window
//   (any geometry) input paths, as the shape decides.
//   NHWC, nhwc_loader 0: pixel-major staging (a thread reads its pixel's 16
//     channels, 4 bytes at a time; consecutive threads Cin floats apart),
//     scalar y stores.
//   NHWC, nhwc_loader 1 (issue 19's candidate, which AUTO times against 0 at
//     prepare): channel-major staging, two lanes per pixel reading 16-byte
//     vectors of adjacent channels (8x fewer sector lookups per step), and a
//     pixel's 8 output channels stored 16 bytes at a time. Every shape is
//     validated in NHWC with both; the NHWC timing prints both and the ratio.
// Reference point: cublasSgemmStridedBatched over N samples with the
// per-sample kernels already aggregated (strict f32, no TF32): what the
// convolution costs without mixing, for 1x1 stride-1 layers.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "formats.h"
#include "fused_conv.h"
#include "fused_conv_tc.h"
#include "fused_reference.h"

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));                     \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)
#define CHECK_BLAS(call)                                                                                               \
    do {                                                                                                               \
        cublasStatus_t s_ = (call);                                                                                    \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                             \
            fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, (int)s_);                      \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

// ---------------------------------------------------------------------------
// Shapes

struct shape {
    const char *name;
    int n, cin, cout, groups, e;
    int h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
    int act;
};

static int out_size(int in, int k, int s, int d, int p0, int p1) { return (in + p0 + p1 - (k - 1) * d - 1) / s + 1; }

static cc_fused_args args_for(const shape &s)
{
    cc_fused_args a;
    memset(&a, 0, sizeof a);
    a.n = s.n;
    a.in_channels = s.cin;
    a.out_channels = s.cout;
    a.groups = s.groups;
    a.experts = s.e;
    a.h = s.h;
    a.w = s.w;
    a.out_h = out_size(s.h, s.kh, s.sh, s.dh, s.pt, s.pb);
    a.out_w = out_size(s.w, s.kw, s.sw, s.dw, s.pl, s.pr);
    a.kernel_h = s.kh;
    a.kernel_w = s.kw;
    a.stride_h = s.sh;
    a.stride_w = s.sw;
    a.dilation_h = s.dh;
    a.dilation_w = s.dw;
    a.pad_top = s.pt;
    a.pad_left = s.pl;
    a.activation = s.act;
    return a;
}

static shape pointwise(const char *name, int n, int cin, int cout, int hw, int e)
{
    shape s = {name, n, cin, cout, 1, e, hw, hw, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
    return s;
}

// ---------------------------------------------------------------------------
// Device buffers of one shape

static float frand(unsigned int *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

struct problem {
    cc_fused_args a;
    size_t x_elems, y_elems, w_elems, packed_elems;
    float *h_x, *h_w, *h_b, *h_alpha, *h_packed, *h_y;
    double *ref, *mag;
    float *d_x, *d_y, *d_alpha, *d_b, *d_packed, *d_partial;
    unsigned int *d_counters;
    size_t partial_cap, counter_cap;
};

// [N][C][HW] <-> [N][HW][C]: to_nhwc, or back.
static void transpose(const float *src, float *dst, int n, int c, size_t hw, bool to_nhwc)
{
    for (int i = 0; i < n; ++i)
        for (int ch = 0; ch < c; ++ch)
            for (size_t q = 0; q < hw; ++q) {
                const size_t nchw = ((size_t)i * c + ch) * hw + q, nhwc = ((size_t)i * hw + q) * c + ch;
                if (to_nhwc)
                    dst[nhwc] = src[nchw];
                else
                    dst[nchw] = src[nhwc];
            }
}

// layout: x and y in NCHW or NHWC (h_x stays NCHW for the reference; the
// device copy is transposed).
static void problem_create(problem *p, const shape &s, unsigned int seed, bool with_reference, bool with_bias,
                           int layout = CC_LAYOUT_NCHW)
{
    memset(p, 0, sizeof *p);
    p->a = args_for(s);
    p->a.layout = layout;
    const cc_fused_args &a = p->a;
    p->x_elems = (size_t)a.n * a.in_channels * a.h * a.w;
    p->y_elems = (size_t)a.n * a.out_channels * a.out_h * a.out_w;
    p->w_elems = (size_t)a.experts * a.out_channels * (a.in_channels / a.groups) * a.kernel_h * a.kernel_w;
    p->packed_elems = cc_fused_packed_elems(a.in_channels, a.out_channels, a.groups, a.kernel_h, a.kernel_w, a.experts);
    p->h_x = (float *)malloc(sizeof(float) * p->x_elems);
    p->h_w = (float *)malloc(sizeof(float) * p->w_elems);
    p->h_b = (float *)malloc(sizeof(float) * (size_t)a.experts * a.out_channels);
    p->h_alpha = (float *)malloc(sizeof(float) * (size_t)a.n * a.experts);
    p->h_packed = (float *)malloc(sizeof(float) * p->packed_elems);
    p->h_y = (float *)malloc(sizeof(float) * p->y_elems);
    for (size_t i = 0; i < p->x_elems; ++i) p->h_x[i] = frand(&seed);
    for (size_t i = 0; i < p->w_elems; ++i) p->h_w[i] = frand(&seed) * 0.5f;
    for (size_t i = 0; i < (size_t)a.experts * a.out_channels; ++i) p->h_b[i] = with_bias ? frand(&seed) : 0.0f;
    for (size_t i = 0; i < (size_t)a.n * a.experts; ++i) p->h_alpha[i] = 0.5f * (frand(&seed) + 1.0f); // sigmoid-like
    if (!cc_fused_pack(p->h_w, p->h_packed, a.in_channels, a.out_channels, a.groups, a.kernel_h, a.kernel_w,
                       a.experts)) {
        fprintf(stderr, "cc_fused_pack refused %s\n", s.name);
        exit(1);
    }
    if (with_reference) {
        p->ref = (double *)malloc(sizeof(double) * p->y_elems);
        p->mag = (double *)malloc(sizeof(double) * p->y_elems);
        cc_fused_reference(a, p->h_x, p->h_w, p->h_b, p->h_alpha, p->ref, p->mag);
    }
    CHECK(cudaMalloc(&p->d_x, sizeof(float) * p->x_elems));
    CHECK(cudaMalloc(&p->d_y, sizeof(float) * p->y_elems));
    CHECK(cudaMalloc(&p->d_alpha, sizeof(float) * (size_t)a.n * a.experts));
    CHECK(cudaMalloc(&p->d_b, sizeof(float) * (size_t)a.experts * a.out_channels));
    CHECK(cudaMalloc(&p->d_packed, sizeof(float) * p->packed_elems));
    if (layout == CC_LAYOUT_NHWC) {
        float *t = (float *)malloc(sizeof(float) * p->x_elems);
        transpose(p->h_x, t, a.n, a.in_channels, (size_t)a.h * a.w, true);
        CHECK(cudaMemcpy(p->d_x, t, sizeof(float) * p->x_elems, cudaMemcpyHostToDevice));
        free(t);
    } else {
        CHECK(cudaMemcpy(p->d_x, p->h_x, sizeof(float) * p->x_elems, cudaMemcpyHostToDevice));
    }
    CHECK(cudaMemcpy(p->d_alpha, p->h_alpha, sizeof(float) * (size_t)a.n * a.experts, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(p->d_b, p->h_b, sizeof(float) * (size_t)a.experts * a.out_channels, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(p->d_packed, p->h_packed, sizeof(float) * p->packed_elems, cudaMemcpyHostToDevice));
    p->a.x = p->d_x;
    p->a.y = p->d_y;
    p->a.alpha = p->d_alpha;
    p->a.expert_bias = with_bias ? p->d_b : NULL;
    p->a.packed = p->d_packed;
}

// Split-K buffers, grown on demand; counters zeroed once, as the library does.
static void problem_split_buffers(problem *p, const cc_fused_config &c)
{
    if (c.partial_elems > p->partial_cap) {
        if (p->d_partial) CHECK(cudaFree(p->d_partial));
        CHECK(cudaMalloc(&p->d_partial, sizeof(float) * c.partial_elems));
        p->partial_cap = c.partial_elems;
    }
    if (c.counter_count > p->counter_cap) {
        if (p->d_counters) CHECK(cudaFree(p->d_counters));
        CHECK(cudaMalloc(&p->d_counters, sizeof(unsigned int) * c.counter_count));
        CHECK(cudaMemset(p->d_counters, 0, sizeof(unsigned int) * c.counter_count));
        p->counter_cap = c.counter_count;
    }
    p->a.partial = p->d_partial;
    p->a.counters = p->d_counters;
}

static void problem_destroy(problem *p)
{
    CHECK(cudaFree(p->d_x));
    CHECK(cudaFree(p->d_y));
    CHECK(cudaFree(p->d_alpha));
    CHECK(cudaFree(p->d_b));
    CHECK(cudaFree(p->d_packed));
    if (p->d_partial) CHECK(cudaFree(p->d_partial));
    if (p->d_counters) CHECK(cudaFree(p->d_counters));
    free(p->h_x);
    free(p->h_w);
    free(p->h_b);
    free(p->h_alpha);
    free(p->h_packed);
    free(p->h_y);
    free(p->ref);
    free(p->mag);
}

// Every output within the f32 bound: |y - ref| <= (K + E + 8) u * sum|terms|
// + 4u |ref| (u = 2^-24; K + E roundings along the longest chain of FMAs,
// the activation's few ulp). NaN never passes (the comparison is false).
static long long validate(const problem &p, const char *what)
{
    const double u = 1.0 / 16777216.0;
    const int k = (p.a.in_channels / p.a.groups) * p.a.kernel_h * p.a.kernel_w;
    long long bad = 0;
    for (size_t i = 0; i < p.y_elems; ++i) {
        const double tol = (k + p.a.experts + 8) * u * p.mag[i] + 4.0 * u * fabs(p.ref[i]) + 1e-30;
        const double d = fabs((double)p.h_y[i] - p.ref[i]);
        if (!(d <= tol)) {
            if (bad < 3) fprintf(stderr, "  %s [%zu]: %.9g vs %.9g (tol %.3g)\n", what, i, p.h_y[i], p.ref[i], tol);
            ++bad;
        }
    }
    return bad;
}

// y back to the host in NCHW order (the reference's), whatever the layout.
static void fetch_y(problem *p)
{
    CHECK(cudaMemcpy(p->h_y, p->d_y, sizeof(float) * p->y_elems, cudaMemcpyDeviceToHost));
    if (p->a.layout == CC_LAYOUT_NHWC) {
        float *t = (float *)malloc(sizeof(float) * p->y_elems);
        transpose(p->h_y, t, p->a.n, p->a.out_channels, (size_t)p->a.out_h * p->a.out_w, false);
        memcpy(p->h_y, t, sizeof(float) * p->y_elems);
        free(t);
    }
}

static long long run_and_check(problem *p, const cc_fused_config &c, const char *what)
{
    problem_split_buffers(p, c);
    CHECK(cudaMemset(p->d_y, 0xff, sizeof(float) * p->y_elems)); // NaN poison: unwritten outputs fail
    CHECK(cc_launch_fused_conv(&p->a, &c, 0));
    CHECK(cudaDeviceSynchronize());
    fetch_y(p);
    long long bad = validate(*p, what);
    // A second launch: the split-K counters must have been left at zero.
    if (c.splits > 1 && bad == 0) {
        CHECK(cudaMemset(p->d_y, 0xff, sizeof(float) * p->y_elems));
        CHECK(cc_launch_fused_conv(&p->a, &c, 0));
        CHECK(cudaDeviceSynchronize());
        fetch_y(p);
        bad = validate(*p, what);
    }
    return bad;
}

// ---------------------------------------------------------------------------
// Validation: random shapes, every tile, split-K 1..3, short column runs.

// Every shape runs in NCHW; with nhwc, in NHWC too, each config with
// nhwc_loader 0 and 1 (nhwc_only: NHWC alone).
static long long validate_all(int sm_count, size_t optin, bool nhwc_only)
{
    const shape fixed[] = {
        {"1x1 s1 P%4==0", 5, 24, 40, 1, 8, 6, 6, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2},
        {"1x1 7x7 E=3", 7, 33, 70, 1, 3, 7, 7, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},
        {"1x1 s2 groups 2", 3, 32, 48, 2, 5, 9, 9, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 0},
        {"3x3 pad 1 relu", 2, 20, 36, 1, 4, 11, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
        {"5x3 asym pad dil", 3, 12, 20, 1, 9, 13, 9, 5, 3, 2, 1, 2, 1, 3, 0, 1, 2, 2},
        {"3x3 g4 s2 E=32", 2, 64, 64, 4, 32, 12, 12, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 0},
        {"1x1 E=1 Cout=3", 9, 17, 3, 1, 1, 5, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2},
        {"1x1 1x1 plane", 40, 50, 66, 1, 17, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1},
    };
    const int fixed_count = (int)(sizeof fixed / sizeof fixed[0]);
    unsigned int rng = 12345u;
    long long failures = 0, runs = 0;
    for (int i = 0; i < fixed_count + 24; ++i) {
        shape s;
        if (i < fixed_count) {
            s = fixed[i];
        } else { // random: odd sizes, groups, strides, dilation, asymmetric padding, E 1..32
            rng = rng * 1664525u + 1013904223u;
            unsigned int r = rng;
            const int groups_opts[] = {1, 1, 2, 3};
            s.name = "random";
            s.groups = groups_opts[(r >> 3) & 3];
            s.cin = s.groups * (1 + (int)((r >> 5) % 40));
            s.cout = s.groups * (1 + (int)((r >> 11) % 45));
            if (s.groups == s.cin && s.groups > 1) s.cin *= 2;
            s.n = 1 + (int)((r >> 17) % 9);
            rng = rng * 1664525u + 1013904223u;
            r = rng;
            s.e = 1 + (int)(r % 32);
            const bool one = (r >> 6) & 1;
            s.kh = one ? 1 : 1 + (int)((r >> 7) % 4);
            s.kw = one ? 1 : 1 + (int)((r >> 9) % 4);
            s.sh = 1 + (int)((r >> 11) % 2);
            s.sw = 1 + (int)((r >> 12) % 3);
            s.dh = 1 + (int)((r >> 14) % 2);
            s.dw = 1;
            s.pt = (int)((r >> 15) % 3);
            s.pl = (int)((r >> 17) % 2);
            s.pb = (int)((r >> 18) % 2);
            s.pr = (int)((r >> 19) % 3);
            s.h = 1 + (s.kh - 1) * s.dh + (int)((r >> 21) % 12);
            s.w = 1 + (s.kw - 1) * s.dw + (int)((r >> 25) % 12);
            s.act = (int)((r >> 29) % 3);
        }
        for (int layout = nhwc_only ? CC_LAYOUT_NHWC : CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout) {
            problem p;
            problem_create(&p, s, 1000u + (unsigned int)i, true, i % 3 != 2, layout);
            const char *lname = layout == CC_LAYOUT_NHWC ? " NHWC" : "";
            const int loaders = layout == CC_LAYOUT_NHWC ? 2 : 1;
            char reason[256];
            if (!cc_fused_supported(&p.a, reason, sizeof reason)) {
                printf("%-18s skipped: %s\n", s.name, reason);
                problem_destroy(&p);
                continue;
            }
            for (int tile = 0; tile < CC_FUSED_TILE_COUNT; ++tile)
                for (int splits = 1; splits <= 3; ++splits)
                    for (int small = 0; small < 2; ++small)
                        for (int loader = 0; loader < loaders; ++loader) {
                            // small: a shared-memory limit that forces short column runs
                            cc_fused_config c;
                            if (!cc_fused_make_config(&p.a, tile, splits, small ? 24 * 1024 : optin, &c)) continue;
                            c.nhwc_loader = loader;
                            char what[160];
                            snprintf(what, sizeof what, "%s%s tile %d splits %d qb %d loader %d", s.name, lname, tile,
                                     splits, c.quads_per_block, loader);
                            const long long bad = run_and_check(&p, c, what);
                            ++runs;
                            if (bad) {
                                printf("FAIL %s: %lld mismatches\n", what, bad);
                                ++failures;
                            }
                        }
            cc_fused_config c;
            if (cc_fused_choose(&p.a, sm_count, optin, CC_FUSED_MAX_SPLITS, &c)) {
                for (int loader = 0; loader < loaders; ++loader) {
                    c.nhwc_loader = loader;
                    const long long bad = run_and_check(&p, c, "chosen");
                    ++runs;
                    if (bad) {
                        printf("FAIL %s%s chosen loader %d (%s): %lld mismatches\n", s.name, lname, loader, c.reason,
                               bad);
                        ++failures;
                    }
                }
            }
            printf("%-18s%s N=%d %d->%d g%d E=%d %dx%d k%dx%d s%dx%d d%dx%d pad %d,%d: ok so far (%lld runs)\n", s.name,
                   lname, s.n, s.cin, s.cout, s.groups, s.e, s.h, s.w, s.kh, s.kw, s.sh, s.sw, s.dh, s.dw, s.pt, s.pl,
                   runs);
            problem_destroy(&p);
        }
    }
    printf("validation: %lld runs, %lld failed\n", runs, failures);
    return failures;
}

// ---------------------------------------------------------------------------
// Floors and the model (no GPU needed).

static const shape kLayers[] = {
    pointwise("80->480 @14", 0, 80, 480, 14, 8),   pointwise("112->672 @14", 0, 112, 672, 14, 8),
    pointwise("480->112 @14", 0, 480, 112, 14, 8), pointwise("672->112 @14", 0, 672, 112, 14, 8),
    pointwise("672->192 @7", 0, 672, 192, 7, 8),   pointwise("192->1152 @7", 0, 192, 1152, 7, 8),
    pointwise("1152->192 @7", 0, 1152, 192, 7, 8), pointwise("1152->320 @7", 0, 1152, 320, 7, 8),
};
static const int kLayerCount = (int)(sizeof kLayers / sizeof kLayers[0]);

struct floors {
    double conv_gflop, compute_us, memory_us;
};

// H100 SXM: ~51 TFLOP/s f32 FMA measured by cuBLAS SGEMM (67 datasheet), 3.35 TB/s.
static floors floors_for(const cc_fused_args &a)
{
    const double p = (double)a.out_h * a.out_w;
    const double w = (double)a.out_channels * (a.in_channels / a.groups) * a.kernel_h * a.kernel_w;
    floors f;
    f.conv_gflop = 2.0 * a.n * w * p * 1e-9;
    const double mix_gflop = 2.0 * a.n * a.experts * w * 1e-9;
    f.compute_us = (f.conv_gflop + mix_gflop) / 51e3 * 1e6; // GFLOP / (GFLOP/s) -> us
    const double bytes =
        4.0 * ((double)a.n * a.in_channels * a.h * a.w + (double)a.n * a.out_channels * p + a.experts * w);
    f.memory_us = bytes / 3.35e12 * 1e6;
    return f;
}

static void print_model(int sm_count, size_t optin)
{
    const char *names[] = {"64x256", "64x128", "32x256", "32x128"};
    printf("floors (H100: 51 TFLOP/s f32 FMA by cuBLAS, 3.35 TB/s) and the cost model's choice, E = 8; "
           "predicted, not measured\n");
    printf("%-14s %4s %8s %8s %8s | %8s %-7s %6s %4s\n", "layer", "N", "GFLOP", "floor", "mem", "model", "tile",
           "splits", "qb");
    const int batches[] = {32, 128};
    for (int i = 0; i < kLayerCount; ++i)
        for (int b = 0; b < 2; ++b) {
            shape s = kLayers[i];
            s.n = batches[b];
            const cc_fused_args a = args_for(s);
            const floors f = floors_for(a);
            cc_fused_config c;
            if (!cc_fused_choose(&a, sm_count, optin, CC_FUSED_MAX_SPLITS, &c)) continue;
            printf("%-14s %4d %8.2f %8.1f %8.1f | %8.1f %-7s %6d %4d  %s\n", s.name, s.n, f.conv_gflop,
                   f.compute_us > f.memory_us ? f.compute_us : f.memory_us, f.memory_us, c.model_us, names[c.tile],
                   c.splits, c.quads_per_block, c.reason);
        }
    printf("E sweep at N = 32 (model): t(E)/t(E=1)\n");
    for (int i = 0; i < kLayerCount; ++i) {
        shape s = kLayers[i];
        s.n = 32;
        double t1 = 0.0;
        printf("%-14s", s.name);
        const int es[] = {1, 4, 8, 16, 32};
        for (int k = 0; k < 5; ++k) {
            s.e = es[k];
            const cc_fused_args a = args_for(s);
            cc_fused_config c;
            if (!cc_fused_choose(&a, sm_count, optin, CC_FUSED_MAX_SPLITS, &c)) continue;
            if (k == 0) t1 = c.model_us;
            printf("  E=%d %.2f", es[k], c.model_us / t1);
        }
        printf("\n");
    }
}

// ---------------------------------------------------------------------------
// Timing

static float median_us(float *t, int count)
{
    for (int i = 1; i < count; ++i) // insertion sort for the median
        for (int j = i; j > 0 && t[j] < t[j - 1]; --j) {
            const float v = t[j];
            t[j] = t[j - 1];
            t[j - 1] = v;
        }
    return t[count / 2] * 1e3f;
}

template <typename F>
static float time_us(F &&launch)
{
    enum { kWarm = 5, kReps = 51 };
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    for (int r = 0; r < kWarm; ++r) launch();
    float t[kReps];
    for (int r = 0; r < kReps; ++r) {
        CHECK(cudaEventRecord(a));
        launch();
        CHECK(cudaEventRecord(b));
        CHECK(cudaEventSynchronize(b));
        CHECK(cudaEventElapsedTime(&t[r], a, b));
    }
    CHECK(cudaEventDestroy(a));
    CHECK(cudaEventDestroy(b));
    return median_us(t, kReps);
}

static void time_layers(int sm_count, size_t optin, bool all_tiles)
{
    cublasHandle_t blas;
    CHECK_BLAS(cublasCreate(&blas));
    CHECK_BLAS(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH)); // strict f32: no TF32
    const char *names[] = {"64x256", "64x128", "32x256", "32x128"};
    printf("%-14s %4s %3s %-7s %6s %9s %9s %9s %8s %8s\n", "layer", "N", "E", "tile", "splits", "fused us", "cublas us",
           "model us", "x floor", "TFLOP/s");
    const int batches[] = {32, 128}, experts[] = {1, 8, 32};
    for (int i = 0; i < kLayerCount; ++i)
        for (int b = 0; b < 2; ++b)
            for (int k = 0; k < 3; ++k) {
                shape s = kLayers[i];
                s.n = batches[b];
                s.e = experts[k];
                s.act = 2;
                problem p;
                problem_create(&p, s, 7u, false, true);
                const floors f = floors_for(p.a);
                const double floor_us = f.compute_us > f.memory_us ? f.compute_us : f.memory_us;
                // cuBLAS: Y_n [Cout x P] = W_n [Cout x Cin] X_n [Cin x P] over n, in column-major terms
                // Y^T = X^T W^T; per-sample filters already aggregated (not timed).
                const int m = s.cin, pp = s.h * s.w;
                float *d_wn, *d_yb;
                CHECK(cudaMalloc(&d_wn, sizeof(float) * (size_t)s.n * s.cout * m));
                CHECK(cudaMalloc(&d_yb, sizeof(float) * p.y_elems));
                CHECK(cudaMemset(d_wn, 0, sizeof(float) * (size_t)s.n * s.cout * m));
                const float one = 1.0f, zero = 0.0f;
                const float blas_us = time_us([&] {
                    CHECK_BLAS(cublasSgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_N, pp, s.cout, m, &one, p.d_x, pp,
                                                         (long long)m * pp, d_wn, m, (long long)s.cout * m, &zero, d_yb,
                                                         pp, (long long)s.cout * pp, s.n));
                });
                for (int tile = -1; tile < (all_tiles ? CC_FUSED_TILE_COUNT : 0); ++tile) {
                    cc_fused_config c;
                    const int ok = tile < 0 ? cc_fused_choose(&p.a, sm_count, optin, CC_FUSED_MAX_SPLITS, &c)
                                            : cc_fused_make_config(&p.a, tile, 1, optin, &c);
                    if (!ok) continue;
                    problem_split_buffers(&p, c);
                    const float us = time_us([&] { CHECK(cc_launch_fused_conv(&p.a, &c, 0)); });
                    printf("%-14s %4d %3d %-7s %6d %9.1f %9.1f %9.1f %8.2f %8.2f%s\n", s.name, s.n, s.e, names[c.tile],
                           c.splits, us, blas_us, c.model_us, us / floor_us, f.conv_gflop / us * 1e3,
                           tile < 0 ? "  (chosen)" : "");
                }
                CHECK(cudaFree(d_wn));
                CHECK(cudaFree(d_yb));
                problem_destroy(&p);
            }
    CHECK_BLAS(cublasDestroy(blas));
}

// NHWC: nhwc_loader 0 against 1 (issue 19's candidate) on the chosen config
// (tile, run, split-K as cc_fused_choose picks them; the loader does not
// change shared memory), on the 1x1 layers and a few k x k ones. ratio < 1:
// the candidate is faster. What AUTO measures at prepare, per shape.
static void time_nhwc_loaders(int sm_count, size_t optin)
{
    const char *names[] = {"64x256", "64x128", "32x256", "32x128"};
    static const shape kxk[] = {
        {"3x3 40->40 @28", 0, 40, 40, 1, 8, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2},
        {"3x3 96->96 @14", 0, 96, 96, 1, 8, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2},
        {"3x3 g4 128 @14", 0, 128, 128, 4, 8, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2},
        {"3x3 s2 24->40 @56", 0, 24, 40, 1, 8, 56, 56, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 2},
        {"1x1 19->70 @14", 0, 19, 70, 1, 8, 14, 14, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2}, // 4-byte paths
    };
    const int kxk_count = (int)(sizeof kxk / sizeof kxk[0]);
    printf("NHWC, nhwc_loader 0 (pixel-major) vs 1 (channel-major, candidate), chosen config, E = 8\n");
    printf("%-18s %4s %-7s %6s %10s %10s %7s\n", "layer", "N", "tile", "splits", "loader0 us", "loader1 us", "1/0");
    const int batches[] = {32, 128};
    for (int i = 0; i < kLayerCount + kxk_count; ++i)
        for (int b = 0; b < 2; ++b) {
            shape s = i < kLayerCount ? kLayers[i] : kxk[i - kLayerCount];
            s.n = batches[b];
            s.act = 2;
            problem p;
            problem_create(&p, s, 7u, false, true, CC_LAYOUT_NHWC);
            cc_fused_config c;
            if (!cc_fused_choose(&p.a, sm_count, optin, CC_FUSED_MAX_SPLITS, &c) ||
                !cc_fused_nhwc_loader_supported(&p.a, 1)) {
                problem_destroy(&p);
                continue;
            }
            problem_split_buffers(&p, c);
            float us[2];
            for (int loader = 0; loader < 2; ++loader) {
                c.nhwc_loader = loader;
                us[loader] = time_us([&] { CHECK(cc_launch_fused_conv(&p.a, &c, 0)); });
            }
            printf("%-18s %4d %-7s %6d %10.1f %10.1f %7.3f\n", s.name, s.n, names[c.tile], c.splits, us[0], us[1],
                   us[1] / us[0]);
            problem_destroy(&p);
        }
}

// ---------------------------------------------------------------------------
// Tensor cores: gen 1 (kernels/fused_conv_tc.cu, variant 0) against gen 2
// (kernels/fused_conv_tc2.cu, the cp.async candidate AUTO times against it)
// and gen 2 with the expert mix on tensor cores ("gen 3" here: f16/bf16, E a
// multiple of 16), f16, bf16 and f32 (TF32), NCHW and NHWC. All validated on
// every shape with the bound of tests/cuda_cpu/test_fused_conv_tc.cpp, then
// timed on the EfficientNet 1x1 layers and a 3x3 one (ratio < 1: faster
// than gen 1).

static uint16_t tc_bits(int dtype, float v)
{
    uint16_t b;
    if (dtype == CC_DTYPE_F16) {
        const __half h = __float2half_rn(v);
        memcpy(&b, &h, sizeof b);
    } else {
        const __nv_bfloat16 h = __float2bfloat16_rn(v);
        memcpy(&b, &h, sizeof b);
    }
    return b;
}
static float tc_value(int dtype, const void *buf, size_t i)
{
    if (dtype == CC_DTYPE_F32) return static_cast<const float *>(buf)[i];
    const uint16_t b = static_cast<const uint16_t *>(buf)[i];
    if (dtype == CC_DTYPE_F16) {
        __half_raw r;
        r.x = b;
        return __half2float(__half(r));
    }
    __nv_bfloat16_raw r;
    r.x = b;
    return __bfloat162float(__nv_bfloat16(r));
}
static float tc_round(int dtype, float v)
{
    if (dtype == CC_DTYPE_F32) return v;
    const uint16_t b = tc_bits(dtype, v);
    return tc_value(dtype, &b, 0);
}

struct tc_problem {
    cc_fused_tc_args a;
    size_t x_elems, y_elems, es;
    void *d_x, *d_y, *d_packed;
    float *d_alpha, *d_b;
    double *ref, *mag; // NULL when not validating
    void *h_y;
};

static void tc_create(tc_problem *p, const shape &s, int dtype, int layout, bool with_reference)
{
    memset(p, 0, sizeof *p);
    const cc_fused_args fa = args_for(s);
    cc_fused_tc_args &a = p->a;
    a.dtype = dtype;
    a.layout = layout;
    a.n = fa.n;
    a.in_channels = fa.in_channels;
    a.out_channels = fa.out_channels;
    a.groups = fa.groups;
    a.experts = fa.experts;
    a.h = fa.h;
    a.w = fa.w;
    a.out_h = fa.out_h;
    a.out_w = fa.out_w;
    a.kernel_h = fa.kernel_h;
    a.kernel_w = fa.kernel_w;
    a.stride_h = fa.stride_h;
    a.stride_w = fa.stride_w;
    a.dilation_h = fa.dilation_h;
    a.dilation_w = fa.dilation_w;
    a.pad_top = fa.pad_top;
    a.pad_left = fa.pad_left;
    a.activation = fa.activation;
    p->es = dtype == CC_DTYPE_F32 ? 4 : 2;
    const size_t hw = (size_t)s.h * s.w, pix = (size_t)a.out_h * a.out_w;
    p->x_elems = (size_t)s.n * s.cin * hw;
    p->y_elems = (size_t)s.n * s.cout * pix;
    const size_t w_elems = (size_t)s.e * s.cout * (s.cin / s.groups) * s.kh * s.kw;
    const size_t packed = cc_fused_tc_packed_elems(s.cin, s.cout, s.groups, s.kh, s.kw, s.e);
    unsigned int seed = 11u;
    float *x = (float *)malloc(sizeof(float) * p->x_elems), *w = (float *)malloc(sizeof(float) * w_elems);
    float *b = (float *)malloc(sizeof(float) * (size_t)s.e * s.cout), *al = (float *)malloc(sizeof(float) * s.n * s.e);
    for (size_t i = 0; i < p->x_elems; ++i) x[i] = tc_round(dtype, frand(&seed));
    for (size_t i = 0; i < w_elems; ++i) w[i] = tc_round(dtype, 0.5f * frand(&seed));
    for (size_t i = 0; i < (size_t)s.e * s.cout; ++i) b[i] = frand(&seed);
    for (size_t i = 0; i < (size_t)s.n * s.e; ++i) al[i] = 0.5f * (frand(&seed) + 1.0f);
    if (with_reference) {
        p->ref = (double *)malloc(sizeof(double) * p->y_elems);
        p->mag = (double *)malloc(sizeof(double) * p->y_elems);
        cc_fused_reference(fa, x, w, b, al, p->ref, p->mag);
    }
    void *h_packed = malloc(p->es * packed), *h_x = malloc(p->es * p->x_elems);
    if (!cc_fused_tc_pack(dtype, w, h_packed, s.cin, s.cout, s.groups, s.kh, s.kw, s.e)) {
        fprintf(stderr, "cc_fused_tc_pack refused %s\n", s.name);
        exit(1);
    }
    for (int n = 0; n < s.n; ++n)
        for (int c = 0; c < s.cin; ++c)
            for (size_t q = 0; q < hw; ++q) {
                const size_t src = ((size_t)n * s.cin + c) * hw + q;
                const size_t dst = layout == CC_LAYOUT_NCHW ? src : ((size_t)n * hw + q) * s.cin + c;
                if (dtype == CC_DTYPE_F32)
                    static_cast<float *>(h_x)[dst] = x[src];
                else
                    static_cast<uint16_t *>(h_x)[dst] = tc_bits(dtype, x[src]);
            }
    CHECK(cudaMalloc(&p->d_x, p->es * p->x_elems));
    CHECK(cudaMalloc(&p->d_y, p->es * p->y_elems));
    CHECK(cudaMalloc(&p->d_packed, p->es * packed));
    CHECK(cudaMalloc(&p->d_alpha, sizeof(float) * s.n * s.e));
    CHECK(cudaMalloc(&p->d_b, sizeof(float) * (size_t)s.e * s.cout));
    CHECK(cudaMemcpy(p->d_x, h_x, p->es * p->x_elems, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(p->d_packed, h_packed, p->es * packed, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(p->d_alpha, al, sizeof(float) * s.n * s.e, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(p->d_b, b, sizeof(float) * (size_t)s.e * s.cout, cudaMemcpyHostToDevice));
    a.x = p->d_x;
    a.y = p->d_y;
    a.alpha = p->d_alpha;
    a.expert_bias = p->d_b;
    a.packed = p->d_packed;
    p->h_y = malloc(p->es * p->y_elems);
    free(x);
    free(w);
    free(b);
    free(al);
    free(h_packed);
    free(h_x);
}

static void tc_destroy(tc_problem *p)
{
    CHECK(cudaFree(p->d_x));
    CHECK(cudaFree(p->d_y));
    CHECK(cudaFree(p->d_packed));
    CHECK(cudaFree(p->d_alpha));
    CHECK(cudaFree(p->d_b));
    free(p->ref);
    free(p->mag);
    free(p->h_y);
}

// One launch of generation gen (1; 2 and 3: gen 2's launcher, the config says
// which mix), checked against the reference:
// |y - ref| <= 1.1 (2u + 1e-5) mag + u_out |ref| + 1e-6 (u = 2^-11 f16,
// 2^-8 bf16, 2^-10 per TF32 operand; the f32 output is not rounded).
static long long tc_check(tc_problem *p, int gen, const cc_fused_tc_config &c, const char *what)
{
    CHECK(cudaMemset(p->d_y, 0xff, p->es * p->y_elems)); // NaN in every dtype
    CHECK(gen == 1 ? cc_launch_fused_tc(&p->a, &c, 0) : cc_launch_fused_tc2(&p->a, &c, 0));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(p->h_y, p->d_y, p->es * p->y_elems, cudaMemcpyDeviceToHost));
    const int dtype = p->a.dtype;
    const double u = dtype == CC_DTYPE_F16 ? 1.0 / 2048.0 : dtype == CC_DTYPE_BF16 ? 1.0 / 256.0 : 1.0 / 1024.0;
    const double u_out = dtype == CC_DTYPE_F32 ? 0.0 : u;
    const cc_fused_tc_args &a = p->a;
    const size_t pix = (size_t)a.out_h * a.out_w;
    long long bad = 0;
    for (int n = 0; n < a.n; ++n)
        for (int o = 0; o < a.out_channels; ++o)
            for (size_t q = 0; q < pix; ++q) {
                const size_t ri = ((size_t)n * a.out_channels + o) * pix + q;
                const size_t gi = a.layout == CC_LAYOUT_NCHW ? ri : ((size_t)n * pix + q) * a.out_channels + o;
                const double got = tc_value(dtype, p->h_y, gi);
                const double tol = 1.1 * (2.0 * u + 1e-5) * p->mag[ri] + u_out * fabs(p->ref[ri]) + 1e-6;
                if (!(fabs(got - p->ref[ri]) <= tol)) {
                    if (bad < 3)
                        fprintf(stderr, "  %s [%zu]: %.7g vs %.7g (tol %.3g)\n", what, ri, got, p->ref[ri], tol);
                    ++bad;
                }
            }
    return bad;
}

static const char *tc_dtype_name(int d) { return d == CC_DTYPE_F16 ? "f16" : d == CC_DTYPE_BF16 ? "bf16" : "tf32"; }

static int tc_generations(int sm_count, size_t optin, bool quick)
{
    const int dtypes[] = {CC_DTYPE_F16, CC_DTYPE_BF16, CC_DTYPE_F32};
    const shape fixed[] = {
        {"1x1 P16 E8", 5, 24, 40, 1, 8, 4, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2},
        {"1x1 s2 Cin19 E3", 3, 19, 70, 1, 3, 7, 7, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1},
        {"3x3 pad1 E1", 3, 20, 48, 1, 1, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},
        {"5x5 s2 d2 E17", 3, 12, 20, 1, 17, 11, 9, 5, 5, 2, 2, 2, 2, 2, 2, 2, 1, 2},
        {"3x3 s2 g4 E32", 2, 64, 64, 4, 32, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 0},
        {"3x3 g2 P90 E6", 3, 32, 96, 2, 6, 9, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2},
        {"1x1 E46", 4, 32, 64, 1, 46, 7, 7, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2},
        {"1x1 E64", 4, 32, 64, 1, 64, 7, 7, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2},
        {"1x1 E16 Mg128", 4, 32, 128, 1, 16, 7, 7, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2},
    };
    long long failures = 0, runs = 0;
    for (const shape &s : fixed)
        for (int dtype : dtypes)
            for (int layout = CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout) {
                tc_problem p;
                tc_create(&p, s, dtype, layout, true);
                for (int gen = 1; gen <= 3; ++gen) {
                    cc_fused_tc_config c;
                    const int ok = gen == 1   ? cc_fused_tc_choose(&p.a, sm_count, optin, &c)
                                   : gen == 2 ? cc_fused_tc2_choose(&p.a, sm_count, optin, &c)
                                              : cc_fused_tc2_choose_mma_mix(&p.a, sm_count, optin, &c);
                    if (!ok) continue; // gen 2: E past its stages; the MMA mix: f32, E % 16 (supported() says why)
                    char what[160];
                    snprintf(what, sizeof what, "gen %d %s %s %s tile %d", gen, s.name, tc_dtype_name(dtype),
                             layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC", c.tile_m);
                    const long long bad = tc_check(&p, gen, c, what);
                    ++runs;
                    if (bad) {
                        fprintf(stderr, "FAIL %s: %lld mismatches\n", what, bad);
                        ++failures;
                    }
                }
                tc_destroy(&p);
            }
    printf("tensor cores: %lld runs validated (gen 1, gen 2, gen 2 with the MMA mix), %lld failed\n", runs, failures);
    if (failures != 0 || quick) return failures != 0;

    printf("%-16s %4s %3s %-5s %-4s %9s %9s %9s %7s %7s  %s\n", "layer", "N", "E", "dtype", "lay", "gen1 us", "gen2 us",
           "mix us", "2/1", "mix/1", "gen 2 config");
    static const shape k3 = {"3x3 96->96 @14", 0, 96, 96, 1, 8, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2};
    const int batches[] = {32, 128}, experts[] = {8, 32};
    for (int i = 0; i <= kLayerCount; ++i)
        for (int b = 0; b < 2; ++b)
            for (int k = 0; k < 2; ++k)
                for (int dtype : dtypes)
                    for (int layout = CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout) {
                        shape s = i < kLayerCount ? kLayers[i] : k3;
                        s.n = batches[b];
                        s.e = experts[k];
                        s.act = 2;
                        tc_problem p;
                        tc_create(&p, s, dtype, layout, false);
                        cc_fused_tc_config c1, c2, c3;
                        const bool ok1 = cc_fused_tc_choose(&p.a, sm_count, optin, &c1) != 0;
                        const bool ok2 = cc_fused_tc2_choose(&p.a, sm_count, optin, &c2) != 0;
                        const bool ok3 = cc_fused_tc2_choose_mma_mix(&p.a, sm_count, optin, &c3) != 0;
                        const float us1 = ok1 ? time_us([&] { CHECK(cc_launch_fused_tc(&p.a, &c1, 0)); }) : 0.0f;
                        const float us2 = ok2 ? time_us([&] { CHECK(cc_launch_fused_tc2(&p.a, &c2, 0)); }) : 0.0f;
                        const float us3 = ok3 ? time_us([&] { CHECK(cc_launch_fused_tc2(&p.a, &c3, 0)); }) : 0.0f;
                        printf("%-16s %4d %3d %-5s %-4s %9.1f %9.1f %9.1f %7.3f %7.3f  %s\n", s.name, s.n, s.e,
                               tc_dtype_name(dtype), layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC", us1, us2, us3,
                               ok1 && ok2 ? us2 / us1 : 0.0f, ok1 && ok3 ? us3 / us1 : 0.0f,
                               ok2 ? c2.reason : "gen 2 unsupported");
                        tc_destroy(&p);
                    }
    return 0;
}

// ---------------------------------------------------------------------------
// Driver

int main(int argc, char **argv)
{
    bool model_only = false, quick = false, all_tiles = false, nhwc_only = false, tc_only = false;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--model"))
            model_only = true;
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--all"))
            all_tiles = true;
        else if (!strcmp(argv[i], "--nhwc"))
            nhwc_only = true;
        else if (!strcmp(argv[i], "--tc"))
            tc_only = true;
    }
    if (model_only) {
        print_model(132, 227 * 1024); // H100 SXM
        return 0;
    }
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("fused_dev: no CUDA device\n");
        return 77;
    }
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    const int sm_count = prop.multiProcessorCount;
    const size_t optin = prop.sharedMemPerBlockOptin;
    printf("device: %s, %d SMs, %zu KiB opt-in shared memory per block\n", prop.name, sm_count, optin / 1024);
    if (tc_only) return tc_generations(sm_count, optin, quick);
    print_model(sm_count, optin);
    if (validate_all(sm_count, optin, nhwc_only) != 0) return 1;
    if (!quick && !nhwc_only) time_layers(sm_count, optin, all_tiles);
    if (!quick) time_nhwc_loaders(sm_count, optin);
    return 0;
}
