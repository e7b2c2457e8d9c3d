// Small kernels that test the CPU execution layer itself (tests/cuda_cpu/
// test_emu_layer.c): right ones, whose results the test checks against the
// CUDA semantics (shuffles of every kind and width, votes, block
// reductions, atomics, half precision, wmma fragments), and wrong ones,
// each with one bug a GPU faults on or leaves undefined, which the layer
// must catch. Compiled by nvcc -ptx (for the launch bounds and static
// shared memory the layer checks against) and as C++ by the layer; never
// part of the library.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_pipeline.h>
#include <mma.h>

#include "common.cuh"
#include "selftest_kernels.h"

namespace {

// --- right kernels -------------------------------------------------------------------------
// out[tid][k]: the k-th warp operation's result for thread tid.
__global__ void __launch_bounds__(64) warp_ops_kernel(unsigned *out)
{
    const unsigned tid = threadIdx.x, lane = tid & 31u;
    unsigned *o = out + tid * ST_WARP_RESULTS;
    int k = 0;
    const unsigned v = tid * 1000u + 7u;
    for (int width = 32; width >= 1; width /= 2) {
        o[k++] = __shfl_sync(0xffffffffu, v, (int)(lane * 7u + 3u), width);
        o[k++] = __shfl_up_sync(0xffffffffu, v, 3u, width);
        o[k++] = __shfl_down_sync(0xffffffffu, v, 5u, width);
        o[k++] = __shfl_xor_sync(0xffffffffu, v, 6, width);
        o[k++] = __shfl_xor_sync(0xffffffffu, v, 17, width);
    }
    // Two half-warps shuffle among themselves at the same time.
    const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    o[k++] = __shfl_sync(half, v, (int)((lane + 1u) % 16u + (lane & 16u)));
    o[k++] = __ballot_sync(0xffffffffu, (tid % 3u) == 0u);
    o[k++] = (unsigned)__all_sync(0xffffffffu, tid < 40u);
    o[k++] = (unsigned)__any_sync(0xffffffffu, tid == 40u);
    o[k++] = __match_any_sync(0xffffffffu, lane / 4u);
    o[k++] = __reduce_add_sync(0xffffffffu, lane);
    o[k++] = __reduce_min_sync(0xffffffffu, 100u - lane);
    o[k++] = (unsigned)__reduce_max_sync(0xffffffffu, (int)lane - 20);
    __syncwarp();
    o[k++] = (unsigned)__syncthreads_count(tid % 5u == 0u);
    o[k++] = (unsigned)__syncthreads_and(tid < 64u);
    o[k++] = (unsigned)__syncthreads_or(tid == 63u);
    o[k++] = __activemask();
}

__global__ void __launch_bounds__(256) atomics_kernel(unsigned *counters, float *sum, int *maxv, unsigned *wrap)
{
    const unsigned tid = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(counters, 1u);
    atomicAdd(sum, 0.5f);
    atomicMax(maxv, (int)tid);
    atomicInc(wrap, 9u);
    // An atomic read: a plain one races with the other threads' atomicCAS
    // (the PTX memory model says so, and TSan reports it).
    unsigned old = atomicAdd(counters + 1, 0u), assumed;
    do {
        assumed = old;
        old = atomicCAS(counters + 1, assumed, assumed + 2u);
    } while (old != assumed);
}

// Reads shared memory nobody wrote: the layer fills it with NaN (0xff bytes).
__global__ void __launch_bounds__(32) unwritten_shared_kernel(unsigned *out)
{
    __shared__ unsigned never_written[32];
    CC_DYNAMIC_SHARED(unsigned, dynamic);
    out[threadIdx.x] = never_written[threadIdx.x];
    out[32 + threadIdx.x] = dynamic[threadIdx.x];
}

// y = round_half(x) * round_half(x) + 1 in half, and bfloat16 likewise.
__global__ void __launch_bounds__(32) half_kernel(const float *x, float *y)
{
    const unsigned i = threadIdx.x;
    const __half h = __float2half(x[i]);
    y[i] = __half2float(__hfma(h, h, __float2half(1.0f)));
    const __nv_bfloat16 b = __float2bfloat16(x[i]);
    y[32 + i] = __bfloat162float(__hfma(b, b, __float2bfloat16(1.0f)));
    y[64 + i] = __half2float(__hadd(h, h));
}

// D = 2 * (A * B + C) per warp-level matrix op, for each fragment type.
template <typename T, int M, int N, int K>
__device__ void mma_tile(const T *a, const T *b, const float *c, float *d)
{
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, M, N, K, T, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, M, N, K, T, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, M, N, K, float> fc;
    wmma::load_matrix_sync(fa, a, K);
    wmma::load_matrix_sync(fb, b, K);
    wmma::load_matrix_sync(fc, c, N, wmma::mem_row_major);
    wmma::mma_sync(fc, fa, fb, fc);
    for (int i = 0; i < fc.num_elements; ++i) fc.x[i] *= 2.0f;
    wmma::store_matrix_sync(d, fc, N, wmma::mem_row_major);
}

__global__ void __launch_bounds__(32)
    wmma_kernel(const __half *ah, const __half *bh, const __nv_bfloat16 *ab, const __nv_bfloat16 *bb, const float *af,
                const float *bf, const float *c, float *d)
{
    mma_tile<__half, 16, 16, 16>(ah, bh, c, d);
    mma_tile<__half, 32, 8, 16>(ah, bh, c, d + 256);
    mma_tile<__half, 8, 32, 16>(ah, bh, c, d + 512);
    mma_tile<__nv_bfloat16, 16, 16, 16>(ab, bb, c, d + 768);
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
    wmma::load_matrix_sync(fa, af, 8);
    wmma::load_matrix_sync(fb, bf, 8);
    for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
    for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
    wmma::fill_fragment(fc, 0.0f);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(d + 1024, fc, 16, wmma::mem_row_major);
}

// Uses up to `words` floats of dynamic shared memory (past 48 KiB with opt-in).
__global__ void __launch_bounds__(32) big_dynamic_kernel(float *out, int words)
{
    CC_DYNAMIC_SHARED(float, s);
    if (threadIdx.x == 0) s[words - 1] = 3.0f;
    __syncthreads();
    out[threadIdx.x] = s[words - 1];
}

// 40 KiB of static shared memory.
__global__ void __launch_bounds__(32) big_static_kernel(float *out)
{
    __shared__ float s[10240];
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % 32];
}

