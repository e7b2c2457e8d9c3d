/* kernels/backward.cu on the CPU execution layer, against double-precision
 * references written here, on fresh random inputs (the seed is printed;
 * CONDCONV_TEST_SEED replays it):
 *   - cc_launch_bwd_channel_sums: f32/f16/bf16, NCHW/NHWC, planes of 1 to
 *     ~2000 pixels (1 to 32 lanes a plane), C not a multiple of 4 (scalar
 *     NHWC), src one element off a 16-byte boundary (scalar paths), scale
 *     1 and 1/HW;
 *   - cc_launch_bwd_experts: N in {1, 3, 17, 64}, E in {1, 2, 7, 32, 128},
 *     K from 1 to ~100k (odd and multiples of 4), G one element off
 *     (scalar paths), bias NULL or not, every non-empty combination of
 *     outputs (d_bias only with a bias);
 *   - cc_launch_bwd_routing: sigmoid and softmax with inv_temperature 1 and
 *     not, every combination of the three optional outputs;
 *   - cc_launch_bwd_add_pool_grad: every dtype and layout, aligned and not;
 *   - cc_launch_bwd_activation_grad: ReLU and SiLU, every dtype, in place
 *     and not, counts not a multiple of 4 and one element off (scalar).
 * Every output is poisoned (NaN) before every run, so an element not written
 * fails; NaN never passes. Every case runs twice: first in block index
 * order with the kernels' own grids or a lowered grid cap, then with the
 * blocks reversed under a cap of 4 blocks; the two results must be
 * bitwise identical (the kernels' summation orders depend on the sizes
 * only: the deterministic gradients). Bad arguments must be refused
 * with cudaErrorInvalidValue and launch nothing.
 *
 * Tolerances, from the f32 accumulation each kernel does (u = 2^-24; a sum
 * of m terms in any fixed tree of depth d errs by at most d * u * sum|t|):
 *   - channel sums: depth <= HW + 8 (chains, pairs, the lanes' or rows'
 *     tree, the scale), against sum |x| * scale;
 *   - d_experts, d_bias: an FMA chain over the N samples: (N + 2) u;
 *   - d_alpha: a thread's chain over its columns of a split (at most
 *     ceil(K / 256) terms), the block's tree (32 + 8 levels), the splits in
 *     order (at most ceil(K / 2048)), the same again for the bias term over
 *     cout: 2 ceil(K / 256) + 2 ceil(cout / 256) + 96;
 *   - d_logits: the softmax's dot over E (E + 4), against
 *     |inv_t alpha| (|d_alpha| + sum_j |alpha_j d_alpha_j|); the FC's
 *     gradients add their own chain (N or E) to that, against the same
 *     magnitudes carried through;
 *   - add_pool_grad: a division and an add in f32 (3 u of |dx| + |g|), then
 *     one rounding to the dtype (emu_dtype.h, ed_compare);
 *   - activation_grad: expf and a few operations in f32, 32 u of
 *     |dy| (1 + |pre|) (SiLU's derivative is at most that in magnitude, and
 *     each term of it is), then one rounding to the dtype. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "backward.h"
#include "emu_dtype.h"
#include "emu_util.h"

static int cases, launches;

static long long bwd_launches(void) { return cc_cpu_launch_count("bwd_"); }

/* --- channel sums ------------------------------------------------------------------------------- */

static void sums_case(int dtype, int layout, int n, int c, long long hw, int misaligned, int mean, int cap)
{
    const size_t total = (size_t)n * c * hw, out_n = (size_t)n * c;
    const float scale = mean ? 1.0f / (float)hw : 1.0f;
    float *x = ed_random(dtype, total, -1.0f, 1.0f);
    ed_buffer dx = ed_buffer_of(dtype, x, total, misaligned ? ed_size(dtype) : 0);
    eu_buffer dout = eu_buffer_make(out_n, 0);
    double *want = eu_doubles(out_n), *mag = eu_doubles(out_n);
    for (int b = 0; b < n; ++b)
        for (int ch = 0; ch < c; ++ch) {
            double s = 0.0, m = 0.0;
            for (long long p = 0; p < hw; ++p) {
                const size_t i =
                    layout == CC_LAYOUT_NCHW ? ((size_t)b * c + ch) * hw + p : ((size_t)b * hw + p) * c + ch;
                s += x[i];
                m += fabs((double)x[i]);
            }
            want[(size_t)b * c + ch] = s * scale;
            mag[(size_t)b * c + ch] = m * scale;
        }
    char what[160];
    snprintf(what, sizeof what, "channel sums %s %s N=%d C=%d HW=%lld misaligned=%d scale=%s cap=%d", ed_name(dtype),
             layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC", n, c, hw, misaligned, mean ? "1/HW" : "1", cap);
    float *got[2];
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        eu_poison(&dout);
        eu_run_setup(rep, cap);
        const long long before = bwd_launches();
        EU_LAUNCH(cc_launch_bwd_channel_sums(dtype, layout, dx.data, scale, dout.data, n, c, hw, NULL));
        launches += (int)(bwd_launches() - before);
        eu_run_reset();
        got[rep] = eu_fetch(&dout);
    }
    eu_compare(what, got[0], want, mag, out_n, 1e-30, (double)(hw + 8) * EU_U);
    eu_expect_same_bits(what, "out", got[0], got[1], out_n);
    eu_guards_intact(&dout, what);
    ed_guards_intact(&dx, what);
    free(got[0]);
    free(got[1]);
    free(want);
    free(mag);
    free(x);
    ed_buffer_free(&dx);
    eu_buffer_free(&dout);
}

