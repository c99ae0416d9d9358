/* Helpers shared by the network tests: norm-based relative errors, random fills from the
 * Philox test stream, random parameters that are not the default init, and the "kinks" (ReLU
 * signs and max-pool argmaxes) that make a network only piecewise smooth. */
#ifndef METATRAIN_TESTS_FD_CHECK_H
#define METATRAIN_TESTS_FD_CHECK_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "metatrain/nn.h"
#include "metatrain/rng.h"

/* Below this norm two vectors count as both zero: relative error of noise against nothing. */
#define FD_TINY 1e-30

static inline double fd_dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline double fd_norm(const double *a, size_t n) { return sqrt(fd_dot(a, a, n)); }

static inline double fd_rel_scale(double na, double nb) {
    double m = na > nb ? na : nb;
    return m > FD_TINY ? m : FD_TINY;
}

/* ‖a − b‖ / max(‖a‖, ‖b‖, tiny) */
static inline double fd_rel_err(const double *a, const double *b, size_t n) {
    double d = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        aa += a[i] * a[i];
        bb += b[i] * b[i];
    }
    return sqrt(d) / fd_rel_scale(sqrt(aa), sqrt(bb));
}

static inline double fd_rel_err_scalar(double a, double b) { return fabs(a - b) / fd_rel_scale(fabs(a), fabs(b)); }

/* The float result against the double one. */
static inline double fd_rel_err_f32(const float *a, const double *b, size_t n) {
    double d = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        aa += (double)a[i] * a[i];
        bb += b[i] * b[i];
    }
    return sqrt(d) / fd_rel_scale(sqrt(aa), sqrt(bb));
}

/* Norm-based relative error accumulated piece by piece, e.g. over the columns of a Hessian that
 * is never stored whole. */
typedef struct {
    double diff2, a2, b2;
} fd_err_acc;

static inline void fd_err_add(fd_err_acc *acc, const double *a, const double *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        acc->diff2 += (a[i] - b[i]) * (a[i] - b[i]);
        acc->a2 += a[i] * a[i];
        acc->b2 += b[i] * b[i];
    }
}

static inline double fd_err_value(const fd_err_acc *acc) {
    return sqrt(acc->diff2) / fd_rel_scale(sqrt(acc->a2), sqrt(acc->b2));
}

static inline void fd_rng(mt_rng *rng, uint64_t seed, uint32_t task) {
    mt_rng_init(rng, seed, 0, task, MT_RNG_STREAM_TEST);
}

/* v (n) ~ N(0, scale²) */
static inline void fd_fill_normal(double *v, size_t n, double scale, uint64_t seed, uint32_t task) {
    mt_rng rng;
    fd_rng(&rng, seed, task);
    for (size_t i = 0; i < n; i++) v[i] = scale * mt_rng_normal(&rng);
}

/* A random direction of unit norm. */
static inline void fd_fill_direction(double *v, size_t n, uint64_t seed, uint32_t task) {
    fd_fill_normal(v, n, 1.0, seed, task);
    double norm = fd_norm(v, n);
    for (size_t i = 0; i < n; i++) v[i] /= norm;
}

static inline void fd_to_float(float *dst, const double *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = (float)src[i];
}

/* Random parameters away from the default init, so that biases, BN scales and shifts all carry
 * information: weights ~ N(0, 2/fan_in), biases and shifts ~ N(0, 0.5²), scales ~ U(0.5, 1.5). */
static inline void fd_random_params(const mt_nn_net *net, uint64_t seed, double *params) {
    mt_rng rng;
    fd_rng(&rng, seed, 1000);
    for (int t = 0; t < net->n_tensors; t++) {
        const mt_nn_tensor *T = &net->tensors[t];
        const mt_nn_layer *L = &net->layers[T->layer];
        int first = t == L->first_tensor;
        for (size_t i = 0; i < T->count; i++) {
            double v;
            if (L->kind == MT_NN_BATCHNORM)
                v = first ? mt_rng_range(&rng, 0.5, 1.5) : 0.5 * mt_rng_normal(&rng);
            else if (first)
                v = sqrt(2.0 * T->dims[0] / (double)T->count) * mt_rng_normal(&rng);
            else
                v = 0.5 * mt_rng_normal(&rng);
            params[T->offset + i] = v;
        }
    }
}

/* A random batch of n: x ~ N(0, 1); targets ~ N(0, 1) for MSE, labels uniform for xent (the first
 * out_size samples cover every class once, as a 1-shot episode would). Buffers sized by the caller. */
static inline void fd_random_batch(const mt_nn_net *net, int n, uint64_t seed, double *x, double *y, int32_t *labels) {
    fd_fill_normal(x, (size_t)n * net->in_size, 1.0, seed, 2000);
    if (net->in_tokens) { /* bags of ids with repeats and padding; with n > 1 the last bag is empty */
        mt_rng ids;
        fd_rng(&ids, seed, 2003);
        uint32_t V = (uint32_t)net->layers[0].table_rows;
        for (int i = 0; i < n; i++)
            for (size_t t = 0; t < net->in_size; t++) {
                int pad = (n > 1 && i == n - 1) || (t > 0 && mt_rng_below(&ids, 4) == 0);
                x[(size_t)i * net->in_size + t] = pad ? -1 : (double)mt_rng_below(&ids, V);
            }
    }
    fd_fill_normal(y, (size_t)n * net->out_size, 1.0, seed, 2001);
    mt_rng rng;
    fd_rng(&rng, seed, 2002);
    for (int i = 0; i < n; i++)
        labels[i] = i < (int)net->out_size ? i : (int32_t)mt_rng_below(&rng, (uint32_t)net->out_size);
}

