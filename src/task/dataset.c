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

#include "task/dataset_plan.h"

typedef struct {
    reader *r;
    layout *L;
} plan_args;

/* Phase 1 in the child of mt_isolate_run, on the child's own copies of the reader and layout.
 * It closes what it opened: with METATRAIN_ISOLATE=0 it runs in this process, before the real
 * phase 1 fills the same reader again. */
static mt_status plan_in_child(void *arg) {
    plan_args *a = arg;
    mt_status st = mt_task_dataset_plan(a->r, a->L);
    mt_task_dataset_reader_close(a->r);
    return st;
}

/* ---- phase 2: node rank 0 fills the window -------------------------------------------------- */

static void *at(const layout *L, void *base, int a) { return L->bytes[a] ? (char *)base + L->offset[a] : NULL; }

/* Collective. Counts the ranks that read the file (each node's first) and gives rank 0 their hosts'
 * names, so that a log can show the file was read once per node. */
static mt_status name_readers(const mt_dist *d, int node_rank, mt_task_dataset *ds) {
    char name[MPI_MAX_PROCESSOR_NAME] = "", *all = NULL;
    int len = 0;
    if (node_rank == 0 && MPI_Get_processor_name(name, &len) != MPI_SUCCESS) snprintf(name, sizeof name, "?");
    mt_status st = MT_OK;
    if (d->rank == 0 && !(all = malloc((size_t)d->size * MPI_MAX_PROCESSOR_NAME)))
        st = MT_RAISE(MT_ERR_NOMEM, "%s: out of memory for %d host names", ds->path, d->size);
    MT_TRY(mt_dist_agree(d, st));
    if (MPI_Gather(name, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, 0, d->comm) !=
        MPI_SUCCESS)
        mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Gather failed while loading a dataset"));
    if (d->rank == 0) {
        size_t used = 0, room = sizeof ds->readers - 4; /* "..." and the NUL always fit */
        for (int r = 0; r < d->size; r++) {
            const char *host = all + (size_t)r * MPI_MAX_PROCESSOR_NAME;
            if (!host[0]) continue; /* not a node's first rank */
            size_t need = strlen(host) + (ds->n_readers ? 2 : 0);
            if (used + need <= room) {
                snprintf(ds->readers + used, sizeof ds->readers - used, "%s%s", ds->n_readers ? ", " : "", host);
                used += need;
            } else if (used <= room) {
                snprintf(ds->readers + used, sizeof ds->readers - used, "...");
                used = room + 1;
            }
            ds->n_readers++;
        }
    }
    free(all);
    return MT_OK;
fail:
    return st;
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
    ds->n_tokens = L->n_tokens;
    ds->tokens = at(L, base, ARR_TOKENS);
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
    if (src)
        memcpy(dst, src, bytes);
    else
        memset(dst, 0, bytes);
}

static mt_status check_finite(const char *path, const char *name, const float *v, int64_t rows, int cols) {
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(v[i]))
            return MT_RAISE(MT_ERR_FORMAT, "%s: %s: non-finite value %g at [%" PRId64 ", %" PRId64 "]", path, name,
                            (double)v[i], i / cols, i % cols);
    return MT_OK;
}

/* Token ids are −1 (padding) or not negative; the model's table size bounds them later
 * (mt_task_family_init), since one file may serve tables of several sizes. */
static mt_status check_token_ids(const char *path, const int32_t *v, int64_t rows, int cols) {
    for (int64_t i = 0; i < rows * cols; i++)
        if (v[i] < -1)
            return MT_RAISE(MT_ERR_FORMAT, "%s: /tokens: id %d at [%" PRId64 ", %" PRId64 "] is below -1 (the padding)",
                            path, v[i], i / cols, i % cols);
    return MT_OK;
}

