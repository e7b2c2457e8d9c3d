// What nvcc gives a .cu file, for the same file compiled as plain C++ by the
// test-only CPU execution layer (kernels/common.cuh includes this header when
// CONDCONV_CUDA_CPU is defined). Types come from the real toolkit headers
// (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h), so a float4 is the float4 of
// the production build; this header adds the execution-space qualifiers,
// threadIdx & co., barriers, warp operations, load/store hints, atomics,
// fences, device math and the nvcuda::wmma fragments, each mapped onto the
// engine (engine.h), which runs every GPU thread of a block as an OS thread.
#ifndef CC_CPU_DEVICE_H
#define CC_CPU_DEVICE_H

#ifndef __clang__
// Static __shared__ variables live in a linker section that the engine
// fills with NaN before every block; g++ drops section attributes on the
// statics of function templates (every templated kernel), so nothing would
// be filled and reads of unwritten shared memory would go unnoticed.
#error "the CPU execution layer (tests/cuda_cpu) needs clang++"
#endif

// First: the alignment-checked vector types (an error if a toolkit header
// came first; the layer's build includes this header before the kernel source).
#include "vector_types.h"

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "engine.h"
#include "launch.h"

// --- execution spaces and declaration qualifiers ----------------------------
// The toolkit's host_defines.h maps these to nothing for a host compiler;
// they are redefined here, after it. __launch_bounds__ is checked at launch
// from nvcc's own PTX of the kernel (.maxntid), not from here.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__ __attribute__((used, noinline))
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __launch_bounds__(...)
// One copy per kernel (blocks run one at a time), shared by the block's
// threads, in the section the engine fills with NaN before each block.
// `used`: a static the kernel only reads must not be folded to 0 (it is NaN).
#define __shared__ static __attribute__((section("cc_cpu_shared"), used))

// --- built-in variables ------------------------------------------------------
#define threadIdx (static_cast<const uint3 &>(::cc_cpu::t_thread_idx))
#define blockIdx  (static_cast<const uint3 &>(::cc_cpu::t_block_idx))
#define blockDim  (static_cast<const dim3 &>(::cc_cpu::t_block_dim))
#define gridDim   (static_cast<const dim3 &>(::cc_cpu::t_grid_dim))
static constexpr int warpSize = 32;

namespace cc_cpu {
// The launch's dynamic shared memory as T[] (kernels/common.cuh, CC_DYNAMIC_SHARED).
template <typename T>
T *dynamic_shared()
{
    return static_cast<T *>(dynamic_shared_base(alignof(T)));
}
} // namespace cc_cpu

// --- block barriers ----------------------------------------------------------
// Default arguments evaluate at the call, so the engine knows which
// __syncthreads each thread reached: threads of one barrier arriving from
// different lines is a divergent barrier.
inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    (void)::cc_cpu::block_barrier(::cc_cpu::barrier_sync, 0, file, line);
}
inline int __syncthreads_count(int predicate, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ::cc_cpu::block_barrier(::cc_cpu::barrier_count, predicate, file, line);
}
inline int __syncthreads_and(int predicate, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ::cc_cpu::block_barrier(::cc_cpu::barrier_and, predicate, file, line);
}
inline int __syncthreads_or(int predicate, const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ::cc_cpu::block_barrier(::cc_cpu::barrier_or, predicate, file, line);
}

#include "half.h"
#include "intrinsics.h"
#include "warp.h"
#include "wmma.h"

#endif
