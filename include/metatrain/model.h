/* Using what was meta-learned: open a trained model, adapt it to a new task's support set, predict.
 *
 *     mt_model *m;
 *     if (mt_model_open(&m, "runs/sinusoid/checkpoint.h5", NULL) != MT_OK) die(mt_error_message());
 *     mt_model_batch support = {.x = xs, .targets = ys, .rows = 10};
 *     mt_model_adapt(m, &support);                 // the inner loop meta-training defined
 *     mt_model_predict(m, queries, 100, out, NULL); // out: 100 × outputs
 *     mt_model_close(m);
 *
 * A model is a checkpoint written by `metatrain train` or an adapted file written by
 * mt_model_save (`metatrain adapt`). Adapting runs the checkpoint's own inner loop, the code path
 * `metatrain eval` measures: MAML's and ANIL's fixed rate (ANIL moves only the head), Meta-SGD's
 * per-parameter and MAML++'s per-layer-and-step learned rates, iMAML's proximal steps, Reptile's
 * SGD steps; as many steps as the checkpoint's eval.steps (meta.inner_steps when 0), unless
 * mt_model_options.steps says otherwise. Adapting always starts from the meta-learned parameters
 * (from the file's parameters, for an adapted file), so one handle serves task after task.
 *
 * Networks with batch norm normalize with the statistics of the batch they are given, as in
 * meta-training (no running averages, as MAML): a prediction depends on the other rows of its
 * call. Give such a model the rows of one task together, as `eval` gives it a query set.
 *
 * Needs no MPI: works in a program that never calls MPI_Init. Not collective. Handles are
 * independent: one handle per thread is safe (errors are recorded per thread); one handle must
 * not be used by two threads at once. All memory is planned by mt_model_open: adapt and predict
 * never allocate. Every function that can fail returns an mt_status and leaves a one-line
 * reason in mt_error_message() (metatrain/error.h), which each call clears on entry. */
#ifndef METATRAIN_MODEL_H
#define METATRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "metatrain/error.h"

typedef struct mt_model mt_model;

typedef struct {
    int steps;     /* inner steps of mt_model_adapt; 0: the model's own (eval.steps) */
    int max_batch; /* most rows one adapt or predict call takes; 0: MT_MODEL_DEFAULT_BATCH */
} mt_model_options;

#define MT_MODEL_DEFAULT_BATCH 1024
/* The most rows a call may take: the workspace grows with it (a 4-conv network on 28x28 images
 * needs about 0.6 MB per row). */
#define MT_MODEL_MAX_BATCH (1 << 20)

/* Rows of examples. x: rows × input_size floats, row-major (an image as C×H×W, already scaled
 * as training scaled it: p · pixel_scale + pixel_offset; a bag of token ids as the ids, each an
 * integer in [0, vocabulary) or −1 for padding). For adapting, classification needs
 * labels in [0, outputs) and regression targets (rows × outputs). */
typedef struct {
    const float *x;
    const int32_t *labels;
    const float *targets;
    int rows;
} mt_model_batch;

/* What a model is. Strings point into the handle and live as long as it. */
typedef struct {
    size_t input_size;           /* floats per row of x */
    int channels, height, width; /* the input's shape: (D, 1, 1) for features, (T, 1, 1) for tokens */
    int vocabulary;              /* a model of token bags: its table's rows V; else 0 */
    size_t outputs;              /* classes (classification) or targets per row (regression) */
    int classification;          /* 1: softmax cross-entropy, predictions are probabilities */
    size_t parameters;           /* network parameters */
    int steps;                   /* inner steps mt_model_adapt takes */
    int max_batch;
    int adapted;       /* the parameters predict uses are adapted (by mt_model_adapt or
                                    read from an adapted file), not the meta-learned ones */
    int adapted_steps; /* the inner steps of that adaptation (0 when not adapted) */
    int64_t iteration; /* the training iteration the checkpoint holds (source's, for an
                                    adapted file), or -1 when unknown */
    const char *algorithm, *model_spec, *path;
} mt_model_info;

/* Opens a checkpoint or an adapted file, verifying its whole-file checksum before HDF5 reads it
 * and every HDF5 checksum inside, and plans all memory. opt may be NULL (defaults). */
mt_status mt_model_open(mt_model **model, const char *path, const mt_model_options *opt);

void mt_model_describe(const mt_model *model, mt_model_info *info);

/* Adapts to a support set: the model's inner loop from the meta-learned parameters. rows from 1
 * to max_batch; x must be finite (token ids valid), labels in [0, outputs). On failure the model is left as it
 * was. Does not allocate. */
mt_status mt_model_adapt(mt_model *model, const mt_model_batch *support);

/* Forgets mt_model_adapt's adaptation: predict uses the file's parameters again (meta-learned,
 * or an adapted file's). */
void mt_model_reset(mt_model *model);

/* Predicts rows (1 to max_batch) of x: out (rows × outputs) receives the class probabilities
 * (classification) or the predicted targets; classes (rows, may be NULL) the predicted class,
 * the first largest output. Uses the adapted parameters when there are some. Does not allocate. */
mt_status mt_model_predict(mt_model *model, const float *x, int rows, float *out, int32_t *classes);

/* Where an adaptation came from, recorded in an adapted file. Any field may be NULL. */
typedef struct {
    const char *support_name;   /* the support set's file name */
    const char *support_sha256; /* its SHA-256, 64 hex digits */
} mt_model_provenance;

/* Writes the parameters predict uses as an adapted file: the checkpoint's /params layout
 * (adapted network tensors; learned rates as they were), the same whole-file and HDF5
 * checksums, written atomically (a failure leaves any previous file intact), and root
 * attributes: kind = "adapted", source (the file opened), source_iteration, steps (of the
 * adaptation behind the parameters; 0 when there was none), the
 * provenance, config, algorithm, model_spec, metatrain_version, created. prov may be NULL. */
mt_status mt_model_save(const mt_model *model, const char *path, const mt_model_provenance *prov);

/* NULL does nothing. */
void mt_model_close(mt_model *model);

#endif
