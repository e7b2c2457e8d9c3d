/* Built-in layer sets at their real channel counts and spatial sizes
 * (224x224 network input), shape names, and --layer parsing. */
#include <errno.h>
#include <math.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

typedef struct layer_def {
    const char *role;
    int cin, cout, k, stride, groups, h;
    condconv_activation act;
} layer_def;

#define SILU CONDCONV_ACTIVATION_SILU
#define RELU CONDCONV_ACTIVATION_RELU
#define NONE CONDCONV_ACTIVATION_NONE

/* EfficientNet-CondConv-B0 (timm efficientnet_cc_b0_*e; TF condconv): the
 * CondConv layers of the last three stages, blocks.4.* to blocks.6.*, each
 * unique shape once. Expand and depthwise are followed by BN + SiLU, project
 * by BN only (BN folds into the bias at inference). */
static const layer_def effnet_cc_b0[] = {
    {"stage 5 block 1 expand", 80, 480, 1, 1, 1, 14, SILU},
    {"stage 5 block 1 depthwise", 480, 480, 5, 1, 480, 14, SILU},
    {"stage 5 block 1 project", 480, 112, 1, 1, 1, 14, NONE},
    {"stage 5 blocks 2-3 + stage 6 block 1 expand", 112, 672, 1, 1, 1, 14, SILU},
    {"stage 5 blocks 2-3 depthwise", 672, 672, 5, 1, 672, 14, SILU},
    {"stage 5 blocks 2-3 project", 672, 112, 1, 1, 1, 14, NONE},
    {"stage 6 block 1 depthwise stride 2", 672, 672, 5, 2, 672, 14, SILU},
    {"stage 6 block 1 project", 672, 192, 1, 1, 1, 7, NONE},
    {"stage 6 blocks 2-4 + stage 7 expand", 192, 1152, 1, 1, 1, 7, SILU},
    {"stage 6 blocks 2-4 depthwise", 1152, 1152, 5, 1, 1152, 7, SILU},
    {"stage 6 blocks 2-4 project", 1152, 192, 1, 1, 1, 7, NONE},
    {"stage 7 depthwise", 1152, 1152, 3, 1, 1152, 7, SILU},
    {"stage 7 project", 1152, 320, 1, 1, 1, 7, NONE},
};

/* MobileNetV1 (1.0, 224): the pointwise layers, each followed by BN + ReLU. */
static const layer_def mobilenet_v1[] = {
    {"block 1 pointwise", 32, 64, 1, 1, 1, 112, RELU},      {"block 2 pointwise", 64, 128, 1, 1, 1, 56, RELU},
    {"block 3 pointwise", 128, 128, 1, 1, 1, 56, RELU},     {"block 4 pointwise", 128, 256, 1, 1, 1, 28, RELU},
    {"block 5 pointwise", 256, 256, 1, 1, 1, 28, RELU},     {"block 6 pointwise", 256, 512, 1, 1, 1, 14, RELU},
    {"blocks 7-11 pointwise", 512, 512, 1, 1, 1, 14, RELU}, {"block 12 pointwise", 512, 1024, 1, 1, 1, 7, RELU},
    {"block 13 pointwise", 1024, 1024, 1, 1, 1, 7, RELU},
};

/* ResNet-50 (torchvision v1.5: the stride sits on the 3x3): the 3x3
 * convolutions of the bottlenecks, each followed by BN + ReLU. */
static const layer_def resnet50[] = {
    {"layer1 3x3", 64, 64, 3, 1, 1, 56, RELU},   {"layer2 block 1 3x3 stride 2", 128, 128, 3, 2, 1, 56, RELU},
    {"layer2 3x3", 128, 128, 3, 1, 1, 28, RELU}, {"layer3 block 1 3x3 stride 2", 256, 256, 3, 2, 1, 28, RELU},
    {"layer3 3x3", 256, 256, 3, 1, 1, 14, RELU}, {"layer4 block 1 3x3 stride 2", 512, 512, 3, 2, 1, 14, RELU},
    {"layer4 3x3", 512, 512, 3, 1, 1, 7, RELU},
};