// x[i] written by block 0, read by block 1, through the fence + atomic
// pattern (ordered 1), the atomic without the writer's fence (ordered 2: a
// GPU may show block 1 stale x) or not at all (a race between blocks).
__global__ void __launch_bounds__(32) handoff_kernel(float *x, unsigned *flag, float *out, int ordered)
{
    if (blockIdx.x == 0) {
        x[threadIdx.x] = 1.0f + (float)threadIdx.x;
        if (ordered) {
            if (ordered == 1) __threadfence();
            __syncthreads();
            if (threadIdx.x == 0) atomicAdd(flag, 1u);
        }
        return;
    }
    if (ordered) {
        __shared__ unsigned seen;
        if (threadIdx.x == 0) seen = atomicAdd(flag, 0u);
        __syncthreads();
        if (seen == 0u) return;
        __threadfence();
    }
    out[threadIdx.x] = x[threadIdx.x];
}

// --- wrong kernels (one bug each) ----------------------------------------------------------------
__global__ void __launch_bounds__(64) bounded_kernel(float *out) { out[threadIdx.x] = 1.0f; }

__global__ void __launch_bounds__(32) misaligned_ldg_kernel(const float *x, float *out)
{
    const float4 v = __ldg(reinterpret_cast<const float4 *>(x + 1));
    out[threadIdx.x] = v.x;
}

__global__ void __launch_bounds__(32) misaligned_plain_kernel(const float *x, float *out)
{
    const float4 v = reinterpret_cast<const float4 *>(x + 1)[0];
    out[threadIdx.x] = v.y;
}

__global__ void __launch_bounds__(64) divergent_barrier_kernel(float *out)
{
    __shared__ float s[64];
    s[threadIdx.x] = 1.0f;
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = s[63 - threadIdx.x];
}

__global__ void __launch_bounds__(64) early_return_kernel(float *out, int n)
{
    __shared__ float s[64];
    if ((int)threadIdx.x >= n) return;
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % (unsigned)n];
}

__global__ void __launch_bounds__(32) deadlock_kernel(float *out)
{
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16)
        v = __shfl_sync(0xffffffffu, v, 0);
    else
        __syncthreads();
    out[threadIdx.x] = v;
}

__global__ void __launch_bounds__(32) shuffle_outside_mask_kernel(float *out)
{
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, (float)threadIdx.x, 20);
}

__global__ void __launch_bounds__(64) partial_warp_kernel(float *out)
{
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 1);
}

__global__ void __launch_bounds__(32) spin_kernel(volatile unsigned *flag)
{
    while (*flag == 0u) {
    }
}

// Writes out[offset .. offset + 31]: past either end of a smaller allocation
// (the guard zones of the emulated cudaMalloc must catch it).
__global__ void __launch_bounds__(32) global_overrun_kernel(float *out, int offset)
{
    out[offset + static_cast<int>(threadIdx.x)] = 1.0f;
}

