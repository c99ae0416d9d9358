#!/bin/bash
# kill -9 of one rank mid-run: the job ends within 30 s, the last checkpoint verifies, and a run
# resumes from it.
. "$(dirname "$0")/lib.sh"

mpi_exec 2 train "$CONFIGS/sinusoid-maml.ini" --set train.iterations=100000000 --set train.checkpoint_every=200 \
    --set output.dir=k9 --quiet &
job=$!
for _ in $(seq 200); do [ -f k9/checkpoint.h5 ] && break; sleep 0.1; done
[ -f k9/checkpoint.h5 ] || fail "no checkpoint was written"
sleep 0.5
# A rank: a child of mpirun ($job, which mpi_exec became). Rank 0's checkpoint writer is a forked
# child with the same command line; killed after its verdict, it would end nothing.
victim=$(pgrep -P "$job" -f "^$METATRAIN train .*output.dir=k9" | tail -1)
[ -n "$victim" ] || fail "no rank of the job found to kill"
kill -9 "$victim"
start=$(date +%s)
code=0
wait $job || code=$?
elapsed=$(( $(date +%s) - start ))
[ "$code" != 0 ] || fail "the job exited 0 after a rank was killed"
[ "$elapsed" -le 30 ] || fail "the job took $elapsed s to end"
pgrep -f "output.dir=k9" && fail "ranks outlived the job"
"$METATRAIN" info k9/checkpoint.h5 > info.txt || fail "the last checkpoint does not verify: $(cat info.txt)"
it=$(ckpt_iteration k9/checkpoint.h5)
"$METATRAIN" train --resume k9/checkpoint.h5 --set train.iterations=$((it + 10)) --quiet || fail "resume"
[ "$(ckpt_iteration k9/checkpoint.h5)" = $((it + 10)) ] || fail "resume did not reach $((it + 10))"
report "kill -9 of one rank mid-run" "job ended in $elapsed s (exit $code); last checkpoint (iteration $it) verified and resumed"
pass
