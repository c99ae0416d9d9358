/* Batch norm with the batch's own statistics (as MAML uses it: no running averages).
 * Per channel c over the M = B·S entries x of that channel:
 *   μ = mean(x), σ = sqrt(var(x) + ε), x̂ = (x − μ)/σ, y = γ x̂ + β.
 * R-forward (directional derivative along (Rγ, Rβ) and input Rx):
 *   z = (Rx − mean(Rx))/σ,  s = mean(x̂ z) = Rσ/σ,  Rx̂ = z − x̂ s,  Ry = Rγ x̂ + γ Rx̂ + Rβ.
 * Backward, with a = mean(dy), b = mean(dy x̂), g = γ/σ:
 *   dx = g (dy − a − x̂ b),  dγ = M b,  dβ = M a.
 * R-backward differentiates each factor:
 *   Rg = (Rγ − γ s)/σ,  Ra = mean(Rdy),  Rb = mean(Rdy x̂ + dy Rx̂),
 *   Rdx = Rg (dy − a − x̂ b) + g (Rdy − Ra − Rx̂ b − x̂ Rb),  Rdγ = M Rb,  Rdβ = M Ra.
 * stats (3C) = [μ, 1/σ, s]. Sums run in double: M can reach tens of thousands. */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <math.h>

#define AT(arr, n, c, s) (arr)[((size_t)(n) * C + (c)) * S + (s)]

void MT_(mt_nn_bn_forward)(mt_real *y, mt_real *stats, const mt_real *x, const mt_real *gamma,
                           const mt_real *beta, int B, int C, int S) {
    double M = (double)B * S;
    for (int c = 0; c < C; c++) {
        double sum = 0, sq = 0;
        for (int n = 0; n < B; n++)
            for (int s = 0; s < S; s++) sum += AT(x, n, c, s);
        double mean = sum / M;
        for (int n = 0; n < B; n++)
            for (int s = 0; s < S; s++) {
                double d = AT(x, n, c, s) - mean;
                sq += d * d;
            }
        double inv = 1.0 / sqrt(sq / M + MT_NN_BN_EPS);
        stats[c] = (mt_real)mean;
        stats[C + c] = (mt_real)inv;
        for (int n = 0; n < B; n++)
            for (int s = 0; s < S; s++)
                AT(y, n, c, s) = (mt_real)(gamma[c] * (AT(x, n, c, s) - mean) * inv + beta[c]);
    }
}

void MT_(mt_nn_bn_backward)(mt_real *dx, mt_real *dgamma, mt_real *dbeta, const mt_real *dy,
                            const mt_real *x, const mt_real *stats, const mt_real *gamma, int B,
                            int C, int S) {
    double M = (double)B * S;
    for (int c = 0; c < C; c++) {
        double mean = stats[c], inv = stats[C + c], sum_dy = 0, sum_dy_xhat = 0;
        for (int n = 0; n < B; n++)
            for (int s = 0; s < S; s++) {
                double xhat = (AT(x, n, c, s) - mean) * inv;
                sum_dy += AT(dy, n, c, s);
                sum_dy_xhat += AT(dy, n, c, s) * xhat;
            }
        dgamma[c] += (mt_real)sum_dy_xhat;
        dbeta[c] += (mt_real)sum_dy;
        if (!dx) continue;
        double a = sum_dy / M, b = sum_dy_xhat / M, g = gamma[c] * inv;
        for (int n = 0; n < B; n++)
            for (int s = 0; s < S; s++) {
                double xhat = (AT(x, n, c, s) - mean) * inv;
                AT(dx, n, c, s) = (mt_real)(g * (AT(dy, n, c, s) - a - xhat * b));
            }
    }
}

static double channel_mean(const mt_real *v, int c, int B, int C, int S) {
    double sum = 0;
    for (int n = 0; n < B; n++)
        for (int s = 0; s < S; s++) sum += AT(v, n, c, s);
    return sum / ((double)B * S);
}

void MT_(mt_nn_bn_rforward)(mt_real *ry, mt_real *stats, const mt_real *x, const mt_real *rx,
                            const mt_real *gamma, const mt_real *rgamma, const mt_real *rbeta,
                            int B, int C, int S) {
    for (int c = 0; c < C; c++) {
        double mean = stats[c], inv = stats[C + c], s_c = 0;
        if (rx) {
            double rmean = channel_mean(rx, c, B, C, S), sum = 0;
            for (int n = 0; n < B; n++)
                for (int s = 0; s < S; s++)
                    sum += (AT(x, n, c, s) - mean) * inv * (AT(rx, n, c, s) - rmean) * inv;
            s_c = sum / ((double)B * S);
        }
        stats[2 * C + c] = (mt_real)s_c;
        double rmean = rx ? channel_mean(rx, c, B, C, S) : 0;
        for (int n = 0; n < B; n++)
            for (int s = 0; s < S; s++) {
                double xhat = (AT(x, n, c, s) - mean) * inv;
                double z = rx ? (AT(rx, n, c, s) - rmean) * inv : 0;
                double rxhat = z - xhat * s_c;
                AT(ry, n, c, s) = (mt_real)(rgamma[c] * xhat + gamma[c] * rxhat + rbeta[c]);
            }
    }
}

void MT_(mt_nn_bn_rbackward)(mt_real *rdx, mt_real *rdgamma, mt_real *rdbeta, const mt_real *dy,
                             const mt_real *rdy, const mt_real *x, const mt_real *rx,
                             const mt_real *stats, const mt_real *gamma, const mt_real *rgamma,
                             int B, int C, int S) {
    double M = (double)B * S;
    for (int c = 0; c < C; c++) {
        double mean = stats[c], inv = stats[C + c], s_c = stats[2 * C + c];
        double rmean = rx ? channel_mean(rx, c, B, C, S) : 0;
        double sum_dy = 0, sum_dy_xhat = 0, sum_rdy = 0, sum_rb = 0;
        for (int n = 0; n < B; n++)
            for (int s = 0; s < S; s++) {
                double xhat = (AT(x, n, c, s) - mean) * inv;
                double z = rx ? (AT(rx, n, c, s) - rmean) * inv : 0;
                double rxhat = z - xhat * s_c;
                double d = AT(dy, n, c, s), rd = AT(rdy, n, c, s);
                sum_dy += d;
                sum_dy_xhat += d * xhat;
                sum_rdy += rd;
                sum_rb += rd * xhat + d * rxhat;
            }
        rdgamma[c] += (mt_real)sum_rb;
        rdbeta[c] += (mt_real)sum_rdy;
        if (!rdx) continue;
        double a = sum_dy / M, b = sum_dy_xhat / M, ra = sum_rdy / M, rb = sum_rb / M;
        double g = gamma[c] * inv, rg = (rgamma[c] - gamma[c] * s_c) * inv;
        for (int n = 0; n < B; n++)
            for (int s = 0; s < S; s++) {
                double xhat = (AT(x, n, c, s) - mean) * inv;
                double z = rx ? (AT(rx, n, c, s) - rmean) * inv : 0;
                double rxhat = z - xhat * s_c;
                double d = AT(dy, n, c, s), rd = AT(rdy, n, c, s);
                AT(rdx, n, c, s) =
                    (mt_real)(rg * (d - a - xhat * b) + g * (rd - ra - rxhat * b - xhat * rb));
            }
    }
}
