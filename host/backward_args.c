/* Argument checks of the backward calls (backward_args.h). */
#include "backward_args.h"

#include <stdint.h>

#include "error.h"
#include "layer.h"
#include "registry.h"

/* One buffer of the call, for the overlap check. */
typedef struct buffer {
    const char *name;
    const void *ptr;
    uint64_t bytes;
    int written;
} buffer;

static int ranges_overlap(const buffer *a, const buffer *b)
{
    if (a->ptr == NULL || b->ptr == NULL || a->bytes == 0 || b->bytes == 0) return 0;
    const uintptr_t pa = (uintptr_t)a->ptr, pb = (uintptr_t)b->ptr;
    return pa < pb + b->bytes && pb < pa + a->bytes;
}

/* Which outputs the layer can have: the specific refusal for one it cannot. */
static condconv_status check_selection(const condconv_layer_info *info, const cc_backward_outputs *o, const char *func)
{
    const int external = info->routing == CONDCONV_ROUTING_EXTERNAL;
    if (!o->dx && !o->d_routing_in && !o->d_experts && !o->d_expert_bias && !o->d_routing_weight && !o->d_routing_bias)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: every output is NULL; request at least one gradient", func);
    if (o->d_routing_in && !external)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE,
                       "%s: d_routing_in is only for layers with external routing; this layer routes itself "
                       "(ask for d_routing_weight and d_routing_bias)",
                       func);
    if ((o->d_routing_weight || o->d_routing_bias) && external)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE,
                       "%s: the layer uses external routing and has no routing function, so d_routing_weight and "
                       "d_routing_bias must be NULL (ask for d_routing_in)",
                       func);
    if (o->d_expert_bias && !info->has_bias)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: the layer has no bias, so d_expert_bias must be NULL", func);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_backward_check_args(const struct condconv_layer *layer, int n, int h, int w, const void *x,
                                       const void *routing_in, const void *dy, const cc_backward_outputs *out,
                                       cc_geometry *geom, const char *func)
{
    CC_CHECK_LAYER(layer, func);
    CC_CHECK_NOT_NULL(x, func);
    CC_CHECK_NOT_NULL(dy, func);
    const condconv_layer_info *info = &layer->weights->info;
    const cc_param_sizes *sizes = &layer->weights->sizes;
    CC_TRY(cc_geometry_make(info, n, h, w, geom, func));
    const int external = info->routing == CONDCONV_ROUTING_EXTERNAL;
    if (external && routing_in == NULL)
        return cc_fail(CONDCONV_STATUS_MISSING_ROUTING,
                       "%s: the layer uses external routing, so routing_in (alpha [N=%d][E=%d]) is required", func, n,
                       info->num_experts);
    CC_TRY(check_selection(info, out, func));

    /* Inputs may share bytes with each other; no output may share bytes with
     * any other buffer (routing_in is not read with self-routing, as in the
     * forward). Byte counts fit: cc_geometry_make and the layer's creation
     * checked them. */
    const uint64_t elem = cc_dtype_size(info->dtype);
    const buffer bufs[] = {
        {"x", x, geom->x_elems * elem, 0},
        {"dy", dy, geom->y_elems * elem, 0},
        {"routing_in", external ? routing_in : NULL, geom->alpha_elems * sizeof(float), 0},
        {"dx", out->dx, geom->x_elems * elem, 1},
        {"d_routing_in", out->d_routing_in, geom->alpha_elems * sizeof(float), 1},
        {"d_experts", out->d_experts, sizes->experts_elems * sizeof(float), 1},
        {"d_expert_bias", out->d_expert_bias, sizes->bias_elems * sizeof(float), 1},
        {"d_routing_weight", out->d_routing_weight, sizes->routing_weight_elems * sizeof(float), 1},
        {"d_routing_bias", out->d_routing_bias, sizes->routing_bias_elems * sizeof(float), 1},
    };
    const int count = (int)(sizeof(bufs) / sizeof(bufs[0]));
    for (int i = 0; i < count; ++i)
        for (int j = i + 1; j < count; ++j)
            if ((bufs[i].written || bufs[j].written) && ranges_overlap(&bufs[i], &bufs[j]))
                return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: %s and %s overlap; the backward cannot run in place",
                               func, bufs[i].name, bufs[j].name);
    return CONDCONV_STATUS_SUCCESS;
}
