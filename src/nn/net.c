/* Whole-network passes over a planned workspace: loss, gradient, and Hessian-vector product by
 * forward-over-reverse. Nothing here allocates except mt_nn_ws_create.
 *
 * Layouts: the first net->n_image_layers layers hold their activations channel-major, (C,B,H,W),
 * so a convolution over the whole batch is one GEMM whose output needs no reordering and batch
 * norm reads each channel contiguously. The batch arrives and the loss reads batch-major, (B,D):
 * the input is reordered on the way in (unless C = 1, where both layouts agree) and the output
 * of the last image layer on the way out, into ws->flat; gradients cross back the same way.
 *
 * An HVP whose caller passes no gradient buffer (second-order MAML without learned rates,
 * iMAML's conjugate gradient) skips the gradient's weight products: the deltas are still needed
 * for the R-pass, the weight gradient is not, and leaving it out changes no bit of the HVP. */
#include "metatrain/nn.h"
#include "metatrain/rng.h"
#include "core/precision.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef MT_(mt_nn_ws) ws_t;
typedef MT_(mt_nn_batch) batch_t;
typedef MT_(mt_nn_conv_work) mt_nn_conv_work_t;

static size_t layer_in_size(const mt_nn_layer *L) { return (size_t)L->in_c * L->in_h * L->in_w; }
static size_t layer_out_size(const mt_nn_layer *L) { return (size_t)L->out_c * L->out_h * L->out_w; }

mt_status MT_(mt_nn_ws_create)(ws_t **out, const mt_nn_net *net, int max_batch) {
    mt_nn_ws_plan plan = MT_NN_WS_PLAN_DEFAULT;
    return MT_(mt_nn_ws_create_planned)(out, net, max_batch, &plan);
}

/* A ReLU in place overwrites its input: never the batch's x (act[0]) or the batch-major copy
 * that starts the feature layers. */
static int relu_in_place(const mt_nn_net *net, const mt_nn_ws_plan *plan, int l) {
    return !plan->keep_relu_inputs && net->layers[l].kind == MT_NN_RELU && l > 0 && l != net->n_image_layers;
}

mt_status MT_(mt_nn_ws_create_planned)(ws_t **out, const mt_nn_net *net, int max_batch, const mt_nn_ws_plan *plan) {
    mt_status st = MT_OK;
    ws_t *ws = calloc(1, sizeof *ws);
    if (!ws) MT_THROW(MT_ERR_NOMEM, "out of memory planning a workspace");
    if (max_batch <= 0) MT_THROW(MT_ERR_ARG, "workspace batch size must be positive");
    ws->net = net;
    ws->max_batch = max_batch;

    /* Plan: count every buffer's size, make one allocation, then point into it. */
    size_t B = (size_t)max_batch, total = 0, widest = net->in_size, scratch = 0, dcol = 0, stats = 0, ints = 0;
    for (int l = 0; l < net->n_layers; l++) {
        const mt_nn_layer *L = &net->layers[l];
        if (!relu_in_place(net, plan, l)) total += 2 * B * layer_out_size(L); /* act and ract */
        if (layer_out_size(L) > widest) widest = layer_out_size(L);
        if (L->kind == MT_NN_CONV3X3) {
            size_t per_sample = (size_t)L->in_c * 9 * L->out_h * L->out_w, chunk = plan->chunk_fields / per_sample;
            chunk = chunk < 1 ? 1 : chunk > B ? B : chunk;
            size_t capacity = B * per_sample < plan->keep_fields ? B * per_sample : plan->keep_fields;
            ws->conv[l].chunk = (int)chunk;
            ws->conv[l].capacity = capacity >= per_sample ? capacity : 0; /* room for one sample at least */
            total += 2 * ws->conv[l].capacity;                            /* col and rcol */
            if (B * per_sample > ws->conv[l].capacity && chunk * per_sample > scratch) scratch = chunk * per_sample;
            if (chunk * per_sample > dcol) dcol = chunk * per_sample;
        }
        if (L->kind == MT_NN_BATCHNORM) ws->bn_stats_offset[l] = stats, stats += 3 * (size_t)L->in_c;
        if (L->kind == MT_NN_MAXPOOL2) ws->pool_offset[l] = ints, ints += B * layer_out_size(L);
    }
    int n_image = net->n_image_layers;
    size_t input_cm = n_image > 0 && net->in_c > 1 ? B * net->in_size : 0;
    size_t flat = n_image > 0 ? B * layer_out_size(&net->layers[n_image - 1]) : 0;
    total += 4 * B * widest + 2 * scratch + dcol + stats + input_cm + 2 * flat;
    mt_real *p = ws->arena = malloc(total * sizeof(mt_real));
    ws->int_arena = malloc((ints ? ints : 1) * sizeof(int32_t));
    if (!ws->arena || !ws->int_arena) MT_THROW(MT_ERR_NOMEM, "out of memory planning a workspace");
    mt_real *conv_scratch = p, *conv_rscratch = p + scratch, *conv_dcol = p + 2 * scratch;
    p += 2 * scratch + dcol;
    for (int l = 0; l < net->n_layers; l++) {
        const mt_nn_layer *L = &net->layers[l];
        size_t n = B * layer_out_size(L);
        if (relu_in_place(net, plan, l)) {
            ws->act[l + 1] = ws->act[l];
            ws->ract[l + 1] = ws->ract[l];
        } else {
            ws->act[l + 1] = p, p += n;
            ws->ract[l + 1] = p, p += n;
        }
        if (L->kind != MT_NN_CONV3X3) continue;
        mt_nn_conv_work_t *cw = &ws->conv[l];
        cw->scratch = conv_scratch, cw->rscratch = conv_rscratch, cw->dcol = conv_dcol;
        if (cw->capacity > 0) {
            cw->col = p, p += cw->capacity;
            cw->rcol = p, p += cw->capacity;
        }
    }
    for (int i = 0; i < 2; i++) {
        ws->delta[i] = p, p += B * widest;
        ws->rdelta[i] = p, p += B * widest;
    }
    ws->input_cm = input_cm ? p : NULL, p += input_cm;
    ws->flat = flat ? p : NULL, p += flat;
    ws->rflat = flat ? p : NULL, p += flat;
    ws->bn_stats = p;
    ws->pool_argmax = ws->int_arena;
    *out = ws;
    return MT_OK;
fail:
    MT_(mt_nn_ws_free)(ws);
    return st;
}

