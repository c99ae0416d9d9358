/* The network spec parser and the parameter layout. Precision-independent. */
#include "metatrain/nn.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Splits `item` into at most `max` whitespace-separated words, in place. */
static int split_words(char *item, char **words, int max) {
    int n = 0;
    for (char *p = strtok(item, " \t\r\n"); p && n < max; p = strtok(NULL, " \t\r\n")) words[n++] = p;
    return n;
}

/* A base-10 integer in [1, limit]. */
static int parse_bounded(const char *text, long limit, int *value) {
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v <= 0 || v > limit) return 0;
    *value = (int)v;
    return 1;
}

static int parse_positive(const char *text, int *value) { return parse_bounded(text, 1 << 20, value); }

static void add_tensor(mt_nn_net *net, int layer, const char *role, size_t offset, size_t count, int rank,
                       const int *dims) {
    mt_nn_tensor *t = &net->tensors[net->n_tensors++];
    char name[sizeof t->name];
    snprintf(name, sizeof name, "%s/%s", net->layers[layer].name, role);
    memcpy(t->name, name, sizeof name);
    t->offset = offset;
    t->count = count;
    t->rank = rank;
    for (int i = 0; i < 4; i++) t->dims[i] = i < rank ? dims[i] : 0;
    t->layer = layer;
}

/* Appends a layer reading the current shape; fills its name from a per-kind counter. */
static mt_nn_layer *add_layer(mt_nn_net *net, mt_nn_layer_kind kind, const char *base, int *counter, int c, int h,
                              int w, int features) {
    mt_nn_layer *L = &net->layers[net->n_layers++];
    memset(L, 0, sizeof *L);
    L->kind = kind;
    if (!features && net->n_image_layers == net->n_layers - 1) net->n_image_layers = net->n_layers;
    L->in_c = c;
    L->in_h = h;
    L->in_w = w;
    L->out_c = c;
    L->out_h = h;
    L->out_w = w;
    L->first_tensor = -1;
    L->aux = -1;
    L->param_offset = net->n_params;
    snprintf(L->name, sizeof L->name, "%s%d", base, ++*counter);
    return L;
}

