/* Staging of a less-aligned x or y for the library calls that would touch
 * them directly (cudnn_grouped, mixture, gemm_batched).
 *
 * condconv_forward asks x and y only for their element's alignment (2 bytes
 * for f16/bf16), as PyTorch views and slices have. cuBLAS picks its fast
 * (tensor-core, 128-bit load) kernels only when A, B and C are 16-byte
 * aligned, falling back to slower ones otherwise (cuBLAS guide, "Tensor Core
 * Usage"); cuDNN engines state the byte alignment they need of each tensor
 * (CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT), 16 bytes for the vectorised ones, and
 * the engine condconv keeps was chosen at prepare on 256-byte-aligned
 * scratch. So 16 bytes is the line: a pointer the library would read or
 * write directly that is less aligned than that is copied into the
 * workspace first (x) or written there and copied out after (y). Our own
 * kernels take any element-aligned pointer (scalar paths below 16 bytes).
 *
 * Pure functions, so that a unit test checks the decision without a GPU. */
#ifndef CONDCONV_HOST_STAGING_H
#define CONDCONV_HOST_STAGING_H

#include <stddef.h>
#include <stdint.h>

/* Alignment cuBLAS and cuDNN get from condconv for x and y. */
#define CC_LIB_ALIGNMENT 16u

/* The alignment class of a forward: 0 when x and y are both
 * CC_LIB_ALIGNMENT-aligned, 1 otherwise. Plans choose per class. */
static inline int cc_align_class(const void *x, const void *y)
{
    return ((uintptr_t)x % CC_LIB_ALIGNMENT) != 0 || ((uintptr_t)y % CC_LIB_ALIGNMENT) != 0;
}

typedef struct cc_staging {
    int x; /* copy x into the workspace; the library reads the copy */
    int y; /* the library writes the workspace; copied into y after */
} cc_staging;

/* What to stage, given what the algorithm's library call would touch
 * directly (lib_reads_x: it reads the caller's x rather than a gathered
 * copy; lib_writes_y: it writes the caller's y rather than the workspace). */
static inline cc_staging cc_staging_decide(int lib_reads_x, int lib_writes_y, const void *x, const void *y)
{
    cc_staging s;
    s.x = lib_reads_x && ((uintptr_t)x % CC_LIB_ALIGNMENT) != 0;
    s.y = lib_writes_y && ((uintptr_t)y % CC_LIB_ALIGNMENT) != 0;
    return s;
}

#endif
