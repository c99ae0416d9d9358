/* libFuzzer harness: the checkpoint reader (mt_ckpt_read) on arbitrary files.
 *
 * The input bytes become a file that mt_ckpt_read must refuse with a message or read in full,
 * never crash. It is read twice: as it is, which tries the whole-file checksum header, and
 * resealed (its header rewritten to match the bytes after it, as test_ckpt does), which takes
 * the mutations past that checksum into HDF5 and the reader's own checks. What the reader
 * accepts must hold what it promises: arrays within the limits, sorted by path, each one's data
 * walked end to end, attributes NUL-terminated. A crash whose stack is inside libhdf5 is HDF5's
 * own (scripts/fuzz says so); everything else is ours. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fcntl.h>

#include "ckpt/ckpt_h5.h" /* ckpt_seal_fd, CKPT_HEADER_SIZE */
#include "metatrain/ckpt.h"
#include "metatrain/isolate.h"
#include "fuzz_util.h"

static char path[64];
static volatile uint64_t sink;

static void remove_file(void) { unlink(path); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    /* Read in this process, where a crash shows, unless METATRAIN_ISOLATE=1 asks to read through
     * a forked child first, as the verbs do (scripts/fuzz replays HDF5's crashes that way). */
    setenv("METATRAIN_ISOLATE", "0", 0);
    fuzz_scratch_path(path, sizeof path, "fuzz_checkpoint");
    atexit(remove_file);
    return 0;
}

static void walk(const mt_ckpt *ck) {
    uint64_t sum = 0;
    FUZZ_CHECK(ck->n_arrays >= 0 && ck->n_arrays <= MT_CKPT_MAX_ARRAYS);
    FUZZ_CHECK(ck->n_attrs >= 0 && ck->n_attrs <= MT_CKPT_MAX_ATTRS);
    FUZZ_CHECK(ck->format_version >= 1 && ck->format_version <= MT_CKPT_FORMAT_VERSION);
    for (int i = 0; i < ck->n_arrays; i++) {
        const mt_ckpt_array *a = &ck->arrays[i];
        FUZZ_CHECK(memchr(a->path, '\0', sizeof a->path) != NULL);
        FUZZ_CHECK(i == 0 || strcmp(ck->arrays[i - 1].path, a->path) <= 0);
        FUZZ_CHECK(a->rank >= 1 && a->rank <= 4 && a->data != NULL);
        FUZZ_CHECK(mt_ckpt_find(ck, a->path) != NULL);
        uint64_t elems = 1;
        for (int d = 0; d < a->rank; d++) elems *= a->dims[d];
        size_t bytes = (size_t)elems * (a->dtype == MT_CKPT_F32 ? 4 : 8);
        FUZZ_CHECK(bytes <= MT_CKPT_MAX_BYTES);
        const unsigned char *p = a->data;
        for (size_t k = 0; k < bytes; k += 61) sum += p[k];
        if (bytes) sum += p[bytes - 1];
    }
    for (int i = 0; i < ck->n_attrs; i++) {
        FUZZ_CHECK(ck->attrs[i].value != NULL && memchr(ck->attrs[i].name, '\0', sizeof ck->attrs[i].name) != NULL);
        sum += strlen(ck->attrs[i].value);
        FUZZ_CHECK(mt_ckpt_attr_value(ck, ck->attrs[i].name) != NULL);
    }
    sink += sum;
}

/* What metatrain's verbs do first with a checkpoint (src/cli/train_state.c): the whole read in
 * a forked child, so that a crash inside libhdf5 ends only the child. */
static mt_status read_in_child(void *arg) {
    mt_ckpt *ck = calloc(1, sizeof *ck);
    if (!ck) return MT_RAISE(MT_ERR_NOMEM, "out of memory");
    mt_status st = mt_ckpt_read(arg, ck);
    mt_ckpt_free(ck);
    free(ck);
    return st;
}

static void read_checked(void) {
    static mt_ckpt ck; /* large: 1024 array slots */
    const char *isolate = getenv("METATRAIN_ISOLATE");
    if (isolate && strcmp(isolate, "0") != 0 &&
        mt_isolate_run(read_in_child, path, path, MT_ISOLATE_TIMEOUT_S) != MT_OK) {
        mt_error_clear();
        return;
    }
    if (mt_ckpt_read(path, &ck) == MT_OK) {
        walk(&ck);
        mt_ckpt_free(&ck);
    } else {
        FUZZ_CHECK(ck.n_arrays == 0 && ck.n_attrs == 0); /* left empty on failure */
    }
    mt_error_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) abort();
    for (size_t done = 0; done < size;) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) abort();
        done += (size_t)n;
    }
    read_checked();
    if (size > CKPT_HEADER_SIZE) {
        if (ckpt_seal_fd(fd, path) != MT_OK) abort();
        read_checked();
    }
    close(fd);
    return 0;
}
