/* cudnn_grouped — the design card's path: aggregate every sample's filters
 * into the workspace, then one cuDNN convolution that treats the batch as
 * groups: x viewed as 1 x (N*Cin) x H x W, filters (N*Cout) x (Cin/g) x kh x kw,
 * N*g groups, y viewed as 1 x (N*Cout) x Ho x Wo (the same bytes as
 * N x Cout x Ho x Wo). Bias + ReLU fused into cuDNN when it accepts it
 * (f32), otherwise one epilogue kernel. Applies to every layer, in every
 * dtype; per-sample filters are stored in the layer's dtype (rounded once),
 * per-sample biases in f32.
 *
 * NHWC: the batch folds into channels only in NCHW ([N][C][H][W] is
 * [1][N*C][H][W]; [N][H][W][C] is not), so an NHWC input is first
 * transposed into NCHW in the workspace (the gather kernel, padding it too if
 * needed), the convolution writes NCHW into the workspace, and the epilogue
 * transposes it into y with the bias and activation: two extra passes over
 * the activations, which AUTO weighs by measuring. */
#include <stdio.h>

#include "algo.h"
#include "context.h"
#include "error.h"
#include "phase_timer.h"

static condconv_status grouped_check(const struct condconv_layer *layer, const cc_geometry *geom, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    CC_TRY(cc_check_int_limits(layer, geom, (long long)geom->n * info->in_channels,
                               (long long)geom->n * info->out_channels, "cudnn_grouped", func));
    if ((double)geom->n * (double)layer->weights->sizes.filter_elems > 2147483647.0)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: cudnn_grouped needs N * |W| < 2^31 per-sample filter elements (N=%d, |W|=%llu)", func,
                       geom->n, (unsigned long long)layer->weights->sizes.filter_elems);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status grouped_prepare(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math,
                                       condconv_algo_select select, cc_scratch *scratch, cc_algo_state *state,
                                       const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const int n = geom->n;
    state->algo = CONDCONV_ALGO_CUDNN_GROUPED;
    state->math = math;
    state->transpose_out = info->layout == CONDCONV_LAYOUT_NHWC;
    cc_plan_gather_for_cudnn(layer, geom, 1, state);
    /* The batch folded into channels and groups. */
    cc_conv_shape shape = cc_conv_shape_for(layer, geom, state);
    shape.n = 1;
    shape.c = n * info->in_channels;
    shape.k = n * info->out_channels;
    shape.groups = n * info->groups;
    const int want_fused = info->has_bias && info->activation == CONDCONV_ACTIVATION_RELU && !state->transpose_out;
    if (state->variant == 1) {
        /* The candidate: cuDNN's graph API (no fused bias + ReLU: the epilogue adds them). */
        CC_TRY(cc_cudnn_conv_create_graph(layer->ctx, &shape, math, select, scratch, &state->conv, func));
        snprintf(state->variant_name, sizeof state->variant_name, "graph");
    } else {
        CC_TRY(cc_cudnn_conv_create(layer->ctx, &shape, math, select, want_fused, scratch, &state->conv, func));
    }
    state->has_conv = 1;
    cc_cudnn_conv_describe(&state->conv, state->backend, sizeof state->backend);

    state->off_conv_workspace = cc_layout_aggregated_workspace(layer, geom, state);
    /* cuDNN reads x unless it was gathered, and writes y unless NHWC's
     * transpose goes through the workspace. */
    state->workspace_bytes = cc_reserve_staging(layer, geom, !state->transpose_out, state,
                                                state->off_conv_workspace + state->conv.workspace_bytes);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status grouped_run(const struct condconv_layer *layer, const cc_geometry *geom,
                                   const cc_algo_state *state, const cc_forward_buffers *buffers, const char *func)
{
    const void *filters = buffers->workspace + state->off_filters;
    const float *biases =
        layer->weights->info.has_bias ? (const float *)(const void *)(buffers->workspace + state->off_biases) : NULL;
    CC_TRY(cc_run_aggregate(layer, geom, state, buffers, func));
    const void *x;
    CC_TRY(cc_run_gather(layer, state, buffers, &x, func));
    void *out = state->transpose_out ? (void *)(buffers->workspace + state->off_z) : cc_library_y(state, buffers);
    CC_PHASE_BEGIN(CC_PHASE_CONV, "condconv.conv", layer->ctx->stream);
    const condconv_status st = cc_cudnn_conv_run(layer->ctx, &state->conv, x, filters, biases, out,
                                                 buffers->workspace + state->off_conv_workspace, func);
    CC_PHASE_END(CC_PHASE_CONV, layer->ctx->stream);
    CC_TRY(st);
    if (!state->transpose_out) CC_TRY(cc_unstage_y(layer, state, buffers, func));
    if (state->conv.fused_bias_relu) return CONDCONV_STATUS_SUCCESS;
    return cc_run_bias_activation(layer, geom, state, buffers, biases, func);
}

/* Variant 1 (a candidate, issue 19): the convolution through cuDNN's graph
 * API (cudnn_graph.h), whose engine heuristics reach the grouped kernels
 * PyTorch runs for the batch as groups; AUTO times it against the legacy
 * API's algorithms a GPU measured. */
static int grouped_variants(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math)
{
    (void)layer;
    (void)geom;
    (void)math;
    return 2;
}

const cc_algo_ops cc_algo_cudnn_grouped = {
    CONDCONV_ALGO_CUDNN_GROUPED, grouped_check, grouped_prepare, grouped_run, grouped_variants, 1};
