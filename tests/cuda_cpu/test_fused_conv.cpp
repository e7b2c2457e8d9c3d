// kernels/fused_conv.cu on the CPU execution layer, against a double
// reference: every tile instance in both input paths (16-byte and window),
// split-K 1..3 (launched twice: the counters must come back to zero; with
// the block order reversed: the last block may be any), column runs that
// straddle samples, runs of whole samples and runs cut short by a small
// shared-memory limit, edge tiles in channels and columns, N not a multiple
// of the samples per block, groups, strides, dilation, asymmetric padding,
// E from 1 to 32 (the expert chunks past the prefetched ones), no bias,
// misaligned x and y (scalar fallbacks), guard zones around y, NaN-poisoned
// outputs; then the refusals of cc_fused_supported and the launcher.
// Most shapes run again in NHWC (x transposed before the upload, y back
// before the comparison; the window path and scalar stores), with at most
// two column runs per tile and split-K factor, each config twice: with
// nhwc_loader 0 and with the channel-major candidate nhwc_loader 1 (issue
// 19: its 16-byte loads where x and Cin/groups allow, else 4-byte ones; its
// 16-byte y stores where y and Cout/groups allow, else 4-byte ones; both
// kinds are counted and must have run), against the same reference and
// tolerance, y poisoned before each launch. Loader 1 on NCHW is refused.
//
// Usage: test_fused_conv [--quick]   (--quick, and always under
// ThreadSanitizer: a smaller sweep; every instance and path is still reached)
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_cpu/hooks.h>

#include "fused_conv.h"
#include "fused_reference.h"

namespace {

int g_failures = 0;

// CC_EMU_STOP_AT_FIRST_FAILURE (as emu_util.c): end at the first failure
// (inject_bugs.sh sets it, so that a caught bug costs one shape, not the sweep).
void failed_once()
{
    ++g_failures;
    if (getenv("CC_EMU_STOP_AT_FIRST_FAILURE") != NULL) {
        fflush(stdout);
        exit(1);
    }
}

#define EXPECT(cond, ...)                                                                                              \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond);                                            \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
            failed_once();                                                                                             \
        }                                                                                                              \
    } while (0)

#define CUDA_OK(call)                                                                                                  \
    do {                                                                                                               \
        const cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess) {                                                                                       \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));                     \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

struct shape {
    const char *name;
    int n, cin, cout, groups, e;
    int h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
    int act;
    bool bias;
    int x_offset, y_offset; // floats: misaligned x / y take the scalar paths
    int partial_offset = 0; // floats: a misaligned split-K partial buffer takes the scalar stores
};

int out_size(int in, int k, int s, int d, int p0, int p1) { return (in + p0 + p1 - (k - 1) * d - 1) / s + 1; }

cc_fused_args args_for(const shape &s)
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

