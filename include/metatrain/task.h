/* Task families. A task is a support set to adapt on and a query set to measure the adapted
 * model on. Every task is rebuilt from (seed, iteration, task index) alone, with the counter-based
 * RNG, so any rank can make any task: results never depend on how tasks are spread over ranks.
 * Local, never collective. */
#ifndef METATRAIN_TASK_H
#define METATRAIN_TASK_H

#include <stddef.h>
#include <stdint.h>

#include "metatrain/config.h"
#include "metatrain/error.h"
#include "metatrain/nn.h"

struct mt_task_dataset; /* HDF5 data behind the episodes and grouped families */

typedef struct {
    mt_task_kind kind;
    int shots, queries, ways; /* per class for classification */
    size_t in_size, out_size; /* per example */
    int classification;       /* labels instead of regression targets */
    const struct mt_task_dataset *data;
    mt_split split; /* which classes or groups tasks come from */
    int *split_ids; /* the classes (episodes) or groups (grouped) of the split */
    int n_split;
    int fixed_episodes; /* task i is the dataset's fixed episode i */
    int shift;          /* images move by up to this many pixels in x and y (episodes of images) */
    double rotate;      /* and turn by up to this many radians either way about their centre */
    int scratch_len;    /* per-task index scratch the samplers need */
} mt_task_family;

/* The tasks a family makes: the config's task.kind, task.shots, task.queries and task.ways
 * (mt_config_task_shape fills it). shift and rotate are task.augment_shift and
 * task.augment_rotate for the training family only (mt_config_task_shape leaves them 0):
 * augmentation changes what is learned from, never what is scored. */
typedef struct mt_task_shape {
    mt_task_kind kind;
    int shots, queries, ways; /* per class when classifying; ways for episodes only */
    int shift;                /* each image moves by (dx, dy) drawn uniformly from [-shift, shift]^2 */
    double rotate;            /* then turns by an angle uniform in [-rotate, rotate) degrees */
} mt_task_shape;

/* Builds a family of tasks of this shape for the given split.
 * Checks that the model's input and output fit the family, and that the dataset's split has
 * enough classes, images or rows. With a dataset holding fixed episodes, tasks are those. */
mt_status mt_task_family_init(mt_task_family *fam, const mt_task_shape *shape, const mt_nn_net *net,
                              const struct mt_task_dataset *data, mt_split split);
void mt_task_family_free(mt_task_family *fam);

/* Examples in a support and a query set. */
int mt_task_support_size(const mt_task_family *fam);
int mt_task_query_size(const mt_task_family *fam);
/* The larger of the two: the batch a workspace for this family's tasks must hold. */
int mt_task_max_batch(const mt_task_family *fam);

#define MT_TEMPLATE "metatrain/task_tmpl.h"
#include "metatrain/both_precisions.h"

#endif
