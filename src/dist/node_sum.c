/* The int64 sum of one vector per rank, through the node's shared memory.
 *
 * MPI_Allreduce between two ranks of one machine copies the vector through the shared-memory
 * transport's fragments, and for the sinusoid's 14 KB that took 4.5 us of a 0.2 ms iteration.
 * Here every rank of a node writes its vector into its slot of one shared window; after a
 * barrier each rank adds its 1/K chunk of the node's slots into the shared total; after a
 * second barrier every rank reads the total where it lies. A node's first rank then adds the
 * nodes' totals with one MPI_Allreduce among the first ranks, and a third barrier publishes it.
 * Integer addition is associative, so the sum is the same bits for every layout.
 *
 * The barriers are flags in the window: a rank stores the run's generation into its own flag
 * (release) and waits until every flag of the node holds it (acquire). C11 atomics on memory
 * that two processes map are address-free where they are lock-free, as int64 is on every target
 * here. A waiting rank spins briefly, then yields the core, so that ranks oversubscribed onto
 * fewer cores still run. A rank that never comes (killed, stopped, hung) would hold the others
 * forever, and MPI cannot tell them: beside its flags each rank leaves its pid, so that a waiting
 * rank ends the job as soon as that process is gone, or after a deadline (it may be stopped or
 * hung). One set of buffers suffices: a rank rewrites its slot only after
 * passing the second barrier of the previous run, which every reader of the slot passes after
 * reading it, and a chunk of the total is rewritten only after the next run's first barrier,
 * which every reader of the total reaches after reading it.
 *
 * The window also holds each rank's float rows, its tasks' vectors, and one state per row: the
 * round it was published for (2r + 1), or taken for (2r + 2). The owner publishes a finished row
 * with a release store; a rank out of tasks takes it by compare-and-swap (acquire) and converts
 * it into its own slot. Rounds only grow, so states need no reset. The owner rewrites a row only
 * in the next round, after the sum's second barrier, which every taker reaches after reading. */
#include "metatrain/dist.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LINE 64                /* bytes: flags and slots start on their own cache lines */
#define SPINS_BEFORE_YIELD 100 /* a few microseconds of pause instructions */
#define YIELDS_PER_CHECK 256   /* a waiting rank looks at the clock and its peer about every ms */
/* The longest wait for a rank that is alive but does not come. An idle rank waits here for the
 * node's busiest one every iteration, so the default leaves room for slow tasks; a dead rank is
 * seen at once where its pid can be checked. METATRAIN_NODE_TIMEOUT=S sets another. */
#define DEFAULT_WAIT_S 300.0
enum { BARRIER_WRITTEN, BARRIER_ADDED, BARRIER_NODES_ADDED, N_BARRIERS };

typedef struct {
    _Atomic int64_t generation;
    int32_t pid, rank; /* the process and world rank that arrives here, for its waiting peers */
    uint64_t pid_ns;   /* its PID namespace: its pid means nothing in another one */
    char pad[LINE - 3 * sizeof(int64_t)];
} arrival;
_Static_assert(sizeof(arrival) == LINE, "one arrival per cache line");

static size_t round_up(size_t bytes) { return (bytes + LINE - 1) / LINE * LINE; }

