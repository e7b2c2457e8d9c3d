/* The NVTX ranges that name a forward's phases, as a profiler sees them:
 * NVTX_INJECTION64_PATH points NVTX at tests/nvtx/nvtx_recorder.c, which
 * records every push and pop (name, thread, nesting depth) through the same
 * injection interface nsys and ncu use. The library's host code runs
 * unchanged on the CPU execution layer (tests/cuda_cpu).
 *
 * For every algorithm (AUTO and each forced one) on a dense and a depthwise
 * layer with routing, and a dense layer with external routing:
 *   prepare   every range it opens (AUTO's measured forwards) is closed,
 *             nested on the calling thread, and named condconv.*;
 *   route     condconv_route is one top-level condconv.route range;
 *   forward   one top-level condconv.forward range whose children are the
 *             phases (condconv.route first when the layer routes, then
 *             aggregate / gather / conv / epilogue, condconv.conv at least
 *             once), none nested deeper, all on the calling thread.
 * The CPU layer computes the cuDNN and cuBLAS algorithms too (its emulated
 * libraries, tests/cuda_cpu/src/libs.cpp), so every algorithm runs here; one
 * that refuses a layer at prepare (e.g. depthwise_fused on a dense layer) is
 * listed, and its refusal must still leave no range open. depthwise_fused
 * and fused must be among those checked; an algorithm added later is
 * checked without a change to this test.
 *
 * Needs the injection to load: the test fails (never passes vacuously) when
 * NVTX_INJECTION64_PATH is unset or NVTX never initialised it. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_util.h"
#include "nvtx_recorder.h"
#include "test_util.h"

static cc_nvtx_recorder_take_fn take;
static cc_nvtx_recorder_inits_fn inits;
static cc_nvtx_event events[CC_NVTX_MAX_EVENTS];
/* The recorder numbers threads as they first call NVTX: the first event
 * seen is this (the only calling) thread's. */
static int caller_thread;

static const char *const phases[] = {"condconv.route", "condconv.aggregate", "condconv.gather", "condconv.conv",
                                     "condconv.epilogue"};

static int is_phase(const char *name)
{
    for (size_t i = 0; i < sizeof phases / sizeof phases[0]; ++i)
        if (strcmp(name, phases[i]) == 0) return 1;
    return 0;
}

static int take_events(const char *what)
{
    int overflow = 0;
    const int n = take(events, CC_NVTX_MAX_EVENTS, &overflow);
    EXPECT(!overflow, "%s: more than %d NVTX events", what, CC_NVTX_MAX_EVENTS);
    return n;
}

/* Every push matched by a pop on its own thread, depths as recorded, names
 * condconv.*, nothing left open; all on `thread`. Returns 0 when sound. */
static int check_nesting(int n, int thread, const char *what)
{
    int open = 0, bad = 0;
    if (thread == 0 && n > 0) thread = caller_thread = events[0].thread;
    for (int i = 0; i < n && !bad; ++i) {
        const cc_nvtx_event *e = &events[i];
        if (e->thread != thread) {
            tu_fail(__FILE__, __LINE__, "thread", "%s: event %d (%s) on thread %d, not the caller's %d", what, i,
                    e->push ? e->name : "pop", e->thread, thread);
            bad = 1;
        } else if (e->push) {
            if (strncmp(e->name, "condconv.", 9) != 0 || e->depth != open) {
                tu_fail(__FILE__, __LINE__, "push", "%s: event %d pushes '%s' at depth %d, %d open", what, i, e->name,
                        e->depth, open);
                bad = 1;
            }
            ++open;
        } else {
            if (open == 0 || e->depth != open - 1) {
                tu_fail(__FILE__, __LINE__, "pop", "%s: event %d pops to depth %d with %d open", what, i, e->depth,
                        open);
                bad = 1;
            }
            --open;
        }
    }
    if (!bad && open != 0) {
        tu_fail(__FILE__, __LINE__, "open", "%s: %d range(s) left open", what, open);
        bad = 1;
    }
    return bad;
}

/* The ranges as a tree, one line per push. */
static void print_events(int n)
{
    for (int i = 0; i < n; ++i)
        if (events[i].push) printf("      %*s%s\n", 2 * events[i].depth, "", events[i].name);
}

