// The CPU execution layer's engine: runs a grid of a kernel compiled as C++.
//
//  - Blocks run one after another (forward or reversed order); the threads of
//    a block are OS threads (a pool sized to the largest block), so
//    __syncthreads is a real barrier and ThreadSanitizer sees the ordering a
//    GPU guarantees, and no more: warp shuffles and votes give no
//    happens-before (their exchange is hidden from TSan), __syncwarp and
//    __syncthreads do. Barrier bookkeeping is under the block's mutex;
//    waiting is on a futex, released by an atomic store (release/acquire for
//    the barriers that order memory, relaxed for those that must not).
//  - Under TSan, tiny grids (at most CC_CPU_ISOLATE_THREADS GPU threads in
//    all, default 128) run each block on fresh threads, with no
//    happens-before from one block to the next except what the kernel's
//    __threadfence() + atomics give, so races between blocks are reported
//    too (see thread_fence). Only tiny ones: TSan (LLVM 14) tells at most
//    256 threads apart, and a block of another grid's threads that takes
//    over an earlier block's thread slot inherits its history, so the race
//    between them is lost.
//  - Shared memory (the static __shared__ section and the launch's dynamic
//    buffer) is filled with NaN before every block; under ASan the bytes
//    past the dynamic size are poisoned.
//  - The store buffer (cc_cpu_set_store_buffer, CC_CPU_STORE_BUFFER=1):
//    what a block stored to global memory and did not publish with
//    __threadfence() is withheld from the blocks after it (the bytes read
//    as NaN) until the grid ends; see store_buffer below.
//  - What a GPU faults on or leaves undefined stops the process with a
//    message naming kernel, block, thread and source line: a barrier reached
//    from different lines, or after threads returned; a deadlock (every live
//    thread waiting); no progress for CC_CPU_WATCHDOG_SECONDS (default 60);
//    warp operations with bad masks; misaligned vector accesses.
#include <linux/futex.h>
#include <pthread.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "grid.h"
#include "runtime.h"

// Every build links a sanitizer runtime (at least UBSan's, for the alignment
// check): __sanitizer_print_stack_trace prints the stack of a fault.

#if CC_CPU_TSAN
// ThreadSanitizer's annotation interface (compiler-rt tsan_interface_ann.cpp).
extern "C" {
void AnnotateIgnoreSyncBegin(const char *file, int line);
void AnnotateIgnoreSyncEnd(const char *file, int line);
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
void AnnotateIgnoreWritesBegin(const char *file, int line);
void AnnotateIgnoreWritesEnd(const char *file, int line);
void AnnotateNewMemory(const char *file, int line, const volatile void *mem, size_t size);
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
// TSan's Java-heap interface, the one way to make TSan forget a range's
// history (AnnotateNewMemory is a no-op): shared memory is per block.
void __tsan_java_init(unsigned long heap_begin, unsigned long heap_size);
void __tsan_java_alloc(unsigned long ptr, unsigned long size);
void __tsan_java_free(unsigned long ptr, unsigned long size);
}
#endif

// Bounds of the shared-memory section: the kernels' static __shared__
// variables (device.h) and the dynamic shared memory arena below.
// NOLINTNEXTLINE(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp): the names the linker gives them
extern "C" char __start_cc_cpu_shared[];
// NOLINTNEXTLINE(bugprone-reserved-identifier,cert-dcl37-c,cert-dcl51-cpp): the names the linker gives them
extern "C" char __stop_cc_cpu_shared[];

namespace {
// Dynamic shared memory, up to the 227 KiB a GPU allows a block, plus room
// for ASan to poison past the launch's size.
constexpr size_t kArenaBytes = 227 * 1024 + 256;
alignas(256) __attribute__((section("cc_cpu_shared"))) unsigned char dynamic_arena[kArenaBytes];
} // namespace

namespace cc_cpu {
namespace {

// --- settings ------------------------------------------------------------------
struct settings {
    std::mutex m;
    unsigned grid_cap = 0;
    bool reversed = false;
    unsigned isolate_max_threads = 128; // see the file comment
    bool store_buffer = false;
    std::chrono::seconds watchdog{60};
    settings()
    {
        if (const char *e = std::getenv("CC_CPU_STORE_BUFFER")) store_buffer = std::strcmp(e, "0") != 0;
        if (const char *e = std::getenv("CC_CPU_ISOLATE_THREADS"))
            isolate_max_threads = static_cast<unsigned>(std::strtoul(e, nullptr, 10));
        if (const char *e = std::getenv("CC_CPU_WATCHDOG_SECONDS"))
            watchdog = std::chrono::seconds(std::strtol(e, nullptr, 10));
        if (const char *e = std::getenv("CC_CPU_BLOCK_ORDER")) reversed = std::strcmp(e, "reverse") == 0;
    }
};
settings &config()
{
    static settings *s = new settings; // never destroyed: worker threads outlive static destructors
    return *s;
}

// --- TSan visibility -------------------------------------------------------------
// Inside a hidden scope, TSan records neither the accesses nor the
// synchronisation: used for the warp exchange (shuffles order no memory on a
// GPU) and the engine's own bookkeeping outside barriers.
class tsan_hidden
{
  public:
    explicit tsan_hidden(bool on) : on_(on && CC_CPU_TSAN)
    {
#if CC_CPU_TSAN
        if (on_) {
            AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
            AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
            AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
        }
#endif
    }
    ~tsan_hidden()
    {
#if CC_CPU_TSAN
        if (on_) {
            AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
            AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
            AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
        }
#endif
    }
    tsan_hidden(const tsan_hidden &) = delete;
    tsan_hidden &operator=(const tsan_hidden &) = delete;

