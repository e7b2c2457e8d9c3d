/* cuDNN's backward convolutions for the backward's batch-as-groups
 * baseline: backward data (dx = W^T * dy) and backward filter (dW = x * dy),
 * each with its own algorithm, chosen once per plan among those that are
 * deterministic and sum directly. */
#ifndef CONDCONV_HOST_CUDNN_CONV_BACKWARD_H
#define CONDCONV_HOST_CUDNN_CONV_BACKWARD_H

#include <cudnn.h>

#include "cudnn_conv.h"

typedef struct cc_cudnn_conv_bwd {
    /* Descriptors (x, w, y = dy, convolution) for each direction: each has
     * its own convolution descriptor, since the two algorithms chosen may
     * run different math types. */
    cc_cudnn_conv data, filter;
    cudnnConvolutionBwdDataAlgo_t data_algo;
    cudnnConvolutionBwdFilterAlgo_t filter_algo;
    size_t data_workspace_bytes, filter_workspace_bytes;
    int data_deterministic, filter_deterministic; /* CUDNN_DETERMINISTIC, each */
    int deterministic;                            /* both (data's alone without a filter direction) */
    int has_filter;                               /* 0: backward data only (no filter descriptors or algorithm) */
} cc_cudnn_conv_bwd;

/* Creates the descriptors and chooses both algorithms from cuDNN's
 * heuristic ranking (cudnnGet*_v7), running each candidate once on scratch
 * buffers (cuDNN's ranking sometimes offers one that then fails); with
 * with_filter 0 only the backward-data direction (an algorithm whose
 * weight gradient is condconv's own kernel: no filter algorithm is found,
 * run or given workspace, and cc_cudnn_conv_bwd_filter must not be called). With
 * `deterministic` only CUDNN_DETERMINISTIC algorithms are taken (the
 * backward's default: bitwise reproducible gradients); without, cuDNN's
 * first choice whatever its determinism. Only algorithms that sum
 * directly, under the forward's math rules (cc_cudnn_algo_allowed). */
condconv_status cc_cudnn_conv_bwd_create(condconv_context_t ctx, const cc_conv_shape *shape, condconv_math math,
                                         int deterministic, int with_filter, cc_scratch *scratch,
                                         cc_cudnn_conv_bwd *conv, const char *func);

/* dx = W^T * dy (dx overwritten). */
condconv_status cc_cudnn_conv_bwd_data(condconv_context_t ctx, const cc_cudnn_conv_bwd *conv, const void *w,
                                       const void *dy, void *dx, void *workspace, const char *func);

/* dw = x * dy, one filter gradient per output channel (dw overwritten). */
condconv_status cc_cudnn_conv_bwd_filter(condconv_context_t ctx, const cc_cudnn_conv_bwd *conv, const void *x,
                                         const void *dy, void *dw, void *workspace, const char *func);

void cc_cudnn_conv_bwd_destroy(cc_cudnn_conv_bwd *conv);

/* "cuDNN f16 bwd data algo_1, tensor ops; bwd filter algo_1, tensor ops; f32
 * accumulation" (without the filter part for a data-only plan). */
void cc_cudnn_conv_bwd_describe(const cc_cudnn_conv_bwd *conv, char *out, size_t out_len);

#endif
