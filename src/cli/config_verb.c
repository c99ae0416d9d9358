/* metatrain config: the effective configuration, or the reference of every key. */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

static const char *config_usage =
    "usage: metatrain config [CONFIG] [--set section.key=value]...\n"
    "       metatrain config --reference\n"
    "\n"
    "Prints the effective configuration (defaults, then CONFIG, then each --set) after the same\n"
    "checks train makes, or with --reference a Markdown table of every key (README.md has it).\n";

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
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
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
    if (path) MT_TRY(mt_config_load(&m.cfg, path));
    MT_TRY(mt_cli_model_build(&m, &sets));
    if (d->rank == 0) fputs(m.config_text, stdout);
    return MT_EXIT_OK;
fail:
    return mt_cli_report(d, st);
}
