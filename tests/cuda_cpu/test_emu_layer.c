/* The CPU execution layer's own tests, on the small kernels of
 * selftest_kernels.cu.
 *
 * Right kernels: every shuffle kind and width, votes, matches, reductions
 * and block reductions against the CUDA semantics computed here; atomics;
 * half and bfloat16 fused multiply-adds; wmma (f16 in three shapes, bf16,
 * tf32) against a double-precision product; shared memory reads as NaN
 * until written; dynamic shared memory past 48 KiB with opt-in; a handoff
 * between blocks through __threadfence() and an atomic, in both block orders,
 * and under the store buffer (without the writer's fence the reader sees NaN).
 *
 * Launches a GPU refuses come back with its error: a block larger than the
 * kernel's __launch_bounds__, grid and block limits, dynamic shared memory
 * past 48 KiB without opt-in, static plus dynamic past 48 KiB.
 *
 * Wrong kernels, each run in a child process (this program with
 * --scenario NAME), must stop it with the layer's (or a sanitizer's)
 * message: misaligned float4 loads (__ldg and a plain dereference), a
 * divergent __syncthreads, a barrier after some threads returned, a
 * deadlock, a shuffle reading outside its mask, a mask naming lanes that do
 * not exist, a spinning kernel (watchdog), a host pointer as an argument, a
 * misaligned wmma load; an mma on tf32 operands not rounded to TF32; a kernel
 * writing past the end or before the start of a device allocation (the guard
 * zones of the emulated cudaMalloc, or under ASan their poisoning, stop it);
 * under ASan, a dynamic shared memory overrun; under
 * TSan, a missing __syncthreads, a shuffle taken as ordering (it is not),
 * and a race between blocks (with the fence + atomic handoff race-free). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "emu_util.h"
#include "test_util.h"
#include "selftest_kernels.h"

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ST_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define ST_ASAN 1
#endif
#endif
#ifndef ST_TSAN
#define ST_TSAN 0
#endif
#ifndef ST_ASAN
#define ST_ASAN 0
#endif

static void *dev(size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        fprintf(stderr, "FATAL: cudaMalloc\n");
        exit(1);
    }
    return p;
}

static void to_host(void *dst, const void *src, size_t bytes)
{
    EXPECT(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess, "copy");
}

static void to_dev(void *dst, const void *src, size_t bytes)
{
    EXPECT(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) == cudaSuccess, "copy");
}

/* --- right kernels ----------------------------------------------------------------------------- */
/* The lane a shuffle of the given kind reads, by the CUDA definitions. */
static unsigned src_lane(int kind, unsigned lane, int arg, unsigned width)
{
    const unsigned seg = lane & ~(width - 1), in_seg = lane & (width - 1), d = (unsigned)arg;
    switch (kind) {
    case 0: return seg | (d & (width - 1));
    case 1: return in_seg >= d ? lane - d : lane;
    case 2: return in_seg + d < width ? lane + d : lane;
    default: {
        const unsigned s = lane ^ d;
        return s > (lane | (width - 1)) ? lane : s;
    }
    }
}

