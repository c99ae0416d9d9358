/* The passes never allocate: after the workspace is planned, forward (mt_nn_loss), backward
 * (mt_nn_grad) and HVP (mt_nn_hvp) run on its buffers alone. The executable interposes the
 * malloc family with counting wrappers that forward to glibc's own entry points, so every
 * allocation in the process (the engine, OpenBLAS, libc) passes through them. It also wraps the
 * two GEMMs the engine calls, so that a failure says whether the engine's code or the BLAS
 * underneath it allocated, and for which product shapes. The model API (metatrain/model.h)
 * keeps the same promise once mt_model_open has planned its memory: adapt and predict run on it. */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <dlfcn.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fd_check.h"
#include "metatrain/model.h"
#include "model_fixture.h"

#include <cblas.h>
#undef I /* complex.h's imaginary unit, which cblas.h pulls in */

/* glibc's allocator under its internal names, which interposing malloc does not replace. */
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t alignment, size_t size);

static atomic_int counting, in_blas;
static atomic_long n_calls, n_calls_in_blas;

static inline void note(void) {
    if (atomic_load_explicit(&counting, memory_order_relaxed)) {
        atomic_fetch_add(&n_calls, 1);
        if (atomic_load_explicit(&in_blas, memory_order_relaxed)) atomic_fetch_add(&n_calls_in_blas, 1);
    }
}

void *malloc(size_t size) {
    note();
    return __libc_malloc(size);
}

void *calloc(size_t n, size_t size) {
    note();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size) {
    note();
    return __libc_realloc(p, size);
}

void free(void *p) {
    if (p) note();
    __libc_free(p);
}

