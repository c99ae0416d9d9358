/* Checking an untrusted file in a child process, so that a crash or a hang inside a library on a
 * hostile file (libhdf5 has crashed on fuzzed input) becomes a one-line error instead of the end
 * of the job. The loaders call it before they read a checkpoint or a dataset themselves.
 *
 * Local, never collective: each calling rank forks its own child. The child runs `fn(arg)`,
 * sends its status and message back through a pipe and leaves with _exit, so that no atexit
 * handler (HDF5's, Open MPI's) runs and no stdio buffer of the parent is written twice. What the
 * child changes in memory stays in the child: `fn` may use the parent's structures freely (they
 * are copies), but its results are lost. `fn` must not call MPI.
 *
 * Fork-safe only before threads start: fork copies the calling thread alone, and a lock that
 * another thread held at that moment stays locked in the child. A metatrain rank runs one thread
 * of control (and glibc keeps malloc usable across fork); the threads Open MPI starts for its own
 * progress are not copied, and the child, which makes no MPI call, never waits for them. Should
 * the child block all the same, the timeout ends it.
 *
 * Open MPI 4 warns on fork() only when its openib BTL is in use (it then registers a
 * pthread_atfork hook that prints "An MPI process has executed an operation involving a call to
 * the fork() system call"): memory registered with InfiniBand hardware is not inherited usably.
 * The child touches no such memory and calls no MPI; on such a cluster the warning can be
 * silenced with the documented MCA parameter, OMPI_MCA_mpi_warn_on_fork=0. Without openib (TCP,
 * shared memory, UCX) nothing is printed. */
#ifndef METATRAIN_ISOLATE_H
#define METATRAIN_ISOLATE_H

#include "metatrain/error.h"

/* How long a file check may take: reading a checkpoint or a dataset's metadata takes well under
 * a second; a check still running after this is stuck. */
#define MT_ISOLATE_TIMEOUT_S 120

/* Runs fn(arg) in a child process and returns its status, with its message raised here. `what`
 * (a file name) starts the messages for what the child could not report itself:
 *   "WHAT: the HDF5 library crashed reading this file (signal N): corrupted or hostile file"
 *   "WHAT: checking the file timed out after T s (killed): hostile file or stalled file system"
 * and a child that exits without a report, or that another signal (the OOM killer's SIGKILL,
 * a job ending) stops. The child is always reaped. timeout_s must be positive.
 * METATRAIN_ISOLATE=0 in the environment runs fn in this process instead (for debuggers and
 * fuzzers, which must see the crash); METATRAIN_ISOLATE_TIMEOUT=S (whole seconds, 1 to 86400)
 * replaces timeout_s (a file system slower than the default allows, or a fuzzer that cannot wait
 * two minutes for each hang inside libhdf5). */
mt_status mt_isolate_run(mt_status (*fn)(void *), void *arg, const char *what, int timeout_s);

#endif
