/* HDF5 datasets for the episodes and grouped task families. On each node, node rank 0 opens and
 * checks the file (phase 1: shapes, dtypes and every integer array, which it keeps in ordinary
 * memory), plans one layout of all arrays, and the node allocates one MPI shared-memory window of
 * that size. Node rank 0 then reads the bulk arrays straight into the window, copies in the rest
 * and builds the per-class (or per-group) index (phase 2). Phase 1 runs once in a child process
 * first (mt_isolate_run), so that a crash of libhdf5 on a hostile file ends only the child. Node
 * rank 0's status and message reach the node's ranks by broadcast, and mt_dist_agree settles the
 * outcome over every node. */
#include "metatrain/dataset.h"
#include "metatrain/isolate.h"
#include "h5/h5_read.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    ARR_IMAGES, ARR_LABELS, ARR_CLASS_SPLIT, ARR_CLASS_START, ARR_CLASS_MEMBERS, ARR_CLASS_NAMES,
    ARR_FEATURES, ARR_TARGETS, ARR_TARGET_CLASS, ARR_GROUP_SPLIT, ARR_GROUP_START, ARR_GROUP_MEMBERS,
    ARR_SUPPORT_INDEX, ARR_SUPPORT_LABEL, ARR_QUERY_INDEX, ARR_QUERY_LABEL, N_ARRAYS
};

#define ALIGN 64          /* every array starts on a cache line */
#define MAX_NAME_LEN 4096 /* longest class name accepted */

/* What node rank 0 tells the node's other ranks: its verdict, the sizes, and where each array
 * starts in the window (bytes[a] == 0: absent). Sent as bytes: every rank runs one binary. */
typedef struct {
    int status;
    char message[1024];
    mt_dataset_kind kind;
    int64_t n_images;
    int channels, height, width;
    double pixel_scale, pixel_offset;
    int n_classes, class_name_size;
    int64_t n_rows;
    int n_features, n_targets, n_groups;
    int n_episodes, episode_ways, episode_support, episode_query;
    uint64_t bytes[N_ARRAYS], offset[N_ARRAYS], total;
} layout;

/* Node rank 0's handles and the arrays it holds between the phases. */
typedef struct {
    const char *path, *episodes_path;
    hid_t fapl, file, episodes_file;
    hid_t images, features, targets; /* read in phase 2, straight into the window */
    int32_t *labels, *class_split, *target_class, *group, *group_split;
    int32_t *episode[4]; /* support index, support label, query index, query label */
    char *class_names;   /* n_classes × class_name_size */
} reader;

/* ---- phase 1: node rank 0 checks the files and plans the window --------------------------- */

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
        if (longest > MAX_NAME_LEN) MT_THROW(MT_ERR_FORMAT, "%s: %s: a name longer than %d characters", p, name, MAX_NAME_LEN);
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
            return MT_RAISE(MT_ERR_FORMAT, "%s: %s: value %d at index %" PRId64 " outside [0, 2] (0 train, 1 val, 2 test)",
                            path, name, v[i], i);
    return MT_OK;
}

/* Values in [0, n) when n > 0; when n == 0, n becomes max + 1 after refusing negatives.
 * `what` names a value ("label"), `bound` where n came from. */
