/* condconv-bench — CondConv layers on the GPU against the static cuDNN
 * convolution of the same shape, in one run, on the same inputs and stream.
 *
 * With no arguments: the expert-count sweep (E = 1, 2, 4, 8, 16, 32) over the
 * CondConv layers of EfficientNet-CondConv-B0 at batch 32, f32, every
 * algorithm forced and AUTO, plus the static convolution. Without a GPU it
 * says so and runs the CPU reference path on a small layer instead.
 * `condconv-bench --help` lists the options; bench/README.md explains the
 * columns and how to profile.
 *
 * Build: part of the CMake build (target condconv-bench), installed with
 * the library. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <nvtx3/nvToolsExt.h>

#include "bench.h"

#define MAX_LIST 32

typedef struct options {
    bench_layer_list layers;
    int user_layers;
    int batches[MAX_LIST], batch_count;
    int experts[MAX_LIST], expert_count;
    int run_static, run_algo[CONDCONV_ALGO_COUNT];
    condconv_math maths[2];
    int math_count;
    condconv_routing routing;
    const char *routing_name;
    int epilogue; /* 0 none, 1 bias, 2 bias-act */
    condconv_algo_select select;
    bench_timing timing;
    int timing_set[5];
    int plain, graph, phases, ceilings;
    int candidates;        /* --candidates: a row per candidate AUTO listed */
    int backward;          /* --backward: each row times forward + backward (a training step's layer) */
    double auto_budget_ms; /* --auto-budget; < 0: the library's default */
    const char *csv, *json;
    int device, cpu, quick, list;
    const char *floors; /* --floors CARD: print the roofline floors, measure nothing */
    condconv_dtype dtype;
    condconv_layout layout;
    /* Options given that only the GPU sweep uses, in the order given: the CPU
     * path names each as ignored, with the reason (gpu_only_note). */
    struct {
        char option[48];
        const char *why;
    } gpu_only[16];
    int gpu_only_count;
} options;

/* Why the CPU reference path ignores an option of the GPU sweep. */
static const char why_backward[] = "the CPU path times condconv_forward_cpu only";
static const char why_algo[] = "the CPU reference path is one algorithm (cpu_reference); the GPU algorithms, AUTO and "
                               "the static cuDNN yardstick need a CUDA device",
                  why_math[] = "the CPU reference accumulates in double; TF32 is a GPU math mode",
                  why_select[] = "AUTO's measure-or-heuristic choice is made among GPU algorithms",
                  why_timing[] = "GPU timing (CUDA events, graphs, phases, ceilings); the CPU path times up to 15 "
                                 "forwards per row within 2 s",
                  why_device[] = "no CUDA device is used on the CPU path",
                  why_quick[] = "it picks the GPU sweep's layers, batches, experts and repeats; the CPU path runs "
                                "one small layer unless --set/--layer choose others";

static void gpu_only_note(options *o, const char *arg, const char *val, const char *why)
{
    for (int i = 0; i < o->gpu_only_count; ++i)
        if (o->gpu_only[i].why == why && strncmp(o->gpu_only[i].option, arg, strlen(arg)) == 0) return;
    if (o->gpu_only_count == (int)(sizeof o->gpu_only / sizeof o->gpu_only[0])) return;
    snprintf(o->gpu_only[o->gpu_only_count].option, sizeof o->gpu_only[0].option, "%s%s%s", arg, val ? " " : "",
             val ? val : "");
    o->gpu_only[o->gpu_only_count++].why = why;
}

static const char *const epilogue_names[3] = {"none", "bias", "bias-act"};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: condconv-bench [options]\n"
            "\n"
            "With no options: EfficientNet-CondConv-B0's CondConv layers at batch 32, experts 1,2,4,8,16,32, f32,\n"
            "every algorithm and AUTO against the static cuDNN convolution. Without a GPU: the CPU reference\n"
            "path on one small layer (or the --set/--layer layers), with its timing and the cost model; GPU-only\n"
            "options given are named as ignored, with the reason.\n"
            "\n"
            "What to run:\n"
            "  --set NAME[,NAME]     layer sets: effnet-cc-b0 (default), mobilenet-v1, resnet50, issue5, all\n"
            "  --layer C,K,k,s,g,H[,W]  one more layer: cin, cout, kernel, stride, groups, input H (and W);\n"
            "                        padding ((s-1)+(k-1))/2 as PyTorch/timm; repeatable\n"
            "  --batch LIST          batch sizes (default 32), e.g. 1,32,128\n"
            "  --experts LIST        expert counts (default 1,2,4,8,16,32)\n"
            "  --algo LIST           static,auto,cudnn_grouped,gemm_batched,depthwise_fused,mixture,fused or all\n"
            "                        (default all)\n"
            "  --math f32|tf32|both  f32: strict FP32 everywhere (default); tf32: cuDNN/cuBLAS may use TF32\n"
            "  --dtype f32|f16|bf16  element type of x, y and the parameters (default f32); the static\n"
            "                        yardstick runs in it too. Half precision: tensor cores, f32 accumulation\n"
            "                        for every algorithm\n"
            "  --layout nchw|nhwc    activation layout (default nchw)\n"
            "  --routing sigmoid|softmax|external   routing function of each layer (default sigmoid: GAP->FC->sigmoid\n"
            "                        inside the forward, as timm's CondConv; external: alpha given, no routing work)\n"
            "  --epilogue none|bias|bias-act  none (default, as timm's CondConv2d): the convolution only; bias: plus\n"
            "                        a per-channel bias; bias-act: plus the layer's activation in its network\n"
            "                        (SiLU/ReLU/none). The static convolution gets the same epilogue.\n"
            "  --select measure|heuristic  how AUTO chooses (default measure, like cudnnFind)\n"
            "  --auto-budget MS      time AUTO may spend on candidates per shape at prepare (0: no bound;\n"
            "                        default the library's, CONDCONV_DEFAULT_AUTO_BUDGET_MS)\n"
            "  --quick               the device check's short sweep: effnet-cc-b0 + issue5 layers, batch 1,32,128,\n"
            "                        E = 8, f32, fewer repeats (explicit options still override)\n"
            "\n");
    fprintf(out, "How to time:\n"
                 "  --warmup N            discarded timed loops first (default 2; quick 1)\n"
                 "  --reps N              timed loops kept: median, p10, p90 (default 15; quick 7)\n"
                 "  --iters N             forwards per timed loop and per CUDA graph (default 20; quick 10)\n"
                 "  --phase-reps N        forwards timed phase by phase (default 10; quick 5)\n"
                 "  --max-row-ms MS       fewer reps (never < 5) when one timing mode of a row would take longer\n"
                 "                        (default 250; quick 100)\n"
                 "  --no-plain, --no-graph, --no-phases, --no-ceilings   skip a measurement\n"
                 "  --backward            time forward + backward (every gradient) instead of the forward: condconv's\n"
                 "                        forward (the --algo algorithm) then condconv_backward (AUTO), against the\n"
                 "                        static convolution's forward, backward data and backward filter (cuDNN's\n"
                 "                        heuristic choices, as PyTorch's default); no phase timings\n"
                 "  --candidates          after each AUTO row, a row per candidate AUTO timed at prepare (kernel\n"
                 "                        variants no GPU has ruled on, issue 19), each forced by its name, and a row\n"
                 "                        per routing and aggregation kernel variant under AUTO's algorithm\n"
                 "\n"
                 "Output:\n"
                 "  --csv FILE            one row per measurement, with card, driver, CUDA and cuDNN versions\n"
                 "  --json FILE           the same, with the environment and the ceilings\n"
                 "  --device N            CUDA device (default 0)\n"
                 "  --cpu                 the CPU reference path even when a GPU is present\n"
                 "  --list                the built-in layer sets\n"
                 "  --floors h100|h200    no GPU needed: the roofline floor of each layer, batch and E (default\n"
                 "                        batches 1,32,128, E 1,8,32) from the cost model and the card's datasheet;\n"
                 "                        floors, not measurements\n"
                 "  -h, --help\n"
                 "\n"
                 "Exit status: 0 when every row ran or is n/a (not applicable, or does not fit in memory), 1 when a\n"
                 "row failed, 2 for a bad command line.\n");
}

