/* metatrain bench engine: gradients and Hessian-vector products per second on the reference
 * workloads. A benchmark, not a test: it prints numbers and asserts nothing. */
#include "cli/cli.h"
#include "metatrain/rng.h"

#include <cblas.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *bench_usage =
    "usage: metatrain bench engine [--json] [--seconds S]\n"
    "       metatrain bench adapt sinusoid|omniglot-5w1s [--json] [--seconds S]\n"
    "       metatrain bench meta WORKLOAD [--json] [--seconds S]\n"
    "       metatrain bench sgemm [--json] [--seconds S]\n"
    "\n"
    "engine: gradients/s and HVPs/s of the sinusoid MLP on 10 samples and the 4-conv network on\n"
    "5 and 80 images of 1x28x28. hvp_over_grad near 3 means the HVP wastes nothing (a gradient is\n"
    "three GEMMs per layer, an HVP about nine). embed-b100: bags of 46 ids (a 5-way 5-shot langid\n"
    "task with 75 queries) through a 131072 x 64 table, run as a task runs it: on the table cut to\n"
    "the rows the batch names (at most 4600, whatever V).\n"
    "meta: tasks/s of whole meta-gradients and outer steps on one workload (sinusoid-maml-1,\n"
    "sinusoid-maml-5, sinusoid-metasgd-1, omniglot-5w1s-maml-1, omniglot-20w1s-maml-5), with peak\n"
    "RSS and the GEMM GFLOP/s reached; scripts/bench runs each in its own process beside PyTorch.\n"
    "sgemm: the single-thread OpenBLAS sgemm ceiling (1024x1024x1024).\n"
    "adapt: latency of one new task through the model API (metatrain/model.h): adapt, then predict;\n"
    "sinusoid: 10 support points, 1 step, 100 predictions; omniglot-5w1s: the 4-conv network, 5\n"
    "images, 3 steps, 75 predictions. Median and mean microseconds per task, peak RSS.\n"
    "All on one thread.\n";

typedef struct {
    const char *name, *spec;
    int batch;
} workload;

static const workload workloads[] = {
    {"sinusoid-mlp-b10", "input 1, linear 40, relu, linear 40, relu, linear 1, mse", 10},
    {"conv4-b5",
     "input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "
     "conv 64 s2, bn, relu, flatten, linear 5, xent",
     5},
    {"conv4-b80",
     "input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "
     "conv 64 s2, bn, relu, flatten, linear 5, xent",
     80},
    {"embed-b100", "input tokens 46, embed 131072 64, relu, linear 64, relu, linear 5, xent", 100},
};

/* Calls per second of grad (hvp = 0) or HVP (hvp = 1), timed for at least `seconds`. */
static double rate(mt_nn_ws *ws, const float *params, const mt_nn_batch *batch, const float *dir, float *grad,
                   float *hv, int hvp, double seconds) {
    long reps = 1, done = 0;
    double start = MPI_Wtime(), now = start;
    while (now - start < seconds) {
        for (long r = 0; r < reps; r++) {
            if (hvp)
                mt_nn_hvp(ws, params, batch, dir, grad, hv);
            else
                mt_nn_grad(ws, params, batch, grad);
        }
        done += reps;
        reps *= 2;
        now = MPI_Wtime();
    }
    return done / (now - start);
}

