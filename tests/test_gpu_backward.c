/* condconv_backward on the GPU against condconv_backward_cpu, the double
 * reference that tests/test_backward_cpu.c checks against finite
 * differences. The same program runs on the CPU execution layer as
 * test_emu_backward_api (tests/emu_tests.cmake, CC_EMU_TEST defined): the
 * library's host code (backward plans, workspace layout, cuDNN's backward
 * data and filter on the layer's emulated cuDNN) with the routing,
 * aggregation, gather and backward kernels run on the CPU; there it also
 * checks that nothing leaks. Without a GPU (and outside the layer) it
 * exits 77.
 *
 * Random layers (dense, grouped, depthwise, pointwise; strides, dilation,
 * explicit and asymmetric "same" padding; E from 1 to 32; sigmoid, softmax
 * with a temperature and external routing; bias or not; a fused SiLU, or
 * ReLU in f32, where the algorithm is mixture or AUTO) in f32, f16 and
 * bf16, NCHW and NHWC, with every gradient the layer can have requested,
 * then random subsets of them. Outputs and workspace are NaN-poisoned
 * before each run and the workspace is allocated exactly as large as asked
 * (the emulated cudaMalloc's guard zones stop a layout that under-counts).
 * Then:
 *   - determinism: a second run gives bitwise identical gradients, and
 *     condconv_backward_data + condconv_backward_params equal
 *     condconv_backward bit for bit;
 *   - x, dy and dx one element off 16 bytes (the staging through the
 *     workspace);
 *   - a CUDA graph capture and replay, and NOT_PREPARED for an unprepared
 *     shape inside a capture;
 *   - plan info: AUTO times every algorithm under MEASURE and takes the
 *     baseline under HEURISTIC; a forced algorithm is what runs; the
 *     opt-in non-deterministic mode takes cuDNN's non-deterministic
 *     algorithms (ranked first by the emulation) and is still correct;
 *   - bad calls: each refused with its status, and nothing written.
 * Every case runs through one algorithm: AUTO (by rule), cudnn_grouped,
 * mixture and folded_wgrad in turn; the fixed cases through each forced
 * (AUTO in cudnn_grouped's place, and no folded_wgrad, for a layer with an
 * activation).
 *
 * Tolerance, per gradient tensor: max |got - ref| <= tol * max |ref| (+ a
 * tiny floor), NaN never passing. f32: 5e-5 (f32 accumulation over sums of
 * up to a few thousand terms; the emulated cuDNN is exact then rounds once).
 * Half types: the GPU path rounds two intermediates to the dtype that the
 * double reference does not, each to half an ulp u (2^-11 for f16, 2^-8
 * for bf16): cudnn_grouped the per-sample filters W_b (dx) and the
 * per-sample filter gradients G_b (dW, dalpha, the routing); mixture
 * alpha_be dy_b (dx, dW), the stacked filter gradient (dW) and the stacked
 * forward z_be = W_e * x_b (dalpha); folded_wgrad only W_b (dx: its G_b
 * stays f32, so dW and dalpha carry f32 errors); on random data the error of a
 * sum of such products is about u times its typical magnitude, so 8u of the
 * tensor's largest element: 4e-3 (f16) and 3.2e-2 (bf16).
 * Plus, for what comes from dalpha_be = <W_e, G_b> = <z_be, dy_b>
 * (d_routing_in, the routing FC's gradients, the pool's share of dx), an
 * allowance for G_b's (or z's) rounding, which that dot product can expose
 * far beyond u |dalpha| when it cancels (one expert, few terms):
 * |error| <= u sum_k |W_ek| |G_bk| <= u A_be (and, for z,
 * u sum |z_be| |dy_b| <= u A_be too), A_be = sum_co (sum_p |dy_b,co,p|) (sum_rest |W_e,co,..|) since
 * |x| <= 1 (dalpha_allowance carries it through the routing's backward
 * with bounds for its derivatives: alpha (1 - alpha) <= 1/4, a softmax's
 * <= 2/T max_j, pooled |x| <= 1, and 8 as the safety factor). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_util.h"
#include "test_util.h"
#ifdef CC_EMU_TEST
#include "emu_util.h"
#endif

/* Host arrays. */
static float *floats(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (p == NULL) {
        fprintf(stderr, "FATAL: out of memory\n");
        exit(1);
    }
    return p;
}
static float *uniform(size_t n, float lo, float hi)
{
    float *p = floats(n);
    tu_fill_uniform(p, n, lo, hi);
    return p;
}

#define GRADS 6 /* dx, d_routing_in, d_experts, d_expert_bias, d_routing_weight, d_routing_bias */
static const char *const grad_names[GRADS] = {
    "dx", "d_routing_in", "d_experts", "d_expert_bias", "d_routing_weight", "d_routing_bias"};

static int backwards;

typedef struct bcase {
    tu_layer_spec s;
    tu_params p;
    condconv_dtype dtype;
    condconv_layout layout;
    condconv_layer_t layer;
    void *half_params[4];
    int n, h, w, ho, wo;
    size_t x_n, y_n, a_n;
    size_t count[GRADS]; /* elements of each gradient, 0 where the layer has none */
    double extra[GRADS]; /* absolute allowance for G_b's rounding through dalpha (dalpha_allowance) */
    void *x_host, *dy_host;
    float *alpha_host;
    /* Device inputs (16-byte aligned unless a test shifts them). */
    void *x_dev, *dy_dev;
    float *alpha_dev;
} bcase;

static void dalpha_allowance(bcase *c);

static size_t elem_of(const bcase *c, int g) { return g == 0 ? tu_dtype_size(c->dtype) : sizeof(float); }

