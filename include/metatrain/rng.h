/* Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy
 * as 1, 2, 3", SC 2011), written from the paper's description.
 *
 * A stream is keyed by the run's seed and addressed by (iteration, task index, stream id), so any
 * rank can rebuild any task's data without communicating and results never depend on how many
 * ranks there are. Local, never collective. */
#ifndef METATRAIN_RNG_H
#define METATRAIN_RNG_H

#include <stdint.h>

/* Stream ids: one per independent use, so that adding a use never shifts another's numbers. */
enum {
    MT_RNG_STREAM_INIT = 1,    /* parameter initialization; task index = tensor index */
    MT_RNG_STREAM_TASK = 2,    /* a task's hidden parameters (amplitude, phase, classes...) */
    MT_RNG_STREAM_SUPPORT = 3, /* support examples */
    MT_RNG_STREAM_QUERY = 4,   /* query examples */
    MT_RNG_STREAM_AUGMENT = 5, /* augmentation of a task's examples (image shifts and turns) */
    MT_RNG_STREAM_TEST = 99    /* tests */
};

/* Iterations at or above this mark are evaluation tasks, never seen in training. */
#define MT_RNG_EVAL_ITERATION 0x80000000u

typedef struct {
    uint32_t key[2];
    uint32_t counter[4]; /* block, stream, task, iteration */
    uint32_t block[4];   /* the current output block */
    int used;            /* words of `block` consumed */
} mt_rng;

/* One Philox4x32-10 block: out = philox(counter, key). */
void mt_rng_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

void mt_rng_init(mt_rng *rng, uint64_t seed, uint32_t iteration, uint32_t task, uint32_t stream);
uint32_t mt_rng_u32(mt_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double mt_rng_uniform(mt_rng *rng);
/* Uniform in [lo, hi). */
double mt_rng_range(mt_rng *rng, double lo, double hi);
/* Standard normal (Box-Muller). */
double mt_rng_normal(mt_rng *rng);
/* Uniform integer in [0, n), without modulo bias. n > 0. */
uint32_t mt_rng_below(mt_rng *rng, uint32_t n);
/* Fisher-Yates shuffle of an int array. */
void mt_rng_shuffle(mt_rng *rng, int *values, int count);

#endif
