/* condconv_route (the fused routing kernel alone) against the CPU
 * reference: channels 1 to 1152, planes from 1x1 to 224x224 (odd sizes
 * take the scalar path, multiples of 4 the 16-byte one), E from 1 to 128,
 * sigmoid and softmax with temperatures 0.3 to 30, N up to 64. Output
 * poisoned with NaN first; tolerance 2e-5 absolute on weights in [0, 1]
 * (float sums of up to 50176 pixels and 1152 channels). */
#include <stdio.h>
#include <stdlib.h>

#include "gpu_util.h"

/* prepared != 0: condconv_prepare first, so that condconv_route uses the
 * plan's split of each sample's channels over several blocks (the forward's
 * path); else one block per sample. */
static void check(condconv_context_t ctx, int n, int c, int h, int w, int experts, condconv_routing routing,
                  float temperature, int prepared)
{
    tu_layer_spec s = tu_basic_spec(c, 1, 1, experts);
    s.routing = routing;
    s.temperature = temperature;
    tu_params p;
    tu_make_params(&s, &p);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t gpu_layer, cpu_layer;
    condconv_context_t cpu;
    EXPECT_OK(condconv_context_create(&cpu, CONDCONV_DEVICE_CPU));
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &gpu_layer));
    EXPECT_OK(condconv_layer_create(cpu, desc, &view, &cpu_layer));
    const size_t x_n = (size_t)n * c * h * w, a_n = (size_t)n * experts;
    float *x = malloc(x_n * sizeof(float)), *alpha = malloc(a_n * sizeof(float)), *want = malloc(a_n * sizeof(float));
    /* Means far from zero too, so the FC and activation see real spread. */
    tu_fill_uniform(x, x_n, -1.0f, 3.0f);
    float *dx = tu_dev_alloc(x_n), *dalpha = tu_dev_alloc(a_n);
    tu_to_dev(dx, x, x_n);
    tu_dev_poison(dalpha, a_n);
    if (prepared) EXPECT_OK(condconv_prepare(gpu_layer, n, h, w));
    EXPECT_OK(condconv_route(gpu_layer, n, h, w, dx, dalpha));
    struct CUstream_st *stream;
    EXPECT_OK(condconv_context_get_stream(ctx, &stream));
    TU_CUDA(cudaStreamSynchronize(stream));
    tu_to_host(alpha, dalpha, a_n);
    EXPECT_OK(condconv_route_cpu(cpu_layer, n, h, w, x, want));
    if (tu_compare("alpha", alpha, want, NULL, a_n, 2e-5, 0.0))
        tu_fail(__FILE__, __LINE__, "route", "n=%d c=%d %dx%d E=%d %s t=%g %s", n, c, h, w, experts,
                routing == CONDCONV_ROUTING_SOFTMAX ? "softmax" : "sigmoid", (double)temperature,
                prepared ? "prepared (split)" : "unprepared (one block per sample)");
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dalpha));
    free(x);
    free(alpha);
    free(want);
    condconv_layer_destroy(gpu_layer);
    condconv_layer_destroy(cpu_layer);
    condconv_context_destroy(cpu);
    condconv_layer_desc_destroy(desc);
    tu_free_params(&p);
}

int main(void)
{
    tu_require_gpu("test_gpu_routing");
    tu_seed_from_env();
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_gpu_routing");
    /* The EfficientNet-CC-B0 routing inputs, the extremes, and odd sizes. */
    for (int prepared = 0; prepared < 2; ++prepared) {
        check(ctx, 32, 80, 14, 14, 8, CONDCONV_ROUTING_SIGMOID, 1.0f, prepared);
        check(ctx, 32, 1152, 7, 7, 8, CONDCONV_ROUTING_SIGMOID, 1.0f, prepared);
        check(ctx, 1, 64, 224, 224, 128, CONDCONV_ROUTING_SOFTMAX, 30.0f, prepared);
        check(ctx, 2, 3, 223, 221, 4, CONDCONV_ROUTING_SIGMOID, 1.0f, prepared);
        check(ctx, 64, 1, 1, 1, 1, CONDCONV_ROUTING_SOFTMAX, 1.0f, prepared);
        check(ctx, 5, 33, 1, 1, 33, CONDCONV_ROUTING_SIGMOID, 1.0f, prepared);
        check(ctx, 1, 480, 14, 14, 8, CONDCONV_ROUTING_SIGMOID, 1.0f, prepared);
    }
    for (int i = 0, cases = tu_case_count(40); i < cases; ++i) {
        const int hw = tu_rng_int(1, 40);
        check(ctx, tu_rng_int(1, 64), tu_rng_int(1, 300), hw, tu_rng_int(1, 40), tu_rng_int(1, CONDCONV_MAX_EXPERTS),
              tu_rng_int(0, 1) ? CONDCONV_ROUTING_SOFTMAX : CONDCONV_ROUTING_SIGMOID, tu_rng_float(0.3f, 30.0f),
              tu_rng_int(0, 1));
    }
    EXPECT_OK(condconv_context_destroy(ctx));
    return tu_finish("test_gpu_routing");
}
