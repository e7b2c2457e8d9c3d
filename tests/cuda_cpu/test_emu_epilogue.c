/* kernels/epilogue.cu on the CPU execution layer, against double-precision
 * references, for f32, f16 and bf16 elements (drawn as floats, rounded to
 * the dtype; the reference uses the rounded values):
 *   bias_activation   dst = act(src + bias[n][o]) for every layout pair the
 *                     launcher takes: NCHW -> NCHW and NHWC -> NHWC, in place
 *                     and out of place (16-byte path when the row, the plane
 *                     or Cout, is a multiple of 4 floats or 8 halves and the
 *                     pointers are aligned; pairs of halves for even rows on
 *                     4-byte boundaries; scalar otherwise, also for pointers
 *                     one or two elements off), and NCHW -> NHWC out of place
 *                     (the shared-memory transpose, with partial tiles);
 *                     bias or none;
 *   mixture_combine   y = act(sum_e alpha_e (z_e + b_e)) over groups, NCHW and
 *                     NHWC, with planes that leave a partial group of 4 pixels.
 * Each with lowered grid caps too, so the grid-stride loops loop.
 *
 * Tolerance (f32 part, emu_dtype.h's ed_compare adds the one rounding to
 * f16/bf16): bias_activation adds once and activates: 4 * 2^-24 of
 * |src| + |b|. mixture_combine sums 2E products in float: (2E + 4) * 2^-24
 * of sum_e |alpha_e| (|z_e| + |b_e|). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "emu_dtype.h"
#include "emu_util.h"
#include "epilogue.h"

static int cases, launches;

static double activate(int act, double v)
{
    if (act == 1) return v < 0 ? 0 : v;
    if (act == 2) return v / (1.0 + exp(-v));
    return v;
}

static const char *layout_name(int layout) { return layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC"; }

/* Element (s, o, p) of an [N][Cout][plane] tensor stored in `layout`. */
static size_t at(int layout, int s, int o, long long p, int cout, long long plane)
{
    return layout == CC_LAYOUT_NCHW ? ((size_t)s * cout + o) * (size_t)plane + (size_t)p
                                    : ((size_t)s * (size_t)plane + (size_t)p) * cout + o;
}

/* The ways in and out: same layout in place, same layout out of place, and
 * the transposing NCHW -> NHWC. */
typedef struct way {
    int src_layout, dst_layout, in_place;
} way;
static const way ways[] = {{CC_LAYOUT_NCHW, CC_LAYOUT_NCHW, 1},
                           {CC_LAYOUT_NCHW, CC_LAYOUT_NCHW, 0},
                           {CC_LAYOUT_NHWC, CC_LAYOUT_NHWC, 1},
                           {CC_LAYOUT_NHWC, CC_LAYOUT_NHWC, 0},
                           {CC_LAYOUT_NCHW, CC_LAYOUT_NHWC, 0}};
#define WAY_COUNT 5

/* src_off and dst_off: elements off a 16-byte boundary (in place: src_off). */
static void bias_activation_case(int dtype, way w, int n, int cout, long long plane, int bias, int act, int src_off,
                                 int dst_off, int cap)
{
    ++cases;
    const size_t count = (size_t)n * cout * (size_t)plane, es = ed_size(dtype);
    float *x = ed_random(dtype, count, -3.0f, 3.0f), *b = eu_random((size_t)n * cout, -1.0f, 1.0f);
    if (w.in_place) dst_off = src_off;
    ed_buffer dsrc = ed_buffer_of(dtype, x, count, (size_t)src_off * es);
    ed_buffer ddst = w.in_place ? dsrc : ed_buffer_make(count * es, (size_t)dst_off * es);
    eu_buffer db = eu_buffer_make((size_t)n * cout, 0);
    eu_upload(&db, b);
    cc_cpu_set_grid_cap((unsigned)cap);
    const long long before = cc_cpu_launch_count("bias_activation");
    EU_LAUNCH(cc_launch_bias_activation(dtype, w.src_layout, dsrc.data, w.dst_layout, ddst.data, bias ? db.data : NULL,
                                        n, cout, plane, act, NULL));
    launches += (int)(cc_cpu_launch_count("bias_activation") - before);
    cc_cpu_set_grid_cap(0);
    double *want = eu_doubles(count), *mag = eu_doubles(count);
    for (int s = 0; s < n; ++s)
        for (int o = 0; o < cout; ++o)
            for (long long p = 0; p < plane; ++p) {
                const double bb = bias ? b[(size_t)s * cout + o] : 0.0, v = x[at(w.src_layout, s, o, p, cout, plane)];
                const size_t d = at(w.dst_layout, s, o, p, cout, plane);
                want[d] = activate(act, v + bb);
                mag[d] = fabs(v) + fabs(bb);
            }
    float *got = ed_fetch(dtype, &ddst, count);
    char what[192];
    snprintf(what, sizeof what, "%s bias_activation %s->%s%s (N=%d Cout=%d plane=%lld bias=%d act=%d off=%d,%d cap=%d)",
             ed_name(dtype), layout_name(w.src_layout), layout_name(w.dst_layout), w.in_place ? " in place" : "", n,
             cout, plane, bias, act, src_off, dst_off, cap);
    ed_compare(what, dtype, got, want, mag, count, 4 * EU_U);
    ed_guards_intact(&ddst, what);
    if (!w.in_place) {
        /* The source is left as it was. */
        float *src_after = ed_fetch(dtype, &dsrc, count);
        size_t changed = 0;
        for (size_t i = 0; i < count; ++i) changed += src_after[i] != x[i];
        EU_EXPECT(changed == 0, "%s: %zu source elements changed", what, changed);
        free(src_after);
        ed_guards_intact(&dsrc, what);
        ed_buffer_free(&ddst);
    }
    free(x);
    free(b);
    free(want);
    free(mag);
    free(got);
    ed_buffer_free(&dsrc);
    eu_buffer_free(&db);
}

