/* kernels/routing.cu on the CPU execution layer, against a double-precision
 * reference: alpha[n][e] = act(b[e] + sum_c W[e][c] * mean_hw x[n][c][hw]).
 *
 * The sweep reaches all 12 instances (dtype x layout x 16-byte or scalar
 * loads; f32 NCHW: 16-byte loads when HW % 4 == 0 and x is aligned, scalar
 * otherwise, also for HW % 4 == 0 with x 4 bytes off),
 * E from 1 to 128 across the four accumulators per lane, channel counts
 * that leave a warp's last group of kChannelsPerWarp short, and splits over
 * blocks: the production choice (cc_routing_splits for 132 SMs), 1, 2, 3 and
 * more than there are channels per split (dropped splits), in index order
 * and reversed (the last block of a sample to finish must do the sum
 * whatever the order), under the layer's store buffer (a writer's partials
 * reach the last block only through its __threadfence()). The split
 * buffers' counters must be zero again.
 *
 * Tolerance. The pooled means are float sums of HW terms and the logits
 * float sums of C terms; each is within (terms + 40) * 2^-24 of its
 * magnitude mag_e = |b_e| + sum_c |W_ec| * mean|x_c|, far below 1e-5 * mag_e
 * for these sizes. The sigmoid's slope is at most 1/4; the softmax's
 * changes by at most 2 * (1/T) * max_e |dz_e|. Plus 1e-6 for expf. With
 * C in the thousands (the large-C cases) 1e-5 is raised to
 * (HW + C + splits + 48) * 2^-24 (the splits' partial logits and the
 * 8 warps' partials are sums too).
 *
 * Every case runs for each dtype (f32, f16, bf16) of x and each layout
 * (NCHW [N][C][HW], NHWC [N][HW][C]). x is generated as floats and rounded
 * to the dtype, and the reference takes the rounded values, so the
 * tolerance is the f32 one: a half converts exactly and the pooling and FC
 * are f32 for every dtype; alpha is f32. NCHW with 16-bit x: 16-byte loads
 * when HW % 8 == 0 and x is aligned. NHWC: splits share pixels (more splits
 * than pixels leave empty blocks, which must still count in), the
 * vectorised path when C % (16 / sizeof) == 0 and x is aligned, channel
 * chunks of 256 columns (C past 256 vectors). The 16-bit dtypes share the
 * case lists between them (f16 every other case, bf16 the rest), to keep
 * the run time down; each gets every split kind and the large-C cases.
 *
 * Both variants (CC_ROUTING_VARIANTS, issue 19's candidates) run every case,
 * each on freshly poisoned buffers, against the same reference and
 * tolerance; a case with the production split count takes each variant's
 * own (cc_routing_splits_variant), forced counts are passed to both (variant
 * 1 may use fewer: NHWC column x pixel ranges, NCHW dropped splits). Variant
 * 1's paths: NCHW planes in groups of 1..32 lanes (HW from 1 to 1024, the
 * large-HW cases loop past one round of loads), several passes of 1024
 * channels (C = 2064 unsplit); NHWC column ranges, pixel ranges (C <= 32
 * f32 has one column range), chunks of 256 columns; the parallel hand-off
 * with more splits than a stripe (E = 128: 2 stripes). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "emu_dtype.h"
#include "emu_util.h"
#include "routing.h"

static int cases, launches;

typedef struct routing_case {
    int n, c, hw, e, softmax, splits, misaligned, reversed;
    int production; /* splits: the variant's own choice for 132 SMs */
    float inv_temperature;
    int dtype, layout;
} routing_case;

