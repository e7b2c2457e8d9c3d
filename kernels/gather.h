/* Gathers the input windows of a convolution into a matrix (im2col):
 *   out[..] = x[n][c][oy*sh - pt + ky*dh][ox*sw - pl + kx*dw]
 * (zero outside x) in one of two orders (out_order below), from NCHW or NHWC
 * input, elements in any dtype (copied, never rounded). Three uses: a k x k convolution as a
 * GEMM (any stride, padding, dilation); a strided 1x1 convolution turned
 * into a plain GEMM (k = 1: subsampling); and asymmetric "same" padding that
 * cuDNN cannot express (k = 1, stride 1: padding). */
#ifndef CONDCONV_KERNELS_GATHER_H
#define CONDCONV_KERNELS_GATHER_H

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the gathered matrix looks like (out_order). */
enum {
    /* out[n][c][ky][kx][oy][ox]: an NCHW-ordered matrix, [K][P] per sample
     * and group (batch-as-groups cuDNN, the NCHW GEMM). From NHWC input it
     * also transposes. */
    CC_GATHER_PLANES = 0,
    /* out[n][oy][ox][c][ky][kx]: [P][K] per sample, K in the filters'
     * [Cin/g][kh][kw] order with the groups side by side (the NHWC GEMM). */
    CC_GATHER_ROWS = 1
};

typedef struct cc_gather_args {
    int dtype;     /* CC_DTYPE_* of x and out */
    int in_layout; /* CC_LAYOUT_* of x */
    int out_order; /* CC_GATHER_PLANES or CC_GATHER_ROWS */
    int n, channels;
    int h, w;               /* input plane */
    int kernel_h, kernel_w; /* window taps, 1 x 1 for padding/subsampling */
    int out_h, out_w;       /* window positions */
    int stride_h, stride_w, dilation_h, dilation_w;
    int pad_top, pad_left;
} cc_gather_args;

/* Elements of the gathered matrix, 0 for invalid arguments. */
long long cc_gather_elems(const cc_gather_args *args);

cudaError_t cc_launch_gather(const void *x, void *out, const cc_gather_args *args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
