/* Shared test helpers (see test_util.h). */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

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

void tu_fill_nan(float *p, size_t n)
{
    for (size_t i = 0; i < n; ++i) p[i] = NAN;
}

#define TU_REQUIRE(call)                                                                                      \
    do {                                                                                                      \
        condconv_status s_ = (call);                                                                          \
        if (s_ != CONDCONV_STATUS_SUCCESS) {                                                                  \
            fprintf(stderr, "FATAL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, condconv_last_error());     \
            exit(1);                                                                                          \
        }                                                                                                     \
    } while (0)

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
