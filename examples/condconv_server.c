/* condconv_server: a CondConv layer served the way an inference server
 * would run it -- the pattern to copy.
 *
 *   condconv_server WEIGHTS.safetensors [--dtype f32|f16|bf16] [--layout nchw|nhwc] [--devices N|all]
 *                   [--workers N] [--inflight N] [--requests N] [--cpu] [--require-gpu] [--verify]
 *
 * - Weights are loaded once per GPU from a .safetensors file (timm's names:
 *   conv.weight, conv.bias, routing_fn.weight/.bias) in the serving dtype
 *   and layout, and shared by that GPU's workers (condconv_layer_create_
 *   shared): one copy of the parameters per device, one plan cache per
 *   worker. Parameters cannot be shared across devices.
 * - A worker group per device (--devices, default all; --workers per
 *   device). Each worker owns a context, a CUDA stream, a workspace and
 *   --inflight slots; a slot holds device buffers for the largest captured
 *   batch, pinned host staging, one CUDA graph per captured batch size
 *   (1, 2, 4, 8) bound to its buffers, and an event.
 * - Any batch size: a request of n images runs in chunks of at most 8, each
 *   padded up to the nearest captured size (a 5-image chunk runs the 8
 *   graph). Every sample's output depends on that sample alone (routing and
 *   kernels are per sample), so the padding rows only cost time; they hold
 *   the zeros they were initialised with or an earlier request's images,
 *   never uninitialised memory. Capturing more sizes, outside the request
 *   path, trades memory for less padding.
 * - Completion by events, not a synchronisation per request: a chunk is
 *   staged, copied in, its graph launched, its outputs copied out and an
 *   event recorded, and the worker goes on to the next chunk while the GPU
 *   works. Finished slots are reaped with cudaEventQuery; only when every
 *   slot is busy (or the queue is empty) does the worker block, on the
 *   oldest slot's event (cudaEventBlockingSync: the thread sleeps).
 * - Requests come from one queue for all devices and answers go to another;
 *   the main thread produces, closes the queue, joins the workers and checks
 *   the answers; everything is freed on the way out (CTest runs the CPU
 *   path under valgrind, the device check the GPU path under
 *   compute-sanitizer's leak check).
 * - Without a CUDA device (or with --cpu) the same workers run the CPU
 *   reference path, condconv_forward_cpu, in the same dtype and layout, and
 *   say so.
 *
 * The model is one CondConv layer of an EfficientNet-CondConv-style block: a
 * depthwise 5x5, stride 2, 24 channels, 8 experts, sigmoid routing. It
 * matches tests/data/golden_depthwise5x5_s2.safetensors; for other weights,
 * change `model` below. --verify recomputes every answer on the CPU
 * reference path (same dtype and layout) and compares. --require-gpu exits
 * 77 (a CTest skip) when there is no GPU. Exit status 0 when every request
 * was answered (and verified). */
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
 * input resolution it serves and the batch sizes it captures graphs for. */
static const struct model_config {
    int in_channels, out_channels, kernel, stride, pad, groups, experts, has_bias;
    const char *prefix, *routing_prefix;
    int h, w;
} model = {24, 24, 5, 2, 2, 24, 8, 1, "conv", "routing_fn", 28, 28};
static const int batch_sizes[] = {1, 2, 4, 8}; /* ascending; the last is the chunk size */
enum {
    SHAPES = sizeof batch_sizes / sizeof batch_sizes[0],
    MAX_BATCH = 8,
    MAX_DEVICES = 16,
    MAX_SLOTS = 4,
    MAX_REQUEST = 13 /* the producer's largest request: more than one chunk */
};

/* ------------------------------------------------------------------ */
/* Requests and a blocking queue                                       */

typedef struct request {
    int id, n;
    void *x;      /* n samples in the serving dtype and layout */
    void *y;      /* n samples, written by a worker */
    float *alpha; /* [n][E], the routing weights used (always f32) */
    int worker;   /* who answered */
    /* Owned by the one worker serving it: samples handed to the GPU, chunks in flight. */
    int submitted, pending;
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

/* The next request; with wait, blocks until one arrives or the queue is
 * closed and empty (NULL). */
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
    int gpu;                               /* 1: CUDA graphs on the GPUs; 0: CPU reference path */
    int devices, slots;                    /* GPUs served; in-flight slots per worker */
    condconv_dtype dtype;                  /* of x, y and the parameters */
    condconv_layout layout;                /* of x and y */
    condconv_algo algo;                    /* --algo: forced on every worker's layer; AUTO measures per shape */
    size_t elem;                           /* bytes per element of x and y */
    size_t x_per_sample, y_per_sample;     /* elements */
    condconv_layer_t weights[MAX_DEVICES]; /* loaded once per device (index 0 on the CPU path) */
    queue requests, responses;
} server;

