#define _GNU_SOURCE /* nftw */
/* The model API (metatrain/model.h) on checkpoints written as training writes them
 * (model_fixture.h), for every algorithm's inner loop, an MLP and a conv net with batch norm:
 *  - adapt + predict give what `metatrain eval` measures (mt_meta_adapt_eval's last step), the
 *    bits of mt_meta_adapt + mt_nn_forward, and the inner loop written out by hand here;
 *  - the steps option and the defaults (eval.steps, else meta.inner_steps);
 *  - reset, re-adapting (always from the meta-parameters), save and reopen;
 *  - refusals: bad rows, non-finite input, bad labels, missing answers, bad files, divergence,
 *    each leaving the model as it was;
 *  - threads, one handle each, giving the bits of the same work done serially.
 * Never calls MPI_Init: the API needs no MPI. */
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "metatrain/model.h"
#include "metatrain/rng.h"
#include "metatrain/task.h"
#include "model_fixture.h"

#define ITERATION 1234 /* /train/iteration of every fixture */
#define QUERIES 15     /* regression query rows: not the support's 10, so that a mix-up shows */
#define CONV_WAYS 3
#define CONV_SHOTS 3   /* support rows per class */
#define CONV_QUERIES 4 /* query rows per class */
#define HAND_TOL 1e-5  /* the hand-written inner loop against the library's: rounding only */

static char tmpdir[64];
static int sentinel_target;
#define SENTINEL ((mt_model *)&sentinel_target) /* not NULL: a failed open must clear it */

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    assert_non_null(p);
    return p;
}

static char *tmp_path(char *buf, const char *name) {
    snprintf(buf, 256, "%s/%s", tmpdir, name);
    return buf;
}

static void assert_contains(const char *haystack, const char *needle) {
    if (!strstr(haystack, needle)) fail_msg("'%s' does not contain '%s'", haystack, needle);
}

/* A refusal: status `want`, and a one-line message naming what was wrong. */
static void expect_refusal(mt_status st, mt_status want, const char *part, const char *part2) {
    if (st == MT_OK) fail_msg("accepted, but should be refused for '%s'", part);
    const char *msg = mt_error_message();
    if (st != want) fail_msg("refused with %s, not %s: %s", mt_status_name(st), mt_status_name(want), msg);
    assert_true(msg[0] != '\0');
    assert_null(strchr(msg, '\n'));
    assert_contains(msg, part);
    if (part2) assert_contains(msg, part2);
}

/* ---- the models ---- */

typedef struct {
    const char *name;
    mfx_def def;
} model_case;

/* A conv net comes from training on episodes: a config names its dataset, which using the model
 * never reads (the path does not exist). */
#define CONV_SETS "task.kind=episodes", "task.ways=3", "task.path=/nonexistent/images.h5", "meta.inner_lr=0.1"

static const model_case CASES[] = {
    {"maml", {"maml", MFX_MLP, {NULL}, 1, ITERATION}},
    {"metasgd", {"metasgd", MFX_MLP, {NULL}, 2, ITERATION}},
    /* the MAML++ schedules still running at the last iteration: adapting must not care */
    {"mamlpp", {"mamlpp", MFX_MLP, {"meta.msl_iterations=5000", "meta.first_order_iterations=2000"}, 3, ITERATION}},
    {"anil", {"anil", MFX_MLP, {NULL}, 4, ITERATION}},
    /* a strong proximal pull, so that leaving it out would show */
    {"imaml", {"imaml", MFX_MLP, {"meta.lambda=20"}, 5, ITERATION}},
    {"reptile", {"reptile", MFX_MLP, {"meta.inner_lr=0.02"}, 6, ITERATION}},
    {"conv-maml", {"maml", MFX_CONV, {CONV_SETS}, 7, ITERATION}},
    {"conv-metasgd", {"metasgd", MFX_CONV, {CONV_SETS}, 8, ITERATION}},
    {"conv-mamlpp", {"mamlpp", MFX_CONV, {CONV_SETS}, 9, ITERATION}},
    {"mamlpp-metasgd", {"mamlpp-metasgd", MFX_MLP, {"meta.msl_iterations=5000"}, 10, ITERATION}},
};
#define N_CASES (sizeof CASES / sizeof *CASES)

static const model_case *find_case(const char *name) {
    for (size_t i = 0; i < N_CASES; i++)
        if (strcmp(CASES[i].name, name) == 0) return &CASES[i];
    fail_msg("no case %s", name);
    return NULL;
}

/* Builds the case's fixture and writes it to tmpdir/<name>.h5 (path receives it). */
static mfx_model *make_model(const model_case *c, char *path) {
    mfx_model *fx = xcalloc(1, sizeof *fx);
    char name[64];
    snprintf(name, sizeof name, "%s.h5", c->name);
    if (mfx_make(fx, &c->def, tmp_path(path, name)) != MT_OK) fail_msg("%s: %s", c->name, mt_error_message());
    return fx;
}

static void free_model(mfx_model *fx) {
    mfx_free(fx);
    free(fx);
}

static mt_model *open_model(const char *path, int steps, int max_batch) {
    mt_model *m = NULL;
    mt_model_options opt = {.steps = steps, .max_batch = max_batch};
    if (mt_model_open(&m, path, &opt) != MT_OK) fail_msg("%s: %s", path, mt_error_message());
    return m;
}

/* ---- tasks: sinusoids for the MLP, hand-made 3-way episodes of noise for the conv net ---- */

typedef struct {
    mt_task_family fam;
    mt_task task;
    int classification;
    size_t in, out;
} test_task;

static void task_init(test_task *t, const mfx_model *fx) {
    memset(t, 0, sizeof *t);
    t->classification = fx->net.loss == MT_NN_LOSS_XENT;
    t->in = fx->net.in_size, t->out = fx->net.out_size;
    if (t->classification) { /* a family by hand: only its sizes, for mt_task_alloc */
        t->fam.kind = MT_TASK_EPISODES;
        t->fam.ways = CONV_WAYS, t->fam.shots = CONV_SHOTS, t->fam.queries = CONV_QUERIES;
        t->fam.in_size = t->in, t->fam.out_size = t->out;
        t->fam.classification = 1;
    } else {
        mt_task_shape shape;
        mt_config_task_shape(&fx->cfg, QUERIES, &shape);
        assert_int_equal(mt_task_family_init(&t->fam, &shape, &fx->net, NULL, MT_SPLIT_TEST), MT_OK);
    }
    assert_int_equal(mt_task_alloc(&t->task, &t->fam), MT_OK);
}

static void task_free(test_task *t) {
    mt_task_free(&t->task);
    mt_task_family_free(&t->fam);
}

