/* Plan creation (algorithm applicability, choice by measurement or rule,
 * workspace layout), the per-layer plan cache, and plan execution. */
#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "phase_timer.h"
#include "scratch.h"

#include "routing.h"

/* AUTO ignores candidates whose workspace exceeds this (the mixture's
 * E-times-wider intermediate at large batch); forcing one still works. */
#define CC_AUTO_MAX_WORKSPACE ((size_t)1 << 30)
#define CC_MEASURE_WARMUP     2
#define CC_MEASURE_REPS       7
/* A candidate 4x slower than the best so far on a warm forward is not timed further. */
#define CC_MEASURE_GIVE_UP 4.0f

cc_plan *cc_plan_lookup(const struct condconv_layer *layer, int n, int h, int w)
{
    for (int i = 0; i < layer->plan_count; ++i) {
        cc_plan *p = layer->plans[i];
        if (p->n == n && p->h == h && p->w == w && p->math == layer->ctx->math && p->requested == layer->requested &&
            p->info.select == layer->ctx->select)
            return p;
    }
    return NULL;
}

static void plan_destroy(cc_plan *plan)
{
    if (plan == NULL) return;
    cc_algo_state_destroy(&plan->state);
    if (!plan->unaligned_same) cc_algo_state_destroy(&plan->state_unaligned);
    if (plan->routing_block != NULL) (void)cudaFree(plan->routing_block);
    free(plan);
}

void cc_layer_release_plans(struct condconv_layer *layer)
{
    for (int i = 0; i < layer->plan_count; ++i) plan_destroy(layer->plans[i]);
    free(layer->plans);
    layer->plans = NULL;
    layer->plan_count = layer->plan_capacity = 0;
}

condconv_status cc_plan_route(const struct condconv_layer *layer, const cc_plan *plan, int n, int h, int w,
                              const void *x, float *alpha, const char *func)
{
    const cc_weights *wt = layer->weights;
    const condconv_layer_info *info = &wt->info;
    const cudaStream_t stream = layer->ctx->stream;
    const int split = plan != NULL && plan->routing_block != NULL;
    CC_PHASE_BEGIN(CC_PHASE_ROUTE, "condconv.route", stream);
    const cudaError_t err = cc_launch_routing(
        (int)info->dtype, (int)info->layout, x, wt->dev_routing_weight_t, wt->dev_routing_bias, alpha, n,
        info->in_channels, (long long)h * w, info->num_experts, info->routing == CONDCONV_ROUTING_SOFTMAX,
        1.0f / info->temperature, split ? plan->routing_splits : 1, split ? plan->routing_partial : NULL,
        split ? plan->routing_counters : NULL, stream);
    CC_PHASE_END(CC_PHASE_ROUTE, stream);
    return cc_cuda_status(err, "cc_launch_routing", func);
}

/* The routing split for this shape and, when it splits, its buffers: one
 * allocation, the counters zeroed once (the kernel leaves them zero). */
