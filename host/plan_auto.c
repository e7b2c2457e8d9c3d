/* AUTO: the choice of a plan's algorithm and kernel variants, by rule or by
 * timing the candidates on the user's GPU at prepare (plan_auto.h). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "plan_auto.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggregate.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "routing.h"

/* AUTO ignores candidates whose workspace exceeds this (the mixture's
 * E-times-wider intermediate at large batch); forcing one still works. */
#define CC_AUTO_MAX_WORKSPACE ((size_t)1 << 30)
#define CC_MEASURE_WARMUP     2
#define CC_MEASURE_REPS       7
/* A candidate 4x slower than the best so far on a warm run is not timed further. */
#define CC_MEASURE_GIVE_UP 4.0f

static double now_ms(void)
{
    struct timespec ts;
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

void cc_auto_budget_start(cc_auto_budget *budget, float limit_ms)
{
    budget->start_ms = now_ms();
    budget->limit_ms = limit_ms;
    budget->exhausted = 0;
}

/* 1 while a candidate may still be timed. The GPU-measured default of each
 * algorithm and kernel is timed whatever this says. */
static int budget_left(cc_auto_budget *budget)
{
    if (budget->limit_ms <= 0.0f || now_ms() - budget->start_ms < (double)budget->limit_ms) return 1;
    budget->exhausted = 1;
    return 0;
}

/* Appends to a fixed text buffer, truncating (never overflowing). */
static void append(char *buf, size_t cap, const char *fmt, ...)
{
    const size_t len = strlen(buf);
    if (len + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

void cc_auto_budget_report(const cc_auto_budget *budget, condconv_plan_info *info)
{
    info->budget_exhausted = budget->exhausted;
    if (info->select != CONDCONV_SELECT_MEASURE) return;
    const double used = now_ms() - budget->start_ms;
    if (budget->limit_ms > 0.0f)
        append(info->candidates, sizeof info->candidates, "%sbudget %g ms, %.0f ms used%s",
               info->candidates[0] ? "; " : "", (double)budget->limit_ms, used,
               budget->exhausted ? ", ran out: candidates left untimed" : "");
    else
        append(info->candidates, sizeof info->candidates, "%sno budget, %.0f ms used", info->candidates[0] ? "; " : "",
               used);
}

static int compare_floats(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

condconv_status cc_auto_time_runs(cudaStream_t stream, cc_auto_timed_fn fn, const void *arg, float give_up_us,
                                  float *median_us, const char *func)
{
    cudaEvent_t start = NULL, stop = NULL;
    float times[CC_MEASURE_REPS];
    condconv_status st = cc_cuda_status(cudaEventCreate(&start), "cudaEventCreate", func);
    if (st == CONDCONV_STATUS_SUCCESS) st = cc_cuda_status(cudaEventCreate(&stop), "cudaEventCreate", func);
    int gave_up = 0;
    for (int r = 0; st == CONDCONV_STATUS_SUCCESS && r < CC_MEASURE_WARMUP + CC_MEASURE_REPS; ++r) {
        st = cc_cuda_status(cudaEventRecord(start, stream), "cudaEventRecord", func);
        if (st == CONDCONV_STATUS_SUCCESS) st = fn(arg, func);
        if (st == CONDCONV_STATUS_SUCCESS) st = cc_cuda_status(cudaEventRecord(stop, stream), "cudaEventRecord", func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cudaEventSynchronize(stop), "cudaEventSynchronize", func);
        float ms = 0.0f;
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime", func);
        if (r >= CC_MEASURE_WARMUP) times[r - CC_MEASURE_WARMUP] = ms;
        if (st == CONDCONV_STATUS_SUCCESS && r == 1 && give_up_us > 0.0f && ms * 1000.0f > give_up_us) {
            *median_us = ms * 1000.0f;
            gave_up = 1;
            break;
        }
    }
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    if (st != CONDCONV_STATUS_SUCCESS || gave_up) return st;
    qsort(times, CC_MEASURE_REPS, sizeof times[0], compare_floats);
    *median_us = times[CC_MEASURE_REPS / 2] * 1000.0f;
    return CONDCONV_STATUS_SUCCESS;
}

/* A candidate variant (never a default) that failed to launch or prepare
 * is dropped when the device is still healthy: its launcher refused the
 * shape, or it ran out of resources. A sticky CUDA error stops AUTO. */
static int candidate_failure_skippable(cudaStream_t stream)
{
    (void)cudaGetLastError();
    return cudaStreamSynchronize(stream) == cudaSuccess;
}

/* --- routing and aggregation kernel variants -------------------------------------------------- */

/* "kind: *v1 3.1 us, v0 13.5 us" (timed variants only) into the plan info's candidates. */
static void list_kernel_variants(condconv_plan_info *info, const char *kind, const float *us, int count, int best,
                                 const char *(*name)(int variant))
{
    append(info->candidates, sizeof info->candidates, "%s%s:", info->candidates[0] ? "; " : "", kind);
    for (int v = 0; v < count; ++v)
        if (us[v] >= 0.0f)
            append(info->candidates, sizeof info->candidates, "%s %s%s %.1f us", v ? "," : "", v == best ? "*" : "",
                   name(v), (double)us[v]);
}

typedef struct route_run {
    const struct condconv_layer *layer;
    const cc_plan *plan;
    const void *x;
    float *alpha;
} route_run;

static condconv_status run_route(const void *arg, const char *func)
{
    const route_run *r = arg;
    return cc_plan_route(r->layer, r->plan, r->plan->n, r->plan->h, r->plan->w, r->x, r->alpha, func);
}

/* Routing variants timed on the shape's scratch input; the winner's buffers
 * stay with the plan. */
static condconv_status choose_routing(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                      cc_auto_budget *budget, const char *func)
{
    const int external = layer->weights->info.routing == CONDCONV_ROUTING_EXTERNAL;
    if (layer->forced_routing > 0 && !external) {
        const condconv_status st = cc_plan_routing_create(layer, plan, layer->forced_routing, func);
        if (st == CONDCONV_STATUS_NOT_SUPPORTED)
            return cc_fail(st,
                           "%s: routing variant %d (%s), forced by condconv_layer_set_kernel_variants, does not "
                           "run this shape",
                           func, layer->forced_routing, cc_routing_variant_name(layer->forced_routing));
        return st;
    }
    const int measure = layer->ctx->select == CONDCONV_SELECT_MEASURE && !external && CC_ROUTING_VARIANTS > 1 &&
                        layer->forced_routing < 0;
    CC_TRY(cc_plan_routing_create(layer, plan, 0, func));
    if (!measure) return CONDCONV_STATUS_SUCCESS;
    condconv_plan_info *info = &plan->info;
    void *x, *alpha;
    const size_t elem = cc_dtype_size(layer->weights->info.dtype);
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, elem * ((size_t)plan->geom.x_elems + 1), &x, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_ALPHA, sizeof(float) * (size_t)plan->geom.alpha_elems, &alpha, func));
    float us[CC_ROUTING_VARIANTS];
    for (int v = 0; v < CC_ROUTING_VARIANTS; ++v) us[v] = -1.0f; /* not timed */
    route_run run = {layer, plan, x, (float *)alpha};
    CC_TRY(cc_auto_time_runs(layer->ctx->stream, run_route, &run, 0.0f, &us[0], func));
    int best = 0;
    for (int v = 1; v < CC_ROUTING_VARIANTS; ++v) {
        if (!budget_left(budget)) break;
        cc_plan trial = *plan;
        condconv_status st = cc_plan_routing_create(layer, &trial, v, func);
        if (st == CONDCONV_STATUS_NOT_SUPPORTED) continue;
        if (st == CONDCONV_STATUS_SUCCESS) {
            run.plan = &trial;
            st = cc_auto_time_runs(layer->ctx->stream, run_route, &run, CC_MEASURE_GIVE_UP * us[best], &us[v], func);
            run.plan = plan;
        }
        if (st != CONDCONV_STATUS_SUCCESS) {
            cc_plan_routing_destroy(&trial);
            us[v] = -1.0f;
            if (!candidate_failure_skippable(layer->ctx->stream)) return st;
            continue;
        }
        if (us[v] < us[best]) {
            cc_plan_routing_destroy(plan);
            plan->routing_variant = trial.routing_variant;
            plan->routing_splits = trial.routing_splits;
            plan->routing_block = trial.routing_block;
            plan->routing_partial = trial.routing_partial;
            plan->routing_counters = trial.routing_counters;
            best = v;
        } else {
            cc_plan_routing_destroy(&trial);
        }
    }
    list_kernel_variants(info, "routing", us, CC_ROUTING_VARIANTS, best, cc_routing_variant_name);
    return CONDCONV_STATUS_SUCCESS;
}

typedef struct aggregate_run {
    const struct condconv_layer *layer;
    int variant, n;
    const float *alpha;
    void *filters;
    float *biases;
} aggregate_run;

static condconv_status run_aggregate(const void *arg, const char *func)
{
    const aggregate_run *r = arg;
    const cc_weights *w = r->layer->weights;
    return cc_cuda_status(
        cc_launch_aggregate_variant(r->variant, (int)w->info.dtype, w->dev_experts, w->dev_expert_bias, r->alpha,
                                    r->filters, w->dev_expert_bias ? r->biases : NULL, (long long)w->sizes.filter_elems,
                                    w->info.out_channels, r->n, w->info.num_experts, r->layer->ctx->stream),
        "cc_launch_aggregate_variant", func);
}

/* Aggregation variants timed alone, on the shape's N, when an applicable
 * algorithm aggregates (the choice is the same kernel for all of them). */
static condconv_status choose_aggregation(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                          cc_auto_budget *budget, const char *func)
{
    plan->aggregate_variant = layer->forced_aggregate > 0 ? layer->forced_aggregate : 0;
    if (layer->forced_aggregate >= 0) return CONDCONV_STATUS_SUCCESS;
    int aggregates = 0;
    for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a)
        if (plan->info.applicable[a] && cc_algo_lookup((condconv_algo)a)->aggregates &&
            (layer->requested == CONDCONV_ALGO_AUTO || layer->requested == (condconv_algo)a))
            aggregates = 1;
    if (layer->ctx->select != CONDCONV_SELECT_MEASURE || !aggregates || CC_AGGREGATE_VARIANTS < 2)
        return CONDCONV_STATUS_SUCCESS;
    const cc_weights *w = layer->weights;
    const size_t n = (size_t)plan->n;
    const size_t filter_bytes = cc_align256(cc_dtype_size(w->info.dtype) * n * (size_t)w->sizes.filter_elems);
    const size_t bias_bytes = sizeof(float) * n * (size_t)w->info.out_channels;
    if (filter_bytes + bias_bytes > CC_AUTO_MAX_WORKSPACE) return CONDCONV_STATUS_SUCCESS;
    void *buf, *alpha;
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_W, filter_bytes + bias_bytes, &buf, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_ALPHA, sizeof(float) * (size_t)plan->geom.alpha_elems, &alpha, func));
    aggregate_run run = {layer, 0, plan->n, alpha, buf, (float *)(void *)((unsigned char *)buf + filter_bytes)};
    float us[CC_AGGREGATE_VARIANTS];
    for (int v = 0; v < CC_AGGREGATE_VARIANTS; ++v) us[v] = -1.0f; /* not timed */
    CC_TRY(cc_auto_time_runs(layer->ctx->stream, run_aggregate, &run, 0.0f, &us[0], func));
    int best = 0;
    for (int v = 1; v < CC_AGGREGATE_VARIANTS; ++v) {
        if (!budget_left(budget)) break;
        run.variant = v;
        const condconv_status st =
            cc_auto_time_runs(layer->ctx->stream, run_aggregate, &run, CC_MEASURE_GIVE_UP * us[best], &us[v], func);
        if (st != CONDCONV_STATUS_SUCCESS) {
            us[v] = -1.0f;
            if (!candidate_failure_skippable(layer->ctx->stream)) return st;
            continue;
        }
        if (us[v] < us[best]) best = v;
    }
    plan->aggregate_variant = best;
    list_kernel_variants(&plan->info, "aggregate", us, CC_AGGREGATE_VARIANTS, best, cc_aggregate_variant_name);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_auto_choose_kernels(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                       cc_auto_budget *budget, const char *func)
{
    CC_TRY(choose_routing(layer, plan, scratch, budget, func));
    condconv_status st = choose_aggregation(layer, plan, scratch, budget, func);
    plan->info.routing_variant = plan->routing_variant;
    plan->info.aggregate_variant = plan->aggregate_variant;
    return st;
}