static void sums_sweep(void)
{
    /* n, c, hw: 1-pixel planes (one lane a plane), 7x7 (8 lanes), ~2000
     * pixels (32 lanes, the 4-load chains), HW a multiple of 4 and not,
     * C a multiple of 4 and not, C past 256 columns (two NHWC chunks). */
    static const int shapes[][3] = {{1, 1, 1},    {3, 5, 7},   {2, 8, 49},  {17, 3, 64},  {2, 37, 200},
                                    {1, 4, 2003}, {3, 12, 16}, {2, 300, 9}, {1, 1100, 4}, {64, 6, 1}};
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int layout = 0; layout < 2; ++layout)
            for (int i = 0; i < count; ++i) {
                const int misaligned = (i + di + layout) % 3 == 0;
                sums_case(ed_dtypes[di], layout, shapes[i][0], shapes[i][1], shapes[i][2], misaligned, (i + di) % 2,
                          i % 4 == 1   ? 1
                          : i % 4 == 3 ? 2
                                       : 0);
            }
}

/* --- d_experts, d_bias, d_alpha ----------------------------------------------------------------------- */

enum { OUT_EXPERTS = 1, OUT_BIAS = 2, OUT_ALPHA = 4 };

typedef struct ex_case {
    int dtype, n, e, cout, bias, outs, misaligned, cap;
    long long k;
} ex_case;

