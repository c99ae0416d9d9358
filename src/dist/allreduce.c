/* The reproducible allreduce of per-task meta-gradients.
 *
 * Exact path:
 * 1. Each rank finds, per group, the largest binary exponent among its tasks' entries.
 * 2. MPI_Allreduce(MPI_MAX) shares them (with the error, stop and non-finite flags).
 * 3. Each entry becomes round(x · 2^s) in int64, s chosen so that the sum of n_total entries of
 *    magnitude < 2^E cannot exceed 2^62; the rank adds its tasks as integers.
 * 4. The int64 sum over all ranks: through shared memory within a node and MPI_Allreduce among
 *    nodes (node_sum.c), or MPI_Allreduce(MPI_SUM); integer addition is associative, so the sum
 *    is the same for every rank count and reduction tree. 5. One conversion back to float.
 * Entries within about 2^-30 of their group's largest keep full float precision.
 *
 * Predicted path: step 2, a collective every rank waits in until the slowest has finished its
 * last task, goes. The exponent bound P of each group is fixed before the iteration, so rows are
 * converted as they are done (by their rank, or by a rank of the node out of tasks), and what
 * step 2 carried rides along in the int64 sum as counts:
 * - each row adds 2^(e - P + W) to its group's signature word, where e is the row's exponent in
 *   the group: the signature's leading bit gives the next bound, max e ≤ P_next - H ≤ max e +
 *   log2(n_total), whatever the rank count;
 * - rows with an entry of exponent above P are counted, not added; any such row sends every
 *   rank back to the exact path for this iteration (the rows are still there), and the bound
 *   then comes from its exponents;
 * - ranks that failed or did not, rows with a NaN or infinity, and ranks stopped per signal.
 * P sits at most log2(n_total) + H above the true largest exponent, so entries within about
 * 2^-23 of their group's largest keep full float precision.
 *
 * Sparse groups: a task of a network with an embedding table carries only the table rows it
 * named (src/meta/task_rows.c), with their indices; each row is added at its table row of the
 * int64 sum. Integer addition still makes the order irrelevant, so the sum is the same as the
 * dense one, and a task's conversion costs its rows, not the table. The sum itself stays dense:
 * per iteration, 8 bytes per table entry (67 MB for 131072 x 64) go through the node's memory and
 * the MPI_Allreduce among nodes; a sparse exchange would be a later gain.
 *
 * The largest exponent is that of the largest magnitude (frexp is monotone in |x|), and scaling
 * by a power of two is exact, so the loops below need no libm call per entry.
 *
 * Why one reduction per iteration matters: on P nodes an iteration costs about ceil(B/P) tasks
 * plus this sum among the nodes, 2·log2(P)·latency + 2·(P−1)/P·bytes/bandwidth (tree latency,
 * ring bandwidth; scripts/bench-scaling models it). For the 4-conv network (0.9 MB, tasks of
 * tens of ms) that stays below 1% of an iteration at any P. For the sinusoid MLP (14 KB, tasks
 * of about 13 us, B = 25) it is a fifth to three quarters of an iteration from 8 nodes on, and
 * nodes beyond B sit idle: a second collective per iteration (the exact path's MPI_MAX) cuts its
 * modelled peak speedup by a third. Not done, deliberately: overlapping the sum with the last
 * task's reverse pass (per-tensor buckets; the scales are known beforehand) would hide at most a
 * fraction of one task, and a one-step-stale meta-gradient would hide it all but change the
 * algorithm. */
#include "metatrain/dist.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "core/kernel.h"

enum { FLAG_ERROR, FLAG_OK, FLAG_STOP, FLAG_NONFINITE, N_FLAGS };
#define NO_EXPONENT (INT_MIN / 2) /* a group of zeros */

/* The predicted path's words after the n values and the n_groups signatures: counts of ranks
 * (failed, fine, stopped by signal s) and of rows (non-finite, beyond the prediction). */
enum {
    WORD_ERROR,
    WORD_OK,
    WORD_NONFINITE,
    WORD_BEYOND,
    WORD_STOP,
    N_STOP_SIGNALS = 32,
    N_WORDS = WORD_STOP + N_STOP_SIGNALS
};
#define SIGNATURE_WINDOW 30 /* W: rows below 2^(P - W) add nothing; n_total · 2^W < 2^62 */
#define HEADROOM 2          /* H: the bound's margin over the largest exponent seen */