/* Task number `index`: the same data for the same index, different for another. */
static void task_fill(test_task *t, uint32_t index) {
    if (!t->classification) {
        mt_task_sample(&t->fam, 77, MT_RNG_EVAL_ITERATION, index, &t->task);
        return;
    }
    mt_rng rng;
    mt_rng_init(&rng, 77, index, 0, MT_RNG_STREAM_TEST);
    mt_task *k = &t->task;
    for (size_t i = 0; i < (size_t)k->support.n * t->in; i++) k->x_support[i] = (float)mt_rng_normal(&rng);
    for (size_t i = 0; i < (size_t)k->query.n * t->in; i++) k->x_query[i] = (float)mt_rng_normal(&rng);
    for (int i = 0; i < k->support.n; i++) k->label_support[i] = i % CONV_WAYS;
    for (int i = 0; i < k->query.n; i++) k->label_query[i] = (int32_t)mt_rng_below(&rng, CONV_WAYS);
}

/* The support set as the API takes it: labels for a classifier, targets for regression. */
static mt_model_batch support_of(const test_task *t) {
    const mt_task *k = &t->task;
    return (mt_model_batch){.x = k->x_support,
                            .labels = t->classification ? k->label_support : NULL,
                            .targets = t->classification ? NULL : k->y_support,
                            .rows = k->support.n};
}

/* Predicts the task's query set into out (nq × outputs) and classes (nq, may be NULL). */
static void predict_query(mt_model *m, const test_task *t, float *out, int32_t *classes) {
    mt_status st = mt_model_predict(m, t->task.x_query, t->task.query.n, out, classes);
    if (st != MT_OK) fail_msg("predict: %s", mt_error_message());
}

static void adapt_ok(mt_model *m, const test_task *t) {
    mt_model_batch support = support_of(t);
    mt_status st = mt_model_adapt(m, &support);
    if (st != MT_OK) fail_msg("adapt: %s", mt_error_message());
}

/* The query metric `eval` reports, from predictions: MSE over rows × outputs, or the mean
 * cross-entropy of the probabilities and the number of correct classes. */
static double loss_of_predictions(const test_task *t, const float *out, const int32_t *classes, int *correct) {
    const mt_task *k = &t->task;
    double sum = 0;
    *correct = 0;
    for (int i = 0; i < k->query.n; i++) {
        if (t->classification) {
            sum -= log((double)out[(size_t)i * t->out + (size_t)k->label_query[i]]);
            *correct += classes[i] == k->label_query[i];
        } else {
            for (size_t j = 0; j < t->out; j++) {
                double d = (double)out[(size_t)i * t->out + j] - k->y_query[(size_t)i * t->out + j];
                sum += d * d;
            }
        }
    }
    return sum / (t->classification ? (double)k->query.n : (double)k->query.n * t->out);
}

/* ---- the reference paths ---- */

/* The library's inner loop outside the API: mt_meta_adapt then mt_nn_forward, in a context
 * planned as the model plans its own (max_batch), so that the bits can match. */
typedef struct {
    mt_meta_ctx *ctx;
    mt_meta_step_config sc;
    float *theta;
} reference;

static void reference_init(reference *r, const mfx_model *fx, int max_batch) {
    assert_int_equal(mt_meta_ctx_create(&r->ctx, &fx->layout, max_batch), MT_OK);
    mt_meta_hparams hp;
    mt_config_meta_hparams(&fx->cfg, &hp);
    mt_meta_step_config_at(&r->sc, &hp, fx->cfg.iterations);
    r->theta = xcalloc(fx->layout.n_theta, sizeof *r->theta);
}

static void reference_free(reference *r) {
    mt_meta_ctx_free(r->ctx);
    free(r->theta);
}

/* Adapts `meta` (NULL: the fixture's) for `steps` and returns the query outputs (logits for xent). */
static const float *reference_outputs(reference *r, const float *meta, const test_task *t, int steps) {
    mt_meta_adapt(r->ctx, &r->sc, meta, &t->task.support, steps, r->theta);
    return mt_nn_forward(r->ctx->ws, r->theta, &t->task.query);
}

/* MAML++ with Meta-SGD's rates: tensor t's [K, count] block starts at K · offset_t. */
static size_t per_step_rate(const mt_nn_net *net, int K, int step, size_t j) {
    for (int t = 0; t < net->n_tensors; t++) {
        const mt_nn_tensor *T = &net->tensors[t];
        if (j >= T->offset && j < T->offset + T->count)
            return (size_t)K * T->offset + (size_t)step * T->count + (j - T->offset);
    }
    fail_msg("parameter %zu is in no tensor", j);
    return 0;
}

/* The inner loop written out from the papers, not from the library:
 *   θ ← θ − α ⊙ (∇L_s(θ) [+ λ(θ − θ₀)])
 * with MAML's fixed rate, Meta-SGD's per-parameter rates, MAML++'s per layer and step or per
 * parameter and step (the last step's beyond the trained count), ANIL's on the head alone,
 * iMAML's proximal term. */
static void adapt_by_hand(const mfx_model *fx, mt_nn_ws *ws, const mt_nn_batch *support, int steps, float *theta,
                          float *g) {
    const mt_nn_net *net = &fx->net;
    const float *meta = fx->meta, *rates = fx->meta + fx->layout.n_theta;
    int K = fx->cfg.inner_steps;
    mt_algorithm algo = fx->cfg.algorithm;
    memcpy(theta, meta, fx->layout.n_theta * sizeof *theta);
    for (int k = 0; k < steps; k++) {
        mt_nn_grad(ws, theta, support, g);
        int p = 0, last = -1;
        for (int l = 0; l < net->n_layers; l++)
            if (net->layers[l].param_count) last = l;
        for (int l = 0; l < net->n_layers; l++) {
            const mt_nn_layer *L = &net->layers[l];
            if (!L->param_count) continue;
            for (size_t j = L->param_offset; j < L->param_offset + L->param_count; j++) {
                double rate = fx->cfg.inner_lr, grad = g[j];
                if (algo == MT_ALGO_METASGD) rate = rates[j];
                if (algo == MT_ALGO_MAMLPP) rate = rates[p * K + (k < K ? k : K - 1)];
                if (algo == MT_ALGO_MAMLPP_METASGD) rate = rates[per_step_rate(net, K, k < K ? k : K - 1, j)];
                if (algo == MT_ALGO_ANIL && l != last) rate = 0;
                if (algo == MT_ALGO_IMAML) grad += fx->cfg.imaml_lambda * ((double)theta[j] - meta[j]);
                theta[j] = (float)(theta[j] - rate * grad);
            }
            p++;
        }
    }
}

/* ‖a − b‖ / max(‖a‖, ‖b‖) over n floats */
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    }
    return sqrt(d) / fmax(fmax(sqrt(aa), sqrt(bb)), 1e-30);
}

