// Input-window gather / im2col (see gather.h). One thread per output
// element, consecutive threads on consecutive output columns so stores
// coalesce (loads too when the stride is 1); a grid-stride loop covers any
// size. The output is written once and read once by the GEMM or cuDNN call
// that follows, so it goes through L2 with ordinary stores.
#include "common.cuh"
#include "gather.h"

namespace {

__global__ void gather_kernel(const float *__restrict__ x, float *__restrict__ out, long long total,
                              const cc_gather_args a)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long rest = i;
        const int ox = (int)(rest % a.out_w);
        rest /= a.out_w;
        const int oy = (int)(rest % a.out_h);
        rest /= a.out_h;
        const int kx = (int)(rest % a.kernel_w);
        rest /= a.kernel_w;
        const int ky = (int)(rest % a.kernel_h);
        const long long p = rest / a.kernel_h;
        const long long sy = (long long)oy * a.stride_h - a.pad_top + (long long)ky * a.dilation_h;
        const long long sx = (long long)ox * a.stride_w - a.pad_left + (long long)kx * a.dilation_w;
        out[i] =
            (sy >= 0 && sy < a.h && sx >= 0 && sx < a.w) ? __ldg(x + ((size_t)p * a.h + (size_t)sy) * a.w + sx) : 0.0f;
    }
}

} // namespace

extern "C" cudaError_t cc_launch_gather(const float *x, float *out, const cc_gather_args *args, cudaStream_t stream)
{
    const cc_gather_args a = *args;
    if (a.planes <= 0 || a.h <= 0 || a.w <= 0 || a.kernel_h <= 0 || a.kernel_w <= 0 || a.out_h <= 0 || a.out_w <= 0 ||
        a.stride_h <= 0 || a.stride_w <= 0 || a.dilation_h <= 0 || a.dilation_w <= 0)
        return cudaErrorInvalidValue;
    const long long total = a.planes * a.kernel_h * a.kernel_w * a.out_h * a.out_w;
    return cc_launch(gather_kernel, cc_grid_1d(total, 256, 1u << 16), 256, 0, stream, x, out, total, a);
}
