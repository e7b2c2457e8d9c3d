// kernels/fused_conv_tc2.cu (second-generation tensor-core fused CondConv,
// a candidate: cp.async double buffering; f16/bf16 and f32 on TF32,
// NCHW/NHWC) on the CPU execution layer, against the double reference of
// bench/dev/fused_reference.h, with gen 1's bounds (the same numerics
// contract): every tile instance (64, 32 and 16 rows: the chooser's pick at
// 1 and at 132 SMs, then every smaller tile, reached by lowering the
// shared-memory limit), edge tiles in channels and columns, N not a
// multiple of the samples per block, samples of 1 to 7 fragments, 1x1
// (strides 1 and 2), 3x3 and 5x5 with padding, stride and dilation, groups,
// E in {1, 2, 3, 5, 6, 8, 17, 32} and the largest gen 2 takes in each dtype
// (64 for f16/bf16, fewer for f32: two expert stages must fit), with and
// without bias, each activation; NHWC through the cp.async input path
// (Cin/g % 8 == 0, x aligned) and the register-prefetch one; y one element
// off alignment; NaN-poisoned outputs and guard zones around y. Where E is
// a multiple of 16 in f16/bf16, every config above is also run with the
// expert mix on tensor cores (cc_fused_tc2_choose_mma_mix: E 16, 32 and 64,
// every tile height, all three input paths), also with alphas of both signs
// spread over 6.5 decades (the per-sample power-of-two scale, f16's range).
// The layer's
// <cuda_pipeline.h> performs a copy only at the wait that covers it, so a
// stage read before its wait reads stale data (NaN at first) and fails here.
// Then the refusals of supported(), choose() and the launcher.
// CC_EMU_STOP_AT_FIRST_FAILURE ends the run at its first failure.
//
// Inputs are drawn, rounded to the dtype, and the same values fed to the
// reference (NHWC transposed on the host). f32 inputs and weights are full
// f32 values (not TF32), so the kernel's TF32 cuts are what is measured.
//
// Tolerance (u = 2^-11 for f16, 2^-8 for bf16; mag = sum |terms| of the
// reference, bias included): the per-sample weights are rounded once to
// the dtype (|dW| <= u |W_n|: u * mag), the output once (u * |y|); the f32
// mixing and accumulation add at most (E + K/16 + 2) * 2^-24 relative to
// sums of magnitudes no larger than a few mag (alpha in [0, 1], E <= 64,
// K/16 <= 25 here: < 1e-5 * mag); one more u * mag of slack for the
// tensor core's own rounding on a GPU; SiLU's slope is at most 1.1:
//   |got - ref| <= 1.1 (2u + 1e-5) mag + u |ref| + 1e-6 (f16 subnormals).
// The tensor-core mix carries each alpha as hi + lo halves of alpha / sc
// (sc a power of two, |alpha / sc| < 1): off by at most 2^-22 (f16, down to
// its subnormals: 2^-25 absolute) or 2^-16 (bf16) of the sample's largest
// |alpha|; with E <= 64 experts of comparable weights that is below the
// 1e-5 mag term for f16, and for bf16 (2^-16 = 1.5e-5 per term, summed
// against mag's own sum of the same terms) inside the spare u mag.
// f32 (TF32 tensor cores): each operand is cut to TF32 as it enters the
// product, the mixed weight W_n (mixed in f32) and the input x: the kernel
// rounds both to nearest (cvt.rna, relative error <= 2^-11; the CPU
// layer's mma stops the run on a non-TF32 operand, where a GPU's tensor
// core would truncate it, <= 2^-10); take the larger, u = 2^-10 per operand. A product
// |w x| (1 + d1)(1 + d2) is off by <= (2u + u^2) |w x|; products are summed
// in f32 (the same (E + K/8 + 2) 2^-24 < 1e-5 relative to mag as above,
// and a GPU's f32 accumulation in the tensor core is no worse than
// 2^-23 per addition, K/8 <= 50 here); the output stays f32 (no rounding
// to storage). SiLU's slope 1.1 again:
//   |got - ref| <= 1.1 (2 * 2^-10 + 1e-5) mag + 1e-6.
// NaN never passes.
//
// Usage: test_fused_conv_tc2 [--quick]   (--quick, and always under
// ThreadSanitizer: fewer shapes; every kernel instance is still launched)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_cpu/hooks.h>

#include "formats.h"
#include "fused_conv.h"
#include "fused_conv_tc.h"
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

