/* metatrain predict: one row of predictions per input row, streamed chunk by chunk so that memory
 * does not grow with the input. The output file is written under a temporary name and renamed
 * only once every row is in it: an error leaves no file. One process, no MPI. */
#include "cli/cli.h"
#include "core/file.h"
#include "h5/h5_read.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *predict_usage =
    "usage: metatrain predict MODEL --input FILE [--support FILE] [--set eval.steps=N] [--batch N]\n"
    "                         [-o OUT.h5 | --csv] [--json]\n"
    "\n"
    "Predicts every row of FILE with MODEL, a checkpoint (adapted first to the rows of --support\n"
    "when given, used as trained otherwise) or a file written by `metatrain adapt`. Classifiers\n"
    "give class probabilities and the predicted class, regression models the predicted targets.\n"
    "-o writes /predictions float32 [N, outputs] (and /predicted_class int32 [N]) to OUT.h5;\n"
    "--csv (the default without -o) prints them as CSV. When FILE has labels or targets, the\n"
    "accuracy or MSE is reported; --json prints one object with rows, metric and value.\n"
    "Rows go through the network --batch at a time (default 1024 features, 256 images); batch norm\n"
    "normalizes within a batch, as in meta-training.\n";

/* The streamed HDF5 output: /predictions and /predicted_class, written chunk by chunk. */
typedef struct {
    char tmp[4200];
    hid_t file, pred, cls;
} out_file;

