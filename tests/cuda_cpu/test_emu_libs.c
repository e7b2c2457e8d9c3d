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
 * an activation cudnnConvolutionBiasActivationForward does not fuse.
 * The backward calls (cudnnConvolutionBackwardData/Filter, their Get_v7,
 * workspace-size and FindEx calls) against transposed-loop references:
 * grouped, strided, dilated, padded, NCHW and NHWC, f32/f16/bf16 (and true
 * half compute), both modes, alpha 2 with beta 0 (the output poisoned with
 * NaN) or 0.5, every offered algorithm, each result within half an ulp of
 * the exact value; the ranking the host code must see through (the
 * non-deterministic algorithms first, FFT only where cuDNN has it, the
 * deterministic ALGO_1 after), a workspace one byte short, and the two
 * calls' documented BAD_PARAM and NOT_SUPPORTED cases. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cudnn.h>

#include "emu_dtype.h"
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

/* --- Backward data and backward filter ------------------------------------------------------------------- */
/* A problem: x (dx) [n][c][h][w], filters (dw) [k][c/g][r][s], y (dy)
 * [n][k][oh][ow], all NCHW or all NHWC (filters KCRS or KRSC). */
typedef struct {
    int n, c, h, w, k, g, r, s, pad, str, dil, nhwc;
    cudnnConvolutionMode_t mode;
    int oh, ow;
} bshape;

static bshape make_shape(int n, int c, int h, int w, int k, int g, int r, int s, int pad, int str, int dil, int nhwc,
                         cudnnConvolutionMode_t mode)
{
    bshape p = {n, c, h, w, k, g, r, s, pad, str, dil, nhwc, mode, 0, 0};
    p.oh = (h + 2 * pad - (dil * (r - 1) + 1)) / str + 1;
    p.ow = (w + 2 * pad - (dil * (s - 1) + 1)) / str + 1;
    return p;
}

static size_t at4(int nhwc, int C, int H, int W, int n, int c, int h, int w)
{
    return nhwc ? (((size_t)n * H + h) * W + w) * C + c : (((size_t)n * C + c) * H + h) * W + w;
}
static size_t x_at(const bshape *p, int n, int c, int h, int w) { return at4(p->nhwc, p->c, p->h, p->w, n, c, h, w); }
static size_t y_at(const bshape *p, int n, int k, int h, int w) { return at4(p->nhwc, p->k, p->oh, p->ow, n, k, h, w); }
static size_t w_at(const bshape *p, int k, int c, int r, int s)
{
    return at4(p->nhwc, p->c / p->g, p->r, p->s, k, c, r, s);
}
static size_t x_count(const bshape *p) { return (size_t)p->n * p->c * p->h * p->w; }
static size_t y_count(const bshape *p) { return (size_t)p->n * p->k * p->oh * p->ow; }
static size_t w_count(const bshape *p) { return (size_t)p->k * (p->c / p->g) * p->r * p->s; }

/* The filter element a tap (r, s) multiplies: flipped for a true convolution. */
static int flip(const bshape *p, int r, int extent) { return p->mode == CUDNN_CONVOLUTION ? extent - 1 - r : r; }

/* dx[n][c][ih][iw] by the transposed loops: every output (oh, ow) of the
 * channels of c's group and tap (r, s) with oh * str - pad + r * dil = ih
 * (and the same across). */
static double bwd_data_ref(const bshape *p, const float *wt, const float *dy, int n, int c, int ih, int iw)
{
    const int cg = p->c / p->g, kg = p->k / p->g, g = c / cg, ci = c % cg;
    double acc = 0.0;
    for (int k = g * kg; k < (g + 1) * kg; ++k)
        for (int r = 0; r < p->r; ++r) {
            const int th = ih + p->pad - r * p->dil;
            if (th < 0 || th % p->str != 0 || th / p->str >= p->oh) continue;
            for (int s = 0; s < p->s; ++s) {
                const int tw = iw + p->pad - s * p->dil;
                if (tw < 0 || tw % p->str != 0 || tw / p->str >= p->ow) continue;
                acc += (double)wt[w_at(p, k, ci, flip(p, r, p->r), flip(p, s, p->s))] *
                       dy[y_at(p, n, k, th / p->str, tw / p->str)];
            }
        }
    return acc;
}

/* dw[k][ci][fr][fs]: over the batch and every output (oh, ow) of channel k,
 * the input under the tap that multiplies this filter element, times dy. */
