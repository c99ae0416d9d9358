/* The meta-learning algorithms in double precision (the math: src/meta/inner_loop.c):
 *  - MAML, Meta-SGD, ANIL and MAML++ (second order, with and without the multi-step loss): the
 *    meta-gradient against central differences of the meta-objective over the whole meta-parameter
 *    vector, learned rates included, on an MLP and on a conv net with batch norm;
 *  - FOMAML: the query gradient at the adapted parameters, i.e. MAML without the HVP term;
 *  - Reptile and iMAML on a quadratic task, against their closed forms;
 *  - the MAML++ schedules, the outer optimizers and the meta-parameter tensor table.
 *
 * Finite differences never cross a ReLU kink unnoticed: each point is drawn away from the kinks
 * of every inner step (support and query, θ_0 … θ_K), and every perturbed evaluation is checked
 * to see the same ReLU signs as the base point. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "meta_fixtures.h"

#define FD_H 1e-6       /* central differences: truncation O(h²) ~ 1e-12, rounding O(ε/h) ~ 1e-10 */
#define GRAD_TOL 1e-6   /* norm-based relative error, meta-gradient against differences */
#define MIN_MARGIN 1e-4 /* distance of every ReLU input of the inner loop to its kink */

static double worst_maml, worst_metasgd, worst_anil, worst_mamlpp, worst_mamlpp_metasgd;

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    assert_non_null(p);
    return p;
}

static const char *algo_name(mt_algorithm a) { return mt_config_algorithm_name(a); }

/* The networks of the gradient checks. Batch sizes are odd where the loss allows; the conv
 * net's support holds every class twice (fd_random_batch covers the classes first). */
typedef struct {
    const char *name, *spec;
    int ns, nq;
    double rate_lo, rate_hi;
} netdef;

static const netdef MLP = {"mlp", "input 2, linear 7, relu, linear 5, relu, linear 1, mse", 5, 7, 0.05, 0.15};
/* Bags of ids over a table of 6 rows, with repeats, padding and an empty bag (fd_random_batch). */
static const netdef EMBED = {"embed", "input tokens 4, embed 6 3, linear 5, relu, linear 3, xent", 5, 4, 0.05, 0.15};
static const netdef CONV = {
    "conv", "input 1x6x6, conv 3 s2, bn, relu, conv 4, bn, relu, flatten, linear 3, xent", 6, 5, 0.05, 0.15};

/* Meta-gradient of one (network, algorithm, K, loss) case against central differences of the
 * meta-objective in every coordinate of the meta-parameter vector. Returns the relative error. */
static double check_meta_gradient(const netdef *nd, mt_algorithm algo, int K, int msl) {
    mf_problem p;
    assert_int_equal(mf_problem_init(&p, nd->spec, algo, K, nd->ns, nd->nq, 11), 0);
    size_t n = p.layout.n_meta, nt = p.layout.n_theta;
    if (algo == MT_ALGO_METASGD) assert_int_equal(p.layout.n_rates, nt);
    if (algo == MT_ALGO_MAMLPP) assert_int_equal(p.layout.n_rates, (size_t)p.net.n_param_layers * K);
    if (algo == MT_ALGO_MAMLPP_METASGD) assert_int_equal(p.layout.n_rates, (size_t)K * nt);
    if (algo == MT_ALGO_MAML || algo == MT_ALGO_ANIL) assert_int_equal(p.layout.n_rates, 0);

    mt_meta_step_config sc;
    memset(&sc, 0, sizeof sc);
    sc.inner_lr = 0.1;
    sc.second_order = 1;
    if (msl) {
        sc.multi_step_loss = 1;
        /* Uneven weights, and not summing to 1: the objective is Σ w_k L_q(θ_k) as written. */
        for (int k = 0; k < K; k++) sc.step_weights[k] = 0.3 + 0.5 * (k + 1) / K;
    }

    size_t ksize = mf_kinks_size(&p);
    unsigned char *base = xcalloc(ksize, 1), *probe = xcalloc(ksize, 1);
    double *grad = xcalloc(n, sizeof(double)), *fd = xcalloc(n, sizeof(double));
    char *crossed = xcalloc(n, 1);

    /* A point away from every kink of the inner loop, where the inner loop is stable: it lowers
     * the support loss rather than blowing up. */
    double objective = NAN, margin = 0, ls0 = NAN, lsK = NAN;
    int seed;
    for (seed = 1; seed <= 40; seed++) {
        mf_random_meta(&p, 1000u * (unsigned)K + 17u * (unsigned)algo + (unsigned)seed, nd->rate_lo, nd->rate_hi);
        objective = mt_meta_task_objective_f64(p.ctx, &sc, p.meta, &p.task);
        ls0 = mt_nn_loss_f64(p.ctx->ws, p.ctx->theta_steps, &p.task.support);
        lsK = mt_nn_loss_f64(p.ctx->ws, p.ctx->theta_steps + (size_t)K * nt, &p.task.support);
        margin = mf_inner_loop_kinks(&p, base);
        if (isfinite(objective) && lsK < ls0 && margin >= MIN_MARGIN) break;
    }
    assert_true(seed <= 40);

    if (algo == MT_ALGO_ANIL) { /* the inner loop adapts the head alone */
        size_t hb, he;
        mt_nn_head_range(&p.net, &hb, &he);
        assert_true(hb > 0 && he == nt);
        const double *theta_K = p.ctx->theta_steps + (size_t)K * nt;
        for (size_t j = 0; j < hb; j++) assert_true(theta_K[j] == p.meta[j]);
        assert_true(fd_rel_err(theta_K + hb, p.meta + hb, he - hb) > 1e-6);
    }

    double returned = mt_meta_task_grad_f64(p.ctx, &sc, p.meta, &p.task, grad);
    assert_true(fd_rel_err_scalar(returned, objective) <= 1e-12);

    int n_crossed = 0;
    for (size_t i = 0; i < n; i++) {
        double saved = p.meta[i];
        p.meta[i] = saved + FD_H;
        double fp = mt_meta_task_objective_f64(p.ctx, &sc, p.meta, &p.task);
        mf_inner_loop_kinks(&p, probe);
        int same = memcmp(base, probe, ksize) == 0;
        p.meta[i] = saved - FD_H;
        double fm = mt_meta_task_objective_f64(p.ctx, &sc, p.meta, &p.task);
        mf_inner_loop_kinks(&p, probe);
        same &= memcmp(base, probe, ksize) == 0;
        p.meta[i] = saved;
        fd[i] = (fp - fm) / (2 * FD_H);
        if (!same) crossed[i] = 1, n_crossed++;
    }
    /* A coordinate whose differences cross a kink measures the kink: leave it out of both. */
    for (size_t i = 0; i < n; i++)
        if (crossed[i]) grad[i] = fd[i] = 0;

    double err = fd_rel_err(grad, fd, n);
    double err_theta = fd_rel_err(grad, fd, nt);
    double err_rates = p.layout.n_rates ? fd_rel_err(grad + nt, fd + nt, p.layout.n_rates) : 0;
    double rate_norm = p.layout.n_rates ? fd_norm(grad + nt, p.layout.n_rates) : 0;
    printf("%-4s %-7s K=%d %-6s n_meta=%-4zu seed=%-2d margin %.1e | rel err %.2e (theta %.2e, "
           "rates %.2e, |rate grad| %.2e) | L_s %.3f -> %.3f, objective %.4f | kink-crossing coords %d\n",
           nd->name, algo_name(algo), K, msl ? "msl" : "final", n, seed, margin, err, err_theta, err_rates, rate_norm,
           ls0, lsK, objective, n_crossed);

    assert_true(fd_norm(fd, n) > 1e-6); /* something to compare */
    assert_true(err <= GRAD_TOL);
    assert_true(err_theta <= GRAD_TOL);
    if (p.layout.n_rates) {
        assert_true(rate_norm > 1e-8); /* the learned rates do get a gradient */
        assert_true(err_rates <= GRAD_TOL);
    }
    assert_true(n_crossed <= (int)(n / 100)); /* the point really was away from the kinks */

    free(base), free(probe), free(grad), free(fd), free(crossed);
    mf_problem_free(&p);
    return err;
}

