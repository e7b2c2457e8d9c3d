/* cuDNN's graph (backend) API for one forward convolution (cudnn_graph.h).
 * Why it may be faster than the legacy API: cuDNN's newer engines (among
 * them the grouped-convolution kernels PyTorch reaches for thousands of
 * groups) are offered only through engine heuristics; the legacy Find/Get
 * sees a fixed set of eight algorithms. A candidate: AUTO times it against
 * the legacy path at prepare; a GPU must confirm the gain. */
#include "cudnn_graph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "context.h"
#include "cuda_status.h"
#include "cudnn_conv.h"
#include "error.h"
#include "layer.h"
#include "layer_desc.h"

/* Engines needing more workspace than this are not considered (as legacy). */
#define CC_GRAPH_MAX_WORKSPACE ((size_t)1 << 30)
/* Heuristics results looked at, per mode. */
#define CC_GRAPH_MAX_CONFIGS 32
/* Timing: warm-ups and timed runs per plan, and the measured time after
 * which no further plan is timed (a slow plan costs at most a few runs). */
#define CC_GRAPH_WARMUP    2
#define CC_GRAPH_REPS      3
#define CC_GRAPH_BUDGET_MS 200.0f

/* Unique ids of the tensors in the graph and the variant pack. */
enum { UID_X = 'x', UID_W = 'w', UID_Y = 'y' };

#define NOTE(n) ((cc_cudnn_notes)1u << (unsigned)(n))

/* The note filter, for the same reasons as cc_cudnn_algo_allowed: FFT and
 * Winograd engines transform the operands (an H200 measured 7e-3 relative
 * error from a transform on f32 data), so no mode takes them; a note that
 * reduces precision (down-converted inputs, a reduced-precision reduction)
 * is refused everywhere, since condconv promises f32 accumulation. Strict
 * f32 also refuses tensor cores on f32 data, which means TF32 (~3 decimal
 * digits lost); TF32 mode and half data may take tensor-core engines. */
int cc_cudnn_graph_notes_allowed(condconv_dtype dtype, condconv_math math, cc_cudnn_notes notes)
{
    const cc_cudnn_notes never =
        NOTE(CUDNN_NUMERICAL_NOTE_FFT) | NOTE(CUDNN_NUMERICAL_NOTE_WINOGRAD) |
        NOTE(CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4) | NOTE(CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6) |
        NOTE(CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13) | NOTE(CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS) |
        NOTE(CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION);
    if (notes & never) return 0;
    if (dtype == CONDCONV_DTYPE_F32 && math != CONDCONV_MATH_TF32 && (notes & NOTE(CUDNN_NUMERICAL_NOTE_TENSOR_CORE)))
        return 0;
    return 1;
}

static cudnnDataType_t data_type(condconv_dtype dtype)
{
    return dtype == CONDCONV_DTYPE_F16    ? CUDNN_DATA_HALF
           : dtype == CONDCONV_DTYPE_BF16 ? CUDNN_DATA_BFLOAT16
                                          : CUDNN_DATA_FLOAT;
}

static condconv_status create_desc(cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *out, const char *func)
{
    *out = NULL;
    CC_CUDNN_TRY(cudnnBackendCreateDescriptor(type, out), func);
    return CONDCONV_STATUS_SUCCESS;
}

static void destroy_desc(cudnnBackendDescriptor_t *d)
{
    if (*d) (void)cudnnBackendDestroyDescriptor(*d);
    *d = NULL;
}

static condconv_status set_attr(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                                cudnnBackendAttributeType_t type, int64_t count, const void *values, const char *what,
                                const char *func)
{
    return cc_cudnn_status(cudnnBackendSetAttribute(d, name, type, count, values), what, func);
}

/* The handle attributes of the operation graph and the execution plan are
 * deprecated in newer cuDNN 9 headers (the handle comes with Execute) but
 * required by older 9.x releases, such as the GPU machine's 9.14: set by
 * number, so that both accept it and no deprecated enumerator is named. */
#define CC_ATTR_OPERATIONGRAPH_HANDLE ((cudnnBackendAttributeName_t)800)
#define CC_ATTR_EXECUTION_PLAN_HANDLE ((cudnnBackendAttributeName_t)400)

