/* The configuration module: defaults, INI parsing and its errors, --set, validation, the
 * format → parse round trip, the resume check and the README reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metatrain/config.h"

static char tmp_dir[] = "/tmp/test_config.XXXXXX";
static char tmp_path[256]; /* the file the last load_text read */

static int make_dir(void **state) { return mkdtemp(tmp_dir) ? 0 : -1; }
static int remove_dir(void **state) { return rmdir(tmp_dir); }

/* Clears the error left by the previous case: the error module keeps only the first message. */
static int clear_error(void **state) {
    mt_error_clear();
    return 0;
}

/* Writes `text` to tmp_dir/name, loads it over cfg and removes the file. */
static mt_status load_text(mt_config *cfg, const char *name, const char *text) {
    snprintf(tmp_path, sizeof tmp_path, "%s/%s", tmp_dir, name);
    FILE *f = fopen(tmp_path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    mt_status st = mt_config_load(cfg, tmp_path);
    assert_int_equal(unlink(tmp_path), 0);
    return st;
}

static void assert_contains(const char *haystack, const char *needle) {
    if (!strstr(haystack, needle)) fail_msg("'%s' does not contain '%s'", haystack, needle);
}

/* Loads a bad file: it fails with MT_ERR_CONFIG, names the file, the line and the key, and
 * leaves cfg untouched. */
static void expect_file_error(const char *text, int line, const char *key) {
    mt_config cfg, before;
    char where[32];
    mt_config_defaults(&cfg);
    before = cfg;
    mt_error_clear();
    assert_int_equal(load_text(&cfg, "bad.ini", text), MT_ERR_CONFIG);
    const char *msg = mt_error_message();
    assert_contains(msg, tmp_path);
    snprintf(where, sizeof where, "bad.ini:%d: ", line);
    assert_contains(msg, where);
    assert_contains(msg, key);
    assert_null(strchr(msg, '\n'));
    assert_memory_equal(&cfg, &before, sizeof cfg);
    mt_error_clear();
}

static void test_defaults(void **state) {
    mt_config c;
    mt_config_defaults(&c);
    assert_string_equal(mt_error_message(), "");
    assert_true(c.seed == 1);
    assert_int_equal(c.iterations, 1000);
    assert_int_equal(c.meta_batch, 25);
    assert_int_equal(c.checkpoint_every, 1000);
    assert_int_equal(c.keep_checkpoints, 0);
    assert_int_equal(c.log_every, 100);
    assert_int_equal(c.resume, 0);
    assert_int_equal(c.threads, 1);
    assert_string_equal(c.output_dir, "runs/default");
    assert_int_equal(c.algorithm, MT_ALGO_MAML);
    assert_int_equal(c.inner_steps, 1);
    assert_true(c.inner_lr == 0.01);
    assert_true(c.outer_lr == 0.001);
    assert_int_equal(c.optimizer, MT_OPT_ADAM);
    assert_true(c.momentum == 0.9 && c.beta1 == 0.9 && c.beta2 == 0.999 && c.adam_eps == 1e-8);
    assert_true(c.clip_norm == 0);
    assert_int_equal(c.first_order_iterations, 0);
    assert_int_equal(c.msl_iterations, 0);
    assert_true(c.min_outer_lr == 0);
    assert_int_equal(c.outer_lr_schedule, MT_SCHEDULE_ALGORITHM);
    assert_true(c.imaml_lambda == 1.0);
    assert_int_equal(c.cg_steps, 10);
    assert_true(c.cg_tol == 1e-10);
    assert_int_equal(c.task_kind, MT_TASK_SINUSOID);
    assert_int_equal(c.shots, 10);
    assert_int_equal(c.queries, 10);
    assert_int_equal(c.ways, 1);
    assert_string_equal(c.task_path, "");
    assert_string_equal(c.model_spec, "input 1, linear 40, relu, linear 40, relu, linear 1, mse");
    assert_int_equal(c.eval_tasks, 600);
    /* Evaluation tasks do not follow train.seed: runs of several seeds are scored on one set. */
    assert_int_equal(c.eval_seed, 1);
    assert_true(c.head_init_scale == 1.0);
    assert_int_equal(c.eval_steps, 0);
    assert_int_equal(c.eval_queries, 0);
    assert_int_equal(c.eval_split, MT_SPLIT_TEST);
    assert_int_equal(c.eval_every, 0);
    assert_int_equal(c.eval_val_tasks, 100);
    assert_int_equal(mt_config_validate(&c), MT_OK);
    assert_string_equal(mt_config_algorithm_name(MT_ALGO_IMAML), "imaml");
    assert_string_equal(mt_config_optimizer_name(MT_OPT_SGD), "sgd");
    assert_string_equal(mt_config_task_kind_name(MT_TASK_GROUPED), "grouped");
    assert_string_equal(mt_config_split_name(MT_SPLIT_VAL), "val");
}

static void test_good_file(void **state) {
    mt_config c;
    mt_config_defaults(&c);
    const char *text = "; a comment\n"
                       "# another\n"
                       "[train]\n"
                       "seed = 18446744073709551615\n"
                       "iterations=20   ; inline comment\n"
                       "resume = yes\r\n"
                       "threads: 4\n"
                       "\n"
                       "[output]\n"
                       "dir = runs/omniglot 5-way\n"
                       "[meta]\n"
                       "algorithm = mamlpp\n"
                       "inner_steps = 5\n"
                       "inner_lr = 0.4\n"
                       "outer_lr = 1e-3\n"
                       "min_outer_lr = 1e-5\n"
                       "outer_lr_schedule = constant\n"
                       "optimizer = sgd\n"
                       "lambda = 2.5\n"
                       "[task]\n"
                       "kind = episodes\n"
                       "ways = 5\n"
                       "shots = 1\n"
                       "path = data/omniglot.h5\n"
                       "[eval]\n"
                       "split = val\n"
                       "steps = 10\n";
    assert_int_equal(load_text(&c, "good.ini", text), MT_OK);
    assert_true(c.seed == UINT64_MAX);
    assert_int_equal(c.iterations, 20);
    assert_int_equal(c.resume, 1);
    assert_int_equal(c.threads, 4);
    assert_string_equal(c.output_dir, "runs/omniglot 5-way");
    assert_int_equal(c.algorithm, MT_ALGO_MAMLPP);
    assert_int_equal(c.inner_steps, 5);
    assert_true(c.inner_lr == 0.4);
    assert_true(c.outer_lr == 1e-3);
    assert_true(c.min_outer_lr == 1e-5);
    assert_int_equal(c.outer_lr_schedule, MT_SCHEDULE_CONSTANT);
    assert_int_equal(c.optimizer, MT_OPT_SGD);
    assert_true(c.imaml_lambda == 2.5);
    assert_int_equal(c.task_kind, MT_TASK_EPISODES);
    assert_int_equal(c.ways, 5);
    assert_int_equal(c.shots, 1);
    assert_string_equal(c.task_path, "data/omniglot.h5");
    assert_int_equal(c.eval_split, MT_SPLIT_VAL);
    assert_int_equal(c.eval_steps, 10);
    assert_int_equal(c.meta_batch, 25); /* untouched keys keep their values */
    assert_int_equal(mt_config_validate(&c), MT_OK);

    /* A second file overrides the first; a key may appear once per file. */
    assert_int_equal(load_text(&c, "more.ini", "[train]\niterations = 30\n"), MT_OK);
    assert_int_equal(c.iterations, 30);
    assert_true(c.inner_lr == 0.4);
}

static void test_bools(void **state) {
    const char *yes[] = {"true", "yes", "on", "1", "TRUE"}, *no[] = {"false", "no", "off", "0", "No"};
    char text[64];
    mt_config c;
    mt_config_defaults(&c);
    for (int i = 0; i < 5; i++) {
        snprintf(text, sizeof text, "[train]\nresume = %s\n", yes[i]);
        assert_int_equal(load_text(&c, "b.ini", text), MT_OK);
        assert_int_equal(c.resume, 1);
        snprintf(text, sizeof text, "[train]\nresume = %s\n", no[i]);
        assert_int_equal(load_text(&c, "b.ini", text), MT_OK);
        assert_int_equal(c.resume, 0);
    }
}

static void test_file_errors(void **state) {
    expect_file_error("[meta]\ninner_lr = 0.1\ninner_lrr = 0.2\n", 3, "meta.inner_lrr");
    expect_file_error("[meta]\nseed = 5\n", 2, "train.seed"); /* suggests the right section */
    expect_file_error("[train]\nseed = 3\n\n[trian]\niterations = 5\n", 5, "trian.iterations");
    expect_file_error("[train]\nseed = 3\n[bogus]\n; nothing in it\n", 3, "[bogus]");
    expect_file_error("seed = 3\n", 1, "seed");
    expect_file_error("[train]\niterations = many\n", 2, "train.iterations");
    expect_file_error("[train]\niterations = 10x\n", 2, "train.iterations");
    expect_file_error("[train]\niterations = 1.5\n", 2, "train.iterations");
    expect_file_error("[train]\niterations =\n", 2, "train.iterations");
    expect_file_error("[train]\niterations = 99999999999999999999\n", 2, "train.iterations");
    expect_file_error("[train]\niterations = 3000000000\n", 2, "train.iterations");
    expect_file_error("[train]\niterations = -1\n", 2, "train.iterations");
    expect_file_error("[train]\nmeta_batch = 65537\n", 2, "train.meta_batch");
    expect_file_error("[train]\nseed = -1\n", 2, "train.seed");
    expect_file_error("[train]\nseed = 18446744073709551616\n", 2, "train.seed");
    expect_file_error("[train]\nresume = maybe\n", 2, "train.resume");
    expect_file_error("[meta]\ninner_steps = 257\n", 2, "meta.inner_steps");
    expect_file_error("[meta]\n\ninner_lr = -0.1\n", 3, "meta.inner_lr: must be > 0, got -0.1");
    expect_file_error("[meta]\ninner_lr = 0\n", 2, "meta.inner_lr");
    expect_file_error("[meta]\ninner_lr = 0.1abc\n", 2, "meta.inner_lr");
    expect_file_error("[meta]\ninner_lr = nan\n", 2, "meta.inner_lr");
    expect_file_error("[meta]\nouter_lr = 1e999\n", 2, "meta.outer_lr");
    expect_file_error("[meta]\nbeta2 = 1\n", 2, "meta.beta2");
    expect_file_error("[meta]\nalgorithm = mml\n", 2, "meta.algorithm: must be one of maml, fomaml");
    expect_file_error("[eval]\nsplit = testing\n", 2, "eval.split");
    expect_file_error("[output]\ndir =\n", 2, "output.dir");
    expect_file_error("[meta]\ninner_lr = 0.1\nouter_lr = 0.01\ninner_lr = 0.2\n", 4, "meta.inner_lr");
    expect_file_error("[meta]\ninner_lr = 0.1\nouter_lr = 0.01\ninner_lr = 0.2\n", 4, "line 2");
    expect_file_error("[train]\nseed = 1\njunk\n", 3, "");
    expect_file_error("[train\nseed = 1\n", 1, "");

    char text[400];
    snprintf(text, sizeof text, "[train]\nseed = 2\n[model]\nspec = input 1, %0250d\n", 7);
    expect_file_error(text, 4, "model.spec");
    snprintf(text, sizeof text, "[model]\nspec = input 1,\n    %0250d\n", 7);
    expect_file_error(text, 3, "model.spec");
    /* A line of exactly the limit is fine. */
    snprintf(text, sizeof text, "[output]\ndir = %0*d\n", 197 - 6, 7);
    mt_config c;
    mt_config_defaults(&c);
    assert_int_equal(load_text(&c, "edge.ini", text), MT_OK);
    assert_int_equal(strlen(c.output_dir), 197 - 6);
    snprintf(text, sizeof text, "[output]\ndir = %0*d\n", 197 - 5, 7);
    expect_file_error(text, 2, "output.dir: line longer than 197 characters");
}

static void test_missing_file(void **state) {
    mt_config c;
    char path[300];
    mt_config_defaults(&c);
    snprintf(path, sizeof path, "%s/none.ini", tmp_dir);
    assert_int_equal(mt_config_load(&c, path), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), path);
    assert_contains(mt_error_message(), "cannot read: No such file or directory");
}