/* --- the algorithm ------------------------------------------------------------------------------ */

typedef struct forward_run {
    const struct condconv_layer *layer;
    const cc_plan *plan;
    const void *x;
    void *y, *alpha, *ws;
} forward_run;

static condconv_status run_forward(const void *arg, const char *func)
{
    const forward_run *r = arg;
    return cc_plan_execute(r->layer, r->plan, r->x, r->y, r->alpha, NULL, r->ws, func);
}

/* The plan's forward timed in one alignment class: x and y 256-byte
 * aligned, or one element past it (align_class 1): what a slice of a
 * tensor gives, and what the forward then runs (staging for the library
 * calls, scalar paths in our kernels). */
static condconv_status time_plan(const struct condconv_layer *layer, const cc_plan *plan, int align_class,
                                 cc_scratch *scratch, float give_up_us, float *median_us, const char *func)
{
    void *x, *y, *alpha, *ws;
    const size_t elem = cc_dtype_size(layer->weights->info.dtype);
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, elem * ((size_t)plan->geom.x_elems + 1), &x, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, elem * ((size_t)plan->geom.y_elems + 1), &y, func));
    if (align_class) {
        x = (unsigned char *)x + elem;
        y = (unsigned char *)y + elem;
    }
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_ALPHA, sizeof(float) * (size_t)plan->geom.alpha_elems, &alpha, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, plan->workspace_bytes, &ws, func));
    const forward_run run = {layer, plan, x, y, alpha, ws};
    return cc_auto_time_runs(layer->ctx->stream, run_forward, &run, give_up_us, median_us, func);
}

