/* bench_allreduce: the time of metatrain's per-iteration reduction at its real sizes. A benchmark,
 * not a test: it prints numbers and asserts nothing. scripts/bench-scaling runs it under mpirun.
 *
 * usage: mpirun -n P bench_allreduce [--reps R] N_INT64:N_INT...
 *
 * Each N_INT64:N_INT pair is one iteration's reduction as src/dist/allreduce.c does it: an
 * MPI_Allreduce(MPI_MAX) of N_INT ints (per-tensor exponents and flags), then an
 * MPI_Allreduce(MPI_SUM) of N_INT64 int64 values (the fixed-point meta-gradient and meta-loss).
 * After a warm-up, R repetitions (default 200), each started by a barrier, are timed on every
 * rank; a repetition's time is its slowest rank's. Rank 0 prints one JSON object per pair with
 * the median and minimum of the pair and of each half. Collective: every rank runs all of it. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                                   \
    do {                                                                              \
        if ((call) != MPI_SUCCESS) {                                                  \
            fprintf(stderr, "bench_allreduce: %s:%d: %s failed\n", __FILE__, __LINE__, #call); \
            MPI_Abort(MPI_COMM_WORLD, 1);                                             \
        }                                                                             \
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

/* One pair: exponents (n_int ints, MAX) then the sum (n64 int64, SUM), reps times. */
static void bench_pair(long n64, int n_int, int reps, int rank, int size) {
    int64_t *sum = malloc((size_t)(n64 > 0 ? n64 : 1) * sizeof *sum);
    int *exps = malloc((size_t)(n_int > 0 ? n_int : 1) * sizeof *exps);
    double *t_pair = malloc((size_t)reps * sizeof *t_pair), *t_exp = malloc((size_t)reps * sizeof *t_exp);
    double *t_sum = malloc((size_t)reps * sizeof *t_sum);
    if (!sum || !exps || !t_pair || !t_exp || !t_sum) {
        fprintf(stderr, "bench_allreduce: out of memory for %ld values\n", n64);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int r = -reps / 10 - 2; r < reps; r++) { /* negative r: warm-up */
        for (long i = 0; i < n64; i++) sum[i] = (int64_t)(i + rank);
        for (int i = 0; i < n_int; i++) exps[i] = i - rank;
        CHECK(MPI_Barrier(MPI_COMM_WORLD));
        double t0 = MPI_Wtime();
        CHECK(MPI_Allreduce(MPI_IN_PLACE, exps, n_int, MPI_INT, MPI_MAX, MPI_COMM_WORLD));
        double t1 = MPI_Wtime();
        CHECK(MPI_Allreduce(MPI_IN_PLACE, sum, (int)n64, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
        double t2 = MPI_Wtime(), local[3] = {t2 - t0, t1 - t0, t2 - t1}, slowest[3];
        CHECK(MPI_Reduce(local, slowest, 3, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD));
        if (r >= 0) t_pair[r] = slowest[0], t_exp[r] = slowest[1], t_sum[r] = slowest[2];
    }
    if (rank == 0) {
        double med_exp = median(t_exp, reps), med_sum = median(t_sum, reps), med = median(t_pair, reps);
        printf("{\"ranks\": %d, \"int64\": %ld, \"ints\": %d, \"bytes\": %ld, \"reps\": %d, "
               "\"median_s\": %.6g, \"min_s\": %.6g, \"exponents_median_s\": %.6g, \"sum_median_s\": %.6g}\n",
               size, n64, n_int, 8 * n64 + 4L * n_int, reps, med, t_pair[0], med_exp, med_sum);
        fflush(stdout);
    }
    free(sum), free(exps), free(t_pair), free(t_exp), free(t_sum);
}

int main(int argc, char **argv) {
    int rank, size, reps = 200, pairs = 0;
    CHECK(MPI_Init(&argc, &argv));
    CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    for (int i = 1; i < argc; i++) {
        long n64;
        int n_int;
        char tail;
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (sscanf(argv[i], "%ld:%d%c", &n64, &n_int, &tail) == 2 && n64 >= 0 && n64 <= INT32_MAX &&
                   n_int >= 0 && reps >= 1) {
            bench_pair(n64, n_int, reps, rank, size);
            pairs++;
        } else {
            if (rank == 0) fprintf(stderr, "usage: bench_allreduce [--reps R] N_INT64:N_INT...\n");
            MPI_Finalize();
            return 2;
        }
    }
    if (pairs == 0 && rank == 0) fprintf(stderr, "usage: bench_allreduce [--reps R] N_INT64:N_INT...\n");
    MPI_Finalize();
    return pairs ? 0 : 2;
}
