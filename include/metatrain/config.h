/* Run configuration: INI files read with libinih, overridden by --set section.key=value.
 *
 * One table (src/config/config.c) lists every key with its type, default, valid range and whether
 * it may change when a run is resumed; parsing, validation, printing the effective config and
 * the README's key reference all come from it. Parsing is local; every rank parses the same
 * file and so reaches the same verdict without communicating. */
#ifndef METATRAIN_CONFIG_H
#define METATRAIN_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "metatrain/ckpt.h"
#include "metatrain/error.h"

#define MT_CONFIG_STR 512

/* The algorithms, one a line, each as (enum suffix, name in configs); what each one does is its
 * row of traits in src/meta/algorithms.c (mt_meta_traits). */
// clang-format off
#define MT_ALGORITHMS(X) \
    X(MAML, "maml")       \
    X(FOMAML, "fomaml")   \
    X(METASGD, "metasgd") \
    X(ANIL, "anil")       \
    X(MAMLPP, "mamlpp")   \
    X(REPTILE, "reptile") \
    X(IMAML, "imaml")     \
    X(MAMLPP_METASGD, "mamlpp-metasgd")
// clang-format on
#define MT_ALGO_ENUM_(suffix, name) MT_ALGO_##suffix,
typedef enum { MT_ALGORITHMS(MT_ALGO_ENUM_) MT_ALGO_COUNT } mt_algorithm;
#undef MT_ALGO_ENUM_

typedef enum { MT_TASK_SINUSOID, MT_TASK_LINREG, MT_TASK_EPISODES, MT_TASK_GROUPED } mt_task_kind;
typedef enum { MT_OPT_ADAM, MT_OPT_SGD } mt_optimizer_kind;
typedef enum { MT_SPLIT_TRAIN, MT_SPLIT_VAL, MT_SPLIT_TEST, MT_SPLIT_ALL } mt_split;
typedef enum { MT_BALANCE_DYNAMIC, MT_BALANCE_STATIC } mt_balance;
/* The outer rate's schedule; 0 (algorithm) keeps each algorithm's own: cosine for the MAML++
 * family, constant for the others. */
typedef enum { MT_SCHEDULE_ALGORITHM, MT_SCHEDULE_CONSTANT, MT_SCHEDULE_COSINE } mt_schedule;

typedef struct {
    /* [train] */
    uint64_t seed;        /* train.seed: keys every random number */
    int iterations;       /* train.iterations: outer steps in total */
    int meta_batch;       /* train.meta_batch: tasks per outer step */
    int checkpoint_every; /* train.checkpoint_every: 0 writes only at the end */
    int keep_checkpoints; /* train.keep_checkpoints: numbered copies kept besides checkpoint.h5 */
    int log_every;        /* train.log_every: progress line period in iterations (files) */
    int stop_at;          /* train.stop_at: stop (with a checkpoint) after this iteration, 0 = off */
    int resume;           /* train.resume: 1 = continue from output.dir/checkpoint.h5 if present */
    int threads;          /* train.threads: OpenBLAS threads per rank */
    mt_balance balance;   /* train.balance: how a node's ranks share the tasks */
    /* [output] */
    char output_dir[MT_CONFIG_STR]; /* output.dir */
    /* [meta] */
    mt_algorithm algorithm;        /* meta.algorithm */
    int inner_steps;               /* meta.inner_steps */
    double inner_lr;               /* meta.inner_lr: initial value where the rates are learned */
    double outer_lr;               /* meta.outer_lr */
    mt_schedule outer_lr_schedule; /* meta.outer_lr_schedule: algorithm, constant or cosine */
    mt_optimizer_kind optimizer;   /* meta.optimizer: adam or sgd */
    double momentum;               /* meta.momentum: SGD */
    double beta1, beta2, adam_eps; /* meta.beta1, meta.beta2, meta.adam_eps */
    double clip_norm;              /* meta.clip_norm: global-norm clipping, 0 = off */
    int first_order_iterations;    /* meta.first_order_iterations: MAML++ derivative-order annealing */
    int msl_iterations;            /* meta.msl_iterations: MAML++ multi-step-loss annealing length */
    double min_outer_lr;           /* meta.min_outer_lr: floor of the cosine schedule */
    double rate_lr_scale;          /* meta.rate_lr_scale: learned inner rates' outer rate / meta.outer_lr */
    int nonnegative_rates;         /* meta.nonnegative_rates: project learned inner rates onto >= 0 */
    double imaml_lambda;           /* meta.lambda: iMAML proximal strength */
    int cg_steps;                  /* meta.cg_steps: iMAML conjugate-gradient iterations at most */
    double cg_tol;                 /* meta.cg_tol: iMAML residual tolerance, relative to ‖b‖ */
    /* [task] */
    mt_task_kind task_kind;        /* task.kind */
    int shots;                     /* task.shots: support examples per task (per class when classifying) */
    int queries;                   /* task.queries: query examples per task (per class when classifying) */
    int ways;                      /* task.ways: classes per episode */
    int augment_shift;             /* task.augment_shift: training images move by up to this many pixels */
    double augment_rotate;         /* task.augment_rotate: training images turn by up to this many degrees */
    char task_path[MT_CONFIG_STR]; /* task.path: HDF5 dataset for episodes and grouped */
    /* [model] */
    char model_spec[MT_CONFIG_STR]; /* model.spec: see mt_nn_parse */
    double head_init_scale;         /* model.head_init_scale: the head's He-normal std times this */
    char model_spec_origin[640];    /* "file.ini:12:" or "--set" where model.spec was set, or "" */
    /* [eval] */
    int eval_tasks;                    /* eval.tasks */
    uint64_t eval_seed;                /* eval.seed: keys evaluation and validation tasks */
    int eval_steps;                    /* eval.steps: inner steps at evaluation; 0 = meta.inner_steps */
    int eval_queries;                  /* eval.queries: 0 = task.queries */
    mt_split eval_split;               /* eval.split */
    int eval_every;                    /* eval.every: validation period during training, 0 = off */
    int eval_val_tasks;                /* eval.val_tasks: tasks per validation during training */
    char eval_episodes[MT_CONFIG_STR]; /* eval.episodes: fixed-episode file, "" = sampled episodes */
    int eval_keep_best;                /* eval.keep_best: keep best.h5 by validation metric */
} mt_config;

