/* kernels/gather.cu on the CPU execution layer: the input windows gathered
 * (im2col) must equal a direct reading of x, element for element, zero
 * outside the image, for f32, f16 and bf16 elements, NCHW and NHWC input,
 * and both output orders (PLANES out[n][c][ky][kx][oy][ox], ROWS
 * out[n][oy][ox][c][ky][kx]): kernel sizes 1-5 and non-square, strides 1-3,
 * dilation 1-2, padding (symmetric, asymmetric, the 1x1 stride-1 padding
 * copy the cuDNN algorithms use), and lowered grid caps so that the
 * grid-stride loop loops. A copy: the bits must be equal, not just close. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "emu_dtype.h"
#include "emu_util.h"
#include "gather.h"

static int cases, launches;

static void run_case(cc_gather_args a, int cap)
{
    ++cases;
    const size_t es = ed_size(a.dtype), x_n = (size_t)a.n * a.channels * a.h * a.w;
    const size_t out_n = (size_t)a.n * a.channels * a.kernel_h * a.kernel_w * a.out_h * a.out_w;
    EU_EXPECT(cc_gather_elems(&a) == (long long)out_n, "cc_gather_elems: %lld, want %zu", cc_gather_elems(&a), out_n);
    float *x = ed_random(a.dtype, x_n, -1.0f, 1.0f);
    unsigned char *xb = malloc(x_n * es), *want = calloc(out_n, es), *got = malloc(out_n * es);
    if (xb == NULL || want == NULL || got == NULL) exit(1);
    ed_pack(a.dtype, x, xb, x_n);
    ed_buffer dx = ed_buffer_make(x_n * es, 0), dout = ed_buffer_make(out_n * es, (size_t)(cases % 2) * es);
    ed_upload(&dx, xb);
    cc_cpu_set_grid_cap((unsigned)cap);
    const long long before = cc_cpu_launch_count("gather_kernel");
    EU_LAUNCH(cc_launch_gather(dx.data, dout.data, &a, NULL));
    launches += (int)(cc_cpu_launch_count("gather_kernel") - before);
    cc_cpu_set_grid_cap(0);
    for (int n = 0; n < a.n; ++n)
        for (int c = 0; c < a.channels; ++c)
            for (int ky = 0; ky < a.kernel_h; ++ky)
                for (int kx = 0; kx < a.kernel_w; ++kx)
                    for (int oy = 0; oy < a.out_h; ++oy)
                        for (int ox = 0; ox < a.out_w; ++ox) {
                            const int sy = oy * a.stride_h - a.pad_top + ky * a.dilation_h;
                            const int sx = ox * a.stride_w - a.pad_left + kx * a.dilation_w;
                            const size_t o =
                                a.out_order == CC_GATHER_PLANES
                                    ? (((((size_t)n * a.channels + c) * a.kernel_h + ky) * a.kernel_w + kx) * a.out_h +
                                       oy) * a.out_w +
                                          ox
                                    : (((((size_t)n * a.out_h + oy) * a.out_w + ox) * a.channels + c) * a.kernel_h +
                                       ky) * a.kernel_w +
                                          kx;
                            if (sy < 0 || sy >= a.h || sx < 0 || sx >= a.w) continue; /* zero bits */
                            const size_t i = a.in_layout == CC_LAYOUT_NCHW
                                                 ? (((size_t)n * a.channels + c) * a.h + sy) * a.w + sx
                                                 : (((size_t)n * a.h + sy) * a.w + sx) * a.channels + c;
                            memcpy(want + o * es, xb + i * es, es);
                        }
    ed_download(&dout, got);
    char what[224];
    snprintf(what, sizeof what, "%s gather %s->%s (n=%d c=%d %dx%d k=%dx%d out=%dx%d s=%dx%d d=%dx%d pad=%d,%d cap=%d)",
             ed_name(a.dtype), a.in_layout == CC_LAYOUT_NCHW ? "NCHW" : "NHWC",
             a.out_order == CC_GATHER_PLANES ? "planes" : "rows", a.n, a.channels, a.h, a.w, a.kernel_h, a.kernel_w,
             a.out_h, a.out_w, a.stride_h, a.stride_w, a.dilation_h, a.dilation_w, a.pad_top, a.pad_left, cap);
    size_t bad = 0;
    for (size_t i = 0; i < out_n; ++i)
        if (memcmp(got + i * es, want + i * es, es) != 0 && bad++ < 5) {
            float g, w;
            ed_unpack(a.dtype, got + i * es, &g, 1);
            ed_unpack(a.dtype, want + i * es, &w, 1);
            fprintf(stderr, "  %s[%zu]: got %.9g, want %.9g (bits differ)\n", what, i, g, w);
        }
    EU_EXPECT(bad == 0, "%s: %zu of %zu elements differ", what, bad, out_n);
    ed_guards_intact(&dout, what);
    free(x);
    free(xb);
    free(want);
    free(got);
    ed_buffer_free(&dx);
    ed_buffer_free(&dout);
}