/* One forward's ranges: condconv.forward > phases. */
static void check_forward(int n, int routed, const char *what)
{
    if (check_nesting(n, caller_thread, what)) return;
    EXPECT(n >= 4 && events[0].push && strcmp(events[0].name, "condconv.forward") == 0 && !events[n - 1].push &&
               events[n - 1].depth == 0,
           "%s: the forward is not one condconv.forward range (%d events, first '%s')", what, n,
           n ? events[0].name : "none");
    int children = 0, routes = 0, convs = 0;
    for (int i = 1; i < n - 1; ++i) {
        const cc_nvtx_event *e = &events[i];
        EXPECT(e->depth <= 1 || !e->push, "%s: '%s' nested %d deep inside condconv.forward", what, e->name, e->depth);
        EXPECT(e->depth >= 1 || e->push, "%s: condconv.forward closed before its last event", what);
        if (!e->push || e->depth != 1) continue;
        EXPECT(is_phase(e->name), "%s: '%s' is not a phase of a forward", what, e->name);
        if (strcmp(e->name, "condconv.route") == 0) {
            ++routes;
            EXPECT(children == 0, "%s: condconv.route is child %d, not the first", what, children + 1);
        }
        convs += strcmp(e->name, "condconv.conv") == 0;
        ++children;
    }
    EXPECT(routes == (routed ? 1 : 0), "%s: %d condconv.route range(s), expected %d", what, routes, routed);
    EXPECT(convs >= 1, "%s: no condconv.conv range", what);
}

typedef struct layer_case {
    const char *name;
    tu_layer_spec spec;
    int n, h, w;
} layer_case;

static int algo_ran[CONDCONV_ALGO_COUNT];

static void run_case(condconv_context_t ctx, const layer_case *lc)
{
    const tu_layer_spec *s = &lc->spec;
    const int routed = s->routing != CONDCONV_ROUTING_EXTERNAL;
    tu_params p;
    tu_make_params(s, &p);
    condconv_layer_desc_t desc = tu_make_desc(s);
    const condconv_params view = tu_params_view(&p);
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, lc->h, lc->w, &ho, &wo, NULL));
    const size_t x_n = (size_t)lc->n * s->cin * lc->h * lc->w, y_n = (size_t)lc->n * s->cout * ho * wo;
    const size_t a_n = (size_t)lc->n * s->experts;
    float *x = malloc(sizeof(float) * x_n), *a = malloc(sizeof(float) * a_n);
    tu_fill_uniform(x, x_n, -1.0f, 1.0f);
    tu_fill_uniform(a, a_n, 0.0f, 1.0f);
    float *dx = tu_dev_alloc_bytes(sizeof(float) * x_n), *dy = tu_dev_alloc_bytes(sizeof(float) * y_n);
    float *da = tu_dev_alloc_bytes(sizeof(float) * a_n);
    TU_CUDA(cudaMemcpy(dx, x, sizeof(float) * x_n, cudaMemcpyHostToDevice));
    TU_CUDA(cudaMemcpy(da, a, sizeof(float) * a_n, cudaMemcpyHostToDevice));
    condconv_layer_t layer = NULL;
    if (!EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer))) goto out;
    (void)take_events("before");
    if (routed) {
        char what[96];
        snprintf(what, sizeof what, "%s: condconv_route", lc->name);
        if (EXPECT_OK(condconv_route(layer, lc->n, lc->h, lc->w, dx, da))) {
            const int n = take_events(what);
            if (!check_nesting(n, caller_thread, what))
                EXPECT(n == 2 && strcmp(events[0].name, "condconv.route") == 0,
                       "%s: %d events, expected one condconv.route range", what, n);
        }
    }
    for (int algo = 0; algo < CONDCONV_ALGO_COUNT; ++algo) {
        char what[128];
        snprintf(what, sizeof what, "%s: %s prepare", lc->name, condconv_algo_name((condconv_algo)algo));
        EXPECT_OK(condconv_layer_set_algo(layer, (condconv_algo)algo));
        const condconv_status prep = condconv_prepare(layer, lc->n, lc->h, lc->w);
        int n = take_events(what);
        (void)check_nesting(n, caller_thread, what);
        if (prep != CONDCONV_STATUS_SUCCESS) {
            printf("  %-34s %-16s does not run here: %s\n", lc->name, condconv_algo_name((condconv_algo)algo),
                   condconv_status_string(prep));
            continue;
        }
        condconv_plan_info info;
        EXPECT_OK(condconv_get_plan_info(layer, lc->n, lc->h, lc->w, &info));
        size_t ws_bytes = 0;
        EXPECT_OK(condconv_get_workspace_size(layer, lc->n, lc->h, lc->w, &ws_bytes));
        void *ws = ws_bytes ? tu_dev_alloc_bytes(ws_bytes) : NULL;
        (void)take_events("between");
        snprintf(what, sizeof what, "%s: %s forward", lc->name, condconv_algo_name((condconv_algo)algo));
        if (EXPECT_OK(condconv_forward(layer, lc->n, lc->h, lc->w, dx, dy, routed ? NULL : da, NULL, ws, ws_bytes))) {
            n = take_events(what);
            const int before = tu_failures;
            check_forward(n, routed, what);
            printf("  %-34s %-16s ran %s, ranges:\n", lc->name, condconv_algo_name((condconv_algo)algo),
                   condconv_algo_name(info.algo));
            print_events(n);
            if (tu_failures == before) algo_ran[info.algo] = 1;
        }
        TU_CUDA(cudaFree(ws));
    }
    EXPECT_OK(condconv_layer_destroy(layer));
