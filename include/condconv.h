/*
 * condconv — Conditionally Parameterized Convolutions (CondConv, Yang et al.,
 * NeurIPS 2019) and Dynamic Convolution for C inference servers.
 *
 * A CondConv layer gives every sample b its own kernel
 *     W_b = sum_e alpha_be * W_e        (E expert kernels)
 * with routing weights alpha_b = sigmoid(FC(GlobalAvgPool(x_b))) (CondConv),
 * softmax(FC(GAP(x_b)) / tau) (Dynamic Convolution), or given by the caller
 * (one routing function shared by several layers, as in EfficientNet-CondConv).
 *
 * API discipline follows cuDNN: opaque handles, descriptors that are created,
 * set, queried and destroyed, a status code from every call, caller-owned
 * device memory and a workspace-size query, algorithms that can be found by
 * measurement, chosen by heuristic or forced. The library never prints, never
 * exits and never aborts. A call that fails returns a specific status, a
 * readable message is available from condconv_last_error() on that thread,
 * and its outputs are untouched, with one exception: once condconv_forward
 * has passed its checks and begun launching work, a failure reported by CUDA,
 * cuDNN or cuBLAS (CONDCONV_STATUS_CUDA_ERROR, _CUDNN_ERROR, _CUBLAS_ERROR)
 * may leave y partly written (routing_out is written last, only once every
 * other launch of the forward has been accepted).
 *
 * Tensors are dense and row-major. With CONDCONV_LAYOUT_NCHW:
 *   input  x [N][Cin][H][W]      output y [N][Cout][Ho][Wo]
 * with CONDCONV_LAYOUT_NHWC (channels last):
 *   input  x [N][H][W][Cin]      output y [N][Ho][Wo][Cout]
 *   routing weights alpha [N][E], always f32
 * Parameters use the layout of PyTorch and timm, so trained weights drop in
 * (whatever the activations' layout):
 *   experts        [E][Cout][Cin/groups][kh][kw]
 *   expert biases  [E][Cout]
 *   routing FC     weight [E][Cin], bias [E]
 *
 * Element types (condconv_layer_desc_set_format): x, y and the parameters
 * are in the layer's dtype (f32, f16 or bf16); routing weights are computed
 * and returned in f32; every sum accumulates in f32 (double on the CPU
 * reference path). A half-precision layer's parameters are its dtype's
 * values, so the CPU reference and the GPU use the very same weights.
 *
 * Handles. Every context, layer descriptor and layer is registered while it
 * lives. A call given a handle that is not live (destroyed, never created,
 * or a handle of another kind) returns CONDCONV_STATUS_BAD_VALUE with a
 * message and touches nothing; destroying a handle a second time is such a
 * call; a destroy given NULL is a no-op. Two limits: a later create may
 * reuse a destroyed handle's address, which the stale handle then names;
 * and destroying a handle while another thread is still inside a call on it
 * is the caller's race (nothing can detect it).
 *
 * Threads. The library's own state (the registry, each thread's last
 * error) is thread-safe; the objects are not locked, so:
 *   - a context, and every layer created on it, is used by one thread at a
 *     time (they share the context's stream and cuDNN/cuBLAS handles, and
 *     prepare changes the layer's plan cache);
 *   - to serve from several threads, give each worker thread its own
 *     context (and stream) and its own layer made with
 *     condconv_layer_create_shared: the workers' layers share one copy of
 *     the parameters, which nothing modifies, and may then run, be created
 *     and be destroyed concurrently, in any order (the parameters go with
 *     the last of them);
 *   - condconv_forward_cpu and condconv_route_cpu only read a layer, so
 *     several threads may run them on one layer at once (not while another
 *     thread prepares, forwards or destroys it);
 *   - a descriptor may be read by several threads at once (layer creation
 *     reads it) while no thread sets it;
 *   - functions without a handle (condconv_convert, condconv_status_string,
 *     condconv_last_error, condconv_version, condconv_device_count) are
 *     safe from any thread.
 *
 * Devices. A GPU context belongs to one CUDA device (an ordinal as the
 * process sees it, after CUDA_VISIBLE_DEVICES). Every call makes the
 * context's device current for its work and makes the caller's current
 * device current again before it returns, whatever the status: a server
 * that drives several GPUs from one thread keeps its own cudaSetDevice
 * state. The stream given to a context, the buffers given to its forwards
 * and layers shared through condconv_layer_create_shared must belong to the
 * context's device. A CPU context (CONDCONV_DEVICE_CPU) never calls CUDA.
 */
#ifndef CONDCONV_H
#define CONDCONV_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define CONDCONV_API
#elif defined(__GNUC__)
#define CONDCONV_API __attribute__((visibility("default")))
#else
#define CONDCONV_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define CONDCONV_VERSION_MAJOR 0
#define CONDCONV_VERSION_MINOR 1
#define CONDCONV_VERSION_PATCH 0
#define CONDCONV_VERSION       (CONDCONV_VERSION_MAJOR * 10000 + CONDCONV_VERSION_MINOR * 100 + CONDCONV_VERSION_PATCH)

/* Largest number of experts a layer may have. */
#define CONDCONV_MAX_EXPERTS 128

/* Pass as the device of condconv_context_create for a context that only runs
 * the CPU reference path (no CUDA device needed). */
#define CONDCONV_DEVICE_CPU (-1)

