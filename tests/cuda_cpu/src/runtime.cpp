// The emulated CUDA runtime of the CPU execution layer: the cudart entry
// points the library's host code (compiled unchanged against the real
// <cuda_runtime.h>) and the tests call, on a device whose limits are one
// card's (an H200 by default; cc_cpu_set_device_profile picks another) and
// whose memory is host memory.
//
//  - Device memory: posix_memalign'd, filled with NaN (0xff bytes) like
//    memory nobody wrote; every copy, memset and kernel pointer argument
//    must lie inside an allocation (so a host pointer passed as a device one
//    is caught), and what is not freed is a leak LeakSanitizer reports.
//    Each allocation has guard zones of kGuardBytes before and after it,
//    filled with a pattern and checked at its cudaFree, at every stream,
//    event and device synchronisation, after every kernel grid and after
//    every emulated cuDNN/cuBLAS call: an out-of-bounds write (a workspace
//    the host code under-counted, say) stops the run naming the allocation,
//    in every build. Under ASan the zones are also poisoned, so the write
//    itself is reported.
//  - Streams and events: work runs when it is issued, so every stream is in
//    order and every event complete; elapsed times are wall-clock.
//  - Graph capture: work issued to a capturing stream is recorded and runs
//    when the instantiated graph is launched; what a GPU forbids during a
//    global-mode capture (allocation, synchronisation, the legacy stream)
//    fails and invalidates the capture, as on a GPU.
//  - Launches: refused with a GPU's error when the configuration is invalid
//    (grid and block limits, __launch_bounds__ and static shared memory from
//    nvcc's PTX, dynamic shared memory against 48 KiB or the opt-in limit,
//    static plus dynamic against the card's opt-in per block).
//  - Fault injection: the k-th allocation, copy or launch fails (hooks.h).
//  - Errors: per-thread last error, as cudaGetLastError reports it.
#include "cuda_cpu/vector_types.h" // before the toolkit's headers, as in the kernels

#include <cuda_runtime.h>
#include <sanitizer/asan_interface.h>

#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "cuda_cpu/hooks.h"
#include "grid.h"
#include "kernel_info.h"
#include "runtime.h"

// The opaque types of <cuda_runtime.h>, as this runtime implements them.
struct CUstream_st {
    unsigned flags = 0;
    bool capturing = false, invalidated = false;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
    CUgraph_st *graph = nullptr;
};
struct CUevent_st {
    bool recorded = false;
    std::chrono::steady_clock::time_point when;
};
struct CUgraph_st {
    std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> ops;
};

