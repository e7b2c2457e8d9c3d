/* Plans: what a layer runs for one input shape. Made once per
 * (N, H, W, math, requested algorithm) by condconv_prepare (or implicitly by
 * the first forward outside a graph capture), cached in the layer, and
 * executed by condconv_forward without allocation or synchronisation. */
#ifndef CONDCONV_HOST_PLAN_H
#define CONDCONV_HOST_PLAN_H

#include "algo.h"
#include "condconv.h"
#include "layer.h"

typedef struct cc_plan {
    int n, h, w;
    condconv_math math;
    condconv_algo requested;
    char forced_variant[48];              /* the layer's, when the plan was made */
    int forced_routing, forced_aggregate; /* likewise */
    cc_geometry geom;
    /* What runs for x and y both CC_LIB_ALIGNMENT-aligned (state), and for
     * any less-aligned x or y (state_unaligned, which stages them;
     * staging.h). AUTO measures each candidate in both alignment classes;
     * where one algorithm wins both (and always when forced or chosen by
     * rule), unaligned_same is set and state serves both. */
    cc_algo_state state;
    cc_algo_state state_unaligned;
    int unaligned_same;
    size_t alpha_bytes;     /* the workspace starts with alpha [N][E], 256-aligned */
    size_t workspace_bytes; /* alpha_bytes + the larger of the two states' workspace_bytes */
    condconv_plan_info info;
    /* The routing kernel's split over blocks (kernels/routing.h) and its
     * buffers, owned by the plan: partial logits, then N counters that the
     * kernel leaves at zero. NULL when routing_splits == 1 or external. */
    int routing_variant; /* kernels/routing.h's variant (plan_auto.c chooses) */
    int routing_splits;
    void *routing_block;
    float *routing_partial;
    unsigned int *routing_counters;
    int aggregate_variant; /* kernels/aggregate.h's variant, copied into the states that aggregate */
} cc_plan;

/* NOT_PREPARED when the context's stream is capturing (a plan cannot be
 * made then: it may allocate and synchronise). */
condconv_status cc_check_not_capturing(condconv_context_t ctx, const char *func);

/* The cached plan for this shape under the layer's current settings, or NULL. */
cc_plan *cc_plan_lookup(const struct condconv_layer *layer, int n, int h, int w);

/* Looks the plan up, creating it if needed. Fails with NOT_PREPARED if it
 * would have to be created while the context's stream is capturing. */
condconv_status cc_plan_get(struct condconv_layer *layer, int n, int h, int w, cc_plan **plan, const char *func);

/* The routing kernel's split for `variant` at the plan's shape and, when it
 * splits, its buffers (one allocation, the counters zeroed once: the kernel
 * leaves them zero). NOT_SUPPORTED if the variant does not run the shape. */
condconv_status cc_plan_routing_create(const struct condconv_layer *layer, cc_plan *plan, int variant,
                                       const char *func);
/* Frees them (the plan then routes in one block per sample). */
void cc_plan_routing_destroy(cc_plan *plan);

/* The routing kernel on the context's stream, split as the plan says (plan
 * may be NULL: one block per sample). */
condconv_status cc_plan_route(const struct condconv_layer *layer, const cc_plan *plan, int n, int h, int w,
                              const void *x, float *alpha, const char *func);

/* Routing into the workspace (or external weights read in place), then the
 * algorithm, then the copy of the routing weights into routing_out (if not
 * NULL), on the context's stream: routing_out is written only after every
 * launch of the forward has been accepted. The workspace is at least
 * plan->workspace_bytes. */
condconv_status cc_plan_execute(const struct condconv_layer *layer, const cc_plan *plan, const void *x, void *y,
                                const float *routing_in, float *routing_out, void *workspace, const char *func);

#endif
