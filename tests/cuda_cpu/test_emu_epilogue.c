/* kernels/epilogue.cu on the CPU execution layer, against double-precision
 * references:
 *   bias_activation   y = act(y + bias[i / plane]) in place (16-byte path
 *                     when the plane is a multiple of 4 floats and y is
 *                     aligned, scalar otherwise), bias or none;
 *   mixture_combine   y = act(sum_e alpha_e (z_e + b_e)) over groups, with
 *                     planes that leave a partial group of 4 pixels.
 * Each with lowered grid caps too, so the grid-stride loops loop.
 *
 * Tolerance: bias_activation adds once and activates: 4 * 2^-24 of
 * |y| + |b|. mixture_combine sums 2E products in float: (2E + 4) * 2^-24 of
 * sum_e |alpha_e| (|z_e| + |b_e|). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "emu_util.h"
#include "epilogue.h"

static int cases, launches;

static double activate(int act, double v)
{
    if (act == 1) return v < 0 ? 0 : v;
    if (act == 2) return v / (1.0 + exp(-v));
    return v;
}

static void bias_activation_case(long long planes, long long plane, int bias, int act, int misaligned, int cap)
{
    ++cases;
    const size_t n = (size_t)(planes * plane);
    float *y = eu_random(n, -3.0f, 3.0f), *b = eu_random((size_t)planes, -1.0f, 1.0f);
    eu_buffer dy = eu_buffer_make(n, misaligned), db = eu_buffer_make((size_t)planes, 0);
    eu_upload(&dy, y);
    eu_upload(&db, b);
    cc_cpu_set_grid_cap((unsigned)cap);
    const long long before = cc_cpu_launch_count("bias_activation");
    EU_LAUNCH(cc_launch_bias_activation(dy.data, bias ? db.data : NULL, planes, plane, act, NULL));
    launches += (int)(cc_cpu_launch_count("bias_activation") - before);
    cc_cpu_set_grid_cap(0);
    double *want = eu_doubles(n), *mag = eu_doubles(n);
    for (size_t i = 0; i < n; ++i) {
        const double bb = bias ? b[i / (size_t)plane] : 0.0;
        want[i] = activate(act, y[i] + bb);
        mag[i] = fabs((double)y[i]) + fabs(bb);
    }
    float *got = eu_floats(n);
    eu_download(&dy, got);
    char what[128];
    snprintf(what, sizeof what, "bias_activation (planes=%lld plane=%lld bias=%d act=%d misaligned=%d cap=%d)", planes,
             plane, bias, act, misaligned, cap);
    eu_compare(what, got, want, mag, n, 1e-30, 4 * EU_U);
    eu_guards_intact(&dy, what);
    free(y);
    free(b);
    free(want);
    free(mag);
    free(got);
    eu_buffer_free(&dy);
    eu_buffer_free(&db);
}

static void mixture_case(int n, int cout, int groups, int e, long long plane, int bias, int act, int cap)
{
    ++cases;
    const int cg = cout / groups;
    const size_t z_n = (size_t)n * groups * e * cg * (size_t)plane, y_n = (size_t)n * cout * (size_t)plane;
    float *z = eu_random(z_n, -2.0f, 2.0f), *al = eu_random((size_t)n * e, 0.0f, 1.0f);
    float *b = eu_random((size_t)e * cout, -1.0f, 1.0f);
    eu_buffer dz = eu_buffer_make(z_n, 0), da = eu_buffer_make((size_t)n * e, 0),
              db = eu_buffer_make((size_t)e * cout, 0);
    eu_buffer dy = eu_buffer_make(y_n, 0);
    eu_upload(&dz, z);
    eu_upload(&da, al);
    eu_upload(&db, b);
    cc_cpu_set_grid_cap((unsigned)cap);
    const long long before = cc_cpu_launch_count("mixture_combine");
    EU_LAUNCH(cc_launch_mixture_combine(dz.data, da.data, bias ? db.data : NULL, dy.data, n, cout, groups, e, plane,
                                        act, NULL));
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
                    const double zv = z[((((size_t)s * groups + g) * e + k) * cg + oc) * (size_t)plane + (size_t)p];
                    const double bv = bias ? b[(size_t)k * cout + o] : 0.0;
                    acc += a * (zv + bv);
                    m += fabs(a) * (fabs(zv) + fabs(bv));
                }
                const size_t at = ((size_t)s * cout + o) * (size_t)plane + (size_t)p;
                want[at] = activate(act, acc);
                mag[at] = m;
            }
        }
    float *got = eu_floats(y_n);
    eu_download(&dy, got);
    char what[160];
    snprintf(what, sizeof what, "mixture_combine (N=%d Cout=%d g=%d E=%d plane=%lld bias=%d act=%d cap=%d)", n, cout,
             groups, e, plane, bias, act, cap);
    eu_compare(what, got, want, mag, y_n, 1e-30, (2 * e + 4) * EU_U);
    eu_guards_intact(&dy, what);
    free(z);
    free(al);
    free(b);
    free(want);
    free(mag);
    free(got);
    eu_buffer_free(&dz);
    eu_buffer_free(&da);
    eu_buffer_free(&db);
    eu_buffer_free(&dy);
}

int main(void)
{
    eu_seed_from_env();
    static const long long planes_[] = {1, 3, 16, 50};
    static const long long plane_[] = {1, 3, 4, 7, 12, 49, 64, 196};
    int i = 0;
    for (size_t a = 0; a < sizeof planes_ / sizeof planes_[0]; ++a)
        for (size_t b = 0; b < sizeof plane_ / sizeof plane_[0]; ++b, ++i)
            bias_activation_case(planes_[a], plane_[b], i % 3 != 0, i % 3, plane_[b] % 4 == 0 && (a + b) % 2 == 1, 0);
    for (int cap = 1; cap <= 3; ++cap) {
        bias_activation_case(40, 64, 1, 2, 0, cap); /* 16-byte path */
        bias_activation_case(33, 49, 1, 1, 0, cap); /* scalar path */
        bias_activation_case(20, 32, 1, 0, 1, cap); /* plane % 4 == 0 but y misaligned: scalar path */
    }
    static const long long mplanes[] = {1, 2, 3, 4, 5, 9, 49, 64};
    for (size_t p = 0; p < sizeof mplanes / sizeof mplanes[0]; ++p)
        for (int v = 0; v < 3; ++v, ++i) {
            const int groups = 1 + v, cout = groups * (1 + (int)p % 3), e = (int[]){1, 3, 8}[v];
            mixture_case(1 + (int)p % 2, cout, groups, e, mplanes[p], i % 2, i % 3, 0);
        }
    for (int cap = 1; cap <= 3; ++cap) mixture_case(3, 8, 2, 4, 67, 1, 2, cap);
    EU_EXPECT(cc_launch_bias_activation(NULL, NULL, 0, 4, 0, NULL) == cudaErrorInvalidValue,
              "0 planes must be refused");
    EU_EXPECT(cc_launch_mixture_combine(NULL, NULL, NULL, NULL, 1, 5, 2, 1, 4, 0, NULL) == cudaErrorInvalidValue,
              "Cout not divisible by groups must be refused");
    eu_expect_all_launched("epilogue");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_epilogue: %d cases, %d launches\n", cases, launches);
    return eu_finish("test_emu_epilogue");
}
