/* The small matrix kernels of src/nn/gemm.c (register tiles, the Bᵀ transpose, dot products,
 * edges) and the OpenBLAS path against a plain triple loop, for every transpose combination,
 * alpha and beta, on the shapes the layers use and ragged ones around the tile widths. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "metatrain/rng.h"

/* src/core/precision.h declares these per precision; the test needs both at once. */
void mt_nn_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, const float *B, float beta,
                  float *C);
void mt_nn_matmul_f64(int ta, int tb, int M, int N, int K, double alpha, const double *A, const double *B, double beta,
                      double *C);
void mt_nn_matmul_ld(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                     float beta, float *C, int ldc);

/* M, N, K: the sinusoid MLP's (10 samples, 40 hidden, 1 in and out), the 4-conv's head and
 * convolutions (small and above the OpenBLAS threshold), and sizes one off the 4-, 8- and
 * 16-wide tiles. */
static const int shapes[][3] = {
    {10, 40, 40}, {40, 40, 10}, {10, 40, 1},  {10, 1, 40},   {1, 40, 10},   {40, 1, 10},    {10, 1, 1},
    {5, 5, 256},  {75, 5, 256}, {5, 256, 75}, {64, 20, 576}, {576, 20, 64}, {64, 245, 576}, {3, 7, 5},
    {5, 9, 3},    {7, 15, 17},  {9, 17, 15},  {17, 33, 9},   {4, 16, 1},    {1, 1, 1},      {2, 31, 33},
};

static double reference(int ta, int tb, int M, int N, int K, const double *A, const double *B, int i, int j) {
    double sum = 0;
    for (int k = 0; k < K; k++)
        sum += (ta ? A[(size_t)k * M + i] : A[(size_t)i * K + k]) * (tb ? B[(size_t)j * K + k] : B[(size_t)k * N + j]);
    return sum;
}

/* Relative to the magnitude of the terms, so long sums of mixed signs are judged fairly. */
static void check_shape(int ta, int tb, int M, int N, int K, double alpha, double beta, uint32_t key) {
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    double *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B), *C = malloc(nc * sizeof *C);
    float *Af = malloc(na * sizeof *Af), *Bf = malloc(nb * sizeof *Bf), *Cf = malloc(nc * sizeof *Cf);
    double *C0 = malloc(nc * sizeof *C0);
    assert_true(A && B && C && Af && Bf && Cf && C0);
    mt_rng rng;
    mt_rng_init(&rng, 7, key, 0, MT_RNG_STREAM_TEST);
    for (size_t i = 0; i < na; i++) Af[i] = (float)(A[i] = mt_rng_uniform(&rng) - 0.5);
    for (size_t i = 0; i < nb; i++) Bf[i] = (float)(B[i] = mt_rng_uniform(&rng) - 0.5);
    for (size_t i = 0; i < nc; i++) Cf[i] = (float)(C[i] = C0[i] = mt_rng_uniform(&rng) - 0.5);
    mt_nn_matmul_f64(ta, tb, M, N, K, alpha, A, B, beta, C);
    mt_nn_matmul(ta, tb, M, N, K, (float)alpha, Af, Bf, (float)beta, Cf);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double want =
                alpha * reference(ta, tb, M, N, K, A, B, i, j) + (beta != 0 ? beta * C0[(size_t)i * N + j] : 0);
            double scale = fabs(alpha) * 0.25 * K + fabs(beta) + 1;
            double err64 = fabs(C[(size_t)i * N + j] - want) / scale;
            double err32 = fabs(Cf[(size_t)i * N + j] - want) / scale;
            if (err64 > 1e-13 || err32 > 1e-5)
                fail_msg("C(%d,%d) of %s%s %dx%dx%d alpha %g beta %g: want %.17g, double %.17g, float %.9g", i, j,
                         ta ? "Aᵀ" : "A", tb ? "Bᵀ" : "B", M, N, K, alpha, beta, want, C[(size_t)i * N + j],
                         (double)Cf[(size_t)i * N + j]);
        }
    free(A), free(B), free(C), free(Af), free(Bf), free(Cf), free(C0);
}

static void test_every_shape_and_transpose(void **state) {
    (void)state;
    const double alphas[] = {1, -0.5}, betas[] = {0, 1, 0.25};
    uint32_t key = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int t = 0; t < 4; t++)
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 3; b++)
                    check_shape(t >> 1, t & 1, shapes[s][0], shapes[s][1], shapes[s][2], alphas[a], betas[b], key++);
}