/* The six layers of issue 5 and bench/anchors/timm-vs-static-*.csv. */
static const layer_def issue5[] = {
    {"EfficientNet-CC-B0 expand", 112, 672, 1, 1, 1, 14, SILU},
    {"EfficientNet-CC-B0 depthwise 5x5", 672, 672, 5, 1, 672, 14, SILU},
    {"EfficientNet-CC-B0 project", 1152, 192, 1, 1, 1, 7, NONE},
    {"EfficientNet-CC-B0 depthwise 3x3", 1152, 1152, 3, 1, 1152, 7, SILU},
    {"ResNet-50 layer3 3x3", 256, 256, 3, 1, 1, 14, RELU},
    {"MobileNetV1 pointwise", 512, 512, 1, 1, 1, 14, RELU},
};

typedef struct set_def {
    const char *name;
    const layer_def *defs;
    int count;
    const char *what;
} set_def;

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const set_def sets[] = {
    {"effnet-cc-b0", effnet_cc_b0, COUNT(effnet_cc_b0),
     "EfficientNet-CondConv-B0's CondConv layers, stages 5-7 (expand, depthwise incl. stride 2, project)"},
    {"mobilenet-v1", mobilenet_v1, COUNT(mobilenet_v1), "MobileNetV1 pointwise layers"},
    {"resnet50", resnet50, COUNT(resnet50), "ResNet-50 3x3 layers (incl. the stride-2 ones)"},
    {"issue5", issue5, COUNT(issue5), "the six layers of bench/anchors (timm side by side)"},
};

int bench_layer_pad(const bench_layer *l) { return ((l->stride - 1) + (l->k - 1)) / 2; }

int bench_layer_out(const bench_layer *l, int size) { return (size + 2 * bench_layer_pad(l) - l->k) / l->stride + 1; }

void bench_layer_set_name(bench_layer *l)
{
    char kind[20], chans[20], spatial[20];
    if (l->groups > 1 && l->groups == l->cin && l->groups == l->cout)
        snprintf(kind, sizeof kind, "dw%d", l->k);
    else if (l->groups == 1 && l->k == 1)
        snprintf(kind, sizeof kind, "pw");
    else if (l->groups == 1)
        snprintf(kind, sizeof kind, "c%d", l->k);
    else
        snprintf(kind, sizeof kind, "g%dc%d", l->groups, l->k);
    if (l->stride > 1) {
        const size_t len = strlen(kind);
        snprintf(kind + len, sizeof kind - len, "s%d", l->stride);
    }
    if (l->cin == l->cout)
        snprintf(chans, sizeof chans, "%d", l->cin);
    else
        snprintf(chans, sizeof chans, "%dx%d", l->cin, l->cout);
    if (l->h == l->w)
        snprintf(spatial, sizeof spatial, "%d", l->h);
    else
        snprintf(spatial, sizeof spatial, "%dx%d", l->h, l->w);
    /* As in bench/anchors: pw112x672_14, pw512_14, dw5_672_14, c3_256_14. */
    const size_t len = strlen(kind);
    const int digit = len > 0 && kind[len - 1] >= '0' && kind[len - 1] <= '9';
    snprintf(l->name, sizeof l->name, "%s%s%s_%s", kind, digit ? "_" : "", chans, spatial);
}

int bench_add_layer(bench_layer_list *list, const bench_layer *layer)
{
    for (int i = 0; i < list->count; ++i)
        if (strcmp(list->items[i].name, layer->name) == 0) return 0;
    if (list->count == list->capacity) {
        const int cap = list->capacity ? 2 * list->capacity : 16;
        bench_layer *grown = realloc(list->items, sizeof *grown * (size_t)cap);
        if (grown == NULL) return -1;
        list->items = grown;
        list->capacity = cap;
    }
    list->items[list->count++] = *layer;
    return 0;
}

static int add_def(bench_layer_list *list, const char *set, const layer_def *d)
{
    bench_layer l;
    memset(&l, 0, sizeof l);
    snprintf(l.set, sizeof l.set, "%s", set);
    snprintf(l.role, sizeof l.role, "%s", d->role);
    l.cin = d->cin;
    l.cout = d->cout;
    l.k = d->k;
    l.stride = d->stride;
    l.groups = d->groups;
    l.h = l.w = d->h;
    l.act = d->act;
    bench_layer_set_name(&l);
    return bench_add_layer(list, &l);
}

