/* The public GPU backward entry points: algorithm choice, prepare,
 * workspace query, plan info, and the backward itself (whole, data only,
 * parameters only). Arguments are checked here, before anything is
 * launched, so a bad call writes nothing. */
#include <stdint.h>

#include "backward_args.h"
#include "backward_plan.h"
#include "context.h"
#include "error.h"
#include "layer.h"
#include "registry.h"

const char *condconv_bwd_algo_name(condconv_bwd_algo algo)
{
    switch (algo) {
    case CONDCONV_BWD_ALGO_AUTO: return "auto";
    case CONDCONV_BWD_ALGO_CUDNN_GROUPED: return "cudnn_grouped";
    case CONDCONV_BWD_ALGO_MIXTURE: return "mixture";
    case CONDCONV_BWD_ALGO_FOLDED_WGRAD: return "folded_wgrad";
    case CONDCONV_BWD_ALGO_COUNT: break;
    }
    return NULL;
}

condconv_status condconv_layer_set_backward_algo(condconv_layer_t layer, condconv_bwd_algo algo)
{
    static const char func[] = "condconv_layer_set_backward_algo";
    CC_CHECK_LAYER(layer, func);
    if ((int)algo < 0 || algo >= CONDCONV_BWD_ALGO_COUNT)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown backward algorithm %d", func, (int)algo);
    layer->bwd_requested = algo;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_set_backward_deterministic(condconv_layer_t layer, int deterministic)
{
    static const char func[] = "condconv_layer_set_backward_deterministic";
    CC_CHECK_LAYER(layer, func);
    if (deterministic != 0 && deterministic != 1)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: deterministic is 0 or 1, not %d", func, deterministic);
    layer->bwd_nondeterministic = !deterministic;
    return CONDCONV_STATUS_SUCCESS;
}

/* The backward plan of a shape, prepared if needed; the caller's device is
 * current again on return. */
static condconv_status bwd_plan_for(condconv_layer_t layer, int n, int h, int w, cc_bwd_plan **plan, const char *func)
{
    CC_CHECK_LAYER(layer, func);
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(&layer->weights->info, n, h, w, &geom, func));
    CC_TRY(cc_context_require_gpu(layer->ctx, func));
    cc_device_scope scope;
    CC_TRY(cc_device_scope_begin(layer->ctx, &scope, func));
    return cc_device_scope_end(&scope, cc_bwd_plan_get(layer, n, h, w, plan, func), func);
}

condconv_status condconv_backward_prepare(condconv_layer_t layer, int n, int h, int w)
{
    cc_bwd_plan *plan;
    return bwd_plan_for(layer, n, h, w, &plan, "condconv_backward_prepare");
}

condconv_status condconv_get_backward_workspace_size(condconv_layer_t layer, int n, int h, int w, size_t *bytes)
{
    static const char func[] = "condconv_get_backward_workspace_size";
    CC_CHECK_NOT_NULL(bytes, func);
    cc_bwd_plan *plan;
    CC_TRY(bwd_plan_for(layer, n, h, w, &plan, func));
    *bytes = plan->workspace_bytes;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_get_backward_plan_info(condconv_layer_t layer, int n, int h, int w,
                                                condconv_backward_plan_info *info)
{
    static const char func[] = "condconv_get_backward_plan_info";
    CC_CHECK_NOT_NULL(info, func);
    cc_bwd_plan *plan;
    CC_TRY(bwd_plan_for(layer, n, h, w, &plan, func));
    *info = plan->info;
    return CONDCONV_STATUS_SUCCESS;
}

/* Element alignment of x, dy, dx (the dtype's) and of the f32 buffers
 * (cc_check_element_alignment; backward_plan.c stages what cuDNN would touch
 * less than 16-byte aligned). */
static condconv_status check_alignment(const condconv_layer_info *info, const void *x, const void *routing_in,
                                       const void *dy, const cc_backward_outputs *o, const char *func)
{
    const size_t elem = cc_dtype_size(info->dtype);
    const struct {
        const void *ptr;
        size_t align;
        const char *name;
    } bufs[] = {
        {x, elem, "x"},
        {dy, elem, "dy"},
        {o->dx, elem, "dx"},
        {info->routing == CONDCONV_ROUTING_EXTERNAL ? routing_in : NULL, sizeof(float), "routing_in"},
        {o->d_routing_in, sizeof(float), "d_routing_in"},
        {o->d_experts, sizeof(float), "d_experts"},
        {o->d_expert_bias, sizeof(float), "d_expert_bias"},
        {o->d_routing_weight, sizeof(float), "d_routing_weight"},
        {o->d_routing_bias, sizeof(float), "d_routing_bias"},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; ++i)
        CC_TRY(cc_check_element_alignment(bufs[i].ptr, bufs[i].align, bufs[i].name, func));
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status backward(condconv_layer_t layer, int n, int h, int w, const void *x, const void *routing_in,
                                const void *dy, const cc_backward_outputs *out, void *workspace, size_t workspace_bytes,
                                const char *func)
{
    cc_geometry geom = {0};
    CC_TRY(cc_backward_check_args(layer, n, h, w, x, routing_in, dy, out, &geom, func));
    CC_TRY(cc_context_require_gpu(layer->ctx, func));
    CC_TRY(check_alignment(&layer->weights->info, x, routing_in, dy, out, func));
    cc_device_scope scope;
    CC_TRY(cc_device_scope_begin(layer->ctx, &scope, func));
    cc_bwd_plan *plan = NULL;
    condconv_status st = cc_bwd_plan_get(layer, n, h, w, &plan, func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = cc_check_workspace(workspace, workspace_bytes, plan->workspace_bytes, n, h, w,
                                "condconv_get_backward_workspace_size", func);
    if (st == CONDCONV_STATUS_SUCCESS) st = cc_context_set_device(layer->ctx, func);
    if (st == CONDCONV_STATUS_SUCCESS) st = cc_bwd_plan_execute(layer, plan, x, routing_in, dy, out, workspace, func);
    return cc_device_scope_end(&scope, st, func);
}

condconv_status condconv_backward(condconv_layer_t layer, int n, int h, int w, const void *x, const void *routing_in,
                                  const void *dy, void *dx, float *d_routing_in, float *d_experts, float *d_expert_bias,
                                  float *d_routing_weight, float *d_routing_bias, void *workspace,
                                  size_t workspace_bytes)
{
    const cc_backward_outputs out = {dx, d_routing_in, d_experts, d_expert_bias, d_routing_weight, d_routing_bias};
    return backward(layer, n, h, w, x, routing_in, dy, &out, workspace, workspace_bytes, "condconv_backward");
}

condconv_status condconv_backward_data(condconv_layer_t layer, int n, int h, int w, const void *x,
                                       const void *routing_in, const void *dy, void *dx, float *d_routing_in,
                                       void *workspace, size_t workspace_bytes)
{
    const cc_backward_outputs out = {dx, d_routing_in, NULL, NULL, NULL, NULL};
    return backward(layer, n, h, w, x, routing_in, dy, &out, workspace, workspace_bytes, "condconv_backward_data");
}

condconv_status condconv_backward_params(condconv_layer_t layer, int n, int h, int w, const void *x,
                                         const void *routing_in, const void *dy, float *d_experts, float *d_expert_bias,
                                         float *d_routing_weight, float *d_routing_bias, void *workspace,
                                         size_t workspace_bytes)
{
    const cc_backward_outputs out = {NULL, NULL, d_experts, d_expert_bias, d_routing_weight, d_routing_bias};
    return backward(layer, n, h, w, x, routing_in, dy, &out, workspace, workspace_bytes, "condconv_backward_params");
}
