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
 * printed per file. */
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

static void run_case(condconv_context_t ctx, const golden *g)
{
    condconv_layer_desc_t routed = golden_desc(g, CONDCONV_ROUTING_SIGMOID);
    condconv_layer_desc_t external = golden_desc(g, CONDCONV_ROUTING_EXTERNAL);
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(routed, g->h, g->w, &ho, &wo, NULL));
    EXPECT(ho == g->out_h && wo == g->out_w, "%s: the library gives a %dx%d output, timm %dx%d", g->name, ho, wo,
           g->out_h, g->out_w);
    float *y = malloc(g->y_n * sizeof(float)), *alpha = malloc(g->a_n * sizeof(float));
    condconv_layer_t layer;
    if (ho == g->out_h && wo == g->out_w &&
        EXPECT_OK(condconv_layer_create_from_safetensors(ctx, routed, g->path, "conv", "routing_fn", &layer))) {
        tu_fill_nan(y, g->y_n);
        tu_fill_nan(alpha, g->a_n);
        if (EXPECT_OK(condconv_forward_cpu(layer, g->n, g->h, g->w, g->x, y, NULL, alpha))) {
            EXPECT(tu_compare("y", y, g->y, g->mag, g->y_n, Y_ATOL, Y_RTOL) == 0, "%s: sigmoid routing: output",
                   g->name);
            EXPECT(tu_compare("alpha", alpha, g->alpha, NULL, g->a_n, ALPHA_ATOL, 0.0) == 0, "%s: routing weights",
                   g->name);
            printf("  %-22s %-4s routed:   y at %.3f of its bound, alpha at %.3f\n", g->name, g->param_dtype,
                   worst_fraction(y, g->y, g->mag, g->y_n, Y_ATOL, Y_RTOL),
                   worst_fraction(alpha, g->alpha, NULL, g->a_n, ALPHA_ATOL, 0.0));
        }
        condconv_layer_destroy(layer);
    }
    if (ho == g->out_h && wo == g->out_w &&
        EXPECT_OK(condconv_layer_create_from_safetensors(ctx, external, g->path, "conv", NULL, &layer))) {
        tu_fill_nan(y, g->y_n);
        tu_fill_nan(alpha, g->a_n);
        if (EXPECT_OK(condconv_forward_cpu(layer, g->n, g->h, g->w, g->x, y, g->alpha, alpha))) {
            EXPECT(tu_compare("y", y, g->y, g->mag, g->y_n, Y_ATOL, Y_RTOL) == 0, "%s: external routing: output",
                   g->name);
            EXPECT(tu_compare("alpha", alpha, g->alpha, NULL, g->a_n, 0.0, 0.0) == 0,
                   "%s: external routing must pass alpha through", g->name);
            printf("  %-22s %-4s external: y at %.3f of its bound\n", g->name, g->param_dtype,
                   worst_fraction(y, g->y, g->mag, g->y_n, Y_ATOL, Y_RTOL));
        }
        condconv_layer_destroy(layer);
    }
    free(y);
    free(alpha);
    condconv_layer_desc_destroy(routed);
    condconv_layer_desc_destroy(external);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : CONDCONV_GOLDEN_DIR;
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU))) return tu_finish("test_golden_cpu");
    /* scripts/make_golden.py writes 13; fewer means data went missing. */
    const int count = golden_check_all(dir, 10, ctx, run_case);
    condconv_context_destroy(ctx);
    printf("%d golden files from timm checked\n", count);
    return tu_finish("test_golden_cpu");
}
