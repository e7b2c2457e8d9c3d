/* The layer: parameters (host copy always, device copy on a GPU context),
 * shared by reference count between layers created with
 * condconv_layer_create_shared, and this layer's own cache of plans. */
#ifndef CONDCONV_HOST_LAYER_H
#define CONDCONV_HOST_LAYER_H

#include <stdatomic.h>

#include "condconv.h"
#include "layer_desc.h"
#include "reference.h"

struct cc_plan;

typedef struct cc_weights {
    atomic_int refs;
    condconv_layer_info info;
    cc_param_sizes sizes;
    int device; /* where the device copy lives, or CONDCONV_DEVICE_CPU */
    /* Host copy, f32. routing_bias is zeros when the caller gave none. */
    float *experts;        /* [E][Cout][Cin/g][kh][kw] */
    float *expert_bias;    /* [E][Cout] or NULL */
    float *routing_weight; /* [E][Cin] or NULL with external routing */
    float *routing_bias;   /* [E] or NULL with external routing */
    /* Device copy: one allocation, carved in 256-byte aligned pieces. The
     * experts are in the layer's dtype (what the kernels, cuDNN and cuBLAS
     * read); biases and the routing function are f32 (exact conversions of
     * the dtype's values: they are added and accumulated in f32 anyway). */
    void *dev_block;
    const void *dev_experts; /* [E][Cout][Cin/g][kh][kw] */
    /* Filters of the mixture's static conv with E*Cout outputs, in the order a
     * grouped conv wants: [g][E][Cout/g][Cin/g][kh][kw] for NCHW layers (=
     * dev_experts if g == 1), [g][E][Cout/g][kh][kw][Cin/g] (cuDNN's NHWC
     * filter format) for NHWC layers. */
    const void *dev_experts_grouped;
    /* The fused algorithm's packings, NULL for depthwise layers:
     * kernels/fused_conv.h's (f32; f32 layers only, else NULL) and
     * kernels/fused_conv_tc.h's (the dtype; f32 layers run it with TF32). */
    const float *dev_experts_fused;
    const void *dev_experts_fused_tc;
    const float *dev_expert_bias;      /* [E][Cout] or NULL */
    const float *dev_routing_weight_t; /* [Cin][E]: transposed, so a warp reads one channel's E weights at once */
    const float *dev_routing_bias;     /* [E] */
} cc_weights;

struct condconv_layer {
    condconv_context_t ctx;
    cc_weights *weights;
    condconv_algo requested;
    /* condconv_layer_set_candidate's variant name ("" for none: AUTO's
     * choice, or the forced algorithm's default) and the forced routing and
     * aggregation kernel variants (-1: AUTO times them). */
    char forced_variant[48];
    int forced_routing, forced_aggregate;
    struct cc_plan **plans;
    int plan_count, plan_capacity;
    /* The backward's (backward_plan.h): the algorithm asked for and the
     * plans per shape. */
    condconv_bwd_algo bwd_requested;
    int bwd_nondeterministic; /* condconv_layer_set_backward_deterministic(layer, 0) */
    struct cc_bwd_plan **bwd_plans;
    int bwd_plan_count, bwd_plan_capacity;
};

/* The layer's parameters as the reference wants them. */
cc_host_params cc_layer_host_params(const struct condconv_layer *layer);

/* Checks the arguments every forward shares (a live layer, x, y, shape,
 * routing weights for external routing, no overlap between the buffers)
 * and computes the geometry. */
condconv_status cc_layer_check_forward(const struct condconv_layer *layer, int n, int h, int w, const void *x,
                                       const void *y, const void *routing_in, const void *routing_out,
                                       cc_geometry *geom, const char *func);

/* BAD_VALUE naming the pair when x, y, routing_in (external routing only)
 * and routing_out overlap where the forward would read one while writing
 * another (NULL pointers overlap nothing). */
condconv_status cc_check_forward_overlap(const condconv_layer_info *info, const cc_geometry *geom, const void *x,
                                         const void *y, const void *routing_in, const void *routing_out,
                                         const char *func);

/* x, y, dy, dx and the f32 buffers of the GPU calls need the alignment of
 * their element type, nothing more: our kernels test for 16 bytes at launch
 * and take their scalar paths otherwise, and what cuDNN or cuBLAS would
 * touch less than 16-byte aligned is staged through the workspace
 * (staging.h). MISALIGNED naming `name` otherwise (NULL passes). */
condconv_status cc_check_element_alignment(const void *ptr, size_t elem, const char *name, const char *func);

/* The workspace a GPU call was given against the `needed` bytes of its plan:
 * WORKSPACE_TOO_SMALL (naming `query`, the call that says the size), NULL
 * while bytes are needed, or not CONDCONV_WORKSPACE_ALIGNMENT-aligned. */
condconv_status cc_check_workspace(const void *workspace, size_t given, size_t needed, int n, int h, int w,
                                   const char *query, const char *func);

/* "f32", "f16" or "bf16"; "NCHW" or "NHWC" (for messages). */
const char *cc_dtype_name(condconv_dtype dtype);
const char *cc_layout_name(condconv_layout layout);

/* Frees the plans of a layer (plan.c). */
void cc_layer_release_plans(struct condconv_layer *layer);

#endif