static double bwd_filter_ref(const bshape *p, const float *x, const float *dy, int k, int ci, int fr, int fs)
{
    const int cg = p->c / p->g, g = k / (p->k / p->g), r = flip(p, fr, p->r), s = flip(p, fs, p->s);
    double acc = 0.0;
    for (int n = 0; n < p->n; ++n)
        for (int oh = 0; oh < p->oh; ++oh)
            for (int ow = 0; ow < p->ow; ++ow) {
                const int ih = oh * p->str - p->pad + r * p->dil, iw = ow * p->str - p->pad + s * p->dil;
                if (ih < 0 || ih >= p->h || iw < 0 || iw >= p->w) continue;
                acc += (double)x[x_at(p, n, g * cg + ci, ih, iw)] * dy[y_at(p, n, k, oh, ow)];
            }
    return acc;
}

static cudnnDataType_t cudnn_type(int dtype)
{
    return dtype == CC_DTYPE_F32 ? CUDNN_DATA_FLOAT : dtype == CC_DTYPE_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

/* got within half an ulp of want in dtype (one rounding of an exact sum). */
static int rounded_once(int dtype, double got, double want)
{
    const double rel = dtype == CC_DTYPE_F32 ? 0x1p-24 : dtype == CC_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
    const double sub = dtype == CC_DTYPE_F16 ? 0x1p-25 : 0.0; /* half the f16 subnormal step */
    return fabs(got - want) <= rel * fabs(want) * (1.0 + 1e-9) + sub + 1e-12;
}

typedef struct {
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
} bdescs;

static bdescs make_descs(const bshape *p, int dtype, cudnnDataType_t compute)
{
    bdescs d;
    const cudnnTensorFormat_t f = p->nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    cudnnCreateTensorDescriptor(&d.xd);
    cudnnCreateTensorDescriptor(&d.yd);
    cudnnCreateFilterDescriptor(&d.wd);
    cudnnCreateConvolutionDescriptor(&d.cd);
    EXPECT(cudnnSetTensor4dDescriptor(d.xd, f, cudnn_type(dtype), p->n, p->c, p->h, p->w) == 0, "x");
    EXPECT(cudnnSetTensor4dDescriptor(d.yd, f, cudnn_type(dtype), p->n, p->k, p->oh, p->ow) == 0, "y");
    EXPECT(cudnnSetFilter4dDescriptor(d.wd, cudnn_type(dtype), f, p->k, p->c / p->g, p->r, p->s) == 0, "w");
    EXPECT(cudnnSetConvolution2dDescriptor(d.cd, p->pad, p->pad, p->str, p->str, p->dil, p->dil, p->mode, compute) == 0,
           "conv");
    EXPECT(cudnnSetConvolutionGroupCount(d.cd, p->g) == 0, "groups");
    return d;
}

static void free_descs(bdescs *d)
{
    cudnnDestroyTensorDescriptor(d->xd);
    cudnnDestroyTensorDescriptor(d->yd);
    cudnnDestroyFilterDescriptor(d->wd);
    cudnnDestroyConvolutionDescriptor(d->cd);
}

/* Host floats (representable in dtype) as a device buffer of dtype. */
static void *dev_pack(int dtype, const float *v, size_t n)
{
    unsigned char *bytes = malloc(n * ed_size(dtype) + 1); /* + 1: never malloc(0) */
    ed_pack(dtype, v, bytes, n);
    void *d = dev_copy(bytes, n * ed_size(dtype));
    free(bytes);
    return d;
}

static void dev_unpack(int dtype, const void *d, float *v, size_t n)
{
    unsigned char *bytes = malloc(n * ed_size(dtype) + 1); /* + 1: never malloc(0) */
    TU_CUDA(cudaMemcpy(bytes, d, n * ed_size(dtype), cudaMemcpyDeviceToHost));
    ed_unpack(dtype, bytes, v, n);
    free(bytes);
}

/* Whether cuDNN's tables allow FFT here: NCHW float, stride 1, no dilation
 * (and, in the emulation, ungrouped). */
static int fft_expected(const bshape *p, int dtype)
{
    return !p->nhwc && dtype == CC_DTYPE_F32 && p->str == 1 && p->dil == 1 && p->g == 1;
}

/* The ranking rules shared by both lists (a macro: the two perf structs
 * differ in type only): every algorithm listed, the supported ones first,
 * sorted by time; FFT offered exactly where fft_exp says, deterministic
 * and without tensor ops. */
#define CHECK_RANKING(perf, returned, count, fft_algo, what, fft_exp)                                                  \
    do {                                                                                                               \
        int seen_unsupported = 0, listed_fft = 0;                                                                      \
        EXPECT((returned) == (count), "%s: %d of %d algorithms listed", what, returned, (int)(count));                 \
        for (int i_ = 0; i_ < (returned); ++i_) {                                                                      \
            if ((perf)[i_].status != CUDNN_STATUS_SUCCESS) {                                                           \
                seen_unsupported = 1;                                                                                  \
                EXPECT((perf)[i_].status == CUDNN_STATUS_NOT_SUPPORTED, "%s: entry %d status %d", what, i_,            \
                       (int)(perf)[i_].status);                                                                        \
                continue;                                                                                              \
            }                                                                                                          \
            EXPECT(!seen_unsupported, "%s: a supported algorithm listed after an unsupported one", what);              \
            if ((int)(perf)[i_].algo == (int)(fft_algo)) {                                                             \
                listed_fft = 1;                                                                                        \
                EXPECT((perf)[i_].determinism == CUDNN_DETERMINISTIC && (perf)[i_].mathType == CUDNN_FMA_MATH,         \
                       "%s: FFT flags", what);                                                                         \
            }                                                                                                          \
            if (i_ > 0) EXPECT((perf)[i_].time >= (perf)[i_ - 1].time, "%s: not sorted by time", what);                \
        }                                                                                                              \
        EXPECT(listed_fft == (fft_exp), "%s: FFT %s", what,                                                            \
               listed_fft ? "offered where it does not apply" : "missing");                                            \
    } while (0)

/* Backward data and backward filter on p in dtype (compute: the
 * convolution's compute type), every offered algorithm run and compared
 * with the references; beta 0: the output poisoned with NaN (must not be
 * read), else beta 0.5 with alpha 2. */
static void backward_case(cudnnHandle_t h, const bshape *p, int dtype, cudnnDataType_t compute, float beta)
{
    char what[160];
    snprintf(what, sizeof what, "%s %s%s %s g%d str%d dil%d pad%d beta %g", p->nhwc ? "NHWC" : "NCHW", ed_name(dtype),
             compute == CUDNN_DATA_HALF ? "(half compute)" : "", p->mode == CUDNN_CONVOLUTION ? "conv" : "xcorr", p->g,
             p->str, p->dil, p->pad, (double)beta);
    bdescs d = make_descs(p, dtype, compute);
    const size_t xn = x_count(p), yn = y_count(p), wn = w_count(p);
    float *x = ed_random(dtype, xn, -1.0f, 1.0f), *wt = ed_random(dtype, wn, -1.0f, 1.0f);
    float *dy = ed_random(dtype, yn, -1.0f, 1.0f);
    float *dx0 = ed_random(dtype, xn, -1.0f, 1.0f), *dw0 = ed_random(dtype, wn, -1.0f, 1.0f);
    if (beta == 0.0f) {
        for (size_t i = 0; i < xn; ++i) dx0[i] = NAN;
        for (size_t i = 0; i < wn; ++i) dw0[i] = NAN;
    }
    float *got_x = eu_floats(xn), *got_w = eu_floats(wn);
    void *d_x = dev_pack(dtype, x, xn), *d_w = dev_pack(dtype, wt, wn), *d_dy = dev_pack(dtype, dy, yn);
    void *d_dx = dev_pack(dtype, dx0, xn), *d_dw = dev_pack(dtype, dw0, wn);
    const float alpha = 2.0f;
    const int want_fft = fft_expected(p, dtype);

    /* Backward data: the list, then every supported algorithm. */
    cudnnConvolutionBwdDataAlgoPerf_t dperf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int returned = 0;
    EXPECT(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.wd, d.yd, d.cd, d.xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                       &returned, dperf) == 0,
           "%s: data Get_v7", what);
    CHECK_RANKING(dperf, returned, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, what,
                  want_fft);
    EXPECT(dperf[0].algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 && dperf[0].status == CUDNN_STATUS_SUCCESS &&
               dperf[0].determinism == CUDNN_NON_DETERMINISTIC,
           "%s: data: the non-deterministic ALGO_0 is not offered first", what);
    int chosen = -1;
    for (int i = 0; i < returned && chosen < 0; ++i)
        if (dperf[i].status == CUDNN_STATUS_SUCCESS && dperf[i].determinism == CUDNN_DETERMINISTIC &&
            dperf[i].algo != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT)
            chosen = i;
    EXPECT(chosen >= 0 && dperf[chosen].algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 && dperf[chosen].memory == 0,
           "%s: data: the deterministic direct algorithm is not ALGO_1 with no workspace", what);
    for (int i = 0; i < returned; ++i) {
        size_t bytes = 12345;
        const cudnnStatus_t st =
            cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.wd, d.yd, d.cd, d.xd, dperf[i].algo, &bytes);
        if (dperf[i].status != CUDNN_STATUS_SUCCESS) {
            EXPECT(st == CUDNN_STATUS_NOT_SUPPORTED, "%s: data workspace of unsupported algo %d: %d", what,
                   (int)dperf[i].algo, (int)st);
            continue;
        }
        EXPECT(st == 0 && bytes == dperf[i].memory, "%s: data workspace of algo %d: %zu, listed %zu", what,
               (int)dperf[i].algo, bytes, dperf[i].memory);
        void *ws = tu_dev_alloc_bytes(bytes ? bytes : 1);
        if (bytes > 0)
            EXPECT(cudnnConvolutionBackwardData(h, &alpha, d.wd, d_w, d.yd, d_dy, d.cd, dperf[i].algo, ws, bytes - 1,
                                                &beta, d.xd, d_dx) == CUDNN_STATUS_BAD_PARAM,
                   "%s: data algo %d: a workspace one byte short accepted", what, (int)dperf[i].algo);
        TU_CUDA(cudaFree(d_dx));
        d_dx = dev_pack(dtype, dx0, xn);
        EXPECT(cudnnConvolutionBackwardData(h, &alpha, d.wd, d_w, d.yd, d_dy, d.cd, dperf[i].algo, ws, bytes, &beta,
                                            d.xd, d_dx) == 0,
               "%s: data algo %d", what, (int)dperf[i].algo);
        dev_unpack(dtype, d_dx, got_x, xn);
        TU_CUDA(cudaFree(ws));
        int bad = 0;
        for (int n = 0; n < p->n; ++n)
            for (int c = 0; c < p->c; ++c)
                for (int ih = 0; ih < p->h; ++ih)
                    for (int iw = 0; iw < p->w; ++iw) {
                        const size_t at = x_at(p, n, c, ih, iw);
                        double want = alpha * bwd_data_ref(p, wt, dy, n, c, ih, iw);
                        if (beta != 0.0f) want += (double)beta * dx0[at];
                        bad += !rounded_once(dtype, got_x[at], want);
                    }
        EXPECT(bad == 0, "%s: backward data, algo %d: %d of %zu elements wrong", what, (int)dperf[i].algo, bad, xn);
    }

    /* Backward filter. */
    cudnnConvolutionBwdFilterAlgoPerf_t fperf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    EXPECT(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
               h, d.xd, d.yd, d.cd, d.wd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, fperf) == 0,
           "%s: filter Get_v7", what);
    CHECK_RANKING(fperf, returned, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, what,
                  want_fft);
    EXPECT(fperf[0].algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 && fperf[0].determinism == CUDNN_NON_DETERMINISTIC &&
               fperf[1].algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3 &&
               fperf[1].determinism == CUDNN_NON_DETERMINISTIC && fperf[1].status == CUDNN_STATUS_SUCCESS,
           "%s: filter: the non-deterministic ALGO_0 and ALGO_3 are not offered first", what);
    chosen = -1;
    for (int i = 0; i < returned && chosen < 0; ++i)
        if (fperf[i].status == CUDNN_STATUS_SUCCESS && fperf[i].determinism == CUDNN_DETERMINISTIC &&
            fperf[i].algo != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT)
            chosen = i;
    EXPECT(chosen >= 0 && fperf[chosen].algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 && fperf[chosen].memory > 0,
           "%s: filter: the deterministic direct algorithm is not ALGO_1 with a workspace", what);
    for (int i = 0; i < returned; ++i) {
        size_t bytes = 12345;
        const cudnnStatus_t st =
            cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.xd, d.yd, d.cd, d.wd, fperf[i].algo, &bytes);
        if (fperf[i].status != CUDNN_STATUS_SUCCESS) {
            EXPECT(st == CUDNN_STATUS_NOT_SUPPORTED, "%s: filter workspace of unsupported algo %d: %d", what,
                   (int)fperf[i].algo, (int)st);
            continue;
        }
        EXPECT(st == 0 && bytes == fperf[i].memory, "%s: filter workspace of algo %d: %zu, listed %zu", what,
               (int)fperf[i].algo, bytes, fperf[i].memory);
        void *ws = tu_dev_alloc_bytes(bytes ? bytes : 1);
        if (bytes > 0)
            EXPECT(cudnnConvolutionBackwardFilter(h, &alpha, d.xd, d_x, d.yd, d_dy, d.cd, fperf[i].algo, ws, bytes - 1,
                                                  &beta, d.wd, d_dw) == CUDNN_STATUS_BAD_PARAM,
                   "%s: filter algo %d: a workspace one byte short accepted", what, (int)fperf[i].algo);
        TU_CUDA(cudaFree(d_dw));
        d_dw = dev_pack(dtype, dw0, wn);
        EXPECT(cudnnConvolutionBackwardFilter(h, &alpha, d.xd, d_x, d.yd, d_dy, d.cd, fperf[i].algo, ws, bytes, &beta,
                                              d.wd, d_dw) == 0,
               "%s: filter algo %d", what, (int)fperf[i].algo);
        dev_unpack(dtype, d_dw, got_w, wn);
        TU_CUDA(cudaFree(ws));
        int bad = 0;
        for (int k = 0; k < p->k; ++k)
            for (int ci = 0; ci < p->c / p->g; ++ci)
                for (int r = 0; r < p->r; ++r)
                    for (int s = 0; s < p->s; ++s) {
                        const size_t at = w_at(p, k, ci, r, s);
                        double want = alpha * bwd_filter_ref(p, x, dy, k, ci, r, s);
                        if (beta != 0.0f) want += (double)beta * dw0[at];
                        bad += !rounded_once(dtype, got_w[at], want);
                    }
        EXPECT(bad == 0, "%s: backward filter, algo %d: %d of %zu elements wrong", what, (int)fperf[i].algo, bad, wn);
    }

    /* Find (alpha 1, beta 0, the output overwritten): with no workspace,
     * the algorithms that need one are reported ALLOC_FAILED, after the
     * ones that ran. */
    if (beta == 0.0f) {
        cudnnConvolutionBwdFilterAlgoPerf_t found[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        EXPECT(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.xd, d_x, d.yd, d_dy, d.cd, d.wd, d_dw,
                                                             CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, found,
                                                             NULL, 0) == 0,
               "%s: filter Find", what);
        EXPECT(found[0].status == CUDNN_STATUS_SUCCESS && found[0].algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
               "%s: filter Find: ALGO_0 (no workspace) not first", what);
        int alloc_failed = 0;
        for (int i = 0; i < returned; ++i) alloc_failed += found[i].status == CUDNN_STATUS_ALLOC_FAILED;
        EXPECT(alloc_failed == 2 + want_fft, "%s: filter Find: %d algorithms short of workspace", what, alloc_failed);
        dev_unpack(dtype, d_dw, got_w, wn);
        int bad = 0;
        for (int k = 0; k < p->k; ++k)
            for (int ci = 0; ci < p->c / p->g; ++ci)
                for (int r = 0; r < p->r; ++r)
                    for (int s = 0; s < p->s; ++s)
                        bad += !rounded_once(dtype, got_w[w_at(p, k, ci, r, s)], bwd_filter_ref(p, x, dy, k, ci, r, s));
        EXPECT(bad == 0, "%s: filter Find's dw: %d wrong", what, bad);

        cudnnConvolutionBwdDataAlgoPerf_t dfound[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        const size_t big = 1u << 20;
        void *ws = tu_dev_alloc_bytes(big);
        EXPECT(cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.wd, d_w, d.yd, d_dy, d.cd, d.xd, d_dx,
                                                           CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, dfound, ws,
                                                           big) == 0,
               "%s: data Find", what);
        int ran = 0;
        for (int i = 0; i < returned; ++i) ran += dfound[i].status == CUDNN_STATUS_SUCCESS;
        EXPECT(ran == 2 + want_fft && dfound[0].status == CUDNN_STATUS_SUCCESS, "%s: data Find ran %d", what, ran);
        TU_CUDA(cudaFree(ws));
        dev_unpack(dtype, d_dx, got_x, xn);
        bad = 0;
        for (int n = 0; n < p->n; ++n)
            for (int c = 0; c < p->c; ++c)
                for (int ih = 0; ih < p->h; ++ih)
                    for (int iw = 0; iw < p->w; ++iw)
                        bad +=
                            !rounded_once(dtype, got_x[x_at(p, n, c, ih, iw)], bwd_data_ref(p, wt, dy, n, c, ih, iw));
        EXPECT(bad == 0, "%s: data Find's dx: %d wrong", what, bad);
    }

    TU_CUDA(cudaFree(d_x));
    TU_CUDA(cudaFree(d_w));
    TU_CUDA(cudaFree(d_dy));
    TU_CUDA(cudaFree(d_dx));
    TU_CUDA(cudaFree(d_dw));
    free(x);
    free(wt);
    free(dy);
    free(dx0);
    free(dw0);
    free(got_x);
    free(got_w);
    free_descs(&d);
}

