/* Helpers shared by the test programs: a seeded RNG, random layers,
 * element-wise comparison that never lets a NaN pass, and expectations that
 * count failures instead of stopping at the first. Exit codes: 0 pass,
 * 1 fail, 77 skip (CTest SKIP_RETURN_CODE). */
#ifndef CONDCONV_TEST_UTIL_H
#define CONDCONV_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "condconv.h"

#define TU_SKIP 77

extern int tu_failures;

/* Counts a failure and prints where and why; the test goes on. */
#define EXPECT(cond, ...)                                                                                              \
    do {                                                                                                               \
        if (!(cond)) tu_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                                                  \
    } while (0)
/* A call that must succeed; prints the library's message if it does not. */
#define EXPECT_OK(call)             tu_expect_status(__FILE__, __LINE__, #call, (call), CONDCONV_STATUS_SUCCESS)
#define EXPECT_STATUS(call, status) tu_expect_status(__FILE__, __LINE__, #call, (call), (status))

void tu_fail(const char *file, int line, const char *cond, const char *fmt, ...);
int tu_expect_status(const char *file, int line, const char *call, condconv_status got, condconv_status want);
/* 0 if no failures, else 1; prints a summary line with the test's name. */
int tu_finish(const char *name);

/* splitmix64 stream; the seed comes from CONDCONV_TEST_SEED if set, else the
 * clock, and is printed so a failure can be replayed. */
uint64_t tu_seed_from_env(void);
void tu_rng_seed(uint64_t seed);
/* How many random cases to run: CONDCONV_TEST_CASES if set (the device
 * check lowers it under compute-sanitizer), else `default_cases`. */
int tu_case_count(int default_cases);
uint64_t tu_rng_u64(void);
int tu_rng_int(int lo, int hi); /* inclusive */
float tu_rng_float(float lo, float hi);
void tu_fill_uniform(float *p, size_t n, float lo, float hi);
void tu_fill_nan(float *p, size_t n);
/* Bit-for-bit equality of n bytes, for "wrote nothing" and exact-conversion
 * checks: a NaN poison must still be the same NaN and -0 must stay -0, which
 * == on the values cannot tell. */
int tu_same_bytes(const void *a, const void *b, size_t n);

/* A random layer and its parameters, host memory. */
typedef struct tu_layer_spec {
    int cin, cout, kh, kw, stride_h, stride_w, dil_h, dil_w, groups;
    condconv_padding_mode pad_mode;
    int pad_h, pad_w;
    int experts, has_bias;
    condconv_routing routing;
    float temperature;
    condconv_activation activation;
} tu_layer_spec;

typedef struct tu_params {
    float *experts, *expert_bias, *routing_weight, *routing_bias;
    size_t experts_n, bias_n, routing_weight_n, routing_bias_n;
} tu_params;

/* A dense k x k layer: stride, dilation and groups 1, explicit padding 0,
 * no bias, external routing, no activation; tests change what they need. */
tu_layer_spec tu_basic_spec(int cin, int cout, int k, int experts);

/* Random specs. TU_ANY mixes dense, grouped, depthwise and pointwise
 * layers with strides 1-3, dilation 1-2, explicit or "same" padding, E from
 * 1 to 32, every routing mode and activation; the others pin the kind.
 * Kernel size, stride, dilation and explicit padding are drawn per axis and
 * differ between h and w in a good share of the draws (test_util_draws). */
typedef enum tu_domain { TU_ANY, TU_DENSE, TU_GROUPED, TU_DEPTHWISE, TU_POINTWISE } tu_domain;
tu_layer_spec tu_random_spec(tu_domain domain, int max_per_group, int max_kernel);

/* Descriptor for a spec (caller destroys it). Exits the test on failure. */
condconv_layer_desc_t tu_make_desc(const tu_layer_spec *spec);
/* Random parameters for a spec, scaled so outputs stay O(1). */
void tu_make_params(const tu_layer_spec *spec, tu_params *params);
condconv_params tu_params_view(const tu_params *params);
void tu_free_params(tu_params *params);
/* One line describing a spec, for failure messages. */
const char *tu_spec_string(const tu_layer_spec *spec);

/* Compares got with want element-wise: |got - want| <= atol + rtol * scale_i,
 * scale_i = |want_i|, or mag[i] when mag is not NULL (the magnitude of the
 * sum that produced want_i). Prints the first few mismatches. NaN or Inf in
 * got never passes. Returns the number of mismatches. */
size_t tu_compare(const char *what, const float *got, const float *want, const float *mag, size_t n, double atol,
                  double rtol);
/* sqrt(sum (got - want)^2 / sum want^2) (the absolute L2 when want is 0); NaN in got gives NaN. */
double tu_relative_l2(const float *got, const float *want, size_t n);
/* The relative L2 check is an aggregate over many outputs. Below
 * TU_L2_MIN_ELEMS outputs one output whose terms cancel dominates it (a CI
 * run drew a single bf16 output at 1.1% relative error, well inside its
 * element bound; a clean-clone run drew 54 f16 outputs of a 1-channel 1x1
 * layer with ReLU, half of them zero, at 0.71% with every element inside
 * its bound), and the element check -- each output bounded by the
 * magnitude of its terms, NaN never passing -- is the meaningful one. */
#define TU_L2_MIN_ELEMS 64
static inline int tu_l2_within(double l2, double l2_max, size_t n) { return n < TU_L2_MIN_ELEMS || l2 <= l2_max; }

/* Half-precision and channels-last helpers (condconv_convert does the
 * rounding). */
size_t tu_dtype_size(condconv_dtype dtype);
/* p rounded to the dtype in place: the values a layer of that dtype holds. */
void tu_round_to_dtype(float *p, size_t n, condconv_dtype dtype);
/* A malloc'd copy of n floats in the dtype (NULL for p == NULL). */
void *tu_to_dtype(const float *p, size_t n, condconv_dtype dtype);
/* The parameters rounded to the dtype in place (what the reference then
 * computes with), and malloc'd copies in the dtype, in condconv_params
 * order (experts, expert bias, routing weight, routing bias; NULL where
 * absent), for a layer of that dtype. */
void tu_params_in_dtype(tu_params *params, condconv_dtype dtype, void *out[4]);
/* [N][C][plane] -> [N][plane][C] (to_nhwc) or back. */
void tu_transpose(const float *src, float *dst, int n, int c, size_t plane, int to_nhwc);
/* Tolerances for a layer's output against tu_reference on the dtype's
 * values: |got - want| <= atol + rtol * mag, and the relative L2 bound
 * (tests/test_gpu_forward.c derives them). */
void tu_dtype_tolerance(condconv_dtype dtype, double *atol, double *rtol, double *l2_max);

#endif