namespace cc_cpu {
namespace {

// The emulated device: one card's limits, from NVIDIA's datasheets and
// tuning guides (what cudaGetDeviceProperties reports on it). Every card
// gives a block 48 KiB of shared memory without opt-in; with opt-in, static
// plus dynamic may reach sharedMemPerBlockOptin (the SM's shared memory
// less the 1 KiB the runtime reserves per block).
constexpr size_t kSmemDefault = size_t(48) * 1024;
constexpr size_t kKiB = 1024, kGiB = size_t(1) << 30;
struct device_profile {
    const char *name;
    int major, minor, sm_count;
    size_t smem_optin, smem_per_sm;
    int threads_per_sm, blocks_per_sm;
    size_t global_mem;
    int l2_bytes, bus_width;
};
const device_profile kProfiles[CC_CPU_DEVICE_PROFILE_COUNT] = {
    {"H200 SXM", 9, 0, 132, 227 * kKiB, 228 * kKiB, 2048, 32, 141 * kGiB, 50 << 20, 6144},
    {"H100 PCIe", 9, 0, 114, 227 * kKiB, 228 * kKiB, 2048, 32, 80 * kGiB, 50 << 20, 5120},
    {"A100 SXM4", 8, 0, 108, 163 * kKiB, 164 * kKiB, 2048, 32, 80 * kGiB, 40 << 20, 5120},
    {"L40S", 8, 9, 142, 99 * kKiB, 100 * kKiB, 1536, 24, 48 * kGiB, 96 << 20, 384},
    {"A10", 8, 6, 72, 99 * kKiB, 100 * kKiB, 1536, 16, 24 * kGiB, 6 << 20, 384},
};

struct runtime_state {
    std::mutex m;
    std::map<uintptr_t, size_t> allocations;
    std::set<CUstream_st *> streams;
    std::set<CUevent_st *> events;
    std::set<CUgraph_st *> graphs;
    std::set<CUgraphExec_st *> execs;
    size_t other_handles = 0; // cuDNN and cuBLAS handles
    // Fault injection.
    long long fail_at = 0, events_seen = 0;
    cc_cpu_event failed = CC_CPU_EVENT_NONE;
    std::string failed_what;
    long long refused = 0;
    int profile = CC_CPU_DEVICE_H200;
    bool validate_only = false; // cc_cpu_set_launch_validate_only
};

runtime_state &rt()
{
    static runtime_state *s = new runtime_state; // never destroyed: kernels may outlive static destructors
    return *s;
}

thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t result(cudaError_t err)
{
    if (err != cudaSuccess) t_last_error = err;
    return err;
}

// Called with rt().m held.
bool inject(runtime_state &s, cc_cpu_event cls, const std::string &what)
{
    ++s.events_seen;
    if (s.fail_at == 0 || s.events_seen != s.fail_at) return false;
    s.failed = cls;
    s.failed_what = what;
    return true;
}

// --- guard zones around every allocation ------------------------------------------------------
// 256 bytes: a whole multiple of cudaMalloc's alignment, so the pointer
// returned keeps it, and room for a 64-float overrun.
constexpr size_t kGuardBytes = 256;

unsigned char guard_byte(size_t i) { return static_cast<unsigned char>(0x5a ^ (i * 37)); }

void fill_guards(unsigned char *user, size_t size)
{
    for (size_t i = 0; i < kGuardBytes; ++i)
        user[-static_cast<ptrdiff_t>(kGuardBytes) + static_cast<ptrdiff_t>(i)] = user[size + i] = guard_byte(i);
    ASAN_POISON_MEMORY_REGION(user - kGuardBytes, kGuardBytes);
    ASAN_POISON_MEMORY_REGION(user + size, kGuardBytes);
}

// Stops the run if a guard zone of the allocation at `user` was written.
// `when` says at which point the check ran (what wrote it ran before).
void check_guard(const unsigned char *user, size_t size, const char *when)
{
    ASAN_UNPOISON_MEMORY_REGION(user - kGuardBytes, kGuardBytes);
    ASAN_UNPOISON_MEMORY_REGION(user + size, kGuardBytes);
    long first_bad = 0, bad = 0;
    for (size_t i = 0; i < kGuardBytes; ++i) {
        if (user[size + i] != guard_byte(i) && bad++ == 0) first_bad = static_cast<long>(size + i);
        if (user[static_cast<ptrdiff_t>(i) - static_cast<ptrdiff_t>(kGuardBytes)] != guard_byte(i) && bad++ == 0)
            first_bad = static_cast<long>(i) - static_cast<long>(kGuardBytes);
    }
    if (bad == 0) {
        ASAN_POISON_MEMORY_REGION(user - kGuardBytes, kGuardBytes);
        ASAN_POISON_MEMORY_REGION(user + size, kGuardBytes);
        return;
    }
    std::fprintf(stderr,
                 "cuda_cpu: FAULT: guard zone of the device allocation at %p (%zu bytes) overwritten: %ld byte(s) "
                 "changed, the first at offset %ld (%s its %s), found at %s; an out-of-bounds write (on a GPU: "
                 "silent corruption of a neighbouring buffer, or an illegal address)\n",
                 static_cast<const void *>(user), size, bad, first_bad, first_bad < 0 ? "before" : "past",
                 first_bad < 0 ? "start" : "end", when);
    std::fflush(stderr);
    std::abort();
}

// Every live allocation's guards. Called with rt().m held.
void check_all_guards(const runtime_state &s, const char *when)
{
    // The map is keyed by address: the cast gives back the pointer cudaMalloc returned.
    for (const auto &a : s.allocations)
        check_guard(reinterpret_cast<const unsigned char *>(a.first), a.second, // NOLINT(performance-no-int-to-ptr)
                    when);
}

bool is_device(const runtime_state &s, const void *p, size_t n)
{
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = s.allocations.upper_bound(a);
    if (it == s.allocations.begin()) return false;
    --it;
    return a >= it->first && a - it->first <= it->second && n <= it->second - (a - it->first);
}

bool legacy(cudaStream_t s) { return s == nullptr || s == cudaStreamLegacy; }

// Called with rt().m held.
const device_profile &profile(const runtime_state &s) { return kProfiles[s.profile]; }

bool known_stream(const runtime_state &s, cudaStream_t stream)
{
    return legacy(stream) || stream == cudaStreamPerThread || s.streams.count(stream) != 0;
}

// A global- or thread-local-mode capture is in progress somewhere.
CUstream_st *active_capture(const runtime_state &s)
{
    for (CUstream_st *st : s.streams)
        if (st->capturing && st->mode != cudaStreamCaptureModeRelaxed) return st;
    return nullptr;
}

// What a GPU forbids while a stream is being captured: the call fails and
// the capture is invalidated.
bool forbidden_during_capture(runtime_state &s, const char *call)
{
    CUstream_st *st = active_capture(s);
    if (st == nullptr) return false;
    for (CUstream_st *c : s.streams)
        if (c->capturing) c->invalidated = true;
    note("%s while a stream is being captured: not permitted, the capture is invalidated", call);
    return true;
}

// Work for `stream`: run now, or record it into the graph being captured.
// Called with the lock held; `lk` is released before running.
cudaError_t issue(runtime_state &s, std::unique_lock<std::mutex> &lk, cudaStream_t stream, const char *call,
                  std::function<void()> work)
{
    if (!known_stream(s, stream)) return cudaErrorInvalidResourceHandle;
    if (!legacy(stream) && stream != cudaStreamPerThread && stream->capturing) {
        if (!stream->invalidated) stream->graph->ops.push_back(std::move(work));
        return cudaSuccess;
    }
    if (legacy(stream) && forbidden_during_capture(s, call)) return cudaErrorStreamCaptureImplicit;
    lk.unlock();
    work();
    return cudaSuccess;
}

const char *kind_name(cudaMemcpyKind kind)
{
    switch (kind) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    case cudaMemcpyDefault: return "Default";
    }
    return "?";
}

cudaError_t memcpy_common(void *dst, const void *src, size_t count, cudaMemcpyKind kind, cudaStream_t stream, bool sync,
                          const char *call)
{
    runtime_state &s = rt();
    std::unique_lock<std::mutex> lk(s.m);
    if (inject(s, CC_CPU_EVENT_COPY, call)) return cudaErrorInvalidValue;
    if (count == 0) return cudaSuccess;
    if (dst == nullptr || src == nullptr) return cudaErrorInvalidValue;
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((dst_dev && !is_device(s, dst, count)) || (src_dev && !is_device(s, src, count))) {
        note("%s(%s) of %zu bytes from %p to %p: the %s is not (wholly) device memory", call, kind_name(kind), count,
             src, dst, dst_dev && !is_device(s, dst, count) ? "destination" : "source");
        return cudaErrorInvalidValue;
    }
    const auto d = reinterpret_cast<uintptr_t>(dst), sr = reinterpret_cast<uintptr_t>(src);
    if (d < sr + count && sr < d + count) {
        note("%s of %zu bytes: source and destination overlap", call, count);
        return cudaErrorInvalidValue;
    }
    if (sync && forbidden_during_capture(s, call)) return cudaErrorStreamCaptureUnsupported;
    return issue(s, lk, stream, call, [dst, src, count] { std::memcpy(dst, src, count); });
}

cudaError_t memset_common(void *dst, int value, size_t count, cudaStream_t stream, bool sync, const char *call)
{
    runtime_state &s = rt();
    std::unique_lock<std::mutex> lk(s.m);
    if (inject(s, CC_CPU_EVENT_COPY, call)) return cudaErrorInvalidValue;
    if (count == 0) return cudaSuccess;
    if (!is_device(s, dst, count)) {
        note("%s of %zu bytes at %p: not (wholly) device memory", call, count, dst);
        return cudaErrorInvalidValue;
    }
    if (sync && forbidden_during_capture(s, call)) return cudaErrorStreamCaptureUnsupported;
    return issue(s, lk, stream, call, [dst, value, count] { std::memset(dst, value, count); });
}

cudaError_t synchronize(const char *call)
{
    runtime_state &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (forbidden_during_capture(s, call)) return cudaErrorStreamCaptureUnsupported;
    check_all_guards(s, call);
    return cudaSuccess; // all work has run when it was issued
}

// A launch a GPU would refuse: say why, count it, return the GPU's error.
// NOLINTNEXTLINE(cert-dcl50-cpp): printf-style, so that the compiler checks every message's arguments
__attribute__((format(printf, 4, 5))) cudaError_t refuse(runtime_state &s, cudaError_t err, const std::string &name,
                                                         const char *fmt, ...)
{
    ++s.refused;
    char why[512];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(why, sizeof why, fmt, args);
    va_end(args);
    std::fprintf(stderr, "cuda_cpu: launch of %s refused (%s): %s\n", name.c_str(), cudaGetErrorName(err), why);
    return result(err);
}

template <typename T>
cudaError_t destroy_handle(std::set<T *> &set, T *h)
{
    if (set.erase(h) == 0) return cudaErrorInvalidResourceHandle;
    delete h;
    return cudaSuccess;
}

} // namespace

