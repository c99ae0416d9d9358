/* metatrain info: what a checkpoint or an adapted file holds, after verifying every checksum in
 * it. One process, no MPI. */
#include "cli/cli.h"

#include <string.h>

static const char *info_usage =
    "usage: metatrain info MODEL [--json]\n"
    "\n"
    "Reads a checkpoint or an adapted file (metatrain adapt), verifying every checksum, and prints\n"
    "its format version, iteration, algorithm, model spec and parameter count, and an adapted\n"
    "file's provenance. Exits non-zero when the file fails verification.\n";

/* An adapted file's provenance, in the order info prints it. */
static const char *const adapted_attrs[] = {"source", "source_iteration", "steps", "support_file", "support_sha256"};

int mt_cli_info(const mt_dist *d, int argc, char **argv) {
    mt_status st = MT_OK;
    static mt_cli_model m;
    static mt_ckpt ck;
    const char *path = NULL;
    int json = 0;
    int64_t iteration = 0;
    memset(&ck, 0, sizeof ck);
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (mt_cli_is_help(argv[i])) {
            fputs(info_usage, stdout);
            return MT_EXIT_OK;
        } else if (argv[i][0] == '-' || path) {
            MT_THROW(MT_ERR_ARG, "info: unexpected argument '%s' (see metatrain info --help)", argv[i]);
        } else {
            path = argv[i];
        }
    }
    if (!path) MT_THROW(MT_ERR_ARG, "info: give a checkpoint or adapted file");
    MT_TRY(mt_cli_state_read(path, &ck, &m.cfg));
    MT_TRY(mt_cli_model_build(&m, NULL));
    const char *kind = mt_ckpt_attr_value(&ck, "kind");
    int adapted = kind && strcmp(kind, "adapted") == 0;
    if (!adapted) {
        if (!mt_ckpt_i64(&ck, "/train/iteration", &iteration))
            MT_THROW(MT_ERR_FORMAT, "%s: /train/iteration: missing or not a 1-element int64", path);
    }
    const char *created = mt_ckpt_attr_value(&ck, "created"), *version = mt_ckpt_attr_value(&ck, "metatrain_version");
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "file", mt_cli_json_string(path));
        json_object_set_new(o, "kind", json_string(adapted ? "adapted" : "checkpoint"));
        json_object_set_new(o, "format_version", json_integer(ck.format_version));
        if (!adapted) json_object_set_new(o, "iteration", json_integer(iteration));
        json_object_set_new(o, "algorithm", json_string(mt_config_algorithm_name(m.cfg.algorithm)));
        json_object_set_new(o, "model_spec", mt_cli_json_string(m.cfg.model_spec));
        json_object_set_new(o, "parameters", json_integer((json_int_t)m.layout.n_theta));
        json_object_set_new(o, "meta_parameters", json_integer((json_int_t)m.layout.n_meta));
        json_object_set_new(o, "arrays", json_integer(ck.n_arrays));
        json_object_set_new(o, "checksums_verified", json_true());
        json_object_set_new(o, "created", mt_cli_json_string(created ? created : ""));
        json_object_set_new(o, "metatrain_version", mt_cli_json_string(version ? version : ""));
        for (size_t i = 0; adapted && i < sizeof adapted_attrs / sizeof *adapted_attrs; i++) {
            const char *v = mt_ckpt_attr_value(&ck, adapted_attrs[i]);
            json_object_set_new(o, adapted_attrs[i], mt_cli_json_string(v ? v : ""));
        }
        MT_TRY(mt_cli_json_print(o));
    } else {
        printf("file:              %s\nkind:              %s\nformat version:    %d\n", path,
               adapted ? "adapted model (metatrain adapt)" : "checkpoint", ck.format_version);
        if (!adapted) printf("iteration:         %lld\n", (long long)iteration);
        printf("algorithm:         %s\nmodel spec:        %s\nparameters:        %zu (%zu with learned rates)\n"
               "arrays:            %d\nchecksums:         all verified\ncreated:           %s\nmetatrain version: %s\n",
               mt_config_algorithm_name(m.cfg.algorithm), m.cfg.model_spec, m.layout.n_theta, m.layout.n_meta,
               ck.n_arrays, created ? created : "?", version ? version : "?");
        for (size_t i = 0; adapted && i < sizeof adapted_attrs / sizeof *adapted_attrs; i++) {
            const char *v = mt_ckpt_attr_value(&ck, adapted_attrs[i]);
            printf("%-18s %s\n", adapted_attrs[i], v ? v : "?");
        }
    }
    mt_ckpt_free(&ck);
    return MT_EXIT_OK;
fail:
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "file", mt_cli_json_string(path ? path : ""));
        json_object_set_new(o, "checksums_verified", json_false());
        mt_cli_json_print(o);
    }
    mt_ckpt_free(&ck);
    return mt_cli_report(d, st);
}
