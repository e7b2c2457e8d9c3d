/* kernels/backward_mixture.cu on the CPU execution layer, against references
 * written here from the dtype-rounded inputs, on fresh random inputs (the
 * seed is printed; CONDCONV_TEST_SEED replays it):
 *   - cc_launch_bwd_mixture_scale_dy: f32/f16/bf16, NCHW/NHWC, groups 1,
 *     > 1 and Cout == groups, E from 1 to 32 and 128, planes of 1, 7, 16,
 *     7x7, 13x11, 56x56 and 4000 pixels (the 16-byte path where the planes
 *     (NCHW) or the groups' channels (NHWC) hold whole vectors, the scalar
 *     one elsewhere), dy or dy_mix one element off a 16-byte boundary;
 *   - cc_launch_bwd_mixture_dalpha: the same shapes (one to 25 splits of
 *     the plane, expert tiles of 8 with a partial last one), bias and dysum
 *     or neither, z or dy one element off;
 *   - cc_launch_bwd_mixture_filters: every dtype, both filter orders,
 *     groups 1, > 1 and depthwise, 1x1, 3x3, 5x3 kernels.
 * Every output is poisoned (NaN) before every run, so an element not written
 * fails; NaN never passes. Every case runs twice: first in block index
 * order with the kernels' own grids or a lowered grid cap, then with the
 * blocks reversed under a cap of 4 blocks; the two results must be bitwise
 * identical. Bad arguments must be refused with cudaErrorInvalidValue,
 * launch nothing and write nothing.
 *
 * Exactness and tolerances:
 *   - scale_dy: bitwise equal to the f32 product alpha * dy (C float
 *     arithmetic, one rounding) rounded once to the dtype;
 *   - filters: bitwise equal to the source element (an exact conversion);
 *   - d_alpha: a sum of m terms in any fixed tree of depth d errs by at most
 *     d * u * sum|t| (u = 2^-24). Depth here: a thread's FMA chain over its
 *     positions of a split (at most ceil(L / 256) + 8, L = Cout x plane), the
 *     block's tree (32 threads a part, 8 parts), the splits (at most
 *     ceil(L / 2048)), the bias term's lane chain (ceil(Cout / 32)) and warp
 *     tree (5), the final add (1):
 *     ceil(L / 256) + ceil(L / 2048) + ceil(Cout / 32) + 64,
 *     against sum |z dy| + sum |bias dysum|. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "backward_mixture.h"
#include "emu_dtype.h"
#include "emu_util.h"

static int cases, launches;

static long long mix_launches(void) { return cc_cpu_launch_count("bwd_mix_"); }

/* eu_run_setup's grid cap does not reach d_alpha's split grid: its splits
 * are a function of the sizes. */

/* got == want bit for bit; prints the first few that are not. */
static void expect_bitwise(const char *what, const float *got, const float *want, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i)
        if (ed_bits(got[i]) != ed_bits(want[i])) {
            if (bad < 5) fprintf(stderr, "  %s[%zu]: got %.9g, want %.9g\n", what, i, (double)got[i], (double)want[i]);
            ++bad;
        }
    EU_EXPECT(bad == 0, "%s: %zu of %zu elements differ", what, bad, n);
}

/* The activation shapes: N, Cout, groups, E, plane. */
typedef struct mix_shape {
    int n, cout, groups, e;
    long long plane;
} mix_shape;

/* Stacked channel (g, e, c') and dy's channel (g, c'), from the header's
 * definition (not the kernels' segment map). */
static size_t stacked_index(int layout, const mix_shape *s, int b, int g, int q, int c, long long p)
{
    const int cpg = s->cout / s->groups, ec = s->e * s->cout;
    const size_t oc = (size_t)(g * s->e + q) * (size_t)cpg + (size_t)c;
    return layout == CC_LAYOUT_NCHW ? ((size_t)b * ec + oc) * (size_t)s->plane + (size_t)p
                                    : ((size_t)b * (size_t)s->plane + (size_t)p) * ec + oc;
}

