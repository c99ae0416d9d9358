/* metatrain info: what a checkpoint holds, after verifying every checksum in it. */
#include "cli/cli.h"

#include <string.h>

static const char *info_usage =
    "usage: metatrain info CKPT [--json]\n"
    "\n"
    "Reads a checkpoint, verifying every checksum, and prints its format version, iteration,\n"
    "algorithm, model spec and parameter count. Exits non-zero when the file fails verification.\n";

int mt_cli_info(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    static mt_cli_model m;
    static mt_ckpt ck;
    const char *path = NULL;
    int json = 0;
    int64_t iteration = 0;
    memset(&ck, 0, sizeof ck);
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (d->rank == 0) fputs(info_usage, stdout);
            return MT_EXIT_OK;
        } else if (argv[i][0] == '-' || path) {
            MT_THROW(MT_ERR_ARG, "info: unexpected argument '%s' (see metatrain info --help)", argv[i]);
        } else {
            path = argv[i];
        }
    }
    if (!path) MT_THROW(MT_ERR_ARG, "info: give a checkpoint file");
    MT_TRY(mt_dist_agree(d, mt_cli_state_read(path, &ck, &m.cfg)));
    MT_TRY(mt_cli_model_build(&m, NULL));
    const mt_ckpt_array *it = mt_ckpt_find(&ck, "/train/iteration");
    if (!it || it->dtype != MT_CKPT_I64 || it->dims[0] != 1)
        MT_THROW(MT_ERR_FORMAT, "%s: /train/iteration: missing or not a 1-element int64", path);
    iteration = *(const int64_t *)it->data;
    const char *created = mt_ckpt_attr_value(&ck, "created"), *version = mt_ckpt_attr_value(&ck, "metatrain_version");
    if (d->rank == 0) {
        if (json) {
            printf("{\"file\": \"%s\", \"format_version\": %d, \"iteration\": %lld, \"algorithm\": \"%s\", "
                   "\"model_spec\": \"%s\", \"parameters\": %zu, \"meta_parameters\": %zu, "
                   "\"arrays\": %d, \"checksums_verified\": true, \"created\": \"%s\", \"metatrain_version\": \"%s\"}\n",
                   path, ck.format_version, (long long)iteration, mt_cli_algorithm_name(m.cfg.algorithm),
                   m.cfg.model_spec, m.layout.n_theta, m.layout.n_meta, ck.n_arrays, created ? created : "",
                   version ? version : "");
        } else {
            printf("file:              %s\nformat version:    %d\niteration:         %lld\nalgorithm:         %s\n"
                   "model spec:        %s\nparameters:        %zu (%zu with learned rates)\narrays:            %d\n"
                   "checksums:         all verified\ncreated:           %s\nmetatrain version: %s\n",
                   path, ck.format_version, (long long)iteration, mt_cli_algorithm_name(m.cfg.algorithm),
                   m.cfg.model_spec, m.layout.n_theta, m.layout.n_meta, ck.n_arrays, created ? created : "?",
                   version ? version : "?");
        }
    }
    mt_ckpt_free(&ck);
    return MT_EXIT_OK;
fail:
    if (json && d->rank == 0) printf("{\"file\": \"%s\", \"checksums_verified\": false}\n", path ? path : "");
    mt_ckpt_free(&ck);
    return mt_cli_report(d, st);
}
