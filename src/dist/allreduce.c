/* The reproducible allreduce of per-task meta-gradients.
 *
 * 1. Each rank finds, per group, the largest binary exponent among its tasks' entries.
 * 2. MPI_Allreduce(MPI_MAX) shares them (with the error, stop and non-finite flags).
 * 3. Each entry becomes round(x · 2^s) in int64, s chosen so that the sum of n_total entries of
 *    magnitude < 2^E cannot exceed 2^62; the rank adds its tasks as integers.
 * 4. The int64 sum over all ranks: through shared memory within a node and MPI_Allreduce among
 *    nodes (node_sum.c), or MPI_Allreduce(MPI_SUM); integer addition is associative, so the sum
 *    is the same for every rank count and reduction tree. 5. One conversion back to float.
 * Entries within about 2^-30 of their group's largest keep full float precision.
 * The largest exponent is that of the largest magnitude (frexp is monotone in |x|), and scaling
 * by a power of two is exact, so the loops below need no libm call per entry. */
#include "metatrain/dist.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "core/kernel.h"

enum { FLAG_ERROR, FLAG_OK, FLAG_STOP, FLAG_NONFINITE, N_FLAGS };
#define NO_EXPONENT (INT_MIN / 2) /* a group of zeros */

mt_status mt_dist_reducer_init(mt_dist_reducer *r, size_t n, int n_groups, const size_t *group_begin,
                               mt_dist_node_sum *node_sum) {
    memset(r, 0, sizeof *r);
    if (node_sum && node_sum->n != n) return MT_RAISE(MT_ERR_ARG, "the node sum holds %zu values, not %zu", node_sum->n, n);
    r->n = n;
    r->n_groups = n_groups;
    r->node_sum = node_sum;
    r->group_begin = malloc(((size_t)n_groups + 1) * sizeof *r->group_begin);
    r->exponents = malloc(((size_t)n_groups + N_FLAGS) * sizeof *r->exponents);
    r->fixed = node_sum ? NULL : malloc((n ? n : 1) * sizeof *r->fixed);
    if (!r->group_begin || !r->exponents || (!node_sum && !r->fixed)) {
        mt_dist_reducer_free(r);
        return MT_RAISE(MT_ERR_NOMEM, "out of memory for the reduction buffers");
    }
    memcpy(r->group_begin, group_begin, ((size_t)n_groups + 1) * sizeof *group_begin);
    return MT_OK;
}

void mt_dist_reducer_free(mt_dist_reducer *r) {
    free(r->group_begin);
    free(r->exponents);
    free(r->fixed);
    memset(r, 0, sizeof *r);
}

static int ceil_log2(int n) {
    int bits = 0;
    while ((1LL << bits) < n) bits++;
    return bits;
}

/* The shift s for a group whose entries are below 2^E in magnitude, summed n_total times. */
static int group_shift(int exponent, int n_total) { return 62 - exponent - ceil_log2(n_total) - 1; }

/* The largest |v[i]| as its IEEE bits: for non-negative floats the bit patterns order as the
 * values do, with +inf and NaN above every finite one, and integer max vectorizes where float
 * max (NaN-aware) does not. */
MT_KERNEL static uint32_t largest_magnitude_bits(const float *restrict v, size_t n, uint32_t largest) {
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, v + i, sizeof bits);
        bits &= 0x7fffffffu;
        largest = bits > largest ? bits : largest;
    }
    return largest;
}

/* fixed[i] += round(v[i] · scale), rounding to nearest even; |v[i] · scale| < 2^62 and exact in
 * double, so this is llrint's value. AVX-512DQ converts eight doubles to int64 at once; the
 * compilers do not vectorize llrint, hence the intrinsics, which take the whole multiples of 8. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512dq"))) static size_t add_fixed_avx512(int64_t *restrict fixed,
                                                                        const float *restrict v,
                                                                        size_t n, double scale) {
    __m512d s = _mm512_set1_pd(scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512i q = _mm512_cvtpd_epi64(_mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(v + i)), s));
        _mm512_storeu_si512(fixed + i, _mm512_add_epi64(_mm512_loadu_si512(fixed + i), q));
    }
    return i;
}
#endif

static void add_fixed(int64_t *restrict fixed, const float *restrict v, size_t n, double scale) {
    size_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    static int have_avx512dq = -1; /* asked once */
    if (have_avx512dq < 0) have_avx512dq = __builtin_cpu_supports("avx512dq") != 0;
    if (have_avx512dq) i = add_fixed_avx512(fixed, v, n, scale);
