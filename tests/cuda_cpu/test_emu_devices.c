/* Every call leaves the caller's current CUDA device as it was (condconv.h,
 * "Devices"), on the CPU execution layer with two emulated devices: the
 * caller sits on device 1 and drives a context on device 0 through every
 * GPU entry point, successful and failing; after each call device 1 is
 * current again. The current device is per host thread, as in CUDA: a
 * second thread (on device 0) drives a context on device 1 when the
 * emulated runtime describes that device, and checks the same from there.
 * The forward itself is compared with the CPU reference. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_util.h"
#include "gpu_util.h"
#include "test_util.h"

static int current_device(void)
{
    int d = -1;
    TU_CUDA(cudaGetDevice(&d));
    return d;
}

#define EXPECT_DEVICE(want, after)                                                                                     \
    EXPECT(current_device() == (want), "after %s the current device is %d, not the caller's %d", after,                \
           current_device(), want)

/* One layer's life on a context of device `ctx_device`, called from a
 * thread whose current device is `home`. Returns 1 when the context could
 * be created. */
static int drive(int ctx_device, int home)
{
    condconv_context_t ctx;
    const condconv_status created = condconv_context_create(&ctx, ctx_device);
    EXPECT_DEVICE(home, "condconv_context_create");
    if (created != CONDCONV_STATUS_SUCCESS) return 0;
    tu_layer_spec s = tu_random_spec(TU_DEPTHWISE, 2, 3);
    s.routing = CONDCONV_ROUTING_SIGMOID;
    s.pad_mode = CONDCONV_PADDING_EXPLICIT;
    s.pad_h = s.kh / 2;
    s.pad_w = s.kw / 2;
    s.stride_h = s.stride_w = 1;
    s.dil_h = s.dil_w = 1;
    tu_params p;
    tu_make_params(&s, &p);
    condconv_layer_desc_t desc = tu_make_desc(&s);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t layer = NULL;
    EXPECT_OK(condconv_layer_create(ctx, desc, &view, &layer));
    EXPECT_DEVICE(home, "condconv_layer_create");
    if (layer == NULL) goto out;
    EXPECT_OK(condconv_context_set_stream(ctx, NULL));
    EXPECT_DEVICE(home, "condconv_context_set_stream (no handles yet)");
    EXPECT_OK(condconv_layer_set_algo(layer, CONDCONV_ALGO_DEPTHWISE_FUSED));
    const int n = 2, h = 6, w = 5;
    EXPECT_OK(condconv_prepare(layer, n, h, w));
    EXPECT_DEVICE(home, "condconv_prepare");
    EXPECT_OK(condconv_context_set_stream(ctx, NULL));
    EXPECT_DEVICE(home, "condconv_context_set_stream (with handles)");
    size_t ws_bytes = 0;
    EXPECT_OK(condconv_get_workspace_size(layer, n, h, w, &ws_bytes));
    EXPECT_DEVICE(home, "condconv_get_workspace_size");
    condconv_plan_info info;
    EXPECT_OK(condconv_get_plan_info(layer, n, h, w, &info));
    EXPECT_DEVICE(home, "condconv_get_plan_info");

    int ho = 0, wo = 0;
    EXPECT_OK(condconv_layer_desc_get_output_dims(desc, h, w, &ho, &wo, NULL));
    const size_t x_n = (size_t)n * s.cin * h * w, y_n = (size_t)n * s.cout * ho * wo, a_n = (size_t)n * s.experts;
    float *x = eu_random(x_n, -1, 1), *y = eu_floats(y_n), *y_ref = eu_floats(y_n), *a = eu_floats(a_n);
    float *dx = tu_dev_alloc(x_n), *dy = tu_dev_alloc(y_n), *da = tu_dev_alloc(a_n);
    void *ws = tu_dev_alloc_bytes(ws_bytes ? ws_bytes : 256);
    tu_to_dev(dx, x, x_n);
    EXPECT_OK(condconv_forward(layer, n, h, w, dx, dy, NULL, da, ws, ws_bytes));
    EXPECT_DEVICE(home, "condconv_forward");
    TU_CUDA(cudaDeviceSynchronize());
    tu_to_host(y, dy, y_n);
    EXPECT_OK(condconv_forward_cpu(layer, n, h, w, x, y_ref, NULL, NULL));
    float *mag = eu_floats(y_n);
    for (size_t i = 0; i < y_n; ++i) mag[i] = 1.0f;
    EXPECT(tu_compare("y", y, y_ref, mag, y_n, 1e-5, 1e-5) == 0, "forward on device %d differs from the reference",
           ctx_device);
    /* Failures after the device was switched come back on the caller's device too. */
    if (ws_bytes > 0) {
        EXPECT_STATUS(condconv_forward(layer, n, h, w, dx, dy, NULL, da, ws, ws_bytes - 1),
                      CONDCONV_STATUS_WORKSPACE_TOO_SMALL);
        EXPECT_DEVICE(home, "a forward refused for its workspace");
    }
    EXPECT_STATUS(condconv_forward(layer, n, h, w, dx, dx, NULL, NULL, ws, ws_bytes), CONDCONV_STATUS_BAD_VALUE);
    EXPECT_DEVICE(home, "a forward refused for overlapping buffers");
    EXPECT_OK(condconv_route(layer, n, h, w, dx, da));
    EXPECT_DEVICE(home, "condconv_route (prepared shape)");
    EXPECT_OK(condconv_route(layer, 1, 3, 3, dx, da));
    EXPECT_DEVICE(home, "condconv_route (unprepared shape)");
    EXPECT_OK(condconv_prepare(layer, 1, 3, 4)); /* a second plan, for the destroy below */
    EXPECT_DEVICE(home, "condconv_prepare (second shape)");
    condconv_layer_t shared = NULL;
    EXPECT_OK(condconv_layer_create_shared(ctx, layer, &shared));
    EXPECT_DEVICE(home, "condconv_layer_create_shared");
    EXPECT_OK(condconv_layer_destroy(shared));
    EXPECT_DEVICE(home, "condconv_layer_destroy (shared, no plans)");
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(da));
    TU_CUDA(cudaFree(ws));
    free(x);
    free(y);
    free(y_ref);
    free(a);
    free(mag);
    EXPECT_OK(condconv_layer_destroy(layer));
    EXPECT_DEVICE(home, "condconv_layer_destroy");
