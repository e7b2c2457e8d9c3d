/* Shared test helpers (see test_util.h). */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int tu_failures = 0;
static uint64_t tu_state = 0x9e3779b97f4a7c15ull;

void tu_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    ++tu_failures;
    fprintf(stderr, "FAIL %s:%d: %s: ", file, line, cond);
    va_list args;
    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);
    fputc('\n', stderr);
}

int tu_expect_status(const char *file, int line, const char *call, condconv_status got, condconv_status want)
{
    if (got == want) return 1;
    tu_fail(file, line, call, "returned %s, expected %s (last error: %s)", condconv_status_string(got),
            condconv_status_string(want), condconv_last_error());
    return 0;
}

int tu_finish(const char *name)
{
    if (tu_failures) {
        printf("%s: %d failure(s)\n", name, tu_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

uint64_t tu_seed_from_env(void)
{
    const char *env = getenv("CONDCONV_TEST_SEED");
    uint64_t seed;
    if (env && *env) {
        seed = strtoull(env, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec;
    }
    printf("seed: CONDCONV_TEST_SEED=%llu\n", (unsigned long long)seed);
    tu_rng_seed(seed);
    return seed;
}

void tu_rng_seed(uint64_t seed) { tu_state = seed; }

int tu_case_count(int default_cases)
{
    const char *env = getenv("CONDCONV_TEST_CASES");
    const long n = env && *env ? strtol(env, NULL, 10) : 0;
    return n > 0 && n <= INT_MAX ? (int)n : default_cases;
}

uint64_t tu_rng_u64(void)
{
    uint64_t z = (tu_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int tu_rng_int(int lo, int hi) { return lo + (int)(tu_rng_u64() % (uint64_t)(hi - lo + 1)); }

float tu_rng_float(float lo, float hi)
{
    const double u = (double)(tu_rng_u64() >> 11) * (1.0 / 9007199254740992.0);
    return (float)(lo + (hi - lo) * u);
}

void tu_fill_uniform(float *p, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; ++i) p[i] = tu_rng_float(lo, hi);
}

int tu_same_bytes(const void *a, const void *b, size_t n) { return memcmp(a, b, n) == 0; }

void tu_fill_nan(float *p, size_t n)
{
    for (size_t i = 0; i < n; ++i) p[i] = NAN;
}

#define TU_REQUIRE(call)                                                                                               \
    do {                                                                                                               \
        condconv_status s_ = (call);                                                                                   \
        if (s_ != CONDCONV_STATUS_SUCCESS) {                                                                           \
            fprintf(stderr, "FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, condconv_last_error());                \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

tu_layer_spec tu_basic_spec(int cin, int cout, int k, int experts)
{
    tu_layer_spec s = {0};
    s.cin = cin;
    s.cout = cout;
    s.kh = s.kw = k;
    s.stride_h = s.stride_w = s.dil_h = s.dil_w = s.groups = 1;
    s.pad_mode = CONDCONV_PADDING_EXPLICIT;
    s.experts = experts;
    s.routing = CONDCONV_ROUTING_EXTERNAL;
    s.temperature = 1.0f;
    return s;
}

tu_layer_spec tu_random_spec(tu_domain domain, int max_per_group, int max_kernel)
{
    tu_layer_spec s = {0};
    const tu_domain kind = domain == TU_ANY ? (tu_domain)tu_rng_int(TU_DENSE, TU_POINTWISE) : domain;
    s.groups = kind == TU_GROUPED ? tu_rng_int(2, 4) : 1;
    s.cin = s.groups * tu_rng_int(1, max_per_group);
    s.cout = s.groups * tu_rng_int(1, max_per_group);
    if (kind == TU_DEPTHWISE) {
        s.cin = s.groups = tu_rng_int(1, 4 * max_per_group);
        s.cout = s.cin * (tu_rng_int(0, 3) == 0 ? 2 : 1); /* channel multiplier 1, sometimes 2 */
    }
    if (kind == TU_POINTWISE) {
        s.kh = s.kw = 1;
    } else if (tu_rng_int(0, 3) == 0) { /* sometimes non-square */
        s.kh = tu_rng_int(1, max_kernel);
        s.kw = tu_rng_int(1, max_kernel);
    } else {
        s.kh = s.kw = tu_rng_int(1, max_kernel);
    }
    s.stride_h = tu_rng_int(1, 2);
    s.stride_w = tu_rng_int(0, 3) == 0 ? tu_rng_int(1, 3) : s.stride_h;
    /* Dilation 1 or 2 per axis, a quarter of the draws apart (as the stride): a reference or
     * kernel that swaps dil_h and dil_w, or uses one for both, must meet a layer that shows it. */
    s.dil_h = tu_rng_int(0, 3) == 0 ? 2 : 1;
    s.dil_w = tu_rng_int(0, 3) == 0 ? 3 - s.dil_h : s.dil_h;
    if (tu_rng_int(0, 2) == 0) {
        s.pad_mode = CONDCONV_PADDING_SAME;
    } else {
        s.pad_mode = CONDCONV_PADDING_EXPLICIT;
        s.pad_h = kind == TU_POINTWISE && tu_rng_int(0, 1) ? 0 : tu_rng_int(0, s.kh / 2 + 1);
        s.pad_w = kind == TU_POINTWISE && tu_rng_int(0, 1) ? 0 : tu_rng_int(0, s.kw / 2 + 1);
    }
    static const int experts[] = {1, 2, 3, 4, 5, 8, 16, 32};
    s.experts = experts[tu_rng_int(0, 7)];
    s.has_bias = tu_rng_int(0, 1);
    s.routing = (condconv_routing)tu_rng_int(0, 2);
    s.temperature = s.routing == CONDCONV_ROUTING_SOFTMAX ? tu_rng_float(0.3f, 30.0f) : 1.0f;
    s.activation = (condconv_activation)tu_rng_int(0, 2);
    return s;
}

condconv_layer_desc_t tu_make_desc(const tu_layer_spec *s)
{
    condconv_layer_desc_t d;
    TU_REQUIRE(condconv_layer_desc_create(&d));
    TU_REQUIRE(condconv_layer_desc_set_conv(d, s->cin, s->cout, s->kh, s->kw, s->stride_h, s->stride_w, s->dil_h,
                                            s->dil_w, s->groups));
    TU_REQUIRE(condconv_layer_desc_set_padding(d, s->pad_mode, s->pad_h, s->pad_w));
    TU_REQUIRE(condconv_layer_desc_set_experts(d, s->experts, s->has_bias));
    TU_REQUIRE(condconv_layer_desc_set_routing(d, s->routing, s->temperature));
    TU_REQUIRE(condconv_layer_desc_set_activation(d, s->activation));
    return d;
}

static float *alloc_floats(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (p == NULL) {
        fprintf(stderr, "FATAL: out of memory for %zu floats\n", n);
        exit(1);
    }
    return p;
}

void tu_make_params(const tu_layer_spec *s, tu_params *p)
{
    memset(p, 0, sizeof *p);
    const size_t fan_in = (size_t)(s->cin / s->groups) * (size_t)s->kh * (size_t)s->kw;
    p->experts_n = (size_t)s->experts * (size_t)s->cout * fan_in;
    p->experts = alloc_floats(p->experts_n);
    /* Uniform(-b, b) with b = 1/sqrt(fan_in), as PyTorch initialises conv weights. */
    const float bound = 1.0f / sqrtf((float)fan_in);
    tu_fill_uniform(p->experts, p->experts_n, -bound, bound);
    if (s->has_bias) {
        p->bias_n = (size_t)s->experts * (size_t)s->cout;
        p->expert_bias = alloc_floats(p->bias_n);
        tu_fill_uniform(p->expert_bias, p->bias_n, -0.5f, 0.5f);
    }
    if (s->routing != CONDCONV_ROUTING_EXTERNAL) {
        p->routing_weight_n = (size_t)s->experts * (size_t)s->cin;
        p->routing_bias_n = (size_t)s->experts;
        p->routing_weight = alloc_floats(p->routing_weight_n);
        p->routing_bias = alloc_floats(p->routing_bias_n);
        const float rb = 2.0f / sqrtf((float)s->cin);
        tu_fill_uniform(p->routing_weight, p->routing_weight_n, -rb, rb);
        tu_fill_uniform(p->routing_bias, p->routing_bias_n, -0.5f, 0.5f);
    }
}

condconv_params tu_params_view(const tu_params *p)
{
    condconv_params v = {p->experts, p->expert_bias, p->routing_weight, p->routing_bias};
    return v;
}

void tu_free_params(tu_params *p)
{
    free(p->experts);
    free(p->expert_bias);
    free(p->routing_weight);
    free(p->routing_bias);
    memset(p, 0, sizeof *p);
}

const char *tu_spec_string(const tu_layer_spec *s)
{
    static char buf[256];
    static const char *routing[] = {"sigmoid", "softmax", "external"};
    static const char *act[] = {"none", "relu", "silu"};
    snprintf(buf, sizeof buf,
             "cin=%d cout=%d k=%dx%d stride=%dx%d dil=%dx%d groups=%d pad=%s %dx%d E=%d bias=%d routing=%s(t=%g) "
             "act=%s",
             s->cin, s->cout, s->kh, s->kw, s->stride_h, s->stride_w, s->dil_h, s->dil_w, s->groups,
             s->pad_mode == CONDCONV_PADDING_SAME ? "same" : "explicit", s->pad_h, s->pad_w, s->experts, s->has_bias,
             routing[s->routing], (double)s->temperature, act[s->activation]);
    return buf;
}

size_t tu_compare(const char *what, const float *got, const float *want, const float *mag, size_t n, double atol,
                  double rtol)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
        const double g = got[i], w = want[i];
        const double scale = mag ? (double)mag[i] : fabs(w);
        const double err = fabs(g - w);
        const double bound = atol + rtol * scale;
        if (!isfinite(g) || !isfinite(w) || !(err <= bound)) {
            if (bad < 5)
                fprintf(stderr, "  %s[%zu]: got %.9g, want %.9g (|diff| %.3g > bound %.3g)\n", what, i, g, w, err,
                        bound);
            ++bad;
        }
    }
    if (bad) fprintf(stderr, "  %s: %zu of %zu elements out of tolerance\n", what, bad, n);
    return bad;
}

double tu_relative_l2(const float *got, const float *want, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; ++i) {
        const double d = (double)got[i] - (double)want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

size_t tu_dtype_size(condconv_dtype dtype) { return dtype == CONDCONV_DTYPE_F32 ? 4 : 2; }

void tu_round_to_dtype(float *p, size_t n, condconv_dtype dtype)
{
    if (dtype == CONDCONV_DTYPE_F32 || n == 0 || p == NULL) return;
    void *tmp = malloc(n * tu_dtype_size(dtype));
    if (tmp == NULL || condconv_convert(CONDCONV_DTYPE_F32, p, dtype, tmp, n) != CONDCONV_STATUS_SUCCESS ||
        condconv_convert(dtype, tmp, CONDCONV_DTYPE_F32, p, n) != CONDCONV_STATUS_SUCCESS)
        tu_fail(__FILE__, __LINE__, "tu_round_to_dtype", "conversion failed");
    free(tmp);
}

void *tu_to_dtype(const float *p, size_t n, condconv_dtype dtype)
{
    if (p == NULL) return NULL;
    void *out = malloc(n * tu_dtype_size(dtype) + 1);
    if (out == NULL || condconv_convert(CONDCONV_DTYPE_F32, p, dtype, out, n) != CONDCONV_STATUS_SUCCESS)
        tu_fail(__FILE__, __LINE__, "tu_to_dtype", "conversion failed");
    return out;
}

void tu_transpose(const float *src, float *dst, int n, int c, size_t plane, int to_nhwc)
{
    for (int i = 0; i < n; ++i)
        for (int ch = 0; ch < c; ++ch)
            for (size_t q = 0; q < plane; ++q) {
                const size_t nchw = ((size_t)i * c + ch) * plane + q, nhwc = ((size_t)i * plane + q) * c + ch;
                if (to_nhwc)
                    dst[nhwc] = src[nchw];
                else
                    dst[nchw] = src[nhwc];
            }
}

void tu_dtype_tolerance(condconv_dtype dtype, double *atol, double *rtol, double *l2_max)
{
    *atol = dtype == CONDCONV_DTYPE_F32 ? 1e-6 : dtype == CONDCONV_DTYPE_F16 ? 1e-5 : 1e-4;
    *rtol = dtype == CONDCONV_DTYPE_F32 ? 1e-5 : dtype == CONDCONV_DTYPE_F16 ? 1.5e-3 : 1.2e-2;
    *l2_max = dtype == CONDCONV_DTYPE_F32 ? 1e-5 : dtype == CONDCONV_DTYPE_F16 ? 1e-3 : 1e-2;
}

void tu_params_in_dtype(tu_params *p, condconv_dtype dtype, void *out[4])
{
    tu_round_to_dtype(p->experts, p->experts_n, dtype);
    tu_round_to_dtype(p->expert_bias, p->bias_n, dtype);
    tu_round_to_dtype(p->routing_weight, p->routing_weight_n, dtype);
    tu_round_to_dtype(p->routing_bias, p->routing_bias_n, dtype);
    out[0] = tu_to_dtype(p->experts, p->experts_n, dtype);
    out[1] = tu_to_dtype(p->expert_bias, p->bias_n, dtype);
    out[2] = tu_to_dtype(p->routing_weight, p->routing_weight_n, dtype);
    out[3] = tu_to_dtype(p->routing_bias, p->routing_bias_n, dtype);
}
