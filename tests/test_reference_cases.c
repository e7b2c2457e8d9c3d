/* The CPU reference on small cases computed by hand (the arithmetic is in
 * the comments): 1x1 with expert and bias mixing, stride 2 with padding,
 * dilation 2, groups, depthwise, "same" padding with odd and even kernels
 * and stride 2, activations, NaN propagation. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"

/* Runs one layer on the CPU with external alpha and compares with want. */
static void run_case(const char *name, const tu_layer_spec *s, const float *experts, const float *bias,
                     const float *alpha, int n, int h, int w, const float *x, const float *want, size_t want_n)
{
    condconv_context_t ctx;
    EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
    condconv_layer_desc_t desc = tu_make_desc(s);
    const condconv_params params = {experts, bias, NULL, NULL};
    condconv_layer_t layer;
    if (EXPECT_OK(condconv_layer_create(ctx, desc, &params, &layer))) {
        float y[64];
        tu_fill_nan(y, 64);
        EXPECT_OK(condconv_forward_cpu(layer, n, h, w, x, y, alpha, NULL));
        if (tu_compare(name, y, want, NULL, want_n, 1e-6, 1e-6)) tu_fail(__FILE__, __LINE__, name, "mismatch");
        condconv_layer_destroy(layer);
    }
    condconv_layer_desc_destroy(desc);
    condconv_context_destroy(ctx);
}

static void iota(float *x, int n) /* 1, 2, ..., n */
{
    for (int i = 0; i < n; ++i) x[i] = (float)(i + 1);
}

static void ones(float *x, int n)
{
    for (int i = 0; i < n; ++i) x[i] = 1.0f;
}

