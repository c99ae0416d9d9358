#!/bin/bash
# A checkpoint with any byte changed (data, HDF5 metadata, unused space or the checksum header),
# truncated, without the checksum header, or something else in its place is refused by `info`
# and by `train --resume` with a one-line message and exit 1 or 2, never a crash.
. "$(dirname "$0")/lib.sh"

"$METATRAIN" train "$CONFIGS/sinusoid-metasgd.ini" --set train.iterations=20 --set output.dir=good --quiet
good=good/checkpoint.h5
"$METATRAIN" info "$good" > /dev/null || fail "the good checkpoint does not verify"

# refused FILE WHAT [info|resume]: info and train --resume, or only the one named, exit 1 or 2
# with a one-line error naming the file.
refused() {
    for cmd in info resume; do
        [ -n "${3:-}" ] && [ $cmd != "$3" ] && continue
        code=0
        if [ $cmd = info ]; then "$METATRAIN" info "$1" > out.txt 2> err.txt || code=$?
        else "$METATRAIN" train --resume "$1" --set train.iterations=30 --quiet > out.txt 2> err.txt || code=$?; fi
        case $code in
        1 | 2) ;;
        0) fail "$cmd accepted $2" ;;
        *) fail "$cmd crashed (exit $code) on $2: $(cat err.txt)" ;;
        esac
        grep -q "$1" err.txt || fail "$cmd's message for $2 does not name the file: $(cat err.txt)"
        [ "$(wc -l < err.txt)" = 1 ] || fail "$cmd's message for $2 is not one line: $(cat err.txt)"
    done
}

# corrupt OFFSET XOR: bad.h5 is the good checkpoint with the byte at OFFSET xor'ed with XOR.
corrupt() {
    cp "$good" bad.h5
    byte=$(od -An -tu1 -j "$1" -N1 bad.h5 | tr -d ' ')
    printf "$(printf '\\%03o' $(( byte ^ $2 )))" | dd of=bad.h5 bs=1 seek="$1" conv=notrunc status=none
}