/* Predictions (probabilities or targets, classes) against reference outputs: the same bits for
 * regression; for a classifier, the same classes and the softmax of the same logits. */
static void assert_same_predictions(const test_task *t, const float *out, const int32_t *classes, const float *ref,
                                    const char *what) {
    int nq = t->task.query.n;
    size_t O = t->out;
    if (!t->classification) {
        if (memcmp(out, ref, (size_t)nq * O * sizeof *out) != 0)
            fail_msg("%s: predictions differ from the reference's bits (relative error %.3g)", what,
                     rel_err(out, ref, (size_t)nq * O));
        return;
    }
    for (int i = 0; i < nq; i++) {
        const float *z = ref + (size_t)i * O;
        int top_class = mt_nn_argmax(z, (int)O);
        if (classes[i] != top_class) fail_msg("%s: row %d: class %d, reference %d", what, i, classes[i], top_class);
        double top = z[top_class], sum = 0;
        for (size_t j = 0; j < O; j++) sum += exp((double)z[j] - top);
        for (size_t j = 0; j < O; j++) {
            double p = exp((double)z[j] - top) / sum;
            if (fabs(out[(size_t)i * O + j] - p) > 1e-6)
                fail_msg("%s: row %d: probability %zu is %.9g, softmax of the reference's logits %.9g", what, i, j,
                         (double)out[(size_t)i * O + j], p);
        }
    }
}

/* Buffers for one task's query predictions. */
typedef struct {
    float *out;
    int32_t *classes;
} preds;

static preds preds_alloc(const test_task *t) {
    size_t n = (size_t)t->task.query.n;
    return (preds){xcalloc(n * t->out, sizeof(float)), xcalloc(n, sizeof(int32_t))};
}

static void preds_free(preds *p) { free(p->out), free(p->classes); }

static int preds_equal(const test_task *t, const preds *a, const preds *b) {
    size_t n = (size_t)t->task.query.n;
    return memcmp(a->out, b->out, n * t->out * sizeof(float)) == 0 &&
           memcmp(a->classes, b->classes, n * sizeof(int32_t)) == 0;
}

/* ---- 1. equivalence with eval, the library's inner loop and the hand-written one ---- */

static void check_equivalence(const model_case *c) {
    char path[256];
    mfx_model *fx = make_model(c, path);
    mt_model *m = open_model(path, 0, 0);
    mt_model_info info;
    mt_model_describe(m, &info);
    int steps = info.steps;
    assert_int_equal(steps, 3); /* eval.steps */

    test_task t;
    task_init(&t, fx);
    int ns = t.task.support.n, nq = t.task.query.n;
    preds before = preds_alloc(&t), after = preds_alloc(&t);
    /* `metatrain eval`'s context is planned for the task's batches, not for the model's */
    mt_meta_ctx *eval_ctx;
    assert_int_equal(mt_meta_ctx_create(&eval_ctx, &fx->layout, ns > nq ? ns : nq), MT_OK);
    reference ref;
    reference_init(&ref, fx, MT_MODEL_DEFAULT_BATCH);
    mt_nn_ws *hand_ws;
    assert_int_equal(mt_nn_ws_create(&hand_ws, &fx->net, ns > nq ? ns : nq), MT_OK);
    float *hand_theta = xcalloc(fx->layout.n_theta, sizeof(float)), *g = xcalloc(fx->layout.n_theta, sizeof(float));
    double loss[MT_META_MAX_STEPS + 1];
    int correct[MT_META_MAX_STEPS + 1];

    for (uint32_t task = 0; task < 3; task++) {
        task_fill(&t, task);
        mt_model_reset(m);
        predict_query(m, &t, before.out, before.classes);
        adapt_ok(m, &t);
        predict_query(m, &t, after.out, after.classes);
        assert_false(preds_equal(&t, &before, &after)); /* adapting did something */

        /* (b) what eval measures, at step 0 and at the last step */
        mt_meta_adapt_eval(eval_ctx, &ref.sc, fx->meta, &t.task, steps, loss, correct);
        int got_correct;
        double got0 = loss_of_predictions(&t, before.out, before.classes, &got_correct);
        if (fabs(got0 - loss[0]) > 1e-5 * fmax(1, loss[0]) || (t.classification && got_correct != correct[0]))
            fail_msg("%s task %u, before adapting: loss %.9g (eval %.9g), correct %d (eval %d)", c->name, task, got0,
                     loss[0], got_correct, correct[0]);
        double got = loss_of_predictions(&t, after.out, after.classes, &got_correct);
        if (fabs(got - loss[steps]) > 1e-5 * fmax(1, loss[steps]) ||
            (t.classification && got_correct != correct[steps]))
            fail_msg("%s task %u, adapted: loss %.9g (eval %.9g), correct %d (eval %d)", c->name, task, got,
                     loss[steps], got_correct, correct[steps]);

        /* (c) the library's inner loop and forward pass, bit for bit */
        assert_same_predictions(&t, after.out, after.classes, reference_outputs(&ref, fx->meta, &t, steps), c->name);

        /* (d) the inner loop by hand: the algorithm's own rates, rounding aside */
        adapt_by_hand(fx, hand_ws, &t.task.support, steps, hand_theta, g);
        double err = rel_err(ref.theta, hand_theta, fx->layout.n_theta);
        if (!(err <= HAND_TOL))
            fail_msg("%s task %u: adapted parameters off the hand-written inner loop's by %.3g", c->name, task, err);
    }
    printf("%-13s %zu parameters, %zu learned rates: eval, mt_meta_adapt and the hand-written loop agree\n", c->name,
           fx->layout.n_theta, fx->layout.n_rates);

    free(hand_theta), free(g);
    mt_nn_ws_free(hand_ws);
    reference_free(&ref);
    mt_meta_ctx_free(eval_ctx);
    preds_free(&before), preds_free(&after);
    task_free(&t);
    mt_model_close(m);
    free_model(fx);
}

static void test_equivalence_mlp(void **state) {
    for (size_t i = 0; i < N_CASES; i++)
        if (strncmp(CASES[i].name, "conv", 4) != 0) check_equivalence(&CASES[i]);
}

static void test_equivalence_conv(void **state) {
    for (size_t i = 0; i < N_CASES; i++)
        if (strncmp(CASES[i].name, "conv", 4) == 0) check_equivalence(&CASES[i]);
}