static void make_case(condconv_context_t ctx, bcase *c, const tu_layer_spec *spec, condconv_dtype dtype,
                      condconv_layout layout, int n, int h, int w, condconv_bwd_algo algo)
{
    memset(c, 0, sizeof *c);
    c->s = *spec;
    c->dtype = dtype;
    c->layout = layout;
    c->n = n;
    c->h = h;
    c->w = w;
    tu_make_params(&c->s, &c->p);
    tu_params *p = &c->p;
    tu_round_to_dtype(p->experts, p->experts_n, dtype);
    tu_round_to_dtype(p->expert_bias, p->bias_n, dtype);
    tu_round_to_dtype(p->routing_weight, p->routing_weight_n, dtype);
    tu_round_to_dtype(p->routing_bias, p->routing_bias_n, dtype);
    c->half_params[0] = tu_to_dtype(p->experts, p->experts_n, dtype);
    c->half_params[1] = tu_to_dtype(p->expert_bias, p->bias_n, dtype);
    c->half_params[2] = tu_to_dtype(p->routing_weight, p->routing_weight_n, dtype);
    c->half_params[3] = tu_to_dtype(p->routing_bias, p->routing_bias_n, dtype);
    const condconv_params view = {c->half_params[0], c->half_params[1], c->half_params[2], c->half_params[3]};
    condconv_layer_desc_t desc = tu_make_desc(&c->s);
    EXPECT_OK(condconv_layer_desc_set_format(desc, dtype, layout));
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, h, w, &c->ho, &c->wo, NULL));
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &c->layer));
    condconv_layer_desc_destroy(desc);
    EXPECT_OK(condconv_layer_set_backward_algo(c->layer, algo));
    const int external = c->s.routing == CONDCONV_ROUTING_EXTERNAL;
    c->x_n = (size_t)n * c->s.cin * h * w;
    c->y_n = (size_t)n * c->s.cout * c->ho * c->wo;
    c->a_n = (size_t)n * c->s.experts;
    c->count[0] = c->x_n;
    c->count[1] = external ? c->a_n : 0;
    c->count[2] = p->experts_n;
    c->count[3] = c->s.has_bias ? p->bias_n : 0;
    c->count[4] = external ? 0 : p->routing_weight_n;
    c->count[5] = external ? 0 : p->routing_bias_n;
    /* Random x and dy in the dtype (their values are the dtype's; the layout
     * does not matter to random data). */
    float *x = uniform(c->x_n, -1.0f, 1.0f), *dy = uniform(c->y_n, -1.0f, 1.0f);
    c->x_host = tu_to_dtype(x, c->x_n, dtype);
    c->dy_host = tu_to_dtype(dy, c->y_n, dtype);
    free(x);
    free(dy);
    c->alpha_host = external ? uniform(c->a_n, 0.0f, 1.0f) : NULL;
    const size_t e = tu_dtype_size(dtype);
    c->x_dev = tu_dev_alloc_bytes(c->x_n * e);
    c->dy_dev = tu_dev_alloc_bytes(c->y_n * e);
    TU_CUDA(cudaMemcpy(c->x_dev, c->x_host, c->x_n * e, cudaMemcpyHostToDevice));
    TU_CUDA(cudaMemcpy(c->dy_dev, c->dy_host, c->y_n * e, cudaMemcpyHostToDevice));
    if (external) {
        c->alpha_dev = tu_dev_alloc(c->a_n);
        tu_to_dev(c->alpha_dev, c->alpha_host, c->a_n);
    }
    dalpha_allowance(c);
}

static double unit_roundoff(condconv_dtype dtype)
{
    return dtype == CONDCONV_DTYPE_F32 ? 0x1p-24 : dtype == CONDCONV_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
}

/* The allowance for what derives from dalpha (the comment at the top). */
static void dalpha_allowance(bcase *c)
{
    const tu_layer_spec *s = &c->s;
    const int n = c->n, e_count = s->experts, cout = s->cout;
    const size_t plane = (size_t)c->ho * (size_t)c->wo, rest = c->p.experts_n / ((size_t)e_count * (size_t)cout);
    float *dy = floats(c->y_n);
    EXPECT_OK(condconv_convert(c->dtype, c->dy_host, CONDCONV_DTYPE_F32, dy, c->y_n));
    double *a = calloc((size_t)n * (size_t)e_count, sizeof(double));
    for (int b = 0; b < n; ++b)
        for (int co = 0; co < cout; ++co) {
            double d = 0.0; /* sum over the pixels of |dy_b,co| */
            for (size_t q = 0; q < plane; ++q) {
                const size_t i = c->layout == CONDCONV_LAYOUT_NHWC
                                     ? ((size_t)b * plane + q) * (size_t)cout + (size_t)co
                                     : ((size_t)b * (size_t)cout + (size_t)co) * plane + q;
                d += fabs((double)dy[i]);
            }
            for (int e = 0; e < e_count; ++e) {
                double w = 0.0;
                const float *we = c->p.experts + ((size_t)e * (size_t)cout + (size_t)co) * rest;
                for (size_t k = 0; k < rest; ++k) w += fabs((double)we[k]);
                a[(size_t)b * (size_t)e_count + (size_t)e] += d * w;
            }
        }
    const double u = unit_roundoff(c->dtype);
    for (int g = 0; g < GRADS; ++g) c->extra[g] = 0.0;
    if (s->routing == CONDCONV_ROUTING_EXTERNAL) {
        for (size_t i = 0; i < (size_t)n * (size_t)e_count; ++i) c->extra[1] = fmax(c->extra[1], 8.0 * u * a[i]);
    } else {
        /* The logits' error, per sample and expert. */
        double *dl = calloc((size_t)n * (size_t)e_count, sizeof(double));
        for (int b = 0; b < n; ++b) {
            double amax = 0.0;
            for (int e = 0; e < e_count; ++e) amax = fmax(amax, a[(size_t)b * (size_t)e_count + (size_t)e]);
            for (int e = 0; e < e_count; ++e)
                dl[(size_t)b * (size_t)e_count + (size_t)e] =
                    s->routing == CONDCONV_ROUTING_SOFTMAX ? 2.0 / s->temperature * u * amax
                                                           : 0.25 * u * a[(size_t)b * (size_t)e_count + (size_t)e];
        }
        for (int e = 0; e < e_count; ++e) {
            double sum = 0.0;
            for (int b = 0; b < n; ++b) sum += dl[(size_t)b * (size_t)e_count + (size_t)e];
            c->extra[4] = fmax(c->extra[4], 8.0 * sum); /* d_routing_weight: times pooled, |pooled| <= 1 */
            c->extra[5] = fmax(c->extra[5], 8.0 * sum); /* d_routing_bias */
        }
        const double hw = (double)c->h * (double)c->w;
        for (int b = 0; b < n; ++b)
            for (int ci = 0; ci < s->cin; ++ci) {
                double sum = 0.0;
                for (int e = 0; e < e_count; ++e)
                    sum += dl[(size_t)b * (size_t)e_count + (size_t)e] *
                           fabs((double)c->p.routing_weight[(size_t)e * (size_t)s->cin + (size_t)ci]);
                c->extra[0] = fmax(c->extra[0], 8.0 * sum / hw);
            }
        free(dl);
    }
    free(a);
    free(dy);
}

