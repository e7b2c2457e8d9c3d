/* The GPU forward against the CPU reference on random shapes, for one
 * algorithm (forced) or AUTO, in strict f32, TF32, f16 or bf16, NCHW or NHWC.
 *
 *   test_gpu_forward <auto|auto_heuristic|cudnn_grouped|gemm_batched|depthwise_fused|mixture|fused>
 *                    [tf32|f16|bf16] [nhwc] [unaligned]
 *
 * `unaligned`: every case passes x, y or both one element past a 256-byte
 * boundary (2 bytes for f16/bf16), as views and slices do: cuBLAS and cuDNN
 * then get them staged through the workspace, which must still be the size
 * the query said; AUTO runs what it measured for that class. Otherwise one
 * case in four passes both so.
 *
 * Shapes: odd and even H, W; stride 1-3; explicit and "same" padding;
 * dilation 1-2; dense, grouped, depthwise (multiplier 1 and 2) and 1x1
 * layers; kernels 1, 3, 5, 7 and non-square; E from 1 to 32; N from 1 to 64;
 * sigmoid, softmax (temperature 0.3-30) and external routing; with and
 * without bias and activation. Outputs and routing weights are poisoned with
 * NaN before each run and every element is checked.
 *
 * Tolerance. Each output is a sum of K = E-mixed Cin/g*kh*kw products; any
 * order of summation in f32 is within about K * 2^-24 * mag of the exact
 * value, mag = sum |w_i x_i| + |b| (computed by tu_reference on absolute
 * values). For the K of these shapes (<= ~1600) and typical (random-walk)
 * error growth, 1e-5 * mag + 1e-6 leaves room for the summation orders of
 * cuDNN's and cuBLAS's kernels (strict f32 admits no FFT or Winograd
 * transform) while being ~50x tighter than TF32 would need: TF32 keeps 10
 * mantissa bits (unit roundoff 2^-11 = 4.9e-4), so TF32 runs use
 * 2e-3 * mag + 1e-5, and a strict-f32 run that silently used TF32 fails.
 * Routing weights are float sums over H*W and Cin: 2e-5 absolute.
 *
 * Half precision. Parameters and x are drawn, rounded to the dtype, and
 * those very values feed both the layer and the reference (exact in f32),
 * so what remains is the layer's own rounding, unit roundoff u = 2^-11
 * (f16) or 2^-8 (bf16): the output rounded once (u |y| <= u mag), and at
 * most one stored intermediate rounded once per term (per-sample filters
 * of cudnn_grouped/gemm_batched, or each expert's output of mixture, whose
 * magnitudes sum to at most mag): 2u mag in all, plus the f32 summation
 * above. So f16 allows 1.5e-3 mag + 1e-5 (3u = 1.46e-3), bf16 1.2e-2 mag +
 * 1e-4 (3u = 1.17e-2), and the relative L2 error over the whole output must
 * also stay below 1e-3 (f16) and 1e-2 (bf16), as the issue states. NHWC
 * inputs are transposed on the host; the comparison is in NCHW.
 *
 * An algorithm forced on a layer it does not apply to must refuse at
 * prepare with CONDCONV_STATUS_NOT_SUPPORTED; AUTO must only ever choose an
 * applicable algorithm. Such refusals, and draws whose output would be
 * empty, are checked and then drawn again: every one of the requested cases
 * (CONDCONV_TEST_CASES, default 80) compares a forward, so a run with few
 * cases (as under compute-sanitizer) still tests what it says. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_util.h"

typedef struct mode {
    condconv_algo algo;
    condconv_algo_select select;
    condconv_math math;
    condconv_dtype dtype;
    condconv_layout layout;
    int unaligned; /* every case: x, y or both one element past a 256-byte boundary */
} mode;

