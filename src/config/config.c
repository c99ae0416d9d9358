/* The run configuration. One table lists every key; parsing, validation, printing the effective
 * config, the resume check and the README's key reference are all loops over it.
 *
 * libinih reads the INI syntax. We hand it our own line reader because Debian builds inih
 * without line numbers in the handler: the reader counts lines, refuses overlong ones (inih would
 * silently cut them) and tells the handler whether a line continues the previous key or names a
 * key again. Values are converted only once a key's last continuation line has been read. */
#include "metatrain/config.h"
#include "metatrain/meta.h"
#include "metatrain/task.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include <ini.h>

/* ---- the table ---------------------------------------------------------------------------- */

typedef enum { KEY_INT, KEY_UINT64, KEY_DOUBLE, KEY_BOOL, KEY_STRING, KEY_ENUM } config_key_type;

typedef struct {
    const char *section;
    const char *name;
    config_key_type type;
    size_t offset;              /* of the field in mt_config */
    const char *def;            /* default, written as in a config file */
    double min, max;            /* numbers: bounds (±INFINITY = none); strings: min is the least length */
    bool min_open, max_open;    /* the bound itself is excluded */
    const char *const *choices; /* enums: names indexed by value, NULL-terminated */
    bool resumable;             /* may differ from the checkpoint's when a run resumes */
    const char *doc;
} config_key;

/* Enum fields are stored through int pointers. */
_Static_assert(sizeof(mt_algorithm) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_task_kind) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_optimizer_kind) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_split) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_balance) == sizeof(int), "enum size");
_Static_assert(sizeof(mt_schedule) == sizeof(int), "enum size");

#define ALGORITHM_NAME(suffix, name) name,
static const char *const algorithm_names[] = {MT_ALGORITHMS(ALGORITHM_NAME) NULL};
#undef ALGORITHM_NAME
static const char *const optimizer_names[] = {"adam", "sgd", NULL};
static const char *const task_kind_names[] = {"sinusoid", "linreg", "episodes", "grouped", NULL};
static const char *const split_names[] = {"train", "val", "test", "all", NULL};
static const char *const balance_names[] = {"dynamic", "static", NULL};
static const char *const schedule_names[] = {"algorithm", "constant", "cosine", NULL};

#define RESUMABLE true
#define FIXED false
#define GT(x) .min = (x), .min_open = true
#define GE(x) .min = (x)
#define LT(x) .max = (x), .max_open = true
#define LE(x) .max = (x)
#define UNBOUNDED .max = INFINITY
#define FIELD(f) offsetof(mt_config, f)

#define INT_KEY(sec, key, f, dflt, lo, hi, res, text)                                                                  \
    {                                                                                                                  \
        .section = sec, .name = key, .type = KEY_INT, .offset = FIELD(f), .def = dflt, lo, hi, .resumable = res,       \
        .doc = text                                                                                                    \
    }
#define DOUBLE_KEY(sec, key, f, dflt, lo, hi, res, text)                                                               \
    {                                                                                                                  \
        .section = sec, .name = key, .type = KEY_DOUBLE, .offset = FIELD(f), .def = dflt, lo, hi, .resumable = res,    \
        .doc = text                                                                                                    \
    }
#define UINT64_KEY(sec, key, f, dflt, res, text)                                                                       \
    { .section = sec, .name = key, .type = KEY_UINT64, .offset = FIELD(f), .def = dflt, .resumable = res, .doc = text }
#define BOOL_KEY(sec, key, f, dflt, res, text)                                                                         \
    { .section = sec, .name = key, .type = KEY_BOOL, .offset = FIELD(f), .def = dflt, .resumable = res, .doc = text }
#define STRING_KEY(sec, key, f, dflt, min_len, res, text)                                                              \
    {                                                                                                                  \
        .section = sec, .name = key, .type = KEY_STRING, .offset = FIELD(f), .def = dflt, .min = (min_len),            \
        .resumable = res, .doc = text                                                                                  \
    }
#define ENUM_KEY(sec, key, f, dflt, names, res, text)                                                                  \
    {                                                                                                                  \
        .section = sec, .name = key, .type = KEY_ENUM, .offset = FIELD(f), .def = dflt, .choices = names,              \
        .resumable = res, .doc = text                                                                                  \
    }

