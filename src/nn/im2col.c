/* The receptive fields of a 3x3 convolution with padding 1, stride 1 or 2 (im2col), and their
 * adjoint (col2im), on channel-major activations: x (C, B, H, W), col (C·9, nb·P) with
 * P = Ho·Wo. Four routes, one result: stride 2 on planes at most 16 wide permutes whole rows in
 * AVX-512 registers where the CPU has it; other stride-2 small planes copy from the four phase
 * planes (even/odd rows × even/odd columns), where every tap is a contiguous block; stride 1 on
 * small planes gathers through tap tables (an input index per output, −1 for padding); large
 * planes go row by row. src/nn/conv.c runs the GEMMs on what these build. */
#include "metatrain/nn.h"
#include "nn/im2col.h"
#include "core/precision.h"

#include <stdint.h>
#include <string.h>

static inline int out_size(int n, int stride) { return (n - 1) / stride + 1; }

/* The output columns ox whose input column ox·stride + kx − 1 lies inside [0, W): [*lo, *hi). */
static void valid_columns(int Wd, int Wo, int kx, int stride, int *lo, int *hi) {
    *lo = kx == 0 ? 1 : 0;         /* only kx = 0 reaches column −1, at ox = 0 */
    int last = (Wd - kx) / stride; /* largest ox with ox·stride + kx − 1 <= W − 1 */
    *hi = last + 1 < Wo ? last + 1 : Wo;
}

/* Small planes (the usual few-shot images after a stride or two) have rows of 2 to 14 outputs,
 * where per-row loops are mostly overhead: they take the phase or tap-table routes. */
#define TAP_TABLE_MAX 1024

/* The route a plane takes: phase planes for stride 2 on small planes (a phase row is at most 32
 * wide, the stack buffers' bound); otherwise tap tables up to TAP_TABLE_MAX outputs, then rows.
 * im2col and its adjoint must agree. */
static int phase_route(int stride, int P, int Wo) { return stride == 2 && P <= TAP_TABLE_MAX && Wo <= 32; }

/* tab[p] = the offset within an input plane that output p of tap (ky, kx) reads, or −1 (padding) */
static void tap_table(int32_t *tab, int H, int Wd, int Ho, int Wo, int ky, int kx, int stride) {
    for (int oy = 0; oy < Ho; oy++)
        for (int ox = 0; ox < Wo; ox++) {
            int iy = oy * stride + ky - 1, ix = ox * stride + kx - 1;
            tab[oy * Wo + ox] = iy >= 0 && iy < H && ix >= 0 && ix < Wd ? iy * Wd + ix : -1;
        }
}

/* The nine taps' tables */
static void tap_tables(int32_t tab[9][TAP_TABLE_MAX], int H, int Wd, int Ho, int Wo, int stride) {
    for (int k = 0; k < 9; k++) tap_table(tab[k], H, Wd, Ho, Wo, k / 3, k % 3, stride);
}

/* Stride 2, small planes: an input plane splits into four phase planes, x[2i+a][2j+b] for a, b in
 * {0, 1}, each laid out as Ho rows of Wo after one guard entry and one row of zeros. Every tap
 * then reads one phase plane shifted by at most one row and one column, so its Ho·Wo outputs are
 * one contiguous copy (and its adjoint one contiguous add); only the left padding column of the
 * kx = 0 taps needs fixing. Entries past the plane's edge (odd H or W) stay zero. */
#define PHASE_AT(ph, P, Wo, a, b) ((ph) + (size_t)((a)*2 + (b)) * ((P) + (Wo) + 1) + 1 + (Wo))

/* Phase (a, b) and row/column shift (−1 or 0) that tap (ky, kx) reads: ky = 0 reads row 2·oy − 1,
 * which is phase row oy − 1 of the odd rows; ky = 1 row 2·oy (even, oy); ky = 2 row 2·oy + 1. */
static const int tap_phase[3] = {1, 0, 1}, tap_shift[3] = {-1, 0, 0};

/* The taps' copies and adds are a few to a few hundred entries each: GCC would turn them into
 * calls to memcpy and memset, whose start-up costs more than such a copy. */
#if defined(__clang__) /* no such attribute (scripts/fuzz builds with clang): it would warn */
#define NO_MEMCPY_CALLS
#else
#define NO_MEMCPY_CALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#endif

