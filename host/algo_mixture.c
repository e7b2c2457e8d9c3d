/* mixture — the paper's mixture-of-experts formulation: one static cuDNN
 * convolution with E*Cout filters (the experts, ordered [g][E][Cout/g] so a
 * grouped conv sees each group's filters together) into z, then
 * y = act(sum_e alpha_e (z_e + b_e)) in one epilogue kernel. E times the
 * MACs of the convolution, but cuDNN's dense kernels and no per-sample
 * filters; the workspace holds z, N*E*Cout*Ho*Wo elements. Any dtype and
 * layout: cuDNN convolves NHWC natively (the layer keeps its filters in
 * cuDNN's NHWC filter order for it), and z is stored in the layer's dtype,
 * so each expert's output is rounded once before the combination sums
 * them in f32. */
#include <limits.h>
#include <stdio.h>

#include "algo.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "phase_timer.h"

#include "epilogue.h"

static condconv_status mixture_check(const struct condconv_layer *layer, const cc_geometry *geom, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const double z_elems = (double)geom->y_elems * info->num_experts;
    if (z_elems > (double)INT_MAX || (double)info->out_channels * info->num_experts > (double)INT_MAX)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: mixture needs E * (output elements) < 2^31 (E=%d, output %llu elements)", func,
                       info->num_experts, (unsigned long long)geom->y_elems);
    return cc_check_int_limits(layer, geom, info->in_channels, (long long)info->num_experts * info->out_channels,
                               "mixture", func);
}

static condconv_status mixture_prepare(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math,
                                       condconv_algo_select select, cc_scratch *scratch, cc_algo_state *state,
                                       const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    state->algo = CONDCONV_ALGO_MIXTURE;
    state->math = math;
    cc_plan_gather_for_cudnn(layer, geom, 0, state);
    /* A static conv over the real batch with E*Cout filters. */
    cc_conv_shape shape = cc_conv_shape_for(layer, geom, state);
    shape.n = geom->n;
    shape.c = info->in_channels;
    shape.k = info->num_experts * info->out_channels;
    shape.groups = info->groups;
    if (state->variant == 1) {
        /* The candidate: cuDNN's graph API. */
        CC_TRY(cc_cudnn_conv_create_graph(layer->ctx, &shape, math, select, scratch, &state->conv, func));
        snprintf(state->variant_name, sizeof state->variant_name, "graph");
    } else {
        CC_TRY(cc_cudnn_conv_create(layer->ctx, &shape, math, select, 0, scratch, &state->conv, func));
    }
    state->has_conv = 1;
    cc_cudnn_conv_describe(&state->conv, state->backend, sizeof state->backend);

    const size_t z_bytes = cc_dtype_size(info->dtype) * (size_t)geom->y_elems * (size_t)info->num_experts;
    state->off_gather = 0;
    state->off_z = cc_align256(cc_gather_bytes(state));
    state->off_conv_workspace = state->off_z + cc_align256(z_bytes);
    /* cuDNN reads x unless it was gathered; it writes z, never y. */
    state->workspace_bytes =
        cc_reserve_staging(layer, geom, 0, state, state->off_conv_workspace + state->conv.workspace_bytes);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status mixture_run(const struct condconv_layer *layer, const cc_geometry *geom,
                                   const cc_algo_state *state, const cc_forward_buffers *buffers, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    void *z = buffers->workspace + state->off_z;
    const void *x;
    CC_TRY(cc_run_gather(layer, state, buffers, &x, func));
    CC_PHASE_BEGIN(CC_PHASE_CONV, "condconv.conv", layer->ctx->stream);
    const condconv_status st = cc_cudnn_conv_run(layer->ctx, &state->conv, x, layer->weights->dev_experts_grouped, NULL,
                                                 z, buffers->workspace + state->off_conv_workspace, func);
    CC_PHASE_END(CC_PHASE_CONV, layer->ctx->stream);
    CC_TRY(st);
    CC_PHASE_BEGIN(CC_PHASE_EPILOGUE, "condconv.epilogue", layer->ctx->stream);
    const cudaError_t err = cc_launch_mixture_combine(
        (int)info->dtype, (int)info->layout, z, buffers->alpha, layer->weights->dev_expert_bias, buffers->y, geom->n,
        info->out_channels, info->groups, info->num_experts, (long long)geom->out_h * geom->out_w,
        (int)info->activation, layer->ctx->stream);
    CC_PHASE_END(CC_PHASE_EPILOGUE, layer->ctx->stream);
    return cc_cuda_status(err, "cc_launch_mixture_combine", func);
}

/* Variant 1 (a candidate, issue 19): the static convolution through cuDNN's
 * graph API (cudnn_graph.h); AUTO times it against the legacy API. */
static int mixture_variants(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math)
{
    (void)layer;
    (void)geom;
    (void)math;
    return 2;
}

const cc_algo_ops cc_algo_mixture = {CONDCONV_ALGO_MIXTURE, mixture_check,    mixture_prepare,
                                     mixture_run,           mixture_variants, 0};
