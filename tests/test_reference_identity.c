/* The CPU reference against an independent formulation, on many random
 * shapes: the paper's mixture-of-experts identity
 *     act(conv(x, sum_e a_e W_e) + sum_e a_e b_e) = act(sum_e a_e (conv(x, W_e) + b_e)).
 * The left side is condconv_forward_cpu (aggregate, then a gather-style
 * direct convolution); the right side is computed here expert by expert with
 * a scatter-style convolution (each input pixel adds to the outputs it
 * touches), so the two share no loop. Shapes cover odd sizes, stride 1-3,
 * explicit and "same" padding, dilation, groups, depthwise, even and odd
 * kernels, E from 1 to 32, all routing modes and activations. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* y_e [Cout][Ho][Wo] += conv(x [Cin][H][W], W_e) by scattering inputs. */
static void scatter_conv(const tu_layer_spec *s, int h, int w, int ho, int wo, const int pads[4], const float *x,
                         const float *we, double *y)
{
    const int cin_g = s->cin / s->groups, cout_g = s->cout / s->groups;
    for (int c = 0; c < s->cin; ++c) {
        const int g = c / cin_g, i = c % cin_g;
        for (int iy = 0; iy < h; ++iy)
            for (int ix = 0; ix < w; ++ix) {
                const double xv = x[((size_t)c * h + iy) * w + ix];
                for (int ky = 0; ky < s->kh; ++ky) {
                    /* iy = oy*stride - pad_top + ky*dil  =>  oy = (iy + pad_top - ky*dil) / stride */
                    const int num_y = iy + pads[0] - ky * s->dil_h;
                    if (num_y < 0 || num_y % s->stride_h) continue;
                    const int oy = num_y / s->stride_h;
                    if (oy >= ho) continue;
                    for (int kx = 0; kx < s->kw; ++kx) {
                        const int num_x = ix + pads[2] - kx * s->dil_w;
                        if (num_x < 0 || num_x % s->stride_w) continue;
                        const int ox = num_x / s->stride_w;
                        if (ox >= wo) continue;
                        for (int oc = 0; oc < cout_g; ++oc) {
                            const int o = g * cout_g + oc;
                            y[((size_t)o * ho + oy) * wo + ox] +=
                                xv * we[(((size_t)o * cin_g + i) * s->kh + ky) * s->kw + kx];
                        }
                    }
                }
            }
    }
}

static double activate(condconv_activation a, double v)
{
    if (a == CONDCONV_ACTIVATION_RELU) return v < 0 ? 0 : v;
    if (a == CONDCONV_ACTIVATION_SILU) return v / (1 + exp(-v));
    return v;
}

static int checked_cases;

static void check_case(condconv_context_t ctx, int index)
{
    const tu_layer_spec s = tu_random_spec(TU_ANY, 5, 5);
    const int n = tu_rng_int(1, 3), h = tu_rng_int(1, 11), w = tu_rng_int(1, 11);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    int ho, wo, pads[4];
    if (condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, pads) != CONDCONV_STATUS_SUCCESS) {
        /* An empty output is a valid answer for tiny inputs: the error path is tested elsewhere. */
        condconv_layer_desc_destroy(desc);
        return;
    }
    tu_params p;
    tu_make_params(&s, &p);
    condconv_params view = tu_params_view(&p);
    condconv_layer_t layer;
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer));

    const size_t x_n = (size_t)n * s.cin * h * w, y_sample = (size_t)s.cout * ho * wo, y_n = n * y_sample;
    float *x = malloc(x_n * sizeof(float)), *y = malloc(y_n * sizeof(float)), *want = malloc(y_n * sizeof(float));
    float *alpha = malloc((size_t)n * s.experts * sizeof(float));
    double *acc = malloc(y_sample * sizeof(double)), *ye = malloc(y_sample * sizeof(double));
    tu_fill_uniform(x, x_n, -1.0f, 1.0f);
    tu_fill_nan(y, y_n);
    float *alpha_in = NULL;
    if (s.routing == CONDCONV_ROUTING_EXTERNAL) {
        alpha_in = malloc((size_t)n * s.experts * sizeof(float));
        tu_fill_uniform(alpha_in, (size_t)n * s.experts, -1.0f, 1.0f);
    }
    EXPECT_OK(condconv_forward_cpu(layer, n, h, w, x, y, alpha_in, alpha));
    ++checked_cases;

    const size_t filter_n = (size_t)s.cout * (s.cin / s.groups) * s.kh * s.kw;
    for (int b = 0; b < n; ++b) {
        memset(acc, 0, y_sample * sizeof(double));
        for (int e = 0; e < s.experts; ++e) {
            memset(ye, 0, y_sample * sizeof(double));
            scatter_conv(&s, h, w, ho, wo, pads, x + (size_t)b * s.cin * h * w, p.experts + e * filter_n, ye);
            const double a = alpha[(size_t)b * s.experts + e];
            for (size_t i = 0; i < y_sample; ++i) {
                const double bias = s.has_bias ? p.expert_bias[(size_t)e * s.cout + i / ((size_t)ho * wo)] : 0.0;
                acc[i] += a * (ye[i] + bias);
            }
        }
        for (size_t i = 0; i < y_sample; ++i) want[b * y_sample + i] = (float)activate(s.activation, acc[i]);
    }
    /* Both sides accumulate in double; what differs is the float rounding of
     * alpha (here) and of the output: a few ulps of O(1) values. */
    if (tu_compare("y", y, want, NULL, y_n, 1e-5, 1e-5))
        tu_fail(__FILE__, __LINE__, "identity", "case %d: n=%d h=%d w=%d %s", index, n, h, w, tu_spec_string(&s));
    if (alpha_in) EXPECT(memcmp(alpha, alpha_in, (size_t)n * s.experts * sizeof(float)) == 0, "external alpha copied");

    free(x);
    free(y);
    free(want);
    free(alpha);
    free(alpha_in);
    free(acc);
    free(ye);
    condconv_layer_destroy(layer);
    condconv_layer_desc_destroy(desc);
    tu_free_params(&p);
}

int main(void)
{
    tu_seed_from_env();
    condconv_context_t ctx;
    EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
    /* A draw with an empty output is drawn again, so that every requested
     * case checks a layer (CONDCONV_TEST_CASES=3 under valgrind too). */
    const int cases = tu_case_count(300);
    for (int i = 0, draws = 0; checked_cases < cases && draws < 20 * cases; ++draws) check_case(ctx, i++);
    printf("checked %d random layers\n", checked_cases);
    EXPECT(checked_cases == cases, "only %d of %d random cases had a non-empty output", checked_cases, cases);
    condconv_context_destroy(ctx);
    return tu_finish("test_reference_identity");
}
