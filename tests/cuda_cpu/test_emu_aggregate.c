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
 * Every case runs every variant (cc_launch_aggregate_variant; variant 0
 * through cc_launch_aggregate) on the same inputs, the outputs poisoned
 * before each, and must equal variant 0's outputs bit for bit (all three
 * compute the same FMA chain in expert order; AUTO may pick any of them):
 * variant 1's 16-sample chunks are reached whole and partial
 * (N = 15, 16, 17, 25, 31, 32, 33, 40, 47), variant 2's one-sample rows with
 * grid caps that make them loop. A variant out of range must be refused
 * without a launch or a write.
 *
 * Tolerance: each output is a chain of E fused multiply-adds in float, within
 * E * 2^-24 * sum_e |alpha_e * w_e| of the exact sum (plus one rounding):
 * f32_rtol = (E + 2) * 2^-24 of that magnitude; f16 and bf16 filters are
 * that f32 value rounded once more (emu_dtype.h, ed_compare). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Kernel launches so far of every instance in kernels/aggregate.cu (the
 * candidates' kernels included). */
static long long aggregate_launches(void)
{
    return cc_cpu_launch_count("aggregate_kernel") + cc_cpu_launch_count("aggregate_one_sample_kernel");
}

/* One case, run by every variant on the same inputs: before each run the
 * outputs are poisoned again (NaN), so a variant that leaves an output
 * unwritten fails even where another variant wrote it right. */
static void run_case(const agg_case *k)
{
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

    double *want = eu_doubles(out_n), *mag = eu_doubles(out_n);
    for (int n = 0; n < k->n; ++n)
        for (int e = 0; e < k->e; ++e) {
            const double al = a[(size_t)n * k->e + e];
            for (size_t j = 0; j < f; ++j) {
                want[(size_t)n * f + j] += al * w[(size_t)e * f + j];
                mag[(size_t)n * f + j] += fabs(al * w[(size_t)e * f + j]);
            }
        }
    double *wantb = eu_doubles(ob_n), *magb = eu_doubles(ob_n);
    for (int n = 0; n < k->n; ++n)
        for (int e = 0; e < k->e; ++e)
            for (int o = 0; o < k->cout; ++o) {
                const double t = (double)a[(size_t)n * k->e + e] * b[(size_t)e * k->cout + o];
                wantb[(size_t)n * k->cout + o] += t;
                magb[(size_t)n * k->cout + o] += fabs(t);
            }
    const double rtol = (k->e + 2) * EU_U;
    /* Variant 0's outputs: the others must equal them bit for bit (the same
     * FMA chain in expert order), so AUTO's choice never changes a result. */
    float *first = NULL, *firstb = NULL;

    for (int variant = 0; variant < CC_AGGREGATE_VARIANTS; ++variant) {
        ++cases;
        ed_poison(&df);
        eu_poison(&dbo);
        cc_cpu_set_grid_cap((unsigned)k->cap);
        const long long before = aggregate_launches();
        /* Variant 0 through the library's entry point, which must stay it. */
        if (variant == 0)
            EU_LAUNCH(cc_launch_aggregate(k->dtype, dw.data, k->bias ? db.data : NULL, da.data, df.data,
                                          k->bias ? dbo.data : NULL, k->f, k->cout, k->n, k->e, NULL));
        else
            EU_LAUNCH(cc_launch_aggregate_variant(variant, k->dtype, dw.data, k->bias ? db.data : NULL, da.data,
                                                  df.data, k->bias ? dbo.data : NULL, k->f, k->cout, k->n, k->e, NULL));
        launches += (int)(aggregate_launches() - before);
        cc_cpu_set_grid_cap(0);

        char what[224];
        snprintf(what, sizeof what,
                 "variant %d (%s) %s filters (|W|=%lld Cout=%d N=%d E=%d bias=%d misaligned=%d cap=%d)", variant,
                 cc_aggregate_variant_name(variant), ed_name(k->dtype), k->f, k->cout, k->n, k->e, k->bias,
                 k->misaligned, k->cap);
        float *got = ed_fetch(k->dtype, &df, out_n);
        ed_compare(what, k->dtype, got, want, mag, out_n, rtol);
        ed_guards_intact(&df, what);
        if (first == NULL)
            first = got;
        else {
            EU_EXPECT(memcmp(got, first, out_n * sizeof(float)) == 0, "%s: filters differ from variant 0's bits", what);
            free(got);
        }

        float *gotb = eu_floats(ob_n);
        eu_download(&dbo, gotb);
        if (k->bias) {
            char bwhat[256];
            snprintf(bwhat, sizeof bwhat, "biases of %s", what);
            eu_compare(bwhat, gotb, wantb, magb, ob_n, 1e-30, rtol);
        } else {
            for (size_t i = 0; i < ob_n; ++i)
                if (!isnan(gotb[i])) {
                    EU_EXPECT(0, "%s: biases written although bias is NULL", what);
                    break;
                }
        }
        eu_guards_intact(&dbo, "biases");
        if (firstb == NULL)
            firstb = gotb;
        else {
            EU_EXPECT(!k->bias || memcmp(gotb, firstb, ob_n * sizeof(float)) == 0,
                      "%s: biases differ from variant 0's bits", what);
            free(gotb);
        }
    }
    free(first);
    free(firstb);
    free(want);
    free(mag);
    free(wantb);
    free(magb);
    free(w);
    free(b);
    free(a);
    ed_buffer_free(&dw);
    ed_buffer_free(&df);
    eu_buffer_free(&db);
    eu_buffer_free(&da);
    eu_buffer_free(&dbo);
}

/* A variant out of range is refused: cudaErrorInvalidValue, no launch, the
 * (valid, poisoned) outputs untouched; and it has no name. */
static void refuse_variants(void)
{
    const long long f = 64;
    const int cout = 5, n = 3, e = 2;
    float *w = eu_random((size_t)e * f, -1.0f, 1.0f), *b = eu_random((size_t)e * cout, -1.0f, 1.0f);
    float *a = eu_random((size_t)n * e, 0.0f, 1.0f);
    eu_buffer dw = eu_buffer_make((size_t)e * f, 0), db = eu_buffer_make((size_t)e * cout, 0);
    eu_buffer da = eu_buffer_make((size_t)n * e, 0), df = eu_buffer_make((size_t)n * f, 0);
    eu_buffer dbo = eu_buffer_make((size_t)n * cout, 0);
    eu_upload(&dw, w);
    eu_upload(&db, b);
    eu_upload(&da, a);
    static const int bad[] = {-1, CC_AGGREGATE_VARIANTS, CC_AGGREGATE_VARIANTS + 1, 1 << 30};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        eu_poison(&df);
        eu_poison(&dbo);
        const long long before = aggregate_launches();
        const cudaError_t err = cc_launch_aggregate_variant(bad[i], CC_DTYPE_F32, dw.data, db.data, da.data, df.data,
                                                            dbo.data, f, cout, n, e, NULL);
        EU_EXPECT(err == cudaErrorInvalidValue, "variant %d: returned %d, not cudaErrorInvalidValue", bad[i], (int)err);
        EU_EXPECT(aggregate_launches() == before, "variant %d: a kernel was launched", bad[i]);
        float *got = eu_floats((size_t)n * f), *gotb = eu_floats((size_t)n * cout);
        eu_download(&df, got);
        eu_download(&dbo, gotb);
        for (size_t j = 0; j < (size_t)n * f; ++j)
            if (!isnan(got[j])) {
                EU_EXPECT(0, "variant %d: filters written", bad[i]);
                break;
            }
        for (size_t j = 0; j < (size_t)n * cout; ++j)
            if (!isnan(gotb[j])) {
                EU_EXPECT(0, "variant %d: biases written", bad[i]);
                break;
            }
        free(got);
        free(gotb);
        const char *name = cc_aggregate_variant_name(bad[i]);
        EU_EXPECT(name != NULL && strcmp(name, "?") == 0, "variant %d: named '%s', not '?'", bad[i],
                  name ? name : "(null)");
    }
    for (int v = 0; v < CC_AGGREGATE_VARIANTS; ++v) {
        const char *name = cc_aggregate_variant_name(v);
        EU_EXPECT(name != NULL && strcmp(name, "?") != 0 && name[0] != '\0', "variant %d has no name", v);
    }
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
        /* Partial and whole chunks of variant 1's 16 samples (N one short
         * of, at and past 16 and 32), each with the weights vectorised and
         * scalar (|W| = 4100 is a multiple of 4 but not of 8), misaligned
         * pointers, E from 1 to 32, and grid caps of 1 (the sample chunks
         * loop over gridDim.y, variant 2's samples over its rows) and 0. */
        static const int chunks[] = {15, 16, 31, 32, 33, 47};
        for (size_t ni = 0; ni < sizeof chunks / sizeof chunks[0]; ++ni) {
            agg_case k = {0};
            k.dtype = dtype;
            k.f = (long long[]){1024, 257, 4100}[ni % 3];
            k.e = (int[]){1, 8, 32, 5}[ni % 4];
            k.n = chunks[ni];
            k.cout = 1 + (int)(ni * 53 % 300);
            k.bias = ni % 2 == 0;
            k.misaligned = k.f % vec == 0 ? (int)(ni / 3) + 1 : 0;
            k.cap = ni % 2 == 0 ? 1 : 0;
            run_case(&k);
        }
    }
    refuse_variants();
    EU_EXPECT(cc_launch_aggregate(CC_DTYPE_F32, NULL, NULL, NULL, NULL, NULL, 0, 1, 1, 1, NULL) ==
                  cudaErrorInvalidValue,
              "an empty filter must be refused");
    EU_EXPECT(cc_launch_aggregate(3, NULL, NULL, NULL, NULL, NULL, 8, 1, 1, 1, NULL) == cudaErrorInvalidValue,
              "an unknown dtype must be refused");
    for (int v = 1; v < CC_AGGREGATE_VARIANTS; ++v) {
        EU_EXPECT(cc_launch_aggregate_variant(v, CC_DTYPE_F32, NULL, NULL, NULL, NULL, NULL, 0, 1, 1, 1, NULL) ==
                      cudaErrorInvalidValue,
                  "variant %d: an empty filter must be refused", v);
        EU_EXPECT(cc_launch_aggregate_variant(v, 3, NULL, NULL, NULL, NULL, NULL, 8, 1, 1, 1, NULL) ==
                      cudaErrorInvalidValue,
                  "variant %d: an unknown dtype must be refused", v);
    }
    eu_expect_all_launched("aggregate");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_aggregate: %d cases (all variants), %d launches\n", cases, launches);
    return eu_finish("test_emu_aggregate");
}
