/* kernels/depthwise_fused.cu on the CPU execution layer, against a
 * double-precision reference: every output plane convolved with its filter
 * mixed from the experts, plus the mixed bias, then the activation.
 *
 * The sweep reaches all 30 instances, for each dtype NCHW's 8 and NHWC's 2
 * (16-byte and scalar accesses). NCHW's: square 3x3, 5x5 and 7x7 kernels
 * (unrolled) and every other size (1x1, 2x2, 4x4, 9x9, 1x3, 3x1, 3x5, 5x2,
 * run-time bounds), each with 8x8 tiles (outputs up to 8x8) and 16x16 tiles;
 * strides 1-3 (also different in h and w), dilation 1-3, channel
 * multipliers 1-3, asymmetric padding (more below/right than above/left, as
 * "same" padding gives, and the reverse), a 1x1 spatial input, partial
 * tiles, E from 1 to 32, bias or not, and each activation. The launcher
 * must refuse shapes whose patch exceeds 48 KiB of shared memory (NHWC:
 * whose chunk of mixed filters does), and unknown dtypes and layouts.
 *
 * Every case runs for each dtype (f32, f16, bf16) of x, the experts and y,
 * and each layout (NCHW, NHWC); NHWC also runs channel counts that reach
 * its 16-byte path (multiplier 1, C a multiple of 16 / sizeof, x and y
 * aligned), several 64-channel chunks, and misaligned x or y (the scalar
 * fallback). Inputs are generated as floats and rounded to the dtype; the
 * reference takes the rounded values. y is poisoned (all bits set: NaN in
 * every dtype) before each launch.
 *
 * Tolerance: the filter is mixed with E fused multiply-adds, then taps
 * products are added: within d = (E + taps + 8) * 2^-24 of the magnitude
 * sum |w_t x_t| + |b| (w from |alpha| |W_e|); SiLU's slope is below 1.1.
 * That is the f32 bound, for every dtype (loads convert exactly, the
 * arithmetic is f32). A 16-bit output is that f32 value v rounded once to
 * nearest: |RN(v) - v| <= u |v| <= u (|ref| + d), u = 2^-11 (f16) or 2^-8
 * (bf16), plus 2^-25 for f16 subnormals (bf16 has f32's range). So
 * |got - ref| <= d (1 + u) + u |ref| + 2^-25. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "depthwise_fused.h"
#include "emu_dtype.h"
#include "emu_util.h"

static int cases, launches;

static double activate(int act, double v)
{
    if (act == 1) return v < 0 ? 0 : v;
    if (act == 2) return v / (1.0 + exp(-v));
    return v;
}

/* out = (in + pads - dilated kernel) / stride + 1 */
static int out_dim(int in, int pad_a, int pad_b, int k, int dil, int stride)
{
    return (in + pad_a + pad_b - (dil * (k - 1) + 1)) / stride + 1;
}

