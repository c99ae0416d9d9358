/* The meta-batch driver: the per-task meta-gradients of one rank's share of an iteration. */
#include "metatrain/meta.h"

void mt_meta_batch_grads(mt_meta_ctx *ctx, mt_task *task, const mt_task_family *fam,
                         const mt_meta_step_config *sc, const float *meta, uint64_t seed,
                         int iteration, int begin, int end, float *vectors) {
    size_t stride = ctx->layout->n_meta + MT_META_VECTOR_EXTRA;
    for (int t = begin; t < end; t++) {
        float *vec = vectors + (size_t)(t - begin) * stride;
        mt_task_sample(fam, seed, (uint32_t)iteration, (uint32_t)t, task);
        vec[ctx->layout->n_meta] = (float)mt_meta_task_grad(ctx, sc, meta, task, vec);
    }
}