static void experts_case(const ex_case *t)
{
    const size_t k = (size_t)t->k, n = (size_t)t->n, e = (size_t)t->e, cout = (size_t)t->cout;
    const size_t es = ed_size(t->dtype);
    float *g = ed_random(t->dtype, n * k, -1.0f, 1.0f), *x = ed_random(t->dtype, e * k, -1.0f, 1.0f);
    float *alpha = eu_random(n * e, 0.0f, 1.0f), *bias = eu_random(e * cout, -1.0f, 1.0f);
    float *dysum = eu_random(n * cout, -1.0f, 1.0f);
    ed_buffer dg = ed_buffer_of(t->dtype, g, n * k, t->misaligned ? es : 0);
    ed_buffer dx = ed_buffer_of(t->dtype, x, e * k, t->misaligned == 2 ? es : 0);
    eu_buffer da = eu_buffer_make(n * e, 0), db = eu_buffer_make(e * cout, 0);
    eu_buffer ds = eu_buffer_make(n * cout, t->misaligned ? 1 : 0);
    eu_upload(&da, alpha);
    eu_upload(&db, bias);
    eu_upload(&ds, dysum);
    eu_buffer oe = eu_buffer_make(e * k, 0), ob = eu_buffer_make(e * cout, 0), oa = eu_buffer_make(n * e, 0);
    const size_t scratch_n = cc_bwd_experts_scratch_elems(t->k, t->cout, t->n, t->e);
    EU_EXPECT(scratch_n > 0, "no scratch for valid sizes");
    eu_buffer sc = eu_buffer_make(scratch_n, 0);

    double *we = eu_doubles(e * k), *me = eu_doubles(e * k);
    double *wb = eu_doubles(e * cout), *mb = eu_doubles(e * cout);
    double *wa = eu_doubles(n * e), *ma = eu_doubles(n * e);
    for (size_t b = 0; b < n; ++b)
        for (size_t q = 0; q < e; ++q) {
            const double a = alpha[b * e + q];
            for (size_t j = 0; j < k; ++j) {
                const double v = a * g[b * k + j];
                we[q * k + j] += v;
                me[q * k + j] += fabs(v);
            }
            for (size_t c = 0; c < cout; ++c) {
                const double v = a * dysum[b * cout + c];
                wb[q * cout + c] += v;
                mb[q * cout + c] += fabs(v);
            }
            double s = 0.0, m = 0.0;
            for (size_t j = 0; j < k; ++j) {
                const double v = (double)x[q * k + j] * g[b * k + j];
                s += v;
                m += fabs(v);
            }
            if (t->bias)
                for (size_t c = 0; c < cout; ++c) {
                    const double v = (double)bias[q * cout + c] * dysum[b * cout + c];
                    s += v;
                    m += fabs(v);
                }
            wa[b * e + q] = s;
            ma[b * e + q] = m;
        }

    char what[200];
    snprintf(what, sizeof what, "bwd_experts %s K=%lld N=%d E=%d cout=%d bias=%d outs=%d misaligned=%d cap=%d",
             ed_name(t->dtype), t->k, t->n, t->e, t->cout, t->bias, t->outs, t->misaligned, t->cap);
    float *got[2][3];
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        eu_poison(&oe);
        eu_poison(&ob);
        eu_poison(&oa);
        eu_poison(&sc);
        eu_run_setup(rep, t->cap);
        const long long before = bwd_launches();
        EU_LAUNCH(cc_launch_bwd_experts(t->dtype, dg.data, dx.data, da.data, t->bias ? db.data : NULL, ds.data,
                                        t->outs & OUT_EXPERTS ? oe.data : NULL, t->outs & OUT_BIAS ? ob.data : NULL,
                                        t->outs & OUT_ALPHA ? oa.data : NULL, t->k, t->cout, t->n, t->e, sc.data,
                                        NULL));
        launches += (int)(bwd_launches() - before);
        eu_run_reset();
        got[rep][0] = eu_fetch(&oe);
        got[rep][1] = eu_fetch(&ob);
        got[rep][2] = eu_fetch(&oa);
    }
    char sub[240];
    if (t->outs & OUT_EXPERTS) {
        snprintf(sub, sizeof sub, "d_experts of %s", what);
        eu_compare(sub, got[0][0], we, me, e * k, 1e-30, (double)(t->n + 2) * EU_U);
        eu_expect_same_bits(what, "d_experts", got[0][0], got[1][0], e * k);
    } else {
        EU_EXPECT(eu_all_nan(got[0][0], e * k) && eu_all_nan(got[1][0], e * k), "%s: d_experts written", what);
    }
    if (t->outs & OUT_BIAS) {
        snprintf(sub, sizeof sub, "d_bias of %s", what);
        eu_compare(sub, got[0][1], wb, mb, e * cout, 1e-30, (double)(t->n + 2) * EU_U);
        eu_expect_same_bits(what, "d_bias", got[0][1], got[1][1], e * cout);
    } else {
        EU_EXPECT(eu_all_nan(got[0][1], e * cout) && eu_all_nan(got[1][1], e * cout), "%s: d_bias written", what);
    }
    if (t->outs & OUT_ALPHA) {
        /* Blocks of 256 elements (rounded up) in each sum: integer counts. */
        const long long k_blocks = (t->k + 255) / 256, c_blocks = (t->cout + 255) / 256;
        const double depth = 2.0 * (double)k_blocks + 2.0 * (double)c_blocks + 96.0;
        snprintf(sub, sizeof sub, "d_alpha of %s", what);
        eu_compare(sub, got[0][2], wa, ma, n * e, 1e-30, depth * EU_U);
        eu_expect_same_bits(what, "d_alpha", got[0][2], got[1][2], n * e);
    } else {
        EU_EXPECT(eu_all_nan(got[0][2], n * e) && eu_all_nan(got[1][2], n * e), "%s: d_alpha written", what);
    }
    eu_guards_intact(&oe, what);
    eu_guards_intact(&ob, what);
    eu_guards_intact(&oa, what);
    eu_guards_intact(&sc, "scratch");
    for (int rep = 0; rep < 2; ++rep)
        for (int o = 0; o < 3; ++o) free(got[rep][o]);
    free(we);
    free(me);
    free(wb);
    free(mb);
    free(wa);
    free(ma);
    free(g);
    free(x);
    free(alpha);
    free(bias);
    free(dysum);
    ed_buffer_free(&dg);
    ed_buffer_free(&dx);
    eu_buffer_free(&da);
    eu_buffer_free(&db);
    eu_buffer_free(&ds);
    eu_buffer_free(&oe);
    eu_buffer_free(&ob);
    eu_buffer_free(&oa);
    eu_buffer_free(&sc);
}

