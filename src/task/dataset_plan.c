/* Phase 1 of loading a dataset (src/task/dataset.c): node rank 0 opens the file, checks every
 * format's datasets (dtype, rank, shape, ranges, splits, fixed episodes), reads the integer
 * arrays into ordinary memory and plans the layout of the node's shared window. Nothing here
 * touches MPI: it also runs in a forked child first (mt_isolate_run). */
#include "task/dataset_plan.h"
#include "h5/h5_read.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* /class_names, fixed-length or variable-length strings, into n × (longest + 1) bytes. */
static mt_status load_class_names(reader *r, layout *L, hid_t dset, int64_t n) {
    mt_status st = MT_OK;
    const char *p = r->path, *name = "/class_names";
    hid_t ftype = H5I_INVALID_HID, mem = H5I_INVALID_HID, space = H5I_INVALID_HID;
    char *raw = NULL, **strs = NULL;
    if ((ftype = H5Dget_type(dset)) < 0 || (space = H5Dget_space(dset)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: unreadable", p, name);
    if ((uint64_t)n * (MAX_NAME_LEN + 1) > MT_TASK_DATASET_MAX_BYTES)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: %" PRId64 " names, too many", p, name, n);
    H5T_cset_t cset = H5Tget_cset(ftype);
    if ((mem = H5Tcopy(H5T_C_S1)) < 0 || H5Tset_cset(mem, cset) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: unreadable string type", p, name);
    if (H5Tis_variable_str(ftype) > 0) {
        if (H5Tset_size(mem, H5T_VARIABLE) < 0 || !(strs = calloc((size_t)n, sizeof *strs)))
            MT_THROW(MT_ERR_NOMEM, "%s: %s: out of memory", p, name);
        MT_TRY(mt_h5_read_all(dset, mem, p, name, strs));
        size_t longest = 0;
        for (int64_t i = 0; i < n; i++)
            if (strs[i] && strlen(strs[i]) > longest) longest = strlen(strs[i]);
        if (longest > MAX_NAME_LEN)
            MT_THROW(MT_ERR_FORMAT, "%s: %s: a name longer than %d characters", p, name, MAX_NAME_LEN);
        L->class_name_size = (int)longest + 1;
        if (!(r->class_names = calloc((size_t)n, (size_t)L->class_name_size)))
            MT_THROW(MT_ERR_NOMEM, "%s: %s: out of memory", p, name);
        for (int64_t i = 0; i < n; i++)
            if (strs[i]) memcpy(r->class_names + i * L->class_name_size, strs[i], strlen(strs[i]));
    } else {
        size_t size = H5Tget_size(ftype);
        if (size == 0 || size > MAX_NAME_LEN)
            MT_THROW(MT_ERR_FORMAT, "%s: %s: string size %zu outside [1, %d]", p, name, size, MAX_NAME_LEN);
        if (H5Tset_size(mem, size) < 0 || H5Tset_strpad(mem, H5T_STR_NULLPAD) < 0)
            MT_THROW(MT_ERR_FORMAT, "%s: %s: unreadable string type", p, name);
        if (!(raw = malloc((size_t)n * size))) MT_THROW(MT_ERR_NOMEM, "%s: %s: out of memory", p, name);
        MT_TRY(mt_h5_read_all(dset, mem, p, name, raw));
        L->class_name_size = (int)size + 1;
        if (!(r->class_names = calloc((size_t)n, (size_t)L->class_name_size)))
            MT_THROW(MT_ERR_NOMEM, "%s: %s: out of memory", p, name);
        for (int64_t i = 0; i < n; i++) {
            const char *s = raw + i * size;
            memcpy(r->class_names + i * L->class_name_size, s, strnlen(s, size));
        }
    }
    L->bytes[ARR_CLASS_NAMES] = (uint64_t)n * (uint64_t)L->class_name_size;
fail:
    if (strs) {
        H5Dvlen_reclaim(mem, space, H5P_DEFAULT, strs);
        free(strs);
    }
    free(raw);
    if (mem >= 0) H5Tclose(mem);
    if (space >= 0) H5Sclose(space);
    if (ftype >= 0) H5Tclose(ftype);
    return st;
}

/* Values of a split array in 0..2. */
static mt_status check_split_values(const char *path, const char *name, const int32_t *v, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (v[i] < 0 || v[i] > 2)
            return MT_RAISE(MT_ERR_FORMAT,
                            "%s: %s: value %d at index %" PRId64 " outside [0, 2] (0 train, 1 val, 2 test)", path, name,
                            v[i], i);
    return MT_OK;
}

/* Values in [0, n) when n > 0; when n == 0, n becomes max + 1 after refusing negatives.
 * `what` names a value ("label"), `bound` where n came from. */
static mt_status check_ids(const char *path, const char *name, const char *what, const int32_t *v, int64_t len, int *n,
                           const char *bound) {
    int given = *n;
    int32_t largest = -1;
    for (int64_t i = 0; i < len; i++) {
        if (v[i] < 0 || (given > 0 && v[i] >= given)) {
            if (given > 0)
                return MT_RAISE(MT_ERR_FORMAT, "%s: %s: %s %d at index %" PRId64 " outside [0, %d) (the length of %s)",
                                path, name, what, v[i], i, given, bound);
            return MT_RAISE(MT_ERR_FORMAT, "%s: %s: %s %d at index %" PRId64 " is negative", path, name, what, v[i], i);
        }
        if (v[i] > largest) largest = v[i];
    }
    if (given == 0) {
        if (largest == INT32_MAX) return MT_RAISE(MT_ERR_FORMAT, "%s: %s: %s %d too large", path, name, what, largest);
        *n = largest + 1;
    }
    return MT_OK;
}

/* A file's rows are bags of token ids (/tokens) or the format's own input (`other`), never
 * both: *tokens tells which. /tokens is int32 [N, T]; its ids are checked when read. */
static mt_status plan_tokens(reader *r, layout *L, const char *other, int *tokens, int64_t *rows) {
    mt_status st = MT_OK;
    hsize_t dims[4];
    *tokens = mt_h5_link_exists(r->file, "/tokens");
    if (*tokens && mt_h5_link_exists(r->file, other))
        MT_THROW(MT_ERR_FORMAT, "%s: holds both /tokens and %s: give one kind of rows", r->path, other);
    if (!*tokens) return MT_OK;
    MT_TRY(mt_h5_open_dataset(r->file, r->path, "/tokens", 1, &r->tokens));
    MT_TRY(mt_h5_check_array(r->tokens, r->path, "/tokens", MT_H5_I32, 2, "[N, T]", dims, &L->bytes[ARR_TOKENS]));
    *rows = (int64_t)dims[0];
    L->n_tokens = (int)dims[1];
fail:
    return st;
}

static mt_status plan_images(reader *r, layout *L) {
    mt_status st = MT_OK;
    const char *p = r->path;
    hsize_t dims[4], len[4];
    hid_t names = H5I_INVALID_HID;
    int tokens;
    MT_TRY(plan_tokens(r, L, "/images", &tokens, &L->n_images));
    if (!tokens) {
        MT_TRY(mt_h5_open_dataset(r->file, p, "/images", 1, &r->images));
        MT_TRY(mt_h5_check_array(r->images, p, "/images", MT_H5_U8, 4, "[N, C, H, W]", dims, &L->bytes[ARR_IMAGES]));
        L->n_images = (int64_t)dims[0];
        L->channels = (int)dims[1];
        L->height = (int)dims[2];
        L->width = (int)dims[3];
    }
    const char *rows_name = tokens ? "/tokens" : "/images";

    MT_TRY(mt_h5_load_i32(r->file, p, "/labels", 1, 1, "[N]", len, &r->labels));
    if ((int64_t)len[0] != L->n_images)
        MT_THROW(MT_ERR_FORMAT, "%s: /labels: length %llu does not match %s (%" PRId64 ")", p,
                 (unsigned long long)len[0], rows_name, L->n_images);

    int64_t n_split = 0, n_names = 0;
    MT_TRY(mt_h5_load_i32(r->file, p, "/class_split", 0, 1, "[n_classes]", len, &r->class_split));
    if (r->class_split) n_split = (int64_t)len[0];
    MT_TRY(mt_h5_open_dataset(r->file, p, "/class_names", 0, &names));
    if (names >= 0) {
        char tbuf[32];
        int rank = mt_h5_dims(names, len);
        hid_t type = H5Dget_type(names);
        int is_string = type >= 0 && H5Tget_class(type) == H5T_STRING;
        if (type >= 0) H5Tclose(type);
        if (!is_string || rank != 1)
            MT_THROW(MT_ERR_FORMAT, "%s: /class_names: expected strings [n_classes], got %s of rank %d", p,
                     mt_h5_type_desc(names, tbuf), rank);
        if (len[0] == 0) MT_THROW(MT_ERR_FORMAT, "%s: /class_names: empty", p);
        if (len[0] > INT32_MAX) MT_THROW(MT_ERR_FORMAT, "%s: /class_names: more than %d names", p, INT32_MAX);
        n_names = (int64_t)len[0];
        if (n_split && n_names != n_split)
            MT_THROW(MT_ERR_FORMAT, "%s: /class_names: length %" PRId64 " does not match /class_split (%" PRId64 ")", p,
                     n_names, n_split);
        MT_TRY(load_class_names(r, L, names, n_names));
    }

    int n_classes = (int)(n_split ? n_split : n_names);
    MT_TRY(check_ids(p, "/labels", "label", r->labels, L->n_images, &n_classes,
                     n_split ? "/class_split" : "/class_names"));
    L->n_classes = n_classes;
    if (r->class_split) MT_TRY(check_split_values(p, "/class_split", r->class_split, n_split));

    int present;
    L->pixel_scale = 1.0 / 255.0;
    L->pixel_offset = 0.0;
    MT_TRY(mt_h5_read_attr_double(r->file, p, "/", "pixel_scale", 0, &L->pixel_scale, &present));
    MT_TRY(mt_h5_read_attr_double(r->file, p, "/", "pixel_offset", 0, &L->pixel_offset, &present));

    L->bytes[ARR_LABELS] = (uint64_t)L->n_images * sizeof(int32_t);
    L->bytes[ARR_CLASS_SPLIT] = (uint64_t)n_classes * sizeof(int32_t);
    L->bytes[ARR_CLASS_START] = ((uint64_t)n_classes + 1) * sizeof(int64_t);
    L->bytes[ARR_CLASS_MEMBERS] = (uint64_t)L->n_images * sizeof(int64_t);
fail:
    if (names >= 0) H5Dclose(names);
    return st;
}

/* Fixed episodes must index the file they were drawn from: within an episode one label is one
 * class and two labels two classes (images), or all rows are of one group (grouped). Episodes
 * drawn from another file fail this almost surely, where the index bounds alone let them in. */
static mt_status check_episode_members(reader *r, const layout *L) {
    mt_status st = MT_OK;
    const char *p = r->episodes_path;
    int grouped = L->kind == MT_DATASET_GROUPED, ways = grouped ? 1 : L->episode_ways;
    const int32_t *owner = grouped ? r->group : r->labels; /* each row's group, or each image's class */
    const char *owner_name = grouped ? "group" : "class", *owners = grouped ? "groups" : "classes";
    int32_t *owner_of = malloc((size_t)ways * sizeof *owner_of); /* an episode label's class or group */
    if (!owner_of) MT_THROW(MT_ERR_NOMEM, "%s: out of memory for %d ways", p, ways);
    for (int e = 0; e < L->n_episodes; e++) {
        for (int w = 0; w < ways; w++) owner_of[w] = -1;
        for (int part = 0; part < 4; part += 2) {
            int width = part == 0 ? L->episode_support : L->episode_query;
            const char *name = part == 0 ? "/episodes/support" : "/episodes/query";
            for (int j = 0; j < width; j++) {
                int32_t row = r->episode[part][(int64_t)e * width + j];
                int32_t label = grouped ? 0 : r->episode[part + 1][(int64_t)e * width + j];
                int32_t o = owner[row];
                if (owner_of[label] == o) continue;
                if (owner_of[label] >= 0)
                    MT_THROW(MT_ERR_FORMAT,
                             "%s: %s: episode %d mixes %s %d and %d of %s for one %s (drawn from another file?)", p,
                             name, e, owners, owner_of[label], o, r->path, grouped ? "task" : "label");
                for (int w = 0; w < ways; w++)
                    if (owner_of[w] == o)
                        MT_THROW(MT_ERR_FORMAT,
                                 "%s: %s: episode %d gives labels %d and %d to %s %d of %s (drawn from another "
                                 "file?)",
                                 p, name, e, w, label, owner_name, o, r->path);
                owner_of[label] = o;
            }
        }
    }
fail:
    free(owner_of);
    return st;
}

static mt_status plan_episodes(reader *r, layout *L) {
    mt_status st = MT_OK;
    const char *p = r->episodes_path;
    static const char *const names[4] = {"/episodes/support", "/episodes/support_labels", "/episodes/query",
                                         "/episodes/query_labels"};
    hsize_t dims[4][4];
    hid_t group = H5I_INVALID_HID;
    int grouped = L->kind == MT_DATASET_GROUPED; /* rows of one group: no labels, no ways */
    if (!mt_h5_link_exists(r->episodes_file, "/episodes")) MT_THROW(MT_ERR_FORMAT, "%s: /episodes: no such group", p);
    for (int i = 0; i < 4; i += 1 + grouped)
        MT_TRY(mt_h5_load_i32(r->episodes_file, p, names[i], 1, 2, "[E, n]", dims[i], &r->episode[i]));
    for (int i = 1; i < 4 && !grouped; i += 2)
        if (dims[i][0] != dims[i - 1][0] || dims[i][1] != dims[i - 1][1])
            MT_THROW(MT_ERR_FORMAT, "%s: %s: shape [%llu, %llu] does not match %s [%llu, %llu]", p, names[i],
                     (unsigned long long)dims[i][0], (unsigned long long)dims[i][1], names[i - 1],
                     (unsigned long long)dims[i - 1][0], (unsigned long long)dims[i - 1][1]);
    if (dims[2][0] != dims[0][0])
        MT_THROW(MT_ERR_FORMAT, "%s: /episodes/query: %llu episodes but /episodes/support has %llu", p,
                 (unsigned long long)dims[2][0], (unsigned long long)dims[0][0]);

    double ways = 1;
    int present;
    if ((group = H5Gopen2(r->episodes_file, "/episodes", H5P_DEFAULT)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: /episodes: not a group", p);
    if (!grouped) MT_TRY(mt_h5_read_attr_double(group, p, "/episodes", "ways", 1, &ways, &present));
    if (!grouped && !present) MT_THROW(MT_ERR_FORMAT, "%s: /episodes: attribute ways missing", p);
    if (!grouped && (ways < 1 || ways > L->n_classes))
        MT_THROW(MT_ERR_FORMAT, "%s: /episodes: ways = %.0f outside [1, %d] (the classes of %s)", p, ways, L->n_classes,
                 r->path);

    /* scripts/fixed-episodes records the rows of the file it drew from: another file of the same
     * structure (another Omniglot split, say) would pass every other check. */
    double rows = 0;
    MT_TRY(mt_h5_read_attr_double(group, p, "/episodes", "rows", 1, &rows, &present));
    int64_t have = grouped ? L->n_rows : L->n_images;
    if (present && rows != (double)have)
        MT_THROW(MT_ERR_FORMAT,
                 "%s: /episodes: attribute rows = %.0f, but %s has %" PRId64 " (drawn from another file?)", p, rows,
                 r->path, have);

    L->n_episodes = (int)dims[0][0];
    L->episode_support = (int)dims[0][1];
    L->episode_query = (int)dims[2][1];
    L->episode_ways = (int)ways;
    for (int i = 0; i < 4; i += 1 + grouped) {
        int64_t n = (int64_t)dims[i][0] * (int64_t)dims[i][1], width = (int64_t)dims[i][1];
        int64_t bound = i % 2 == 1 ? L->episode_ways : grouped ? L->n_rows : L->n_images;
        for (int64_t k = 0; k < n; k++) {
            int32_t v = r->episode[i][k];
            if (v >= 0 && v < bound) continue;
            if (i % 2 == 0)
                MT_THROW(MT_ERR_FORMAT,
                         "%s: %s: index %d at [%" PRId64 ", %" PRId64 "] outside [0, %" PRId64 ") (the rows of %s)", p,
                         names[i], v, k / width, k % width, bound, r->path);
            MT_THROW(MT_ERR_FORMAT, "%s: %s: label %d at [%" PRId64 ", %" PRId64 "] outside [0, %" PRId64 ") (ways)", p,
                     names[i], v, k / width, k % width, bound);
        }
        L->bytes[ARR_SUPPORT_INDEX + i] = (uint64_t)n * sizeof(int32_t);
    }
    MT_TRY(check_episode_members(r, L));
fail:
    if (group >= 0) H5Gclose(group);
    return st;
}

static mt_status plan_grouped(reader *r, layout *L) {
    mt_status st = MT_OK;
    const char *p = r->path;
    hsize_t dims[4], len[4];
    char tbuf[32];
    int tokens;
    MT_TRY(plan_tokens(r, L, "/features", &tokens, &L->n_rows));
    if (!tokens) {
        MT_TRY(mt_h5_open_dataset(r->file, p, "/features", 1, &r->features));
        MT_TRY(mt_h5_check_array(r->features, p, "/features", MT_H5_F32, 2, "[N, D]", dims, &L->bytes[ARR_FEATURES]));
        L->n_rows = (int64_t)dims[0];
        L->n_features = (int)dims[1];
    }
    const char *rows_name = tokens ? "/tokens" : "/features";

    MT_TRY(mt_h5_open_dataset(r->file, p, "/targets", 1, &r->targets));
    int rank = mt_h5_dims(r->targets, len);
    if (mt_h5_type_is(r->targets, MT_H5_F32) && rank == 2) {
        MT_TRY(mt_h5_check_array(r->targets, p, "/targets", MT_H5_F32, 2, "[N, T]", len, &L->bytes[ARR_TARGETS]));
        L->n_targets = (int)len[1];
    } else if (mt_h5_type_is(r->targets, MT_H5_I32) && rank == 1) {
        H5Dclose(r->targets);
        r->targets = H5I_INVALID_HID;
        MT_TRY(mt_h5_load_i32(r->file, p, "/targets", 1, 1, "[N]", len, &r->target_class));
        L->bytes[ARR_TARGET_CLASS] = (uint64_t)len[0] * sizeof(int32_t);
    } else {
        MT_THROW(MT_ERR_FORMAT,
                 "%s: /targets: expected float32 [N, T] (regression) or int32 [N] (classification), got %s of rank %d",
                 p, mt_h5_type_desc(r->targets, tbuf), rank);
    }
    if ((int64_t)len[0] != L->n_rows)
        MT_THROW(MT_ERR_FORMAT, "%s: /targets: length %llu does not match %s (%" PRId64 ")", p,
                 (unsigned long long)len[0], rows_name, L->n_rows);
    if (r->target_class) {
        int n_classes = 0;
        MT_TRY(check_ids(p, "/targets", "class", r->target_class, L->n_rows, &n_classes, ""));
        L->n_classes = n_classes;
    }

    MT_TRY(mt_h5_load_i32(r->file, p, "/group", 1, 1, "[N]", len, &r->group));
    if ((int64_t)len[0] != L->n_rows)
        MT_THROW(MT_ERR_FORMAT, "%s: /group: length %llu does not match %s (%" PRId64 ")", p,
                 (unsigned long long)len[0], rows_name, L->n_rows);
    MT_TRY(mt_h5_load_i32(r->file, p, "/group_split", 0, 1, "[n_groups]", len, &r->group_split));
    int n_groups = r->group_split ? (int)len[0] : 0;
    MT_TRY(check_ids(p, "/group", "group", r->group, L->n_rows, &n_groups, "/group_split"));
    if (r->group_split) MT_TRY(check_split_values(p, "/group_split", r->group_split, n_groups));
    L->n_groups = n_groups;

    L->bytes[ARR_GROUP_SPLIT] = (uint64_t)n_groups * sizeof(int32_t);
    L->bytes[ARR_GROUP_START] = ((uint64_t)n_groups + 1) * sizeof(int64_t);
    L->bytes[ARR_GROUP_MEMBERS] = (uint64_t)L->n_rows * sizeof(int64_t);
fail:
    return st;
}

mt_status mt_task_dataset_plan(reader *r, layout *L) {
    mt_status st = MT_OK;
    char cause[160];
    if ((r->fapl = H5Pcreate(H5P_FILE_ACCESS)) < 0 || H5Pset_fclose_degree(r->fapl, H5F_CLOSE_STRONG) < 0 ||
        H5Pset_file_locking(r->fapl, 0, 1) < 0)
        MT_THROW(MT_ERR_IO, "%s: cannot set up HDF5 (%s)", r->path, mt_h5_cause(cause));
    MT_TRY(mt_h5_open_file(r->path, r->fapl, &r->file));
    if (L->kind == MT_DATASET_IMAGES)
        MT_TRY(plan_images(r, L));
    else
        MT_TRY(plan_grouped(r, L));
    if (r->episodes_path) {
        if (strcmp(r->episodes_path, r->path) == 0)
            r->episodes_file = r->file;
        else
            MT_TRY(mt_h5_open_file(r->episodes_path, r->fapl, &r->episodes_file));
        MT_TRY(plan_episodes(r, L));
    }
    uint64_t total = 0;
    for (int a = 0; a < N_ARRAYS; a++) {
        L->offset[a] = total;
        total += (L->bytes[a] + ALIGN - 1) / ALIGN * ALIGN; /* each at most the limit: no overflow */
    }
    if (total > MT_TASK_DATASET_MAX_BYTES)
        MT_THROW(MT_ERR_FORMAT, "%s: %.1f GiB in all, more than the %llu GiB limit", r->path,
                 (double)total / (1u << 30), (unsigned long long)(MT_TASK_DATASET_MAX_BYTES >> 30));
    L->total = total;
fail:
    return st;
}

void mt_task_dataset_reader_close(reader *r) {
    hid_t *dsets[] = {&r->images, &r->features, &r->targets, &r->tokens};
    for (int i = 0; i < 4; i++)
        if (*dsets[i] >= 0) H5Dclose(*dsets[i]);
    if (r->episodes_file >= 0 && r->episodes_file != r->file) H5Fclose(r->episodes_file);
    if (r->file >= 0) H5Fclose(r->file);
    if (r->fapl >= 0) H5Pclose(r->fapl);
    int32_t **arrays[] = {&r->labels,     &r->class_split, &r->target_class, &r->group,     &r->group_split,
                          &r->episode[0], &r->episode[1],  &r->episode[2],   &r->episode[3]};
    for (size_t i = 0; i < sizeof arrays / sizeof *arrays; i++) {
        free(*arrays[i]);
        *arrays[i] = NULL;
    }
    free(r->class_names);
    r->class_names = NULL;
    r->images = r->features = r->targets = r->tokens = r->episodes_file = r->file = r->fapl = H5I_INVALID_HID;
}
