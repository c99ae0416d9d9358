/* Outer optimizers over the flat meta-parameter vector: Adam (Kingma and Ba 2015) and SGD with
 * momentum. Elementwise and in a fixed order, so every rank computes the same bits. */
#include "metatrain/meta.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

mt_status mt_meta_optim_init(mt_meta_optim *opt, const mt_config *cfg, size_t n) {
    memset(opt, 0, sizeof *opt);
    opt->kind = cfg->optimizer;
    opt->n = n;
    opt->lr = cfg->outer_lr;
    opt->beta1 = cfg->beta1;
    opt->beta2 = cfg->beta2;
    opt->eps = cfg->adam_eps;
    opt->momentum = cfg->momentum;
    opt->m = calloc(n, sizeof *opt->m);
    opt->v = calloc(n, sizeof *opt->v);
    if (!opt->m || !opt->v) {
        mt_meta_optim_free(opt);
        return MT_RAISE(MT_ERR_NOMEM, "out of memory for the outer optimizer's state");
    }
    return MT_OK;
}

void mt_meta_optim_free(mt_meta_optim *opt) {
    free(opt->m);
    free(opt->v);
    opt->m = opt->v = NULL;
}

void mt_meta_optim_step(mt_meta_optim *opt, float *params, const float *grad, double lr) {
    opt->step++;
    if (opt->kind == MT_OPT_ADAM) {
        double c1 = 1.0 - pow(opt->beta1, (double)opt->step);
        double c2 = 1.0 - pow(opt->beta2, (double)opt->step);
        float b1 = (float)opt->beta1, b2 = (float)opt->beta2;
        for (size_t i = 0; i < opt->n; i++) {
            float g = grad[i];
            opt->m[i] = b1 * opt->m[i] + (1 - b1) * g;
            opt->v[i] = b2 * opt->v[i] + (1 - b2) * g * g;
            double mhat = opt->m[i] / c1, vhat = opt->v[i] / c2;
            params[i] -= (float)(lr * mhat / (sqrt(vhat) + opt->eps));
        }
    } else {
        float mu = (float)opt->momentum;
        for (size_t i = 0; i < opt->n; i++) {
            opt->m[i] = mu * opt->m[i] + grad[i];
            params[i] -= (float)(lr * opt->m[i]);
        }
    }
}

double mt_meta_clip_grad(float *grad, size_t n, double clip) {
    double sq = 0;
    for (size_t i = 0; i < n; i++) sq += (double)grad[i] * grad[i];
    double norm = sqrt(sq);
    if (clip > 0 && norm > clip) {
        float scale = (float)(clip / norm);
        for (size_t i = 0; i < n; i++) grad[i] *= scale;
    }
    return norm;
}
