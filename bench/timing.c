/* Timing with CUDA events on one stream.
 *
 * - Plain launches: each timed loop records an event, enqueues `iters`
 *   forwards back to back, records another and waits. When the host takes
 *   longer to enqueue a forward than the GPU to run it, the GPU idles and
 *   the idle time is in the measurement: this is what a server that does not
 *   use CUDA graphs sees, host call overhead included. The host time of one
 *   call (enqueue only) is reported as well.
 * - CUDA-graph replay: `iters` or more forwards captured into a graph once,
 *   replayed between two events; launch gaps are gone, the GPU time remains.
 * - Phases: one forward at a time with the library's phase timer installed,
 *   so each phase (route, aggregate, gather, conv, epilogue) is bracketed by
 *   its own events; the stream is drained between forwards.
 * Every forward reads its own input set, rotated over enough sets that they
 * exceed twice the L2: no measurement enjoys inputs left in L2 by the
 * previous one. Statistics: median, 10th and 90th percentile over the kept
 * loops, after warm-up loops that are discarded. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

#define MAX_GRAPHS             8
#define MAX_FORWARDS_PER_GRAPH 256
#define MAX_SETS               512

double bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int compare_doubles(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(const double *sorted, int n, double q)
{
    const double pos = q * (double)(n - 1);
    const int lo = (int)floor(pos);
    const int hi = lo + 1 < n ? lo + 1 : lo;
    return sorted[lo] + (pos - (double)lo) * (sorted[hi] - sorted[lo]);
}

void bench_stats_from(double *values, int n, bench_stats *stats)
{
    memset(stats, 0, sizeof *stats);
    if (n <= 0) return;
    qsort(values, (size_t)n, sizeof values[0], compare_doubles);
    stats->n = n;
    stats->min = values[0];
    stats->max = values[n - 1];
    stats->median = percentile(values, n, 0.5);
    stats->p10 = percentile(values, n, 0.1);
    stats->p90 = percentile(values, n, 0.9);
}

int bench_rotation_sets(size_t set_bytes, size_t l2_bytes, size_t max_bytes)
{
    if (set_bytes == 0) return 1;
    size_t want = (2 * l2_bytes + set_bytes - 1) / set_bytes + 1;
    if (want < 2) want = 2;
    if (want > MAX_SETS) want = MAX_SETS;
    while (want > 1 && want * set_bytes > max_bytes) --want;
    return (int)want;
}

/* Fewer reps when a row would overrun its budget; never fewer than 5 (or
 * than asked, if fewer were asked), never more than asked. */
static int budget_reps(int reps, double loop_ms, double max_ms)
{
    if (max_ms <= 0.0 || loop_ms <= 0.0) return reps;
    const double fit = max_ms / loop_ms;
    if (fit >= (double)reps) return reps;
    /* Never more than asked for: the caller's arrays hold `reps` times. */
    if (fit < 5.0) return reps < 5 ? reps : 5;
    return (int)fit;
}

int bench_time_plain(cudaStream_t stream, bench_launch_fn fn, void *arg, int sets, const bench_timing *timing,
                     bench_stats *stats, double *host_us, char *err, size_t err_len)
{
    cudaEvent_t start = NULL, stop = NULL;
    int reps = timing->reps, kept = 0, set = 0, rc = -1, iters = timing->iters;
    double *times = malloc(sizeof(double) * (size_t)(reps > 0 ? reps : 1));
    double host_total = 0.0;
    if (times == NULL) {
        snprintf(err, err_len, "out of host memory");
        return -1;
    }
    CUDA_TRY(cudaEventCreate(&start));
    CUDA_TRY(cudaEventCreate(&stop));
    for (int r = 0; r < timing->warmup + reps; ++r) {
        CUDA_TRY(cudaEventRecord(start, stream));
        const double t0 = bench_now_us();
        for (int j = 0; j < iters; ++j) {
            if (fn(arg, set, err, err_len) != 0) goto fail;
            set = (set + 1) % sets;
        }
        const double t1 = bench_now_us();
        CUDA_TRY(cudaEventRecord(stop, stream));
        CUDA_TRY(cudaEventSynchronize(stop));
        float ms = 0.0f;
        CUDA_TRY(cudaEventElapsedTime(&ms, start, stop));
        if (r >= timing->warmup) {
            times[kept++] = (double)ms * 1000.0 / iters;
            host_total += t1 - t0;
        }
        if (r == 0) {
            /* A forward so slow that even 5 loops overrun the row's budget
             * (cuDNN with thousands of groups can take tens of ms): fewer
             * forwards per loop, then fewer loops. */
            const double per_forward = (double)ms / iters;
            if (timing->max_row_ms > 0.0 && 5.0 * (double)ms > timing->max_row_ms && iters > 1) {
                const int fit = (int)(timing->max_row_ms / (5.0 * per_forward));
                iters = fit < 1 ? 1 : (fit < iters ? fit : iters);
            }
            reps = budget_reps(reps, per_forward * iters, timing->max_row_ms);
        }
    }
    bench_stats_from(times, kept, stats);
    *host_us = kept > 0 ? host_total / ((double)kept * iters) : NAN;
    rc = 0;
fail:
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    free(times);
    return rc;
}

