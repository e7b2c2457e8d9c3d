/* condconv_forward with the fused algorithm (CONDCONV_ALGO_FUSED) end to end
 * on the CPU execution layer: the library's host code unchanged (layer
 * packing, plan, tile choice, split-K buffers), routing and the fused kernel
 * run on the CPU, compared with condconv_forward_cpu. Forced, and through
 * AUTO's measurement (which now measures the emulated cuDNN and cuBLAS
 * algorithms too, and may choose any of them: then their result is checked).
 * Random dense, grouped and pointwise layers: strides, dilation, padding,
 * E from 1 to 32, biases, every activation and routing mode, x and y 4 bytes
 * off 16-byte alignment in some cases; then forced again with TF32 allowed,
 * which runs the tensor-core kernel (kernels/fused_conv_tc.cu) on f32 data.
 * Tolerance as tests/test_gpu_forward.c: 1e-5 * mag + 1e-6 for y (TF32:
 * 2e-3 * mag + 1e-5), 2e-5 for the routing weights. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_util.h"
#include "gpu_util.h"
#include "test_util.h"

static int forwards, splitk_plans, tf32_forwards;
/* The context's math mode: TF32 runs the tensor-core kernel on f32 data,
 * checked as tests/test_gpu_forward.c checks TF32 (2e-3 * mag + 1e-5). */
static condconv_math math_mode = CONDCONV_MATH_F32;

static void run_case(condconv_context_t ctx, condconv_algo algo, int index)
{
    static const tu_domain domains[] = {TU_DENSE, TU_GROUPED, TU_POINTWISE};
    tu_layer_spec s = tu_random_spec(domains[index % 3], 6, 5);
    if (s.groups == s.cin) { /* depthwise layers (a 1-channel one too) are depthwise_fused's */
        s.groups = 1;
        if (s.cin == 1) s.cin = 2;
    }
    const int n = tu_rng_int(1, 5), h = tu_rng_int(1, 9), w = tu_rng_int(1, 9);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    int ho = 0, wo = 0;
    if (condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL) != CONDCONV_STATUS_SUCCESS) {
        condconv_layer_desc_destroy(desc);
        run_case(ctx, algo, index); /* an empty output: draw again */
        return;
    }
    tu_params p;
    tu_make_params(&s, &p);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t layer = NULL;
    if (!EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer))) goto out;
    EXPECT_OK(condconv_layer_set_algo(layer, algo));
    condconv_plan_info info;
    if (!EXPECT_OK(condconv_get_plan_info(layer, n, h, w, &info))) {
        fprintf(stderr, "  n=%d h=%d w=%d %s\n", n, h, w, tu_spec_string(&s));
        goto out_layer;
    }
    EXPECT(info.algo == CONDCONV_ALGO_FUSED || algo == CONDCONV_ALGO_AUTO, "%s: the plan runs %s (%s)",
           condconv_algo_name(algo), condconv_algo_name(info.algo), info.reason);
    if (info.algo == CONDCONV_ALGO_FUSED)
        EXPECT(strstr(info.backend, "fused") != NULL, "plan info's backend does not describe the tile: '%s'",
               info.backend);
    splitk_plans += strstr(info.backend, "split") != NULL;
    if (index < 2) printf("  %s: %s | %s\n", condconv_algo_name(algo), info.reason, info.backend);

    const size_t x_n = (size_t)n * s.cin * h * w, y_n = (size_t)n * s.cout * ho * wo, a_n = (size_t)n * s.experts;
    float *x = eu_random(x_n, -1.0f, 1.0f), *alpha_in = NULL;
    if (s.routing == CONDCONV_ROUTING_EXTERNAL) alpha_in = eu_random(a_n, -1.0f, 1.0f);
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes));
    const int misaligned = index % 4 == 3;
    eu_buffer dx = eu_buffer_make(x_n, misaligned), dy = eu_buffer_make(y_n, misaligned);
    eu_buffer da = eu_buffer_make(a_n, 0), dai = eu_buffer_make(alpha_in ? a_n : 0, 0);
    void *ws = ws_bytes ? tu_dev_alloc_bytes(ws_bytes) : NULL;
    eu_upload(&dx, x);
    if (alpha_in) eu_upload(&dai, alpha_in);
    /* Twice: split-K counters must be left at zero for the next forward. */
    for (int again = 0; again < 2; ++again) {
        eu_poison(&dy);
        eu_poison(&da);
        if (!EXPECT_OK(
                condconv_forward(layer, n, h, w, dx.data, dy.data, alpha_in ? dai.data : NULL, da.data, ws, ws_bytes)))
            break;
        ++forwards;
        float *y = eu_floats(y_n), *alpha = eu_floats(a_n), *y_ref = eu_floats(y_n), *mag = eu_floats(y_n);
        float *a_ref = eu_floats(a_n);
        eu_download(&dy, y);
        eu_download(&da, alpha);
        if (tu_reference(&s, &p, n, h, w, x, alpha_in, y_ref, mag, a_ref) == 0) {
            const int tf32 = math_mode == CONDCONV_MATH_TF32;
            tf32_forwards += tf32;
            const size_t bad = tu_compare("y", y, y_ref, mag, y_n, tf32 ? 1e-5 : 1e-6, tf32 ? 2e-3 : 1e-5) +
                               tu_compare("alpha", alpha, a_ref, NULL, a_n, 2e-5, 0.0);
            EXPECT(bad == 0, "%s forward %d: n=%d h=%d w=%d %s (%s)", condconv_algo_name(algo), again, n, h, w,
                   tu_spec_string(&s), info.backend);
        } else {
            EXPECT(0, "the CPU reference failed");
        }
        eu_guards_intact(&dy, "y");
        free(y);
        free(alpha);
        free(y_ref);
        free(mag);
        free(a_ref);
    }
    TU_CUDA(cudaFree(ws));
    eu_buffer_free(&dx);
    eu_buffer_free(&dy);
    eu_buffer_free(&da);
    eu_buffer_free(&dai);
    free(x);
    free(alpha_in);
