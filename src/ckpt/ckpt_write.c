/* Checkpoint writer: assembles arrays and root attributes, writes them to HDF5 atomically, and
 * keeps numbered copies. The format is described in metatrain/ckpt.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/ckpt_h5.h"
#include "core/file.h"
#include "metatrain/isolate.h"

/* Writing a checkpoint of up to a few GB to a slow shared file system. */
#define MT_CKPT_WRITE_TIMEOUT_S 3600

#define CHUNK_BYTES (1u << 20)

/* "/a/b": absolute, no empty, "." or ".." component, no trailing slash. */
static int valid_dataset_path(const char *p) {
    size_t n = strnlen(p, MT_CKPT_PATH_LEN);
    if (p[0] != '/' || n < 2 || n >= MT_CKPT_PATH_LEN || p[n - 1] == '/') return 0;
    for (const char *c = p; *c;) {
        const char *s = c + 1, *e = strchr(s, '/');
        if (!e) e = s + strlen(s);
        size_t len = (size_t)(e - s);
        if (len == 0 || (len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.')) return 0;
        c = e;
    }
    return 1;
}

static mt_status check_array(const mt_ckpt_array *a) {
    if (!valid_dataset_path(a->path))
        return MT_RAISE(
            MT_ERR_ARG,
            "checkpoint array \"%.*s\": path must be absolute, shorter than %d, without empty, . or .. components",
            MT_CKPT_PATH_LEN - 1, a->path, MT_CKPT_PATH_LEN);
    if (a->dtype != MT_CKPT_F32 && a->dtype != MT_CKPT_F64 && a->dtype != MT_CKPT_I64)
        return MT_RAISE(MT_ERR_ARG, "checkpoint array %s: unknown dtype %d", a->path, (int)a->dtype);
    if (a->rank < 1 || a->rank > 4)
        return MT_RAISE(MT_ERR_ARG, "checkpoint array %s: rank %d, want 1 to 4", a->path, a->rank);
    if (!ckpt_extent_bytes(ckpt_dtype_size(a->dtype), a->rank, a->dims))
        return MT_RAISE(MT_ERR_ARG, "checkpoint array %s: larger than %llu bytes", a->path,
                        (unsigned long long)MT_CKPT_MAX_BYTES);
    for (int i = 0; i < a->rank; i++)
        if (a->dims[i] == 0) return MT_OK;
    if (!a->data) return MT_RAISE(MT_ERR_ARG, "checkpoint array %s: no data", a->path);
    return MT_OK;
}

static mt_status check_attr(const mt_ckpt_attr *at) {
    size_t n = strnlen(at->name, sizeof at->name);
    if (n == 0 || n == sizeof at->name || strchr(at->name, '/'))
        return MT_RAISE(MT_ERR_ARG, "checkpoint attribute \"%.63s\": name must be 1 to 63 characters without '/'",
                        at->name);
    if (!strcmp(at->name, CKPT_ATTR_FORMAT) || !strcmp(at->name, CKPT_ATTR_VERSION))
        return MT_RAISE(MT_ERR_ARG, "checkpoint attribute %s: reserved name", at->name);
    if (!at->value) return MT_RAISE(MT_ERR_ARG, "checkpoint attribute %s: no value", at->name);
    if (strlen(at->value) > MT_CKPT_MAX_ATTR_LEN)
        return MT_RAISE(MT_ERR_ARG, "checkpoint attribute %s: value longer than %d bytes", at->name,
                        MT_CKPT_MAX_ATTR_LEN);
    return MT_OK;
}

mt_status mt_ckpt_add(mt_ckpt *ck, const char *path, mt_ckpt_dtype dtype, int rank, const uint64_t *dims,
                      const void *data) {
    if (!ck || !path || !dims) return MT_RAISE(MT_ERR_ARG, "mt_ckpt_add: NULL argument");
    if (ck->n_arrays >= MT_CKPT_MAX_ARRAYS)
        return MT_RAISE(MT_ERR_ARG, "checkpoint array %s: more than %d arrays", path, MT_CKPT_MAX_ARRAYS);
    if (mt_ckpt_find(ck, path)) return MT_RAISE(MT_ERR_ARG, "checkpoint array %s: added twice", path);
    if (strlen(path) >= MT_CKPT_PATH_LEN)
        return MT_RAISE(MT_ERR_ARG, "checkpoint array %s: path longer than %d", path, MT_CKPT_PATH_LEN - 1);
    mt_ckpt_array a = {.dtype = dtype, .rank = rank, .data = (void *)data};
    snprintf(a.path, sizeof a.path, "%s", path);
    for (int i = 0; i < rank && i < 4; i++) a.dims[i] = dims[i];
    mt_status st = check_array(&a);
    if (st != MT_OK) return st;
    ck->arrays[ck->n_arrays++] = a;
    return MT_OK;
}

mt_status mt_ckpt_add_attr(mt_ckpt *ck, const char *name, const char *value) {
    if (!ck || !name) return MT_RAISE(MT_ERR_ARG, "mt_ckpt_add_attr: NULL argument");
    if (ck->n_attrs >= MT_CKPT_MAX_ATTRS)
        return MT_RAISE(MT_ERR_ARG, "checkpoint attribute %s: more than %d attributes", name, MT_CKPT_MAX_ATTRS);
    if (mt_ckpt_attr_value(ck, name)) return MT_RAISE(MT_ERR_ARG, "checkpoint attribute %s: added twice", name);
    if (strlen(name) >= sizeof ck->attrs[0].name)
        return MT_RAISE(MT_ERR_ARG, "checkpoint attribute %s: name longer than 63", name);
    mt_ckpt_attr at = {.value = (char *)value};
    snprintf(at.name, sizeof at.name, "%s", name);
    mt_status st = check_attr(&at);
    if (st != MT_OK) return st;
    ck->attrs[ck->n_attrs++] = at;
    return MT_OK;
}

/* HDF5 failed on `what`. Its file driver records errno (full disk, file size limit) in the
 * innermost message; without one, the likeliest cause is still the disk. */
static mt_status write_failed(const char *path, const char *what) {
    int err = ckpt_h5_errno();
    if (err) return MT_RAISE(MT_ERR_IO, "%s: %s: write failed: %s", path, what, strerror(err));
    return MT_RAISE(MT_ERR_IO, "%s: %s: write failed (disk full?)", path, what);
}

/* A fixed-length string, never variable-length: those live in the global heap, which has no
 * checksum. NULLPAD so that the stored bytes are exactly the value; an empty value is one NUL. */
static mt_status write_string_attr(hid_t root, const char *name, const char *value, const char *path) {
    mt_status st = MT_OK;
    hid_t type = H5I_INVALID_HID, space = H5I_INVALID_HID, attr = H5I_INVALID_HID;
    size_t len = strlen(value);
    if ((type = H5Tcopy(H5T_C_S1)) < 0 || H5Tset_size(type, len ? len : 1) < 0 ||
        H5Tset_strpad(type, H5T_STR_NULLPAD) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0 ||
        (space = H5Screate(H5S_SCALAR)) < 0 ||
        (attr = H5Acreate2(root, name, type, space, H5P_DEFAULT, H5P_DEFAULT)) < 0 || H5Awrite(attr, type, value) < 0)
        goto h5fail;
    if (H5Aclose(attr) < 0) {
        attr = H5I_INVALID_HID;
        goto h5fail;
    }
    H5Sclose(space);
    H5Tclose(type);
    return MT_OK;
h5fail:
    st = write_failed(path, name);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return st;
}

static mt_status write_version_attr(hid_t root, const char *path) {
    hid_t space = H5I_INVALID_HID, attr = H5I_INVALID_HID;
    int version = MT_CKPT_FORMAT_VERSION;
    int ok = (space = H5Screate(H5S_SCALAR)) >= 0 &&
             (attr = H5Acreate2(root, CKPT_ATTR_VERSION, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
             H5Awrite(attr, H5T_NATIVE_INT, &version) >= 0;
    if (ok && H5Aclose(attr) < 0) ok = 0, attr = H5I_INVALID_HID;
    mt_status st = ok ? MT_OK : write_failed(path, CKPT_ATTR_VERSION); /* before closes clear the stack */
    if (!ok && attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return st;
}

/* Groups are created here rather than by H5Pset_create_intermediate_group: the library's
 * intermediate groups get the default creation list, whose time stamps would make two equal
 * checkpoints differ. */
static mt_status make_groups(hid_t file, hid_t gcpl, const char *dset, const char *path) {
    char prefix[MT_CKPT_PATH_LEN];
    for (const char *s = strchr(dset + 1, '/'); s; s = strchr(s + 1, '/')) {
        size_t n = (size_t)(s - dset);
        memcpy(prefix, dset, n);
        prefix[n] = '\0';
        htri_t exists = H5Lexists(file, prefix, H5P_DEFAULT);
        if (exists > 0) continue; /* if it is a dataset, H5Dcreate2 fails below and says so */
        hid_t group = exists < 0 ? H5I_INVALID_HID : H5Gcreate2(file, prefix, H5P_DEFAULT, gcpl, H5P_DEFAULT);
        if (group < 0 || H5Gclose(group) < 0) {
            if (ckpt_h5_errno()) return write_failed(path, prefix);
            return MT_RAISE(MT_ERR_ARG, "%s: cannot create group %s for %s (is it a dataset?)", path, prefix, dset);
        }
    }
    return MT_OK;
}

/* Chunk = the whole array, halving its largest dimension until a chunk is at most CHUNK_BYTES:
 * small arrays get one chunk and one checksum, big ones stay readable piecewise. */
static void chunk_dims(const mt_ckpt_array *a, hsize_t *chunk) {
    uint64_t bytes = ckpt_dtype_size(a->dtype);
    for (int i = 0; i < a->rank; i++) {
        chunk[i] = a->dims[i] ? a->dims[i] : 1;
        bytes *= chunk[i];
    }
    while (bytes > CHUNK_BYTES) {
        int big = 0;
        for (int i = 1; i < a->rank; i++)
            if (chunk[i] > chunk[big]) big = i;
        bytes = bytes / chunk[big] * ((chunk[big] + 1) / 2);
        chunk[big] = (chunk[big] + 1) / 2;
    }
}

static mt_status write_array(hid_t file, hid_t gcpl, const mt_ckpt_array *a, const char *path) {
    mt_status st = MT_OK;
    hid_t space = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, dset = H5I_INVALID_HID;
    hsize_t dims[4], maxdims[4], chunk[4];
    int empty = 0;
    MT_TRY(make_groups(file, gcpl, a->path, path));
    for (int i = 0; i < a->rank; i++) {
        dims[i] = a->dims[i];
        /* HDF5 wants an extendible dimension where a chunk (>= 1) exceeds an empty extent */
        maxdims[i] = a->dims[i] ? a->dims[i] : H5S_UNLIMITED;
        empty |= a->dims[i] == 0;
    }
    chunk_dims(a, chunk);
    if ((space = H5Screate_simple(a->rank, dims, maxdims)) < 0 || (dcpl = H5Pcreate(H5P_DATASET_CREATE)) < 0 ||
        H5Pset_chunk(dcpl, a->rank, chunk) < 0 || H5Pset_fletcher32(dcpl) < 0 || H5Pset_obj_track_times(dcpl, 0) < 0)
        goto h5fail;
    if ((dset = H5Dcreate2(file, a->path, ckpt_file_type(a->dtype), space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0) {
        if (ckpt_h5_errno()) goto h5fail;
        MT_THROW(MT_ERR_ARG, "%s: cannot create dataset %s (does a group or dataset of that name exist?)", path,
                 a->path);
    }
    if (!empty && H5Dwrite(dset, ckpt_mem_type(a->dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, a->data) < 0) goto h5fail;
    herr_t closed = H5Dclose(dset);
    dset = H5I_INVALID_HID;
    if (closed < 0) goto h5fail;
    H5Pclose(dcpl);
    H5Sclose(space);
    return MT_OK;
h5fail:
    st = write_failed(path, a->path);
fail:
    if (dset >= 0) H5Dclose(dset);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return st;
}

/* Writes the whole checkpoint into the (already created, empty) file `tmp`. */
static mt_status write_hdf5(const char *tmp, const mt_ckpt *ck, const char *path) {
    mt_status st = MT_OK;
    hid_t fcpl = H5I_INVALID_HID, fapl = H5I_INVALID_HID, gcpl = H5I_INVALID_HID, file = H5I_INVALID_HID;
    /* The root group's attributes stay in its (checksummed) object header: past the default 8
     * they would move to dense storage, where values over 4 KiB have no checksum at all. The user
     * block is left for the whole-file checksum header (seal_and_sync). */
    if ((fcpl = H5Pcreate(H5P_FILE_CREATE)) < 0 || H5Pset_obj_track_times(fcpl, 0) < 0 ||
        H5Pset_userblock(fcpl, CKPT_HEADER_SIZE) < 0 || H5Pset_attr_phase_change(fcpl, MT_CKPT_MAX_ATTRS + 2, 0) < 0 ||
        (fapl = H5Pcreate(H5P_FILE_ACCESS)) < 0 || H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST) < 0 ||
        H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0 || H5Pset_file_locking(fapl, 0, 1) < 0 ||
        (gcpl = H5Pcreate(H5P_GROUP_CREATE)) < 0 || H5Pset_obj_track_times(gcpl, 0) < 0)
        MT_THROW(MT_ERR_IO, "%s: cannot set up HDF5 property lists", path);
    if ((file = H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl)) < 0) {
        int err = ckpt_h5_errno();
        MT_THROW(MT_ERR_IO, "%s: cannot create temporary file: %s", path, err ? strerror(err) : "HDF5 refused");
    }
    MT_TRY(write_string_attr(file, CKPT_ATTR_FORMAT, MT_CKPT_FORMAT_NAME, path));
    MT_TRY(write_version_attr(file, path));
    for (int i = 0; i < ck->n_attrs; i++) MT_TRY(write_string_attr(file, ck->attrs[i].name, ck->attrs[i].value, path));
    for (int i = 0; i < ck->n_arrays; i++) MT_TRY(write_array(file, gcpl, &ck->arrays[i], path));
    if (H5Fflush(file, H5F_SCOPE_LOCAL) < 0) {
        st = write_failed(path, "flush");
        goto fail;
    }
    herr_t closed = H5Fclose(file);
    file = H5I_INVALID_HID;
    if (closed < 0) {
        st = write_failed(path, "close");
        goto fail;
    }
    H5Pclose(gcpl);
    H5Pclose(fapl);
    H5Pclose(fcpl);
    return MT_OK;
fail:
    if (file >= 0) H5Fclose(file); /* H5F_CLOSE_STRONG: also closes whatever is still open in it */
    if (gcpl >= 0) H5Pclose(gcpl);
    if (fapl >= 0) H5Pclose(fapl);
    if (fcpl >= 0) H5Pclose(fcpl);
    return st;
}

/* Writes the checksum header over the file HDF5 has closed (the bytes it covers are final now),
 * then flushes the file to disk. */
typedef struct {
    const char *tmp;
    const mt_ckpt *ck;
    const char *path;
} write_job;

static mt_status write_hdf5_job(void *arg) {
    const write_job *job = arg;
    return write_hdf5(job->tmp, job->ck, job->path);
}

/* Writes the checksum header over the file HDF5 has closed: the bytes it covers are final now. */
static mt_status seal(const char *file, const char *path) {
    int fd = open(file, O_RDWR | O_CLOEXEC);
    if (fd < 0) return MT_RAISE(MT_ERR_IO, "%s: cannot reopen temporary file: %s", path, strerror(errno));
    mt_status st = ckpt_seal_fd(fd, path);
    if (close(fd) != 0 && st == MT_OK) st = MT_RAISE(MT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return st;
}

mt_status mt_ckpt_write(const char *path, const mt_ckpt *ck) {
    mt_status st = MT_OK;
    char tmp[PATH_MAX];
    int created = 0;
    if (!path || !ck) return MT_RAISE(MT_ERR_ARG, "mt_ckpt_write: NULL argument");
    if (ck->n_arrays < 0 || ck->n_arrays > MT_CKPT_MAX_ARRAYS || ck->n_attrs < 0 || ck->n_attrs > MT_CKPT_MAX_ATTRS)
        return MT_RAISE(MT_ERR_ARG, "%s: bad array or attribute count", path);
    for (int i = 0; i < ck->n_arrays; i++) MT_TRY(check_array(&ck->arrays[i]));
    for (int i = 0; i < ck->n_attrs; i++) MT_TRY(check_attr(&ck->attrs[i]));
    MT_TRY(mt_file_temp_path(tmp, sizeof tmp, path));
    ckpt_h5_quiet();
    /* Created by hand first so that a failure is reported with its errno. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) MT_THROW(MT_ERR_IO, "%s: cannot create temporary file: %s", path, strerror(errno));
    close(fd);
    created = 1;
    /* HDF5 writes in a child process. After a failed write (a full disk) HDF5 1.10 keeps the
     * half-closed file and crashes when the library shuts down (H5F__close_cb, reached from
     * MPI_Finalize); a child that leaves with _exit takes that state with it. */
    write_job job = {tmp, ck, path};
    MT_TRY(mt_isolate_run(write_hdf5_job, &job, path, MT_CKPT_WRITE_TIMEOUT_S));
    MT_TRY(seal(tmp, path));
    created = 0; /* mt_file_commit removes it on failure */
    return mt_file_commit(tmp, path);
fail:
    if (created) unlink(tmp);
    return st;
}

/* ---- numbered copies ---- */

static mt_status copy_atomic(const char *src, const char *dest) {
    mt_status st = MT_OK;
    char tmp[PATH_MAX], buf[1 << 16];
    int in = -1, out = -1, created = 0;
    MT_TRY(mt_file_temp_path(tmp, sizeof tmp, dest));
    if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0) MT_THROW(MT_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    if ((out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666)) < 0)
        MT_THROW(MT_ERR_IO, "%s: cannot create temporary file: %s", dest, strerror(errno));
    created = 1;
    for (;;) {
        ssize_t got = read(in, buf, sizeof buf);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) MT_THROW(MT_ERR_IO, "%s: read failed: %s", src, strerror(errno));
        if (got == 0) break;
        for (ssize_t done = 0; done < got;) {
            ssize_t put = write(out, buf + done, (size_t)(got - done));
            if (put < 0 && errno == EINTR) continue;
            if (put < 0) MT_THROW(MT_ERR_IO, "%s: write failed: %s", dest, strerror(errno));
            done += put;
        }
    }
    int closed = close(out);
    out = -1;
    if (closed != 0) MT_THROW(MT_ERR_IO, "%s: write failed: %s", dest, strerror(errno));
    close(in);
    in = -1;
    created = 0; /* mt_file_commit removes it on failure */
    return mt_file_commit(tmp, dest);
fail:
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    if (created) unlink(tmp);
    return st;
}

typedef struct {
    long long iteration;
    char name[256]; /* a d_name */
} numbered_copy;

static int by_iteration(const void *a, const void *b) {
    long long x = ((const numbered_copy *)a)->iteration, y = ((const numbered_copy *)b)->iteration;
    return (x > y) - (x < y);
}

/* "checkpoint-<digits>.h5" -> the number; -1 for any other name. */
static long long copy_number(const char *name) {
    const char *d = name + strlen("checkpoint-");
    if (strncmp(name, "checkpoint-", strlen("checkpoint-")) != 0) return -1;
    size_t n = strspn(d, "0123456789");
    if (n == 0 || n > 18 || strcmp(d + n, ".h5") != 0) return -1;
    return strtoll(d, NULL, 10);
}

/* Deletes the lowest-numbered copies in `dir` until `keep` remain. */
static mt_status prune_copies(const char *dir, int keep) {
    mt_status st = MT_OK;
    numbered_copy *copies = NULL;
    size_t n = 0, cap = 0;
    char victim[PATH_MAX];
    DIR *d = opendir(dir);
    if (!d) return MT_RAISE(MT_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    for (struct dirent *e; (e = readdir(d));) {
        long long it = copy_number(e->d_name);
        if (it < 0) continue;
        if (n == cap) {
            numbered_copy *grown = realloc(copies, (cap = cap ? 2 * cap : 16) * sizeof *copies);
            if (!grown) MT_THROW(MT_ERR_NOMEM, "%s: out of memory listing checkpoint copies", dir);
            copies = grown;
        }
        copies[n].iteration = it;
        snprintf(copies[n++].name, sizeof copies->name, "%s", e->d_name);
    }
    qsort(copies, n, sizeof *copies, by_iteration);
    for (size_t i = 0; i + (size_t)keep < n; i++) {
        snprintf(victim, sizeof victim, "%s/%s", dir, copies[i].name);
        if (unlink(victim) != 0 && errno != ENOENT)
            MT_THROW(MT_ERR_IO, "%s: cannot delete old checkpoint copy: %s", victim, strerror(errno));
    }
fail:
    free(copies);
    closedir(d);
    return st;
}

mt_status mt_ckpt_keep_copy(const char *path, const char *dir, int iteration, int keep) {
    mt_status st = MT_OK;
    char dest[PATH_MAX];
    if (!path || !dir) return MT_RAISE(MT_ERR_ARG, "mt_ckpt_keep_copy: NULL argument");
    if (keep <= 0) return MT_OK;
    if (iteration < 0) return MT_RAISE(MT_ERR_ARG, "%s: negative iteration %d for a checkpoint copy", path, iteration);
    if (snprintf(dest, sizeof dest, "%s/checkpoint-%08d.h5", dir, iteration) >= (int)sizeof dest)
        return MT_RAISE(MT_ERR_ARG, "%s: path too long", dir);
    MT_TRY(copy_atomic(path, dest));
    MT_TRY(prune_copies(dir, keep));
fail:
    return st;
}
