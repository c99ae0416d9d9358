/* Task families: which data a task holds and whether the model fits it. */
#include "metatrain/task.h"

#include <string.h>

/* Shapes the synthetic families fix. */
#define SINUSOID_IN 1
#define LINREG_IN 10

mt_status mt_task_family_init(mt_task_family *fam, const mt_config *cfg, const mt_nn_net *net,
                              const struct mt_task_dataset *data, mt_split split, int queries) {
    memset(fam, 0, sizeof *fam);
    fam->kind = cfg->task_kind;
    fam->shots = cfg->shots;
    fam->queries = queries > 0 ? queries : cfg->queries;
    fam->ways = 1;
    fam->out_size = 1;
    fam->data = data;
    fam->split = split;
    switch (cfg->task_kind) {
    case MT_TASK_SINUSOID: fam->in_size = SINUSOID_IN; break;
    case MT_TASK_LINREG: fam->in_size = LINREG_IN; break;
    case MT_TASK_EPISODES:
    case MT_TASK_GROUPED:
        return MT_RAISE(MT_ERR_CONFIG, "task.kind: '%s' needs a dataset reader, which this build lacks",
                        mt_cli_task_kind_name(cfg->task_kind));
    }
    if (net->in_size != fam->in_size)
        return MT_RAISE(MT_ERR_CONFIG, "model.spec: input size %zu does not fit task.kind=%s, whose examples have %zu",
                        net->in_size, mt_cli_task_kind_name(fam->kind), fam->in_size);
    if (fam->classification ? net->loss != MT_NN_LOSS_XENT : net->loss != MT_NN_LOSS_MSE)
        return MT_RAISE(MT_ERR_CONFIG, "model.spec: task.kind=%s needs the %s loss",
                        mt_cli_task_kind_name(fam->kind), fam->classification ? "xent" : "mse");
    if (net->out_size != (fam->classification ? (size_t)fam->ways : fam->out_size))
        return MT_RAISE(MT_ERR_CONFIG, "model.spec: %zu outputs, but task.kind=%s needs %zu",
                        net->out_size, mt_cli_task_kind_name(fam->kind),
                        fam->classification ? (size_t)fam->ways : fam->out_size);
    return MT_OK;
}

int mt_task_support_size(const mt_task_family *fam) {
    return fam->classification ? fam->ways * fam->shots : fam->shots;
}

int mt_task_query_size(const mt_task_family *fam) {
    return fam->classification ? fam->ways * fam->queries : fam->queries;
}