/* What mt_model_describe says of a checkpoint. */
static void test_describe(void **state) {
    char path[256];
    mfx_model *fx = make_model(find_case("conv-metasgd"), path);
    mt_model *m = open_model(path, 0, 64);
    mt_model_info info;
    mt_model_describe(m, &info);
    assert_int_equal(info.input_size, 64);
    assert_int_equal(info.channels, 1), assert_int_equal(info.height, 8), assert_int_equal(info.width, 8);
    assert_int_equal(info.outputs, 3);
    assert_int_equal(info.classification, 1);
    assert_int_equal(info.parameters, fx->layout.n_theta); /* the network's, not the learned rates */
    assert_int_equal(info.steps, 3);
    assert_int_equal(info.max_batch, 64);
    assert_int_equal(info.adapted, 0);
    assert_int_equal(info.iteration, ITERATION);
    assert_string_equal(info.algorithm, "metasgd");
    assert_string_equal(info.model_spec, MFX_CONV);
    assert_string_equal(info.path, path);
    mt_model_close(m);
    free_model(fx);

    /* features: the shape is (D, 1, 1); the default max_batch */
    fx = make_model(find_case("imaml"), path);
    m = open_model(path, 0, 0);
    mt_model_describe(m, &info);
    assert_int_equal(info.input_size, 1);
    assert_int_equal(info.channels, 1), assert_int_equal(info.height, 1), assert_int_equal(info.width, 1);
    assert_int_equal(info.outputs, 1);
    assert_int_equal(info.classification, 0);
    assert_int_equal(info.parameters, fx->layout.n_theta);
    assert_int_equal(info.max_batch, MT_MODEL_DEFAULT_BATCH);
    assert_string_equal(info.algorithm, "imaml");
    mt_model_close(m);
    mt_model_close(NULL); /* does nothing */
    free_model(fx);
}

/* ---- 2. the steps option ---- */

static void check_steps(const char *name) {
    char path[256];
    mfx_model *fx = make_model(find_case(name), path);
    mt_model *m3 = open_model(path, 0, 0), *m5 = open_model(path, 5, 0), *m1 = open_model(path, 1, 0);
    mt_model_info info;
    mt_model_describe(m5, &info);
    assert_int_equal(info.steps, 5);
    mt_model_describe(m1, &info);
    assert_int_equal(info.steps, 1);

    test_task t;
    task_init(&t, fx);
    task_fill(&t, 11);
    preds p3 = preds_alloc(&t), p5 = preds_alloc(&t), p1 = preds_alloc(&t);
    adapt_ok(m3, &t), adapt_ok(m5, &t), adapt_ok(m1, &t);
    predict_query(m3, &t, p3.out, p3.classes);
    predict_query(m5, &t, p5.out, p5.classes);
    predict_query(m1, &t, p1.out, p1.classes);
    assert_false(preds_equal(&t, &p3, &p5));
    assert_false(preds_equal(&t, &p1, &p3));

    reference ref;
    reference_init(&ref, fx, MT_MODEL_DEFAULT_BATCH);
    assert_same_predictions(&t, p5.out, p5.classes, reference_outputs(&ref, fx->meta, &t, 5), "5 steps");
    assert_same_predictions(&t, p1.out, p1.classes, reference_outputs(&ref, fx->meta, &t, 1), "1 step");
    /* Beyond the 2 trained steps, MAML++ keeps the last step's rates: the hand-written loop says
     * which rates those are without the library's help. */
    mt_nn_ws *ws;
    assert_int_equal(mt_nn_ws_create(&ws, &fx->net, t.task.support.n), MT_OK);
    float *theta = xcalloc(fx->layout.n_theta, sizeof(float)), *g = xcalloc(fx->layout.n_theta, sizeof(float));
    reference_outputs(&ref, fx->meta, &t, 5);
    adapt_by_hand(fx, ws, &t.task.support, 5, theta, g);
    double err = rel_err(ref.theta, theta, fx->layout.n_theta);
    if (!(err <= HAND_TOL)) fail_msg("%s, 5 steps: off the hand-written inner loop by %.3g", name, err);

    /* and eval with 5 steps measures what the 5-step model predicts */
    double loss[6];
    int correct[6], got_correct;
    mt_meta_adapt_eval(ref.ctx, &ref.sc, fx->meta, &t.task, 5, loss, correct);
    double got = loss_of_predictions(&t, p5.out, p5.classes, &got_correct);
    assert_true(fabs(got - loss[5]) <= 1e-5 * fmax(1, loss[5]));
    if (t.classification) assert_int_equal(got_correct, correct[5]);

    free(theta), free(g);
    mt_nn_ws_free(ws);
    reference_free(&ref);
    preds_free(&p3), preds_free(&p5), preds_free(&p1);
    task_free(&t);
    mt_model_close(m3), mt_model_close(m5), mt_model_close(m1);
    free_model(fx);
}

static void test_steps_option(void **state) {
    check_steps("mamlpp");
    check_steps("conv-mamlpp");
    check_steps("metasgd");
    check_steps("mamlpp-metasgd");
}

/* eval.steps = 0: the model takes meta.inner_steps. */
static void test_steps_default_inner_steps(void **state) {
    char path[256];
    mfx_def def = {"metasgd", MFX_MLP, {"eval.steps=0", "meta.inner_steps=4"}, 21, ITERATION};
    mfx_model *fx = xcalloc(1, sizeof *fx);
    assert_int_equal(mfx_make(fx, &def, tmp_path(path, "eval0.h5")), MT_OK);
    mt_model *m = open_model(path, 0, 0);
    mt_model_info info;
    mt_model_describe(m, &info);
    assert_int_equal(info.steps, 4);

    test_task t;
    task_init(&t, fx);
    task_fill(&t, 3);
    preds p = preds_alloc(&t);
    adapt_ok(m, &t);
    predict_query(m, &t, p.out, p.classes);
    reference ref;
    reference_init(&ref, fx, MT_MODEL_DEFAULT_BATCH);
    assert_same_predictions(&t, p.out, p.classes, reference_outputs(&ref, fx->meta, &t, 4), "eval.steps=0");

    /* out of range at open */
    mt_model *bad = SENTINEL; /* set to NULL on failure */
    expect_refusal(mt_model_open(&bad, path, &(mt_model_options){.steps = -1}), MT_ERR_ARG, "steps", "-1");
    assert_null(bad);
    expect_refusal(mt_model_open(&bad, path, &(mt_model_options){.steps = MT_META_MAX_STEPS + 1}), MT_ERR_ARG, "steps",
                   NULL);
    expect_refusal(mt_model_open(&bad, path, &(mt_model_options){.max_batch = -3}), MT_ERR_ARG, "max_batch", NULL);
    expect_refusal(mt_model_open(&bad, path, &(mt_model_options){.max_batch = MT_MODEL_MAX_BATCH + 1}), MT_ERR_ARG,
                   "max_batch", NULL);
    /* the largest step count is taken */
    mt_model *most = open_model(path, MT_META_MAX_STEPS, 0);
    mt_model_describe(most, &info);
    assert_int_equal(info.steps, MT_META_MAX_STEPS);
    mt_model_close(most);

    reference_free(&ref);
    preds_free(&p);
    task_free(&t);
    mt_model_close(m);
    free_model(fx);
}