/* Every dtype, input layout and output order. */
static void run_all(cc_gather_args a, int cap)
{
    for (int di = 0; di < ED_DTYPE_COUNT; ++di)
        for (int layout = CC_LAYOUT_NCHW; layout <= CC_LAYOUT_NHWC; ++layout)
            for (int order = CC_GATHER_PLANES; order <= CC_GATHER_ROWS; ++order) {
                a.dtype = ed_dtypes[di];
                a.in_layout = layout;
                a.out_order = order;
                run_case(a, cap);
            }
}

int main(void)
{
    eu_seed_from_env();
    static const int ks[][2] = {{1, 1}, {3, 3}, {5, 5}, {1, 3}, {2, 4}};
    int i = 0;
    for (size_t k = 0; k < sizeof ks / sizeof ks[0]; ++k)
        for (int v = 0; v < 6; ++v, ++i) {
            cc_gather_args a;
            memset(&a, 0, sizeof a);
            a.n = 1 + i % 2;
            a.channels = 1 + (i / 2) % 4;
            a.h = 3 + v * 2;
            a.w = 4 + (v * 3) % 7;
            a.kernel_h = ks[k][0];
            a.kernel_w = ks[k][1];
            a.stride_h = 1 + v % 3;
            a.stride_w = 1 + (v + 1) % 2;
            a.dilation_h = a.dilation_w = 1 + (i % 5 == 2);
            a.pad_top = v % 2 ? (a.kernel_h - 1) * a.dilation_h / 2 : 0;
            a.pad_left = (a.kernel_w - 1) * a.dilation_w / 2;
            const int pb = a.pad_top + (v == 3), pr = a.pad_left + (v == 5);
            a.out_h = (a.h + a.pad_top + pb - (a.dilation_h * (a.kernel_h - 1) + 1)) / a.stride_h + 1;
            a.out_w = (a.w + a.pad_left + pr - (a.dilation_w * (a.kernel_w - 1) + 1)) / a.stride_w + 1;
            if (a.out_h < 1 || a.out_w < 1) continue;
            run_all(a, v == 4 ? 1 + i % 3 : 0);
        }
    /* The asymmetric-padding copy (1x1, stride 1) of the cuDNN algorithms, grid-stride. */
    cc_gather_args pad;
    memset(&pad, 0, sizeof pad);
    pad.n = 2;
    pad.channels = 3;
    pad.h = pad.w = 14;
    pad.kernel_h = pad.kernel_w = pad.stride_h = pad.stride_w = pad.dilation_h = pad.dilation_w = 1;
    pad.pad_top = pad.pad_left = 0;
    pad.out_h = pad.out_w = 15;
    run_all(pad, 0);
    run_all(pad, 2);

    cc_gather_args bad = pad;
    bad.stride_h = 0;
    EU_EXPECT(cc_gather_elems(&bad) == 0, "stride 0 must give 0 elements");
    EU_EXPECT(cc_launch_gather(NULL, NULL, &bad, NULL) == cudaErrorInvalidValue, "stride 0 must be refused");
    bad = pad;
    bad.dtype = 3;
    EU_EXPECT(cc_launch_gather(NULL, NULL, &bad, NULL) == cudaErrorInvalidValue, "an unknown dtype must be refused");
    bad = pad;
    bad.in_layout = 2;
    EU_EXPECT(cc_launch_gather(NULL, NULL, &bad, NULL) == cudaErrorInvalidValue, "an unknown layout must be refused");
    bad = pad;
    bad.out_order = -1;
    EU_EXPECT(cc_launch_gather(NULL, NULL, &bad, NULL) == cudaErrorInvalidValue, "an unknown order must be refused");
    bad = pad;
    bad.channels = 0;
    EU_EXPECT(cc_gather_elems(&bad) == 0, "0 channels must give 0 elements");
    /* 2^31 * 2^31 * ... overflows long long: 0, not a wrapped count. */
    bad = pad;
    bad.n = bad.channels = bad.out_h = bad.out_w = INT_MAX;
    EU_EXPECT(cc_gather_elems(&bad) == 0, "an overflowing size must give 0 elements");
    EU_EXPECT(cc_launch_gather(NULL, NULL, &bad, NULL) == cudaErrorInvalidValue, "an overflowing size must be refused");
    EU_EXPECT(cc_gather_elems(NULL) == 0, "NULL arguments must give 0 elements");
    eu_expect_all_launched("gather");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_gather: %d cases, %d launches\n", cases, launches);
    return eu_finish("test_emu_gather");
}