static void test_continuation(void **state) {
    mt_config c;
    mt_config_defaults(&c);
    const char *text = "[model]\n"
                       "spec = input 1, linear 40, relu,\n"
                       "    linear 40, relu,   ; a comment\n"
                       "\tlinear 1, mse\n"
                       "[output]\n"
                       "dir =\n"
                       "  runs/x\n"
                       "[train]\n"
                       "iterations = 7\n";
    assert_int_equal(load_text(&c, "cont.ini", text), MT_OK);
    assert_string_equal(c.model_spec, "input 1, linear 40, relu, linear 40, relu, linear 1, mse");
    assert_string_equal(c.output_dir, "runs/x");
    assert_int_equal(c.iterations, 7);

    /* A continuation is not a repeat of the key, but it joins the value it continues. */
    expect_file_error("[meta]\ninner_lr = 0.1\n  0.2\n", 2, "meta.inner_lr");
    /* An indented key right after a section header is a key, not a continuation. */
    assert_int_equal(load_text(&c, "ind.ini", "[train]\n  iterations = 9\n"), MT_OK);
    assert_int_equal(c.iterations, 9);
}

static void test_set(void **state) {
    mt_config c;
    mt_config_defaults(&c);
    assert_int_equal(mt_config_set(&c, "meta.inner_lr=0.1", "--set"), MT_OK);
    assert_true(c.inner_lr == 0.1);
    assert_int_equal(mt_config_set(&c, " meta.algorithm = reptile ", "--set"), MT_OK);
    assert_int_equal(c.algorithm, MT_ALGO_REPTILE);
    assert_int_equal(mt_config_set(&c, "model.spec=input 2, linear 1, mse", "--set"), MT_OK);
    assert_string_equal(c.model_spec, "input 2, linear 1, mse");
    assert_int_equal(mt_config_set(&c, "train.resume=on", "--set"), MT_OK);
    assert_int_equal(c.resume, 1);

    struct {
        const char *assignment, *expect;
    } bad[] = {
        {"meta.inner_lr=-0.1", "--set meta.inner_lr: must be > 0, got -0.1"},
        {"meta.inner_lr=", "--set meta.inner_lr: expected a number"},
        {"meta.nope=1", "--set meta.nope: unknown key"},
        {"nope.seed=1", "--set nope.seed: unknown section"},
        {"inner_lr=0.1", "--set inner_lr: expected section.key=value"},
        {"meta.inner_lr", "--set meta.inner_lr: expected section.key=value"},
        {"train.threads=257", "--set train.threads: must be from 1 to 256, got 257"},
        {"output.dir=a ; b", "--set output.dir:"},
        {"task.kind=images", "--set task.kind: must be one of sinusoid, linreg, episodes, grouped"},
        {"meta.rate_lr_scale=0", "--set meta.rate_lr_scale: must be > 0 and <= 1, got 0"},
        {"meta.rate_lr_scale=2", "--set meta.rate_lr_scale: must be > 0 and <= 1, got 2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mt_config before = c;
        mt_error_clear();
        assert_int_equal(mt_config_set(&c, bad[i].assignment, "--set"), MT_ERR_CONFIG);
        assert_contains(mt_error_message(), bad[i].expect);
        assert_memory_equal(&c, &before, sizeof c);
    }
    mt_error_clear();
}

static void test_validate(void **state) {
    mt_config c;
    mt_config_defaults(&c);
    c.min_outer_lr = 0.01;
    assert_int_equal(mt_config_validate(&c), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "meta.min_outer_lr");
    assert_contains(mt_error_message(), "meta.outer_lr");
    mt_error_clear();

    /* A slower rate for learned inner rates where there are none is a mistake, not a no-op. */
    mt_config_defaults(&c);
    c.rate_lr_scale = 0.1;
    assert_int_equal(mt_config_validate(&c), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "meta.rate_lr_scale: maml learns no inner rates");
    mt_error_clear();
    c.algorithm = MT_ALGO_METASGD;
    assert_int_equal(mt_config_validate(&c), MT_OK);
    mt_config_defaults(&c);
    c.nonnegative_rates = 1;
    assert_int_equal(mt_config_validate(&c), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "meta.nonnegative_rates: maml learns no inner rates");
    mt_error_clear();
    c.algorithm = MT_ALGO_MAMLPP_METASGD;
    assert_int_equal(mt_config_validate(&c), MT_OK);

    mt_config_defaults(&c);
    c.task_kind = MT_TASK_EPISODES;
    c.ways = 5;
    assert_int_equal(mt_config_validate(&c), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "task.path");
    mt_error_clear();
    snprintf(c.task_path, sizeof c.task_path, "data/x.h5");
    assert_int_equal(mt_config_validate(&c), MT_OK);
    c.ways = 1;
    assert_int_equal(mt_config_validate(&c), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "task.ways");
    mt_error_clear();

    mt_config_defaults(&c);
    c.task_kind = MT_TASK_GROUPED;
    assert_int_equal(mt_config_validate(&c), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "task.path");
    mt_error_clear();

    /* Single-key ranges are checked again for configs changed in code. */
    mt_config_defaults(&c);
    c.eval_steps = 300;
    assert_int_equal(mt_config_validate(&c), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "eval.steps");
    mt_error_clear();
    /* eval.steps = 0 stands for meta.inner_steps: 100 inner steps evaluate with 100. */
    mt_config_defaults(&c);
    c.inner_steps = 100;
    assert_int_equal(mt_config_validate(&c), MT_OK);
    mt_config_defaults(&c);
    c.inner_lr = -1;
    assert_int_equal(mt_config_validate(&c), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "meta.inner_lr: must be > 0, got -1");
    mt_error_clear();
}

/* Every line of formatted text fits inih's line limit. */
static void assert_lines_fit(const char *text) {
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        if (n > 197) fail_msg("line of %zu characters: %.40s...", n, p);
        p += n + (p[n] == '\n');
    }
}

