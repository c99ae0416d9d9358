/* HDF5 datasets: images with classes, splits and names; grouped regression and classification;
 * fixed episodes; every kind of bad input refused with a message naming file and dataset; the
 * Omniglot converter end to end. Runs as a singleton under ctest and under mpirun too (rank 0
 * writes the files, every rank loads them and checks what it maps). */
#define _GNU_SOURCE /* mkdtemp, nftw */
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <hdf5.h>
#include <mpi.h>

#include "metatrain/dataset.h"
#include "metatrain/nn.h"
#include "metatrain/rng.h"
#include "metatrain/task.h"

static mt_dist dist;
static char tmpdir[128];

static const char *path_in(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", tmpdir, name);
    return buf;
}
#define PATH(buf, name) path_in((buf), sizeof(buf), (name))

/* Runs on rank 0 only; the others wait until the files are there. */
#define ON_RANK0(code)                                                                                                 \
    do {                                                                                                               \
        if (dist.rank == 0) {                                                                                          \
            code;                                                                                                      \
        }                                                                                                              \
        MPI_Barrier(MPI_COMM_WORLD);                                                                                   \
    } while (0)

/* ---- writing HDF5 by hand ---- */

static hid_t h5_create(const char *name) {
    char p[256];
    hid_t f = H5Fcreate(PATH(p, name), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    return f;
}

static void put(hid_t f, const char *name, hid_t type, int rank, const hsize_t *dims, const void *data) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(f, name, type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(d >= 0);
    assert_true(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    H5Dclose(d);
    H5Sclose(space);
    H5Pclose(lcpl);
}

static void put_i32(hid_t f, const char *name, hsize_t n, const int32_t *v) {
    put(f, name, H5T_NATIVE_INT32, 1, &n, v);
}

static void put_attr(hid_t obj, const char *name, hid_t type, const void *value) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(a >= 0);
    assert_true(H5Awrite(a, type, value) >= 0);
    H5Aclose(a);
    H5Sclose(space);
}

static void spit(const char *name, const char *text) {
    char p[256];
    FILE *f = fopen(PATH(p, name), "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* ---- the sample images file: 7 classes of 4, 1, 6, 3, 5, 2, 7 images, shuffled ---- */

enum { N = 28, C = 2, H = 3, W = 4, PIX = C * H * W, K = 7 };
static const int class_size[K] = {4, 1, 6, 3, 5, 2, 7};
static const int32_t sample_split[K] = {0, 1, 2, 0, 0, 1, 0};
static const char *const sample_names[K] = {"Alpha/character01",
                                            "Alpha/character02",
                                            "Beta/character01",
                                            "Beta/character02",
                                            "Gamma/c1",
                                            "Gamma/character_long_name",
                                            "Z"};
static uint8_t sample_images[N * PIX];
static int32_t sample_labels[N];

static void make_sample(void) {
    int32_t by_class[N], n = 0;
    for (int c = 0; c < K; c++)
        for (int i = 0; i < class_size[c]; i++) by_class[n++] = c;
    for (int i = 0; i < N; i++) sample_labels[i] = by_class[(i * 11) % N]; /* 11 is prime to 28 */
    for (int i = 0; i < N * PIX; i++) sample_images[i] = (uint8_t)((i * 7 + i / PIX) & 255);
}

typedef struct {
    int no_images, float_images, flat_images, huge_images, int64_labels;
    int bad_label;   /* > 0: this label at index 12 */
    int labels_len;  /* > 0: /labels this long */
    int split_value; /* > 0: class_split[2] = this */
    int split_len;   /* > 0: /class_split this long */
    int no_split, no_names, no_attrs, vlen_names;
    int names_len;     /* > 0: /class_names this long */
    int with_episodes; /* the good episodes inside this file */
} flaws;

static void write_episodes(hid_t f, int bad_index, int bad_label);

static void write_images(const char *name, flaws fl) {
    hid_t f = h5_create(name);
    if (fl.huge_images) { /* 18 GB declared, nothing written: the loader must refuse it unread */
        hsize_t dims[4] = {140000, 1, 360, 360}, chunk[4] = {1, 1, 360, 360};
        hid_t space = H5Screate_simple(4, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
        H5Pset_chunk(dcpl, 4, chunk);
        hid_t d = H5Dcreate2(f, "images", H5T_NATIVE_UINT8, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        assert_true(d >= 0);
        H5Dclose(d);
        H5Pclose(dcpl);
        H5Sclose(space);
    } else if (fl.float_images) {
        float img[N * PIX];
        for (int i = 0; i < N * PIX; i++) img[i] = sample_images[i] / 255.0f;
        put(f, "images", H5T_NATIVE_FLOAT, 4, (hsize_t[]){N, C, H, W}, img);
    } else if (fl.flat_images) {
        put(f, "images", H5T_NATIVE_UINT8, 2, (hsize_t[]){N, PIX}, sample_images);
    } else if (!fl.no_images) {
        put(f, "images", H5T_NATIVE_UINT8, 4, (hsize_t[]){N, C, H, W}, sample_images);
    }
    int32_t labels[N];
    memcpy(labels, sample_labels, sizeof labels);
    if (fl.bad_label) labels[12] = fl.bad_label;
    if (fl.int64_labels) {
        int64_t wide[N];
        for (int i = 0; i < N; i++) wide[i] = labels[i];
        put(f, "labels", H5T_NATIVE_INT64, 1, (hsize_t[]){N}, wide);
    } else {
        put_i32(f, "labels", fl.labels_len ? (hsize_t)fl.labels_len : N, labels);
    }
    if (!fl.no_split) {
        int32_t split[K];
        memcpy(split, sample_split, sizeof split);
        if (fl.split_value) split[2] = fl.split_value;
        put_i32(f, "class_split", fl.split_len ? (hsize_t)fl.split_len : K, split);
    }
    if (!fl.no_names) {
        hsize_t n = fl.names_len ? (hsize_t)fl.names_len : K;
        hid_t type = H5Tcopy(H5T_C_S1);
        if (fl.vlen_names) {
            const char *names[K + 1] = {0};
            for (int c = 0; c < K; c++) names[c] = sample_names[c];
            H5Tset_size(type, H5T_VARIABLE);
            put(f, "class_names", type, 1, &n, names);
        } else {
            char names[K + 1][32] = {{0}};
            for (int c = 0; c < K; c++) strcpy(names[c], sample_names[c]);
            H5Tset_size(type, 32);
            H5Tset_strpad(type, H5T_STR_NULLPAD);
            put(f, "class_names", type, 1, &n, names);
        }
        H5Tclose(type);
    }
    if (!fl.no_attrs) {
        double scale = 0.5, offset = -1.0;
        put_attr(f, "pixel_scale", H5T_NATIVE_DOUBLE, &scale);
        put_attr(f, "pixel_offset", H5T_NATIVE_DOUBLE, &offset);
    }
    if (fl.with_episodes) write_episodes(f, 0, 0);
    H5Fclose(f);
}

/* ---- fixed episodes: 3 episodes of 2 ways, 4 support and 2 query images each ---- */

enum { E = 3, ES = 4, EQ = 2, EWAYS = 2 };
static int32_t ep_support[E * ES], ep_support_label[E * ES], ep_query[E * EQ], ep_query_label[E * EQ];

/* The k-th image of class c (cycling through the class), in the sample's order. */
static int32_t image_of_class(int c, int k) {
    k %= class_size[c];
    for (int32_t i = 0; i < N; i++)
        if (sample_labels[i] == c && k-- == 0) return i;
    return -1;
}

/* Episode e's label w is class (e + 2w) mod K, so that each label is one class, as the loader
 * demands of episodes drawn from the file they index. Call after make_sample. */
static void make_episodes(void) {
    for (int i = 0; i < E * ES; i++) {
        ep_support_label[i] = i % EWAYS;
        ep_support[i] = image_of_class((i / ES + 2 * ep_support_label[i]) % K, i % ES / EWAYS);
    }
    for (int i = 0; i < E * EQ; i++) {
        ep_query_label[i] = (i + 1) % EWAYS;
        ep_query[i] = image_of_class((i / EQ + 2 * ep_query_label[i]) % K, 2 + i % EQ);
    }
}

static int episodes_rows_off; /* nonzero: the episodes claim a file of N + this rows */

static void write_episodes(hid_t f, int bad_index, int bad_label) {
    int32_t support[E * ES], query_label[E * EQ];
    memcpy(support, ep_support, sizeof support);
    memcpy(query_label, ep_query_label, sizeof query_label);
    if (bad_index) support[5] = bad_index;
    if (bad_label) query_label[3] = bad_label;
    put(f, "episodes/support", H5T_NATIVE_INT32, 2, (hsize_t[]){E, ES}, support);
    put(f, "episodes/support_labels", H5T_NATIVE_INT32, 2, (hsize_t[]){E, ES}, ep_support_label);
    put(f, "episodes/query", H5T_NATIVE_INT32, 2, (hsize_t[]){E, EQ}, ep_query);
    put(f, "episodes/query_labels", H5T_NATIVE_INT32, 2, (hsize_t[]){E, EQ}, query_label);
    hid_t g = H5Gopen2(f, "episodes", H5P_DEFAULT);
    int32_t ways = EWAYS;
    int64_t rows = N + episodes_rows_off; /* the rows of the file indexed, as scripts/fixed-episodes writes */
    put_attr(g, "ways", H5T_NATIVE_INT32, &ways);
    put_attr(g, "rows", H5T_NATIVE_INT64, &rows);
    H5Gclose(g);
}

static void write_episodes_file(const char *name, int bad_index, int bad_label) {
    hid_t f = h5_create(name);
    write_episodes(f, bad_index, bad_label);
    H5Fclose(f);
}

/* ---- grouped: 10 rows of 3 features, groups 2 0 1 2 0 3 1 2 0 1 ---- */

enum { R = 10, D = 3, T = 2, G = 4 };
static const int32_t sample_group[R] = {2, 0, 1, 2, 0, 3, 1, 2, 0, 1};
static const int32_t sample_group_split[G] = {0, 0, 1, 2};
static const int32_t sample_target_class[R] = {0, 2, 1, 1, 0, 2, 2, 0, 1, 0};

typedef struct {
    int classification, no_group, no_group_split, int_features, flat_targets, nan_feature;
    int bad_group; /* > 0: this group at index 4 */
    int group_len; /* > 0: /group this long */
} gflaws;

static void write_grouped(const char *name, gflaws fl) {
    hid_t f = h5_create(name);
    float features[R * D], targets[R * T];
    for (int i = 0; i < R * D; i++) features[i] = (float)i * 0.5f - 3.0f;
    for (int i = 0; i < R * T; i++) targets[i] = (float)i * -0.25f;
    if (fl.nan_feature) features[7] = NAN;
    if (fl.int_features) {
        int32_t ints[R * D];
        for (int i = 0; i < R * D; i++) ints[i] = i;
        put(f, "features", H5T_NATIVE_INT32, 2, (hsize_t[]){R, D}, ints);
    } else {
        put(f, "features", H5T_NATIVE_FLOAT, 2, (hsize_t[]){R, D}, features);
    }
    if (fl.classification)
        put_i32(f, "targets", R, sample_target_class);
    else if (fl.flat_targets)
        put(f, "targets", H5T_NATIVE_FLOAT, 1, (hsize_t[]){R}, targets);
    else
        put(f, "targets", H5T_NATIVE_FLOAT, 2, (hsize_t[]){R, T}, targets);
    int32_t group[R];
    memcpy(group, sample_group, sizeof group);
    if (fl.bad_group) group[4] = fl.bad_group;
    if (!fl.no_group) put_i32(f, "group", fl.group_len ? (hsize_t)fl.group_len : R, group);
    if (!fl.no_group_split) put_i32(f, "group_split", G, sample_group_split);
    H5Fclose(f);
}

/* ---- loading ---- */

static mt_task_dataset *load_ok(const char *name, mt_task_kind kind, const char *episodes) {
    char p[256], e[256];
    mt_task_dataset *ds = NULL;
    mt_error_clear();
    mt_status st =
        mt_task_dataset_load(&ds, &dist, PATH(p, name), kind, episodes && episodes[0] ? PATH(e, episodes) : episodes);
    if (st != MT_OK) fail_msg("loading %s: %s: %s", name, mt_status_name(st), mt_error_message());
    assert_non_null(ds);
    assert_string_equal(ds->path, p);
    return ds;
}

static void assert_message(const char *a, const char *b) {
    const char *msg = mt_error_message();
    if ((a && !strstr(msg, a)) || (b && !strstr(msg, b)))
        fail_msg("message \"%s\" lacks \"%s\" or \"%s\"", msg, a ? a : "", b ? b : "");
    assert_null(strchr(msg, '\n'));
}

/* Loading must fail with `want`, a one-line message naming the file and `what`, and no dataset. */
static void expect_failure(const char *name, mt_task_kind kind, const char *episodes, mt_status want,
                           const char *file_named, const char *what) {
    char p[256], e[256];
    mt_task_dataset *ds = (mt_task_dataset *)&dist; /* must be reset */
    mt_error_clear();
    mt_status st = mt_task_dataset_load(&ds, &dist, PATH(p, name), kind, episodes ? PATH(e, episodes) : NULL);
    if (st != want)
        fail_msg("loading %s: got %s (%s), expected %s", name, mt_status_name(st), mt_error_message(),
                 mt_status_name(want));
    assert_null(ds);
    assert_message(file_named ? file_named : name, what);
    mt_error_clear();
}

/* The index built by hand: class c's images in ascending order. */
static void check_index(const int64_t *start, const int64_t *members, const int32_t *ids, int64_t n, int n_ids) {
    assert_int_equal(start[0], 0);
    assert_int_equal(start[n_ids], n);
    for (int c = 0; c < n_ids; c++) {
        int64_t k = start[c];
        for (int64_t i = 0; i < n; i++)
            if (ids[i] == c) assert_int_equal(members[k++], i);
        assert_int_equal(k, start[c + 1]);
    }
}

/* ---- good files ---- */

static void test_images(void **state) {
    ON_RANK0(write_images("images.h5", (flaws){0}));
    mt_task_dataset *ds = load_ok("images.h5", MT_TASK_EPISODES, NULL);
    assert_int_equal(ds->kind, MT_DATASET_IMAGES);
    assert_int_equal(ds->n_images, N);
    assert_int_equal(ds->channels, C);
    assert_int_equal(ds->height, H);
    assert_int_equal(ds->width, W);
    assert_memory_equal(ds->images, sample_images, sizeof sample_images);
    assert_memory_equal(ds->labels, sample_labels, sizeof sample_labels);
    assert_true(ds->pixel_scale == 0.5 && ds->pixel_offset == -1.0);
    assert_int_equal(ds->n_classes, K);
    assert_memory_equal(ds->class_split, sample_split, sizeof sample_split);
    for (int c = 0; c < K; c++) {
        assert_int_equal(ds->class_start[c + 1] - ds->class_start[c], class_size[c]);
        assert_string_equal(mt_task_dataset_class_name(ds, c), sample_names[c]);
    }
    check_index(ds->class_start, ds->class_members, ds->labels, N, K);
    assert_null(mt_task_dataset_class_name(ds, K));
    assert_int_equal(ds->n_episodes, 0);
    assert_null(ds->episode_support_index);
    assert_null(ds->features);
    assert_true(((uintptr_t)ds->class_start & 7) == 0 && ((uintptr_t)ds->labels & 3) == 0);

    int ids[K];
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_TRAIN, ids), 4);
    assert_memory_equal(ids, ((int[]){0, 3, 4, 6}), 4 * sizeof(int));
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_VAL, ids), 2);
    assert_memory_equal(ids, ((int[]){1, 5}), 2 * sizeof(int));
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_TEST, ids), 1);
    assert_int_equal(ids[0], 2);
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_ALL, NULL), K);

    /* train classes hold 4, 3, 5, 7 images */
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TRAIN, 4, 1, 2), MT_OK);
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_ALL, 7, 1, 0), MT_OK);
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TEST, 1, 3, 3), MT_OK);
    assert_int_equal(mt_error_message()[0], '\0');
    mt_task_dataset_free(ds);
}

