/* What the checkpoint reader and writer share: dtype mapping, size bounds, HDF5 error helpers.
 * Internal to src/ckpt. */
#ifndef METATRAIN_CKPT_H5_H
#define METATRAIN_CKPT_H5_H

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metatrain/ckpt.h"

#define CKPT_ATTR_FORMAT "format"
#define CKPT_ATTR_VERSION "format_version"

/* The whole-file checksum header fills the HDF5 user block, which HDF5 skips (its data start at
 * byte 512). All integers little-endian:
 *   bytes  0-15   "metatrain-ckpt", NUL-padded
 *         16-19   header format, CKPT_HEADER_FORMAT
 *         20-27   length: the bytes after the header, that is the file size - 512
 *         28-31   CRC-32 of those bytes (zlib's crc32, the same as Python's zlib.crc32)
 *         32-35   CRC-32 of bytes 0-31
 *         36-511  zero
 * A change to any single byte of the file fails one of these checks. */
#define CKPT_HEADER_SIZE 512
#define CKPT_HEADER_FORMAT 1

/* Writes the header into the file open read-write as `fd`, after HDF5 has closed it, from the
 * bytes now after the header. `path` names the file in messages. */
mt_status ckpt_seal_fd(int fd, const char *path);
/* Verifies the header and the checksum of the file open as `fd`, of `size` bytes (from fstat),
 * before HDF5 opens it. */
mt_status ckpt_verify_fd(int fd, uint64_t size, const char *path);

static inline size_t ckpt_dtype_size(mt_ckpt_dtype dtype) { return dtype == MT_CKPT_F32 ? 4 : 8; }

static inline hid_t ckpt_file_type(mt_ckpt_dtype dtype) {
    return dtype == MT_CKPT_F32 ? H5T_IEEE_F32LE : dtype == MT_CKPT_F64 ? H5T_IEEE_F64LE : H5T_STD_I64LE;
}

static inline hid_t ckpt_mem_type(mt_ckpt_dtype dtype) {
    return dtype == MT_CKPT_F32 ? H5T_NATIVE_FLOAT : dtype == MT_CKPT_F64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64;
}

/* Bytes of an array with `rank` dims of `elem` bytes each, counting an empty dimension as 1 so
 * that [0, 2^62] is refused too; 0 when over MT_CKPT_MAX_BYTES. Overflow-safe for any input. */
static inline uint64_t ckpt_extent_bytes(size_t elem, int rank, const uint64_t *dims) {
    uint64_t bytes = elem;
    for (int i = 0; i < rank; i++) {
        uint64_t d = dims[i] ? dims[i] : 1;
        if (d > MT_CKPT_MAX_BYTES / bytes) return 0;
        bytes *= d;
    }
    return bytes;
}

/* Our one-line messages replace HDF5's multi-line error stack dump. */
static inline void ckpt_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static inline herr_t ckpt_h5_innermost(unsigned n, const H5E_error2_t *err, void *out) {
    if (n == 0 && err->desc) snprintf(out, 200, "%s", err->desc);
    return 0;
}

/* The description of the innermost error on HDF5's stack (where it started), or "". */
static inline const char *ckpt_h5_cause(char buf[200]) {
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, ckpt_h5_innermost, buf);
    for (char *c = buf; *c; c++)
        if (*c == '\n') *c = ' ';
    return buf;
}

/* The errno that HDF5's file driver recorded in its message ("errno = 28"), or 0. */
static inline int ckpt_h5_errno(void) {
    char buf[200];
    const char *e = strstr(ckpt_h5_cause(buf), "errno = ");
    return e ? atoi(e + 8) : 0;
}

#endif
