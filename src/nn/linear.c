/* Fully connected layer. Shapes in the comments are row-major. */
#include "metatrain/nn.h"
#include "core/precision.h"

/* y (B,O) = x (B,I) · Wᵀ (I,O) + b (O) */
void MT_(mt_nn_linear_forward)(mt_real *y, const mt_real *x, const mt_real *W, const mt_real *b, int B, int I, int O) {
    for (int n = 0; n < B; n++)
        for (int o = 0; o < O; o++) y[(size_t)n * O + o] = b[o];
    mt_matmul(0, 1, B, O, I, 1, x, W, 1, y);
}

/* dx (B,I) = dy (B,O) · W (O,I);  dW (O,I) += dyᵀ · x;  db (O) += Σ_B dy */
void MT_(mt_nn_linear_backward)(mt_real *dx, mt_real *dW, mt_real *db, const mt_real *dy, const mt_real *x,
                                const mt_real *W, int B, int I, int O) {
    if (dx) mt_matmul(0, 0, B, I, O, 1, dy, W, 0, dx);
    if (dW) mt_matmul(1, 0, O, I, B, 1, dy, x, 1, dW);
    if (!db) return;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < O; o++) db[o] += dy[(size_t)n * O + o];
}

/* Ry (B,O) = Rx · Wᵀ + x · Uᵀ + c */
void MT_(mt_nn_linear_rforward)(mt_real *ry, const mt_real *x, const mt_real *rx, const mt_real *W, const mt_real *U,
                                const mt_real *c, int B, int I, int O) {
    for (int n = 0; n < B; n++)
        for (int o = 0; o < O; o++) ry[(size_t)n * O + o] = c[o];
    mt_matmul(0, 1, B, O, I, 1, x, U, 1, ry);
    if (rx) mt_matmul(0, 1, B, O, I, 1, rx, W, 1, ry);
}

/* R(dx) = R(dy)·W + dy·U;  R(dW) += R(dy)ᵀ·x + dyᵀ·Rx;  R(db) += Σ_B R(dy) */
void MT_(mt_nn_linear_rbackward)(mt_real *rdx, mt_real *rdW, mt_real *rdb, const mt_real *dy, const mt_real *rdy,
                                 const mt_real *x, const mt_real *rx, const mt_real *W, const mt_real *U, int B, int I,
                                 int O) {
    if (rdx) {
        mt_matmul(0, 0, B, I, O, 1, rdy, W, 0, rdx);
        mt_matmul(0, 0, B, I, O, 1, dy, U, 1, rdx);
    }
    mt_matmul(1, 0, O, I, B, 1, rdy, x, 1, rdW);
    if (rx) mt_matmul(1, 0, O, I, B, 1, dy, rx, 1, rdW);
    if (!rdb) return;
    for (int n = 0; n < B; n++)
        for (int o = 0; o < O; o++) rdb[o] += rdy[(size_t)n * O + o];
}