static size_t dy_index(int layout, const mix_shape *s, int b, int g, int c, long long p)
{
    const int cpg = s->cout / s->groups;
    const size_t ch = (size_t)g * cpg + (size_t)c;
    return layout == CC_LAYOUT_NCHW ? ((size_t)b * s->cout + ch) * (size_t)s->plane + (size_t)p
                                    : ((size_t)b * (size_t)s->plane + (size_t)p) * s->cout + ch;
}

static const char *layout_name(int layout) { return layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC"; }

/* --- scale_dy ---------------------------------------------------------------------------------------- */

static void scale_case(int dtype, int layout, const mix_shape *s, int misaligned, int cap)
{
    const size_t dy_n = (size_t)s->n * s->cout * (size_t)s->plane, out_n = dy_n * (size_t)s->e;
    const size_t es = ed_size(dtype);
    const int cpg = s->cout / s->groups;
    float *dy = ed_random(dtype, dy_n, -2.0f, 2.0f), *alpha = eu_random((size_t)s->n * s->e, 0.0f, 1.0f);
    ed_buffer ddy = ed_buffer_of(dtype, dy, dy_n, misaligned == 1 ? es : 0);
    ed_buffer dout = ed_buffer_make(out_n * es, misaligned == 2 ? es : 0);
    eu_buffer da = eu_buffer_make((size_t)s->n * s->e, 0);
    eu_upload(&da, alpha);
    float *want = eu_floats(out_n);
    for (int b = 0; b < s->n; ++b)
        for (int g = 0; g < s->groups; ++g)
            for (int q = 0; q < s->e; ++q)
                for (int c = 0; c < cpg; ++c)
                    for (long long p = 0; p < s->plane; ++p) {
                        const float v = alpha[(size_t)b * s->e + q] * dy[dy_index(layout, s, b, g, c, p)];
                        want[stacked_index(layout, s, b, g, q, c, p)] = ed_round(dtype, v);
                    }
    char what[200];
    snprintf(what, sizeof what, "scale_dy %s %s N=%d Cout=%d groups=%d E=%d plane=%lld misaligned=%d cap=%d",
             ed_name(dtype), layout_name(layout), s->n, s->cout, s->groups, s->e, s->plane, misaligned, cap);
    float *got[2];
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        ed_poison(&dout);
        eu_run_setup(rep, cap);
        const long long before = mix_launches();
        EU_LAUNCH(cc_launch_bwd_mixture_scale_dy(dtype, layout, ddy.data, da.data, dout.data, s->n, s->cout, s->groups,
                                                 s->e, s->plane, NULL));
        launches += (int)(mix_launches() - before);
        eu_run_reset();
        got[rep] = ed_fetch(dtype, &dout, out_n);
    }
    expect_bitwise(what, got[0], want, out_n);
    eu_expect_same_bits(what, "dy_mix", got[0], got[1], out_n);
    ed_guards_intact(&dout, what);
    ed_guards_intact(&ddy, what);
    free(got[0]);
    free(got[1]);
    free(want);
    free(dy);
    free(alpha);
    ed_buffer_free(&ddy);
    ed_buffer_free(&dout);
    eu_buffer_free(&da);
}

/* --- d_alpha ----------------------------------------------------------------------------------------- */