out:
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(da));
    free(x);
    free(a);
    condconv_layer_desc_destroy(desc);
    tu_free_params(&p);
}

int main(void)
{
    const char *path = getenv("NVTX_INJECTION64_PATH");
    if (path == NULL || path[0] == '\0') {
        fprintf(stderr, "test_nvtx_ranges: NVTX_INJECTION64_PATH is not set (CTest sets it to the recorder)\n");
        return 1;
    }
    /* The handle NVTX's own dlopen of the same path will get. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "test_nvtx_ranges: cannot load %s: %s\n", path, dlerror());
        return 1;
    }
    *(void **)&take = dlsym(lib, "cc_nvtx_recorder_take");
    *(void **)&inits = dlsym(lib, "cc_nvtx_recorder_inits");
    if (take == NULL || inits == NULL) {
        fprintf(stderr, "test_nvtx_ranges: %s is not the NVTX recorder\n", path);
        dlclose(lib);
        return 1;
    }
    tu_rng_seed(20261202u);
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) {
        dlclose(lib);
        return tu_finish("test_nvtx_ranges");
    }
    layer_case cases[3];
    cases[0].name = "dense 3x3 8->12, sigmoid";
    cases[0].spec = tu_basic_spec(8, 12, 3, 4);
    cases[0].spec.pad_h = cases[0].spec.pad_w = 1;
    cases[0].spec.routing = CONDCONV_ROUTING_SIGMOID;
    cases[0].spec.has_bias = 1;
    cases[0].spec.activation = CONDCONV_ACTIVATION_SILU;
    cases[1].name = "depthwise 5x5 16, softmax";
    cases[1].spec = tu_basic_spec(16, 16, 5, 4);
    cases[1].spec.groups = 16;
    cases[1].spec.pad_mode = CONDCONV_PADDING_SAME;
    cases[1].spec.routing = CONDCONV_ROUTING_SOFTMAX;
    cases[2].name = "dense 1x1 16->8, external";
    cases[2].spec = tu_basic_spec(16, 8, 1, 3);
    for (int i = 0; i < 3; ++i) {
        cases[i].n = 2;
        cases[i].h = 7;
        cases[i].w = 6;
    }
    for (int i = 0; i < 3; ++i) run_case(ctx, &cases[i]);
    EXPECT(inits() >= 1, "NVTX never initialised the injection library (%s)", path);
    EXPECT_OK(condconv_context_destroy(ctx));
    printf("algorithms whose forward ranges were checked:");
    for (int a = 0; a < CONDCONV_ALGO_COUNT; ++a)
        if (algo_ran[a]) printf(" %s", condconv_algo_name((condconv_algo)a));
    printf("\n");
    /* The two made of condconv's own kernels run on the CPU layer today. */
    EXPECT(algo_ran[CONDCONV_ALGO_DEPTHWISE_FUSED], "depthwise_fused's forward was never checked");
    EXPECT(algo_ran[CONDCONV_ALGO_FUSED], "fused's forward was never checked");
    dlclose(lib);
    return tu_finish("test_nvtx_ranges");
}
