/* metatrain bench engine: gradients and Hessian-vector products per second on the reference
 * workloads. A benchmark, not a test: it prints numbers and asserts nothing. */
#include "cli/cli.h"
#include "metatrain/rng.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

static const char *bench_usage =
    "usage: metatrain bench engine [--json] [--seconds S]\n"
    "\n"
    "Measures gradients/s and HVPs/s of the sinusoid MLP on 10 samples and the 4-conv network on\n"
    "5 and 80 images of 1x28x28, on one OpenBLAS thread. hvp_over_grad near 3 means the HVP\n"
    "wastes nothing (a gradient is three GEMMs per layer, an HVP about nine).\n";

typedef struct {
    const char *name, *spec;
    int batch;
} workload;

static const workload workloads[] = {
    {"sinusoid-mlp-b10", "input 1, linear 40, relu, linear 40, relu, linear 1, mse", 10},
    {"conv4-b5", "input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "
                 "conv 64 s2, bn, relu, flatten, linear 5, xent", 5},
    {"conv4-b80", "input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "
                  "conv 64 s2, bn, relu, flatten, linear 5, xent", 80},
};

/* Calls per second of grad (hvp = 0) or HVP (hvp = 1), timed for at least `seconds`. */
static double rate(mt_nn_ws *ws, const float *params, const mt_nn_batch *batch, const float *dir,
                   float *grad, float *hv, int hvp, double seconds) {
    long reps = 1, done = 0;
    double start = MPI_Wtime(), now = start;
    while (now - start < seconds) {
        for (long r = 0; r < reps; r++) {
            if (hvp) mt_nn_hvp(ws, params, batch, dir, grad, hv);
            else mt_nn_grad(ws, params, batch, grad);
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
    for (size_t i = 0; i < nx; i++) x[i] = (float)mt_rng_uniform(&rng);
    for (size_t i = 0; i < ny; i++) y[i] = (float)mt_rng_normal(&rng);
    for (int i = 0; i < w->batch; i++) labels[i] = (int32_t)mt_rng_below(&rng, (uint32_t)net.out_size);
    mt_nn_batch batch = {x, y, labels, w->batch};
    rate(ws, params, &batch, dir, grad, hv, 1, seconds / 10); /* warm caches and OpenBLAS buffers */
    double grads = rate(ws, params, &batch, dir, grad, hv, 0, seconds);
    double hvps = rate(ws, params, &batch, dir, grad, hv, 1, seconds);
    if (json)
        printf("{\"workload\": \"%s\", \"batch\": %d, \"parameters\": %zu, \"grad_per_s\": %.6g, "
               "\"hvp_per_s\": %.6g, \"hvp_over_grad\": %.4f}\n",
               w->name, w->batch, n, grads, hvps, grads / hvps);
    else
        printf("%-18s %6d %10zu %14.1f %14.1f %14.2f\n", w->name, w->batch, n, grads, hvps, grads / hvps);
fail:
    mt_nn_ws_free(ws);
    free(params), free(dir), free(grad), free(hv), free(x), free(y), free(labels);
    return st;
}

int mt_cli_bench(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    int json = 0;
    double seconds = 1.0;
    const char *what = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (d->rank == 0) fputs(bench_usage, stdout);
            return MT_EXIT_OK;
        } else if (!what && argv[i][0] != '-') what = argv[i];
        else MT_THROW(MT_ERR_ARG, "bench: unexpected argument '%s' (see metatrain bench --help)", argv[i]);
    }
    if (!what || strcmp(what, "engine") != 0) MT_THROW(MT_ERR_ARG, "bench: say what to measure: metatrain bench engine");
    if (!(seconds > 0)) MT_THROW(MT_ERR_ARG, "bench: --seconds must be positive");
    if (d->rank != 0) return MT_EXIT_OK; /* a single-process benchmark */
    openblas_set_num_threads(1);
    if (!json) printf("%-18s %6s %10s %14s %14s %14s\n", "workload", "batch", "params", "grad/s", "hvp/s", "hvp/grad");
    for (size_t i = 0; i < sizeof workloads / sizeof *workloads; i++) MT_TRY(bench_workload(&workloads[i], seconds, json));
    return MT_EXIT_OK;
fail:
    return mt_cli_report(d, st);
}
