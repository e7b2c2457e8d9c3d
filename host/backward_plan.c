/* Backward plans (backward_plan.h): creation of either algorithm, AUTO's
 * choice between them, the per-layer cache, and execution. */
#include "backward_plan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregate.h"
#include "algo.h"
#include "backward.h"
#include "backward_mixture.h"
#include "backward_wgrad.h"
#include "epilogue.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "nvtx.h"
#include "plan.h"
#include "plan_auto.h"
#include "scratch.h"
#include "staging.h"

static int lib_unaligned(const void *p) { return ((uintptr_t)p % CC_LIB_ALIGNMENT) != 0; }

/* One tap per position: a copy, a crop (negative padding) or a transpose
 * between NCHW planes and NHWC rows (kernels/gather.h). */
static cc_gather_args copy_args(condconv_dtype dtype, condconv_layout in_layout, int out_order, int n, int channels,
                                int h, int w, int out_h, int out_w, int pad_top, int pad_left)
{
    cc_gather_args a;
    memset(&a, 0, sizeof a);
    a.dtype = (int)dtype;
    a.in_layout = (int)in_layout;
    a.out_order = out_order;
    a.n = n;
    a.channels = channels;
    a.h = h;
    a.w = w;
    a.kernel_h = a.kernel_w = 1;
    a.out_h = out_h;
    a.out_w = out_w;
    a.stride_h = a.stride_w = a.dilation_h = a.dilation_w = 1;
    a.pad_top = pad_top;
    a.pad_left = pad_left;
    return a;
}

static void bwd_plan_destroy(cc_bwd_plan *plan)
{
    if (plan == NULL) return;
    cc_cudnn_conv_bwd_destroy(&plan->conv);
    if (plan->has_fwd) cc_cudnn_conv_destroy(&plan->fwd);
    free(plan);
}

void cc_bwd_release_plans(struct condconv_layer *layer)
{
    for (int i = 0; i < layer->bwd_plan_count; ++i) bwd_plan_destroy(layer->bwd_plans[i]);
    free(layer->bwd_plans);
    layer->bwd_plans = NULL;
    layer->bwd_plan_count = layer->bwd_plan_capacity = 0;
}

static cc_bwd_plan *bwd_plan_lookup(const struct condconv_layer *layer, int n, int h, int w)
{
    for (int i = 0; i < layer->bwd_plan_count; ++i) {
        cc_bwd_plan *p = layer->bwd_plans[i];
        if (p->n == n && p->h == h && p->w == w && p->math == layer->ctx->math &&
            p->requested == layer->bwd_requested && p->select == layer->ctx->select &&
            p->deterministic == !layer->bwd_nondeterministic)
            return p;
    }
    return NULL;
}

/* The workspace's pieces, in order, each 256-byte aligned; `shape` is the
 * convolution cuDNN runs (its input plane is dx's region). */
static void layout_workspace(const struct condconv_layer *layer, cc_bwd_plan *p, const cc_conv_shape *shape)
{
    const condconv_layer_info *info = &layer->weights->info;
    const cc_geometry *g = &p->geom;
    const size_t elem = cc_dtype_size(info->dtype);
    const size_t n = (size_t)g->n, cin = (size_t)info->in_channels, cout = (size_t)info->out_channels;
    const size_t e = (size_t)info->num_experts, k = (size_t)layer->weights->sizes.filter_elems;
    const int self = info->routing != CONDCONV_ROUTING_EXTERNAL;
    const int mixture = p->algo == CONDCONV_BWD_ALGO_MIXTURE;
    const int folded = p->algo == CONDCONV_BWD_ALGO_FOLDED_WGRAD;
    size_t off = 0;
#define CC_PIECE(field, bytes)                                                                                         \
    do {                                                                                                               \
        p->field = off;                                                                                                \
        off += cc_align256(bytes);                                                                                     \
    } while (0)
    CC_PIECE(off_alpha, self ? sizeof(float) * n * e : 0);
    CC_PIECE(off_pooled, self ? sizeof(float) * n * cin : 0);
    CC_PIECE(off_dysum, info->has_bias ? sizeof(float) * n * cout : 0);
    CC_PIECE(off_dalpha, sizeof(float) * n * e);
    CC_PIECE(off_dlogits, self ? sizeof(float) * n * e : 0);
    CC_PIECE(off_dpooled, self ? sizeof(float) * n * cin : 0);
    /* d_alpha's split-K partials (folded_wgrad: and the batch split's partial d_experts). */
    const size_t reduce_elems =
        mixture  ? cc_bwd_mixture_dalpha_scratch_elems((int)n, (int)cout, (int)e, (long long)g->out_h * g->out_w)
        : folded ? cc_bwd_wgrad_scratch_elems(&p->wgrad)
                 : cc_bwd_experts_scratch_elems((long long)k, (int)cout, (int)n, (int)e);
    CC_PIECE(off_reduce_scratch, sizeof(float) * reduce_elems);
    /* cudnn_grouped: the per-sample filters and filter gradients
     * (folded_wgrad: the filters only); mixture: the stacked filters'
     * gradient (E |W|, in the dtype) in off_filters. */
    CC_PIECE(off_filters, elem * (mixture ? e : n) * k);
    CC_PIECE(off_grads, mixture || folded ? 0 : elem * n * k);
    CC_PIECE(off_mix, mixture ? elem * e * (size_t)g->y_elems : 0);
    /* mixture with an activation: the pre-activation, then dy through the activation's derivative. */
    CC_PIECE(off_dyact, mixture && info->activation != CONDCONV_ACTIVATION_NONE ? elem * (size_t)g->y_elems : 0);
    /* x for cuDNN: gathered, or a copy of an unaligned x (the larger);
     * folded_wgrad's kernel reads x itself. */
    const size_t x_bytes = folded ? 0 : elem * (size_t)g->x_elems;
    const size_t gathered = p->x_gathered && !folded ? elem * (size_t)cc_gather_elems(&p->x_args) : 0;
    CC_PIECE(off_x, gathered > x_bytes ? gathered : x_bytes);
    /* dy for cuDNN (cudnn_grouped only: the mixture's kernels read dy). */
    CC_PIECE(off_dy, mixture ? 0 : elem * (size_t)g->y_elems);
    p->dx_region_bytes = elem * n * cin * (size_t)shape->h * (size_t)shape->w;
    CC_PIECE(off_dx, p->dx_region_bytes);
    size_t cudnn_ws = p->conv.data_workspace_bytes > p->conv.filter_workspace_bytes ? p->conv.data_workspace_bytes
                                                                                    : p->conv.filter_workspace_bytes;
    if (p->has_fwd && p->fwd.workspace_bytes > cudnn_ws) cudnn_ws = p->fwd.workspace_bytes;
    CC_PIECE(off_cudnn, cudnn_ws);
#undef CC_PIECE
    p->workspace_bytes = off;
}