static int parse_int_list(const char *s, int *out, int max, int lo, int hi, const char *what)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        const long v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < lo || v > hi || (*end != ',' && *end != '\0') || n == max) {
            fprintf(stderr, "condconv-bench: %s '%s': expected up to %d comma-separated integers in [%d, %d]\n", what,
                    s, max, lo, hi);
            return -1;
        }
        out[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n == 0) {
        fprintf(stderr, "condconv-bench: %s: empty list\n", what);
        return -1;
    }
    return n;
}

static int parse_positive(const char *s, const char *what, int *out)
{
    int v[1];
    if (parse_int_list(s, v, 1, 0, 1000000, what) != 1) return -1;
    *out = v[0];
    return 0;
}

static int parse_algos(const char *s, options *o)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    o->run_static = 0;
    memset(o->run_algo, 0, sizeof o->run_algo);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "all") == 0) {
            o->run_static = 1;
            for (int a = 0; a < CONDCONV_ALGO_COUNT; ++a) o->run_algo[a] = 1;
            continue;
        }
        if (strcmp(tok, "static") == 0) {
            o->run_static = 1;
            continue;
        }
        int found = 0;
        for (int a = 0; a < CONDCONV_ALGO_COUNT; ++a)
            if (strcmp(tok, condconv_algo_name((condconv_algo)a)) == 0) {
                o->run_algo[a] = found = 1;
            }
        if (!found) {
            fprintf(stderr,
                    "condconv-bench: --algo: unknown '%s' (static, auto, cudnn_grouped, gemm_batched, "
                    "depthwise_fused, mixture, fused, all)\n",
                    tok);
            return -1;
        }
    }
    return 0;
}

