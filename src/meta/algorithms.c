/* The algorithms of the MAML family as traits: one row per algorithm, read by the layout, the
 * inner loop, the per-iteration settings and the outer learning-rate schedule. Adding an
 * algorithm is its name in MT_ALGORITHMS (config.h), a row here and, when none of the existing
 * traits fits, the math of the new trait where the inner loop reads it (src/meta/inner_loop.c:
 * expand_rates lays out the rates of a step, add_rate_grad sums their gradient). */
#include "metatrain/meta.h"

#include <stdio.h>
#include <string.h>

#define BACKPROP(rates_, adapts_, order_)                                                                              \
    { .rates = rates_, .adapts = adapts_, .order = order_, .metagrad = MT_METAGRAD_BACKPROP }
static const mt_meta_traits table[] = {
    [MT_ALGO_MAML] = BACKPROP(MT_RATES_FIXED, MT_ADAPT_ALL, MT_ORDER_SECOND),
    [MT_ALGO_FOMAML] = BACKPROP(MT_RATES_FIXED, MT_ADAPT_ALL, MT_ORDER_FIRST),
    [MT_ALGO_METASGD] = BACKPROP(MT_RATES_PER_PARAMETER, MT_ADAPT_ALL, MT_ORDER_SECOND),
    [MT_ALGO_ANIL] = BACKPROP(MT_RATES_FIXED, MT_ADAPT_HEAD, MT_ORDER_SECOND),
    [MT_ALGO_MAMLPP] = {.rates = MT_RATES_PER_LAYER_STEP,
                        .adapts = MT_ADAPT_ALL,
                        .order = MT_ORDER_ANNEALED,
                        .metagrad = MT_METAGRAD_BACKPROP,
                        .multi_step_loss = 1,
                        .cosine_outer_lr = 1},
    [MT_ALGO_MAMLPP_METASGD] = {.rates = MT_RATES_PER_PARAMETER_STEP,
                                .adapts = MT_ADAPT_ALL,
                                .order = MT_ORDER_ANNEALED,
                                .metagrad = MT_METAGRAD_BACKPROP,
                                .multi_step_loss = 1,
                                .cosine_outer_lr = 1},
    [MT_ALGO_REPTILE] = {.rates = MT_RATES_FIXED,
                         .adapts = MT_ADAPT_ALL,
                         .order = MT_ORDER_FIRST,
                         .metagrad = MT_METAGRAD_REPTILE},
    [MT_ALGO_IMAML] = {.rates = MT_RATES_FIXED,
                       .adapts = MT_ADAPT_ALL,
                       .order = MT_ORDER_FIRST,
                       .metagrad = MT_METAGRAD_IMPLICIT,
                       .proximal = 1},
};
#undef BACKPROP
_Static_assert(sizeof table / sizeof *table == MT_ALGO_COUNT, "one row per algorithm");

const mt_meta_traits *mt_meta_traits_of(mt_algorithm a) {
    return (int)a >= 0 && (int)a < MT_ALGO_COUNT ? &table[a] : &table[MT_ALGO_MAML];
}

/* The learned rates are laid out here (their count and their tensors) and used in
 * src/meta/inner_loop.c (expand_rates, add_rate_grad): a new rate layout touches those two
 * files. */
size_t mt_meta_rate_count(const mt_meta_traits *t, const mt_nn_net *net, int inner_steps) {
    switch (t->rates) {
    case MT_RATES_PER_PARAMETER:
        return net->n_params;
    case MT_RATES_PER_LAYER_STEP:
        return (size_t)net->n_param_layers * inner_steps;
    case MT_RATES_PER_PARAMETER_STEP:
        return net->n_params * inner_steps;
    case MT_RATES_FIXED:
        break;
    }
    return 0;
}

double mt_meta_outer_lr(const mt_meta_hparams *hp, int iteration) {
    int cosine = hp->outer_lr_schedule == MT_SCHEDULE_COSINE ||
                 (hp->outer_lr_schedule == MT_SCHEDULE_ALGORITHM && mt_meta_traits_of(hp->algorithm)->cosine_outer_lr);
    if (!cosine) return hp->outer_lr;
    return mt_meta_cosine_lr(hp->outer_lr, hp->min_outer_lr, iteration, hp->iterations);
}

int mt_meta_tensors(const mt_meta_layout *layout, mt_meta_tensor *out, int max) {
    const mt_nn_net *net = layout->net;
    int n = 0;
    for (int t = 0; t < net->n_tensors; t++, n++) {
        if (n >= max) continue;
        const mt_nn_tensor *T = &net->tensors[t];
        snprintf(out[n].name, sizeof out[n].name, "%s", T->name);
        out[n].offset = T->offset;
        out[n].count = T->count;
        out[n].rank = T->rank;
        memcpy(out[n].dims, T->dims, sizeof T->dims);
    }
    if (layout->traits->rates == MT_RATES_PER_PARAMETER) {
        for (int t = 0; t < net->n_tensors; t++, n++) {
            if (n >= max) continue;
            const mt_nn_tensor *T = &net->tensors[t];
            snprintf(out[n].name, sizeof out[n].name, "inner_lr/%s", T->name);
            out[n].offset = layout->n_theta + T->offset;
            out[n].count = T->count;
            out[n].rank = T->rank;
            memcpy(out[n].dims, T->dims, sizeof T->dims);
        }
    } else if (layout->traits->rates == MT_RATES_PER_PARAMETER_STEP) {
        /* [steps, count]: a conv weight already has rank 4, so a step axis flattens the rest */
        size_t K = (size_t)layout->inner_steps;
        for (int t = 0; t < net->n_tensors; t++, n++) {
            if (n >= max) continue;
            const mt_nn_tensor *T = &net->tensors[t];
            snprintf(out[n].name, sizeof out[n].name, "inner_lr/%s", T->name);
            out[n].offset = layout->n_theta + K * T->offset;
            out[n].count = K * T->count;
            out[n].rank = 2;
            memset(out[n].dims, 0, sizeof out[n].dims);
            out[n].dims[0] = (int)K;
            out[n].dims[1] = (int)T->count;
        }
    } else if (layout->traits->rates == MT_RATES_PER_LAYER_STEP) {
        int p = 0;
        for (int l = 0; l < net->n_layers; l++) {
            if (!net->layers[l].param_count) continue;
            if (n < max) {
                snprintf(out[n].name, sizeof out[n].name, "inner_lr/%s", net->layers[l].name);
                out[n].offset = layout->n_theta + (size_t)p * layout->inner_steps;
                out[n].count = (size_t)layout->inner_steps;
                out[n].rank = 1;
                memset(out[n].dims, 0, sizeof out[n].dims);
                out[n].dims[0] = layout->inner_steps;
            }
            n++, p++;
        }
    }
    return n;
}
