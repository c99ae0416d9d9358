/* The float32 training path against the double path (which test_nn_gradcheck checks against
 * finite differences), the fast convolution against its slow reference, and the spec parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fd_check.h"

#define FLOAT_TOL 1e-3

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    assert_non_null(p);
    return p;
}

static double worst_loss, worst_grad, worst_hvp, worst_conv_f32, worst_conv_f64;

static double maxd(double a, double b) { return a > b ? a : b; }

/* Loss, gradient and HVP of one network at one random point, in both precisions. Points where
 * float rounding moves a ReLU input or a max-pool winner across a kink are redrawn: there the two
 * precisions compute different (both correct) pieces of the function. */
static void check_precisions(const char *spec, int n) {
    mt_nn_net net;
    if (mt_nn_parse(&net, spec, "test") != MT_OK) fail_msg("%s: %s", spec, mt_error_message());
    size_t np = net.n_params, nx = (size_t)n * net.in_size, ny = (size_t)n * net.out_size;
    mt_nn_ws_f64 *wd;
    mt_nn_ws *wf;
    assert_int_equal(mt_nn_ws_create_f64(&wd, &net, n), MT_OK);
    assert_int_equal(mt_nn_ws_create(&wf, &net, n), MT_OK);
    double *pd = xcalloc(np, sizeof(double)), *dd = xcalloc(np, sizeof(double));
    double *gd = xcalloc(np, sizeof(double)), *hd = xcalloc(np, sizeof(double));
    double *xd = xcalloc(nx, sizeof(double)), *yd = xcalloc(ny, sizeof(double));
    float *pf = xcalloc(np, sizeof(float)), *df = xcalloc(np, sizeof(float));
    float *gf = xcalloc(np, sizeof(float)), *hf = xcalloc(np, sizeof(float));
    float *xf = xcalloc(nx, sizeof(float)), *yf = xcalloc(ny, sizeof(float));
    int32_t *labels = xcalloc((size_t)n, sizeof(int32_t));
    size_t kinks_size = fd_kinks_size(&net, n);
    unsigned char *kd = xcalloc(kinks_size, 1), *kf = xcalloc(kinks_size, 1);
    mt_nn_batch_f64 bd = {.x = xd, .y = yd, .labels = labels, .n = n};
    mt_nn_batch bf = {.x = xf, .y = yf, .labels = labels, .n = n};

    double loss_d = 0, loss_f = 0;
    uint64_t seed = 1;
    for (;; seed++) {
        assert_true(seed <= 50);
        fd_random_params(&net, seed, pd);
        fd_random_batch(&net, n, seed, xd, yd, labels);
        fd_fill_direction(dd, np, seed, 7);
        fd_to_float(pf, pd, np);
        fd_to_float(df, dd, np);
        fd_to_float(xf, xd, nx);
        fd_to_float(yf, yd, ny);
        /* Both precisions see the same numbers: the double ones rounded to float. */
        for (size_t i = 0; i < np; i++) pd[i] = pf[i], dd[i] = df[i];
        for (size_t i = 0; i < nx; i++) xd[i] = xf[i];
        for (size_t i = 0; i < ny; i++) yd[i] = yf[i];
        loss_d = mt_nn_hvp_f64(wd, pd, &bd, dd, gd, hd);
        FD_KINKS_READ(wd, n, kd);
        loss_f = mt_nn_hvp(wf, pf, &bf, df, gf, hf);
        FD_KINKS_READ(wf, n, kf);
        if (memcmp(kd, kf, kinks_size) == 0) break;
    }
    double e_loss = fd_rel_err_scalar(loss_f, loss_d), e_grad = fd_rel_err_f32(gf, gd, np);
    double e_hvp = fd_rel_err_f32(hf, hd, np);
    /* The float loss and gradient passes must agree with the float HVP pass. */
    float *g2 = xcalloc(np, sizeof(float));
    double loss_f2 = mt_nn_grad(wf, pf, &bf, g2);
    double e_self = fd_rel_err_f32(g2, gd, np);
    printf("%-64s B=%-2d n=%-6zu draw %-2d | loss %.2e  grad %.2e  HVP %.2e\n", spec, n, np, (int)seed, e_loss, e_grad,
           e_hvp);
    worst_loss = maxd(worst_loss, e_loss);
    worst_grad = maxd(worst_grad, e_grad);
    worst_hvp = maxd(worst_hvp, e_hvp);
    if (!(e_loss <= FLOAT_TOL && e_grad <= FLOAT_TOL && e_hvp <= FLOAT_TOL && e_self <= FLOAT_TOL))
        fail_msg("%s: float vs double relative errors: loss %.3e, gradient %.3e, HVP %.3e, "
                 "grad-pass gradient %.3e (tolerance %.0e)",
                 spec, e_loss, e_grad, e_hvp, e_self, FLOAT_TOL);
    assert_true(loss_f2 == loss_f);
    assert_true(mt_nn_loss(wf, pf, &bf) == loss_f);

    mt_nn_ws_free_f64(wd);
    mt_nn_ws_free(wf);
    void *buffers[] = {pd, dd, gd, hd, xd, yd, pf, df, gf, hf, xf, yf, g2, labels, kd, kf};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++) free(buffers[i]);
}