static void test_images_defaults(void **state) {
    /* no split, no names, no attributes: all train, 1/255 and 0, classes from the labels */
    ON_RANK0(write_images("bare.h5", (flaws){.no_split = 1, .no_names = 1, .no_attrs = 1}));
    mt_task_dataset *ds = load_ok("bare.h5", MT_TASK_EPISODES, "");
    assert_int_equal(ds->n_classes, K);
    assert_true(ds->pixel_scale == 1.0 / 255.0 && ds->pixel_offset == 0.0);
    assert_null(ds->class_names);
    assert_null(mt_task_dataset_class_name(ds, 0));
    for (int c = 0; c < K; c++) assert_int_equal(ds->class_split[c], 0);
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_TRAIN, NULL), K);
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_TEST, NULL), 0);
    check_index(ds->class_start, ds->class_members, ds->labels, N, K);
    /* unnamed classes are named by number */
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TRAIN, 2, 1, 1), MT_ERR_CONFIG);
    assert_message("bare.h5", "class 1 has 1 image,");
    mt_error_clear();
    mt_task_dataset_free(ds);

    /* variable-length names, one more than the labels use: an empty class 7 */
    ON_RANK0(write_images("vlen.h5", (flaws){.no_split = 1, .vlen_names = 1, .names_len = K + 1}));
    ds = load_ok("vlen.h5", MT_TASK_EPISODES, NULL);
    assert_int_equal(ds->n_classes, K + 1);
    for (int c = 0; c < K; c++) assert_string_equal(mt_task_dataset_class_name(ds, c), sample_names[c]);
    assert_string_equal(mt_task_dataset_class_name(ds, K), "");
    assert_int_equal(ds->class_start[K], ds->class_start[K + 1]);
    check_index(ds->class_start, ds->class_members, ds->labels, N, K + 1);
    mt_task_dataset_free(ds);
}

