/* Outer optimizers over the flat meta-parameter vector: Adam (Kingma and Ba 2015) and SGD with
 * momentum. Elementwise and in a fixed order, so every rank computes the same bits. */
#include "metatrain/meta.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernel.h"

mt_status mt_meta_optim_init(mt_meta_optim *opt, const mt_meta_hparams *hp, size_t n, size_t n_rates) {
    memset(opt, 0, sizeof *opt);
    opt->kind = hp->optimizer;
    opt->n = n;
    opt->n_rates = n_rates <= n ? n_rates : n;
    opt->lr = hp->outer_lr;
    opt->beta1 = hp->beta1;
    opt->beta2 = hp->beta2;
    opt->eps = hp->adam_eps;
    opt->momentum = hp->momentum;
    opt->rate_lr_scale = hp->rate_lr_scale > 0 ? hp->rate_lr_scale : 1;
    opt->nonnegative_rates = hp->nonnegative_rates;
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

/* Vectorizes as written (restrict, no errno from sqrt). CMake compiles this file without FMA
 * contraction, so every clone gives the scalar code's bits: the outer step adds no CPU-dependent
 * rounding of its own. Adam's lr·m̂/(√v̂ + ε) has its bias corrections folded into step_size and
 * inv_sqrt_c2, in float as PyTorch's Adam computes it: one division and one square root per
 * parameter, sixteen to a vector (in double they were half of a small model's outer step). */
static MT_KERNEL void adam_range(float *restrict params, float *restrict m, float *restrict v,
                                 const float *restrict grad, size_t from, size_t to, float step_size, float inv_sqrt_c2,
                                 float eps, float b1, float b2) {
    for (size_t i = from; i < to; i++) {
        float g = grad[i];
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        params[i] -= step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_c2 + eps);
    }
}

static MT_KERNEL void momentum_range(float *restrict params, float *restrict m, const float *restrict grad, size_t from,
                                     size_t to, double lr, float mu) {
    for (size_t i = from; i < to; i++) {
        m[i] = mu * m[i] + grad[i];
        params[i] -= (float)(lr * m[i]);
    }
}

/* The learned inner rates, the last n_rates elements, step at lr·rate_lr_scale: at the weights'
 * rate, Adam moves a rate of 0.01 by about a tenth of itself per iteration, and rates that drift
 * that fast reach values where a steep task makes the inner loop diverge. With nonnegative_rates
 * they are then projected onto [0, inf) (projected gradient descent): Meta-SGD's rates may change
 * sign, and a negative rate ascends its coordinate's loss, which repeated steps past the trained
 * ones amplify until the inner loop diverges. */
void mt_meta_optim_step(mt_meta_optim *opt, float *restrict params, const float *restrict grad, double lr) {
    size_t n = opt->n, split = opt->n - opt->n_rates;
    double rate_lr = lr * opt->rate_lr_scale;
    opt->step++;
    if (opt->kind == MT_OPT_ADAM) {
        double c1 = 1.0 - pow(opt->beta1, (double)opt->step);
        double c2 = 1.0 - pow(opt->beta2, (double)opt->step);
        float inv_sqrt_c2 = (float)(1 / sqrt(c2)), eps = (float)opt->eps;
        float b1 = (float)opt->beta1, b2 = (float)opt->beta2;
        adam_range(params, opt->m, opt->v, grad, 0, split, (float)(lr / c1), inv_sqrt_c2, eps, b1, b2);
        adam_range(params, opt->m, opt->v, grad, split, n, (float)(rate_lr / c1), inv_sqrt_c2, eps, b1, b2);
    } else {
        momentum_range(params, opt->m, grad, 0, split, lr, (float)opt->momentum);
        momentum_range(params, opt->m, grad, split, n, rate_lr, (float)opt->momentum);
    }
    if (opt->nonnegative_rates)
        for (size_t i = split; i < n; i++) params[i] = params[i] < 0 ? 0 : params[i];
}

/* The squared norm in eight interleaved partial sums, added in a fixed order: it vectorizes, and
 * every CPU and rank gets the same bits. */
MT_KERNEL double mt_meta_clip_grad(float *grad, size_t n, double clip) {
    double part[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) part[k] += (double)grad[i + k] * grad[i + k];
    for (int k = 0; i < n; i++, k++) part[k] += (double)grad[i] * grad[i];
    double sq = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    double norm = sqrt(sq);
    if (clip > 0 && norm > clip) {
        float scale = (float)(clip / norm);
        for (i = 0; i < n; i++) grad[i] *= scale;
    }
    return norm;
}