void *aligned_alloc(size_t alignment, size_t size) {
    note();
    return __libc_memalign(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    note();
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    note();
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    void *p = __libc_memalign(alignment, size);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

/* ---- GEMM wrappers: the engine's calls bind to these, which call OpenBLAS's. ---- */

typedef void sgemm_fn(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint, blasint, float,
                      const float *, blasint, const float *, blasint, float, float *, blasint);
typedef void dgemm_fn(enum CBLAS_ORDER, enum CBLAS_TRANSPOSE, enum CBLAS_TRANSPOSE, blasint, blasint, blasint, double,
                      const double *, blasint, const double *, blasint, double, double *, blasint);
static sgemm_fn *real_sgemm;
static dgemm_fn *real_dgemm;

/* Product shapes (row-major, as the engine asks) during which the allocator was called. */
typedef struct {
    char precision;
    int ta, tb, M, N, K;
    long calls;
} gemm_shape;
static gemm_shape alloc_shapes[64];
static atomic_int n_alloc_shapes;

static void record_shape(char precision, int ta, int tb, int M, int N, int K, long calls) {
    int n = atomic_load(&n_alloc_shapes);
    for (int i = 0; i < n; i++) {
        gemm_shape *s = &alloc_shapes[i];
        if (s->precision == precision && s->ta == ta && s->tb == tb && s->M == M && s->N == N && s->K == K) {
            s->calls += calls;
            return;
        }
    }
    if (n < 64) alloc_shapes[n] = (gemm_shape){precision, ta, tb, M, N, K, calls}, atomic_store(&n_alloc_shapes, n + 1);
}

#define GEMM_WRAPPER(name, real, type, letter)                                                                         \
    void name(const enum CBLAS_ORDER order, const enum CBLAS_TRANSPOSE ta, const enum CBLAS_TRANSPOSE tb,              \
              const blasint M, const blasint N, const blasint K, const type alpha, const type *A, const blasint lda,   \
              const type *B, const blasint ldb, const type beta, type *C, const blasint ldc) {                         \
        long before = atomic_load(&n_calls);                                                                           \
        atomic_store(&in_blas, 1);                                                                                     \
        real(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);                                             \
        atomic_store(&in_blas, 0);                                                                                     \
        long calls = atomic_load(&n_calls) - before;                                                                   \
        if (calls) record_shape(letter, ta == CblasTrans, tb == CblasTrans, M, N, K, calls);                           \
    }
GEMM_WRAPPER(cblas_sgemm, real_sgemm, float, 's')
GEMM_WRAPPER(cblas_dgemm, real_dgemm, double, 'd')

static void count_begin(void) {
    atomic_store(&n_calls, 0);
    atomic_store(&n_calls_in_blas, 0);
    atomic_store(&n_alloc_shapes, 0);
    atomic_store(&counting, 1);
}

static long count_end(void) {
    atomic_store(&counting, 0);
    return atomic_load(&n_calls);
}

/* Through volatile pointers, so the compiler cannot elide a malloc/free pair it can see. */
static void *(*volatile call_malloc)(size_t) = malloc;
static void *(*volatile call_calloc)(size_t, size_t) = calloc;
static void *(*volatile call_realloc)(void *, size_t) = realloc;
static void (*volatile call_free)(void *) = free;
static int (*volatile call_posix_memalign)(void **, size_t, size_t) = posix_memalign;

/* The counter is live: it sees allocations made inside the counted region, one by one. */
static void test_counter_sees_allocations(void **state) {
    count_begin();
    void *p = call_malloc(64);
    long after_malloc = count_end();
    assert_non_null(p);
    assert_int_equal(after_malloc, 1);

    count_begin();
    p = call_realloc(p, 4096);
    void *q = call_calloc(8, 8);
    void *r = NULL;
    int rc = call_posix_memalign(&r, 64, 256);
    call_free(p);
    call_free(q);
    call_free(r);
    long after_rest = count_end();
    assert_int_equal(rc, 0);
    assert_int_equal(after_rest, 6);

    count_begin();
    void *s = call_malloc(16);
    count_end();
    call_free(s); /* outside the region: not counted */
    assert_int_equal(count_end(), 1);
}

/* It also sees the engine's own allocations (the library, not just this file): planning a
 * workspace allocates, and is counted. */
static void test_counter_sees_engine_allocations(void **state) {
    mt_nn_net net;
    assert_int_equal(mt_nn_parse(&net, "input 3, linear 4, relu, linear 2, mse", "test"), MT_OK);
    mt_nn_ws *ws = NULL;
    count_begin();
    mt_status st = mt_nn_ws_create(&ws, &net, 4);
    long created = count_end();
    assert_int_equal(st, MT_OK);
    assert_true(created >= 2);
    count_begin();
    mt_nn_ws_free(ws);
    assert_true(count_end() >= 2);
}

#define PASSES_OF(type, suffix)                                                                                        \
    static long passes##suffix(const mt_nn_net *net, int n, int repeats) {                                             \
        size_t np = net->n_params, nx = (size_t)n * net->in_size, ny = (size_t)n * net->out_size;                      \
        double *pd = calloc(np, sizeof(double)), *xd = calloc(nx, sizeof(double));                                     \
        double *yd = calloc(ny, sizeof(double));                                                                       \
        type *p = calloc(np, sizeof(type)), *d = calloc(np, sizeof(type)), *x = calloc(nx, sizeof(type));              \
        type *y = calloc(ny, sizeof(type)), *g = calloc(np, sizeof(type)), *hv = calloc(np, sizeof(type));             \
        int32_t *labels = calloc((size_t)n, sizeof(int32_t));                                                          \
        assert_true(pd &&xd &&yd &&p &&d &&x &&y &&g &&hv &&labels);                                                   \
        fd_random_params(net, 3, pd);                                                                                  \
        fd_random_batch(net, n, 3, xd, yd, labels);                                                                    \
        for (size_t i = 0; i < np; i++) p[i] = (type)pd[i], d[i] = (type)(pd[i] * 0.1);                                \
        for (size_t i = 0; i < nx; i++) x[i] = (type)xd[i];                                                            \
        for (size_t i = 0; i < ny; i++) y[i] = (type)yd[i];                                                            \
        mt_nn_ws##suffix *ws;                                                                                          \
        assert_int_equal(mt_nn_ws_create##suffix(&ws, net, n), MT_OK);                                                 \
        mt_nn_batch##suffix batch = {.x = x, .y = y, .labels = labels, .n = n};                                        \
        mt_nn_batch##suffix smaller = batch;                                                                           \
        smaller.n = n > 1 ? n - 1 : 1;                                                                                 \
        /* Warm-up: OpenBLAS may set up its buffers on its first calls. */                                             \
        mt_nn_loss##suffix(ws, p, &batch);                                                                             \
        mt_nn_grad##suffix(ws, p, &batch, g);                                                                          \
        mt_nn_hvp##suffix(ws, p, &batch, d, g, hv);                                                                    \
        double sink = 0;                                                                                               \
        count_begin();                                                                                                 \
        for (int r = 0; r < repeats; r++) {                                                                            \
            sink += mt_nn_loss##suffix(ws, p, &batch);                                                                 \
            sink += mt_nn_grad##suffix(ws, p, &batch, g);                                                              \
            sink += mt_nn_hvp##suffix(ws, p, &batch, d, g, hv);                                                        \
            sink += mt_nn_hvp##suffix(ws, p, &smaller, d, g, hv); /* fewer samples than planned */                     \
        }                                                                                                              \
        long calls = count_end();                                                                                      \
        assert_true(sink == sink); /* the passes ran and produced numbers */                                           \
        mt_nn_ws_free##suffix(ws);                                                                                     \
        void *buffers[] = {pd, xd, yd, p, d, x, y, g, hv, labels};                                                     \
        for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++) free(buffers[i]);                                \
        return calls;                                                                                                  \
    }
PASSES_OF(float, )
PASSES_OF(double, _f64)

/* Prints the GEMM shapes that allocated in the last counted region. */
static void print_alloc_shapes(void) {
    for (int i = 0; i < atomic_load(&n_alloc_shapes); i++) {
        const gemm_shape *s = &alloc_shapes[i];
        printf("    allocating %cgemm: C(%d,%d) = %sA · %sB, K = %d: %ld allocator calls\n", s->precision, s->M, s->N,
               s->ta ? "ᵀ" : "", s->tb ? "ᵀ" : "", s->K, s->calls);
    }
}

/* Runs the passes in both precisions; prints what allocated and returns whether nothing did. */
static int no_allocations(const char *spec, int n, int repeats) {
    mt_nn_net net;
    if (mt_nn_parse(&net, spec, "test") != MT_OK) fail_msg("%s: %s", spec, mt_error_message());
    long total[2] = {0, 0}, blas[2] = {0, 0};
    for (int precision = 0; precision < 2; precision++) {
        total[precision] = precision ? passes_f64(&net, n, repeats) : passes(&net, n, repeats);
        blas[precision] = atomic_load(&n_calls_in_blas);
        printf("%-64s B=%-2d %s, %d x (loss, grad, HVP, HVP): %ld allocator calls, %ld of them inside GEMM\n", spec, n,
               precision ? "f64" : "f32", repeats, total[precision], blas[precision]);
        print_alloc_shapes();
    }
    /* The engine's own code, and the BLAS underneath it: an allocating GEMM breaks the promise as
     * surely as the engine would. */
    if (total[0] != blas[0] || total[1] != blas[1])
        printf("FAIL: the engine's own code called the allocator %ld (float) and %ld (double) times\n",
               total[0] - blas[0], total[1] - blas[1]);
    if (blas[0] != 0 || blas[1] != 0)
        printf("FAIL: GEMM (OpenBLAS, core %s) called the allocator %ld (float) and %ld (double) times\n",
               openblas_get_corename(), blas[0], blas[1]);
    return total[0] == 0 && total[1] == 0;
}

static void test_mlp_and_small_conv_passes_do_not_allocate(void **state) {
    int ok = no_allocations("input 1, linear 40, relu, linear 40, relu, linear 1, mse", 10, 200);
    ok &= no_allocations("input 10, linear 10, relu, linear 1, mse", 10, 200);
    ok &= no_allocations("input 2x5x5, conv 3 s2, bn, relu, maxpool, avgpool, linear 3, xent", 4, 100);
    if (!ok) fail_msg("the passes allocated (see above)");
}

static void test_fourconv_passes_do_not_allocate(void **state) {
    int ok = no_allocations("input 1x28x28, conv 64 s2, bn, relu, conv 64 s2, bn, relu, conv 64 s2, bn, relu, "
                            "conv 64 s2, bn, relu, flatten, linear 5, xent",
                            5, 5);
    if (!ok) fail_msg("the passes allocated (see above)");
}

/* ---- the model API: after mt_model_open plans everything, adapting and predicting never
 * allocate (metatrain/model.h). ---- */

static char model_dir[64];

static int make_model_dir(void **state) {
    snprintf(model_dir, sizeof model_dir, "/tmp/mt_noalloc_XXXXXX");
    return mkdtemp(model_dir) ? 0 : -1;
}

/* Counts the allocator calls of `repeats` rounds of adapt, predict, reset, predict and a refused
 * adapt (a refusal records its message in place), on a checkpoint of `spec` under `algorithm`. */
static long model_calls(const char *algorithm, const char *spec, const char *const *sets, int rows, int repeats) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s.h5", model_dir, algorithm);
    mfx_def def = {algorithm, spec, {NULL}, 5, 100};
    for (int i = 0; sets && sets[i] && i < MFX_MAX_SETS; i++) def.sets[i] = sets[i];
    mfx_model *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    if (mfx_make(fx, &def, path) != MT_OK) fail_msg("%s: %s", spec, mt_error_message());
    mt_model *m = NULL;
    count_begin(); /* opening plans the memory, and the counter sees it do so */
    mt_status st = mt_model_open(&m, path, &(mt_model_options){.max_batch = rows});
    long opening = count_end();
    if (st != MT_OK) fail_msg("%s", mt_error_message());
    assert_true(opening > 0);
    mt_model_info info;
    mt_model_describe(m, &info);
    size_t in = info.input_size, out = info.outputs;
    double *xd = calloc((size_t)rows * in, sizeof(double)), *yd = calloc((size_t)rows * out, sizeof(double));
    float *x = calloc((size_t)rows * in, sizeof(float)), *y = calloc((size_t)rows * out, sizeof(float));
    float *bad = calloc((size_t)rows * in, sizeof(float)), *pred = calloc((size_t)rows * out, sizeof(float));
    int32_t *labels = calloc((size_t)rows, sizeof(int32_t)), *classes = calloc((size_t)rows, sizeof(int32_t));
    assert_true(xd && yd && x && y && bad && pred && labels && classes);
    fd_random_batch(&fx->net, rows, 9, xd, yd, labels);
    fd_to_float(x, xd, (size_t)rows * in);
    fd_to_float(y, yd, (size_t)rows * out);
    memcpy(bad, x, (size_t)rows * in * sizeof *bad);
    bad[in] = NAN;
    mt_model_batch support = {.x = x, .labels = labels, .targets = y, .rows = rows};
    mt_model_batch refused = support;
    refused.x = bad;
    /* Warm-up: OpenBLAS may set up its buffers on its first calls. */
    assert_int_equal(mt_model_adapt(m, &support), MT_OK);
    assert_int_equal(mt_model_predict(m, x, rows, pred, classes), MT_OK);
    assert_int_equal(mt_model_adapt(m, &refused), MT_ERR_ARG);
    int ok = 1;
    count_begin();
    for (int r = 0; r < repeats; r++) {
        ok &= mt_model_adapt(m, &support) == MT_OK;
        ok &= mt_model_predict(m, x, rows, pred, classes) == MT_OK;
        ok &= mt_model_predict(m, x, rows - 1, pred, NULL) == MT_OK; /* fewer rows than planned */
        mt_model_reset(m);
        ok &= mt_model_predict(m, x, rows, pred, classes) == MT_OK;
        ok &= mt_model_adapt(m, &refused) == MT_ERR_ARG;
    }
    long calls = count_end();
    assert_true(ok);
    printf("%-58s %-7s B=%-2d %d x (adapt, predict, predict, reset, predict, refused adapt): %ld allocator calls, "
           "%ld of them inside GEMM\n",
           spec, algorithm, rows, repeats, calls, (long)atomic_load(&n_calls_in_blas));
    print_alloc_shapes();
    mt_model_close(m);
    void *buffers[] = {xd, yd, x, y, bad, pred, labels, classes};
    for (size_t i = 0; i < sizeof buffers / sizeof *buffers; i++) free(buffers[i]);
    mfx_free(fx);
    free(fx);
    remove(path);
    return calls;
}

