/* kernels/backward_wgrad.cu on the CPU execution layer, against a reference
 * written here in double from the dtype-rounded inputs, on fresh random
 * inputs (the seed is printed; CONDCONV_TEST_SEED replays it):
 *   cc_launch_bwd_wgrad in f32/f16/bf16, NCHW/NHWC; odd sizes; stride 1
 *   and 2; dilation 1 and 2 (and dh != dw); padding 0, 1, asymmetric
 *   (pad_top != pad_left, top != bottom) and negative (a crop); groups 1,
 *   2 and depthwise (Cin = Cout = groups); kernels 1x1, 3x3 and 5x3; E 1,
 *   3, 8, 9 (two expert chunks) and 32; tiles partial in co, r and the
 *   pixel chunks, 2 x 2 tiles and 3 r tiles; N = 1 (one batch split:
 *   d_experts written directly), N = 2 to 5 (one sample a split) and
 *   N = 265 (2 samples a split); with and without bias/dysum; d_experts
 *   only (with no scratch where one split needs none), d_alpha only, both.
 * Every output and scratch is poisoned (NaN) before every run, so an
 * element not written fails; NaN never passes. Every case runs twice: in
 * block index order under the case's grid cap (the split-reduce and
 * d_alpha-finish kernels' grid-stride loops), then with the blocks reversed
 * under a cap of 4; the two results must be bitwise identical. Bad
 * arguments must be refused with cudaErrorInvalidValue, launch nothing and
 * write nothing. Every kernel instance must have been launched.
 *
 * Tolerances: the inputs are exact in every dtype (drawn rounded to it) and
 * the reference uses the same values, so the only error is the kernels' f32
 * arithmetic. A sum of terms in a fixed tree of depth d errs by at most
 * d * u * sum|term| (u = 2^-24, first order), and a product of such a sum
 * by an exact factor keeps the bound relative to sum|factor x term|.
 *   - d_experts[e][co][r] = sum_b alpha[b][e] sum_p dy x: depth P (a
 *     thread's FMA chain over the sample's pixels) + 1 (alpha's product,
 *     fused into the chain over the split's samples) + at most N (that
 *     chain) + at most N (the splits in order): P + 2 N + 8, against
 *     sum_b |alpha| sum_p |dy x|;
 *   - d_alpha[b][e] = <experts[e], G_b> + <bias_e, dysum_b>: depth P (G) +
 *     4 (a thread's 4 products) + 5 (the warp's xor tree) + 8 (the warps in
 *     order) + the tiles in order + the bias term's lane chain
 *     (ceil(Cout / 32)) and warp tree (5) + 1:
 *     P + tiles + ceil(Cout / 32) + 64, against sum |w| sum_p |dy x| +
 *     sum |bias dysum|. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "backward_wgrad.h"
#include "emu_dtype.h"
#include "emu_util.h"

static int cases, launches;

static long long wgrad_launches(void) { return cc_cpu_launch_count("bwd_wgrad_"); }

/* A convolution: its args plus the bottom and right padding (out_h, out_w
 * follow from them). */
typedef struct wg_shape {
    int n, cin, h, w, cout, groups, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, e;
} wg_shape;

static cc_wgrad_args args_of(int dtype, int layout, const wg_shape *s)
{
    cc_wgrad_args a;
    memset(&a, 0, sizeof a);
    a.dtype = dtype;
    a.layout = layout;
    a.n = s->n;
    a.cin = s->cin;
    a.h = s->h;
    a.w = s->w;
    a.cout = s->cout;
    a.groups = s->groups;
    a.kernel_h = s->kh;
    a.kernel_w = s->kw;
    a.stride_h = s->sh;
    a.stride_w = s->sw;
    a.dilation_h = s->dh;
    a.dilation_w = s->dw;
    a.pad_top = s->pt;
    a.pad_left = s->pl;
    a.out_h = (s->h + s->pt + s->pb - s->dh * (s->kh - 1) - 1) / s->sh + 1;
    a.out_w = (s->w + s->pl + s->pr - s->dw * (s->kw - 1) - 1) / s->sw + 1;
    a.e = s->e;
    return a;
}

