/* The CPU reference path in every element type and layout, against the f32
 * NCHW path on the same values:
 *  - NHWC: x transposed to channels-last must give exactly the transposed y
 *    and exactly the same routing weights (the same double sums run);
 *  - f16 / bf16: a layer given half-precision parameters and input must give
 *    y equal to the f32 layer's y on those very values (exact as floats),
 *    rounded once to the half type. The path rounds twice (double -> f32 ->
 *    half); that can move an exact tie by one ulp, so one ulp is allowed, and
 *    nearly every element must match exactly.
 * Random layers of every kind (dense, grouped, depthwise, pointwise; strides,
 * dilation, padding; every routing mode and activation). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static void to_nhwc(const float *nchw, float *nhwc, int n, int c, int hw)
{
    for (int s = 0; s < n; ++s)
        for (int ch = 0; ch < c; ++ch)
            for (int p = 0; p < hw; ++p) nhwc[((size_t)s * hw + p) * c + ch] = nchw[((size_t)s * c + ch) * hw + p];
}

static condconv_layer_t make_layer(condconv_context_t ctx, const tu_layer_spec *s, const tu_params *p,
                                   condconv_dtype dtype, condconv_layout layout, void **owned)
{
    condconv_layer_desc_t desc = tu_make_desc(s);
    EXPECT_OK(condconv_layer_desc_set_format(desc, dtype, layout));
    condconv_params view = tu_params_view(p);
    *owned = NULL;
    if (dtype != CONDCONV_DTYPE_F32) {
        /* The same parameters, encoded in the half type (already exact). */
        const size_t counts[4] = {p->experts_n, p->bias_n, p->routing_weight_n, p->routing_bias_n};
        const float *src[4] = {p->experts, p->expert_bias, p->routing_weight, p->routing_bias};
        uint16_t *block = malloc(2 * (counts[0] + counts[1] + counts[2] + counts[3] + 1));
        uint16_t *at = block;
        const void *dst[4];
        for (int i = 0; i < 4; ++i) {
            dst[i] = src[i] ? at : NULL;
            if (src[i]) EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, src[i], dtype, at, counts[i]));
            at += counts[i];
        }
        view.experts = dst[0];
        view.expert_bias = dst[1];
        view.routing_weight = dst[2];
        view.routing_bias = dst[3];
        *owned = block;
    }
    condconv_layer_t layer = NULL;
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer));
    condconv_layer_desc_destroy(desc);
    return layer;
}

/* Rounds every value to the dtype, so that f32 and half layers see the same numbers. */
static void round_all(float *v, size_t n, condconv_dtype dtype)
{
    if (n && dtype != CONDCONV_DTYPE_F32) {
        uint16_t *tmp = malloc(n * 2);
        EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, v, dtype, tmp, n));
        EXPECT_OK(condconv_convert(dtype, tmp, CONDCONV_DTYPE_F32, v, n));
        free(tmp);
    }
}

static int cases, exact, within_ulp;