/* The rule used without measuring: the fused depthwise kernel where it
 * applies (no per-sample filters in memory); one batched GEMM for 1x1
 * layers; for larger kernels at batch 1, cuDNN (the "grouped" conv is then
 * an ordinary one), and at larger batches im2col + batched GEMM, which
 * avoids cuDNN's slow grouped kernels, unless its im2col buffer would exceed
 * CC_HEURISTIC_MAX_IM2COL. NHWC layers prefer the GEMM at batch 1 too: it
 * is the natural channels-last form, where cuDNN with the batch as groups
 * must transpose the input and the output. Writes the ranking into order[] (applicable
 * algorithms only, best first) and returns how many; why[] the reasons. */
#define CC_HEURISTIC_MAX_IM2COL ((uint64_t)256 << 20)

static int heuristic_ranking(const struct condconv_layer *layer, const cc_geometry *geom,
                             const int applicable[CONDCONV_ALGO_COUNT], condconv_algo order[CONDCONV_ALGO_COUNT],
                             const char *why[CONDCONV_ALGO_COUNT])
{
    const condconv_layer_info *info = &layer->weights->info;
    const int nhwc = info->layout == CONDCONV_LAYOUT_NHWC;
    const uint64_t im2col_bytes = cc_dtype_size(info->dtype) * geom->x_elems / ((uint64_t)geom->h * (uint64_t)geom->w) *
                                  (uint64_t)info->kernel_h * (uint64_t)info->kernel_w * (uint64_t)geom->out_h *
                                  (uint64_t)geom->out_w;
    const int pointwise = info->kernel_h == 1 && info->kernel_w == 1;
    condconv_algo ranked[CONDCONV_ALGO_COUNT];
    const char *reasons[CONDCONV_ALGO_COUNT];
    int count = 0;
    ranked[count] = CONDCONV_ALGO_DEPTHWISE_FUSED;
    reasons[count++] = "heuristic: depthwise layer, filters mixed inside the kernel";
    /* The fused kernel is ranked below the batched GEMM until a GPU run has
     * measured it: the rule keeps to what was measured (bench/results). */
    if (pointwise || ((geom->n > 1 || nhwc) && im2col_bytes <= CC_HEURISTIC_MAX_IM2COL)) {
        ranked[count] = CONDCONV_ALGO_GEMM_BATCHED;
        reasons[count++] = pointwise ? "heuristic: 1x1 layer, strided-batched GEMM"
                           : nhwc    ? "heuristic: NHWC layer, im2col + strided-batched GEMM"
                                     : "heuristic: batch > 1, im2col + strided-batched GEMM";
        ranked[count] = CONDCONV_ALGO_CUDNN_GROUPED;
        reasons[count++] = "heuristic: fallback to cuDNN with the batch as groups";
    } else {
        ranked[count] = CONDCONV_ALGO_CUDNN_GROUPED;
        reasons[count++] = "heuristic: cuDNN with the batch as groups";
        ranked[count] = CONDCONV_ALGO_GEMM_BATCHED;
        reasons[count++] = "heuristic: fallback to im2col + strided-batched GEMM";
    }
    ranked[count] = CONDCONV_ALGO_FUSED;
    reasons[count++] = "heuristic: fallback to the fused kernel (per-sample kernels mixed inside the convolution)";
    ranked[count] = CONDCONV_ALGO_MIXTURE;
    reasons[count++] = "heuristic: fallback to the mixture of E static convolutions";
    int kept = 0;
    for (int i = 0; i < count; ++i)
        if (applicable[ranked[i]]) {
            order[kept] = ranked[i];
            why[kept++] = reasons[i];
        }
    return kept;
}

