#include "metatrain/error.h"

#include <stdarg.h>
#include <stdio.h>

/* Per thread: a program may drive one model handle per thread (metatrain/model.h). */
static _Thread_local char error_message[1024];
static _Thread_local char error_origin[256];

mt_status mt_error_raise(mt_status status, const char *src_file, int src_line, const char *fmt, ...) {
    if (error_message[0] != '\0') return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    snprintf(error_origin, sizeof error_origin, "%s:%d", src_file, src_line);
    return status;
}

const char *mt_error_message(void) { return error_message; }
const char *mt_error_origin(void) { return error_origin; }

void mt_error_clear(void) {
    error_message[0] = '\0';
    error_origin[0] = '\0';
}

const char *mt_status_name(mt_status status) {
    switch (status) {
    case MT_OK:
        return "ok";
    case MT_ERR_ARG:
        return "invalid argument";
    case MT_ERR_NOMEM:
        return "out of memory";
    case MT_ERR_IO:
        return "I/O error";
    case MT_ERR_CONFIG:
        return "configuration error";
    case MT_ERR_FORMAT:
        return "format error";
    case MT_ERR_NUMERIC:
        return "numerical error";
    case MT_ERR_MPI:
        return "MPI error";
    case MT_ERR_STOPPED:
        return "stopped";
    }
    return "unknown error";
}
