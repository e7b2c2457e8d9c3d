/* The public GPU entry points: prepare, workspace query, plan info, forward,
 * routing only. Argument checks happen here, before anything is launched,
 * so a bad call writes nothing. */
#include <stdint.h>
#include <string.h>

#include "aggregate.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "layer.h"
#include "plan.h"
#include "registry.h"
#include "routing.h"

condconv_status condconv_layer_set_algo(condconv_layer_t layer, condconv_algo algo)
{
    static const char func[] = "condconv_layer_set_algo";
    CC_CHECK_LAYER(layer, func);
    if ((int)algo < 0 || algo >= CONDCONV_ALGO_COUNT)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown algorithm %d", func, (int)algo);
    layer->requested = algo;
    layer->forced_variant[0] = '\0';
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_set_candidate(condconv_layer_t layer, const char *candidate)
{
    static const char func[] = "condconv_layer_set_candidate";
    CC_CHECK_LAYER(layer, func);
    if (candidate == NULL) {
        layer->requested = CONDCONV_ALGO_AUTO;
        layer->forced_variant[0] = '\0';
        return CONDCONV_STATUS_SUCCESS;
    }
    /* "algo" or "algo[variant]": the algorithm by its name, the variant's
     * name checked at prepare (only preparing a variant names it). */
    const char *open = strchr(candidate, '[');
    const size_t algo_len = open ? (size_t)(open - candidate) : strlen(candidate);
    size_t variant_len = 0;
    if (open != NULL) {
        const char *close = strchr(open, ']');
        if (close == NULL || close[1] != '\0' || close == open + 1)
            return cc_fail(CONDCONV_STATUS_BAD_VALUE,
                           "%s: \"%.80s\" is not a candidate's name (\"algo\" or \"algo[variant]\")", func, candidate);
        variant_len = (size_t)(close - open - 1);
        if (variant_len >= sizeof layer->forced_variant)
            return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: variant name longer than %zu characters", func,
                           sizeof layer->forced_variant - 1);
    }
    for (int a = 1; a < CONDCONV_ALGO_COUNT; ++a) {
        const char *name = condconv_algo_name((condconv_algo)a);
        if (strlen(name) != algo_len || strncmp(name, candidate, algo_len) != 0) continue;
        layer->requested = (condconv_algo)a;
        memcpy(layer->forced_variant, variant_len ? open + 1 : "", variant_len);
        layer->forced_variant[variant_len] = '\0';
        return CONDCONV_STATUS_SUCCESS;
    }
    return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: no algorithm is named \"%.*s\"", func,
                   (int)(algo_len > 64 ? 64 : algo_len), candidate);
}

condconv_status condconv_layer_set_kernel_variants(condconv_layer_t layer, int routing_variant, int aggregate_variant)
{
    static const char func[] = "condconv_layer_set_kernel_variants";
    CC_CHECK_LAYER(layer, func);
    if (routing_variant < -1 || routing_variant >= CC_ROUTING_VARIANTS)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: routing variant %d outside [-1, %d)", func, routing_variant,
                       CC_ROUTING_VARIANTS);
    if (aggregate_variant < -1 || aggregate_variant >= CC_AGGREGATE_VARIANTS)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: aggregation variant %d outside [-1, %d)", func,
                       aggregate_variant, CC_AGGREGATE_VARIANTS);
    layer->forced_routing = routing_variant;
    layer->forced_aggregate = aggregate_variant;
    return CONDCONV_STATUS_SUCCESS;
}

/* The plan of a shape, prepared if needed; the caller's device is current
 * again on return. */
static condconv_status plan_for(condconv_layer_t layer, int n, int h, int w, cc_plan **plan, const char *func)
{
    CC_CHECK_LAYER(layer, func);
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(&layer->weights->info, n, h, w, &geom, func));
    CC_TRY(cc_context_require_gpu(layer->ctx, func));
    cc_device_scope scope;
    CC_TRY(cc_device_scope_begin(layer->ctx, &scope, func));
    return cc_device_scope_end(&scope, cc_plan_get(layer, n, h, w, plan, func), func);
}

condconv_status condconv_prepare(condconv_layer_t layer, int n, int h, int w)
{
    cc_plan *plan;
    return plan_for(layer, n, h, w, &plan, "condconv_prepare");
}

