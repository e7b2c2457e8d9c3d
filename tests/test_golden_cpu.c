/* The CPU reference path against timm: every golden file of tests/data
 * (scripts/make_golden.py) is loaded through the library's safetensors
 * loader, with the descriptor built from the file's metadata, and run
 * twice: with the layer's own sigmoid routing (checks routing and output)
 * and with timm's routing weights passed in (external routing: checks the
 * convolution alone).
 *
 *   test_golden_cpu [data-dir]     (default: the source tree's tests/data)
 *
 * Tolerance. The reference accumulates in double, so the difference is
 * timm's own f32 rounding. Each output of timm is an f32 sum of K products
 * (K = Cin/groups*kh*kw <= 144 here) of weights that are themselves f32
 * sums of E <= 8 alpha-scaled experts, plus the bias: its error is at most
 * about (K + E + 2) * 2^-24 * mag <= 9.2e-6 * mag, where mag is the same
 * sum on absolute values. Outputs are checked against 1e-5 * mag + 1e-6:
 * the worst-case bound, not a fitted one, so a wrong tap or a wrong expert
 * (an error of order mag) can never pass. Routing weights: timm's GAP over
 * H*W <= 210 values and an FC over Cin <= 32 in f32 put the logit within
 * about 1e-6 of exact for these O(1) inputs; sigmoid' <= 1/4, so 1e-6
 * absolute. With external routing alpha is timm's own, so the same bound
 * on y applies. The largest error seen, as a fraction of the bound, is
 * printed per file.
 *
 * Every file runs in NCHW and NHWC (the NHWC input is the NCHW one
 * transposed on the host, and the output transposed back). Half-precision
 * runs (run_dtype F16/BF16) run a layer of that dtype on x in it, checked
 * against y_exact (timm in f32 on the same values) within the layer's own
 * rounding and against timm's half-precision y within both roundings
 * (golden_half_tolerance). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden_util.h"

#ifndef CONDCONV_GOLDEN_DIR
#define CONDCONV_GOLDEN_DIR "tests/data"
#endif

#define Y_ATOL     1e-6
#define Y_RTOL     1e-5
#define ALPHA_ATOL 1e-6

/* Largest |got - want| / (atol + rtol * scale) over the elements. */
static double worst_fraction(const float *got, const float *want, const float *mag, size_t n, double atol, double rtol)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) {
        const double f =
            fabs((double)got[i] - (double)want[i]) / (atol + rtol * (mag ? mag[i] : fabs((double)want[i])));
        if (!(f <= worst)) worst = f; /* NaN sticks */
    }
    return worst;
}

/* One forward of the file's layer on the CPU reference path in the file's
 * run dtype and the given layout; y and alpha come back as f32, y in NCHW. */
static int forward_in_format(condconv_context_t ctx, const golden *g, condconv_routing routing, condconv_layout layout,
                             float *y, float *alpha)
{
    condconv_layer_desc_t desc = golden_desc(g, routing);
    EXPECT_OK(condconv_layer_desc_set_format(desc, g->run_dtype_id, layout));
    int ho = 0, wo = 0, ok = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, g->h, g->w, &ho, &wo, NULL));
    EXPECT(ho == g->out_h && wo == g->out_w, "%s: the library gives a %dx%d output, timm %dx%d", g->name, ho, wo,
           g->out_h, g->out_w);
    const int external = routing == CONDCONV_ROUTING_EXTERNAL;
    condconv_layer_t layer;
    if (ho == g->out_h && wo == g->out_w &&
        EXPECT_OK(condconv_layer_create_from_safetensors(ctx, desc, g->path, "conv", external ? NULL : "routing_fn",
                                                         &layer))) {
        void *x = golden_x_in_format(g, layout);
        void *y_raw = malloc(g->y_n * sizeof(float));
        memset(y_raw, 0xFF, g->y_n * sizeof(float)); /* NaN in every dtype */
        tu_fill_nan(alpha, g->a_n);
        if (EXPECT_OK(condconv_forward_cpu(layer, g->n, g->h, g->w, x, y_raw, external ? g->alpha : NULL, alpha))) {
            golden_y_from_format(g, y_raw, layout, y);
            ok = 1;
        }
        free(x);
        free(y_raw);
        condconv_layer_destroy(layer);
    }
    condconv_layer_desc_destroy(desc);
    return ok;
}

