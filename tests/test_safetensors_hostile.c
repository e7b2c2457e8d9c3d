/* The safetensors loader against every kind of hostile file, built in
 * memory: each must give its specific status and a message that names the
 * problem, and create no layer. Then valid files round-trip: F32 in timm's
 * flattened and the 5-D expert layout, F16 and BF16 converted exactly, with
 * and without the optional routing bias, from memory and from disk.
 *
 * The layer of these files: Cin=2, Cout=3, kernel 1x2, E=2, with biases and
 * sigmoid routing. Parameter values are multiples of 1/8 in [-1, 1], exact
 * in F16 and BF16, so a converted layer must equal the f32 one bit for bit.
 * Run under valgrind (test_safetensors_hostile_valgrind) to check that no
 * error path leaks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "test_util.h"

#define E         2
#define CIN       2
#define COUT      3
#define KH        1
#define KW        2
#define N_EXPERTS (E * COUT * CIN * KH * KW) /* 24 */
#define N_BIAS    (E * COUT)                 /* 6 */
#define N_RW      (E * CIN)                  /* 4 */
#define N_RB      E                          /* 2 */

static float experts[N_EXPERTS], expert_bias[N_BIAS], routing_weight[N_RW], routing_bias[N_RB];

typedef struct blob {
    unsigned char *p;
    size_t n;
} blob;

/* One tensor of a header: name, dtype, dims; offsets are laid out in order. */
typedef struct spec {
    const char *name, *dtype;
    int rank;
    long long dims[6];
    long long begin, end;
} spec;

static size_t dtype_bytes(const char *dtype)
{
    if (strcmp(dtype, "F16") == 0 || strcmp(dtype, "BF16") == 0) return 2;
    return 4; /* F32, I32 */
}

static long long spec_elems(const spec *s)
{
    long long n = 1;
    for (int i = 0; i < s->rank; ++i) n *= s->dims[i];
    return n;
}

/* Contiguous offsets, in the order given. */
static void lay_out(spec *s, int count)
{
    long long at = 0;
    for (int i = 0; i < count; ++i) {
        s[i].begin = at;
        at += spec_elems(&s[i]) * (long long)dtype_bytes(s[i].dtype);
        s[i].end = at;
    }
}

static void append(char *buf, size_t size, const char *fmt_piece) { strncat(buf, fmt_piece, size - strlen(buf) - 1); }

/* The JSON header for the specs, with an optional raw member (e.g. a
 * "__metadata__" entry) first. */
