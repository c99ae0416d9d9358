/* metatrain train: the outer loop. Each rank computes the meta-batch's tasks it claims
 * (src/dist/claim.c, src/meta/meta_batch.c), one reproducible allreduce sums them
 * (src/dist/allreduce.c), and every rank applies the same outer step. Rank 0 prints, writes
 * checkpoints and metrics. */
#include "cli/cli.h"
#include "cli/progress.h"
#include "metatrain/dataset.h"
#include "metatrain/rng.h"
#include "metatrain/signals.h"

#include <cblas.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *train_usage =
    "usage: metatrain train [CONFIG] [--set section.key=value]... [--resume CKPT] [--quiet]\n"
    "\n"
    "Meta-trains a model. CONFIG is an INI file (see README: configuration keys); --set overrides\n"
    "one key and may repeat. --resume continues from a checkpoint exactly; without CONFIG it uses\n"
    "the checkpoint's own config. train.resume=true resumes from output.dir/checkpoint.h5 when\n"
    "it exists. SIGTERM or SIGINT: checkpoint and exit 0; SIGUSR1: checkpoint and exit 3 (requeue).\n";

typedef struct {
    const char *config_path, *resume_path;
    int quiet;
    mt_cli_sets sets;
} train_args;

/* Everything the loop uses, planned before the first iteration. */
typedef struct {
    mt_task_dataset *data; /* episodes and grouped families only */
    mt_task_family fam, val_fam;
    mt_cli_evaluator validator; /* planned when eval.every > 0 */
    mt_meta_ctx *ctx;
    mt_meta_rows *rows; /* the layout tasks run in: their rows of an embedding table */
    mt_task task;
    mt_meta_hparams hp; /* the config's meta settings, as the meta module takes them */
    mt_meta_optim opt;
    mt_dist_reducer reducer;
    mt_dist_node_sum node_sum; /* the reducer's int64 sum, and the rows of the tasks' vectors */
    mt_dist_claimer claimer;
    mt_cli_history history;
    float *meta, *vectors, *sum; /* vectors: this rank's rows of node_sum */
    size_t vector_len;
    int n_groups; /* the reducer's: one per tensor, one for the objective */
    size_t group_begin[MT_META_MAX_TENSORS + 2], out_begin[MT_META_MAX_TENSORS + 2];
    int group_width[MT_META_MAX_TENSORS + 2];
} train_plan;

static mt_status parse_args(int argc, char **argv, train_args *a, int *help) {
    mt_status st = MT_OK;
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        if (mt_cli_take_set(argc, argv, &i, &a->sets, &st)) {
            if (st) return st;
        } else if (strcmp(argv[i], "--resume") == 0 && i + 1 < argc) {
            a->resume_path = argv[++i];
        } else if (strcmp(argv[i], "--quiet") == 0) {
            a->quiet = 1;
        } else if (mt_cli_is_help(argv[i])) {
            *help = 1;
        } else if (argv[i][0] == '-' || a->config_path) {
            return MT_RAISE(MT_ERR_ARG, "train: unexpected argument '%s' (see metatrain train --help)", argv[i]);
        } else {
            a->config_path = argv[i];
        }
    }
    return MT_OK;
}

/* Builds the model from CONFIG (or the checkpoint's config) and --set; reads the checkpoint to
 * resume from, if any, into ck. Rank 0 alone reads CONFIG and decides whether train.resume finds
 * a checkpoint; every rank reads the checkpoint, and the ranks agree on each read and allocation,
 * and that they read the same checkpoint, so that everything after is alike on every rank. */
