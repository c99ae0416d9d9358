/* Batch norm with the batch's own statistics (as MAML uses it: no running averages).
 * Per channel c over its M entries x:
 *   μ = mean(x), σ = sqrt(var(x) + ε), x̂ = (x − μ)/σ, y = γ x̂ + β.
 * R-forward (directional derivative along (Rγ, Rβ) and input Rx):
 *   z = (Rx − mean(Rx))/σ,  s = mean(x̂ z) = Rσ/σ,  Rx̂ = z − x̂ s,  Ry = Rγ x̂ + γ Rx̂ + Rβ.
 * Backward, with a = mean(dy), b = mean(dy x̂), g = γ/σ:
 *   dx = g (dy − a − x̂ b),  dγ = M b,  dβ = M a.
 * R-backward differentiates each factor:
 *   Rg = (Rγ − γ s)/σ,  Ra = mean(Rdy),  Rb = mean(Rdy x̂ + dy Rx̂),
 *   Rdx = Rg (dy − a − x̂ b) + g (Rdy − Ra − Rx̂ b − x̂ Rb),  Rdγ = M Rb,  Rdβ = M Ra.
 * stats (3C) = [μ, 1/σ, s].
 *
 * Channel c's entry m is at c·cs + m·ms (nn_tmpl.h). Elementwise work runs in the working
 * precision; the sums run in double (M reaches tens of thousands) with eight partial sums, so
 * they vectorize. Each routine is written once as an inline body and instantiated for ms = 1
 * (channel-major activations, contiguous: the hot case) and any ms. */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <math.h>

#define AT(arr, m) (arr)[(size_t)(m)*ms]

/* result = Σ_m expr, where expr may use m. */
#define SUM(result, expr)                                                                                              \
    do {                                                                                                               \
        double part_[8] = {0}, total_;                                                                                 \
        int m0_ = 0;                                                                                                   \
        for (; m0_ + 8 <= M; m0_ += 8)                                                                                 \
            for (int l_ = 0; l_ < 8; l_++) {                                                                           \
                int m = m0_ + l_;                                                                                      \
                part_[l_] += (double)(expr);                                                                           \
            }                                                                                                          \
        total_ = ((part_[0] + part_[1]) + (part_[2] + part_[3])) + ((part_[4] + part_[5]) + (part_[6] + part_[7]));    \
        for (int m = m0_; m < M; m++) total_ += (double)(expr);                                                        \
        (result) = total_;                                                                                             \
    } while (0)

/* Instantiates the contiguous and the strided version of body(…, ms). */
#define BOTH_STRIDES(call_contiguous, call_strided)                                                                    \
    do {                                                                                                               \
        if (ms == 1)                                                                                                   \
            call_contiguous;                                                                                           \
        else                                                                                                           \
            call_strided;                                                                                              \
    } while (0)

#define INLINE static inline __attribute__((always_inline))

INLINE void bn_forward_body(mt_real *y, mt_real *stats, const mt_real *x, const mt_real *gamma, const mt_real *beta,
                            int C, int M, size_t cs, size_t ms) {
    for (int c = 0; c < C; c++) {
        const mt_real *xc = x + (size_t)c * cs;
        mt_real *yc = y + (size_t)c * cs;
        double sum, sq;
        SUM(sum, AT(xc, m));
        double mean = sum / M;
        SUM(sq, (AT(xc, m) - mean) * (AT(xc, m) - mean));
        double inv = 1.0 / sqrt(sq / M + MT_NN_BN_EPS);
        stats[c] = (mt_real)mean;
        stats[C + c] = (mt_real)inv;
        mt_real scale = (mt_real)(gamma[c] * inv), shift = (mt_real)(beta[c] - gamma[c] * inv * mean);
        for (int m = 0; m < M; m++) AT(yc, m) = AT(xc, m) * scale + shift;
    }
}

MT_KERNEL void MT_(mt_nn_bn_forward)(mt_real *y, mt_real *stats, const mt_real *x, const mt_real *gamma,
                                     const mt_real *beta, int C, int M, size_t cs, size_t ms) {
    BOTH_STRIDES(bn_forward_body(y, stats, x, gamma, beta, C, M, cs, 1),
                 bn_forward_body(y, stats, x, gamma, beta, C, M, cs, ms));
}

INLINE void bn_backward_body(mt_real *dx, mt_real *dgamma, mt_real *dbeta, const mt_real *dy, const mt_real *x,
                             const mt_real *stats, const mt_real *gamma, int C, int M, size_t cs, size_t ms) {
    for (int c = 0; c < C; c++) {
        const mt_real *xc = x + (size_t)c * cs, *dyc = dy + (size_t)c * cs;
        mt_real mean = stats[c], inv = stats[C + c];
        double sum_dy, sum_dy_xhat;
        SUM(sum_dy, AT(dyc, m));
        SUM(sum_dy_xhat, AT(dyc, m) * ((AT(xc, m) - mean) * inv));
        if (dgamma) dgamma[c] += (mt_real)sum_dy_xhat, dbeta[c] += (mt_real)sum_dy;
        if (!dx) continue;
        mt_real *dxc = dx + (size_t)c * cs;
        mt_real a = (mt_real)(sum_dy / M), b = (mt_real)(sum_dy_xhat / M), g = gamma[c] * inv;
        for (int m = 0; m < M; m++) AT(dxc, m) = g * (AT(dyc, m) - a - (AT(xc, m) - mean) * inv * b);
    }
}

