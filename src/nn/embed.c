/* The embedding bag: a sample is a bag of token ids, and its features are the mean of the table
 * rows the bag names (an id of −1 pads; a bag with no id gives zeros).
 *
 *   forward      y_n      = (1/c_n) Σ_t E[id_nt]
 *   backward     dE[id_nt] += dy_n / c_n               (ids are not variables: no dx)
 *   R-forward    Ry_n     = (1/c_n) Σ_t U[id_nt]
 *   R-backward   R(dE)[id_nt] += R(dy_n) / c_n
 *
 * y is linear in E, so the R-passes are these same two routines applied to U and R(dy). Every
 * pass touches only the rows the batch names: O(B·T·D) work, whatever the table's size V. A
 * repeated id in a bag counts as often as it appears. */
#include "metatrain/nn.h"
#include "core/precision.h"

#include <string.h>

/* The number of valid ids in a bag of T (they are ≥ 0; the caller checked them against V). */
static int bag_count(const mt_real *ids, int T) {
    int c = 0;
    for (int t = 0; t < T; t++) c += ids[t] >= 0;
    return c;
}

void MT_(mt_nn_embed_forward)(mt_real *y, const mt_real *ids, const mt_real *E, int B, int T, int D) {
    for (int n = 0; n < B; n++) {
        const mt_real *bag = ids + (size_t)n * T;
        mt_real *yn = y + (size_t)n * D;
        memset(yn, 0, (size_t)D * sizeof *yn);
        int c = bag_count(bag, T);
        if (!c) continue;
        for (int t = 0; t < T; t++) {
            if (bag[t] < 0) continue;
            const mt_real *row = E + (size_t)bag[t] * D;
            for (int j = 0; j < D; j++) yn[j] += row[j];
        }
        mt_real inv = (mt_real)1 / (mt_real)c;
        for (int j = 0; j < D; j++) yn[j] *= inv;
    }
}

void MT_(mt_nn_embed_backward)(mt_real *dE, const mt_real *dy, const mt_real *ids, int B, int T, int D) {
    for (int n = 0; n < B; n++) {
        const mt_real *bag = ids + (size_t)n * T, *dyn = dy + (size_t)n * D;
        int c = bag_count(bag, T);
        if (!c) continue;
        mt_real inv = (mt_real)1 / (mt_real)c;
        for (int t = 0; t < T; t++) {
            if (bag[t] < 0) continue;
            mt_real *row = dE + (size_t)bag[t] * D;
            for (int j = 0; j < D; j++) row[j] += dyn[j] * inv;
        }
    }
}
