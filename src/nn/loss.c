/* Losses over a batch of B outputs of size O.
 * MSE:  L = mean over B·O of (y − t)²;  dy = 2(y − t)/(B·O);  Rdy = 2 Ry/(B·O).
 * Softmax cross-entropy on logits z with labels t:
 *   L = (1/B) Σ_n [logsumexp(z_n) − z_n,t];  dz = (p − e_t)/B;
 *   Rdz = p ⊙ (Rz − ⟨p, Rz⟩)/B   (the softmax Jacobian applied to Rz). */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <math.h>

double MT_(mt_nn_mse_forward)(const mt_real *y, const mt_real *target, int B, int O) {
    double sum = 0;
    for (size_t i = 0; i < (size_t)B * O; i++) {
        double d = (double)y[i] - target[i];
        sum += d * d;
    }
    return sum / ((double)B * O);
}

void MT_(mt_nn_mse_backward)(mt_real *dy, const mt_real *y, const mt_real *target, int B, int O) {
    mt_real scale = (mt_real)(2.0 / ((double)B * O));
    for (size_t i = 0; i < (size_t)B * O; i++) dy[i] = scale * (y[i] - target[i]);
}

void MT_(mt_nn_mse_rbackward)(mt_real *rdy, const mt_real *ry, int B, int O) {
    mt_real scale = (mt_real)(2.0 / ((double)B * O));
    for (size_t i = 0; i < (size_t)B * O; i++) rdy[i] = scale * ry[i];
}

/* p (O) = softmax(z); returns logsumexp(z). */
static double softmax(double *p, const mt_real *z, int O) {
    double zmax = z[0], sum = 0;
    for (int j = 1; j < O; j++)
        if (z[j] > zmax) zmax = z[j];
    for (int j = 0; j < O; j++) sum += (p[j] = exp((double)z[j] - zmax));
    for (int j = 0; j < O; j++) p[j] /= sum;
    return zmax + log(sum);
}

/* The widest head a softmax here takes; the spec parser enforces it. */
#define XENT_MAX_CLASSES 4096

double MT_(mt_nn_xent_forward)(const mt_real *logits, const int32_t *labels, int B, int O) {
    double p[XENT_MAX_CLASSES], sum = 0;
    for (int n = 0; n < B; n++) {
        const mt_real *z = logits + (size_t)n * O;
        sum += softmax(p, z, O) - z[labels[n]];
    }
    return sum / B;
}

void MT_(mt_nn_xent_backward)(mt_real *dz, const mt_real *logits, const int32_t *labels, int B, int O) {
    double p[XENT_MAX_CLASSES];
    for (int n = 0; n < B; n++) {
        softmax(p, logits + (size_t)n * O, O);
        for (int j = 0; j < O; j++) dz[(size_t)n * O + j] = (mt_real)((p[j] - (j == labels[n] ? 1.0 : 0.0)) / B);
    }
}

void MT_(mt_nn_xent_rbackward)(mt_real *rdz, const mt_real *logits, const mt_real *rz, int B, int O) {
    double p[XENT_MAX_CLASSES];
    for (int n = 0; n < B; n++) {
        const mt_real *rzn = rz + (size_t)n * O;
        softmax(p, logits + (size_t)n * O, O);
        double p_dot_rz = 0;
        for (int j = 0; j < O; j++) p_dot_rz += p[j] * rzn[j];
        for (int j = 0; j < O; j++) rdz[(size_t)n * O + j] = (mt_real)(p[j] * (rzn[j] - p_dot_rz) / B);
    }
}
