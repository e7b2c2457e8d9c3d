// Depthwise CondConv, experts mixed inside the convolution.
//
// One block computes a TILE x TILE patch of one output plane (sample s,
// output channel o, input channel o / multiplier):
//   1. mix the plane's filter from the E experts into shared memory:
//      f[t] = sum_e alpha[s][e] * W[e][o][t], and its bias the same way;
//   2. stage the input patch the tile needs (halo, stride and dilation
//      included) in shared memory, zeros outside the image (padding);
//   3. each thread computes one output pixel from shared memory, adds the
//      bias, applies the activation, and stores it (coalesced along x).
// Per-sample filters never touch global memory: for depthwise they are only
// kh*kw per plane, so re-mixing them per block costs E*kh*kw L2 reads, small
// next to the plane itself. Square 3x3/5x5/7x7 kernels get unrolled
// instances; other kernel sizes run the same code with run-time bounds.
// TILE 8 for planes up to 8x8 output (the 7x7 EfficientNet stages), else 16.
//
// Validated against the CPU reference by tests/test_gpu_algorithms.c.
#include "common.cuh"
#include "depthwise_fused.h"

namespace {

struct tile_dims {
    int in_h, in_w; // input patch one tile reads
};

// Takes values, not the argument struct: a reference to a kernel parameter
// would force a local-memory copy of it.
__host__ __device__ inline tile_dims patch_dims(int tile, int kernel_h, int kernel_w, int stride_h, int stride_w,
                                                int dilation_h, int dilation_w)
{
    tile_dims d;
    d.in_h = (tile - 1) * stride_h + (kernel_h - 1) * dilation_h + 1;
    d.in_w = (tile - 1) * stride_w + (kernel_w - 1) * dilation_w + 1;
    return d;
}

inline int pick_tile(const cc_depthwise_args &a) { return (a.out_h <= 8 && a.out_w <= 8) ? 8 : 16; }

template <int kK, int kTile>
__global__ void __launch_bounds__(kTile *kTile) depthwise_fused_kernel(const cc_depthwise_args a, int tiles_w)
{
    CC_DYNAMIC_SHARED(float, smem);
    const int kh = kK ? kK : a.kernel_h, kw = kK ? kK : a.kernel_w;
    const int taps = kh * kw;
    float *filt = smem;             // [taps] then the bias
    float *patch = smem + taps + 1; // [in_h][in_w]
    const tile_dims d = patch_dims(kTile, a.kernel_h, a.kernel_w, a.stride_h, a.stride_w, a.dilation_h, a.dilation_w);

    const int cout = a.in_channels * a.multiplier;
    const int o = (int)(blockIdx.x % (unsigned int)cout);
    const int s = (int)(blockIdx.x / (unsigned int)cout);
    const int ci = o / a.multiplier;
    const int ty0 = (int)(blockIdx.y / (unsigned int)tiles_w) * kTile;
    const int tx0 = (int)(blockIdx.y % (unsigned int)tiles_w) * kTile;
    const int tid = threadIdx.x;

    // 1. This plane's filter and bias, mixed from the experts.
    const float *alpha = a.alpha + (size_t)s * a.experts_count;
    for (int t = tid; t <= taps; t += blockDim.x) {
        float acc = 0.0f;
        if (t < taps) {
            for (int e = 0; e < a.experts_count; ++e)
                acc = fmaf(__ldg(alpha + e), __ldg(a.experts + ((size_t)e * cout + o) * taps + t), acc);
        } else if (a.bias) {
            for (int e = 0; e < a.experts_count; ++e)
                acc = fmaf(__ldg(alpha + e), __ldg(a.bias + (size_t)e * cout + o), acc);
        }
        filt[t] = acc;
    }

    // 2. The input patch, zero-padded.
    const float *plane = a.x + ((size_t)s * a.in_channels + ci) * (size_t)a.h * (size_t)a.w;
    const int iy0 = ty0 * a.stride_h - a.pad_top, ix0 = tx0 * a.stride_w - a.pad_left;
    for (int t = tid; t < d.in_h * d.in_w; t += blockDim.x) {
        const int r = t / d.in_w, c = t - r * d.in_w;
        const int iy = iy0 + r, ix = ix0 + c;
        patch[t] = (iy >= 0 && iy < a.h && ix >= 0 && ix < a.w) ? __ldg(plane + (size_t)iy * a.w + ix) : 0.0f;
    }
    __syncthreads();

    // 3. One output pixel per thread.
    const int ty = tid / kTile, tx = tid - ty * kTile;
    const int oy = ty0 + ty, ox = tx0 + tx;
    if (oy >= a.out_h || ox >= a.out_w) return;
    float acc = filt[taps];
    const float *row0 = patch + ty * a.stride_h * d.in_w + tx * a.stride_w;
    // With kK != 0 the trip counts are compile-time constants and unroll fully.
#pragma unroll
    for (int ky = 0; ky < kh; ++ky)
#pragma unroll
        for (int kx = 0; kx < kw; ++kx)
            acc = fmaf(filt[ky * kw + kx], row0[ky * a.dilation_h * d.in_w + kx * a.dilation_w], acc);
    a.y[(((size_t)s * cout + o) * a.out_h + oy) * a.out_w + ox] = cc_activate(a.activation, acc);
}

template <int kTile>
cudaError_t launch_tile(const cc_depthwise_args &a, cudaStream_t stream)
{
    const int tiles_h = (a.out_h + kTile - 1) / kTile, tiles_w = (a.out_w + kTile - 1) / kTile;
    const dim3 grid((unsigned int)((long long)a.n * a.in_channels * a.multiplier), (unsigned int)(tiles_h * tiles_w));
    const size_t smem = cc_depthwise_fused_smem_bytes(&a);
    const bool square = a.kernel_h == a.kernel_w;
    const int k = square ? a.kernel_h : 0;
    if (k == 3) return cc_launch(depthwise_fused_kernel<3, kTile>, grid, kTile * kTile, smem, stream, a, tiles_w);
    if (k == 5) return cc_launch(depthwise_fused_kernel<5, kTile>, grid, kTile * kTile, smem, stream, a, tiles_w);
    if (k == 7) return cc_launch(depthwise_fused_kernel<7, kTile>, grid, kTile * kTile, smem, stream, a, tiles_w);
    return cc_launch(depthwise_fused_kernel<0, kTile>, grid, kTile * kTile, smem, stream, a, tiles_w);
}

} // namespace

