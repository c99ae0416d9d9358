/* Adapting a meta-trained model in your own program, with libmetatrain's C API
 * (include/metatrain/model.h). A new sine curve y = A sin(x - phase) arrives with ten labelled
 * points; the model adapts to them with the inner loop it was meta-trained with, then predicts
 * 100 points of the curve. No MPI, no config: the checkpoint holds everything.
 *
 *   build/sinusoid_adapt runs/quickstart/checkpoint.h5 [AMPLITUDE PHASE]
 *   cc sinusoid_adapt.c $(pkg-config --cflags --libs metatrain) -lm   # against an installed library */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "metatrain/model.h"

#define SUPPORT 10
#define QUERY 100

static double mse(const float *y, const float *t, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)(y[i] - t[i]) * (y[i] - t[i]);
    return s / n;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: %s CHECKPOINT [AMPLITUDE PHASE]\n", argv[0]);
        return 2;
    }
    double amplitude = argc == 4 ? atof(argv[2]) : 2.0, phase = argc == 4 ? atof(argv[3]) : 0.5;
    float xs[SUPPORT], ys[SUPPORT], xq[QUERY], yq[QUERY], pred[QUERY];
    for (int i = 0; i < SUPPORT; i++) { /* ten points spread over [-5, 5] */
        xs[i] = (float)(-5 + 10.0 * (i + 0.37) / SUPPORT);
        ys[i] = (float)(amplitude * sin(xs[i] - phase));
    }
    for (int i = 0; i < QUERY; i++) {
        xq[i] = (float)(-5 + 10.0 * i / (QUERY - 1));
        yq[i] = (float)(amplitude * sin(xq[i] - phase));
    }

    mt_model *model = NULL;
    mt_model_info info;
    if (mt_model_open(&model, argv[1], &(mt_model_options){.max_batch = QUERY}) != MT_OK) goto fail;
    mt_model_describe(model, &info);
    if (info.input_size != 1 || info.outputs != 1 || info.classification) {
        fprintf(stderr, "%s: not a sinusoid model (%s)\n", argv[1], info.model_spec);
        mt_model_close(model);
        return 1;
    }
    if (mt_model_predict(model, xq, QUERY, pred, NULL) != MT_OK) goto fail;
    printf("%s, %s: MSE on the new curve %.4f before adapting,", argv[1], info.algorithm, mse(pred, yq, QUERY));
    mt_model_batch support = {.x = xs, .targets = ys, .rows = SUPPORT};
    if (mt_model_adapt(model, &support) != MT_OK || mt_model_predict(model, xq, QUERY, pred, NULL) != MT_OK) goto fail;
    printf(" %.4f after %d step%s on %d points\n", mse(pred, yq, QUERY), info.steps, info.steps == 1 ? "" : "s",
           SUPPORT);
    mt_model_close(model);
    return 0;
fail:
    fprintf(stderr, "sinusoid_adapt: %s\n", mt_error_message());
    mt_model_close(model);
    return 1;
}
