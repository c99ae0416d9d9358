/* Gradients and Hessian-vector products of the double-precision engine against central finite
 * differences: gradients against differences of the loss, HVPs against differences of the
 * gradient. Every layer kind is checked inside a small network that sandwiches it, so that its
 * input gradient (and R-input gradient) matters as well as its parameter gradient.
 *
 * Points are drawn away from the kinks (ReLU inputs and max-pool ties), and every evaluation
 * at θ ± h·d is verified to see the same ReLU signs and max-pool winners as θ: a difference
 * across a kink would measure the kink, not the engine. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fd_check.h"

#define FD_STEP 1e-5 /* central differences: truncation O(h²) ~ 1e-10, rounding O(ε/h) ~ 1e-11 */
#define TOL 1e-6

/* A network at a random point, with everything the checks need. */
typedef struct {
    const char *spec;
    mt_nn_net net;
    mt_nn_ws_f64 *ws;
    int n;
    size_t np;
    double *params, *x, *y, *grad, *hv, *dir, *theta, *gp, *gm, *col_a, *col_b;
    int32_t *labels;
    mt_nn_batch_f64 batch;
    unsigned char *kinks, *probe;
    size_t kinks_size;
    double margin;
} fixture;

/* What to check and how hard. */
typedef struct {
    int full;        /* every gradient coordinate and every Hessian column */
    int grad_coords; /* otherwise: this many gradient coordinates ... */
    int hess_coords; /* ... and this many Hessian columns, at random */
    int dirs;        /* random directional checks */
    double margin;   /* required distance to the nearest kink */
    double max_skip; /* fraction of perturbations allowed to cross a kink (then redrawn) */
} plan;

static const plan FULL = {1, 0, 0, 4, 1e-3, 0};

/* Worst errors over the whole file, printed at the end for the record. */
static double worst_grad, worst_hess, worst_dgrad, worst_dhvp;

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    assert_non_null(p);
    return p;
}

/* Evaluates at theta and reports whether every kink agrees with the base point. */
static int smooth_here(fixture *f) {
    FD_KINKS_READ(f->ws, f->n, f->probe);
    return memcmp(f->probe, f->kinks, f->kinks_size) == 0;
}

static double loss_at(fixture *f, const double *theta, int *smooth) {
    double loss = mt_nn_loss_f64(f->ws, theta, &f->batch);
    *smooth &= smooth_here(f);
    return loss;
}

static void grad_at(fixture *f, const double *theta, double *g, int *smooth) {
    mt_nn_grad_f64(f->ws, theta, &f->batch, g);
    *smooth &= smooth_here(f);
}

/* theta = params + t·dir */
static void step(fixture *f, double t, const double *dir) {
    for (size_t i = 0; i < f->np; i++) f->theta[i] = f->params[i] + t * dir[i];
}

/* Parses, plans, and draws parameters and a batch until the point is at least `margin` away from
 * every kink. */
static void setup(fixture *f, const char *spec, int n, double margin) {
    memset(f, 0, sizeof *f);
    f->spec = spec;
    f->n = n;
    mt_status st = mt_nn_parse(&f->net, spec, "test");
    if (st != MT_OK) fail_msg("%s: %s", spec, mt_error_message());
    assert_int_equal(fd_ws_create_keeping_relu_inputs(&f->ws, &f->net, n), MT_OK);
    size_t np = f->np = f->net.n_params;
    double **vectors[] = {&f->params, &f->grad, &f->hv, &f->dir, &f->theta, &f->gp, &f->gm, &f->col_a, &f->col_b};
    for (size_t i = 0; i < sizeof vectors / sizeof *vectors; i++) *vectors[i] = xcalloc(np, sizeof(double));
    f->x = xcalloc((size_t)n * f->net.in_size, sizeof(double));
    f->y = xcalloc((size_t)n * f->net.out_size, sizeof(double));
    f->labels = xcalloc((size_t)n, sizeof(int32_t));
    f->kinks_size = fd_kinks_size(&f->net, n);
    f->kinks = xcalloc(f->kinks_size, 1);
    f->probe = xcalloc(f->kinks_size, 1);
    f->batch = (mt_nn_batch_f64){.x = f->x, .y = f->y, .labels = f->labels, .n = n};

    for (uint64_t seed = 1; seed <= 500; seed++) {
        fd_random_params(&f->net, seed, f->params);
        fd_random_batch(&f->net, n, seed, f->x, f->y, f->labels);
        mt_nn_loss_f64(f->ws, f->params, &f->batch);
        f->margin = fd_kink_margin(f->ws, n);
        if (f->margin >= margin) {
            FD_KINKS_READ(f->ws, n, f->kinks);
            return;
        }
    }
    fail_msg("%s: no point with kink margin %g in 500 draws", spec, margin);
}

