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
    cc_st_file file;
    tu_layer_spec spec; /* sigmoid routing, no activation, as in timm's block */
    int n, h, w, out_h, out_w;
    size_t x_n, y_n, a_n;
    float *x, *y, *alpha; /* timm's input, output [N][Cout][Ho][Wo], routing weights [N][E] */
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

#endif
