/* Reporting: the environment (card, driver, CUDA, cuDNN, cuBLAS), a
 * readable table on stdout, CSV written row by row, JSON at the end.
 *
 * Derived columns, per row (t = CUDA-graph median when measured, else the
 * plain-launch median):
 *   ratio_plain / ratio_graph  time over the static convolution's, same mode
 *   gbps     minimal bytes / t (cost model: x + y + experts + biases +
 *            routing parameters + alpha; static: x + y + |W| [+ bias])
 *   tflops   2 * MACs / t (cost model: conv + aggregation + routing FC;
 *            static: conv) -- useful work, whatever the algorithm executes
 *   bw_frac, compute_frac   those over the ceilings measured in this run
 *            (D2D copy; cuBLAS f32 GEMM, strict FP32 for fp32 rows, TF32
 *            for tf32 rows)
 *   floor_us the roofline floor of the row on those ceilings: the larger of
 *            bytes / copy rate and 2 * MACs / GEMM rate (bench/floors.c)
 *   x_floor  t / floor_us: how far the measured time is from its limit. */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cublas_v2.h>
#include <cudnn.h>

#include "bench.h"

const char *bench_prec_name(condconv_dtype dtype, condconv_math math)
{
    if (dtype == CONDCONV_DTYPE_F16) return "fp16";
    if (dtype == CONDCONV_DTYPE_BF16) return "bf16";
    return math == CONDCONV_MATH_TF32 ? "tf32" : "fp32";
}

size_t bench_dtype_size(condconv_dtype dtype) { return dtype == CONDCONV_DTYPE_F32 ? 4u : 2u; }

void bench_row_init(bench_row *row, const bench_layer *layer, int batch, int experts, condconv_math math,
                    const char *method)
{
    memset(row, 0, sizeof *row);
    row->layer = layer;
    row->batch = batch;
    row->experts = experts;
    row->math = math;
    snprintf(row->method, sizeof row->method, "%s", method);
    snprintf(row->status, sizeof row->status, "error");
    row->host_us = NAN;
    for (int p = 0; p < CC_PHASE_COUNT; ++p) row->phase_us[p] = NAN;
    row->static_plain_us = row->static_graph_us = NAN;
}

/* ------------------------------------------------------------- environment */

/* NVML's driver version string ("580.159"), loaded at run time so that the
 * bench starts on machines without the driver. */
static void nvml_driver_version(char *out, size_t len)
{
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) return;
    int (*init)(void) = NULL, (*shutdown)(void) = NULL;
    int (*version)(char *, unsigned) = NULL;
    void *sym = dlsym(lib, "nvmlInit_v2");
    memcpy(&init, &sym, sizeof init);
    sym = dlsym(lib, "nvmlSystemGetDriverVersion");
    memcpy(&version, &sym, sizeof version);
    sym = dlsym(lib, "nvmlShutdown");
    memcpy(&shutdown, &sym, sizeof shutdown);
    if (init && version && init() == 0) {
        char buf[96] = {0};
        if (version(buf, sizeof buf) == 0) snprintf(out, len, "%s", buf);
        if (shutdown) (void)shutdown();
    }
    dlclose(lib);
}

void bench_env_collect(bench_env *env, int device, int gpu, int argc, char **argv)
{
    memset(env, 0, sizeof *env);
    env->gpu = gpu;
    env->condconv = condconv_version();
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm) != NULL) strftime(env->date, sizeof env->date, "%Y-%m-%dT%H:%M:%SZ", &tm);
    size_t used = 0;
    for (int i = 0; i < argc && used + 1 < sizeof env->command; ++i) {
        const int n = snprintf(env->command + used, sizeof env->command - used, "%s%s", i ? " " : "", argv[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
    (void)cudaRuntimeGetVersion(&env->cuda_runtime);
    env->cudnn = cudnnGetVersion();
    int major = 0, minor = 0, patch = 0;
    if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS &&
        cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
        cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS)
        env->cublas = major * 10000 + minor * 100 + patch;
    snprintf(env->device_name, sizeof env->device_name, "cpu");
    if (!gpu) {
        (void)cudaGetLastError();
        return;
    }
    struct cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
        snprintf(env->device_name, sizeof env->device_name, "%s", prop.name);
        env->cc_major = prop.major;
        env->cc_minor = prop.minor;
        env->sm_count = prop.multiProcessorCount;
        env->l2_bytes = (size_t)prop.l2CacheSize;
        env->mem_bytes = prop.totalGlobalMem;
    }
    (void)cudaDriverGetVersion(&env->cuda_driver);
    nvml_driver_version(env->driver, sizeof env->driver);
    if (env->driver[0] == '\0')
        snprintf(env->driver, sizeof env->driver, "cuda-driver-api-%d.%d", env->cuda_driver / 1000,
                 (env->cuda_driver % 1000) / 10);
    (void)cudaGetLastError();
}

