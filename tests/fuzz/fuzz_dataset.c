/* libFuzzer harness: the HDF5 dataset loader (mt_task_dataset_load) on arbitrary files.
 *
 * The input bytes become a file, loaded as an images dataset, as an images dataset with its own
 * fixed episodes, and as a grouped dataset. The loader must refuse bad files with a message,
 * never crash; what it accepts must be consistent, so every index array is walked: each class's
 * (or group's) members, each episode's image indices and labels, each class name. A crash whose
 * stack is inside libhdf5 is HDF5's own (scripts/fuzz says so); everything else is ours.
 *
 * MPI is initialized once, as a singleton; the loader is collective over that one rank. Files
 * that would make the loader's window larger than FUZZ_MAX_BYTES are skipped: the loader accepts
 * up to MT_TASK_DATASET_MAX_BYTES (16 GiB) by design, and a few bytes of hostile file can ask
 * for that much (one large label is enough), far beyond a fuzzer's memory limit. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>
#include <mpi.h>

#include "metatrain/dataset.h"
#include "metatrain/isolate.h"
#include "fuzz_util.h"

#define FUZZ_MAX_BYTES (64u << 20)

static mt_dist dist;
static char path[64];
static volatile uint64_t sink; /* keeps the walks below from being optimized away */

static void finalize(void) {
    unlink(path);
    mt_dist_finalize(&dist);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    /* The loader first checks a file in a forked child (metatrain/isolate.h), where a crash would
     * be invisible: fuzz in this process, unless METATRAIN_ISOLATE=1 asks for the child
     * (scripts/fuzz replays HDF5's crashes that way). */
    setenv("METATRAIN_ISOLATE", "0", 0);
    if (mt_dist_init(&dist, argc, argv) != MT_OK) {
        fprintf(stderr, "fuzz_dataset: MPI initialization failed: %s\n", mt_error_message());
        exit(1);
    }
    fuzz_scratch_path(path, sizeof path, "fuzz_dataset");
    atexit(finalize);
    return 0;
}

/* Row i's first and last value, from whichever input the file has: token ids (checked: −1 or
 * more), pixels or features. */
static double row_ends(const mt_task_dataset *ds, int64_t i) {
    if (ds->tokens) {
        const int32_t *t = ds->tokens + (size_t)i * ds->n_tokens;
        FUZZ_CHECK(ds->n_tokens > 0 && t[0] >= -1 && t[ds->n_tokens - 1] >= -1);
        return (double)t[0] + t[ds->n_tokens - 1];
    }
    if (ds->kind == MT_DATASET_IMAGES) {
        size_t image = (size_t)ds->channels * ds->height * ds->width;
        FUZZ_CHECK(image > 0);
        return (double)ds->images[(size_t)i * image] + ds->images[(size_t)i * image + image - 1];
    }
    FUZZ_CHECK(ds->n_features > 0);
    return (double)ds->features[(size_t)i * ds->n_features] +
           ds->features[(size_t)i * ds->n_features + ds->n_features - 1];
}

static void walk_images(const mt_task_dataset *ds) {
    double sum = 0;
    FUZZ_CHECK(ds->n_images > 0 && ds->n_classes > 0);
    FUZZ_CHECK(ds->class_start[0] == 0 && ds->class_start[ds->n_classes] == ds->n_images);
    for (int c = 0; c < ds->n_classes; c++) {
        FUZZ_CHECK(ds->class_split[c] >= 0 && ds->class_split[c] <= 2);
        FUZZ_CHECK(ds->class_start[c] <= ds->class_start[c + 1]);
        for (int64_t k = ds->class_start[c]; k < ds->class_start[c + 1]; k++) {
            int64_t i = ds->class_members[k];
            FUZZ_CHECK(i >= 0 && i < ds->n_images && ds->labels[i] == c);
            sum += row_ends(ds, i);
        }
        const char *name = mt_task_dataset_class_name(ds, c);
        if (name) sum += strlen(name);
    }
    for (mt_split s = MT_SPLIT_TRAIN; s <= MT_SPLIT_ALL; s++) {
        int ids[64];
        int n = mt_task_dataset_split(ds, s, NULL);
        FUZZ_CHECK(n >= 0 && n <= ds->n_classes);
        if (n <= 64) FUZZ_CHECK(mt_task_dataset_split(ds, s, ids) == n);
        (void)mt_task_dataset_check_episodes(ds, s, 2, 1, 1);
        mt_error_clear();
    }
    for (int e = 0; e < ds->n_episodes; e++) {
        for (int k = 0; k < ds->episode_support; k++) {
            int32_t i = ds->episode_support_index[(size_t)e * ds->episode_support + k];
            int32_t y = ds->episode_support_label[(size_t)e * ds->episode_support + k];
            FUZZ_CHECK(i >= 0 && i < ds->n_images && y >= 0 && y < ds->episode_ways);
            sum += row_ends(ds, i);
        }
        for (int k = 0; k < ds->episode_query; k++) {
            int32_t i = ds->episode_query_index[(size_t)e * ds->episode_query + k];
            int32_t y = ds->episode_query_label[(size_t)e * ds->episode_query + k];
            FUZZ_CHECK(i >= 0 && i < ds->n_images && y >= 0 && y < ds->episode_ways);
            sum += row_ends(ds, i);
        }
    }
    sink += (uint64_t)(sum != sum);
}