static void pause_briefly(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* The word after the barriers' flags: 0, or 1 + the world rank reporting a missing peer. */
static _Atomic int64_t *reporter(const mt_dist_node_sum *s) {
    return &((arrival *)s->flags)[(size_t)N_BARRIERS * s->node_size].generation;
}

/* A waiting rank's check on the peer it waits for, `waited` seconds in: once that peer's process
 * is gone, or after s->wait_s, one waiting rank (the first to claim the report, so that one line
 * is printed) ends the job naming it. The others wait on for that abort, and end the job
 * themselves after twice the limit, should the reporter be gone too. */
static void check_peer(const mt_dist *d, const mt_dist_node_sum *s, const arrival *peer, double waited) {
    int gone = s->pid_ns && peer->pid_ns == s->pid_ns && kill(peer->pid, 0) != 0 && errno == ESRCH;
    if (!gone && waited < s->wait_s) return;
    int64_t nobody = 0;
    if (!atomic_compare_exchange_strong(reporter(s), &nobody, (int64_t)d->rank + 1) && waited < 2 * s->wait_s) return;
    mt_error_clear(); /* the message must be this one */
    if (gone)
        mt_dist_abort(
            d, MT_RAISE(MT_ERR_MPI, "rank %d (pid %d) of this node died before the sum", peer->rank, (int)peer->pid));
    mt_dist_abort(d, MT_RAISE(MT_ERR_MPI,
                              "rank %d (pid %d) of this node has not reached the sum in %.0f s: it hangs "
                              "or is stopped (METATRAIN_NODE_TIMEOUT=S sets the limit)",
                              peer->rank, (int)peer->pid, waited));
}

/* Local to the node: returns once every rank of the node has called it for this generation. */
static void node_barrier(const mt_dist *d, const mt_dist_node_sum *s, int which) {
    arrival *flags = (arrival *)s->flags + (size_t)which * s->node_size;
    atomic_store_explicit(&flags[s->node_rank].generation, s->generation, memory_order_release);
    double began = -1;
    for (int r = 0; r < s->node_size; r++)
        for (int64_t spins = 0; atomic_load_explicit(&flags[r].generation, memory_order_acquire) < s->generation;
             spins++) {
            if (spins < SPINS_BEFORE_YIELD) {
                pause_briefly();
                continue;
            }
            sched_yield();
            if ((spins - SPINS_BEFORE_YIELD) % YIELDS_PER_CHECK != YIELDS_PER_CHECK - 1) continue;
            double now = MPI_Wtime();
            if (began < 0)
                began = now;
            else
                check_peer(d, s, &flags[r], now - began);
        }
}

typedef _Atomic int64_t row_state;

static row_state *state_of(const mt_dist_node_sum *s, int rank, int row) {
    return (row_state *)s->row_states + (size_t)rank * s->state_stride + (size_t)row;
}

/* Points the rows and their states into `base` (states first) for a node of node_size ranks. */
static void place_rows(mt_dist_node_sum *s, char *base, size_t states) {
    s->row_states = base;
    s->state_stride = states / sizeof(row_state);
    s->row_base = (float *)(base + states * (size_t)s->node_size);
}

mt_status mt_dist_node_sum_init(const mt_dist *d, size_t n, int rows, size_t row_len, mt_dist_node_sum *s) {
    mt_status st = MT_OK;
    memset(s, 0, sizeof *s);
    s->n = n;
    s->rows = rows > 0 ? rows : 0;
    s->node = s->leaders = MPI_COMM_NULL;
    st = mt_dist_join_node(d, &s->node, &s->node_rank, &s->node_size);
    s->owns_node = s->node != MPI_COMM_NULL;
    if (st) goto fail;
    /* The rows each rank gets: the most any rank of the node asks for, so that every rank lays
     * out the window alike (a static split gives ranks blocks of different sizes). */
    int rc = MPI_Allreduce(MPI_IN_PLACE, &s->rows, 1, MPI_INT, MPI_MAX, s->node);
    MT_TRY(mt_dist_agree(d, rc == MPI_SUCCESS ? MT_OK : MT_RAISE(MT_ERR_MPI, "cannot agree on the node's rows")));
    s->row_len = s->rows ? row_len : 0;
    /* The nodes' first ranks, and how many nodes there are. */
    int first = s->node_rank == 0;
    rc = MPI_Comm_split(d->comm, first ? 0 : MPI_UNDEFINED, d->rank, &s->leaders);
    s->owns_leaders = rc == MPI_SUCCESS && s->leaders != MPI_COMM_NULL;
    MT_TRY(mt_dist_agree(d, rc == MPI_SUCCESS ? MT_OK : MT_RAISE(MT_ERR_MPI, "cannot group the nodes' first ranks")));
    if (MPI_Allreduce(&first, &s->n_nodes, 1, MPI_INT, MPI_SUM, d->comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Allreduce failed while counting the nodes"));

    /* Nodes may differ (a node of one rank needs no window), so every rank takes every world
     * collective and the window is the node's alone. */
    /* The flags, then one word for the rank that reports a missing peer. */
    size_t slot = round_up(n * sizeof(int64_t)), flags = ((size_t)N_BARRIERS * s->node_size + 1) * sizeof(arrival);
    size_t states = round_up((size_t)s->rows * sizeof(row_state));
    s->row_stride = round_up((size_t)s->rows * s->row_len * sizeof(float)) / sizeof(float);
    size_t rows_bytes = (states + s->row_stride * sizeof(float)) * (size_t)s->node_size;
    char *base = NULL;
    rc = MPI_SUCCESS;
    if (s->node_size > 1) {
        MPI_Aint bytes = s->node_rank == 0 ? (MPI_Aint)(flags + slot * ((size_t)s->node_size + 1) + rows_bytes) : 0;
        rc = MPI_Win_allocate_shared(bytes, LINE, MPI_INFO_NULL, s->node, &base, &s->window);
        s->owns_window = rc == MPI_SUCCESS;
        MPI_Aint size;
        int unit;
        /* A window's errors are fatal by default, whatever the communicator's handler: returned
         * codes let a failed call be named. */
        if (rc == MPI_SUCCESS) rc = MPI_Win_set_errhandler(s->window, MPI_ERRORS_RETURN);
        if (rc == MPI_SUCCESS) rc = MPI_Win_shared_query(s->window, 0, &size, &unit, &base);
    } else {
        s->own = malloc(slot + rows_bytes + LINE);
        if (!s->own)
            rc = MPI_ERR_NO_MEM;
        else
            place_rows(s, (char *)s->own + slot, states);
    }
    /* A window made on some ranks only cannot be freed collectively: mt_dist_agree aborts then. */
    if (rc != MPI_SUCCESS)
        st = s->node_size > 1 ? MT_RAISE(MT_ERR_MPI, "MPI_Win_allocate_shared of the node's sum failed")
                              : MT_RAISE(MT_ERR_NOMEM, "out of memory for the sum");
    MT_TRY(mt_dist_agree(d, st));
    if (s->node_size > 1) {
        s->flags = base;
        s->total = (int64_t *)(base + flags);
        s->own = (int64_t *)(base + flags + slot * (size_t)(s->node_rank + 1));
        s->slot_stride = slot / sizeof(int64_t);
        place_rows(s, base + flags + slot * ((size_t)s->node_size + 1), states);
        /* Each rank writes its own flags (generation 0: not arrived), rank 0 the report word;
         * the barrier below publishes them. */
        struct stat ns;
        s->pid_ns = stat("/proc/self/ns/pid", &ns) == 0 ? (uint64_t)ns.st_ino : 0;
        const char *wait = getenv("METATRAIN_NODE_TIMEOUT");
        s->wait_s = wait && atof(wait) > 0 ? atof(wait) : DEFAULT_WAIT_S;
        for (int b = 0; b < N_BARRIERS; b++) {
            arrival *mine = (arrival *)s->flags + (size_t)b * s->node_size + s->node_rank;
            atomic_init(&mine->generation, 0);
            mine->pid = (int32_t)getpid(), mine->rank = d->rank, mine->pid_ns = s->pid_ns;
        }
        if (s->node_rank == 0) atomic_init(reporter(s), 0);
    }
    for (int i = 0; i < s->rows; i++) atomic_init(state_of(s, s->node_rank, i), 0); /* never published */
    if (s->node_size > 1 && MPI_Barrier(s->node) != MPI_SUCCESS) /* the zeros are published before any run */
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Barrier on the node failed"));
    return MT_OK;
fail:
    mt_dist_node_sum_free(s);
    return st;
}

void mt_dist_node_sum_free(mt_dist_node_sum *s) {
    if (s->owns_window)
        MPI_Win_free(&s->window);
    else
        free(s->own);
    if (s->owns_leaders) MPI_Comm_free(&s->leaders);
    if (s->owns_node) MPI_Comm_free(&s->node);
    memset(s, 0, sizeof *s);
}

const int64_t *mt_dist_node_sum_run(const mt_dist *d, mt_dist_node_sum *s) {
    int64_t *total = s->own;
    if (s->node_size > 1) {
        s->generation++;
        node_barrier(d, s, BARRIER_WRITTEN);
        /* This rank's chunk of the node's total, rank 0's slot first: any order gives the same. */
        size_t begin = s->n * (size_t)s->node_rank / (size_t)s->node_size;
        size_t end = s->n * (size_t)(s->node_rank + 1) / (size_t)s->node_size;
        const int64_t *slots = s->total + s->slot_stride;
        memcpy(s->total + begin, slots + begin, (end - begin) * sizeof(int64_t));
        for (int r = 1; r < s->node_size; r++) {
            const int64_t *slot = slots + (size_t)r * s->slot_stride;
            for (size_t i = begin; i < end; i++) s->total[i] += slot[i];
        }
        node_barrier(d, s, BARRIER_ADDED);
        total = s->total;
    }
    if (s->n_nodes > 1) {
        if (s->leaders != MPI_COMM_NULL &&
            MPI_Allreduce(MPI_IN_PLACE, total, (int)s->n, MPI_INT64_T, MPI_SUM, s->leaders) != MPI_SUCCESS)
            mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Allreduce of the nodes' sums failed"));
        if (s->node_size > 1) node_barrier(d, s, BARRIER_NODES_ADDED);
    }
    return total;
}

float *mt_dist_node_sum_rows(const mt_dist_node_sum *s) {
    return s->rows ? s->row_base + (size_t)s->node_rank * s->row_stride : NULL;
}

void mt_dist_node_sum_publish(mt_dist_node_sum *s, int i, int64_t round) {
    row_state *state = state_of(s, s->node_rank, i);
    /* Only this rank moves its rows to "published", so a plain load cannot race with that. */
    if (atomic_load_explicit(state, memory_order_relaxed) < 2 * round + 1)
        atomic_store_explicit(state, 2 * round + 1, memory_order_release);
}

const float *mt_dist_node_sum_take(mt_dist_node_sum *s, int64_t round, int *cursor) {
    int node_rows = s->rows * s->node_size;
    while (*cursor < node_rows) {
        int k = (*cursor)++, rank = (s->node_rank + k / s->rows) % s->node_size, row = k % s->rows;
        row_state *state = state_of(s, rank, row);
        int64_t published = 2 * round + 1;
        if (atomic_load_explicit(state, memory_order_relaxed) == published &&
            atomic_compare_exchange_strong_explicit(state, &published, published + 1, memory_order_acquire,
                                                    memory_order_relaxed))
            return s->row_base + (size_t)rank * s->row_stride + (size_t)row * s->row_len;
    }
    return NULL;
}
