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
// Element types: x, the experts and y in f32, f16 or bf16 (a template over
// T); bias and alpha f32. Everything is computed in f32 (loads convert
// exactly) and each output is rounded once to T.
//
// NHWC ([N][H][W][C]) has its own kernel: a block per (sample, 8x8 tile of
// output pixels, chunk of kNhwcChunk output channels):
//   1. mix the chunk's filters and biases from the E experts into shared
//      memory (f32, [tap][channel]), once per block;
//   2. threads over channels (consecutive threads, consecutive channels:
//      each pixel's loads and stores are one contiguous run, coalesced;
//      16-byte vectors of them where the sizes and pointers allow) and over
//      the tile's pixels, each output from its taps read through the
//      read-only cache (neighbouring pixels' taps overlap, so L1 serves most
//      of them), then the bias and the activation as in NCHW.
// Cost: mixing reads E * taps expert values per channel of the block, the
// convolution does 64 pixels * taps multiply-adds per channel, so the
// mixing is E / 64 of the work (1/8 for E = 8; 1/2 at E = 32). A larger
// tile would amortise it more but leaves fewer blocks for the small late
// planes (a 7x7 plane is one tile already). No input staging in shared
// memory: a halo of a 64-channel chunk for 7x7 taps would pass 48 KiB.
//
// Validated against the CPU reference by tests/test_gpu_algorithms.c.
#include "depthwise_fused.h"
#include "element.cuh"

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

inline bool known_format(const cc_depthwise_args &a)
{
    return (a.dtype == CC_DTYPE_F32 || a.dtype == CC_DTYPE_F16 || a.dtype == CC_DTYPE_BF16) &&
           (a.layout == CC_LAYOUT_NCHW || a.layout == CC_LAYOUT_NHWC);
}

// At least 4 blocks an SM: without a floor ptxas (CUDA 13) packs the NCHW
// kernel into 32 registers and spills 8-16 bytes at sm_80 and sm_90
// (issue 18); with 4 (at most 64 registers for 16x16 tiles) every instance
// keeps its accumulators and the filter taps in registers.
// scripts/check-spills.sh holds every kernel to 0 spill bytes.
template <typename T, int kK, int kTile>
__global__ void __launch_bounds__(kTile *kTile, 4) depthwise_fused_kernel(const cc_depthwise_args a, int tiles_w)
{
    CC_DYNAMIC_SHARED(float, smem);
    const T *const x = static_cast<const T *>(a.x);
    const T *const experts = static_cast<const T *>(a.experts);
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
                acc = fmaf(__ldg(alpha + e), cc_load(experts + ((size_t)e * cout + o) * taps + t), acc);
        } else if (a.bias) {
            for (int e = 0; e < a.experts_count; ++e)
                acc = fmaf(__ldg(alpha + e), __ldg(a.bias + (size_t)e * cout + o), acc);
        }
        filt[t] = acc;
    }

    // 2. The input patch, zero-padded.
    const T *plane = x + ((size_t)s * a.in_channels + ci) * (size_t)a.h * (size_t)a.w;
    const int iy0 = ty0 * a.stride_h - a.pad_top, ix0 = tx0 * a.stride_w - a.pad_left;
    for (int t = tid; t < d.in_h * d.in_w; t += blockDim.x) {
        const int r = t / d.in_w, c = t - r * d.in_w;
        const int iy = iy0 + r, ix = ix0 + c;
        patch[t] = (iy >= 0 && iy < a.h && ix >= 0 && ix < a.w) ? cc_load(plane + (size_t)iy * a.w + ix) : 0.0f;
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
    static_cast<T *>(a.y)[(((size_t)s * cout + o) * a.out_h + oy) * a.out_w + ox] =
        cc_from_float<T>(cc_activate(a.activation, acc));
}

