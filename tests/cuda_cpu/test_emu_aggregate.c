/* kernels/aggregate.cu on the CPU execution layer, against a double-precision
 * reference: filters[n][j] = sum_e alpha[n][e] * experts[e][j] and
 * biases[n][o] = sum_e alpha[n][e] * bias[e][o].
 *
 * The sweep reaches both instances (16-byte accesses when |W| % 4 == 0 and
 * experts and filters are aligned; scalar otherwise, also for |W| % 4 == 0
 * with either pointer 4 bytes off), N below, at and past multiples of the 8
 * samples a block mixes, E from 1 to 128 (alpha staged in dynamic shared
 * memory), with and without biases, and lowered grid caps so that the
 * grid-stride loop over weights and the loop over sample chunks (gridDim.y)
 * really loop. The bias blocks have no grid-stride loop (one thread per
 * output channel, up to the 2^20-block cap: 2^28 channels), so lowered caps
 * keep Cout within cap * 256.
 *
 * Tolerance: each output is a chain of E fused multiply-adds in float, within
 * E * 2^-24 * sum_e |alpha_e * w_e| of the exact sum (plus one rounding). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime.h>

#include "aggregate.h"
#include "emu_util.h"

static int cases, launches;

typedef struct agg_case {
    long long f;
    int cout, n, e, bias, misaligned, cap;
} agg_case;

static void run_case(const agg_case *k)
{
    ++cases;
    const size_t f = (size_t)k->f, w_n = (size_t)k->e * f, b_n = (size_t)k->e * k->cout, a_n = (size_t)k->n * k->e;
    const size_t out_n = (size_t)k->n * f, ob_n = (size_t)k->n * k->cout;
    float *w = eu_random(w_n, -1.0f, 1.0f), *b = eu_random(b_n, -1.0f, 1.0f), *a = eu_random(a_n, 0.0f, 1.0f);
    /* misaligned: 1 = experts 4 bytes off, 2 = filters 4 bytes off. */
    eu_buffer dw = eu_buffer_make(w_n, k->misaligned == 1), db = eu_buffer_make(b_n, 0), da = eu_buffer_make(a_n, 0);
    eu_buffer df = eu_buffer_make(out_n, k->misaligned == 2), dbo = eu_buffer_make(ob_n, 0);
    eu_upload(&dw, w);
    eu_upload(&db, b);
    eu_upload(&da, a);

    cc_cpu_set_grid_cap((unsigned)k->cap);
    const long long before = cc_cpu_launch_count("aggregate_kernel");
    EU_LAUNCH(cc_launch_aggregate(dw.data, k->bias ? db.data : NULL, da.data, df.data, k->bias ? dbo.data : NULL, k->f,
                                  k->cout, k->n, k->e, NULL));
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
    char what[160];
    snprintf(what, sizeof what, "filters (|W|=%lld Cout=%d N=%d E=%d bias=%d misaligned=%d cap=%d)", k->f, k->cout,
             k->n, k->e, k->bias, k->misaligned, k->cap);
    const double rtol = (k->e + 2) * EU_U;
    float *got = eu_floats(out_n);
    eu_download(&df, got);
    eu_compare(what, got, want, mag, out_n, 1e-30, rtol);
    eu_guards_intact(&df, what);
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
    eu_buffer_free(&dw);
    eu_buffer_free(&db);
    eu_buffer_free(&da);
    eu_buffer_free(&df);
    eu_buffer_free(&dbo);
}

int main(void)
{
    eu_seed_from_env();
    static const long long sizes[] = {1, 3, 4, 7, 8, 36, 100, 257, 1024, 2052};
    static const int experts[] = {1, 2, 5, 8, 17, 32, 64, 128};
    static const int batches[] = {1, 3, 8, 9, 17};
    int i = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; ++si)
        for (size_t ei = 0; ei < sizeof experts / sizeof experts[0]; ei += 1 + si % 2) {
            agg_case k = {0};
            k.f = sizes[si];
            k.e = experts[ei];
            k.n = batches[(si + ei) % 5];
            k.cout = 1 + (int)((si * 37 + ei * 11) % 300);
            k.bias = (si + ei) % 3 != 0;
            k.misaligned = sizes[si] % 4 == 0 ? i % 3 : 0;
            run_case(&k);
            ++i;
        }
    /* Lowered caps: the weight loop strides, the sample chunks loop over gridDim.y. */
    static const int caps[] = {1, 2, 3};
    for (size_t ci = 0; ci < sizeof caps / sizeof caps[0]; ++ci)
        for (int v = 0; v < 4; ++v) {
            agg_case k = {0};
            k.f = (long long[]){2048, 1001, 4100, 260}[v];
            k.e = (int[]){3, 8, 1, 33}[v];
            k.n = (int[]){17, 25, 9, 40}[v];
            k.cout = caps[ci] * 256 - v * 7;
            k.bias = v != 2;
            k.misaligned = v == 3 ? 1 : 0;
            k.cap = caps[ci];
            run_case(&k);
        }
    EU_EXPECT(cc_launch_aggregate(NULL, NULL, NULL, NULL, NULL, 0, 1, 1, 1, NULL) == cudaErrorInvalidValue,
              "an empty filter must be refused");
    eu_expect_all_launched("aggregate");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_aggregate: %d cases, %d launches\n", cases, launches);
    return eu_finish("test_emu_aggregate");
}
