// Input-window gather / im2col (see gather.h). One thread per output element
// and a grid-stride loop over any size. Elements are copied as their bit
// patterns, never converted: the kernel is templated on an unsigned integer
// of the element's size (unsigned int for f32, unsigned short for f16 and
// bf16), and padding is the all-zero pattern, +0 in every dtype.
//
// Thread order = output order, so consecutive threads write consecutive
// elements (every store of a warp is contiguous) in both orders. Reads:
//   PLANES from NCHW: consecutive threads take consecutive output columns,
//     which read consecutive input columns at stride 1 (stride_w apart else);
//   ROWS from NHWC: consecutive threads take the taps of a few channels; a
//     1 x 1 gather reads consecutive channels, a k x k one kh*kw short runs
//     of them, whose sectors neighbouring windows read again from L1/L2;
//   PLANES from NHWC (the transposing gather) and ROWS from NCHW: the reads
//     of a warp are Cin (resp. a plane) apart. Ordering threads for the reads
//     instead would scatter the stores, which cost more than reads that the
//     caches partly serve (the neighbouring channels of a sector are read by
//     the neighbouring warps); a shared-memory transpose would fix both, but
//     these are the rare combinations (an NHWC layer on an NCHW algorithm).
// The output is written once and read once by the GEMM or cuDNN call that
// follows, so it goes through L2 with ordinary stores.
#include "element.cuh"
#include "gather.h"

namespace {

constexpr int kThreads = 256;

template <typename U>
__global__ void __launch_bounds__(kThreads)
    gather_kernel(const U *__restrict__ x, U *__restrict__ out, long long total, const cc_gather_args a)
{
    const bool rows = a.out_order == CC_GATHER_ROWS, nhwc = a.in_layout == CC_LAYOUT_NHWC;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long rest = i;
        int ox, oy, kx, ky;
        long long p; // n * channels + c
        if (rows) {  // out[n][oy][ox][c][ky][kx]
            kx = (int)(rest % a.kernel_w);
            rest /= a.kernel_w;
            ky = (int)(rest % a.kernel_h);
            rest /= a.kernel_h;
            const int c = (int)(rest % a.channels);
            rest /= a.channels;
            ox = (int)(rest % a.out_w);
            rest /= a.out_w;
            oy = (int)(rest % a.out_h);
            p = rest / a.out_h * a.channels + c;
        } else { // out[n][c][ky][kx][oy][ox]
            ox = (int)(rest % a.out_w);
            rest /= a.out_w;
            oy = (int)(rest % a.out_h);
            rest /= a.out_h;
            kx = (int)(rest % a.kernel_w);
            rest /= a.kernel_w;
            ky = (int)(rest % a.kernel_h);
            p = rest / a.kernel_h;
        }
        const long long sy = (long long)oy * a.stride_h - a.pad_top + (long long)ky * a.dilation_h;
        const long long sx = (long long)ox * a.stride_w - a.pad_left + (long long)kx * a.dilation_w;
        U v = 0;
        if (sy >= 0 && sy < a.h && sx >= 0 && sx < a.w) {
            size_t at;
            if (nhwc) {
                const long long n = p / a.channels, c = p - n * a.channels;
                at = (((size_t)n * a.h + (size_t)sy) * a.w + (size_t)sx) * a.channels + (size_t)c;
            } else {
                at = ((size_t)p * a.h + (size_t)sy) * a.w + (size_t)sx;
            }
            v = __ldg(x + at);
        }
        out[i] = v;
    }
}

// a * b into *r unless it overflows or a, b are not positive.
bool mul_positive(long long a, long long b, long long *r) { return a > 0 && b > 0 && !__builtin_mul_overflow(a, b, r); }

} // namespace

extern "C" long long cc_gather_elems(const cc_gather_args *args)
{
    if (args == nullptr) return 0;
    const cc_gather_args a = *args;
    if (cc_element_size(a.dtype) == 0 || (a.in_layout != CC_LAYOUT_NCHW && a.in_layout != CC_LAYOUT_NHWC) ||
        (a.out_order != CC_GATHER_PLANES && a.out_order != CC_GATHER_ROWS) || a.stride_h <= 0 || a.stride_w <= 0 ||
        a.dilation_h <= 0 || a.dilation_w <= 0)
        return 0;
    // The input's element count must fit too: the kernel indexes x with it.
    long long in = a.n, out = a.n;
    if (!mul_positive(in, a.channels, &in) || !mul_positive(in, a.h, &in) || !mul_positive(in, a.w, &in)) return 0;
    if (!mul_positive(out, a.channels, &out) || !mul_positive(out, a.kernel_h, &out) ||
        !mul_positive(out, a.kernel_w, &out) || !mul_positive(out, a.out_h, &out) || !mul_positive(out, a.out_w, &out))
        return 0;
    return out;
}

extern "C" cudaError_t cc_launch_gather(const void *x, void *out, const cc_gather_args *args, cudaStream_t stream)
{
    const long long total = cc_gather_elems(args);
    if (total == 0) return cudaErrorInvalidValue;
    const unsigned int blocks = cc_grid_1d(total, kThreads, 1u << 16);
    if (cc_element_size(args->dtype) == 2)
        return cc_launch(gather_kernel<unsigned short>, blocks, kThreads, 0, stream,
                         static_cast<const unsigned short *>(x), static_cast<unsigned short *>(out), total, *args);
    return cc_launch(gather_kernel<unsigned int>, blocks, kThreads, 0, stream, static_cast<const unsigned int *>(x),
                     static_cast<unsigned int *>(out), total, *args);
}
