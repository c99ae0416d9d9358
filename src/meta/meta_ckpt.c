/* The meta-parameter vector in a checkpoint: one float32 dataset per named tensor under a prefix
 * ("/params/conv1/weight", "/optimizer/m/inner_lr/conv1"), in mt_meta_tensors' order. Shared by
 * the training state and by trained models, so that both read and write one layout. */
#include "metatrain/meta.h"

#include <stdio.h>
#include <string.h>

mt_status mt_meta_ckpt_add(mt_ckpt *ck, const mt_meta_layout *layout, const char *prefix, const float *vector) {
    mt_meta_tensor tensors[MT_META_MAX_TENSORS];
    int n = mt_meta_tensors(layout, tensors, MT_META_MAX_TENSORS);
    if (n > MT_META_MAX_TENSORS)
        return MT_RAISE(MT_ERR_ARG, "more than %d meta-parameter tensors", MT_META_MAX_TENSORS);
    for (int t = 0; t < n; t++) {
        char path[MT_CKPT_PATH_LEN];
        uint64_t dims[4];
        for (int i = 0; i < 4; i++) dims[i] = (uint64_t)tensors[t].dims[i];
        if (snprintf(path, sizeof path, "%s/%s", prefix, tensors[t].name) >= (int)sizeof path)
            return MT_RAISE(MT_ERR_ARG, "checkpoint path too long: %s/%s", prefix, tensors[t].name);
        mt_status st = mt_ckpt_add(ck, path, MT_CKPT_F32, tensors[t].rank, dims, vector + tensors[t].offset);
        if (st != MT_OK) return st;
    }
    return MT_OK;
}

mt_status mt_meta_ckpt_restore(const mt_ckpt *ck, const char *path, const mt_meta_layout *layout, const char *prefix,
                               float *vector) {
    mt_meta_tensor tensors[MT_META_MAX_TENSORS];
    int n = mt_meta_tensors(layout, tensors, MT_META_MAX_TENSORS);
    if (n > MT_META_MAX_TENSORS)
        return MT_RAISE(MT_ERR_ARG, "more than %d meta-parameter tensors", MT_META_MAX_TENSORS);
    for (int t = 0; t < n; t++) {
        char name[MT_CKPT_PATH_LEN];
        if (snprintf(name, sizeof name, "%s/%s", prefix, tensors[t].name) >= (int)sizeof name)
            return MT_RAISE(MT_ERR_ARG, "checkpoint path too long: %s/%s", prefix, tensors[t].name);
        const mt_ckpt_array *a = mt_ckpt_find(ck, name);
        if (!a) return MT_RAISE(MT_ERR_FORMAT, "%s: %s: missing", path, name);
        uint64_t count = a->rank > 0 ? 1 : 0;
        for (int i = 0; i < a->rank; i++) count *= a->dims[i];
        if (a->dtype != MT_CKPT_F32 || a->rank != tensors[t].rank || count != tensors[t].count)
            return MT_RAISE(MT_ERR_FORMAT, "%s: %s: expected float32 of %zu entries in %d dimensions", path, name,
                            tensors[t].count, tensors[t].rank);
        memcpy(vector + tensors[t].offset, a->data, tensors[t].count * sizeof(float));
    }
    return MT_OK;
}
