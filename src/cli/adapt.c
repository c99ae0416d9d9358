/* metatrain adapt: a checkpoint's inner loop on a new task's support set, written as an adapted
 * file that `predict` and `info` read. Also what predict --support shares with it. One process,
 * no MPI. */
#include "cli/cli.h"
#include "metatrain/isolate.h"

#include <errno.h>
#include <nettle/sha2.h>
#include <stdlib.h>
#include <string.h>

static const char *adapt_usage =
    "usage: metatrain adapt CKPT --support FILE -o ADAPTED.h5 [--set eval.steps=N] [--json]\n"
    "\n"
    "Adapts the model of CKPT to the task whose labelled examples are the rows of FILE (images:\n"
    "/images and /labels; features: /features and /targets), running the inner loop meta-training\n"
    "defined for eval.steps steps (the checkpoint's own unless --set), and writes the adapted\n"
    "parameters to ADAPTED.h5 with their provenance. Labels are the head's outputs, in [0, ways).\n";

int mt_cli_take_steps(int argc, char **argv, int *i, int *steps, mt_status *st) {
    mt_cli_sets sets = {0};
    if (!mt_cli_take_set(argc, argv, i, &sets, st)) return 0;
    if (*st) return 1;
    const char *v = sets.items[0];
    char *end;
    long n = strncmp(v, "eval.steps=", 11) == 0 ? strtol(v + 11, &end, 10) : -1;
    if (strncmp(v, "eval.steps=", 11) != 0)
        *st = MT_RAISE(MT_ERR_ARG, "--set %s: only eval.steps may change when using a model", v);
    else if (!v[11] || *end || n < 0 || n > MT_META_MAX_STEPS)
        *st = MT_RAISE(MT_ERR_ARG, "--set eval.steps: expected an integer from 0 to %d, got '%s'", MT_META_MAX_STEPS,
                       v + 11);
    else
        *steps = (int)n;
    return 1;
}

/* In the child of mt_isolate_run: the whole read, checksums first (see mt_cli_state_read). */
static mt_status open_in_child(void *path) {
    mt_model *m = NULL;
    mt_status st = mt_model_open(&m, path, &(mt_model_options){.max_batch = 1});
    mt_model_close(m);
    return st;
}

mt_status mt_cli_model_open(mt_model **m, const char *path, int steps, int max_batch) {
    mt_status st = mt_isolate_run(open_in_child, (void *)path, path, MT_ISOLATE_TIMEOUT_S);
    if (st != MT_OK) return st;
    return mt_model_open(m, path, &(mt_model_options){.steps = steps, .max_batch = max_batch});
}

static mt_status sha256_file(const char *path, char hex[65]) {
    struct sha256_ctx ctx;
    uint8_t digest[SHA256_DIGEST_SIZE], buf[1 << 16];
    FILE *f = fopen(path, "rb");
    if (!f) return MT_RAISE(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    sha256_init(&ctx);
    for (size_t got; (got = fread(buf, 1, sizeof buf, f)) > 0;) sha256_update(&ctx, got, buf);
    int failed = ferror(f);
    fclose(f);
    if (failed) return MT_RAISE(MT_ERR_IO, "%s: read failed", path);
    sha256_digest(&ctx, sizeof digest, digest);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    return MT_OK;
}

mt_status mt_cli_adapt_on(mt_model *m, const char *support, char sha256[65]) {
    mt_status st = MT_OK;
    mt_model_info mi;
    mt_cli_rows r = {.file = H5I_INVALID_HID, .x = H5I_INVALID_HID, .answers = H5I_INVALID_HID};
    float *x = NULL, *targets = NULL;
    int32_t *labels = NULL;
    mt_model_describe(m, &mi);
    MT_TRY(mt_cli_rows_open(&r, support, &mi, mi.max_batch));
    if (!r.has_labels && !r.has_targets)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: missing: a support set needs the answers to adapt on", support, r.answer_name);
    if (r.rows > mi.max_batch)
        MT_THROW(MT_ERR_FORMAT, "%s: %lld rows, more than the %d a support set may have", support, (long long)r.rows,
                 mi.max_batch);
    int n = (int)r.rows;
    x = malloc((size_t)n * mi.input_size * sizeof *x);
    labels = malloc((size_t)n * sizeof *labels);
    targets = malloc((size_t)n * mi.outputs * sizeof *targets);
    if (!x || !labels || !targets) MT_THROW(MT_ERR_NOMEM, "%s: out of memory for %d rows", support, n);
    MT_TRY(mt_cli_rows_read(&r, 0, n, x, labels, targets));
    MT_TRY(mt_model_adapt(
        m, &(mt_model_batch){x, mi.classification ? labels : NULL, mi.classification ? NULL : targets, n}));
    MT_TRY(sha256_file(support, sha256));
fail:
    mt_cli_rows_close(&r);
    free(x), free(labels), free(targets);
    return st;
}

int mt_cli_adapt(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    const char *ckpt = NULL, *support = NULL, *out = NULL;
    int json = 0, steps = 0;
    int64_t rows = 0;
    mt_model *m = NULL;
    char sha[65] = "";
    for (int i = 0; i < argc; i++) {
        if (mt_cli_take_steps(argc, argv, &i, &steps, &st)) {
            if (st) goto fail;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (mt_cli_is_help(argv[i])) {
            fputs(adapt_usage, stdout);
            return MT_EXIT_OK;
        } else if ((strcmp(argv[i], "--support") == 0 || strcmp(argv[i], "-o") == 0) && i + 1 < argc) {
            *(argv[i][1] == 'o' ? &out : &support) = argv[i + 1];
            i++;
        } else if (argv[i][0] == '-' || ckpt) {
            MT_THROW(MT_ERR_ARG, "adapt: unexpected argument '%s' (see metatrain adapt --help)", argv[i]);
        } else {
            ckpt = argv[i];
        }
    }
    if (!ckpt || !support || !out)
        MT_THROW(MT_ERR_ARG, "adapt: give CKPT, --support FILE and -o ADAPTED.h5 (see metatrain adapt --help)");
    MT_TRY(mt_cli_check_output_dir(out));
    MT_TRY(mt_cli_rows_count(support, &rows, NULL));
    MT_TRY(mt_cli_model_open(&m, ckpt, steps, rows < MT_MODEL_MAX_BATCH ? (int)rows : MT_MODEL_MAX_BATCH));
    MT_TRY(mt_cli_adapt_on(m, support, sha));
    MT_TRY(mt_model_save(m, out, &(mt_model_provenance){support, sha}));
    mt_model_info mi;
    mt_model_describe(m, &mi);
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "adapted", mt_cli_json_string(out));
        json_object_set_new(o, "source", mt_cli_json_string(ckpt));
        json_object_set_new(o, "source_iteration", json_integer(mi.iteration));
        json_object_set_new(o, "support", mt_cli_json_string(support));
        json_object_set_new(o, "support_sha256", json_string(sha));
        json_object_set_new(o, "rows", json_integer(rows));
        json_object_set_new(o, "steps", json_integer(mi.steps));
        json_object_set_new(o, "algorithm", json_string(mi.algorithm));
        MT_TRY(mt_cli_json_print(o));
    } else {
        printf("adapted %s (iteration %lld, %s) to %lld rows of %s in %d step%s: %s\n", ckpt, (long long)mi.iteration,
               mi.algorithm, (long long)rows, support, mi.steps, mi.steps == 1 ? "" : "s", out);
    }
fail:
    mt_model_close(m);
    return mt_cli_report(d, st);
}
