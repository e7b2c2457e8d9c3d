/* Without a GPU: the CPU reference path (condconv_forward_cpu: plain C,
 * double accumulation, written for obviousness) on a small layer, with its
 * wall-clock time and the cost model. These are CPU numbers; they say
 * nothing about the GPU algorithms. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static void print_cost(const condconv_cost *c)
{
    printf("    cost model: conv %.2f MMAC, aggregation %.3f MMAC, routing FC %.4f MMAC + pool %.3f M adds, "
           "epilogue %.3f M ops; params %.3f M (experts %.3f M); min bytes %.2f MB, with per-sample kernels "
           "materialised %.2f MB\n",
           (double)c->conv_macs / 1e6, (double)c->aggregation_macs / 1e6, (double)c->routing_macs / 1e6,
           (double)c->routing_adds / 1e6, (double)c->epilogue_ops / 1e6, (double)c->params / 1e6,
           (double)c->expert_params / 1e6, (double)c->min_bytes / 1e6, (double)c->materialized_bytes / 1e6);
}

static int cpu_row(bench_report *report, condconv_context_t ctx, const bench_layer *l, int batch, int experts,
                   double max_seconds, int *unstable)
{
    const int has_bias = strcmp(report->epilogue, "none") != 0;
    const condconv_activation act = strcmp(report->epilogue, "bias-act") == 0 ? l->act : CONDCONV_ACTIVATION_NONE;
    const condconv_routing routing = strcmp(report->routing, "external") == 0  ? CONDCONV_ROUTING_EXTERNAL
                                     : strcmp(report->routing, "softmax") == 0 ? CONDCONV_ROUTING_SOFTMAX
                                                                               : CONDCONV_ROUTING_SIGMOID;
    bench_row row;
    bench_row_init(&row, l, batch, experts, CONDCONV_MATH_F32, "cpu_reference");
    snprintf(row.algo_run, sizeof row.algo_run, "cpu_reference");
    condconv_layer_desc_t desc = NULL;
    condconv_layer_t layer = NULL;
    bench_params params;
    memset(&params, 0, sizeof params);
    float *x = NULL, *y = NULL, *alpha = NULL;
    double *times = NULL;
    condconv_cost cost;
    const condconv_layout layout = strcmp(report->layout, "nhwc") == 0 ? CONDCONV_LAYOUT_NHWC : CONDCONV_LAYOUT_NCHW;
    condconv_status st = bench_make_desc(l, experts, has_bias, routing, act, &desc);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_layer_desc_set_format(desc, report->dtype_id, layout);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_cost_model(desc, batch, l->h, l->w, &cost);
    if (st != CONDCONV_STATUS_SUCCESS) {
        snprintf(row.note, sizeof row.note, "%s", condconv_last_error());
        goto done;
    }
    if (bench_params_make(l, experts, has_bias, routing != CONDCONV_ROUTING_EXTERNAL, &params) != 0) {
        snprintf(row.note, sizeof row.note, "out of host memory");
        goto done;
    }
    bench_params_to_dtype(&params, l, experts, has_bias, report->dtype_id);
    const condconv_params view = bench_params_view(&params);
    st = condconv_layer_create(ctx, desc, &view, &layer);
    if (st != CONDCONV_STATUS_SUCCESS) {
        snprintf(row.note, sizeof row.note, "%s", condconv_last_error());
        goto done;
    }
    const size_t x_n = (size_t)batch * (size_t)l->cin * (size_t)l->h * (size_t)l->w;
    const size_t y_n = (size_t)batch * (size_t)l->cout * (size_t)cost.out_h * (size_t)cost.out_w;
    x = malloc(sizeof(float) * x_n);
    y = malloc(sizeof(float) * y_n);
    alpha = malloc(sizeof(float) * (size_t)batch * (size_t)experts);
    /* Enough runs of a small layer to judge the spread (bench_stats_stability), within max_seconds. */
    enum { MAX_REPS = 15 };
    times = malloc(sizeof(double) * MAX_REPS);
    if (x == NULL || y == NULL || alpha == NULL || times == NULL) {
        snprintf(row.note, sizeof row.note, "out of host memory");
        goto done;
    }
    uint32_t state = 12345u;
    bench_fill_uniform(x, x_n, -1.0f, 1.0f, &state);
    (void)condconv_convert(CONDCONV_DTYPE_F32, x, report->dtype_id, x, x_n); /* in place, narrowing */
    bench_fill_uniform(alpha, (size_t)batch * (size_t)experts, 0.0f, 1.0f, &state);
    const float *routing_in = routing == CONDCONV_ROUTING_EXTERNAL ? alpha : NULL;
    /* One untimed forward, then up to MAX_REPS timed ones within max_seconds. */
    int reps = 0;
    double spent = 0.0;
    for (int r = 0; r < MAX_REPS + 1; ++r) {
        const double t0 = bench_now_us();
        st = condconv_forward_cpu(layer, batch, l->h, l->w, x, y, routing_in, NULL);
        const double t1 = bench_now_us();
        if (st != CONDCONV_STATUS_SUCCESS) {
            snprintf(row.note, sizeof row.note, "%s", condconv_last_error());
            goto done;
        }
        spent += (t1 - t0) * 1e-6;
        if (r > 0) times[reps++] = t1 - t0;
        if (spent > max_seconds && reps >= 1) break;
    }
    bench_stats_from(times, reps, &row.plain);
    row.macs = cost.conv_macs + cost.aggregation_macs + cost.routing_macs;
    row.bytes = cost.min_bytes;
    row.ok = 1;
    snprintf(row.status, sizeof row.status, "ok");
    char verdict[128];
    if (bench_stats_stability(&row.plain, verdict, sizeof verdict) == 1) ++*unstable;
    snprintf(row.note, sizeof row.note, "CPU reference, %.2f GMAC/s, median of %d; %s",
             (double)row.macs / (row.plain.median * 1e3), reps, verdict);
done:
    bench_report_add(report, &row);
    if (row.ok) print_cost(&cost);
    free(x);
    free(y);
    free(alpha);
    free(times);
    bench_params_free(&params);
    (void)condconv_layer_destroy(layer);
    (void)condconv_layer_desc_destroy(desc);
    return row.ok ? 0 : -1;
}

int bench_run_cpu(bench_report *report, const bench_cpu_options *o)
{
    const bench_layer_list *layers = o->layers;
    condconv_context_t ctx = NULL;
    if (condconv_context_create(&ctx, CONDCONV_DEVICE_CPU) != CONDCONV_STATUS_SUCCESS) {
        fprintf(stderr, "condconv-bench: %s\n", condconv_last_error());
        return -1;
    }
    int failures = 0, unstable = 0;
    for (int i = 0; i < layers->count; ++i)
        for (int b = 0; b < o->batch_count; ++b) {
            bench_print_group_header(&layers->items[i], o->batches[b],
                                     bench_prec_name(report->dtype_id, CONDCONV_MATH_F32), report->layout,
                                     report->epilogue);
            for (int e = 0; e < o->expert_count; ++e)
                if (cpu_row(report, ctx, &layers->items[i], o->batches[b], o->experts[e], o->max_seconds, &unstable) !=
                    0)
                    ++failures;
        }
    if (unstable)
        printf("\n%d row(s) UNSTABLE: their p10-p90 band exceeds %.0f%% of the median (another process shared the "
               "CPU?); their medians are not comparable\n",
               unstable, 100.0 * BENCH_UNSTABLE_BAND);
    (void)condconv_context_destroy(ctx);
    return failures ? -1 : 0;
}