static const char *layout_name(int layout) { return layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC"; }

static size_t act_index(int layout, int c_count, int h, int w, int b, int c, int y, int x)
{
    return layout == CC_LAYOUT_NCHW ? (((size_t)b * c_count + c) * h + y) * w + x
                                    : (((size_t)b * h + y) * w + x) * c_count + c;
}

/* The tiles of d_alpha's partials (groups x co tiles of 32 x r tiles of 32):
 * the depth of their sum. */
static long long tiles_of(const cc_wgrad_args *a)
{
    const long long m = a->cout / a->groups, r = (long long)a->cin / a->groups * a->kernel_h * a->kernel_w;
    return a->groups * ((m + 31) / 32) * ((r + 31) / 32);
}

/* outputs: 1 d_experts, 2 d_alpha, 3 both. */
static void wgrad_case(int dtype, int layout, const wg_shape *s, int outputs, int bias, int cap)
{
    const cc_wgrad_args a = args_of(dtype, layout, s);
    const int cpg = s->cin / s->groups, m = s->cout / s->groups, khw = s->kh * s->kw, r_len = cpg * khw;
    const int oh = a.out_h, ow = a.out_w, pixels = oh * ow;
    const size_t x_n = (size_t)s->n * s->cin * s->h * s->w, dy_n = (size_t)s->n * s->cout * pixels;
    const size_t w_n = (size_t)s->e * s->cout * r_len, ne = (size_t)s->n * s->e, g_n = (size_t)s->cout * r_len;
    float *x = ed_random(dtype, x_n, -1.0f, 1.0f), *dy = ed_random(dtype, dy_n, -1.0f, 1.0f);
    float *wts = ed_random(dtype, w_n, -1.0f, 1.0f), *alpha = eu_random(ne, 0.0f, 1.0f);
    float *hb = eu_random((size_t)s->e * s->cout, -1.0f, 1.0f), *hs = eu_random((size_t)s->n * s->cout, -1.0f, 1.0f);
    ed_buffer dx = ed_buffer_of(dtype, x, x_n, 0), ddy = ed_buffer_of(dtype, dy, dy_n, 0);
    ed_buffer dwts = ed_buffer_of(dtype, wts, w_n, 0);
    eu_buffer da = eu_buffer_make(ne, 0), db = eu_buffer_make((size_t)s->e * s->cout, 0);
    eu_buffer ds = eu_buffer_make((size_t)s->n * s->cout, 0);
    eu_upload(&da, alpha);
    eu_upload(&db, hb);
    eu_upload(&ds, hs);
    const size_t scratch_n = cc_bwd_wgrad_scratch_elems(&a);
    EU_EXPECT(scratch_n >= 1, "scratch of %zu floats", scratch_n);
    eu_buffer sc = eu_buffer_make(scratch_n, 0), odw = eu_buffer_make(w_n, 0), oda = eu_buffer_make(ne, 0);

    /* The reference: G_b and sum |dy x| per (co, r), folded per sample. */
    double *want_dw = eu_doubles(w_n), *mag_dw = eu_doubles(w_n), *want_da = eu_doubles(ne), *mag_da = eu_doubles(ne);
    double *gb = eu_doubles(g_n), *gm = eu_doubles(g_n);
    memset(want_dw, 0, w_n * sizeof *want_dw);
    memset(mag_dw, 0, w_n * sizeof *mag_dw);
    for (int b = 0; b < s->n; ++b) {
        for (int co = 0; co < s->cout; ++co) {
            const int g = co / m;
            for (int ci = 0; ci < cpg; ++ci)
                for (int i = 0; i < s->kh; ++i)
                    for (int j = 0; j < s->kw; ++j) {
                        double sum = 0.0, mag = 0.0;
                        for (int y = 0; y < oh; ++y)
                            for (int xx = 0; xx < ow; ++xx) {
                                const int ih = y * s->sh - s->pt + i * s->dh, iw = xx * s->sw - s->pl + j * s->dw;
                                if (ih < 0 || ih >= s->h || iw < 0 || iw >= s->w) continue;
                                const double v =
                                    (double)dy[act_index(layout, s->cout, oh, ow, b, co, y, xx)] *
                                    (double)x[act_index(layout, s->cin, s->h, s->w, b, g * cpg + ci, ih, iw)];
                                sum += v;
                                mag += fabs(v);
                            }
                        const size_t k = (size_t)co * r_len + ((size_t)ci * s->kh + i) * s->kw + j;
                        gb[k] = sum;
                        gm[k] = mag;
                    }
        }
        for (int q = 0; q < s->e; ++q) {
            const double al = alpha[(size_t)b * s->e + q];
            double sum = 0.0, mag = 0.0;
            for (size_t k = 0; k < g_n; ++k) {
                const double wv = wts[(size_t)q * g_n + k];
                want_dw[(size_t)q * g_n + k] += al * gb[k];
                mag_dw[(size_t)q * g_n + k] += fabs(al) * gm[k];
                sum += wv * gb[k];
                mag += fabs(wv) * gm[k];
            }
            if (bias)
                for (int c = 0; c < s->cout; ++c) {
                    const double v = (double)hb[(size_t)q * s->cout + c] * (double)hs[(size_t)b * s->cout + c];
                    sum += v;
                    mag += fabs(v);
                }
            want_da[(size_t)b * s->e + q] = sum;
            mag_da[(size_t)b * s->e + q] = mag;
        }
    }

    /* d_experts only with one batch split needs no scratch: pass none. */
    const int need_dw = outputs & 1, need_da = (outputs & 2) != 0;
    const int no_scratch = !need_da && scratch_n == (size_t)(tiles_of(&a) * s->n * s->e);
    char what[300];
    snprintf(what, sizeof what,
             "wgrad %s %s N=%d Cin=%d %dx%d Cout=%d groups=%d k=%dx%d s=%d,%d d=%d,%d pad=%d,%d,%d,%d E=%d "
             "outputs=%d bias=%d scratch=%d cap=%d",
             ed_name(dtype), layout_name(layout), s->n, s->cin, s->h, s->w, s->cout, s->groups, s->kh, s->kw, s->sh,
             s->sw, s->dh, s->dw, s->pt, s->pb, s->pl, s->pr, s->e, outputs, bias, !no_scratch, cap);
    float *got_dw[2] = {NULL, NULL}, *got_da[2] = {NULL, NULL};
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        eu_poison(&odw);
        eu_poison(&oda);
        eu_poison(&sc);
        eu_run_setup(rep, cap);
        const long long before = wgrad_launches();
        EU_LAUNCH(cc_launch_bwd_wgrad(&a, dx.data, ddy.data, need_da ? dwts.data : NULL, da.data, bias ? db.data : NULL,
                                      bias ? ds.data : NULL, need_dw ? odw.data : NULL, need_da ? oda.data : NULL,
                                      no_scratch ? NULL : sc.data, NULL));
        launches += (int)(wgrad_launches() - before);
        eu_run_reset();
        got_dw[rep] = eu_fetch(&odw);
        got_da[rep] = eu_fetch(&oda);
    }
    if (need_dw) {
        const double depth = (double)(pixels + 2 * s->n + 8);
        eu_compare(what, got_dw[0], want_dw, mag_dw, w_n, 1e-30, depth * EU_U);
        eu_expect_same_bits(what, "d_experts", got_dw[0], got_dw[1], w_n);
    } else {
        EU_EXPECT(eu_all_nan(got_dw[0], w_n), "%s: d_experts written though not asked for", what);
    }
    if (need_da) {
        const long long cout_lanes = (s->cout + 31) / 32; /* the bias term's chains over Cout, a lane each */
        const double depth = (double)(pixels + tiles_of(&a) + cout_lanes + 64);
        eu_compare(what, got_da[0], want_da, mag_da, ne, 1e-30, depth * EU_U);
        eu_expect_same_bits(what, "d_alpha", got_da[0], got_da[1], ne);
    } else {
        EU_EXPECT(eu_all_nan(got_da[0], ne), "%s: d_alpha written though not asked for", what);
    }
    eu_guards_intact(&odw, what);
    eu_guards_intact(&oda, what);
    eu_guards_intact(&sc, "scratch");
    ed_guards_intact(&dx, what);
    ed_guards_intact(&ddy, what);
    ed_guards_intact(&dwts, what);
    for (int rep = 0; rep < 2; ++rep) {
        free(got_dw[rep]);
        free(got_da[rep]);
    }
    free(want_dw);
    free(mag_dw);
    free(want_da);
    free(mag_da);
    free(gb);
    free(gm);
    free(x);
    free(dy);
    free(wts);
    free(alpha);
    free(hb);
    free(hs);
    ed_buffer_free(&dx);
    ed_buffer_free(&ddy);
    ed_buffer_free(&dwts);
    eu_buffer *bs[] = {&da, &db, &ds, &sc, &odw, &oda};
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; ++i) eu_buffer_free(bs[i]);
}