static void test_episodes(void **state) {
    ON_RANK0(write_images("images_ep.h5", (flaws){.with_episodes = 1}); write_episodes_file("ep.h5", 0, 0));
    const char *files[2][2] = {{"images_ep.h5", "images_ep.h5"}, {"images_ep.h5", "ep.h5"}};
    for (int i = 0; i < 2; i++) {
        mt_task_dataset *ds = load_ok(files[i][0], MT_TASK_EPISODES, files[i][1]);
        assert_int_equal(ds->n_episodes, E);
        assert_int_equal(ds->episode_ways, EWAYS);
        assert_int_equal(ds->episode_support, ES);
        assert_int_equal(ds->episode_query, EQ);
        assert_memory_equal(ds->episode_support_index, ep_support, sizeof ep_support);
        assert_memory_equal(ds->episode_support_label, ep_support_label, sizeof ep_support_label);
        assert_memory_equal(ds->episode_query_index, ep_query, sizeof ep_query);
        assert_memory_equal(ds->episode_query_label, ep_query_label, sizeof ep_query_label);
        assert_memory_equal(ds->images, sample_images, sizeof sample_images); /* still all there */
        mt_task_dataset_free(ds);
    }
    /* without episodes_path, /episodes in the images file is not read */
    mt_task_dataset *ds = load_ok("images_ep.h5", MT_TASK_EPISODES, NULL);
    assert_int_equal(ds->n_episodes, 0);
    mt_task_dataset_free(ds);
}

static void test_grouped_regression(void **state) {
    ON_RANK0(write_grouped("reg.h5", (gflaws){0}));
    mt_task_dataset *ds = load_ok("reg.h5", MT_TASK_GROUPED, NULL);
    assert_int_equal(ds->kind, MT_DATASET_GROUPED);
    assert_int_equal(ds->n_rows, R);
    assert_int_equal(ds->n_features, D);
    assert_int_equal(ds->n_targets, T);
    for (int i = 0; i < R * D; i++) assert_true(ds->features[i] == (float)i * 0.5f - 3.0f);
    for (int i = 0; i < R * T; i++) assert_true(ds->targets[i] == (float)i * -0.25f);
    assert_null(ds->target_class);
    assert_null(ds->images);
    assert_int_equal(ds->n_groups, G);
    assert_memory_equal(ds->group_split, sample_group_split, sizeof sample_group_split);
    check_index(ds->group_start, ds->group_members, sample_group, R, G);
    assert_int_equal(ds->group_start[4] - ds->group_start[3], 1);
    int ids[G];
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_TRAIN, ids), 2);
    assert_memory_equal(ids, ((int[]){0, 1}), 2 * sizeof(int));
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_ALL, NULL), G);
    assert_int_equal(mt_task_dataset_check_groups(ds, MT_SPLIT_TRAIN, 1, 2), MT_OK);
    assert_int_equal(mt_task_dataset_check_groups(ds, MT_SPLIT_TEST, 1, 0), MT_OK);
    mt_task_dataset_free(ds);
}

static void test_grouped_classification(void **state) {
    ON_RANK0(write_grouped("cls.h5", (gflaws){.classification = 1, .no_group_split = 1}));
    mt_task_dataset *ds = load_ok("cls.h5", MT_TASK_GROUPED, NULL);
    assert_int_equal(ds->n_targets, 0);
    assert_null(ds->targets);
    assert_memory_equal(ds->target_class, sample_target_class, sizeof sample_target_class);
    assert_int_equal(ds->n_classes, 3);
    assert_int_equal(ds->n_groups, G); /* largest group + 1 */
    for (int g = 0; g < G; g++) assert_int_equal(ds->group_split[g], 0);
    check_index(ds->group_start, ds->group_members, sample_group, R, G);
    mt_task_dataset_free(ds);
}

/* ---- files that are not datasets ---- */

static void test_missing_file(void **state) {
    expect_failure("nonexistent.h5", MT_TASK_EPISODES, NULL, MT_ERR_IO, NULL, "no such file");
}

static void test_directory(void **state) {
    char p[256];
    ON_RANK0(assert_int_equal(mkdir(PATH(p, "adir.h5"), 0755), 0));
    expect_failure("adir.h5", MT_TASK_EPISODES, NULL, MT_ERR_IO, NULL, "directory");
}

