/* Meta-learning: the inner loop that adapts a model to one task, the exact meta-gradient through
 * it, and the outer optimizer. The math is in the header comment of src/meta/inner_loop.c.
 *
 * The meta-parameters are one flat vector: the network's parameters θ (mt_nn_net layout),
 * followed by the learned inner learning rates where the algorithm has them:
 *   metasgd: one rate per parameter (n_params more entries, same layout as θ);
 *   mamlpp:  one rate per parameter-holding layer and inner step (n_param_layers × steps);
 *   mamlpp-metasgd: one rate per parameter and inner step (steps × n_params, tensor by tensor:
 *            tensor t's rates are a [steps, count] block at n_theta + steps · offset_t).
 * Gradients and optimizer state use the same layout. Everything here is local to a rank. */
#ifndef METATRAIN_META_H
#define METATRAIN_META_H

#include <stddef.h>
#include <stdint.h>

#include "metatrain/ckpt.h"
#include "metatrain/config.h"
#include "metatrain/error.h"
#include "metatrain/nn.h"
#include "metatrain/task.h"

/* An algorithm as traits (src/meta/algorithms.c holds the table). */
typedef enum {
    MT_RATES_FIXED,             /* meta.inner_lr for every parameter */
    MT_RATES_PER_PARAMETER,     /* learned, one per parameter (Meta-SGD) */
    MT_RATES_PER_LAYER_STEP,    /* learned, one per parameter-holding layer and inner step (MAML++) */
    MT_RATES_PER_PARAMETER_STEP /* learned, one per parameter and inner step */
} mt_meta_rates;
typedef enum {
    MT_ADAPT_ALL, /* every parameter moves in the inner loop */
    MT_ADAPT_HEAD /* only the last layer with parameters (ANIL); the rest have rate 0 */
} mt_meta_adapts;
typedef enum {
    MT_ORDER_FIRST,   /* the Hessian terms are dropped */
    MT_ORDER_SECOND,  /* exact, through every inner step */
    MT_ORDER_ANNEALED /* first order for meta.first_order_iterations, then second (MAML++) */
} mt_meta_order;
typedef enum {
    MT_METAGRAD_BACKPROP, /* back through the inner loop (MAML family) */
    MT_METAGRAD_REPTILE,  /* θ − θ_K */
    MT_METAGRAD_IMPLICIT  /* (I + H/λ)⁻¹ ∇L_q by conjugate gradient (iMAML) */
} mt_meta_metagrad;
typedef struct { /* the name is in MT_ALGORITHMS (config.h) */
    mt_meta_rates rates;
    mt_meta_adapts adapts;
    mt_meta_order order;
    mt_meta_metagrad metagrad;
    int proximal;        /* inner steps add λ(θ_k − θ) (meta.lambda) */
    int multi_step_loss; /* Σ_k w_k L_q(θ_k), annealed over meta.msl_iterations */
    int cosine_outer_lr; /* outer rate cosine-annealed to meta.min_outer_lr unless the run says */
} mt_meta_traits;

/* What the meta module needs of a run's settings: the algorithm, its inner loop, the outer
 * optimizer and the outer rate's schedule. A program fills it; mt_config_meta_hparams does from a
 * configuration (meta.* keys and train.iterations). */
typedef struct mt_meta_hparams {
    mt_algorithm algorithm;
    int inner_steps;
    double inner_lr;
    int first_order_iterations, msl_iterations; /* MAML++'s annealing */
    double imaml_lambda, cg_tol;                /* iMAML */
    int cg_steps;
    mt_optimizer_kind optimizer;
    double outer_lr, min_outer_lr, beta1, beta2, adam_eps, momentum;
    mt_schedule outer_lr_schedule; /* 0 = the algorithm's own (traits' cosine_outer_lr) */
    double rate_lr_scale;          /* learned inner rates step at this multiple of the outer rate; 0 means 1 */
    int nonnegative_rates;         /* nonzero: learned inner rates are projected onto >= 0 after each step */
    int iterations;                /* the length of the outer rate's schedule */
} mt_meta_hparams;