  private:
    [[maybe_unused]] bool on_;
};

// --- state of a running block ------------------------------------------------------
struct position {
    const char *what = "running";
    const char *file = nullptr;
    int line = 0;
};

struct warp_op {
    unsigned mask = 0, arrived = 0;
    warp_kind kind = warp_sync;
    const char *file = nullptr;
    int line = 0;
    size_t size = 0;
    int width = 32;
    std::atomic<uint32_t> gen{0}; // bumped when the operation completes; waiters sleep on it
};

struct warp_state {
    warp_op ops[32]; // operations in progress (arrived != 0), at most one per lane
    unsigned lanes = 0, exited = 0;
    int arg[32] = {};
    unsigned char in[32][kWarpGatherBytes] = {};
    unsigned char out[32][kWarpValueBytes] = {};
    unsigned char gathered[32][kWarpGatherBytes] = {};
};

struct grid_state {
    const launch_desc *desc = nullptr;
    const char *kernel = nullptr;
    const std::function<void()> *body = nullptr;
    unsigned char *dyn = nullptr; // dynamic shared memory (the arena), desc->smem bytes
    bool isolated = false;
    char sync = 0; // under TSan: the end of every block releases here, the end of the grid acquires
    // Isolated grids: every block's threads stay alive (parked) until the
    // grid ends, so that TSan never gives a later block's thread the id, and
    // with it the history, of an earlier block's.
    std::atomic<uint32_t> release{0};
    std::vector<pthread_t> parked;
};

struct block_state {
    std::mutex m;
    const grid_state *grid = nullptr;
    uint3 idx{};
    unsigned nthreads = 0, live = 0, blocked = 0, exited = 0;
    // The __syncthreads in progress.
    unsigned arrived = 0;
    barrier_kind kind = barrier_sync;
    const char *file = nullptr;
    int line = 0;
    std::atomic<uint32_t> gen{0}; // bumped when the barrier completes; waiters sleep on it
    int acc = 0, result = 0;
    std::vector<position> pos;
    std::unique_ptr<warp_state[]> warps;
    std::vector<const void *> observed; // addresses of this block's atomics (TSan fence model)
    std::atomic<uint32_t> finished{0};  // threads of an isolated block that are done
    std::atomic<bool> fenced{false};    // a __threadfence() since the store buffer last published
};

struct thread_ctx {
    block_state *block = nullptr;
    unsigned tid = 0, warp = 0, lane = 0;
    bool release_pending = false; // a __threadfence() was executed: later atomics release
};
thread_local thread_ctx t_self;

// <cuda_pipeline.h>: the running GPU thread's open group and committed
// groups, oldest first. Allocated at the OS thread's first copy (a
// unique_ptr: nothing that can throw at thread start), cleared per GPU thread.
struct pipe_copy {
    void *dst;
    const void *src;
    size_t bytes, zfill;
};
struct pipe_state {
    std::vector<pipe_copy> open;
    std::deque<std::vector<pipe_copy>> groups;
};
thread_local std::unique_ptr<pipe_state> t_pipe;
pipe_state &pipes()
{
    if (!t_pipe) t_pipe = std::make_unique<pipe_state>();
    return *t_pipe;
}

// --- faults --------------------------------------------------------------------------
const char *base_name(const char *path)
{
    if (path == nullptr) return "?";
    const char *slash = std::strrchr(path, '/');
    return slash != nullptr ? slash + 1 : path;
}

[[noreturn]] void fault_message(const block_state *b, const thread_ctx *me, const char *file, int line,
                                const char *message)
{
    std::fprintf(stderr, "cuda_cpu: FAULT: %s\n", message);
    if (b != nullptr) {
        std::fprintf(stderr, "  kernel %s, block (%u,%u,%u) of (%u,%u,%u), %u threads per block\n", b->grid->kernel,
                     b->idx.x, b->idx.y, b->idx.z, b->grid->desc->grid.x, b->grid->desc->grid.y, b->grid->desc->grid.z,
                     b->nthreads);
        if (me != nullptr) std::fprintf(stderr, "  thread %u (warp %u, lane %u)\n", me->tid, me->warp, me->lane);
    }
    if (file != nullptr) std::fprintf(stderr, "  at %s:%d\n", file, line);
    std::fflush(stderr);
    std::abort();
}

// NOLINTNEXTLINE(cert-dcl50-cpp): printf-style, so that the compiler checks every message's arguments
[[noreturn]] __attribute__((format(printf, 4, 5))) void fault_in(const block_state *b, const char *file, int line,
                                                                 const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    fault_message(b, t_self.block == b ? &t_self : nullptr, file, line, message);
}

// Where every thread of the block is, grouped, for deadlock and watchdog reports.
void print_positions(const block_state &b)
{
    std::fprintf(stderr, "cuda_cpu: where the %u threads of the block are:\n", b.nthreads);
    for (unsigned t = 0; t < b.nthreads;) {
        unsigned u = t + 1;
        while (u < b.nthreads && b.pos[u].what == b.pos[t].what && b.pos[u].file == b.pos[t].file &&
               b.pos[u].line == b.pos[t].line)
            ++u;
        if (b.pos[t].file != nullptr)
            std::fprintf(stderr, "  threads %u-%u: %s at %s:%d\n", t, u - 1, b.pos[t].what, base_name(b.pos[t].file),
                         b.pos[t].line);
        else
            std::fprintf(stderr, "  threads %u-%u: %s\n", t, u - 1, b.pos[t].what);
        t = u;
    }
}

[[noreturn]] void deadlock(const block_state &b, const char *why)
{
    print_positions(b);
    fault_in(&b, nullptr, 0, "%s", why);
}

thread_ctx &self(const char *what, const char *file, int line)
{
    if (t_self.block == nullptr) {
        std::fprintf(stderr, "cuda_cpu: FAULT: %s called outside a kernel\n  at %s:%d\n", what, base_name(file), line);
        std::fflush(stderr);
        std::abort();
    }
    return t_self;
}

long futex(std::atomic<uint32_t> &word, int op, uint32_t value, const timespec *timeout)
{
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "a futex word is 32 bits");
    return syscall(SYS_futex, reinterpret_cast<uint32_t *>(&word), op, value, timeout, nullptr, 0);
}

void wake_all(std::atomic<uint32_t> &word) { futex(word, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr); }

// Sleeps until `word` differs from `seen` (loaded with `order`), or the
// watchdog period passes: then returns false.
bool wait_change(std::atomic<uint32_t> &word, uint32_t seen, std::memory_order order)
{
    const auto deadline = std::chrono::steady_clock::now() + config().watchdog;
    for (;;) {
        if (word.load(order) != seen) return true;
        const auto left = deadline - std::chrono::steady_clock::now();
        if (left <= std::chrono::nanoseconds(0)) return false;
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
        const timespec timeout = {static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
        futex(word, FUTEX_WAIT_PRIVATE, seen, &timeout);
    }
}

void wait_position(block_state &b, unsigned tid, const char *what, const char *file, int line)
{
    b.pos[tid].what = what;
    b.pos[tid].file = file;
    b.pos[tid].line = line;
}

// --- the store buffer -----------------------------------------------------------------------
// A GPU gives no order between a block's plain global stores and what other
// blocks see, except through a fence: a last-block hand-off (write partial
// results, __threadfence(), count yourself with an atomic; the block that
// counts last reads everyone's partials) is correct only with the writers'
// fence. Blocks run one after another here, so a later block always saw an
// earlier block's stores, fence or not. In this mode it does not: each
// block starts from a copy of device memory (`visible`); a __threadfence()
// publishes everything the block wrote so far (at the next __syncthreads to
// complete, when no thread of the block is running, or at the block's end);
// at the block's end, bytes that differ from the last published copy are
// withheld: their 4-byte words set to 0xff (NaN) and restored when the grid
// ends (a store of the value already there changes nothing, and shows
// nothing). Bytes that
// atomics touched are never withheld (atomics are coherent on a GPU), nor is
// anything a block reads of its own stores. The granularity is the block: a
// fence by one thread publishes its block-mates' earlier stores too.
class store_buffer
{
  public:
    // Once per grid, before its first block.
    void begin_grid()
    {
        regions_ = device_regions();
        size_t total = 0;
        for (const auto &r : regions_) total += r.second;
        visible_.resize(total);
        withheld_.clear();
        const std::lock_guard<std::mutex> lk(m_);
        atomics_.clear();
    }
    // Before each block, and whenever the block publishes.
    void publish()
    {
        size_t at = 0;
        for (const auto &r : regions_) {
            std::memcpy(visible_.data() + at, r.first, r.second);
            at += r.second;
        }
    }
    // After the block's last thread has finished.
    void end_block()
    {
        std::vector<std::pair<uintptr_t, uintptr_t>> atomics;
        {
            const std::lock_guard<std::mutex> lk(m_);
            atomics = atomics_;
        }
        std::sort(atomics.begin(), atomics.end());
        size_t at = 0;
        for (const auto &r : regions_) {
            unsigned char *mem = r.first;
            const unsigned char *seen = visible_.data() + at;
            at += r.second;
            for (size_t i = 0; i < r.second;) {
                // Whole 64-byte chunks that are unchanged first.
                if (i % 64 == 0 && i + 64 <= r.second && std::memcmp(mem + i, seen + i, 64) == 0) {
                    i += 64;
                    continue;
                }
                if (mem[i] == seen[i] || touched_by_atomic(atomics, reinterpret_cast<uintptr_t>(mem + i))) {
                    ++i;
                    continue;
                }
                size_t j = i + 1;
                while (j < r.second && mem[j] != seen[j] &&
                       !touched_by_atomic(atomics, reinterpret_cast<uintptr_t>(mem + j)))
                    ++j;
                // Whole 4-byte words (allocations are 256-byte aligned), so
                // that a float whose low bytes alone changed reads as NaN too.
                i &= ~size_t(3);
                j = std::min(r.second, (j + 3) & ~size_t(3));
                withheld_.push_back({mem + i, std::vector<unsigned char>(mem + i, mem + j)});
                std::memset(mem + i, 0xff, j - i);
                i = j;
            }
        }
    }
    // After the grid's last block: everything becomes visible.
    void end_grid()
    {
        for (const auto &h : withheld_) std::memcpy(h.at, h.bytes.data(), h.bytes.size());
        withheld_.clear();
        regions_.clear();
    }
    void note_atomic(const void *addr, size_t size)
    {
        const auto a = reinterpret_cast<uintptr_t>(addr);
        const std::lock_guard<std::mutex> lk(m_);
        atomics_.emplace_back(a, a + size);
    }

  private:
    static bool touched_by_atomic(const std::vector<std::pair<uintptr_t, uintptr_t>> &sorted, uintptr_t a)
    {
        // The ranges are small, aligned words: the one that starts at or before a.
        auto it = std::upper_bound(sorted.begin(), sorted.end(), std::make_pair(a, UINTPTR_MAX));
        while (it != sorted.begin()) {
            --it;
            if (a < it->second) return true;
            if (a - it->first >= 16) return false;
        }
        return false;
    }
    struct held {
        unsigned char *at;
        std::vector<unsigned char> bytes;
    };
    std::vector<std::pair<unsigned char *, size_t>> regions_;
    std::vector<unsigned char> visible_;
    std::vector<held> withheld_;
    std::mutex m_; // atomics_: every thread of the block adds to it
    std::vector<std::pair<uintptr_t, uintptr_t>> atomics_;
};

store_buffer &buffer()
{
    static store_buffer *s = new store_buffer; // never destroyed, like the pool
    return *s;
}
std::atomic<bool> g_buffering{false}; // the running grid uses the store buffer

// --- running the threads of a block ---------------------------------------------------------
void thread_exit(block_state &b, thread_ctx &me)
{
    size_t queued = 0;
    if (t_pipe) {
        queued = t_pipe->open.size();
        for (const auto &group : t_pipe->groups) queued += group.size();
    }
    if (queued > 0)
        fault_in(&b, nullptr, 0,
                 "thread %u returned with %zu cp.async copies never waited for (__pipeline_wait_prior): their "
                 "shared-memory destinations are undefined",
                 me.tid, queued);
    std::unique_lock<std::mutex> lk(b.m);
    --b.live;
    ++b.exited;
    wait_position(b, me.tid, "returned", nullptr, 0);
    warp_state &w = b.warps[me.warp];
    const unsigned bit = 1u << me.lane;
    w.exited |= bit;
    if (b.arrived > 0)
        fault_in(&b, nullptr, 0,
                 "thread %u returned while %u thread(s) wait at __syncthreads (%s:%d): the barrier is not reached by "
                 "every thread of the block",
                 me.tid, b.arrived, base_name(b.file), b.line);
    for (const warp_op &op : w.ops)
        if (op.arrived != 0 && (op.mask & bit) != 0)
            fault_in(&b, nullptr, 0, "lane %u returned while lanes 0x%08x wait for it in a warp operation (%s:%d)",
                     me.lane, op.arrived, base_name(op.file), op.line);
    if (b.live > 0 && b.blocked == b.live) deadlock(b, "deadlock: every thread still running waits at a barrier");
}

void run_thread(block_state &b, unsigned tid)
{
    const launch_desc &d = *b.grid->desc;
    if (t_pipe) { // per GPU thread and launch
        t_pipe->open.clear();
        t_pipe->groups.clear();
    }
    t_self.block = &b;
    t_self.tid = tid;
    t_self.warp = tid / 32;
    t_self.lane = tid % 32;
    t_self.release_pending = false;
    t_thread_idx = make_uint3(tid % d.block.x, (tid / d.block.x) % d.block.y, tid / (d.block.x * d.block.y));
    t_block_idx = b.idx;
    t_block_dim = d.block;
    t_grid_dim = d.grid;
    (*b.grid->body)();
    thread_exit(b, t_self);
#if CC_CPU_TSAN
    if (b.grid->isolated) __tsan_release(const_cast<char *>(&b.grid->sync));
#endif
    t_self.block = nullptr;
}

// Stack of a GPU thread: kernels keep little on it, sanitizers add some.
constexpr size_t kStackBytes = size_t(1) << 20;

pthread_attr_t thread_attributes()
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, kStackBytes);
    return attr;
}