static void test_empty_file(void **state) {
    ON_RANK0(spit("empty.h5", ""));
    expect_failure("empty.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL, "empty");
}

static void test_text_file(void **state) {
    ON_RANK0(spit("text.h5", "images,labels\n1,2\n"));
    expect_failure("text.h5", MT_TASK_GROUPED, NULL, MT_ERR_FORMAT, NULL, "not an HDF5 file");
}

static void test_missing_episodes_file(void **state) {
    ON_RANK0(write_images("images_noep.h5", (flaws){0}));
    expect_failure("images_noep.h5", MT_TASK_EPISODES, "no_episodes.h5", MT_ERR_IO, "no_episodes.h5", "no such file");
    /* a file without /episodes */
    expect_failure("images_noep.h5", MT_TASK_EPISODES, "images_noep.h5", MT_ERR_FORMAT, NULL,
                   "/episodes: no such group");
}

static void test_bad_arguments(void **state) {
    char p[256];
    mt_task_dataset *ds = NULL;
    ON_RANK0(write_images("args.h5", (flaws){0}));
    mt_error_clear();
    assert_int_equal(mt_task_dataset_load(&ds, &dist, PATH(p, "args.h5"), MT_TASK_SINUSOID, NULL), MT_ERR_ARG);
    assert_null(ds);
    mt_error_clear();
    assert_int_equal(mt_task_dataset_load(&ds, &dist, "", MT_TASK_EPISODES, NULL), MT_ERR_CONFIG);
    assert_message("task.path", NULL);
    mt_error_clear();
    /* Grouped data may carry fixed episodes too, but an images file is no grouped data. */
    assert_int_equal(mt_task_dataset_load(&ds, &dist, p, MT_TASK_GROUPED, p), MT_ERR_FORMAT);
    assert_message("args.h5", "/features");
    mt_error_clear();
    mt_task_dataset_free(NULL);
}

/* ---- malformed images files ---- */

static void test_missing_images(void **state) {
    ON_RANK0(write_images("noimages.h5", (flaws){.no_images = 1}));
    expect_failure("noimages.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL, "/images: no such dataset");
    /* an images file read as grouped lacks /features */
    expect_failure("noimages.h5", MT_TASK_GROUPED, NULL, MT_ERR_FORMAT, NULL, "/features: no such dataset");
}

static void test_float_images(void **state) {
    ON_RANK0(write_images("float.h5", (flaws){.float_images = 1}));
    expect_failure("float.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL,
                   "/images: expected uint8 [N, C, H, W], got float32 of rank 4");
}

static void test_wrong_rank(void **state) {
    ON_RANK0(write_images("flat.h5", (flaws){.flat_images = 1}));
    expect_failure("flat.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL,
                   "/images: expected uint8 [N, C, H, W], got uint8 of rank 2");
}

static void test_int64_labels(void **state) {
    ON_RANK0(write_images("wide.h5", (flaws){.int64_labels = 1}));
    expect_failure("wide.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL,
                   "/labels: expected int32 [N], got int64 of rank 1");
}

static void test_label_out_of_range(void **state) {
    ON_RANK0(write_images("label.h5", (flaws){.bad_label = 999}));
    expect_failure("label.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL,
                   "/labels: label 999 at index 12 outside [0, 7)");
    ON_RANK0(write_images("negative.h5", (flaws){.bad_label = -3, .no_split = 1, .no_names = 1}));
    expect_failure("negative.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL,
                   "/labels: label -3 at index 12 is negative");
}

static void test_length_mismatch(void **state) {
    ON_RANK0(write_images("short.h5", (flaws){.labels_len = N - 2}));
    expect_failure("short.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL,
                   "/labels: length 26 does not match /images (28)");
}

static void test_bad_class_split(void **state) {
    ON_RANK0(write_images("split_value.h5", (flaws){.split_value = 3}));
    expect_failure("split_value.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL,
                   "/class_split: value 3 at index 2 outside [0, 2]");
    /* too short for the labels */
    ON_RANK0(write_images("split_short.h5", (flaws){.split_len = 5, .no_names = 1}));
    expect_failure("split_short.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL, "/class_split");
    /* disagreeing with /class_names */
    ON_RANK0(write_images("split_names.h5", (flaws){.split_len = 5}));
    expect_failure("split_names.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL,
                   "/class_names: length 7 does not match /class_split (5)");
}

static void test_too_large(void **state) {
    ON_RANK0(write_images("huge.h5", (flaws){.huge_images = 1}));
    expect_failure("huge.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL, "/images: more than the 16 GiB limit");
}

static void test_episode_index_out_of_range(void **state) {
    ON_RANK0(write_images("images_for_ep.h5", (flaws){0}); write_episodes_file("ep_index.h5", 28, 0));
    expect_failure("images_for_ep.h5", MT_TASK_EPISODES, "ep_index.h5", MT_ERR_FORMAT, "ep_index.h5",
                   "/episodes/support: index 28 at [1, 1] outside [0, 28)");
}

static void test_episode_label_out_of_range(void **state) {
    ON_RANK0(write_images("images_for_ep2.h5", (flaws){0}); write_episodes_file("ep_label.h5", 0, EWAYS));
    expect_failure("images_for_ep2.h5", MT_TASK_EPISODES, "ep_label.h5", MT_ERR_FORMAT, "ep_label.h5",
                   "/episodes/query_labels: label 2 at [1, 1] outside [0, 2)");
}

/* Episodes that index another file: episode 1's label 1 covers an image of class 5 and one of
 * class 3, as when the episodes come from a file whose images are in another order. */
static void test_episodes_of_another_file(void **state) {
    ON_RANK0(write_images("images_for_ep3.h5", (flaws){0});
             write_episodes_file("ep_other.h5", image_of_class(5, 0), 0));
    expect_failure("images_for_ep3.h5", MT_TASK_EPISODES, "ep_other.h5", MT_ERR_FORMAT, "ep_other.h5",
                   "/episodes/support: episode 1 mixes classes 5 and 3 of ");
}

/* Episodes drawn from a file of another size (another split of the same structure, say). */
static void test_episodes_of_another_size(void **state) {
    episodes_rows_off = 12;
    ON_RANK0(write_images("images_for_ep4.h5", (flaws){0}); write_episodes_file("ep_rows.h5", 0, 0));
    episodes_rows_off = 0;
    expect_failure("images_for_ep4.h5", MT_TASK_EPISODES, "ep_rows.h5", MT_ERR_FORMAT, "ep_rows.h5",
                   "/episodes: attribute rows = 40, but ");
}

/* ---- the caller's checks ---- */

static void test_class_too_small(void **state) {
    ON_RANK0(write_images("small_class.h5", (flaws){0}));
    mt_task_dataset *ds = load_ok("small_class.h5", MT_TASK_EPISODES, NULL);
    mt_error_clear();
    /* train classes hold 4, 3, 5, 7: class 3 is the first short of 2 + 2 */
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TRAIN, 2, 2, 2), MT_ERR_CONFIG);
    assert_message("small_class.h5",
                   "/labels: class 'Beta/character02' has 3 images, fewer than task.shots + task.queries = 4");
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_VAL, 2, 1, 1), MT_ERR_CONFIG);
    assert_message("small_class.h5", "class 'Alpha/character02' has 1 image,");
    mt_error_clear();
    mt_task_dataset_free(ds);
}

static void test_ways_above_split(void **state) {
    ON_RANK0(write_images("ways.h5", (flaws){0}));
    mt_task_dataset *ds = load_ok("ways.h5", MT_TASK_EPISODES, NULL);
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TEST, 2, 1, 1), MT_ERR_CONFIG);
    assert_message("ways.h5", "/class_split: task.ways = 2 but split 'test' has 1 class");
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_ALL, 8, 1, 0), MT_ERR_CONFIG);
    assert_message("ways.h5", "split 'all' has 7 classes");
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_groups(ds, MT_SPLIT_TRAIN, 1, 1), MT_ERR_ARG);
    mt_error_clear();
    mt_task_dataset_free(ds);
}

static void test_group_too_small(void **state) {
    ON_RANK0(write_grouped("small_group.h5", (gflaws){0}));
    mt_task_dataset *ds = load_ok("small_group.h5", MT_TASK_GROUPED, NULL);
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_groups(ds, MT_SPLIT_TEST, 1, 1), MT_ERR_CONFIG);
    assert_message("small_group.h5", "/group: group 3 has 1 row, fewer than task.shots + task.queries = 2");
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_groups(ds, MT_SPLIT_TRAIN, 2, 2), MT_ERR_CONFIG);
    assert_message("small_group.h5", "group 0 has 3 rows");
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TRAIN, 1, 1, 1), MT_ERR_ARG);
    mt_error_clear();
    mt_task_dataset_free(ds);

    /* a split without groups */
    ON_RANK0(write_grouped("one_split.h5", (gflaws){.no_group_split = 1}));
    ds = load_ok("one_split.h5", MT_TASK_GROUPED, NULL);
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_groups(ds, MT_SPLIT_VAL, 1, 1), MT_ERR_CONFIG);
    assert_message("one_split.h5", "/group_split: split 'val' has no groups");
    mt_error_clear();
    mt_task_dataset_free(ds);
}

/* ---- malformed grouped files ---- */

