/* The meta-batch driver: the per-task meta-gradients of the tasks one rank takes in an iteration. */
#include "metatrain/meta.h"

size_t mt_meta_vector_len(const mt_meta_rows *rows) {
    return rows->layout.n_meta + MT_META_VECTOR_EXTRA + mt_meta_rows_ids(rows);
}

int mt_meta_batch_grads(mt_meta_ctx *ctx, mt_meta_rows *rows, mt_task *task, const mt_task_family *fam,
                        const mt_meta_step_config *sc, const float *meta, uint64_t seed, int iteration,
                        int (*next_task)(void *arg), void *arg, float *vectors) {
    size_t n = rows->layout.n_meta, stride = mt_meta_vector_len(rows);
    int done = 0;
    for (int t; (t = next_task(arg)) >= 0; done++) {
        float *vec = vectors + (size_t)done * stride;
        mt_task_sample(fam, seed, (uint32_t)iteration, (uint32_t)t, task);
        const float *at = mt_meta_rows_cut(rows, meta, task);
        vec[n] = (float)mt_meta_task_grad(ctx, sc, at, task, vec);
        mt_meta_rows_write_ids(rows, vec + n + MT_META_VECTOR_EXTRA);
    }
    return done;
}