static void dalpha_case(int dtype, int layout, const mix_shape *s, int bias, int misaligned, int cap)
{
    const size_t dy_n = (size_t)s->n * s->cout * (size_t)s->plane, z_n = dy_n * (size_t)s->e;
    const size_t ne = (size_t)s->n * s->e, es = ed_size(dtype);
    const int cpg = s->cout / s->groups;
    float *z = ed_random(dtype, z_n, -1.0f, 1.0f), *dy = ed_random(dtype, dy_n, -1.0f, 1.0f);
    float *hb = eu_random((size_t)s->e * s->cout, -1.0f, 1.0f), *hs = eu_random((size_t)s->n * s->cout, -1.0f, 1.0f);
    ed_buffer dz = ed_buffer_of(dtype, z, z_n, misaligned == 1 ? es : 0);
    ed_buffer ddy = ed_buffer_of(dtype, dy, dy_n, misaligned == 2 ? es : 0);
    eu_buffer db = eu_buffer_make((size_t)s->e * s->cout, misaligned ? 1 : 0);
    eu_buffer ds = eu_buffer_make((size_t)s->n * s->cout, 0);
    eu_upload(&db, hb);
    eu_upload(&ds, hs);
    const size_t scratch_n = cc_bwd_mixture_dalpha_scratch_elems(s->n, s->cout, s->e, s->plane);
    EU_EXPECT(scratch_n >= ne, "scratch of %zu floats for N x E = %zu", scratch_n, ne);
    eu_buffer sc = eu_buffer_make(scratch_n, 0), out = eu_buffer_make(ne, 0);

    double *want = eu_doubles(ne), *mag = eu_doubles(ne);
    for (int b = 0; b < s->n; ++b)
        for (int q = 0; q < s->e; ++q) {
            double sum = 0.0, m = 0.0;
            for (int g = 0; g < s->groups; ++g)
                for (int c = 0; c < cpg; ++c)
                    for (long long p = 0; p < s->plane; ++p) {
                        const double v = (double)z[stacked_index(layout, s, b, g, q, c, p)] *
                                         (double)dy[dy_index(layout, s, b, g, c, p)];
                        sum += v;
                        m += fabs(v);
                    }
            if (bias)
                for (int c = 0; c < s->cout; ++c) {
                    const double v = (double)hb[(size_t)q * s->cout + c] * (double)hs[(size_t)b * s->cout + c];
                    sum += v;
                    m += fabs(v);
                }
            want[(size_t)b * s->e + q] = sum;
            mag[(size_t)b * s->e + q] = m;
        }

    char what[200];
    snprintf(what, sizeof what, "d_alpha %s %s N=%d Cout=%d groups=%d E=%d plane=%lld bias=%d misaligned=%d cap=%d",
             ed_name(dtype), layout_name(layout), s->n, s->cout, s->groups, s->e, s->plane, bias, misaligned, cap);
    float *got[2];
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        eu_poison(&out);
        eu_poison(&sc);
        eu_run_setup(rep, cap);
        const long long before = mix_launches();
        EU_LAUNCH(cc_launch_bwd_mixture_dalpha(dtype, layout, dz.data, ddy.data, bias ? db.data : NULL,
                                               bias ? ds.data : NULL, out.data, sc.data, s->n, s->cout, s->groups, s->e,
                                               s->plane, NULL));
        launches += (int)(mix_launches() - before);
        eu_run_reset();
        got[rep] = eu_fetch(&out);
    }
    const long long len = (long long)s->cout * s->plane;
    /* Integer counts of terms and levels. */
    const long long levels = (len + 255) / 256 + (len + 2047) / 2048 + (bias ? (s->cout + 31) / 32 : 0) + 64;
    const double depth = (double)levels;
    eu_compare(what, got[0], want, mag, ne, 1e-30, depth * EU_U);
    eu_expect_same_bits(what, "d_alpha", got[0], got[1], ne);
    eu_guards_intact(&out, what);
    eu_guards_intact(&sc, "scratch");
    ed_guards_intact(&dz, what);
    ed_guards_intact(&ddy, what);
    free(got[0]);
    free(got[1]);
    free(want);
    free(mag);
    free(z);
    free(dy);
    free(hb);
    free(hs);
    ed_buffer_free(&dz);
    ed_buffer_free(&ddy);
    eu_buffer_free(&db);
    eu_buffer_free(&ds);
    eu_buffer_free(&sc);
    eu_buffer_free(&out);
}

