/* A task cut to its rows of an embedding table (src/meta/task_rows.c) against the same task on
 * the whole table: the same meta-gradient and objective to the bit, for every algorithm, once the
 * cut meta-gradient is added back at its table rows as the reducer does; and a cut layout whose
 * size depends on the task alone, never on the table's V: the work per task does not grow with V. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fd_check.h"
#include "metatrain/meta.h"
#include "metatrain/task.h"

#define NS 6
#define NQ 5
#define T 5

/* The task shape mt_meta_rows_create reads: NS support and NQ query rows of grouped data. */
static mt_task_family family(void) {
    mt_task_family fam;
    memset(&fam, 0, sizeof fam);
    fam.kind = MT_TASK_GROUPED;
    fam.shots = NS, fam.queries = NQ;
    return fam;
}

/* A task of bags over ids [0, span) of a table of V rows, with padding and repeats. */
static void make_task(mt_task *task, float *xs, float *xq, int32_t *ls, int32_t *lq, int span, uint64_t seed) {
    mt_rng rng;
    fd_rng(&rng, seed, 1);
    float *xs_and_xq[2] = {xs, xq};
    int counts[2] = {NS, NQ};
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < counts[b] * T; i++)
            xs_and_xq[b][i] =
                i % T > 0 && mt_rng_below(&rng, 4) == 0 ? -1.0f : (float)mt_rng_below(&rng, (uint32_t)span);
    for (int i = 0; i < NS; i++) ls[i] = i % 3;
    for (int i = 0; i < NQ; i++) lq[i] = (i + 1) % 3;
    task->support = (mt_nn_batch){xs, NULL, ls, NS};
    task->query = (mt_nn_batch){xq, NULL, lq, NQ};
    task->x_support = xs, task->x_query = xq;
}

/* sum (n_meta + 1) += the task's cut vector added back at its table rows, as mt_dist_reduce adds
 * it. */
static void add_back(const mt_meta_rows *rows, const float *vec, float *sum) {
    size_t row_begin[MT_META_MAX_TENSORS + 2], out_begin[MT_META_MAX_TENSORS + 2];
    int width[MT_META_MAX_TENSORS + 2];
    int G = mt_meta_rows_groups(rows, row_begin, out_begin, width);
    const float *ids = vec + rows->layout.n_meta + MT_META_VECTOR_EXTRA;
    for (int g = 0; g < G; g++) {
        size_t len = row_begin[g + 1] - row_begin[g], D = (size_t)width[g];
        if (!D) {
            for (size_t j = 0; j < len; j++) sum[out_begin[g] + j] += vec[row_begin[g] + j];
            continue;
        }
        for (size_t i = 0; i < mt_meta_rows_ids(rows) && ids[i] >= 0; i++)
            for (size_t j = 0; j < D; j++) sum[out_begin[g] + (size_t)ids[i] * D + j] += vec[row_begin[g] + i * D + j];
    }
}

static void check_algorithm(mt_algorithm algo) {
    const char *spec = "input tokens 5, embed 80 4, linear 6, relu, linear 3, xent";
    mt_nn_net net;
    mt_meta_layout full;
    assert_int_equal(mt_nn_parse(&net, spec, "test"), MT_OK);
    mt_meta_layout_init(&full, &net, algo, 3);
    mt_task_family fam = family();
    mt_meta_rows *rows;
    if (full.traits->rates == MT_RATES_PER_PARAMETER_STEP) { /* steps × V × D rates: refused */
        assert_int_equal(mt_meta_rows_create(&rows, &full, &fam), MT_ERR_CONFIG);
        assert_non_null(strstr(mt_error_message(), "meta.algorithm"));
        return;
    }
    assert_int_equal(mt_meta_rows_create(&rows, &full, &fam), MT_OK);
    assert_int_equal(rows->capacity, 55); /* (6 + 5)·5 ids, fewer than V */
    mt_meta_ctx *whole, *cut;
    assert_int_equal(mt_meta_ctx_create(&whole, &full, NS), MT_OK);
    assert_int_equal(mt_meta_ctx_create(&cut, &rows->layout, NS), MT_OK);

    size_t n = full.n_meta, stride = mt_meta_vector_len(rows);
    double *md = calloc(n, sizeof *md);
    /* g_cut: the meta-gradient, then the objective, as the reducer's sum lays them out */
    float *meta = calloc(n, sizeof *meta), *g_whole = calloc(n, sizeof *g_whole);
    float *g_cut = calloc(n + MT_META_VECTOR_EXTRA, sizeof *g_cut);
    float *vec = calloc(stride, sizeof *vec);
    float xs[NS * T], xq[NQ * T], xs2[NS * T], xq2[NQ * T];
    int32_t ls[NS], lq[NQ];
    fd_random_params(&net, 3, md);
    for (size_t i = 0; i < full.n_theta; i++) meta[i] = (float)md[i];
    for (size_t i = 0; i < full.n_rates; i++) meta[full.n_theta + i] = 0.05f + 0.001f * (float)(i % 7);
    mt_meta_step_config sc;
    memset(&sc, 0, sizeof sc);
    sc.inner_lr = 0.3, sc.second_order = algo != MT_ALGO_FOMAML, sc.imaml_lambda = 2, sc.cg_steps = 5,
    sc.cg_tol = 1e-12;
    sc.multi_step_loss = mt_meta_traits_of(algo)->multi_step_loss;
    for (int k = 0; k < 3; k++) sc.step_weights[k] = 0.2 + 0.3 * k;

    /* Several tasks in a row, over fewer and more rows: the rows a task leaves must not leak into
     * the next. */
    int spans[] = {80, 7, 25, 3};
    for (int t = 0; t < 4; t++) {
        mt_task task, task2;
        make_task(&task, xs, xq, ls, lq, spans[t], 10 + (uint64_t)t);
        make_task(&task2, xs2, xq2, ls, lq, spans[t], 10 + (uint64_t)t);
        double obj_whole = mt_meta_task_grad(whole, &sc, meta, &task, g_whole);
        const float *at = mt_meta_rows_cut(rows, meta, &task2);
        double obj_cut = mt_meta_task_grad(cut, &sc, at, &task2, vec);
        mt_meta_rows_write_ids(rows, vec + rows->layout.n_meta + MT_META_VECTOR_EXTRA);
        memset(g_cut, 0, (n + MT_META_VECTOR_EXTRA) * sizeof *g_cut);
        add_back(rows, vec, g_cut);
        if (obj_whole != obj_cut)
            fail_msg("%s, task %d: objective %.17g whole, %.17g cut", mt_config_algorithm_name(algo), t, obj_whole,
                     obj_cut);
        for (size_t i = 0; i < n; i++)
            if (memcmp(&g_whole[i], &g_cut[i], sizeof(float)) != 0)
                fail_msg("%s, task %d: meta-gradient entry %zu is %.9g whole, %.9g cut", mt_config_algorithm_name(algo),
                         t, i, (double)g_whole[i], (double)g_cut[i]);
        /* Adaptation as eval runs it: the same query losses at every step. */
        double loss_whole[5], loss_cut[5];
        int correct_whole[5], correct_cut[5];
        make_task(&task, xs, xq, ls, lq, spans[t], 10 + (uint64_t)t);
        make_task(&task2, xs2, xq2, ls, lq, spans[t], 10 + (uint64_t)t);
        mt_meta_adapt_eval(whole, &sc, meta, &task, 4, loss_whole, correct_whole);
        mt_meta_adapt_eval(cut, &sc, mt_meta_rows_cut(rows, meta, &task2), &task2, 4, loss_cut, correct_cut);
        assert_memory_equal(loss_whole, loss_cut, sizeof loss_whole);
        assert_memory_equal(correct_whole, correct_cut, sizeof correct_whole);
    }
    printf("%-8s cut to the task's rows: the same bits as the whole table\n", mt_config_algorithm_name(algo));
    mt_meta_ctx_free(whole), mt_meta_ctx_free(cut);
    mt_meta_rows_free(rows);
    free(md), free(meta), free(g_whole), free(g_cut), free(vec);
}

