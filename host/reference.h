/* The CPU reference path: plain C, double accumulation, written for
 * obviousness. Every GPU kernel is validated against it. f32 data only. */
#ifndef CONDCONV_HOST_REFERENCE_H
#define CONDCONV_HOST_REFERENCE_H

#include "condconv.h"
#include "layer_desc.h"

/* Host parameters in the layout of condconv.h. expert_bias may be NULL when
 * the layer has no bias; routing_bias may be NULL (zeros). */
typedef struct cc_host_params {
    const float *experts;
    const float *expert_bias;
    const float *routing_weight;
    const float *routing_bias;
} cc_host_params;

/* y = act(x) for the layer's activation. */
double cc_reference_activation(condconv_activation act, double x);

/* alpha [N][E] = sigmoid or softmax(logits / temperature) of
 * FC(GlobalAvgPool(x)). The layer must not use external routing. */
void cc_reference_route(const condconv_layer_info *info, const cc_host_params *params, const cc_geometry *geom,
                        const float *x, double *alpha);

/* W_b = sum_e alpha_e W_e into filter [Cout][Cin/g][kh][kw], and
 * bias_b = sum_e alpha_e b_e into bias [Cout] (zeros without bias). */
void cc_reference_aggregate(const condconv_layer_info *info, const cc_host_params *params, const double *alpha_row,
                            double *filter, double *bias);

/* One sample: y [Cout][Ho][Wo] = act(conv(x [Cin][H][W], filter) + bias). */
void cc_reference_conv_sample(const condconv_layer_info *info, const cc_geometry *geom, const float *x,
                              const double *filter, const double *bias, float *y);

/* The whole forward. alpha_in [N][E] is used with external routing (and
 * must then be non-NULL); alpha_out, if not NULL, receives the weights used.
 * Returns ALLOC_FAILED if scratch memory cannot be had; writes nothing then. */
condconv_status cc_reference_forward(const condconv_layer_info *info, const cc_host_params *params,
                                     const cc_geometry *geom, const float *x, const float *alpha_in, float *y,
                                     float *alpha_out);

#endif