__global__ void __launch_bounds__(32) shared_overrun_kernel(float *out, int words)
{
    CC_DYNAMIC_SHARED(float, s);
    s[threadIdx.x] = 1.0f;
    if (threadIdx.x == 0) s[words] = 2.0f; // one past the end
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x];
}

__global__ void __launch_bounds__(64) missing_barrier_kernel(float *out)
{
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    out[threadIdx.x] = s[63 - threadIdx.x];
}

// Lane 0 writes shared memory, lane 1 reads it after a shuffle (no
// ordering on a GPU) or after __syncwarp (ordered).
__global__ void __launch_bounds__(32) warp_order_kernel(float *out, int use_syncwarp)
{
    __shared__ float s;
    if (threadIdx.x == 0) s = 5.0f;
    if (use_syncwarp)
        __syncwarp();
    else
        (void)__shfl_sync(0xffffffffu, 0, 0);
    if (threadIdx.x == 1) out[0] = s;
}

__global__ void __launch_bounds__(32) wmma_misaligned_kernel(const __half *a, float *d)
{
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + 8, 16); // 16 bytes off a 32-byte boundary
    d[threadIdx.x] = __half2float(fa.x[0]);
}

// TF32 operands that were not rounded with __float_to_tf32: a GPU's tensor
// core would read only their top 19 bits.
__global__ void __launch_bounds__(32) wmma_tf32_unrounded_kernel(float *d)
{
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
    wmma::fill_fragment(fa, 1.0f + 1.0f / 4096.0f); // below TF32's 10-bit mantissa
    wmma::fill_fragment(fb, 1.0f);
    wmma::fill_fragment(fc, 0.0f);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(d, fc, 16, wmma::mem_row_major);
}

// <cuda_pipeline.h>: 64 threads, two stages of 64 x 4 floats in dynamic
// shared memory. mode 0 (right): each thread copies its 4 floats of both
// stages (one 16-byte copy for stage 0; 8 + 4 + 4 bytes, the last with a
// 4-byte zero-fill, for stage 1), waits for stage 0 (wait_prior(1)), and
// after a barrier reads its neighbour's (tid ^ 1) part; then stage 1 the
// same: out[0..255] = stage 0, out[256..511] = stage 1 (its every 4th value
// 0). mode 1 (stale): reads its part of stage 0 before its wait (out: the
// NaN fill), then waits. mode 2: returns with copies never waited for. mode 3: a
// 16-byte copy to a destination 4 bytes off 16. mode 4: a destination in
// global memory. mode 5: waits but reads the neighbour's part without a
// barrier (a data race under TSan).
__global__ void __launch_bounds__(64) pipeline_kernel(const float *src, float *out, int mode)
{
    CC_DYNAMIC_SHARED(float4, st_pipe_smem);
    float *const stage0 = reinterpret_cast<float *>(st_pipe_smem), *const stage1 = stage0 + 256;
    const int tid = threadIdx.x, other = tid ^ 1;
    if (mode == 3) {
        __pipeline_memcpy_async(stage0 + 4 * tid + 1, src + 4 * tid, 16);
    } else if (mode == 4) {
        __pipeline_memcpy_async(out + 4 * tid, src + 4 * tid, 16);
    } else {
        __pipeline_memcpy_async(stage0 + 4 * tid, src + 4 * tid, 16);
    }
    __pipeline_commit();
    __pipeline_memcpy_async(stage1 + 4 * tid, src + 256 + 4 * tid, 8);
    __pipeline_memcpy_async(stage1 + 4 * tid + 2, src + 258 + 4 * tid, 4);
    __pipeline_memcpy_async(stage1 + 4 * tid + 3, src + 259 + 4 * tid, 4, 4); // zero-filled
    __pipeline_commit();
    if (mode == 2) return;
    if (mode == 1) { // its own part: no other thread's wait can have landed it
        for (int i = 0; i < 4; ++i) out[4 * tid + i] = stage0[4 * tid + i];
        __pipeline_wait_prior(0);
        return;
    }
    __pipeline_wait_prior(1);
    if (mode != 5) __syncthreads();
    for (int i = 0; i < 4; ++i) out[4 * tid + i] = stage0[4 * other + i];
    __pipeline_wait_prior(0);
    __syncthreads();
    for (int i = 0; i < 4; ++i) out[256 + 4 * tid + i] = stage1[4 * other + i];
}

} // namespace

// --- launchers --------------------------------------------------------------------------------------
extern "C" cudaError_t st_warp_ops(unsigned *out) { return cc_launch(warp_ops_kernel, 1, 64, 0, nullptr, out); }

