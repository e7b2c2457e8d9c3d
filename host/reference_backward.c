/* CPU reference backward. For each sample b (experts e, * the convolution):
 *   z_b = W_b * x_b + c_b,  y_b = act(z_b),
 *   W_b = sum_e alpha_be W_e,  c_b = sum_e alpha_be bias_e.
 * With g_b = dy_b . act'(z_b) (element-wise) and G_b = the gradient of
 * <g_b, W * x_b> with respect to the filter W (the weight gradient of one
 * convolution), the chain rule gives
 *   dx_b      = the transposed convolution of g_b with W_b,
 *   dW_e      = sum_b alpha_be G_b,
 *   dbias_e   = sum_b alpha_be sum_pixels g_b,
 *   dalpha_be = <W_e, G_b> + <bias_e, sum_pixels g_b>,
 * and, with routing inside the layer (alpha = sigmoid(l) or
 * softmax(l / T), l = R GAP(x) + r), dalpha goes back through the routing
 * function into dl, then dR = sum_b dl_b (x) GAP(x_b), dr = sum_b dl_b and
 * dx_b gains R^T dl_b / (H W) at every pixel (each pixel's share of the mean).
 * Loops mirror the forward's (reference.c) so the two are easy to compare;
 * indices in 64 bits, sums in double. */
#include "reference_backward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double cc_reference_activation_grad(condconv_activation act, double z)
{
    switch (act) {
    case CONDCONV_ACTIVATION_RELU: return z > 0.0 ? 1.0 : 0.0;
    case CONDCONV_ACTIVATION_SILU: {
        /* d/dz z s(z) = s + z s (1 - s). */
        const double s = 1.0 / (1.0 + exp(-z));
        return s * (1.0 + z * (1.0 - s));
    }
    case CONDCONV_ACTIVATION_NONE: break;
    }
    return 1.0;
}

/* Everything one sample's backward reads or writes besides the grads. */
typedef struct sample_bufs {
    double *filter; /* W_b [|W|] */
    double *bias;   /* c_b [Cout] */
    double *g;      /* g_b [Cout][Ho][Wo] */
    double *gw;     /* G_b [|W|] */
    double *gsum;   /* sum_pixels g_b [Cout] */
} sample_bufs;

/* g = dy . act'(z), z recomputed in double exactly as the forward sums it. */
static void output_grad(const condconv_layer_info *info, const cc_geometry *geom, const float *x, const float *dy,
                        const sample_bufs *s)
{
    const int cin_g = info->in_channels / info->groups, cout_g = info->out_channels / info->groups;
    const int KH = info->kernel_h, KW = info->kernel_w;
    for (int o = 0; o < info->out_channels; ++o) {
        const int group = o / cout_g;
        for (int oy = 0; oy < geom->out_h; ++oy) {
            for (int ox = 0; ox < geom->out_w; ++ox) {
                const size_t at = ((size_t)o * (size_t)geom->out_h + (size_t)oy) * (size_t)geom->out_w + (size_t)ox;
                if (info->activation == CONDCONV_ACTIVATION_NONE) { /* act' = 1: z is not needed */
                    s->g[at] = dy[at];
                    continue;
                }
                double z = s->bias[o];
                for (int i = 0; i < cin_g; ++i) {
                    const int c = group * cin_g + i;
                    for (int ky = 0; ky < KH; ++ky) {
                        const long iy = (long)oy * info->stride_h - geom->pad_top + (long)ky * info->dilation_h;
                        if (iy < 0 || iy >= geom->h) continue;
                        for (int kx = 0; kx < KW; ++kx) {
                            const long ix = (long)ox * info->stride_w - geom->pad_left + (long)kx * info->dilation_w;
                            if (ix < 0 || ix >= geom->w) continue;
                            const size_t wi =
                                (((size_t)o * (size_t)cin_g + (size_t)i) * (size_t)KH + (size_t)ky) * (size_t)KW +
                                (size_t)kx;
                            const size_t xi = ((size_t)c * (size_t)geom->h + (size_t)iy) * (size_t)geom->w + (size_t)ix;
                            z += s->filter[wi] * (double)x[xi];
                        }
                    }
                }
                s->g[at] = (double)dy[at] * cc_reference_activation_grad(info->activation, z);
            }
        }
    }
}

/* The same loop nest as the forward's convolution, each multiply-add
 * w * x -> z run backwards: z's gradient g flows to x (scaled by w: the
 * transposed convolution, padding and stride included by construction) and
 * to w (scaled by x: the weight gradient G_b). dx_b and gw may be NULL. */