MT_KERNEL void MT_(mt_nn_bn_backward)(mt_real *dx, mt_real *dgamma, mt_real *dbeta, const mt_real *dy, const mt_real *x,
                                      const mt_real *stats, const mt_real *gamma, int C, int M, size_t cs, size_t ms) {
    BOTH_STRIDES(bn_backward_body(dx, dgamma, dbeta, dy, x, stats, gamma, C, M, cs, 1),
                 bn_backward_body(dx, dgamma, dbeta, dy, x, stats, gamma, C, M, cs, ms));
}

INLINE void bn_rforward_body(mt_real *ry, mt_real *stats, const mt_real *x, const mt_real *rx, const mt_real *gamma,
                             const mt_real *rgamma, const mt_real *rbeta, int C, int M, size_t cs, size_t ms) {
    for (int c = 0; c < C; c++) {
        const mt_real *xc = x + (size_t)c * cs, *rxc = rx ? rx + (size_t)c * cs : NULL;
        mt_real *ryc = ry + (size_t)c * cs;
        mt_real mean = stats[c], inv = stats[C + c], rg = rgamma[c], gm = gamma[c], rb = rbeta[c];
        if (!rxc) { /* Rx̂ = 0 */
            stats[2 * C + c] = 0;
            for (int m = 0; m < M; m++) AT(ryc, m) = rg * ((AT(xc, m) - mean) * inv) + rb;
            continue;
        }
        double rsum, cross;
        SUM(rsum, AT(rxc, m));
        mt_real rmean = (mt_real)(rsum / M);
        SUM(cross, ((AT(xc, m) - mean) * inv) * ((AT(rxc, m) - rmean) * inv));
        mt_real s_c = (mt_real)(cross / M);
        stats[2 * C + c] = s_c;
        for (int m = 0; m < M; m++) {
            mt_real xhat = (AT(xc, m) - mean) * inv, z = (AT(rxc, m) - rmean) * inv;
            AT(ryc, m) = rg * xhat + gm * (z - xhat * s_c) + rb;
        }
    }
}

MT_KERNEL void MT_(mt_nn_bn_rforward)(mt_real *ry, mt_real *stats, const mt_real *x, const mt_real *rx,
                                      const mt_real *gamma, const mt_real *rgamma, const mt_real *rbeta, int C, int M,
                                      size_t cs, size_t ms) {
    BOTH_STRIDES(bn_rforward_body(ry, stats, x, rx, gamma, rgamma, rbeta, C, M, cs, 1),
                 bn_rforward_body(ry, stats, x, rx, gamma, rgamma, rbeta, C, M, cs, ms));
}

INLINE void bn_rbackward_body(mt_real *rdx, mt_real *rdgamma, mt_real *rdbeta, const mt_real *dy, const mt_real *rdy,
                              const mt_real *x, const mt_real *rx, const mt_real *stats, const mt_real *gamma,
                              const mt_real *rgamma, int C, int M, size_t cs, size_t ms) {
    for (int c = 0; c < C; c++) {
        size_t off = (size_t)c * cs;
        const mt_real *xc = x + off, *dyc = dy + off, *rdyc = rdy + off;
        mt_real mean = stats[c], inv = stats[C + c], s_c = stats[2 * C + c], rmean = 0;
        if (rx) {
            double rsum;
            SUM(rsum, AT(rx + off, m));
            rmean = (mt_real)(rsum / M);
        }
        /* Rx̂ = z − x̂ s with z = 0 when x ignores θ */
#define XHAT(m) ((AT(xc, m) - mean) * inv)
#define RXHAT(m) ((rx ? (AT(rx + off, m) - rmean) * inv : 0) - XHAT(m) * s_c)
        double sum_dy, sum_dy_xhat, sum_rdy, sum_rb;
        SUM(sum_dy, AT(dyc, m));
        SUM(sum_dy_xhat, AT(dyc, m) * XHAT(m));
        SUM(sum_rdy, AT(rdyc, m));
        SUM(sum_rb, AT(rdyc, m) * XHAT(m) + AT(dyc, m) * RXHAT(m));
        rdgamma[c] += (mt_real)sum_rb;
        rdbeta[c] += (mt_real)sum_rdy;
        if (!rdx) continue;
        mt_real *rdxc = rdx + off;
        mt_real a = (mt_real)(sum_dy / M), b = (mt_real)(sum_dy_xhat / M);
        mt_real ra = (mt_real)(sum_rdy / M), rb = (mt_real)(sum_rb / M);
        mt_real g = gamma[c] * inv, rg = (rgamma[c] - gamma[c] * s_c) * inv;
        for (int m = 0; m < M; m++)
            AT(rdxc, m) = rg * (AT(dyc, m) - a - XHAT(m) * b) + g * (AT(rdyc, m) - ra - RXHAT(m) * b - XHAT(m) * rb);
#undef XHAT
#undef RXHAT
    }
}

MT_KERNEL void MT_(mt_nn_bn_rbackward)(mt_real *rdx, mt_real *rdgamma, mt_real *rdbeta, const mt_real *dy,
                                       const mt_real *rdy, const mt_real *x, const mt_real *rx, const mt_real *stats,
                                       const mt_real *gamma, const mt_real *rgamma, int C, int M, size_t cs,
                                       size_t ms) {
    BOTH_STRIDES(bn_rbackward_body(rdx, rdgamma, rdbeta, dy, rdy, x, rx, stats, gamma, rgamma, C, M, cs, 1),
                 bn_rbackward_body(rdx, rdgamma, rdbeta, dy, rdy, x, rx, stats, gamma, rgamma, C, M, cs, ms));
}