static void check_warp_ops(void)
{
    unsigned *d = dev((size_t)64 * ST_WARP_RESULTS * sizeof(unsigned));
    unsigned got[64 * ST_WARP_RESULTS];
    EU_LAUNCH(st_warp_ops(d));
    to_host(got, d, sizeof got);
    for (unsigned tid = 0; tid < 64; ++tid) {
        const unsigned lane = tid & 31u, base = tid & ~31u, *o = got + (size_t)tid * ST_WARP_RESULTS;
        int k = 0;
        for (unsigned width = 32; width >= 1; width /= 2) {
            const int args[5] = {(int)(lane * 7u + 3u), 3, 5, 6, 17};
            for (int kind = 0; kind < 5; ++kind, ++k) {
                const unsigned s = src_lane(kind < 4 ? kind : 3, lane, args[kind], width);
                EXPECT(o[k] == (base + s) * 1000u + 7u, "thread %u shuffle %d width %u: got %u, want lane %u", tid,
                       kind, width, o[k], s);
            }
        }
        const unsigned half_src = (lane + 1u) % 16u + (lane & 16u);
        EXPECT(o[k++] == (base + half_src) * 1000u + 7u, "thread %u: half-warp shuffle", tid);
        unsigned ballot = 0, match = 0;
        for (unsigned l = 0; l < 32; ++l) {
            if ((base + l) % 3u == 0u) ballot |= 1u << l;
            if (l / 4u == lane / 4u) match |= 1u << l;
        }
        const unsigned got_ballot = o[k++];
        EXPECT(got_ballot == ballot, "thread %u: ballot 0x%08x, want 0x%08x", tid, got_ballot, ballot);
        EXPECT(o[k++] == (base == 0 ? 1u : 0u), "thread %u: all", tid);
        EXPECT(o[k++] == (base == 32 ? 1u : 0u), "thread %u: any", tid);
        EXPECT(o[k++] == match, "thread %u: match_any", tid);
        EXPECT(o[k++] == 496u, "thread %u: reduce_add", tid);
        EXPECT(o[k++] == 69u, "thread %u: reduce_min", tid);
        EXPECT(o[k++] == 11u, "thread %u: reduce_max", tid);
        EXPECT(o[k++] == 13u, "thread %u: __syncthreads_count", tid);
        EXPECT(o[k++] == 1u, "thread %u: __syncthreads_and", tid);
        EXPECT(o[k++] == 1u, "thread %u: __syncthreads_or", tid);
        /* Which other lanes are active is not defined; the caller is. */
        const unsigned active = o[k++];
        EXPECT((active >> lane & 1u) != 0, "thread %u: __activemask 0x%08x lacks its own lane", tid, active);
    }
    cudaFree(d);
}

static void check_atomics(void)
{
    unsigned *counters = dev(2 * sizeof(unsigned)), *wrap = dev(sizeof(unsigned));
    float *sum = dev(sizeof(float));
    int *maxv = dev(sizeof(int));
    const unsigned zero[2] = {0, 0};
    const float fzero = 0.0f;
    const int minus = -1;
    to_dev(counters, zero, sizeof zero);
    to_dev(wrap, zero, sizeof(unsigned));
    to_dev(sum, &fzero, sizeof fzero);
    to_dev(maxv, &minus, sizeof minus);
    EU_LAUNCH(st_atomics(counters, sum, maxv, wrap, 3));
    unsigned c[2], w;
    float s;
    int m;
    to_host(c, counters, sizeof c);
    to_host(&w, wrap, sizeof w);
    to_host(&s, sum, sizeof s);
    to_host(&m, maxv, sizeof m);
    EXPECT(c[0] == 768 && c[1] == 1536 && w == 768 % 10 && s == 384.0f && m == 767,
           "atomics: %u %u %u %g %d (want 768 1536 8 384 767)", c[0], c[1], w, (double)s, m);
    cudaFree(counters);
    cudaFree(wrap);
    cudaFree(sum);
    cudaFree(maxv);
}

static void check_unwritten_shared(void)
{
    unsigned *d = dev(64 * sizeof(unsigned)), got[64];
    EU_LAUNCH(st_unwritten_shared(d));
    to_host(got, d, sizeof got);
    for (int i = 0; i < 64; ++i)
        EXPECT(got[i] == 0xffffffffu, "%s shared memory word %d reads 0x%08x before any write, not NaN",
               i < 32 ? "static" : "dynamic", i % 32, got[i]);
    cudaFree(d);
}

/* A double rounded to the nearest half (ties to even), for the normal range. */
static double round_half(double v)
{
    if (v == 0) return 0;
    int e;
    (void)frexp(v, &e); /* |v| in [2^(e-1), 2^e) */
    const double ulp = ldexp(1.0, (e - 1 < -14 ? -14 : e - 1) - 10);
    return nearbyint(v / ulp) * ulp;
}

