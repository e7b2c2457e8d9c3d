/* Fused CondConv convolution for dense and grouped layers (not depthwise):
 * per-sample kernels W_b = sum_e alpha[b][e] W_e are mixed tile by tile in
 * shared memory inside the convolution and never reach global memory;
 * per-sample bias and the activation are applied in the epilogue. Strict
 * f32 (FMA on CUDA cores), NCHW or NHWC, 1x1 at any stride and k x k as an
 * implicit GEMM over the input windows. kernels/fused_conv.cu explains the
 * design. */
#ifndef CONDCONV_KERNELS_FUSED_CONV_H
#define CONDCONV_KERNELS_FUSED_CONV_H

#include <stddef.h>

#include <cuda_runtime.h>

#include "formats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest E (the routing kernel's limit too). */
#define CC_FUSED_MAX_EXPERTS 128
/* Input channels of one group are padded to a multiple of this per kernel
 * tap in the packed expert layout (the kernels' K step). */
#define CC_FUSED_CHANNEL_PAD 16
/* Largest split-K factor cc_fused_choose considers. */
#define CC_FUSED_MAX_SPLITS 16

/* Tile instances: output channels x output columns (sample pixels) per block. */
typedef enum cc_fused_tile {
    CC_FUSED_TILE_64x256 = 0, /* 256 threads, 8x8 outputs each */
    CC_FUSED_TILE_64x128 = 1, /* 128 threads, 8x8 */
    CC_FUSED_TILE_32x256 = 2, /* 256 threads, 8x4 */
    CC_FUSED_TILE_32x128 = 3, /* 128 threads, 8x4 */
    CC_FUSED_TILE_COUNT = 4
} cc_fused_tile;

typedef struct cc_fused_args {
    const float *x;           /* [N][Cin][H][W], NHWC: [N][H][W][Cin] */
    float *y;                 /* [N][Cout][out_h][out_w], NHWC: [N][out_h][out_w][Cout] */
    const float *alpha;       /* [N][E], from the routing kernel */
    const float *expert_bias; /* [E][Cout], or NULL */
    const float *packed;      /* experts in cc_fused_pack's layout, 16-byte aligned */
    /* Split-K only (config.splits > 1), else ignored: config.partial_elems
     * floats, and config.counter_count unsigned ints that are zero before
     * the first launch; every launch leaves them zero again, so a buffer
     * zeroed once serves every later forward, graph replays included.
     * Launches that share them must not overlap. */
    float *partial;
    unsigned int *counters;
    int n, in_channels, out_channels, groups, experts;
    int h, w, out_h, out_w;
    int kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
    int pad_top, pad_left; /* bottom/right padding follows from out_h/out_w */
    int activation;        /* condconv_activation */
    int layout;            /* CC_LAYOUT_NCHW (0) or CC_LAYOUT_NHWC, of x and y */
} cc_fused_args;

typedef struct cc_fused_config {
    int tile;            /* cc_fused_tile */
    int quads_per_block; /* column quads (4 pixels of one sample) per block */
    int samples_cap;     /* most samples one block spans (sizes shared memory) */
    int splits;          /* split-K factor, 1 = none */
    int blocks_per_sm;   /* residency the model assumed */
    /* NHWC input staging and output stores. 0: today's pixel-major NHWC
     * staging (a thread reads its pixel's channels, scalar y stores);
     * 1: channel-major coalesced loads and vector stores (candidate, issue
     * 19: AUTO times it against 0 at prepare; NHWC only, see
     * cc_fused_nhwc_loader_supported). cc_fused_choose and
     * cc_fused_make_config set 0. */
    int nhwc_loader;
    size_t smem_bytes; /* dynamic shared memory per block */
    size_t partial_elems;
    size_t counter_count;
    double model_us;  /* the cost model's estimate on an H100-class clock (1.755 GHz), not a measurement */
    char reason[224]; /* why this config, for condconv_plan_info */
} cc_fused_config;

/* 1 if the kernel runs this layer and shape (pointers are not looked at),
 * else 0 with the reason in `reason` (may be NULL). */
int cc_fused_supported(const cc_fused_args *args, char *reason, size_t reason_len);

/* Floats of the packed experts: [groups][kh*kw][Cin/g padded to
 * CC_FUSED_CHANNEL_PAD][E][Cout/g padded to 4]; 0 for invalid sizes. */
size_t cc_fused_packed_elems(int in_channels, int out_channels, int groups, int kernel_h, int kernel_w, int experts);

/* Host code, no CUDA call: experts [E][Cout][Cin/g][kh][kw] (the library's
 * layout) -> packed (cc_fused_packed_elems floats, padding zeroed). Returns
 * 0 for invalid sizes or NULL pointers, else 1. Once per layer. */
int cc_fused_pack(const float *experts, float *packed, int in_channels, int out_channels, int groups, int kernel_h,
                  int kernel_w, int experts_count);

/* Config for a forced tile and split-K factor (the largest column block
 * that fits `smem_optin`, the device's opt-in shared memory per block);
 * returns 0 if the shape is unsupported or nothing fits. */
int cc_fused_make_config(const cc_fused_args *args, int tile, int splits, size_t smem_optin, cc_fused_config *cfg);

/* The cost model's choice over tiles, column blocks and split-K factors
 * up to max_splits (1 forbids split-K, CC_FUSED_MAX_SPLITS at most) for
 * a device with sm_count SMs; the reason is written into cfg->reason.
 * Returns 0 if the shape is unsupported. */
int cc_fused_choose(const cc_fused_args *args, int sm_count, size_t smem_optin, int max_splits, cc_fused_config *cfg);

/* 1 if the launcher runs NHWC input loader `nhwc_loader`
 * (cc_fused_config.nhwc_loader) for this layer and shape, else 0: loader 0
 * wherever cc_fused_supported, loader 1 only for NHWC layers (NCHW has no
 * NHWC staging to replace). Pointers are not looked at: loader 1 falls back
 * to 4-byte loads and stores where x or y is not 16-byte aligned. */
int cc_fused_nhwc_loader_supported(const cc_fused_args *args, int nhwc_loader);

/* One launch, asynchronous; no allocation, no synchronisation. Vector
 * (16-byte) paths are chosen here from the shape and pointer alignment.
 * cudaErrorInvalidValue for an unsupported shape, a config that does not
 * match it, an nhwc_loader it cannot run, or missing split-K buffers. */
cudaError_t cc_launch_fused_conv(const cc_fused_args *args, const cc_fused_config *cfg, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