/* dims [a][b][c][d] (N, C, H, W order, as cuDNN's graph API wants them),
 * strides of the layout: NCHW packed, or NHWC (channels innermost). */
static condconv_status make_tensor(int64_t uid, cudnnDataType_t type, condconv_layout layout, int64_t n, int64_t c,
                                   int64_t h, int64_t w, cudnnBackendDescriptor_t *out, const char *func)
{
    const int64_t dims[4] = {n, c, h, w};
    int64_t strides[4];
    if (layout == CONDCONV_LAYOUT_NHWC) {
        strides[0] = h * w * c;
        strides[1] = 1;
        strides[2] = w * c;
        strides[3] = c;
    } else {
        strides[0] = c * h * w;
        strides[1] = h * w;
        strides[2] = w;
        strides[3] = 1;
    }
    const int64_t alignment = 16; /* the library passes 16-byte aligned buffers (staging.h) */
    CC_TRY(create_desc(CUDNN_BACKEND_TENSOR_DESCRIPTOR, out, func));
    CC_TRY(set_attr(*out, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, "tensor data type", func));
    CC_TRY(set_attr(*out, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, "tensor dimensions", func));
    CC_TRY(set_attr(*out, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, "tensor strides", func));
    CC_TRY(set_attr(*out, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, "tensor unique id", func));
    CC_TRY(set_attr(*out, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment, "tensor alignment", func));
    CC_CUDNN_TRY(cudnnBackendFinalize(*out), func);
    return CONDCONV_STATUS_SUCCESS;
}

/* What building a graph holds until the plan is chosen. */
typedef struct graph_build {
    cudnnBackendDescriptor_t x, w, y, conv, op, op_graph;
    cudnnBackendDescriptor_t configs[CC_CUDNN_GRAPH_MAX_PLANS];
    cudnnBackendDescriptor_t plans[CC_CUDNN_GRAPH_MAX_PLANS];
    int64_t engine_index[CC_CUDNN_GRAPH_MAX_PLANS];
    cc_cudnn_notes notes[CC_CUDNN_GRAPH_MAX_PLANS];
    size_t workspace[CC_CUDNN_GRAPH_MAX_PLANS];
    int mode_b[CC_CUDNN_GRAPH_MAX_PLANS];
    int count;
} graph_build;

static void build_destroy(graph_build *b)
{
    for (int i = 0; i < CC_CUDNN_GRAPH_MAX_PLANS; ++i) {
        destroy_desc(&b->plans[i]);
        destroy_desc(&b->configs[i]);
    }
    destroy_desc(&b->op_graph);
    destroy_desc(&b->op);
    destroy_desc(&b->conv);
    destroy_desc(&b->y);
    destroy_desc(&b->w);
    destroy_desc(&b->x);
}

static condconv_status make_graph(condconv_context_t ctx, const cc_conv_shape *s, graph_build *b, const char *func)
{
    const cudnnDataType_t type = data_type(s->dtype);
    CC_TRY(make_tensor(UID_X, type, s->layout, s->n, s->c, s->h, s->w, &b->x, func));
    /* Filters: k x (c / groups) x r x s; NHWC filters are [k][r][s][c/groups]. */
    CC_TRY(make_tensor(UID_W, type, s->layout, s->k, s->c / s->groups, s->r, s->s, &b->w, func));
    CC_TRY(make_tensor(UID_Y, type, s->layout, s->n, s->k, s->out_h, s->out_w, &b->y, func));

    const cudnnDataType_t compute = CUDNN_DATA_FLOAT; /* f32 accumulation for every dtype */
    const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    const int64_t dims = 2;
    const int64_t pad[2] = {s->pad_h, s->pad_w}, stride[2] = {s->stride_h, s->stride_w};
    const int64_t dilation[2] = {s->dilation_h, s->dilation_w};
    CC_TRY(create_desc(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, &b->conv, func));
    CC_TRY(set_attr(b->conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute, "conv compute type",
                    func));
    CC_TRY(
        set_attr(b->conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode, "conv mode", func));
    CC_TRY(
        set_attr(b->conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims, "conv spatial dims", func));
    CC_TRY(set_attr(b->conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad, "conv pre paddings", func));
    CC_TRY(
        set_attr(b->conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad, "conv post paddings", func));
    CC_TRY(set_attr(b->conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride, "conv strides", func));
    CC_TRY(set_attr(b->conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilation, "conv dilations", func));
    CC_CUDNN_TRY(cudnnBackendFinalize(b->conv), func);

    /* y = 1 * conv(x, w) + 0 * y: float scaling factors for float compute. */
    const float alpha = 1.0f, beta = 0.0f;
    CC_TRY(create_desc(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, &b->op, func));
    CC_TRY(set_attr(b->op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->x,
                    "conv op x", func));
    CC_TRY(set_attr(b->op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->w,
                    "conv op w", func));
    CC_TRY(set_attr(b->op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->y,
                    "conv op y", func));
    CC_TRY(set_attr(b->op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                    &b->conv, "conv op descriptor", func));
    CC_TRY(set_attr(b->op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha, "conv op alpha",
                    func));
    CC_TRY(set_attr(b->op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta, "conv op beta",
                    func));
    CC_CUDNN_TRY(cudnnBackendFinalize(b->op), func);

    CC_TRY(create_desc(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &b->op_graph, func));
    CC_TRY(set_attr(b->op_graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->op,
                    "operation graph ops", func));
    CC_TRY(set_attr(b->op_graph, CC_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &ctx->cudnn,
                    "operation graph handle", func));
    CC_CUDNN_TRY(cudnnBackendFinalize(b->op_graph), func);
    return CONDCONV_STATUS_SUCCESS;
}