/* The bits of a half that holds exactly the float f (normal or zero). */
static unsigned short half_bits(float f)
{
    unsigned int u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) == 0) return (unsigned short)(u >> 16);
    const unsigned int sign = u >> 31, exp = (u >> 23) & 0xffu, mant = u & 0x7fffffu;
    return (unsigned short)(sign << 15 | (exp - 127 + 15) << 10 | mant >> 13);
}

static void check_half(void)
{
    float x[32], y[96], *dx = dev(sizeof x), *dy = dev(sizeof y);
    for (int i = 0; i < 32; ++i) x[i] = 0.37f * (float)(i - 16);
    to_dev(dx, x, sizeof x);
    EU_LAUNCH(st_half(dx, dy));
    to_host(y, dy, sizeof y);
    for (int i = 0; i < 32; ++i) {
        const double h = round_half(x[i]);
        const double want = round_half(h * h + 1.0);
        EXPECT(y[i] == want, "__hfma(half) [%d]: %g, want %g", i, (double)y[i], want);
        EXPECT(fabs(y[32 + i] - (x[i] * x[i] + 1.0)) <= 0.01 * (x[i] * x[i] + 1.0), "__hfma(bfloat16) [%d]", i);
        EXPECT(y[64 + i] == (float)(2 * h), "__hadd [%d]", i);
    }
    cudaFree(dx);
    cudaFree(dy);
}

/* <cuda_pipeline.h>: the right kernel gets its neighbour's copies (with the
 * 4-byte zero-fill); a read before the wait sees the old contents (the NaN
 * fill), as a stage read before its copies land would on a GPU. */
static void check_pipeline(void)
{
    float src[512], out[512];
    for (int i = 0; i < 512; ++i) src[i] = (float)(i + 1);
    float *dsrc = dev(sizeof src), *dout = dev(sizeof out);
    to_dev(dsrc, src, sizeof src);
    EU_LAUNCH(st_pipeline(dsrc, dout, 0));
    to_host(out, dout, sizeof out);
    long long wrong = 0;
    for (int t = 0; t < 64; ++t)
        for (int i = 0; i < 4; ++i) {
            const int o = t ^ 1;
            if (out[4 * t + i] != src[4 * o + i]) ++wrong;
            if (out[256 + 4 * t + i] != (i == 3 ? 0.0f : src[256 + 4 * o + i])) ++wrong;
        }
    EXPECT(wrong == 0, "pipeline copies: %lld values wrong", wrong);
    EU_LAUNCH(st_pipeline(dsrc, dout, 1));
    to_host(out, dout, sizeof out);
    long long stale = 0;
    for (int i = 0; i < 256; ++i) stale += isnan(out[i]) ? 1 : 0;
    EXPECT(stale == 256, "a stage read before its wait: %lld of 256 values stale (NaN), want all", stale);
    cudaFree(dsrc);
    cudaFree(dout);
}

