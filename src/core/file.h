/* Private: replacing files atomically (src/core/file.c). Every file metatrain writes (checkpoints,
 * adapted models, predictions, metrics) is written under a temporary name beside its target and
 * committed by mt_file_commit, so a crash or a full disk leaves the old file or the new one,
 * never a part. Local. */
#ifndef METATRAIN_CORE_FILE_H
#define METATRAIN_CORE_FILE_H

#include <stddef.h>

#include "metatrain/error.h"

/* "<path>.tmp.<pid>": the temporary beside path (same directory, so rename is atomic). */
mt_status mt_file_temp_path(char *tmp, size_t size, const char *path);
/* Makes the finished temporary `tmp` the file `path`: fsync, rename, fsync of the directory
 * (skipped where the file system cannot, EINVAL). Removes tmp on failure. */
mt_status mt_file_commit(const char *tmp, const char *path);
/* Writes len bytes to path atomically. */
mt_status mt_file_write_atomic(const char *path, const void *data, size_t len);

#endif
