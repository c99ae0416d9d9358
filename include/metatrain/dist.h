/* Distribution over MPI ranks: start-up, task sharding, the reproducible allreduce of
 * meta-gradients, and the handling of errors that some or all ranks see.
 *
 * Sums do not depend on the rank count: per-task meta-gradients are converted to 64-bit fixed
 * point at a scale shared by all ranks (predicted from the previous sum, or from an MPI_MAX of
 * exponents) and summed as integers, which is associative
 * (src/dist/allreduce.c describes the scales and the sum). */
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
    MPI_Comm node;  /* the ranks that share this one's memory */
    MPI_Win window; /* dynamic: two int64 counters on the node's first rank */
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

/* Collective. Text that rank 0 alone read (a config file) reaches every rank, so that ranks
 * cannot see different files. Rank 0 passes its status and, when MT_OK, its malloc'ed NUL-terminated
 * *text; every rank returns rank 0's status (rank 0 holds the message) or MT_OK with its own
 * malloc'ed copy in *text. Free *text in any case. A failed allocation on other ranks is agreed. */
mt_status mt_dist_share_text(const mt_dist *d, mt_status root_status, char **text);

/* Collective. 1 when `value` (a digest) is the same on every rank, else 0, on every rank. */
int mt_dist_same(const mt_dist *d, uint64_t value);

/* Ends the whole job from one rank after printing "metatrain: rank R: <message>". Local. */
_Noreturn void mt_dist_abort(const mt_dist *d, mt_status st);

/* Fault injection for the tests: the value of METATRAIN_INJECT when it is "POINT:R" with this
 * rank R, else NULL; the points are listed in src/dist/comm.c. Local; a getenv when unset. */
const char *mt_dist_injected(const mt_dist *d, const char *point);

/* Conditions that ride along with the reduction. */
typedef struct {
    int local_error; /* this rank failed computing its tasks */
    int stop;        /* the signal number that asked this rank to stop, or 0 */
} mt_dist_flags;

typedef struct {
    int any_error, all_error; /* some ranks / every rank failed */
    int stop;                 /* the largest stop signal number any rank saw, or 0 */
    int nonfinite;            /* some task's vector holds a NaN or infinity */
    int exact;                /* the sum took the exact path (no prediction, or one was exceeded) */
} mt_dist_outcome;

/* The node's shared workspace for the sum (src/dist/node_sum.c): the int64 sum of one vector of
 * n per rank, through shared memory within a node and one MPI_Allreduce among the nodes' first
 * ranks; and each rank's float rows (its tasks' vectors), which any rank of the node may take
 * to convert once they are published. Buffers are planned once. */
typedef struct {
    size_t n;
    MPI_Comm node, leaders; /* leaders: the nodes' first ranks; MPI_COMM_NULL on the others */
    MPI_Win window;         /* nodes of several ranks: flags, the total, slots, row states, rows */
    int node_rank, node_size, n_nodes;
    int owns_node, owns_leaders, owns_window; /* what free must release */
    int64_t *own;                             /* this rank's vector: its slot, or private memory on a node of one */
    int64_t *total;                           /* the node's total (shared), or NULL on a node of one */
    void *flags;                              /* the barriers' arrival flags (shared) */
    size_t slot_stride;                       /* int64 values from one slot to the next */
    int64_t generation;                       /* runs so far */
    int rows;                                 /* float rows per rank (0: none) */
    size_t row_len, row_stride;               /* floats per row; from one rank's first row to the next rank's */
    float *row_base;                          /* rank 0's first row; this rank's are mt_dist_node_sum_rows */
    void *row_states;                         /* per row: the round it was published (2r + 1) or taken (2r + 2) */
    size_t state_stride;                      /* row states from one rank's to the next rank's */
    double wait_s;                            /* the longest a rank waits in the node's barrier for a live rank */
    uint64_t pid_ns;                          /* this process's PID namespace (0: unknown), to trust a peer's pid */
} mt_dist_node_sum;

/* Collective. rows > 0 gives each rank `rows` float rows of row_len, shared within the node. */
mt_status mt_dist_node_sum_init(const mt_dist *d, size_t n, int rows, size_t row_len, mt_dist_node_sum *s);
/* Collective once initialized; a no-op on a zeroed one. */
void mt_dist_node_sum_free(mt_dist_node_sum *s);
/* Collective. Sums every rank's s->own (written before the call) and returns where the total
 * lies: n values, the same on every rank, valid until the next run. s->own may be rewritten as
 * soon as this returns. An MPI failure aborts the job: the node's other ranks would be waiting.
 * So does a rank of the node that does not come: at once when its process is gone, else after
 * METATRAIN_NODE_TIMEOUT seconds (default 300), naming it. */
const int64_t *mt_dist_node_sum_run(const mt_dist *d, mt_dist_node_sum *s);
/* Local. This rank's rows: row i starts at i · row_len. NULL without rows. */
float *mt_dist_node_sum_rows(const mt_dist_node_sum *s);
/* Local. Row i of this rank is final for round `round`: from now any rank of the node may take it.
 * A row already published or taken for this round is left alone. */
