/* A trained model in use (metatrain/model.h): a checkpoint's network, meta-parameters and inner
 * loop, planned once for batches of up to max_batch rows.
 *
 * Parameters: meta (n_meta) holds the file's /params, θ followed by the learned rates where the
 * algorithm has them; theta (n_theta) the parameters predict uses, meta's θ until an adaptation
 * replaces them. An adaptation runs mt_meta_adapt, the path `metatrain eval` measures, into the
 * inner loop's own θ_0 buffer, and is copied to theta only when every parameter came out finite,
 * so a failed adaptation leaves the model as it was.
 *
 * Threads: the numeric code keeps all state in the handle. HDF5 (Debian's parallel build) is not
 * thread-safe, so opening and saving, the only calls that reach it, take one process-wide lock. */
#include "metatrain/model.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metatrain/ckpt.h"
#include "metatrain/config.h"
#include "metatrain/meta.h"

#ifndef METATRAIN_VERSION
#define METATRAIN_VERSION "unknown"
#endif

#define ATTR_KIND_ADAPTED "adapted"

struct mt_model {
    mt_config cfg;
    mt_nn_net net;
    mt_meta_layout layout; /* points at net */
    mt_meta_step_config sc;
    int steps, max_batch;
    int adapted, adapted_steps;           /* what predict uses now: adapted, in how many steps */
    int file_adapted, file_adapted_steps; /* what the file held: mt_model_reset returns to it */
    int64_t iteration;
    float *meta, *theta;
    mt_meta_ctx *ctx;     /* adapting: the inner loop's workspace, which keeps what backward needs */
    mt_nn_ws *predict_ws; /* predicting: forward only, so convolutions keep no fields and walk
                               the batch in cache-sized chunks */
    char *config_text;
    char path[4096];
};

static pthread_mutex_t hdf5_lock = PTHREAD_MUTEX_INITIALIZER;

static int all_finite(const float *v, size_t n) {
    float acc = 0; /* NaN and ±inf survive a multiply by zero as NaN: one test for the lot */
    for (size_t i = 0; i < n; i++) acc += v[i] * 0.0f;
    return acc == 0;
}

/* The first non-finite entry of rows × width values, reported as row and column. */
static mt_status check_rows_finite(const float *v, int rows, size_t width, const char *what) {
    if (all_finite(v, (size_t)rows * width)) return MT_OK;
    for (size_t i = 0; i < (size_t)rows * width; i++)
        if (!isfinite(v[i]))
            return MT_RAISE(MT_ERR_ARG, "%s: row %zu, column %zu: %g is not finite", what, i / width, i % width,
                            (double)v[i]);
    return MT_OK;
}

/* x as the model reads it: finite values, or for a model of token bags ids in [−1, V). */
static mt_status check_x(const mt_model *m, const float *x, int rows, const char *what) {
    size_t width = m->net.in_size;
    mt_status st = check_rows_finite(x, rows, width, what);
    if (st || !m->net.in_tokens) return st;
    float V = (float)m->net.layers[0].table_rows;
    for (size_t i = 0; i < (size_t)rows * width; i++)
        if (x[i] != floorf(x[i]) || x[i] < -1 || x[i] >= V)
            return MT_RAISE(MT_ERR_ARG, "%s: row %zu, column %zu: %g is not a token id in [-1, %.0f)", what, i / width,
                            i % width, (double)x[i], (double)V);
    return MT_OK;
}

/* The file's own iteration: /train/iteration of a checkpoint, source_iteration of an adapted file. */
static int64_t file_iteration(const mt_ckpt *ck, int adapted) {
    if (adapted) {
        const char *s = mt_ckpt_attr_value(ck, "source_iteration");
        char *end;
        long long v = s ? strtoll(s, &end, 10) : -1;
        return s && *s && !*end ? v : -1;
    }
    int64_t iteration;
    return mt_ckpt_i64(ck, "/train/iteration", &iteration) ? iteration : -1;
}