// NOLINTNEXTLINE(cert-dcl50-cpp): printf-style, so that the compiler checks every message's arguments
void note(const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    std::fprintf(stderr, "cuda_cpu: ");
    std::vfprintf(stderr, fmt, args);
    std::fprintf(stderr, "\n");
    va_end(args);
}

bool inject_alloc_failure(const char *what)
{
    runtime_state &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    return inject(s, CC_CPU_EVENT_ALLOC, what);
}

void handle_created()
{
    const std::lock_guard<std::mutex> lk(rt().m);
    ++rt().other_handles;
}

bool is_device_range(const void *p, size_t bytes)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return is_device(rt(), p, bytes);
}

void check_guards(const char *when)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    check_all_guards(rt(), when);
}

void handle_destroyed()
{
    const std::lock_guard<std::mutex> lk(rt().m);
    --rt().other_handles;
}

std::vector<std::pair<unsigned char *, size_t>> device_regions()
{
    const std::lock_guard<std::mutex> lk(rt().m);
    std::vector<std::pair<unsigned char *, size_t>> out;
    out.reserve(rt().allocations.size());
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the map keeps allocations by address
    for (const auto &a : rt().allocations) out.emplace_back(reinterpret_cast<unsigned char *>(a.first), a.second);
    return out;
}