static void test_float_agrees_with_double_on_layers(void **state) {
    check_precisions("input 5, linear 4, linear 3, xent", 3);
    check_precisions("input 4, linear 6, relu, linear 3, mse", 1);
    check_precisions("input 3x5x4, conv 2, relu, conv 3 s2, mse", 2);
    check_precisions("input 2x7x5, conv 3 s2, conv 2 s1, flatten, linear 3, xent", 3);
    check_precisions("input 5, linear 3, bn, linear 2, mse", 4);
    check_precisions("input 2x3x3, conv 3, bn, relu, linear 2, xent", 1);
    check_precisions("input 2x5x7, conv 3, maxpool, conv 2, flatten, linear 2, mse", 2);
    check_precisions("input 2x5x5, conv 3 s2, bn, relu, maxpool, flatten, linear 3, xent", 3);
    check_precisions("input 2x4x4, conv 3, relu, avgpool, linear 2, mse", 1);
    check_precisions("input 3x4x4, bn, conv 2, avgpool, bn, linear 2, mse", 3);
    check_precisions("input 2x3x4, conv 3 s2, flatten, bn, relu, linear 2, xent", 4);
}

static void test_float_agrees_with_double_on_networks(void **state) {
    check_precisions("input 1, linear 40, relu, linear 40, relu, linear 1, mse", 10);
    check_precisions("input 10, linear 10, relu, linear 1, mse", 10);
    /* The float convolutions both ways: AVX-512 rows (where the CPU has them) and portable loops */
    for (int intrinsics = 1; intrinsics >= 0; intrinsics--) {
        mt_nn_use_intrinsics(intrinsics);
        check_precisions("input 1x12x12, conv 4 s2, bn, relu, conv 4 s2, bn, relu, conv 4 s2, bn, relu, "
                         "conv 4 s2, bn, relu, flatten, linear 5, xent",
                         5);
        check_precisions("input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "
                         "conv 64 s2, bn, relu, flatten, linear 5, xent",
                         5);
        check_precisions("input 3x9x11, conv 5 s2, bn, relu, conv 4 s2, relu, conv 3 s2, flatten, linear 3, xent", 4);
        check_precisions("input 2x21x16, conv 3 s2, bn, relu, conv 2 s2, flatten, linear 2, mse", 3);
    }
    mt_nn_use_intrinsics(1);
    printf("worst float-vs-double relative errors: loss %.2e, gradient %.2e, HVP %.2e (tolerance %.0e)\n", worst_loss,
           worst_grad, worst_hvp, FLOAT_TOL);
}

/* ---- im2col + GEMM convolution against the direct loops ---- */

typedef struct {
    int B, C, H, W, O, stride;
} conv_shape;

static const conv_shape CONV_SHAPES[] = {
    {2, 3, 5, 4, 2, 1},
    {2, 3, 5, 4, 2, 2},
    {1, 1, 1, 1, 3, 1},
    {1, 2, 1, 5, 2, 2},
    {3, 4, 7, 5, 3, 2},
    {2, 1, 28, 28, 8, 2},
    {2, 16, 7, 7, 16, 2},
    {1, 5, 6, 9, 7, 1},
    /* src/nn/conv.c's AVX-512 rows: tall planes, the widest (16), and one past it (17) */
    {2, 3, 40, 12, 4, 2},
    {1, 2, 3, 16, 2, 2},
    {1, 2, 5, 17, 2, 2},
    /* planes above src/nn/conv.c's TAP_TABLE_MAX outputs take the row-by-row path */
    {2, 2, 40, 33, 3, 1},
    {2, 2, 70, 66, 3, 2},
    {1, 1, 65, 63, 2, 2},
};