static void check_wmma(void)
{
    /* A: 32x16 row-major, B: 16x32 column-major (element (k, n) at n * 16 + k), C: 32x32. */
    float a[512], b[512], c[1024], af[128], bf[128], d[5 * 256];
    unsigned short ah[512], bh[512]; /* half bits */
    unsigned short ab[512], bb[512]; /* bfloat16 bits: the top half of the float */
    for (int i = 0; i < 512; ++i) {
        a[i] = (float)((i * 7) % 13 - 6) / 8.0f;
        b[i] = (float)((i * 5) % 11 - 5) / 4.0f;
        ah[i] = half_bits(a[i]); /* exact: multiples of 1/8 and 1/4 below 8 */
        bh[i] = half_bits(b[i]);
        unsigned int ua, ub;
        memcpy(&ua, &a[i], 4);
        memcpy(&ub, &b[i], 4);
        ab[i] = (unsigned short)(ua >> 16); /* exact: these values have few mantissa bits */
        bb[i] = (unsigned short)(ub >> 16);
    }
    for (int i = 0; i < 1024; ++i) c[i] = (float)(i % 9) - 4.0f;
    for (int i = 0; i < 128; ++i) {
        af[i] = 1.0f + (float)i / 1024.0f; /* bits below tf32's 10-bit mantissa */
        bf[i] = 0.5f + (float)((i * 3) % 17) / 512.0f;
    }
    void *dah = dev(sizeof ah), *dbh = dev(sizeof bh), *dab = dev(sizeof ab), *dbb = dev(sizeof bb);
    float *daf = dev(sizeof af), *dbf = dev(sizeof bf), *dc = dev(sizeof c), *dd = dev(sizeof d);
    to_dev(dah, ah, sizeof ah);
    to_dev(dbh, bh, sizeof bh);
    to_dev(dab, ab, sizeof ab);
    to_dev(dbb, bb, sizeof bb);
    to_dev(daf, af, sizeof af);
    to_dev(dbf, bf, sizeof bf);
    to_dev(dc, c, sizeof c);
    EU_LAUNCH(st_wmma(dah, dbh, dab, dbb, daf, dbf, dc, dd));
    to_host(d, dd, sizeof d);
    static const int shapes[4][3] = {{16, 16, 16}, {32, 8, 16}, {8, 32, 16}, {16, 16, 16}};
    for (int t = 0; t < 4; ++t) {
        const int M = shapes[t][0], N = shapes[t][1], K = shapes[t][2];
        for (int m = 0; m < M; ++m)
            for (int n = 0; n < N; ++n) {
                double s = c[m * N + n];
                for (int k = 0; k < K; ++k) s += (double)a[m * K + k] * b[n * K + k];
                const double got = d[t * 256 + m * N + n], want = 2 * s;
                if (!(fabs(got - want) <= 1e-6 * (fabs(want) + 1))) {
                    EXPECT(0, "wmma %s %dx%dx%d: d[%d][%d] = %g, want %g", t == 3 ? "bf16" : "f16", M, N, K, m, n, got,
                           want);
                    t = 4;
                    break;
                }
            }
    }
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 16; ++n) {
            double s = 0;
            for (int k = 0; k < 8; ++k) {
                /* tf32 inputs: rounded to 10 mantissa bits (nearest, ties away), as __float_to_tf32 does. */
                unsigned int ua, ub;
                float ra = af[m * 8 + k], rb = bf[n * 8 + k];
                memcpy(&ua, &ra, 4);
                memcpy(&ub, &rb, 4);
                ua = (ua + 0x1000u) & 0xffffe000u;
                ub = (ub + 0x1000u) & 0xffffe000u;
                memcpy(&ra, &ua, 4);
                memcpy(&rb, &ub, 4);
                s += (double)ra * rb;
            }
            EXPECT(fabs(d[1024 + m * 16 + n] - s) <= 1e-6 * fabs(s), "wmma tf32 d[%d][%d] = %g, want %g", m, n,
                   (double)d[1024 + m * 16 + n], s);
        }
    cudaFree(dah);
    cudaFree(dbh);
    cudaFree(dab);
    cudaFree(dbb);
    cudaFree(daf);
    cudaFree(dbf);
    cudaFree(dc);
    cudaFree(dd);
}

/* Block 0 hands x to block 1 through a fence and an atomic; run in reverse
 * order, block 1 finds no handoff and writes nothing. */
static void check_handoff(int reversed)
{
    float *x = dev(32 * sizeof(float)), *out = dev(32 * sizeof(float)), got[32];
    unsigned *flag = dev(sizeof(unsigned));
    const unsigned zero = 0;
    to_dev(flag, &zero, sizeof zero);
    cc_cpu_set_block_order(reversed);
    EU_LAUNCH(st_handoff(x, flag, out, 1));
    cc_cpu_set_block_order(0);
    to_host(got, out, sizeof got);
    for (int i = 0; i < 32; ++i)
        EXPECT(reversed ? isnan(got[i]) : got[i] == 1.0f + (float)i, "handoff%s [%d] = %g",
               reversed ? " (reversed)" : "", i, (double)got[i]);
    cudaFree(x);
    cudaFree(out);
    cudaFree(flag);
}

/* The store buffer: block 0's x reaches block 1 through the fence +
 * atomic hand-off; without block 0's fence block 1 reads NaN (withheld
 * stores), and x is whole again once the grid has ended. Not under TSan,
 * whose isolated grids check this hand-off themselves (handoff_race). */