/* What the backward calls refuse, with the documented status (the lists of
 * cudnnConvolutionBackwardData and cudnnConvolutionBackwardFilter differ on
 * two cases). */
static void backward_refusals(cudnnHandle_t h)
{
    const bshape p = make_shape(CN, CC, CH, CW, CK, CG, CR, CS, PAD, STR, DIL, 1, CUDNN_CONVOLUTION);
    bdescs d = make_descs(&p, CC_DTYPE_F32, CUDNN_DATA_FLOAT);
    void *x = tu_dev_alloc_bytes(4 * x_count(&p)), *w = tu_dev_alloc_bytes(4 * w_count(&p) + 64);
    void *y = tu_dev_alloc_bytes(4 * y_count(&p) + 64), *ws = tu_dev_alloc_bytes(1u << 16);
    const float one = 1.0f, zero = 0.0f;
    const cudnnConvolutionBwdDataAlgo_t da = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
    const cudnnConvolutionBwdFilterAlgo_t fa = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
    const size_t big = 1u << 16;
#define BWD_DATA(wdesc, ydesc, xdesc, algo, bytes)                                                                     \
    cudnnConvolutionBackwardData(h, &one, wdesc, w, ydesc, y, d.cd, algo, ws, bytes, &zero, xdesc, x)
#define BWD_FILTER(xdesc, ydesc, wdesc, algo, bytes)                                                                   \
    cudnnConvolutionBackwardFilter(h, &one, xdesc, x, ydesc, y, d.cd, algo, ws, bytes, &zero, wdesc, w)
    EXPECT(BWD_DATA(d.wd, d.yd, d.xd, da, big) == 0, "data: the valid call refused");
    EXPECT(BWD_FILTER(d.xd, d.yd, d.wd, fa, big) == 0, "filter: the valid call refused");
    EXPECT(cudnnConvolutionBackwardData(h, &one, d.wd, w, d.yd, NULL, d.cd, da, ws, big, &zero, d.xd, x) ==
               CUDNN_STATUS_BAD_PARAM,
           "data: a NULL dy accepted");
    EXPECT(cudnnConvolutionBackwardData(h, NULL, d.wd, w, d.yd, y, d.cd, da, ws, big, &zero, d.xd, x) ==
               CUDNN_STATUS_BAD_PARAM,
           "data: a NULL alpha accepted");
    EXPECT(cudnnConvolutionBackwardFilter(h, &one, d.xd, x, d.yd, y, d.cd, fa, ws, big, NULL, d.wd, w) ==
               CUDNN_STATUS_BAD_PARAM,
           "filter: a NULL beta accepted");
    EXPECT(cudnnConvolutionBackwardFilter(NULL, &one, d.xd, x, d.yd, y, d.cd, fa, ws, big, &zero, d.wd, w) ==
               CUDNN_STATUS_BAD_PARAM,
           "filter: a NULL handle accepted");
    size_t need = 0;
    EXPECT(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.xd, d.yd, d.cd, d.wd, fa, &need) == 0 && need > 0,
           "filter ALGO_1 workspace");
    EXPECT(BWD_FILTER(d.xd, d.yd, d.wd, fa, need - 1) == CUDNN_STATUS_BAD_PARAM,
           "filter: a workspace smaller than the algorithm's accepted");
    EXPECT(cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.wd, d.yd, d.cd, d.xd, da, NULL) == CUDNN_STATUS_BAD_PARAM,
           "data: a NULL sizeInBytes accepted");
    /* FFT (and the algorithms the emulation does not offer) on a grouped, strided NHWC problem. */
    EXPECT(BWD_DATA(d.wd, d.yd, d.xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, big) == CUDNN_STATUS_NOT_SUPPORTED,
           "data: FFT on a grouped, strided NHWC convolution accepted");
    EXPECT(cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.wd, d.yd, d.cd, d.xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
                                                        &need) == CUDNN_STATUS_NOT_SUPPORTED,
           "data: an FFT workspace size given for a problem FFT does not take");
    EXPECT(BWD_FILTER(d.xd, d.yd, d.wd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, big) == CUDNN_STATUS_NOT_SUPPORTED,
           "filter: FFT on a grouped, strided NHWC convolution accepted");
    EXPECT(BWD_DATA(d.wd, d.yd, d.xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED, big) ==
               CUDNN_STATUS_NOT_SUPPORTED,
           "data: an algorithm not offered accepted");
    EXPECT(BWD_FILTER(d.xd, d.yd, d.wd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD, big) == CUDNN_STATUS_NOT_SUPPORTED,
           "filter: an algorithm not offered accepted");
    cudnnConvolutionBwdDataAlgoPerf_t dperf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    cudnnConvolutionBwdFilterAlgoPerf_t fperf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int returned = 0;
    EXPECT(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.wd, d.yd, d.cd, d.xd, 0, &returned, dperf) ==
               CUDNN_STATUS_BAD_PARAM,
           "data Get_v7: requestedAlgoCount 0 accepted");
    EXPECT(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.xd, d.yd, d.cd, d.wd, 2, &returned, NULL) ==
               CUDNN_STATUS_BAD_PARAM,
           "filter Get_v7: NULL perfResults accepted");
    EXPECT(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.xd, d.yd, d.cd, d.wd, 2, &returned, fperf) == 0 &&
               returned == 2 && fperf[0].algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
           "filter Get_v7: 2 requested");
    EXPECT(cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.wd, w, d.yd, y, d.cd, d.xd, x, 0, &returned, dperf, ws,
                                                       big) == CUDNN_STATUS_BAD_PARAM,
           "data Find: requestedAlgoCount 0 accepted");
    EXPECT(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.xd, x, d.yd, y, d.cd, d.wd, NULL, 1, &returned, fperf, ws,
                                                         big) == CUDNN_STATUS_BAD_PARAM,
           "filter Find: a NULL dw accepted");

    cudnnTensorDescriptor_t bad_t;
    cudnnFilterDescriptor_t bad_w;
    cudnnCreateTensorDescriptor(&bad_t);
    cudnnCreateFilterDescriptor(&bad_w);
    /* "xDesc and wDesc have a non-matching number of input feature maps per group". */
    cudnnSetFilter4dDescriptor(bad_w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, CK, CC, CR, CS);
    EXPECT(BWD_DATA(bad_w, d.yd, d.xd, da, big) == CUDNN_STATUS_BAD_PARAM,
           "data: filter channels x groups != dx channels accepted");
    EXPECT(BWD_FILTER(d.xd, d.yd, bad_w, fa, big) == CUDNN_STATUS_BAD_PARAM,
           "filter: dw channels x groups != x channels accepted");
    EXPECT(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, bad_w, d.yd, d.cd, d.xd, 1, &returned, dperf) ==
               CUDNN_STATUS_BAD_PARAM,
           "data Get_v7: feature maps that differ accepted");
    /* An output channel count not a multiple of the groups: NOT_SUPPORTED
     * for backward data, BAD_PARAM for backward filter. */
    cudnnSetFilter4dDescriptor(bad_w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, CK + 1, CC / CG, CR, CS);
    cudnnSetTensor4dDescriptor(bad_t, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, CN, CK + 1, p.oh, p.ow);
    EXPECT(BWD_DATA(bad_w, bad_t, d.xd, da, big) == CUDNN_STATUS_NOT_SUPPORTED,
           "data: output channels not a multiple of the groups: not NOT_SUPPORTED");
    EXPECT(BWD_FILTER(d.xd, bad_t, bad_w, fa, big) == CUDNN_STATUS_BAD_PARAM,
           "filter: output channels not a multiple of the groups: not BAD_PARAM");
    /* "wDesc, dxDesc, and dyDesc have a non-matching data type". */
    cudnnSetFilter4dDescriptor(bad_w, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, CK, CC / CG, CR, CS);
    EXPECT(BWD_DATA(bad_w, d.yd, d.xd, da, big) == CUDNN_STATUS_BAD_PARAM, "data: half filters, float tensors");
    EXPECT(BWD_FILTER(d.xd, d.yd, bad_w, fa, big) == CUDNN_STATUS_BAD_PARAM, "filter: half dw, float tensors");
    EXPECT(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.xd, d.yd, d.cd, bad_w, fa, &need) ==
               CUDNN_STATUS_BAD_PARAM,
           "filter workspace size: data types that differ accepted");
    /* "dyDesc spatial sizes do not match": BAD_PARAM (the forward says NOT_SUPPORTED). */
    cudnnSetTensor4dDescriptor(bad_t, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, CN, CK, p.oh + 1, p.ow);
    EXPECT(BWD_DATA(d.wd, bad_t, d.xd, da, big) == CUDNN_STATUS_BAD_PARAM, "data: a dy height not the convolution's");
    EXPECT(BWD_FILTER(d.xd, bad_t, d.wd, fa, big) == CUDNN_STATUS_BAD_PARAM,
           "filter: a dy height not the convolution's");
    /* The filter's layout must follow the tensors'. */
    cudnnSetFilter4dDescriptor(bad_w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, CK, CC / CG, CR, CS);
    EXPECT(BWD_DATA(bad_w, d.yd, d.xd, da, big) == CUDNN_STATUS_NOT_SUPPORTED, "data: NCHW filters, NHWC tensors");
    EXPECT(BWD_FILTER(d.xd, d.yd, bad_w, fa, big) == CUDNN_STATUS_NOT_SUPPORTED, "filter: NCHW dw, NHWC tensors");
    /* A data type configuration the tables do not list: bfloat16 data, half compute. */
    const bshape q = p;
    bdescs hb = make_descs(&q, CC_DTYPE_BF16, CUDNN_DATA_HALF);
    EXPECT(cudnnConvolutionBackwardData(h, &one, hb.wd, w, hb.yd, y, hb.cd, da, ws, big, &zero, hb.xd, x) ==
               CUDNN_STATUS_NOT_SUPPORTED,
           "data: bfloat16 with half compute accepted");
    EXPECT(cudnnConvolutionBackwardFilter(h, &one, hb.xd, x, hb.yd, y, hb.cd, fa, ws, big, &zero, hb.wd, w) ==
               CUDNN_STATUS_NOT_SUPPORTED,
           "filter: bfloat16 with half compute accepted");
    EXPECT(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, hb.xd, hb.yd, hb.cd, hb.wd, 1, &returned, fperf) ==
               CUDNN_STATUS_NOT_SUPPORTED,
           "filter Get_v7: bfloat16 with half compute accepted");
    free_descs(&hb);
