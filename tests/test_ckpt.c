#define _GNU_SOURCE /* nftw */
/* HDF5 checkpoints: round trip, the checksum header, readability by the HDF5 tools and h5py,
 * reproducible bytes, detection of any corrupted byte (by the whole-file checksum, and by the
 * checks inside when a file's outer checksum is valid), truncation, atomic replacement on
 * failure, numbered copies. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <hdf5.h>

#include "ckpt/ckpt_h5.h"
#include "metatrain/ckpt.h"

static char tmpdir[64];

/* ---- the sample checkpoint ---- */

enum { BIG_N = 600000 }; /* 2.4 MB of float32: three 1 MiB chunks */

typedef struct {
    float w4[2 * 3 * 3 * 3], bias[2], mom[10][3];
    double head[5 * 4], lr3[2 * 2 * 3];
    int64_t step[1], seed[3];
    float *big;
    char config[20001];
} sample_data;

static sample_data sd;

static void fill_sample_data(void) {
    for (size_t i = 0; i < sizeof sd.w4 / sizeof *sd.w4; i++) sd.w4[i] = (float)i * 0.25f - 3.0f;
    sd.bias[0] = -1.5f;
    sd.bias[1] = 1e-30f;
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 3; j++) sd.mom[i][j] = (float)(i * 3 + j) / 7.0f;
    for (int i = 0; i < 20; i++) sd.head[i] = 1.0 / (i + 1);
    for (int i = 0; i < 12; i++) sd.lr3[i] = 1e-3 * i;
    sd.step[0] = 123456789012345LL;
    sd.seed[0] = -1;
    sd.seed[1] = INT64_MAX;
    sd.seed[2] = INT64_MIN;
    /* a config-like text, 20 000 bytes, no two lines alike */
    size_t n = 0;
    for (int line = 0; n < sizeof sd.config - 1; line++)
        n += (size_t)snprintf(sd.config + n, sizeof sd.config - n, "key_%d = value %d # comment\n", line, line * 31);
    sd.config[sizeof sd.config - 1] = '\0';
    sd.big = malloc(BIG_N * sizeof *sd.big);
    assert_non_null(sd.big);
    for (int i = 0; i < BIG_N; i++) sd.big[i] = (float)i;
}

/* Every dtype, ranks 1 to 4, an empty series, a scalar, a group of more than 8 links (HDF5 then
 * stores links in a heap and B-tree); `big` adds a multi-chunk dataset. */
static void build_sample(mt_ckpt *ck, int big, const char *created) {
    memset(ck, 0, sizeof *ck);
    assert_int_equal(mt_ckpt_add(ck, "/params/conv1/weight", MT_CKPT_F32, 4, (uint64_t[]){2, 3, 3, 3}, sd.w4), MT_OK);
    assert_int_equal(mt_ckpt_add(ck, "/params/conv1/bias", MT_CKPT_F32, 1, (uint64_t[]){2}, sd.bias), MT_OK);
    assert_int_equal(mt_ckpt_add(ck, "/params/head/w", MT_CKPT_F64, 2, (uint64_t[]){5, 4}, sd.head), MT_OK);
    assert_int_equal(mt_ckpt_add(ck, "/params/inner_lr/conv1/weight", MT_CKPT_F64, 3, (uint64_t[]){2, 2, 3}, sd.lr3),
                     MT_OK);
    assert_int_equal(mt_ckpt_add(ck, "/optimizer/step", MT_CKPT_I64, 1, (uint64_t[]){1}, sd.step), MT_OK);
    for (int i = 0; i < 10; i++) {
        char p[64];
        snprintf(p, sizeof p, "/optimizer/m/p%d", i);
        assert_int_equal(mt_ckpt_add(ck, p, MT_CKPT_F32, 1, (uint64_t[]){3}, sd.mom[i]), MT_OK);
    }
    assert_int_equal(mt_ckpt_add(ck, "/train/seed", MT_CKPT_I64, 1, (uint64_t[]){3}, sd.seed), MT_OK);
    assert_int_equal(mt_ckpt_add(ck, "/metrics/loss", MT_CKPT_F32, 1, (uint64_t[]){0}, NULL), MT_OK);
    if (big) assert_int_equal(mt_ckpt_add(ck, "/params/big", MT_CKPT_F32, 1, (uint64_t[]){BIG_N}, sd.big), MT_OK);
    assert_int_equal(mt_ckpt_add_attr(ck, "config", sd.config), MT_OK);
    assert_int_equal(mt_ckpt_add_attr(ck, "algorithm", "maml"), MT_OK);
    assert_int_equal(mt_ckpt_add_attr(ck, "empty", ""), MT_OK);
    assert_int_equal(mt_ckpt_add_attr(ck, "note", "d\xc3\xa9j\xc3\xa0 vu \xce\xb1\xce\xb2"), MT_OK);
    if (created) assert_int_equal(mt_ckpt_add_attr(ck, "created", created), MT_OK);
}

static size_t array_bytes(const mt_ckpt_array *a) {
    size_t n = a->dtype == MT_CKPT_F32 ? 4 : 8;
    for (int i = 0; i < a->rank; i++) n *= a->dims[i];
    return n;
}