static void activation_sweep(void)
{
    /* Planes of 1 (scalar everywhere), 7x7 and 13x11 (NCHW scalar), 16, 64,
     * 56x56 and 4000 (NCHW 16-byte: a multiple of 8); cpg 8 (NHWC 16-byte in
     * every dtype), 4 (f32 only), 1 and 3 (scalar); L = Cout x plane from 1
     * to 50176 (one split up to 2048, then 3, 4, 13, 25); E 1, 2, 3, 5, 7,
     * 8, 9 (two expert tiles, the second of one), 32 and 128. The large
     * shapes (and E = 128) run in fewer dtypes (bit d of `dtypes`:
     * ed_dtypes[d]) and under a grid cap (a CPU run costs by the block). */
    static const struct {
        mix_shape s;
        int dtypes, cap;
    } shapes[] = {
        {{1, 1, 1, 1, 1}, 7, 0},    {{2, 8, 1, 3, 49}, 7, 0},    {{3, 12, 3, 5, 143}, 7, 2}, {{2, 6, 6, 7, 64}, 7, 3},
        {{1, 4, 1, 128, 49}, 5, 4}, {{2, 16, 2, 32, 16}, 7, 2},  {{2, 37, 1, 2, 143}, 7, 4}, {{2, 24, 2, 9, 7}, 7, 0},
        {{3, 9, 3, 8, 1}, 7, 0},    {{1, 16, 4, 8, 3136}, 2, 8}, {{3, 2, 1, 1, 4000}, 4, 8}, {{1, 8, 2, 2, 3136}, 1, 8},
    };
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    int i = 0;
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int layout = 0; layout < 2; ++layout)
            for (int k = 0; k < count; ++k) {
                if (!(shapes[k].dtypes >> di & 1)) continue;
                const mix_shape *s = &shapes[k].s;
                /* Misaligned (dy or dy_mix; z or dy) in a third of the
                 * shapes each, the others aligned in every dtype and
                 * layout (the 16-byte paths: k = 1 and 3 for scale_dy,
                 * 3 and 5 for d_alpha). */
                const int off = 1 + (di + layout) % 2;
                scale_case(ed_dtypes[di], layout, s, k % 3 == 2 ? off : 0, shapes[k].cap);
                dalpha_case(ed_dtypes[di], layout, s, i % 2 == 0, k % 3 == 1 ? off : 0, shapes[k].cap);
                ++i;
            }
}

/* --- filters ----------------------------------------------------------------------------------------- */

static void filters_case(int dtype, int nhwc, int e, int cout, int cin_pg, int kh, int kw, int groups, int misaligned,
                         int cap)
{
    const int cpg = cout / groups, khw = kh * kw;
    const size_t total = (size_t)e * cout * cin_pg * khw;
    float *dw = ed_random(dtype, total, -4.0f, 4.0f);
    ed_buffer ddw = ed_buffer_of(dtype, dw, total, misaligned ? ed_size(dtype) : 0);
    eu_buffer out = eu_buffer_make(total, misaligned ? 1 : 0);
    float *want = eu_floats(total);
    for (int g = 0; g < groups; ++g)
        for (int q = 0; q < e; ++q)
            for (int c = 0; c < cpg; ++c)
                for (int ci = 0; ci < cin_pg; ++ci)
                    for (int t = 0; t < khw; ++t) {
                        const size_t f = ((size_t)g * e + q) * cpg + c; /* the stacked filter */
                        const size_t src = nhwc ? (f * khw + t) * cin_pg + ci : (f * cin_pg + ci) * khw + t;
                        const size_t dst = (((size_t)q * cout + (size_t)g * cpg + c) * cin_pg + ci) * khw + t;
                        want[dst] = dw[src];
                    }
    char what[200];
    snprintf(what, sizeof what, "filters %s %s E=%d Cout=%d Cin/g=%d %dx%d groups=%d misaligned=%d cap=%d",
             ed_name(dtype), nhwc ? "NHWC" : "NCHW", e, cout, cin_pg, kh, kw, groups, misaligned, cap);
    float *got[2];
    for (int rep = 0; rep < 2; ++rep) {
        ++cases;
        eu_poison(&out);
        eu_run_setup(rep, cap);
        const long long before = mix_launches();
        EU_LAUNCH(
            cc_launch_bwd_mixture_filters(dtype, nhwc, ddw.data, out.data, e, cout, cin_pg, kh, kw, groups, NULL));
        launches += (int)(mix_launches() - before);
        eu_run_reset();
        got[rep] = eu_fetch(&out);
    }
    expect_bitwise(what, got[0], want, total);
    eu_expect_same_bits(what, "d_experts", got[0], got[1], total);
    eu_guards_intact(&out, what);
    ed_guards_intact(&ddw, what);
    free(got[0]);
    free(got[1]);
    free(want);
    free(dw);
    ed_buffer_free(&ddw);
    eu_buffer_free(&out);
}