void MT_(mt_nn_ws_free)(ws_t *ws) {
    if (!ws) return;
    free(ws->arena);
    free(ws->int_arena);
    free(ws);
}

void MT_(mt_nn_init_params)(const mt_nn_net *net, uint64_t seed, mt_real *params) {
    memset(params, 0, net->n_params * sizeof *params);
    for (int t = 0; t < net->n_tensors; t++) {
        const mt_nn_tensor *T = &net->tensors[t];
        const mt_nn_layer *L = &net->layers[T->layer];
        int is_weight = strcmp(T->name + strlen(L->name) + 1, "weight") == 0;
        if (L->kind == MT_NN_BATCHNORM && T->offset == L->param_offset) {
            for (size_t i = 0; i < T->count; i++) params[T->offset + i] = 1; /* scale */
        } else if (is_weight) {
            size_t fan_in = T->count / (size_t)T->dims[0];
            /* He et al. 2015 for ReLU networks; an embedding table N(0, 1), as PyTorch's */
            double std = L->kind == MT_NN_EMBED ? 1.0 : sqrt(2.0 / (double)fan_in);
            mt_rng rng;
            mt_rng_init(&rng, seed, 0, (uint32_t)t, MT_RNG_STREAM_INIT);
            for (size_t i = 0; i < T->count; i++) params[T->offset + i] = (mt_real)(std * mt_rng_normal(&rng));
        }
    }
}

/* (C,B,S) → (B,C,S) */
static void to_batch_major(mt_real *dst, const mt_real *src, int B, int C, size_t S) {
    for (int c = 0; c < C; c++)
        for (int n = 0; n < B; n++)
            memcpy(dst + ((size_t)n * C + c) * S, src + ((size_t)c * B + n) * S, S * sizeof *dst);
}

/* (B,C,S) → (C,B,S) */
static void to_channel_major(mt_real *dst, const mt_real *src, int B, int C, size_t S) {
    for (int n = 0; n < B; n++)
        for (int c = 0; c < C; c++)
            memcpy(dst + ((size_t)c * B + n) * S, src + ((size_t)n * C + c) * S, S * sizeof *dst);
}

/* Layer l's input and its R-derivative: the batch-major copy for the first feature layer. */
static const mt_real *layer_input(const ws_t *ws, int l) {
    return l > 0 && l == ws->net->n_image_layers ? ws->flat : ws->act[l];
}
static const mt_real *layer_rinput(const ws_t *ws, int l) {
    return l > 0 && l == ws->net->n_image_layers ? ws->rflat : ws->ract[l];
}

