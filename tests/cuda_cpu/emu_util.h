/* Helpers for the CPU execution layer's kernel tests: device buffers with
 * guard zones (a kernel writing one element too far fails even without
 * ASan), uploads and downloads through the emulated runtime, the comparison
 * of float results with a double-precision reference, in which NaN never
 * passes, a seeded random stream and failure counting. Nothing here needs
 * the library, so the kernel tests build from the kernels and the layer
 * alone (fast rebuilds for the bug-injection script). With
 * CC_EMU_STOP_AT_FIRST_FAILURE set, the first failure ends the program. */
#ifndef CONDCONV_EMU_UTIL_H
#define CONDCONV_EMU_UTIL_H

#include <stddef.h>

#include "cuda_cpu/hooks.h"

extern int eu_failures;

/* Counts a failure and prints where and why; the test goes on. */
#define EU_EXPECT(cond, ...)                                                                                           \
    do {                                                                                                               \
        if (!(cond)) eu_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                                  \
    } while (0)
void eu_fail(const char *file, int line, const char *cond, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* 0 if no failures, else 1; prints a summary line. */
int eu_finish(const char *name);
/* The seed is CONDCONV_TEST_SEED if set, else the clock; it is printed. */
void eu_seed_from_env(void);
float eu_uniform(float lo, float hi);
/* Seconds on the monotonic clock, for a test's own phase timings. */
double eu_now(void);

/* Floats of guard zone before and after every buffer. */
#define EU_GUARD 16

/* n floats of device memory at `data`, `offset` floats into the allocation
 * after the leading guard: offset 1 makes data 4 bytes off a 16-byte
 * boundary (the kernels' scalar paths). */
typedef struct eu_buffer {
    float *alloc;
    float *data;
    size_t n;
    int offset;
} eu_buffer;

eu_buffer eu_buffer_make(size_t n, int offset);
void eu_buffer_free(eu_buffer *b);
void eu_upload(eu_buffer *b, const float *host);
void eu_download(const eu_buffer *b, float *host);
/* All NaN: an element the kernel should write and does not fails the comparison. */
void eu_poison(eu_buffer *b);
/* 1 when the guard zones are as written; else prints and counts a failure. */
int eu_guards_intact(const eu_buffer *b, const char *what);

/* Host arrays (exit on out of memory). */
float *eu_floats(size_t n);
double *eu_doubles(size_t n);
float *eu_random(size_t n, float lo, float hi);
/* The buffer's floats in a new host array (free it). */
float *eu_fetch(const eu_buffer *b);
/* 1 when all n floats are NaN (a refused launch left the poison). */
int eu_all_nan(const float *v, size_t n);

/* Run `rep` of a case that must give the same bits both times: 0 in block
 * index order under the case's grid cap (0: the kernels' own grids), 1 with
 * the blocks reversed under a cap of 4 (the grid-stride loops loop: a
 * different grid from run 0's, which the results must not depend on; fewer
 * blocks keep the run short, a block being 256 threads here).
 * eu_run_reset restores index order and the kernels' own grids. */
void eu_run_setup(int rep, int cap);
void eu_run_reset(void);
/* a and b bit for bit, else a failure: `output` of `what` is not deterministic. */
void eu_expect_same_bits(const char *what, const char *output, const float *a, const float *b, size_t n);

/* |got - want| <= atol + rtol * mag[i] for every element (mag NULL: |want|);
 * NaN or Inf in got fails. Counts one test failure if any element fails and
 * prints the first few. Returns the number of bad elements. */
size_t eu_compare(const char *what, const float *got, const double *want, const double *mag, size_t n, double atol,
                  double rtol);

/* A launcher's return value: cudaSuccess, else a failure naming it. */
#define EU_LAUNCH(call) eu_expect_launch((call), #call, __FILE__, __LINE__)
int eu_expect_launch(int err, const char *call, const char *file, int line);

/* Every kernel instance of kernels/<source>.cu was launched at least once. */
void eu_expect_all_launched(const char *source);

/* Runs this program again with the given arguments (argv[0] added;
 * NULL-terminated), its stdout and stderr captured into output (cap bytes,
 * NUL-terminated): for a failure that must end a process, in a child. 0 and
 * the child's wait status in *status, or -1 if it could not be run. */
int eu_run_self(char *const args[], char *output, size_t cap, int *status);
/* 2^-24: the unit roundoff of float. */
#define EU_U 5.9604644775390625e-08

#endif
