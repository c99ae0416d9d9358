/* Per-precision part of meta.h. No include guard. */

/* Initial meta-parameters: θ from mt_nn_init_params, learned rates at inner_lr. */
void MT_(mt_meta_init_params)(const mt_meta_layout *layout, uint64_t seed, double inner_lr, MT_REAL *meta);

/* Everything the inner loop and its reverse sweep need, planned once. */
typedef struct {
    const mt_meta_layout *layout;
    MT_(mt_nn_ws) * ws;
    MT_REAL *theta_steps;    /* θ_0 … θ_K, (K+1) × n_theta: kept so the reverse sweep recomputes activations */
    MT_REAL *alpha;          /* the rates of one step, expanded to n_theta */
    double alpha_fixed_rate; /* MAML and ANIL: the inner_lr alpha holds, or NAN (refill) */
    MT_REAL *v, *u, *g, *hv, *gq; /* n_theta each */
    MT_REAL *cg_r, *cg_p, *cg_ap; /* iMAML conjugate gradient */
    double last_cg_residual;      /* ‖r‖/‖b‖ reached by the last iMAML solve */
    int last_cg_iterations;
} MT_(mt_meta_ctx);

mt_status MT_(mt_meta_ctx_create)(MT_(mt_meta_ctx) * *ctx, const mt_meta_layout *layout, int max_batch);
void MT_(mt_meta_ctx_free)(MT_(mt_meta_ctx) * ctx);

/* The meta-gradient of one task at meta-parameters `meta` (n_meta): overwrites meta_grad (n_meta)
 * and returns the task's meta-objective (the query loss after adaptation, or the weighted
 * multi-step loss). */
double MT_(mt_meta_task_grad)(MT_(mt_meta_ctx) * ctx, const mt_meta_step_config *sc, const MT_REAL *meta,
                              const MT_(mt_task) * task, MT_REAL *meta_grad);

/* The meta-objective alone (for finite-difference checks and validation). */
double MT_(mt_meta_task_objective)(MT_(mt_meta_ctx) * ctx, const mt_meta_step_config *sc, const MT_REAL *meta,
                                   const MT_(mt_task) * task);

/* Adaptation as meta-training defined it, the one path that eval, adapt and predict share: step k
 * of the inner loop on `support` with the algorithm's rates (fixed, learned per parameter, or
 * MAML++'s per layer and step; the last step's rates repeat beyond the trained number of steps;
 * ANIL moves only the head; iMAML adds its proximal pull toward meta's θ), in place on theta
 * (n_theta). Uses the ctx's workspace; allocates nothing. */
void MT_(mt_meta_adapt_step)(MT_(mt_meta_ctx) * ctx, const mt_meta_step_config *sc, const MT_REAL *meta,
                             const MT_(mt_nn_batch) * support, int k, MT_REAL *theta);
/* theta = meta's θ, then `steps` steps of mt_meta_adapt_step. */
void MT_(mt_meta_adapt)(MT_(mt_meta_ctx) * ctx, const mt_meta_step_config *sc, const MT_REAL *meta,
                        const MT_(mt_nn_batch) * support, int steps, MT_REAL *theta);

/* Evaluation: adapts for `steps` inner steps with the meta-learned rates (the last step's rates
 * repeat beyond the trained number of steps) and records, for s = 0..steps, the query loss and,
 * when classifying, the number of correct query predictions. */
void MT_(mt_meta_adapt_eval)(MT_(mt_meta_ctx) * ctx, const mt_meta_step_config *sc, const MT_REAL *meta,
                             const MT_(mt_task) * task, int steps, double *loss_per_step, int *correct_per_step);