static void test_bad_grouped(void **state) {
    ON_RANK0(write_grouped("g_nogroup.h5", (gflaws){.no_group = 1}));
    expect_failure("g_nogroup.h5", MT_TASK_GROUPED, NULL, MT_ERR_FORMAT, NULL, "/group: no such dataset");
    ON_RANK0(write_grouped("g_int.h5", (gflaws){.int_features = 1}));
    expect_failure("g_int.h5", MT_TASK_GROUPED, NULL, MT_ERR_FORMAT, NULL,
                   "/features: expected float32 [N, D], got int32 of rank 2");
    ON_RANK0(write_grouped("g_flat.h5", (gflaws){.flat_targets = 1}));
    expect_failure("g_flat.h5", MT_TASK_GROUPED, NULL, MT_ERR_FORMAT, NULL, "/targets: expected float32 [N, T]");
    ON_RANK0(write_grouped("g_range.h5", (gflaws){.bad_group = 4}));
    expect_failure("g_range.h5", MT_TASK_GROUPED, NULL, MT_ERR_FORMAT, NULL,
                   "/group: group 4 at index 4 outside [0, 4)");
    ON_RANK0(write_grouped("g_len.h5", (gflaws){.group_len = 9}));
    expect_failure("g_len.h5", MT_TASK_GROUPED, NULL, MT_ERR_FORMAT, NULL,
                   "/group: length 9 does not match /features (10)");
    ON_RANK0(write_grouped("g_nan.h5", (gflaws){.nan_feature = 1}));
    expect_failure("g_nan.h5", MT_TASK_GROUPED, NULL, MT_ERR_FORMAT, NULL, "/features: non-finite value nan at [2, 1]");
    /* a grouped file read as images */
    expect_failure("g_nan.h5", MT_TASK_EPISODES, NULL, MT_ERR_FORMAT, NULL, "/images: no such dataset");
}

/* ---- the Omniglot converter ---- */

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = -1;
    if (dist.rank == 0) {
        int status = system(cmd);
        rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
    }
    MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return rc;
}

static const char *converter(char *buf, size_t size) {
    const char *src = getenv("METATRAIN_SOURCE_DIR");
    if (!src) return NULL;
    snprintf(buf, size, "%s/scripts/omniglot-to-h5", src);
    return access(buf, X_OK) == 0 ? buf : NULL;
}

/* The converter's stderr: one line naming `what`. Rank 0 reads it, before it runs again. */
static void assert_one_line(const char *log, const char *what) {
    char p[256], text[1024] = {0};
    FILE *f = dist.rank == 0 ? fopen(PATH(p, log), "r") : NULL;
    if (f) {
        if (fread(text, 1, sizeof text - 1, f) == 0) text[0] = '\0';
        fclose(f);
    }
    MPI_Bcast(text, sizeof text, MPI_CHAR, 0, MPI_COMM_WORLD);
    size_t n = strlen(text);
    if (n == 0 || !strstr(text, what) || strchr(text, '\n') != text + n - 1)
        fail_msg("converter said \"%s\", expected one line naming %s", text, what);
}

static void test_converter_tiny(void **state) {
    char conv[512], script[256], tree[256], out[256], log[256];
    if (!converter(conv, sizeof conv)) skip();
    /* 2 alphabets x 2 characters x 3 drawings, ink (0) on white (1): Alpha/character01 is inked
     * in its top half, character02 in its left half, Beta's in the bottom and right halves */
    ON_RANK0(spit("make_pngs.py",
                  "import os, sys\n"
                  "from PIL import Image, ImageDraw\n"
                  "root = sys.argv[1]\n"
                  "boxes = {('Alpha', 'character01'): (0, 0, 104, 51), ('Alpha', 'character02'): (0, 0, 51, 104),\n"
                  "         ('Beta', 'character01'): (0, 53, 104, 104), ('Beta', 'character02'): (53, 0, 104, 104)}\n"
                  "for (alphabet, character), box in boxes.items():\n"
                  "    d = os.path.join(root, 'images_background_tiny', alphabet, character)\n"
                  "    os.makedirs(d)\n"
                  "    for k in range(3):\n"
                  "        img = Image.new('1', (105, 105), 1)\n"
                  "        ImageDraw.Draw(img).rectangle(box, fill=0)\n"
                  "        img.save(os.path.join(d, '%04d_%02d.png' % (k + 1, k + 1)))\n"));
    assert_int_equal(run("/usr/bin/python3 '%s' '%s'", PATH(script, "make_pngs.py"), PATH(tree, "tree")), 0);
    assert_int_equal(run("/usr/bin/python3 '%s' --rotations --val-fraction 0.5 --seed 1 -o '%s' "
                         "'%s/images_background_tiny' > '%s' 2>&1",
                         conv, PATH(out, "tiny.h5"), tree, PATH(log, "tiny.log")),
                     0);
    assert_one_line("tiny.log", "16 classes (8 train, 8 val)");

    mt_task_dataset *ds = load_ok("tiny.h5", MT_TASK_EPISODES, NULL);
    assert_int_equal(ds->n_classes, 16);
    assert_int_equal(ds->n_images, 48);
    assert_int_equal(ds->channels, 1);
    assert_int_equal(ds->height, 28);
    assert_int_equal(ds->width, 28);
    assert_true(ds->pixel_scale == 1.0 / 255.0 && ds->pixel_offset == 0.0);
    const char *angles[4] = {"rot0", "rot90", "rot180", "rot270"};
    for (int c = 0; c < 16; c++) {
        char want[64];
        snprintf(want, sizeof want, "%s/character0%d/%s", c < 8 ? "Alpha" : "Beta", c / 4 % 2 + 1, angles[c % 4]);
        assert_string_equal(mt_task_dataset_class_name(ds, c), want);
        assert_int_equal(ds->class_start[c + 1] - ds->class_start[c], 3);
        assert_int_equal(ds->class_split[c], ds->class_split[c / 4 * 4]); /* rotations go together */
    }
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_VAL, NULL), 8);
    /* ink is 255, background 0; rot90 turns counter-clockwise: the top half becomes the left */
    const uint8_t *top = ds->images + ds->class_members[ds->class_start[0]] * 28 * 28;
    const uint8_t *left = ds->images + ds->class_members[ds->class_start[1]] * 28 * 28;
    const uint8_t *bottom = ds->images + ds->class_members[ds->class_start[2]] * 28 * 28;
    assert_int_equal(top[2 * 28 + 14], 255);
    assert_int_equal(top[25 * 28 + 14], 0);
    assert_int_equal(left[14 * 28 + 2], 255);
    assert_int_equal(left[14 * 28 + 25], 0);
    assert_int_equal(bottom[25 * 28 + 14], 255);
    assert_int_equal(bottom[2 * 28 + 14], 0);
    mt_task_dataset_free(ds);

    /* without rotations: plain names, 4 classes */
    assert_int_equal(run("/usr/bin/python3 '%s' -o '%s' '%s' > /dev/null", conv, PATH(out, "tiny_plain.h5"), tree), 0);
    ds = load_ok("tiny_plain.h5", MT_TASK_EPISODES, NULL);
    assert_int_equal(ds->n_classes, 4);
    assert_string_equal(mt_task_dataset_class_name(ds, 3), "Beta/character02");
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_TRAIN, NULL), 4);
    mt_task_dataset_free(ds);

    /* refusals: one line, non-zero exit, nothing written */
    char empty[256];
    ON_RANK0(spit("notzip.zip", "hello\n"); mkdir(PATH(empty, "nopngs"), 0755));
    const char *bad[][2] = {{"missing.zip", "missing.zip"}, {"notzip.zip", "not a zip"}, {"nopngs", "no PNG"}};
    for (int i = 0; i < 3; i++) {
        char in[256];
        assert_int_not_equal(run("/usr/bin/python3 '%s' -o '%s' '%s' 2> '%s'", conv, PATH(out, "bad.h5"),
                                 PATH(in, bad[i][0]), PATH(log, "bad.log")),
                             0);
        assert_one_line("bad.log", bad[i][1]);
    }
    assert_int_not_equal(run("/usr/bin/python3 '%s' --val-fraction 1.5 -o '%s' '%s' 2> '%s'", conv, out, tree, log), 0);
    assert_one_line("bad.log", "--val-fraction 1.5");
    assert_int_equal(access(out, F_OK), -1);
}

