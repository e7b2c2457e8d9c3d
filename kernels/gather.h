/* Gathers the input windows of a convolution into a matrix (im2col):
 *   out[p][ky][kx][oy][ox] = x[p][oy*sh - pt + ky*dh][ox*sw - pl + kx*dw]
 * (zero outside x), for image planes p. Three uses: a k x k convolution as a
 * GEMM (any stride, padding, dilation); a strided 1x1 convolution turned
 * into a plain GEMM (k = 1: subsampling); and asymmetric "same" padding that
 * cuDNN cannot express (k = 1, stride 1: padding). */
#ifndef CONDCONV_KERNELS_GATHER_H
#define CONDCONV_KERNELS_GATHER_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cc_gather_args {
    long long planes;
    int h, w;               /* input plane */
    int kernel_h, kernel_w; /* window taps, 1 x 1 for padding/subsampling */
    int out_h, out_w;       /* window positions */
    int stride_h, stride_w, dilation_h, dilation_w;
    int pad_top, pad_left;
} cc_gather_args;

cudaError_t cc_launch_gather(const float *x, float *out, const cc_gather_args *args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
