/* The algorithm table and the steps several algorithms share: gathering the
 * input (padding/subsampling), aggregating per-sample filters, the bias and
 * activation epilogue. */
#include <limits.h>
#include <string.h>

#include "algo.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "phase_timer.h"

#include "aggregate.h"
#include "epilogue.h"

const cc_algo_ops *cc_algo_lookup(condconv_algo algo)
{
    switch (algo) {
    case CONDCONV_ALGO_CUDNN_GROUPED: return &cc_algo_cudnn_grouped;
    case CONDCONV_ALGO_GEMM_BATCHED: return &cc_algo_gemm_batched;
    case CONDCONV_ALGO_DEPTHWISE_FUSED: return &cc_algo_depthwise_fused;
    case CONDCONV_ALGO_MIXTURE: return &cc_algo_mixture;
    case CONDCONV_ALGO_FUSED: return &cc_algo_fused;
    case CONDCONV_ALGO_AUTO:
    case CONDCONV_ALGO_COUNT: break;
    }
    return NULL;
}

const char *condconv_algo_name(condconv_algo algo)
{
    switch (algo) {
    case CONDCONV_ALGO_AUTO: return "auto";
    case CONDCONV_ALGO_CUDNN_GROUPED: return "cudnn_grouped";
    case CONDCONV_ALGO_GEMM_BATCHED: return "gemm_batched";
    case CONDCONV_ALGO_DEPTHWISE_FUSED: return "depthwise_fused";
    case CONDCONV_ALGO_MIXTURE: return "mixture";
    case CONDCONV_ALGO_FUSED: return "fused";
    case CONDCONV_ALGO_COUNT: break;
    }
    return NULL;
}

void cc_algo_state_destroy(cc_algo_state *state)
{
    if (state->has_conv) cc_cudnn_conv_destroy(&state->conv);
    if (state->owned) (void)cudaFree(state->owned);
    memset(state, 0, sizeof *state);
}

size_t cc_align256(size_t bytes) { return (bytes + 255u) & ~(size_t)255u; }

condconv_status cc_check_int_limits(const struct condconv_layer *layer, const cc_geometry *geom,
                                    long long batch_channels_in, long long batch_channels_out, const char *algo,
                                    const char *func)
{
    (void)layer;
    if (geom->x_elems > INT_MAX || geom->y_elems > INT_MAX || batch_channels_in > INT_MAX ||
        batch_channels_out > INT_MAX)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: %s needs tensors of fewer than 2^31 elements and N*channels < 2^31 (input has %llu "
                       "elements, output %llu)",
                       func, algo, (unsigned long long)geom->x_elems, (unsigned long long)geom->y_elems);
    return CONDCONV_STATUS_SUCCESS;
}

static void gather_common(const struct condconv_layer *layer, const cc_geometry *geom, int order, cc_algo_state *state)
{
    const condconv_layer_info *info = &layer->weights->info;
    cc_gather_args *a = &state->gather_args;
    memset(a, 0, sizeof *a);
    state->gather = 1;
    a->dtype = (int)info->dtype;
    a->in_layout = (int)info->layout;
    a->out_order = order;
    a->n = geom->n;
    a->channels = info->in_channels;
    a->h = geom->h;
    a->w = geom->w;
}

void cc_plan_gather_for_cudnn(const struct condconv_layer *layer, const cc_geometry *geom, int to_nchw,
                              cc_algo_state *state)
{
    const int nhwc = layer->weights->info.layout == CONDCONV_LAYOUT_NHWC;
    const int asymmetric = geom->pad_top != geom->pad_bottom || geom->pad_left != geom->pad_right;
    state->gather = 0;
    if (!asymmetric && !(nhwc && to_nchw)) return;
    /* One tap per position: CC_GATHER_ROWS with 1 x 1 taps is NHWC itself. */
    gather_common(layer, geom, nhwc && !to_nchw ? CC_GATHER_ROWS : CC_GATHER_PLANES, state);
    cc_gather_args *a = &state->gather_args;
    a->kernel_h = a->kernel_w = 1;
    a->stride_h = a->stride_w = a->dilation_h = a->dilation_w = 1;
    if (asymmetric) {
        a->out_h = geom->h + geom->pad_top + geom->pad_bottom;
        a->out_w = geom->w + geom->pad_left + geom->pad_right;
        a->pad_top = geom->pad_top;
        a->pad_left = geom->pad_left;
    } else { /* symmetric padding stays with cuDNN */
        a->out_h = geom->h;
        a->out_w = geom->w;
    }
}