const char *dtype_name(int dtype)
{
    return dtype == CC_DTYPE_F16 ? "f16" : dtype == CC_DTYPE_BF16 ? "bf16" : "f32 (TF32)";
}
const char *layout_name(int layout) { return layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC"; }

uint16_t to_bits(int dtype, float v)
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

float from_bits(int dtype, uint16_t b)
{
    if (dtype == CC_DTYPE_F16) {
        __half h;
        memcpy(&h, &b, sizeof b);
        return __half2float(h);
    }
    __nv_bfloat16 h;
    memcpy(&h, &b, sizeof b);
    return __bfloat162float(h);
}

float round_to(int dtype, float v) { return dtype == CC_DTYPE_F32 ? v : from_bits(dtype, to_bits(dtype, v)); }

// Element i of a buffer of the dtype.
void put(int dtype, void *buf, size_t i, float v)
{
    if (dtype == CC_DTYPE_F32)
        static_cast<float *>(buf)[i] = v;
    else
        static_cast<uint16_t *>(buf)[i] = to_bits(dtype, v);
}
float get(int dtype, const void *buf, size_t i)
{
    if (dtype == CC_DTYPE_F32) return static_cast<const float *>(buf)[i];
    return from_bits(dtype, static_cast<const uint16_t *>(buf)[i]);
}

float frand(unsigned int *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

struct shape {
    const char *name;
    int n, cin, cout, groups, e;
    int h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
    int act;
    bool bias;
    int x_offset, y_offset; // elements: one off a 16-byte boundary
    int alpha_kind;         // 0: alpha in [0, 1]; 1: either sign, |alpha| in 1e-4 .. 10^2.5 (log-uniform)
};

int out_size(int in, int k, int s, int d, int p0, int p1) { return (in + p0 + p1 - (k - 1) * d - 1) / s + 1; }

cc_fused_tc_args args_for(const shape &s, int dtype, int layout)
{
    cc_fused_tc_args a;
    memset(&a, 0, sizeof a);
    a.dtype = dtype;
    a.layout = layout;
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

// The reference's argument struct (NCHW, f32 layout of the same layer).
cc_fused_args ref_args(const cc_fused_tc_args &t)
{
    cc_fused_args a;
    memset(&a, 0, sizeof a);
    a.n = t.n;
    a.in_channels = t.in_channels;
    a.out_channels = t.out_channels;
    a.groups = t.groups;
    a.experts = t.experts;
    a.h = t.h;
    a.w = t.w;
    a.out_h = t.out_h;
    a.out_w = t.out_w;
    a.kernel_h = t.kernel_h;
    a.kernel_w = t.kernel_w;
    a.stride_h = t.stride_h;
    a.stride_w = t.stride_w;
    a.dilation_h = t.dilation_h;
    a.dilation_w = t.dilation_w;
    a.pad_top = t.pad_top;
    a.pad_left = t.pad_left;
    a.activation = t.activation;
    return a;
}

constexpr int kGuard = 64;                  // elements of guard zone before and after y
constexpr unsigned char kGuardByte = 0x5a;  // 0x5a5a(5a5a): finite in every dtype
constexpr unsigned char kPoisonByte = 0xff; // 0xffff(ffff): NaN in every dtype

struct tally {
    long long runs = 0, failed = 0, by_tile[3] = {0, 0, 0}, mix_by_tile[3] = {0, 0, 0}, outputs = 0;
    double worst[3] = {0.0, 0.0, 0.0}; // per dtype (f32, f16, bf16): largest |got - ref| / (u mag + u_out |ref|)
};

// One shape in one dtype, both layouts, every tile the chooser picks.
void run_shape(const shape &s, int dtype, unsigned int seed, bool descend, tally *t)
{
    const cc_fused_tc_args a0 = args_for(s, dtype, CC_LAYOUT_NCHW);
    const cc_fused_args ra = ref_args(a0);
    const int cin_g = s.cin / s.groups, taps = s.kh * s.kw;
    const size_t P = (size_t)a0.out_h * a0.out_w, HW = (size_t)s.h * s.w;
    const size_t x_elems = (size_t)s.n * s.cin * HW, y_elems = (size_t)s.n * s.cout * P;
    const size_t w_elems = (size_t)s.e * s.cout * cin_g * taps, b_elems = (size_t)s.e * s.cout;
    const size_t al_elems = (size_t)s.n * s.e;
    const size_t packed_elems = cc_fused_tc_packed_elems(s.cin, s.cout, s.groups, s.kh, s.kw, s.e);
    float *x = (float *)malloc(sizeof(float) * x_elems), *w = (float *)malloc(sizeof(float) * w_elems);
    float *b = (float *)malloc(sizeof(float) * b_elems), *al = (float *)malloc(sizeof(float) * al_elems);
    for (size_t i = 0; i < x_elems; ++i) x[i] = round_to(dtype, frand(&seed));
    for (size_t i = 0; i < w_elems; ++i) w[i] = round_to(dtype, 0.5f * frand(&seed));
    for (size_t i = 0; i < b_elems; ++i) b[i] = frand(&seed);
    for (size_t i = 0; i < al_elems; ++i) {
        if (s.alpha_kind == 0) {
            al[i] = 0.5f * (frand(&seed) + 1.0f);
        } else {
            const float mag10 = 3.25f * frand(&seed) - 0.75f; // -4 .. 2.5
            al[i] = (frand(&seed) < 0.0f ? -1.0f : 1.0f) * powf(10.0f, mag10);
        }
    }
    double *ref = (double *)malloc(sizeof(double) * y_elems), *mag = (double *)malloc(sizeof(double) * y_elems);
    cc_fused_reference(ra, x, w, s.bias ? b : NULL, al, ref, mag);

    const size_t es = cc_element_size(dtype);
    void *packed = malloc(es * packed_elems);
    EXPECT(cc_fused_tc_pack(dtype, w, packed, s.cin, s.cout, s.groups, s.kh, s.kw, s.e), "%s: pack", s.name);
    void *d_packed, *d_alpha, *d_bias, *d_x, *d_y;
    CUDA_OK(cudaMalloc(&d_packed, es * packed_elems));
    CUDA_OK(cudaMalloc(&d_alpha, sizeof(float) * al_elems));
    CUDA_OK(cudaMalloc(&d_bias, sizeof(float) * b_elems));
    CUDA_OK(cudaMalloc(&d_x, es * (x_elems + 8)));
    const size_t y_total = y_elems + 2 * kGuard + 8;
    CUDA_OK(cudaMalloc(&d_y, es * y_total));
    CUDA_OK(cudaMemcpy(d_packed, packed, es * packed_elems, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_alpha, al, sizeof(float) * al_elems, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(d_bias, b, sizeof(float) * b_elems, cudaMemcpyHostToDevice));
    void *hx = malloc(es * x_elems);
    unsigned char *hy = (unsigned char *)malloc(es * y_total);
    // f32: u = 2^-10 per TF32 operand, no rounding of the output (see the top).
    const double u = dtype == CC_DTYPE_F16 ? 1.0 / 2048.0 : dtype == CC_DTYPE_BF16 ? 1.0 / 256.0 : 1.0 / 1024.0;
    const double u_out = dtype == CC_DTYPE_F32 ? 0.0 : u;

    for (int layout = CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout) {
        // x in this layout, one element off alignment where the shape says.
        for (int n = 0; n < s.n; ++n)
            for (int c = 0; c < s.cin; ++c)
                for (size_t px = 0; px < HW; ++px) {
                    const size_t src = ((size_t)n * s.cin + c) * HW + px;
                    const size_t dst = layout == CC_LAYOUT_NCHW ? src : ((size_t)n * HW + px) * s.cin + c;
                    put(dtype, hx, dst, x[src]);
                }
        CUDA_OK(cudaMemcpy((char *)d_x + es * s.x_offset, hx, es * x_elems, cudaMemcpyHostToDevice));
        cc_fused_tc_args a = args_for(s, dtype, layout);
        a.x = (char *)d_x + es * s.x_offset;
        a.y = (char *)d_y + es * (kGuard + s.y_offset);
        a.alpha = (const float *)d_alpha;
        a.expert_bias = s.bias ? (const float *)d_bias : NULL;
        a.packed = d_packed;
        char reason[256];
        EXPECT(cc_fused_tc2_supported(&a, reason, sizeof reason), "%s: unsupported: %s", s.name, reason);
        // The chooser at 1 SM and at 132, then (descend: every other shape,
        // all of them in the quick run) every smaller tile: the shared-memory
        // limit lowered below the last pick's size. The same again with the
        // tensor-core mix where it runs the shape. Chosen on x = NULL, as the
        // library chooses at prepare, and launched on this x, aligned or not
        // (an NHWC config must run either input path).
        cc_fused_tc_args a_prep = a;
        a_prep.x = NULL;
        const bool mix_ok = cc_fused_tc2_mma_mix_supported(&a, reason, sizeof reason) != 0;
        EXPECT(mix_ok == (dtype != CC_DTYPE_F32 && s.e % 16 == 0), "%s %s: tensor-core mix supported %d: %s", s.name,
               dtype_name(dtype), (int)mix_ok, reason);
        cc_fused_tc_config cfgs[8] = {};
        int count = 0;
        for (int mix = 0; mix <= (mix_ok ? 1 : 0); ++mix) {
            const auto choose = mix ? cc_fused_tc2_choose_mma_mix : cc_fused_tc2_choose;
            const int first = count;
            for (int sms : {1, 132}) {
                cc_fused_tc_config c = {};
                EXPECT(choose(&a_prep, sms, 227 * 1024, &c), "%s: choose", s.name);
                EXPECT(strncmp(c.reason, "gen 2", 5) == 0, "%s: a reason: %s", s.name, c.reason);
                EXPECT(c.mix_mma == mix, "%s: mix_mma %d", s.name, c.mix_mma);
                if (count == first || cfgs[first].tile_m != c.tile_m) cfgs[count++] = c;
            }
            int smallest = 64;
            for (int k = first; k < count; ++k) smallest = cfgs[k].tile_m < smallest ? cfgs[k].tile_m : smallest;
            for (int k = first; k < count && descend; ++k)
                if (cfgs[k].tile_m == smallest) {
                    cc_fused_tc_config c = cfgs[k], d = {};
                    while (count < first + 4 && choose(&a_prep, 1, c.smem_bytes - 1, &d)) {
                        EXPECT(d.tile_m < c.tile_m, "%s: a smaller limit, a smaller tile", s.name);
                        cfgs[count++] = d;
                        c = d;
                    }
                    break;
                }
        }
        for (int ci = 0; ci < count; ++ci) {
            const cc_fused_tc_config &c = cfgs[ci];
            char what[256];
            snprintf(what, sizeof what, "%s %s %s tile %dx%d (<= %d samples)%s", s.name, dtype_name(dtype),
                     layout_name(layout), c.tile_m, c.tile_n, c.samples_cap, c.mix_mma ? ", tensor-core mix" : "");
            const size_t y0 = kGuard + (size_t)s.y_offset;
            memset(hy, kGuardByte, es * y_total);
            memset(hy + es * y0, kPoisonByte, es * y_elems);
            CUDA_OK(cudaMemcpy(d_y, hy, es * y_total, cudaMemcpyHostToDevice));
            // Alternate block orders: a block writing past its tile is
            // overwritten by its neighbour in one order, not in the other.
            cc_cpu_set_block_order((layout + ci) & 1);
            const cudaError_t err = cc_launch_fused_tc2(&a, &c, 0);
            cc_cpu_set_block_order(0);
            EXPECT(err == cudaSuccess, "%s: launch: %s", what, cudaGetErrorString(err));
            CUDA_OK(cudaDeviceSynchronize());
            CUDA_OK(cudaMemcpy(hy, d_y, es * y_total, cudaMemcpyDeviceToHost));
            long long bad = 0;
            for (size_t i = 0; i < es * y_total; ++i) {
                if (i >= es * y0 && i < es * (y0 + y_elems)) continue;
                if (hy[i] != kGuardByte) {
                    if (bad < 3)
                        fprintf(stderr, "  %s: guard byte [%zd] overwritten\n", what, (ssize_t)i - (ssize_t)(es * y0));
                    ++bad;
                }
            }
            for (int n = 0; n < s.n; ++n)
                for (int o = 0; o < s.cout; ++o)
                    for (size_t px = 0; px < P; ++px) {
                        const size_t ri = ((size_t)n * s.cout + o) * P + px;
                        const size_t gi = layout == CC_LAYOUT_NCHW ? ri : ((size_t)n * P + px) * s.cout + o;
                        const double got = get(dtype, hy, y0 + gi);
                        const double tol = 1.1 * (2.0 * u + 1e-5) * mag[ri] + u_out * fabs(ref[ri]) + 1e-6;
                        const double ratio = fabs(got - ref[ri]) / (u * mag[ri] + u_out * fabs(ref[ri]) + 1e-30);
                        if (ratio > t->worst[dtype]) t->worst[dtype] = ratio;
                        if (!(fabs(got - ref[ri]) <= tol)) {
                            if (bad < 3)
                                fprintf(stderr, "  %s: y[n %d][o %d][p %zu] = %.7g, reference %.7g (tol %.3g)\n", what,
                                        n, o, px, got, ref[ri], tol);
                            ++bad;
                        }
                    }
            ++t->runs;
            ++(c.mix_mma ? t->mix_by_tile : t->by_tile)[c.tile_m == 64 ? 0 : c.tile_m == 32 ? 1 : 2];
            t->outputs += (long long)y_elems;
            if (bad) {
                fprintf(stderr, "FAIL fused_tc2: %s: %lld mismatches\n", what, bad);
                ++t->failed;
                failed_once();
            }
        }
    }
    CUDA_OK(cudaFree(d_packed));
    CUDA_OK(cudaFree(d_alpha));
    CUDA_OK(cudaFree(d_bias));
    CUDA_OK(cudaFree(d_x));
    CUDA_OK(cudaFree(d_y));
    free(x);
    free(w);
    free(b);
    free(al);
    free(ref);
    free(mag);
    free(packed);
    free(hx);
    free(hy);
}

// ---------------------------------------------------------------------------
// supported(), choose() and the launcher's refusals.

// The largest E gen 2 takes for this shape and dtype (0 if none).
int largest_e(shape s, int dtype)
{
    for (int e = CC_FUSED_TC2_MAX_EXPERTS; e >= 1; --e) {
        s.e = e;
        const cc_fused_tc_args a = args_for(s, dtype, CC_LAYOUT_NHWC);
        if (cc_fused_tc2_supported(&a, NULL, 0)) return e;
    }
    return 0;
}

// The mixed weight is an f32 sum rounded ONCE to the dtype, also with the
// mix on tensor cores (alpha as hi + lo halves): a probe the tolerance above
// cannot see (alpha cut to the dtype moves W_n by at most u mag, inside the
// bound). 1x1, Cin 1, x = 1, every expert weight 1, no bias: y = W_n =
// sum_e alpha_e, exactly, once rounded. Per sample, 4 of the 16 alphas are
// 2^-4 (1 + 0.95 ulp) and 12 are 2^-4 (1 + 0.45 ulp) (ulp: the dtype's at 1):
// the sum is 1 + 0.575 ulp, which rounds to 1 + ulp; alphas rounded to the
// dtype first (each to the nearer of 2^-4 and 2^-4 (1 + ulp)) sum to
// 1 + 0.25 ulp, which rounds to 1.
void mix_precision_probe()
{
    const shape sh = {"probe", 5, 1, 16, 1, 16, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, false, 0, 0, 0};
    for (int dtype : {CC_DTYPE_F16, CC_DTYPE_BF16}) {
        const double ulp = dtype == CC_DTYPE_F16 ? 1.0 / 1024.0 : 1.0 / 128.0;
        const size_t es = cc_element_size(dtype), y_elems = (size_t)sh.n * sh.cout;
        float w[16 * 16], al[5 * 16];
        for (float &v : w) v = 1.0f;
        for (int n = 0; n < sh.n; ++n)
            for (int e = 0; e < 16; ++e) // which 4 experts get 0.95 ulp moves with the sample
                al[n * 16 + e] = (float)(0.0625 * (1.0 + ((e + 3 * n) % 16 < 4 ? 0.95 : 0.45) * ulp));
        const size_t packed_elems = cc_fused_tc_packed_elems(sh.cin, sh.cout, 1, 1, 1, 16);
        void *packed = malloc(es * packed_elems), *hx = malloc(es * sh.n), *hy = malloc(es * y_elems);
        EXPECT(cc_fused_tc_pack(dtype, w, packed, sh.cin, sh.cout, 1, 1, 1, 16), "probe: pack");
        for (int n = 0; n < sh.n; ++n) put(dtype, hx, (size_t)n, 1.0f);
        void *d_packed, *d_alpha, *d_x, *d_y;
        CUDA_OK(cudaMalloc(&d_packed, es * packed_elems));
        CUDA_OK(cudaMalloc(&d_alpha, sizeof al));
        CUDA_OK(cudaMalloc(&d_x, es * sh.n));
        CUDA_OK(cudaMalloc(&d_y, es * y_elems));
        CUDA_OK(cudaMemcpy(d_packed, packed, es * packed_elems, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(d_alpha, al, sizeof al, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(d_x, hx, es * sh.n, cudaMemcpyHostToDevice));
        for (int layout = CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout)
            for (int mix = 0; mix <= 1; ++mix) {
                cc_fused_tc_args a = args_for(sh, dtype, layout);
                a.x = d_x;
                a.y = d_y;
                a.alpha = (const float *)d_alpha;
                a.packed = d_packed;
                cc_fused_tc_config c = {};
                EXPECT((mix ? cc_fused_tc2_choose_mma_mix : cc_fused_tc2_choose)(&a, 132, 227 * 1024, &c),
                       "probe: choose");
                memset(hy, kPoisonByte, es * y_elems);
                CUDA_OK(cudaMemcpy(d_y, hy, es * y_elems, cudaMemcpyHostToDevice));
                EXPECT(cc_launch_fused_tc2(&a, &c, 0) == cudaSuccess, "probe: launch");
                CUDA_OK(cudaDeviceSynchronize());
                CUDA_OK(cudaMemcpy(hy, d_y, es * y_elems, cudaMemcpyDeviceToHost));
                int bad = 0;
                for (size_t i = 0; i < y_elems; ++i) {
                    const double got = get(dtype, hy, i);
                    if (!(got == 1.0 + ulp)) {
                        if (bad < 3)
                            fprintf(stderr, "  probe %s %s%s: y[%zu] = %.9g, expected %.9g (1 + ulp)\n",
                                    dtype_name(dtype), layout_name(layout), mix ? " tensor-core mix" : "", i, got,
                                    1.0 + ulp);
                        ++bad;
                    }
                }
                EXPECT(bad == 0, "probe %s %s%s: %d of %zu mixed weights not the sum rounded once", dtype_name(dtype),
                       layout_name(layout), mix ? " tensor-core mix" : "", bad, y_elems);
            }
        CUDA_OK(cudaFree(d_packed));
        CUDA_OK(cudaFree(d_alpha));
        CUDA_OK(cudaFree(d_x));
        CUDA_OK(cudaFree(d_y));
        free(packed);
        free(hx);
        free(hy);
    }
    printf("mix precision probe: done\n");
}

void refusals()
{
    const shape s = {"refusals", 2, 16, 16, 1, 4, 4, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, true, 0, 0, 0};
    const cc_fused_tc_args a = args_for(s, CC_DTYPE_F16, CC_LAYOUT_NCHW);
    char reason[256];
    EXPECT(cc_fused_tc2_supported(&a, reason, sizeof reason) == 1, "plain 1x1: %s", reason);
    EXPECT(reason[0] == '\0', "no reason when supported: %s", reason);
    cc_fused_tc_args b = a;
    b.groups = 16; // depthwise: gen 1's refusal, passed on
    EXPECT(cc_fused_tc2_supported(&b, reason, sizeof reason) == 0 && strncmp(reason, "gen 2", 5) == 0 &&
               strstr(reason, "depthwise"),
           "depthwise: %s", reason);
    b = a;
    b.dtype = 7;
    EXPECT(cc_fused_tc2_supported(&b, reason, sizeof reason) == 0 && strstr(reason, "dtype"), "dtype 7: %s", reason);
    b = a;
    b.layout = 2;
    EXPECT(cc_fused_tc2_supported(&b, reason, sizeof reason) == 0 && strstr(reason, "layout"), "layout 2: %s", reason);
    b = a;
    b.experts = CC_FUSED_TC2_MAX_EXPERTS + 1; // gen 1 takes it, gen 2 not
    EXPECT(cc_fused_tc_supported(&b, NULL, 0) == 1, "gen 1 takes E %d", b.experts);
    EXPECT(cc_fused_tc2_supported(&b, reason, sizeof reason) == 0 && strncmp(reason, "gen 2", 5) == 0 &&
               strstr(reason, "experts"),
           "E 65: %s", reason);
    b.experts = CC_FUSED_TC2_MAX_EXPERTS;
    EXPECT(cc_fused_tc2_supported(&b, reason, sizeof reason) == 1, "f16 E 64: %s", reason);
    b.dtype = CC_DTYPE_BF16;
    EXPECT(cc_fused_tc2_supported(&b, reason, sizeof reason) == 1, "bf16 E 64: %s", reason);
    b.dtype = CC_DTYPE_F32; // f32's stages are twice as large: refused with the reason
    EXPECT(cc_fused_tc2_supported(&b, reason, sizeof reason) == 0 && strstr(reason, "shared memory"), "f32 E 64: %s",
           reason);
    cc_fused_tc_config c;
    EXPECT(cc_fused_tc2_choose(&b, 132, 227 * 1024, &c) == 0, "choose of f32 E 64");
    const int e32 = largest_e(s, CC_DTYPE_F32);
    EXPECT(e32 >= 32 && e32 < CC_FUSED_TC2_MAX_EXPERTS, "largest f32 E %d", e32);
    b.experts = e32;
    EXPECT(cc_fused_tc2_supported(&b, reason, sizeof reason) == 1, "f32 E %d: %s", e32, reason);
    EXPECT(cc_fused_tc2_choose(&b, 132, 227 * 1024, &c) == 1 && c.tile_m == 16 && c.smem_bytes <= 113 * 1024,
           "f32 E %d: 16-row tiles in 113 KiB (%d rows, %zu bytes)", e32, c.tile_m, c.smem_bytes);
    b = a;
    b.stride_h = 0;
    EXPECT(cc_fused_tc2_supported(&b, NULL, 0) == 0, "stride 0, no reason buffer");
    EXPECT(cc_fused_tc2_supported(NULL, reason, sizeof reason) == 0, "NULL args");
    EXPECT(cc_fused_tc2_choose(&b, 132, 227 * 1024, &c) == 0, "choose of an unsupported shape");
    EXPECT(cc_fused_tc2_choose(&a, 132, 227 * 1024, NULL) == 0, "choose into NULL");

    // The launcher refuses configs that do not match the shape, and NULL or
    // misaligned pointers, before touching anything.
    void *d_buf;
    CUDA_OK(cudaMalloc(&d_buf, 1 << 16));
    cc_fused_tc_args l = a;
    l.x = d_buf;
    l.y = (char *)d_buf + 4096;
    l.alpha = (const float *)(void *)((unsigned char *)d_buf + 8192);
    l.packed = (char *)d_buf + 16384;
    EXPECT(cc_fused_tc2_choose(&l, 132, 1024, &c) == 0, "nothing fits 1 KiB");
    EXPECT(cc_fused_tc2_choose(&l, 132, 227 * 1024, &c), "choose");
    EXPECT(c.smem_bytes <= 113 * 1024, "two blocks per SM: %zu bytes", c.smem_bytes);
    cc_fused_tc_config wrong = c;
    wrong.samples_cap += 1;
    EXPECT(cc_launch_fused_tc2(&l, &wrong, 0) == cudaErrorInvalidValue, "samples_cap mismatch");
    wrong = c;
    wrong.tile_m = 48;
    EXPECT(cc_launch_fused_tc2(&l, &wrong, 0) == cudaErrorInvalidValue, "no such tile");
    wrong = c;
    wrong.tile_n = 128;
    EXPECT(cc_launch_fused_tc2(&l, &wrong, 0) == cudaErrorInvalidValue, "no such tile width");
    wrong = c;
    wrong.smem_bytes += 128;
    EXPECT(cc_launch_fused_tc2(&l, &wrong, 0) == cudaErrorInvalidValue, "smem mismatch");
    wrong = c;
    wrong.tile_m = c.tile_m == 16 ? 32 : 16; // a tile, but not the one the smem size is for
    EXPECT(cc_launch_fused_tc2(&l, &wrong, 0) == cudaErrorInvalidValue, "tile/smem mismatch");
    cc_fused_tc_args m = l;
    m.packed = (const char *)l.packed + 2;
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaErrorInvalidValue, "misaligned packed experts");
    m = l;
    m.packed = (const char *)l.packed + 32; // 16-byte aligned is enough (cp.async of 16 bytes)
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaSuccess, "packed 32 bytes on");
    CUDA_OK(cudaDeviceSynchronize());
    m = l;
    m.x = (const char *)l.x + 1;
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaErrorInvalidValue, "x one byte off");
    m = l;
    m.y = NULL;
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaErrorInvalidValue, "NULL y");
    m = l;
    m.alpha = NULL;
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaErrorInvalidValue, "NULL alpha");
    m = l;
    m.dtype = CC_DTYPE_F32; // f16 config: tiles of 2-byte elements, so the smem size differs
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaErrorInvalidValue, "f32 with an f16 config");
    EXPECT(cc_fused_tc2_choose(&m, 132, 227 * 1024, &c), "choose f32");
    m.y = (char *)l.y + 2; // f32 y must be 4-byte aligned
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaErrorInvalidValue, "f32 y 2 bytes off");
    EXPECT(cc_fused_tc2_choose(&l, 132, 227 * 1024, &c), "choose");
    m = l;
    m.groups = 16;
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaErrorInvalidValue, "depthwise");
    m = l;
    m.experts = CC_FUSED_TC2_MAX_EXPERTS + 1;
    EXPECT(cc_launch_fused_tc2(&m, &c, 0) == cudaErrorInvalidValue, "E past gen 2's limit");
    EXPECT(cc_launch_fused_tc2(&l, NULL, 0) == cudaErrorInvalidValue, "NULL config");

    // The tensor-core mix: f16/bf16 with E a multiple of 16, its configs only for it.
    cc_fused_tc_args x = l;
    x.experts = 8;
    EXPECT(cc_fused_tc2_mma_mix_supported(&x, reason, sizeof reason) == 0 && strstr(reason, "multiple of 16"),
           "mix E 8: %s", reason);
    EXPECT(cc_fused_tc2_choose_mma_mix(&x, 132, 227 * 1024, &c) == 0, "choose mix E 8");
    x.experts = 16;
    EXPECT(cc_fused_tc2_mma_mix_supported(&x, reason, sizeof reason) == 1 && reason[0] == '\0', "mix E 16: %s", reason);
    x.dtype = CC_DTYPE_F32;
    EXPECT(cc_fused_tc2_mma_mix_supported(&x, reason, sizeof reason) == 0 && strstr(reason, "f16/bf16"), "mix f32: %s",
           reason);
    x.dtype = CC_DTYPE_BF16;
    x.experts = CC_FUSED_TC2_MAX_EXPERTS;
    EXPECT(cc_fused_tc2_mma_mix_supported(&x, reason, sizeof reason) == 1, "mix bf16 E 64: %s", reason);
    EXPECT(cc_fused_tc2_choose_mma_mix(&x, 132, 227 * 1024, &c) == 1 && c.mix_mma == 1 && c.tile_m == 16 &&
               strstr(c.reason, "mix on tensor cores"),
           "mix bf16 E 64: %d rows, %s", c.tile_m, c.reason);
    x.experts = 16;
    x.dtype = CC_DTYPE_F16;
    EXPECT(cc_fused_tc2_choose_mma_mix(&x, 132, 227 * 1024, &c) == 1, "choose mix E 16");
    EXPECT(cc_launch_fused_tc(&x, &c, 0) == cudaErrorInvalidValue, "gen 1 refuses a mix config");
    wrong = c;
    wrong.mix_mma = 2;
    EXPECT(cc_launch_fused_tc2(&x, &wrong, 0) == cudaErrorInvalidValue, "mix_mma 2");
    wrong.mix_mma = 0; // the mix's smem size (alpha rows, scratch) is not the plain mix's
    EXPECT(cc_launch_fused_tc2(&x, &wrong, 0) == cudaErrorInvalidValue, "mix/smem mismatch");
    cc_fused_tc_args y = x;
    y.experts = 24;
    EXPECT(cc_launch_fused_tc2(&y, &c, 0) == cudaErrorInvalidValue, "mix config, E 24");
    EXPECT(cc_launch_fused_tc2(&x, &c, 0) == cudaSuccess, "mix E 16 launches");
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaFree(d_buf));
}

} // namespace

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FUSED_TC2_TEST_TSAN 1
#endif
#endif
#ifndef FUSED_TC2_TEST_TSAN
#define FUSED_TC2_TEST_TSAN 0
#endif