static mt_status setup(const mt_dist *d, const train_args *a, mt_cli_model *m, mt_ckpt *ck, const char **resume_path,
                       char *auto_path, size_t auto_len) {
    mt_status st = MT_OK;
    static mt_config saved;
    mt_config_defaults(&m->cfg);
    if (a->config_path) MT_TRY(mt_cli_config_load(d, &m->cfg, a->config_path)); /* else defaults */
    MT_TRY(mt_dist_agree(d, mt_cli_model_build(m, &a->sets)));

    *resume_path = a->resume_path;
    if (!*resume_path && m->cfg.resume) {
        struct stat sb;
        snprintf(auto_path, auto_len, "%s/checkpoint.h5", m->cfg.output_dir);
        int found = d->rank == 0 && stat(auto_path, &sb) == 0;
        if (MPI_Bcast(&found, 1, MPI_INT, 0, d->comm) != MPI_SUCCESS)
            mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Bcast of whether to resume failed"));
        if (found) *resume_path = auto_path;
    }
    if (!*resume_path) return MT_OK;
    const char *injected = mt_dist_injected(d, "checkpoint");
    st = injected ? MT_RAISE(MT_ERR_IO, "%s: failure injected (METATRAIN_INJECT=%s)", *resume_path, injected)
                  : mt_cli_state_read(*resume_path, ck, &saved);
    MT_TRY(mt_dist_agree(d, st));
    MT_TRY(mt_cli_ckpt_agree_same(d, ck, *resume_path));
    if (!a->config_path) {
        m->cfg = saved;
        MT_TRY(mt_dist_agree(d, mt_cli_model_build(m, &a->sets)));
    }
    MT_TRY(mt_config_check_resume(&saved, &m->cfg));
    return MT_OK;
fail:
    return st;
}

/* Local: the training tasks, and the layout they run in, which sizes the tasks' vectors and
 * the reducer's groups (one fixed-point scale each: one per tensor, one for the objective).
 * Failures are agreed on by the caller. */
static mt_status plan_tasks(train_plan *p, const mt_cli_model *m) {
    mt_status st = MT_OK;
    mt_task_shape shape;
    mt_config_task_shape(&m->cfg, 0, &shape);
    shape.shift = m->cfg.augment_shift; /* training images only */
    shape.rotate = m->cfg.augment_rotate;
    MT_TRY(mt_task_family_init(&p->fam, &shape, &m->net, p->data, MT_SPLIT_TRAIN));
    MT_TRY(mt_meta_rows_create(&p->rows, &m->layout, &p->fam));
    p->vector_len = mt_meta_vector_len(p->rows);
    p->n_groups = mt_meta_rows_groups(p->rows, p->group_begin, p->out_begin, p->group_width);
fail:
    return st;
}

/* Local: every rank plans its buffers (as many vector rows as it may claim); failures are agreed
 * on by the caller.
 * METATRAIN_FAULT_RANK=R makes rank R alone fail here, so the tests can prove that a failure
 * on one rank ends the whole job (MPI_Abort) instead of leaving the others waiting. */
static mt_status plan(train_plan *p, const mt_dist *d, const mt_cli_model *m) {
    mt_status st = MT_OK;
    const char *fault = getenv("METATRAIN_FAULT_RANK");
    if (fault && atoi(fault) == d->rank)
        MT_THROW(MT_ERR_IO, "failure injected on this rank (METATRAIN_FAULT_RANK=%s)", fault);
    const mt_config *cfg = &m->cfg;
    const mt_meta_layout *lay = &m->layout;
    mt_task_shape val_shape;
    mt_config_task_shape(cfg, cfg->eval_queries, &val_shape);
    mt_config_meta_hparams(cfg, &p->hp);
    if (cfg->eval_every > 0) {
        /* Synthetic families validate on held-out task keys; datasets on their val split. */
        mt_split split = p->data ? MT_SPLIT_VAL : MT_SPLIT_TRAIN;
        MT_TRY(mt_task_family_init(&p->val_fam, &val_shape, &m->net, p->data, split));
        MT_TRY(mt_cli_evaluator_create(&p->validator, m, &p->val_fam, cfg->eval_val_tasks, mt_config_eval_steps(cfg)));
    }
    MT_TRY(mt_meta_ctx_create(&p->ctx, &p->rows->layout, mt_task_max_batch(&p->fam)));
    MT_TRY(mt_task_alloc(&p->task, &p->fam));
    MT_TRY(mt_meta_optim_init(&p->opt, &p->hp, lay->n_meta, lay->n_rates));
    p->meta = malloc(lay->n_meta * sizeof(float));
    p->sum = malloc(p->out_begin[p->n_groups] * sizeof(float));
    p->vectors = mt_dist_node_sum_rows(&p->node_sum);
    if (!p->meta || !p->sum) MT_THROW(MT_ERR_NOMEM, "out of memory for the meta-batch buffers");
    MT_TRY(mt_dist_reducer_init_sparse(&p->reducer, p->vector_len, p->n_groups, p->group_begin, p->out_begin,
                                       p->group_width, p->rows->layout.n_meta + MT_META_VECTOR_EXTRA,
                                       mt_meta_rows_ids(p->rows), &p->node_sum));
    size_t log_points = (size_t)cfg->iterations / (size_t)cfg->log_every + 2;
    if (cfg->eval_every > 0) log_points += (size_t)cfg->iterations / (size_t)cfg->eval_every;
    MT_TRY(mt_cli_history_init(&p->history, log_points));
    return MT_OK;
fail:
    return st;
}