static int parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->run_static = 1;
    for (int a = 0; a < CONDCONV_ALGO_COUNT; ++a) o->run_algo[a] = 1;
    o->maths[0] = CONDCONV_MATH_F32;
    o->math_count = 1;
    o->routing = CONDCONV_ROUTING_SIGMOID;
    o->routing_name = "sigmoid";
    o->select = CONDCONV_SELECT_MEASURE;
    o->auto_budget_ms = -1.0;
    o->plain = o->graph = o->phases = o->ceilings = 1;
    int given_sets = 0;
    char err[BENCH_ERR_LEN];
    for (int i = 1; i < argc; ++i) {
        const char *arg = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE()                                                                                                   \
    do {                                                                                                               \
        if (val == NULL) {                                                                                             \
            fprintf(stderr, "condconv-bench: %s needs a value\n", arg);                                                \
            return -1;                                                                                                 \
        }                                                                                                              \
        ++i;                                                                                                           \
    } while (0)
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(arg, "--set") == 0) {
            NEED_VALUE();
            char buf[256];
            snprintf(buf, sizeof buf, "%s", val);
            for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
                if (bench_add_set(&o->layers, tok, err, sizeof err) != 0) {
                    fprintf(stderr, "condconv-bench: %s\n", err);
                    return -1;
                }
            given_sets = 1;
        } else if (strcmp(arg, "--layer") == 0) {
            NEED_VALUE();
            bench_layer l;
            if (bench_parse_layer(val, &l, err, sizeof err) != 0 || bench_add_layer(&o->layers, &l) != 0) {
                fprintf(stderr, "condconv-bench: %s\n", err);
                return -1;
            }
            given_sets = 1;
        } else if (strcmp(arg, "--batch") == 0) {
            NEED_VALUE();
            if ((o->batch_count = parse_int_list(val, o->batches, MAX_LIST, 1, 65536, "--batch")) < 0) return -1;
        } else if (strcmp(arg, "--experts") == 0) {
            NEED_VALUE();
            if ((o->expert_count = parse_int_list(val, o->experts, MAX_LIST, 1, CONDCONV_MAX_EXPERTS, "--experts")) < 0)
                return -1;
        } else if (strcmp(arg, "--algo") == 0) {
            NEED_VALUE();
            if (parse_algos(val, o) != 0) return -1;
            gpu_only_note(o, arg, val, why_algo);
        } else if (strcmp(arg, "--math") == 0) {
            NEED_VALUE();
            if (strcmp(val, "f32") != 0 && strcmp(val, "fp32") != 0) gpu_only_note(o, arg, val, why_math);
            if (strcmp(val, "f32") == 0 || strcmp(val, "fp32") == 0) {
                o->maths[0] = CONDCONV_MATH_F32;
                o->math_count = 1;
            } else if (strcmp(val, "tf32") == 0) {
                o->maths[0] = CONDCONV_MATH_TF32;
                o->math_count = 1;
            } else if (strcmp(val, "both") == 0) {
                o->maths[0] = CONDCONV_MATH_F32;
                o->maths[1] = CONDCONV_MATH_TF32;
                o->math_count = 2;
            } else {
                fprintf(stderr, "condconv-bench: --math %s: expected f32, tf32 or both\n", val);
                return -1;
            }
        } else if (strcmp(arg, "--dtype") == 0) {
            NEED_VALUE();
            if (strcmp(val, "f32") == 0)
                o->dtype = CONDCONV_DTYPE_F32;
            else if (strcmp(val, "f16") == 0)
                o->dtype = CONDCONV_DTYPE_F16;
            else if (strcmp(val, "bf16") == 0)
                o->dtype = CONDCONV_DTYPE_BF16;
            else {
                fprintf(stderr, "condconv-bench: --dtype %s: expected f32, f16 or bf16\n", val);
                return -1;
            }
        } else if (strcmp(arg, "--layout") == 0) {
            NEED_VALUE();
            if (strcmp(val, "nchw") == 0 || strcmp(val, "NCHW") == 0)
                o->layout = CONDCONV_LAYOUT_NCHW;
            else if (strcmp(val, "nhwc") == 0 || strcmp(val, "NHWC") == 0)
                o->layout = CONDCONV_LAYOUT_NHWC;
            else {
                fprintf(stderr, "condconv-bench: --layout %s: expected nchw or nhwc\n", val);
                return -1;
            }
        } else if (strcmp(arg, "--routing") == 0) {
            NEED_VALUE();
            if (strcmp(val, "sigmoid") == 0)
                o->routing = CONDCONV_ROUTING_SIGMOID;
            else if (strcmp(val, "softmax") == 0)
                o->routing = CONDCONV_ROUTING_SOFTMAX;
            else if (strcmp(val, "external") == 0)
                o->routing = CONDCONV_ROUTING_EXTERNAL;
            else {
                fprintf(stderr, "condconv-bench: --routing %s: expected sigmoid, softmax or external\n", val);
                return -1;
            }
            o->routing_name = val;
        } else if (strcmp(arg, "--epilogue") == 0) {
            NEED_VALUE();
            int found = -1;
            for (int e = 0; e < 3; ++e)
                if (strcmp(val, epilogue_names[e]) == 0) found = e;
            if (found < 0) {
                fprintf(stderr, "condconv-bench: --epilogue %s: expected none, bias or bias-act\n", val);
                return -1;
            }
            o->epilogue = found;
        } else if (strcmp(arg, "--select") == 0) {
            NEED_VALUE();
            gpu_only_note(o, arg, val, why_select);
            if (strcmp(val, "measure") == 0)
                o->select = CONDCONV_SELECT_MEASURE;
            else if (strcmp(val, "heuristic") == 0)
                o->select = CONDCONV_SELECT_HEURISTIC;
            else {
                fprintf(stderr, "condconv-bench: --select %s: expected measure or heuristic\n", val);
                return -1;
            }
        } else if (strcmp(arg, "--warmup") == 0) {
            NEED_VALUE();
            gpu_only_note(o, arg, val, why_timing);
            if (parse_positive(val, arg, &o->timing.warmup) != 0) return -1;
            o->timing_set[0] = 1;
        } else if (strcmp(arg, "--reps") == 0) {
            NEED_VALUE();
            gpu_only_note(o, arg, val, why_timing);
            if (parse_positive(val, arg, &o->timing.reps) != 0 || o->timing.reps < 1) return -1;
            o->timing_set[1] = 1;
        } else if (strcmp(arg, "--iters") == 0) {
            NEED_VALUE();
            gpu_only_note(o, arg, val, why_timing);
            if (parse_positive(val, arg, &o->timing.iters) != 0 || o->timing.iters < 1) return -1;
            o->timing_set[2] = 1;
        } else if (strcmp(arg, "--phase-reps") == 0) {
            NEED_VALUE();
            gpu_only_note(o, arg, val, why_timing);
            if (parse_positive(val, arg, &o->timing.phase_reps) != 0) return -1;
            o->timing_set[3] = 1;
        } else if (strcmp(arg, "--max-row-ms") == 0) {
            NEED_VALUE();
            gpu_only_note(o, arg, val, why_timing);
            int ms;
            if (parse_positive(val, arg, &ms) != 0) return -1;
            o->timing.max_row_ms = ms;
            o->timing_set[4] = 1;
        } else if (strcmp(arg, "--no-plain") == 0) {
            o->plain = 0;
            gpu_only_note(o, arg, NULL, why_timing);
        } else if (strcmp(arg, "--no-graph") == 0) {
            o->graph = 0;
            gpu_only_note(o, arg, NULL, why_timing);
        } else if (strcmp(arg, "--no-phases") == 0) {
            o->phases = 0;
            gpu_only_note(o, arg, NULL, why_timing);
        } else if (strcmp(arg, "--auto-budget") == 0) {
            NEED_VALUE();
            gpu_only_note(o, arg, val, why_select);
            char *end = NULL;
            errno = 0;
            const double ms = strtod(val, &end);
            if (errno != 0 || end == val || *end != '\0' || !(ms >= 0.0) || ms > 1e9) {
                fprintf(stderr, "condconv-bench: --auto-budget %s: expected milliseconds >= 0\n", val);
                return -1;
            }
            o->auto_budget_ms = ms;
        } else if (strcmp(arg, "--backward") == 0) {
            o->backward = 1;
            gpu_only_note(o, arg, NULL, why_backward);
        } else if (strcmp(arg, "--candidates") == 0) {
            o->candidates = 1;
            gpu_only_note(o, arg, NULL, why_algo);
        } else if (strcmp(arg, "--no-ceilings") == 0) {
            o->ceilings = 0;
            gpu_only_note(o, arg, NULL, why_timing);
        } else if (strcmp(arg, "--csv") == 0) {
            NEED_VALUE();
            o->csv = val;
        } else if (strcmp(arg, "--json") == 0) {
            NEED_VALUE();
            o->json = val;
        } else if (strcmp(arg, "--device") == 0) {
            NEED_VALUE();
            gpu_only_note(o, arg, val, why_device);
            if (parse_positive(val, arg, &o->device) != 0) return -1;
        } else if (strcmp(arg, "--cpu") == 0) {
            o->cpu = 1;
        } else if (strcmp(arg, "--quick") == 0) {
            o->quick = 1;
            gpu_only_note(o, arg, NULL, why_quick);
        } else if (strcmp(arg, "--list") == 0) {
            o->list = 1;
        } else if (strcmp(arg, "--floors") == 0) {
            NEED_VALUE();
            bench_card card;
            if (bench_card_lookup(val, &card) != 0) {
                fprintf(stderr, "condconv-bench: --floors %s: expected h100 or h200\n", val);
                return -1;
            }
            o->floors = val;
        } else {
            fprintf(stderr, "condconv-bench: unknown option '%s' (--help lists them)\n", arg);
            return -1;
        }
#undef NEED_VALUE
    }
    o->user_layers = given_sets;
    if (o->backward) o->phases = 0; /* the phase events name the forward's phases only */
    if (o->dtype != CONDCONV_DTYPE_F32 && (o->math_count > 1 || o->maths[0] != CONDCONV_MATH_F32)) {
        fprintf(stderr, "condconv-bench: --math applies to f32 data; f16 and bf16 always use tensor cores with f32 "
                        "accumulation\n");
        return -1;
    }
    if (!given_sets) {
        if (bench_add_set(&o->layers, "effnet-cc-b0", err, sizeof err) != 0 ||
            (o->quick && bench_add_set(&o->layers, "issue5", err, sizeof err) != 0)) {
            fprintf(stderr, "condconv-bench: %s\n", err);
            return -1;
        }
    }
    const bench_timing def = {2, 15, 20, 10, 250.0}, quick = {1, 7, 10, 5, 100.0};
    const bench_timing *base = o->quick ? &quick : &def;
    if (!o->timing_set[0]) o->timing.warmup = base->warmup;
    if (!o->timing_set[1]) o->timing.reps = base->reps;
    if (!o->timing_set[2]) o->timing.iters = base->iters;
    if (!o->timing_set[3]) o->timing.phase_reps = base->phase_reps;
    if (!o->timing_set[4]) o->timing.max_row_ms = base->max_row_ms;
    return 0;
}

/* ------------------------------------------------------------- GPU sweep */

/* Rotated input sets: x[i], y[i] (and alpha[i] for external routing),
 * carved out of one allocation each. */
typedef struct device_sets {
    int count;
    float **x, **y, **alpha;
    void *x_block, *y_block, *alpha_block;
} device_sets;

static void sets_free(device_sets *s)
{
    if (s->x_block) (void)cudaFree(s->x_block);
    if (s->y_block) (void)cudaFree(s->y_block);
    if (s->alpha_block) (void)cudaFree(s->alpha_block);
    free(s->x);
    free(s->y);
    free(s->alpha);
    memset(s, 0, sizeof *s);
}

