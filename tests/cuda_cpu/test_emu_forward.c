/* condconv_forward end to end on the CPU execution layer: the library's host
 * code, unchanged, with plans, workspace offsets, routing split over blocks
 * (the emulated device has 132 SMs), AUTO's measurement and rule, and the
 * kernels run on the CPU, compared with condconv_forward_cpu.
 *
 * Every algorithm runs: routing + depthwise_fused and fused (condconv's
 * kernels), cudnn_grouped and mixture (on the layer's emulated cuDNN: its
 * descriptors, Find and Get_v7, fused bias + ReLU, workspace) and
 * gemm_batched (on its emulated cuBLAS). Each is forced on random dense,
 * grouped, 1x1 and depthwise f32 layers wherever it applies, and must
 * prepare and match the reference there; AUTO measures them all. The
 * workspace is allocated exactly as large as asked, so a layout that
 * under-counts it writes into the emulated cudaMalloc's guard zones and
 * stops the run.
 *
 * A forward whose workspace allocation is 4 bytes shorter than the size the
 * caller states (as a layout that under-counts its last region would be)
 * writes into the guard zone after the allocation: run in a child process,
 * it must stop with the layer's guard-zone report (under ASan: the write
 * itself, into the poisoned zone).
 *
 * Also: a forward captured into a CUDA graph and replayed on new inputs
 * equals an eager one (the emulated runtime invalidates a capture in which
 * the forward allocated or synchronised), an unprepared shape inside a
 * capture gives NOT_PREPARED and leaves the capture valid, and
 * condconv_route with and without a plan.
 *
 * Tolerance as tests/test_gpu_forward.c: 1e-5 * mag + 1e-6 for y, 2e-5 for
 * the routing weights. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "emu_util.h"
#include "test_util.h"
#include "gpu_util.h"
#include "routing.h"

static int forwards;
/* The forward may run TF32 (the context allows it): compared with tests/test_gpu_forward.c's TF32 bound. */
static int tf32_case;

typedef struct buffers {
    float *x, *y, *alpha, *alpha_in;
    void *ws;
    size_t x_n, y_n, a_n, ws_bytes;
} buffers;

static void compare_with_reference(const tu_layer_spec *s, const tu_params *p, int n, int h, int w, const float *x,
                                   const float *alpha_in, const float *y, const float *alpha, const char *what)
{
    condconv_layer_desc_t desc = tu_make_desc(s);
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL));
    condconv_layer_desc_destroy(desc);
    const size_t y_n = (size_t)n * s->cout * ho * wo, a_n = (size_t)n * s->experts;
    float *y_ref = eu_floats(y_n), *mag = eu_floats(y_n), *a_ref = eu_floats(a_n);
    if (tu_reference(s, p, n, h, w, x, alpha_in, y_ref, mag, a_ref) == 0) {
        const size_t bad = tu_compare("y", y, y_ref, mag, y_n, tf32_case ? 1e-5 : 1e-6, tf32_case ? 2e-3 : 1e-5) +
                           (alpha ? tu_compare("alpha", alpha, a_ref, NULL, a_n, 2e-5, 0.0) : 0);
        EXPECT(bad == 0, "%s: n=%d h=%d w=%d %s", what, n, h, w, tu_spec_string(s));
    } else {
        EXPECT(0, "the CPU reference failed");
    }
    free(y_ref);
    free(mag);
    free(a_ref);
}

