/* HDF5 checkpoints: a generic store of named arrays plus root attributes, written atomically and
 * verified on read. The training driver (src/cli/train.c) decides what goes in:
 *   /params/...     one dataset per meta-parameter tensor ("/params/conv1/weight"),
 *                   learned inner rates under "/params/inner_lr/..."
 *   /optimizer/...  optimizer state ("/optimizer/m/conv1/weight", "/optimizer/step")
 *   /train/...      iteration, the reduction's predicted scales: everything an exact resume needs
 *   /metrics/...    the logged series
 * File format: HDF5 with library version bounds 1.10 or later, so object headers and other
 * metadata carry checksums; every dataset is chunked with the Fletcher32 filter (scalars are
 * 1-element arrays). Strings are fixed-length attributes: variable-length strings would live in
 * the global heap, which has no checksum. Nothing run-specific is written inside /params or
 * /optimizer, so equal models compare equal with h5diff.
 * HDF5's checksums leave free space and unused index entries uncovered, so the file also starts
 * with a 512-byte HDF5 user block (h5dump and h5py read past it) holding a checksum header: the
 * magic "metatrain-ckpt", the length and CRC-32 of every byte after the block, and a CRC-32 of
 * the header itself (layout in src/ckpt/ckpt_h5.h). A change to any byte of the file is refused
 * before HDF5 opens it; the inner checksums still name the object for a file whose outer
 * checksum holds but whose content does not (written by other software).
 *
 * Not collective: only rank 0 calls the writer; any rank may read. */
#ifndef METATRAIN_CKPT_H
#define METATRAIN_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "metatrain/error.h"

#define MT_CKPT_FORMAT_NAME "metatrain-checkpoint"
#define MT_CKPT_FORMAT_VERSION 1
#define MT_CKPT_PATH_LEN 160
#define MT_CKPT_MAX_ARRAYS 1024
#define MT_CKPT_MAX_ATTRS 16
/* Largest dataset, in bytes, written or accepted on read: a bound against hostile sizes. */
#define MT_CKPT_MAX_BYTES (1ull << 30)
/* Longest attribute value. Root attributes are kept in the object header, which is checksummed;
 * HDF5 would move larger ones to dense storage, where values over 4 KiB have no checksum. */
#define MT_CKPT_MAX_ATTR_LEN 65000

typedef enum { MT_CKPT_F32, MT_CKPT_F64, MT_CKPT_I64 } mt_ckpt_dtype;

typedef struct {
    char path[MT_CKPT_PATH_LEN]; /* absolute dataset path, groups created as needed */
    mt_ckpt_dtype dtype;
    int rank;         /* 1 to 4; a scalar is rank 1 with dims[0] = 1 */
    uint64_t dims[4]; /* dims[0] may be 0 (an empty series) */
    void *data;       /* writer: caller's; reader: malloc'ed, freed by mt_ckpt_free */
} mt_ckpt_array;

typedef struct {
    char name[64];
    char *value; /* writer: caller's; reader: malloc'ed */
} mt_ckpt_attr;

typedef struct {
    int n_arrays;
    mt_ckpt_array arrays[MT_CKPT_MAX_ARRAYS];
    int n_attrs;
    mt_ckpt_attr attrs[MT_CKPT_MAX_ATTRS]; /* root string attributes: config, algorithm, ... */
    int format_version;                    /* read back from the file */
} mt_ckpt;

/* Adds an array description (no copy) to a checkpoint being assembled for writing; `ck` starts
 * zeroed (mt_ckpt is large: allocate it, e.g. with calloc). */
mt_status mt_ckpt_add(mt_ckpt *ck, const char *path, mt_ckpt_dtype dtype, int rank, const uint64_t *dims,
                      const void *data);
/* Adds a root string attribute (no copy). */
mt_status mt_ckpt_add_attr(mt_ckpt *ck, const char *name, const char *value);

/* Writes `ck` to `path` atomically: a temporary file beside it, flushed and fsync'ed, renamed
 * over `path`, then the directory fsync'ed. A failure at any point leaves the previous file
 * intact and removes the temporary. Also writes root attributes "format" and "format_version". */
mt_status mt_ckpt_write(const char *path, const mt_ckpt *ck);

/* Reads every array and attribute, verifying the whole-file checksum and then every checksum
 * inside. A file that is missing, truncated, corrupted, without the checksum header (another
 * format, an older metatrain) fails with a one-line message naming the file and the object.
 * `ck` is overwritten; on failure it is left empty. Arrays come in path order. */
mt_status mt_ckpt_read(const char *path, mt_ckpt *ck);
/* Frees what mt_ckpt_read allocated (only for a checkpoint filled by it) and empties `ck`. */
void mt_ckpt_free(mt_ckpt *ck);

/* The array at `path`, or NULL. */
const mt_ckpt_array *mt_ckpt_find(const mt_ckpt *ck, const char *path);
/* The value of the 1-element int64 array at `path` ("/train/iteration"): 1 and *value, or 0 when
 * there is no such array. */
int mt_ckpt_i64(const mt_ckpt *ck, const char *path, int64_t *value);
/* The root attribute `name`, or NULL. */
const char *mt_ckpt_attr_value(const mt_ckpt *ck, const char *name);

/* Copies the file at `path` byte for byte (its checksum stays valid) to
 * "<dir>/checkpoint-<iteration, 8 digits>.h5" (atomically) and deletes the lowest-numbered copies
 * beyond `keep`. keep <= 0 makes no copy and deletes none. */
mt_status mt_ckpt_keep_copy(const char *path, const char *dir, int iteration, int keep);

#endif