static void check_algorithm(mt_algorithm algo, double *worst) {
    static const int steps[] = {1, 2, 5};
    const netdef *nets[] = {&MLP, &CONV, &EMBED};
    for (int ni = 0; ni < 3; ni++)
        for (int si = 0; si < 3; si++)
            for (int msl = 0; msl < 2; msl++) {
                double e = check_meta_gradient(nets[ni], algo, steps[si], msl);
                if (e > *worst) *worst = e;
            }
    printf("%s: worst relative error %.2e (tolerance %.0e)\n", algo_name(algo), *worst, GRAD_TOL);
}

static void test_maml_matches_fd(void **state) {
    (void)state;
    check_algorithm(MT_ALGO_MAML, &worst_maml);
}

static void test_metasgd_matches_fd(void **state) {
    (void)state;
    check_algorithm(MT_ALGO_METASGD, &worst_metasgd);
}

static void test_anil_matches_fd(void **state) {
    (void)state;
    check_algorithm(MT_ALGO_ANIL, &worst_anil);
}

static void test_mamlpp_matches_fd(void **state) {
    (void)state;
    check_algorithm(MT_ALGO_MAMLPP, &worst_mamlpp);
}

static void test_mamlpp_metasgd_matches_fd(void **state) {
    (void)state;
    check_algorithm(MT_ALGO_MAMLPP_METASGD, &worst_mamlpp_metasgd);
}

/* ---- FOMAML ---- */

/* The meta module's settings from a test's config, as the programs make them. */
static void step_config_at(mt_meta_step_config *sc, const mt_config *cfg, int iteration) {
    mt_meta_hparams hp;
    mt_config_meta_hparams(cfg, &hp);
    mt_meta_step_config_at(sc, &hp, iteration);
}

static mt_status optim_init(mt_meta_optim *opt, const mt_config *cfg, size_t n, size_t n_rates) {
    mt_meta_hparams hp;
    mt_config_meta_hparams(cfg, &hp);
    return mt_meta_optim_init(opt, &hp, n, n_rates);
}

/* A config holding only what the meta module's settings read. */
static void hand_config(mt_config *cfg, mt_algorithm algo, int K) {
    memset(cfg, 0, sizeof *cfg);
    cfg->algorithm = algo;
    cfg->inner_steps = K;
    cfg->inner_lr = 0.1;
    cfg->imaml_lambda = 1.0;
    cfg->cg_steps = 10;
    cfg->cg_tol = 1e-10;
}

static void check_fomaml(const netdef *nd, int K) {
    mf_problem p;
    assert_int_equal(mf_problem_init(&p, nd->spec, MT_ALGO_FOMAML, K, nd->ns, nd->nq, 23), 0);
    size_t n = p.layout.n_theta;
    assert_int_equal(p.layout.n_meta, n);
    mf_random_meta(&p, 77 + (uint64_t)K, 0, 0);

    mt_config cfg;
    mt_meta_step_config sc_fo, sc_so;
    hand_config(&cfg, MT_ALGO_FOMAML, K);
    step_config_at(&sc_fo, &cfg, 0);
    assert_int_equal(sc_fo.second_order, 0);
    hand_config(&cfg, MT_ALGO_MAML, K);
    step_config_at(&sc_so, &cfg, 0);
    assert_int_equal(sc_so.second_order, 1);

    double *fo = xcalloc(n, sizeof(double)), *so = xcalloc(n, sizeof(double));
    double *theta = xcalloc(n, sizeof(double)), *g = xcalloc(n, sizeof(double));
    double *gq = xcalloc(n, sizeof(double)), *u = xcalloc(n, sizeof(double)), *hv = xcalloc(n, sizeof(double));
    double obj_fo = mt_meta_task_grad_f64(p.ctx, &sc_fo, p.meta, &p.task, fo);

    /* θ_K by hand, then ∇L_q(θ_K). */
    mt_nn_ws_f64 *ws;
    assert_int_equal(mt_nn_ws_create_f64(&ws, &p.net, nd->ns > nd->nq ? nd->ns : nd->nq), MT_OK);
    memcpy(theta, p.meta, n * sizeof *theta);
    for (int k = 0; k < K; k++) {
        mt_nn_grad_f64(ws, theta, &p.task.support, g);
        for (size_t j = 0; j < n; j++) theta[j] -= 0.1 * g[j];
    }
    double lq = mt_nn_grad_f64(ws, theta, &p.task.query, gq);
    double err = fd_rel_err(fo, gq, n);
    assert_true(fd_rel_err_scalar(obj_fo, lq) <= 1e-12);
    assert_true(err <= 1e-12);

    /* MAML on the same task: the same objective, another gradient. */
    mf_problem q = p; /* shares net and data; its own layout and context */
    mt_meta_layout_init(&q.layout, &p.net, MT_ALGO_MAML, K);
    assert_int_equal(mt_meta_ctx_create_f64(&q.ctx, &q.layout, nd->ns > nd->nq ? nd->ns : nd->nq), MT_OK);
    double obj_so = mt_meta_task_grad_f64(q.ctx, &sc_so, p.meta, &p.task, so);
    double diff = fd_rel_err(fo, so, n);
    assert_true(fd_rel_err_scalar(obj_so, obj_fo) <= 1e-12);
    assert_true(diff > 1e-3);

    /* One step: MAML = FOMAML − H(θ_0)(α ∇L_q(θ_1)), the HVP term exactly. */
    double hvp_err = -1;
    if (K == 1) {
        for (size_t j = 0; j < n; j++) u[j] = 0.1 * gq[j];
        mt_nn_hvp_f64(ws, p.meta, &p.task.support, u, g, hv);
        for (size_t j = 0; j < n; j++) hv[j] = gq[j] - hv[j];
        hvp_err = fd_rel_err(so, hv, n);
        assert_true(hvp_err <= 1e-12);
    }
    printf("%-4s fomaml K=%d: rel err against grad L_q(theta_K) %.2e; relative difference to MAML %.2e%s", nd->name, K,
           err, diff, K == 1 ? "" : "\n");
    if (K == 1) printf("; MAML - (FOMAML - HVP term) %.2e\n", hvp_err);

    mt_meta_ctx_free_f64(q.ctx);
    mt_nn_ws_free_f64(ws);
    free(fo), free(so), free(theta), free(g), free(gq), free(u), free(hv);
    mf_problem_free(&p);
}