static void test_conv_forward_matches_reference(void **state) {
    for (size_t k = 0; k < sizeof CONV_SHAPES / sizeof *CONV_SHAPES; k++) {
        conv_shape s = CONV_SHAPES[k];
        int Ho = (s.H - 1) / s.stride + 1, Wo = (s.W - 1) / s.stride + 1;
        size_t nx = (size_t)s.B * s.C * s.H * s.W, nw = (size_t)s.O * s.C * 9, ny = (size_t)s.B * s.O * Ho * Wo;
        size_t ncol = (size_t)s.B * s.C * 9 * Ho * Wo; /* col (C·9, B·P) */
        double *x = xcalloc(nx, sizeof(double)), *w = xcalloc(nw, sizeof(double));
        double *b = xcalloc((size_t)s.O, sizeof(double)), *col = xcalloc(ncol, sizeof(double));
        double *y = xcalloc(ny, sizeof(double)), *yr = xcalloc(ny, sizeof(double));
        float *xf = xcalloc(nx, sizeof(float)), *wf = xcalloc(nw, sizeof(float));
        float *bf = xcalloc((size_t)s.O, sizeof(float)), *colf = xcalloc(ncol, sizeof(float));
        float *yf = xcalloc(ny, sizeof(float)), *yrf = xcalloc(ny, sizeof(float));
        fd_fill_normal(x, nx, 1, k, 1);
        fd_fill_normal(w, nw, 1, k, 2);
        fd_fill_normal(b, (size_t)s.O, 1, k, 3);
        fd_to_float(xf, x, nx);
        fd_to_float(wf, w, nw);
        fd_to_float(bf, b, (size_t)s.O);
        /* NaN-filled outputs below: every entry must be written. */
        mt_nn_conv_forward_reference_f64(yr, x, w, b, s.B, s.C, s.H, s.W, s.O, s.stride);
        mt_nn_conv_forward_reference(yrf, xf, wf, bf, s.B, s.C, s.H, s.W, s.O, s.stride);
        /* The reference against an independent double computation: it is a reference only if right. */
        double e_ref = fd_rel_err_f32(yrf, yr, ny);
        /* Three plans (nn_tmpl.h): fields kept for the whole batch in one chunk; kept, in chunks
         * of 2 samples (views into the kept matrix); not kept, rebuilt 2 samples at a time. Plans
         * 3 to 5: the same with the portable loops instead of AVX-512 (mt_nn_use_intrinsics). */
        for (int plan = 0; plan < 6; plan++) {
            mt_nn_use_intrinsics(plan < 3);
            int chunk = plan % 3 == 0 ? s.B : 2, keep = plan % 3 < 2;
            size_t capacity = keep ? ncol : 0;
            mt_nn_conv_work_f64 cw = {.col = keep ? col : NULL, .scratch = col, .capacity = capacity, .chunk = chunk};
            mt_nn_conv_work cwf = {.col = keep ? colf : NULL, .scratch = colf, .capacity = capacity, .chunk = chunk};
            for (size_t i = 0; i < ny; i++) y[i] = yf[i] = NAN;
            mt_nn_conv_forward_f64(y, &cw, x, w, b, s.B, s.C, s.H, s.W, s.O, s.stride);
            mt_nn_conv_forward(yf, &cwf, xf, wf, bf, s.B, s.C, s.H, s.W, s.O, s.stride);
            double e64 = fd_rel_err(y, yr, ny), e32 = 0, n32 = 0;
            for (size_t i = 0; i < ny; i++)
                e32 += ((double)yf[i] - yrf[i]) * ((double)yf[i] - yrf[i]), n32 += (double)yrf[i] * yrf[i];
            e32 = sqrt(e32 / n32);
            worst_conv_f64 = maxd(worst_conv_f64, e64);
            worst_conv_f32 = maxd(worst_conv_f32, e32);
            if (!(e64 <= 1e-12 && e32 <= 1e-5 && e_ref <= 1e-5))
                fail_msg("conv B%d C%d %dx%d O%d s%d plan %d: fast vs reference %.3e (f64) %.3e (f32), f32 ref vs f64 "
                         "ref %.3e",
                         s.B, s.C, s.H, s.W, s.O, s.stride, plan, e64, e32, e_ref);
        }
        mt_nn_use_intrinsics(1);
        void *buffers[] = {x, w, b, col, y, yr, xf, wf, bf, colf, yf, yrf};
        for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++) free(buffers[i]);
    }
    printf("conv fast vs reference, worst relative error: f64 %.2e, f32 %.2e\n", worst_conv_f64, worst_conv_f32);
}

