/* Rank 0's progress display: one live line on a terminal, plain periodic lines in a file. */
#ifndef METATRAIN_CLI_PROGRESS_H
#define METATRAIN_CLI_PROGRESS_H

#include <stdint.h>

typedef struct {
    int enabled, tty;
    int64_t total, log_every;
    int tasks_per_iteration;
    double last_draw;
} mt_cli_progress;

void mt_cli_progress_init(mt_cli_progress *p, int enabled, int64_t total, int64_t log_every, int tasks_per_iteration);
/* done: iterations finished in all; done_here: in this process; seconds: this process's time. */
void mt_cli_progress_update(mt_cli_progress *p, int64_t done, double meta_loss, double val_metric, double seconds,
                            int64_t done_here);
void mt_cli_progress_finish(mt_cli_progress *p);

#endif