/* First order with the multi-step loss, by hand: v_K = w_K ∇L_q(θ_K); going back, the rate of
 * layer p at step k gets −Σ_{j in p} v_{k+1,j} g_{k,j} (MAML++), and v_k = v_{k+1} + w_k ∇L_q(θ_k)
 * for k ≥ 1, with no Hessian term. FOMAML: fixed rate; MAML++: its first-order phase from the
 * schedule (mt_meta_step_config_at), learned per-layer, per-step rates. */
static void check_first_order_msl(const netdef *nd, mt_algorithm algo, int K) {
    mf_problem p;
    assert_int_equal(mf_problem_init(&p, nd->spec, algo, K, nd->ns, nd->nq, 29), 0);
    size_t nt = p.layout.n_theta, n = p.layout.n_meta;
    mf_random_meta(&p, 91 + (uint64_t)K, nd->rate_lo, nd->rate_hi);

    mt_meta_step_config sc;
    if (algo == MT_ALGO_MAMLPP) {
        mt_config cfg;
        hand_config(&cfg, MT_ALGO_MAMLPP, K);
        cfg.first_order_iterations = 100;
        cfg.msl_iterations = 10;
        step_config_at(&sc, &cfg, 3);
        assert_int_equal(sc.second_order, 0);
        assert_int_equal(sc.multi_step_loss, 1);
    } else {
        memset(&sc, 0, sizeof sc);
        sc.inner_lr = 0.1;
        sc.multi_step_loss = 1;
        for (int k = 0; k < K; k++) sc.step_weights[k] = 0.2 + 0.3 * k;
    }

    double *grad = xcalloc(n, sizeof(double)), *want = xcalloc(n, sizeof(double));
    double *thetas = xcalloc((size_t)(K + 1) * nt, sizeof(double)), *alpha = xcalloc((size_t)K * nt, sizeof(double));
    double *g = xcalloc((size_t)K * nt, sizeof(double)), *gq = xcalloc(nt, sizeof(double));
    mt_nn_ws_f64 *ws;
    assert_int_equal(mt_nn_ws_create_f64(&ws, &p.net, nd->ns > nd->nq ? nd->ns : nd->nq), MT_OK);
    for (int k = 0; k < K; k++) {
        int pl = 0;
        for (int l = 0; l < p.net.n_layers; l++) {
            const mt_nn_layer *L = &p.net.layers[l];
            if (!L->param_count) continue;
            double rate = algo == MT_ALGO_MAMLPP ? p.meta[nt + (size_t)pl * K + k] : 0.1;
            for (size_t j = 0; j < L->param_count; j++) alpha[(size_t)k * nt + L->param_offset + j] = rate;
            pl++;
        }
    }
    memcpy(thetas, p.meta, nt * sizeof *thetas);
    for (int k = 0; k < K; k++) {
        mt_nn_grad_f64(ws, thetas + (size_t)k * nt, &p.task.support, g + (size_t)k * nt);
        for (size_t j = 0; j < nt; j++)
            thetas[(size_t)(k + 1) * nt + j] =
                thetas[(size_t)k * nt + j] - alpha[(size_t)k * nt + j] * g[(size_t)k * nt + j];
    }
    double objective = sc.step_weights[K - 1] * mt_nn_grad_f64(ws, thetas + (size_t)K * nt, &p.task.query, gq);
    for (size_t j = 0; j < nt; j++) want[j] = sc.step_weights[K - 1] * gq[j];
    for (int k = K - 1; k >= 0; k--) {
        if (algo == MT_ALGO_MAMLPP) {
            int pl = 0;
            for (int l = 0; l < p.net.n_layers; l++) {
                const mt_nn_layer *L = &p.net.layers[l];
                if (!L->param_count) continue;
                for (size_t j = L->param_offset; j < L->param_offset + L->param_count; j++)
                    want[nt + (size_t)pl * K + k] -= want[j] * g[(size_t)k * nt + j];
                pl++;
            }
        }
        if (k >= 1) {
            objective += sc.step_weights[k - 1] * mt_nn_grad_f64(ws, thetas + (size_t)k * nt, &p.task.query, gq);
            for (size_t j = 0; j < nt; j++) want[j] += sc.step_weights[k - 1] * gq[j];
        }
    }
    double obj = mt_meta_task_grad_f64(p.ctx, &sc, p.meta, &p.task, grad);
    double err = fd_rel_err(grad, want, n);
    printf("%-4s %-7s first order, multi-step loss, K=%d: rel err against the hand sweep %.2e%s", nd->name,
           algo_name(algo), K, err, p.layout.n_rates ? "" : "\n");
    if (p.layout.n_rates)
        printf(" (rates %.2e, |rate grad| %.2e)\n", fd_rel_err(grad + nt, want + nt, p.layout.n_rates),
               fd_norm(want + nt, p.layout.n_rates));
    assert_true(fd_rel_err_scalar(obj, objective) <= 1e-12);
    assert_true(err <= 1e-12);
    if (p.layout.n_rates) assert_true(fd_norm(want + nt, p.layout.n_rates) > 1e-6);

    mt_nn_ws_free_f64(ws);
    free(grad), free(want), free(thetas), free(alpha), free(g), free(gq);
    mf_problem_free(&p);
}

static void test_fomaml_is_maml_without_hvp(void **state) {
    (void)state;
    check_fomaml(&MLP, 1);
    check_fomaml(&MLP, 3);
    check_fomaml(&CONV, 1);
    check_fomaml(&CONV, 3);
    check_first_order_msl(&MLP, MT_ALGO_FOMAML, 3);
    check_first_order_msl(&MLP, MT_ALGO_MAMLPP, 3);
    check_first_order_msl(&CONV, MT_ALGO_MAMLPP, 3);
}

