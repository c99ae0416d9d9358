/* metatrain: the command-line entry point. Dispatches to a verb, starting MPI for the verbs that
 * spread work over ranks; the verbs that read one file and answer (info, adapt, predict) run
 * without it, so that they start in milliseconds and work where no MPI launcher exists. */
#include "cli/cli.h"

#include <cblas.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Open MPI's shared-memory transport sends messages above its eager limit (4 KiB) by rendezvous,
 * a handshake plus a kernel copy: the 14 KB reduction of a small model took 6.8 us that way and
 * 2.9 us eagerly (tests/bench/allreduce_bench.c, 2 ranks). 32 KiB is the transport's fragment
 * size, the most it allows. A value in the environment wins; other MPIs ignore the variable.
 * A policy of this program, not of the library: a program linking libmetatrain keeps its own. */
static void tune_open_mpi(void) { setenv("OMPI_MCA_btl_vader_eager_limit", "32768", 0); }

/* The rank a launcher gave this process, from its environment (0 when none did): a one-process
 * verb started as several ranks (mpirun -n 2 metatrain info ...) runs once, on rank 0. */
static int launcher_rank(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

static const char *usage =
    "usage: metatrain VERB [options]\n"
    "\n"
    "Distributed meta-learning (MAML and its family) with exact meta-gradients.\n"
    "\n"
    "verbs:\n"
    "  train [CONFIG] [--set section.key=value]... [--resume CKPT] [--quiet]\n"
    "  eval CKPT [--set section.key=value]... [--json]\n"
    "  info MODEL [--json]\n"
    "  adapt CKPT --support FILE -o ADAPTED.h5 [--set eval.steps=N] [--json]\n"
    "  predict MODEL --input FILE [--support FILE] [-o OUT.h5 | --csv | --json]\n"
    "  bench engine|meta WORKLOAD|sgemm|adapt [--json]\n"
    "  config [CONFIG] [--set section.key=value]... | --reference\n"
    "\n"
    "Run under mpirun or srun to spread tasks over ranks; results do not depend on the rank count.\n"
    "metatrain VERB --help describes a verb; README.md lists every configuration key.\n";

int main(int argc, char **argv) {
    if (argc < 2 || mt_cli_is_help(argv[1])) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? MT_EXIT_USAGE : MT_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("metatrain %s\n", METATRAIN_VERSION);
        return MT_EXIT_OK;
    }
    static const struct {
        const char *name;
        int (*run)(const mt_dist *, int, char **);
        int mpi; /* 0: one process, no MPI_Init (d is MT_CLI_NO_MPI) */
    } verbs[] = {{"train", mt_cli_train, 1},    {"eval", mt_cli_eval, 1},          {"info", mt_cli_info, 0},
                 {"bench", mt_cli_bench, 1},    {"config", mt_cli_config_verb, 1}, {"adapt", mt_cli_adapt, 0},
                 {"predict", mt_cli_predict, 0}};
    int (*run)(const mt_dist *, int, char **) = NULL;
    int mpi = 1;
    for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++)
        if (strcmp(argv[1], verbs[i].name) == 0) run = verbs[i].run, mpi = verbs[i].mpi;
    if (!run) {
        fprintf(stderr, "metatrain: unknown verb '%s'\n%s", argv[1], usage);
        return MT_EXIT_USAGE;
    }
    /* A file-size limit (ulimit -f) then makes writes fail with EFBIG, which we report and survive,
     * instead of killing the process halfway through a checkpoint. */
    signal(SIGXFSZ, SIG_IGN);
    /* `metatrain VERB --help` prints usage without MPI_Init: it works where no MPI runtime is set
     * up, and the process ends with one thread (Open MPI's threads racing process exit have crashed
     * LeakSanitizer's exit-time tracer in the sanitizer suite). */
    int help_only = argc == 3 && mt_cli_is_help(argv[2]);
    if (!mpi || help_only) {
        if (launcher_rank() != 0) return MT_EXIT_OK;
        /* One OpenBLAS thread, as train.threads defaults to: small products lose more to thread
         * hand-offs than they gain (the 4-conv predictions ran 3x slower on two threads of a busy
         * machine). OPENBLAS_NUM_THREADS, when set, decides. */
        if (!getenv("OPENBLAS_NUM_THREADS")) openblas_set_num_threads(1);
        const mt_dist alone = MT_CLI_NO_MPI;
        return run(&alone, argc - 2, argv + 2);
    }
    tune_open_mpi();
    mt_dist d;
    if (mt_dist_init(&d, &argc, &argv) != MT_OK) {
        mt_dist_finalize(&d);
        return MT_EXIT_ERROR;
    }
    int code = run(&d, argc - 2, argv + 2);
    mt_dist_finalize(&d);
    return code;
}