static void check_store_buffer(void)
{
    float *x = dev(32 * sizeof(float)), *out = dev(32 * sizeof(float)), got[32];
    unsigned *flag = dev(sizeof(unsigned));
    const unsigned zero = 0;
    cc_cpu_set_store_buffer(1);
    static const float zeros[32];
    for (int ordered = 1; ordered <= 2; ++ordered) {
        to_dev(flag, &zero, sizeof zero);
        to_dev(x, zeros, sizeof zeros); /* a store of the value already there would change nothing */
        EU_LAUNCH(st_handoff(x, flag, out, ordered));
        to_host(got, out, sizeof got);
        for (int i = 0; i < 32; ++i)
            EXPECT(ordered == 1 ? got[i] == 1.0f + (float)i : isnan(got[i]), "store buffer, %s: [%d] = %g",
                   ordered == 1 ? "fenced" : "no fence", i, (double)got[i]);
        to_host(got, x, sizeof got);
        for (int i = 0; i < 32; ++i)
            EXPECT(got[i] == 1.0f + (float)i, "store buffer: x[%d] = %g after the grid", i, (double)got[i]);
    }
    cc_cpu_set_store_buffer(0);
    cudaFree(x);
    cudaFree(out);
    cudaFree(flag);
}

/* Launches a GPU refuses: the error comes back, nothing runs. */
static void check_refusals(void)
{
    float *out = dev((size_t)64 * 1024 * sizeof(float)), got[32];
    const long long refused = cc_cpu_refused_launches();
    EU_LAUNCH(st_bounded(out, 64, 1));
    EXPECT(st_bounded(out, 96, 1) == cudaErrorLaunchOutOfResources, "a block over __launch_bounds__(64) was run");
    EXPECT(st_bounded(out, 1025, 1) == cudaErrorInvalidConfiguration, "a block of 1025 threads was run");
    EXPECT(st_bounded(out, 0, 1) == cudaErrorInvalidConfiguration, "a block of 0 threads was run");
    EXPECT(st_bounded(out, 32, 65536) == cudaErrorInvalidConfiguration, "a grid of 65536 blocks in y was run");
    EXPECT(st_big_dynamic(out, 12 * 1024 + 1, 0) == cudaErrorInvalidValue, "48 KiB + 4 bytes without opt-in was run");
    EU_LAUNCH(st_big_dynamic(out, 16 * 1024, 1)); /* 64 KiB, opted in */
    to_host(got, out, sizeof got);
    for (int i = 0; i < 32; ++i)
        EXPECT(got[i] == 3.0f, "64 KiB of dynamic shared memory: [%d] = %g", i, (double)got[i]);
    EU_LAUNCH(st_big_static(out, 0));
    EXPECT(st_big_static(out, (size_t)10 * 1024) == cudaErrorInvalidValue, "40 KiB static + 10 KiB dynamic was run");
    EXPECT(cc_cpu_refused_launches() - refused == 6, "%lld refusals counted, 6 expected",
           cc_cpu_refused_launches() - refused);
    /* Another card's opt-in (A100: 163 KiB per block, static included): the
     * attribute past it is refused, and so is a launch past it that an
     * earlier card's attribute would allow. */
    EXPECT(cc_cpu_set_device_profile(CC_CPU_DEVICE_A100) == 0, "A100 profile");
    struct cudaDeviceProp prop;
    EXPECT(cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.sharedMemPerBlockOptin == (size_t)163 * 1024 &&
               prop.major == 8 && prop.multiProcessorCount == 108,
           "A100 properties: opt-in %zu, sm_%d%d, %d SMs", prop.sharedMemPerBlockOptin, prop.major, prop.minor,
           prop.multiProcessorCount);
    EU_LAUNCH(st_big_dynamic(out, 163 * 256, 1)); /* exactly the opt-in: no static shared memory */
    EXPECT(st_big_dynamic(out, 163 * 256 + 1, 1) == cudaErrorInvalidValue, "A100: opt-in past 163 KiB granted");
    EXPECT(cc_cpu_set_device_profile(CC_CPU_DEVICE_H200) == 0, "H200 profile");
    EU_LAUNCH(st_big_dynamic(out, 200 * 256, 1)); /* granted on the H200 ... */
    EXPECT(cc_cpu_set_device_profile(CC_CPU_DEVICE_A100) == 0, "A100 profile");
    EXPECT(st_big_dynamic(out, 200 * 256, 0) == cudaErrorInvalidValue, "A100: 200 KiB launched"); /* ... not here */
    EXPECT(cc_cpu_set_device_profile(CC_CPU_DEVICE_H200) == 0, "H200 profile");
    cudaFree(out);
}