static void teardown(fixture *f) {
    mt_nn_ws_free_f64(f->ws);
    double *vectors[] = {f->params, f->grad, f->hv, f->dir, f->theta, f->gp, f->gm, f->col_a, f->col_b, f->x, f->y};
    for (size_t i = 0; i < sizeof vectors / sizeof *vectors; i++) free(vectors[i]);
    free(f->labels);
    free(f->kinks);
    free(f->probe);
}

/* `count` distinct coordinates: a few from every tensor, so that no tensor goes unchecked, then
 * uniformly random ones. With count = 0, all of them. */
static size_t pick_coords(const fixture *f, size_t count, uint64_t seed, size_t *coords) {
    if (count == 0 || count >= f->np) {
        for (size_t i = 0; i < f->np; i++) coords[i] = i;
        return f->np;
    }
    unsigned char *taken = xcalloc(f->np, 1);
    mt_rng rng;
    fd_rng(&rng, seed, 3000);
    size_t k = 0;
    for (int t = 0; t < f->net.n_tensors && k < count; t++)
        for (int j = 0; j < 4 && k < count; j++) {
            const mt_nn_tensor *T = &f->net.tensors[t];
            size_t i = T->offset + mt_rng_below(&rng, (uint32_t)T->count);
            if (!taken[i]) taken[i] = 1, coords[k++] = i;
        }
    while (k < count) {
        size_t i = mt_rng_below(&rng, (uint32_t)f->np);
        if (!taken[i]) taken[i] = 1, coords[k++] = i;
    }
    free(taken);
    return k;
}

/* Gradient coordinates against (L(θ + h eᵢ) − L(θ − h eᵢ)) / 2h, as one vector. */
static double check_grad_coords(fixture *f, const size_t *coords, size_t count, size_t *skipped) {
    mt_nn_grad_f64(f->ws, f->params, &f->batch, f->grad);
    double *analytic = xcalloc(count, sizeof(double)), *numeric = xcalloc(count, sizeof(double));
    size_t used = 0;
    for (size_t k = 0; k < count; k++) {
        size_t i = coords[k];
        int smooth = 1;
        memcpy(f->theta, f->params, f->np * sizeof(double));
        f->theta[i] = f->params[i] + FD_STEP;
        double lp = loss_at(f, f->theta, &smooth);
        f->theta[i] = f->params[i] - FD_STEP;
        double lm = loss_at(f, f->theta, &smooth);
        if (!smooth) {
            ++*skipped;
            continue;
        }
        analytic[used] = f->grad[i];
        numeric[used++] = (lp - lm) / (2 * FD_STEP);
    }
    double err = fd_rel_err(analytic, numeric, used);
    free(analytic);
    free(numeric);
    return err;
}

/* Hessian columns H eᵢ from the HVP against (∇L(θ + h eᵢ) − ∇L(θ − h eᵢ)) / 2h; the error is
 * over all checked columns together (a Frobenius-norm relative error when all are checked). */
static double check_hess_coords(fixture *f, const size_t *coords, size_t count, size_t *skipped) {
    fd_err_acc acc = {0};
    for (size_t k = 0; k < count; k++) {
        size_t i = coords[k];
        int smooth = 1;
        memcpy(f->theta, f->params, f->np * sizeof(double));
        f->theta[i] = f->params[i] + FD_STEP;
        grad_at(f, f->theta, f->gp, &smooth);
        f->theta[i] = f->params[i] - FD_STEP;
        grad_at(f, f->theta, f->gm, &smooth);
        if (!smooth) {
            ++*skipped;
            continue;
        }
        memset(f->dir, 0, f->np * sizeof(double));
        f->dir[i] = 1;
        mt_nn_hvp_f64(f->ws, f->params, &f->batch, f->dir, f->col_a, f->hv);
        for (size_t j = 0; j < f->np; j++) f->col_b[j] = (f->gp[j] - f->gm[j]) / (2 * FD_STEP);
        fd_err_add(&acc, f->hv, f->col_b, f->np);
    }
    return fd_err_value(&acc);
}