/* A forward of `layer` on random x: poisons y and alpha, checks against the reference. */
static void forward_case(condconv_layer_t layer, const tu_layer_spec *s, const tu_params *p, int n, int h, int w,
                         int misaligned, int want_alpha, const char *what)
{
    condconv_layer_desc_t desc = tu_make_desc(s);
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL));
    condconv_layer_desc_destroy(desc);
    const size_t x_n = (size_t)n * s->cin * h * w, y_n = (size_t)n * s->cout * ho * wo, a_n = (size_t)n * s->experts;
    float *x = eu_random(x_n, -1.0f, 1.0f), *alpha_in = NULL;
    if (s->routing == CONDCONV_ROUTING_EXTERNAL) alpha_in = eu_random(a_n, -1.0f, 1.0f);
    size_t ws_bytes = 0;
    if (!EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes))) goto out;
    eu_buffer dx = eu_buffer_make(x_n, misaligned), dy = eu_buffer_make(y_n, misaligned);
    eu_buffer da = eu_buffer_make(a_n, 0), dai = eu_buffer_make(alpha_in ? a_n : 0, 0);
    /* The workspace exactly as large as asked, NaN: reads of parts no step wrote show. */
    void *ws = ws_bytes ? tu_dev_alloc_bytes(ws_bytes) : NULL;
    eu_upload(&dx, x);
    if (alpha_in) eu_upload(&dai, alpha_in);
    if (EXPECT_OK(condconv_forward(layer, n, h, w, dx.data, dy.data, alpha_in ? dai.data : NULL,
                                   want_alpha ? da.data : NULL, ws, ws_bytes))) {
        ++forwards;
        float *y = eu_floats(y_n), *alpha = eu_floats(a_n);
        eu_download(&dy, y);
        eu_download(&da, alpha);
        compare_with_reference(s, p, n, h, w, x, alpha_in, y, want_alpha ? alpha : NULL, what);
        eu_guards_intact(&dy, "y");
        eu_guards_intact(&da, "routing_out");
        free(y);
        free(alpha);
    } else {
        fprintf(stderr, "  %s: n=%d h=%d w=%d %s\n", what, n, h, w, tu_spec_string(s));
    }
    TU_CUDA(cudaFree(ws));
    eu_buffer_free(&dx);
    eu_buffer_free(&dy);
    eu_buffer_free(&da);
    eu_buffer_free(&dai);
out:
    free(x);
    free(alpha_in);
}

static void depthwise_layers(condconv_context_t ctx, condconv_algo algo, condconv_algo_select select, int count)
{
    EXPECT_OK(condconv_context_set_algo_select(ctx, select));
    static const int batches[] = {1, 2, 3, 4, 6};
    for (int i = 0; i < count; ++i) {
        tu_layer_spec s = tu_random_spec(TU_DEPTHWISE, 3, 7); /* up to 12 channels */
        if (i % 5 == 0) {                                     /* an EfficientNet-CondConv depthwise stage */
            s.kh = s.kw = i % 2 ? 5 : 3;
            s.stride_h = s.stride_w = 1 + i % 2;
            s.dil_h = s.dil_w = 1;
            s.pad_mode = CONDCONV_PADDING_SAME;
            s.pad_h = s.pad_w = 0;
        }
        /* Small: AUTO times each candidate over 9 forwards. */
        const int n = batches[i % 5], h = tu_rng_int(1, 12), w = tu_rng_int(1, 12);
        condconv_layer_desc_t desc = tu_make_desc(&s);
        int ho = 0, wo = 0;
        const condconv_status dims = condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL);
        if (dims != CONDCONV_STATUS_SUCCESS) {
            condconv_layer_desc_destroy(desc);
            --i; /* an empty output: draw again */
            continue;
        }
        tu_params p;
        tu_make_params(&s, &p);
        const condconv_params view = tu_params_view(&p);
        condconv_layer_t layer;
        if (EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer))) {
            EXPECT_OK(condconv_layer_set_algo(layer, algo));
            condconv_plan_info info;
            if (EXPECT_OK(condconv_get_plan_info(layer, n, h, w, &info))) {
                /* Measured, AUTO may take any algorithm (on the CPU, the emulated cuDNN often wins). */
                EXPECT(info.algo == CONDCONV_ALGO_DEPTHWISE_FUSED ||
                           (algo == CONDCONV_ALGO_AUTO && select == CONDCONV_SELECT_MEASURE),
                       "a depthwise layer runs %s (%s)", condconv_algo_name(info.algo), info.reason);
                if (i == 0) printf("  plan: %s, %s\n", condconv_algo_name(info.algo), info.reason);
                forward_case(layer, &s, &p, n, h, w, i % 4 == 3, i % 3 != 2, condconv_algo_name(algo));
            }
            EXPECT_OK(condconv_layer_destroy(layer));
        }
        tu_free_params(&p);
        condconv_layer_desc_destroy(desc);
    }
}

/* Whether `algo` must run an f32 NCHW layer of this spec (the rules of
 * host/algo_*.c): depthwise_fused only depthwise layers, fused only the
 * others, the rest every layer. */
static int applies(condconv_algo algo, const tu_layer_spec *s)
{
    const int depthwise = s->groups == s->cin;
    if (algo == CONDCONV_ALGO_DEPTHWISE_FUSED) return depthwise;
    if (algo == CONDCONV_ALGO_FUSED) return !depthwise;
    return 1;
}

/* Every algorithm, forced on random layers of every kind where it applies
 * (and refusing where it does not), then AUTO: cuDNN chosen by Find
 * (measured) and by Get_v7 (by rule) in turn, strict f32 and TF32 in turn. */