static void test_model_adapt_and_predict_do_not_allocate(void **state) {
    const char *conv[] = {"task.kind=episodes", "task.ways=3", "task.path=/nonexistent/images.h5", NULL};
    long calls = model_calls("metasgd", MFX_MLP, NULL, 10, 50);
    calls += model_calls("mamlpp", MFX_MLP, (const char *[]){"eval.steps=5", NULL}, 10, 20);
    calls += model_calls("mamlpp-metasgd", MFX_MLP, (const char *[]){"eval.steps=5", NULL}, 10, 20);
    calls += model_calls("imaml", MFX_MLP, NULL, 10, 20);
    calls += model_calls("maml", MFX_CONV, conv, 6, 20);
    calls += model_calls("anil", MFX_CONV, conv, 6, 20);
    if (calls) fail_msg("the model API allocated (see above)");
}

static int remove_model_dir(void **state) { return rmdir(model_dir); }

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep printed errors in order with cmocka's stderr */
    /* Naming OpenBLAS here also keeps it linked: every other call to it goes through the wrappers. */
    printf("BLAS: %s, core %s\n", openblas_get_config(), openblas_get_corename());
    real_sgemm = (sgemm_fn *)dlsym(RTLD_NEXT, "cblas_sgemm");
    real_dgemm = (dgemm_fn *)dlsym(RTLD_NEXT, "cblas_dgemm");
    if (!real_sgemm || !real_dgemm) {
        fprintf(stderr, "cannot find OpenBLAS's cblas_sgemm/cblas_dgemm: %s\n", dlerror());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_sees_allocations),
        cmocka_unit_test(test_counter_sees_engine_allocations),
        cmocka_unit_test(test_mlp_and_small_conv_passes_do_not_allocate),
        cmocka_unit_test(test_fourconv_passes_do_not_allocate),
        cmocka_unit_test(test_model_adapt_and_predict_do_not_allocate),
    };
    return cmocka_run_group_tests(tests, make_model_dir, remove_model_dir);
}
