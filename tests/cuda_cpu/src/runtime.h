// The emulated runtime's internal hooks for the emulated cuDNN and cuBLAS
// (libs.cpp): their handle creations are fault-injection events and count
// as live handles, like streams and events.
#ifndef CC_CPU_RUNTIME_H
#define CC_CPU_RUNTIME_H

#include <cstddef>
#include <functional>
#include <utility>
#include <vector>

struct CUstream_st;

namespace cc_cpu {

// True when this allocation event is the one a test made fail.
bool inject_alloc_failure(const char *what);
void handle_created();
void handle_destroyed();
// Every live device allocation: base and size (the engine's store buffer).
std::vector<std::pair<unsigned char *, size_t>> device_regions();
// Stops the run (FAULT, abort) if a guard zone of a live device allocation
// was written; `when` names the point of the check ("cublasGemm...").
void check_guards(const char *when);
// True when [p, p + bytes) lies inside one live device allocation.
bool is_device_range(const void *p, size_t bytes);
// Runs a library call's device work in its stream's order, as the real
// library's kernels would run: now, or, while the stream is being captured,
// at every replay of the graph. Without this, a cuDNN/cuBLAS call inside a
// capture would compute once on the data of capture time and be missing from
// every replay. False (work not run) when the stream is unknown or a legacy
// stream is used during a capture.
bool enqueue(CUstream_st *stream, const char *call, std::function<void()> work);
// Prints one line prefixed "cuda_cpu: " to stderr.
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

} // namespace cc_cpu

#endif