static mt_status fill(reader *r, const layout *L, void *base) {
    mt_status st = MT_OK;
    int32_t *tokens = at(L, base, ARR_TOKENS);
    if (tokens) {
        int64_t rows = L->kind == MT_DATASET_IMAGES ? L->n_images : L->n_rows;
        MT_TRY(mt_h5_read_all(r->tokens, H5T_NATIVE_INT32, r->path, "/tokens", tokens));
        MT_TRY(check_token_ids(r->path, tokens, rows, L->n_tokens));
    }
    for (int i = 0; i < 4; i++)
        if (r->episode[i]) memcpy(at(L, base, ARR_SUPPORT_INDEX + i), r->episode[i], L->bytes[ARR_SUPPORT_INDEX + i]);
    if (L->kind == MT_DATASET_IMAGES) {
        if (!tokens) MT_TRY(mt_h5_read_all(r->images, H5T_NATIVE_UINT8, r->path, "/images", at(L, base, ARR_IMAGES)));
        memcpy(at(L, base, ARR_LABELS), r->labels, L->bytes[ARR_LABELS]);
        copy_or_zero(at(L, base, ARR_CLASS_SPLIT), r->class_split, L->bytes[ARR_CLASS_SPLIT]);
        if (r->class_names) memcpy(at(L, base, ARR_CLASS_NAMES), r->class_names, L->bytes[ARR_CLASS_NAMES]);
        build_index(at(L, base, ARR_CLASS_START), at(L, base, ARR_CLASS_MEMBERS), r->labels, L->n_images, L->n_classes);
    } else {
        float *features = at(L, base, ARR_FEATURES), *targets = at(L, base, ARR_TARGETS);
        if (!tokens) {
            MT_TRY(mt_h5_read_all(r->features, H5T_NATIVE_FLOAT, r->path, "/features", features));
            MT_TRY(check_finite(r->path, "/features", features, L->n_rows, L->n_features));
        }
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
    reader r = {.fapl = H5I_INVALID_HID,
                .file = H5I_INVALID_HID,
                .episodes_file = H5I_INVALID_HID,
                .images = H5I_INVALID_HID,
                .features = H5I_INVALID_HID,
                .targets = H5I_INVALID_HID,
                .tokens = H5I_INVALID_HID};
    int node_rank = 0;
    if (!out || !d) return MT_RAISE(MT_ERR_ARG, "mt_task_dataset_load: NULL argument");
    *out = NULL;
    int has_episodes = episodes_path && episodes_path[0];

    /* The arguments are alike on every rank; only allocation can fail on some ranks alone. */
    if (!path || !path[0])
        st = MT_RAISE(MT_ERR_CONFIG, "task.path: no dataset file given");
    else if (strlen(path) >= sizeof ds->path)
        st = MT_RAISE(MT_ERR_CONFIG, "task.path: longer than %zu characters", sizeof ds->path - 1);
    else if (has_episodes && strlen(episodes_path) >= sizeof ds->path)
        st = MT_RAISE(MT_ERR_CONFIG, "%s: episodes file name longer than %zu characters", episodes_path,
                      sizeof ds->path - 1);
    else if (kind != MT_TASK_EPISODES && kind != MT_TASK_GROUPED)
        st = MT_RAISE(MT_ERR_ARG, "task.kind = %s reads no dataset", mt_config_task_kind_name(kind));
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
        if (has_episodes && strcmp(episodes_path, path) != 0)
            snprintf(what, sizeof what, "%s (or %s)", path, episodes_path);
        else
            snprintf(what, sizeof what, "%s", path);
        plan_args args = {&r, L};
        mt_status checked = mt_isolate_run(plan_in_child, &args, what, MT_ISOLATE_TIMEOUT_S);
        record(L, checked == MT_OK ? mt_task_dataset_plan(&r, L) : checked);
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
        /* A window's errors are fatal by default, whatever the communicator's handler: returned
         * codes let the fence and the query below name their failure. */
        if (rc == MPI_SUCCESS && MPI_Win_set_errhandler(ds->window, MPI_ERRORS_RETURN) != MPI_SUCCESS)
            mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "%s: MPI_Win_set_errhandler failed", path));
        int outcome[2] = {rc != MPI_SUCCESS, rc == MPI_SUCCESS}; /* some failed, some succeeded */
        if (MPI_Allreduce(MPI_IN_PLACE, outcome, 2, MPI_INT, MPI_MAX, ds->node_comm) != MPI_SUCCESS)
            mt_dist_abort(d, MT_RAISE(MT_ERR_MPI, "MPI_Allreduce failed while loading a dataset"));
        if (outcome[0] && outcome[1]) /* a window on some ranks only cannot be freed collectively */
            mt_dist_abort(d,
                          MT_RAISE(MT_ERR_MPI, "%s: MPI_Win_allocate_shared failed on some ranks of the node", path));
        if (outcome[0]) {
            st = MT_RAISE(MT_ERR_NOMEM,
                          "%s: cannot allocate %.1f MiB of node shared memory (MPI_Win_allocate_shared; "
                          "is /dev/shm large enough?)",
                          path, (double)L->total / (1 << 20));
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
                if (MPI_Win_shared_query(ds->window, 0, &size, &disp_unit, &base) != MPI_SUCCESS ||
                    (uint64_t)size < L->total)
                    st = MT_RAISE(MT_ERR_MPI, "%s: MPI_Win_shared_query failed", path);
                else
                    set_views(ds, L, base);
            }
        }
    }
    if (node_rank == 0) mt_task_dataset_reader_close(&r);
    MT_TRY(mt_dist_agree(d, st));
    MT_TRY(name_readers(d, node_rank, ds));
    free(L);
    *out = ds;
    return MT_OK;
fail:
    if (node_rank == 0) mt_task_dataset_reader_close(&r);
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
        return MT_RAISE(MT_ERR_CONFIG,
                        "%s: /labels: class %s%s%s has %" PRId64 " image%s, fewer than task.shots + "
                        "task.queries = %" PRId64,
                        ds->path, name ? "'" : "", name ? name : label, name ? "'" : "", have, have == 1 ? "" : "s",
                        need);
    }
    return MT_OK;
}

mt_status mt_task_dataset_check_groups(const mt_task_dataset *ds, mt_split split, int shots, int queries) {
    if (!ds || ds->kind != MT_DATASET_GROUPED)
        return MT_RAISE(MT_ERR_ARG, "mt_task_dataset_check_groups: not a grouped dataset");
    if (mt_task_dataset_split(ds, split, NULL) == 0)
        return MT_RAISE(MT_ERR_CONFIG, "%s: /group_split: split '%s' has no groups", ds->path,
                        mt_config_split_name(split));
    int64_t need = (int64_t)shots + queries;
    for (int g = 0; g < ds->n_groups; g++) {
        if (split != MT_SPLIT_ALL && ds->group_split[g] != (int32_t)split) continue;
        int64_t have = ds->group_start[g + 1] - ds->group_start[g];
        if (have < need)
            return MT_RAISE(MT_ERR_CONFIG,
                            "%s: /group: group %d has %" PRId64 " row%s, fewer than task.shots + "
                            "task.queries = %" PRId64,
                            ds->path, g, have, have == 1 ? "" : "s", need);
    }
    return MT_OK;
}