/* Defaults for every key. */
void mt_config_defaults(mt_config *cfg);

/* Reads an INI file over cfg. Unknown sections or keys, bad types and out-of-range values fail
 * with "FILE:LINE: section.key: reason". */
mt_status mt_config_load(mt_config *cfg, const char *path);

/* Same, from INI text in memory (the config stored in a checkpoint); `origin` stands for the
 * file name in messages. */
mt_status mt_config_load_string(mt_config *cfg, const char *text, const char *origin);

/* The config a checkpoint or adapted file holds (its root attribute "config"), over the defaults;
 * `path` names the file in messages. */
mt_status mt_config_load_checkpoint(mt_config *cfg, const mt_ckpt *ck, const char *path);

/* Applies one "section.key=value" override; `origin` names it in messages ("--set"). */
mt_status mt_config_set(mt_config *cfg, const char *assignment, const char *origin);

/* Checks the relations between keys (for example min_outer_lr against outer_lr); call once
 * after all files and overrides. Model and dataset fit are checked where those are built. */
mt_status mt_config_validate(const mt_config *cfg);
/* Inner steps at evaluation: eval.steps, or meta.inner_steps when it is 0. */
int mt_config_eval_steps(const mt_config *cfg);

/* The effective configuration as INI text, every key, in table order. Returns the length, or
 * the length it would need when it does not fit (like snprintf). */
size_t mt_config_format(const mt_config *cfg, char *out, size_t size);

/* Compares a resumed run's config with the checkpoint's: only keys that set the run's length
 * and output may differ. Fails naming the first key that changes the model or the math. */
mt_status mt_config_check_resume(const mt_config *saved, const mt_config *now);

/* Every key as a Markdown table (key, type, default, valid values, resumable, description), for
 * the README. Returns the length like mt_config_format. */
size_t mt_config_reference(char *out, size_t size);

/* The small structs the library's modules take, filled from a config: the meta module's settings
 * (meta.* and train.iterations; metatrain/meta.h) and the tasks' shape (task.*; queries > 0
 * replaces task.queries, as eval.queries does; shift and rotate are left 0, since
 * task.augment_shift and task.augment_rotate change training images only; metatrain/task.h). */
struct mt_meta_hparams;
struct mt_task_shape;
void mt_config_meta_hparams(const mt_config *cfg, struct mt_meta_hparams *hp);
void mt_config_task_shape(const mt_config *cfg, int queries, struct mt_task_shape *shape);

/* Names for the enums, as written in configs. */
const char *mt_config_algorithm_name(mt_algorithm a);
const char *mt_config_optimizer_name(mt_optimizer_kind o);
const char *mt_config_task_kind_name(mt_task_kind k);
const char *mt_config_split_name(mt_split s);

#endif
