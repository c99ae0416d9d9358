/* Rows of a support set or of an input to predict, read from the dataset formats in chunks:
 *   images    /images uint8 [N, C, H, W], optional /labels int32 [N]; root attributes
 *             pixel_scale and pixel_offset (default 1/255 and 0) scale a pixel as in training;
 *   features  /features float32 [N, D], optional /targets float32 [N, T] or int32 [N] labels;
 *   tokens    /tokens int32 [N, T] (ids below the model's V, −1 padding), with /labels as images
 *             have them or /targets as features have them.
 * Every row is used (a /group or /class_split, if present, is ignored). The shapes must be the
 * model's; features and targets must be finite and labels in [0, outputs), checked chunk by
 * chunk as they are read, each refusal naming the file, the dataset and the row. */
#include "cli/cli.h"
#include "h5/h5_read.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Opens the file's x dataset and its answers (labels or targets), checking dtype and shape. */
static mt_status open_sets(mt_cli_rows *r, const mt_model_info *mi) {
    mt_status st = MT_OK;
    const char *p = r->path;
    hsize_t dims[4], adims[4];
    int images = mt_h5_link_exists(r->file, "/images"), features = mt_h5_link_exists(r->file, "/features");
    int tokens = mt_h5_link_exists(r->file, "/tokens");
    if (images + features + tokens != 1)
        MT_THROW(MT_ERR_FORMAT, "%s: %s", p,
                 images + features + tokens > 1
                     ? "holds more than one of /images, /features and /tokens: give one kind of rows"
                     : "no /images, /features or /tokens dataset: not a dataset file (README: Dataset formats)");
    if (tokens != (mi->vocabulary > 0))
        MT_THROW(MT_ERR_FORMAT, "%s: %s", p,
                 tokens ? "holds /tokens, but the model does not read token ids"
                        : "has no /tokens, but the model reads bags of token ids");
    r->images = images;
    r->tokens = tokens;
    if (tokens) {
        MT_TRY(mt_h5_open_dataset(r->file, p, "/tokens", 1, &r->x));
        MT_TRY(mt_h5_check_array(r->x, p, "/tokens", MT_H5_I32, 2, "[N, T]", dims, NULL));
        if (dims[1] != mi->input_size)
            MT_THROW(MT_ERR_FORMAT, "%s: /tokens: rows have %llu ids, but the model takes %zu", p,
                     (unsigned long long)dims[1], mi->input_size);
        r->vocabulary = mi->vocabulary;
    } else if (images) {
        MT_TRY(mt_h5_open_dataset(r->file, p, "/images", 1, &r->x));
        MT_TRY(mt_h5_check_array(r->x, p, "/images", MT_H5_U8, 4, "[N, C, H, W]", dims, NULL));
        if ((int)dims[1] != mi->channels || (int)dims[2] != mi->height || (int)dims[3] != mi->width)
            MT_THROW(MT_ERR_FORMAT, "%s: /images: images are %llux%llux%llu, but the model takes %dx%dx%d", p,
                     (unsigned long long)dims[1], (unsigned long long)dims[2], (unsigned long long)dims[3],
                     mi->channels, mi->height, mi->width);
        int present;
        r->pixel_scale = 1.0 / 255, r->pixel_offset = 0;
        MT_TRY(mt_h5_read_attr_double(r->file, p, "/", "pixel_scale", 0, &r->pixel_scale, &present));
        MT_TRY(mt_h5_read_attr_double(r->file, p, "/", "pixel_offset", 0, &r->pixel_offset, &present));
    } else {
        MT_TRY(mt_h5_open_dataset(r->file, p, "/features", 1, &r->x));
        MT_TRY(mt_h5_check_array(r->x, p, "/features", MT_H5_F32, 2, "[N, D]", dims, NULL));
        if (dims[1] != mi->input_size)
            MT_THROW(MT_ERR_FORMAT, "%s: /features: rows have %llu features, but the model takes %zu", p,
                     (unsigned long long)dims[1], mi->input_size);
    }
    r->rows = (int64_t)dims[0];
    r->width = mi->input_size;
    r->outputs = mi->outputs;
    r->answer_name = mi->classification && !features ? "/labels" : "/targets";
    MT_TRY(mt_h5_open_dataset(r->file, p, r->answer_name, 0, &r->answers));
    if (r->answers < 0) return MT_OK;
    if (mi->classification) {
        MT_TRY(mt_h5_check_array(r->answers, p, r->answer_name, MT_H5_I32, 1, "[N] (class labels)", adims, NULL));
        r->has_labels = 1;
    } else {
        if (images) MT_THROW(MT_ERR_FORMAT, "%s: /labels: the model is a regression model; it takes /features", p);
        MT_TRY(
            mt_h5_check_array(r->answers, p, r->answer_name, MT_H5_F32, 2, "[N, T] (regression targets)", adims, NULL));
        if (adims[1] != mi->outputs)
            MT_THROW(MT_ERR_FORMAT, "%s: /targets: %llu targets per row, but the model predicts %zu", p,
                     (unsigned long long)adims[1], mi->outputs);
        r->has_targets = 1;
    }
    if (adims[0] != dims[0])
        MT_THROW(MT_ERR_FORMAT, "%s: %s: %llu rows, but %s has %llu", p, r->answer_name, (unsigned long long)adims[0],
                 images   ? "/images"
                 : tokens ? "/tokens"
                          : "/features",
                 (unsigned long long)dims[0]);
fail:
    return st;
}

