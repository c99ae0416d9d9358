/* Task families: which data a task holds and whether the model and the dataset fit it. */
#include "metatrain/dataset.h"
#include "metatrain/task.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Shapes the synthetic families fix. */
#define SINUSOID_IN 1
#define LINREG_IN 10

static int max_int(int a, int b) { return a > b ? a : b; }

/* Whether the shape changes its images, and the key that asks for it, for errors. */
static int augments(const mt_task_shape *shape) { return shape->shift > 0 || shape->rotate > 0; }
static const char *augment_key(const mt_task_shape *shape) {
    return shape->shift > 0 ? "task.augment_shift" : "task.augment_rotate";
}

/* Classes or groups of the split, and the scratch the sampler needs for them. */
static mt_status take_split(mt_task_family *fam, const mt_task_dataset *ds, mt_split split) {
    fam->n_split = mt_task_dataset_split(ds, split, NULL);
    fam->split_ids = malloc((size_t)(fam->n_split > 0 ? fam->n_split : 1) * sizeof *fam->split_ids);
    if (!fam->split_ids) return MT_RAISE(MT_ERR_NOMEM, "out of memory for the split of %s", ds->path);
    mt_task_dataset_split(ds, split, fam->split_ids);
    const int64_t *start = ds->kind == MT_DATASET_IMAGES ? ds->class_start : ds->group_start;
    int64_t widest = 0;
    for (int i = 0; i < fam->n_split; i++) {
        int64_t size = start[fam->split_ids[i] + 1] - start[fam->split_ids[i]];
        if (size > widest) widest = size;
    }
    fam->scratch_len = max_int(fam->n_split, (int)widest);
    return MT_OK;
}

static mt_status init_episodes(mt_task_family *fam, const mt_task_shape *shape, const mt_task_dataset *ds,
                               mt_split split) {
    mt_status st = MT_OK;
    if (ds->kind != MT_DATASET_IMAGES)
        return MT_RAISE(MT_ERR_CONFIG, "task.kind: episodes needs an images dataset, but %s holds grouped data",
                        ds->path);
    fam->classification = 1;
    fam->in_size = ds->tokens ? (size_t)ds->n_tokens : (size_t)ds->channels * ds->height * ds->width;
    if (augments(shape) && (ds->tokens || ds->n_episodes > 0))
        return MT_RAISE(MT_ERR_CONFIG, "%s: %s holds %s, which never move", augment_key(shape), ds->path,
                        ds->tokens ? "tokens, not images" : "fixed episodes");
    fam->shift = shape->shift;
    fam->rotate = shape->rotate * (M_PI / 180.0);
    if (ds->n_episodes > 0) { /* evaluate exactly the dataset's episodes */
        fam->fixed_episodes = 1;
        fam->ways = ds->episode_ways;
        fam->shots = ds->episode_support / ds->episode_ways;
        fam->queries = ds->episode_query / ds->episode_ways;
        fam->out_size = (size_t)fam->ways;
        return MT_OK;
    }
    fam->out_size = (size_t)fam->ways;
    MT_TRY(take_split(fam, ds, split));
    MT_TRY(mt_task_dataset_check_episodes(ds, split, shape->ways, fam->shots, fam->queries));
fail:
    return st;
}

static mt_status init_grouped(mt_task_family *fam, const mt_task_dataset *ds, mt_split split) {
    mt_status st = MT_OK;
    if (ds->kind != MT_DATASET_GROUPED)
        return MT_RAISE(MT_ERR_CONFIG, "task.kind: grouped needs a grouped dataset, but %s holds images", ds->path);
    fam->in_size = ds->tokens ? (size_t)ds->n_tokens : (size_t)ds->n_features;
    fam->classification = ds->n_targets == 0;
    fam->out_size = fam->classification ? (size_t)ds->n_classes : (size_t)ds->n_targets;
    fam->ways = fam->classification ? ds->n_classes : 1;
    if (ds->n_episodes > 0) { /* evaluate exactly the dataset's episodes */
        fam->fixed_episodes = 1;
        fam->shots = ds->episode_support;
        fam->queries = ds->episode_query;
        return MT_OK;
    }
    MT_TRY(take_split(fam, ds, split));
    MT_TRY(mt_task_dataset_check_groups(ds, split, fam->shots, fam->queries));
fail:
    return st;
}

/* A model of token bags needs /tokens, and every id below its table's size; other models need
 * the file's own rows. */
