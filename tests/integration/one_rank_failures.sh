#!/bin/bash
# Failures that one rank alone sees, at 3 ranks: each is agreed before the next collective, so
# the job ends (non-zero, within BOUND s) with exactly one metatrain line naming the failure and,
# where MPI_Abort ends it, the rank; no rank is left behind. METATRAIN_INJECT=POINT:RANK makes
# one rank fail at a named point (src/dist/comm.c lists them). Also: a config file or checkpoint
# that differs between the ranks' working directories (an MPMD launch) cannot split them.
. "$(dirname "$0")/lib.sh"

BOUND=120 # seconds: a loaded machine and sanitizers leave the usual 1 to 5 s far behind

printf '[train]\niterations = 4\nmeta_batch = 6\n[output]\ndir = run\n' > cfg.ini
"$METATRAIN" train "$WORK/cfg.ini" --set output.dir=model --quiet || fail "training the model to evaluate"
prototype_images

# settle: no process of this test's commands (they all name $WORK) outlives its job.
settle() {
    for _ in $(seq 50); do pgrep -f "$WORK" > /dev/null || return 0; sleep 0.2; done
    fail "$1: processes outlived the job: $(pgrep -af "$WORK")"
}

# launch NAME MPIRUN_ARGS...: mpirun under `timeout BOUND`; sets code and elapsed (seconds).
launch() {
    local name=$1 start
    shift
    start=$(date +%s%N)
    code=0
    timeout "$BOUND" mpirun --oversubscribe --bind-to none "$@" > out.txt 2> err.txt || code=$?
    elapsed=$(awk "BEGIN { printf \"%.1f\", ($(date +%s%N) - $start) / 1e9 }")
    [ "$code" != 124 ] || fail "$name: still running after $BOUND s: $(cat err.txt)"
    settle "$name"
}

# expect INJECT CODE PATTERN [MPIRUN_OPTIONS...] -- ARGS...: metatrain ARGS at 3 ranks with
# METATRAIN_INJECT=INJECT ends with exit CODE ("any": not 0) and one metatrain line, matching
# PATTERN (grep -E).
expect() {
    local inject=$1 want=$2 pattern=$3 options=()
    shift 3
    while [ "$1" != -- ]; do options+=("$1"); shift; done
    shift
    METATRAIN_INJECT=$inject launch "$inject" ${options[@]+"${options[@]}"} -n 3 "$METATRAIN" "$@"
    [ "$code" != 0 ] || fail "$inject: exit 0"
    [ "$want" = any ] || [ "$code" = "$want" ] || fail "$inject: exit $code, expected $want: $(cat err.txt)"
    lines=$(grep -c '^metatrain' err.txt) || true
    [ "$lines" = 1 ] || fail "$inject: $lines metatrain lines, expected 1: $(cat err.txt)"
    grep '^metatrain' err.txt | grep -Eq "$pattern" || fail "$inject: the line does not match '$pattern': $(cat err.txt)"
    line=$(grep '^metatrain' err.txt)
    printf '%-14s exit %3s in %5s s: %s\n' "$inject" "$code" "$elapsed" "$line"
    report "METATRAIN_INJECT=$inject (3 ranks)" "exit $code in $elapsed s: \`${line//$WORK\//}\`"
}

train=(train "$WORK/cfg.ini" --set "output.dir=$WORK/out" --quiet)
eval=(eval "$WORK/model/checkpoint.h5" --set eval.tasks=30)
injected='failure injected \(METATRAIN_INJECT='

# The config: rank 0 reads it (an error all ranks share: rank 0 reports, exit 2); the others
# parse the text it sent (an error of one rank: MPI_Abort naming it).
expect config:0 2 "^metatrain: error: $WORK/cfg.ini: cannot read: $injected" -- "${train[@]}"
expect config:2 1 "^metatrain: rank 2: error: $WORK/cfg.ini: $injected" -- "${train[@]}"
expect config:1 1 "^metatrain: rank 1: error: $WORK/cfg.ini: $injected" -- config "$WORK/cfg.ini"
# eval's set-up: the checkpoint, then the evaluator; any rank alone, rank 0 included.
expect checkpoint:1 1 "^metatrain: rank 1: error: $WORK/model/checkpoint.h5: $injected" -- "${eval[@]}"
expect checkpoint:0 1 "^metatrain: rank 0: error: $WORK/model/checkpoint.h5: $injected" -- "${eval[@]}"
expect checkpoint:2 1 "^metatrain: rank 2: error: $WORK/model/checkpoint.h5: $injected" -- \
    train --resume "$WORK/model/checkpoint.h5" --set train.iterations=8 --set "output.dir=$WORK/out" --quiet
