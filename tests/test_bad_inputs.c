/* Every bad input returns its specific status, sets a message naming what
 * was wrong, and writes nothing: outputs keep their poison, descriptors
 * keep their settings. CPU path and context/descriptor/cost-model calls;
 * the GPU-only cases (workspace size and alignment) are in
 * test_gpu_bad_inputs.c. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"

#define Y_N 64
static float y[Y_N], y_before[Y_N], alpha_out[8], alpha_before[8];

static void poison_outputs(void)
{
    tu_fill_nan(y, Y_N);
    y[0] = 12345.0f; /* not only NaN, so tu_same_bytes sees a real pattern */
    memcpy(y_before, y, sizeof y);
    for (int i = 0; i < 8; ++i) alpha_out[i] = -777.0f;
    memcpy(alpha_before, alpha_out, sizeof alpha_out);
}

/* The call failed with `want`, said something, and wrote nothing. */
#define EXPECT_REJECTED(call, want, needle)                                                                            \
    do {                                                                                                               \
        poison_outputs();                                                                                              \
        if (EXPECT_STATUS(call, want)) {                                                                               \
            EXPECT(strstr(condconv_last_error(), needle) != NULL, "message '%s' lacks '%s'", condconv_last_error(),    \
                   needle);                                                                                            \
            EXPECT(strstr(condconv_last_error(), condconv_status_string(want)) != NULL,                                \
                   "message '%s' lacks the status name", condconv_last_error());                                       \
        }                                                                                                              \
        EXPECT(tu_same_bytes(y, y_before, sizeof y), "%s wrote to y", #call);                                          \
        EXPECT(tu_same_bytes(alpha_out, alpha_before, sizeof alpha_out), "%s wrote to alpha", #call);                  \
    } while (0)

static condconv_layer_desc_t valid_desc(void)
{
    condconv_layer_desc_t d;
    EXPECT_OK(condconv_layer_desc_create(&d));
    EXPECT_OK(condconv_layer_desc_set_conv(d, 2, 2, 3, 3, 1, 1, 1, 1, 1));
    EXPECT_OK(condconv_layer_desc_set_experts(d, 2, 1));
    return d;
}

static void descriptor_setters(void)
{
    condconv_layer_desc_t d = valid_desc();
    condconv_layer_info before, after;
    EXPECT_OK(condconv_layer_desc_get_info(d, &before));

    EXPECT_REJECTED(condconv_layer_desc_create(NULL), CONDCONV_STATUS_NULL_POINTER, "desc");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(NULL, 2, 2, 3, 3, 1, 1, 1, 1, 1), CONDCONV_STATUS_NULL_POINTER,
                    "desc");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(d, 0, 2, 3, 3, 1, 1, 1, 1, 1), CONDCONV_STATUS_BAD_SIZE,
                    "in_channels=0");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(d, 2, -4, 3, 3, 1, 1, 1, 1, 1), CONDCONV_STATUS_BAD_SIZE,
                    "out_channels=-4");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(d, 2, 2, 0, 3, 1, 1, 1, 1, 1), CONDCONV_STATUS_BAD_SIZE, "kernel_h=0");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(d, 2, 2, 3, 3, 1, -1, 1, 1, 1), CONDCONV_STATUS_BAD_SIZE,
                    "stride_w=-1");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(d, 2, 2, 3, 3, 1, 1, 0, 1, 1), CONDCONV_STATUS_BAD_SIZE,
                    "dilation_h=0");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(d, 2, 2, 3, 3, 1, 1, 1, 1, 0), CONDCONV_STATUS_BAD_SIZE, "groups=0");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(d, 6, 4, 3, 3, 1, 1, 1, 1, 3), CONDCONV_STATUS_BAD_GROUPS, "groups=3");
    EXPECT_REJECTED(condconv_layer_desc_set_conv(d, 4, 6, 3, 3, 1, 1, 1, 1, 4), CONDCONV_STATUS_BAD_GROUPS,
                    "out_channels=6");
    EXPECT_REJECTED(condconv_layer_desc_set_padding(d, CONDCONV_PADDING_EXPLICIT, -1, 0), CONDCONV_STATUS_BAD_SIZE,
                    "pad_h=-1");
    EXPECT_REJECTED(condconv_layer_desc_set_padding(d, CONDCONV_PADDING_SAME, 1, 0), CONDCONV_STATUS_BAD_VALUE, "SAME");
    EXPECT_REJECTED(condconv_layer_desc_set_padding(d, (condconv_padding_mode)7, 0, 0), CONDCONV_STATUS_BAD_VALUE,
                    "padding mode 7");
    EXPECT_REJECTED(condconv_layer_desc_set_experts(d, 0, 1), CONDCONV_STATUS_BAD_EXPERTS, "num_experts=0");
    EXPECT_REJECTED(condconv_layer_desc_set_experts(d, CONDCONV_MAX_EXPERTS + 1, 1), CONDCONV_STATUS_BAD_EXPERTS,
                    "num_experts=129");
    EXPECT_REJECTED(condconv_layer_desc_set_experts(d, 2, 2), CONDCONV_STATUS_BAD_VALUE, "has_bias=2");
    EXPECT_REJECTED(condconv_layer_desc_set_experts(d, 2, -1), CONDCONV_STATUS_BAD_VALUE, "has_bias=-1");
    EXPECT_REJECTED(condconv_layer_desc_set_routing(d, CONDCONV_ROUTING_SOFTMAX, 0.0f), CONDCONV_STATUS_BAD_VALUE,
                    "temperature");
    EXPECT_REJECTED(condconv_layer_desc_set_routing(d, CONDCONV_ROUTING_SOFTMAX, NAN), CONDCONV_STATUS_BAD_VALUE,
                    "temperature");
    EXPECT_REJECTED(condconv_layer_desc_set_routing(d, (condconv_routing)9, 1.0f), CONDCONV_STATUS_BAD_VALUE,
                    "routing mode 9");
    EXPECT_REJECTED(condconv_layer_desc_set_activation(d, (condconv_activation)-1), CONDCONV_STATUS_BAD_VALUE,
                    "activation -1");
    EXPECT_REJECTED(condconv_layer_desc_set_format(d, (condconv_dtype)5, CONDCONV_LAYOUT_NCHW),
                    CONDCONV_STATUS_BAD_VALUE, "dtype 5");
    EXPECT_REJECTED(condconv_layer_desc_set_format(d, CONDCONV_DTYPE_F32, (condconv_layout)3),
                    CONDCONV_STATUS_BAD_VALUE, "layout 3");
    EXPECT_REJECTED(condconv_layer_desc_get_info(d, NULL), CONDCONV_STATUS_NULL_POINTER, "info");

    EXPECT_OK(condconv_layer_desc_get_info(d, &after));
    EXPECT(tu_same_bytes(&before, &after, sizeof before), "failed setters changed the descriptor");
    condconv_layer_desc_destroy(d);
}

