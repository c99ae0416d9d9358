/* What the libFuzzer harnesses share: a check that aborts (libFuzzer keeps the input that did
 * it), the input as a C string, and a per-process scratch file for readers that take a path. */
#ifndef METATRAIN_FUZZ_UTIL_H
#define METATRAIN_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metatrain/error.h"

#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s: check failed: %s (last error: %s)\n", __FILE__, #cond, mt_error_message());           \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* The input with a terminating NUL, malloc'ed (NULL when out of memory). */
static inline char *fuzz_cstring(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return NULL;
    memcpy(text, data, size);
    text[size] = '\0';
    return text;
}

/* path = <dir>/<name>.<pid>.h5, in /dev/shm when there is one: HDF5 reopens the file for every input. */
static inline void fuzz_scratch_path(char *path, size_t n, const char *name) {
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, n, "%s/%s.%ld.h5", dir, name, (long)getpid());
}

#endif
