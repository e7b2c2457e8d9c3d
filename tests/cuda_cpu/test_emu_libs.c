/* The CPU execution layer's cuDNN and cuBLAS (src/libs.cpp) on their own:
 * what they compute, against references written here independently of
 * them, on the cases the library's forward does not reach (beta != 0,
 * transposes and leading dimensions larger than the rows, true
 * convolution, alpha2/z), and what they refuse, with the documented status:
 * leading dimensions below the rows, a negative batch count, type and
 * compute-type pairs outside cublasGemmEx's table, a misaligned cuBLAS
 * workspace; channels that are not the filter's times the groups, output
 * channels not a multiple of the groups, data types that differ, a data and
 * compute type configuration cuDNN does not list, output dims that are not
 * the convolution's, too little workspace, an algorithm that does not apply,
 * an activation cudnnConvolutionBiasActivationForward does not fuse. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cudnn.h>

#include "emu_util.h"
#include "gpu_util.h"
#include "test_util.h"

static void *dev_copy(const void *host, size_t bytes)
{
    void *d = tu_dev_alloc_bytes(bytes);
    TU_CUDA(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    return d;
}

static float *random_floats(size_t n)
{
    float *v = eu_random(n, -1.0f, 1.0f);
    return v;
}

/* C_i = alpha op(A_i) op(B_i) + beta C_i, column-major, op(A) = A^T, B as is. */
static void gemm(void)
{
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        EXPECT(0, "cublasCreate");
        return;
    }
    enum { M = 3, N = 4, K = 5, LDA = K + 1, LDB = K + 2, LDC = M + 1, BATCH = 2 };
    const long long sa = LDA * M + 3, sb = LDB * N + 1, sc = LDC * N + 2;
    float *a = random_floats((size_t)sa * BATCH), *b = random_floats((size_t)sb * BATCH);
    float *c = random_floats((size_t)sc * BATCH), *got = eu_floats((size_t)sc * BATCH);
    float *da = dev_copy(a, sizeof(float) * (size_t)sa * BATCH), *db = dev_copy(b, sizeof(float) * (size_t)sb * BATCH);
    float *dc = dev_copy(c, sizeof(float) * (size_t)sc * BATCH);
    const float alpha = 0.5f, beta = 2.0f;
    EXPECT(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, da, CUDA_R_32F, LDA, sa, db,
                                      CUDA_R_32F, LDB, sb, &beta, dc, CUDA_R_32F, LDC, sc, BATCH, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
           "GEMM f32");
    TU_CUDA(cudaMemcpy(got, dc, sizeof(float) * (size_t)sc * BATCH, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int i = 0; i < BATCH; ++i)
        for (int col = 0; col < LDC * N; ++col) {
            const int row = col % LDC, j = col / LDC;
            const size_t at = (size_t)i * sc + (size_t)col;
            double want = c[at]; /* rows past M are not written */
            if (row < M) {
                double acc = 0.0;
                for (int l = 0; l < K; ++l)
                    acc += (double)a[(size_t)i * sa + (size_t)l + (size_t)row * LDA] *
                           b[(size_t)i * sb + (size_t)l + (size_t)j * LDB];
                want = alpha * acc + beta * c[at];
            }
            bad += fabs(got[at] - want) > 1e-6 * (1.0 + fabs(want));
        }
    EXPECT(bad == 0, "GEMM f32 (A transposed, lda/ldb/ldc > rows, beta 2): %d elements wrong", bad);

    /* What cublasGemmStridedBatchedEx refuses. */
    const float zero = 0.0f;
#define GEMM_ST(ta, m, lda, at, ct, batch, compute)                                                                    \
    cublasGemmStridedBatchedEx(h, ta, CUBLAS_OP_N, m, N, K, &alpha, da, at, lda, sa, db, at, LDB, sb, &zero, dc, ct,   \
                               LDC, sc, batch, compute, CUBLAS_GEMM_DEFAULT)
    EXPECT(GEMM_ST(CUBLAS_OP_N, M, M - 1, CUDA_R_32F, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
           "lda < m (op N) accepted");
    EXPECT(GEMM_ST(CUBLAS_OP_T, M, K - 1, CUDA_R_32F, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
           "lda < k (op T) accepted");
    EXPECT(GEMM_ST(CUBLAS_OP_T, M, LDA, CUDA_R_32F, CUDA_R_32F, -1, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_INVALID_VALUE,
           "a negative batch count accepted");
    EXPECT(GEMM_ST(CUBLAS_OP_T, M, LDA, CUDA_R_16F, CUDA_R_16F, 1, CUBLAS_COMPUTE_32F_FAST_TF32) ==
               CUBLAS_STATUS_NOT_SUPPORTED,
           "half data with FAST_TF32 accepted");
    EXPECT(GEMM_ST(CUBLAS_OP_T, M, LDA, CUDA_R_16BF, CUDA_R_16F, 1, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_NOT_SUPPORTED,
           "bf16 inputs into a half C accepted");
    EXPECT(GEMM_ST(CUBLAS_OP_T, M, LDA, CUDA_R_16BF, CUDA_R_32F, 1, CUBLAS_COMPUTE_32F) == CUBLAS_STATUS_SUCCESS,
           "bf16 inputs into an f32 C refused");
#undef GEMM_ST
    EXPECT(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, da, CUDA_R_32F, LDA, sa, db,
                                      CUDA_R_32F, LDB, sb, &zero, dc, CUDA_R_32F, M - 1, sc, 1, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE,
           "ldc < m accepted");
    EXPECT(cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, M, N, K, &alpha, da, CUDA_R_32F, LDA, sa, db,
                                      CUDA_R_32F, K - 1, sb, &zero, dc, CUDA_R_32F, LDC, sc, 1, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE,
           "ldb < k (op N) accepted");
    EXPECT(cublasGemmStridedBatchedEx(NULL, CUBLAS_OP_N, CUBLAS_OP_N, M, N, K, &alpha, da, CUDA_R_32F, LDA, sa, db,
                                      CUDA_R_32F, LDB, sb, &zero, dc, CUDA_R_32F, LDC, sc, 1, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_INITIALIZED,
           "no handle accepted");
    void *ws = tu_dev_alloc_bytes(4096);
    EXPECT(cublasSetWorkspace(h, (char *)ws + 16, 1024) == CUBLAS_STATUS_INVALID_VALUE,
           "a workspace not 256-byte aligned accepted");
    EXPECT(cublasSetWorkspace(h, ws, 4096) == CUBLAS_STATUS_SUCCESS, "an aligned workspace refused");
    TU_CUDA(cudaFree(ws));
    TU_CUDA(cudaFree(da));
    TU_CUDA(cudaFree(db));
    TU_CUDA(cudaFree(dc));
    free(a);
    free(b);
    free(c);
    free(got);
    EXPECT(cublasDestroy(h) == CUBLAS_STATUS_SUCCESS, "cublasDestroy");
}

/* A true convolution (flipped filters), NHWC, 2 groups, padding 1, stride 2,
 * dilation 2: y = alpha conv + beta y, and y = relu(conv + 0.5 z + bias). */
enum { CN = 2, CC = 4, CH = 7, CW = 6, CK = 6, CG = 2, CR = 3, CS = 2, PAD = 1, STR = 2, DIL = 2 };
#define OUT_H ((CH + 2 * PAD - (DIL * (CR - 1) + 1)) / STR + 1)
#define OUT_W ((CW + 2 * PAD - (DIL * (CS - 1) + 1)) / STR + 1)

static double conv_ref(const float *x, const float *w, int n, int k, int oh, int ow)
{
    const int cg = CC / CG, g = k / (CK / CG);
    double acc = 0.0;
    for (int c = 0; c < cg; ++c)
        for (int r = 0; r < CR; ++r)
            for (int s = 0; s < CS; ++s) {
                const int ih = oh * STR - PAD + r * DIL, iw = ow * STR - PAD + s * DIL;
                if (ih < 0 || ih >= CH || iw < 0 || iw >= CW) continue;
                /* NHWC x; NHWC filters [k][r][s][c], flipped */
                acc += (double)x[(((size_t)n * CH + ih) * CW + iw) * CC + (size_t)(g * cg + c)] *
                       w[(((size_t)k * CR + (CR - 1 - r)) * CS + (CS - 1 - s)) * cg + c];
            }
    return acc;
}

static void convolution(void)
{
    cudnnHandle_t h;
    cudnnTensorDescriptor_t xd, yd, bd, bad_d;
    cudnnFilterDescriptor_t wd, bad_w;
    cudnnConvolutionDescriptor_t cd;
    cudnnActivationDescriptor_t ad;
    if (cudnnCreate(&h) != CUDNN_STATUS_SUCCESS) {
        EXPECT(0, "cudnnCreate");
        return;
    }
    cudnnCreateTensorDescriptor(&xd);
    cudnnCreateTensorDescriptor(&yd);
    cudnnCreateTensorDescriptor(&bd);
    cudnnCreateTensorDescriptor(&bad_d);
    cudnnCreateFilterDescriptor(&wd);
    cudnnCreateFilterDescriptor(&bad_w);
    cudnnCreateConvolutionDescriptor(&cd);
    cudnnCreateActivationDescriptor(&ad);
    const int oh = OUT_H, ow = OUT_W;
    EXPECT(cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, CN, CC, CH, CW) == 0, "x");
    EXPECT(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, CK, CC / CG, CR, CS) == 0, "w");
    EXPECT(cudnnSetConvolution2dDescriptor(cd, PAD, PAD, STR, STR, DIL, DIL, CUDNN_CONVOLUTION, CUDNN_DATA_FLOAT) == 0,
           "conv");
    EXPECT(cudnnSetConvolutionGroupCount(cd, CG) == 0, "groups");
    EXPECT(cudnnSetConvolutionMathType(cd, CUDNN_FMA_MATH) == 0, "math");
    int dn, dc, dh, dw;
    EXPECT(cudnnGetConvolution2dForwardOutputDim(cd, xd, wd, &dn, &dc, &dh, &dw) == 0 && dn == CN && dc == CK &&
               dh == oh && dw == ow,
           "output dims %dx%dx%dx%d", dn, dc, dh, dw);
    EXPECT(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, CN, CK, oh, ow) == 0, "y");
    const size_t x_n = (size_t)CN * CC * CH * CW, w_n = (size_t)CK * (CC / CG) * CR * CS,
                 y_n = (size_t)CN * CK * oh * ow;
    float *x = random_floats(x_n), *w = random_floats(w_n), *y0 = random_floats(y_n), *bias = random_floats(CK);
    float *got = eu_floats(y_n);
    float *dx = dev_copy(x, x_n * 4), *dwt = dev_copy(w, w_n * 4), *dy = dev_copy(y0, y_n * 4);
    float *dz = dev_copy(y0, y_n * 4), *dbias = dev_copy(bias, (size_t)CK * 4);

    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    EXPECT(cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned,
                                                  perf) == 0 &&
               returned > 0 && perf[0].status == CUDNN_STATUS_SUCCESS,
           "Get_v7");
    /* The first algorithm that needs a workspace. */
    int with_ws = -1;
    for (int i = 0; i < returned && with_ws < 0; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory > 0) with_ws = i;
    EXPECT(with_ws >= 0, "no algorithm with a workspace offered");
    if (with_ws < 0) with_ws = 0;
    const cudnnConvolutionFwdAlgo_t algo = perf[with_ws].algo;
    const size_t ws_bytes = perf[with_ws].memory;
    void *ws = tu_dev_alloc_bytes(ws_bytes ? ws_bytes : 1);
    const float alpha = 2.0f, beta = 0.5f;
    EXPECT(cudnnConvolutionForward(h, &alpha, xd, dx, wd, dwt, cd, algo, ws, ws_bytes, &beta, yd, dy) == 0, "forward");
    TU_CUDA(cudaMemcpy(got, dy, y_n * 4, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int n = 0; n < CN; ++n)
        for (int k = 0; k < CK; ++k)
            for (int i = 0; i < oh; ++i)
                for (int j = 0; j < ow; ++j) {
                    const size_t at = (((size_t)n * oh + i) * ow + j) * CK + k;
                    const double want = alpha * conv_ref(x, w, n, k, i, j) + beta * y0[at];
                    bad += fabs(got[at] - want) > 1e-6 * (1.0 + fabs(want));
                }
    EXPECT(bad == 0, "convolution (NHWC, groups, pad, stride, dilation, flipped, alpha 2, beta 0.5): %d wrong", bad);

    /* relu(conv + 0.5 z + bias) */
    EXPECT(cudnnSetTensor4dDescriptor(bd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, CK, 1, 1) == 0, "bias");
    EXPECT(cudnnSetActivationDescriptor(ad, CUDNN_ACTIVATION_RELU, CUDNN_PROPAGATE_NAN, 0.0) == 0, "relu");
    const float one = 1.0f, half = 0.5f;
    EXPECT(cudnnConvolutionBiasActivationForward(h, &one, xd, dx, wd, dwt, cd, algo, ws, ws_bytes, &half, yd, dz, bd,
                                                 dbias, ad, yd, dy) == 0,
           "bias + activation");
    TU_CUDA(cudaMemcpy(got, dy, y_n * 4, cudaMemcpyDeviceToHost));
    bad = 0;
    for (size_t at = 0; at < y_n; ++at) {
        const int k = (int)(at % CK), j = (int)(at / CK % (size_t)ow), i = (int)(at / CK / (size_t)ow % (size_t)oh),
                  n = (int)(at / CK / (size_t)ow / (size_t)oh);
        double want = conv_ref(x, w, n, k, i, j) + 0.5 * y0[at] + bias[k];
        want = want > 0.0 ? want : 0.0;
        bad += fabs(got[at] - want) > 1e-6 * (1.0 + fabs(want));
    }
    EXPECT(bad == 0, "bias + ReLU with z (alpha2 0.5): %d elements wrong", bad);

    /* What cuDNN refuses. */
    EXPECT(cudnnConvolutionForward(h, &alpha, xd, dx, wd, dwt, cd, algo, ws, ws_bytes - 1, &beta, yd, dy) ==
               CUDNN_STATUS_BAD_PARAM,
           "a workspace smaller than the algorithm's accepted");
    EXPECT(cudnnConvolutionForward(h, &alpha, xd, dx, wd, dwt, cd, CUDNN_CONVOLUTION_FWD_ALGO_FFT, ws, ws_bytes, &beta,
                                   yd, dy) == CUDNN_STATUS_NOT_SUPPORTED,
           "FFT on a grouped, strided NHWC convolution accepted");
    cudnnSetFilter4dDescriptor(bad_w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, CK, CC, CR, CS); /* channels not per group */
    EXPECT(cudnnGetConvolution2dForwardOutputDim(cd, xd, bad_w, &dn, &dc, &dh, &dw) == CUDNN_STATUS_BAD_PARAM,
           "filter channels x groups != input channels accepted");
    cudnnSetFilter4dDescriptor(bad_w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, CK + 1, CC / CG, CR, CS);
    cudnnSetTensor4dDescriptor(bad_d, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, CN, CK + 1, oh, ow);
    EXPECT(cudnnConvolutionForward(h, &alpha, xd, dx, bad_w, dwt, cd, algo, ws, ws_bytes, &beta, bad_d, dy) ==
               CUDNN_STATUS_BAD_PARAM,
           "output channels not a multiple of the groups accepted");
    cudnnSetFilter4dDescriptor(bad_w, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, CK, CC / CG, CR, CS);
    EXPECT(cudnnConvolutionForward(h, &alpha, xd, dx, bad_w, dwt, cd, algo, ws, ws_bytes, &beta, yd, dy) ==
               CUDNN_STATUS_BAD_PARAM,
           "half filters with float tensors accepted");
    cudnnSetTensor4dDescriptor(bad_d, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, CN, CK, oh + 1, ow);
    EXPECT(cudnnConvolutionForward(h, &alpha, xd, dx, wd, dwt, cd, algo, ws, ws_bytes, &beta, bad_d, dy) ==
               CUDNN_STATUS_NOT_SUPPORTED,
           "an output height that is not the convolution's accepted");
    cudnnTensorDescriptor_t hx, hy;
    cudnnFilterDescriptor_t hw;
    cudnnCreateTensorDescriptor(&hx);
    cudnnCreateTensorDescriptor(&hy);
    cudnnCreateFilterDescriptor(&hw);
    cudnnSetTensor4dDescriptor(hx, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, CN, CC, CH, CW);
    cudnnSetTensor4dDescriptor(hy, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, CN, CK, oh, ow);
    cudnnSetFilter4dDescriptor(hw, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, CK, CC / CG, CR, CS);
    cudnnSetConvolution2dDescriptor(cd, PAD, PAD, STR, STR, DIL, DIL, CUDNN_CONVOLUTION, CUDNN_DATA_HALF);
    EXPECT(cudnnConvolutionForward(h, &alpha, hx, dx, hw, dwt, cd, algo, ws, ws_bytes, &beta, hy, dy) ==
               CUDNN_STATUS_NOT_SUPPORTED,
           "bfloat16 data with half compute (no such configuration) accepted");
    cudnnSetConvolution2dDescriptor(cd, PAD, PAD, STR, STR, DIL, DIL, CUDNN_CONVOLUTION, CUDNN_DATA_FLOAT);
    EXPECT(cudnnSetConvolution2dDescriptor(cd, -1, PAD, STR, STR, DIL, DIL, CUDNN_CONVOLUTION, CUDNN_DATA_FLOAT) ==
               CUDNN_STATUS_BAD_PARAM,
           "negative padding accepted");
    EXPECT(cudnnSetActivationDescriptor(ad, CUDNN_ACTIVATION_SIGMOID, CUDNN_PROPAGATE_NAN, 0.0) == 0, "sigmoid");
    EXPECT(cudnnConvolutionBiasActivationForward(h, &one, xd, dx, wd, dwt, cd, algo, ws, ws_bytes, &half, yd, dz, bd,
                                                 dbias, ad, yd, dy) == CUDNN_STATUS_NOT_SUPPORTED,
           "a fused sigmoid accepted");
    cudnnDestroyTensorDescriptor(hx);
    cudnnDestroyTensorDescriptor(hy);
    cudnnDestroyFilterDescriptor(hw);

    TU_CUDA(cudaFree(ws));
    TU_CUDA(cudaFree(dx));
    TU_CUDA(cudaFree(dwt));
    TU_CUDA(cudaFree(dy));
    TU_CUDA(cudaFree(dz));
    TU_CUDA(cudaFree(dbias));
    free(x);
    free(w);
    free(y0);
    free(bias);
    free(got);
    cudnnDestroyTensorDescriptor(xd);
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyTensorDescriptor(bd);
    cudnnDestroyTensorDescriptor(bad_d);
    cudnnDestroyFilterDescriptor(wd);
    cudnnDestroyFilterDescriptor(bad_w);
    cudnnDestroyConvolutionDescriptor(cd);
    cudnnDestroyActivationDescriptor(ad);
    EXPECT(cudnnDestroy(h) == 0, "cudnnDestroy");
}

int main(void)
{
    tu_seed_from_env();
    gemm();
    convolution();
    EXPECT(cc_cpu_live_allocations() == 0, "%zu device allocation(s) leaked", cc_cpu_live_allocations());
    EXPECT(cc_cpu_live_handles() == 0, "%zu handle(s) leaked", cc_cpu_live_handles());
    return tu_finish("test_emu_libs");
}