# One flipped byte inside every dataset's stored data. h5py sees the file as HDF5 does, the
# checksum header being its user block; HDF5 1.10 gives chunk addresses relative to the end of
# the user block, hence the search for the chunk's stored bytes.
/usr/bin/python3 - "$good" > offsets.txt <<'PY'
import sys, h5py
raw = open(sys.argv[1], "rb").read()
with h5py.File(sys.argv[1], "r") as f:
    assert f.userblock_size == 512, f.userblock_size
    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.id.get_num_chunks():
            info = obj.id.get_chunk_info(0)
            stored = obj.id.read_direct_chunk(info.chunk_offset)[1]
            at = next(a for a in (info.byte_offset, info.byte_offset + 512) if raw[a:a + len(stored)] == stored)
            print(name, at + len(stored) // 2)
    f.visititems(visit)
PY
[ "$(wc -l < offsets.txt)" -ge 10 ] || fail "found only $(wc -l < offsets.txt) datasets to corrupt"
while read -r name offset; do
    corrupt "$offset" 255
    refused bad.h5 "a flipped byte in /$name"
    grep -q "whole-file checksum mismatch" err.txt || fail "a flipped byte in /$name: $(cat err.txt)"
done < offsets.txt

# 100 bytes changed anywhere, one at a time, at offsets and by values drawn from a fixed seed
# (random() is the part of Python's generator guaranteed to repeat across versions).
size=$(stat -c %s "$good")
/usr/bin/python3 -c "
import random
r = random.Random(20240601)
for _ in range(100):
    print(int(r.random() * $size), 1 + int(r.random() * 255))" > random.txt
[ "$(wc -l < random.txt)" = 100 ] || fail "expected 100 random offsets"
while read -r offset xor; do
    corrupt "$offset" "$xor"
    refused bad.h5 "byte $offset xor $xor" info
done < random.txt
# and the header's fields, which 100 offsets over the whole file rarely hit
for offset in 0 15 16 20 28 32 35 36 511; do
    corrupt $offset 1
    refused bad.h5 "byte $offset of the checksum header" info
done

# /train/reduction_exponents, the reducer's predicted scales: one int64 per /params tensor and
# one for the meta-loss, each in [MT_DIST_EXPONENT_MIN, MT_DIST_EXPONENT_MAX] (include/metatrain/dist.h).
/usr/bin/python3 - "$good" <<'PY' || fail "the good checkpoint's /train/reduction_exponents"
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    tensors = []
    f["params"].visititems(lambda name, obj: tensors.append(name) if isinstance(obj, h5py.Dataset) else None)
    e = f["train/reduction_exponents"]
    assert e.dtype == "<i8" and e.shape == (len(tensors) + 1,), (e.dtype, e.shape, len(tensors))
    assert all(-150 <= v <= 128 for v in e[()]), e[()]
PY
# rewrite OUT CODE: OUT is the good checkpoint with the Python CODE run on it by h5py (r+, the
# dataset as e, replace(values) putting a new one in its place as metatrain writes it: chunked,
# Fletcher32), then sealed with a new checksum header (layout in src/ckpt/ckpt_h5.h), so that only
# the content checks can refuse it.
rewrite() {
    cp "$good" "$1"
    /usr/bin/python3 - "$1" "$2" <<'PY' || fail "rewrite $1: $2"
import struct, sys, zlib, h5py
with h5py.File(sys.argv[1], "r+") as f:
    e = f["train/reduction_exponents"]
    def replace(values): # by name: e.name is None once unlinked
        del f["train/reduction_exponents"]
        f.create_dataset("train/reduction_exponents", data=values, dtype="<i8", chunks=(len(values),), fletcher32=True, track_times=False)
    exec(sys.argv[2])
with open(sys.argv[1], "r+b") as out:
    out.seek(512)
    body = out.read()
    head = b"metatrain-ckpt".ljust(16, b"\0") + struct.pack("<IQI", 1, len(body), zlib.crc32(body))
    out.seek(0)
    out.write(head + struct.pack("<I", zlib.crc32(head)) + bytes(476))
PY
}
# The control: the same values in a new dataset, resealed, differ from the good checkpoint but resume.
rewrite same.h5 'replace(e[()])'
cmp -s "$good" same.h5 && fail "rewriting /train/reduction_exponents left the file unchanged"
/usr/bin/python3 - "$good" same.h5 <<'PY' || fail "same.h5 does not hold the good checkpoint's reduction exponents"
import sys, h5py
a, b = (h5py.File(p, "r")["train/reduction_exponents"][()].tolist() for p in sys.argv[1:])
assert a == b, (a, b)
PY
"$METATRAIN" train --resume same.h5 --set train.iterations=30 --set output.dir=same --quiet 2> err.txt ||
    fail "train --resume refused the resealed checkpoint: $(cat err.txt)"
[ "$(ckpt_iteration same/checkpoint.h5)" = 30 ] || fail "the resealed checkpoint did not resume to iteration 30"
# info does not look at the field (it builds no reducer): train --resume alone refuses these.
rewrite bad.h5 'e[0] = 999'
refused bad.h5 "a reduction exponent of 999" resume
grep -q "/train/reduction_exponents\[0\]: 999 is outside \[-150, 128\]" err.txt || fail "an exponent of 999: $(cat err.txt)"
rewrite bad.h5 'replace(e[:-1])'
refused bad.h5 "one reduction exponent too few" resume
grep -q "/train/reduction_exponents: not [0-9]* int64 values" err.txt || fail "one exponent too few: $(cat err.txt)"
report "checkpoint, resealed: a reduction exponent of 999, one exponent too few" "each refused by --resume with one line naming /train/reduction_exponents and exit 1 or 2 (info does not read the field); the same values resealed resume"

# Truncated at several lengths, without the header, and other things in its place.
for keep in 0 8 100 511 512 1000 $((size / 2)) $((size - 100)) $((size - 1)); do
    head -c "$keep" "$good" > bad.h5
    refused bad.h5 "a file truncated to $keep bytes"
done
tail -c +513 "$good" > bad.h5 # HDF5 alone, as an older metatrain wrote it
refused bad.h5 "a checkpoint without the checksum header"
grep -q "no checksum header" err.txt || fail "a checkpoint without the checksum header: $(cat err.txt)"
echo "not a checkpoint" > bad.h5
refused bad.h5 "a text file"
: > empty.h5
refused empty.h5 "an empty file"
ln -s loop.h5 loop.h5
refused loop.h5 "a symlink loop"
mkdir dir.h5
refused dir.h5 "a directory"
report "checkpoint: a flipped byte in every dataset, 100 random single-byte flips, truncations, header fields, empty, text, symlink loop, directory" "each refused by info and --resume with one line and exit 1 or 2, never a crash"
pass
