#!/bin/bash
# Using a trained model: adapt and predict from the command line.
# - adapt writes an adapted file that info reads, with the support's SHA-256; predicting with it
#   gives the same bits as predict --support on the checkpoint;
# - on one fixed episode, adapt + predict give eval's accuracy: one adaptation path, not two;
# - bad input of every kind is refused with one line naming the file and the dataset or field, a
#   non-zero exit, and no output file.
. "$(dirname "$0")/lib.sh"
PY=/usr/bin/python3

# --- a regression model: the sinusoid MLP ---
"$METATRAIN" train "$CONFIGS/sinusoid-maml.ini" --set train.iterations=20 --set output.dir=sin --quiet > /dev/null
$PY - <<'EOF'
import h5py, numpy as np
r = np.random.default_rng(1)
def table(name, n, width=1, targets=True, nan=False):
    x = r.uniform(-5, 5, (n, width)).astype('f4')
    if nan: x[n // 2, 0] = np.nan
    with h5py.File(name, 'w') as f:
        f['features'] = x
        if targets: f['targets'] = (2 * np.sin(x[:, :1] - 0.5)).astype('f4')
table('sup.h5', 10); table('query.h5', 100); table('wide.h5', 10, width=2)
table('unlabelled.h5', 10, targets=False); table('nan.h5', 100, nan=True)
EOF
"$METATRAIN" adapt sin/checkpoint.h5 --support sup.h5 -o adapted.h5 > /dev/null
"$METATRAIN" info adapted.h5 --json > info.json
sha=$(sha256sum sup.h5 | cut -d' ' -f1)
$PY - "$sha" <<'EOF' || fail "info of an adapted file: $(cat info.json)"
import json, sys
i = json.load(open('info.json'))
assert i['kind'] == 'adapted' and i['checksums_verified'] is True, i
assert i['support_sha256'] == sys.argv[1] and i['support_file'] == 'sup.h5', i
assert i['source'] == 'sin/checkpoint.h5' and i['source_iteration'] == '20' and i['steps'] == '10', i
EOF
"$METATRAIN" predict adapted.h5 --input query.h5 -o a.h5 > /dev/null
"$METATRAIN" predict sin/checkpoint.h5 --support sup.h5 --input query.h5 -o b.h5 > /dev/null
h5diff -q a.h5 b.h5 || fail "predict with the adapted file differs from predict --support"
"$METATRAIN" predict sin/checkpoint.h5 --input query.h5 -o c.h5 > /dev/null
! h5diff -q a.h5 c.h5 > /dev/null || fail "adapting changed no prediction"
"$METATRAIN" predict adapted.h5 --input query.h5 --json > p.json
$PY -c 'import json; p = json.load(open("p.json")); assert p["rows"] == 100 and p["metric"] == "mse" and p["value"] > 0, p' ||
    fail "predict --json: $(cat p.json)"
[ "$("$METATRAIN" predict adapted.h5 --input query.h5 --csv 2> /dev/null | wc -l)" = 101 ] || fail "--csv: not 100 rows and a header"
# --set eval.steps changes the adaptation, and only that key is taken.
"$METATRAIN" adapt sin/checkpoint.h5 --support sup.h5 -o one.h5 --set eval.steps=1 --json | grep -q '"steps": 1,' ||
    fail "--set eval.steps=1"
code=0
"$METATRAIN" adapt sin/checkpoint.h5 --support sup.h5 -o x.h5 --set meta.inner_lr=1 2> err.txt || code=$?
[ "$code" = 2 ] && grep -q 'only eval.steps' err.txt && [ ! -e x.h5 ] || fail "--set of another key: exit $code, $(cat err.txt)"

# --- a classifier: one fixed episode, eval against adapt + predict ---
prototype_images
$PY - <<'EOF'
import h5py, numpy as np
per = 20
images = h5py.File('images.h5')['images'][:]
# one episode: classes 7, 2, 9, 4, 0 as labels 0..4; image 0 of each supports, 1..19 query
chosen = [7, 2, 9, 4, 0]
sup = np.array([c * per for c in chosen], 'i4')
qry = np.array([c * per + k for c in chosen for k in range(1, per)], 'i4')
with h5py.File('episode.h5', 'w') as f:
    g = f.create_group('episodes'); g.attrs['ways'] = 5
    g['support'] = sup[None]; g['support_labels'] = np.arange(5, dtype='i4')[None]
    g['query'] = qry[None]; g['query_labels'] = np.repeat(np.arange(5), per - 1).astype('i4')[None]
def subset(name, idx, lab, **extra):
    with h5py.File(name, 'w') as f:
        f['images'] = images[idx]
        if lab is not None: f['labels'] = lab
        for k, v in extra.items(): f[k] = v
subset('nolabels.h5', sup, None)
subset('badlabel.h5', sup, np.array([0, 1, 2, 3, 7], 'i4'))
with h5py.File('small.h5', 'w') as f:
    f['images'] = images[:5, :, :20, :20]; f['labels'] = np.arange(5, dtype='i4')
EOF
tiny_classifier omni
"$METATRAIN" eval omni/checkpoint.h5 --set eval.episodes=episode.h5 --json > eval.json
# The same episode as support and query files, cut out by scripts/episode-files.
"$METATRAIN_SOURCE_DIR/scripts/episode-files" images.h5 --classes 7 2 9 4 0 -o ep > /dev/null
"$METATRAIN" adapt omni/checkpoint.h5 --support ep-support.h5 -o omni_adapted.h5 > /dev/null
"$METATRAIN" predict omni_adapted.h5 --input ep-query.h5 --json -o ep_pred.h5 > pred.json
$PY - <<'EOF' || fail "eval and adapt + predict disagree: $(cat eval.json) / $(cat pred.json)"
import h5py, json, numpy as np
e, p = json.load(open('eval.json')), json.load(open('pred.json'))
assert e['tasks'] == 1 and p['metric'] == 'accuracy' and p['rows'] == 95, (e, p)
assert abs(e['mean'] - p['value']) < 1e-9, (e['mean'], p['value'])
with h5py.File('ep_pred.h5') as f:
    probs, cls = f['predictions'][:], f['predicted_class'][:]
assert probs.shape == (95, 5) and cls.shape == (95,), (probs.shape, cls.shape)
assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs.argmax(1) == cls).all()
truth = np.repeat(np.arange(5), 19)
assert abs((cls == truth).mean() - e['mean']) < 1e-9
print(f"eval and adapt + predict: accuracy {p['value']:.4f} on the episode")
EOF