/* beta = 0 must overwrite C, even where it held NaN (an uninitialized workspace). */
static void test_beta_zero_ignores_old_c(void **state) {
    (void)state;
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[4] = {NAN, NAN, NAN, NAN};
    mt_nn_matmul(0, 0, 2, 2, 3, 1, A, B, 0, C); /* (2,3)·(3,2) */
    assert_float_equal(C[0], 4, 0), assert_float_equal(C[1], 5, 0);
    assert_float_equal(C[2], 10, 0), assert_float_equal(C[3], 11, 0);
}

/* Blocks of larger matrices (the convolution's per-chunk products): each operand padded by a few
 * columns, so every kernel must honour its leading dimension; the result must equal the
 * contiguous product (to rounding: a column of C with ldc > 1 cannot take the axpy route), and
 * the padding must stay untouched. */
static void check_shape_ld(int ta, int tb, int M, int N, int K, float alpha, float beta, uint32_t key) {
    int ra = ta ? K : M, ca = ta ? M : K, rb = tb ? N : K, cb = tb ? K : N;
    int lda = ca + 3, ldb = cb + 1, ldc = N + 5;
    float *A = malloc((size_t)ra * ca * sizeof *A), *B = malloc((size_t)rb * cb * sizeof *B);
    float *C = malloc((size_t)M * N * sizeof *C), *Ap = malloc((size_t)ra * lda * sizeof *Ap);
    float *Bp = malloc((size_t)rb * ldb * sizeof *Bp), *Cp = malloc((size_t)M * ldc * sizeof *Cp);
    assert_true(A && B && C && Ap && Bp && Cp);
    mt_rng rng;
    mt_rng_init(&rng, 11, key, 0, MT_RNG_STREAM_TEST);
    for (size_t i = 0; i < (size_t)ra * lda; i++) Ap[i] = 1e30f; /* padding: poisons any product that reads it */
    for (size_t i = 0; i < (size_t)rb * ldb; i++) Bp[i] = 1e30f;
    for (size_t i = 0; i < (size_t)M * ldc; i++) Cp[i] = -7;
    for (int r = 0; r < ra; r++)
        for (int c = 0; c < ca; c++)
            Ap[(size_t)r * lda + c] = A[(size_t)r * ca + c] = (float)(mt_rng_uniform(&rng) - 0.5);
    for (int r = 0; r < rb; r++)
        for (int c = 0; c < cb; c++)
            Bp[(size_t)r * ldb + c] = B[(size_t)r * cb + c] = (float)(mt_rng_uniform(&rng) - 0.5);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++)
            Cp[(size_t)i * ldc + j] = C[(size_t)i * N + j] = (float)(mt_rng_uniform(&rng) - 0.5);
    mt_nn_matmul(ta, tb, M, N, K, alpha, A, B, beta, C);
    mt_nn_matmul_ld(ta, tb, M, N, K, alpha, Ap, lda, Bp, ldb, beta, Cp, ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ldc; j++) {
            float got = Cp[(size_t)i * ldc + j], want = j < N ? C[(size_t)i * N + j] : -7;
            float tol = j < N ? 1e-5f * (fabsf(alpha) * 0.25f * (float)K + fabsf(beta) + 1) : 0;
            if (!(fabsf(got - want) <= tol))
                fail_msg("C(%d,%d) of %s%s %dx%dx%d with leading dimensions %d %d %d: %.9g, want %.9g", i, j,
                         ta ? "Aᵀ" : "A", tb ? "Bᵀ" : "B", M, N, K, lda, ldb, ldc, (double)got, (double)want);
        }
    free(A), free(B), free(C), free(Ap), free(Bp), free(Cp);
}

static void test_leading_dimensions(void **state) {
    (void)state;
    uint32_t key = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int t = 0; t < 4; t++) {
            check_shape_ld(t >> 1, t & 1, shapes[s][0], shapes[s][1], shapes[s][2], 1, 0, key++);
            check_shape_ld(t >> 1, t & 1, shapes[s][0], shapes[s][1], shapes[s][2], -0.5f, 0.25f, key++);
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_shape_and_transpose),
        cmocka_unit_test(test_beta_zero_ignores_old_c),
        cmocka_unit_test(test_leading_dimensions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