static void free_case(bcase *c)
{
    EXPECT_OK(condconv_layer_destroy(c->layer));
    for (int i = 0; i < 4; ++i) free(c->half_params[i]);
    tu_free_params(&c->p);
    free(c->x_host);
    free(c->dy_host);
    free(c->alpha_host);
    TU_CUDA(cudaFree(c->x_dev));
    TU_CUDA(cudaFree(c->dy_dev));
    TU_CUDA(cudaFree(c->alpha_dev));
}

/* The reference gradients (host, f32; dx converted from the dtype), all that the layer has. */
static int reference(const bcase *c, float *ref[GRADS])
{
    void *dx_host = malloc(c->x_n * tu_dtype_size(c->dtype));
    for (int g = 0; g < GRADS; ++g) ref[g] = c->count[g] ? floats(c->count[g]) : NULL;
    const int ok = EXPECT_OK(condconv_backward_cpu(c->layer, c->n, c->h, c->w, c->x_host, c->alpha_host, c->dy_host,
                                                   dx_host, ref[1], ref[2], ref[3], ref[4], ref[5]));
    if (ok) EXPECT_OK(condconv_convert(c->dtype, dx_host, CONDCONV_DTYPE_F32, ref[0], c->x_n));
    free(dx_host);
    return ok;
}

/* Device outputs for the gradients in `want` (bit g), NaN-poisoned, each
 * `offset` bytes into its allocation (dx only: the f32 ones stay aligned). */
typedef struct outputs {
    void *block[GRADS];
    void *ptr[GRADS];
} outputs;

static outputs alloc_outputs(const bcase *c, unsigned want, size_t dx_offset)
{
    outputs o;
    memset(&o, 0, sizeof o);
    for (int g = 0; g < GRADS; ++g) {
        if (!(want >> g & 1u) || c->count[g] == 0) continue;
        const size_t off = g == 0 ? dx_offset : 0, bytes = c->count[g] * elem_of(c, g);
        o.block[g] = tu_dev_alloc_bytes(bytes + off);
        o.ptr[g] = (unsigned char *)o.block[g] + off;
        TU_CUDA(cudaMemset(o.block[g], 0xFF, bytes + off)); /* NaN in every dtype */
    }
    return o;
}

static void free_outputs(outputs *o)
{
    for (int g = 0; g < GRADS; ++g) TU_CUDA(cudaFree(o->block[g]));
}

/* Host f32 copies of the outputs (dx converted from the dtype). */
static void download(const bcase *c, const outputs *o, float *got[GRADS])
{
    TU_CUDA(cudaDeviceSynchronize());
    for (int g = 0; g < GRADS; ++g) {
        got[g] = NULL;
        if (o->ptr[g] == NULL) continue;
        got[g] = floats(c->count[g]);
        if (g == 0) {
            void *host = malloc(c->x_n * tu_dtype_size(c->dtype));
            TU_CUDA(cudaMemcpy(host, o->ptr[0], c->x_n * tu_dtype_size(c->dtype), cudaMemcpyDeviceToHost));
            EXPECT_OK(condconv_convert(c->dtype, host, CONDCONV_DTYPE_F32, got[0], c->x_n));
            free(host);
        } else {
            TU_CUDA(cudaMemcpy(got[g], o->ptr[g], c->count[g] * sizeof(float), cudaMemcpyDeviceToHost));
        }
    }
}

static void free_grads(float *g[GRADS])
{
    for (int i = 0; i < GRADS; ++i) free(g[i]);
}

static double tolerance(condconv_dtype dtype)
{
    return dtype == CONDCONV_DTYPE_F32 ? 5e-5 : dtype == CONDCONV_DTYPE_F16 ? 4e-3 : 3.2e-2;
}

/* Max-normalised comparison of one gradient; NaN never passes. */
static int close_enough(const char *what, const bcase *c, int g, const float *got, const float *ref)
{
    double ref_max = 0.0, err_max = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < c->count[g]; ++i) ref_max = fmax(ref_max, fabs((double)ref[i]));
    for (size_t i = 0; i < c->count[g]; ++i) {
        const double err = fabs((double)got[i] - (double)ref[i]);
        if (!(err <= err_max)) { /* NaN lands here too */
            err_max = isnan(err) ? INFINITY : err;
            worst = i;
        }
    }
    const double bound = tolerance(c->dtype) * ref_max + c->extra[g] + 1e-30;
    if (err_max <= bound) return 1;
    EXPECT(
        0,
        "%s: %s %s %s: max error %.3g > %.3g (= %.1e x max |ref| %.3g + %.3g) at %zu: got %.9g want %.9g; %s n=%d h=%d "
        "w=%d",
        what, grad_names[g],
        c->dtype == CONDCONV_DTYPE_F32   ? "f32"
        : c->dtype == CONDCONV_DTYPE_F16 ? "f16"
                                         : "bf16",
        c->layout == CONDCONV_LAYOUT_NHWC ? "NHWC" : "NCHW", err_max, bound, tolerance(c->dtype), ref_max, c->extra[g],
        worst, (double)got[worst], (double)ref[worst], tu_spec_string(&c->s), c->n, c->h, c->w);
    return 0;
}

