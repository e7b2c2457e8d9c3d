/* condconv_forward and condconv_route end to end on the CPU execution layer
 * in every dtype and layout: f16 and bf16, NCHW and NHWC (and f32 NHWC),
 * through the library's host code, unchanged, and the kernels' half and
 * channels-last instances run on the CPU.
 *
 * Every algorithm runs: routing (condconv_route, and inside every
 * forward), depthwise_fused on depthwise layers, forced and chosen by AUTO
 * (measured and by rule); the fused tensor-core kernel on dense, grouped
 * and 1x1 half-precision layers, and the fused kernels on f32 NHWC ones (the
 * CUDA-core kernel in strict f32, tensor cores with TF32 allowed); and
 * cudnn_grouped, mixture (the layer's emulated cuDNN) and gemm_batched (its
 * emulated cuBLAS), forced on random dense, grouped, 1x1 and depthwise
 * layers of every format: each must prepare and match the reference (in
 * NHWC: the transposes around cudnn_grouped, cuDNN's NHWC filters for
 * mixture, gemm_batched's per-group calls). AUTO, which measures them all,
 * may choose any algorithm.
 *
 * Reference: tu_reference in double on the dtype's own values (parameters
 * and x are drawn, rounded to the dtype, and fed to both), compared in NCHW
 * after transposing NHWC results on the host. Tolerances from
 * tu_dtype_tolerance (derived in tests/test_gpu_forward.c); depthwise_fused
 * stores no intermediate, so it is held to the same bound with room to
 * spare. Outputs are poisoned (all-ones bytes: NaN in every dtype) before
 * each forward; one case in four passes x and y one element past a 16-byte
 * boundary, so the kernels' scalar paths run too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_util.h"
#include "gpu_util.h"
#include "test_util.h"

static int forwards, routes;
/* TF32 allowed in the context: f32 outputs are checked as tests/test_gpu_forward.c checks TF32. */
static int tf32;

typedef struct format {
    condconv_dtype dtype;
    condconv_layout layout;
} format;

static const char *format_name(format f)
{
    static const char *names[3][2] = {{"f32 NCHW", "f32 NHWC"}, {"f16 NCHW", "f16 NHWC"}, {"bf16 NCHW", "bf16 NHWC"}};
    return names[f.dtype][f.layout];
}

/* The spec's parameters rounded to the dtype (in p, for the reference) and a
 * layer made from them in that dtype and layout. */
typedef struct format_layer {
    condconv_layer_t layer;
    void *half_params[4];
} format_layer;

static int make_layer(condconv_context_t ctx, const tu_layer_spec *s, tu_params *p, format f, format_layer *out)
{
    tu_round_to_dtype(p->experts, p->experts_n, f.dtype);
    tu_round_to_dtype(p->expert_bias, p->bias_n, f.dtype);
    tu_round_to_dtype(p->routing_weight, p->routing_weight_n, f.dtype);
    tu_round_to_dtype(p->routing_bias, p->routing_bias_n, f.dtype);
    out->half_params[0] = tu_to_dtype(p->experts, p->experts_n, f.dtype);
    out->half_params[1] = tu_to_dtype(p->expert_bias, p->bias_n, f.dtype);
    out->half_params[2] = tu_to_dtype(p->routing_weight, p->routing_weight_n, f.dtype);
    out->half_params[3] = tu_to_dtype(p->routing_bias, p->routing_bias_n, f.dtype);
    const condconv_params view = {out->half_params[0], out->half_params[1], out->half_params[2], out->half_params[3]};
    condconv_layer_desc_t desc = tu_make_desc(s);
    EXPECT_OK(condconv_layer_desc_set_format(desc, f.dtype, f.layout));
    const int ok = EXPECT_OK(condconv_layer_create(ctx, desc, &view, &out->layer));
    condconv_layer_desc_destroy(desc);
    return ok;
}

static void destroy_layer(format_layer *l)
{
    EXPECT_OK(condconv_layer_destroy(l->layer));
    for (int i = 0; i < 4; ++i) free(l->half_params[i]);
}

/* Device copy of x (NCHW floats, already the dtype's values) in the format,
 * `offset` bytes into its allocation. */