size_t mt_dist_reducer_sum_len(size_t n_out, int n_groups) { return n_out + (size_t)n_groups + N_WORDS; }

mt_status mt_dist_reducer_init(mt_dist_reducer *r, size_t n, int n_groups, const size_t *group_begin,
                               mt_dist_node_sum *node_sum) {
    memset(r, 0, sizeof *r);
    if (group_begin[n_groups] != n)
        return MT_RAISE(MT_ERR_ARG, "the groups cover %zu values of vectors of %zu", group_begin[n_groups], n);
    return mt_dist_reducer_init_sparse(r, n, n_groups, group_begin, group_begin, NULL, n, 0, node_sum);
}

mt_status mt_dist_reducer_init_sparse(mt_dist_reducer *r, size_t n, int n_groups, const size_t *group_begin,
                                      const size_t *out_begin, const int *width, size_t ids_begin, size_t n_ids,
                                      mt_dist_node_sum *node_sum) {
    memset(r, 0, sizeof *r);
    size_t n_out = out_begin[n_groups], sum_len = mt_dist_reducer_sum_len(n_out, n_groups);
    if (group_begin[n_groups] > ids_begin || ids_begin + n_ids > n)
        return MT_RAISE(MT_ERR_ARG, "groups to %zu and %zu indices at %zu do not fit vectors of %zu",
                        group_begin[n_groups], n_ids, ids_begin, n);
    if (node_sum && node_sum->n != sum_len)
        return MT_RAISE(MT_ERR_ARG, "the node sum holds %zu values, not %zu", node_sum->n, sum_len);
    if (node_sum && node_sum->rows && node_sum->row_len != n)
        return MT_RAISE(MT_ERR_ARG, "the node sum's rows hold %zu values, not %zu", node_sum->row_len, n);
    r->n = n;
    r->n_out = n_out;
    r->ids_begin = ids_begin;
    r->n_ids = n_ids;
    r->n_groups = n_groups;
    r->node_sum = node_sum;
    r->sum_len = sum_len;
    r->group_begin = malloc(((size_t)n_groups + 1) * sizeof *r->group_begin);
    r->out_begin = malloc(((size_t)n_groups + 1) * sizeof *r->out_begin);
    r->width = calloc((size_t)n_groups + 1, sizeof *r->width);
    r->exponents = malloc(((size_t)n_groups + N_FLAGS) * sizeof *r->exponents);
    r->predicted = malloc(((size_t)n_groups + 1) * sizeof *r->predicted);
    r->scales = malloc(((size_t)n_groups + 1) * sizeof *r->scales);
    r->fixed = node_sum ? NULL : malloc(sum_len * sizeof *r->fixed);
    if (!r->group_begin || !r->out_begin || !r->width || !r->exponents || !r->predicted || !r->scales ||
        (!node_sum && !r->fixed)) {
        mt_dist_reducer_free(r);
        return MT_RAISE(MT_ERR_NOMEM, "out of memory for the reduction buffers");
    }
    memcpy(r->group_begin, group_begin, ((size_t)n_groups + 1) * sizeof *group_begin);
    memcpy(r->out_begin, out_begin, ((size_t)n_groups + 1) * sizeof *out_begin);
    if (width) memcpy(r->width, width, (size_t)n_groups * sizeof *width);
    return MT_OK;
}

void mt_dist_reducer_free(mt_dist_reducer *r) {
    free(r->group_begin);
    free(r->out_begin);
    free(r->width);
    free(r->exponents);
    free(r->predicted);
    free(r->scales);
    free(r->fixed);
    memset(r, 0, sizeof *r);
}

static int ceil_log2(int n) {
    int bits = 0;
    while ((1LL << bits) < n) bits++;
    return bits;
}

/* The shift s for a group whose entries are below 2^E in magnitude, summed n_total times. */
static int group_shift(int exponent, int n_total) { return 62 - exponent - ceil_log2(n_total) - 1; }

/* The largest |v[i]| as its IEEE bits: for non-negative floats the bit patterns order as the
 * values do, with +inf and NaN above every finite one, and integer max vectorizes where float
 * max (NaN-aware) does not. */