/* Failures of one AUTO candidate that leave the others able to run: out of
 * memory, or a cuDNN/cuBLAS call that refused (cuDNN's heuristics sometimes
 * offer an engine that then fails). A CUDA error may be sticky: it stops. */
static int skippable(condconv_status st)
{
    return st == CONDCONV_STATUS_ALLOC_FAILED || st == CONDCONV_STATUS_CUDNN_ERROR ||
           st == CONDCONV_STATUS_CUBLAS_ERROR;
}

/* A candidate's name in plan info: "algo" or "algo[variant]". */
static void candidate_name(const cc_algo_state *state, char *out, size_t cap)
{
    if (state->variant_name[0])
        snprintf(out, cap, "%s[%s]", condconv_algo_name(state->algo), state->variant_name);
    else
        snprintf(out, cap, "%s", condconv_algo_name(state->algo));
}

typedef struct candidate {
    cc_algo_state state;
    char name[64];          /* kept: a loser's state is cleared when destroyed */
    float us, unaligned_us; /* < 0: not timed */
} candidate;

/* Prepares every applicable algorithm, and each of its variants while the
 * budget lasts (variant 0, the GPU-measured default, always), and times
 * each in both alignment classes (plan.h): for x and y 16-byte aligned,
 * and one element off, where the library algorithms stage them and our
 * kernels take scalar paths. The fastest of each class is kept; plan info
 * lists every candidate, the winner and the runner-up. */
