# shellcheck shell=bash
# Checks shared by the integration tests (through lib.sh), tests/cluster/run and
# scripts/slurm/selftest: fail loudly, compare checkpoints, make the smallest images file and
# name the smallest classifier of it.
# They need METATRAIN (the binary) only for ckpt_iteration.

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# same_model A B: the /params and /optimizer of two checkpoints are bit-identical (h5diff exits
# 0 for no differences, 1 for differences, 2 for trouble).
same_model() {
    for group in /params /optimizer; do
        h5diff -q "$1" "$2" "$group" "$group" || fail "$1 and $2 differ in $group (h5diff exit $?): $(h5diff -r "$1" "$2" "$group" "$group" 2>&1 | grep -v '^0 differences' | head -5)"
    done
}

# ckpt_iteration FILE: the checkpoint's /train/iteration, read by metatrain info.
ckpt_iteration() {
    "$METATRAIN" info "$1" --json | sed -n 's/.*"iteration": \([0-9]*\).*/\1/p'
}

# The smallest 5-way classifier of 1x28x28 images, for runs on prototype_images.
TINY_CLASSIFIER_SPEC="input 1x28x28, conv 8 s2, bn, relu, conv 8 s2, bn, relu, flatten, linear 5, xent"

# prototype_images: images.h5 beside the test, 12 classes of 20 noisy copies of a random 28x28
# prototype (classes "0" to "11", image c·20 + k is class c's k-th), the smallest stand-in for
# Omniglot.
prototype_images() {
    /usr/bin/python3 - <<'EOF'
import h5py, numpy as np
r = np.random.default_rng(2)
classes, per = 12, 20
proto = r.integers(0, 256, (classes, 1, 28, 28))
images = np.concatenate([np.clip(proto[c] + r.normal(0, 60, (per, 1, 28, 28)), 0, 255) for c in range(classes)])
with h5py.File('images.h5', 'w') as f:
    f['images'] = images.astype('u1'); f['labels'] = np.repeat(np.arange(classes), per).astype('i4')
    f['class_split'] = np.zeros(classes, 'i4')
EOF
}
