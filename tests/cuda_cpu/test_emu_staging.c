/* Element-aligned x and y that are not 16-byte aligned (issue 18, item 1),
 * end to end on the CPU execution layer: every algorithm, forced, and AUTO
 * (measuring and by rule), on f32 and f16 layers in NCHW and NHWC, with x
 * and y each 0 or one element off a 256-byte boundary, against
 * condconv_forward_cpu. The workspace is exactly what the query said and
 * NaN-filled, so the staging slots must fit in it and be written before
 * they are read. Where cuBLAS or cuDNN would touch x or y directly, the
 * forward must stage it: one extra device-to-device copy per staged
 * pointer, counted through the layer's event counter.
 *
 * An algorithm whose prepare the emulated libraries refuse (NOT_SUPPORTED,
 * CUDNN_ERROR, CUBLAS_ERROR: before they compute) is reported and skipped;
 * the staging itself then runs for every algorithm the libraries run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_util.h"
#include "gpu_util.h"
#include "test_util.h"

typedef struct layer_case {
    const char *name;
    tu_layer_spec spec;
    int n, h, w;
} layer_case;

static int ran[CONDCONV_ALGO_COUNT], refused[CONDCONV_ALGO_COUNT], staged_runs;

/* Copies the library touches directly, by algorithm (algo_*.c). */
static int expected_copies(condconv_algo algo, const tu_layer_spec *s, condconv_layout layout, int x_off, int y_off)
{
    const int nhwc = layout == CONDCONV_LAYOUT_NHWC;
    const int symmetric = s->pad_mode == CONDCONV_PADDING_EXPLICIT; /* this test's SAME cases are asymmetric */
    const int pointwise = s->kh == 1 && s->kw == 1 && s->stride_h == 1 && s->stride_w == 1 && s->pad_h == 0 &&
                          s->pad_w == 0 && s->pad_mode == CONDCONV_PADDING_EXPLICIT;
    switch (algo) {
    case CONDCONV_ALGO_CUDNN_GROUPED: return (x_off && !nhwc && symmetric) + (y_off && !nhwc);
    case CONDCONV_ALGO_MIXTURE: return x_off && symmetric;
    case CONDCONV_ALGO_GEMM_BATCHED: return (x_off && pointwise) + (y_off != 0);
    default: return 0;
    }
}