/* Alignment, in bytes, the forward expects of its workspace pointer. */
#define CONDCONV_WORKSPACE_ALIGNMENT 256

/* ------------------------------------------------------------------------ */
/* Status                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum condconv_status {
    CONDCONV_STATUS_SUCCESS = 0,
    CONDCONV_STATUS_NULL_POINTER = 1,        /* a required pointer was NULL */
    CONDCONV_STATUS_BAD_SIZE = 2,            /* a size or count was zero or negative */
    CONDCONV_STATUS_BAD_GROUPS = 3,          /* channels not divisible by groups */
    CONDCONV_STATUS_BAD_EXPERTS = 4,         /* E < 1 or E > CONDCONV_MAX_EXPERTS */
    CONDCONV_STATUS_EMPTY_OUTPUT = 5,        /* the output height or width would be <= 0 */
    CONDCONV_STATUS_SIZE_OVERFLOW = 6,       /* an element or byte count overflows */
    CONDCONV_STATUS_MISSING_ROUTING = 7,     /* external routing without routing weights */
    CONDCONV_STATUS_WORKSPACE_TOO_SMALL = 8, /* workspace smaller than queried */
    CONDCONV_STATUS_BAD_VALUE = 9,           /* an enum, real or option out of range */
    CONDCONV_STATUS_MISALIGNED = 10,         /* a pointer lacks the alignment required */
    CONDCONV_STATUS_NOT_SUPPORTED = 11,      /* valid, but not supported by this algorithm/build */
    CONDCONV_STATUS_NOT_PREPARED = 12,       /* shape never prepared and the stream is capturing */
    CONDCONV_STATUS_ALLOC_FAILED = 13,       /* host or device allocation failed */
    CONDCONV_STATUS_NO_DEVICE = 14,          /* no CUDA device, or a CPU context used for GPU work */
    CONDCONV_STATUS_CUDA_ERROR = 15,         /* a CUDA runtime call failed */
    CONDCONV_STATUS_CUDNN_ERROR = 16,        /* a cuDNN call failed */
    CONDCONV_STATUS_CUBLAS_ERROR = 17,       /* a cuBLAS call failed */
    CONDCONV_STATUS_IO_ERROR = 18,           /* a file could not be opened or read */
    CONDCONV_STATUS_BAD_FILE = 19,           /* a weight file is malformed */
    CONDCONV_STATUS_TENSOR_NOT_FOUND = 20,   /* a named tensor is absent from a weight file */
    CONDCONV_STATUS_TENSOR_MISMATCH = 21,    /* a tensor's shape or type does not fit the layer */
    CONDCONV_STATUS_INTERNAL_ERROR = 22      /* a bug in condconv; please report it */
} condconv_status;

/* Name of a status, e.g. "CONDCONV_STATUS_BAD_GROUPS". Never NULL. */
CONDCONV_API const char *condconv_status_string(condconv_status status);

/* Detail of the last failure on the calling thread: what was wrong, with the
 * offending values. Valid until the next failing call on this thread; "" if
 * no call on this thread has failed. Never NULL. */
CONDCONV_API const char *condconv_last_error(void);

/* Version of the library at run time (CONDCONV_VERSION at build time). */
CONDCONV_API int condconv_version(void);

/* ------------------------------------------------------------------------ */
/* Enumerations                                                             */
/* ------------------------------------------------------------------------ */

typedef enum condconv_routing {
    CONDCONV_ROUTING_SIGMOID = 0, /* CondConv: sigmoid(FC(GAP(x))) */
    CONDCONV_ROUTING_SOFTMAX = 1, /* Dynamic Convolution: softmax(FC(GAP(x)) / temperature) */
    CONDCONV_ROUTING_EXTERNAL = 2 /* the caller passes alpha [N][E] to each forward */
} condconv_routing;

typedef enum condconv_activation {
    CONDCONV_ACTIVATION_NONE = 0,
    CONDCONV_ACTIVATION_RELU = 1,
    CONDCONV_ACTIVATION_SILU = 2 /* x * sigmoid(x), a.k.a. swish */
} condconv_activation;

/* Every algorithm runs every dtype and layout. Half precision runs on tensor cores (cuDNN, cuBLAS, and FUSED's
 * own wmma kernel, which also runs f32 data when TF32 is allowed), always with f32 accumulation. Where an
 * algorithm must store intermediates, they are in the layer's dtype, rounded once: the per-sample filters of
 * CUDNN_GROUPED and GEMM_BATCHED (in memory), each expert's output of MIXTURE, and FUSED's per-sample weight
 * tiles (in shared memory only). Per-sample biases, routing weights and every sum are f32; DEPTHWISE_FUSED
 * stores nothing. */
typedef enum condconv_dtype {
    CONDCONV_DTYPE_F32 = 0,
    CONDCONV_DTYPE_F16 = 1, /* IEEE binary16 */
    CONDCONV_DTYPE_BF16 = 2 /* bfloat16 */
} condconv_dtype;

typedef enum condconv_layout {
    CONDCONV_LAYOUT_NCHW = 0,
    CONDCONV_LAYOUT_NHWC = 1 /* channels last, for activations; parameters keep timm's layout */
} condconv_layout;