/* ---- Quadratic tasks: Reptile and iMAML against closed forms ---- */

#define QUAD_SPEC "input 3, linear 1, mse"
#define QUAD_N 4 /* parameters: 3 weights, 1 bias */

/* The support and query quadratics of a problem built on QUAD_SPEC. */
static void quad_setup(mf_problem *p, mt_algorithm algo, int K, double *Hs, double *cs, double *Hq, double *cq) {
    assert_int_equal(mf_problem_init(p, QUAD_SPEC, algo, K, 6, 5, 31), 0);
    assert_int_equal(p->layout.n_theta, QUAD_N);
    assert_int_equal(p->layout.n_meta, QUAD_N);
    mf_random_meta(p, 5, 0, 0);
    mf_linear_quadratic(p->xs, p->ys, p->ns, 3, Hs, cs);
    mf_linear_quadratic(p->xq, p->yq, p->nq, 3, Hq, cq);
}

/* ½θᵀHθ − cᵀθ + const, the constant from the data: the hand-written MSE. */
static double quad_loss(const double *x, const double *t, int n, const double *theta) {
    double s = 0;
    for (int i = 0; i < n; i++) {
        double r = theta[0] * x[3 * i] + theta[1] * x[3 * i + 1] + theta[2] * x[3 * i + 2] + theta[3] - t[i];
        s += r * r;
    }
    return s / n;
}

static void check_reptile(int K, double alpha) {
    mf_problem p;
    double Hs[QUAD_N * QUAD_N], cs[QUAD_N], Hq[QUAD_N * QUAD_N], cq[QUAD_N];
    quad_setup(&p, MT_ALGO_REPTILE, K, Hs, cs, Hq, cq);

    /* θ_K = θ* + (I − αH)^K (θ − θ*), θ* = H⁻¹c. */
    double star[QUAD_N], D[QUAD_N * QUAD_N], P[QUAD_N * QUAD_N], T[QUAD_N * QUAD_N];
    double e[QUAD_N], theta_K[QUAD_N], expected[QUAD_N], grad[QUAD_N];
    assert_int_equal(mf_solve(Hs, cs, star, QUAD_N), 0);
    for (int i = 0; i < QUAD_N; i++)
        for (int j = 0; j < QUAD_N; j++) {
            D[i * QUAD_N + j] = (i == j) - alpha * Hs[i * QUAD_N + j];
            P[i * QUAD_N + j] = i == j;
        }
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < QUAD_N; i++)
            for (int j = 0; j < QUAD_N; j++) {
                double s = 0;
                for (int l = 0; l < QUAD_N; l++) s += D[i * QUAD_N + l] * P[l * QUAD_N + j];
                T[i * QUAD_N + j] = s;
            }
        memcpy(P, T, sizeof P);
    }
    for (int i = 0; i < QUAD_N; i++) e[i] = p.meta[i] - star[i];
    mf_matvec(P, e, theta_K, QUAD_N);
    for (int i = 0; i < QUAD_N; i++) theta_K[i] += star[i], expected[i] = p.meta[i] - theta_K[i];

    mt_meta_step_config sc;
    memset(&sc, 0, sizeof sc);
    sc.inner_lr = alpha;
    double obj = mt_meta_task_grad_f64(p.ctx, &sc, p.meta, &p.task, grad);
    double err = fd_rel_err(grad, expected, QUAD_N);
    double obj_err = fd_rel_err_scalar(obj, quad_loss(p.xq, p.yq, p.nq, theta_K));
    printf("reptile K=%-2d alpha %.2f: |theta - theta_K| %.3e, rel err %.2e, objective rel err %.2e\n", K, alpha,
           fd_norm(expected, QUAD_N), err, obj_err);
    assert_true(fd_norm(expected, QUAD_N) > 1e-2); /* the inner loop moved */
    assert_true(err <= 1e-10);
    assert_true(obj_err <= 1e-10);
    mf_problem_free(&p);
}

static void test_reptile_quadratic_closed_form(void **state) {
    (void)state;
    check_reptile(1, 0.1);
    check_reptile(5, 0.1);
    check_reptile(20, 0.05);
}

/* True relative residual ‖(I + H/λ)x − b‖ / ‖b‖. */
static double imaml_residual(const double *H, double lambda, const double *x, const double *b) {
    double Ax[QUAD_N], r[QUAD_N];
    mf_matvec(H, x, Ax, QUAD_N);
    for (int i = 0; i < QUAD_N; i++) r[i] = x[i] + Ax[i] / lambda - b[i];
    return fd_norm(r, QUAD_N) / fd_norm(b, QUAD_N);
}