MT_KERNEL static uint32_t largest_magnitude_bits(const float *restrict v, size_t n, uint32_t largest) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, v + i, sizeof bits);
        bits &= 0x7fffffffu;
        largest = bits > largest ? bits : largest;
    }
    return largest;
}

/* fixed[i] += round(v[i] · scale), rounding to nearest even; |v[i] · scale| < 2^62 and exact in
 * double, so this is llrint's value. AVX-512DQ converts eight doubles to int64 at once; the
 * compilers do not vectorize llrint, hence the intrinsics, which take the whole multiples of 8. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512dq"))) static size_t
add_fixed_avx512(int64_t *restrict fixed, const float *restrict v, size_t n, double scale) {
    __m512d s = _mm512_set1_pd(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512i q = _mm512_cvtpd_epi64(_mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(v + i)), s));
        _mm512_storeu_si512(fixed + i, _mm512_add_epi64(_mm512_loadu_si512(fixed + i), q));
    }
    return i;
}
#endif

static void add_fixed(int64_t *restrict fixed, const float *restrict v, size_t n, double scale) {
    size_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    static int have_avx512dq = -1; /* asked once */
    if (have_avx512dq < 0) have_avx512dq = __builtin_cpu_supports("avx512dq") != 0;
    if (have_avx512dq) i = add_fixed_avx512(fixed, v, n, scale);
#endif
    for (; i < n; i++) fixed[i] += llrint((double)v[i] * scale);
}

/* sum[i] = fixed[i] · unscale, through double: exact for |fixed| < 2^53, one rounding to float. */
MT_KERNEL static void from_fixed(float *restrict sum, const int64_t *restrict fixed, size_t n, double unscale) {
    for (size_t i = 0; i < n; i++) sum[i] = (float)((double)fixed[i] * unscale);
}

static int clamp_exponent(int e) {
    return e < MT_DIST_EXPONENT_MIN ? MT_DIST_EXPONENT_MIN : e > MT_DIST_EXPONENT_MAX ? MT_DIST_EXPONENT_MAX : e;
}

mt_status mt_dist_reducer_set_predictions(mt_dist_reducer *r, const int64_t *exponents, int n) {
    r->have_prediction = 0;
    if (!exponents) return MT_OK;
    if (n != r->n_groups) return MT_RAISE(MT_ERR_ARG, "%d exponents for %d groups", n, r->n_groups);
    for (int g = 0; g < n; g++)
        if (exponents[g] < MT_DIST_EXPONENT_MIN || exponents[g] > MT_DIST_EXPONENT_MAX)
            return MT_RAISE(MT_ERR_ARG, "exponent %d is %lld, outside [%d, %d]", g, (long long)exponents[g],
                            MT_DIST_EXPONENT_MIN, MT_DIST_EXPONENT_MAX);
    for (int g = 0; g < n; g++) r->predicted[g] = (int)exponents[g];
    r->have_prediction = 1;
    return MT_OK;
}

void mt_dist_reducer_publish(mt_dist_reducer *r, int row) {
    if (r->node_sum && r->node_sum->rows) mt_dist_node_sum_publish(r->node_sum, row, r->round);
}

/* The largest exponent e with |v| < 2^e over a group's largest magnitude, NO_EXPONENT for
 * zeros; *nonfinite set for a NaN or infinity. */
static int exponent_of(uint32_t largest_bits, int *nonfinite) {
    float largest;
    memcpy(&largest, &largest_bits, sizeof largest);
    *nonfinite |= !(largest <= FLT_MAX);
    int ex = NO_EXPONENT;
    if (largest > 0 && largest <= FLT_MAX) frexpf(largest, &ex);
    return ex;
}

/* This rank's sum_len int64 values, zeroed: its node sum slot, or the reducer's own buffer. */
static int64_t *zeroed_fixed(mt_dist_reducer *r) {
    int64_t *fixed = r->node_sum ? r->node_sum->own : r->fixed;
    memset(fixed, 0, r->sum_len * sizeof *fixed);
    return fixed;
}

/* The sum of every rank's `fixed` (sum_len values): the node sum's total, or in place. */
static const int64_t *sum_over_ranks(const mt_dist *d, mt_dist_reducer *r, int64_t *fixed, mt_status *st) {
    *st = MT_OK;
    if (r->node_sum) return mt_dist_node_sum_run(d, r->node_sum);
    if (MPI_Allreduce(MPI_IN_PLACE, fixed, (int)r->sum_len, MPI_INT64_T, MPI_SUM, d->comm) != MPI_SUCCESS)
        *st = MT_RAISE(MT_ERR_MPI, "MPI_Allreduce of the meta-gradient failed");
    return fixed;
}