/* Converts count elements between f32, f16 and bf16 on the host (round to
 * nearest even; NaN stays NaN; overflow gives infinity), e.g. to feed a
 * half-precision layer from float data. In place (dst == src) when the
 * elements do not grow; other overlaps are refused. A count whose byte size
 * overflows size_t is CONDCONV_STATUS_SIZE_OVERFLOW. */
CONDCONV_API condconv_status condconv_convert(condconv_dtype src_dtype, const void *src, condconv_dtype dst_dtype,
                                              void *dst, size_t count);

typedef enum condconv_padding_mode {
    CONDCONV_PADDING_EXPLICIT = 0, /* pad_h rows above and below, pad_w columns left and right */
    CONDCONV_PADDING_SAME = 1      /* TensorFlow/timm "same": Ho = ceil(H / stride), the odd
                                      padding row/column goes below/right; depends on H, W */
} condconv_padding_mode;

/* How the convolution of a CondConv layer is computed on the GPU. */
typedef enum condconv_algo {
    CONDCONV_ALGO_AUTO = 0,            /* choose per shape (measured or heuristic) */
    CONDCONV_ALGO_CUDNN_GROUPED = 1,   /* aggregate per-sample kernels, cuDNN conv with batch as groups
                                          (NHWC: transposed to NCHW and back, the batch folds only there) */
    CONDCONV_ALGO_GEMM_BATCHED = 2,    /* any layer: aggregate, (im2col unless 1x1 s1), batched GEMM
                                          (NHWC: Y_n[P][Cout] = X_n[P][K] W_n^T, one call per group) */
    CONDCONV_ALGO_DEPTHWISE_FUSED = 3, /* depthwise only: filters mixed inside the conv kernel */
    CONDCONV_ALGO_MIXTURE = 4,         /* one static conv with E*Cout filters, then sum_e alpha_e y_e
                                          (NHWC native in cuDNN) */
    CONDCONV_ALGO_FUSED = 5,           /* dense/grouped: per-sample kernels mixed inside one conv kernel */
    CONDCONV_ALGO_COUNT = 6
} condconv_algo;

/* Name of an algorithm, e.g. "cudnn_grouped". NULL for an invalid value. */
CONDCONV_API const char *condconv_algo_name(condconv_algo algo);

/* How CONDCONV_ALGO_AUTO chooses when a shape is prepared. */
typedef enum condconv_algo_select {
    CONDCONV_SELECT_MEASURE = 0,  /* time every applicable algorithm once (like cudnnFind) */
    CONDCONV_SELECT_HEURISTIC = 1 /* no measuring: a fast rule (like cudnnGet) */
} condconv_algo_select;

/* Arithmetic the GPU may use for f32 data. */
typedef enum condconv_math {
    CONDCONV_MATH_F32 = 0, /* strict fp32 FMA; no TF32 anywhere (default) */
    CONDCONV_MATH_TF32 = 1 /* cuDNN and cuBLAS may use TF32 tensor cores */
} condconv_math;

/* ------------------------------------------------------------------------ */
/* Context: one CUDA device and stream, the library handles, options         */
/* ------------------------------------------------------------------------ */

typedef struct condconv_context *condconv_context_t;

/* cudaStream_t is a struct CUstream_st *; declared here so that this header
 * needs no CUDA header. */
struct CUstream_st;

/* Creates a context on CUDA device `device`, or CPU-only with
 * CONDCONV_DEVICE_CPU. A GPU context checks that the device exists
 * (CONDCONV_STATUS_NO_DEVICE otherwise) but creates cuDNN and cuBLAS handles
 * only when a shape is first prepared. The stream is the legacy default
 * stream until condconv_context_set_stream is called. One context serves one
 * host thread at a time; separate contexts are independent (see "Threads"
 * at the top of this file). */
CONDCONV_API condconv_status condconv_context_create(condconv_context_t *context, int device);
/* Destroys a context. Refused with CONDCONV_STATUS_BAD_VALUE, the message
 * naming how many, while layers created on it are live: destroy them first
 * (the context stays valid then). NULL is a no-op. */
CONDCONV_API condconv_status condconv_context_destroy(condconv_context_t context);

/* The stream is a cudaStream_t; written as struct CUstream_st * so that this
 * header needs no CUDA header. All GPU work of the context goes on it. */
CONDCONV_API condconv_status condconv_context_set_stream(condconv_context_t context, struct CUstream_st *stream);
CONDCONV_API condconv_status condconv_context_get_stream(condconv_context_t context, struct CUstream_st **stream);
/* CUDA device ordinal, or CONDCONV_DEVICE_CPU. */
CONDCONV_API condconv_status condconv_context_get_device(condconv_context_t context, int *device);
/* Math mode for plans prepared after the call (default CONDCONV_MATH_F32). */
CONDCONV_API condconv_status condconv_context_set_math(condconv_context_t context, condconv_math math);
CONDCONV_API condconv_status condconv_context_get_math(condconv_context_t context, condconv_math *math);
/* How AUTO chooses for plans prepared after the call (default MEASURE). */
CONDCONV_API condconv_status condconv_context_set_algo_select(condconv_context_t context, condconv_algo_select select);
CONDCONV_API condconv_status condconv_context_get_algo_select(condconv_context_t context, condconv_algo_select *select);
/* The time AUTO may spend measuring one shape at prepare, in milliseconds
 * of host time (default CONDCONV_DEFAULT_AUTO_BUDGET_MS; 0: no bound). The
 * GPU-measured default of every algorithm is always timed; candidates that
 * no GPU has ruled on yet (kernel variants, issue 19) are timed while the
 * budget lasts, and plan info says when it ran out. Plans prepared after
 * the call. Negative or non-finite values are BAD_VALUE. */
