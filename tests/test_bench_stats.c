/* condconv-bench's verdict on a timing's spread (bench/stats.c): a row whose
 * p10-p90 band exceeds BENCH_UNSTABLE_BAND of its median is UNSTABLE, one
 * with fewer than BENCH_STABLE_MIN_RUNS runs has an unknown spread, and the
 * verdict's text carries the numbers (issue 18 item 10: CPU rows with a
 * +-260% spread carried no warning). */
#include <string.h>

#include "bench.h"
#include "test_util.h"

static int verdict(const double *values, int n, char *buf, size_t len)
{
    double copy[32];
    memcpy(copy, values, sizeof(double) * (size_t)n);
    bench_stats s;
    bench_stats_from(copy, n, &s);
    return bench_stats_stability(&s, buf, len);
}

int main(void)
{
    char buf[160];
    static const double quiet[] = {100.0, 101.0, 99.0, 100.5, 102.0, 99.5, 100.0};
    EXPECT(verdict(quiet, 7, buf, sizeof buf) == 0, "a 3%% band is stable: %s", buf);
    EXPECT(strncmp(buf, "stable: p10-p90 spans ", 22) == 0, "verdict text: %s", buf);

    /* The kind of row the issue saw: one or two runs far off the others. */
    static const double noisy[] = {120.0, 95.0, 600.0, 100.0, 30.0};
    EXPECT(verdict(noisy, 5, buf, sizeof buf) == 1, "a 5x outlier is unstable: %s", buf);
    EXPECT(strstr(buf, "UNSTABLE") != NULL && strstr(buf, "limit 20%") != NULL, "verdict text: %s", buf);

    /* The limit: a band of exactly 20% is still stable, 22% is not. Five
     * runs: p10 and p90 interpolate 40% of the way from min and from max. */
    bench_stats s = {5, 100.0, 90.0, 110.0, 85.0, 115.0};
    EXPECT(bench_stats_stability(&s, buf, sizeof buf) == 0, "band 20%%: %s", buf);
    s.p90 = 112.0;
    EXPECT(bench_stats_stability(&s, buf, sizeof buf) == 1, "band 22%%: %s", buf);

    /* Too few runs to say; nothing measured. */
    static const double two[] = {100.0, 400.0};
    EXPECT(verdict(two, 2, buf, sizeof buf) == -1, "two runs: %s", buf);
    EXPECT(strstr(buf, "unknown (2 timed runs)") != NULL, "verdict text: %s", buf);
    const bench_stats none = {0};
    EXPECT(bench_stats_stability(&none, buf, sizeof buf) == -1, "no runs: %s", buf);
    return tu_finish("test_bench_stats");
}