/* Each input row is read once and dealt to the two phases of its parity: even columns to b = 0,
 * odd ones to b = 1. */
MT_KERNEL NO_MEMCPY_CALLS static void split_phases(mt_real *ph, const mt_real *xn, int H, int Wd, int Ho, int Wo) {
    int P = Ho * Wo, pairs = Wd / 2;
    for (int a = 0; a < 2; a++) {
        mt_real *restrict even = PHASE_AT(ph, P, Wo, a, 0), *restrict odd = PHASE_AT(ph, P, Wo, a, 1);
        int rows = (H - a + 1) / 2;                                           /* the phase's real rows */
        for (int j = 0; j <= Wo; j++) even[j - Wo - 1] = odd[j - Wo - 1] = 0; /* guard and zero row */
        for (int i = 0; i < rows; i++) {
            const mt_real *restrict src = xn + (2 * i + a) * Wd;
            mt_real *restrict e = even + i * Wo, *restrict o = odd + i * Wo;
            for (int j = 0; j < pairs; j++) {
                e[j] = src[2 * j];
                o[j] = src[2 * j + 1];
            }
            if (Wd % 2) e[pairs] = src[Wd - 1], o[pairs] = 0; /* odd width: the last column is even */
        }
        for (int p = rows * Wo; p < P; p++) even[p] = odd[p] = 0;
    }
}

/* x plane = the phase planes interleaved back (each input entry lies in exactly one phase) */
MT_KERNEL NO_MEMCPY_CALLS static void merge_phases(mt_real *xn, const mt_real *ph, int H, int Wd, int Ho, int Wo) {
    int P = Ho * Wo, pairs = Wd / 2;
    for (int a = 0; a < 2; a++) {
        const mt_real *restrict even = PHASE_AT(ph, P, Wo, a, 0), *restrict odd = PHASE_AT(ph, P, Wo, a, 1);
        for (int i = 0; i < (H - a + 1) / 2; i++) {
            mt_real *restrict dst = xn + (2 * i + a) * Wd;
            const mt_real *restrict e = even + i * Wo, *restrict o = odd + i * Wo;
            for (int j = 0; j < pairs; j++) {
                dst[2 * j] = e[j];
                dst[2 * j + 1] = o[j];
            }
            if (Wd % 2) dst[Wd - 1] = e[pairs];
        }
    }
}

static const mt_real *tap_source(const mt_real *ph, int P, int Wo, int ky, int kx) {
    return PHASE_AT(ph, P, Wo, tap_phase[ky], tap_phase[kx]) + tap_shift[ky] * Wo + tap_shift[kx];
}

MT_KERNEL NO_MEMCPY_CALLS static void im2col_stride2(mt_real *col, size_t ld, const mt_real *x, int B, int nb, int C,
                                                     int H, int Wd) {
    int Ho = out_size(H, 2), Wo = out_size(Wd, 2), P = Ho * Wo;
    size_t HW = (size_t)H * Wd;
    mt_real ph[4 * (TAP_TABLE_MAX + 2 * 32 + 1)];
    for (int c = 0; c < C; c++)
        for (int n = 0; n < nb; n++) {
            split_phases(ph, x + ((size_t)c * B + n) * HW, H, Wd, Ho, Wo);
            for (int k = 0; k < 9; k++) {
                const mt_real *restrict src = tap_source(ph, P, Wo, k / 3, k % 3);
                mt_real *restrict out = col + (size_t)(c * 9 + k) * ld + (size_t)n * P;
                for (int p = 0; p < P; p++) out[p] = src[p];
                if (k % 3 == 0)
                    for (int oy = 0; oy < Ho; oy++) out[oy * Wo] = 0; /* column −1 is padding */
            }
        }
}

