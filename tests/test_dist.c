/* The distribution module on one rank:
 * - mt_dist_init leaves Open MPI's tuning to the program: the metatrain binary raises the
 *   shared-memory eager limit in its main (src/cli/main.c); the library sets no environment
 *   variable, and a user's value stays. MPI can start once per process, so the case with a
 *   user's value runs in a forked child before the parent starts MPI.
 * - mt_dist_reduce against its definition, entry by entry: round(v · 2^s) to nearest even, summed
 *   as integers, times 2^−s, with the shift from each group's largest exponent. The vectorized
 *   conversion (AVX-512DQ) runs here; under scripts/valgrind, which hides AVX-512, the scalar
 *   one does. Integration tests check the sums across rank counts (same_bits.sh).
 * - The predicted path against its definition: the shift from the bound the previous sum
 *   predicted, the next bound from the rows' exponents, a row beyond its bound sending the sum
 *   back to the exact path, and the flags that ride along in the sum.
 * - The node sum on one rank, alone and inside a reducer, with and without its shared rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "metatrain/dist.h"

#define EAGER "OMPI_MCA_btl_vader_eager_limit"

static void test_a_users_eager_limit_wins(void **state) {
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* exit 0: kept; 2: overwritten; 3: MPI failed to start */
        setenv(EAGER, "8192", 1);
        mt_dist d;
        int argc = 0;
        char **argv = NULL;
        if (mt_dist_init(&d, &argc, &argv) != MT_OK) _exit(3);
        int kept = strcmp(getenv(EAGER), "8192") == 0;
        mt_dist_finalize(&d);
        _exit(kept ? 0 : 2);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_the_library_sets_no_eager_limit(void **state) {
    (void)state;
    unsetenv(EAGER);
    mt_dist d;
    int argc = 0;
    char **argv = NULL;
    assert_int_equal(mt_dist_init(&d, &argc, &argv), MT_OK);
    assert_null(getenv(EAGER));
}

/* Groups of 19 and 18 entries (vector loop and tail), three vectors. Group 0 mixes magnitudes
 * with entries that land exactly halfway between two integers after scaling (ties, which must go
 * to even); group 1 is all zeros but one tiny entry. */
#define N 37
#define T 3
static void fill_vectors(float v[T][N]) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++)
            v[t][i] = (float)(sin(1.7 * i + 0.3 * t) * pow(2.0, (i * 7 + t) % 23 - 22)); /* below 1 */
    for (int i = 19; i < N; i++) v[0][i] = v[1][i] = v[2][i] = 0;
    v[1][30] = 0x1p-40f;
    v[0][0] = 3.0f; /* group 0's largest: exponent 2, shift 62 − 2 − 2 − 1 = 57 */
    v[0][5] = 3 * 0x1p-58f, v[1][5] = 5 * 0x1p-58f, v[2][5] = -3 * 0x1p-58f; /* 1.5, 2.5, −1.5 */
    v[0][6] = 0x1p-58f, v[1][6] = 7 * 0x1p-58f, v[2][6] = 0;                 /* 0.5, 3.5, 0 */
}

/* MPI on this process's one rank (started by the first caller). */
static mt_dist one_rank(void) {
    mt_dist d;
    int argc = 0;
    char **argv = NULL;
    assert_int_equal(mt_dist_init(&d, &argc, &argv), MT_OK);
    assert_int_equal(d.size, 1);
    return d;
}

/* Fails unless sum[i] is, for every entry of group g, sum_t round(v[t][i] · 2^shift[g]) · 2^−shift[g]. */
static void assert_sum_is_fixed_point(float v[T][N], const size_t *groups, const int *shift, const float *sum) {
    for (int g = 0; g < 2; g++)
        for (size_t i = groups[g]; i < groups[g + 1]; i++) {
            int64_t fixed = 0;
            for (int t = 0; t < T; t++) fixed += llrint(ldexp(v[t][i], shift[g]));
            float want = (float)ldexp((double)fixed, -shift[g]);
            if (sum[i] != want) fail_msg("entry %zu: %.9g, its definition gives %.9g", i, sum[i], want);
        }
}

/* Per group of v: the largest exponent e (every |v| < 2^e), over all rows or one row t >= 0;
 * INT_MIN for zeros. */
static int largest_exponent(float v[T][N], const size_t *groups, int g, int t) {
    float largest = 0;
    for (int u = 0; u < T; u++)
        for (size_t i = groups[g]; i < groups[g + 1]; i++)
            if (t < 0 || u == t) largest = fmaxf(largest, fabsf(v[u][i]));
    int e = INT_MIN;
    if (largest > 0) frexpf(largest, &e);
    return e;
}

