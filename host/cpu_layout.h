/* The CPU path's format conversions: the reference works on f32 NCHW, so
 * condconv_forward_cpu, condconv_route_cpu and condconv_backward_cpu convert
 * a tensor in the layer's dtype and layout to that first (exactly: every f16
 * and bf16 value is a float) and transpose results back last. */
#ifndef CONDCONV_HOST_CPU_LAYOUT_H
#define CONDCONV_HOST_CPU_LAYOUT_H

#include <stdint.h>

#include "layer_desc.h"

/* [N][A][B] -> [N][B][A]: NHWC <-> NCHW with A, B = (H*W, C) or (C, H*W). */
void cc_cpu_transpose_planes(const float *src, float *dst, uint64_t n, uint64_t a, uint64_t b);

/* A tensor [N][C][plane] ([N][plane][C] for NHWC layers) in the layer's dtype
 * -> a new f32 NCHW buffer the caller frees (NULL when out of memory). */
float *cc_cpu_as_f32_nchw(const condconv_layer_info *info, const void *src, int n, int c, uint64_t plane);

#endif
