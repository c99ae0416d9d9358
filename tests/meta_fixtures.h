/* Helpers for the meta-learning tests (test_meta_*.c): a network with one hand-built task and a
 * double-precision meta context, random meta-parameters with learned rates, the ReLU kinks of a
 * whole inner loop, and a little dense linear algebra for the closed forms of quadratic tasks.
 * Built on fd_check.h (the engine tests' helpers), which it does not change. */
#ifndef METATRAIN_TESTS_META_FIXTURES_H
#define METATRAIN_TESTS_META_FIXTURES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fd_check.h"
#include "metatrain/meta.h"
#include "metatrain/task.h"

/* One network, one task (support and query drawn at random), one meta context. */
typedef struct {
    mt_nn_net net;
    mt_meta_layout layout;
    mt_meta_ctx_f64 *ctx;
    mt_nn_ws_f64 *kink_ws; /* keeps the ReLU inputs, where the kinks are read (the ctx's does not) */
    mt_task_f64 task;
    int ns, nq;
    double *xs, *ys, *xq, *yq;
    int32_t *ls, *lq;
    double *meta; /* n_meta */
} mf_problem;

/* Returns 0 on success; the caller asserts. Support and query come from different seeds. */
static inline int mf_problem_init(mf_problem *p, const char *spec, mt_algorithm algorithm, int steps, int ns, int nq,
                                  uint64_t data_seed) {
    memset(p, 0, sizeof *p);
    if (mt_nn_parse(&p->net, spec, "test spec") != MT_OK) return -1;
    mt_meta_layout_init(&p->layout, &p->net, algorithm, steps);
    if (mt_meta_ctx_create_f64(&p->ctx, &p->layout, ns > nq ? ns : nq) != MT_OK) return -1;
    if (fd_ws_create_keeping_relu_inputs(&p->kink_ws, &p->net, ns > nq ? ns : nq) != MT_OK) return -1;
    p->ns = ns, p->nq = nq;
    size_t in = p->net.in_size, out = p->net.out_size;
    p->xs = calloc((size_t)ns * in, sizeof(double));
    p->ys = calloc((size_t)ns * out, sizeof(double));
    p->xq = calloc((size_t)nq * in, sizeof(double));
    p->yq = calloc((size_t)nq * out, sizeof(double));
    p->ls = calloc((size_t)ns, sizeof(int32_t));
    p->lq = calloc((size_t)nq, sizeof(int32_t));
    p->meta = calloc(p->layout.n_meta, sizeof(double));
    if (!p->xs || !p->ys || !p->xq || !p->yq || !p->ls || !p->lq || !p->meta) return -1;
    fd_random_batch(&p->net, ns, data_seed, p->xs, p->ys, p->ls);
    fd_random_batch(&p->net, nq, data_seed + 7919, p->xq, p->yq, p->lq);
    p->task.support = (mt_nn_batch_f64){p->xs, p->ys, p->ls, ns};
    p->task.query = (mt_nn_batch_f64){p->xq, p->yq, p->lq, nq};
    return 0;
}

static inline void mf_problem_free(mf_problem *p) {
    mt_meta_ctx_free_f64(p->ctx);
    mt_nn_ws_free_f64(p->kink_ws);
    free(p->xs), free(p->ys), free(p->xq), free(p->yq), free(p->ls), free(p->lq), free(p->meta);
    memset(p, 0, sizeof *p);
}

/* θ random away from the default init (fd_random_params: random biases, BN scales and shifts);
 * every learned rate uniform in [rate_lo, rate_hi). */
static inline void mf_random_meta(mf_problem *p, uint64_t seed, double rate_lo, double rate_hi) {
    fd_random_params(&p->net, seed, p->meta);
    mt_rng rng;
    fd_rng(&rng, seed, 3000);
    for (size_t i = 0; i < p->layout.n_rates; i++)
        p->meta[p->layout.n_theta + i] = mt_rng_range(&rng, rate_lo, rate_hi);
}

/* Bytes for the kinks of one whole inner loop: support and query batches at θ_0 … θ_K. */
static inline size_t mf_kinks_size(const mf_problem *p) {
    return (size_t)(p->layout.inner_steps + 1) * (fd_kinks_size(&p->net, p->ns) + fd_kinks_size(&p->net, p->nq));
}

/* Records the ReLU signs of the support and query batches at every θ_k of the inner loop that
 * the ctx ran last (ctx->theta_steps), and returns the smallest distance to a kink. Call right
 * after mt_meta_task_objective_f64 or mt_meta_task_grad_f64. buf: mf_kinks_size bytes, zeroed. */
