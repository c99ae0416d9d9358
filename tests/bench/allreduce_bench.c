/* bench_allreduce: the time of metatrain's per-iteration reduction at its real sizes. A benchmark,
 * not a test: it prints numbers and asserts nothing. scripts/bench-scaling runs it under mpirun.
 *
 * usage: mpirun -n P bench_allreduce [--reps R] [--pingpong BYTES] N_INT64:N_INT...
 *
 * Each N_INT64:N_INT pair is one iteration's reduction as src/dist/allreduce.c does it: an
 * MPI_Allreduce(MPI_MAX) of N_INT ints (the exact path's exponents and flags; N_INT = 0 for the
 * predicted path, which has none), then the sum of N_INT64 int64 values (the fixed-point
 * meta-gradient and meta-loss, and on the predicted path the signatures and counts) through the
 * node's shared memory and among nodes (mt_dist_node_sum). For comparison it also times that sum as one
 * MPI_Allreduce(MPI_SUM) over all ranks, as metatrain did before. After a warm-up, R repetitions
 * (default 200), each started by a barrier, are timed on every rank; a repetition's time is its
 * slowest rank's. Rank 0 prints one JSON object per pair with the median and minimum of the
 * pair and the medians of each part. Collective: every rank runs all of it.
 *
 * --pingpong BYTES: first, R round trips of a BYTES message between rank 0 and the last rank (the
 * others wait), and rank 0 prints the median one-way time (half a round trip): from a small and a
 * large message, the latency and bandwidth of the link between them (tests/cluster/measure.sh). */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metatrain/dist.h"

