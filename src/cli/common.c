/* What the verbs share: building the model from a config, error reporting, safe file writes. */
#include "cli/cli.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int mt_cli_report(const mt_dist *d, mt_status st) {
    if (st == MT_OK) return MT_EXIT_OK;
    if (d->rank == 0) {
        fprintf(stderr, "metatrain: error: %s\n", mt_error_message()[0] ? mt_error_message() : mt_status_name(st));
        if (getenv("METATRAIN_DEBUG")) fprintf(stderr, "metatrain: (raised at %s)\n", mt_error_origin());
    }
    return st == MT_ERR_CONFIG || st == MT_ERR_ARG ? MT_EXIT_USAGE : MT_EXIT_ERROR;
}

int mt_cli_take_set(int argc, char **argv, int *i, mt_cli_sets *sets, mt_status *st) {
    const char *value = NULL;
    if (strcmp(argv[*i], "--set") == 0) {
        if (*i + 1 >= argc) {
            *st = MT_RAISE(MT_ERR_ARG, "--set needs section.key=value");
            return 1;
        }
        value = argv[++*i];
    } else if (strncmp(argv[*i], "--set=", 6) == 0) {
        value = argv[*i] + 6;
    } else {
        return 0;
    }
    if (sets->n >= MT_CLI_MAX_SETS) {
        *st = MT_RAISE(MT_ERR_ARG, "more than %d --set options", MT_CLI_MAX_SETS);
        return 1;
    }
    sets->items[sets->n++] = value;
    return 1;
}

mt_status mt_cli_model_build(mt_cli_model *m, const mt_cli_sets *sets) {
    mt_status st = MT_OK;
    for (int i = 0; sets && i < sets->n; i++) MT_TRY(mt_cli_config_set(&m->cfg, sets->items[i], "--set"));
    MT_TRY(mt_cli_config_validate(&m->cfg));
    char what[sizeof m->cfg.model_spec_origin + 16];
    snprintf(what, sizeof what, "%s%smodel.spec", m->cfg.model_spec_origin, m->cfg.model_spec_origin[0] ? " " : "");
    MT_TRY(mt_nn_parse(&m->net, m->cfg.model_spec, what));
    mt_meta_layout_init(&m->layout, &m->net, m->cfg.algorithm, m->cfg.inner_steps);
    if (mt_cli_config_format(&m->cfg, m->config_text, sizeof m->config_text) >= sizeof m->config_text)
        MT_THROW(MT_ERR_CONFIG, "the effective configuration is longer than %zu bytes", sizeof m->config_text);
    return MT_OK;
fail:
    return st;
}

mt_status mt_cli_make_dirs(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return MT_RAISE(MT_ERR_IO, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return MT_RAISE(MT_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
            struct stat sb;
            if (stat(buf, &sb) != 0 || !S_ISDIR(sb.st_mode))
                return MT_RAISE(MT_ERR_IO, "%s: exists and is not a directory", buf);
            *p = saved;
            if (saved == '\0') break;
        }
    }
    return MT_OK;
}

static mt_status fsync_parent_dir(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return MT_RAISE(MT_ERR_IO, "%s: cannot open its directory: %s", path, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc != 0 && errno != EINVAL) return MT_RAISE(MT_ERR_IO, "%s: fsync of its directory failed: %s", path, strerror(errno));
    return MT_OK;
}

mt_status mt_cli_write_file_atomic(const char *path, const char *text, size_t len) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return MT_RAISE(MT_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int err = errno;
            close(fd);
            unlink(tmp);
            return MT_RAISE(MT_ERR_IO, "%s: write failed: %s", path, strerror(err));
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int err = errno;
        unlink(tmp);
        return MT_RAISE(MT_ERR_IO, "%s: fsync failed: %s", path, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return MT_RAISE(MT_ERR_IO, "%s: cannot replace: %s", path, strerror(err));
    }
    return fsync_parent_dir(path);
}
