/* Golden vectors from timm (tests/data/golden_*.safetensors, written by
 * scripts/make_golden.py), read through the library's own safetensors
 * parser: the layer described by the file's metadata, the input x, timm's
 * routing weights alpha and output y, and the magnitude each output is
 * checked against. Shared by test_golden_cpu and test_golden_gpu. */
#ifndef CONDCONV_GOLDEN_UTIL_H
#define CONDCONV_GOLDEN_UTIL_H

#include <stddef.h>

#include "safetensors.h"
#include "test_util.h"

typedef struct golden {
    char path[1024];
    char name[64];
    char param_dtype[8]; /* how the parameters are stored: F32, F16 or BF16 */
    /* The dtype timm ran in (metadata run_dtype, F32 when absent): for F16 and
     * BF16, x and y are stored in it, and y_exact is timm in f32 on the same
     * rounded values. run_dtype_id is the matching condconv_dtype. */
    char run_dtype[8];
    condconv_dtype run_dtype_id;
    cc_st_file file;
    tu_layer_spec spec; /* sigmoid routing, no activation, as in timm's block */
    int n, h, w, out_h, out_w;
    size_t x_n, y_n, a_n;
    float *x, *y, *alpha; /* timm's input, output [N][Cout][Ho][Wo], routing weights [N][E] */
    float *y_exact;       /* half-precision runs only, else NULL */
    /* Per output: sum |alpha_e W_e x| + |sum alpha_e b_e|, the scale of any
     * f32 summation's rounding error (CPU reference on absolute values). */
    float *mag;
} golden;

/* Paths of the golden files in dir, sorted; returns how many (0 and a
 * message when none). Free with golden_free_list. */
int golden_list(const char *dir, char ***paths);
void golden_free_list(char **paths, int count);

/* Reads one file and checks it is complete; 0 on success, else prints why. */
int golden_load(const char *path, golden *g);
void golden_free(golden *g);

/* Loads every golden file of dir (at least `min_files` expected) and calls
 * check(ctx, g) for each; returns how many files there were. */
int golden_check_all(const char *dir, int min_files, condconv_context_t ctx,
                     void (*check)(condconv_context_t ctx, const golden *g));

/* A descriptor for the file's layer with the given routing (the caller
 * destroys it). */
condconv_layer_desc_t golden_desc(const golden *g, condconv_routing routing);

/* x in the file's run dtype and the given layout, malloc'd (exact: x holds
 * the dtype's values); and an output in that dtype and layout back to f32
 * NCHW floats, y_n of them. */
void *golden_x_in_format(const golden *g, condconv_layout layout);
void golden_y_from_format(const golden *g, const void *src, condconv_layout layout, float *y);

/* Tolerances of a half-precision run (u = 2^-11 for f16, 2^-8 for bf16),
 * all as |got - want| <= atol + rtol * mag:
 *  - against y_exact: the layer's own rounding (tu_dtype_tolerance), plus
 *    the 1e-5 * mag of timm's f32 summation;
 *  - against timm's half output: that, plus timm's own half rounding (its
 *    per-sample weights, bias mix and output each rounded once: 3u), and a
 *    relative L2 bound of twice the dtype's. */
void golden_half_tolerance(condconv_dtype dtype, int against_timm_half, double *atol, double *rtol, double *l2_max);

#endif