/* Along random unit directions d: ∇L·d against the difference of the loss, and H d against the
 * difference of the gradient as full vectors. Directions that cross a kink are redrawn. */
static void check_dirs(fixture *f, int dirs, double *err_grad, double *err_hvp, size_t *skipped) {
    *err_grad = *err_hvp = 0;
    int done = 0;
    for (uint32_t attempt = 0; done < dirs; attempt++) {
        assert_true(attempt < (uint32_t)(4 * dirs)); /* too many kinks crossed: the point is bad */
        fd_fill_direction(f->dir, f->np, 77, 4000 + attempt);
        int smooth = 1;
        step(f, FD_STEP, f->dir);
        double lp = loss_at(f, f->theta, &smooth);
        grad_at(f, f->theta, f->gp, &smooth);
        step(f, -FD_STEP, f->dir);
        double lm = loss_at(f, f->theta, &smooth);
        grad_at(f, f->theta, f->gm, &smooth);
        if (!smooth) {
            ++*skipped;
            continue;
        }
        mt_nn_hvp_f64(f->ws, f->params, &f->batch, f->dir, f->grad, f->hv);
        double e = fd_rel_err_scalar(fd_dot(f->grad, f->dir, f->np), (lp - lm) / (2 * FD_STEP));
        if (e > *err_grad) *err_grad = e;
        for (size_t j = 0; j < f->np; j++) f->col_b[j] = (f->gp[j] - f->gm[j]) / (2 * FD_STEP);
        e = fd_rel_err(f->hv, f->col_b, f->np);
        if (e > *err_hvp) *err_hvp = e;
        done++;
    }
}

static void expect_small(const fixture *f, const char *what, double err) {
    if (!(err <= TOL)) fail_msg("%s (batch %d): %s relative error %.3e > %.0e", f->spec, f->n, what, err, TOL);
}

static double maxd(double a, double b) { return a > b ? a : b; }

