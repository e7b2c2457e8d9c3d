// The CPU execution layer's engine interface: what the device-side headers
// (device.h, warp.h, wmma.h) call into, implemented by engine.cpp (blocks,
// barriers, warp exchange, shared memory, faults) and runtime.cpp (launch
// checks, streams). Test-only.
#ifndef CC_CPU_ENGINE_H
#define CC_CPU_ENGINE_H

// The layer's vector types, before any toolkit header (see vector_types.h).
#include "vector_types.h"

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>

#include "hooks.h"

// ThreadSanitizer is on (clang: __has_feature; gcc: __SANITIZE_THREAD__).
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CC_CPU_TSAN 1
#endif
#endif
#if !defined(CC_CPU_TSAN) && defined(__SANITIZE_THREAD__)
#define CC_CPU_TSAN 1
#endif
#ifndef CC_CPU_TSAN
#define CC_CPU_TSAN 0
#endif

namespace cc_cpu {

// The built-in variables of the running GPU thread. Plain thread-locals,
// set by the engine before the kernel body runs; device.h exposes them as
// read-only threadIdx, blockIdx, blockDim and gridDim.
inline thread_local uint3 t_thread_idx;
inline thread_local uint3 t_block_idx;
inline thread_local dim3 t_block_dim;
inline thread_local dim3 t_grid_dim;

// One launch as the kernel's TU describes it.
struct launch_desc {
    const void *kernel; // identifies the kernel (its name and limits come from nvcc's PTX)
    dim3 grid, block;
    size_t smem; // dynamic shared memory bytes
    cudaStream_t stream;
};

// Validates the launch as a GPU would (refused launches return the error a
// GPU returns), then runs it (or records it into a graph being captured).
// `pointers` are the kernel's pointer arguments: each must be NULL or device
// memory. `body` runs the kernel once as the calling GPU thread.
cudaError_t submit_launch(const launch_desc &desc, std::function<void()> body, const void *const *pointers,
                          int pointer_count);

// Barriers and warp-level operations of the calling GPU thread. `file` and
// `line` are the call site in the kernel source (divergence is detected by
// call site).
enum barrier_kind { barrier_sync, barrier_count, barrier_and, barrier_or };
int block_barrier(barrier_kind kind, int predicate, const char *file, int line);

enum warp_kind {
    warp_sync,         // __syncwarp: a barrier with memory ordering
    warp_shfl_idx,     // __shfl_sync
    warp_shfl_up,      // __shfl_up_sync
    warp_shfl_down,    // __shfl_down_sync
    warp_shfl_xor,     // __shfl_xor_sync
    warp_ballot,       // __ballot_sync (in: int predicate, out: unsigned)
    warp_all,          // __all_sync
    warp_any,          // __any_sync
    warp_match_any,    // __match_any_sync (in: the value)
    warp_match_all,    // __match_all_sync (out: mask, or 0)
    warp_reduce_add_u, // __reduce_*_sync on unsigned / int
    warp_reduce_min_u,
    warp_reduce_max_u,
    warp_reduce_add_i,
    warp_reduce_min_i,
    warp_reduce_max_i,
    warp_reduce_and,
    warp_reduce_or,
    warp_reduce_xor,
    warp_gather // every lane receives every lane's `size` bytes (wmma fragments)
};
// The largest value a shuffle moves, and the largest share of a gather.
constexpr size_t kWarpValueBytes = 16;
constexpr size_t kWarpGatherBytes = 64;
// `in` holds `size` bytes; `out` receives `size` bytes (32 * size for
// warp_gather, indexed by lane). `arg` is the shuffle's lane or delta,
// `width` its segment width.
void warp_collective(warp_kind kind, unsigned mask, const void *in, size_t size, void *out, int arg, int width,
                     const char *file, int line);
// __activemask(): lanes of the caller's warp that have not returned.
unsigned active_mask();
// Lane (0-31) of the calling GPU thread.
unsigned lane_id();

// The launch's dynamic shared memory (nullptr when it asked for none).
void *dynamic_shared_base(size_t align);

// A vector or scalar access of `align`-byte alignment at p: faults, naming
// the call site, when p is misaligned (a GPU raises a misaligned-address
// error).
void check_aligned(const void *p, size_t align, const char *what, const char *file, int line);

// The asynchronous copies of <cuda_pipeline.h> (include/cuda_pipeline.h),
// per GPU thread: pipeline_copy checks the addresses (dst in the block's
// shared memory, src in device memory, both `bytes`-aligned, bytes 4, 8 or
// 16; zfill <= bytes trailing bytes are zero-filled) and queues the copy in
// the thread's open group, without copying; pipeline_commit closes the
// group; pipeline_wait_prior performs (copies) every committed group but the
// newest `prior`, oldest first. So a read of a stage before its wait sees
// the old contents, and the copying thread writes at the wait (a reader that
// no barrier orders after it races with it under TSan). A thread that
// returns with copies queued (committed or not) is a fault.
void pipeline_copy(void *dst, const void *src, size_t bytes, size_t zfill, const char *file, int line);
void pipeline_commit();
void pipeline_wait_prior(size_t prior, const char *file, int line);

// GPU memory-model hooks: __threadfence*(), and every atomic (of `size`
// bytes). Under TSan they give the happens-before a GPU's fence + atomic
// patterns give (a fence before an atomic releases, a fence after an atomic
// some thread of the block performed acquires); elsewhere the fence is a
// real fence. With the store buffer on (hooks.h), a fence publishes the
// block's earlier stores to the blocks that run after it, and what atomics
// wrote is always visible.
void thread_fence();
void atomic_before(const void *addr, size_t size);
void atomic_after(const void *addr);

// Stops the process with a message naming the kernel, block and thread: the
// kernel did something a GPU faults on, or whose result is undefined.
[[noreturn]] void fault(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

} // namespace cc_cpu

#endif
