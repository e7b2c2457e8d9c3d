// <cuda_pipeline.h> for the CPU execution layer: the primitives
// (__pipeline_memcpy_async, __pipeline_commit, __pipeline_wait_prior) that
// kernels use for cp.async, emulated with the strictness of a GPU and
// stricter timing (engine.h, pipeline_copy): a copy is only queued at the
// call and performed at the wait that covers its group, so a kernel that
// reads a stage before waiting for it reads the old contents. This
// directory comes before the toolkit's headers on the include path, so
// this file replaces the toolkit's (which needs nvcc) in the layer's build;
// nvcc builds use the toolkit's. Test-only.
#ifndef CC_CPU_CUDA_PIPELINE_H
#define CC_CPU_CUDA_PIPELINE_H

#include <cstddef>

#include "cuda_cpu/engine.h"

// size_and_align: 4, 8 or 16; zfill: trailing bytes written as zeros instead
// of copied (the toolkit's optional fourth argument).
#define __pipeline_memcpy_async(dst, src, ...)                                                                         \
    ::cc_cpu::pipeline_memcpy_async_at(__FILE__, __LINE__, (dst), (src), __VA_ARGS__)
#define __pipeline_wait_prior(prior) ::cc_cpu::pipeline_wait_prior((size_t)(prior), __FILE__, __LINE__)

namespace cc_cpu {
inline void pipeline_memcpy_async_at(const char *file, int line, void *dst, const void *src, size_t size_and_align,
                                     size_t zfill = 0)
{
    pipeline_copy(dst, src, size_and_align, zfill, file, line);
}
} // namespace cc_cpu

inline void __pipeline_commit() { ::cc_cpu::pipeline_commit(); }

#endif
