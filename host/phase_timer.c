/* The thread-local phase timer behind CC_PHASE_BEGIN / CC_PHASE_END. */
#include "phase_timer.h"

#include <stddef.h>

_Thread_local cc_phase_timer *cc_phase_timer_current = NULL;

void cc_phase_timer_install(cc_phase_timer *timer) { cc_phase_timer_current = timer; }

void cc_phase_record(cc_phase_timer *timer, cc_phase p, int end, cudaStream_t stream)
{
    if ((int)p < 0 || p >= CC_PHASE_COUNT) return;
    const cudaError_t err = cudaEventRecord(end ? timer->end[p] : timer->begin[p], stream);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* the forward's own error checks must not see it */
        if (timer->error == cudaSuccess) timer->error = err;
        return;
    }
    if (end) timer->seen |= 1U << (unsigned)p;
}
