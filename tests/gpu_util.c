/* GPU test helpers (see gpu_util.h). */
#include "gpu_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void tu_require_gpu(const char *test_name)
{
    if (condconv_device_count() > 0) return;
    printf("%s: SKIPPED - no CUDA device on this machine (this is not a pass)\n", test_name);
    exit(TU_SKIP);
}

void tu_cuda_check(cudaError_t err, const char *call, const char *file, int line)
{
    if (err == cudaSuccess) return;
    fprintf(stderr, "FATAL %s:%d: %s: %s\n", file, line, call, cudaGetErrorString(err));
    exit(1);
}

void *tu_dev_alloc_bytes(size_t bytes)
{
    void *p = NULL;
    TU_CUDA(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

float *tu_dev_alloc(size_t count) { return tu_dev_alloc_bytes(count * sizeof(float)); }

/* The tests run forwards on non-blocking streams, which the legacy stream of
 * cudaMemcpy/cudaMemset does not order against: a pageable cudaMemcpy may
 * return before its DMA lands and cudaMemset is asynchronous. So each helper
 * waits for all device work before and after it, and a poison or an upload
 * can never land after (or a read-back before) the forward it brackets. */
void tu_to_dev(float *dst, const float *src, size_t count)
{
    TU_CUDA(cudaDeviceSynchronize());
    TU_CUDA(cudaMemcpy(dst, src, count * sizeof(float), cudaMemcpyHostToDevice));
    TU_CUDA(cudaDeviceSynchronize());
}

void tu_to_host(float *dst, const float *src, size_t count)
{
    TU_CUDA(cudaDeviceSynchronize());
    TU_CUDA(cudaMemcpy(dst, src, count * sizeof(float), cudaMemcpyDeviceToHost));
}

void tu_dev_poison(float *dst, size_t count)
{
    TU_CUDA(cudaDeviceSynchronize());
    TU_CUDA(cudaMemset(dst, 0xff, count * sizeof(float))); /* 0xffffffff is a NaN */
    TU_CUDA(cudaDeviceSynchronize());
}

static float *abs_copy(const float *src, size_t count)
{
    if (src == NULL) return NULL;
    float *dst = malloc((count ? count : 1) * sizeof(float));
    if (dst == NULL) return NULL;
    for (size_t i = 0; i < count; ++i) dst[i] = fabsf(src[i]);
    return dst;
}

int tu_reference(const tu_layer_spec *spec, const tu_params *params, int n, int h, int w, const float *x,
                 const float *alpha_in, float *y_ref, float *mag, float *alpha_ref)
{
    condconv_context_t ctx;
    if (condconv_context_create(&ctx, CONDCONV_DEVICE_CPU) != CONDCONV_STATUS_SUCCESS) return 1;
    int failed = 0;
    condconv_layer_desc_t desc = tu_make_desc(spec);
    const condconv_params view = tu_params_view(params);
    condconv_layer_t layer;
    const size_t alpha_n = (size_t)n * (size_t)spec->experts;
    float *alpha = malloc(alpha_n * sizeof(float));
    failed |= alpha == NULL;
    if (!failed && condconv_layer_create(ctx, desc, &view, &layer) == CONDCONV_STATUS_SUCCESS) {
        float *y = y_ref;
        failed |= condconv_forward_cpu(layer, n, h, w, x, y, alpha_in, alpha) != CONDCONV_STATUS_SUCCESS;
        condconv_layer_destroy(layer);
    } else {
        failed = 1;
    }
    if (!failed && alpha_ref)
        for (size_t i = 0; i < alpha_n; ++i) alpha_ref[i] = alpha[i];
    if (!failed && mag) {
        /* |x|, |W|, |b| with the alpha actually used (made non-negative) as external routing. */
        tu_layer_spec abs_spec = *spec;
        abs_spec.routing = CONDCONV_ROUTING_EXTERNAL;
        abs_spec.activation = CONDCONV_ACTIVATION_NONE;
        condconv_layer_desc_t abs_desc = tu_make_desc(&abs_spec);
        int out_h = 0, out_w = 0;
        failed |= condconv_layer_desc_get_output_dims(abs_desc, h, w, &out_h, &out_w, NULL) != CONDCONV_STATUS_SUCCESS;
        const size_t x_n = (size_t)n * spec->cin * h * w;
        float *ax = abs_copy(x, x_n), *aw = abs_copy(params->experts, params->experts_n);
        float *ab = abs_copy(params->expert_bias, params->bias_n), *aa = abs_copy(alpha, alpha_n);
        const condconv_params abs_view = {aw, ab, NULL, NULL};
        condconv_layer_t abs_layer;
        if (!failed && ax && aw && aa &&
            condconv_layer_create(ctx, abs_desc, &abs_view, &abs_layer) == CONDCONV_STATUS_SUCCESS) {
            failed |= condconv_forward_cpu(abs_layer, n, h, w, ax, mag, aa, NULL) != CONDCONV_STATUS_SUCCESS;
            condconv_layer_destroy(abs_layer);
        } else {
            failed = 1;
        }
        free(ax);
        free(aw);
        free(ab);
        free(aa);
        condconv_layer_desc_destroy(abs_desc);
    }
    free(alpha);
    condconv_layer_desc_destroy(desc);
    condconv_context_destroy(ctx);
    if (failed) fprintf(stderr, "tu_reference failed: %s\n", condconv_last_error());
    return failed;
}
