/* Layer lifetime: copies of the parameters on the host and the device,
 * shared between layers by reference count. */
#include "layer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "cuda_status.h"
#include "dtype.h"
#include "error.h"
#include "registry.h"

#include "fused_conv.h"
#include "fused_conv_tc.h"

/* The host copy is f32 whatever the layer's dtype: a half value converts to
 * float exactly, so it holds the very values the caller gave. */
static float *copy_floats(const void *src, uint64_t count, condconv_dtype dtype)
{
    if (count == 0) return NULL;
    float *dst = malloc((size_t)count * sizeof(float));
    if (dst != NULL) cc_dtype_load(dtype, src, dst, (size_t)count);
    return dst;
}

static size_t align_up(size_t bytes) { return (bytes + 255u) & ~(size_t)255u; }

static void free_weights_memory(cc_weights *w)
{
    if (w->dev_block) {
        int current = -1;
        /* Free on the device that owns the memory; a failure here has nowhere to go. */
        if (cudaGetDevice(&current) == cudaSuccess && current != w->device) (void)cudaSetDevice(w->device);
        (void)cudaFree(w->dev_block);
        if (current >= 0 && current != w->device) (void)cudaSetDevice(current);
    }
    free(w->experts);
    free(w->expert_bias);
    free(w->routing_weight);
    free(w->routing_bias);
    free(w);
}

/* The mixture's filters: experts [E][g][Cout/g][Cin/g][kh][kw] ->
 * [g][E][Cout/g][Cin/g][kh][kw], or with channels last in each filter,
 * [g][E][Cout/g][kh][kw][Cin/g], for NHWC layers (layer.h). */
static void group_major_experts(const cc_weights *w, float *dst)
{
    const condconv_layer_info *info = &w->info;
    const size_t g = (size_t)info->groups, E = (size_t)info->num_experts;
    const size_t cout_g = (size_t)info->out_channels / g, cin_g = (size_t)info->in_channels / g;
    const size_t taps = (size_t)info->kernel_h * (size_t)info->kernel_w;
    const int nhwc = info->layout == CONDCONV_LAYOUT_NHWC;
    for (size_t gi = 0; gi < g; ++gi)
        for (size_t e = 0; e < E; ++e)
            for (size_t o = 0; o < cout_g; ++o) {
                const float *src = w->experts + ((e * g + gi) * cout_g + o) * cin_g * taps;
                float *out = dst + ((gi * E + e) * cout_g + o) * cin_g * taps;
                for (size_t c = 0; c < cin_g; ++c)
                    for (size_t t = 0; t < taps; ++t) out[nhwc ? t * cin_g + c : c * taps + t] = src[c * taps + t];
            }
}