mt_status mt_nn_parse(mt_nn_net *net, const char *spec, const char *what) {
    char copy[sizeof net->spec];
    memset(net, 0, sizeof *net);
    if (strlen(spec) >= sizeof copy)
        return MT_RAISE(MT_ERR_CONFIG, "%s: spec longer than %zu characters", what, sizeof copy - 1);
    snprintf(net->spec, sizeof net->spec, "%s", spec);
    snprintf(copy, sizeof copy, "%s", spec);

    int c = 0, h = 0, w = 0, have_input = 0, have_loss = 0, item_no = 0;
    int features = 0; /* the shape holds features (input D, or after linear or flatten), not an image */
    int n_linear = 0, n_conv = 0, n_bn = 0, n_relu = 0, n_pool = 0, n_embed = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *words[4];
        char original[128];
        snprintf(original, sizeof original, "%s", item);
        int nw = split_words(item, words, 4);
        item_no++;
        int layers_before = net->n_layers;
        if (nw == 0) return MT_RAISE(MT_ERR_CONFIG, "%s: item %d is empty", what, item_no);
        const char *op = words[0];
        if (have_loss) return MT_RAISE(MT_ERR_CONFIG, "%s: '%s' after the loss; the loss must come last", what, op);
        if (!have_input && strcmp(op, "input") != 0)
            return MT_RAISE(MT_ERR_CONFIG, "%s: must start with 'input D' or 'input CxHxW'", what);
        if (net->n_layers >= MT_NN_MAX_LAYERS - 1 || net->n_tensors >= MT_NN_MAX_TENSORS - 2)
            return MT_RAISE(MT_ERR_CONFIG, "%s: more than %d layers", what, MT_NN_MAX_LAYERS - 1);

        if (net->in_tokens && net->n_layers == 0 && strcmp(op, "embed") != 0 && strcmp(op, "input") != 0)
            return MT_RAISE(MT_ERR_CONFIG, "%s: 'input tokens T' must be followed by 'embed V D', not '%s'", what, op);
        if (strcmp(op, "input") == 0 && nw == 3 && strcmp(words[1], "tokens") == 0) {
            int tokens;
            if (have_input || !parse_positive(words[2], &tokens))
                return MT_RAISE(MT_ERR_CONFIG, "%s: 'input tokens T' takes a positive bag length T, once", what);
            c = tokens, h = 1, w = 1, features = 1;
            net->in_c = c, net->in_h = 1, net->in_w = 1;
            net->in_size = (size_t)c;
            net->in_tokens = 1;
            have_input = 1;
        } else if (strcmp(op, "embed") == 0) {
            int rows, dim;
            if (!net->in_tokens || net->n_layers != 0)
                return MT_RAISE(MT_ERR_CONFIG, "%s: 'embed' must come right after 'input tokens T'", what);
            if (nw != 3 || !parse_bounded(words[1], MT_NN_MAX_TABLE_ROWS, &rows) || !parse_positive(words[2], &dim))
                return MT_RAISE(MT_ERR_CONFIG, "%s: 'embed' takes a table size V of at most %d and a width D: '%s'",
                                what, MT_NN_MAX_TABLE_ROWS, original);
            mt_nn_layer *L = add_layer(net, MT_NN_EMBED, "embed", &n_embed, c, 1, 1, 1);
            L->table_rows = rows;
            L->out_c = dim;
            L->weight_count = L->param_count = (size_t)rows * dim;
            L->first_tensor = net->n_tensors;
            int wd[2] = {rows, dim};
            add_tensor(net, 0, "weight", L->param_offset, L->weight_count, 2, wd);
            c = dim;
        } else if (strcmp(op, "input") == 0) {
            int dims[4], nd = 0; /* room for a fourth, so that CxHxWxN is rejected, not truncated */
            if (have_input || nw != 2)
                return MT_RAISE(MT_ERR_CONFIG, "%s: 'input' takes one shape, D, CxHxW or tokens T, once", what);
            for (char *p = strtok(words[1], "x"); p && nd < 4; p = strtok(NULL, "x"))
                if (!parse_positive(p, &dims[nd++]))
                    return MT_RAISE(MT_ERR_CONFIG, "%s: bad input shape '%s'", what, original);
            if (nd == 1)
                c = dims[0], h = 1, w = 1, features = 1;
            else if (nd == 3)
                c = dims[0], h = dims[1], w = dims[2];
            else
                return MT_RAISE(MT_ERR_CONFIG, "%s: input shape must be D or CxHxW", what);
            net->in_c = c, net->in_h = h, net->in_w = w;
            net->in_size = (size_t)c * h * w;
            have_input = 1;
        } else if (strcmp(op, "linear") == 0) {
            int out;
            if (nw != 2 || !parse_positive(words[1], &out))
                return MT_RAISE(MT_ERR_CONFIG, "%s: 'linear' takes a positive output size: '%s'", what, original);
            int in = c * h * w; /* linear flattens its input */
            mt_nn_layer *L =
                add_layer(net, MT_NN_LINEAR, "linear", &n_linear, in, 1, 1, 1); /* reads its input flattened */
            L->in_c = c, L->in_h = h, L->in_w = w;
            L->out_c = out, L->out_h = 1, L->out_w = 1;
            L->weight_count = (size_t)out * in;
            L->param_count = L->weight_count + out;
            L->first_tensor = net->n_tensors;
            int wd[2] = {out, in}, bd[1] = {out};
            add_tensor(net, net->n_layers - 1, "weight", L->param_offset, L->weight_count, 2, wd);
            add_tensor(net, net->n_layers - 1, "bias", L->param_offset + L->weight_count, out, 1, bd);
            c = out, h = 1, w = 1, features = 1;
        } else if (strcmp(op, "conv") == 0) {
            int out, stride = 1;
            if (nw < 2 || nw > 3 || !parse_positive(words[1], &out))
                return MT_RAISE(MT_ERR_CONFIG, "%s: 'conv' takes a filter count and s1 or s2: '%s'", what, original);
            if (nw == 3) {
                if (strcmp(words[2], "s1") == 0)
                    stride = 1;
                else if (strcmp(words[2], "s2") == 0)
                    stride = 2;
                else
                    return MT_RAISE(MT_ERR_CONFIG, "%s: conv stride must be s1 or s2: '%s'", what, original);
            }
            if (features) return MT_RAISE(MT_ERR_CONFIG, "%s: 'conv' needs an image input, not features", what);
            mt_nn_layer *L = add_layer(net, MT_NN_CONV3X3, "conv", &n_conv, c, h, w, features);
            L->stride = stride;
            L->out_c = out, L->out_h = (h - 1) / stride + 1, L->out_w = (w - 1) / stride + 1;
            L->weight_count = (size_t)out * c * 9;
            L->param_count = L->weight_count + out;
            L->first_tensor = net->n_tensors;
            int wd[4] = {out, c, 3, 3}, bd[1] = {out};
            add_tensor(net, net->n_layers - 1, "weight", L->param_offset, L->weight_count, 4, wd);
            add_tensor(net, net->n_layers - 1, "bias", L->param_offset + L->weight_count, out, 1, bd);
            c = L->out_c, h = L->out_h, w = L->out_w;
        } else if (strcmp(op, "bn") == 0 && nw == 1) {
            mt_nn_layer *L = add_layer(net, MT_NN_BATCHNORM, "bn", &n_bn, c, h, w, features);
            L->weight_count = (size_t)c;
            L->param_count = 2 * (size_t)c;
            L->first_tensor = net->n_tensors;
            L->aux = net->n_batchnorm++;
            int d[1] = {c};
            add_tensor(net, net->n_layers - 1, "scale", L->param_offset, c, 1, d);
            add_tensor(net, net->n_layers - 1, "shift", L->param_offset + c, c, 1, d);
        } else if (strcmp(op, "relu") == 0 && nw == 1) {
            add_layer(net, MT_NN_RELU, "relu", &n_relu, c, h, w, features);
        } else if (strcmp(op, "maxpool") == 0 && nw == 1) {
            if (h < 2 || w < 2) return MT_RAISE(MT_ERR_CONFIG, "%s: 'maxpool' needs an input of at least 2x2", what);
            mt_nn_layer *L = add_layer(net, MT_NN_MAXPOOL2, "maxpool", &n_pool, c, h, w, features);
            L->out_h = h / 2, L->out_w = w / 2;
            L->aux = net->n_maxpool++;
            h /= 2, w /= 2;
        } else if (strcmp(op, "avgpool") == 0 && nw == 1) {
            mt_nn_layer *L = add_layer(net, MT_NN_AVGPOOL, "avgpool", &n_pool, c, h, w, features);
            L->out_h = 1, L->out_w = 1;
            h = 1, w = 1;
        } else if (strcmp(op, "flatten") == 0 && nw == 1) {
            c = c * h * w, h = 1, w = 1, features = 1; /* a view: no layer at run time */
        } else if ((strcmp(op, "mse") == 0 || strcmp(op, "xent") == 0) && nw == 1) {
            net->loss = op[0] == 'm' ? MT_NN_LOSS_MSE : MT_NN_LOSS_XENT;
            have_loss = 1;
        } else {
            return MT_RAISE(MT_ERR_CONFIG,
                            "%s: unknown item '%s' (expected input, embed, linear, conv, bn, relu, maxpool, "
                            "avgpool, flatten, mse or xent)",
                            what, original);
        }
        /* Shapes are ints and linear and flatten multiply them out: a shape past INT_MAX values
         * would overflow there, and no workspace could hold it anyway. */
        if ((size_t)c * h * w > INT_MAX)
            return MT_RAISE(MT_ERR_CONFIG, "%s: '%s' gives a shape of %zu values per sample, more than %d", what,
                            original, (size_t)c * h * w, INT_MAX);
        if (net->n_layers > layers_before) net->n_params += net->layers[net->n_layers - 1].param_count;
    }
    if (!have_input) return MT_RAISE(MT_ERR_CONFIG, "%s: empty spec", what);
    if (!have_loss) return MT_RAISE(MT_ERR_CONFIG, "%s: must end with a loss, mse or xent", what);
    if (net->in_tokens && (net->n_layers == 0 || net->layers[0].kind != MT_NN_EMBED))
        return MT_RAISE(MT_ERR_CONFIG, "%s: 'input tokens T' must be followed by 'embed V D'", what);
    if (net->n_layers == 0 || net->n_params == 0)
        return MT_RAISE(MT_ERR_CONFIG, "%s: the network has no parameters", what);
    net->out_size = (size_t)c * h * w;
    if (net->loss == MT_NN_LOSS_XENT && (net->out_size < 2 || net->out_size > 4096))
        return MT_RAISE(MT_ERR_CONFIG, "%s: xent needs between 2 and 4096 outputs, not %zu", what, net->out_size);
    for (int l = 0; l < net->n_layers; l++)
        if (net->layers[l].param_count) net->n_param_layers++;
    return MT_OK;
}