static mt_status out_create(out_file *o, const char *path, int64_t rows, size_t outputs, int classify, int chunk) {
    mt_status st = MT_OK;
    char cause[160];
    hsize_t dims[2] = {(hsize_t)rows, outputs}, cdims[2] = {(hsize_t)(chunk < rows ? chunk : rows), outputs};
    hid_t space = H5I_INVALID_HID, dcpl = H5I_INVALID_HID;
    MT_TRY(mt_file_temp_path(o->tmp, sizeof o->tmp, path));
    if ((o->file = H5Fcreate(o->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)) < 0)
        MT_THROW(MT_ERR_IO, "%s: cannot create (%s)", path, mt_h5_cause(cause));
    if ((space = H5Screate_simple(2, dims, NULL)) < 0 || (dcpl = H5Pcreate(H5P_DATASET_CREATE)) < 0 ||
        H5Pset_chunk(dcpl, 2, cdims) < 0 ||
        (o->pred = H5Dcreate2(o->file, "/predictions", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0)
        MT_THROW(MT_ERR_IO, "%s: /predictions: cannot create (%s)", path, mt_h5_cause(cause));
    H5Sclose(space), H5Pclose(dcpl);
    space = dcpl = H5I_INVALID_HID;
    if (classify &&
        ((space = H5Screate_simple(1, dims, NULL)) < 0 || (dcpl = H5Pcreate(H5P_DATASET_CREATE)) < 0 ||
         H5Pset_chunk(dcpl, 1, cdims) < 0 ||
         (o->cls = H5Dcreate2(o->file, "/predicted_class", H5T_STD_I32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0))
        MT_THROW(MT_ERR_IO, "%s: /predicted_class: cannot create (%s)", path, mt_h5_cause(cause));
fail:
    if (space >= 0) H5Sclose(space);
    if (dcpl >= 0) H5Pclose(dcpl);
    return st;
}

/* Closes the file; keeps it (fsync, rename) when commit, else removes it. */
static mt_status out_finish(out_file *o, const char *path, int commit) {
    herr_t rc = 0;
    if (o->cls >= 0) rc |= H5Dclose(o->cls);
    if (o->pred >= 0) rc |= H5Dclose(o->pred);
    if (o->file >= 0) rc |= H5Fclose(o->file);
    o->cls = o->pred = o->file = H5I_INVALID_HID;
    if (!o->tmp[0]) return MT_OK;
    if (!commit || rc < 0) {
        unlink(o->tmp);
        return rc < 0 && commit ? MT_RAISE(MT_ERR_IO, "%s: write failed", path) : MT_OK;
    }
    return mt_file_commit(o->tmp, path);
}

static void print_csv_header(size_t outputs, int classify) {
    printf("row");
    for (size_t j = 0; j < outputs; j++) printf(classify ? ",p%zu" : ",y%zu", j);
    printf(classify ? ",predicted_class\n" : "\n");
}

int mt_cli_predict(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    const char *model = NULL, *input = NULL, *support = NULL, *out = NULL;
    int json = 0, csv = 0, steps = 0, batch = 0;
    mt_model *m = NULL;
    mt_cli_rows r = {.file = H5I_INVALID_HID, .x = H5I_INVALID_HID, .answers = H5I_INVALID_HID};
    out_file o = {.file = H5I_INVALID_HID, .pred = H5I_INVALID_HID, .cls = H5I_INVALID_HID};
    float *x = NULL, *y = NULL, *targets = NULL;
    int32_t *labels = NULL, *classes = NULL;
    int64_t rows = 0, support_rows = 0;
    char sha[65];
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (mt_cli_take_steps(argc, argv, &i, &steps, &st)) {
            if (st) goto fail;
        } else if (strcmp(a, "--json") == 0 || strcmp(a, "--csv") == 0) {
            *(a[2] == 'j' ? &json : &csv) = 1;
        } else if (mt_cli_is_help(a)) {
            fputs(predict_usage, stdout);
            return MT_EXIT_OK;
        } else if (strcmp(a, "--batch") == 0 && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > MT_MODEL_MAX_BATCH)
                MT_THROW(MT_ERR_ARG, "--batch: expected an integer from 1 to %d, got '%s'", MT_MODEL_MAX_BATCH,
                         argv[i]);
            batch = (int)v;
        } else if ((strcmp(a, "--input") == 0 || strcmp(a, "--support") == 0 || strcmp(a, "-o") == 0) && i + 1 < argc) {
            *(a[1] == 'o' ? &out : a[2] == 'i' ? &input : &support) = argv[++i];
        } else if (a[0] == '-' || model) {
            MT_THROW(MT_ERR_ARG, "predict: unexpected argument '%s' (see metatrain predict --help)", a);
        } else {
            model = a;
        }
    }
    if (!model || !input) MT_THROW(MT_ERR_ARG, "predict: give MODEL and --input FILE (see metatrain predict --help)");
    if (out && csv) MT_THROW(MT_ERR_ARG, "predict: -o and --csv both name where predictions go: give one");
    if (out) MT_TRY(mt_cli_check_output_dir(out));
    csv = csv || (!out && !json);
    int images = 0;
    MT_TRY(mt_cli_rows_count(input, &rows, &images));
    if (support) MT_TRY(mt_cli_rows_count(support, &support_rows, NULL));
    /* One batch per call: the input's rows up to --batch (images fewer: a convolution's workspace
     * grows by about 0.3 MB per image), and the whole support set. */
    int chunk = batch ? batch : images ? 256 : 1024;
    if ((int64_t)chunk > rows) chunk = (int)rows;
    int plan =
        chunk > support_rows ? chunk : (int)(support_rows < MT_MODEL_MAX_BATCH ? support_rows : MT_MODEL_MAX_BATCH);
    MT_TRY(mt_cli_model_open(&m, model, steps, plan));
    mt_model_info mi;
    mt_model_describe(m, &mi);
    if (support) {
        MT_TRY(mt_cli_adapt_on(m, support, sha));
        mt_model_describe(m, &mi);
    }
    MT_TRY(mt_cli_rows_open(&r, input, &mi, chunk));
    size_t O = mi.outputs;
    x = malloc((size_t)chunk * mi.input_size * sizeof *x);
    y = malloc((size_t)chunk * O * sizeof *y);
    targets = malloc((size_t)chunk * O * sizeof *targets);
    labels = malloc((size_t)chunk * sizeof *labels);
    classes = malloc((size_t)chunk * sizeof *classes);
    if (!x || !y || !targets || !labels || !classes)
        MT_THROW(MT_ERR_NOMEM, "out of memory for a chunk of %d rows", chunk);
    if (out) MT_TRY(out_create(&o, out, rows, O, mi.classification, chunk));
    if (csv) print_csv_header(O, mi.classification);
    double err_sum = 0;
    int64_t correct = 0;
    for (int64_t first = 0; first < rows; first += chunk) {
        int n = (int)(rows - first < chunk ? rows - first : chunk);
        MT_TRY(mt_cli_rows_read(&r, first, n, x, labels, targets));
        MT_TRY(mt_model_predict(m, x, n, y, classes));
        for (int i = 0; i < n; i++) {
            if (r.has_labels) correct += classes[i] == labels[i];
            for (size_t j = 0; r.has_targets && j < O; j++) {
                double e = (double)y[(size_t)i * O + j] - targets[(size_t)i * O + j];
                err_sum += e * e;
            }
        }
        if (out && (mt_h5_rows(o.pred, 1, first, n, H5T_NATIVE_FLOAT, y) < 0 ||
                    (mi.classification && mt_h5_rows(o.cls, 1, first, n, H5T_NATIVE_INT32, classes) < 0)))
            MT_THROW(MT_ERR_IO, "%s: write failed at row %lld", out, (long long)first);
        for (int i = 0; csv && i < n; i++) {
            printf("%lld", (long long)(first + i));
            for (size_t j = 0; j < O; j++) printf(",%.9g", (double)y[(size_t)i * O + j]);
            if (mi.classification) printf(",%d", (int)classes[i]);
            putchar('\n');
        }
    }
    if (out) MT_TRY(out_finish(&o, out, 1));
    const char *metric = r.has_labels ? "accuracy" : r.has_targets ? "mse" : NULL;
    double value = r.has_labels ? (double)correct / rows : err_sum / ((double)rows * O);
    if (json) {
        json_t *j = json_object();
        json_object_set_new(j, "rows", json_integer(rows));
        json_object_set_new(j, "outputs", json_integer((json_int_t)O));
        json_object_set_new(j, "model", mt_cli_json_string(model));
        json_object_set_new(j, "input", mt_cli_json_string(input));
        json_object_set_new(j, "adapted", json_boolean(mi.adapted));
        json_object_set_new(j, "steps", json_integer(mi.adapted_steps));
        if (support) json_object_set_new(j, "support_sha256", json_string(sha));
        if (out) json_object_set_new(j, "output", mt_cli_json_string(out));
        if (metric) {
            json_object_set_new(j, "metric", json_string(metric));
            json_object_set_new(j, "value", isfinite(value) ? json_real(value) : json_null());
        }
        MT_TRY(mt_cli_json_print(j));
    } else {
        FILE *summary = csv ? stderr : stdout; /* stdout holds the CSV */
        fprintf(summary, "predicted %lld rows of %s with %s%s", (long long)rows, input, model,
                mi.adapted ? " (adapted)" : "");
        if (metric) fprintf(summary, ": %s %.6g", metric, value);
        fprintf(summary, out ? " -> %s\n" : "\n", out);
    }
fail:
    if (st != MT_OK && out) out_finish(&o, out, 0);
    mt_cli_rows_close(&r);
    mt_model_close(m);
    free(x), free(y), free(targets), free(labels), free(classes);
    return mt_cli_report(d, st);
}