int bench_add_set(bench_layer_list *list, const char *set, char *err, size_t err_len)
{
    if (strcmp(set, "all") == 0) {
        for (int s = 0; s < 3; ++s)
            if (bench_add_set(list, sets[s].name, err, err_len) != 0) return -1;
        return 0;
    }
    for (int s = 0; s < COUNT(sets); ++s) {
        if (strcmp(set, sets[s].name) != 0) continue;
        for (int i = 0; i < sets[s].count; ++i)
            if (add_def(list, sets[s].name, &sets[s].defs[i]) != 0) {
                snprintf(err, err_len, "out of host memory");
                return -1;
            }
        return 0;
    }
    snprintf(err, err_len, "unknown layer set '%s' (condconv-bench --list shows them)", set);
    return -1;
}

void bench_list_sets(FILE *out)
{
    for (int s = 0; s < COUNT(sets); ++s) {
        fprintf(out, "%s: %s\n", sets[s].name, sets[s].what);
        bench_layer_list list = {0};
        char err[BENCH_ERR_LEN];
        if (bench_add_set(&list, sets[s].name, err, sizeof err) == 0)
            for (int i = 0; i < list.count; ++i) {
                const bench_layer *l = &list.items[i];
                fprintf(out, "  %-16s %4d -> %-4d k%d s%d g%-4d %3dx%-3d  %s\n", l->name, l->cin, l->cout, l->k,
                        l->stride, l->groups, l->h, l->w, l->role);
            }
        bench_layer_list_free(&list);
    }
    fprintf(out, "all: effnet-cc-b0 + mobilenet-v1 + resnet50\n");
}

int bench_parse_layer(const char *spec, bench_layer *layer, char *err, size_t err_len)
{
    long v[7];
    int n = 0;
    const char *p = spec;
    while (n < 7) {
        char *end;
        errno = 0;
        const long x = strtol(p, &end, 10);
        if (end == p || errno != 0 || x <= 0 || x > INT_MAX / 4) break;
        v[n++] = x;
        if (*end == '\0') {
            p = end;
            break;
        }
        if (*end != ',') break;
        p = end + 1;
    }
    if (*p != '\0' || n < 6) {
        snprintf(err, err_len,
                 "--layer '%s': expected cin,cout,k,stride,groups,H[,W] (positive integers), e.g. 112,672,1,1,1,14",
                 spec);
        return -1;
    }
    bench_layer l;
    memset(&l, 0, sizeof l);
    l.cin = (int)v[0];
    l.cout = (int)v[1];
    l.k = (int)v[2];
    l.stride = (int)v[3];
    l.groups = (int)v[4];
    l.h = (int)v[5];
    l.w = n == 7 ? (int)v[6] : l.h;
    if (l.cin % l.groups != 0 || l.cout % l.groups != 0) {
        snprintf(err, err_len, "--layer '%s': cin %d and cout %d must be multiples of groups %d", spec, l.cin, l.cout,
                 l.groups);
        return -1;
    }
    if (bench_layer_out(&l, l.h) <= 0 || bench_layer_out(&l, l.w) <= 0) {
        snprintf(err, err_len, "--layer '%s': a %dx%d kernel leaves no output on %dx%d", spec, l.k, l.k, l.h, l.w);
        return -1;
    }
    snprintf(l.set, sizeof l.set, "cli");
    snprintf(l.role, sizeof l.role, "command line");
    l.act = CONDCONV_ACTIVATION_NONE;
    bench_layer_set_name(&l);
    *layer = l;
    return 0;
}

void bench_layer_list_free(bench_layer_list *list)
{
    free(list->items);
    memset(list, 0, sizeof *list);
}

/* ------------------------------------------------------------- parameters */

void bench_fill_uniform(float *p, size_t n, float lo, float hi, uint32_t *state)
{
    uint32_t x = *state;
    for (size_t i = 0; i < n; ++i) {
        x = x * 1664525u + 1013904223u;
        p[i] = lo + (hi - lo) * ((float)(x >> 8) / 16777216.0f);
    }
    *state = x;
}

void bench_params_free(bench_params *p)
{
    free(p->experts);
    free(p->expert_bias);
    free(p->routing_weight);
    free(p->routing_bias);
    memset(p, 0, sizeof *p);
}

