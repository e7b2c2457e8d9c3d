/* The cost model against multiply-adds, parameters and bytes computed by
 * hand (arithmetic in the comments). */
#include <stdio.h>

#include "test_util.h"

#define EXPECT_U64(got, want)                                                                                          \
    EXPECT((got) == (want), "%s = %llu, want %llu", #got, (unsigned long long)(got), (unsigned long long)(want))

static condconv_layer_desc_t make(int cin, int cout, int k, int stride, int groups, condconv_padding_mode pad_mode,
                                  int pad, int experts, int bias, condconv_routing routing, condconv_activation act)
{
    condconv_layer_desc_t d;
    EXPECT_OK(condconv_layer_desc_create(&d));
    EXPECT_OK(condconv_layer_desc_set_conv(d, cin, cout, k, k, stride, stride, 1, 1, groups));
    EXPECT_OK(condconv_layer_desc_set_padding(d, pad_mode, pad, pad));
    EXPECT_OK(condconv_layer_desc_set_experts(d, experts, bias));
    EXPECT_OK(condconv_layer_desc_set_routing(d, routing, 2.0f));
    EXPECT_OK(condconv_layer_desc_set_activation(d, act));
    return d;
}

int main(void)
{
    condconv_cost c;
    { /* EfficientNet-CC-B0 expand 1x1 112->672 at 14x14, E = 8, biases, sigmoid, N = 1.
       * |W| = 672*112 = 75264; conv 75264*196 = 14751744; aggregation 8*(75264+672) = 607488;
       * FC 112*8 = 896; pool 112*196 = 21952; epilogue 672*196 = 131712;
       * params 8*75264 + 8*672 + 8*112 + 8 = 602112 + 5376 + 904 = 608392;
       * bytes 4*(x 21952 + y 131712 + params 608392 + alpha 8) = 3048256;
       * materialised adds 2*(75264+672)*4 = 607488 -> 3655744. */
        condconv_layer_desc_t d = make(112, 672, 1, 1, 1, CONDCONV_PADDING_EXPLICIT, 0, 8, 1, CONDCONV_ROUTING_SIGMOID,
                                       CONDCONV_ACTIVATION_NONE);
        EXPECT_OK(condconv_cost_model(d, 1, 14, 14, &c));
        EXPECT(c.out_h == 14 && c.out_w == 14, "out %dx%d", c.out_h, c.out_w);
        EXPECT_U64(c.conv_macs, 14751744u);
        EXPECT_U64(c.aggregation_macs, 607488u);
        EXPECT_U64(c.routing_macs, 896u);
        EXPECT_U64(c.routing_adds, 21952u);
        EXPECT_U64(c.epilogue_ops, 131712u);
        EXPECT_U64(c.expert_params, 602112u);
        EXPECT_U64(c.bias_params, 5376u);
        EXPECT_U64(c.routing_params, 904u);
        EXPECT_U64(c.params, 608392u);
        EXPECT_U64(c.min_bytes, 3048256u);
        EXPECT_U64(c.materialized_bytes, 3655744u);
        condconv_layer_desc_destroy(d);
    }
    { /* Depthwise 5x5, 672 channels, stride 2, "same", 14 -> 7, E = 4, no bias,
       * external routing, ReLU, N = 2. |W| = 672*25 = 16800;
       * conv 2*16800*49 = 1646400; aggregation 2*4*16800 = 134400; no routing;
       * epilogue 2*672*49 = 65856; params 4*16800 = 67200;
       * bytes 4*(x 263424 + y 65856 + 67200 + alpha 8) = 1585952;
       * materialised + 2*2*16800*4 = 268800 -> 1854752. */
        condconv_layer_desc_t d = make(672, 672, 5, 2, 672, CONDCONV_PADDING_SAME, 0, 4, 0, CONDCONV_ROUTING_EXTERNAL,
                                       CONDCONV_ACTIVATION_RELU);
        EXPECT_OK(condconv_cost_model(d, 2, 14, 14, &c));
        EXPECT(c.out_h == 7 && c.out_w == 7, "out %dx%d", c.out_h, c.out_w);
        EXPECT_U64(c.conv_macs, 1646400u);
        EXPECT_U64(c.aggregation_macs, 134400u);
        EXPECT_U64(c.routing_macs, 0u);
        EXPECT_U64(c.routing_adds, 0u);
        EXPECT_U64(c.epilogue_ops, 65856u);
        EXPECT_U64(c.params, 67200u);
        EXPECT_U64(c.routing_params, 0u);
        EXPECT_U64(c.min_bytes, 1585952u);
        EXPECT_U64(c.materialized_bytes, 1854752u);
        condconv_layer_desc_destroy(d);
    }
    { /* Grouped 3x3 64 -> 128, 4 groups, pad 1, E = 2, biases, softmax, N = 3,
       * 9x11. |W| = 128*16*9 = 18432; conv 3*18432*99 = 5474304;
       * aggregation 3*2*(18432+128) = 111360; FC 3*64*2 = 384;
       * pool 3*64*99 = 19008; epilogue 3*128*99 = 38016;
       * params 36864 + 256 + 128 + 2 = 37250. */
        condconv_layer_desc_t d = make(64, 128, 3, 1, 4, CONDCONV_PADDING_EXPLICIT, 1, 2, 1, CONDCONV_ROUTING_SOFTMAX,
                                       CONDCONV_ACTIVATION_SILU);
        EXPECT_OK(condconv_cost_model(d, 3, 9, 11, &c));
        EXPECT(c.out_h == 9 && c.out_w == 11, "out %dx%d", c.out_h, c.out_w);
        EXPECT_U64(c.conv_macs, 5474304u);
        EXPECT_U64(c.aggregation_macs, 111360u);
        EXPECT_U64(c.routing_macs, 384u);
        EXPECT_U64(c.routing_adds, 19008u);
        EXPECT_U64(c.epilogue_ops, 38016u);
        EXPECT_U64(c.params, 37250u);
        condconv_layer_desc_destroy(d);
    }
    return tu_finish("test_cost_model");
}
