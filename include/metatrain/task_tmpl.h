/* Per-precision part of task.h. No include guard. */

/* One task's data, in buffers planned once for the family's sizes. */
typedef struct {
    MT_(mt_nn_batch) support, query;
    MT_REAL *x_support, *y_support, *x_query, *y_query;
    int32_t *label_support, *label_query;
    int32_t *scratch; /* index permutations of the samplers */
} MT_(mt_task);

mt_status MT_(mt_task_alloc)(MT_(mt_task) * task, const mt_task_family *fam);
void MT_(mt_task_free)(MT_(mt_task) * task);

/* Fills `task` with task number task_index of iteration `iteration` under `seed`. */
void MT_(mt_task_sample)(const mt_task_family *fam, uint64_t seed, uint32_t iteration, uint32_t task_index,
                         MT_(mt_task) * task);
