/* Per-precision part of nn.h: included with MT_REAL and MT_(name) defined. No include guard. */

/* A batch: x (n, in_size); targets y (n, out_size) for MSE, labels (n) in [0, out_size) for
 * cross-entropy. */
typedef struct {
    const MT_REAL *x;
    const MT_REAL *y;
    const int32_t *labels;
    int n;
} MT_(mt_nn_batch);

/* A convolution layer's working memory, planned by mt_nn_ws_create: the layer walks its batch in
 * chunks of `chunk` samples. col and rcol (capacity entries each) keep the receptive fields of x
 * and Rx, (K, B·P) with K = C·9 and P = Ho·Wo, from the forward passes for the backward ones;
 * for a batch whose fields are over the capacity (or with col NULL), every pass rebuilds one
 * chunk's fields in scratch and rscratch (K, chunk·P). dcol (K, chunk·P) is scratch for the
 * input gradients. */
typedef struct {
    MT_REAL *col, *rcol, *scratch, *rscratch, *dcol;
    size_t capacity;
    int chunk;
} MT_(mt_nn_conv_work);

/* Every buffer a forward, backward or HVP pass needs for batches of up to max_batch samples,
 * planned once. The passes never allocate. */
typedef struct {
    const mt_nn_net *net;
    int max_batch;
    MT_REAL *act[MT_NN_MAX_LAYERS + 1];          /* act[l+1]: layer l's output (layouts: net.c), the same
                                            buffer as act[l] for a ReLU in place; act[0] the input */
    MT_REAL *ract[MT_NN_MAX_LAYERS + 1];         /* R-forward of act; ract[0] is NULL (x ignores θ) */
    MT_REAL *delta[2], *rdelta[2];               /* ping-pong gradients w.r.t. activations */
    MT_(mt_nn_conv_work) conv[MT_NN_MAX_LAYERS]; /* per conv layer */
    MT_REAL *input_cm;                           /* the batch's x channel-major, when images have C > 1 */
    MT_REAL *flat, *rflat;                       /* the last image layer's output and R-output, batch-major */
    MT_REAL *bn_stats;                           /* per BN layer: mean, inv_std, r_shift (3 C each) */
    size_t bn_stats_offset[MT_NN_MAX_LAYERS];
    int32_t *pool_argmax; /* per max-pool layer: input index of each output */
    size_t pool_offset[MT_NN_MAX_LAYERS];
    void *arena, *int_arena;
} MT_(mt_nn_ws);

mt_status MT_(mt_nn_ws_create)(MT_(mt_nn_ws) * *ws, const mt_nn_net *net, int max_batch);
/* The same with another plan than MT_NN_WS_PLAN_DEFAULT (nn.h). Plans change memory and time,
 * never a result beyond rounding. */
mt_status MT_(mt_nn_ws_create_planned)(MT_(mt_nn_ws) * *ws, const mt_nn_net *net, int max_batch,
                                       const mt_nn_ws_plan *plan);
void MT_(mt_nn_ws_free)(MT_(mt_nn_ws) * ws);

/* He-normal weights for linear and conv, zero biases, BN scale 1 and shift 0, drawn from the
 * counter-based RNG keyed by seed: every rank builds the same parameters. */
void MT_(mt_nn_init_params)(const mt_nn_net *net, uint64_t seed, MT_REAL *params);

/* Forward pass and loss. */
double MT_(mt_nn_loss)(MT_(mt_nn_ws) * ws, const MT_REAL *params, const MT_(mt_nn_batch) * batch);

/* Loss and its gradient: grad (n_params) is overwritten. */
double MT_(mt_nn_grad)(MT_(mt_nn_ws) * ws, const MT_REAL *params, const MT_(mt_nn_batch) * batch, MT_REAL *grad);

/* Loss, gradient and Hessian-vector product H·dir, in one forward-over-reverse pass: the
 * gradient costs only its weight products. grad and hv (n_params each) are overwritten; grad
 * may be NULL when only hv is wanted (second-order MAML), which skips those products. */
double MT_(mt_nn_hvp)(MT_(mt_nn_ws) * ws, const MT_REAL *params, const MT_(mt_nn_batch) * batch, const MT_REAL *dir,
                      MT_REAL *grad, MT_REAL *hv);

/* Forward pass alone: returns the network's output (batch->n, out_size), logits for xent, inside
 * the workspace (valid until its next pass). batch->y and batch->labels are not read. */