/* ---- 3. reset, and adaptation always from the meta-parameters ---- */

static void check_reset(const char *name) {
    char path[256];
    mfx_model *fx = make_model(find_case(name), path);
    mt_model *m = open_model(path, 0, 0);
    test_task a, b;
    task_init(&a, fx), task_init(&b, fx);
    task_fill(&a, 5), task_fill(&b, 6);
    preds meta = preds_alloc(&a), first = preds_alloc(&a), again = preds_alloc(&a), other = preds_alloc(&a);
    mt_model_info info;

    predict_query(m, &a, meta.out, meta.classes);
    adapt_ok(m, &a);
    predict_query(m, &a, first.out, first.classes);
    mt_model_describe(m, &info);
    assert_int_equal(info.adapted, 1);
    assert_false(preds_equal(&a, &meta, &first));

    mt_model_reset(m);
    mt_model_describe(m, &info);
    assert_int_equal(info.adapted, 0);
    predict_query(m, &a, again.out, again.classes);
    assert_true(preds_equal(&a, &meta, &again)); /* the meta-learned predictions, exactly */

    /* twice on the same support: the second starts from the meta-parameters too */
    adapt_ok(m, &a);
    adapt_ok(m, &a);
    predict_query(m, &a, again.out, again.classes);
    assert_true(preds_equal(&a, &first, &again));
    /* another task in between leaves nothing behind */
    adapt_ok(m, &b);
    predict_query(m, &a, other.out, other.classes);
    assert_false(preds_equal(&a, &first, &other));
    adapt_ok(m, &a);
    predict_query(m, &a, again.out, again.classes);
    assert_true(preds_equal(&a, &first, &again));

    preds_free(&meta), preds_free(&first), preds_free(&again), preds_free(&other);
    task_free(&a), task_free(&b);
    mt_model_close(m);
    free_model(fx);
}

static void test_reset_and_readapt(void **state) {
    check_reset("metasgd");
    check_reset("imaml");
    check_reset("conv-maml");
}

/* ---- 4. save and reopen ---- */

static void check_save(const char *name) {
    char path[256], saved[256], resaved[256], file[64];
    mfx_model *fx = make_model(find_case(name), path);
    snprintf(file, sizeof file, "%s-adapted.h5", name);
    tmp_path(saved, file);
    snprintf(file, sizeof file, "%s-resaved.h5", name);
    tmp_path(resaved, file);
    mt_model *m = open_model(path, 0, 0);
    test_task t, u;
    task_init(&t, fx), task_init(&u, fx);
    task_fill(&t, 8), task_fill(&u, 9);
    preds adapted = preds_alloc(&t), reopened = preds_alloc(&t), p = preds_alloc(&t);
    adapt_ok(m, &t);
    predict_query(m, &t, adapted.out, adapted.classes);
    const char *sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    mt_model_provenance prov = {.support_name = "support.h5", .support_sha256 = sha};
    if (mt_model_save(m, saved, &prov) != MT_OK) fail_msg("save: %s", mt_error_message());

    /* the adapted file predicts what the adapted model did, without adapting */
    mt_model *r = open_model(saved, 0, 0);
    mt_model_info info;
    mt_model_describe(r, &info);
    assert_int_equal(info.adapted, 1);
    assert_int_equal(info.iteration, ITERATION);
    assert_int_equal(info.steps, 3);
    assert_string_equal(info.algorithm, mt_config_algorithm_name(fx->cfg.algorithm));
    assert_string_equal(info.model_spec, fx->cfg.model_spec);
    assert_string_equal(info.path, saved);
    predict_query(r, &t, reopened.out, reopened.classes);
    assert_true(preds_equal(&t, &adapted, &reopened));
    /* reset goes back to the file's parameters, which are the adapted ones */
    mt_model_reset(r);
    predict_query(r, &t, p.out, p.classes);
    assert_true(preds_equal(&t, &adapted, &p));

    /* what the file holds: the adapted θ, the learned rates as they were, the provenance */
    mt_ckpt *ck = xcalloc(1, sizeof *ck);
    assert_int_equal(mt_ckpt_read(saved, ck), MT_OK);
    assert_string_equal(mt_ckpt_attr_value(ck, "kind"), "adapted");
    assert_string_equal(mt_ckpt_attr_value(ck, "source"), path);
    assert_string_equal(mt_ckpt_attr_value(ck, "source_iteration"), "1234");
    assert_string_equal(mt_ckpt_attr_value(ck, "steps"), "3");
    assert_string_equal(mt_ckpt_attr_value(ck, "support_file"), "support.h5");
    assert_string_equal(mt_ckpt_attr_value(ck, "support_sha256"), sha);
    assert_string_equal(mt_ckpt_attr_value(ck, "config"), fx->config_text);
    assert_string_equal(mt_ckpt_attr_value(ck, "algorithm"), mt_config_algorithm_name(fx->cfg.algorithm));
    assert_string_equal(mt_ckpt_attr_value(ck, "model_spec"), fx->cfg.model_spec);
    assert_non_null(mt_ckpt_attr_value(ck, "metatrain_version"));
    assert_non_null(mt_ckpt_attr_value(ck, "created"));
    float *file_meta = xcalloc(fx->layout.n_meta, sizeof(float));
    assert_int_equal(mt_meta_ckpt_restore(ck, saved, &fx->layout, "/params", file_meta), MT_OK);
    reference ref;
    reference_init(&ref, fx, MT_MODEL_DEFAULT_BATCH);
    reference_outputs(&ref, fx->meta, &t, 3);
    assert_memory_equal(file_meta, ref.theta, fx->layout.n_theta * sizeof(float)); /* θ adapted */
    assert_memory_equal(file_meta + fx->layout.n_theta, fx->meta + fx->layout.n_theta,
                        fx->layout.n_rates * sizeof(float)); /* rates as they were */
    if (fx->cfg.algorithm == MT_ALGO_ANIL) {                 /* the body stays, the head moves */
        size_t hb, he;
        mt_nn_head_range(&fx->net, &hb, &he);
        assert_memory_equal(file_meta, fx->meta, hb * sizeof(float));
        assert_true(memcmp(file_meta + hb, fx->meta + hb, (he - hb) * sizeof(float)) != 0);
    }
    mt_ckpt_free(ck);

    /* adapting an adapted file starts from its parameters (and the learned rates) */
    adapt_ok(r, &u);
    predict_query(r, &u, p.out, p.classes);
    assert_same_predictions(&u, p.out, p.classes, reference_outputs(&ref, file_meta, &u, 3), "re-adapted file");

    /* an unadapted model saves its meta-parameters, steps 0, no provenance */
    mt_model_reset(m);
    if (mt_model_save(m, resaved, NULL) != MT_OK) fail_msg("save: %s", mt_error_message());
    assert_int_equal(mt_ckpt_read(resaved, ck), MT_OK);
    assert_string_equal(mt_ckpt_attr_value(ck, "steps"), "0");
    assert_string_equal(mt_ckpt_attr_value(ck, "support_file"), "(none)");
    assert_string_equal(mt_ckpt_attr_value(ck, "support_sha256"), "(none)");
    assert_int_equal(mt_meta_ckpt_restore(ck, resaved, &fx->layout, "/params", file_meta), MT_OK);
    assert_memory_equal(file_meta, fx->meta, fx->layout.n_meta * sizeof(float));
    mt_ckpt_free(ck);

    /* a save that cannot be written fails, naming the path */
    char nowhere[300];
    snprintf(nowhere, sizeof nowhere, "%s/no/such/dir/x.h5", tmpdir);
    expect_refusal(mt_model_save(m, nowhere, NULL), MT_ERR_IO, nowhere, NULL);

    free(ck);
    free(file_meta);
    reference_free(&ref);
    preds_free(&adapted), preds_free(&reopened), preds_free(&p);
    task_free(&t), task_free(&u);
    mt_model_close(r);
    mt_model_close(m);
    free_model(fx);
}

