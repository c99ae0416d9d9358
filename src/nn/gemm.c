/* Matrix products for the layers. Large products go to OpenBLAS. Small ones run here: OpenBLAS's
 * small-matrix kernels (0.3.21, AVX-512 cores) take a malloc'ed scratch buffer on every call,
 * which would break the engine's promise that forward, backward and HVP never allocate, and
 * for the tiny products of the MLPs (10x40x40) its call and packing overhead is most of the work.
 *
 * The small kernel keeps a tile of C (4 rows, one vector wide) in registers over the whole K
 * loop, reading A through strides so that A and Aᵀ share it. Bᵀ is first transposed into a
 * stack buffer. The kernels are GCC vector extensions, cloned per target (MT_KERNEL: AVX-512,
 * FMA, baseline x86-64), so one binary runs the widest vectors each CPU has. */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <string.h>

/* OpenBLAS routes products up to M·N·K = 10^6 (and transposed-A ones with M·N <= 1200) to its
 * small kernels: keep every such product here. */
#define SMALL_MNK 1.0e6
/* Largest Bᵀ (in elements) transposed on the stack: 64 KiB of floats, 128 KiB of doubles. */
#define TRANSPOSE_MAX 16384

/* Vectors of 64 and 32 bytes (GCC vector extensions): one AVX-512 register, two AVX2 or four SSE
 * registers, whichever the target_clones version compiles for. Loads and stores are unaligned. */
typedef mt_real vec_full __attribute__((vector_size(64)));
typedef mt_real vec_half __attribute__((vector_size(32)));
#define FULL ((int)(sizeof(vec_full) / sizeof(mt_real)))
#define HALF ((int)(sizeof(vec_half) / sizeof(mt_real)))

/* C (MR, one vector) += alpha · A (MR,K) · B (K, one vector); A's (i,k) at A[i·ai + k·ak], B's
 * (k,j) at B[k·ldb + j]. The MR accumulators stay in registers for the whole K loop. */
#define DEFINE_TILE(NAME, VEC, MR_)                                                                                    \
    MT_KERNEL static void NAME(int K, mt_real alpha, const mt_real *restrict A, size_t ai, size_t ak,                  \
                               const mt_real *restrict B, size_t ldb, mt_real *restrict C, size_t ldc) {               \
        VEC acc[MR_], b, c;                                                                                            \
        for (int r = 0; r < MR_; r++) acc[r] = (VEC){0};                                                               \
        for (int k = 0; k < K; k++) {                                                                                  \
            memcpy(&b, B + (size_t)k * ldb, sizeof b);                                                                 \
            for (int r = 0; r < MR_; r++) acc[r] += A[r * ai + (size_t)k * ak] * b;                                    \
        }                                                                                                              \
        for (int r = 0; r < MR_; r++) {                                                                                \
            memcpy(&c, C + r * ldc, sizeof c);                                                                         \
            c += alpha * acc[r];                                                                                       \
            memcpy(C + r * ldc, &c, sizeof c);                                                                         \
        }                                                                                                              \
    }
DEFINE_TILE(tile_4_full, vec_full, 4)
DEFINE_TILE(tile_2_full, vec_full, 2)
DEFINE_TILE(tile_1_full, vec_full, 1)
DEFINE_TILE(tile_4_half, vec_half, 4)
DEFINE_TILE(tile_2_half, vec_half, 2)
DEFINE_TILE(tile_1_half, vec_half, 1)

/* AVX-512 only: C (MR, two vectors) += alpha · A (MR,K) · B (K, two vectors). Twice the
 * accumulators of a one-vector tile, so that eight independent FMA chains hide the FMA latency
 * and each broadcast of A feeds two FMAs. Each C entry is summed over k in the same order as in
 * the one-vector tiles, so the results are the same bits. With AVX2 the accumulators would not
 * fit the sixteen registers, hence a plain target, chosen at run time, not a clone. */