static mt_status check_ids(const char *path, const char *name, const char *what, const int32_t *v, int64_t len,
                           int *n, const char *bound) {
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

static mt_status plan_images(reader *r, layout *L) {
    mt_status st = MT_OK;
    const char *p = r->path;
    hsize_t dims[4], len[4];
    hid_t names = H5I_INVALID_HID;
    MT_TRY(mt_h5_open_dataset(r->file, p, "/images", 1, &r->images));
    MT_TRY(mt_h5_check_array(r->images, p, "/images", MT_H5_U8, 4, "[N, C, H, W]", dims, &L->bytes[ARR_IMAGES]));
    L->n_images = (int64_t)dims[0];
    L->channels = (int)dims[1];
    L->height = (int)dims[2];
    L->width = (int)dims[3];

    MT_TRY(mt_h5_load_i32(r->file, p, "/labels", 1, 1, "[N]", len, &r->labels));
    if ((int64_t)len[0] != L->n_images)
        MT_THROW(MT_ERR_FORMAT, "%s: /labels: length %llu does not match /images (%" PRId64 ")", p,
                 (unsigned long long)len[0], L->n_images);

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
    MT_TRY(check_ids(p, "/labels", "label", r->labels, L->n_images, &n_classes, n_split ? "/class_split" : "/class_names"));
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

static mt_status plan_episodes(reader *r, layout *L) {
    mt_status st = MT_OK;
    const char *p = r->episodes_path;
    static const char *const names[4] = {"/episodes/support", "/episodes/support_labels", "/episodes/query",
                                         "/episodes/query_labels"};
    hsize_t dims[4][4];
    hid_t group = H5I_INVALID_HID;
    if (!mt_h5_link_exists(r->episodes_file, "/episodes")) MT_THROW(MT_ERR_FORMAT, "%s: /episodes: no such group", p);
    for (int i = 0; i < 4; i++)
        MT_TRY(mt_h5_load_i32(r->episodes_file, p, names[i], 1, 2, "[E, n]", dims[i], &r->episode[i]));
    for (int i = 1; i < 4; i += 2)
        if (dims[i][0] != dims[i - 1][0] || dims[i][1] != dims[i - 1][1])
            MT_THROW(MT_ERR_FORMAT, "%s: %s: shape [%llu, %llu] does not match %s [%llu, %llu]", p, names[i],
                     (unsigned long long)dims[i][0], (unsigned long long)dims[i][1], names[i - 1],
                     (unsigned long long)dims[i - 1][0], (unsigned long long)dims[i - 1][1]);
    if (dims[2][0] != dims[0][0])
        MT_THROW(MT_ERR_FORMAT, "%s: /episodes/query: %llu episodes but /episodes/support has %llu", p,
                 (unsigned long long)dims[2][0], (unsigned long long)dims[0][0]);

    double ways;
    int present;
    if ((group = H5Gopen2(r->episodes_file, "/episodes", H5P_DEFAULT)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: /episodes: not a group", p);
    MT_TRY(mt_h5_read_attr_double(group, p, "/episodes", "ways", 1, &ways, &present));
    if (!present) MT_THROW(MT_ERR_FORMAT, "%s: /episodes: attribute ways missing", p);
    if (ways < 1 || ways > L->n_classes)
        MT_THROW(MT_ERR_FORMAT, "%s: /episodes: ways = %.0f outside [1, %d] (the classes of %s)", p, ways, L->n_classes,
                 r->path);

    L->n_episodes = (int)dims[0][0];
    L->episode_support = (int)dims[0][1];
    L->episode_query = (int)dims[2][1];
    L->episode_ways = (int)ways;
    for (int i = 0; i < 4; i++) {
        int64_t n = (int64_t)dims[i][0] * (int64_t)dims[i][1], width = (int64_t)dims[i][1];
        int64_t bound = i % 2 == 0 ? L->n_images : L->episode_ways;
        for (int64_t k = 0; k < n; k++) {
            int32_t v = r->episode[i][k];
            if (v >= 0 && v < bound) continue;
            if (i % 2 == 0)
                MT_THROW(MT_ERR_FORMAT, "%s: %s: index %d at [%" PRId64 ", %" PRId64 "] outside [0, %" PRId64 ") (the images of %s)",
                         p, names[i], v, k / width, k % width, bound, r->path);
            MT_THROW(MT_ERR_FORMAT, "%s: %s: label %d at [%" PRId64 ", %" PRId64 "] outside [0, %" PRId64 ") (ways)", p,
                     names[i], v, k / width, k % width, bound);
        }
        L->bytes[ARR_SUPPORT_INDEX + i] = (uint64_t)n * sizeof(int32_t);
    }
fail:
    if (group >= 0) H5Gclose(group);
    return st;
}

static mt_status plan_grouped(reader *r, layout *L) {
    mt_status st = MT_OK;
    const char *p = r->path;
    hsize_t dims[4], len[4];
    char tbuf[32];
    MT_TRY(mt_h5_open_dataset(r->file, p, "/features", 1, &r->features));
    MT_TRY(mt_h5_check_array(r->features, p, "/features", MT_H5_F32, 2, "[N, D]", dims, &L->bytes[ARR_FEATURES]));
    L->n_rows = (int64_t)dims[0];
    L->n_features = (int)dims[1];

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
        MT_THROW(MT_ERR_FORMAT, "%s: /targets: expected float32 [N, T] (regression) or int32 [N] (classification), got %s of rank %d",
                 p, mt_h5_type_desc(r->targets, tbuf), rank);
    }
    if ((int64_t)len[0] != L->n_rows)
        MT_THROW(MT_ERR_FORMAT, "%s: /targets: length %llu does not match /features (%" PRId64 ")", p,
                 (unsigned long long)len[0], L->n_rows);
    if (r->target_class) {
        int n_classes = 0;
        MT_TRY(check_ids(p, "/targets", "class", r->target_class, L->n_rows, &n_classes, ""));
        L->n_classes = n_classes;
    }

    MT_TRY(mt_h5_load_i32(r->file, p, "/group", 1, 1, "[N]", len, &r->group));
    if ((int64_t)len[0] != L->n_rows)
        MT_THROW(MT_ERR_FORMAT, "%s: /group: length %llu does not match /features (%" PRId64 ")", p,
                 (unsigned long long)len[0], L->n_rows);
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

static mt_status plan(reader *r, layout *L) {
    mt_status st = MT_OK;
    char cause[160];
    if ((r->fapl = H5Pcreate(H5P_FILE_ACCESS)) < 0 || H5Pset_fclose_degree(r->fapl, H5F_CLOSE_STRONG) < 0 ||
        H5Pset_file_locking(r->fapl, 0, 1) < 0)
        MT_THROW(MT_ERR_IO, "%s: cannot set up HDF5 (%s)", r->path, mt_h5_cause(cause));
    MT_TRY(mt_h5_open_file(r->path, r->fapl, &r->file));
    if (L->kind == MT_DATASET_IMAGES) {
        MT_TRY(plan_images(r, L));
        if (r->episodes_path) {
            if (strcmp(r->episodes_path, r->path) == 0) r->episodes_file = r->file;
            else MT_TRY(mt_h5_open_file(r->episodes_path, r->fapl, &r->episodes_file));
            MT_TRY(plan_episodes(r, L));
        }
    } else {
        MT_TRY(plan_grouped(r, L));
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

typedef struct {
    reader *r;
    layout *L;
} plan_args;

static void reader_close(reader *r);

/* Phase 1 in the child of mt_isolate_run, on the child's own copies of the reader and layout.
 * It closes what it opened: with METATRAIN_ISOLATE=0 it runs in this process, before the real
 * phase 1 fills the same reader again. */
static mt_status plan_in_child(void *arg) {
    plan_args *a = arg;
    mt_status st = plan(a->r, a->L);
    reader_close(a->r);
    return st;
}

static void reader_close(reader *r) {
    hid_t *dsets[] = {&r->images, &r->features, &r->targets};
    for (int i = 0; i < 3; i++)
        if (*dsets[i] >= 0) H5Dclose(*dsets[i]);
    if (r->episodes_file >= 0 && r->episodes_file != r->file) H5Fclose(r->episodes_file);
    if (r->file >= 0) H5Fclose(r->file);
    if (r->fapl >= 0) H5Pclose(r->fapl);
    int32_t **arrays[] = {&r->labels, &r->class_split, &r->target_class, &r->group, &r->group_split,
                          &r->episode[0], &r->episode[1], &r->episode[2], &r->episode[3]};
    for (size_t i = 0; i < sizeof arrays / sizeof *arrays; i++) {
        free(*arrays[i]);
        *arrays[i] = NULL;
    }
    free(r->class_names);
    r->class_names = NULL;
    r->images = r->features = r->targets = r->episodes_file = r->file = r->fapl = H5I_INVALID_HID;
}

/* ---- phase 2: node rank 0 fills the window -------------------------------------------------- */

static void *at(const layout *L, void *base, int a) {
    return L->bytes[a] ? (char *)base + L->offset[a] : NULL;
}

/* Points the struct's arrays into the window and copies the sizes. */
static void set_views(mt_task_dataset *ds, const layout *L, void *base) {
    ds->base = base;
    ds->kind = L->kind;
    ds->n_images = L->n_images;
    ds->channels = L->channels;
    ds->height = L->height;
    ds->width = L->width;
    ds->pixel_scale = L->pixel_scale;
    ds->pixel_offset = L->pixel_offset;
    ds->n_classes = L->n_classes;
    ds->class_name_size = L->class_name_size;
    ds->n_rows = L->n_rows;
    ds->n_features = L->n_features;
    ds->n_targets = L->n_targets;
    ds->n_groups = L->n_groups;
    ds->n_episodes = L->n_episodes;
    ds->episode_ways = L->episode_ways;
    ds->episode_support = L->episode_support;
    ds->episode_query = L->episode_query;
    ds->images = at(L, base, ARR_IMAGES);
    ds->labels = at(L, base, ARR_LABELS);
    ds->class_split = at(L, base, ARR_CLASS_SPLIT);
    ds->class_start = at(L, base, ARR_CLASS_START);
    ds->class_members = at(L, base, ARR_CLASS_MEMBERS);
    ds->class_names = at(L, base, ARR_CLASS_NAMES);
    ds->features = at(L, base, ARR_FEATURES);
    ds->targets = at(L, base, ARR_TARGETS);
    ds->target_class = at(L, base, ARR_TARGET_CLASS);
    ds->group_split = at(L, base, ARR_GROUP_SPLIT);
    ds->group_start = at(L, base, ARR_GROUP_START);
    ds->group_members = at(L, base, ARR_GROUP_MEMBERS);
    ds->episode_support_index = at(L, base, ARR_SUPPORT_INDEX);
    ds->episode_support_label = at(L, base, ARR_SUPPORT_LABEL);
    ds->episode_query_index = at(L, base, ARR_QUERY_INDEX);
    ds->episode_query_label = at(L, base, ARR_QUERY_LABEL);
}

/* Counting sort: start (n + 1) bounds each id's members, which ascend within an id. */
static void build_index(int64_t *start, int64_t *members, const int32_t *ids, int64_t len, int n) {
    memset(start, 0, ((size_t)n + 1) * sizeof *start);
    for (int64_t i = 0; i < len; i++) start[ids[i] + 1]++;
    for (int c = 0; c < n; c++) start[c + 1] += start[c];
    for (int64_t i = 0; i < len; i++) members[start[ids[i]]++] = i; /* start[c] walks to c's end */
    for (int c = n; c > 0; c--) start[c] = start[c - 1];
    start[0] = 0;
}

static void copy_or_zero(void *dst, const void *src, uint64_t bytes) {
    if (src) memcpy(dst, src, bytes);
    else memset(dst, 0, bytes);
}

static mt_status check_finite(const char *path, const char *name, const float *v, int64_t rows, int cols) {
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(v[i]))
            return MT_RAISE(MT_ERR_FORMAT, "%s: %s: non-finite value %g at [%" PRId64 ", %" PRId64 "]", path, name,
                            (double)v[i], i / cols, i % cols);
    return MT_OK;
}

static mt_status fill(reader *r, const layout *L, void *base) {
    mt_status st = MT_OK;
    if (L->kind == MT_DATASET_IMAGES) {
        MT_TRY(mt_h5_read_all(r->images, H5T_NATIVE_UINT8, r->path, "/images", at(L, base, ARR_IMAGES)));
        memcpy(at(L, base, ARR_LABELS), r->labels, L->bytes[ARR_LABELS]);
        copy_or_zero(at(L, base, ARR_CLASS_SPLIT), r->class_split, L->bytes[ARR_CLASS_SPLIT]);
        if (r->class_names) memcpy(at(L, base, ARR_CLASS_NAMES), r->class_names, L->bytes[ARR_CLASS_NAMES]);
        build_index(at(L, base, ARR_CLASS_START), at(L, base, ARR_CLASS_MEMBERS), r->labels, L->n_images, L->n_classes);
        for (int i = 0; i < 4; i++)
            if (r->episode[i]) memcpy(at(L, base, ARR_SUPPORT_INDEX + i), r->episode[i], L->bytes[ARR_SUPPORT_INDEX + i]);
    } else {
        float *features = at(L, base, ARR_FEATURES), *targets = at(L, base, ARR_TARGETS);
        MT_TRY(mt_h5_read_all(r->features, H5T_NATIVE_FLOAT, r->path, "/features", features));
        MT_TRY(check_finite(r->path, "/features", features, L->n_rows, L->n_features));
        if (targets) {
            MT_TRY(mt_h5_read_all(r->targets, H5T_NATIVE_FLOAT, r->path, "/targets", targets));
            MT_TRY(check_finite(r->path, "/targets", targets, L->n_rows, L->n_targets));
        } else {
            memcpy(at(L, base, ARR_TARGET_CLASS), r->target_class, L->bytes[ARR_TARGET_CLASS]);
        }
        copy_or_zero(at(L, base, ARR_GROUP_SPLIT), r->group_split, L->bytes[ARR_GROUP_SPLIT]);
        build_index(at(L, base, ARR_GROUP_START), at(L, base, ARR_GROUP_MEMBERS), r->group, L->n_rows, L->n_groups);
    }
fail:
    return st;
}

/* ---- the collective load -------------------------------------------------------------------- */

static void record(layout *L, mt_status st) {
    L->status = (int)st;
    if (st != MT_OK)
        snprintf(L->message, sizeof L->message, "%s", mt_error_message()[0] ? mt_error_message() : mt_status_name(st));
}

/* A node rank other than 0 takes on node rank 0's failure as its own. */
static mt_status adopt(const layout *L) {
    return L->status == MT_OK ? MT_OK : MT_RAISE((mt_status)L->status, "%s", L->message);
}

static void bcast_layout(const mt_dist *d, layout *L, MPI_Comm node_comm) {
    if (MPI_Bcast(L, (int)sizeof *L, MPI_BYTE, 0, node_comm) != MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Bcast failed while loading a dataset"));
}

static void release(mt_task_dataset *ds) {
    if (!ds) return;
    if (ds->window != MPI_WIN_NULL) MPI_Win_free(&ds->window);
    if (ds->node_comm != MPI_COMM_NULL) MPI_Comm_free(&ds->node_comm);
    free(ds);
}

mt_status mt_task_dataset_load(mt_task_dataset **out, const mt_dist *d, const char *path, mt_task_kind kind,
                               const char *episodes_path) {
    mt_status st = MT_OK;
    mt_task_dataset *ds = NULL;
    layout *L = NULL;
    reader r = {.fapl = H5I_INVALID_HID, .file = H5I_INVALID_HID, .episodes_file = H5I_INVALID_HID,
                .images = H5I_INVALID_HID, .features = H5I_INVALID_HID, .targets = H5I_INVALID_HID};
    int node_rank = 0;
    if (!out || !d) return MT_RAISE(MT_ERR_ARG, "mt_task_dataset_load: NULL argument");
    *out = NULL;
    int has_episodes = episodes_path && episodes_path[0];

    /* The arguments are alike on every rank; only allocation can fail on some ranks alone. */
    if (!path || !path[0]) st = MT_RAISE(MT_ERR_CONFIG, "task.path: no dataset file given");
    else if (strlen(path) >= sizeof ds->path) st = MT_RAISE(MT_ERR_CONFIG, "task.path: longer than %zu characters", sizeof ds->path - 1);
    else if (has_episodes && strlen(episodes_path) >= sizeof ds->path)
        st = MT_RAISE(MT_ERR_CONFIG, "%s: episodes file name longer than %zu characters", episodes_path, sizeof ds->path - 1);
    else if (kind != MT_TASK_EPISODES && kind != MT_TASK_GROUPED)
        st = MT_RAISE(MT_ERR_ARG, "task.kind = %s reads no dataset", mt_config_task_kind_name(kind));
    else if (has_episodes && kind != MT_TASK_EPISODES)
        st = MT_RAISE(MT_ERR_CONFIG, "%s: fixed episodes need task.kind = episodes", episodes_path);
    else if (!(ds = calloc(1, sizeof *ds)) || !(L = calloc(1, sizeof *L)))
        st = MT_RAISE(MT_ERR_NOMEM, "%s: out of memory", path);
    if (ds) {
        ds->window = MPI_WIN_NULL;
        ds->node_comm = MPI_COMM_NULL;
    }
    MT_TRY(mt_dist_agree(d, st));
    snprintf(ds->path, sizeof ds->path, "%s", path);
    int rc = MPI_Comm_split_type(d->comm, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &ds->node_comm);
    if (rc != MPI_SUCCESS) ds->node_comm = MPI_COMM_NULL;
    MT_TRY(mt_dist_agree(d, rc == MPI_SUCCESS ? MT_OK : MT_RAISE(MT_ERR_MPI, "MPI_Comm_split_type failed")));
    MPI_Comm_rank(ds->node_comm, &node_rank);

    /* Phase 1: node rank 0 checks the files and plans the window; the node learns the plan. */
    L->kind = kind == MT_TASK_GROUPED ? MT_DATASET_GROUPED : MT_DATASET_IMAGES;
    if (node_rank == 0) {
        H5E_auto2_t old_func = NULL;
        void *old_data = NULL;
        H5Eget_auto2(H5E_DEFAULT, &old_func, &old_data);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our one-line messages replace HDF5's stack dumps */
        r.path = path;
        r.episodes_path = has_episodes ? episodes_path : NULL;
        /* Phase 1 runs first in a child process: should libhdf5 crash or hang on a hostile file,
         * only the child goes down. Then here, for real. */
        char what[2 * sizeof ds->path + 16];
        if (has_episodes && strcmp(episodes_path, path) != 0) snprintf(what, sizeof what, "%s (or %s)", path, episodes_path);
        else snprintf(what, sizeof what, "%s", path);
        plan_args args = {&r, L};
        mt_status checked = mt_isolate_run(plan_in_child, &args, what, MT_ISOLATE_TIMEOUT_S);
        record(L, checked == MT_OK ? plan(&r, L) : checked);
        H5Eset_auto2(H5E_DEFAULT, old_func, old_data);
    }
    bcast_layout(d, L, ds->node_comm);
    st = node_rank == 0 ? (mt_status)L->status : adopt(L);

    if (st == MT_OK) {
        /* One window per node, all of it node rank 0's: the others map that segment. */
        void *base = NULL;
        rc = MPI_Win_allocate_shared(node_rank == 0 ? (MPI_Aint)L->total : 0, 1, MPI_INFO_NULL, ds->node_comm, &base,
                                     &ds->window);
        if (rc != MPI_SUCCESS) ds->window = MPI_WIN_NULL;
        int outcome[2] = {rc != MPI_SUCCESS, rc == MPI_SUCCESS}; /* some failed, some succeeded */
        if (MPI_Allreduce(MPI_IN_PLACE, outcome, 2, MPI_INT, MPI_MAX, ds->node_comm) != MPI_SUCCESS)
            mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Allreduce failed while loading a dataset"));
        if (outcome[0] && outcome[1]) /* a window on some ranks only cannot be freed collectively */
            mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "%s: MPI_Win_allocate_shared failed on some ranks of the node", path));
        if (outcome[0]) {
            st = MT_RAISE(MT_ERR_NOMEM, "%s: cannot allocate %.1f MiB of node shared memory (MPI_Win_allocate_shared; "
                                        "is /dev/shm large enough?)", path, (double)L->total / (1 << 20));
        } else {
            /* Phase 2: node rank 0 fills the window; the fence makes its stores visible. */
            if (node_rank == 0) {
                H5E_auto2_t old_func = NULL;
                void *old_data = NULL;
                H5Eget_auto2(H5E_DEFAULT, &old_func, &old_data);
                H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
                record(L, fill(&r, L, base));
                H5Eset_auto2(H5E_DEFAULT, old_func, old_data);
                set_views(ds, L, base);
            }
            if (MPI_Win_fence(0, ds->window) != MPI_SUCCESS)
                mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Win_fence failed while loading a dataset"));
            bcast_layout(d, L, ds->node_comm);
            st = node_rank == 0 ? (mt_status)L->status : adopt(L);
            if (st == MT_OK && node_rank != 0) {
                MPI_Aint size;
                int disp_unit;
                if (MPI_Win_shared_query(ds->window, 0, &size, &disp_unit, &base) != MPI_SUCCESS || (uint64_t)size < L->total)
                    st = MT_RAISE(MT_ERR_MPI, "%s: MPI_Win_shared_query failed", path);
                else set_views(ds, L, base);
            }
        }
    }
    if (node_rank == 0) reader_close(&r);
    MT_TRY(mt_dist_agree(d, st));
    free(L);
    *out = ds;
    return MT_OK;
fail:
    if (node_rank == 0) reader_close(&r);
    free(L);
    release(ds);
    return st;
}

void mt_task_dataset_free(mt_task_dataset *ds) { release(ds); }

/* ---- queries ------------------------------------------------------------------------------ */

int mt_task_dataset_split(const mt_task_dataset *ds, mt_split split, int *ids) {
    int n = ds->kind == MT_DATASET_IMAGES ? ds->n_classes : ds->n_groups;
    const int32_t *which = ds->kind == MT_DATASET_IMAGES ? ds->class_split : ds->group_split;
    int count = 0;
    for (int i = 0; i < n; i++) {
        if (split != MT_SPLIT_ALL && which[i] != (int32_t)split) continue;
        if (ids) ids[count] = i;
        count++;
    }
    return count;
}

const char *mt_task_dataset_class_name(const mt_task_dataset *ds, int c) {
    if (!ds->class_names || c < 0 || c >= ds->n_classes) return NULL;
    return ds->class_names + (size_t)c * (size_t)ds->class_name_size;
}

mt_status mt_task_dataset_check_episodes(const mt_task_dataset *ds, mt_split split, int ways, int shots, int queries) {
    if (!ds || ds->kind != MT_DATASET_IMAGES)
        return MT_RAISE(MT_ERR_ARG, "mt_task_dataset_check_episodes: not an images dataset");
    int n = mt_task_dataset_split(ds, split, NULL);
    if (ways > n)
        return MT_RAISE(MT_ERR_CONFIG, "%s: /class_split: task.ways = %d but split '%s' has %d class%s", ds->path, ways,
                        mt_config_split_name(split), n, n == 1 ? "" : "es");
    int64_t need = (int64_t)shots + queries;
    for (int c = 0; c < ds->n_classes; c++) {
        if (split != MT_SPLIT_ALL && ds->class_split[c] != (int32_t)split) continue;
        int64_t have = ds->class_start[c + 1] - ds->class_start[c];
        if (have >= need) continue;
        const char *name = mt_task_dataset_class_name(ds, c);
        char label[32];
        snprintf(label, sizeof label, "%d", c);
        return MT_RAISE(MT_ERR_CONFIG, "%s: /labels: class %s%s%s has %" PRId64 " image%s, fewer than task.shots + "
                                       "task.queries = %" PRId64, ds->path, name ? "'" : "", name ? name : label,
                        name ? "'" : "", have, have == 1 ? "" : "s", need);
    }
    return MT_OK;
}

mt_status mt_task_dataset_check_groups(const mt_task_dataset *ds, mt_split split, int shots, int queries) {
    if (!ds || ds->kind != MT_DATASET_GROUPED)
        return MT_RAISE(MT_ERR_ARG, "mt_task_dataset_check_groups: not a grouped dataset");
    if (mt_task_dataset_split(ds, split, NULL) == 0)
        return MT_RAISE(MT_ERR_CONFIG, "%s: /group_split: split '%s' has no groups", ds->path, mt_config_split_name(split));
    int64_t need = (int64_t)shots + queries;
    for (int g = 0; g < ds->n_groups; g++) {
        if (split != MT_SPLIT_ALL && ds->group_split[g] != (int32_t)split) continue;
        int64_t have = ds->group_start[g + 1] - ds->group_start[g];
        if (have < need)
            return MT_RAISE(MT_ERR_CONFIG, "%s: /group: group %d has %" PRId64 " row%s, fewer than task.shots + "
                                           "task.queries = %" PRId64, ds->path, g, have, have == 1 ? "" : "s", need);
    }
    return MT_OK;
}
