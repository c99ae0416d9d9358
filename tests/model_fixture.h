/* A trained model without training: the checkpoint `metatrain train` writes (src/cli/train_state.c),
 * built from a config, the network it names and seeded meta-parameters, for the tests of the
 * model API (test_model.c, test_nn_noalloc.c).
 *
 * The fixture keeps what it wrote (config, network, layout, meta-parameters), so that a test can
 * run the reference path, mt_meta_adapt_eval and friends, on exactly the numbers the file holds
 * without going through the code under test. Only /params, /train/iteration and the root
 * attributes are written: the optimizer state and metrics are the trainer's business, and the
 * model API reads none of them. */
#ifndef METATRAIN_TESTS_MODEL_FIXTURE_H
#define METATRAIN_TESTS_MODEL_FIXTURE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fd_check.h"
#include "metatrain/ckpt.h"
#include "metatrain/config.h"
#include "metatrain/meta.h"

#define MFX_MLP "input 1, linear 40, relu, linear 40, relu, linear 1, mse"
#define MFX_CONV "input 1x8x8, conv 4 s2, bn, relu, flatten, linear 3, xent"
#define MFX_MAX_SETS 8

/* What to train, in config assignments: algorithm and spec, and any other keys (NULL-ended). */
typedef struct {
    const char *algorithm, *spec;
    const char *sets[MFX_MAX_SETS]; /* "meta.lambda=2", ...; the first NULL ends the list */
    uint64_t seed;                  /* of the meta-parameters */
    int64_t iteration;              /* /train/iteration */
} mfx_def;

typedef struct {
    mt_config cfg;
    char *config_text; /* mt_config_format's, as the trainer stores it */
    mt_nn_net net;
    mt_meta_layout layout; /* points at net: an mfx_model does not move once built */
    float *meta;           /* n_meta: θ, then the learned rates */
    int64_t iteration;
} mfx_model;

static inline void mfx_free(mfx_model *m) {
    free(m->config_text), free(m->meta);
    m->config_text = NULL, m->meta = NULL;
}

/* Config, network and meta-parameters. The defaults already give 2 inner steps and 3 eval steps
 * (so that eval.steps and meta.inner_steps differ and a test sees which one a model takes);
 * def->sets may override them. */
static inline mt_status mfx_build(mfx_model *m, const mfx_def *def) {
    mt_status st = MT_OK;
    char assignment[MT_CONFIG_STR + 32];
    memset(m, 0, sizeof *m);
    mt_config_defaults(&m->cfg);
    const char *base[] = {"meta.inner_steps=2", "eval.steps=3", "task.kind=sinusoid", "train.iterations=1234"};
    for (size_t i = 0; i < sizeof base / sizeof *base; i++) MT_TRY(mt_config_set(&m->cfg, base[i], "fixture"));
    snprintf(assignment, sizeof assignment, "meta.algorithm=%s", def->algorithm);
    MT_TRY(mt_config_set(&m->cfg, assignment, "fixture"));
    snprintf(assignment, sizeof assignment, "model.spec=%s", def->spec);
    MT_TRY(mt_config_set(&m->cfg, assignment, "fixture"));
    for (int i = 0; i < MFX_MAX_SETS && def->sets[i]; i++) MT_TRY(mt_config_set(&m->cfg, def->sets[i], "fixture"));
    MT_TRY(mt_config_validate(&m->cfg));
    size_t len = mt_config_format(&m->cfg, NULL, 0);
    if (!(m->config_text = malloc(len + 1))) MT_THROW(MT_ERR_NOMEM, "fixture: out of memory");
    mt_config_format(&m->cfg, m->config_text, len + 1);

    MT_TRY(mt_nn_parse(&m->net, m->cfg.model_spec, "fixture model.spec"));
    mt_meta_layout_init(&m->layout, &m->net, m->cfg.algorithm, m->cfg.inner_steps);
    if (!(m->meta = malloc(m->layout.n_meta * sizeof *m->meta))) MT_THROW(MT_ERR_NOMEM, "fixture: out of memory");
    mt_meta_init_params(&m->layout, def->seed, m->cfg.inner_lr, m->meta);
    /* As after some training: biases, BN scales and shifts off their initial 0 and 1, and every
     * learned rate its own (a mix-up of two rates, or of a layer's and a step's, shows). */
    mt_rng rng;
    fd_rng(&rng, def->seed, 4242);
    for (size_t i = 0; i < m->layout.n_theta; i++) m->meta[i] += (float)(0.05 * mt_rng_normal(&rng));
    for (size_t i = 0; i < m->layout.n_rates; i++)
        m->meta[m->layout.n_theta + i] = (float)(m->cfg.inner_lr * mt_rng_range(&rng, 0.5, 1.5));
    m->iteration = def->iteration;
    return MT_OK;
fail:
    mfx_free(m);
    return st;
}

/* Assembles the checkpoint (no copies: ck points into m and `iteration`), for a test that wants
 * to spoil it before writing. ck zeroed by the caller. */
static inline mt_status mfx_fill(mt_ckpt *ck, const mfx_model *m, const int64_t *iteration) {
    mt_status st = MT_OK;
    MT_TRY(mt_meta_ckpt_add(ck, &m->layout, "/params", m->meta));
    MT_TRY(mt_ckpt_add(ck, "/train/iteration", MT_CKPT_I64, 1, (const uint64_t[]){1}, iteration));
    MT_TRY(mt_ckpt_add_attr(ck, "config", m->config_text));
    MT_TRY(mt_ckpt_add_attr(ck, "algorithm", mt_config_algorithm_name(m->cfg.algorithm)));
    MT_TRY(mt_ckpt_add_attr(ck, "model_spec", m->cfg.model_spec));
fail:
    return st;
}

static inline mt_status mfx_write(const mfx_model *m, const char *path) {
    mt_status st = MT_OK;
    mt_ckpt *ck = calloc(1, sizeof *ck); /* large: its array table */
    if (!ck) return MT_RAISE(MT_ERR_NOMEM, "fixture: out of memory");
    MT_TRY(mfx_fill(ck, m, &m->iteration));
    MT_TRY(mt_ckpt_write(path, ck));
fail:
    free(ck);
    return st;
}

/* Builds and writes in one step. */
static inline mt_status mfx_make(mfx_model *m, const mfx_def *def, const char *path) {
    mt_status st = mfx_build(m, def);
    if (st == MT_OK && (st = mfx_write(m, path)) != MT_OK) mfx_free(m);
    return st;
}

#endif