#if defined(__x86_64__) && defined(__GNUC__) && !(defined(__clang__) && __clang_major__ < 18)
#define HAVE_WIDE_TILES 1
#define DEFINE_WIDE_TILE(NAME, MR_)                                                                                    \
    __attribute__((target("avx512f"))) static void NAME(int K, mt_real alpha, const mt_real *restrict A, size_t ai,    \
                                                        size_t ak, const mt_real *restrict B, size_t ldb,              \
                                                        mt_real *restrict C, size_t ldc) {                             \
        vec_full acc0[MR_], acc1[MR_], b0, b1, c;                                                                      \
        for (int r = 0; r < MR_; r++) acc0[r] = (vec_full){0}, acc1[r] = (vec_full){0};                                \
        for (int k = 0; k < K; k++) {                                                                                  \
            memcpy(&b0, B + (size_t)k * ldb, sizeof b0);                                                               \
            memcpy(&b1, B + (size_t)k * ldb + FULL, sizeof b1);                                                        \
            for (int r = 0; r < MR_; r++) {                                                                            \
                mt_real a = A[r * ai + (size_t)k * ak];                                                                \
                acc0[r] += a * b0;                                                                                     \
                acc1[r] += a * b1;                                                                                     \
            }                                                                                                          \
        }                                                                                                              \
        for (int r = 0; r < MR_; r++) {                                                                                \
            memcpy(&c, C + r * ldc, sizeof c);                                                                         \
            c += alpha * acc0[r];                                                                                      \
            memcpy(C + r * ldc, &c, sizeof c);                                                                         \
            memcpy(&c, C + r * ldc + FULL, sizeof c);                                                                  \
            c += alpha * acc1[r];                                                                                      \
            memcpy(C + r * ldc + FULL, &c, sizeof c);                                                                  \
        }                                                                                                              \
    }
DEFINE_WIDE_TILE(wide_tile_4, 4)
DEFINE_WIDE_TILE(wide_tile_2, 2)
DEFINE_WIDE_TILE(wide_tile_1, 1)
#else
#define HAVE_WIDE_TILES 0
#endif

/* Any tile narrower than half a vector: the ragged right edge (and products with small N). */
static void tile_edge(int mr, int nr, int K, mt_real alpha, const mt_real *A, size_t ai, size_t ak, const mt_real *B,
                      size_t ldb, mt_real *C, size_t ldc) {
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++) {
            mt_real sum = 0;
            for (int k = 0; k < K; k++) sum += A[r * ai + (size_t)k * ak] * B[(size_t)k * ldb + j];
            C[r * ldc + j] += alpha * sum;
        }
}

/* The ragged right edge, nr < HALF columns: B's columns padded with zeros to half a vector on the
 * stack, so the vector tiles run it (scalar code ran it at a tenth of their speed: the 4-conv's
 * support batch has products 20 and 9 columns wide). K·HALF <= TRANSPOSE_MAX. */
static void edge_gemm(int M, int nr, int K, mt_real alpha, const mt_real *A, size_t ai, size_t ak, const mt_real *B,
                      size_t ldb, mt_real *C, size_t ldc) {
    mt_real bpad[TRANSPOSE_MAX], cpad[4 * HALF];
    for (int k = 0; k < K; k++)
        for (int j = 0; j < HALF; j++) bpad[(size_t)k * HALF + j] = j < nr ? B[(size_t)k * ldb + j] : 0;
    for (int i = 0; i < M;) {
        int mr = M - i >= 4 ? 4 : M - i >= 2 ? 2 : 1;
        for (int r = 0; r < mr; r++)
            for (int j = 0; j < HALF; j++) cpad[r * HALF + j] = j < nr ? C[(size_t)(i + r) * ldc + j] : 0;
        (mr == 4   ? tile_4_half
         : mr == 2 ? tile_2_half
                   : tile_1_half)(K, alpha, A + (size_t)i * ai, ai, ak, bpad, HALF, cpad, HALF);
        for (int r = 0; r < mr; r++)
            for (int j = 0; j < nr; j++) C[(size_t)(i + r) * ldc + j] = cpad[r * HALF + j];
        i += mr;
    }
}

/* C (M,N) += alpha · A · B with A's (i,k) at A[i·ai + k·ak], B's (k,j) at B[k·ldb + j] and C's
 * (i,j) at C[i·ldc + j]. */
