/* condconv_backward_cpu against central finite differences of the test's
 * own naive double forward (it never calls the library's reference), on
 * small random layers of every kind: every routing mode (external, sigmoid,
 * softmax with T != 1), groups 1 / 2 / depthwise, stride 2, dilation 2,
 * EXPLICIT and SAME padding, bias or not, activation none / ReLU / SiLU.
 * Every gradient the API returns is compared: dx, d_routing_in (external
 * routing), d_experts, d_expert_bias, d_routing_weight, d_routing_bias.
 *
 * The loss is L = sum_i dy_i y_i, so dL/dtheta is what the backward returns
 * for output gradient dy. All inputs are floats, so the library and this
 * test see the very same values.
 *
 * Tolerance. For each variable theta_i the test evaluates central
 * differences at steps h and 2h, D(h) and D(2h) (error c h^2 + O(h^4)), and
 * compares against the Richardson value R = (4 D(h) - D(2h)) / 3, whose
 * error is O(h^4); |D(h) - D(2h)| / 3 estimates D(h)'s truncation error
 * c h^2, which bounds R's (smaller) error. Rounding in the double forward
 * adds at most ~ 8 eps |L|_1 / h to a difference quotient (eps = 2^-53,
 * |L|_1 = sum |dy_i y_i| + 1). The library computes in double (its own
 * rounding ~ eps times the sum of magnitudes, negligible) and rounds each
 * gradient once to f32: at most 2^-24 |g| relative. So
 *   |got - R| <= 2^-23 |R| + 2 |D(h) - D(2h)| / 3 + 16 eps |L|_1 / h + 1e-12
 * (each term with a factor 2 of margin; 1e-12 for gradients that are 0). A
 * wrong term in any gradient (a missing routing path, a transposed index, a
 * wrong padding side) is off by O(|g|), far outside this.
 *
 * ReLU: an output whose pre-activation is within 0.05 of the kink gets
 * dy = 0, so no step (|dz| <= 2h |dz/dtheta| << 0.05) crosses a kink that
 * matters and the loss is smooth where it is differenced.
 *
 * Then, on the same layers: NHWC equals NCHW (transposed) bit for bit;
 * f16/bf16 layers give, on the dtype's values, exactly the f32 layer's
 * gradients (x and dy convert exactly, the same double sums run; dx is the
 * f32 layer's dx rounded to the dtype, checked to within one ulp and
 * counted when not exact); asking for fewer outputs gives the same bytes;
 * outputs are NaN-poisoned before each call and a NaN never passes; bad
 * arguments return their specific status and leave outputs poisoned. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_util.h"

#define FD_STEP     1e-3
#define RELU_MARGIN 0.05

/* ---------------- the test's own naive forward, double ---------------- */

typedef struct case_t {
    tu_layer_spec s;
    int n, h, w;
    int ho, wo, pad_top, pad_left;
} case_t;

/* Output size and leading padding, from the definitions (condconv.h). */
static void own_geometry(case_t *c)
{
    const tu_layer_spec *s = &c->s;
    if (s->pad_mode == CONDCONV_PADDING_SAME) {
        c->ho = (c->h + s->stride_h - 1) / s->stride_h;
        c->wo = (c->w + s->stride_w - 1) / s->stride_w;
        const int th = (c->ho - 1) * s->stride_h + s->dil_h * (s->kh - 1) + 1 - c->h;
        const int tw = (c->wo - 1) * s->stride_w + s->dil_w * (s->kw - 1) + 1 - c->w;
        c->pad_top = th > 0 ? th / 2 : 0;
        c->pad_left = tw > 0 ? tw / 2 : 0;
    } else {
        c->ho = (c->h + 2 * s->pad_h - s->dil_h * (s->kh - 1) - 1) / s->stride_h + 1;
        c->wo = (c->w + 2 * s->pad_w - s->dil_w * (s->kw - 1) - 1) / s->stride_w + 1;
        c->pad_top = s->pad_h;
        c->pad_left = s->pad_w;
    }
}

/* All differentiable inputs in one vector: theta = [x | alpha (external) |
 * experts | expert bias | routing weight | routing bias]. */
enum { SEG_X, SEG_ALPHA, SEG_W, SEG_B, SEG_RW, SEG_RB, SEG_COUNT };
static const char *const seg_name[SEG_COUNT] = {
    "dx", "d_routing_in", "d_experts", "d_expert_bias", "d_routing_weight", "d_routing_bias"};

