#define _GNU_SOURCE /* pipe2 */
/* A file check in a child process: fork, run, report through a pipe, _exit; the parent waits
 * with a deadline and turns a crash, a hang or a silent exit into a message. See
 * metatrain/isolate.h for when this is safe. */
#include "metatrain/isolate.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The child's verdict, sent in one write shorter than PIPE_BUF: it arrives whole or not at all. */
typedef struct {
    int32_t status;
    char message[1024];
} report;

/* The signals of a crash, as opposed to a stop from outside (SIGKILL, SIGTERM). */
static const int crash_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP};

static int is_crash(int sig) {
    for (size_t i = 0; i < sizeof crash_signals / sizeof *crash_signals; i++)
        if (crash_signals[i] == sig) return 1;
    return 0;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static _Noreturn void run_child(int out, pid_t parent, mt_status (*fn)(void *), void *arg) {
    /* Die with the parent: a check stuck inside libhdf5 must not outlive a parent that was killed
     * (by Slurm, mpirun or a fuzzer's timeout) before its own timeout ended the check. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(1);
    /* Default actions, so that a crash ends the child at once: Open MPI's handlers would print a
     * backtrace for what the parent reports in one line. No core file either: a hostile file
     * should not fill the disk with them. */
    for (size_t i = 0; i < sizeof crash_signals / sizeof *crash_signals; i++) signal(crash_signals[i], SIG_DFL);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    mt_error_clear(); /* a message left pending in the parent is not the child's */
    report r;
    memset(&r, 0, sizeof r);
    r.status = (int32_t)fn(arg);
    if (r.status != MT_OK) snprintf(r.message, sizeof r.message, "%s", mt_error_message());
    ssize_t written = write(out, &r, sizeof r);
    _exit(written == (ssize_t)sizeof r ? 0 : 1);
}

/* Reads the child's report until end of file; -1 when the deadline passes first (or poll
 * fails), else the bytes read. */
static ssize_t read_report(int in, report *r, double deadline) {
    size_t got = 0;
    while (got < sizeof *r) {
        double left = deadline - now_s();
        if (left <= 0) return -1;
        struct pollfd p = {.fd = in, .events = POLLIN};
        int ready = poll(&p, 1, (int)(left * 1000) + 1);
        if (ready < 0 && errno == EINTR) continue; /* a stop signal: its flag is handled later */
        if (ready < 0) return -1;
        if (ready == 0) continue;
        ssize_t n = read(in, (char *)r + got, sizeof *r - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break; /* end of file: the child has gone */
        got += (size_t)n;
    }
    return (ssize_t)got;
}

mt_status mt_isolate_run(mt_status (*fn)(void *), void *arg, const char *what, int timeout_s) {
    if (!fn || !what || timeout_s <= 0)
        return MT_RAISE(MT_ERR_ARG, "mt_isolate_run: NULL function or name, or timeout <= 0");
    const char *env = getenv("METATRAIN_ISOLATE");
    if (env && strcmp(env, "0") == 0) return fn(arg);
    const char *timeout_env = getenv("METATRAIN_ISOLATE_TIMEOUT");
    if (timeout_env) {
        char *end;
        long t = strtol(timeout_env, &end, 10);
        if (end == timeout_env || *end || t < 1 || t > 86400)
            return MT_RAISE(MT_ERR_ARG,
                            "METATRAIN_ISOLATE_TIMEOUT: '%s' is not a whole number of seconds in [1, 86400]",
                            timeout_env);
        timeout_s = (int)t;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return MT_RAISE(MT_ERR_IO, "%s: cannot check the file in a child process: pipe: %s", what, strerror(errno));
    pid_t parent = getpid(), pid = fork();
    if (pid < 0) {
        int err = errno;
        close(fds[0]);
        close(fds[1]);
        return MT_RAISE(MT_ERR_IO, "%s: cannot check the file in a child process: fork: %s", what, strerror(err));
    }
    if (pid == 0) {
        close(fds[0]);
        run_child(fds[1], parent, fn, arg);
    }
    close(fds[1]);
    report r;
    memset(&r, 0, sizeof r);
    ssize_t got = read_report(fds[0], &r, now_s() + timeout_s);
    close(fds[0]);
    if (got < 0) kill(pid, SIGKILL);
    int wstatus = 0;
    pid_t reaped;
    while ((reaped = waitpid(pid, &wstatus, 0)) < 0 && errno == EINTR) {}
    if (got < 0)
        return MT_RAISE(MT_ERR_IO,
                        "%s: checking the file timed out after %d s (killed): hostile file or stalled file system",
                        what, timeout_s);
    /* A whole report is the verdict, however the child ended afterwards. MT_ERR_STOPPED is the
     * last status. */
    if (got == (ssize_t)sizeof r && r.status >= MT_OK && r.status <= MT_ERR_STOPPED) {
        if (r.status == MT_OK) return MT_OK;
        r.message[sizeof r.message - 1] = '\0';
        return MT_RAISE((mt_status)r.status, "%s", r.message[0] ? r.message : mt_status_name((mt_status)r.status));
    }
    if (reaped == pid && WIFSIGNALED(wstatus) && is_crash(WTERMSIG(wstatus)))
        return MT_RAISE(MT_ERR_FORMAT,
                        "%s: the HDF5 library crashed reading this file (signal %d): corrupted or hostile file", what,
                        WTERMSIG(wstatus));
    if (reaped == pid && WIFSIGNALED(wstatus))
        return MT_RAISE(MT_ERR_IO,
                        "%s: checking the file was stopped by signal %d (%s): out of memory, or the job is ending",
                        what, WTERMSIG(wstatus), strsignal(WTERMSIG(wstatus)));
    if (reaped == pid && WIFEXITED(wstatus))
        return MT_RAISE(MT_ERR_FORMAT,
                        "%s: checking the file ended without a verdict (exit status %d): corrupted or hostile file?",
                        what, WEXITSTATUS(wstatus));
    return MT_RAISE(MT_ERR_IO, "%s: the child process checking the file was lost (waitpid: %s)", what, strerror(errno));
}
