/* One cuDNN convolution: descriptors, the forward algorithm chosen once (by
 * cudnnFind on scratch buffers, or cudnnGet's heuristic), its workspace size,
 * and an optional fused bias + ReLU. Shared by the batch-as-groups algorithm
 * and the mixture-of-experts algorithm. */
#ifndef CONDCONV_HOST_CUDNN_CONV_H
#define CONDCONV_HOST_CUDNN_CONV_H

#include <cudnn.h>

#include "condconv.h"
#include "cudnn_graph.h"
#include "scratch.h"

typedef struct cc_conv_shape {
    condconv_dtype dtype;   /* x, w and y; f32 accumulation */
    condconv_layout layout; /* x and y; NHWC filters are [k][r][s][c/groups] */
    int n, c, h, w;         /* input */
    int k, r, s;            /* filters: k x (c / groups) x r x s */
    int groups;
    int pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
    int out_h, out_w; /* what the caller expects; checked against cuDNN */
} cc_conv_shape;

typedef struct cc_cudnn_conv {
    cudnnTensorDescriptor_t x_desc, y_desc, bias_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    cudnnActivationDescriptor_t relu_desc;
    cudnnConvolutionFwdAlgo_t algo;
    cudnnMathType_t math_type; /* what the chosen algorithm runs: FMA, DEFAULT (f32: TF32 permitted), TENSOR_OP */
    condconv_dtype dtype;
    size_t workspace_bytes;
    int fused_bias_relu; /* run as cudnnConvolutionBiasActivationForward with a [1][k][1][1] bias */
    float measured_ms;   /* cudnnFind's time for the chosen algorithm, < 0 when not measured */
    /* The graph-API candidate (cc_cudnn_conv_create_graph): when set, run,
     * describe and destroy go to `graph` and the legacy fields are unused
     * but for dtype and workspace_bytes. */
    int use_graph;
    cc_cudnn_graph graph;
} cc_cudnn_conv;

/* Creates the descriptors and chooses the algorithm. want_bias_relu asks
 * for the fused bias + ReLU call (f32 only: its bias is f32); it is kept
 * only if cuDNN accepts it for the chosen algorithm (tried once on scratch
 * memory). */
condconv_status cc_cudnn_conv_create(condconv_context_t ctx, const cc_conv_shape *shape, condconv_math math,
                                     condconv_algo_select select, int want_bias_relu, cc_scratch *scratch,
                                     cc_cudnn_conv *conv, const char *func);

/* The same convolution through cuDNN's graph API (cudnn_graph.h), no fused
 * bias + ReLU: a candidate that AUTO times beside the legacy path. */
condconv_status cc_cudnn_conv_create_graph(condconv_context_t ctx, const cc_conv_shape *shape, condconv_math math,
                                           condconv_algo_select select, cc_scratch *scratch, cc_cudnn_conv *conv,
                                           const char *func);

/* y = conv(x, w), or y = relu(conv(x, w) + bias) when fused_bias_relu. */
condconv_status cc_cudnn_conv_run(condconv_context_t ctx, const cc_cudnn_conv *conv, const void *x, const void *w,
                                  const float *bias, void *y, void *workspace, const char *func);

void cc_cudnn_conv_destroy(cc_cudnn_conv *conv);

/* 1 if a plan in this dtype and math mode may run cuDNN's algorithm with
 * math type t: only algorithms that sum directly (no FFT, no Winograd) in
 * every mode, FMA only for strict f32 (cudnn_conv.c says why). */
int cc_cudnn_algo_allowed(condconv_dtype dtype, condconv_math math, cudnnConvolutionFwdAlgo_t algo, cudnnMathType_t t);

/* The math-type half of cc_cudnn_algo_allowed, for every direction. */
int cc_cudnn_math_allowed(condconv_dtype dtype, condconv_math math, cudnnMathType_t t);

/* Creates and sets conv's x, w, y and convolution descriptors for the shape
 * (f32 accumulation; the math type the plan's mode permits), checking
 * cuDNN's output size against the shape's; no algorithm chosen. The
 * backward (cudnn_conv_backward.c) shares them. */
condconv_status cc_cudnn_conv_descriptors(const cc_conv_shape *shape, condconv_math math, cc_cudnn_conv *conv,
                                          const char *func);

/* The short name of a forward algorithm ("implicit_precomp_gemm"). */
const char *cc_cudnn_fwd_algo_name(cudnnConvolutionFwdAlgo_t algo);

/* "cuDNN implicit_precomp_gemm, fma" (or ", tf32"): what the convolution runs. */
void cc_cudnn_conv_describe(const cc_cudnn_conv *conv, char *out, size_t out_len);

#endif
