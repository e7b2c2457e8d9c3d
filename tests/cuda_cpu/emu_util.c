/* Helpers for the CPU execution layer's kernel tests (see emu_util.h). */
#define _POSIX_C_SOURCE 200809L
#include "emu_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime.h>

int eu_failures = 0;
static uint64_t eu_state = 0x9e3779b97f4a7c15ull;

void eu_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    ++eu_failures;
    fprintf(stderr, "FAIL %s:%d: %s: ", file, line, cond);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
    if (getenv("CC_EMU_STOP_AT_FIRST_FAILURE") != NULL) exit(1);
}

int eu_finish(const char *name)
{
    if (eu_failures) {
        printf("%s: %d failure(s)\n", name, eu_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

double eu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void eu_seed_from_env(void)
{
    const char *env = getenv("CONDCONV_TEST_SEED");
    if (env && *env) {
        eu_state = strtoull(env, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        eu_state = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec;
    }
    printf("seed: CONDCONV_TEST_SEED=%llu\n", (unsigned long long)eu_state);
}

/* splitmix64, as tests/test_util.c. */
float eu_uniform(float lo, float hi)
{
    uint64_t z = (eu_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const double u = (double)(z >> 11) * (1.0 / 9007199254740992.0);
    return (float)(lo + (hi - lo) * u);
}

/* The guard pattern: about 1000.28, finite, so that a kernel that reads one
 * past the end and writes back what it computed from it changes it (a NaN
 * would come back as the same NaN). */
static const unsigned int kGuardBits = 0x447a1234u;

static void check_cuda(cudaError_t err, const char *call)
{
    if (err == cudaSuccess) return;
    fprintf(stderr, "FATAL: %s: %s\n", call, cudaGetErrorString(err));
    exit(1);
}

static void fill_guard(float *dev, size_t n)
{
    unsigned int host[EU_GUARD + 4];
    for (size_t i = 0; i < n; ++i) host[i] = kGuardBits;
    check_cuda(cudaMemcpy(dev, host, n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy(guard)");
}

eu_buffer eu_buffer_make(size_t n, int offset)
{
    eu_buffer b;
    void *p = NULL;
    check_cuda(cudaMalloc(&p, (n + 2 * (size_t)EU_GUARD + 4) * sizeof(float)), "cudaMalloc");
    b.alloc = p;
    b.offset = offset;
    b.n = n;
    b.data = b.alloc + EU_GUARD + offset;
    fill_guard(b.alloc, EU_GUARD + (size_t)offset);
    fill_guard(b.data + n, EU_GUARD + 4 - (size_t)offset);
    eu_poison(&b);
    return b;
}

void eu_buffer_free(eu_buffer *b)
{
    check_cuda(cudaFree(b->alloc), "cudaFree");
    memset(b, 0, sizeof *b);
}

void eu_upload(eu_buffer *b, const float *host)
{
    if (b->n) check_cuda(cudaMemcpy(b->data, host, b->n * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy(up)");
}

void eu_download(const eu_buffer *b, float *host)
{
    if (b->n) check_cuda(cudaMemcpy(host, b->data, b->n * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy(down)");
}

void eu_poison(eu_buffer *b)
{
    if (b->n) check_cuda(cudaMemset(b->data, 0xff, b->n * sizeof(float)), "cudaMemset");
}

int eu_guards_intact(const eu_buffer *b, const char *what)
{
    const size_t before = EU_GUARD + (size_t)b->offset, after = EU_GUARD + 4 - (size_t)b->offset;
    unsigned int host[2 * EU_GUARD + 8];
    check_cuda(cudaMemcpy(host, b->alloc, before * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy(guard)");
    check_cuda(cudaMemcpy(host + before, b->data + b->n, after * sizeof(float), cudaMemcpyDeviceToHost),
               "cudaMemcpy(guard)");
    for (size_t i = 0; i < before + after; ++i)
        if (host[i] != kGuardBits) {
            EU_EXPECT(0, "%s: the kernel wrote outside its %zu elements (guard word %zu %s the data)", what, b->n,
                      i < before ? before - i : i - before, i < before ? "before" : "after");
            return 0;
        }
    return 1;
}

float *eu_floats(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (p == NULL) {
        fprintf(stderr, "FATAL: out of memory\n");
        exit(1);
    }
    return p;
}

double *eu_doubles(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    if (p == NULL) {
        fprintf(stderr, "FATAL: out of memory\n");
        exit(1);
    }
    return p;
}

float *eu_random(size_t n, float lo, float hi)
{
    float *p = eu_floats(n);
    for (size_t i = 0; i < n; ++i) p[i] = eu_uniform(lo, hi);
    return p;
}

size_t eu_compare(const char *what, const float *got, const double *want, const double *mag, size_t n, double atol,
                  double rtol)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
        const double g = got[i], w = want[i];
        const double bound = atol + rtol * (mag ? mag[i] : fabs(w));
        if (!isfinite(g) || !(fabs(g - w) <= bound)) {
            if (bad < 5)
                fprintf(stderr, "  %s[%zu]: got %.9g, want %.9g (|diff| %.3g > bound %.3g)\n", what, i, g, w,
                        fabs(g - w), bound);
            ++bad;
        }
    }
    EU_EXPECT(bad == 0, "%s: %zu of %zu elements out of tolerance", what, bad, n);
    return bad;
}

int eu_expect_launch(int err, const char *call, const char *file, int line)
{
    if (err == cudaSuccess) return 1;
    eu_fail(file, line, call, "returned %s", cudaGetErrorName((cudaError_t)err));
    return 0;
}

void eu_expect_all_launched(const char *source)
{
    const int missing = cc_cpu_report_unlaunched(source);
    EU_EXPECT(missing == 0, "%d kernel instance(s) of kernels/%s.cu were never launched by this sweep", missing,
              source);
}

int eu_run_self(char *const args[], char *output, size_t cap, int *status)
{
    char self[4096];
    const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    int fds[2];
    if (len <= 0 || cap == 0 || pipe(fds) != 0) return -1;
    self[len] = '\0';
    char *argv[16] = {self};
    int argc = 1;
    for (; args[argc - 1] != NULL && argc < 15; ++argc) argv[argc] = args[argc - 1];
    argv[argc] = NULL;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    extern char **environ;
    pid_t pid;
    const int spawned = posix_spawn(&pid, self, &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    size_t used = 0;
    ssize_t got;
    while ((got = read(fds[0], output + used, cap - 1 - used)) > 0) used += (size_t)got;
    output[used] = '\0';
    close(fds[0]);
    *status = 0;
    if (spawned != 0 || waitpid(pid, status, 0) != pid) return -1;
    return 0;
}

float *eu_fetch(const eu_buffer *b)
{
    float *h = eu_floats(b->n ? b->n : 1);
    eu_download(b, h);
    return h;
}

int eu_all_nan(const float *v, size_t n)
{
    for (size_t i = 0; i < n; ++i)
        if (!isnan(v[i])) return 0;
    return 1;
}

void eu_run_setup(int rep, int cap)
{
    cc_cpu_set_block_order(rep);
    cc_cpu_set_grid_cap(rep == 0 ? (unsigned)cap : 4u);
}

void eu_run_reset(void)
{
    cc_cpu_set_block_order(0);
    cc_cpu_set_grid_cap(0);
}

void eu_expect_same_bits(const char *what, const char *output, const float *a, const float *b, size_t n)
{
    EU_EXPECT(memcmp(a, b, n * sizeof(float)) == 0, "%s: %s differs between two runs (not deterministic)", what,
              output);
}
