/* 3x3 convolution with padding 1 and stride 1 or 2, as im2col plus one GEMM per pass for the
 * whole batch (per-sample products are too thin to run near the GEMM ceiling). Activations are
 * channel-major, x (C,B,H,W) and y (O,B,Ho,Wo), so the GEMM's output is y itself:
 *   col (K, B·P) holds every sample's receptive fields, K = C·9, P = Ho·Wo;
 *   y (O, B·P) = W (O,K) · col + b.
 * The batch goes through in chunks of samples (mt_nn_conv_work, planned by mt_nn_ws_create): the
 * forward passes keep the whole batch's fields for the backward ones when they fit the plan's
 * capacity, and otherwise every pass rebuilds one chunk's fields at a time in a small scratch
 * matrix, so that memory does not grow with batch × fields (the 20-way query batch's fields
 * alone would be 34 MB in one layer, where its 20-image support batch keeps them).
 * im2col and its adjoint are src/nn/im2col.c.
 *
 * Most of a 4-conv task's time is OpenBLAS's sgemm, at 85 to 95% of its ceiling while it runs;
 * the rest is passes over the activations (fields, batch norm, ReLU, bias fills). Both this and
 * PyTorch do the same FLOPs, so going further needs fewer such passes (batch norm fused with its
 * ReLU) or a GEMM that packs its operand straight from the image, not faster kernels. */
#include "metatrain/nn.h"
#include "core/precision.h"
#include "nn/im2col.h"

#include <stdint.h>
#include <string.h>

typedef MT_(mt_nn_conv_work) mt_conv_work;

static inline int out_size(int n, int stride) { return (n - 1) / stride + 1; }

/* Columns [first, first + n) of each row o of y (O, ld) = b[o]: the bias, which the GEMM then adds
 * to (beta = 1), instead of OpenBLAS zeroing y (beta = 0) and another pass adding b. */
MT_KERNEL static void fill_bias(mt_real *y, size_t ld, const mt_real *b, int O, size_t first, size_t n) {
    for (int o = 0; o < O; o++)
        for (size_t p = 0; p < n; p++) y[(size_t)o * ld + first + p] = b[o];
}

/* db (O) += Σ over each row of Y (O, BP), with eight partial sums so that it vectorizes */
MT_KERNEL static void add_row_sums(mt_real *db, const mt_real *Y, int O, size_t BP) {
    for (int o = 0; o < O; o++) {
        const mt_real *row = Y + (size_t)o * BP;
        mt_real part[8] = {0};
        size_t p = 0;
        for (; p + 8 <= BP; p += 8)
            for (int l = 0; l < 8; l++) part[l] += row[p + l];
        mt_real sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        for (; p < BP; p++) sum += row[p];
        db[o] += sum;
    }
}

/* One chunk of the batch: samples n0 … n0 + nb − 1. */
typedef struct {
    int n0, nb;
    size_t ld; /* row stride of the chunk's fields: B·P within kept fields, nb·P in scratch */
} chunk_t;

/* The kept fields (K, B·P) when this batch's fit the plan's capacity, else NULL: rebuild. */
static mt_real *kept(const mt_conv_work *cw, mt_real *col, int B, int C, int P) {
    return col && (size_t)B * C * 9 * P <= cw->capacity ? col : NULL;
}

static chunk_t chunk_at(const mt_conv_work *cw, const mt_real *kept_col, int B, int P, int n0) {
    chunk_t ch = {n0, B - n0 < cw->chunk ? B - n0 : cw->chunk, 0};
    ch.ld = kept_col ? (size_t)B * P : (size_t)ch.nb * P;
    return ch;
}

/* The chunk's fields of x: a view into kept (K, B·P) fields, or rebuilt into scratch when
 * nothing is kept (with build set, the forward passes fill the kept fields the first time). */
