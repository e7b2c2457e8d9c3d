/* Fault injection through the emulated CUDA runtime: for every k, the k-th
 * allocation (cudaMalloc, stream, event, cuDNN/cuBLAS handle), copy
 * (cudaMemcpy*, cudaMemset*) or kernel launch of a layer_create -> prepare
 * -> forward -> destroy sequence fails, and:
 *  - the public call that met it returns the status of that failure
 *    (ALLOC_FAILED for an allocation, CUDA_ERROR for a copy or a launch),
 *    and the sequence stops there;
 *  - outputs are untouched, as include/condconv.h promises: the layer handle
 *    of a failed create, y, and routing_out (see below); y may be partly
 *    written by a forward that failed mid-way, as the header allows, where
 *    the plan is measured AUTO's: its choice depends on the machine's load;
 *  - nothing leaks: device allocations and handles return to what the test
 *    itself holds, and LeakSanitizer (ASan build) sees no host leak;
 *  - with k past the last event, everything succeeds and y matches the CPU
 *    reference.
 * For a forced algorithm the status must be exactly the injected one. AUTO
 * may get past a failure, as designed: a candidate whose measurement fails
 * to allocate is skipped (then SUCCESS with a correct y, or NOT_SUPPORTED
 * when no candidate is left, since the cuDNN/cuBLAS ones cannot run here).
 *
 * routing_out is written last (host/plan.c, cc_plan_execute): the routing
 * goes into the workspace and is copied out once every launch has been
 * accepted, so a failed launch leaves it untouched. When that final copy is
 * the event that fails, y is already complete (the header allows y to be
 * written after a CUDA error): the test then requires y to be the correct
 * output, and routing_out untouched. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_util.h"
#include "test_util.h"
#include "gpu_util.h"
#include "routing.h"

typedef struct config {
    const char *name;
    condconv_algo algo;
    condconv_algo_select select;
    condconv_routing routing;
    int routing_out;
    int channels, n, h, w;
} config;

static int runs, final_copy_failures;

static condconv_status expected_status(cc_cpu_event e)
{
    return e == CC_CPU_EVENT_ALLOC ? CONDCONV_STATUS_ALLOC_FAILED : CONDCONV_STATUS_CUDA_ERROR;
}

static int all_nan(const float *p, size_t n)
{
    for (size_t i = 0; i < n; ++i)
        if (p[i] == p[i]) return 0;
    return 1;
}

/* Events of one whole create/prepare/query/forward sequence with nothing failing. */
/* Candidates measuring timed (plan info's candidates: every algorithm
 * and variant, and the routing and aggregation kernels' variants; the
 * "unaligned x/y" winner, which timing noise decides, not counted), -1 if
 * the plan info cannot be had. With no budget, a run that timed fewer than
 * the clean run dropped one: a candidate variant whose launch or copy
 * failed on a healthy device, or one short of memory (plan_auto.c). */
static int timed_variants(condconv_layer_t layer, const config *c)
{
    condconv_plan_info info;
    if (condconv_get_plan_info(layer, c->n, c->h, c->w, &info) != CONDCONV_STATUS_SUCCESS) return -1;
    int count = 0, counted = 1;
    for (const char *p = info.candidates; *p; ++p) {
        if (*p == ';') counted = strncmp(p, "; unaligned", 11) != 0;
        if (counted && strncmp(p, " us", 3) == 0) ++count;
    }
    return count;
}

static long long count_clean_events(const config *c, condconv_layer_desc_t desc, const condconv_params *view,
                                    const eu_buffer *dx, const eu_buffer *dy, const eu_buffer *da, const eu_buffer *dai,
                                    void *ws, size_t ws_bytes, int *variants)
{
    condconv_context_t ctx;
    condconv_layer_t layer;
    size_t need = 0;
    if (condconv_context_create(&ctx, 0) != CONDCONV_STATUS_SUCCESS) return -1;
    EXPECT_OK(condconv_context_set_algo_select(ctx, c->select));
    EXPECT_OK(condconv_context_set_auto_budget(ctx, 0.0f)); /* every candidate, as in the runs below */
    cc_cpu_fail_event(0);                                   /* count from here */
    if (EXPECT_OK(condconv_layer_create(ctx, desc, view, &layer))) {
        EXPECT_OK(condconv_layer_set_algo(layer, c->algo));
        EXPECT_OK(condconv_prepare(layer, c->n, c->h, c->w));
        *variants = timed_variants(layer, c);
        EXPECT_OK(condconv_get_workspace_size(layer, c->n, c->h, c->w, &need));
        EXPECT_OK(condconv_forward(layer, c->n, c->h, c->w, dx->data, dy->data,
                                   c->routing == CONDCONV_ROUTING_EXTERNAL ? dai->data : NULL,
                                   c->routing_out ? da->data : NULL, ws, ws_bytes));
        EXPECT_OK(condconv_layer_destroy(layer));
    }
    const long long events = cc_cpu_events();
    EXPECT_OK(condconv_context_destroy(ctx));
    return events;
}

