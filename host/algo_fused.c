/* fused — the per-sample kernels mixed inside the convolution (issue 13):
 * for dense and grouped layers (depthwise layers keep depthwise_fused), one
 * kernel stages each output tile's expert weights in shared memory, mixes
 * them for the block's samples with the routing weights, and convolves
 * (1x1 directly, k x k as an implicit GEMM over the input windows), bias
 * and activation in its epilogue. Per-sample kernels never reach memory, so
 * the bytes are those of a static convolution plus E*|W| read once from L2.
 * The tile, the samples per block and split-K come from the kernel's cost
 * model (cc_fused_choose); plan info's backend says which and why. Split-K
 * needs partial sums and counters that the state owns (allocated here, at
 * prepare; the kernel leaves the counters zero after every launch).
 *
 * Two kernels behind it: strict f32 layers run kernels/fused_conv.cu
 * (FMA on the CUDA cores); f16 and bf16 layers, and f32 layers when the
 * context allows TF32, run kernels/fused_conv_tc.cu in either layout (wmma
 * tensor cores, f32 accumulation; half layers' per-sample tiles rounded
 * once to the dtype in shared memory). Both kernels take NCHW and NHWC. */
#include <stdio.h>
#include <string.h>

#include "algo.h"
#include "context.h"
#include "cuda_status.h"
#include "error.h"
#include "phase_timer.h"

#include "fused_conv.h"
#include "fused_conv_tc.h"

static cc_fused_args make_args(const struct condconv_layer *layer, const cc_geometry *geom)
{
    const condconv_layer_info *info = &layer->weights->info;
    cc_fused_args a;
    memset(&a, 0, sizeof a);
    a.expert_bias = layer->weights->dev_expert_bias;
    a.packed = layer->weights->dev_experts_fused;
    a.n = geom->n;
    a.in_channels = info->in_channels;
    a.out_channels = info->out_channels;
    a.groups = info->groups;
    a.experts = info->num_experts;
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
    a.layout = (int)info->layout;
    return a;
}

static cc_fused_tc_args make_tc_args(const struct condconv_layer *layer, const cc_geometry *geom)
{
    const cc_fused_args f = make_args(layer, geom);
    cc_fused_tc_args a;
    memset(&a, 0, sizeof a);
    a.dtype = (int)layer->weights->info.dtype;
    a.layout = (int)layer->weights->info.layout;
    a.expert_bias = f.expert_bias;
    a.packed = layer->weights->dev_experts_fused_tc;
    a.n = f.n;
    a.in_channels = f.in_channels;
    a.out_channels = f.out_channels;
    a.groups = f.groups;
    a.experts = f.experts;
    a.h = f.h;
    a.w = f.w;
    a.out_h = f.out_h;
    a.out_w = f.out_w;
    a.kernel_h = f.kernel_h;
    a.kernel_w = f.kernel_w;
    a.stride_h = f.stride_h;
    a.stride_w = f.stride_w;
    a.dilation_h = f.dilation_h;
    a.dilation_w = f.dilation_w;
    a.pad_top = f.pad_top;
    a.pad_left = f.pad_left;
    a.activation = f.activation;
    return a;
}

/* Which kernel: the tensor-core one for half precision, and for f32 when
 * TF32 is allowed (the plan's math mode, which is the context's when the
 * plan is made). */
static int uses_tc(const struct condconv_layer *layer, condconv_math math)
{
    return layer->weights->info.dtype != CONDCONV_DTYPE_F32 || math == CONDCONV_MATH_TF32;
}