/* misaligned: 1 = x, 2 = y, 3 = both 4 bytes off 16 (NHWC's scalar fallback). */
static void run_case_at(cc_depthwise_args a, int pad_bottom, int pad_right, int misaligned)
{
    a.out_h = out_dim(a.h, a.pad_top, pad_bottom, a.kernel_h, a.dilation_h, a.stride_h);
    a.out_w = out_dim(a.w, a.pad_left, pad_right, a.kernel_w, a.dilation_w, a.stride_w);
    if (a.out_h < 1 || a.out_w < 1) return;
    ++cases;
    const int cout = a.in_channels * a.multiplier, taps = a.kernel_h * a.kernel_w;
    const size_t x_n = (size_t)a.n * a.in_channels * a.h * a.w, w_n = (size_t)a.experts_count * cout * taps;
    const size_t b_n = (size_t)a.experts_count * cout, al_n = (size_t)a.n * a.experts_count;
    const size_t y_n = (size_t)a.n * cout * a.out_h * a.out_w;
    /* x [N][Cin][H][W] and y [N][Cout][Ho][Wo] here, whatever the layout. */
    float *x = eu_random(x_n, -1.0f, 1.0f), *w = eu_random(w_n, -1.0f, 1.0f), *b = eu_random(b_n, -1.0f, 1.0f);
    float *al = eu_random(al_n, 0.0f, 1.0f);
    ed_round_all(a.dtype, x, x_n);
    ed_round_all(a.dtype, w, w_n);
    const int has_bias = a.bias != NULL, nhwc = a.layout == CC_LAYOUT_NHWC;
    float *xl = x;
    if (nhwc) {
        xl = eu_floats(x_n);
        for (int s = 0; s < a.n; ++s)
            for (int c = 0; c < a.in_channels; ++c)
                for (int i = 0; i < a.h * a.w; ++i)
                    xl[((size_t)s * a.h * a.w + i) * a.in_channels + c] =
                        x[((size_t)s * a.in_channels + c) * a.h * a.w + i];
    }
    eu_buffer dx = ed_eu_upload(a.dtype, xl, x_n, misaligned & 1), dw = ed_eu_upload(a.dtype, w, w_n, 0);
    eu_buffer db = eu_buffer_make(b_n, 0), da = eu_buffer_make(al_n, 0);
    eu_buffer dy = ed_eu_poisoned(a.dtype, y_n, (misaligned & 2) != 0);
    if (xl != x) free(xl);
    eu_upload(&db, b);
    eu_upload(&da, al);
    a.x = dx.data;
    a.experts = dw.data;
    a.bias = has_bias ? db.data : NULL;
    a.alpha = da.data;
    a.y = dy.data;
    const long long before = cc_cpu_launch_count("depthwise_");
    EU_LAUNCH(cc_launch_depthwise_fused(&a, NULL));
    launches += (int)(cc_cpu_launch_count("depthwise_") - before);

    double *want = eu_doubles(y_n), *mag = eu_doubles(y_n), *filt = eu_doubles((size_t)taps),
           *fabs_ = eu_doubles((size_t)taps);
    for (int s = 0; s < a.n; ++s)
        for (int o = 0; o < cout; ++o) {
            const int ci = o / a.multiplier;
            double bias = 0, bias_abs = 0;
            for (int t = 0; t < taps; ++t) filt[t] = fabs_[t] = 0;
            for (int e = 0; e < a.experts_count; ++e) {
                const double ae = al[(size_t)s * a.experts_count + e];
                for (int t = 0; t < taps; ++t) {
                    const double v = w[((size_t)e * cout + o) * taps + t];
                    filt[t] += ae * v;
                    fabs_[t] += fabs(ae * v);
                }
                if (has_bias) {
                    bias += ae * b[(size_t)e * cout + o];
                    bias_abs += fabs(ae * b[(size_t)e * cout + o]);
                }
            }
            for (int oy = 0; oy < a.out_h; ++oy)
                for (int ox = 0; ox < a.out_w; ++ox) {
                    double acc = bias, m = bias_abs;
                    for (int ky = 0; ky < a.kernel_h; ++ky)
                        for (int kx = 0; kx < a.kernel_w; ++kx) {
                            const int iy = oy * a.stride_h - a.pad_top + ky * a.dilation_h;
                            const int ix = ox * a.stride_w - a.pad_left + kx * a.dilation_w;
                            if (iy < 0 || iy >= a.h || ix < 0 || ix >= a.w) continue;
                            const double v = x[(((size_t)s * a.in_channels + ci) * a.h + iy) * a.w + ix];
                            acc += filt[ky * a.kernel_w + kx] * v;
                            m += fabs_[ky * a.kernel_w + kx] * fabs(v);
                        }
                    const size_t at = (((size_t)s * cout + o) * a.out_h + oy) * a.out_w + ox;
                    want[at] = activate(a.activation, acc);
                    mag[at] = m;
                }
        }
    char what[240];
    snprintf(what, sizeof what,
             "y (%s %s%s N=%d C=%d m=%d E=%d %dx%d k=%dx%d s=%dx%d d=%dx%d pad=%d,%d,%d,%d out=%dx%d act=%d bias=%d)",
             ed_name(a.dtype), nhwc ? "NHWC" : "NCHW",
             misaligned == 1   ? " x misaligned"
             : misaligned == 2 ? " y misaligned"
             : misaligned == 3 ? " x,y misaligned"
                               : "",
             a.n, a.in_channels, a.multiplier, a.experts_count, a.h, a.w, a.kernel_h, a.kernel_w, a.stride_h,
             a.stride_w, a.dilation_h, a.dilation_w, a.pad_top, pad_bottom, a.pad_left, pad_right, a.out_h, a.out_w,
             a.activation, has_bias);
    float *got = eu_floats(y_n), *gl = eu_floats(y_n);
    EU_EXPECT(ed_eu_download(a.dtype, &dy, gl, y_n), "%s: written past the last element", what);
    for (size_t i = 0; i < y_n; ++i) { /* to [N][Cout][Ho][Wo] */
        const size_t plane = (size_t)a.out_h * a.out_w, s = i / (plane * cout), r = i % (plane * cout);
        got[i] = nhwc ? gl[(s * plane + r % plane) * cout + r / plane] : gl[i];
    }
    /* Each element's bound (header comment). */
    const double u = a.dtype == CC_DTYPE_F16 ? 1.0 / 2048 : a.dtype == CC_DTYPE_BF16 ? 1.0 / 256 : 0.0;
    const double tiny = a.dtype == CC_DTYPE_F16 ? ldexp(1.0, -25) : 1e-30;
    for (size_t i = 0; i < y_n; ++i) {
        const double d = (a.experts_count + taps + 8) * EU_U * 1.1 * mag[i];
        mag[i] = d * (1 + u) + u * fabs(want[i]) + tiny;
    }
    eu_compare(what, got, want, mag, y_n, 0.0, 1.0);
    eu_guards_intact(&dy, what);
    free(gl);
    free(x);
    free(w);
    free(b);
    free(al);
    free(want);
    free(mag);
    free(filt);
    free(fabs_);
    free(got);
    eu_buffer_free(&dx);
    eu_buffer_free(&dw);
    eu_buffer_free(&db);
    eu_buffer_free(&da);
    eu_buffer_free(&dy);
}

