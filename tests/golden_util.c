/* Golden-vector helpers (see golden_util.h). */
#define _POSIX_C_SOURCE 200809L /* opendir */
#include "golden_util.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_golden_name(const char *name)
{
    static const char prefix[] = "golden_", suffix[] = ".safetensors";
    const size_t n = strlen(name), p = sizeof prefix - 1, s = sizeof suffix - 1;
    return n > p + s && strncmp(name, prefix, p) == 0 && strcmp(name + n - s, suffix) == 0;
}

int golden_list(const char *dir, char ***paths)
{
    *paths = NULL;
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "golden: cannot open the data directory %s: %s\n", dir, strerror(errno));
        return 0;
    }
    int count = 0, capacity = 0;
    char **list = NULL;
    /* readdir on a stream this function alone uses is thread-safe; readdir_r is deprecated (glibc 2.24). */
    /* cppcheck-suppress readdirCalled ; see the line above */
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (!is_golden_name(e->d_name)) continue;
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            char **grown = realloc(list, (size_t)capacity * sizeof *list);
            if (grown == NULL) break;
            list = grown;
        }
        const size_t len = strlen(dir) + strlen(e->d_name) + 2;
        list[count] = malloc(len);
        if (list[count] == NULL) break;
        snprintf(list[count], len, "%s/%s", dir, e->d_name);
        ++count;
    }
    closedir(d);
    if (count == 0) fprintf(stderr, "golden: no golden_*.safetensors files in %s\n", dir);
    if (count) qsort(list, (size_t)count, sizeof *list, by_name);
    *paths = list;
    return count;
}

void golden_free_list(char **paths, int count)
{
    for (int i = 0; i < count; ++i) free(paths[i]);
    free(paths);
}

/* A metadata integer, or INT_MIN (and a message) when absent or malformed. */
static int meta_int(const golden *g, const char *key)
{
    const char *v = cc_st_meta_get(&g->file, key);
    char *end = NULL;
    const long n = v ? strtol(v, &end, 10) : 0;
    if (v == NULL || end == v || *end != '\0' || n < 0 || n > INT_MAX) {
        fprintf(stderr, "golden %s: metadata \"%s\" is %s%s%s, not a non-negative integer\n", g->path, key,
                v ? "\"" : "missing", v ? v : "", v ? "\"" : "");
        return INT_MIN;
    }
    return (int)n;
}

static const char *meta_str(const golden *g, const char *key)
{
    const char *v = cc_st_meta_get(&g->file, key);
    if (v == NULL) fprintf(stderr, "golden %s: metadata \"%s\" is missing\n", g->path, key);
    return v;
}

/* The named tensor as f32 with exactly `want` elements, or NULL. */
static float *tensor_f32(const golden *g, const char *name, size_t want)
{
    const cc_st_tensor *t = cc_st_find(&g->file, name);
    if (t == NULL) {
        fprintf(stderr, "golden %s: no tensor '%s'\n", g->path, name);
        return NULL;
    }
    if (t->elems != want) {
        fprintf(stderr, "golden %s: '%s' has %llu elements, expected %zu\n", g->path, name,
                (unsigned long long)t->elems, want);
        return NULL;
    }
    float *out = malloc((want ? want : 1) * sizeof(float));
    if (out && cc_st_to_f32(t, out, "golden") != CONDCONV_STATUS_SUCCESS) {
        fprintf(stderr, "golden %s: %s\n", g->path, condconv_last_error());
        free(out);
        return NULL;
    }
    return out;
}

static float *abs_of(const float *src, size_t n)
{
    float *dst = malloc((n ? n : 1) * sizeof(float));
    if (dst)
        for (size_t i = 0; i < n; ++i) dst[i] = fabsf(src[i]);
    return dst;
}