#define CHECK(call)                                                                                                    \
    do {                                                                                                               \
        if ((call) != MPI_SUCCESS) {                                                                                   \
            fprintf(stderr, "bench_allreduce: %s:%d: %s failed\n", __FILE__, __LINE__, #call);                         \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                                              \
        }                                                                                                              \
    } while (0)

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* times (reps) sorted in place; returns the median. */
static double median(double *times, int reps) {
    qsort(times, (size_t)reps, sizeof *times, compare_doubles);
    return reps % 2 ? times[reps / 2] : 0.5 * (times[reps / 2 - 1] + times[reps / 2]);
}

/* One pair: exponents (n_int ints, MAX) then the sum (n64 int64) through the node sum, and the
 * same sum by MPI_Allreduce, reps times. */
static void bench_pair(const mt_dist *d, long n64, int n_int, int reps) {
    mt_dist_node_sum node;
    if (mt_dist_node_sum_init(d, (size_t)n64, 0, 0, &node) != MT_OK) {
        fprintf(stderr, "bench_allreduce: %s\n", mt_error_message());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    int64_t *sum = malloc((size_t)(n64 > 0 ? n64 : 1) * sizeof *sum);
    int *exps = malloc((size_t)(n_int > 0 ? n_int : 1) * sizeof *exps);
    double *t[4]; /* pair, exponents, node sum, MPI_Allreduce sum */
    for (int k = 0; k < 4; k++) t[k] = malloc((size_t)reps * sizeof *t[k]);
    if (!sum || !exps || !t[0] || !t[1] || !t[2] || !t[3]) {
        fprintf(stderr, "bench_allreduce: out of memory for %ld values\n", n64);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int r = -reps / 10 - 2; r < reps; r++) { /* negative r: warm-up */
        for (long i = 0; i < n64; i++) sum[i] = (int64_t)(i + d->rank);
        for (int i = 0; i < n_int; i++) exps[i] = i - d->rank;
        CHECK(MPI_Barrier(MPI_COMM_WORLD));
        double t0 = MPI_Wtime();
        if (n_int > 0) CHECK(MPI_Allreduce(MPI_IN_PLACE, exps, n_int, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
        double t1 = MPI_Wtime();
        memcpy(node.own, sum, (size_t)n64 * sizeof *sum); /* metatrain converts straight into it */
        const int64_t *total = mt_dist_node_sum_run(d, &node);
        double t2 = MPI_Wtime();
        if (n64 > 0 && total[n64 - 1] != (int64_t)(n64 - 1) * d->size + (int64_t)d->size * (d->size - 1) / 2) {
            fprintf(stderr, "bench_allreduce: rank %d: the node sum is wrong\n", d->rank);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        CHECK(MPI_Barrier(MPI_COMM_WORLD));
        double t3 = MPI_Wtime();
        CHECK(MPI_Allreduce(MPI_IN_PLACE, sum, (int)n64, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
        double t4 = MPI_Wtime(), local[4] = {t2 - t0, t1 - t0, t2 - t1, t4 - t3}, slowest[4];
        CHECK(MPI_Reduce(local, slowest, 4, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD));
        if (r >= 0)
            for (int k = 0; k < 4; k++) t[k][r] = slowest[k];
    }
    if (d->rank == 0) {
        double med_exp = median(t[1], reps), med_node = median(t[2], reps), med_mpi = median(t[3], reps);
        double med = median(t[0], reps);
        printf("{\"ranks\": %d, \"nodes\": %d, \"int64\": %ld, \"ints\": %d, \"bytes\": %ld, \"reps\": %d, "
               "\"median_s\": %.6g, \"min_s\": %.6g, \"exponents_median_s\": %.6g, \"sum_median_s\": %.6g, "
               "\"mpi_allreduce_sum_median_s\": %.6g}\n",
               d->size, node.n_nodes, n64, n_int, 8 * n64 + 4L * n_int, reps, med, t[0][0], med_exp, med_node, med_mpi);
        fflush(stdout);
    }
    mt_dist_node_sum_free(&node);
    free(sum), free(exps);
    for (int k = 0; k < 4; k++) free(t[k]);
}

/* Half the median round trip of a `bytes` message between rank 0 and the last rank. */
static void bench_pingpong(const mt_dist *d, long bytes, int reps) {
    char *buf = calloc((size_t)(bytes > 0 ? bytes : 1), 1);
    double *t = malloc((size_t)reps * sizeof *t);
    if (!buf || !t) {
        fprintf(stderr, "bench_allreduce: out of memory for %ld bytes\n", bytes);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    int last = d->size - 1;
    for (int r = -reps / 10 - 2; r < reps; r++) { /* negative r: warm-up */
        CHECK(MPI_Barrier(MPI_COMM_WORLD));
        double t0 = MPI_Wtime();
        if (d->rank == 0) {
            CHECK(MPI_Send(buf, (int)bytes, MPI_CHAR, last, 0, MPI_COMM_WORLD));
            CHECK(MPI_Recv(buf, (int)bytes, MPI_CHAR, last, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
        } else if (d->rank == last) {
            CHECK(MPI_Recv(buf, (int)bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE));
            CHECK(MPI_Send(buf, (int)bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD));
        }
        if (r >= 0) t[r] = (MPI_Wtime() - t0) / 2;
    }
    if (d->rank == 0) {
        printf("{\"ranks\": %d, \"pingpong_bytes\": %ld, \"reps\": %d, \"one_way_median_s\": %.6g}\n", d->size, bytes,
               reps, median(t, reps));
        fflush(stdout);
    }
    free(buf), free(t);
}

int main(int argc, char **argv) {
    int reps = 200, pairs = 0;
    mt_dist d;
    if (mt_dist_init(&d, &argc, &argv) != MT_OK) return 1;
    for (int i = 1; i < argc; i++) {
        long n64;
        int n_int;
        char tail;
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--pingpong") == 0 && i + 1 < argc && d.size > 1 &&
                   sscanf(argv[i + 1], "%ld%c", &n64, &tail) == 1 && n64 >= 0 && n64 <= INT32_MAX && reps >= 1) {
            bench_pingpong(&d, n64, reps);
            i++;
            pairs++;
        } else if (sscanf(argv[i], "%ld:%d%c", &n64, &n_int, &tail) == 2 && n64 >= 0 && n64 <= INT32_MAX &&
                   n_int >= 0 && reps >= 1) {
            bench_pair(&d, n64, n_int, reps);
            pairs++;
        } else {
            if (d.rank == 0) fprintf(stderr, "usage: bench_allreduce [--reps R] [--pingpong BYTES] N_INT64:N_INT...\n");
            mt_dist_finalize(&d);
            return 2;
        }
    }
    if (pairs == 0 && d.rank == 0)
        fprintf(stderr, "usage: bench_allreduce [--reps R] [--pingpong BYTES] N_INT64:N_INT...\n");
    mt_dist_finalize(&d);
    return pairs ? 0 : 2;
}
