/* Private: checked reading of user-supplied HDF5 files (src/h5/h5_read.c), shared by the dataset
 * loader and the command line's support and input files. */
#ifndef METATRAIN_H5_READ_H
#define METATRAIN_H5_READ_H

#include <hdf5.h>
#include <stdint.h>

#include "metatrain/error.h"

/* The largest dataset accepted: a bound against hostile sizes. */
#define MT_H5_MAX_BYTES (16ULL << 30)

/* An element type as the formats require it, exactly. */
typedef struct {
    H5T_class_t cls;
    size_t size;
    H5T_sign_t sign; /* H5T_SGN_ERROR: not an integer */
    const char *name;
} mt_h5_type;

extern const mt_h5_type MT_H5_U8, MT_H5_I32, MT_H5_F32;

/* The innermost HDF5 error's description (where it started), or "unknown cause". */
const char *mt_h5_cause(char buf[160]);
/* "uint8", "float64", "string", ... for messages. */
const char *mt_h5_type_desc(hid_t dset, char buf[32]);
int mt_h5_type_is(hid_t dset, mt_h5_type want);
/* The rank of a dataset (-1 when unreadable), with its dims when rank <= 4. */
int mt_h5_dims(hid_t dset, hsize_t dims[4]);
/* Whether every link along an absolute path exists ("/episodes", then "/episodes/support"). */
int mt_h5_link_exists(hid_t file, const char *name);
/* Opens a dataset; an absent optional one gives H5I_INVALID_HID and MT_OK. */
mt_status mt_h5_open_dataset(hid_t file, const char *path, const char *name, int required, hid_t *out);
/* Refuses another dtype or rank (no silent conversion), an empty dimension, and more than
 * MT_H5_MAX_BYTES; fills dims and, when bytes is not NULL, the size. `shape` ("[N, D]") is for
 * messages. */
mt_status mt_h5_check_array(hid_t dset, const char *path, const char *name, mt_h5_type want, int rank,
                            const char *shape, hsize_t dims[4], uint64_t *bytes);
/* Rows [first, first + n) of a dataset (up to rank 4), every other dimension whole, read into
 * buf (write = 0) or written from it (write = 1) as mem_type. Returns HDF5's status. */
herr_t mt_h5_rows(hid_t dset, int write, int64_t first, int n, hid_t mem_type, void *buf);
/* Reads a whole dataset in native layout into dst. */
mt_status mt_h5_read_all(hid_t dset, hid_t mem_type, const char *path, const char *name, void *dst);
/* An int32 dataset of the given rank, read into malloc'ed memory; an absent optional one gives
 * NULL. */
mt_status mt_h5_load_i32(hid_t file, const char *path, const char *name, int required, int rank, const char *shape,
                         hsize_t dims[4], int32_t **out);
/* A numeric attribute holding one finite value; absent: *present = 0 and MT_OK. */
mt_status mt_h5_read_attr_double(hid_t obj, const char *path, const char *objname, const char *attr, int integer,
                                 double *value, int *present);
/* Refuses what is not a regular, non-empty HDF5 file, with clearer messages than HDF5's, then
 * opens it read-only. */
mt_status mt_h5_open_file(const char *path, hid_t fapl, hid_t *out);

#endif