/* Collective (the dataset's shared window). */
static void plan_free(const mt_dist *d, train_plan *p) {
    mt_task_dataset_free(p->data);
    mt_task_family_free(&p->fam);
    mt_cli_evaluator_free(&p->validator);
    mt_task_family_free(&p->val_fam);
    mt_meta_ctx_free(p->ctx);
    mt_meta_rows_free(p->rows);
    mt_task_free(&p->task);
    mt_meta_optim_free(&p->opt);
    mt_dist_reducer_free(&p->reducer);
    mt_dist_node_sum_free(&p->node_sum);
    mt_dist_claimer_free(&p->claimer);
    mt_cli_history_free(&p->history);
    free(p->meta), free(p->sum);
}

/* Rank 0 holds an flock on output.dir/lock for the whole run, so a second run pointed at the same
 * directory refuses to start instead of interleaving checkpoints. The kernel drops the lock when
 * the process dies, even by kill -9, so a stale lock file never blocks the next run. */
static mt_status lock_output_dir(const char *dir, int *fd_out) {
    char path[4200];
    snprintf(path, sizeof path, "%s/lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return MT_RAISE(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        char holder[32] = "";
        ssize_t n = pread(fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = '\0';
        close(fd);
        if (err == EWOULDBLOCK)
            return MT_RAISE(MT_ERR_IO,
                            "output.dir %s is in use by another run (pid %s); wait for it or choose "
                            "another output.dir",
                            dir, holder[0] ? strtok(holder, "\n") : "?");
        return MT_RAISE(MT_ERR_IO, "%s: cannot lock: %s", path, strerror(err));
    }
    char pid[32];
    int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) { /* informative only */
    }
    *fd_out = fd;
    return MT_OK;
}

/* Rank 0 writes checkpoint.h5 (and a numbered copy, and metrics.csv); every rank learns how it went. */
static mt_status save(const mt_dist *d, const mt_cli_model *m, train_plan *p, int64_t next_iteration) {
    mt_status st = MT_OK;
    if (d->rank == 0) {
        char path[4200], csv[4200];
        snprintf(path, sizeof path, "%s/checkpoint.h5", m->cfg.output_dir);
        snprintf(csv, sizeof csv, "%s/metrics.csv", m->cfg.output_dir);
        st = mt_cli_state_save(path, m, p->meta, &p->opt, &p->reducer, next_iteration, &p->history);
        if (!st) st = mt_ckpt_keep_copy(path, m->cfg.output_dir, (int)next_iteration, m->cfg.keep_checkpoints);
        if (!st) st = mt_cli_history_write_csv(&p->history, csv);
    }
    return mt_dist_share_status(d, st);
}

/* Rank 0 keeps output.dir/best.h5, the state with the best validation metric so far. */
static mt_status save_best(const mt_dist *d, const mt_cli_model *m, train_plan *p, int64_t next_iteration) {
    mt_status st = MT_OK;
    if (d->rank == 0) {
        char path[4200];
        snprintf(path, sizeof path, "%s/best.h5", m->cfg.output_dir);
        st = mt_cli_state_save(path, m, p->meta, &p->opt, &p->reducer, next_iteration, &p->history);
    }
    return mt_dist_share_status(d, st);
}

static double validate(const mt_dist *d, const mt_cli_model *m, train_plan *p, mt_status *st) {
    mt_cli_eval_result res;
    *st = mt_cli_evaluate(d, &p->validator, p->meta, MT_RNG_EVAL_ITERATION + 1, &res);
    return *st ? NAN : res.mean[res.steps];
}

/* The tasks this rank computes, as mt_meta_batch_grads asks for them. METATRAIN_SLOW_RANK=R
 * makes rank R sleep 2 ms before each task, as a rank sharing its core would, so that the
 * tests can see dynamic claiming move its work to the other ranks. */