/* cudnn_grouped's convolutions: NCHW, the batch folded into channels and
 * groups, asymmetric padding gathered (the forward's cudnn_grouped view);
 * folded_wgrad's dx is the same backward data, without cuDNN's filter
 * direction (with_filter 0). */
static condconv_status setup_cudnn_grouped(const struct condconv_layer *layer, cc_bwd_plan *plan, cc_scratch *scratch,
                                           cc_conv_shape *shape, int with_filter, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const cc_geometry *geom = &plan->geom;
    const int n = geom->n;
    if (info->activation != CONDCONV_ACTIVATION_NONE)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: %s does not run the backward of a layer with a fused activation (it has no "
                       "pre-activation to differentiate at; mixture recomputes it from its stacked forward)",
                       func, condconv_bwd_algo_name(plan->algo));
    /* The forward's batch-as-groups limits: N*Cin, N*Cout and N*|W| within int. */
    CC_TRY(cc_algo_lookup(CONDCONV_ALGO_CUDNN_GROUPED)->check(layer, geom, func));
    cc_algo_state view;
    memset(&view, 0, sizeof view);
    cc_plan_gather_for_cudnn(layer, geom, 1, &view);
    *shape = cc_conv_shape_for(layer, geom, &view);
    shape->n = 1;
    shape->c = n * info->in_channels;
    shape->k = n * info->out_channels;
    shape->groups = n * info->groups;
    plan->x_gathered = view.gather;
    plan->x_args = view.gather_args;
    plan->x_copy_args = copy_args(info->dtype, CONDCONV_LAYOUT_NCHW, CC_GATHER_PLANES, n, info->in_channels, plan->h,
                                  plan->w, plan->h, plan->w, 0, 0);
    const int nhwc = info->layout == CONDCONV_LAYOUT_NHWC;
    plan->dy_transposed = nhwc;
    plan->dy_args = copy_args(info->dtype, info->layout, CC_GATHER_PLANES, n, info->out_channels, geom->out_h,
                              geom->out_w, geom->out_h, geom->out_w, 0, 0);
    /* dx as cuDNN computes it is [N][Cin][shape.h][shape.w]: the padded
     * plane when the padding was gathered; the caller's dx is cropped out. */
    const int padded = shape->h != plan->h || shape->w != plan->w;
    plan->dx_scattered = nhwc || padded;
    plan->dx_args =
        copy_args(info->dtype, CONDCONV_LAYOUT_NCHW, nhwc ? CC_GATHER_ROWS : CC_GATHER_PLANES, n, info->in_channels,
                  shape->h, shape->w, plan->h, plan->w, padded ? -geom->pad_top : 0, padded ? -geom->pad_left : 0);
    return cc_cudnn_conv_bwd_create(layer->ctx, shape, plan->math, plan->deterministic, with_filter, scratch,
                                    &plan->conv, func);
}

/* folded_wgrad: cudnn_grouped's dx, and the weight-gradient kernel's
 * geometry (the forward's, on x and dy as the caller gives them). */
static condconv_status setup_folded_wgrad(const struct condconv_layer *layer, cc_bwd_plan *plan, cc_scratch *scratch,
                                          cc_conv_shape *shape, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const cc_geometry *geom = &plan->geom;
    cc_wgrad_args *a = &plan->wgrad;
    memset(a, 0, sizeof *a);
    a->dtype = (int)info->dtype;
    a->layout = (int)info->layout;
    a->n = geom->n;
    a->cin = info->in_channels;
    a->h = geom->h;
    a->w = geom->w;
    a->cout = info->out_channels;
    a->groups = info->groups;
    a->kernel_h = info->kernel_h;
    a->kernel_w = info->kernel_w;
    a->stride_h = info->stride_h;
    a->stride_w = info->stride_w;
    a->dilation_h = info->dilation_h;
    a->dilation_w = info->dilation_w;
    a->pad_top = geom->pad_top;
    a->pad_left = geom->pad_left;
    a->out_h = geom->out_h;
    a->out_w = geom->out_w;
    a->e = info->num_experts;
    if (cc_bwd_wgrad_scratch_elems(a) == 0)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: folded_wgrad's kernel does not take this shape (N %d, Cin %d, %dx%d, Cout %d, E %d: an "
                       "element count of x, dy or the experts past 2^31)",
                       func, geom->n, info->in_channels, geom->h, geom->w, info->out_channels, info->num_experts);
    return setup_cudnn_grouped(layer, plan, scratch, shape, 0, func);
}