static void every_algorithm(condconv_context_t ctx, int count)
{
    static const tu_domain domains[] = {TU_DENSE, TU_GROUPED, TU_POINTWISE, TU_DEPTHWISE};
    static const condconv_algo algos[] = {CONDCONV_ALGO_CUDNN_GROUPED,   CONDCONV_ALGO_GEMM_BATCHED,
                                          CONDCONV_ALGO_MIXTURE,         CONDCONV_ALGO_FUSED,
                                          CONDCONV_ALGO_DEPTHWISE_FUSED, CONDCONV_ALGO_AUTO};
    static const int batches[] = {1, 2, 3, 5};
    for (int i = 0; i < count; ++i) {
        tu_layer_spec s = tu_random_spec(domains[i % 4], 6, 5);
        if (i % 4 == 1 && s.groups == s.cin) s.groups = 1; /* a grouped draw that came out depthwise */
        int n = batches[i % 4], h = tu_rng_int(1, 9), w = tu_rng_int(1, 9);
        if (i == 0) { /* cuDNN's fused bias + ReLU, and one sample of one group: where cuDNN offers FFT first */
            s = tu_basic_spec(6, 8, 3, 4);
            s.pad_h = s.pad_w = 1;
            s.has_bias = 1;
            s.activation = CONDCONV_ACTIVATION_RELU;
            s.routing = CONDCONV_ROUTING_SIGMOID;
            n = 1;
            h = 7;
            w = 6;
        }
        condconv_layer_desc_t desc = tu_make_desc(&s);
        int ho = 0, wo = 0;
        if (condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL) != CONDCONV_STATUS_SUCCESS) {
            condconv_layer_desc_destroy(desc);
            --i; /* an empty output: draw again */
            continue;
        }
        const int tf32 = i % 3 == 1;
        EXPECT_OK(condconv_context_set_math(ctx, tf32 ? CONDCONV_MATH_TF32 : CONDCONV_MATH_F32));
        EXPECT_OK(condconv_context_set_algo_select(ctx, i % 2 ? CONDCONV_SELECT_HEURISTIC : CONDCONV_SELECT_MEASURE));
        tu_params p;
        tu_make_params(&s, &p);
        const condconv_params view = tu_params_view(&p);
        for (size_t a = 0; a < sizeof algos / sizeof algos[0]; ++a) {
            condconv_layer_t layer;
            if (!EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer))) break;
            EXPECT_OK(condconv_layer_set_algo(layer, algos[a]));
            condconv_plan_info info;
            const condconv_status st = condconv_get_plan_info(layer, n, h, w, &info);
            if (algos[a] != CONDCONV_ALGO_AUTO && !applies(algos[a], &s)) {
                EXPECT_STATUS(st, CONDCONV_STATUS_NOT_SUPPORTED);
            } else if (st != CONDCONV_STATUS_SUCCESS) {
                EXPECT(0, "%s refuses n=%d h=%d w=%d %s: %s", condconv_algo_name(algos[a]), n, h, w, tu_spec_string(&s),
                       condconv_last_error());
            } else {
                EXPECT(algos[a] == CONDCONV_ALGO_AUTO || info.algo == algos[a], "%s forced, %s planned",
                       condconv_algo_name(algos[a]), condconv_algo_name(info.algo));
                if (i < 4) printf("  %s: %s\n", condconv_algo_name(info.algo), info.backend);
                /* Strict f32 sums directly: never a transform algorithm (the emulated cuDNN offers FFT first). */
                EXPECT(tf32 || strstr(info.backend, "fft") == NULL, "strict f32 runs %s", info.backend);
                if (i == 0 && info.algo == CONDCONV_ALGO_CUDNN_GROUPED)
                    EXPECT(strstr(info.backend, "bias+relu fused") != NULL, "cuDNN's bias + ReLU not fused: %s",
                           info.backend);
                /* TF32 within its bound: tf32 cases compare as TF32 (below). */
                tf32_case = tf32;
                forward_case(layer, &s, &p, n, h, w, i % 4 == 3, i % 3 != 2, condconv_algo_name(algos[a]));
                tf32_case = 0;
            }
            EXPECT_OK(condconv_layer_destroy(layer));
        }
        tu_free_params(&p);
        condconv_layer_desc_destroy(desc);
    }
    EXPECT_OK(condconv_context_set_math(ctx, CONDCONV_MATH_F32));
}