const MT_REAL *MT_(mt_nn_forward)(MT_(mt_nn_ws) * ws, const MT_REAL *params, const MT_(mt_nn_batch) * batch);

/* Index of the largest of z[0..n), the first on ties: the predicted class, everywhere. */
int MT_(mt_nn_argmax)(const MT_REAL *z, int n);

/* Number of samples whose arg-max output equals the label (classification only). */
int MT_(mt_nn_count_correct)(const MT_(mt_nn_ws) * ws, const MT_(mt_nn_batch) * batch);

/* ---- Layer routines: outputs first, then inputs and weights, then sizes. Backward routines
 * accumulate (+=) parameter gradients and overwrite input gradients; a NULL input gradient is
 * skipped. R-forward takes NULL for an input that does not depend on θ. ---- */

/* y (B,O) = x (B,I) · Wᵀ (I,O) + b (O) */
void MT_(mt_nn_linear_forward)(MT_REAL *y, const MT_REAL *x, const MT_REAL *W, const MT_REAL *b, int B, int I, int O);
/* dx (B,I) = dy · W;  dW (O,I) += dyᵀ · x;  db (O) += Σ_B dy */
void MT_(mt_nn_linear_backward)(MT_REAL *dx, MT_REAL *dW, MT_REAL *db, const MT_REAL *dy, const MT_REAL *x,
                                const MT_REAL *W, int B, int I, int O);
/* Ry (B,O) = Rx · Wᵀ + x · Uᵀ + c, for direction (U, c) */
void MT_(mt_nn_linear_rforward)(MT_REAL *ry, const MT_REAL *x, const MT_REAL *rx, const MT_REAL *W, const MT_REAL *U,
                                const MT_REAL *c, int B, int I, int O);
/* R(dx) = R(dy)·W + dy·U;  R(dW) += R(dy)ᵀ·x + dyᵀ·Rx;  R(db) += Σ_B R(dy) */
void MT_(mt_nn_linear_rbackward)(MT_REAL *rdx, MT_REAL *rdW, MT_REAL *rdb, const MT_REAL *dy, const MT_REAL *rdy,
                                 const MT_REAL *x, const MT_REAL *rx, const MT_REAL *W, const MT_REAL *U, int B, int I,
                                 int O);

/* y = max(x, 0) elementwise over n entries; the mask is read back from y. */
void MT_(mt_nn_relu_forward)(MT_REAL *y, const MT_REAL *x, size_t n);
void MT_(mt_nn_relu_backward)(MT_REAL *dx, const MT_REAL *dy, const MT_REAL *y, size_t n);

/* Conv 3x3, padding 1, on channel-major activations: y (O,B,Ho,Wo) = W (O,C,3,3) * x (C,B,H,W)
 * + b (O), as im2col plus GEMMs, chunk by chunk of the batch (mt_nn_conv_work). The backward
 * passes take the same x (and Rx) as the forward ones, and the work the forward ones filled. */
void MT_(mt_nn_conv_forward)(MT_REAL *y, const MT_(mt_nn_conv_work) * cw, const MT_REAL *x, const MT_REAL *W,
                             const MT_REAL *b, int B, int C, int H, int Wd, int O, int stride);
void MT_(mt_nn_conv_backward)(MT_REAL *dx, MT_REAL *dW, MT_REAL *db, const MT_REAL *dy, const MT_REAL *x,
                              const MT_REAL *W, const MT_(mt_nn_conv_work) * cw, int B, int C, int H, int Wd, int O,
                              int stride);
void MT_(mt_nn_conv_rforward)(MT_REAL *ry, const MT_(mt_nn_conv_work) * cw, const MT_REAL *x, const MT_REAL *rx,
                              const MT_REAL *W, const MT_REAL *U, const MT_REAL *c, int B, int C, int H, int Wd, int O,
                              int stride);
void MT_(mt_nn_conv_rbackward)(MT_REAL *rdx, MT_REAL *rdW, MT_REAL *rdb, const MT_REAL *dy, const MT_REAL *rdy,
                               const MT_REAL *x, const MT_REAL *rx, const MT_REAL *W, const MT_REAL *U,
                               const MT_(mt_nn_conv_work) * cw, int B, int C, int H, int Wd, int O, int stride);
/* The slow, obvious convolution the fast one is tested against (same layouts). */
void MT_(mt_nn_conv_forward_reference)(MT_REAL *y, const MT_REAL *x, const MT_REAL *W, const MT_REAL *b, int B, int C,
                                       int H, int Wd, int O, int stride);