/* Sections must stay contiguous: the formatter starts a [section] whenever the name changes. */
static const config_key config_keys[] = {
    UINT64_KEY("train", "seed", seed, "1", FIXED, "seed of every random number (tasks, initialization)"),
    INT_KEY("train", "iterations", iterations, "1000", GE(0), UNBOUNDED, RESUMABLE,
            "outer steps in total; 0 only writes the initial meta-parameters (a baseline)"),
    INT_KEY("train", "meta_batch", meta_batch, "25", GE(1), LE(65536), FIXED, "tasks per outer step"),
    INT_KEY("train", "checkpoint_every", checkpoint_every, "1000", GE(0), UNBOUNDED, RESUMABLE,
            "checkpoint period in iterations; 0 writes one only at the end"),
    INT_KEY("train", "keep_checkpoints", keep_checkpoints, "0", GE(0), UNBOUNDED, RESUMABLE,
            "numbered checkpoint copies kept besides checkpoint.h5"),
    INT_KEY("train", "log_every", log_every, "100", GE(1), UNBOUNDED, RESUMABLE, "progress line period in iterations"),
    INT_KEY("train", "stop_at", stop_at, "0", GE(0), UNBOUNDED, RESUMABLE,
            "stop early after this iteration, writing a checkpoint, as a preempted job would; 0 = off"),
    BOOL_KEY("train", "resume", resume, "false", RESUMABLE, "continue from output.dir/checkpoint.h5 if it exists"),
    INT_KEY("train", "threads", threads, "1", GE(1), LE(256), RESUMABLE, "OpenBLAS threads per rank"),
    ENUM_KEY("train", "balance", balance, "dynamic", balance_names, RESUMABLE,
             "how the ranks of a node share an iteration's tasks: dynamic (each takes the next free one "
             "when it finishes one) or static (fixed blocks); the same bits either way"),

    STRING_KEY("output", "dir", output_dir, "runs/default", 1, RESUMABLE,
               "directory for checkpoints, logs and the effective config"),

    ENUM_KEY("meta", "algorithm", algorithm, "maml", algorithm_names, FIXED, "meta-learning algorithm"),
    INT_KEY("meta", "inner_steps", inner_steps, "1", GE(1), LE(256), FIXED, "inner-loop adaptation steps per task"),
    DOUBLE_KEY("meta", "inner_lr", inner_lr, "0.01", GT(0), UNBOUNDED, FIXED,
               "inner-loop learning rate (the initial value where the rates are learned)"),
    DOUBLE_KEY("meta", "outer_lr", outer_lr, "0.001", GT(0), UNBOUNDED, FIXED, "outer-loop learning rate"),
    ENUM_KEY("meta", "outer_lr_schedule", outer_lr_schedule, "algorithm", schedule_names, FIXED,
             "outer rate over train.iterations: constant, cosine (annealed to meta.min_outer_lr) or algorithm "
             "(cosine for mamlpp and mamlpp-metasgd, constant otherwise)"),
    ENUM_KEY("meta", "optimizer", optimizer, "adam", optimizer_names, FIXED, "outer-loop optimizer"),
    DOUBLE_KEY("meta", "momentum", momentum, "0.9", GE(0), LT(1), FIXED, "SGD momentum"),
    DOUBLE_KEY("meta", "beta1", beta1, "0.9", GE(0), LT(1), FIXED, "Adam first-moment decay"),
    DOUBLE_KEY("meta", "beta2", beta2, "0.999", GE(0), LT(1), FIXED, "Adam second-moment decay"),
    DOUBLE_KEY("meta", "adam_eps", adam_eps, "1e-8", GT(0), UNBOUNDED, FIXED, "Adam denominator epsilon"),
    DOUBLE_KEY("meta", "clip_norm", clip_norm, "0", GE(0), UNBOUNDED, FIXED,
               "global-norm clipping of the meta-gradient; 0 = off"),
    INT_KEY("meta", "first_order_iterations", first_order_iterations, "0", GE(0), UNBOUNDED, FIXED,
            "MAML++ derivative-order annealing: first-order meta-gradients for this many iterations"),
    INT_KEY("meta", "msl_iterations", msl_iterations, "0", GE(0), UNBOUNDED, FIXED,
            "MAML++ multi-step loss annealed over this many iterations; 0 disables the multi-step loss"),
    DOUBLE_KEY("meta", "min_outer_lr", min_outer_lr, "0", GE(0), UNBOUNDED, FIXED,
               "floor of the outer rate's cosine schedule; at most meta.outer_lr"),
    DOUBLE_KEY("meta", "rate_lr_scale", rate_lr_scale, "1", GT(0), LE(1), FIXED,
               "the learned inner rates' outer learning rate as a multiple of the weights' (metasgd, mamlpp, "
               "mamlpp-metasgd): below 1 they drift less per iteration"),
    BOOL_KEY("meta", "nonnegative_rates", nonnegative_rates, "false", FIXED,
             "project the learned inner rates onto >= 0 after each outer step (metasgd, mamlpp, mamlpp-metasgd): "
             "every inner step then points downhill, also past the trained steps"),
    DOUBLE_KEY("meta", "lambda", imaml_lambda, "1", GT(0), UNBOUNDED, FIXED, "iMAML proximal regularization strength"),
    INT_KEY("meta", "cg_steps", cg_steps, "10", GE(1), LE(1000), FIXED, "iMAML conjugate-gradient iterations at most"),
    DOUBLE_KEY("meta", "cg_tol", cg_tol, "1e-10", GT(0), UNBOUNDED, FIXED,
               "iMAML conjugate-gradient residual tolerance, relative to the right-hand side"),

    ENUM_KEY("task", "kind", task_kind, "sinusoid", task_kind_names, FIXED,
             "task family; episodes and grouped read task.path"),
    INT_KEY("task", "shots", shots, "10", GE(1), UNBOUNDED, FIXED,
            "support examples per task (per class when classifying)"),
    INT_KEY("task", "queries", queries, "10", GE(1), UNBOUNDED, FIXED,
            "query examples per task (per class when classifying)"),
    INT_KEY("task", "ways", ways, "1", GE(1), UNBOUNDED, FIXED, "classes per episode; episodes need at least 2"),
    INT_KEY("task", "augment_shift", augment_shift, "0", GE(0), LE(64), FIXED,
            "episodes of images: each training image moves by up to this many pixels in x and y, edges "
            "repeated; validation and evaluation images never move"),
    DOUBLE_KEY("task", "augment_rotate", augment_rotate, "0", GE(0), LE(180), FIXED,
               "episodes of images: each training image turns about its centre by up to this many degrees either "
               "way, bilinear, edges repeated; validation and evaluation images never turn"),
    STRING_KEY("task", "path", task_path, "", 0, RESUMABLE,
               "HDF5 dataset, required by episodes and grouped (may move between runs)"),

    STRING_KEY("model", "spec", model_spec, "input 1, linear 40, relu, linear 40, relu, linear 1, mse", 1, FIXED,
               "network layers (see mt_nn_parse); continue a long spec on indented lines"),
    DOUBLE_KEY("model", "head_init_scale", head_init_scale, "1", GE(0), UNBOUNDED, FIXED,
               "the last layer's initial weights: He-normal times this; 0 starts every class equal"),

    INT_KEY("eval", "tasks", eval_tasks, "600", GE(1), UNBOUNDED, RESUMABLE, "tasks in the final evaluation"),
    UINT64_KEY("eval", "seed", eval_seed, "1", RESUMABLE,
               "keys the evaluation and validation tasks: the same for every train.seed"),
    INT_KEY("eval", "steps", eval_steps, "0", GE(0), LE(256), RESUMABLE,
            "inner steps at evaluation; 0 = meta.inner_steps"),
    INT_KEY("eval", "queries", eval_queries, "0", GE(0), UNBOUNDED, RESUMABLE,
            "query examples per evaluation task; 0 = task.queries"),
    ENUM_KEY("eval", "split", eval_split, "test", split_names, RESUMABLE, "dataset split evaluated"),
    INT_KEY("eval", "every", eval_every, "0", GE(0), UNBOUNDED, RESUMABLE,
            "validation period during training in iterations; 0 = off"),
    INT_KEY("eval", "val_tasks", eval_val_tasks, "100", GE(1), UNBOUNDED, RESUMABLE,
            "tasks per validation during training"),
    STRING_KEY("eval", "episodes", eval_episodes, "", 0, RESUMABLE,
               "HDF5 file with fixed episodes (/episodes) to evaluate exactly; may be task.path"),
    BOOL_KEY("eval", "keep_best", eval_keep_best, "false", RESUMABLE,
             "also keep output.dir/best.h5, the checkpoint with the best validation metric"),
};