static void header_of(const spec *s, int count, const char *extra, char *buf, size_t size)
{
    char piece[256];
    buf[0] = '\0';
    append(buf, size, "{");
    if (extra) {
        append(buf, size, extra);
        if (count) append(buf, size, ",");
    }
    for (int i = 0; i < count; ++i) {
        snprintf(piece, sizeof piece, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", s[i].name, s[i].dtype);
        append(buf, size, piece);
        for (int d = 0; d < s[i].rank; ++d) {
            snprintf(piece, sizeof piece, "%s%lld", d ? "," : "", s[i].dims[d]);
            append(buf, size, piece);
        }
        snprintf(piece, sizeof piece, "],\"data_offsets\":[%lld,%lld]}", s[i].begin, s[i].end);
        append(buf, size, piece);
    }
    append(buf, size, "}");
}

/* An image: the 8-byte length field `len_field`, header_n header bytes,
 * then data. */
static blob image_raw(unsigned long long len_field, const char *header, size_t header_n, const void *data,
                      size_t data_n)
{
    blob b;
    b.n = 8 + header_n + data_n;
    b.p = malloc(b.n ? b.n : 1);
    if (b.p == NULL) {
        fprintf(stderr, "FATAL: out of memory\n");
        exit(1);
    }
    for (int i = 0; i < 8; ++i) b.p[i] = (unsigned char)(len_field >> (8 * i));
    memcpy(b.p + 8, header, header_n);
    if (data_n) memcpy(b.p + 8 + header_n, data, data_n);
    return b;
}

static blob image(const char *header, const void *data, size_t data_n)
{
    return image_raw(strlen(header), header, strlen(header), data, data_n);
}

/* f32 -> F16 / BF16 bits, for values exactly representable (these tests'
 * multiples of 1/8). */
static unsigned f16_bits(float v)
{
    if (v == 0.0f) return signbit(v) ? 0x8000u : 0;
    int e;
    const float m = frexpf(fabsf(v), &e); /* |v| = m * 2^e, m in [0.5, 1) */
    const unsigned mant = (unsigned)((m * 2.0f - 1.0f) * 1024.0f);
    return (v < 0 ? 0x8000u : 0) | (unsigned)(e - 1 + 15) << 10 | mant;
}

static unsigned bf16_bits(float v)
{
    unsigned int bits;
    memcpy(&bits, &v, sizeof bits);
    return bits >> 16;
}

/* The standard layer's parameters encoded as `dtype`, in spec order. */
static size_t encode(const char *dtype, unsigned char *out)
{
    const float *parts[4] = {experts, expert_bias, routing_weight, routing_bias};
    const size_t counts[4] = {(size_t)N_EXPERTS, (size_t)N_BIAS, (size_t)N_RW, N_RB};
    size_t at = 0;
    for (int p = 0; p < 4; ++p)
        for (size_t i = 0; i < counts[p]; ++i) {
            const float v = parts[p][i];
            if (strcmp(dtype, "F32") == 0) {
                unsigned int bits;
                memcpy(&bits, &v, sizeof bits);
                for (int b = 0; b < 4; ++b) out[at++] = (unsigned char)(bits >> (8 * b));
            } else {
                const unsigned bits = strcmp(dtype, "F16") == 0 ? f16_bits(v) : bf16_bits(v);
                out[at++] = (unsigned char)bits;
                out[at++] = (unsigned char)(bits >> 8);
            }
        }
    return at;
}

static void standard_specs(spec s[4], const char *dtype)
{
    const spec std[4] = {
        {"conv.weight", dtype, 2, {E, (long long)COUT * CIN * KH * KW}, 0, 0},
        {"conv.bias", dtype, 2, {E, COUT}, 0, 0},
        {"routing_fn.weight", dtype, 2, {E, CIN}, 0, 0},
        {"routing_fn.bias", dtype, 1, {E}, 0, 0},
    };
    memcpy(s, std, sizeof std);
    lay_out(s, 4);
}

/* A file of the standard layer with its specs edited by the caller. */
static blob standard_image(const spec *s, int count, const char *extra)
{
    static unsigned char data[4 * (N_EXPERTS + N_BIAS + N_RW + N_RB)];
    const size_t n = encode("F32", data);
    char header[4096];
    header_of(s, count, extra, header, sizeof header);
    return image(header, data, n);
}

static condconv_layer_desc_t make_desc(int experts_n, int has_bias, condconv_routing routing)
{
    condconv_layer_desc_t desc;
    EXPECT_OK(condconv_layer_desc_create(&desc));
    EXPECT_OK(condconv_layer_desc_set_conv(desc, CIN, COUT, KH, KW, 1, 1, 1, 1, 1));
    EXPECT_OK(condconv_layer_desc_set_experts(desc, experts_n, has_bias));
    EXPECT_OK(condconv_layer_desc_set_routing(desc, routing, 1.0f));
    return desc;
}

static condconv_context_t ctx;
static condconv_layer_desc_t desc_std; /* E=2, biases, sigmoid routing */
static int sentinel_object;
#define SENTINEL ((condconv_layer_t)(void *)&sentinel_object)

/* A load that must fail with `want`, say `needle`, and leave *layer alone. */
static void expect_refused(const char *what, blob b, condconv_layer_desc_t desc, const char *routing_prefix,
                           condconv_status want, const char *needle)
{
    condconv_layer_t layer = SENTINEL;
    const condconv_status got =
        condconv_layer_create_from_safetensors_memory(ctx, desc, b.p, b.n, "conv", routing_prefix, &layer);
    const char *msg = condconv_last_error();
    EXPECT(got == want, "%s: returned %s, expected %s (%s)", what, condconv_status_string(got),
           condconv_status_string(want), msg);
    EXPECT(msg[0] != '\0', "%s: empty message", what);
    EXPECT(strstr(msg, needle) != NULL, "%s: message \"%s\" does not mention \"%s\"", what, msg, needle);
    EXPECT(layer == SENTINEL, "%s: the output layer was written on failure", what);
    printf("  %-40s %s\n", what, msg);
    if (got == CONDCONV_STATUS_SUCCESS && layer != SENTINEL) condconv_layer_destroy(layer);
    /* The parser alone must agree and leave its output untouched. */
    if (want == CONDCONV_STATUS_BAD_FILE) {
        cc_st_file f;
        memset(&f, 0xA5, sizeof f);
        const cc_st_file before = f;
        EXPECT(cc_st_parse(b.p, b.n, "memory image", &f, "test") == CONDCONV_STATUS_BAD_FILE,
               "%s: cc_st_parse accepted it", what);
        EXPECT(memcmp(&f, &before, sizeof f) == 0, "%s: cc_st_parse wrote its output on failure", what);
    }
    free(b.p);
}

static void expect_bad_header(const char *what, const char *header, const char *needle)
{
    static const unsigned char data[256];
    expect_refused(what, image(header, data, sizeof data), desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE, needle);
}

/* ------------------------------------------------------------------ */

static void test_framing(void)
{
    static const unsigned char bytes[16] = {0};
    blob empty = {malloc(1), 0};
    expect_refused("empty file", empty, desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE, "truncated");
    blob five = {malloc(5), 5};
    memcpy(five.p, bytes, 5);
    expect_refused("5-byte file", five, desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE, "truncated");
    expect_refused("header length beyond the file", image_raw(1000, "{}", 2, bytes, sizeof bytes), desc_std,
                   "routing_fn", CONDCONV_STATUS_BAD_FILE, "runs past the end");
    expect_refused("header length 2^64-1", image_raw(~0ull, "{}", 2, NULL, 0), desc_std, "routing_fn",
                   CONDCONV_STATUS_BAD_FILE, "runs past the end");
    expect_refused("header length 0", image_raw(0, "", 0, bytes, sizeof bytes), desc_std, "routing_fn",
                   CONDCONV_STATUS_BAD_FILE, "header length is 0");
    /* A header longer than the format's 100 MB limit, in a file that really is that long. */
    const size_t big = (size_t)CC_ST_MAX_HEADER_BYTES + 1;
    blob huge = {calloc(1, big + 8), big + 8};
    if (huge.p) {
        for (int i = 0; i < 8; ++i) huge.p[i] = (unsigned char)((unsigned long long)big >> (8 * i));
        expect_refused("header over 100 MB", huge, desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE, "limit");
    }
}

static void test_json(void)
{
    expect_bad_header("not JSON", "hello", "not valid JSON");
    expect_bad_header("JSON array", "[1,2]", "not a JSON object");
    expect_bad_header("JSON cut short", "{\"conv.weight\":", "ends early");
    expect_bad_header("trailing bytes after the JSON", "{} x", "not valid JSON");
    static const char with_nul[] = "{\"a\":{}}\0 ";
    expect_refused("NUL inside the header", image_raw(sizeof with_nul - 1, with_nul, sizeof with_nul - 1, NULL, 0),
                   desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE, "not valid JSON");
    char deep[6000];
    memset(deep, '[', sizeof deep - 1);
    deep[sizeof deep - 1] = '\0';
    expect_bad_header("nesting deeper than the parser allows", deep, "not valid JSON");
    expect_bad_header("duplicate tensor names",
                      "{\"conv.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"conv.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                      "same tensor twice");
    expect_bad_header("duplicate names by escape",
                      "{\"ab\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                      "\"\\u0061b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                      "same tensor twice");
    expect_bad_header("non-UTF-8 name",
                      "{\"conv\xff\xfe.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "UTF-8");
    expect_bad_header("overlong UTF-8 encoding in a name",
                      "{\"\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", "UTF-8");
    expect_bad_header("NUL escape in a name",
                      "{\"conv\\u0000.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                      "not valid JSON");
    expect_bad_header("metadata value not a string", "{\"__metadata__\":{\"format\":1}}", "are strings");
    expect_bad_header("metadata not an object", "{\"__metadata__\":[]}", "not an object");
}

static void test_entries(void)
{
    expect_bad_header("entry not an object", "{\"conv.weight\":5}", "not an object");
    expect_bad_header("no dtype", "{\"conv.weight\":{\"shape\":[1],\"data_offsets\":[0,4]}}", "no \"dtype\"");
    expect_bad_header("dtype not a string", "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}",
                      "not a string");
    expect_bad_header("unknown dtype", "{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                      "unknown dtype \"F33\"");
    expect_bad_header("no shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "no \"shape\"");
    expect_bad_header("shape not an array", "{\"w\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,4]}}",
                      "not an array");
    expect_bad_header("negative dimension", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1,4],\"data_offsets\":[0,4]}}",
                      "negative");
    expect_bad_header("fractional dimension", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,4]}}",
                      "a real number");
    expect_bad_header("dimension past 2^63",
                      "{\"w\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
                      "\"data_offsets\":[0,4]}}",
                      "not valid JSON");
    expect_bad_header("nine dimensions",
                      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
                      "9 dimensions");
    expect_bad_header("absurd dimensions",
                      "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}",
                      "absurd");
    expect_bad_header("absurd dimensions beside a zero",
                      "{\"w\":{\"dtype\":\"F32\",\"shape\":[0,4294967296,4294967296],\"data_offsets\":[0,0]}}",
                      "absurd");
    expect_bad_header("elements x size overflows",
                      "{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952,4],\"data_offsets\":[0,0]}}", "needs");
    expect_bad_header("no data_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", "no \"data_offsets\"");
    expect_bad_header("one offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", "[begin, end]");
    expect_bad_header("offsets not integers", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,\"4\"]}}",
                      "non-negative integers");
    expect_bad_header("negative offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}",
                      "non-negative integers");
    expect_bad_header("offsets reversed", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}",
                      "end before they begin");
    expect_bad_header("offsets outside the data",
                      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[256,260]}}", "outside");
    expect_bad_header("offsets at 2^63-1",
                      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
                      "\"data_offsets\":[9223372036854775803,9223372036854775807]}}",
                      "outside");
    expect_bad_header("byte count mismatch", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}",
                      "hold 20 bytes");
    expect_bad_header("overlapping tensors",
                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[32,36]},"
                      "\"c\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[12,20]}}",
                      "overlap");

    /* A truncated file: the standard image cut inside its data. */
    spec s[4];
    standard_specs(s, "F32");
    blob b = standard_image(s, 4, NULL);
    b.n -= 5;
    expect_refused("file cut inside its data", b, desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE, "outside");
}

