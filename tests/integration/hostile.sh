#!/bin/bash
# Hostile conditions: a second run on the same output.dir, a lock left by kill -9, an unwritable
# output.dir, a full disk while writing a checkpoint, divergence, and a failure on one rank only.
. "$(dirname "$0")/lib.sh"

quick=(--set train.meta_batch=5 --quiet)

# Two runs on one output.dir: the second refuses instead of interleaving checkpoints.
"$METATRAIN" train "${quick[@]}" --set train.iterations=100000000 --set output.dir=shared &
first=$!
for _ in $(seq 100); do [ -s shared/lock ] && break; sleep 0.1; done
code=0
"$METATRAIN" train "${quick[@]}" --set train.iterations=10 --set output.dir=shared 2> err.txt || code=$?
[ "$code" = 1 ] && grep -q "in use by another run" err.txt || fail "second run on a busy output.dir: exit $code, $(cat err.txt)"
report "a second run on a busy output.dir" "refused, exit 1: \`$(message err.txt)\`"
# kill -9 leaves the lock file behind, but flock dies with its holder: the next run proceeds.
kill -9 $first
wait $first 2> /dev/null || true
[ -e shared/lock ] || fail "expected the lock file to remain after kill -9"
"$METATRAIN" train "${quick[@]}" --set train.iterations=10 --set output.dir=shared || fail "a stale lock blocked the next run"
report "the lock of a run killed with kill -9" "left behind but not held (flock): the next run starts"

# An output.dir that cannot be created: one clear line, exit 1, at 1 and 3 ranks.
echo "a file" > not-a-dir
for r in 1 3; do
    code=0
    mpi $r train "${quick[@]}" --set train.iterations=5 --set output.dir=not-a-dir/run 2> err.txt || code=$?
    [ "$code" = 1 ] && [ "$(grep -c error err.txt)" = 1 ] && grep -q "not-a-dir" err.txt \
        || fail "unwritable output.dir at $r ranks: exit $code, $(cat err.txt)"
done
report "output.dir that cannot be created (1 and 3 ranks)" "exit 1, one line: \`$(message err.txt)\`"

# Disk full (a file-size limit) while writing a checkpoint: clear error, previous checkpoint intact.
# MPI's own start-up needs files of a few MB, so the limit is 5 MB and the checkpoint ~6 MB.
wide=(--set "model.spec=input 1, linear 700, relu, linear 700, relu, linear 1, mse" --set train.iterations=3)
"$METATRAIN" train "${quick[@]}" "${wide[@]}" --set output.dir=full
[ "$(stat -c %s full/checkpoint.h5)" -gt 5200000 ] || fail "disk full: the checkpoint is too small to hit the limit"
before=$(md5sum < full/checkpoint.h5)
code=0
(ulimit -f 5000 && exec "$METATRAIN" train "${quick[@]}" "${wide[@]}" --set train.iterations=6 --set output.dir=full \
    --set train.resume=true) 2> err.txt || code=$?
[ "$code" = 1 ] && grep -q "checkpoint.h5" err.txt || fail "disk full: exit $code, $(cat err.txt)"
[ "$(md5sum < full/checkpoint.h5)" = "$before" ] || fail "disk full: the previous checkpoint changed"
"$METATRAIN" info full/checkpoint.h5 > /dev/null || fail "disk full: the previous checkpoint does not verify"
ls full | grep -q tmp && fail "disk full: a temporary file was left behind: $(ls full)"
report "disk full while writing a checkpoint (ulimit -f)" "exit 1: \`$(message err.txt)\`; previous checkpoint byte-identical and verified, no temporary left"

# Divergence: the run stops naming the iteration; the last good checkpoint stays and verifies.
code=0
"$METATRAIN" train "${quick[@]}" --set meta.optimizer=sgd --set meta.outer_lr=0.5 --set train.iterations=1000 \
    --set train.checkpoint_every=1 --set output.dir=diverged 2> err.txt || code=$?
[ "$code" = 1 ] || fail "divergence: exit $code"
it=$(sed -n 's/.*iteration \([0-9]*\): the meta-gradient or meta-loss is not finite.*/\1/p' err.txt)
[ -n "$it" ] || fail "divergence: the message does not name the iteration: $(cat err.txt)"
[ "$(ckpt_iteration diverged/checkpoint.h5)" = "$it" ] || fail "divergence: checkpoint is not the last good one"
report "divergence (SGD at outer lr 0.5)" "exit 1: \`$(message err.txt)\`; checkpoint of iteration $it kept"

# A failure on one rank only: the whole job ends within 30 s, non-zero, naming the rank.
start=$(date +%s)
code=0
METATRAIN_FAULT_RANK=2 timeout 60 mpirun -n 4 --oversubscribe -x METATRAIN_FAULT_RANK "$METATRAIN" train \
    "${quick[@]}" --set output.dir=onerank 2> err.txt || code=$?
[ "$code" != 0 ] && [ "$code" != 124 ] || fail "one-rank failure: exit $code"
[ $(( $(date +%s) - start )) -le 30 ] || fail "one-rank failure: took more than 30 s"
grep -q "rank 2" err.txt || fail "one-rank failure: the message does not name rank 2: $(cat err.txt)"
pgrep -f "output.dir=onerank" && fail "one-rank failure: ranks outlived the job"
report "a failure on rank 2 of 4 only" "MPI_Abort within $(( $(date +%s) - start )) s, exit $code: \`$(grep 'rank 2' err.txt | head -1)\`"
pass