#define N_KEYS (sizeof config_keys / sizeof config_keys[0])

static const char *const section_names = "train, output, meta, task, model, eval";

/* inih's limit on a line's length: its buffer also holds "\r\n" and the NUL. */
#define INI_LINE_CHARS (INI_MAX_LINE - 3)
/* Continuation lines written by mt_config_format start with this. */
#define INDENT "    "
#define INDENT_LEN 4

/* ---- small helpers ------------------------------------------------------------------------ */

static void *field(const mt_config *cfg, const config_key *k) { return (char *)cfg + k->offset; }

static const config_key *find_key(const char *section, const char *name) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].name, name) == 0)
            return &config_keys[i];
    return NULL;
}

static bool known_section(const char *section) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0) return true;
    return false;
}

/* "; did you mean train.seed?" when the name exists in another section, else "". */
static void suggest_section(const char *name, char *out, size_t size) {
    out[0] = '\0';
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].name, name) == 0) {
            snprintf(out, size, "; did you mean %s.%s?", config_keys[i].section, name);
            return;
        }
}

static const char *enum_name(const char *const *names, int value) {
    for (int i = 0; names[i]; i++)
        if (i == value) return names[i];
    return "?";
}

static int enum_count(const char *const *names) {
    int n = 0;
    while (names[n]) n++;
    return n;
}

/* The shortest %g text that reads back as exactly `v`, so printed configs stay readable; between
 * 1e-4 and 1e6 without an exponent (180, not 1.8e+02). */
static void format_double(double v, char *out, size_t size) {
    int plain = fabs(v) >= 1e-4 && fabs(v) < 1e6;
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(out, size, "%.*g", precision, v);
        if (strtod(out, NULL) == v && !(plain && strchr(out, 'e'))) return;
    }
}

/* Growing text for the formatters; like snprintf, counts what did not fit. */
typedef struct {
    char *out;
    size_t size, len;
} config_text;

__attribute__((format(printf, 2, 3))) static void text_add(config_text *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = t->len < t->size ? t->size - t->len : 0;
    int n = vsnprintf(room ? t->out + t->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) t->len += (size_t)n;
}

/* ---- ranges and values ---------------------------------------------------------------------- */

static void format_bound(const config_key *k, double v, char *out, size_t size) {
    if (k->type == KEY_INT)
        snprintf(out, size, "%d", (int)v);
    else
        format_double(v, out, size);
}

/* "from 1 to 64", "> 0", ">= 0 and < 1". */
static void range_text(const config_key *k, char *out, size_t size) {
    char lo[32], hi[32] = "";
    bool has_max = isfinite(k->max);
    format_bound(k, k->min, lo, sizeof lo);
    if (has_max) format_bound(k, k->max, hi, sizeof hi);
    if (k->type == KEY_INT && has_max)
        snprintf(out, size, "from %s to %s", lo, hi);
    else if (has_max)
        snprintf(out, size, "%s %s and %s %s", k->min_open ? ">" : ">=", lo, k->max_open ? "<" : "<=", hi);
    else
        snprintf(out, size, "%s %s", k->min_open ? ">" : ">=", lo);
}

static bool in_range(const config_key *k, double v) {
    bool above = k->min_open ? v > k->min : v >= k->min;
    bool below = k->max_open ? v < k->max : v <= k->max;
    return above && below;
}

/* Length of the piece of `s` up to the next place where mt_config_format may break the line:
 * a single space between two non-spaces (inih joins continuation lines with exactly one), not
 * before a '#' (an indented "#..." line is a comment). */
static size_t segment_length(const char *s) {
    size_t i = 1;
    if (!s[0]) return 0;
    for (; s[i]; i++)
        if (s[i] == ' ' && s[i - 1] != ' ' && s[i + 1] != ' ' && s[i + 1] != '\0' && s[i + 1] != '#') return i;
    return i;
}

/* False, with the reason, when `s` cannot be this key's value. Beyond the length limits, refuses
 * what an INI file cannot express, so that mt_config_format always writes text that reads
 * back the same. */
static bool string_ok(const config_key *k, const char *s, char *reason, size_t size) {
    size_t n = strlen(s);
    const char *problem = NULL;
    if (n >= MT_CONFIG_STR) {
        snprintf(reason, size, "is longer than %d characters", MT_CONFIG_STR - 1);
        return false;
    }
    if (n < (size_t)k->min)
        problem = "must not be empty";
    else if (strchr(s, ';'))
        problem = "contains ';', which starts a comment in INI files";
    else if (n > 0 && (s[0] == ' ' || s[n - 1] == ' '))
        problem = "starts or ends with a space";
    for (const char *p = s; *p && !problem; p++)
        if (iscntrl((unsigned char)*p)) problem = "contains a control character";
    if (problem) {
        snprintf(reason, size, "%s", problem);
        return false;
    }
    size_t first_room = INI_LINE_CHARS - strlen(k->name) - 3; /* after "name = " */
    for (const char *p = s; *p;) {
        size_t len = segment_length(p);
        size_t room = p == s && s[0] == '#' ? first_room : INI_LINE_CHARS - INDENT_LEN;
        if (len > room) {
            snprintf(reason, size, "has %zu characters without a single space; at most %zu fit on an INI line", len,
                     room);
            return false;
        }
        p += len;
        if (*p) p++;
    }
    return true;
}

