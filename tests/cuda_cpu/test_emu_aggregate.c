/* kernels/aggregate.cu on the CPU execution layer, against a double-precision
 * reference: filters[n][j] = sum_e alpha[n][e] * experts[e][j] and
 * biases[n][o] = sum_e alpha[n][e] * bias[e][o], for experts and filters in
 * f32, f16 and bf16 (alpha, bias and biases f32). The experts are drawn as
 * floats and rounded to the dtype; the reference uses the rounded values.
 *
 * The sweep reaches every instance (16-byte accesses, 4 floats or 8 halves,
 * when |W| is a multiple of that and experts and filters are aligned; scalar
 * otherwise, also for such |W| with either pointer one element off), |W|
 * that is a multiple of 4 but not of 8 (halves scalar, floats vectorised),
 * N below, at and past multiples of the 8 samples a block mixes, E from 1 to
 * 128 (alpha staged in dynamic shared memory), with and without biases, and
 * lowered grid caps so that the grid-stride loops over weights and over
 * output channels (the bias blocks) and the loop over sample chunks
 * (gridDim.y) really loop.
 *
 * Tolerance: each output is a chain of E fused multiply-adds in float, within
 * E * 2^-24 * sum_e |alpha_e * w_e| of the exact sum (plus one rounding):
 * f32_rtol = (E + 2) * 2^-24 of that magnitude; f16 and bf16 filters are
 * that f32 value rounded once more (emu_dtype.h, ed_compare). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "aggregate.h"
#include "emu_dtype.h"
#include "emu_util.h"

static int cases, launches;

typedef struct agg_case {
    int dtype;
    long long f;
    int cout, n, e, bias, misaligned, cap;
} agg_case;

static void run_case(const agg_case *k)
{
    ++cases;
    const size_t f = (size_t)k->f, w_n = (size_t)k->e * f, b_n = (size_t)k->e * k->cout, a_n = (size_t)k->n * k->e;
    const size_t out_n = (size_t)k->n * f, ob_n = (size_t)k->n * k->cout, es = ed_size(k->dtype);
    float *w = ed_random(k->dtype, w_n, -1.0f, 1.0f), *b = eu_random(b_n, -1.0f, 1.0f);
    float *a = eu_random(a_n, 0.0f, 1.0f);
    /* misaligned: 1 = experts one element off, 2 = filters one element off. */
    ed_buffer dw = ed_buffer_of(k->dtype, w, w_n, k->misaligned == 1 ? es : 0);
    ed_buffer df = ed_buffer_make(out_n * es, k->misaligned == 2 ? es : 0);
    eu_buffer db = eu_buffer_make(b_n, 0), da = eu_buffer_make(a_n, 0), dbo = eu_buffer_make(ob_n, 0);
    eu_upload(&db, b);
    eu_upload(&da, a);

    cc_cpu_set_grid_cap((unsigned)k->cap);
    const long long before = cc_cpu_launch_count("aggregate_kernel");
    EU_LAUNCH(cc_launch_aggregate(k->dtype, dw.data, k->bias ? db.data : NULL, da.data, df.data,
                                  k->bias ? dbo.data : NULL, k->f, k->cout, k->n, k->e, NULL));
    launches += (int)(cc_cpu_launch_count("aggregate_kernel") - before);
    cc_cpu_set_grid_cap(0);

    double *want = eu_doubles(out_n), *mag = eu_doubles(out_n);
    for (int n = 0; n < k->n; ++n)
        for (int e = 0; e < k->e; ++e) {
            const double al = a[(size_t)n * k->e + e];
            for (size_t j = 0; j < f; ++j) {
                want[(size_t)n * f + j] += al * w[(size_t)e * f + j];
                mag[(size_t)n * f + j] += fabs(al * w[(size_t)e * f + j]);
            }
        }
    char what[192];
    snprintf(what, sizeof what, "%s filters (|W|=%lld Cout=%d N=%d E=%d bias=%d misaligned=%d cap=%d)",
             ed_name(k->dtype), k->f, k->cout, k->n, k->e, k->bias, k->misaligned, k->cap);
    const double rtol = (k->e + 2) * EU_U;
    float *got = ed_fetch(k->dtype, &df, out_n);
    ed_compare(what, k->dtype, got, want, mag, out_n, rtol);
    ed_guards_intact(&df, what);
    free(want);
    free(mag);
    free(got);

    float *gotb = eu_floats(ob_n);
    eu_download(&dbo, gotb);
    if (k->bias) {
        double *wantb = eu_doubles(ob_n), *magb = eu_doubles(ob_n);
        for (int n = 0; n < k->n; ++n)
            for (int e = 0; e < k->e; ++e)
                for (int o = 0; o < k->cout; ++o) {
                    const double t = (double)a[(size_t)n * k->e + e] * b[(size_t)e * k->cout + o];
                    wantb[(size_t)n * k->cout + o] += t;
                    magb[(size_t)n * k->cout + o] += fabs(t);
                }
        eu_compare("biases", gotb, wantb, magb, ob_n, 1e-30, rtol);
        free(wantb);
        free(magb);
    } else {
        for (size_t i = 0; i < ob_n; ++i)
            if (!isnan(gotb[i])) {
                EU_EXPECT(0, "%s: biases written although bias is NULL", what);
                break;
            }
    }
    eu_guards_intact(&dbo, "biases");
    free(gotb);
    free(w);
    free(b);
    free(a);
    ed_buffer_free(&dw);
    ed_buffer_free(&df);
    eu_buffer_free(&db);
    eu_buffer_free(&da);
    eu_buffer_free(&dbo);
}

