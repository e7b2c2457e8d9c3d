/* condconv_layer_create_from_safetensors[_memory]: find a CondConv layer's
 * tensors by timm's names, check them against the descriptor, convert them
 * to the layer's element type and hand them to condconv_layer_create, which
 * owns everything about keeping parameters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "error.h"
#include "layer_desc.h"
#include "registry.h"
#include "safetensors.h"

#define NAME_CHARS 80

/* The tensors of one layer, once found and checked. */
typedef struct layer_tensors {
    const cc_st_tensor *experts, *expert_bias, *routing_weight, *routing_bias;
} layer_tensors;

/* "<prefix>.<suffix>", or just the suffix for an empty prefix (a file that
 * holds one layer). malloc'd; NULL when out of memory. */
static char *tensor_name(const char *prefix, const char *suffix)
{
    const size_t size = strlen(prefix) + strlen(suffix) + 2;
    char *name = malloc(size);
    if (name == NULL) return NULL;
    if (*prefix == '\0')
        snprintf(name, size, "%s", suffix);
    else
        snprintf(name, size, "%s.%s", prefix, suffix);
    return name;
}

static int shape_is(const cc_st_tensor *t, int rank, const uint64_t *dims)
{
    if (t->rank != rank) return 0;
    for (int i = 0; i < rank; ++i)
        if (t->shape[i] != dims[i]) return 0;
    return 1;
}

/* Looks up prefix.suffix: *found is NULL when absent (the caller decides
 * whether that is an error); ALLOC_FAILED only if the name cannot be built. */