cudaError_t submit_launch(const launch_desc &desc, std::function<void()> body, const void *const *pointers,
                          int pointer_count)
{
    runtime_state &s = rt();
    std::unique_lock<std::mutex> lk(s.m);
    kernel_info *k = find_kernel(desc.kernel);
    const std::string name = k != nullptr ? k->name : name_of(desc.kernel);
    if (inject(s, CC_CPU_EVENT_LAUNCH, "launch " + name)) return result(cudaErrorLaunchOutOfResources);
    if (!known_stream(s, desc.stream))
        return refuse(s, cudaErrorInvalidResourceHandle, name, "unknown stream %p", static_cast<void *>(desc.stream));
    if (k == nullptr)
        return refuse(s, cudaErrorInvalidDeviceFunction, name,
                      "the kernel at %p is not in nvcc's PTX of the kernel sources (%s); the layer takes its "
                      "__launch_bounds__ and shared memory from there",
                      desc.kernel, ptx_files());
    const dim3 g = desc.grid, b = desc.block;
    const unsigned long long threads = 1ull * b.x * b.y * b.z;
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
        return refuse(s, cudaErrorInvalidConfiguration, name,
                      "grid (%u,%u,%u): each dimension must be >= 1, x <= 2^31-1, "
                      "y and z <= 65535",
                      g.x, g.y, g.z);
    if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024)
        return refuse(s, cudaErrorInvalidConfiguration, name,
                      "block (%u,%u,%u): at most (1024,1024,64) and 1024 threads, each dimension >= 1", b.x, b.y, b.z);
    if (threads > k->max_threads)
        return refuse(s, cudaErrorLaunchOutOfResources, name,
                      "block of %llu threads, the kernel is compiled for at most %u "
                      "(__launch_bounds__)",
                      threads, k->max_threads);
    // An opt-in granted under an earlier profile stays (a test switches
    // cards in one process); the card's own limit is checked here.
    const size_t dyn_limit =
        k->max_dynamic_smem >= 0 ? static_cast<size_t>(k->max_dynamic_smem) : kSmemDefault - k->static_smem;
    const size_t optin = profile(s).smem_optin;
    if (desc.smem > dyn_limit || k->static_smem + desc.smem > optin)
        return refuse(s, cudaErrorInvalidValue, name,
                      "%zu bytes of dynamic shared memory with %zu static: the kernel may use %zu dynamic (48 KiB in "
                      "all unless cudaFuncSetAttribute(MaxDynamicSharedMemorySize) raised it; static plus dynamic at "
                      "most %zu bytes on the %s)",
                      desc.smem, k->static_smem, dyn_limit, optin, profile(s).name);
    for (int i = 0; i < pointer_count; ++i)
        if (pointers[i] != nullptr && !is_device(s, pointers[i], 0)) {
            std::fprintf(stderr,
                         "cuda_cpu: FAULT: launch of %s: pointer argument %d (%p) is not device memory (a GPU would "
                         "fault on the first access)\n",
                         name.c_str(), i, pointers[i]);
            std::fflush(stderr);
            std::abort();
        }
    ++k->launches;
    if (s.validate_only) return cudaSuccess;
    const launch_desc copy = desc;
    const cudaError_t err =
        issue(s, lk, desc.stream, "a kernel launch on the legacy stream", [copy, name, body = std::move(body)] {
            run_grid(copy, name.c_str(), body);
            check_guards(("the end of a grid of " + name).c_str());
        });
    return result(err);
}

bool enqueue(CUstream_st *stream, const char *call, std::function<void()> work)
{
    runtime_state &s = rt();
    std::unique_lock<std::mutex> lk(s.m);
    return result(issue(s, lk, stream, call, std::move(work))) == cudaSuccess;
}

} // namespace cc_cpu

