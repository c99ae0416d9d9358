#!/bin/bash
# Every --json output is valid JSON whatever the paths hold: quotes, backslashes, newlines, tabs,
# non-ASCII text and bytes that are not UTF-8 (which become U+FFFD). Each output is parsed, and
# the path fields must read back as the path (with U+FFFD for the bad bytes).
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3
"$METATRAIN" train "$CONFIGS/sinusoid-maml.ini" --set train.iterations=5 --set output.dir=run --quiet > /dev/null
weird=$(printf 'dir "quoted" back\\slash\nnew line\ttab é \377 end')
mkdir "$weird"
cp run/checkpoint.h5 "$weird/model.h5"
$PY - "$weird" <<'EOF2'
import h5py, numpy as np, os, sys
d = os.fsencode(sys.argv[1])
x = np.linspace(-5, 5, 10, dtype='f4')[:, None]
for name in (b'support.h5', b'query.h5'):
    with h5py.File(os.path.join(d, name), 'w') as f:
        f['features'] = x; f['targets'] = np.sin(x)
EOF2
"$METATRAIN" info "$weird/model.h5" --json > info.json
"$METATRAIN" eval "$weird/model.h5" --set eval.tasks=3 --json > eval.json
"$METATRAIN" adapt "$weird/model.h5" --support "$weird/support.h5" -o "$weird/adapted.h5" --json > adapt.json
"$METATRAIN" info "$weird/adapted.h5" --json > info-adapted.json
"$METATRAIN" predict "$weird/adapted.h5" --input "$weird/query.h5" -o "$weird/out.h5" --json > predict.json
"$METATRAIN" info "$weird/missing.h5" --json > info-missing.json 2> /dev/null && fail "info of a missing file succeeded"
"$METATRAIN" bench adapt sinusoid --seconds 0.05 --json > bench.json
$PY - "$weird" <<'EOF2' || fail "invalid JSON or a path that does not read back"
import json, os, sys
d = os.fsencode(sys.argv[1]).decode('utf-8', 'replace')  # the bad byte as U+FFFD, as metatrain writes it
def load(name):
    text = open(name, encoding='utf-8').read()
    assert text.count('\n') == 1, f"{name}: not one line: {text!r}"
    return json.loads(text)
i, a, ia, p, m = (load(n) for n in ('info.json', 'adapt.json', 'info-adapted.json', 'predict.json', 'info-missing.json'))
load('eval.json'), load('bench.json')
assert i['file'] == d + '/model.h5', (i['file'], d)
assert a['adapted'] == d + '/adapted.h5' and a['support'] == d + '/support.h5', a
assert ia['source'] == d + '/model.h5' and ia['support_file'] == d + '/support.h5', ia
assert p['model'] == d + '/adapted.h5' and p['input'] == d + '/query.h5' and p['output'] == d + '/out.h5', p
assert m['file'] == d + '/missing.h5' and m['checksums_verified'] is False, m
assert '\ufffd' in d and '"' in d and '\\' in d and '\n' in d and 'é' in d
EOF2
pass