static void context_calls(void)
{
    condconv_context_t ctx = NULL;
    EXPECT_REJECTED(condconv_context_create(NULL, CONDCONV_DEVICE_CPU), CONDCONV_STATUS_NULL_POINTER, "context");
    EXPECT_REJECTED(condconv_context_create(&ctx, -5), CONDCONV_STATUS_BAD_VALUE, "device -5");
    EXPECT(ctx == NULL, "a failed create wrote its output");
    if (condconv_device_count() == 0) {
        EXPECT_REJECTED(condconv_context_create(&ctx, 0), CONDCONV_STATUS_NO_DEVICE, "CUDA device");
        EXPECT(ctx == NULL, "a failed create wrote its output");
    } else {
        EXPECT_REJECTED(condconv_context_create(&ctx, condconv_device_count()), CONDCONV_STATUS_NO_DEVICE, "present");
    }
    EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
    EXPECT_REJECTED(condconv_context_set_math(ctx, (condconv_math)4), CONDCONV_STATUS_BAD_VALUE, "math mode 4");
    EXPECT_REJECTED(condconv_context_set_algo_select(ctx, (condconv_algo_select)4), CONDCONV_STATUS_BAD_VALUE,
                    "selection mode 4");
    EXPECT_REJECTED(condconv_context_set_stream(ctx, (struct CUstream_st *)0x1000), CONDCONV_STATUS_NO_DEVICE,
                    "CPU-only");
    EXPECT_REJECTED(condconv_context_get_math(ctx, NULL), CONDCONV_STATUS_NULL_POINTER, "math");
    /* The AUTO budget: default, bounds, NaN; a refused value leaves the old one. */
    float budget = -1.0f;
    EXPECT_OK(condconv_context_get_auto_budget(ctx, &budget));
    EXPECT(budget == CONDCONV_DEFAULT_AUTO_BUDGET_MS, "default AUTO budget %g ms", (double)budget);
    EXPECT_OK(condconv_context_set_auto_budget(ctx, 0.0f));
    EXPECT_REJECTED(condconv_context_set_auto_budget(ctx, -1.0f), CONDCONV_STATUS_BAD_VALUE, "budget must be");
    EXPECT_REJECTED(condconv_context_set_auto_budget(ctx, NAN), CONDCONV_STATUS_BAD_VALUE, "budget must be");
    EXPECT_REJECTED(condconv_context_set_auto_budget(ctx, INFINITY), CONDCONV_STATUS_BAD_VALUE, "budget must be");
    EXPECT_REJECTED(condconv_context_set_auto_budget(NULL, 5.0f), CONDCONV_STATUS_NULL_POINTER, "context");
    EXPECT_REJECTED(condconv_context_get_auto_budget(ctx, NULL), CONDCONV_STATUS_NULL_POINTER, "milliseconds");
    EXPECT_OK(condconv_context_get_auto_budget(ctx, &budget));
    EXPECT(budget == 0.0f, "a refused budget changed the budget to %g ms", (double)budget);
    condconv_context_destroy(ctx);
}

