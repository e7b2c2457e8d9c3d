/* The cuDNN graph-API candidate (variant 1 "graph" of cudnn_grouped and
 * mixture, host/cudnn_graph.c) end to end on the CPU execution layer, whose
 * src/libs.cpp emulates the backend API: for each case a layer forced to
 * the algorithm gets its plan (variant 0), whose state is then replaced by
 * variant 1 prepared through the algorithm's ops, and condconv_forward runs
 * it against the double reference, in f32, f16 and bf16, NCHW and NHWC,
 * grouped, strided, dilated and padded layers. Also: the numerical-note
 * filter (strict f32 never runs the emulation's FFT or tensor-core engines,
 * TF32 mode and half data do take tensor cores; checked in plan info's
 * backend text and on the filter itself), heuristics mode B when mode A
 * offers nothing usable, a shape no engine accepts (NOT_SUPPORTED), and the
 * emulation's refusal of an unknown attribute or a wrong attribute type. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cudnn.h>

#include "algo.h"
#include "context.h"
#include "cudnn_graph.h"
#include "emu_forward.h"
#include "emu_util.h"
#include "gpu_util.h"
#include "layer.h"
#include "plan.h"
#include "test_util.h"

typedef struct graph_case {
    const char *name;
    tu_layer_spec spec;
    condconv_dtype dtype;
    condconv_layout layout;
    condconv_math math;
    int n, h, w;
    const char *backend_has;   /* plan info's backend must contain this */
    const char *backend_lacks; /* and not this (NULL: no check) */
} graph_case;

static graph_case make_case(const char *name, tu_layer_spec spec, condconv_dtype dtype, condconv_layout layout,
                            condconv_math math, int n, int h, int w, const char *backend_has, const char *backend_lacks)
{
    graph_case c = {name, spec, dtype, layout, math, n, h, w, backend_has, backend_lacks};
    return c;
}

/* Replaces the plan's state by the algorithm's variant 1; the status of its prepare. */
static condconv_status use_graph_variant(condconv_layer_t layer, cc_plan *plan, condconv_algo algo, char *backend,
                                         size_t backend_len)
{
    const cc_algo_ops *ops = cc_algo_lookup(algo);
    if (ops == NULL || ops->variants == NULL) {
        EXPECT(0, "%s has no variants", condconv_algo_name(algo));
        return CONDCONV_STATUS_INTERNAL_ERROR;
    }
    EXPECT(ops->variants(layer, &plan->geom, plan->math) == 2, "%s: the graph variant does not apply",
           condconv_algo_name(algo));
    cc_algo_state state;
    memset(&state, 0, sizeof state);
    state.variant = 1;
    state.aggregate_variant = plan->aggregate_variant;
    cc_scratch scratch;
    memset(&scratch, 0, sizeof scratch);
    scratch.stream = layer->ctx->stream;
    const condconv_status st =
        ops->prepare(layer, &plan->geom, plan->math, CONDCONV_SELECT_MEASURE, &scratch, &state, "test_emu_graph");
    cc_scratch_free(&scratch);
    if (st != CONDCONV_STATUS_SUCCESS) {
        cc_algo_state_destroy(&state);
        return st;
    }
    state.aggregate_variant = plan->aggregate_variant;
    EXPECT(strcmp(state.variant_name, "graph") == 0, "variant name '%s'", state.variant_name);
    EXPECT(state.conv.use_graph && state.conv.graph.plan != NULL, "no graph plan");
    snprintf(backend, backend_len, "%s", state.backend);
    cc_algo_state_destroy(&plan->state);
    if (!plan->unaligned_same) cc_algo_state_destroy(&plan->state_unaligned);
    plan->state = state;
    plan->unaligned_same = 1;
    plan->workspace_bytes = plan->alpha_bytes + state.workspace_bytes;
    return st;
}

