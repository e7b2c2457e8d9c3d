/* Strided, padded copy of image planes: out[p][i][j] = x[p][i*sy - pt][j*sx - pl]
 * (zero outside x). With strides 1 it pads (asymmetric "same" padding that
 * cuDNN cannot express); with zero padding it subsamples (a strided 1x1
 * convolution turned into a plain GEMM). */
#ifndef CONDCONV_KERNELS_GATHER_H
#define CONDCONV_KERNELS_GATHER_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t cc_launch_gather_planes(const float *x, float *out, long long planes, int h, int w, int out_h, int out_w,
                                    int stride_h, int stride_w, int pad_top, int pad_left, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