static mt_status bench_workload(const workload *w, double seconds, int json) {
    mt_status st = MT_OK;
    static mt_nn_net net;
    mt_nn_ws *ws = NULL;
    float *params = NULL, *dir = NULL, *grad = NULL, *hv = NULL, *x = NULL, *y = NULL;
    int32_t *labels = NULL;
    MT_TRY(mt_nn_parse(&net, w->spec, w->name));
    int V = net.in_tokens ? net.layers[0].table_rows : 0, cut = (int)(w->batch * net.in_size);
    if (V) mt_nn_with_table_rows(&net, cut < V ? cut : V, &net); /* as src/meta/task_rows.c cuts it */
    MT_TRY(mt_nn_ws_create(&ws, &net, w->batch));
    size_t n = net.n_params, nx = (size_t)w->batch * net.in_size, ny = (size_t)w->batch * net.out_size;
    params = malloc(n * sizeof *params), dir = malloc(n * sizeof *dir);
    grad = malloc(n * sizeof *grad), hv = malloc(n * sizeof *hv);
    x = malloc(nx * sizeof *x), y = malloc(ny * sizeof *y), labels = malloc((size_t)w->batch * sizeof *labels);
    if (!params || !dir || !grad || !hv || !x || !y || !labels) MT_THROW(MT_ERR_NOMEM, "out of memory");
    mt_rng rng;
    mt_rng_init(&rng, 1, 0, 0, MT_RNG_STREAM_TEST);
    mt_nn_init_params(&net, 1, params);
    for (size_t i = 0; i < n; i++) dir[i] = (float)mt_rng_normal(&rng);
    for (size_t i = 0; i < nx; i++) /* ids name every cut row; a few pad */
        x[i] = V ? (i % 7 == 6 ? -1.0f : (float)mt_rng_below(&rng, (uint32_t)net.layers[0].table_rows))
                 : (float)mt_rng_uniform(&rng);
    for (size_t i = 0; i < ny; i++) y[i] = (float)mt_rng_normal(&rng);
    for (int i = 0; i < w->batch; i++) labels[i] = (int32_t)mt_rng_below(&rng, (uint32_t)net.out_size);
    mt_nn_batch batch = {x, y, labels, w->batch};
    rate(ws, params, &batch, dir, grad, hv, 1, seconds / 10); /* warm caches and OpenBLAS buffers */
    double grads = rate(ws, params, &batch, dir, grad, hv, 0, seconds);
    double hvps = rate(ws, params, &batch, dir, grad, hv, 1, seconds);
    if (json)
        mt_cli_json_print(json_pack("{s:s, s:i, s:I, s:f, s:f, s:f}", "workload", w->name, "batch", w->batch,
                                    "parameters", (json_int_t)n, "grad_per_s", grads, "hvp_per_s", hvps,
                                    "hvp_over_grad", grads / hvps));
    else
        printf("%-18s %6d %10zu %14.1f %14.1f %14.2f\n", w->name, w->batch, n, grads, hvps, grads / hvps);
fail:
    mt_nn_ws_free(ws);
    free(params), free(dir), free(grad), free(hv), free(x), free(y), free(labels);
    return st;
}

/* ---- meta workloads: the same work as scripts/reference/torch_maml.py ---- */

#define CONV4(ways)                                                                                                    \
    "input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "                                \
    "conv 64 s2, bn, relu, flatten, linear " #ways ", xent"
#define SINE_MLP "input 1, linear 40, relu, linear 40, relu, linear 1, mse"

typedef struct {
    const char *name, *spec;
    mt_algorithm algorithm;
    int steps, meta_batch, ways, shots, queries; /* ways 0: regression */
    double inner_lr;
} meta_workload;