static int parse_mode(int argc, char **argv, mode *m)
{
    m->select = CONDCONV_SELECT_MEASURE;
    m->math = CONDCONV_MATH_F32;
    m->dtype = CONDCONV_DTYPE_F32;
    m->layout = CONDCONV_LAYOUT_NCHW;
    m->unaligned = 0;
    for (int i = 2; i < argc; ++i) {
        if (strcmp(argv[i], "tf32") == 0)
            m->math = CONDCONV_MATH_TF32;
        else if (strcmp(argv[i], "f16") == 0)
            m->dtype = CONDCONV_DTYPE_F16;
        else if (strcmp(argv[i], "bf16") == 0)
            m->dtype = CONDCONV_DTYPE_BF16;
        else if (strcmp(argv[i], "nhwc") == 0)
            m->layout = CONDCONV_LAYOUT_NHWC;
        else if (strcmp(argv[i], "unaligned") == 0)
            m->unaligned = 1;
        else
            return 0;
    }
    if (argc < 2) return 0;
    if (strcmp(argv[1], "auto_heuristic") == 0) {
        m->algo = CONDCONV_ALGO_AUTO;
        m->select = CONDCONV_SELECT_HEURISTIC;
        return 1;
    }
    for (int a = 0; a < CONDCONV_ALGO_COUNT; ++a)
        if (strcmp(argv[1], condconv_algo_name((condconv_algo)a)) == 0) {
            m->algo = (condconv_algo)a;
            return 1;
        }
    return 0;
}

/* Whether `algo` should run this spec, by the test's own reading of the
 * algorithms' documented limits. */
static int expected_applicable(condconv_algo algo, const tu_layer_spec *s, const mode *m)
{
    switch (algo) {
    case CONDCONV_ALGO_DEPTHWISE_FUSED: return s->groups == s->cin;
    case CONDCONV_ALGO_FUSED:
        return !(s->groups == s->cin && s->groups > 1); /* not depthwise, any format */
    /* NHWC makes one GEMM call per group, refused past 64 groups. */
    case CONDCONV_ALGO_GEMM_BATCHED: return m->layout == CONDCONV_LAYOUT_NCHW || s->groups <= 64;
    default: return 1;
    }
}

/* Domains that exercise the algorithm, with some shapes it must refuse. */
static tu_domain domain_for(condconv_algo algo)
{
    const int r = tu_rng_int(0, 3);
    if (algo == CONDCONV_ALGO_GEMM_BATCHED && r == 0) return TU_POINTWISE;
    if (algo == CONDCONV_ALGO_DEPTHWISE_FUSED && r != 0) return TU_DEPTHWISE;
    return TU_ANY;
}

static int cases_run, cases_refused;

/* One draw: 1 if it ran a forward and compared it, 0 if the draw was
 * refused as not applicable or had an empty output (the caller draws again). */