/* ---- Kinks. After a forward pass, the network is smooth around the current point as long as
 * no ReLU input changes sign and no max-pool window changes its winner. ---- */

/* Bytes needed to record the kinks of a batch of n. */
static inline size_t fd_kinks_size(const mt_nn_net *net, int n) {
    size_t size = 0;
    for (int l = 0; l < net->n_layers; l++) {
        const mt_nn_layer *L = &net->layers[l];
        size_t out = (size_t)n * L->out_c * L->out_h * L->out_w;
        if (L->kind == MT_NN_RELU) size += out;
        if (L->kind == MT_NN_MAXPOOL2) size += out * sizeof(int32_t);
    }
    return size ? size : 1;
}

/* Records ReLU signs (from the outputs: y > 0 iff x > 0) and max-pool argmaxes of the last
 * forward pass in either precision's workspace. */
#define FD_KINKS_READ(ws, n, buf)                                                                                      \
    do {                                                                                                               \
        const mt_nn_net *fd_net_ = (ws)->net;                                                                          \
        unsigned char *fd_p_ = (buf);                                                                                  \
        for (int fd_l_ = 0; fd_l_ < fd_net_->n_layers; fd_l_++) {                                                      \
            const mt_nn_layer *fd_L_ = &fd_net_->layers[fd_l_];                                                        \
            size_t fd_out_ = (size_t)(n)*fd_L_->out_c * fd_L_->out_h * fd_L_->out_w;                                   \
            if (fd_L_->kind == MT_NN_RELU)                                                                             \
                for (size_t fd_i_ = 0; fd_i_ < fd_out_; fd_i_++) *fd_p_++ = (ws)->act[fd_l_ + 1][fd_i_] > 0;           \
            if (fd_L_->kind == MT_NN_MAXPOOL2) {                                                                       \
                memcpy(fd_p_, (ws)->pool_argmax + (ws)->pool_offset[fd_l_], fd_out_ * sizeof(int32_t));                \
                fd_p_ += fd_out_ * sizeof(int32_t);                                                                    \
            }                                                                                                          \
        }                                                                                                              \
    } while (0)

/* A double workspace whose ReLUs keep their inputs (mt_nn_ws_plan), as fd_kink_margin needs. */
static inline mt_status fd_ws_create_keeping_relu_inputs(mt_nn_ws_f64 **ws, const mt_nn_net *net, int n) {
    mt_nn_ws_plan plan = MT_NN_WS_PLAN_DEFAULT;
    plan.keep_relu_inputs = 1;
    return mt_nn_ws_create_planned_f64(ws, net, n, &plan);
}

/* Distance of the last forward pass (double workspace, batch of n) to the nearest kink: the
 * smallest |ReLU input| and the smallest gap between a max-pool window's two largest entries.
 * A window whose maximum is exactly 0 holds ReLU zeros, which stay tied at 0 while no ReLU flips.
 * The workspace must keep the ReLU inputs (fd_ws_create_keeping_relu_inputs). */
static inline double fd_kink_margin(const mt_nn_ws_f64 *ws, int n) {
    const mt_nn_net *net = ws->net;
    for (int l = 1; l < net->n_layers; l++)
        if (net->layers[l].kind == MT_NN_RELU && ws->act[l] == ws->act[l + 1]) abort(); /* a ReLU in place */
    double margin = INFINITY;
    for (int l = 0; l < net->n_layers; l++) {
        const mt_nn_layer *L = &net->layers[l];
        const double *x = ws->act[l];
        if (L->kind == MT_NN_RELU) {
            size_t count = (size_t)n * L->in_c * L->in_h * L->in_w;
            for (size_t i = 0; i < count; i++)
                if (fabs(x[i]) < margin) margin = fabs(x[i]);
        }
        if (L->kind == MT_NN_MAXPOOL2) {
            int H = L->in_h, W = L->in_w;
            for (int p = 0; p < n * L->in_c; p++)
                for (int i = 0; i < H / 2; i++)
                    for (int j = 0; j < W / 2; j++) {
                        const double *w0 = x + (size_t)p * H * W + (size_t)(2 * i) * W + 2 * j;
                        double v[4] = {w0[0], w0[1], w0[W], w0[W + 1]}, top = -INFINITY, second = -INFINITY;
                        for (int k = 0; k < 4; k++) {
                            if (v[k] > top)
                                second = top, top = v[k];
                            else if (v[k] > second)
                                second = v[k];
                        }
                        if (top != 0 && top - second < margin) margin = top - second;
                    }
        }
    }
    return margin;
}

#endif
