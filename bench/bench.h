/* condconv-bench: shared types of the benchmark program.
 *
 * Sections, one file each:
 *   layers.c    built-in layer sets, shape names, --layer parsing
 *   timing.c    CUDA-event timing: plain launches, CUDA-graph replay, phases;
 *               input sets rotated so the working set exceeds L2
 *   baselines.c the static cuDNN convolution (the yardstick) and the
 *               ceilings measured in the same run (D2D copy, cuBLAS GEMM)
 *   report.c    environment (card, driver, CUDA, cuDNN), table, CSV, JSON
 *   cpu_path.c  the CPU reference path, when there is no GPU
 *   main.c      command line and the sweep
 * The bench links condconv_static, so it sees the library's internal headers
 * (host/phase_timer.h for the per-phase events). */
#ifndef CONDCONV_BENCH_H
#define CONDCONV_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime.h>

#include "condconv.h"
#include "phase_timer.h"

#define BENCH_NAME_LEN 64
#define BENCH_NOTE_LEN 1024
#define BENCH_ERR_LEN  256

/* ------------------------------------------------------------------ layers */

typedef struct bench_layer {
    char name[BENCH_NAME_LEN]; /* pw112x672_14, dw5s2_672_14, c3_256_14 (see bench_layer_set_name) */
    char set[24];              /* effnet-cc-b0, mobilenet-v1, resnet50, issue5, cli */
    char role[64];             /* where it sits in its network, e.g. "stage 6 block 1 depthwise" */
    int cin, cout, k, stride, groups, h, w;
    condconv_activation act; /* its activation in the network (used with --epilogue bias-act) */
} bench_layer;

typedef struct bench_layer_list {
    bench_layer *items;
    int count, capacity;
} bench_layer_list;

/* PyTorch/timm padding: ((stride - 1) + (k - 1)) / 2 on each side. */
int bench_layer_pad(const bench_layer *layer);
int bench_layer_out(const bench_layer *layer, int size);
/* The shape's short name, the same grammar bench/peer_timm.py uses. */
void bench_layer_set_name(bench_layer *layer);
/* Adds a named set (deduplicated by name). 0, or -1 with a message in err. */
int bench_add_set(bench_layer_list *list, const char *set, char *err, size_t err_len);
/* Parses "cin,cout,k,stride,groups,H,W" (W optional: square). 0 or -1. */
int bench_parse_layer(const char *spec, bench_layer *layer, char *err, size_t err_len);
int bench_add_layer(bench_layer_list *list, const bench_layer *layer);
void bench_list_sets(FILE *out);
void bench_layer_list_free(bench_layer_list *list);

/* Random parameters in the library's layout (values do not matter for
 * timing; they are scaled so that outputs stay O(1)). */
typedef struct bench_params {
    float *experts, *expert_bias, *routing_weight, *routing_bias;
} bench_params;
int bench_params_make(const bench_layer *layer, int experts, int has_bias, int owns_routing, bench_params *params);
void bench_params_free(bench_params *params);
condconv_params bench_params_view(const bench_params *params);
/* The layer's descriptor with E experts, f32 NCHW (caller destroys it). */
condconv_status bench_make_desc(const bench_layer *layer, int experts, int has_bias, condconv_routing routing,
                                condconv_activation act, condconv_layer_desc_t *desc);
/* The parameters converted in place to a half dtype (no-op for f32): the
 * arrays keep their float size, the first half of each holds the halves. */
void bench_params_to_dtype(bench_params *params, const bench_layer *layer, int experts, int has_bias,
                           condconv_dtype dtype);
/* Uniform floats in [lo, hi) from a small LCG. */
void bench_fill_uniform(float *p, size_t n, float lo, float hi, uint32_t *state);

/* ------------------------------------------------------------------ timing */

typedef struct bench_stats {
    int n; /* 0: not measured */
    double median, p10, p90, min, max;
} bench_stats;

typedef struct bench_timing {
    int warmup;        /* timed loops run and discarded first */
    int reps;          /* timed loops kept (median and spread over them) */
    int iters;         /* forwards per timed loop (and per captured graph, at least) */
    int phase_reps;    /* forwards timed phase by phase */
    double max_row_ms; /* fewer reps (never below 5) when one row would take longer */
} bench_timing;

/* Enqueues one forward on input set `set`. Returns 0, or -1 with a message in err. */
typedef int (*bench_launch_fn)(void *arg, int set, char *err, size_t err_len);

void bench_stats_from(double *values, int n, bench_stats *stats); /* sorts values */

/* Whether a timing can be trusted (bench/stats.c). A row is UNSTABLE when
 * the band between its 10th and 90th percentiles is wider than
 * BENCH_UNSTABLE_BAND of its median (the table's +-% column shows half the
 * band: above 10 there); with fewer than BENCH_STABLE_MIN_RUNS timed runs its
 * spread is unknown. Returns 1 unstable, 0 stable, -1 unknown, and writes a
 * one-phrase verdict with the numbers into buf. */