template <typename T, int kTile>
cudaError_t launch_tile(const cc_depthwise_args &a, cudaStream_t stream)
{
    const int tiles_h = (a.out_h + kTile - 1) / kTile, tiles_w = (a.out_w + kTile - 1) / kTile;
    const dim3 grid((unsigned int)((long long)a.n * a.in_channels * a.multiplier), (unsigned int)(tiles_h * tiles_w));
    const size_t smem = cc_depthwise_fused_smem_bytes(&a);
    const bool square = a.kernel_h == a.kernel_w;
    const int k = square ? a.kernel_h : 0;
    if (k == 3) return cc_launch(depthwise_fused_kernel<T, 3, kTile>, grid, kTile * kTile, smem, stream, a, tiles_w);
    if (k == 5) return cc_launch(depthwise_fused_kernel<T, 5, kTile>, grid, kTile * kTile, smem, stream, a, tiles_w);
    if (k == 7) return cc_launch(depthwise_fused_kernel<T, 7, kTile>, grid, kTile * kTile, smem, stream, a, tiles_w);
    return cc_launch(depthwise_fused_kernel<T, 0, kTile>, grid, kTile * kTile, smem, stream, a, tiles_w);
}

// --- NHWC ----------------------------------------------------------------------------------------------

constexpr int kNhwcThreads = 256;
constexpr int kNhwcChunk = 64; // output channels a block covers
constexpr int kNhwcTile = 8;   // output pixels a block covers: kNhwcTile x kNhwcTile

// One 16-bit element's bits (the low 16 of `bits`) as a float, exactly, and
// a float rounded once to the element's bits.
__device__ __forceinline__ float bits_to_float(unsigned int bits, __half)
{
    return __half2float(__ushort_as_half((unsigned short)bits));
}
__device__ __forceinline__ float bits_to_float(unsigned int bits, __nv_bfloat16)
{
    return __bfloat162float(__ushort_as_bfloat16((unsigned short)bits));
}
__device__ __forceinline__ unsigned int float_to_bits(float v, __half) { return __half_as_ushort(__float2half_rn(v)); }
__device__ __forceinline__ unsigned int float_to_bits(float v, __nv_bfloat16)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// kV consecutive channels at p (16-byte aligned when kV > 1) as floats,
// through the read-only cache (neighbouring pixels' taps reuse them).
template <int kV>
__device__ __forceinline__ void load_vec(const float *p, float (&v)[kV])
{
    if constexpr (kV == 4) {
        const float4 q = __ldg(reinterpret_cast<const float4 *>(p));
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
    } else {
        v[0] = __ldg(p);
    }
}
// Little-endian: the element at the lower address is the low half of each 32-bit word.
template <int kV, typename T>
__device__ __forceinline__ void load_vec(const T *p, float (&v)[kV])
{
    if constexpr (kV == 8) {
        const uint4 q = __ldg(reinterpret_cast<const uint4 *>(p));
        const unsigned int w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            v[2 * k] = bits_to_float(w[k] & 0xffffu, T());
            v[2 * k + 1] = bits_to_float(w[k] >> 16, T());
        }
    } else {
        v[0] = cc_load(p);
    }
}

// v rounded once to T and stored at p, kV elements (16-byte aligned when kV > 1).
template <int kV>
__device__ __forceinline__ void store_vec(float *p, const float (&v)[kV])
{
    if constexpr (kV == 4)
        *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
    else
        *p = v[0];
}
template <int kV, typename T>
__device__ __forceinline__ void store_vec(T *p, const float (&v)[kV])
{
    if constexpr (kV == 8) {
        unsigned int w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = float_to_bits(v[2 * k], T()) | (float_to_bits(v[2 * k + 1], T()) << 16);
        *reinterpret_cast<uint4 *>(p) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
        *p = cc_from_float<T>(v[0]);
    }
}

