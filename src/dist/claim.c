/* Which rank computes which task of an iteration.
 *
 * Static: each rank takes its contiguous block (mt_dist_shard). Dynamic: the ranks of one node
 * pool their blocks, and each rank takes the node's next task from a shared counter whenever it
 * finishes one, so a rank slowed by another process, an interrupt or a busier core does fewer
 * tasks instead of holding the others at the allreduce. Nodes keep their static blocks: a
 * counter across nodes would need remote atomics and a progress engine. Either way every task
 * is computed exactly once and its vector depends only on (seed, iteration, task index), and
 * the fixed-point sum does not depend on who added what, so the results are the same bits.
 *
 * The node's first rank holds two counters, one per iteration parity. Iteration i uses counter
 * i % 2 and, at its start, the node's first rank zeroes counter (i + 1) % 2. That counter was
 * last used in iteration i - 1, which every rank finished claiming before it entered that
 * iteration's allreduce, and it is next used in iteration i + 1, which no rank starts before
 * this rank has entered iteration i's allreduce. So the allreduces that close every iteration
 * are the only synchronization the counters need. */
#include "metatrain/dist.h"

#include <stdlib.h>
#include <string.h>

static int ascending(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Appends world rank `rank`'s static block to c->tasks. */
static void append_block(const mt_dist *d, mt_dist_claimer *c, int n_tasks, int rank) {
    int begin, end;
    mt_dist_shard(n_tasks, rank, d->size, &begin, &end);
    for (int t = begin; t < end; t++) c->tasks[c->n_tasks++] = t;
}

/* The union of the static blocks of this node's ranks, ascending, into c->tasks. Local. */
static mt_status node_tasks(const mt_dist *d, mt_dist_claimer *c, int n_tasks) {
    mt_status st = MT_OK;
    MPI_Group world = MPI_GROUP_NULL, node = MPI_GROUP_NULL;
    int *members = malloc((size_t)c->node_size * sizeof *members),
        *world_ranks = malloc((size_t)c->node_size * sizeof *world_ranks);
    if (!members || !world_ranks) MT_THROW(MT_ERR_NOMEM, "out of memory for the task list");
    for (int i = 0; i < c->node_size; i++) members[i] = i;
    if (MPI_Comm_group(c->node, &node) != MPI_SUCCESS || MPI_Comm_group(d->comm, &world) != MPI_SUCCESS ||
        MPI_Group_translate_ranks(node, c->node_size, members, world, world_ranks) != MPI_SUCCESS)
        MT_THROW(MT_ERR_MPI, "cannot map the node's ranks to MPI_COMM_WORLD's");
    for (int i = 0; i < c->node_size; i++) append_block(d, c, n_tasks, world_ranks[i]);
    qsort(c->tasks, (size_t)c->n_tasks, sizeof *c->tasks, ascending);
fail:
    if (node != MPI_GROUP_NULL) MPI_Group_free(&node);
    if (world != MPI_GROUP_NULL) MPI_Group_free(&world);
    free(members);
    free(world_ranks);
    return st;
}

/* Local: every rank gets the same verdict except for allocations and MPI calls, which the
 * caller agrees on before the window (collective) is made. */
static mt_status plan(const mt_dist *d, mt_dist_claimer *c, int n_tasks, int dynamic) {
    mt_status st = MT_OK;
    c->dynamic = dynamic && c->node_size > 1;
    c->n_tasks = 0;
    c->tasks = malloc((size_t)(n_tasks > 0 ? n_tasks : 1) * sizeof *c->tasks);
    if (!c->tasks) MT_THROW(MT_ERR_NOMEM, "out of memory for the task list");
    if (!c->dynamic) {
        append_block(d, c, n_tasks, d->rank);
        c->capacity = c->n_tasks;
        return MT_OK;
    }
    MT_TRY(node_tasks(d, c, n_tasks));
    /* Twice a fair share bounds the vector buffer; the node's ranks together can still take
     * every task (node_size · 2 · ceil(n / node_size) >= n). */
    int share = (c->n_tasks + c->node_size - 1) / c->node_size;
    c->capacity = 2 * share < c->n_tasks ? 2 * share : c->n_tasks;
    return MT_OK;
fail:
    return st;
}

mt_status mt_dist_claimer_init(const mt_dist *d, int n_tasks, int dynamic, mt_dist_claimer *c) {
    mt_status st = MT_OK;
    memset(c, 0, sizeof *c);
    st = mt_dist_join_node(d, &c->node, &c->node_rank, &c->node_size);
    c->owns_node = c->node != MPI_COMM_NULL;
    if (st) goto fail;
    MT_TRY(mt_dist_agree(d, plan(d, c, n_tasks, dynamic)));

    /* Nodes may differ (a node of one rank claims statically), so every step below that is
     * collective over all ranks is taken by all ranks; the window is the node's alone. */
    int64_t *counters = NULL;
    int rc = MPI_SUCCESS;
    if (c->dynamic)
        rc = MPI_Win_allocate_shared(c->node_rank == 0 ? (MPI_Aint)(2 * sizeof(int64_t)) : 0, sizeof(int64_t),
                                     MPI_INFO_NULL, c->node, &counters, &c->window);
    c->owns_window = c->dynamic && rc == MPI_SUCCESS;
    /* A window's calls abort the job by default (MPI_ERRORS_ARE_FATAL, whatever the
     * communicator's handler): returned codes let mt_dist_claim name the call that failed. */
    if (c->owns_window) rc = MPI_Win_set_errhandler(c->window, MPI_ERRORS_RETURN);
    /* A window made on some ranks only cannot be freed collectively: mt_dist_agree aborts then. */
    MT_TRY(mt_dist_agree(d, rc == MPI_SUCCESS ? MT_OK : MT_RAISE(MT_ERR_MPI, "cannot make the task counters' window")));
    if (c->dynamic) {
        if (c->node_rank == 0) counters[0] = counters[1] = 0;
        /* One passive epoch for the whole run; the node's barrier below publishes the zeros. */
        rc = MPI_Win_lock_all(MPI_MODE_NOCHECK, c->window);
        c->locked = rc == MPI_SUCCESS;
        if (rc == MPI_SUCCESS) rc = MPI_Win_sync(c->window);
    }
    MT_TRY(mt_dist_agree(d, rc == MPI_SUCCESS ? MT_OK : MT_RAISE(MT_ERR_MPI, "MPI_Win_lock_all failed")));
    if (c->dynamic && (MPI_Barrier(c->node) != MPI_SUCCESS || MPI_Win_sync(c->window) != MPI_SUCCESS))
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Barrier on the node failed"));
    return MT_OK;
fail:
    mt_dist_claimer_free(c);
    return st;
}

void mt_dist_claimer_free(mt_dist_claimer *c) {
    if (c->locked) MPI_Win_unlock_all(c->window);
    if (c->owns_window) MPI_Win_free(&c->window);
    if (c->owns_node) MPI_Comm_free(&c->node);
    free(c->tasks);
    memset(c, 0, sizeof *c);
}

void mt_dist_claim_begin(const mt_dist *d, mt_dist_claimer *c, int64_t iteration) {
    c->taken = 0;
    if (!c->dynamic || c->node_rank != 0) return;
    int64_t zero = 0;
    MPI_Aint next = (MPI_Aint)((iteration + 1) & 1);
    if (MPI_Accumulate(&zero, 1, MPI_INT64_T, 0, next, 1, MPI_INT64_T, MPI_REPLACE, c->window) != MPI_SUCCESS ||
        MPI_Win_flush(0, c->window) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Accumulate on the task counter failed"));
}

int mt_dist_claim(const mt_dist *d, mt_dist_claimer *c, int64_t iteration) {
    if (c->taken >= c->capacity) return -1;
    int64_t k = c->taken;
    if (c->dynamic) {
        const int64_t one = 1;
        if (MPI_Fetch_and_op(&one, &k, MPI_INT64_T, 0, (MPI_Aint)(iteration & 1), MPI_SUM, c->window) != MPI_SUCCESS ||
            MPI_Win_flush(0, c->window) != MPI_SUCCESS)
            mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Fetch_and_op on the task counter failed"));
    }
    if (k >= c->n_tasks) return -1;
    c->taken++;
    return c->tasks[k];
}
