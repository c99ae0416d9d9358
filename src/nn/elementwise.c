/* Layers without parameters: ReLU, 2x2 max-pool, global average pool. Each is linear in its
 * input given the forward pass's mask or argmax, so its R-forward and R-backward are the
 * forward and backward applied to the R-quantities (the kink has zero second derivative almost
 * everywhere). */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <string.h>

MT_KERNEL void MT_(mt_nn_relu_forward)(mt_real *y, const mt_real *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0;
}

/* dx = dy · 1[y > 0]; also R(dx) from R(dy), and Ry from Rx. dx may alias dy. */
MT_KERNEL void MT_(mt_nn_relu_backward)(mt_real *dx, const mt_real *dy, const mt_real *y, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] = y[i] > 0 ? dy[i] : 0;
}

/* y (B,C,H/2,W/2) = max over each 2x2 window of x (B,C,H,W); odd trailing rows/cols are dropped. */
void MT_(mt_nn_maxpool_forward)(mt_real *y, int32_t *argmax, const mt_real *x, int B, int C, int H, int Wd) {
    int Ho = H / 2, Wo = Wd / 2;
    for (int p = 0; p < B * C; p++) {
        const mt_real *xp = x + (size_t)p * H * Wd;
        for (int i = 0; i < Ho; i++)
            for (int j = 0; j < Wo; j++) {
                int best = (2 * i) * Wd + 2 * j;
                int cand[3] = {best + 1, best + Wd, best + Wd + 1};
                for (int k = 0; k < 3; k++)
                    if (xp[cand[k]] > xp[best]) best = cand[k];
                size_t o = (size_t)p * Ho * Wo + (size_t)i * Wo + j;
                argmax[o] = (int32_t)((size_t)p * H * Wd + best);
                y[o] = xp[best];
            }
    }
}

void MT_(mt_nn_maxpool_gather)(mt_real *y, const mt_real *x, const int32_t *argmax, size_t n_out) {
    for (size_t o = 0; o < n_out; o++) y[o] = x[argmax[o]];
}

void MT_(mt_nn_maxpool_backward)(mt_real *dx, const mt_real *dy, const int32_t *argmax, size_t n_in, size_t n_out) {
    memset(dx, 0, n_in * sizeof *dx);
    for (size_t o = 0; o < n_out; o++) dx[argmax[o]] += dy[o];
}

/* y (B,C) = mean over S of x (B,C,S) */
void MT_(mt_nn_avgpool_forward)(mt_real *y, const mt_real *x, int B, int C, int S) {
    for (int p = 0; p < B * C; p++) {
        mt_real sum = 0;
        for (int s = 0; s < S; s++) sum += x[(size_t)p * S + s];
        y[p] = sum / S;
    }
}

/* dx (B,C,S) = dy (B,C) / S */
void MT_(mt_nn_avgpool_backward)(mt_real *dx, const mt_real *dy, int B, int C, int S) {
    for (int p = 0; p < B * C; p++)
        for (int s = 0; s < S; s++) dx[(size_t)p * S + s] = dy[p] / S;
}