static condconv_status fused_check(const struct condconv_layer *layer, const cc_geometry *geom, const char *func)
{
    const condconv_layer_info *info = &layer->weights->info;
    const int tc = uses_tc(layer, layer->ctx->math);
    if (info->groups == info->in_channels)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                       "%s: fused is for dense and grouped layers; this depthwise layer (groups == in_channels) runs "
                       "depthwise_fused",
                       func);
    if ((tc ? layer->weights->dev_experts_fused_tc : layer->weights->dev_experts_fused) == NULL)
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: fused has no packed experts for this layer", func);
    char why[160] = "";
    if (tc) {
        const cc_fused_tc_args a = make_tc_args(layer, geom);
        if (!cc_fused_tc_supported(&a, why, sizeof why))
            return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: fused does not run this layer: %s", func, why);
        return CONDCONV_STATUS_SUCCESS;
    }
    const cc_fused_args a = make_args(layer, geom);
    if (!cc_fused_supported(&a, why, sizeof why))
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: fused does not run this layer: %s", func, why);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status fused_prepare(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math,
                                     condconv_algo_select select, cc_scratch *scratch, cc_algo_state *state,
                                     const char *func)
{
    (void)select;
    (void)scratch;
    const condconv_context_t ctx = layer->ctx;
    state->algo = CONDCONV_ALGO_FUSED;
    state->math = math;
    state->workspace_bytes = 0;
    if (uses_tc(layer, math)) {
        const cc_fused_tc_args t = make_tc_args(layer, geom);
        const size_t optin = (size_t)ctx->max_smem_per_block_optin;
        /* Variants 1 and 2: the second generation (cp.async pipeline), with
         * the expert mix on CUDA cores (1) or on tensor cores (2): candidates. */
        const int gen2 = state->variant >= 1, mix = state->variant == 2;
        const int ok = mix    ? cc_fused_tc2_choose_mma_mix(&t, ctx->sm_count, optin, &state->fused_tc)
                       : gen2 ? cc_fused_tc2_choose(&t, ctx->sm_count, optin, &state->fused_tc)
                              : cc_fused_tc_choose(&t, ctx->sm_count, optin, &state->fused_tc);
        if (!ok)
            return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: fused%s found no tile configuration for this shape",
                           func,
                           mix    ? "'s second tensor-core generation with the tensor-core mix"
                           : gen2 ? "'s second tensor-core generation"
                                  : "");
        if (gen2) snprintf(state->variant_name, sizeof state->variant_name, mix ? "tc gen2 mma-mix" : "tc gen2");
        snprintf(state->backend, sizeof state->backend,
                 "condconv fused kernel%s, %s %s, %s tensor cores (wmma), f32 "
                 "accumulation; %.110s",
                 mix    ? " (gen 2 candidate: cp.async pipeline, mix as MMA)"
                 : gen2 ? " (gen 2 candidate: cp.async pipeline)"
                        : "",
                 cc_dtype_name(layer->weights->info.dtype), cc_layout_name(layer->weights->info.layout),
                 layer->weights->info.dtype == CONDCONV_DTYPE_F32 ? "tf32" : "half", state->fused_tc.reason);
        return CONDCONV_STATUS_SUCCESS;
    }
    const cc_fused_args a = make_args(layer, geom);
    cc_fused_config *cfg = &state->fused;
    if (!cc_fused_choose(&a, ctx->sm_count, (size_t)ctx->max_smem_per_block_optin, CC_FUSED_MAX_SPLITS, cfg))
        return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: fused found no tile configuration for this shape", func);
    if (state->variant == 1) {
        if (!cc_fused_nhwc_loader_supported(&a, 1))
            return cc_fail(CONDCONV_STATUS_NOT_SUPPORTED, "%s: fused's coalesced NHWC loader does not run this layer",
                           func);
        cfg->nhwc_loader = 1;
        snprintf(state->variant_name, sizeof state->variant_name, "nhwc coalesced");
    }
    if (cfg->splits > 1) {
        const size_t partial_bytes = cc_align256(sizeof(float) * cfg->partial_elems);
        const size_t counter_bytes = sizeof(unsigned int) * cfg->counter_count;
        CC_CUDA_TRY(cudaMalloc(&state->owned, partial_bytes + counter_bytes), func);
        state->fused_partial = (float *)state->owned;
        state->fused_counters = (unsigned int *)(void *)((unsigned char *)state->owned + partial_bytes);
        condconv_status st = cc_cuda_status(cudaMemsetAsync(state->fused_counters, 0, counter_bytes, ctx->stream),
                                            "cudaMemsetAsync(fused counters)", func);
        if (st == CONDCONV_STATUS_SUCCESS)
            st = cc_cuda_status(cudaStreamSynchronize(ctx->stream), "cudaStreamSynchronize", func);
        if (st != CONDCONV_STATUS_SUCCESS) return st; /* the caller destroys the state, freeing `owned` */
    }
    /* The config's reason is cut to what fits beside the candidate's words. */
    snprintf(state->backend, sizeof state->backend, "condconv fused kernel, fma%s; %.170s",
             cfg->nhwc_loader ? ", coalesced NHWC loader (candidate)" : "", cfg->reason);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status fused_run(const struct condconv_layer *layer, const cc_geometry *geom,
                                 const cc_algo_state *state, const cc_forward_buffers *buffers, const char *func)
{
    if (uses_tc(layer, state->math)) {
        cc_fused_tc_args t = make_tc_args(layer, geom);
        t.x = buffers->x;
        t.y = buffers->y;
        t.alpha = buffers->alpha;
        const int gen2 = state->variant >= 1; /* the config says which mix */
        CC_PHASE_BEGIN(CC_PHASE_CONV, "condconv.conv", layer->ctx->stream);
        const cudaError_t err = gen2 ? cc_launch_fused_tc2(&t, &state->fused_tc, layer->ctx->stream)
                                     : cc_launch_fused_tc(&t, &state->fused_tc, layer->ctx->stream);
        CC_PHASE_END(CC_PHASE_CONV, layer->ctx->stream);
        return cc_cuda_status(err, gen2 ? "cc_launch_fused_tc2" : "cc_launch_fused_tc", func);
    }
    cc_fused_args a = make_args(layer, geom);
    a.x = buffers->x;
    a.y = buffers->y;
    a.alpha = buffers->alpha;
    a.partial = state->fused_partial;
    a.counters = state->fused_counters;
    CC_PHASE_BEGIN(CC_PHASE_CONV, "condconv.conv", layer->ctx->stream);
    const cudaError_t err = cc_launch_fused_conv(&a, &state->fused, layer->ctx->stream);
    CC_PHASE_END(CC_PHASE_CONV, layer->ctx->stream);
    return cc_cuda_status(err, "cc_launch_fused_conv", func);
}

