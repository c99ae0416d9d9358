/* A task's rows of an embedding table.
 *
 * A network that starts with `embed V D` runs each task on the meta-parameters cut to the table
 * rows the task's bags name (ascending), so that nothing a task does costs V·D: not the inner
 * loop's copies of θ per step, not its gradients and HVPs, not its meta-gradient. The cut network
 * has `capacity` table rows, the most one task can name (its examples times T, at most V); the
 * task's ids are renumbered to cut rows in place; rows past the task's own stay zero, and as no
 * id names them, their gradients are zero too. The task's meta-gradient row carries its table
 * rows' indices, and the reducer adds each cut row into its table row of the fixed-point sum
 * (src/dist/allreduce.c), so the sum stays exact and rank-count independent.
 *
 * Every inner-loop update is elementwise, or sums over parameters in their order (iMAML's dot
 * products, MAML++'s rate gradients): an untouched row adds exact zeros there, so the cut task
 * gives the same bits as the whole table would (tests/test_meta_rows.c checks it). A network
 * without a table cuts nothing: the layout is the whole one and mt_meta_rows_cut returns meta. */
#include "metatrain/meta.h"

#include <stdlib.h>
#include <string.h>

/* Heapsort of n ids: in place, no allocation, O(n log n). */
static void sift_down(int32_t *a, size_t root, size_t n) {
    for (size_t child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && a[child + 1] > a[child]) child++;
        if (a[root] >= a[child]) return;
        int32_t tmp = a[root];
        a[root] = a[child];
        a[child] = tmp;
    }
}

static void sort_ids(int32_t *a, size_t n) {
    for (size_t i = n / 2; i-- > 0;) sift_down(a, i, n);
    for (size_t end = n; end-- > 1;) {
        int32_t tmp = a[0];
        a[0] = a[end];
        a[end] = tmp;
        sift_down(a, 0, end);
    }
}

mt_status mt_meta_rows_create(mt_meta_rows **out, const mt_meta_layout *full, const mt_task_family *fam) {
    mt_status st = MT_OK;
    mt_meta_rows *r = calloc(1, sizeof *r);
    if (!r) MT_THROW(MT_ERR_NOMEM, "out of memory for a task's table rows");
    const mt_nn_net *net = full->net;
    r->full = full;
    if (!net->in_tokens) {
        r->layout = *full;
        *out = r;
        return MT_OK;
    }
    if (full->traits->rates == MT_RATES_PER_PARAMETER_STEP)
        MT_THROW(MT_ERR_CONFIG,
                 "meta.algorithm: %s would learn steps x %d x %d rates for the table of `embed`; use metasgd or mamlpp",
                 mt_config_algorithm_name(full->algorithm), net->layers[0].table_rows, net->layers[0].out_c);
    size_t ids = (size_t)(mt_task_support_size(fam) + mt_task_query_size(fam)) * net->in_size;
    int V = net->layers[0].table_rows;
    r->capacity = ids < (size_t)V ? (int)ids : V;
    r->width = net->layers[0].out_c;
    mt_nn_with_table_rows(net, r->capacity, &r->net);
    mt_meta_layout_init(&r->layout, &r->net, full->algorithm, full->inner_steps);
    r->rows = malloc((size_t)r->capacity * sizeof *r->rows);
    r->slot = malloc((size_t)V * sizeof *r->slot);
    r->meta = calloc(r->layout.n_meta, sizeof *r->meta);
    if (!r->rows || !r->slot || !r->meta) MT_THROW(MT_ERR_NOMEM, "out of memory for a task's table rows");
    for (int v = 0; v < V; v++) r->slot[v] = -1;
    *out = r;
    return MT_OK;
fail:
    mt_meta_rows_free(r);
    return st;
}

void mt_meta_rows_free(mt_meta_rows *r) {
    if (!r) return;
    free(r->rows), free(r->slot), free(r->meta);
    free(r);
}

/* Lists in r->rows the table rows a batch's bags name that are new to this task (slot marked). */
static void name_rows(mt_meta_rows *r, const mt_nn_batch *b) {
    size_t n = (size_t)b->n * r->net.in_size;
    for (size_t i = 0; i < n; i++) {
        if (b->x[i] < 0) continue;
        int32_t id = (int32_t)b->x[i];
        if (r->slot[id] < 0) r->slot[id] = 0, r->rows[r->n_rows++] = id; /* numbered once sorted */
    }
}

