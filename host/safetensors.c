/* The safetensors parser (see safetensors.h). Order of checks: the length
 * field against the image size, the JSON (Jansson: syntax, UTF-8, duplicate
 * names, NUL bytes), then each entry's dtype, shape and byte range against
 * the data section, then overlap between entries. Nothing is read from
 * the data section here; a range is only recorded once it is known to be
 * inside it. */
#define _POSIX_C_SOURCE 200809L /* fileno, fstat, strerror_r */
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checked_math.h"
#include "dtype.h"
#include "error.h"

/* Tensor names are quoted in messages up to this many bytes. */
#define NAME_CHARS 80

static const struct {
    const char *name;
    size_t size;
} dtype_table[CC_ST_DTYPE_COUNT] = {
    [CC_ST_BOOL] = {"BOOL", 1},       [CC_ST_U8] = {"U8", 1},           [CC_ST_I8] = {"I8", 1},
    [CC_ST_F8_E4M3] = {"F8_E4M3", 1}, [CC_ST_F8_E5M2] = {"F8_E5M2", 1}, [CC_ST_I16] = {"I16", 2},
    [CC_ST_U16] = {"U16", 2},         [CC_ST_F16] = {"F16", 2},         [CC_ST_BF16] = {"BF16", 2},
    [CC_ST_I32] = {"I32", 4},         [CC_ST_U32] = {"U32", 4},         [CC_ST_F32] = {"F32", 4},
    [CC_ST_I64] = {"I64", 8},         [CC_ST_U64] = {"U64", 8},         [CC_ST_F64] = {"F64", 8},
};

const char *cc_st_dtype_name(cc_st_dtype dtype)
{
    return (unsigned)dtype < CC_ST_DTYPE_COUNT ? dtype_table[dtype].name : "?";
}

size_t cc_st_dtype_size(cc_st_dtype dtype) { return (unsigned)dtype < CC_ST_DTYPE_COUNT ? dtype_table[dtype].size : 0; }

int cc_st_converts_to_f32(cc_st_dtype dtype) { return dtype == CC_ST_F32 || dtype == CC_ST_F16 || dtype == CC_ST_BF16; }

void cc_st_printable(const char *name, char *out, size_t out_size)
{
    if (out_size == 0) return;
    const size_t len = strlen(name);
    size_t keep = len;
    int cut = 0;
    if (len >= out_size) {
        cut = out_size > 4;
        keep = cut ? out_size - 4 : out_size - 1;
        /* Back up to the start of a UTF-8 character so the message stays valid UTF-8. */
        while (keep > 0 && ((unsigned char)name[keep] & 0xC0u) == 0x80u) --keep;
    }
    for (size_t i = 0; i < keep; ++i) {
        const unsigned char c = (unsigned char)name[i];
        out[i] = (char)((c < 0x20u || c == 0x7Fu) ? '?' : c);
    }
    if (cut) {
        memcpy(out + keep, "...", 3);
        keep += 3;
    }
    out[keep] = '\0';
}

void cc_st_shape_string(const cc_st_tensor *t, char *out, size_t out_size)
{
    /* snprintf returns what it would have written: once that passes the
     * end, the output is already cut and terminated. */
    size_t used = (size_t)snprintf(out, out_size, "[");
    for (int i = 0; i < t->rank && used < out_size; ++i)
        used += (size_t)snprintf(out + used, out_size - used, i ? ", %llu" : "%llu", (unsigned long long)t->shape[i]);
    if (used < out_size) snprintf(out + used, out_size - used, "]");
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static uint64_t read_u64_le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
    return v;
}

static char *copy_string(const char *s)
{
    const size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c != NULL) memcpy(c, s, n);
    return c;
}

/* What the parser is building; freed as a whole on any failure. */
typedef struct parse_state {
    const char *source, *func;
    const unsigned char *data; /* the data section */
    uint64_t data_size;
    cc_st_file out;
} parse_state;

static void free_parts(cc_st_file *f)
{
    for (size_t i = 0; i < f->count; ++i) free(f->tensors[i].name);
    for (size_t i = 0; i < f->meta_count; ++i) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->tensors);
    free(f->meta);
    free(f->owned_image);
    memset(f, 0, sizeof *f);
}