int bench_params_make(const bench_layer *l, int experts, int has_bias, int owns_routing, bench_params *p)
{
    memset(p, 0, sizeof *p);
    const size_t fan_in = (size_t)(l->cin / l->groups) * (size_t)l->k * (size_t)l->k;
    const size_t filter = (size_t)l->cout * fan_in;
    uint32_t state = 0x2545f491u ^ (uint32_t)(l->cin * 31 + l->cout * 7 + experts);
    /* Mixed with sigmoid weights (~0.5 each), E experts of this scale give O(1) outputs. */
    const float scale = 1.0f / ((float)sqrt((double)fan_in) * (float)experts);
    p->experts = malloc(sizeof(float) * filter * (size_t)experts);
    if (p->experts == NULL) goto fail;
    bench_fill_uniform(p->experts, filter * (size_t)experts, -2.0f * scale, 2.0f * scale, &state);
    if (has_bias) {
        p->expert_bias = malloc(sizeof(float) * (size_t)l->cout * (size_t)experts);
        if (p->expert_bias == NULL) goto fail;
        bench_fill_uniform(p->expert_bias, (size_t)l->cout * (size_t)experts, -0.1f, 0.1f, &state);
    }
    if (owns_routing) {
        p->routing_weight = malloc(sizeof(float) * (size_t)l->cin * (size_t)experts);
        p->routing_bias = malloc(sizeof(float) * (size_t)experts);
        if (p->routing_weight == NULL || p->routing_bias == NULL) goto fail;
        const float r = 1.0f / (float)sqrt((double)l->cin);
        bench_fill_uniform(p->routing_weight, (size_t)l->cin * (size_t)experts, -r, r, &state);
        bench_fill_uniform(p->routing_bias, (size_t)experts, -0.1f, 0.1f, &state);
    }
    return 0;
fail:
    bench_params_free(p);
    return -1;
}

condconv_params bench_params_view(const bench_params *p)
{
    condconv_params v = {p->experts, p->expert_bias, p->routing_weight, p->routing_bias};
    return v;
}

condconv_status bench_make_desc(const bench_layer *l, int experts, int has_bias, condconv_routing routing,
                                condconv_activation act, condconv_layer_desc_t *out)
{
    condconv_layer_desc_t d = NULL;
    const int pad = bench_layer_pad(l);
    condconv_status st = condconv_layer_desc_create(&d);
    if (st == CONDCONV_STATUS_SUCCESS)
        st = condconv_layer_desc_set_conv(d, l->cin, l->cout, l->k, l->k, l->stride, l->stride, 1, 1, l->groups);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_layer_desc_set_padding(d, CONDCONV_PADDING_EXPLICIT, pad, pad);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_layer_desc_set_experts(d, experts, has_bias);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_layer_desc_set_routing(d, routing, 1.0f);
    if (st == CONDCONV_STATUS_SUCCESS) st = condconv_layer_desc_set_activation(d, act);
    if (st != CONDCONV_STATUS_SUCCESS) {
        (void)condconv_layer_desc_destroy(d);
        return st;
    }
    *out = d;
    return CONDCONV_STATUS_SUCCESS;
}

void bench_params_to_dtype(bench_params *p, const bench_layer *l, int experts, int has_bias, condconv_dtype dtype)
{
    if (dtype == CONDCONV_DTYPE_F32) return;
    const size_t filter = (size_t)l->cout * (size_t)(l->cin / l->groups) * (size_t)l->k * (size_t)l->k;
    /* In place: narrowing conversions land on bytes already read. */
    (void)condconv_convert(CONDCONV_DTYPE_F32, p->experts, dtype, p->experts, filter * (size_t)experts);
    if (has_bias && p->expert_bias)
        (void)condconv_convert(CONDCONV_DTYPE_F32, p->expert_bias, dtype, p->expert_bias,
                               (size_t)l->cout * (size_t)experts);
    if (p->routing_weight)
        (void)condconv_convert(CONDCONV_DTYPE_F32, p->routing_weight, dtype, p->routing_weight,
                               (size_t)l->cin * (size_t)experts);
    if (p->routing_bias)
        (void)condconv_convert(CONDCONV_DTYPE_F32, p->routing_bias, dtype, p->routing_bias, (size_t)experts);
}