out_layer:
    EXPECT_OK(condconv_layer_destroy(layer));
out:
    tu_free_params(&p);
    condconv_layer_desc_destroy(desc);
}

int main(void)
{
    tu_seed_from_env();
    condconv_context_t ctx;
    cudaStream_t stream;
    TU_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_emu_fused_forward");
    EXPECT_OK(condconv_context_set_stream(ctx, stream));
    EXPECT_OK(condconv_context_set_algo_select(ctx, CONDCONV_SELECT_MEASURE));
    const int cases = tu_case_count(12);
    for (int i = 0; i < cases; ++i) run_case(ctx, CONDCONV_ALGO_FUSED, i);
    for (int i = 0; i < (cases + 2) / 3; ++i) run_case(ctx, CONDCONV_ALGO_AUTO, i);
    /* TF32 allowed: fused runs f32 on the tensor-core kernel (wmma tf32). */
    math_mode = CONDCONV_MATH_TF32;
    EXPECT_OK(condconv_context_set_math(ctx, CONDCONV_MATH_TF32));
    for (int i = 0; i < (cases + 1) / 2; ++i) run_case(ctx, CONDCONV_ALGO_FUSED, i);
    EXPECT(tf32_forwards > 0, "no TF32 forward ran");
    math_mode = CONDCONV_MATH_F32;
    EXPECT_OK(condconv_context_set_math(ctx, CONDCONV_MATH_F32));
    /* A depthwise layer is not fused's: forced, it refuses at prepare. */
    tu_layer_spec dw = tu_basic_spec(6, 6, 3, 2);
    dw.groups = 6;
    tu_params p;
    tu_make_params(&dw, &p);
    condconv_layer_desc_t desc = tu_make_desc(&dw);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t layer;
    if (EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer))) {
        EXPECT_OK(condconv_layer_set_algo(layer, CONDCONV_ALGO_FUSED));
        EXPECT_STATUS(condconv_prepare(layer, 2, 5, 5), CONDCONV_STATUS_NOT_SUPPORTED);
        EXPECT(strstr(condconv_last_error(), "depthwise") != NULL, "message: %s", condconv_last_error());
        EXPECT_OK(condconv_layer_destroy(layer));
    }
    tu_free_params(&p);
    condconv_layer_desc_destroy(desc);
    printf("test_emu_fused_forward: %d forwards compared (%d plans split K, %d with TF32)\n", forwards, splitk_plans,
           tf32_forwards);
    EXPECT(forwards >= 2 * cases, "only %d forwards ran", forwards);
    EXPECT_OK(condconv_context_destroy(ctx));
    TU_CUDA(cudaStreamDestroy(stream));
    return tu_finish("test_emu_fused_forward");
}
