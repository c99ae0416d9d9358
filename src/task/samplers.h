/* Private: the dataset samplers (src/task/episodes.c), called by mt_task_sample. */
#ifndef METATRAIN_TASK_SAMPLERS_H
#define METATRAIN_TASK_SAMPLERS_H

#include "metatrain/task.h"

void mt_task_sample_dataset(const mt_task_family *fam, uint64_t seed, uint32_t iteration, uint32_t task_index,
                            mt_task *task);
void mt_task_sample_dataset_f64(const mt_task_family *fam, uint64_t seed, uint32_t iteration, uint32_t task_index,
                                mt_task_f64 *task);

#endif