static void sweep(void)
{
    /* The shapes (n, cin, h, w, cout, groups, kh, kw, sh, sw, dh, dw, pt,
     * pb, pl, pr, e), the dtypes they run in (bit d: ed_dtypes[d]), the
     * layouts (bit 0 NCHW, bit 1 NHWC), the outputs (0: d_experts, d_alpha,
     * both in turn) and a grid cap. A block costs the layer ~10 ms a pixel
     * chunk and sample (256 OS threads through the barriers), so the
     * shapes are small and the costly ones run in few dtypes. Batch splits:
     * N (one sample a split) where the blocks are few; one split where
     * N = 1 (d_experts written directly, no scratch for d_experts only);
     * 133 splits of 2 samples (the last 1) for N = 265 over one block a
     * split: the fewest block-samples (N x blocks > 264) that give a split
     * more than one sample, with E = 1 (d_alpha's warp sums, shuffles the
     * layer runs slowly, are per expert and sample). */
    static const struct {
        wg_shape s;
        int dtypes, layouts, outputs, cap;
    } shapes[] = {
        {{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1}, 7, 3, 0, 0}, /* the smallest; one split */
        {{2, 3, 7, 5, 5, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3}, 7, 3, 0, 0}, /* 3x3, pad 1, 2 pixel chunks */
        {{3, 4, 9, 8, 6, 2, 3, 3, 2, 2, 1, 1, 1, 0, 0, 1, 8}, 7, 3, 0, 2}, /* groups 2, stride 2, asymmetric pad */
        {{2, 3, 11, 9, 3, 3, 5, 3, 1, 1, 2, 2, 2, 2, 1, 1, 9},
         5,
         3,
         0,
         3}, /* depthwise 5x3, dilation 2, 2 chunks of E */
        {{2, 5, 10, 10, 7, 1, 3, 3, 1, 2, 1, 1, -1, 0, 1, -2, 32}, 5, 3, 0, 4}, /* negative pad, E = 32 */
        {{5, 40, 6, 6, 40, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 3}, 2, 3, 3, 2},    /* 2 x 2 tiles, 2 pixel chunks */
        {{1, 8, 13, 11, 9, 1, 3, 3, 2, 1, 2, 1, 0, 1, 2, 0, 8}, 6, 3, 0, 0},    /* 3 r tiles, odd pixels, one split */
        {{265, 3, 3, 3, 5, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1}, 1, 2, 3, 4},    /* 2 samples a split */
    };
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    int i = 0;
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int layout = 0; layout < 2; ++layout)
            for (int k = 0; k < count; ++k) {
                if (!(shapes[k].dtypes >> di & 1) || !(shapes[k].layouts >> layout & 1)) continue;
                const int outputs = shapes[k].outputs ? shapes[k].outputs : 1 + i % 3;
                wgrad_case(ed_dtypes[di], layout, &shapes[k].s, outputs, outputs != 1 && (i / 3) % 2 == 0,
                           shapes[k].cap);
                ++i;
            }
}