static int run_case(condconv_context_t ctx, const mode *m, int index)
{
    int ran = 0;
    static const int kernels[] = {1, 3, 5, 7};
    tu_layer_spec s = tu_random_spec(domain_for(m->algo), 12, 7);
    if (s.kh == s.kw && tu_rng_int(0, 1)) s.kh = s.kw = kernels[tu_rng_int(0, 3)];
    static const int batches[] = {1, 2, 3, 5, 8, 16, 33, 64};
    int n = batches[tu_rng_int(0, 7)], h = tu_rng_int(1, 24), w = tu_rng_int(1, 24);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    int ho, wo, pads[4];
    if (condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, pads) != CONDCONV_STATUS_SUCCESS) {
        condconv_layer_desc_destroy(desc);
        return 0;
    }
    /* Keep the double-precision reference affordable: shrink N first. */
    const int cin_per_group = s.cin / s.groups;
    const double macs_per_sample = (double)s.cout * ho * wo * cin_per_group * s.kh * s.kw * 2.0;
    while (n > 1 && n * macs_per_sample > 4e7) n /= 2;

    tu_params p;
    tu_make_params(&s, &p);
    /* The dtype's values, for the layer and the reference alike. */
    void *half_params[4];
    tu_params_in_dtype(&p, m->dtype, half_params);
    const condconv_params view = {half_params[0], half_params[1], half_params[2], half_params[3]};
    condconv_layer_t layer;
    if (!EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer))) goto out_params;
    EXPECT_OK(condconv_layer_set_algo(layer, m->algo));

    const int applicable = expected_applicable(m->algo, &s, m);
    const condconv_status prep = condconv_prepare(layer, n, h, w);
    if (!applicable) {
        if (EXPECT_STATUS(prep, CONDCONV_STATUS_NOT_SUPPORTED)) ++cases_refused;
        goto out_layer;
    }
    if (!EXPECT_OK(prep)) {
        fprintf(stderr, "  case %d: n=%d h=%d w=%d %s\n", index, n, h, w, tu_spec_string(&s));
        goto out_layer;
    }
    condconv_plan_info info;
    EXPECT_OK(condconv_get_plan_info(layer, n, h, w, &info));
    EXPECT(info.applicable[info.algo], "plan runs %s, which it calls inapplicable", condconv_algo_name(info.algo));
    if (m->algo != CONDCONV_ALGO_AUTO)
        EXPECT(info.algo == m->algo, "forced %s, plan runs %s", condconv_algo_name(m->algo),
               condconv_algo_name(info.algo));
    int expected[CONDCONV_ALGO_COUNT] = {0};
    for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a) expected[a] = expected_applicable((condconv_algo)a, &s, m);
    EXPECT(!info.applicable[CONDCONV_ALGO_DEPTHWISE_FUSED] || expected[CONDCONV_ALGO_DEPTHWISE_FUSED],
           "depthwise_fused claims a layer it cannot run");

    const size_t x_n = (size_t)n * s.cin * h * w, y_n = (size_t)n * s.cout * ho * wo, a_n = (size_t)n * s.experts;
    float *x = malloc(x_n * sizeof(float)), *y = malloc(y_n * sizeof(float)), *y_ref = malloc(y_n * sizeof(float));
    float *mag = malloc(y_n * sizeof(float)), *alpha = malloc(a_n * sizeof(float));
    float *alpha_ref = malloc(a_n * sizeof(float)), *alpha_in = NULL;
    tu_fill_uniform(x, x_n, -1.0f, 1.0f);
    tu_round_to_dtype(x, x_n, m->dtype);
    const int nhwc = m->layout == CONDCONV_LAYOUT_NHWC;
    const size_t elem = tu_dtype_size(m->dtype);
    float *staged = malloc(x_n * sizeof(float));
    if (nhwc)
        tu_transpose(x, staged, n, s.cin, (size_t)h * w, 1);
    else
        memcpy(staged, x, x_n * sizeof(float));
    void *x_host = tu_to_dtype(staged, x_n, m->dtype);
    if (s.routing == CONDCONV_ROUTING_EXTERNAL) {
        alpha_in = malloc(a_n * sizeof(float));
        tu_fill_uniform(alpha_in, a_n, -1.0f, 1.0f);
    }
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes));
    /* One case in four passes x and y one element past an allocation's
     * start: element-aligned, not 16-byte aligned (the alignment the header
     * asks for is the element's: 2 bytes for f16/bf16). In `unaligned` mode
     * every case does, x only, y only or both in turn: the library
     * algorithms then stage what cuBLAS/cuDNN would touch (host/staging.h). */
    const int which = m->unaligned ? 1 + index % 3 : tu_rng_int(0, 3) == 0 ? 3 : 0;
    const size_t x_offset = which & 1 ? elem : 0, y_offset = which & 2 ? elem : 0;
    const size_t offset = x_offset | y_offset;
    unsigned char *dx_block = tu_dev_alloc_bytes((x_n + 1) * elem), *dy_block = tu_dev_alloc_bytes((y_n + 1) * elem);
    float *dalpha = tu_dev_alloc(a_n);
    void *dx = dx_block + x_offset, *dy = dy_block + y_offset;
    float *dalpha_in = alpha_in ? tu_dev_alloc(a_n) : NULL;
    void *dws = tu_dev_alloc_bytes(ws_bytes);
    TU_CUDA(cudaMemcpy(dx, x_host, x_n * elem, cudaMemcpyHostToDevice));
    if (alpha_in) tu_to_dev(dalpha_in, alpha_in, a_n);
    /* All-ones bytes are NaN in f32, f16 and bf16: unwritten outputs fail. */
    TU_CUDA(cudaMemset(dy, 0xFF, y_n * elem));
    tu_dev_poison(dalpha, a_n);
    struct CUstream_st *stream;
    EXPECT_OK(condconv_context_get_stream(ctx, &stream));
    const condconv_algo ran_algo = offset ? info.algo_unaligned : info.algo;
    if (m->algo != CONDCONV_ALGO_AUTO || m->select == CONDCONV_SELECT_HEURISTIC)
        EXPECT(info.algo_unaligned == info.algo, "unaligned pointers run %s, aligned ones %s",
               condconv_algo_name(info.algo_unaligned), condconv_algo_name(info.algo));
    if (EXPECT_OK(condconv_forward(layer, n, h, w, dx, dy, dalpha_in, dalpha, dws, ws_bytes))) {
        TU_CUDA(cudaStreamSynchronize(stream));
        void *y_host = malloc(y_n * elem);
        TU_CUDA(cudaMemcpy(y_host, dy, y_n * elem, cudaMemcpyDeviceToHost));
        float *y_layout = malloc(y_n * sizeof(float));
        EXPECT_OK(condconv_convert(m->dtype, y_host, CONDCONV_DTYPE_F32, y_layout, y_n));
        if (nhwc)
            tu_transpose(y_layout, y, n, s.cout, (size_t)ho * wo, 0);
        else
            memcpy(y, y_layout, y_n * sizeof(float));
        free(y_host);
        free(y_layout);
        tu_to_host(alpha, dalpha, a_n);
        if (tu_reference(&s, &p, n, h, w, x, alpha_in, y_ref, mag, alpha_ref) == 0) {
            const int tf32 = m->math == CONDCONV_MATH_TF32 && m->dtype == CONDCONV_DTYPE_F32;
            double atol, rtol, l2_max;
            tu_dtype_tolerance(m->dtype, &atol, &rtol, &l2_max);
            if (tf32) atol = 1e-5, rtol = 2e-3, l2_max = 2e-3;
            const size_t bad_y = tu_compare("y", y, y_ref, mag, y_n, atol, rtol);
            const double l2 = tu_relative_l2(y, y_ref, y_n);
            EXPECT(tu_l2_within(l2, l2_max, y_n), "relative L2 error %.3g above %.3g", l2, l2_max);
            const size_t bad_a = tu_compare("alpha", alpha, alpha_ref, NULL, a_n, 2e-5, 0.0);
            if (bad_y || bad_a || !tu_l2_within(l2, l2_max, y_n))
                tu_fail(__FILE__, __LINE__, "forward", "case %d via %s: n=%d h=%d w=%d %s%s%s", index,
                        condconv_algo_name(ran_algo), n, h, w, tu_spec_string(&s),
                        x_offset ? " (x element- but not 16-byte aligned)" : "",
                        y_offset ? " (y element- but not 16-byte aligned)" : "");
            ++cases_run;
            ran = 1;
        } else {
            tu_fail(__FILE__, __LINE__, "reference", "could not compute the reference");
        }
    }
    TU_CUDA(cudaFree(dx_block));
    TU_CUDA(cudaFree(dy_block));
    TU_CUDA(cudaFree(dalpha));
    TU_CUDA(cudaFree(dalpha_in));
    TU_CUDA(cudaFree(dws));
    free(x);
    free(y);
    free(y_ref);
    free(mag);
    free(alpha);
    free(alpha_ref);
    free(alpha_in);
    free(staged);
    free(x_host);