static void reference(const routing_case *k, const float *x, const float *wt, const float *b, double *alpha,
                      double *bound)
{
    const double atol = 1e-6, rtol = fmax(1e-5, (k->hw + k->c + k->splits + 48) * EU_U);
    for (int n = 0; n < k->n; ++n) {
        double z[CC_ROUTING_MAX_EXPERTS], mag[CC_ROUTING_MAX_EXPERTS], max_mag = 0;
        for (int e = 0; e < k->e; ++e) {
            z[e] = b[e];
            mag[e] = fabs((double)b[e]);
        }
        for (int c = 0; c < k->c; ++c) {
            double sum = 0, abs_sum = 0;
            for (int i = 0; i < k->hw; ++i) {
                const double v = x[((size_t)n * k->c + c) * k->hw + i];
                sum += v;
                abs_sum += fabs(v);
            }
            const double mean = sum / k->hw, mean_abs = abs_sum / k->hw;
            for (int e = 0; e < k->e; ++e) {
                z[e] += wt[(size_t)c * k->e + e] * mean;
                mag[e] += fabs((double)wt[(size_t)c * k->e + e]) * mean_abs;
            }
        }
        for (int e = 0; e < k->e; ++e) max_mag = mag[e] > max_mag ? mag[e] : max_mag;
        double *out = alpha + (size_t)n * k->e, *bnd = bound + (size_t)n * k->e;
        if (!k->softmax) {
            for (int e = 0; e < k->e; ++e) {
                out[e] = 1.0 / (1.0 + exp(-z[e]));
                bnd[e] = atol + 0.25 * rtol * mag[e];
            }
            continue;
        }
        double m = -INFINITY, total = 0;
        for (int e = 0; e < k->e; ++e) m = fmax(m, z[e] * k->inv_temperature);
        for (int e = 0; e < k->e; ++e) total += exp(z[e] * k->inv_temperature - m);
        for (int e = 0; e < k->e; ++e) {
            out[e] = exp(z[e] * k->inv_temperature - m) / total;
            bnd[e] = atol + 2.0 * k->inv_temperature * rtol * max_mag;
        }
    }
}

static void run_variant(const routing_case *k, int variant)
{
    const size_t x_n = (size_t)k->n * k->c * k->hw, w_n = (size_t)k->c * k->e, a_n = (size_t)k->n * k->e;
    float *x = eu_random(x_n, -2.0f, 2.0f); /* [N][C][HW], the reference's order */
    float *wt = eu_random(w_n, -1.0f, 1.0f);
    float *b = eu_random((size_t)k->e, -0.5f, 0.5f);
    ed_round_all(k->dtype, x, x_n);
    float *xl = x; /* x in the case's layout */
    if (k->layout == CC_LAYOUT_NHWC) {
        xl = eu_floats(x_n);
        for (int n = 0; n < k->n; ++n)
            for (int c = 0; c < k->c; ++c)
                for (int i = 0; i < k->hw; ++i)
                    xl[((size_t)n * k->hw + i) * k->c + c] = x[((size_t)n * k->c + c) * k->hw + i];
    }
    eu_buffer dx = ed_eu_upload(k->dtype, xl, x_n, k->misaligned), dw = eu_buffer_make(w_n, 0);
    eu_buffer db = eu_buffer_make(k->e, 0), da = eu_buffer_make(a_n, 0);
    if (xl != x) free(xl);
    eu_upload(&dw, wt);
    eu_upload(&db, b);
    const size_t partial_n = cc_routing_partial_elems(k->n, k->e, k->splits);
    eu_buffer dp = eu_buffer_make(partial_n, 0), dc = eu_buffer_make((size_t)k->n, 0);
    unsigned int *counters = (unsigned int *)(void *)dc.data;
    if (k->splits > 1) EU_EXPECT(cudaMemset(counters, 0, sizeof(unsigned int) * (size_t)k->n) == cudaSuccess, "memset");

    cc_cpu_set_block_order(k->reversed);
    const long long before = cc_cpu_launch_count("routing_");
    EU_LAUNCH(cc_launch_routing_variant(variant, k->dtype, k->layout, dx.data, dw.data, db.data, da.data, k->n, k->c,
                                        k->hw, k->e, k->softmax, k->inv_temperature, k->splits,
                                        k->splits > 1 ? dp.data : NULL, k->splits > 1 ? counters : NULL, NULL));
    cc_cpu_set_block_order(0);
    launches += (int)(cc_cpu_launch_count("routing_") - before);

    float *got = eu_floats(a_n);
    double *want = eu_doubles(a_n), *bound = eu_doubles(a_n);
    eu_download(&da, got);
    reference(k, x, wt, b, want, bound);
    char what[200];
    snprintf(what, sizeof what, "alpha (variant %d %s %s N=%d C=%d HW=%d E=%d %s splits=%d%s%s)", variant,
             ed_name(k->dtype), k->layout == CC_LAYOUT_NHWC ? "NHWC" : "NCHW", k->n, k->c, k->hw, k->e,
             k->softmax ? "softmax" : "sigmoid", k->splits, k->misaligned ? " x misaligned" : "",
             k->reversed ? " reversed" : "");
    eu_compare(what, got, want, bound, a_n, 0.0, 1.0); /* bound[i] is each weight's own tolerance */
    eu_guards_intact(&da, what);
    eu_guards_intact(&dp, "partial logits");
    if (k->splits > 1) {
        unsigned int *c = (unsigned int *)(void *)eu_floats((size_t)k->n);
        EU_EXPECT(cudaMemcpy(c, counters, sizeof(unsigned int) * (size_t)k->n, cudaMemcpyDeviceToHost) == cudaSuccess,
                  "copy");
        for (int n = 0; n < k->n; ++n)
            EU_EXPECT(c[n] == 0, "%s: counter %d is %u after the launch, not 0", what, n, c[n]);
        free(c);
    }
    free(x);
    free(wt);
    free(b);
    free(got);
    free(want);
    free(bound);
    eu_buffer_free(&dx);
    eu_buffer_free(&dw);
    eu_buffer_free(&db);
    eu_buffer_free(&da);
    eu_buffer_free(&dp);
    eu_buffer_free(&dc);
}

