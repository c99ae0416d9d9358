#!/bin/bash
# scripts/export-torch: a checkpoint rebuilt as a torch.nn.Module predicts what `metatrain
# predict` does, to 1e-4, for the sinusoid MLP, the 4-conv Omniglot network (stride-2 convs,
# batch norm on the batch's statistics, flatten, softmax) with default and explicit pixel
# scaling, a file from `metatrain adapt`, and a model of token bags (embed); the saved model.pt
# loads back to the same numbers;
# a checkpoint missing a tensor, with a tensor of the wrong shape or with an unknown spec item is
# refused with one line and leaves no output.
. "$(dirname "$0")/lib.sh"

# Debian's python3-torch installs for the system interpreter, which export-torch's shebang names.
PY=/usr/bin/python3
EXPORT="$METATRAIN_SOURCE_DIR/scripts/export-torch"
export PYTHONPATH="$METATRAIN_SOURCE_DIR/scripts${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import torch, h5py, numpy' 2> /dev/null ||
    fail "$PY cannot import torch, h5py and numpy: run scripts/install-deps --torch"

# Data: a synthetic Omniglot-shaped images file (a noisy template per class, so that the trained
# network's outputs differ from image to image), and the inputs to predict.
"$PY" - << 'EOF'
import h5py, numpy as np
rng = np.random.default_rng(7)
templates = rng.random((10, 1, 28, 28)) < 0.15
def draw(labels):
    ink = templates[labels] ^ (rng.random((len(labels), 1, 28, 28)) < 0.05)
    return (ink * rng.integers(160, 256, ink.shape)).astype(np.uint8)
labels = np.repeat(np.arange(10, dtype=np.int32), 12)
with h5py.File("omni.h5", "w") as f:
    f["images"], f["labels"] = draw(labels), labels
    f["class_split"] = np.zeros(10, np.int32)
labels = rng.integers(0, 5, 75).astype(np.int32)  # predict checks labels against the 5 outputs
images = draw(labels)
for name, attrs in (("images.h5", {}), ("images-scaled.h5", {"pixel_scale": 2 / 255, "pixel_offset": -1.0})):
    with h5py.File(name, "w") as f:
        f["images"], f["labels"] = images, labels
        f.attrs.update(attrs)
with h5py.File("support.h5", "w") as f:  # one labelled image per class, for `metatrain adapt`
    f["labels"] = np.arange(5, dtype=np.int32)
    f["images"] = draw(f["labels"][()])
with h5py.File("points.h5", "w") as f:
    x = np.linspace(-5, 5, 100, dtype=np.float32)[:, None]
    f["features"], f["targets"] = x, np.sin(x)
EOF

"$METATRAIN" train "$CONFIGS/sinusoid-maml.ini" --set train.iterations=20 --set output.dir=sin --quiet ||
    fail "training the sinusoid MLP"
"$METATRAIN" train "$CONFIGS/omniglot-5w1s.ini" --set task.path=omni.h5 --set train.iterations=3 \
    --set eval.every=0 --set output.dir=omni --quiet || fail "training the 4-conv network"
"$METATRAIN" adapt omni/checkpoint.h5 --support support.h5 -o adapted.h5 > /dev/null ||
    fail "adapting the 4-conv network"

