/* libFuzzer target for the safetensors loader: any byte string through
 * condconv_layer_create_from_safetensors_memory (three descriptors that the
 * seed corpus's valid files fit, so mutations reach conversion and layer
 * creation) and through the parser on its own, whose every tensor is then
 * converted and bounds-checked against the input. A crash, a leak, an
 * out-of-bounds read (AddressSanitizer) or undefined behaviour (UBSan, not
 * recoverable) fails the run. Built and run by run_fuzz.sh; see README.md. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "condconv.h"
#include "safetensors.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { DESC_COUNT = 3 };
static condconv_context_t ctx;
static condconv_layer_desc_t descs[DESC_COUNT];

/* Aborts the run: the harness itself is broken, or an invariant failed. */
static void require(int ok)
{
    if (!ok) abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    require(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU) == CONDCONV_STATUS_SUCCESS);
    for (int i = 0; i < DESC_COUNT; ++i) require(condconv_layer_desc_create(&descs[i]) == CONDCONV_STATUS_SUCCESS);
    /* 0: the hostile test's layer: Cin 2, Cout 3, kernel 1x2, E 2, biases, sigmoid routing. */
    require(condconv_layer_desc_set_conv(descs[0], 2, 3, 1, 2, 1, 1, 1, 1, 1) == CONDCONV_STATUS_SUCCESS);
    require(condconv_layer_desc_set_experts(descs[0], 2, 1) == CONDCONV_STATUS_SUCCESS);
    /* 1: the same without biases, with external routing (no routing FC read). */
    require(condconv_layer_desc_set_conv(descs[1], 2, 3, 1, 2, 1, 1, 1, 1, 1) == CONDCONV_STATUS_SUCCESS);
    require(condconv_layer_desc_set_experts(descs[1], 2, 0) == CONDCONV_STATUS_SUCCESS);
    require(condconv_layer_desc_set_routing(descs[1], CONDCONV_ROUTING_EXTERNAL, 1.0f) == CONDCONV_STATUS_SUCCESS);
    /* 2: depthwise 3x3 on 4 channels, E 3, biases, softmax routing, "same" padding. */
    require(condconv_layer_desc_set_conv(descs[2], 4, 4, 3, 3, 2, 2, 1, 1, 4) == CONDCONV_STATUS_SUCCESS);
    require(condconv_layer_desc_set_padding(descs[2], CONDCONV_PADDING_SAME, 0, 0) == CONDCONV_STATUS_SUCCESS);
    require(condconv_layer_desc_set_experts(descs[2], 3, 1) == CONDCONV_STATUS_SUCCESS);
    require(condconv_layer_desc_set_routing(descs[2], CONDCONV_ROUTING_SOFTMAX, 0.5f) == CONDCONV_STATUS_SUCCESS);
    return 0;
}

/* The parser alone: every tensor it accepts must lie inside the input. */
static void parse_alone(const uint8_t *data, size_t size)
{
    cc_st_file f;
    if (cc_st_parse(data, size, "fuzz input", &f, "fuzz") != CONDCONV_STATUS_SUCCESS) return;
    for (size_t i = 0; i < f.count; ++i) {
        const cc_st_tensor *t = &f.tensors[i];
        const uint64_t bytes = t->end - t->begin;
        require(t->data >= data && bytes <= size && (size_t)(t->data - data) <= size - (size_t)bytes);
        require(t->elems * cc_st_dtype_size(t->dtype) == bytes);
        require(cc_st_find(&f, t->name) == t);
        if (!cc_st_converts_to_f32(t->dtype)) continue;
        float *out = malloc((size_t)(t->elems ? t->elems : 1) * sizeof(float));
        require(out != NULL);
        require(cc_st_to_f32(t, out, "fuzz") == CONDCONV_STATUS_SUCCESS);
        free(out);
    }
    (void)cc_st_meta_get(&f, "format");
    cc_st_release(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse_alone(data, size);
    static const char *const routing_prefix[DESC_COUNT] = {"routing_fn", NULL, "routing_fn"};
    for (int d = 0; d < DESC_COUNT; ++d) {
        condconv_layer_t layer = NULL;
        const condconv_status s =
            condconv_layer_create_from_safetensors_memory(ctx, descs[d], data, size, "conv", routing_prefix[d], &layer);
        require(strlen(condconv_last_error()) < 512);
        if (s != CONDCONV_STATUS_SUCCESS) {
            require(layer == NULL && condconv_last_error()[0] != '\0');
            continue;
        }
        /* A loaded layer must run: 1 x Cin x 3 x 4 input; outputs are at most 3 x 4 here. */
        float x[4 * 3 * 4], y[4 * 3 * 4], alpha_in[3] = {0.25f, 0.5f, 0.25f}, alpha[3];
        for (size_t i = 0; i < sizeof x / sizeof x[0]; ++i) x[i] = (float)i / 8.0f - 1.0f;
        require(condconv_forward_cpu(layer, 1, 3, 4, x, y, alpha_in, alpha) == CONDCONV_STATUS_SUCCESS);
        require(condconv_layer_destroy(layer) == CONDCONV_STATUS_SUCCESS);
    }
    return 0;
}