typedef struct layout_t {
    size_t off[SEG_COUNT], len[SEG_COUNT], total;
    size_t filt; /* Cout * Cin/g * kh * kw */
    size_t y_elems;
} layout_t;

static layout_t make_layout(const case_t *c)
{
    const tu_layer_spec *s = &c->s;
    layout_t L;
    L.filt = (size_t)s->cout * (size_t)(s->cin / s->groups) * (size_t)s->kh * (size_t)s->kw;
    const int ext = s->routing == CONDCONV_ROUTING_EXTERNAL;
    L.len[SEG_X] = (size_t)c->n * (size_t)s->cin * (size_t)c->h * (size_t)c->w;
    L.len[SEG_ALPHA] = ext ? (size_t)c->n * (size_t)s->experts : 0;
    L.len[SEG_W] = (size_t)s->experts * L.filt;
    L.len[SEG_B] = s->has_bias ? (size_t)s->experts * (size_t)s->cout : 0;
    L.len[SEG_RW] = ext ? 0 : (size_t)s->experts * (size_t)s->cin;
    L.len[SEG_RB] = ext ? 0 : (size_t)s->experts;
    L.total = 0;
    for (int k = 0; k < SEG_COUNT; ++k) {
        L.off[k] = L.total;
        L.total += L.len[k];
    }
    L.y_elems = (size_t)c->n * (size_t)s->cout * (size_t)c->ho * (size_t)c->wo;
    return L;
}

/* The pre-activations z [N][Cout][Ho][Wo] of the layer at theta. */
static void naive_preact(const case_t *c, const layout_t *L, const double *th, double *z)
{
    const tu_layer_spec *s = &c->s;
    const double *x = th + L->off[SEG_X];
    const int E = s->experts, cin_g = s->cin / s->groups, cout_g = s->cout / s->groups;
    double alpha[64];
    for (int b = 0; b < c->n; ++b) {
        /* Routing weights of sample b. */
        if (s->routing == CONDCONV_ROUTING_EXTERNAL) {
            for (int e = 0; e < E; ++e) alpha[e] = th[L->off[SEG_ALPHA] + (size_t)b * E + e];
        } else {
            double logit[64];
            for (int e = 0; e < E; ++e) {
                double l = th[L->off[SEG_RB] + e];
                for (int ch = 0; ch < s->cin; ++ch) {
                    double mean = 0.0;
                    for (int p = 0; p < c->h * c->w; ++p) mean += x[((size_t)b * s->cin + ch) * c->h * c->w + p];
                    mean /= c->h * c->w;
                    l += th[L->off[SEG_RW] + (size_t)e * s->cin + ch] * mean;
                }
                logit[e] = l;
            }
            if (s->routing == CONDCONV_ROUTING_SIGMOID) {
                for (int e = 0; e < E; ++e) alpha[e] = 1.0 / (1.0 + exp(-logit[e]));
            } else {
                double total = 0.0;
                for (int e = 0; e < E; ++e) total += exp(logit[e] / s->temperature);
                for (int e = 0; e < E; ++e) alpha[e] = exp(logit[e] / s->temperature) / total;
            }
        }
        /* Direct convolution with the mixed kernel, gathered per output. */
        for (int o = 0; o < s->cout; ++o)
            for (int oy = 0; oy < c->ho; ++oy)
                for (int ox = 0; ox < c->wo; ++ox) {
                    double acc = 0.0;
                    if (s->has_bias)
                        for (int e = 0; e < E; ++e) acc += alpha[e] * th[L->off[SEG_B] + (size_t)e * s->cout + o];
                    for (int i = 0; i < cin_g; ++i)
                        for (int ky = 0; ky < s->kh; ++ky)
                            for (int kx = 0; kx < s->kw; ++kx) {
                                const int iy = oy * s->stride_h + ky * s->dil_h - c->pad_top;
                                const int ix = ox * s->stride_w + kx * s->dil_w - c->pad_left;
                                if (iy < 0 || iy >= c->h || ix < 0 || ix >= c->w) continue;
                                const int ch = (o / cout_g) * cin_g + i;
                                double wmix = 0.0;
                                for (int e = 0; e < E; ++e)
                                    wmix += alpha[e] * th[L->off[SEG_W] + (size_t)e * L->filt +
                                                          (((size_t)o * cin_g + i) * s->kh + ky) * s->kw + kx];
                                acc += wmix * x[(((size_t)b * s->cin + ch) * c->h + iy) * c->w + ix];
                            }
                    z[(((size_t)b * s->cout + o) * c->ho + oy) * c->wo + ox] = acc;
                }
    }
}