/* The whole check for one network and batch size. */
static void check_net(const char *spec, int n, const plan *p) {
    fixture f;
    setup(&f, spec, n, p->margin);

    /* The HVP pass's gradient is the gradient: it comes "at no extra cost", so it must be it. */
    fd_fill_direction(f.dir, f.np, 5, 5);
    double loss_g = mt_nn_grad_f64(f.ws, f.params, &f.batch, f.gp);
    double loss_h = mt_nn_hvp_f64(f.ws, f.params, &f.batch, f.dir, f.gm, f.hv);
    assert_true(loss_g == loss_h);
    double e_same = fd_rel_err(f.gm, f.gp, f.np);
    if (!(e_same <= 1e-12)) fail_msg("%s: the HVP pass's gradient differs from mt_nn_grad's by %.3e", spec, e_same);
    double loss_l = mt_nn_loss_f64(f.ws, f.params, &f.batch);
    assert_true(loss_l == loss_g);
    /* Without a gradient (grad NULL) the HVP skips only the weight products: hv to the bit. */
    double *hv_alone = xcalloc(f.np, sizeof(double));
    assert_true(mt_nn_hvp_f64(f.ws, f.params, &f.batch, f.dir, NULL, hv_alone) == loss_h);
    if (memcmp(hv_alone, f.hv, f.np * sizeof *hv_alone) != 0) fail_msg("%s: the HVP without a gradient differs", spec);
    free(hv_alone);
    /* A bias right before batch norm has no effect: its gradient and HVP entries are exactly 0
     * (the coordinate checks below compare them with finite differences too). */
    for (int t = 0; t < f.net.n_tensors; t++) {
        const mt_nn_tensor *T = &f.net.tensors[t];
        int before_bn = T->layer + 1 < f.net.n_layers && f.net.layers[T->layer + 1].kind == MT_NN_BATCHNORM;
        if (!before_bn || !strstr(T->name, "/bias")) continue;
        for (size_t i = T->offset; i < T->offset + T->count; i++)
            if (f.gm[i] != 0 || f.hv[i] != 0)
                fail_msg("%s: %s before batch norm has a nonzero derivative", spec, T->name);
    }

    size_t *coords = xcalloc(f.np, sizeof(size_t));
    size_t skip_g = 0, skip_h = 0, skip_d = 0;
    size_t n_g = pick_coords(&f, p->full ? 0 : (size_t)p->grad_coords, 11, coords);
    double e_grad = check_grad_coords(&f, coords, n_g, &skip_g);
    size_t n_h = pick_coords(&f, p->full ? 0 : (size_t)p->hess_coords, 12, coords);
    double e_hess = check_hess_coords(&f, coords, n_h, &skip_h);
    double e_dgrad, e_dhvp;
    check_dirs(&f, p->dirs, &e_dgrad, &e_dhvp, &skip_d);
    free(coords);

    printf("%-64s B=%-2d n=%-6zu margin %.1e | grad %.2e (%zu coords) | Hessian %.2e (%zu cols) | "
           "dir grad %.2e, dir HVP %.2e (%d dirs) | skipped %zu/%zu/%zu\n",
           spec, n, f.np, f.margin, e_grad, n_g - skip_g, e_hess, n_h - skip_h, e_dgrad, e_dhvp, p->dirs, skip_g,
           skip_h, skip_d);
    worst_grad = maxd(worst_grad, e_grad);
    worst_hess = maxd(worst_hess, e_hess);
    worst_dgrad = maxd(worst_dgrad, e_dgrad);
    worst_dhvp = maxd(worst_dhvp, e_dhvp);

    expect_small(&f, "gradient (coordinates)", e_grad);
    expect_small(&f, "Hessian columns", e_hess);
    expect_small(&f, "directional derivative", e_dgrad);
    expect_small(&f, "directional HVP", e_dhvp);
    if (skip_g > p->max_skip * (double)n_g || skip_h > p->max_skip * (double)n_h)
        fail_msg("%s: %zu of %zu gradient and %zu of %zu Hessian perturbations crossed a kink", spec, skip_g, n_g,
                 skip_h, n_h);
    teardown(&f);
}

/* ---- Layers, each sandwiched so its input gradient is used ---- */

static void test_linear_matches_fd(void **state) {
    check_net("input 5, linear 4, linear 3, mse", 3, &FULL);
    check_net("input 5, linear 4, linear 3, xent", 1, &FULL);
}

static void test_relu_matches_fd(void **state) {
    check_net("input 4, linear 6, relu, linear 3, mse", 4, &FULL);
    check_net("input 4, linear 6, relu, linear 3, xent", 1, &FULL);
}

/* Odd sizes: stride 2 on odd widths and heights exercises the padding and the last row/column. */
static void test_conv_matches_fd(void **state) {
    check_net("input 3x5x4, conv 2, relu, conv 3 s2, mse", 2, &FULL);
    check_net("input 3x5x4, conv 2, relu, conv 3 s2, mse", 1, &FULL);
    check_net("input 2x7x5, conv 3 s2, conv 2 s1, flatten, linear 3, xent", 3, &FULL);
    check_net("input 1x4x6, conv 2 s2, relu, conv 2 s2, flatten, linear 2, xent", 1, &FULL);
    /* planes of more than 1,024 outputs: im2col and its adjoint row by row (src/nn/conv.c) */
    check_net("input 1x33x34, conv 2, relu, conv 2, avgpool, linear 2, mse", 2, &FULL);
    check_net("input 2x66x65, conv 2 s2, relu, conv 2, avgpool, linear 2, mse", 1, &FULL);
}

/* Image layers run channel-major, feature layers batch-major (src/nn/net.c): every crossing. A
 * multi-channel input is reordered on the way in; batch norm right on the input, after flatten
 * (features, strided), after avgpool (channels, S = 1); a net whose loss reads an image layer. */