static void small_gemm(int M, int N, int K, mt_real alpha, const mt_real *A, size_t ai, size_t ak, const mt_real *B,
                       size_t ldb, mt_real *C, size_t ldc) {
    int j = 0;
#if HAVE_WIDE_TILES
    static int have_avx512f = -1; /* asked once */
    if (have_avx512f < 0) have_avx512f = __builtin_cpu_supports("avx512f") != 0;
    for (; have_avx512f && j + 2 * FULL <= N; j += 2 * FULL)
        for (int i = 0; i < M;) {
            int mr = M - i >= 4 ? 4 : M - i >= 2 ? 2 : 1;
            (mr == 4   ? wide_tile_4
             : mr == 2 ? wide_tile_2
                       : wide_tile_1)(K, alpha, A + (size_t)i * ai, ai, ak, B + j, ldb, C + (size_t)i * ldc + j, ldc);
            i += mr;
        }
#endif
    while (j < N) {
        int nr = N - j >= FULL ? FULL : N - j >= HALF ? HALF : N - j;
        if (nr < HALF && (size_t)K * HALF <= TRANSPOSE_MAX) {
            edge_gemm(M, nr, K, alpha, A, ai, ak, B + j, ldb, C + j, ldc);
            break;
        }
        for (int i = 0; i < M;) {
            int mr = M - i >= 4 ? 4 : M - i >= 2 ? 2 : 1;
            const mt_real *a = A + (size_t)i * ai;
            mt_real *c = C + (size_t)i * ldc + j;
            if (nr == FULL)
                (mr == 4 ? tile_4_full : mr == 2 ? tile_2_full : tile_1_full)(K, alpha, a, ai, ak, B + j, ldb, c, ldc);
            else if (nr == HALF)
                (mr == 4 ? tile_4_half : mr == 2 ? tile_2_half : tile_1_half)(K, alpha, a, ai, ak, B + j, ldb, c, ldc);
            else
                tile_edge(mr, nr, K, alpha, a, ai, ak, B + j, ldb, c, ldc);
            i += mr;
        }
        j += nr;
    }
}

/* C (M,N) += alpha · A · Bᵀ, A (M,K) and B (N,K) row-major, when Bᵀ is too big for the stack:
 * dot products with eight partial sums, so they vectorize without reassociating one sum. */
MT_KERNEL static void gemm_nt_dots(int M, int N, int K, mt_real alpha, const mt_real *restrict A, size_t lda,
                                   const mt_real *restrict B, size_t ldb, mt_real *restrict C, size_t ldc) {
    for (int i = 0; i < M; i++) {
        const mt_real *restrict a = A + (size_t)i * lda;
        for (int j = 0; j < N; j++) {
            const mt_real *restrict b = B + (size_t)j * ldb;
            mt_real part[8] = {0};
            int k = 0;
            for (; k + 8 <= K; k += 8)
                for (int l = 0; l < 8; l++) part[l] += a[k + l] * b[k + l];
            mt_real sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
            for (; k < K; k++) sum += a[k] * b[k];
            C[(size_t)i * ldc + j] += alpha * sum;
        }
    }
}

/* C (M,N) += alpha · Aᵀ · Bᵀ, A (K,M), B (N,K) (no layer needs it; kept for completeness) */
static void gemm_tt(int M, int N, int K, mt_real alpha, const mt_real *A, size_t lda, const mt_real *B, size_t ldb,
                    mt_real *C, size_t ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            mt_real sum = 0;
            for (int k = 0; k < K; k++) sum += A[(size_t)k * lda + i] * B[(size_t)j * ldb + k];
            C[(size_t)i * ldc + j] += alpha * sum;
        }
}

/* c (M) += alpha · Σ_k A (K,M) row k · b[k·ldb] */
MT_KERNEL static void axpys(int M, int K, mt_real alpha, const mt_real *restrict A, size_t lda,
                            const mt_real *restrict b, size_t ldb, mt_real *restrict c) {
    for (int k = 0; k < K; k++) {
        mt_real s = alpha * b[(size_t)k * ldb];
        const mt_real *restrict a = A + (size_t)k * lda;
        for (int i = 0; i < M; i++) c[i] += s * a[i];
    }
}