static void from_fixed_groups(const mt_dist_reducer *r, const int64_t *total, const int *exponents, int n_total,
                              float *sum) {
    for (int g = 0; g < r->n_groups; g++) {
        double unscale = ldexp(1.0, exponents[g] == NO_EXPONENT ? 0 : -group_shift(exponents[g], n_total));
        size_t begin = r->out_begin[g];
        from_fixed(sum + begin, total + begin, r->out_begin[g + 1] - begin, unscale);
    }
}

/* fixed += group g of `row` at `scale`: dense, or each of the row's table rows at its index. */
static void add_group(const mt_dist_reducer *r, int g, const float *row, int64_t *fixed, double scale) {
    size_t begin = r->group_begin[g], len = r->group_begin[g + 1] - begin, D = (size_t)r->width[g];
    if (!D) {
        add_fixed(fixed + r->out_begin[g], row + begin, len, scale);
        return;
    }
    const float *ids = row + r->ids_begin;
    for (size_t i = 0; i < r->n_ids && ids[i] >= 0; i++)
        add_fixed(fixed + r->out_begin[g] + (size_t)ids[i] * D, row + begin + i * D, D, scale);
}

static mt_status reduce_exact(const mt_dist *d, mt_dist_reducer *r, const float *vectors, int n_local, int n_total,
                              mt_dist_flags flags, float *sum, mt_dist_outcome *outcome) {
    int G = r->n_groups, *e = r->exponents;
    int nonfinite = 0;
    for (int g = 0; g < G; g++) {
        size_t begin = r->group_begin[g], len = r->group_begin[g + 1] - begin;
        uint32_t largest_bits = 0;
        for (int t = 0; t < n_local && !flags.local_error; t++)
            largest_bits = largest_magnitude_bits(vectors + (size_t)t * r->n + begin, len, largest_bits);
        e[g] = exponent_of(largest_bits, &nonfinite);
    }
    e[G + FLAG_ERROR] = flags.local_error != 0;
    e[G + FLAG_OK] = flags.local_error == 0;
    e[G + FLAG_STOP] = flags.stop;
    e[G + FLAG_NONFINITE] = nonfinite;
    if (MPI_Allreduce(MPI_IN_PLACE, e, G + N_FLAGS, MPI_INT, MPI_MAX, d->comm) != MPI_SUCCESS)
        return MT_RAISE(MT_ERR_MPI, "MPI_Allreduce of exponents failed");
    memset(outcome, 0, sizeof *outcome);
    outcome->exact = 1;
    outcome->any_error = e[G + FLAG_ERROR];
    outcome->all_error = e[G + FLAG_ERROR] && !e[G + FLAG_OK];
    outcome->stop = e[G + FLAG_STOP];
    outcome->nonfinite = e[G + FLAG_NONFINITE];
    if (outcome->any_error || outcome->nonfinite) return MT_OK; /* a stop still completes the sum */

    int64_t *fixed = zeroed_fixed(r);
    for (int g = 0; g < G; g++) {
        if (e[g] == NO_EXPONENT) continue;
        double scale = ldexp(1.0, group_shift(e[g], n_total));
        for (int t = 0; t < n_local; t++) add_group(r, g, vectors + (size_t)t * r->n, fixed, scale);
    }
    mt_status st;
    const int64_t *total = sum_over_ranks(d, r, fixed, &st);
    if (st) return st;
    from_fixed_groups(r, total, e, n_total, sum);
    for (int g = 0; g < G; g++)
        r->predicted[g] = e[g] == NO_EXPONENT ? MT_DIST_EXPONENT_MIN : clamp_exponent(e[g] + HEADROOM);
    r->have_prediction = 1;
    return MT_OK;
}

/* Adds one row at the predicted scales: its groups beyond their bound and its non-finite
 * entries are counted instead, and each group's exponent goes into its signature. */