static void run_case(condconv_context_t ctx, const golden *g)
{
    float *y = malloc(g->y_n * sizeof(float)), *alpha = malloc(g->a_n * sizeof(float));
    static const condconv_layout layouts[] = {CONDCONV_LAYOUT_NCHW, CONDCONV_LAYOUT_NHWC};
    static const condconv_routing routings[] = {CONDCONV_ROUTING_SIGMOID, CONDCONV_ROUTING_EXTERNAL};
    const int half = g->run_dtype_id != CONDCONV_DTYPE_F32;
    for (int l = 0; l < 2; ++l)
        for (int r = 0; r < 2; ++r) {
            const int external = routings[r] == CONDCONV_ROUTING_EXTERNAL;
            const char *how = external ? "external" : "routed";
            const char *layout = layouts[l] == CONDCONV_LAYOUT_NHWC ? "NHWC" : "NCHW";
            if (!forward_in_format(ctx, g, routings[r], layouts[l], y, alpha)) continue;
            if (external)
                EXPECT(tu_compare("alpha", alpha, g->alpha, NULL, g->a_n, 0.0, 0.0) == 0,
                       "%s %s: external routing must pass alpha through", g->name, layout);
            else
                EXPECT(tu_compare("alpha", alpha, g->alpha, NULL, g->a_n, ALPHA_ATOL, 0.0) == 0,
                       "%s %s: routing weights", g->name, layout);
            if (!half) {
                EXPECT(tu_compare("y", y, g->y, g->mag, g->y_n, Y_ATOL, Y_RTOL) == 0, "%s %s %s: output", g->name,
                       layout, how);
                printf("  %-31s %-4s %s %-8s y at %.3f of its bound\n", g->name, g->param_dtype, layout, how,
                       worst_fraction(y, g->y, g->mag, g->y_n, Y_ATOL, Y_RTOL));
                continue;
            }
            /* Half precision: tightly against timm in f32 on the same values,
             * loosely against timm's own half-precision output. */
            double atol, rtol, l2_max, atol_t, rtol_t, l2_t;
            golden_half_tolerance(g->run_dtype_id, 0, &atol, &rtol, &l2_max);
            golden_half_tolerance(g->run_dtype_id, 1, &atol_t, &rtol_t, &l2_t);
            const double l2 = tu_relative_l2(y, g->y_exact, g->y_n), l2_timm = tu_relative_l2(y, g->y, g->y_n);
            EXPECT(tu_compare("y", y, g->y_exact, g->mag, g->y_n, atol, rtol) == 0 && l2 <= l2_max,
                   "%s %s %s: output against timm in f32 (relative L2 %.3g)", g->name, layout, how, l2);
            EXPECT(tu_compare("y", y, g->y, g->mag, g->y_n, atol_t, rtol_t) == 0 && l2_timm <= l2_t,
                   "%s %s %s: output against timm in %s (relative L2 %.3g)", g->name, layout, how, g->run_dtype,
                   l2_timm);
            printf("  %-31s %-4s %s %-8s y at %.3f of its bound to timm f32 (L2 %.1e), %.3f to timm %s (L2 %.1e)\n",
                   g->name, g->run_dtype, layout, how, worst_fraction(y, g->y_exact, g->mag, g->y_n, atol, rtol), l2,
                   worst_fraction(y, g->y, g->mag, g->y_n, atol_t, rtol_t), g->run_dtype, l2_timm);
        }
    free(y);
    free(alpha);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : CONDCONV_GOLDEN_DIR;
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU))) return tu_finish("test_golden_cpu");
    /* scripts/make_golden.py writes 21 (6 of them half-precision runs, 2 with unequal dilation and stride); fewer means
     * data went missing. */
    const int count = golden_check_all(dir, 21, ctx, run_case);
    condconv_context_destroy(ctx);
    printf("%d golden files from timm checked\n", count);
    return tu_finish("test_golden_cpu");
}