static void test_save_and_reopen(void **state) {
    check_save("metasgd");
    check_save("anil");
    check_save("conv-mamlpp");
    check_save("mamlpp-metasgd");
}

/* An adapted file's handle stays adapted through mt_model_reset: predict still uses the file's
 * parameters, which are adapted ones (model.h, mt_model_info.adapted: "read from an adapted
 * file"), so describe must not call them meta-learned, nor a save record them as 0 steps. */
static void test_reset_keeps_adapted_file_adapted(void **state) {
    char path[256], saved[256], resaved[256];
    mfx_model *fx = make_model(find_case("maml"), path);
    mt_model *m = open_model(path, 0, 0);
    test_task t;
    task_init(&t, fx);
    task_fill(&t, 4);
    adapt_ok(m, &t);
    if (mt_model_save(m, tmp_path(saved, "reset-adapted.h5"), NULL) != MT_OK) fail_msg("save: %s", mt_error_message());
    mt_model *r = open_model(saved, 0, 0);
    mt_model_reset(r);
    mt_model_info info;
    mt_model_describe(r, &info);
    int adapted_after_reset = info.adapted;
    if (mt_model_save(r, tmp_path(resaved, "reset-adapted-resaved.h5"), NULL) != MT_OK)
        fail_msg("save: %s", mt_error_message());
    mt_ckpt *ck = xcalloc(1, sizeof *ck);
    assert_int_equal(mt_ckpt_read(resaved, ck), MT_OK);
    char steps[16];
    snprintf(steps, sizeof steps, "%s", mt_ckpt_attr_value(ck, "steps"));
    mt_ckpt_free(ck);
    free(ck);
    task_free(&t);
    mt_model_close(r), mt_model_close(m);
    free_model(fx);
    if (adapted_after_reset != 1 || strcmp(steps, "3") != 0)
        fail_msg("after mt_model_reset, an adapted file's handle says adapted=%d and saves steps=%s, but predict "
                 "uses the file's adapted parameters (adapted with 3 steps)",
                 adapted_after_reset, steps);
}

/* ---- 5. refusals ---- */

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = xcalloc(*n, 1);
    assert_int_equal(fread(buf, 1, *n, f), *n);
    fclose(f);
    return buf;
}