static void run(condconv_context_t ctx, const layer_case *lc, condconv_dtype dtype, condconv_layout layout,
                condconv_algo algo, condconv_algo_select select)
{
    const tu_layer_spec *s = &lc->spec;
    const int n = lc->n, h = lc->h, w = lc->w;
    EXPECT_OK(condconv_context_set_algo_select(ctx, select));
    tu_params p;
    tu_make_params(s, &p);
    void *hp[4];
    tu_params_in_dtype(&p, dtype, hp);
    const condconv_params view = {hp[0], hp[1], hp[2], hp[3]};
    condconv_layer_desc_t desc = tu_make_desc(s);
    EXPECT_OK(condconv_layer_desc_set_format(desc, dtype, layout));
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL));
    condconv_layer_t layer = NULL;
    if (!EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer))) goto out;
    EXPECT_OK(condconv_layer_set_algo(layer, algo));
    const condconv_status prep = condconv_prepare(layer, n, h, w);
    if (prep == CONDCONV_STATUS_NOT_SUPPORTED || prep == CONDCONV_STATUS_CUDNN_ERROR ||
        prep == CONDCONV_STATUS_CUBLAS_ERROR) {
        ++refused[algo];
        goto out_layer;
    }
    if (!EXPECT_OK(prep)) goto out_layer;
    condconv_plan_info info;
    EXPECT_OK(condconv_get_plan_info(layer, n, h, w, &info));
    if (algo != CONDCONV_ALGO_AUTO || select == CONDCONV_SELECT_HEURISTIC)
        EXPECT(info.algo_unaligned == info.algo, "%s: %s for aligned pointers, %s for unaligned", lc->name,
               condconv_algo_name(info.algo), condconv_algo_name(info.algo_unaligned));
    else
        EXPECT(info.measured_unaligned_us[info.algo_unaligned] >= 0.0f, "%s: AUTO chose %s unmeasured", lc->name,
               condconv_algo_name(info.algo_unaligned));
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes));
    EXPECT(ws_bytes == info.workspace_bytes, "workspace %zu, plan info says %zu", ws_bytes, info.workspace_bytes);

    const size_t elem = tu_dtype_size(dtype);
    const size_t x_n = (size_t)n * s->cin * h * w, y_n = (size_t)n * s->cout * ho * wo;
    const int nhwc = layout == CONDCONV_LAYOUT_NHWC;
    float *x = eu_random(x_n, -1, 1), *y_ref = eu_floats(y_n), *y_got = eu_floats(y_n), *mag = eu_floats(y_n);
    float *x_layout = eu_floats(x_n), *y_layout = eu_floats(y_n);
    tu_round_to_dtype(x, x_n, dtype);
    if (nhwc)
        tu_transpose(x, x_layout, n, s->cin, (size_t)h * w, 1);
    else
        memcpy(x_layout, x, x_n * sizeof(float));
    void *x_host = tu_to_dtype(x_layout, x_n, dtype), *y_host = malloc(y_n * elem);
    /* The reference with the magnitude bound each element is checked against (as test_gpu_forward). */
    EXPECT(tu_reference(s, &p, n, h, w, x, NULL, y_ref, mag, NULL) == 0, "the CPU reference failed");
    double atol, rtol, l2_max;
    tu_dtype_tolerance(dtype, &atol, &rtol, &l2_max);
    if (dtype == CONDCONV_DTYPE_F32) atol = 1e-6, rtol = 1e-5;
    unsigned char *dx = tu_dev_alloc_bytes(x_n * elem + 256), *dy = tu_dev_alloc_bytes(y_n * elem + 256);
    unsigned char *ws = tu_dev_alloc_bytes(ws_bytes ? ws_bytes : 1);
    long long aligned_events = -1;
    for (int k = 0; k < 4; ++k) {
        const int x_off = k & 1, y_off = k >> 1;
        unsigned char *px = dx + (size_t)x_off * elem, *py = dy + (size_t)y_off * elem;
        TU_CUDA(cudaMemcpy(px, x_host, x_n * elem, cudaMemcpyHostToDevice));
        TU_CUDA(cudaMemset(dy, 0xFF, y_n * elem + 256)); /* NaN in every dtype */
        TU_CUDA(cudaMemset(ws, 0xFF, ws_bytes ? ws_bytes : 1));
        cc_cpu_fail_event(0); /* count from here */
        if (!EXPECT_OK(condconv_forward(layer, n, h, w, px, py, NULL, NULL, ws, ws_bytes))) continue;
        const long long events = cc_cpu_events();
        TU_CUDA(cudaDeviceSynchronize());
        TU_CUDA(cudaMemcpy(y_host, py, y_n * elem, cudaMemcpyDeviceToHost));
        EXPECT_OK(condconv_convert(dtype, y_host, CONDCONV_DTYPE_F32, y_layout, y_n));
        if (nhwc)
            tu_transpose(y_layout, y_got, n, s->cout, (size_t)ho * wo, 0);
        else
            memcpy(y_got, y_layout, y_n * sizeof(float));
        const condconv_algo used = k == 0 ? info.algo : info.algo_unaligned;
        if (tu_compare("y", y_got, y_ref, mag, y_n, atol, rtol) != 0)
            tu_fail(__FILE__, __LINE__, "forward", "%s %s %s via %s: x %s, y %s", lc->name,
                    dtype == CONDCONV_DTYPE_F16 ? "f16" : "f32", layout == CONDCONV_LAYOUT_NHWC ? "NHWC" : "NCHW",
                    condconv_algo_name(used), x_off ? "one element off" : "aligned",
                    y_off ? "one element off" : "aligned");
        /* Nothing written before y or after it. */
        unsigned char guard[256];
        TU_CUDA(cudaMemcpy(guard, py + y_n * elem, 256 - (size_t)y_off * elem, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < 256 - (size_t)y_off * elem; ++i)
            if (guard[i] != 0xFF) {
                EXPECT(0, "%s via %s wrote past y", lc->name, condconv_algo_name(used));
                break;
            }
        if (k == 0) aligned_events = events;
        if (k != 0 && info.algo == info.algo_unaligned && aligned_events >= 0) {
            const int copies = expected_copies(used, s, layout, x_off, y_off);
            EXPECT(events - aligned_events == copies,
                   "%s via %s, x %s, y %s: %lld events, %lld aligned; %d staging copies expected", lc->name,
                   condconv_algo_name(used), x_off ? "off" : "aligned", y_off ? "off" : "aligned", events,
                   aligned_events, copies);
            staged_runs += copies > 0;
        }
        ++ran[used];
    }
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(ws));
    free(x);
    free(y_ref);
    free(y_got);
    free(x_host);
    free(y_host);
    free(mag);
    free(x_layout);
    free(y_layout);
