/* metatrain: the command-line entry point. Starts MPI and dispatches to a verb. */
#include "cli/cli.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static const char *usage =
    "usage: metatrain VERB [options]\n"
    "\n"
    "Distributed meta-learning (MAML and its family) with exact meta-gradients.\n"
    "\n"
    "verbs:\n"
    "  train [CONFIG] [--set section.key=value]... [--resume CKPT] [--quiet]\n"
    "  eval CKPT [--set section.key=value]... [--json]\n"
    "  info CKPT [--json]\n"
    "  bench engine|meta WORKLOAD|sgemm [--json]\n"
    "  config [CONFIG] [--set section.key=value]... | --reference\n"
    "\n"
    "Run under mpirun or srun to spread tasks over ranks; results do not depend on the rank count.\n"
    "metatrain VERB --help describes a verb; README.md lists every configuration key.\n";

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
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
    } verbs[] = {{"train", mt_cli_train}, {"eval", mt_cli_eval}, {"info", mt_cli_info}, {"bench", mt_cli_bench},
                 {"config", mt_cli_config_verb}};
    int (*run)(const mt_dist *, int, char **) = NULL;
    for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++)
        if (strcmp(argv[1], verbs[i].name) == 0) run = verbs[i].run;
    if (!run) {
        fprintf(stderr, "metatrain: unknown verb '%s'\n%s", argv[1], usage);
        return MT_EXIT_USAGE;
    }
    /* A file-size limit (ulimit -f) then makes writes fail with EFBIG, which we report and survive,
     * instead of killing the process halfway through a checkpoint. */
    signal(SIGXFSZ, SIG_IGN);
    mt_dist d;
    if (mt_dist_init(&d, &argc, &argv) != MT_OK) {
        mt_dist_finalize(&d);
        return MT_EXIT_ERROR;
    }
    int code = run(&d, argc - 2, argv + 2);
    mt_dist_finalize(&d);
    return code;
}