static const meta_workload meta_workloads[] = {
    {"sinusoid-maml-1", SINE_MLP, MT_ALGO_MAML, 1, 25, 0, 10, 10, 0.01},
    {"sinusoid-maml-5", SINE_MLP, MT_ALGO_MAML, 5, 25, 0, 10, 10, 0.01},
    {"sinusoid-metasgd-1", SINE_MLP, MT_ALGO_METASGD, 1, 25, 0, 10, 10, 0.01},
    {"omniglot-5w1s-maml-1", CONV4(5), MT_ALGO_MAML, 1, 32, 5, 1, 15, 0.4},
    {"omniglot-20w1s-maml-5", CONV4(20), MT_ALGO_MAML, 5, 16, 20, 1, 15, 0.1},
};

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static mt_status bench_meta(const char *name, double seconds, int json) {
    mt_status st = MT_OK;
    const meta_workload *w = NULL;
    static mt_nn_net net;
    static mt_config cfg;
    mt_meta_layout layout;
    mt_task_family fam;
    mt_meta_optim opt = {0};
    mt_meta_ctx *ctx = NULL;
    mt_task task = {0};
    float *meta = NULL, *vec = NULL, *grad = NULL;
    for (size_t i = 0; i < sizeof meta_workloads / sizeof *meta_workloads; i++)
        if (strcmp(meta_workloads[i].name, name) == 0) w = &meta_workloads[i];
    if (!w) MT_THROW(MT_ERR_ARG, "bench meta: unknown workload '%s' (see metatrain bench --help)", name);
    MT_TRY(mt_nn_parse(&net, w->spec, w->name));
    mt_config_defaults(&cfg);
    cfg.algorithm = w->algorithm;
    cfg.inner_steps = w->steps;
    cfg.inner_lr = w->inner_lr;
    mt_meta_layout_init(&layout, &net, w->algorithm, w->steps);

    /* Task buffers by hand: the data's values do not change the work. */
    memset(&fam, 0, sizeof fam);
    fam.kind = w->ways ? MT_TASK_EPISODES : MT_TASK_SINUSOID;
    fam.classification = w->ways > 0;
    fam.ways = w->ways ? w->ways : 1, fam.shots = w->shots, fam.queries = w->queries;
    fam.in_size = net.in_size, fam.out_size = net.out_size;
    MT_TRY(mt_task_alloc(&task, &fam));
    int max_batch = task.support.n > task.query.n ? task.support.n : task.query.n;
    MT_TRY(mt_meta_ctx_create(&ctx, &layout, max_batch));
    mt_meta_hparams hp;
    mt_config_meta_hparams(&cfg, &hp);
    MT_TRY(mt_meta_optim_init(&opt, &hp, layout.n_meta, layout.n_rates));
    meta = malloc(layout.n_meta * sizeof *meta);
    vec = malloc(layout.n_meta * sizeof *vec);
    grad = malloc(layout.n_meta * sizeof *grad);
    if (!meta || !vec || !grad) MT_THROW(MT_ERR_NOMEM, "out of memory");
    mt_meta_init_params(&layout, 1, w->inner_lr, meta);
    mt_rng rng;
    mt_rng_init(&rng, 1, 0, 0, MT_RNG_STREAM_TEST);
    if (w->ways) {
        for (int i = 0; i < task.support.n * (int)net.in_size; i++) task.x_support[i] = (float)mt_rng_uniform(&rng);
        for (int i = 0; i < task.query.n * (int)net.in_size; i++) task.x_query[i] = (float)mt_rng_uniform(&rng);
        for (int i = 0; i < task.support.n; i++) task.label_support[i] = i % w->ways;
        for (int i = 0; i < task.query.n; i++) task.label_query[i] = i % w->ways;
    }
    mt_meta_step_config sc;
    mt_meta_step_config_at(&sc, &hp, 0);

    long iterations = 0;
    double flops_before = 0, start = 0, now = 0;
    for (int phase = 0; phase < 2; phase++) { /* a short warm-up, then the timed run */
        double limit = phase == 0 ? seconds / 10 : seconds;
        iterations = 0;
        flops_before = mt_nn_gemm_flops;
        start = now = MPI_Wtime();
        while (now - start < limit || iterations == 0) {
            memset(grad, 0, layout.n_meta * sizeof *grad);
            for (int t = 0; t < w->meta_batch; t++) {
                if (!w->ways) mt_task_sample(&fam, 1, (uint32_t)iterations, (uint32_t)t, &task);
                mt_meta_task_grad(ctx, &sc, meta, &task, vec);
                for (size_t i = 0; i < layout.n_meta; i++) grad[i] += vec[i] / (float)w->meta_batch;
            }
            mt_meta_optim_step(&opt, meta, grad, cfg.outer_lr);
            iterations++;
            now = MPI_Wtime();
        }
    }
    double elapsed = now - start, tasks_per_s = iterations * w->meta_batch / elapsed;
    double gflops = (mt_nn_gemm_flops - flops_before) / elapsed / 1e9;
    if (json)
        mt_cli_json_print(json_pack("{s:s, s:f, s:f, s:f, s:I, s:f, s:I}", "workload", w->name, "metatrain_tasks_per_s",
                                    tasks_per_s, "metatrain_rss_mb", peak_rss_mb(), "gflops", gflops, "iterations",
                                    (json_int_t)iterations, "seconds", elapsed, "meta_parameters",
                                    (json_int_t)layout.n_meta));
    else
        printf("%s: %.1f tasks/s, %.2f GFLOP/s in GEMMs, peak RSS %.1f MB (%ld iterations in %.2f s)\n", w->name,
               tasks_per_s, gflops, peak_rss_mb(), iterations, elapsed);
fail:
    mt_meta_ctx_free(ctx);
    mt_task_free(&task);
    mt_meta_optim_free(&opt);
    free(meta), free(vec), free(grad);
    return st;
}

/* bench adapt: one task at a time through the public model API, as a service adapting per user
 * would run it. The model is a checkpoint of freshly initialized parameters (the values do not
 * change the work), written to a temporary directory. */
typedef struct {
    const char *name, *spec;
    int steps, support, predict, ways; /* ways 0: regression */
    double inner_lr;
} adapt_workload;