// Persistent workers, one per thread of the largest block so far. Each has
// its own futex word, so a block wakes only the workers it needs; the
// launcher waits until all of those have finished before it posts the next.
class worker_pool
{
  public:
    void run_block(block_state &b)
    {
        while (slots_.size() < b.nthreads) spawn();
        block_ = &b;
        done_.store(0, std::memory_order_relaxed);
        for (unsigned t = 0; t < b.nthreads; ++t) {
            slots_[t]->posted.fetch_add(1, std::memory_order_release);
            wake_all(slots_[t]->posted);
        }
        for (;;) {
            const uint32_t done = done_.load(std::memory_order_acquire);
            if (done == b.nthreads) break;
            if (!wait_change(done_, done, std::memory_order_acquire)) {
                const tsan_hidden hidden(true);
                deadlock(b, "watchdog: the block has not finished within CC_CPU_WATCHDOG_SECONDS (a thread spins?)");
            }
        }
        block_ = nullptr;
    }

  private:
    struct alignas(64) slot {
        std::atomic<uint32_t> posted{0}; // bumped for every block this worker runs a thread of
    };
    struct start_arg {
        worker_pool *pool;
        slot *mine;
        unsigned index;
    };
    void spawn()
    {
        const unsigned index = static_cast<unsigned>(slots_.size());
        slots_.push_back(std::make_unique<slot>());
        auto *arg = new start_arg{this, slots_.back().get(), index};
        pthread_attr_t attr = thread_attributes();
        pthread_t t;
        if (pthread_create(&t, &attr, &worker_pool::main, arg) != 0) {
            std::fprintf(stderr, "cuda_cpu: FAULT: cannot create GPU thread %u\n", index);
            std::abort();
        }
        pthread_attr_destroy(&attr);
        pthread_detach(t);
    }
    static void *main(void *p)
    {
        const start_arg arg = *static_cast<start_arg *>(p);
        delete static_cast<start_arg *>(p);
        arg.pool->loop(*arg.mine, arg.index);
        return nullptr;
    }
    [[noreturn]] void loop(slot &mine, unsigned index)
    {
        uint32_t seen = 0;
        for (;;) {
            while (mine.posted.load(std::memory_order_acquire) == seen)
                futex(mine.posted, FUTEX_WAIT_PRIVATE, seen, nullptr);
            ++seen;
            block_state &b = *block_;
            const unsigned n = b.nthreads; // before finishing: the launcher moves on after the last one
            run_thread(b, index);
            if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == n) wake_all(done_);
        }
    }

    std::atomic<uint32_t> done_{0};
    std::vector<std::unique_ptr<slot>> slots_; // grown by the launcher before it posts to the new slots
    block_state *block_ = nullptr;             // written by the launcher only, read after a slot's post
};