/* Batch norm per channel over its M entries: y = γ x̂ + β with batch mean and variance.
 * Channel c's entry m is at c·cs + m·ms: (cs, ms) = (M, 1) for channel-major activations
 * (C, B·S), (1, C) for features (B, C) after a linear layer.
 * stats (3C) receives mean, 1/σ and, after R-forward, s = mean(x̂ · (Rx − Rμ)/σ) = Rσ/σ. */
void MT_(mt_nn_bn_forward)(MT_REAL *y, MT_REAL *stats, const MT_REAL *x, const MT_REAL *gamma, const MT_REAL *beta,
                           int C, int M, size_t cs, size_t ms);
void MT_(mt_nn_bn_backward)(MT_REAL *dx, MT_REAL *dgamma, MT_REAL *dbeta, const MT_REAL *dy, const MT_REAL *x,
                            const MT_REAL *stats, const MT_REAL *gamma, int C, int M, size_t cs, size_t ms);
void MT_(mt_nn_bn_rforward)(MT_REAL *ry, MT_REAL *stats, const MT_REAL *x, const MT_REAL *rx, const MT_REAL *gamma,
                            const MT_REAL *rgamma, const MT_REAL *rbeta, int C, int M, size_t cs, size_t ms);
void MT_(mt_nn_bn_rbackward)(MT_REAL *rdx, MT_REAL *rdgamma, MT_REAL *rdbeta, const MT_REAL *dy, const MT_REAL *rdy,
                             const MT_REAL *x, const MT_REAL *rx, const MT_REAL *stats, const MT_REAL *gamma,
                             const MT_REAL *rgamma, int C, int M, size_t cs, size_t ms);

/* 2x2 max-pool, stride 2: y (B,C,H/2,W/2); argmax holds each output's input index. */
void MT_(mt_nn_maxpool_forward)(MT_REAL *y, int32_t *argmax, const MT_REAL *x, int B, int C, int H, int Wd);
/* Gathers through argmax: used for both Ry and the forward values. */
void MT_(mt_nn_maxpool_gather)(MT_REAL *y, const MT_REAL *x, const int32_t *argmax, size_t n_out);
/* dx = 0, then dx[argmax] += dy (n_in input entries, n_out outputs) */
void MT_(mt_nn_maxpool_backward)(MT_REAL *dx, const MT_REAL *dy, const int32_t *argmax, size_t n_in, size_t n_out);

/* Global average pool: y (B,C) = mean over S = H·W of x (B,C,S); linear, so R-passes reuse it. */
void MT_(mt_nn_avgpool_forward)(MT_REAL *y, const MT_REAL *x, int B, int C, int S);
void MT_(mt_nn_avgpool_backward)(MT_REAL *dx, const MT_REAL *dy, int B, int C, int S);

/* Embedding bag, mean-pooled: y (B,D) row n = (1/c_n) Σ_t E[id_nt] over the c_n ids of ids (B,T)
 * row n that are not −1 (zeros when there is none). ids are exact integers in floats. The
 * R-forward is the same with E replaced by the direction U: y is linear in E. */
void MT_(mt_nn_embed_forward)(MT_REAL *y, const MT_REAL *ids, const MT_REAL *E, int B, int T, int D);
/* dE[id_nt] += dy_n / c_n; ids are not variables, so there is no input gradient. The R-backward
 * is the same with R(dy) into R(dE): no second term, since y is linear in E. */
void MT_(mt_nn_embed_backward)(MT_REAL *dE, const MT_REAL *dy, const MT_REAL *ids, int B, int T, int D);

/* Losses: return the loss; dy (B,O) receives its gradient, rdy its R-derivative given ry. */
double MT_(mt_nn_mse_forward)(const MT_REAL *y, const MT_REAL *target, int B, int O);
void MT_(mt_nn_mse_backward)(MT_REAL *dy, const MT_REAL *y, const MT_REAL *target, int B, int O);
void MT_(mt_nn_mse_rbackward)(MT_REAL *rdy, const MT_REAL *ry, int B, int O);
double MT_(mt_nn_xent_forward)(const MT_REAL *logits, const int32_t *labels, int B, int O);
void MT_(mt_nn_xent_backward)(MT_REAL *dz, const MT_REAL *logits, const int32_t *labels, int B, int O);
void MT_(mt_nn_xent_rbackward)(MT_REAL *rdz, const MT_REAL *logits, const MT_REAL *rz, int B, int O);