static void *upload_x(const float *x, int n, int c, size_t plane, format f, size_t offset, void **block)
{
    const size_t count = (size_t)n * c * plane, elem = tu_dtype_size(f.dtype);
    float *staged = malloc(count * sizeof(float));
    if (f.layout == CONDCONV_LAYOUT_NHWC)
        tu_transpose(x, staged, n, c, plane, 1);
    else
        memcpy(staged, x, count * sizeof(float));
    void *host = tu_to_dtype(staged, count, f.dtype);
    *block = tu_dev_alloc_bytes(count * elem + offset);
    void *dev = (unsigned char *)*block + offset;
    TU_CUDA(cudaMemcpy(dev, host, count * elem, cudaMemcpyHostToDevice));
    free(staged);
    free(host);
    return dev;
}

/* Device y in the format -> NCHW floats. */
static void download_y(const void *dev, float *y, int n, int c, size_t plane, format f)
{
    const size_t count = (size_t)n * c * plane, elem = tu_dtype_size(f.dtype);
    void *host = malloc(count * elem);
    float *staged = malloc(count * sizeof(float));
    TU_CUDA(cudaMemcpy(host, dev, count * elem, cudaMemcpyDeviceToHost));
    EXPECT_OK(condconv_convert(f.dtype, host, CONDCONV_DTYPE_F32, staged, count));
    if (f.layout == CONDCONV_LAYOUT_NHWC)
        tu_transpose(staged, y, n, c, plane, 0);
    else
        memcpy(y, staged, count * sizeof(float));
    free(host);
    free(staged);
}

/* One forward (and one condconv_route) of a layer in format f, with `algo`
 * set (forced or AUTO); the plan must run `expected`. */