worker_pool &pool()
{
    static worker_pool *p = new worker_pool; // never destroyed: its threads never exit
    return *p;
}

#if CC_CPU_TSAN
// Fresh threads for one block; joining them is hidden from TSan, so the next
// block does not inherit this one's writes (see run_grid).
struct isolated_arg {
    block_state *block;
    unsigned tid;
};
void *isolated_main(void *p)
{
    const isolated_arg arg = *static_cast<isolated_arg *>(p);
    delete static_cast<isolated_arg *>(p);
    block_state &b = *arg.block;
    std::atomic<uint32_t> &release = const_cast<grid_state *>(b.grid)->release;
    run_thread(b, arg.tid);
    const tsan_hidden hidden(true); // the launcher learns nothing from this block's threads
    if (b.finished.fetch_add(1, std::memory_order_relaxed) + 1 == b.nthreads) wake_all(b.finished);
    while (release.load(std::memory_order_relaxed) == 0) futex(release, FUTEX_WAIT_PRIVATE, 0, nullptr);
    return nullptr;
}
void run_block_isolated(block_state &b, grid_state &grid)
{
    pthread_attr_t attr = thread_attributes();
    for (unsigned t = 0; t < b.nthreads; ++t) {
        pthread_t thread;
        if (pthread_create(&thread, &attr, isolated_main, new isolated_arg{&b, t}) != 0) {
            std::fprintf(stderr, "cuda_cpu: FAULT: cannot create GPU thread %u\n", t);
            std::abort();
        }
        grid.parked.push_back(thread);
    }
    pthread_attr_destroy(&attr);
    const tsan_hidden hidden(true);
    for (;;) {
        const uint32_t done = b.finished.load(std::memory_order_relaxed);
        if (done == b.nthreads) break;
        if (!wait_change(b.finished, done, std::memory_order_relaxed))
            deadlock(b, "watchdog: the block has not finished within CC_CPU_WATCHDOG_SECONDS (a thread spins?)");
    }
}
// Lets the parked threads of an isolated grid go.
void release_parked(grid_state &grid)
{
    const tsan_hidden hidden(true);
    grid.release.store(1, std::memory_order_relaxed);
    wake_all(grid.release);
    for (pthread_t t : grid.parked) pthread_join(t, nullptr);
}
#endif

std::mutex &grid_mutex()
{
    static std::mutex *m = new std::mutex;
    return *m;
}

