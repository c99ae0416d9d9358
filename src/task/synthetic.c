/* Task storage, and the synthetic families, which need no files (datasets: episodes.c).
 *   sinusoid (Finn et al. 2017): y = A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5].
 *   linreg (the seed example): y = w·x + b, w ~ U[−1, 1]^10, b ~ U[−1, 1], x ~ U[−1, 1]^10.
 * Hidden task parameters, support and query examples come from separate RNG streams keyed by
 * (seed, iteration, task index), so changing the query count leaves the support set alone. */
#include "metatrain/rng.h"
#include "metatrain/task.h"
#include "task/samplers.h"
#include "core/precision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef MT_(mt_task) task_t;

mt_status MT_(mt_task_alloc)(task_t *task, const mt_task_family *fam) {
    memset(task, 0, sizeof *task);
    size_t ns = (size_t)mt_task_support_size(fam), nq = (size_t)mt_task_query_size(fam);
    task->x_support = malloc(ns * fam->in_size * sizeof(mt_real));
    task->x_query = malloc(nq * fam->in_size * sizeof(mt_real));
    task->y_support = malloc(ns * fam->out_size * sizeof(mt_real));
    task->y_query = malloc(nq * fam->out_size * sizeof(mt_real));
    task->label_support = malloc(ns * sizeof(int32_t));
    task->label_query = malloc(nq * sizeof(int32_t));
    task->scratch = malloc((size_t)(fam->scratch_len > 0 ? fam->scratch_len : 1) * sizeof(int32_t));
    if (!task->x_support || !task->x_query || !task->y_support || !task->y_query || !task->label_support ||
        !task->label_query || !task->scratch) {
        MT_(mt_task_free)(task);
        return MT_RAISE(MT_ERR_NOMEM, "out of memory for task data");
    }
    task->support = (MT_(mt_nn_batch)){task->x_support, task->y_support, task->label_support, (int)ns};
    task->query = (MT_(mt_nn_batch)){task->x_query, task->y_query, task->label_query, (int)nq};
    return MT_OK;
}

void MT_(mt_task_free)(task_t *task) {
    free(task->x_support), free(task->x_query), free(task->y_support), free(task->y_query);
    free(task->label_support), free(task->label_query), free(task->scratch);
    memset(task, 0, sizeof *task);
}

static void sample_sinusoid(mt_rng *rng, double amplitude, double phase, mt_real *x, mt_real *y, int n) {
    for (int i = 0; i < n; i++) {
        double xi = mt_rng_range(rng, -5.0, 5.0);
        x[i] = (mt_real)xi;
        y[i] = (mt_real)(amplitude * sin(xi - phase));
    }
}

static void sample_linreg(mt_rng *rng, const double *w, double b, mt_real *x, mt_real *y, int n, int d) {
    for (int i = 0; i < n; i++) {
        double yi = b;
        for (int j = 0; j < d; j++) {
            double xij = mt_rng_range(rng, -1.0, 1.0);
            x[(size_t)i * d + j] = (mt_real)xij;
            yi += w[j] * xij;
        }
        y[i] = (mt_real)yi;
    }
}

void MT_(mt_task_sample)(const mt_task_family *fam, uint64_t seed, uint32_t iteration, uint32_t task_index,
                         task_t *task) {
    mt_rng hidden, support, query;
    mt_rng_init(&hidden, seed, iteration, task_index, MT_RNG_STREAM_TASK);
    mt_rng_init(&support, seed, iteration, task_index, MT_RNG_STREAM_SUPPORT);
    mt_rng_init(&query, seed, iteration, task_index, MT_RNG_STREAM_QUERY);
    int ns = task->support.n, nq = task->query.n;
    if (fam->kind == MT_TASK_SINUSOID) {
        double amplitude = mt_rng_range(&hidden, 0.1, 5.0), phase = mt_rng_range(&hidden, 0.0, M_PI);
        sample_sinusoid(&support, amplitude, phase, task->x_support, task->y_support, ns);
        sample_sinusoid(&query, amplitude, phase, task->x_query, task->y_query, nq);
    } else if (fam->kind == MT_TASK_EPISODES || fam->kind == MT_TASK_GROUPED) {
        MT_(mt_task_sample_dataset)(fam, seed, iteration, task_index, task);
    } else if (fam->kind == MT_TASK_LINREG) {
        int d = (int)fam->in_size;
        double w[64];
        for (int j = 0; j < d; j++) w[j] = mt_rng_range(&hidden, -1.0, 1.0);
        double b = mt_rng_range(&hidden, -1.0, 1.0);
        sample_linreg(&support, w, b, task->x_support, task->y_support, ns, d);
        sample_linreg(&query, w, b, task->x_query, task->y_query, nq, d);
    }
}