static const mt_real *chunk_fields(mt_real *kept, mt_real *scratch, int build, const mt_real *x, chunk_t ch, int B,
                                   int C, int H, int Wd, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride);
    mt_real *col = kept ? kept + (size_t)ch.n0 * P : scratch;
    if (build || !kept) MT_(mt_nn_im2col)(col, ch.ld, x + (size_t)ch.n0 * H * Wd, B, ch.nb, C, H, Wd, stride);
    return col;
}

/* y (O,B,Ho,Wo) = W (O,C,3,3) * x (C,B,H,W) + b (O); keeps the fields in cw->col if planned */
void MT_(mt_nn_conv_forward)(mt_real *y, const mt_conv_work *cw, const mt_real *x, const mt_real *W, const mt_real *b,
                             int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9, BP = B * P;
    mt_real *kcol = kept(cw, cw->col, B, C, P);
    for (int n0 = 0; n0 < B; n0 += cw->chunk) {
        chunk_t ch = chunk_at(cw, kcol, B, P, n0);
        const mt_real *col = chunk_fields(kcol, cw->scratch, 1, x, ch, B, C, H, Wd, stride);
        fill_bias(y, (size_t)BP, b, O, (size_t)n0 * P, (size_t)ch.nb * P);
        mt_matmul_ld(0, 0, O, ch.nb * P, K, 1, W, K, col, (int)ch.ld, 1, y + (size_t)n0 * P, BP);
    }
}

/* dW += dy · colᵀ;  db += Σ dy;  dx = col2im(Wᵀ · dy). Any of dx, dW, db may be NULL: not wanted. */
void MT_(mt_nn_conv_backward)(mt_real *dx, mt_real *dW, mt_real *db, const mt_real *dy, const mt_real *x,
                              const mt_real *W, const mt_conv_work *cw, int B, int C, int H, int Wd, int O,
                              int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9, BP = B * P;
    if (db) add_row_sums(db, dy, O, (size_t)BP);
    mt_real *kcol = kept(cw, cw->col, B, C, P);
    if (kcol && dW) mt_matmul(0, 1, O, K, BP, 1, dy, kcol, 1, dW); /* one product over the whole batch */
    for (int n0 = 0; n0 < B && (dW || dx); n0 += cw->chunk) {
        chunk_t ch = chunk_at(cw, kcol, B, P, n0);
        const mt_real *dyc = dy + (size_t)n0 * P;
        if (!kcol && dW) {
            const mt_real *col = chunk_fields(NULL, cw->scratch, 0, x, ch, B, C, H, Wd, stride);
            mt_matmul_ld(0, 1, O, K, ch.nb * P, 1, dyc, BP, col, (int)ch.ld, 1, dW, K);
        }
        if (dx) {
            mt_matmul_ld(1, 0, K, ch.nb * P, O, 1, W, K, dyc, BP, 0, cw->dcol, ch.nb * P);
            MT_(mt_nn_col2im)(dx + (size_t)n0 * H * Wd, B, ch.nb, cw->dcol, (size_t)ch.nb * P, C, H, Wd, stride);
        }
    }
}

/* Ry = U · col + W · col(Rx) + c; keeps col(Rx) in cw->rcol if planned (rx NULL: Rx = 0) */
void MT_(mt_nn_conv_rforward)(mt_real *ry, const mt_conv_work *cw, const mt_real *x, const mt_real *rx,
                              const mt_real *W, const mt_real *U, const mt_real *c, int B, int C, int H, int Wd, int O,
                              int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9, BP = B * P;
    mt_real *kcol = kept(cw, cw->col, B, C, P), *krcol = kept(cw, cw->rcol, B, C, P);
    for (int n0 = 0; n0 < B; n0 += cw->chunk) {
        chunk_t ch = chunk_at(cw, kcol, B, P, n0);
        mt_real *ryc = ry + (size_t)n0 * P;
        const mt_real *col = chunk_fields(kcol, cw->scratch, 0, x, ch, B, C, H, Wd, stride);
        fill_bias(ry, (size_t)BP, c, O, (size_t)n0 * P, (size_t)ch.nb * P);
        mt_matmul_ld(0, 0, O, ch.nb * P, K, 1, U, K, col, (int)ch.ld, 1, ryc, BP);
        if (rx) {
            const mt_real *rcol = chunk_fields(krcol, cw->rscratch, 1, rx, ch, B, C, H, Wd, stride);
            mt_matmul_ld(0, 0, O, ch.nb * P, K, 1, W, K, rcol, (int)ch.ld, 1, ryc, BP);
        }
    }
}

