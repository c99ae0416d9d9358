/* metatrain eval: adapt to new tasks from a checkpoint's meta-parameters and report the mean
 * metric with its 95% confidence interval, per inner step. Tasks are sharded over ranks; each
 * task's result lands in its own slot, so the sums are exact and rank-count independent. */
#include "cli/cli.h"
#include "metatrain/dataset.h"
#include "metatrain/rng.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *eval_usage =
    "usage: metatrain eval CKPT [--set section.key=value]... [--json]\n"
    "\n"
    "Evaluates a checkpoint on eval.tasks new tasks (default 600): each adapts on its support set\n"
    "for eval.steps inner steps and is measured on its query set (MSE for regression, accuracy\n"
    "for classification). Prints a table per step, or with --json one JSON object with metric,\n"
    "mean, ci95, tasks, steps, shots, ways and per_step.\n";

mt_status mt_cli_evaluator_create(mt_cli_evaluator *ev, const mt_cli_model *m, const mt_task_family *fam, int n_tasks,
                                  int steps) {
    mt_status st = MT_OK;
    memset(ev, 0, sizeof *ev);
    ev->m = m, ev->fam = fam, ev->n_tasks = n_tasks, ev->steps = steps;
    if (steps > MT_CLI_MAX_EVAL_STEPS) MT_THROW(MT_ERR_CONFIG, "eval.steps: at most %d", MT_CLI_MAX_EVAL_STEPS);
    size_t width = (size_t)steps + 1;
    ev->per_task = calloc((size_t)n_tasks * width, sizeof *ev->per_task);
    ev->loss = malloc(width * sizeof *ev->loss);
    ev->correct = malloc(width * sizeof *ev->correct);
    if (!ev->per_task || !ev->loss || !ev->correct) MT_THROW(MT_ERR_NOMEM, "out of memory for evaluation");
    MT_TRY(mt_meta_rows_create(&ev->rows, &m->layout, fam));
    MT_TRY(mt_meta_ctx_create(&ev->ctx, &ev->rows->layout, mt_task_max_batch(fam)));
    MT_TRY(mt_task_alloc(&ev->task, fam));
    return MT_OK;
fail:
    mt_cli_evaluator_free(ev);
    return st;
}

void mt_cli_evaluator_free(mt_cli_evaluator *ev) {
    mt_meta_ctx_free(ev->ctx);
    mt_meta_rows_free(ev->rows);
    mt_task_free(&ev->task);
    free(ev->per_task), free(ev->loss), free(ev->correct);
    memset(ev, 0, sizeof *ev);
}