static void test_imaml_quadratic_closed_form(void **state) {
    (void)state;
    const int K = 500;
    const double lambda = 10.0; /* H/λ up to ~0.5: a cluster CG resolves to 1e-2 early */
    mf_problem p;
    double Hs[QUAD_N * QUAD_N], cs[QUAD_N], Hq[QUAD_N * QUAD_N], cq[QUAD_N];
    quad_setup(&p, MT_ALGO_IMAML, K, Hs, cs, Hq, cq);

    /* φ* = argmin L_s(φ) + λ/2‖φ − θ‖²: (H + λI) φ* = c + λθ. b = ∇L_q(φ*); x = (I + H/λ)⁻¹ b. */
    double A[QUAD_N * QUAD_N], rhs[QUAD_N], phi[QUAD_N], b[QUAD_N], x[QUAD_N], grad[QUAD_N];
    double trace = 0;
    for (int i = 0; i < QUAD_N; i++) {
        trace += Hs[i * QUAD_N + i];
        rhs[i] = cs[i] + lambda * p.meta[i];
        for (int j = 0; j < QUAD_N; j++) A[i * QUAD_N + j] = Hs[i * QUAD_N + j] + (i == j) * lambda;
    }
    assert_int_equal(mf_solve(A, rhs, phi, QUAD_N), 0);
    mf_matvec(Hq, phi, b, QUAD_N);
    for (int i = 0; i < QUAD_N; i++) b[i] -= cq[i];
    for (int i = 0; i < QUAD_N; i++)
        for (int j = 0; j < QUAD_N; j++) A[i * QUAD_N + j] = (i == j) + Hs[i * QUAD_N + j] / lambda;
    assert_int_equal(mf_solve(A, b, x, QUAD_N), 0);

    /* Inner rate 1/(tr H + λ) ≤ 1/(h_max + λ): every mode contracts, the slowest by
     * 1 − (h_min + λ)/(tr H + λ) per step; 500 steps reach machine precision. */
    mt_meta_step_config sc;
    memset(&sc, 0, sizeof sc);
    sc.inner_lr = 1.0 / (trace + lambda);
    sc.imaml_lambda = lambda;
    sc.cg_steps = 100;
    sc.cg_tol = 1e-10;
    double obj = mt_meta_task_grad_f64(p.ctx, &sc, p.meta, &p.task, grad);
    const double *phi_K = p.ctx->theta_steps + (size_t)K * QUAD_N;
    double phi_err = fd_rel_err(phi_K, phi, QUAD_N);
    double err = fd_rel_err(grad, x, QUAD_N);
    double res = imaml_residual(Hs, lambda, grad, b);
    int tight_its = p.ctx->last_cg_iterations;
    double tight_res = p.ctx->last_cg_residual;
    double diff_to_b = fd_rel_err(x, b, QUAD_N);
    printf("imaml lambda %.1f: phi_K vs phi* %.2e; meta-gradient rel err %.2e (differs from grad L_q by "
           "%.2e); cg_tol 1e-10: %d iterations, residual %.2e (true %.2e)\n",
           lambda, phi_err, err, diff_to_b, tight_its, tight_res, res);
    assert_true(phi_err <= 1e-12);
    assert_true(fd_rel_err_scalar(obj, quad_loss(p.xq, p.yq, p.nq, phi)) <= 1e-10);
    assert_true(diff_to_b > 1e-2); /* the implicit correction matters here */
    assert_true(err <= 1e-8);
    assert_true(tight_res <= sc.cg_tol);
    assert_true(res <= 10 * sc.cg_tol);

    /* A loose tolerance: fewer iterations, and still the residual it promised. */
    sc.cg_tol = 1e-2;
    mt_meta_task_grad_f64(p.ctx, &sc, p.meta, &p.task, grad);
    double loose_res = p.ctx->last_cg_residual, loose_true = imaml_residual(Hs, lambda, grad, b);
    int loose_its = p.ctx->last_cg_iterations;
    printf("imaml cg_tol 1e-2: %d iterations, residual %.2e (true %.2e), gradient rel err %.2e\n", loose_its, loose_res,
           loose_true, fd_rel_err(grad, x, QUAD_N));
    assert_true(loose_res <= sc.cg_tol);
    assert_true(loose_true <= sc.cg_tol * (1 + 1e-6));
    assert_true(loose_its >= 1);
    assert_true(loose_its < tight_its);

    /* The iteration cap holds whatever the tolerance. */
    sc.cg_tol = 1e-14;
    sc.cg_steps = 1;
    mt_meta_task_grad_f64(p.ctx, &sc, p.meta, &p.task, grad);
    assert_int_equal(p.ctx->last_cg_iterations, 1);
    assert_true(p.ctx->last_cg_residual > 1e-14);
    mf_problem_free(&p);
}

/* ---- Schedules ---- */

static void test_msl_weights_and_cosine(void **state) {
    (void)state;
    static const int steps[] = {1, 2, 3, 5, 10};
    static const int lengths[] = {1, 10, 100};
    double w[64], prev[64];
    for (int si = 0; si < 5; si++)
        for (int li = 0; li < 3; li++) {
            int K = steps[si], M = lengths[li];
            double floor = 0.03 / K;
            for (int it = 0; it <= 2 * M; it++) {
                mt_meta_msl_weights(w, K, it, M);
                double sum = 0;
                for (int k = 0; k < K; k++) sum += w[k];
                assert_true(fabs(sum - 1.0) <= 1e-12);
                for (int k = 0; k < K - 1; k++) assert_true(w[k] >= floor - 1e-15);
                if (it == 0)
                    for (int k = 0; k < K; k++) assert_true(fabs(w[k] - 1.0 / K) <= 1e-15);
                if (it > 0) { /* weight moves toward the last step, never away */
                    assert_true(w[K - 1] >= prev[K - 1] - 1e-15);
                    for (int k = 0; k < K - 1; k++) assert_true(w[k] <= prev[k] + 1e-15);
                }
                if (it == 1 && K > 1 && M > 1) assert_true(w[K - 1] > 1.0 / K + 1e-12);
                if (it >= M) { /* annealed: the floor for every step but the last */
                    for (int k = 0; k < K - 1; k++) assert_true(fabs(w[k] - floor) <= 1e-15);
                    assert_true(fabs(w[K - 1] - (1.0 - (K - 1) * floor)) <= 1e-12);
                }
                memcpy(prev, w, sizeof w);
            }
        }

    const double lr = 1e-3, min_lr = 1e-5;
    const int N = 1000;
    assert_true(fabs(mt_meta_cosine_lr(lr, min_lr, 0, N) - lr) <= 1e-15);
    assert_true(fabs(mt_meta_cosine_lr(lr, min_lr, N, N) - min_lr) <= 1e-15);
    assert_true(fabs(mt_meta_cosine_lr(lr, min_lr, 2 * N, N) - min_lr) <= 1e-15);
    assert_true(fabs(mt_meta_cosine_lr(lr, min_lr, N / 2, N) - 0.5 * (lr + min_lr)) <= 1e-15);
    double last = lr;
    for (int it = 1; it <= N; it++) {
        double v = mt_meta_cosine_lr(lr, min_lr, it, N);
        assert_true(v <= last + 1e-18 && v >= min_lr - 1e-18);
        last = v;
    }

    /* MAML++'s per-iteration settings: first order, then second; the multi-step loss weights. */
    mt_config cfg;
    mt_meta_step_config sc;
    hand_config(&cfg, MT_ALGO_MAMLPP, 5);
    cfg.first_order_iterations = 10;
    cfg.msl_iterations = 20;
    step_config_at(&sc, &cfg, 9);
    assert_int_equal(sc.second_order, 0);
    assert_int_equal(sc.multi_step_loss, 1);
    mt_meta_msl_weights(w, 5, 9, 20);
    for (int k = 0; k < 5; k++) assert_true(sc.step_weights[k] == w[k]);
    step_config_at(&sc, &cfg, 10);
    assert_int_equal(sc.second_order, 1);
    assert_true(sc.inner_lr == 0.1);
    cfg.inner_steps = 1;
    step_config_at(&sc, &cfg, 10);
    assert_int_equal(sc.multi_step_loss, 0);
    static const mt_algorithm second[] = {MT_ALGO_MAML, MT_ALGO_METASGD, MT_ALGO_ANIL};
    static const mt_algorithm first[] = {MT_ALGO_FOMAML, MT_ALGO_REPTILE, MT_ALGO_IMAML};
    for (int i = 0; i < 3; i++) {
        hand_config(&cfg, second[i], 5);
        cfg.msl_iterations = 20;
        step_config_at(&sc, &cfg, 0);
        assert_int_equal(sc.second_order, 1);
        assert_int_equal(sc.multi_step_loss, 0);
        hand_config(&cfg, first[i], 5);
        step_config_at(&sc, &cfg, 100);
        assert_int_equal(sc.second_order, 0);
        assert_int_equal(sc.multi_step_loss, 0);
    }
    hand_config(&cfg, MT_ALGO_IMAML, 5);
    step_config_at(&sc, &cfg, 0);
    assert_true(sc.imaml_lambda == 1.0 && sc.cg_steps == 10 && sc.cg_tol == 1e-10);

    /* The outer rate: each algorithm's own schedule unless meta.outer_lr_schedule says. */
    static const struct {
        mt_algorithm algorithm;
        mt_schedule schedule;
        int cosine;
    } schedules[] = {
        {MT_ALGO_MAML, MT_SCHEDULE_ALGORITHM, 0},  {MT_ALGO_MAML, MT_SCHEDULE_COSINE, 1},
        {MT_ALGO_MAML, MT_SCHEDULE_CONSTANT, 0},   {MT_ALGO_MAMLPP, MT_SCHEDULE_ALGORITHM, 1},
        {MT_ALGO_MAMLPP, MT_SCHEDULE_CONSTANT, 0}, {MT_ALGO_MAMLPP_METASGD, MT_SCHEDULE_ALGORITHM, 1},
        {MT_ALGO_REPTILE, MT_SCHEDULE_COSINE, 1},
    };
    for (size_t i = 0; i < sizeof schedules / sizeof *schedules; i++) {
        mt_meta_hparams hp = {.algorithm = schedules[i].algorithm,
                              .outer_lr_schedule = schedules[i].schedule,
                              .outer_lr = lr,
                              .min_outer_lr = min_lr,
                              .iterations = N};
        for (int it = 0; it <= N; it += N / 4) {
            double want = schedules[i].cosine ? mt_meta_cosine_lr(lr, min_lr, it, N) : lr;
            assert_true(mt_meta_outer_lr(&hp, it) == want);
        }
        assert_true(mt_meta_outer_lr(&hp, N) == (schedules[i].cosine ? min_lr : lr));
    }
}