/* One output by hand: the reference must implement padding 1 and the stride as documented. */
static void test_conv_reference_by_hand(void **state) {
    /* x (1,1,3,3) = 1..9, W = all ones, b = 0.5, stride 2: outputs at (0,0),(0,2),(2,0),(2,2) are
     * the sums of the in-bounds 3x3 neighbourhoods. */
    double x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w[9], b[1] = {0.5}, y[4];
    for (int i = 0; i < 9; i++) w[i] = 1;
    mt_nn_conv_forward_reference_f64(y, x, w, b, 1, 1, 3, 3, 1, 2);
    assert_true(y[0] == 1 + 2 + 4 + 5 + 0.5);
    assert_true(y[1] == 2 + 3 + 5 + 6 + 0.5);
    assert_true(y[2] == 4 + 5 + 7 + 8 + 0.5);
    assert_true(y[3] == 5 + 6 + 8 + 9 + 0.5);
}

/* ---- Batch layouts ----
 * Gradient checks cannot see a layout mix-up (a consistently wrong network has consistent
 * derivatives), so the layouts are checked by what they must preserve. Without batch norm each
 * sample's output depends on that sample alone: a batch's loss, gradient and HVP are the means
 * of the per-sample ones, computed at batch 1 where every layout is the same. With batch norm
 * the samples couple, but reordering the batch must change nothing. */

/* Loss, gradient and HVP of samples [first, first + n) of (x, y, labels), in double. */
static double pass(mt_nn_ws_f64 *ws, const mt_nn_net *net, const double *params, const double *dir, const double *x,
                   const double *y, const int32_t *labels, int first, int n, double *grad, double *hv) {
    mt_nn_batch_f64 b = {.x = x + (size_t)first * net->in_size,
                         .y = y + (size_t)first * net->out_size,
                         .labels = labels + first,
                         .n = n};
    return mt_nn_hvp_f64(ws, params, &b, dir, grad, hv);
}