/* A captured forward replayed on new inputs equals an eager forward and the reference. */
static void graph_capture(condconv_context_t ctx, cudaStream_t stream)
{
    tu_layer_spec s = tu_basic_spec(32, 64, 5, 4);
    s.groups = 32;
    s.stride_h = s.stride_w = 2;
    s.pad_mode = CONDCONV_PADDING_SAME;
    s.has_bias = 1;
    s.routing = CONDCONV_ROUTING_SOFTMAX;
    s.temperature = 3.0f;
    s.activation = CONDCONV_ACTIVATION_SILU;
    /* 32 channels of 16x15: the plan splits the routing over blocks. */
    const int n = 4, h = 16, w = 15;
    EXPECT(cc_routing_splits(n, s.cin, (long long)h * w, 132) > 1, "the graph layer should split its routing");
    tu_params p;
    tu_make_params(&s, &p);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t layer;
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer));
    EXPECT_OK(condconv_prepare(layer, n, h, w));
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL));
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes));
    const size_t x_n = (size_t)n * s.cin * h * w, y_n = (size_t)n * s.cout * ho * wo;
    /* Room for n + 1 samples: the unprepared forward below must be refused as unprepared, not as overlapping. */
    eu_buffer dx = eu_buffer_make(x_n / n * (n + 1), 0), dy = eu_buffer_make(y_n / n * (n + 1), 0);
    void *ws = tu_dev_alloc_bytes(ws_bytes);

    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    TU_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    EXPECT_OK(condconv_forward(layer, n, h, w, dx.data, dy.data, NULL, NULL, ws, ws_bytes));
    EXPECT_STATUS(condconv_forward(layer, n + 1, h, w, dx.data, dy.data, NULL, NULL, ws, ws_bytes),
                  CONDCONV_STATUS_NOT_PREPARED);
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    EXPECT(end == cudaSuccess, "the capture was invalidated (%s): the forward allocated or synchronised",
           cudaGetErrorName(end));
    if (end == cudaSuccess) {
        TU_CUDA(cudaGraphInstantiate(&exec, graph, 0));
        for (int replay = 0; replay < 2; ++replay) {
            float *x = eu_random(dx.n, -1.0f, 1.0f), *y = eu_floats(dy.n);
            eu_upload(&dx, x); /* only the first n samples are read */
            eu_poison(&dy);
            TU_CUDA(cudaGraphLaunch(exec, stream));
            TU_CUDA(cudaStreamSynchronize(stream));
            eu_download(&dy, y);
            compare_with_reference(&s, &p, n, h, w, x, NULL, y, NULL, "graph replay");
            ++forwards;
            free(x);
            free(y);
        }
        TU_CUDA(cudaGraphExecDestroy(exec));
        TU_CUDA(cudaGraphDestroy(graph));
    }
    /* Routing alone, with the plan's split over blocks and without a plan. */
    for (int with_plan = 0; with_plan < 2; ++with_plan) {
        const int rn = with_plan ? n : n + 1;
        float *x = eu_random(dx.n, -1.0f, 1.0f);
        eu_buffer da = eu_buffer_make((size_t)rn * s.experts, 0);
        eu_upload(&dx, x);
        if (EXPECT_OK(condconv_route(layer, rn, h, w, dx.data, da.data))) {
            float *alpha = eu_floats(da.n), *y_ref = eu_floats(y_n / n * rn), *a_ref = eu_floats(da.n);
            eu_download(&da, alpha);
            EXPECT(tu_reference(&s, &p, rn, h, w, x, NULL, y_ref, NULL, a_ref) == 0, "reference");
            EXPECT(tu_compare("condconv_route alpha", alpha, a_ref, NULL, da.n, 2e-5, 0.0) == 0,
                   "condconv_route %s a plan", with_plan ? "with" : "without");
            free(alpha);
            free(y_ref);
            free(a_ref);
        }
        eu_buffer_free(&da);
        free(x);
    }
    TU_CUDA(cudaFree(ws));
    eu_buffer_free(&dx);
    eu_buffer_free(&dy);
    EXPECT_OK(condconv_layer_destroy(layer));
    tu_free_params(&p);
    condconv_layer_desc_destroy(desc);
}

/* The short-workspace forward (run as a child: it must not return).
 * gemm_batched with biases, NCHW: the workspace ends with the per-sample
 * biases, 4 x 16 floats = 256 bytes (no padding after them), which the
 * aggregation kernel writes last. */