static condconv_status json_failure(const json_error_t *err, uint64_t header_len, const parse_state *ps)
{
    switch (json_error_code(err)) {
    case json_error_out_of_memory:
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: out of host memory parsing the %llu-byte header",
                       ps->func, ps->source, (unsigned long long)header_len);
    case json_error_invalid_utf8:
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s: the JSON header is not valid UTF-8 (a tensor name or value near byte %d of the "
                       "header): %s",
                       ps->func, ps->source, err->position, err->text);
    case json_error_duplicate_key:
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s: the JSON header names the same tensor twice (duplicate key near byte %d of the "
                       "header, line %d column %d)",
                       ps->func, ps->source, err->position, err->line, err->column);
    case json_error_premature_end_of_input:
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s: the JSON header ends early (its %llu bytes stop inside the JSON: %s)", ps->func,
                       ps->source, (unsigned long long)header_len, err->text);
    default:
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: the header is not valid JSON at line %d column %d: %s",
                       ps->func, ps->source, err->line, err->column, err->text);
    }
}

/* A non-negative JSON integer, or -1 (JSON integers are at most INT64_MAX). */
static int64_t json_count(const json_t *v)
{
    if (!json_is_integer(v)) return -1;
    const json_int_t i = json_integer_value(v);
    return i < 0 ? -1 : (int64_t)i;
}

static condconv_status parse_dtype(const json_t *entry, const char *name, const parse_state *ps, cc_st_dtype *dtype)
{
    const json_t *v = json_object_get(entry, "dtype");
    if (v == NULL)
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s' has no \"dtype\"", ps->func, ps->source, name);
    if (!json_is_string(v))
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s': \"dtype\" is %s, not a string", ps->func,
                       ps->source, name, json_type_name(v));
    const char *s = json_string_value(v);
    for (int d = 0; d < CC_ST_DTYPE_COUNT; ++d)
        if (strcmp(s, dtype_table[d].name) == 0) {
            *dtype = (cc_st_dtype)d;
            return CONDCONV_STATUS_SUCCESS;
        }
    char shown[24];
    cc_st_printable(s, shown, sizeof shown);
    return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s' has the unknown dtype \"%s\"", ps->func, ps->source,
                   name, shown);
}