static void run_config(const config *c)
{
    tu_layer_spec s = tu_basic_spec(c->channels, 2 * c->channels, 3, 4);
    s.groups = c->channels;
    s.pad_mode = CONDCONV_PADDING_SAME;
    s.has_bias = 1;
    s.routing = c->routing;
    s.temperature = 2.0f;
    s.activation = CONDCONV_ACTIVATION_RELU;
    tu_params p;
    tu_make_params(&s, &p);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    const condconv_params view = tu_params_view(&p);
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, c->h, c->w, &ho, &wo, NULL));
    const size_t x_n = (size_t)c->n * s.cin * c->h * c->w, y_n = (size_t)c->n * s.cout * ho * wo;
    const size_t a_n = (size_t)c->n * s.experts;
    float *x = eu_random(x_n, -1.0f, 1.0f), *alpha_in = eu_random(a_n, 0.0f, 1.0f);
    float *y = eu_floats(y_n), *alpha = eu_floats(a_n), *y_ref = eu_floats(y_n), *mag = eu_floats(y_n);
    float *a_ref = eu_floats(a_n);
    EXPECT(tu_reference(&s, &p, c->n, c->h, c->w, x, s.routing == CONDCONV_ROUTING_EXTERNAL ? alpha_in : NULL, y_ref,
                        mag, a_ref) == 0,
           "reference");
    /* The test's own device memory, allocated before any event is counted. */
    eu_buffer dx = eu_buffer_make(x_n, 0), dy = eu_buffer_make(y_n, 0), da = eu_buffer_make(a_n, 0);
    eu_buffer dai = eu_buffer_make(a_n, 0);
    eu_upload(&dx, x);
    eu_upload(&dai, alpha_in);
    const size_t ws_bytes = (size_t)1 << 20; /* more than any plan of this layer needs (checked below) */
    void *ws = tu_dev_alloc_bytes(ws_bytes);
    const size_t base_allocs = cc_cpu_live_allocations(), base_handles = cc_cpu_live_handles();

    long long total = -1;
    /* A measured AUTO has hundreds of events (every candidate timed over 9
     * forwards in two alignment classes), and each sequence replays them
     * all: there, fail each of the first 48 events (create, prepare's first
     * candidates), then every 11th, then each of the last 24 (found from a
     * first clean run), so that every candidate and the forward still see
     * failures at a fraction of the time. */
    long long clean_events = -1;
    int clean_variants = -1;
    /* Measuring times the routing and aggregation kernels' variants even
     * for a forced algorithm: the clean run counts the candidates; only
     * AUTO's long walk is sampled. */
    if (c->select == CONDCONV_SELECT_MEASURE)
        clean_events = count_clean_events(c, desc, &view, &dx, &dy, &da, &dai, ws, ws_bytes, &clean_variants);
    const long long sampled = c->algo == CONDCONV_ALGO_AUTO ? clean_events : -1;
    for (long long k = 1;; ++k) {
        if (sampled > 0 && k > 48 && k < sampled - 24 && k % 11 != 0) continue;
        eu_poison(&dy);
        eu_poison(&da);
        condconv_context_t ctx;
        if (!EXPECT_OK(condconv_context_create(&ctx, 0))) break;
        EXPECT_OK(condconv_context_set_algo_select(ctx, c->select));
        /* No budget: AUTO times every candidate, so that a run that timed
         * fewer variants than the clean run dropped one. */
        EXPECT_OK(condconv_context_set_auto_budget(ctx, 0.0f));
        cc_cpu_fail_event(k);
        condconv_layer_t sentinel = (condconv_layer_t)(void *)&runs, layer = sentinel;
        condconv_status st[4] = {CONDCONV_STATUS_SUCCESS, CONDCONV_STATUS_SUCCESS, CONDCONV_STATUS_SUCCESS,
                                 CONDCONV_STATUS_SUCCESS};
        int failed_at = -1; /* 0 create, 1 prepare, 2 workspace query, 3 forward */
        int variants = -1;  /* candidate variants timed (AUTO measuring) */
        size_t need = 0;
        st[0] = condconv_layer_create(ctx, desc, &view, &layer);
        if (st[0] == CONDCONV_STATUS_SUCCESS) {
            EXPECT_OK(condconv_layer_set_algo(layer, c->algo));
            st[1] = condconv_prepare(layer, c->n, c->h, c->w);
            if (st[1] == CONDCONV_STATUS_SUCCESS && clean_variants >= 0) variants = timed_variants(layer, c);
            if (st[1] == CONDCONV_STATUS_SUCCESS) st[2] = condconv_get_workspace_size(layer, c->n, c->h, c->w, &need);
            if (st[2] == CONDCONV_STATUS_SUCCESS && st[1] == CONDCONV_STATUS_SUCCESS)
                st[3] = condconv_forward(layer, c->n, c->h, c->w, dx.data, dy.data,
                                         s.routing == CONDCONV_ROUTING_EXTERNAL ? dai.data : NULL,
                                         c->routing_out ? da.data : NULL, ws, ws_bytes);
        }
        for (int i = 0; i < 4 && failed_at < 0; ++i)
            if (st[i] != CONDCONV_STATUS_SUCCESS) failed_at = i;
        char what[200] = "";
        const cc_cpu_event event = cc_cpu_failed_event(what, sizeof what);
        const long long events = cc_cpu_events();
        cc_cpu_fail_event(0);
        if (st[0] == CONDCONV_STATUS_SUCCESS) EXPECT_OK(condconv_layer_destroy(layer));
        EXPECT_OK(condconv_context_destroy(ctx));
        ++runs;

        char where[300];
        snprintf(where, sizeof where, "%s: event %lld (%s)", c->name, k, event == CC_CPU_EVENT_NONE ? "none" : what);
        EXPECT(need <= ws_bytes, "%s: the plan needs %zu bytes of workspace, the test has %zu", where, need, ws_bytes);
        eu_download(&dy, y);
        eu_download(&da, alpha);
        if (event == CC_CPU_EVENT_NONE) { /* past the last event: all succeeds, y is right */
            total = events;
            EXPECT(failed_at < 0, "%s: step %d failed with %s (%s)", where, failed_at,
                   failed_at < 0 ? "" : condconv_status_string(st[failed_at]), condconv_last_error());
            if (failed_at < 0) {
                EXPECT(tu_compare("y", y, y_ref, mag, y_n, 1e-6, 1e-5) == 0, "%s: y after all events", where);
                if (c->routing_out)
                    EXPECT(tu_compare("routing_out", alpha, s.routing == CONDCONV_ROUTING_EXTERNAL ? alpha_in : a_ref,
                                      NULL, a_n, 2e-5, 0.0) == 0,
                           "%s: routing_out", where);
            }
        } else if (failed_at < 0) {
            /* Only measuring may get past a failed event: AUTO skipping an
             * algorithm for want of memory, or any measured plan dropping a
             * candidate variant (never a default) whose launch, copy or
             * allocation failed on a healthy device (plan_auto.c), which is
             * then missing from the candidates timed. */
            const int variant_dropped = variants >= 0 && variants < clean_variants;
            EXPECT(variant_dropped || (c->algo == CONDCONV_ALGO_AUTO && event == CC_CPU_EVENT_ALLOC),
                   "%s: nothing reported the failure (variants %d, clean %d)", where, variants, clean_variants);
            EXPECT(tu_compare("y", y, y_ref, mag, y_n, 1e-6, 1e-5) == 0, "%s: y after a skipped candidate", where);
        } else {
            const condconv_status got = st[failed_at], want = expected_status(event);
            const int auto_skip = c->algo == CONDCONV_ALGO_AUTO && event == CC_CPU_EVENT_ALLOC &&
                                  got == CONDCONV_STATUS_NOT_SUPPORTED && failed_at == 1;
            EXPECT(got == want || auto_skip, "%s: step %d returned %s, expected %s (%s)", where, failed_at,
                   condconv_status_string(got), condconv_status_string(want), condconv_last_error());
            if (failed_at == 0) EXPECT(layer == sentinel, "%s: a failed create wrote the layer handle", where);
            const int final_copy = failed_at == 3 && event == CC_CPU_EVENT_COPY;
            if (final_copy) {
                EXPECT(c->routing_out, "%s: a forward without routing_out made a copy", where);
                EXPECT(tu_compare("y", y, y_ref, mag, y_n, 1e-6, 1e-5) == 0, "%s: y before the failed final copy",
                       where);
                ++final_copy_failures;
            } else if (failed_at == 3 && c->algo == CONDCONV_ALGO_AUTO && c->select == CONDCONV_SELECT_MEASURE) {
                /* The header lets a forward that CUDA failed mid-way leave y
                 * partly written. Which algorithm measuring picks depends on
                 * the machine's load (on a busy one, one that writes y and
                 * then adds the bias in place): y is not checked then. */
            } else {
                EXPECT(all_nan(y, y_n), "%s: y written by a failed sequence", where);
            }
            EXPECT(all_nan(alpha, a_n), "%s: routing_out written by a failed sequence", where);
        }
        EXPECT(cc_cpu_live_allocations() == base_allocs, "%s: %zu device allocation(s) leaked", where,
               cc_cpu_live_allocations() - base_allocs);
        EXPECT(cc_cpu_live_handles() == base_handles, "%s: %zu handle(s) leaked", where,
               cc_cpu_live_handles() - base_handles);
        if (event == CC_CPU_EVENT_NONE || tu_failures > 20) break;
    }
    printf("%s: %lld events, each made to fail once\n", c->name, total);
    EXPECT(total > 5, "%s: only %lld events counted", c->name, total);
    TU_CUDA(cudaFree(ws));
    eu_buffer_free(&dx);
    eu_buffer_free(&dy);
    eu_buffer_free(&da);
    eu_buffer_free(&dai);
    free(x);
    free(alpha_in);
    free(y);
    free(alpha);
    free(y_ref);
    free(mag);
    free(a_ref);
    tu_free_params(&p);
    condconv_layer_desc_destroy(desc);
}

