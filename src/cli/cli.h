/* Private interface of the command-line tool: the verbs and what they share. */
#ifndef METATRAIN_CLI_H
#define METATRAIN_CLI_H

#include <hdf5.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "metatrain/ckpt.h"
#include "metatrain/config.h"
#include "metatrain/dist.h"
#include "metatrain/meta.h"
#include "metatrain/model.h"
#include "metatrain/nn.h"
#include "metatrain/task.h"

#define MT_CLI_MAX_SETS 128
#define MT_CLI_CONFIG_TEXT 16384

/* Exit codes. MT_EXIT_REQUEUE (signals.h) is the third. */
enum { MT_EXIT_OK = 0, MT_EXIT_ERROR = 1, MT_EXIT_USAGE = 2 };

/* What every verb builds from a config: the network, the meta-parameter layout. */
typedef struct {
    mt_config cfg;
    mt_nn_net net;
    mt_meta_layout layout;
    char config_text[MT_CLI_CONFIG_TEXT]; /* the effective config, as stored in checkpoints */
} mt_cli_model;

/* --set assignments in command-line order. */
typedef struct {
    const char *items[MT_CLI_MAX_SETS];
    int n;
} mt_cli_sets;

/* The logged series, kept in memory for the checkpoint's /metrics and metrics.csv. */
typedef struct {
    size_t n, capacity;
    int64_t *iteration;
    double *meta_loss, *val_metric, *elapsed_s; /* val_metric is NaN where none was measured */
} mt_cli_history;

/* The "distribution" of the verbs that run without MPI: one process, rank 0 of 1. Such a verb
 * must not pass d to a collective. */
#define MT_CLI_NO_MPI ((mt_dist){.comm = MPI_COMM_NULL, .rank = 0, .size = 1})

/* Verbs: each returns the process exit code. Collective over d (info, adapt and predict get
 * MT_CLI_NO_MPI and make no MPI call). */
int mt_cli_train(const mt_dist *d, int argc, char **argv);
int mt_cli_eval(const mt_dist *d, int argc, char **argv);
int mt_cli_info(const mt_dist *d, int argc, char **argv);
int mt_cli_bench(const mt_dist *d, int argc, char **argv);
int mt_cli_config_verb(const mt_dist *d, int argc, char **argv);
int mt_cli_adapt(const mt_dist *d, int argc, char **argv);
int mt_cli_predict(const mt_dist *d, int argc, char **argv);

/* Prints the recorded error once (rank 0) and returns the exit code for `st`. Local. */
int mt_cli_report(const mt_dist *d, mt_status st);

/* Reads CONFIG over cfg, as mt_config_load does, but collectively: rank 0 reads the file and
 * broadcasts its text, which every rank parses, so that a file only rank 0 can see, or one that
 * changes as the ranks start, cannot split them. Every rank returns the same status; an error
 * every rank sees is rank 0's to report (mt_cli_report), one some ranks see aborts the job. */
mt_status mt_cli_config_load(const mt_dist *d, mt_config *cfg, const char *path);

/* Applies the sets, validates, parses the model and lays out the meta-parameters, and renders
 * config_text. Deterministic but for allocation: agree on it (mt_dist_agree). */
mt_status mt_cli_model_build(mt_cli_model *m, const mt_cli_sets *sets);

/* 1 when arg asks for usage: --help or -h. */
int mt_cli_is_help(const char *arg);

/* Reads "--set KEY=VALUE" or "--set=KEY=VALUE" at argv[*i]; returns 1 when it was one. */
int mt_cli_take_set(int argc, char **argv, int *i, mt_cli_sets *sets, mt_status *st);

/* Checkpoint <-> training state (src/cli/train_state.c). */
mt_status mt_cli_history_init(mt_cli_history *h, size_t capacity);
void mt_cli_history_free(mt_cli_history *h);
void mt_cli_history_add(mt_cli_history *h, int64_t iteration, double meta_loss, double val_metric, double elapsed_s);
/* reducer (may be NULL): its predicted exponents, which an exact resume needs, when it has them. */
mt_status mt_cli_state_save(const char *path, const mt_cli_model *m, const float *meta, const mt_meta_optim *opt,
                            const mt_dist_reducer *reducer, int64_t next_iteration, const mt_cli_history *h);
/* Restores the meta-parameters, optimizer (may be NULL), the reducer's predictions (may be NULL;
 * a checkpoint without them makes the first sum exact) and history (may be NULL) from a read
 * checkpoint whose layout must match m's. Returns the next iteration in *next_iteration. */
mt_status mt_cli_state_restore(const mt_ckpt *ck, const char *path, const mt_cli_model *m, float *meta,
                               mt_meta_optim *opt, mt_dist_reducer *reducer, mt_cli_history *h,
                               int64_t *next_iteration);
/* Reads a checkpoint and the config stored in it (cfg), once a child process has read it whole
 * without crashing (mt_isolate_run). Local. */
