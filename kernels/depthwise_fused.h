/* Depthwise CondConv with the per-sample filters mixed inside the kernel:
 * the N*Cout*kh*kw per-sample filters never reach global memory. */
#ifndef CONDCONV_KERNELS_DEPTHWISE_FUSED_H
#define CONDCONV_KERNELS_DEPTHWISE_FUSED_H

#include <stddef.h>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cc_depthwise_args {
    const float *x;       /* [N][Cin][H][W] */
    const float *experts; /* [E][Cout][1][kh][kw], Cout = multiplier * Cin */
    const float *bias;    /* [E][Cout] or NULL */
    const float *alpha;   /* [N][E] */
    float *y;             /* [N][Cout][Ho][Wo] */
    int n, in_channels, multiplier, experts_count;
    int h, w, out_h, out_w;
    int kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
    int pad_top, pad_left; /* bottom/right padding follows from out_h/out_w */
    int activation;        /* condconv_activation */
} cc_depthwise_args;

/* Largest dynamic shared memory the kernel may ask for (no opt-in needed). */
#define CC_DEPTHWISE_MAX_SMEM ((size_t)48 * 1024)

/* Shared memory one block needs, and the number of output tiles per plane;
 * the shape is supported iff smem <= CC_DEPTHWISE_MAX_SMEM and tiles <= 65535. */
size_t cc_depthwise_fused_smem_bytes(const cc_depthwise_args *args);
long long cc_depthwise_fused_tiles(const cc_depthwise_args *args);

cudaError_t cc_launch_depthwise_fused(const cc_depthwise_args *args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
