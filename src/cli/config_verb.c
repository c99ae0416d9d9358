/* metatrain config: the effective configuration, or the reference of every key. */
#include "cli/cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX_BYTES (1 << 20) /* far beyond any config: a bound against reading a device */

static const char *config_usage =
    "usage: metatrain config [CONFIG] [--set section.key=value]...\n"
    "       metatrain config --reference\n"
    "\n"
    "Prints the effective configuration (defaults, then CONFIG, then each --set) after the same\n"
    "checks train makes, or with --reference a Markdown table of every key (README.md has it).\n";

/* Rank 0's read of CONFIG, whole, into a malloc'ed string. The messages are mt_config_load's. */
static mt_status read_config(const mt_dist *d, const char *path, char **text) {
    mt_status st = MT_OK;
    const char *injected = mt_dist_injected(d, "config");
    if (injected)
        return MT_RAISE(MT_ERR_CONFIG, "%s: cannot read: failure injected (METATRAIN_INJECT=%s)", path, injected);
    FILE *f = fopen(path, "r");
    if (!f) return MT_RAISE(MT_ERR_CONFIG, "%s: cannot read: %s", path, strerror(errno));
    char *buf = malloc(CONFIG_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, CONFIG_MAX_BYTES + 1, f) : 0;
    if (!buf)
        st = MT_RAISE(MT_ERR_NOMEM, "%s: out of memory reading the config", path);
    else if (ferror(f))
        st = MT_RAISE(MT_ERR_CONFIG, "%s: cannot read: %s", path, strerror(errno));
    else if (n > CONFIG_MAX_BYTES)
        st = MT_RAISE(MT_ERR_CONFIG, "%s: longer than %d bytes: not a config", path, CONFIG_MAX_BYTES);
    /* The text travels as a C string: a NUL would cut it where the file goes on. */
    else if (memchr(buf, '\0', n))
        st = MT_RAISE(MT_ERR_CONFIG, "%s: contains a NUL byte: not a config", path);
    fclose(f);
    if (st) {
        free(buf);
        return st;
    }
    buf[n] = '\0';
    *text = buf;
    return MT_OK;
}

mt_status mt_cli_config_load(const mt_dist *d, mt_config *cfg, const char *path) {
    char *text = NULL;
    mt_status st = mt_dist_share_text(d, d->rank == 0 ? read_config(d, path, &text) : MT_OK, &text);
    if (st == MT_OK) {
        /* Parsing allocates, so it may fail on one rank alone (as METATRAIN_INJECT=config:R, R > 0, does). */
        const char *injected = d->rank != 0 ? mt_dist_injected(d, "config") : NULL;
        st = injected ? MT_RAISE(MT_ERR_CONFIG, "%s: failure injected (METATRAIN_INJECT=%s)", path, injected)
                      : mt_config_load_string(cfg, text, path);
        st = mt_dist_agree(d, st);
    }
    free(text);
    return st;
}

int mt_cli_config_verb(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    static mt_cli_model m;
    mt_cli_sets sets = {0};
    const char *path = NULL;
    int reference = 0;
    for (int i = 0; i < argc; i++) {
        if (mt_cli_take_set(argc, argv, &i, &sets, &st)) {
            if (st) goto fail;
        } else if (strcmp(argv[i], "--reference") == 0) {
            reference = 1;
        } else if (mt_cli_is_help(argv[i])) {
            if (d->rank == 0) fputs(config_usage, stdout);
            return MT_EXIT_OK;
        } else if (argv[i][0] == '-' || path) {
            MT_THROW(MT_ERR_ARG, "config: unexpected argument '%s' (see metatrain config --help)", argv[i]);
        } else {
            path = argv[i];
        }
    }
    if (reference) {
        static char text[65536];
        if (mt_config_reference(text, sizeof text) >= sizeof text)
            MT_THROW(MT_ERR_ARG, "config: the reference is longer than %zu bytes", sizeof text);
        if (d->rank == 0) fputs(text, stdout);
        return MT_EXIT_OK;
    }
    mt_config_defaults(&m.cfg);
    if (path) MT_TRY(mt_cli_config_load(d, &m.cfg, path));
    MT_TRY(mt_dist_agree(d, mt_cli_model_build(&m, &sets)));
    if (d->rank == 0) fputs(m.config_text, stdout);
    return MT_EXIT_OK;
fail:
    return mt_cli_report(d, st);
}