static void run_case(const routing_case *k)
{
    ++cases;
    for (int v = 0; v < CC_ROUTING_VARIANTS; ++v) {
        routing_case kv = *k;
        if (k->production) kv.splits = cc_routing_splits_variant(v, k->n, k->c, k->hw, 132);
        run_variant(&kv, v);
    }
}

static void sweep(int dtype, int layout)
{
    static const int experts[] = {1, 2, 31, 32, 33, 64, 65, 97, 128};
    static const int hws[] = {1, 3, 4, 7, 16, 49};
    static const int channels[] = {1, 5, 8, 13, 40};
    int i = 0;
    for (size_t ei = 0; ei < sizeof experts / sizeof experts[0]; ++ei)
        for (size_t hi = 0; hi < sizeof hws / sizeof hws[0]; ++hi) {
            /* 16-bit dtypes: f16 every other case, bf16 the rest (run time). */
            if (dtype != CC_DTYPE_F32 && i % 2 != (dtype == CC_DTYPE_BF16)) {
                ++i;
                continue;
            }
            routing_case k = {0};
            k.dtype = dtype;
            k.layout = layout;
            k.e = experts[ei];
            k.hw = hws[hi];
            k.c = channels[(ei + hi) % 5];
            k.n = 1 + (int)((ei + 2 * hi) % 3);
            k.softmax = (int)((ei + hi) % 2);
            k.inv_temperature = k.softmax ? (float)(0.3 + 0.7 * (double)(i % 4)) : 1.0f;
            /* x misaligned (the scalar fallback) where the 16-byte path would
             * run otherwise, for every other E (the earlier `i % 3 == 0` never
             * held where HW % 4 == 0). */
            k.misaligned = (layout == CC_LAYOUT_NHWC ? k.c % 4 == 0 : k.hw % 4 == 0) && ei % 2 == 0;
            k.splits = 1;
            run_case(&k);
            ++i;
        }
    /* Splits over blocks, as the library plans them and forced. */
    static const int split_c[] = {8, 24, 64, 70};
    for (size_t ci = 0; ci < sizeof split_c / sizeof split_c[0]; ++ci)
        for (int s = 0; s < 5; ++s) {
            if (dtype != CC_DTYPE_F32 && (int)ci % 2 != (dtype == CC_DTYPE_BF16)) continue; /* as above */
            routing_case k = {0};
            k.dtype = dtype;
            k.layout = layout;
            k.c = split_c[ci];
            k.hw = ci % 2 ? 9 : 16;
            k.n = 1 + (int)(ci + (size_t)s) % 3;
            k.e = (int[]){3, 32, 40, 128}[ci];
            k.softmax = s % 2;
            k.inv_temperature = k.softmax ? 0.5f : 1.0f;
            k.production = s == 0;
            k.splits = s == 0 ? cc_routing_splits(k.n, k.c, k.hw, 132) : (int[]){1, 2, 3, 0}[s - 1];
            if (k.splits == 0) k.splits = k.c;  /* one channel per split */
            if (s == 4) k.splits = k.c / 2 + 1; /* channels_per_split rounding drops splits */
            k.reversed = s % 2;
            k.misaligned = s == 3;
            run_case(&k);
        }
    /* C past 256 16-byte vectors (NHWC: several channel chunks), vectorisable
     * or not, split or not; per case C, HW, splits (0: production), x
     * misaligned. */
    static const int big_c[][4] = {{2064, 3, 1, 0}, {2063, 2, 2, 0}, {300, 5, 3, 0}, {1160, 8, 0, 0}, {1160, 16, 2, 1}};
    for (size_t bi = 0; bi < sizeof big_c / sizeof big_c[0]; ++bi) {
        routing_case k = {0};
        k.dtype = dtype;
        k.layout = layout;
        k.c = big_c[bi][0];
        k.hw = big_c[bi][1];
        k.n = 1 + (int)bi % 2;
        k.e = (int[]){4, 33, 8, 128, 16}[bi];
        k.softmax = (int)bi % 2;
        k.inv_temperature = k.softmax ? 0.7f : 1.0f;
        k.production = big_c[bi][2] == 0;
        k.splits = big_c[bi][2] ? big_c[bi][2] : cc_routing_splits(k.n, k.c, k.hw, 132);
        k.reversed = bi == 1;
        k.misaligned = big_c[bi][3];
        run_case(&k);
    }
    /* Large HW and batches up to 33 (variant 1's planes past one round of
     * loads a lane, 32 lanes a plane, 16-byte or scalar; many splits); per
     * case N, C, HW, E, splits (0: production), x misaligned. 16-bit dtypes
     * take every other case, as above. */
    static const int big_hw[][6] = {{33, 3, 1024, 32, 0, 0},
                                    {2, 3, 300, 5, 2, 0},
                                    {1, 6, 3136, 8, 0, 0},
                                    {4, 5, 257, 1, 3, 1},
                                    {32, 2, 64, 20, 0, 0}};
    for (size_t bi = 0; bi < sizeof big_hw / sizeof big_hw[0]; ++bi) {
        if (dtype != CC_DTYPE_F32 && (int)bi % 2 != (dtype == CC_DTYPE_BF16)) continue;
        routing_case k = {0};
        k.dtype = dtype;
        k.layout = layout;
        k.n = big_hw[bi][0];
        k.c = big_hw[bi][1];
        k.hw = big_hw[bi][2];
        k.e = big_hw[bi][3];
        k.softmax = (int)bi % 2;
        k.inv_temperature = k.softmax ? 1.3f : 1.0f;
        k.production = big_hw[bi][4] == 0;
        k.splits = k.production ? cc_routing_splits(k.n, k.c, k.hw, 132) : big_hw[bi][4];
        k.reversed = bi == 2;
        k.misaligned = big_hw[bi][5];
        run_case(&k);
    }
}