static condconv_status find(const cc_st_file *file, const char *prefix, const char *suffix, const cc_st_tensor **found,
                            char *shown, size_t shown_size, const char *func)
{
    char *name = tensor_name(prefix, suffix);
    if (name == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory", func);
    *found = cc_st_find(file, name);
    cc_st_printable(name, shown, shown_size);
    free(name);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status not_found(const cc_st_file *file, const char *shown, const char *what, const char *func)
{
    return cc_fail(CONDCONV_STATUS_TENSOR_NOT_FOUND, "%s: the file has no tensor '%s' (%s); it holds %zu tensors", func,
                   shown, what, file->count);
}

/* Dtype and shape against what the layer needs; `want` is described in
 * words for the message, e.g. "[E=4, Cout=8]". */
static condconv_status check_tensor(const cc_st_tensor *t, const char *shown, int ok_shape, const char *want,
                                    const char *func)
{
    char shape[200]; /* 8 dimensions of up to 20 digits */
    cc_st_shape_string(t, shape, sizeof shape);
    if (!cc_st_converts_to_f32(t->dtype))
        return cc_fail(CONDCONV_STATUS_TENSOR_MISMATCH, "%s: tensor '%s' %s is %s; only F32, F16 and BF16 load", func,
                       shown, shape, cc_st_dtype_name(t->dtype));
    if (!ok_shape)
        return cc_fail(CONDCONV_STATUS_TENSOR_MISMATCH, "%s: tensor '%s' has shape %s; the descriptor needs %s", func,
                       shown, shape, want);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status find_experts(const cc_st_file *file, const condconv_layer_info *info, const cc_param_sizes *sz,
                                    const char *prefix, layer_tensors *lt, const char *func)
{
    char shown[NAME_CHARS], want[192];
    const cc_st_tensor *t;
    const uint64_t E = (uint64_t)info->num_experts;
    CC_TRY(find(file, prefix, "weight", &t, shown, sizeof shown, func));
    if (t == NULL) return not_found(file, shown, "the expert kernels", func);
    /* timm's CondConv2d keeps each expert flattened; a 5-D tensor is the
     * same bytes with the kernel's shape spelt out. */
    const uint64_t flat[2] = {E, sz->filter_elems};
    const uint64_t full[5] = {E, (uint64_t)info->out_channels, (uint64_t)(info->in_channels / info->groups),
                              (uint64_t)info->kernel_h, (uint64_t)info->kernel_w};
    snprintf(want, sizeof want, "[E=%d, Cout*Cin/groups*kh*kw=%llu] or [E=%d, Cout=%d, Cin/groups=%d, kh=%d, kw=%d]",
             info->num_experts, (unsigned long long)sz->filter_elems, info->num_experts, info->out_channels,
             info->in_channels / info->groups, info->kernel_h, info->kernel_w);
    CC_TRY(check_tensor(t, shown, shape_is(t, 2, flat) || shape_is(t, 5, full), want, func));
    lt->experts = t;

    CC_TRY(find(file, prefix, "bias", &t, shown, sizeof shown, func));
    if (!info->has_bias) {
        /* Dropping a trained bias would give wrong outputs without a word. */
        if (t != NULL)
            return cc_fail(CONDCONV_STATUS_TENSOR_MISMATCH,
                           "%s: the file has expert biases '%s' but the descriptor says the layer has none "
                           "(condconv_layer_desc_set_experts(desc, %d, 1))",
                           func, shown, info->num_experts);
        return CONDCONV_STATUS_SUCCESS;
    }
    if (t == NULL) return not_found(file, shown, "the expert biases; the descriptor says the layer has biases", func);
    const uint64_t bias[2] = {E, (uint64_t)info->out_channels};
    snprintf(want, sizeof want, "[E=%d, Cout=%d]", info->num_experts, info->out_channels);
    CC_TRY(check_tensor(t, shown, shape_is(t, 2, bias), want, func));
    lt->expert_bias = t;
    return CONDCONV_STATUS_SUCCESS;
}

/* The routing FC, unless routing is external. Its bias is optional, as
 * nn.Linear(bias=False) has none: absent means zeros. */
static condconv_status find_routing(const cc_st_file *file, const condconv_layer_info *info, const char *prefix,
                                    layer_tensors *lt, const char *func)
{
    if (info->routing == CONDCONV_ROUTING_EXTERNAL) return CONDCONV_STATUS_SUCCESS;
    char shown[NAME_CHARS], want[64];
    const cc_st_tensor *t;
    const uint64_t E = (uint64_t)info->num_experts;
    CC_TRY(find(file, prefix, "weight", &t, shown, sizeof shown, func));
    if (t == NULL) return not_found(file, shown, "the routing FC weight", func);
    const uint64_t weight[2] = {E, (uint64_t)info->in_channels};
    snprintf(want, sizeof want, "[E=%d, Cin=%d]", info->num_experts, info->in_channels);
    CC_TRY(check_tensor(t, shown, shape_is(t, 2, weight), want, func));
    lt->routing_weight = t;

    CC_TRY(find(file, prefix, "bias", &t, shown, sizeof shown, func));
    if (t == NULL) return CONDCONV_STATUS_SUCCESS;
    snprintf(want, sizeof want, "[E=%d]", info->num_experts);
    CC_TRY(check_tensor(t, shown, shape_is(t, 1, &E), want, func));
    lt->routing_bias = t;
    return CONDCONV_STATUS_SUCCESS;
}

/* A tensor (F32, F16 or BF16 in the file) in the layer's dtype, in a new
 * buffer (NULL in, NULL out): through f32, exactly, then rounded to nearest
 * even when the layer's dtype is narrower than the file's. */
static condconv_status to_dtype(const cc_st_tensor *t, condconv_dtype dtype, float **out, const char *func)
{
    *out = NULL;
    if (t == NULL) return CONDCONV_STATUS_SUCCESS;
    float *buf = malloc((size_t)(t->elems ? t->elems : 1) * sizeof(float));
    if (buf == NULL)
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory for %llu parameters", func,
                       (unsigned long long)t->elems);
    const condconv_status s = cc_st_to_f32(t, buf, func);
    if (s != CONDCONV_STATUS_SUCCESS) {
        free(buf);
        return s;
    }
    /* In place: each 2-byte store lands on bytes already read. */
    if (dtype != CONDCONV_DTYPE_F32) cc_dtype_store(dtype, buf, buf, (size_t)t->elems);
    *out = buf;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status create_from_file(condconv_context_t context, condconv_layer_desc_t desc, const cc_st_file *file,
                                        const char *prefix, const char *routing_prefix, condconv_layer_t *layer,
                                        const char *func)
{
    const condconv_layer_info *info = &desc->info;
    cc_param_sizes sizes;
    CC_TRY(cc_param_sizes_make(info, &sizes, func));
    layer_tensors lt = {0};
    CC_TRY(find_experts(file, info, &sizes, prefix, &lt, func));
    CC_TRY(find_routing(file, info, routing_prefix, &lt, func));

    float *experts = NULL, *expert_bias = NULL, *routing_weight = NULL, *routing_bias = NULL;
    condconv_status s = to_dtype(lt.experts, info->dtype, &experts, func);
    if (s == CONDCONV_STATUS_SUCCESS) s = to_dtype(lt.expert_bias, info->dtype, &expert_bias, func);
    if (s == CONDCONV_STATUS_SUCCESS) s = to_dtype(lt.routing_weight, info->dtype, &routing_weight, func);
    if (s == CONDCONV_STATUS_SUCCESS) s = to_dtype(lt.routing_bias, info->dtype, &routing_bias, func);
    if (s == CONDCONV_STATUS_SUCCESS) {
        const condconv_params params = {experts, expert_bias, routing_weight, routing_bias};
        s = condconv_layer_create(context, desc, &params, layer);
    }
    free(experts);
    free(expert_bias);
    free(routing_weight);
    free(routing_bias);
    return s;
}

/* Everything that can be said before the file is touched. */
static condconv_status check_args(condconv_context_t context, condconv_layer_desc_t desc, const char *prefix,
                                  const char *routing_prefix, const condconv_layer_t *layer, const char *func)
{
    CC_CHECK_CONTEXT(context, func);
    CC_CHECK_DESC(desc, func);
    CC_CHECK_NOT_NULL(prefix, func);
    CC_CHECK_NOT_NULL(layer, func);
    const condconv_layer_info *info = &desc->info;
    CC_TRY(cc_layer_info_validate(info, func));
    if (info->routing != CONDCONV_ROUTING_EXTERNAL && routing_prefix == NULL)
        return cc_fail(CONDCONV_STATUS_NULL_POINTER,
                       "%s: routing_prefix is NULL; it names the routing FC and is required unless routing is "
                       "external",
                       func);
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status condconv_layer_create_from_safetensors(condconv_context_t context, condconv_layer_desc_t desc,
                                                       const char *path, const char *prefix, const char *routing_prefix,
                                                       condconv_layer_t *layer)
{
    static const char func[] = "condconv_layer_create_from_safetensors";
    CC_CHECK_NOT_NULL(path, func);
    CC_TRY(check_args(context, desc, prefix, routing_prefix, layer, func));
    cc_st_file file;
    CC_TRY(cc_st_load(path, &file, func));
    const condconv_status s = create_from_file(context, desc, &file, prefix, routing_prefix, layer, func);
    cc_st_release(&file);
    return s;
}

condconv_status condconv_layer_create_from_safetensors_memory(condconv_context_t context, condconv_layer_desc_t desc,
                                                              const void *data, size_t size, const char *prefix,
                                                              const char *routing_prefix, condconv_layer_t *layer)
{
    static const char func[] = "condconv_layer_create_from_safetensors_memory";
    CC_CHECK_NOT_NULL(data, func);
    CC_TRY(check_args(context, desc, prefix, routing_prefix, layer, func));
    cc_st_file file;
    CC_TRY(cc_st_parse(data, size, "memory image", &file, func));
    const condconv_status s = create_from_file(context, desc, &file, prefix, routing_prefix, layer, func);
    cc_st_release(&file);
    return s;
}
