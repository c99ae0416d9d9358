/* Checkpoint reader: verifies the whole-file checksum (ckpt_sum.c) before HDF5 opens the file,
 * then opens it read-only, checks the format and reads every dataset in full (so HDF5 verifies
 * every chunk's Fletcher32 checksum) and every root attribute. Anything that is not exactly what
 * the writer makes is refused with a message naming the file and object. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/ckpt_h5.h"

/* Bounds the walk of a hostile file with a huge number of groups or links. */
#define MAX_LINKS (8 * MT_CKPT_MAX_ARRAYS)

typedef struct {
    const char *path; /* the file, for messages */
    mt_ckpt *ck;
    int n_links;
    mt_status st;
} walk;

/* Refuses, before HDF5 sees it, what is not a regular, non-empty file whose checksum header
 * and whole-file checksum verify: a corrupted byte anywhere, a truncation, another format.
 * `sb` identifies the file verified. */
static mt_status check_file(const char *path, struct stat *sb) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC); /* a FIFO must not block us */
    if (fd < 0) return MT_RAISE(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    mt_status st = MT_OK;
    if (fstat(fd, sb) != 0)
        st = MT_RAISE(MT_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (S_ISDIR(sb->st_mode))
        st = MT_RAISE(MT_ERR_IO, "%s: is a directory, not a checkpoint file", path);
    else if (!S_ISREG(sb->st_mode))
        st = MT_RAISE(MT_ERR_IO, "%s: not a regular file", path);
    else if (sb->st_size == 0)
        st = MT_RAISE(MT_ERR_FORMAT, "%s: empty file", path);
    else
        st = ckpt_verify_fd(fd, (uint64_t)sb->st_size, path);
    close(fd);
    return st;
}

/* HDF5 opens the file again by name: it must be the one verified, not a newer checkpoint
 * renamed over it in between. */
static int same_file(hid_t file, hid_t fapl, const struct stat *verified) {
    void *handle = NULL;
    struct stat sb;
    return H5Fget_vfd_handle(file, fapl, &handle) >= 0 && handle && fstat(*(int *)handle, &sb) == 0 &&
           sb.st_dev == verified->st_dev && sb.st_ino == verified->st_ino;
}

/* A fixed-length string attribute holding one value, as a malloc'ed C string. */
static mt_status read_string(hid_t attr, const char *path, const char *name, char **out) {
    mt_status st = MT_OK;
    hid_t type = H5I_INVALID_HID, space = H5I_INVALID_HID, mem = H5I_INVALID_HID;
    char *buf = NULL;
    if ((type = H5Aget_type(attr)) < 0 || (space = H5Aget_space(attr)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: attribute %s: unreadable", path, name);
    if (H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) != 0 || H5Sget_simple_extent_npoints(space) != 1)
        MT_THROW(MT_ERR_FORMAT, "%s: attribute %s: not a fixed-length string", path, name);
    size_t len = H5Tget_size(type);
    if (len == 0 || len > MT_CKPT_MAX_ATTR_LEN)
        MT_THROW(MT_ERR_FORMAT, "%s: attribute %s: length %zu out of range", path, name, len);
    if (!(buf = malloc(len + 1))) MT_THROW(MT_ERR_NOMEM, "%s: attribute %s: out of memory", path, name);
    H5T_cset_t cset = H5Tget_cset(type);
    if ((mem = H5Tcopy(H5T_C_S1)) < 0 || H5Tset_size(mem, len) < 0 || H5Tset_strpad(mem, H5T_STR_NULLPAD) < 0 ||
        cset < 0 || H5Tset_cset(mem, cset) < 0 || H5Aread(attr, mem, buf) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: attribute %s: unreadable", path, name);
    buf[len] = '\0';
    *out = buf;
    buf = NULL;
fail:
    free(buf);
    if (mem >= 0) H5Tclose(mem);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return st;
}

static mt_status check_format(hid_t root, const char *path, mt_ckpt *ck) {
    mt_status st = MT_OK;
    hid_t attr = H5I_INVALID_HID, space = H5I_INVALID_HID, type = H5I_INVALID_HID;
    char *format = NULL;
    int version = 0;
    if (H5Aexists(root, CKPT_ATTR_FORMAT) <= 0)
        MT_THROW(MT_ERR_FORMAT, "%s: not a metatrain checkpoint (no \"%s\" attribute)", path, CKPT_ATTR_FORMAT);
    if ((attr = H5Aopen(root, CKPT_ATTR_FORMAT, H5P_DEFAULT)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: attribute %s: unreadable", path, CKPT_ATTR_FORMAT);
    MT_TRY(read_string(attr, path, CKPT_ATTR_FORMAT, &format));
    if (strcmp(format, MT_CKPT_FORMAT_NAME) != 0)
        MT_THROW(MT_ERR_FORMAT, "%s: not a metatrain checkpoint (format \"%.40s\")", path, format);
    H5Aclose(attr);
    if ((attr = H5Aopen(root, CKPT_ATTR_VERSION, H5P_DEFAULT)) < 0 || (type = H5Aget_type(attr)) < 0 ||
        (space = H5Aget_space(attr)) < 0 || H5Tget_class(type) != H5T_INTEGER ||
        H5Sget_simple_extent_npoints(space) != 1 || H5Aread(attr, H5T_NATIVE_INT, &version) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: attribute %s: missing or not an integer", path, CKPT_ATTR_VERSION);
    if (version < 1 || version > MT_CKPT_FORMAT_VERSION)
        MT_THROW(MT_ERR_FORMAT, "%s: format version %d not supported (this metatrain reads 1 to %d)", path, version,
                 MT_CKPT_FORMAT_VERSION);
    ck->format_version = version;
fail:
    free(format);
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (attr >= 0) H5Aclose(attr);
    return st;
}

static herr_t read_attr(hid_t root, const char *name, const H5A_info_t *info, void *op_data) {
    walk *w = op_data;
    mt_ckpt *ck = w->ck;
    if (!strcmp(name, CKPT_ATTR_FORMAT) || !strcmp(name, CKPT_ATTR_VERSION)) return 0;
    if (ck->n_attrs == MT_CKPT_MAX_ATTRS) {
        w->st = MT_RAISE(MT_ERR_FORMAT, "%s: more than %d root attributes", w->path, MT_CKPT_MAX_ATTRS);
        return -1;
    }
    if (strlen(name) >= sizeof ck->attrs[0].name) {
        w->st = MT_RAISE(MT_ERR_FORMAT, "%s: attribute name \"%.40s...\" too long", w->path, name);
        return -1;
    }
    hid_t attr = H5Aopen(root, name, H5P_DEFAULT);
    if (attr < 0) {
        w->st = MT_RAISE(MT_ERR_FORMAT, "%s: attribute %s: unreadable", w->path, name);
        return -1;
    }
    mt_ckpt_attr *at = &ck->attrs[ck->n_attrs];
    w->st = read_string(attr, w->path, name, &at->value);
    H5Aclose(attr);
    if (w->st != MT_OK) return -1;
    snprintf(at->name, sizeof at->name, "%s", name);
    ck->n_attrs++;
    return 0;
}

/* Root attributes must sit in the object header, whose checksum covers them: in dense storage
 * values over 4 KiB are unchecked. Our writer never puts them there. */
static mt_status read_attrs(hid_t root, walk *w) {
#if H5_VERSION_GE(1, 12, 0)
    H5O_native_info_t info;
    herr_t got = H5Oget_native_info(root, &info, H5O_NATIVE_INFO_META_SIZE);
#else
    H5O_info_t info;
    herr_t got = H5Oget_info2(root, &info, H5O_INFO_META_SIZE);
#endif
    if (got < 0) return MT_RAISE(MT_ERR_FORMAT, "%s: root group unreadable", w->path);
    if (info.meta_size.attr.heap_size || info.meta_size.attr.index_size)
        return MT_RAISE(MT_ERR_FORMAT,
                        "%s: root attributes in dense storage, which has no checksum (not written by metatrain)",
                        w->path);
    hsize_t idx = 0;
    if (H5Aiterate2(root, H5_INDEX_NAME, H5_ITER_INC, &idx, read_attr, w) < 0) {
        if (w->st != MT_OK) return w->st;
        return MT_RAISE(MT_ERR_FORMAT, "%s: root attributes unreadable (corrupted file)", w->path);
    }
    return MT_OK;
}

/* Checks type, shape, layout and checksum filter, then reads the whole dataset. */
static mt_status read_dataset(hid_t dset, const char *name, walk *w) {
    mt_status st = MT_OK;
    const char *path = w->path;
    hid_t type = H5I_INVALID_HID, space = H5I_INVALID_HID, dcpl = H5I_INVALID_HID;
    mt_ckpt_array a = {.rank = 0};
    hsize_t dims[H5S_MAX_RANK], chunk[4];
    unsigned flags;
    size_t n_params = 0;
    if (w->ck->n_arrays == MT_CKPT_MAX_ARRAYS)
        MT_THROW(MT_ERR_FORMAT, "%s: more than %d datasets", path, MT_CKPT_MAX_ARRAYS);
    snprintf(a.path, sizeof a.path, "%s", name);
    if ((type = H5Dget_type(dset)) < 0 || (space = H5Dget_space(dset)) < 0 || (dcpl = H5Dget_create_plist(dset)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: unreadable dataset header", path, name);
    if (H5Tequal(type, H5T_IEEE_F32LE) > 0)
        a.dtype = MT_CKPT_F32;
    else if (H5Tequal(type, H5T_IEEE_F64LE) > 0)
        a.dtype = MT_CKPT_F64;
    else if (H5Tequal(type, H5T_STD_I64LE) > 0)
        a.dtype = MT_CKPT_I64;
    else
        MT_THROW(MT_ERR_FORMAT, "%s: %s: data type is not little-endian float32, float64 or int64", path, name);
    int rank = H5Sget_simple_extent_type(space) == H5S_SIMPLE ? H5Sget_simple_extent_ndims(space) : -1;
    if (rank < 1 || rank > 4) MT_THROW(MT_ERR_FORMAT, "%s: %s: rank %d, want 1 to 4", path, name, rank);
    if (H5Sget_simple_extent_dims(space, dims, NULL) != rank)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: unreadable shape", path, name);
    a.rank = rank;
    for (int i = 0; i < rank; i++) a.dims[i] = dims[i];
    size_t elem = ckpt_dtype_size(a.dtype);
    if (!ckpt_extent_bytes(elem, rank, a.dims))
        MT_THROW(MT_ERR_FORMAT, "%s: %s: larger than %llu bytes", path, name, (unsigned long long)MT_CKPT_MAX_BYTES);
    /* Without the filter HDF5 would hand back corrupted data unchecked. */
    if (H5Pget_layout(dcpl) != H5D_CHUNKED ||
        H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &n_params, NULL, 0, NULL, NULL) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: not chunked with a Fletcher32 checksum (not written by metatrain)", path,
                 name);
    uint64_t chunk64[4], want_chunks = 1, elems = 1;
    if (H5Pget_chunk(dcpl, rank, chunk) != rank) MT_THROW(MT_ERR_FORMAT, "%s: %s: unreadable chunk shape", path, name);
    for (int i = 0; i < rank; i++) {
        if (chunk[i] == 0) MT_THROW(MT_ERR_FORMAT, "%s: %s: zero chunk dimension", path, name);
        chunk64[i] = chunk[i];
    }
    if (!ckpt_extent_bytes(elem, rank, chunk64)) MT_THROW(MT_ERR_FORMAT, "%s: %s: chunks too large", path, name);
    for (int i = 0; i < rank; i++) {
        want_chunks *= (a.dims[i] + chunk[i] - 1) / chunk[i];
        elems *= a.dims[i];
    }
    /* A chunk missing from the index would read back as fill values, silently. */
    hsize_t n_chunks = 0;
    if (H5Dget_num_chunks(dset, space, &n_chunks) < 0 || n_chunks != want_chunks)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: chunks missing or chunk index unreadable", path, name);
    if (!(a.data = malloc(elems ? elems * elem : 1))) MT_THROW(MT_ERR_NOMEM, "%s: %s: out of memory", path, name);
    if (elems && H5Dread(dset, ckpt_mem_type(a.dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, a.data) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: %s: checksum mismatch or unreadable data", path, name);
    w->ck->arrays[w->ck->n_arrays++] = a;
    a.data = NULL;
fail:
    free(a.data);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return st;
}

static herr_t visit_link(hid_t root, const char *rel, const H5L_info_t *info, void *op_data) {
    walk *w = op_data;
    char name[MT_CKPT_PATH_LEN];
    if (++w->n_links > MAX_LINKS) {
        w->st = MT_RAISE(MT_ERR_FORMAT, "%s: more than %d objects", w->path, MAX_LINKS);
        return -1;
    }
    if (snprintf(name, sizeof name, "/%s", rel) >= (int)sizeof name) {
        w->st = MT_RAISE(MT_ERR_FORMAT, "%s: /%.60s...: path longer than %d", w->path, rel, MT_CKPT_PATH_LEN - 1);
        return -1;
    }
    /* Soft and external links could point anywhere, even into other files. */
    if (info->type != H5L_TYPE_HARD) {
        w->st = MT_RAISE(MT_ERR_FORMAT, "%s: %s: a soft or external link (not written by metatrain)", w->path, name);
        return -1;
    }
    hid_t obj = H5Oopen(root, rel, H5P_DEFAULT);
    if (obj < 0) {
        w->st = MT_RAISE(MT_ERR_FORMAT, "%s: %s: corrupted or unreadable object header", w->path, name);
        return -1;
    }
    H5I_type_t kind = H5Iget_type(obj);
    if (kind == H5I_DATASET)
        w->st = read_dataset(obj, name, w);
    else if (kind != H5I_GROUP)
        w->st = MT_RAISE(MT_ERR_FORMAT, "%s: %s: neither a group nor a dataset", w->path, name);
    H5Oclose(obj);
    return w->st == MT_OK ? 0 : -1;
}

static int by_path(const void *a, const void *b) {
    return strcmp(((const mt_ckpt_array *)a)->path, ((const mt_ckpt_array *)b)->path);
}

mt_status mt_ckpt_read(const char *path, mt_ckpt *ck) {
    mt_status st = MT_OK;
    hid_t fapl = H5I_INVALID_HID, file = H5I_INVALID_HID, root = H5I_INVALID_HID;
    char cause[200];
    if (!path || !ck) return MT_RAISE(MT_ERR_ARG, "mt_ckpt_read: NULL argument");
    ck->n_arrays = ck->n_attrs = ck->format_version = 0;
    walk w = {.path = path, .ck = ck};
    struct stat verified;
    MT_TRY(check_file(path, &verified));
    ckpt_h5_quiet();
    /* STRONG: closing the file closes anything still open in it, so nothing keeps it cached.
     * No locking: files are replaced by rename, never changed in place, and some cluster file
     * systems refuse locks. sec2, the default driver, named so that same_file finds its fd. */
    if ((fapl = H5Pcreate(H5P_FILE_ACCESS)) < 0 || H5Pset_fapl_sec2(fapl) < 0 ||
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0 || H5Pset_file_locking(fapl, 0, 1) < 0)
        MT_THROW(MT_ERR_IO, "%s: cannot set up HDF5 file access", path);
    if ((file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: cannot open: corrupted or truncated HDF5 file (%s)", path, ckpt_h5_cause(cause));
    if (!same_file(file, fapl, &verified))
        MT_THROW(MT_ERR_IO, "%s: replaced while being read (by a newer checkpoint?): try again", path);
    if ((root = H5Gopen2(file, "/", H5P_DEFAULT)) < 0)
        MT_THROW(MT_ERR_FORMAT, "%s: root group unreadable (corrupted file)", path);
    MT_TRY(check_format(root, path, ck));
    MT_TRY(read_attrs(root, &w));
    /* Native order: HDF5 1.10.8 builds a sorted link table for any other order and, when a
     * corrupted heap makes that fail, frees the table's uninitialized entries and crashes. */
    if (H5Lvisit(root, H5_INDEX_NAME, H5_ITER_NATIVE, visit_link, &w) < 0) {
        st = w.st; /* a callback's failure was raised where it happened */
        if (st != MT_OK) goto fail;
        MT_THROW(MT_ERR_FORMAT, "%s: group structure unreadable (corrupted file)", path);
    }
    qsort(ck->arrays, (size_t)ck->n_arrays, sizeof *ck->arrays, by_path);
    H5Gclose(root);
    root = H5I_INVALID_HID;
    if (H5Fclose(file) < 0) {
        file = H5I_INVALID_HID;
        MT_THROW(MT_ERR_FORMAT, "%s: close failed (corrupted file?)", path);
    }
    H5Pclose(fapl);
    return MT_OK;
fail:
    if (root >= 0) H5Gclose(root);
    if (file >= 0) H5Fclose(file);
    if (fapl >= 0) H5Pclose(fapl);
    mt_ckpt_free(ck);
    return st;
}

void mt_ckpt_free(mt_ckpt *ck) {
    if (!ck) return;
    for (int i = 0; i < ck->n_arrays; i++) free(ck->arrays[i].data);
    for (int i = 0; i < ck->n_attrs; i++) free(ck->attrs[i].value);
    ck->n_arrays = ck->n_attrs = 0;
}

int mt_ckpt_i64(const mt_ckpt *ck, const char *path, int64_t *value) {
    const mt_ckpt_array *a = mt_ckpt_find(ck, path);
    if (!a || a->dtype != MT_CKPT_I64 || a->rank != 1 || a->dims[0] != 1) return 0;
    *value = *(const int64_t *)a->data;
    return 1;
}

const mt_ckpt_array *mt_ckpt_find(const mt_ckpt *ck, const char *path) {
    for (int i = 0; i < ck->n_arrays; i++)
        if (!strcmp(ck->arrays[i].path, path)) return &ck->arrays[i];
    return NULL;
}

const char *mt_ckpt_attr_value(const mt_ckpt *ck, const char *name) {
    for (int i = 0; i < ck->n_attrs; i++)
        if (!strcmp(ck->attrs[i].name, name)) return ck->attrs[i].value;
    return NULL;
}