static void test_round_trip(void **state) {
    mt_config a, b;
    static char text[16384], again[16384];
    mt_config_defaults(&a);
    a.seed = UINT64_MAX;
    a.iterations = 123456;
    a.resume = 1;
    a.algorithm = MT_ALGO_IMAML;
    a.inner_lr = 0.1 + 0.2; /* needs all 17 digits */
    a.outer_lr = 1.0 / 3.0;
    a.min_outer_lr = 5e-324 * 1e10;
    a.adam_eps = 1e-300;
    a.beta2 = 0.9999999999999999;
    a.clip_norm = 12345.678901234567;
    a.optimizer = MT_OPT_SGD;
    a.task_kind = MT_TASK_GROUPED;
    a.eval_split = MT_SPLIT_ALL;
    snprintf(a.output_dir, sizeof a.output_dir, "runs/a #1/b  c");
    snprintf(a.task_path, sizeof a.task_path, "%0190d", 3); /* one long word */
    /* A spec long enough to need continuation lines, with a '#' that must not start one. */
    size_t len = (size_t)snprintf(a.model_spec, sizeof a.model_spec, "input 1x28x28");
    for (int i = 0; i < 25; i++)
        len += (size_t)snprintf(a.model_spec + len, sizeof a.model_spec - len, ", conv 64 3 #%d", i);
    snprintf(a.model_spec + len, sizeof a.model_spec - len, ", linear 5, xent");
    assert_int_equal(mt_config_validate(&a), MT_OK);

    size_t n = mt_config_format(&a, text, sizeof text);
    assert_true(n < sizeof text);
    assert_int_equal(n, strlen(text));
    assert_int_equal(mt_config_format(&a, NULL, 0), n);
    assert_lines_fit(text);
    assert_contains(text, "[meta]\n");
    assert_contains(text, "inner_lr = 0.30000000000000004\n");
    assert_contains(text, "seed = 18446744073709551615\n");

    mt_config_defaults(&b);
    assert_int_equal(mt_config_load_string(&b, text, "formatted"), MT_OK);
    assert_true(a.inner_lr == b.inner_lr && a.outer_lr == b.outer_lr && a.min_outer_lr == b.min_outer_lr);
    assert_true(a.adam_eps == b.adam_eps && a.beta2 == b.beta2 && a.clip_norm == b.clip_norm);
    assert_true(a.seed == b.seed);
    assert_string_equal(a.model_spec, b.model_spec);
    assert_string_equal(a.output_dir, b.output_dir);
    assert_string_equal(a.task_path, b.task_path);
    mt_config_format(&b, again, sizeof again);
    assert_string_equal(text, again);

    /* Through a file too, and for the defaults. */
    mt_config_defaults(&b);
    assert_int_equal(load_text(&b, "rt.ini", text), MT_OK);
    mt_config_format(&b, again, sizeof again);
    assert_string_equal(text, again);
    mt_config_defaults(&a);
    mt_config_format(&a, text, sizeof text);
    assert_int_equal(load_text(&b, "rt.ini", text), MT_OK);
    mt_config_format(&b, again, sizeof again);
    assert_string_equal(text, again);

    /* A truncated buffer still holds a terminated prefix. */
    char small[10];
    assert_int_equal(mt_config_format(&a, small, sizeof small), strlen(text));
    assert_int_equal(strlen(small), sizeof small - 1);
}