typedef struct {
    const mt_dist *d;
    mt_dist_claimer *claimer;
    mt_dist_reducer *reducer;
    int64_t iteration;
    int slow;
    int rows; /* this iteration's, so far */
    /* This run's totals on this rank: tasks computed, seconds computing them, and seconds in
     * iterations (tasks, reduction and outer step; not validation or checkpoints); iterations, and
     * those whose sum took the exact path (the same on every rank). */
    int64_t computed;
    double task_s, iteration_s;
    int64_t iterations, exact_sums;
} claim_source;

/* Called before each task and after the last: the row just finished goes to the node's ranks
 * out of tasks to convert, before this rank goes on. */
static int next_claim(void *arg) {
    claim_source *s = arg;
    if (s->rows > 0) mt_dist_reducer_publish(s->reducer, s->rows - 1);
    int t = mt_dist_claim(s->d, s->claimer, s->iteration);
    if (t >= 0 && s->slow) usleep(2000);
    s->computed += t >= 0;
    s->rows += t >= 0;
    return t;
}

/* Collective. For a user judging the balance: the fewest and most tasks any rank computed, and
 * the least and most busy rank's share of the iteration time spent in tasks; the rest went to
 * waiting for other ranks, the reduction and the outer step. */
static void report_balance(const mt_dist *d, const claim_source *claims, int quiet) {
    typedef struct {
        double value;
        int rank;
    } ranked;
    double busy = claims->iteration_s > 0 ? claims->task_s / claims->iteration_s : 0;
    ranked mine[2] = {{(double)claims->computed, d->rank}, {busy, d->rank}}, least[2], most[2];
    if (MPI_Allreduce(mine, least, 2, MPI_DOUBLE_INT, MPI_MINLOC, d->comm) != MPI_SUCCESS ||
        MPI_Allreduce(mine, most, 2, MPI_DOUBLE_INT, MPI_MAXLOC, d->comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Allreduce of the task counts failed"));
    if (d->rank == 0 && !quiet)
        printf("tasks per rank (train.balance = %s): fewest %.0f (rank %d), most %.0f (rank %d); "
               "time in tasks: %.1f%% (rank %d) to %.1f%% (rank %d) of the iterations\n",
               claims->claimer->dynamic ? "dynamic" : "static", least[0].value, least[0].rank, most[0].value,
               most[0].rank, 100 * least[1].value, least[1].rank, 100 * most[1].value, most[1].rank);
    if (d->rank == 0 && !quiet)
        printf("sums on the exact path (no predicted scale yet, or a task beyond it): %lld of %lld iterations\n",
               (long long)claims->exact_sums, (long long)claims->iterations);
}

static mt_status run_loop(const mt_dist *d, const mt_cli_model *m, train_plan *p, int64_t start, int quiet,
                          claim_source *claims, int *exit_code) {
    mt_status st = MT_OK;
    const mt_config *cfg = &m->cfg;
    const mt_meta_layout *lay = &m->layout;
    mt_meta_step_config sc;
    mt_cli_progress prog;
    double t0 = MPI_Wtime(), elapsed_before = p->history.n ? p->history.elapsed_s[p->history.n - 1] : 0;
    double last_val = p->history.n ? p->history.val_metric[p->history.n - 1] : NAN, best_val = NAN;
    double window_loss = 0;
    int window_n = 0;
    mt_cli_progress_init(&prog, d->rank == 0 && !quiet, cfg->iterations, cfg->log_every, cfg->meta_batch);
    /* METATRAIN_INJECT=die:R or hang:R (src/dist/comm.c): rank R is killed or stopped in the
     * second iteration, whose sum has a prediction and so waits in the node's barrier first. */
    int injected_signal = mt_dist_injected(d, "die") ? SIGKILL : mt_dist_injected(d, "hang") ? SIGSTOP : 0;

    for (int64_t it = start; it < cfg->iterations; it++) {
        mt_dist_outcome out;
        mt_dist_flags flags = {0, mt_dist_stop_signal()};
        mt_meta_step_config_at(&sc, &p->hp, (int)it);
        claims->iteration = it;
        claims->rows = 0;
        double began = MPI_Wtime();
        mt_dist_claim_begin(d, &p->claimer, it);
        int rows = mt_meta_batch_grads(p->ctx, p->rows, &p->task, &p->fam, &sc, p->meta, cfg->seed, (int)it, next_claim,
                                       claims, p->vectors);
        claims->task_s += MPI_Wtime() - began;
        if (injected_signal && it == start + 1 && raise(injected_signal) != 0)
            mt_dist_abort(d, MT_RAISE(MT_ERR_ARG, "raise(%d) failed", injected_signal));
        st = mt_dist_reduce(d, &p->reducer, p->vectors, rows, cfg->meta_batch, flags, p->sum, &out);
        if (st) mt_dist_abort(d, st);
        claims->iterations++;
        claims->exact_sums += out.exact;
        if (out.any_error) MT_THROW(MT_ERR_IO, "iteration %lld: a rank failed", (long long)it);
        if (out.nonfinite)
            MT_THROW(MT_ERR_NUMERIC,
                     "iteration %lld: the meta-gradient or meta-loss is not finite (diverged); "
                     "the last checkpoint is kept unchanged",
                     (long long)it);
        for (size_t i = 0; i < lay->n_meta + MT_META_VECTOR_EXTRA; i++) p->sum[i] /= (float)cfg->meta_batch;
        double meta_loss = p->sum[lay->n_meta];
        mt_meta_clip_grad(p->sum, lay->n_meta, cfg->clip_norm);
        mt_meta_optim_step(&p->opt, p->meta, p->sum, mt_meta_outer_lr(&p->hp, (int)it));
        claims->iteration_s += MPI_Wtime() - began;

        int64_t done = it + 1;
        int stop_here = cfg->stop_at > 0 && done == cfg->stop_at;
        int last = done == cfg->iterations || out.stop || stop_here;
        int val_now = cfg->eval_every > 0 && done % cfg->eval_every == 0;
        if (val_now) {
            last_val = validate(d, m, p, &st);
            if (st) goto fail;
            /* Accuracy rises, MSE falls; every rank computes the same value. */
            int better = isnan(best_val) || (p->fam.classification ? last_val > best_val : last_val < best_val);
            if (better) best_val = last_val;
            if (better && cfg->eval_keep_best) MT_TRY(save_best(d, m, p, done));
        }
        double elapsed = elapsed_before + MPI_Wtime() - t0;
        /* Logged meta-loss: the mean over the iterations since the last log line, not one noisy batch. */
        window_loss += meta_loss, window_n++;
        if (done % cfg->log_every == 0 || last || val_now) {
            mt_cli_history_add(&p->history, done, window_loss / window_n, val_now ? last_val : NAN, elapsed);
            window_loss = 0, window_n = 0;
        }
        mt_cli_progress_update(&prog, done, p->history.n ? p->history.meta_loss[p->history.n - 1] : meta_loss, last_val,
                               MPI_Wtime() - t0, done - start);
        if ((cfg->checkpoint_every > 0 && done % cfg->checkpoint_every == 0) || last) MT_TRY(save(d, m, p, done));
        if (stop_here && !out.stop) {
            mt_cli_progress_finish(&prog);
            if (d->rank == 0 && !quiet)
                printf("stopped after iteration %lld (train.stop_at); resume to continue\n", (long long)done);
            return MT_OK;
        }
        if (out.stop) {
            mt_cli_progress_finish(&prog);
            if (d->rank == 0)
                fprintf(stderr, "metatrain: stopped by signal %d after iteration %lld; checkpoint written\n", out.stop,
                        (long long)done);
            *exit_code = out.stop == SIGUSR1 ? MT_EXIT_REQUEUE : MT_EXIT_OK;
            return MT_OK;
        }
    }
    mt_cli_progress_finish(&prog);
    if (start >= cfg->iterations) MT_TRY(save(d, m, p, start)); /* nothing to run: keep what we have */
    return MT_OK;
fail:
    mt_cli_progress_finish(&prog);
    return st;
}

int mt_cli_train(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    static mt_cli_model m;
    static mt_ckpt ck;
    static char auto_path[4200];
    train_args a;
    train_plan p;
    int help = 0, exit_code = MT_EXIT_OK, lock_fd = -1;
    const char *resume_path = NULL;
    int64_t start = 0;
    memset(&p, 0, sizeof p);
    memset(&ck, 0, sizeof ck);

    MT_TRY(parse_args(argc, argv, &a, &help));
    if (help) {
        if (d->rank == 0) fputs(train_usage, stdout);
        return MT_EXIT_OK;
    }
    /* Before anything slow: a stop request during set-up is honoured at the first iteration. */
    mt_dist_install_stop_handlers();
    MT_TRY(setup(d, &a, &m, &ck, &resume_path, auto_path, sizeof auto_path));
    openblas_set_num_threads(m.cfg.threads);
    char dataset[sizeof m.cfg.task_path + 64];
    if (m.cfg.task_kind == MT_TASK_EPISODES || m.cfg.task_kind == MT_TASK_GROUPED)
        MT_TRY(mt_task_dataset_load(&p.data, d, mt_cli_dataset_path(d, m.cfg.task_path, dataset, sizeof dataset),
                                    m.cfg.task_kind, NULL));
    MT_TRY(mt_dist_claimer_init(d, m.cfg.meta_batch, m.cfg.balance == MT_BALANCE_DYNAMIC, &p.claimer));
    MT_TRY(mt_dist_agree(d, plan_tasks(&p, &m)));
    /* As many rows as this rank may claim in one iteration. */
    int rows = p.claimer.capacity > 0 ? p.claimer.capacity : 1;
    MT_TRY(mt_dist_node_sum_init(d, mt_dist_reducer_sum_len(p.out_begin[p.n_groups], p.n_groups), rows, p.vector_len,
                                 &p.node_sum));
    MT_TRY(mt_dist_agree(d, plan(&p, d, &m)));
    if (resume_path) {
        MT_TRY(mt_dist_agree(
            d, mt_cli_state_restore(&ck, resume_path, &m, p.meta, &p.opt, &p.reducer, &p.history, &start)));
        mt_ckpt_free(&ck);
    } else {
        mt_meta_init_params(&m.layout, m.cfg.seed, m.cfg.inner_lr, p.meta);
        mt_nn_scale_head(&m.net, m.cfg.head_init_scale, p.meta);
    }
    /* Rank 0 alone creates, locks and writes output.dir; the others learn how it went. */
    if (d->rank == 0) {
        const char *injected = mt_dist_injected(d, "output_dir");
        st = injected ? MT_RAISE(MT_ERR_IO, "%s: cannot create directory: failure injected (METATRAIN_INJECT=%s)",
                                 m.cfg.output_dir, injected)
                      : mt_cli_make_dirs(m.cfg.output_dir);
        if (!st) st = lock_output_dir(m.cfg.output_dir, &lock_fd);
    }
    MT_TRY(mt_dist_share_status(d, st));
    if (d->rank == 0 && !a.quiet) {
        printf("metatrain %s: %s on %s, %zu meta-parameters, %d rank%s%s\n", METATRAIN_VERSION,
               mt_config_algorithm_name(m.cfg.algorithm), mt_config_task_kind_name(m.cfg.task_kind), m.layout.n_meta,
               d->size, d->size == 1 ? "" : "s", resume_path ? ", resumed" : "");
        if (resume_path) printf("resuming from %s at iteration %lld\n", resume_path, (long long)start);
        if (p.data)
            printf("dataset %s: read once per node, by %d rank%s (on %s)\n", p.data->path, p.data->n_readers,
                   p.data->n_readers == 1 ? "" : "s", p.data->readers);
        printf("--- effective config ---\n%s------------------------\n", m.config_text);
        fflush(stdout);
    }
    const char *slow = getenv("METATRAIN_SLOW_RANK");
    claim_source claims = {.d = d,
                           .claimer = &p.claimer,
                           .reducer = &p.reducer,
                           .iteration = start,
                           .slow = slow && atoi(slow) == d->rank};
    MT_TRY(run_loop(d, &m, &p, start, a.quiet, &claims, &exit_code));
    report_balance(d, &claims, a.quiet);
    if (d->rank == 0 && !a.quiet) printf("checkpoint: %s/checkpoint.h5\n", m.cfg.output_dir);
    plan_free(d, &p);
    if (lock_fd >= 0) close(lock_fd);
    return exit_code;
fail:
    mt_ckpt_free(&ck);
    plan_free(d, &p);
    if (lock_fd >= 0) close(lock_fd);
    return mt_cli_report(d, st);
}
