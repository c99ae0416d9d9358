/* The distribution module on one rank:
 * - mt_dist_init's Open MPI tuning: the shared-memory eager limit is raised to 32 KiB unless the
 *   environment already sets it (src/dist/comm.c). MPI can start once per process, so the case
 *   with a user's value runs in a forked child before the parent starts MPI.
 * - mt_dist_reduce against its definition, entry by entry: round(v · 2^s) to nearest even, summed
 *   as integers, times 2^−s, with the shift from each group's largest exponent. The vectorized
 *   conversion (AVX-512DQ) runs here; under scripts/valgrind, which hides AVX-512, the scalar
 *   one does. Integration tests check the sums across rank counts (same_bits.sh).
 * - The node sum on one rank, alone and inside a reducer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

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

static void test_the_eager_limit_is_raised_by_default(void **state) {
    (void)state;
    unsetenv(EAGER);
    mt_dist d;
    int argc = 0;
    char **argv = NULL;
    assert_int_equal(mt_dist_init(&d, &argc, &argv), MT_OK);
    const char *value = getenv(EAGER);
    assert_non_null(value);
    assert_string_equal(value, "32768");
}

/* Groups of 19 and 18 entries (vector loop and tail), three vectors. Group 0 mixes magnitudes
 * with entries that land exactly halfway between two integers after scaling (ties, which must go
 * to even); group 1 is all zeros but one tiny entry. */
#define N 37
#define T 3
static void fill_vectors(float v[T][N]) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++) v[t][i] = (float)(sin(1.7 * i + 0.3 * t) * pow(2.0, (i * 7 + t) % 23 - 22)); /* below 1 */
    for (int i = 19; i < N; i++) v[0][i] = v[1][i] = v[2][i] = 0;
    v[1][30] = 0x1p-40f;
    v[0][0] = 3.0f; /* group 0's largest: exponent 2, shift 62 − 2 − 2 − 1 = 57 */
    v[0][5] = 3 * 0x1p-58f, v[1][5] = 5 * 0x1p-58f, v[2][5] = -3 * 0x1p-58f; /* 1.5, 2.5, −1.5 */
    v[0][6] = 0x1p-58f, v[1][6] = 7 * 0x1p-58f, v[2][6] = 0;                   /* 0.5, 3.5, 0 */
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
    assert_int_equal(mt_dist_reduce(&d, &r, &v[0][0], T, T, flags, sum, &out), MT_OK);
    assert_false(out.any_error || out.nonfinite || out.stop);
    for (int g = 0; g < 2; g++) {
        float largest = 0;
        for (int t = 0; t < T; t++)
            for (size_t i = groups[g]; i < groups[g + 1]; i++) largest = fmaxf(largest, fabsf(v[t][i]));
        int e;
        frexpf(largest, &e);
        int shift = 62 - e - 2 - 1; /* 2 = ceil(log2 3) */
        for (size_t i = groups[g]; i < groups[g + 1]; i++) {
            int64_t fixed = 0;
            for (int t = 0; t < T; t++) fixed += llrint(ldexp(v[t][i], shift));
            float want = (float)ldexp((double)fixed, -shift);
            if (sum[i] != want) fail_msg("entry %zu: %.9g, its definition gives %.9g", i, sum[i], want);
        }
    }
    /* The ties went to even: 1.5 + 2.5 − 1.5 → 2 + 2 − 2 = 2 units of 2^−57; 0.5 + 3.5 → 0 + 4. */
    assert_true(sum[5] == 0x1p-56f);
    assert_true(sum[6] == 0x1p-55f);

    /* A NaN anywhere is reported and the sum is left alone. */
    v[2][33] = NAN;
    for (int i = 0; i < N; i++) sum[i] = -1;
    assert_int_equal(mt_dist_reduce(&d, &r, &v[0][0], T, T, flags, sum, &out), MT_OK);
    assert_true(out.nonfinite);
    for (int i = 0; i < N; i++) assert_true(sum[i] == -1);
    mt_dist_reducer_free(&r);
}

/* On one rank the node sum is this rank's own vector, with no window; through a reducer it gives
 * the same bits as the plain MPI_Allreduce. The shared-memory path (several ranks per node, and
 * several nodes) is checked bit for bit against one rank by same_bits.sh and balance.sh. */
static void test_node_sum_on_one_rank(void **state) {
    (void)state;
    mt_dist d = one_rank();
    mt_dist_node_sum s;
    assert_int_equal(mt_dist_node_sum_init(&d, N, &s), MT_OK);
    assert_int_equal(s.node_size, 1);
    assert_int_equal(s.n_nodes, 1);
    assert_null(s.total);
    for (int i = 0; i < N; i++) s.own[i] = (int64_t)i * 1000003 - 17;
    const int64_t *total = mt_dist_node_sum_run(&d, &s);
    for (int i = 0; i < N; i++) assert_true(total[i] == (int64_t)i * 1000003 - 17);

    static float v[T][N], plain[N], shared[N];
    fill_vectors(v);
    size_t groups[] = {0, 19, N};
    mt_dist_reducer r_plain, r_shared, r_wrong;
    mt_dist_outcome out;
    mt_dist_flags flags = {0, 0};
    assert_int_equal(mt_dist_reducer_init(&r_plain, N, 2, groups, NULL), MT_OK);
    assert_int_equal(mt_dist_reducer_init(&r_shared, N, 2, groups, &s), MT_OK);
    assert_int_equal(mt_dist_reducer_init(&r_wrong, N - 1, 2, groups, &s), MT_ERR_ARG); /* sizes differ */
    assert_int_equal(mt_dist_reduce(&d, &r_plain, &v[0][0], T, T, flags, plain, &out), MT_OK);
    assert_int_equal(mt_dist_reduce(&d, &r_shared, &v[0][0], T, T, flags, shared, &out), MT_OK);
    assert_memory_equal(plain, shared, sizeof plain);
    mt_dist_reducer_free(&r_plain);
    mt_dist_reducer_free(&r_shared);
    mt_dist_node_sum_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_users_eager_limit_wins), /* first: it forks before MPI starts */
        cmocka_unit_test(test_the_eager_limit_is_raised_by_default),
        cmocka_unit_test(test_reduce_matches_its_definition), /* after the test that starts MPI */
        cmocka_unit_test(test_node_sum_on_one_rank),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    mt_dist d = {0};
    mt_dist_finalize(&d);
    return failed;
}