/* mag = the layer on |x| with |W|, |b| and |alpha| as external routing. */
static int compute_magnitude(golden *g)
{
    const tu_layer_spec *s = &g->spec;
    const size_t w_n = (size_t)s->experts * (size_t)s->cout * (size_t)(s->cin / s->groups) * (size_t)s->kh *
                       (size_t)s->kw,
                 b_n = (size_t)s->experts * (size_t)s->cout;
    float *w = tensor_f32(g, "conv.weight", w_n), *b = s->has_bias ? tensor_f32(g, "conv.bias", b_n) : NULL;
    float *aw = w ? abs_of(w, w_n) : NULL, *ab = b ? abs_of(b, b_n) : NULL;
    float *ax = abs_of(g->x, g->x_n), *aa = abs_of(g->alpha, g->a_n);
    int failed = aw == NULL || (s->has_bias && ab == NULL) || ax == NULL || aa == NULL;
    g->mag = malloc(g->y_n * sizeof(float));
    failed |= g->mag == NULL;
    condconv_context_t ctx = NULL;
    condconv_layer_desc_t desc = NULL;
    condconv_layer_t layer = NULL;
    if (!failed) {
        const condconv_params params = {aw, ab, NULL, NULL};
        desc = golden_desc(g, CONDCONV_ROUTING_EXTERNAL);
        failed = condconv_context_create(&ctx, CONDCONV_DEVICE_CPU) != CONDCONV_STATUS_SUCCESS ||
                 condconv_layer_create(ctx, desc, &params, &layer) != CONDCONV_STATUS_SUCCESS ||
                 condconv_forward_cpu(layer, g->n, g->h, g->w, ax, g->mag, aa, NULL) != CONDCONV_STATUS_SUCCESS;
        if (failed) fprintf(stderr, "golden %s: magnitude: %s\n", g->path, condconv_last_error());
    }
    condconv_layer_destroy(layer);
    condconv_layer_desc_destroy(desc);
    condconv_context_destroy(ctx);
    free(w);
    free(b);
    free(aw);
    free(ab);
    free(ax);
    free(aa);
    return failed;
}

int golden_load(const char *path, golden *g)
{
    memset(g, 0, sizeof *g);
    snprintf(g->path, sizeof g->path, "%s", path);
    if (cc_st_load(path, &g->file, "golden") != CONDCONV_STATUS_SUCCESS) {
        fprintf(stderr, "golden %s: %s\n", path, condconv_last_error());
        return 1;
    }
    const char *format = meta_str(g, "format"), *name = meta_str(g, "name"), *pad = meta_str(g, "padding_mode");
    const char *routing = meta_str(g, "routing"), *dtype = meta_str(g, "param_dtype");
    if (!format || !name || !pad || !routing || !dtype) return 1;
    if (strcmp(format, "condconv-golden-1") != 0 || strcmp(routing, "sigmoid") != 0 ||
        (strcmp(pad, "same") != 0 && strcmp(pad, "explicit") != 0)) {
        fprintf(stderr, "golden %s: unexpected format \"%s\", routing \"%s\" or padding \"%s\"\n", path, format,
                routing, pad);
        return 1;
    }
    snprintf(g->name, sizeof g->name, "%s", name);
    snprintf(g->param_dtype, sizeof g->param_dtype, "%s", dtype);
    const char *run = cc_st_meta_get(&g->file, "run_dtype"); /* absent in files of the f32-only generator */
    snprintf(g->run_dtype, sizeof g->run_dtype, "%s", run ? run : "F32");
    if (strcmp(g->run_dtype, "F32") == 0) {
        g->run_dtype_id = CONDCONV_DTYPE_F32;
    } else if (strcmp(g->run_dtype, "F16") == 0) {
        g->run_dtype_id = CONDCONV_DTYPE_F16;
    } else if (strcmp(g->run_dtype, "BF16") == 0) {
        g->run_dtype_id = CONDCONV_DTYPE_BF16;
    } else {
        fprintf(stderr, "golden %s: unexpected run_dtype \"%s\"\n", path, g->run_dtype);
        return 1;
    }
    tu_layer_spec *s = &g->spec;
    struct {
        const char *key;
        int *dst;
    } ints[] = {{"in_channels", &s->cin},
                {"out_channels", &s->cout},
                {"kernel_h", &s->kh},
                {"kernel_w", &s->kw},
                {"stride_h", &s->stride_h},
                {"stride_w", &s->stride_w},
                {"dilation_h", &s->dil_h},
                {"dilation_w", &s->dil_w},
                {"groups", &s->groups},
                {"pad_h", &s->pad_h},
                {"pad_w", &s->pad_w},
                {"num_experts", &s->experts},
                {"has_bias", &s->has_bias},
                {"n", &g->n},
                {"h", &g->h},
                {"w", &g->w},
                {"out_h", &g->out_h},
                {"out_w", &g->out_w}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; ++i)
        if ((*ints[i].dst = meta_int(g, ints[i].key)) == INT_MIN) return 1;
    s->pad_mode = strcmp(pad, "same") == 0 ? CONDCONV_PADDING_SAME : CONDCONV_PADDING_EXPLICIT;
    s->routing = CONDCONV_ROUTING_SIGMOID;
    s->temperature = 1.0f;
    s->activation = CONDCONV_ACTIVATION_NONE;

    g->x_n = (size_t)g->n * (size_t)s->cin * (size_t)g->h * (size_t)g->w;
    g->y_n = (size_t)g->n * (size_t)s->cout * (size_t)g->out_h * (size_t)g->out_w;
    g->a_n = (size_t)g->n * (size_t)s->experts;
    g->x = tensor_f32(g, "x", g->x_n);
    g->y = tensor_f32(g, "y", g->y_n);
    g->alpha = tensor_f32(g, "alpha", g->a_n);
    if (g->x == NULL || g->y == NULL || g->alpha == NULL) return 1;
    if (g->run_dtype_id != CONDCONV_DTYPE_F32 && (g->y_exact = tensor_f32(g, "y_exact", g->y_n)) == NULL) return 1;
    return compute_magnitude(g);
}

