/* Atomic replacement of files (src/core/file.h). */
#include "core/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

mt_status mt_file_temp_path(char *tmp, size_t size, const char *path) {
    if (snprintf(tmp, size, "%s.tmp.%ld", path, (long)getpid()) >= (int)size) {
        tmp[0] = '\0'; /* never a cut name that a cleanup could remove */
        return MT_RAISE(MT_ERR_ARG, "%s: path too long", path);
    }
    return MT_OK;
}

/* Makes the rename durable. Some file systems cannot fsync a directory (EINVAL): nothing to do. */
static mt_status sync_dir(const char *path) {
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return MT_RAISE(MT_ERR_IO, "%s: cannot open directory %s to sync it: %s", path, dir, strerror(errno));
    int err = fsync(fd) != 0 ? errno : 0;
    close(fd);
    if (err && err != EINVAL)
        return MT_RAISE(MT_ERR_IO, "%s: fsync of directory %s failed: %s", path, dir, strerror(err));
    return MT_OK;
}

mt_status mt_file_commit(const char *tmp, const char *path) {
    mt_status st = MT_OK;
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) MT_THROW(MT_ERR_IO, "%s: cannot reopen its temporary file: %s", path, strerror(errno));
    int synced = fsync(fd) == 0, err = errno;
    close(fd);
    if (!synced) MT_THROW(MT_ERR_IO, "%s: fsync failed: %s", path, strerror(err));
    if (rename(tmp, path) != 0) MT_THROW(MT_ERR_IO, "%s: cannot replace: %s", path, strerror(errno));
    return sync_dir(path);
fail:
    unlink(tmp);
    return st;
}

mt_status mt_file_write_atomic(const char *path, const void *data, size_t len) {
    mt_status st = MT_OK;
    char tmp[PATH_MAX];
    const char *bytes = data;
    MT_TRY(mt_file_temp_path(tmp, sizeof tmp, path));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return MT_RAISE(MT_ERR_IO, "%s: cannot create a temporary file: %s", path, strerror(errno));
    for (size_t done = 0; done < len;) {
        ssize_t w = write(fd, bytes + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int err = errno;
            close(fd);
            unlink(tmp);
            return MT_RAISE(MT_ERR_IO, "%s: write failed: %s", path, strerror(err));
        }
        done += (size_t)w;
    }
    if (close(fd) != 0) {
        int err = errno;
        unlink(tmp);
        return MT_RAISE(MT_ERR_IO, "%s: write failed: %s", path, strerror(err));
    }
    return mt_file_commit(tmp, path);
fail:
    return st;
}
