/* f16 and bf16 conversions (host/dtype.c, public as condconv_convert)
 * against an independent rule: the nearest representable value by
 * exhaustive search over all 65536 encodings, ties to the even encoding,
 * computed in double. Plus every encoding's round trip, the special values
 * (signed zeros, infinities, NaN quieted, overflow, subnormals, the
 * smallest ties), and condconv_convert's argument checks. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "test_util.h"

typedef struct table {
    double value[65536]; /* finite encodings only; others marked by `finite` */
    int finite[65536];
    uint16_t sorted[65536]; /* non-negative finite encodings, ascending */
    int sorted_count;
} table;

static table f16_table, bf16_table;
static const table *sort_table;

static int compare_encodings(const void *a, const void *b)
{
    const double x = sort_table->value[*(const uint16_t *)a], y = sort_table->value[*(const uint16_t *)b];
    return (x > y) - (x < y);
}

static void build(table *t, float (*decode)(uint16_t))
{
    t->sorted_count = 0;
    for (uint32_t b = 0; b < 65536u; ++b) {
        const float v = decode((uint16_t)b);
        t->finite[b] = isfinite(v);
        t->value[b] = v;
        /* +0 only (not -0) among the non-negative encodings: one per value. */
        if (t->finite[b] && !signbit(v)) t->sorted[t->sorted_count++] = (uint16_t)b;
    }
    sort_table = t;
    qsort(t->sorted, (size_t)t->sorted_count, sizeof t->sorted[0], compare_encodings);
}

/* The encoding a correct round-to-nearest-even gives for v, by search. */
static uint16_t nearest(const table *t, double v, uint16_t inf_bits)
{
    const uint16_t sign = signbit(v) ? 0x8000u : 0u;
    const double a = fabs(v);
    const double max = t->value[t->sorted[t->sorted_count - 1]];
    const double next = t->value[t->sorted[t->sorted_count - 1]] +
                        (max - t->value[t->sorted[t->sorted_count - 2]]); /* where the next binade would start */
    /* Beyond max + half an ulp rounds to infinity (the halfway point itself
     * goes to the even neighbour, which is infinity's encoding pattern). */
    if (a >= (max + next) / 2.0) return (uint16_t)(sign | inf_bits);
    int lo = 0, hi = t->sorted_count - 1;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (t->value[t->sorted[mid]] <= a)
            lo = mid;
        else
            hi = mid;
    }
    const uint16_t below = t->sorted[lo], above = t->sorted[hi];
    const double d_below = a - t->value[below], d_above = t->value[above] - a;
    uint16_t pick;
    if (a >= t->value[above] || d_above < d_below)
        pick = above;
    else if (d_below < d_above)
        pick = below;
    else
        pick = (below & 1u) ? above : below; /* a tie: the even encoding */
    return (uint16_t)(sign | pick);
}

