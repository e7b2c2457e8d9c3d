/* The public CPU path: argument checks, then the reference. */
#include <stdlib.h>

#include "error.h"
#include "layer.h"
#include "reference.h"

condconv_status condconv_forward_cpu(condconv_layer_t layer, int n, int h, int w, const void *x, void *y,
                                     const void *routing_in, void *routing_out)
{
    static const char func[] = "condconv_forward_cpu";
    cc_geometry geom = {0};
    CC_TRY(cc_layer_check_forward(layer, n, h, w, x, y, routing_in, &geom, func));
    const cc_host_params params = cc_layer_host_params(layer);
    condconv_status s = cc_reference_forward(&layer->weights->info, &params, &geom, x, routing_in, y, routing_out);
    if (s != CONDCONV_STATUS_SUCCESS) return cc_fail(s, "%s: out of host memory for scratch buffers", func);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_route_cpu(condconv_layer_t layer, int n, int h, int w, const void *x, void *routing_out)
{
    static const char func[] = "condconv_route_cpu";
    CC_CHECK_NOT_NULL(layer, func);
    CC_CHECK_NOT_NULL(x, func);
    CC_CHECK_NOT_NULL(routing_out, func);
    const condconv_layer_info *info = &layer->weights->info;
    if (info->routing == CONDCONV_ROUTING_EXTERNAL)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: the layer uses external routing and has no routing function",
                       func);
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(info, n, h, w, &geom, func));
    double *alpha = malloc(sizeof(double) * (size_t)geom.alpha_elems);
    if (alpha == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    const cc_host_params params = cc_layer_host_params(layer);
    cc_reference_route(info, &params, &geom, x, alpha);
    float *out = routing_out;
    for (uint64_t i = 0; i < geom.alpha_elems; ++i) out[i] = (float)alpha[i];
    free(alpha);
    return CONDCONV_STATUS_SUCCESS;
}