#if CC_CPU_TSAN
// Makes TSan forget the accesses to the shared-memory section: it belongs to
// the next block now, whose threads have no happens-before with the last
// one's in an isolated grid.
void tsan_forget_shared()
{
    const auto begin = reinterpret_cast<uintptr_t>(__start_cc_cpu_shared) & ~uintptr_t(7);
    const auto end = (reinterpret_cast<uintptr_t>(__stop_cc_cpu_shared) + 7) & ~uintptr_t(7);
    static bool initialised = false;
    if (!initialised) {
        __tsan_java_init(begin, end - begin);
        initialised = true;
    } else {
        __tsan_java_free(begin, end - begin);
    }
    __tsan_java_alloc(begin, end - begin);
}
#endif

void fill_shared(const grid_state &grid)
{
#if CC_CPU_TSAN
    if (grid.isolated) tsan_forget_shared();
#endif
    // NaN (0xffffffff) everywhere: a read of shared memory this block has not
    // written shows up as NaN in the result.
    // The section holds the kernels' statics and the arena, in some order;
    // addresses as integers, since these are different objects.
    const auto begin = reinterpret_cast<uintptr_t>(__start_cc_cpu_shared);
    const auto end = reinterpret_cast<uintptr_t>(__stop_cc_cpu_shared);
    const auto arena = reinterpret_cast<uintptr_t>(dynamic_arena), arena_end = arena + kArenaBytes;
    std::memset(__start_cc_cpu_shared, 0xff, arena - begin);
    // NOLINTNEXTLINE(performance-no-int-to-ptr): the section past the arena, by address
    std::memset(reinterpret_cast<void *>(arena_end), 0xff, end - arena_end);
    if (grid.dyn != nullptr) std::memset(grid.dyn, 0xff, grid.desc->smem);
}

unsigned popcount(unsigned x) { return static_cast<unsigned>(__builtin_popcount(x)); }

// The lane a shuffle lane reads, as the PTX shfl instruction defines it.
unsigned shuffle_source(warp_kind kind, unsigned lane, int arg, unsigned width)
{
    const unsigned seg = lane & ~(width - 1), in_seg = lane & (width - 1);
    const unsigned d = static_cast<unsigned>(arg);
    switch (kind) {
    case warp_shfl_idx: return seg | (d & (width - 1));
    case warp_shfl_up: return in_seg >= d ? lane - d : lane;
    case warp_shfl_down: return static_cast<unsigned long long>(in_seg) + d < width ? lane + d : lane;
    case warp_shfl_xor: {
        const unsigned src = lane ^ d;
        return src > (lane | (width - 1)) ? lane : src; // later segments read their own value
    }
    default: return lane;
    }
}

void complete_warp_op(block_state &b, warp_state &w, const warp_op &op)
{
    const unsigned mask = op.mask;
    auto as_u32 = [&](unsigned lane) {
        unsigned v = 0;
        std::memcpy(&v, w.in[lane], std::min<size_t>(op.size, sizeof v));
        return v;
    };
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l & 1u) != 0 && std::any_of(w.in[l], w.in[l] + op.size, [](unsigned char c) { return c != 0; }))
            ballot |= 1u << l;
    long long red = 0;
    bool first = true;
    for (unsigned l = 0; l < 32; ++l) {
        if ((mask >> l & 1u) == 0) continue;
        const unsigned u = as_u32(l);
        const int i = static_cast<int>(u);
        switch (op.kind) {
        case warp_reduce_add_u: red = static_cast<unsigned>(red) + u; break;
        case warp_reduce_add_i: red = static_cast<int>(static_cast<unsigned>(red) + u); break;
        case warp_reduce_min_u: red = first ? u : std::min<unsigned>(static_cast<unsigned>(red), u); break;
        case warp_reduce_max_u: red = first ? u : std::max<unsigned>(static_cast<unsigned>(red), u); break;
        case warp_reduce_min_i: red = first ? i : std::min<int>(static_cast<int>(red), i); break;
        case warp_reduce_max_i: red = first ? i : std::max<int>(static_cast<int>(red), i); break;
        case warp_reduce_and: red = first ? u : (static_cast<unsigned>(red) & u); break;
        case warp_reduce_or: red = static_cast<unsigned>(red) | u; break;
        case warp_reduce_xor: red = static_cast<unsigned>(red) ^ u; break;
        default: break;
        }
        first = false;
    }
    for (unsigned l = 0; l < 32; ++l) {
        if ((mask >> l & 1u) == 0) continue;
        unsigned char *out = w.out[l];
        switch (op.kind) {
        case warp_sync: break;
        case warp_shfl_idx:
        case warp_shfl_up:
        case warp_shfl_down:
        case warp_shfl_xor: {
            const unsigned src = shuffle_source(op.kind, l, w.arg[l], static_cast<unsigned>(op.width));
            if ((mask >> src & 1u) == 0)
                fault_in(&b, op.file, op.line,
                         "lane %u's shuffle reads lane %u, which is not in the mask 0x%08x (its value is undefined)", l,
                         src, mask);
            std::memcpy(out, w.in[src], op.size);
            break;
        }
        case warp_ballot: std::memcpy(out, &ballot, sizeof ballot); break;
        case warp_all: {
            const int v = ballot == mask ? 1 : 0;
            std::memcpy(out, &v, sizeof v);
            break;
        }
        case warp_any: {
            const int v = ballot != 0 ? 1 : 0;
            std::memcpy(out, &v, sizeof v);
            break;
        }
        case warp_match_any:
        case warp_match_all: {
            unsigned same = 0;
            for (unsigned k = 0; k < 32; ++k)
                if ((mask >> k & 1u) != 0 && std::memcmp(w.in[k], w.in[l], op.size) == 0) same |= 1u << k;
            const unsigned v = op.kind == warp_match_any ? same : (same == mask ? mask : 0u);
            std::memcpy(out, &v, sizeof v);
            break;
        }
        case warp_gather: break;
        default: {
            const unsigned v = static_cast<unsigned>(red);
            std::memcpy(out, &v, sizeof v);
            break;
        }
        }
    }
    if (op.kind == warp_gather)
        for (unsigned l = 0; l < 32; ++l) std::memcpy(w.gathered[l], w.in[l], op.size);
}

} // namespace