_Thread_local double mt_nn_gemm_flops;

void mt_nn_with_table_rows(const mt_nn_net *net, int rows, mt_nn_net *out) {
    *out = *net;
    if (!net->in_tokens) return;
    mt_nn_layer *E = &out->layers[0];
    size_t shrink = ((size_t)E->table_rows - (size_t)rows) * (size_t)E->out_c;
    E->table_rows = rows;
    E->weight_count = E->param_count = (size_t)rows * E->out_c;
    for (int l = 1; l < out->n_layers; l++) out->layers[l].param_offset -= shrink;
    for (int t = 0; t < out->n_tensors; t++) {
        mt_nn_tensor *T = &out->tensors[t];
        if (T->layer == 0) {
            T->count = E->weight_count;
            T->dims[0] = rows;
        } else {
            T->offset -= shrink;
        }
    }
    out->n_params -= shrink;
}

int mt_nn_find_tensor(const mt_nn_net *net, const char *name) {
    for (int i = 0; i < net->n_tensors; i++)
        if (strcmp(net->tensors[i].name, name) == 0) return i;
    return -1;
}

void mt_nn_scale_head(const mt_nn_net *net, double scale, float *params) {
    for (int l = net->n_layers - 1; l >= 0; l--) {
        const mt_nn_layer *L = &net->layers[l];
        if (!L->param_count) continue;
        for (size_t i = L->param_offset; i < L->param_offset + L->weight_count; i++)
            params[i] = (float)(params[i] * scale);
        return;
    }
}

void mt_nn_head_range(const mt_nn_net *net, size_t *begin, size_t *end) {
    for (int l = net->n_layers - 1; l >= 0; l--)
        if (net->layers[l].param_count) {
            *begin = net->layers[l].param_offset;
            *end = *begin + net->layers[l].param_count;
            return;
        }
    *begin = *end = 0;
}