MT_KERNEL NO_MEMCPY_CALLS static void col2im_stride2(mt_real *x, int B, int nb, const mt_real *col, size_t ld, int C,
                                                     int H, int Wd) {
    int Ho = out_size(H, 2), Wo = out_size(Wd, 2), P = Ho * Wo;
    size_t HW = (size_t)H * Wd;
    mt_real ph[4 * (TAP_TABLE_MAX + 2 * 32 + 1)], kept[TAP_TABLE_MAX];
    /* The four unshifted taps (ky, kx ≥ 1) cover one phase each, whole: they write, so only the
     * guard and zero rows, where shifted taps land too, need zeros. Then the five shifted taps add. */
    static const int tap_order[9] = {4, 5, 7, 8, 0, 1, 2, 3, 6};
    for (int c = 0; c < C; c++)
        for (int n = 0; n < nb; n++) {
            for (int q = 0; q < 4; q++)
                for (int j = 0; j < Wo + 1; j++) ph[(size_t)q * (P + Wo + 1) + j] = 0;
            for (int t = 0; t < 9; t++) {
                int k = tap_order[t];
                mt_real *restrict dst = (mt_real *)tap_source(ph, P, Wo, k / 3, k % 3);
                const mt_real *restrict in = col + (size_t)(c * 9 + k) * ld + (size_t)n * P;
                if (t < 4) {
                    for (int p = 0; p < P; p++) dst[p] = in[p];
                    continue;
                }
                /* A kx = 0 tap's column −1 is padding: its adds (at each output row's start) land on
                 * the phase row before's last entry. Put those back afterwards: exactly, where
                 * subtracting again would round. */
                if (k % 3 == 0)
                    for (int oy = 0; oy < Ho; oy++) kept[oy] = dst[oy * Wo];
                for (int p = 0; p < P; p++) dst[p] += in[p];
                if (k % 3 == 0)
                    for (int oy = 0; oy < Ho; oy++) dst[oy * Wo] = kept[oy];
            }
            merge_phases(x + ((size_t)c * B + n) * HW, ph, H, Wd, Ho, Wo);
        }
}

/* Stride 2 on rows of at most 16 entries (the 4-conv network's 14, 7 and 4), with AVX-512: each
 * input row is loaded once into one register, and its even and odd columns are permuted into place
 * for the three taps of each kernel row that reads it, so no phase planes are built (on this
 * workload the phase route spent about 2 cycles per field entry, mostly on short loops). Input
 * row iy feeds kernel row ky = 1 of output row iy/2 when even, and ky = 2 of output row
 * (iy − 1)/2 and ky = 0 of (iy + 1)/2 when odd. Tap kx = 1 reads the even columns, kx = 2 the odd
 * ones, and kx = 0 the odd ones one output to the right, after the padding column. */
#if !MT_REAL_IS_DOUBLE && defined(__x86_64__) && defined(__GNUC__)
#define HAVE_ROWS16 1
#include <immintrin.h>

#define ROWS16_MAX 16

static __mmask16 first_lanes(int n) { return n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1); }

__attribute__((target("avx512f"))) static void im2col_stride2_rows16(float *col, size_t ld, const float *x, int B,
                                                                     int nb, int C, int H, int Wd) {
    int Ho = out_size(H, 2), Wo = out_size(Wd, 2), P = Ho * Wo;
    size_t HW = (size_t)H * Wd;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i after_pad = _mm512_setr_epi32(0, 1, 3, 5, 7, 9, 11, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    const __mmask16 row = first_lanes(Wd), out = first_lanes(Wo);
    const __m512 zero = _mm512_setzero_ps();
    for (int c = 0; c < C; c++)
        for (int n = 0; n < nb; n++) {
            const float *xn = x + ((size_t)c * B + n) * HW;
            float *taps = col + (size_t)c * 9 * ld + (size_t)n * P; /* tap k's row at taps + k·ld */
            for (int kx = 0; kx < 3; kx++) {                        /* input rows −1 and H (odd H): padding */
                _mm512_mask_storeu_ps(taps + kx * ld, out, zero);
                if (H % 2) _mm512_mask_storeu_ps(taps + (6 + kx) * ld + (size_t)(Ho - 1) * Wo, out, zero);
            }
            for (int iy = 0; iy < H; iy++) {
                __m512 r = _mm512_maskz_loadu_ps(row, xn + (size_t)iy * Wd);
                __m512 e = _mm512_permutexvar_ps(even, r), o = _mm512_permutexvar_ps(odd, r);
                __m512 s = _mm512_maskz_permutexvar_ps(0xfffe, after_pad, r);
                float *at = iy % 2 ? taps + 6 * ld + (size_t)(iy - 1) / 2 * Wo : taps + 3 * ld + (size_t)iy / 2 * Wo;
                _mm512_mask_storeu_ps(at, out, s);
                _mm512_mask_storeu_ps(at + ld, out, e);
                _mm512_mask_storeu_ps(at + 2 * ld, out, o);
                if (iy % 2 && (iy + 1) / 2 < Ho) {
                    at = taps + (size_t)(iy + 1) / 2 * Wo;
                    _mm512_mask_storeu_ps(at, out, s);
                    _mm512_mask_storeu_ps(at + ld, out, e);
                    _mm512_mask_storeu_ps(at + 2 * ld, out, o);
                }
            }
        }
}

/* The three taps of kernel row ky at output row oy, added to an input row's even and odd columns */
__attribute__((target("avx512f"))) static inline void gather_taps(__m512 *e, __m512 *o, const float *at, size_t ld,
                                                                  __mmask16 out) {
    const __m512i left = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15);
    __m512 s = _mm512_maskz_loadu_ps(out, at); /* kx = 0: output ox + 1 read odd column ox */
    *o = _mm512_add_ps(*o, _mm512_permutexvar_ps(left, s));
    *e = _mm512_add_ps(*e, _mm512_maskz_loadu_ps(out, at + ld));
    *o = _mm512_add_ps(*o, _mm512_maskz_loadu_ps(out, at + 2 * ld));
}

