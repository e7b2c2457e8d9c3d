/* depthwise_fused — depthwise layers (groups == Cin, any channel
 * multiplier): one custom kernel mixes each plane's filter from the experts
 * in shared memory and convolves; no per-sample filters in memory, no
 * workspace. The whole forward after routing is one launch, named
 * condconv.conv in NVTX (aggregation happens inside it). */
#include <limits.h>

#include <stdio.h>

#include "algo.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "phase_timer.h"

#include "depthwise_fused.h"

static cc_depthwise_args make_args(const struct condconv_layer *layer, const cc_geometry *geom)
{
    const condconv_layer_info *info = &layer->weights->info;
    cc_depthwise_args a = {0};
    a.dtype = (int)info->dtype;
    a.layout = (int)info->layout;
    a.experts = layer->weights->dev_experts;
    a.bias = layer->weights->dev_expert_bias;
    a.n = geom->n;
    a.in_channels = info->in_channels;
    a.multiplier = info->out_channels / info->in_channels;
    a.experts_count = info->num_experts;
    a.h = geom->h;
    a.w = geom->w;
    a.out_h = geom->out_h;
    a.out_w = geom->out_w;
    a.kernel_h = info->kernel_h;
    a.kernel_w = info->kernel_w;
    a.stride_h = info->stride_h;
    a.stride_w = info->stride_w;
    a.dilation_h = info->dilation_h;
    a.dilation_w = info->dilation_w;
    a.pad_top = geom->pad_top;
    a.pad_left = geom->pad_left;
    a.activation = (int)info->activation;
    return a;
}

static condconv_status depthwise_check(const struct condconv_layer *layer, const cc_geometry *geom, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    if (info->groups != info->in_channels)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: depthwise_fused needs a depthwise layer (groups %d != in_channels %d)", func, info->groups,
                       info->in_channels);
    const cc_depthwise_args a = make_args(layer, geom);
    const long long tiles = cc_depthwise_fused_tiles(&a);
    if (cc_depthwise_fused_smem_bytes(&a) > CC_DEPTHWISE_MAX_SMEM || tiles <= 0 || tiles > 65535)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: depthwise_fused cannot tile a %dx%d kernel with dilation %dx%d and stride %dx%d over a "
                       "%dx%d output",
                       func, info->kernel_h, info->kernel_w, info->dilation_h, info->dilation_w, info->stride_h,
                       info->stride_w, geom->out_h, geom->out_w);
    return cc_check_int_limits(layer, geom, (long long)geom->n * info->in_channels,
                               (long long)geom->n * info->out_channels, "depthwise_fused", func);
}

static condconv_status depthwise_prepare(const struct condconv_layer *layer, const cc_geometry *geom,
                                         condconv_math math, condconv_algo_select select, cc_scratch *scratch,
                                         cc_algo_state *state, const char *func)
{
    (void)geom;
    (void)select;
    (void)scratch;
    (void)func;
    state->algo = CONDCONV_ALGO_DEPTHWISE_FUSED;
    state->math = math;
    state->workspace_bytes = 0;
    snprintf(state->backend, sizeof state->backend, "condconv kernel, %s %s, f32 fma",
             cc_dtype_name(layer->weights->info.dtype), cc_layout_name(layer->weights->info.layout));
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status depthwise_run(const struct condconv_layer *layer, const cc_geometry *geom,
                                     const cc_algo_state *state, const cc_forward_buffers *buffers, const char *func)
{
    (void)state;
    cc_depthwise_args a = make_args(layer, geom);
    a.x = buffers->x;
    a.y = buffers->y;
    a.alpha = buffers->alpha;
    CC_PHASE_BEGIN(CC_PHASE_CONV, "condconv.conv", layer->ctx->stream);
    const cudaError_t err = cc_launch_depthwise_fused(&a, layer->ctx->stream);
    CC_PHASE_END(CC_PHASE_CONV, layer->ctx->stream);
    return cc_cuda_status(err, "cc_launch_depthwise_fused", func);
}

const cc_algo_ops cc_algo_depthwise_fused = {
    CONDCONV_ALGO_DEPTHWISE_FUSED, depthwise_check, depthwise_prepare, depthwise_run, NULL, 0};