static void version_string(int v, char *out, size_t len) { snprintf(out, len, "%d.%d", v / 1000, (v % 1000) / 10); }

void bench_print_env(const bench_report *r)
{
    const bench_env *e = &r->env;
    char rt[16], cudnn[32], cublas[32];
    version_string(e->cuda_runtime, rt, sizeof rt);
    snprintf(cudnn, sizeof cudnn, "%zu.%zu.%zu", e->cudnn / 10000, (e->cudnn % 10000) / 100, e->cudnn % 100);
    snprintf(cublas, sizeof cublas, "%d.%d.%d", e->cublas / 10000, (e->cublas / 100) % 100, e->cublas % 100);
    printf("condconv-bench %d.%d.%d  %s\n", e->condconv / 10000, (e->condconv / 100) % 100, e->condconv % 100, e->date);
    if (e->gpu)
        printf("device: %s (sm_%d%d, %d SMs, L2 %.0f MiB, %.1f GiB), driver %s, CUDA runtime %s, cuDNN %s, "
               "cuBLAS %s\n",
               e->device_name, e->cc_major, e->cc_minor, e->sm_count, (double)e->l2_bytes / 1048576.0,
               (double)e->mem_bytes / 1073741824.0, e->driver, rt, cudnn, cublas);
    else
        printf("device: none (CPU reference path); CUDA runtime %s, cuDNN %s (linked, unused)\n", rt, cudnn);
    printf("dtype %s, layout %s, routing %s, epilogue %s, AUTO by %s\n", r->dtype, r->layout, r->routing, r->epilogue,
           r->select);
}

void bench_print_ceilings(const bench_ceilings *c)
{
    if (!c->measured) {
        printf("ceilings: not measured (--no-ceilings); bandwidth and compute fractions are left empty\n");
        return;
    }
    printf("ceilings (this run): D2D copy %.0f GB/s (read+write, %zu MiB), cuBLAS GEMM %d^3 on random data: %.1f "
           "TFLOP/s strict FP32, %.1f TFLOP/s TF32, %.1f TFLOP/s f16 (f32 accumulation)\n",
           c->copy_gbps, c->copy_bytes >> 20, c->gemm_size, c->sgemm_tflops, c->tf32_tflops, c->f16_tflops);
}

/* ------------------------------------------------------------------- rows */

static double row_time(const bench_row *row) { return row->graph.n > 0 ? row->graph.median : row->plain.median; }

typedef struct derived {
    double ratio_plain, ratio_graph, gbps, tflops, bw_frac, compute_frac;
    double floor_us, x_floor; /* the row's roofline floor on the ceilings measured in this run, time over it */
} derived;

/* The GEMM rate measured in this run for the row's precision. */
static double ceiling_tflops(const bench_report *r, const bench_row *row)
{
    if (r->dtype_id != CONDCONV_DTYPE_F32) return r->ceilings.f16_tflops;
    return row->math == CONDCONV_MATH_TF32 ? r->ceilings.tf32_tflops : r->ceilings.sgemm_tflops;
}