static condconv_status routing_buffers_create(const struct condconv_layer *layer, cc_plan *plan, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    plan->routing_splits = 1;
    if (info->routing == CONDCONV_ROUTING_EXTERNAL) return CONDCONV_STATUS_SUCCESS;
    const int splits =
        cc_routing_splits(plan->n, info->in_channels, (long long)plan->h * plan->w, layer->ctx->sm_count);
    if (splits <= 1) return CONDCONV_STATUS_SUCCESS;
    const size_t partial_bytes =
        cc_align256(sizeof(float) * cc_routing_partial_elems(plan->n, info->num_experts, splits));
    const size_t counter_bytes = sizeof(unsigned int) * (size_t)plan->n;
    void *block = NULL;
    CC_CUDA_TRY(cudaMalloc(&block, partial_bytes + counter_bytes), func);
    unsigned int *counters = (unsigned int *)(void *)((unsigned char *)block + partial_bytes);
    condconv_status st = cc_cuda_status(cudaMemsetAsync(counters, 0, counter_bytes, layer->ctx->stream),
                                        "cudaMemsetAsync(routing counters)", func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = cc_cuda_status(cudaStreamSynchronize(layer->ctx->stream), "cudaStreamSynchronize", func);
    if (st != CONDCONV_STATUS_SUCCESS) {
        (void)cudaFree(block);
        return st;
    }
    plan->routing_splits = splits;
    plan->routing_block = block;
    plan->routing_partial = (float *)block;
    plan->routing_counters = counters;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_plan_execute(const struct condconv_layer *layer, const cc_plan *plan, const void *x, void *y,
                                const float *routing_in, float *routing_out, void *workspace, const char *func)
{
    const cc_weights *w = layer->weights;
    const condconv_layer_info *info = &w->info;
    const cudaStream_t stream = layer->ctx->stream;
    const float *alpha = routing_in;
    CC_PHASE_BEGIN(CC_PHASE_FORWARD, "condconv.forward", stream);
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    if (info->routing != CONDCONV_ROUTING_EXTERNAL) {
        /* Into the workspace's alpha slot, never straight into routing_out:
         * a launch failing later must leave routing_out untouched. */
        float *dst = (float *)workspace;
        st = cc_plan_route(layer, plan, plan->n, plan->h, plan->w, x, dst, func);
        alpha = dst;
    }
    if (st == CONDCONV_STATUS_SUCCESS) {
        const cc_forward_buffers buffers = {x, y, alpha, (unsigned char *)workspace + plan->alpha_bytes};
        const cc_algo_state *state =
            cc_align_class(x, y) && !plan->unaligned_same ? &plan->state_unaligned : &plan->state;
        st = cc_algo_lookup(state->algo)->run(layer, &plan->geom, state, &buffers, func);
    }
    if (st == CONDCONV_STATUS_SUCCESS && routing_out != NULL && routing_out != alpha)
        st = cc_cuda_status(cudaMemcpyAsync(routing_out, alpha, sizeof(float) * (size_t)plan->geom.alpha_elems,
                                            cudaMemcpyDeviceToDevice, stream),
                            "cudaMemcpyAsync(routing_out)", func);
    CC_PHASE_END(CC_PHASE_FORWARD, stream);
    return st;
}

static int compare_floats(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median over CC_MEASURE_REPS event-timed forwards, after a warm-up. A
 * candidate whose second warm-up forward (the first one pays for lazy module
 * loading) already takes longer than give_up_us (> 0) is not timed further:
 * that time is its measurement. */
static condconv_status time_plan(const struct condconv_layer *layer, const cc_plan *plan, int align_class,
                                 cc_scratch *scratch, float give_up_us, float *median_us, const char *func)
{
    void *x, *y, *alpha, *ws;
    const size_t elem = cc_dtype_size(layer->weights->info.dtype);
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, elem * ((size_t)plan->geom.x_elems + 1), &x, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, elem * ((size_t)plan->geom.y_elems + 1), &y, func));
    /* The unaligned class on x and y one element past 256-byte-aligned
     * scratch: what a slice of a tensor gives, and what the forward then
     * runs (staging for the library calls, scalar paths in our kernels). */
    if (align_class) {
        x = (unsigned char *)x + elem;
        y = (unsigned char *)y + elem;
    }
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_ALPHA, sizeof(float) * (size_t)plan->geom.alpha_elems, &alpha, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, plan->workspace_bytes, &ws, func));
    cudaEvent_t start = NULL, stop = NULL;
    float times[CC_MEASURE_REPS];
    condconv_status st = cc_cuda_status(cudaEventCreate(&start), "cudaEventCreate", func);
    if (st == CONDCONV_STATUS_SUCCESS) st = cc_cuda_status(cudaEventCreate(&stop), "cudaEventCreate", func);
    for (int r = 0; st == CONDCONV_STATUS_SUCCESS && r < CC_MEASURE_WARMUP + CC_MEASURE_REPS; ++r) {
        st = cc_cuda_status(cudaEventRecord(start, layer->ctx->stream), "cudaEventRecord", func);
        if (st == CONDCONV_STATUS_SUCCESS) st = cc_plan_execute(layer, plan, x, y, alpha, NULL, ws, func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cudaEventRecord(stop, layer->ctx->stream), "cudaEventRecord", func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cudaEventSynchronize(stop), "cudaEventSynchronize", func);
        float ms = 0.0f;
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime", func);
        if (r >= CC_MEASURE_WARMUP) times[r - CC_MEASURE_WARMUP] = ms;
        if (st == CONDCONV_STATUS_SUCCESS && r == 1 && give_up_us > 0.0f && ms * 1000.0f > give_up_us) {
            if (start) (void)cudaEventDestroy(start);
            if (stop) (void)cudaEventDestroy(stop);
            *median_us = ms * 1000.0f;
            return CONDCONV_STATUS_SUCCESS;
        }
    }
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    if (st != CONDCONV_STATUS_SUCCESS) return st;
    qsort(times, CC_MEASURE_REPS, sizeof times[0], compare_floats);
    *median_us = times[CC_MEASURE_REPS / 2] * 1000.0f;
    return CONDCONV_STATUS_SUCCESS;
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

