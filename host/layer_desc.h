/* The layer descriptor's contents, its validation, and the geometry of one
 * input shape (padding actually applied, output size, element counts). */
#ifndef CONDCONV_HOST_LAYER_DESC_H
#define CONDCONV_HOST_LAYER_DESC_H

#include <stddef.h>
#include <stdint.h>

#include "condconv.h"

struct condconv_layer_desc {
    condconv_layer_info info;
};

/* Element counts of one layer's parameters; all checked against overflow of
 * the byte counts in the layer's dtype. */
typedef struct cc_param_sizes {
    uint64_t filter_elems;         /* |W| = Cout * Cin/groups * kh * kw */
    uint64_t experts_elems;        /* E * |W| */
    uint64_t bias_elems;           /* E * Cout, or 0 without bias */
    uint64_t routing_weight_elems; /* E * Cin, or 0 with external routing */
    uint64_t routing_bias_elems;   /* E, or 0 with external routing */
} cc_param_sizes;

/* One input shape through one layer. */
typedef struct cc_geometry {
    int n, h, w;
    int out_h, out_w;
    int pad_top, pad_bottom, pad_left, pad_right;
    uint64_t x_elems;     /* N * Cin * H * W */
    uint64_t y_elems;     /* N * Cout * Ho * Wo */
    uint64_t alpha_elems; /* N * E */
} cc_geometry;

/* Element size in bytes of a dtype. */
size_t cc_dtype_size(condconv_dtype dtype);

/* Checks that every field of a descriptor is set and consistent: the
 * specific status and message of the first problem found. `func` names the
 * public entry point for the message. */
condconv_status cc_layer_info_validate(const condconv_layer_info *info, const char *func);

/* Parameter element counts; SIZE_OVERFLOW when a byte count overflows. */
condconv_status cc_param_sizes_make(const condconv_layer_info *info, cc_param_sizes *sizes, const char *func);

/* Geometry for an N x Cin x H x W input: BAD_SIZE for n/h/w <= 0,
 * EMPTY_OUTPUT when Ho or Wo <= 0, SIZE_OVERFLOW when a tensor's byte count
 * overflows size_t. The descriptor must already be valid. */
condconv_status cc_geometry_make(const condconv_layer_info *info, int n, int h, int w, cc_geometry *geom,
                                 const char *func);

#endif