mt_status mt_cli_rows_open(mt_cli_rows *r, const char *path, const mt_model_info *mi, int chunk) {
    mt_status st = MT_OK;
    memset(r, 0, sizeof *r);
    r->file = r->x = r->answers = H5I_INVALID_HID;
    snprintf(r->path, sizeof r->path, "%s", path);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our one-line messages, not HDF5's stack dumps */
    MT_TRY(mt_h5_open_file(path, H5P_DEFAULT, &r->file));
    MT_TRY(open_sets(r, mi));
    r->chunk = chunk;
    if ((r->images && !(r->pixels = malloc((size_t)chunk * r->width * sizeof *r->pixels))) ||
        (r->tokens && !(r->ids = malloc((size_t)chunk * r->width * sizeof *r->ids))))
        MT_THROW(MT_ERR_NOMEM, "%s: out of memory for a chunk of %d rows", path, chunk);
    return MT_OK;
fail:
    mt_cli_rows_close(r);
    return st;
}

void mt_cli_rows_close(mt_cli_rows *r) {
    if (r->answers >= 0) H5Dclose(r->answers);
    if (r->x >= 0) H5Dclose(r->x);
    if (r->file >= 0) H5Fclose(r->file);
    free(r->pixels), free(r->ids);
    r->pixels = NULL, r->ids = NULL;
    r->file = r->x = r->answers = H5I_INVALID_HID;
}

/* Rows [first, first + n) of a dataset into dst, as mem_type. */
static mt_status read_rows(const mt_cli_rows *r, hid_t dset, const char *name, int64_t first, int n, hid_t mem_type,
                           void *dst) {
    char cause[160];
    if (mt_h5_rows(dset, 0, first, n, mem_type, dst) < 0)
        return MT_RAISE(MT_ERR_IO, "%s: %s: cannot read rows %lld to %lld (%s)", r->path, name, (long long)first,
                        (long long)(first + n - 1), mt_h5_cause(cause));
    return MT_OK;
}

static mt_status check_finite(const mt_cli_rows *r, const char *name, const float *v, int64_t first, int n,
                              size_t width) {
    for (size_t i = 0; i < (size_t)n * width; i++)
        if (!isfinite(v[i]))
            return MT_RAISE(MT_ERR_FORMAT, "%s: %s: row %lld, column %zu: %g is not finite", r->path, name,
                            (long long)(first + (int64_t)(i / width)), i % width, (double)v[i]);
    return MT_OK;
}

mt_status mt_cli_rows_read(mt_cli_rows *r, int64_t first, int n, float *x, int32_t *labels, float *targets) {
    mt_status st = MT_OK;
    if (r->tokens) {
        const int32_t *ids = r->ids;
        MT_TRY(read_rows(r, r->x, "/tokens", first, n, H5T_NATIVE_INT32, r->ids));
        for (size_t i = 0; i < (size_t)n * r->width; i++) {
            if (ids[i] < -1 || ids[i] >= r->vocabulary)
                MT_THROW(MT_ERR_FORMAT,
                         "%s: /tokens: row %lld, column %zu: id %d is outside [-1, %d), the model's table", r->path,
                         (long long)(first + (int64_t)(i / r->width)), i % r->width, (int)ids[i], r->vocabulary);
            x[i] = (float)ids[i];
        }
    } else if (r->images) {
        MT_TRY(read_rows(r, r->x, "/images", first, n, H5T_NATIVE_UINT8, r->pixels));
        for (size_t i = 0; i < (size_t)n * r->width; i++)
            x[i] = (float)(r->pixels[i] * r->pixel_scale + r->pixel_offset);
    } else {
        MT_TRY(read_rows(r, r->x, "/features", first, n, H5T_NATIVE_FLOAT, x));
        MT_TRY(check_finite(r, "/features", x, first, n, r->width));
    }
    if (r->has_labels && labels) {
        MT_TRY(read_rows(r, r->answers, r->answer_name, first, n, H5T_NATIVE_INT32, labels));
        for (int i = 0; i < n; i++)
            if (labels[i] < 0 || (size_t)labels[i] >= r->outputs)
                MT_THROW(MT_ERR_FORMAT, "%s: %s: row %lld: label %d is outside [0, %zu), the model's classes", r->path,
                         r->answer_name, (long long)(first + i), (int)labels[i], r->outputs);
    }
    if (r->has_targets && targets) {
        MT_TRY(read_rows(r, r->answers, r->answer_name, first, n, H5T_NATIVE_FLOAT, targets));
        MT_TRY(check_finite(r, r->answer_name, targets, first, n, r->outputs));
    }
fail:
    return st;
}

mt_status mt_cli_rows_count(const char *path, int64_t *rows, int *images) {
    mt_status st = MT_OK;
    hid_t file = H5I_INVALID_HID, dset = H5I_INVALID_HID;
    hsize_t dims[4];
    *rows = 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    MT_TRY(mt_h5_open_file(path, H5P_DEFAULT, &file));
    const char *name = mt_h5_link_exists(file, "/images")   ? "/images"
                       : mt_h5_link_exists(file, "/tokens") ? "/tokens"
                                                            : "/features";
    if (!mt_h5_link_exists(file, name))
        MT_THROW(MT_ERR_FORMAT,
                 "%s: no /images, /features or /tokens dataset: not a dataset file (README: Dataset formats)", path);
    MT_TRY(mt_h5_open_dataset(file, path, name, 1, &dset));
    int rank = mt_h5_dims(dset, dims);
    if (rank < 1 || dims[0] == 0) MT_THROW(MT_ERR_FORMAT, "%s: %s: no rows", path, name);
    *rows = (int64_t)dims[0];
    if (images) *images = name[1] == 'i';
fail:
    if (dset >= 0) H5Dclose(dset);
    if (file >= 0) H5Fclose(file);
    return st;
}
