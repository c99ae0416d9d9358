# Shared by the integration tests: run metatrain under mpirun, compare checkpoints, fail loudly.
# Each test sources this, works in a fresh temporary directory and removes it on exit.
set -eu

: "${METATRAIN:?set METATRAIN to the metatrain binary}"
: "${METATRAIN_SOURCE_DIR:?set METATRAIN_SOURCE_DIR to the source tree}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
# Loopback only: the tests never leave this machine.
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo

. "$METATRAIN_SOURCE_DIR/tests/integration/checks.sh"
CONFIGS="$METATRAIN_SOURCE_DIR/scripts/configs"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/metatrain-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

# mpi R ARGS...: metatrain on R ranks (oversubscribed: CI has two cores).
mpi() {
    ranks=$1
    shift
    mpirun -n "$ranks" --oversubscribe --bind-to none "$METATRAIN" "$@"
}

# mpi_exec R ARGS...: the same, replacing the calling (sub)shell, so that `mpi_exec ... &` leaves
# mpirun's own PID in $!, to signal it.
mpi_exec() {
    ranks=$1
    shift
    exec mpirun -n "$ranks" --oversubscribe --bind-to none "$METATRAIN" "$@"
}

# report SCENARIO OUTCOME: one row of the table of hostile conditions, collected by
# scripts/hostile-report (which sets HOSTILE_REPORT); a no-op otherwise.
report() {
    if [ -n "${HOSTILE_REPORT:-}" ]; then printf '| %s | %s |\n' "$1" "$2" >> "$HOSTILE_REPORT"; fi
}

# message FILE: metatrain's own error line in a captured stderr (mpirun adds its banners).
message() {
    grep -m1 "metatrain" "$1" || head -1 "$1"
}

# tiny_classifier DIR: a 2-conv 5-way 1-shot model trained on prototype_images for 5 iterations,
# in DIR/checkpoint.h5.
tiny_classifier() {
    "$METATRAIN" train "$CONFIGS/omniglot-5w1s.ini" --set task.path=images.h5 --set train.iterations=5 \
        --set "model.spec=$TINY_CLASSIFIER_SPEC" \
        --set train.meta_batch=2 --set eval.every=0 --set output.dir="$1" --quiet > /dev/null
}

# refused_by PATTERN PROGRAM ARGS...: PROGRAM ARGS... (a script of scripts/) exits non-zero with
# exactly one stderr line, "<its name>: ...", that holds PATTERN, and leaves nothing in out/ (no
# temporary either).
refused_by() {
    pattern=$1 program=$2
    shift 2
    name=$(basename "$program")
    code=0
    "$program" "$@" > /dev/null 2> err.txt || code=$?
    [ $code != 0 ] || fail "$name $*: accepted"
    [ "$(wc -l < err.txt)" = 1 ] || fail "$name $*: expected one line on stderr, got: $(cat err.txt)"
    grep -q "^$name: " err.txt || fail "$name $*: message lacks the program's name: $(cat err.txt)"
    grep -qF -- "$pattern" err.txt || fail "$name $*: message lacks '$pattern': $(cat err.txt)"
    [ -z "$(ls -A out)" ] || fail "$name $*: left $(ls -A out)"
}

pass() {
    echo "1 passed, 0 failed"
}
