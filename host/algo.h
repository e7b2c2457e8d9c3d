/* The algorithms behind condconv_forward. Each one says whether it applies
 * to a layer and shape (NOT_SUPPORTED with the reason when not), prepares
 * its state for a shape (descriptors, sub-algorithm choice, workspace size),
 * and runs asynchronously on the context's stream with no allocation and no
 * synchronisation. Routing is done before `run` by the caller, so every
 * algorithm receives alpha [N][E] on the device. */
#ifndef CONDCONV_HOST_ALGO_H
#define CONDCONV_HOST_ALGO_H

#include <stddef.h>

#include "condconv.h"
#include "cudnn_conv.h"
#include "fused_conv.h"
#include "fused_conv_tc.h"
#include "gather.h"
#include "layer.h"
#include "scratch.h"
#include "staging.h"

/* Most kernel variants one algorithm offers AUTO (issue 19's candidates). */
#define CC_MAX_ALGO_VARIANTS 3 /* fused on tensor cores: gen 1, gen 2, gen 2 with the MMA mix */

typedef struct cc_algo_state {
    condconv_algo algo;
    /* Which of the algorithm's variants (cc_algo_ops.variants), set by the
     * caller before prepare: 0 is the GPU-measured default, others are
     * candidates AUTO times. prepare names it in variant_name ("" for 0). */
    int variant;
    char variant_name[48];
    /* The aggregation kernel's variant (kernels/aggregate.h), for the
     * algorithms that aggregate: the plan's choice, set after prepare. */
    int aggregate_variant;
    condconv_math math;
    size_t workspace_bytes; /* this algorithm's part of the workspace */
    char backend[256];      /* condconv_plan_info.backend */
    cc_cudnn_conv conv;     /* cudnn_grouped, mixture */
    int has_conv;
    /* The output is computed in NCHW into the workspace at off_z and the
     * epilogue transposes it into the NHWC y (cudnn_grouped, NHWC layers). */
    int transpose_out;
    /* Input windows gathered into the workspace first (kernels/gather.h):
     * im2col for a k x k GEMM, subsampling for a strided 1x1 GEMM, the
     * asymmetric padding cuDNN cannot express, or NHWC input transposed for
     * an algorithm that computes in NCHW. */
    int gather;
    cc_gather_args gather_args;
    /* Byte offsets of the pieces within this algorithm's workspace. */
    size_t off_gather, off_filters, off_biases, off_z, off_conv_workspace;
    /* What the algorithm's cuDNN/cuBLAS call touches directly, and where a
     * less-aligned x or y is staged (staging.h); the workspace always has
     * room for both, so its size does not depend on the pointers. */
    int lib_reads_x, lib_writes_y;
    size_t off_stage_x, off_stage_y, stage_x_bytes, stage_y_bytes;
    /* fused: the kernel's configuration and its split-K buffers. */
    cc_fused_config fused;
    cc_fused_tc_config fused_tc; /* fused, f16/bf16 layers */
    float *fused_partial;
    unsigned int *fused_counters;
    /* Device memory the state owns (freed by cc_algo_state_destroy). */
    void *owned;
} cc_algo_state;

typedef struct cc_forward_buffers {
    const void *x; /* the layer's dtype and layout */
    void *y;
    const float *alpha;       /* [N][E], already computed */
    unsigned char *workspace; /* the algorithm's part, state.workspace_bytes long */
} cc_forward_buffers;

typedef struct cc_algo_ops {
    condconv_algo id;
    condconv_status (*check)(const struct condconv_layer *layer, const cc_geometry *geom, const char *func);
    condconv_status (*prepare)(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math,
                               condconv_algo_select select, cc_scratch *scratch, cc_algo_state *state,
                               const char *func);
    condconv_status (*run)(const struct condconv_layer *layer, const cc_geometry *geom, const cc_algo_state *state,
                           const cc_forward_buffers *buffers, const char *func);
    /* How many variants apply to this layer, shape and math (1 to
     * CC_MAX_ALGO_VARIANTS); NULL: one. */
    int (*variants)(const struct condconv_layer *layer, const cc_geometry *geom, condconv_math math);
    /* 1 if the algorithm runs the aggregation kernel (its variant is then
     * the plan's choice). */
    int aggregates;
} cc_algo_ops;

