/* Every GPU algorithm against timm: each golden file of tests/data
 * (scripts/make_golden.py) is loaded through the library's safetensors
 * loader onto a GPU context and run with AUTO and with each algorithm
 * forced (every algorithm of condconv_algo), with the layer's sigmoid
 * routing and with timm's routing weights passed in. An algorithm that does
 * not apply to a layer refuses at prepare with CONDCONV_STATUS_NOT_SUPPORTED
 * (the library is the one source of truth for applicability); any other
 * failure fails the test, and every algorithm must run on some file.
 *
 *   test_golden_gpu [data-dir]     (default: the source tree's tests/data)
 *
 * Tolerance, strict f32 (the context's default math; no TF32). Against the
 * exact result a strict-f32 GPU output is within 1e-5 * mag + 1e-6 (the
 * bound test_gpu_forward checks, room for cuDNN's transforms), and timm's
 * own f32 output within (K + E + 2) * 2^-24 * mag <= 1e-5 * mag for these
 * layers (see test_golden_cpu.c). Against each other: 2e-5 * mag + 2e-6,
 * mag = sum |alpha W x| + |b| from the CPU reference on absolute values.
 * Routing weights: the GPU's float GAP and FC are within 2e-5 of exact
 * (test_gpu_forward's bound), timm's within 1e-6: 2.1e-5 absolute. With
 * external routing the routing weights returned must be timm's, exactly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden_util.h"
#include "gpu_util.h"

#ifndef CONDCONV_GOLDEN_DIR
#define CONDCONV_GOLDEN_DIR "tests/data"
#endif

#define Y_ATOL     2e-6
#define Y_RTOL     2e-5
#define ALPHA_ATOL 2.1e-5

static int runs, refusals;

/* Runs compared per algorithm: each must have run somewhere (a refusal of
 * every layer would otherwise pass). */
static int runs_by_algo[CONDCONV_ALGO_COUNT];

static void run_algo(condconv_context_t ctx, const golden *g, condconv_layer_t layer, condconv_routing routing,
                     condconv_layout layout, condconv_algo algo)
{
    const char *algo_name = condconv_algo_name(algo);
    const char *routing_name = routing == CONDCONV_ROUTING_EXTERNAL ? "external" : "sigmoid";
    const char *layout_name = layout == CONDCONV_LAYOUT_NHWC ? "NHWC" : "NCHW";
    EXPECT_OK(condconv_layer_set_algo(layer, algo));
    const condconv_status prep = condconv_prepare(layer, g->n, g->h, g->w);
    /* Applicability has one source of truth, the library: an algorithm that
     * does not apply refuses at prepare with NOT_SUPPORTED (AUTO never does). */
    if (algo != CONDCONV_ALGO_AUTO && prep == CONDCONV_STATUS_NOT_SUPPORTED) {
        ++refusals;
        return;
    }
    if (!EXPECT_OK(prep)) {
        fprintf(stderr, "  %s %s %s %s %s\n", g->name, g->run_dtype, layout_name, routing_name, algo_name);
        return;
    }
    condconv_plan_info info;
    EXPECT_OK(condconv_get_plan_info(layer, g->n, g->h, g->w, &info));
    if (algo != CONDCONV_ALGO_AUTO)
        EXPECT(info.algo == algo, "%s: forced %s, the plan runs %s", g->name, algo_name, condconv_algo_name(info.algo));
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, g->n, g->h, g->w, &ws_bytes));
    const size_t elem = tu_dtype_size(g->run_dtype_id);
    void *dx = tu_dev_alloc_bytes(g->x_n * elem), *dy = tu_dev_alloc_bytes(g->y_n * elem);
    float *dalpha = tu_dev_alloc(g->a_n);
    float *dalpha_in = routing == CONDCONV_ROUTING_EXTERNAL ? tu_dev_alloc(g->a_n) : NULL;
    void *dws = tu_dev_alloc_bytes(ws_bytes);
    float *y = malloc(g->y_n * sizeof(float)), *alpha = malloc(g->a_n * sizeof(float));
    void *x_host = golden_x_in_format(g, layout), *y_host = malloc(g->y_n * elem);
    TU_CUDA(cudaMemcpy(dx, x_host, g->x_n * elem, cudaMemcpyHostToDevice));
    if (dalpha_in) tu_to_dev(dalpha_in, g->alpha, g->a_n);
    TU_CUDA(cudaMemset(dy, 0xFF, g->y_n * elem)); /* NaN in every dtype */
    tu_dev_poison(dalpha, g->a_n);
    struct CUstream_st *stream;
    EXPECT_OK(condconv_context_get_stream(ctx, &stream));
    if (EXPECT_OK(condconv_forward(layer, g->n, g->h, g->w, dx, dy, dalpha_in, dalpha, dws, ws_bytes))) {
        TU_CUDA(cudaStreamSynchronize(stream));
        TU_CUDA(cudaMemcpy(y_host, dy, g->y_n * elem, cudaMemcpyDeviceToHost));
        golden_y_from_format(g, y_host, layout, y);
        tu_to_host(alpha, dalpha, g->a_n);
        size_t bad_y;
        if (g->run_dtype_id == CONDCONV_DTYPE_F32) {
            bad_y = tu_compare("y", y, g->y, g->mag, g->y_n, Y_ATOL, Y_RTOL);
        } else {
            double atol, rtol, l2_max, atol_t, rtol_t, l2_t;
            golden_half_tolerance(g->run_dtype_id, 0, &atol, &rtol, &l2_max);
            golden_half_tolerance(g->run_dtype_id, 1, &atol_t, &rtol_t, &l2_t);
            bad_y = tu_compare("y", y, g->y_exact, g->mag, g->y_n, atol, rtol) +
                    tu_compare("y", y, g->y, g->mag, g->y_n, atol_t, rtol_t) +
                    !(tu_relative_l2(y, g->y_exact, g->y_n) <= l2_max) + !(tu_relative_l2(y, g->y, g->y_n) <= l2_t);
        }
        const size_t bad_a = tu_compare("alpha", alpha, g->alpha, NULL, g->a_n, dalpha_in ? 0.0 : ALPHA_ATOL, 0.0);
        EXPECT(bad_y == 0 && bad_a == 0, "%s (%s params, run in %s, %s), %s routing, %s (plan: %s): differs from timm",
               g->name, g->param_dtype, g->run_dtype, layout_name, routing_name, algo_name,
               condconv_algo_name(info.algo));
        ++runs;
        ++runs_by_algo[algo];
    }
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(dalpha));
    TU_CUDA(cudaFree(dalpha_in));
    TU_CUDA(cudaFree(dws));
    free(y);
    free(alpha);
    free(x_host);
    free(y_host);
}

