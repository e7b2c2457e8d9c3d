/* The forward of a prepared layer on aligned pointers against the double
 * reference (emu_forward.h). */
#include "emu_forward.h"

#include <stdlib.h>
#include <string.h>

#include "emu_util.h"
#include "gpu_util.h"

void eu_check_forward(condconv_layer_t layer, const char *name, const tu_layer_spec *s, condconv_dtype dtype,
                      condconv_layout layout, const tu_params *p, int n, int h, int w, int ho, int wo)
{
    const int nhwc = layout == CONDCONV_LAYOUT_NHWC;
    const size_t elem = tu_dtype_size(dtype);
    const size_t x_n = (size_t)n * s->cin * h * w, y_n = (size_t)n * s->cout * ho * wo, a_n = (size_t)n * s->experts;
    float *x = eu_random(x_n, -1, 1), *y_ref = eu_floats(y_n), *y_got = eu_floats(y_n), *mag = eu_floats(y_n);
    float *x_layout = eu_floats(x_n), *y_layout = eu_floats(y_n);
    float *alpha_in = s->routing == CONDCONV_ROUTING_EXTERNAL ? eu_random(a_n, 0.0f, 1.0f) : NULL;
    tu_round_to_dtype(x, x_n, dtype);
    if (nhwc)
        tu_transpose(x, x_layout, n, s->cin, (size_t)h * w, 1);
    else
        memcpy(x_layout, x, x_n * sizeof(float));
    void *x_host = tu_to_dtype(x_layout, x_n, dtype), *y_host = malloc(y_n * elem);
    EXPECT(tu_reference(s, p, n, h, w, x, alpha_in, y_ref, mag, NULL) == 0, "the CPU reference failed");
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes));
    void *dx = tu_dev_alloc_bytes(x_n * elem), *dy = tu_dev_alloc_bytes(y_n * elem);
    void *ws = tu_dev_alloc_bytes(ws_bytes ? ws_bytes : 1);
    float *dalpha = alpha_in ? tu_dev_alloc(a_n) : NULL;
    if (alpha_in) tu_to_dev(dalpha, alpha_in, a_n);
    TU_CUDA(cudaMemcpy(dx, x_host, x_n * elem, cudaMemcpyHostToDevice));
    TU_CUDA(cudaMemset(dy, 0xFF, y_n * elem)); /* NaN in every dtype */
    TU_CUDA(cudaMemset(ws, 0xFF, ws_bytes ? ws_bytes : 1));
    if (EXPECT_OK(condconv_forward(layer, n, h, w, dx, dy, dalpha, NULL, ws, ws_bytes))) {
        TU_CUDA(cudaDeviceSynchronize());
        TU_CUDA(cudaMemcpy(y_host, dy, y_n * elem, cudaMemcpyDeviceToHost));
        EXPECT_OK(condconv_convert(dtype, y_host, CONDCONV_DTYPE_F32, y_layout, y_n));
        if (nhwc)
            tu_transpose(y_layout, y_got, n, s->cout, (size_t)ho * wo, 0);
        else
            memcpy(y_got, y_layout, y_n * sizeof(float));
        double atol, rtol, l2_max;
        tu_dtype_tolerance(dtype, &atol, &rtol, &l2_max);
        if (dtype == CONDCONV_DTYPE_F32) atol = 1e-6, rtol = 1e-5;
        if (tu_compare("y", y_got, y_ref, mag, y_n, atol, rtol) != 0)
            tu_fail(__FILE__, __LINE__, "forward", "%s", name);
    }
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(ws));
    TU_CUDA(cudaFree(dalpha));
    free(x);
    free(y_ref);
    free(y_got);
    free(mag);
    free(x_layout);
    free(y_layout);
    free(alpha_in);
    free(x_host);
    free(y_host);
}