/* The algorithm's row; never NULL. Local. */
const mt_meta_traits *mt_meta_traits_of(mt_algorithm a);
/* Learned inner rates the traits lay out for this network and number of steps. */
size_t mt_meta_rate_count(const mt_meta_traits *t, const mt_nn_net *net, int inner_steps);
/* The outer learning rate at `iteration`: meta.outer_lr, or its cosine schedule (the hparams'
 * outer_lr_schedule, or the algorithm's own when that is MT_SCHEDULE_ALGORITHM). Local. */
double mt_meta_outer_lr(const mt_meta_hparams *hp, int iteration);

/* The most inner steps a task may take (meta.inner_steps): second-order memory is one copy of the
 * parameters per step. */
#define MT_META_MAX_STEPS 256

typedef struct {
    const mt_nn_net *net;
    mt_algorithm algorithm;
    const mt_meta_traits *traits;
    int inner_steps;
    size_t n_theta; /* network parameters */
    size_t n_rates; /* learned inner learning rates */
    size_t n_meta;  /* n_theta + n_rates */
} mt_meta_layout;

void mt_meta_layout_init(mt_meta_layout *layout, const mt_nn_net *net, mt_algorithm algorithm, int inner_steps);

/* A named slice of the meta-parameter vector: the network's tensors ("conv1/weight") and the
 * learned rates ("inner_lr/conv1/weight" for Meta-SGD, "inner_lr/conv1" of K steps for MAML++).
 * Checkpoints and the reducer's groups walk these. */
typedef struct {
    char name[2 * MT_NN_NAME_LEN + 16];
    size_t offset, count;
    int rank, dims[4];
} mt_meta_tensor;

/* Fills up to `max` tensors in vector order; returns how many there are. */
int mt_meta_tensors(const mt_meta_layout *layout, mt_meta_tensor *out, int max);
/* Every layout's tensor count fits: the network's, and as many learned-rate tensors again. */
#define MT_META_MAX_TENSORS (2 * MT_NN_MAX_TENSORS)

/* Adds the tensors of `vector` (n_meta floats, laid out by `layout`) to a checkpoint being
 * assembled, as "<prefix>/<tensor name>" float32 arrays (no copy). Local. */
mt_status mt_meta_ckpt_add(mt_ckpt *ck, const mt_meta_layout *layout, const char *prefix, const float *vector);
/* Copies them back from a read checkpoint, refusing a missing tensor or another dtype or shape
 * with a message naming `path` (the file) and the array. Local. */
mt_status mt_meta_ckpt_restore(const mt_ckpt *ck, const char *path, const mt_meta_layout *layout, const char *prefix,
                               float *vector);

/* Per-iteration settings of the inner loop, from the config and the schedules. */
typedef struct {
    double inner_lr;                        /* fixed rate where rates are not learned */
    int second_order;                       /* 0: drop the Hessian terms (FOMAML; MAML++ early iterations) */
    int multi_step_loss;                    /* MAML++: Σ_k w_k L_q(θ_k) */
    double step_weights[MT_META_MAX_STEPS]; /* w_1..w_K, index k-1, when multi_step_loss */
    double imaml_lambda;
    int cg_steps;
    double cg_tol;
} mt_meta_step_config;

/* The settings for outer iteration `iteration` (MAML++ schedules included). */
void mt_meta_step_config_at(mt_meta_step_config *sc, const mt_meta_hparams *hp, int iteration);

/* MAML++ multi-step-loss weights at `iteration` (Antoniou et al. 2019): uniform at first, moving
 * linearly to the last step over msl_iterations; the others keep a floor of 0.03/K. */
void mt_meta_msl_weights(double *weights, int steps, int iteration, int msl_iterations);
/* The cosine-annealed outer learning rate (meta.outer_lr_schedule = cosine; MAML++'s own). */
double mt_meta_cosine_lr(double lr, double min_lr, int iteration, int iterations);

/* Outer optimizer over the flat meta-parameter vector. */
typedef struct {
    mt_optimizer_kind kind;
    size_t n, n_rates; /* the last n_rates elements are learned inner rates */
    double lr, beta1, beta2, eps, momentum, rate_lr_scale;
    int nonnegative_rates;
    int64_t step;
    float *m, *v; /* Adam's moments, or SGD's velocity in m (v unused) */
} mt_meta_optim;