void golden_free(golden *g)
{
    cc_st_release(&g->file);
    free(g->x);
    free(g->y);
    free(g->y_exact);
    free(g->alpha);
    free(g->mag);
    memset(g, 0, sizeof *g);
}

condconv_layer_desc_t golden_desc(const golden *g, condconv_routing routing)
{
    tu_layer_spec s = g->spec;
    s.routing = routing;
    return tu_make_desc(&s);
}

int golden_check_all(const char *dir, int min_files, condconv_context_t ctx,
                     void (*check)(condconv_context_t ctx, const golden *g))
{
    char **paths;
    const int count = golden_list(dir, &paths);
    EXPECT(count >= min_files, "only %d golden files in %s", count, dir);
    for (int i = 0; i < count; ++i) {
        golden g;
        if (golden_load(paths[i], &g) == 0)
            check(ctx, &g);
        else
            tu_fail(__FILE__, __LINE__, "golden_load", "cannot read %s", paths[i]);
        golden_free(&g);
    }
    golden_free_list(paths, count);
    return count;
}

void *golden_x_in_format(const golden *g, condconv_layout layout)
{
    float *staged = malloc(g->x_n * sizeof(float));
    if (staged == NULL) return NULL;
    const size_t plane = (size_t)g->h * (size_t)g->w;
    if (layout == CONDCONV_LAYOUT_NHWC)
        tu_transpose(g->x, staged, g->n, g->spec.cin, plane, 1);
    else
        memcpy(staged, g->x, g->x_n * sizeof(float));
    void *out = tu_to_dtype(staged, g->x_n, g->run_dtype_id);
    free(staged);
    return out;
}

void golden_y_from_format(const golden *g, const void *src, condconv_layout layout, float *y)
{
    float *staged = malloc(g->y_n * sizeof(float));
    if (staged == NULL ||
        condconv_convert(g->run_dtype_id, src, CONDCONV_DTYPE_F32, staged, g->y_n) != CONDCONV_STATUS_SUCCESS) {
        tu_fail(__FILE__, __LINE__, "golden_y_from_format", "conversion failed");
        free(staged);
        return;
    }
    const size_t plane = (size_t)g->out_h * (size_t)g->out_w;
    if (layout == CONDCONV_LAYOUT_NHWC)
        tu_transpose(staged, y, g->n, g->spec.cout, plane, 0);
    else
        memcpy(y, staged, g->y_n * sizeof(float));
    free(staged);
}

void golden_half_tolerance(condconv_dtype dtype, int against_timm_half, double *atol, double *rtol, double *l2_max)
{
    tu_dtype_tolerance(dtype, atol, rtol, l2_max);
    *rtol += 1e-5;
    if (against_timm_half) {
        const double u = dtype == CONDCONV_DTYPE_F16 ? 1.0 / 2048.0 : 1.0 / 256.0;
        *rtol += 3.0 * u;
        *l2_max *= 2.0;
    }
}
