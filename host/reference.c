/* CPU reference: routing, aggregation, direct convolution, bias, activation.
 * Loops are written in the order of the definitions, indices in 64 bits,
 * sums in double: slow and obviously right is the point. */
#include "reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double cc_reference_activation(condconv_activation act, double x)
{
    switch (act) {
    case CONDCONV_ACTIVATION_RELU: return x < 0.0 ? 0.0 : x; /* NaN stays NaN */
    case CONDCONV_ACTIVATION_SILU: return x / (1.0 + exp(-x));
    case CONDCONV_ACTIVATION_NONE: break;
    }
    return x;
}

void cc_reference_route(const condconv_layer_info *info, const cc_host_params *params, const cc_geometry *geom,
                        const float *x, double *alpha)
{
    const int C = info->in_channels, E = info->num_experts;
    const size_t hw = (size_t)geom->h * (size_t)geom->w;
    double logits[CONDCONV_MAX_EXPERTS] = {0};
    for (int n = 0; n < geom->n; ++n) {
        for (int e = 0; e < E; ++e) logits[e] = params->routing_bias ? params->routing_bias[e] : 0.0;
        for (int c = 0; c < C; ++c) {
            const float *plane = x + ((size_t)n * (size_t)C + (size_t)c) * hw;
            double sum = 0.0;
            for (size_t i = 0; i < hw; ++i) sum += plane[i];
            const double mean = sum / (double)hw;
            for (int e = 0; e < E; ++e)
                logits[e] += (double)params->routing_weight[(size_t)e * (size_t)C + (size_t)c] * mean;
        }
        double *a = alpha + (size_t)n * (size_t)E;
        if (info->routing == CONDCONV_ROUTING_SOFTMAX) {
            const double tau = info->temperature;
            double max = logits[0] / tau;
            for (int e = 1; e < E; ++e) max = fmax(max, logits[e] / tau);
            double total = 0.0;
            for (int e = 0; e < E; ++e) total += a[e] = exp(logits[e] / tau - max);
            for (int e = 0; e < E; ++e) a[e] /= total;
        } else {
            for (int e = 0; e < E; ++e) a[e] = 1.0 / (1.0 + exp(-logits[e]));
        }
    }
}

void cc_reference_aggregate(const condconv_layer_info *info, const cc_host_params *params, const double *alpha_row,
                            double *filter, double *bias)
{
    const size_t filter_elems = (size_t)info->out_channels * (size_t)(info->in_channels / info->groups) *
                                (size_t)info->kernel_h * (size_t)info->kernel_w;
    for (size_t i = 0; i < filter_elems; ++i) {
        double sum = 0.0;
        for (int e = 0; e < info->num_experts; ++e) sum += alpha_row[e] * params->experts[(size_t)e * filter_elems + i];
        filter[i] = sum;
    }
    for (int o = 0; o < info->out_channels; ++o) {
        double sum = 0.0;
        if (info->has_bias)
            for (int e = 0; e < info->num_experts; ++e)
                sum += alpha_row[e] * params->expert_bias[(size_t)e * (size_t)info->out_channels + (size_t)o];
        bias[o] = sum;
    }
}

void cc_reference_conv_sample(const condconv_layer_info *info, const cc_geometry *geom, const float *x,
                              const double *filter, const double *bias, float *y)
{
    const int cin_g = info->in_channels / info->groups, cout_g = info->out_channels / info->groups;
    const int KH = info->kernel_h, KW = info->kernel_w;
    for (int o = 0; o < info->out_channels; ++o) {
        const int group = o / cout_g;
        for (int oy = 0; oy < geom->out_h; ++oy) {
            for (int ox = 0; ox < geom->out_w; ++ox) {
                double sum = bias[o];
                for (int i = 0; i < cin_g; ++i) {
                    const int c = group * cin_g + i;
                    for (int ky = 0; ky < KH; ++ky) {
                        const long iy = (long)oy * info->stride_h - geom->pad_top + (long)ky * info->dilation_h;
                        if (iy < 0 || iy >= geom->h) continue;
                        /* Where row ky of the filter and row iy of the input begin. */
                        const size_t w_row =
                            (((size_t)o * (size_t)cin_g + (size_t)i) * (size_t)KH + (size_t)ky) * (size_t)KW;
                        const size_t x_row = ((size_t)c * (size_t)geom->h + (size_t)iy) * (size_t)geom->w;
                        for (int kx = 0; kx < KW; ++kx) {
                            const long ix = (long)ox * info->stride_w - geom->pad_left + (long)kx * info->dilation_w;
                            if (ix < 0 || ix >= geom->w) continue;
                            const double wv = filter[w_row + (size_t)kx];
                            const double xv = x[x_row + (size_t)ix];
                            sum += wv * xv;
                        }
                    }
                }
                y[((size_t)o * (size_t)geom->out_h + (size_t)oy) * (size_t)geom->out_w + (size_t)ox] =
                    (float)cc_reference_activation(info->activation, sum);
            }
        }
    }
}

condconv_status cc_reference_forward(const condconv_layer_info *info, const cc_host_params *params,
                                     const cc_geometry *geom, const float *x, const float *alpha_in, float *y,
                                     float *alpha_out)
{
    const int E = info->num_experts;
    const size_t filter_elems = (size_t)info->out_channels * (size_t)(info->in_channels / info->groups) *
                                (size_t)info->kernel_h * (size_t)info->kernel_w;
    /* Zeroed: no path, however the sizes relate, reads an indeterminate value. */
    double *alpha = calloc((size_t)geom->n * (size_t)E, sizeof(double));
    double *filter = calloc(filter_elems, sizeof(double));
    double *bias = calloc((size_t)info->out_channels, sizeof(double));
    if (alpha == NULL || filter == NULL || bias == NULL) {
        free(alpha);
        free(filter);
        free(bias);
        return CONDCONV_STATUS_ALLOC_FAILED;
    }
    if (info->routing == CONDCONV_ROUTING_EXTERNAL) {
        for (size_t i = 0; i < (size_t)geom->n * (size_t)E; ++i) alpha[i] = alpha_in[i];
    } else {
        cc_reference_route(info, params, geom, x, alpha);
    }
    const size_t x_sample = (size_t)info->in_channels * (size_t)geom->h * (size_t)geom->w;
    const size_t y_sample = (size_t)info->out_channels * (size_t)geom->out_h * (size_t)geom->out_w;
    for (int n = 0; n < geom->n; ++n) {
        cc_reference_aggregate(info, params, alpha + (size_t)n * (size_t)E, filter, bias);
        cc_reference_conv_sample(info, geom, x + (size_t)n * x_sample, filter, bias, y + (size_t)n * y_sample);
    }
    if (alpha_out != NULL)
        for (size_t i = 0; i < (size_t)geom->n * (size_t)E; ++i) alpha_out[i] = (float)alpha[i];
    free(alpha);
    free(filter);
    free(bias);
    return CONDCONV_STATUS_SUCCESS;
}