int main(void)
{
    eu_seed_from_env();
    /* The split hand-off reads the other blocks' partial logits: with the
     * store buffer they are NaN unless each writer fenced before counting
     * itself (a GPU may show stale ones). */
    cc_cpu_set_store_buffer(1);
    static const int dtypes[] = {CC_DTYPE_F32, CC_DTYPE_F16, CC_DTYPE_BF16};
    for (int d = 0; d < 3; ++d)
        for (int layout = CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout) sweep(dtypes[d], layout);
    /* Arguments the launcher must refuse without launching. */
    const long long before = cc_cpu_launch_count("routing_");
    EU_EXPECT(cc_launch_routing(CC_DTYPE_F32, CC_LAYOUT_NCHW, NULL, NULL, NULL, NULL, 1, 1, 1,
                                CC_ROUTING_MAX_EXPERTS + 1, 0, 1.0f, 1, NULL, NULL, NULL) == cudaErrorInvalidValue,
              "E > CC_ROUTING_MAX_EXPERTS must be refused");
    EU_EXPECT(cc_launch_routing(CC_DTYPE_F16, CC_LAYOUT_NHWC, NULL, NULL, NULL, NULL, 1, 8, 1, 4, 0, 1.0f, 2, NULL,
                                NULL, NULL) == cudaErrorInvalidValue,
              "splits > 1 without buffers must be refused");
    /* Unknown dtype or layout (valid pointers, so only the format is wrong). */
    eu_buffer any = eu_buffer_make(64, 0);
    EU_EXPECT(cc_launch_routing(3, CC_LAYOUT_NCHW, any.data, any.data, any.data, any.data, 1, 4, 4, 4, 0, 1.0f, 1, NULL,
                                NULL, NULL) == cudaErrorInvalidValue,
              "an unknown dtype must be refused");
    EU_EXPECT(cc_launch_routing(CC_DTYPE_BF16, 2, any.data, any.data, any.data, any.data, 1, 4, 4, 4, 0, 1.0f, 1, NULL,
                                NULL, NULL) == cudaErrorInvalidValue,
              "an unknown layout must be refused");
    EU_EXPECT(cc_launch_routing(-1, -1, any.data, any.data, any.data, any.data, 1, 4, 4, 4, 0, 1.0f, 1, NULL, NULL,
                                NULL) == cudaErrorInvalidValue,
              "a negative dtype and layout must be refused");
    /* A variant outside [0, CC_ROUTING_VARIANTS) (valid arguments otherwise). */
    for (int v = -1; v <= CC_ROUTING_VARIANTS; v += CC_ROUTING_VARIANTS + 1)
        EU_EXPECT(cc_launch_routing_variant(v, CC_DTYPE_F32, CC_LAYOUT_NCHW, any.data, any.data, any.data, any.data, 1,
                                            4, 4, 4, 0, 1.0f, 1, NULL, NULL, NULL) == cudaErrorInvalidValue,
                  "variant %d must be refused", v);
    /* Variant 1 refuses what variant 0 refuses. */
    EU_EXPECT(cc_launch_routing_variant(1, CC_DTYPE_F32, CC_LAYOUT_NCHW, any.data, any.data, any.data, any.data, 1, 1,
                                        1, CC_ROUTING_MAX_EXPERTS + 1, 0, 1.0f, 1, NULL, NULL,
                                        NULL) == cudaErrorInvalidValue,
              "variant 1: E > CC_ROUTING_MAX_EXPERTS must be refused");
    EU_EXPECT(cc_launch_routing_variant(1, CC_DTYPE_F16, CC_LAYOUT_NHWC, any.data, any.data, any.data, any.data, 1, 8,
                                        1, 4, 0, 1.0f, 2, NULL, NULL, NULL) == cudaErrorInvalidValue,
              "variant 1: splits > 1 without buffers must be refused");
    EU_EXPECT(cc_launch_routing_variant(1, 3, CC_LAYOUT_NHWC, any.data, any.data, any.data, any.data, 1, 4, 4, 4, 0,
                                        1.0f, 1, NULL, NULL, NULL) == cudaErrorInvalidValue,
              "variant 1: an unknown dtype must be refused");
    EU_EXPECT(cc_launch_routing_variant(1, CC_DTYPE_F32, 2, any.data, any.data, any.data, any.data, 1, 4, 4, 4, 0, 1.0f,
                                        1, NULL, NULL, NULL) == cudaErrorInvalidValue,
              "variant 1: an unknown layout must be refused");
    eu_buffer_free(&any);
    EU_EXPECT(cc_cpu_launch_count("routing_") == before, "a refused call launched a kernel");
    for (int v = 0; v < CC_ROUTING_VARIANTS; ++v)
        EU_EXPECT(strcmp(cc_routing_variant_name(v), "?") != 0, "variant %d has no name", v);
    EU_EXPECT(strcmp(cc_routing_variant_name(CC_ROUTING_VARIANTS), "?") == 0, "an unknown variant has a name");
    /* The split rules: variant 0's is cc_routing_splits; variant 1 covers
     * 132 SMs four times at N = 32 on 1152 x 7x7 (17 splits), never more
     * splits than channels, 1 for an unknown variant. */
    EU_EXPECT(cc_routing_splits_variant(0, 32, 1152, 49, 132) == cc_routing_splits(32, 1152, 49, 132), "variant 0");
    EU_EXPECT(cc_routing_splits_variant(1, 32, 1152, 49, 132) == 17, "variant 1: %d splits",
              cc_routing_splits_variant(1, 32, 1152, 49, 132));
    EU_EXPECT(cc_routing_splits_variant(1, 1, 3, 1 << 20, 132) == 3, "variant 1: a split per channel at most");
    EU_EXPECT(cc_routing_splits_variant(2, 32, 1152, 49, 132) == 1, "an unknown variant: 1 split");
    eu_expect_all_launched("routing");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_routing: %d cases (each run by %d variants), %d launches\n", cases, CC_ROUTING_VARIANTS, launches);
    return eu_finish("test_emu_routing");
}