/* Converts `text` to key k's type and stores it in cfg. False, with the reason, when it is not a
 * valid value; cfg is then unchanged. */
static bool parse_value(mt_config *cfg, const config_key *k, const char *text, char *reason, size_t size) {
    char range[64];
    char *end;
    switch (k->type) {
    case KEY_INT: {
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (end == text || *end != '\0' || isspace((unsigned char)text[0])) {
            snprintf(reason, size, "expected an integer, got '%s'", text);
            return false;
        }
        range_text(k, range, sizeof range);
        if (errno == ERANGE || v < INT_MIN || v > INT_MAX) {
            snprintf(reason, size, "must be %s and fit in an int, got %s", range, text);
            return false;
        }
        if (!in_range(k, (double)v)) {
            snprintf(reason, size, "must be %s, got %s", range, text);
            return false;
        }
        *(int *)field(cfg, k) = (int)v;
        return true;
    }
    case KEY_UINT64: {
        errno = 0;
        uint64_t v = strtoull(text, &end, 10);
        /* strtoull would accept "-1" as 2^64-1 */
        if (!isdigit((unsigned char)text[0]) || *end != '\0') {
            snprintf(reason, size, "expected an unsigned integer, got '%s'", text);
            return false;
        }
        if (errno == ERANGE) {
            snprintf(reason, size, "must be at most %" PRIu64 ", got %s", UINT64_MAX, text);
            return false;
        }
        *(uint64_t *)field(cfg, k) = v;
        return true;
    }
    case KEY_DOUBLE: {
        errno = 0;
        double v = strtod(text, &end);
        if (end == text || *end != '\0' || isspace((unsigned char)text[0])) {
            snprintf(reason, size, "expected a number, got '%s'", text);
            return false;
        }
        if (!isfinite(v) && errno != ERANGE) {
            snprintf(reason, size, "must be a finite number, got %s", text);
            return false;
        }
        /* Subnormal results also report ERANGE; only overflow and underflow to zero lose the value. */
        if (errno == ERANGE && (!isfinite(v) || v == 0)) {
            snprintf(reason, size, "is beyond the range of a double, got %s", text);
            return false;
        }
        if (!in_range(k, v)) {
            range_text(k, range, sizeof range);
            snprintf(reason, size, "must be %s, got %s", range, text);
            return false;
        }
        *(double *)field(cfg, k) = v == 0 ? 0.0 : v; /* -0 would print, and compare, as a change */
        return true;
    }
    case KEY_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
        for (int i = 0; i < 4; i++) {
            if (strcasecmp(text, yes[i]) == 0 || strcasecmp(text, no[i]) == 0) {
                *(int *)field(cfg, k) = strcasecmp(text, yes[i]) == 0;
                return true;
            }
        }
        snprintf(reason, size, "must be true or false (or yes/no, on/off, 1/0), got '%s'", text);
        return false;
    }
    case KEY_STRING: {
        if (!string_ok(k, text, reason, size)) return false;
        snprintf((char *)field(cfg, k), MT_CONFIG_STR, "%s", text);
        return true;
    }
    case KEY_ENUM: {
        for (int i = 0; k->choices[i]; i++)
            if (strcmp(text, k->choices[i]) == 0) {
                *(int *)field(cfg, k) = i;
                return true;
            }
        size_t len = (size_t)snprintf(reason, size, "must be one of");
        for (int i = 0; k->choices[i] && len < size; i++)
            len += (size_t)snprintf(reason + len, size - len, "%s %s", i ? "," : "", k->choices[i]);
        if (len < size) snprintf(reason + len, size - len, "; got '%s'", text);
        return false;
    }
    }
    snprintf(reason, size, "has no type");
    return false;
}

/* Checks a value already in cfg, for configs built or changed in code. */
static bool stored_value_ok(const mt_config *cfg, const config_key *k, char *reason, size_t size) {
    char range[64], got[40];
    range_text(k, range, sizeof range);
    switch (k->type) {
    case KEY_INT: {
        int v = *(const int *)field(cfg, k);
        if (in_range(k, v)) return true;
        snprintf(reason, size, "must be %s, got %d", range, v);
        return false;
    }
    case KEY_DOUBLE: {
        double v = *(const double *)field(cfg, k);
        if (isfinite(v) && in_range(k, v)) return true;
        format_double(v, got, sizeof got);
        snprintf(reason, size, "must be %s, got %s", range, got);
        return false;
    }
    case KEY_BOOL: {
        int v = *(const int *)field(cfg, k);
        if (v == 0 || v == 1) return true;
        snprintf(reason, size, "must be 0 or 1, got %d", v);
        return false;
    }
    case KEY_ENUM: {
        int v = *(const int *)field(cfg, k);
        if (v >= 0 && v < enum_count(k->choices)) return true;
        snprintf(reason, size, "is not a valid choice, got %d", v);
        return false;
    }
    case KEY_STRING: {
        const char *s = field(cfg, k);
        if (!memchr(s, '\0', MT_CONFIG_STR)) {
            snprintf(reason, size, "is not terminated");
            return false;
        }
        return string_ok(k, s, reason, size);
    }
    case KEY_UINT64:
        return true;
    }
    return true;
}

/* The value as written in a config file. */
static void value_text(const mt_config *cfg, const config_key *k, char *out, size_t size) {
    switch (k->type) {
    case KEY_INT:
        snprintf(out, size, "%d", *(const int *)field(cfg, k));
        return;
    case KEY_UINT64:
        snprintf(out, size, "%" PRIu64, *(const uint64_t *)field(cfg, k));
        return;
    case KEY_DOUBLE:
        format_double(*(const double *)field(cfg, k), out, size);
        return;
    case KEY_BOOL:
        snprintf(out, size, "%s", *(const int *)field(cfg, k) ? "true" : "false");
        return;
    case KEY_STRING:
        snprintf(out, size, "%s", (const char *)field(cfg, k));
        return;
    case KEY_ENUM:
        snprintf(out, size, "%s", enum_name(k->choices, *(const int *)field(cfg, k)));
        return;
    }
}