static void experts_sweep(void)
{
    /* k, n, e, cout, the dtypes (bit d: ed_dtypes[d]) and the cap of run 0:
     * K of 1, odd, multiples of 4 (the 4-wide paths), past one split
     * (2048) and ~100k; N and E below, at and past the 8 x 8 tiles and the
     * 16-expert tiles; E = 128 (the largest); cout past 256. The large
     * shapes run in one dtype each, under a cap (a CPU run costs by the
     * block). */
    static const struct {
        long long k;
        int n, e, cout, dtypes, cap;
    } shapes[] = {{1, 1, 1, 1, 7, 0},     {9, 3, 2, 5, 7, 0},      {100, 17, 7, 37, 7, 1},   {2052, 17, 2, 16, 7, 0},
                  {36, 64, 7, 260, 2, 3}, {300, 3, 128, 7, 1, 0},  {1024, 64, 32, 64, 4, 0}, {4099, 3, 32, 3, 2, 0},
                  {8192, 17, 7, 5, 1, 2}, {100003, 1, 7, 1, 1, 8}, {20000, 17, 1, 9, 2, 8},  {50000, 3, 2, 3, 4, 8}};
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    /* Every kernel instance, each dtype: G and d_experts 4-wide (K = 64) or
     * not (K = 63), 16- or 4-expert tiles (E = 7 or 3), d_bias 4-wide or
     * not (cout = 8 or 7), all outputs. */
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int v = 0; v < 4; ++v) {
            ex_case t = {0};
            t.dtype = ed_dtypes[di];
            t.k = v < 2 ? 64 : 63;
            t.n = 3;
            t.e = v % 2 ? 3 : 7;
            t.cout = v < 2 ? 8 : 7;
            t.bias = 1;
            t.outs = OUT_EXPERTS | OUT_BIAS | OUT_ALPHA;
            experts_case(&t);
        }
    int i = 0;
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int s = 0; s < count; ++s) {
            if (!(shapes[s].dtypes >> di & 1)) continue;
            ex_case t = {0};
            t.dtype = ed_dtypes[di];
            t.k = shapes[s].k;
            t.n = shapes[s].n;
            t.e = shapes[s].e;
            t.cout = shapes[s].cout;
            t.bias = i % 3 != 1;
            t.outs = t.bias ? 1 + i % 7 : (i % 2 ? OUT_EXPERTS | OUT_ALPHA : i % 4 == 0 ? OUT_ALPHA : OUT_EXPERTS);
            if (shapes[s].k > 10000) t.outs = t.bias ? 7 : 5; /* the large K: every output */
            t.misaligned = t.k % 4 == 0 ? i % 3 : 0;
            t.cap = shapes[s].cap;
            experts_case(&t);
            ++i;
        }
    /* Every combination of outputs, with and without a bias, the dtypes in
     * turn, on small shapes (cout a multiple of 4 with a bias: d_bias's
     * 4-wide path). */
    i = 0;
    for (int outs = 1; outs < 8; ++outs)
        for (int bias = 0; bias < 2; ++bias) {
            if ((outs & OUT_BIAS) && !bias) continue;
            ex_case t = {0};
            t.dtype = ed_dtypes[i++ % ED_DTYPE_COUNT];
            t.k = outs % 2 ? 77 : 120;
            t.n = (int[]){1, 3, 9}[outs % 3];
            t.e = (int[]){1, 2, 7, 32}[(outs + bias) % 4];
            t.cout = bias ? 4 * outs : 4 * outs + 1;
            t.bias = bias;
            t.outs = outs;
            t.misaligned = t.k % 4 == 0 ? bias : 0;
            experts_case(&t);
        }
}

/* --- routing backward ------------------------------------------------------------------------------ */

enum { OUT_WEIGHT = 1, OUT_RBIAS = 2, OUT_POOLED = 4 };