int main(int argc, char **argv)
{
    const bool quick = FUSED_TC2_TEST_TSAN || (argc > 1 && strcmp(argv[1], "--quick") == 0);
    setvbuf(stdout, NULL, _IOLBF, 0); // progress visible in a log even when a run is cut off
    // name, N, Cin, Cout, groups, E (0: the largest gen 2 takes in the dtype), H, W, kh, kw, sh, sw, dh, dw,
    // pad t l b r, act, bias, x/y offsets (elements)
    const shape shapes[] = {
        // The tensor-core mix's shapes first (where an injected bug in it is caught soonest); two, so that
        // the quick run's every-other-shape keeps its old selection below.
        // Tensor-core mix, E 16: Mg 112 (64-row tiles, an edge tile of 48), Cin 40, x and y off alignment
        // (the NHWC register path), N 5 not a multiple of 4, relu.
        {"1x1 E16 off", 5, 40, 112, 1, 16, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, true, 1, 1, 0},
        // E 32, 3x3 stride 2 (P = 9: blocks straddle samples), no bias.
        {"3x3 s2 E32", 3, 16, 48, 1, 32, 6, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, false, 0, 0, 0},
        // P = 16 (one fragment per sample: 4 samples per block), N = 5 not a multiple; Mg 40; cp.async NHWC.
        {"1x1 P16 E8", 5, 24, 40, 1, 8, 4, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 0, 0, 0},
        // 1x1 stride 2 (7x7 -> 4x4), Cin 19 (not a multiple of 16), Mg 70 (edge tile), E 3, x misaligned.
        {"1x1 s2 Cin19", 3, 19, 70, 1, 3, 7, 7, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1, true, 1, 0, 0},
        // 3x3 grouped (g 2, Mg 48), P = 63 (4 fragments), both offsets off (register path everywhere).
        {"3x3 g2 P63 off", 2, 32, 96, 2, 6, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, true, 1, 1, 0},
        // P = 49 (4 fragments, 15 padded columns), E = 1, no bias, y misaligned.
        {"1x1 7x7 E1", 6, 33, 36, 1, 1, 7, 7, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, false, 0, 1, 0},
        // 3x3 grouped (g 2, Mg 48, Cin/g 16: cp.async NHWC), P = 90, E 6.
        {"3x3 g2 P90", 2, 32, 96, 2, 6, 9, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, true, 0, 0, 0},
        // 3x3 "same", P = 30 (2 fragments: blocks straddle samples), relu.
        {"3x3 pad1", 3, 20, 48, 1, 4, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, true, 1, 1, 0},
        // The largest E (0), 3x3 stride 2 dilation 2, asymmetric padding, Cin 16 (cp.async NHWC), silu.
        {"3x3 s2 d2 Emax", 5, 16, 24, 1, 0, 9, 7, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1, 2, true, 0, 0, 0},
        // 5x5 stride 2 dilation 2, asymmetric padding, E = 17, silu.
        {"5x5 s2 d2 asym", 3, 12, 20, 1, 17, 11, 9, 5, 5, 2, 2, 2, 2, 2, 2, 2, 1, 2, true, 0, 0, 0},
        // 3x3 stride 2, groups 4 (Cin/g = 16), E = 32.
        {"3x3 s2 g4 E32", 2, 64, 64, 4, 32, 8, 8, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 0, true, 0, 0, 0},
        // Groups 3, Mg = 5, P = 1: 4 samples per block, 10 column blocks.
        {"1x1 P1 g3", 40, 12, 15, 3, 5, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 1, 1, 0},
        // Mg 112: 64-row tiles with an edge tile of 48; E = 2, Cin 8 (cp.async NHWC, one valid chunk of two).
        {"1x1 Cout112", 2, 8, 112, 1, 2, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, true, 0, 0, 0},
        // 5x5 pad 2, N = 1, P = 100 (7 fragments, 2 column blocks), Mg 64, E 3.
        {"5x5 pad2 N1", 1, 16, 64, 1, 3, 10, 10, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 0, true, 0, 0, 0},
        // Tensor-core mix, E 16 with alphas of both signs over 6.5 decades (caller-given routing), 1x1,
        // Cin 24 (cp.async NHWC), Mg 64, silu.
        {"1x1 E16 wide a", 3, 24, 64, 1, 16, 6, 6, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, true, 0, 0, 1},
    };
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    mix_precision_probe();
    tally t;
    for (int i = 0; i < count; ++i) {
        if (quick && i % 2 == 1) continue;
        for (int dtype : {CC_DTYPE_F16, CC_DTYPE_BF16, CC_DTYPE_F32}) {
            // The tensor-core mix's own shapes (the first two and the last): f32 has no tensor-core mix.
            if ((i < 2 || i == count - 1) && dtype == CC_DTYPE_F32) continue;
            shape s = shapes[i];
            if (s.e == 0) {
                s.e = largest_e(s, dtype);
                EXPECT(s.e >= 32, "%s %s: largest E %d", s.name, dtype_name(dtype), s.e);
                printf("%-16s %s: E = %d, the largest gen 2 takes\n", s.name, dtype_name(dtype), s.e);
            }
            run_shape(s, dtype, 100u + (unsigned int)i, i % 2 == 0, &t);
        }
        printf("%-16s done: %lld runs so far, %lld failed\n", shapes[i].name, t.runs, t.failed);
    }
    refusals();
    printf("fused_conv_tc2: %lld runs (tiles 64x64 %lld, 32x64 %lld, 16x64 %lld; with the tensor-core mix %lld, %lld, "
           "%lld; %lld outputs checked, largest error "
           "%.2f u (mag + |ref|) f16, %.2f bf16, %.2f u mag f32 (u = 2^-10)), %lld failed, %d failures in all\n",
           t.runs, t.by_tile[0], t.by_tile[1], t.by_tile[2], t.mix_by_tile[0], t.mix_by_tile[1], t.mix_by_tile[2],
           t.outputs, t.worst[CC_DTYPE_F16], t.worst[CC_DTYPE_BF16], t.worst[CC_DTYPE_F32], t.failed, g_failures);
    const int unlaunched = cc_cpu_report_unlaunched("fused_conv_tc2");
    EXPECT(unlaunched == 0, "%d kernel instances never launched", unlaunched);
    return g_failures == 0 ? 0 : 1;
}