static void conv_backward(const condconv_layer_info *info, const cc_geometry *geom, const float *x,
                          const sample_bufs *s, double *dx_b, double *gw)
{
    const int cin_g = info->in_channels / info->groups, cout_g = info->out_channels / info->groups;
    const int KH = info->kernel_h, KW = info->kernel_w;
    for (int o = 0; o < info->out_channels; ++o) {
        const int group = o / cout_g;
        for (int oy = 0; oy < geom->out_h; ++oy) {
            for (int ox = 0; ox < geom->out_w; ++ox) {
                const double gv =
                    s->g[((size_t)o * (size_t)geom->out_h + (size_t)oy) * (size_t)geom->out_w + (size_t)ox];
                for (int i = 0; i < cin_g; ++i) {
                    const int c = group * cin_g + i;
                    for (int ky = 0; ky < KH; ++ky) {
                        const long iy = (long)oy * info->stride_h - geom->pad_top + (long)ky * info->dilation_h;
                        if (iy < 0 || iy >= geom->h) continue; /* padding: no input, no gradient */
                        for (int kx = 0; kx < KW; ++kx) {
                            const long ix = (long)ox * info->stride_w - geom->pad_left + (long)kx * info->dilation_w;
                            if (ix < 0 || ix >= geom->w) continue;
                            const size_t wi =
                                (((size_t)o * (size_t)cin_g + (size_t)i) * (size_t)KH + (size_t)ky) * (size_t)KW +
                                (size_t)kx;
                            const size_t xi = ((size_t)c * (size_t)geom->h + (size_t)iy) * (size_t)geom->w + (size_t)ix;
                            if (dx_b != NULL) dx_b[xi] += s->filter[wi] * gv;
                            if (gw != NULL) gw[wi] += (double)x[xi] * gv;
                        }
                    }
                }
            }
        }
    }
}

/* dl from dalpha through alpha = sigmoid(l) or softmax(l / T):
 *   sigmoid: dl_e = dalpha_e alpha_e (1 - alpha_e);
 *   softmax: dalpha_e / d(l_k / T) = alpha_e (delta_ek - alpha_k), so
 *            dl_k = alpha_k (dalpha_k - sum_e alpha_e dalpha_e) / T. */
static void routing_backward(const condconv_layer_info *info, const double *alpha, const double *dalpha, double *dl)
{
    const int E = info->num_experts;
    if (info->routing == CONDCONV_ROUTING_SOFTMAX) {
        double dot = 0.0;
        for (int e = 0; e < E; ++e) dot += alpha[e] * dalpha[e];
        for (int e = 0; e < E; ++e) dl[e] = alpha[e] * (dalpha[e] - dot) / (double)info->temperature;
    } else {
        for (int e = 0; e < E; ++e) dl[e] = dalpha[e] * alpha[e] * (1.0 - alpha[e]);
    }
}

