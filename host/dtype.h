/* Element types: binary16 (f16) and bfloat16 (bf16) to and from binary32,
 * round to nearest even, NaN kept NaN (quieted), overflow to infinity, f16
 * subnormals exact. The CPU reference converts half inputs to float exactly
 * (every f16 and bf16 value is a float), computes in double, and rounds its
 * results to the layer's dtype once, as the GPU kernels do. */
#ifndef CONDCONV_HOST_DTYPE_H
#define CONDCONV_HOST_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "condconv.h"

float cc_f16_to_f32(uint16_t bits);
uint16_t cc_f32_to_f16(float value);
float cc_bf16_to_f32(uint16_t bits);
uint16_t cc_f32_to_bf16(float value);

/* value rounded to the dtype and back: what storing it in that dtype keeps. */
float cc_round_to_dtype(float value, condconv_dtype dtype);

/* count elements of dtype at src -> float at dst (exact). */
void cc_dtype_load(condconv_dtype dtype, const void *src, float *dst, size_t count);
/* count floats at src -> dtype at dst (rounded to nearest even). */
void cc_dtype_store(condconv_dtype dtype, const float *src, void *dst, size_t count);

#endif