/* State for n meta-parameters whose last n_rates are learned inner rates (layout.n_rates). Local. */
mt_status mt_meta_optim_init(mt_meta_optim *opt, const mt_meta_hparams *hp, size_t n, size_t n_rates);
void mt_meta_optim_free(mt_meta_optim *opt);
/* One step: params -= update(grad) at learning rate lr, and lr·rate_lr_scale for the learned
 * rates, which are then clamped at 0 if nonnegative_rates. Deterministic, elementwise. Local. */
void mt_meta_optim_step(mt_meta_optim *opt, float *params, const float *grad, double lr);
/* Scales grad to global norm clip when it exceeds it (clip <= 0: no-op). Returns the norm. */
double mt_meta_clip_grad(float *grad, size_t n, double clip);

#define MT_TEMPLATE "metatrain/meta_tmpl.h"
#include "metatrain/both_precisions.h"

/* A task's rows of an embedding table (float, the training and evaluation path; the header
 * comment of src/meta/task_rows.c explains it): the layout a task runs in, which for a network
 * that starts with `embed V D` holds only the table rows one task can name, and the cut of the
 * meta-parameters to the rows a task names. Local. */
typedef struct {
    const mt_meta_layout *full; /* the meta-parameters' layout */
    mt_nn_net net;              /* the network cut to `capacity` table rows */
    mt_meta_layout layout;      /* the layout a task runs in (full's copy without a table) */
    int capacity;               /* table rows one task can name; 0 without a table */
    int width;                  /* D */
    int n_rows;                 /* the current task's */
    int32_t *rows;              /* capacity: the table row of cut row i, ascending */
    int32_t *slot;              /* V: the cut row of a table row, −1 when the task names none */
    float *meta;                /* the current task's meta-parameters, in `layout` */
} mt_meta_rows;

/* For tasks of `fam` on a network of layout `full` (both must outlive it). */
mt_status mt_meta_rows_create(mt_meta_rows **r, const mt_meta_layout *full, const mt_task_family *fam);
void mt_meta_rows_free(mt_meta_rows *r);
/* Names the task's rows, renumbers its bags' ids to cut rows in place, and returns meta (full
 * layout) cut to them, in r->layout; meta itself without a table. Allocates nothing. */
const float *mt_meta_rows_cut(mt_meta_rows *r, const float *meta, mt_task *task);
/* Table-row indices a task's vector carries after its meta-gradient and objective: capacity. */
size_t mt_meta_rows_ids(const mt_meta_rows *r);
/* Writes them: the current task's rows as floats (exact), then −1. */
void mt_meta_rows_write_ids(const mt_meta_rows *r, float *ids);
/* The reducer's groups (mt_dist_reducer_init_sparse): one per tensor and one for the objective,
 * where each starts in a task's vector (row_begin) and in the sum (out_begin), and for a table
 * its row width D (else 0). The arrays hold MT_META_MAX_TENSORS + 2 entries; returns the number
 * of groups. */
int mt_meta_rows_groups(const mt_meta_rows *r, size_t *row_begin, size_t *out_begin, int *width);

/* The meta-batch driver (float, the training path): for each task of `iteration` that
 * next_task(arg) hands out (its index, or -1 when done: mt_dist_claim), the task's vector
 * [meta-gradient (n_meta of rows->layout) | meta-objective | its table rows (mt_meta_rows_ids)]
 * into the next row of vectors (mt_meta_vector_len wide). ctx runs in rows->layout. Returns the
 * number of rows written. The sum over tasks, across ranks, is mt_dist_reduce's job. */
#define MT_META_VECTOR_EXTRA 1
size_t mt_meta_vector_len(const mt_meta_rows *rows);
int mt_meta_batch_grads(mt_meta_ctx *ctx, mt_meta_rows *rows, mt_task *task, const mt_task_family *fam,
                        const mt_meta_step_config *sc, const float *meta, uint64_t seed, int iteration,
                        int (*next_task)(void *arg), void *arg, float *vectors);

#endif
