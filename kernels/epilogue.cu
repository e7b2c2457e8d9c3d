// Epilogues that follow a convolution. Elements in T (float, __half,
// __nv_bfloat16), loaded exactly into f32, computed in f32, rounded once to T
// at the store; bias and alpha are f32.
//
// bias_activation, same layout in and out (in place or not): one grid-stride
// pass over the N*Cout*plane elements, V consecutive elements per thread in
// one access (16 bytes: 4 floats or 8 halves; or a 4-byte pair of halves)
// when the row (the plane in NCHW, Cout in NHWC) is a multiple of V and both
// pointers are aligned; scalar otherwise. NCHW: the V elements share one bias
// (index i / plane, biases are [N][Cout]); NHWC: they are V channels.
//
// bias_activation, NCHW -> NHWC (out of place): a transpose of each sample's
// [Cout][plane] matrix through a 32 x 33 shared-memory tile: a block of
// 32 x 8 threads reads 32 channels x 32 pixels with consecutive threads on
// consecutive pixels (coalesced reads), adds the bias and activates, and
// writes the tile transposed with consecutive threads on consecutive
// channels (coalesced writes). The +1 column makes the column-wise reads of
// the tile hit 32 different banks. Tiles are visited by a grid-stride loop.
//
// mixture_combine: the paper's mixture-of-experts formulation after one
// static conv with E*Cout filters: y = act(sum_e alpha_e (z_e + b_e)). Each
// thread owns 4 pixels of one output channel, so each alpha and bias load
// serves 4 outputs; z is streamed (read once). NCHW: the 4 pixels are
// consecutive in memory. NHWC: consecutive threads take consecutive output
// channels (and so, for each expert, consecutive z channels of the same
// group) and each thread steps over its 4 pixels by a row of channels, so
// every load and store of a warp is contiguous.
//
// Validated on the CPU layer (tests/cuda_cpu/test_emu_epilogue.c) and
// through the algorithms that use them (tests/test_gpu_forward.c).
#include "element_vec.cuh"
#include "epilogue.h"

namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;    // transpose tile: kTile x kTile elements
constexpr int kTileRows = 8; // thread rows per transpose block: kTile x kTileRows threads
constexpr int kTransposeThreads = kTile * kTileRows;
constexpr int kMixPixels = 4; // pixels per mixture_combine thread

// src and dst may be the same buffer (in place): no __restrict__, and no
// __ldg (src is not read-only then). `chunks` = N*Cout*plane / V; `row` is
// the extent V divides: plane (NCHW) or Cout (NHWC).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    bias_activation_kernel(const T *src, T *dst, const float *__restrict__ bias, long long chunks, long long plane,
                           int cout, int nhwc, int act)
{
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < chunks;
         c += (long long)gridDim.x * blockDim.x) {
        const long long i = c * V; // first element
        float v[V];
        cc_vec_load<T, V>(src + i, v);
        if (bias != nullptr) {
            if (nhwc) {
                // [N][plane][Cout]: channel i % Cout of sample i / (plane*Cout).
                const long long o = i % cout, s = i / ((long long)cout * plane);
                const float *b = bias + s * cout + o;
#pragma unroll
                for (int k = 0; k < V; ++k) v[k] += __ldg(b + k);
            } else {
                const float b = __ldg(bias + i / plane);
#pragma unroll
                for (int k = 0; k < V; ++k) v[k] += b;
            }
        }
#pragma unroll
        for (int k = 0; k < V; ++k) v[k] = cc_activate(act, v[k]);
        cc_vec_store<T, V>(dst + i, v);
    }
}