static void test_layer_mismatch(void)
{
    spec s[4];
    standard_specs(s, "F32");
    expect_refused("no expert kernels", standard_image(s + 1, 3, NULL), desc_std, "routing_fn",
                   CONDCONV_STATUS_TENSOR_NOT_FOUND, "'conv.weight'");
    spec no_bias[3] = {s[0], s[2], s[3]};
    expect_refused("no expert biases", standard_image(no_bias, 3, NULL), desc_std, "routing_fn",
                   CONDCONV_STATUS_TENSOR_NOT_FOUND, "'conv.bias'");
    expect_refused("no routing FC", standard_image(s, 2, NULL), desc_std, "routing_fn",
                   CONDCONV_STATUS_TENSOR_NOT_FOUND, "'routing_fn.weight'");
    standard_specs(s, "F32");
    expect_refused("wrong routing prefix", standard_image(s, 4, NULL), desc_std, "router",
                   CONDCONV_STATUS_TENSOR_NOT_FOUND, "'router.weight'");

    /* Same bytes, wrong shapes. */
    standard_specs(s, "F32");
    s[0].dims[0] = 3, s[0].dims[1] = 8;
    expect_refused("expert shape", standard_image(s, 4, NULL), desc_std, "routing_fn", CONDCONV_STATUS_TENSOR_MISMATCH,
                   "[3, 8]");
    standard_specs(s, "F32");
    s[0].rank = 5, s[0].dims[1] = COUT, s[0].dims[2] = CIN, s[0].dims[3] = KW, s[0].dims[4] = KH; /* kh, kw swapped */
    expect_refused("5-D experts with kh and kw swapped", standard_image(s, 4, NULL), desc_std, "routing_fn",
                   CONDCONV_STATUS_TENSOR_MISMATCH, "[2, 3, 2, 2, 1]");
    standard_specs(s, "F32");
    s[1].dims[0] = COUT, s[1].dims[1] = E;
    expect_refused("bias shape", standard_image(s, 4, NULL), desc_std, "routing_fn", CONDCONV_STATUS_TENSOR_MISMATCH,
                   "'conv.bias'");
    standard_specs(s, "F32");
    s[2].rank = 1, s[2].dims[0] = (long long)E * CIN;
    expect_refused("routing weight shape", standard_image(s, 4, NULL), desc_std, "routing_fn",
                   CONDCONV_STATUS_TENSOR_MISMATCH, "'routing_fn.weight'");
    standard_specs(s, "F32");
    s[3].rank = 2, s[3].dims[0] = 1, s[3].dims[1] = E;
    expect_refused("routing bias shape", standard_image(s, 4, NULL), desc_std, "routing_fn",
                   CONDCONV_STATUS_TENSOR_MISMATCH, "'routing_fn.bias'");
    standard_specs(s, "F32");
    s[0].dtype = "I32";
    expect_refused("integer experts", standard_image(s, 4, NULL), desc_std, "routing_fn",
                   CONDCONV_STATUS_TENSOR_MISMATCH, "I32");

    /* A file of E=2 experts for a descriptor of 3. */
    standard_specs(s, "F32");
    condconv_layer_desc_t three = make_desc(3, 1, CONDCONV_ROUTING_SIGMOID);
    expect_refused("expert count", standard_image(s, 4, NULL), three, "routing_fn", CONDCONV_STATUS_TENSOR_MISMATCH,
                   "E=3");
    condconv_layer_desc_destroy(three);
    /* Biases in the file that the descriptor would drop. */
    condconv_layer_desc_t unbiased = make_desc(E, 0, CONDCONV_ROUTING_SIGMOID);
    expect_refused("biases the descriptor lacks", standard_image(s, 4, NULL), unbiased, "routing_fn",
                   CONDCONV_STATUS_TENSOR_MISMATCH, "has none");
    condconv_layer_desc_destroy(unbiased);
}