static double act(condconv_activation a, double z)
{
    if (a == CONDCONV_ACTIVATION_RELU) return z > 0 ? z : 0;
    if (a == CONDCONV_ACTIVATION_SILU) return z / (1.0 + exp(-z));
    return z;
}

/* L = sum dy . act(z); *l1 (if not NULL) = sum |dy . act(z)|. */
static double naive_loss(const case_t *c, const layout_t *L, const double *th, const float *dy, double *z, double *l1)
{
    naive_preact(c, L, th, z);
    double loss = 0.0, mag = 0.0;
    for (size_t i = 0; i < L->y_elems; ++i) {
        const double t = (double)dy[i] * act(c->s.activation, z[i]);
        loss += t;
        mag += fabs(t);
    }
    if (l1) *l1 = mag;
    return loss;
}

/* ---------------- library calls ---------------- */

static int cases_run;
static double worst_ratio, worst_err;
static const char *worst_what = "";
static long exact_half_dx, ulp_half_dx;

typedef struct grads_t {
    float *g[SEG_COUNT]; /* in the library's order; NULL where the layer has none */
    size_t x_bytes;      /* dx is in the layer's dtype */
} grads_t;

/* Floats a segment's buffer holds (dx: whole floats within its bytes). */
static size_t seg_floats(const grads_t *g, const layout_t *L, int k)
{
    return k == SEG_X ? g->x_bytes / sizeof(float) : L->len[k];
}

static void grads_alloc(grads_t *g, const layout_t *L, size_t x_bytes)
{
    for (int k = 0; k < SEG_COUNT; ++k) {
        const size_t bytes = k == SEG_X ? x_bytes : L->len[k] * sizeof(float);
        g->g[k] = L->len[k] ? malloc(bytes ? bytes : 1) : NULL;
    }
    g->x_bytes = x_bytes;
}

static void grads_poison(grads_t *g, const layout_t *L)
{
    for (int k = 0; k < SEG_COUNT; ++k)
        if (g->g[k]) tu_fill_nan(g->g[k], seg_floats(g, L, k));
}

static void grads_free(grads_t *g)
{
    for (int k = 0; k < SEG_COUNT; ++k) free(g->g[k]);
}

/* The backward with the outputs selected by mask (bit k: segment k). */
static condconv_status call_bwd(condconv_layer_t layer, const case_t *c, const void *x, const float *alpha,
                                const void *dy, grads_t *g, unsigned mask)
{
    float *p[SEG_COUNT];
    for (int k = 0; k < SEG_COUNT; ++k) p[k] = (mask >> k & 1u) ? g->g[k] : NULL;
    return condconv_backward_cpu(layer, c->n, c->h, c->w, x, alpha, dy, p[SEG_X], p[SEG_ALPHA], p[SEG_W], p[SEG_B],
                                 p[SEG_RW], p[SEG_RB]);
}

static condconv_layer_t make_layer(condconv_context_t ctx, const tu_layer_spec *s, const condconv_params *view,
                                   condconv_dtype dtype, condconv_layout layout)
{
    condconv_layer_desc_t desc = tu_make_desc(s);
    EXPECT_OK(condconv_layer_desc_set_format(desc, dtype, layout));
    condconv_layer_t layer = NULL;
    EXPECT_OK(condconv_layer_create(ctx, desc, view, &layer));
    condconv_layer_desc_destroy(desc);
    return layer;
}

/* Bit-equality of two f32 gradient sets (present segments). */
static void expect_same_grads(const char *what, const grads_t *a, const grads_t *b, const layout_t *L, int skip_dx)
{
    for (int k = skip_dx ? 1 : 0; k < SEG_COUNT; ++k)
        if (a->g[k])
            EXPECT(tu_same_bytes(a->g[k], b->g[k], L->len[k] * sizeof(float)), "%s: %s differs", what, seg_name[k]);
}

/* ---------------- one case ---------------- */