static void renumber(const mt_meta_rows *r, const mt_nn_batch *b, float *x) {
    size_t n = (size_t)b->n * r->net.in_size;
    for (size_t i = 0; i < n; i++)
        if (x[i] >= 0) x[i] = (float)r->slot[(int32_t)x[i]];
}

/* dst's table rows are src's rows r->rows; what follows the table is copied whole. A vector of
 * n_theta entries in either layout (θ, or Meta-SGD's rates). */
static void cut_block(const mt_meta_rows *r, float *dst, const float *src) {
    size_t D = (size_t)r->width, V = (size_t)r->full->net->layers[0].table_rows;
    for (int i = 0; i < r->n_rows; i++) memcpy(dst + (size_t)i * D, src + (size_t)r->rows[i] * D, D * sizeof *dst);
    memcpy(dst + (size_t)r->capacity * D, src + V * D, (r->layout.n_theta - (size_t)r->capacity * D) * sizeof *dst);
}

const float *mt_meta_rows_cut(mt_meta_rows *r, const float *meta, mt_task *task) {
    if (!r->capacity) return meta;
    size_t D = (size_t)r->width;
    int before = r->n_rows;
    for (int i = 0; i < before; i++) r->slot[r->rows[i]] = -1;
    r->n_rows = 0;
    name_rows(r, &task->support);
    name_rows(r, &task->query);
    sort_ids(r->rows, (size_t)r->n_rows);
    for (int i = 0; i < r->n_rows; i++) r->slot[r->rows[i]] = i;
    renumber(r, &task->support, task->x_support);
    renumber(r, &task->query, task->x_query);

    const mt_meta_layout *cut = &r->layout, *full = r->full;
    if (before > r->n_rows) /* the last task's rows past this one's: back to zero */
        for (size_t k = 0; k < (cut->traits->rates == MT_RATES_PER_PARAMETER ? 2u : 1u); k++)
            memset(r->meta + k * cut->n_theta + (size_t)r->n_rows * D, 0,
                   (size_t)(before - r->n_rows) * D * sizeof *r->meta);
    cut_block(r, r->meta, meta);
    if (cut->traits->rates == MT_RATES_PER_PARAMETER)
        cut_block(r, r->meta + cut->n_theta, meta + full->n_theta);
    else
        memcpy(r->meta + cut->n_theta, meta + full->n_theta, cut->n_rates * sizeof *r->meta);
    return r->meta;
}

size_t mt_meta_rows_ids(const mt_meta_rows *r) { return (size_t)r->capacity; }

void mt_meta_rows_write_ids(const mt_meta_rows *r, float *ids) {
    for (int i = 0; i < r->capacity; i++) ids[i] = i < r->n_rows ? (float)r->rows[i] : -1.0f;
}

int mt_meta_rows_groups(const mt_meta_rows *r, size_t *row_begin, size_t *out_begin, int *width) {
    static mt_meta_tensor cut[MT_META_MAX_TENSORS], whole[MT_META_MAX_TENSORS];
    int n = mt_meta_tensors(&r->layout, cut, MT_META_MAX_TENSORS);
    mt_meta_tensors(r->full, whole, MT_META_MAX_TENSORS);
    int per_parameter = r->layout.traits->rates == MT_RATES_PER_PARAMETER;
    for (int t = 0; t < n; t++) {
        /* the table is the network's tensor 0, and Meta-SGD's rates repeat the tensors */
        int table = r->capacity && (t == 0 || (per_parameter && t == r->net.n_tensors));
        row_begin[t] = cut[t].offset;
        out_begin[t] = whole[t].offset;
        width[t] = table ? r->width : 0;
    }
    row_begin[n] = r->layout.n_meta;
    out_begin[n] = r->full->n_meta;
    width[n] = 0;
    row_begin[n + 1] = r->layout.n_meta + MT_META_VECTOR_EXTRA;
    out_begin[n + 1] = r->full->n_meta + MT_META_VECTOR_EXTRA;
    return n + 1;
}
