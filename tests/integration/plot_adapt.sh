#!/bin/bash
# scripts/plot-adapt: MAML's pictures of fast adaptation from a checkpoint.
# - sinusoid: a fixed task on a quickly trained MLP gives a valid PNG of sensible size, and one
#   printed MSE per curve (before adapting, after 1 and 10 steps), finite;
# - images: a tiny convolutional classifier adapted to a 5-way 1-shot support gives a valid PNG
#   and prints the accuracy that metatrain predict --support reports for the same files;
# - failures (a missing checkpoint, an adapted file, support of the wrong format, a missing
#   binary): one line `plot-adapt: ...` on stderr (with metatrain's own message when metatrain
#   failed), a non-zero exit and no figure, not even a temporary one.
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
PLOT="$METATRAIN_SOURCE_DIR/scripts/plot-adapt"

# png FILE: a PNG that PIL reads, at least 400x300.
png() {
    [ -f "$1" ] || fail "$1 was not written"
    $PY - "$1" <<'EOF' || fail "$1 is not a valid PNG of sensible size"
import sys
from PIL import Image
with Image.open(sys.argv[1]) as im:
    im.verify()
with Image.open(sys.argv[1]) as im:
    im.load()
    assert im.format == 'PNG', im.format
    assert im.size[0] >= 400 and im.size[1] >= 300, im.size
    print(f"{sys.argv[1]}: {im.size[0]}x{im.size[1]} PNG")
EOF
}

# no_leftovers: no temporary figure beside the outputs.
no_leftovers() {
    ! ls -a | grep -q '\.tmp$' || fail "a temporary file was left: $(ls -a | grep '\.tmp$')"
}

# --- sinusoid ---
"$METATRAIN" train "$CONFIGS/sinusoid-maml.ini" --set train.iterations=50 --set output.dir=sin --quiet > /dev/null
"$PLOT" sinusoid sin/checkpoint.h5 --amplitude 2 --phase 0.5 --seed 3 -o sin.png > sin.txt 2> err.txt ||
    fail "plot-adapt sinusoid: exit $?: $(cat err.txt)"
[ ! -s err.txt ] || fail "plot-adapt sinusoid wrote to stderr: $(cat err.txt)"
png sin.png
$PY - <<'EOF' || fail "plot-adapt sinusoid's MSE lines: $(cat sin.txt)"
import math, re
text = open('sin.txt').read()
assert re.search(r'^task: y = 2\.0000 sin\(x - 0\.5000\), 10 support points', text, re.M), text
mse = {m.group(1): float(m.group(2)) for m in re.finditer(r'^mse (.*): (\S+)$', text, re.M)}
assert set(mse) == {'before adapting', 'after 1 step', 'after 10 steps'}, mse
assert all(math.isfinite(v) and v >= 0 for v in mse.values()), mse
print(f"sinusoid: MSE {mse['before adapting']:.4g} before adapting, {mse['after 10 steps']:.4g} after 10 steps")
EOF
# --points and --seed are taken; the figure is replaced, not appended to.
"$PLOT" sinusoid sin/checkpoint.h5 --seed 7 --points 5 -o sin.png > sin5.txt 2> err.txt ||
    fail "plot-adapt sinusoid --points 5: $(cat err.txt)"
grep -q ', 5 support points in \[-5, 5\] (seed 7)' sin5.txt || fail "--points 5 --seed 7: $(cat sin5.txt)"
png sin.png
no_leftovers

# --- images: a tiny classifier on random prototypes, one 5-way 1-shot episode ---
prototype_images
$PY - <<'EOF'
import h5py, numpy as np
per = 20
images = h5py.File('images.h5')['images'][:]
chosen = [7, 2, 9, 4, 0]
sup = np.array([c * per for c in chosen], 'i4')
qry = np.array([c * per + k for c in chosen for k in range(1, 16)], 'i4')
with h5py.File('ep_support.h5', 'w') as f:
    f['images'] = images[sup]; f['labels'] = np.arange(5, dtype='i4')
with h5py.File('ep_query.h5', 'w') as f:
    f['images'] = images[qry]; f['labels'] = np.repeat(np.arange(5), 15).astype('i4')