/* The network's output (B, out_size) */
static const mt_real *net_output(const ws_t *ws) { return layer_input(ws, ws->net->n_layers); }
static const mt_real *net_routput(const ws_t *ws) { return layer_rinput(ws, ws->net->n_layers); }

/* Batch norm's entry stride within a channel, and between channels (nn_tmpl.h). */
static void bn_strides(const mt_nn_layer *L, int l, int n_image, int B, int *M, size_t *cs, size_t *ms) {
    int S = L->in_h * L->in_w;
    *M = B * S;
    if (l < n_image)
        *cs = (size_t)B * S, *ms = 1; /* (C, B·S) */
    else
        *cs = 1, *ms = (size_t)L->in_c; /* (B, C), S = 1 */
}

/* Forward pass; with dir, the R-forward pass too, layer by layer. */
static void forward(ws_t *ws, const mt_real *params, const batch_t *batch, const mt_real *dir) {
    const mt_nn_net *net = ws->net;
    int B = batch->n, n_image = net->n_image_layers;
    ws->act[0] = (mt_real *)batch->x; /* read only */
    if (ws->input_cm && B > 1) {
        to_channel_major(ws->input_cm, batch->x, B, net->in_c, (size_t)net->in_h * net->in_w);
        ws->act[0] = ws->input_cm;
    }
    ws->ract[0] = NULL;
    for (int l = 0; l < net->n_layers; l++) {
        const mt_nn_layer *L = &net->layers[l];
        const mt_real *x = layer_input(ws, l), *rx = dir ? layer_rinput(ws, l) : NULL;
        mt_real *y = ws->act[l + 1], *ry = ws->ract[l + 1];
        const mt_real *W = params + L->param_offset, *b = W + L->weight_count;
        const mt_real *U = dir ? dir + L->param_offset : NULL, *c = U ? U + L->weight_count : NULL;
        size_t n_out = (size_t)B * layer_out_size(L);
        switch (L->kind) {
        case MT_NN_LINEAR: {
            int I = (int)layer_in_size(L), O = L->out_c;
            MT_(mt_nn_linear_forward)(y, x, W, b, B, I, O);
            if (dir) MT_(mt_nn_linear_rforward)(ry, x, rx, W, U, c, B, I, O);
            break;
        }
        case MT_NN_CONV3X3:
            MT_(mt_nn_conv_forward)(y, &ws->conv[l], x, W, b, B, L->in_c, L->in_h, L->in_w, L->out_c, L->stride);
            if (dir) MT_(mt_nn_conv_rforward)
            (ry, &ws->conv[l], x, rx, W, U, c, B, L->in_c, L->in_h, L->in_w, L->out_c, L->stride);
            break;
        case MT_NN_BATCHNORM: {
            mt_real *stats = ws->bn_stats + ws->bn_stats_offset[l];
            int M;
            size_t cs, ms;
            bn_strides(L, l, n_image, B, &M, &cs, &ms);
            MT_(mt_nn_bn_forward)(y, stats, x, W, b, L->in_c, M, cs, ms);
            if (dir) MT_(mt_nn_bn_rforward)(ry, stats, x, rx, W, U, c, L->in_c, M, cs, ms);
            break;
        }
        case MT_NN_RELU:
            MT_(mt_nn_relu_forward)(y, x, n_out);
            if (dir) {
                if (rx)
                    MT_(mt_nn_relu_backward)(ry, rx, y, n_out);
                else
                    memset(ry, 0, n_out * sizeof *ry);
            }
            break;
        case MT_NN_MAXPOOL2: {
            int32_t *argmax = ws->pool_argmax + ws->pool_offset[l];
            MT_(mt_nn_maxpool_forward)(y, argmax, x, B, L->in_c, L->in_h, L->in_w);
            if (dir) {
                if (rx)
                    MT_(mt_nn_maxpool_gather)(ry, rx, argmax, n_out);
                else
                    memset(ry, 0, n_out * sizeof *ry);
            }
            break;
        }
        case MT_NN_EMBED:
            MT_(mt_nn_embed_forward)(y, x, W, B, L->in_c, L->out_c);
            if (dir) MT_(mt_nn_embed_forward)(ry, x, U, B, L->in_c, L->out_c);
            break;
        case MT_NN_AVGPOOL:
            MT_(mt_nn_avgpool_forward)(y, x, B, L->in_c, L->in_h * L->in_w);
            if (dir) {
                if (rx)
                    MT_(mt_nn_avgpool_forward)(ry, rx, B, L->in_c, L->in_h * L->in_w);
                else
                    memset(ry, 0, n_out * sizeof *ry);
            }
            break;
        }
        if (l + 1 == n_image) { /* leaving the image layers */
            size_t S = (size_t)L->out_h * L->out_w;
            to_batch_major(ws->flat, y, B, L->out_c, S);
            if (dir) to_batch_major(ws->rflat, ry, B, L->out_c, S);
        }
    }
}