// kV = 1: one output channel per thread, any multiplier (output channel o
// reads input channel o / multiplier). kV = 16 bytes of T: kV channels per
// thread, multiplier 1 only (input and output channels coincide), C a
// multiple of kV and x, y 16-byte aligned.
// At least 4 blocks an SM (at most 64 registers): without a floor ptxas
// (CUDA 13, sm_90) packs the kernel into ~32 registers and spills; with 4
// (1024 threads an SM, each with kV independent accumulators and its loads
// in flight) it spills nothing.
template <typename T, int kV>
__global__ void __launch_bounds__(kNhwcThreads, 4)
    depthwise_nhwc_kernel(const cc_depthwise_args a, int tiles_w, int chunks)
{
    CC_DYNAMIC_SHARED(float, smem);
    constexpr int kGroups = kNhwcChunk / kV;       // threads across a pixel's channels
    constexpr int kLanes = kNhwcThreads / kGroups; // pixels in flight
    const int taps = a.kernel_h * a.kernel_w;
    float *filt = smem;                           // [taps][kNhwcChunk]
    float *mixed_bias = smem + taps * kNhwcChunk; // [kNhwcChunk]
    const int cout = a.in_channels * a.multiplier;
    const int s = (int)(blockIdx.x / (unsigned int)chunks);
    const int o0 = (int)(blockIdx.x % (unsigned int)chunks) * kNhwcChunk;
    const int nch = min(kNhwcChunk, cout - o0); // channels in this chunk (a multiple of kV)
    const int ty0 = (int)(blockIdx.y / (unsigned int)tiles_w) * kNhwcTile;
    const int tx0 = (int)(blockIdx.y % (unsigned int)tiles_w) * kNhwcTile;

    // 1. The chunk's filters, mixed: for each expert they are one contiguous
    // run [o0, o0 + nch) x taps, read in storage order (coalesced), stored
    // transposed so that step 2 reads a tap's channels contiguously.
    const float *alpha = a.alpha + (size_t)s * a.experts_count;
    const T *experts = static_cast<const T *>(a.experts) + (size_t)o0 * taps;
    for (int i = threadIdx.x; i < nch * taps; i += blockDim.x) {
        float acc = 0.0f;
        for (int e = 0; e < a.experts_count; ++e)
            acc = fmaf(__ldg(alpha + e), cc_load(experts + (size_t)e * cout * taps + i), acc);
        const int j = i / taps;
        filt[(i - j * taps) * kNhwcChunk + j] = acc;
    }
    for (int j = threadIdx.x; j < nch; j += blockDim.x) {
        float acc = 0.0f;
        if (a.bias)
            for (int e = 0; e < a.experts_count; ++e)
                acc = fmaf(__ldg(alpha + e), __ldg(a.bias + (size_t)e * cout + o0 + j), acc);
        mixed_bias[j] = acc;
    }
    __syncthreads();

    // 2. Outputs: this thread's kV channels at every kLanes-th pixel of the tile.
    const int j0 = ((int)threadIdx.x % kGroups) * kV;
    if (j0 >= nch) return; // past the last channel; no barrier follows
    const int o = o0 + j0, ci = o / a.multiplier;
    const T *xs = static_cast<const T *>(a.x) + (size_t)s * a.h * a.w * a.in_channels;
    T *ys = static_cast<T *>(a.y) + (size_t)s * a.out_h * a.out_w * cout;
    for (int q = (int)threadIdx.x / kGroups; q < kNhwcTile * kNhwcTile; q += kLanes) {
        const int oy = ty0 + q / kNhwcTile, ox = tx0 + q % kNhwcTile;
        if (oy >= a.out_h || ox >= a.out_w) continue;
        float acc[kV];
#pragma unroll
        for (int k = 0; k < kV; ++k) acc[k] = mixed_bias[j0 + k];
        for (int ky = 0; ky < a.kernel_h; ++ky) {
            const int iy = oy * a.stride_h - a.pad_top + ky * a.dilation_h;
            if (iy < 0 || iy >= a.h) continue; // padding: zero taps
            for (int kx = 0; kx < a.kernel_w; ++kx) {
                const int ix = ox * a.stride_w - a.pad_left + kx * a.dilation_w;
                if (ix < 0 || ix >= a.w) continue;
                float v[kV];
                load_vec<kV>(xs + ((size_t)iy * a.w + ix) * a.in_channels + ci, v);
                const float *f = filt + (ky * a.kernel_w + kx) * kNhwcChunk + j0;
#pragma unroll
                for (int k = 0; k < kV; ++k) acc[k] = fmaf(f[k], v[k], acc[k]);
            }
        }
#pragma unroll
        for (int k = 0; k < kV; ++k) acc[k] = cc_activate(a.activation, acc[k]);
        store_vec<kV>(ys + ((size_t)oy * a.out_w + ox) * cout + o, acc);
    }
}