/* Everything from the read file: config, network, layout, parameters. */
static mt_status load(mt_model *m, const mt_ckpt *ck, const char *path) {
    mt_status st = MT_OK;
    char origin[4200];
    MT_TRY(mt_config_load_checkpoint(&m->cfg, ck, path));
    MT_TRY(mt_config_validate(&m->cfg));
    snprintf(origin, sizeof origin, "%s:/config model.spec", path);
    MT_TRY(mt_nn_parse(&m->net, m->cfg.model_spec, origin));
    mt_meta_layout_init(&m->layout, &m->net, m->cfg.algorithm, m->cfg.inner_steps);
    if (!(m->config_text = strdup(mt_ckpt_attr_value(ck, "config")))) MT_THROW(MT_ERR_NOMEM, "%s: out of memory", path);
    if (!(m->meta = malloc(m->layout.n_meta * sizeof *m->meta)) ||
        !(m->theta = malloc(m->layout.n_theta * sizeof *m->theta)))
        MT_THROW(MT_ERR_NOMEM, "%s: out of memory for %zu parameters", path, m->layout.n_meta);
    MT_TRY(mt_meta_ckpt_restore(ck, path, &m->layout, "/params", m->meta));
    if (!all_finite(m->meta, m->layout.n_meta)) {
        mt_meta_tensor tensors[MT_META_MAX_TENSORS];
        int n = mt_meta_tensors(&m->layout, tensors, MT_META_MAX_TENSORS);
        for (int t = 0; t < n; t++)
            if (!all_finite(m->meta + tensors[t].offset, tensors[t].count))
                MT_THROW(MT_ERR_FORMAT, "%s: /params/%s: holds values that are not finite (a diverged run?)", path,
                         tensors[t].name);
    }
    const char *kind = mt_ckpt_attr_value(ck, "kind"), *steps = mt_ckpt_attr_value(ck, "steps");
    m->file_adapted = kind && strcmp(kind, ATTR_KIND_ADAPTED) == 0;
    m->file_adapted_steps = m->file_adapted && steps ? atoi(steps) : 0;
    m->adapted = m->file_adapted, m->adapted_steps = m->file_adapted_steps;
    m->iteration = file_iteration(ck, m->file_adapted);
fail:
    return st;
}

mt_status mt_model_open(mt_model **out, const char *path, const mt_model_options *opt) {
    mt_status st = MT_OK;
    mt_model *m = NULL;
    mt_ckpt *ck = NULL;
    mt_error_clear();
    if (!out || !path) return MT_RAISE(MT_ERR_ARG, "mt_model_open: NULL argument");
    *out = NULL;
    int steps = opt ? opt->steps : 0, max_batch = opt && opt->max_batch ? opt->max_batch : MT_MODEL_DEFAULT_BATCH;
    if (steps < 0 || steps > MT_META_MAX_STEPS)
        MT_THROW(MT_ERR_ARG, "steps: %d is outside [0, %d]", steps, MT_META_MAX_STEPS);
    if (max_batch < 1 || max_batch > MT_MODEL_MAX_BATCH)
        MT_THROW(MT_ERR_ARG, "max_batch: %d is outside [1, %d]", max_batch, MT_MODEL_MAX_BATCH);
    if (!(m = calloc(1, sizeof *m)) || !(ck = calloc(1, sizeof *ck))) MT_THROW(MT_ERR_NOMEM, "%s: out of memory", path);
    snprintf(m->path, sizeof m->path, "%s", path);
    pthread_mutex_lock(&hdf5_lock);
    st = mt_ckpt_read(path, ck);
    pthread_mutex_unlock(&hdf5_lock);
    if (st != MT_OK) goto fail;
    MT_TRY(load(m, ck, path));
    m->steps = steps ? steps : mt_config_eval_steps(&m->cfg);
    m->max_batch = max_batch;
    /* The settings training ends with: MAML++'s second-order phase and final rates. */
    mt_meta_hparams hp;
    mt_config_meta_hparams(&m->cfg, &hp);
    mt_meta_step_config_at(&m->sc, &hp, m->cfg.iterations);
    MT_TRY(mt_meta_ctx_create(&m->ctx, &m->layout, max_batch));
    mt_nn_ws_plan forward_only = {.keep_fields = 0, .chunk_fields = MT_NN_CHUNK_FIELDS, .keep_relu_inputs = 0};
    MT_TRY(mt_nn_ws_create_planned(&m->predict_ws, &m->net, max_batch, &forward_only));
    memcpy(m->theta, m->meta, m->layout.n_theta * sizeof *m->theta);
    mt_ckpt_free(ck);
    free(ck);
    *out = m;
    return MT_OK;
fail:
    if (ck) mt_ckpt_free(ck);
    free(ck);
    mt_model_close(m);
    return st;
}

