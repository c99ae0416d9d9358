#!/bin/bash
# A checkpoint with any byte changed (data, HDF5 metadata, unused space or the checksum header),
# truncated, without the checksum header, or something else in its place is refused by `info`
# and by `train --resume` with a one-line message and exit 1 or 2, never a crash.
. "$(dirname "$0")/lib.sh"

"$METATRAIN" train "$CONFIGS/sinusoid-metasgd.ini" --set train.iterations=20 --set output.dir=good --quiet
good=good/checkpoint.h5
"$METATRAIN" info "$good" > /dev/null || fail "the good checkpoint does not verify"

# refused FILE WHAT [info]: info, and train --resume unless "info" is given, exit 1 or 2 with a
# one-line error naming the file.
refused() {
    for cmd in info resume; do
        [ "${3:-}" = info ] && [ $cmd = resume ] && continue
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