static float bits_float(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static void check_type(const char *name, const table *t, uint16_t (*encode)(float), float (*decode)(uint16_t),
                       uint16_t inf_bits)
{
    int bad = 0;
    /* Every encoding survives decode -> encode (NaN as a NaN). */
    for (uint32_t b = 0; b < 65536u && bad < 5; ++b) {
        const float v = decode((uint16_t)b);
        const uint16_t back = encode(v);
        const int ok = isnan(v) ? isnan(decode(back)) && (back & 0x8000u) == (b & 0x8000u) : back == b;
        if (!ok) {
            EXPECT(0, "%s: encoding 0x%04x decodes to %g and encodes back to 0x%04x", name, (unsigned)b, (double)v,
                   (unsigned)back);
            ++bad;
        }
    }
    /* Every tie between neighbours goes to the even encoding; just off the
     * tie goes to the nearer one. Ties are exact in binary32 for both types. */
    for (int i = 0; i + 1 < t->sorted_count && bad < 5; ++i) {
        const uint16_t lo = t->sorted[i], hi = t->sorted[i + 1];
        const float mid = (float)((t->value[lo] + t->value[hi]) / 2.0);
        if ((double)mid != (t->value[lo] + t->value[hi]) / 2.0) continue; /* not representable: skip */
        const uint16_t even = (lo & 1u) ? hi : lo;
        const float up = nextafterf(mid, INFINITY), down = nextafterf(mid, 0.0f);
        if (encode(mid) != even || encode(up) != hi || encode(down) != lo || encode(-mid) != (even | 0x8000u)) {
            EXPECT(0, "%s: around the tie %.9g between 0x%04x and 0x%04x: %04x %04x %04x", name, (double)mid,
                   (unsigned)lo, (unsigned)hi, (unsigned)encode(down), (unsigned)encode(mid), (unsigned)encode(up));
            ++bad;
        }
    }
    /* Random floats over the whole range, against the search. */
    for (int i = 0; i < 400000 && bad < 5; ++i) {
        const uint32_t bits = (uint32_t)tu_rng_u64();
        const float v = bits_float(bits);
        if (isnan(v)) continue;
        const uint16_t want = isinf(v) ? (uint16_t)((signbit(v) ? 0x8000u : 0u) | inf_bits) : nearest(t, v, inf_bits);
        const uint16_t got = encode(v);
        if (got != want) {
            EXPECT(0, "%s: %.9g (0x%08x) encodes to 0x%04x, nearest-even is 0x%04x", name, (double)v, (unsigned)bits,
                   (unsigned)got, (unsigned)want);
            ++bad;
        }
    }
    /* NaN stays NaN, quieted, sign kept. */
    const float snan = bits_float(0xFF800001u), qnan = bits_float(0x7FC00000u);
    EXPECT(isnan(decode(encode(snan))) && (encode(snan) & 0x8000u), "%s: a signalling -NaN did not stay NaN", name);
    EXPECT(isnan(decode(encode(qnan))), "%s: quiet NaN lost", name);
    EXPECT(encode(-0.0f) == 0x8000u && encode(0.0f) == 0, "%s: signed zeros", name);
    EXPECT(encode(INFINITY) == inf_bits && encode(-INFINITY) == (inf_bits | 0x8000u), "%s: infinities", name);
}

static void check_specials(void)
{
    /* binary16: largest finite 65504; 65520 is the tie to 65536 = infinity. */
    EXPECT(cc_f32_to_f16(65504.0f) == 0x7BFFu, "65504");
    EXPECT(cc_f32_to_f16(65519.99f) == 0x7BFFu, "just below the overflow tie");
    EXPECT(cc_f32_to_f16(65520.0f) == 0x7C00u, "the overflow tie goes to infinity");
    EXPECT(cc_f32_to_f16(1e30f) == 0x7C00u && cc_f32_to_f16(-1e30f) == 0xFC00u, "overflow");
    /* Subnormals: 2^-24 is the smallest; 2^-25 ties to 0 (even); 3*2^-25 ties to 2*2^-24 (even). */
    EXPECT(cc_f32_to_f16(ldexpf(1.0f, -24)) == 0x0001u, "smallest subnormal");
    EXPECT(cc_f32_to_f16(ldexpf(1.0f, -25)) == 0x0000u, "2^-25 rounds to zero");
    EXPECT(cc_f32_to_f16(nextafterf(ldexpf(1.0f, -25), 1.0f)) == 0x0001u, "just above 2^-25");
    EXPECT(cc_f32_to_f16(3.0f * ldexpf(1.0f, -25)) == 0x0002u, "1.5 * 2^-24 ties to even");
    EXPECT(cc_f32_to_f16(ldexpf(1023.5f, -24)) == 0x0400u, "the top subnormal tie rounds up to the smallest normal");
    EXPECT(cc_f16_to_f32(0x0001u) == ldexpf(1.0f, -24) && cc_f16_to_f32(0x03FFu) == ldexpf(1023.0f, -24),
           "subnormal decode");
    EXPECT(cc_f16_to_f32(0x3C00u) == 1.0f && cc_f16_to_f32(0xC000u) == -2.0f, "normal decode");
    /* bfloat16: the top 16 bits, rounded. */
    EXPECT(cc_f32_to_bf16(1.0f) == 0x3F80u && cc_f32_to_bf16(bits_float(0x3F808000u)) == 0x3F80u,
           "bf16 tie to even (down)");
    EXPECT(cc_f32_to_bf16(bits_float(0x3F818000u)) == 0x3F82u, "bf16 tie to even (up)");
    EXPECT(cc_f32_to_bf16(bits_float(0x7F7FFFFFu)) == 0x7F80u, "bf16 overflow to infinity");
    EXPECT(cc_round_to_dtype(0.1f, CONDCONV_DTYPE_F32) == 0.1f, "f32 rounding is the identity");
    EXPECT(cc_round_to_dtype(0.1f, CONDCONV_DTYPE_F16) == cc_f16_to_f32(cc_f32_to_f16(0.1f)), "f16 rounding");
}

static void check_convert_api(void)
{
    float f[8] = {0.1f, -2.5f, 65536.0f, 1e-8f, 3.0f, -0.0f, 7.75f, 1.0f / 3.0f};
    uint16_t h[8], want[8];
    for (int i = 0; i < 8; ++i) want[i] = cc_f32_to_f16(f[i]);
    EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, f, CONDCONV_DTYPE_F16, h, 8));
    EXPECT(memcmp(h, want, sizeof h) == 0, "condconv_convert f32 -> f16");
    float back[8];
    EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F16, h, CONDCONV_DTYPE_F32, back, 8));
    for (int i = 0; i < 8; ++i) EXPECT(back[i] == cc_f16_to_f32(h[i]), "f16 -> f32 element %d", i);
    uint16_t bf[8];
    EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F16, h, CONDCONV_DTYPE_BF16, bf, 8));
    for (int i = 0; i < 8; ++i) EXPECT(bf[i] == cc_f32_to_bf16(cc_f16_to_f32(h[i])), "f16 -> bf16 element %d", i);
    /* In place, narrowing: the same result as out of place. */
    float inplace[8];
    memcpy(inplace, f, sizeof f);
    EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, inplace, CONDCONV_DTYPE_F16, inplace, 8));
    EXPECT(tu_same_bytes(inplace, want, sizeof want), "in-place f32 -> f16");
    /* Refusals write nothing. */
    uint16_t untouched[8];
    memset(untouched, 0xA5, sizeof untouched);
    const uint16_t before = untouched[0];
    EXPECT_STATUS(condconv_convert(CONDCONV_DTYPE_F32, NULL, CONDCONV_DTYPE_F16, untouched, 8),
                  CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(condconv_convert(CONDCONV_DTYPE_F32, f, CONDCONV_DTYPE_F16, NULL, 8), CONDCONV_STATUS_NULL_POINTER);
    EXPECT_STATUS(condconv_convert((condconv_dtype)7, f, CONDCONV_DTYPE_F16, untouched, 8), CONDCONV_STATUS_BAD_VALUE);
    EXPECT_STATUS(condconv_convert(CONDCONV_DTYPE_F16, untouched, CONDCONV_DTYPE_F32, untouched, 4),
                  CONDCONV_STATUS_BAD_VALUE); /* widening in place */
    EXPECT_STATUS(condconv_convert(CONDCONV_DTYPE_F32, f, CONDCONV_DTYPE_F16, (unsigned char *)f + 2, 4),
                  CONDCONV_STATUS_BAD_VALUE); /* partial overlap */
    EXPECT(untouched[0] == before, "a refused conversion wrote its output");
    EXPECT(strstr(condconv_last_error(), "overlap") != NULL, "message: %s", condconv_last_error());
    EXPECT_OK(condconv_convert(CONDCONV_DTYPE_F32, NULL, CONDCONV_DTYPE_F16, NULL, 0));
    /* A count whose byte size overflows: refused before any element is touched (it used to run off the end). */
    untouched[0] = before;
    const float f0 = f[0];
    EXPECT_STATUS(condconv_convert(CONDCONV_DTYPE_F16, untouched, CONDCONV_DTYPE_F32, f, SIZE_MAX / 2),
                  CONDCONV_STATUS_SIZE_OVERFLOW);
    EXPECT_STATUS(condconv_convert(CONDCONV_DTYPE_F32, f, CONDCONV_DTYPE_F16, untouched, SIZE_MAX / 3),
                  CONDCONV_STATUS_SIZE_OVERFLOW);
    EXPECT_STATUS(condconv_convert(CONDCONV_DTYPE_F16, untouched, CONDCONV_DTYPE_BF16, untouched, SIZE_MAX),
                  CONDCONV_STATUS_SIZE_OVERFLOW);
    EXPECT(untouched[0] == before && f[0] == f0, "a refused conversion wrote its output");
    EXPECT(strstr(condconv_last_error(), "overflow") != NULL, "message: %s", condconv_last_error());
}

int main(void)
{
    tu_seed_from_env();
    build(&f16_table, cc_f16_to_f32);
    build(&bf16_table, cc_bf16_to_f32);
    check_type("f16", &f16_table, cc_f32_to_f16, cc_f16_to_f32, 0x7C00u);
    check_type("bf16", &bf16_table, cc_f32_to_bf16, cc_bf16_to_f32, 0x7F80u);
    check_specials();
    check_convert_api();
    return tu_finish("test_dtype");
}