/* The adjoint: each input row sums its taps' entries in registers and is written once. */
__attribute__((target("avx512f"))) static void col2im_stride2_rows16(float *x, int B, int nb, const float *col,
                                                                     size_t ld, int C, int H, int Wd) {
    int Ho = out_size(H, 2), Wo = out_size(Wd, 2), P = Ho * Wo;
    size_t HW = (size_t)H * Wd;
    const __m512i weave = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __mmask16 row = first_lanes(Wd), out = first_lanes(Wo);
    for (int c = 0; c < C; c++)
        for (int n = 0; n < nb; n++) {
            float *xn = x + ((size_t)c * B + n) * HW;
            const float *taps = col + (size_t)c * 9 * ld + (size_t)n * P;
            for (int iy = 0; iy < H; iy++) {
                __m512 e = _mm512_setzero_ps(), o = _mm512_setzero_ps();
                if (iy % 2 == 0) {
                    gather_taps(&e, &o, taps + 3 * ld + (size_t)iy / 2 * Wo, ld, out);
                } else {
                    gather_taps(&e, &o, taps + 6 * ld + (size_t)(iy - 1) / 2 * Wo, ld, out);
                    if ((iy + 1) / 2 < Ho) gather_taps(&e, &o, taps + (size_t)(iy + 1) / 2 * Wo, ld, out);
                }
                _mm512_mask_storeu_ps(xn + (size_t)iy * Wd, row, _mm512_permutex2var_ps(e, weave, o));
            }
        }
}
#else
#define HAVE_ROWS16 0
#endif

#if !MT_REAL_IS_DOUBLE /* one switch for the process, defined by the float build */
static int intrinsics_wanted = 1;
void mt_nn_use_intrinsics(int on) { intrinsics_wanted = on; }
#endif

#if HAVE_ROWS16
/* Whether a stride-2 plane W wide takes the AVX-512 rows (never in the double build). */
static int rows16_route(int Wd) {
    /* libgcc fills the CPU model in a constructor: reading it here is cheap and thread-safe. */
    return __builtin_cpu_supports("avx512f") && intrinsics_wanted && Wd <= ROWS16_MAX;
}
#endif

/* The receptive fields of samples 0 … nb − 1 of x, whose channel c holds B planes: plane (c, n) at
 * x + (c·B + n)·H·W. col (C·9, nb·P), rows ld apart: sample n's fields in columns n·P … (n+1)·P − 1. */
