#!/bin/bash
# SIGTERM to every rank: checkpoint of the current iteration, exit 0. SIGUSR1 to mpirun (which
# forwards it to the ranks): checkpoint, exit 3 for the batch script to requeue.
. "$(dirname "$0")/lib.sh"

long=(--set train.iterations=100000000 --set train.checkpoint_every=0 --quiet)

# wait_for_start DIR: until the ranks are past set-up (the output directory exists).
wait_for_start() {
    for _ in $(seq 100); do [ -d "$1" ] && return 0; sleep 0.1; done
    fail "the run never started"
}

# SIGTERM to every rank, as Slurm does at a time limit or on scancel.
mpi_exec 2 train "$CONFIGS/sinusoid-maml.ini" "${long[@]}" --set output.dir=term &
job=$!
wait_for_start term
sleep 1
# Only the ranks (argv[0] is the binary), not mpirun, which would kill them on SIGTERM.
pkill -TERM -f "^$METATRAIN train .*output.dir=term" || fail "no rank to signal"
start=$(date +%s)
code=0
wait $job || code=$?
[ "$code" = 0 ] || fail "SIGTERM: exit $code, expected 0"
[ $(( $(date +%s) - start )) -le 10 ] || fail "SIGTERM: took more than 10 s to stop"
iteration=$(ckpt_iteration term/checkpoint.h5)
[ -n "$iteration" ] && [ "$iteration" -gt 0 ] || fail "SIGTERM: no checkpoint of the current iteration"
report "SIGTERM to every rank (as Slurm does)" "checkpoint of iteration $iteration written, exit 0"

# SIGUSR1 to mpirun.
mpi_exec 2 train "$CONFIGS/sinusoid-maml.ini" "${long[@]}" --set output.dir=usr1 &
job=$!
wait_for_start usr1
sleep 1
kill -USR1 $job
code=0
wait $job || code=$?
[ "$code" = 3 ] || fail "SIGUSR1: exit $code, expected 3"
[ "$(ckpt_iteration usr1/checkpoint.h5)" -gt 0 ] || fail "SIGUSR1: no checkpoint"
report "SIGUSR1 to mpirun" "checkpoint of iteration $(ckpt_iteration usr1/checkpoint.h5) written, exit 3 (requeue)"

# The stopped run resumes.
"$METATRAIN" train --resume usr1/checkpoint.h5 --set train.iterations=$(( $(ckpt_iteration usr1/checkpoint.h5) + 5 )) --quiet \
    || fail "resume after SIGUSR1"
pass