static mt_status check_tokens(const mt_nn_net *net, const mt_task_dataset *ds) {
    if (net->in_tokens != (ds->tokens != NULL))
        return MT_RAISE(MT_ERR_CONFIG, "model.spec: %s, but %s %s",
                        net->in_tokens ? "starts with 'input tokens'" : "takes no tokens", ds->path,
                        ds->tokens ? "holds /tokens (the model must start 'input tokens T, embed V D')"
                                   : "has no /tokens");
    if (!ds->tokens) return MT_OK;
    int64_t rows = ds->kind == MT_DATASET_IMAGES ? ds->n_images : ds->n_rows;
    int V = net->layers[0].table_rows, T = ds->n_tokens;
    for (int64_t i = 0; i < rows * T; i++)
        if (ds->tokens[i] >= V)
            return MT_RAISE(MT_ERR_FORMAT,
                            "%s: /tokens: id %d at [%lld, %lld] is not below %d, the rows of model.spec's embed",
                            ds->path, ds->tokens[i], (long long)(i / T), (long long)(i % T), V);
    return MT_OK;
}

mt_status mt_task_family_init(mt_task_family *fam, const mt_task_shape *shape, const mt_nn_net *net,
                              const struct mt_task_dataset *data, mt_split split) {
    mt_status st = MT_OK;
    memset(fam, 0, sizeof *fam);
    fam->kind = shape->kind;
    fam->shots = shape->shots;
    fam->queries = shape->queries;
    fam->ways = shape->kind == MT_TASK_EPISODES ? shape->ways : 1;
    fam->out_size = 1;
    fam->data = data;
    fam->split = split;
    const char *kind = mt_config_task_kind_name(shape->kind);
    if (augments(shape) && shape->kind != MT_TASK_EPISODES)
        MT_THROW(MT_ERR_CONFIG, "%s: only episodes of images move, not task.kind=%s", augment_key(shape), kind);
    switch (shape->kind) {
    case MT_TASK_SINUSOID:
        fam->in_size = SINUSOID_IN;
        break;
    case MT_TASK_LINREG:
        fam->in_size = LINREG_IN;
        break;
    case MT_TASK_EPISODES:
    case MT_TASK_GROUPED:
        if (!data) MT_THROW(MT_ERR_CONFIG, "task.kind: %s needs a dataset in task.path", kind);
        if (shape->kind == MT_TASK_EPISODES)
            MT_TRY(init_episodes(fam, shape, data, split));
        else
            MT_TRY(init_grouped(fam, data, split));
        break;
    }
    if (data && (shape->kind == MT_TASK_EPISODES || shape->kind == MT_TASK_GROUPED)) MT_TRY(check_tokens(net, data));
    if (net->in_size != fam->in_size)
        MT_THROW(MT_ERR_CONFIG, "model.spec: input size %zu does not fit task.kind=%s, whose examples have %zu",
                 net->in_size, kind, fam->in_size);
    if (fam->classification ? net->loss != MT_NN_LOSS_XENT : net->loss != MT_NN_LOSS_MSE)
        MT_THROW(MT_ERR_CONFIG, "model.spec: task.kind=%s needs the %s loss", kind,
                 fam->classification ? "xent" : "mse");
    if (net->out_size != fam->out_size)
        MT_THROW(MT_ERR_CONFIG, "model.spec: the head has %zu outputs, but task.kind=%s needs %zu%s", net->out_size,
                 kind, fam->out_size, shape->kind == MT_TASK_EPISODES ? " (task.ways)" : "");
    return MT_OK;
fail:
    mt_task_family_free(fam);
    return st;
}

void mt_task_family_free(mt_task_family *fam) {
    free(fam->split_ids);
    fam->split_ids = NULL;
}

int mt_task_support_size(const mt_task_family *fam) {
    if (fam->fixed_episodes) return fam->data->episode_support;
    return fam->classification && fam->kind == MT_TASK_EPISODES ? fam->ways * fam->shots : fam->shots;
}

int mt_task_query_size(const mt_task_family *fam) {
    if (fam->fixed_episodes) return fam->data->episode_query;
    return fam->classification && fam->kind == MT_TASK_EPISODES ? fam->ways * fam->queries : fam->queries;
}

int mt_task_max_batch(const mt_task_family *fam) {
    int support = mt_task_support_size(fam), query = mt_task_query_size(fam);
    return support > query ? support : query;
}