static derived derive(const bench_report *r, const bench_row *row)
{
    derived d = {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};
    if (r->ceilings.measured && r->env.gpu) {
        const double rate = 1e12 * ceiling_tflops(r, row);
        d.floor_us =
            bench_floor_of((double)row->bytes, 2.0 * (double)row->macs, r->ceilings.copy_gbps * 1e9, rate).floor_us;
    }
    if (!row->ok) return d;
    if (row->plain.n > 0 && row->static_plain_us > 0.0) d.ratio_plain = row->plain.median / row->static_plain_us;
    if (row->graph.n > 0 && row->static_graph_us > 0.0) d.ratio_graph = row->graph.median / row->static_graph_us;
    const double t = row_time(row);
    if (t > 0.0) {
        d.gbps = (double)row->bytes / (t * 1e3);
        d.tflops = 2.0 * (double)row->macs / (t * 1e6);
        if (r->ceilings.measured && r->env.gpu) {
            d.bw_frac = d.gbps / r->ceilings.copy_gbps;
            d.compute_frac = d.tflops / ceiling_tflops(r, row);
            d.x_floor = t / d.floor_us;
        }
    }
    return d;
}

static const char *fmt(char *buf, size_t len, const char *format, double v)
{
    if (isnan(v) || isinf(v))
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, format, v);
    return buf;
}

static double spread_pct(const bench_stats *s)
{
    return s->n > 0 && s->median > 0.0 ? 50.0 * (s->p90 - s->p10) / s->median : NAN;
}

void bench_print_group_header(const bench_layer *l, int batch, const char *prec, const char *layout,
                              const char *epilogue)
{
    printf("\n== %s  %d->%d k%d s%d g%d  %dx%d  batch %d  %s %s  epilogue %s  (%s: %s)\n", l->name, l->cin, l->cout,
           l->k, l->stride, l->groups, l->h, l->w, batch, prec, layout, epilogue, l->set, l->role);
    printf("%3s %-16s %9s %5s %7s %9s %5s %7s %7s | %7s %7s %7s %7s | %8s %7s %7s %5s %5s | %s\n", "E", "method",
           "plain us", "+-%", "xstatic", "graph us", "+-%", "xstatic", "host us", "route", "agg", "conv", "epi", "MMAC",
           "GB/s", "TFLOP/s", "%BW", "%peak", "note");
}

static void print_row(const bench_report *r, const bench_row *row)
{
    char b[16][32];
    const derived d = derive(r, row);
    char experts[16];
    if (row->experts > 0)
        snprintf(experts, sizeof experts, "%d", row->experts);
    else
        snprintf(experts, sizeof experts, "-");
    if (!row->ok) {
        printf("%3s %-16s %9s %5s %7s %9s %5s %7s %7s | %-31s | %-41s | %s: %s\n", experts, row->method, row->status,
               "", "", "", "", "", "", "", "", row->status, row->note);
        return;
    }
    /* Conv includes the gather (padding copy or im2col) that feeds it. */
    double conv = row->phase_us[CC_PHASE_CONV];
    if (!isnan(row->phase_us[CC_PHASE_GATHER])) conv = (isnan(conv) ? 0.0 : conv) + row->phase_us[CC_PHASE_GATHER];
    char note[BENCH_NOTE_LEN + 48];
    if (row->algo_run[0] && strcmp(row->algo_run, row->method) != 0)
        snprintf(note, sizeof note, "ran %s%s%s", row->algo_run, row->note[0] ? "; " : "", row->note);
    else
        snprintf(note, sizeof note, "%s", row->note);
    printf("%3s %-16s %9s %5s %7s %9s %5s %7s %7s | %7s %7s %7s %7s | %8s %7s %7s %5s %5s | %s\n", experts, row->method,
           fmt(b[0], 32, "%.1f", row->plain.n ? row->plain.median : NAN),
           fmt(b[1], 32, "%.0f", spread_pct(&row->plain)), fmt(b[2], 32, "%.2f", d.ratio_plain),
           fmt(b[3], 32, "%.1f", row->graph.n ? row->graph.median : NAN),
           fmt(b[4], 32, "%.0f", spread_pct(&row->graph)), fmt(b[5], 32, "%.2f", d.ratio_graph),
           fmt(b[6], 32, "%.1f", row->host_us), fmt(b[7], 32, "%.1f", row->phase_us[CC_PHASE_ROUTE]),
           fmt(b[8], 32, "%.1f", row->phase_us[CC_PHASE_AGGREGATE]), fmt(b[9], 32, "%.1f", conv),
           fmt(b[10], 32, "%.1f", row->phase_us[CC_PHASE_EPILOGUE]), fmt(b[11], 32, "%.1f", (double)row->macs / 1e6),
           fmt(b[12], 32, "%.0f", d.gbps), fmt(b[13], 32, "%.2f", d.tflops), fmt(b[14], 32, "%.0f", 100.0 * d.bw_frac),
           fmt(b[15], 32, "%.0f", 100.0 * d.compute_frac), note);
}

