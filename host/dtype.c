/* f16 / bf16 <-> f32 conversions, bit by bit: the host has no half type in
 * C11, and the rounding must match the GPU's __float2half_rn /
 * __float2bfloat16_rn (round to nearest, ties to even). */
#include "dtype.h"

#include <stdint.h>
#include <string.h>

#include "error.h"
#include "formats.h"
#include "layer_desc.h"

/* The kernels' launchers take the public enums' values as plain ints. */
_Static_assert(CC_DTYPE_F32 == (int)CONDCONV_DTYPE_F32 && CC_DTYPE_F16 == (int)CONDCONV_DTYPE_F16 &&
                   CC_DTYPE_BF16 == (int)CONDCONV_DTYPE_BF16,
               "kernels/formats.h dtype codes");
_Static_assert(CC_LAYOUT_NCHW == (int)CONDCONV_LAYOUT_NCHW && CC_LAYOUT_NHWC == (int)CONDCONV_LAYOUT_NHWC,
               "kernels/formats.h layout codes");

static uint32_t float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

static float bits_float(uint32_t bits)
{
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

float cc_f16_to_f32(uint16_t bits)
{
    const uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    const uint32_t exponent = (bits >> 10) & 0x1Fu, mantissa = bits & 0x3FFu;
    if (exponent == 0x1Fu) return bits_float(sign | 0x7F800000u | mantissa << 13); /* inf, NaN (payload kept) */
    if (exponent != 0) return bits_float(sign | (exponent + 112u) << 23 | mantissa << 13);
    if (mantissa == 0) return bits_float(sign); /* signed zero */
    /* Subnormal: mantissa * 2^-24, exact in binary32. */
    const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
}

uint16_t cc_f32_to_f16(float value)
{
    const uint32_t bits = float_bits(value);
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    const uint32_t abs = bits & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((abs >> 13) & 0x3FFu)); /* NaN, quieted */
    if (abs >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* rounds to >= 65520: infinity */
    if (abs < 0x38800000u) {
        /* Result subnormal (or zero): the value in units of 2^-24, rounded to
         * nearest even. Below 2^-25 everything rounds to zero. */
        if (abs < 0x33000000u) return sign;
        const uint32_t exponent = abs >> 23;
        const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
        const uint32_t shift = 126u - exponent; /* 14 .. 24 */
        uint32_t half = mantissa >> shift;
        const uint32_t rest = mantissa & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
        return (uint16_t)(sign | half);
    }
    /* Normal: rebias the exponent, round the 13 dropped bits to nearest even;
     * a carry into the exponent is the correct result (up to infinity). */
    uint32_t half = ((abs >> 13) - (112u << 10));
    const uint32_t rest = abs & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
    return (uint16_t)(sign | half);
}

float cc_bf16_to_f32(uint16_t bits) { return bits_float((uint32_t)bits << 16); }

uint16_t cc_f32_to_bf16(float value)
{
    const uint32_t bits = float_bits(value);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((bits >> 16) | 0x40u); /* NaN, quieted */
    /* Round to nearest even on the 16 dropped bits; overflow carries into
     * the exponent and gives infinity, as it should. */
    const uint32_t rounded = bits + 0x7FFFu + ((bits >> 16) & 1u);
    return (uint16_t)(rounded >> 16);
}

float cc_round_to_dtype(float value, condconv_dtype dtype)
{
    switch (dtype) {
    case CONDCONV_DTYPE_F16: return cc_f16_to_f32(cc_f32_to_f16(value));
    case CONDCONV_DTYPE_BF16: return cc_bf16_to_f32(cc_f32_to_bf16(value));
    case CONDCONV_DTYPE_F32: break;
    }
    return value;
}

/* Halves are read and written with memcpy: a caller's buffer of halves need
 * only be as aligned as its bytes happen to be. */
void cc_dtype_load(condconv_dtype dtype, const void *src, float *dst, size_t count)
{
    const unsigned char *p = src;
    uint16_t h;
    switch (dtype) {
    case CONDCONV_DTYPE_F16:
        for (size_t i = 0; i < count; ++i, p += 2) {
            memcpy(&h, p, sizeof h);
            dst[i] = cc_f16_to_f32(h);
        }
        return;
    case CONDCONV_DTYPE_BF16:
        for (size_t i = 0; i < count; ++i, p += 2) {
            memcpy(&h, p, sizeof h);
            dst[i] = cc_bf16_to_f32(h);
        }
        return;
    case CONDCONV_DTYPE_F32: break;
    }
    if (count) memmove(dst, src, count * sizeof(float));
}

void cc_dtype_store(condconv_dtype dtype, const float *src, void *dst, size_t count)
{
    unsigned char *p = dst;
    uint16_t h;
    switch (dtype) {
    case CONDCONV_DTYPE_F16:
        for (size_t i = 0; i < count; ++i, p += 2) {
            h = cc_f32_to_f16(src[i]);
            memcpy(p, &h, sizeof h);
        }
        return;
    case CONDCONV_DTYPE_BF16:
        for (size_t i = 0; i < count; ++i, p += 2) {
            h = cc_f32_to_bf16(src[i]);
            memcpy(p, &h, sizeof h);
        }
        return;
    case CONDCONV_DTYPE_F32: break;
    }
    if (count) memmove(dst, src, count * sizeof(float));
}

condconv_status condconv_convert(condconv_dtype src_dtype, const void *src, condconv_dtype dst_dtype, void *dst,
                                 size_t count)
{
    static const char func[] = "condconv_convert";
    if (count == 0) return CONDCONV_STATUS_SUCCESS;
    CC_CHECK_NOT_NULL(src, func);
    CC_CHECK_NOT_NULL(dst, func);
    if ((unsigned)src_dtype > CONDCONV_DTYPE_BF16 || (unsigned)dst_dtype > CONDCONV_DTYPE_BF16)
        return cc_fail(CONDCONV_STATUS_BAD_VALUE, "%s: unknown dtype (source %d, destination %d)", func, (int)src_dtype,
                       (int)dst_dtype);
    /* Element by element through f32 (exact from a half type): in place
     * (dst == src) works when the elements do not grow, since each write then
     * lands on bytes already read; any other overlap is refused. */
    const size_t in_size = cc_dtype_size(src_dtype), out_size = cc_dtype_size(dst_dtype);
    /* No buffer of count elements can exist if its byte size overflows; the
     * overlap test below would wrap around and the loop run off the end. */
    const size_t wider = in_size > out_size ? in_size : out_size;
    if (count > SIZE_MAX / wider)
        return cc_fail(CONDCONV_STATUS_SIZE_OVERFLOW, "%s: %zu elements of %zu bytes overflow size_t", func, count,
                       wider);
    const unsigned char *in = src;
    unsigned char *out = dst;
    const int overlap = in < out + count * out_size && out < in + count * in_size;
    if (overlap && !(in == out && out_size <= in_size))
        return cc_fail(CONDCONV_STATUS_BAD_VALUE,
                       "%s: source and destination overlap (allowed only in place, and not when widening)", func);
    for (size_t i = 0; i < count; ++i) {
        float v;
        cc_dtype_load(src_dtype, in + i * in_size, &v, 1);
        cc_dtype_store(dst_dtype, &v, out + i * out_size, 1);
    }
    return CONDCONV_STATUS_SUCCESS;
}
