#!/bin/bash
# Models of token bags end to end: an episodes file and a grouped file of /tokens train to the
# same bits at 1, 2 and 3 ranks (every algorithm on the episodes), resume exactly, evaluate fixed
# episodes of both kinds, adapt and predict from /tokens files; and the refusals: ids at or above
# V, a /tokens of the wrong dtype or rank, a spec whose embed does not follow input tokens, and a
# tokens file given to a model without a table.
. "$(dirname "$0")/lib.sh"

/usr/bin/python3 - <<'PY'
import h5py, numpy as np
r = np.random.default_rng(4)
V, T = 300, 8
# 10 classes of 30 bags; class c draws most ids from its own band of 30, so the task is learnable.
classes, per = 10, 30
tokens = np.full((classes * per, T), -1, 'i4')
for c in range(classes):
    for k in range(per):
        n = r.integers(3, T + 1)
        own = r.integers(c * 30, c * 30 + 30, n)
        noise = r.integers(0, V, n)
        tokens[c * per + k, :n] = np.where(r.random(n) < 0.7, own, noise)
with h5py.File('words.h5', 'w') as f:
    f['tokens'] = tokens
    f['labels'] = np.repeat(np.arange(classes), per).astype('i4')
    f['class_split'] = np.array([0] * 7 + [2] * 3, 'i4')
# 40 users rating items 0..49 (ids) with genres 50..59; rating = user taste · item factor.
users, items = 40, 50
item_f, user_f = r.normal(size=(items, 3)), r.normal(size=(users, 3))
rows, groups, targets = [], [], []
for u in range(users):
    for i in r.choice(items, 20, replace=False):
        rows.append([i, 50 + i % 10, -1]); groups.append(u); targets.append([item_f[i] @ user_f[u]])
with h5py.File('ratings.h5', 'w') as f:
    f['tokens'] = np.array(rows, 'i4'); f['targets'] = np.array(targets, 'f4')
    f['group'] = np.array(groups, 'i4'); f['group_split'] = np.array([0] * 30 + [2] * 10, 'i4')
# Fixed episodes: 4 grouped ones (rows of test users 30..33) and 3 of 3-way 2-shot.
with h5py.File('rating-episodes.h5', 'w') as f:
    f['episodes/support'] = np.array([[u * 20 + k for k in range(5)] for u in range(30, 34)], 'i4')
    f['episodes/query'] = np.array([[u * 20 + k for k in range(5, 12)] for u in range(30, 34)], 'i4')
with h5py.File('word-episodes.h5', 'w') as f:
    e = f.create_group('episodes'); e.attrs['ways'] = 3
    f['episodes/support'] = np.array([[c * 30 + s for c in (7, 8, 9) for s in (0, 1)]] * 3, 'i4')
    f['episodes/support_labels'] = np.array([[0, 0, 1, 1, 2, 2]] * 3, 'i4')
    f['episodes/query'] = np.array([[c * 30 + 5 + q for c in (7, 8, 9) for q in (e, e + 1)] for e in range(3)], 'i4')
    f['episodes/query_labels'] = np.array([[0, 0, 1, 1, 2, 2]] * 3, 'i4')
PY

WORDS=(--set task.kind=episodes --set task.path=words.h5 --set task.ways=3 --set task.shots=2 --set task.queries=3
       --set "model.spec=input tokens 8, embed 300 6, relu, linear 8, relu, linear 3, xent" --set eval.every=0
       --set train.meta_batch=5 --set meta.inner_lr=0.3 --set meta.inner_steps=2 --set meta.msl_iterations=4
       --set meta.first_order_iterations=3 --set meta.cg_steps=3)
RATINGS=(--set task.kind=grouped --set task.path=ratings.h5 --set task.shots=5 --set task.queries=7
         --set "model.spec=input tokens 3, embed 60 4, linear 8, relu, linear 1, mse" --set eval.every=0
         --set train.meta_batch=4 --set meta.inner_lr=0.1)

for algo in maml fomaml metasgd anil mamlpp reptile imaml; do
    for r in 1 3; do
        mpi $r train "${WORDS[@]}" --set meta.algorithm=$algo --set train.iterations=8 --set output.dir=w-$algo-$r \
            --quiet || fail "words, $algo, $r ranks"
    done
    same_model w-$algo-1/checkpoint.h5 w-$algo-3/checkpoint.h5
done
for r in 1 2 3; do
    mpi $r train "${RATINGS[@]}" --set meta.algorithm=metasgd --set train.iterations=10 --set output.dir=g-$r --quiet ||
        fail "ratings at $r ranks"
done
same_model g-1/checkpoint.h5 g-2/checkpoint.h5
same_model g-1/checkpoint.h5 g-3/checkpoint.h5

# Resume: 6 iterations, stop, 6 more at 2 ranks, against 12 straight at 1.
"$METATRAIN" train "${WORDS[@]}" --set train.iterations=12 --set output.dir=straight --quiet
"$METATRAIN" train "${WORDS[@]}" --set train.iterations=12 --set train.stop_at=6 --set output.dir=split --quiet
[ "$(ckpt_iteration split/checkpoint.h5)" = 6 ] || fail "train.stop_at=6 left iteration $(ckpt_iteration split/checkpoint.h5)"
mpi 2 train --resume split/checkpoint.h5 --set train.iterations=12 --quiet || fail "resume"
same_model straight/checkpoint.h5 split/checkpoint.h5

