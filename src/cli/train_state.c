/* The training state in a checkpoint:
 *   /params/<tensor>                meta-parameters, learned rates under /params/inner_lr/...
 *   /optimizer/step, /optimizer/{m,v}/<tensor> (Adam) or /optimizer/velocity/<tensor> (SGD)
 *   /train/iteration                the next iteration to run
 *   /train/reduction_exponents      the reducer's predicted scales (src/dist/allreduce.c); with the
 *                                   iteration and the config, all an exact resume needs
 *   /metrics/{iteration,meta_loss,val_metric,elapsed_s}
 *   root attributes: config, algorithm, model_spec, metatrain_version, created */
#include "cli/cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/file.h"
#include "metatrain/isolate.h"

#ifndef METATRAIN_VERSION
#define METATRAIN_VERSION "unknown"
#endif

mt_status mt_cli_history_init(mt_cli_history *h, size_t capacity) {
    memset(h, 0, sizeof *h);
    h->capacity = capacity ? capacity : 1;
    h->iteration = malloc(h->capacity * sizeof *h->iteration);
    h->meta_loss = malloc(h->capacity * sizeof *h->meta_loss);
    h->val_metric = malloc(h->capacity * sizeof *h->val_metric);
    h->elapsed_s = malloc(h->capacity * sizeof *h->elapsed_s);
    if (!h->iteration || !h->meta_loss || !h->val_metric || !h->elapsed_s) {
        mt_cli_history_free(h);
        return MT_RAISE(MT_ERR_NOMEM, "out of memory for the metrics history");
    }
    return MT_OK;
}

void mt_cli_history_free(mt_cli_history *h) {
    free(h->iteration), free(h->meta_loss), free(h->val_metric), free(h->elapsed_s);
    memset(h, 0, sizeof *h);
}

void mt_cli_history_add(mt_cli_history *h, int64_t iteration, double meta_loss, double val_metric, double elapsed_s) {
    if (h->n == h->capacity) { /* planned capacity covers the run; drop the oldest half if not */
        size_t half = h->n / 2;
        for (size_t i = 0; i + half < h->n; i++) {
            h->iteration[i] = h->iteration[i + half], h->meta_loss[i] = h->meta_loss[i + half];
            h->val_metric[i] = h->val_metric[i + half], h->elapsed_s[i] = h->elapsed_s[i + half];
        }
        h->n -= half;
    }
    h->iteration[h->n] = iteration;
    h->meta_loss[h->n] = meta_loss;
    h->val_metric[h->n] = val_metric;
    h->elapsed_s[h->n] = elapsed_s;
    h->n++;
}

mt_status mt_cli_state_save(const char *path, const mt_cli_model *m, const float *meta, const mt_meta_optim *opt,
                            const mt_dist_reducer *reducer, int64_t next_iteration, const mt_cli_history *h) {
    mt_status st = MT_OK;
    static mt_ckpt ck; /* large (array table); one writer per process */
    static int64_t exponents[MT_META_MAX_TENSORS + 1];
    memset(&ck, 0, sizeof ck);
    uint64_t one = 1, series = h->n;
    int64_t step = opt->step, iteration = next_iteration;
    char created[64];
    time_t now = time(NULL);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));

    MT_TRY(mt_meta_ckpt_add(&ck, &m->layout, "/params", meta));
    MT_TRY(mt_ckpt_add(&ck, "/optimizer/step", MT_CKPT_I64, 1, &one, &step));
    if (opt->kind == MT_OPT_ADAM) {
        MT_TRY(mt_meta_ckpt_add(&ck, &m->layout, "/optimizer/m", opt->m));
        MT_TRY(mt_meta_ckpt_add(&ck, &m->layout, "/optimizer/v", opt->v));
    } else {
        MT_TRY(mt_meta_ckpt_add(&ck, &m->layout, "/optimizer/velocity", opt->m));
    }
    MT_TRY(mt_ckpt_add(&ck, "/train/iteration", MT_CKPT_I64, 1, &one, &iteration));
    if (reducer && reducer->have_prediction) {
        uint64_t groups = (uint64_t)reducer->n_groups;
        for (int g = 0; g < reducer->n_groups; g++) exponents[g] = reducer->predicted[g];
        MT_TRY(mt_ckpt_add(&ck, "/train/reduction_exponents", MT_CKPT_I64, 1, &groups, exponents));
    }
    MT_TRY(mt_ckpt_add(&ck, "/metrics/iteration", MT_CKPT_I64, 1, &series, h->iteration));
    MT_TRY(mt_ckpt_add(&ck, "/metrics/meta_loss", MT_CKPT_F64, 1, &series, h->meta_loss));
    MT_TRY(mt_ckpt_add(&ck, "/metrics/val_metric", MT_CKPT_F64, 1, &series, h->val_metric));
    MT_TRY(mt_ckpt_add(&ck, "/metrics/elapsed_s", MT_CKPT_F64, 1, &series, h->elapsed_s));
    MT_TRY(mt_ckpt_add_attr(&ck, "config", m->config_text));
    MT_TRY(mt_ckpt_add_attr(&ck, "algorithm", mt_config_algorithm_name(m->cfg.algorithm)));
    MT_TRY(mt_ckpt_add_attr(&ck, "model_spec", m->cfg.model_spec));
    MT_TRY(mt_ckpt_add_attr(&ck, "metatrain_version", METATRAIN_VERSION));
    MT_TRY(mt_ckpt_add_attr(&ck, "created", created));
    MT_TRY(mt_ckpt_write(path, &ck));
fail:
    return st;
}