/* --- wrong kernels, in child processes ------------------------------------------------------------ */
static int scenario(const char *name)
{
    float *x = dev(1024 * sizeof(float)), *out = dev(1024 * sizeof(float));
    static const float zeros[1024];
    to_dev(x, zeros, sizeof zeros);
    if (strcmp(name, "host_pointer") == 0) {
        static float host[64];
        return st_wrong(ST_MISSING_BARRIER, x, host, 0);
    }
    if (strcmp(name, "global_overrun") == 0 || strcmp(name, "global_underrun") == 0) {
        /* 16 floats; the kernel writes 32 from index 0 (past the end) or from -32 (before the start). */
        float *small = dev(16 * sizeof(float));
        const cudaError_t err = st_wrong(ST_GLOBAL_OVERRUN, NULL, small, name[7] == 'o' ? 0 : -32);
        if (err != cudaSuccess) return err;
        return cudaFree(small);
    }
    if (strncmp(name, "pipeline_", 9) == 0) {
        static const char *modes[] = {"pipeline_right",      "pipeline_stale",      "pipeline_unwaited",
                                      "pipeline_misaligned", "pipeline_global_dst", "pipeline_no_barrier"};
        for (int m = 0; m < 6; ++m)
            if (strcmp(name, modes[m]) == 0) {
                const cudaError_t err = st_pipeline(x, out, m);
                if (err != cudaSuccess) return err;
                return cudaDeviceSynchronize();
            }
    }
    if (strcmp(name, "handoff_race") == 0) {
        unsigned *flag = dev(sizeof(unsigned));
        return st_handoff(x, flag, out, 0);
    }
    if (strcmp(name, "handoff_ordered") == 0) {
        unsigned *flag = dev(sizeof(unsigned));
        to_dev(flag, zeros, sizeof(unsigned));
        return st_handoff(x, flag, out, 1);
    }
    static const struct {
        const char *name;
        int which, n;
    } wrong[] = {{"misaligned_ldg", ST_MISALIGNED_LDG, 0},
                 {"misaligned_plain", ST_MISALIGNED_PLAIN, 0},
                 {"divergent_barrier", ST_DIVERGENT_BARRIER, 0},
                 {"early_return", ST_EARLY_RETURN, 40},
                 {"deadlock", ST_DEADLOCK, 0},
                 {"shuffle_outside_mask", ST_SHUFFLE_OUTSIDE_MASK, 0},
                 {"partial_warp", ST_PARTIAL_WARP, 0},
                 {"spin", ST_SPIN, 0},
                 {"shared_overrun", ST_SHARED_OVERRUN, 37},
                 {"missing_barrier", ST_MISSING_BARRIER, 0},
                 {"warp_order_shuffle", ST_WARP_ORDER_SHUFFLE, 0},
                 {"warp_order_syncwarp", ST_WARP_ORDER_SYNCWARP, 0},
                 {"wmma_misaligned", ST_WMMA_MISALIGNED, 0},
                 {"wmma_tf32_unrounded", ST_WMMA_TF32_UNROUNDED, 0}};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; ++i)
        if (strcmp(name, wrong[i].name) == 0) return st_wrong(wrong[i].which, x, out, wrong[i].n);
    fprintf(stderr, "unknown scenario %s\n", name);
    return 2;
}

/* Runs this program on one scenario; its output must contain `expect` and it
 * must fail (or, with expect NULL, succeed quietly). */