static void routing_case(int n, int c, int e, int softmax, float inv_t, int outs, int cap)
{
    const size_t ne = (size_t)n * e, nc = (size_t)n * c, ec = (size_t)e * c;
    float *alpha = eu_floats(ne), *dalpha = eu_random(ne, -1.0f, 1.0f);
    if (softmax) {
        for (int b = 0; b < n; ++b) {
            float *a = alpha + (size_t)b * e, m = -INFINITY, s = 0.0f;
            for (int q = 0; q < e; ++q) {
                a[q] = eu_uniform(-3.0f, 3.0f) * inv_t;
                m = fmaxf(m, a[q]);
            }
            for (int q = 0; q < e; ++q) s += a[q] = expf(a[q] - m);
            for (int q = 0; q < e; ++q) a[q] /= s;
        }
    } else {
        for (size_t i = 0; i < ne; ++i) alpha[i] = 1.0f / (1.0f + expf(-eu_uniform(-4.0f, 4.0f)));
    }
    float *pooled = eu_random(nc, -1.0f, 1.0f), *wt = eu_random((size_t)c * e, -1.0f, 1.0f);
    eu_buffer da = eu_buffer_make(ne, 0), dda = eu_buffer_make(ne, 0), dp = eu_buffer_make(nc, 0);
    eu_buffer dwt = eu_buffer_make((size_t)c * e, 0), dl = eu_buffer_make(ne, 0);
    eu_buffer ow = eu_buffer_make(ec, 0), ob = eu_buffer_make((size_t)e, 0), op = eu_buffer_make(nc, 0);
    eu_upload(&da, alpha);
    eu_upload(&dda, dalpha);
    eu_upload(&dp, pooled);
    eu_upload(&dwt, wt);

    double *wl = eu_doubles(ne), *ml = eu_doubles(ne);
    for (int b = 0; b < n; ++b) {
        const float *a = alpha + (size_t)b * e, *g = dalpha + (size_t)b * e;
        double dot = 0.0, mdot = 0.0;
        for (int q = 0; q < e; ++q) {
            dot += (double)a[q] * g[q];
            mdot += fabs((double)a[q] * g[q]);
        }
        for (int q = 0; q < e; ++q) {
            const size_t i = (size_t)b * e + q;
            if (softmax) {
                wl[i] = (double)inv_t * a[q] * (g[q] - dot);
                ml[i] = fabs((double)inv_t * a[q]) * (fabs((double)g[q]) + mdot);
            } else {
                wl[i] = (double)g[q] * a[q] * (1.0 - a[q]);
                ml[i] = fabs(wl[i]);
            }
        }
    }
    double *ww = eu_doubles(ec), *mw = eu_doubles(ec), *wb = eu_doubles((size_t)e), *mb = eu_doubles((size_t)e);
    double *wp = eu_doubles(nc), *mp = eu_doubles(nc);
    for (int b = 0; b < n; ++b)
        for (int q = 0; q < e; ++q) {
            const size_t i = (size_t)b * e + q;
            wb[q] += wl[i];
            mb[q] += ml[i];
            for (int ch = 0; ch < c; ++ch) {
                ww[(size_t)q * c + ch] += wl[i] * pooled[(size_t)b * c + ch];
                mw[(size_t)q * c + ch] += ml[i] * fabs((double)pooled[(size_t)b * c + ch]);
                wp[(size_t)b * c + ch] += wl[i] * wt[(size_t)ch * e + q];
                mp[(size_t)b * c + ch] += ml[i] * fabs((double)wt[(size_t)ch * e + q]);
            }
        }

    char what[160];
    snprintf(what, sizeof what, "bwd_routing %s inv_t=%g N=%d C=%d E=%d outs=%d cap=%d",
             softmax ? "softmax" : "sigmoid", (double)inv_t, n, c, e, outs, cap);
    float *got[2][4];
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        eu_poison(&dl);
        eu_poison(&ow);
        eu_poison(&ob);
        eu_poison(&op);
        eu_run_setup(rep, cap);
        const long long before = bwd_launches();
        EU_LAUNCH(cc_launch_bwd_routing(da.data, dda.data, softmax, inv_t, dp.data, dwt.data, dl.data,
                                        outs & OUT_WEIGHT ? ow.data : NULL, outs & OUT_RBIAS ? ob.data : NULL,
                                        outs & OUT_POOLED ? op.data : NULL, n, c, e, NULL));
        launches += (int)(bwd_launches() - before);
        eu_run_reset();
        got[rep][0] = eu_fetch(&dl);
        got[rep][1] = eu_fetch(&ow);
        got[rep][2] = eu_fetch(&ob);
        got[rep][3] = eu_fetch(&op);
    }
    char sub[220];
    const double rl = (double)(e + 4) * EU_U;
    snprintf(sub, sizeof sub, "d_logits of %s", what);
    eu_compare(sub, got[0][0], wl, ml, ne, 1e-30, rl);
    eu_expect_same_bits(what, "d_logits", got[0][0], got[1][0], ne);
    const struct {
        int bit;
        const char *name;
        size_t count;
        const double *want, *mag;
        double rtol;
    } o[3] = {{OUT_WEIGHT, "d_routing_weight", ec, ww, mw, (double)(n + e + 8) * EU_U},
              {OUT_RBIAS, "d_routing_bias", (size_t)e, wb, mb, (double)(n + e + 8) * EU_U},
              {OUT_POOLED, "d_pooled", nc, wp, mp, (double)(2 * e + 8) * EU_U}};
    for (int i = 0; i < 3; ++i) {
        if (outs & o[i].bit) {
            snprintf(sub, sizeof sub, "%s of %s", o[i].name, what);
            eu_compare(sub, got[0][i + 1], o[i].want, o[i].mag, o[i].count, 1e-30, o[i].rtol);
            eu_expect_same_bits(what, o[i].name, got[0][i + 1], got[1][i + 1], o[i].count);
        } else {
            EU_EXPECT(eu_all_nan(got[0][i + 1], o[i].count) && eu_all_nan(got[1][i + 1], o[i].count), "%s: %s written",
                      what, o[i].name);
        }
    }
    eu_guards_intact(&dl, what);
    eu_guards_intact(&ow, what);
    eu_guards_intact(&ob, what);
    eu_guards_intact(&op, what);
    for (int rep = 0; rep < 2; ++rep)
        for (int i = 0; i < 4; ++i) free(got[rep][i]);
    double *ds[] = {wl, ml, ww, mw, wb, mb, wp, mp};
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; ++i) free(ds[i]);
    free(alpha);
    free(dalpha);
    free(pooled);
    free(wt);
    eu_buffer *bs[] = {&da, &dda, &dp, &dwt, &dl, &ow, &ob, &op};
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; ++i) eu_buffer_free(bs[i]);
}