using cc_cpu::result;
using cc_cpu::rt;

// The CUDA runtime's entry points, defined with this file's parameter names
// rather than the toolkit headers' own.
// NOLINTBEGIN(readability-inconsistent-declaration-parameter-name)

// --- device ----------------------------------------------------------------------------------------
// Devices the emulated runtime reports (cc_cpu_set_device_count), and the
// current device, per host thread as in CUDA: a thread starts on device 0.
static int g_device_count = 1; // under rt().m
static thread_local int t_current_device = 0;

static int device_count()
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return g_device_count;
}

extern "C" void cc_cpu_set_device_count(int n)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    g_device_count = n < 1 ? 1 : n;
}

extern "C" cudaError_t cudaGetDeviceCount(int *count)
{
    if (count == nullptr) return result(cudaErrorInvalidValue);
    *count = device_count();
    return cudaSuccess;
}

// The emulated runtime is the toolkit's headers' version; so is its "driver".
extern "C" cudaError_t cudaRuntimeGetVersion(int *version)
{
    if (version == nullptr) return result(cudaErrorInvalidValue);
    *version = CUDART_VERSION;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDriverGetVersion(int *version)
{
    if (version == nullptr) return result(cudaErrorInvalidValue);
    *version = CUDART_VERSION;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDevice(int *device)
{
    if (device == nullptr) return result(cudaErrorInvalidValue);
    *device = t_current_device;
    return cudaSuccess;
}

extern "C" cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= device_count()) return result(cudaErrorInvalidDevice);
    t_current_device = device;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device)
{
    if (prop == nullptr) return result(cudaErrorInvalidValue);
    if (device != 0) return result(cudaErrorInvalidDevice);
    cc_cpu::device_profile p;
    {
        const std::lock_guard<std::mutex> lk(rt().m);
        p = cc_cpu::profile(rt());
    }
    std::memset(prop, 0, sizeof *prop);
    std::snprintf(prop->name, sizeof prop->name, "cuda_cpu (CPU emulation of an %s)", p.name);
    prop->totalGlobalMem = p.global_mem;
    prop->sharedMemPerBlock = cc_cpu::kSmemDefault;
    prop->sharedMemPerBlockOptin = p.smem_optin;
    prop->sharedMemPerMultiprocessor = p.smem_per_sm;
    prop->reservedSharedMemPerBlock = 1024;
    prop->regsPerBlock = 65536;
    prop->regsPerMultiprocessor = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff;
    prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
    prop->totalConstMem = 65536;
    prop->major = p.major;
    prop->minor = p.minor;
    prop->multiProcessorCount = p.sm_count;
    prop->maxThreadsPerMultiProcessor = p.threads_per_sm;
    prop->maxBlocksPerMultiProcessor = p.blocks_per_sm;
    prop->l2CacheSize = p.l2_bytes;
    prop->memoryBusWidth = p.bus_width;
    prop->concurrentKernels = 1;
    prop->unifiedAddressing = 1;
    prop->asyncEngineCount = 3;
    prop->cooperativeLaunch = 1;
    prop->memoryPoolsSupported = 1;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceSynchronize(void) { return result(cc_cpu::synchronize("cudaDeviceSynchronize")); }

extern "C" cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    if (free_bytes != nullptr) *free_bytes = size_t(64) << 30;
    if (total_bytes != nullptr) *total_bytes = size_t(80) << 30;
    return cudaSuccess;
}

// --- errors -----------------------------------------------------------------------------------------
extern "C" cudaError_t cudaGetLastError(void)
{
    const cudaError_t e = cc_cpu::t_last_error;
    cc_cpu::t_last_error = cudaSuccess;
    return e;
}

extern "C" cudaError_t cudaPeekAtLastError(void) { return cc_cpu::t_last_error; }

namespace {
struct error_text {
    cudaError_t code;
    const char *name, *text;
};
const error_text kErrors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorInvalidDeviceFunction, "cudaErrorInvalidDeviceFunction", "invalid device function"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources", "too many resources requested for launch"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorMisalignedAddress, "cudaErrorMisalignedAddress", "misaligned address"},
    {cudaErrorIllegalState, "cudaErrorIllegalState", "the operation is not permitted in the current state"},
    {cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
     "operation not permitted when stream is capturing"},
    {cudaErrorStreamCaptureInvalidated, "cudaErrorStreamCaptureInvalidated",
     "operation failed due to a previous error during capture"},
    {cudaErrorStreamCaptureImplicit, "cudaErrorStreamCaptureImplicit",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};
const error_text *find_error(cudaError_t e)
{
    for (const error_text &t : kErrors)
        if (t.code == e) return &t;
    return nullptr;
}
} // namespace

