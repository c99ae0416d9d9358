/* The meta-batch driver: the per-task meta-gradients of the tasks one rank takes in an iteration. */
#include "metatrain/meta.h"

int mt_meta_batch_grads(mt_meta_ctx *ctx, mt_task *task, const mt_task_family *fam, const mt_meta_step_config *sc,
                        const float *meta, uint64_t seed, int iteration, int (*next_task)(void *arg), void *arg,
                        float *vectors) {
    size_t stride = ctx->layout->n_meta + MT_META_VECTOR_EXTRA;
    int rows = 0;
    for (int t; (t = next_task(arg)) >= 0; rows++) {
        float *vec = vectors + (size_t)rows * stride;
        mt_task_sample(fam, seed, (uint32_t)iteration, (uint32_t)t, task);
        vec[ctx->layout->n_meta] = (float)mt_meta_task_grad(ctx, sc, meta, task, vec);
    }
    return rows;
}