static void run_case(cc_depthwise_args a, int pad_bottom, int pad_right) { run_case_at(a, pad_bottom, pad_right, 0); }

static int g_dtype, g_layout; /* of the sweep running */

static cc_depthwise_args base(int kh, int kw)
{
    cc_depthwise_args a = {0};
    a.dtype = g_dtype;
    a.layout = g_layout;
    a.n = 1;
    a.in_channels = 2;
    a.multiplier = 1;
    a.experts_count = 2;
    a.h = a.w = 7;
    a.kernel_h = kh;
    a.kernel_w = kw;
    a.stride_h = a.stride_w = a.dilation_h = a.dilation_w = 1;
    a.pad_top = kh / 2;
    a.pad_left = kw / 2;
    return a;
}

static const float one = 1.0f; /* any non-NULL pointer: run_case replaces it with the device bias */

static void sweep(void)
{
    static const int kernels[][2] = {{3, 3}, {5, 5}, {7, 7}, {1, 1}, {2, 2}, {4, 4},
                                     {9, 9}, {1, 3}, {3, 1}, {3, 5}, {5, 2}};
    int i = 0;
    for (size_t ki = 0; ki < sizeof kernels / sizeof kernels[0]; ++ki)
        for (int v = 0; v < 6; ++v, ++i) {
            cc_depthwise_args a = base(kernels[ki][0], kernels[ki][1]);
            /* v 0-2: outputs up to 8x8 (8x8 tiles); v 3-5: larger (16x16 tiles, partial tiles). */
            a.h = v < 3 ? 3 + v * 2 : 9 + (v - 3) * 7;
            a.w = v < 3 ? 8 - v : 17 + (v - 3) * 5;
            a.stride_h = 1 + (v % 3 == 2);
            a.stride_w = 1 + (i % 4 == 3) * 2;
            a.dilation_h = a.dilation_w = 1 + (i % 5 == 4);
            if (i % 7 == 6) a.dilation_w = 3;
            a.multiplier = 1 + i % 3;
            a.in_channels = 1 + i % 3;
            a.n = 1 + (i % 4 == 1);
            a.experts_count = (int[]){1, 2, 3, 4, 8, 16, 32}[i % 7];
            a.activation = i % 3;
            a.bias = i % 2 ? &one : NULL;
            /* Padding: symmetric, "same"-style (extra row/column below/right), or the reverse. */
            const int total_h = a.dilation_h * (a.kernel_h - 1), total_w = a.dilation_w * (a.kernel_w - 1);
            const int style = i % 3;
            a.pad_top = style == 2 ? (total_h + 1) / 2 : total_h / 2;
            a.pad_left = style == 2 ? (total_w + 1) / 2 : total_w / 2;
            const int pb = style == 0 ? a.pad_top : total_h - a.pad_top + (style == 1 && total_h % 2 == 0);
            const int pr = style == 0 ? a.pad_left : total_w - a.pad_left + (style == 1 && total_w % 2 == 0);
            run_case(a, pb, pr);
        }
    /* A 1x1 spatial input, padded, and an unpadded input exactly the kernel's size. */
    for (int k = 1; k <= 7; k += 2) {
        cc_depthwise_args a = base(k, k);
        a.h = a.w = 1;
        a.in_channels = 5;
        a.experts_count = 3;
        a.activation = 2;
        a.bias = &one;
        run_case(a, k / 2, k / 2);
        a = base(k, k);
        a.h = a.w = k;
        a.pad_top = a.pad_left = 0;
        run_case(a, 0, 0);
    }
    if (g_layout != CC_LAYOUT_NHWC) return;
    /* NHWC: channel counts for the 16-byte path (multiplier 1), several
     * 64-channel chunks (the last one partial), a multiplier with a
     * vectorisable Cin (scalar), and misaligned x or y (scalar). */
    static const int wide[][5] = {/* Cin, multiplier, kernel, misaligned, E */
                                  {8, 1, 3, 0, 1},   {16, 1, 5, 0, 32}, {24, 1, 3, 0, 4}, {72, 1, 7, 0, 3},
                                  {136, 1, 3, 0, 2}, {8, 2, 3, 0, 2},   {40, 3, 2, 0, 5}, {16, 1, 3, 1, 3},
                                  {24, 1, 5, 2, 8},  {64, 1, 3, 3, 1},  {12, 1, 1, 0, 2}, {4, 1, 3, 0, 2}};
    for (size_t wi = 0; wi < sizeof wide / sizeof wide[0]; ++wi) {
        cc_depthwise_args a = base(wide[wi][2], wide[wi][2]);
        a.in_channels = wide[wi][0];
        a.multiplier = wide[wi][1];
        a.experts_count = wide[wi][4];
        a.h = 5 + (int)wi % 4 * 3;
        a.w = 11 - (int)wi % 3;
        a.n = 1 + (int)wi % 2;
        a.stride_h = 1 + (int)wi % 2;
        a.stride_w = 1 + (int)(wi % 3 == 2);
        a.dilation_w = 1 + (int)(wi % 4 == 3);
        a.activation = (int)wi % 3;
        a.bias = wi % 2 ? NULL : &one;
        const int total_h = a.dilation_h * (a.kernel_h - 1), total_w = a.dilation_w * (a.kernel_w - 1);
        a.pad_top = total_h / 2;
        a.pad_left = (total_w + 1) / 2;
        run_case_at(a, total_h - a.pad_top + (int)(wi % 2), total_w - a.pad_left, wide[wi][3]);
    }
}

