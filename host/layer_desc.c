/* Layer descriptor: create/set/get/destroy, validation, and the geometry of
 * an input shape (explicit or TF-"same" padding, output size, counts). */
#include "layer_desc.h"

#include <math.h>
#include <stdlib.h>

#include "checked_math.h"
#include "error.h"
#include "registry.h"

size_t cc_dtype_size(condconv_dtype dtype) { return dtype == CONDCONV_DTYPE_F32 ? 4u : 2u; }

static condconv_layer_info default_info(void)
{
    condconv_layer_info info = {0};
    info.kernel_h = info.kernel_w = 1;
    info.stride_h = info.stride_w = 1;
    info.dilation_h = info.dilation_w = 1;
    info.groups = 1;
    info.padding_mode = CONDCONV_PADDING_EXPLICIT;
    info.num_experts = 1;
    info.has_bias = 1;
    info.routing = CONDCONV_ROUTING_SIGMOID;
    info.temperature = 1.0f;
    info.activation = CONDCONV_ACTIVATION_NONE;
    info.dtype = CONDCONV_DTYPE_F32;
    info.layout = CONDCONV_LAYOUT_NCHW;
    return info;
}

condconv_status condconv_layer_desc_create(condconv_layer_desc_t *desc)
{
    CC_CHECK_NOT_NULL(desc, "condconv_layer_desc_create");
    struct condconv_layer_desc *d = malloc(sizeof *d);
    if (d == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "condconv_layer_desc_create: out of host memory");
    d->info = default_info();
    const condconv_status s = cc_registry_add(d, CC_HANDLE_LAYER_DESC, NULL, "condconv_layer_desc_create");
    if (s != CONDCONV_STATUS_SUCCESS) {
        free(d);
        return s;
    }
    *desc = d;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_destroy(condconv_layer_desc_t desc)
{
    if (desc == NULL) return CONDCONV_STATUS_SUCCESS;
    /* Only a live descriptor is freed, once: a second destroy is refused. */
    CC_TRY(cc_registry_remove(desc, CC_HANDLE_LAYER_DESC, "condconv_layer_desc_destroy"));
    free(desc);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status check_conv(int in_channels, int out_channels, int kernel_h, int kernel_w, int stride_h,
                                  int stride_w, int dilation_h, int dilation_w, int groups, const char *func)
{
    if (in_channels <= 0 || out_channels <= 0)
        return cc_fail(CONDCONV_STATUS_BAD_SIZE, "%s: channels must be positive (in_channels=%d, out_channels=%d)",
                       func, in_channels, out_channels);
    if (kernel_h <= 0 || kernel_w <= 0)
        return cc_fail(CONDCONV_STATUS_BAD_SIZE, "%s: kernel size must be positive (kernel_h=%d, kernel_w=%d)", func,
                       kernel_h, kernel_w);
    if (stride_h <= 0 || stride_w <= 0)
        return cc_fail(CONDCONV_STATUS_BAD_SIZE, "%s: stride must be positive (stride_h=%d, stride_w=%d)", func,
                       stride_h, stride_w);
    if (dilation_h <= 0 || dilation_w <= 0)
        return cc_fail(CONDCONV_STATUS_BAD_SIZE, "%s: dilation must be positive (dilation_h=%d, dilation_w=%d)", func,
                       dilation_h, dilation_w);
    if (groups <= 0) return cc_fail(CONDCONV_STATUS_BAD_SIZE, "%s: groups must be positive (groups=%d)", func, groups);
    if (in_channels % groups != 0 || out_channels % groups != 0)
        return cc_fail(CONDCONV_STATUS_BAD_GROUPS,
                       "%s: in_channels=%d and out_channels=%d must both be divisible by groups=%d", func, in_channels,
                       out_channels, groups);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_set_conv(condconv_layer_desc_t desc, int in_channels, int out_channels,
                                             int kernel_h, int kernel_w, int stride_h, int stride_w, int dilation_h,
                                             int dilation_w, int groups)
{
    static const char func[] = "condconv_layer_desc_set_conv";
    CC_CHECK_DESC(desc, func);
    CC_TRY(check_conv(in_channels, out_channels, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, groups,
                      func));
    condconv_layer_info *info = &desc->info;
    info->in_channels = in_channels;
    info->out_channels = out_channels;
    info->kernel_h = kernel_h;
    info->kernel_w = kernel_w;
    info->stride_h = stride_h;
    info->stride_w = stride_w;
    info->dilation_h = dilation_h;
    info->dilation_w = dilation_w;
    info->groups = groups;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status check_padding(condconv_padding_mode mode, int pad_h, int pad_w, const char *func)
{
    if (mode != CONDCONV_PADDING_EXPLICIT && mode != CONDCONV_PADDING_SAME)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown padding mode %d", func, (int)mode);
    if (pad_h < 0 || pad_w < 0)
        return cc_fail(CONDCONV_STATUS_BAD_SIZE, "%s: padding must not be negative (pad_h=%d, pad_w=%d)", func, pad_h,
                       pad_w);
    if (mode == CONDCONV_PADDING_SAME && (pad_h != 0 || pad_w != 0))
        return cc_fail(CONDCONV_STATUS_BAD_VALUE,
                       "%s: SAME padding computes its own padding; pad_h=%d, pad_w=%d must be 0", func, pad_h, pad_w);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_set_padding(condconv_layer_desc_t desc, condconv_padding_mode mode, int pad_h,
                                                int pad_w)
{
    static const char func[] = "condconv_layer_desc_set_padding";
    CC_CHECK_DESC(desc, func);
    CC_TRY(check_padding(mode, pad_h, pad_w, func));
    desc->info.padding_mode = mode;
    desc->info.pad_h = pad_h;
    desc->info.pad_w = pad_w;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status check_experts(int num_experts, const char *func)
{
    if (num_experts < 1 || num_experts > CONDCONV_MAX_EXPERTS)
        return cc_fail(CONDCONV_STATUS_BAD_EXPERTS, "%s: num_experts=%d is outside [1, %d]", func, num_experts,
                       CONDCONV_MAX_EXPERTS);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_set_experts(condconv_layer_desc_t desc, int num_experts, int has_bias)
{
    static const char func[] = "condconv_layer_desc_set_experts";
    CC_CHECK_DESC(desc, func);
    CC_TRY(check_experts(num_experts, func));
    if (has_bias != 0 && has_bias != 1)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: has_bias=%d, must be 0 or 1", func, has_bias);
    desc->info.num_experts = num_experts;
    desc->info.has_bias = has_bias;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status check_routing(condconv_routing mode, float temperature, const char *func)
{
    if (mode != CONDCONV_ROUTING_SIGMOID && mode != CONDCONV_ROUTING_SOFTMAX && mode != CONDCONV_ROUTING_EXTERNAL)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown routing mode %d", func, (int)mode);
    if (mode == CONDCONV_ROUTING_SOFTMAX && !(isfinite(temperature) && temperature > 0.0f))
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: softmax temperature must be finite and > 0 (got %g)", func,
                       (double)temperature);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_set_routing(condconv_layer_desc_t desc, condconv_routing mode, float temperature)
{
    static const char func[] = "condconv_layer_desc_set_routing";
    CC_CHECK_DESC(desc, func);
    CC_TRY(check_routing(mode, temperature, func));
    desc->info.routing = mode;
    desc->info.temperature = mode == CONDCONV_ROUTING_SOFTMAX ? temperature : 1.0f;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status check_activation(condconv_activation activation, const char *func)
{
    if (activation != CONDCONV_ACTIVATION_NONE && activation != CONDCONV_ACTIVATION_RELU &&
        activation != CONDCONV_ACTIVATION_SILU)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown activation %d", func, (int)activation);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_set_activation(condconv_layer_desc_t desc, condconv_activation activation)
{
    static const char func[] = "condconv_layer_desc_set_activation";
    CC_CHECK_DESC(desc, func);
    CC_TRY(check_activation(activation, func));
    desc->info.activation = activation;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status check_format(condconv_dtype dtype, condconv_layout layout, const char *func)
{
    if (dtype != CONDCONV_DTYPE_F32 && dtype != CONDCONV_DTYPE_F16 && dtype != CONDCONV_DTYPE_BF16)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown dtype %d", func, (int)dtype);
    if (layout != CONDCONV_LAYOUT_NCHW && layout != CONDCONV_LAYOUT_NHWC)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown layout %d", func, (int)layout);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_set_format(condconv_layer_desc_t desc, condconv_dtype dtype, condconv_layout layout)
{
    static const char func[] = "condconv_layer_desc_set_format";
    CC_CHECK_DESC(desc, func);
    CC_TRY(check_format(dtype, layout, func));
    desc->info.dtype = dtype;
    desc->info.layout = layout;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_get_info(condconv_layer_desc_t desc, condconv_layer_info *info)
{
    CC_CHECK_DESC(desc, "condconv_layer_desc_get_info");
    CC_CHECK_NOT_NULL(info, "condconv_layer_desc_get_info");
    *info = desc->info;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_layer_info_validate(const condconv_layer_info *info, const char *func)
{
    if (info->in_channels == 0 && info->out_channels == 0)
        return cc_fail(CONDCONV_STATUS_BAD_SIZE,
                       "%s: the descriptor's convolution shape was never set "
                       "(call condconv_layer_desc_set_conv)",
                       func);
    CC_TRY(check_conv(info->in_channels, info->out_channels, info->kernel_h, info->kernel_w, info->stride_h,
                      info->stride_w, info->dilation_h, info->dilation_w, info->groups, func));
    CC_TRY(check_padding(info->padding_mode, info->pad_h, info->pad_w, func));
    CC_TRY(check_experts(info->num_experts, func));
    CC_TRY(check_routing(info->routing, info->temperature, func));
    CC_TRY(check_activation(info->activation, func));
    CC_TRY(check_format(info->dtype, info->layout, func));
    return CONDCONV_STATUS_SUCCESS;
}

/* Fails unless count elements of `elem_size` bytes fit in size_t. */
static condconv_status check_bytes(uint64_t count, size_t elem_size, const char *what, const char *func)
{
    uint64_t bytes;
    if (!cc_mul_u64(count, elem_size, &bytes) || bytes > (uint64_t)SIZE_MAX)
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW, "%s: the byte count of %s overflows size_t", func, what);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_param_sizes_make(const condconv_layer_info *info, cc_param_sizes *sizes, const char *func)
{
    const size_t es = cc_dtype_size(info->dtype);
    const uint64_t E = (uint64_t)info->num_experts;
    cc_param_sizes s = {0};
    if (!cc_mul4_u64((uint64_t)info->out_channels, (uint64_t)(info->in_channels / info->groups),
                     (uint64_t)info->kernel_h, (uint64_t)info->kernel_w, &s.filter_elems) ||
        !cc_mul_u64(E, s.filter_elems, &s.experts_elems))
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW,
                       "%s: E=%d experts of %d x %d x %d x %d weights overflow a 64-bit count", func, info->num_experts,
                       info->out_channels, info->in_channels / info->groups, info->kernel_h, info->kernel_w);
    CC_TRY(check_bytes(s.experts_elems, es, "the expert kernels", func));
    s.bias_elems = info->has_bias ? E * (uint64_t)info->out_channels : 0;
    if (info->routing != CONDCONV_ROUTING_EXTERNAL) {
        s.routing_weight_elems = E * (uint64_t)info->in_channels;
        s.routing_bias_elems = E;
    }
    *sizes = s;
    return CONDCONV_STATUS_SUCCESS;
}

/* Output length and the padding before/after along one axis. */
static void axis_geometry(const condconv_layer_info *info, int64_t in, int kernel, int stride, int dilation,
                          int explicit_pad, int64_t *out, int64_t *pad_before, int64_t *pad_after)
{
    const int64_t extent = (int64_t)(kernel - 1) * dilation + 1;
    if (info->padding_mode == CONDCONV_PADDING_SAME) {
        /* TensorFlow / timm: out = ceil(in / stride); the odd pixel of padding goes after. */
        const int64_t o = (in + stride - 1) / stride;
        int64_t total = (o - 1) * stride + extent - in;
        if (total < 0) total = 0;
        *pad_before = total / 2;
        *pad_after = total - total / 2;
        *out = o;
        return;
    }
    *pad_before = *pad_after = explicit_pad;
    const int64_t span = in + 2 * (int64_t)explicit_pad - extent;
    *out = span < 0 ? 0 : span / stride + 1;
}

condconv_status cc_geometry_make(const condconv_layer_info *info, int n, int h, int w, cc_geometry *geom,
                                 const char *func)
{
    if (n <= 0 || h <= 0 || w <= 0)
        return cc_fail(CONDCONV_STATUS_BAD_SIZE, "%s: input size must be positive (n=%d, h=%d, w=%d)", func, n, h, w);
    int64_t oh, ow, pt, pb, pl, pr;
    axis_geometry(info, h, info->kernel_h, info->stride_h, info->dilation_h, info->pad_h, &oh, &pt, &pb);
    axis_geometry(info, w, info->kernel_w, info->stride_w, info->dilation_w, info->pad_w, &ow, &pl, &pr);
    if (oh <= 0 || ow <= 0)
        return cc_fail(CONDCONV_STATUS_EMPTY_OUTPUT,
                       "%s: a %dx%d input with kernel %dx%d, dilation %dx%d, padding %dx%d gives an empty output", func,
                       h, w, info->kernel_h, info->kernel_w, info->dilation_h, info->dilation_w, info->pad_h,
                       info->pad_w);
    if (oh > INT32_MAX || ow > INT32_MAX || pb > INT32_MAX || pr > INT32_MAX)
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW, "%s: output size %lldx%lld does not fit an int", func,
                       (long long)oh, (long long)ow);
    cc_geometry g = {0};
    g.n = n;
    g.h = h;
    g.w = w;
    g.out_h = (int)oh;
    g.out_w = (int)ow;
    g.pad_top = (int)pt;
    g.pad_bottom = (int)pb;
    g.pad_left = (int)pl;
    g.pad_right = (int)pr;
    const size_t es = cc_dtype_size(info->dtype);
    if (!cc_mul4_u64((uint64_t)n, (uint64_t)info->in_channels, (uint64_t)h, (uint64_t)w, &g.x_elems))
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW, "%s: the input %d x %d x %d x %d overflows a 64-bit count", func,
                       n, info->in_channels, h, w);
    CC_TRY(check_bytes(g.x_elems, es, "the input", func));
    if (!cc_mul4_u64((uint64_t)n, (uint64_t)info->out_channels, (uint64_t)oh, (uint64_t)ow, &g.y_elems))
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW, "%s: the output %d x %d x %lld x %lld overflows a 64-bit count",
                       func, n, info->out_channels, (long long)oh, (long long)ow);
    CC_TRY(check_bytes(g.y_elems, es, "the output", func));
    g.alpha_elems = (uint64_t)n * (uint64_t)info->num_experts;
    *geom = g;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_desc_get_output_dims(condconv_layer_desc_t desc, int h, int w, int *out_h, int *out_w,
                                                    int pads[4])
{
    static const char func[] = "condconv_layer_desc_get_output_dims";
    CC_CHECK_DESC(desc, func);
    CC_TRY(cc_layer_info_validate(&desc->info, func));
    cc_geometry g = {0};
    CC_TRY(cc_geometry_make(&desc->info, 1, h, w, &g, func));
    if (out_h) *out_h = g.out_h;
    if (out_w) *out_w = g.out_w;
    if (pads) {
        pads[0] = g.pad_top;
        pads[1] = g.pad_bottom;
        pads[2] = g.pad_left;
        pads[3] = g.pad_right;
    }
    return CONDCONV_STATUS_SUCCESS;
}