static void run_case(condconv_context_t ctx, case_t c)
{
    own_geometry(&c);
    const tu_layer_spec *s = &c.s;
    {
        condconv_layer_desc_t d = tu_make_desc(s);
        int ho = -1, wo = -1;
        EXPECT_OK(condconv_layer_desc_get_output_dims(d, c.h, c.w, &ho, &wo, NULL));
        condconv_layer_desc_destroy(d);
        EXPECT(ho == c.ho && wo == c.wo, "%s: output %dx%d, expected %dx%d", tu_spec_string(s), ho, wo, c.ho, c.wo);
        if (ho != c.ho || wo != c.wo) return;
    }
    ++cases_run;
    const layout_t L = make_layout(&c);
    tu_params P;
    tu_make_params(s, &P);
    /* theta from float values. */
    float *thf = malloc(L.total * sizeof(float));
    tu_fill_uniform(thf + L.off[SEG_X], L.len[SEG_X], -1.0f, 1.0f);
    tu_fill_uniform(thf + L.off[SEG_ALPHA], L.len[SEG_ALPHA], 0.1f, 1.0f);
    memcpy(thf + L.off[SEG_W], P.experts, L.len[SEG_W] * sizeof(float));
    if (L.len[SEG_B]) memcpy(thf + L.off[SEG_B], P.expert_bias, L.len[SEG_B] * sizeof(float));
    if (L.len[SEG_RW]) memcpy(thf + L.off[SEG_RW], P.routing_weight, L.len[SEG_RW] * sizeof(float));
    if (L.len[SEG_RB]) memcpy(thf + L.off[SEG_RB], P.routing_bias, L.len[SEG_RB] * sizeof(float));
    double *th = malloc(L.total * sizeof(double));
    for (size_t i = 0; i < L.total; ++i) th[i] = thf[i];
    const float *x = thf + L.off[SEG_X];
    const float *alpha = L.len[SEG_ALPHA] ? thf + L.off[SEG_ALPHA] : NULL;
    float *dy = malloc((L.y_elems ? L.y_elems : 1) * sizeof(float));
    tu_fill_uniform(dy, L.y_elems, -1.0f, 1.0f);
    double *z = calloc(L.y_elems ? L.y_elems : 1, sizeof(double)); /* zeroed: naive_preact writes each */
    double l1 = 0.0;
    naive_loss(&c, &L, th, dy, z, &l1);
    if (s->activation == CONDCONV_ACTIVATION_RELU)
        for (size_t i = 0; i < L.y_elems; ++i)
            if (fabs(z[i]) < RELU_MARGIN) dy[i] = 0.0f;

    /* Finite differences: D(h), D(2h), Richardson. */
    double *want = malloc(L.total * sizeof(double)), *tol = malloc(L.total * sizeof(double));
    const double h = FD_STEP, eps = 0x1p-53;
    for (size_t i = 0; i < L.total; ++i) {
        const double t0 = th[i];
        double lp, lm;
        th[i] = t0 + h;
        lp = naive_loss(&c, &L, th, dy, z, NULL);
        th[i] = t0 - h;
        lm = naive_loss(&c, &L, th, dy, z, NULL);
        const double d1 = (lp - lm) / (2 * h);
        th[i] = t0 + 2 * h;
        lp = naive_loss(&c, &L, th, dy, z, NULL);
        th[i] = t0 - 2 * h;
        lm = naive_loss(&c, &L, th, dy, z, NULL);
        const double d2 = (lp - lm) / (4 * h);
        th[i] = t0;
        want[i] = (4 * d1 - d2) / 3;
        tol[i] = 0x1p-23 * fabs(want[i]) + 2 * fabs(d1 - d2) / 3 + 16 * eps * (l1 + 1) / h + 1e-12;
    }

    /* The library, f32 NCHW, every gradient the layer has; outputs poisoned. */
    const condconv_params view = tu_params_view(&P);
    condconv_layer_t layer = make_layer(ctx, s, &view, CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW);
    grads_t full;
    grads_alloc(&full, &L, L.len[SEG_X] * sizeof(float));
    grads_poison(&full, &L);
    unsigned all = 0;
    for (int k = 0; k < SEG_COUNT; ++k)
        if (L.len[k]) all |= 1u << k;
    if (EXPECT_OK(call_bwd(layer, &c, x, alpha, dy, &full, all))) {
        for (int k = 0; k < SEG_COUNT; ++k) {
            int bad = 0;
            for (size_t i = 0; i < L.len[k]; ++i) {
                const size_t t = L.off[k] + i;
                const double err = fabs((double)full.g[k][i] - want[t]);
                if (!(err <= tol[t])) { /* NaN fails */
                    if (bad++ < 4)
                        tu_fail(__FILE__, __LINE__, seg_name[k],
                                "%s: %s[%zu] = %.9g, finite differences %.9g (tol %.3g)", tu_spec_string(s),
                                seg_name[k], i, (double)full.g[k][i], want[t], tol[t]);
                }
                if (err / tol[t] > worst_ratio) {
                    worst_ratio = err / tol[t];
                    worst_err = err;
                    worst_what = seg_name[k];
                }
            }
        }
    }

    /* Fewer outputs: each one alone gives the same bytes. */
    for (int k = 0; k < SEG_COUNT; ++k) {
        if (!L.len[k]) continue;
        grads_t one;
        grads_alloc(&one, &L, L.len[SEG_X] * sizeof(float));
        grads_poison(&one, &L);
        if (EXPECT_OK(call_bwd(layer, &c, x, alpha, dy, &one, 1u << k)))
            EXPECT(tu_same_bytes(one.g[k], full.g[k], L.len[k] * sizeof(float)), "%s alone differs (%s)", seg_name[k],
                   tu_spec_string(s));
        grads_free(&one);
    }

    /* With self-routing routing_in is not read (as in condconv_forward_cpu): a NaN one changes nothing. */
    if (s->routing != CONDCONV_ROUTING_EXTERNAL) {
        float junk[64];
        tu_fill_nan(junk, 64);
        grads_t g;
        grads_alloc(&g, &L, L.len[SEG_X] * sizeof(float));
        grads_poison(&g, &L);
        if (EXPECT_OK(call_bwd(layer, &c, x, junk, dy, &g, all)))
            expect_same_grads("routing_in given", &g, &full, &L, 0);
        grads_free(&g);
    }

    /* NHWC: transposed dx, identical parameter gradients. */
    {
        const size_t plane = (size_t)c.h * c.w, plane_out = (size_t)c.ho * c.wo;
        float *x_t = malloc(L.len[SEG_X] * sizeof(float)), *dy_t = malloc((L.y_elems ? L.y_elems : 1) * sizeof(float));
        float *dx_back = malloc(L.len[SEG_X] * sizeof(float));
        tu_transpose(x, x_t, c.n, s->cin, plane, 1);
        tu_transpose(dy, dy_t, c.n, s->cout, plane_out, 1);
        condconv_layer_t nhwc = make_layer(ctx, s, &view, CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NHWC);
        grads_t g;
        grads_alloc(&g, &L, L.len[SEG_X] * sizeof(float));
        grads_poison(&g, &L);
        if (EXPECT_OK(call_bwd(nhwc, &c, x_t, alpha, dy_t, &g, all))) {
            tu_transpose(g.g[SEG_X], dx_back, c.n, s->cin, plane, 0);
            EXPECT(tu_same_bytes(dx_back, full.g[SEG_X], L.len[SEG_X] * sizeof(float)), "NHWC dx differs (%s)",
                   tu_spec_string(s));
            expect_same_grads("NHWC", &g, &full, &L, 1);
        }
        grads_free(&g);
        condconv_layer_destroy(nhwc);
        free(x_t);
        free(dy_t);
        free(dx_back);
    }

    /* f16 / bf16: on the dtype's values, against an f32 layer on the same values. */
    static const condconv_dtype halves[2] = {CONDCONV_DTYPE_F16, CONDCONV_DTYPE_BF16};
    for (int d = 0; d < 2; ++d) {
        const condconv_dtype dt = halves[d];
        tu_params R;
        tu_make_params(s, &R); /* same shapes; values overwritten below */
        memcpy(R.experts, P.experts, P.experts_n * sizeof(float));
        if (P.bias_n) memcpy(R.expert_bias, P.expert_bias, P.bias_n * sizeof(float));
        if (P.routing_weight_n) memcpy(R.routing_weight, P.routing_weight, P.routing_weight_n * sizeof(float));
        if (P.routing_bias_n) memcpy(R.routing_bias, P.routing_bias, P.routing_bias_n * sizeof(float));
        void *enc[4];
        tu_params_in_dtype(&R, dt, enc);
        const condconv_params rview = tu_params_view(&R);
        const condconv_params hview = {enc[0], enc[1], enc[2], enc[3]};
        float *xr = malloc(L.len[SEG_X] * sizeof(float)), *dyr = malloc((L.y_elems ? L.y_elems : 1) * sizeof(float));
        memcpy(xr, x, L.len[SEG_X] * sizeof(float));
        memcpy(dyr, dy, L.y_elems * sizeof(float));
        tu_round_to_dtype(xr, L.len[SEG_X], dt);
        tu_round_to_dtype(dyr, L.y_elems, dt);
        void *xh = tu_to_dtype(xr, L.len[SEG_X], dt), *dyh = tu_to_dtype(dyr, L.y_elems, dt);
        condconv_layer_t l32 = make_layer(ctx, s, &rview, CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW);
        condconv_layer_t l16 = make_layer(ctx, s, &hview, dt, CONDCONV_LAYOUT_NCHW);
        grads_t g32, g16;
        grads_alloc(&g32, &L, L.len[SEG_X] * sizeof(float));
        grads_alloc(&g16, &L, L.len[SEG_X] * 2);
        grads_poison(&g32, &L);
        grads_poison(&g16, &L);
        const int ok32 = EXPECT_OK(call_bwd(l32, &c, xr, alpha, dyr, &g32, all));
        const int ok16 = EXPECT_OK(call_bwd(l16, &c, xh, alpha, dyh, &g16, all));
        if (ok32 && ok16) {
            expect_same_grads(dt == CONDCONV_DTYPE_F16 ? "f16" : "bf16", &g16, &g32, &L, 1);
            float *dx16 = malloc(L.len[SEG_X] * sizeof(float));
            EXPECT_OK(condconv_convert(dt, g16.g[SEG_X], CONDCONV_DTYPE_F32, dx16, L.len[SEG_X]));
            for (size_t i = 0; i < L.len[SEG_X]; ++i) {
                const float want16 = g32.g[SEG_X][i];
                float r = want16;
                tu_round_to_dtype(&r, 1, dt);
                /* One ulp of the dtype at r: 2^(exponent - 10) for f16, - 7 for bf16 (and f16's subnormal floor). */
                int ex = 0;
                frexpf(r == 0.0f ? 1e-30f : r, &ex);
                double ulp = ldexp(1.0, ex - 1 - (dt == CONDCONV_DTYPE_F16 ? 10 : 7));
                if (dt == CONDCONV_DTYPE_F16 && ulp < 0x1p-24) ulp = 0x1p-24;
                if (dx16[i] == r)
                    ++exact_half_dx;
                else if (fabs((double)dx16[i] - (double)r) <= ulp)
                    ++ulp_half_dx;
                else
                    EXPECT(0, "%s dx[%zu] = %.9g, f32 layer's rounded %.9g (%s)",
                           dt == CONDCONV_DTYPE_F16 ? "f16" : "bf16", i, (double)dx16[i], (double)r, tu_spec_string(s));
            }
            free(dx16);
        }
        grads_free(&g32);
        grads_free(&g16);
        condconv_layer_destroy(l32);
        condconv_layer_destroy(l16);
        free(xr);
        free(dyr);
        free(xh);
        free(dyh);
        for (int i = 0; i < 4; ++i) free(enc[i]);
        tu_free_params(&R);
    }

    grads_free(&full);
    condconv_layer_destroy(layer);
    tu_free_params(&P);
    free(thf);
    free(th);
    free(dy);
    free(z);
    free(want);
    free(tol);
}

