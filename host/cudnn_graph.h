/* One forward convolution through cuDNN's graph (backend) API: the tensors
 * and convolution as backend descriptors, an operation graph of one
 * convolution, cuDNN's heuristics (mode A, else B) for engine configs, those
 * whose numerical notes the plan's math mode permits finalized into up to
 * CC_CUDNN_GRAPH_MAX_PLANS execution plans, timed on scratch buffers, the
 * fastest kept. A candidate beside the legacy API (cudnn_conv.h), issue 19:
 * PyTorch reaches cuDNN's fast batch-as-groups kernels this way, where the
 * legacy API's algorithms took 652 ms on an H200 for what PyTorch ran in
 * 0.23 ms; AUTO times it against the legacy path, a GPU must confirm. */
#ifndef CONDCONV_HOST_CUDNN_GRAPH_H
#define CONDCONV_HOST_CUDNN_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include <cudnn.h>

#include "condconv.h"
#include "scratch.h"

struct cc_conv_shape;

/* Execution plans finalized and timed at most. */
#define CC_CUDNN_GRAPH_MAX_PLANS 4
/* Descriptors a plan keeps (cc_cudnn_graph.sources). */
#define CC_CUDNN_GRAPH_SOURCES 7

/* Numerical notes as a bit set (1u << cudnnBackendNumericalNote_t). */
typedef unsigned int cc_cudnn_notes;

typedef struct cc_cudnn_graph {
    cudnnBackendDescriptor_t plan; /* the chosen execution plan, NULL when none */
    /* What the plan was built from (tensors, convolution, operation, graph,
     * engine config), kept as long as the plan: cuDNN copies descriptors
     * set as attributes, but nothing is lost by not relying on it. */
    cudnnBackendDescriptor_t sources[CC_CUDNN_GRAPH_SOURCES];
    size_t workspace_bytes;
    condconv_dtype dtype;
    int64_t engine_index; /* CUDNN_ATTR_ENGINE_GLOBAL_INDEX */
    int heur_mode_b;      /* found by heuristics mode B (A offered nothing usable) */
    cc_cudnn_notes notes; /* the engine's numerical notes */
    int plans_timed;      /* how many plans were timed (0: the first that ran was kept) */
    float measured_ms;    /* the chosen plan's median, < 0 when not timed */
} cc_cudnn_graph;

/* 1 if a plan in this dtype and math mode may run an engine with these
 * numerical notes (cudnn_graph.c says why, as cc_cudnn_algo_allowed). */
int cc_cudnn_graph_notes_allowed(condconv_dtype dtype, condconv_math math, cc_cudnn_notes notes);

/* Builds the graph and chooses the engine; with CONDCONV_SELECT_MEASURE the
 * candidate plans are timed on scratch buffers, otherwise the first that
 * runs is kept. NOT_SUPPORTED (with a message) when no engine cuDNN offers
 * passes the note filter and finalizes. */
condconv_status cc_cudnn_graph_create(condconv_context_t ctx, const struct cc_conv_shape *shape, condconv_math math,
                                      condconv_algo_select select, cc_scratch *scratch, cc_cudnn_graph *graph,
                                      const char *func);

/* y = conv(x, w) on the context's stream: no allocation, no
 * synchronisation (capturable). x, w and y 16-byte aligned; workspace at
 * least workspace_bytes. */
condconv_status cc_cudnn_graph_run(condconv_context_t ctx, const cc_cudnn_graph *graph, const void *x, const void *w,
                                   void *y, void *workspace, const char *func);

void cc_cudnn_graph_destroy(cc_cudnn_graph *graph);

/* "cuDNN graph f32 engine 12 (mode A), notes: tensor_core; f32 accumulation". */
void cc_cudnn_graph_describe(const cc_cudnn_graph *graph, char *out, size_t out_len);

#endif