static double loss_value(const ws_t *ws, const batch_t *batch) {
    const mt_nn_net *net = ws->net;
    const mt_real *out = net_output(ws);
    if (net->loss == MT_NN_LOSS_MSE) return MT_(mt_nn_mse_forward)(out, batch->y, batch->n, (int)net->out_size);
    return MT_(mt_nn_xent_forward)(out, batch->labels, batch->n, (int)net->out_size);
}

/* Whether layer l's bias feeds batch norm directly. Batch norm subtracts its batch's mean, so
 * the bias changes nothing downstream: its gradient is exactly zero (over a channel, batch
 * norm's dx sums to g·(Σdy − M·mean(dy) − mean(dy·x̂)·Σx̂) = 0), and so is its R-derivative.
 * Summing dy would only add rounding noise, which Adam would turn into full steps. */
static int bias_cancels(const mt_nn_net *net, int l) {
    mt_nn_layer_kind k = net->layers[l].kind;
    return (k == MT_NN_CONV3X3 || k == MT_NN_LINEAR) && l + 1 < net->n_layers &&
           net->layers[l + 1].kind == MT_NN_BATCHNORM;
}

/* Backward pass into grad (NULL: none, only the deltas); with dir, the R-backward pass into hv. */
static void backward(ws_t *ws, const mt_real *params, const batch_t *batch, const mt_real *dir, mt_real *grad,
                     mt_real *hv) {
    const mt_nn_net *net = ws->net;
    int B = batch->n, O = (int)net->out_size, cur = 0, n_image = net->n_image_layers;
    const mt_real *out = net_output(ws);
    if (net->loss == MT_NN_LOSS_MSE) {
        MT_(mt_nn_mse_backward)(ws->delta[0], out, batch->y, B, O);
        if (dir) MT_(mt_nn_mse_rbackward)(ws->rdelta[0], net_routput(ws), B, O);
    } else {
        MT_(mt_nn_xent_backward)(ws->delta[0], out, batch->labels, B, O);
        if (dir) MT_(mt_nn_xent_rbackward)(ws->rdelta[0], out, net_routput(ws), B, O);
    }
    for (int l = net->n_layers - 1; l >= 0; l--) {
        const mt_nn_layer *L = &net->layers[l];
        if (l + 1 == n_image) { /* entering the image layers: gradients to channel-major */
            size_t S = (size_t)L->out_h * L->out_w;
            to_channel_major(ws->delta[1 - cur], ws->delta[cur], B, L->out_c, S);
            if (dir) to_channel_major(ws->rdelta[1 - cur], ws->rdelta[cur], B, L->out_c, S);
            cur = 1 - cur;
        }
        const mt_real *x = layer_input(ws, l), *rx = dir ? layer_rinput(ws, l) : NULL, *y = ws->act[l + 1];
        const mt_real *dy = ws->delta[cur], *rdy = ws->rdelta[cur];
        mt_real *dx = l > 0 ? ws->delta[1 - cur] : NULL;
        mt_real *rdx = l > 0 && dir ? ws->rdelta[1 - cur] : NULL;
        const mt_real *W = params + L->param_offset;
        const mt_real *U = dir ? dir + L->param_offset : NULL;
        mt_real *dW = grad ? grad + L->param_offset : NULL, *db = dW ? dW + L->weight_count : NULL;
        mt_real *rdW = hv ? hv + L->param_offset : NULL, *rdb = rdW ? rdW + L->weight_count : NULL;
        if (bias_cancels(net, l)) db = rdb = NULL; /* exactly zero, as grad and hv were set */
        size_t n_in = (size_t)B * layer_in_size(L), n_out = (size_t)B * layer_out_size(L);
        switch (L->kind) {
        case MT_NN_LINEAR: {
            int I = (int)layer_in_size(L), Od = L->out_c;
            if (dir) MT_(mt_nn_linear_rbackward)(rdx, rdW, rdb, dy, rdy, x, rx, W, U, B, I, Od);
            MT_(mt_nn_linear_backward)(dx, dW, db, dy, x, W, B, I, Od);
            break;
        }
        case MT_NN_CONV3X3:
            if (dir) MT_(mt_nn_conv_rbackward)
            (rdx, rdW, rdb, dy, rdy, x, rx, W, U, &ws->conv[l], B, L->in_c, L->in_h, L->in_w, L->out_c, L->stride);
            MT_(mt_nn_conv_backward)
            (dx, dW, db, dy, x, W, &ws->conv[l], B, L->in_c, L->in_h, L->in_w, L->out_c, L->stride);
            break;
        case MT_NN_BATCHNORM: {
            const mt_real *stats = ws->bn_stats + ws->bn_stats_offset[l];
            int M;
            size_t cs, ms;
            bn_strides(L, l, n_image, B, &M, &cs, &ms);
            if (dir) MT_(mt_nn_bn_rbackward)(rdx, rdW, rdb, dy, rdy, x, rx, stats, W, U, L->in_c, M, cs, ms);
            MT_(mt_nn_bn_backward)(dx, dW, db, dy, x, stats, W, L->in_c, M, cs, ms);
            break;
        }
        case MT_NN_RELU:
            if (dx) MT_(mt_nn_relu_backward)(dx, dy, y, n_out);
            if (rdx) MT_(mt_nn_relu_backward)(rdx, rdy, y, n_out);
            break;
        case MT_NN_MAXPOOL2: {
            const int32_t *argmax = ws->pool_argmax + ws->pool_offset[l];
            if (dx) MT_(mt_nn_maxpool_backward)(dx, dy, argmax, n_in, n_out);
            if (rdx) MT_(mt_nn_maxpool_backward)(rdx, rdy, argmax, n_in, n_out);
            break;
        }
        case MT_NN_EMBED:
            if (rdW) MT_(mt_nn_embed_backward)(rdW, rdy, x, B, L->in_c, L->out_c);
            if (dW) MT_(mt_nn_embed_backward)(dW, dy, x, B, L->in_c, L->out_c);
            break;
        case MT_NN_AVGPOOL:
            if (dx) MT_(mt_nn_avgpool_backward)(dx, dy, B, L->in_c, L->in_h * L->in_w);
            if (rdx) MT_(mt_nn_avgpool_backward)(rdx, rdy, B, L->in_c, L->in_h * L->in_w);
            break;
        }
        cur = 1 - cur;
    }
}