/* Parses and stores, or raises "WHERE section.key: reason". */
static mt_status assign(mt_config *cfg, const config_key *k, const char *text, const char *where) {
    char reason[512];
    if (parse_value(cfg, k, text, reason, sizeof reason)) {
        /* model.spec is parsed later, by the engine: keep where it came from for its messages. */
        if (k->offset == offsetof(mt_config, model_spec))
            snprintf(cfg->model_spec_origin, sizeof cfg->model_spec_origin, "%s", where);
        return MT_OK;
    }
    return MT_RAISE(MT_ERR_CONFIG, "%s %s.%s: %s", where, k->section, k->name, reason);
}

/* ---- public: defaults, names ---------------------------------------------------------------- */

void mt_config_defaults(mt_config *cfg) {
    char reason[512];
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key *k = &config_keys[i];
        if (!parse_value(cfg, k, k->def, reason, sizeof reason)) /* a bug in the table above */
            MT_RAISE(MT_ERR_ARG, "default of %s.%s: %s", k->section, k->name, reason);
    }
}

const char *mt_config_algorithm_name(mt_algorithm a) { return enum_name(algorithm_names, (int)a); }
const char *mt_config_optimizer_name(mt_optimizer_kind o) { return enum_name(optimizer_names, (int)o); }
const char *mt_config_task_kind_name(mt_task_kind k) { return enum_name(task_kind_names, (int)k); }
const char *mt_config_split_name(mt_split s) { return enum_name(split_names, (int)s); }

/* ---- reading INI files ---------------------------------------------------------------------- */

typedef enum { LINE_BLANK, LINE_SECTION, LINE_PAIR, LINE_CONTINUATION, LINE_MALFORMED } config_line_kind;

typedef struct {
    mt_config *cfg;
    const char *path; /* or the origin of text, in messages */
    FILE *file;       /* the source: a file, */
    const char *text; /* or the rest of a string */
    char *buf;        /* the current line */
    size_t cap;
    int lineno;
    config_line_kind kind;     /* what inih will make of the current line */
    bool after_pair;           /* an indented line now continues the last key (inih's prev_name) */
    char word[64];             /* the current line's section or key name */
    char section[64];          /* the current [section] */
    int section_line;          /* where it started */
    bool section_used;         /* a key was read in it */
    const config_key *pending; /* key whose value may still grow by continuation lines */
    int pending_line;
    char pending_value[MT_CONFIG_STR];
    int first_line[N_KEYS]; /* where each key was set in this file, 0 = not yet */
    mt_status st;
} config_ini_reader;

/* Where inih's scan stops in `s`: at one of `chars`, or at an inline comment (';' after a space). */
static const char *find_chars_or_comment(const char *s, const char *chars) {
    bool was_space = false;
    for (; *s && !strchr(chars, *s) && !(was_space && *s == ';'); s++) was_space = isspace((unsigned char)*s);
    return s;
}

/* Copies [from, to) without surrounding whitespace into out. */
static void copy_trimmed(char *out, size_t size, const char *from, const char *to) {
    while (from < to && isspace((unsigned char)*from)) from++;
    while (to > from && isspace((unsigned char)to[-1])) to--;
    size_t n = (size_t)(to - from) < size - 1 ? (size_t)(to - from) : size - 1;
    memcpy(out, from, n);
    out[n] = '\0';
}

/* Classifies a line the way ini_parse_stream will, so that the handler can tell a continuation
 * from a repeated key, and errors can name the key. */
static config_line_kind classify_line(config_ini_reader *r, const char *line) {
    const char *start = line;
    if (r->lineno == 1 && strncmp(start, "\xEF\xBB\xBF", 3) == 0) start += 3; /* inih skips a BOM */
    while (isspace((unsigned char)*start)) start++;
    r->word[0] = '\0';
    if (*start == '\0' || *start == ';' || *start == '#') return LINE_BLANK;
    if (r->after_pair && start > line) return LINE_CONTINUATION;
    if (*start == '[') {
        const char *end = find_chars_or_comment(start + 1, "]");
        if (*end != ']') return LINE_MALFORMED;
        size_t n = (size_t)(end - start - 1) < sizeof r->word - 1 ? (size_t)(end - start - 1) : sizeof r->word - 1;
        memcpy(r->word, start + 1, n); /* inih keeps the name untrimmed */
        r->word[n] = '\0';
        return LINE_SECTION;
    }
    const char *end = find_chars_or_comment(start, "=:");
    if (*end != '=' && *end != ':') return LINE_MALFORMED;
    copy_trimmed(r->word, sizeof r->word, start, end);
    return LINE_PAIR;
}

/* "FILE:LINE:" */
static void location(const config_ini_reader *r, int line, char *out, size_t size) {
    snprintf(out, size, "%s:%d:", r->path, line);
}

/* Converts the pending key's complete value. */
static mt_status finish_pending(config_ini_reader *r) {
    if (!r->pending) return MT_OK;
    char where[600];
    location(r, r->pending_line, where, sizeof where);
    const config_key *k = r->pending;
    r->pending = NULL;
    return assign(r->cfg, k, r->pending_value, where);
}

/* A section with no keys is never seen by the handler; check its name here. */
static mt_status finish_section(config_ini_reader *r) {
    if (r->section_line == 0 || r->section_used || known_section(r->section)) return MT_OK;
    return MT_RAISE(MT_ERR_CONFIG, "%s:%d: [%s]: unknown section; sections are %s", r->path, r->section_line,
                    r->section, section_names);
}

static mt_status overlong_line(const config_ini_reader *r, int limit) {
    char key[160] = "";
    if (r->kind == LINE_PAIR && r->section[0])
        snprintf(key, sizeof key, " %s.%s:", r->section, r->word);
    else if (r->kind == LINE_PAIR)
        snprintf(key, sizeof key, " %s:", r->word);
    else if (r->kind == LINE_CONTINUATION && r->pending)
        snprintf(key, sizeof key, " %s.%s:", r->pending->section, r->pending->name);
    return MT_RAISE(MT_ERR_CONFIG, "%s:%d:%s line longer than %d characters; continue a value on indented lines",
                    r->path, r->lineno, key, limit);
}