static void expect_child(const char *name, const char *expect)
{
    static char output[1 << 16];
    char *args[] = {(char *)"--scenario", (char *)name, NULL};
    int status = 0;
    setenv("CC_CPU_WATCHDOG_SECONDS", "3", 1);
    /* TSan children need only the report's kind: symbolizing it (an
     * llvm-symbolizer process) took longer than the 3 s watchdog on a loaded
     * 2-core CI machine, which then reported the stalled block instead. */
    const char *tsan_options = getenv("TSAN_OPTIONS");
    char *saved_tsan = tsan_options ? strdup(tsan_options) : NULL;
    if (ST_TSAN) {
        char options[512];
        snprintf(options, sizeof options, "%s%ssymbolize=0", saved_tsan ? saved_tsan : "",
                 saved_tsan && *saved_tsan ? ":" : "");
        setenv("TSAN_OPTIONS", options, 1);
    }
    const int ran = eu_run_self(args, output, sizeof output, &status);
    unsetenv("CC_CPU_WATCHDOG_SECONDS");
    if (ST_TSAN) {
        if (saved_tsan)
            setenv("TSAN_OPTIONS", saved_tsan, 1);
        else
            unsetenv("TSAN_OPTIONS");
    }
    free(saved_tsan);
    if (ran != 0) {
        EXPECT(0, "%s: could not run the child", name);
        return;
    }
    const int failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    if (expect == NULL) {
        EXPECT(!failed && strstr(output, "ThreadSanitizer") == NULL, "%s: should run cleanly:\n%s", name, output);
    } else {
        EXPECT(failed && strstr(output, expect) != NULL, "%s: expected a failure saying \"%s\", got status %d:\n%s",
               name, expect, status, output);
    }
    printf("  %-22s %s\n", name, expect ? (failed && strstr(output, expect) ? "caught" : "NOT CAUGHT") : "clean");
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--scenario") == 0) return scenario(argv[2]) == cudaSuccess ? 0 : 3;
    tu_seed_from_env();
    check_warp_ops();
    check_atomics();
    check_unwritten_shared();
    check_half();
    check_wmma();
    check_pipeline();
    check_handoff(0);
    check_handoff(1);
    if (!ST_TSAN) check_store_buffer();
    check_refusals();
    printf("wrong kernels, each in a child process:\n");
    expect_child("misaligned_ldg", "misaligned address");
    expect_child("misaligned_plain", "misaligned address");
    expect_child("divergent_barrier", "divergent __syncthreads");
    expect_child("early_return", "not reached by every thread");
    expect_child("deadlock", "deadlock");
    expect_child("shuffle_outside_mask", "not in the mask");
    expect_child("partial_warp", "do not exist");
    expect_child("spin", "watchdog");
    expect_child("host_pointer", "not device memory");
    expect_child("wmma_misaligned", "not 32-byte aligned");
    expect_child("global_overrun", ST_ASAN ? "use-after-poison" : "guard zone");
    expect_child("global_underrun", ST_ASAN ? "use-after-poison" : "guard zone");
    expect_child("wmma_tf32_unrounded", "not a TF32 value");
    expect_child("pipeline_unwaited", "never waited for");
    expect_child("pipeline_misaligned", "not 16-byte aligned");
    expect_child("pipeline_global_dst", "not in the block's shared memory");
    if (ST_ASAN)
        expect_child("shared_overrun", "use-after-poison");
    else
        printf("  %-22s skipped (ASan builds only)\n", "shared_overrun");
    if (ST_TSAN) {
        expect_child("missing_barrier", "data race");
        expect_child("pipeline_no_barrier", "data race");
        expect_child("warp_order_shuffle", "data race");
        expect_child("warp_order_syncwarp", NULL);
        expect_child("handoff_race", "data race");
        expect_child("handoff_ordered", NULL);
    } else {
        printf("  missing_barrier, warp ordering, races between blocks: skipped (TSan builds only)\n");
    }
    EXPECT(eu_failures == 0, "%d failure(s) of the launches above", eu_failures);
    return tu_finish("test_emu_layer");
}