/* The engine config's engine: its global index and numerical notes. */
static condconv_status engine_of(cudnnBackendDescriptor_t config, int64_t *index, cc_cudnn_notes *notes,
                                 const char *func)
{
    cudnnBackendDescriptor_t engine = NULL;
    CC_TRY(create_desc(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine, func));
    int64_t count = 0;
    cudnnBackendNumericalNote_t list[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    memset(list, 0, sizeof list); /* read only up to count, which cuDNN sets */
    cudnnStatus_t err = cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                                 &count, &engine);
    if (err == CUDNN_STATUS_SUCCESS)
        err = cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count, index);
    if (err == CUDNN_STATUS_SUCCESS)
        err = cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                       CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &count, list);
    destroy_desc(&engine);
    CC_TRY(cc_cudnn_status(err, "engine attributes", func));
    *notes = 0;
    for (int64_t i = 0; i < count && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; ++i)
        if ((int)list[i] >= 0 && (int)list[i] < 32) *notes |= NOTE(list[i]);
    return CONDCONV_STATUS_SUCCESS;
}

/* Finalizes an execution plan for the config; NOT_SUPPORTED-like failures
 * of cuDNN (the engine refuses at finalize) leave *plan NULL. */
static condconv_status make_plan(condconv_context_t ctx, cudnnBackendDescriptor_t config,
                                 cudnnBackendDescriptor_t *plan, size_t *workspace, const char *func)
{
    CC_TRY(create_desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, plan, func));
    CC_TRY(set_attr(*plan, CC_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &ctx->cudnn, "execution plan handle",
                    func));
    CC_TRY(set_attr(*plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &config,
                    "execution plan engine config", func));
    if (cudnnBackendFinalize(*plan) != CUDNN_STATUS_SUCCESS) {
        destroy_desc(plan);
        return CONDCONV_STATUS_SUCCESS; /* this engine does not take the problem: the next one */
    }
    int64_t bytes = 0, count = 0;
    CC_CUDNN_TRY(
        cudnnBackendGetAttribute(*plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &count, &bytes),
        func);
    if (bytes < 0 || (uint64_t)bytes > CC_GRAPH_MAX_WORKSPACE) {
        destroy_desc(plan);
        return CONDCONV_STATUS_SUCCESS;
    }
    *workspace = (size_t)bytes;
    return CONDCONV_STATUS_SUCCESS;
}

/* Heuristics in one mode; the configs that pass the note filter and
 * finalize are appended to b (up to CC_CUDNN_GRAPH_MAX_PLANS). */