static condconv_status parse_shape(const json_t *entry, const char *name, const parse_state *ps, cc_st_tensor *t)
{
    const json_t *v = json_object_get(entry, "shape");
    if (v == NULL)
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s' has no \"shape\"", ps->func, ps->source, name);
    if (!json_is_array(v))
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s': \"shape\" is %s, not an array", ps->func,
                       ps->source, name, json_type_name(v));
    const size_t rank = json_array_size(v);
    if (rank > CC_ST_MAX_RANK)
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s' has %zu dimensions; at most %d are accepted",
                       ps->func, ps->source, name, rank, CC_ST_MAX_RANK);
    t->rank = (int)rank;
    /* The product of the non-zero dimensions must fit 64 bits even when
     * another dimension is 0: [0, 2^40, 2^40] is absurd, not empty. */
    uint64_t product = 1;
    int has_zero = 0;
    for (size_t i = 0; i < rank; ++i) {
        const json_t *dim = json_array_get(v, i);
        const int64_t d = json_count(dim);
        if (d < 0)
            return cc_fail(CONDCONV_STATUS_BAD_FILE,
                           "%s: %s: tensor '%s': dimension %zu of \"shape\" is %s, not a non-negative integer",
                           ps->func, ps->source, name, i, json_is_integer(dim) ? "negative" : json_type_name(dim));
        t->shape[i] = (uint64_t)d;
        if (d == 0)
            has_zero = 1;
        else if (!cc_mul_u64(product, (uint64_t)d, &product))
            return cc_fail(CONDCONV_STATUS_BAD_FILE,
                           "%s: %s: tensor '%s' has absurd dimensions: their product overflows 64 bits (dimension "
                           "%zu is %lld)",
                           ps->func, ps->source, name, i, (long long)d);
    }
    t->elems = has_zero ? 0 : product;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status parse_offsets(const json_t *entry, const char *name, const parse_state *ps, cc_st_tensor *t)
{
    const json_t *v = json_object_get(entry, "data_offsets");
    if (v == NULL)
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s' has no \"data_offsets\"", ps->func, ps->source,
                       name);
    if (!json_is_array(v) || json_array_size(v) != 2)
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s': \"data_offsets\" must be [begin, end]", ps->func,
                       ps->source, name);
    const int64_t begin = json_count(json_array_get(v, 0)), end = json_count(json_array_get(v, 1));
    if (begin < 0 || end < 0)
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s: tensor '%s': \"data_offsets\" must be two non-negative integers", ps->func, ps->source,
                       name);
    if (begin > end)
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: tensor '%s': data_offsets [%lld, %lld] end before they begin",
                       ps->func, ps->source, name, (long long)begin, (long long)end);
    if ((uint64_t)end > ps->data_size)
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s: tensor '%s': data_offsets [%lld, %lld] lie outside the %llu-byte data section "
                       "(a truncated file?)",
                       ps->func, ps->source, name, (long long)begin, (long long)end, (unsigned long long)ps->data_size);
    t->begin = (uint64_t)begin;
    t->end = (uint64_t)end;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status parse_tensor(const char *key, const json_t *entry, const parse_state *ps, cc_st_tensor *t)
{
    char name[NAME_CHARS];
    cc_st_printable(key, name, sizeof name);
    if (!json_is_object(entry))
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: header entry '%s' is %s, not an object", ps->func, ps->source,
                       name, json_type_name(entry));
    CC_TRY(parse_dtype(entry, name, ps, &t->dtype));
    CC_TRY(parse_shape(entry, name, ps, t));
    CC_TRY(parse_offsets(entry, name, ps, t));
    uint64_t bytes;
    if (!cc_mul_u64(t->elems, cc_st_dtype_size(t->dtype), &bytes) || bytes != t->end - t->begin) {
        char shape[200]; /* 8 dimensions of up to 20 digits */
        cc_st_shape_string(t, shape, sizeof shape);
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s: tensor '%s': shape %s of %s needs %llu elements x %zu bytes, but data_offsets "
                       "[%llu, %llu] hold %llu bytes",
                       ps->func, ps->source, name, shape, cc_st_dtype_name(t->dtype), (unsigned long long)t->elems,
                       cc_st_dtype_size(t->dtype), (unsigned long long)t->begin, (unsigned long long)t->end,
                       (unsigned long long)(t->end - t->begin));
    }
    t->data = ps->data + t->begin;
    t->name = copy_string(key);
    if (t->name == NULL)
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: out of host memory", ps->func, ps->source);
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status parse_metadata(const json_t *entry, parse_state *ps)
{
    if (!json_is_object(entry))
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: \"__metadata__\" is %s, not an object", ps->func, ps->source,
                       json_type_name(entry));
    /* Unreachable while the header is loaded with JSON_REJECT_DUPLICATES; without
     * this check a second "__metadata__" would leak the first one's table. */
    if (ps->out.meta != NULL)
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: \"__metadata__\" appears twice", ps->func, ps->source);
    const size_t n = json_object_size(entry);
    ps->out.meta = calloc(n ? n : 1, sizeof *ps->out.meta);
    if (ps->out.meta == NULL)
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: out of host memory", ps->func, ps->source);
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)entry, key, value)
    {
        char name[NAME_CHARS];
        cc_st_printable(key, name, sizeof name);
        if (!json_is_string(value))
            return cc_fail(CONDCONV_STATUS_BAD_FILE,
                           "%s: %s: \"__metadata__\" entry '%s' is %s; safetensors metadata values are strings",
                           ps->func, ps->source, name, json_type_name(value));
        cc_st_meta *m = &ps->out.meta[ps->out.meta_count++];
        m->key = copy_string(key);
        m->value = copy_string(json_string_value(value));
        if (m->key == NULL || m->value == NULL)
            return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: out of host memory", ps->func, ps->source);
    }
    return CONDCONV_STATUS_SUCCESS;
}

static int by_begin(const void *a, const void *b)
{
    const cc_st_tensor *ta = *(const cc_st_tensor *const *)a, *tb = *(const cc_st_tensor *const *)b;
    return ta->begin < tb->begin ? -1 : ta->begin > tb->begin;
}

/* Sorted by where they begin, non-empty byte ranges are disjoint iff each
 * begins at or after the end of the one before it. */
