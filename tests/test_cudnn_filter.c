/* Which cuDNN forward algorithms a plan may run (host/cudnn_conv.c's
 * cc_cudnn_algo_allowed): no FFT or Winograd in any mode, TF32 included
 * (an H200 run measured 7e-3 relative error from a transform, above the
 * TF32 bound); strict f32 only FMA math; TF32 never ALLOW_CONVERSION (f16
 * operands); half data any tensor-op math of a direct algorithm. A pure
 * function: no GPU needed. */
#include <cudnn.h>
#include <stdio.h>

#include "cudnn_conv.h"
#include "test_util.h"

static const cudnnConvolutionFwdAlgo_t direct[] = {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                                                   CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                                                   CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_CONVOLUTION_FWD_ALGO_DIRECT};
static const cudnnConvolutionFwdAlgo_t transforms[] = {
    CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING, CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
    CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED};
static const cudnnMathType_t maths[] = {CUDNN_DEFAULT_MATH, CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
                                        CUDNN_FMA_MATH};

int main(void)
{
    const condconv_dtype dtypes[] = {CONDCONV_DTYPE_F32, CONDCONV_DTYPE_F16, CONDCONV_DTYPE_BF16};
    const condconv_math modes[] = {CONDCONV_MATH_F32, CONDCONV_MATH_TF32};
    for (int d = 0; d < 3; ++d)
        for (int m = 0; m < 2; ++m)
            for (int t = 0; t < 4; ++t) {
                for (int a = 0; a < 4; ++a)
                    EXPECT(!cc_cudnn_algo_allowed(dtypes[d], modes[m], transforms[a], maths[t]),
                           "transform algorithm %s admitted (dtype %d, math mode %d, math type %d)",
                           cc_cudnn_fwd_algo_name(transforms[a]), d, m, (int)maths[t]);
                for (int a = 0; a < 4; ++a) {
                    int want = 1;
                    if (dtypes[d] == CONDCONV_DTYPE_F32 && modes[m] == CONDCONV_MATH_F32)
                        want = maths[t] == CUDNN_FMA_MATH;
                    if (dtypes[d] == CONDCONV_DTYPE_F32 && modes[m] == CONDCONV_MATH_TF32)
                        want = maths[t] != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
                    EXPECT(cc_cudnn_algo_allowed(dtypes[d], modes[m], direct[a], maths[t]) == want,
                           "%s with math type %d (dtype %d, math mode %d): want %s", cc_cudnn_fwd_algo_name(direct[a]),
                           (int)maths[t], d, m, want ? "admitted" : "refused");
                }
            }
    return tu_finish("test_cudnn_filter");
}