static void routing_sweep(void)
{
    static const int shapes[][4] = {{1, 1, 1, 0},    {3, 5, 2, 0},    {17, 33, 7, 1},
                                    {64, 20, 32, 0}, {5, 300, 33, 3}, {9, 7, 128, 0}};
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    for (int s = 0; s < count; ++s)
        for (int softmax = 0; softmax < 2; ++softmax) {
            const float inv_t = softmax ? (s % 2 ? 0.37f : 1.0f) : 1.0f;
            routing_case(shapes[s][0], shapes[s][1], shapes[s][2], softmax, inv_t, 7, shapes[s][3]);
        }
    /* Every combination of the optional outputs (0: d_logits alone). */
    for (int outs = 0; outs < 8; ++outs) routing_case(17, 9, 7, outs % 2, 2.5f, outs, outs % 3 == 0 ? 1 : 0);
}

/* --- the pool's share of dx ------------------------------------------------------------------------ */

static void pool_case(int dtype, int layout, int n, int c, long long hw, int misaligned, int cap)
{
    const size_t total = (size_t)n * c * hw, nc = (size_t)n * c;
    float *x = ed_random(dtype, total, -1.0f, 1.0f), *dp = eu_random(nc, -2.0f * (float)hw, 2.0f * (float)hw);
    eu_buffer ddp = eu_buffer_make(nc, 0);
    eu_upload(&ddp, dp);
    ed_buffer dx = ed_buffer_make(total * ed_size(dtype), misaligned ? ed_size(dtype) : 0);
    double *want = eu_doubles(total), *mag = eu_doubles(total);
    for (size_t i = 0; i < total; ++i) {
        size_t bc;
        if (layout == CC_LAYOUT_NCHW) {
            bc = i / (size_t)hw;
        } else {
            bc = i / ((size_t)hw * c) * c + i % c;
        }
        const double g = (double)dp[bc] / (double)hw;
        want[i] = x[i] + g;
        mag[i] = fabs((double)x[i]) + fabs(g);
    }
    char what[160];
    snprintf(what, sizeof what, "add_pool_grad %s %s N=%d C=%d HW=%lld misaligned=%d cap=%d", ed_name(dtype),
             layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC", n, c, hw, misaligned, cap);
    void *bytes = calloc(total * ed_size(dtype) + 1, 1);
    if (bytes == NULL) exit(1);
    ed_pack(dtype, x, bytes, total);
    float *got[2];
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        ed_upload(&dx, bytes); /* in place: the same dx before each run */
        eu_run_setup(rep, cap);
        const long long before = bwd_launches();
        EU_LAUNCH(cc_launch_bwd_add_pool_grad(dtype, layout, dx.data, ddp.data, n, c, hw, NULL));
        launches += (int)(bwd_launches() - before);
        eu_run_reset();
        got[rep] = ed_fetch(dtype, &dx, total);
    }
    ed_compare(what, dtype, got[0], want, mag, total, 3.0 * EU_U);
    eu_expect_same_bits(what, "dx", got[0], got[1], total);
    ed_guards_intact(&dx, what);
    free(got[0]);
    free(got[1]);
    free(bytes);
    free(want);
    free(mag);
    free(x);
    free(dp);
    ed_buffer_free(&dx);
    eu_buffer_free(&ddp);
}

static void pool_sweep(void)
{
    static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {2, 8, 16}, {17, 3, 9}, {2, 12, 25}, {1, 260, 4}};
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int layout = 0; layout < 2; ++layout)
            for (int i = 0; i < count; ++i)
                pool_case(ed_dtypes[di], layout, shapes[i][0], shapes[i][1], shapes[i][2], (i + di + layout) % 4 == 3,
                          i % 2 ? 1 : 0);
}

/* --- the activation's chain rule --------------------------------------------------------------------- */

static double act_grad_ref(int act, double v)
{
    if (act == 1) return v > 0.0 ? 1.0 : 0.0; /* CC_ACT_RELU */
    const double s = 1.0 / (1.0 + exp(-v));   /* CC_ACT_SILU */
    return s * (1.0 + v * (1.0 - s));
}