/* mixture's convolutions: the real batch, E*Cout filters in the grouped
 * order, in the layer's layout; only asymmetric padding is gathered. */
static condconv_status setup_mixture(const struct condconv_layer *layer, cc_bwd_plan *plan, cc_scratch *scratch,
                                     cc_conv_shape *shape, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const cc_geometry *geom = &plan->geom;
    const int n = geom->n;
    /* The forward's mixture limits: E*Cout and E*|y| within int. */
    CC_TRY(cc_algo_lookup(CONDCONV_ALGO_MIXTURE)->check(layer, geom, func));
    cc_algo_state view;
    memset(&view, 0, sizeof view);
    cc_plan_gather_for_cudnn(layer, geom, 0, &view);
    *shape = cc_conv_shape_for(layer, geom, &view);
    shape->n = n;
    shape->c = info->in_channels;
    shape->k = info->num_experts * info->out_channels;
    shape->groups = info->groups;
    const int nhwc = info->layout == CONDCONV_LAYOUT_NHWC;
    const int order = nhwc ? CC_GATHER_ROWS : CC_GATHER_PLANES;
    plan->x_gathered = view.gather;
    plan->x_args = view.gather_args;
    plan->x_copy_args =
        copy_args(info->dtype, info->layout, order, n, info->in_channels, plan->h, plan->w, plan->h, plan->w, 0, 0);
    plan->dy_transposed = 0;
    const int padded = shape->h != plan->h || shape->w != plan->w;
    plan->dx_scattered = padded;
    plan->dx_args = copy_args(info->dtype, info->layout, order, n, info->in_channels, shape->h, shape->w, plan->h,
                              plan->w, padded ? -geom->pad_top : 0, padded ? -geom->pad_left : 0);
    CC_TRY(cc_cudnn_conv_bwd_create(layer->ctx, shape, plan->math, plan->deterministic, 1, scratch, &plan->conv, func));
    /* Deterministic like every cuDNN forward condconv runs (cudnn_conv.c
     * takes algorithms that sum directly, in a fixed order). */
    CC_TRY(cc_cudnn_conv_create(layer->ctx, shape, plan->math, plan->select, 0, scratch, &plan->fwd, func));
    plan->has_fwd = 1;
    return CONDCONV_STATUS_SUCCESS;
}