/* ---- Outer optimizers (float API) ---- */

#define OPT_N 9
static const float opt_params[OPT_N] = {0.5f, -0.25f, 1.5f, 0.0f, -2.0f, 0.75f, 0.1f, -0.6f, 0.3f};
static const float opt_grads[3][OPT_N] = {
    {1.0f, -2.0f, 1e-3f, -1e-3f, 100.0f, -0.5f, 0.0f, 3.0f, -7.0f},
    {0.5f, 1.0f, -2e-3f, 0.3f, 50.0f, 0.25f, 1.0f, -3.0f, -1.0f},
    {-1.0f, 0.5f, 4e-3f, 0.1f, -20.0f, 0.5f, -2.0f, 1.0f, 2.0f},
};

static void test_outer_optimizers(void **state) {
    (void)state;
    mt_config cfg;
    memset(&cfg, 0, sizeof cfg);
    mt_meta_optim opt;
    float params[OPT_N];

    /* Adam: the first step moves each parameter by lr·sign(g) (bias correction makes m̂ = g and
     * v̂ = g²); a zero gradient does not move. The second step against a double reference. The
     * last OPT_RATES elements are learned rates, stepped at OPT_RATE_SCALE times the rate. */
    enum { OPT_RATES = 3 };
    const double OPT_RATE_SCALE = 0.1;
    cfg.optimizer = MT_OPT_ADAM;
    cfg.outer_lr = 0.01;
    cfg.beta1 = 0.9, cfg.beta2 = 0.999, cfg.adam_eps = 1e-8;
    cfg.rate_lr_scale = OPT_RATE_SCALE;
    assert_int_equal(optim_init(&opt, &cfg, OPT_N, OPT_RATES), MT_OK);
    assert_true(opt.lr == 0.01);
    memcpy(params, opt_params, sizeof params);
    mt_meta_optim_step(&opt, params, opt_grads[0], opt.lr);
    double worst = 0, lr_scale[OPT_N];
    for (int i = 0; i < OPT_N; i++) lr_scale[i] = i < OPT_N - OPT_RATES ? 1 : OPT_RATE_SCALE;
    for (int i = 0; i < OPT_N; i++) {
        double g = opt_grads[0][i], moved = (double)params[i] - opt_params[i];
        double want = lr_scale[i] * (g > 0 ? -0.01 : g < 0 ? 0.01 : 0.0);
        if (fabs(moved - want) > worst) worst = fabs(moved - want);
    }
    printf("adam first step: worst |move - (-lr sign g)| = %.2e (lr 1e-2)\n", worst);
    assert_true(worst <= 1e-4 * 0.01);
    double m[OPT_N], v[OPT_N], ref[OPT_N];
    for (int i = 0; i < OPT_N; i++) {
        double g = opt_grads[0][i];
        m[i] = 0.1 * g, v[i] = 0.001 * g * g;
        ref[i] = params[i];
    }
    mt_meta_optim_step(&opt, params, opt_grads[1], 0.005);
    worst = 0;
    for (int i = 0; i < OPT_N; i++) {
        double g = opt_grads[1][i];
        m[i] = 0.9 * m[i] + 0.1 * g, v[i] = 0.999 * v[i] + 0.001 * g * g;
        double mhat = m[i] / (1 - 0.81), vhat = v[i] / (1 - 0.999 * 0.999);
        ref[i] -= lr_scale[i] * 0.005 * mhat / (sqrt(vhat) + 1e-8);
        if (fabs(params[i] - ref[i]) > worst) worst = fabs(params[i] - ref[i]);
    }
    printf("adam second step: worst |float - double reference| = %.2e (lr 5e-3)\n", worst);
    assert_true(worst <= 1e-4 * 0.005);
    assert_true(opt.step == 2);
    mt_meta_optim_free(&opt);

    /* SGD with momentum μ: v ← μv + g, θ ← θ − lr·v; after three steps at rates l1, l2, l3:
     * θ3 = θ0 − l1 g1 − l2 (μ g1 + g2) − l3 (μ² g1 + μ g2 + g3). A rate_lr_scale of 0, as in
     * hparams a program zeroed, steps the learned rates at the outer rate too. */
    cfg.optimizer = MT_OPT_SGD;
    cfg.outer_lr = 0.1;
    cfg.momentum = 0.9;
    cfg.rate_lr_scale = 0;
    assert_int_equal(optim_init(&opt, &cfg, OPT_N, OPT_RATES), MT_OK);
    memcpy(params, opt_params, sizeof params);
    const double l[3] = {0.1, 0.05, 0.02}, mu = 0.9;
    for (int s = 0; s < 3; s++) mt_meta_optim_step(&opt, params, opt_grads[s], l[s]);
    worst = 0;
    for (int i = 0; i < OPT_N; i++) {
        double g1 = opt_grads[0][i], g2 = opt_grads[1][i], g3 = opt_grads[2][i];
        double want = opt_params[i] - l[0] * g1 - l[1] * (mu * g1 + g2) - l[2] * (mu * mu * g1 + mu * g2 + g3);
        double scale = fabs(want) > 1 ? fabs(want) : 1;
        if (fabs(params[i] - want) / scale > worst) worst = fabs(params[i] - want) / scale;
    }
    printf("sgd momentum, 3 steps: worst error against the closed form %.2e\n", worst);
    assert_true(worst <= 1e-6);
    mt_meta_optim_free(&opt);

    /* Global-norm clipping. */
    float g[3] = {3.0f, 0.0f, -4.0f};
    assert_true(fabs(mt_meta_clip_grad(g, 3, 10.0) - 5.0) <= 1e-12);
    assert_true(g[0] == 3.0f && g[2] == -4.0f);
    assert_true(fabs(mt_meta_clip_grad(g, 3, 0.0) - 5.0) <= 1e-12);
    assert_true(g[0] == 3.0f);
    assert_true(fabs(mt_meta_clip_grad(g, 3, 1.0) - 5.0) <= 1e-12);
    assert_true(fabs(g[0] - 0.6f) <= 1e-7 && fabs(g[2] + 0.8f) <= 1e-7 && g[1] == 0.0f);

    /* nonnegative_rates: a learned rate the step takes below 0 lands on 0; the weights (the first
     * two elements) and the rates that stay positive step as without it. */
    const float before[4] = {0.5f, -0.5f, 0.001f, 0.5f}, step_grad[4] = {1, 1, 1, -1};
    const float plain[4] = {0.49f, -0.51f, -0.009f, 0.51f}, projected[4] = {0.49f, -0.51f, 0.0f, 0.51f};
    for (int nonneg = 0; nonneg <= 1; nonneg++) {
        cfg.optimizer = MT_OPT_SGD;
        cfg.momentum = 0;
        cfg.rate_lr_scale = 1;
        cfg.nonnegative_rates = nonneg;
        assert_int_equal(optim_init(&opt, &cfg, 4, 2), MT_OK);
        float p[4];
        memcpy(p, before, sizeof p);
        mt_meta_optim_step(&opt, p, step_grad, 0.01);
        const float *want = nonneg ? projected : plain;
        for (int i = 0; i < 4; i++) assert_true(fabsf(p[i] - want[i]) <= 1e-7f);
        mt_meta_optim_free(&opt);
    }
}

