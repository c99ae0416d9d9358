/* Stop requests by signal. SIGTERM, SIGINT and SIGUSR1 only set a flag; the training loop agrees
 * on it across ranks at the next iteration boundary (it rides along with the reduction), writes a
 * checkpoint and exits. Local. */
#ifndef METATRAIN_SIGNALS_H
#define METATRAIN_SIGNALS_H

/* Exit code after SIGUSR1: the batch script requeues the job on it. */
#define MT_EXIT_REQUEUE 3

void mt_dist_install_stop_handlers(void);
/* The signal that asked to stop, or 0. */
int mt_dist_stop_signal(void);

#endif
