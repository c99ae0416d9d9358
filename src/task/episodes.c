/* Tasks from HDF5 datasets.
 * episodes: N-way K-shot Q-query. N classes of the split drawn without replacement, in random
 *   order, which is also the episode's label order (labels are shuffled per episode); K + Q
 *   images per class drawn without replacement, the first K to the support set.
 *   Fixed episodes: task i is the file's episode i, exactly.
 *   With task.augment_shift = k (training only), each image then moves by its own (dx, dy),
 *   uniform in [-k, k]^2 from the augmentation stream; a pixel moved in from outside repeats the
 *   nearest edge pixel, so the background stays background. With task.augment_rotate = r it
 *   then turns about its centre by its own angle, uniform in [-r, r) degrees, sampled
 *   bilinearly, edges repeated likewise. The augmentation stream is separate so that k = r = 0
 *   leaves every other draw, and so every earlier run, as it was; r = 0 draws no angle.
 * Rows of token ids (/tokens) are copied as they are, into exact floats, in either family.
 * grouped: one group of the split per task, its rows shuffled; the first task.shots rows are
 *   the support set, the next task.queries the query set.
 * Every draw comes from the (seed, iteration, task index) streams, so any rank can build any task. */
#include "metatrain/dataset.h"
#include "metatrain/rng.h"
#include "task/samplers.h"
#include "core/precision.h"

#include <math.h>
#include <string.h>

typedef MT_(mt_task) task_t;

/* Draws `count` distinct entries of values[0..n) into values[0..count) (partial Fisher-Yates). */
static void draw_distinct(mt_rng *rng, int32_t *values, int n, int count) {
    for (int i = 0; i < count; i++) {
        int j = i + (int)mt_rng_below(rng, (uint32_t)(n - i));
        int32_t tmp = values[i];
        values[i] = values[j];
        values[j] = tmp;
    }
}

/* Token ids go into x as they are: exact integers in floats (the embedding layer reads them). */
static void copy_tokens(const mt_task_dataset *ds, int64_t row, mt_real *x) {
    const int32_t *ids = ds->tokens + (size_t)row * ds->n_tokens;
    for (int t = 0; t < ds->n_tokens; t++) x[t] = (mt_real)ids[t];
}

static void copy_image(const mt_task_dataset *ds, int64_t index, mt_real *x) {
    if (ds->tokens) {
        copy_tokens(ds, index, x);
        return;
    }
    size_t size = (size_t)ds->channels * ds->height * ds->width;
    const uint8_t *p = ds->images + (size_t)index * size;
    for (size_t i = 0; i < size; i++) x[i] = (mt_real)(p[i] * ds->pixel_scale + ds->pixel_offset);
}

/* A row or column index into [0, n - 1]: sources outside the image repeat its edge. */
static int clamp_index(double v, int n) { return v < 0 ? 0 : v > n - 1 ? n - 1 : (int)v; }

/* The image at `index` moved by (dx, dy): x[c][i][j] = image[c][clamp(i - dy)][clamp(j - dx)]. */
static void copy_shifted(const mt_task_dataset *ds, int64_t index, int dx, int dy, mt_real *x) {
    int H = ds->height, W = ds->width;
    const uint8_t *p = ds->images + (size_t)index * ds->channels * H * W;
    for (int c = 0; c < ds->channels; c++, p += (size_t)H * W)
        for (int i = 0; i < H; i++) {
            int si = clamp_index(i - dy, H);
            for (int j = 0; j < W; j++) {
                int sj = clamp_index(j - dx, W);
                *x++ = (mt_real)(p[(size_t)si * W + sj] * ds->pixel_scale + ds->pixel_offset);
            }
        }
}

/* The image at `index` moved by (dx, dy), then turned by `angle` radians about its centre c,
 * bilinear: pixel (i, j) reads the image at c + R(-angle)((i, j) - c - (dy, dx)), where
 * R(a) = [cos a, -sin a; sin a, cos a] acts on (row, column); sources outside repeat the edge. */
static void copy_turned(const mt_task_dataset *ds, int64_t index, int dx, int dy, double angle, mt_real *x) {
    int H = ds->height, W = ds->width;
    double ci = 0.5 * (H - 1), cj = 0.5 * (W - 1), co = cos(angle), sn = sin(angle);
    const uint8_t *p = ds->images + (size_t)index * ds->channels * H * W;
    for (int c = 0; c < ds->channels; c++, p += (size_t)H * W)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                double v = i - dy - ci, u = j - dx - cj;
                double si = co * v + sn * u + ci, sj = -sn * v + co * u + cj;
                double fi = floor(si), fj = floor(sj), ti = si - fi, tj = sj - fj;
                int i0 = clamp_index(fi, H), i1 = clamp_index(fi + 1, H);
                int j0 = clamp_index(fj, W), j1 = clamp_index(fj + 1, W);
                double top = (1 - tj) * p[(size_t)i0 * W + j0] + tj * p[(size_t)i0 * W + j1];
                double bottom = (1 - tj) * p[(size_t)i1 * W + j0] + tj * p[(size_t)i1 * W + j1];
                *x++ = (mt_real)(((1 - ti) * top + ti * bottom) * ds->pixel_scale + ds->pixel_offset);
            }
}

/* One example of a drawn episode: as stored, or moved (and turned) when the family augments. */
static void copy_example(const mt_task_family *fam, mt_rng *augment, int64_t index, mt_real *x) {
    if (fam->shift == 0 && fam->rotate == 0) {
        copy_image(fam->data, index, x);
        return;
    }
    int dx = 0, dy = 0;
    if (fam->shift > 0) {
        uint32_t span = 2u * (uint32_t)fam->shift + 1u;
        dx = (int)mt_rng_below(augment, span) - fam->shift;
        dy = (int)mt_rng_below(augment, span) - fam->shift;
    }
    if (fam->rotate == 0)
        copy_shifted(fam->data, index, dx, dy, x);
    else
        copy_turned(fam->data, index, dx, dy, mt_rng_range(augment, -fam->rotate, fam->rotate), x);
}