int bench_time_graph(cudaStream_t stream, bench_launch_fn fn, void *arg, int sets, const bench_timing *timing,
                     bench_stats *stats, char *err, size_t err_len)
{
    cudaGraphExec_t execs[MAX_GRAPHS] = {0};
    cudaEvent_t start = NULL, stop = NULL;
    int graphs = 0, reps = timing->reps, kept = 0, rc = -1;
    /* Enough forwards per graph, and graphs, that the replays walk over all sets. */
    int per_graph = timing->iters;
    if (per_graph < (sets + MAX_GRAPHS - 1) / MAX_GRAPHS) per_graph = (sets + MAX_GRAPHS - 1) / MAX_GRAPHS;
    if (per_graph > MAX_FORWARDS_PER_GRAPH) per_graph = MAX_FORWARDS_PER_GRAPH;
    int want = (sets + per_graph - 1) / per_graph;
    if (want < 1) want = 1;
    if (want > MAX_GRAPHS) want = MAX_GRAPHS;
    double *times = malloc(sizeof(double) * (size_t)(reps > 0 ? reps : 1));
    if (times == NULL) {
        snprintf(err, err_len, "out of host memory");
        return -1;
    }
    for (; graphs < want; ++graphs) {
        cudaGraph_t graph = NULL;
        CUDA_TRY(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        int failed = 0;
        for (int j = 0; j < per_graph && !failed; ++j) failed = fn(arg, (graphs * per_graph + j) % sets, err, err_len);
        const cudaError_t end = cudaStreamEndCapture(stream, &graph);
        if (failed || end != cudaSuccess) {
            if (!failed) snprintf(err, err_len, "cudaStreamEndCapture: %s", cudaGetErrorString(end));
            if (graph) (void)cudaGraphDestroy(graph);
            (void)cudaGetLastError();
            goto fail;
        }
        const cudaError_t inst = cudaGraphInstantiate(&execs[graphs], graph, 0);
        (void)cudaGraphDestroy(graph);
        CUDA_TRY(inst);
    }
    CUDA_TRY(cudaEventCreate(&start));
    CUDA_TRY(cudaEventCreate(&stop));
    for (int g = 0; g < graphs; ++g) CUDA_TRY(cudaGraphLaunch(execs[g], stream)); /* upload, first-launch costs */
    for (int r = 0; r < timing->warmup + reps; ++r) {
        CUDA_TRY(cudaEventRecord(start, stream));
        CUDA_TRY(cudaGraphLaunch(execs[r % graphs], stream));
        CUDA_TRY(cudaEventRecord(stop, stream));
        CUDA_TRY(cudaEventSynchronize(stop));
        float ms = 0.0f;
        CUDA_TRY(cudaEventElapsedTime(&ms, start, stop));
        if (r == 0) reps = budget_reps(reps, (double)ms, timing->max_row_ms);
        if (r >= timing->warmup) times[kept++] = (double)ms * 1000.0 / per_graph;
    }
    bench_stats_from(times, kept, stats);
    rc = 0;
fail:
    if (rc != 0) (void)cudaStreamSynchronize(stream);
    for (int g = 0; g < graphs; ++g)
        if (execs[g]) (void)cudaGraphExecDestroy(execs[g]);
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    free(times);
    return rc;
}

int bench_phase_timer_create(cc_phase_timer *timer)
{
    memset(timer, 0, sizeof *timer);
    for (int p = 0; p < CC_PHASE_COUNT; ++p)
        if (cudaEventCreate(&timer->begin[p]) != cudaSuccess || cudaEventCreate(&timer->end[p]) != cudaSuccess) {
            bench_phase_timer_destroy(timer);
            return -1;
        }
    return 0;
}

void bench_phase_timer_destroy(cc_phase_timer *timer)
{
    for (int p = 0; p < CC_PHASE_COUNT; ++p) {
        if (timer->begin[p]) (void)cudaEventDestroy(timer->begin[p]);
        if (timer->end[p]) (void)cudaEventDestroy(timer->end[p]);
    }
    memset(timer, 0, sizeof *timer);
}

int bench_time_phases(cudaStream_t stream, bench_launch_fn fn, void *arg, int sets, int reps, cc_phase_timer *timer,
                      double phase_us[CC_PHASE_COUNT], char *err, size_t err_len)
{
    int rc = -1, kept[CC_PHASE_COUNT] = {0};
    for (int p = 0; p < CC_PHASE_COUNT; ++p) phase_us[p] = NAN;
    if (reps <= 0) return 0;
    double *values = malloc(sizeof(double) * (size_t)reps * CC_PHASE_COUNT);
    if (values == NULL) {
        snprintf(err, err_len, "out of host memory");
        return -1;
    }
    cc_phase_timer_install(timer);
    for (int r = 0; r < reps + 1; ++r) { /* the first forward warms up */
        timer->seen = 0;
        timer->error = cudaSuccess;
        if (fn(arg, r % sets, err, err_len) != 0) goto fail;
        CUDA_TRY(cudaStreamSynchronize(stream));
        if (timer->error != cudaSuccess) {
            snprintf(err, err_len, "phase event record: %s", cudaGetErrorString(timer->error));
            goto fail;
        }
        if (r == 0) continue;
        for (int p = 0; p < CC_PHASE_COUNT; ++p) {
            if (!(timer->seen & (1u << (unsigned)p))) continue;
            float ms = 0.0f;
            CUDA_TRY(cudaEventElapsedTime(&ms, timer->begin[p], timer->end[p]));
            values[(size_t)p * (size_t)reps + (size_t)kept[p]++] = (double)ms * 1000.0;
        }
    }
    for (int p = 0; p < CC_PHASE_COUNT; ++p) {
        bench_stats s;
        bench_stats_from(values + (size_t)p * (size_t)reps, kept[p], &s);
        if (s.n > 0) phase_us[p] = s.median;
    }
    rc = 0;
fail:
    cc_phase_timer_install(NULL);
    free(values);
    return rc;
}