static int short_workspace(void)
{
    condconv_context_t ctx;
    if (condconv_context_create(&ctx, 0) != CONDCONV_STATUS_SUCCESS) return 2;
    tu_layer_spec s = tu_basic_spec(8, 16, 3, 4);
    s.has_bias = 1;
    s.routing = CONDCONV_ROUTING_SIGMOID;
    const int n = 4, h = 6, w = 6;
    tu_params p;
    tu_make_params(&s, &p);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t layer;
    size_t ws_bytes = 0;
    if (condconv_layer_create(ctx, desc, &view, &layer) != CONDCONV_STATUS_SUCCESS ||
        condconv_layer_set_algo(layer, CONDCONV_ALGO_GEMM_BATCHED) != CONDCONV_STATUS_SUCCESS ||
        condconv_get_workspace_size(layer, n, h, w, &ws_bytes) != CONDCONV_STATUS_SUCCESS)
        return 2;
    /* y one element off 16 bytes: cuBLAS then writes y through the staging
     * region, the workspace's last, so the forward writes to its very end. */
    eu_buffer dx = eu_buffer_make((size_t)n * s.cin * h * w, 0), dy = eu_buffer_make((size_t)n * s.cout * 4 * 4, 1);
    float *x = eu_random(dx.n, -1.0f, 1.0f);
    eu_upload(&dx, x);
    void *ws = tu_dev_alloc_bytes(ws_bytes - 4); /* one float short */
    printf("forward with a workspace of %zu bytes stated as %zu\n", ws_bytes - 4, ws_bytes);
    fflush(stdout);
    const condconv_status st = condconv_forward(layer, n, h, w, dx.data, dy.data, NULL, NULL, ws, ws_bytes);
    printf("the forward returned %s and nothing stopped it\n", condconv_status_string(st));
    return 0;
}

/* Runs this program with --short-workspace: it must fail saying `expect`. */
static void expect_short_workspace_caught(const char *expect)
{
    static char output[1 << 16];
    char *args[] = {(char *)"--short-workspace", NULL};
    int status = 0;
    if (eu_run_self(args, output, sizeof output, &status) != 0) {
        EXPECT(0, "could not run this program as a child");
        return;
    }
    /* The emulated cuBLAS may see the short region before it writes (its
     * output range is not wholly device memory); a kernel's write stops at
     * the guard zone. Either way the run must stop. */
    const int caught = (!WIFEXITED(status) || WEXITSTATUS(status) != 0) &&
                       (strstr(output, expect) != NULL || strstr(output, "not (wholly) device memory") != NULL);
    EXPECT(caught, "a forward writing past its workspace allocation: expected \"%s\", got status %d:\n%s", expect,
           status, output);
    printf("  a forward on a workspace 4 bytes short: %s\n", caught ? "stopped" : "NOT CAUGHT");
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--short-workspace") == 0) return short_workspace();
    tu_seed_from_env();
    condconv_context_t ctx;
    cudaStream_t stream;
    TU_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_emu_forward");
    EXPECT_OK(condconv_context_set_stream(ctx, stream));
    const int count = tu_case_count(8);
    printf("depthwise_fused, forced:\n");
    depthwise_layers(ctx, CONDCONV_ALGO_DEPTHWISE_FUSED, CONDCONV_SELECT_MEASURE, count);
    printf("AUTO, measured:\n");
    depthwise_layers(ctx, CONDCONV_ALGO_AUTO, CONDCONV_SELECT_MEASURE, count);
    printf("AUTO, by rule:\n");
    depthwise_layers(ctx, CONDCONV_ALGO_AUTO, CONDCONV_SELECT_HEURISTIC, count);
    printf("every algorithm, forced where it applies, and AUTO:\n");
    every_algorithm(ctx, tu_case_count(8));
    printf("guard zones:\n");
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEF_ASAN 1
#endif
#endif
#ifdef TEF_ASAN
    expect_short_workspace_caught("use-after-poison");
#else
    expect_short_workspace_caught("guard zone");
#endif
    printf("graph capture and routing alone:\n");
    graph_capture(ctx, stream);
    EXPECT_OK(condconv_context_destroy(ctx));
    TU_CUDA(cudaStreamDestroy(stream));
    EXPECT(cc_cpu_live_allocations() == 0, "%zu device allocation(s) leaked", cc_cpu_live_allocations());
    EXPECT(cc_cpu_live_handles() == 0, "%zu stream/event/handle(s) leaked", cc_cpu_live_handles());
    printf("test_emu_forward: %d forwards compared\n", forwards);
    EXPECT(eu_failures == 0, "%d failure(s) of the buffer checks above", eu_failures);
    return tu_finish("test_emu_forward");
}
