/* Reading HDF5 files that users bring (datasets, support sets, inputs to predict): opening with
 * clear messages, and checks of dtype, rank and size that refuse instead of converting. Every
 * message names the file and the dataset. Local; no MPI. */
#include "h5/h5_read.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const mt_h5_type MT_H5_U8 = {H5T_INTEGER, 1, H5T_SGN_NONE, "uint8"};
const mt_h5_type MT_H5_I32 = {H5T_INTEGER, 4, H5T_SGN_2, "int32"};
const mt_h5_type MT_H5_F32 = {H5T_FLOAT, 4, H5T_SGN_ERROR, "float32"};

static herr_t innermost_error(unsigned n, const H5E_error2_t *err, void *out) {
    if (n == 0 && err->desc) snprintf(out, 160, "%s", err->desc);
    return 0;
}

/* The innermost HDF5 error's description (where it started), or "unknown cause". */
const char *mt_h5_cause(char buf[160]) {
    buf[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, buf);
    for (char *c = buf; *c; c++)
        if (*c == '\n') *c = ' ';
    return buf[0] ? buf : "unknown cause";
}

/* "uint8", "float64", "string", ... for messages. */
const char *mt_h5_type_desc(hid_t dset, char buf[32]) {
    hid_t type = H5Dget_type(dset);
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    size_t bits = type >= 0 ? 8 * H5Tget_size(type) : 0;
    switch (cls) {
    case H5T_INTEGER:
        snprintf(buf, 32, "%sint%zu", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bits);
        break;
    case H5T_FLOAT:
        snprintf(buf, 32, "float%zu", bits);
        break;
    case H5T_STRING:
        snprintf(buf, 32, "string");
        break;
    case H5T_COMPOUND:
        snprintf(buf, 32, "compound");
        break;
    case H5T_ENUM:
        snprintf(buf, 32, "enum");
        break;
    default:
        snprintf(buf, 32, "an unsupported type");
        break;
    }
    if (type >= 0) H5Tclose(type);
    return buf;
}

int mt_h5_type_is(hid_t dset, mt_h5_type want) {
    hid_t type = H5Dget_type(dset);
    if (type < 0) return 0;
    int ok = H5Tget_class(type) == want.cls && H5Tget_size(type) == want.size &&
             (want.cls != H5T_INTEGER || H5Tget_sign(type) == want.sign);
    H5Tclose(type);
    return ok;
}

/* The rank of a dataset (-1 when unreadable), with its dims when rank <= 4. */
int mt_h5_dims(hid_t dset, hsize_t dims[4]) {
    hid_t space = H5Dget_space(dset);
    if (space < 0) return -1;
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank >= 0 && rank <= 4 && H5Sget_simple_extent_dims(space, dims, NULL) < 0) rank = -1;
    H5Sclose(space);
    return rank;
}

/* Whether every link along an absolute path exists ("/episodes", then "/episodes/support"). */
int mt_h5_link_exists(hid_t file, const char *name) {
    char prefix[256];
    size_t n = strlen(name);
    if (n >= sizeof prefix) return 0;
    for (size_t i = 1; i <= n; i++) {
        if (i < n && name[i] != '/') continue;
        memcpy(prefix, name, i);
        prefix[i] = '\0';
        if (H5Lexists(file, prefix, H5P_DEFAULT) <= 0) return 0;
    }
    return 1;
}