/* Reads the next line, with its end of line, into r->buf; -1 at the end or on failure (r->st). */
static ssize_t next_line(config_ini_reader *r) {
    if (r->file) {
        errno = 0;
        ssize_t n = getline(&r->buf, &r->cap, r->file);
        if (n < 0 && ferror(r->file)) r->st = MT_RAISE(MT_ERR_CONFIG, "%s: cannot read: %s", r->path, strerror(errno));
        return n;
    }
    size_t n = strcspn(r->text, "\n");
    n += r->text[n] == '\n';
    if (n == 0) return -1;
    if (n + 1 > r->cap) {
        char *grown = realloc(r->buf, n + 1);
        if (!grown) {
            r->st = MT_RAISE(MT_ERR_NOMEM, "%s: out of memory reading the config", r->path);
            return -1;
        }
        r->buf = grown;
        r->cap = n + 1;
    }
    memcpy(r->buf, r->text, n);
    r->buf[n] = '\0';
    r->text += n;
    return (ssize_t)n;
}

/* inih's ini_reader: hands over one line at a time; returning NULL ends the parse. */
static char *config_ini_read(char *str, int num, void *stream) {
    config_ini_reader *r = stream;
    if (r->st != MT_OK) return NULL;
    ssize_t n = next_line(r);
    if (n < 0) {
        if (r->st == MT_OK) r->st = finish_pending(r);
        if (r->st == MT_OK) r->st = finish_section(r);
        return NULL;
    }
    r->lineno++;
    while (n > 0 && (r->buf[n - 1] == '\n' || r->buf[n - 1] == '\r')) r->buf[--n] = '\0';
    r->kind = classify_line(r, r->buf);

    /* A new key, section or error ends the pending value; report its problems first. */
    if (r->kind == LINE_SECTION || r->kind == LINE_PAIR || r->kind == LINE_MALFORMED) r->st = finish_pending(r);
    if (r->st == MT_OK && n > num - 3) r->st = overlong_line(r, num - 3);
    if (r->st == MT_OK && r->kind == LINE_MALFORMED)
        r->st = MT_RAISE(MT_ERR_CONFIG, "%s:%d: expected 'key = value' or '[section]'", r->path, r->lineno);
    if (r->st == MT_OK && r->kind == LINE_SECTION) {
        r->st = finish_section(r);
        snprintf(r->section, sizeof r->section, "%s", r->word);
        r->section_line = r->lineno;
        r->section_used = false;
        r->after_pair = false;
    }
    if (r->st != MT_OK) return NULL;
    if (r->kind == LINE_PAIR) r->after_pair = true;
    memcpy(str, r->buf, (size_t)n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
}

static mt_status unknown_key(const config_ini_reader *r, const char *name) {
    char hint[128];
    suggest_section(name, hint, sizeof hint);
    if (!r->section[0])
        return MT_RAISE(MT_ERR_CONFIG, "%s:%d: %s: key outside any [section]%s", r->path, r->lineno, name, hint);
    if (!known_section(r->section))
        return MT_RAISE(MT_ERR_CONFIG, "%s:%d: %s.%s: unknown section [%s] (line %d); sections are %s", r->path,
                        r->lineno, r->section, name, r->section, r->section_line, section_names);
    return MT_RAISE(MT_ERR_CONFIG, "%s:%d: %s.%s: unknown key in [%s]%s", r->path, r->lineno, r->section, name,
                    r->section, hint);
}

/* A continuation line's text joins the pending value with a single space. */
static mt_status continue_pending(config_ini_reader *r, const char *value) {
    const config_key *k = r->pending;
    if (!k) return MT_RAISE(MT_ERR_CONFIG, "%s:%d: continuation line without a key", r->path, r->lineno);
    /* inih r55 leaves inline comments on continuation lines (later versions cut them); cut here. */
    char text[INI_MAX_LINE];
    copy_trimmed(text, sizeof text, value, find_chars_or_comment(value, ""));
    size_t len = strlen(r->pending_value);
    int n = snprintf(r->pending_value + len, sizeof r->pending_value - len, "%s%s", len ? " " : "", text);
    if (n < 0 || (size_t)n >= sizeof r->pending_value - len)
        return MT_RAISE(MT_ERR_CONFIG, "%s:%d: %s.%s: value longer than %d characters", r->path, r->pending_line,
                        k->section, k->name, MT_CONFIG_STR - 1);
    return MT_OK;
}

/* inih's handler: called for every `key = value` line and every continuation line. */
static int config_ini_handle(void *user, const char *section, const char *name, const char *value) {
    config_ini_reader *r = user;
    if (r->st != MT_OK) return 0;
    if (r->kind == LINE_CONTINUATION) {
        r->st = continue_pending(r, value);
        return r->st == MT_OK;
    }
    if (r->kind != LINE_PAIR) { /* our reading of the line disagrees with inih's */
        r->st = MT_RAISE(MT_ERR_CONFIG, "%s:%d: cannot parse this line", r->path, r->lineno);
        return 0;
    }
    r->section_used = true;
    const config_key *k = find_key(r->section, name);
    if (!k) {
        r->st = unknown_key(r, name);
        return 0;
    }
    int *first = &r->first_line[k - config_keys];
    if (*first) {
        r->st = MT_RAISE(MT_ERR_CONFIG, "%s:%d: %s.%s: set twice (first on line %d)", r->path, r->lineno, k->section,
                         k->name, *first);
        return 0;
    }
    *first = r->lineno;
    if (strlen(value) >= sizeof r->pending_value) {
        r->st = MT_RAISE(MT_ERR_CONFIG, "%s:%d: %s.%s: value longer than %d characters", r->path, r->lineno, k->section,
                         k->name, MT_CONFIG_STR - 1);
        return 0;
    }
    r->pending = k;
    r->pending_line = r->lineno;
    snprintf(r->pending_value, sizeof r->pending_value, "%s", value);
    return 1;
}

/* Parses r's source over cfg; cfg changes only when all of it is good. */
static mt_status parse_ini(mt_config *cfg, config_ini_reader *r) {
    mt_config work = *cfg;
    r->cfg = &work;
    int rc = ini_parse_stream(config_ini_read, r, config_ini_handle, r);
    if (r->st != MT_OK) return r->st;
    if (rc == -2) return MT_RAISE(MT_ERR_NOMEM, "%s: out of memory reading the config", r->path);
    if (rc != 0) return MT_RAISE(MT_ERR_CONFIG, "%s:%d: cannot parse this line", r->path, rc);
    *cfg = work;
    return MT_OK;
}

mt_status mt_config_load(mt_config *cfg, const char *path) {
    mt_status st = MT_OK;
    config_ini_reader *r = calloc(1, sizeof *r);
    if (!r) return MT_RAISE(MT_ERR_NOMEM, "%s: out of memory reading the config", path);
    r->path = path;
    r->file = fopen(path, "r");
    if (!r->file) MT_THROW(MT_ERR_CONFIG, "%s: cannot read: %s", path, strerror(errno));
    st = parse_ini(cfg, r);
fail:
    if (r->file) fclose(r->file);
    free(r->buf);
    free(r);
    return st;
}

mt_status mt_config_load_string(mt_config *cfg, const char *text, const char *origin) {
    config_ini_reader *r = calloc(1, sizeof *r);
    if (!r) return MT_RAISE(MT_ERR_NOMEM, "%s: out of memory reading the config", origin);
    r->path = origin;
    r->text = text;
    mt_status st = parse_ini(cfg, r);
    free(r->buf);
    free(r);
    return st;
}

mt_status mt_config_set(mt_config *cfg, const char *assignment, const char *origin) {
    char name[128], value[MT_CONFIG_STR + 1], hint[128];
    if (!origin) origin = "--set";
    const char *eq = strchr(assignment, '=');
    if (!eq) return MT_RAISE(MT_ERR_CONFIG, "%s %s: expected section.key=value", origin, assignment);
    copy_trimmed(name, sizeof name, assignment, eq);
    char *dot = strchr(name, '.');
    if (!dot) return MT_RAISE(MT_ERR_CONFIG, "%s %s: expected section.key=value", origin, name);
    *dot = '\0';
    const config_key *k = find_key(name, dot + 1);
    if (!k) {
        suggest_section(dot + 1, hint, sizeof hint);
        if (!known_section(name))
            return MT_RAISE(MT_ERR_CONFIG, "%s %s.%s: unknown section [%s]; sections are %s%s", origin, name, dot + 1,
                            name, section_names, hint);
        return MT_RAISE(MT_ERR_CONFIG, "%s %s.%s: unknown key in [%s]%s", origin, name, dot + 1, name, hint);
    }
    copy_trimmed(value, sizeof value, eq + 1, eq + strlen(eq));
    if (strlen(value) >= MT_CONFIG_STR)
        return MT_RAISE(MT_ERR_CONFIG, "%s %s.%s: value longer than %d characters", origin, k->section, k->name,
                        MT_CONFIG_STR - 1);
    return assign(cfg, k, value, origin);
}

/* ---- checks ------------------------------------------------------------------------------- */

int mt_config_eval_steps(const mt_config *cfg) { return cfg->eval_steps > 0 ? cfg->eval_steps : cfg->inner_steps; }

mt_status mt_config_validate(const mt_config *cfg) {
    char reason[512], a[40], b[40];
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key *k = &config_keys[i];
        if (!stored_value_ok(cfg, k, reason, sizeof reason))
            return MT_RAISE(MT_ERR_CONFIG, "%s.%s: %s", k->section, k->name, reason);
    }
    if (cfg->min_outer_lr > cfg->outer_lr) {
        format_double(cfg->min_outer_lr, a, sizeof a);
        format_double(cfg->outer_lr, b, sizeof b);
        return MT_RAISE(MT_ERR_CONFIG, "meta.min_outer_lr: must be <= meta.outer_lr (%s), got %s", b, a);
    }
    /* Keys that tune learned inner rates are mistakes, not no-ops, where there are none. */
    bool fixed_rates = mt_meta_traits_of(cfg->algorithm)->rates == MT_RATES_FIXED;
    if (cfg->rate_lr_scale != 1 && fixed_rates) {
        format_double(cfg->rate_lr_scale, a, sizeof a);
        return MT_RAISE(MT_ERR_CONFIG, "meta.rate_lr_scale: %s learns no inner rates, so it must stay 1, got %s",
                        mt_config_algorithm_name(cfg->algorithm), a);
    }
    if (cfg->nonnegative_rates && fixed_rates)
        return MT_RAISE(MT_ERR_CONFIG, "meta.nonnegative_rates: %s learns no inner rates, so it must stay false",
                        mt_config_algorithm_name(cfg->algorithm));
    bool from_file = cfg->task_kind == MT_TASK_EPISODES || cfg->task_kind == MT_TASK_GROUPED;
    if (from_file && cfg->task_path[0] == '\0')
        return MT_RAISE(MT_ERR_CONFIG, "task.path: required when task.kind is %s",
                        mt_config_task_kind_name(cfg->task_kind));
    if (cfg->task_kind == MT_TASK_EPISODES && cfg->ways < 2)
        return MT_RAISE(MT_ERR_CONFIG, "task.ways: must be >= 2 when task.kind is episodes, got %d", cfg->ways);
    /* eval.steps = 0 means meta.inner_steps, which has the same bound (and the same arrays). */
    int eval_steps = mt_config_eval_steps(cfg);
    if (eval_steps > 256) return MT_RAISE(MT_ERR_CONFIG, "eval.steps: must be <= 256, got %d", eval_steps);
    return MT_OK;
}