/* 1 when `got` holds exactly the arrays and attributes of `want`. */
static int same_content(const mt_ckpt *want, const mt_ckpt *got) {
    if (want->n_arrays != got->n_arrays || want->n_attrs != got->n_attrs) return 0;
    for (int i = 0; i < want->n_arrays; i++) {
        const mt_ckpt_array *w = &want->arrays[i], *g = mt_ckpt_find(got, w->path);
        if (!g || g->dtype != w->dtype || g->rank != w->rank) return 0;
        for (int d = 0; d < w->rank; d++)
            if (g->dims[d] != w->dims[d]) return 0;
        if (array_bytes(w) && memcmp(w->data, g->data, array_bytes(w)) != 0) return 0;
    }
    for (int i = 0; i < want->n_attrs; i++) {
        const char *v = mt_ckpt_attr_value(got, want->attrs[i].name);
        if (!v || strcmp(v, want->attrs[i].value) != 0) return 0;
    }
    return 1;
}

/* ---- files ---- */

static char *path_in(char *buf, const char *name) {
    snprintf(buf, 256, "%s/%s", tmpdir, name);
    return buf;
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(*n ? *n : 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *n, f), *n);
    fclose(f);
    return buf;
}

static void spit(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* CRC-32 as zlib and Python's zlib.crc32 compute it (reflected, polynomial 0xedb88320), bit by
 * bit: a reference written independently of the one the library calls. */
static uint32_t reference_crc32(const unsigned char *p, size_t n) {
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = crc >> 1 ^ (0xedb88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

static uint64_t get_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Rewrites the checksum header to match the bytes after it, as other software (or a hostile
 * file's author) could: what is left to refuse the file is the checks inside. */
static void reseal(const char *path) {
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ckpt_seal_fd(fd, path), MT_OK);
    assert_int_equal(close(fd), 0);
}

static int count_temp_files(const char *dir) {
    int n = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }

static int setup(void **state) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mt_ckpt_XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    fill_sample_data();
    return 0;
}

static int teardown(void **state) {
    free(sd.big);
    return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The reader must not leave anything open in HDF5: a file kept open would be served from the
 * library's cache the next time, hiding corruption on disk. */
static void assert_nothing_open(void) { assert_int_equal(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0); }

/* Expects mt_ckpt_read(path) to fail with `status` and a message containing `part`. */
static void expect_read_failure(const char *path, mt_status status, const char *part) {
    mt_ckpt *ck = calloc(1, sizeof *ck);
    mt_error_clear();
    mt_status st = mt_ckpt_read(path, ck);
    if (st != status || !strstr(mt_error_message(), part) || !strstr(mt_error_message(), path))
        fail_msg("want %s containing \"%s\", got %s: %s", mt_status_name(status), part, mt_status_name(st),
                 mt_error_message());
    assert_int_equal(ck->n_arrays + ck->n_attrs, 0);
    assert_null(strchr(mt_error_message(), '\n'));
    mt_error_clear();
    assert_nothing_open();
    free(ck);
}

/* ---- tests ---- */

static void test_round_trip(void **state) {
    char path[256];
    mt_ckpt *ck = calloc(1, sizeof *ck), *got = calloc(1, sizeof *got);
    build_sample(ck, 1, "2024-01-01T00:00:00Z");
    assert_int_equal(mt_ckpt_write(path_in(path, "rt.h5"), ck), MT_OK);
    assert_int_equal(count_temp_files(tmpdir), 0);
    assert_int_equal(mt_ckpt_read(path, got), MT_OK);
    assert_nothing_open();
    assert_int_equal(got->format_version, MT_CKPT_FORMAT_VERSION);
    assert_true(same_content(ck, got));
    assert_string_equal(mt_ckpt_attr_value(got, "config"), sd.config);
    assert_int_equal(strlen(mt_ckpt_attr_value(got, "config")), 20000);
    assert_string_equal(mt_ckpt_attr_value(got, "empty"), "");
    assert_null(mt_ckpt_attr_value(got, "format")); /* ours, not the caller's */
    const mt_ckpt_array *loss = mt_ckpt_find(got, "/metrics/loss");
    assert_non_null(loss);
    assert_int_equal(loss->dims[0], 0);
    assert_int_equal(mt_ckpt_find(got, "/optimizer/step")->rank, 1);
    assert_int_equal(((int64_t *)mt_ckpt_find(got, "/optimizer/step")->data)[0], 123456789012345LL);
    assert_null(mt_ckpt_find(got, "/params"));
    mt_ckpt_free(got);
    assert_int_equal(got->n_arrays, 0);

    /* attributes of the largest size, all at once, stay readable (and in the object header) */
    char *longest = malloc(MT_CKPT_MAX_ATTR_LEN + 1);
    memset(longest, 'x', MT_CKPT_MAX_ATTR_LEN);
    longest[MT_CKPT_MAX_ATTR_LEN] = '\0';
    memset(ck, 0, sizeof *ck);
    for (int i = 0; i < MT_CKPT_MAX_ATTRS; i++) {
        char name[16];
        snprintf(name, sizeof name, "a%02d", i);
        assert_int_equal(mt_ckpt_add_attr(ck, name, longest), MT_OK);
    }
    assert_int_equal(mt_ckpt_write(path, ck), MT_OK);
    assert_int_equal(mt_ckpt_read(path, got), MT_OK);
    assert_int_equal(got->n_attrs, MT_CKPT_MAX_ATTRS);
    assert_true(same_content(ck, got));
    mt_ckpt_free(got);
    free(longest);
    free(ck);
    free(got);
}

static void test_bad_arguments(void **state) {
    mt_ckpt *ck = calloc(1, sizeof *ck);
    float x[2] = {0};
    const char *bad_paths[] = {"params/x", "/", "/a//b", "/a/", "/a/./b", "/a/../b"};
    for (size_t i = 0; i < sizeof bad_paths / sizeof *bad_paths; i++)
        assert_int_equal(mt_ckpt_add(ck, bad_paths[i], MT_CKPT_F32, 1, (uint64_t[]){2}, x), MT_ERR_ARG);
    assert_int_equal(mt_ckpt_add(ck, "/x", MT_CKPT_F32, 5, (uint64_t[]){1, 1, 1, 1, 2}, x), MT_ERR_ARG);
    assert_int_equal(mt_ckpt_add(ck, "/x", MT_CKPT_F32, 0, (uint64_t[]){2}, x), MT_ERR_ARG);
    assert_int_equal(mt_ckpt_add(ck, "/x", MT_CKPT_F32, 1, (uint64_t[]){2}, NULL), MT_ERR_ARG);
    assert_int_equal(mt_ckpt_add(ck, "/x", MT_CKPT_F64, 2, (uint64_t[]){1u << 20, 1u << 8}, x), MT_ERR_ARG);
    assert_int_equal(mt_ckpt_add(ck, "/x", MT_CKPT_F32, 1, (uint64_t[]){2}, x), MT_OK);
    assert_int_equal(mt_ckpt_add(ck, "/x", MT_CKPT_F32, 1, (uint64_t[]){2}, x), MT_ERR_ARG);
    assert_int_equal(mt_ckpt_add_attr(ck, "format", "mine"), MT_ERR_ARG);
    assert_int_equal(mt_ckpt_add_attr(ck, "", "v"), MT_ERR_ARG);
    char *too_long = malloc(MT_CKPT_MAX_ATTR_LEN + 2);
    memset(too_long, 'y', MT_CKPT_MAX_ATTR_LEN + 1);
    too_long[MT_CKPT_MAX_ATTR_LEN + 1] = '\0';
    assert_int_equal(mt_ckpt_add_attr(ck, "config", too_long), MT_ERR_ARG);
    free(too_long);
    for (int i = 0; i < MT_CKPT_MAX_ATTRS; i++) {
        char name[16];
        snprintf(name, sizeof name, "a%d", i);
        assert_int_equal(mt_ckpt_add_attr(ck, name, "v"), MT_OK);
    }
    assert_int_equal(mt_ckpt_add_attr(ck, "one_more", "v"), MT_ERR_ARG);
    /* a dataset where the next one needs a group: refused at write time, naming both */
    char path[256];
    memset(ck, 0, sizeof *ck);
    assert_int_equal(mt_ckpt_add(ck, "/a", MT_CKPT_F32, 1, (uint64_t[]){2}, x), MT_OK);
    assert_int_equal(mt_ckpt_add(ck, "/a/b", MT_CKPT_F32, 1, (uint64_t[]){2}, x), MT_OK);
    mt_error_clear();
    assert_int_equal(mt_ckpt_write(path_in(path, "clash.h5"), ck), MT_ERR_ARG);
    assert_non_null(strstr(mt_error_message(), "/a/b"));
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(count_temp_files(tmpdir), 0);
    mt_error_clear();
    free(ck);
}

/* The header as documented in ckpt_h5.h, checked with the reference CRC-32: anyone can verify a
 * checkpoint with Python's zlib.crc32. */
static void test_checksum_header(void **state) {
    char path[256], bad[256];
    mt_ckpt *ck = calloc(1, sizeof *ck);
    build_sample(ck, 1, "now");
    assert_int_equal(mt_ckpt_write(path_in(path, "header.h5"), ck), MT_OK);
    size_t n;
    unsigned char *b = slurp(path, &n);
    assert_true(n > CKPT_HEADER_SIZE);
    assert_memory_equal(b, "metatrain-ckpt\0\0", 16);
    assert_int_equal(get_le(b + 16, 4), CKPT_HEADER_FORMAT);
    assert_int_equal(get_le(b + 20, 8), n - CKPT_HEADER_SIZE);
    assert_int_equal(get_le(b + 28, 4), reference_crc32(b + CKPT_HEADER_SIZE, n - CKPT_HEADER_SIZE));
    assert_int_equal(get_le(b + 32, 4), reference_crc32(b, 32));
    for (size_t i = 36; i < CKPT_HEADER_SIZE; i++) assert_int_equal(b[i], 0);
    assert_memory_equal(b + CKPT_HEADER_SIZE, "\x89HDF\r\n\x1a\n", 8); /* HDF5's superblock follows */
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), fcpl = H5Fget_create_plist(file);
    hsize_t userblock = 0;
    assert_true(H5Pget_userblock(fcpl, &userblock) >= 0);
    assert_int_equal(userblock, CKPT_HEADER_SIZE);
    H5Pclose(fcpl);
    H5Fclose(file);
    /* a later header format, consistent in itself, is named as such */
    b[16] = 2;
    uint32_t crc = reference_crc32(b, 32);
    for (int i = 0; i < 4; i++) b[32 + i] = (unsigned char)(crc >> 8 * i);
    spit(path_in(bad, "header_v2.h5"), b, n);
    expect_read_failure(bad, MT_ERR_FORMAT, "checksum header format 2 not supported");
    free(b);
    free(ck);
}

/* Compares what h5py sees in two files: the checkpoint (user block 512) and its HDF5 part alone. */
static const char *h5py_compare =
    "import sys, h5py\n"
    "def content(name):\n"
    "    out = {}\n"
    "    def visit(key, obj):\n"
    "        out[key] = (obj.dtype.str, obj.shape, obj.chunks, obj.fletcher32, obj[()].tobytes())"
    " if isinstance(obj, h5py.Dataset) else 'group'\n"
    "    with h5py.File(name, 'r') as f:\n"
    "        f.visititems(visit)\n"
    "        out['/'] = sorted((k, str(v)) for k, v in f.attrs.items())\n"
    "        return f.userblock_size, out\n"
    "(ua, a), (ub, b) = content(sys.argv[1]), content(sys.argv[2])\n"
    "sys.exit(0 if ua == 512 and ub == 0 and a == b and len(a) > 10 else 1)\n";

/* The header is invisible to HDF5 readers: h5dump and h5py see exactly what they see in the same
 * file with the header cut off (HDF5 finds its superblock wherever the data start). */
static void test_hdf5_tools_read_it(void **state) {
    char path[256], bare[256], script[256], cmd[1200];
    mt_ckpt *ck = calloc(1, sizeof *ck);
    build_sample(ck, 0, "now");
    assert_int_equal(mt_ckpt_write(path_in(path, "tools.h5"), ck), MT_OK);
    size_t n;
    unsigned char *bytes = slurp(path, &n);
    spit(path_in(bare, "tools_bare.h5"), bytes + CKPT_HEADER_SIZE, n - CKPT_HEADER_SIZE);
    if (access("/usr/bin/h5dump", X_OK) == 0) {
        snprintf(cmd, sizeof cmd, "/usr/bin/h5dump -H %s > /dev/null 2>&1", path);
        assert_int_equal(system(cmd), 0);
        snprintf(cmd, sizeof cmd, "/usr/bin/h5dump -d /params/head/w %s > /dev/null 2>&1", path);
        assert_int_equal(system(cmd), 0);
        snprintf(cmd, sizeof cmd, "/usr/bin/h5dump -B %s | grep -q 'USERBLOCK_SIZE 512'", path);
        assert_int_equal(system(cmd), 0);
        /* all but the first line, which names the file */
        snprintf(cmd, sizeof cmd,
                 "cd %s && /usr/bin/h5dump -p tools.h5 | tail -n +2 > dump.txt && /usr/bin/h5dump -p tools_bare.h5 | "
                 "tail -n +2 > dump_bare.txt && [ -s dump.txt ] && cmp -s dump.txt dump_bare.txt",
                 tmpdir);
        assert_int_equal(system(cmd), 0);
    }
    if (system("/usr/bin/python3 -c 'import h5py' > /dev/null 2>&1") == 0) {
        spit(path_in(script, "h5py_compare.py"), h5py_compare, strlen(h5py_compare));
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %s", script, path, bare);
        assert_int_equal(system(cmd), 0);
    } else {
        print_message("h5py not installed: the h5py comparison is skipped\n");
    }
    free(bytes);
    free(ck);
}

/* Equal content gives equal bytes, apart from root attributes such as "created". */
static void test_reproducible(void **state) {
    char a[256], b[256], c[256], cmd[900];
    mt_ckpt *ck = calloc(1, sizeof *ck);
    build_sample(ck, 1, "2024-01-01T00:00:00Z");
    assert_int_equal(mt_ckpt_write(path_in(a, "rep_a.h5"), ck), MT_OK);
    sleep(1); /* a time stamp anywhere in the file would now differ */
    assert_int_equal(mt_ckpt_write(path_in(b, "rep_b.h5"), ck), MT_OK);
    size_t na, nb;
    unsigned char *ba = slurp(a, &na), *bb = slurp(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(ba, bb, na);
    free(ba);
    free(bb);
    build_sample(ck, 1, "2024-06-30T12:34:56Z, host gpu-node-17");
    assert_int_equal(mt_ckpt_write(path_in(c, "rep_c.h5"), ck), MT_OK);
    if (access("/usr/bin/h5diff", X_OK) == 0) {
        snprintf(cmd, sizeof cmd, "/usr/bin/h5diff %s %s /params > /dev/null 2>&1", a, c);
        assert_int_equal(system(cmd), 0);
        snprintf(cmd, sizeof cmd, "/usr/bin/h5diff %s %s /optimizer > /dev/null 2>&1", a, c);
        assert_int_equal(system(cmd), 0);
    }
    mt_ckpt *ra = calloc(1, sizeof *ra), *rc = calloc(1, sizeof *rc);
    assert_int_equal(mt_ckpt_read(a, ra), MT_OK);
    assert_int_equal(mt_ckpt_read(c, rc), MT_OK);
    for (int i = 0; i < ra->n_arrays; i++) {
        const mt_ckpt_array *x = &ra->arrays[i], *y = &rc->arrays[i];
        assert_string_equal(x->path, y->path);
        if (array_bytes(x)) assert_memory_equal(x->data, y->data, array_bytes(x));
    }
    mt_ckpt_free(ra);
    mt_ckpt_free(rc);
    free(ra);
    free(rc);
    free(ck);
}

/* ---- corruption ---- */

typedef struct {
    char name[MT_CKPT_PATH_LEN];
    int n;
    haddr_t addr[4];
    hsize_t size[4];
} chunk_list;

typedef struct {
    chunk_list *list;
    int n;
    const unsigned char *bytes; /* the file */
    size_t n_bytes;
} chunk_walk;

/* Where the chunk's stored bytes `raw` sit in the file: at the address HDF5 gives or, with HDF5
 * versions that give it relative to the base address (1.10 does), one user block later. */
static haddr_t locate(const chunk_walk *cw, haddr_t addr, const void *raw, hsize_t size) {
    haddr_t tries[2] = {addr, addr + CKPT_HEADER_SIZE};
    for (int i = 0; i < 2; i++)
        if (tries[i] + size <= cw->n_bytes && memcmp(cw->bytes + tries[i], raw, size) == 0) return tries[i];
    return HADDR_UNDEF;
}

static herr_t collect_chunks(hid_t root, const char *rel, const H5L_info_t *info, void *op) {
    chunk_walk *cw = op;
    hid_t obj = H5Oopen(root, rel, H5P_DEFAULT);
    if (obj < 0) return -1;
    if (H5Iget_type(obj) == H5I_DATASET) {
        chunk_list *c = &cw->list[cw->n++];
        hid_t space = H5Dget_space(obj);
        hsize_t n = 0, offset[4];
        snprintf(c->name, sizeof c->name, "/%s", rel);
        if (H5Dget_num_chunks(obj, space, &n) < 0 || n > 4) return -1;
        c->n = (int)n;
        for (hsize_t i = 0; i < n; i++) {
            haddr_t addr;
            uint32_t filters;
            if (H5Dget_chunk_info(obj, space, i, offset, NULL, &addr, &c->size[i]) < 0) return -1;
            unsigned char *raw = malloc(c->size[i]);
            if (!raw || H5Dread_chunk(obj, H5P_DEFAULT, offset, &filters, raw) < 0) return -1;
            c->addr[i] = locate(cw, addr, raw, c->size[i]);
            free(raw);
            if (c->addr[i] == HADDR_UNDEF) return -1;
        }
        H5Sclose(space);
    }
    H5Oclose(obj);
    return 0;
}

/* Every chunk of every dataset, with its place in the file, from HDF5 and checked against the
 * chunk's stored bytes. */
static int list_chunks(const char *path, const unsigned char *bytes, size_t n_bytes, chunk_list *list) {
    chunk_walk cw = {list, 0, bytes, n_bytes};
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(file >= 0);
    assert_true(H5Lvisit(file, H5_INDEX_NAME, H5_ITER_INC, collect_chunks, &cw) >= 0);
    assert_true(H5Fclose(file) >= 0);
    return cw.n;
}

/* One byte changed inside any chunk (data or its stored checksum) fails the whole-file checksum;
 * with that checksum made to match, the chunk's Fletcher32 fails the read, naming the dataset. */
static void test_corrupt_data(void **state) {
    char path[256], bad[256];
    mt_ckpt *ck = calloc(1, sizeof *ck);
    build_sample(ck, 1, "now");
    assert_int_equal(mt_ckpt_write(path_in(path, "data.h5"), ck), MT_OK);
    size_t n;
    unsigned char *bytes = slurp(path, &n);
    chunk_list list[32];
    int n_dsets = list_chunks(path, bytes, n, list), flipped = 0;
    assert_int_equal(n_dsets, ck->n_arrays);
    for (int d = 0; d < n_dsets; d++) {
        if (strcmp(list[d].name, "/metrics/loss") == 0) assert_int_equal(list[d].n, 0); /* empty: no chunk */
        for (int c = 0; c < list[d].n; c++) {
            hsize_t offsets[3] = {0, list[d].size[c] / 2, list[d].size[c] - 1};
            for (int k = 0; k < 3; k++) {
                size_t at = (size_t)(list[d].addr[c] + offsets[k]);
                assert_true(at < n);
                bytes[at] ^= 0x5a;
                spit(path_in(bad, "data_bad.h5"), bytes, n);
                bytes[at] ^= 0x5a;
                expect_read_failure(bad, MT_ERR_FORMAT, "whole-file checksum mismatch");
                reseal(bad);
                expect_read_failure(bad, MT_ERR_FORMAT, list[d].name);
                flipped++;
            }
        }
    }
    assert_true(flipped >= 3 * (ck->n_arrays - 1));
    free(bytes);
    free(ck);
}

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Reads `bytes`, a corrupted checkpoint, from the file `bad`. As it is (sealed = 0) it must be
 * refused. With its checksum header made to match (sealed = 1) the checks inside must refuse it
 * cleanly or, where HDF5 does not use the byte, return exactly the original content. Either way a
 * refusal is a one-line format error naming the file. Returns 1 when refused. */
static int read_corrupted(const char *bad, const unsigned char *bytes, size_t n, int sealed, const mt_ckpt *want,
                          mt_ckpt *got, const char *what) {
    spit(bad, bytes, n);
    if (sealed) reseal(bad);
    mt_error_clear();
    mt_status st = mt_ckpt_read(bad, got);
    if (st == MT_OK) {
        if (!sealed) fail_msg("%s: accepted", what);
        if (!same_content(want, got))
            fail_msg("%s, outer checksum made to match: wrong data returned without error", what);
        mt_ckpt_free(got);
    } else if (st != MT_ERR_FORMAT || !strstr(mt_error_message(), bad) || strchr(mt_error_message(), '\n')) {
        fail_msg("%s%s: %s: %s", what, sealed ? ", outer checksum made to match" : "", mt_status_name(st),
                 mt_error_message());
    }
    assert_int_equal(got->n_arrays + got->n_attrs, 0);
    mt_error_clear();
    assert_nothing_open();
    return st != MT_OK;
}

/* A byte changed anywhere: the header, the superblock, object headers, heaps, B-trees, chunk
 * indexes, free space, padding. As it is, the file is refused, every time. With its outer
 * checksum made to match (a file from other software, or a hostile one), the checks inside hold
 * as they did before the header existed. METATRAIN_CKPT_EXHAUSTIVE=1 tries every offset instead
 * of a sample. */
static void test_corrupt_anywhere(void **state) {
    char path[256], bad[256], what[64];
    mt_ckpt *ck = calloc(1, sizeof *ck), *got = calloc(1, sizeof *got);
    build_sample(ck, 0, "now");
    assert_int_equal(mt_ckpt_write(path_in(path, "meta.h5"), ck), MT_OK);
    path_in(bad, "meta_bad.h5");
    size_t n;
    unsigned char *bytes = slurp(path, &n);
    int exhaustive = getenv("METATRAIN_CKPT_EXHAUSTIVE") != NULL, tries = exhaustive ? (int)n : 400;
    int inner_refused = 0, inner_identical = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int t = 0; t < tries; t++) {
        /* half the sample in the first 4 KiB, where header, superblock and root group live */
        size_t at = exhaustive ? (size_t)t : (size_t)(xorshift(&rng) % (t % 2 ? n : (n < 4096 ? n : 4096)));
        unsigned char flip = (unsigned char)(xorshift(&rng) % 255 + 1);
        snprintf(what, sizeof what, "byte %zu ^ 0x%02x", at, flip);
        bytes[at] ^= flip;
        read_corrupted(bad, bytes, n, 0, ck, got, what);
        if (at >= CKPT_HEADER_SIZE) {
            int refused = read_corrupted(bad, bytes, n, 1, ck, got, what);
            inner_refused += refused;
            inner_identical += !refused;
        }
        bytes[at] ^= flip;
    }
    print_message("%zu-byte file, %d flipped bytes: all refused; with the outer checksum made to match, %d refused "
                  "inside, %d unused by HDF5 (read back identical)\n",
                  n, tries, inner_refused, inner_identical);
    /* a lost sector: 512 bytes of zeros (or 0xff), at every sector of the file */
    unsigned char *lost = malloc(n);
    for (size_t at = 0; at < n; at += 512) {
        for (int fill = 0; fill <= 0xff; fill += 0xff) {
            memcpy(lost, bytes, n);
            memset(lost + at, fill, at + 512 < n ? 512 : n - at);
            if (memcmp(lost, bytes, n) == 0) continue; /* the sector held just that */
            snprintf(what, sizeof what, "sector at %zu = 0x%02x", at, fill);
            read_corrupted(bad, lost, n, 0, ck, got, what);
            if (at >= CKPT_HEADER_SIZE) read_corrupted(bad, lost, n, 1, ck, got, what);
        }
    }
    free(lost);
    free(bytes);
    free(got);
    free(ck);
}

static void test_truncated(void **state) {
    char path[256], bad[256];
    mt_ckpt *ck = calloc(1, sizeof *ck);
    build_sample(ck, 0, "now");
    assert_int_equal(mt_ckpt_write(path_in(path, "trunc.h5"), ck), MT_OK);
    size_t n;
    unsigned char *bytes = slurp(path, &n);
    size_t lengths[] = {4, 8, 47, 100, 511, 512, 2048, n / 3, n / 2, n - 4096, n - 100, n - 1};
    char want[128];
    for (size_t i = 0; i < sizeof lengths / sizeof *lengths; i++) {
        spit(path_in(bad, "trunc_bad.h5"), bytes, lengths[i]);
        if (lengths[i] < CKPT_HEADER_SIZE)
            snprintf(want, sizeof want, "truncated (%zu bytes, shorter than the 512-byte checksum header)", lengths[i]);
        else
            snprintf(want, sizeof want, "truncated (expected %zu bytes after the header, found %zu)",
                     n - CKPT_HEADER_SIZE, lengths[i] - CKPT_HEADER_SIZE);
        expect_read_failure(bad, MT_ERR_FORMAT, want);
    }
    spit(bad, bytes, 0);
    expect_read_failure(bad, MT_ERR_FORMAT, "empty file");
    /* and a byte too many */
    unsigned char *longer = malloc(n + 1);
    memcpy(longer, bytes, n);
    longer[n] = 0;
    spit(bad, longer, n + 1);
    snprintf(want, sizeof want, "%zu bytes after the header, expected %zu", n + 1 - CKPT_HEADER_SIZE,
             n - CKPT_HEADER_SIZE);
    expect_read_failure(bad, MT_ERR_FORMAT, want);
    free(longer);
    free(bytes);
    free(ck);
}

/* Builds an HDF5 file that is not quite ours, with a user block of `userblock` bytes (no header
 * in it); `kind` says how. */
static void write_foreign(const char *path, int kind, hsize_t userblock) {
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (userblock) H5Pset_userblock(fcpl, userblock);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST);
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, fapl), scalar = H5Screate(H5S_SCALAR);
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, strlen(kind == 1 ? "other-format" : MT_CKPT_FORMAT_NAME));
    if (kind != 0) {
        hid_t a = H5Acreate2(file, "format", str, scalar, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, str, kind == 1 ? "other-format" : MT_CKPT_FORMAT_NAME);
        H5Aclose(a);
        int version = kind == 2 ? MT_CKPT_FORMAT_VERSION + 1 : MT_CKPT_FORMAT_VERSION;
        a = H5Acreate2(file, "format_version", H5T_STD_I32LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT, &version);
        H5Aclose(a);
    }
    hsize_t dims[1] = {4};
    hid_t space = H5Screate_simple(1, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    int32_t ints[4] = {1, 2, 3, 4};
    double doubles[4] = {1, 2, 3, 4};
    hid_t d = H5I_INVALID_HID;
    if (kind == 3) d = H5Dcreate2(file, "/w", H5T_STD_I32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (kind == 4) d = H5Dcreate2(file, "/x", H5T_IEEE_F64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT); /* contiguous */
    if (kind == 3) H5Dwrite(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ints);
    if (kind == 4) H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, doubles);
    if (d >= 0) H5Dclose(d);
    if (kind == 5) { /* more than 8 attributes: HDF5's default moves them to unchecksummed dense storage */
        for (int i = 0; i < 10; i++) {
            char name[8];
            snprintf(name, sizeof name, "a%d", i);
            hid_t a = H5Acreate2(file, name, str, scalar, H5P_DEFAULT, H5P_DEFAULT);
            H5Awrite(a, str, MT_CKPT_FORMAT_NAME);
            H5Aclose(a);
        }
    }
    if (kind == 6) H5Lcreate_soft("/elsewhere", file, "/link", H5P_DEFAULT, H5P_DEFAULT);
    if (kind == 7) { /* checksummed but never written: would read back as fill values */
        hsize_t chunk[1] = {2};
        H5Pset_chunk(dcpl, 1, chunk);
        H5Pset_fletcher32(dcpl);
        H5Dclose(H5Dcreate2(file, "/y", H5T_IEEE_F64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    }
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Tclose(str);
    H5Sclose(scalar);
    H5Fclose(file);
    H5Pclose(fapl);
    H5Pclose(fcpl);
}

static void test_refuses_other_files(void **state) {
    char path[256];
    expect_read_failure(path_in(path, "missing.h5"), MT_ERR_IO, "No such file");
    expect_read_failure(tmpdir, MT_ERR_IO, "is a directory");
    assert_int_equal(mkfifo(path_in(path, "fifo.h5"), 0600), 0); /* must not block */
    expect_read_failure(path, MT_ERR_IO, "not a regular file");
    char loop[256];
    assert_int_equal(symlink(path_in(loop, "loop.h5"), loop), 0);
    expect_read_failure(loop, MT_ERR_IO, "Too many levels of symbolic links");
    spit(path_in(path, "text.h5"), "hello, world\n", 13);
    expect_read_failure(path, MT_ERR_FORMAT, "not a metatrain checkpoint (no checksum header)");
    /* HDF5 without the header: another program's, or an older metatrain's */
    write_foreign(path_in(path, "plain.h5"), 3, 0);
    expect_read_failure(path, MT_ERR_FORMAT, "not a metatrain checkpoint (no checksum header): an HDF5 file");
    write_foreign(path, 3, CKPT_HEADER_SIZE);
    expect_read_failure(path, MT_ERR_FORMAT, "not a metatrain checkpoint (no checksum header)");
    /* with a valid header (other software could write one), the checks inside name what is wrong */
    const char *why[] = {"no \"format\" attribute", "not a metatrain checkpoint",
                         "version 2 not supported", "/w: data type",
                         "/x: not chunked",         "dense storage",
                         "/link: a soft",           "/y: chunks missing"};
    for (int kind = 0; kind < 8; kind++) {
        write_foreign(path_in(path, "foreign.h5"), kind, CKPT_HEADER_SIZE);
        reseal(path);
        expect_read_failure(path, MT_ERR_FORMAT, why[kind]);
    }
}

/* ---- failed writes ---- */

static void assert_old_file_intact(const char *path, const mt_ckpt *want) {
    mt_ckpt *got = calloc(1, sizeof *got);
    assert_int_equal(mt_ckpt_read(path, got), MT_OK);
    assert_true(same_content(want, got));
    mt_ckpt_free(got);
    free(got);
}

static void test_failed_write_keeps_old_file(void **state) {
    char path[300], dir[256], nodir[256], msg[512] = {0};
    mt_ckpt *old = calloc(1, sizeof *old), *big = calloc(1, sizeof *big);
    build_sample(old, 0, "first");
    build_sample(big, 1, "second");
    snprintf(dir, sizeof dir, "%s/run", tmpdir);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/checkpoint.h5", dir);
    assert_int_equal(mt_ckpt_write(path, old), MT_OK);

    /* disk full, simulated: a file size limit of 64 KiB in a child, which reports the message */
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit lim = {64 << 10, 64 << 10};
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &lim);
        mt_status st = mt_ckpt_write(path, big);
        ssize_t w = write(pipefd[1], mt_error_message(), strlen(mt_error_message()));
        _exit(w < 0 ? 100 : (int)st);
    }
    close(pipefd[1]);
    ssize_t got = read(pipefd[0], msg, sizeof msg - 1);
    close(pipefd[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(got > 0);
    print_message("write under a 64 KiB file size limit: %s\n", msg);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), MT_ERR_IO);
    assert_non_null(strstr(msg, path));
    assert_non_null(strstr(msg, "write failed"));
    assert_int_equal(count_temp_files(dir), 0);
    assert_old_file_intact(path, old);

    /* the directory does not exist */
    mt_error_clear();
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/checkpoint.h5", tmpdir);
    assert_int_equal(mt_ckpt_write(nodir, big), MT_ERR_IO);
    assert_non_null(strstr(mt_error_message(), "cannot create temporary file: No such file or directory"));

    /* the target is a directory: everything is written, then the rename fails */
    mt_error_clear();
    char target[300];
    snprintf(target, sizeof target, "%s/sub", dir);
    assert_int_equal(mkdir(target, 0755), 0);
    assert_int_equal(mt_ckpt_write(target, big), MT_ERR_IO);
    assert_non_null(strstr(mt_error_message(), "cannot replace"));
    assert_int_equal(count_temp_files(dir), 0);
    mt_error_clear();
    assert_old_file_intact(path, old);
    assert_nothing_open();
    free(old);
    free(big);
}

