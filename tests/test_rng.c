/* The counter-based RNG: Philox4x32-10 against the Random123 known-answer vectors, stream
 * addressing, and the distributions built on it. Statistical bounds are about 5 standard
 * deviations wide: loose enough never to flake with fixed seeds, tight enough to catch a wrong
 * scale, offset or shape. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "metatrain/rng.h"

#define N_DRAWS 100000

/* Random123's kat_vectors, philox4x32 with 10 rounds. */
static void test_philox_known_answers(void **state) {
    static const struct {
        uint32_t counter[4], key[2], expected[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof *kat; i++) {
        uint32_t out[4];
        mt_rng_philox4x32(kat[i].counter, kat[i].key, out);
        for (int j = 0; j < 4; j++) assert_int_equal(out[j], kat[i].expected[j]);
    }
}

/* The stream hands out the Philox blocks of its counter in order, four words each: the seed is the
 * key, and the counter is (block, stream, task, iteration). */
static void test_stream_is_philox_of_its_address(void **state) {
    const uint64_t seed = 0x0123456789abcdefull;
    mt_rng rng;
    mt_rng_init(&rng, seed, 7, 3, MT_RNG_STREAM_SUPPORT);
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    for (uint32_t block = 0; block < 3; block++) {
        uint32_t counter[4] = {block, MT_RNG_STREAM_SUPPORT, 3, 7}, expected[4];
        mt_rng_philox4x32(counter, key, expected);
        for (int j = 0; j < 4; j++) assert_int_equal(mt_rng_u32(&rng), expected[j]);
    }
}

static void first_words(uint64_t seed, uint32_t iteration, uint32_t task, uint32_t stream, uint32_t *out) {
    mt_rng rng;
    mt_rng_init(&rng, seed, iteration, task, stream);
    for (int i = 0; i < 8; i++) out[i] = mt_rng_u32(&rng);
}

/* Same address, same numbers (any rank can rebuild any task); any other address, other numbers. */
static void test_streams_differ_by_address(void **state) {
    const uint64_t seed = 42;
    uint32_t base[8], again[8], other[8];
    first_words(seed, 5, 2, MT_RNG_STREAM_TASK, base);
    first_words(seed, 5, 2, MT_RNG_STREAM_TASK, again);
    assert_memory_equal(base, again, sizeof base);

    const struct {
        uint64_t seed;
        uint32_t iteration, task, stream;
    } others[] = {
        {seed, 6, 2, MT_RNG_STREAM_TASK},
        {seed, 5, 3, MT_RNG_STREAM_TASK},
        {seed, 5, 2, MT_RNG_STREAM_QUERY},
        {seed + 1, 5, 2, MT_RNG_STREAM_TASK},
        {seed | (1ull << 40), 5, 2, MT_RNG_STREAM_TASK}, /* the seed's high word is used too */
        {seed, 5 | MT_RNG_EVAL_ITERATION, 2, MT_RNG_STREAM_TASK},
        {seed, 2, 5, MT_RNG_STREAM_TASK}, /* iteration and task are not interchangeable */
    };
    for (size_t i = 0; i < sizeof others / sizeof *others; i++) {
        first_words(others[i].seed, others[i].iteration, others[i].task, others[i].stream, other);
        int same = 0;
        for (int j = 0; j < 8; j++) same += other[j] == base[j];
        if (same > 1) fail_msg("address %zu shares %d of 8 words with the base stream", i, same);
    }
}

static void test_uniform_is_in_unit_interval_with_mean_half(void **state) {
    mt_rng rng;
    mt_rng_init(&rng, 1, 0, 0, MT_RNG_STREAM_TEST);
    double sum = 0, lo = 1, hi = 0;
    long below_quarter = 0, odd_lsb = 0;
    for (int i = 0; i < N_DRAWS; i++) {
        double u = mt_rng_uniform(&rng);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
        if (u < lo) lo = u;
        if (u > hi) hi = u;
        below_quarter += u < 0.25;
        odd_lsb += (uint64_t)(u * 9007199254740992.0) & 1; /* the 53rd bit is random too */
    }
    double mean = sum / N_DRAWS;
    printf("uniform: mean %.5f, min %.2e, max 1 - %.2e, P(u < 1/4) %.4f, P(lsb) %.4f\n", mean, lo, 1 - hi,
           (double)below_quarter / N_DRAWS, (double)odd_lsb / N_DRAWS);
    assert_true(fabs(mean - 0.5) < 5e-3);                             /* σ = 0.29/√N = 9e-4 */
    assert_true(fabs((double)below_quarter / N_DRAWS - 0.25) < 7e-3); /* σ = 1.4e-3 */
    assert_true(fabs((double)odd_lsb / N_DRAWS - 0.5) < 8e-3);        /* σ = 1.6e-3 */
    assert_true(lo < 1e-3 && hi > 1 - 1e-3);

    for (int i = 0; i < 1000; i++) {
        double r = mt_rng_range(&rng, -3.0, 5.0);
        assert_true(r >= -3.0 && r < 5.0);
    }
}

static void test_normal_has_mean_zero_and_unit_variance(void **state) {
    mt_rng rng;
    mt_rng_init(&rng, 2, 0, 0, MT_RNG_STREAM_TEST);
    double sum = 0, sq = 0;
    long within_one = 0;
    for (int i = 0; i < N_DRAWS; i++) {
        double z = mt_rng_normal(&rng);
        assert_true(isfinite(z));
        sum += z;
        sq += z * z;
        within_one += fabs(z) < 1;
    }
    double mean = sum / N_DRAWS, var = sq / N_DRAWS - mean * mean, p1 = (double)within_one / N_DRAWS;
    printf("normal: mean %.5f, variance %.5f, P(|z| < 1) %.4f (0.6827)\n", mean, var, p1);
    assert_true(fabs(mean) < 0.02);        /* σ = 1/√N = 3.2e-3 */
    assert_true(fabs(var - 1) < 0.03);     /* σ = √(2/N) = 4.5e-3 */
    assert_true(fabs(p1 - 0.6827) < 0.01); /* σ = 1.5e-3: the shape, not only two moments */
}

/* Pearson's χ² of `counts` against equal expected counts. */
static double chi_square(const long *counts, int bins, long total) {
    double expected = (double)total / bins, chi2 = 0;
    for (int i = 0; i < bins; i++) chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
    return chi2;
}

static void test_below_is_in_range_and_uniform(void **state) {
    mt_rng rng;
    mt_rng_init(&rng, 3, 0, 0, MT_RNG_STREAM_TEST);
    enum { BINS = 7 };
    long counts[BINS] = {0};
    for (int i = 0; i < N_DRAWS; i++) {
        uint32_t v = mt_rng_below(&rng, BINS);
        assert_true(v < BINS);
        counts[v]++;
    }
    double chi2 = chi_square(counts, BINS, N_DRAWS);
    printf("below(7): chi-square %.2f with 6 degrees of freedom\n", chi2);
    assert_true(chi2 < 30); /* p ≈ 4e-5 */

    for (int i = 0; i < 100; i++) assert_int_equal(mt_rng_below(&rng, 1), 0);

    /* n ≈ (2/3)·2^32 is where a plain modulo is most biased (values below n/2 twice as likely) and
     * where a third of all words must be rejected: the result must stay in range and even. */
    const uint32_t n = 0xAAAAAAABu;
    long lower_half = 0;
    double sum = 0;
    for (int i = 0; i < 20000; i++) {
        uint32_t v = mt_rng_below(&rng, n);
        assert_true(v < n);
        sum += v;
        lower_half += v < n / 2;
    }
    double mean = sum / 20000 / n, p_lower = lower_half / 20000.0;
    printf("below(0xAAAAAAAB): mean / n %.4f, P(v < n/2) %.4f\n", mean, p_lower);
    assert_true(fabs(mean - 0.5) < 0.012);   /* σ = 0.29/√20000 = 2e-3; modulo bias gives 0.417 */
    assert_true(fabs(p_lower - 0.5) < 0.02); /* σ = 3.5e-3; modulo bias gives 0.667 */
}

static void test_shuffle_is_a_uniform_permutation(void **state) {
    mt_rng rng;
    mt_rng_init(&rng, 4, 0, 0, MT_RNG_STREAM_TEST);
    enum { N = 100 };
    int values[N], seen[N] = {0}, moved = 0;
    for (int i = 0; i < N; i++) values[i] = i;
    mt_rng_shuffle(&rng, values, N);
    for (int i = 0; i < N; i++) {
        assert_true(values[i] >= 0 && values[i] < N);
        seen[values[i]]++;
        moved += values[i] != i;
    }
    for (int i = 0; i < N; i++) assert_int_equal(seen[i], 1);
    assert_true(moved > N / 2);

    /* All 3! orders of three items, equally often: an off-by-one in Fisher-Yates (Sattolo's
     * algorithm, or a biased index) misses orders or favours some. */
    long counts[6] = {0};
    const int trials = 60000;
    for (int t = 0; t < trials; t++) {
        int v[3] = {0, 1, 2};
        mt_rng_shuffle(&rng, v, 3);
        assert_true(v[0] != v[1] && v[1] != v[2] && v[0] != v[2]);
        counts[v[0] * 2 + (v[1] > v[2])]++; /* first item and the order of the other two */
    }
    double chi2 = chi_square(counts, 6, trials);
    printf("shuffle of 3: chi-square %.2f with 5 degrees of freedom\n", chi2);
    assert_true(chi2 < 28); /* p ≈ 4e-5 */

    int one = 5;
    mt_rng_shuffle(&rng, &one, 1);
    assert_int_equal(one, 5);
    mt_rng_shuffle(&rng, NULL, 0);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep printed errors in order with cmocka's stderr */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_philox_known_answers),
        cmocka_unit_test(test_stream_is_philox_of_its_address),
        cmocka_unit_test(test_streams_differ_by_address),
        cmocka_unit_test(test_uniform_is_in_unit_interval_with_mean_half),
        cmocka_unit_test(test_normal_has_mean_zero_and_unit_variance),
        cmocka_unit_test(test_below_is_in_range_and_uniform),
        cmocka_unit_test(test_shuffle_is_a_uniform_permutation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
