/* The public CPU backward: argument checks, then the reference backward
 * (reference_backward.c) on f32 NCHW data. A layer in another dtype or
 * layout has x and dy converted (exactly) and transposed first; dx is
 * rounded double -> f32 -> dtype and transposed last, as forward_cpu.c does
 * for y (for half types the double rounding can move an exact tie by one
 * ulp). Parameter gradients are f32, rounded once from double. Everything
 * is computed into scratch and the outputs are written only once it has
 * succeeded, so a failed call writes nothing. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backward_args.h"
#include "cpu_layout.h"
#include "dtype.h"
#include "error.h"
#include "layer.h"
#include "reference_backward.h"
#include "registry.h"

condconv_status condconv_backward_cpu(condconv_layer_t layer, int n, int h, int w, const void *x,
                                      const void *routing_in, const void *dy, void *dx, float *d_routing_in,
                                      float *d_experts, float *d_expert_bias, float *d_routing_weight,
                                      float *d_routing_bias)
{
    static const char func[] = "condconv_backward_cpu";
    const cc_backward_outputs out = {dx, d_routing_in, d_experts, d_expert_bias, d_routing_weight, d_routing_bias};
    cc_geometry geom = {0};
    CC_TRY(cc_backward_check_args(layer, n, h, w, x, routing_in, dy, &out, &geom, func));
    const condconv_layer_info *info = &layer->weights->info;
    const cc_param_sizes *sizes = &layer->weights->sizes;
    const int external = info->routing == CONDCONV_ROUTING_EXTERNAL;

    /* Scratch: f32 NCHW inputs, double gradients, and dx's f32 staging. */
    const uint64_t largest = geom.x_elems > sizes->experts_elems ? geom.x_elems : sizes->experts_elems;
    if (largest > SIZE_MAX / sizeof(double))
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW, "%s: the gradients' double scratch would overflow size_t", func);
    const int converted = info->dtype != CONDCONV_DTYPE_F32 || info->layout != CONDCONV_LAYOUT_NCHW;
    const uint64_t plane_in = (uint64_t)geom.h * (uint64_t)geom.w;
    const uint64_t plane_out = (uint64_t)geom.out_h * (uint64_t)geom.out_w;
    float *x_owned = converted ? cc_cpu_as_f32_nchw(info, x, n, info->in_channels, plane_in) : NULL;
    float *dy_owned = converted ? cc_cpu_as_f32_nchw(info, dy, n, info->out_channels, plane_out) : NULL;
    const float *x32 = converted ? x_owned : x;
    const float *dy32 = converted ? dy_owned : dy;
    const size_t x_count = (size_t)geom.x_elems;
#define CC_SCRATCH(want, elems) ((want) ? malloc(sizeof(double) * ((size_t)(elems) ? (size_t)(elems) : 1)) : NULL)
    const cc_backward_grads grads = {
        CC_SCRATCH(dx, x_count),
        CC_SCRATCH(d_routing_in, geom.alpha_elems),
        CC_SCRATCH(d_experts, sizes->experts_elems),
        CC_SCRATCH(d_expert_bias, sizes->bias_elems),
        CC_SCRATCH(d_routing_weight, sizes->routing_weight_elems),
        CC_SCRATCH(d_routing_bias, sizes->routing_bias_elems),
    };
#undef CC_SCRATCH
    float *dx32 = dx ? malloc(sizeof(float) * (x_count ? x_count : 1)) : NULL;
    float *dx_out = dx && info->layout == CONDCONV_LAYOUT_NHWC ? malloc(sizeof(float) * (x_count ? x_count : 1)) : dx32;
    condconv_status s = (x32 && dy32 && (!dx || (grads.dx && dx32 && dx_out)) && (!d_routing_in || grads.d_alpha) &&
                         (!d_experts || grads.d_experts) && (!d_expert_bias || grads.d_expert_bias) &&
                         (!d_routing_weight || grads.d_routing_weight) && (!d_routing_bias || grads.d_routing_bias))
                            ? CONDCONV_STATUS_SUCCESS
                            : CONDCONV_STATUS_ALLOC_FAILED;
    if (s == CONDCONV_STATUS_SUCCESS) {
        const cc_host_params params = cc_layer_host_params(layer);
        s = cc_reference_backward(info, &params, &geom, x32, external ? routing_in : NULL, dy32, &grads);
    }
    if (s == CONDCONV_STATUS_SUCCESS) {
        /* Nothing can fail from here on: write the outputs. */
        if (dx) {
            for (size_t i = 0; i < x_count; ++i) dx32[i] = (float)grads.dx[i];
            if (dx_out != dx32)
                cc_cpu_transpose_planes(dx32, dx_out, (uint64_t)n, (uint64_t)info->in_channels, plane_in);
            cc_dtype_store(info->dtype, dx_out, dx, x_count);
        }
        const struct {
            float *dst;
            const double *src;
            uint64_t elems;
        } params_out[] = {
            {d_routing_in, grads.d_alpha, geom.alpha_elems},
            {d_experts, grads.d_experts, sizes->experts_elems},
            {d_expert_bias, grads.d_expert_bias, sizes->bias_elems},
            {d_routing_weight, grads.d_routing_weight, sizes->routing_weight_elems},
            {d_routing_bias, grads.d_routing_bias, sizes->routing_bias_elems},
        };
        for (size_t k = 0; k < sizeof(params_out) / sizeof(params_out[0]); ++k)
            if (params_out[k].dst != NULL)
                for (uint64_t i = 0; i < params_out[k].elems; ++i) params_out[k].dst[i] = (float)params_out[k].src[i];
    }
    free(x_owned);
    free(dy_owned);
    free(grads.dx);
    free(grads.d_alpha);
    free(grads.d_experts);
    free(grads.d_expert_bias);
    free(grads.d_routing_weight);
    free(grads.d_routing_bias);
    if (dx_out != dx32) free(dx_out);
    free(dx32);
    if (s != CONDCONV_STATUS_SUCCESS) return cc_fail(s, "%s: out of host memory for scratch buffers", func);
    return CONDCONV_STATUS_SUCCESS;
}
