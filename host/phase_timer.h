/* Phase boundaries of a forward: the NVTX range that names each phase in
 * nsys and ncu, and, only when a program has installed a phase timer on the
 * calling thread (condconv-bench does; the library never does), a CUDA event
 * recorded on the stream at each boundary so the phase's GPU time can be read
 * with cudaEventElapsedTime.
 *
 * Cost when no timer is installed: one thread-local load and a branch not
 * taken per boundary, next to a kernel launch of microseconds. A timer must
 * not be installed while the stream is being captured into a CUDA graph (the
 * records would become graph nodes). Nothing is printed: the first failing
 * cudaEventRecord is kept in the timer for its owner to read. */
#ifndef CONDCONV_HOST_PHASE_TIMER_H
#define CONDCONV_HOST_PHASE_TIMER_H

#include <cuda_runtime.h>

#include "nvtx.h"

typedef enum cc_phase {
    CC_PHASE_FORWARD = 0, /* condconv.forward: routing + the algorithm */
    CC_PHASE_ROUTE,       /* condconv.route */
    CC_PHASE_AGGREGATE,   /* condconv.aggregate */
    CC_PHASE_GATHER,      /* condconv.gather */
    CC_PHASE_CONV,        /* condconv.conv */
    CC_PHASE_EPILOGUE,    /* condconv.epilogue */
    CC_PHASE_COUNT
} cc_phase;

typedef struct cc_phase_timer {
    /* Created and destroyed by the owner (cudaEventCreate, default flags). */
    cudaEvent_t begin[CC_PHASE_COUNT];
    cudaEvent_t end[CC_PHASE_COUNT];
    unsigned seen;     /* bit p set when phase p ended since the owner cleared it */
    cudaError_t error; /* first failed record, cudaSuccess otherwise */
} cc_phase_timer;

/* The calling thread's timer; NULL (the default) turns the events off. */
extern _Thread_local cc_phase_timer *cc_phase_timer_current;

/* Installs (or with NULL removes) the calling thread's timer. */
void cc_phase_timer_install(cc_phase_timer *timer);

/* Records begin (end == 0) or end of phase p on stream. */
void cc_phase_record(cc_phase_timer *timer, cc_phase p, int end, cudaStream_t stream);

#define CC_PHASE_BEGIN(phase, name, stream)                                                                            \
    do {                                                                                                               \
        CC_NVTX_PUSH(name);                                                                                            \
        if (cc_phase_timer_current != NULL) cc_phase_record(cc_phase_timer_current, (phase), 0, (stream));             \
    } while (0)

#define CC_PHASE_END(phase, stream)                                                                                    \
    do {                                                                                                               \
        if (cc_phase_timer_current != NULL) cc_phase_record(cc_phase_timer_current, (phase), 1, (stream));             \
        CC_NVTX_POP();                                                                                                 \
    } while (0)

#endif