/* -------------------------------------------------------------------- CSV */

static const char csv_header[] =
    "layer,set,role,cin,cout,k,stride,groups,h,w,batch,experts,prec,dtype,layout,epilogue,routing,select,method,"
    "algo_run,status,plain_us,plain_p10_us,plain_p90_us,graph_us,graph_p10_us,graph_p90_us,host_us,route_us,"
    "aggregate_us,gather_us,conv_us,epilogue_us,forward_us,static_plain_us,static_graph_us,ratio_plain,ratio_graph,"
    "macs,bytes,gbps,tflops,bw_frac,compute_frac,floor_us,x_floor,workspace_bytes,sets,device,driver,cuda_runtime,"
    "cudnn,date,note";

static void csv_text(FILE *f, const char *s)
{
    if (strpbrk(s, ",\"\n") == NULL) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; ++s) {
        if (*s == '"') fputc('"', f);
        fputc(*s == '\n' ? ' ' : *s, f);
    }
    fputc('"', f);
}

static void csv_num(FILE *f, const char *format, double v)
{
    fputc(',', f);
    if (!isnan(v) && !isinf(v)) fprintf(f, format, v);
}

static void csv_row(const bench_report *r, const bench_row *row)
{
    FILE *f = r->csv;
    const bench_layer *l = row->layer;
    const derived d = derive(r, row);
    csv_text(f, l->name);
    fputc(',', f);
    csv_text(f, l->set);
    fputc(',', f);
    csv_text(f, l->role);
    fprintf(f, ",%d,%d,%d,%d,%d,%d,%d,%d,%d,%s,%s,%s,%s,%s,%s,%s,", l->cin, l->cout, l->k, l->stride, l->groups, l->h,
            l->w, row->batch, row->experts, bench_prec_name(r->dtype_id, row->math), r->dtype, r->layout, r->epilogue,
            r->routing, r->select, row->method);
    csv_text(f, row->algo_run);
    fprintf(f, ",%s", row->status);
    const int ok = row->ok;
    csv_num(f, "%.3f", ok && row->plain.n ? row->plain.median : NAN);
    csv_num(f, "%.3f", ok && row->plain.n ? row->plain.p10 : NAN);
    csv_num(f, "%.3f", ok && row->plain.n ? row->plain.p90 : NAN);
    csv_num(f, "%.3f", ok && row->graph.n ? row->graph.median : NAN);
    csv_num(f, "%.3f", ok && row->graph.n ? row->graph.p10 : NAN);
    csv_num(f, "%.3f", ok && row->graph.n ? row->graph.p90 : NAN);
    csv_num(f, "%.3f", ok ? row->host_us : NAN);
    static const cc_phase order[] = {CC_PHASE_ROUTE, CC_PHASE_AGGREGATE, CC_PHASE_GATHER,
                                     CC_PHASE_CONV,  CC_PHASE_EPILOGUE,  CC_PHASE_FORWARD};
    for (int i = 0; i < 6; ++i) csv_num(f, "%.3f", ok ? row->phase_us[order[i]] : NAN);
    csv_num(f, "%.3f", row->static_plain_us);
    csv_num(f, "%.3f", row->static_graph_us);
    csv_num(f, "%.4f", d.ratio_plain);
    csv_num(f, "%.4f", d.ratio_graph);
    fprintf(f, ",%llu,%llu", (unsigned long long)row->macs, (unsigned long long)row->bytes);
    csv_num(f, "%.2f", d.gbps);
    csv_num(f, "%.4f", d.tflops);
    csv_num(f, "%.4f", d.bw_frac);
    csv_num(f, "%.4f", d.compute_frac);
    csv_num(f, "%.3f", d.floor_us);
    csv_num(f, "%.3f", d.x_floor);
    fprintf(f, ",%zu,%d,", row->workspace_bytes, row->sets);
    csv_text(f, r->env.device_name);
    fputc(',', f);
    csv_text(f, r->env.driver);
    fprintf(f, ",%d,%zu,%s,", r->env.cuda_runtime, r->env.cudnn, r->env.date);
    csv_text(f, row->note);
    fputc('\n', f);
    fflush(f);
}