/* ---------------- bad arguments ---------------- */

/* The call must return `want` and leave every output poisoned. */
#define EXPECT_REFUSED(call, want, g, L)                                                                               \
    do {                                                                                                               \
        grads_poison(&(g), &(L));                                                                                      \
        EXPECT_STATUS(call, want);                                                                                     \
        for (int k_ = 0; k_ < SEG_COUNT; ++k_)                                                                         \
            if ((g).g[k_]) {                                                                                           \
                const float *p_ = (g).g[k_];                                                                           \
                for (size_t i_ = 0; i_ < seg_floats(&(g), &(L), k_); ++i_)                                             \
                    if (!isnan(p_[i_])) {                                                                              \
                        EXPECT(0, "%s wrote %s[%zu]", #call, seg_name[k_], i_);                                        \
                        break;                                                                                         \
                    }                                                                                                  \
            }                                                                                                          \
    } while (0)

static void bad_inputs(condconv_context_t ctx)
{
    for (int routing = 0; routing < 2; ++routing) {
        case_t c = {tu_basic_spec(2, 3, 3, 2), 2, 5, 5, 0, 0, 0, 0};
        c.s.pad_h = c.s.pad_w = 1;
        c.s.has_bias = 0;
        c.s.routing = routing ? CONDCONV_ROUTING_SIGMOID : CONDCONV_ROUTING_EXTERNAL;
        own_geometry(&c);
        const layout_t L = make_layout(&c);
        tu_params P;
        tu_make_params(&c.s, &P);
        const condconv_params view = tu_params_view(&P);
        condconv_layer_t layer = make_layer(ctx, &c.s, &view, CONDCONV_DTYPE_F32, CONDCONV_LAYOUT_NCHW);
        float *x = malloc(L.len[SEG_X] * sizeof(float)), *dy = malloc(L.y_elems * sizeof(float));
        float alpha[4] = {0.5f, 0.25f, 0.75f, 1.0f};
        float extra[64];
        tu_fill_uniform(x, L.len[SEG_X], -1, 1);
        tu_fill_uniform(dy, L.y_elems, -1, 1);
        grads_t g;
        grads_alloc(&g, &L, L.len[SEG_X] * sizeof(float));
        float *dx = g.g[SEG_X], *dw = g.g[SEG_W];
        const float *a = routing ? NULL : alpha;
        EXPECT_REFUSED(condconv_backward_cpu(NULL, 2, 5, 5, x, a, dy, dx, NULL, dw, NULL, NULL, NULL),
                       CONDCONV_STATUS_NULL_POINTER, g, L);
        EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, NULL, a, dy, dx, NULL, dw, NULL, NULL, NULL),
                       CONDCONV_STATUS_NULL_POINTER, g, L);
        EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, a, NULL, dx, NULL, dw, NULL, NULL, NULL),
                       CONDCONV_STATUS_NULL_POINTER, g, L);
        EXPECT_REFUSED(condconv_backward_cpu(layer, 0, 5, 5, x, a, dy, dx, NULL, dw, NULL, NULL, NULL),
                       CONDCONV_STATUS_BAD_SIZE, g, L);
        EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, a, dy, NULL, NULL, NULL, NULL, NULL, NULL),
                       CONDCONV_STATUS_BAD_VALUE, g, L);
        /* d_expert_bias on a layer without bias. */
        EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, a, dy, dx, NULL, dw, extra, NULL, NULL),
                       CONDCONV_STATUS_BAD_VALUE, g, L);
        /* dx overlapping dy, and d_experts overlapping x. */
        EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, a, dy, dy + 1, NULL, dw, NULL, NULL, NULL),
                       CONDCONV_STATUS_BAD_VALUE, g, L);
        EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, a, dy, dx, NULL, x, NULL, NULL, NULL),
                       CONDCONV_STATUS_BAD_VALUE, g, L);
        if (routing) {
            EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, NULL, dy, dx, extra, dw, NULL, NULL, NULL),
                           CONDCONV_STATUS_BAD_VALUE, g, L);
            /* d_routing_weight overlapping d_routing_bias. */
            EXPECT_REFUSED(
                condconv_backward_cpu(layer, 2, 5, 5, x, NULL, dy, dx, NULL, dw, NULL, g.g[SEG_RW], g.g[SEG_RW] + 1),
                CONDCONV_STATUS_BAD_VALUE, g, L);
        } else {
            EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, NULL, dy, dx, NULL, dw, NULL, NULL, NULL),
                           CONDCONV_STATUS_MISSING_ROUTING, g, L);
            EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, a, dy, dx, NULL, dw, NULL, extra, NULL),
                           CONDCONV_STATUS_BAD_VALUE, g, L);
            EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, a, dy, dx, NULL, dw, NULL, NULL, extra),
                           CONDCONV_STATUS_BAD_VALUE, g, L);
            /* d_routing_in overlapping routing_in. */
            EXPECT_REFUSED(condconv_backward_cpu(layer, 2, 5, 5, x, a, dy, dx, alpha, dw, NULL, NULL, NULL),
                           CONDCONV_STATUS_BAD_VALUE, g, L);
        }
        EXPECT(condconv_last_error()[0] != '\0', "no message after a refusal");
        grads_free(&g);
        condconv_layer_destroy(layer);
        tu_free_params(&P);
        free(x);
        free(dy);
    }
}

