#!/bin/bash
# A crash inside libhdf5 on a hostile file ends only the child process that checks the file
# first (metatrain/isolate.h): info, eval, train --resume and the dataset loader report it in one
# line and exit 1, at 1 and 2 ranks, with no backtrace and no core file. The crash is simulated:
# a preloaded H5Fopen raises SIGSEGV on file names containing "crash" (which real files crash
# HDF5 depends on its version).
. "$(dirname "$0")/lib.sh"

if ldd "$METATRAIN" | grep -q libasan; then
    echo "skipped: a preloaded library and AddressSanitizer's runtime do not mix"
    pass
    exit 0
fi

/usr/bin/python3 - <<'PY'
import h5py, numpy as np
labels = np.repeat(np.arange(6, dtype=np.int32), 4)
with h5py.File("crash-data.h5", "w") as f:
    f["images"] = (np.arange(24 * 28 * 28) % 251).astype(np.uint8).reshape(24, 1, 28, 28)
    f["labels"] = labels
PY
"$METATRAIN" train "$CONFIGS/sinusoid-metasgd.ini" --set train.iterations=5 --set output.dir=run --quiet
cp run/checkpoint.h5 crash.h5

cat > crash.c <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

/* hid_t is int64_t since HDF5 1.10 */
int64_t H5Fopen(const char *name, unsigned flags, int64_t fapl) {
    if (strstr(name, "crash")) raise(SIGSEGV);
    int64_t (*real)(const char *, unsigned, int64_t) = (int64_t (*)(const char *, unsigned, int64_t))dlsym(RTLD_NEXT, "H5Fopen");
    return real(name, flags, fapl);
}
EOF
"${CC:-cc}" -shared -fPIC -o crash.so crash.c -ldl || fail "cannot build the preloaded H5Fopen"
export LD_PRELOAD="$PWD/crash.so"
"$METATRAIN" info run/checkpoint.h5 > /dev/null || fail "the preloaded H5Fopen breaks other files"

# crashed R FILE WHAT ARGS...: metatrain on R ranks exits 1 with one error naming FILE's crash.
crashed() {
    ranks=$1 file=$2 what=$3
    shift 3
    code=0
    timeout 300 mpirun -n "$ranks" --oversubscribe --bind-to none -x LD_PRELOAD "$METATRAIN" "$@" > out.txt 2> err.txt || code=$?
    [ "$code" = 1 ] || fail "$what at $ranks ranks: exit $code: $(cat err.txt)"
    want="$file: the HDF5 library crashed reading this file (signal 11): corrupted or hostile file"
    [ "$(grep -c "error" err.txt)" = 1 ] && grep -q "$want" err.txt || fail "$what at $ranks ranks: $(cat err.txt)"
    grep -q -i "backtrace\|segmentation" err.txt && fail "$what at $ranks ranks: a crash report got out: $(cat err.txt)"
    return 0
}
spec="input 1x28x28, conv 4 s2, relu, flatten, linear 3, xent"
for r in 1 2; do
    crashed $r crash.h5 info info crash.h5
    crashed $r crash.h5 eval eval crash.h5 --set eval.tasks=4
    crashed $r crash.h5 "train --resume" train --resume crash.h5 --set train.iterations=10 --set output.dir=resumed --quiet
    crashed $r crash-data.h5 "a dataset" train --set task.kind=episodes --set task.path=crash-data.h5 --set task.ways=3 \
        --set task.shots=1 --set task.queries=1 --set "model.spec=$spec" --set train.iterations=2 --set output.dir=data --quiet
done
ls core* 2> /dev/null && fail "core files were left: $(ls core*)"
pass