/* ---- The meta-parameter tensor table ---- */

/* Every entry of the meta vector in exactly one tensor, in vector order; counts match dims. */
static void check_cover(const mt_meta_layout *lay, const mt_meta_tensor *t, int count) {
    unsigned char *hits = xcalloc(lay->n_meta, 1);
    size_t next = 0;
    for (int i = 0; i < count; i++) {
        size_t prod = 1;
        assert_true(t[i].rank >= 1 && t[i].rank <= 4);
        for (int d = 0; d < t[i].rank; d++) prod *= (size_t)t[i].dims[d];
        assert_int_equal(prod, t[i].count);
        assert_int_equal(t[i].offset, next);
        next = t[i].offset + t[i].count;
        assert_true(next <= lay->n_meta);
        for (size_t j = t[i].offset; j < next; j++) hits[j]++;
    }
    for (size_t j = 0; j < lay->n_meta; j++) assert_int_equal(hits[j], 1);
    free(hits);
}

/* With every learned rate zero but those of `tensor`, one inner loop moves exactly the
 * parameters that tensor's name says, and at the steps it says: the table and the inner loop
 * agree on the layout. */
static void check_rate_semantics(mf_problem *p, const mt_meta_tensor *t, int count, const char *tensor, int step,
                                 size_t moved_begin, size_t moved_end) {
    int idx = -1;
    for (int i = 0; i < count; i++)
        if (strcmp(t[i].name, tensor) == 0) idx = i;
    assert_true(idx >= 0);
    mf_random_meta(p, 3, 0, 0);
    for (size_t j = p->layout.n_theta; j < p->layout.n_meta; j++) p->meta[j] = 0;
    /* a per-step tensor is [steps, width]: step `step`'s row of rates */
    size_t width = step < 0 ? t[idx].count : t[idx].count / (size_t)p->layout.inner_steps;
    for (size_t j = 0; j < width; j++) p->meta[t[idx].offset + (size_t)(step < 0 ? 0 : step) * width + j] = 0.1;
    mt_meta_step_config sc;
    memset(&sc, 0, sizeof sc);
    mt_meta_task_objective_f64(p->ctx, &sc, p->meta, &p->task);
    size_t n = p->layout.n_theta;
    for (int k = 0; k < p->layout.inner_steps; k++) {
        const double *a = p->ctx->theta_steps + (size_t)k * n, *b = a + n;
        int should = step < 0 || step == k, moved_inside = 0;
        for (size_t j = 0; j < n; j++) {
            int inside = j >= moved_begin && j < moved_end;
            if (!inside)
                assert_true(a[j] == b[j]);
            else if (a[j] != b[j])
                moved_inside = 1;
        }
        assert_int_equal(moved_inside, should);
    }
}

