// Epilogues that follow a convolution.
//
// bias_activation: y = act(y + bias_b[o]) in place over y [N*Cout][Ho*Wo]:
// the bias index of element i is i / plane because per-sample biases are
// stored [N][Cout]. 16-byte loads/stores when the plane length is a multiple
// of 4; one grid-stride pass.
//
// mixture_combine: the paper's mixture-of-experts formulation after one
// static conv with E*Cout filters: y = act(sum_e alpha_e (z_e + b_e)). Each
// thread owns 4 consecutive pixels of one output channel, so each alpha and
// bias load serves 4 outputs; z is streamed (read once).
//
// Validated against the CPU reference through the algorithms that use them
// (tests/test_gpu_forward.c, tests/test_gpu_algorithms.c).
#include "common.cuh"
#include "epilogue.h"

namespace {

constexpr int kThreads = 256;

__global__ void bias_activation_vec4(float4 *__restrict__ y, const float *__restrict__ bias, long long count4,
                                     long long plane4, int act)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count4;
         i += (long long)gridDim.x * blockDim.x) {
        const float b = bias ? __ldg(bias + i / plane4) : 0.0f;
        float4 v = y[i];
        v.x = cc_activate(act, v.x + b);
        v.y = cc_activate(act, v.y + b);
        v.z = cc_activate(act, v.z + b);
        v.w = cc_activate(act, v.w + b);
        y[i] = v;
    }
}

__global__ void bias_activation_scalar(float *__restrict__ y, const float *__restrict__ bias, long long count,
                                       long long plane, int act)
{
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count;
         i += (long long)gridDim.x * blockDim.x) {
        const float b = bias ? __ldg(bias + i / plane) : 0.0f;
        y[i] = cc_activate(act, y[i] + b);
    }
}

// One thread: kPix consecutive pixels p0.. of output channel o of sample n.
template <int kPix>
__global__ void mixture_combine_kernel(const float *__restrict__ z, const float *__restrict__ alpha,
                                       const float *__restrict__ bias, float *__restrict__ y, int n, int cout,
                                       int groups, int e_count, long long plane, int act)
{
    const long long chunks_per_plane = (plane + kPix - 1) / kPix;
    const long long total = (long long)n * cout * chunks_per_plane;
    const int cg = cout / groups;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const long long chunk = t % chunks_per_plane;
        const long long no = t / chunks_per_plane; // n * cout + o
        const int o = (int)(no % cout);
        const int s = (int)(no / cout);
        const int g = o / cg, oc = o - g * cg;
        const long long p0 = chunk * kPix;
        float acc[kPix] = {};
        float b = 0.0f;
        // z[s][g][e][oc][p]: experts of one output channel are Cg*plane apart.
        const float *zp = z + (((size_t)s * groups + g) * e_count * cg + oc) * (size_t)plane + p0;
        const size_t e_stride = (size_t)cg * (size_t)plane;
        for (int e = 0; e < e_count; ++e) {
            const float a = __ldg(alpha + (size_t)s * e_count + e);
            if (bias) b = fmaf(a, __ldg(bias + (size_t)e * cout + o), b);
#pragma unroll
            for (int k = 0; k < kPix; ++k)
                if (p0 + k < plane) acc[k] = fmaf(a, __ldcs(zp + (size_t)e * e_stride + k), acc[k]);
        }
        float *yp = y + (size_t)no * (size_t)plane + p0;
#pragma unroll
        for (int k = 0; k < kPix; ++k)
            if (p0 + k < plane) yp[k] = cc_activate(act, acc[k] + b);
    }
}

} // namespace

extern "C" cudaError_t cc_launch_bias_activation(float *y, const float *bias, long long planes, long long plane,
                                                 int act, cudaStream_t stream)
{
    if (planes <= 0 || plane <= 0) return cudaErrorInvalidValue;
    const long long count = planes * plane;
    if (plane % 4 == 0 && cc_aligned16(y)) {
        const unsigned int blocks = cc_grid_1d(count / 4, kThreads, 1u << 16);
        return cc_launch(bias_activation_vec4, blocks, kThreads, 0, stream, reinterpret_cast<float4 *>(y), bias,
                         count / 4, plane / 4, act);
    }
    const unsigned int blocks = cc_grid_1d(count, kThreads, 1u << 16);
    return cc_launch(bias_activation_scalar, blocks, kThreads, 0, stream, y, bias, count, plane, act);
}

extern "C" cudaError_t cc_launch_mixture_combine(const float *z, const float *alpha, const float *bias, float *y, int n,
                                                 int cout, int groups, int e, long long plane, int act,
                                                 cudaStream_t stream)
{
    if (n <= 0 || cout <= 0 || groups <= 0 || cout % groups != 0 || e <= 0 || plane <= 0) return cudaErrorInvalidValue;
    const long long work = (long long)n * cout * ((plane + 3) / 4);
    return cc_launch(mixture_combine_kernel<4>, cc_grid_1d(work, kThreads, 1u << 16), kThreads, 0, stream, z, alpha,
                     bias, y, n, cout, groups, e, plane, act);
}
