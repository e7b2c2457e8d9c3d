/* The CPU path's format conversions (cpu_layout.h). */
#include "cpu_layout.h"

#include <stdlib.h>

#include "dtype.h"

void cc_cpu_transpose_planes(const float *src, float *dst, uint64_t n, uint64_t a, uint64_t b)
{
    for (uint64_t s = 0; s < n; ++s) {
        const float *in = src + s * a * b;
        float *out = dst + s * a * b;
        for (uint64_t i = 0; i < a; ++i)
            for (uint64_t j = 0; j < b; ++j) out[j * a + i] = in[i * b + j];
    }
}

float *cc_cpu_as_f32_nchw(const condconv_layer_info *info, const void *src, int n, int c, uint64_t plane)
{
    const size_t count = (size_t)((uint64_t)n * (uint64_t)c * plane);
    float *f32 = malloc((count ? count : 1) * sizeof(float));
    if (f32 == NULL) return NULL;
    cc_dtype_load(info->dtype, src, f32, count);
    if (info->layout == CONDCONV_LAYOUT_NCHW) return f32;
    float *nchw = malloc((count ? count : 1) * sizeof(float));
    if (nchw != NULL) cc_cpu_transpose_planes(f32, nchw, (uint64_t)n, plane, (uint64_t)c);
    free(f32);
    return nchw;
}