static condconv_status run_backward(const bcase *c, const void *x, const void *dy, const outputs *o, void *ws,
                                    size_t ws_bytes)
{
    return condconv_backward(c->layer, c->n, c->h, c->w, x, c->alpha_dev, dy, o->ptr[0], o->ptr[1], o->ptr[2],
                             o->ptr[3], o->ptr[4], o->ptr[5], ws, ws_bytes);
}

/* One backward asking for the gradients in `want`, compared with the reference. */
static void check_case(const bcase *c, float *ref[GRADS], unsigned want, const char *what)
{
    size_t ws_bytes = 0;
    if (!EXPECT_OK(condconv_get_backward_workspace_size(c->layer, c->n, c->h, c->w, &ws_bytes))) return;
    void *ws = tu_dev_alloc_bytes(ws_bytes);
    TU_CUDA(cudaMemset(ws, 0xFF, ws_bytes ? ws_bytes : 1));
    outputs o = alloc_outputs(c, want, 0);
    int any = 0;
    for (int g = 0; g < GRADS; ++g) any |= o.ptr[g] != NULL;
    if (any && EXPECT_OK(run_backward(c, c->x_dev, c->dy_dev, &o, ws, ws_bytes))) {
        float *got[GRADS];
        download(c, &o, got);
        for (int g = 0; g < GRADS; ++g)
            if (got[g] != NULL) close_enough(what, c, g, got[g], ref[g]);
        free_grads(got);
        ++backwards;
    }
    free_outputs(&o);
    TU_CUDA(cudaFree(ws));
}

/* Two runs, and the data/params split, bit for bit. */
static void check_determinism(const bcase *c)
{
    size_t ws_bytes = 0;
    if (!EXPECT_OK(condconv_get_backward_workspace_size(c->layer, c->n, c->h, c->w, &ws_bytes))) return;
    void *ws = tu_dev_alloc_bytes(ws_bytes);
    outputs a = alloc_outputs(c, 0x3Fu, 0), b = alloc_outputs(c, 0x3Fu, 0), s = alloc_outputs(c, 0x3Fu, 0);
    EXPECT_OK(run_backward(c, c->x_dev, c->dy_dev, &a, ws, ws_bytes));
    TU_CUDA(cudaMemset(ws, 0x5A, ws_bytes ? ws_bytes : 1)); /* a different stale workspace */
    EXPECT_OK(run_backward(c, c->x_dev, c->dy_dev, &b, ws, ws_bytes));
    EXPECT_OK(condconv_backward_data(c->layer, c->n, c->h, c->w, c->x_dev, c->alpha_dev, c->dy_dev, s.ptr[0],
                                     (float *)s.ptr[1], ws, ws_bytes));
    EXPECT_OK(condconv_backward_params(c->layer, c->n, c->h, c->w, c->x_dev, c->alpha_dev, c->dy_dev, (float *)s.ptr[2],
                                       (float *)s.ptr[3], (float *)s.ptr[4], (float *)s.ptr[5], ws, ws_bytes));
    TU_CUDA(cudaDeviceSynchronize());
    for (int g = 0; g < GRADS; ++g) {
        if (a.ptr[g] == NULL) continue;
        const size_t bytes = c->count[g] * elem_of(c, g);
        unsigned char *ha = malloc(bytes), *hb = malloc(bytes), *hs = malloc(bytes);
        TU_CUDA(cudaMemcpy(ha, a.ptr[g], bytes, cudaMemcpyDeviceToHost));
        TU_CUDA(cudaMemcpy(hb, b.ptr[g], bytes, cudaMemcpyDeviceToHost));
        TU_CUDA(cudaMemcpy(hs, s.ptr[g], bytes, cudaMemcpyDeviceToHost));
        EXPECT(memcmp(ha, hb, bytes) == 0, "%s differs between two runs (%s)", grad_names[g], tu_spec_string(&c->s));
        EXPECT(memcmp(ha, hs, bytes) == 0, "%s of backward_data/backward_params differs from backward's (%s)",
               grad_names[g], tu_spec_string(&c->s));
        free(ha);
        free(hb);
        free(hs);
    }
    free_outputs(&a);
    free_outputs(&b);
    free_outputs(&s);
    TU_CUDA(cudaFree(ws));
}

/* x, dy and dx one element off 16 bytes: what cuDNN would touch goes through the workspace. */
static void check_unaligned(const bcase *c, float *ref[GRADS])
{
    const size_t e = tu_dtype_size(c->dtype);
    unsigned char *xb = tu_dev_alloc_bytes(c->x_n * e + e), *dyb = tu_dev_alloc_bytes(c->y_n * e + e);
    TU_CUDA(cudaMemcpy(xb + e, c->x_host, c->x_n * e, cudaMemcpyHostToDevice));
    TU_CUDA(cudaMemcpy(dyb + e, c->dy_host, c->y_n * e, cudaMemcpyHostToDevice));
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_backward_workspace_size(c->layer, c->n, c->h, c->w, &ws_bytes));
    void *ws = tu_dev_alloc_bytes(ws_bytes);
    outputs o = alloc_outputs(c, 0x3Fu, e);
    if (EXPECT_OK(run_backward(c, xb + e, dyb + e, &o, ws, ws_bytes))) {
        float *got[GRADS];
        download(c, &o, got);
        for (int g = 0; g < GRADS; ++g)
            if (got[g] != NULL) close_enough("unaligned x, dy, dx", c, g, got[g], ref[g]);
        free_grads(got);
        ++backwards;
    }
    free_outputs(&o);
    TU_CUDA(cudaFree(ws));
    TU_CUDA(cudaFree(xb));
    TU_CUDA(cudaFree(dyb));
}