int main(void)
{
    tu_seed_from_env();
    static const config configs[] = {
        /* 16 channels of 23x23: the routing is split over blocks (counters, partial logits). */
        {"depthwise_fused, sigmoid, routing split, routing_out", CONDCONV_ALGO_DEPTHWISE_FUSED, CONDCONV_SELECT_MEASURE,
         CONDCONV_ROUTING_SIGMOID, 1, 16, 2, 23, 23},
        {"depthwise_fused, external routing, routing_out", CONDCONV_ALGO_DEPTHWISE_FUSED, CONDCONV_SELECT_MEASURE,
         CONDCONV_ROUTING_EXTERNAL, 1, 6, 2, 5, 6},
        /* Small: every prepare times each candidate over 9 forwards. */
        {"AUTO measured, softmax", CONDCONV_ALGO_AUTO, CONDCONV_SELECT_MEASURE, CONDCONV_ROUTING_SOFTMAX, 0, 4, 1, 4,
         4},
        {"AUTO by rule, sigmoid, routing_out", CONDCONV_ALGO_AUTO, CONDCONV_SELECT_HEURISTIC, CONDCONV_ROUTING_SIGMOID,
         1, 6, 1, 7, 5},
    };
    EXPECT(cc_routing_splits(configs[0].n, configs[0].channels, (long long)configs[0].h * configs[0].w, 132) > 1,
           "the first configuration should split its routing over blocks");
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; ++i) run_config(&configs[i]);
    EXPECT(cc_cpu_live_allocations() == 0, "%zu device allocation(s) leaked", cc_cpu_live_allocations());
    printf("test_emu_faults: %d sequences, %d failing at the final routing_out copy\n", runs, final_copy_failures);
    EXPECT(final_copy_failures >= 3,
           "the final routing_out copy was made to fail %d times, expected one per "
           "configuration with routing_out",
           final_copy_failures);
    EXPECT(eu_failures == 0, "%d failure(s) of the buffer checks above", eu_failures);
    return tu_finish("test_emu_faults");
}
