/* The CPU execution layer's controls for tests (C and C++): grid caps, block
 * order, fault injection, and what ran. Test-only; never part of the library.
 *
 * The layer itself (device.h, the engine and the emulated CUDA runtime) is
 * described in tests/cuda_cpu/README.md. */
#ifndef CC_CPU_HOOKS_H
#define CC_CPU_HOOKS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* min(cap, the cap a test set), used by kernels/common.cuh's cc_grid_1d so
 * that grid-stride loops loop on small shapes. */
unsigned int cc_cpu_grid_cap(unsigned int cap);
/* Lowers every grid cap to `cap` blocks (0: the kernels' own caps). */
void cc_cpu_set_grid_cap(unsigned int cap);

/* Order in which the blocks of a grid run: 0 in index order (x fastest), 1
 * reversed. A GPU promises no order; a kernel that depends on one fails in
 * one of the two. */
void cc_cpu_set_block_order(int reversed);

/* Under ThreadSanitizer: run each block on threads of its own, with no
 * happens-before from one block to the next except what the kernel's own
 * atomics and __threadfence() give (as on a GPU), so that TSan reports races
 * between blocks. Only grids of at most `max_threads` GPU threads in all
 * (default CC_CPU_ISOLATE_THREADS from the environment, else 128): TSan
 * tells at most 256 threads apart (engine.cpp). No effect without TSan. */
void cc_cpu_set_isolated_threads(unsigned int max_threads);

/* Kernels launched (run or captured) so far whose name contains `part`. */
long long cc_cpu_launch_count(const char *part);
/* Prints every kernel of kernels/<source>.cu (as nvcc compiled it) that has
 * not been launched yet; returns how many. */
int cc_cpu_report_unlaunched(const char *source);
/* Launches the layer refused (bad configuration), as a GPU would. */
long long cc_cpu_refused_launches(void);

/* Fault injection: events are device allocations (cudaMalloc, and stream,
 * event and cuDNN/cuBLAS handle creation), copies (cudaMemcpy*, cudaMemset*)
 * and kernel launches. */
typedef enum cc_cpu_event {
    CC_CPU_EVENT_NONE = 0,
    CC_CPU_EVENT_ALLOC = 1, /* fails as out of memory */
    CC_CPU_EVENT_COPY = 2,  /* fails with cudaErrorInvalidValue */
    CC_CPU_EVENT_LAUNCH = 3 /* fails with cudaErrorLaunchOutOfResources */
} cc_cpu_event;

/* Starts counting events from zero; the k-th one from now fails (k >= 1), or
 * none with k = 0. */
void cc_cpu_fail_event(long long k);
/* Events counted since cc_cpu_fail_event. */
long long cc_cpu_events(void);
/* The class of the event that was made to fail (NONE if it has not come yet)
 * and what it was, e.g. "launch (anonymous namespace)::routing_kernel<true>". */
cc_cpu_event cc_cpu_failed_event(char *what, size_t what_size);

/* Number of devices cudaGetDeviceCount reports (default 1, at least 1), so
 * that tests see a multi-GPU machine. cudaSetDevice accepts 0..n-1 and, as in
 * CUDA, the current device is per host thread (each thread starts on 0). All
 * devices share the one emulated memory. */
void cc_cpu_set_device_count(int n);

/* Device allocations (cudaMalloc) not yet freed, and streams, events and
 * cuDNN/cuBLAS handles not yet destroyed. */
size_t cc_cpu_live_allocations(void);
size_t cc_cpu_live_handles(void);

#ifdef __cplusplus
}
#endif

#endif