static const adapt_workload adapt_workloads[] = {
    {"sinusoid", SINE_MLP, 1, 10, 100, 0, 0.01},
    {"omniglot-5w1s", CONV4(5), 3, 5, 75, 5, 0.4},
};

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static mt_status write_fresh_model(const adapt_workload *w, const char *path) {
    mt_status st = MT_OK;
    static mt_cli_model m;
    mt_ckpt *ck = calloc(1, sizeof *ck);
    float *meta = NULL;
    int64_t iteration = 0;
    uint64_t one = 1;
    char set[MT_CONFIG_STR + 32];
    if (!ck) MT_THROW(MT_ERR_NOMEM, "out of memory");
    mt_config_defaults(&m.cfg);
    const char *sets[] = {"meta.algorithm=maml", "meta.inner_steps=1", "task.kind=sinusoid"};
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++) MT_TRY(mt_config_set(&m.cfg, sets[i], "bench"));
    snprintf(set, sizeof set, "model.spec=%s", w->spec);
    MT_TRY(mt_config_set(&m.cfg, set, "bench"));
    m.cfg.eval_steps = w->steps;
    m.cfg.inner_lr = w->inner_lr;
    MT_TRY(mt_cli_model_build(&m, NULL));
    if (!(meta = malloc(m.layout.n_meta * sizeof *meta))) MT_THROW(MT_ERR_NOMEM, "out of memory");
    mt_meta_init_params(&m.layout, 1, w->inner_lr, meta);
    MT_TRY(mt_meta_ckpt_add(ck, &m.layout, "/params", meta));
    MT_TRY(mt_ckpt_add(ck, "/train/iteration", MT_CKPT_I64, 1, &one, &iteration));
    MT_TRY(mt_ckpt_add_attr(ck, "config", m.config_text));
    MT_TRY(mt_ckpt_write(path, ck));
fail:
    free(ck);
    free(meta);
    return st;
}

static mt_status bench_adapt(const char *name, double seconds, int json) {
    mt_status st = MT_OK;
    const adapt_workload *w = NULL;
    mt_model *model = NULL;
    float *xs = NULL, *ys = NULL, *xq = NULL, *out = NULL;
    int32_t *labels = NULL, *classes = NULL;
    double *times = NULL;
    char dir[] = "/tmp/metatrain-bench-XXXXXX", path[sizeof dir + 16] = "";
    for (size_t i = 0; i < sizeof adapt_workloads / sizeof *adapt_workloads; i++)
        if (strcmp(adapt_workloads[i].name, name) == 0) w = &adapt_workloads[i];
    if (!w) MT_THROW(MT_ERR_ARG, "bench adapt: unknown workload '%s' (sinusoid or omniglot-5w1s)", name);
    if (!mkdtemp(dir)) MT_THROW(MT_ERR_IO, "%s: cannot create a temporary directory", dir);
    snprintf(path, sizeof path, "%s/model.h5", dir);
    MT_TRY(write_fresh_model(w, path));
    int max_batch = w->support > w->predict ? w->support : w->predict;
    MT_TRY(mt_model_open(&model, path, &(mt_model_options){.max_batch = max_batch}));
    mt_model_info mi;
    mt_model_describe(model, &mi);
    size_t D = mi.input_size, O = mi.outputs;
    enum { MAX_SAMPLES = 1 << 20 };
    xs = malloc(w->support * D * sizeof *xs), ys = malloc(w->support * O * sizeof *ys);
    xq = malloc(w->predict * D * sizeof *xq), out = malloc(w->predict * O * sizeof *out);
    labels = malloc(w->support * sizeof *labels), classes = malloc(w->predict * sizeof *classes);
    times = malloc(MAX_SAMPLES * sizeof *times);
    if (!xs || !ys || !xq || !out || !labels || !classes || !times) MT_THROW(MT_ERR_NOMEM, "out of memory");
    mt_rng rng;
    mt_rng_init(&rng, 1, 0, 0, MT_RNG_STREAM_TEST);
    for (size_t i = 0; i < w->support * D; i++) xs[i] = (float)mt_rng_uniform(&rng);
    for (size_t i = 0; i < w->support * O; i++) ys[i] = (float)mt_rng_uniform(&rng);
    for (size_t i = 0; i < w->predict * D; i++) xq[i] = (float)mt_rng_uniform(&rng);
    for (int i = 0; i < w->support; i++) labels[i] = w->ways ? i % w->ways : 0;
    mt_model_batch support = {xs, w->ways ? labels : NULL, w->ways ? NULL : ys, w->support};
    long n = 0;
    for (int phase = 0; phase < 2; phase++) { /* a short warm-up, then the timed run */
        double limit = phase == 0 ? seconds / 10 : seconds, start = MPI_Wtime(), now = start;
        for (n = 0; (now - start < limit || n == 0) && n < MAX_SAMPLES; n++) {
            double t0 = MPI_Wtime();
            MT_TRY(mt_model_adapt(model, &support));
            MT_TRY(mt_model_predict(model, xq, w->predict, out, classes));
            now = MPI_Wtime();
            times[n] = now - t0;
        }
    }
    double sum = 0;
    for (long i = 0; i < n; i++) sum += times[i];
    qsort(times, (size_t)n, sizeof *times, by_value);
    double median_us = 1e6 * times[n / 2], mean_us = 1e6 * sum / n;
    if (json)
        mt_cli_json_print(json_pack("{s:s, s:f, s:f, s:f, s:I, s:i, s:i, s:i}", "workload", w->name, "metatrain_us",
                                    median_us, "metatrain_mean_us", mean_us, "metatrain_rss_mb", peak_rss_mb(), "tasks",
                                    (json_int_t)n, "steps", w->steps, "support", w->support, "predictions",
                                    w->predict));
    else
        printf("%s: adapt (%d support, %d step%s) + predict %d: median %.1f us, mean %.1f us per task over %ld tasks, "
               "peak RSS %.1f MB\n",
               w->name, w->support, w->steps, w->steps == 1 ? "" : "s", w->predict, median_us, mean_us, n,
               peak_rss_mb());
fail:
    if (path[0]) unlink(path);
    rmdir(dir);
    mt_model_close(model);
    free(xs), free(ys), free(xq), free(out), free(labels), free(classes), free(times);
    return st;
}