static void test_unwritable_strings(void **state) {
    mt_config c;
    char assignment[700];
    mt_config_defaults(&c);
    /* A word too long for any INI line could not be written back. */
    snprintf(assignment, sizeof assignment, "task.path=%0250d", 1);
    assert_int_equal(mt_config_set(&c, assignment, "--set"), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "--set task.path:");
    mt_error_clear();
    size_t len = (size_t)snprintf(assignment, sizeof assignment, "model.spec=input 1");
    while (len < 600) len += (size_t)snprintf(assignment + len, sizeof assignment - len, ", relu");
    assert_int_equal(mt_config_set(&c, assignment, "--set"), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "longer than 511");
    mt_error_clear();
}

static void test_check_resume(void **state) {
    mt_config saved, now;
    mt_config_defaults(&saved);
    now = saved;
    now.iterations = 5000;
    now.threads = 8;
    now.resume = 1;
    snprintf(now.output_dir, sizeof now.output_dir, "elsewhere");
    now.eval_tasks = 10;
    assert_int_equal(mt_config_check_resume(&saved, &now), MT_OK);

    now.inner_lr = 0.02;
    assert_int_equal(mt_config_check_resume(&saved, &now), MT_ERR_CONFIG);
    assert_string_equal(mt_error_message(),
                        "config key 'meta.inner_lr' differs from the checkpoint (0.01 there, 0.02 now): it "
                        "changes the model or the math, so a resumed run cannot change it");
    mt_error_clear();

    now = saved;
    snprintf(now.model_spec, sizeof now.model_spec, "input 1, linear 1, mse");
    assert_int_equal(mt_config_check_resume(&saved, &now), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "'model.spec'");
    mt_error_clear();
    now = saved;
    now.seed = 2;
    assert_int_equal(mt_config_check_resume(&saved, &now), MT_ERR_CONFIG);
    assert_contains(mt_error_message(), "'train.seed'");
    mt_error_clear();
}

