/* Depthwise CondConv with the per-sample filters mixed inside the kernel:
 * the N*Cout*kh*kw per-sample filters never reach global memory. */
#ifndef CONDCONV_KERNELS_DEPTHWISE_FUSED_H
#define CONDCONV_KERNELS_DEPTHWISE_FUSED_H

#include <stddef.h>

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cc_depthwise_args {
    int dtype;           /* CC_DTYPE_*: x, experts and y; f32 accumulation */
    int layout;          /* CC_LAYOUT_*: x and y */
    const void *x;       /* [N][Cin][H][W] or [N][H][W][Cin] */
    const void *experts; /* [E][Cout][1][kh][kw], Cout = multiplier * Cin */
    const float *bias;   /* [E][Cout] or NULL, f32 */
    const float *alpha;  /* [N][E], f32 */
    void *y;             /* [N][Cout][Ho][Wo] or [N][Ho][Wo][Cout] */
    int n, in_channels, multiplier, experts_count;
    int h, w, out_h, out_w;
    int kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
    int pad_top, pad_left; /* bottom/right padding follows from out_h/out_w */
    int activation;        /* condconv_activation */
} cc_depthwise_args;

/* Largest dynamic shared memory the kernel may ask for (no opt-in needed). */
#define CC_DEPTHWISE_MAX_SMEM ((size_t)48 * 1024)

/* Shared memory one block needs, and the number of output tiles per plane
 * (NCHW) or per sample (NHWC); the shape and format are supported iff
 * smem <= CC_DEPTHWISE_MAX_SMEM and 0 < tiles <= 65535 (an unknown dtype or
 * layout: 0 tiles, and SIZE_MAX bytes, so that either test refuses it).
 * NHWC needs (kh * kw + 1) * 256 bytes: kernels up to 191 taps. */
size_t cc_depthwise_fused_smem_bytes(const cc_depthwise_args *args);
long long cc_depthwise_fused_tiles(const cc_depthwise_args *args);

cudaError_t cc_launch_depthwise_fused(const cc_depthwise_args *args, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