static void act_case(int dtype, int act, long long count, int in_place, int misaligned, int cap)
{
    const size_t total = (size_t)count, off = misaligned ? ed_size(dtype) : 0;
    /* Pre-activations over SiLU's interesting range, exact zeros for ReLU's kink. */
    float *pre = ed_random(dtype, total, -6.0f, 6.0f), *dy = ed_random(dtype, total, -1.0f, 1.0f);
    for (size_t i = 0; i < total; i += 7) pre[i] = 0.0f;
    ed_buffer dpre = ed_buffer_of(dtype, pre, total, off), ddy = ed_buffer_of(dtype, dy, total, 0);
    ed_buffer dout = ed_buffer_make(total * ed_size(dtype), off);
    double *want = eu_doubles(total), *mag = eu_doubles(total);
    for (size_t i = 0; i < total; ++i) {
        want[i] = (double)dy[i] * act_grad_ref(act, pre[i]);
        mag[i] = fabs((double)dy[i]) * (1.0 + fabs((double)pre[i]));
    }
    char what[160];
    snprintf(what, sizeof what, "activation_grad %s %s count=%lld in_place=%d misaligned=%d cap=%d", ed_name(dtype),
             act == 1 ? "relu" : "silu", count, in_place, misaligned, cap);
    void *bytes = calloc(total * ed_size(dtype) + 1, 1);
    if (bytes == NULL) exit(1);
    ed_pack(dtype, pre, bytes, total);
    float *got[2];
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        ed_upload(&dpre, bytes); /* in place overwrites it */
        ed_poison(&dout);
        eu_run_setup(rep, cap);
        const long long before = bwd_launches();
        ed_buffer *out = in_place ? &dpre : &dout;
        EU_LAUNCH(cc_launch_bwd_activation_grad(dtype, act, dpre.data, ddy.data, out->data, count, NULL));
        launches += (int)(bwd_launches() - before);
        eu_run_reset();
        got[rep] = ed_fetch(dtype, out, total);
    }
    ed_compare(what, dtype, got[0], want, mag, total, 32.0 * EU_U);
    eu_expect_same_bits(what, "out", got[0], got[1], total);
    ed_guards_intact(&dpre, what);
    ed_guards_intact(&ddy, what);
    ed_guards_intact(&dout, what);
    free(got[0]);
    free(got[1]);
    free(bytes);
    free(want);
    free(mag);
    free(pre);
    free(dy);
    ed_buffer_free(&dpre);
    ed_buffer_free(&ddy);
    ed_buffer_free(&dout);
}

static void act_sweep(void)
{
    static const long long counts[] = {1, 7, 64, 1001, 4096};
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int act = 1; act <= 2; ++act)
            for (int i = 0; i < (int)(sizeof counts / sizeof counts[0]); ++i)
                act_case(ed_dtypes[di], act, counts[i], (i + act) % 2, (i + di) % 3 == 2, i % 2 ? 2 : 0);
}

/* --- refusals --------------------------------------------------------------------------------------- */

