/* Floors: the least time a forward can take on a card, by the roofline: the
 * bytes it must move over the memory bandwidth, and its floating-point work
 * over the arithmetic rate, whichever is larger. Both come from the
 * library's cost model (condconv_cost_model), so the floor is what a perfect
 * fused kernel would take:
 *   CondConv:  bytes = x + y + experts (+ biases, routing, alpha), each once
 *              flops = 2 * (conv + aggregation + routing FC MACs) + pooling adds
 *   static:    bytes = x + y + |W|,  flops = 2 * conv MACs
 *   per-sample kernels in memory (cudnn_grouped, gemm_batched): CondConv's
 *              bytes + 2 * N * |W| (written, then read back)
 * In a GPU run the rates are the ceilings measured in that run (D2D copy,
 * cuBLAS GEMM); with --floors CARD they are datasheet figures, and the
 * output says these are floors, not measurements. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

/* Datasheet figures (SXM parts, dense, no sparsity). */
static const bench_card cards[] = {
    {"h100", "NVIDIA H100 SXM (datasheet)", 3.35e12, 67e12, 494.7e12, 989.4e12},
    {"h200", "NVIDIA H200 SXM (datasheet)", 4.8e12, 67e12, 494.7e12, 989.4e12},
};

int bench_card_lookup(const char *name, bench_card *card)
{
    for (size_t i = 0; i < sizeof cards / sizeof cards[0]; ++i)
        if (strcmp(cards[i].name, name) == 0) {
            *card = cards[i];
            return 0;
        }
    return -1;
}

double bench_flops_rate(const bench_card *card, condconv_math math, condconv_dtype dtype)
{
    if (dtype != CONDCONV_DTYPE_F32) return card->f16_flops; /* bf16's dense rate is f16's on Hopper */
    return math == CONDCONV_MATH_TF32 ? card->tf32_flops : card->f32_flops;
}

bench_floor bench_floor_of(double bytes, double flops, double bytes_per_s, double flops_per_s)
{
    bench_floor f;
    f.bytes_us = bytes_per_s > 0.0 ? bytes / bytes_per_s * 1e6 : NAN;
    f.flops_us = flops_per_s > 0.0 ? flops / flops_per_s * 1e6 : NAN;
    f.floor_us = f.bytes_us > f.flops_us ? f.bytes_us : f.flops_us;
    f.bound = f.bytes_us > f.flops_us ? "memory" : "compute";
    return f;
}

int bench_condconv_work(const bench_layer *layer, int batch, int experts, condconv_dtype dtype, double *bytes,
                        double *flops, double *materialized_bytes)
{
    condconv_layer_desc_t desc = NULL;
    condconv_cost cost;
    condconv_status st = bench_make_desc(layer, experts, 0, CONDCONV_ROUTING_SIGMOID, CONDCONV_ACTIVATION_NONE, &desc);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_layer_desc_set_format(desc, dtype, CONDCONV_LAYOUT_NCHW);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_cost_model(desc, batch, layer->h, layer->w, &cost);
    (void)condconv_layer_desc_destroy(desc);
    if (st != CONDCONV_STATUS_SUCCESS) return -1;
    *bytes = (double)cost.min_bytes;
    *materialized_bytes = (double)cost.materialized_bytes;
    *flops = 2.0 * ((double)cost.conv_macs + (double)cost.aggregation_macs + (double)cost.routing_macs) +
             (double)cost.routing_adds;
    return 0;
}

void bench_static_work(const bench_layer *layer, int batch, condconv_dtype dtype, double *bytes, double *flops)
{
    const double ho = bench_layer_out(layer, layer->h), wo = bench_layer_out(layer, layer->w);
    const double w_elems = (double)layer->cout * (double)(layer->cin / layer->groups) * layer->k * layer->k;
    const double x = (double)batch * layer->cin * layer->h * layer->w, y = (double)batch * layer->cout * ho * wo;
    *bytes = (double)bench_dtype_size(dtype) * (x + y + w_elems);
    *flops = 2.0 * (double)batch * w_elems * ho * wo;
}

int bench_print_floors(const bench_layer_list *layers, const int *batches, int batch_count, const int *experts,
                       int expert_count, condconv_math math, condconv_dtype dtype, const bench_card *card)
{
    const double rate = bench_flops_rate(card, math, dtype);
    printf("Floors on %s: %.2f TB/s, %.1f TFLOP/s (%s). These are FLOORS computed from datasheet\n"
           "figures and the cost model, not measurements: the least time each forward could take.\n"
           "static = one cuDNN-style convolution (x + y + |W|); condconv = a fused CondConv forward (x + y +\n"
           "E*|W|, conv + mixing + routing work); in-memory = per-sample kernels written and read back\n"
           "(2*N*|W| more bytes), the floor of cudnn_grouped and gemm_batched. bound: what decides the floor.\n\n",
           card->label, card->bytes_per_s / 1e12, rate / 1e12,
           dtype != CONDCONV_DTYPE_F32  ? "half-precision tensor cores"
           : math == CONDCONV_MATH_TF32 ? "TF32"
                                        : "f32 FMA");
    printf("%-16s %5s %3s | %10s | %10s %8s | %10s %7s | %8s\n", "layer", "batch", "E", "static us", "condconv us",
           "bound", "in-mem us", "bound", "x static");
    int failures = 0;
    for (int i = 0; i < layers->count; ++i) {
        const bench_layer *l = &layers->items[i];
        for (int b = 0; b < batch_count; ++b) {
            double s_bytes, s_flops;
            bench_static_work(l, batches[b], dtype, &s_bytes, &s_flops);
            const bench_floor sf = bench_floor_of(s_bytes, s_flops, card->bytes_per_s, rate);
            for (int e = 0; e < expert_count; ++e) {
                double bytes, flops, mat_bytes;
                if (bench_condconv_work(l, batches[b], experts[e], dtype, &bytes, &flops, &mat_bytes) != 0) {
                    printf("%-16s %5d %3d | cost model refused: %s\n", l->name, batches[b], experts[e],
                           condconv_last_error());
                    ++failures;
                    continue;
                }
                const bench_floor cf = bench_floor_of(bytes, flops, card->bytes_per_s, rate);
                const bench_floor mf = bench_floor_of(mat_bytes, flops, card->bytes_per_s, rate);
                printf("%-16s %5d %3d | %10.2f | %10.2f %8s | %10.2f %7s | %8.2f\n", l->name, batches[b], experts[e],
                       sf.floor_us, cf.floor_us, cf.bound, mf.floor_us, mf.bound, cf.floor_us / sf.floor_us);
            }
        }
    }
    return failures;
}