static void check_layout(const char *spec, int n, int coupled) {
    mt_nn_net net;
    if (mt_nn_parse(&net, spec, "test") != MT_OK) fail_msg("%s: %s", spec, mt_error_message());
    size_t np = net.n_params, nx = (size_t)n * net.in_size, ny = (size_t)n * net.out_size;
    mt_nn_ws_f64 *ws;
    assert_int_equal(mt_nn_ws_create_f64(&ws, &net, n), MT_OK);
    double *p = xcalloc(np, sizeof(double)), *d = xcalloc(np, sizeof(double));
    double *g = xcalloc(np, sizeof(double)), *h = xcalloc(np, sizeof(double));
    double *g1 = xcalloc(np, sizeof(double)), *h1 = xcalloc(np, sizeof(double));
    double *gsum = xcalloc(np, sizeof(double)), *hsum = xcalloc(np, sizeof(double));
    double *x = xcalloc(nx, sizeof(double)), *y = xcalloc(ny, sizeof(double));
    double *xr = xcalloc(nx, sizeof(double)), *yr = xcalloc(ny, sizeof(double));
    int32_t *labels = xcalloc((size_t)n, sizeof(int32_t)), *lr = xcalloc((size_t)n, sizeof(int32_t));
    fd_random_params(&net, 3, p);
    fd_random_batch(&net, n, 3, x, y, labels);
    fd_fill_direction(d, np, 3, 9);
    double loss = pass(ws, &net, p, d, x, y, labels, 0, n, g, h), want = 0;
    if (!coupled) { /* the mean of the per-sample passes */
        for (int i = 0; i < n; i++) {
            want += pass(ws, &net, p, d, x, y, labels, i, 1, g1, h1) / n;
            for (size_t j = 0; j < np; j++) gsum[j] += g1[j] / n, hsum[j] += h1[j] / n;
        }
    } else { /* the same batch rotated by one (a reversal can map a wrong stride onto itself) */
        for (int i = 0; i < n; i++) {
            memcpy(xr + (size_t)i * net.in_size, x + (size_t)((i + 1) % n) * net.in_size, net.in_size * sizeof *x);
            memcpy(yr + (size_t)i * net.out_size, y + (size_t)((i + 1) % n) * net.out_size, net.out_size * sizeof *y);
            lr[i] = labels[(i + 1) % n];
        }
        want = pass(ws, &net, p, d, xr, yr, lr, 0, n, gsum, hsum);
    }
    double e_loss = fd_rel_err_scalar(loss, want), e_grad = fd_rel_err(g, gsum, np), e_hvp = fd_rel_err(h, hsum, np);
    if (!(e_loss <= 1e-12 && e_grad <= 1e-12 && e_hvp <= 1e-12))
        fail_msg("%s (batch %d, %s): loss %.3e, gradient %.3e, HVP %.3e", spec, n,
                 coupled ? "rotated batch" : "per-sample passes", e_loss, e_grad, e_hvp);
    mt_nn_ws_free_f64(ws);
    void *buffers[] = {p, d, g, h, g1, h1, gsum, hsum, x, y, xr, yr, labels, lr};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++) free(buffers[i]);
}

static void test_batch_layouts_keep_samples_apart(void **state) {
    check_layout("input 3x5x4, conv 2, relu, conv 3 s2, flatten, linear 3, xent", 4, 0);
    check_layout("input 2x4x4, relu, conv 2, maxpool, mse", 3, 0);
    check_layout("input 2x5x3, conv 3, avgpool, linear 2, xent", 3, 0);
    check_layout("input 3x3x3, conv 4 s2, mse", 2, 0);
    check_layout("input 1x28x28, conv 8 s2, relu, conv 8 s2, relu, flatten, linear 5, xent", 5, 0);
    check_layout("input 3x4x4, bn, conv 2, avgpool, bn, linear 2, mse", 3, 1);
    check_layout("input 2x3x4, conv 3 s2, flatten, bn, relu, linear 2, xent", 4, 1);
    check_layout("input 1x28x28, conv 8 s2, bn, relu, conv 8 s2, bn, relu, flatten, linear 5, xent", 5, 1);
}

/* Workspace plans (mt_nn_ws_plan) change where fields and activations live and how the batch is
 * cut, never the result. The reference is the plan the finite-difference tests check (ReLUs
 * keep their inputs); against it, loss, gradient and HVP with ReLUs in place, with every conv
 * layer rebuilding its fields one sample at a time, or a few samples at a time (ragged last
 * chunks), or keeping them but taking the input gradient in chunks, or keeping them only for
 * small batches (a capacity of 3000 entries: one or two samples, by layer), for the planned
 * batch and smaller ones. */