condconv_status cc_auto_choose_by_measuring(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                            cc_auto_budget *budget, const char *func)
{
    enum { MAX_CANDIDATES = CONDCONV_ALGO_COUNT * CC_MAX_ALGO_VARIANTS };
    candidate c[MAX_CANDIDATES];
    memset(c, 0, sizeof c);
    int count = 0;
    condconv_plan_info *info = &plan->info;
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    int best = -1, best_unaligned = -1;
    /* cuDNN with the batch as groups last: it can be 30x slower than the
     * others (cuDNN has no fast kernel for thousands of groups), and once a
     * faster candidate is known, two forwards of it are enough to rule it out. */
    static const condconv_algo order[] = {CONDCONV_ALGO_DEPTHWISE_FUSED, CONDCONV_ALGO_FUSED,
                                          CONDCONV_ALGO_GEMM_BATCHED, CONDCONV_ALGO_MIXTURE,
                                          CONDCONV_ALGO_CUDNN_GROUPED};
    _Static_assert(sizeof order / sizeof order[0] == CONDCONV_ALGO_COUNT - 1, "every algorithm is measured");
    for (size_t k = 0; k < sizeof order / sizeof order[0] && st == CONDCONV_STATUS_SUCCESS; ++k) {
        const int a = (int)order[k];
        if (!info->applicable[a]) continue;
        const cc_algo_ops *ops = cc_algo_lookup((condconv_algo)a);
        int variants = ops->variants ? ops->variants(layer, &plan->geom, plan->math) : 1;
        if (variants < 1) variants = 1;
        if (variants > CC_MAX_ALGO_VARIANTS) variants = CC_MAX_ALGO_VARIANTS;
        /* Candidates before the default: the default is timed whatever the
         * budget says, and a slow default (cuDNN's legacy grouped kernels)
         * must not spend the budget its own candidate needs. The algorithm
         * stays applicable if any of its variants ran. */
        int refused = 0, timed = 0;
        for (int v = variants - 1; v >= 0 && st == CONDCONV_STATUS_SUCCESS; --v) {
            if (v > 0 && !budget_left(budget)) continue;
            candidate *cand = &c[count];
            cand->state.variant = v;
            cand->state.aggregate_variant = plan->aggregate_variant;
            cand->us = cand->unaligned_us = -1.0f;
            st = ops->prepare(layer, &plan->geom, plan->math, CONDCONV_SELECT_MEASURE, scratch, &cand->state, func);
            cand->state.aggregate_variant = plan->aggregate_variant;
            if (st == CONDCONV_STATUS_NOT_SUPPORTED || skippable(st)) { /* e.g. cuDNN has no kernel for it */
                cc_algo_state_destroy(&cand->state);
                refused += v == 0;
                st = CONDCONV_STATUS_SUCCESS;
                continue;
            }
            if (st != CONDCONV_STATUS_SUCCESS) break;
            if (plan->alpha_bytes + cand->state.workspace_bytes > CC_AUTO_MAX_WORKSPACE) {
                cc_algo_state_destroy(&cand->state);
                continue;
            }
            cc_plan trial = *plan;
            trial.state = cand->state;
            trial.unaligned_same = 1;
            trial.workspace_bytes = plan->alpha_bytes + cand->state.workspace_bytes;
            const float give_up_us = best < 0 ? 0.0f : CC_MEASURE_GIVE_UP * c[best].us;
            st = time_plan(layer, &trial, 0, scratch, give_up_us, &cand->us, func);
            if (st == CONDCONV_STATUS_SUCCESS) {
                const float give_up_unaligned_us =
                    best_unaligned < 0 ? 0.0f : CC_MEASURE_GIVE_UP * c[best_unaligned].unaligned_us;
                st = time_plan(layer, &trial, 1, scratch, give_up_unaligned_us, &cand->unaligned_us, func);
            }
            if (skippable(st) ||
                (st != CONDCONV_STATUS_SUCCESS && v > 0 && candidate_failure_skippable(layer->ctx->stream))) {
                /* Its scratch did not fit, it failed to run, or a candidate
                 * variant's launch was refused: not a candidate. */
                cc_algo_state_destroy(&cand->state);
                refused += v == 0;
                st = CONDCONV_STATUS_SUCCESS;
                continue;
            }
            if (st != CONDCONV_STATUS_SUCCESS) {
                cc_algo_state_destroy(&cand->state);
                break;
            }
            char name[sizeof cand->name];
            candidate_name(&cand->state, name, sizeof name);
            memcpy(cand->name, name, sizeof name);
            if (info->measured_us[a] < 0.0f || cand->us < info->measured_us[a]) info->measured_us[a] = cand->us;
            if (info->measured_unaligned_us[a] < 0.0f || cand->unaligned_us < info->measured_unaligned_us[a])
                info->measured_unaligned_us[a] = cand->unaligned_us;
            if (best < 0 || cand->us < c[best].us) best = count;
            if (best_unaligned < 0 || cand->unaligned_us < c[best_unaligned].unaligned_us) best_unaligned = count;
            ++count;
            ++timed;
        }
        if (refused && !timed) info->applicable[a] = 0;
    }
    if (st == CONDCONV_STATUS_SUCCESS && best < 0)
        st = cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: no algorithm applies to this layer and shape", func);
    for (int i = 0; i < count; ++i)
        if ((i != best && i != best_unaligned) || st != CONDCONV_STATUS_SUCCESS) cc_algo_state_destroy(&c[i].state);
    if (st != CONDCONV_STATUS_SUCCESS) return st;
    plan->state = c[best].state;
    plan->unaligned_same = best_unaligned == best;
    if (!plan->unaligned_same) plan->state_unaligned = c[best_unaligned].state;

    /* The per-algorithm summary (reason), then every candidate (candidates),
     * winner and runner-up of the aligned class. */
    int len = snprintf(info->reason, sizeof info->reason, "measured:");
    for (int a = 1; a < CONDCONV_ALGO_COUNT && len > 0 && (size_t)len < sizeof info->reason; ++a)
        if (info->measured_us[a] >= 0.0f)
            len += snprintf(info->reason + len, sizeof info->reason - (size_t)len, " %s%s %.1f us",
                            a == (int)plan->state.algo ? "*" : "", condconv_algo_name((condconv_algo)a),
                            (double)info->measured_us[a]);
    int runner_up = -1;
    for (int i = 0; i < count; ++i)
        if (i != best && (runner_up < 0 || c[i].us < c[runner_up].us)) runner_up = i;
    snprintf(info->winner, sizeof info->winner, "%s", c[best].name);
    info->winner_us = c[best].us;
    if (runner_up >= 0) {
        snprintf(info->runner_up, sizeof info->runner_up, "%s", c[runner_up].name);
        info->runner_up_us = c[runner_up].us;
    }
    char kernels[sizeof info->candidates];
    snprintf(kernels, sizeof kernels, "%s", info->candidates);
    info->candidates[0] = '\0';
    for (int i = 0; i < count; ++i)
        append(info->candidates, sizeof info->candidates, "%s%s%s %.1f us", i ? ", " : "", i == best ? "*" : "",
               c[i].name, (double)c[i].us);
    if (best_unaligned != best)
        append(info->candidates, sizeof info->candidates, "; unaligned x/y: *%s %.1f us", c[best_unaligned].name,
               (double)c[best_unaligned].unaligned_us);
    if (kernels[0]) append(info->candidates, sizeof info->candidates, "; %s", kernels);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_auto_prepare_forced(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                       const char *func)
{
    const cc_algo_ops *ops = cc_algo_lookup(layer->requested);
    condconv_plan_info *info = &plan->info;
    CC_TRY(ops->check(layer, &plan->geom, func)); /* again, for its message */
    const char *wanted = layer->forced_variant;
    if (wanted[0] == '\0') {
        plan->state.aggregate_variant = plan->aggregate_variant;
        CC_TRY(ops->prepare(layer, &plan->geom, plan->math, layer->ctx->select, scratch, &plan->state, func));
        snprintf(info->reason, sizeof info->reason, "forced by condconv_layer_set_algo (its default variant)");
        return CONDCONV_STATUS_SUCCESS;
    }
    /* A variant is known by name only once prepared: each is prepared in
     * turn until one answers to the name. */
    int variants = ops->variants ? ops->variants(layer, &plan->geom, plan->math) : 1;
    if (variants > CC_MAX_ALGO_VARIANTS) variants = CC_MAX_ALGO_VARIANTS;
    char have[160] = "";
    for (int v = 1; v < variants; ++v) {
        cc_algo_state state;
        memset(&state, 0, sizeof state);
        state.variant = v;
        state.aggregate_variant = plan->aggregate_variant;
        const condconv_status st =
            ops->prepare(layer, &plan->geom, plan->math, CONDCONV_SELECT_MEASURE, scratch, &state, func);
        if (st == CONDCONV_STATUS_SUCCESS && strcmp(state.variant_name, wanted) == 0) {
            plan->state = state;
            snprintf(info->reason, sizeof info->reason, "forced by condconv_layer_set_candidate: %s[%s]",
                     condconv_algo_name(layer->requested), wanted);
            return CONDCONV_STATUS_SUCCESS;
        }
        if (st == CONDCONV_STATUS_SUCCESS)
            append(have, sizeof have, "%s\"%s\"", have[0] ? ", " : "", state.variant_name);
        cc_algo_state_destroy(&state);
        if (st != CONDCONV_STATUS_SUCCESS && st != CONDCONV_STATUS_NOT_SUPPORTED) return st;
    }
    return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: %s has no variant \"%s\" for this shape (it has: %s)", func,
                   condconv_algo_name(layer->requested), wanted, have[0] ? have : "only its default");
}