expect evaluator:2 1 "^metatrain: rank 2: error: evaluator: $injected" -- "${eval[@]}"
expect evaluator:0 1 "^metatrain: rank 0: error: evaluator: $injected" -- "${eval[@]}"
# Rank 0 alone creates output.dir and reads the dataset (the node's first rank does): the
# others learn its status, and rank 0 reports.
expect output_dir:0 1 "^metatrain: error: $WORK/out: cannot create directory: $injected" -- "${train[@]}"
[ ! -e out ] || fail "output_dir:0: the directory was created"
expect dataset:0 1 "^metatrain: error: $WORK/images.h5 \(METATRAIN_INJECT=dataset:0\): no such file" -- \
    train "$CONFIGS/omniglot-5w1s.ini" --set "task.path=$WORK/images.h5" --set train.iterations=3 \
    --set "model.spec=$TINY_CLASSIFIER_SPEC" \
    --set train.meta_batch=3 --set eval.every=0 --set "output.dir=$WORK/out" --quiet
# A rank killed or stopped in the loop: its node's ranks wait for it in the sum's barrier
# (node_sum.c), which ends the job naming it, at once for a dead process (where its pid can be
# checked; else after the timeout) and after METATRAIN_NODE_TIMEOUT for a stopped one. mpirun
# itself ends a job when a rank dies; told not to (as srun without --kill-on-bad-exit would
# not), it leaves that to metatrain.
keep=(--mca orte_abort_on_non_zero_status 0)
export METATRAIN_NODE_TIMEOUT=30
missing='of this node (died before the sum|has not reached the sum in [0-9]+ s)'
expect die:1 any "^metatrain: rank [02]: error: rank 1 \(pid [0-9]+\) $missing" "${keep[@]}" -- "${train[@]}"
expect die:0 any "^metatrain: rank [12]: error: rank 0 \(pid [0-9]+\) $missing" "${keep[@]}" -- "${train[@]}"
export METATRAIN_NODE_TIMEOUT=10
expect hang:2 1 "^metatrain: rank [01]: error: rank 2 \(pid [0-9]+\) of this node has not reached the sum in [0-9]+ s" -- "${train[@]}"
unset METATRAIN_NODE_TIMEOUT

# MPMD: ranks 1 and 2 start in directories where cfg.ini is not valid or not there. Rank 0's
# text is the config of every rank: the run goes on as at one rank.
mkdir bad empty
printf '[train]\niterations = many\n' > bad/cfg.ini
rm -rf out
mpmd=(train cfg.ini --set "output.dir=$WORK/out" --quiet)
launch "mpmd config" -n 1 -wdir "$WORK" "$METATRAIN" "${mpmd[@]}" : -n 1 -wdir "$WORK/bad" "$METATRAIN" "${mpmd[@]}" \
    : -n 1 -wdir "$WORK/empty" "$METATRAIN" "${mpmd[@]}"
[ "$code" = 0 ] || fail "a config that only rank 0 reads: exit $code: $(cat err.txt)"
[ "$(ckpt_iteration out/checkpoint.h5)" = 4 ] || fail "a config that only rank 0 reads: no checkpoint of iteration 4"
printf '%-14s exit %3s in %5s s\n' "mpmd config" "$code" "$elapsed"
# train.resume: rank 0 finds out/checkpoint.h5 (output.dir is relative) and decides for all;
# rank 2, which cannot read it there, ends the job naming itself.
mpmd=(train "$WORK/cfg.ini" --set output.dir=out --set train.resume=true --set train.iterations=8 --quiet)
launch "mpmd resume" -n 2 -wdir "$WORK" "$METATRAIN" "${mpmd[@]}" : -n 1 -wdir "$WORK/empty" "$METATRAIN" "${mpmd[@]}"
[ "$code" = 1 ] || fail "a checkpoint that rank 2 cannot read: exit $code: $(cat err.txt)"
[ "$(grep -c '^metatrain' err.txt)" = 1 ] && grep -Eq '^metatrain: rank 2: error: out/checkpoint.h5: ' err.txt \
    || fail "a checkpoint that rank 2 cannot read: $(cat err.txt)"
[ "$(ckpt_iteration out/checkpoint.h5)" = 4 ] || fail "a checkpoint that rank 2 cannot read: the checkpoint changed"
printf '%-14s exit %3s in %5s s: %s\n' "mpmd resume" "$code" "$elapsed" "$(grep '^metatrain' err.txt)"
pass
