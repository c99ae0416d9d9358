/* The inner loop and the exact meta-gradient through it (checked against central differences in
 * tests/test_meta_gradcheck.c).
 *
 * Forward:  θ_{k+1} = θ_k − α_k ⊙ ∇L_s(θ_k),  k = 0 … K−1, keeping θ_0 … θ_K.
 * Reverse:  v_K = ∇L_q(θ_K); for k = K−1 … 0:
 *              ∂/∂α_k −= v_{k+1} ⊙ g_k;   v_k = v_{k+1} − H_k (α_k ⊙ v_{k+1})
 *           with g_k and H_k(·) from one HVP pass at θ_k that recomputes the activations, so
 *           memory grows with steps × parameters, never steps × activations.
 * Reptile and iMAML reuse the forward loop with their own meta-gradients.
 *
 * So each extra inner step costs one copy of θ (0.43 MB for the 113,221-parameter 4-conv
 * network), where differentiating through the unrolled graph (PyTorch's create_graph) keeps
 * every step's activations and double-backward graph, about 2.1 MB per step on the same 5-way
 * task: long inner loops stay affordable. */
#include "metatrain/meta.h"
#include "core/precision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef MT_(mt_meta_ctx) ctx_t;
typedef MT_(mt_task) task_t;

mt_status MT_(mt_meta_ctx_create)(ctx_t **out, const mt_meta_layout *layout, int max_batch) {
    mt_status st = MT_OK;
    ctx_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx) MT_THROW(MT_ERR_NOMEM, "out of memory for the inner loop");
    ctx->layout = layout;
    ctx->alpha_fixed_rate = NAN;
    MT_TRY(MT_(mt_nn_ws_create)(&ctx->ws, layout->net, max_batch));
    size_t n = layout->n_theta, K = (size_t)layout->inner_steps;
    ctx->theta_steps = malloc((K + 1) * n * sizeof(mt_real));
    mt_real **vectors[] = {&ctx->alpha, &ctx->v,    &ctx->u,    &ctx->g,    &ctx->hv,
                           &ctx->gq,    &ctx->cg_r, &ctx->cg_p, &ctx->cg_ap};
    for (size_t i = 0; i < sizeof vectors / sizeof *vectors; i++) *vectors[i] = malloc(n * sizeof(mt_real));
    for (size_t i = 0; i < sizeof vectors / sizeof *vectors; i++)
        if (!*vectors[i]) MT_THROW(MT_ERR_NOMEM, "out of memory for the inner loop");
    if (!ctx->theta_steps) MT_THROW(MT_ERR_NOMEM, "out of memory for the inner loop");
    *out = ctx;
    return MT_OK;
fail:
    MT_(mt_meta_ctx_free)(ctx);
    return st;
}

void MT_(mt_meta_ctx_free)(ctx_t *ctx) {
    if (!ctx) return;
    MT_(mt_nn_ws_free)(ctx->ws);
    free(ctx->theta_steps);
    free(ctx->alpha), free(ctx->v), free(ctx->u), free(ctx->g), free(ctx->hv), free(ctx->gq);
    free(ctx->cg_r), free(ctx->cg_p), free(ctx->cg_ap);
    free(ctx);
}

void MT_(mt_meta_init_params)(const mt_meta_layout *layout, uint64_t seed, double inner_lr, mt_real *meta) {
    MT_(mt_nn_init_params)(layout->net, seed, meta);
    for (size_t i = 0; i < layout->n_rates; i++) meta[layout->n_theta + i] = (mt_real)inner_lr;
}

static mt_real *theta_at(const ctx_t *ctx, int k) { return ctx->theta_steps + (size_t)k * ctx->layout->n_theta; }