condconv_status cc_reference_backward(const condconv_layer_info *info, const cc_host_params *params,
                                      const cc_geometry *geom, const float *x, const float *alpha_in, const float *dy,
                                      const cc_backward_grads *grads)
{
    const int E = info->num_experts, C = info->in_channels, Cout = info->out_channels;
    const int external = info->routing == CONDCONV_ROUTING_EXTERNAL;
    const size_t filter_elems =
        (size_t)Cout * (size_t)(C / info->groups) * (size_t)info->kernel_h * (size_t)info->kernel_w;
    const size_t hw = (size_t)geom->h * (size_t)geom->w;
    const size_t x_sample = (size_t)C * hw;
    const size_t y_sample = (size_t)Cout * (size_t)geom->out_h * (size_t)geom->out_w;
    /* dalpha is needed for itself, and with self-routing for every gradient
     * the routing function passes on (its parameters' and x's). */
    const int need_dalpha = grads->d_alpha != NULL || grads->d_routing_weight != NULL ||
                            grads->d_routing_bias != NULL || (!external && grads->dx != NULL);
    const int need_gw = need_dalpha || grads->d_experts != NULL;

    double *alpha = calloc((size_t)geom->n * (size_t)E, sizeof(double));
    double *gap = calloc((size_t)C, sizeof(double));
    sample_bufs s = {calloc(filter_elems, sizeof(double)), calloc((size_t)Cout, sizeof(double)),
                     calloc(y_sample ? y_sample : 1, sizeof(double)), calloc(filter_elems, sizeof(double)),
                     calloc((size_t)Cout, sizeof(double))};
    const int ok = alpha && gap && s.filter && s.bias && s.g && s.gw && s.gsum;
    if (ok) {
        if (external)
            for (size_t i = 0; i < (size_t)geom->n * (size_t)E; ++i) alpha[i] = alpha_in[i];
        else
            cc_reference_route(info, params, geom, x, alpha);
        /* Written, not accumulated: start every sum over samples at zero. */
        if (grads->dx) memset(grads->dx, 0, sizeof(double) * (size_t)geom->n * x_sample);
        if (grads->d_experts) memset(grads->d_experts, 0, sizeof(double) * (size_t)E * filter_elems);
        if (grads->d_expert_bias) memset(grads->d_expert_bias, 0, sizeof(double) * (size_t)E * (size_t)Cout);
        if (grads->d_routing_weight) memset(grads->d_routing_weight, 0, sizeof(double) * (size_t)E * (size_t)C);
        if (grads->d_routing_bias) memset(grads->d_routing_bias, 0, sizeof(double) * (size_t)E);
    }
    for (int n = 0; ok && n < geom->n; ++n) {
        const float *xb = x + (size_t)n * x_sample;
        const double *ab = alpha + (size_t)n * (size_t)E;
        double *dx_b = grads->dx ? grads->dx + (size_t)n * x_sample : NULL;
        cc_reference_aggregate(info, params, ab, s.filter, s.bias);
        output_grad(info, geom, xb, dy + (size_t)n * y_sample, &s);
        if (need_gw) memset(s.gw, 0, sizeof(double) * filter_elems);
        conv_backward(info, geom, xb, &s, dx_b, need_gw ? s.gw : NULL);
        const size_t plane_out = (size_t)geom->out_h * (size_t)geom->out_w;
        for (int o = 0; o < Cout; ++o) {
            double sum = 0.0;
            for (size_t p = 0; p < plane_out; ++p) sum += s.g[(size_t)o * plane_out + p];
            s.gsum[o] = sum;
        }
        /* The mixture W_b = sum_e alpha_be W_e (and c_b likewise) is linear in
         * both factors: W_e's gradient is alpha_be G_b, alpha_be's <W_e, G_b>. */
        double dalpha[CONDCONV_MAX_EXPERTS] = {0};
        for (int e = 0; e < E; ++e) {
            const float *we = params->experts + (size_t)e * filter_elems;
            double dot = 0.0;
            for (size_t i = 0; i < filter_elems; ++i) {
                if (grads->d_experts) grads->d_experts[(size_t)e * filter_elems + i] += ab[e] * s.gw[i];
                if (need_dalpha) dot += (double)we[i] * s.gw[i];
            }
            if (info->has_bias) {
                const float *be = params->expert_bias + (size_t)e * (size_t)Cout;
                for (int o = 0; o < Cout; ++o) {
                    if (grads->d_expert_bias)
                        grads->d_expert_bias[(size_t)e * (size_t)Cout + (size_t)o] += ab[e] * s.gsum[o];
                    dot += (double)be[o] * s.gsum[o];
                }
            }
            dalpha[e] = dot;
        }
        if (grads->d_alpha)
            for (int e = 0; e < E; ++e) grads->d_alpha[(size_t)n * (size_t)E + (size_t)e] = dalpha[e];
        if (external || !need_dalpha) continue;
        /* Back through the routing function: l = R GAP(x_b) + r. */
        double dl[CONDCONV_MAX_EXPERTS] = {0};
        routing_backward(info, ab, dalpha, dl);
        for (int c = 0; c < C; ++c) {
            double sum = 0.0;
            for (size_t i = 0; i < hw; ++i) sum += xb[(size_t)c * hw + i];
            gap[c] = sum / (double)hw;
        }
        for (int e = 0; e < E; ++e) {
            if (grads->d_routing_bias) grads->d_routing_bias[e] += dl[e];
            if (grads->d_routing_weight)
                for (int c = 0; c < C; ++c)
                    grads->d_routing_weight[(size_t)e * (size_t)C + (size_t)c] += dl[e] * gap[c];
        }
        if (dx_b != NULL) {
            /* Each pixel of channel c enters GAP(x_b)_c with weight 1 / (H W). */
            for (int c = 0; c < C; ++c) {
                double dmean = 0.0;
                for (int e = 0; e < E; ++e)
                    dmean += (double)params->routing_weight[(size_t)e * (size_t)C + (size_t)c] * dl[e];
                for (size_t i = 0; i < hw; ++i) dx_b[(size_t)c * hw + i] += dmean / (double)hw;
            }
        }
    }
    free(alpha);
    free(gap);
    free(s.filter);
    free(s.bias);
    free(s.g);
    free(s.gw);
    free(s.gsum);
    return ok ? CONDCONV_STATUS_SUCCESS : CONDCONV_STATUS_ALLOC_FAILED;
}
