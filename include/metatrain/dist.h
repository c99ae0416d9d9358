/* Distribution over MPI ranks: start-up, task sharding, the reproducible allreduce of
 * meta-gradients, and the handling of errors that some or all ranks see.
 *
 * Sums do not depend on the rank count: per-task meta-gradients are converted to 64-bit fixed
 * point at a scale shared by all ranks (from an MPI_MAX of exponents) and summed as integers,
 * which is associative (../shared/notes/reproducible-reduction.md). */
#ifndef METATRAIN_DIST_H
#define METATRAIN_DIST_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "metatrain/error.h"

typedef struct {
    MPI_Comm comm;
    int rank, size;
} mt_dist;

/* Collective over MPI_COMM_WORLD. Initializes MPI (a singleton without mpirun works too) and
 * refuses a world whose size disagrees with SLURM_NTASKS (a broken PMI starts N singletons). */
mt_status mt_dist_init(mt_dist *d, int *argc, char ***argv);
/* Collective. */
void mt_dist_finalize(mt_dist *d);

/* Tasks [begin, end) of `n_tasks` that `rank` of `size` computes: contiguous blocks, the first
 * n_tasks % size ranks taking one more. Some ranks may get none. Local. */
void mt_dist_shard(int n_tasks, int rank, int size, int *begin, int *end);

/* Collective. The ranks that share memory with this one (MPI_COMM_TYPE_SHARED), or with
 * METATRAIN_RANKS_PER_NODE=K set, groups of K consecutive ranks. Returns an MPI error code. */
int mt_dist_split_node(const mt_dist *d, MPI_Comm *node);
/* Collective. mt_dist_split_node with this rank's place in the node and the node's size, agreed:
 * all ranks succeed or all return the error. *node is MPI_COMM_NULL if the split failed here. */
mt_status mt_dist_join_node(const mt_dist *d, MPI_Comm *node, int *node_rank, int *node_size);

/* Who computes which of an iteration's tasks (src/dist/claim.c): a rank's static block, or,
 * with dynamic claiming, the next free task of its node's pooled blocks. */
typedef struct {
    MPI_Comm node;       /* the ranks that share this one's memory */
    MPI_Win window;      /* dynamic: two int64 counters on the node's first rank */
    int node_rank, node_size;
    int owns_node, owns_window, locked; /* what free must release */
    int dynamic;
    int *tasks, n_tasks; /* the tasks this rank (static) or node (dynamic) may take, ascending */
    int capacity;        /* the most tasks this rank takes in one iteration: size its buffers so */
    int taken;           /* this iteration's, so far */
} mt_dist_claimer;

/* Collective. Plans the claims of n_tasks tasks per iteration; dynamic claiming applies only to
 * nodes with more than one rank. */
mt_status mt_dist_claimer_init(const mt_dist *d, int n_tasks, int dynamic, mt_dist_claimer *c);
/* Collective once initialized (it frees a window and a communicator); a no-op on a zeroed one. */
void mt_dist_claimer_free(mt_dist_claimer *c);
/* Local. Starts an iteration's claims; every rank calls it once per iteration, and the
 * iterations must be closed by a collective over all ranks (the reduction). */
void mt_dist_claim_begin(const mt_dist *d, mt_dist_claimer *c, int64_t iteration);
/* Local. The next task this rank computes in this iteration, or -1 when there is none left for
 * it. A task returned must be computed: no other rank will take it. An MPI failure aborts. */
int mt_dist_claim(const mt_dist *d, mt_dist_claimer *c, int64_t iteration);

/* Collective agreement on a status that each rank reached on its own. Every rank failed: all
 * return it and only rank 0 reports. Only some ranks failed: each failed rank prints its
 * message naming itself and the job ends with MPI_Abort. Nobody failed: MT_OK. */
mt_status mt_dist_agree(const mt_dist *d, mt_status local);

/* Collective. For work only rank 0 does (writing a checkpoint): every rank returns rank 0's
 * status, so all stop together and rank 0 alone reports. */