/* F32 tensors loaded into an f16 or bf16 layer are rounded to its dtype:
 * the layer computes exactly what a layer made from the rounded values
 * computes (condconv_convert rounds the same way). */
static void test_half_layers(void)
{
    static const condconv_dtype dtypes[] = {CONDCONV_DTYPE_F16, CONDCONV_DTYPE_BF16};
    /* Values that neither half type holds exactly, so rounding happens. */
    float saved[N_EXPERTS];
    memcpy(saved, experts, sizeof saved);
    for (int i = 0; i < N_EXPERTS; ++i) experts[i] += (float)i / 3000.0f + 1.0f / 7.0f;
    spec s[4];
    standard_specs(s, "F32");
    for (int d = 0; d < 2; ++d) {
        condconv_layer_desc_t half = make_desc(E, 1, CONDCONV_ROUTING_SIGMOID);
        EXPECT_OK(condconv_layer_desc_set_format(half, dtypes[d], CONDCONV_LAYOUT_NCHW));
        blob b = standard_image(s, 4, NULL);
        condconv_layer_t loaded = NULL, direct = NULL;
        EXPECT_OK(condconv_layer_create_from_safetensors_memory(ctx, half, b.p, b.n, "conv", "routing_fn", &loaded));
        free(b.p);
        uint16_t h_experts[N_EXPERTS], h_bias[N_BIAS], h_rw[N_RW], h_rb[N_RB];
        EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, experts, dtypes[d], h_experts, (size_t)N_EXPERTS));
        EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, expert_bias, dtypes[d], h_bias, (size_t)N_BIAS));
        EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, routing_weight, dtypes[d], h_rw, (size_t)N_RW));
        EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, routing_bias, dtypes[d], h_rb, (size_t)N_RB));
        const condconv_params params = {h_experts, h_bias, h_rw, h_rb};
        EXPECT_OK(condconv_layer_create(ctx, half, &params, &direct));
        enum { N = 2, H = 3, W = 5, HO = 3, WO = 4, X_N = N * CIN * H * W };
        float x32[X_N];
        tu_fill_uniform(x32, (size_t)X_N, -1.0f, 1.0f);
        uint16_t x[X_N], y_loaded[N * COUT * HO * WO], y_direct[N * COUT * HO * WO];
        float a_loaded[N * E], a_direct[N * E];
        EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, x32, dtypes[d], x, (size_t)X_N));
        EXPECT_OK(condconv_forward_cpu(loaded, N, H, W, x, y_loaded, NULL, a_loaded));
        EXPECT_OK(condconv_forward_cpu(direct, N, H, W, x, y_direct, NULL, a_direct));
        EXPECT(tu_same_bytes(y_loaded, y_direct, sizeof y_loaded) && tu_same_bytes(a_loaded, a_direct, sizeof a_loaded),
               "%s layer: loaded from F32 tensors computes differently from one made of the rounded values",
               d ? "bf16" : "f16");
        condconv_layer_destroy(loaded);
        condconv_layer_destroy(direct);
        condconv_layer_desc_destroy(half);
    }
    memcpy(experts, saved, sizeof saved);
}