mt_status mt_cli_evaluate(const mt_dist *d, mt_cli_evaluator *ev, const float *meta, uint32_t key_iteration,
                          mt_cli_eval_result *res) {
    const mt_cli_model *m = ev->m;
    const mt_task_family *fam = ev->fam;
    int n_tasks = ev->n_tasks, steps = ev->steps;
    size_t width = (size_t)steps + 1;
    double *per_task = ev->per_task;
    mt_meta_step_config sc;
    memset(res, 0, sizeof *res);
    memset(per_task, 0, (size_t)n_tasks * width * sizeof *per_task);
    mt_meta_hparams hp;
    mt_config_meta_hparams(&m->cfg, &hp);
    mt_meta_step_config_at(&sc, &hp, m->cfg.iterations);
    int begin, end;
    mt_dist_shard(n_tasks, d->rank, d->size, &begin, &end);
    for (int t = begin; t < end; t++) {
        mt_task_sample(fam, m->cfg.eval_seed, key_iteration, (uint32_t)t, &ev->task);
        const float *at = mt_meta_rows_cut(ev->rows, meta, &ev->task);
        mt_meta_adapt_eval(ev->ctx, &sc, at, &ev->task, steps, ev->loss, ev->correct);
        for (size_t s = 0; s < width; s++)
            per_task[(size_t)t * width + s] =
                fam->classification ? (double)ev->correct[s] / ev->task.query.n : ev->loss[s];
    }
    /* Every rank reaches the allreduce: the loop above cannot fail. A failure of it may be seen
     * on some ranks only, which would leave the others in the next collective: abort. */
    if (MPI_Allreduce(MPI_IN_PLACE, per_task, n_tasks * (int)width, MPI_DOUBLE, MPI_SUM, d->comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Allreduce of evaluation results failed"));
    res->tasks = n_tasks;
    res->steps = steps;
    res->classification = fam->classification;
    for (size_t s = 0; s < width; s++) {
        double sum = 0, sq = 0;
        for (int t = 0; t < n_tasks; t++) sum += per_task[(size_t)t * width + s];
        double mean = sum / n_tasks;
        for (int t = 0; t < n_tasks; t++) {
            double dv = per_task[(size_t)t * width + s] - mean;
            sq += dv * dv;
        }
        res->mean[s] = mean;
        res->ci95[s] = n_tasks > 1 ? 1.96 * sqrt(sq / (n_tasks - 1)) / sqrt((double)n_tasks) : 0;
    }
    return MT_OK;
}

/* 64-bit FNV-1a over n bytes, continuing from h. */
static uint64_t digest_bytes(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

mt_status mt_cli_ckpt_agree_same(const mt_dist *d, const mt_ckpt *ck, const char *path) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < ck->n_arrays; i++) {
        const mt_ckpt_array *a = &ck->arrays[i];
        size_t bytes = a->dtype == MT_CKPT_F32 ? 4 : 8; /* MT_CKPT_F64, MT_CKPT_I64 */
        for (int k = 0; k < a->rank; k++) bytes *= (size_t)a->dims[k];
        h = digest_bytes(digest_bytes(h, a->path, strlen(a->path) + 1), a->data, a->data ? bytes : 0);
    }
    for (int i = 0; i < ck->n_attrs; i++)
        h = digest_bytes(digest_bytes(h, ck->attrs[i].name, strlen(ck->attrs[i].name) + 1), ck->attrs[i].value,
                         ck->attrs[i].value ? strlen(ck->attrs[i].value) + 1 : 0);
    if (mt_dist_same(d, h)) return MT_OK;
    return MT_RAISE(MT_ERR_IO,
                    "%s: the ranks read different contents (was it replaced while they read it?); "
                    "run again",
                    path);
}

const char *mt_cli_dataset_path(const mt_dist *d, const char *path, char *buf, size_t size) {
    const char *injected = mt_dist_injected(d, "dataset");
    if (!injected) return path;
    snprintf(buf, size, "%s (METATRAIN_INJECT=%s)", path, injected); /* no such file */
    return buf;
}

/* A JSON number, or null where the value is not finite (a diverged adaptation): JSON has no NaN. */
static json_t *json_number(double value) { return isfinite(value) ? json_real(value) : json_null(); }

static mt_status print_result(const mt_cli_model *m, const mt_task_family *fam, const mt_cli_eval_result *r, int json) {
    const char *metric = r->classification ? "accuracy" : "mse";
    int S = r->steps;
    if (json) {
        json_t *o = json_object(), *steps = json_array();
        json_object_set_new(o, "metric", json_string(metric));
        json_object_set_new(o, "mean", json_number(r->mean[S]));
        json_object_set_new(o, "ci95", json_number(r->ci95[S]));
        json_object_set_new(o, "tasks", json_integer(r->tasks));
        json_object_set_new(o, "steps", json_integer(S));
        json_object_set_new(o, "shots", json_integer(fam->shots));
        json_object_set_new(o, "ways", json_integer(fam->ways));
        json_object_set_new(o, "queries", json_integer(fam->queries));
        json_object_set_new(o, "algorithm", json_string(mt_config_algorithm_name(m->cfg.algorithm)));
        for (int s = 0; s <= S; s++) {
            json_t *step = json_object();
            json_object_set_new(step, "step", json_integer(s));
            json_object_set_new(step, "mean", json_number(r->mean[s]));
            json_object_set_new(step, "ci95", json_number(r->ci95[s]));
            json_array_append_new(steps, step);
        }
        json_object_set_new(o, "per_step", steps);
        return mt_cli_json_print(o);
    }
    printf("%s on %d new tasks (%d-shot%s, %d queries), %s\n", metric, r->tasks, fam->shots,
           r->classification ? "" : " regression", fam->queries, mt_config_algorithm_name(m->cfg.algorithm));
    printf("%6s  %12s  %10s\n", "step", "mean", "ci95");
    for (int s = 0; s <= S; s++) printf("%6d  %12.5g  %10.3g\n", s, r->mean[s], r->ci95[s]);
    return MT_OK;
}

int mt_cli_eval(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    static mt_cli_model m;
    static mt_ckpt ck;
    mt_cli_sets sets = {0};
    mt_task_family fam = {0};
    mt_task_dataset *data = NULL;
    mt_cli_evaluator ev = {0};
    mt_cli_eval_result res;
    const char *path = NULL;
    float *meta = NULL;
    int json = 0;
    int64_t iteration = 0;
    memset(&ck, 0, sizeof ck);
    for (int i = 0; i < argc; i++) {
        if (mt_cli_take_set(argc, argv, &i, &sets, &st)) {
            if (st) goto fail;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (mt_cli_is_help(argv[i])) {
            if (d->rank == 0) fputs(eval_usage, stdout);
            return MT_EXIT_OK;
        } else if (argv[i][0] == '-' || path) {
            MT_THROW(MT_ERR_ARG, "eval: unexpected argument '%s' (see metatrain eval --help)", argv[i]);
        } else {
            path = argv[i];
        }
    }
    if (!path) MT_THROW(MT_ERR_ARG, "eval: give a checkpoint file (see metatrain eval --help)");
    /* Every rank reads the checkpoint and sets up alone; each step that may fail on one rank
     * (a read, an allocation) is agreed before the next collective, and the cleanup below
     * (collective: the dataset's window) is reached by every rank or none. */
    const char *injected = mt_dist_injected(d, "checkpoint");
    st = injected ? MT_RAISE(MT_ERR_IO, "%s: failure injected (METATRAIN_INJECT=%s)", path, injected)
                  : mt_cli_state_read(path, &ck, &m.cfg);
    MT_TRY(mt_dist_agree(d, st));
    MT_TRY(mt_cli_ckpt_agree_same(d, &ck, path));
    MT_TRY(mt_dist_agree(d, mt_cli_model_build(&m, &sets)));
    openblas_set_num_threads(m.cfg.threads);
    char dataset[sizeof m.cfg.task_path + 64];
    if (m.cfg.task_kind == MT_TASK_EPISODES || m.cfg.task_kind == MT_TASK_GROUPED)
        MT_TRY(mt_task_dataset_load(&data, d, mt_cli_dataset_path(d, m.cfg.task_path, dataset, sizeof dataset),
                                    m.cfg.task_kind, m.cfg.eval_episodes));
    mt_task_shape shape;
    mt_config_task_shape(&m.cfg, m.cfg.eval_queries, &shape);
    st = mt_task_family_init(&fam, &shape, &m.net, data, m.cfg.eval_split);
    if (!st && !(meta = malloc(m.layout.n_meta * sizeof *meta)))
        st = MT_RAISE(MT_ERR_NOMEM, "out of memory for the meta-parameters");
    if (!st) st = mt_cli_state_restore(&ck, path, &m, meta, NULL, NULL, NULL, &iteration);
    MT_TRY(mt_dist_agree(d, st));
    mt_ckpt_free(&ck);
    int steps = mt_config_eval_steps(&m.cfg);
    int tasks = fam.fixed_episodes ? data->n_episodes : m.cfg.eval_tasks;
    injected = mt_dist_injected(d, "evaluator");
    st = injected ? MT_RAISE(MT_ERR_NOMEM, "evaluator: failure injected (METATRAIN_INJECT=%s)", injected)
                  : mt_cli_evaluator_create(&ev, &m, &fam, tasks, steps);
    MT_TRY(mt_dist_agree(d, st));
    MT_TRY(mt_cli_evaluate(d, &ev, meta, MT_RNG_EVAL_ITERATION, &res));
    /* Rank 0 alone prints; no collective follows but the cleanup, which every rank reaches. */
    if (d->rank == 0) st = print_result(&m, &fam, &res, json);
fail:
    mt_cli_evaluator_free(&ev);
    mt_ckpt_free(&ck);
    mt_task_family_free(&fam);
    mt_task_dataset_free(data);
    free(meta);
    return mt_cli_report(d, st);
}
