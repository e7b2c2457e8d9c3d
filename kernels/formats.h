/* Element types and activation layouts as the kernels' launchers take them:
 * plain ints equal to condconv_dtype and condconv_layout (host/dtype.c checks
 * the equality at compile time), so these headers need not include the
 * public one. */
#ifndef CONDCONV_KERNELS_FORMATS_H
#define CONDCONV_KERNELS_FORMATS_H

enum {
    CC_DTYPE_F32 = 0, /* float */
    CC_DTYPE_F16 = 1, /* __half */
    CC_DTYPE_BF16 = 2 /* __nv_bfloat16 */
};

enum {
    CC_LAYOUT_NCHW = 0, /* [N][C][H][W] */
    CC_LAYOUT_NHWC = 1  /* [N][H][W][C] */
};

/* Bytes of one element, 0 for an unknown dtype. */
static inline unsigned int cc_element_size(int dtype)
{
    return dtype == CC_DTYPE_F32 ? 4u : (dtype == CC_DTYPE_F16 || dtype == CC_DTYPE_BF16) ? 2u : 0u;
}

#endif