/* Eight values: the rows and columns of transpose's 8x8 blocks. Shuffles with constant indices
 * (GCC 12 and clang) compile to the target's unpack and permute instructions. */
typedef mt_real vec_8 __attribute__((vector_size(8 * sizeof(mt_real))));

#define SHUFFLE_8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
/* Rows i, i+1 → elements 0,1,4,5 and 2,3,6,7 of each, interleaved. */
#define PAIRS(lo, hi, a, b)                                                                                            \
    (lo = SHUFFLE_8(a, b, 0, 8, 1, 9, 4, 12, 5, 13), hi = SHUFFLE_8(a, b, 2, 10, 3, 11, 6, 14, 7, 15))
#define QUADS(lo, hi, a, b)                                                                                            \
    (lo = SHUFFLE_8(a, b, 0, 1, 8, 9, 4, 5, 12, 13), hi = SHUFFLE_8(a, b, 2, 3, 10, 11, 6, 7, 14, 15))
#define HALVES(lo, hi, a, b)                                                                                           \
    (lo = SHUFFLE_8(a, b, 0, 1, 2, 3, 8, 9, 10, 11), hi = SHUFFLE_8(a, b, 4, 5, 6, 7, 12, 13, 14, 15))

/* dst's rows k0 … k0+7, columns j0 … j0+7 (dst's rows N apart) = the block of src at rows j0 …,
 * columns k0 … (src's rows ld apart), transposed in registers: three rounds of interleaving
 * pairs, 24 shuffles for 64 values. Named variables, not arrays, keep every value in a register. */
__attribute__((always_inline)) static inline void transpose_8x8(mt_real *restrict dst, size_t N,
                                                                const mt_real *restrict src, size_t ld) {
    vec_8 r0, r1, r2, r3, r4, r5, r6, r7, t0, t1, t2, t3, t4, t5, t6, t7;
    memcpy(&r0, src, sizeof r0), memcpy(&r1, src + ld, sizeof r1), memcpy(&r2, src + 2 * ld, sizeof r2);
    memcpy(&r3, src + 3 * ld, sizeof r3), memcpy(&r4, src + 4 * ld, sizeof r4), memcpy(&r5, src + 5 * ld, sizeof r5);
    memcpy(&r6, src + 6 * ld, sizeof r6), memcpy(&r7, src + 7 * ld, sizeof r7);
    PAIRS(t0, t1, r0, r1), PAIRS(t2, t3, r2, r3), PAIRS(t4, t5, r4, r5), PAIRS(t6, t7, r6, r7);
    /* r[m], r[m+4] for m < 4: columns m and m+4 of rows 0-3 and of rows 4-7 */
    QUADS(r0, r1, t0, t2), QUADS(r2, r3, t1, t3), QUADS(r4, r5, t4, t6), QUADS(r6, r7, t5, t7);
    HALVES(t0, t4, r0, r4), HALVES(t1, t5, r1, r5), HALVES(t2, t6, r2, r6), HALVES(t3, t7, r3, r7);
    memcpy(dst, &t0, sizeof t0), memcpy(dst + N, &t1, sizeof t1), memcpy(dst + 2 * N, &t2, sizeof t2);
    memcpy(dst + 3 * N, &t3, sizeof t3), memcpy(dst + 4 * N, &t4, sizeof t4), memcpy(dst + 5 * N, &t5, sizeof t5);
    memcpy(dst + 6 * N, &t6, sizeof t6), memcpy(dst + 7 * N, &t7, sizeof t7);
}

/* dst (K,N) = src (N,K)ᵀ, src's rows ld apart: 8x8 blocks in registers, then 4x4 blocks and
 * single values at the edges */