static void check_ws_plans(const char *spec, int n) {
    mt_nn_net net;
    if (mt_nn_parse(&net, spec, "test") != MT_OK) fail_msg("%s: %s", spec, mt_error_message());
    size_t np = net.n_params, nx = (size_t)n * net.in_size, ny = (size_t)n * net.out_size;
    const mt_nn_ws_plan plans[] = {
        MT_NN_WS_PLAN_DEFAULT, {0, 1, 0}, {0, 500, 1}, {(size_t)1 << 30, 1, 0}, {3000, 1, 0}};
    double *p = xcalloc(np, sizeof(double)), *d = xcalloc(np, sizeof(double));
    double *g0 = xcalloc(np, sizeof(double)), *h0 = xcalloc(np, sizeof(double));
    double *g = xcalloc(np, sizeof(double)), *h = xcalloc(np, sizeof(double));
    double *x = xcalloc(nx, sizeof(double)), *y = xcalloc(ny, sizeof(double));
    int32_t *labels = xcalloc((size_t)n, sizeof(int32_t));
    fd_random_params(&net, 5, p);
    fd_random_batch(&net, n, 5, x, y, labels);
    fd_fill_direction(d, np, 5, 9);
    enum { N_PLANS = sizeof plans / sizeof *plans };
    mt_nn_ws_f64 *ref, *ws[N_PLANS];
    assert_int_equal(fd_ws_create_keeping_relu_inputs(&ref, &net, n), MT_OK);
    for (int k = 0; k < N_PLANS; k++) assert_int_equal(mt_nn_ws_create_planned_f64(&ws[k], &net, n, &plans[k]), MT_OK);
    const int batches[] = {n, n - 1, 2, 1}; /* the planned batch, and smaller ones (other last chunks) */
    for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
        int m = batches[b];
        double loss0 = pass(ref, &net, p, d, x, y, labels, 0, m, g0, h0);
        for (int k = 0; k < N_PLANS; k++) {
            const mt_nn_ws_plan *pl = &plans[k];
            double loss = pass(ws[k], &net, p, d, x, y, labels, 0, m, g, h);
            double e_loss = fd_rel_err_scalar(loss, loss0), e_grad = fd_rel_err(g, g0, np),
                   e_hvp = fd_rel_err(h, h0, np);
            if (!(e_loss <= 1e-13 && e_grad <= 1e-13 && e_hvp <= 1e-13))
                fail_msg("%s (batch %d of %d, keep %zu, chunk %zu, ReLU inputs kept %d): loss %.3e, gradient %.3e, "
                         "HVP %.3e",
                         spec, m, n, pl->keep_fields, pl->chunk_fields, pl->keep_relu_inputs, e_loss, e_grad, e_hvp);
        }
    }
    mt_nn_ws_free_f64(ref);
    for (int k = 0; k < N_PLANS; k++) mt_nn_ws_free_f64(ws[k]);
    void *buffers[] = {p, d, g0, h0, g, h, x, y, labels};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++) free(buffers[i]);
}

static void test_ws_plans_agree(void **state) {
    check_ws_plans("input 1x28x28, conv 8 s2, bn, relu, conv 8 s2, bn, relu, conv 8 s2, flatten, linear 5, xent", 5);
    check_ws_plans("input 3x5x4, conv 2, relu, conv 3 s2, flatten, linear 3, xent", 4);
    check_ws_plans("input 2x40x33, conv 3, bn, relu, conv 2 s2, avgpool, linear 2, mse", 3);
    /* ReLUs: first (on the input: never in place), after a max-pool, twice in a row, right after
     * the image layers (on the batch-major copy: never in place), and last */
    check_ws_plans("input 2x6x6, relu, conv 3, maxpool, relu, relu, flatten, relu, linear 4, relu, mse", 3);
    check_ws_plans("input 10, linear 8, relu, bn, relu, linear 3, xent", 4);
}

/* ---- Spec parser ---- */

static void expect_rejected(const char *spec) {
    mt_nn_net net;
    mt_error_clear();
    mt_status st = mt_nn_parse(&net, spec, "model.spec");
    if (st != MT_ERR_CONFIG) fail_msg("'%s' gave %s, not a configuration error", spec, mt_status_name(st));
    /* The message names the source, so the user knows which setting to fix. */
    if (strstr(mt_error_message(), "model.spec") == NULL) fail_msg("'%s': message '%s'", spec, mt_error_message());
    mt_error_clear();
}