static void layer_case(condconv_context_t ctx, format f, const tu_layer_spec *spec, condconv_algo algo,
                       condconv_algo expected, int index)
{
    const tu_layer_spec s = *spec;
    static const int batches[] = {1, 2, 3, 5};
    const int n = batches[index % 4];
    int h, w, ho = 0, wo = 0, tries = 0;
    condconv_status dims;
    do { /* an empty output: draw the input size again, larger after a while (dilated 7x7: 13) */
        const int most = tries++ < 20 ? 11 : 24;
        h = tu_rng_int(1, most);
        w = tu_rng_int(1, most);
        condconv_layer_desc_t desc = tu_make_desc(&s);
        dims = condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL);
        condconv_layer_desc_destroy(desc);
    } while (dims != CONDCONV_STATUS_SUCCESS);

    tu_params p;
    tu_make_params(&s, &p);
    format_layer l;
    if (!make_layer(ctx, &s, &p, f, &l)) {
        tu_free_params(&p);
        return;
    }
    EXPECT_OK(condconv_layer_set_algo(l.layer, algo));
    const size_t x_n = (size_t)n * s.cin * h * w, y_n = (size_t)n * s.cout * ho * wo, a_n = (size_t)n * s.experts;
    const size_t elem = tu_dtype_size(f.dtype), offset = index % 4 == 3 ? elem : 0;
    float *x = eu_random(x_n, -1.0f, 1.0f), *alpha_in = NULL;
    tu_round_to_dtype(x, x_n, f.dtype);
    if (s.routing == CONDCONV_ROUTING_EXTERNAL) alpha_in = eu_random(a_n, -1.0f, 1.0f);
    float *y = eu_floats(y_n), *y_ref = eu_floats(y_n), *mag = eu_floats(y_n);
    float *alpha = eu_floats(a_n), *alpha_ref = eu_floats(a_n);
    EXPECT(tu_reference(&s, &p, n, h, w, x, alpha_in, y_ref, mag, alpha_ref) == 0, "reference");

    void *x_block, *y_block = tu_dev_alloc_bytes(y_n * elem + offset);
    void *dx = upload_x(x, n, s.cin, (size_t)h * w, f, offset, &x_block), *dy = (unsigned char *)y_block + offset;
    float *dalpha = tu_dev_alloc(a_n), *dalpha_in = alpha_in ? tu_dev_alloc(a_n) : NULL;
    if (alpha_in) tu_to_dev(dalpha_in, alpha_in, a_n);
    TU_CUDA(cudaMemset(dy, 0xFF, y_n * elem));
    tu_dev_poison(dalpha, a_n);
    size_t ws_bytes = 0;
    condconv_plan_info info;
    if (EXPECT_OK(condconv_get_plan_info(l.layer, n, h, w, &info)) &&
        EXPECT_OK(condconv_get_workspace_size(l.layer, n, h, w, &ws_bytes))) {
        /* AUTO may choose any algorithm (measured or by rule); the output is checked all the same. */
        const int any = algo == CONDCONV_ALGO_AUTO;
        EXPECT(any || info.algo == expected, "%s: %s runs %s (%s), expected %s", format_name(f), tu_spec_string(&s),
               condconv_algo_name(info.algo), info.reason, condconv_algo_name(expected));
        if (index < 2) printf("  %s plan: %s; %s\n", format_name(f), info.reason, info.backend);
        void *ws = ws_bytes ? tu_dev_alloc_bytes(ws_bytes) : NULL;
        if (EXPECT_OK(condconv_forward(l.layer, n, h, w, dx, dy, dalpha_in, dalpha, ws, ws_bytes))) {
            ++forwards;
            download_y(dy, y, n, s.cout, (size_t)ho * wo, f);
            tu_to_host(alpha, dalpha, a_n);
            double atol, rtol, l2_max;
            tu_dtype_tolerance(f.dtype, &atol, &rtol, &l2_max);
            if (tf32 && f.dtype == CONDCONV_DTYPE_F32) atol = 1e-5, rtol = 2e-3, l2_max = 2e-3;
            const double l2 = tu_relative_l2(y, y_ref, y_n);
            const size_t bad = tu_compare("y", y, y_ref, mag, y_n, atol, rtol) +
                               tu_compare("alpha", alpha, alpha_in ? alpha_in : alpha_ref, NULL, a_n, 2e-5, 0.0);
            EXPECT(bad == 0 && tu_l2_within(l2, l2_max, y_n), "%s via %s: n=%d h=%d w=%d %s%s (relative L2 %.3g)",
                   format_name(f), condconv_algo_name(algo), n, h, w, tu_spec_string(&s),
                   offset ? " (not 16-byte aligned)" : "", l2);
        }
        TU_CUDA(cudaFree(ws));
    }
    if (s.routing != CONDCONV_ROUTING_EXTERNAL) { /* condconv_route alone, on the same x */
        tu_dev_poison(dalpha, a_n);
        if (EXPECT_OK(condconv_route(l.layer, n, h, w, dx, dalpha))) {
            ++routes;
            tu_to_host(alpha, dalpha, a_n);
            EXPECT(tu_compare("alpha", alpha, alpha_ref, NULL, a_n, 2e-5, 0.0) == 0, "%s: condconv_route",
                   format_name(f));
        }
    }
    TU_CUDA(cudaFree(x_block));
    TU_CUDA(cudaFree(y_block));
    TU_CUDA(cudaFree(dalpha));
    TU_CUDA(cudaFree(dalpha_in));
    free(x);
    free(alpha_in);
    free(y);
    free(y_ref);
    free(mag);
    free(alpha);
    free(alpha_ref);
    destroy_layer(&l);
    tu_free_params(&p);
}

/* A depthwise layer: depthwise_fused, forced or chosen by AUTO. */
static void depthwise_case(condconv_context_t ctx, format f, condconv_algo algo, int index)
{
    tu_layer_spec s = tu_random_spec(TU_DEPTHWISE, 3, 7);
    if (index % 5 == 0) { /* an EfficientNet-CondConv depthwise stage, wide enough for 16-byte vectors */
        s.cin = 16 + 8 * (index % 3);
        s.cout = s.cin * (index % 2 ? 2 : 1);
        s.groups = s.cin;
        s.kh = s.kw = index % 2 ? 5 : 3;
        s.stride_h = s.stride_w = 1 + index % 2;
        s.dil_h = s.dil_w = 1;
        s.pad_mode = CONDCONV_PADDING_SAME;
        s.pad_h = s.pad_w = 0;
    }
    layer_case(ctx, f, &s, algo, CONDCONV_ALGO_DEPTHWISE_FUSED, index);
}

