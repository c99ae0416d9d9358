/* MPI start-up, sharding, and the two kinds of error: those every rank sees end all ranks
 * cleanly with one message from rank 0; those only some ranks see end the job with MPI_Abort. */
#include "metatrain/dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mt_status mt_dist_init(mt_dist *d, int *argc, char ***argv) {
    int initialized = 0;
    memset(d, 0, sizeof *d);
    MPI_Initialized(&initialized);
    if (!initialized && MPI_Init(argc, argv) != MPI_SUCCESS) return MT_RAISE(MT_ERR_MPI, "MPI_Init failed");
    d->comm = MPI_COMM_WORLD;
    /* Errors come back as codes so that we can name what failed; we abort ourselves. */
    MPI_Comm_set_errhandler(d->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(d->comm, &d->rank);
    MPI_Comm_size(d->comm, &d->size);

    /* srun with a broken PMI starts N singletons that each think they are alone. Under mpirun
     * (OMPI_COMM_WORLD_SIZE set) Slurm's counts describe the daemons, not the ranks. */
    const char *ntasks = getenv("SLURM_NTASKS"), *procid = getenv("SLURM_PROCID");
    if (ntasks && procid && !getenv("OMPI_COMM_WORLD_SIZE") && atoi(ntasks) != d->size) {
        mt_status st = MT_RAISE(MT_ERR_MPI,
                                "SLURM_NTASKS=%s but the MPI world has %d rank%s: srun did not connect the "
                                "ranks (try srun --mpi=pmix, or check 'srun --mpi=list')",
                                ntasks, d->size, d->size == 1 ? "" : "s");
        if (atoi(procid) == 0) fprintf(stderr, "metatrain: error: %s\n", mt_error_message());
        return st;
    }
    return MT_OK;
}

void mt_dist_finalize(mt_dist *d) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

void mt_dist_shard(int n_tasks, int rank, int size, int *begin, int *end) {
    int base = n_tasks / size, extra = n_tasks % size;
    *begin = rank * base + (rank < extra ? rank : extra);
    *end = *begin + base + (rank < extra ? 1 : 0);
}

/* METATRAIN_RANKS_PER_NODE=K groups world ranks 0..K-1, K..2K-1, ... instead of by machine, so
 * that the tests can run layouts of several nodes, some with a single rank, on one machine. */
int mt_dist_split_node(const mt_dist *d, MPI_Comm *node) {
    const char *k = getenv("METATRAIN_RANKS_PER_NODE");
    if (k && atoi(k) > 0) return MPI_Comm_split(d->comm, d->rank / atoi(k), d->rank, node);
    return MPI_Comm_split_type(d->comm, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, node);
}

mt_status mt_dist_join_node(const mt_dist *d, MPI_Comm *node, int *node_rank, int *node_size) {
    *node = MPI_COMM_NULL;
    int rc = mt_dist_split_node(d, node);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(*node, node_rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(*node, node_size);
    return mt_dist_agree(d, rc == MPI_SUCCESS ? MT_OK : MT_RAISE(MT_ERR_MPI, "cannot group the ranks by node"));
}

_Noreturn void mt_dist_abort(const mt_dist *d, mt_status st) {
    fprintf(stderr, "metatrain: rank %d: error: %s\n", d->rank,
            mt_error_message()[0] ? mt_error_message() : mt_status_name(st));
    fflush(stderr);
    MPI_Abort(d->comm, 1);
    exit(1); /* MPI_Abort does not return; this satisfies _Noreturn */
}

mt_status mt_dist_agree(const mt_dist *d, mt_status local) {
    int failed[2] = {local != MT_OK, local == MT_OK}; /* any failed, any succeeded */
    if (MPI_Allreduce(MPI_IN_PLACE, failed, 2, MPI_INT, MPI_MAX, d->comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Allreduce failed while agreeing on an error"));
    if (!failed[0]) return MT_OK;
    if (failed[1]) { /* only some ranks failed: the others cannot go on, and cannot be told why */
        if (local != MT_OK) mt_dist_abort(d, local);
        MPI_Barrier(d->comm); /* wait for the failing rank's MPI_Abort */
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "another rank failed"));
    }
    return local;
}

mt_status mt_dist_share_status(const mt_dist *d, mt_status root_status) {
    int code = (int)root_status;
    if (MPI_Bcast(&code, 1, MPI_INT, 0, d->comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Bcast of a status failed"));
    if (code != MT_OK && d->rank != 0) return MT_RAISE((mt_status)code, "rank 0 failed");
    return (mt_status)code;
}

mt_status mt_dist_share_text(const mt_dist *d, mt_status root_status, char **text) {
    size_t len = d->rank == 0 && root_status == MT_OK ? strlen(*text) : 0;
    if (len > INT_MAX) root_status = MT_RAISE(MT_ERR_ARG, "a text of %zu bytes is too long to broadcast", len);
    int64_t head[2] = {root_status, (int64_t)len}; /* rank 0's status, and the text's length */
    if (MPI_Bcast(head, 2, MPI_INT64_T, 0, d->comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Bcast of a text's length failed"));
    if (head[0] != MT_OK) {
        if (d->rank == 0) return root_status;
        return MT_RAISE((mt_status)head[0], "rank 0 failed");
    }
    mt_status st = MT_OK;
    if (d->rank != 0 && !(*text = malloc((size_t)head[1] + 1)))
        st = MT_RAISE(MT_ERR_NOMEM, "out of memory for %lld bytes of text from rank 0", (long long)head[1]);
    if ((st = mt_dist_agree(d, st))) return st;
    if (MPI_Bcast(*text, (int)head[1], MPI_CHAR, 0, d->comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Bcast of a text failed"));
    (*text)[head[1]] = '\0';
    return MT_OK;
}

int mt_dist_same(const mt_dist *d, uint64_t value) {
    uint64_t v[2] = {value, ~value}; /* the largest value, and the complement of the smallest */
    if (MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_UINT64_T, MPI_MAX, d->comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Allreduce failed while comparing the ranks' data"));
    return v[0] == ~v[1];
}

/* Fault injection, so that the tests (tests/integration/one_rank_failures.sh) can make one rank
 * alone fail where only it would see the failure: METATRAIN_INJECT=POINT:R fails rank R at POINT,
 *   config      reading CONFIG (rank 0 reads it) or parsing the text rank 0 sent (other ranks)
 *   checkpoint  reading the checkpoint (eval; train --resume)
 *   evaluator   allocating eval's evaluator
 *   output_dir  creating output.dir (rank 0 alone does)
 *   dataset     reading task.path: R opens a file that does not exist (a node's first rank
 *               alone reads it, src/task/dataset.c)
 *   die, hang   R raises SIGKILL or SIGSTOP in train's second iteration, before the sum
 * Compiled in always: unset, it costs a getenv at each of these points, none per iteration. */
const char *mt_dist_injected(const mt_dist *d, const char *point) {
    const char *value = getenv("METATRAIN_INJECT");
    size_t n = strlen(point);
    if (!value || strncmp(value, point, n) != 0 || value[n] != ':') return NULL;
    char *end;
    long rank = strtol(value + n + 1, &end, 10);
    return end != value + n + 1 && *end == '\0' && rank == d->rank ? value : NULL;
}