static void test_parse_rejects_bad_specs(void **state) {
    expect_rejected("input 3, linear 4, relu, sigmoid, linear 2, mse");       /* unknown item */
    expect_rejected("input 3, linear 4, relu, linear 2");                     /* missing loss */
    expect_rejected("linear 4, relu, linear 2, mse");                         /* missing input */
    expect_rejected("input 1x8x8, linear 4, conv 2, flatten, linear 2, mse"); /* conv after linear */
    expect_rejected("input 1x8x8, linear 4, relu, conv 2, flatten, linear 2, mse");
    expect_rejected("input 1x8x8, conv 2 s3, flatten, linear 2, mse"); /* bad stride */
    expect_rejected("input 1x8x8, conv 2 2, flatten, linear 2, mse");
    expect_rejected("input 1x8x8, conv, flatten, linear 2, mse");
    expect_rejected("input 3, linear 2, mse, relu"); /* loss not last */
    expect_rejected("input 3, mse");                 /* no parameters */
    expect_rejected("input 3, linear 1, xent");      /* softmax of one class */
    expect_rejected("input 3x4, linear 2, mse");     /* neither D nor CxHxW */
    expect_rejected("input 1x2x3x4, linear 2, mse");
    expect_rejected("input 0, linear 2, mse");
    expect_rejected("input 3, linear -2, mse");
    expect_rejected("input 3, , linear 2, mse");
    expect_rejected("input 3, input 3, linear 2, mse");
    expect_rejected("input 1x1x1, maxpool, linear 2, mse");
    expect_rejected("");
    /* embeddings: only right after input tokens, and input tokens only before one */
    expect_rejected("input 4, embed 10 3, linear 2, mse");
    expect_rejected("input tokens 4, linear 3, embed 10 3, linear 2, mse");
    expect_rejected("input tokens 4, linear 2, mse");
    expect_rejected("input tokens 4, mse");
    expect_rejected("input tokens 4, embed 10, linear 2, mse");
    expect_rejected("input tokens 4, embed 16777217 2, linear 2, mse");
    expect_rejected("input tokens 0, embed 10 3, linear 2, mse");
    expect_rejected("input tokens 4, embed 10 3, embed 10 3, linear 2, mse");
}

/* model.head_init_scale: the head's weights scaled, its bias and every other layer untouched. */
static void test_scale_head(void **state) {
    (void)state;
    mt_nn_net net;
    assert_int_equal(mt_nn_parse(&net, "input 3, linear 4, relu, linear 2, mse", "test"), MT_OK);
    float p[26], q[26];
    for (int i = 0; i < 26; i++) p[i] = q[i] = (float)(i + 1);
    mt_nn_scale_head(&net, 0.5, q);
    for (int i = 0; i < 26; i++) /* linear1: 12 + 4; linear2's weight: 8, then its bias: 2 */
        assert_true(q[i] == (i >= 16 && i < 24 ? p[i] * 0.5f : p[i]));
    mt_nn_scale_head(&net, 0, q);
    for (int i = 16; i < 24; i++) assert_true(q[i] == 0);
}

/* The task layout of a table of R rows moves every later tensor by (V − R)·D, and nothing else. */
static void test_parse_table_rows(void **state) {
    mt_nn_net net, small;
    assert_int_equal(mt_nn_parse(&net, "input tokens 7, embed 1000 8, relu, linear 3, xent", "test"), MT_OK);
    assert_int_equal(net.in_tokens, 1);
    assert_int_equal(net.in_size, 7);
    assert_int_equal(net.n_params, 1000 * 8 + 8 * 3 + 3);
    assert_int_equal(net.layers[0].kind, MT_NN_EMBED);
    assert_int_equal(net.layers[0].table_rows, 1000);
    mt_nn_net big; /* tables past the 2^20 that bounds other sizes, up to 2^24 rows */
    assert_int_equal(mt_nn_parse(&big, "input tokens 2, embed 16777216 1, linear 2, mse", "test"), MT_OK);
    mt_nn_with_table_rows(&net, 20, &small);
    assert_int_equal(small.n_params, 20 * 8 + 8 * 3 + 3);
    assert_int_equal(small.tensors[0].dims[0], 20);
    assert_int_equal(small.tensors[0].count, 160);
    assert_int_equal(small.tensors[1].offset, 160);
    assert_int_equal(small.layers[2].param_offset, 160);
    assert_string_equal(small.tensors[2].name, "linear1/bias");
    assert_int_equal(small.tensors[2].offset, 160 + 24);
}