mt_status mt_dist_share_status(const mt_dist *d, mt_status root_status);

/* Ends the whole job from one rank after printing "metatrain: rank R: <message>". Local. */
_Noreturn void mt_dist_abort(const mt_dist *d, mt_status st);

/* Conditions that ride along with the reduction, agreed by MPI_MAX. */
typedef struct {
    int local_error; /* this rank failed computing its tasks */
    int stop;        /* the signal number that asked this rank to stop, or 0 */
} mt_dist_flags;

typedef struct {
    int any_error, all_error; /* some ranks / every rank failed */
    int stop;                 /* the largest stop signal number any rank saw, or 0 */
    int nonfinite;            /* some task's vector holds a NaN or infinity */
} mt_dist_outcome;

/* The int64 sum of one vector of n per rank (src/dist/node_sum.c): through shared memory within
 * a node, then one MPI_Allreduce among the nodes' first ranks. Buffers are planned once. */
typedef struct {
    size_t n;
    MPI_Comm node, leaders; /* leaders: the nodes' first ranks; MPI_COMM_NULL on the others */
    MPI_Win window;         /* nodes of several ranks: barrier flags, the total, one slot per rank */
    int node_rank, node_size, n_nodes;
    int owns_node, owns_leaders, owns_window; /* what free must release */
    int64_t *own;           /* this rank's vector: its slot, or private memory on a node of one */
    int64_t *total;         /* the node's total (shared), or NULL on a node of one */
    void *flags;            /* the barriers' arrival flags (shared) */
    size_t slot_stride;     /* int64 values from one slot to the next */
    int64_t generation;     /* runs so far */
} mt_dist_node_sum;

/* Collective. */
mt_status mt_dist_node_sum_init(const mt_dist *d, size_t n, mt_dist_node_sum *s);
/* Collective once initialized; a no-op on a zeroed one. */
void mt_dist_node_sum_free(mt_dist_node_sum *s);
/* Collective. Sums every rank's s->own (written before the call) and returns where the total
 * lies: n values, the same on every rank, valid until the next run. s->own may be rewritten as
 * soon as this returns. An MPI failure aborts the job: the node's other ranks would be waiting. */
const int64_t *mt_dist_node_sum_run(const mt_dist *d, mt_dist_node_sum *s);

/* The reducer: vectors of length n split into groups (one per parameter tensor, say), each with
 * its own fixed-point scale. Buffers are planned once. */
typedef struct {
    size_t n;
    int n_groups;
    size_t *group_begin;  /* n_groups + 1 boundaries, ascending, 0 … n */
    int *exponents;       /* n_groups + 4 */
    int64_t *fixed;       /* n, when the sum is an MPI_Allreduce over all ranks */
    mt_dist_node_sum *node_sum; /* or this, which holds the fixed-point values itself */
} mt_dist_reducer;

/* Local. group_begin has n_groups + 1 entries. node_sum: a sum over n values made beforehand, or
 * NULL to sum with MPI_Allreduce over all ranks. */
mt_status mt_dist_reducer_init(mt_dist_reducer *r, size_t n, int n_groups, const size_t *group_begin,
                               mt_dist_node_sum *node_sum);
void mt_dist_reducer_free(mt_dist_reducer *r);

/* Collective. Sums vectors[i·n … (i+1)·n) over every rank's n_local vectors into sum (n, same
 * on every rank, bit-identical for any rank count given the same vectors), where n_total is the
 * number of vectors over all ranks. An MPI_MAX of exponents and flags, then the int64 sum (the
 * reducer's node sum, or MPI_SUM). When the outcome reports an error or a non-finite value, sum
 * is left unwritten; a stop request still completes the sum, so the iteration can finish first. */
mt_status mt_dist_reduce(const mt_dist *d, mt_dist_reducer *r, const float *vectors, int n_local,
                         int n_total, mt_dist_flags flags, float *sum, mt_dist_outcome *outcome);

#endif