static void walk_grouped(const mt_task_dataset *ds) {
    double sum = 0;
    FUZZ_CHECK(ds->n_rows > 0 && ds->n_groups > 0);
    FUZZ_CHECK((ds->targets != NULL) == (ds->n_targets > 0) && (ds->target_class != NULL) == (ds->n_targets == 0));
    FUZZ_CHECK(ds->group_start[0] == 0 && ds->group_start[ds->n_groups] == ds->n_rows);
    for (int g = 0; g < ds->n_groups; g++) {
        FUZZ_CHECK(ds->group_split[g] >= 0 && ds->group_split[g] <= 2);
        for (int64_t k = ds->group_start[g]; k < ds->group_start[g + 1]; k++) {
            int64_t i = ds->group_members[k];
            FUZZ_CHECK(i >= 0 && i < ds->n_rows);
            sum += row_ends(ds, i);
            if (ds->targets)
                sum += ds->targets[(size_t)i * ds->n_targets + ds->n_targets - 1];
            else
                FUZZ_CHECK(ds->target_class[i] >= 0 && ds->target_class[i] < ds->n_classes);
        }
    }
    for (mt_split s = MT_SPLIT_TRAIN; s <= MT_SPLIT_ALL; s++) {
        (void)mt_task_dataset_check_groups(ds, s, 1, 1);
        mt_error_clear();
    }
    for (size_t k = 0; k < (size_t)ds->n_episodes * ds->episode_support; k++) { /* rows; no labels */
        FUZZ_CHECK(ds->episode_support_index[k] >= 0 && ds->episode_support_index[k] < ds->n_rows);
        sum += row_ends(ds, ds->episode_support_index[k]);
    }
    for (size_t k = 0; k < (size_t)ds->n_episodes * ds->episode_query; k++) {
        FUZZ_CHECK(ds->episode_query_index[k] >= 0 && ds->episode_query_index[k] < ds->n_rows);
        sum += row_ends(ds, ds->episode_query_index[k]);
    }
    sink += (uint64_t)(sum != sum);
}

/* A bound on the loader's window for this file, from HDF5 directly (not the loader): 8 bytes
 * per declared element of every array it reads, a whole name per element of /class_names (the
 * loader gives every name the longest one's room: the string size of fixed-length names, up to
 * 4 KiB for variable-length ones), and 24 per class or group implied by the largest id (a class
 * count comes from the largest label when the file gives none). 0 when the file does not open:
 * the loader then reports the problem itself. */
static double window_bound(void) {
    static const char *const names[] = {"/images",
                                        "/tokens",
                                        "/labels",
                                        "/class_split",
                                        "/class_names",
                                        "/features",
                                        "/targets",
                                        "/group",
                                        "/group_split",
                                        "/episodes/support",
                                        "/episodes/support_labels",
                                        "/episodes/query",
                                        "/episodes/query_labels"};
    static const char *const ids[] = {"/labels", "/targets", "/group"};
    double total = 0;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) return 0;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        /* H5Lexists fails (< 0) on "/episodes/x" without "/episodes" */
        hid_t dset = H5Lexists(file, names[i], H5P_DEFAULT) > 0 ? H5Dopen2(file, names[i], H5P_DEFAULT) : -1;
        if (dset < 0) continue;
        hid_t space = H5Dget_space(dset), type = H5Dget_type(dset);
        hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
        if (n > 0) total += 8.0 * (double)n;
        if (n > 0 && type >= 0 && strcmp(names[i], "/class_names") == 0)
            total += (double)n * (H5Tis_variable_str(type) > 0 ? 4097.0 : (double)H5Tget_size(type) + 1);
        for (size_t k = 0; k < sizeof ids / sizeof *ids; k++) {
            if (strcmp(names[i], ids[k]) != 0 || n <= 0 || n > (1 << 24) || type < 0 ||
                H5Tget_class(type) != H5T_INTEGER)
                continue;
            int32_t *v = malloc((size_t)n * sizeof *v), largest = 0;
            if (v && H5Dread(dset, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0)
                for (hssize_t j = 0; j < n; j++)
                    if (v[j] > largest) largest = v[j];
            total += 24.0 * ((double)largest + 1);
            free(v);
        }
        if (type >= 0) H5Tclose(type);
        if (space >= 0) H5Sclose(space);
        H5Dclose(dset);
    }
    H5Fclose(file);
    return total;
}

/* window_bound's verdict, through mt_isolate_run like the loader's own first look at the file. */
static mt_status small_enough(void *unused) {
    return window_bound() <= FUZZ_MAX_BYTES ? MT_OK : MT_RAISE(MT_ERR_FORMAT, "larger than the fuzzer's limit");
}

static void load(mt_task_kind kind, const char *episodes) {
    mt_task_dataset *ds = NULL;
    if (mt_task_dataset_load(&ds, &dist, path, kind, episodes) == MT_OK) {
        if (kind == MT_TASK_GROUPED)
            walk_grouped(ds);
        else
            walk_images(ds);
        mt_task_dataset_free(ds);
    }
    mt_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();
    if (mt_isolate_run(small_enough, NULL, path, MT_ISOLATE_TIMEOUT_S) != MT_OK) {
        mt_error_clear();
        return 0;
    }
    load(MT_TASK_EPISODES, NULL);
    load(MT_TASK_EPISODES, path);
    load(MT_TASK_GROUPED, NULL);
    load(MT_TASK_GROUPED, path);
    return 0;
}
