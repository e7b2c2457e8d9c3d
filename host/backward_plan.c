/* Backward plans (backward_plan.h): creation, the per-layer cache, and
 * execution of the batch-as-groups baseline. */
#include "backward_plan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aggregate.h"
#include "algo.h"
#include "backward.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "nvtx.h"
#include "plan.h"
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
            p->requested == layer->bwd_requested && p->select == layer->ctx->select)
            return p;
    }
    return NULL;
}

/* Whether the baseline runs this layer and shape: NOT_SUPPORTED with the reason otherwise. */
static condconv_status bwd_check(const struct condconv_layer *layer, const cc_geometry *geom, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    if (info->activation != CONDCONV_ACTIVATION_NONE)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: the GPU backward of a layer with a fused activation is not implemented yet (it would "
                       "need the pre-activation); apply the activation outside the layer, or use "
                       "condconv_backward_cpu",
                       func);
    /* The forward's batch-as-groups limits: N*Cin, N*Cout and N*|W| within int. */
    return cc_algo_lookup(CONDCONV_ALGO_CUDNN_GROUPED)->check(layer, geom, func);
}

/* The workspace's pieces, in order, each 256-byte aligned. */
static void layout_workspace(const struct condconv_layer *layer, cc_bwd_plan *p, const cc_conv_shape *shape)
{
    const condconv_layer_info *info = &layer->weights->info;
    const cc_geometry *g = &p->geom;
    const size_t elem = cc_dtype_size(info->dtype);
    const size_t n = (size_t)g->n, cin = (size_t)info->in_channels, cout = (size_t)info->out_channels;
    const size_t e = (size_t)info->num_experts, k = (size_t)layer->weights->sizes.filter_elems;
    const int self = info->routing != CONDCONV_ROUTING_EXTERNAL;
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
    CC_PIECE(off_reduce_scratch, sizeof(float) * cc_bwd_experts_scratch_elems((long long)k, (int)cout, (int)n, (int)e));
    CC_PIECE(off_filters, elem * n * k);
    CC_PIECE(off_grads, elem * n * k);
    /* x for cuDNN: gathered, or a copy of an unaligned x (the larger). */
    const size_t x_bytes = elem * (size_t)g->x_elems;
    const size_t gathered = p->x_gathered ? elem * (size_t)cc_gather_elems(&p->x_args) : 0;
    CC_PIECE(off_x, gathered > x_bytes ? gathered : x_bytes);
    CC_PIECE(off_dy, elem * (size_t)g->y_elems);
    p->dx_region_bytes = elem * n * cin * (size_t)shape->h * (size_t)shape->w;
    CC_PIECE(off_dx, p->dx_region_bytes);
    const size_t cudnn_ws = p->conv.data_workspace_bytes > p->conv.filter_workspace_bytes
                                ? p->conv.data_workspace_bytes
                                : p->conv.filter_workspace_bytes;
    CC_PIECE(off_cudnn, cudnn_ws);
#undef CC_PIECE
    p->workspace_bytes = off;
}