double MT_(mt_nn_loss)(ws_t *ws, const mt_real *params, const batch_t *batch) {
    forward(ws, params, batch, NULL);
    return loss_value(ws, batch);
}

double MT_(mt_nn_grad)(ws_t *ws, const mt_real *params, const batch_t *batch, mt_real *grad) {
    forward(ws, params, batch, NULL);
    memset(grad, 0, ws->net->n_params * sizeof *grad);
    backward(ws, params, batch, NULL, grad, NULL);
    return loss_value(ws, batch);
}

double MT_(mt_nn_hvp)(ws_t *ws, const mt_real *params, const batch_t *batch, const mt_real *dir, mt_real *grad,
                      mt_real *hv) {
    forward(ws, params, batch, dir);
    memset(hv, 0, ws->net->n_params * sizeof *hv);
    if (grad) memset(grad, 0, ws->net->n_params * sizeof *grad);
    backward(ws, params, batch, dir, grad, hv);
    return loss_value(ws, batch);
}

const mt_real *MT_(mt_nn_forward)(ws_t *ws, const mt_real *params, const batch_t *batch) {
    forward(ws, params, batch, NULL);
    return net_output(ws);
}

int MT_(mt_nn_argmax)(const mt_real *z, int n) {
    int best = 0;
    for (int j = 1; j < n; j++)
        if (z[j] > z[best]) best = j;
    return best;
}

int MT_(mt_nn_count_correct)(const ws_t *ws, const batch_t *batch) {
    const mt_real *out = net_output(ws);
    int O = (int)ws->net->out_size, correct = 0;
    for (int n = 0; n < batch->n; n++) correct += MT_(mt_nn_argmax)(out + (size_t)n * O, O) == batch->labels[n];
    return correct;
}
