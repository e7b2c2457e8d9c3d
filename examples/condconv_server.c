/* condconv_server: a CondConv layer served the way an inference server
 * would run it.
 *
 *   condconv_server WEIGHTS.safetensors [--workers N] [--requests N] [--cpu] [--require-gpu] [--verify]
 *
 * - The layer's trained weights are loaded once from a .safetensors file
 *   (timm's names: conv.weight, conv.bias, routing_fn.weight/.bias) and
 *   shared by every worker (condconv_layer_create_shared): one copy of the
 *   parameters, one plan cache per worker.
 * - Each worker thread owns a context, a CUDA stream, device buffers and a
 *   workspace. Before serving it prepares every batch shape it will see and
 *   captures one forward per shape into a CUDA graph; a request is then an
 *   input copy, a graph launch and an output copy on the worker's stream.
 * - Requests (batches of 1 to 8 images) come from a queue; responses go to
 *   another. The main thread produces requests, closes the queue, joins the
 *   workers and checks the responses; everything is freed on the way out.
 * - Without a CUDA device (or with --cpu) the same workers run the CPU
 *   reference path, condconv_forward_cpu, and say so.
 *
 * The model is one CondConv layer of an EfficientNet-CondConv-style block: a
 * depthwise 5x5, stride 2, 24 channels, 8 experts, sigmoid routing. It
 * matches tests/data/golden_depthwise5x5_s2.safetensors; for other weights,
 * change `model` below. --verify recomputes every response on the CPU
 * reference path and compares. --require-gpu exits 77 (a CTest skip) when
 * there is no GPU. Exit status 0 when every request was answered (and
 * verified). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <condconv.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* What a server knows about its model: the layer, the tensor names, the
 * input resolution it serves and the batch sizes it batches requests to. */
static const struct model_config {
    int in_channels, out_channels, kernel, stride, pad, groups, experts, has_bias;
    const char *prefix, *routing_prefix;
    int h, w;
} model = {24, 24, 5, 2, 2, 24, 8, 1, "conv", "routing_fn", 28, 28};
static const int batch_sizes[] = {1, 2, 4, 8};
enum { SHAPES = sizeof batch_sizes / sizeof batch_sizes[0], MAX_BATCH = 8 };

/* ------------------------------------------------------------------ */
/* Requests and a blocking queue                                       */

typedef struct request {
    int id, n;
    float *x;     /* [n][Cin][H][W] */
    float *y;     /* [n][Cout][Ho][Wo], written by a worker */
    float *alpha; /* [n][E], the routing weights used */
    int worker;
    struct request *next;
} request;

typedef struct queue {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    request *head, *tail;
    int closed;
} queue;

static void queue_init(queue *q)
{
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->ready, NULL);
    q->head = q->tail = NULL;
    q->closed = 0;
}

static void queue_destroy(queue *q)
{
    pthread_cond_destroy(&q->ready);
    pthread_mutex_destroy(&q->lock);
}

static void queue_push(queue *q, request *r)
{
    pthread_mutex_lock(&q->lock);
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    pthread_cond_signal(&q->ready);
    pthread_mutex_unlock(&q->lock);
}

/* After queue_close, wakes every waiter; pop then returns NULL once empty. */
static void queue_close(queue *q)
{
    pthread_mutex_lock(&q->lock);
    q->closed = 1;
    pthread_cond_broadcast(&q->ready);
    pthread_mutex_unlock(&q->lock);
}

/* Blocks until a request arrives; NULL when the queue is closed and empty. */
static request *queue_pop(queue *q, int wait)
{
    pthread_mutex_lock(&q->lock);
    while (wait && q->head == NULL && !q->closed) pthread_cond_wait(&q->ready, &q->lock);
    request *r = q->head;
    if (r) {
        q->head = r->next;
        if (q->head == NULL) q->tail = NULL;
    }
    pthread_mutex_unlock(&q->lock);
    return r;
}

static void request_free(request *r)
{
    if (r == NULL) return;
    free(r->x);
    free(r->y);
    free(r->alpha);
    free(r);
}

/* ------------------------------------------------------------------ */
/* Workers                                                             */

typedef struct server {
    int gpu; /* 1: CUDA graphs on device 0; 0: CPU reference path */
    int out_h, out_w;
    size_t x_per_sample, y_per_sample;
    condconv_layer_t weights; /* the loaded layer; workers share its parameters */
    queue requests, responses;
} server;