float frand(unsigned int *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

// ---------------------------------------------------------------------------
// One shape on the emulated device.

constexpr int kGuard = 64; // floats of guard zone before and after y
constexpr float kGuardValue = 12345.0f;

struct problem {
    shape s;
    cc_fused_args a;
    float *h_t; // NHWC: y transposed back to NCHW
    size_t x_elems, y_elems;
    float *h_y;
    double *ref, *mag;
    float *d_x_block, *d_y_block, *d_alpha, *d_bias, *d_packed, *d_partial;
    unsigned int *d_counters;
    size_t partial_cap, counter_cap;
};

// [N][C][HW] <-> [N][HW][C]: to_nhwc, or back.
void transpose(const float *src, float *dst, int n, int c, size_t hw, bool to_nhwc)
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

void problem_create(problem *p, const shape &s, unsigned int seed, int layout = CC_LAYOUT_NCHW)
{
    memset(p, 0, sizeof *p);
    p->s = s;
    p->a = args_for(s);
    p->a.layout = layout;
    const cc_fused_args &a = p->a;
    p->x_elems = (size_t)a.n * a.in_channels * a.h * a.w;
    p->y_elems = (size_t)a.n * a.out_channels * a.out_h * a.out_w;
    const size_t w_elems = (size_t)a.experts * a.out_channels * (a.in_channels / a.groups) * a.kernel_h * a.kernel_w;
    const size_t b_elems = (size_t)a.experts * a.out_channels, al_elems = (size_t)a.n * a.experts;
    const size_t packed_elems =
        cc_fused_packed_elems(a.in_channels, a.out_channels, a.groups, a.kernel_h, a.kernel_w, a.experts);
    float *h_x = (float *)malloc(sizeof(float) * p->x_elems), *h_w = (float *)malloc(sizeof(float) * w_elems);
    float *h_b = (float *)malloc(sizeof(float) * b_elems), *h_al = (float *)malloc(sizeof(float) * al_elems);
    float *h_packed = (float *)malloc(sizeof(float) * packed_elems);
    for (size_t i = 0; i < p->x_elems; ++i) h_x[i] = frand(&seed);
    for (size_t i = 0; i < w_elems; ++i) h_w[i] = 0.5f * frand(&seed);
    for (size_t i = 0; i < b_elems; ++i) h_b[i] = frand(&seed);
    for (size_t i = 0; i < al_elems; ++i) h_al[i] = 0.5f * (frand(&seed) + 1.0f);
    EXPECT(cc_fused_pack(h_w, h_packed, a.in_channels, a.out_channels, a.groups, a.kernel_h, a.kernel_w, a.experts),
           "%s: pack", s.name);
    p->ref = (double *)malloc(sizeof(double) * p->y_elems);
    p->mag = (double *)malloc(sizeof(double) * p->y_elems);
    p->h_y = (float *)malloc(sizeof(float) * (p->y_elems + 2 * kGuard + 4));
    cc_fused_reference(a, h_x, h_w, s.bias ? h_b : NULL, h_al, p->ref, p->mag);

    CUDA_OK(cudaMalloc(&p->d_x_block, sizeof(float) * (p->x_elems + 4)));
    CUDA_OK(cudaMalloc(&p->d_y_block, sizeof(float) * (p->y_elems + 2 * kGuard + 4)));
    CUDA_OK(cudaMalloc(&p->d_alpha, sizeof(float) * al_elems));
    CUDA_OK(cudaMalloc(&p->d_bias, sizeof(float) * b_elems));
    CUDA_OK(cudaMalloc(&p->d_packed, sizeof(float) * packed_elems));
    if (layout == CC_LAYOUT_NHWC) {
        float *t = (float *)malloc(sizeof(float) * p->x_elems);
        transpose(h_x, t, a.n, a.in_channels, (size_t)a.h * a.w, true);
        free(h_x);
        h_x = t;
        p->h_t = (float *)malloc(sizeof(float) * p->y_elems);
    }
    CUDA_OK(cudaMemcpy(p->d_x_block + s.x_offset, h_x, sizeof(float) * p->x_elems, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(p->d_alpha, h_al, sizeof(float) * al_elems, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(p->d_bias, h_b, sizeof(float) * b_elems, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(p->d_packed, h_packed, sizeof(float) * packed_elems, cudaMemcpyHostToDevice));
    p->a.x = p->d_x_block + s.x_offset;
    p->a.y = p->d_y_block + kGuard + s.y_offset;
    p->a.alpha = p->d_alpha;
    p->a.expert_bias = s.bias ? p->d_bias : NULL;
    p->a.packed = p->d_packed;
    free(h_x);
    free(h_w);
    free(h_b);
    free(h_al);
    free(h_packed);
}

void problem_destroy(problem *p)
{
    CUDA_OK(cudaFree(p->d_x_block));
    CUDA_OK(cudaFree(p->d_y_block));
    CUDA_OK(cudaFree(p->d_alpha));
    CUDA_OK(cudaFree(p->d_bias));
    CUDA_OK(cudaFree(p->d_packed));
    if (p->d_partial) CUDA_OK(cudaFree(p->d_partial));
    if (p->d_counters) CUDA_OK(cudaFree(p->d_counters));
    free(p->h_y);
    free(p->h_t);
    free(p->ref);
    free(p->mag);
}

// Split-K buffers as the library keeps them: counters zeroed once.
void split_buffers(problem *p, const cc_fused_config &c)
{
    if (c.partial_elems > p->partial_cap) {
        if (p->d_partial) CUDA_OK(cudaFree(p->d_partial));
        CUDA_OK(cudaMalloc(&p->d_partial, sizeof(float) * (c.partial_elems + 4)));
        p->partial_cap = c.partial_elems;
    }
    if (c.counter_count > p->counter_cap) {
        if (p->d_counters) CUDA_OK(cudaFree(p->d_counters));
        CUDA_OK(cudaMalloc(&p->d_counters, sizeof(unsigned int) * c.counter_count));
        CUDA_OK(cudaMemset(p->d_counters, 0, sizeof(unsigned int) * c.counter_count));
        p->counter_cap = c.counter_count;
    }
    p->a.partial = c.splits > 1 ? p->d_partial + p->s.partial_offset : NULL;
    p->a.counters = c.splits > 1 ? p->d_counters : NULL;
}

// Launches with y NaN-poisoned and guarded, then checks every output
// against |y - ref| <= (K + E + 8) u sum|terms| + 4u |ref| (u = 2^-24: the
// longest FMA chain, the mixing, the activation's few ulp); NaN never
// passes. Returns the mismatches.
long long run(problem *p, const cc_fused_config &c, const char *what)
{
    split_buffers(p, c);
    const size_t total = p->y_elems + 2 * kGuard + 4;
    for (size_t i = 0; i < total; ++i) p->h_y[i] = kGuardValue;
    const size_t y0 = kGuard + (size_t)p->s.y_offset;
    for (size_t i = 0; i < p->y_elems; ++i) p->h_y[y0 + i] = nanf("");
    CUDA_OK(cudaMemcpy(p->d_y_block, p->h_y, sizeof(float) * total, cudaMemcpyHostToDevice));
    const cudaError_t err = cc_launch_fused_conv(&p->a, &c, 0);
    EXPECT(err == cudaSuccess, "%s: launch: %s", what, cudaGetErrorString(err));
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(p->h_y, p->d_y_block, sizeof(float) * total, cudaMemcpyDeviceToHost));
    long long bad = 0;
    for (size_t i = 0; i < total; ++i) {
        if (i >= y0 && i < y0 + p->y_elems) continue;
        if (p->h_y[i] != kGuardValue) {
            if (bad < 3) fprintf(stderr, "  %s: guard [%zd] overwritten\n", what, (ssize_t)i - (ssize_t)y0);
            ++bad;
        }
    }
    // y in NCHW order, as the reference has it.
    const float *y = p->h_y + y0;
    if (p->a.layout == CC_LAYOUT_NHWC) {
        transpose(y, p->h_t, p->a.n, p->a.out_channels, (size_t)p->a.out_h * p->a.out_w, false);
        y = p->h_t;
    }
    const double u = 1.0 / 16777216.0;
    const int k = (p->a.in_channels / p->a.groups) * p->a.kernel_h * p->a.kernel_w;
    for (size_t i = 0; i < p->y_elems; ++i) {
        const double tol = (k + p->a.experts + 8) * u * p->mag[i] + 4.0 * u * fabs(p->ref[i]) + 1e-30;
        const double d = fabs((double)y[i] - p->ref[i]);
        if (!(d <= tol)) {
            if (bad < 3)
                fprintf(stderr, "  %s: y[%zu] (NCHW index) = %.9g, reference %.9g\n", what, i, y[i], p->ref[i]);
            ++bad;
        }
    }
    return bad;
}

const char *kTileNames[CC_FUSED_TILE_COUNT] = {"64x256", "64x128", "32x256", "32x128"};

// Shared-memory limits that give a tile its full column run and shorter
// ones (smaller S, runs of whole samples), by searching the limit.
int distinct_configs(const cc_fused_args &a, int tile, int splits, cc_fused_config *out, int cap)
{
    int count = 0;
    for (size_t optin = 227 * 1024; optin >= 2048 && count < cap; optin = optin * 3 / 4) {
        cc_fused_config c;
        if (!cc_fused_make_config(&a, tile, splits, optin, &c)) break;
        bool seen = false;
        for (int i = 0; i < count; ++i) seen = seen || out[i].quads_per_block == c.quads_per_block;
        if (!seen) out[count++] = c;
    }
    return count;
}

struct tally {
    long long runs = 0, failed = 0;
    long long by_tile[CC_FUSED_TILE_COUNT] = {};
    long long split_runs = 0, short_runs = 0, nhwc_runs = 0;
    // nhwc_loader 1 runs, by the vector paths the launcher must have taken.
    long long cm_runs = 0, cm_vec_x = 0, cm_scalar_x = 0, cm_vec_y = 0, cm_scalar_y = 0, cm_split = 0;
};

bool aligned16(const void *p) { return ((size_t)p & 15u) == 0; }

// Runs config c with nhwc_loader 1 (the NHWC channel-major candidate) and
// counts which of its paths the launcher takes for these pointers.
long long run_channel_major(problem *p, const cc_fused_config &c, const char *what, tally *t)
{
    cc_fused_config cm = c;
    cm.nhwc_loader = 1;
    char name[240];
    snprintf(name, sizeof name, "%s nhwc_loader 1", what);
    const long long bad = run(p, cm, name);
    const int cin_g = p->a.in_channels / p->a.groups, mg = p->a.out_channels / p->a.groups;
    const bool vx = cin_g % 4 == 0 && aligned16(p->a.x), vy = mg % 4 == 0 && aligned16(p->a.y);
    ++t->cm_runs;
    t->cm_vec_x += vx;
    t->cm_scalar_x += !vx;
    t->cm_vec_y += vy;
    t->cm_scalar_y += !vy;
    t->cm_split += c.splits > 1;
    if (bad) fprintf(stderr, "FAIL %s: %lld mismatches\n", name, bad);
    return bad;
}

void sweep_shape(const shape &s, unsigned int seed, bool quick, int layout, tally *t)
{
    problem p;
    problem_create(&p, s, seed, layout);
    const bool nhwc = layout == CC_LAYOUT_NHWC;
    const char *lname = nhwc ? " NHWC" : "";
    char reason[256];
    if (!cc_fused_supported(&p.a, reason, sizeof reason)) {
        EXPECT(false, "%s: unexpectedly unsupported: %s", s.name, reason);
        problem_destroy(&p);
        return;
    }
    for (int tile = 0; tile < CC_FUSED_TILE_COUNT; ++tile)
        for (int splits = 1; splits <= 3; ++splits) {
            cc_fused_config cs[4];
            const int count = distinct_configs(p.a, tile, splits, cs, quick || nhwc ? 2 : 4);
            for (int i = 0; i < count; ++i) {
                char what[200];
                snprintf(what, sizeof what, "%s%s tile %s splits %d run %d quads (<= %d samples)", s.name, lname,
                         kTileNames[tile], splits, cs[i].quads_per_block, cs[i].samples_cap);
                // Alternate block orders: a block writing past its tile is
                // overwritten by its neighbour in one order, not in the other.
                cc_cpu_set_block_order((tile + splits + i) & 1);
                EXPECT(cs[i].nhwc_loader == 0, "%s: make_config sets nhwc_loader 0", what);
                long long bad = run(&p, cs[i], what);
                if (nhwc && bad == 0) bad = run_channel_major(&p, cs[i], what, t);
                cc_cpu_set_block_order(0);
                if (splits > 1 && bad == 0) {
                    // Again, with the blocks in reverse order: the counters
                    // were left at zero, and any block may be the last.
                    cc_cpu_set_block_order(1);
                    bad = run(&p, cs[i], what);
                    if (nhwc && bad == 0) bad = run_channel_major(&p, cs[i], what, t);
                    cc_cpu_set_block_order(0);
                }
                ++t->runs;
                ++t->by_tile[tile];
                t->split_runs += splits > 1;
                t->short_runs += i > 0;
                t->nhwc_runs += nhwc;
                if (bad) {
                    fprintf(stderr, "FAIL %s: %lld mismatches\n", what, bad);
                    ++t->failed;
                    failed_once();
                }
            }
        }
    cc_fused_config c;
    EXPECT(cc_fused_choose(&p.a, 132, 227 * 1024, CC_FUSED_MAX_SPLITS, &c), "%s: choose", s.name);
    EXPECT(strlen(c.reason) > 0, "%s: a reason", s.name);
    EXPECT(c.nhwc_loader == 0, "%s: choose sets nhwc_loader 0", s.name);
    EXPECT(cc_fused_nhwc_loader_supported(&p.a, 0) == 1, "%s: loader 0 supported", s.name);
    EXPECT(cc_fused_nhwc_loader_supported(&p.a, 1) == (nhwc ? 1 : 0), "%s: loader 1 supported in NHWC only", s.name);
    long long bad = run(&p, c, "chosen");
    if (nhwc && bad == 0) bad = run_channel_major(&p, c, "chosen", t);
    ++t->runs;
    t->nhwc_runs += nhwc;
    if (bad) {
        fprintf(stderr, "FAIL %s%s chosen (%s): %lld mismatches\n", s.name, lname, c.reason, bad);
        ++t->failed;
        failed_once();
    }
    problem_destroy(&p);
}

// ---------------------------------------------------------------------------
// Refusals: what the library must be able to decline cleanly.

void refusals()
{
    shape s = {"refusals", 2, 16, 16, 1, 4, 4, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, true, 0, 0};
    cc_fused_args a = args_for(s);
    char reason[256];
    EXPECT(cc_fused_supported(&a, reason, sizeof reason) == 1, "plain 1x1: %s", reason);
    cc_fused_args b = a;
    b.groups = 16; // depthwise
    EXPECT(cc_fused_supported(&b, reason, sizeof reason) == 0 && strstr(reason, "depthwise"), "depthwise: %s", reason);
    b = a;
    b.experts = CC_FUSED_MAX_EXPERTS + 1;
    EXPECT(cc_fused_supported(&b, reason, sizeof reason) == 0, "E too large");
    b = a;
    b.groups = 3; // 16 % 3
    EXPECT(cc_fused_supported(&b, reason, sizeof reason) == 0, "indivisible groups");
    b = a;
    b.activation = 7;
    EXPECT(cc_fused_supported(&b, reason, sizeof reason) == 0, "activation");
    b = a;
    b.layout = CC_LAYOUT_NHWC;
    EXPECT(cc_fused_supported(&b, reason, sizeof reason) == 1, "NHWC: %s", reason);
    b.layout = 2;
    EXPECT(cc_fused_supported(&b, reason, sizeof reason) == 0 && strstr(reason, "layout"), "layout 2: %s", reason);
    b.layout = -1;
    EXPECT(cc_fused_supported(&b, NULL, 0) == 0, "layout -1");
    b = a;
    b.stride_h = 0;
    EXPECT(cc_fused_supported(&b, NULL, 0) == 0, "stride 0, no reason buffer");
    EXPECT(cc_fused_supported(NULL, reason, sizeof reason) == 0, "NULL args");
    EXPECT(cc_fused_packed_elems(16, 16, 3, 1, 1, 4) == 0, "packed size of indivisible groups");
    EXPECT(cc_fused_pack(NULL, NULL, 16, 16, 1, 1, 1, 4) == 0, "pack of NULL");

    // The launcher refuses configs that do not match the shape, missing
    // buffers and misaligned packed experts, before touching anything.
    problem p;
    problem_create(&p, s, 99u);
    cc_fused_config c;
    EXPECT(cc_fused_make_config(&p.a, 0, 1, 227 * 1024, &c), "config");
    EXPECT(cc_fused_make_config(&p.a, 0, 100000, 227 * 1024, &c) == 0, "more splits than K steps");
    EXPECT(cc_fused_make_config(&p.a, CC_FUSED_TILE_COUNT, 1, 227 * 1024, &c) == 0, "no such tile");
    EXPECT(cc_fused_make_config(&p.a, 0, 1, 1024, &c) == 0, "nothing fits 1 KiB");
    EXPECT(cc_fused_make_config(&p.a, 0, 1, 227 * 1024, &c), "config");
    cc_fused_config wrong = c;
    wrong.samples_cap += 1;
    EXPECT(cc_launch_fused_conv(&p.a, &wrong, 0) == cudaErrorInvalidValue, "samples_cap mismatch");
    wrong = c;
    wrong.quads_per_block = 65;
    EXPECT(cc_launch_fused_conv(&p.a, &wrong, 0) == cudaErrorInvalidValue, "run longer than the tile");
    cc_fused_config split;
    EXPECT(cc_fused_make_config(&p.a, 0, 1, 227 * 1024, &split), "config");
    split.splits = 2; // without buffers
    split.partial_elems = 2 * p.y_elems;
    p.a.partial = NULL;
    p.a.counters = NULL;
    EXPECT(cc_launch_fused_conv(&p.a, &split, 0) == cudaErrorInvalidValue, "split-K without buffers");
    cc_fused_args m = p.a;
    m.packed = p.a.packed + 1;
    EXPECT(cc_launch_fused_conv(&m, &c, 0) == cudaErrorInvalidValue, "misaligned packed experts");
    m = p.a;
    m.y = NULL;
    EXPECT(cc_launch_fused_conv(&m, &c, 0) == cudaErrorInvalidValue, "NULL y");
    EXPECT(cc_launch_fused_conv(&p.a, NULL, 0) == cudaErrorInvalidValue, "NULL config");
    m = p.a;
    m.layout = 2;
    EXPECT(cc_launch_fused_conv(&m, &c, 0) == cudaErrorInvalidValue, "unknown layout");
    EXPECT(cc_fused_make_config(&m, 0, 1, 227 * 1024, &wrong) == 0, "config for an unknown layout");

    // nhwc_loader: 0 everywhere, 1 in NHWC only (window origins within 16
    // bits), nothing else; the launcher refuses what it cannot run before
    // writing anything (y stays poisoned).
    c.nhwc_loader = 7;
    EXPECT(cc_fused_make_config(&p.a, 0, 1, 227 * 1024, &c) && c.nhwc_loader == 0, "make_config resets nhwc_loader");
    EXPECT(cc_fused_nhwc_loader_supported(&p.a, 0) == 1, "loader 0 on NCHW");
    EXPECT(cc_fused_nhwc_loader_supported(&p.a, 1) == 0, "loader 1 on NCHW");
    EXPECT(cc_fused_nhwc_loader_supported(NULL, 0) == 0, "NULL args");
    m = p.a;
    m.layout = CC_LAYOUT_NHWC;
    EXPECT(cc_fused_nhwc_loader_supported(&m, 1) == 1, "loader 1 on NHWC");
    EXPECT(cc_fused_nhwc_loader_supported(&m, 2) == 0 && cc_fused_nhwc_loader_supported(&m, -1) == 0,
           "loaders 2 and -1");
    cc_fused_args far = m;
    far.pad_top = 40000; // the window origin's row, -40000, does not fit 16 bits
    far.out_h = 2 * 40000 + far.h;
    EXPECT(cc_fused_nhwc_loader_supported(&far, 0) == 1 && cc_fused_nhwc_loader_supported(&far, 1) == 0,
           "loader 1 past 16-bit window origins");
    far = m;
    far.w = 70000;
    far.out_w = 70000; // the last column's origin, 69999
    EXPECT(cc_fused_nhwc_loader_supported(&far, 1) == 0, "loader 1 past 16-bit window origins (columns)");
    far.w = far.out_w = 32768; // the last origin, 32767, fits
    EXPECT(cc_fused_nhwc_loader_supported(&far, 1) == 1, "loader 1 at the 16-bit limit");
    const size_t total = p.y_elems + 2 * kGuard + 4;
    for (size_t i = 0; i < total; ++i) p.h_y[i] = nanf("");
    CUDA_OK(cudaMemcpy(p.d_y_block, p.h_y, sizeof(float) * total, cudaMemcpyHostToDevice));
    const int refused[][2] = {{CC_LAYOUT_NCHW, 1}, {CC_LAYOUT_NCHW, 2}, {CC_LAYOUT_NHWC, 2}, {CC_LAYOUT_NHWC, -1}};
    for (const auto &r : refused) {
        m = p.a;
        m.layout = r[0];
        cc_fused_config bad_loader = c;
        bad_loader.nhwc_loader = r[1];
        EXPECT(cc_launch_fused_conv(&m, &bad_loader, 0) == cudaErrorInvalidValue, "layout %d, nhwc_loader %d refused",
               r[0], r[1]);
    }
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(p.h_y, p.d_y_block, sizeof(float) * total, cudaMemcpyDeviceToHost));
    size_t written = 0;
    for (size_t i = 0; i < total; ++i) written += !isnan(p.h_y[i]);
    EXPECT(written == 0, "refused launches wrote %zu floats", written);
    problem_destroy(&p);
}

} // namespace

// ThreadSanitizer slows the block threads ~10x: its build runs --quick.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FUSED_TEST_TSAN 1
#endif
#endif
#ifndef FUSED_TEST_TSAN
#define FUSED_TEST_TSAN 0
#endif

int main(int argc, char **argv)
{
    const bool quick = FUSED_TEST_TSAN || (argc > 1 && strcmp(argv[1], "--quick") == 0);
    // Split-K's last block reads the other blocks' partial tiles: with the
    // store buffer they are NaN unless each writer fenced before counting
    // itself (a GPU may show stale ones).
    cc_cpu_set_store_buffer(1);
    // name, N, Cin, Cout, groups, E, H, W, kh, kw, sh, sw, dh, dw, pad t l b r, act, bias, x/y offsets
    const shape shapes[] = {
        // 16-byte path: 1x1 stride 1, P = 16; N*quads spans several column runs.
        {"1x1 P16 E8", 5, 24, 40, 1, 8, 4, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 0, 0},
        // P = 12 (3 quads), Cin not a multiple of 16, Cout not of 4 or 32, E = 9: a late expert chunk.
        {"1x1 P12 E9", 7, 19, 70, 1, 9, 3, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, true, 0, 0},
        // Window path for 1x1: P = 49 (not a multiple of 4), 13 quads per sample.
        {"1x1 7x7 E3", 6, 33, 36, 1, 3, 7, 7, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, true, 0, 0},
        // Misaligned x (window path) and y (scalar stores) with P % 4 == 0.
        {"1x1 misaligned", 3, 16, 20, 1, 4, 4, 2, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 1, 3},
        // Strided 1x1, groups 2, E = 1, no bias.
        {"1x1 s2 g2 E1", 4, 32, 48, 2, 1, 9, 9, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 0, false, 0, 0},
        // 3x3 with "same" padding, relu, several K taps.
        {"3x3 pad1", 2, 20, 36, 1, 4, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true, 0, 0},
        // 5x3, asymmetric padding, dilation, stride, E = 17 (two late chunks on 8x4 tiles).
        {"5x3 asym dil", 3, 12, 20, 1, 17, 11, 9, 5, 3, 2, 1, 2, 1, 3, 0, 1, 2, 2, true, 0, 0},
        // 3x3 stride 2, groups 4 (Cin/g = 16), E = 32.
        {"3x3 s2 g4 E32", 2, 64, 64, 4, 32, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 0, true, 0, 0},
        // Groups 3, Cout/g = 5 (a channel tile mostly padding), 1x1 plane: P = 1, one quad per sample.
        {"1x1 P1 g3", 40, 12, 15, 3, 5, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 0, 0},
        // Many output channels: several channel tiles; E = 2.
        {"1x1 Cout 136", 2, 8, 136, 1, 2, 2, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, true, 0, 0},
        // Each pointer of a vector path misaligned on its own (issue 18): x
        // (16-byte loads), y and the split-K partials (16-byte stores); a
        // launcher that tests the wrong pointer faults on this one.
        {"1x1 x misaligned", 3, 16, 20, 1, 4, 4, 2, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 1, 0},
        {"1x1 y misaligned", 3, 16, 20, 1, 4, 4, 2, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 0, 1},
        {"1x1 partial misal", 3, 48, 20, 1, 4, 4, 2, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 0, 0, 1},
        // 3x3 grouped with odd channels per group (Cin/g 7, Cout/g 9: NHWC
        // loader 1's 4-byte loads and stores, channel tails in every group),
        // dilation 2 and asymmetric padding.
        {"3x3 g2 odd dil", 2, 14, 18, 2, 3, 7, 6, 3, 3, 1, 2, 2, 1, 2, 1, 1, 0, 1, true, 0, 0},
    };
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    // Shapes that run in NHWC too (with nhwc_loader 0 and 1): the 1x1 that
    // NCHW reads 16 bytes at a time, edge tiles (Cin 19, Cout 70), misaligned
    // x and y together and each on its own, strides, padding and dilation,
    // groups (Cin/g 16, 7 and 4, Cout/g 24, 9 and 5), E 1 to 17.
    const bool in_nhwc[] = {true, true, false, true, true, true, true, false, true, false, true, true, true, true};
    static_assert(sizeof in_nhwc / sizeof in_nhwc[0] == sizeof shapes / sizeof shapes[0], "one flag per shape");
    tally t;
    // Each shape in NCHW, then (where flagged) in NHWC: a bug of either
    // layout shows within the first shapes (inject_bugs.sh stops there).
    for (int i = 0; i < count; ++i) {
        if (!(quick && (i % 2 == 1 && i != 3))) { // the TSan build: half the shapes, both paths
            sweep_shape(shapes[i], 100u + (unsigned int)i, quick, CC_LAYOUT_NCHW, &t);
            printf("%-16s done: %lld runs so far, %lld failed\n", shapes[i].name, t.runs, t.failed);
        }
        // TSan: misaligned (3, every tile), grouped P = 1 (8), strided
        // groups (4) and split-K (12; with 3, 4 and 8 every path of
        // nhwc_loader 1: the others have one K step).
        if (!in_nhwc[i] || (quick && i != 3 && i != 4 && i != 8 && i != 12)) continue;
        sweep_shape(shapes[i], 200u + (unsigned int)i, quick, CC_LAYOUT_NHWC, &t);
        printf("%-16s NHWC done: %lld runs so far, %lld failed\n", shapes[i].name, t.runs, t.failed);
    }
    refusals();
    printf("fused_conv: %lld runs (tiles 64x256 %lld, 64x128 %lld, 32x256 %lld, 32x128 %lld; split-K %lld; short "
           "runs %lld; NHWC %lld), %lld failed, %d failures in all\n",
           t.runs, t.by_tile[0], t.by_tile[1], t.by_tile[2], t.by_tile[3], t.split_runs, t.short_runs, t.nhwc_runs,
           t.failed, g_failures);
    printf("nhwc_loader 1: %lld runs (x 16-byte %lld, 4-byte %lld; y 16-byte %lld, 4-byte %lld; split-K %lld)\n",
           t.cm_runs, t.cm_vec_x, t.cm_scalar_x, t.cm_vec_y, t.cm_scalar_y, t.cm_split);
    // Every path of the channel-major loader and epilogue must have run.
    EXPECT(t.cm_vec_x > 0 && t.cm_scalar_x > 0 && t.cm_vec_y > 0 && t.cm_scalar_y > 0 && t.cm_split > 0,
           "nhwc_loader 1 paths not all reached");
    // Every instance of kernels/fused_conv.cu must have run.
    const int unlaunched = cc_cpu_report_unlaunched("fused_conv");
    EXPECT(unlaunched == 0, "%d kernel instances never launched", unlaunched);
    return g_failures == 0 ? 0 : 1;
}
