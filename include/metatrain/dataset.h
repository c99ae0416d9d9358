/* HDF5 datasets behind the `episodes` and `grouped` task families, held once per node.
 *
 * Formats (write them with h5py; README "Dataset formats"):
 *   images   /images uint8 [N, C, H, W]; /labels int32 [N] in [0, n_classes);
 *            /class_names strings [n_classes] (optional; fixed or variable length);
 *            /class_split int32 [n_classes]: 0 train, 1 val, 2 test (optional: all train);
 *            root attributes pixel_scale, pixel_offset (float64, optional: 1/255 and 0):
 *            a pixel p becomes p * pixel_scale + pixel_offset. n_classes is the length of
 *            /class_split, else of /class_names, else the largest label + 1.
 *   episodes /episodes/support, /episodes/query int32 [E, n] (image indices) and
 *            /episodes/support_labels, /episodes/query_labels int32 [E, n] (episode-local labels
 *            in [0, ways)); attribute ways (integer) on the /episodes group. In the images file
 *            or in a file of their own; indices refer to the images file.
 *   grouped  /features float32 [N, D]; /targets float32 [N, T] (regression) or int32 [N]
 *            (classification, classes in [0, n_classes)); /group int32 [N] in [0, n_groups);
 *            /group_split int32 [n_groups] (optional: all train); n_groups is the length of
 *            /group_split, else the largest group + 1. Classification has n_classes = the
 *            largest target + 1. Features and regression targets must be finite.
 *   tokens   /tokens int32 [N, T] instead of /images (episodes) or /features (grouped): each row
 *            a bag of T token ids, −1 padding, for models that start "input tokens T, embed V D"
 *            (every id below V). scripts/wordlists-to-h5 and scripts/movielens-to-h5 write them.
 *   Fixed episodes of grouped data hold /episodes/support and /episodes/query alone (rows of
 *   one group each), without labels or ways.
 * scripts/omniglot-to-h5 writes the images format from the Omniglot zips.
 * Dtypes and ranks must be exactly these (an int64 /labels or a float /images is refused, never
 * converted); no dimension may be 0, and the arrays together may not pass
 * MT_TASK_DATASET_MAX_BYTES.
 *
 * Loading is collective: on each node, one rank reads the file into an MPI shared-memory window
 * and the node's other ranks map it, so memory per node does not grow with ranks per node. That
 * rank first checks the file's metadata and index arrays in a child process (metatrain/isolate.h),
 * so that a crash of libhdf5 on a hostile file becomes an error. Every check names the file and
 * the dataset that failed. */
#ifndef METATRAIN_DATASET_H
#define METATRAIN_DATASET_H

#include <mpi.h>
#include <stdint.h>

#include "metatrain/config.h"
#include "metatrain/dist.h"
#include "metatrain/error.h"

/* Largest dataset accepted, all arrays of a node's window together: a bound against hostile
 * sizes and a way to fail before the node's shared memory runs out. */
#define MT_TASK_DATASET_MAX_BYTES (16ULL << 30)

typedef enum { MT_DATASET_IMAGES, MT_DATASET_GROUPED } mt_dataset_kind;

typedef struct mt_task_dataset {
    mt_dataset_kind kind;
    char path[512];
    /* images */
    int64_t n_images;
    int channels, height, width;
    const uint8_t *images; /* n_images × C × H × W, in the shared window */
    const int32_t *labels; /* n_images */
    double pixel_scale, pixel_offset;
    int n_classes;
    const int32_t *class_split;   /* n_classes */
    const int64_t *class_start;   /* n_classes + 1: class c's images are class_members[start[c] .. start[c+1]) */
    const int64_t *class_members; /* n_images image indices, grouped by class, ascending within a class */
    const char *class_names;      /* n_classes × class_name_size, NUL-terminated; NULL without /class_names */
    int class_name_size;
    /* grouped */
    int64_t n_rows;
    int n_features, n_targets;   /* n_targets = T for regression, 0 for classification */
    const float *features;       /* n_rows × n_features */
    const float *targets;        /* n_rows × n_targets (regression) */
    const int32_t *target_class; /* n_rows (classification) */
    int n_groups;
    const int32_t *group_split; /* n_groups */
    const int64_t *group_start; /* n_groups + 1, rows of group g: group_members[start[g] .. start[g+1]) */
    const int64_t *group_members;
    /* either kind: rows that are bags of token ids (/tokens), instead of images or features */
    int n_tokens;          /* T, or 0 */
    const int32_t *tokens; /* rows × T, −1 padding */
    /* fixed episodes (optional) */
    int n_episodes, episode_ways, episode_support, episode_query; /* per-episode index counts */
    const int32_t *episode_support_index, *episode_support_label; /* n_episodes × episode_support */
    const int32_t *episode_query_index, *episode_query_label;     /* n_episodes × episode_query */
    /* who read the file: one rank per node (the node's first), and on rank 0 their hosts' names,
     * "node1, node2", shortened with "..." when they do not fit */
    int n_readers;
    char readers[256];
    /* storage */
    MPI_Win window;
    MPI_Comm node_comm;
    void *base;
} mt_task_dataset;

/* Collective over d. Reads `path` as the format `kind` wants (MT_TASK_EPISODES: images;
 * MT_TASK_GROUPED: grouped). episodes_path, when not NULL or "", names the file with
 * /episodes (it may be `path` itself). On any failure every rank returns an error; a failure
 * that only one node saw ends the job with MPI_Abort (mt_dist_agree). */
mt_status mt_task_dataset_load(mt_task_dataset **out, const mt_dist *d, const char *path, mt_task_kind kind,
                               const char *episodes_path);
/* Collective over d (the node's window and communicator); NULL does nothing. */
void mt_task_dataset_free(mt_task_dataset *ds);

/* Classes (or groups) in a split: counts them and, when `ids` is not NULL, lists them;
 * MT_SPLIT_ALL counts every one. Local. */
int mt_task_dataset_split(const mt_task_dataset *ds, mt_split split, int *ids);

/* Class c's name, or NULL when the file has no /class_names. Local. */
const char *mt_task_dataset_class_name(const mt_task_dataset *ds, int c);

/* MT_ERR_CONFIG unless the split has at least `ways` classes and each of them at least
 * shots + queries images. Local; the verdict is alike on every rank. */
mt_status mt_task_dataset_check_episodes(const mt_task_dataset *ds, mt_split split, int ways, int shots, int queries);
/* MT_ERR_CONFIG unless the split has a group and each of its groups at least shots + queries
 * rows. Local. */
mt_status mt_task_dataset_check_groups(const mt_task_dataset *ds, mt_split split, int shots, int queries);

#endif
