/* Selects the precision of a numeric source file, which CMake compiles twice: as float (the
 * training path) and with MT_F64 defined as double (the verification path). Include it after
 * the public headers, which leave MT_REAL and MT_ undefined. */
#ifndef METATRAIN_PRECISION_H
#define METATRAIN_PRECISION_H

#include <cblas.h>
#undef I /* complex.h's imaginary unit, which cblas.h pulls in; layers use I for widths */

#ifdef MT_F64
#define MT_REAL double
#define MT_(name) name##_f64
#define mt_gemm cblas_dgemm
#define MT_REAL_IS_DOUBLE 1
#else
#define MT_REAL float
#define MT_(name) name
#define mt_gemm cblas_sgemm
#define MT_REAL_IS_DOUBLE 0
#endif

typedef MT_REAL mt_real;

#include "kernel.h"

/* Row-major C (M,N) = alpha · op(A) · op(B) + beta · C; ta/tb: transpose A/B (src/nn/gemm.c). */
#define mt_matmul MT_(mt_nn_matmul)
void MT_(mt_nn_matmul)(int ta, int tb, int M, int N, int K, mt_real alpha, const mt_real *A, const mt_real *B,
                       mt_real beta, mt_real *C);
/* The same with leading dimensions (row strides), for products on blocks of larger matrices. */
#define mt_matmul_ld MT_(mt_nn_matmul_ld)
void MT_(mt_nn_matmul_ld)(int ta, int tb, int M, int N, int K, mt_real alpha, const mt_real *A, int lda,
                          const mt_real *B, int ldb, mt_real beta, mt_real *C, int ldc);

#endif
