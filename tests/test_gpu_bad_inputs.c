/* GPU-only bad inputs: workspace smaller than queried, NULL or misaligned
 * workspace, overlapping x and y, depthwise_fused forced on a dense layer, routing on an external-routing layer, a
 * device that does not exist. Each returns its status with a message, and y keeps its poison. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_util.h"

#define N 2
#define H 8
#define W 8

static float *dy;
static float y_before[N * 4 * H * W], y_after[N * 4 * H * W];

static void poison(void)
{
    for (size_t i = 0; i < sizeof y_before / sizeof y_before[0]; ++i) y_before[i] = (float)i - 1000.0f;
    tu_to_dev(dy, y_before, sizeof y_before / sizeof y_before[0]);
}

#define EXPECT_REJECTED(call, want, needle)                                                                            \
    do {                                                                                                               \
        poison();                                                                                                      \
        if (EXPECT_STATUS(call, want))                                                                                 \
            EXPECT(strstr(condconv_last_error(), needle) != NULL, "message '%s' lacks '%s'", condconv_last_error(),    \
                   needle);                                                                                            \
        TU_CUDA(cudaDeviceSynchronize());                                                                              \
        tu_to_host(y_after, dy, sizeof y_after / sizeof y_after[0]);                                                   \
        EXPECT(tu_same_bytes(y_after, y_before, sizeof y_after), "%s wrote to y", #call);                              \
    } while (0)

int main(void)
{
    tu_require_gpu("test_gpu_bad_inputs");
    tu_seed_from_env();
    condconv_context_t ctx = NULL;
    EXPECT_STATUS(condconv_context_create(&ctx, condconv_device_count()), CONDCONV_STATUS_NO_DEVICE);
    EXPECT(ctx == NULL, "failed create wrote the context");
    EXPECT_OK(condconv_context_create(&ctx, 0));

    tu_layer_spec s = tu_basic_spec(4, 4, 3, 3);
    s.pad_h = s.pad_w = 1;
    s.has_bias = 1;
    s.routing = CONDCONV_ROUTING_SIGMOID;
    tu_params p;
    tu_make_params(&s, &p);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t layer;
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer));
    EXPECT_OK(condconv_layer_set_algo(layer, CONDCONV_ALGO_CUDNN_GROUPED));

    const size_t x_n = (size_t)N * 4 * H * W;
    float *dx = tu_dev_alloc(x_n);
    dy = tu_dev_alloc(x_n);
    TU_CUDA(cudaMemset(dx, 0, x_n * sizeof(float)));
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, N, H, W, &ws_bytes));
    EXPECT(ws_bytes > 0, "cudnn_grouped needs workspace for per-sample filters");
    unsigned char *dws = tu_dev_alloc_bytes(ws_bytes + 256);

    EXPECT_REJECTED(condconv_forward(layer, N, H, W, dx, dy, NULL, NULL, dws, ws_bytes - 1),
                    CONDCONV_STATUS_WORKSPACE_TOO_SMALL, "workspace");
    EXPECT_REJECTED(condconv_forward(layer, N, H, W, dx, dy, NULL, NULL, NULL, ws_bytes), CONDCONV_STATUS_NULL_POINTER,
                    "workspace");
    EXPECT_REJECTED(condconv_forward(layer, N, H, W, dx, dy, NULL, NULL, dws + 16, ws_bytes),
                    CONDCONV_STATUS_MISALIGNED, "aligned");
    EXPECT_REJECTED(
        condconv_forward(layer, N, H, W, (const unsigned char *)(const void *)dx + 2, dy, NULL, NULL, dws, ws_bytes),
        CONDCONV_STATUS_MISALIGNED, "x");
    EXPECT_REJECTED(condconv_forward(layer, N, H, W, dx, (unsigned char *)(void *)dy + 2, NULL, NULL, dws, ws_bytes),
                    CONDCONV_STATUS_MISALIGNED, "y");
    EXPECT_REJECTED(condconv_forward(layer, N, H, W, dy + 4, dy, NULL, NULL, dws, ws_bytes), CONDCONV_STATUS_BAD_VALUE,
                    "overlap");
    EXPECT_REJECTED(condconv_forward(layer, N, H, W, dx, NULL, NULL, NULL, dws, ws_bytes), CONDCONV_STATUS_NULL_POINTER,
                    "'y'");
    EXPECT_REJECTED(condconv_forward(layer, 0, H, W, dx, dy, NULL, NULL, dws, ws_bytes), CONDCONV_STATUS_BAD_SIZE,
                    "n=0");
    EXPECT_OK(condconv_layer_set_algo(layer, CONDCONV_ALGO_DEPTHWISE_FUSED));
    EXPECT_REJECTED(condconv_prepare(layer, N, H, W), CONDCONV_STATUS_NOT_SUPPORTED, "depthwise");
    /* And the layer still works afterwards. */
    EXPECT_OK(condconv_layer_set_algo(layer, CONDCONV_ALGO_AUTO));
    EXPECT_OK(condconv_get_workspace_size(layer, N, H, W, &ws_bytes));
    unsigned char *dws2 = tu_dev_alloc_bytes(ws_bytes);
    EXPECT_OK(condconv_forward(layer, N, H, W, dx, dy, NULL, NULL, dws2, ws_bytes));
    TU_CUDA(cudaDeviceSynchronize());
    condconv_layer_destroy(layer);

    s.routing = CONDCONV_ROUTING_EXTERNAL;
    condconv_layer_desc_t ext_desc = tu_make_desc(&s);
    EXPECT_OK(condconv_layer_create(ctx, ext_desc, &view, &layer));
    EXPECT_REJECTED(condconv_route(layer, N, H, W, dx, dy), CONDCONV_STATUS_NOT_SUPPORTED, "external");
    EXPECT_REJECTED(condconv_forward(layer, N, H, W, dx, dy, NULL, NULL, dws2, ws_bytes),
                    CONDCONV_STATUS_MISSING_ROUTING, "routing_in");
    condconv_layer_destroy(layer);
    condconv_layer_desc_destroy(ext_desc);

    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(dws));
    TU_CUDA(cudaFree(dws2));
    condconv_layer_desc_destroy(desc);
    tu_free_params(&p);
    EXPECT_OK(condconv_context_destroy(ctx));
    return tu_finish("test_gpu_bad_inputs");
}