// --- the grid ------------------------------------------------------------------------------
void run_grid(const launch_desc &desc, const char *kernel, const std::function<void()> &body)
{
    const std::lock_guard<std::mutex> one_grid_at_a_time(grid_mutex());
    grid_state grid;
    grid.desc = &desc;
    grid.kernel = kernel;
    grid.body = &body;
    const unsigned nthreads = desc.block.x * desc.block.y * desc.block.z;
    const unsigned long long blocks = 1ull * desc.grid.x * desc.grid.y * desc.grid.z;
    // Dynamic shared memory: the arena's first desc.smem bytes; under ASan the
    // rest of it is poisoned, so an access past the size is reported.
    if (desc.smem > 0) {
        if (desc.smem > kArenaBytes - 256) {
            std::fprintf(stderr, "cuda_cpu: FAULT: %zu bytes of dynamic shared memory\n", desc.smem);
            std::abort();
        }
        grid.dyn = dynamic_arena;
    }
    ASAN_POISON_MEMORY_REGION(dynamic_arena + desc.smem, kArenaBytes - desc.smem);
    bool reversed = false, buffered = false;
    {
        const std::lock_guard<std::mutex> lk(config().m);
        reversed = config().reversed;
#if CC_CPU_TSAN
        grid.isolated = blocks > 1 && blocks * nthreads <= config().isolate_max_threads;
#endif
        buffered = config().store_buffer && blocks > 1 && !grid.isolated;
    }
    if (buffered) {
        const tsan_hidden hidden(true); // the engine's own copies of device memory are no kernel accesses
        buffer().begin_grid();
    }
    g_buffering.store(buffered, std::memory_order_relaxed);
    // CC_CPU_TRACE=1: one line per grid, to see what ran and how.
    static const bool trace = std::getenv("CC_CPU_TRACE") != nullptr;
    if (trace)
        std::fprintf(stderr, "cuda_cpu: run %s grid (%u,%u,%u) block (%u,%u,%u) smem %zu%s%s\n", kernel, desc.grid.x,
                     desc.grid.y, desc.grid.z, desc.block.x, desc.block.y, desc.block.z, desc.smem,
                     reversed ? " reversed" : "",
                     grid.isolated ? " isolated"
                     : buffered    ? " store-buffered"
                                   : "");
    std::deque<block_state> kept; // isolated blocks stay alive until the grid's end (TSan would see their reuse)
    for (unsigned long long k = 0; k < blocks; ++k) {
        const unsigned long long linear = reversed ? blocks - 1 - k : k;
        std::unique_ptr<block_state> owned;
        block_state *b = nullptr;
        if (grid.isolated) {
            b = &kept.emplace_back();
        } else {
            owned = std::make_unique<block_state>();
            b = owned.get();
        }
        b->grid = &grid;
        b->idx = make_uint3(static_cast<unsigned>(linear % desc.grid.x),
                            static_cast<unsigned>(linear / desc.grid.x % desc.grid.y),
                            static_cast<unsigned>(linear / (1ull * desc.grid.x * desc.grid.y)));
        b->nthreads = b->live = nthreads;
        b->pos.assign(nthreads, position());
        const unsigned nwarps = (nthreads + 31) / 32;
        b->warps.reset(new warp_state[nwarps]);
        for (unsigned w = 0; w < nwarps; ++w) {
            const unsigned lanes = std::min(32u, nthreads - 32 * w);
            b->warps[w].lanes = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
        }
        fill_shared(grid);
#if CC_CPU_TSAN
        if (grid.isolated) {
            run_block_isolated(*b, grid);
            continue;
        }
#endif
        if (buffered) {
            const tsan_hidden hidden(true);
            buffer().publish();
        }
        pool().run_block(*b);
        if (buffered) {
            const tsan_hidden hidden(true);
            if (b->fenced.exchange(false)) buffer().publish(); // a fence after the last barrier
            buffer().end_block();
        }
    }
    if (buffered) {
        const tsan_hidden hidden(true);
        buffer().end_grid();
        g_buffering.store(false, std::memory_order_relaxed);
    }
#if CC_CPU_TSAN
    // The kernel boundary: everything the grid did happens before what follows.
    if (grid.isolated) {
        release_parked(grid);
        __tsan_acquire(&grid.sync);
    }
#endif
    ASAN_UNPOISON_MEMORY_REGION(dynamic_arena, kArenaBytes);
}

// --- what device code calls ------------------------------------------------------------------
int block_barrier(barrier_kind kind, int predicate, const char *file, int line)
{
    thread_ctx &me = self("__syncthreads", file, line);
    block_state &b = *me.block;
    std::unique_lock<std::mutex> lk(b.m);
    if (b.arrived == 0) {
        b.kind = kind;
        b.file = file;
        b.line = line;
        b.acc = kind == barrier_and ? 1 : 0;
    } else if (b.file != file || b.line != line || b.kind != kind) {
        fault_in(&b, file, line,
                 "divergent __syncthreads: thread %u reached this barrier while %u thread(s) wait at the one at %s:%d",
                 me.tid, b.arrived, base_name(b.file), b.line);
    }
    ++b.arrived;
    const int p = predicate != 0 ? 1 : 0;
    if (kind == barrier_count) b.acc += p;
    if (kind == barrier_and) b.acc &= p;
    if (kind == barrier_or) b.acc |= p;
    if (b.arrived == b.live) {
        if (b.exited > 0)
            fault_in(&b, file, line,
                     "__syncthreads completed without the %u thread(s) of the block that returned: the barrier is not "
                     "reached by every thread of the block",
                     b.exited);
        b.result = b.acc;
        b.arrived = 0;
        b.blocked -= b.live - 1;
        // Every running thread of the block waits here: publish what they
        // stored before a fence (store buffer).
        if (b.fenced.exchange(false, std::memory_order_relaxed) && g_buffering.load(std::memory_order_relaxed)) {
            const tsan_hidden hidden(true);
            buffer().publish();
        }
        const int r = b.result;
        b.gen.fetch_add(1, std::memory_order_release);
        lk.unlock();
        wake_all(b.gen);
        return r;
    }
    const uint32_t gen = b.gen.load(std::memory_order_relaxed);
    // Left as is after the wait: only read when every live thread waits somewhere.
    wait_position(b, me.tid, "__syncthreads", file, line);
    if (++b.blocked == b.live) deadlock(b, "deadlock: every thread still running waits at a barrier");
    lk.unlock();
    if (!wait_change(b.gen, gen, std::memory_order_acquire)) {
        const tsan_hidden hidden(true);
        deadlock(b, "watchdog: a __syncthreads has not completed within CC_CPU_WATCHDOG_SECONDS");
    }
    return b.result; // the next barrier cannot complete before this thread arrives at it
}