mt_status mt_config_check_resume(const mt_config *saved, const mt_config *now) {
    char there[MT_CONFIG_STR + 2], here[MT_CONFIG_STR + 2];
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key *k = &config_keys[i];
        if (k->resumable) continue;
        /* Equal text means equal values: doubles print in a form that reads back exactly. */
        value_text(saved, k, there, sizeof there);
        value_text(now, k, here, sizeof here);
        if (strcmp(there, here) == 0) continue;
        const char *q = k->type == KEY_STRING ? "'" : "";
        return MT_RAISE(MT_ERR_CONFIG,
                        "config key '%s.%s' differs from the checkpoint (%s%s%s there, %s%s%s now): it changes "
                        "the model or the math, so a resumed run cannot change it",
                        k->section, k->name, q, there, q, q, here, q);
    }
    return MT_OK;
}

/* ---- printing ------------------------------------------------------------------------------- */

/* `name = value`, with a long value broken at single spaces into indented continuation lines
 * (which the reader joins back with one space) of about WRAP characters. string_ok
 * guarantees every piece fits within inih's limit, and a first piece starting with '#' (which
 * cannot begin a continuation line) on the first line. */
#define WRAP 100
static void text_add_string(config_text *t, const char *name, const char *value) {
    size_t used = strlen(name) + 2; /* "name =" */
    bool continuation = false, line_has_value = false;
    text_add(t, "%s =", name);
    for (const char *p = value; *p;) {
        size_t len = segment_length(p);
        bool space = line_has_value || !continuation; /* " = value" or between pieces */
        size_t limit = p == value ? INI_LINE_CHARS : WRAP;
        if (used + space + len > limit && (line_has_value || !continuation)) {
            text_add(t, "\n" INDENT);
            used = INDENT_LEN;
            continuation = true;
            line_has_value = false;
            space = false;
        }
        text_add(t, "%s%.*s", space ? " " : "", (int)len, p);
        used += space + len;
        line_has_value = true;
        p += len;
        if (*p) p++; /* the single space the reader puts back */
    }
    text_add(t, "\n");
}

