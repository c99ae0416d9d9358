#!/bin/bash
# A checkpoint with a flipped byte in any dataset, or truncated, is refused by `info` and by
# `train --resume` with a clear message and a non-zero exit, never a crash.
. "$(dirname "$0")/lib.sh"

"$METATRAIN" train "$CONFIGS/sinusoid-metasgd.ini" --set train.iterations=20 --set output.dir=good --quiet
good=good/checkpoint.h5
"$METATRAIN" info "$good" > /dev/null || fail "the good checkpoint does not verify"

# refused FILE WHAT: info and resume both exit 1 or 2 with a one-line error naming the file.
refused() {
    for cmd in info resume; do
        code=0
        if [ $cmd = info ]; then "$METATRAIN" info "$1" > out.txt 2> err.txt || code=$?
        else "$METATRAIN" train --resume "$1" --set train.iterations=30 --quiet > out.txt 2> err.txt || code=$?; fi
        case $code in
        1 | 2) ;;
        0) fail "$cmd accepted $2" ;;
        *) fail "$cmd crashed (exit $code) on $2: $(cat err.txt)" ;;
        esac
        grep -q "$1" err.txt || fail "$cmd's message for $2 does not name the file: $(cat err.txt)"
    done
}

# One flipped byte inside every dataset's stored data (offsets from h5py).
/usr/bin/python3 - "$good" > offsets.txt <<'PY'
import sys, h5py
def visit(name, obj):
    if isinstance(obj, h5py.Dataset):
        info = obj.id.get_chunk_info(0) if obj.chunks else None
        offset = info.byte_offset if info else obj.id.get_offset()
        size = info.size if info else obj.id.get_storage_size()
        if offset is not None and size:
            print(name, offset + size // 2)
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(visit)
PY
[ "$(wc -l < offsets.txt)" -ge 10 ] || fail "found only $(wc -l < offsets.txt) datasets to corrupt"
while read -r name offset; do
    cp "$good" bad.h5
    byte=$(od -An -tu1 -j "$offset" -N1 bad.h5 | tr -d ' ')
    printf "$(printf '\\%03o' $(( byte ^ 0xff )))" | dd of=bad.h5 bs=1 seek="$offset" conv=notrunc status=none
    refused bad.h5 "a flipped byte in /$name"
done < offsets.txt

# Truncated at several lengths, and other files in its place.
size=$(stat -c %s "$good")
for keep in 0 8 100 1000 $((size / 2)) $((size - 100)) $((size - 1)); do
    head -c "$keep" "$good" > bad.h5
    refused bad.h5 "a file truncated to $keep bytes"
done
echo "not a checkpoint" > bad.h5
refused bad.h5 "a text file"
pass
