/* Two threads, two contexts, two streams, one set of weights
 * (condconv_layer_create_shared): interleaved forwards on fresh inputs,
 * every result checked against the CPU reference. Contexts must not share
 * mutable state: a race would show as wrong results (and under
 * compute-sanitizer racecheck). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "gpu_util.h"

#define ROUNDS 12

typedef struct worker {
    condconv_layer_t source;
    const tu_layer_spec *spec;
    const tu_params *params;
    int n, h, w, ho, wo;
    uint64_t seed;
    int failures;
} worker;

static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;

static void *work(void *arg)
{
    worker *wk = arg;
    const tu_layer_spec *s = wk->spec;
    cudaStream_t stream;
    condconv_context_t ctx;
    condconv_layer_t layer;
    if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess ||
        condconv_context_create(&ctx, 0) != CONDCONV_STATUS_SUCCESS) {
        wk->failures = 1000;
        return NULL;
    }
    int fails = 0;
    fails += condconv_context_set_stream(ctx, stream) != CONDCONV_STATUS_SUCCESS;
    fails += condconv_layer_create_shared(ctx, wk->source, &layer) != CONDCONV_STATUS_SUCCESS;
    fails += condconv_prepare(layer, wk->n, wk->h, wk->w) != CONDCONV_STATUS_SUCCESS;
    size_t ws_bytes = 0;
    fails += condconv_get_workspace_size(layer, wk->n, wk->h, wk->w, &ws_bytes) != CONDCONV_STATUS_SUCCESS;
    const size_t x_n = (size_t)wk->n * s->cin * wk->h * wk->w, y_n = (size_t)wk->n * s->cout * wk->ho * wk->wo;
    float *x = malloc(x_n * sizeof(float)), *y = malloc(y_n * sizeof(float));
    float *y_ref = malloc(y_n * sizeof(float)), *mag = malloc(y_n * sizeof(float));
    float *dx = tu_dev_alloc(x_n), *dy = tu_dev_alloc(y_n);
    void *dws = tu_dev_alloc_bytes(ws_bytes);
    for (int r = 0; r < ROUNDS && !fails; ++r) {
        pthread_mutex_lock(&rng_lock);
        tu_fill_uniform(x, x_n, -1.0f, 1.0f);
        pthread_mutex_unlock(&rng_lock);
        TU_CUDA(cudaMemcpyAsync(dx, x, x_n * sizeof(float), cudaMemcpyHostToDevice, stream));
        TU_CUDA(cudaMemsetAsync(dy, 0xff, y_n * sizeof(float), stream));
        if (condconv_forward(layer, wk->n, wk->h, wk->w, dx, dy, NULL, NULL, dws, ws_bytes) !=
            CONDCONV_STATUS_SUCCESS) {
            fprintf(stderr, "worker forward: %s\n", condconv_last_error());
            ++fails;
            break;
        }
        TU_CUDA(cudaMemcpyAsync(y, dy, y_n * sizeof(float), cudaMemcpyDeviceToHost, stream));
        TU_CUDA(cudaStreamSynchronize(stream));
        if (tu_reference(s, wk->params, wk->n, wk->h, wk->w, x, NULL, y_ref, mag, NULL) != 0 ||
            tu_compare("threaded y", y, y_ref, mag, y_n, 1e-6, 1e-5) != 0)
            ++fails;
    }
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(dws));
    free(x);
    free(y);
    free(y_ref);
    free(mag);
    condconv_layer_destroy(layer);
    condconv_context_destroy(ctx);
    TU_CUDA(cudaStreamDestroy(stream));
    wk->failures = fails;
    return NULL;
}

int main(void)
{
    tu_require_gpu("test_gpu_threads");
    tu_seed_from_env();
    tu_layer_spec s = tu_basic_spec(32, 48, 3, 8);
    s.pad_h = s.pad_w = 1;
    s.has_bias = 1;
    s.routing = CONDCONV_ROUTING_SIGMOID;
    s.activation = CONDCONV_ACTIVATION_SILU;
    tu_params p;
    tu_make_params(&s, &p);
    condconv_context_t owner;
    EXPECT_OK(condconv_context_create(&owner, 0));
    condconv_layer_desc_t desc = tu_make_desc(&s);
    const condconv_params view = tu_params_view(&p);
    condconv_layer_t source;
    EXPECT_OK(condconv_layer_create(owner, desc, &view, &source));

    /* Different batch sizes, so the two threads also run different plans. */
    worker workers[2] = {{source, &s, &p, 7, 15, 15, 15, 15, 0, 0}, {source, &s, &p, 16, 15, 15, 15, 15, 0, 0}};
    pthread_t threads[2];
    for (int i = 0; i < 2; ++i) pthread_create(&threads[i], NULL, work, &workers[i]);
    for (int i = 0; i < 2; ++i) pthread_join(threads[i], NULL);
    for (int i = 0; i < 2; ++i) EXPECT(workers[i].failures == 0, "worker %d: %d failures", i, workers[i].failures);

    condconv_layer_destroy(source);
    condconv_layer_desc_destroy(desc);
    condconv_context_destroy(owner);
    tu_free_params(&p);
    return tu_finish("test_gpu_threads");
}