/* ---------------- the cases ---------------- */

static case_t mk(int cin, int cout, int k, int experts, int groups, condconv_routing routing, float temperature,
                 int has_bias, condconv_activation activation, condconv_padding_mode pad_mode, int pad, int stride,
                 int dil, int h, int w)
{
    case_t c = {tu_basic_spec(cin, cout, k, experts), 2, h, w, 0, 0, 0, 0};
    c.s.groups = groups;
    c.s.routing = routing;
    c.s.temperature = temperature;
    c.s.has_bias = has_bias;
    c.s.activation = activation;
    c.s.pad_mode = pad_mode;
    c.s.pad_h = c.s.pad_w = pad;
    c.s.stride_h = c.s.stride_w = stride;
    c.s.dil_h = c.s.dil_w = dil;
    return c;
}

int main(void)
{
    tu_seed_from_env();
    const clock_t start = clock();
    condconv_context_t ctx;
    if (!EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU))) return tu_finish("test_backward_cpu");
    const condconv_routing EXT = CONDCONV_ROUTING_EXTERNAL, SIG = CONDCONV_ROUTING_SIGMOID,
                           SMX = CONDCONV_ROUTING_SOFTMAX;
    const condconv_activation NONE = CONDCONV_ACTIVATION_NONE, RELU = CONDCONV_ACTIVATION_RELU,
                              SILU = CONDCONV_ACTIVATION_SILU;
    const condconv_padding_mode EXPL = CONDCONV_PADDING_EXPLICIT, SAME = CONDCONV_PADDING_SAME;
    case_t cases[] = {
        /* cin cout k E g routing T bias act pad p s d h w */
        mk(3, 4, 3, 3, 1, EXT, 1.0f, 1, NONE, EXPL, 1, 1, 1, 5, 7),
        mk(3, 5, 3, 3, 1, SIG, 1.0f, 0, SILU, SAME, 0, 2, 1, 7, 5),
        mk(4, 6, 3, 2, 2, SMX, 0.7f, 1, RELU, EXPL, 2, 1, 2, 7, 7),
        mk(3, 3, 3, 3, 3, SIG, 1.0f, 1, SILU, SAME, 0, 2, 2, 7, 9),
        mk(3, 6, 3, 2, 3, EXT, 1.0f, 0, RELU, EXPL, 1, 2, 1, 5, 7),
        mk(4, 4, 1, 3, 1, SMX, 2.5f, 1, NONE, EXPL, 0, 1, 1, 5, 5),
        mk(2, 3, 3, 4, 1, EXT, 1.0f, 1, SILU, SAME, 0, 1, 2, 5, 7),
        mk(4, 2, 3, 2, 2, SMX, 0.5f, 0, SILU, SAME, 0, 2, 1, 9, 7),
        mk(3, 4, 5, 2, 1, SIG, 1.0f, 1, RELU, EXPL, 2, 2, 1, 9, 9),
        mk(2, 4, 3, 3, 2, EXT, 1.0f, 1, NONE, SAME, 0, 2, 2, 7, 5),
    };
    /* A non-square kernel with per-axis stride and dilation. */
    case_t odd = mk(3, 4, 3, 2, 1, SMX, 1.5f, 1, SILU, EXPL, 1, 1, 1, 7, 9);
    odd.s.kw = 5;
    odd.s.pad_w = 2;
    odd.s.stride_h = 2;
    odd.s.dil_w = 2;
    const int count = (int)(sizeof(cases) / sizeof(cases[0]));
    for (int i = 0; i < count; ++i) run_case(ctx, cases[i]);
    run_case(ctx, odd);
    /* Random layers of every kind (tests/test_util.c draws them), few experts so FD stays fast. */
    const int random_cases = tu_case_count(12);
    for (int drawn = 0; drawn < random_cases;) {
        case_t c = mk(1, 1, 1, 1, 1, EXT, 1.0f, 0, NONE, EXPL, 0, 1, 1, 1, 1);
        c.s = tu_random_spec(TU_ANY, 2, 3);
        if (c.s.experts > 5) c.s.experts = tu_rng_int(1, 5);
        c.n = tu_rng_int(1, 2);
        c.h = 2 * tu_rng_int(1, 4) + 1;
        c.w = 2 * tu_rng_int(1, 4) + 1;
        own_geometry(&c);
        if (c.ho < 1 || c.wo < 1) continue;
        run_case(ctx, c);
        ++drawn;
    }
    bad_inputs(ctx);
    printf("test_backward_cpu: %d cases; largest |error| / tolerance %.3g (|error| %.3g, in %s); half dx exact %ld, "
           "one ulp %ld; %.1f s CPU\n",
           cases_run, worst_ratio, worst_err, worst_what, exact_half_dx, ulp_half_dx,
           (double)(clock() - start) / CLOCKS_PER_SEC);
    EXPECT(cases_run == count + 1 + random_cases, "only %d of %d cases ran", cases_run, count + 1 + random_cases);
    EXPECT_OK(condconv_context_destroy(ctx));
    return tu_finish("test_backward_cpu");
}