template <typename T>
cudaError_t launch_nhwc(const cc_depthwise_args &a, cudaStream_t stream)
{
    constexpr int kV = cc_vec16<T>::count;
    const int cout = a.in_channels * a.multiplier;
    const int chunks = (cout + kNhwcChunk - 1) / kNhwcChunk;
    const int tiles_w = (a.out_w + kNhwcTile - 1) / kNhwcTile;
    const dim3 grid((unsigned int)((long long)a.n * chunks), (unsigned int)cc_depthwise_fused_tiles(&a));
    const size_t smem = cc_depthwise_fused_smem_bytes(&a);
    // 16 bytes a thread when every pixel's run of channels starts on a
    // 16-byte boundary (C a multiple of kV, x and y aligned) and a thread's
    // kV outputs read kV consecutive inputs (multiplier 1).
    if (a.multiplier == 1 && a.in_channels % kV == 0 && cc_aligned16(a.x) && cc_aligned16(a.y))
        return cc_launch(depthwise_nhwc_kernel<T, kV>, grid, kNhwcThreads, smem, stream, a, tiles_w, chunks);
    return cc_launch(depthwise_nhwc_kernel<T, 1>, grid, kNhwcThreads, smem, stream, a, tiles_w, chunks);
}

} // namespace

extern "C" size_t cc_depthwise_fused_smem_bytes(const cc_depthwise_args *args)
{
    if (!known_format(*args)) return (size_t)-1; // never supported
    if (args->layout == CC_LAYOUT_NHWC)
        return sizeof(float) * ((size_t)args->kernel_h * args->kernel_w + 1) * kNhwcChunk;
    const tile_dims d = patch_dims(pick_tile(*args), args->kernel_h, args->kernel_w, args->stride_h, args->stride_w,
                                   args->dilation_h, args->dilation_w);
    return sizeof(float) * ((size_t)args->kernel_h * args->kernel_w + 1 + (size_t)d.in_h * d.in_w);
}

extern "C" long long cc_depthwise_fused_tiles(const cc_depthwise_args *args)
{
    if (!known_format(*args)) return 0;
    const int tile = args->layout == CC_LAYOUT_NHWC ? kNhwcTile : pick_tile(*args);
    return (long long)((args->out_h + tile - 1) / tile) * ((args->out_w + tile - 1) / tile);
}

extern "C" cudaError_t cc_launch_depthwise_fused(const cc_depthwise_args *args, cudaStream_t stream)
{
    const long long cout = (long long)args->in_channels * args->multiplier;
    const long long blocks_x =
        args->layout == CC_LAYOUT_NHWC ? args->n * ((cout + kNhwcChunk - 1) / kNhwcChunk) : args->n * cout;
    const long long tiles = cc_depthwise_fused_tiles(args);
    if (args->n <= 0 || cout <= 0 || blocks_x > 0x7fffffffLL || tiles <= 0 || tiles > 65535 ||
        cc_depthwise_fused_smem_bytes(args) > CC_DEPTHWISE_MAX_SMEM)
        return cudaErrorInvalidValue;
    return cc_dispatch_dtype(args->dtype, [&](auto tag) -> cudaError_t {
        using T = typename decltype(tag)::type;
        if (args->layout == CC_LAYOUT_NHWC) return launch_nhwc<T>(*args, stream);
        return pick_tile(*args) == 8 ? launch_tile<T, 8>(*args, stream) : launch_tile<T, 16>(*args, stream);
    });
}
