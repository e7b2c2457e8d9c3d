/* The bench's verdict on a timing's spread, kept apart from the CUDA timing
 * code so that tests/test_bench_stats.c checks it without a GPU. */
#include <stdio.h>

#include "bench.h"

int bench_stats_stability(const bench_stats *s, char *buf, size_t len)
{
    if (s->n < BENCH_STABLE_MIN_RUNS || !(s->median > 0.0)) {
        snprintf(buf, len, "spread unknown (%d timed run%s)", s->n, s->n == 1 ? "" : "s");
        return -1;
    }
    const double band = (s->p90 - s->p10) / s->median;
    if (band > BENCH_UNSTABLE_BAND) {
        snprintf(buf, len, "UNSTABLE: p10-p90 spans %.0f%% of the median (limit %.0f%%), min %.3g max %.3g us",
                 100.0 * band, 100.0 * BENCH_UNSTABLE_BAND, s->min, s->max);
        return 1;
    }
    snprintf(buf, len, "stable: p10-p90 spans %.0f%% of the median", 100.0 * band);
    return 0;
}
