/* Plan creation (algorithm applicability, workspace layout; the choice by
 * measurement or rule is plan_auto.c's), the per-layer plan cache, and
 * plan execution. */
#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "phase_timer.h"
#include "scratch.h"

#include "backward_plan.h"
#include "plan_auto.h"
#include "routing.h"

cc_plan *cc_plan_lookup(const struct condconv_layer *layer, int n, int h, int w)
{
    for (int i = 0; i < layer->plan_count; ++i) {
        cc_plan *p = layer->plans[i];
        if (p->n == n && p->h == h && p->w == w && p->math == layer->ctx->math && p->requested == layer->requested &&
            p->info.select == layer->ctx->select && strcmp(p->forced_variant, layer->forced_variant) == 0 &&
            p->forced_routing == layer->forced_routing && p->forced_aggregate == layer->forced_aggregate)
            return p;
    }
    return NULL;
}

static void plan_destroy(cc_plan *plan)
{
    if (plan == NULL) return;
    cc_algo_state_destroy(&plan->state);
    if (!plan->unaligned_same) cc_algo_state_destroy(&plan->state_unaligned);
    cc_plan_routing_destroy(plan);
    free(plan);
}

void cc_layer_release_plans(struct condconv_layer *layer)
{
    cc_bwd_release_plans(layer);
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
    const cudaError_t err = cc_launch_routing_variant(
        plan != NULL ? plan->routing_variant : 0, (int)info->dtype, (int)info->layout, x, wt->dev_routing_weight_t,
        wt->dev_routing_bias, alpha, n, info->in_channels, (long long)h * w, info->num_experts,
        info->routing == CONDCONV_ROUTING_SOFTMAX, 1.0f / info->temperature, split ? plan->routing_splits : 1,
        split ? plan->routing_partial : NULL, split ? plan->routing_counters : NULL, stream);
    CC_PHASE_END(CC_PHASE_ROUTE, stream);
    return cc_cuda_status(err, "cc_launch_routing_variant", func);
}

condconv_status cc_plan_routing_create(const struct condconv_layer *layer, cc_plan *plan, int variant, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    plan->routing_variant = variant;
    plan->routing_splits = 1;
    plan->routing_block = NULL;
    plan->routing_partial = NULL;
    plan->routing_counters = NULL;
    if (info->routing == CONDCONV_ROUTING_EXTERNAL) return CONDCONV_STATUS_SUCCESS;
    const int splits = cc_routing_splits_variant(variant, plan->n, info->in_channels, (long long)plan->h * plan->w,
                                                 layer->ctx->sm_count);
    if (splits < 1)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: routing variant %d does not run this shape", func, variant);
    if (splits == 1) return CONDCONV_STATUS_SUCCESS;
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

void cc_plan_routing_destroy(cc_plan *plan)
{
    if (plan->routing_block != NULL) (void)cudaFree(plan->routing_block);
    plan->routing_block = NULL;
    plan->routing_partial = NULL;
    plan->routing_counters = NULL;
    plan->routing_splits = 1;
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

condconv_status cc_check_not_capturing(condconv_context_t ctx, const char *func)
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

static condconv_status plan_create(struct condconv_layer *layer, int n, int h, int w, cc_plan **out, const char *func)
{
    condconv_context_t ctx = layer->ctx;
    const condconv_layer_info *info = &layer->weights->info;
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(info, n, h, w, &geom, func));
    CC_TRY(cc_check_not_capturing(ctx, func));
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
    memcpy(plan->forced_variant, layer->forced_variant, sizeof plan->forced_variant);
    plan->forced_routing = layer->forced_routing;
    plan->forced_aggregate = layer->forced_aggregate;
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

    pi->winner_us = pi->runner_up_us = -1.0f;
    cc_scratch scratch = {0};
    scratch.stream = ctx->stream;
    cc_auto_budget budget;
    cc_auto_budget_start(&budget, ctx->select == CONDCONV_SELECT_MEASURE ? ctx->auto_budget_ms : 0.0f);
    /* The routing and aggregation kernels' variants first (timed under
     * MEASURE, whatever the algorithm), then the algorithm. */
    condconv_status st = cc_auto_choose_kernels(layer, plan, &scratch, &budget, func);
    if (st == CONDCONV_STATUS_SUCCESS && layer->requested != CONDCONV_ALGO_AUTO) {
        st = cc_auto_prepare_forced(layer, plan, &scratch, func);
    } else if (st == CONDCONV_STATUS_SUCCESS && ctx->select == CONDCONV_SELECT_HEURISTIC) {
        st = cc_auto_choose_by_rule(layer, plan, &scratch, func);
    } else if (st == CONDCONV_STATUS_SUCCESS) {
        st = cc_auto_choose_by_measuring(layer, plan, &scratch, &budget, func);
    }
    cc_scratch_free(&scratch);
    if (st == CONDCONV_STATUS_SUCCESS) cc_auto_budget_report(&budget, pi);
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