extern "C" cudaError_t st_atomics(unsigned *counters, float *sum, int *maxv, unsigned *wrap, int blocks)
{
    return cc_launch(atomics_kernel, (unsigned)blocks, 256, 0, nullptr, counters, sum, maxv, wrap);
}

extern "C" cudaError_t st_unwritten_shared(unsigned *out)
{
    return cc_launch(unwritten_shared_kernel, 1, 32, 32 * sizeof(unsigned), nullptr, out);
}

extern "C" cudaError_t st_half(const float *x, float *y) { return cc_launch(half_kernel, 1, 32, 0, nullptr, x, y); }

extern "C" cudaError_t st_wmma(const void *ah, const void *bh, const void *ab, const void *bb, const float *af,
                               const float *bf, const float *c, float *d)
{
    return cc_launch(wmma_kernel, 1, 32, 0, nullptr, static_cast<const __half *>(ah), static_cast<const __half *>(bh),
                     static_cast<const __nv_bfloat16 *>(ab), static_cast<const __nv_bfloat16 *>(bb), af, bf, c, d);
}

extern "C" cudaError_t st_big_dynamic(float *out, int words, int opt_in)
{
    if (opt_in) {
        const cudaError_t err =
            cudaFuncSetAttribute(reinterpret_cast<const void *>(big_dynamic_kernel),
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(words * sizeof(float)));
        if (err != cudaSuccess) return err;
    }
    return cc_launch(big_dynamic_kernel, 1, 32, words * sizeof(float), nullptr, out, words);
}

extern "C" cudaError_t st_big_static(float *out, size_t dynamic_bytes)
{
    return cc_launch(big_static_kernel, 1, 32, dynamic_bytes, nullptr, out);
}

extern "C" cudaError_t st_handoff(float *x, unsigned *flag, float *out, int ordered)
{
    return cc_launch(handoff_kernel, 2, 32, 0, nullptr, x, flag, out, ordered);
}

extern "C" cudaError_t st_bounded(float *out, int threads, unsigned grid_y)
{
    return cc_launch(bounded_kernel, dim3(1, grid_y), (unsigned)threads, 0, nullptr, out);
}

extern "C" cudaError_t st_pipeline(const float *src, float *out, int mode)
{
    return cc_launch(pipeline_kernel, 1, 64, 512 * sizeof(float), nullptr, src, out, mode);
}

extern "C" cudaError_t st_wrong(int which, float *x, float *out, int n)
{
    switch (which) {
    case ST_MISALIGNED_LDG: return cc_launch(misaligned_ldg_kernel, 1, 32, 0, nullptr, x, out);
    case ST_MISALIGNED_PLAIN: return cc_launch(misaligned_plain_kernel, 1, 32, 0, nullptr, x, out);
    case ST_DIVERGENT_BARRIER: return cc_launch(divergent_barrier_kernel, 1, 64, 0, nullptr, out);
    case ST_EARLY_RETURN: return cc_launch(early_return_kernel, 1, 64, 0, nullptr, out, n);
    case ST_DEADLOCK: return cc_launch(deadlock_kernel, 1, 32, 0, nullptr, out);
    case ST_SHUFFLE_OUTSIDE_MASK: return cc_launch(shuffle_outside_mask_kernel, 1, 32, 0, nullptr, out);
    case ST_PARTIAL_WARP: return cc_launch(partial_warp_kernel, 1, 48, 0, nullptr, out);
    case ST_SPIN: return cc_launch(spin_kernel, 1, 32, 0, nullptr, reinterpret_cast<volatile unsigned *>(x));
    case ST_SHARED_OVERRUN: return cc_launch(shared_overrun_kernel, 1, 32, (size_t)n * sizeof(float), nullptr, out, n);
    case ST_MISSING_BARRIER: return cc_launch(missing_barrier_kernel, 1, 64, 0, nullptr, out);
    case ST_GLOBAL_OVERRUN: return cc_launch(global_overrun_kernel, 1, 32, 0, nullptr, out, n);
    case ST_WARP_ORDER_SHUFFLE: return cc_launch(warp_order_kernel, 1, 32, 0, nullptr, out, 0);
    case ST_WARP_ORDER_SYNCWARP: return cc_launch(warp_order_kernel, 1, 32, 0, nullptr, out, 1);
    case ST_WMMA_MISALIGNED:
        return cc_launch(wmma_misaligned_kernel, 1, 32, 0, nullptr, reinterpret_cast<const __half *>(x), out);
    case ST_WMMA_TF32_UNROUNDED: return cc_launch(wmma_tf32_unrounded_kernel, 1, 32, 0, nullptr, out);
    default: return cudaErrorInvalidValue;
    }
}
