#!/bin/bash
# Few-shot classification end to end on a small Omniglot-shaped file: training is bit-identical at
# 1 to 4 ranks for the 4-conv network with batch norm, evaluation reads fixed episodes exactly,
# and bad dataset files are refused at any rank count with one message, never a hang or crash.
. "$(dirname "$0")/lib.sh"

/usr/bin/python3 - <<'PY'
import h5py, numpy as np
rng = np.random.default_rng(0)
classes, per_class = 12, 6
labels = np.repeat(np.arange(classes, dtype=np.int32), per_class)
images = (rng.random((classes * per_class, 1, 28, 28)) * 255).astype(np.uint8)
def write(name, **over):
    with h5py.File(name, "w") as f:
        data = dict(images=images, labels=labels, class_split=np.array([0] * 9 + [1] * 3, dtype=np.int32))
        data.update(over)
        for k, v in data.items():
            if v is not None:
                f[k] = v
write("omni.h5")
with h5py.File("episodes.h5", "w") as f:  # 4 fixed 3-way episodes, 1 support and 2 queries per class
    g = f.create_group("episodes")
    g.attrs["ways"] = np.int32(3)
    sup = np.array([[c * per_class for c in (e, e + 1, e + 2)] for e in range(4)], dtype=np.int32)
    qry = np.array([[c * per_class + q for c in (e, e + 1, e + 2) for q in (1, 2)] for e in range(4)], dtype=np.int32)
    g["support"], g["query"] = sup, qry
    g["support_labels"] = np.tile(np.arange(3, dtype=np.int32), (4, 1))
    g["query_labels"] = np.tile(np.repeat(np.arange(3, dtype=np.int32), 2), (4, 1))
write("bad-dtype.h5", images=images.astype(np.float32))
write("bad-rank.h5", images=images.reshape(len(images), -1))
write("bad-label.h5", labels=np.where(labels == 5, 99, labels).astype(np.int32))
write("missing-labels.h5", labels=None)
write("few-images.h5", images=images[5:], labels=labels[5:])  # class 0 keeps one image
open("text.h5", "w").write("not hdf5\n")
PY

spec="input 1x28x28, conv 8 s2, bn, relu, conv 8 s2, bn, relu, conv 8 s2, bn, relu, conv 8 s2, bn, relu, flatten, linear 3, xent"
common=(--set task.kind=episodes --set task.ways=3 --set task.shots=1 --set task.queries=2 --set "model.spec=$spec"
        --set meta.inner_lr=0.4 --set train.meta_batch=5 --set train.iterations=4 --set eval.queries=2 --quiet)

for r in 1 2 3 4; do
    mpi $r train "${common[@]}" --set task.path=omni.h5 --set output.dir=conv-r$r || fail "4-conv at $r ranks"
done
for r in 2 3 4; do same_model conv-r1/checkpoint.h5 conv-r$r/checkpoint.h5; done

# Fixed episodes: exactly the file's 4 episodes are evaluated.
out=$("$METATRAIN" eval conv-r1/checkpoint.h5 --json --set eval.episodes=episodes.h5 --set eval.split=all) || fail "eval episodes"
echo "$out" | grep -q '"tasks": 4,' || fail "fixed episodes: expected 4 tasks: $out"

# Bad files: refused at 1 and 3 ranks, exit 2 (configuration) or 1, one message naming the file.
expect_refused() { # FILE PATTERN [extra --set...]
    file=$1 pattern=$2
    shift 2
    for r in 1 3; do
        code=0
        timeout 60 mpirun -n $r --oversubscribe "$METATRAIN" train "${common[@]}" --set task.path=$file \
            --set output.dir=never "$@" > out.txt 2> err.txt || code=$?
        case $code in 1 | 2) ;; 124) fail "$file at $r ranks: hung" ;; *) fail "$file at $r ranks: exit $code: $(cat err.txt)" ;; esac
        [ "$(grep -c 'error' err.txt)" = 1 ] || fail "$file at $r ranks: expected one error line: $(cat err.txt)"
        grep -q "$file" err.txt && grep -q -- "$pattern" err.txt || fail "$file: message lacks '$pattern': $(cat err.txt)"
    done
    report "dataset: $file (1 and 3 ranks)" "exit $code, one line: \`$(message err.txt)\`"
}
expect_refused no-such.h5 "no-such.h5"
expect_refused text.h5 "text.h5"
expect_refused bad-dtype.h5 "/images"
expect_refused bad-rank.h5 "/images"
expect_refused bad-label.h5 "/labels"
expect_refused missing-labels.h5 "/labels"
expect_refused few-images.h5 "task.shots"
expect_refused omni.h5 "task.ways" --set task.ways=10 --set "model.spec=${spec/linear 3/linear 10}"
pass
