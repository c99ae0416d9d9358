#include "cli/progress.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A live line only on a terminal we can trust: Open MPI's mpirun hands ranks a pseudo-terminal
 * even when its own output goes to a file, so under mpirun (or srun) plain lines are the
 * default. METATRAIN_PROGRESS=live or =lines overrides. */
static int live_line_wanted(void) {
    const char *choice = getenv("METATRAIN_PROGRESS");
    if (choice && strcmp(choice, "live") == 0) return 1;
    if (choice && strcmp(choice, "lines") == 0) return 0;
    if (getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("SLURM_STEP_ID")) return 0;
    return isatty(STDOUT_FILENO);
}

void mt_cli_progress_init(mt_cli_progress *p, int enabled, int64_t total, int64_t log_every, int tasks_per_iteration) {
    p->enabled = enabled;
    p->tty = enabled && live_line_wanted();
    p->total = total;
    p->log_every = log_every;
    p->tasks_per_iteration = tasks_per_iteration;
    p->last_draw = -1;
}

static void format_duration(char *out, size_t size, double s) {
    if (!isfinite(s) || s < 0)
        snprintf(out, size, "?");
    else if (s < 60)
        snprintf(out, size, "%.0fs", s);
    else if (s < 3600)
        snprintf(out, size, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(out, size, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

void mt_cli_progress_update(mt_cli_progress *p, int64_t done, double meta_loss, double val_metric, double seconds,
                            int64_t done_here) {
    if (!p->enabled) return;
    int last = done == p->total;
    if (p->tty ? (seconds - p->last_draw < 0.1 && !last) : (done % p->log_every != 0 && !last)) return;
    p->last_draw = seconds;
    double rate = seconds > 0 ? done_here / seconds : 0;
    char eta[32], val[32] = "-";
    format_duration(eta, sizeof eta, rate > 0 ? (p->total - done) / rate : NAN);
    if (!isnan(val_metric)) snprintf(val, sizeof val, "%.4g", val_metric);
    printf("%siter %lld/%lld  meta-loss %.4g  val %s  %.0f tasks/s  ETA %s%s", p->tty ? "\r\033[K" : "",
           (long long)done, (long long)p->total, meta_loss, val, rate * p->tasks_per_iteration, eta,
           p->tty ? "" : "\n");
    fflush(stdout);
}

void mt_cli_progress_finish(mt_cli_progress *p) {
    if (p->enabled && p->tty) {
        printf("\n");
        fflush(stdout);
    }
    p->enabled = 0;
}