static void test_converter_omniglot(void **state) {
    char conv[512], data[512], zip[600], out[256];
    const char *src = getenv("METATRAIN_SOURCE_DIR");
    if (!converter(conv, sizeof conv) || !src) skip();
    snprintf(data, sizeof data, "%s/../shared/data/omniglot", src);
    snprintf(zip, sizeof zip, "%s/images_background_small1.zip", data);
    if (access(zip, R_OK) != 0) skip();

    assert_int_equal(run("/usr/bin/python3 '%s' --rotations --val-fraction 0.1 -o '%s' '%s' > /dev/null", conv,
                         PATH(out, "small1.h5"), zip),
                     0);
    mt_task_dataset *ds = load_ok("small1.h5", MT_TASK_EPISODES, NULL);
    assert_int_equal(ds->n_classes, 136 * 4);
    assert_int_equal(ds->n_images, 136 * 4 * 20);
    assert_int_equal(mt_task_dataset_split(ds, MT_SPLIT_VAL, NULL), 14 * 4);
    for (int c = 0; c < ds->n_classes; c++) assert_int_equal(ds->class_start[c + 1] - ds->class_start[c], 20);
    assert_string_equal(mt_task_dataset_class_name(ds, 0), "Balinese/character01/rot0");
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TRAIN, 20, 5, 15), MT_OK);
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_VAL, 5, 1, 15), MT_OK);
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TRAIN, 5, 5, 16), MT_ERR_CONFIG);
    assert_message("small1.h5", "has 20 images, fewer than task.shots + task.queries = 21");
    mt_error_clear();
    /* strokes are thin: a few percent ink */
    double ink = 0;
    for (int64_t i = 0; i < ds->n_images * 28 * 28; i++) ink += ds->images[i];
    ink /= 255.0 * (double)ds->n_images * 28 * 28;
    assert_true(ink > 0.03 && ink < 0.2);
    mt_task_dataset_free(ds);

    snprintf(zip, sizeof zip, "%s/images_background_small2.zip", data);
    if (access(zip, R_OK) != 0) return;
    assert_int_equal(run("/usr/bin/python3 '%s' -o '%s' '%s' > /dev/null", conv, PATH(out, "small2.h5"), zip), 0);
    ds = load_ok("small2.h5", MT_TASK_EPISODES, NULL);
    assert_int_equal(ds->n_classes, 156);
    assert_int_equal(ds->n_images, 156 * 20);
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_TEST, 30, 1, 1), MT_ERR_CONFIG);
    assert_message("small2.h5", "task.ways = 30 but split 'test' has 0 classes");
    mt_error_clear();
    assert_int_equal(mt_task_dataset_check_episodes(ds, MT_SPLIT_ALL, 30, 1, 19), MT_OK);
    mt_task_dataset_free(ds);
}

/* ---- set-up ---- */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) { return remove(path); }

static int setup(void **state) {
    make_sample();
    make_episodes();
    if (dist.rank == 0) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/test_dataset.XXXXXX");
        if (!mkdtemp(tmpdir)) return -1;
    }
    MPI_Bcast(tmpdir, sizeof tmpdir, MPI_CHAR, 0, MPI_COMM_WORLD);
    return 0;
}

static int teardown(void **state) {
    MPI_Barrier(MPI_COMM_WORLD);
    if (dist.rank == 0) nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---- tasks built from datasets (the samplers of src/task/episodes.c) ---- */

/* A family over `ds` for a model that fits it, its images moved by up to `shift` pixels and
 * turned by up to `rotate` degrees. */
static mt_status family_augmented(mt_task_family *fam, mt_nn_net *net, const char *spec, const mt_task_dataset *ds,
                                  mt_task_kind kind, int ways, int shots, int queries, mt_split split, int shift,
                                  double rotate) {
    mt_config cfg;
    mt_config_defaults(&cfg);
    cfg.task_kind = kind, cfg.ways = ways, cfg.shots = shots, cfg.queries = queries;
    assert_int_equal(mt_nn_parse(net, spec, "test"), MT_OK);
    mt_task_shape shape;
    mt_config_task_shape(&cfg, 0, &shape);
    assert_int_equal(shape.shift, 0); /* from the config, validation and evaluation never move */
    assert_true(shape.rotate == 0);
    shape.shift = shift;
    shape.rotate = rotate;
    return mt_task_family_init(fam, &shape, net, ds, split);
}

static void family_for(mt_task_family *fam, mt_nn_net *net, const char *spec, const mt_task_dataset *ds,
                       mt_task_kind kind, int ways, int shots, int queries, mt_split split) {
    if (family_augmented(fam, net, spec, ds, kind, ways, shots, queries, split, 0, 0) != MT_OK)
        fail_msg("family: %s", mt_error_message());
}

static void assert_image(const mt_task_dataset *ds, const float *x, int index) {
    for (int i = 0; i < PIX; i++)
        assert_float_equal(x[i], (float)(sample_images[index * PIX + i] * ds->pixel_scale + ds->pixel_offset), 1e-6);
}

/* Evaluation on a fixed-episode file uses exactly the file's support and query images and labels. */
static void test_fixed_episode_tasks(void **state) {
    ON_RANK0(write_images("fixed.h5", (flaws){0}); write_episodes_file("fixed-ep.h5", 0, 0));
    mt_task_dataset *ds = load_ok("fixed.h5", MT_TASK_EPISODES, "fixed-ep.h5");
    mt_task_family fam;
    mt_nn_net net;
    mt_task task;
    family_for(&fam, &net, "input 2x3x4, linear 2, xent", ds, MT_TASK_EPISODES, 5, 1, 1, MT_SPLIT_TEST);
    assert_true(fam.fixed_episodes);
    assert_int_equal(mt_task_support_size(&fam), ES);
    assert_int_equal(mt_task_query_size(&fam), EQ);
    assert_int_equal(mt_task_alloc(&task, &fam), MT_OK);
    for (int e = 0; e < E; e++) {
        mt_task_sample(&fam, 1, 7, (uint32_t)e, &task);
        for (int i = 0; i < ES; i++) {
            assert_image(ds, task.x_support + i * PIX, ep_support[e * ES + i]);
            assert_int_equal(task.label_support[i], ep_support_label[e * ES + i]);
        }
        for (int i = 0; i < EQ; i++) {
            assert_image(ds, task.x_query + i * PIX, ep_query[e * EQ + i]);
            assert_int_equal(task.label_query[i], ep_query_label[e * EQ + i]);
        }
    }
    mt_task_free(&task);
    mt_task_family_free(&fam);
    mt_task_dataset_free(ds);
}

/* Which image of the file holds these pixels. */
static int find_image(const mt_task_dataset *ds, const float *x) {
    for (int n = 0; n < N; n++) {
        int same = 1;
        for (int i = 0; i < PIX && same; i++)
            same = fabs(x[i] - (sample_images[n * PIX + i] * ds->pixel_scale + ds->pixel_offset)) < 1e-6;
        if (same) return n;
    }
    return -1;
}

/* Sampled episodes: distinct classes of the split, labels 0..N-1 shuffled per episode, distinct
 * images within a class, support and query from the same class per label, reproducible. */
static void test_sampled_episode_tasks(void **state) {
    ON_RANK0(write_images("sampled.h5", (flaws){0}));
    mt_task_dataset *ds = load_ok("sampled.h5", MT_TASK_EPISODES, NULL);
    mt_task_family fam;
    mt_nn_net net;
    mt_task task, again;
    enum { WAYS = 3, SHOTS = 1, QUERIES = 1 };
    family_for(&fam, &net, "input 2x3x4, linear 3, xent", ds, MT_TASK_EPISODES, WAYS, SHOTS, QUERIES, MT_SPLIT_TRAIN);
    assert_int_equal(mt_task_alloc(&task, &fam), MT_OK);
    assert_int_equal(mt_task_alloc(&again, &fam), MT_OK);
    int first_label_class[64], differs = 0;
    for (int t = 0; t < 64; t++) {
        mt_task_sample(&fam, 3, 11, (uint32_t)t, &task);
        int class_of_label[WAYS];
        for (int i = 0; i < WAYS * SHOTS; i++) {
            int img = find_image(ds, task.x_support + i * PIX);
            assert_true(img >= 0);
            assert_int_equal(sample_split[sample_labels[img]], 0); /* train split only */
            class_of_label[task.label_support[i]] = sample_labels[img];
            assert_int_equal(task.label_support[i], i / SHOTS);
        }
        for (int a = 0; a < WAYS; a++)
            for (int b = a + 1; b < WAYS; b++) assert_int_not_equal(class_of_label[a], class_of_label[b]);
        for (int i = 0; i < WAYS * QUERIES; i++) {
            int img = find_image(ds, task.x_query + i * PIX);
            assert_int_equal(sample_labels[img], class_of_label[task.label_query[i]]);
            for (int j = 0; j < WAYS * SHOTS; j++) assert_int_not_equal(img, find_image(ds, task.x_support + j * PIX));
        }
        first_label_class[t] = class_of_label[0];
        differs |= t > 0 && first_label_class[t] != first_label_class[0];
        mt_task_sample(&fam, 3, 11, (uint32_t)t, &again); /* the same key gives the same task */
        assert_memory_equal(task.x_support, again.x_support, (size_t)WAYS * SHOTS * PIX * sizeof(float));
        assert_memory_equal(task.x_query, again.x_query, (size_t)WAYS * QUERIES * PIX * sizeof(float));
    }
    assert_true(differs); /* labels are shuffled per episode */
    mt_task_free(&task);
    mt_task_free(&again);
    mt_task_family_free(&fam);
    mt_task_dataset_free(ds);
}

/* Image n moved right by dx and down by dy, edge pixels repeated into the gap. */
static void shifted_image(const mt_task_dataset *ds, int n, int dx, int dy, float *out) {
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                int si = i - dy, sj = j - dx;
                si = si < 0 ? 0 : si > H - 1 ? H - 1 : si;
                sj = sj < 0 ? 0 : sj > W - 1 ? W - 1 : sj;
                out[(c * H + i) * W + j] =
                    (float)(sample_images[n * PIX + (c * H + si) * W + sj] * ds->pixel_scale + ds->pixel_offset);
            }
}