static void run_case(condconv_context_t ctx, const graph_case *gc, condconv_algo algo, condconv_status want)
{
    const tu_layer_spec *s = &gc->spec;
    EXPECT_OK(condconv_context_set_math(ctx, gc->math));
    EXPECT_OK(condconv_context_set_algo_select(ctx, CONDCONV_SELECT_HEURISTIC));
    tu_params p;
    tu_make_params(s, &p);
    void *hp[4];
    tu_params_in_dtype(&p, gc->dtype, hp);
    const condconv_params view = {hp[0], hp[1], hp[2], hp[3]};
    condconv_layer_desc_t desc = tu_make_desc(s);
    EXPECT_OK(condconv_layer_desc_set_format(desc, gc->dtype, gc->layout));
    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, gc->h, gc->w, &ho, &wo, NULL));
    condconv_layer_t layer = NULL;
    if (EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer))) {
        EXPECT_OK(condconv_layer_set_algo(layer, algo));
        cc_plan *plan = NULL;
        if (EXPECT_OK(cc_plan_get(layer, gc->n, gc->h, gc->w, &plan, "test_emu_graph"))) {
            char backend[256] = "";
            const condconv_status st = use_graph_variant(layer, plan, algo, backend, sizeof backend);
            printf("  %s, %s[graph]: %s%s\n", gc->name, condconv_algo_name(algo),
                   st == CONDCONV_STATUS_SUCCESS ? backend : "refused: ",
                   st == CONDCONV_STATUS_SUCCESS ? "" : condconv_last_error());
            EXPECT(st == want, "%s, %s: prepare returned %s, expected %s", gc->name, condconv_algo_name(algo),
                   condconv_status_string(st), condconv_status_string(want));
            if (st == CONDCONV_STATUS_SUCCESS) {
                EXPECT(gc->backend_has == NULL || strstr(backend, gc->backend_has) != NULL,
                       "%s: backend '%s' lacks '%s'", gc->name, backend, gc->backend_has);
                EXPECT(gc->backend_lacks == NULL || strstr(backend, gc->backend_lacks) == NULL,
                       "%s: backend '%s' has '%s'", gc->name, backend, gc->backend_lacks);
                eu_check_forward(layer, gc->name, &gc->spec, gc->dtype, gc->layout, &p, gc->n, gc->h, gc->w, ho, wo);
            }
        }
        condconv_layer_destroy(layer);
    }
    condconv_layer_desc_destroy(desc);
    for (int i = 0; i < 4; ++i) free(hp[i]);
    tu_free_params(&p);
}

/* The filter itself: which notes each mode and dtype refuses. */
static void note_filter(void)
{
#define N(x) (1u << (unsigned)(x))
    const cc_cudnn_notes tc = N(CUDNN_NUMERICAL_NOTE_TENSOR_CORE), fft = N(CUDNN_NUMERICAL_NOTE_FFT);
    const cc_cudnn_notes wino = N(CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4);
    const cc_cudnn_notes down = N(CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS);
    const cc_cudnn_notes nondet = N(CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC);
#undef N
    EXPECT(cc_cudnn_graph_notes_allowed(CONDCONV_DTYPE_F32, CONDCONV_MATH_F32, 0), "strict f32, no notes");
    EXPECT(cc_cudnn_graph_notes_allowed(CONDCONV_DTYPE_F32, CONDCONV_MATH_F32, nondet), "strict f32, nondeterministic");
    EXPECT(!cc_cudnn_graph_notes_allowed(CONDCONV_DTYPE_F32, CONDCONV_MATH_F32, tc), "strict f32 took TF32");
    EXPECT(cc_cudnn_graph_notes_allowed(CONDCONV_DTYPE_F32, CONDCONV_MATH_TF32, tc), "TF32 mode refused tensor cores");
    EXPECT(cc_cudnn_graph_notes_allowed(CONDCONV_DTYPE_F16, CONDCONV_MATH_F32, tc), "f16 refused tensor cores");
    const condconv_dtype dtypes[3] = {CONDCONV_DTYPE_F32, CONDCONV_DTYPE_F16, CONDCONV_DTYPE_BF16};
    for (int d = 0; d < 3; ++d)
        for (int m = 0; m < 2; ++m) {
            const condconv_math math = m ? CONDCONV_MATH_TF32 : CONDCONV_MATH_F32;
            EXPECT(!cc_cudnn_graph_notes_allowed(dtypes[d], math, fft), "FFT taken (dtype %d, math %d)", d, m);
            EXPECT(!cc_cudnn_graph_notes_allowed(dtypes[d], math, wino), "Winograd taken (dtype %d, math %d)", d, m);
            EXPECT(!cc_cudnn_graph_notes_allowed(dtypes[d], math, down | tc), "down-convert taken (dtype %d, math %d)",
                   d, m);
        }
}

/* The emulation refuses what cuDNN refuses: an attribute the descriptor
 * does not have, a wrong attribute type, a setting after Finalize. */
static void emulation_refusals(void)
{
    cudnnBackendDescriptor_t t = NULL;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_TENSOR_DESCRIPTOR, &t) != CUDNN_STATUS_SUCCESS) {
        EXPECT(0, "cudnnBackendCreateDescriptor");
        return;
    }
    const int64_t one = 1;
    const float f = 1.0f;
    EXPECT(cudnnBackendSetAttribute(t, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_INT64, 1, &one) ==
               CUDNN_STATUS_BAD_PARAM,
           "a convolution attribute on a tensor accepted");
    EXPECT(cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_FLOAT, 1, &f) == CUDNN_STATUS_BAD_PARAM,
           "a float unique id accepted");
    EXPECT(cudnnBackendFinalize(t) == CUDNN_STATUS_BAD_PARAM, "an unset tensor finalized");
    EXPECT(cudnnBackendDestroyDescriptor(t) == CUDNN_STATUS_SUCCESS, "destroy");
}