/* α_k expanded to one rate per parameter. MAML++ steps past the trained count reuse the last. */
static void expand_rates(ctx_t *ctx, const mt_meta_step_config *sc, const mt_real *meta, int k) {
    const mt_meta_layout *lay = ctx->layout;
    const mt_nn_net *net = lay->net;
    const mt_real *rates = meta + lay->n_theta;
    mt_real *alpha = ctx->alpha;
    size_t n = lay->n_theta;
    /* Learned rates change with meta; a fixed rate is expanded once per value, not per step of
     * every task (2% of a sinusoid task). */
    int fixed = lay->traits->rates == MT_RATES_FIXED;
    if (fixed && ctx->alpha_fixed_rate == sc->inner_lr) return;
    ctx->alpha_fixed_rate = fixed ? sc->inner_lr : NAN;
    switch (lay->traits->rates) {
    case MT_RATES_PER_PARAMETER:
        memcpy(alpha, rates, n * sizeof *alpha);
        break;
    case MT_RATES_PER_LAYER_STEP: {
        int K = lay->inner_steps, step = k < K ? k : K - 1, p = 0;
        for (int l = 0; l < net->n_layers; l++) {
            const mt_nn_layer *L = &net->layers[l];
            if (!L->param_count) continue;
            for (size_t j = 0; j < L->param_count; j++) alpha[L->param_offset + j] = rates[p * K + step];
            p++;
        }
        break;
    }
    case MT_RATES_PER_PARAMETER_STEP: {
        size_t K = (size_t)lay->inner_steps, step = (size_t)(k < lay->inner_steps ? k : lay->inner_steps - 1);
        for (int t = 0; t < net->n_tensors; t++) {
            const mt_nn_tensor *T = &net->tensors[t];
            memcpy(alpha + T->offset, rates + K * T->offset + step * T->count, T->count * sizeof *alpha);
        }
        break;
    }
    case MT_RATES_FIXED:
        for (size_t j = 0; j < n; j++) alpha[j] = (mt_real)sc->inner_lr;
        break;
    }
    if (lay->traits->adapts == MT_ADAPT_HEAD) { /* only the head moves */
        size_t head_begin, head_end;
        mt_nn_head_range(net, &head_begin, &head_end);
        for (size_t j = 0; j < n; j++)
            if (j < head_begin || j >= head_end) alpha[j] = 0;
    }
}

/* ∂/∂α_k += −v ⊙ g, summed over the entries that share a learned rate. */
static void add_rate_grad(const ctx_t *ctx, const mt_real *v, const mt_real *g, int k, mt_real *rate_grad) {
    const mt_meta_layout *lay = ctx->layout;
    const mt_nn_net *net = lay->net;
    if (lay->traits->rates == MT_RATES_PER_PARAMETER) {
        for (size_t j = 0; j < lay->n_theta; j++) rate_grad[j] -= v[j] * g[j];
    } else if (lay->traits->rates == MT_RATES_PER_LAYER_STEP) {
        int p = 0;
        for (int l = 0; l < net->n_layers; l++) {
            const mt_nn_layer *L = &net->layers[l];
            if (!L->param_count) continue;
            double sum = 0;
            for (size_t j = L->param_offset; j < L->param_offset + L->param_count; j++) sum += (double)v[j] * g[j];
            rate_grad[p * lay->inner_steps + k] -= (mt_real)sum;
            p++;
        }
    } else if (lay->traits->rates == MT_RATES_PER_PARAMETER_STEP) {
        size_t K = (size_t)lay->inner_steps;
        for (int t = 0; t < net->n_tensors; t++) {
            const mt_nn_tensor *T = &net->tensors[t];
            mt_real *r = rate_grad + K * T->offset + (size_t)k * T->count;
            for (size_t j = 0; j < T->count; j++) r[j] -= v[T->offset + j] * g[T->offset + j];
        }
    }
}

