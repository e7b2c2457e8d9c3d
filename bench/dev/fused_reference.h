// The fused CondConv kernel's double-precision CPU reference, shared by its
// dev driver (bench/dev/fused_dev.cu, validate before timing) and its test
// on the CPU execution layer (tests/cuda_cpu/test_fused_conv.cpp). From the
// library's expert layout [E][Cout][Cin/g][kh][kw] (not the packed one):
//   ref[n][o][p] = act(sum_e alpha_ne b_eo + sum_{c,ky,kx} W_n[o][c][ky][kx] x[n][g*Cin/g + c][iy][ix])
// with W_n = sum_e alpha_ne W_e in double, and mag = the same sum of |terms|,
// the scale of any f32 summation's rounding error. C++, header only.
#ifndef CONDCONV_BENCH_DEV_FUSED_REFERENCE_H
#define CONDCONV_BENCH_DEV_FUSED_REFERENCE_H

#include <math.h>
#include <stdlib.h>

#include "fused_conv.h"

static inline double cc_fused_ref_activate(int act, double v)
{
    if (act == 1) return v < 0.0 ? 0.0 : v;
    if (act == 2) return v / (1.0 + exp(-v));
    return v;
}

static inline void cc_fused_reference(const cc_fused_args &a, const float *x, const float *experts, const float *bias,
                                      const float *alpha, double *ref, double *mag)
{
    const int cin_g = a.in_channels / a.groups, mg = a.out_channels / a.groups, taps = a.kernel_h * a.kernel_w;
    const size_t wsz = (size_t)a.out_channels * cin_g * taps;
    double *wn = (double *)malloc(sizeof(double) * wsz);
    for (int n = 0; n < a.n; ++n) {
        for (size_t j = 0; j < wsz; ++j) {
            double acc = 0.0;
            for (int e = 0; e < a.experts; ++e) acc += (double)alpha[n * a.experts + e] * experts[e * wsz + j];
            wn[j] = acc;
        }
        for (int o = 0; o < a.out_channels; ++o) {
            double b = 0.0;
            if (bias)
                for (int e = 0; e < a.experts; ++e)
                    b += (double)alpha[n * a.experts + e] * bias[e * a.out_channels + o];
            const int g = o / mg;
            for (int oy = 0; oy < a.out_h; ++oy)
                for (int ox = 0; ox < a.out_w; ++ox) {
                    double acc = b, m = fabs(b);
                    for (int ci = 0; ci < cin_g; ++ci)
                        for (int ky = 0; ky < a.kernel_h; ++ky)
                            for (int kx = 0; kx < a.kernel_w; ++kx) {
                                const int iy = oy * a.stride_h - a.pad_top + ky * a.dilation_h;
                                const int ix = ox * a.stride_w - a.pad_left + kx * a.dilation_w;
                                if (iy < 0 || iy >= a.h || ix < 0 || ix >= a.w) continue;
                                const double t =
                                    wn[((size_t)o * cin_g + ci) * taps + ky * a.kernel_w + kx] *
                                    x[(((size_t)n * a.in_channels + (size_t)g * cin_g + ci) * a.h + iy) * a.w + ix];
                                acc += t;
                                m += fabs(t);
                            }
                    const size_t idx = (((size_t)n * a.out_channels + o) * a.out_h + oy) * a.out_w + ox;
                    ref[idx] = cc_fused_ref_activate(a.activation, acc);
                    mag[idx] = m;
                }
        }
    }
    free(wn);
}

#endif