extern "C" const char *cudaGetErrorName(cudaError_t error)
{
    const error_text *t = find_error(error);
    return t != nullptr ? t->name : "cudaErrorUnrecognized";
}

extern "C" const char *cudaGetErrorString(cudaError_t error)
{
    const error_text *t = find_error(error);
    return t != nullptr ? t->text : "unrecognized error code";
}

// --- memory -----------------------------------------------------------------------------------------
extern "C" cudaError_t cudaMalloc(void **ptr, size_t size)
{
    if (ptr == nullptr) return result(cudaErrorInvalidValue);
    auto &s = rt();
    std::unique_lock<std::mutex> lk(s.m);
    if (cc_cpu::inject(s, CC_CPU_EVENT_ALLOC, "cudaMalloc(" + std::to_string(size) + ")"))
        return result(cudaErrorMemoryAllocation);
    if (cc_cpu::forbidden_during_capture(s, "cudaMalloc")) return result(cudaErrorStreamCaptureUnsupported);
    if (size == 0) {
        *ptr = nullptr;
        return cudaSuccess;
    }
    void *block = nullptr;
    if (size > SIZE_MAX - 2 * cc_cpu::kGuardBytes || posix_memalign(&block, 256, size + 2 * cc_cpu::kGuardBytes) != 0)
        return result(cudaErrorMemoryAllocation);
    unsigned char *p = static_cast<unsigned char *>(block) + cc_cpu::kGuardBytes;
    std::memset(p, 0xff, size); // unwritten device memory reads as NaN
    cc_cpu::fill_guards(p, size);
    s.allocations[reinterpret_cast<uintptr_t>(p)] = size;
    *ptr = p;
    return cudaSuccess;
}

extern "C" cudaError_t cudaFree(void *ptr)
{
    if (ptr == nullptr) return cudaSuccess;
    auto &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (cc_cpu::forbidden_during_capture(s, "cudaFree")) return result(cudaErrorStreamCaptureUnsupported);
    const auto it = s.allocations.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == s.allocations.end()) {
        cc_cpu::note("cudaFree(%p): not a pointer cudaMalloc returned", ptr);
        return result(cudaErrorInvalidValue);
    }
    auto *p = static_cast<unsigned char *>(ptr);
    cc_cpu::check_guard(p, it->second, "its cudaFree");
    ASAN_UNPOISON_MEMORY_REGION(p - cc_cpu::kGuardBytes, it->second + 2 * cc_cpu::kGuardBytes);
    s.allocations.erase(it);
    std::free(p - cc_cpu::kGuardBytes);
    return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind)
{
    return result(cc_cpu::memcpy_common(dst, src, count, kind, nullptr, true, "cudaMemcpy"));
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind,
                                       cudaStream_t stream)
{
    return result(cc_cpu::memcpy_common(dst, src, count, kind, stream, false, "cudaMemcpyAsync"));
}

extern "C" cudaError_t cudaMemset(void *dst, int value, size_t count)
{
    return result(cc_cpu::memset_common(dst, value, count, nullptr, true, "cudaMemset"));
}

extern "C" cudaError_t cudaMemsetAsync(void *dst, int value, size_t count, cudaStream_t stream)
{
    return result(cc_cpu::memset_common(dst, value, count, stream, false, "cudaMemsetAsync"));
}

// --- streams ----------------------------------------------------------------------------------------
extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags)
{
    if (stream == nullptr) return result(cudaErrorInvalidValue);
    auto &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (cc_cpu::inject(s, CC_CPU_EVENT_ALLOC, "cudaStreamCreate")) return result(cudaErrorMemoryAllocation);
    auto *st = new CUstream_st;
    st->flags = flags;
    s.streams.insert(st);
    *stream = st;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, 0); }

extern "C" cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    auto &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (stream != nullptr && s.streams.count(stream) != 0 && stream->capturing) {
        cc_cpu::note("cudaStreamDestroy of a stream that is being captured");
        return result(cudaErrorIllegalState);
    }
    return result(cc_cpu::destroy_handle(s.streams, stream));
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    {
        const std::lock_guard<std::mutex> lk(rt().m);
        if (!cc_cpu::known_stream(rt(), stream)) return result(cudaErrorInvalidResourceHandle);
    }
    return result(cc_cpu::synchronize("cudaStreamSynchronize"));
}

extern "C" cudaError_t cudaStreamQuery(cudaStream_t stream)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return result(cc_cpu::known_stream(rt(), stream) ? cudaSuccess : cudaErrorInvalidResourceHandle);
}

extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags)
{
    (void)flags;
    const std::lock_guard<std::mutex> lk(rt().m);
    if (!cc_cpu::known_stream(rt(), stream) || rt().events.count(event) == 0)
        return result(cudaErrorInvalidResourceHandle);
    return cudaSuccess; // the event's work has run
}

extern "C" cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode)
{
    auto &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (cc_cpu::legacy(stream) || stream == cudaStreamPerThread) return result(cudaErrorStreamCaptureUnsupported);
    if (s.streams.count(stream) == 0) return result(cudaErrorInvalidResourceHandle);
    if (stream->capturing) return result(cudaErrorIllegalState);
    stream->capturing = true;
    stream->invalidated = false;
    stream->mode = mode;
    stream->graph = new CUgraph_st;
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph)
{
    auto &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (graph == nullptr) return result(cudaErrorInvalidValue);
    if (cc_cpu::legacy(stream) || s.streams.count(stream) == 0) return result(cudaErrorInvalidResourceHandle);
    if (!stream->capturing) return result(cudaErrorIllegalState);
    stream->capturing = false;
    std::unique_ptr<CUgraph_st> g(stream->graph);
    stream->graph = nullptr;
    *graph = nullptr;
    if (stream->invalidated) return result(cudaErrorStreamCaptureInvalidated);
    s.graphs.insert(g.get());
    *graph = g.release();
    return cudaSuccess;
}

extern "C" cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus *status)
{
    auto &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (status == nullptr) return result(cudaErrorInvalidValue);
    *status = cudaStreamCaptureStatusNone;
    if (cc_cpu::legacy(stream)) {
        // Asking about the legacy stream during a global capture is an
        // implicit synchronisation with the capturing stream.
        if (cc_cpu::active_capture(s) != nullptr) {
            cc_cpu::forbidden_during_capture(s, "cudaStreamIsCapturing(legacy stream)");
            return result(cudaErrorStreamCaptureImplicit);
        }
        return cudaSuccess;
    }
    if (stream == cudaStreamPerThread) return cudaSuccess;
    if (s.streams.count(stream) == 0) return result(cudaErrorInvalidResourceHandle);
    if (stream->capturing)
        *status = stream->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
    return cudaSuccess;
}

// --- events -----------------------------------------------------------------------------------------
extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags)
{
    (void)flags;
    if (event == nullptr) return result(cudaErrorInvalidValue);
    auto &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (cc_cpu::inject(s, CC_CPU_EVENT_ALLOC, "cudaEventCreate")) return result(cudaErrorMemoryAllocation);
    auto *e = new CUevent_st;
    s.events.insert(e);
    *event = e;
    return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, 0); }

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return result(cc_cpu::destroy_handle(rt().events, event));
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    auto &s = rt();
    std::unique_lock<std::mutex> lk(s.m);
    if (s.events.count(event) == 0) return result(cudaErrorInvalidResourceHandle);
    return result(cc_cpu::issue(s, lk, stream, "cudaEventRecord on the legacy stream", [event] {
        event->recorded = true;
        event->when = std::chrono::steady_clock::now();
    }));
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    {
        const std::lock_guard<std::mutex> lk(rt().m);
        if (rt().events.count(event) == 0) return result(cudaErrorInvalidResourceHandle);
    }
    return result(cc_cpu::synchronize("cudaEventSynchronize"));
}

extern "C" cudaError_t cudaEventQuery(cudaEvent_t event)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return result(rt().events.count(event) != 0 ? cudaSuccess : cudaErrorInvalidResourceHandle);
}

extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    if (ms == nullptr) return result(cudaErrorInvalidValue);
    if (rt().events.count(start) == 0 || rt().events.count(end) == 0) return result(cudaErrorInvalidResourceHandle);
    if (!start->recorded || !end->recorded) return result(cudaErrorInvalidResourceHandle);
    *ms = std::chrono::duration<float, std::milli>(end->when - start->when).count();
    return cudaSuccess;
}

// --- graphs -----------------------------------------------------------------------------------------
extern "C" cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags)
{
    (void)flags;
    auto &s = rt();
    const std::lock_guard<std::mutex> lk(s.m);
    if (exec == nullptr || s.graphs.count(graph) == 0) return result(cudaErrorInvalidValue);
    if (cc_cpu::inject(s, CC_CPU_EVENT_ALLOC, "cudaGraphInstantiate")) return result(cudaErrorMemoryAllocation);
    auto *e = new CUgraphExec_st;
    e->ops = graph->ops;
    s.execs.insert(e);
    *exec = e;
    return cudaSuccess;
}