// NOLINTNEXTLINE(readability-function-size): one refusal a line, in the API's order; splitting it scatters them
static void layer_and_forward(void)
{
    condconv_context_t ctx;
    EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
    condconv_layer_desc_t d = valid_desc();
    static float experts[2 * 2 * 2 * 9], bias[4], rw[4], rb[2], x[2 * 2 * 4 * 4], alpha_in[4];
    tu_fill_uniform(experts, sizeof experts / sizeof experts[0], -1, 1);
    const condconv_params good = {experts, bias, rw, rb};
    condconv_layer_t layer = NULL;

    EXPECT_REJECTED(condconv_layer_create(NULL, d, &good, &layer), CONDCONV_STATUS_NULL_POINTER, "context");
    EXPECT_REJECTED(condconv_layer_create(ctx, NULL, &good, &layer), CONDCONV_STATUS_NULL_POINTER, "desc");
    EXPECT_REJECTED(condconv_layer_create(ctx, d, NULL, &layer), CONDCONV_STATUS_NULL_POINTER, "params");
    EXPECT_REJECTED(condconv_layer_create(ctx, d, &good, NULL), CONDCONV_STATUS_NULL_POINTER, "layer");
    const condconv_params no_experts = {NULL, bias, rw, rb};
    EXPECT_REJECTED(condconv_layer_create(ctx, d, &no_experts, &layer), CONDCONV_STATUS_NULL_POINTER, "experts");
    const condconv_params no_bias = {experts, NULL, rw, rb};
    EXPECT_REJECTED(condconv_layer_create(ctx, d, &no_bias, &layer), CONDCONV_STATUS_NULL_POINTER, "expert_bias");
    const condconv_params no_routing = {experts, bias, NULL, rb};
    EXPECT_REJECTED(condconv_layer_create(ctx, d, &no_routing, &layer), CONDCONV_STATUS_NULL_POINTER, "routing_weight");
    EXPECT(layer == NULL, "a failed create wrote its output");

    condconv_layer_desc_t unset;
    EXPECT_OK(condconv_layer_desc_create(&unset));
    EXPECT_REJECTED(condconv_layer_create(ctx, unset, &good, &layer), CONDCONV_STATUS_BAD_SIZE, "never set");
    /* Byte counts that overflow: 128 experts of 2^30 x 2^30 x 1 x 2^15 weights. */
    EXPECT_OK(condconv_layer_desc_set_conv(unset, 1 << 30, 1 << 30, 1, 1 << 15, 1, 1, 1, 1, 1));
    EXPECT_OK(condconv_layer_desc_set_experts(unset, CONDCONV_MAX_EXPERTS, 1));
    EXPECT_REJECTED(condconv_layer_create(ctx, unset, &good, &layer), CONDCONV_STATUS_SIZE_OVERFLOW, "overflow");
    condconv_cost cost;
    EXPECT_REJECTED(condconv_cost_model(unset, 1, 1, 1 << 15, &cost), CONDCONV_STATUS_SIZE_OVERFLOW, "overflow");
    condconv_layer_desc_destroy(unset);

    EXPECT_OK(condconv_layer_create(ctx, d, &good, &layer));
    EXPECT_REJECTED(condconv_forward_cpu(NULL, 2, 4, 4, x, y, NULL, alpha_out), CONDCONV_STATUS_NULL_POINTER, "layer");
    EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 4, NULL, y, NULL, alpha_out), CONDCONV_STATUS_NULL_POINTER,
                    "'x'");
    EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 4, x, NULL, NULL, alpha_out), CONDCONV_STATUS_NULL_POINTER,
                    "'y'");
    EXPECT_REJECTED(condconv_forward_cpu(layer, 0, 4, 4, x, y, NULL, alpha_out), CONDCONV_STATUS_BAD_SIZE, "n=0");
    EXPECT_REJECTED(condconv_forward_cpu(layer, 2, -4, 4, x, y, NULL, alpha_out), CONDCONV_STATUS_BAD_SIZE, "h=-4");
    EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 0, x, y, NULL, alpha_out), CONDCONV_STATUS_BAD_SIZE, "w=0");
    /* A 3x3 kernel without padding on a 2x2 input has no output. */
    EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 2, 2, x, y, NULL, alpha_out), CONDCONV_STATUS_EMPTY_OUTPUT,
                    "empty output");
    EXPECT_REJECTED(condconv_layer_desc_get_output_dims(d, 2, 1, NULL, NULL, NULL), CONDCONV_STATUS_EMPTY_OUTPUT,
                    "empty output");
    EXPECT_REJECTED(condconv_cost_model(d, 1, 1, 2, &cost), CONDCONV_STATUS_EMPTY_OUTPUT, "empty output");
    /* N * C * H * W * 4 bytes beyond 2^64. */
    EXPECT_REJECTED(condconv_forward_cpu(layer, INT_MAX, INT_MAX, INT_MAX, x, y, NULL, alpha_out),
                    CONDCONV_STATUS_SIZE_OVERFLOW, "overflow");
    EXPECT_REJECTED(condconv_route_cpu(layer, 2, 4, 4, x, NULL), CONDCONV_STATUS_NULL_POINTER, "routing_out");
    /* Overlapping buffers are refused as on the GPU path (x: 64 floats, y: 16, alpha: 4), and nothing is written. */
    {
        static float buf[128], buf_before[128];
        tu_fill_uniform(buf, 128, -1, 1);
        memcpy(buf_before, buf, sizeof buf);
        EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 4, buf, buf + 60, NULL, NULL), CONDCONV_STATUS_BAD_VALUE,
                        "x and y overlap");
        EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 4, buf + 10, buf, NULL, NULL), CONDCONV_STATUS_BAD_VALUE,
                        "x and y overlap");
        EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 4, buf, buf + 64, NULL, buf + 2), CONDCONV_STATUS_BAD_VALUE,
                        "routing_out and x overlap");
        EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 4, buf, buf + 64, NULL, buf + 78), CONDCONV_STATUS_BAD_VALUE,
                        "routing_out and y overlap");
        EXPECT(tu_same_bytes(buf, buf_before, sizeof buf), "a refused overlapping forward wrote");
        /* Adjacent is not overlapping. */
        EXPECT_OK(condconv_forward_cpu(layer, 2, 4, 4, buf, buf + 64, NULL, buf + 80));
    }
    /* GPU entry points on a CPU-only context. */
    EXPECT_REJECTED(condconv_forward(layer, 2, 4, 4, x, y, NULL, NULL, NULL, 0), CONDCONV_STATUS_NO_DEVICE, "CPU-only");
    EXPECT_REJECTED(condconv_prepare(layer, 2, 4, 4), CONDCONV_STATUS_NO_DEVICE, "CPU-only");
    EXPECT_REJECTED(condconv_route(layer, 2, 4, 4, x, alpha_out), CONDCONV_STATUS_NO_DEVICE, "CPU-only");
    size_t ws = 99;
    EXPECT_REJECTED(condconv_get_workspace_size(layer, 2, 4, 4, &ws), CONDCONV_STATUS_NO_DEVICE, "CPU-only");
    EXPECT(ws == 99, "workspace size written on failure");
    EXPECT_REJECTED(condconv_layer_set_algo(layer, CONDCONV_ALGO_COUNT), CONDCONV_STATUS_BAD_VALUE,
                    "unknown algorithm");
    /* Candidates by name and kernel variants by number (issue 19). */
    EXPECT_REJECTED(condconv_layer_set_candidate(layer, "fusedx"), CONDCONV_STATUS_BAD_VALUE, "no algorithm is named");
    EXPECT_REJECTED(condconv_layer_set_candidate(layer, "fused[a"), CONDCONV_STATUS_BAD_VALUE, "not a candidate");
    EXPECT_REJECTED(condconv_layer_set_candidate(layer, "[a]"), CONDCONV_STATUS_BAD_VALUE, "no algorithm is named");
    EXPECT_REJECTED(condconv_layer_set_candidate(layer, "auto"), CONDCONV_STATUS_BAD_VALUE, "no algorithm is named");
    EXPECT_REJECTED(
        condconv_layer_set_candidate(layer, "fused[a variant name far longer than any variant has ever been]"),
        CONDCONV_STATUS_BAD_VALUE, "longer than");
    EXPECT_REJECTED(condconv_layer_set_candidate(NULL, NULL), CONDCONV_STATUS_NULL_POINTER, "layer");
    EXPECT_OK(condconv_layer_set_candidate(layer, "fused[nhwc coalesced]"));
    EXPECT_OK(condconv_layer_set_candidate(layer, NULL));
    EXPECT_REJECTED(condconv_layer_set_kernel_variants(layer, -2, 0), CONDCONV_STATUS_BAD_VALUE, "routing variant");
    EXPECT_REJECTED(condconv_layer_set_kernel_variants(layer, 0, 99), CONDCONV_STATUS_BAD_VALUE, "aggregation variant");
    EXPECT_OK(condconv_layer_set_kernel_variants(layer, -1, 0));
    condconv_layer_destroy(layer);

    /* External routing: the forward needs routing weights. */
    EXPECT_OK(condconv_layer_desc_set_routing(d, CONDCONV_ROUTING_EXTERNAL, 1.0f));
    const condconv_params ext = {experts, bias, NULL, NULL};
    EXPECT_OK(condconv_layer_create(ctx, d, &ext, &layer));
    EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 4, x, y, NULL, alpha_out), CONDCONV_STATUS_MISSING_ROUTING,
                    "routing_in");
    EXPECT_REJECTED(condconv_route_cpu(layer, 2, 4, 4, x, alpha_out), CONDCONV_STATUS_NOT_SUPPORTED,
                    "external routing");
    poison_outputs();
    EXPECT_OK(condconv_forward_cpu(layer, 2, 4, 4, x, y, alpha_in, NULL)); /* and with them it works */
    EXPECT_REJECTED(condconv_forward_cpu(layer, 2, 4, 4, x, y, y + 2, NULL), CONDCONV_STATUS_BAD_VALUE,
                    "routing_in and y overlap");
    {
        static float alpha_io[8];
        EXPECT_STATUS(condconv_forward_cpu(layer, 2, 4, 4, x, y, alpha_io, alpha_io + 1), CONDCONV_STATUS_BAD_VALUE);
        EXPECT(strstr(condconv_last_error(), "routing_out and routing_in") != NULL, "message: %s",
               condconv_last_error());
        poison_outputs();
        EXPECT_OK(condconv_forward_cpu(layer, 2, 4, 4, x, y, alpha_io, alpha_io)); /* the same buffer: allowed */
    }
    condconv_layer_destroy(layer);

    condconv_layer_desc_destroy(d);
    condconv_context_destroy(ctx);
}

int main(void)
{
    tu_seed_from_env();
    EXPECT(strcmp(condconv_last_error(), "") == 0, "no message before any failure");
    EXPECT(strcmp(condconv_status_string(CONDCONV_STATUS_BAD_GROUPS), "CONDCONV_STATUS_BAD_GROUPS") == 0,
           "status names");
    EXPECT(strcmp(condconv_status_string((condconv_status)999), "CONDCONV_STATUS_UNKNOWN") == 0, "unknown status");
    EXPECT(condconv_algo_name((condconv_algo)99) == NULL, "unknown algorithm name");
    descriptor_setters();
    context_calls();
    layer_and_forward();
    return tu_finish("test_bad_inputs");
}