condconv_status condconv_get_workspace_size(condconv_layer_t layer, int n, int h, int w, size_t *bytes)
{
    static const char func[] = "condconv_get_workspace_size";
    CC_CHECK_NOT_NULL(bytes, func);
    cc_plan *plan;
    CC_TRY(plan_for(layer, n, h, w, &plan, func));
    *bytes = plan->workspace_bytes;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_get_plan_info(condconv_layer_t layer, int n, int h, int w, condconv_plan_info *info)
{
    static const char func[] = "condconv_get_plan_info";
    CC_CHECK_NOT_NULL(info, func);
    cc_plan *plan;
    CC_TRY(plan_for(layer, n, h, w, &plan, func));
    *info = plan->info;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status forward_on_device(condconv_layer_t layer, int n, int h, int w, const void *x, void *y,
                                         const void *routing_in, void *routing_out, void *workspace,
                                         size_t workspace_bytes, const char *func);

condconv_status condconv_forward(condconv_layer_t layer, int n, int h, int w, const void *x, void *y,
                                 const void *routing_in, void *routing_out, void *workspace, size_t workspace_bytes)
{
    static const char func[] = "condconv_forward";
    cc_geometry geom = {0};
    CC_TRY(cc_layer_check_forward(layer, n, h, w, x, y, routing_in, routing_out, &geom, func));
    CC_TRY(cc_context_require_gpu(layer->ctx, func));
    const size_t elem = cc_dtype_size(layer->weights->info.dtype);
    CC_TRY(cc_check_element_alignment(x, elem, "x", func));
    CC_TRY(cc_check_element_alignment(y, elem, "y", func));
    CC_TRY(cc_check_element_alignment(routing_in, sizeof(float), "routing_in", func));
    CC_TRY(cc_check_element_alignment(routing_out, sizeof(float), "routing_out", func));
    cc_device_scope scope;
    CC_TRY(cc_device_scope_begin(layer->ctx, &scope, func));
    const condconv_status st =
        forward_on_device(layer, n, h, w, x, y, routing_in, routing_out, workspace, workspace_bytes, func);
    return cc_device_scope_end(&scope, st, func);
}

/* The part of the forward that may switch devices. */
static condconv_status forward_on_device(condconv_layer_t layer, int n, int h, int w, const void *x, void *y,
                                         const void *routing_in, void *routing_out, void *workspace,
                                         size_t workspace_bytes, const char *func)
{
    cc_plan *plan;
    CC_TRY(cc_plan_get(layer, n, h, w, &plan, func));
    CC_TRY(cc_check_workspace(workspace, workspace_bytes, plan->workspace_bytes, n, h, w, "condconv_get_workspace_size",
                              func));
    CC_TRY(cc_context_set_device(layer->ctx, func));
    return cc_plan_execute(layer, plan, x, y, routing_in, routing_out, workspace, func);
}

condconv_status condconv_route(condconv_layer_t layer, int n, int h, int w, const void *x, void *routing_out)
{
    static const char func[] = "condconv_route";
    CC_CHECK_LAYER(layer, func);
    CC_CHECK_NOT_NULL(x, func);
    CC_CHECK_NOT_NULL(routing_out, func);
    const cc_weights *wt = layer->weights;
    const condconv_layer_info *info = &wt->info;
    if (info->routing == CONDCONV_ROUTING_EXTERNAL)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: the layer uses external routing and has no routing function",
                       func);
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(info, n, h, w, &geom, func));
    CC_TRY(cc_context_require_gpu(layer->ctx, func));
    CC_TRY(cc_check_element_alignment(x, cc_dtype_size(info->dtype), "x", func));
    CC_TRY(cc_check_element_alignment(routing_out, sizeof(float), "routing_out", func));
    cc_device_scope scope;
    CC_TRY(cc_device_scope_begin(layer->ctx, &scope, func));
    condconv_status st = cc_context_set_device(layer->ctx, func);
    /* A prepared shape routes with its plan's split over blocks; any other
     * with one block per sample (no buffers needed, so nothing allocated). */
    if (st == CONDCONV_STATUS_SUCCESS)
        st = cc_plan_route(layer, cc_plan_lookup(layer, n, h, w), n, h, w, x, routing_out, func);
    return cc_device_scope_end(&scope, st, func);
}