MT_KERNEL void MT_(mt_nn_im2col)(mt_real *col, size_t ld, const mt_real *x, int B, int nb, int C, int H, int Wd,
                                 int stride) {
    int Ho = out_size(H, stride), Wo = out_size(Wd, stride), P = Ho * Wo;
    size_t HW = (size_t)H * Wd;
    if (phase_route(stride, P, Wo)) {
#if HAVE_ROWS16
        if (rows16_route(Wd)) {
            im2col_stride2_rows16(col, ld, x, B, nb, C, H, Wd);
            return;
        }
#endif
        im2col_stride2(col, ld, x, B, nb, C, H, Wd);
        return;
    }
    if (P <= TAP_TABLE_MAX) {
        int32_t tab[9][TAP_TABLE_MAX];
        tap_tables(tab, H, Wd, Ho, Wo, stride);
        for (int c = 0; c < C; c++)
            for (int n = 0; n < nb; n++) { /* one input plane, read nine times while in L1 */
                const mt_real *restrict xn = x + ((size_t)c * B + n) * HW;
                for (int k = 0; k < 9; k++) {
                    const int32_t *restrict t = tab[k];
                    mt_real *restrict out = col + (size_t)(c * 9 + k) * ld + (size_t)n * P;
                    for (int p = 0; p < P; p++) out[p] = t[p] < 0 ? 0 : xn[t[p]];
                }
            }
        return;
    }
    for (int c = 0; c < C; c++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                int lo, hi;
                valid_columns(Wd, Wo, kx, stride, &lo, &hi);
                mt_real *row = col + (size_t)((c * 3 + ky) * 3 + kx) * ld;
                for (int n = 0; n < nb; n++) {
                    const mt_real *xc = x + ((size_t)c * B + n) * HW;
                    for (int oy = 0; oy < Ho; oy++) {
                        int iy = oy * stride + ky - 1;
                        mt_real *out = row + (size_t)n * P + oy * Wo;
                        if (iy < 0 || iy >= H) {
                            memset(out, 0, (size_t)Wo * sizeof *out);
                            continue;
                        }
                        const mt_real *xr = xc + iy * Wd + kx - 1;
                        for (int ox = 0; ox < lo; ox++) out[ox] = 0;
                        if (stride == 1)
                            memcpy(out + lo, xr + lo, (size_t)(hi - lo) * sizeof *out);
                        else
                            for (int ox = lo; ox < hi; ox++) out[ox] = xr[ox * stride];
                        for (int ox = hi; ox < Wo; ox++) out[ox] = 0;
                    }
                }
            }
}

/* Planes 0 … nb − 1 of each channel of x (laid out as for im2col) = the adjoint of im2col applied
 * to col. Within one tap no two outputs read the same input, so each tap's scatter-add has no
 * conflicts. */
MT_KERNEL void MT_(mt_nn_col2im)(mt_real *x, int B, int nb, const mt_real *col, size_t ld, int C, int H, int Wd,
                                 int stride) {
    int Ho = out_size(H, stride), Wo = out_size(Wd, stride), P = Ho * Wo;
    size_t HW = (size_t)H * Wd;
    if (phase_route(stride, P, Wo)) {
#if HAVE_ROWS16
        if (rows16_route(Wd)) {
            col2im_stride2_rows16(x, B, nb, col, ld, C, H, Wd);
            return;
        }
#endif
        col2im_stride2(x, B, nb, col, ld, C, H, Wd);
        return;
    }
    if (P <= TAP_TABLE_MAX) {
        int32_t tab[9][TAP_TABLE_MAX];
        tap_tables(tab, H, Wd, Ho, Wo, stride);
        for (int c = 0; c < C; c++)
            for (int n = 0; n < nb; n++) { /* one input plane, accumulated in L1 */
                mt_real *xn = x + ((size_t)c * B + n) * HW;
                memset(xn, 0, HW * sizeof *xn);
                for (int k = 0; k < 9; k++) {
                    const int32_t *t = tab[k];
                    const mt_real *in = col + (size_t)(c * 9 + k) * ld + (size_t)n * P;
                    for (int p = 0; p < P; p++)
                        if (t[p] >= 0) xn[t[p]] += in[p];
                }
            }
        return;
    }
    for (int c = 0; c < C; c++) memset(x + (size_t)c * B * HW, 0, (size_t)nb * HW * sizeof *x);
    for (int c = 0; c < C; c++)
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
                int lo, hi;
                valid_columns(Wd, Wo, kx, stride, &lo, &hi);
                const mt_real *row = col + (size_t)((c * 3 + ky) * 3 + kx) * ld;
                for (int n = 0; n < nb; n++) {
                    mt_real *xc = x + ((size_t)c * B + n) * HW;
                    for (int oy = 0; oy < Ho; oy++) {
                        int iy = oy * stride + ky - 1;
                        if (iy < 0 || iy >= H) continue;
                        mt_real *xr = xc + iy * Wd + kx - 1;
                        const mt_real *in = row + (size_t)n * P + oy * Wo;
                        for (int ox = lo; ox < hi; ox++) xr[ox * stride] += in[ox];
                    }
                }
            }
}