int bench_csv_open(bench_report *r, const char *path)
{
    r->csv = fopen(path, "w");
    if (r->csv == NULL) return -1;
    fprintf(r->csv, "%s\n", csv_header);
    return 0;
}

void bench_csv_close(bench_report *r)
{
    if (r->csv) fclose(r->csv);
    r->csv = NULL;
}

int bench_report_add(bench_report *r, const bench_row *row)
{
    print_row(r, row);
    fflush(stdout);
    if (r->csv) csv_row(r, row);
    if (r->count == r->capacity) {
        const int cap = r->capacity ? 2 * r->capacity : 64;
        bench_row *grown = realloc(r->rows, sizeof *grown * (size_t)cap);
        if (grown == NULL) return -1;
        r->rows = grown;
        r->capacity = cap;
    }
    r->rows[r->count++] = *row;
    return 0;
}

void bench_report_free(bench_report *r)
{
    bench_csv_close(r);
    free(r->rows);
    r->rows = NULL;
    r->count = r->capacity = 0;
}

/* ------------------------------------------------------------------- JSON */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; ++s) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, const char *key, const char *format, double v, int comma)
{
    fprintf(f, "\"%s\": ", key);
    if (isnan(v) || isinf(v))
        fputs("null", f);
    else
        fprintf(f, format, v);
    if (comma) fputs(", ", f);
}

static void json_kv(FILE *f, const char *key, const char *value, int comma)
{
    fprintf(f, "\"%s\": ", key);
    json_str(f, value);
    if (comma) fputs(", ", f);
}

static void json_stats(FILE *f, const char *key, const bench_stats *s, int ok)
{
    fprintf(f, "\"%s\": ", key);
    if (!ok || s->n == 0) {
        fputs("null, ", f);
        return;
    }
    fprintf(f, "{\"median\": %.3f, \"p10\": %.3f, \"p90\": %.3f, \"min\": %.3f, \"max\": %.3f, \"n\": %d}, ", s->median,
            s->p10, s->p90, s->min, s->max, s->n);
}

