#!/bin/bash
# Resuming continues exactly: 200 iterations straight equal 100, a stop (train.stop_at, as a
# preempted job), and a resume to 200 at another rank count; MAML++ checks the schedules too. A resume that changes the math is refused naming the key.
. "$(dirname "$0")/lib.sh"

common=(--set train.meta_batch=10 --set train.checkpoint_every=50 --quiet)
for algo in maml mamlpp; do
    extra=(--set meta.algorithm=$algo --set meta.inner_steps=2 --set meta.msl_iterations=150)
    mpi 2 train "$CONFIGS/sinusoid-maml.ini" "${common[@]}" "${extra[@]}" \
        --set train.iterations=200 --set output.dir=straight-$algo || fail "straight run"
    mpi 1 train "$CONFIGS/sinusoid-maml.ini" "${common[@]}" "${extra[@]}" \
        --set train.iterations=200 --set train.stop_at=100 --set output.dir=split-$algo || fail "first half"
    [ "$(ckpt_iteration split-$algo/checkpoint.h5)" = 100 ] || fail "first half did not stop at 100"
    mpi 3 train "$CONFIGS/sinusoid-maml.ini" "${common[@]}" "${extra[@]}" \
        --set train.iterations=200 --set output.dir=split-$algo --resume split-$algo/checkpoint.h5 || fail "resume"
    same_model straight-$algo/checkpoint.h5 split-$algo/checkpoint.h5
done

# train.resume=true picks the checkpoint in output.dir up by itself; no CONFIG: the checkpoint's.
"$METATRAIN" train "$CONFIGS/sinusoid-maml.ini" "${common[@]}" --set train.iterations=60 --set output.dir=auto
"$METATRAIN" train "$CONFIGS/sinusoid-maml.ini" "${common[@]}" --set train.iterations=80 --set output.dir=auto \
    --set train.resume=true
[ "$(ckpt_iteration auto/checkpoint.h5)" = 80 ] || fail "automatic resume did not reach 80"
"$METATRAIN" train --resume auto/checkpoint.h5 --set train.iterations=90 --quiet || fail "resume without CONFIG"
[ "$(ckpt_iteration auto/checkpoint.h5)" = 90 ] || fail "resume without CONFIG did not reach 90"

# The reduction's predicted scales are part of the state: a fresh run sums its first iteration on the
# exact path (nothing is predicted yet); a resumed one restores the scales and needs no exact sum.
"$METATRAIN" train "$CONFIGS/sinusoid-maml.ini" --set train.meta_batch=10 --set train.iterations=10 \
    --set output.dir=fresh > fresh.txt || fail "fresh run"
grep -q "^sums on the exact path .*: 1 of 10 iterations" fresh.txt || fail "fresh run: $(grep exact fresh.txt)"
mpi 2 train --resume auto/checkpoint.h5 --set train.iterations=100 > resumed.txt || fail "resume to 100"
grep -q "^sums on the exact path .*: 0 of 10 iterations" resumed.txt ||
    fail "the resumed run did not restore the predicted scales: $(grep exact resumed.txt)"

# Changing a key that alters the math is refused, naming it; exit non-zero, checkpoint untouched.
before=$(md5sum < auto/checkpoint.h5)
if "$METATRAIN" train --resume auto/checkpoint.h5 --set meta.inner_lr=0.02 2> refused.txt; then
    fail "a resume with another meta.inner_lr was accepted"
fi
grep -q "meta.inner_lr" refused.txt || fail "the refusal does not name meta.inner_lr: $(cat refused.txt)"
[ "$(md5sum < auto/checkpoint.h5)" = "$before" ] || fail "a refused resume changed the checkpoint"
pass