void mt_dist_node_sum_publish(mt_dist_node_sum *s, int i, int64_t round);
/* Local. One pass over the node's rows, this rank's first: the next one published for `round`
 * and not yet taken, now taken by this rank; NULL when the pass is over. *cursor starts at 0.
 * A row published after the pass went by is taken by its own rank, which passes after it. */
const float *mt_dist_node_sum_take(mt_dist_node_sum *s, int64_t round, int *cursor);

/* The reducer: vectors of length n split into groups (one per parameter tensor, say), each with
 * its own fixed-point scale. Buffers are planned once.
 *
 * Two paths give sums that do not depend on the rank count. Exact: an MPI_MAX of the groups'
 * exponents, then the int64 sum at scales from them. Predicted: the scales are fixed before the
 * iteration, from the exponents the previous sum reported, so a rank converts its rows as soon
 * as they are done, and a rank out of tasks converts the rows of the node's busier ranks; the
 * flags and the next prediction ride along in the one int64 sum. A row beyond its prediction
 * makes every rank redo that iteration's sum on the exact path. The predictions are part of the
 * training state: a resume restores them (mt_dist_reducer_predictions). */
typedef struct {
    size_t n;
    int n_groups;
    size_t *group_begin; /* n_groups + 1 boundaries in a vector, ascending, from 0 */
    size_t n_out;        /* the sum's length: n, or with sparse groups the tables' whole size */
    size_t *out_begin;   /* n_groups + 1: where each group starts in the sum */
    int *width;          /* n_groups: 0 for a dense group; else a table row's width D, the group
                            holding rows bound for the table rows that ids name */
    size_t ids_begin;    /* where a vector's table-row indices sit (floats, −1 after the last) */
    size_t n_ids;
    int *exponents; /* n_groups + 4, the exact path's MPI_MAX */
    int *predicted; /* n_groups: every |v| of group g is below 2^predicted[g], if have_prediction */
    int have_prediction;
    double *scales;             /* n_groups: this round's 2^shift */
    size_t sum_len;             /* int64 values summed: n, one signature per group, flags */
    int64_t *fixed;             /* sum_len, when the sum is an MPI_Allreduce over all ranks */
    mt_dist_node_sum *node_sum; /* or this, which holds the fixed-point values itself */
    int64_t round;              /* reductions so far: rows are published for the next one */
} mt_dist_reducer;

/* Local. The int64 values a reducer whose sum holds n_out values in n_groups groups sums: size
 * its node sum so. */
size_t mt_dist_reducer_sum_len(size_t n_out, int n_groups);
/* Local. group_begin has n_groups + 1 entries. node_sum: a sum of mt_dist_reducer_sum_len values
 * made beforehand, or NULL to sum with MPI_Allreduce over all ranks. */
mt_status mt_dist_reducer_init(mt_dist_reducer *r, size_t n, int n_groups, const size_t *group_begin,
                               mt_dist_node_sum *node_sum);
/* Local. The same for vectors with sparse groups (a task's rows of an embedding table,
 * src/meta/task_rows.c): group g of a vector lies at group_begin[g] and goes to out_begin[g]
 * (n_groups + 1 entries; out_begin[n_groups] = n_out) of the sum; a group with width[g] = D > 0
 * holds n_ids rows of D, row i added at table row ids[i] of its part of the sum, where ids are
 * the n_ids floats at ids_begin of the vector (ascending, −1 after the last). The sum has n_out
 * values; a group of zeros in the sum's rows no task named stays exactly zero. */
mt_status mt_dist_reducer_init_sparse(mt_dist_reducer *r, size_t n, int n_groups, const size_t *group_begin,
                                      const size_t *out_begin, const int *width, size_t ids_begin, size_t n_ids,
                                      mt_dist_node_sum *node_sum);
void mt_dist_reducer_free(mt_dist_reducer *r);
/* Local. Sets the predictions (n_groups exponents, each in [MT_DIST_EXPONENT_MIN,
 * MT_DIST_EXPONENT_MAX]) as a checkpoint holds them; NULL forgets them (the next sum is exact). */
mt_status mt_dist_reducer_set_predictions(mt_dist_reducer *r, const int64_t *exponents, int n);
#define MT_DIST_EXPONENT_MIN (-150) /* below every nonzero float */
#define MT_DIST_EXPONENT_MAX 128    /* above every finite float */
/* Local. Row `row` of this rank's vectors is final: with a node sum's shared rows, another rank
 * of the node may convert it from now on. A no-op otherwise. */
void mt_dist_reducer_publish(mt_dist_reducer *r, int row);

/* Collective. Sums vectors[i·n … (i+1)·n) over every rank's n_local vectors into sum (n_out, same
 * on every rank, bit-identical for any rank count given the same vectors and predictions), where
 * n_total is the number of vectors over all ranks. With a node sum that has rows, vectors must be
 * this rank's rows. When the outcome reports an error or a non-finite value, sum is left
 * unwritten; a stop request still completes the sum, so the iteration can finish first. */
mt_status mt_dist_reduce(const mt_dist *d, mt_dist_reducer *r, const float *vectors, int n_local, int n_total,
                         mt_dist_flags flags, float *sum, mt_dist_outcome *outcome);

#endif