/* Families that cannot move or turn their images refuse the augmentation, naming `key`: fixed
 * episodes (`images` evaluated on `episodes`) and synthetic tasks. */
static void assert_augment_refused(const char *images, const char *episodes, int shift, double rotate,
                                   const char *key) {
    mt_task_family fam;
    mt_nn_net net;
    mt_task_dataset *fixed = load_ok(images, MT_TASK_EPISODES, episodes);
    assert_int_equal(family_augmented(&fam, &net, "input 2x3x4, linear 2, xent", fixed, MT_TASK_EPISODES, 2, 1, 1,
                                      MT_SPLIT_TEST, shift, rotate),
                     MT_ERR_CONFIG);
    assert_non_null(strstr(mt_error_message(), key));
    assert_int_equal(family_augmented(&fam, &net, "input 1, linear 1, mse", NULL, MT_TASK_SINUSOID, 1, 5, 5,
                                      MT_SPLIT_TRAIN, shift, rotate),
                     MT_ERR_CONFIG);
    assert_non_null(strstr(mt_error_message(), key));
    mt_task_dataset_free(fixed);
}

/* task.augment_shift: the same episodes as without it (classes, images, labels: the shifts have
 * their own random stream), each image moved by its own offset in [-1, 1]^2, every offset
 * drawn; families that cannot move refuse it. */
static void test_shifted_episode_tasks(void **state) {
    ON_RANK0(write_images("shifted.h5", (flaws){0}); write_episodes_file("shifted-ep.h5", 0, 0));
    mt_task_dataset *ds = load_ok("shifted.h5", MT_TASK_EPISODES, NULL);
    mt_task_family fam, moved;
    mt_nn_net net;
    mt_task task, task_moved;
    enum { WAYS = 3, SHOTS = 1, QUERIES = 2, SHIFT = 1, SPAN = 2 * SHIFT + 1 };
    const char *spec = "input 2x3x4, linear 3, xent";
    family_for(&fam, &net, spec, ds, MT_TASK_EPISODES, WAYS, SHOTS, QUERIES, MT_SPLIT_TRAIN);
    assert_int_equal(
        family_augmented(&moved, &net, spec, ds, MT_TASK_EPISODES, WAYS, SHOTS, QUERIES, MT_SPLIT_TRAIN, SHIFT, 0),
        MT_OK);
    assert_int_equal(mt_task_alloc(&task, &fam), MT_OK);
    assert_int_equal(mt_task_alloc(&task_moved, &moved), MT_OK);
    int seen[SPAN][SPAN] = {{0}};
    float expect[PIX];
    for (int t = 0; t < 64; t++) {
        mt_task_sample(&fam, 3, 11, (uint32_t)t, &task);
        mt_task_sample(&moved, 3, 11, (uint32_t)t, &task_moved);
        assert_memory_equal(task.label_support, task_moved.label_support, WAYS * SHOTS * sizeof(int32_t));
        assert_memory_equal(task.label_query, task_moved.label_query, WAYS * QUERIES * sizeof(int32_t));
        for (int e = 0; e < WAYS * (SHOTS + QUERIES); e++) {
            int support = e < WAYS * SHOTS, slot = support ? e : e - WAYS * SHOTS;
            const float *still = (support ? task.x_support : task.x_query) + slot * PIX;
            const float *x = (support ? task_moved.x_support : task_moved.x_query) + slot * PIX;
            int n = find_image(ds, still), matches = 0;
            assert_true(n >= 0);
            for (int dy = -SHIFT; dy <= SHIFT; dy++)
                for (int dx = -SHIFT; dx <= SHIFT; dx++) {
                    shifted_image(ds, n, dx, dy, expect);
                    if (memcmp(expect, x, sizeof expect) == 0) matches++, seen[dy + SHIFT][dx + SHIFT]++;
                }
            assert_int_equal(matches, 1); /* the sample's pixels are distinct: one offset fits */
        }
    }
    for (int i = 0; i < SPAN; i++)
        for (int j = 0; j < SPAN; j++) assert_true(seen[i][j] > 0);
    mt_task_free(&task);
    mt_task_free(&task_moved);
    mt_task_family_free(&moved);
    mt_task_family_free(&fam);

    assert_augment_refused("shifted.h5", "shifted-ep.h5", 1, 0, "task.augment_shift");
    mt_task_dataset_free(ds);
}

/* Image n moved by (dx, dy), then turned by `angle` radians about its centre: each pixel's offset
 * from the centre is turned back by the angle into the source, which is read as the four nearest
 * pixels weighted by closeness (edges repeated). */
static void turned_image(const mt_task_dataset *ds, int n, int dx, int dy, double angle, float *out) {
    double centre[2] = {(H - 1) / 2.0, (W - 1) / 2.0}, c_a = cos(angle), s_a = sin(angle);
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                double d[2] = {i - dy - centre[0], j - dx - centre[1]};
                double src[2] = {c_a * d[0] + s_a * d[1] + centre[0], -s_a * d[0] + c_a * d[1] + centre[1]};
                double value = 0;
                for (int a = 0; a < 2; a++)
                    for (int b = 0; b < 2; b++) {
                        double ri = floor(src[0]) + a, rj = floor(src[1]) + b;
                        double weight = (1 - fabs(src[0] - ri)) * (1 - fabs(src[1] - rj));
                        int ki = ri < 0 ? 0 : ri > H - 1 ? H - 1 : (int)ri;
                        int kj = rj < 0 ? 0 : rj > W - 1 ? W - 1 : (int)rj;
                        value += weight * sample_images[n * PIX + (c * H + ki) * W + kj];
                    }
                out[(c * H + i) * W + j] = (float)(value * ds->pixel_scale + ds->pixel_offset);
            }
}

