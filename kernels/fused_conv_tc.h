/* Fused CondConv convolution on tensor cores (nvcuda::wmma, f32
 * accumulators) for f16 and bf16 (m16n16k16) and f32 (TF32, m16n16k8)
 * activations and weights, NCHW or NHWC: per-sample kernels
 * W_n = sum_e alpha[n][e] W_e are mixed tile by tile in f32 in shared
 * memory, rounded once to the dtype (TF32 for f32) there, and never reach
 * global memory; per-sample bias and the activation are applied in f32 in
 * the epilogue, the output rounded once (f32: not rounded). Dense and
 * grouped layers, not depthwise. kernels/fused_conv_tc.cu explains the
 * design.
 *
 * f32 runs on TF32 tensor cores: both operands of every product, the mixed
 * weight and the input, are rounded to TF32 (10-bit mantissa, relative
 * error up to 2^-11; up to 2^-10 where hardware truncates), products summed
 * in f32. Not an exact-f32 convolution: only for callers that allow TF32
 * (fused_conv.h's f32 kernel is the exact one). */
#ifndef CONDCONV_KERNELS_FUSED_CONV_TC_H
#define CONDCONV_KERNELS_FUSED_CONV_TC_H

#include <stddef.h>

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest E. */
#define CC_FUSED_TC_MAX_EXPERTS 128

typedef struct cc_fused_tc_args {
    int dtype;                /* CC_DTYPE_F16, CC_DTYPE_BF16 or CC_DTYPE_F32 (TF32 products) */
    int layout;               /* CC_LAYOUT_NCHW or CC_LAYOUT_NHWC: x and y */
    const void *x;            /* [N][Cin][H][W] or [N][H][W][Cin], dtype, element-aligned */
    void *y;                  /* [N][Cout][Ho][Wo] or [N][Ho][Wo][Cout], dtype, element-aligned */
    const float *alpha;       /* [N][E], f32 */
    const float *expert_bias; /* [E][Cout] f32, or NULL */
    const void *packed;       /* experts in cc_fused_tc_pack's layout, dtype, 256-byte aligned */
    int n, in_channels, out_channels, groups, experts;
    int h, w, out_h, out_w;
    int kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
    int pad_top, pad_left; /* bottom/right follow from out_h/out_w */
    int activation;        /* 0 none, 1 relu, 2 silu (cc_activate) */
} cc_fused_tc_args;

typedef struct cc_fused_tc_config {
    int tile_m, tile_n; /* output channels x output columns per block */
    int samples_cap;    /* most samples one block spans */
    size_t smem_bytes;  /* dynamic shared memory per block */
    int mix_mma;        /* gen 2 only: 1 = the expert mix on tensor cores (cc_fused_tc2_choose_mma_mix) */
    char reason[160];   /* what was chosen and why, for condconv_plan_info */
} cc_fused_tc_config;

/* 1 if the kernel runs this layer and shape (pointers are not looked at),
 * else 0 with the reason in `reason` (may be NULL). */
int cc_fused_tc_supported(const cc_fused_tc_args *args, char *reason, size_t reason_len);

/* Elements (of the dtype) of the packed experts:
 * [groups][kh*kw][Cin/g padded to 16][E][Cout/g padded to 8]; 0 for invalid sizes. */
size_t cc_fused_tc_packed_elems(int in_channels, int out_channels, int groups, int kernel_h, int kernel_w, int experts);

/* Host code, no CUDA call: experts [E][Cout][Cin/g][kh][kw] as floats holding
 * values of the dtype (exact) -> packed in the dtype, padding zeroed. For
 * CC_DTYPE_F32 the floats are copied as they are (f32, not cut to TF32: the
 * kernel rounds the mixed weights once). 0 for invalid sizes/dtype or NULL
 * pointers, else 1. */
int cc_fused_tc_pack(int dtype, const float *experts, void *packed, int in_channels, int out_channels, int groups,
                     int kernel_h, int kernel_w, int experts_count);

/* The tile for a device with sm_count SMs and smem_optin bytes of shared
 * memory per block; 0 if the shape is unsupported or nothing fits. */
int cc_fused_tc_choose(const cc_fused_tc_args *args, int sm_count, size_t smem_optin, cc_fused_tc_config *cfg);

/* One launch, asynchronous; no allocation, no synchronisation.
 * cudaErrorInvalidValue for an unsupported shape, a config that does not
 * match it, NULL or misaligned pointers. */
cudaError_t cc_launch_fused_tc(const cc_fused_tc_args *args, const cc_fused_tc_config *cfg, cudaStream_t stream);

/* Second generation (kernels/fused_conv_tc2.cu, a candidate AUTO times against the kernel above). */
/* Largest E of the second generation (its two expert stages must fit shared
 * memory; f32 stops earlier: cc_fused_tc2_supported says). */
#define CC_FUSED_TC2_MAX_EXPERTS 64
int cc_fused_tc2_supported(const cc_fused_tc_args *args, char *reason, size_t reason_len);
int cc_fused_tc2_choose(const cc_fused_tc_args *args, int sm_count, size_t smem_optin, cc_fused_tc_config *cfg);
cudaError_t cc_launch_fused_tc2(const cc_fused_tc_args *args, const cc_fused_tc_config *cfg, cudaStream_t stream);
/* Gen 2 with the expert mix on tensor cores (a candidate beside gen 2's
 * CUDA-core mix): f16/bf16, E a multiple of 16. The config it chooses has
 * mix_mma = 1; cc_launch_fused_tc2 runs it. */
int cc_fused_tc2_mma_mix_supported(const cc_fused_tc_args *args, char *reason, size_t reason_len);
int cc_fused_tc2_choose_mma_mix(const cc_fused_tc_args *args, int sm_count, size_t smem_optin, cc_fused_tc_config *cfg);

#ifdef __cplusplus
}
#endif

#endif