static void test_parse_fourconv_layout(void **state) {
    mt_nn_net net;
    assert_int_equal(mt_nn_parse(&net,
                                 "input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "
                                 "conv 64 s2, bn, relu, conv 64 s2, bn, relu, flatten, linear 5, xent",
                                 "test"),
                     MT_OK);
    /* conv1 64·1·9 + 64 = 640; conv2..4 64·64·9 + 64 = 36,928 each = 110,784; bn1..4 4·(64+64) =
     * 512; 28 → 14 → 7 → 4 → 2, so linear1 reads 64·2·2 = 256: 256·5 + 5 = 1,285.
     * Total 640 + 110,784 + 512 + 1,285 = 113,221. */
    assert_int_equal(net.n_params, 113221);
    assert_int_equal(net.in_size, 784);
    assert_int_equal(net.out_size, 5);
    assert_int_equal(net.loss, MT_NN_LOSS_XENT);
    assert_int_equal(net.n_layers, 13); /* flatten is a view, not a layer */
    assert_int_equal(net.n_batchnorm, 4);
    assert_int_equal(net.n_param_layers, 9);
    int sizes[] = {14, 7, 4, 2};
    for (int k = 0; k < 4; k++) {
        const mt_nn_layer *conv = &net.layers[3 * k];
        assert_int_equal(conv->kind, MT_NN_CONV3X3);
        assert_int_equal(conv->stride, 2);
        assert_int_equal(conv->out_h, sizes[k]);
        assert_int_equal(conv->out_w, sizes[k]);
    }

    int t = mt_nn_find_tensor(&net, "conv1/weight");
    assert_int_equal(t, 0);
    assert_int_equal(net.tensors[t].offset, 0);
    assert_int_equal(net.tensors[t].count, 576);
    assert_int_equal(net.tensors[t].rank, 4);
    int dims[4] = {64, 1, 3, 3};
    for (int i = 0; i < 4; i++) assert_int_equal(net.tensors[t].dims[i], dims[i]);

    t = mt_nn_find_tensor(&net, "conv1/bias");
    assert_true(t >= 0);
    assert_int_equal(net.tensors[t].offset, 576);
    t = mt_nn_find_tensor(&net, "bn1/scale");
    assert_true(t >= 0);
    assert_int_equal(net.tensors[t].offset, 640);
    assert_int_equal(net.tensors[t].count, 64);
    t = mt_nn_find_tensor(&net, "bn1/shift");
    assert_true(t >= 0);
    assert_int_equal(net.tensors[t].offset, 704);
    t = mt_nn_find_tensor(&net, "conv4/weight");
    assert_true(t >= 0);
    assert_int_equal(net.tensors[t].count, 36864);
    assert_true(mt_nn_find_tensor(&net, "bn4/shift") >= 0);
    t = mt_nn_find_tensor(&net, "linear1/weight");
    assert_true(t >= 0);
    assert_int_equal(net.tensors[t].offset, 113221 - 1285);
    assert_int_equal(net.tensors[t].dims[0], 5);
    assert_int_equal(net.tensors[t].dims[1], 256);
    t = mt_nn_find_tensor(&net, "linear1/bias");
    assert_true(t >= 0);
    assert_int_equal(net.tensors[t].offset, 113221 - 5);
    assert_int_equal(net.tensors[t].count, 5);
    assert_int_equal(mt_nn_find_tensor(&net, "conv5/weight"), -1);
    assert_int_equal(mt_nn_find_tensor(&net, "bn1"), -1);
    assert_int_equal(net.n_tensors, 18);

    /* Tensors tile the flat buffer exactly, in order. */
    size_t next = 0;
    for (int i = 0; i < net.n_tensors; i++) {
        assert_int_equal(net.tensors[i].offset, next);
        next += net.tensors[i].count;
    }
    assert_int_equal(next, net.n_params);

    size_t begin, end;
    mt_nn_head_range(&net, &begin, &end);
    assert_int_equal(begin, 113221 - 1285);
    assert_int_equal(end, 113221);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep printed errors in order with cmocka's stderr */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_float_agrees_with_double_on_layers),
        cmocka_unit_test(test_float_agrees_with_double_on_networks),
        cmocka_unit_test(test_conv_forward_matches_reference),
        cmocka_unit_test(test_ws_plans_agree),
        cmocka_unit_test(test_batch_layouts_keep_samples_apart),
        cmocka_unit_test(test_conv_reference_by_hand),
        cmocka_unit_test(test_parse_rejects_bad_specs),
        cmocka_unit_test(test_parse_table_rows),
        cmocka_unit_test(test_scale_head),
        cmocka_unit_test(test_parse_fourconv_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