/* The single-thread sgemm ceiling on square 1024 products. */
static mt_status bench_sgemm(double seconds, int json) {
    const int n = 1024;
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b),
          *c = malloc((size_t)n * n * sizeof *c);
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return MT_RAISE(MT_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = b[i] = 1.0f / (float)(1 + i % 7);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    long reps = 0;
    double start = MPI_Wtime(), now = start;
    while (now - start < seconds || reps == 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        reps++;
        now = MPI_Wtime();
    }
    double gflops = 2.0 * n * n * (double)n * reps / (now - start) / 1e9;
    if (json)
        mt_cli_json_print(json_pack("{s:f, s:i}", "sgemm_ceiling_gflops", gflops, "n", n));
    else
        printf("sgemm %dx%dx%d, one thread: %.2f GFLOP/s\n", n, n, n, gflops);
    free(a), free(b), free(c);
    return MT_OK;
}

int mt_cli_bench(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    int json = 0;
    double seconds = 1.0;
    const char *what = NULL, *workload_name = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (mt_cli_is_help(argv[i])) {
            if (d->rank == 0) fputs(bench_usage, stdout);
            return MT_EXIT_OK;
        } else if (!what && argv[i][0] != '-')
            what = argv[i];
        else if (!workload_name && argv[i][0] != '-')
            workload_name = argv[i];
        else
            MT_THROW(MT_ERR_ARG, "bench: unexpected argument '%s' (see metatrain bench --help)", argv[i]);
    }
    if (!what || (strcmp(what, "engine") != 0 && strcmp(what, "meta") != 0 && strcmp(what, "sgemm") != 0 &&
                  strcmp(what, "adapt") != 0))
        MT_THROW(MT_ERR_ARG, "bench: say what to measure: engine, meta WORKLOAD, adapt WORKLOAD or sgemm");
    if (!(seconds > 0)) MT_THROW(MT_ERR_ARG, "bench: --seconds must be positive");
    if (d->rank != 0) return MT_EXIT_OK; /* a single-process benchmark */
    openblas_set_num_threads(1);
    if (strcmp(what, "meta") == 0) {
        if (!workload_name) MT_THROW(MT_ERR_ARG, "bench meta: name a workload (see metatrain bench --help)");
        MT_TRY(bench_meta(workload_name, seconds, json));
        return MT_EXIT_OK;
    }
    if (strcmp(what, "adapt") == 0) {
        if (!workload_name) MT_THROW(MT_ERR_ARG, "bench adapt: name a workload: sinusoid or omniglot-5w1s");
        MT_TRY(bench_adapt(workload_name, seconds, json));
        return MT_EXIT_OK;
    }
    if (strcmp(what, "sgemm") == 0) {
        MT_TRY(bench_sgemm(seconds, json));
        return MT_EXIT_OK;
    }
    if (!json) printf("%-18s %6s %10s %14s %14s %14s\n", "workload", "batch", "params", "grad/s", "hvp/s", "hvp/grad");
    for (size_t i = 0; i < sizeof workloads / sizeof *workloads; i++)
        MT_TRY(bench_workload(&workloads[i], seconds, json));
    return MT_EXIT_OK;
fail:
    return mt_cli_report(d, st);
}
