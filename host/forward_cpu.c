/* The public CPU path: argument checks, then the reference. The reference
 * works on f32 NCHW; a layer in another dtype or layout has its input
 * converted (exactly: every f16 and bf16 value is a float) and transposed
 * first, and its output transposed and rounded to the dtype last. The
 * output is thus rounded twice (double -> f32 -> half); the first rounding
 * is 2^13 times finer than the second, so this differs from one direct
 * rounding only on exact ties, by one half-precision ulp. */
#include <stdlib.h>
#include <string.h>

#include "cpu_layout.h"
#include "dtype.h"
#include "error.h"
#include "layer.h"
#include "reference.h"
#include "registry.h"

condconv_status condconv_forward_cpu(condconv_layer_t layer, int n, int h, int w, const void *x, void *y,
                                     const void *routing_in, void *routing_out)
{
    static const char func[] = "condconv_forward_cpu";
    cc_geometry geom = {0};
    CC_TRY(cc_layer_check_forward(layer, n, h, w, x, y, routing_in, routing_out, &geom, func));
    const condconv_layer_info *info = &layer->weights->info;
    const cc_host_params params = cc_layer_host_params(layer);
    if (info->dtype == CONDCONV_DTYPE_F32 && info->layout == CONDCONV_LAYOUT_NCHW) {
        const condconv_status s = cc_reference_forward(info, &params, &geom, x, routing_in, y, routing_out);
        if (s != CONDCONV_STATUS_SUCCESS) return cc_fail(s, "%s: out of host memory for scratch buffers", func);
        return CONDCONV_STATUS_SUCCESS;
    }
    /* Into scratch first, so that y is written only once everything succeeded. */
    const size_t y_count = (size_t)geom.y_elems;
    float *x32 = cc_cpu_as_f32_nchw(info, x, geom.n, info->in_channels, (uint64_t)geom.h * (uint64_t)geom.w);
    float *y32 = malloc((y_count ? y_count : 1) * sizeof(float));
    float *y_out = info->layout == CONDCONV_LAYOUT_NHWC ? malloc((y_count ? y_count : 1) * sizeof(float)) : y32;
    condconv_status s = x32 && y32 && y_out ? CONDCONV_STATUS_SUCCESS : CONDCONV_STATUS_ALLOC_FAILED;
    if (s == CONDCONV_STATUS_SUCCESS) s = cc_reference_forward(info, &params, &geom, x32, routing_in, y32, routing_out);
    if (s == CONDCONV_STATUS_SUCCESS) {
        if (y_out != y32)
            cc_cpu_transpose_planes(y32, y_out, (uint64_t)geom.n, (uint64_t)info->out_channels,
                                    (uint64_t)geom.out_h * (uint64_t)geom.out_w);
        cc_dtype_store(info->dtype, y_out, y, y_count);
    }
    free(x32);
    if (y_out != y32) free(y_out);
    free(y32);
    if (s != CONDCONV_STATUS_SUCCESS) return cc_fail(s, "%s: out of host memory for scratch buffers", func);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_route_cpu(condconv_layer_t layer, int n, int h, int w, const void *x, void *routing_out)
{
    static const char func[] = "condconv_route_cpu";
    CC_CHECK_LAYER(layer, func);
    CC_CHECK_NOT_NULL(x, func);
    CC_CHECK_NOT_NULL(routing_out, func);
    const condconv_layer_info *info = &layer->weights->info;
    if (info->routing == CONDCONV_ROUTING_EXTERNAL)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: the layer uses external routing and has no routing function",
                       func);
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(info, n, h, w, &geom, func));
    const int converted = info->dtype != CONDCONV_DTYPE_F32 || info->layout != CONDCONV_LAYOUT_NCHW;
    float *owned =
        converted ? cc_cpu_as_f32_nchw(info, x, geom.n, info->in_channels, (uint64_t)geom.h * (uint64_t)geom.w) : NULL;
    const float *x32 = converted ? owned : x;
    double *alpha = malloc(sizeof(double) * (size_t)geom.alpha_elems);
    if (alpha == NULL || x32 == NULL) {
        free(alpha);
        free(owned);
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    }
    const cc_host_params params = cc_layer_host_params(layer);
    cc_reference_route(info, &params, &geom, x32, alpha);
    float *out = routing_out;
    for (uint64_t i = 0; i < geom.alpha_elems; ++i) out[i] = (float)alpha[i];
    free(alpha);
    free(owned);
    return CONDCONV_STATUS_SUCCESS;
}