/* A plan of one algorithm for this shape (not cached). */
static condconv_status bwd_plan_create_algo(struct condconv_layer *layer, const cc_geometry *geom,
                                            condconv_bwd_algo algo, cc_scratch *scratch, cc_bwd_plan **out,
                                            const char *func)
{
    condconv_context_t ctx = layer->ctx;
    cc_bwd_plan *plan = calloc(1, sizeof *plan);
    if (plan == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    plan->n = geom->n;
    plan->h = geom->h;
    plan->w = geom->w;
    plan->math = ctx->math;
    plan->requested = layer->bwd_requested;
    plan->select = ctx->select;
    plan->algo = algo;
    plan->deterministic = !layer->bwd_nondeterministic;
    plan->geom = *geom;
    cc_conv_shape shape;
    const condconv_status st = algo == CONDCONV_BWD_ALGO_MIXTURE ? setup_mixture(layer, plan, scratch, &shape, func)
                               : algo == CONDCONV_BWD_ALGO_FOLDED_WGRAD
                                   ? setup_folded_wgrad(layer, plan, scratch, &shape, func)
                                   : setup_cudnn_grouped(layer, plan, scratch, &shape, 1, func);
    if (st != CONDCONV_STATUS_SUCCESS) {
        bwd_plan_destroy(plan);
        return st;
    }
    layout_workspace(layer, plan, &shape);

    condconv_backward_plan_info *pi = &plan->info;
    pi->algo = algo;
    pi->requested = layer->bwd_requested;
    pi->select = ctx->select;
    pi->math = ctx->math;
    pi->workspace_bytes = plan->workspace_bytes;
    /* condconv's kernels always are; cuDNN's choices say for themselves (a
     * forward algorithm sums in a fixed order). */
    pi->deterministic = plan->conv.deterministic;
    snprintf(pi->reason, sizeof pi->reason, "forced");
    char conv_desc[200];
    cc_cudnn_conv_bwd_describe(&plan->conv, conv_desc, sizeof conv_desc);
    if (plan->has_fwd) {
        char fwd_desc[96];
        cc_cudnn_conv_describe(&plan->fwd, fwd_desc, sizeof fwd_desc);
        snprintf(pi->backend, sizeof pi->backend, "%.140s; z: %.64s; condconv reductions in a fixed order", conv_desc,
                 fwd_desc);
    } else if (algo == CONDCONV_BWD_ALGO_FOLDED_WGRAD) {
        snprintf(pi->backend, sizeof pi->backend,
                 "%.160s; condconv folded weight gradient (f32, G_b on chip), fixed-order reductions", conv_desc);
    } else {
        snprintf(pi->backend, sizeof pi->backend, "%s; condconv reductions in a fixed order", conv_desc);
    }
    *out = plan;
    return CONDCONV_STATUS_SUCCESS;
}

/* --- AUTO ------------------------------------------------------------------------------------------ */

/* A backward computing every gradient the layer has, on scratch buffers:
 * what AUTO times. */
typedef struct timed_backward {
    const struct condconv_layer *layer;
    const cc_bwd_plan *plan;
    const void *x, *routing_in, *dy;
    cc_backward_outputs out;
    void *workspace;
} timed_backward;

static condconv_status run_backward(const void *arg, const char *func)
{
    const timed_backward *t = arg;
    return cc_bwd_plan_execute(t->layer, t->plan, t->x, t->routing_in, t->dy, &t->out, t->workspace, func);
}

/* Times the plan's backward (median of event-timed runs after a warm-up). */
static condconv_status time_plan(const struct condconv_layer *layer, const cc_bwd_plan *plan, cc_scratch *scratch,
                                 float *us, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const cc_geometry *g = &plan->geom;
    const size_t elem = cc_dtype_size(info->dtype);
    const int external = info->routing == CONDCONV_ROUTING_EXTERNAL;
    const size_t ne = (size_t)g->n * (size_t)info->num_experts;
    /* The buffers, carved from one scratch slot in 256-byte pieces. */
    const size_t sizes[] = {
        elem * (size_t)g->x_elems,                                                      /* x */
        elem * (size_t)g->y_elems,                                                      /* dy */
        elem * (size_t)g->x_elems,                                                      /* dx */
        sizeof(float) * ne,                                                             /* routing_in */
        sizeof(float) * ne,                                                             /* d_routing_in */
        sizeof(float) * (size_t)info->num_experts * layer->weights->sizes.filter_elems, /* d_experts */
        sizeof(float) * (size_t)info->num_experts * (size_t)info->out_channels,         /* d_expert_bias */
        sizeof(float) * (size_t)info->num_experts * ((size_t)info->in_channels + 1),    /* d_routing_* */
    };
    enum { X, DY, DX, RIN, DRIN, DEXP, DBIAS, DROUTE, COUNT };
    size_t offs[COUNT], total = 0;
    for (int i = 0; i < COUNT; ++i) {
        offs[i] = total;
        total += cc_align256(sizes[i]);
    }
    void *block, *ws;
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, total, &block, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, plan->workspace_bytes, &ws, func));
    unsigned char *b = block;
    float *droute = (float *)(void *)(b + offs[DROUTE]);
    timed_backward t = {layer, plan, b + offs[X], external ? b + offs[RIN] : NULL, b + offs[DY], {0}, ws};
    t.out.dx = b + offs[DX];
    t.out.d_routing_in = external ? (float *)(void *)(b + offs[DRIN]) : NULL;
    t.out.d_experts = (float *)(void *)(b + offs[DEXP]);
    t.out.d_expert_bias = info->has_bias ? (float *)(void *)(b + offs[DBIAS]) : NULL;
    t.out.d_routing_weight = external ? NULL : droute;
    t.out.d_routing_bias = external ? NULL : droute + (size_t)info->num_experts * (size_t)info->in_channels;
    return cc_auto_time_runs(layer->ctx->stream, run_backward, &t, 0.0f, us, func);
}

/* A candidate that does not apply or could not be prepared is skipped;
 * anything else (a CUDA error, memory) stops AUTO. */
static int skippable(condconv_status st)
{
    return st == CONDCONV_STATUS_NOT_SUPPORTED || st == CONDCONV_STATUS_CUDNN_ERROR;
}

/* MEASURE: every algorithm that applies, timed; the fastest kept. */
static condconv_status choose_by_measuring(struct condconv_layer *layer, const cc_geometry *geom, cc_scratch *scratch,
                                           cc_bwd_plan **out, const char *func)
{
    static const condconv_bwd_algo algos[] = {CONDCONV_BWD_ALGO_CUDNN_GROUPED, CONDCONV_BWD_ALGO_MIXTURE,
                                              CONDCONV_BWD_ALGO_FOLDED_WGRAD};
    enum { COUNT = sizeof algos / sizeof algos[0] };
    cc_bwd_plan *plans[COUNT] = {NULL};
    float us[COUNT];
    condconv_status first_failure = CONDCONV_STATUS_SUCCESS;
    int best = -1;
    for (int i = 0; i < COUNT; ++i) {
        condconv_status st = bwd_plan_create_algo(layer, geom, algos[i], scratch, &plans[i], func);
        if (st == CONDCONV_STATUS_SUCCESS) {
            st = time_plan(layer, plans[i], scratch, &us[i], func);
            if (st != CONDCONV_STATUS_SUCCESS) {
                bwd_plan_destroy(plans[i]);
                plans[i] = NULL;
            }
        }
        if (st == CONDCONV_STATUS_SUCCESS) {
            if (best < 0 || us[i] < us[best]) best = i;
        } else if (skippable(st)) {
            if (first_failure == CONDCONV_STATUS_SUCCESS) first_failure = st;
        } else {
            for (int j = 0; j < COUNT; ++j) bwd_plan_destroy(plans[j]);
            return st;
        }
    }
    if (best < 0) return first_failure; /* every candidate refused: the first one's message stands */
    cc_bwd_plan *plan = plans[best];
    char *reason = plan->info.reason;
    size_t len = (size_t)snprintf(reason, sizeof plan->info.reason, "measured:");
    for (int i = 0; i < COUNT && len < sizeof plan->info.reason; ++i)
        len += plans[i] != NULL
                   ? (size_t)snprintf(reason + len, sizeof plan->info.reason - len, "%s %s%s %.1f us", i ? "," : "",
                                      i == best ? "*" : "", condconv_bwd_algo_name(algos[i]), (double)us[i])
                   : (size_t)snprintf(reason + len, sizeof plan->info.reason - len, "%s %s n/a", i ? "," : "",
                                      condconv_bwd_algo_name(algos[i]));
    for (int i = 0; i < COUNT; ++i)
        if (i != best) bwd_plan_destroy(plans[i]);
    *out = plan;
    return CONDCONV_STATUS_SUCCESS;
}