#define CONDCONV_DEFAULT_AUTO_BUDGET_MS 1000.0f
CONDCONV_API condconv_status condconv_context_set_auto_budget(condconv_context_t context, float milliseconds);
CONDCONV_API condconv_status condconv_context_get_auto_budget(condconv_context_t context, float *milliseconds);

/* Number of CUDA devices usable by this process (0 without a GPU or driver).
 * Never fails. */
CONDCONV_API int condconv_device_count(void);

/* ------------------------------------------------------------------------ */
/* Layer descriptor                                                         */
/* ------------------------------------------------------------------------ */

typedef struct condconv_layer_desc *condconv_layer_desc_t;

/* Defaults: shape unset (channels 0), stride 1, dilation 1, groups 1,
 * explicit padding 0, 1 expert with bias, sigmoid routing, temperature 1,
 * no activation, f32, NCHW. */
CONDCONV_API condconv_status condconv_layer_desc_create(condconv_layer_desc_t *desc);
/* A descriptor may be destroyed while layers made from it live (they copy it). NULL is a no-op. */
CONDCONV_API condconv_status condconv_layer_desc_destroy(condconv_layer_desc_t desc);

/* Convolution geometry. Depthwise: groups == in_channels. */
CONDCONV_API condconv_status condconv_layer_desc_set_conv(condconv_layer_desc_t desc, int in_channels, int out_channels,
                                                          int kernel_h, int kernel_w, int stride_h, int stride_w,
                                                          int dilation_h, int dilation_w, int groups);
/* pad_h and pad_w are used by CONDCONV_PADDING_EXPLICIT and must be 0 with SAME. */
CONDCONV_API condconv_status condconv_layer_desc_set_padding(condconv_layer_desc_t desc, condconv_padding_mode mode,
                                                             int pad_h, int pad_w);
/* has_bias: 1 when the experts have biases, 0 when not (any other value is BAD_VALUE). */
CONDCONV_API condconv_status condconv_layer_desc_set_experts(condconv_layer_desc_t desc, int num_experts, int has_bias);
/* temperature: softmax divides logits by it (> 0, finite); ignored otherwise. */
CONDCONV_API condconv_status condconv_layer_desc_set_routing(condconv_layer_desc_t desc, condconv_routing mode,
                                                             float temperature);
CONDCONV_API condconv_status condconv_layer_desc_set_activation(condconv_layer_desc_t desc,
                                                                condconv_activation activation);
CONDCONV_API condconv_status condconv_layer_desc_set_format(condconv_layer_desc_t desc, condconv_dtype dtype,
                                                            condconv_layout layout);

/* Everything a descriptor holds, for reading back. */
typedef struct condconv_layer_info {
    int in_channels, out_channels;
    int kernel_h, kernel_w;
    int stride_h, stride_w;
    int dilation_h, dilation_w;
    int groups;
    condconv_padding_mode padding_mode;
    int pad_h, pad_w;
    int num_experts;
    int has_bias;
    condconv_routing routing;
    float temperature;
    condconv_activation activation;
    condconv_dtype dtype;
    condconv_layout layout;
} condconv_layer_info;

CONDCONV_API condconv_status condconv_layer_desc_get_info(condconv_layer_desc_t desc, condconv_layer_info *info);

/* Output size for an H x W input, and the padding actually applied
 * (top, bottom, left, right; asymmetric only with SAME padding). Any pointer
 * but desc may be NULL. */
CONDCONV_API condconv_status condconv_layer_desc_get_output_dims(condconv_layer_desc_t desc, int h, int w, int *out_h,
                                                                 int *out_w, int pads[4]);

/* ------------------------------------------------------------------------ */
/* Cost model                                                               */
/* ------------------------------------------------------------------------ */

typedef struct condconv_cost {
    int out_h, out_w;
    /* Multiply-adds per forward of N samples. */
    uint64_t conv_macs;        /* N * |W| * Ho * Wo, the same as a static convolution */
    uint64_t aggregation_macs; /* N * E * (|W| + Cout if biased): mixing the experts */
    uint64_t routing_macs;     /* N * Cin * E (FC); 0 with external routing */
    uint64_t routing_adds;     /* N * Cin * H * W (global average pool); 0 with external routing */
    uint64_t epilogue_ops;     /* N * Cout * Ho * Wo bias adds + activations (0 when neither) */
    /* Parameters of the layer: E*|W| + E*Cout + E*Cin + E (routing only if owned). */
    uint64_t params;
    uint64_t expert_params; /* E * |W| */
    uint64_t bias_params;   /* E * Cout, or 0 */
    uint64_t routing_params;
    /* Bytes through device memory, element size of the layer's dtype. */
    uint64_t min_bytes;          /* x + y + experts + biases + routing params + alpha */
    uint64_t materialized_bytes; /* min_bytes + 2 * N * (|W| + Cout): per-sample kernels written and read */
} condconv_cost;

/* Cost of one forward of the layer for an N x Cin x H x W input. */
CONDCONV_API condconv_status condconv_cost_model(condconv_layer_desc_t desc, int n, int h, int w, condconv_cost *cost);