#define BENCH_UNSTABLE_BAND   0.20
#define BENCH_STABLE_MIN_RUNS 3
int bench_stats_stability(const bench_stats *stats, char *buf, size_t len);

/* Plain launches: per rep, `iters` forwards back to back between two events,
 * host call overhead included (the GPU waits for a slow host). Also the host
 * time of one call (enqueue only). */
int bench_time_plain(cudaStream_t stream, bench_launch_fn fn, void *arg, int sets, const bench_timing *timing,
                     bench_stats *stats, double *host_us, char *err, size_t err_len);
/* CUDA-graph replay: graphs of >= iters forwards over the rotated sets,
 * captured once, replayed; per-forward GPU time. */
int bench_time_graph(cudaStream_t stream, bench_launch_fn fn, void *arg, int sets, const bench_timing *timing,
                     bench_stats *stats, char *err, size_t err_len);
/* One forward at a time with the phase timer installed: the median GPU time
 * of each phase (NAN where a phase did not run). */
int bench_time_phases(cudaStream_t stream, bench_launch_fn fn, void *arg, int sets, int reps, cc_phase_timer *timer,
                      double phase_us[CC_PHASE_COUNT], char *err, size_t err_len);
int bench_phase_timer_create(cc_phase_timer *timer);
void bench_phase_timer_destroy(cc_phase_timer *timer);
/* How many input sets of set_bytes each to rotate so that they exceed twice
 * the L2, within max_bytes of memory. */
int bench_rotation_sets(size_t set_bytes, size_t l2_bytes, size_t max_bytes);
double bench_now_us(void); /* monotonic clock */

/* --------------------------------------------------------------- baselines */

typedef struct bench_ceilings {
    int measured;
    double copy_gbps;    /* device-to-device copy, bytes read + written per second / 1e9 */
    double sgemm_tflops; /* cuBLAS f32 GEMM, strict FP32 */
    double tf32_tflops;  /* cuBLAS f32 GEMM with TF32 tensor cores */
    double f16_tflops;   /* cuBLAS f16 GEMM, f32 accumulation, tensor cores */
    size_t copy_bytes;
    int gemm_size;
} bench_ceilings;

int bench_measure_ceilings(cudaStream_t stream, size_t free_bytes, bench_ceilings *ceilings, char *err, size_t err_len);
/* Releases the cuDNN handle the static convolutions share. */
void bench_baselines_shutdown(void);

/* The static convolution of the same shape: dense cuDNN conv, batch N, the
 * fastest algorithm cudnnFindConvolutionForwardAlgorithmEx finds (TF32
 * allowed only with math tf32), then, when the row has bias or activation,
 * the library's own bias + activation epilogue kernel (the one the CondConv
 * algorithms run). */
typedef struct bench_static bench_static;
int bench_static_create(bench_static **out, const bench_layer *layer, int batch, condconv_math math,
                        condconv_dtype dtype, condconv_layout layout, int has_bias, condconv_activation act,
                        cudaStream_t stream, char *err, size_t err_len);
void bench_static_destroy(bench_static *s);
/* Binds the rotated input and output sets (x[i], y[i]). */
void bench_static_bind(bench_static *s, float *const *x, float *const *y);
int bench_static_launch(void *arg, int set, char *err, size_t err_len); /* a bench_launch_fn */
/* --backward: also dx and dW of the same convolution, cuDNN's heuristic
 * first choice per direction (strict f32: FMA and direct summation only);
 * bench_static_train_launch then runs forward, backward data and backward
 * filter (dy = the forward's output). 0, or -1 with a message. */
int bench_static_enable_backward(bench_static *s, const bench_layer *layer, condconv_math math, char *err,
                                 size_t err_len);
int bench_static_train_launch(void *arg, int set, char *err, size_t err_len); /* a bench_launch_fn */
const char *bench_static_algo(const bench_static *s);
size_t bench_static_workspace(const bench_static *s);

/* ------------------------------------------------------------------ floors */

typedef struct bench_card {
    const char *name;  /* --floors NAME */
    const char *label; /* printed, says where the figures come from */
    double bytes_per_s, f32_flops, tf32_flops, f16_flops;
} bench_card;

typedef struct bench_floor {
    double bytes_us, flops_us, floor_us; /* floor = the larger */
    const char *bound;                   /* "memory" or "compute" */
} bench_floor;

/* h100, h200: datasheet figures. 0, or -1 for an unknown name. */
int bench_card_lookup(const char *name, bench_card *card);
double bench_flops_rate(const bench_card *card, condconv_math math, condconv_dtype dtype);
bench_floor bench_floor_of(double bytes, double flops, double bytes_per_s, double flops_per_s);
/* A CondConv forward's bytes and flops from the cost model (and the bytes
 * when per-sample kernels go through memory). 0, or -1 (message set). */
int bench_condconv_work(const bench_layer *layer, int batch, int experts, condconv_dtype dtype, double *bytes,
                        double *flops, double *materialized_bytes);