static void run_case(condconv_context_t ctx, condconv_dtype dtype, condconv_layout layout)
{
    tu_layer_spec s = tu_random_spec(TU_ANY, 6, 5);
    const int n = tu_rng_int(1, 3), h = tu_rng_int(1, 9), w = tu_rng_int(1, 9);
    condconv_layer_desc_t probe = tu_make_desc(&s);
    int ho = 0, wo = 0;
    const condconv_status dims = condconv_layer_desc_get_output_dims(probe, h, w, &ho, &wo, NULL);
    condconv_layer_desc_destroy(probe);
    if (dims != CONDCONV_STATUS_SUCCESS) return;
    tu_params p;
    tu_make_params(&s, &p);
    round_all(p.experts, p.experts_n, dtype);
    round_all(p.expert_bias, p.bias_n, dtype);
    round_all(p.routing_weight, p.routing_weight_n, dtype);
    round_all(p.routing_bias, p.routing_bias_n, dtype);
    const size_t x_n = (size_t)n * s.cin * h * w, y_n = (size_t)n * s.cout * ho * wo, a_n = (size_t)n * s.experts;
    float *x = malloc(x_n * 4), *y_ref = malloc(y_n * 4), *a_ref = malloc(a_n * 4), *alpha_in = malloc(a_n * 4);
    tu_fill_uniform(x, x_n, -1.0f, 1.0f);
    round_all(x, x_n, dtype);
    tu_fill_uniform(alpha_in, a_n, -1.0f, 1.0f);
    const float *routing_in = s.routing == CONDCONV_ROUTING_EXTERNAL ? alpha_in : NULL;

    void *owned_ref, *owned;
    condconv_layer_t ref = make_layer(ctx, &s, &p, CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW, &owned_ref);
    condconv_layer_t layer = make_layer(ctx, &s, &p, dtype, layout, &owned);
    EXPECT_OK(condconv_forward_cpu(ref, n, h, w, x, y_ref, routing_in, a_ref));

    /* The input in the layer's format. */
    float *x_layout = malloc(x_n * 4), *y_ref_layout = malloc(y_n * 4);
    if (layout == CONDCONV_LAYOUT_NHWC) {
        to_nhwc(x, x_layout, n, s.cin, h * w);
        to_nhwc(y_ref, y_ref_layout, n, s.cout, ho * wo);
    } else {
        memcpy(x_layout, x, x_n * 4);
        memcpy(y_ref_layout, y_ref, y_n * 4);
    }
    const size_t es = dtype == CONDCONV_DTYPE_F32 ? 4 : 2;
    unsigned char *x_in = malloc(x_n * es), *y = malloc(y_n * es + 1);
    float *a = malloc(a_n * 4);
    EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, x_layout, dtype, x_in, x_n));
    tu_fill_nan(a, a_n);
    memset(y, 0xFF, y_n * es); /* NaN in every type */
    y[y_n * es] = 0x5A;        /* a canary past the end */
    if (EXPECT_OK(condconv_forward_cpu(layer, n, h, w, x_in, y, routing_in, a))) {
        EXPECT(y[y_n * es] == 0x5A, "wrote past the end of y");
        EXPECT(tu_same_bytes(a, a_ref, a_n * 4), "routing weights differ from the f32 NCHW path: %s",
               tu_spec_string(&s));
        size_t bad = 0;
        for (size_t i = 0; i < y_n; ++i) {
            float got;
            EXPECT_OK(condconv_convert(dtype, y + i * es, CONDCONV_DTYPE_F32, &got, 1));
            uint16_t want_bits = 0, got_bits = 0;
            if (dtype == CONDCONV_DTYPE_F32) {
                if (tu_same_bytes(&got, &y_ref_layout[i], 4))
                    ++exact;
                else
                    ++bad;
                continue;
            }
            EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, &y_ref_layout[i], dtype, &want_bits, 1));
            memcpy(&got_bits, y + i * es, 2);
            const int same = !isnan(got) && got_bits == want_bits;
            const int one_ulp = !isnan(got) && (got_bits & 0x8000u) == (want_bits & 0x8000u) &&
                                abs((int)(got_bits & 0x7FFFu) - (int)(want_bits & 0x7FFFu)) == 1;
            exact += same;
            within_ulp += one_ulp;
            bad += !same && !one_ulp;
        }
        EXPECT(bad == 0, "%zu of %zu outputs differ (%s %s): %s", bad, y_n,
               dtype == CONDCONV_DTYPE_F16    ? "f16"
               : dtype == CONDCONV_DTYPE_BF16 ? "bf16"
                                              : "f32",
               layout == CONDCONV_LAYOUT_NHWC ? "nhwc" : "nchw", tu_spec_string(&s));
    }
    ++cases;
    condconv_layer_destroy(ref);
    condconv_layer_destroy(layer);
    free(owned_ref);
    free(owned);
    free(x);
    free(y_ref);
    free(a_ref);
    free(alpha_in);
    free(x_layout);
    free(y_ref_layout);
    free(x_in);
    free(y);
    free(a);
    tu_free_params(&p);
}

int main(void)
{
    tu_seed_from_env();
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU))) return tu_finish("test_reference_formats");
    static const condconv_dtype dtypes[] = {CONDCONV_DTYPE_F32, CONDCONV_DTYPE_F16, CONDCONV_DTYPE_BF16};
    static const condconv_layout layouts[] = {CONDCONV_LAYOUT_NCHW, CONDCONV_LAYOUT_NHWC};
    const int per_format = tu_case_count(40);
    for (int d = 0; d < 3; ++d)
        for (int l = 0; l < 2; ++l)
            for (int i = 0; i < per_format; ++i) run_case(ctx, dtypes[d], layouts[l]);
    printf("test_reference_formats: %d cases; outputs exact %d, one half-ulp off (double rounding of a tie) %d\n",
           cases, exact, within_ulp);
    EXPECT(within_ulp * 100 <= exact, "too many one-ulp differences: %d of %d", within_ulp, exact + within_ulp);
    EXPECT_OK(condconv_context_destroy(ctx));
    return tu_finish("test_reference_formats");
}