/* Variant 1 (a candidate, issue 19): on tensor cores (f16/bf16, TF32) the
 * second-generation kernel (kernels/fused_conv_tc2.cu: cp.async double
 * buffering, two blocks per SM) where it runs the shape; strict-f32 NHWC
 * layers: the channel-major coalesced input loader and vector stores
 * (cc_fused_config.nhwc_loader). Variant 2 (a candidate): gen 2 with the
 * expert mix as an MMA (f16/bf16, E a multiple of 16), where the CUDA-core
 * mix's N*E*|W| FMAs would set t(E). AUTO times each against the kernel it
 * would replace. */
static int fused_variants(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math)
{
    if (uses_tc(layer, math)) {
        const cc_fused_tc_args t = make_tc_args(layer, geom);
        if (!cc_fused_tc2_supported(&t, NULL, 0)) return 1;
        return cc_fused_tc2_mma_mix_supported(&t, NULL, 0) ? 3 : 2;
    }
    if (layer->weights->info.layout != CONDCONV_LAYOUT_NHWC) return 1;
    const cc_fused_args a = make_args(layer, geom);
    return cc_fused_nhwc_loader_supported(&a, 1) ? 2 : 1;
}

const cc_algo_ops cc_algo_fused = {CONDCONV_ALGO_FUSED, fused_check, fused_prepare, fused_run, fused_variants, 0};