static void add_row_predicted(const mt_dist_reducer *r, const float *row, int64_t *fixed) {
    int G = r->n_groups;
    int64_t *signature = fixed + r->n_out, *words = signature + G;
    int nonfinite = 0;
    for (int g = 0; g < G; g++) {
        size_t begin = r->group_begin[g], len = r->group_begin[g + 1] - begin;
        int ex = exponent_of(largest_magnitude_bits(row + begin, len, 0), &nonfinite), bound = r->predicted[g];
        if (ex == NO_EXPONENT) continue;
        if (ex > bound) {
            words[WORD_BEYOND]++;
            continue;
        }
        add_group(r, g, row, fixed, r->scales[g]);
        if (ex >= bound - SIGNATURE_WINDOW) signature[g] += (int64_t)1 << (ex - (bound - SIGNATURE_WINDOW));
    }
    words[WORD_NONFINITE] += nonfinite;
}

/* *redo is set when a row went beyond its prediction: every rank sees it in the same total. */
static mt_status reduce_predicted(const mt_dist *d, mt_dist_reducer *r, const float *vectors, int n_local, int n_total,
                                  mt_dist_flags flags, float *sum, mt_dist_outcome *outcome, int *redo) {
    int G = r->n_groups;
    int64_t *fixed = zeroed_fixed(r);
    int64_t *words = fixed + r->n_out + G;
    words[WORD_ERROR] = flags.local_error != 0;
    words[WORD_OK] = flags.local_error == 0;
    if (flags.stop > 0) words[WORD_STOP + (flags.stop < N_STOP_SIGNALS ? flags.stop : N_STOP_SIGNALS - 1)] = 1;
    for (int g = 0; g < G; g++) r->scales[g] = ldexp(1.0, group_shift(r->predicted[g], n_total));

    mt_dist_node_sum *shared = r->node_sum && r->node_sum->rows ? r->node_sum : NULL;
    if (shared && !flags.local_error) {
        for (int t = 0; t < n_local; t++) mt_dist_node_sum_publish(shared, t, r->round);
        int cursor = 0;
        for (const float *row; (row = mt_dist_node_sum_take(shared, r->round, &cursor));)
            add_row_predicted(r, row, fixed);
    } else if (!flags.local_error) {
        for (int t = 0; t < n_local; t++) add_row_predicted(r, vectors + (size_t)t * r->n, fixed);
    }
    mt_status st;
    const int64_t *total = sum_over_ranks(d, r, fixed, &st);
    if (st) return st;
    const int64_t *signature = total + r->n_out, *agreed = signature + G;
    memset(outcome, 0, sizeof *outcome);
    outcome->any_error = agreed[WORD_ERROR] > 0;
    outcome->all_error = agreed[WORD_ERROR] > 0 && agreed[WORD_OK] == 0;
    for (int s = 0; s < N_STOP_SIGNALS; s++)
        if (agreed[WORD_STOP + s] > 0) outcome->stop = s;
    outcome->nonfinite = agreed[WORD_NONFINITE] > 0;
    *redo = agreed[WORD_BEYOND] > 0 && !outcome->any_error && !outcome->nonfinite;
    if (outcome->any_error || outcome->nonfinite || *redo) return MT_OK;

    from_fixed_groups(r, total, r->predicted, n_total, sum);
    for (int g = 0; g < G; g++) {
        int lowest = r->predicted[g] - SIGNATURE_WINDOW; /* rows below it signed nothing */
        int leading = signature[g] > 0 ? 63 - __builtin_clzll((unsigned long long)signature[g]) : 0;
        r->predicted[g] = clamp_exponent(lowest + leading + HEADROOM);
    }
    return MT_OK;
}

mt_status mt_dist_reduce(const mt_dist *d, mt_dist_reducer *r, const float *vectors, int n_local, int n_total,
                         mt_dist_flags flags, float *sum, mt_dist_outcome *outcome) {
    if (r->node_sum && r->node_sum->rows && n_local > 0 && vectors != mt_dist_node_sum_rows(r->node_sum))
        return MT_RAISE(MT_ERR_ARG, "the vectors are not the node sum's rows");
    mt_status st = MT_OK;
    int redo = 1;
    if (r->have_prediction) st = reduce_predicted(d, r, vectors, n_local, n_total, flags, sum, outcome, &redo);
    if (!st && redo) st = reduce_exact(d, r, vectors, n_local, n_total, flags, sum, outcome);
    r->round++;
    return st;
}