int main(void)
{
    eu_seed_from_env();
    static const long long sizes[] = {1, 3, 4, 7, 8, 36, 100, 257, 1024, 2052, 264};
    static const int experts[] = {1, 2, 5, 8, 17, 32, 64, 128};
    static const int batches[] = {1, 3, 8, 9, 17};
    for (int di = 0; di < ED_DTYPE_COUNT; ++di) {
        const int dtype = ed_dtypes[di], vec = dtype == CC_DTYPE_F32 ? 4 : 8;
        int i = 0;
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; ++si)
            for (size_t ei = 0; ei < sizeof experts / sizeof experts[0]; ei += 1 + si % 2) {
                agg_case k = {0};
                k.dtype = dtype;
                k.f = sizes[si];
                k.e = experts[ei];
                k.n = batches[(si + ei) % 5];
                k.cout = 1 + (int)((si * 37 + ei * 11) % 300);
                k.bias = (si + ei) % 3 != 0;
                k.misaligned = sizes[si] % vec == 0 ? i % 3 : 0;
                run_case(&k);
                ++i;
            }
        /* Lowered caps: the weight and bias loops stride, the sample chunks
         * loop over gridDim.y. Cout past cap * 256 makes the bias loop loop. */
        static const int caps[] = {1, 2, 3};
        for (size_t ci = 0; ci < sizeof caps / sizeof caps[0]; ++ci)
            for (int v = 0; v < 4; ++v) {
                agg_case k = {0};
                k.dtype = dtype;
                k.f = (long long[]){2048, 1001, 4100, 264}[v];
                k.e = (int[]){3, 8, 1, 33}[v];
                k.n = (int[]){17, 25, 9, 40}[v];
                k.cout = caps[ci] * 256 * (1 + v % 2) + 3 - v * 7;
                k.bias = v != 2;
                k.misaligned = v == 3 ? 1 + (int)ci % 2 : 0;
                k.cap = caps[ci];
                run_case(&k);
            }
    }
    EU_EXPECT(cc_launch_aggregate(CC_DTYPE_F32, NULL, NULL, NULL, NULL, NULL, 0, 1, 1, 1, NULL) ==
                  cudaErrorInvalidValue,
              "an empty filter must be refused");
    EU_EXPECT(cc_launch_aggregate(3, NULL, NULL, NULL, NULL, NULL, 8, 1, 1, 1, NULL) == cudaErrorInvalidValue,
              "an unknown dtype must be refused");
    eu_expect_all_launched("aggregate");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_aggregate: %d cases, %d launches\n", cases, launches);
    return eu_finish("test_emu_aggregate");
}