/* θ_0 = θ; θ_{k+1} = θ_k − α_k ⊙ ∇L_s(θ_k) (+ iMAML's proximal pull λ(θ_k − θ)). */
static void inner_loop(ctx_t *ctx, const mt_meta_step_config *sc, const mt_real *meta, const task_t *task, int steps,
                       int keep_all) {
    size_t n = ctx->layout->n_theta;
    int proximal = ctx->layout->traits->proximal;
    memcpy(theta_at(ctx, 0), meta, n * sizeof(mt_real));
    for (int k = 0; k < steps; k++) {
        mt_real *cur = theta_at(ctx, keep_all ? k : 0), *next = theta_at(ctx, keep_all ? k + 1 : 0);
        expand_rates(ctx, sc, meta, k);
        MT_(mt_nn_grad)(ctx->ws, cur, &task->support, ctx->g);
        if (proximal) {
            mt_real lambda = (mt_real)sc->imaml_lambda;
            for (size_t j = 0; j < n; j++) ctx->g[j] += lambda * (cur[j] - meta[j]);
        }
        for (size_t j = 0; j < n; j++) next[j] = cur[j] - ctx->alpha[j] * ctx->g[j];
    }
}

static double dot(const mt_real *a, const mt_real *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* iMAML: solves (I + H_s(φ)/λ) x = ∇L_q(φ) by conjugate gradient; x goes to ctx->v. */
static void imaml_solve(ctx_t *ctx, const mt_meta_step_config *sc, const mt_real *phi, const task_t *task) {
    size_t n = ctx->layout->n_theta;
    mt_real *x = ctx->v, *r = ctx->cg_r, *p = ctx->cg_p, *ap = ctx->cg_ap, *b = ctx->gq;
    double inv_lambda = 1.0 / sc->imaml_lambda;
    memset(x, 0, n * sizeof *x);
    memcpy(r, b, n * sizeof *r);
    memcpy(p, b, n * sizeof *p);
    double rr = dot(r, r, n), bnorm = sqrt(rr);
    int it = 0;
    ctx->last_cg_residual = 0;
    while (bnorm > 0 && it < sc->cg_steps && sqrt(rr) > sc->cg_tol * bnorm) {
        MT_(mt_nn_hvp)(ctx->ws, phi, &task->support, p, NULL, ap);
        for (size_t j = 0; j < n; j++) ap[j] = p[j] + (mt_real)(inv_lambda * ap[j]);
        double pap = dot(p, ap, n);
        if (!(pap > 0)) break; /* not positive definite along p: stop with the best x so far */
        double step = rr / pap;
        for (size_t j = 0; j < n; j++) x[j] += (mt_real)step * p[j], r[j] -= (mt_real)step * ap[j];
        double rr_new = dot(r, r, n);
        for (size_t j = 0; j < n; j++) p[j] = r[j] + (mt_real)(rr_new / rr) * p[j];
        rr = rr_new;
        it++;
    }
    ctx->last_cg_iterations = it;
    ctx->last_cg_residual = bnorm > 0 ? sqrt(rr) / bnorm : 0;
}

double MT_(mt_meta_task_objective)(ctx_t *ctx, const mt_meta_step_config *sc, const mt_real *meta, const task_t *task) {
    int K = ctx->layout->inner_steps;
    inner_loop(ctx, sc, meta, task, K, 1);
    if (!sc->multi_step_loss) return MT_(mt_nn_loss)(ctx->ws, theta_at(ctx, K), &task->query);
    double objective = 0;
    for (int k = 1; k <= K; k++)
        objective += sc->step_weights[k - 1] * MT_(mt_nn_loss)(ctx->ws, theta_at(ctx, k), &task->query);
    return objective;
}

double MT_(mt_meta_task_grad)(ctx_t *ctx, const mt_meta_step_config *sc, const mt_real *meta, const task_t *task,
                              mt_real *meta_grad) {
    const mt_meta_layout *lay = ctx->layout;
    size_t n = lay->n_theta;
    int K = lay->inner_steps;
    mt_real *v = ctx->v, *rate_grad = meta_grad + n;
    memset(rate_grad, 0, lay->n_rates * sizeof *rate_grad);
    inner_loop(ctx, sc, meta, task, K, 1);
    const mt_real *theta_K = theta_at(ctx, K);

    if (lay->traits->metagrad == MT_METAGRAD_REPTILE) { /* meta-gradient θ − θ_K */
        for (size_t j = 0; j < n; j++) meta_grad[j] = meta[j] - theta_K[j];
        return MT_(mt_nn_loss)(ctx->ws, theta_K, &task->query);
    }
    double last_weight = sc->multi_step_loss ? sc->step_weights[K - 1] : 1.0;
    double objective = last_weight * MT_(mt_nn_grad)(ctx->ws, theta_K, &task->query, ctx->gq);
    if (lay->traits->metagrad == MT_METAGRAD_IMPLICIT) {
        imaml_solve(ctx, sc, theta_K, task);
        memcpy(meta_grad, v, n * sizeof *v);
        return objective;
    }
    for (size_t j = 0; j < n; j++) v[j] = (mt_real)last_weight * ctx->gq[j];

    int need_step_grads = sc->second_order || lay->n_rates > 0 || sc->multi_step_loss;
    for (int k = K - 1; k >= 0 && need_step_grads; k--) {
        const mt_real *theta_k = theta_at(ctx, k);
        expand_rates(ctx, sc, meta, k);
        if (sc->second_order) {
            for (size_t j = 0; j < n; j++) ctx->u[j] = ctx->alpha[j] * v[j];
            /* the support gradient only for learned rates */
            MT_(mt_nn_hvp)(ctx->ws, theta_k, &task->support, ctx->u, lay->n_rates > 0 ? ctx->g : NULL, ctx->hv);
        } else if (lay->n_rates > 0) {
            MT_(mt_nn_grad)(ctx->ws, theta_k, &task->support, ctx->g);
        }
        if (lay->n_rates > 0) add_rate_grad(ctx, v, ctx->g, k, rate_grad);
        if (sc->second_order)
            for (size_t j = 0; j < n; j++) v[j] -= ctx->hv[j];
        if (sc->multi_step_loss && k >= 1) {
            double w = sc->step_weights[k - 1];
            objective += w * MT_(mt_nn_grad)(ctx->ws, theta_k, &task->query, ctx->gq);
            for (size_t j = 0; j < n; j++) v[j] += (mt_real)w * ctx->gq[j];
        }
    }
    memcpy(meta_grad, v, n * sizeof *v);
    return objective;
}

void MT_(mt_meta_adapt_step)(ctx_t *ctx, const mt_meta_step_config *sc, const mt_real *meta,
                             const MT_(mt_nn_batch) * support, int k, mt_real *theta) {
    size_t n = ctx->layout->n_theta;
    int proximal = ctx->layout->traits->proximal;
    expand_rates(ctx, sc, meta, k);
    MT_(mt_nn_grad)(ctx->ws, theta, support, ctx->g);
    for (size_t j = 0; j < n; j++) {
        mt_real g = ctx->g[j] + (proximal ? (mt_real)sc->imaml_lambda * (theta[j] - meta[j]) : 0);
        theta[j] -= ctx->alpha[j] * g;
    }
}

void MT_(mt_meta_adapt)(ctx_t *ctx, const mt_meta_step_config *sc, const mt_real *meta,
                        const MT_(mt_nn_batch) * support, int steps, mt_real *theta) {
    memcpy(theta, meta, ctx->layout->n_theta * sizeof *theta);
    for (int k = 0; k < steps; k++) MT_(mt_meta_adapt_step)(ctx, sc, meta, support, k, theta);
}

void MT_(mt_meta_adapt_eval)(ctx_t *ctx, const mt_meta_step_config *sc, const mt_real *meta, const task_t *task,
                             int steps, double *loss_per_step, int *correct_per_step) {
    mt_real *theta = theta_at(ctx, 0);
    int classify = ctx->layout->net->loss == MT_NN_LOSS_XENT;
    memcpy(theta, meta, ctx->layout->n_theta * sizeof *theta);
    for (int s = 0;; s++) {
        loss_per_step[s] = MT_(mt_nn_loss)(ctx->ws, theta, &task->query);
        if (correct_per_step) correct_per_step[s] = classify ? MT_(mt_nn_count_correct)(ctx->ws, &task->query) : 0;
        if (s == steps) break;
        MT_(mt_meta_adapt_step)(ctx, sc, meta, &task->support, s, theta);
    }
}
