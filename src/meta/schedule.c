/* Meta-parameter layout, per-iteration inner-loop settings and the MAML++ schedules. */
#include "metatrain/meta.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void mt_meta_layout_init(mt_meta_layout *layout, const mt_nn_net *net, mt_algorithm algorithm, int inner_steps) {
    memset(layout, 0, sizeof *layout);
    layout->net = net;
    layout->algorithm = algorithm;
    layout->traits = mt_meta_traits_of(algorithm);
    layout->inner_steps = inner_steps;
    layout->n_theta = net->n_params;
    layout->n_rates = mt_meta_rate_count(layout->traits, net, inner_steps);
    layout->n_meta = layout->n_theta + layout->n_rates;
}

void mt_meta_msl_weights(double *weights, int steps, int iteration, int msl_iterations) {
    double uniform = 1.0 / steps, floor = 0.03 / steps;
    double decay = msl_iterations > 0 ? uniform / msl_iterations : 0;
    double moved = msl_iterations > 0 ? (double)iteration * decay : 1;
    for (int k = 0; k < steps - 1; k++) weights[k] = fmax(uniform - moved, floor);
    weights[steps - 1] = fmin(uniform + moved * (steps - 1), 1.0 - (steps - 1) * floor);
}

double mt_meta_cosine_lr(double lr, double min_lr, int iteration, int iterations) {
    double t = iterations > 0 ? fmin((double)iteration / iterations, 1.0) : 1.0;
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + cos(M_PI * t));
}

void mt_meta_step_config_at(mt_meta_step_config *sc, const mt_meta_hparams *hp, int iteration) {
    memset(sc, 0, sizeof *sc);
    sc->inner_lr = hp->inner_lr;
    sc->imaml_lambda = hp->imaml_lambda;
    sc->cg_steps = hp->cg_steps;
    sc->cg_tol = hp->cg_tol;
    const mt_meta_traits *t = mt_meta_traits_of(hp->algorithm);
    sc->second_order =
        t->order == MT_ORDER_SECOND || (t->order == MT_ORDER_ANNEALED && iteration >= hp->first_order_iterations);
    if (t->multi_step_loss && hp->msl_iterations > 0 && hp->inner_steps > 1) {
        sc->multi_step_loss = 1;
        mt_meta_msl_weights(sc->step_weights, hp->inner_steps, iteration, hp->msl_iterations);
    }
}
