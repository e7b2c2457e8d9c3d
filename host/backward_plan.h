/* Backward plans: what condconv_backward runs for one input shape. Made
 * once per (N, H, W, math, requested algorithm, selection mode) by
 * condconv_backward_prepare (or the first backward outside a graph
 * capture), cached in the layer, executed without allocation or
 * synchronisation.
 *
 * The one algorithm so far is the design card's baseline,
 * CONDCONV_BWD_ALGO_CUDNN_GROUPED:
 *   1. alpha: the routing kernel (a layer that routes itself), or the
 *      caller's routing_in;
 *   2. dy in NCHW for cuDNN (transposed from NHWC, or copied when less than
 *      16-byte aligned);
 *   3. dx: per-sample filters W_b = sum_e alpha_be W_e (the forward's
 *      aggregation kernel), then cuDNN backward data with the batch as
 *      groups into dx, or into the workspace and from there cropped
 *      (asymmetric "same" padding) and transposed (NHWC) into dx;
 *   4. G_b = dy_b * x_b for every sample: cuDNN backward filter with the
 *      batch as groups (x padded/transposed for cuDNN as the forward's
 *      gather does), [N][Cout][Cin/g][kh][kw] in the workspace, in the
 *      layer's dtype (cuDNN writes filter gradients in the filters' type);
 *   5. condconv's reductions (kernels/backward.h), each in a fixed order:
 *      dW_e = sum_b alpha_be G_b, dbias_e = sum_b alpha_be sum_p dy_b,
 *      dalpha_be = <W_e, G_b> + <bias_e, sum_p dy_b>;
 *   6. a layer that routes itself: the routing's backward (sigmoid or
 *      softmax, the FC) into d_routing_weight, d_routing_bias and the
 *      pooled input's gradient, which the average pool spreads over dx.
 * G_b is what makes this the baseline: N per-sample filter gradients go
 * through memory (2 N |W| elements written and read), which the own
 * kernels to come avoid (issue 20). */
#ifndef CONDCONV_HOST_BACKWARD_PLAN_H
#define CONDCONV_HOST_BACKWARD_PLAN_H

#include "backward_args.h"
#include "condconv.h"
#include "cudnn_conv_backward.h"
#include "gather.h"
#include "layer.h"

typedef struct cc_bwd_plan {
    int n, h, w;
    condconv_math math;
    condconv_bwd_algo requested;
    condconv_algo_select select;
    cc_geometry geom;
    cc_cudnn_conv_bwd conv;
    /* The layouts cuDNN sees (NCHW, batch folded into channels): x gathered
     * (padded for asymmetric padding, transposed from NHWC) when
     * x_gathered, else x itself, or a copy of it when less than 16-byte
     * aligned; dy transposed from NHWC, or copied likewise; dx computed in
     * the workspace and gathered into the caller's dx (cropped,
     * transposed) when dx_scattered, or when dx is less than 16-byte
     * aligned. */
    int x_gathered, dy_transposed, dx_scattered;
    cc_gather_args x_args, x_copy_args, dy_args, dx_args;
    /* Byte offsets of the workspace's pieces. */
    size_t off_alpha, off_pooled, off_dysum, off_dalpha, off_dlogits, off_dpooled, off_reduce_scratch;
    size_t off_filters, off_grads, off_x, off_dy, off_dx, off_cudnn;
    size_t dx_region_bytes;
    size_t workspace_bytes;
    condconv_backward_plan_info info;
} cc_bwd_plan;

/* The cached plan for this shape under the layer's current settings, made
 * if needed (NOT_PREPARED while the context's stream is capturing). */
condconv_status cc_bwd_plan_get(struct condconv_layer *layer, int n, int h, int w, cc_bwd_plan **plan,
                                const char *func);

/* Runs the plan on the context's stream; the arguments were checked
 * (cc_backward_check_args) and the workspace is at least
 * plan->workspace_bytes. */
condconv_status cc_bwd_plan_execute(const struct condconv_layer *layer, const cc_bwd_plan *plan, const void *x,
                                    const void *routing_in, const void *dy, const cc_backward_outputs *out,
                                    void *workspace, const char *func);

/* Frees the layer's backward plans. */
void cc_bwd_release_plans(struct condconv_layer *layer);

#endif