static condconv_status check_not_capturing(condconv_context_t ctx, const char *func)
{
    enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    const cudaError_t err = cudaStreamIsCapturing(ctx->stream, &capture);
    if (err == cudaErrorStreamCaptureImplicit || capture != cudaStreamCaptureStatusNone) {
        if (err != cudaSuccess) (void)cudaGetLastError();
        return cc_fail(CONDCONV_STATUS_NOT_PREPARED,
                       "%s: this input shape has no plan and the stream is being captured into a CUDA graph; call "
                       "condconv_prepare for it before capturing",
                       func);
    }
    return cc_cuda_status(err, "cudaStreamIsCapturing", func);
}

/* Failures of one AUTO candidate that leave the others able to run: out of
 * memory, or a cuDNN/cuBLAS call that refused (cuDNN's heuristics sometimes
 * offer an engine that then fails). A CUDA error may be sticky: it stops. */
static int skippable(condconv_status st)
{
    return st == CONDCONV_STATUS_ALLOC_FAILED || st == CONDCONV_STATUS_CUDNN_ERROR ||
           st == CONDCONV_STATUS_CUBLAS_ERROR;
}

/* Prepares every applicable candidate and times each in both alignment
 * classes (plan.h): for x and y 16-byte aligned, and one element off, where
 * the library algorithms stage them and our kernels take scalar paths. The
 * fastest of each class is kept. */
static condconv_status choose_by_measuring(struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
                                           const char *func)
{
    cc_algo_state states[CONDCONV_ALGO_COUNT];
    memset(states, 0, sizeof states);
    condconv_plan_info *info = &plan->info;
    float *unaligned_us = info->measured_unaligned_us;
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
        st = cc_algo_lookup((condconv_algo)a)
                 ->prepare(layer, &plan->geom, plan->math, CONDCONV_SELECT_MEASURE, scratch, &states[a], func);
        if (st == CONDCONV_STATUS_NOT_SUPPORTED) { /* e.g. cuDNN has no kernel for it */
            info->applicable[a] = 0;
            st = CONDCONV_STATUS_SUCCESS;
            continue;
        }
        if (skippable(st)) { /* this candidate cannot run now; others may */
            cc_algo_state_destroy(&states[a]);
            info->applicable[a] = 0;
            st = CONDCONV_STATUS_SUCCESS;
            continue;
        }
        if (st != CONDCONV_STATUS_SUCCESS) break;
        if (plan->alpha_bytes + states[a].workspace_bytes > CC_AUTO_MAX_WORKSPACE) {
            cc_algo_state_destroy(&states[a]);
            continue;
        }
        cc_plan trial = *plan;
        trial.state = states[a];
        trial.unaligned_same = 1;
        trial.workspace_bytes = plan->alpha_bytes + states[a].workspace_bytes;
        const float give_up_us = best < 0 ? 0.0f : CC_MEASURE_GIVE_UP * info->measured_us[best];
        st = time_plan(layer, &trial, 0, scratch, give_up_us, &info->measured_us[a], func);
        if (st == CONDCONV_STATUS_SUCCESS) {
            const float give_up_unaligned_us =
                best_unaligned < 0 ? 0.0f : CC_MEASURE_GIVE_UP * unaligned_us[best_unaligned];
            st = time_plan(layer, &trial, 1, scratch, give_up_unaligned_us, &unaligned_us[a], func);
        }
        if (skippable(st)) { /* its scratch did not fit, or it failed to run: not a candidate */
            info->measured_us[a] = -1.0f;
            unaligned_us[a] = -1.0f;
            info->applicable[a] = 0;
            cc_algo_state_destroy(&states[a]);
            st = CONDCONV_STATUS_SUCCESS;
            continue;
        }
        if (st != CONDCONV_STATUS_SUCCESS) break;
        if (best < 0 || info->measured_us[a] < info->measured_us[best]) best = a;
        if (best_unaligned < 0 || unaligned_us[a] < unaligned_us[best_unaligned]) best_unaligned = a;
    }
    if (st == CONDCONV_STATUS_SUCCESS && best < 0)
        st = cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: no algorithm applies to this layer and shape", func);
    for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a)
        if ((a != best && a != best_unaligned) || st != CONDCONV_STATUS_SUCCESS) cc_algo_state_destroy(&states[a]);
    if (st != CONDCONV_STATUS_SUCCESS) return st;
    plan->state = states[best];
    plan->unaligned_same = best_unaligned == best;
    if (!plan->unaligned_same) plan->state_unaligned = states[best_unaligned];
    int len = snprintf(info->reason, sizeof info->reason, "measured:");
    for (int a = 1; a < CONDCONV_ALGO_COUNT && len > 0 && (size_t)len < sizeof info->reason; ++a)
        if (info->measured_us[a] >= 0.0f)
            len += snprintf(info->reason + len, sizeof info->reason - (size_t)len, " %s%s %.1f us",
                            a == best ? "*" : "", condconv_algo_name((condconv_algo)a), (double)info->measured_us[a]);
    return CONDCONV_STATUS_SUCCESS;
}