static void test_reduce_matches_its_definition(void **state) {
    (void)state;
    mt_dist d = one_rank();
    static float v[T][N], sum[N];
    fill_vectors(v);
    size_t groups[] = {0, 19, N};
    mt_dist_reducer r;
    assert_int_equal(mt_dist_reducer_init(&r, N, 2, groups, NULL), MT_OK);
    mt_dist_outcome out;
    mt_dist_flags flags = {0, 0};
    /* Exact: no prediction yet; the shift comes from each group's largest exponent. */
    assert_int_equal(mt_dist_reduce(&d, &r, &v[0][0], T, T, flags, sum, &out), MT_OK);
    assert_false(out.any_error || out.nonfinite || out.stop);
    assert_true(out.exact);
    int shift[2], bound[2];
    for (int g = 0; g < 2; g++) {
        shift[g] = 62 - largest_exponent(v, groups, g, -1) - 2 - 1; /* 2 = ceil(log2 3) */
        bound[g] = largest_exponent(v, groups, g, -1) + 2;          /* the headroom */
        assert_int_equal(r.predicted[g], bound[g]);
    }
    assert_sum_is_fixed_point(v, groups, shift, sum);
    /* The ties went to even: 1.5 + 2.5 − 1.5 → 2 + 2 − 2 = 2 units of 2^−57; 0.5 + 3.5 → 0 + 4. */
    assert_true(sum[5] == 0x1p-56f);
    assert_true(sum[6] == 0x1p-55f);

    /* Predicted: the shift comes from the bound; each row t signs 2^(e_t − bound + 30), and the
     * next bound is the signature's leading bit + bound − 30 + 2. */
    assert_int_equal(mt_dist_reduce(&d, &r, &v[0][0], T, T, flags, sum, &out), MT_OK);
    assert_false(out.exact || out.any_error || out.nonfinite || out.stop);
    for (int g = 0; g < 2; g++) shift[g] = 62 - bound[g] - 2 - 1;
    assert_sum_is_fixed_point(v, groups, shift, sum);
    for (int g = 0; g < 2; g++) {
        int64_t signature = 0;
        for (int t = 0; t < T; t++) {
            int e = largest_exponent(v, groups, g, t);
            if (e >= bound[g] - 30) signature += (int64_t)1 << (e - bound[g] + 30);
        }
        int leading = 0;
        while (signature >> (leading + 1)) leading++;
        int next = bound[g] - 30 + leading + 2, largest = largest_exponent(v, groups, g, -1);
        assert_int_equal(r.predicted[g], next);
        assert_true(next >= largest + 2 && next <= largest + 2 + 2); /* at most log2(T) above */
        bound[g] = next;
    }

    /* A row beyond its bound sends every rank back to the exact path, which sets the bound anew. */
    v[1][3] = 0x1p20f;
    assert_int_equal(mt_dist_reduce(&d, &r, &v[0][0], T, T, flags, sum, &out), MT_OK);
    assert_true(out.exact);
    shift[0] = 62 - 21 - 2 - 1, shift[1] = 62 - largest_exponent(v, groups, 1, -1) - 2 - 1;
    assert_sum_is_fixed_point(v, groups, shift, sum);
    assert_int_equal(r.predicted[0], 21 + 2);

    /* A stop rides along, and the sum still completes. */
    flags.stop = 15;
    for (int g = 0; g < 2; g++) shift[g] = 62 - r.predicted[g] - 2 - 1;
    assert_int_equal(mt_dist_reduce(&d, &r, &v[0][0], T, T, flags, sum, &out), MT_OK);
    assert_false(out.exact);
    assert_int_equal(out.stop, 15);
    assert_sum_is_fixed_point(v, groups, shift, sum);
    flags.stop = 0;

    /* A NaN anywhere is reported, on either path, and the sum is left alone. */
    v[2][33] = NAN;
    for (int i = 0; i < N; i++) sum[i] = -1;
    assert_int_equal(mt_dist_reduce(&d, &r, &v[0][0], T, T, flags, sum, &out), MT_OK);
    assert_true(out.nonfinite);
    assert_false(out.exact);
    assert_int_equal(mt_dist_reducer_set_predictions(&r, NULL, 0), MT_OK);
    assert_int_equal(mt_dist_reduce(&d, &r, &v[0][0], T, T, flags, sum, &out), MT_OK);
    assert_true(out.nonfinite && out.exact);
    for (int i = 0; i < N; i++) assert_true(sum[i] == -1);

    /* Predictions as a checkpoint holds them: two, within the range; anything else is refused. */
    int64_t good[2] = {5, MT_DIST_EXPONENT_MIN}, bad[2] = {5, MT_DIST_EXPONENT_MAX + 1};
    assert_int_equal(mt_dist_reducer_set_predictions(&r, good, 1), MT_ERR_ARG);
    assert_int_equal(mt_dist_reducer_set_predictions(&r, bad, 2), MT_ERR_ARG);
    assert_false(r.have_prediction);
    assert_int_equal(mt_dist_reducer_set_predictions(&r, good, 2), MT_OK);
    assert_true(r.have_prediction);
    assert_int_equal(r.predicted[0], 5);
    mt_error_clear();
    mt_dist_reducer_free(&r);
}