static void assert_images_near(const float *a, const float *b) {
    for (int i = 0; i < PIX; i++) assert_float_equal(a[i], b[i], 1e-5);
}

/* task.augment_rotate: the reference turn is the shift at angle 0 and the point reflection at pi;
 * the family's images are the same episodes' images (their own stream), each moved and turned by
 * the offsets and angle its stream draws in order (dx, dy, then the angle, example by example,
 * class by class), the angles spread over [-r, r); families that cannot turn refuse it. */
static void test_turned_episode_tasks(void **state) {
    ON_RANK0(write_images("turned.h5", (flaws){0}); write_episodes_file("turned-ep.h5", 0, 0));
    mt_task_dataset *ds = load_ok("turned.h5", MT_TASK_EPISODES, NULL);
    float expect[PIX], got[PIX];
    for (int dy = -1; dy <= 1; dy++)
        for (int dx = -1; dx <= 1; dx++) {
            shifted_image(ds, 5, dx, dy, expect);
            turned_image(ds, 5, dx, dy, 0.0, got);
            assert_images_near(expect, got);
        }
    turned_image(ds, 5, 0, 0, M_PI, got);
    for (int c = 0; c < C; c++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++)
                assert_float_equal(got[(c * H + i) * W + j],
                                   sample_images[5 * PIX + (c * H + H - 1 - i) * W + W - 1 - j] * ds->pixel_scale +
                                       ds->pixel_offset,
                                   1e-5);

    mt_task_family fam, turned;
    mt_nn_net net;
    mt_task task, task_turned;
    enum { WAYS = 3, SHOTS = 1, QUERIES = 2, SHIFT = 1 };
    const double ROTATE = 30.0, limit = ROTATE * M_PI / 180.0;
    const char *spec = "input 2x3x4, linear 3, xent";
    family_for(&fam, &net, spec, ds, MT_TASK_EPISODES, WAYS, SHOTS, QUERIES, MT_SPLIT_TRAIN);
    assert_int_equal(family_augmented(&turned, &net, spec, ds, MT_TASK_EPISODES, WAYS, SHOTS, QUERIES, MT_SPLIT_TRAIN,
                                      SHIFT, ROTATE),
                     MT_OK);
    assert_int_equal(mt_task_alloc(&task, &fam), MT_OK);
    assert_int_equal(mt_task_alloc(&task_turned, &turned), MT_OK);
    double lowest = 0, highest = 0;
    int changed = 0;
    for (int t = 0; t < 32; t++) {
        mt_task_sample(&fam, 3, 11, (uint32_t)t, &task);
        mt_task_sample(&turned, 3, 11, (uint32_t)t, &task_turned);
        assert_memory_equal(task.label_support, task_turned.label_support, WAYS * SHOTS * sizeof(int32_t));
        assert_memory_equal(task.label_query, task_turned.label_query, WAYS * QUERIES * sizeof(int32_t));
        mt_rng stream;
        mt_rng_init(&stream, 3, 11, (uint32_t)t, MT_RNG_STREAM_AUGMENT);
        for (int w = 0; w < WAYS; w++)
            for (int k = 0; k < SHOTS + QUERIES; k++) {
                int support = k < SHOTS, slot = support ? w * SHOTS + k : w * QUERIES + k - SHOTS;
                const float *still = (support ? task.x_support : task.x_query) + slot * PIX;
                const float *x = (support ? task_turned.x_support : task_turned.x_query) + slot * PIX;
                int n = find_image(ds, still);
                assert_true(n >= 0);
                int dx = (int)mt_rng_below(&stream, 2 * SHIFT + 1) - SHIFT;
                int dy = (int)mt_rng_below(&stream, 2 * SHIFT + 1) - SHIFT;
                double angle = mt_rng_range(&stream, -limit, limit);
                lowest = fmin(lowest, angle), highest = fmax(highest, angle);
                turned_image(ds, n, dx, dy, angle, expect);
                assert_images_near(expect, x);
                changed += memcmp(still, x, sizeof expect) != 0;
            }
    }
    assert_true(lowest < -limit / 2 && highest > limit / 2);
    assert_true(changed > 0);
    mt_task_free(&task);
    mt_task_free(&task_turned);
    mt_task_family_free(&turned);
    mt_task_family_free(&fam);

    assert_augment_refused("turned.h5", "turned-ep.h5", 0, ROTATE, "task.augment_rotate");
    mt_task_dataset_free(ds);
}

/* Grouped tasks: one group of the split, its rows split into support and query without overlap. */
static void test_grouped_tasks(void **state) {
    ON_RANK0(write_grouped("tasks-grouped.h5", (gflaws){.classification = 1}));
    mt_task_dataset *ds = load_ok("tasks-grouped.h5", MT_TASK_GROUPED, NULL);
    mt_task_family fam;
    mt_nn_net net;
    mt_task task;
    family_for(&fam, &net, "input 3, linear 3, xent", ds, MT_TASK_GROUPED, 1, 1, 2, MT_SPLIT_TRAIN);
    assert_int_equal(mt_task_alloc(&task, &fam), MT_OK);
    for (int t = 0; t < 32; t++) {
        mt_task_sample(&fam, 5, 0, (uint32_t)t, &task);
        int rows[3], group = -1;
        for (int i = 0; i < 3; i++) {
            const float *x = i == 0 ? task.x_support : task.x_query + (i - 1) * D;
            rows[i] = -1;
            for (int r = 0; r < R; r++)
                if (memcmp(x, ds->features + r * D, D * sizeof(float)) == 0) rows[i] = r;
            assert_true(rows[i] >= 0);
            if (group < 0) group = sample_group[rows[i]];
            assert_int_equal(sample_group[rows[i]], group);
            assert_int_equal(sample_group_split[group], 0);
            assert_int_equal(i == 0 ? task.label_support[0] : task.label_query[i - 1], ds->target_class[rows[i]]);
        }
        assert_true(rows[0] != rows[1] && rows[0] != rows[2] && rows[1] != rows[2]);
    }
    mt_task_free(&task);
    mt_task_family_free(&fam);
    mt_task_dataset_free(ds);
}

int main(int argc, char **argv) {
    if (mt_dist_init(&dist, &argc, &argv) != MT_OK) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_images),
        cmocka_unit_test(test_images_defaults),
        cmocka_unit_test(test_episodes),
        cmocka_unit_test(test_fixed_episode_tasks),
        cmocka_unit_test(test_sampled_episode_tasks),
        cmocka_unit_test(test_shifted_episode_tasks),
        cmocka_unit_test(test_turned_episode_tasks),
        cmocka_unit_test(test_grouped_tasks),
        cmocka_unit_test(test_grouped_regression),
        cmocka_unit_test(test_grouped_classification),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_directory),
        cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_text_file),
        cmocka_unit_test(test_missing_episodes_file),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_missing_images),
        cmocka_unit_test(test_float_images),
        cmocka_unit_test(test_wrong_rank),
        cmocka_unit_test(test_int64_labels),
        cmocka_unit_test(test_label_out_of_range),
        cmocka_unit_test(test_length_mismatch),
        cmocka_unit_test(test_bad_class_split),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_episode_index_out_of_range),
        cmocka_unit_test(test_episode_label_out_of_range),
        cmocka_unit_test(test_episodes_of_another_file),
        cmocka_unit_test(test_episodes_of_another_size),
        cmocka_unit_test(test_class_too_small),
        cmocka_unit_test(test_ways_above_split),
        cmocka_unit_test(test_group_too_small),
        cmocka_unit_test(test_bad_grouped),
        cmocka_unit_test(test_converter_tiny),
        cmocka_unit_test(test_converter_omniglot),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    mt_dist_finalize(&dist);
    return failed;
}
