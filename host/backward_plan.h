/* Backward plans: what condconv_backward runs for one input shape. Made
 * once per (N, H, W, math, requested algorithm, selection mode,
 * determinism) by
 * condconv_backward_prepare (or the first backward outside a graph
 * capture), cached in the layer, executed without allocation or
 * synchronisation.
 *
 * Three algorithms (condconv.h's condconv_bwd_algo). All begin and end
 * alike: alpha (the routing kernel for a layer that routes itself, or the
 * caller's routing_in) and per-channel sums of dy for the bias gradients
 * first; a layer that routes itself ends with the routing's backward
 * (sigmoid or softmax, the FC) into d_routing_weight, d_routing_bias and
 * the pooled input's gradient, which the average pool spreads over dx.
 * Between them:
 *
 * CONDCONV_BWD_ALGO_CUDNN_GROUPED, the design card's baseline:
 *   1. dy in NCHW for cuDNN (transposed from NHWC, or copied when less than
 *      16-byte aligned);
 *   2. dx: per-sample filters W_b = sum_e alpha_be W_e (the forward's
 *      aggregation kernel), then cuDNN backward data with the batch as
 *      groups into dx, or into the workspace and from there cropped
 *      (asymmetric "same" padding) and transposed (NHWC) into dx;
 *   3. G_b = dy_b * x_b for every sample: cuDNN backward filter with the
 *      batch as groups (x padded/transposed for cuDNN as the forward's
 *      gather does), [N][Cout][Cin/g][kh][kw] in the workspace, in the
 *      layer's dtype (cuDNN writes filter gradients in the filters' type);
 *   4. condconv's reductions (kernels/backward.h), each in a fixed order:
 *      dW_e = sum_b alpha_be G_b, dbias_e = sum_b alpha_be sum_p dy_b,
 *      dalpha_be = <W_e, G_b> + <bias_e, sum_p dy_b>.
 *   N per-sample filters and N per-sample filter gradients go through
 *   memory (3 N |W| elements written and read), and cuDNN's grouped
 *   kernels run N*g small convolutions.
 *
 * CONDCONV_BWD_ALGO_MIXTURE, the experts as one static convolution with
 * E*Cout filters (the forward's mixture, cc_weights.dev_experts_grouped),
 * in the layer's layout (cuDNN convolves NHWC natively):
 *   1. dalpha (when a gradient needs it): z = the stacked forward of x,
 *      [N][E*Cout][pixels] in the workspace, then dalpha_be = <z_be, dy_b>
 *      + <bias_e, sum_p dy_b> (kernels/backward_mixture.h);
 *   2. dy_mix = alpha_be dy_b per expert, the gradient of z (since
 *      y_b = sum_e alpha_be z_be), in z's place in the workspace;
 *   3. dx: cuDNN's static backward data of the stacked filters on dy_mix
 *      (sum over e and Cout inside cuDNN's GEMM);
 *   4. dW: cuDNN's static backward filter of x and dy_mix, whose stacked
 *      gradient is dW_e = sum_b alpha_be (dy_b * x_b) summed over N*pixels
 *      inside cuDNN, then reordered into d_experts; dbias from the sums of dy.
 *   A layer with a fused activation first recomputes the pre-activation
 *   from z (the forward's combination without the activation) and takes
 *   dy * act'(pre) as dy: mixture runs such layers, cudnn_grouped does not.
 *   No per-sample filter or filter gradient exists; the price is E times the
 *   static convolution's MACs in each of the three convolutions, and E
 *   times y in the workspace. Where |W| is large against the output (late,
 *   wide 1x1 layers at small resolution) this wins on paper; where the
 *   output is large against |W| (early layers) the baseline does.
 *
 * CONDCONV_BWD_ALGO_FOLDED_WGRAD, the baseline's dx with condconv's own
 * weight gradient (kernels/backward_wgrad.h):
 *   1. dx exactly as cudnn_grouped's steps 1-2 (cuDNN's backward data
 *      only: no filter algorithm is chosen or given workspace);
 *   2. dW_e and dalpha_be from one implicit GEMM over N*pixels that reads
 *      x and dy as the caller gave them (any padding, layout and dtype):
 *      each block makes a tile of G_b on chip, sample by sample, folds it
 *      into E accumulators and dots it with W_e. G_b never reaches memory
 *      (the baseline writes and reads N |W| of it, in the dtype; here it
 *      stays f32), so its cost is about one static weight gradient per
 *      chunk of 8 experts, without tensor cores: a candidate.
 *   Like cudnn_grouped it has no pre-activation, so no fused activation.
 *
 * No GPU has timed the three: AUTO measures every one that applies at
 * prepare under CONDCONV_SELECT_MEASURE. */
#ifndef CONDCONV_HOST_BACKWARD_PLAN_H
#define CONDCONV_HOST_BACKWARD_PLAN_H

#include "backward_args.h"
#include "condconv.h"
#include "cudnn_conv_backward.h"
#include "backward_wgrad.h"
#include "gather.h"
#include "layer.h"

typedef struct cc_bwd_plan {
    int n, h, w;
    condconv_math math;
    condconv_bwd_algo requested;
    condconv_algo_select select;
    condconv_bwd_algo algo; /* what runs: CUDNN_GROUPED, MIXTURE or FOLDED_WGRAD */
    int deterministic;      /* cuDNN's algorithms limited to deterministic ones (the layer's setting) */
    cc_geometry geom;
    /* cuDNN's backward data and filter: the batch as groups
     * (cudnn_grouped; folded_wgrad, backward data only), or the stacked
     * static convolution (mixture). */
    cc_cudnn_conv_bwd conv;
    /* folded_wgrad: the weight-gradient kernel's geometry (x and dy as the
     * caller gives them, in the layer's layout). */
    cc_wgrad_args wgrad;
    /* mixture: the stacked forward, for z. */
    cc_cudnn_conv fwd;
    int has_fwd;
    /* The layouts cuDNN sees: x gathered (padded for asymmetric padding;
     * cudnn_grouped: transposed from NHWC too) when x_gathered, else x
     * itself, or a copy of it when less than 16-byte aligned; dy transposed
     * from NHWC for cudnn_grouped, or copied when less than 16-byte aligned
     * (mixture's kernels read dy as it is); dx computed in the workspace
     * and gathered into the caller's dx (cropped, transposed) when
     * dx_scattered, or when dx is less than 16-byte aligned. */
    int x_gathered, dy_transposed, dx_scattered;
    cc_gather_args x_args, x_copy_args, dy_args, dx_args;
    /* Byte offsets of the workspace's pieces (0-sized where the algorithm
     * has no such piece). */
    size_t off_alpha, off_pooled, off_dysum, off_dalpha, off_dlogits, off_dpooled, off_reduce_scratch;
    size_t off_filters, off_grads, off_x, off_dy, off_dx, off_cudnn;
    size_t off_mix;   /* mixture: z, then dy_mix, [N][E*Cout][pixels] in the dtype */
    size_t off_dyact; /* mixture, a fused activation: pre, then dy * act'(pre), like y */
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