static size_t align256(size_t bytes) { return (bytes + 255u) & ~(size_t)255u; }

static int carve(void **block, float ***ptrs, int count, size_t elems, size_t elem_size, char *err, size_t err_len)
{
    const size_t stride = align256(elem_size * elems);
    *ptrs = malloc(sizeof(float *) * (size_t)count);
    if (*ptrs == NULL) {
        snprintf(err, err_len, "out of host memory");
        return -1;
    }
    const cudaError_t e = cudaMalloc(block, stride * (size_t)count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(err, err_len, "%d input sets of %.1f MiB do not fit in device memory (%s)", count,
                 (double)stride / 1048576.0, cudaGetErrorString(e));
        return -1;
    }
    for (int i = 0; i < count; ++i) (*ptrs)[i] = (float *)(void *)((unsigned char *)*block + stride * (size_t)i);
    return 0;
}

/* Uploads uniform values in [lo, hi), in the dtype, into set 0 and copies
 * them to the others. */
static int fill_sets(float **ptrs, int count, size_t elems, condconv_dtype dtype, float lo, float hi, char *err,
                     size_t err_len)
{
    float *host = malloc(sizeof(float) * elems);
    if (host == NULL) {
        snprintf(err, err_len, "out of host memory");
        return -1;
    }
    uint32_t state = 777u;
    bench_fill_uniform(host, elems, lo, hi, &state);
    /* In place: the halves land on bytes already read. */
    if (condconv_convert(CONDCONV_DTYPE_F32, host, dtype, host, elems) != CONDCONV_STATUS_SUCCESS) {
        free(host);
        snprintf(err, err_len, "%s", condconv_last_error());
        return -1;
    }
    const size_t bytes = bench_dtype_size(dtype) * elems;
    cudaError_t e = cudaMemcpy(ptrs[0], host, bytes, cudaMemcpyHostToDevice);
    free(host);
    for (int i = 1; i < count && e == cudaSuccess; ++i)
        e = cudaMemcpy(ptrs[i], ptrs[0], bytes, cudaMemcpyDeviceToDevice);
    if (e != cudaSuccess) {
        snprintf(err, err_len, "filling inputs: %s", cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

/* x and y in the run's dtype; routing weights always f32. */
static int sets_alloc(device_sets *s, int count, size_t x_elems, size_t y_elems, size_t alpha_elems,
                      condconv_dtype dtype, char *err, size_t err_len)
{
    memset(s, 0, sizeof *s);
    s->count = count;
    const size_t es = bench_dtype_size(dtype);
    if (carve(&s->x_block, &s->x, count, x_elems, es, err, err_len) != 0 ||
        carve(&s->y_block, &s->y, count, y_elems, es, err, err_len) != 0 ||
        (alpha_elems > 0 && carve(&s->alpha_block, &s->alpha, count, alpha_elems, sizeof(float), err, err_len) != 0) ||
        fill_sets(s->x, count, x_elems, dtype, -1.0f, 1.0f, err, err_len) != 0 ||
        (alpha_elems > 0 &&
         fill_sets(s->alpha, count, alpha_elems, CONDCONV_DTYPE_F32, 0.0f, 1.0f, err, err_len) != 0) ||
        cudaMemset(s->y_block, 0, align256(es * y_elems) * (size_t)count) != cudaSuccess ||
        /* The copies above ran on the legacy stream, which the bench's non-blocking stream does not wait for. */
        cudaDeviceSynchronize() != cudaSuccess) {
        if (err[0] == '\0') snprintf(err, err_len, "filling inputs: %s", cudaGetErrorString(cudaGetLastError()));
        sets_free(s);
        return -1;
    }
    return 0;
}

typedef struct cc_launch {
    condconv_layer_t layer;
    int n, h, w;
    const device_sets *sets;
    int external;
    void *workspace;
    size_t workspace_bytes;
} cc_launch;

static int launch_condconv(void *arg, int set, char *err, size_t err_len)
{
    const cc_launch *a = arg;
    const condconv_status st =
        condconv_forward(a->layer, a->n, a->h, a->w, a->sets->x[set], a->sets->y[set],
                         a->external ? a->sets->alpha[set] : NULL, NULL, a->workspace, a->workspace_bytes);
    if (st == CONDCONV_STATUS_SUCCESS) return 0;
    snprintf(err, err_len, "%s", condconv_last_error());
    return -1;
}

/* --backward: the forward, then every gradient the layer has (dy = the
 * forward's own output: any O(1) values time the same). */
typedef struct cc_train_launch {
    cc_launch fwd;
    void *dx;
    float *d_routing_in, *d_experts, *d_expert_bias, *d_routing_weight, *d_routing_bias;
} cc_train_launch;

static int launch_condconv_train(void *arg, int set, char *err, size_t err_len)
{
    cc_train_launch *t = arg;
    const cc_launch *a = &t->fwd;
    if (launch_condconv(&t->fwd, set, err, err_len) != 0) return -1;
    const condconv_status st =
        condconv_backward(a->layer, a->n, a->h, a->w, a->sets->x[set], a->external ? a->sets->alpha[set] : NULL,
                          a->sets->y[set], t->dx, t->d_routing_in, t->d_experts, t->d_expert_bias, t->d_routing_weight,
                          t->d_routing_bias, a->workspace, a->workspace_bytes);
    if (st == CONDCONV_STATUS_SUCCESS) return 0;
    snprintf(err, err_len, "%s", condconv_last_error());
    return -1;
}

typedef struct gpu_run {
    const options *o;
    bench_report *report;
    cudaStream_t stream;
    condconv_context_t ctx;
    cc_phase_timer timer;
    size_t l2_bytes;
    void *workspace;
    size_t workspace_cap;
    int failures;
    double start_us; /* when the run began: each row's progress line on stderr says how long it has taken */
    int unstable;    /* rows flagged UNSTABLE (flag_unstable) */
} gpu_run;

/* The library's message without its "CONDCONV_STATUS_X: condconv_prepare: " prefix. */
static const char *short_message(const char *msg)
{
    const char *p = strstr(msg, ": ");
    if (p && strncmp(msg, "CONDCONV_STATUS_", 16) == 0) msg = p + 2;
    p = strstr(msg, ": ");
    if (p && strncmp(msg, "condconv_", 9) == 0) msg = p + 2;
    return msg;
}

static void set_status(bench_row *row, const char *status, const char *note)
{
    snprintf(row->status, sizeof row->status, "%s", status);
    row->ok = strcmp(status, "ok") == 0;
    if (note) snprintf(row->note, sizeof row->note, "%s", note);
}

/* Plain, graph and phase timing of one row. A failing graph capture leaves
 * the row valid with a note; a failing plain run fails the row. */
/* A row whose plain or graph timing spreads too far says so in its note
 * (bench_stats_stability); the run counts them for its closing line. */
static void flag_unstable(gpu_run *g, bench_row *row)
{
    static const char *const modes[2] = {"plain", "graph"};
    const bench_stats *stats[2] = {&row->plain, &row->graph};
    int flagged = 0;
    for (int m = 0; m < 2; ++m) {
        char verdict[128];
        if (stats[m]->n == 0 || bench_stats_stability(stats[m], verdict, sizeof verdict) != 1) continue;
        const size_t len = strlen(row->note);
        snprintf(row->note + len, sizeof row->note - len, "%s%s %s", len ? "; " : "", modes[m], verdict);
        flagged = 1;
    }
    g->unstable += flagged;
}

static void measure(gpu_run *g, bench_row *row, bench_launch_fn fn, void *arg, int sets)
{
    const options *o = g->o;
    char err[BENCH_ERR_LEN] = "";
    if (o->plain &&
        bench_time_plain(g->stream, fn, arg, sets, &o->timing, &row->plain, &row->host_us, err, sizeof err) != 0) {
        set_status(row, "error", err);
        (void)cudaStreamSynchronize(g->stream);
        (void)cudaGetLastError();
        return;
    }
    set_status(row, "ok", NULL);
    /* A forward slower than the whole row's budget is timed plainly only: a
     * graph of it (and the phase timings) would add seconds and say nothing new. */
    if (o->timing.max_row_ms > 0.0 && row->plain.median > 1000.0 * o->timing.max_row_ms) {
        const size_t len = strlen(row->note);
        snprintf(row->note + len, sizeof row->note - len, "%sslower than --max-row-ms: graph and phases not timed",
                 len ? "; " : "");
        flag_unstable(g, row);
        return;
    }
    if (o->graph && bench_time_graph(g->stream, fn, arg, sets, &o->timing, &row->graph, err, sizeof err) != 0) {
        const size_t len = strlen(row->note);
        snprintf(row->note + len, sizeof row->note - len, "%sgraph: %s", len ? "; " : "", err);
        memset(&row->graph, 0, sizeof row->graph);
        (void)cudaGetLastError();
    }
    flag_unstable(g, row);
    if (o->phases && bench_time_phases(g->stream, fn, arg, sets, o->timing.phase_reps, &g->timer, row->phase_us, err,
                                       sizeof err) != 0) {
        const size_t len = strlen(row->note);
        snprintf(row->note + len, sizeof row->note - len, "%sphases: %s", len ? "; " : "", err);
        (void)cudaGetLastError();
    }
}

static int ensure_workspace(gpu_run *g, size_t bytes, char *err, size_t err_len)
{
    if (bytes <= g->workspace_cap) return 0;
    if (g->workspace) (void)cudaFree(g->workspace);
    g->workspace = NULL;
    g->workspace_cap = 0;
    const cudaError_t e = cudaMalloc(&g->workspace, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(err, err_len, "a workspace of %.1f MiB does not fit in device memory", (double)bytes / 1048576.0);
        return -1;
    }
    g->workspace_cap = bytes;
    return 0;
}

static void add_row(gpu_run *g, const bench_row *row)
{
    /* Progress on stderr, with the wall time: where a long run spends it. */
    fprintf(stderr, "[%8.1f s] %s n%d E%d %s %s: %s\n", (bench_now_us() - g->start_us) * 1e-6, row->layer->name,
            row->batch, row->experts, bench_prec_name(g->o->dtype, row->math), row->method, row->status);
    if (strcmp(row->status, "error") == 0) ++g->failures;
    if (bench_report_add(g->report, row) != 0) ++g->failures;
}

static void static_row(gpu_run *g, const bench_layer *l, int batch, condconv_math math, const device_sets *sets,
                       double *plain_us, double *graph_us)
{
    const options *o = g->o;
    bench_row row;
    bench_row_init(&row, l, batch, 0, math, "static");
    row.sets = sets->count;
    char err[BENCH_ERR_LEN] = "";
    bench_static *s = NULL;
    const int has_bias = o->epilogue > 0;
    const condconv_activation act = o->epilogue == 2 ? l->act : CONDCONV_ACTIVATION_NONE;
    char range[128];
    snprintf(range, sizeof range, "bench %s n%d %s static", l->name, batch, bench_prec_name(o->dtype, math));
    nvtxRangePushA(range);
    if (bench_static_create(&s, l, batch, math, o->dtype, o->layout, has_bias, act, g->stream, err, sizeof err) != 0) {
        set_status(&row, "error", err);
    } else {
        bench_static_bind(s, sets->x, sets->y);
        if (o->backward && bench_static_enable_backward(s, l, math, err, sizeof err) != 0) {
            set_status(&row, "error", err);
        } else {
            snprintf(row.algo_run, sizeof row.algo_run, "%s", bench_static_algo(s));
            row.workspace_bytes = bench_static_workspace(s);
            measure(g, &row, o->backward ? bench_static_train_launch : bench_static_launch, s, sets->count);
            if (row.ok && has_bias)
                snprintf(row.note, sizeof row.note, "conv + the library's bias/act epilogue kernel");
            if (row.ok && o->backward) {
                const size_t len = strlen(row.note);
                snprintf(row.note + len, sizeof row.note - len, "%sforward + backward data + backward filter",
                         len ? "; " : "");
            }
        }
    }
    nvtxRangePop();
    bench_static_destroy(s);
    /* The cost of a static convolution: the floors' own count (bench/floors.c), plus the bias. */
    double static_bytes = 0.0, static_flops = 0.0;
    bench_static_work(l, batch, o->dtype, &static_bytes, &static_flops);
    row.macs = (uint64_t)(static_flops / 2.0);
    row.bytes = (uint64_t)static_bytes + (has_bias ? bench_dtype_size(o->dtype) * (uint64_t)l->cout : 0u);
    if (o->backward) { /* forward, backward data and backward filter: three convolutions' work, an estimate */
        row.macs *= 3u;
        row.bytes *= 3u;
    }
    if (row.ok) {
        *plain_us = row.plain.n ? row.plain.median : NAN;
        *graph_us = row.graph.n ? row.graph.median : NAN;
    }
    row.static_plain_us = *plain_us;
    row.static_graph_us = *graph_us;
    add_row(g, &row);
}

/* All requested algorithms for one layer, batch and expert count. */
/* What every condconv row of one layer, batch and E shares. */
typedef struct row_setup {
    const bench_layer *l;
    int batch, experts;
    condconv_math math;
    const device_sets *sets;
    double static_plain, static_graph;
    condconv_layer_t layer; /* NULL: setup failed, setup_status/setup_error say why */
    const char *setup_status;
    const char *setup_error;
    const condconv_cost *cost;
} row_setup;

/* --backward: the gradients' buffers for one row, then its timing. */
static void train_row(gpu_run *g, bench_row *row, const cc_launch *fwd, const row_setup *r)
{
    const options *o = g->o;
    const bench_layer *l = r->l;
    const int external = o->routing == CONDCONV_ROUTING_EXTERNAL, has_bias = o->epilogue > 0;
    const size_t per_expert = (size_t)l->cout * (size_t)(l->cin / l->groups) * (size_t)l->k * (size_t)l->k;
    const size_t e = (size_t)r->experts;
    const struct {
        size_t bytes;
        int wanted;
    } want[6] = {
        {bench_dtype_size(o->dtype) * (size_t)r->batch * (size_t)l->cin * (size_t)l->h * (size_t)l->w, 1},
        {sizeof(float) * (size_t)r->batch * e, external},
        {sizeof(float) * e * per_expert, 1},
        {sizeof(float) * e * (size_t)l->cout, has_bias},
        {sizeof(float) * e * (size_t)l->cin, !external},
        {sizeof(float) * e, !external},
    };
    void *buf[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    for (int i = 0; i < 6; ++i)
        if (want[i].wanted && cudaMalloc(&buf[i], want[i].bytes) != cudaSuccess) {
            (void)cudaGetLastError();
            set_status(row, "n/a", "the gradients do not fit in device memory");
            for (int j = 0; j < i; ++j) (void)cudaFree(buf[j]);
            return;
        }
    cc_train_launch t = {*fwd, buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]};
    measure(g, row, launch_condconv_train, &t, r->sets->count);
    for (int i = 0; i < 6; ++i) (void)cudaFree(buf[i]);
}

/* One row: the layer forced to `algo`, or to `candidate` (a name AUTO
 * listed) when not NULL, with the kernel variants given (-1: AUTO's). On
 * success, AUTO's plan info is left in *auto_info (for the candidate rows). */
static void condconv_row(gpu_run *g, const row_setup *r, const char *method, condconv_algo algo, const char *candidate,
                         int routing_variant, int aggregate_variant, condconv_plan_info *auto_info)
{
    const options *o = g->o;
    const bench_layer *l = r->l;
    const int external = o->routing == CONDCONV_ROUTING_EXTERNAL;
    bench_row row;
    bench_row_init(&row, l, r->batch, r->experts, r->math, method);
    row.sets = r->sets->count;
    row.static_plain_us = r->static_plain;
    row.static_graph_us = r->static_graph;
    row.macs = r->cost->conv_macs + r->cost->aggregation_macs + r->cost->routing_macs;
    row.bytes = r->cost->min_bytes;
    if (o->backward) { /* as the static row's: three times the forward's work, an estimate */
        row.macs *= 3u;
        row.bytes *= 3u;
    }
    if (r->layer == NULL) {
        set_status(&row, r->setup_status, r->setup_error);
        add_row(g, &row);
        return;
    }
    char range[200];
    snprintf(range, sizeof range, "bench %s n%d E%d %s %s", l->name, r->batch, r->experts,
             bench_prec_name(o->dtype, r->math), row.method);
    nvtxRangePushA(range);
    condconv_status st =
        candidate ? condconv_layer_set_candidate(r->layer, candidate) : condconv_layer_set_algo(r->layer, algo);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = condconv_layer_set_kernel_variants(r->layer, routing_variant, aggregate_variant);
    condconv_plan_info info;
    memset(&info, 0, sizeof info);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_prepare(r->layer, r->batch, l->h, l->w);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_get_plan_info(r->layer, r->batch, l->h, l->w, &info);
    condconv_backward_plan_info bwd_info;
    memset(&bwd_info, 0, sizeof bwd_info);
    if (st == CONDCONV_STATUS_SUCCESS && o->backward)
        st = condconv_get_backward_plan_info(r->layer, r->batch, l->h, l->w, &bwd_info);
    const size_t ws_need =
        info.workspace_bytes > bwd_info.workspace_bytes ? info.workspace_bytes : bwd_info.workspace_bytes;
    char err[BENCH_ERR_LEN] = "";
    if (st == CONDCONV_STATUS_NOT_SUPPORTED || st == CONDCONV_STATUS_ALLOC_FAILED ||
        (st != CONDCONV_STATUS_SUCCESS && strstr(condconv_last_error(), "out of memory") != NULL)) {
        set_status(&row, "n/a", short_message(condconv_last_error()));
        (void)cudaGetLastError(); /* an allocation failure is not sticky */
    } else if (st != CONDCONV_STATUS_SUCCESS) {
        set_status(&row, "error", condconv_last_error());
    } else if (ensure_workspace(g, ws_need, err, sizeof err) != 0) {
        set_status(&row, "n/a", err);
    } else {
        snprintf(row.algo_run, sizeof row.algo_run, "%s", condconv_algo_name(info.algo));
        if (info.backend[0] != '\0') {
            const size_t len = strlen(row.note);
            snprintf(row.note + len, sizeof row.note - len, "%s%s", len ? "; " : "", info.backend);
        }
        row.workspace_bytes = ws_need;
        cc_launch arg = {r->layer, r->batch, l->h, l->w, r->sets, external, g->workspace, g->workspace_cap};
        if (o->backward) {
            const size_t len = strlen(row.note);
            /* The backward's AUTO times both algorithms under MEASURE: its reason lists them. */
            snprintf(row.note + len, sizeof row.note - len, "%sbackward %s (%s): %s", len ? "; " : "",
                     condconv_bwd_algo_name(bwd_info.algo), bwd_info.reason, bwd_info.backend);
            train_row(g, &row, &arg, r);
        } else {
            measure(g, &row, launch_condconv, &arg, r->sets->count);
        }
        if (row.ok && algo == CONDCONV_ALGO_AUTO && candidate == NULL) {
            /* What AUTO timed at prepare (issue 19): every candidate, the
             * kernels' variants and the budget, winner starred. */
            const size_t len = strlen(row.note);
            snprintf(row.note + len, sizeof row.note - len, "%s%s; candidates: %s", len ? "; " : "", info.reason,
                     info.candidates[0] ? info.candidates : "none timed");
            if (auto_info) *auto_info = info;
        }
        if (row.ok && info.algo == CONDCONV_ALGO_MIXTURE) {
            const size_t len = strlen(row.note);
            snprintf(row.note + len, sizeof row.note - len, "%sexecutes E x the conv MACs", len ? "; " : "");
        }
    }
    nvtxRangePop();
    add_row(g, &row);
}

/* --candidates: a row per algorithm variant AUTO listed ("algo[variant]";
 * each algorithm's default has its own row already), and a row per routing
 * and aggregation kernel variant under AUTO's own choice of algorithm. */
static void candidate_rows(gpu_run *g, const row_setup *r, const condconv_plan_info *auto_info)
{
    char list[sizeof auto_info->candidates];
    snprintf(list, sizeof list, "%s", auto_info->candidates);
    char *end = strchr(list, ';');
    if (end) *end = '\0';
    char *save = NULL;
    for (char *entry = strtok_r(list, ",", &save); entry != NULL; entry = strtok_r(NULL, ",", &save)) {
        while (*entry == ' ' || *entry == '*') ++entry;
        char *close = strchr(entry, ']');
        if (strchr(entry, '[') == NULL || close == NULL) continue;
        close[1] = '\0';
        condconv_row(g, r, entry, CONDCONV_ALGO_AUTO, entry, -1, -1, NULL);
    }
    /* The kernels' variants by number, as many as the library accepts
     * (it judges the range); only those AUTO timed for this shape. */
    const int internal = g->o->routing != CONDCONV_ROUTING_EXTERNAL;
    for (int v = 1; internal && condconv_layer_set_kernel_variants(r->layer, v, -1) == CONDCONV_STATUS_SUCCESS; ++v) {
        char method[64];
        snprintf(method, sizeof method, "auto+routing[v%d]", v);
        condconv_row(g, r, method, CONDCONV_ALGO_AUTO, NULL, v, -1, NULL);
    }
    const int aggregates = strstr(auto_info->candidates, "aggregate:") != NULL;
    for (int v = 1; aggregates && condconv_layer_set_kernel_variants(r->layer, -1, v) == CONDCONV_STATUS_SUCCESS; ++v) {
        char method[64];
        snprintf(method, sizeof method, "auto+aggregate[v%d]", v);
        condconv_row(g, r, method, CONDCONV_ALGO_AUTO, NULL, -1, v, NULL);
    }
    (void)condconv_layer_set_kernel_variants(r->layer, -1, -1);
}

static void condconv_rows(gpu_run *g, const bench_layer *l, int batch, int experts, condconv_math math,
                          const device_sets *sets, double static_plain, double static_graph)
{
    const options *o = g->o;
    const int has_bias = o->epilogue > 0;
    const condconv_activation act = o->epilogue == 2 ? l->act : CONDCONV_ACTIVATION_NONE;
    const int external = o->routing == CONDCONV_ROUTING_EXTERNAL;
    condconv_layer_desc_t desc = NULL;
    condconv_layer_t layer = NULL;
    bench_params params;
    memset(&params, 0, sizeof params);
    condconv_cost cost;
    memset(&cost, 0, sizeof cost);
    char setup_error[BENCH_NOTE_LEN] = "";
    const char *setup_status = "error";
    condconv_status st = bench_make_desc(l, experts, has_bias, o->routing, act, &desc);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_layer_desc_set_format(desc, o->dtype, o->layout);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_cost_model(desc, batch, l->h, l->w, &cost);
    if (st != CONDCONV_STATUS_SUCCESS) {
        snprintf(setup_error, sizeof setup_error, "%s", condconv_last_error());
    } else if (bench_params_make(l, experts, has_bias, !external, &params) != 0) {
        snprintf(setup_error, sizeof setup_error, "out of host memory");
    } else {
        bench_params_to_dtype(&params, l, experts, has_bias, o->dtype);
        const condconv_params view = bench_params_view(&params);
        st = condconv_layer_create(g->ctx, desc, &view, &layer);
        if (st != CONDCONV_STATUS_SUCCESS) {
            snprintf(setup_error, sizeof setup_error, "%s", short_message(condconv_last_error()));
            if (st == CONDCONV_STATUS_ALLOC_FAILED) setup_status = "n/a";
        }
    }
    bench_params_free(&params);

    const row_setup r = {l,     batch,        experts,     math, sets, static_plain, static_graph,
                         layer, setup_status, setup_error, &cost};
    for (int a = 0; a < CONDCONV_ALGO_COUNT; ++a) {
        if (!o->run_algo[a]) continue;
        condconv_plan_info auto_info;
        auto_info.candidates[0] = '\0';
        condconv_row(g, &r, condconv_algo_name((condconv_algo)a), (condconv_algo)a, NULL, -1, -1, &auto_info);
        if (a == CONDCONV_ALGO_AUTO && o->candidates && layer != NULL && auto_info.candidates[0])
            candidate_rows(g, &r, &auto_info);
    }
    (void)condconv_layer_destroy(layer);
    (void)condconv_layer_desc_destroy(desc);
}

static void layer_batch(gpu_run *g, const bench_layer *l, int batch, condconv_math math)
{
    const options *o = g->o;
    bench_print_group_header(l, batch, bench_prec_name(o->dtype, math),
                             o->layout == CONDCONV_LAYOUT_NHWC ? "nhwc" : "nchw", epilogue_names[o->epilogue]);
    const int ho = bench_layer_out(l, l->h), wo = bench_layer_out(l, l->w);
    const size_t x_elems = (size_t)batch * (size_t)l->cin * (size_t)l->h * (size_t)l->w;
    const size_t y_elems = (size_t)batch * (size_t)l->cout * (size_t)ho * (size_t)wo;
    int max_e = 1;
    for (int e = 0; e < o->expert_count; ++e)
        if (o->experts[e] > max_e) max_e = o->experts[e];
    const size_t alpha_elems = o->routing == CONDCONV_ROUTING_EXTERNAL ? (size_t)batch * (size_t)max_e : 0;
    size_t free_bytes = 0, total_bytes = 0;
    (void)cudaMemGetInfo(&free_bytes, &total_bytes);
    const size_t es = bench_dtype_size(o->dtype);
    const size_t set_bytes =
        align256(es * x_elems) + align256(es * y_elems) + (alpha_elems ? align256(sizeof(float) * alpha_elems) : 0);
    const int count = bench_rotation_sets(set_bytes, g->l2_bytes, free_bytes / 4);
    device_sets sets;
    char err[BENCH_ERR_LEN] = "";
    if (sets_alloc(&sets, count, x_elems, y_elems, alpha_elems, o->dtype, err, sizeof err) != 0) {
        bench_row row;
        bench_row_init(&row, l, batch, 0, math, "inputs");
        set_status(&row, "n/a", err);
        add_row(g, &row);
        return;
    }
    double static_plain = NAN, static_graph = NAN;
    if (o->run_static) static_row(g, l, batch, math, &sets, &static_plain, &static_graph);
    for (int e = 0; e < o->expert_count; ++e)
        condconv_rows(g, l, batch, o->experts[e], math, &sets, static_plain, static_graph);
    sets_free(&sets);
}

static int run_gpu(const options *o, bench_report *report)
{
    gpu_run g;
    memset(&g, 0, sizeof g);
    g.o = o;
    g.report = report;
    g.l2_bytes = report->env.l2_bytes;
    g.start_us = bench_now_us();
    char err[BENCH_ERR_LEN] = "";
    if (cudaSetDevice(o->device) != cudaSuccess || cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking) != 0) {
        fprintf(stderr, "condconv-bench: cannot use CUDA device %d: %s\n", o->device,
                cudaGetErrorString(cudaGetLastError()));
        return 1;
    }
    if (condconv_context_create(&g.ctx, o->device) != CONDCONV_STATUS_SUCCESS ||
        condconv_context_set_stream(g.ctx, g.stream) != CONDCONV_STATUS_SUCCESS ||
        condconv_context_set_algo_select(g.ctx, o->select) != CONDCONV_STATUS_SUCCESS ||
        (o->auto_budget_ms >= 0.0 &&
         condconv_context_set_auto_budget(g.ctx, (float)o->auto_budget_ms) != CONDCONV_STATUS_SUCCESS)) {
        fprintf(stderr, "condconv-bench: %s\n", condconv_last_error());
        return 1;
    }
    if (bench_phase_timer_create(&g.timer) != 0) {
        fprintf(stderr, "condconv-bench: cannot create the phase events\n");
        return 1;
    }
    if (o->ceilings) {
        size_t free_bytes = 0, total_bytes = 0;
        (void)cudaMemGetInfo(&free_bytes, &total_bytes);
        if (bench_measure_ceilings(g.stream, free_bytes, &report->ceilings, err, sizeof err) != 0) {
            fprintf(stderr, "condconv-bench: measuring the ceilings failed: %s\n", err);
            (void)cudaGetLastError();
            memset(&report->ceilings, 0, sizeof report->ceilings);
        }
    }
    bench_print_ceilings(&report->ceilings);
    for (int m = 0; m < o->math_count; ++m) {
        if (condconv_context_set_math(g.ctx, o->maths[m]) != CONDCONV_STATUS_SUCCESS) {
            fprintf(stderr, "condconv-bench: %s\n", condconv_last_error());
            ++g.failures;
            continue;
        }
        for (int i = 0; i < o->layers.count; ++i)
            for (int b = 0; b < o->batch_count; ++b) layer_batch(&g, &o->layers.items[i], o->batches[b], o->maths[m]);
    }
    if (g.unstable)
        printf("\n%d row(s) UNSTABLE: a p10-p90 band wider than %.0f%% of the median (see their notes); rerun them "
               "with more --reps or on an idle GPU before comparing\n",
               g.unstable, 100.0 * BENCH_UNSTABLE_BAND);
    if (g.workspace) (void)cudaFree(g.workspace);
    bench_phase_timer_destroy(&g.timer);
    (void)condconv_context_destroy(g.ctx);
    bench_baselines_shutdown();
    (void)cudaStreamDestroy(g.stream);
    return g.failures;
}

/* What the CPU path runs, said before it runs: the layers --set/--layer chose
 * (or the small default), and each GPU-only option given, ignored, and why. */
static void print_cpu_banner(const options *o)
{
    printf("Running the CPU reference path (condconv_forward_cpu: plain C, double accumulation) ");
    if (!o->user_layers) {
        printf("on one small layer, EfficientNet-CC-B0's 1x1 112->672 at 14x14 (--set/--layer choose others)");
    } else {
        enum { SHOWN = 6 };
        printf("on the %d layer%s that --set/--layer chose (", o->layers.count, o->layers.count == 1 ? "" : "s");
        for (int i = 0; i < o->layers.count && i < SHOWN; ++i) printf("%s%s", i ? ", " : "", o->layers.items[i].name);
        if (o->layers.count > SHOWN) printf(" and %d more", o->layers.count - SHOWN);
        printf(")");
    }
    printf(",\nbatch");
    for (int b = 0; b < o->batch_count; ++b) printf("%s%d", b ? "," : " ", o->batches[b]);
    printf(", experts");
    for (int e = 0; e < o->expert_count; ++e) printf("%s%d", e ? "," : " ", o->experts[e]);
    printf(", with its timing and the cost model. These are CPU numbers, not GPU results.\n");
    for (int i = 0; i < o->gpu_only_count; ++i)
        printf("condconv-bench: %s is ignored on the CPU path: %s.\n", o->gpu_only[i].option, o->gpu_only[i].why);
    printf("\n");
}

int main(int argc, char **argv)
{
    options o;
    if (parse_args(argc, argv, &o) != 0) {
        bench_layer_list_free(&o.layers);
        return 2;
    }
    if (o.list) {
        bench_list_sets(stdout);
        bench_layer_list_free(&o.layers);
        return 0;
    }
    if (o.floors) {
        /* No GPU needed: the cost model and a card's datasheet figures. */
        static const int default_batches[] = {1, 32, 128}, default_experts[] = {1, 8, 32};
        bench_card card;
        (void)bench_card_lookup(o.floors, &card);
        const int *batches = o.batch_count ? o.batches : default_batches;
        const int *experts = o.expert_count ? o.experts : default_experts;
        int failures = 0;
        for (int m = 0; m < o.math_count; ++m)
            failures += bench_print_floors(&o.layers, batches, o.batch_count ? o.batch_count : 3, experts,
                                           o.expert_count ? o.expert_count : 3, o.maths[m], o.dtype, &card);
        bench_layer_list_free(&o.layers);
        return failures ? 1 : 0;
    }
    const int devices = o.cpu ? 0 : condconv_device_count();
    bench_report report;
    memset(&report, 0, sizeof report);
    report.dtype = o.dtype == CONDCONV_DTYPE_F16 ? "f16" : o.dtype == CONDCONV_DTYPE_BF16 ? "bf16" : "f32";
    report.dtype_id = o.dtype;
    report.layout = o.layout == CONDCONV_LAYOUT_NHWC ? "nhwc" : "nchw";
    report.routing = o.routing_name;
    report.epilogue = epilogue_names[o.epilogue];
    report.select = o.select == CONDCONV_SELECT_MEASURE ? "measure" : "heuristic";
    bench_env_collect(&report.env, o.device, devices > 0, argc, argv);
    if (o.csv && bench_csv_open(&report, o.csv) != 0) {
        fprintf(stderr, "condconv-bench: cannot write %s: %s\n", o.csv, strerror(errno));
        bench_layer_list_free(&o.layers);
        return 2;
    }
    int failures;
    if (devices > 0) {
        if (o.batch_count == 0) {
            if (o.quick) {
                o.batches[0] = 1;
                o.batches[1] = 32;
                o.batches[2] = 128;
                o.batch_count = 3;
            } else {
                o.batches[0] = 32;
                o.batch_count = 1;
            }
        }
        if (o.expert_count == 0) {
            static const int sweep[] = {1, 2, 4, 8, 16, 32};
            if (o.quick) {
                o.experts[0] = 8;
                o.expert_count = 1;
            } else {
                memcpy(o.experts, sweep, sizeof sweep);
                o.expert_count = 6;
            }
        }
        bench_print_env(&report);
        failures = run_gpu(&o, &report);
    } else {
        if (!o.cpu)
            printf("condconv-bench: no CUDA device found (condconv_device_count() == 0), so no GPU timing can be "
                   "measured here.\n");
        else
            printf("condconv-bench: --cpu: the CPU reference path, whether or not a GPU is present.\n");
        if (!o.user_layers) {
            /* The small default: EfficientNet-CC-B0's 1x1 112 -> 672 at 14x14. */
            bench_layer_list_free(&o.layers);
            bench_layer l;
            char err[BENCH_ERR_LEN];
            if (bench_parse_layer("112,672,1,1,1,14", &l, err, sizeof err) != 0 || bench_add_layer(&o.layers, &l) != 0)
                return 1;
            snprintf(o.layers.items[0].set, sizeof o.layers.items[0].set, "issue5");
            snprintf(o.layers.items[0].role, sizeof o.layers.items[0].role, "EfficientNet-CC-B0 expand");
            o.layers.items[0].act = CONDCONV_ACTIVATION_SILU;
        }
        if (o.batch_count == 0) {
            o.batches[0] = 1;
            o.batch_count = 1;
        }
        if (o.expert_count == 0) {
            o.experts[0] = 8;
            o.expert_count = 1;
        }
        print_cpu_banner(&o);
        bench_print_env(&report);
        bench_cpu_options cpu = {&o.layers, o.batches, o.batch_count, o.experts, o.expert_count, 2.0};
        failures = bench_run_cpu(&report, &cpu) != 0;
    }
    bench_csv_close(&report);
    if (o.json && bench_json_write(&report, o.json) != 0) {
        fprintf(stderr, "condconv-bench: cannot write %s\n", o.json);
        ++failures;
    }
    if (o.csv) printf("\nCSV: %s\n", o.csv);
    if (o.json) printf("JSON: %s\n", o.json);
    if (failures) fprintf(stderr, "condconv-bench: %d row(s) or step(s) failed; see the notes above\n", failures);
    bench_report_free(&report);
    bench_layer_list_free(&o.layers);
    return failures ? 1 : 0;
}