/* The rule's choice; if it cannot be prepared after all (cuDNN has no
 * engine for the shape, memory is short), the next applicable one in the
 * rule's ranking. Only algorithms whose check passed are ever prepared.
 * The rule keeps every kernel's GPU-measured default variant: candidates
 * run only where AUTO has timed them on the user's GPU. */
condconv_status cc_auto_choose_by_rule(const struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                       const char *func)
{
    condconv_algo order[CONDCONV_ALGO_COUNT];
    const char *why[CONDCONV_ALGO_COUNT];
    const int count = heuristic_ranking(layer, &plan->geom, plan->info.applicable, order, why);
    condconv_status st =
        cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: no algorithm applies to this layer and shape", func);
    for (int i = 0; i < count; ++i) {
        st = cc_algo_lookup(order[i])->prepare(layer, &plan->geom, plan->math, CONDCONV_SELECT_HEURISTIC, scratch,
                                               &plan->state, func);
        if (st == CONDCONV_STATUS_SUCCESS) {
            /* Where the rule comes from: the only GPU runs so far (bench/results,
             * two on an H200) measured strict f32 NCHW; every other format is
             * ranked by analogy, which the reason says. */
            const condconv_layer_info *info = &layer->weights->info;
            const int measured = info->dtype == CONDCONV_DTYPE_F32 && info->layout == CONDCONV_LAYOUT_NCHW &&
                                 plan->math == CONDCONV_MATH_F32;
            snprintf(plan->info.reason, sizeof plan->info.reason, "%.100s%s", why[i],
                     measured ? " (from H200 f32 NCHW runs)" : " (a guess: no GPU has run this format yet)");
            return st;
        }
        cc_algo_state_destroy(&plan->state);
        if (st != CONDCONV_STATUS_NOT_SUPPORTED && !skippable(st)) return st;
    }
    return st;
}