static void random_cases(condconv_context_t ctx, int count)
{
    for (int i = 0; i < count; ++i) {
        tu_layer_spec s = tu_random_spec(TU_ANY, 6, 3);
        const condconv_dtype dtype = (condconv_dtype)tu_rng_int(0, 2);
        /* AUTO, then each algorithm forced, in turn. */
        const condconv_bwd_algo algo = (condconv_bwd_algo)(i % CONDCONV_BWD_ALGO_COUNT);
        /* cudnn_grouped and folded_wgrad refuse activations (bad_calls);
         * ReLU's kink only in f32, where the GPU's pre-activation (rounded
         * once to the dtype) lands on the reference's side of 0 but for
         * ~1e-6 of the draws. */
        if (algo == CONDCONV_BWD_ALGO_CUDNN_GROUPED || algo == CONDCONV_BWD_ALGO_FOLDED_WGRAD ||
            (s.activation == CONDCONV_ACTIVATION_RELU && dtype != CONDCONV_DTYPE_F32))
            s.activation = CONDCONV_ACTIVATION_NONE;
        const condconv_layout layout = (condconv_layout)tu_rng_int(0, 1);
        const int n = tu_rng_int(1, 4), h = tu_rng_int(3, 9), w = tu_rng_int(3, 9);
        condconv_layer_desc_t probe = tu_make_desc(&s);
        int ho = 0, wo = 0;
        const condconv_status dims = condconv_layer_desc_get_output_dims(probe, h, w, &ho, &wo, NULL);
        condconv_layer_desc_destroy(probe);
        if (dims != CONDCONV_STATUS_SUCCESS) { /* the draw gives no output at this size */
            --i;
            continue;
        }
        bcase c;
        make_case(ctx, &c, &s, dtype, layout, n, h, w, algo);
        float *ref[GRADS];
        if (reference(&c, ref)) {
            char what[80];
            snprintf(what, sizeof what, "case %d (%s), every gradient", i, condconv_bwd_algo_name(algo));
            check_case(&c, ref, 0x3Fu, what);
            const unsigned subset = (unsigned)tu_rng_int(1, 0x3F);
            snprintf(what, sizeof what, "case %d (%s), gradients 0x%x", i, condconv_bwd_algo_name(algo), subset);
            check_case(&c, ref, subset, what);
            if (i % 3 == 0) check_determinism(&c);
            if (i % 3 == 1) check_unaligned(&c, ref);
        }
        free_grads(ref);
        free_case(&c);
    }
}

/* Cases every run has, whatever the random draws, each through every
 * algorithm: asymmetric "same" padding (dx cropped out of cuDNN's padded
 * plane) in NHWC, a grouped bf16 layer with external routing and a bias, a
 * depthwise f32 layer with sigmoid routing on unaligned pointers, a 1x1
 * f16 layer with one expert, and a bf16 NHWC layer with SiLU (through
 * mixture, forced and chosen by AUTO). */
static void fixed_cases(condconv_context_t ctx)
{
    tu_layer_spec a = tu_basic_spec(5, 7, 3, 4);
    a.stride_h = a.stride_w = 2;
    a.pad_mode = CONDCONV_PADDING_SAME;
    a.routing = CONDCONV_ROUTING_SOFTMAX;
    a.temperature = 2.5f;
    a.has_bias = 1;
    tu_layer_spec b = tu_basic_spec(8, 12, 3, 3);
    b.groups = 4;
    b.pad_h = 1;
    b.pad_w = 0;
    b.dil_h = 2;
    b.has_bias = 1;
    tu_layer_spec c = tu_basic_spec(6, 6, 3, 2);
    c.groups = 6;
    c.pad_h = c.pad_w = 1;
    c.routing = CONDCONV_ROUTING_SIGMOID;
    tu_layer_spec d = tu_basic_spec(9, 5, 1, 1);
    d.routing = CONDCONV_ROUTING_SIGMOID;
    tu_layer_spec act = tu_basic_spec(6, 10, 3, 4);
    act.pad_h = act.pad_w = 1;
    act.has_bias = 1;
    act.activation = CONDCONV_ACTIVATION_SILU;
    act.routing = CONDCONV_ROUTING_SOFTMAX;
    act.temperature = 1.5f;
    const struct {
        const tu_layer_spec *s;
        condconv_dtype dtype;
        condconv_layout layout;
        int n, h, w, unaligned;
    } cases[] = {
        {&a, CONDCONV_DTYPE_F16, CONDCONV_LAYOUT_NHWC, 3, 8, 6, 0},
        {&b, CONDCONV_DTYPE_BF16, CONDCONV_LAYOUT_NCHW, 2, 9, 7, 0},
        {&c, CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW, 4, 5, 5, 1},
        {&d, CONDCONV_DTYPE_F16, CONDCONV_LAYOUT_NHWC, 5, 3, 4, 1},
        {&act, CONDCONV_DTYPE_BF16, CONDCONV_LAYOUT_NHWC, 3, 6, 5, 1},
    };
    static const condconv_bwd_algo algos[] = {CONDCONV_BWD_ALGO_CUDNN_GROUPED, CONDCONV_BWD_ALGO_MIXTURE,
                                              CONDCONV_BWD_ALGO_FOLDED_WGRAD};
    enum { ALGOS = sizeof algos / sizeof algos[0] };
    for (size_t j = 0; j < sizeof cases / sizeof cases[0] * ALGOS; ++j) {
        const size_t i = j / ALGOS;
        const int activation = cases[i].s->activation != CONDCONV_ACTIVATION_NONE;
        /* A layer with an activation: AUTO (which must find mixture) in
         * cudnn_grouped's place; folded_wgrad refuses it (bad_calls). */
        if (activation && algos[j % ALGOS] == CONDCONV_BWD_ALGO_FOLDED_WGRAD) continue;
        const condconv_bwd_algo algo = activation && algos[j % ALGOS] == CONDCONV_BWD_ALGO_CUDNN_GROUPED
                                           ? CONDCONV_BWD_ALGO_AUTO
                                           : algos[j % ALGOS];
        bcase k;
        make_case(ctx, &k, cases[i].s, cases[i].dtype, cases[i].layout, cases[i].n, cases[i].h, cases[i].w, algo);
        float *ref[GRADS];
        if (reference(&k, ref)) {
            char what[64];
            snprintf(what, sizeof what, "fixed case %zu (%s)", i, condconv_bwd_algo_name(algo));
            check_case(&k, ref, 0x3Fu, what);
            if (cases[i].unaligned) check_unaligned(&k, ref);
            check_determinism(&k);
        }
        free_grads(ref);
        free_case(&k);
    }
}

