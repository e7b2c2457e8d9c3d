// Device helpers shared by the kernel families: activations, warp
// reductions, launch-size arithmetic. Included by .cu files only.
#ifndef CONDCONV_KERNELS_COMMON_CUH
#define CONDCONV_KERNELS_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

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

// Blocks for `work` items at `per_block` items each, capped for grid-stride loops.
static inline unsigned int cc_grid_1d(int64_t work, int per_block, unsigned int cap)
{
    int64_t blocks = (work + per_block - 1) / per_block;
    if (blocks < 1) blocks = 1;
    return blocks > (int64_t)cap ? cap : (unsigned int)blocks;
}

static inline bool cc_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

#endif
