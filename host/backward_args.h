/* The argument checks condconv_backward_cpu and condconv_backward share:
 * the layer, x and dy, the shape, the routing weights external routing
 * needs, which gradients the layer can have, and that no output overlaps
 * another buffer. */
#ifndef CONDCONV_HOST_BACKWARD_ARGS_H
#define CONDCONV_HOST_BACKWARD_ARGS_H

#include "condconv.h"
#include "layer_desc.h"

typedef struct cc_backward_outputs {
    void *dx;
    float *d_routing_in, *d_experts, *d_expert_bias, *d_routing_weight, *d_routing_bias;
} cc_backward_outputs;

/* SUCCESS and the geometry, or the specific status of the first problem. */
condconv_status cc_backward_check_args(const struct condconv_layer *layer, int n, int h, int w, const void *x,
                                       const void *routing_in, const void *dy, const cc_backward_outputs *out,
                                       cc_geometry *geom, const char *func);

#endif