static void test_arguments(void)
{
    spec s[4];
    standard_specs(s, "F32");
    blob b = standard_image(s, 4, NULL);
    condconv_layer_t layer = SENTINEL;
    EXPECT_STATUS(condconv_layer_create_from_safetensors_memory(ctx, desc_std, NULL, b.n, "conv", "routing_fn", &layer),
                  CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(condconv_layer_create_from_safetensors_memory(ctx, desc_std, b.p, b.n, NULL, "routing_fn", &layer),
                  CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(condconv_layer_create_from_safetensors_memory(ctx, desc_std, b.p, b.n, "conv", NULL, &layer),
                  CONDCONV_STATUS_NULL_POINTER);
    EXPECT(strstr(condconv_last_error(), "routing_prefix") != NULL, "message: %s", condconv_last_error());
    EXPECT_STATUS(condconv_layer_create_from_safetensors_memory(NULL, desc_std, b.p, b.n, "conv", "routing_fn", &layer),
                  CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(condconv_layer_create_from_safetensors_memory(ctx, desc_std, b.p, b.n, "conv", "routing_fn", NULL),
                  CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(condconv_layer_create_from_safetensors(ctx, desc_std, NULL, "conv", "routing_fn", &layer),
                  CONDCONV_STATUS_NULL_POINTER);
    condconv_layer_desc_t unset;
    EXPECT_OK(condconv_layer_desc_create(&unset));
    EXPECT_STATUS(condconv_layer_create_from_safetensors_memory(ctx, unset, b.p, b.n, "conv", "routing_fn", &layer),
                  CONDCONV_STATUS_BAD_SIZE);
    condconv_layer_desc_destroy(unset);
    EXPECT(layer == SENTINEL, "a refused call wrote the layer");
    free(b.p);
}

/* ------------------------------------------------------------------ */
/* Valid files                                                         */

/* y of `layer` and of a layer made from the f32 arrays (routing bias
 * zeros when zero_routing_bias) on the same input must match bit for bit. */
static void expect_same_as_arrays(const char *what, condconv_layer_t layer, int zero_routing_bias)
{
    static const float zeros[N_RB];
    const condconv_params params = {experts, expert_bias, routing_weight, zero_routing_bias ? zeros : routing_bias};
    condconv_layer_t want_layer;
    if (!EXPECT_OK(condconv_layer_create(ctx, desc_std, &params, &want_layer))) return;
    enum { N = 2, H = 3, W = 5, WO = W - KW + 1 };
    float x[N * CIN * H * W], y[N * COUT * H * WO], y_want[N * COUT * H * WO], a[N * E], a_want[N * E];
    tu_fill_uniform(x, sizeof x / sizeof x[0], -2.0f, 2.0f);
    tu_fill_nan(y, sizeof y / sizeof y[0]);
    EXPECT_OK(condconv_forward_cpu(layer, N, H, W, x, y, NULL, a));
    EXPECT_OK(condconv_forward_cpu(want_layer, N, H, W, x, y_want, NULL, a_want));
    EXPECT(tu_compare(what, y, y_want, NULL, sizeof y / sizeof y[0], 0.0, 0.0) == 0, "%s: outputs differ", what);
    EXPECT(tu_compare(what, a, a_want, NULL, (size_t)N * E, 0.0, 0.0) == 0, "%s: routing weights differ", what);
    condconv_layer_destroy(want_layer);
}

static void load_and_compare(const char *what, blob b, int zero_routing_bias)
{
    condconv_layer_t layer = NULL;
    if (EXPECT_OK(
            condconv_layer_create_from_safetensors_memory(ctx, desc_std, b.p, b.n, "conv", "routing_fn", &layer))) {
        expect_same_as_arrays(what, layer, zero_routing_bias);
        condconv_layer_destroy(layer);
    }
    free(b.p);
}

static void test_round_trip(void)
{
    static const char *dtypes[] = {"F32", "F16", "BF16"};
    for (int d = 0; d < 3; ++d) {
        spec s[4];
        standard_specs(s, dtypes[d]);
        unsigned char data[4 * (N_EXPERTS + N_BIAS + N_RW + N_RB)];
        const size_t n = encode(dtypes[d], data);
        char header[4096], what[64];
        header_of(s, 4, "\"__metadata__\":{\"format\":\"pt\"}", header, sizeof header);
        snprintf(what, sizeof what, "%s round trip", dtypes[d]);
        load_and_compare(what, image(header, data, n), 0);
    }
    /* timm's flattened experts and the 5-D layout are the same bytes. */
    spec s[4];
    standard_specs(s, "F32");
    s[0].rank = 5, s[0].dims[1] = COUT, s[0].dims[2] = CIN, s[0].dims[3] = KH, s[0].dims[4] = KW;
    load_and_compare("5-D experts", standard_image(s, 4, NULL), 0);
    /* nn.Linear(bias=False): no routing bias means zeros. */
    standard_specs(s, "F32");
    load_and_compare("no routing bias", standard_image(s, 3, NULL), 1);
    /* Other tensors, gaps, an empty tensor and padding spaces after the JSON are fine. */
    standard_specs(s, "F32");
    spec more[6] = {s[0], s[1], s[2], s[3], {"step", "I32", 0, {0}, 0, 0}, {"empty", "F32", 2, {0, 7}, 0, 0}};
    lay_out(more, 6);
    char header[4096];
    header_of(more, 6, NULL, header, sizeof header);
    const size_t header_len = strlen(header);
    snprintf(header + header_len, sizeof header - header_len, "%s", "      ");
    static unsigned char data[4 * (N_EXPERTS + N_BIAS + N_RW + N_RB) + 4];
    encode("F32", data);
    load_and_compare("extra tensors", image(header, data, sizeof data), 0);

    /* External routing needs no routing prefix and ignores the FC. */
    condconv_layer_desc_t ext = make_desc(E, 1, CONDCONV_ROUTING_EXTERNAL);
    standard_specs(s, "F32");
    blob b = standard_image(s, 2, NULL);
    condconv_layer_t layer;
    if (EXPECT_OK(condconv_layer_create_from_safetensors_memory(ctx, ext, b.p, b.n, "conv", NULL, &layer)))
        condconv_layer_destroy(layer);
    free(b.p);
    condconv_layer_desc_destroy(ext);
}

/* Header lengths within 8 bytes of the end of the image, on both sides, and
 * data sections within 8 bytes of what the tensors need: the boundary
 * arithmetic of the length field (size - 8 - header_len) at every position
 * of the window. The header is JSON followed by spaces, so that it stays
 * valid JSON wherever the length field ends it; the bytes after it are the
 * data section. */
static void test_header_end_window(void)
{
    static const char json[] = "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    static const char json_empty[] = "{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}";
    enum { PAD = 16 };
    for (int variant = 0; variant < 2; ++variant) {
        const char *text = variant ? json_empty : json;
        const size_t j = strlen(text), size = 8 + j + PAD;
        const size_t need = variant ? 0 : 4; /* data bytes the tensor needs */
        char padded[sizeof json + PAD];      /* the JSON, then PAD spaces */
        snprintf(padded, sizeof padded, "%-*s", (int)(j + PAD), text);
        /* The header ends `end_at` bytes before the end of the image (negative: after it). */
        for (int end_at = -8; end_at <= 8; ++end_at) {
            const unsigned long long len = (unsigned long long)((long long)(size - 8) - end_at);
            blob b = image_raw(len, padded, j + PAD, NULL, 0);
            char what[96];
            snprintf(what, sizeof what, "header ends %d byte(s) %s the end (%s)", end_at < 0 ? -end_at : end_at,
                     end_at < 0 ? "past" : "before", variant ? "empty tensor" : "4-byte tensor");
            if (end_at < 0) {
                expect_refused(what, b, desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE, "runs past the end");
            } else if ((size_t)end_at < need) {
                expect_refused(what, b, desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE, "data section");
            } else {
                /* The parser accepts it, and the tensor's bytes are the first of the data section. */
                cc_st_file f;
                const condconv_status st = cc_st_parse(b.p, b.n, "memory image", &f, "test");
                EXPECT(st == CONDCONV_STATUS_SUCCESS, "%s: cc_st_parse returned %s (%s)", what,
                       condconv_status_string(st), condconv_last_error());
                if (st == CONDCONV_STATUS_SUCCESS) {
                    const cc_st_tensor *t = cc_st_find(&f, "t");
                    EXPECT(t != NULL && t->data == b.p + 8 + len && t->end - t->begin == need,
                           "%s: tensor 't' is not where the header put it", what);
                    cc_st_release(&f);
                }
                printf("  %-40s accepted\n", what);
                free(b.p);
            }
        }
    }
    /* The layer's own file, its data section cut 0 to 8 bytes short. */
    spec s[4];
    standard_specs(s, "F32");
    char header[4096];
    header_of(s, 4, NULL, header, sizeof header);
    unsigned char data[4 * (N_EXPERTS + N_BIAS + N_RW + N_RB)];
    const size_t n = encode("F32", data);
    for (size_t cut = 0; cut <= 8; ++cut) {
        char what[64];
        snprintf(what, sizeof what, "data section %zu byte(s) short", cut);
        if (cut == 0)
            load_and_compare(what, image(header, data, n), 0);
        else
            expect_refused(what, image(header, data, n - cut), desc_std, "routing_fn", CONDCONV_STATUS_BAD_FILE,
                           "data section");
    }
}

/* Exact conversion of the special values of each format, via the parser. */
static void test_conversion(void)
{
    static const unsigned short half[] = {0x0000, 0x8000, 0x3C00, 0xC000, 0x0001, 0x03FF,
                                          0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x3555};
    const float half_want[] = {0.0f,     -0.0f,    1.0f,     -2.0f,     0x1p-24f,   1023 * 0x1p-24f,
                               0x1p-14f, 65504.0f, INFINITY, -INFINITY, 0x1.554p-2f};
    static const unsigned short bf[] = {0x3F80, 0xC040, 0x0001, 0x7F7F, 0x7F80, 0x3EAB};
    const float bf_want[] = {1.0f, -3.0f, 0x1p-133f, 0x1.FEp127f, INFINITY, 0x1.56p-2f};
    enum { NH = sizeof half / sizeof half[0], NB = sizeof bf / sizeof bf[0] };
    unsigned char data[2 * (NH + NB + 1)];
    for (size_t i = 0; i < NH; ++i)
        data[2 * i] = (unsigned char)half[i], data[2 * i + 1] = (unsigned char)(half[i] >> 8);
    for (size_t i = 0; i < NB; ++i)
        data[2 * (NH + i)] = (unsigned char)bf[i], data[2 * (NH + i) + 1] = (unsigned char)(bf[i] >> 8);
    data[sizeof data - 2] = 0x00, data[sizeof data - 1] = 0x7E; /* F16 NaN, the last element */
    char header[512];
    snprintf(header, sizeof header,
             "{\"__metadata__\":{\"k\":\"v\"},\"h\":{\"dtype\":\"F16\",\"shape\":[%d],\"data_offsets\":[0,%d]},"
             "\"b\":{\"dtype\":\"BF16\",\"shape\":[%d],\"data_offsets\":[%d,%d]},"
             "\"nan\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[%d,%d]}}",
             NH, 2 * NH, NB, 2 * NH, 2 * (NH + NB), 2 * (NH + NB), 2 * (NH + NB) + 2);
    blob b = image(header, data, sizeof data);
    cc_st_file f;
    if (!EXPECT_OK(cc_st_parse(b.p, b.n, "memory image", &f, "test"))) {
        free(b.p);
        return;
    }
    EXPECT(f.count == 3, "%zu tensors", f.count);
    EXPECT(cc_st_meta_get(&f, "k") && strcmp(cc_st_meta_get(&f, "k"), "v") == 0, "metadata k");
    EXPECT(cc_st_meta_get(&f, "absent") == NULL, "metadata absent");
    float got[NH];
    const cc_st_tensor *h = cc_st_find(&f, "h"), *bt = cc_st_find(&f, "b"), *nan = cc_st_find(&f, "nan");
    EXPECT(h && bt && nan, "tensors missing");
    if (h && bt && nan) {
        EXPECT(nan->rank == 0 && nan->elems == 1, "a rank-0 tensor has one element");
        EXPECT_OK(cc_st_to_f32(h, got, "test"));
        for (int i = 0; i < NH; ++i)
            EXPECT(tu_same_bytes(&got[i], &half_want[i], sizeof(float)), "F16 0x%04x -> %a, expected %a", half[i],
                   (double)got[i], (double)half_want[i]);
        EXPECT_OK(cc_st_to_f32(bt, got, "test"));
        for (int i = 0; i < NB; ++i)
            EXPECT(tu_same_bytes(&got[i], &bf_want[i], sizeof(float)), "BF16 0x%04x -> %a, expected %a", bf[i],
                   (double)got[i], (double)bf_want[i]);
        EXPECT_OK(cc_st_to_f32(nan, got, "test"));
        EXPECT(isnan(got[0]), "F16 0x7e00 -> %g, expected NaN", (double)got[0]);
    }
    cc_st_release(&f);
    free(b.p);
}

static void test_files(void)
{
    static const char path[] = "test_safetensors_hostile.tmp.safetensors";
    condconv_layer_t layer = SENTINEL;
    EXPECT_STATUS(
        condconv_layer_create_from_safetensors(ctx, desc_std, "no/such/file.safetensors", "conv", "routing_fn", &layer),
        CONDCONV_STATUS_IO_ERROR);
    EXPECT(strstr(condconv_last_error(), "no/such/file.safetensors"), "message: %s", condconv_last_error());
    EXPECT_STATUS(condconv_layer_create_from_safetensors(ctx, desc_std, ".", "conv", "routing_fn", &layer),
                  CONDCONV_STATUS_IO_ERROR);
    EXPECT(strstr(condconv_last_error(), "not a regular file"), "message: %s", condconv_last_error());
    EXPECT(layer == SENTINEL, "a refused call wrote the layer");

    spec s[4];
    standard_specs(s, "BF16");
    unsigned char data[4 * (N_EXPERTS + N_BIAS + N_RW + N_RB)];
    const size_t n = encode("BF16", data);
    char header[4096];
    header_of(s, 4, NULL, header, sizeof header);
    blob b = image(header, data, n);
    for (int cut = 0; cut < 2; ++cut) {
        FILE *fp = fopen(path, "wb");
        EXPECT(fp != NULL, "cannot write %s", path);
        if (fp == NULL) break;
        fwrite(b.p, 1, cut ? b.n - 1 : b.n, fp);
        fclose(fp);
        layer = SENTINEL;
        const condconv_status st =
            condconv_layer_create_from_safetensors(ctx, desc_std, path, "conv", "routing_fn", &layer);
        if (cut) {
            EXPECT(st == CONDCONV_STATUS_BAD_FILE, "truncated file on disk: %s", condconv_status_string(st));
            EXPECT(strstr(condconv_last_error(), path) != NULL, "the message names the file: %s",
                   condconv_last_error());
            EXPECT(layer == SENTINEL, "a refused call wrote the layer");
        } else if (EXPECT_OK(st)) {
            expect_same_as_arrays("BF16 from disk", layer, 0);
            condconv_layer_destroy(layer);
        }
    }
    remove(path);
    free(b.p);
}

int main(void)
{
    tu_seed_from_env();
    for (int i = 0; i < N_EXPERTS; ++i) experts[i] = (float)(i % 15 - 7) / 8.0f;
    for (int i = 0; i < N_BIAS; ++i) expert_bias[i] = (float)(i % 5 - 2) / 8.0f;
    for (int i = 0; i < N_RW; ++i) routing_weight[i] = (float)(3 - i) / 4.0f;
    for (int i = 0; i < N_RB; ++i) routing_bias[i] = (float)(i ? 1 : -1) / 8.0f;
    if (!EXPECT_OK(condconv_context_create(&ctx, CONDCONV_DEVICE_CPU))) return tu_finish("test_safetensors_hostile");
    desc_std = make_desc(E, 1, CONDCONV_ROUTING_SIGMOID);

    test_framing();
    test_header_end_window();
    test_json();
    test_entries();
    test_layer_mismatch();
    test_arguments();
    test_round_trip();
    test_conversion();
    test_half_layers();
    test_files();

    condconv_layer_desc_destroy(desc_std);
    condconv_context_destroy(ctx);
    return tu_finish("test_safetensors_hostile");
}