/* Plan info: what AUTO chose and why, under MEASURE and HEURISTIC, and
 * each algorithm forced. */
static void plan_info(condconv_context_t ctx)
{
    tu_layer_spec s = tu_basic_spec(6, 8, 3, 4);
    s.pad_h = s.pad_w = 1;
    s.has_bias = 1;
    bcase c;
    make_case(ctx, &c, &s, CONDCONV_DTYPE_F16, CONDCONV_LAYOUT_NHWC, 3, 7, 6, CONDCONV_BWD_ALGO_AUTO);
    const struct {
        condconv_bwd_algo requested;
        condconv_algo_select select;
    } plans[] = {
        {CONDCONV_BWD_ALGO_AUTO, CONDCONV_SELECT_MEASURE},
        {CONDCONV_BWD_ALGO_AUTO, CONDCONV_SELECT_HEURISTIC},
        {CONDCONV_BWD_ALGO_CUDNN_GROUPED, CONDCONV_SELECT_MEASURE},
        {CONDCONV_BWD_ALGO_MIXTURE, CONDCONV_SELECT_HEURISTIC},
        {CONDCONV_BWD_ALGO_FOLDED_WGRAD, CONDCONV_SELECT_MEASURE},
    };
    for (size_t i = 0; i < sizeof plans / sizeof plans[0]; ++i) {
        EXPECT_OK(condconv_layer_set_backward_algo(c.layer, plans[i].requested));
        EXPECT_OK(condconv_context_set_algo_select(ctx, plans[i].select));
        condconv_backward_plan_info info;
        if (!EXPECT_OK(condconv_get_backward_plan_info(c.layer, c.n, c.h, c.w, &info))) continue;
        printf("  %s, %s: %s, %zu bytes, deterministic %d: %s; %s\n", condconv_bwd_algo_name(plans[i].requested),
               plans[i].select == CONDCONV_SELECT_MEASURE ? "measure" : "heuristic", condconv_bwd_algo_name(info.algo),
               info.workspace_bytes, info.deterministic, info.backend, info.reason);
        EXPECT(info.requested == plans[i].requested && info.select == plans[i].select && info.deterministic == 1,
               "plan info %zu", i);
        size_t bytes = 0;
        EXPECT_OK(condconv_get_backward_workspace_size(c.layer, c.n, c.h, c.w, &bytes));
        EXPECT(bytes == info.workspace_bytes, "plan info %zu: workspace %zu, query %zu", i, info.workspace_bytes,
               bytes);
        if (plans[i].requested == CONDCONV_BWD_ALGO_AUTO && plans[i].select == CONDCONV_SELECT_MEASURE)
            EXPECT(strncmp(info.reason, "measured:", 9) == 0 && strstr(info.reason, "cudnn_grouped") != NULL &&
                       strstr(info.reason, "mixture") != NULL && strstr(info.reason, "folded_wgrad") != NULL &&
                       strchr(info.reason, '*') != NULL && strstr(info.reason, "n/a") == NULL,
                   "AUTO under MEASURE times every algorithm: %s", info.reason);
        else if (plans[i].requested == CONDCONV_BWD_ALGO_AUTO)
            EXPECT(info.algo == CONDCONV_BWD_ALGO_CUDNN_GROUPED && strncmp(info.reason, "heuristic", 9) == 0,
                   "AUTO under HEURISTIC: %s, %s", condconv_bwd_algo_name(info.algo), info.reason);
        else
            EXPECT(info.algo == plans[i].requested && strcmp(info.reason, "forced") == 0, "forced: %s, %s",
                   condconv_bwd_algo_name(info.algo), info.reason);
        if (info.algo == CONDCONV_BWD_ALGO_MIXTURE)
            EXPECT(strstr(info.backend, "z: ") != NULL, "the mixture names its forward: %s", info.backend);
        if (info.algo == CONDCONV_BWD_ALGO_FOLDED_WGRAD)
            EXPECT(strstr(info.backend, "bwd filter") == NULL && strstr(info.backend, "folded weight gradient") != NULL,
                   "folded_wgrad runs cuDNN's backward data only: %s", info.backend);
#ifdef CC_EMU_TEST
        /* The emulated cuDNN ranks a non-deterministic algorithm first in each direction. */
        EXPECT(strstr(info.backend, "bwd data algo_1") != NULL &&
                   (info.algo == CONDCONV_BWD_ALGO_FOLDED_WGRAD || strstr(info.backend, "bwd filter algo_1") != NULL),
               "the plan took a non-deterministic or transform algorithm: %s", info.backend);
#endif
    }
    EXPECT_OK(condconv_context_set_algo_select(ctx, CONDCONV_SELECT_HEURISTIC));

    /* The opt-in non-deterministic mode: cuDNN's first choice, still correct. */
    EXPECT_STATUS(condconv_layer_set_backward_deterministic(c.layer, 2), CONDCONV_STATUS_BAD_VALUE);
    EXPECT_OK(condconv_layer_set_backward_deterministic(c.layer, 0));
    for (int a = CONDCONV_BWD_ALGO_CUDNN_GROUPED; a < CONDCONV_BWD_ALGO_COUNT; ++a) {
        EXPECT_OK(condconv_layer_set_backward_algo(c.layer, (condconv_bwd_algo)a));
        condconv_backward_plan_info info;
        if (!EXPECT_OK(condconv_get_backward_plan_info(c.layer, c.n, c.h, c.w, &info))) continue;
        printf("  %s, non-deterministic allowed: deterministic %d; %s\n", condconv_bwd_algo_name(info.algo),
               info.deterministic, info.backend);
#ifdef CC_EMU_TEST
        /* The emulation ranks non-deterministic algorithms first: this mode takes them. */
        EXPECT(info.deterministic == 0 && strstr(info.backend, "bwd data algo_0") != NULL,
               "non-deterministic mode: deterministic %d, %s", info.deterministic, info.backend);
#endif
        float *ref[GRADS];
        if (reference(&c, ref)) check_case(&c, ref, 0x3Fu, "non-deterministic mode");
        free_grads(ref);
    }
    free_case(&c);
}