extern "C" cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream)
{
    auto &s = rt();
    std::unique_lock<std::mutex> lk(s.m);
    if (s.execs.count(exec) == 0) return result(cudaErrorInvalidResourceHandle);
    const std::vector<std::function<void()>> ops = exec->ops;
    return result(cc_cpu::issue(s, lk, stream, "cudaGraphLaunch on the legacy stream", [ops] {
        for (const auto &op : ops) op();
    }));
}

extern "C" cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return result(cc_cpu::destroy_handle(rt().execs, exec));
}

extern "C" cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return result(cc_cpu::destroy_handle(rt().graphs, graph));
}

// --- kernel attributes ----------------------------------------------------------------------------------
extern "C" cudaError_t cudaFuncSetAttribute(const void *func, cudaFuncAttribute attr, int value)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    cc_cpu::kernel_info *k = cc_cpu::find_kernel(func);
    if (k == nullptr) return result(cudaErrorInvalidDeviceFunction);
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        // As on a GPU: the kernel's static shared memory counts against the opt-in.
        if (value < 0 || static_cast<size_t>(value) + k->static_smem > cc_cpu::profile(rt()).smem_optin)
            return result(cudaErrorInvalidValue);
        k->max_dynamic_smem = value;
    }
    return cudaSuccess;
}

extern "C" cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, const void *func)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    const cc_cpu::kernel_info *k = cc_cpu::find_kernel(func);
    if (attr == nullptr) return result(cudaErrorInvalidValue);
    if (k == nullptr) return result(cudaErrorInvalidDeviceFunction);
    std::memset(attr, 0, sizeof *attr);
    attr->maxThreadsPerBlock = static_cast<int>(k->max_threads);
    attr->sharedSizeBytes = k->static_smem;
    attr->maxDynamicSharedSizeBytes =
        k->max_dynamic_smem >= 0 ? k->max_dynamic_smem : static_cast<int>(cc_cpu::kSmemDefault - k->static_smem);
    attr->ptxVersion = attr->binaryVersion = 10 * cc_cpu::profile(rt()).major + cc_cpu::profile(rt()).minor;
    return cudaSuccess;
}

// NOLINTEND(readability-inconsistent-declaration-parameter-name)

// --- test hooks (hooks.h) ------------------------------------------------------------------------------
extern "C" long long cc_cpu_launch_count(const char *part)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    long long n = 0;
    for (const cc_cpu::kernel_info *k : cc_cpu::all_kernels())
        if (k->name.find(part) != std::string::npos) n += k->launches;
    return n;
}

extern "C" int cc_cpu_report_unlaunched(const char *source)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    int missing = 0, total = 0;
    for (const cc_cpu::kernel_info *k : cc_cpu::all_kernels()) {
        if (k->source != source) continue;
        ++total;
        if (k->launches > 0) continue;
        std::printf("  never launched: %s\n", k->name.c_str());
        ++missing;
    }
    if (total == 0) {
        std::printf("  no kernel of %s.cu in the PTX files (%s)\n", source, cc_cpu::ptx_files());
        return 1;
    }
    std::printf("%s.cu: %d of %d kernel instances launched\n", source, total - missing, total);
    return missing;
}

extern "C" long long cc_cpu_refused_launches(void)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return rt().refused;
}

extern "C" void cc_cpu_fail_event(long long k)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    rt().fail_at = k;
    rt().events_seen = 0;
    rt().failed = CC_CPU_EVENT_NONE;
    rt().failed_what.clear();
}

extern "C" long long cc_cpu_events(void)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return rt().events_seen;
}

extern "C" cc_cpu_event cc_cpu_failed_event(char *what, size_t what_size)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    if (what != nullptr && what_size > 0) std::snprintf(what, what_size, "%s", rt().failed_what.c_str());
    return rt().failed;
}

extern "C" size_t cc_cpu_live_allocations(void)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return rt().allocations.size();
}

extern "C" size_t cc_cpu_live_handles(void)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    return rt().streams.size() + rt().events.size() + rt().graphs.size() + rt().execs.size() + rt().other_handles;
}

extern "C" int cc_cpu_set_device_profile(cc_cpu_device_profile which)
{
    if (which < 0 || which >= CC_CPU_DEVICE_PROFILE_COUNT) return -1;
    const std::lock_guard<std::mutex> lk(rt().m);
    rt().profile = which;
    return 0;
}

extern "C" const char *cc_cpu_device_profile_name(cc_cpu_device_profile which)
{
    return which >= 0 && which < CC_CPU_DEVICE_PROFILE_COUNT ? cc_cpu::kProfiles[which].name : "unknown";
}

extern "C" void cc_cpu_set_launch_validate_only(int on)
{
    const std::lock_guard<std::mutex> lk(rt().m);
    rt().validate_only = on != 0;
}