#endif
    for (; i < n; i++) fixed[i] += llrint((double)v[i] * scale);
}

/* sum[i] = fixed[i] · unscale, through double: exact for |fixed| < 2^53, one rounding to float. */
MT_KERNEL static void from_fixed(float *restrict sum, const int64_t *restrict fixed, size_t n, double unscale) {
    for (size_t i = 0; i < n; i++) sum[i] = (float)((double)fixed[i] * unscale);
}

mt_status mt_dist_reduce(const mt_dist *d, mt_dist_reducer *r, const float *vectors, int n_local,
                         int n_total, mt_dist_flags flags, float *sum, mt_dist_outcome *outcome) {
    int G = r->n_groups, *e = r->exponents;
    int nonfinite = 0;
    for (int g = 0; g < G; g++) {
        size_t begin = r->group_begin[g], len = r->group_begin[g + 1] - begin;
        uint32_t largest_bits = 0;
        for (int t = 0; t < n_local && !flags.local_error; t++)
            largest_bits = largest_magnitude_bits(vectors + (size_t)t * r->n + begin, len, largest_bits);
        float largest;
        memcpy(&largest, &largest_bits, sizeof largest);
        nonfinite |= !(largest <= FLT_MAX); /* NaN or ±inf */
        int ex = NO_EXPONENT;
        if (largest > 0 && largest <= FLT_MAX) frexpf(largest, &ex); /* every |v| < 2^ex */
        e[g] = ex;
    }
    e[G + FLAG_ERROR] = flags.local_error != 0;
    e[G + FLAG_OK] = flags.local_error == 0;
    e[G + FLAG_STOP] = flags.stop;
    e[G + FLAG_NONFINITE] = nonfinite;
    if (MPI_Allreduce(MPI_IN_PLACE, e, G + N_FLAGS, MPI_INT, MPI_MAX, d->comm) != MPI_SUCCESS)
        return MT_RAISE(MT_ERR_MPI, "MPI_Allreduce of exponents failed");
    memset(outcome, 0, sizeof *outcome);
    outcome->any_error = e[G + FLAG_ERROR];
    outcome->all_error = e[G + FLAG_ERROR] && !e[G + FLAG_OK];
    outcome->stop = e[G + FLAG_STOP];
    outcome->nonfinite = e[G + FLAG_NONFINITE];
    if (outcome->any_error || outcome->nonfinite) return MT_OK; /* a stop still completes the sum */

    int64_t *fixed = r->node_sum ? r->node_sum->own : r->fixed;
    memset(fixed, 0, r->n * sizeof *fixed);
    for (int g = 0; g < G; g++) {
        if (e[g] == NO_EXPONENT) continue;
        double scale = ldexp(1.0, group_shift(e[g], n_total));
        size_t begin = r->group_begin[g], len = r->group_begin[g + 1] - begin;
        for (int t = 0; t < n_local; t++)
            add_fixed(fixed + begin, vectors + (size_t)t * r->n + begin, len, scale);
    }
    const int64_t *total = fixed;
    if (r->node_sum)
        total = mt_dist_node_sum_run(d, r->node_sum);
    else if (MPI_Allreduce(MPI_IN_PLACE, fixed, (int)r->n, MPI_INT64_T, MPI_SUM, d->comm) != MPI_SUCCESS)
        return MT_RAISE(MT_ERR_MPI, "MPI_Allreduce of the meta-gradient failed");
    for (int g = 0; g < G; g++) {
        double unscale = ldexp(1.0, e[g] == NO_EXPONENT ? 0 : -group_shift(e[g], n_total));
        size_t begin = r->group_begin[g];
        from_fixed(sum + begin, total + begin, r->group_begin[g + 1] - begin, unscale);
    }
    return MT_OK;
}