/* Graph capture and replay, NOT_PREPARED inside a capture. */
static void graph_capture(condconv_context_t ctx, cudaStream_t stream, condconv_bwd_algo algo)
{
    tu_layer_spec s = tu_basic_spec(6, 8, 3, 4);
    s.pad_h = s.pad_w = 1;
    s.has_bias = 1;
    s.routing = CONDCONV_ROUTING_SOFTMAX;
    s.temperature = 3.0f;
    bcase c;
    make_case(ctx, &c, &s, CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW, 3, 7, 6, algo);
    float *ref[GRADS];
    if (reference(&c, ref)) {
        size_t ws_bytes = 0;
        EXPECT_OK(condconv_get_backward_workspace_size(c.layer, c.n, c.h, c.w, &ws_bytes));
        void *ws = tu_dev_alloc_bytes(ws_bytes);
        outputs o = alloc_outputs(&c, 0x3Fu, 0);
        cudaGraph_t graph = NULL;
        cudaGraphExec_t exec = NULL;
        TU_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        EXPECT_OK(run_backward(&c, c.x_dev, c.dy_dev, &o, ws, ws_bytes));
        EXPECT_STATUS(condconv_backward(c.layer, c.n - 1, c.h, c.w, c.x_dev, NULL, c.dy_dev, o.ptr[0], NULL, NULL, NULL,
                                        NULL, NULL, ws, ws_bytes),
                      CONDCONV_STATUS_NOT_PREPARED);
        const cudaError_t end = cudaStreamEndCapture(stream, &graph);
        EXPECT(end == cudaSuccess, "the capture was invalidated (%s): the backward allocated or synchronised",
               cudaGetErrorName(end));
        if (end == cudaSuccess) {
            TU_CUDA(cudaGraphInstantiate(&exec, graph, 0));
            TU_CUDA(cudaGraphLaunch(exec, stream));
            TU_CUDA(cudaStreamSynchronize(stream));
            float *got[GRADS];
            download(&c, &o, got);
            for (int g = 0; g < GRADS; ++g)
                if (got[g] != NULL) close_enough("graph replay", &c, g, got[g], ref[g]);
            free_grads(got);
            ++backwards;
            TU_CUDA(cudaGraphExecDestroy(exec));
            TU_CUDA(cudaGraphDestroy(graph));
        }
        free_outputs(&o);
        TU_CUDA(cudaFree(ws));
    }
    free_grads(ref);
    free_case(&c);
}

/* 1 when every byte of the output is still the 0xFF poison. */
static int untouched(const void *dev, size_t bytes)
{
    unsigned char *h = malloc(bytes);
    TU_CUDA(cudaDeviceSynchronize());
    TU_CUDA(cudaMemcpy(h, dev, bytes, cudaMemcpyDeviceToHost));
    int same = 1;
    for (size_t i = 0; i < bytes; ++i) same &= h[i] == 0xFF;
    free(h);
    return same;
}