static void test_cut_matches_whole(void **state) {
    (void)state;
    for (int a = 0; a < MT_ALGO_COUNT; a++) check_algorithm((mt_algorithm)a);
}

/* Everything a task computes runs in the cut layout: the same size for a table of 10^3 and of
 * 10^6 rows (the inner loop's copies, gradients, HVPs and the task's vector all scale with it),
 * while the whole layout grows a thousandfold. */
static void test_task_work_does_not_grow_with_v(void **state) {
    (void)state;
    const char *specs[] = {"input tokens 5, embed 1000 64, relu, linear 32, relu, linear 3, xent",
                           "input tokens 5, embed 1000000 64, relu, linear 32, relu, linear 3, xent"};
    size_t cut_meta[2], whole_meta[2], vector[2];
    mt_task_family fam = family();
    for (int i = 0; i < 2; i++) {
        mt_nn_net net;
        mt_meta_layout full;
        assert_int_equal(mt_nn_parse(&net, specs[i], "test"), MT_OK);
        mt_meta_layout_init(&full, &net, MT_ALGO_METASGD, 5);
        mt_meta_rows *rows;
        assert_int_equal(mt_meta_rows_create(&rows, &full, &fam), MT_OK);
        cut_meta[i] = rows->layout.n_meta;
        whole_meta[i] = full.n_meta;
        vector[i] = mt_meta_vector_len(rows);
        assert_int_equal(rows->capacity, (NS + NQ) * T);
        mt_meta_rows_free(rows);
    }
    printf("meta-parameters: %zu and %zu; a task's layout: %zu and %zu; its vector: %zu and %zu\n", whole_meta[0],
           whole_meta[1], cut_meta[0], cut_meta[1], vector[0], vector[1]);
    assert_true(whole_meta[1] > 500 * whole_meta[0]);
    assert_int_equal(cut_meta[0], cut_meta[1]);
    assert_int_equal(vector[0], vector[1]);
}

/* A network without a table runs in its own layout: the cut is the meta-parameters themselves. */
static void test_no_table_cuts_nothing(void **state) {
    (void)state;
    mt_nn_net net;
    mt_meta_layout full;
    assert_int_equal(mt_nn_parse(&net, "input 1, linear 40, relu, linear 1, mse", "test"), MT_OK);
    mt_meta_layout_init(&full, &net, MT_ALGO_MAML, 1);
    mt_task_family fam = family();
    mt_meta_rows *rows;
    if (full.traits->rates == MT_RATES_PER_PARAMETER_STEP) { /* steps × V × D rates: refused */
        assert_int_equal(mt_meta_rows_create(&rows, &full, &fam), MT_ERR_CONFIG);
        assert_non_null(strstr(mt_error_message(), "meta.algorithm"));
        return;
    }
    assert_int_equal(mt_meta_rows_create(&rows, &full, &fam), MT_OK);
    float meta[121];
    mt_task task;
    memset(&task, 0, sizeof task);
    assert_ptr_equal(mt_meta_rows_cut(rows, meta, &task), meta);
    assert_int_equal(rows->layout.n_meta, full.n_meta);
    assert_int_equal(mt_meta_rows_ids(rows), 0);
    mt_meta_rows_free(rows);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cut_matches_whole),
        cmocka_unit_test(test_task_work_does_not_grow_with_v),
        cmocka_unit_test(test_no_table_cuts_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