# --- refusals: one line naming the file and dataset or field, exit non-zero, no output ---
printf 'garbage' > truncated.h5
head -c 3000 sin/checkpoint.h5 > truncated.h5
cp sin/checkpoint.h5 flipped.h5
printf '\x55' | dd of=flipped.h5 bs=1 seek=4000 conv=notrunc 2> /dev/null
: > empty.h5
# refuse PATTERN VERB ARGS...: the command fails with one error line matching PATTERN and writes
# neither out.h5 nor a temporary beside it.
refuse() {
    pattern=$1
    shift
    code=0
    "$METATRAIN" "$@" > out.txt 2> err.txt || code=$?
    [ "$code" != 0 ] || fail "accepted: $*"
    [ "$(grep -c 'error' err.txt)" = 1 ] || fail "not one error line for $*: $(cat err.txt)"
    grep -q -- "$pattern" err.txt || fail "message for $* lacks '$pattern': $(cat err.txt)"
    ! ls out.h5 out.h5.tmp.* nodir 2> /dev/null | grep -q . || fail "an output file was left by: $*"
    report "use: $*" "exit $code: \`$(message err.txt)\`"
}
refuse 'wide.h5: /features: rows have 2 features' predict sin/checkpoint.h5 --input wide.h5 -o out.h5
refuse 'small.h5: /images: images are 1x20x20' predict omni/checkpoint.h5 --input small.h5 -o out.h5
refuse 'unlabelled.h5: /targets: missing' adapt sin/checkpoint.h5 --support unlabelled.h5 -o out.h5
refuse 'nolabels.h5: /labels: missing' adapt omni/checkpoint.h5 --support nolabels.h5 -o out.h5
refuse 'badlabel.h5: /labels: row 4: label 7 is outside \[0, 5)' adapt omni/checkpoint.h5 --support badlabel.h5 -o out.h5
refuse 'nan.h5: /features: row 50, column 0: nan is not finite' predict sin/checkpoint.h5 --input nan.h5 -o out.h5
refuse 'empty.h5: empty file' predict sin/checkpoint.h5 --input empty.h5 -o out.h5
refuse 'empty.h5: empty file' adapt sin/checkpoint.h5 --support empty.h5 -o out.h5
refuse 'truncated.h5: ' predict truncated.h5 --input query.h5 -o out.h5
refuse 'flipped.h5: ' adapt flipped.h5 --support sup.h5 -o out.h5
refuse 'nodir/out.h5: directory nodir does not exist' adapt sin/checkpoint.h5 --support sup.h5 -o nodir/out.h5
refuse 'nodir/out.h5: directory nodir does not exist' predict sin/checkpoint.h5 --input query.h5 -o nodir/out.h5
refuse 'no-such.h5: no such file' predict sin/checkpoint.h5 --input no-such.h5 -o out.h5
pass