/* ------------------------------------------------------------------------ */
/* Layer: descriptor + parameters                                           */
/* ------------------------------------------------------------------------ */

/* Host pointers to the parameters, in the layer's dtype and the layout of the
 * file comment. expert_bias is required iff the layer has biases.
 * routing_weight is required unless routing is external; routing_bias may be
 * NULL (zeros). The layer copies what it needs; the caller may free these
 * after condconv_layer_create returns. */
typedef struct condconv_params {
    const void *experts;
    const void *expert_bias;
    const void *routing_weight;
    const void *routing_bias;
} condconv_params;

typedef struct condconv_layer *condconv_layer_t;

/* Creates a layer on a context: keeps a host copy of the parameters (for the
 * CPU path) and, on a GPU context, a device copy. Synchronous. */
CONDCONV_API condconv_status condconv_layer_create(condconv_context_t context, condconv_layer_desc_t desc,
                                                   const condconv_params *params, condconv_layer_t *layer);
/* Creates a layer on `context` that shares `source`'s parameters (host and
 * device) but has its own plans: one set of weights for several worker
 * threads, each with its own context and stream. Both contexts must be on
 * the same device (or both CPU). Parameters are freed with the last layer;
 * the source may be destroyed first. */
CONDCONV_API condconv_status condconv_layer_create_shared(condconv_context_t context, condconv_layer_t source,
                                                          condconv_layer_t *layer);
/* Frees the layer's plans (and the parameters if it is their last layer).
 * Its context then counts one layer less. NULL is a no-op. */
CONDCONV_API condconv_status condconv_layer_destroy(condconv_layer_t layer);
/* Copies the layer's descriptor into desc (created by the caller). */
CONDCONV_API condconv_status condconv_layer_get_desc(condconv_layer_t layer, condconv_layer_desc_t desc);

/* ------------------------------------------------------------------------ */
/* Trained weights from safetensors (the format timm and Hugging Face write)  */
/* ------------------------------------------------------------------------ */

/* Creates a layer from the tensors of a .safetensors file, named as timm
 * names them:
 *   <prefix>.weight          experts, [E, Cout*Cin/groups*kh*kw] (timm's
 *                            CondConv2d) or [E, Cout, Cin/groups, kh, kw]
 *   <prefix>.bias            expert biases [E, Cout], iff the descriptor has bias
 *   <routing_prefix>.weight  routing FC [E, Cin]    (not with external routing;
 *   <routing_prefix>.bias    routing FC bias [E]     routing_prefix may then be NULL;
 *                                                   an absent bias means zeros, as
 *                                                   nn.Linear(bias=False))
 * F32, F16 and BF16 tensors are converted to the layer's dtype. Shapes are
 * checked against the descriptor (TENSOR_MISMATCH), absent names give
 * TENSOR_NOT_FOUND, malformed or hostile files BAD_FILE, unreadable ones
 * IO_ERROR; nothing is created then. */
CONDCONV_API condconv_status condconv_layer_create_from_safetensors(condconv_context_t context,
                                                                    condconv_layer_desc_t desc, const char *path,
                                                                    const char *prefix, const char *routing_prefix,
                                                                    condconv_layer_t *layer);
/* The same from a safetensors image already in memory (size bytes). */
CONDCONV_API condconv_status condconv_layer_create_from_safetensors_memory(condconv_context_t context,
                                                                           condconv_layer_desc_t desc, const void *data,
                                                                           size_t size, const char *prefix,
                                                                           const char *routing_prefix,
                                                                           condconv_layer_t *layer);

/* ------------------------------------------------------------------------ */
/* GPU path: plan (prepare), workspace, forward                              */
/* ------------------------------------------------------------------------ */

/* Force an algorithm for plans prepared after the call, or AUTO (default).
 * Clears a candidate forced by condconv_layer_set_candidate. */
CONDCONV_API condconv_status condconv_layer_set_algo(condconv_layer_t layer, condconv_algo algo);

/* Force one of AUTO's candidates for plans prepared after the call, by the
 * name condconv_plan_info.candidates lists it under: "fused" (an algorithm's
 * default variant, as condconv_layer_set_algo) or "fused[nhwc coalesced]"
 * (a kernel variant no GPU has ruled on yet). NULL: back to AUTO. A name
 * that is no algorithm is BAD_VALUE here; a variant that the shape does not
 * have is NOT_SUPPORTED at prepare, naming the variants it has. For
 * benchmarks (a row per candidate) and for pinning a winner found once. */
CONDCONV_API condconv_status condconv_layer_set_candidate(condconv_layer_t layer, const char *candidate);

/* Force the routing and aggregation kernels' variants (kernels/routing.h,
 * kernels/aggregate.h; plan info's routing_variant and aggregate_variant)
 * for plans prepared after the call: 0 is the GPU-measured default, -1 lets
 * AUTO time them (the default). BAD_VALUE outside [-1, count). */
CONDCONV_API condconv_status condconv_layer_set_kernel_variants(condconv_layer_t layer, int routing_variant,
                                                                int aggregate_variant);

/* Prepares the layer for N x Cin x H x W inputs on the context's stream:
 * checks the shape, creates descriptors, chooses the algorithm (measuring
 * when the context says so) and caches the plan in the layer. May allocate,
 * synchronise and launch; never call it inside a CUDA graph capture.
 * Preparing an already prepared shape is cheap and returns SUCCESS. */