/* A dense, grouped or 1x1 half-precision layer: the fused tensor-core
 * kernel, forced or chosen by AUTO (cuDNN and cuBLAS refuse in this build). */
static void dense_case(condconv_context_t ctx, format f, condconv_algo algo, int index)
{
    static const tu_domain domains[] = {TU_DENSE, TU_GROUPED, TU_POINTWISE};
    tu_layer_spec s;
    do /* groups == Cin is depthwise to the library (depthwise_fused's) */
        s = tu_random_spec(domains[index % 3], 12, 5);
    while (s.groups == s.cin);
    if (index % 4 == 1) { /* an EfficientNet-CondConv 1x1, wide enough for full tiles */
        s = tu_basic_spec(40, 72, 1, 8);
        s.routing = CONDCONV_ROUTING_SIGMOID;
        s.has_bias = 1;
        s.activation = CONDCONV_ACTIVATION_SILU;
    }
    layer_case(ctx, f, &s, algo, CONDCONV_ALGO_FUSED, index);
}

/* cudnn_grouped, gemm_batched or mixture forced on a random dense, grouped,
 * 1x1 or depthwise layer (every one applies to each in every format). */
static void library_case(condconv_context_t ctx, format f, condconv_algo algo, int index)
{
    static const tu_domain domains[] = {TU_DENSE, TU_GROUPED, TU_POINTWISE, TU_DEPTHWISE};
    const tu_layer_spec s = tu_random_spec(domains[index % 4], 6, 5);
    layer_case(ctx, f, &s, algo, algo, index);
}

/* condconv_route alone on a dense layer: wide channels for the vector
 * paths, many pixels for a routing split over blocks. */
static void dense_routing(condconv_context_t ctx, format f)
{
    tu_layer_spec s = tu_basic_spec(24, 16, 3, 5);
    s.routing = CONDCONV_ROUTING_SOFTMAX;
    s.temperature = 0.7f;
    const int n = 3, h = 19, w = 21;
    tu_params p;
    tu_make_params(&s, &p);
    format_layer l;
    if (!make_layer(ctx, &s, &p, f, &l)) {
        tu_free_params(&p);
        return;
    }
    const size_t x_n = (size_t)n * s.cin * h * w, a_n = (size_t)n * s.experts;
    float *x = eu_random(x_n, -1.0f, 1.0f), *alpha = eu_floats(a_n), *alpha_ref = eu_floats(a_n);
    float *y_ref = eu_floats((size_t)n * s.cout * h * w); /* the output is smaller (3x3, unpadded) */
    tu_round_to_dtype(x, x_n, f.dtype);
    EXPECT(tu_reference(&s, &p, n, h, w, x, NULL, y_ref, NULL, alpha_ref) == 0, "reference");
    void *x_block;
    void *dx = upload_x(x, n, s.cin, (size_t)h * w, f, 0, &x_block);
    float *dalpha = tu_dev_alloc(a_n);
    tu_dev_poison(dalpha, a_n);
    if (EXPECT_OK(condconv_route(l.layer, n, h, w, dx, dalpha))) {
        ++routes;
        tu_to_host(alpha, dalpha, a_n);
        EXPECT(tu_compare("alpha", alpha, alpha_ref, NULL, a_n, 2e-5, 0.0) == 0, "%s: condconv_route of a dense layer",
               format_name(f));
    }
    TU_CUDA(cudaFree(x_block));
    TU_CUDA(cudaFree(dalpha));
    free(x);
    free(alpha);
    free(alpha_ref);
    free(y_ref);
    destroy_layer(&l);
    tu_free_params(&p);
}

