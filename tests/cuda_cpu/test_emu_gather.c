/* kernels/gather.cu on the CPU execution layer: the input windows gathered
 * (im2col) must equal a direct reading of x, element for element, zero
 * outside the image: kernel sizes 1-5 and non-square, strides 1-3,
 * dilation 1-2, padding (symmetric, asymmetric, the 1x1 stride-1 padding
 * copy the cuDNN algorithms use), and lowered grid caps so that the
 * grid-stride loop loops. A copy: equality is exact. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "emu_util.h"
#include "gather.h"

static int cases, launches;

static void run_case(cc_gather_args a, int cap)
{
    ++cases;
    const size_t x_n = (size_t)a.planes * a.h * a.w;
    const size_t out_n = (size_t)a.planes * a.kernel_h * a.kernel_w * a.out_h * a.out_w;
    float *x = eu_random(x_n, -1.0f, 1.0f);
    eu_buffer dx = eu_buffer_make(x_n, 0), dout = eu_buffer_make(out_n, (int)(a.planes % 2));
    eu_upload(&dx, x);
    cc_cpu_set_grid_cap((unsigned)cap);
    const long long before = cc_cpu_launch_count("gather_kernel");
    EU_LAUNCH(cc_launch_gather(dx.data, dout.data, &a, NULL));
    launches += (int)(cc_cpu_launch_count("gather_kernel") - before);
    cc_cpu_set_grid_cap(0);
    double *want = eu_doubles(out_n);
    size_t i = 0;
    for (long long p = 0; p < a.planes; ++p)
        for (int ky = 0; ky < a.kernel_h; ++ky)
            for (int kx = 0; kx < a.kernel_w; ++kx)
                for (int oy = 0; oy < a.out_h; ++oy)
                    for (int ox = 0; ox < a.out_w; ++ox, ++i) {
                        const int sy = oy * a.stride_h - a.pad_top + ky * a.dilation_h;
                        const int sx = ox * a.stride_w - a.pad_left + kx * a.dilation_w;
                        want[i] = sy >= 0 && sy < a.h && sx >= 0 && sx < a.w
                                      ? x[((size_t)p * a.h + (size_t)sy) * a.w + (size_t)sx]
                                      : 0.0;
                    }
    float *got = eu_floats(out_n);
    eu_download(&dout, got);
    char what[160];
    snprintf(what, sizeof what, "gather (planes=%lld %dx%d k=%dx%d out=%dx%d s=%dx%d d=%dx%d pad=%d,%d cap=%d)",
             a.planes, a.h, a.w, a.kernel_h, a.kernel_w, a.out_h, a.out_w, a.stride_h, a.stride_w, a.dilation_h,
             a.dilation_w, a.pad_top, a.pad_left, cap);
    eu_compare(what, got, want, NULL, out_n, 0.0, 0.0);
    eu_guards_intact(&dout, what);
    free(x);
    free(want);
    free(got);
    eu_buffer_free(&dx);
    eu_buffer_free(&dout);
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
            a.planes = 1 + i % 4;
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
            run_case(a, v == 4 ? 1 + i % 3 : 0);
        }
    /* The asymmetric-padding copy (1x1, stride 1) of the cuDNN algorithms, grid-stride. */
    cc_gather_args pad;
    memset(&pad, 0, sizeof pad);
    pad.planes = 6;
    pad.h = pad.w = 14;
    pad.kernel_h = pad.kernel_w = pad.stride_h = pad.stride_w = pad.dilation_h = pad.dilation_w = 1;
    pad.pad_top = pad.pad_left = 0;
    pad.out_h = pad.out_w = 15;
    run_case(pad, 0);
    run_case(pad, 2);
    cc_gather_args bad = pad;
    bad.stride_h = 0;
    EU_EXPECT(cc_launch_gather(NULL, NULL, &bad, NULL) == cudaErrorInvalidValue, "stride 0 must be refused");
    eu_expect_all_launched("gather");
    EU_EXPECT(cc_cpu_refused_launches() == 0, "the layer refused %lld launch(es)", cc_cpu_refused_launches());
    printf("test_emu_gather: %d cases, %d launches\n", cases, launches);
    return eu_finish("test_emu_gather");
}
