/* Epilogues after a convolution: per-sample bias + activation in place, and
 * the mixture-of-experts combination sum_e alpha_e y_e + bias, activation. */
#ifndef CONDCONV_KERNELS_EPILOGUE_H
#define CONDCONV_KERNELS_EPILOGUE_H

#include <cuda_runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y [N*Cout][plane] in place: y = act(y + bias[i / plane]); bias [N*Cout] may
 * be NULL (activation only). */
cudaError_t cc_launch_bias_activation(float *y, const float *bias, long long planes, long long plane, int act,
                                      cudaStream_t stream);

/* z [N][groups][E][Cout/groups][plane] (a static grouped conv with E*Cout
 * filters ordered [g][E][Cout/g]) -> y [N][Cout][plane]:
 *   y[n][o][p] = act(sum_e alpha[n][e] * (z[n][g][e][o % Cg][p] + bias[e][o])),
 * bias [E][Cout] may be NULL. */
cudaError_t cc_launch_mixture_combine(const float *z, const float *alpha, const float *bias, float *y, int n, int cout,
                                      int groups, int e, long long plane, int act, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