size_t mt_config_format(const mt_config *cfg, char *out, size_t size) {
    config_text t = {out, size, 0};
    char value[MT_CONFIG_STR];
    const char *section = NULL;
    if (size > 0) out[0] = '\0';
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key *k = &config_keys[i];
        if (!section || strcmp(section, k->section) != 0) {
            text_add(&t, "%s[%s]\n", section ? "\n" : "", k->section);
            section = k->section;
        }
        value_text(cfg, k, value, sizeof value);
        if (k->type == KEY_STRING)
            text_add_string(&t, k->name, value);
        else
            text_add(&t, "%s = %s\n", k->name, value);
    }
    return t.len;
}

static const char *type_name(config_key_type type) {
    switch (type) {
    case KEY_INT:
        return "int";
    case KEY_UINT64:
        return "uint64";
    case KEY_DOUBLE:
        return "double";
    case KEY_BOOL:
        return "bool";
    case KEY_STRING:
        return "string";
    case KEY_ENUM:
        return "enum";
    }
    return "?";
}

/* The "valid" column of the reference. */
static void valid_text(const config_key *k, char *out, size_t size) {
    switch (k->type) {
    case KEY_INT:
    case KEY_DOUBLE:
        range_text(k, out, size);
        return;
    case KEY_UINT64:
        snprintf(out, size, "0 to %" PRIu64, UINT64_MAX);
        return;
    case KEY_BOOL:
        snprintf(out, size, "true, false");
        return;
    case KEY_STRING:
        snprintf(out, size, "%s", k->min > 0 ? "non-empty" : "any");
        return;
    case KEY_ENUM: {
        size_t len = 0;
        out[0] = '\0';
        for (int i = 0; k->choices[i] && len < size; i++)
            len += (size_t)snprintf(out + len, size - len, "%s`%s`", i ? ", " : "", k->choices[i]);
        return;
    }
    }
}

size_t mt_config_reference(char *out, size_t size) {
    config_text t = {out, size, 0};
    char valid[160];
    if (size > 0) out[0] = '\0';
    text_add(&t, "| key | type | default | valid | resumable | description |\n");
    text_add(&t, "|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key *k = &config_keys[i];
        valid_text(k, valid, sizeof valid);
        text_add(&t, "| `%s.%s` | %s | %s%s%s | %s | %s | %s |\n", k->section, k->name, type_name(k->type),
                 k->def[0] ? "`" : "", k->def[0] ? k->def : "(empty)", k->def[0] ? "`" : "", valid,
                 k->resumable ? "yes" : "no", k->doc);
    }
    return t.len;
}

void mt_config_meta_hparams(const mt_config *cfg, mt_meta_hparams *hp) {
    *hp = (mt_meta_hparams){
        .algorithm = cfg->algorithm,
        .inner_steps = cfg->inner_steps,
        .inner_lr = cfg->inner_lr,
        .first_order_iterations = cfg->first_order_iterations,
        .msl_iterations = cfg->msl_iterations,
        .imaml_lambda = cfg->imaml_lambda,
        .cg_tol = cfg->cg_tol,
        .cg_steps = cfg->cg_steps,
        .optimizer = cfg->optimizer,
        .outer_lr = cfg->outer_lr,
        .outer_lr_schedule = cfg->outer_lr_schedule,
        .min_outer_lr = cfg->min_outer_lr,
        .beta1 = cfg->beta1,
        .beta2 = cfg->beta2,
        .adam_eps = cfg->adam_eps,
        .momentum = cfg->momentum,
        .rate_lr_scale = cfg->rate_lr_scale,
        .nonnegative_rates = cfg->nonnegative_rates,
        .iterations = cfg->iterations,
    };
}

void mt_config_task_shape(const mt_config *cfg, int queries, mt_task_shape *shape) {
    *shape = (mt_task_shape){cfg->task_kind, cfg->shots, queries > 0 ? queries : cfg->queries, cfg->ways, 0, 0};
}

mt_status mt_config_load_checkpoint(mt_config *cfg, const mt_ckpt *ck, const char *path) {
    const char *text = mt_ckpt_attr_value(ck, "config");
    if (!text) return MT_RAISE(MT_ERR_FORMAT, "%s: root attribute 'config' missing: not a metatrain model", path);
    char origin[4200];
    snprintf(origin, sizeof origin, "%s:/config", path);
    mt_config_defaults(cfg);
    return mt_config_load_string(cfg, text, origin);
}
