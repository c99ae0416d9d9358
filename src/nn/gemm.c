/* Matrix products for the layers. Large products go to OpenBLAS. Small ones run here: OpenBLAS's
 * small-matrix kernels (0.3.21, AVX-512 cores) take a malloc'ed scratch buffer on every call,
 * which would break the engine's promise that forward, backward and HVP never allocate, and
 * for the tiny products of the MLPs a plain loop beats the call overhead anyway. */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <string.h>

/* OpenBLAS routes products up to M·N·K = 10^6 (and transposed-A ones with M·N <= 1200) to its
 * small kernels: keep every such product here. */
#define SMALL_MNK 1.0e6

/* C (M,N) += alpha · A (M,K) · B (K,N) */
MT_KERNEL static void gemm_nn(int M, int N, int K, mt_real alpha, const mt_real *restrict A,
                           const mt_real *restrict B, mt_real *restrict C) {
    for (int i = 0; i < M; i++) {
        mt_real *restrict c = C + (size_t)i * N;
        for (int k = 0; k < K; k++) {
            mt_real a = alpha * A[(size_t)i * K + k];
            const mt_real *restrict b = B + (size_t)k * N;
            for (int j = 0; j < N; j++) c[j] += a * b[j];
        }
    }
}

/* C (M,N) += alpha · Aᵀ · B, A (K,M) */
MT_KERNEL static void gemm_tn(int M, int N, int K, mt_real alpha, const mt_real *restrict A,
                           const mt_real *restrict B, mt_real *restrict C) {
    for (int k = 0; k < K; k++) {
        const mt_real *restrict b = B + (size_t)k * N;
        for (int i = 0; i < M; i++) {
            mt_real a = alpha * A[(size_t)k * M + i];
            mt_real *restrict c = C + (size_t)i * N;
            for (int j = 0; j < N; j++) c[j] += a * b[j];
        }
    }
}

/* C (M,N) += alpha · A · Bᵀ, B (N,K): dot products with eight partial sums, so they vectorize
 * without reassociating one sum. */
MT_KERNEL static void gemm_nt(int M, int N, int K, mt_real alpha, const mt_real *restrict A,
                           const mt_real *restrict B, mt_real *restrict C) {
    for (int i = 0; i < M; i++) {
        const mt_real *restrict a = A + (size_t)i * K;
        for (int j = 0; j < N; j++) {
            const mt_real *restrict b = B + (size_t)j * K;
            mt_real part[8] = {0};
            int k = 0;
            for (; k + 8 <= K; k += 8)
                for (int l = 0; l < 8; l++) part[l] += a[k + l] * b[k + l];
            mt_real sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
            for (; k < K; k++) sum += a[k] * b[k];
            C[(size_t)i * N + j] += alpha * sum;
        }
    }
}

/* C (M,N) += alpha · Aᵀ · Bᵀ, A (K,M), B (N,K) */
static void gemm_tt(int M, int N, int K, mt_real alpha, const mt_real *A, const mt_real *B, mt_real *C) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            mt_real sum = 0;
            for (int k = 0; k < K; k++) sum += A[(size_t)k * M + i] * B[(size_t)j * K + k];
            C[(size_t)i * N + j] += alpha * sum;
        }
}

void MT_(mt_nn_matmul)(int ta, int tb, int M, int N, int K, mt_real alpha, const mt_real *A,
                       const mt_real *B, mt_real beta, mt_real *C) {
    double mnk = (double)M * N * K;
    mt_nn_gemm_flops += 2 * mnk;
    int small = mnk <= SMALL_MNK || (ta && !tb && (double)M * N <= 1200);
    if (!small) {
        mt_gemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, ta ? M : K, B, tb ? K : N, beta, C, N);
        return;
    }
    size_t n = (size_t)M * N;
    if (beta == 0) memset(C, 0, n * sizeof *C);
    else if (beta != 1)
        for (size_t i = 0; i < n; i++) C[i] *= beta;
    if (!ta && !tb) gemm_nn(M, N, K, alpha, A, B, C);
    else if (ta && !tb) gemm_tn(M, N, K, alpha, A, B, C);
    else if (!ta && tb) gemm_nt(M, N, K, alpha, A, B, C);
    else gemm_tt(M, N, K, alpha, A, B, C);
}