mt_status mt_cli_state_read(const char *path, mt_ckpt *ck, mt_config *cfg);
/* Collective. MT_OK when every rank read the same checkpoint `ck` (its arrays and attributes);
 * else an error on every rank, for rank 0 to report: a file replaced between the ranks' reads
 * would give them different models. */
mt_status mt_cli_ckpt_agree_same(const mt_dist *d, const mt_ckpt *ck, const char *path);
/* task.path, or with METATRAIN_INJECT=dataset:R on rank R (src/dist/comm.c) a name that does
 * not exist, written into buf. Local. */
const char *mt_cli_dataset_path(const mt_dist *d, const char *path, char *buf, size_t size);
/* Writes metrics.csv from the history, atomically. */
mt_status mt_cli_history_write_csv(const mt_cli_history *h, const char *path);

/* Evaluation of n_tasks tasks keyed (seed, key_iteration, i), sharded over ranks. */
#define MT_CLI_MAX_EVAL_STEPS MT_META_MAX_STEPS /* eval.steps' bound, like meta.inner_steps' */
typedef struct {
    int tasks, steps, classification;
    double mean[MT_CLI_MAX_EVAL_STEPS + 1], ci95[MT_CLI_MAX_EVAL_STEPS + 1]; /* per step 0..steps */
} mt_cli_eval_result;
/* Everything one evaluation needs, planned once (training validates many times with it). */
typedef struct {
    const mt_cli_model *m;
    const mt_task_family *fam;
    int n_tasks, steps;
    mt_meta_ctx *ctx;
    mt_meta_rows *rows; /* the layout tasks run in */
    mt_task task;
    double *per_task, *loss; /* per_task (n_tasks, steps + 1) */
    int *correct;
} mt_cli_evaluator;
/* Local. m and fam must outlive the evaluator. */
mt_status mt_cli_evaluator_create(mt_cli_evaluator *ev, const mt_cli_model *m, const mt_task_family *fam, int n_tasks,
                                  int steps);
void mt_cli_evaluator_free(mt_cli_evaluator *ev);
/* Accuracy or MSE per inner step at meta-parameters meta. Collective; allocates nothing. */
mt_status mt_cli_evaluate(const mt_dist *d, mt_cli_evaluator *ev, const float *meta, uint32_t key_iteration,
                          mt_cli_eval_result *res);

/* Rows of a support or input file (src/cli/rows.c), read chunk by chunk. */
typedef struct {
    char path[4096];
    hid_t file, x, answers; /* answers: /labels or /targets, or H5I_INVALID_HID */
    int images, tokens, has_labels, has_targets;
    int vocabulary; /* tokens: ids must be below it */
    const char *answer_name;
    int64_t rows;
    size_t width, outputs; /* floats per row of x; the model's outputs */
    double pixel_scale, pixel_offset;
    int chunk;
    uint8_t *pixels; /* one chunk of images */
    int32_t *ids;    /* or of token ids */
} mt_cli_rows;
/* Opens `path` and checks it against the model: the x dataset's dtype and shape, and the answers'
 * when present. chunk: the most rows one read takes. Local. */
mt_status mt_cli_rows_open(mt_cli_rows *r, const char *path, const mt_model_info *mi, int chunk);
/* Rows [first, first + n), n <= chunk: x (n × width), and labels or targets where the file has
 * them and the pointer is not NULL; refuses non-finite values and labels outside the model's
 * classes, naming the file, dataset and row. */
mt_status mt_cli_rows_read(mt_cli_rows *r, int64_t first, int n, float *x, int32_t *labels, float *targets);
void mt_cli_rows_close(mt_cli_rows *r);
/* The number of rows of the file's /images or /features, and whether they are images (may be
 * NULL), for planning before the model is open; 0 and an error when there is none. Local. */
mt_status mt_cli_rows_count(const char *path, int64_t *rows, int *images);

/* Using a trained model (src/cli/adapt.c): opens MODEL after checking it in a child process
 * (mt_isolate_run), with `steps` inner steps (0: the model's) and room for max_batch rows. */
mt_status mt_cli_model_open(mt_model **m, const char *path, int steps, int max_batch);
/* Reads a whole support set, checks that it has labels or targets, adapts, and fills the
 * support's SHA-256 (65 bytes). */
mt_status mt_cli_adapt_on(mt_model *m, const char *support, char sha256[65]);
/* "--set eval.steps=N": the only key these verbs take; returns 1 when argv[*i] was one. */
int mt_cli_take_steps(int argc, char **argv, int *i, int *steps, mt_status *st);

/* A JSON string for any C string: bytes that are not UTF-8 become U+FFFD. */
json_t *mt_cli_json_string(const char *s);
/* Prints a JSON value on one line to stdout and frees it. */
mt_status mt_cli_json_print(json_t *value);

/* Refuses an output path whose directory does not exist, before any work. */
mt_status mt_cli_check_output_dir(const char *path);
/* mkdir -p. */
mt_status mt_cli_make_dirs(const char *path);

#endif
