/* The whole-file checksum of a checkpoint: a header in the HDF5 user block (layout in
 * ckpt_h5.h), written once HDF5 has closed the file and verified before HDF5 opens it. HDF5's own
 * checksums leave free space and unused index entries uncovered; this covers every byte. */
#include <errno.h>
#include <unistd.h>
#include <zlib.h>

#include "ckpt/ckpt_h5.h"

#define MAGIC_LEN 16
#define USED_LEN 36 /* bytes 36 to 511 are zero */

static const unsigned char magic[MAGIC_LEN] = "metatrain-ckpt";
static const unsigned char hdf5_signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

static void put_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint32_t header_crc(const unsigned char *h) { return (uint32_t)crc32(crc32(0L, Z_NULL, 0), h, 32); }

/* CRC-32 and count of the bytes after the header, read to the end of the file. */
static mt_status crc_after_header(int fd, const char *path, uint32_t *crc, uint64_t *len) {
    unsigned char buf[1 << 16];
    uLong sum = crc32(0L, Z_NULL, 0);
    uint64_t at = CKPT_HEADER_SIZE;
    for (;;) {
        ssize_t got = pread(fd, buf, sizeof buf, (off_t)at);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return MT_RAISE(MT_ERR_IO, "%s: read failed: %s", path, strerror(errno));
        if (got == 0) break;
        sum = crc32(sum, buf, (uInt)got);
        at += (uint64_t)got;
    }
    *crc = (uint32_t)sum;
    *len = at - CKPT_HEADER_SIZE;
    return MT_OK;
}

/* MT_OK when `have` bytes follow the header, as many as it says. */
static mt_status check_length(const char *path, uint64_t want, uint64_t have) {
    if (have < want)
        return MT_RAISE(MT_ERR_FORMAT, "%s: truncated (expected %llu bytes after the header, found %llu)", path,
                        (unsigned long long)want, (unsigned long long)have);
    if (have > want)
        return MT_RAISE(MT_ERR_FORMAT,
                        "%s: %llu bytes after the header, expected %llu (data appended, or file corrupted)", path,
                        (unsigned long long)have, (unsigned long long)want);
    return MT_OK;
}

mt_status ckpt_seal_fd(int fd, const char *path) {
    unsigned char h[CKPT_HEADER_SIZE] = {0};
    uint32_t crc;
    uint64_t len;
    mt_status st = crc_after_header(fd, path, &crc, &len);
    if (st != MT_OK) return st;
    memcpy(h, magic, MAGIC_LEN);
    put_le(h + 16, CKPT_HEADER_FORMAT, 4);
    put_le(h + 20, len, 8);
    put_le(h + 28, crc, 4);
    put_le(h + 32, header_crc(h), 4);
    ssize_t put;
    while ((put = pwrite(fd, h, sizeof h, 0)) < 0 && errno == EINTR) {}
    if (put < 0) return MT_RAISE(MT_ERR_IO, "%s: checksum header: write failed: %s", path, strerror(errno));
    if (put != (ssize_t)sizeof h) return MT_RAISE(MT_ERR_IO, "%s: checksum header: short write (disk full?)", path);
    return MT_OK;
}

mt_status ckpt_verify_fd(int fd, uint64_t size, const char *path) {
    unsigned char h[CKPT_HEADER_SIZE] = {0};
    ssize_t got;
    while ((got = pread(fd, h, sizeof h, 0)) < 0 && errno == EINTR) {}
    if (got < 0) return MT_RAISE(MT_ERR_IO, "%s: read failed: %s", path, strerror(errno));
    size_t n = (size_t)got;
    if (memcmp(h, magic, n < MAGIC_LEN ? n : MAGIC_LEN) != 0) {
        if (n >= sizeof hdf5_signature && memcmp(h, hdf5_signature, sizeof hdf5_signature) == 0)
            return MT_RAISE(MT_ERR_FORMAT,
                            "%s: not a metatrain checkpoint (no checksum header): an HDF5 file from other "
                            "software or from an older metatrain",
                            path);
        return MT_RAISE(MT_ERR_FORMAT, "%s: not a metatrain checkpoint (no checksum header)", path);
    }
    if (n < CKPT_HEADER_SIZE)
        return MT_RAISE(MT_ERR_FORMAT, "%s: truncated (%zu bytes, shorter than the %d-byte checksum header)", path, n,
                        CKPT_HEADER_SIZE);
    unsigned char unused = 0;
    for (size_t i = USED_LEN; i < CKPT_HEADER_SIZE; i++) unused |= h[i];
    if (get_le(h + 32, 4) != header_crc(h) || unused)
        return MT_RAISE(MT_ERR_FORMAT, "%s: checksum header corrupted", path);
    if (get_le(h + 16, 4) != CKPT_HEADER_FORMAT)
        return MT_RAISE(MT_ERR_FORMAT, "%s: checksum header format %u not supported (this metatrain reads %d)", path,
                        (unsigned)get_le(h + 16, 4), CKPT_HEADER_FORMAT);
    uint64_t want = get_le(h + 20, 8), len = 0;
    uint32_t crc = 0;
    /* a truncation, named without reading */
    mt_status st = check_length(path, want, size > CKPT_HEADER_SIZE ? size - CKPT_HEADER_SIZE : 0);
    if (st == MT_OK) st = crc_after_header(fd, path, &crc, &len);
    if (st == MT_OK) st = check_length(path, want, len); /* the bytes read, should the file have changed since */
    if (st != MT_OK) return st;
    if (crc != get_le(h + 28, 4))
        return MT_RAISE(MT_ERR_FORMAT, "%s: whole-file checksum mismatch (file corrupted)", path);
    return MT_OK;
}