static void test_layout_crossings_match_fd(void **state) {
    check_net("input 3x4x4, bn, conv 2, avgpool, bn, linear 2, mse", 3, &FULL);
    check_net("input 2x3x4, conv 3 s2, flatten, bn, relu, linear 2, xent", 4, &FULL);
    check_net("input 2x4x4, relu, conv 2, maxpool, mse", 3, &FULL);
    check_net("input 3x2x2, conv 2, flatten, linear 3, bn, linear 2, mse", 2, &FULL);
}

/* Batch statistics couple the samples: the R-backward has true second-order terms here. Batch 1
 * needs spatial size > 1, or x̂ = 0 and the layer is degenerate. */
static void test_batchnorm_matches_fd(void **state) {
    check_net("input 5, linear 3, bn, linear 2, mse", 4, &FULL);
    check_net("input 5, linear 3, bn, relu, linear 3, xent", 6, &FULL);
    check_net("input 2x4x3, conv 3, bn, conv 2, mse", 3, &FULL);
    check_net("input 2x3x3, conv 3, bn, relu, linear 2, xent", 1, &FULL);
    check_net("input 1x5x5, conv 2 s2, bn, conv 2, bn, flatten, linear 2, mse", 2, &FULL);
}

/* 2x2 windows; odd sizes drop the trailing row or column. */
static void test_maxpool_matches_fd(void **state) {
    check_net("input 2x5x7, conv 3, maxpool, conv 2, flatten, linear 2, mse", 2, &FULL);
    check_net("input 1x6x6, conv 2, relu, maxpool, linear 3, xent", 1, &FULL);
    check_net("input 2x5x5, conv 3 s2, bn, relu, maxpool, flatten, linear 3, xent", 3, &FULL);
}

static void test_avgpool_matches_fd(void **state) {
    check_net("input 2x5x3, conv 3, avgpool, linear 2, xent", 3, &FULL);
    check_net("input 2x4x4, conv 3, relu, avgpool, linear 2, mse", 1, &FULL);
}

/* The losses on their own, where the loss's own second derivative is the whole Hessian's core. */
/* Bags over a table of 6 rows: ids repeat within a bag and across the batch, bags are padded,
 * and the last bag of a batch holds no id at all (zeros out of the layer). */
static void test_embed_matches_fd(void **state) {
    (void)state;
    check_net("input tokens 5, embed 6 3, linear 4, relu, linear 2, mse", 4, &FULL);
    check_net("input tokens 4, embed 6 3, linear 5, relu, linear 3, xent", 3, &FULL);
    check_net("input tokens 3, embed 5 4, bn, relu, linear 2, xent", 4, &FULL);
}

static void test_losses_match_fd(void **state) {
    check_net("input 4, linear 3, mse", 5, &FULL);
    check_net("input 4, linear 3, xent", 5, &FULL);
    check_net("input 4, linear 7, xent", 1, &FULL);
}

/* ---- The networks the trainer runs ---- */

static void test_sinusoid_mlp_matches_fd(void **state) {
    check_net("input 1, linear 40, relu, linear 40, relu, linear 1, mse", 10, &FULL);
}

static void test_seed_mlp_matches_fd(void **state) { check_net("input 10, linear 10, relu, linear 1, mse", 10, &FULL); }

/* The few-shot 4-conv net with 4 filters on 12x12: every coordinate. Its last block is 1x1, so
 * its BN normalizes over the batch alone. */
static void test_small_fourconv_matches_fd(void **state) {
    check_net("input 1x12x12, conv 4 s2, bn, relu, conv 4 s2, bn, relu, conv 4 s2, bn, relu, "
              "conv 4 s2, bn, relu, flatten, linear 5, xent",
              5, &FULL);
}

/* The full 4-conv net (113,221 parameters), 5-way 1-shot: a full difference of every coordinate
 * is too slow, so random directions and a random subset of coordinates. With tens of thousands
 * of ReLU inputs, some always lie near 0: perturbations that cross one are redrawn, and only a
 * few may. METATRAIN_GRADCHECK_QUICK (set by scripts/valgrind, under which a pass is ~50 times
 * slower) checks a tenth of the coordinates and columns and two directions. */