static void spit(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* A refused adapt leaves the predictions (and the adapted flag) as they were. */
static void refused_adapt(mt_model *m, const test_task *t, const mt_model_batch *bad, const preds *want, int adapted,
                          const char *part, const char *part2) {
    expect_refusal(mt_model_adapt(m, bad), strstr(part, "diverged") ? MT_ERR_NUMERIC : MT_ERR_ARG, part, part2);
    preds p = preds_alloc(t);
    predict_query(m, t, p.out, p.classes);
    assert_true(preds_equal(t, want, &p));
    mt_model_info info;
    mt_model_describe(m, &info);
    assert_int_equal(info.adapted, adapted);
    preds_free(&p);
}

static void test_refusals_regression(void **state) {
    char path[256];
    mfx_model *fx = make_model(find_case("maml"), path);
    mt_model *m = open_model(path, 0, 16);
    test_task t;
    task_init(&t, fx);
    task_fill(&t, 1);
    preds meta = preds_alloc(&t), adapted = preds_alloc(&t);
    predict_query(m, &t, meta.out, meta.classes);
    int ns = t.task.support.n;
    float *x = xcalloc(32, sizeof(float)), *y = xcalloc(32, sizeof(float));
    memcpy(x, t.task.x_support, (size_t)ns * sizeof(float));
    memcpy(y, t.task.y_support, (size_t)ns * sizeof(float));
    mt_model_batch bad = {.x = x, .targets = y, .rows = ns};

    /* before any adaptation, and after one: a refusal changes neither */
    for (int round = 0; round < 2; round++) {
        const preds *want = round ? &adapted : &meta;
        bad.rows = 0;
        refused_adapt(m, &t, &bad, want, round, "support", "0 rows");
        bad.rows = 17; /* max_batch is 16 */
        refused_adapt(m, &t, &bad, want, round, "support", "17 rows");
        bad.rows = ns;
        x[3] = NAN;
        refused_adapt(m, &t, &bad, want, round, "support x", "row 3");
        x[3] = INFINITY;
        refused_adapt(m, &t, &bad, want, round, "support x", "row 3");
        x[3] = t.task.x_support[3];
        y[7] = -INFINITY;
        refused_adapt(m, &t, &bad, want, round, "support targets", "row 7");
        y[7] = t.task.y_support[7];
        bad.targets = NULL;
        refused_adapt(m, &t, &bad, want, round, "targets", NULL);
        bad.targets = y;
        /* targets so large that the inner loop overflows: refused after the fact, as diverged */
        for (int i = 0; i < ns; i++) y[i] = 1e30f;
        refused_adapt(m, &t, &bad, want, round, "diverged", NULL);
        memcpy(y, t.task.y_support, (size_t)ns * sizeof(float));
        expect_refusal(mt_model_adapt(m, NULL), MT_ERR_ARG, "NULL", NULL);
        if (!round) {
            adapt_ok(m, &t);
            predict_query(m, &t, adapted.out, adapted.classes);
        }
    }

    /* predict: rows and finiteness, and a refusal leaves out alone */
    float out[32];
    for (int i = 0; i < 32; i++) out[i] = -7.0f;
    expect_refusal(mt_model_predict(m, x, 0, out, NULL), MT_ERR_ARG, "input", "0 rows");
    expect_refusal(mt_model_predict(m, x, 17, out, NULL), MT_ERR_ARG, "input", "17 rows");
    expect_refusal(mt_model_predict(m, x, -1, out, NULL), MT_ERR_ARG, "input", "-1 rows");
    x[5] = NAN;
    expect_refusal(mt_model_predict(m, x, ns, out, NULL), MT_ERR_ARG, "input x", "row 5");
    for (int i = 0; i < 32; i++) assert_true(out[i] == -7.0f);
    expect_refusal(mt_model_predict(m, NULL, ns, out, NULL), MT_ERR_ARG, "NULL", NULL);
    expect_refusal(mt_model_predict(m, x, ns, NULL, NULL), MT_ERR_ARG, "NULL", NULL);
    x[5] = t.task.x_support[5];
    /* 16 rows, the most, are fine; an error left by an earlier call is cleared */
    assert_int_equal(mt_model_predict(m, x, 16, out, NULL), MT_OK);
    assert_string_equal(mt_error_message(), "");
    /* classes of a regression model are 0 */
    int32_t classes[16];
    for (int i = 0; i < 16; i++) classes[i] = -1;
    assert_int_equal(mt_model_predict(m, x, 16, out, classes), MT_OK);
    for (int i = 0; i < 16; i++) assert_int_equal(classes[i], 0);

    free(x), free(y);
    preds_free(&meta), preds_free(&adapted);
    task_free(&t);
    mt_model_close(m);
    free_model(fx);
}

static void test_refusals_classifier(void **state) {
    char path[256];
    mfx_model *fx = make_model(find_case("conv-maml"), path);
    mt_model *m = open_model(path, 0, 0);
    test_task t;
    task_init(&t, fx);
    task_fill(&t, 1);
    preds adapted = preds_alloc(&t);
    adapt_ok(m, &t);
    predict_query(m, &t, adapted.out, adapted.classes);
    int ns = t.task.support.n;
    int32_t labels[CONV_WAYS * CONV_SHOTS];
    memcpy(labels, t.task.label_support, sizeof labels);
    mt_model_batch bad = {.x = t.task.x_support, .labels = labels, .rows = ns};

    labels[4] = CONV_WAYS;
    refused_adapt(m, &t, &bad, &adapted, 1, "support labels", "row 4: 3 is outside [0, 3)");
    labels[4] = -1;
    refused_adapt(m, &t, &bad, &adapted, 1, "support labels", "row 4: -1");
    labels[4] = t.task.label_support[4];
    bad.labels = NULL;
    bad.targets = t.task.y_support; /* targets do not make up for labels */
    refused_adapt(m, &t, &bad, &adapted, 1, "labels", NULL);

    free_model(fx);
    preds_free(&adapted);
    task_free(&t);
    mt_model_close(m);
}

/* Files that are not a usable model: each refused at open, naming the file. */
static void test_refusals_files(void **state) {
    char path[256], bad[256];
    mfx_model *fx = make_model(find_case("metasgd"), path);
    mt_model *m = SENTINEL; /* set to NULL on failure */

    expect_refusal(mt_model_open(&m, tmp_path(bad, "missing.h5"), NULL), MT_ERR_IO, bad, NULL);
    assert_null(m);
    expect_refusal(mt_model_open(NULL, path, NULL), MT_ERR_ARG, "NULL", NULL);
    expect_refusal(mt_model_open(&m, NULL, NULL), MT_ERR_ARG, "NULL", NULL);

    size_t n;
    unsigned char *bytes = slurp(path, &n);
    spit(tmp_path(bad, "truncated.h5"), bytes, n / 2);
    expect_refusal(mt_model_open(&m, bad, NULL), MT_ERR_FORMAT, bad, NULL);
    assert_null(m);
    spit(tmp_path(bad, "truncated-by-one.h5"), bytes, n - 1);
    expect_refusal(mt_model_open(&m, bad, NULL), MT_ERR_FORMAT, bad, NULL);
    bytes[n / 2] ^= 0x10;
    spit(tmp_path(bad, "flipped.h5"), bytes, n);
    expect_refusal(mt_model_open(&m, bad, NULL), MT_ERR_FORMAT, bad, NULL);
    assert_null(m);
    free(bytes);

    /* valid files, wrong contents: no config; a tensor missing; a diverged run's NaN */
    mt_ckpt *ck = xcalloc(1, sizeof *ck);
    assert_int_equal(mfx_fill(ck, fx, &fx->iteration), MT_OK);
    for (int i = 0; i < ck->n_attrs; i++)
        if (strcmp(ck->attrs[i].name, "config") == 0) snprintf(ck->attrs[i].name, sizeof ck->attrs[i].name, "konfig");
    assert_int_equal(mt_ckpt_write(tmp_path(bad, "no-config.h5"), ck), MT_OK);
    expect_refusal(mt_model_open(&m, bad, NULL), MT_ERR_FORMAT, bad, "'config' missing");

    memset(ck, 0, sizeof *ck);
    assert_int_equal(mfx_fill(ck, fx, &fx->iteration), MT_OK);
    int rates = -1;
    for (int i = 0; i < ck->n_arrays; i++)
        if (rates < 0 && strstr(ck->arrays[i].path, "/inner_lr/")) rates = i;
    assert_true(rates >= 0);
    char gone[MT_CKPT_PATH_LEN];
    snprintf(gone, sizeof gone, "%s", ck->arrays[rates].path);
    ck->arrays[rates] = ck->arrays[--ck->n_arrays];
    assert_int_equal(mt_ckpt_write(tmp_path(bad, "no-rates.h5"), ck), MT_OK);
    expect_refusal(mt_model_open(&m, bad, NULL), MT_ERR_FORMAT, gone, "missing");

    memset(ck, 0, sizeof *ck);
    float saved = fx->meta[5];
    fx->meta[5] = NAN;
    assert_int_equal(mfx_fill(ck, fx, &fx->iteration), MT_OK);
    assert_int_equal(mt_ckpt_write(tmp_path(bad, "nan.h5"), ck), MT_OK);
    fx->meta[5] = saved;
    expect_refusal(mt_model_open(&m, bad, NULL), MT_ERR_FORMAT, bad, "not finite");
    assert_null(m);

    /* a config the reader refuses */
    memset(ck, 0, sizeof *ck);
    assert_int_equal(mfx_fill(ck, fx, &fx->iteration), MT_OK);
    for (int i = 0; i < ck->n_attrs; i++)
        if (strcmp(ck->attrs[i].name, "config") == 0) ck->attrs[i].value = "[meta]\ninner_steps = 0\n";
    assert_int_equal(mt_ckpt_write(tmp_path(bad, "bad-config.h5"), ck), MT_OK);
    expect_refusal(mt_model_open(&m, bad, NULL), MT_ERR_CONFIG, bad, "inner_steps");

    free(ck);
    free_model(fx);
}

/* ---- 6. threads: one handle each ---- */

#define THREADS 4
#define TASKS_PER_THREAD 50

typedef struct {
    const char *path;
    const mfx_model *fx;
    int id;
    float *out; /* TASKS_PER_THREAD × query rows × outputs */
    int32_t *classes;
    char failure[512];
} worker;

/* Adapts and predicts tasks id·TASKS_PER_THREAD …; every tenth also makes a refused call and
 * checks that the message is this thread's (the row it names is the thread's id). No cmocka
 * asserts here: they jump, which a thread must not do; failures are reported in `failure`. */
static void *work(void *arg) {
    worker *w = arg;
    mt_model *m = NULL;
    test_task t;
    memset(&t, 0, sizeof t);
    t.classification = w->fx->net.loss == MT_NN_LOSS_XENT;
    t.in = w->fx->net.in_size, t.out = w->fx->net.out_size;
    mt_task_shape shape;
    mt_config_task_shape(&w->fx->cfg, QUERIES, &shape);
    if (t.classification) {
        t.fam.kind = MT_TASK_EPISODES, t.fam.ways = CONV_WAYS, t.fam.shots = CONV_SHOTS, t.fam.queries = CONV_QUERIES;
        t.fam.in_size = t.in, t.fam.out_size = t.out, t.fam.classification = 1;
    } else if (mt_task_family_init(&t.fam, &shape, &w->fx->net, NULL, MT_SPLIT_TEST) != MT_OK) {
        snprintf(w->failure, sizeof w->failure, "family: %s", mt_error_message());
        return NULL;
    }
    float *bad_x = NULL;
    if (mt_task_alloc(&t.task, &t.fam) != MT_OK || mt_model_open(&m, w->path, NULL) != MT_OK) {
        snprintf(w->failure, sizeof w->failure, "setup: %s", mt_error_message());
        goto done;
    }
    size_t nq = (size_t)t.task.query.n, ns = (size_t)t.task.support.n;
    if (!(bad_x = malloc(ns * t.in * sizeof *bad_x))) goto done;
    for (int i = 0; i < TASKS_PER_THREAD && !w->failure[0]; i++) {
        task_fill(&t, (uint32_t)(w->id * TASKS_PER_THREAD + i));
        mt_model_batch support = support_of(&t);
        if (mt_model_adapt(m, &support) != MT_OK ||
            mt_model_predict(m, t.task.x_query, (int)nq, w->out + i * nq * t.out, w->classes + i * nq) != MT_OK)
            snprintf(w->failure, sizeof w->failure, "task %d: %s", i, mt_error_message());
        if (i % 10 == 0) {
            memcpy(bad_x, t.task.x_support, ns * t.in * sizeof *bad_x);
            bad_x[(size_t)w->id * t.in] = NAN;
            mt_model_batch bad = support;
            bad.x = bad_x;
            char want[32];
            snprintf(want, sizeof want, "row %d,", w->id);
            if (mt_model_adapt(m, &bad) == MT_OK || !strstr(mt_error_message(), want))
                snprintf(w->failure, sizeof w->failure, "task %d: refusal '%s' does not name %s", i, mt_error_message(),
                         want);
        }
    }
done:
    free(bad_x);
    mt_model_close(m);
    mt_task_free(&t.task);
    mt_task_family_free(&t.fam);
    return NULL;
}

static void check_threads(const char *name) {
    char path[256];
    mfx_model *fx = make_model(find_case(name), path);
    test_task probe;
    task_init(&probe, fx);
    size_t per_task = (size_t)probe.task.query.n * probe.out, nq = (size_t)probe.task.query.n;
    task_free(&probe);

    worker workers[THREADS], serial[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (worker){.path = path, .fx = fx, .id = i};
        workers[i].out = xcalloc(TASKS_PER_THREAD * per_task, sizeof(float));
        workers[i].classes = xcalloc(TASKS_PER_THREAD * nq, sizeof(int32_t));
        serial[i] = workers[i];
        serial[i].out = xcalloc(TASKS_PER_THREAD * per_task, sizeof(float));
        serial[i].classes = xcalloc(TASKS_PER_THREAD * nq, sizeof(int32_t));
    }
    for (int i = 0; i < THREADS; i++) work(&serial[i]);
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) assert_int_equal(pthread_create(&threads[i], NULL, work, &workers[i]), 0);
    for (int i = 0; i < THREADS; i++) assert_int_equal(pthread_join(threads[i], NULL), 0);
    for (int i = 0; i < THREADS; i++) {
        if (serial[i].failure[0]) fail_msg("%s, serial %d: %s", name, i, serial[i].failure);
        if (workers[i].failure[0]) fail_msg("%s, thread %d: %s", name, i, workers[i].failure);
        assert_memory_equal(workers[i].out, serial[i].out, TASKS_PER_THREAD * per_task * sizeof(float));
        assert_memory_equal(workers[i].classes, serial[i].classes, TASKS_PER_THREAD * nq * sizeof(int32_t));
        free(workers[i].out), free(workers[i].classes), free(serial[i].out), free(serial[i].classes);
    }
    free_model(fx);
}

static void test_threads(void **state) {
    check_threads("metasgd");
    check_threads("conv-mamlpp");
}

/* ---- setup ---- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }

static int setup(void **state) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mt_model_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) { return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* The error module keeps the first message: each case starts clean. */
static int clear_error(void **state) {
    mt_error_clear();
    return 0;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_equivalence_mlp, clear_error),
        cmocka_unit_test_setup(test_equivalence_conv, clear_error),
        cmocka_unit_test_setup(test_describe, clear_error),
        cmocka_unit_test_setup(test_steps_option, clear_error),
        cmocka_unit_test_setup(test_steps_default_inner_steps, clear_error),
        cmocka_unit_test_setup(test_reset_and_readapt, clear_error),
        cmocka_unit_test_setup(test_save_and_reopen, clear_error),
        cmocka_unit_test_setup(test_reset_keeps_adapted_file_adapted, clear_error),
        cmocka_unit_test_setup(test_refusals_regression, clear_error),
        cmocka_unit_test_setup(test_refusals_classifier, clear_error),
        cmocka_unit_test_setup(test_refusals_files, clear_error),
        cmocka_unit_test_setup(test_threads, clear_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
