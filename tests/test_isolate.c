/* mt_isolate_run: a check that crashes, hangs, exits without a word or fails reaches the caller
 * as one clear error, and the child is always reaped; what the check changes stays in the child;
 * METATRAIN_ISOLATE=0 runs it in the calling process. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "metatrain/isolate.h"

static int touched; /* set by the checks, to see in which process they ran */

static mt_status passes(void *arg) {
    touched = 1;
    return MT_OK;
}

static mt_status refuses(void *arg) {
    touched = 1;
    return MT_RAISE(MT_ERR_FORMAT, "%s: /params/w: checksum mismatch", (const char *)arg);
}

static mt_status segfaults(void *arg) {
    raise(SIGSEGV);
    return MT_OK;
}

static mt_status aborts(void *arg) { abort(); }

static mt_status hangs(void *arg) {
    for (;;) pause();
    return MT_OK;
}

static int pid_pipe[2]; /* hangs_telling_its_pid writes the checking child's pid here */

static mt_status hangs_telling_its_pid(void *arg) {
    pid_t me = getpid();
    if (write(pid_pipe[1], &me, sizeof me) != sizeof me) _exit(2);
    for (;;) pause();
    return MT_OK;
}

static mt_status exits_silently(void *arg) { _exit(3); }

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* No child left behind, reaped or not. */
static void assert_no_children(void) {
    errno = 0;
    assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
    assert_int_equal(errno, ECHILD);
}

/* Runs `fn` isolated and expects `status` with a one-line message containing `part`. */
static void expect(mt_status (*fn)(void *), mt_status status, const char *part, int timeout_s) {
    mt_error_clear();
    mt_status st = mt_isolate_run(fn, "ckpt.h5", "ckpt.h5", timeout_s);
    if (st != status || !strstr(mt_error_message(), part) || strchr(mt_error_message(), '\n'))
        fail_msg("want %s containing \"%s\", got %s: %s", mt_status_name(status), part, mt_status_name(st),
                 mt_error_message());
    mt_error_clear();
    assert_no_children();
}

static void test_verdicts_come_back(void **state) {
    touched = 0;
    expect(passes, MT_OK, "", 10);
    expect(refuses, MT_ERR_FORMAT, "ckpt.h5: /params/w: checksum mismatch", 10);
    assert_int_equal(touched, 0); /* the check ran in the child */
    assert_int_equal(mt_isolate_run(passes, NULL, "x", 0), MT_ERR_ARG);
    mt_error_clear();
}

static void test_crash_is_an_error(void **state) {
    expect(segfaults, MT_ERR_FORMAT,
           "ckpt.h5: the HDF5 library crashed reading this file (signal 11): corrupted or hostile file", 10);
    expect(aborts, MT_ERR_FORMAT, "crashed reading this file (signal 6)", 10);
    expect(exits_silently, MT_ERR_FORMAT, "ckpt.h5: checking the file ended without a verdict (exit status 3)", 10);
}

static void test_hang_is_killed_at_the_timeout(void **state) {
    double t0 = now_s();
    expect(hangs, MT_ERR_IO, "ckpt.h5: checking the file timed out after 1 s", 1);
    double took = now_s() - t0;
    print_message("a hanging check ended after %.2f s (timeout 1 s)\n", took);
    assert_true(took >= 0.9 && took < 10);
}

/* A parent killed while its check hangs (Slurm's SIGKILL, a fuzzer's timeout) takes the check
 * with it, instead of leaving it spinning inside libhdf5 forever. */
static void test_check_dies_with_its_parent(void **state) {
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0); /* the orphaned check comes back to us */
    assert_int_equal(pipe(pid_pipe), 0);
    pid_t parent = fork();
    assert_true(parent >= 0);
    if (parent == 0) {
        mt_isolate_run(hangs_telling_its_pid, NULL, "ckpt.h5", 100);
        _exit(0);
    }
    pid_t check;
    assert_int_equal(read(pid_pipe[0], &check, sizeof check), sizeof check);
    kill(parent, SIGKILL);
    assert_int_equal(waitpid(parent, NULL, 0), parent);
    int wstatus = 0;
    double t0 = now_s();
    while (waitpid(check, &wstatus, WNOHANG) != check) {
        if (now_s() - t0 > 10) {
            kill(check, SIGKILL);
            waitpid(check, NULL, 0);
            fail_msg("the check outlived its killed parent by 10 s");
        }
        usleep(10000);
    }
    assert_true(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);
    close(pid_pipe[0]);
    close(pid_pipe[1]);
    assert_no_children();
}

static void test_timeout_from_the_environment(void **state) {
    setenv("METATRAIN_ISOLATE_TIMEOUT", "1", 1);
    double t0 = now_s();
    expect(hangs, MT_ERR_IO, "ckpt.h5: checking the file timed out after 1 s", 100);
    assert_true(now_s() - t0 < 10);
    setenv("METATRAIN_ISOLATE_TIMEOUT", "1s", 1);
    expect(passes, MT_ERR_ARG, "METATRAIN_ISOLATE_TIMEOUT: '1s' is not a whole number of seconds", 10);
    setenv("METATRAIN_ISOLATE_TIMEOUT", "0", 1);
    expect(passes, MT_ERR_ARG, "METATRAIN_ISOLATE_TIMEOUT: '0'", 10);
    unsetenv("METATRAIN_ISOLATE_TIMEOUT");
}

static void test_in_process_when_disabled(void **state) {
    touched = 0;
    setenv("METATRAIN_ISOLATE", "0", 1);
    expect(passes, MT_OK, "", 10);
    unsetenv("METATRAIN_ISOLATE");
    assert_int_equal(touched, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verdicts_come_back),
        cmocka_unit_test(test_crash_is_an_error),
        cmocka_unit_test(test_hang_is_killed_at_the_timeout),
        cmocka_unit_test(test_check_dies_with_its_parent),
        cmocka_unit_test(test_timeout_from_the_environment),
        cmocka_unit_test(test_in_process_when_disabled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
