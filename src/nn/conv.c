/* 3x3 convolution with padding 1 and stride 1 or 2, as im2col plus one GEMM per pass for the
 * whole batch (per-sample products are too thin to run near the GEMM ceiling):
 *   col (K, B·P) holds every sample's receptive fields, K = C·9, P = Ho·Wo;
 *   Y (O, B·P) = W (O,K) · col, then y (B,O,P) = Y transposed per sample, plus b.
 * Forward leaves col (and R-forward rcol) in the workspace for the backward passes; tmp and tmp2
 * (O, B·P each) hold the batch-major copies of y-shaped arrays. */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <string.h>

static inline int out_size(int n, int stride) { return (n - 1) / stride + 1; }

/* The output columns ox whose input column ox·stride + kx − 1 lies inside [0, W): [*lo, *hi). */
static void valid_columns(int Wd, int Wo, int kx, int stride, int *lo, int *hi) {
    *lo = kx == 0 ? 1 : 0; /* only kx = 0 reaches column −1, at ox = 0 */
    int last = (Wd - kx) / stride; /* largest ox with ox·stride + kx − 1 <= W − 1 */
    *hi = last + 1 < Wo ? last + 1 : Wo;
}

/* col (C·9, B·P): sample n's fields in columns n·P … (n+1)·P − 1 */
static void im2col(mt_real *col, const mt_real *x, int B, int C, int H, int Wd, int stride) {
    int Ho = out_size(H, stride), Wo = out_size(Wd, stride), P = Ho * Wo;
    size_t BP = (size_t)B * P;
    for (int c = 0; c < C; c++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                int lo, hi;
                valid_columns(Wd, Wo, kx, stride, &lo, &hi);
                mt_real *row = col + (size_t)((c * 3 + ky) * 3 + kx) * BP;
                for (int n = 0; n < B; n++) {
                    const mt_real *xc = x + ((size_t)n * C + c) * H * Wd;
                    for (int oy = 0; oy < Ho; oy++) {
                        int iy = oy * stride + ky - 1;
                        mt_real *out = row + (size_t)n * P + oy * Wo;
                        if (iy < 0 || iy >= H) {
                            memset(out, 0, (size_t)Wo * sizeof *out);
                            continue;
                        }
                        const mt_real *xr = xc + iy * Wd + kx - 1;
                        for (int ox = 0; ox < lo; ox++) out[ox] = 0;
                        if (stride == 1) memcpy(out + lo, xr + lo, (size_t)(hi - lo) * sizeof *out);
                        else
                            for (int ox = lo; ox < hi; ox++) out[ox] = xr[ox * stride];
                        for (int ox = hi; ox < Wo; ox++) out[ox] = 0;
                    }
                }
            }
}

/* x (B,C,H,W) = the adjoint of im2col applied to col */
static void col2im(mt_real *x, const mt_real *col, int B, int C, int H, int Wd, int stride) {
    int Ho = out_size(H, stride), Wo = out_size(Wd, stride), P = Ho * Wo;
    size_t BP = (size_t)B * P;
    memset(x, 0, (size_t)B * C * H * Wd * sizeof *x);
    for (int c = 0; c < C; c++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                int lo, hi;
                valid_columns(Wd, Wo, kx, stride, &lo, &hi);
                const mt_real *row = col + (size_t)((c * 3 + ky) * 3 + kx) * BP;
                for (int n = 0; n < B; n++) {
                    mt_real *xc = x + ((size_t)n * C + c) * H * Wd;
                    for (int oy = 0; oy < Ho; oy++) {
                        int iy = oy * stride + ky - 1;
                        if (iy < 0 || iy >= H) continue;
                        mt_real *xr = xc + iy * Wd + kx - 1;
                        const mt_real *in = row + (size_t)n * P + oy * Wo;
                        for (int ox = lo; ox < hi; ox++) xr[ox * stride] += in[ox];
                    }
                }
            }
}

/* y (B,O,P) = Y (O, B·P) per sample, plus b (O) */
static void unbatch(mt_real *y, const mt_real *Y, const mt_real *b, int B, int O, int P) {
    for (int n = 0; n < B; n++)
        for (int o = 0; o < O; o++) {
            const mt_real *src = Y + (size_t)o * B * P + (size_t)n * P;
            mt_real *dst = y + ((size_t)n * O + o) * P, bias = b[o];
            for (int p = 0; p < P; p++) dst[p] = src[p] + bias;
        }
}