CONDCONV_API condconv_status condconv_prepare(condconv_layer_t layer, int n, int h, int w);

/* Workspace bytes condconv_forward needs at this shape (prepares if needed). */
CONDCONV_API condconv_status condconv_get_workspace_size(condconv_layer_t layer, int n, int h, int w, size_t *bytes);

/* Why a plan runs what it runs. */
typedef struct condconv_plan_info {
    condconv_algo algo;          /* the algorithm this shape runs */
    condconv_algo requested;     /* what the layer asked for (AUTO unless forced) */
    condconv_algo_select select; /* how AUTO chose */
    condconv_math math;
    size_t workspace_bytes;
    /* Measured forward time in microseconds per algorithm (index condconv_algo),
     * < 0 where not applicable or not measured. */
    float measured_us[CONDCONV_ALGO_COUNT];
    /* 1 where the algorithm applies to this layer and shape. */
    int applicable[CONDCONV_ALGO_COUNT];
    char reason[160]; /* one line, e.g. "measured: gemm_batched 12.3 us < cudnn_grouped 40.1 us" */
    /* What the chosen algorithm runs inside, e.g. "cuDNN f16
     * implicit_precomp_gemm, tensor ops, f32 accumulation", "cuBLAS
     * strided-batched GEMM, f32 NCHW, f32 compute", "condconv kernel, bf16
     * NHWC, f32 fma". */
    char backend[256];
    /* What runs when x or y is less than 16-byte aligned (element-aligned
     * views and slices): cuBLAS and cuDNN then read a copy of x and write
     * y through the workspace, and condconv's kernels take their scalar
     * paths, so AUTO measures that class apart (measured_unaligned_us,
     * like measured_us) and may choose another algorithm for it. Equal to
     * algo when forced or chosen by rule. The workspace size covers both. */
    condconv_algo algo_unaligned;
    float measured_unaligned_us[CONDCONV_ALGO_COUNT];
    /* AUTO's candidates (select MEASURE): every algorithm and each of its
     * kernel variants is a candidate, named "algo" or "algo[variant]". The
     * winner and the runner-up of the aligned class with their median
     * times (names empty and times < 0 where nothing was measured, e.g.
     * forced or heuristic plans). */
    char winner[64];
    float winner_us;
    char runner_up[64];
    float runner_up_us;
    /* Every candidate timed, "*" before the winners, then the per-kernel
     * choices (routing, aggregation) and the budget, e.g. "fused 21.0 us,
     * *fused[nhwc coalesced] 14.2 us, ...; routing: *v1 3.1 us, v0 13.5 us;
     * aggregate: *8 samples/thread 11.6 us, ...; budget 1000 ms, 212 ms
     * used". */
    char candidates[512];
    /* The routing and aggregation kernel variants the plan runs (0: the
     * GPU-measured default; the heuristic always keeps 0). */
    int routing_variant;
    int aggregate_variant;
    /* 1 when the budget (condconv_context_set_auto_budget) ran out before
     * every candidate was timed: those not timed are missing from
     * `candidates`. */
    int budget_exhausted;
} condconv_plan_info;

/* Describes the plan for this shape (prepares if needed). */
CONDCONV_API condconv_status condconv_get_plan_info(condconv_layer_t layer, int n, int h, int w,
                                                    condconv_plan_info *info);

/* Runs the layer on device memory: x [N][Cin][H][W] -> y [N][Cout][Ho][Wo]
 * (NHWC layers: [N][H][W][Cin] -> [N][Ho][Wo][Cout]), x and y in the layer's
 * dtype and aligned to its element size; any such pointer (a view or slice)
 * runs every algorithm: where cuBLAS or cuDNN would touch an x or y less
 * than 16-byte aligned, x is copied into the workspace and y written
 * through it (condconv_plan_info.algo_unaligned says what runs then).
 * routing_in: alpha [N][E] on the device, required with external routing and
 *   ignored otherwise.
 * routing_out: optional (NULL) device buffer [N][E] that receives the routing
 *   weights used (a copy of routing_in with external routing).
 * workspace: device memory of at least condconv_get_workspace_size bytes,
 *   CONDCONV_WORKSPACE_ALIGNMENT-aligned (may be NULL when that size is 0).
 * Asynchronous on the context's stream; no allocation, no host
 * synchronisation once the shape is prepared, so it can be captured into a
 * CUDA graph. An unprepared shape is prepared implicitly, unless the stream
 * is capturing: then CONDCONV_STATUS_NOT_PREPARED. x, y, routing_in and
 * routing_out must not overlap (routing_out may equal routing_in), or the
 * call is refused (CONDCONV_STATUS_BAD_VALUE). */
CONDCONV_API condconv_status condconv_forward(condconv_layer_t layer, int n, int h, int w, const void *x, void *y,
                                              const void *routing_in, void *routing_out, void *workspace,
                                              size_t workspace_bytes);

/* Routing only: alpha [N][E] = act(FC(GAP(x))) into routing_out (device).
 * One kernel, no workspace; not available with external routing. */
CONDCONV_API condconv_status condconv_route(condconv_layer_t layer, int n, int h, int w, const void *x,
                                            void *routing_out);