static condconv_status check_overlap(const parse_state *ps)
{
    const cc_st_file *f = &ps->out;
    /* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers, sized by the pointer, as meant */
    const cc_st_tensor **order = malloc((f->count ? f->count : 1) * sizeof *order);
    if (order == NULL) return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: out of host memory", ps->func, ps->source);
    size_t n = 0;
    for (size_t i = 0; i < f->count; ++i)
        if (f->tensors[i].end > f->tensors[i].begin) order[n++] = &f->tensors[i];
    qsort(order, n, sizeof *order, by_begin); /* NOLINT(bugprone-sizeof-expression): as above */
    condconv_status s = CONDCONV_STATUS_SUCCESS;
    for (size_t i = 1; i < n && s == CONDCONV_STATUS_SUCCESS; ++i) {
        const cc_st_tensor *a = order[i - 1], *b = order[i];
        if (b->begin < a->end) {
            char na[NAME_CHARS], nb[NAME_CHARS];
            cc_st_printable(a->name, na, sizeof na);
            cc_st_printable(b->name, nb, sizeof nb);
            s = cc_fail(CONDCONV_STATUS_BAD_FILE,
                        "%s: %s: the data of tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap", ps->func,
                        ps->source, na, (unsigned long long)a->begin, (unsigned long long)a->end, nb,
                        (unsigned long long)b->begin, (unsigned long long)b->end);
        }
    }
    free(order);
    return s;
}

static condconv_status parse_entries(const json_t *root, parse_state *ps)
{
    const size_t n = json_object_size(root);
    ps->out.tensors = calloc(n ? n : 1, sizeof *ps->out.tensors);
    if (ps->out.tensors == NULL)
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: %s: out of host memory", ps->func, ps->source);
    const char *key;
    const json_t *value;
    json_object_foreach((json_t *)root, key, value)
    {
        if (strcmp(key, "__metadata__") == 0) {
            CC_TRY(parse_metadata(value, ps));
            continue;
        }
        /* count grows only once the entry is whole, so cleanup frees exactly what exists. */
        cc_st_tensor *t = &ps->out.tensors[ps->out.count];
        CC_TRY(parse_tensor(key, value, ps, t));
        ++ps->out.count;
    }
    return check_overlap(ps);
}

condconv_status cc_st_parse(const void *image, size_t size, const char *source, cc_st_file *file, const char *func)
{
    CC_CHECK_NOT_NULL(image, func);
    CC_CHECK_NOT_NULL(file, func);
    const unsigned char *bytes = image;
    if (size < 8)
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s is truncated: %zu bytes, but a safetensors file begins with an 8-byte header length",
                       func, source, size);
    const uint64_t header_len = read_u64_le(bytes);
    if (header_len > size - 8)
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s: the header length %llu runs past the end of the file (%zu bytes follow the length "
                       "field; truncated or not a safetensors file)",
                       func, source, (unsigned long long)header_len, size - 8);
    if (header_len > CC_ST_MAX_HEADER_BYTES)
        return cc_fail(CONDCONV_STATUS_BAD_FILE,
                       "%s: %s: the header length %llu exceeds the format's limit of %u bytes", func, source,
                       (unsigned long long)header_len, CC_ST_MAX_HEADER_BYTES);
    if (header_len == 0)
        return cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: the header length is 0; the header must be a JSON object",
                       func, source);
    parse_state ps = {0};
    ps.source = source;
    ps.func = func;
    ps.data = bytes + 8 + header_len;
    ps.data_size = (uint64_t)size - 8 - header_len;

    json_error_t err;
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)header_len, JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) return json_failure(&err, header_len, &ps);
    condconv_status s = CONDCONV_STATUS_SUCCESS;
    if (!json_is_object(root))
        s = cc_fail(CONDCONV_STATUS_BAD_FILE, "%s: %s: the header is %s, not a JSON object", func, source,
                    json_type_name(root));
    else
        s = parse_entries(root, &ps);
    json_decref(root);
    if (s != CONDCONV_STATUS_SUCCESS) {
        free_parts(&ps.out);
        return s;
    }
    *file = ps.out;
    return CONDCONV_STATUS_SUCCESS;
}

static condconv_status io_failure(const char *what, const char *path, int err, const char *func)
{
    char reason[128];
    if (strerror_r(err, reason, sizeof reason) != 0) snprintf(reason, sizeof reason, "errno %d", err);
    return cc_fail(CONDCONV_STATUS_IO_ERROR, "%s: cannot %s '%.300s': %s", func, what, path, reason);
}