void cc_plan_gather_im2col(const struct condconv_layer *layer, const cc_geometry *geom, int order, cc_algo_state *state)
{
    const condconv_layer_info *info = &layer->weights->info;
    gather_common(layer, geom, order, state);
    cc_gather_args *a = &state->gather_args;
    a->kernel_h = info->kernel_h;
    a->kernel_w = info->kernel_w;
    a->out_h = geom->out_h;
    a->out_w = geom->out_w;
    a->stride_h = info->stride_h;
    a->stride_w = info->stride_w;
    a->dilation_h = info->dilation_h;
    a->dilation_w = info->dilation_w;
    a->pad_top = geom->pad_top;
    a->pad_left = geom->pad_left;
}

size_t cc_gather_bytes(const cc_algo_state *state)
{
    if (!state->gather) return 0;
    return (size_t)cc_gather_elems(&state->gather_args) * cc_element_size(state->gather_args.dtype);
}

size_t cc_layout_aggregated_workspace(const struct condconv_layer *layer, const cc_geometry *geom, cc_algo_state *state)
{
    const condconv_layer_info *info = &layer->weights->info;
    const size_t elem = cc_dtype_size(info->dtype);
    const size_t filter_bytes = elem * (size_t)geom->n * (size_t)layer->weights->sizes.filter_elems;
    const size_t bias_bytes = info->has_bias ? sizeof(float) * (size_t)geom->n * (size_t)info->out_channels : 0;
    const size_t z_bytes = state->transpose_out ? elem * (size_t)geom->y_elems : 0;
    state->off_gather = 0;
    state->off_filters = cc_align256(cc_gather_bytes(state));
    state->off_biases = state->off_filters + cc_align256(filter_bytes);
    state->off_z = state->off_biases + cc_align256(bias_bytes);
    return state->off_z + cc_align256(z_bytes);
}

cc_conv_shape cc_conv_shape_for(const struct condconv_layer *layer, const cc_geometry *geom, const cc_algo_state *state)
{
    const condconv_layer_info *info = &layer->weights->info;
    cc_conv_shape shape = {0};
    shape.dtype = info->dtype;
    /* NCHW when the input was transposed for the convolution. */
    shape.layout =
        state->gather && state->gather_args.out_order == CC_GATHER_PLANES ? CONDCONV_LAYOUT_NCHW : info->layout;
    shape.h = state->gather ? state->gather_args.out_h : geom->h;
    shape.w = state->gather ? state->gather_args.out_w : geom->w;
    shape.r = info->kernel_h;
    shape.s = info->kernel_w;
    /* Asymmetric padding was gathered; symmetric padding is cuDNN's. */
    const int padded = state->gather && (state->gather_args.pad_top || state->gather_args.pad_left ||
                                         state->gather_args.out_h != geom->h || state->gather_args.out_w != geom->w);
    shape.pad_h = padded ? 0 : geom->pad_top;
    shape.pad_w = padded ? 0 : geom->pad_left;
    shape.stride_h = info->stride_h;
    shape.stride_w = info->stride_w;
    shape.dilation_h = info->dilation_h;
    shape.dilation_w = info->dilation_w;
    shape.out_h = geom->out_h;
    shape.out_w = geom->out_w;
    return shape;
}

size_t cc_reserve_staging(const struct condconv_layer *layer, const cc_geometry *geom, int lib_writes_y,
                          cc_algo_state *state, size_t end)
{
    const size_t elem = cc_dtype_size(layer->weights->info.dtype);
    state->lib_reads_x = !state->gather;
    state->lib_writes_y = lib_writes_y;
    state->off_stage_x = cc_align256(end);
    state->stage_x_bytes = state->lib_reads_x ? elem * (size_t)geom->x_elems : 0;
    state->off_stage_y = state->off_stage_x + cc_align256(state->stage_x_bytes);
    state->stage_y_bytes = lib_writes_y ? elem * (size_t)geom->y_elems : 0;
    return state->off_stage_y + cc_align256(state->stage_y_bytes);
}

void *cc_library_y(const cc_algo_state *state, const cc_forward_buffers *buffers)
{
    const cc_staging st = cc_staging_decide(state->lib_reads_x, state->lib_writes_y, buffers->x, buffers->y);
    return st.y ? (void *)(buffers->workspace + state->off_stage_y) : buffers->y;
}