with h5py.File('unlabelled_query.h5', 'w') as f:
    f['images'] = images[qry[:7]]
EOF
tiny_classifier omni
"$PLOT" images omni/checkpoint.h5 --support ep_support.h5 --query ep_query.h5 --set eval.steps=2 \
    -o images.png > images.txt 2> err.txt || fail "plot-adapt images: exit $?: $(cat err.txt)"
[ ! -s err.txt ] || fail "plot-adapt images wrote to stderr: $(cat err.txt)"
png images.png
"$METATRAIN" predict omni/checkpoint.h5 --support ep_support.h5 --input ep_query.h5 --set eval.steps=2 --json > pred.json
$PY - <<'EOF' || fail "plot-adapt images' accuracy: $(cat images.txt) / metatrain predict: $(cat pred.json)"
import json, re
text, p = open('images.txt').read(), json.load(open('pred.json'))
m = re.search(r'^accuracy (\S+) \((\d+)/(\d+)\) after 2 steps$', text, re.M)
assert m, text
assert int(m.group(3)) == 75 and abs(float(m.group(1)) - p['value']) < 1e-5, (m.groups(), p)
print(f"images: accuracy {m.group(1)} after 2 steps, as metatrain predict reports")
EOF
# A query without labels, and fewer query images than support images.
"$PLOT" images omni/checkpoint.h5 --support ep_support.h5 --query unlabelled_query.h5 --max-query 3 \
    -o unlabelled.png > /dev/null 2> err.txt || fail "plot-adapt images, unlabelled query: $(cat err.txt)"
png unlabelled.png
no_leftovers

# --- failures: one line, non-zero exit, no figure ---
# refuse PATTERN ARGS...: plot-adapt ARGS fails with one stderr line starting "plot-adapt: " and
# matching PATTERN, and leaves neither bad.png nor a temporary file.
refuse() {
    pattern=$1
    shift
    code=0
    "$PLOT" "$@" > out.txt 2> err.txt || code=$?
    [ "$code" != 0 ] || fail "accepted: plot-adapt $*"
    [ "$(wc -l < err.txt)" = 1 ] || fail "not one line on stderr for plot-adapt $*: $(cat err.txt)"
    grep -q '^plot-adapt: ' err.txt || fail "message for plot-adapt $* lacks the prefix: $(cat err.txt)"
    grep -q -- "$pattern" err.txt || fail "message for plot-adapt $* lacks '$pattern': $(cat err.txt)"
    [ ! -e bad.png ] || fail "bad.png was left by: plot-adapt $*"
    no_leftovers
    echo "refused (exit $code): $(cat err.txt)"
}
refuse 'metatrain: error: no-such.h5: cannot open' sinusoid no-such.h5 --amplitude 2 --phase 0.5 -o bad.png
refuse 'metatrain: error: no-such.h5: cannot open' images no-such.h5 --support ep_support.h5 --query ep_query.h5 -o bad.png
"$METATRAIN" adapt omni/checkpoint.h5 --support ep_support.h5 -o adapted.h5 > /dev/null
refuse 'adapted.h5: an adapted file' images adapted.h5 --support ep_support.h5 --query ep_query.h5 -o bad.png
refuse 'metatrain adapt failed: metatrain: error: sin/checkpoint.h5: no /images' images omni/checkpoint.h5 --support sin/checkpoint.h5 --query ep_query.h5 -o bad.png
refuse 'metatrain adapt failed: .*only eval.steps' images omni/checkpoint.h5 --support ep_support.h5 --query ep_query.h5 --set meta.inner_lr=1 -o bad.png
refuse 'omni/checkpoint.h5: the model takes input 1x28x28' sinusoid omni/checkpoint.h5 -o bad.png
refuse 'no metatrain binary' sinusoid sin/checkpoint.h5 --metatrain ./no-such-binary -o bad.png
refuse 'directory nodir does not exist' sinusoid sin/checkpoint.h5 -o nodir/bad.png
refuse '--points 0' sinusoid sin/checkpoint.h5 --points 0 -o bad.png
refuse 'required' images omni/checkpoint.h5 --query ep_query.h5 -o bad.png
pass