/* On one rank the node sum is this rank's own vector, with no window; through a reducer it gives
 * the same bits as the plain MPI_Allreduce, on both paths, and with its rows the vectors are
 * taken from them once published. The shared-memory path (several ranks per node, and several
 * nodes) is checked bit for bit against one rank by same_bits.sh and balance.sh. */
static void test_node_sum_on_one_rank(void **state) {
    (void)state;
    mt_dist d = one_rank();
    size_t len = mt_dist_reducer_sum_len(N, 2);
    mt_dist_node_sum s, rows;
    assert_int_equal(mt_dist_node_sum_init(&d, len, 0, 0, &s), MT_OK);
    assert_int_equal(s.node_size, 1);
    assert_int_equal(s.n_nodes, 1);
    assert_null(s.total);
    assert_null(mt_dist_node_sum_rows(&s));
    for (size_t i = 0; i < len; i++) s.own[i] = (int64_t)i * 1000003 - 17;
    const int64_t *total = mt_dist_node_sum_run(&d, &s);
    for (size_t i = 0; i < len; i++) assert_true(total[i] == (int64_t)i * 1000003 - 17);

    static float v[T][N], plain[N], shared[N], from_rows[N];
    fill_vectors(v);
    assert_int_equal(mt_dist_node_sum_init(&d, len, T + 1, N, &rows), MT_OK);
    float *own_rows = mt_dist_node_sum_rows(&rows);
    assert_non_null(own_rows);
    memcpy(own_rows, v, sizeof v);

    size_t groups[] = {0, 19, N};
    mt_dist_reducer r_plain, r_shared, r_rows, r_wrong;
    mt_dist_outcome out;
    mt_dist_flags flags = {0, 0};
    assert_int_equal(mt_dist_reducer_init(&r_plain, N, 2, groups, NULL), MT_OK);
    assert_int_equal(mt_dist_reducer_init(&r_shared, N, 2, groups, &s), MT_OK);
    assert_int_equal(mt_dist_reducer_init(&r_rows, N, 2, groups, &rows), MT_OK);
    assert_int_equal(mt_dist_reducer_init(&r_wrong, N - 1, 2, groups, &s), MT_ERR_ARG); /* sizes differ */
    assert_int_equal(mt_dist_reduce(&d, &r_rows, &v[0][0], T, T, flags, from_rows, &out),
                     MT_ERR_ARG); /* not its rows */
    mt_error_clear();
    for (int round = 0; round < 2; round++) { /* exact, then predicted */
        assert_int_equal(mt_dist_reduce(&d, &r_plain, &v[0][0], T, T, flags, plain, &out), MT_OK);
        assert_int_equal(out.exact, round == 0);
        assert_int_equal(mt_dist_reduce(&d, &r_shared, &v[0][0], T, T, flags, shared, &out), MT_OK);
        mt_dist_reducer_publish(&r_rows, 0); /* as the task loop does; the reduction publishes the rest */
        assert_int_equal(mt_dist_reduce(&d, &r_rows, own_rows, T, T, flags, from_rows, &out), MT_OK);
        assert_int_equal(out.exact, round == 0);
        assert_memory_equal(plain, shared, sizeof plain);
        assert_memory_equal(plain, from_rows, sizeof plain);
    }
    /* A row is taken once, only when published for this round (the reducer used rounds 0, 1). */
    int cursor = 0;
    assert_null(mt_dist_node_sum_take(&rows, 7, &cursor));
    mt_dist_node_sum_publish(&rows, 1, 7);
    cursor = 0;
    assert_null(mt_dist_node_sum_take(&rows, 6, &cursor));
    cursor = 0;
    assert_ptr_equal(mt_dist_node_sum_take(&rows, 7, &cursor), own_rows + N);
    assert_null(mt_dist_node_sum_take(&rows, 7, &cursor));
    cursor = 0;
    assert_null(mt_dist_node_sum_take(&rows, 7, &cursor));
    mt_dist_node_sum_publish(&rows, 1, 7); /* taken: stays taken */
    cursor = 0;
    assert_null(mt_dist_node_sum_take(&rows, 7, &cursor));
    mt_dist_reducer_free(&r_plain);
    mt_dist_reducer_free(&r_shared);
    mt_dist_reducer_free(&r_rows);
    mt_dist_node_sum_free(&s);
    mt_dist_node_sum_free(&rows);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_users_eager_limit_wins), /* first: it forks before MPI starts */
        cmocka_unit_test(test_the_library_sets_no_eager_limit),
        cmocka_unit_test(test_reduce_matches_its_definition), /* after the test that starts MPI */
        cmocka_unit_test(test_node_sum_on_one_rank),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    mt_dist d = {0};
    mt_dist_finalize(&d);
    return failed;
}