/* --- refusals --------------------------------------------------------------------------------------- */

#define EXPECT_REFUSED(call)                                                                                           \
    do {                                                                                                               \
        const long long before_ = wgrad_launches();                                                                    \
        const cudaError_t err_ = (call);                                                                               \
        EU_EXPECT(err_ == cudaErrorInvalidValue, "%s: returned %d, not cudaErrorInvalidValue", #call, (int)err_);      \
        EU_EXPECT(wgrad_launches() == before_, "%s: launched a kernel", #call);                                        \
    } while (0)

/* A copy of *good with one field changed, refused by the launcher, with a
 * scratch size of 0. */
#define EXPECT_BAD(field, value)                                                                                       \
    do {                                                                                                               \
        cc_wgrad_args bad_ = good;                                                                                     \
        bad_.field = (value);                                                                                          \
        EXPECT_REFUSED(cc_launch_bwd_wgrad(&bad_, X, DY, W, A, B, DS, DW, DA, SC, NULL));                              \
        EU_EXPECT(cc_bwd_wgrad_scratch_elems(&bad_) == 0, "scratch for %s = %lld", #field, (long long)(value));        \
    } while (0)

/* Sizes refused, each field of a good call's arguments in turn (a
 * function of its own: the macros' expansions are many statements). */
static void bad_sizes(const cc_wgrad_args good, float *X, float *DY, float *W, float *A, float *B, float *DS, float *DW,
                      float *DA, float *SC)
{
    EXPECT_REFUSED(cc_launch_bwd_wgrad(NULL, X, DY, W, A, B, DS, DW, DA, SC, NULL));
    EU_EXPECT(cc_bwd_wgrad_scratch_elems(NULL) == 0, "scratch for NULL args");
    EXPECT_BAD(dtype, 3);
    EXPECT_BAD(dtype, -1);
    EXPECT_BAD(layout, 2);
    EXPECT_BAD(n, 0);
    EXPECT_BAD(n, -1);
    EXPECT_BAD(cin, 0);
    EXPECT_BAD(h, 0);
    EXPECT_BAD(w, -3);
    EXPECT_BAD(cout, 0);
    EXPECT_BAD(groups, 0);
    EXPECT_BAD(groups, -2);
    EXPECT_BAD(groups, 3); /* divides neither */
    EXPECT_BAD(groups, 4); /* divides Cin only */
    EXPECT_BAD(groups, 6); /* divides Cout only */
    EXPECT_BAD(kernel_h, 0);
    EXPECT_BAD(kernel_w, -1);
    EXPECT_BAD(stride_h, 0);
    EXPECT_BAD(stride_w, -1);
    EXPECT_BAD(dilation_h, 0);
    EXPECT_BAD(dilation_w, -2);
    EXPECT_BAD(out_h, 0);
    EXPECT_BAD(out_w, -1);
    EXPECT_BAD(e, 0);
    EXPECT_BAD(e, 129);
    /* Element counts past 2^31 - 1: x, dy, the experts. */
    EXPECT_BAD(h, 1 << 28);
    EXPECT_BAD(out_h, 1 << 28);
    EXPECT_BAD(kernel_h, 1 << 28);
    {
        cc_wgrad_args big = good; /* x of exactly 2^31 elements */
        big.n = 1;
        big.cin = 2;
        big.h = 1 << 15;
        big.w = 1 << 15;
        EXPECT_REFUSED(cc_launch_bwd_wgrad(&big, X, DY, W, A, B, DS, DW, DA, SC, NULL));
        big.w = (1 << 15) - 1; /* below: accepted by the size rule (not launched here) */
        EU_EXPECT(cc_bwd_wgrad_scratch_elems(&big) > 0, "scratch for x below 2^31 elements");
    }
}

static void refusals(void)
{
    const wg_shape s = {2, 4, 5, 5, 6, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3};
    const cc_wgrad_args good = args_of(CC_DTYPE_F32, CC_LAYOUT_NCHW, &s);
    const size_t x_n = (size_t)2 * 4 * 25, dy_n = (size_t)2 * 6 * 25, w_n = (size_t)3 * 6 * 2 * 9, ne = (size_t)2 * 3;
    eu_buffer x = eu_buffer_make(x_n, 0), dy = eu_buffer_make(dy_n, 0), w = eu_buffer_make(w_n, 0);
    eu_buffer a = eu_buffer_make(ne, 0), b = eu_buffer_make((size_t)3 * 6, 0), ds = eu_buffer_make((size_t)2 * 6, 0);
    eu_buffer dw = eu_buffer_make(w_n, 0), da = eu_buffer_make(ne, 0);
    eu_buffer sc = eu_buffer_make(cc_bwd_wgrad_scratch_elems(&good), 0);
    float *X = x.data, *DY = dy.data, *W = w.data, *A = a.data, *B = b.data, *DS = ds.data, *DW = dw.data;
    float *DA = da.data, *SC = sc.data;

    bad_sizes(good, X, DY, W, A, B, DS, DW, DA, SC);
    /* Pointers: x, dy, alpha always; experts for d_alpha; an output;
     * bias and dysum both or neither; scratch when d_alpha or splits. */
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, NULL, DY, W, A, B, DS, DW, DA, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, NULL, W, A, B, DS, DW, DA, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, DY, NULL, A, B, DS, DW, DA, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, DY, W, NULL, B, DS, DW, DA, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, DY, W, A, NULL, DS, DW, DA, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, DY, W, A, B, NULL, DW, DA, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, DY, W, A, B, DS, NULL, NULL, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, DY, W, A, B, DS, DW, DA, NULL, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, DY, W, A, NULL, NULL, NULL, DA, NULL, NULL));
    EXPECT_REFUSED(cc_launch_bwd_wgrad(&good, X, DY, NULL, A, NULL, NULL, DW, NULL, NULL, NULL)); /* 2 splits */

    /* The refused calls wrote nothing. */
    float *h = eu_fetch(&dw);
    EU_EXPECT(eu_all_nan(h, w_n), "a refused call wrote d_experts");
    free(h);
    h = eu_fetch(&da);
    EU_EXPECT(eu_all_nan(h, ne), "a refused call wrote d_alpha");
    free(h);
    h = eu_fetch(&sc);
    EU_EXPECT(eu_all_nan(h, sc.n), "a refused call wrote scratch");
    free(h);

    eu_buffer *bs[] = {&x, &dy, &w, &a, &b, &ds, &dw, &da, &sc};
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; ++i) eu_buffer_free(bs[i]);
}

int main(void)
{
    eu_seed_from_env();
    const double t0 = eu_now();
    sweep();
    const double t1 = eu_now();
    refusals();
    eu_expect_all_launched("backward_wgrad");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_backward_wgrad: %d runs, %d launches (%.1f s)\n", cases, launches, t1 - t0);
    if (eu_failures) printf("test_emu_backward_wgrad: failed; replay with the seed printed above\n");
    return eu_finish("test_emu_backward_wgrad");
}