int main(void)
{
    tu_seed_from_env();
    note_filter();
    emulation_refusals();
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish("test_emu_graph");
    graph_case cases[8];
    int count = 0;
    /* Strict f32: the plain engine only (engine 0), never FFT (1) or tensor
     * cores (12). Elsewhere engines 0 and 12 both pass the filter and the
     * faster (as the emulation times them) is kept; FFT never. */
    cases[count] = make_case("f32 NCHW dense 3x3 padded", tu_basic_spec(6, 5, 3, 3), CONDCONV_DTYPE_F32,
                             CONDCONV_LAYOUT_NCHW, CONDCONV_MATH_F32, 3, 7, 6, "engine 0 (mode", "tensor_core");
    cases[count].spec.pad_h = cases[count].spec.pad_w = 1;
    cases[count].spec.has_bias = 1;
    cases[count].spec.activation = CONDCONV_ACTIVATION_RELU;
    ++count;
    /* Grouped, strict f32: mode A offers only FFT and tensor cores here, so mode B. */
    cases[count] = make_case("f32 NHWC grouped strided", tu_basic_spec(8, 6, 3, 2), CONDCONV_DTYPE_F32,
                             CONDCONV_LAYOUT_NHWC, CONDCONV_MATH_F32, 2, 9, 8, "engine 0 (mode B)", "fft");
    cases[count].spec.groups = 2;
    cases[count].spec.stride_h = 2;
    cases[count].spec.stride_w = 3;
    cases[count].spec.pad_h = 1;
    cases[count].spec.routing = CONDCONV_ROUTING_SIGMOID;
    ++count;
    /* TF32 mode: FFT still refused. */
    cases[count] = make_case("f32 NCHW dilated, TF32", tu_basic_spec(4, 6, 3, 2), CONDCONV_DTYPE_F32,
                             CONDCONV_LAYOUT_NCHW, CONDCONV_MATH_TF32, 2, 8, 9, "notes:", "fft");
    cases[count].spec.dil_h = 2;
    cases[count].spec.dil_w = 2;
    cases[count].spec.pad_w = 2;
    ++count;
    cases[count] = make_case("f16 NHWC pointwise", tu_basic_spec(16, 12, 1, 3), CONDCONV_DTYPE_F16,
                             CONDCONV_LAYOUT_NHWC, CONDCONV_MATH_F32, 3, 4, 5, "notes:", "fft");
    cases[count].spec.routing = CONDCONV_ROUTING_SOFTMAX;
    cases[count].spec.has_bias = 1;
    ++count;
    cases[count] = make_case("bf16 NCHW grouped dilated strided", tu_basic_spec(6, 9, 3, 2), CONDCONV_DTYPE_BF16,
                             CONDCONV_LAYOUT_NCHW, CONDCONV_MATH_F32, 2, 9, 9, "notes:", "fft");
    cases[count].spec.groups = 3;
    cases[count].spec.dil_h = 2;
    cases[count].spec.stride_w = 2;
    cases[count].spec.pad_h = cases[count].spec.pad_w = 1;
    ++count;
    cases[count] = make_case("bf16 NHWC depthwise", tu_basic_spec(4, 4, 3, 2), CONDCONV_DTYPE_BF16,
                             CONDCONV_LAYOUT_NHWC, CONDCONV_MATH_F32, 2, 5, 6, "notes:", "fft");
    cases[count].spec.groups = 4;
    cases[count].spec.pad_h = cases[count].spec.pad_w = 1;
    ++count;
    cases[count] = make_case("f16 NCHW dense 3x3", tu_basic_spec(5, 7, 3, 3), CONDCONV_DTYPE_F16, CONDCONV_LAYOUT_NCHW,
                             CONDCONV_MATH_F32, 2, 6, 5, "notes:", "fft");
    cases[count].spec.activation = CONDCONV_ACTIVATION_RELU;
    cases[count].spec.has_bias = 1;
    ++count;
    const condconv_algo algos[2] = {CONDCONV_ALGO_CUDNN_GROUPED, CONDCONV_ALGO_MIXTURE};
    for (int c = 0; c < count; ++c)
        for (int a = 0; a < 2; ++a) run_case(ctx, &cases[c], algos[a], CONDCONV_STATUS_SUCCESS);
    /* A 7x7 filter in strict f32: only the FFT and tensor-core engines take
     * it here, both refused, so the candidate is NOT_SUPPORTED (AUTO skips it). */
    graph_case refused = make_case("f32 NCHW 7x7 strict", tu_basic_spec(3, 4, 7, 2), CONDCONV_DTYPE_F32,
                                   CONDCONV_LAYOUT_NCHW, CONDCONV_MATH_F32, 1, 9, 9, NULL, NULL);
    refused.spec.pad_h = refused.spec.pad_w = 3;
    for (int a = 0; a < 2; ++a) run_case(ctx, &refused, algos[a], CONDCONV_STATUS_NOT_SUPPORTED);
    /* The same shape in TF32 mode runs: tensor cores (engine 12), the only engine left. */
    refused.name = "f32 NCHW 7x7 TF32";
    refused.math = CONDCONV_MATH_TF32;
    refused.backend_has = "engine 12 (mode A), notes: tensor_core";
    for (int a = 0; a < 2; ++a) run_case(ctx, &refused, algos[a], CONDCONV_STATUS_SUCCESS);
    EXPECT_OK(condconv_context_destroy(ctx));
    return tu_finish("test_emu_graph");
}
