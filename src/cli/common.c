/* What the verbs share: building the model from a config, error reporting, safe file writes. */
#include "cli/cli.h"
#include "core/file.h"

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

int mt_cli_is_help(const char *arg) { return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0; }

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
    for (int i = 0; sets && i < sets->n; i++) MT_TRY(mt_config_set(&m->cfg, sets->items[i], "--set"));
    MT_TRY(mt_config_validate(&m->cfg));
    char what[sizeof m->cfg.model_spec_origin + 16];
    snprintf(what, sizeof what, "%s%smodel.spec", m->cfg.model_spec_origin, m->cfg.model_spec_origin[0] ? " " : "");
    MT_TRY(mt_nn_parse(&m->net, m->cfg.model_spec, what));
    mt_meta_layout_init(&m->layout, &m->net, m->cfg.algorithm, m->cfg.inner_steps);
    if (mt_config_format(&m->cfg, m->config_text, sizeof m->config_text) >= sizeof m->config_text)
        MT_THROW(MT_ERR_CONFIG, "the effective configuration is longer than %zu bytes", sizeof m->config_text);
    return MT_OK;
fail:
    return st;
}

mt_status mt_cli_make_dirs(const char *path) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return MT_RAISE(MT_ERR_IO, "%s: path too long", path);
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

mt_status mt_cli_check_output_dir(const char *path) {
    char buf[4096];
    struct stat sb;
    if (!path[0]) return MT_RAISE(MT_ERR_ARG, "the output path is empty");
    snprintf(buf, sizeof buf, "%s", path);
    const char *dir = dirname(buf);
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return MT_RAISE(MT_ERR_IO, "%s: directory %s does not exist", path, dir);
    return MT_OK;
}

json_t *mt_cli_json_string(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    /* Not UTF-8 (a path's bytes): each byte of a broken sequence becomes U+FFFD. */
    size_t n = strlen(s);
    char *fixed = malloc(3 * n + 1);
    if (!fixed) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + (size_t)len <= n;
        for (int k = 1; ok && k < len; k++) ok = ((unsigned char)s[i + k] >> 6) == 2;
        if (ok) { /* jansson refuses overlong forms and surrogates too */
            json_t *probe = json_stringn(s + i, (size_t)len);
            ok = probe != NULL;
            json_decref(probe);
        }
        if (ok) {
            memcpy(fixed + o, s + i, (size_t)len), o += (size_t)len, i += (size_t)len;
        } else {
            memcpy(fixed + o, "\xEF\xBF\xBD", 3), o += 3, i++;
        }
    }
    fixed[o] = '\0';
    j = json_string(fixed);
    free(fixed);
    return j;
}

mt_status mt_cli_json_print(json_t *value) {
    char *text = value ? json_dumps(value, JSON_PRESERVE_ORDER) : NULL;
    json_decref(value);
    if (!text) return MT_RAISE(MT_ERR_NOMEM, "out of memory printing JSON");
    printf("%s\n", text);
    free(text);
    return MT_OK;
}