#define EXPECT_REFUSED(call)                                                                                           \
    do {                                                                                                               \
        const long long before_ = bwd_launches();                                                                      \
        const cudaError_t err_ = (call);                                                                               \
        EU_EXPECT(err_ == cudaErrorInvalidValue, "%s: returned %d, not cudaErrorInvalidValue", #call, (int)err_);      \
        EU_EXPECT(bwd_launches() == before_, "%s: launched a kernel", #call);                                          \
    } while (0)

static void refusals(void)
{
    const int n = 3, e = 2, c = 5, cout = 4;
    const long long k = 16, hw = 6;
    eu_buffer g = eu_buffer_make((size_t)n * k, 0), x = eu_buffer_make((size_t)e * k, 0);
    eu_buffer a = eu_buffer_make((size_t)n * e, 0), b = eu_buffer_make((size_t)e * cout, 0);
    eu_buffer ds = eu_buffer_make((size_t)n * cout, 0), oe = eu_buffer_make((size_t)e * k, 0);
    eu_buffer ob = eu_buffer_make((size_t)e * cout, 0), oa = eu_buffer_make((size_t)n * e, 0);
    eu_buffer sc = eu_buffer_make(cc_bwd_experts_scratch_elems(k, cout, n, e), 0);
    eu_buffer src = eu_buffer_make((size_t)n * c * hw, 0), out = eu_buffer_make((size_t)n * c, 0);
    eu_buffer dl = eu_buffer_make((size_t)n * e, 0), wt = eu_buffer_make((size_t)c * e, 0);
    eu_buffer ow = eu_buffer_make((size_t)e * c, 0), orb = eu_buffer_make((size_t)e, 0);
    float *G = g.data, *X = x.data, *A = a.data, *B = b.data, *DS = ds.data, *OE = oe.data, *OB = ob.data;
    float *OA = oa.data, *SC = sc.data;

    /* bwd_experts */
    EXPECT_REFUSED(cc_launch_bwd_experts(3, G, X, A, B, DS, OE, OB, OA, k, cout, n, e, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(-1, G, X, A, B, DS, OE, OB, OA, k, cout, n, e, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, DS, NULL, NULL, NULL, k, cout, n, e, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, DS, OE, OB, OA, k, cout, 0, e, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, DS, OE, OB, OA, k, cout, -3, e, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, DS, OE, OB, OA, k, cout, n, 0, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, DS, OE, OB, OA, k, cout, n, 129, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, DS, OE, OB, OA, 0, cout, n, e, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, DS, OE, OB, OA, k, 0, n, e, SC, NULL));
    /* d_bias without a bias; a bias without dysum; d_alpha without scratch or experts. */
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, NULL, DS, OE, OB, OA, k, cout, n, e, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, NULL, OE, OB, OA, k, cout, n, e, SC, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, X, A, B, DS, OE, OB, OA, k, cout, n, e, NULL, NULL));
    EXPECT_REFUSED(cc_launch_bwd_experts(CC_DTYPE_F32, G, NULL, A, B, DS, OE, OB, OA, k, cout, n, e, SC, NULL));
    EU_EXPECT(cc_bwd_experts_scratch_elems(k, cout, 0, e) == 0, "scratch for N = 0");
    EU_EXPECT(cc_bwd_experts_scratch_elems(k, cout, n, 129) == 0, "scratch for E = 129");
    /* The refused calls wrote nothing. */
    float *h = eu_floats((size_t)e * k);
    eu_download(&oe, h);
    EU_EXPECT(eu_all_nan(h, (size_t)e * k), "a refused bwd_experts wrote d_experts");
    free(h);

    /* channel sums and the pool's share of dx */
    EXPECT_REFUSED(cc_launch_bwd_channel_sums(3, CC_LAYOUT_NCHW, src.data, 1.0f, out.data, n, c, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_channel_sums(CC_DTYPE_F32, 2, src.data, 1.0f, out.data, n, c, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_channel_sums(CC_DTYPE_F32, CC_LAYOUT_NCHW, src.data, 1.0f, out.data, 0, c, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_channel_sums(CC_DTYPE_F32, CC_LAYOUT_NHWC, src.data, 1.0f, out.data, n, 0, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_channel_sums(CC_DTYPE_F32, CC_LAYOUT_NHWC, src.data, 1.0f, out.data, n, c, 0, NULL));
    EXPECT_REFUSED(cc_launch_bwd_add_pool_grad(-1, CC_LAYOUT_NCHW, src.data, out.data, n, c, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_add_pool_grad(CC_DTYPE_F16, 5, src.data, out.data, n, c, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_add_pool_grad(CC_DTYPE_F16, CC_LAYOUT_NCHW, src.data, out.data, 0, c, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_add_pool_grad(CC_DTYPE_F16, CC_LAYOUT_NCHW, src.data, out.data, n, c, -1, NULL));

    /* routing */
    EXPECT_REFUSED(
        cc_launch_bwd_routing(A, OA, 1, 1.0f, out.data, wt.data, dl.data, ow.data, orb.data, out.data, 0, c, e, NULL));
    EXPECT_REFUSED(
        cc_launch_bwd_routing(A, OA, 1, 1.0f, out.data, wt.data, dl.data, ow.data, orb.data, out.data, n, 0, e, NULL));
    EXPECT_REFUSED(cc_launch_bwd_routing(A, OA, 1, 1.0f, out.data, wt.data, dl.data, ow.data, orb.data, out.data, n, c,
                                         129, NULL));
    EXPECT_REFUSED(
        cc_launch_bwd_routing(A, OA, 1, 1.0f, out.data, wt.data, NULL, ow.data, orb.data, out.data, n, c, e, NULL));
    EXPECT_REFUSED(cc_launch_bwd_routing(A, OA, 0, 1.0f, NULL, wt.data, dl.data, ow.data, NULL, NULL, n, c, e, NULL));
    EXPECT_REFUSED(cc_launch_bwd_routing(A, OA, 0, 1.0f, out.data, NULL, dl.data, NULL, NULL, out.data, n, c, e, NULL));

    /* the activation's chain rule: no activation, an unknown one, dy in place, no elements */
    EXPECT_REFUSED(cc_launch_bwd_activation_grad(CC_DTYPE_F32, 0, src.data, out.data, ow.data, 4, NULL));
    EXPECT_REFUSED(cc_launch_bwd_activation_grad(CC_DTYPE_F32, 3, src.data, out.data, ow.data, 4, NULL));
    EXPECT_REFUSED(cc_launch_bwd_activation_grad(CC_DTYPE_F32, 2, src.data, out.data, out.data, 4, NULL));
    EXPECT_REFUSED(cc_launch_bwd_activation_grad(CC_DTYPE_F32, 2, src.data, out.data, ow.data, 0, NULL));
    EXPECT_REFUSED(cc_launch_bwd_activation_grad(7, 2, src.data, out.data, ow.data, 4, NULL));
    EXPECT_REFUSED(cc_launch_bwd_activation_grad(CC_DTYPE_F32, 2, NULL, out.data, ow.data, 4, NULL));

    eu_buffer *bs[] = {&g, &x, &a, &b, &ds, &oe, &ob, &oa, &sc, &src, &out, &dl, &wt, &ow, &orb};
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; ++i) eu_buffer_free(bs[i]);
}

int main(void)
{
    eu_seed_from_env();
    const double t0 = eu_now();
    sums_sweep();
    const double t1 = eu_now();
    experts_sweep();
    const double t2 = eu_now();
    routing_sweep();
    const double t3 = eu_now();
    pool_sweep();
    act_sweep();
    const double t4 = eu_now();
    refusals();
    eu_expect_all_launched("backward");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_backward: %d runs, %d launches (channel sums %.1f s, experts %.1f s, routing %.1f s, pool and "
           "activation %.1f s)\n",
           cases, launches, t1 - t0, t2 - t1, t3 - t2, t4 - t3);
    if (eu_failures) printf("test_emu_backward: failed; replay with the seed printed above\n");
    return eu_finish("test_emu_backward");
}