# Training learns: after adapting, new 3-way episodes of the training classes are mostly right
# (a test class's band of ids is never trained here, so its accuracy says nothing).
"$METATRAIN" train "${WORDS[@]}" --set train.iterations=600 --set meta.outer_lr=0.01 --set output.dir=learned --quiet
acc=$("$METATRAIN" eval learned/checkpoint.h5 --set eval.tasks=100 --set eval.split=train --json |
      sed -n 's/.*"mean": \([0-9.]*\).*/\1/p')
/usr/bin/python3 -c "import sys; sys.exit(0 if float('$acc') > 0.7 else 1)" || fail "3-way accuracy $acc after training"

# Fixed episodes of both kinds, at 1 and 2 ranks alike.
for r in 1 2; do
    mpi $r eval learned/checkpoint.h5 --set eval.episodes=word-episodes.h5 --json > we-$r.json || fail "word episodes"
    mpi $r eval g-1/checkpoint.h5 --set eval.episodes=rating-episodes.h5 --json > re-$r.json || fail "rating episodes"
done
grep -q '"tasks": 3' we-1.json && grep -q '"tasks": 4' re-1.json || fail "fixed episodes: $(cat we-1.json re-1.json)"
cmp -s we-1.json we-2.json && cmp -s re-1.json re-2.json || fail "fixed episodes differ between 1 and 2 ranks"

# adapt and predict from /tokens files.
/usr/bin/python3 - <<'PY'
import h5py
with h5py.File('words.h5') as f, h5py.File('support.h5', 'w') as s, h5py.File('query.h5', 'w') as q:
    t, l = f['tokens'][:], f['labels'][:]
    s['tokens'] = t[[210, 211, 240, 241, 270, 271]]; s['labels'] = (l[[210, 211, 240, 241, 270, 271]] - 7).astype('i4')
    q['tokens'] = t[[215, 245, 275]]; q['labels'] = (l[[215, 245, 275]] - 7).astype('i4')
PY
"$METATRAIN" adapt learned/checkpoint.h5 --support support.h5 -o adapted.h5 || fail "adapt from /tokens"
"$METATRAIN" predict adapted.h5 --input query.h5 --json > p.json || fail "predict from /tokens"
grep -q '"rows": 3' p.json || fail "predict: $(cat p.json)"

# Refusals, one line each, naming the file and dataset.
refuse() { # refuse PATTERN COMMAND...: exits non-zero with one error line matching PATTERN
    pattern=$1
    shift
    code=0
    "$@" > out.txt 2> err.txt || code=$?
    [ "$code" != 0 ] || fail "accepted: $*"
    [ "$(grep -c . err.txt)" = 1 ] || fail "more than one line for $*: $(cat err.txt)"
    grep -q -- "$pattern" err.txt || fail "message lacks '$pattern': $(cat err.txt)"
}
/usr/bin/python3 - <<'PY'
import h5py, numpy as np
src = h5py.File('words.h5')
def variant(name, tokens):
    with h5py.File(name, 'w') as f:
        f['tokens'] = tokens; f['labels'] = src['labels'][:]; f['class_split'] = src['class_split'][:]
t = src['tokens'][:]
big = t.copy(); big[17, 2] = 300
variant('big-id.h5', big)
variant('float-tokens.h5', t.astype('f4'))
variant('flat-tokens.h5', t[:, 0].copy())
low = t.copy(); low[3, 1] = -2
variant('low-id.h5', low)
with h5py.File('big-query.h5', 'w') as f:
    f['tokens'] = big[14:18]
PY
refuse "big-id.h5: /tokens: id 300 at \[17, 2\]" "$METATRAIN" train "${WORDS[@]}" --set task.path=big-id.h5 --set output.dir=x
refuse "float-tokens.h5: /tokens" "$METATRAIN" train "${WORDS[@]}" --set task.path=float-tokens.h5 --set output.dir=x
refuse "flat-tokens.h5: /tokens" "$METATRAIN" train "${WORDS[@]}" --set task.path=flat-tokens.h5 --set output.dir=x
refuse "low-id.h5: /tokens: id -2" "$METATRAIN" train "${WORDS[@]}" --set task.path=low-id.h5 --set output.dir=x
refuse "model.spec: 'embed' must come right after 'input tokens T'" "$METATRAIN" train "${WORDS[@]}" \
    --set "model.spec=input 8, embed 300 6, linear 3, xent" --set output.dir=x
refuse "model.spec: 'input tokens T' must be followed by 'embed V D'" "$METATRAIN" train "${WORDS[@]}" \
    --set "model.spec=input tokens 8, linear 3, xent" --set output.dir=x
refuse "meta.algorithm: mamlpp-metasgd would learn steps x 300 x" "$METATRAIN" train "${WORDS[@]}" \
    --set meta.algorithm=mamlpp-metasgd --set output.dir=x
refuse "words.h5 holds /tokens" "$METATRAIN" train "${WORDS[@]}" --set "model.spec=input 8, linear 3, xent" --set output.dir=x
refuse "big-query.h5: /tokens: row 3, column 2: id 300" "$METATRAIN" predict adapted.h5 --input big-query.h5
[ ! -e x ] || fail "a refused run left output.dir behind"
pass