# compare MODEL INPUT PREDICTED PT: metatrain's predictions against metatrain_torch's, from
# MODEL (a checkpoint or an adapted file) and from the exported file.
compare() {
    "$PY" - "$@" << 'EOF'
import sys, h5py, numpy as np, torch
import metatrain_torch
ckpt, source, predicted, pt = sys.argv[1:]
def fail(what):
    sys.exit("FAIL: %s: %s" % (predicted, what))
with h5py.File(source, "r") as f:
    if "features" in f:
        x = f["features"][()]
    elif "tokens" in f:  # bags of ids, -1 padding
        x = f["tokens"][()]
    else:  # pixels scaled as the images format says
        scale, offset = f.attrs.get("pixel_scale", 1 / 255), f.attrs.get("pixel_offset", 0.0)
        x = (f["images"][()] * scale + offset).astype(np.float32)
model = metatrain_torch.from_h5(ckpt)
ours = model.predict(x).numpy()
with h5py.File(predicted, "r") as f:
    theirs = f["predictions"]
    if theirs.dtype != np.float32 or theirs.shape != (len(x), model.outputs):
        fail("/predictions is %s %s, expected float32 %s" % (theirs.dtype, theirs.shape, [len(x), model.outputs]))
    theirs = theirs[()]
    classes = f["predicted_class"][()] if model.loss == "xent" else None
    if model.loss == "xent" and (f["predicted_class"].dtype != np.int32 or classes.shape != (len(x),)):
        fail("/predicted_class is %s %s, expected int32 [%d]" % (f["predicted_class"].dtype, classes.shape, len(x)))
diff = float(np.abs(ours - theirs).max())
print("%s on %s (%s, %d samples): max |metatrain - torch| = %.3g" % (ckpt, source, model.model_spec, len(x), diff))
if not diff <= 1e-4:
    fail("metatrain and torch differ by %.3g, more than 1e-4" % diff)
if np.ptp(theirs, axis=0).max() < 1e-3:
    fail("the predictions hardly vary between samples: the comparison would show nothing")
if model.loss == "xent":
    if np.abs(theirs.sum(axis=1) - 1).max() > 1e-5:
        fail("probabilities that do not sum to 1")
    if (classes != theirs.argmax(axis=1)).any():
        fail("/predicted_class is not the arg-max of /predictions")
    top2 = np.sort(ours, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-4  # ties within rounding may go either way
    if (classes != ours.argmax(axis=1))[clear].any():
        fail("/predicted_class disagrees with torch's arg-max")
again = metatrain_torch.load(pt)
if again.model_spec != model.model_spec or again.loss != model.loss:
    fail("%s: model_spec or loss changed on the way through torch.save" % pt)
reload_diff = float(np.abs(again.predict(x).numpy() - ours).max())
print("%s on %s: max |load(%s) - from_h5| = %.3g" % (ckpt, source, pt, reload_diff))
if not reload_diff <= 1e-6:
    fail("the exported %s predicts otherwise than the checkpoint (%.3g)" % (pt, reload_diff))
EOF
}
# check NAME MODEL INPUT: metatrain predict and export-torch of MODEL, then compare.
check() {
    "$METATRAIN" predict "$2" --input "$3" -o "$1-predicted.h5" > /dev/null 2> predict.txt ||
        fail "metatrain predict $2 --input $3: $(cat predict.txt)"
    "$EXPORT" "$2" -o "$1.pt" > /dev/null || fail "export-torch $2"
    compare "$2" "$3" "$1-predicted.h5" "$1.pt" || fail "$1: $2 on $3"
}
check sin sin/checkpoint.h5 points.h5
check omni omni/checkpoint.h5 images.h5
check omni-scaled omni/checkpoint.h5 images-scaled.h5  # pixel_scale and pixel_offset
check adapted adapted.h5 images.h5

# A model of token bags: an embedding table (repeated ids, padding, an empty bag) under an MLP.
"$PY" - << 'EOF'
import h5py, numpy as np
r = np.random.default_rng(5)
t = r.integers(0, 40, (60, 6)).astype(np.int32)
t[r.random(t.shape) < 0.3] = -1
t[7] = -1
with h5py.File("tokens.h5", "w") as f:
    f["tokens"] = t
    f["labels"] = np.repeat(np.arange(6), 10).astype(np.int32)
with h5py.File("tokens-in.h5", "w") as f:  # the rows to predict: no labels of 6 classes for 3 outputs
    f["tokens"] = t
EOF
"$METATRAIN" train --set task.kind=episodes --set task.path=tokens.h5 --set task.ways=3 --set task.shots=2 \
    --set task.queries=2 --set "model.spec=input tokens 6, embed 40 5, linear 8, relu, linear 3, xent" \
    --set train.iterations=5 --set eval.every=0 --set output.dir=tok --quiet > /dev/null || fail "training a token model"
check tok tok/checkpoint.h5 tokens-in.h5

# Broken copies: each refused with one line naming the file, exit non-zero, nothing written.
"$PY" - << 'EOF'
import shutil, h5py, numpy as np
for name in ("missing.h5", "shape.h5", "spec.h5"):
    shutil.copy("omni/checkpoint.h5", name)
with h5py.File("missing.h5", "r+") as f:
    del f["params/conv2/weight"]
with h5py.File("shape.h5", "r+") as f:
    del f["params/linear1/weight"]
    f["params/linear1/weight"] = np.zeros((5, 63), np.float32)
with h5py.File("spec.h5", "r+") as f:
    f.attrs["model_spec"] = np.bytes_(f.attrs["model_spec"].decode().replace("flatten", "dropout, flatten"))
EOF
# refuse FILE WHAT [OUT]: export-torch FILE fails with one line naming FILE and WHAT, and leaves
# the directory as it was (OUT, when given, exists beforehand and must stay unchanged).
refuse() {
    local before
    before=$(ls -A)
    if "$EXPORT" "$1" -o "${3:-refused.pt}" > /dev/null 2> err.txt; then fail "export-torch accepted $1"; fi
    [ "$(wc -l < err.txt)" = 1 ] && grep -q "^export-torch: $1: .*$2" err.txt ||
        fail "export-torch $1: expected one line 'export-torch: $1: ... $2', got: $(cat err.txt)"
    [ "$(ls -A)" = "$before" ] || fail "export-torch $1 left a file: $(ls -A | grep -vxF "$before")"
    echo "refused: $(cat err.txt)"
}
: > err.txt
refuse missing.h5 /params/conv2/weight
refuse shape.h5 /params/linear1/weight
refuse spec.h5 "unknown item 'dropout'"
refuse no-such.h5 "no such file"
echo keep > existing.pt
refuse missing.h5 /params/conv2/weight existing.pt
[ "$(cat existing.pt)" = keep ] || fail "a refused export-torch changed existing.pt"
pass
