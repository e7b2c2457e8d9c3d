// Device helpers shared by the kernel families: activations, warp
// reductions, launch-size arithmetic, dynamic shared memory, and cc_launch,
// the one launcher every kernel goes through. Included by .cu files only.
//
// The same sources also build as plain C++ for the test-only CPU execution
// layer (tests/cuda_cpu, CONDCONV_CUDA_CPU defined): its device header gives
// them threadIdx, __syncthreads, shuffles, ... and cc_launch runs the grid on
// the CPU with the checks a GPU would fault or refuse on. Kernels use only
// what that layer runs (README, Development).
#ifndef CONDCONV_KERNELS_COMMON_CUH
#define CONDCONV_KERNELS_COMMON_CUH

#ifdef CONDCONV_CUDA_CPU
#include <cuda_cpu/device.h>
#endif
#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

// Activation codes, equal to condconv_activation (the public header is C and
// the kernels do not need the rest of it).
enum { CC_ACT_NONE = 0, CC_ACT_RELU = 1, CC_ACT_SILU = 2 };

__device__ __forceinline__ float cc_activate(int act, float v)
{
    // v < 0 ? 0 : v, not fmaxf: a NaN must come out as NaN, never as 0.
    if (act == CC_ACT_RELU) return v < 0.0f ? 0.0f : v;
    // expf, not __expf: the tolerance of the f32 tests is 1e-5 relative.
    if (act == CC_ACT_SILU) return v / (1.0f + expf(-v));
    return v;
}

// The derivative of cc_activate at v (the backward's chain rule through a
// fused activation; host/reference_backward.c's in double). ReLU's at 0 is
// 0, as the reference's.
__device__ __forceinline__ float cc_activation_grad(int act, float v)
{
    if (act == CC_ACT_RELU) return v > 0.0f ? 1.0f : 0.0f;
    if (act == CC_ACT_SILU) {
        const float s = 1.0f / (1.0f + expf(-v)); // d/dv v s(v) = s + v s (1 - s)
        return s * (1.0f + v * (1.0f - s));
    }
    return 1.0f;
}

// A split-K of `len` elements into splits of `chunk` (a multiple of
// `align`): about target_blocks blocks over `tiles` blocks a split, at
// least min_elems elements a split, at most 65535 splits (gridDim.y), none
// empty. A function of the sizes only, so that scratch can be sized before
// any pointer exists and the summation order of the splits never depends
// on anything else (the backward's deterministic d_alpha reductions).
struct cc_split_k {
    int splits;
    long long chunk;
};

static inline cc_split_k cc_split_k_for(long long len, long long tiles, long long target_blocks, long long min_elems,
                                        long long align)
{
    long long splits = (target_blocks + tiles - 1) / tiles;
    const long long by_len = (len + min_elems - 1) / min_elems;
    if (splits > by_len) splits = by_len;
    if (splits > 65535) splits = 65535;
    if (splits < 1) splits = 1;
    long long chunk = (len + splits - 1) / splits;
    chunk = (chunk + align - 1) / align * align;
    cc_split_k d;
    d.chunk = chunk;
    d.splits = (int)((len + chunk - 1) / chunk);
    return d;
}

__device__ __forceinline__ float cc_warp_sum(float v)
{
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float cc_warp_max(float v)
{
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// The second pass of the backward's split d_alpha reductions (mixture's
// split over the plane, backward_mixture.cu; the folded weight gradient's
// tiles, backward_wgrad.cu): d_alpha[b][e] = partial[k][b][e] summed over
// k < parts in order, plus the bias term sum_c bias[e][c] dysum[b][c]
// (bias NULL: none). One warp per (b, e), grid-stride over warps of
// blockDim.x / 32 a block; the loop is uniform per warp (the shuffles name
// every lane) and `bias` is the same for the whole grid. A separate launch
// rather than a last-block hand-off: no counters, fences or zeroed buffers.
__device__ __forceinline__ void cc_dalpha_finish(const float *__restrict__ partial, long long parts,
                                                 const float *__restrict__ bias, const float *__restrict__ dysum,
                                                 float *__restrict__ d_alpha, int n, int e_count, int cout)
{
    const int warps = (int)blockDim.x >> 5, warp = (int)threadIdx.x >> 5, lane = (int)threadIdx.x & 31;
    const long long count = (long long)n * e_count;
    for (long long w = (long long)blockIdx.x * warps + warp; w < count; w += (long long)gridDim.x * warps) {
        const long long b = w / e_count, q = w - b * e_count;
        float t = 0.0f;
        if (bias != NULL) {
            const float *bq = bias + q * cout, *db = dysum + b * cout;
            for (int c = lane; c < cout; c += 32) t = fmaf(__ldg(bq + c), __ldg(db + c), t);
            t = cc_warp_sum(t);
        }
        if (lane == 0) {
            float s = 0.0f;
            for (long long k = 0; k < parts; ++k) s += partial[k * count + w];
            d_alpha[w] = s + t;
        }
    }
}

// Blocks for `work` items at `per_block` items each, capped for grid-stride loops.
static inline unsigned int cc_grid_1d(int64_t work, int per_block, unsigned int cap)
{
#ifdef CONDCONV_CUDA_CPU
    // The CPU tests lower the caps, so that the grid-stride loops really loop
    // on shapes small enough to run there.
    cap = cc_cpu_grid_cap(cap);
#endif
    int64_t blocks = (work + per_block - 1) / per_block;
    if (blocks < 1) blocks = 1;
    return blocks > (int64_t)cap ? cap : (unsigned int)blocks;
}

static inline bool cc_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

// The block's dynamic shared memory (the launch's smem bytes) as `type name[]`.
// A macro, because the CPU build cannot compile `extern __shared__`: there
// __shared__ must make a function-local static (shared by the block's threads),
// and `extern static` is not C++; the layer hands out its per-launch buffer.
#ifdef CONDCONV_CUDA_CPU
#define CC_DYNAMIC_SHARED(type, name) type *const name = ::cc_cpu::dynamic_shared<type>()
#else
#define CC_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// kernel<<<grid, block, smem, stream>>>(args...), returning the launch's own
// error. Not `<<<>>>` then cudaGetLastError(): that returns (and clears) any
// error an earlier call left pending on this thread as if the launch had
// failed. cudaLaunchKernelEx's typed overload converts args to the kernel's
// parameter types as <<<>>> does. The CPU build runs the grid on the CPU.
template <typename... Params, typename... Args>
static inline cudaError_t cc_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                    Args &&...args)
{
#ifdef CONDCONV_CUDA_CPU
    return ::cc_cpu::launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
#else
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
#endif
}

#endif