/* The table of algorithms, or NULL for AUTO / an invalid value. */
const cc_algo_ops *cc_algo_lookup(condconv_algo algo);

void cc_algo_state_destroy(cc_algo_state *state);

/* Pieces the algorithms share. */
size_t cc_align256(size_t bytes);
/* Fails with NOT_SUPPORTED unless every count fits the int that cuDNN,
 * cuBLAS and the kernels take. */
condconv_status cc_check_int_limits(const struct condconv_layer *layer, const cc_geometry *geom,
                                    long long batch_channels_in, long long batch_channels_out, const char *algo,
                                    const char *func);
/* Sets up state->gather for a cuDNN convolution: asymmetric padding (cuDNN
 * pads symmetrically only) is done by padding the input into the workspace,
 * gather_args.out_h x gather_args.out_w, in the layer's layout; with
 * to_nchw an NHWC input is always gathered, transposed to NCHW (and padded
 * if needed). */
void cc_plan_gather_for_cudnn(const struct condconv_layer *layer, const cc_geometry *geom, int to_nchw,
                              cc_algo_state *state);
/* Bytes of the gathered input, 0 when the state gathers nothing. */
size_t cc_gather_bytes(const cc_algo_state *state);
/* Workspace of the algorithms that aggregate per-sample filters:
 * [gathered input][filters N*|W|, dtype][biases N*Cout, f32][NCHW output
 * when transpose_out], 256-byte aligned pieces. Sets off_gather,
 * off_filters, off_biases and off_z; returns the end offset. */
size_t cc_layout_aggregated_workspace(const struct condconv_layer *layer, const cc_geometry *geom,
                                      cc_algo_state *state);
/* The cuDNN convolution of the layer's geometry, reading the padded input
 * when the state gathers one (pads then 0): everything but the batch,
 * channel, filter and group counts, which differ between algorithms. */
cc_conv_shape cc_conv_shape_for(const struct condconv_layer *layer, const cc_geometry *geom,
                                const cc_algo_state *state);
/* Sets lib_reads_x (the library reads x itself: nothing gathered) and
 * lib_writes_y, and reserves the staging of both after `end` (the end
 * offset of the algorithm's other pieces); returns the new end. */
size_t cc_reserve_staging(const struct condconv_layer *layer, const cc_geometry *geom, int lib_writes_y,
                          cc_algo_state *state, size_t end);
/* Runs the gather of the input into the workspace if the state asks for it,
 * or else stages a less-aligned x that the library would read; *x_used is
 * the input the convolution should read. */
condconv_status cc_run_gather(const struct condconv_layer *layer, const cc_algo_state *state,
                              const cc_forward_buffers *buffers, const void **x_used, const char *func);
/* Where the library should write y: y itself, or its staging slot when y
 * is less aligned than CC_LIB_ALIGNMENT and the library writes it. */
void *cc_library_y(const cc_algo_state *state, const cc_forward_buffers *buffers);
/* Copies a staged y into the caller's y (nothing when y was not staged). */
condconv_status cc_unstage_y(const struct condconv_layer *layer, const cc_algo_state *state,
                             const cc_forward_buffers *buffers, const char *func);
/* Per-sample filters and biases [N][...] into the workspace. */
condconv_status cc_run_aggregate(const struct condconv_layer *layer, const cc_geometry *geom,
                                 const cc_algo_state *state, const cc_forward_buffers *buffers, const char *func);
/* Bias [N][Cout] (if biases != NULL) and activation: in place over y in
 * the layer's layout, or from the NCHW output at off_z into y when the
 * state transposes (always launched then, even with nothing to add). */
condconv_status cc_run_bias_activation(const struct condconv_layer *layer, const cc_geometry *geom,
                                       const cc_algo_state *state, const cc_forward_buffers *buffers,
                                       const float *biases, const char *func);
/* Sets up state->gather as the layer's im2col (every tap at every output
 * position, kernels/gather.h) in the given order (CC_GATHER_*). */
void cc_plan_gather_im2col(const struct condconv_layer *layer, const cc_geometry *geom, int order,
                           cc_algo_state *state);

extern const cc_algo_ops cc_algo_cudnn_grouped;
extern const cc_algo_ops cc_algo_gemm_batched;
extern const cc_algo_ops cc_algo_depthwise_fused;
extern const cc_algo_ops cc_algo_mixture;
extern const cc_algo_ops cc_algo_fused;

#endif
