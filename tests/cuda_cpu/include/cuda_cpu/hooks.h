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

/* The store buffer (default CC_CPU_STORE_BUFFER from the environment, else
 * off): a block's global stores become visible to the blocks that run
 * after it in the same grid only once the block has published them with
 * __threadfence() (at the fence's next __syncthreads, or the block's end);
 * stores it never published are withheld until the grid ends: until then
 * those bytes read as 0xff (NaN), like memory nobody wrote. What atomics
 * wrote is never withheld. So a last-block hand-off whose writers do not
 * fence before they count themselves reads NaN instead of their partial
 * results, as it may read stale data on a GPU. Blocks run one at a time as
 * usual; every device allocation is compared at each block's end, so keep
 * it to small grids. Not for TSan's isolated grids (TSan checks those). */
void cc_cpu_set_store_buffer(int on);

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

/* The card whose limits the emulated runtime reports (cudaGetDeviceProperties:
 * compute capability, SM count, opt-in shared memory per block, ...) and
 * enforces at launch (static + dynamic shared memory <= the opt-in, and
 * cudaFuncSetAttribute(MaxDynamicSharedMemorySize) + static <= the opt-in,
 * as a GPU does). Figures from NVIDIA's datasheets and tuning guides. */
typedef enum cc_cpu_device_profile {
    CC_CPU_DEVICE_H200 = 0,      /* the default: sm_90, 132 SMs, 227 KiB opt-in shared memory per block */
    CC_CPU_DEVICE_H100_PCIE = 1, /* sm_90, 114 SMs, 227 KiB */
    CC_CPU_DEVICE_A100 = 2,      /* sm_80, 108 SMs, 163 KiB */
    CC_CPU_DEVICE_L40S = 3,      /* sm_89, 142 SMs, 99 KiB, 1536 threads per SM */
    CC_CPU_DEVICE_A10 = 4,       /* sm_86, 72 SMs, 99 KiB, 1536 threads per SM */
    CC_CPU_DEVICE_PROFILE_COUNT = 5
} cc_cpu_device_profile;
/* Switches the card (0), or returns -1 for an unknown profile. Kernel
 * attributes set under the previous card stay; every launch is checked
 * against the current one. */
int cc_cpu_set_device_profile(cc_cpu_device_profile which);
const char *cc_cpu_device_profile_name(cc_cpu_device_profile which);

/* 1: launches are checked (and counted) as usual but not run, so that a
 * test can try every configuration of a large shape; 0 (default): run. */
void cc_cpu_set_launch_validate_only(int on);

#ifdef __cplusplus
}
#endif

#endif
