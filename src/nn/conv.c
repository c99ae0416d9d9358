/* 3x3 convolution with padding 1 and stride 1 or 2, as im2col plus GEMM per sample.
 * For one sample: col (K,P) holds the receptive fields, K = C·9 and P = Ho·Wo; then
 * y_n (O,P) = W (O,K) · col (K,P) + b. Backward recomputes col rather than storing it per
 * sample: that costs one cheap copy and keeps memory at one sample's col. */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <string.h>

static inline int out_size(int n, int stride) { return (n - 1) / stride + 1; }

/* col (C·9, Ho·Wo) from x (C,H,W) */
static void im2col(mt_real *col, const mt_real *x, int C, int H, int Wd, int stride) {
    int Ho = out_size(H, stride), Wo = out_size(Wd, stride), P = Ho * Wo;
    for (int c = 0; c < C; c++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                mt_real *row = col + (size_t)((c * 3 + ky) * 3 + kx) * P;
                const mt_real *xc = x + (size_t)c * H * Wd;
                for (int oy = 0; oy < Ho; oy++) {
                    int iy = oy * stride + ky - 1;
                    for (int ox = 0; ox < Wo; ox++) {
                        int ix = ox * stride + kx - 1;
                        row[oy * Wo + ox] =
                            (iy >= 0 && iy < H && ix >= 0 && ix < Wd) ? xc[iy * Wd + ix] : 0;
                    }
                }
            }
}

/* x (C,H,W) = Σ of col's entries over the fields they came from (the adjoint of im2col) */
static void col2im(mt_real *x, const mt_real *col, int C, int H, int Wd, int stride) {
    int Ho = out_size(H, stride), Wo = out_size(Wd, stride), P = Ho * Wo;
    memset(x, 0, (size_t)C * H * Wd * sizeof *x);
    for (int c = 0; c < C; c++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                const mt_real *row = col + (size_t)((c * 3 + ky) * 3 + kx) * P;
                mt_real *xc = x + (size_t)c * H * Wd;
                for (int oy = 0; oy < Ho; oy++) {
                    int iy = oy * stride + ky - 1;
                    if (iy < 0 || iy >= H) continue;
                    for (int ox = 0; ox < Wo; ox++) {
                        int ix = ox * stride + kx - 1;
                        if (ix >= 0 && ix < Wd) xc[iy * Wd + ix] += row[oy * Wo + ox];
                    }
                }
            }
}

static void add_bias(mt_real *y, const mt_real *b, int O, int P) {
    for (int o = 0; o < O; o++)
        for (int p = 0; p < P; p++) y[(size_t)o * P + p] += b[o];
}

static void add_row_sums(mt_real *db, const mt_real *dy, int O, int P) {
    for (int o = 0; o < O; o++) {
        mt_real sum = 0;
        for (int p = 0; p < P; p++) sum += dy[(size_t)o * P + p];
        db[o] += sum;
    }
}

/* y (B,O,Ho,Wo) = W (O,C,3,3) * x (B,C,H,W) + b (O) */
void MT_(mt_nn_conv_forward)(mt_real *y, const mt_real *x, const mt_real *W, const mt_real *b,
                             mt_real *col, int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9;
    for (int n = 0; n < B; n++) {
        mt_real *yn = y + (size_t)n * O * P;
        im2col(col, x + (size_t)n * C * H * Wd, C, H, Wd, stride);
        mt_matmul(0, 0, O, P, K, 1, W, col, 0, yn);
        add_bias(yn, b, O, P);
    }
}

/* dW += dy_n · colᵀ;  db += Σ dy_n;  dx_n = col2im(Wᵀ · dy_n) */
void MT_(mt_nn_conv_backward)(mt_real *dx, mt_real *dW, mt_real *db, const mt_real *dy,
                              const mt_real *x, const mt_real *W, mt_real *col, mt_real *dcol,
                              int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9;
    for (int n = 0; n < B; n++) {
        const mt_real *dyn = dy + (size_t)n * O * P;
        im2col(col, x + (size_t)n * C * H * Wd, C, H, Wd, stride);
        mt_matmul(0, 1, O, K, P, 1, dyn, col, 1, dW);
        add_row_sums(db, dyn, O, P);
        if (dx) {
            mt_matmul(1, 0, K, P, O, 1, W, dyn, 0, dcol);
            col2im(dx + (size_t)n * C * H * Wd, dcol, C, H, Wd, stride);
        }
    }
}

/* Ry_n = U · col(x_n) + W · col(Rx_n) + c */
void MT_(mt_nn_conv_rforward)(mt_real *ry, const mt_real *x, const mt_real *rx, const mt_real *W,
                              const mt_real *U, const mt_real *c, mt_real *col, mt_real *rcol,
                              int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9;
    for (int n = 0; n < B; n++) {
        mt_real *ryn = ry + (size_t)n * O * P;
        im2col(col, x + (size_t)n * C * H * Wd, C, H, Wd, stride);
        mt_matmul(0, 0, O, P, K, 1, U, col, 0, ryn);
        if (rx) {
            im2col(rcol, rx + (size_t)n * C * H * Wd, C, H, Wd, stride);
            mt_matmul(0, 0, O, P, K, 1, W, rcol, 1, ryn);
        }
        add_bias(ryn, c, O, P);
    }
}

/* R(dW) += R(dy_n)·colᵀ + dy_n·R(col)ᵀ;  R(db) += Σ R(dy_n);  R(dx_n) = col2im(Wᵀ·R(dy_n) + Uᵀ·dy_n) */
void MT_(mt_nn_conv_rbackward)(mt_real *rdx, mt_real *rdW, mt_real *rdb, const mt_real *dy,
                               const mt_real *rdy, const mt_real *x, const mt_real *rx,
                               const mt_real *W, const mt_real *U, mt_real *col, mt_real *rcol,
                               mt_real *dcol, int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9;
    for (int n = 0; n < B; n++) {
        const mt_real *dyn = dy + (size_t)n * O * P, *rdyn = rdy + (size_t)n * O * P;
        im2col(col, x + (size_t)n * C * H * Wd, C, H, Wd, stride);
        mt_matmul(0, 1, O, K, P, 1, rdyn, col, 1, rdW);
        if (rx) {
            im2col(rcol, rx + (size_t)n * C * H * Wd, C, H, Wd, stride);
            mt_matmul(0, 1, O, K, P, 1, dyn, rcol, 1, rdW);
        }
        add_row_sums(rdb, rdyn, O, P);
        if (rdx) {
            mt_matmul(1, 0, K, P, O, 1, W, rdyn, 0, dcol);
            mt_matmul(1, 0, K, P, O, 1, U, dyn, 1, dcol);
            col2im(rdx + (size_t)n * C * H * Wd, dcol, C, H, Wd, stride);
        }
    }
}

void MT_(mt_nn_conv_forward_reference)(mt_real *y, const mt_real *x, const mt_real *W,
                                       const mt_real *b, int B, int C, int H, int Wd, int O,
                                       int stride) {
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
                                       x[(((size_t)n * C + c) * H + iy) * Wd + ix];
                            }
                    y[(((size_t)n * O + o) * Ho + oy) * Wo + ox] = (mt_real)sum;
                }
}
