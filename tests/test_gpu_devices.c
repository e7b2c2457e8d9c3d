/* A context on device 1, driven from a thread whose current device is 0
 * (condconv.h, "Devices"): every call, successful or refused, leaves device
 * 0 current; the handles, plans and parameters land on device 1 (the
 * forward on device-1 buffers and stream matches the CPU reference, for a
 * dense layer under AUTO, which measures every candidate on device 1, and a
 * depthwise one). Skipped (77) without a second device. */
#include <stdio.h>
#include <stdlib.h>

#include "gpu_util.h"

static int current_device(void)
{
    int d = -1;
    TU_CUDA(cudaGetDevice(&d));
    return d;
}

#define EXPECT_HOME(after)                                                                                             \
    EXPECT(current_device() == 0, "after %s the current device is %d, not the caller's 0", after, current_device())

/* Device-1 memory, allocated without leaving device 0 current for long. */
static void *alloc_on_1(size_t bytes)
{
    void *p = NULL;
    TU_CUDA(cudaSetDevice(1));
    TU_CUDA(cudaMalloc(&p, bytes ? bytes : 256));
    TU_CUDA(cudaSetDevice(0));
    return p;
}

static void one_layer(condconv_context_t ctx, const tu_layer_spec *s, int n, int h, int w, const char *what)
{
    tu_params p;
    tu_make_params(s, &p);
    condconv_layer_desc_t desc = tu_make_desc(s);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t layer = NULL;
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer));
    EXPECT_HOME("condconv_layer_create");
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL));
    if (layer == NULL) goto out;
    EXPECT_OK(condconv_prepare(layer, n, h, w));
    EXPECT_HOME("condconv_prepare");
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes));
    EXPECT_HOME("condconv_get_workspace_size");
    condconv_plan_info info;
    EXPECT_OK(condconv_get_plan_info(layer, n, h, w, &info));
    EXPECT_HOME("condconv_get_plan_info");
    const size_t x_n = (size_t)n * s->cin * h * w, y_n = (size_t)n * s->cout * ho * wo, a_n = (size_t)n * s->experts;
    float *x = malloc(sizeof(float) * x_n), *y = malloc(sizeof(float) * y_n), *y_ref = malloc(sizeof(float) * y_n),
          *mag = malloc(sizeof(float) * y_n);
    if (x == NULL || y == NULL || y_ref == NULL || mag == NULL) {
        EXPECT(0, "out of host memory");
        goto free_host;
    }
    tu_fill_uniform(x, x_n, -1, 1);
    float *dx = alloc_on_1(sizeof(float) * x_n), *dy = alloc_on_1(sizeof(float) * y_n),
          *da = alloc_on_1(sizeof(float) * a_n);
    void *ws = alloc_on_1(ws_bytes);
    TU_CUDA(cudaMemcpy(dx, x, sizeof(float) * x_n, cudaMemcpyHostToDevice));
    EXPECT_OK(condconv_forward(layer, n, h, w, dx, dy, NULL, da, ws, ws_bytes));
    EXPECT_HOME("condconv_forward");
    if (ws_bytes > 0) {
        EXPECT_STATUS(condconv_forward(layer, n, h, w, dx, dy, NULL, da, ws, ws_bytes - 1),
                      CONDCONV_STATUS_WORKSPACE_TOO_SMALL);
        EXPECT_HOME("a forward refused for its workspace");
    }
    EXPECT_OK(condconv_route(layer, n, h, w, dx, da));
    EXPECT_HOME("condconv_route");
    struct CUstream_st *stream = NULL;
    EXPECT_OK(condconv_context_get_stream(ctx, &stream));
    TU_CUDA(cudaSetDevice(1));
    TU_CUDA(cudaStreamSynchronize(stream));
    TU_CUDA(cudaMemcpy(y, dy, sizeof(float) * y_n, cudaMemcpyDeviceToHost));
    TU_CUDA(cudaSetDevice(0));
    if (tu_reference(s, &p, n, h, w, x, NULL, y_ref, mag, NULL) == 0)
        EXPECT(tu_compare("y", y, y_ref, mag, y_n, 1e-6, 1e-5) == 0, "%s (%s): forward on device 1 is wrong", what,
               condconv_algo_name(info.algo));
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(da));
    TU_CUDA(cudaFree(ws));
    EXPECT_HOME("freeing the test's buffers");
free_host:
    free(x);
    free(y);
    free(y_ref);
    free(mag);
    EXPECT_OK(condconv_layer_destroy(layer));
    EXPECT_HOME("condconv_layer_destroy");
out:
    condconv_layer_desc_destroy(desc);
    tu_free_params(&p);
}

int main(void)
{
    tu_require_gpu("test_gpu_devices");
    tu_seed_from_env();
    if (condconv_device_count() < 2) {
        printf("test_gpu_devices: skipped, one CUDA device (needs a second one for a context on device 1)\n");
        return TU_SKIP;
    }
    TU_CUDA(cudaSetDevice(0));
    condconv_context_t ctx;
    EXPECT_OK(condconv_context_create(&ctx, 1));
    EXPECT_HOME("condconv_context_create");
    cudaStream_t stream;
    TU_CUDA(cudaSetDevice(1));
    TU_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    TU_CUDA(cudaSetDevice(0));
    EXPECT_OK(condconv_context_set_stream(ctx, stream));
    EXPECT_HOME("condconv_context_set_stream");

    tu_layer_spec dense = tu_basic_spec(16, 24, 3, 4);
    dense.routing = CONDCONV_ROUTING_SIGMOID;
    dense.pad_h = dense.pad_w = 1;
    dense.has_bias = 1;
    dense.activation = CONDCONV_ACTIVATION_RELU;
    one_layer(ctx, &dense, 4, 12, 10, "dense 3x3, AUTO");
    EXPECT_OK(condconv_context_set_stream(ctx, stream)); /* handles exist now */
    EXPECT_HOME("condconv_context_set_stream (with handles)");
    tu_layer_spec dw = tu_random_spec(TU_DEPTHWISE, 2, 5);
    dw.routing = CONDCONV_ROUTING_SOFTMAX;
    one_layer(ctx, &dw, 3, 9, 11, "depthwise");

    EXPECT_OK(condconv_context_destroy(ctx));
    EXPECT_HOME("condconv_context_destroy");
    TU_CUDA(cudaSetDevice(1));
    TU_CUDA(cudaStreamDestroy(stream));
    TU_CUDA(cudaSetDevice(0));
    return tu_finish("test_gpu_devices");
}
