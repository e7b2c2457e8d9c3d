/* Overflow-checked unsigned arithmetic for element and byte counts.
 * Each returns 0 and leaves *out unspecified when the result does not fit. */
#ifndef CONDCONV_HOST_CHECKED_MATH_H
#define CONDCONV_HOST_CHECKED_MATH_H

#include <stdint.h>

static inline int cc_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static inline int cc_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b > UINT64_MAX - a) return 0;
    *out = a + b;
    return 1;
}

/* a * b * c * d, all non-negative. */
static inline int cc_mul4_u64(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t *out)
{
    uint64_t ab, abc;
    return cc_mul_u64(a, b, &ab) && cc_mul_u64(ab, c, &abc) && cc_mul_u64(abc, d, out);
}

#endif