/* Reads a whole regular file; *size_out bytes at *image_out (malloc'd). */
static condconv_status read_file(const char *path, unsigned char **image_out, size_t *size_out, const char *func)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) return io_failure("open", path, errno, func);
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        const int e = errno;
        fclose(fp);
        return io_failure("stat", path, e, func);
    }
    /* A directory or a pipe would give a meaningless size (or none). */
    if (!S_ISREG(st.st_mode)) {
        fclose(fp);
        return cc_fail(CONDCONV_STATUS_IO_ERROR, "%s: '%.300s' is not a regular file", func, path);
    }
    if (st.st_size < 0 || (uintmax_t)st.st_size > (uintmax_t)SIZE_MAX) {
        fclose(fp);
        return cc_fail(CONDCONV_STATUS_IO_ERROR, "%s: '%.300s' is too large to read into memory", func, path);
    }
    const size_t size = (size_t)st.st_size;
    unsigned char *image = malloc(size ? size : 1);
    if (image == NULL) {
        fclose(fp);
        return cc_fail(CONDCONV_STATUS_ALLOC_FAILED, "%s: out of host memory for the %zu bytes of '%.300s'", func, size,
                       path);
    }
    const size_t got = fread(image, 1, size, fp);
    const int read_error = ferror(fp) ? errno : 0;
    fclose(fp);
    if (got != size) {
        free(image);
        if (read_error) return io_failure("read", path, read_error, func);
        return cc_fail(CONDCONV_STATUS_IO_ERROR, "%s: '%.300s' shrank while being read (%zu of %zu bytes)", func, path,
                       got, size);
    }
    *image_out = image;
    *size_out = size;
    return CONDCONV_STATUS_SUCCESS;
}

condconv_status cc_st_load(const char *path, cc_st_file *file, const char *func)
{
    CC_CHECK_NOT_NULL(path, func);
    CC_CHECK_NOT_NULL(file, func);
    unsigned char *image = NULL;
    size_t size = 0;
    CC_TRY(read_file(path, &image, &size, func));
    char source[320];
    snprintf(source, sizeof source, "'%.300s'", path);
    cc_st_file parsed;
    const condconv_status s = cc_st_parse(image, size, source, &parsed, func);
    if (s != CONDCONV_STATUS_SUCCESS) {
        free(image);
        return s;
    }
    parsed.owned_image = image;
    *file = parsed;
    return CONDCONV_STATUS_SUCCESS;
}

void cc_st_release(cc_st_file *file)
{
    if (file != NULL) free_parts(file);
}

const cc_st_tensor *cc_st_find(const cc_st_file *file, const char *name)
{
    for (size_t i = 0; i < file->count; ++i)
        if (strcmp(file->tensors[i].name, name) == 0) return &file->tensors[i];
    return NULL;
}

const char *cc_st_meta_get(const cc_st_file *file, const char *key)
{
    for (size_t i = 0; i < file->meta_count; ++i)
        if (strcmp(file->meta[i].key, key) == 0) return file->meta[i].value;
    return NULL;
}

condconv_status cc_st_to_f32(const cc_st_tensor *t, float *dst, const char *func)
{
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case CC_ST_F32:
        for (uint64_t i = 0; i < t->elems; ++i, p += 4) {
            const uint32_t bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
            memcpy(&dst[i], &bits, sizeof bits);
        }
        return CONDCONV_STATUS_SUCCESS;
    case CC_ST_F16:
        for (uint64_t i = 0; i < t->elems; ++i, p += 2) dst[i] = cc_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
        return CONDCONV_STATUS_SUCCESS;
    case CC_ST_BF16:
        /* bfloat16 is the top half of a binary32. */
        for (uint64_t i = 0; i < t->elems; ++i, p += 2) {
            const uint32_t bits = ((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16;
            memcpy(&dst[i], &bits, sizeof bits);
        }
        return CONDCONV_STATUS_SUCCESS;
    default: {
        char name[NAME_CHARS];
        cc_st_printable(t->name, name, sizeof name);
        return cc_fail(CONDCONV_STATUS_TENSOR_MISMATCH,
                       "%s: tensor '%s' is %s; only F32, F16 and BF16 tensors can be loaded as f32", func, name,
                       cc_st_dtype_name(t->dtype));
    }
    }
}