static mt_status read_i64(const mt_ckpt *ck, const char *path, const char *name, int64_t *value) {
    if (!mt_ckpt_i64(ck, name, value))
        return MT_RAISE(MT_ERR_FORMAT, "%s: %s: missing or not a 1-element int64", path, name);
    return MT_OK;
}

mt_status mt_cli_state_restore(const mt_ckpt *ck, const char *path, const mt_cli_model *m, float *meta,
                               mt_meta_optim *opt, mt_dist_reducer *reducer, mt_cli_history *h,
                               int64_t *next_iteration) {
    mt_status st = MT_OK;
    MT_TRY(mt_meta_ckpt_restore(ck, path, &m->layout, "/params", meta));
    MT_TRY(read_i64(ck, path, "/train/iteration", next_iteration));
    if (*next_iteration < 0) MT_THROW(MT_ERR_FORMAT, "%s: /train/iteration: negative", path);
    if (opt) {
        MT_TRY(read_i64(ck, path, "/optimizer/step", &opt->step));
        if (opt->kind == MT_OPT_ADAM) {
            MT_TRY(mt_meta_ckpt_restore(ck, path, &m->layout, "/optimizer/m", opt->m));
            MT_TRY(mt_meta_ckpt_restore(ck, path, &m->layout, "/optimizer/v", opt->v));
        } else {
            MT_TRY(mt_meta_ckpt_restore(ck, path, &m->layout, "/optimizer/velocity", opt->m));
        }
    }
    if (reducer) { /* absent from older checkpoints: the first sum is then exact */
        const char *name = "/train/reduction_exponents";
        const mt_ckpt_array *a = mt_ckpt_find(ck, name);
        if (a && (a->dtype != MT_CKPT_I64 || a->rank != 1 || a->dims[0] != (uint64_t)reducer->n_groups))
            MT_THROW(MT_ERR_FORMAT, "%s: %s: not %d int64 values", path, name, reducer->n_groups);
        for (uint64_t g = 0; a && g < a->dims[0]; g++) {
            int64_t e = ((const int64_t *)a->data)[g];
            if (e < MT_DIST_EXPONENT_MIN || e > MT_DIST_EXPONENT_MAX)
                MT_THROW(MT_ERR_FORMAT, "%s: %s[%llu]: %lld is outside [%d, %d]", path, name, (unsigned long long)g,
                         (long long)e, MT_DIST_EXPONENT_MIN, MT_DIST_EXPONENT_MAX);
        }
        MT_TRY(mt_dist_reducer_set_predictions(reducer, a ? a->data : NULL, a ? (int)a->dims[0] : 0));
    }
    if (h) {
        const char *names[4] = {"/metrics/iteration", "/metrics/meta_loss", "/metrics/val_metric",
                                "/metrics/elapsed_s"};
        const mt_ckpt_array *a[4];
        for (int i = 0; i < 4; i++) {
            a[i] = mt_ckpt_find(ck, names[i]);
            if (!a[i] || a[i]->rank != 1 || a[i]->dtype != (i == 0 ? MT_CKPT_I64 : MT_CKPT_F64) ||
                a[i]->dims[0] != a[0]->dims[0])
                MT_THROW(MT_ERR_FORMAT, "%s: %s: missing or of the wrong type or length", path, names[i]);
        }
        for (uint64_t i = 0; i < a[0]->dims[0]; i++)
            mt_cli_history_add(h, ((const int64_t *)a[0]->data)[i], ((const double *)a[1]->data)[i],
                               ((const double *)a[2]->data)[i], ((const double *)a[3]->data)[i]);
    }
fail:
    return st;
}

/* In the child of mt_isolate_run: the whole read, checksums first; what it reads is dropped
 * (_exit frees it). */
/* Frees what it read: with METATRAIN_ISOLATE=0 it runs in this process. */
static mt_status read_in_child(void *path) {
    mt_ckpt *ck = calloc(1, sizeof *ck);
    if (!ck) return MT_RAISE(MT_ERR_NOMEM, "%s: out of memory", (const char *)path);
    mt_status st = mt_ckpt_read(path, ck);
    mt_ckpt_free(ck);
    free(ck);
    return st;
}

mt_status mt_cli_state_read(const char *path, mt_ckpt *ck, mt_config *cfg) {
    mt_status st = MT_OK;
    /* An untrusted file: should libhdf5 crash or hang on it, only a child process goes down. */
    MT_TRY(mt_isolate_run(read_in_child, (void *)path, path, MT_ISOLATE_TIMEOUT_S));
    MT_TRY(mt_ckpt_read(path, ck));
    MT_TRY(mt_config_load_checkpoint(cfg, ck, path));
    return MT_OK;
fail:
    return st;
}

mt_status mt_cli_history_write_csv(const mt_cli_history *h, const char *path) {
    size_t cap = 64 + h->n * 96;
    char *text = malloc(cap);
    if (!text) return MT_RAISE(MT_ERR_NOMEM, "out of memory writing %s", path);
    size_t len = (size_t)snprintf(text, cap, "iteration,meta_loss,val_metric,elapsed_s\n");
    for (size_t i = 0; i < h->n && len < cap; i++) {
        char val[32] = "";
        if (!isnan(h->val_metric[i])) snprintf(val, sizeof val, "%.6g", h->val_metric[i]);
        len += (size_t)snprintf(text + len, cap - len, "%lld,%.6g,%s,%.3f\n", (long long)h->iteration[i],
                                h->meta_loss[i], val, h->elapsed_s[i]);
    }
    mt_status st = mt_file_write_atomic(path, text, len < cap ? len : cap - 1);
    free(text);
    return st;
}