void warp_collective(warp_kind kind, unsigned mask, const void *in, size_t size, void *out, int arg, int width,
                     const char *file, int line)
{
    // Only __syncwarp orders memory among the lanes; the other operations'
    // exchange must not look like synchronisation to TSan.
    const tsan_hidden hidden(kind != warp_sync);
    thread_ctx &me = self("a warp operation", file, line);
    block_state &b = *me.block;
    std::unique_lock<std::mutex> lk(b.m);
    warp_state &w = b.warps[me.warp];
    const unsigned bit = 1u << me.lane;
    if (mask == 0) fault_in(&b, file, line, "warp operation with an empty mask");
    if ((mask & bit) == 0)
        fault_in(&b, file, line, "lane %u calls a warp operation whose mask 0x%08x does not include it", me.lane, mask);
    if ((mask & ~w.lanes) != 0)
        fault_in(&b, file, line, "mask 0x%08x names lanes that do not exist (this warp has lanes 0x%08x)", mask,
                 w.lanes);
    if ((mask & w.exited) != 0)
        fault_in(&b, file, line, "mask 0x%08x names lanes 0x%08x that have returned", mask, mask & w.exited);
    if (width < 1 || width > 32 || (width & (width - 1)) != 0)
        fault_in(&b, file, line, "shuffle width %d is not a power of two from 1 to 32", width);
    if (kind == warp_gather && mask != w.lanes)
        fault_in(&b, file, line, "a warp-wide operation (wmma) needs every lane of the warp, mask is 0x%08x", mask);
    const size_t cap = kind == warp_gather ? kWarpGatherBytes : kWarpValueBytes;
    if (size > cap) fault_in(&b, file, line, "warp operation on %zu bytes (at most %zu)", size, cap);
    // The operation in progress with this mask, or a free slot for a new one.
    // On sm_70 and later, lanes of one mask may reach the operation from
    // different call sites, and operations with overlapping masks may be in
    // progress at once (lanes take part in them one after the other).
    warp_op *found = nullptr, *free_slot = nullptr;
    for (warp_op &o : w.ops) {
        if (o.arrived != 0 && o.mask == mask) found = &o;
        if (o.arrived == 0 && free_slot == nullptr) free_slot = &o;
    }
    warp_op &op = found != nullptr ? *found : *free_slot; // at most 32 in progress: each lane waits in one
    if (found == nullptr) {
        op.mask = mask;
        op.kind = kind;
        op.file = file;
        op.line = line;
        op.size = size;
        op.width = width;
    } else if (op.kind != kind || op.size != size || op.width != width) {
        fault_in(&b, file, line,
                 "divergent warp operation: lane %u arrived here with mask 0x%08x while lanes 0x%08x wait in a "
                 "different operation (or width, or type) with that mask at %s:%d",
                 me.lane, mask, op.arrived, base_name(op.file), op.line);
    }
    if (size > 0) std::memcpy(w.in[me.lane], in, size);
    w.arg[me.lane] = arg;
    op.arrived |= bit;
    // __syncwarp orders memory (release/acquire, seen by TSan); the exchange
    // of the others is ordered by fences TSan does not model.
    const std::memory_order release = kind == warp_sync ? std::memory_order_release : std::memory_order_relaxed;
    const std::memory_order acquire = kind == warp_sync ? std::memory_order_acquire : std::memory_order_relaxed;
    if (op.arrived == mask) {
        complete_warp_op(b, w, op);
        op.arrived = 0;
        b.blocked -= popcount(mask) - 1;
        std::atomic_thread_fence(std::memory_order_release);
        op.gen.fetch_add(1, release);
        lk.unlock();
        wake_all(op.gen);
    } else {
        const uint32_t gen = op.gen.load(std::memory_order_relaxed);
        wait_position(b, me.tid, "warp operation", file, line);
        if (++b.blocked == b.live) deadlock(b, "deadlock: every thread still running waits at a barrier");
        lk.unlock();
        if (!wait_change(op.gen, gen, acquire)) {
            const tsan_hidden diagnostics(true);
            deadlock(b, "watchdog: a warp operation has not completed within CC_CPU_WATCHDOG_SECONDS");
        }
        std::atomic_thread_fence(std::memory_order_acquire);
    }
    if (kind == warp_gather) {
        for (unsigned l = 0; l < 32; ++l)
            std::memcpy(static_cast<unsigned char *>(out) + l * size, w.gathered[l], size);
    } else if (out != nullptr && kind != warp_sync) {
        const size_t out_size = kind >= warp_ballot ? sizeof(unsigned) : size;
        std::memcpy(out, w.out[me.lane], out_size);
    }
}

unsigned active_mask()
{
    thread_ctx &me = self("__activemask", nullptr, 0);
    const tsan_hidden hidden(true);
    const std::lock_guard<std::mutex> lk(me.block->m);
    const warp_state &w = me.block->warps[me.warp];
    return w.lanes & ~w.exited;
}

unsigned lane_id() { return self("a warp operation", nullptr, 0).lane; }

void *dynamic_shared_base(size_t align)
{
    thread_ctx &me = self("dynamic shared memory", nullptr, 0);
    unsigned char *p = me.block->grid->dyn;
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % align != 0)
        fault_in(me.block, nullptr, 0, "dynamic shared memory is not %zu-byte aligned", align);
    return p;
}

void check_aligned(const void *p, size_t align, const char *what, const char *file, int line)
{
    if (align > 1 && reinterpret_cast<uintptr_t>(p) % align != 0)
        fault_in(t_self.block, file, line,
                 "misaligned address: %s of %zu-byte aligned data at %p (a GPU raises cudaErrorMisalignedAddress)",
                 what, align, p);
}

void misaligned_vector(const void *p, size_t align, const char *type, const char *file, int line)
{
    __sanitizer_print_stack_trace();
    if (file == nullptr)
        fault_in(t_self.block, nullptr, 0,
                 "misaligned address: %s store or copy at %p, which is not %zu-byte aligned (a GPU raises "
                 "cudaErrorMisalignedAddress; the stack above shows where)",
                 type, p, align);
    fault_in(t_self.block, file, line,
             "misaligned address: %s load at %p, which is not %zu-byte aligned (a GPU raises "
             "cudaErrorMisalignedAddress)",
             type, p, align);
}