static inline double mf_inner_loop_kinks(mf_problem *p, unsigned char *buf) {
    mt_meta_ctx_f64 *ctx = p->ctx;
    double margin = INFINITY, m;
    size_t n = p->layout.n_theta, ss = fd_kinks_size(&p->net, p->ns), sq = fd_kinks_size(&p->net, p->nq);
    for (int k = 0; k <= p->layout.inner_steps; k++) {
        const double *theta = ctx->theta_steps + (size_t)k * n;
        mt_nn_loss_f64(p->kink_ws, theta, &p->task.support);
        FD_KINKS_READ(p->kink_ws, p->ns, buf);
        buf += ss;
        if ((m = fd_kink_margin(p->kink_ws, p->ns)) < margin) margin = m;
        mt_nn_loss_f64(p->kink_ws, theta, &p->task.query);
        FD_KINKS_READ(p->kink_ws, p->nq, buf);
        buf += sq;
        if ((m = fd_kink_margin(p->kink_ws, p->nq)) < margin) margin = m;
    }
    return margin;
}

/* ---- Dense linear algebra, row-major, small n. ---- */

/* y = A x, A (n, n) */
static inline void mf_matvec(const double *A, const double *x, double *y, int n) {
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < n; j++) s += A[(size_t)i * n + j] * x[j];
        y[i] = s;
    }
}

/* Solves A x = b by Gaussian elimination with partial pivoting (A and b unchanged). Returns 0,
 * or -1 when A is singular to working precision. */
static inline int mf_solve(const double *A, const double *b, double *x, int n) {
    double *M = malloc((size_t)n * (n + 1) * sizeof *M);
    if (!M) return -1;
    for (int i = 0; i < n; i++) {
        memcpy(M + (size_t)i * (n + 1), A + (size_t)i * n, (size_t)n * sizeof *M);
        M[(size_t)i * (n + 1) + n] = b[i];
    }
    int ok = 0;
    for (int c = 0; c < n && ok == 0; c++) {
        int piv = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(M[(size_t)r * (n + 1) + c]) > fabs(M[(size_t)piv * (n + 1) + c])) piv = r;
        if (fabs(M[(size_t)piv * (n + 1) + c]) < 1e-300) ok = -1;
        if (piv != c)
            for (int j = 0; j <= n; j++) {
                double t = M[(size_t)c * (n + 1) + j];
                M[(size_t)c * (n + 1) + j] = M[(size_t)piv * (n + 1) + j];
                M[(size_t)piv * (n + 1) + j] = t;
            }
        for (int r = c + 1; r < n && ok == 0; r++) {
            double f = M[(size_t)r * (n + 1) + c] / M[(size_t)c * (n + 1) + c];
            for (int j = c; j <= n; j++) M[(size_t)r * (n + 1) + j] -= f * M[(size_t)c * (n + 1) + j];
        }
    }
    for (int i = n - 1; i >= 0 && ok == 0; i--) {
        double s = M[(size_t)i * (n + 1) + n];
        for (int j = i + 1; j < n; j++) s -= M[(size_t)i * (n + 1) + j] * x[j];
        x[i] = s / M[(size_t)i * (n + 1) + i];
    }
    free(M);
    return ok;
}

/* The MSE loss of a linear model "input d, linear 1, mse" on a batch of n, written by hand:
 * with a_i = (x_i, 1) and θ = (w, b) in the engine's layout (weight then bias),
 *   L(θ) = (1/n) Σ (a_i·θ − t_i)² = ½ θᵀHθ − cᵀθ + const,  H = (2/n) AᵀA,  c = (2/n) Aᵀt,
 * so ∇L(θ) = Hθ − c. H ((d+1)²) and c (d+1) are overwritten. */
static inline void mf_linear_quadratic(const double *x, const double *t, int n, int d, double *H, double *c) {
    int m = d + 1;
    memset(H, 0, (size_t)m * m * sizeof *H);
    memset(c, 0, (size_t)m * sizeof *c);
    for (int s = 0; s < n; s++) {
        double a[65];
        for (int j = 0; j < d; j++) a[j] = x[(size_t)s * d + j];
        a[d] = 1.0;
        for (int i = 0; i < m; i++) {
            c[i] += 2.0 / n * a[i] * t[s];
            for (int j = 0; j < m; j++) H[(size_t)i * m + j] += 2.0 / n * a[i] * a[j];
        }
    }
}

#endif