typedef struct worker {
    int index;
    server *srv;
    pthread_t thread;
    condconv_context_t ctx;
    condconv_layer_t layer;
    /* GPU only */
    cudaStream_t stream;
    float *d_x, *d_y, *d_alpha; /* sized for MAX_BATCH; every graph reads and writes these */
    void *d_workspace;
    size_t workspace_bytes;
    cudaGraphExec_t graphs[SHAPES];
    /* Outcome */
    int served;
    char error[512];
} worker;

static int shape_index(int n)
{
    for (int i = 0; i < SHAPES; ++i)
        if (batch_sizes[i] == n) return i;
    return -1;
}

/* Records the first failure of a worker; returns 1. */
static int fail(worker *wk, const char *what, const char *why)
{
    if (wk->error[0] == '\0') snprintf(wk->error, sizeof wk->error, "%s: %s", what, why);
    return 1;
}

/* A failed condconv call says why in condconv_last_error (per thread). */
#define CC_OK(wk, call)                                                                                                \
    do {                                                                                                               \
        if ((call) != CONDCONV_STATUS_SUCCESS) return fail((wk), #call, condconv_last_error());                        \
    } while (0)
#define CUDA_OK(wk, call)                                                                                              \
    do {                                                                                                               \
        cudaError_t e_ = (call);                                                                                       \
        if (e_ != cudaSuccess) return fail((wk), #call, cudaGetErrorString(e_));                                       \
    } while (0)

/* One forward per batch shape, captured once. Everything the forward needs
 * is prepared and allocated before the capture, which must contain no
 * allocation and no synchronisation. Thread-local capture mode: other
 * workers may be allocating while this one captures. */
static int capture_graphs(worker *wk)
{
    const server *srv = wk->srv;
    for (int i = 0; i < SHAPES; ++i) {
        size_t bytes = 0;
        CC_OK(wk, condconv_prepare(wk->layer, batch_sizes[i], model.h, model.w));
        CC_OK(wk, condconv_get_workspace_size(wk->layer, batch_sizes[i], model.h, model.w, &bytes));
        if (bytes > wk->workspace_bytes) wk->workspace_bytes = bytes;
    }
    CUDA_OK(wk, cudaMalloc((void **)&wk->d_x, MAX_BATCH * srv->x_per_sample * sizeof(float)));
    CUDA_OK(wk, cudaMalloc((void **)&wk->d_y, MAX_BATCH * srv->y_per_sample * sizeof(float)));
    CUDA_OK(wk, cudaMalloc((void **)&wk->d_alpha, MAX_BATCH * (size_t)model.experts * sizeof(float)));
    /* cudaMalloc alignment (256 bytes) meets CONDCONV_WORKSPACE_ALIGNMENT. */
    if (wk->workspace_bytes) CUDA_OK(wk, cudaMalloc(&wk->d_workspace, wk->workspace_bytes));

    for (int i = 0; i < SHAPES; ++i) {
        cudaGraph_t graph = NULL;
        CUDA_OK(wk, cudaStreamBeginCapture(wk->stream, cudaStreamCaptureModeThreadLocal));
        const condconv_status s = condconv_forward(wk->layer, batch_sizes[i], model.h, model.w, wk->d_x, wk->d_y, NULL,
                                                   wk->d_alpha, wk->d_workspace, wk->workspace_bytes);
        /* End the capture whatever happened, so the stream is usable again. */
        const cudaError_t end = cudaStreamEndCapture(wk->stream, &graph);
        if (s != CONDCONV_STATUS_SUCCESS) {
            if (graph) cudaGraphDestroy(graph);
            return fail(wk, "condconv_forward (capture)", condconv_last_error());
        }
        if (end != cudaSuccess) return fail(wk, "cudaStreamEndCapture", cudaGetErrorString(end));
        const cudaError_t inst = cudaGraphInstantiate(&wk->graphs[i], graph, 0);
        cudaGraphDestroy(graph); /* the executable graph keeps what it needs */
        if (inst != cudaSuccess) return fail(wk, "cudaGraphInstantiate", cudaGetErrorString(inst));
    }
    condconv_plan_info info;
    CC_OK(wk, condconv_get_plan_info(wk->layer, MAX_BATCH, model.h, model.w, &info));
    printf("worker %d: %d CUDA graphs captured (batch 1, 2, 4, 8); batch 8 runs %s (%s)\n", wk->index, SHAPES,
           condconv_algo_name(info.algo), info.reason);
    return 0;
}

static int setup(worker *wk)
{
    const server *srv = wk->srv;
    CC_OK(wk, condconv_context_create(&wk->ctx, srv->gpu ? 0 : CONDCONV_DEVICE_CPU));
    if (srv->gpu) {
        CUDA_OK(wk, cudaSetDevice(0));
        CUDA_OK(wk, cudaStreamCreateWithFlags(&wk->stream, cudaStreamNonBlocking));
        CC_OK(wk, condconv_context_set_stream(wk->ctx, wk->stream));
    }
    CC_OK(wk, condconv_layer_create_shared(wk->ctx, srv->weights, &wk->layer));
    return srv->gpu ? capture_graphs(wk) : 0;
}

static int serve(worker *wk, request *r)
{
    const server *srv = wk->srv;
    if (!srv->gpu) {
        CC_OK(wk, condconv_forward_cpu(wk->layer, r->n, model.h, model.w, r->x, r->y, NULL, r->alpha));
        return 0;
    }
    const int shape = shape_index(r->n);
    if (shape < 0) return fail(wk, "serve", "no CUDA graph was captured for this batch size");
    const size_t x_bytes = (size_t)r->n * srv->x_per_sample * sizeof(float);
    const size_t y_bytes = (size_t)r->n * srv->y_per_sample * sizeof(float);
    const size_t a_bytes = (size_t)r->n * (size_t)model.experts * sizeof(float);
    CUDA_OK(wk, cudaMemcpyAsync(wk->d_x, r->x, x_bytes, cudaMemcpyHostToDevice, wk->stream));
    CUDA_OK(wk, cudaGraphLaunch(wk->graphs[shape], wk->stream));
    CUDA_OK(wk, cudaMemcpyAsync(r->y, wk->d_y, y_bytes, cudaMemcpyDeviceToHost, wk->stream));
    CUDA_OK(wk, cudaMemcpyAsync(r->alpha, wk->d_alpha, a_bytes, cudaMemcpyDeviceToHost, wk->stream));
    CUDA_OK(wk, cudaStreamSynchronize(wk->stream));
    return 0;
}

/* Frees whatever setup got to, in reverse order; safe after a partial setup. */
static void teardown(worker *wk)
{
    if (wk->stream) (void)cudaStreamSynchronize(wk->stream);
    for (int i = 0; i < SHAPES; ++i)
        if (wk->graphs[i]) (void)cudaGraphExecDestroy(wk->graphs[i]);
    if (wk->d_x) (void)cudaFree(wk->d_x);
    if (wk->d_y) (void)cudaFree(wk->d_y);
    if (wk->d_alpha) (void)cudaFree(wk->d_alpha);
    if (wk->d_workspace) (void)cudaFree(wk->d_workspace);
    condconv_layer_destroy(wk->layer); /* before its context */
    condconv_context_destroy(wk->ctx);
    if (wk->stream) (void)cudaStreamDestroy(wk->stream);
}

static void *worker_main(void *arg)
{
    worker *wk = arg;
    if (setup(wk) == 0) {
        for (request *r; (r = queue_pop(&wk->srv->requests, 1)) != NULL;) {
            if (serve(wk, r) != 0) {
                /* Put it back for another worker, and stop: this one is broken. */
                queue_push(&wk->srv->requests, r);
                break;
            }
            r->worker = wk->index;
            ++wk->served;
            queue_push(&wk->srv->responses, r);
        }
    }
    teardown(wk);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Main: load, start workers, produce, shut down, check                */

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static float rng_float(void) /* xorshift64*, uniform in [-1, 1) */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (float)((rng_state * 0x2545F4914F6CDD1Dull) >> 40) / 8388608.0f - 1.0f;
}

static request *make_request(const server *srv, int id, int n)
{
    request *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->id = id;
    r->n = n;
    r->worker = -1;
    r->x = malloc((size_t)n * srv->x_per_sample * sizeof(float));
    r->y = malloc((size_t)n * srv->y_per_sample * sizeof(float));
    r->alpha = malloc((size_t)n * (size_t)model.experts * sizeof(float));
    if (r->x == NULL || r->y == NULL || r->alpha == NULL) {
        request_free(r);
        return NULL;
    }
    for (size_t i = 0; i < (size_t)n * srv->x_per_sample; ++i) r->x[i] = rng_float();
    return r;
}

static condconv_status make_desc(condconv_layer_desc_t *desc)
{
    condconv_status s = condconv_layer_desc_create(desc);
    if (s != CONDCONV_STATUS_SUCCESS) return s;
    if ((s = condconv_layer_desc_set_conv(*desc, model.in_channels, model.out_channels, model.kernel, model.kernel,
                                          model.stride, model.stride, 1, 1, model.groups)) != CONDCONV_STATUS_SUCCESS ||
        (s = condconv_layer_desc_set_padding(*desc, CONDCONV_PADDING_EXPLICIT, model.pad, model.pad)) !=
            CONDCONV_STATUS_SUCCESS ||
        (s = condconv_layer_desc_set_experts(*desc, model.experts, model.has_bias)) != CONDCONV_STATUS_SUCCESS ||
        (s = condconv_layer_desc_set_routing(*desc, CONDCONV_ROUTING_SIGMOID, 1.0f)) != CONDCONV_STATUS_SUCCESS) {
        condconv_layer_desc_destroy(*desc);
        *desc = NULL;
    }
    return s;
}

/* Recomputes a response on the CPU reference path; 0 when it agrees. The
 * GPU's strict-f32 result and the reference's double accumulation differ by
 * rounding only: 1e-4 relative to the output's size is generous for these
 * 25-tap sums and still catches any real error. */
static int verify(condconv_layer_t cpu_layer, const server *srv, const request *r, double *worst)
{
    const size_t y_n = (size_t)r->n * srv->y_per_sample, a_n = (size_t)r->n * (size_t)model.experts;
    float *y = malloc(y_n * sizeof(float)), *alpha = malloc(a_n * sizeof(float));
    int bad = y == NULL || alpha == NULL ||
              condconv_forward_cpu(cpu_layer, r->n, model.h, model.w, r->x, y, NULL, alpha) != CONDCONV_STATUS_SUCCESS;
    for (size_t i = 0; !bad && i < y_n; ++i) {
        const double d = fabs((double)r->y[i] - (double)y[i]);
        if (d > *worst) *worst = d;
        bad |= !(d <= 1e-4 * (1.0 + fabs((double)y[i])));
    }
    for (size_t i = 0; !bad && i < a_n; ++i) bad |= !(fabs((double)r->alpha[i] - (double)alpha[i]) <= 1e-5);
    free(y);
    free(alpha);
    return bad;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s WEIGHTS.safetensors [--workers N] [--requests N] [--cpu] [--require-gpu] [--verify]\n",
            argv0);
    return 2;
}

int main(int argc, char **argv)
{
    const char *weights_path = NULL;
    int workers_n = 2, requests_n = 32, force_cpu = 0, require_gpu = 0, do_verify = 0;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc)
            workers_n = atoi(argv[++i]);
        else if (strcmp(argv[i], "--requests") == 0 && i + 1 < argc)
            requests_n = atoi(argv[++i]);
        else if (strcmp(argv[i], "--cpu") == 0)
            force_cpu = 1;
        else if (strcmp(argv[i], "--require-gpu") == 0)
            require_gpu = 1;
        else if (strcmp(argv[i], "--verify") == 0)
            do_verify = 1;
        else if (argv[i][0] != '-' && weights_path == NULL)
            weights_path = argv[i];
        else
            return usage(argv[0]);
    }
    if (weights_path == NULL || workers_n < 1 || workers_n > 64 || requests_n < 0) return usage(argv[0]);

    server srv = {0};
    srv.gpu = !force_cpu && condconv_device_count() > 0;
    if (!srv.gpu && require_gpu) {
        printf("condconv_server: SKIPPED - no CUDA device (--require-gpu)\n");
        return 77;
    }
    if (!srv.gpu)
        printf("condconv_server: %s: running the CPU reference path (condconv_forward_cpu): same queue, workers "
               "and shutdown, no CUDA graphs; correct but slow\n",
               force_cpu ? "--cpu given" : "NO CUDA DEVICE FOUND");

    /* Load once; workers share the parameters. The loading context stays
     * alive as long as the layer on it. */
    int status = 1;
    condconv_layer_desc_t desc = NULL;
    condconv_context_t load_ctx = NULL, cpu_ctx = NULL;
    condconv_layer_t cpu_layer = NULL;
    worker *workers = NULL;
    condconv_status s = make_desc(&desc);
    if (s == CONDCONV_STATUS_SUCCESS) s = condconv_context_create(&load_ctx, srv.gpu ? 0 : CONDCONV_DEVICE_CPU);
    if (s == CONDCONV_STATUS_SUCCESS)
        s = condconv_layer_create_from_safetensors(load_ctx, desc, weights_path, model.prefix, model.routing_prefix,
                                                   &srv.weights);
    /* --verify: the CPU reference, on its own context (parameters cannot be
     * shared across devices, so the file is read again). */
    if (s == CONDCONV_STATUS_SUCCESS && do_verify) {
        s = condconv_context_create(&cpu_ctx, CONDCONV_DEVICE_CPU);
        if (s == CONDCONV_STATUS_SUCCESS)
            s = condconv_layer_create_from_safetensors(cpu_ctx, desc, weights_path, model.prefix, model.routing_prefix,
                                                       &cpu_layer);
    }
    if (s != CONDCONV_STATUS_SUCCESS) {
        fprintf(stderr, "condconv_server: cannot load %s: %s\n", weights_path, condconv_last_error());
        goto out;
    }
    int out_h, out_w;
    if (condconv_layer_desc_get_output_dims(desc, model.h, model.w, &out_h, &out_w, NULL) != CONDCONV_STATUS_SUCCESS)
        goto out;
    srv.out_h = out_h;
    srv.out_w = out_w;
    srv.x_per_sample = (size_t)model.in_channels * (size_t)model.h * (size_t)model.w;
    srv.y_per_sample = (size_t)model.out_channels * (size_t)out_h * (size_t)out_w;
    printf("condconv_server: %s loaded (%d -> %d channels, %dx%d kernel, %d experts); %d workers, %d requests of "
           "%dx%d images\n",
           weights_path, model.in_channels, model.out_channels, model.kernel, model.kernel, model.experts, workers_n,
           requests_n, model.h, model.w);

    queue_init(&srv.requests);
    queue_init(&srv.responses);
    workers = calloc((size_t)workers_n, sizeof *workers);
    int started = 0;
    const double t0 = now_ms();
    for (int i = 0; workers && i < workers_n; ++i) {
        workers[i].index = i;
        workers[i].srv = &srv;
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) break;
        ++started;
    }
    int produced = 0;
    for (int id = 0; started && id < requests_n; ++id) {
        request *r = make_request(&srv, id, batch_sizes[(id * 7 + id / 3) % SHAPES]);
        if (r == NULL) break;
        queue_push(&srv.requests, r);
        ++produced;
    }
    /* Shutdown: no more requests; workers drain the queue and exit. */
    queue_close(&srv.requests);
    for (int i = 0; i < started; ++i) pthread_join(workers[i].thread, NULL);
    const double elapsed = now_ms() - t0;

    int answered = 0, images = 0, bad = 0;
    double worst = 0.0, checksum = 0.0;
    /* Per request, summed in request order: responses arrive in any order. */
    double *sums = calloc((size_t)requests_n + 1, sizeof *sums);
    for (request *r; (r = queue_pop(&srv.responses, 0)) != NULL; request_free(r)) {
        ++answered;
        images += r->n;
        for (size_t i = 0; sums && i < (size_t)r->n * srv.y_per_sample; ++i) sums[r->id] += r->y[i];
        if (cpu_layer && verify(cpu_layer, &srv, r, &worst)) {
            if (bad++ < 5)
                fprintf(stderr,
                        "condconv_server: request %d (batch %d, worker %d) differs from the CPU "
                        "reference\n",
                        r->id, r->n, r->worker);
        }
    }
    for (request *r; (r = queue_pop(&srv.requests, 0)) != NULL;) request_free(r); /* unanswered */
    for (int i = 0; sums && i < requests_n; ++i) checksum += sums[i];
    free(sums);
    for (int i = 0; i < started; ++i) {
        printf("worker %d: %d requests served%s%s\n", i, workers[i].served, workers[i].error[0] ? "; failed: " : "",
               workers[i].error);
    }
    printf("condconv_server: %d of %d requests (%d images) answered on the %s in %.1f ms; output checksum %.6f\n",
           answered, requests_n, images, srv.gpu ? "GPU with CUDA graphs" : "CPU reference path", elapsed, checksum);
    if (cpu_layer)
        printf("condconv_server: verified against the CPU reference: %d differ (max |diff| %.3g)\n", bad, worst);
    status = answered == requests_n && produced == requests_n && bad == 0 ? 0 : 1;
    queue_destroy(&srv.requests);
    queue_destroy(&srv.responses);

out:
    free(workers);
    condconv_layer_destroy(cpu_layer);
    condconv_context_destroy(cpu_ctx);
    condconv_layer_destroy(srv.weights); /* the last reference frees the parameters */
    condconv_context_destroy(load_ctx);
    condconv_layer_desc_destroy(desc);
    return status;
}