static condconv_status upload_weights(cc_weights *w, const char *func)
{
    const condconv_layer_info *info = &w->info;
    const size_t E = (size_t)info->num_experts, C = (size_t)info->in_channels;
    const size_t elem = cc_dtype_size(info->dtype);
    const size_t experts_elems = (size_t)w->sizes.experts_elems;
    const size_t experts_bytes = experts_elems * elem;
    /* An NHWC layer's static filters differ from the experts' order even
     * with one group. */
    const int need_grouped = info->groups > 1 || info->layout == CONDCONV_LAYOUT_NHWC;
    const size_t grouped_bytes = need_grouped ? experts_bytes : 0;
    const size_t bias_bytes = (size_t)w->sizes.bias_elems * sizeof(float);
    const size_t rw_bytes = (size_t)w->sizes.routing_weight_elems * sizeof(float);
    const size_t rb_bytes = (size_t)w->sizes.routing_bias_elems * sizeof(float);
    /* The fused algorithm's packings (layer.h), dense and grouped layers only:
     * the tensor-core kernel's for every dtype (f32 runs it with TF32), and
     * the CUDA-core kernel's for strict f32. */
    const int dense = info->groups != info->in_channels;
    const int fma = dense && info->dtype == CONDCONV_DTYPE_F32;
    const size_t fused_bytes = fma ? cc_fused_packed_elems(info->in_channels, info->out_channels, info->groups,
                                                           info->kernel_h, info->kernel_w, info->num_experts) *
                                         sizeof(float)
                                   : 0;
    const size_t fused_tc_bytes = dense ? cc_fused_tc_packed_elems(info->in_channels, info->out_channels, info->groups,
                                                                   info->kernel_h, info->kernel_w, info->num_experts) *
                                              elem
                                        : 0;
    const size_t total = align_up(experts_bytes) + align_up(grouped_bytes) + align_up(bias_bytes) + align_up(rw_bytes) +
                         align_up(rb_bytes) + align_up(fused_bytes) + align_up(fused_tc_bytes);
    if (total < experts_bytes)
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW, "%s: the device copy of the parameters overflows size_t", func);

    /* Stage everything in one host buffer so that one copy uploads it. The
     * experts are rounded back to the dtype: exact, since the host copy holds
     * the dtype's own values. */
    unsigned char *staging = calloc(1, total);
    float *reordered = need_grouped ? malloc(experts_elems * sizeof(float)) : NULL;
    if (staging == NULL || (need_grouped && reordered == NULL)) {
        free(staging);
        free(reordered);
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    }
    size_t offset = 0;
    const size_t experts_at = offset;
    cc_dtype_store(info->dtype, w->experts, staging + offset, experts_elems);
    offset += align_up(experts_bytes);
    const size_t grouped_at = grouped_bytes ? offset : experts_at;
    if (grouped_bytes) {
        group_major_experts(w, reordered);
        cc_dtype_store(info->dtype, reordered, staging + offset, experts_elems);
    }
    free(reordered);
    offset += align_up(grouped_bytes);
    const size_t bias_at = offset;
    if (bias_bytes) memcpy(staging + offset, w->expert_bias, bias_bytes);
    offset += align_up(bias_bytes);
    const size_t rw_at = offset;
    if (rw_bytes) {
        float *t = (float *)(void *)(staging + offset);
        for (size_t e = 0; e < E; ++e)
            for (size_t c = 0; c < C; ++c) t[c * E + e] = w->routing_weight[e * C + c];
    }
    offset += align_up(rw_bytes);
    const size_t rb_at = offset;
    if (rb_bytes) memcpy(staging + offset, w->routing_bias, rb_bytes);
    offset += align_up(rb_bytes);
    const size_t fused_at = offset, fused_tc_at = offset + align_up(fused_bytes);
    if ((fused_bytes &&
         !cc_fused_pack(w->experts, (float *)(void *)(staging + fused_at), info->in_channels, info->out_channels,
                        info->groups, info->kernel_h, info->kernel_w, info->num_experts)) ||
        (fused_tc_bytes &&
         !cc_fused_tc_pack((int)info->dtype, w->experts, staging + fused_tc_at, info->in_channels, info->out_channels,
                           info->groups, info->kernel_h, info->kernel_w, info->num_experts))) {
        free(staging);
        return cc_fail(CONDCONV_STATUS_INTERNAL_ERROR, "%s: packing the experts for the fused algorithm failed", func);
    }
    condconv_status s = cc_cuda_status(cudaMalloc(&w->dev_block, total), "cudaMalloc", func);

    /* condconv_layer_create is synchronous: the parameters must be on the device
     * before it returns, whatever stream the first forward runs on. A pageable
     * cudaMemcpy may return before its DMA lands, so copy on a private
     * non-blocking stream and wait for that stream alone (never the whole device:
     * other workers may be running forwards). */
    cudaStream_t upload = NULL;
    if (s == CONDCONV_STATUS_SUCCESS)
        s = cc_cuda_status(cudaStreamCreateWithFlags(&upload, cudaStreamNonBlocking), "cudaStreamCreateWithFlags",
                           func);
    if (s == CONDCONV_STATUS_SUCCESS)
        s = cc_cuda_status(cudaMemcpyAsync(w->dev_block, staging, total, cudaMemcpyHostToDevice, upload),
                           "cudaMemcpyAsync(parameters)", func);
    if (s == CONDCONV_STATUS_SUCCESS)
        s = cc_cuda_status(cudaStreamSynchronize(upload), "cudaStreamSynchronize(parameter upload)", func);
    if (upload != NULL) (void)cudaStreamDestroy(upload);
    free(staging);
    if (s != CONDCONV_STATUS_SUCCESS) return s;
    const unsigned char *base = w->dev_block;
    w->dev_experts = base + experts_at;
    w->dev_experts_grouped = base + grouped_at;
    w->dev_expert_bias = bias_bytes ? (const float *)(const void *)(base + bias_at) : NULL;
    w->dev_routing_weight_t = rw_bytes ? (const float *)(const void *)(base + rw_at) : NULL;
    w->dev_routing_bias = rb_bytes ? (const float *)(const void *)(base + rb_at) : NULL;
    w->dev_experts_fused = fused_bytes ? (const float *)(const void *)(base + fused_at) : NULL;
    w->dev_experts_fused_tc = fused_tc_bytes ? base + fused_tc_at : NULL;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status check_params(const condconv_layer_info *info, const condconv_params *params, const char *func)
{
    if (params->experts == NULL) return cc_fail(CONDCONV_STATUS_NULL_POINTER, "%s: params->experts is NULL", func);
    if (info->has_bias && params->expert_bias == NULL)
        return cc_fail(CONDCONV_STATUS_NULL_POINTER,
                       "%s: the descriptor says the experts have biases but params->expert_bias is NULL", func);
    if (info->routing != CONDCONV_ROUTING_EXTERNAL && params->routing_weight == NULL)
        return cc_fail(CONDCONV_STATUS_NULL_POINTER,
                       "%s: params->routing_weight is NULL; it is required unless routing is external", func);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_create(condconv_context_t context, condconv_layer_desc_t desc,
                                      const condconv_params *params, condconv_layer_t *layer)
{
    static const char func[] = "condconv_layer_create";
    CC_CHECK_CONTEXT(context, func);
    CC_CHECK_DESC(desc, func);
    CC_CHECK_NOT_NULL(params, func);
    CC_CHECK_NOT_NULL(layer, func);
    const condconv_layer_info *info = &desc->info;
    CC_TRY(cc_layer_info_validate(info, func));
    CC_TRY(check_params(info, params, func));
    cc_param_sizes sizes;
    CC_TRY(cc_param_sizes_make(info, &sizes, func));

    cc_weights *w = calloc(1, sizeof *w);
    struct condconv_layer *l = calloc(1, sizeof *l);
    if (w == NULL || l == NULL) {
        free(w);
        free(l);
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    }
    atomic_init(&w->refs, 1);
    w->info = *info;
    w->sizes = sizes;
    w->device = context->device;
    w->experts = copy_floats(params->experts, sizes.experts_elems, info->dtype);
    w->expert_bias = copy_floats(params->expert_bias, sizes.bias_elems, info->dtype);
    w->routing_weight = copy_floats(params->routing_weight, sizes.routing_weight_elems, info->dtype);
    if (sizes.routing_bias_elems) {
        w->routing_bias = params->routing_bias
                              ? copy_floats(params->routing_bias, sizes.routing_bias_elems, info->dtype)
                              : calloc((size_t)sizes.routing_bias_elems, sizeof(float));
    }
    condconv_status s = CONDCONV_STATUS_SUCCESS;
    if (w->experts == NULL || (sizes.bias_elems && w->expert_bias == NULL) ||
        (sizes.routing_weight_elems && w->routing_weight == NULL) ||
        (sizes.routing_bias_elems && w->routing_bias == NULL))
        s = cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory for %llu parameters", func,
                    (unsigned long long)sizes.experts_elems + sizes.bias_elems + sizes.routing_weight_elems);
    if (s == CONDCONV_STATUS_SUCCESS && context->device != CONDCONV_DEVICE_CPU) {
        cc_device_scope scope;
        s = cc_device_scope_begin(context, &scope, func);
        if (s == CONDCONV_STATUS_SUCCESS) {
            s = cc_context_set_device(context, func);
            if (s == CONDCONV_STATUS_SUCCESS) s = upload_weights(w, func);
            s = cc_device_scope_end(&scope, s, func);
        }
    }
    l->ctx = context;
    l->weights = w;
    l->requested = CONDCONV_ALGO_AUTO;
    l->forced_routing = l->forced_aggregate = -1;
    /* Registered last, with its context, which then counts it as a user. */
    if (s == CONDCONV_STATUS_SUCCESS) s = cc_registry_add(l, CC_HANDLE_LAYER, context, func);
    if (s != CONDCONV_STATUS_SUCCESS) {
        free_weights_memory(w);
        free(l);
        return s;
    }
    *layer = l;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_create_shared(condconv_context_t context, condconv_layer_t source,
                                             condconv_layer_t *layer)
{
    static const char func[] = "condconv_layer_create_shared";
    CC_CHECK_CONTEXT(context, func);
    CC_CHECK_LAYER(source, func);
    CC_CHECK_NOT_NULL(layer, func);
    if (context->device != source->weights->device)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE,
                       "%s: the source layer's parameters live on device %d, the context is on device %d", func,
                       source->weights->device, context->device);
    struct condconv_layer *l = calloc(1, sizeof *l);
    if (l == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    l->ctx = context;
    l->weights = source->weights;
    l->requested = source->requested;
    memcpy(l->forced_variant, source->forced_variant, sizeof l->forced_variant);
    l->forced_routing = source->forced_routing;
    l->forced_aggregate = source->forced_aggregate;
    const condconv_status s = cc_registry_add(l, CC_HANDLE_LAYER, context, func);
    if (s != CONDCONV_STATUS_SUCCESS) {
        free(l);
        return s;
    }
    atomic_fetch_add(&source->weights->refs, 1);
    *layer = l;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_destroy(condconv_layer_t layer)
{
    static const char func[] = "condconv_layer_destroy";
    if (layer == NULL) return CONDCONV_STATUS_SUCCESS;
    /* Only a live layer is released, once: a second destroy is refused, and
     * the context counts one user less. */
    CC_TRY(cc_registry_remove(layer, CC_HANDLE_LAYER, func));
    /* The plans' device memory is freed on its own device; the caller's
     * device comes back after. Nothing here can be undone, so a CUDA failure
     * is reported after everything is released. */
    cc_device_scope scope;
    condconv_status s = cc_device_scope_begin(layer->ctx, &scope, func);
    if (s == CONDCONV_STATUS_SUCCESS && scope.active) s = cc_context_set_device(layer->ctx, func);
    cc_layer_release_plans(layer);
    if (atomic_fetch_sub(&layer->weights->refs, 1) == 1) free_weights_memory(layer->weights);
    free(layer);
    return cc_device_scope_end(&scope, s, func);
}

condconv_status condconv_layer_get_desc(condconv_layer_t layer, condconv_layer_desc_t desc)
{
    CC_CHECK_LAYER(layer, "condconv_layer_get_desc");
    CC_CHECK_DESC(desc, "condconv_layer_get_desc");
    desc->info = layer->weights->info;
    return CONDCONV_STATUS_SUCCESS;
}

cc_host_params cc_layer_host_params(const struct condconv_layer *layer)
{
    const cc_weights *w = layer->weights;
    cc_host_params p = {w->experts, w->expert_bias, w->routing_weight, w->routing_bias};
    return p;
}

static int ranges_overlap(const void *a, uint64_t a_bytes, const void *b, uint64_t b_bytes)
{
    if (a == NULL || b == NULL) return 0;
    const uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return pa < pb + b_bytes && pb < pa + a_bytes;
}

condconv_status cc_check_forward_overlap(const condconv_layer_info *info, const cc_geometry *geom, const void *x,
                                         const void *y, const void *routing_in, const void *routing_out,
                                         const char *func)
{
    const uint64_t elem = cc_dtype_size(info->dtype);
    const uint64_t x_bytes = geom->x_elems * elem, y_bytes = geom->y_elems * elem;
    const uint64_t alpha_bytes = geom->alpha_elems * sizeof(float);
    /* External routing weights are read while y is written, so they may not
     * share y's bytes either. routing_out == routing_in is allowed: the copy
     * of alpha onto itself is then skipped. */
    const void *ext = info->routing == CONDCONV_ROUTING_EXTERNAL ? routing_in : NULL;
    const char *clash = ranges_overlap(x, x_bytes, y, y_bytes)                 ? "x and y"
                        : ranges_overlap(routing_out, alpha_bytes, x, x_bytes) ? "routing_out and x"
                        : ranges_overlap(routing_out, alpha_bytes, y, y_bytes) ? "routing_out and y"
                        : ranges_overlap(ext, alpha_bytes, y, y_bytes)         ? "routing_in and y"
                        : routing_out != ext && ranges_overlap(routing_out, alpha_bytes, ext, alpha_bytes)
                            ? "routing_out and routing_in"
                            : NULL;
    if (clash != NULL)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: %s overlap; the forward cannot run in place", func, clash);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_layer_check_forward(const struct condconv_layer *layer, int n, int h, int w, const void *x,
                                       const void *y, const void *routing_in, const void *routing_out,
                                       cc_geometry *geom, const char *func)
{
    CC_CHECK_LAYER(layer, func);
    CC_CHECK_NOT_NULL(x, func);
    CC_CHECK_NOT_NULL(y, func);
    const condconv_layer_info *info = &layer->weights->info;
    CC_TRY(cc_geometry_make(info, n, h, w, geom, func));
    if (info->routing == CONDCONV_ROUTING_EXTERNAL && routing_in == NULL)
        return cc_fail(CONDCONV_STATUS_MISSING_ROUTING,
                       "%s: the layer uses external routing, so routing_in (alpha [N=%d][E=%d]) is required", func, n,
                       info->num_experts);
    return cc_check_forward_overlap(info, geom, x, y, routing_in, routing_out, func);
}

const char *cc_dtype_name(condconv_dtype dtype)
{
    return dtype == CONDCONV_DTYPE_F16 ? "f16" : dtype == CONDCONV_DTYPE_BF16 ? "bf16" : "f32";
}

const char *cc_layout_name(condconv_layout layout) { return layout == CONDCONV_LAYOUT_NHWC ? "NHWC" : "NCHW"; }

condconv_status cc_check_element_alignment(const void *ptr, size_t elem, const char *name, const char *func)
{
    if (ptr != NULL && (uintptr_t)ptr % elem != 0)
        return cc_fail(CONDCONV_STATUS_MISALIGNED, "%s: %s %p is not %zu-byte aligned (its element size)", func, name,
                       ptr, elem);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_check_workspace(const void *workspace, size_t given, size_t needed, int n, int h, int w,
                                   const char *query, const char *func)
{
    if (given < needed)
        return cc_fail(CONDCONV_STATUS_WORKSPACE_TOO_SMALL,
                       "%s: workspace of %zu bytes given, %zu needed for N=%d, H=%d, W=%d (%s)", func, given, needed, n,
                       h, w, query);
    if (needed > 0 && workspace == NULL)
        return cc_fail(CONDCONV_STATUS_NULL_POINTER, "%s: workspace is NULL but %zu bytes are needed", func, needed);
    if ((uintptr_t)workspace % CONDCONV_WORKSPACE_ALIGNMENT != 0)
        return cc_fail(CONDCONV_STATUS_MISALIGNED, "%s: workspace %p is not %d-byte aligned", func, workspace,
                       CONDCONV_WORKSPACE_ALIGNMENT);
    return CONDCONV_STATUS_SUCCESS;
}