static void run_case(condconv_context_t ctx, const golden *g)
{
    static const condconv_routing routings[] = {CONDCONV_ROUTING_SIGMOID, CONDCONV_ROUTING_EXTERNAL};
    static const condconv_layout layouts[] = {CONDCONV_LAYOUT_NCHW, CONDCONV_LAYOUT_NHWC};
    for (int l = 0; l < 2; ++l)
        for (int r = 0; r < 2; ++r) {
            condconv_layer_desc_t desc = golden_desc(g, routings[r]);
            EXPECT_OK(condconv_layer_desc_set_format(desc, g->run_dtype_id, layouts[l]));
            int ho = 0, wo = 0, pads[4] = {0};
            EXPECT_OK(condconv_layer_desc_get_output_dims(desc, g->h, g->w, &ho, &wo, pads));
            condconv_layer_t layer;
            const char *routing_prefix = routings[r] == CONDCONV_ROUTING_EXTERNAL ? NULL : "routing_fn";
            if (ho == g->out_h && wo == g->out_w &&
                EXPECT_OK(condconv_layer_create_from_safetensors(ctx, desc, g->path, "conv", routing_prefix, &layer))) {
                run_algo(ctx, g, layer, routings[r], layouts[l], CONDCONV_ALGO_AUTO);
                for (int a = CONDCONV_ALGO_CUDNN_GROUPED; a < CONDCONV_ALGO_COUNT; ++a)
                    run_algo(ctx, g, layer, routings[r], layouts[l], (condconv_algo)a);
                condconv_layer_destroy(layer);
            } else {
                EXPECT(ho == g->out_h && wo == g->out_w, "%s: the library gives a %dx%d output, timm %dx%d", g->name,
                       ho, wo, g->out_h, g->out_w);
            }
            condconv_layer_desc_destroy(desc);
        }
}

int main(int argc, char **argv)
{
    tu_require_gpu("test_golden_gpu");
    const char *dir = argc > 1 ? argv[1] : CONDCONV_GOLDEN_DIR;
    cudaStream_t stream;
    TU_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_golden_gpu");
    EXPECT_OK(condconv_context_set_stream(ctx, stream));
    const int count = golden_check_all(dir, 21, ctx, run_case);
    EXPECT_OK(condconv_context_destroy(ctx));
    TU_CUDA(cudaStreamDestroy(stream));
    for (int a = 0; a < CONDCONV_ALGO_COUNT; ++a)
        EXPECT(runs_by_algo[a] > 0, "%s ran on none of the golden files", condconv_algo_name((condconv_algo)a));
    printf("%d golden files: %d runs compared with timm, %d refusals of inapplicable algorithms\n", count, runs,
           refusals);
    return tu_finish("test_golden_gpu");
}