/* R(dW) += R(dy)·colᵀ + dy·R(col)ᵀ;  R(db) += Σ R(dy) (rdb NULL: not wanted);
 * R(dx) = col2im(Wᵀ·R(dy) + Uᵀ·dy) */
void MT_(mt_nn_conv_rbackward)(mt_real *rdx, mt_real *rdW, mt_real *rdb, const mt_real *dy, const mt_real *rdy,
                               const mt_real *x, const mt_real *rx, const mt_real *W, const mt_real *U,
                               const mt_conv_work *cw, int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9, BP = B * P;
    if (rdb) add_row_sums(rdb, rdy, O, (size_t)BP);
    mt_real *kcol = kept(cw, cw->col, B, C, P), *krcol = kept(cw, cw->rcol, B, C, P);
    if (kcol) {
        mt_matmul(0, 1, O, K, BP, 1, rdy, kcol, 1, rdW);
        if (rx) mt_matmul(0, 1, O, K, BP, 1, dy, krcol, 1, rdW);
    }
    for (int n0 = 0; n0 < B; n0 += cw->chunk) {
        chunk_t ch = chunk_at(cw, kcol, B, P, n0);
        const mt_real *dyc = dy + (size_t)n0 * P, *rdyc = rdy + (size_t)n0 * P;
        if (!kcol) {
            const mt_real *col = chunk_fields(NULL, cw->scratch, 0, x, ch, B, C, H, Wd, stride);
            mt_matmul_ld(0, 1, O, K, ch.nb * P, 1, rdyc, BP, col, (int)ch.ld, 1, rdW, K);
            if (rx) {
                const mt_real *rcol = chunk_fields(NULL, cw->rscratch, 0, rx, ch, B, C, H, Wd, stride);
                mt_matmul_ld(0, 1, O, K, ch.nb * P, 1, dyc, BP, rcol, (int)ch.ld, 1, rdW, K);
            }
        }
        if (rdx) {
            mt_matmul_ld(1, 0, K, ch.nb * P, O, 1, W, K, rdyc, BP, 0, cw->dcol, ch.nb * P);
            mt_matmul_ld(1, 0, K, ch.nb * P, O, 1, U, K, dyc, BP, 1, cw->dcol, ch.nb * P);
            MT_(mt_nn_col2im)(rdx + (size_t)n0 * H * Wd, B, ch.nb, cw->dcol, (size_t)ch.nb * P, C, H, Wd, stride);
        }
    }
}

void MT_(mt_nn_conv_forward_reference)(mt_real *y, const mt_real *x, const mt_real *W, const mt_real *b, int B, int C,
                                       int H, int Wd, int O, int stride) {
    int Ho = out_size(H, stride), Wo = out_size(Wd, stride);
    for (int n = 0; n < B; n++)
        for (int o = 0; o < O; o++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    double sum = b[o];
                    for (int c = 0; c < C; c++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                int iy = oy * stride + ky - 1, ix = ox * stride + kx - 1;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= Wd) continue;
                                sum += (double)W[((o * C + c) * 3 + ky) * 3 + kx] *
                                       x[(((size_t)c * B + n) * H + iy) * Wd + ix];
                            }
                    y[(((size_t)o * B + n) * Ho + oy) * Wo + ox] = (mt_real)sum;
                }
}