static void bad_calls(condconv_context_t ctx)
{
    tu_layer_spec s = tu_basic_spec(4, 6, 3, 3);
    s.has_bias = 1;
    s.routing = CONDCONV_ROUTING_SIGMOID;
    bcase c;
    make_case(ctx, &c, &s, CONDCONV_DTYPE_F16, CONDCONV_LAYOUT_NHWC, 2, 5, 5, CONDCONV_BWD_ALGO_AUTO);
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_backward_workspace_size(c.layer, c.n, c.h, c.w, &ws_bytes));
    unsigned char *ws = tu_dev_alloc_bytes(ws_bytes + 256);
    outputs o = alloc_outputs(&c, 0x3Fu, 0);
    float *f = (float *)o.ptr[2];
    condconv_layer_t L = c.layer;
    const int n = c.n, h = c.h, w = c.w;
    EXPECT_STATUS(
        condconv_backward(L, n, h, w, c.x_dev, NULL, c.dy_dev, NULL, NULL, NULL, NULL, NULL, NULL, ws, ws_bytes),
        CONDCONV_STATUS_BAD_VALUE); /* nothing asked */
    EXPECT_STATUS(
        condconv_backward(L, n, h, w, c.x_dev, NULL, c.dy_dev, o.ptr[0], NULL, f, NULL, NULL, NULL, ws, ws_bytes - 1),
        CONDCONV_STATUS_WORKSPACE_TOO_SMALL);
    EXPECT_STATUS(
        condconv_backward(L, n, h, w, c.x_dev, NULL, c.dy_dev, o.ptr[0], NULL, f, NULL, NULL, NULL, ws + 16, ws_bytes),
        CONDCONV_STATUS_MISALIGNED);
    EXPECT_STATUS(
        condconv_backward(L, n, h, w, c.x_dev, NULL, c.dy_dev, o.ptr[0], NULL, f, NULL, NULL, NULL, NULL, ws_bytes),
        CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(
        condconv_backward(L, n, h, w, NULL, NULL, c.dy_dev, o.ptr[0], NULL, f, NULL, NULL, NULL, ws, ws_bytes),
        CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(
        condconv_backward(L, n, h, w, c.x_dev, NULL, c.dy_dev, c.dy_dev, NULL, f, NULL, NULL, NULL, ws, ws_bytes),
        CONDCONV_STATUS_BAD_VALUE); /* dx overlaps dy */
    EXPECT_STATUS(condconv_backward(L, n, h, w, c.x_dev, NULL, c.dy_dev, o.ptr[0], (float *)o.ptr[3], f, NULL, NULL,
                                    NULL, ws, ws_bytes),
                  CONDCONV_STATUS_BAD_VALUE); /* d_routing_in of a layer that routes itself */
    EXPECT_STATUS(
        condconv_backward(L, 0, h, w, c.x_dev, NULL, c.dy_dev, o.ptr[0], NULL, f, NULL, NULL, NULL, ws, ws_bytes),
        CONDCONV_STATUS_BAD_SIZE);
    EXPECT_STATUS(condconv_backward(L, n, h, w, (unsigned char *)c.x_dev + 1, NULL, c.dy_dev, o.ptr[0], NULL, f, NULL,
                                    NULL, NULL, ws, ws_bytes),
                  CONDCONV_STATUS_MISALIGNED);
    EXPECT_STATUS(condconv_layer_set_backward_algo(L, (condconv_bwd_algo)7), CONDCONV_STATUS_BAD_VALUE);
    EXPECT(condconv_bwd_algo_name((condconv_bwd_algo)7) == NULL, "a name for an invalid algorithm");
    for (int g = 0; g < GRADS; ++g)
        if (o.ptr[g] != NULL)
            EXPECT(untouched(o.ptr[g], c.count[g] * elem_of(&c, g)), "a refused call wrote %s", grad_names[g]);
    free_outputs(&o);
    TU_CUDA(cudaFree(ws));
    free_case(&c);

    /* A fused activation: cudnn_grouped and folded_wgrad, forced, refuse it; AUTO takes mixture. */
    s.activation = CONDCONV_ACTIVATION_SILU;
    make_case(ctx, &c, &s, CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW, 2, 5, 5, CONDCONV_BWD_ALGO_CUDNN_GROUPED);
    size_t bytes = 0;
    EXPECT_STATUS(condconv_get_backward_workspace_size(c.layer, c.n, c.h, c.w, &bytes), CONDCONV_STATUS_NOT_SUPPORTED);
    EXPECT(strstr(condconv_last_error(), "activation") != NULL, "the refusal names the activation: %s",
           condconv_last_error());
    EXPECT_OK(condconv_layer_set_backward_algo(c.layer, CONDCONV_BWD_ALGO_FOLDED_WGRAD));
    EXPECT_STATUS(condconv_get_backward_workspace_size(c.layer, c.n, c.h, c.w, &bytes), CONDCONV_STATUS_NOT_SUPPORTED);
    EXPECT(strstr(condconv_last_error(), "folded_wgrad") != NULL && strstr(condconv_last_error(), "activation") != NULL,
           "the refusal names the algorithm and the activation: %s", condconv_last_error());
    EXPECT_OK(condconv_layer_set_backward_algo(c.layer, CONDCONV_BWD_ALGO_AUTO));
    EXPECT_OK(condconv_context_set_algo_select(ctx, CONDCONV_SELECT_MEASURE));
    condconv_backward_plan_info info;
    if (EXPECT_OK(condconv_get_backward_plan_info(c.layer, c.n, c.h, c.w, &info)))
        EXPECT(info.algo == CONDCONV_BWD_ALGO_MIXTURE && strstr(info.reason, "cudnn_grouped n/a") != NULL &&
                   strstr(info.reason, "folded_wgrad n/a") != NULL,
               "AUTO with an activation: %s, %s", condconv_bwd_algo_name(info.algo), info.reason);
    EXPECT_OK(condconv_context_set_algo_select(ctx, CONDCONV_SELECT_HEURISTIC));
    free_case(&c);
}

#ifdef CC_EMU_TEST
static const char kName[] = "test_emu_backward_api";
#else
static const char kName[] = "test_gpu_backward";
#endif

int main(void)
{
    tu_require_gpu(kName);
    tu_seed_from_env();
    condconv_context_t ctx;
    cudaStream_t stream;
    TU_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (!EXPECT_OK(condconv_context_create(&ctx, 0))) return tu_finish(kName);
    EXPECT_OK(condconv_context_set_stream(ctx, stream));
    /* AUTO by rule for the cases (both algorithms are forced in turn
     * anyway); plan_info and bad_calls time them (MEASURE runs each one
     * nine times, which the sanitizer builds of the CPU layer pay for). */
    EXPECT_OK(condconv_context_set_algo_select(ctx, CONDCONV_SELECT_HEURISTIC));
    printf("fixed layers:\n");
    fixed_cases(ctx);
    printf("random layers:\n");
    random_cases(ctx, tu_case_count(12));
    printf("plan info:\n");
    plan_info(ctx);
    printf("graph capture:\n");
    graph_capture(ctx, stream, CONDCONV_BWD_ALGO_CUDNN_GROUPED);
    graph_capture(ctx, stream, CONDCONV_BWD_ALGO_MIXTURE);
    graph_capture(ctx, stream, CONDCONV_BWD_ALGO_FOLDED_WGRAD);
    printf("bad calls:\n");
    bad_calls(ctx);
    EXPECT_OK(condconv_context_destroy(ctx));
    TU_CUDA(cudaStreamDestroy(stream));
#ifdef CC_EMU_TEST
    EXPECT(cc_cpu_live_allocations() == 0, "%zu device allocation(s) leaked", cc_cpu_live_allocations());
    EXPECT(cc_cpu_live_handles() == 0, "%zu stream/event/handle(s) leaked", cc_cpu_live_handles());
#endif
    printf("%s: %d backwards compared\n", kName, backwards);
    return tu_finish(kName);
}
