/* Status codes and error reporting.
 *
 * Every function that can fail returns an mt_status. The first failure records a one-line
 * message for the user (naming the file and field where there is one) together with the source
 * location that raised it; callers pass the status up unchanged. Not thread-safe by design:
 * one MPI rank runs one thread of control. */
#ifndef METATRAIN_ERROR_H
#define METATRAIN_ERROR_H

typedef enum {
    MT_OK = 0,
    MT_ERR_ARG,     /* a caller broke a documented precondition */
    MT_ERR_NOMEM,   /* allocation failed */
    MT_ERR_IO,      /* a file could not be read or written */
    MT_ERR_CONFIG,  /* the user's configuration is invalid */
    MT_ERR_FORMAT,  /* a file's contents are malformed or fail verification */
    MT_ERR_NUMERIC, /* a non-finite value appeared */
    MT_ERR_MPI,     /* an MPI call failed */
    MT_ERR_STOPPED  /* a signal asked the run to stop (not an error for the user) */
} mt_status;

/* Records the message (printf-style) and the source location, and returns `status`. A later
 * call does not overwrite an earlier, unconsumed message: the first cause is the one reported. */
mt_status mt_error_raise(mt_status status, const char *src_file, int src_line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The recorded message, or "" when there is none. */
const char *mt_error_message(void);
/* "file.c:123" of the raise site, or "" when there is none. */
const char *mt_error_origin(void);
/* Forgets the recorded message, for callers that handle an error and go on. */
void mt_error_clear(void);
const char *mt_status_name(mt_status status);

#define MT_RAISE(status, ...) mt_error_raise((status), __FILE__, __LINE__, __VA_ARGS__)

/* Runs `call`; on failure stores its status in the local `st` and jumps to `fail:`. */
#define MT_TRY(call)                                                                                                   \
    do {                                                                                                               \
        mt_status mt_try_status_ = (call);                                                                             \
        if (mt_try_status_ != MT_OK) {                                                                                 \
            st = mt_try_status_;                                                                                       \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

/* Raises and jumps to `fail:` in one step. */
#define MT_THROW(status, ...)                                                                                          \
    do {                                                                                                               \
        st = MT_RAISE((status), __VA_ARGS__);                                                                          \
        goto fail;                                                                                                     \
    } while (0)

#endif