int main(void)
{
    eu_seed_from_env();
    static const int dtypes[] = {CC_DTYPE_F32, CC_DTYPE_F16, CC_DTYPE_BF16};
    for (int d = 0; d < 3; ++d)
        for (g_layout = CC_LAYOUT_NCHW; g_layout <= CC_LAYOUT_NHWC; ++g_layout) {
            g_dtype = dtypes[d];
            sweep();
        }
    g_dtype = CC_DTYPE_F32;
    g_layout = CC_LAYOUT_NCHW;
    /* Patches past 48 KiB of shared memory, and more tiles than gridDim.y takes, are refused. */
    cc_depthwise_args big = base(7, 7);
    big.dilation_h = big.dilation_w = 20;
    big.h = big.w = 200;
    big.out_h = big.out_w = 80;
    EU_EXPECT(cc_depthwise_fused_smem_bytes(&big) > CC_DEPTHWISE_MAX_SMEM, "test shape should need > 48 KiB");
    const long long before = cc_cpu_launch_count("depthwise_");
    EU_EXPECT(cc_launch_depthwise_fused(&big, NULL) == cudaErrorInvalidValue, "a patch past 48 KiB must be refused");
    /* NHWC: filters of a 64-channel chunk past 48 KiB (15x15 taps); the same shape fits NCHW. */
    cc_depthwise_args wide = base(15, 15);
    wide.out_h = wide.out_w = 7;
    EU_EXPECT(cc_depthwise_fused_smem_bytes(&wide) <= CC_DEPTHWISE_MAX_SMEM, "15x15 should fit NCHW");
    wide.layout = CC_LAYOUT_NHWC;
    EU_EXPECT(cc_depthwise_fused_smem_bytes(&wide) > CC_DEPTHWISE_MAX_SMEM, "15x15 NHWC should need > 48 KiB");
    EU_EXPECT(cc_launch_depthwise_fused(&wide, NULL) == cudaErrorInvalidValue, "NHWC past 48 KiB must be refused");
    /* Unknown dtype or layout: 0 tiles, refused. */
    cc_depthwise_args odd = base(3, 3);
    odd.out_h = odd.out_w = 7;
    odd.dtype = 3;
    EU_EXPECT(cc_depthwise_fused_tiles(&odd) == 0, "an unknown dtype must have 0 tiles");
    EU_EXPECT(cc_launch_depthwise_fused(&odd, NULL) == cudaErrorInvalidValue, "an unknown dtype must be refused");
    odd.dtype = CC_DTYPE_F16;
    odd.layout = 2;
    EU_EXPECT(cc_depthwise_fused_tiles(&odd) == 0, "an unknown layout must have 0 tiles");
    EU_EXPECT(cc_launch_depthwise_fused(&odd, NULL) == cudaErrorInvalidValue, "an unknown layout must be refused");
    odd.layout = -1;
    EU_EXPECT(cc_launch_depthwise_fused(&odd, NULL) == cudaErrorInvalidValue, "a negative layout must be refused");
    EU_EXPECT(cc_cpu_launch_count("depthwise_") == before, "a refused shape launched a kernel");
    eu_expect_all_launched("depthwise_fused");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_depthwise: %d cases, %d launches\n", cases, launches);
    return eu_finish("test_emu_depthwise");
}