out:
    condconv_layer_desc_destroy(desc);
    tu_free_params(&p);
    EXPECT_OK(condconv_context_destroy(ctx));
    EXPECT_DEVICE(home, "condconv_context_destroy");
    return 1;
}

static int g_other_ran;

static void *other_thread(void *arg)
{
    (void)arg;
    /* A new host thread starts on device 0, whatever the main thread chose. */
    EXPECT(current_device() == 0, "a new thread starts on device %d", current_device());
    g_other_ran = drive(1, 0);
    return NULL;
}

int main(void)
{
    tu_seed_from_env();
    cc_cpu_set_device_count(2);
    EXPECT(condconv_device_count() == 2, "condconv_device_count() = %d with two emulated devices",
           condconv_device_count());
    TU_CUDA(cudaSetDevice(1));
    EXPECT(drive(0, 1), "a context on device 0 could not be created");
    pthread_t t;
    if (pthread_create(&t, NULL, other_thread, NULL) == 0) pthread_join(t, NULL);
    EXPECT_DEVICE(1, "the other thread's calls");
    if (!g_other_ran)
        printf("test_emu_devices: note: no context on emulated device 1 (the emulated runtime describes device 0 "
               "only: cudaGetDeviceProperties(1) fails); the main thread's checks ran\n");
    EXPECT(cc_cpu_live_allocations() == 0, "%zu device allocations left", cc_cpu_live_allocations());
    return tu_finish("test_emu_devices");
}