/* The plan for this shape: the forced algorithm, or AUTO's choice. */
static condconv_status bwd_plan_create(struct condconv_layer *layer, int n, int h, int w, cc_bwd_plan **out,
                                       const char *func)
{
    condconv_context_t ctx = layer->ctx;
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(&layer->weights->info, n, h, w, &geom, func));
    CC_TRY(cc_check_not_capturing(ctx, func));
    CC_TRY(cc_context_gpu_begin(ctx, func));
    if (layer->bwd_plan_count == layer->bwd_plan_capacity) {
        const int cap = layer->bwd_plan_capacity ? 2 * layer->bwd_plan_capacity : 4;
        /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers, sized by the pointer, as meant */
        cc_bwd_plan **grown = realloc(layer->bwd_plans, sizeof *grown * (size_t)cap);
        if (grown == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
        layer->bwd_plans = grown;
        layer->bwd_plan_capacity = cap;
    }
    cc_scratch scratch = {0};
    scratch.stream = ctx->stream;
    cc_bwd_plan *plan = NULL;
    condconv_status st;
    if (layer->bwd_requested != CONDCONV_BWD_ALGO_AUTO) {
        st = bwd_plan_create_algo(layer, &geom, layer->bwd_requested, &scratch, &plan, func);
    } else if (ctx->select == CONDCONV_SELECT_MEASURE) {
        st = choose_by_measuring(layer, &geom, &scratch, &plan, func);
    } else {
        /* The rule: the design card's baseline, which no measurement has
         * displaced yet; mixture where the baseline does not apply. */
        st = bwd_plan_create_algo(layer, &geom, CONDCONV_BWD_ALGO_CUDNN_GROUPED, &scratch, &plan, func);
        const char *why = "heuristic: cudnn_grouped, the design card's baseline (no GPU has timed the algorithms "
                          "yet; CONDCONV_SELECT_MEASURE times them)";
        if (st == CONDCONV_STATUS_NOT_SUPPORTED) {
            st = bwd_plan_create_algo(layer, &geom, CONDCONV_BWD_ALGO_MIXTURE, &scratch, &plan, func);
            why = "heuristic: mixture, since cudnn_grouped does not run this shape";
        }
        if (st == CONDCONV_STATUS_SUCCESS) snprintf(plan->info.reason, sizeof plan->info.reason, "%s", why);
    }
    cc_scratch_free(&scratch);
    if (st != CONDCONV_STATUS_SUCCESS) return st;
    layer->bwd_plans[layer->bwd_plan_count++] = plan;
    *out = plan;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_bwd_plan_get(struct condconv_layer *layer, int n, int h, int w, cc_bwd_plan **plan, const char *func)
{
    CC_TRY(cc_context_require_gpu(layer->ctx, func));
    if ((int)layer->bwd_requested < 0 || layer->bwd_requested >= CONDCONV_BWD_ALGO_COUNT)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown backward algorithm %d", func, (int)layer->bwd_requested);
    *plan = bwd_plan_lookup(layer, n, h, w);
    if (*plan != NULL) return CONDCONV_STATUS_SUCCESS;
    return bwd_plan_create(layer, n, h, w, plan, func);
}

/* --- execution -------------------------------------------------------------------------------------- */

static condconv_status gather(const struct condconv_layer *layer, const void *src, void *dst,
                              const cc_gather_args *args, const char *func)
{
    return cc_cuda_status(cc_launch_gather(src, dst, args, layer->ctx->stream), "cc_launch_gather", func);
}

/* What one backward call computes, and the buffers every step shares. */
typedef struct bwd_run {
    const struct condconv_layer *layer;
    const cc_bwd_plan *plan;
    const void *x, *dy;
    const cc_backward_outputs *out;
    unsigned char *ws;
    const float *alpha;
    float *dalpha, *dysum;
    int need_dalpha, need_dysum;
    void *dx_c;           /* where dx is computed: dx, or the workspace's dx region */
    const void *x_cudnn;  /* x as cuDNN reads it, once gathered (NULL before) */
    const void *dy_cudnn; /* dy as cudnn_grouped's cuDNN calls read it, once transposed (NULL before) */
    int z_ready;          /* mixture: z is in the workspace already (mixture_activation) */
} bwd_run;

/* x as the plan's cuDNN calls read it: gathered or copied into the
 * workspace once, on first use. */
static condconv_status x_for_cudnn(bwd_run *r, const char *func)
{
    if (r->x_cudnn != NULL) return CONDCONV_STATUS_SUCCESS;
    const cc_bwd_plan *plan = r->plan;
    r->x_cudnn = r->x;
    if (!plan->x_gathered && !lib_unaligned(r->x)) return CONDCONV_STATUS_SUCCESS;
    r->x_cudnn = r->ws + plan->off_x;
    return gather(r->layer, r->x, r->ws + plan->off_x, plan->x_gathered ? &plan->x_args : &plan->x_copy_args, func);
}

/* dy as cudnn_grouped's cuDNN calls read it: in NCHW (transposed from
 * NHWC) and 16-byte aligned, copied into the workspace once if needed. */
static condconv_status dy_for_cudnn(bwd_run *r, const char *func)
{
    if (r->dy_cudnn != NULL) return CONDCONV_STATUS_SUCCESS;
    const cc_bwd_plan *plan = r->plan;
    r->dy_cudnn = r->dy;
    if (!plan->dy_transposed && !lib_unaligned(r->dy)) return CONDCONV_STATUS_SUCCESS;
    r->dy_cudnn = r->ws + plan->off_dy;
    return gather(r->layer, r->dy, r->ws + plan->off_dy, &plan->dy_args, func);
}

/* cudnn_grouped and folded_wgrad: dx = W_b^T * dy_b through the per-sample
 * filters and cuDNN's backward data with the batch as groups. */
static condconv_status grouped_dx(bwd_run *r, const char *func)
{
    const cc_weights *wt = r->layer->weights;
    const condconv_layer_info *info = &wt->info;
    const cc_bwd_plan *plan = r->plan;
    void *filters = r->ws + plan->off_filters;
    CC_TRY(dy_for_cudnn(r, func));
    CC_NVTX_PUSH("condconv.backward.data");
    condconv_status st = cc_cuda_status(cc_launch_aggregate((int)info->dtype, wt->dev_experts, NULL, r->alpha, filters,
                                                            NULL, (long long)wt->sizes.filter_elems, info->out_channels,
                                                            plan->geom.n, info->num_experts, r->layer->ctx->stream),
                                        "cc_launch_aggregate", func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = cc_cudnn_conv_bwd_data(r->layer->ctx, &plan->conv, filters, r->dy_cudnn, r->dx_c, r->ws + plan->off_cudnn,
                                    func);
    CC_NVTX_POP();
    return st;
}

/* cudnn_grouped: dx through per-sample filters, G_b, then the reductions. */
static condconv_status execute_cudnn_grouped(bwd_run *r, const char *func)
{
    const cc_weights *wt = r->layer->weights;
    const condconv_layer_info *info = &wt->info;
    const cc_bwd_plan *plan = r->plan;
    const cc_backward_outputs *out = r->out;
    const cudaStream_t stream = r->layer->ctx->stream;
    const int n = plan->geom.n, cout = info->out_channels, e = info->num_experts;
    const long long k = (long long)wt->sizes.filter_elems;
    const int need_grads = out->d_experts != NULL || r->need_dalpha;
    void *const filter_grads = r->ws + plan->off_grads;
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    if (out->dx != NULL) st = grouped_dx(r, func);
    /* G_b = dy_b * x_b. */
    if (st == CONDCONV_STATUS_SUCCESS && need_grads) {
        CC_NVTX_PUSH("condconv.backward.filter");
        st = dy_for_cudnn(r, func);
        if (st == CONDCONV_STATUS_SUCCESS) st = x_for_cudnn(r, func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cudnn_conv_bwd_filter(r->layer->ctx, &plan->conv, r->x_cudnn, r->dy_cudnn, filter_grads,
                                          r->ws + plan->off_cudnn, func);
        CC_NVTX_POP();
    }
    /* The expert reductions. */
    if (st == CONDCONV_STATUS_SUCCESS && (need_grads || out->d_expert_bias != NULL)) {
        CC_NVTX_PUSH("condconv.backward.experts");
        st = cc_cuda_status(cc_launch_bwd_experts((int)info->dtype, filter_grads, wt->dev_experts, r->alpha,
                                                  r->need_dysum ? wt->dev_expert_bias : NULL, r->dysum, out->d_experts,
                                                  out->d_expert_bias, r->need_dalpha ? r->dalpha : NULL, k, cout, n, e,
                                                  (float *)(void *)(r->ws + plan->off_reduce_scratch), stream),
                            "cc_launch_bwd_experts", func);
        CC_NVTX_POP();
    }
    return st;
}

/* folded_wgrad: cudnn_grouped's dx, then dW_e and dalpha from the folded
 * weight-gradient kernel on x and dy as they are, then dbias. */
static condconv_status execute_folded_wgrad(bwd_run *r, const char *func)
{
    const cc_weights *wt = r->layer->weights;
    const condconv_layer_info *info = &wt->info;
    const cc_bwd_plan *plan = r->plan;
    const cc_backward_outputs *out = r->out;
    const cudaStream_t stream = r->layer->ctx->stream;
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    if (out->dx != NULL) st = grouped_dx(r, func);
    if (st == CONDCONV_STATUS_SUCCESS && (out->d_experts != NULL || r->need_dalpha)) {
        CC_NVTX_PUSH("condconv.backward.filter");
        const int bias_term = r->need_dalpha && r->need_dysum;
        st = cc_cuda_status(cc_launch_bwd_wgrad(&plan->wgrad, r->x, r->dy, wt->dev_experts, r->alpha,
                                                bias_term ? wt->dev_expert_bias : NULL, bias_term ? r->dysum : NULL,
                                                out->d_experts, r->need_dalpha ? r->dalpha : NULL,
                                                (float *)(void *)(r->ws + plan->off_reduce_scratch), stream),
                            "cc_launch_bwd_wgrad", func);
        CC_NVTX_POP();
    }
    if (st == CONDCONV_STATUS_SUCCESS && out->d_expert_bias != NULL)
        st = cc_cuda_status(cc_launch_bwd_experts((int)info->dtype, NULL, NULL, r->alpha, wt->dev_expert_bias, r->dysum,
                                                  NULL, out->d_expert_bias, NULL, (long long)wt->sizes.filter_elems,
                                                  info->out_channels, plan->geom.n, info->num_experts, NULL, stream),
                            "cc_launch_bwd_experts", func);
    return st;
}

/* mixture: z = the stacked forward of x, into the workspace. */
static condconv_status mixture_z(bwd_run *r, const char *func)
{
    CC_TRY(x_for_cudnn(r, func));
    return cc_cudnn_conv_run(r->layer->ctx, &r->plan->fwd, r->x_cudnn, r->layer->weights->dev_experts_grouped, NULL,
                             r->ws + r->plan->off_mix, r->ws + r->plan->off_cudnn, func);
}

/* mixture, a layer with a fused activation: y = act(pre), and the forward
 * did not keep pre. It is recomputed from z as the forward's mixture
 * computes it (pre_b = sum_e alpha_be (z_be + bias_e), in f32, rounded once
 * to the dtype), and dy becomes dy * act'(pre) in the workspace, which the
 * rest of the backward (dysum included) reads instead of dy. z stays for
 * dalpha. */
static condconv_status mixture_activation(bwd_run *r, const char *func)
{
    const condconv_layer_info *info = &r->layer->weights->info;
    const cc_bwd_plan *plan = r->plan;
    const cudaStream_t stream = r->layer->ctx->stream;
    void *const dy_act = r->ws + plan->off_dyact;
    CC_NVTX_PUSH("condconv.backward.activation");
    condconv_status st = mixture_z(r, func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = cc_cuda_status(cc_launch_mixture_combine((int)info->dtype, (int)info->layout, r->ws + plan->off_mix,
                                                      r->alpha, r->layer->weights->dev_expert_bias, dy_act,
                                                      plan->geom.n, info->out_channels, info->groups, info->num_experts,
                                                      (long long)plan->geom.out_h * plan->geom.out_w,
                                                      (int)CONDCONV_ACTIVATION_NONE, stream),
                            "cc_launch_mixture_combine", func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = cc_cuda_status(cc_launch_bwd_activation_grad((int)info->dtype, (int)info->activation, dy_act, r->dy,
                                                          dy_act, (long long)plan->geom.y_elems, stream),
                            "cc_launch_bwd_activation_grad", func);
    CC_NVTX_POP();
    r->z_ready = st == CONDCONV_STATUS_SUCCESS;
    if (r->z_ready) r->dy = dy_act;
    return st;
}

/* mixture: dalpha from the stacked forward z, then dy_mix in z's place,
 * cuDNN's static backward data and filter, the stacked gradient reordered. */
static condconv_status execute_mixture(bwd_run *r, const char *func)
{
    const cc_weights *wt = r->layer->weights;
    const condconv_layer_info *info = &wt->info;
    const cc_bwd_plan *plan = r->plan;
    const cc_backward_outputs *out = r->out;
    const cudaStream_t stream = r->layer->ctx->stream;
    const int n = plan->geom.n, cout = info->out_channels, e = info->num_experts, groups = info->groups;
    const long long plane = (long long)plan->geom.out_h * plan->geom.out_w;
    void *const mix = r->ws + plan->off_mix;
    void *const stacked_grad = r->ws + plan->off_filters;
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    /* dalpha_be = <z_be, dy_b> (+ the bias term). */
    if (r->need_dalpha) {
        CC_NVTX_PUSH("condconv.backward.experts");
        if (!r->z_ready) st = mixture_z(r, func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cc_launch_bwd_mixture_dalpha((int)info->dtype, (int)info->layout, mix, r->dy,
                                                             r->need_dysum ? wt->dev_expert_bias : NULL,
                                                             r->need_dysum ? r->dysum : NULL, r->dalpha,
                                                             (float *)(void *)(r->ws + plan->off_reduce_scratch), n,
                                                             cout, groups, e, plane, stream),
                                "cc_launch_bwd_mixture_dalpha", func);
        CC_NVTX_POP();
    }
    /* dy_mix, the stacked output's gradient, over z. */
    if (st == CONDCONV_STATUS_SUCCESS && (out->dx != NULL || out->d_experts != NULL))
        st = cc_cuda_status(cc_launch_bwd_mixture_scale_dy((int)info->dtype, (int)info->layout, r->dy, r->alpha, mix, n,
                                                           cout, groups, e, plane, stream),
                            "cc_launch_bwd_mixture_scale_dy", func);
    if (st == CONDCONV_STATUS_SUCCESS && out->dx != NULL) {
        CC_NVTX_PUSH("condconv.backward.data");
        st = cc_cudnn_conv_bwd_data(r->layer->ctx, &plan->conv, wt->dev_experts_grouped, mix, r->dx_c,
                                    r->ws + plan->off_cudnn, func);
        CC_NVTX_POP();
    }
    if (st == CONDCONV_STATUS_SUCCESS && out->d_experts != NULL) {
        CC_NVTX_PUSH("condconv.backward.filter");
        st = x_for_cudnn(r, func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cudnn_conv_bwd_filter(r->layer->ctx, &plan->conv, r->x_cudnn, mix, stacked_grad,
                                          r->ws + plan->off_cudnn, func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cc_launch_bwd_mixture_filters((int)info->dtype, info->layout == CONDCONV_LAYOUT_NHWC,
                                                              stacked_grad, out->d_experts, e, cout,
                                                              info->in_channels / groups, info->kernel_h,
                                                              info->kernel_w, groups, stream),
                                "cc_launch_bwd_mixture_filters", func);
        CC_NVTX_POP();
    }
    if (st == CONDCONV_STATUS_SUCCESS && out->d_expert_bias != NULL)
        st = cc_cuda_status(cc_launch_bwd_experts((int)info->dtype, NULL, NULL, r->alpha, wt->dev_expert_bias, r->dysum,
                                                  NULL, out->d_expert_bias, NULL, (long long)wt->sizes.filter_elems,
                                                  cout, n, e, NULL, stream),
                            "cc_launch_bwd_experts", func);
    return st;
}

condconv_status cc_bwd_plan_execute(const struct condconv_layer *layer, const cc_bwd_plan *plan, const void *x,
                                    const void *routing_in, const void *dy, const cc_backward_outputs *out,
                                    void *workspace, const char *func)
{
    const cc_weights *wt = layer->weights;
    const condconv_layer_info *info = &wt->info;
    const cc_geometry *g = &plan->geom;
    const cudaStream_t stream = layer->ctx->stream;
    unsigned char *ws = workspace;
    const int external = info->routing == CONDCONV_ROUTING_EXTERNAL;
    const int n = g->n, cin = info->in_channels, cout = info->out_channels, e = info->num_experts;
    const long long hw_in = (long long)g->h * g->w, hw_out = (long long)g->out_h * g->out_w;
    /* What is needed for what was asked. */
    const int routing_grads = !external && (out->dx || out->d_routing_weight || out->d_routing_bias);
    bwd_run r;
    memset(&r, 0, sizeof r);
    r.layer = layer;
    r.plan = plan;
    r.x = x;
    r.dy = dy;
    r.out = out;
    r.ws = ws;
    r.need_dalpha = out->d_routing_in != NULL || routing_grads;
    r.need_dysum = info->has_bias && (out->d_expert_bias != NULL || r.need_dalpha);
    r.dalpha = (float *)(void *)(ws + plan->off_dalpha);
    r.dysum = info->has_bias ? (float *)(void *)(ws + plan->off_dysum) : NULL;
    r.dx_c = out->dx;
    if (out->dx != NULL && (plan->dx_scattered || lib_unaligned(out->dx))) r.dx_c = ws + plan->off_dx;

    CC_NVTX_PUSH("condconv.backward");
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    /* alpha. */
    r.alpha = (const float *)routing_in;
    if (!external) {
        float *a = (float *)(void *)(ws + plan->off_alpha);
        st = cc_plan_route(layer, NULL, n, g->h, g->w, x, a, func);
        r.alpha = a;
    }
    /* Through a fused activation first (mixture only: the others refuse them). */
    if (st == CONDCONV_STATUS_SUCCESS && info->activation != CONDCONV_ACTIVATION_NONE)
        st = mixture_activation(&r, func);
    /* Per-channel sums of dy, for the bias gradients. */
    if (st == CONDCONV_STATUS_SUCCESS && r.need_dysum)
        st = cc_cuda_status(cc_launch_bwd_channel_sums((int)info->dtype, (int)info->layout, r.dy, 1.0f, r.dysum, n,
                                                       cout, hw_out, stream),
                            "cc_launch_bwd_channel_sums", func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = plan->algo == CONDCONV_BWD_ALGO_MIXTURE        ? execute_mixture(&r, func)
             : plan->algo == CONDCONV_BWD_ALGO_FOLDED_WGRAD ? execute_folded_wgrad(&r, func)
                                                            : execute_cudnn_grouped(&r, func);
    /* The routing's backward; the average pool's share of dx. */
    float *const dpooled = out->dx != NULL ? (float *)(void *)(ws + plan->off_dpooled) : NULL;
    if (st == CONDCONV_STATUS_SUCCESS && routing_grads) {
        CC_NVTX_PUSH("condconv.backward.routing");
        float *pooled = (float *)(void *)(ws + plan->off_pooled);
        st = cc_cuda_status(cc_launch_bwd_channel_sums((int)info->dtype, (int)info->layout, x, 1.0f / (float)hw_in,
                                                       pooled, n, cin, hw_in, stream),
                            "cc_launch_bwd_channel_sums", func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cc_launch_bwd_routing(r.alpha, r.dalpha, info->routing == CONDCONV_ROUTING_SOFTMAX,
                                                      1.0f / info->temperature, pooled, wt->dev_routing_weight_t,
                                                      (float *)(void *)(ws + plan->off_dlogits), out->d_routing_weight,
                                                      out->d_routing_bias, dpooled, n, cin, e, stream),
                                "cc_launch_bwd_routing", func);
        CC_NVTX_POP();
    }
    if (st == CONDCONV_STATUS_SUCCESS && out->dx != NULL) {
        if (r.dx_c != out->dx) st = gather(layer, r.dx_c, out->dx, &plan->dx_args, func);
        if (st == CONDCONV_STATUS_SUCCESS && !external)
            st = cc_cuda_status(cc_launch_bwd_add_pool_grad((int)info->dtype, (int)info->layout, out->dx, dpooled, n,
                                                            cin, hw_in, stream),
                                "cc_launch_bwd_add_pool_grad", func);
    }
    if (st == CONDCONV_STATUS_SUCCESS && out->d_routing_in != NULL)
        st = cc_cuda_status(cudaMemcpyAsync(out->d_routing_in, r.dalpha, sizeof(float) * (size_t)g->alpha_elems,
                                            cudaMemcpyDeviceToDevice, stream),
                            "cudaMemcpyAsync(d_routing_in)", func);
    CC_NVTX_POP();
    return st;
}
