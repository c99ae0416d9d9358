#!/bin/sh
# Writes the binary seeds of the fuzz corpora with the real tools: tiny HDF5 datasets in every
# format the loader reads (h5py, as users write them) and two small checkpoints written by
# metatrain itself. The text seeds (configs, specs) are kept in the tree as they are.
#   tests/fuzz/make_seeds.sh [METATRAIN_BINARY]   (default: build/metatrain)
# Names carry no .h5 suffix, so that git keeps them: they are fuzz inputs, not data.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
metatrain=${1:-$root/build/metatrain}
[ -x "$metatrain" ] || { echo "make_seeds.sh: no metatrain binary at $metatrain (build first)" >&2; exit 1; }
datasets="$here/corpus/fuzz_dataset"
checkpoints="$here/corpus/fuzz_checkpoint"
mkdir -p "$datasets" "$checkpoints"

# Datasets: images with names, splits, pixel attributes and fixed episodes (old and new HDF5 file
# formats, contiguous and chunked/compressed), images with variable-length names, grouped
# regression and classification, and token bags in both families with fixed episodes.
/usr/bin/python3 - "$datasets" <<'PY'
import os, sys
import h5py
import numpy as np

out = sys.argv[1]
rng = np.random.default_rng(1)

def images(name, libver="earliest", chunked=False, vlen_names=False, episodes=True):
    n, classes = 6, 3
    with h5py.File(os.path.join(out, name), "w", libver=libver) as f:
        opts = dict(chunks=(2, 1, 4, 4), compression="gzip", shuffle=True, fletcher32=True) if chunked else {}
        f.create_dataset("images", data=rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8), **opts)
        f.create_dataset("labels", data=np.array([0, 1, 2, 0, 1, 2], dtype=np.int32))
        if vlen_names:
            f.create_dataset("class_names", data=["a", "bb", "ccc"], dtype=h5py.string_dtype())
        else:
            f.create_dataset("class_names", data=np.array([b"a", b"bb", b"ccc"], dtype="S4"))
            f.create_dataset("class_split", data=np.array([0, 1, 0], dtype=np.int32))
            f.attrs["pixel_scale"] = np.float64(0.5)
            f.attrs["pixel_offset"] = np.float64(-1.0)
        if episodes:
            g = f.create_group("episodes")
            g.attrs["ways"] = np.int64(2)
            g.create_dataset("support", data=np.array([[0, 1], [3, 4]], dtype=np.int32))
            g.create_dataset("support_labels", data=np.array([[0, 1], [1, 0]], dtype=np.int32))
            g.create_dataset("query", data=np.array([[3], [0]], dtype=np.int32))
            g.create_dataset("query_labels", data=np.array([[0], [1]], dtype=np.int32))

def grouped(name, classification=False, libver="earliest"):
    n = 8
    with h5py.File(os.path.join(out, name), "w", libver=libver) as f:
        f.create_dataset("features", data=rng.standard_normal((n, 2)).astype(np.float32))
        if classification:
            f.create_dataset("targets", data=np.array([0, 1, 0, 1, 1, 0, 1, 0], dtype=np.int32))
        else:
            f.create_dataset("targets", data=rng.standard_normal((n, 1)).astype(np.float32))
        f.create_dataset("group", data=np.array([0, 0, 1, 1, 2, 2, 3, 3], dtype=np.int32))
        f.create_dataset("group_split", data=np.array([0, 0, 1, 2], dtype=np.int32))

def tokens(name, grouped_rows=False):
    n, t = 8, 3
    with h5py.File(os.path.join(out, name), "w") as f:
        f.create_dataset("tokens", data=np.array([[0, 4, -1], [2, 2, 1], [-1, -1, -1], [3, 0, 4],
                                                  [1, -1, -1], [4, 3, 2], [0, 0, 0], [2, 1, -1]], dtype=np.int32))
        if grouped_rows:
            f.create_dataset("targets", data=rng.standard_normal((n, 1)).astype(np.float32))
            f.create_dataset("group", data=np.array([0, 0, 1, 1, 2, 2, 3, 3], dtype=np.int32))
            g = f.create_group("episodes")
            g.create_dataset("support", data=np.array([[0], [2]], dtype=np.int32))
            g.create_dataset("query", data=np.array([[1], [3]], dtype=np.int32))
        else:
            f.create_dataset("labels", data=np.array([0, 1, 0, 1, 0, 1, 0, 1], dtype=np.int32))
            g = f.create_group("episodes")
            g.attrs["ways"] = np.int64(2)
            g.create_dataset("support", data=np.array([[0, 1]], dtype=np.int32))
            g.create_dataset("support_labels", data=np.array([[0, 1]], dtype=np.int32))
            g.create_dataset("query", data=np.array([[2, 3]], dtype=np.int32))
            g.create_dataset("query_labels", data=np.array([[0, 1]], dtype=np.int32))

images("images-episodes-v0")
images("images-episodes-latest-chunked", libver="latest", chunked=True)
images("images-vlen-names", vlen_names=True, episodes=False)
grouped("grouped-regression")
grouped("grouped-classification", classification=True, libver="latest")
tokens("tokens-episodes")
tokens("tokens-grouped", grouped_rows=True)
PY

# Checkpoints: metatrain's own, from two short runs (a tiny MLP; MAML++ with its extra state).
work=$(mktemp -d "${TMPDIR:-/tmp}/make_seeds.XXXXXX")
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
"$metatrain" train "$root/scripts/configs/seed-linreg.ini" --quiet --set "output.dir=$work/maml" \
    --set train.iterations=2 --set train.log_every=1 --set "model.spec=input 10, linear 2, relu, linear 1, mse"
cp "$work/maml/checkpoint.h5" "$checkpoints/linreg-maml"
"$metatrain" train "$root/scripts/configs/seed-linreg.ini" --quiet --set "output.dir=$work/mamlpp" \
    --set train.iterations=2 --set meta.algorithm=mamlpp --set meta.optimizer=sgd \
    --set "model.spec=input 10, linear 1, mse"
cp "$work/mamlpp/checkpoint.h5" "$checkpoints/linreg-mamlpp-sgd"
echo "make_seeds.sh: wrote $(ls "$datasets" | wc -l) dataset and $(ls "$checkpoints" | wc -l) checkpoint seeds"