/* ---- numbered copies ---- */

static void test_keep_copy(void **state) {
    char path[256], dir[256], p[400];
    mt_ckpt *ck = calloc(1, sizeof *ck);
    build_sample(ck, 0, "now");
    assert_int_equal(mt_ckpt_write(path_in(path, "keep.h5"), ck), MT_OK);
    snprintf(dir, sizeof dir, "%s/copies", tmpdir);
    assert_int_equal(mkdir(dir, 0755), 0);
    const char *bystanders[] = {"checkpoint.h5", "checkpoint-abc.h5", "checkpoint-1.h5.bak", "notes.txt"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, bystanders[i]);
        spit(p, "x", 1);
    }
    assert_int_equal(mt_ckpt_keep_copy(path, dir, 7, 0), MT_OK); /* keep 0: no copy */
    snprintf(p, sizeof p, "%s/checkpoint-00000007.h5", dir);
    assert_int_equal(access(p, F_OK), -1);
    /* 9 digits must sort after 8: numeric order, not name order */
    int iterations[] = {100, 99999999, 300, 123456789, 200, 400};
    for (int i = 0; i < 6; i++) assert_int_equal(mt_ckpt_keep_copy(path, dir, iterations[i], 3), MT_OK);
    int kept[] = {400, 99999999, 123456789}, gone[] = {100, 200, 300};
    size_t n_src, n_copy;
    unsigned char *src = slurp(path, &n_src);
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/checkpoint-%08d.h5", dir, kept[i]);
        unsigned char *copy = slurp(p, &n_copy);
        assert_int_equal(n_copy, n_src);
        assert_memory_equal(copy, src, n_src);
        assert_old_file_intact(p, ck); /* byte for byte: its checksum holds */
        free(copy);
        snprintf(p, sizeof p, "%s/checkpoint-%08d.h5", dir, gone[i]);
        assert_int_equal(access(p, F_OK), -1);
    }
    int entries = 0;
    DIR *d = opendir(dir);
    for (struct dirent *e; (e = readdir(d));) entries += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(entries, 3 + 4);
    mt_error_clear();
    assert_int_equal(mt_ckpt_keep_copy(path, "/nonexistent/dir", 1, 3), MT_ERR_IO);
    mt_error_clear();
    free(src);
    free(ck);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),          cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_checksum_header),     cmocka_unit_test(test_hdf5_tools_read_it),
        cmocka_unit_test(test_reproducible),        cmocka_unit_test(test_corrupt_data),
        cmocka_unit_test(test_corrupt_anywhere),    cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_refuses_other_files), cmocka_unit_test(test_failed_write_keeps_old_file),
        cmocka_unit_test(test_keep_copy),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