condconv_status cc_unstage_y(const struct condconv_layer *layer, const cc_algo_state *state,
                             const cc_forward_buffers *buffers, const char *func)
{
    const cc_staging st = cc_staging_decide(state->lib_reads_x, state->lib_writes_y, buffers->x, buffers->y);
    if (!st.y) return CONDCONV_STATUS_SUCCESS;
    return cc_cuda_status(cudaMemcpyAsync(buffers->y, buffers->workspace + state->off_stage_y, state->stage_y_bytes,
                                          cudaMemcpyDeviceToDevice, layer->ctx->stream),
                          "cudaMemcpyAsync(staged y)", func);
}

condconv_status cc_run_gather(const struct condconv_layer *layer, const cc_algo_state *state,
                              const cc_forward_buffers *buffers, const void **x_used, const char *func)
{
    *x_used = buffers->x;
    if (!state->gather) {
        const cc_staging st = cc_staging_decide(state->lib_reads_x, state->lib_writes_y, buffers->x, buffers->y);
        if (!st.x) return CONDCONV_STATUS_SUCCESS;
        /* cudaMemcpyAsync takes any alignment and runs at copy bandwidth. */
        void *dst = buffers->workspace + state->off_stage_x;
        CC_TRY(cc_cuda_status(
            cudaMemcpyAsync(dst, buffers->x, state->stage_x_bytes, cudaMemcpyDeviceToDevice, layer->ctx->stream),
            "cudaMemcpyAsync(staged x)", func));
        *x_used = dst;
        return CONDCONV_STATUS_SUCCESS;
    }
    void *dst = buffers->workspace + state->off_gather;
    CC_PHASE_BEGIN(CC_PHASE_GATHER, "condconv.gather", layer->ctx->stream);
    const cudaError_t err = cc_launch_gather(buffers->x, dst, &state->gather_args, layer->ctx->stream);
    CC_PHASE_END(CC_PHASE_GATHER, layer->ctx->stream);
    CC_TRY(cc_cuda_status(err, "cc_launch_gather", func));
    *x_used = dst;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_run_aggregate(const struct condconv_layer *layer, const cc_geometry *geom,
                                 const cc_algo_state *state, const cc_forward_buffers *buffers, const char *func)
{
    const cc_weights *w = layer->weights;
    CC_PHASE_BEGIN(CC_PHASE_AGGREGATE, "condconv.aggregate", layer->ctx->stream);
    const cudaError_t err = cc_launch_aggregate_variant(
        state->aggregate_variant, (int)w->info.dtype, w->dev_experts, w->dev_expert_bias, buffers->alpha,
        buffers->workspace + state->off_filters,
        w->dev_expert_bias ? (float *)(void *)(buffers->workspace + state->off_biases) : NULL,
        (long long)w->sizes.filter_elems, w->info.out_channels, geom->n, w->info.num_experts, layer->ctx->stream);
    CC_PHASE_END(CC_PHASE_AGGREGATE, layer->ctx->stream);
    return cc_cuda_status(err, "cc_launch_aggregate_variant", func);
}

condconv_status cc_run_bias_activation(const struct condconv_layer *layer, const cc_geometry *geom,
                                       const cc_algo_state *state, const cc_forward_buffers *buffers,
                                       const float *biases, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    if (!state->transpose_out && biases == NULL && info->activation == CONDCONV_ACTIVATION_NONE)
        return CONDCONV_STATUS_SUCCESS;
    const void *src = state->transpose_out ? (const void *)(buffers->workspace + state->off_z) : buffers->y;
    const int src_layout = state->transpose_out ? CC_LAYOUT_NCHW : (int)info->layout;
    CC_PHASE_BEGIN(CC_PHASE_EPILOGUE, "condconv.epilogue", layer->ctx->stream);
    const cudaError_t err = cc_launch_bias_activation(
        (int)info->dtype, src_layout, src, (int)info->layout, buffers->y, biases, geom->n, info->out_channels,
        (long long)geom->out_h * geom->out_w, (int)info->activation, layer->ctx->stream);
    CC_PHASE_END(CC_PHASE_EPILOGUE, layer->ctx->stream);
    return cc_cuda_status(err, "cc_launch_bias_activation", func);
}