/* ------------------------------------------------------------------------ */
/* CPU reference path (host memory; any context)                             */
/* ------------------------------------------------------------------------ */

/* The same computation as condconv_forward, on host memory, in plain C with
 * double accumulation: routing, per-sample kernel and bias aggregation,
 * direct convolution, bias, activation. Written for obviousness, not speed:
 * the reference the GPU is validated against and the fallback without a GPU.
 * Allocates its own scratch memory. The same buffers as condconv_forward's
 * may not overlap either (CONDCONV_STATUS_BAD_VALUE). */
CONDCONV_API condconv_status condconv_forward_cpu(condconv_layer_t layer, int n, int h, int w, const void *x, void *y,
                                                  const void *routing_in, void *routing_out);
CONDCONV_API condconv_status condconv_route_cpu(condconv_layer_t layer, int n, int h, int w, const void *x,
                                                void *routing_out);

/* The backward of condconv_forward_cpu (training), on host memory, in plain
 * C with double accumulation: given the forward's input x, its routing
 * weights routing_in (alpha [N][E] f32, required with external routing and
 * ignored otherwise, as condconv_forward_cpu) and the gradient dy of a loss
 * with respect to its output y, the gradients of that loss with respect to
 *   dx                [N][Cin][H][W] (NHWC layers: [N][H][W][Cin]), the
 *                     layer's dtype; routing inside the layer included
 *                     (the global average pool passes its share to x)
 *   d_routing_in      alpha [N][E]; external routing only
 *   d_experts         [E][Cout][Cin/groups][kh][kw]
 *   d_expert_bias     [E][Cout]; layers with bias only
 *   d_routing_weight  routing FC [E][Cin]; layers that route themselves only
 *   d_routing_bias    routing FC [E]; layers that route themselves only
 * x and dy are in the layer's dtype and layout, as condconv_forward_cpu's x
 * and y. Only the gradients whose pointer is not NULL are computed (at
 * least one; the values do not depend on which others are asked for). The
 * parameter and routing gradients are f32, written (not accumulated),
 * each rounded once from double; dx is rounded double -> f32 -> dtype (for
 * half types that can move an exact tie by one ulp). ReLU's derivative at 0
 * is 0. A gradient the layer cannot have (d_routing_in with self-routing,
 * d_routing_weight or d_routing_bias with external routing, d_expert_bias
 * without bias), every output NULL, or an output overlapping any other
 * buffer is CONDCONV_STATUS_BAD_VALUE. Allocates its own scratch memory;
 * on any failure nothing is written. condconv_backward is the same on the GPU. */
CONDCONV_API condconv_status condconv_backward_cpu(condconv_layer_t layer, int n, int h, int w, const void *x,
                                                   const void *routing_in, const void *dy, void *dx,
                                                   float *d_routing_in, float *d_experts, float *d_expert_bias,
                                                   float *d_routing_weight, float *d_routing_bias);

/* ------------------------------------------------------------------------ */
/* GPU path: backward (training)                                             */
/* ------------------------------------------------------------------------ */

/* How condconv_backward computes the gradients on the GPU. */
typedef enum condconv_bwd_algo {
    CONDCONV_BWD_ALGO_AUTO = 0, /* choose per shape */
    /* The design card's baseline: aggregate the per-sample filters W_b, then
     * cuDNN's backward data (dx) and backward filter (per-sample filter
     * gradients G_b in the workspace) with the batch as groups, then
     * condconv's reductions: dW_e = sum_b alpha_be G_b, dalpha_be =
     * <W_e, G_b> + <bias_e, sum_pixels dy_b>, dbias, and the routing's
     * backward, each summed in a fixed order. */
    CONDCONV_BWD_ALGO_CUDNN_GROUPED = 1,
    /* The experts as one static convolution with E*Cout filters (the
     * forward's mixture): dy scaled by alpha per expert (dy_mix, E times
     * dy), then cuDNN's static backward data (dx) and backward filter (the
     * stacked filters' gradient is dW_e, summed over N*pixels inside
     * cuDNN), and dalpha_be = <W_e * x_b, dy_b> from the stacked forward.
     * Neither per-sample filters nor per-sample filter gradients reach
     * memory; it costs E times the static convolution's MACs in cuDNN's
     * dense kernels, and E times dy in the workspace. */
    CONDCONV_BWD_ALGO_MIXTURE = 2,
    /* dx as cudnn_grouped computes it (per-sample filters, cuDNN backward
     * data with the batch as groups); dW_e and dalpha from condconv's own
     * folded weight-gradient kernel: one implicit GEMM over N*pixels whose
     * per-sample gradient tiles G_b stay on chip, folded into E
     * accumulators (dW_e += alpha_be G_b) and dotted with W_e (dalpha) as
     * they are made. No per-sample filter gradient reaches memory. A
     * candidate no GPU has timed yet: AUTO measures it under
     * CONDCONV_SELECT_MEASURE; the heuristic does not take it. */
    CONDCONV_BWD_ALGO_FOLDED_WGRAD = 3,
    CONDCONV_BWD_ALGO_COUNT = 4
} condconv_bwd_algo;

/* Name of a backward algorithm ("cudnn_grouped", "mixture", "folded_wgrad"); NULL for an invalid value. */
CONDCONV_API const char *condconv_bwd_algo_name(condconv_bwd_algo algo);