static void test_meta_tensors(void **state) {
    (void)state;
    mt_meta_tensor t[64];
    mf_problem p;
    int cnt;

    /* MAML: the network's tensors alone. */
    assert_int_equal(mf_problem_init(&p, MLP.spec, MT_ALGO_MAML, 3, 5, 7, 1), 0);
    cnt = mt_meta_tensors(&p.layout, t, 64);
    assert_int_equal(cnt, 6);
    assert_string_equal(t[0].name, "linear1/weight");
    assert_string_equal(t[5].name, "linear3/bias");
    check_cover(&p.layout, t, cnt);
    mf_problem_free(&p);

    /* Meta-SGD: one rate tensor per network tensor, same shapes, after θ. */
    assert_int_equal(mf_problem_init(&p, MLP.spec, MT_ALGO_METASGD, 3, 5, 7, 1), 0);
    cnt = mt_meta_tensors(&p.layout, t, 64);
    assert_int_equal(cnt, 12);
    assert_string_equal(t[6].name, "inner_lr/linear1/weight");
    assert_int_equal(t[6].offset, p.layout.n_theta);
    assert_int_equal(t[6].rank, 2);
    assert_int_equal(t[6].dims[0], 7);
    assert_int_equal(t[6].dims[1], 2);
    assert_string_equal(t[9].name, "inner_lr/linear2/bias");
    assert_string_equal(t[11].name, "inner_lr/linear3/bias");
    check_cover(&p.layout, t, cnt);
    int lin2b = mt_nn_find_tensor(&p.net, "linear2/bias");
    assert_true(lin2b >= 0);
    check_rate_semantics(&p, t, cnt, "inner_lr/linear2/bias", -1, p.net.tensors[lin2b].offset,
                         p.net.tensors[lin2b].offset + p.net.tensors[lin2b].count);
    /* Fewer slots than tensors: the count still comes back, nothing past max is written. */
    memset(t, 0x5a, sizeof t);
    assert_int_equal(mt_meta_tensors(&p.layout, t, 4), 12);
    assert_string_equal(t[3].name, "linear2/bias");
    for (size_t b = 4 * sizeof *t; b < sizeof t; b++) assert_true(((unsigned char *)t)[b] == 0x5a);
    mf_problem_free(&p);

    /* MAML++: one rate per parameter-holding layer and step, dims [K]. */
    const int K = 3;
    assert_int_equal(mf_problem_init(&p, MLP.spec, MT_ALGO_MAMLPP, K, 5, 7, 1), 0);
    cnt = mt_meta_tensors(&p.layout, t, 64);
    assert_int_equal(cnt, 9);
    static const char *const lslr[] = {"inner_lr/linear1", "inner_lr/linear2", "inner_lr/linear3"};
    for (int i = 0; i < 3; i++) {
        assert_string_equal(t[6 + i].name, lslr[i]);
        assert_int_equal(t[6 + i].rank, 1);
        assert_int_equal(t[6 + i].dims[0], K);
        assert_int_equal(t[6 + i].count, (size_t)K);
    }
    assert_int_equal(t[6].offset, p.layout.n_theta);
    check_cover(&p.layout, t, cnt);
    memset(t, 0x5a, sizeof t);
    assert_int_equal(mt_meta_tensors(&p.layout, t, 7), 9);
    assert_string_equal(t[6].name, "inner_lr/linear1");
    for (size_t b = 7 * sizeof *t; b < sizeof t; b++) assert_true(((unsigned char *)t)[b] == 0x5a);
    assert_int_equal(mt_meta_tensors(&p.layout, t, 64), cnt);
    const mt_nn_layer *L2 = &p.net.layers[2]; /* linear1, relu1, linear2 */
    assert_string_equal(L2->name, "linear2");
    check_rate_semantics(&p, t, cnt, "inner_lr/linear2", 1, L2->param_offset, L2->param_offset + L2->param_count);
    check_rate_semantics(&p, t, cnt, "inner_lr/linear2", 2, L2->param_offset, L2->param_offset + L2->param_count);
    mf_problem_free(&p);

    /* The conv net under MAML++: conv, bn and linear layers all hold rates. */
    assert_int_equal(mf_problem_init(&p, CONV.spec, MT_ALGO_MAMLPP, 2, 6, 5, 1), 0);
    cnt = mt_meta_tensors(&p.layout, t, 64);
    static const char *const conv_lslr[] = {"inner_lr/conv1", "inner_lr/bn1", "inner_lr/conv2", "inner_lr/bn2",
                                            "inner_lr/linear1"};
    assert_int_equal(cnt, p.net.n_tensors + 5);
    for (int i = 0; i < 5; i++) assert_string_equal(t[p.net.n_tensors + i].name, conv_lslr[i]);
    check_cover(&p.layout, t, cnt);
    const mt_nn_layer *bn2 = NULL;
    for (int l = 0; l < p.net.n_layers; l++)
        if (strcmp(p.net.layers[l].name, "bn2") == 0) bn2 = &p.net.layers[l];
    assert_non_null(bn2);
    check_rate_semantics(&p, t, cnt, "inner_lr/bn2", 0, bn2->param_offset, bn2->param_offset + bn2->param_count);
    mf_problem_free(&p);

    /* MAML++ with Meta-SGD's rates: one [K, count] tensor per network tensor, tensor by tensor. */
    assert_int_equal(mf_problem_init(&p, MLP.spec, MT_ALGO_MAMLPP_METASGD, K, 5, 7, 1), 0);
    cnt = mt_meta_tensors(&p.layout, t, 64);
    assert_int_equal(cnt, 12);
    assert_int_equal(p.layout.n_rates, (size_t)K * p.layout.n_theta);
    for (int i = 0; i < 6; i++) {
        char name[64];
        snprintf(name, sizeof name, "inner_lr/%s", p.net.tensors[i].name);
        assert_string_equal(t[6 + i].name, name);
        assert_int_equal(t[6 + i].rank, 2);
        assert_int_equal(t[6 + i].dims[0], K);
        assert_int_equal(t[6 + i].dims[1], (int)p.net.tensors[i].count);
        assert_int_equal(t[6 + i].offset, p.layout.n_theta + (size_t)K * p.net.tensors[i].offset);
    }
    check_cover(&p.layout, t, cnt);
    lin2b = mt_nn_find_tensor(&p.net, "linear2/bias");
    size_t b0 = p.net.tensors[lin2b].offset, b1 = b0 + p.net.tensors[lin2b].count;
    for (int step = -1; step < K; step++) check_rate_semantics(&p, t, cnt, "inner_lr/linear2/bias", step, b0, b1);
    mf_problem_free(&p);
}

/* Last: every algorithm's check ran (a worst error of exactly 0 means it measured nothing) and
 * stayed within the tolerance. */
static void test_summary(void **state) {
    (void)state;
    printf("worst meta-gradient relative errors: maml %.2e, metasgd %.2e, anil %.2e, mamlpp %.2e, "
           "mamlpp-metasgd %.2e (tolerance %.0e)\n",
           worst_maml, worst_metasgd, worst_anil, worst_mamlpp, worst_mamlpp_metasgd, GRAD_TOL);
    const double worst[] = {worst_maml, worst_metasgd, worst_anil, worst_mamlpp, worst_mamlpp_metasgd};
    for (size_t i = 0; i < sizeof worst / sizeof *worst; i++) assert_true(worst[i] > 0 && worst[i] <= GRAD_TOL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_maml_matches_fd),
        cmocka_unit_test(test_metasgd_matches_fd),
        cmocka_unit_test(test_anil_matches_fd),
        cmocka_unit_test(test_mamlpp_matches_fd),
        cmocka_unit_test(test_mamlpp_metasgd_matches_fd),
        cmocka_unit_test(test_fomaml_is_maml_without_hvp),
        cmocka_unit_test(test_reptile_quadratic_closed_form),
        cmocka_unit_test(test_imaml_quadratic_closed_form),
        cmocka_unit_test(test_msl_weights_and_cosine),
        cmocka_unit_test(test_outer_optimizers),
        cmocka_unit_test(test_meta_tensors),
        cmocka_unit_test(test_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