out_layer:
    condconv_layer_destroy(layer);
out:
    condconv_layer_desc_destroy(desc);
    for (int i = 0; i < 4; ++i) free(hp[i]);
    tu_free_params(&p);
}

int main(void)
{
    tu_seed_from_env();
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_emu_staging");
    layer_case cases[4];
    /* 1x1: gemm_batched multiplies x in place (reads it directly). */
    cases[0] = (layer_case){"pointwise", tu_basic_spec(8, 12, 1, 3), 3, 5, 4};
    cases[0].spec.routing = CONDCONV_ROUTING_SIGMOID;
    cases[0].spec.has_bias = 1;
    cases[0].spec.activation = CONDCONV_ACTIVATION_RELU;
    /* 3x3, symmetric padding: cuDNN reads x directly. */
    cases[1] = (layer_case){"dense 3x3", tu_basic_spec(6, 8, 3, 4), 2, 7, 6};
    cases[1].spec.routing = CONDCONV_ROUTING_SOFTMAX;
    cases[1].spec.pad_h = cases[1].spec.pad_w = 1;
    cases[1].spec.has_bias = 1;
    cases[1].spec.activation = CONDCONV_ACTIVATION_SILU;
    /* SAME padding, stride 2 (asymmetric): every library algorithm gathers x. */
    cases[2] = (layer_case){"grouped same s2", tu_basic_spec(8, 8, 3, 2), 2, 8, 7};
    cases[2].spec.groups = 2;
    cases[2].spec.stride_h = cases[2].spec.stride_w = 2;
    cases[2].spec.pad_mode = CONDCONV_PADDING_SAME;
    cases[2].spec.routing = CONDCONV_ROUTING_SIGMOID;
    cases[3] = (layer_case){"depthwise", tu_basic_spec(6, 6, 3, 3), 2, 6, 5};
    cases[3].spec.groups = 6;
    cases[3].spec.pad_h = cases[3].spec.pad_w = 1;
    cases[3].spec.routing = CONDCONV_ROUTING_SIGMOID;
    const condconv_dtype dtypes[] = {CONDCONV_DTYPE_F32, CONDCONV_DTYPE_F16};
    const condconv_layout layouts[] = {CONDCONV_LAYOUT_NCHW, CONDCONV_LAYOUT_NHWC};
    for (int c = 0; c < 4; ++c)
        for (int d = 0; d < 2; ++d)
            for (int l = 0; l < 2; ++l) {
                for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a)
                    run(ctx, &cases[c], dtypes[d], layouts[l], (condconv_algo)a, CONDCONV_SELECT_MEASURE);
                /* AUTO measures every candidate in both alignment classes (18
                 * forwards each on the emulated libraries): once per layer. */
                if (d == 0 && l == c % 2)
                    run(ctx, &cases[c], dtypes[d], layouts[l], CONDCONV_ALGO_AUTO, CONDCONV_SELECT_MEASURE);
                run(ctx, &cases[c], dtypes[d], layouts[l], CONDCONV_ALGO_AUTO, CONDCONV_SELECT_HEURISTIC);
            }
    for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a)
        printf("test_emu_staging: %-16s %3d forwards compared, prepare refused %d times%s\n",
               condconv_algo_name((condconv_algo)a), ran[a], refused[a],
               ran[a] == 0 ? " (the emulated libraries do not run it yet)" : "");
    printf("test_emu_staging: %d forwards staged x or y for a library call\n", staged_runs);
    EXPECT(ran[CONDCONV_ALGO_DEPTHWISE_FUSED] > 0 && ran[CONDCONV_ALGO_FUSED] > 0,
           "condconv's own kernels must run at every offset");
    EXPECT_OK(condconv_context_destroy(ctx));
    EXPECT(cc_cpu_live_allocations() == 0, "%zu device allocations left", cc_cpu_live_allocations());
    return tu_finish("test_emu_staging");
}