// NCHW src -> NHWC dst, out of place. Tile t covers channels o0.. and
// pixels p0.. of sample s.
template <typename T>
__global__ void __launch_bounds__(kTransposeThreads)
    bias_activation_transpose(const T *__restrict__ src, T *__restrict__ dst, const float *__restrict__ bias, int n,
                              int cout, long long plane, int act)
{
    __shared__ float tile[kTile][kTile + 1]; // [channel][pixel]
    const long long tiles_p = (plane + kTile - 1) / kTile;
    const long long tiles_o = (cout + kTile - 1) / kTile;
    const long long tiles = (long long)n * tiles_o * tiles_p;
    const int tx = threadIdx.x, ty = threadIdx.y;
    for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {
        const long long p0 = (t % tiles_p) * kTile;
        const int o0 = (int)((t / tiles_p) % tiles_o) * kTile;
        const int s = (int)(t / (tiles_p * tiles_o));
        __syncthreads(); // the previous tile's writers are done reading it
        // Read: threads along pixels (tx), rows of channels (ty).
        for (int r = ty; r < kTile; r += kTileRows) {
            const int o = o0 + r;
            const long long p = p0 + tx;
            if (o < cout && p < plane) {
                const size_t so = (size_t)s * cout + o;
                const float b = bias != nullptr ? __ldg(bias + so) : 0.0f;
                tile[r][tx] = cc_activate(act, cc_load(src + so * (size_t)plane + (size_t)p) + b);
            }
        }
        __syncthreads();
        // Write: threads along channels (tx), rows of pixels (ty).
        for (int r = ty; r < kTile; r += kTileRows) {
            const long long p = p0 + r;
            const int o = o0 + tx;
            if (o < cout && p < plane)
                dst[((size_t)s * (size_t)plane + (size_t)p) * cout + o] = cc_from_float<T>(tile[tx][r]);
        }
    }
}

// One thread: kMixPixels pixels p0.. of output channel o of sample s, NCHW.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    mixture_combine_kernel(const T *__restrict__ z, const float *__restrict__ alpha, const float *__restrict__ bias,
                           T *__restrict__ y, int n, int cout, int groups, int e_count, long long plane, int act)
{
    const long long chunks_per_plane = (plane + kMixPixels - 1) / kMixPixels;
    const long long total = (long long)n * cout * chunks_per_plane;
    const int cg = cout / groups;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long chunk = t % chunks_per_plane;
        const long long no = t / chunks_per_plane; // n * cout + o
        const int o = (int)(no % cout);
        const int s = (int)(no / cout);
        const int g = o / cg, oc = o - g * cg;
        const long long p0 = chunk * kMixPixels;
        float acc[kMixPixels] = {};
        float b = 0.0f;
        // z[s][g][e][oc][p]: experts of one output channel are Cg*plane apart.
        const T *zp = z + (((size_t)s * groups + g) * e_count * cg + oc) * (size_t)plane + p0;
        const size_t e_stride = (size_t)cg * (size_t)plane;
        for (int e = 0; e < e_count; ++e) {
            const float a = __ldg(alpha + (size_t)s * e_count + e);
            if (bias) b = fmaf(a, __ldg(bias + (size_t)e * cout + o), b);
#pragma unroll
            for (int k = 0; k < kMixPixels; ++k)
                if (p0 + k < plane) acc[k] = fmaf(a, cc_to_float(__ldcs(zp + (size_t)e * e_stride + k)), acc[k]);
        }
        T *yp = y + (size_t)no * (size_t)plane + p0;
#pragma unroll
        for (int k = 0; k < kMixPixels; ++k)
            if (p0 + k < plane) yp[k] = cc_from_float<T>(cc_activate(act, acc[k] + b));
    }
}

// One thread: kMixPixels pixels p0.. of output channel o of sample s, NHWC;
// thread index = ((s * pixel chunks) + chunk) * Cout + o, o fastest.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    mixture_combine_nhwc(const T *__restrict__ z, const float *__restrict__ alpha, const float *__restrict__ bias,
                         T *__restrict__ y, int n, int cout, int groups, int e_count, long long plane, int act)
{
    const long long chunks_per_plane = (plane + kMixPixels - 1) / kMixPixels;
    const long long total = (long long)n * cout * chunks_per_plane;
    const int cg = cout / groups;
    const size_t zc = (size_t)e_count * cout; // z channels per pixel
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int o = (int)(t % cout);
        const long long sc = t / cout; // s * chunks_per_plane + chunk
        const long long chunk = sc % chunks_per_plane;
        const int s = (int)(sc / chunks_per_plane);
        const int g = o / cg, oc = o - g * cg;
        const long long p0 = chunk * kMixPixels;
        float acc[kMixPixels] = {};
        float b = 0.0f;
        // z[s][p][g*E*Cg + e*Cg + oc]: experts of one output channel are Cg apart.
        const T *zp = z + ((size_t)s * (size_t)plane + (size_t)p0) * zc + (size_t)g * e_count * cg + oc;
        for (int e = 0; e < e_count; ++e) {
            const float a = __ldg(alpha + (size_t)s * e_count + e);
            if (bias) b = fmaf(a, __ldg(bias + (size_t)e * cout + o), b);
#pragma unroll
            for (int k = 0; k < kMixPixels; ++k)
                if (p0 + k < plane) acc[k] = fmaf(a, cc_to_float(__ldcs(zp + (size_t)k * zc + (size_t)e * cg)), acc[k]);
        }
        T *yp = y + ((size_t)s * (size_t)plane + (size_t)p0) * cout + o;
#pragma unroll
        for (int k = 0; k < kMixPixels; ++k)
            if (p0 + k < plane) yp[(size_t)k * cout] = cc_from_float<T>(cc_activate(act, acc[k] + b));
    }
}

