/* CUDA-graph capture: for every algorithm on a layer it applies to, a
 * forward captured once and replayed on new inputs (copied into the
 * captured buffers) equals an eager forward on the same inputs and the CPU
 * reference. A shape never prepared returns CONDCONV_STATUS_NOT_PREPARED
 * inside a capture, and the capture stays valid. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_util.h"

static tu_layer_spec layer_for(condconv_algo algo)
{
    tu_layer_spec s = tu_basic_spec(0, 0, 1, 4); /* channels set below */
    s.has_bias = 1;
    s.routing = CONDCONV_ROUTING_SIGMOID;
    s.activation = CONDCONV_ACTIVATION_SILU;
    if (algo == CONDCONV_ALGO_GEMM_BATCHED) {
        s.cin = 24;
        s.cout = 40;
        s.kh = s.kw = 1;
    } else if (algo == CONDCONV_ALGO_DEPTHWISE_FUSED) {
        s.cin = s.cout = s.groups = 32;
        s.kh = s.kw = 5;
        s.stride_h = s.stride_w = 2;
        s.pad_mode = CONDCONV_PADDING_SAME;
    } else {
        s.cin = 16;
        s.cout = 24;
        s.kh = s.kw = 3;
        s.pad_h = s.pad_w = 1;
        s.routing = CONDCONV_ROUTING_SOFTMAX;
        s.temperature = 4.0f;
        s.activation = CONDCONV_ACTIVATION_RELU;
    }
    return s;
}

static void check_algo(condconv_context_t ctx, cudaStream_t stream, condconv_algo algo)
{
    const tu_layer_spec s = layer_for(algo);
    const int n = 6, h = 13, w = 11;
    tu_params p;
    tu_make_params(&s, &p);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t layer;
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer));
    EXPECT_OK(condconv_layer_set_algo(layer, algo));
    int ho, wo;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL));
    EXPECT_OK(condconv_prepare(layer, n, h, w));
    size_t ws_bytes;
    EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes));
    const size_t x_n = (size_t)n * s.cin * h * w, y_n = (size_t)n * s.cout * ho * wo;
    /* x and y have room for n + 1 samples, so that the unprepared n + 1 forward
     * below is refused for being unprepared, not for x and y overlapping. */
    const size_t x_room = x_n / (size_t)n * (size_t)(n + 1), y_room = y_n / (size_t)n * (size_t)(n + 1);
    float *dx = tu_dev_alloc(x_room), *dy = tu_dev_alloc(y_room), *dy_eager = tu_dev_alloc(y_n);
    void *dws = tu_dev_alloc_bytes(ws_bytes);
    float *x = malloc(x_n * sizeof(float)), *y = malloc(y_n * sizeof(float)), *y_eager = malloc(y_n * sizeof(float));
    float *y_ref = malloc(y_n * sizeof(float)), *mag = malloc(y_n * sizeof(float));

    /* Capture one forward; a shape that was never prepared must be refused
     * without breaking the capture. */
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    TU_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    EXPECT_OK(condconv_forward(layer, n, h, w, dx, dy, NULL, NULL, dws, ws_bytes));
    EXPECT_STATUS(condconv_forward(layer, n + 1, h, w, dx, dy, NULL, NULL, dws, ws_bytes),
                  CONDCONV_STATUS_NOT_PREPARED);
    TU_CUDA(cudaStreamEndCapture(stream, &graph));
    TU_CUDA(cudaGraphInstantiate(&exec, graph, 0));

    for (int round = 0; round < 3; ++round) {
        tu_fill_uniform(x, x_n, -1.0f, 1.0f);
        tu_to_dev(dx, x, x_n);
        tu_dev_poison(dy, y_n);
        tu_dev_poison(dy_eager, y_n);
        TU_CUDA(cudaGraphLaunch(exec, stream));
        EXPECT_OK(condconv_forward(layer, n, h, w, dx, dy_eager, NULL, NULL, dws, ws_bytes));
        TU_CUDA(cudaStreamSynchronize(stream));
        tu_to_host(y, dy, y_n);
        tu_to_host(y_eager, dy_eager, y_n);
        EXPECT(tu_compare("graph vs eager", y, y_eager, NULL, y_n, 0.0, 0.0) == 0, "%s round %d: replay differs",
               condconv_algo_name(algo), round);
        if (tu_reference(&s, &p, n, h, w, x, NULL, y_ref, mag, NULL) == 0)
            EXPECT(tu_compare("graph vs reference", y, y_ref, mag, y_n, 1e-6, 1e-5) == 0, "%s round %d",
                   condconv_algo_name(algo), round);
    }
    TU_CUDA(cudaGraphExecDestroy(exec));
    TU_CUDA(cudaGraphDestroy(graph));
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(dy_eager));
    TU_CUDA(cudaFree(dws));
    free(x);
    free(y);
    free(y_eager);
    free(y_ref);
    free(mag);
    condconv_layer_destroy(layer);
    condconv_layer_desc_destroy(desc);
    tu_free_params(&p);
}

int main(void)
{
    tu_require_gpu("test_gpu_graph");
    tu_seed_from_env();
    cudaStream_t stream;
    TU_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_gpu_graph");
    EXPECT_OK(condconv_context_set_stream(ctx, stream));
    for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a) check_algo(ctx, stream, (condconv_algo)a);
    check_algo(ctx, stream, CONDCONV_ALGO_AUTO);
    EXPECT_OK(condconv_context_destroy(ctx));
    TU_CUDA(cudaStreamDestroy(stream));
    return tu_finish("test_gpu_graph");
}