static void test_reference(void **state) {
    static char ref[16384], ini[16384];
    mt_config c;
    mt_config_defaults(&c);
    size_t n = mt_config_reference(ref, sizeof ref);
    assert_true(n < sizeof ref);
    assert_contains(ref, "| key | type | default |");
    assert_contains(ref, "| `meta.inner_lr` | double | `0.01` | > 0 | no |");
    assert_contains(ref, "| `train.iterations` | int | `1000` | >= 0 | yes |");
    assert_contains(ref, "| `meta.algorithm` | enum | `maml` | `maml`, `fomaml`");
    assert_contains(ref, "| `task.path` | string | (empty) |");
    /* One row per key: as many as the formatted config has `key = value` lines. */
    mt_config_format(&c, ini, sizeof ini);
    int rows = 0, keys = 0;
    for (const char *p = ref; (p = strstr(p, "\n| `")); p++) rows++;
    for (const char *p = ini; (p = strstr(p, " =")); p++) keys++;
    assert_int_equal(rows, keys);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clear_error),
        cmocka_unit_test_setup(test_good_file, clear_error),
        cmocka_unit_test_setup(test_bools, clear_error),
        cmocka_unit_test_setup(test_file_errors, clear_error),
        cmocka_unit_test_setup(test_missing_file, clear_error),
        cmocka_unit_test_setup(test_continuation, clear_error),
        cmocka_unit_test_setup(test_set, clear_error),
        cmocka_unit_test_setup(test_validate, clear_error),
        cmocka_unit_test_setup(test_round_trip, clear_error),
        cmocka_unit_test_setup(test_unwritable_strings, clear_error),
        cmocka_unit_test_setup(test_check_resume, clear_error),
        cmocka_unit_test_setup(test_reference, clear_error),
    };
    return cmocka_run_group_tests(tests, make_dir, remove_dir);
}