extern "C" size_t cc_depthwise_fused_smem_bytes(const cc_depthwise_args *args)
{
    const tile_dims d = patch_dims(pick_tile(*args), args->kernel_h, args->kernel_w, args->stride_h, args->stride_w,
                                   args->dilation_h, args->dilation_w);
    return sizeof(float) * ((size_t)args->kernel_h * args->kernel_w + 1 + (size_t)d.in_h * d.in_w);
}

extern "C" long long cc_depthwise_fused_tiles(const cc_depthwise_args *args)
{
    const int tile = pick_tile(*args);
    return (long long)((args->out_h + tile - 1) / tile) * ((args->out_w + tile - 1) / tile);
}

extern "C" cudaError_t cc_launch_depthwise_fused(const cc_depthwise_args *args, cudaStream_t stream)
{
    const long long planes = (long long)args->n * args->in_channels * args->multiplier;
    if (planes <= 0 || planes > 0x7fffffffLL || cc_depthwise_fused_tiles(args) > 65535 ||
        cc_depthwise_fused_smem_bytes(args) > CC_DEPTHWISE_MAX_SMEM)
        return cudaErrorInvalidValue;
    return pick_tile(*args) == 8 ? launch_tile<8>(*args, stream) : launch_tile<16>(*args, stream);
}