/* Y (O, B·P) = y (B,O,P) batch-major */
static void batch(mt_real *Y, const mt_real *y, int B, int O, int P) {
    for (int n = 0; n < B; n++)
        for (int o = 0; o < O; o++)
            memcpy(Y + (size_t)o * B * P + (size_t)n * P, y + ((size_t)n * O + o) * P, (size_t)P * sizeof *Y);
}

static void add_row_sums(mt_real *db, const mt_real *Y, int O, size_t BP) {
    for (int o = 0; o < O; o++) {
        mt_real sum = 0;
        for (size_t p = 0; p < BP; p++) sum += Y[(size_t)o * BP + p];
        db[o] += sum;
    }
}

/* y (B,O,Ho,Wo) = W (O,C,3,3) * x (B,C,H,W) + b (O); leaves col (C·9, B·P) */
void MT_(mt_nn_conv_forward)(mt_real *y, mt_real *col, mt_real *tmp, const mt_real *x, const mt_real *W,
                             const mt_real *b, int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9, BP = B * P;
    im2col(col, x, B, C, H, Wd, stride);
    mt_matmul(0, 0, O, BP, K, 1, W, col, 0, tmp);
    unbatch(y, tmp, b, B, O, P);
}

/* dW += dY · colᵀ;  db += Σ dY;  dx = col2im(Wᵀ · dY) */
void MT_(mt_nn_conv_backward)(mt_real *dx, mt_real *dW, mt_real *db, const mt_real *dy,
                              const mt_real *col, const mt_real *W, mt_real *dcol, mt_real *tmp,
                              int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9, BP = B * P;
    batch(tmp, dy, B, O, P);
    mt_matmul(0, 1, O, K, BP, 1, tmp, col, 1, dW);
    add_row_sums(db, tmp, O, (size_t)BP);
    if (dx) {
        mt_matmul(1, 0, K, BP, O, 1, W, tmp, 0, dcol);
        col2im(dx, dcol, B, C, H, Wd, stride);
    }
}

/* Ry = U · col + W · col(Rx) + c; leaves rcol = col(Rx) when rx is given */
void MT_(mt_nn_conv_rforward)(mt_real *ry, mt_real *rcol, mt_real *tmp, const mt_real *col, const mt_real *rx,
                              const mt_real *W, const mt_real *U, const mt_real *c, int B, int C, int H,
                              int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9, BP = B * P;
    mt_matmul(0, 0, O, BP, K, 1, U, col, 0, tmp);
    if (rx) {
        im2col(rcol, rx, B, C, H, Wd, stride);
        mt_matmul(0, 0, O, BP, K, 1, W, rcol, 1, tmp);
    }
    unbatch(ry, tmp, c, B, O, P);
}

/* R(dW) += R(dY)·colᵀ + dY·R(col)ᵀ;  R(db) += Σ R(dY);  R(dx) = col2im(Wᵀ·R(dY) + Uᵀ·dY) */
void MT_(mt_nn_conv_rbackward)(mt_real *rdx, mt_real *rdW, mt_real *rdb, const mt_real *dy,
                               const mt_real *rdy, const mt_real *col, const mt_real *rcol,
                               const mt_real *W, const mt_real *U, mt_real *dcol, mt_real *tmp,
                               mt_real *tmp2, int B, int C, int H, int Wd, int O, int stride) {
    int P = out_size(H, stride) * out_size(Wd, stride), K = C * 9, BP = B * P;
    batch(tmp, dy, B, O, P);
    batch(tmp2, rdy, B, O, P);
    mt_matmul(0, 1, O, K, BP, 1, tmp2, col, 1, rdW);
    if (rcol) mt_matmul(0, 1, O, K, BP, 1, tmp, rcol, 1, rdW);
    add_row_sums(rdb, tmp2, O, (size_t)BP);
    if (rdx) {
        mt_matmul(1, 0, K, BP, O, 1, W, tmp2, 0, dcol);
        mt_matmul(1, 0, K, BP, O, 1, U, tmp, 1, dcol);
        col2im(rdx, dcol, B, C, H, Wd, stride);
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
