/* Handle lifetimes (condconv.h, "Handles"): a call on a handle that is not
 * live (destroyed, never created, or of another kind) returns BAD_VALUE with
 * a message and writes nothing; destroying twice is refused, never a double
 * free; a context with live layers refuses to be destroyed and names how
 * many; shared layers outlive their source. The registry behind it is
 * exercised through many handles destroyed in random order, and from
 * several threads at once. Runs under ASan and valgrind in CI, which turn
 * any use after free here into a failure. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "registry.h"
#include "test_util.h"

#define NOT_LIVE "not a live"

/* The call is refused with BAD_VALUE and says the handle is not live. */
#define EXPECT_NOT_LIVE(call)                                                                                          \
    do {                                                                                                               \
        if (EXPECT_STATUS(call, CONDCONV_STATUS_BAD_VALUE))                                                            \
            EXPECT(strstr(condconv_last_error(), NOT_LIVE) != NULL, "%s: message '%s'", #call, condconv_last_error()); \
    } while (0)

static condconv_layer_desc_t small_desc(void)
{
    tu_layer_spec spec = tu_basic_spec(2, 3, 3, 2);
    spec.routing = CONDCONV_ROUTING_SIGMOID;
    spec.pad_h = spec.pad_w = 1;
    spec.has_bias = 1;
    return tu_make_desc(&spec);
}

static condconv_layer_t small_layer(condconv_context_t ctx, tu_params *params)
{
    tu_layer_spec spec = tu_basic_spec(2, 3, 3, 2);
    spec.routing = CONDCONV_ROUTING_SIGMOID;
    spec.pad_h = spec.pad_w = 1;
    spec.has_bias = 1;
    condconv_layer_desc_t d = tu_make_desc(&spec);
    tu_make_params(&spec, params);
    const condconv_params view = tu_params_view(params);
    condconv_layer_t layer = NULL;
    EXPECT_OK(condconv_layer_create(ctx, d, &view, &layer));
    EXPECT_OK(condconv_layer_desc_destroy(d)); /* the layer keeps its own copy */
    return layer;
}

/* Handles that never existed, and handles of the wrong kind. */
static void never_created(void)
{
    static _Alignas(64) unsigned char junk[4096]; /* zeros: what a stale handle might point at */
    condconv_context_t fake_ctx = (condconv_context_t)(void *)junk;
    condconv_layer_desc_t fake_desc = (condconv_layer_desc_t)(void *)junk;
    condconv_layer_t fake_layer = (condconv_layer_t)(void *)junk;
    int device = 12345;
    condconv_math math = CONDCONV_MATH_TF32;
    EXPECT_NOT_LIVE(condconv_context_get_device(fake_ctx, &device));
    EXPECT(device == 12345, "a refused call wrote its output");
    EXPECT_NOT_LIVE(condconv_context_set_math(fake_ctx, CONDCONV_MATH_F32));
    EXPECT_NOT_LIVE(condconv_context_get_math(fake_ctx, &math));
    EXPECT_NOT_LIVE(condconv_context_set_stream(fake_ctx, NULL));
    EXPECT_NOT_LIVE(condconv_context_destroy(fake_ctx));
    EXPECT_NOT_LIVE(condconv_layer_desc_set_experts(fake_desc, 2, 1));
    EXPECT_NOT_LIVE(condconv_layer_desc_set_conv(fake_desc, 2, 2, 1, 1, 1, 1, 1, 1, 1));
    condconv_layer_info info;
    EXPECT_NOT_LIVE(condconv_layer_desc_get_info(fake_desc, &info));
    EXPECT_NOT_LIVE(condconv_layer_desc_get_output_dims(fake_desc, 4, 4, NULL, NULL, NULL));
    condconv_cost cost;
    EXPECT_NOT_LIVE(condconv_cost_model(fake_desc, 1, 4, 4, &cost));
    EXPECT_NOT_LIVE(condconv_layer_desc_destroy(fake_desc));
    float x[2 * 2 * 16] = {0}, y[2 * 3 * 16], alpha[4];
    EXPECT_NOT_LIVE(condconv_forward_cpu(fake_layer, 2, 4, 4, x, y, NULL, alpha));
    EXPECT_NOT_LIVE(condconv_route_cpu(fake_layer, 2, 4, 4, x, alpha));
    float dx[2 * 2 * 16];
    EXPECT_NOT_LIVE(condconv_backward_cpu(fake_layer, 2, 4, 4, x, NULL, y, dx, NULL, NULL, NULL, NULL, NULL));
    EXPECT_NOT_LIVE(condconv_layer_set_algo(fake_layer, CONDCONV_ALGO_AUTO));
    EXPECT_NOT_LIVE(condconv_prepare(fake_layer, 2, 4, 4));
    size_t ws = 7;
    EXPECT_NOT_LIVE(condconv_get_workspace_size(fake_layer, 2, 4, 4, &ws));
    EXPECT(ws == 7, "a refused call wrote its output");
    EXPECT_NOT_LIVE(condconv_forward(fake_layer, 2, 4, 4, x, y, NULL, NULL, NULL, 0));
    EXPECT_NOT_LIVE(condconv_route(fake_layer, 2, 4, 4, x, alpha));
    EXPECT_NOT_LIVE(condconv_layer_destroy(fake_layer));
    EXPECT(tu_same_bytes(junk, (unsigned char[4096]){0}, sizeof junk), "a refused call wrote into the fake handle");

    /* Real handles of another kind. */
    condconv_context_t ctx;
    EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
    condconv_layer_desc_t d = small_desc();
    EXPECT_NOT_LIVE(condconv_context_get_device((condconv_context_t)(void *)d, &device));
    EXPECT_NOT_LIVE(condconv_layer_desc_get_info((condconv_layer_desc_t)(void *)ctx, &info));
    EXPECT_NOT_LIVE(condconv_forward_cpu((condconv_layer_t)(void *)ctx, 2, 4, 4, x, y, NULL, NULL));
    EXPECT_NOT_LIVE(condconv_layer_destroy((condconv_layer_t)(void *)d));
    EXPECT_NOT_LIVE(condconv_context_destroy((condconv_context_t)(void *)d));
    const condconv_params none = {x, x, x, x};
    condconv_layer_t out = (condconv_layer_t)(void *)junk;
    EXPECT_NOT_LIVE(condconv_layer_create(fake_ctx, d, &none, &out));
    EXPECT_NOT_LIVE(condconv_layer_create(ctx, fake_desc, &none, &out));
    EXPECT_NOT_LIVE(condconv_layer_create_shared(ctx, fake_layer, &out));
    EXPECT(out == (condconv_layer_t)(void *)junk, "a refused create wrote its output");
    /* NULL stays NULL_POINTER for every call but the destroys (no-ops). */
    EXPECT_STATUS(condconv_context_get_device(NULL, &device), CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(condconv_forward_cpu(NULL, 2, 4, 4, x, y, NULL, NULL), CONDCONV_STATUS_NULL_POINTER);
    EXPECT_OK(condconv_layer_destroy(NULL));
    EXPECT_OK(condconv_layer_desc_destroy(NULL));
    EXPECT_OK(condconv_context_destroy(NULL));
    EXPECT_OK(condconv_layer_desc_destroy(d));
    EXPECT_OK(condconv_context_destroy(ctx));
}

/* Destroyed handles: every later call is refused, destroying again too. */
static void double_destroy(void)
{
    condconv_context_t ctx;
    EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
    tu_params params;
    condconv_layer_t layer = small_layer(ctx, &params);
    float x[2 * 2 * 16], y[2 * 3 * 16];
    tu_fill_uniform(x, 64, -1, 1);
    EXPECT_OK(condconv_forward_cpu(layer, 2, 4, 4, x, y, NULL, NULL));
    EXPECT_OK(condconv_layer_destroy(layer));
    EXPECT_NOT_LIVE(condconv_layer_destroy(layer)); /* aborted inside glibc before the registry */
    EXPECT_NOT_LIVE(condconv_forward_cpu(layer, 2, 4, 4, x, y, NULL, NULL));
    float dx[2 * 2 * 16];
    EXPECT_NOT_LIVE(condconv_backward_cpu(layer, 2, 4, 4, x, NULL, y, dx, NULL, NULL, NULL, NULL, NULL));
    EXPECT_NOT_LIVE(condconv_layer_set_algo(layer, CONDCONV_ALGO_FUSED));
    condconv_layer_desc_t d = small_desc();
    EXPECT_OK(condconv_layer_desc_destroy(d));
    EXPECT_NOT_LIVE(condconv_layer_desc_destroy(d));
    EXPECT_NOT_LIVE(condconv_layer_desc_set_experts(d, 3, 0));
    EXPECT_OK(condconv_context_destroy(ctx));
    EXPECT_NOT_LIVE(condconv_context_destroy(ctx));
    EXPECT_NOT_LIVE(condconv_context_set_math(ctx, CONDCONV_MATH_F32));
    tu_free_params(&params);
}

/* A context with live layers is kept, and says how many; shared layers keep
 * the parameters after their source goes. */
static void context_with_layers(void)
{
    condconv_context_t a, b;
    EXPECT_OK(condconv_context_create(&a, CONDCONV_DEVICE_CPU));
    EXPECT_OK(condconv_context_create(&b, CONDCONV_DEVICE_CPU));
    tu_params params, params2;
    condconv_layer_t source = small_layer(a, &params);
    condconv_layer_t second = small_layer(a, &params2); /* parameters of its own */
    condconv_layer_t shared = NULL;
    EXPECT_OK(condconv_layer_create_shared(b, source, &shared));

    if (EXPECT_STATUS(condconv_context_destroy(a), CONDCONV_STATUS_BAD_VALUE))
        EXPECT(strstr(condconv_last_error(), "2 live layers") != NULL, "message '%s'", condconv_last_error());
    int device = 0;
    EXPECT_OK(condconv_context_get_device(a, &device)); /* still there */
    EXPECT(device == CONDCONV_DEVICE_CPU, "device %d", device);
    if (EXPECT_STATUS(condconv_context_destroy(b), CONDCONV_STATUS_BAD_VALUE))
        EXPECT(strstr(condconv_last_error(), "1 live layer;") != NULL, "message '%s'", condconv_last_error());

    float x[2 * 2 * 16], y_source[2 * 3 * 16], y_shared[2 * 3 * 16];
    tu_fill_uniform(x, 64, -1, 1);
    EXPECT_OK(condconv_forward_cpu(source, 2, 4, 4, x, y_source, NULL, NULL));
    EXPECT_OK(condconv_layer_destroy(source));
    if (EXPECT_STATUS(condconv_context_destroy(a), CONDCONV_STATUS_BAD_VALUE))
        EXPECT(strstr(condconv_last_error(), "1 live layer;") != NULL, "message '%s'", condconv_last_error());
    EXPECT_OK(condconv_forward_cpu(shared, 2, 4, 4, x, y_shared, NULL, NULL));
    EXPECT(tu_same_bytes(y_source, y_shared, sizeof y_source), "the shared layer lost its source's parameters");
    EXPECT_OK(condconv_layer_destroy(second));
    EXPECT_OK(condconv_context_destroy(a));
    EXPECT_OK(condconv_layer_destroy(shared));
    EXPECT_OK(condconv_context_destroy(b));
    tu_free_params(&params);
    tu_free_params(&params2);
}

/* Many handles, destroyed in random order: the hash table's deletions keep
 * every other handle findable and every destroyed one refused. */
#define MANY 300
static void many_handles(void)
{
    condconv_layer_desc_t descs[MANY];
    int live[MANY], order[MANY];
    for (int i = 0; i < MANY; ++i) {
        EXPECT_OK(condconv_layer_desc_create(&descs[i]));
        live[i] = 1;
        order[i] = i;
    }
    EXPECT(cc_registry_count(CC_HANDLE_LAYER_DESC) == MANY, "%zu descriptors registered",
           cc_registry_count(CC_HANDLE_LAYER_DESC));
    for (int i = MANY - 1; i > 0; --i) {
        const int j = tu_rng_int(0, i), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    condconv_layer_info info;
    for (int k = 0; k < MANY; ++k) {
        EXPECT_OK(condconv_layer_desc_destroy(descs[order[k]]));
        live[order[k]] = 0;
        if (k % 16 != 0 && k != MANY - 1) continue;
        for (int i = 0; i < MANY; ++i) {
            const condconv_status st = condconv_layer_desc_get_info(descs[i], &info);
            EXPECT(st == (live[i] ? CONDCONV_STATUS_SUCCESS : CONDCONV_STATUS_BAD_VALUE),
                   "descriptor %d (%s) after %d destroys: %s", i, live[i] ? "live" : "destroyed", k + 1,
                   condconv_status_string(st));
        }
    }
    EXPECT(cc_registry_count(CC_HANDLE_LAYER_DESC) == 0, "%zu descriptors left",
           cc_registry_count(CC_HANDLE_LAYER_DESC));
}

/* Server threads: each creates and destroys its own handles, shares one
 * layer's parameters and runs the CPU path, concurrently. Counts its own
 * failures (the EXPECT helpers are for the main thread). */
#define THREADS 6
#define ROUNDS  40
static condconv_layer_t g_source;
static const float *g_x;
static const float *g_y_want;

static void *worker(void *arg)
{
    int *failures = arg;
    for (int r = 0; r < ROUNDS; ++r) {
        condconv_context_t ctx = NULL;
        condconv_layer_desc_t d = NULL;
        condconv_layer_t shared = NULL;
        float y[2 * 3 * 16];
        if (condconv_context_create(&ctx, CONDCONV_DEVICE_CPU) != CONDCONV_STATUS_SUCCESS) ++*failures;
        if (condconv_layer_desc_create(&d) != CONDCONV_STATUS_SUCCESS) ++*failures;
        if (condconv_layer_create_shared(ctx, g_source, &shared) != CONDCONV_STATUS_SUCCESS) ++*failures;
        if (condconv_forward_cpu(shared, 2, 4, 4, g_x, y, NULL, NULL) != CONDCONV_STATUS_SUCCESS) ++*failures;
        for (size_t i = 0; i < sizeof y / sizeof y[0]; ++i)
            if (!(y[i] == g_y_want[i])) { /* the same layer, the same input: equal values, never NaN */
                ++*failures;
                break;
            }
        if (condconv_context_destroy(ctx) != CONDCONV_STATUS_BAD_VALUE) ++*failures; /* its layer is live */
        if (condconv_layer_destroy(shared) != CONDCONV_STATUS_SUCCESS) ++*failures;
        if (condconv_layer_destroy(shared) != CONDCONV_STATUS_BAD_VALUE) ++*failures;
        if (condconv_layer_desc_destroy(d) != CONDCONV_STATUS_SUCCESS) ++*failures;
        if (condconv_context_destroy(ctx) != CONDCONV_STATUS_SUCCESS) ++*failures;
        if (condconv_context_destroy(ctx) != CONDCONV_STATUS_BAD_VALUE) ++*failures;
    }
    return NULL;
}

static void threads(void)
{
    condconv_context_t ctx;
    EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU));
    tu_params params;
    g_source = small_layer(ctx, &params);
    static float x[2 * 2 * 16], y_want[2 * 3 * 16];
    tu_fill_uniform(x, 64, -1, 1);
    EXPECT_OK(condconv_forward_cpu(g_source, 2, 4, 4, x, y_want, NULL, NULL));
    g_x = x;
    g_y_want = y_want;
    pthread_t t[THREADS];
    int failures[THREADS] = {0};
    int started = 0;
    for (int i = 0; i < THREADS; ++i)
        if (pthread_create(&t[i], NULL, worker, &failures[i]) == 0) started |= 1 << i;
    for (int i = 0; i < THREADS; ++i) {
        if (!(started & (1 << i))) continue;
        pthread_join(t[i], NULL);
        EXPECT(failures[i] == 0, "thread %d: %d failed calls", i, failures[i]);
    }
    EXPECT(started != 0, "no thread started");
    EXPECT_OK(condconv_layer_destroy(g_source));
    EXPECT_OK(condconv_context_destroy(ctx));
    tu_free_params(&params);
    EXPECT(cc_registry_count(CC_HANDLE_CONTEXT) == 0 && cc_registry_count(CC_HANDLE_LAYER) == 0,
           "handles left: %zu contexts, %zu layers", cc_registry_count(CC_HANDLE_CONTEXT),
           cc_registry_count(CC_HANDLE_LAYER));
}

int main(void)
{
    tu_seed_from_env();
    never_created();
    double_destroy();
    context_with_layers();
    many_handles();
    threads();
    return tu_finish("test_handles");
}