/* Opens a dataset; an absent optional one gives H5I_INVALID_HID and MT_OK. */
mt_status mt_h5_open_dataset(hid_t file, const char *path, const char *name, int required, hid_t *out) {
    *out = H5I_INVALID_HID;
    if (!mt_h5_link_exists(file, name))
        return required ? MT_RAISE(MT_ERR_FORMAT, "%s: %s: no such dataset", path, name) : MT_OK;
    H5O_info_t info;
    if (H5Oget_info_by_name2(file, name, &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0 || info.type != H5O_TYPE_DATASET)
        return MT_RAISE(MT_ERR_FORMAT, "%s: %s: not a dataset", path, name);
    char cause[160];
    if ((*out = H5Dopen2(file, name, H5P_DEFAULT)) < 0)
        return MT_RAISE(MT_ERR_FORMAT, "%s: %s: cannot open (%s)", path, name, mt_h5_cause(cause));
    return MT_OK;
}

/* Refuses another dtype or rank (no silent conversion), an empty dimension, and more bytes than
 * MT_H5_MAX_BYTES; fills dims and, when bytes is not NULL, the size. */
mt_status mt_h5_check_array(hid_t dset, const char *path, const char *name, mt_h5_type want, int rank,
                            const char *shape, hsize_t dims[4], uint64_t *bytes) {
    char tbuf[32];
    int got = mt_h5_dims(dset, dims);
    if (!mt_h5_type_is(dset, want) || got != rank)
        return MT_RAISE(MT_ERR_FORMAT, "%s: %s: expected %s %s, got %s of rank %d", path, name, want.name, shape,
                        mt_h5_type_desc(dset, tbuf), got);
    uint64_t total = want.size;
    for (int i = 0; i < rank; i++) {
        if (dims[i] == 0) return MT_RAISE(MT_ERR_FORMAT, "%s: %s: empty (dimension %d is 0)", path, name, i);
        if (dims[i] > INT32_MAX)
            return MT_RAISE(MT_ERR_FORMAT, "%s: %s: dimension %d is %llu, more than %d", path, name, i,
                            (unsigned long long)dims[i], INT32_MAX);
        if (dims[i] > MT_H5_MAX_BYTES / total)
            return MT_RAISE(MT_ERR_FORMAT, "%s: %s: more than the %llu GiB limit on a dataset", path, name,
                            (unsigned long long)(MT_H5_MAX_BYTES >> 30));
        total *= dims[i];
    }
    if (bytes) *bytes = total;
    return MT_OK;
}

/* Reads a whole dataset in native layout into dst. */
herr_t mt_h5_rows(hid_t dset, int write, int64_t first, int n, hid_t mem_type, void *buf) {
    hsize_t start[4] = {(hsize_t)first, 0, 0, 0}, count[4];
    int rank = mt_h5_dims(dset, count);
    if (rank < 1 || rank > 4) return -1;
    count[0] = (hsize_t)n;
    hid_t fs = H5Dget_space(dset), ms = H5Screate_simple(rank, count, NULL);
    herr_t rc = fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ? -1
                : write ? H5Dwrite(dset, mem_type, ms, fs, H5P_DEFAULT, buf)
                        : H5Dread(dset, mem_type, ms, fs, H5P_DEFAULT, buf);
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    return rc;
}

mt_status mt_h5_read_all(hid_t dset, hid_t mem_type, const char *path, const char *name, void *dst) {
    char cause[160];
    if (H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
        return MT_RAISE(MT_ERR_IO, "%s: %s: cannot read (%s)", path, name, mt_h5_cause(cause));
    return MT_OK;
}

/* An int32 dataset of the given rank, read into malloc'ed memory; an absent optional one gives
 * NULL. */
mt_status mt_h5_load_i32(hid_t file, const char *path, const char *name, int required, int rank, const char *shape,
                         hsize_t dims[4], int32_t **out) {
    mt_status st = MT_OK;
    hid_t dset = H5I_INVALID_HID;
    uint64_t bytes = 0;
    *out = NULL;
    MT_TRY(mt_h5_open_dataset(file, path, name, required, &dset));
    if (dset < 0) return MT_OK;
    MT_TRY(mt_h5_check_array(dset, path, name, MT_H5_I32, rank, shape, dims, &bytes));
    if (!(*out = malloc(bytes)))
        MT_THROW(MT_ERR_NOMEM, "%s: %s: out of memory for %llu bytes", path, name, (unsigned long long)bytes);
    MT_TRY(mt_h5_read_all(dset, H5T_NATIVE_INT32, path, name, *out));
    H5Dclose(dset);
    return MT_OK;
fail:
    free(*out);
    *out = NULL;
    if (dset >= 0) H5Dclose(dset);
    return st;
}

/* A numeric attribute holding one value; absent: *present = 0 and MT_OK. */
mt_status mt_h5_read_attr_double(hid_t obj, const char *path, const char *objname, const char *attr, int integer,
                                 double *value, int *present) {
    mt_status st = MT_OK;
    hid_t a = H5I_INVALID_HID, type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    *present = 0;
    if (H5Aexists(obj, attr) <= 0) return MT_OK;
    if ((a = H5Aopen(obj, attr, H5P_DEFAULT)) < 0 || (type = H5Aget_type(a)) < 0 || (space = H5Aget_space(a)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: attribute %s: unreadable", path, objname, attr);
    H5T_class_t cls = H5Tget_class(type);
    if (integer ? cls != H5T_INTEGER : (cls != H5T_FLOAT && cls != H5T_INTEGER))
        MT_THROW(MT_ERR_FORMAT, "%s: %s: attribute %s: expected %s", path, objname, attr,
                 integer ? "an integer" : "a number");
    if (H5Sget_simple_extent_npoints(space) != 1)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: attribute %s: expected one value, got %lld", path, objname, attr,
                 (long long)H5Sget_simple_extent_npoints(space));
    if (integer) {
        long long v;
        if (H5Aread(a, H5T_NATIVE_LLONG, &v) < 0)
            MT_THROW(MT_ERR_FORMAT, "%s: %s: attribute %s: unreadable", path, objname, attr);
        *value = (double)v;
    } else if (H5Aread(a, H5T_NATIVE_DOUBLE, value) < 0) {
        MT_THROW(MT_ERR_FORMAT, "%s: %s: attribute %s: unreadable", path, objname, attr);
    }
    if (!isfinite(*value)) MT_THROW(MT_ERR_FORMAT, "%s: %s: attribute %s: not finite", path, objname, attr);
    *present = 1;
fail:
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (a >= 0) H5Aclose(a);
    return st;
}

/* Refuses what is not a regular, non-empty HDF5 file, with clearer messages than HDF5's, then
 * opens it read-only. */
mt_status mt_h5_open_file(const char *path, hid_t fapl, hid_t *out) {
    struct stat sb;
    char cause[160];
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO must not block us */
    if (fd < 0) {
        if (errno == ENOENT) return MT_RAISE(MT_ERR_IO, "%s: no such file", path);
        return MT_RAISE(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    }
    int failed = fstat(fd, &sb) != 0;
    int err = errno;
    close(fd);
    if (failed) return MT_RAISE(MT_ERR_IO, "%s: cannot stat: %s", path, strerror(err));
    if (S_ISDIR(sb.st_mode)) return MT_RAISE(MT_ERR_IO, "%s: is a directory, not an HDF5 file", path);
    if (!S_ISREG(sb.st_mode)) return MT_RAISE(MT_ERR_IO, "%s: not a regular file", path);
    if (sb.st_size == 0) return MT_RAISE(MT_ERR_FORMAT, "%s: empty file, not HDF5", path);
#if H5_VERSION_GE(1, 12, 0)
    htri_t is_hdf5 = H5Fis_accessible(path, fapl);
#else
    htri_t is_hdf5 = H5Fis_hdf5(path);
#endif
    if (is_hdf5 == 0) return MT_RAISE(MT_ERR_FORMAT, "%s: not an HDF5 file", path);
    if (is_hdf5 < 0 || (*out = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0)
        return MT_RAISE(MT_ERR_IO, "%s: cannot open as HDF5 (%s)", path, mt_h5_cause(cause));
    return MT_OK;
}