void mt_model_describe(const mt_model *m, mt_model_info *info) {
    memset(info, 0, sizeof *info);
    info->input_size = m->net.in_size;
    info->channels = m->net.in_c, info->height = m->net.in_h, info->width = m->net.in_w;
    info->vocabulary = m->net.in_tokens ? m->net.layers[0].table_rows : 0;
    info->outputs = m->net.out_size;
    info->classification = m->net.loss == MT_NN_LOSS_XENT;
    info->parameters = m->layout.n_theta;
    info->steps = m->steps;
    info->max_batch = m->max_batch;
    info->adapted = m->adapted;
    info->adapted_steps = m->adapted_steps;
    info->iteration = m->iteration;
    info->algorithm = mt_config_algorithm_name(m->cfg.algorithm);
    info->model_spec = m->cfg.model_spec;
    info->path = m->path;
}

static mt_status check_rows(const mt_model *m, int rows, const char *what) {
    if (rows < 1 || rows > m->max_batch)
        return MT_RAISE(MT_ERR_ARG, "%s: %d rows, but a call takes 1 to %d (mt_model_options.max_batch)", what, rows,
                        m->max_batch);
    return MT_OK;
}

mt_status mt_model_adapt(mt_model *m, const mt_model_batch *support) {
    mt_status st = MT_OK;
    mt_error_clear();
    if (!m || !support || !support->x) return MT_RAISE(MT_ERR_ARG, "mt_model_adapt: NULL argument");
    int rows = support->rows, O = (int)m->net.out_size;
    MT_TRY(check_rows(m, rows, "support"));
    MT_TRY(check_x(m, support->x, rows, "support x"));
    if (m->net.loss == MT_NN_LOSS_XENT) {
        if (!support->labels) MT_THROW(MT_ERR_ARG, "support: labels missing: a classifier adapts on labelled rows");
        for (int i = 0; i < rows; i++)
            if (support->labels[i] < 0 || support->labels[i] >= O)
                MT_THROW(MT_ERR_ARG, "support labels: row %d: %d is outside [0, %d)", i, (int)support->labels[i], O);
    } else {
        if (!support->targets) MT_THROW(MT_ERR_ARG, "support: targets missing: a regression model adapts on targets");
        MT_TRY(check_rows_finite(support->targets, rows, (size_t)O, "support targets"));
    }
    mt_nn_batch batch = {support->x, support->targets, support->labels, rows};
    float *work = m->ctx->theta_steps; /* θ_0 of the inner loop's own buffer: free between tasks */
    mt_meta_adapt(m->ctx, &m->sc, m->meta, &batch, m->steps, work);
    if (!all_finite(work, m->layout.n_theta))
        MT_THROW(MT_ERR_NUMERIC, "adapting diverged: the parameters are not finite after %d steps", m->steps);
    memcpy(m->theta, work, m->layout.n_theta * sizeof *work);
    m->adapted = 1, m->adapted_steps = m->steps;
fail:
    return st;
}