int main(void)
{
    const float one = 1.0f;
    { /* 1x1, Cin 2 -> Cout 1, E = 2 with biases, alpha = (2, 3):
       * W = 2*[1,0] + 3*[0,2] = [2,6]; b = 2*0.5 + 3*(-1) = -2;
       * y = 2*[1,2] + 6*[3,4] - 2 = [18, 26]. */
        tu_layer_spec s = tu_basic_spec(2, 1, 1, 2);
        s.has_bias = 1;
        const float experts[] = {1, 0, 0, 2}, bias[] = {0.5f, -1.0f}, alpha[] = {2, 3};
        const float x[] = {1, 2, 3, 4}, want[] = {18, 26};
        run_case("mix_1x1", &s, experts, bias, alpha, 1, 1, 2, x, want, 2);
    }
    { /* 3x3 ones, stride 2, pad 1 on the 4x4 grid 1..16 -> 2x2:
       * (0,0) 1+2+5+6 = 14; (0,1) 2+3+4+6+7+8 = 30;
       * (1,0) 5+6+9+10+13+14 = 57; (1,1) 6+7+8+10+11+12+14+15+16 = 99. */
        tu_layer_spec s = tu_basic_spec(1, 1, 3, 1);
        s.stride_h = s.stride_w = 2;
        s.pad_h = s.pad_w = 1;
        float w[9], x[16];
        ones(w, 9);
        iota(x, 16);
        const float want[] = {14, 30, 57, 99};
        run_case("stride2_pad1", &s, w, NULL, &one, 1, 4, 4, x, want, 4);
    }
    { /* 3x3 with weights 1..9, dilation 2, on the 5x5 grid 1..25 -> 1x1:
       * taps at rows/cols 0,2,4: 1*1+2*3+3*5 + 4*11+5*13+6*15 + 7*21+8*23+9*25 = 22+199+556 = 777. */
        tu_layer_spec s = tu_basic_spec(1, 1, 3, 1);
        s.dil_h = s.dil_w = 2;
        float w[9], x[25];
        iota(w, 9);
        iota(x, 25);
        const float want[] = {777};
        run_case("dilation2", &s, w, NULL, &one, 1, 5, 5, x, want, 1);
    }
    { /* groups 2: Cin 4 -> Cout 2, 1x1; out0 sees in0,in1 with (1,10),
       * out1 sees in2,in3 with (100,1000); x = (1,2,3,4): y = (21, 4300). */
        tu_layer_spec s = tu_basic_spec(4, 2, 1, 1);
        s.groups = 2;
        const float w[] = {1, 10, 100, 1000}, x[] = {1, 2, 3, 4}, want[] = {21, 4300};
        run_case("groups2", &s, w, NULL, &one, 1, 1, 1, x, want, 2);
    }
    { /* depthwise 3x3, pad 1, 2 channels on 3x3: channel 0 box sums of 1..9
       * with zero padding; channel 1 has only a centre tap of 2 on ones. */
        tu_layer_spec s = tu_basic_spec(2, 2, 3, 1);
        s.groups = 2;
        s.pad_h = s.pad_w = 1;
        float w[18] = {0}, x[18];
        ones(w, 9);
        w[9 + 4] = 2.0f;
        iota(x, 9);
        ones(x + 9, 9);
        const float want[] = {12, 21, 16, 27, 45, 33, 24, 39, 28, 2, 2, 2, 2, 2, 2, 2, 2, 2};
        run_case("depthwise3x3", &s, w, NULL, &one, 1, 3, 3, x, want, 18);
    }
    { /* "same", even kernel 2x2, stride 1, on 3x3: total padding 1 goes
       * below/right: y(r,c) = sum of x over rows r..r+1, cols c..c+1. */
        tu_layer_spec s = tu_basic_spec(1, 1, 2, 1);
        s.pad_mode = CONDCONV_PADDING_SAME;
        float w[4], x[9];
        ones(w, 4);
        iota(x, 9);
        const float want[] = {12, 16, 9, 24, 28, 15, 15, 17, 9};
        run_case("same_even", &s, w, NULL, &one, 1, 3, 3, x, want, 9);
    }
    { /* "same", 3x3 stride 2 on 4x4: out 2x2, total padding
       * (2-1)*2 + 3 - 4 = 1, all of it below/right (TF rule):
       * (0,0) rows 0-2 cols 0-2 = 54; (0,1) rows 0-2 cols 2-3 = 45;
       * (1,0) rows 2-3 cols 0-2 = 72; (1,1) rows 2-3 cols 2-3 = 54. */
        tu_layer_spec s = tu_basic_spec(1, 1, 3, 1);
        s.stride_h = s.stride_w = 2;
        s.pad_mode = CONDCONV_PADDING_SAME;
        float w[9], x[16];
        ones(w, 9);
        iota(x, 16);
        const float want[] = {54, 45, 72, 54};
        run_case("same_stride2", &s, w, NULL, &one, 1, 4, 4, x, want, 4);
    }
    {                           /* "same" output sizes and padding: odd 3x3 s1 on 4x4 -> 4x4 pads 1,1;
                                 * even 4x4 s1 on 5x5 -> 5x5, total 3: 1 above, 2 below; 5x5 s2 on 7x7
                                 * -> 4x4, total (4-1)*2+5-7 = 4: 2 and 2. */
        const int cases[][6] = {/* k, stride, in, out, top, bottom */
                                {3, 1, 4, 4, 1, 1},
                                {4, 1, 5, 5, 1, 2},
                                {5, 2, 7, 4, 2, 2},
                                {1, 2, 6, 3, 0, 0}};
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
            tu_layer_spec s = tu_basic_spec(1, 1, cases[i][0], 1);
            s.stride_h = s.stride_w = cases[i][1];
            s.pad_mode = CONDCONV_PADDING_SAME;
            condconv_layer_desc_t d = tu_make_desc(&s);
            int ho = 0, wo = 0, pads[4] = {0};
            EXPECT_OK(condconv_layer_desc_get_output_dims(d, cases[i][2], cases[i][2], &ho, &wo, pads));
            EXPECT(ho == cases[i][3] && wo == cases[i][3], "same case %zu: out %dx%d, want %d", i, ho, wo, cases[i][3]);
            EXPECT(pads[0] == cases[i][4] && pads[1] == cases[i][5] && pads[2] == cases[i][4] && pads[3] == cases[i][5],
                   "same case %zu: pads %d,%d,%d,%d", i, pads[0], pads[1], pads[2], pads[3]);
            condconv_layer_desc_destroy(d);
        }
    }
    { /* activations on a 1x1 identity: relu(x) and silu(x) = x / (1 + e^-x). */
        const float x[] = {-2.0f, -0.5f, 0.0f, 1.5f};
        const float relu[] = {0, 0, 0, 1.5f};
        const float silu[] = {-0.2384058440442351f, -0.1887703343990727f, 0.0f, 1.2263617142904655f};
        tu_layer_spec s = tu_basic_spec(1, 1, 1, 1);
        s.activation = CONDCONV_ACTIVATION_RELU;
        run_case("relu", &s, &one, NULL, &one, 1, 2, 2, x, relu, 4);
        s.activation = CONDCONV_ACTIVATION_SILU;
        run_case("silu", &s, &one, NULL, &one, 1, 2, 2, x, silu, 4);
    }
    { /* A NaN input reaches exactly the outputs whose window holds it, through ReLU too. */
        tu_layer_spec s = tu_basic_spec(1, 1, 1, 1);
        s.activation = CONDCONV_ACTIVATION_RELU;
        condconv_context_t ctx;
        EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
        condconv_layer_desc_t desc = tu_make_desc(&s);
        const condconv_params params = {&one, NULL, NULL, NULL};
        condconv_layer_t layer;
        EXPECT_OK(condconv_layer_create(ctx, desc, &params, &layer));
        const float x[] = {1.0f, NAN, -1.0f};
        float y[3] = {0};
        EXPECT_OK(condconv_forward_cpu(layer, 1, 1, 3, x, y, &one, NULL));
        EXPECT(y[0] == 1.0f && isnan(y[1]) && y[2] == 0.0f, "NaN propagation: %g %g %g", (double)y[0], (double)y[1],
               (double)y[2]);
        condconv_layer_destroy(layer);
        condconv_layer_desc_destroy(desc);
        condconv_context_destroy(ctx);
    }
    return tu_finish("test_reference_cases");
}
