/* The CPU reference backward: the gradients of cc_reference_forward, in
 * double, written for obviousness. f32 NCHW data only (the public entry,
 * host/backward_cpu.c, converts other formats). */
#ifndef CONDCONV_HOST_REFERENCE_BACKWARD_H
#define CONDCONV_HOST_REFERENCE_BACKWARD_H

#include "condconv.h"
#include "layer_desc.h"
#include "reference.h"

/* Where the gradients go, all double, all written (never accumulated into);
 * NULL: not wanted (and not computed unless another gradient needs it). */
typedef struct cc_backward_grads {
    double *dx;               /* [N][Cin][H][W] */
    double *d_alpha;          /* [N][E], external routing only */
    double *d_experts;        /* [E][Cout][Cin/g][kh][kw] */
    double *d_expert_bias;    /* [E][Cout], layers with bias only */
    double *d_routing_weight; /* [E][Cin], self-routing only */
    double *d_routing_bias;   /* [E], self-routing only */
} cc_backward_grads;

/* d(act)/dz at z for the layer's activation (ReLU: 0 at z = 0, as PyTorch). */
double cc_reference_activation_grad(condconv_activation act, double z);

/* The backward of cc_reference_forward for output gradient dy
 * [N][Cout][Ho][Wo]. alpha_in [N][E] is used with external routing (and
 * must then be non-NULL); with self-routing alpha is recomputed from x.
 * Returns ALLOC_FAILED if scratch memory cannot be had (the grads are then
 * unspecified: the caller passes scratch). */
condconv_status cc_reference_backward(const condconv_layer_info *info, const cc_host_params *params,
                                      const cc_geometry *geom, const float *x, const float *alpha_in, const float *dy,
                                      const cc_backward_grads *grads);

#endif