static void test_fourconv_matches_fd(void **state) {
    const plan full = {0, 200, 40, 8, 0, 0.05}, quick = {0, 20, 4, 2, 0, 0.05};
    check_net("input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "
              "conv 64 s2, bn, relu, flatten, linear 5, xent",
              5, getenv("METATRAIN_GRADCHECK_QUICK") ? &quick : &full);
}

/* The harness itself: a point placed on a kink is seen as one, and its coordinate is skipped rather
 * than compared; a max-pool near-tie shows in the margin. Without this, a silent harness could
 * pass by never looking. */
static void test_harness_sees_kinks(void **state) {
    fixture f;
    setup(&f, "input 4, linear 6, relu, linear 3, mse", 3, 1e-3);
    /* Move linear1's first bias so that sample 0's first pre-activation sits at 1e-7. */
    const double *x0 = f.x, *w0 = f.params;
    size_t bias0 = 6 * 4;
    double pre = f.params[bias0];
    for (int i = 0; i < 4; i++) pre += w0[i] * x0[i];
    f.params[bias0] -= pre - 1e-7;
    mt_nn_loss_f64(f.ws, f.params, &f.batch);
    assert_true(fd_kink_margin(f.ws, f.n) < 1e-6);
    FD_KINKS_READ(f.ws, f.n, f.kinks);
    size_t coord = bias0, skipped = 0;
    check_grad_coords(&f, &coord, 1, &skipped);
    assert_int_equal(skipped, 1);
    teardown(&f);

    mt_nn_net net;
    mt_nn_ws_f64 *ws;
    assert_int_equal(mt_nn_parse(&net, "input 1x2x2, maxpool, linear 2, mse", "test"), MT_OK);
    assert_int_equal(fd_ws_create_keeping_relu_inputs(&ws, &net, 1), MT_OK);
    double params[4] = {1, 1, 0, 0}, x[4] = {0.5, 0.5 + 1e-9, -1, 0.25}, y[2] = {0, 0};
    mt_nn_batch_f64 batch = {.x = x, .y = y, .n = 1};
    mt_nn_loss_f64(ws, params, &batch);
    assert_true(fd_kink_margin(ws, 1) < 2e-9);
    x[1] = 0.75;
    mt_nn_loss_f64(ws, params, &batch);
    assert_true(fabs(fd_kink_margin(ws, 1) - 0.25) < 1e-12);
    mt_nn_ws_free_f64(ws);
}

/* Prints the worst errors of the whole file (cmocka runs the tests in order). */
/* Last: every kind of check ran (a worst error of exactly 0 means it measured nothing) and
 * stayed within the tolerance. */
static void test_summary(void **state) {
    printf("worst relative errors: gradient %.2e, Hessian columns %.2e, directional gradient %.2e, "
           "directional HVP %.2e (tolerance %.0e)\n",
           worst_grad, worst_hess, worst_dgrad, worst_dhvp, TOL);
    const double worst[] = {worst_grad, worst_hess, worst_dgrad, worst_dhvp};
    for (size_t i = 0; i < sizeof worst / sizeof *worst; i++) assert_true(worst[i] > 0 && worst[i] <= TOL);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep printed errors in order with cmocka's stderr */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_harness_sees_kinks),
        cmocka_unit_test(test_linear_matches_fd),
        cmocka_unit_test(test_relu_matches_fd),
        cmocka_unit_test(test_conv_matches_fd),
        cmocka_unit_test(test_layout_crossings_match_fd),
        cmocka_unit_test(test_batchnorm_matches_fd),
        cmocka_unit_test(test_maxpool_matches_fd),
        cmocka_unit_test(test_avgpool_matches_fd),
        cmocka_unit_test(test_losses_match_fd),
        cmocka_unit_test(test_embed_matches_fd),
        cmocka_unit_test(test_sinusoid_mlp_matches_fd),
        cmocka_unit_test(test_seed_mlp_matches_fd),
        cmocka_unit_test(test_small_fourconv_matches_fd),
        cmocka_unit_test(test_fourconv_matches_fd),
        cmocka_unit_test(test_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