static void copy_row(const mt_task_family *fam, int64_t row, mt_real *x, mt_real *y, int32_t *label);

static void sample_fixed(const mt_task_family *fam, uint32_t episode, task_t *task) {
    const mt_task_dataset *ds = fam->data;
    size_t size = fam->in_size, t = fam->out_size;
    if (ds->kind == MT_DATASET_GROUPED) { /* rows of one group, answers from the file */
        for (int i = 0; i < ds->episode_support; i++)
            copy_row(fam, ds->episode_support_index[(size_t)episode * ds->episode_support + i],
                     task->x_support + i * size, task->y_support + i * t, task->label_support + i);
        for (int i = 0; i < ds->episode_query; i++)
            copy_row(fam, ds->episode_query_index[(size_t)episode * ds->episode_query + i], task->x_query + i * size,
                     task->y_query + i * t, task->label_query + i);
        return;
    }
    for (int i = 0; i < ds->episode_support; i++) {
        size_t k = (size_t)episode * ds->episode_support + i;
        copy_image(ds, ds->episode_support_index[k], task->x_support + i * size);
        task->label_support[i] = ds->episode_support_label[k];
    }
    for (int i = 0; i < ds->episode_query; i++) {
        size_t k = (size_t)episode * ds->episode_query + i;
        copy_image(ds, ds->episode_query_index[k], task->x_query + i * size);
        task->label_query[i] = ds->episode_query_label[k];
    }
}

static void sample_episode(const mt_task_family *fam, mt_rng *hidden, mt_rng *draws, mt_rng *augment, task_t *task) {
    const mt_task_dataset *ds = fam->data;
    int32_t *scratch = task->scratch;
    int32_t classes[4096]; /* ways is at most the softmax width, 4096 */
    size_t size = fam->in_size;
    for (int i = 0; i < fam->n_split; i++) scratch[i] = i;
    draw_distinct(hidden, scratch, fam->n_split, fam->ways);
    for (int w = 0; w < fam->ways; w++) classes[w] = fam->split_ids[scratch[w]];
    for (int w = 0; w < fam->ways; w++) {
        int c = classes[w];
        int64_t first = ds->class_start[c];
        int n = (int)(ds->class_start[c + 1] - first);
        for (int i = 0; i < n; i++) scratch[i] = i;
        draw_distinct(draws, scratch, n, fam->shots + fam->queries);
        for (int s = 0; s < fam->shots; s++) {
            int slot = w * fam->shots + s;
            copy_example(fam, augment, ds->class_members[first + scratch[s]], task->x_support + slot * size);
            task->label_support[slot] = w;
        }
        for (int q = 0; q < fam->queries; q++) {
            int slot = w * fam->queries + q;
            copy_example(fam, augment, ds->class_members[first + scratch[fam->shots + q]], task->x_query + slot * size);
            task->label_query[slot] = w;
        }
    }
}

static void copy_row(const mt_task_family *fam, int64_t row, mt_real *x, mt_real *y, int32_t *label) {
    const mt_task_dataset *ds = fam->data;
    if (ds->tokens)
        copy_tokens(ds, row, x);
    else
        for (int j = 0; j < ds->n_features; j++) x[j] = ds->features[(size_t)row * ds->n_features + j];
    if (fam->classification)
        *label = ds->target_class[row];
    else
        for (int j = 0; j < ds->n_targets; j++) y[j] = ds->targets[(size_t)row * ds->n_targets + j];
}

static void sample_group(const mt_task_family *fam, mt_rng *hidden, mt_rng *draws, task_t *task) {
    const mt_task_dataset *ds = fam->data;
    int g = fam->split_ids[mt_rng_below(hidden, (uint32_t)fam->n_split)];
    int64_t first = ds->group_start[g];
    int n = (int)(ds->group_start[g + 1] - first);
    int32_t *scratch = task->scratch;
    for (int i = 0; i < n; i++) scratch[i] = i;
    draw_distinct(draws, scratch, n, fam->shots + fam->queries);
    size_t d = fam->in_size, t = fam->out_size;
    for (int s = 0; s < fam->shots; s++)
        copy_row(fam, ds->group_members[first + scratch[s]], task->x_support + s * d, task->y_support + s * t,
                 task->label_support + s);
    for (int q = 0; q < fam->queries; q++)
        copy_row(fam, ds->group_members[first + scratch[fam->shots + q]], task->x_query + q * d, task->y_query + q * t,
                 task->label_query + q);
}

void MT_(mt_task_sample_dataset)(const mt_task_family *fam, uint64_t seed, uint32_t iteration, uint32_t task_index,
                                 task_t *task) {
    mt_rng hidden, draws, augment;
    mt_rng_init(&hidden, seed, iteration, task_index, MT_RNG_STREAM_TASK);
    mt_rng_init(&draws, seed, iteration, task_index, MT_RNG_STREAM_SUPPORT);
    mt_rng_init(&augment, seed, iteration, task_index, MT_RNG_STREAM_AUGMENT);
    if (fam->fixed_episodes)
        sample_fixed(fam, task_index, task);
    else if (fam->kind == MT_TASK_EPISODES)
        sample_episode(fam, &hidden, &draws, &augment, task);
    else
        sample_group(fam, &hidden, &draws, task);
}