static condconv_status query_mode(condconv_context_t ctx, const cc_conv_shape *s, condconv_math math,
                                  cudnnBackendHeurMode_t mode, graph_build *b, const char *func)
{
    cudnnBackendDescriptor_t heur = NULL;
    cudnnBackendDescriptor_t configs[CC_GRAPH_MAX_CONFIGS];
    memset(configs, 0, sizeof configs);
    int64_t count = 0;
    condconv_status st = create_desc(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur, func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = set_attr(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b->op_graph,
                      "heuristics graph", func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = set_attr(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode", func);
    if (st == CONDCONV_STATUS_SUCCESS && cudnnBackendFinalize(heur) != CUDNN_STATUS_SUCCESS) {
        destroy_desc(&heur); /* this mode has nothing for the graph */
        return CONDCONV_STATUS_SUCCESS;
    }
    /* How many results, then that many engine configs to fill. */
    if (st == CONDCONV_STATUS_SUCCESS)
        st = cc_cudnn_status(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, NULL),
                             "heuristics result count", func);
    if (count > CC_GRAPH_MAX_CONFIGS) count = CC_GRAPH_MAX_CONFIGS;
    for (int64_t i = 0; i < count && st == CONDCONV_STATUS_SUCCESS; ++i)
        st = create_desc(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &configs[i], func);
    int64_t returned = 0;
    if (st == CONDCONV_STATUS_SUCCESS && count > 0)
        st = cc_cudnn_status(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                      CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &returned, configs),
                             "heuristics results", func);
    if (returned > count) returned = count;
    for (int64_t i = 0; i < returned && st == CONDCONV_STATUS_SUCCESS && b->count < CC_CUDNN_GRAPH_MAX_PLANS; ++i) {
        int64_t index = -1;
        cc_cudnn_notes notes = 0;
        st = engine_of(configs[i], &index, &notes, func);
        if (st != CONDCONV_STATUS_SUCCESS || !cc_cudnn_graph_notes_allowed(s->dtype, math, notes)) continue;
        const int k = b->count;
        st = make_plan(ctx, configs[i], &b->plans[k], &b->workspace[k], func);
        if (st != CONDCONV_STATUS_SUCCESS || !b->plans[k]) continue;
        b->configs[k] = configs[i]; /* kept with its plan */
        configs[i] = NULL;
        b->engine_index[k] = index;
        b->notes[k] = notes;
        b->mode_b[k] = mode == CUDNN_HEUR_MODE_B;
        ++b->count;
    }
    for (int i = 0; i < CC_GRAPH_MAX_CONFIGS; ++i) destroy_desc(&configs[i]);
    destroy_desc(&heur);
    return st;
}

static condconv_status execute(condconv_context_t ctx, cudnnBackendDescriptor_t plan, const void *x, const void *w,
                               void *y, void *workspace, const char *func)
{
    cudnnBackendDescriptor_t pack = NULL;
    const int64_t uids[3] = {UID_X, UID_W, UID_Y};
    /* cuDNN takes every pointer as void * (it only reads x and w). */
    void *ptrs[3] = {NULL, NULL, y};
    memcpy(&ptrs[0], &x, sizeof ptrs[0]);
    memcpy(&ptrs[1], &w, sizeof ptrs[1]);
    condconv_status st = create_desc(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack, func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = set_attr(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids, "variant pack ids", func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = set_attr(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptrs,
                      "variant pack pointers", func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = set_attr(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace,
                      "variant pack workspace", func);
    if (st == CONDCONV_STATUS_SUCCESS) st = cc_cudnn_status(cudnnBackendFinalize(pack), "variant pack", func);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = cc_cudnn_status(cudnnBackendExecute(ctx->cudnn, plan, pack), "cudnnBackendExecute", func);
    destroy_desc(&pack);
    return st;
}

static int compare_floats(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static size_t elems_bytes(const cc_conv_shape *s, long long a, long long b, long long c, long long d)
{
    return cc_dtype_size(s->dtype) * (size_t)a * (size_t)b * (size_t)c * (size_t)d;
}

/* Median of CC_GRAPH_REPS runs after CC_GRAPH_WARMUP, in ms; *ms < 0 when
 * the plan failed to execute (cuDNN's error: try the next plan). A plan
 * whose second run (the first may load its kernels) takes over give_up_ms
 * (> 0) is not timed further: that run's time stands (it loses to the
 * plan that set give_up_ms). */
static condconv_status time_plan(condconv_context_t ctx, cudnnBackendDescriptor_t plan, void *x, void *w, void *y,
                                 void *ws, cudaEvent_t start, cudaEvent_t stop, float give_up_ms, float *ms,
                                 const char *func)
{
    float times[CC_GRAPH_REPS];
    *ms = -1.0f;
    for (int r = 0; r < CC_GRAPH_WARMUP + CC_GRAPH_REPS; ++r) {
        CC_CUDA_TRY(cudaEventRecord(start, ctx->stream), func);
        const condconv_status st = execute(ctx, plan, x, w, y, ws, func);
        if (st == CONDCONV_STATUS_CUDNN_ERROR) return CONDCONV_STATUS_SUCCESS;
        CC_TRY(st);
        CC_CUDA_TRY(cudaEventRecord(stop, ctx->stream), func);
        CC_CUDA_TRY(cudaEventSynchronize(stop), func);
        float t = 0.0f;
        CC_CUDA_TRY(cudaEventElapsedTime(&t, start, stop), func);
        if (r >= CC_GRAPH_WARMUP) times[r - CC_GRAPH_WARMUP] = t;
        if (r == 1 && give_up_ms > 0.0f && t > give_up_ms) {
            *ms = t;
            return CONDCONV_STATUS_SUCCESS;
        }
    }
    qsort(times, CC_GRAPH_REPS, sizeof times[0], compare_floats);
    *ms = times[CC_GRAPH_REPS / 2];
    return CONDCONV_STATUS_SUCCESS;
}

/* Index into b of the plan to keep: the fastest timed, or (not measuring)
 * the first that runs; -1 when none ran. */
static condconv_status choose(condconv_context_t ctx, const cc_conv_shape *s, condconv_algo_select select,
                              cc_scratch *scratch, graph_build *b, int *best, float *best_ms, int *timed,
                              const char *func)
{
    size_t max_ws = 0;
    for (int i = 0; i < b->count; ++i)
        if (b->workspace[i] > max_ws) max_ws = b->workspace[i];
    void *x, *w, *y, *ws = NULL;
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_X, elems_bytes(s, s->n, s->c, s->h, s->w), &x, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_W, elems_bytes(s, s->k, s->c / s->groups, s->r, s->s), &w, func));
    CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_Y, elems_bytes(s, s->n, s->k, s->out_h, s->out_w), &y, func));
    if (max_ws > 0) CC_TRY(cc_scratch_get(scratch, CC_SCRATCH_WORKSPACE, max_ws, &ws, func));
    *best = -1;
    *best_ms = -1.0f;
    *timed = 0;
    if (select != CONDCONV_SELECT_MEASURE) {
        for (int i = 0; i < b->count; ++i) {
            const condconv_status st = execute(ctx, b->plans[i], x, w, y, ws, func);
            if (st == CONDCONV_STATUS_CUDNN_ERROR) continue;
            CC_TRY(st);
            *best = i;
            return CONDCONV_STATUS_SUCCESS;
        }
        return CONDCONV_STATUS_SUCCESS;
    }
    cudaEvent_t start = NULL, stop = NULL;
    condconv_status st = cc_cuda_status(cudaEventCreate(&start), "cudaEventCreate", func);
    if (st == CONDCONV_STATUS_SUCCESS) st = cc_cuda_status(cudaEventCreate(&stop), "cudaEventCreate", func);
    float spent = 0.0f;
    for (int i = 0; i < b->count && st == CONDCONV_STATUS_SUCCESS; ++i) {
        /* Bounded: once the runs so far cost the budget, stop timing. */
        if (*best >= 0 && spent >= CC_GRAPH_BUDGET_MS) break;
        float ms = -1.0f;
        /* A plan twice as slow as the best so far is dropped after its warm-up. */
        st = time_plan(ctx, b->plans[i], x, w, y, ws, start, stop, *best >= 0 ? 2.0f * *best_ms : 0.0f, &ms, func);
        if (st != CONDCONV_STATUS_SUCCESS || ms < 0.0f) continue;
        ++*timed;
        spent += ms * (float)(CC_GRAPH_WARMUP + CC_GRAPH_REPS);
        if (*best < 0 || ms < *best_ms) {
            *best = i;
            *best_ms = ms;
        }
    }
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    return st;
}

condconv_status cc_cudnn_graph_create(condconv_context_t ctx, const cc_conv_shape *s, condconv_math math,
                                      condconv_algo_select select, cc_scratch *scratch, cc_cudnn_graph *graph,
                                      const char *func)
{
    memset(graph, 0, sizeof *graph);
    graph->dtype = s->dtype;
    graph->measured_ms = -1.0f;
    graph_build b;
    memset(&b, 0, sizeof b);
    condconv_status st = make_graph(ctx, s, &b, func);
    if (st == CONDCONV_STATUS_SUCCESS) st = query_mode(ctx, s, math, CUDNN_HEUR_MODE_A, &b, func);
    if (st == CONDCONV_STATUS_SUCCESS && b.count == 0) st = query_mode(ctx, s, math, CUDNN_HEUR_MODE_B, &b, func);
    int best = -1;
    float best_ms = -1.0f;
    if (st == CONDCONV_STATUS_SUCCESS && b.count > 0)
        st = choose(ctx, s, select, scratch, &b, &best, &best_ms, &graph->plans_timed, func);
    if (st == CONDCONV_STATUS_SUCCESS && best < 0)
        st = cc_fail(CONDCONV_STATUS_NOT_SUPPORTED,
                     "%s: cuDNN's graph API offers no engine for %dx%dx%dx%d, filters %dx%dx%dx%d, groups %d%s", func,
                     s->n, s->c, s->h, s->w, s->k, s->c / s->groups, s->r, s->s, s->groups,
                     math == CONDCONV_MATH_F32 ? " without TF32" : "");
    if (st == CONDCONV_STATUS_SUCCESS) {
        graph->plan = b.plans[best];
        b.plans[best] = NULL;
        cudnnBackendDescriptor_t *keep[CC_CUDNN_GRAPH_SOURCES] = {
            &b.x, &b.w, &b.y, &b.conv, &b.op, &b.op_graph, &b.configs[best]};
        for (int i = 0; i < CC_CUDNN_GRAPH_SOURCES; ++i) {
            graph->sources[i] = *keep[i];
            *keep[i] = NULL;
        }
        graph->workspace_bytes = b.workspace[best];
        graph->engine_index = b.engine_index[best];
        graph->notes = b.notes[best];
        graph->heur_mode_b = b.mode_b[best];
        graph->measured_ms = best_ms;
    }
    build_destroy(&b);
    return st;
}

condconv_status cc_cudnn_graph_run(condconv_context_t ctx, const cc_cudnn_graph *graph, const void *x, const void *w,
                                   void *y, void *workspace, const char *func)
{
    if (!graph->plan) return cc_fail(CONDCONV_STATUS_INTERNAL_ERROR, "%s: cuDNN graph plan not built", func);
    return execute(ctx, graph->plan, x, w, y, workspace, func);
}

void cc_cudnn_graph_destroy(cc_cudnn_graph *graph)
{
    destroy_desc(&graph->plan);
    for (int i = 0; i < CC_CUDNN_GRAPH_SOURCES; ++i) destroy_desc(&graph->sources[i]);
    memset(graph, 0, sizeof *graph);
}

void cc_cudnn_graph_describe(const cc_cudnn_graph *graph, char *out, size_t out_len)
{
    static const struct {
        cudnnBackendNumericalNote_t note;
        const char *name;
    } names[] = {
        {CUDNN_NUMERICAL_NOTE_TENSOR_CORE, "tensor_core"},
        {CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS, "down_convert_inputs"},
        {CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION, "reduced_precision_reduction"},
        {CUDNN_NUMERICAL_NOTE_FFT, "fft"},
        {CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC, "nondeterministic"},
        {CUDNN_NUMERICAL_NOTE_WINOGRAD, "winograd"},
        {CUDNN_NUMERICAL_NOTE_STRICT_NAN_PROP, "strict_nan_prop"},
    };
    char notes[128] = "";
    size_t used = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; ++i) {
        if (!(graph->notes & NOTE(names[i].note))) continue;
        const int n = snprintf(notes + used, sizeof notes - used, "%s%s", used ? "," : "", names[i].name);
        if (n < 0 || (size_t)n >= sizeof notes - used) break;
        used += (size_t)n;
    }
    snprintf(out, out_len, "cuDNN graph %s engine %lld (mode %c), notes: %s; f32 accumulation",
             cc_dtype_name(graph->dtype), (long long)graph->engine_index, graph->heur_mode_b ? 'B' : 'A',
             used ? notes : "none");
}