out_layer:
    condconv_layer_destroy(layer);
out_params:
    for (int i = 0; i < 4; ++i) free(half_params[i]);
    tu_free_params(&p);
    condconv_layer_desc_destroy(desc);
    return ran;
}

int main(int argc, char **argv)
{
    mode m;
    if (!parse_mode(argc, argv, &m)) {
        fprintf(stderr,
                "usage: %s <auto|auto_heuristic|cudnn_grouped|gemm_batched|depthwise_fused|mixture|fused> "
                "[tf32|f16|bf16] [nhwc] [unaligned]\n",
                argv[0]);
        return 2;
    }
    tu_require_gpu("test_gpu_forward");
    tu_seed_from_env();
    condconv_context_t ctx;
    cudaStream_t stream;
    TU_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_gpu_forward");
    EXPECT_OK(condconv_context_set_stream(ctx, stream));
    EXPECT_OK(condconv_context_set_math(ctx, m.math));
    EXPECT_OK(condconv_context_set_algo_select(ctx, m.select));
    const int cases = tu_case_count(80);
    int draws = 0;
    for (int i = 0; i < cases; ++i) {
        int ran = run_case(ctx, &m, i);
        while (!ran && draws < 20 * cases && tu_failures == 0) {
            ++draws;
            ran = run_case(ctx, &m, i);
        }
    }
    printf("%s %s %s%s%s: %d cases compared, %d refused as not applicable\n", argv[1],
           m.dtype == CONDCONV_DTYPE_F16    ? "f16"
           : m.dtype == CONDCONV_DTYPE_BF16 ? "bf16"
                                            : "f32",
           m.layout == CONDCONV_LAYOUT_NHWC ? "NHWC" : "NCHW", m.math == CONDCONV_MATH_TF32 ? " tf32" : "",
           m.unaligned ? " unaligned" : "", cases_run, cases_refused);
    EXPECT(cases_run == cases, "only %d of %d random cases ran", cases_run, cases);
    EXPECT_OK(condconv_context_destroy(ctx));
    TU_CUDA(cudaStreamDestroy(stream));
    return tu_finish("test_gpu_forward");
}