#undef BWD_DATA
#undef BWD_FILTER
    cudnnDestroyTensorDescriptor(bad_t);
    cudnnDestroyFilterDescriptor(bad_w);
    TU_CUDA(cudaDeviceSynchronize());
    TU_CUDA(cudaFree(x));
    TU_CUDA(cudaFree(w));
    TU_CUDA(cudaFree(y));
    TU_CUDA(cudaFree(ws));
    free_descs(&d);
}

static void backward(void)
{
    cudnnHandle_t h;
    if (cudnnCreate(&h) != CUDNN_STATUS_SUCCESS) {
        EXPECT(0, "cudnnCreate");
        return;
    }
    /* Grouped, strided, dilated, padded: both layouts, the three types,
     * both modes, beta 0 (NaN output) and 0.5. */
    for (int nhwc = 0; nhwc < 2; ++nhwc)
        for (int t = 0; t < ED_DTYPE_COUNT; ++t)
            for (int b = 0; b < 2; ++b) {
                const cudnnConvolutionMode_t mode = (nhwc + t + b) % 2 ? CUDNN_CONVOLUTION : CUDNN_CROSS_CORRELATION;
                const bshape p = make_shape(CN, CC, CH, CW, CK, CG, CR, CS, PAD, STR, DIL, nhwc, mode);
                backward_case(h, &p, ed_dtypes[t], CUDNN_DATA_FLOAT, b ? 0.5f : 0.0f);
            }
    /* TRUE_HALF_CONFIG (half data, half compute): computed exactly too. */
    const bshape ph = make_shape(2, 6, 5, 6, 4, 2, 3, 3, 1, 1, 1, 0, CUDNN_CONVOLUTION);
    backward_case(h, &ph, CC_DTYPE_F16, CUDNN_DATA_HALF, 0.5f);
    /* Ungrouped, stride 1, no dilation: FFT is offered in NCHW float
     * (between the non-deterministic ones and ALGO_1), not in NHWC or f16. */
    const bshape pf = make_shape(2, 3, 6, 5, 4, 1, 3, 2, 1, 1, 1, 0, CUDNN_CROSS_CORRELATION);
    backward_case(h, &pf, CC_DTYPE_F32, CUDNN_DATA_FLOAT, 0.0f);
    backward_case(h, &pf, CC_DTYPE_F32, CUDNN_DATA_FLOAT, 0.5f);
    backward_case(h, &pf, CC_DTYPE_F16, CUDNN_DATA_FLOAT, 0.0f);
    const bshape pn = make_shape(2, 3, 6, 5, 4, 1, 3, 2, 1, 1, 1, 1, CUDNN_CONVOLUTION);
    backward_case(h, &pn, CC_DTYPE_F32, CUDNN_DATA_FLOAT, 0.0f);
    backward_refusals(h);
    TU_CUDA(cudaDeviceSynchronize());
    EXPECT(cudnnDestroy(h) == 0, "cudnnDestroy");
}

int main(void)
{
    tu_seed_from_env();
    gemm();
    convolution();
    backward();
    EXPECT(cc_cpu_live_allocations() == 0, "%zu device allocation(s) leaked", cc_cpu_live_allocations());
    EXPECT(cc_cpu_live_handles() == 0, "%zu handle(s) leaked", cc_cpu_live_handles());
    return tu_finish("test_emu_libs");
}