int bench_json_write(const bench_report *r, const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) return -1;
    const bench_env *e = &r->env;
    fprintf(f, "{\n  \"tool\": \"condconv-bench\", \"condconv_version\": %d, ", e->condconv);
    json_kv(f, "date", e->date, 1);
    json_kv(f, "command", e->command, 0);
    fprintf(f, ",\n  \"device\": {");
    json_kv(f, "name", e->device_name, 1);
    fprintf(f,
            "\"gpu\": %s, \"compute_capability\": \"%d.%d\", \"sm_count\": %d, \"l2_bytes\": %zu, "
            "\"memory_bytes\": %zu, ",
            e->gpu ? "true" : "false", e->cc_major, e->cc_minor, e->sm_count, e->l2_bytes, e->mem_bytes);
    json_kv(f, "driver", e->driver, 1);
    fprintf(f, "\"cuda_driver_api\": %d, \"cuda_runtime\": %d, \"cudnn\": %zu, \"cublas\": %d},\n", e->cuda_driver,
            e->cuda_runtime, e->cudnn, e->cublas);
    fprintf(f, "  \"options\": {");
    json_kv(f, "dtype", r->dtype, 1);
    json_kv(f, "layout", r->layout, 1);
    json_kv(f, "routing", r->routing, 1);
    json_kv(f, "epilogue", r->epilogue, 1);
    json_kv(f, "select", r->select, 0);
    fprintf(f, "},\n  \"ceilings\": ");
    if (r->ceilings.measured)
        fprintf(f,
                "{\"copy_gbps\": %.1f, \"copy_bytes\": %zu, \"sgemm_tflops\": %.2f, \"tf32_tflops\": %.2f, "
                "\"f16_tflops\": %.2f, \"gemm_size\": %d}",
                r->ceilings.copy_gbps, r->ceilings.copy_bytes, r->ceilings.sgemm_tflops, r->ceilings.tf32_tflops,
                r->ceilings.f16_tflops, r->ceilings.gemm_size);
    else
        fputs("null", f);
    fprintf(f, ",\n  \"rows\": [");
    for (int i = 0; i < r->count; ++i) {
        const bench_row *row = &r->rows[i];
        const bench_layer *l = row->layer;
        const derived d = derive(r, row);
        fprintf(f, "%s\n    {", i ? "," : "");
        json_kv(f, "layer", l->name, 1);
        json_kv(f, "set", l->set, 1);
        json_kv(f, "role", l->role, 1);
        fprintf(f,
                "\"cin\": %d, \"cout\": %d, \"k\": %d, \"stride\": %d, \"groups\": %d, \"h\": %d, \"w\": %d, "
                "\"batch\": %d, \"experts\": %d, ",
                l->cin, l->cout, l->k, l->stride, l->groups, l->h, l->w, row->batch, row->experts);
        json_kv(f, "prec", bench_prec_name(r->dtype_id, row->math), 1);
        json_kv(f, "method", row->method, 1);
        json_kv(f, "algo_run", row->algo_run, 1);
        json_kv(f, "status", row->status, 1);
        json_stats(f, "plain_us", &row->plain, row->ok);
        json_stats(f, "graph_us", &row->graph, row->ok);
        json_num(f, "host_us", "%.3f", row->ok ? row->host_us : NAN, 1);
        fprintf(f, "\"phases_us\": {");
        static const char *names[CC_PHASE_COUNT] = {"forward", "route", "aggregate", "gather", "conv", "epilogue"};
        for (int p = 0; p < CC_PHASE_COUNT; ++p)
            json_num(f, names[p], "%.3f", row->ok ? row->phase_us[p] : NAN, p + 1 < CC_PHASE_COUNT);
        fprintf(f, "}, ");
        json_num(f, "static_plain_us", "%.3f", row->static_plain_us, 1);
        json_num(f, "static_graph_us", "%.3f", row->static_graph_us, 1);
        json_num(f, "ratio_plain", "%.4f", d.ratio_plain, 1);
        json_num(f, "ratio_graph", "%.4f", d.ratio_graph, 1);
        fprintf(f, "\"macs\": %llu, \"bytes\": %llu, ", (unsigned long long)row->macs, (unsigned long long)row->bytes);
        json_num(f, "gbps", "%.2f", d.gbps, 1);
        json_num(f, "tflops", "%.4f", d.tflops, 1);
        json_num(f, "bw_frac", "%.4f", d.bw_frac, 1);
        json_num(f, "compute_frac", "%.4f", d.compute_frac, 1);
        json_num(f, "floor_us", "%.3f", d.floor_us, 1);
        json_num(f, "x_floor", "%.3f", d.x_floor, 1);
        fprintf(f, "\"workspace_bytes\": %zu, \"sets\": %d, ", row->workspace_bytes, row->sets);
        json_kv(f, "note", row->note, 0);
        fputc('}', f);
    }
    fprintf(f, "\n  ]\n}\n");
    const int bad = ferror(f);
    return fclose(f) != 0 || bad ? -1 : 0;
}