int main(void)
{
    tu_seed_from_env();
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_emu_formats");
    static const format formats[] = {
        {CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW},  {CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NHWC},
        {CONDCONV_DTYPE_F16, CONDCONV_LAYOUT_NCHW},  {CONDCONV_DTYPE_F16, CONDCONV_LAYOUT_NHWC},
        {CONDCONV_DTYPE_BF16, CONDCONV_LAYOUT_NCHW}, {CONDCONV_DTYPE_BF16, CONDCONV_LAYOUT_NHWC}};
    const int cases = tu_case_count(10), library_cases = (cases + 2) / 3;
    const size_t format_count = sizeof formats / sizeof formats[0];
    int expected_forwards = 0;
    for (size_t k = 0; k < format_count; ++k) {
        /* cuDNN and cuBLAS, forced; f32 alternately in strict f32 and TF32;
         * cuDNN chosen by Find and by Get_v7 in turn. */
        static const condconv_algo library_algos[] = {CONDCONV_ALGO_CUDNN_GROUPED, CONDCONV_ALGO_GEMM_BATCHED,
                                                      CONDCONV_ALGO_MIXTURE};
        for (int i = 0; i < library_cases; ++i)
            for (int a = 0; a < 3; ++a) {
                tf32 = formats[k].dtype == CONDCONV_DTYPE_F32 && (i + a) % 2;
                EXPECT_OK(condconv_context_set_math(ctx, tf32 ? CONDCONV_MATH_TF32 : CONDCONV_MATH_F32));
                EXPECT_OK(condconv_context_set_algo_select(ctx, (i + a) % 3 == 1 ? CONDCONV_SELECT_HEURISTIC
                                                                                 : CONDCONV_SELECT_MEASURE));
                library_case(ctx, formats[k], library_algos[a], 3 * i + a);
                ++expected_forwards;
            }
        tf32 = 0;
        EXPECT_OK(condconv_context_set_math(ctx, CONDCONV_MATH_F32));
        /* f32 NCHW's depthwise and fused layers are test_emu_forward's. */
        if (formats[k].dtype == CONDCONV_DTYPE_F32 && formats[k].layout == CONDCONV_LAYOUT_NCHW) continue;
        expected_forwards += 2 * cases;
        /* Forced, then AUTO by measurement, then AUTO by rule. */
        for (int i = 0; i < cases; ++i) {
            /* A measured AUTO times every candidate on the emulated libraries: the first case only. */
            const condconv_algo_select select = i == 0 ? CONDCONV_SELECT_MEASURE : CONDCONV_SELECT_HEURISTIC;
            EXPECT_OK(condconv_context_set_algo_select(ctx, select));
            depthwise_case(ctx, formats[k], i % 3 == 0 ? CONDCONV_ALGO_DEPTHWISE_FUSED : CONDCONV_ALGO_AUTO, i);
        }
        /* Dense layers run fused: half precision on tensor cores; f32 NHWC on
         * the CUDA-core kernel in strict f32 (even cases) and on TF32 tensor
         * cores when the context allows TF32 (odd cases). */
        const int f32 = formats[k].dtype == CONDCONV_DTYPE_F32;
        for (int i = 0; i < cases; ++i) {
            tf32 = f32 && i % 2;
            EXPECT_OK(condconv_context_set_math(ctx, tf32 ? CONDCONV_MATH_TF32 : CONDCONV_MATH_F32));
            /* AUTO (cases 2, 3 mod 4) measured in case 2 only, by rule after it. */
            EXPECT_OK(
                condconv_context_set_algo_select(ctx, i == 2 ? CONDCONV_SELECT_MEASURE : CONDCONV_SELECT_HEURISTIC));
            dense_case(ctx, formats[k], i % 4 < 2 ? CONDCONV_ALGO_FUSED : CONDCONV_ALGO_AUTO, i);
        }
        tf32 = 0;
        EXPECT_OK(condconv_context_set_math(ctx, CONDCONV_MATH_F32));
        EXPECT_OK(condconv_context_set_algo_select(ctx, CONDCONV_SELECT_MEASURE));
        dense_routing(ctx, formats[k]);
    }
    EXPECT_OK(condconv_context_destroy(ctx));
    printf("test_emu_formats: %d forwards, %d routings\n", forwards, routes);
    EXPECT(forwards == expected_forwards, "%d of %d forwards ran", forwards, expected_forwards);
    EXPECT(eu_failures == 0, "%d failure(s) of the buffer checks above", eu_failures);
    return tu_finish("test_emu_formats");
}