MT_KERNEL static void transpose(mt_real *restrict dst, const mt_real *restrict src, size_t ld, int N, int K) {
    int j = 0;
    for (; j + 8 <= N; j += 8) {
        int k = 0;
        for (; k + 8 <= K; k += 8) transpose_8x8(dst + (size_t)k * N + j, (size_t)N, src + (size_t)j * ld + k, ld);
        for (; k < K; k++)
            for (int r = 0; r < 8; r++) dst[(size_t)k * N + j + r] = src[(size_t)(j + r) * ld + k];
    }
    for (; j + 4 <= N; j += 4) {
        int k = 0;
        for (; k + 4 <= K; k += 4) {
            mt_real blk[4][4];
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) blk[r][c] = src[(size_t)(j + r) * ld + k + c];
            for (int c = 0; c < 4; c++)
                for (int r = 0; r < 4; r++) dst[(size_t)(k + c) * N + j + r] = blk[r][c];
        }
        for (; k < K; k++)
            for (int r = 0; r < 4; r++) dst[(size_t)k * N + j + r] = src[(size_t)(j + r) * ld + k];
    }
    for (; j < N; j++)
        for (int k = 0; k < K; k++) dst[(size_t)k * N + j] = src[(size_t)j * ld + k];
}

void MT_(mt_nn_matmul_ld)(int ta, int tb, int M, int N, int K, mt_real alpha, const mt_real *A, int lda,
                          const mt_real *B, int ldb, mt_real beta, mt_real *C, int ldc) {
    double mnk = (double)M * N * K;
    mt_nn_gemm_flops += 2 * mnk;
    int small = mnk <= SMALL_MNK || (ta && !tb && (double)M * N <= 1200);
    if (!small) {
        mt_gemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
                B, ldb, beta, C, ldc);
        return;
    }
    if (beta == 0 && ldc == N) /* one call, not one per row: the rows of the MLPs are 40 wide */
        memset(C, 0, (size_t)M * N * sizeof *C);
    else
        for (int i = 0; i < M; i++) {
            mt_real *c = C + (size_t)i * ldc;
            if (beta == 0)
                memset(c, 0, (size_t)N * sizeof *c);
            else if (beta != 1)
                for (int j = 0; j < N; j++) c[j] *= beta;
        }
    /* A's (i,k) is A[i·lda + k], or A[k·lda + i] when transposed */
    size_t ai = ta ? 1 : (size_t)lda, ak = ta ? (size_t)lda : 1;
    if (ta && !tb && N == 1) { /* C (M,1) += Σ_k A's row k · B[k]: axpys along A's contiguous rows */
        if (ldc == 1)
            axpys(M, K, alpha, A, (size_t)lda, B, (size_t)ldb, C);
        else
            small_gemm(M, N, K, alpha, A, ai, ak, B, (size_t)ldb, C, (size_t)ldc);
    } else if (!tb) {
        small_gemm(M, N, K, alpha, A, ai, ak, B, (size_t)ldb, C, (size_t)ldc);
    } else if (!ta && N < HALF) { /* a few long dot products: no transpose */
        gemm_nt_dots(M, N, K, alpha, A, (size_t)lda, B, (size_t)ldb, C, (size_t)ldc);
    } else if (N == 1 || (K == 1 && ldb == 1)) { /* B (N,K) and Bᵀ (K,N) are the same array */
        small_gemm(M, N, K, alpha, A, ai, ak, B, 1, C, (size_t)ldc);
    } else if ((size_t)N * K <= TRANSPOSE_MAX) {
        mt_real bt[TRANSPOSE_MAX];
        transpose(bt, B, (size_t)ldb, N, K);
        small_gemm(M, N, K, alpha, A, ai, ak, bt, (size_t)N, C, (size_t)ldc);
    } else if (!ta) {
        gemm_nt_dots(M, N, K, alpha, A, (size_t)lda, B, (size_t)ldb, C, (size_t)ldc);
    } else {
        gemm_tt(M, N, K, alpha, A, (size_t)lda, B, (size_t)ldb, C, (size_t)ldc);
    }
}

void MT_(mt_nn_matmul)(int ta, int tb, int M, int N, int K, mt_real alpha, const mt_real *A, const mt_real *B,
                       mt_real beta, mt_real *C) {
    MT_(mt_nn_matmul_ld)(ta, tb, M, N, K, alpha, A, ta ? M : K, B, tb ? K : N, beta, C, N);
}
