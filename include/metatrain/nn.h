/* Neural-network engine: exact gradients and Hessian-vector products.
 *
 * A network is a chain of layers read from a text spec (see mt_nn_parse). Its parameters live in
 * one flat buffer; layer l's tensors are views at fixed offsets (mt_nn_tensor). Gradients, HVP
 * directions and optimizer state use the same layout.
 *
 * Every layer has four routines: forward, backward, R-forward and R-backward (Pearlmutter 1994).
 * The R-routines carry the directional derivative along a parameter direction u, so one HVP costs
 * a small constant times one gradient.
 *
 * The numeric code exists twice, in float (the training path, names as written) and in double
 * (verification, names ending in _f64): nn_tmpl.h is included once per precision. Everything
 * here is local to a rank: nothing is collective. */
#ifndef METATRAIN_NN_H
#define METATRAIN_NN_H

#include <stddef.h>
#include <stdint.h>

#include "metatrain/error.h"

#define MT_NN_MAX_LAYERS 64
#define MT_NN_MAX_TENSORS 128
#define MT_NN_NAME_LEN 32
#define MT_NN_BN_EPS 1e-5
/* The default convolution budget, in entries of receptive fields (K rows × columns): a layer
 * keeps up to 4 Mi entries (16 MB of floats: every layer of the 5-way workload's 75-image query
 * batch, and of the 20-way workload's support batch), and walks its batch in chunks of about
 * 256 Ki entries (1 MB; OpenBLAS runs these products 15% faster than whole-batch ones here). */
#define MT_NN_KEEP_FIELDS ((size_t)1 << 22)
#define MT_NN_CHUNK_FIELDS ((size_t)1 << 18)

/* How a workspace trades memory for recomputation (mt_nn_ws_create_planned). */
typedef struct {
    size_t keep_fields;   /* a conv layer keeps up to this many entries of fields for backward, */
    size_t chunk_fields;  /* and walks its batch in chunks of about this many (one sample at least) */
    int keep_relu_inputs; /* 0: a ReLU overwrites its input (no layer's backward pass reads its
                             own input's producer's output); 1: it writes a buffer of its own,
                             so that the pre-activations stay readable (the finite-difference
                             tests find kinks there) */
} mt_nn_ws_plan;
#define MT_NN_WS_PLAN_DEFAULT ((mt_nn_ws_plan){MT_NN_KEEP_FIELDS, MT_NN_CHUNK_FIELDS, 0})

typedef enum {
    MT_NN_LINEAR, /* y = x Wᵀ + b */
    MT_NN_RELU,
    MT_NN_CONV3X3,   /* 3x3 kernel, padding 1, stride 1 or 2 */
    MT_NN_BATCHNORM, /* batch statistics always, learnable scale and shift */
    MT_NN_MAXPOOL2,  /* 2x2 window, stride 2 */
    MT_NN_AVGPOOL,   /* global average pool over H x W */
    MT_NN_EMBED      /* mean of the table rows a bag of token ids names (layer 0 only) */
} mt_nn_layer_kind;

/* The most rows an embedding table may have: token ids travel in a batch's x as floats, exact
 * integers up to 2^24. */
#define MT_NN_MAX_TABLE_ROWS (1 << 24)

typedef enum { MT_NN_LOSS_MSE, MT_NN_LOSS_XENT } mt_nn_loss_kind;

typedef struct {
    mt_nn_layer_kind kind;
    int in_c, in_h, in_w;      /* per-sample input shape (C,H,W); features are (D,1,1) */
    int out_c, out_h, out_w;   /* per-sample output shape */
    int stride;                /* conv only */
    int table_rows;            /* embed only: V, the table is (V, out_c) */
    size_t param_offset;       /* into the flat buffer */
    size_t weight_count;       /* weight (or BN scale) entries; the bias (or shift) follows */
    size_t param_count;        /* weight_count + bias entries; 0 for layers without parameters */
    int first_tensor;          /* index into mt_nn_net.tensors of the weight, -1 without */
    int aux;                   /* index of this layer's BN/maxpool slot in a workspace, else -1 */
    char name[MT_NN_NAME_LEN]; /* "conv1", "bn2", "fc3", "relu1" */
} mt_nn_layer;

typedef struct {
    char name[2 * MT_NN_NAME_LEN]; /* "<layer>/<role>": "conv1/weight", "bn1/scale" */
    size_t offset, count;
    int rank, dims[4];
    int layer;
} mt_nn_tensor;

/* Architecture and parameter layout; holds no numbers. */
typedef struct {
    int n_layers;
    mt_nn_layer layers[MT_NN_MAX_LAYERS];
    int n_tensors;
    mt_nn_tensor tensors[MT_NN_MAX_TENSORS];
    mt_nn_loss_kind loss;
    int in_c, in_h, in_w;
    int in_tokens;            /* 1: each sample is in_c token ids, id −1 padding, held in x as exact
                                 floats; layer 0 is then the embedding (MT_NN_EMBED) */
    size_t in_size, out_size; /* per sample */
    size_t n_params;
    int n_batchnorm, n_maxpool;
    int n_param_layers; /* layers that hold parameters */
    int n_image_layers; /* layers 0 … n−1 take images, held channel-major (C,B,H,W) so that a
                           convolution is one GEMM; the layers after take features (B,D) */
    char spec[512];
} mt_nn_net;

/* Parses a spec such as
 *   "input 1, linear 40, relu, linear 40, relu, linear 1, mse"
 *   "input 1x28x28, conv 64 s2, bn, relu, ..., flatten, linear 5, xent"
 *   "input tokens 46, embed 131072 64, relu, linear 64, relu, linear 5, xent"
 * Items: input D | input CxHxW | input tokens T; embed V D (right after input tokens, and only
 * there); linear N; relu; conv N [s1|s2]; bn; maxpool; avgpool; flatten; and a final loss, mse
 * or xent. `what` names the source in messages ("model.spec"). */
mt_status mt_nn_parse(mt_nn_net *net, const char *spec, const char *what);

/* The same network with an embedding table of `rows` rows instead of V: the layout a task uses
 * for the rows it touches (src/meta/task_rows.c). The table is layer 0's weight at offset 0, so
 * every later tensor moves by (V − rows)·D. */
void mt_nn_with_table_rows(const mt_nn_net *net, int rows, mt_nn_net *out);

/* Index of the tensor called `name`, or -1. */
int mt_nn_find_tensor(const mt_nn_net *net, const char *name);

/* Floating-point operations done by the layers' matrix products so far (2·M·N·K each), for the
 * benchmarks' GFLOP/s. Per thread, so that threads driving their own models never race on it. */
extern _Thread_local double mt_nn_gemm_flops;

/* 1 (the default): where the CPU has AVX-512, stride-2 convolutions on planes at most 16 wide
 * build and reduce their fields with intrinsics (src/nn/conv.c); 0: the portable loops run
 * everywhere, so that tests cover both. Process-wide; set it before any work, not during. */
void mt_nn_use_intrinsics(int on);

/* Multiplies the head's weights (not its bias) in params (float) by scale: a smaller start for
 * the layer a few-shot task adapts most. Local. */
void mt_nn_scale_head(const mt_nn_net *net, double scale, float *params);

/* Elementwise mask of the parameters of the last layer holding parameters (the "head"). */
void mt_nn_head_range(const mt_nn_net *net, size_t *begin, size_t *end);

#define MT_TEMPLATE "metatrain/nn_tmpl.h"
#include "metatrain/both_precisions.h"

#endif