/* One chunk of a request in flight: buffers bound to this slot's graphs. */
typedef struct slot {
    void *d_x, *d_y;
    float *d_alpha;
    void *h_x, *h_y; /* pinned: cudaMemcpyAsync from and to them does not block the thread */
    float *h_alpha;
    cudaGraphExec_t graphs[SHAPES];
    cudaEvent_t done;
    request *req; /* NULL: free */
    int offset, count;
    unsigned long seq; /* submission order: the oldest is waited for first */
} slot;

typedef struct worker {
    int index, device;
    server *srv;
    pthread_t thread;
    condconv_context_t ctx;
    condconv_layer_t layer;
    /* GPU only */
    cudaStream_t stream;
    void *d_workspace; /* one for all slots: their forwards run in stream order */
    size_t workspace_bytes;
    slot slots[MAX_SLOTS];
    int inflight;
    unsigned long seq;
    /* Outcome */
    int served, chunks, padded;
    char error[512];
} worker;

/* The smallest captured batch size that holds n (n <= MAX_BATCH). */
static int shape_for(int n)
{
    for (int i = 0; i < SHAPES; ++i)
        if (batch_sizes[i] >= n) return i;
    return SHAPES - 1;
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

/* A slot's buffers, its event and one graph per batch size. Everything the
 * forward needs is prepared and allocated before the capture, which must
 * contain no allocation and no synchronisation. Thread-local capture mode:
 * other workers may be allocating while this one captures. */
static int slot_setup(worker *wk, slot *sl)
{
    const server *srv = wk->srv;
    const size_t x_bytes = MAX_BATCH * srv->x_per_sample * srv->elem,
                 y_bytes = MAX_BATCH * srv->y_per_sample * srv->elem;
    const size_t a_bytes = MAX_BATCH * (size_t)model.experts * sizeof(float);
    CUDA_OK(wk, cudaMalloc(&sl->d_x, x_bytes));
    CUDA_OK(wk, cudaMalloc(&sl->d_y, y_bytes));
    CUDA_OK(wk, cudaMalloc((void **)&sl->d_alpha, a_bytes));
    /* Padding rows read whatever the buffer holds: make that defined once. */
    CUDA_OK(wk, cudaMemsetAsync(sl->d_x, 0, x_bytes, wk->stream));
    CUDA_OK(wk, cudaMallocHost(&sl->h_x, x_bytes));
    CUDA_OK(wk, cudaMallocHost(&sl->h_y, y_bytes));
    CUDA_OK(wk, cudaMallocHost((void **)&sl->h_alpha, a_bytes));
    CUDA_OK(wk, cudaEventCreateWithFlags(&sl->done, cudaEventDisableTiming | cudaEventBlockingSync));
    for (int i = 0; i < SHAPES; ++i) {
        cudaGraph_t graph = NULL;
        CUDA_OK(wk, cudaStreamBeginCapture(wk->stream, cudaStreamCaptureModeThreadLocal));
        const condconv_status s = condconv_forward(wk->layer, batch_sizes[i], model.h, model.w, sl->d_x, sl->d_y, NULL,
                                                   sl->d_alpha, wk->d_workspace, wk->workspace_bytes);
        /* End the capture whatever happened, so the stream is usable again. */
        const cudaError_t end = cudaStreamEndCapture(wk->stream, &graph);
        if (s != CONDCONV_STATUS_SUCCESS) {
            if (graph) (void)cudaGraphDestroy(graph);
            return fail(wk, "condconv_forward (capture)", condconv_last_error());
        }
        if (end != cudaSuccess) return fail(wk, "cudaStreamEndCapture", cudaGetErrorString(end));
        const cudaError_t inst = cudaGraphInstantiate(&sl->graphs[i], graph, 0);
        (void)cudaGraphDestroy(graph); /* the executable graph keeps what it needs */
        if (inst != cudaSuccess) return fail(wk, "cudaGraphInstantiate", cudaGetErrorString(inst));
    }
    return 0;
}

static int setup(worker *wk)
{
    const server *srv = wk->srv;
    if (!srv->gpu) {
        CC_OK(wk, condconv_context_create(&wk->ctx, CONDCONV_DEVICE_CPU));
        CC_OK(wk, condconv_layer_create_shared(wk->ctx, srv->weights[0], &wk->layer));
        return 0;
    }
    /* The thread's current device: the stream, buffers and graphs live there. */
    CUDA_OK(wk, cudaSetDevice(wk->device));
    CUDA_OK(wk, cudaStreamCreateWithFlags(&wk->stream, cudaStreamNonBlocking));
    CC_OK(wk, condconv_context_create(&wk->ctx, wk->device));
    CC_OK(wk, condconv_context_set_stream(wk->ctx, wk->stream));
    CC_OK(wk, condconv_layer_create_shared(wk->ctx, srv->weights[wk->device], &wk->layer));
    /* A layer's algorithm is its own (not shared): each worker forces it. */
    CC_OK(wk, condconv_layer_set_algo(wk->layer, srv->algo));
    /* Plans (algorithm choice, AUTO's measurements) for every captured size, then one workspace for the largest. */
    for (int i = 0; i < SHAPES; ++i) {
        size_t bytes = 0;
        CC_OK(wk, condconv_prepare(wk->layer, batch_sizes[i], model.h, model.w));
        CC_OK(wk, condconv_get_workspace_size(wk->layer, batch_sizes[i], model.h, model.w, &bytes));
        if (bytes > wk->workspace_bytes) wk->workspace_bytes = bytes;
    }
    /* cudaMalloc alignment (256 bytes) meets CONDCONV_WORKSPACE_ALIGNMENT. */
    if (wk->workspace_bytes) CUDA_OK(wk, cudaMalloc(&wk->d_workspace, wk->workspace_bytes));
    for (int s = 0; s < srv->slots; ++s)
        if (slot_setup(wk, &wk->slots[s]) != 0) return 1;
    /* Setup is outside the request path: one wait here, for the memsets, is fine. */
    CUDA_OK(wk, cudaStreamSynchronize(wk->stream));
    condconv_plan_info info;
    CC_OK(wk, condconv_get_plan_info(wk->layer, MAX_BATCH, model.h, model.w, &info));
    printf("worker %d on device %d: %d slots x %d CUDA graphs (batch 1, 2, 4, 8); batch 8 runs %s (%s)\n", wk->index,
           wk->device, srv->slots, SHAPES, condconv_algo_name(info.algo), info.reason);
    return 0;
}

/* Enqueues samples [offset, offset + count) of r on a free slot: stage,
 * copy in, replay the graph of the nearest captured size, copy out, record
 * the slot's event. Returns without waiting for the GPU. */
static int submit(worker *wk, slot *sl, request *r, int offset, int count)
{
    const server *srv = wk->srv;
    const int shape = shape_for(count);
    const size_t x_bytes = (size_t)count * srv->x_per_sample * srv->elem;
    const size_t y_bytes = (size_t)count * srv->y_per_sample * srv->elem;
    const size_t a_bytes = (size_t)count * (size_t)model.experts * sizeof(float);
    /* A server that receives straight into pinned memory skips this copy. */
    memcpy(sl->h_x, (const unsigned char *)r->x + (size_t)offset * srv->x_per_sample * srv->elem, x_bytes);
    CUDA_OK(wk, cudaMemcpyAsync(sl->d_x, sl->h_x, x_bytes, cudaMemcpyHostToDevice, wk->stream));
    CUDA_OK(wk, cudaGraphLaunch(sl->graphs[shape], wk->stream));
    CUDA_OK(wk, cudaMemcpyAsync(sl->h_y, sl->d_y, y_bytes, cudaMemcpyDeviceToHost, wk->stream));
    CUDA_OK(wk, cudaMemcpyAsync(sl->h_alpha, sl->d_alpha, a_bytes, cudaMemcpyDeviceToHost, wk->stream));
    CUDA_OK(wk, cudaEventRecord(sl->done, wk->stream));
    sl->req = r;
    sl->offset = offset;
    sl->count = count;
    sl->seq = wk->seq++;
    ++wk->inflight;
    ++wk->chunks;
    wk->padded += batch_sizes[shape] - count;
    r->submitted += count;
    ++r->pending;
    return 0;
}

/* Finishes a slot whose event has completed (wait: block on it first):
 * copies its outputs into the request, and answers the request once all its
 * chunks are in. *finished is 0 when the slot is still busy (no wait). */
static int reap(worker *wk, slot *sl, int wait, int *finished)
{
    const server *srv = wk->srv;
    *finished = 0;
    if (wait) {
        CUDA_OK(wk, cudaEventSynchronize(sl->done));
    } else {
        const cudaError_t q = cudaEventQuery(sl->done);
        if (q == cudaErrorNotReady) return 0;
        if (q != cudaSuccess) return fail(wk, "cudaEventQuery", cudaGetErrorString(q));
    }
    request *r = sl->req;
    memcpy((unsigned char *)r->y + (size_t)sl->offset * srv->y_per_sample * srv->elem, sl->h_y,
           (size_t)sl->count * srv->y_per_sample * srv->elem);
    memcpy(r->alpha + (size_t)sl->offset * (size_t)model.experts, sl->h_alpha,
           (size_t)sl->count * (size_t)model.experts * sizeof(float));
    sl->req = NULL;
    --wk->inflight;
    *finished = 1;
    if (--r->pending == 0 && r->submitted == r->n) {
        r->worker = wk->index;
        ++wk->served;
        queue_push(&wk->srv->responses, r);
    }
    return 0;
}

static slot *free_slot(worker *wk)
{
    for (int s = 0; s < wk->srv->slots; ++s)
        if (wk->slots[s].req == NULL) return &wk->slots[s];
    return NULL;
}

static slot *oldest_slot(worker *wk)
{
    slot *oldest = NULL;
    for (int s = 0; s < wk->srv->slots; ++s)
        if (wk->slots[s].req && (oldest == NULL || wk->slots[s].seq < oldest->seq)) oldest = &wk->slots[s];
    return oldest;
}

/* The GPU worker's loop: keep every slot busy, reap what is done, block
 * only when nothing else can be done. Returns 0 when the queue is closed
 * and drained. *cur is the request being split into chunks (for
 * give_back after a failure). */
static int serve_gpu(worker *wk, request **cur)
{
    for (;;) {
        slot *sl;
        while ((sl = free_slot(wk)) != NULL) {
            if (*cur == NULL || (*cur)->submitted == (*cur)->n) {
                /* Wait for a request only when nothing is in flight. */
                *cur = queue_pop(&wk->srv->requests, wk->inflight == 0);
                if (*cur == NULL) break;
                (*cur)->submitted = (*cur)->pending = 0;
            }
            request *r = *cur;
            const int count = r->n - r->submitted < MAX_BATCH ? r->n - r->submitted : MAX_BATCH;
            if (submit(wk, sl, r, r->submitted, count) != 0) return 1;
        }
        const int nothing_to_submit = *cur == NULL || (*cur)->submitted == (*cur)->n;
        if (wk->inflight == 0 && nothing_to_submit) return 0; /* closed and drained */
        /* Reap whatever is done; if nothing is, and no slot is free or there
         * is nothing to put in one, sleep on the oldest slot's event. */
        int reaped = 0, finished = 0;
        for (int s = 0; s < wk->srv->slots; ++s) {
            if (wk->slots[s].req == NULL) continue;
            if (reap(wk, &wk->slots[s], 0, &finished) != 0) return 1;
            reaped += finished;
        }
        if (reaped == 0 && (free_slot(wk) == NULL || nothing_to_submit)) {
            slot *oldest = oldest_slot(wk);
            if (oldest && reap(wk, oldest, 1, &finished) != 0) return 1;
        }
    }
}

/* After a failure: the requests this worker holds and has not answered go
 * back to the queue, for another worker to serve from scratch. */
static void give_back(worker *wk, request *cur)
{
    if (wk->stream) (void)cudaStreamSynchronize(wk->stream);
    request *back[MAX_SLOTS + 1];
    int count = 0;
    /* cur was answered already when all of it was submitted and nothing is pending. */
    if (cur && !(cur->submitted == cur->n && cur->pending == 0)) back[count++] = cur;
    for (int s = 0; s < wk->srv->slots; ++s) {
        request *r = wk->slots[s].req;
        wk->slots[s].req = NULL;
        int seen = r == NULL;
        for (int i = 0; i < count && !seen; ++i) seen = back[i] == r;
        if (!seen) back[count++] = r;
    }
    for (int i = 0; i < count; ++i) {
        back[i]->submitted = back[i]->pending = 0;
        queue_push(&wk->srv->requests, back[i]);
    }
}

/* Frees whatever setup got to, in reverse order; safe after a partial setup. */
static void teardown(worker *wk)
{
    if (wk->stream) (void)cudaStreamSynchronize(wk->stream);
    for (int s = 0; s < MAX_SLOTS; ++s) {
        slot *sl = &wk->slots[s];
        for (int i = 0; i < SHAPES; ++i)
            if (sl->graphs[i]) (void)cudaGraphExecDestroy(sl->graphs[i]);
        if (sl->done) (void)cudaEventDestroy(sl->done);
        if (sl->d_x) (void)cudaFree(sl->d_x);
        if (sl->d_y) (void)cudaFree(sl->d_y);
        if (sl->d_alpha) (void)cudaFree(sl->d_alpha);
        if (sl->h_x) (void)cudaFreeHost(sl->h_x);
        if (sl->h_y) (void)cudaFreeHost(sl->h_y);
        if (sl->h_alpha) (void)cudaFreeHost(sl->h_alpha);
    }
    if (wk->d_workspace) (void)cudaFree(wk->d_workspace);
    if (wk->layer) condconv_layer_destroy(wk->layer); /* before its context */
    if (wk->ctx) condconv_context_destroy(wk->ctx);
    if (wk->stream) (void)cudaStreamDestroy(wk->stream);
}

static void *worker_main(void *arg)
{
    worker *wk = arg;
    if (setup(wk) == 0) {
        if (wk->srv->gpu) {
            request *cur = NULL;
            if (serve_gpu(wk, &cur) != 0) give_back(wk, cur); /* and stop: this worker is broken */
        } else {
            for (request *r; (r = queue_pop(&wk->srv->requests, 1)) != NULL;) {
                if (condconv_forward_cpu(wk->layer, r->n, model.h, model.w, r->x, r->y, NULL, r->alpha) !=
                    CONDCONV_STATUS_SUCCESS) {
                    fail(wk, "condconv_forward_cpu", condconv_last_error());
                    queue_push(&wk->srv->requests, r); /* for another worker */
                    break;
                }
                r->worker = wk->index;
                ++wk->served;
                ++wk->chunks;
                queue_push(&wk->srv->responses, r);
            }
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

/* A client's request: n images, already in the serving dtype and layout. */
static request *make_request(const server *srv, int id, int n)
{
    request *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->id = id;
    r->n = n;
    r->worker = -1;
    const size_t x_n = (size_t)n * srv->x_per_sample;
    r->x = malloc(x_n * sizeof(float)); /* room for f32; a half dtype uses the first half */
    r->y = malloc((size_t)n * srv->y_per_sample * srv->elem);
    r->alpha = malloc((size_t)n * (size_t)model.experts * sizeof(float));
    if (r->x == NULL || r->y == NULL || r->alpha == NULL) {
        request_free(r);
        return NULL;
    }
    float *xf = r->x;
    for (size_t i = 0; i < x_n; ++i) xf[i] = rng_float();
    /* In place: a half element never lands on a float not yet read. */
    if (condconv_convert(CONDCONV_DTYPE_F32, r->x, srv->dtype, r->x, x_n) != CONDCONV_STATUS_SUCCESS) {
        request_free(r);
        return NULL;
    }
    return r;
}

static condconv_status make_desc(condconv_dtype dtype, condconv_layout layout, condconv_layer_desc_t *desc)
{
    condconv_status s = condconv_layer_desc_create(desc);
    if (s != CONDCONV_STATUS_SUCCESS) return s;
    if ((s = condconv_layer_desc_set_conv(*desc, model.in_channels, model.out_channels, model.kernel, model.kernel,
                                          model.stride, model.stride, 1, 1, model.groups)) != CONDCONV_STATUS_SUCCESS ||
        (s = condconv_layer_desc_set_padding(*desc, CONDCONV_PADDING_EXPLICIT, model.pad, model.pad)) !=
            CONDCONV_STATUS_SUCCESS ||
        (s = condconv_layer_desc_set_experts(*desc, model.experts, model.has_bias)) != CONDCONV_STATUS_SUCCESS ||
        (s = condconv_layer_desc_set_routing(*desc, CONDCONV_ROUTING_SIGMOID, 1.0f)) != CONDCONV_STATUS_SUCCESS ||
        (s = condconv_layer_desc_set_format(*desc, dtype, layout)) != CONDCONV_STATUS_SUCCESS) {
        condconv_layer_desc_destroy(*desc);
        *desc = NULL;
    }
    return s;
}

/* Recomputes an answer on the CPU reference path (same dtype and layout);
 * 0 when it agrees. The GPU accumulates in f32 and the reference in double,
 * and both round the output to the dtype once: they differ by rounding
 * only. Bounds relative to the output's size: f32 1e-4 (generous for these
 * 25-tap sums), f16 2e-3 and bf16 1.6e-2 (two units in the last place of
 * the dtype). Routing weights are f32 on both: 2e-5. */
static int verify(condconv_layer_t cpu_layer, const server *srv, const request *r, const float *y, double *worst)
{
    const size_t y_n = (size_t)r->n * srv->y_per_sample, a_n = (size_t)r->n * (size_t)model.experts;
    const double tol = srv->dtype == CONDCONV_DTYPE_F32 ? 1e-4 : srv->dtype == CONDCONV_DTYPE_F16 ? 2e-3 : 1.6e-2;
    void *raw = malloc(y_n * srv->elem); /* in the dtype */
    float *ref = malloc(y_n * sizeof(float)), *alpha = malloc(a_n * sizeof(float));
    int bad =
        raw == NULL || ref == NULL || alpha == NULL ||
        condconv_forward_cpu(cpu_layer, r->n, model.h, model.w, r->x, raw, NULL, alpha) != CONDCONV_STATUS_SUCCESS ||
        condconv_convert(srv->dtype, raw, CONDCONV_DTYPE_F32, ref, y_n) != CONDCONV_STATUS_SUCCESS;
    for (size_t i = 0; !bad && i < y_n; ++i) {
        const double d = fabs((double)y[i] - (double)ref[i]);
        if (d > *worst) *worst = d;
        bad |= !(d <= tol * (1.0 + fabs((double)ref[i])));
    }
    for (size_t i = 0; !bad && i < a_n; ++i) bad |= !(fabs((double)r->alpha[i] - (double)alpha[i]) <= 2e-5);
    free(raw);
    free(ref);
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
    fprintf(stderr,
            "usage: %s WEIGHTS.safetensors [--dtype f32|f16|bf16] [--layout nchw|nhwc] [--devices N|all]\n"
            "       [--workers N (per device)] [--inflight N (1-%d)] [--requests N] [--algo auto|NAME] [--cpu]\n"
            "       [--require-gpu] [--verify]\n",
            argv0, MAX_SLOTS);
    return 2;
}

/* A whole decimal number in [lo, hi], or -1. */
static int parse_int(const char *s, int lo, int hi)
{
    char *end = NULL;
    const long v = strtol(s, &end, 10);
    return end != s && *end == '\0' && v >= lo && v <= hi ? (int)v : -1;
}

int main(int argc, char **argv)
{
    const char *weights_path = NULL;
    int workers_per_device = 2, requests_n = 32, force_cpu = 0, require_gpu = 0, do_verify = 0, devices_asked = 0;
    server srv = {0};
    srv.slots = 2;
    for (int i = 1; i < argc; ++i) {
        const char *val = i + 1 < argc ? argv[i + 1] : "";
        if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc) {
            workers_per_device = parse_int(argv[++i], 1, 64);
        } else if (strcmp(argv[i], "--requests") == 0 && i + 1 < argc) {
            requests_n = parse_int(argv[++i], 0, 1000000);
        } else if (strcmp(argv[i], "--inflight") == 0 && i + 1 < argc) {
            srv.slots = parse_int(argv[++i], 1, MAX_SLOTS);
        } else if (strcmp(argv[i], "--devices") == 0 && i + 1 < argc) {
            devices_asked = strcmp(val, "all") == 0 ? 0 : parse_int(val, 1, 1 << 20);
            if (strcmp(val, "all") != 0 && devices_asked < 1) return usage(argv[0]);
            ++i;
        } else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            if (strcmp(val, "f32") == 0)
                srv.dtype = CONDCONV_DTYPE_F32;
            else if (strcmp(val, "f16") == 0)
                srv.dtype = CONDCONV_DTYPE_F16;
            else if (strcmp(val, "bf16") == 0)
                srv.dtype = CONDCONV_DTYPE_BF16;
            else
                return usage(argv[0]);
            ++i;
        } else if (strcmp(argv[i], "--layout") == 0 && i + 1 < argc) {
            if (strcmp(val, "nchw") == 0)
                srv.layout = CONDCONV_LAYOUT_NCHW;
            else if (strcmp(val, "nhwc") == 0)
                srv.layout = CONDCONV_LAYOUT_NHWC;
            else
                return usage(argv[0]);
            ++i;
        } else if (strcmp(argv[i], "--algo") == 0 && i + 1 < argc) {
            int a = 0;
            while (a < CONDCONV_ALGO_COUNT && strcmp(val, condconv_algo_name((condconv_algo)a)) != 0) ++a;
            if (a == CONDCONV_ALGO_COUNT) return usage(argv[0]);
            srv.algo = (condconv_algo)a;
            ++i;
        } else if (strcmp(argv[i], "--cpu") == 0) {
            force_cpu = 1;
        } else if (strcmp(argv[i], "--require-gpu") == 0) {
            require_gpu = 1;
        } else if (strcmp(argv[i], "--verify") == 0) {
            do_verify = 1;
        } else if (argv[i][0] != '-' && weights_path == NULL) {
            weights_path = argv[i];
        } else {
            return usage(argv[0]);
        }
    }
    if (weights_path == NULL || workers_per_device < 1 || workers_per_device > 64 || requests_n < 0 || srv.slots < 1 ||
        srv.slots > MAX_SLOTS)
        return usage(argv[0]);
    srv.elem = srv.dtype == CONDCONV_DTYPE_F32 ? 4 : 2;
    const char *dtype_name = srv.dtype == CONDCONV_DTYPE_F32 ? "f32" : srv.dtype == CONDCONV_DTYPE_F16 ? "f16" : "bf16";
    const char *layout_name = srv.layout == CONDCONV_LAYOUT_NHWC ? "NHWC" : "NCHW";

    const int found = force_cpu ? 0 : condconv_device_count();
    srv.gpu = found > 0;
    if (!srv.gpu && require_gpu) {
        printf("condconv_server: SKIPPED - no CUDA device (--require-gpu)\n");
        return 77;
    }
    srv.devices = !srv.gpu ? 1 : devices_asked == 0 || devices_asked > found ? found : devices_asked;
    if (srv.devices > MAX_DEVICES) srv.devices = MAX_DEVICES;
    if (srv.gpu && devices_asked > found)
        printf("condconv_server: --devices %d, but %d CUDA device(s) found: serving on %d\n", devices_asked, found,
               srv.devices);
    if (!srv.gpu)
        printf("condconv_server: %s: running the CPU reference path (condconv_forward_cpu): same queue, workers "
               "and shutdown, no CUDA graphs; correct but slow\n",
               force_cpu ? "--cpu given" : "NO CUDA DEVICE FOUND");

    /* Load once per device; that device's workers share the parameters. A
     * loading context stays alive as long as the layer on it. */
    int status = 1, workers_n = srv.devices * workers_per_device, started = 0;
    condconv_layer_desc_t desc = NULL;
    condconv_context_t load_ctx[MAX_DEVICES] = {0}, cpu_ctx = NULL;
    condconv_layer_t cpu_layer = NULL;
    worker *workers = NULL;
    condconv_status s = make_desc(srv.dtype, srv.layout, &desc);
    for (int d = 0; d < srv.devices && s == CONDCONV_STATUS_SUCCESS; ++d) {
        s = condconv_context_create(&load_ctx[d], srv.gpu ? d : CONDCONV_DEVICE_CPU);
        if (s == CONDCONV_STATUS_SUCCESS)
            s = condconv_layer_create_from_safetensors(load_ctx[d], desc, weights_path, model.prefix,
                                                       model.routing_prefix, &srv.weights[d]);
    }
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
    srv.x_per_sample = (size_t)model.in_channels * (size_t)model.h * (size_t)model.w;
    srv.y_per_sample = (size_t)model.out_channels * (size_t)out_h * (size_t)out_w;
    printf("condconv_server: %s loaded (%d -> %d channels, %dx%d kernel, %d experts), %s %s; %d device(s) x %d "
           "workers, %d in flight each; %d requests of 1 to %d %dx%d images\n",
           weights_path, model.in_channels, model.out_channels, model.kernel, model.kernel, model.experts, dtype_name,
           layout_name, srv.devices, workers_per_device, srv.gpu ? srv.slots : 1, requests_n, MAX_REQUEST, model.h,
           model.w);

    queue_init(&srv.requests);
    queue_init(&srv.responses);
    workers = calloc((size_t)workers_n, sizeof *workers);
    const double t0 = now_ms();
    for (int i = 0; workers && i < workers_n; ++i) {
        workers[i].index = i;
        workers[i].device = srv.gpu ? i / workers_per_device : -1;
        workers[i].srv = &srv;
        if (pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) != 0) break;
        ++started;
    }
    int produced = 0;
    for (int id = 0; started && id < requests_n; ++id) {
        /* Any size from 1 to 13: most need padding, some more than one chunk. */
        request *r = make_request(&srv, id, 1 + (id * 7 + id / 3) % MAX_REQUEST);
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
    /* Per request, summed in request order: answers arrive in any order. */
    double *sums = calloc((size_t)requests_n + 1, sizeof *sums);
    for (request *r; (r = queue_pop(&srv.responses, 0)) != NULL; request_free(r)) {
        ++answered;
        images += r->n;
        const size_t y_n = (size_t)r->n * srv.y_per_sample;
        float *y = malloc(y_n * sizeof(float));
        if (y == NULL || condconv_convert(srv.dtype, r->y, CONDCONV_DTYPE_F32, y, y_n) != CONDCONV_STATUS_SUCCESS) {
            ++bad;
            free(y);
            continue;
        }
        for (size_t i = 0; sums && i < y_n; ++i) sums[r->id] += y[i];
        if (cpu_layer && verify(cpu_layer, &srv, r, y, &worst)) {
            if (bad++ < 5)
                fprintf(stderr, "condconv_server: request %d (batch %d, worker %d) differs from the CPU reference\n",
                        r->id, r->n, r->worker);
        }
        free(y);
    }
    for (request *r; (r = queue_pop(&srv.requests, 0)) != NULL;) request_free(r); /* unanswered */
    for (int i = 0; sums && i < requests_n; ++i) checksum += sums[i];
    free(sums);
    int chunks = 0, padded = 0;
    for (int i = 0; i < started; ++i) {
        chunks += workers[i].chunks;
        padded += workers[i].padded;
        if (srv.gpu)
            printf("worker %d (device %d): %d requests in %d chunks, %d padding images%s%s\n", i, workers[i].device,
                   workers[i].served, workers[i].chunks, workers[i].padded, workers[i].error[0] ? "; failed: " : "",
                   workers[i].error);
        else
            printf("worker %d: %d requests served%s%s\n", i, workers[i].served, workers[i].error[0] ? "; failed: " : "",
                   workers[i].error);
    }
    printf("condconv_server: %d of %d requests (%d images) answered on the %s in %.1f ms; output checksum %.6f\n",
           answered, requests_n, images, srv.gpu ? "GPU with CUDA graphs" : "CPU reference path", elapsed, checksum);
    if (srv.gpu)
        printf("condconv_server: %d graph replays for %d images: %d padding images (captured sizes 1, 2, 4, 8), "
               "completion by CUDA events\n",
               chunks, images, padded);
    if (cpu_layer)
        printf("condconv_server: verified against the CPU reference (%s %s): %d differ (max |diff| %.3g)\n", dtype_name,
               layout_name, bad, worst);
    status = answered == requests_n && produced == requests_n && bad == 0 ? 0 : 1;
    queue_destroy(&srv.requests);
    queue_destroy(&srv.responses);

out:
    free(workers);
    if (cpu_layer) condconv_layer_destroy(cpu_layer);
    if (cpu_ctx) condconv_context_destroy(cpu_ctx);
    for (int d = 0; d < MAX_DEVICES; ++d) {
        if (srv.weights[d]) condconv_layer_destroy(srv.weights[d]); /* the last reference frees the parameters */
        if (load_ctx[d]) condconv_context_destroy(load_ctx[d]);
    }
    if (desc) condconv_layer_desc_destroy(desc);
    return status;
}
