/* Element types for the kernel tests of the CPU execution layer: f16 and
 * bf16 conversions in C (round to nearest even, as __float2half_rn and
 * __float2bfloat16_rn), device buffers of bytes with guard zones and a byte
 * offset (misaligned pointers for the kernels' scalar paths), and the
 * comparison of f32/f16/bf16 results with a double-precision reference.
 * All static: each test that includes it gets its own copy, and emu_util
 * stays as it is. */
#ifndef CONDCONV_EMU_DTYPE_H
#define CONDCONV_EMU_DTYPE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

#include "emu_util.h"
#include "formats.h"

static const int ed_dtypes[] = {CC_DTYPE_F32, CC_DTYPE_F16, CC_DTYPE_BF16};
#define ED_DTYPE_COUNT 3

static inline const char *ed_name(int dtype)
{
    return dtype == CC_DTYPE_F32 ? "f32" : dtype == CC_DTYPE_F16 ? "f16" : dtype == CC_DTYPE_BF16 ? "bf16" : "?";
}

static inline uint32_t ed_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float ed_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t ed_to_f16(float f)
{
    const uint32_t x = ed_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to at least 65536: Inf */
    if (ax < 0x38800000u) {                                   /* below 2^-14: a subnormal or zero */
        /* |f| * 2^24 < 2^10 is exact; rint rounds to nearest even (the default mode). */
        return (uint16_t)(sign | (uint32_t)rintf(fabsf(f) * 16777216.0f));
    }
    /* Rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even. */
    return (uint16_t)(sign | ((ax - 0x38000000u + 0xfffu + ((ax >> 13) & 1u)) >> 13));
}

static inline float ed_from_f16(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return ed_float(sign) + (sign ? -1.0f : 1.0f) * ldexpf((float)m, -24);
    if (e == 31) return ed_float(sign | 0x7f800000u | (m << 13));
    return ed_float(sign | ((e + 112u) << 23) | (m << 13));
}