void thread_fence()
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (t_self.block != nullptr && g_buffering.load(std::memory_order_relaxed))
        t_self.block->fenced.store(true, std::memory_order_relaxed);
#if CC_CPU_TSAN
    // TSan does not model fences. A GPU's fence after an atomic that observed
    // another block's fence-then-atomic makes that block's earlier writes
    // visible (the threadFenceReduction pattern): acquire every atomic this
    // block has performed; and mark later atomics of this thread as releases.
    if (t_self.block == nullptr) return;
    block_state &b = *t_self.block;
    std::vector<const void *> observed;
    {
        const tsan_hidden hidden(true);
        const std::lock_guard<std::mutex> lk(b.m);
        observed = b.observed;
    }
    for (const void *a : observed) __tsan_acquire(const_cast<void *>(a));
    t_self.release_pending = true;
#endif
}

void atomic_before(const void *addr, size_t size)
{
    if (g_buffering.load(std::memory_order_relaxed)) {
        const tsan_hidden hidden(true);
        buffer().note_atomic(addr, size);
    }
}

void atomic_after(const void *addr)
{
#if CC_CPU_TSAN
    if (t_self.block == nullptr) return;
    // After the access, so that whoever acquires also has the atomic itself
    // ordered before a later plain access to the same word.
    if (t_self.release_pending) __tsan_release(const_cast<void *>(addr));
    block_state &b = *t_self.block;
    const tsan_hidden hidden(true);
    const std::lock_guard<std::mutex> lk(b.m);
    if (std::find(b.observed.begin(), b.observed.end(), addr) == b.observed.end()) b.observed.push_back(addr);
#else
    (void)addr;
#endif
}

void pipeline_copy(void *dst, const void *src, size_t bytes, size_t zfill, const char *file, int line)
{
    thread_ctx &me = self("__pipeline_memcpy_async", file, line);
    if (bytes != 4 && bytes != 8 && bytes != 16)
        fault_in(me.block, file, line, "__pipeline_memcpy_async: size %zu, must be 4, 8 or 16", bytes);
    if (zfill > bytes)
        fault_in(me.block, file, line, "__pipeline_memcpy_async: zero-fill %zu bytes of a %zu-byte copy", zfill, bytes);
    const auto d = reinterpret_cast<uintptr_t>(dst);
    const auto sect = reinterpret_cast<uintptr_t>(__start_cc_cpu_shared);
    const auto sect_end = reinterpret_cast<uintptr_t>(__stop_cc_cpu_shared);
    const auto arena = reinterpret_cast<uintptr_t>(dynamic_arena), arena_end = arena + kArenaBytes;
    const grid_state &g = *me.block->grid;
    const auto dyn = reinterpret_cast<uintptr_t>(g.dyn), dyn_end = dyn + (g.dyn != nullptr ? g.desc->smem : 0);
    const bool in_dyn = g.dyn != nullptr && d >= dyn && d + bytes <= dyn_end;
    const bool in_static = d >= sect && d + bytes <= sect_end && (d + bytes <= arena || d >= arena_end);
    if (!in_dyn && !in_static)
        fault_in(me.block, file, line,
                 "__pipeline_memcpy_async: destination %p (%zu bytes) is not in the block's shared memory", dst, bytes);
    if (d % bytes != 0)
        fault_in(me.block, file, line,
                 "__pipeline_memcpy_async: destination %p is not %zu-byte aligned (a GPU raises "
                 "cudaErrorMisalignedAddress)",
                 dst, bytes);
    if (reinterpret_cast<uintptr_t>(src) % bytes != 0)
        fault_in(me.block, file, line,
                 "__pipeline_memcpy_async: source %p is not %zu-byte aligned (a GPU raises cudaErrorMisalignedAddress)",
                 src, bytes);
    if (bytes - zfill > 0 && !is_device_range(src, bytes - zfill))
        fault_in(me.block, file, line,
                 "__pipeline_memcpy_async: source %p (%zu bytes) is not device memory (a GPU raises "
                 "cudaErrorIllegalAddress)",
                 src, bytes - zfill);
    pipes().open.push_back({dst, src, bytes, zfill});
}

void pipeline_commit()
{
    (void)self("__pipeline_commit", nullptr, 0);
    pipe_state &p = pipes();
    p.groups.push_back(std::move(p.open));
    p.open.clear();
}

void pipeline_wait_prior(size_t prior, const char *file, int line)
{
    (void)self("__pipeline_wait_prior", file, line);
    pipe_state &p = pipes();
    while (p.groups.size() > prior) {
        for (const pipe_copy &c : p.groups.front()) {
            auto *d = static_cast<unsigned char *>(c.dst);
            std::memcpy(d, c.src, c.bytes - c.zfill);
            std::memset(d + (c.bytes - c.zfill), 0, c.zfill);
        }
        p.groups.pop_front();
    }
}

// NOLINTNEXTLINE(cert-dcl50-cpp): printf-style, so that the compiler checks every message's arguments
void fault(const char *file, int line, const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    fault_message(t_self.block, t_self.block != nullptr ? &t_self : nullptr, file, line, message);
}

} // namespace cc_cpu

// --- settings for tests (hooks.h) -------------------------------------------------------------
extern "C" unsigned int cc_cpu_grid_cap(unsigned int cap)
{
    const std::lock_guard<std::mutex> lk(cc_cpu::config().m);
    const unsigned int test_cap = cc_cpu::config().grid_cap;
    return test_cap != 0 && test_cap < cap ? test_cap : cap;
}

extern "C" void cc_cpu_set_grid_cap(unsigned int cap)
{
    const std::lock_guard<std::mutex> lk(cc_cpu::config().m);
    cc_cpu::config().grid_cap = cap;
}

extern "C" void cc_cpu_set_block_order(int reversed)
{
    const std::lock_guard<std::mutex> lk(cc_cpu::config().m);
    cc_cpu::config().reversed = reversed != 0;
}

extern "C" void cc_cpu_set_store_buffer(int on)
{
    const std::lock_guard<std::mutex> lk(cc_cpu::config().m);
    cc_cpu::config().store_buffer = on != 0;
}

extern "C" void cc_cpu_set_isolated_threads(unsigned int max_threads)
{
    const std::lock_guard<std::mutex> lk(cc_cpu::config().m);
    cc_cpu::config().isolate_max_threads = max_threads;
}