static condconv_status bwd_plan_create(struct condconv_layer *layer, int n, int h, int w, cc_bwd_plan **out,
                                       const char *func)
{
    condconv_context_t ctx = layer->ctx;
    const condconv_layer_info *info = &layer->weights->info;
    cc_geometry geom = {0};
    CC_TRY(cc_geometry_make(info, n, h, w, &geom, func));
    CC_TRY(bwd_check(layer, &geom, func));
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
    cc_bwd_plan *plan = calloc(1, sizeof *plan);
    if (plan == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    plan->n = n;
    plan->h = h;
    plan->w = w;
    plan->math = ctx->math;
    plan->requested = layer->bwd_requested;
    plan->select = ctx->select;
    plan->geom = geom;

    /* cuDNN's view, as the forward's cudnn_grouped: NCHW, the batch folded
     * into channels and groups, asymmetric padding gathered. */
    cc_algo_state view;
    memset(&view, 0, sizeof view);
    cc_plan_gather_for_cudnn(layer, &geom, 1, &view);
    cc_conv_shape shape = cc_conv_shape_for(layer, &geom, &view);
    shape.n = 1;
    shape.c = n * info->in_channels;
    shape.k = n * info->out_channels;
    shape.groups = n * info->groups;
    plan->x_gathered = view.gather;
    plan->x_args = view.gather_args;
    plan->x_copy_args =
        copy_args(info->dtype, CONDCONV_LAYOUT_NCHW, CC_GATHER_PLANES, n, info->in_channels, h, w, h, w, 0, 0);
    const int nhwc = info->layout == CONDCONV_LAYOUT_NHWC;
    plan->dy_transposed = nhwc;
    plan->dy_args = copy_args(info->dtype, info->layout, CC_GATHER_PLANES, n, info->out_channels, geom.out_h,
                              geom.out_w, geom.out_h, geom.out_w, 0, 0);
    /* dx as cuDNN computes it is [N][Cin][shape.h][shape.w]: the padded
     * plane when the padding was gathered; the caller's dx is cropped out. */
    const int padded = shape.h != h || shape.w != w;
    plan->dx_scattered = nhwc || padded;
    plan->dx_args =
        copy_args(info->dtype, CONDCONV_LAYOUT_NCHW, nhwc ? CC_GATHER_ROWS : CC_GATHER_PLANES, n, info->in_channels,
                  shape.h, shape.w, h, w, padded ? -geom.pad_top : 0, padded ? -geom.pad_left : 0);

    cc_scratch scratch = {0};
    scratch.stream = ctx->stream;
    condconv_status st = cc_cudnn_conv_bwd_create(ctx, &shape, ctx->math, &scratch, &plan->conv, func);
    cc_scratch_free(&scratch);
    if (st != CONDCONV_STATUS_SUCCESS) {
        bwd_plan_destroy(plan);
        return st;
    }
    layout_workspace(layer, plan, &shape);

    condconv_backward_plan_info *pi = &plan->info;
    pi->algo = CONDCONV_BWD_ALGO_CUDNN_GROUPED;
    pi->requested = layer->bwd_requested;
    pi->select = ctx->select;
    pi->math = ctx->math;
    pi->workspace_bytes = plan->workspace_bytes;
    pi->deterministic = 1;
    snprintf(pi->reason, sizeof pi->reason, "%s",
             layer->bwd_requested == CONDCONV_BWD_ALGO_AUTO
                 ? "cudnn_grouped is the only backward algorithm yet; cuDNN's algorithms by its heuristic ranking"
                 : "forced");
    char conv_desc[200];
    cc_cudnn_conv_bwd_describe(&plan->conv, conv_desc, sizeof conv_desc);
    snprintf(pi->backend, sizeof pi->backend, "%s; condconv reductions in a fixed order", conv_desc);
    layer->bwd_plans[layer->bwd_plan_count++] = plan;
    *out = plan;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_bwd_plan_get(struct condconv_layer *layer, int n, int h, int w, cc_bwd_plan **plan, const char *func)
{
    CC_TRY(cc_context_require_gpu(layer->ctx, func));
    if (layer->bwd_requested != CONDCONV_BWD_ALGO_AUTO && layer->bwd_requested != CONDCONV_BWD_ALGO_CUDNN_GROUPED)
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
    const long long k = (long long)wt->sizes.filter_elems;
    /* What is needed for what was asked. */
    const int routing_grads = !external && (out->dx || out->d_routing_weight || out->d_routing_bias);
    const int need_dalpha = out->d_routing_in != NULL || routing_grads;
    const int need_grads = out->d_experts != NULL || need_dalpha;
    const int need_dysum = info->has_bias && (out->d_expert_bias != NULL || need_dalpha);
    float *const dalpha = (float *)(void *)(ws + plan->off_dalpha);
    float *const dysum = info->has_bias ? (float *)(void *)(ws + plan->off_dysum) : NULL;
    void *const filter_grads = ws + plan->off_grads;

    CC_NVTX_PUSH("condconv.backward");
    condconv_status st = CONDCONV_STATUS_SUCCESS;
    /* 1. alpha. */
    const float *alpha = (const float *)routing_in;
    if (!external) {
        float *a = (float *)(void *)(ws + plan->off_alpha);
        st = cc_plan_route(layer, NULL, n, g->h, g->w, x, a, func);
        alpha = a;
    }
    /* 2. dy as cuDNN reads it. */
    const void *dy_c = dy;
    if (st == CONDCONV_STATUS_SUCCESS && (plan->dy_transposed || lib_unaligned(dy))) {
        dy_c = ws + plan->off_dy;
        st = gather(layer, dy, ws + plan->off_dy, &plan->dy_args, func);
    }
    /* 3. dx = W_b^T * dy_b. */
    void *dx_c = out->dx;
    if (st == CONDCONV_STATUS_SUCCESS && out->dx != NULL) {
        CC_NVTX_PUSH("condconv.backward.data");
        if (plan->dx_scattered || lib_unaligned(out->dx)) dx_c = ws + plan->off_dx;
        void *filters = ws + plan->off_filters;
        st = cc_cuda_status(
            cc_launch_aggregate((int)info->dtype, wt->dev_experts, NULL, alpha, filters, NULL, k, cout, n, e, stream),
            "cc_launch_aggregate", func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cudnn_conv_bwd_data(layer->ctx, &plan->conv, filters, dy_c, dx_c, ws + plan->off_cudnn, func);
        CC_NVTX_POP();
    }
    /* 4. G_b = dy_b * x_b. */
    if (st == CONDCONV_STATUS_SUCCESS && need_grads) {
        CC_NVTX_PUSH("condconv.backward.filter");
        const void *x_c = x;
        if (plan->x_gathered || lib_unaligned(x)) {
            x_c = ws + plan->off_x;
            st = gather(layer, x, ws + plan->off_x, plan->x_gathered ? &plan->x_args : &plan->x_copy_args, func);
        }
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cudnn_conv_bwd_filter(layer->ctx, &plan->conv, x_c, dy_c, filter_grads, ws + plan->off_cudnn, func);
        CC_NVTX_POP();
    }
    /* 5. The expert reductions. */
    if (st == CONDCONV_STATUS_SUCCESS && (need_dysum || need_grads || out->d_expert_bias != NULL)) {
        CC_NVTX_PUSH("condconv.backward.experts");
        if (need_dysum)
            st = cc_cuda_status(cc_launch_bwd_channel_sums((int)info->dtype, (int)info->layout, dy, 1.0f, dysum, n,
                                                           cout, hw_out, stream),
                                "cc_launch_bwd_channel_sums", func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cc_launch_bwd_experts((int)info->dtype, filter_grads, wt->dev_experts, alpha,
                                                      need_dysum ? wt->dev_expert_bias : NULL, dysum, out->d_experts,
                                                      out->d_expert_bias, need_dalpha ? dalpha : NULL, k, cout, n, e,
                                                      (float *)(void *)(ws + plan->off_reduce_scratch), stream),
                                "cc_launch_bwd_experts", func);
        CC_NVTX_POP();
    }
    /* 6. The routing's backward; the average pool's share of dx. */
    float *const dpooled = out->dx != NULL ? (float *)(void *)(ws + plan->off_dpooled) : NULL;
    if (st == CONDCONV_STATUS_SUCCESS && routing_grads) {
        CC_NVTX_PUSH("condconv.backward.routing");
        float *pooled = (float *)(void *)(ws + plan->off_pooled);
        st = cc_cuda_status(cc_launch_bwd_channel_sums((int)info->dtype, (int)info->layout, x, 1.0f / (float)hw_in,
                                                       pooled, n, cin, hw_in, stream),
                            "cc_launch_bwd_channel_sums", func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cc_launch_bwd_routing(alpha, dalpha, info->routing == CONDCONV_ROUTING_SOFTMAX,
                                                      1.0f / info->temperature, pooled, wt->dev_routing_weight_t,
                                                      (float *)(void *)(ws + plan->off_dlogits), out->d_routing_weight,
                                                      out->d_routing_bias, dpooled, n, cin, e, stream),
                                "cc_launch_bwd_routing", func);
        CC_NVTX_POP();
    }
    if (st == CONDCONV_STATUS_SUCCESS && out->dx != NULL) {
        if (dx_c != out->dx) st = gather(layer, dx_c, out->dx, &plan->dx_args, func);
        if (st == CONDCONV_STATUS_SUCCESS && !external)
            st = cc_cuda_status(cc_launch_bwd_add_pool_grad((int)info->dtype, (int)info->layout, out->dx, dpooled, n,
                                                            cin, hw_in, stream),
                                "cc_launch_bwd_add_pool_grad", func);
    }
    if (st == CONDCONV_STATUS_SUCCESS && out->d_routing_in != NULL)
        st = cc_cuda_status(cudaMemcpyAsync(out->d_routing_in, dalpha, sizeof(float) * (size_t)g->alpha_elems,
                                            cudaMemcpyDeviceToDevice, stream),
                            "cudaMemcpyAsync(d_routing_in)", func);
    CC_NVTX_POP();
    return st;
}