static inline uint16_t ed_to_bf16(float f)
{
    const uint32_t x = ed_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static inline float ed_from_bf16(uint16_t h) { return ed_float((uint32_t)h << 16); }

static inline size_t ed_size(int dtype) { return dtype == CC_DTYPE_F32 ? 4 : 2; }

/* v rounded once to dtype, as a float. */
static inline float ed_round(int dtype, float v)
{
    if (dtype == CC_DTYPE_F16) return ed_from_f16(ed_to_f16(v));
    if (dtype == CC_DTYPE_BF16) return ed_from_bf16(ed_to_bf16(v));
    return v;
}

/* Host floats (already representable in dtype) -> dtype bytes, and back. */
static inline void ed_pack(int dtype, const float *src, void *dst, size_t n)
{
    if (dtype == CC_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *d = dst;
    for (size_t i = 0; i < n; ++i) d[i] = dtype == CC_DTYPE_F16 ? ed_to_f16(src[i]) : ed_to_bf16(src[i]);
}

static inline void ed_unpack(int dtype, const void *src, float *dst, size_t n)
{
    if (dtype == CC_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    const uint16_t *s = src;
    for (size_t i = 0; i < n; ++i) dst[i] = dtype == CC_DTYPE_F16 ? ed_from_f16(s[i]) : ed_from_bf16(s[i]);
}

/* v[0..n) rounded to dtype in place. */
static inline void ed_round_all(int dtype, float *v, size_t n)
{
    for (size_t i = 0; i < n; ++i) v[i] = ed_round(dtype, v[i]);
}

/* The same in emu_util's float-granular eu_buffers (offset in floats off a
 * 16-byte boundary), for tests built on them. */
/* A device buffer of n elements of the dtype (offset floats off a 16-byte
 * boundary, as eu_buffer_make), filled with v (already rounded). */
static inline eu_buffer ed_eu_upload(int dtype, const float *v, size_t n, int offset)
{
    const size_t size = ed_size(dtype);
    eu_buffer b = eu_buffer_make((n * size + 3) / 4, offset);
    unsigned char *bytes = (unsigned char *)eu_floats((n * size + 3) / 4 + 1);
    for (size_t i = 0; i < n; ++i) {
        if (dtype == CC_DTYPE_F32) {
            memcpy(bytes + 4 * i, &v[i], 4);
        } else {
            const uint16_t h = dtype == CC_DTYPE_F16 ? ed_to_f16(v[i]) : ed_to_bf16(v[i]);
            memcpy(bytes + 2 * i, &h, 2);
        }
    }
    if (n) EU_EXPECT(cudaMemcpy(b.data, bytes, n * size, cudaMemcpyHostToDevice) == cudaSuccess, "upload");
    free(bytes);
    return b;
}

/* A device buffer of n elements of the dtype, all bits set (NaN). */
static inline eu_buffer ed_eu_poisoned(int dtype, size_t n, int offset)
{
    eu_buffer b = eu_buffer_make((n * ed_size(dtype) + 3) / 4, offset);
    if (b.n) EU_EXPECT(cudaMemset(b.data, 0xff, b.n * 4) == cudaSuccess, "poison");
    return b;
}

/* The n elements of a dtype buffer as floats; 1 if the bytes after them up
 * to the buffer's end (the odd half of 16-bit data) are still poison. */
static inline int ed_eu_download(int dtype, const eu_buffer *b, float *v, size_t n)
{
    unsigned char *bytes = (unsigned char *)eu_floats(b->n + 1);
    EU_EXPECT(cudaMemcpy(bytes, b->data, b->n * 4, cudaMemcpyDeviceToHost) == cudaSuccess, "download");
    for (size_t i = 0; i < n; ++i) {
        if (dtype == CC_DTYPE_F32) {
            memcpy(&v[i], bytes + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, bytes + 2 * i, 2);
            v[i] = dtype == CC_DTYPE_F16 ? ed_from_f16(h) : ed_from_bf16(h);
        }
    }
    int tail_ok = 1;
    for (size_t i = n * ed_size(dtype); i < b->n * 4; ++i) tail_ok &= bytes[i] == 0xff;
    free(bytes);
    return tail_ok;
}

/* n uniform values in [lo, hi), each rounded to dtype: what the kernel gets
 * and what the reference computes with. */
static inline float *ed_random(int dtype, size_t n, float lo, float hi)
{
    float *p = eu_random(n, lo, hi);
    for (size_t i = 0; i < n; ++i) p[i] = ed_round(dtype, p[i]);
    return p;
}

/* Device bytes with guard zones: `data` is `offset` bytes past a 16-byte
 * boundary (one or two 16-bit elements off: the scalar and pair paths). The
 * guard pattern 0x5a.. is finite in every dtype, so a kernel that reads past
 * the end and writes back what it computed changes it; the data starts
 * poisoned (0xff..: NaN in every dtype). */
#define ED_GUARD 64
typedef struct ed_buffer {
    unsigned char *alloc, *data;
    size_t bytes, offset;
} ed_buffer;

static inline void ed_check(cudaError_t err, const char *what)
{
    if (err == cudaSuccess) return;
    fprintf(stderr, "FATAL: %s: %s\n", what, cudaGetErrorString(err));
    exit(1);
}

static inline void ed_poison(ed_buffer *b)
{
    if (b->bytes) ed_check(cudaMemset(b->data, 0xff, b->bytes), "cudaMemset(poison)");
}

static inline ed_buffer ed_buffer_make(size_t bytes, size_t offset)
{
    ed_buffer b;
    void *p = NULL;
    ed_check(cudaMalloc(&p, bytes + 2 * ED_GUARD + 16), "cudaMalloc");
    b.alloc = p;
    b.offset = offset;
    b.bytes = bytes;
    b.data = b.alloc + ED_GUARD + offset;
    ed_check(cudaMemset(b.alloc, 0x5a, ED_GUARD + offset), "cudaMemset(guard)");
    ed_check(cudaMemset(b.data + bytes, 0x5a, ED_GUARD + 16 - offset), "cudaMemset(guard)");
    ed_poison(&b);
    return b;
}

static inline void ed_buffer_free(ed_buffer *b)
{
    ed_check(cudaFree(b->alloc), "cudaFree");
    memset(b, 0, sizeof *b);
}

static inline void ed_upload(ed_buffer *b, const void *host)
{
    if (b->bytes) ed_check(cudaMemcpy(b->data, host, b->bytes, cudaMemcpyHostToDevice), "cudaMemcpy(up)");
}

static inline void ed_download(const ed_buffer *b, void *host)
{
    if (b->bytes) ed_check(cudaMemcpy(host, b->data, b->bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(down)");
}

/* n host floats rounded to dtype -> a device buffer `offset` bytes off. */
static inline ed_buffer ed_buffer_of(int dtype, const float *host, size_t n, size_t offset)
{
    ed_buffer b = ed_buffer_make(n * ed_size(dtype), offset);
    void *bytes = calloc(b.bytes ? b.bytes : 1, 1);
    if (bytes == NULL) exit(1);
    ed_pack(dtype, host, bytes, n);
    ed_upload(&b, bytes);
    free(bytes);
    return b;
}

/* The buffer's n elements as floats (exact: every dtype value is a float). */
static inline float *ed_fetch(int dtype, const ed_buffer *b, size_t n)
{
    void *bytes = calloc(b->bytes ? b->bytes : 1, 1);
    if (bytes == NULL) exit(1);
    ed_download(b, bytes);
    float *f = eu_floats(n);
    ed_unpack(dtype, bytes, f, n);
    free(bytes);
    return f;
}

static inline int ed_guards_intact(const ed_buffer *b, const char *what)
{
    unsigned char host[2 * ED_GUARD + 16];
    const size_t before = ED_GUARD + b->offset, after = ED_GUARD + 16 - b->offset;
    ed_check(cudaMemcpy(host, b->alloc, before, cudaMemcpyDeviceToHost), "cudaMemcpy(guard)");
    ed_check(cudaMemcpy(host + before, b->data + b->bytes, after, cudaMemcpyDeviceToHost), "cudaMemcpy(guard)");
    for (size_t i = 0; i < before + after; ++i)
        if (host[i] != 0x5a) {
            EU_EXPECT(0, "%s: the kernel wrote outside its %zu bytes (guard byte %zu %s the data)", what, b->bytes,
                      i < before ? before - i : i - before, i < before ? "before" : "after");
            return 0;
        }
    return 1;
}

/* Tolerance of a result in dtype against the double reference `want`, where
 * the kernel computes in f32 within f32_rtol * mag (mag NULL: |want|) of the
 * exact value and then rounds once to dtype:
 *   |got - want| <= atol + r * |want| + (1 + r) * f32_rtol * mag.
 * r is one ulp of the dtype relative to |want| at most: 2^-10 for f16 (11
 * significant bits), 2^-7 for bf16 (8), 0 for f32 (whose one rounding
 * f32_rtol already counts). Rounding to nearest errs by half an ulp of the
 * f32 value v, i.e. at most 2^-11 |v| (2^-8 for bf16) with
 * |v| <= |want| + f32_rtol * mag: the bound covers that twice over for the
 * |want| part, and by the (1 + r) factor for the rest. atol: below 2^-14 f16
 * has fixed steps of 2^-24 (subnormals), so a result near 0 may be off by
 * half of one; bf16 and f32 steps there are far below the 1e-30 kept as a
 * floor. NaN or Inf never passes. */
static inline size_t ed_compare(const char *what, int dtype, const float *got, const double *want, const double *mag,
                                size_t n, double f32_rtol)
{
    const double r = dtype == CC_DTYPE_F16 ? ldexp(1.0, -10) : dtype == CC_DTYPE_BF16 ? ldexp(1.0, -7) : 0.0;
    const double atol = dtype == CC_DTYPE_F16 ? ldexp(1.0, -24) : 1e-30;
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
        const double g = got[i], w = want[i], m = mag ? mag[i] : fabs(w);
        const double bound = atol + r * fabs(w) + (1.0 + r) * f32_rtol * m;
        if (!isfinite(g) || !(fabs(g - w) <= bound)) {
            if (bad < 5)
                fprintf(stderr, "  %s[%zu]: got %.9g, want %.9g (|diff| %.3g > bound %.3g)\n", what, i, g, w,
                        fabs(g - w), bound);
            ++bad;
        }
    }
    EU_EXPECT(bad == 0, "%s: %zu of %zu elements out of tolerance", what, bad, n);
    return bad;
}

#endif