static void mixture_case(int dtype, int layout, int n, int cout, int groups, int e, long long plane, int bias, int act,
                         int cap)
{
    ++cases;
    const int cg = cout / groups;
    const size_t z_n = (size_t)n * e * cout * (size_t)plane, y_n = (size_t)n * cout * (size_t)plane;
    float *z = ed_random(dtype, z_n, -2.0f, 2.0f), *al = eu_random((size_t)n * e, 0.0f, 1.0f);
    float *b = eu_random((size_t)e * cout, -1.0f, 1.0f);
    ed_buffer dz = ed_buffer_of(dtype, z, z_n, 0), dy = ed_buffer_make(y_n * ed_size(dtype), 0);
    eu_buffer da = eu_buffer_make((size_t)n * e, 0), db = eu_buffer_make((size_t)e * cout, 0);
    eu_upload(&da, al);
    eu_upload(&db, b);
    cc_cpu_set_grid_cap((unsigned)cap);
    const long long before = cc_cpu_launch_count("mixture_combine");
    EU_LAUNCH(cc_launch_mixture_combine(dtype, layout, dz.data, da.data, bias ? db.data : NULL, dy.data, n, cout,
                                        groups, e, plane, act, NULL));
    launches += (int)(cc_cpu_launch_count("mixture_combine") - before);
    cc_cpu_set_grid_cap(0);
    double *want = eu_doubles(y_n), *mag = eu_doubles(y_n);
    for (int s = 0; s < n; ++s)
        for (int o = 0; o < cout; ++o) {
            const int g = o / cg, oc = o % cg;
            for (long long p = 0; p < plane; ++p) {
                double acc = 0, m = 0;
                for (int k = 0; k < e; ++k) {
                    const double a = al[(size_t)s * e + k];
                    /* z channel g*E*Cg + k*Cg + oc of E*Cout. */
                    const double zv = z[at(layout, s, g * e * cg + k * cg + oc, p, e * cout, plane)];
                    const double bv = bias ? b[(size_t)k * cout + o] : 0.0;
                    acc += a * (zv + bv);
                    m += fabs(a) * (fabs(zv) + fabs(bv));
                }
                const size_t d = at(layout, s, o, p, cout, plane);
                want[d] = activate(act, acc);
                mag[d] = m;
            }
        }
    float *got = ed_fetch(dtype, &dy, y_n);
    char what[192];
    snprintf(what, sizeof what, "%s mixture_combine %s (N=%d Cout=%d g=%d E=%d plane=%lld bias=%d act=%d cap=%d)",
             ed_name(dtype), layout_name(layout), n, cout, groups, e, plane, bias, act, cap);
    ed_compare(what, dtype, got, want, mag, y_n, (2 * e + 4) * EU_U);
    ed_guards_intact(&dy, what);
    free(z);
    free(al);
    free(b);
    free(want);
    free(mag);
    free(got);
    ed_buffer_free(&dz);
    ed_buffer_free(&dy);
    eu_buffer_free(&da);
    eu_buffer_free(&db);
}