/* The rule's choice; if it cannot be prepared after all (cuDNN has no
 * engine for the shape, memory is short), the next applicable one in the
 * rule's ranking. Only algorithms whose check passed are ever prepared. */
static condconv_status choose_by_rule(struct condconv_layer *layer, cc_plan *plan, cc_scratch *scratch,
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
            snprintf(plan->info.reason, sizeof plan->info.reason, "%s", why[i]);
            return st;
        }
        cc_algo_state_destroy(&plan->state);
        if (st != CONDCONV_STATUS_NOT_SUPPORTED && !skippable(st)) return st;
    }
    return st;
}

static condconv_status plan_create(struct condconv_layer *layer, int n, int h, int w, cc_plan **out, const char *func)
{
    condconv_context_t ctx = layer->ctx;
    const condconv_layer_info *info = &layer->weights->info;
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(info, n, h, w, &geom, func));
    CC_TRY(check_not_capturing(ctx, func));
    CC_TRY(cc_context_gpu_begin(ctx, func));
    if (layer->plan_count == layer->plan_capacity) {
        const int cap = layer->plan_capacity ? 2 * layer->plan_capacity : 4;
        /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers, sized by the pointer, as meant */
        cc_plan **grown = realloc(layer->plans, sizeof *grown * (size_t)cap);
        if (grown == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
        layer->plans = grown;
        layer->plan_capacity = cap;
    }
    cc_plan *plan = calloc(1, sizeof *plan);
    if (plan == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    plan->n = n;
    plan->h = h;
    plan->w = w;
    plan->math = ctx->math;
    plan->requested = layer->requested;
    plan->geom = geom;
    plan->alpha_bytes = cc_align256(sizeof(float) * (size_t)geom.alpha_elems);
    condconv_plan_info *pi = &plan->info;
    pi->requested = layer->requested;
    pi->select = ctx->select;
    pi->math = ctx->math;
    for (int a = 0; a < CONDCONV_ALGO_COUNT; ++a) pi->measured_us[a] = pi->measured_unaligned_us[a] = -1.0f;
    plan->unaligned_same = 1; /* unless measuring finds otherwise */
    for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a)
        pi->applicable[a] = cc_algo_lookup((condconv_algo)a)->check(layer, &geom, func) == CONDCONV_STATUS_SUCCESS;

    condconv_status st = routing_buffers_create(layer, plan, func);
    if (st != CONDCONV_STATUS_SUCCESS) {
        plan_destroy(plan);
        return st;
    }
    cc_scratch scratch = {0};
    scratch.stream = ctx->stream;
    if (layer->requested != CONDCONV_ALGO_AUTO) {
        const cc_algo_ops *ops = cc_algo_lookup(layer->requested);
        st = ops->check(layer, &geom, func); /* again, for its message */
        if (st == CONDCONV_STATUS_SUCCESS)
            st = ops->prepare(layer, &geom, plan->math, ctx->select, &scratch, &plan->state, func);
        if (st == CONDCONV_STATUS_SUCCESS) snprintf(pi->reason, sizeof pi->reason, "forced by condconv_layer_set_algo");
    } else if (ctx->select == CONDCONV_SELECT_HEURISTIC) {
        st = choose_by_rule(layer, plan, &scratch, func);
    } else {
        st = choose_by_measuring(layer, plan, &scratch, func);
    }
    cc_scratch_free(&scratch);
    if (st != CONDCONV_STATUS_SUCCESS) {
        plan_destroy(plan);
        return st;
    }
    /* One workspace size whatever the pointers: the larger class's. */
    const size_t unaligned_ws = plan->unaligned_same ? 0 : plan->state_unaligned.workspace_bytes;
    plan->workspace_bytes =
        plan->alpha_bytes + (plan->state.workspace_bytes > unaligned_ws ? plan->state.workspace_bytes : unaligned_ws);
    pi->algo = plan->state.algo;
    pi->algo_unaligned = plan->unaligned_same ? plan->state.algo : plan->state_unaligned.algo;
    pi->workspace_bytes = plan->workspace_bytes;
    snprintf(pi->backend, sizeof pi->backend, "%s", plan->state.backend);
    layer->plans[layer->plan_count++] = plan;
    *out = plan;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_plan_get(struct condconv_layer *layer, int n, int h, int w, cc_plan **plan, const char *func)
{
    CC_TRY(cc_context_require_gpu(layer->ctx, func));
    *plan = cc_plan_lookup(layer, n, h, w);
    if (*plan != NULL) return CONDCONV_STATUS_SUCCESS;
    return plan_create(layer, n, h, w, plan, func);
}
