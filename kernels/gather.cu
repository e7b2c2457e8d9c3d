// Strided, padded plane copy (see gather.h). One thread per output element,
// consecutive threads on consecutive output columns so stores coalesce; the
// loads coalesce too when the stride is 1. A grid-stride loop covers any size.
#include "common.cuh"
#include "gather.h"

namespace {

__global__ void gather_planes_kernel(const float *__restrict__ x, float *__restrict__ out, long long total, int h,
                                     int w, int out_h, int out_w, int stride_h, int stride_w, int pad_top,
                                     int pad_left)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int j = (int)(i % out_w);
        const long long rest = i / out_w;
        const int r = (int)(rest % out_h);
        const long long p = rest / out_h;
        const long long sy = (long long)r * stride_h - pad_top, sx = (long long)j * stride_w - pad_left;
        out[i] = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? __ldg(x + ((size_t)p * h + (size_t)sy) * w + sx) : 0.0f;
    }
}

} // namespace

extern "C" cudaError_t cc_launch_gather_planes(const float *x, float *out, long long planes, int h, int w, int out_h,
                                               int out_w, int stride_h, int stride_w, int pad_top, int pad_left,
                                               cudaStream_t stream)
{
    if (planes <= 0 || h <= 0 || w <= 0 || out_h <= 0 || out_w <= 0 || stride_h <= 0 || stride_w <= 0)
        return cudaErrorInvalidValue;
    const long long total = planes * out_h * out_w;
    gather_planes_kernel<<<cc_grid_1d(total, 256, 1u << 16), 256, 0, stream>>>(x, out, total, h, w, out_h, out_w,
                                                                               stride_h, stride_w, pad_top, pad_left);
    return cudaGetLastError();
}
