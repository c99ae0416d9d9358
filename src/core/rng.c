#include "metatrain/rng.h"

#include <math.h>

enum {
    PHILOX_M0 = 0xD2511F53u,
    PHILOX_M1 = 0xCD9E8D57u,
    PHILOX_W0 = 0x9E3779B9u, /* golden ratio */
    PHILOX_W1 = 0xBB67AE85u  /* sqrt(3) - 1 */
};

static inline void mulhilo32(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
    uint64_t product = (uint64_t)a * b;
    *hi = (uint32_t)(product >> 32);
    *lo = (uint32_t)product;
}

void mt_rng_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo32(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo32(PHILOX_M1, c2, &hi1, &lo1);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void mt_rng_init(mt_rng *rng, uint64_t seed, uint32_t iteration, uint32_t task, uint32_t stream) {
    rng->key[0] = (uint32_t)seed;
    rng->key[1] = (uint32_t)(seed >> 32);
    rng->counter[0] = 0;
    rng->counter[1] = stream;
    rng->counter[2] = task;
    rng->counter[3] = iteration;
    rng->used = 4;
}

uint32_t mt_rng_u32(mt_rng *rng) {
    if (rng->used == 4) {
        mt_rng_philox4x32(rng->counter, rng->key, rng->block);
        rng->counter[0]++;
        rng->used = 0;
    }
    return rng->block[rng->used++];
}

double mt_rng_uniform(mt_rng *rng) {
    uint64_t hi = mt_rng_u32(rng) >> 5; /* 27 bits */
    uint64_t lo = mt_rng_u32(rng) >> 6; /* 26 bits */
    return (double)((hi << 26) | lo) * (1.0 / 9007199254740992.0);
}

double mt_rng_range(mt_rng *rng, double lo, double hi) { return lo + (hi - lo) * mt_rng_uniform(rng); }

double mt_rng_normal(mt_rng *rng) {
    double u1 = 1.0 - mt_rng_uniform(rng); /* (0, 1]: log is finite */
    double u2 = mt_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

uint32_t mt_rng_below(mt_rng *rng, uint32_t n) {
    uint32_t limit = (uint32_t)(-n) % n; /* 2^32 mod n: values below it are biased */
    for (;;) {
        uint64_t product = (uint64_t)mt_rng_u32(rng) * n;
        if ((uint32_t)product >= limit) return (uint32_t)(product >> 32);
    }
}

void mt_rng_shuffle(mt_rng *rng, int *values, int count) {
    for (int i = count - 1; i > 0; i--) {
        int j = (int)mt_rng_below(rng, (uint32_t)i + 1);
        int tmp = values[i];
        values[i] = values[j];
        values[j] = tmp;
    }
}