template <typename T, int V>
cudaError_t launch_same_layout(const T *src, T *dst, const float *bias, long long count, long long plane, int cout,
                               int nhwc, int act, cudaStream_t stream)
{
    const long long chunks = count / V;
    return cc_launch(bias_activation_kernel<T, V>, cc_grid_1d(chunks, kThreads, 1u << 16), kThreads, 0, stream, src,
                     dst, bias, chunks, plane, cout, nhwc, act);
}

bool aligned4(const void *p) { return ((uintptr_t)p & 3u) == 0; }

} // namespace

extern "C" cudaError_t cc_launch_bias_activation(int dtype, int src_layout, const void *src, int dst_layout, void *dst,
                                                 const float *bias, int n, int cout, long long plane, int act,
                                                 cudaStream_t stream)
{
    const bool layouts_ok = (src_layout == CC_LAYOUT_NCHW || src_layout == CC_LAYOUT_NHWC) &&
                            (dst_layout == CC_LAYOUT_NCHW || dst_layout == CC_LAYOUT_NHWC);
    if (!layouts_ok || n <= 0 || cout <= 0 || plane <= 0) return cudaErrorInvalidValue;
    // Only NCHW -> NHWC changes layout, and never in place (a tile's writes
    // would overwrite elements other tiles have yet to read).
    if (src_layout != dst_layout && (src_layout != CC_LAYOUT_NCHW || src == dst)) return cudaErrorInvalidValue;
    return cc_dispatch_dtype(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T *s = static_cast<const T *>(src);
        T *d = static_cast<T *>(dst);
        if (src_layout != dst_layout) {
            const long long tiles = (long long)n * ((cout + kTile - 1) / kTile) * ((plane + kTile - 1) / kTile);
            return cc_launch(bias_activation_transpose<T>, cc_grid_1d(tiles, 1, 1u << 16), dim3(kTile, kTileRows), 0,
                             stream, s, d, bias, n, cout, plane, act);
        }
        const int nhwc = src_layout == CC_LAYOUT_NHWC;
        const long long count = (long long)n * cout * plane, row = nhwc ? cout : plane;
        constexpr int kVec = cc_vec16<T>::count;
        if (row % kVec == 0 && cc_aligned16(src) && cc_aligned16(dst))
            return launch_same_layout<T, kVec>(s, d, bias, count, plane, cout, nhwc, act, stream);
        if constexpr (sizeof(T) == 2) {
            if (row % 2 == 0 && aligned4(src) && aligned4(dst))
                return launch_same_layout<T, 2>(s, d, bias, count, plane, cout, nhwc, act, stream);
        }
        return launch_same_layout<T, 1>(s, d, bias, count, plane, cout, nhwc, act, stream);
    });
}

extern "C" cudaError_t cc_launch_mixture_combine(int dtype, int layout, const void *z, const float *alpha,
                                                 const float *bias, void *y, int n, int cout, int groups, int e,
                                                 long long plane, int act, cudaStream_t stream)
{
    if ((layout != CC_LAYOUT_NCHW && layout != CC_LAYOUT_NHWC) || n <= 0 || cout <= 0 || groups <= 0 ||
        cout % groups != 0 || e <= 0 || plane <= 0)
        return cudaErrorInvalidValue;
    const long long work = (long long)n * cout * ((plane + kMixPixels - 1) / kMixPixels);
    const unsigned int blocks = cc_grid_1d(work, kThreads, 1u << 16);
    return cc_dispatch_dtype(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T *zt = static_cast<const T *>(z);
        T *yt = static_cast<T *>(y);
        if (layout == CC_LAYOUT_NHWC)
            return cc_launch(mixture_combine_nhwc<T>, blocks, kThreads, 0, stream, zt, alpha, bias, yt, n, cout, groups,
                             e, plane, act);
        return cc_launch(mixture_combine_kernel<T>, blocks, kThreads, 0, stream, zt, alpha, bias, yt, n, cout, groups,
                         e, plane, act);
    });
}
