/* Private to the dataset loader: what phase 1 (src/task/dataset_plan.c, the per-format checks)
 * hands phase 2 (src/task/dataset.c, the node-shared window). */
#ifndef METATRAIN_TASK_DATASET_PLAN_H
#define METATRAIN_TASK_DATASET_PLAN_H

#include <hdf5.h>
#include <stdint.h>

#include "metatrain/dataset.h"

enum {
    ARR_IMAGES,
    ARR_LABELS,
    ARR_CLASS_SPLIT,
    ARR_CLASS_START,
    ARR_CLASS_MEMBERS,
    ARR_CLASS_NAMES,
    ARR_FEATURES,
    ARR_TARGETS,
    ARR_TARGET_CLASS,
    ARR_GROUP_SPLIT,
    ARR_GROUP_START,
    ARR_GROUP_MEMBERS,
    ARR_SUPPORT_INDEX,
    ARR_SUPPORT_LABEL,
    ARR_QUERY_INDEX,
    ARR_QUERY_LABEL,
    ARR_TOKENS,
    N_ARRAYS
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
    int n_tokens; /* T: rows are bags of T token ids (/tokens), or 0 */
    int n_episodes, episode_ways, episode_support, episode_query;
    uint64_t bytes[N_ARRAYS], offset[N_ARRAYS], total;
} layout;

/* Node rank 0's handles and the arrays it holds between the phases. */
typedef struct {
    const char *path, *episodes_path;
    hid_t fapl, file, episodes_file;
    hid_t images, features, targets, tokens; /* read in phase 2, straight into the window */
    int32_t *labels, *class_split, *target_class, *group, *group_split;
    int32_t *episode[4]; /* support index, support label, query index, query label */
    char *class_names;   /* n_classes × class_name_size */
} reader;

/* Opens and checks the files of r (path, episodes_path; the handles start invalid) for
 * L->kind, keeping the integer arrays and planning L: sizes and offsets in the window. */
mt_status mt_task_dataset_plan(reader *r, layout *L);
/* Closes and frees what mt_task_dataset_plan opened and read; the handles become invalid. */
void mt_task_dataset_reader_close(reader *r);

#endif