/* The static convolution's: x + y + |W| in the dtype, 2 * conv MACs. */
void bench_static_work(const bench_layer *layer, int batch, condconv_dtype dtype, double *bytes, double *flops);
/* condconv-bench --floors CARD: the table; returns how many rows failed. */
int bench_print_floors(const bench_layer_list *layers, const int *batches, int batch_count, const int *experts,
                       int expert_count, condconv_math math, condconv_dtype dtype, const bench_card *card);

/* ------------------------------------------------------------------ report */

typedef struct bench_env {
    int gpu; /* 0: CPU reference path */
    char device_name[256];
    int cc_major, cc_minor, sm_count;
    size_t l2_bytes, mem_bytes;
    char driver[64];  /* NVML's driver version string when available, else the CUDA driver API version */
    int cuda_driver;  /* cudaDriverGetVersion */
    int cuda_runtime; /* cudaRuntimeGetVersion */
    size_t cudnn;     /* cudnnGetVersion */
    int cublas;       /* cublasGetVersion */
    int condconv;     /* condconv_version */
    char date[32];    /* UTC, ISO 8601 */
    char command[1024];
} bench_env;

typedef struct bench_row {
    const bench_layer *layer;
    int batch, experts; /* experts 0 for the static convolution */
    condconv_math math;
    char method[64];   /* static, auto, cudnn_grouped, gemm_batched, depthwise_fused, mixture, cpu_reference, or a
                          candidate (--candidates): "fused[nhwc coalesced]", "auto+routing[v1 bandwidth]" */
    char algo_run[40]; /* what ran: AUTO's choice, or the cuDNN algorithm of the static conv */
    int ok;            /* 0: n/a (not applicable) or failed; note says why */
    char status[8];    /* ok, n/a, error */
    char note[BENCH_NOTE_LEN];
    bench_stats plain, graph; /* microseconds per forward */
    double host_us;           /* host time of one call, plain launches */
    double phase_us[CC_PHASE_COUNT];
    double static_plain_us, static_graph_us; /* the yardstick of the same layer/batch/math; NAN if none */
    uint64_t macs;                           /* cost model: conv + aggregation + routing FC (static: conv only) */
    uint64_t bytes;                          /* minimal bytes: cost model's min_bytes (static: x + y + |W| [+ bias]) */
    size_t workspace_bytes;
    int sets; /* input sets rotated */
} bench_row;

typedef struct bench_report {
    bench_env env;
    bench_ceilings ceilings;
    const char *epilogue, *routing, *select, *dtype, *layout;
    condconv_dtype dtype_id; /* the run's element type (one per run) */
    bench_row *rows;
    int count, capacity;
    FILE *csv; /* written row by row */
} bench_report;

void bench_env_collect(bench_env *env, int device, int gpu, int argc, char **argv);
void bench_print_env(const bench_report *report);
void bench_print_ceilings(const bench_ceilings *c);
/* Prints the row to stdout (and appends it to the CSV); copies it into the report. */
int bench_report_add(bench_report *report, const bench_row *row);
void bench_print_group_header(const bench_layer *layer, int batch, const char *prec, const char *layout,
                              const char *epilogue);
int bench_csv_open(bench_report *report, const char *path);
void bench_csv_close(bench_report *report);
int bench_json_write(const bench_report *report, const char *path);
void bench_report_free(bench_report *report);
/* fp32 / tf32 / fp16 / bf16, as in bench/anchors: the dtype for half
 * runs, the math mode for f32 runs. */
const char *bench_prec_name(condconv_dtype dtype, condconv_math math);
/* Element size of a dtype in bytes. */
size_t bench_dtype_size(condconv_dtype dtype);
void bench_row_init(bench_row *row, const bench_layer *layer, int batch, int experts, condconv_math math,
                    const char *method);

/* ---------------------------------------------------------------- cpu path */

typedef struct bench_cpu_options {
    const bench_layer_list *layers; /* must outlive the report (rows point into it) */
    const int *batches;
    int batch_count;
    const int *experts;
    int expert_count;
    double max_seconds; /* per layer */
} bench_cpu_options;

int bench_run_cpu(bench_report *report, const bench_cpu_options *opts);

/* Error exits of the bench's CUDA/cuDNN/cuBLAS calls: the message goes to
 * err (err_len bytes, both in scope) and control to the function's `fail:`. */
#define CUDNN_TRY(call)                                                                                                \
    do {                                                                                                               \
        const cudnnStatus_t s_ = (call);                                                                               \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                                                              \
            snprintf(err, err_len, "%s: %s", #call, cudnnGetErrorString(s_));                                          \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)
#define CUDA_TRY(call)                                                                                                 \
    do {                                                                                                               \
        const cudaError_t e_ = (call);                                                                                 \
        if (e_ != cudaSuccess) {                                                                                       \
            snprintf(err, err_len, "%s: %s", #call, cudaGetErrorString(e_));                                           \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)
#define CUBLAS_TRY(call)                                                                                               \
    do {                                                                                                               \
        const cublasStatus_t b_ = (call);                                                                              \
        if (b_ != CUBLAS_STATUS_SUCCESS) {                                                                             \
            snprintf(err, err_len, "%s: cuBLAS status %d", #call, (int)b_);                                            \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

#endif