int main(void)
{
    eu_seed_from_env();
    /* (N, Cout): Cout 1 and 25 odd, 6 even (pairs of halves in NHWC), 8 a
     * whole vector in NHWC. */
    static const int shapes[][2] = {{1, 1}, {1, 6}, {2, 8}, {2, 25}};
    static const long long plane_[] = {1, 3, 4, 7, 12, 49, 64, 196};
    for (int di = 0; di < ED_DTYPE_COUNT; ++di) {
        const int dtype = ed_dtypes[di];
        int i = 0;
        for (int wi = 0; wi < WAY_COUNT; ++wi)
            for (size_t a = 0; a < sizeof shapes / sizeof shapes[0]; ++a)
                for (size_t b = 0; b < sizeof plane_ / sizeof plane_[0]; ++b, ++i) {
                    /* Offsets (elements) for rows that could take a vector
                     * path: one off (scalar), two off (halves: pairs). */
                    const long long row = ways[wi].src_layout == CC_LAYOUT_NHWC ? shapes[a][1] : plane_[b];
                    const int off = row % 2 == 0 ? (int)((a + b) % 3) : 0;
                    bias_activation_case(dtype, ways[wi], shapes[a][0], shapes[a][1], plane_[b], i % 3 != 0, i % 3, off,
                                         i % 2 ? off : 0, 0);
                }
        /* Each pointer misaligned on its own, on rows every vector path
         * takes (NCHW plane 64, NHWC Cout 8): one element off (scalar) and
         * two (halves: pairs; f32: scalar). A launcher that tests the wrong
         * pointer takes a vector path on the misaligned one, which the
         * layer stops (issue 18). */
        for (int wi = 0; wi < WAY_COUNT; ++wi)
            for (int off = 1; off <= 2 && !ways[wi].in_place; ++off) {
                bias_activation_case(dtype, ways[wi], 2, 8, 64, 1, 1, off, 0, 0);
                bias_activation_case(dtype, ways[wi], 2, 8, 64, 1, 1, 0, off, 0);
            }
        for (int cap = 1; cap <= 3; ++cap)
            for (int wi = 0; wi < WAY_COUNT; ++wi) {
                bias_activation_case(dtype, ways[wi], 4, 10, 64, 1, 2, 0, 0, cap); /* vectors (NCHW) */
                bias_activation_case(dtype, ways[wi], 3, 11, 49, 1, 1, 0, 0, cap); /* scalar */
                bias_activation_case(dtype, ways[wi], 2, 16, 32, 1, 0, 1, 0, cap); /* misaligned: scalar */
                bias_activation_case(dtype, ways[wi], 2, 70, 45, 1, 2, 0, 0, cap); /* several transpose tiles */
            }
        static const long long mplanes[] = {1, 2, 3, 4, 5, 9, 49, 64};
        for (int layout = CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout) {
            for (size_t p = 0; p < sizeof mplanes / sizeof mplanes[0]; ++p)
                for (int v = 0; v < 3; ++v, ++i) {
                    const int groups = 1 + v, cout = groups * (1 + (int)p % 3), e = (int[]){1, 3, 8}[v];
                    mixture_case(dtype, layout, 1 + (int)p % 2, cout, groups, e, mplanes[p], i % 2, i % 3, 0);
                }
            for (int cap = 1; cap <= 3; ++cap) mixture_case(dtype, layout, 3, 8, 2, 4, 67, 1, 2, cap);
        }
    }
    char buf[64];
    EU_EXPECT(cc_launch_bias_activation(CC_DTYPE_F32, 0, buf, 0, buf, NULL, 0, 4, 4, 0, NULL) == cudaErrorInvalidValue,
              "N = 0 must be refused");
    EU_EXPECT(cc_launch_bias_activation(3, 0, buf, 0, buf, NULL, 1, 4, 4, 0, NULL) == cudaErrorInvalidValue,
              "an unknown dtype must be refused");
    EU_EXPECT(cc_launch_bias_activation(CC_DTYPE_F16, 2, buf, 2, buf, NULL, 1, 4, 4, 0, NULL) == cudaErrorInvalidValue,
              "an unknown layout must be refused");
    EU_EXPECT(cc_launch_bias_activation(CC_DTYPE_F16, CC_LAYOUT_NHWC, buf, CC_LAYOUT_NCHW, buf + 32, NULL, 1, 4, 4, 0,
                                        NULL) == cudaErrorInvalidValue,
              "NHWC -> NCHW must be refused");
    EU_EXPECT(cc_launch_bias_activation(CC_DTYPE_F16, CC_LAYOUT_NCHW, buf, CC_LAYOUT_NHWC, buf, NULL, 1, 4, 4, 0,
                                        NULL) == cudaErrorInvalidValue,
              "a transposing epilogue in place must be refused");
    EU_EXPECT(cc_launch_mixture_combine(CC_DTYPE_F32, CC_LAYOUT_NCHW, NULL, NULL, NULL, NULL, 1, 5, 2, 1, 4, 0, NULL) ==
                  cudaErrorInvalidValue,
              "Cout not divisible by groups must be refused");
    EU_EXPECT(cc_launch_mixture_combine(CC_DTYPE_F32, 2, NULL, NULL, NULL, NULL, 1, 4, 2, 1, 4, 0, NULL) ==
                  cudaErrorInvalidValue,
              "an unknown layout must be refused");
    EU_EXPECT(cc_launch_mixture_combine(-1, CC_LAYOUT_NHWC, NULL, NULL, NULL, NULL, 1, 4, 2, 1, 4, 0, NULL) ==
                  cudaErrorInvalidValue,
              "an unknown dtype must be refused");
    eu_expect_all_launched("epilogue");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_epilogue: %d cases, %d launches\n", cases, launches);
    return eu_finish("test_emu_epilogue");
}
