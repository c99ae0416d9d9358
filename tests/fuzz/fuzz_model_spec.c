/* libFuzzer harness: the network spec parser (mt_nn_parse) on arbitrary bytes.
 *
 * A spec that parses must describe a consistent layout: layers chained shape to shape, tensors
 * tiling the flat parameter buffer. When the network is small, one gradient and one
 * Hessian-vector product run on it, so that a layout the parser accepts but the passes index
 * differently shows up as a sanitizer report. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metatrain/nn.h"
#include "fuzz_util.h"

#define SMALL_PARAMS 20000 /* run the passes only below these sizes: keeps each input fast */
#define SMALL_ACTIVATIONS 20000
#define BATCH 2

static void check_layout(const mt_nn_net *net) {
    FUZZ_CHECK(net->n_layers >= 1 && net->n_layers <= MT_NN_MAX_LAYERS);
    FUZZ_CHECK(net->n_tensors >= 0 && net->n_tensors <= MT_NN_MAX_TENSORS);
    FUZZ_CHECK(net->in_size == (size_t)net->in_c * net->in_h * net->in_w);
    size_t params = 0;
    for (int l = 0; l < net->n_layers; l++) {
        const mt_nn_layer *L = &net->layers[l];
        FUZZ_CHECK(L->out_c > 0 && L->out_h > 0 && L->out_w > 0);
        if (l > 0) {
            const mt_nn_layer *P = &net->layers[l - 1];
            FUZZ_CHECK((size_t)L->in_c * L->in_h * L->in_w == (size_t)P->out_c * P->out_h * P->out_w);
        }
        FUZZ_CHECK(L->weight_count <= L->param_count);
        if (L->param_count) FUZZ_CHECK(L->param_offset == params);
        params += L->param_count;
    }
    FUZZ_CHECK(params == net->n_params);
    const mt_nn_layer *last = &net->layers[net->n_layers - 1];
    FUZZ_CHECK(net->out_size == (size_t)last->out_c * last->out_h * last->out_w);
    for (int t = 0; t < net->n_tensors; t++) {
        const mt_nn_tensor *T = &net->tensors[t];
        FUZZ_CHECK(T->offset + T->count <= net->n_params);
        FUZZ_CHECK(T->layer >= 0 && T->layer < net->n_layers);
        FUZZ_CHECK(mt_nn_find_tensor(net, T->name) == t);
    }
    if (net->in_tokens) /* the table is layer 0, V rows of its width */
        FUZZ_CHECK(net->layers[0].kind == MT_NN_EMBED && net->layers[0].table_rows > 0 &&
                   net->layers[0].weight_count == (size_t)net->layers[0].table_rows * net->layers[0].out_c);
    size_t begin, end;
    mt_nn_head_range(net, &begin, &end);
    FUZZ_CHECK(begin <= end && end <= net->n_params);
}

static size_t largest_activation(const mt_nn_net *net) {
    size_t most = net->in_size;
    for (int l = 0; l < net->n_layers; l++) {
        const mt_nn_layer *L = &net->layers[l];
        size_t n = (size_t)L->out_c * L->out_h * L->out_w;
        if (L->kind == MT_NN_CONV3X3) n += (size_t)L->in_c * 9 * L->out_h * L->out_w; /* im2col */
        if (n > most) most = n;
    }
    return most;
}

static void run_passes(const mt_nn_net *net) {
    mt_nn_ws *ws = NULL;
    size_t np = net->n_params, nx = BATCH * net->in_size, ny = BATCH * net->out_size;
    float *params = calloc(np ? np : 1, sizeof *params), *dir = calloc(np ? np : 1, sizeof *dir);
    float *grad = calloc(np ? np : 1, sizeof *grad), *hv = calloc(np ? np : 1, sizeof *hv);
    float *x = calloc(nx, sizeof *x), *y = calloc(ny, sizeof *y);
    int32_t labels[BATCH] = {0, (int32_t)(net->out_size - 1)};
    if (!params || !dir || !grad || !hv || !x || !y || mt_nn_ws_create(&ws, net, BATCH) != MT_OK) goto done;
    mt_nn_init_params(net, 1, params);
    for (size_t i = 0; i < nx; i++) /* token ids in [−1, V) for a table, else values around 0 */
        x[i] = net->in_tokens ? (float)((i * 7919) % ((size_t)net->layers[0].table_rows + 1)) - 1.0f
                              : (float)((i * 7919) % 13) / 13.0f - 0.5f;
    for (size_t i = 0; i < np; i++) dir[i] = (float)((i * 104729) % 17) / 17.0f - 0.5f;
    mt_nn_batch batch = {.x = x,
                         .y = net->loss == MT_NN_LOSS_MSE ? y : NULL,
                         .labels = net->loss == MT_NN_LOSS_XENT ? labels : NULL,
                         .n = BATCH};
    (void)mt_nn_grad(ws, params, &batch, grad);
    (void)mt_nn_hvp(ws, params, &batch, dir, grad, hv);
    if (net->loss == MT_NN_LOSS_XENT) (void)mt_nn_count_correct(ws, &batch);
done:
    mt_nn_ws_free(ws);
    free(params), free(dir), free(grad), free(hv), free(x), free(y);
    mt_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mt_nn_net net;
    char *spec = fuzz_cstring(data, size);
    if (!spec) return 0;
    if (mt_nn_parse(&net, spec, "model.spec") == MT_OK) {
        check_layout(&net);
        if (net.n_params <= SMALL_PARAMS && largest_activation(&net) <= SMALL_ACTIVATIONS) run_passes(&net);
    }
    mt_error_clear();
    free(spec);
    return 0;
}