void mt_model_reset(mt_model *m) {
    memcpy(m->theta, m->meta, m->layout.n_theta * sizeof *m->theta);
    m->adapted = m->file_adapted, m->adapted_steps = m->file_adapted_steps;
}

mt_status mt_model_predict(mt_model *m, const float *x, int rows, float *out, int32_t *classes) {
    mt_status st = MT_OK;
    mt_error_clear();
    if (!m || !x || !out) return MT_RAISE(MT_ERR_ARG, "mt_model_predict: NULL argument");
    MT_TRY(check_rows(m, rows, "input"));
    MT_TRY(check_x(m, x, rows, "input x"));
    mt_nn_batch batch = {x, NULL, NULL, rows};
    const float *y = mt_nn_forward(m->predict_ws, m->theta, &batch);
    size_t O = m->net.out_size;
    int classify = m->net.loss == MT_NN_LOSS_XENT;
    for (int i = 0; i < rows; i++) {
        const float *z = y + (size_t)i * O;
        float *p = out + (size_t)i * O;
        if (classes) classes[i] = classify ? mt_nn_argmax(z, (int)O) : 0; /* from the logits, as eval counts */
        if (!classify) {
            memcpy(p, z, O * sizeof *p);
            continue;
        }
        float top = z[mt_nn_argmax(z, (int)O)];
        double sum = 0;
        for (size_t j = 0; j < O; j++) sum += exp((double)z[j] - top);
        for (size_t j = 0; j < O; j++) p[j] = (float)(exp((double)z[j] - top) / sum);
    }
fail:
    return st;
}

mt_status mt_model_save(const mt_model *m, const char *path, const mt_model_provenance *prov) {
    mt_status st = MT_OK;
    mt_ckpt *ck = NULL;
    float *params = NULL;
    mt_error_clear();
    if (!m || !path) return MT_RAISE(MT_ERR_ARG, "mt_model_save: NULL argument");
    char iteration[32], steps[16], created[64];
    snprintf(iteration, sizeof iteration, "%lld", (long long)m->iteration);
    snprintf(steps, sizeof steps, "%d", m->adapted_steps);
    time_t now = time(NULL);
    struct tm tm;
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    if (!(ck = calloc(1, sizeof *ck)) || !(params = malloc(m->layout.n_meta * sizeof *params)))
        MT_THROW(MT_ERR_NOMEM, "%s: out of memory", path);
    memcpy(params, m->meta, m->layout.n_meta * sizeof *params);
    memcpy(params, m->theta, m->layout.n_theta * sizeof *params);
    MT_TRY(mt_meta_ckpt_add(ck, &m->layout, "/params", params));
    const char *attrs[][2] = {
        {"kind", ATTR_KIND_ADAPTED},
        {"source", m->path},
        {"source_iteration", iteration},
        {"steps", steps},
        {"support_file", prov && prov->support_name && *prov->support_name ? prov->support_name : "(none)"},
        {"support_sha256", prov && prov->support_sha256 && *prov->support_sha256 ? prov->support_sha256 : "(none)"},
        {"config", m->config_text},
        {"algorithm", mt_config_algorithm_name(m->cfg.algorithm)},
        {"model_spec", m->cfg.model_spec},
        {"metatrain_version", METATRAIN_VERSION},
        {"created", created},
    };
    for (size_t i = 0; i < sizeof attrs / sizeof *attrs; i++) MT_TRY(mt_ckpt_add_attr(ck, attrs[i][0], attrs[i][1]));
    pthread_mutex_lock(&hdf5_lock);
    st = mt_ckpt_write(path, ck);
    pthread_mutex_unlock(&hdf5_lock);
fail:
    free(ck);
    free(params);
    return st;
}

void mt_model_close(mt_model *m) {
    if (!m) return;
    mt_meta_ctx_free(m->ctx);
    mt_nn_ws_free(m->predict_ws);
    free(m->meta), free(m->theta), free(m->config_text);
    free(m);
}
