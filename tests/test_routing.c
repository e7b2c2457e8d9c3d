/* Routing on the CPU path against hand-computed values.
 * Two samples, C = 2 channels of 2x2, E = 3 experts. Sample 0's channel means
 * are (1.5, -0.5); with FC rows (1, 2), (0.5, -1), (0, 0) and bias
 * (0.1, -0.2, 0.3) the logits are 1.5-1+0.1 = 0.6, 0.75+0.5-0.2 = 1.05 and
 * 0.3. Sample 1's means are (0, 0): logits = bias.
 *   sigmoid(0.6, 1.05, 0.3) = 0.6456563062, 0.7407748992, 0.5744425168
 *   softmax(logits / 2)      = 0.3212303696, 0.4022840890, 0.2764855414
 * Softmax rows must sum to 1, stay finite for huge logits, and the routing
 * weights a forward reports must equal condconv_route_cpu's. */
#include <math.h>
#include <stdio.h>

#include "test_util.h"

static const float fc_weight[] = {1, 2, 0.5f, -1, 0, 0};
static const float fc_bias[] = {0.1f, -0.2f, 0.3f};
/* [N=2][C=2][2x2]: channel means (1.5, -0.5) and (0, 0). */
static const float x[] = {1, 2,  1, 2,  -1, 0, -1, 0, /* sample 0 */
                          3, -3, 1, -1, 0,  0, 0,  0 /* sample 1 */};

static condconv_layer_t make_layer(condconv_context_t ctx, condconv_routing mode, float temperature,
                                   const float *weight, const float *bias)
{
    condconv_layer_desc_t d;
    EXPECT_OK(condconv_layer_desc_create(&d));
    EXPECT_OK(condconv_layer_desc_set_conv(d, 2, 1, 1, 1, 1, 1, 1, 1, 1));
    EXPECT_OK(condconv_layer_desc_set_experts(d, 3, 0));
    EXPECT_OK(condconv_layer_desc_set_routing(d, mode, temperature));
    static const float experts[] = {1, 1, 1, 1, 1, 1};
    const condconv_params p = {experts, NULL, weight, bias};
    condconv_layer_t layer = NULL;
    EXPECT_OK(condconv_layer_create(ctx, d, &p, &layer));
    condconv_layer_desc_destroy(d);
    return layer;
}

static double sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

int main(void)
{
    condconv_context_t ctx;
    EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
    float alpha[6], from_forward[6], y[8];

    condconv_layer_t sig = make_layer(ctx, CONDCONV_ROUTING_SIGMOID, 1.0f, fc_weight, fc_bias);
    EXPECT_OK(condconv_route_cpu(sig, 2, 2, 2, x, alpha));
    const float want_sigmoid[] = {0.6456563062f,       0.7407748992f,        0.5744425168f,
                                  (float)sigmoid(0.1), (float)sigmoid(-0.2), (float)sigmoid(0.3)};
    EXPECT(tu_compare("sigmoid", alpha, want_sigmoid, NULL, 6, 1e-7, 1e-6) == 0, "sigmoid routing");
    EXPECT_OK(condconv_forward_cpu(sig, 2, 2, 2, x, y, NULL, from_forward));
    EXPECT(tu_compare("forward alpha", from_forward, alpha, NULL, 6, 0, 0) == 0, "forward reports its routing");
    condconv_layer_destroy(sig);

    condconv_layer_t soft = make_layer(ctx, CONDCONV_ROUTING_SOFTMAX, 2.0f, fc_weight, fc_bias);
    EXPECT_OK(condconv_route_cpu(soft, 2, 2, 2, x, alpha));
    const float want_softmax0[] = {0.3212303696f, 0.4022840890f, 0.2764855414f};
    EXPECT(tu_compare("softmax", alpha, want_softmax0, NULL, 3, 1e-7, 1e-6) == 0, "softmax routing, tau = 2");
    for (int n = 0; n < 2; ++n) {
        const double sum = (double)alpha[3 * (size_t)n] + alpha[3 * (size_t)n + 1] + alpha[3 * (size_t)n + 2];
        EXPECT(fabs(sum - 1.0) < 1e-6, "softmax row %d sums to %.9f", n, sum);
    }
    condconv_layer_destroy(soft);

    /* Logits of +-1000 at temperature 0.5: naive exp overflows; ours must not. */
    const float huge_weight[] = {1000, 0, -1000, 0, 0, 1000};
    condconv_layer_t big = make_layer(ctx, CONDCONV_ROUTING_SOFTMAX, 0.5f, huge_weight, NULL);
    EXPECT_OK(condconv_route_cpu(big, 2, 2, 2, x, alpha));
    for (int i = 0; i < 6; ++i)
        EXPECT(isfinite(alpha[i]), "softmax of huge logits alpha[%d] = %g", i, (double)alpha[i]);
    EXPECT(fabsf(alpha[0] - 1.0f) < 1e-6, "the largest logit takes all the weight (%g)", (double)alpha[0]);
    EXPECT(fabsf(alpha[3] + alpha[4] + alpha[5] - 1.0f) < 1e-6 && fabsf(alpha[3] - 1.0f / 3.0f) < 1e-6,
           "equal logits share equally (%g %g %g)", (double)alpha[3], (double)alpha[4], (double)alpha[5]);
    condconv_layer_destroy(big);

    /* External routing: the forward reports exactly the weights it was given. */
    condconv_layer_t ext = make_layer(ctx, CONDCONV_ROUTING_EXTERNAL, 1.0f, NULL, NULL);
    const float given[] = {0.25f, -1.5f, 3.0f, 0.0f, 1.0f, 2.0f};
    EXPECT_OK(condconv_forward_cpu(ext, 2, 2, 2, x, y, given, from_forward));
    EXPECT(tu_compare("external alpha", from_forward, given, NULL, 6, 0, 0) == 0, "external routing echoed");
    condconv_layer_destroy(ext);

    condconv_context_destroy(ctx);
    return tu_finish("test_routing");
}