/* Force a backward algorithm for backward plans prepared after the call, or
 * AUTO (the default). */
CONDCONV_API condconv_status condconv_layer_set_backward_algo(condconv_layer_t layer, condconv_bwd_algo algo);

/* 1 (the default): the backward's gradients are bitwise identical from run
 * to run: cuDNN's backward algorithms are taken only when cuDNN reports
 * them deterministic. 0: cuDNN's first choice whatever its determinism
 * (its non-deterministic algorithms sum with floating-point atomics, in
 * whatever order the threads arrive), for plans prepared after the call;
 * plan info's `deterministic` says what a plan got. condconv's own
 * backward kernels are deterministic either way. */
CONDCONV_API condconv_status condconv_layer_set_backward_deterministic(condconv_layer_t layer, int deterministic);

/* Prepares the backward for N x Cin x H x W inputs, as condconv_prepare
 * does the forward: checks the shape, creates descriptors, chooses
 * algorithms, caches the plan in the layer. May allocate, synchronise and
 * launch; never inside a CUDA graph capture. AUTO: under
 * CONDCONV_SELECT_MEASURE every algorithm that applies runs on scratch
 * buffers, computing every gradient the layer has, and the fastest median
 * is kept (plan info's reason lists the times); under
 * CONDCONV_SELECT_HEURISTIC, cudnn_grouped, the design card's baseline
 * (no GPU has measured the algorithms yet), or mixture where it does
 * not apply. A layer with a fused activation runs mixture, which
 * recomputes the pre-activation from its stacked forward (cudnn_grouped
 * and folded_wgrad, forced, are NOT_SUPPORTED for it). */
CONDCONV_API condconv_status condconv_backward_prepare(condconv_layer_t layer, int n, int h, int w);

/* Workspace bytes condconv_backward needs at this shape (prepares if needed),
 * whichever gradients a call asks for. */
CONDCONV_API condconv_status condconv_get_backward_workspace_size(condconv_layer_t layer, int n, int h, int w,
                                                                  size_t *bytes);

typedef struct condconv_backward_plan_info {
    condconv_bwd_algo algo;      /* what this shape runs */
    condconv_bwd_algo requested; /* what the layer asked for */
    condconv_algo_select select; /* the context's selection mode when the plan was made */
    condconv_math math;
    size_t workspace_bytes;
    /* 1: the gradients are bitwise identical from run to run (no
     * floating-point atomics; cuDNN algorithms reported deterministic). */
    int deterministic;
    char reason[160];  /* why this algorithm */
    char backend[256]; /* what runs inside, e.g. "cuDNN f16 bwd data algo_1, tensor ops; bwd filter algo_1, ..." */
} condconv_backward_plan_info;

/* Describes the backward plan for this shape (prepares if needed). */
CONDCONV_API condconv_status condconv_get_backward_plan_info(condconv_layer_t layer, int n, int h, int w,
                                                             condconv_backward_plan_info *info);

/* The backward of condconv_forward on device memory: the same buffers and
 * gradients as condconv_backward_cpu (x, dy and dx in the layer's dtype and
 * layout, every other gradient f32; routing_in required with external
 * routing, ignored otherwise: a layer that routes itself recomputes alpha
 * from x), computed in f32 with f32 accumulation. Only the gradients whose
 * pointer is not NULL are computed (at least one); they are written, not
 * accumulated. Deterministic: every sum runs in a fixed order, so a call
 * repeated on the same inputs gives bitwise identical gradients.
 * workspace: at least condconv_get_backward_workspace_size bytes,
 * CONDCONV_WORKSPACE_ALIGNMENT-aligned. Asynchronous on the context's
 * stream; no allocation and no host synchronisation once the shape is
 * prepared (CUDA-graph capturable; an unprepared shape inside a capture is
 * NOT_PREPARED). Buffers that overlap (an output with any other buffer)
 * are BAD_VALUE, a gradient the layer cannot have is BAD_VALUE as in
 * condconv_backward_cpu; nothing is launched then. */
CONDCONV_API condconv_status condconv_backward(condconv_layer_t layer, int n, int h, int w, const void *x,
                                               const void *routing_in, const void *dy, void *dx, float *d_routing_in,
                                               float *d_experts, float *d_expert_bias, float *d_routing_weight,
                                               float *d_routing_bias, void *workspace, size_t workspace_bytes);

/* condconv_backward for the gradients with respect to the layer's inputs
 * only (dx and, with external routing, d_routing_in) ... */
CONDCONV_API condconv_status condconv_backward_data(condconv_layer_t layer, int n, int h, int w, const void *x,
                                                    const void *routing_in, const void *dy, void *dx,
                                                    float *d_routing_in, void *workspace, size_t workspace_bytes);
/* ... and with respect to its parameters only (experts, expert biases,
 * routing FC). The two calls may run one after the other on the same
 * workspace; condconv_backward computes both at once, sharing the work
 * they have in common (the per-sample filter gradients). */
CONDCONV_API condconv_status condconv_backward_params(condconv_layer_t layer, int n, int h, int w, const void *x,
                                                      const void *routing_in, const void *dy, float *d_experts,
                                                      float *d_expert_bias, float *d_routing_weight,
                                                      float *d_routing_bias, void *workspace, size_t workspace_bytes);

#ifdef __cplusplus
}
#endif

#endif /* CONDCONV_H */