static void filters_sweep(void)
{
    /* e, cout, cin_pg, kh, kw, groups, cap */
    static const int shapes[][7] = {{1, 1, 1, 1, 1, 1, 0}, {3, 8, 5, 3, 3, 1, 2},  {7, 12, 4, 3, 3, 3, 1},
                                    {2, 6, 1, 5, 3, 6, 0}, {32, 4, 2, 1, 1, 2, 2}, {128, 2, 3, 3, 3, 1, 4},
                                    {5, 10, 7, 3, 5, 5, 2}};
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    int i = 0;
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int nhwc = 0; nhwc < 2; ++nhwc)
            for (int k = 0; k < count; ++k, ++i)
                filters_case(ed_dtypes[di], nhwc ? 3 : 0, shapes[k][0], shapes[k][1], shapes[k][2], shapes[k][3],
                             shapes[k][4], shapes[k][5], i % 4 == 1, shapes[k][6]);
}

/* --- refusals --------------------------------------------------------------------------------------- */

#define EXPECT_REFUSED(call)                                                                                           \
    do {                                                                                                               \
        const long long before_ = mix_launches();                                                                      \
        const cudaError_t err_ = (call);                                                                               \
        EU_EXPECT(err_ == cudaErrorInvalidValue, "%s: returned %d, not cudaErrorInvalidValue", #call, (int)err_);      \
        EU_EXPECT(mix_launches() == before_, "%s: launched a kernel", #call);                                          \
    } while (0)

static void refusals(void)
{
    const int n = 2, e = 3, cout = 4, g = 2, cin = 3, kh = 3, kw = 3;
    const long long hw = 5;
    const size_t dy_n = (size_t)n * cout * hw, z_n = dy_n * e, w_n = (size_t)e * cout * cin * kh * kw;
    eu_buffer dy = eu_buffer_make(dy_n, 0), z = eu_buffer_make(z_n, 0), out = eu_buffer_make(z_n, 0);
    eu_buffer a = eu_buffer_make((size_t)n * e, 0), da = eu_buffer_make((size_t)n * e, 0);
    eu_buffer b = eu_buffer_make((size_t)e * cout, 0), ds = eu_buffer_make((size_t)n * cout, 0);
    eu_buffer sc = eu_buffer_make(cc_bwd_mixture_dalpha_scratch_elems(n, cout, e, hw), 0);
    eu_buffer w = eu_buffer_make(w_n, 0), dw = eu_buffer_make(w_n, 0);
    float *DY = dy.data, *Z = z.data, *O = out.data, *A = a.data, *DA = da.data, *B = b.data, *DS = ds.data;
    float *SC = sc.data, *W = w.data, *DW = dw.data;
    const int F32 = CC_DTYPE_F32, NCHW = CC_LAYOUT_NCHW;

    /* scale_dy: dtype, layout, sizes, groups, E, pointers, overflow. */
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(3, NCHW, DY, A, O, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(-1, NCHW, DY, A, O, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, 2, DY, A, O, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, 0, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, n, 0, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, n, cout, 0, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, n, cout, 3, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, n, cout, -2, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, n, cout, g, 0, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, n, cout, g, 129, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, n, cout, g, e, 0, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, n, cout, g, e, -1, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, NULL, A, O, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, NULL, O, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, NULL, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, 8, 8, 1, 8, 1LL << 60, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, 0x7fffffff, 1 << 20, 1, 128, 1LL << 20, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_scale_dy(F32, NCHW, DY, A, O, 1, 1 << 24, 1, 128, 1, NULL));

    /* d_alpha: the same, plus scratch and bias/dysum both or neither. */
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(3, NCHW, Z, DY, B, DS, DA, SC, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, 7, Z, DY, B, DS, DA, SC, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, SC, -1, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, SC, n, 0, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, SC, n, cout, 3, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, SC, n, cout, 0, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, SC, n, cout, g, 0, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, SC, n, cout, g, 129, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, SC, n, cout, g, e, 0, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, NULL, DY, B, DS, DA, SC, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, NULL, B, DS, DA, SC, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, NULL, SC, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, NULL, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, NULL, DA, SC, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, NULL, DS, DA, SC, n, cout, g, e, hw, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_dalpha(F32, NCHW, Z, DY, B, DS, DA, SC, 8, 8, 1, 8, 1LL << 60, NULL));
    EU_EXPECT(cc_bwd_mixture_dalpha_scratch_elems(0, cout, e, hw) == 0, "scratch for N = 0");
    EU_EXPECT(cc_bwd_mixture_dalpha_scratch_elems(n, 0, e, hw) == 0, "scratch for Cout = 0");
    EU_EXPECT(cc_bwd_mixture_dalpha_scratch_elems(n, cout, 129, hw) == 0, "scratch for E = 129");
    EU_EXPECT(cc_bwd_mixture_dalpha_scratch_elems(n, cout, e, 0) == 0, "scratch for plane = 0");
    EU_EXPECT(cc_bwd_mixture_dalpha_scratch_elems(8, 8, 8, 1LL << 60) == 0, "scratch for an overflowing size");

    /* filters */
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(3, 0, W, DW, e, cout, cin, kh, kw, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 0, W, DW, 0, cout, cin, kh, kw, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 0, W, DW, 129, cout, cin, kh, kw, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 0, W, DW, e, 0, cin, kh, kw, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 0, W, DW, e, cout, 0, kh, kw, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 0, W, DW, e, cout, cin, 0, kw, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 1, W, DW, e, cout, cin, kh, -3, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 1, W, DW, e, cout, cin, kh, kw, 0, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 1, W, DW, e, cout, cin, kh, kw, 3, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 1, NULL, DW, e, cout, cin, kh, kw, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 1, W, NULL, e, cout, cin, kh, kw, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 0, W, DW, e, cout, cin, 1 << 16, 1 << 16, g, NULL));
    EXPECT_REFUSED(cc_launch_bwd_mixture_filters(F32, 0, W, DW, 128, 1 << 30, 1 << 30, 1 << 10, 1 << 10, 1, NULL));

    /* The refused calls wrote nothing. */
    float *h = eu_fetch(&out);
    EU_EXPECT(eu_all_nan(h, z_n), "a refused scale_dy wrote dy_mix");
    free(h);
    h = eu_fetch(&da);
    EU_EXPECT(eu_all_nan(h, (size_t)n * e), "a refused d_alpha wrote d_alpha");
    free(h);
    h = eu_fetch(&sc);
    EU_EXPECT(eu_all_nan(h, sc.n), "a refused d_alpha wrote scratch");
    free(h);
    h = eu_fetch(&dw);
    EU_EXPECT(eu_all_nan(h, w_n), "a refused filters wrote d_experts");
    free(h);

    eu_buffer *bs[] = {&dy, &z, &out, &a, &da, &b, &ds, &sc, &w, &dw};
    for (size_t i = 0; i < sizeof bs / sizeof bs[0]; ++i) eu_buffer_free(bs[i]);
}

int main(void)
{
    eu_seed_from_env();
    const double t0 = eu_now();
    activation_sweep();
    const double t1 = eu_now();
    filters_sweep();
    const double t2 = eu_now();
    refusals();
    eu_expect_all_launched("backward_mixture");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_backward_mixture: %d runs, %d launches (scale_dy + d_alpha %.1f s, filters %.1f s)\n", cases,
           launches, t1 - t0, t2 - t1);
    if (eu_failures) printf("test_emu_backward_mixture: failed; replay with the seed printed above\n");
    return eu_finish("test_emu_backward_mixture");
}
