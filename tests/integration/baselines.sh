#!/bin/bash
# scripts/fixed-episodes draws episodes of the right shapes, splits and labels, the same bytes for
# the same seed, which metatrain eval accepts; scripts/baselines scores them: nearest centroid is
# perfect on separable bags, the mean predictors give the MSE computed here independently, the
# trained networks give finite numbers; bad inputs are refused with one line naming the file.
. "$(dirname "$0")/lib.sh"

episodes="$METATRAIN_SOURCE_DIR/scripts/fixed-episodes"
baselines="$METATRAIN_SOURCE_DIR/scripts/baselines"
PY=/usr/bin/python3

# sep.h5: 10 classes of 12 bags (4 train, 2 val, 4 test), class c's ids in [10c, 10c + 10), so
# no two classes share an id. hard.h5: the same classes mixing in ids common to all, and empty
# bags. reg.h5: 12 groups (6 train, 3 val, 3 test) of 10 rows; the first token is an item id in
# [0, 8) (8 only in test groups, -1 for some rows); targets are noisy item values.
$PY - <<'EOF'
import h5py, numpy as np
r = np.random.default_rng(3)
classes, per, T = 10, 12, 6
labels = np.repeat(np.arange(classes), per).astype('i4')
split = np.array([0] * 4 + [1] * 2 + [2] * 4, 'i4')
tokens = labels[:, None] * 10 + r.integers(0, 10, (len(labels), T))
tokens[r.random(tokens.shape) < 0.3] = -1
tokens[:, 0] = labels * 10  # no empty bag
common = r.integers(100, 110, tokens.shape)
hard = np.where(r.random(tokens.shape) < 0.5, common, tokens)
hard[::7] = -1
for name, t in (('sep.h5', tokens), ('hard.h5', hard)):
    with h5py.File(name, 'w') as f:
        f['tokens'] = t.astype('i4'); f['labels'] = labels; f['class_split'] = split
        f.attrs['vocabulary'] = 110
groups = 12
group = np.repeat(np.arange(groups), 10).astype('i4')
item = r.integers(0, 8, len(group))
item[group >= 9] = np.where(r.random((group >= 9).sum()) < 0.3, 8, item[group >= 9])
item[::9] = -1
tokens = np.stack([item, r.integers(9, 20, len(group)), np.full(len(group), -1)], 1)
targets = np.where(item >= 0, item * 0.5, 1.0) + r.normal(0, 0.1, len(group))
with h5py.File('reg.h5', 'w') as f:
    f['tokens'] = tokens.astype('i4'); f['targets'] = targets[:, None].astype('f4'); f['group'] = group
    f['group_split'] = np.array([0] * 6 + [1] * 3 + [2] * 3, 'i4'); f.attrs['vocabulary'] = 20
with h5py.File('none.h5', 'w') as f:
    f['tokens'] = tokens.astype('i4')
EOF

"$episodes" sep.h5 -o sep-ep.h5 --count 20 --shots 2 --queries 3 --ways 3 --seed 5 || fail "sep.h5 episodes"
"$episodes" sep.h5 -o sep-ep2.h5 --count 20 --shots 2 --queries 3 --ways 3 --seed 5 || fail "sep.h5 again"
"$episodes" sep.h5 -o sep-ep3.h5 --count 20 --shots 2 --queries 3 --ways 3 --seed 6 || fail "sep.h5 seed 6"
cmp -s sep-ep.h5 sep-ep2.h5 || fail "the same seed gave different files"
h5diff -q sep-ep.h5 sep-ep3.h5 /episodes/support /episodes/support > /dev/null && fail "seeds 5 and 6 gave the same episodes"
"$episodes" hard.h5 -o hard-ep.h5 --count 30 --shots 3 --queries 4 --ways 4 || fail "hard.h5 episodes"
"$episodes" reg.h5 -o reg-ep.h5 --count 25 --shots 4 --queries 5 --seed 2 || fail "reg.h5 episodes"
"$episodes" reg.h5 -o reg-val.h5 --count 5 --shots 2 --queries 3 --split val || fail "reg.h5 val episodes"

$PY - <<'EOF' || fail "episodes: wrong contents"
import h5py, numpy as np
def check_classes(name, episodes, E, W, K, Q, split):
    with h5py.File(name) as d, h5py.File(episodes) as f:
        labels, in_split = d['labels'][()], d['class_split'][()] == split
        g = f['episodes']
        s, sl, q, ql = (g[k][()] for k in ('support', 'support_labels', 'query', 'query_labels'))
        assert int(g.attrs['ways']) == W and f.attrs['shots'] == K and f.attrs['queries'] == Q
        assert all(a.dtype == np.int32 for a in (s, sl, q, ql))
        assert s.shape == sl.shape == (E, W * K) and q.shape == ql.shape == (E, W * Q), (s.shape, q.shape)
        assert (sl == np.repeat(np.arange(W), K)).all() and (ql == np.repeat(np.arange(W), Q)).all()
        for e in range(E):
            rows = np.concatenate([s[e], q[e]])
            assert len(set(rows)) == len(rows), f"episode {e}: a row twice"
            assert in_split[labels[rows]].all(), f"episode {e}: a row outside the split"
            local = np.concatenate([sl[e], ql[e]])
            pairs = set(zip(local, labels[rows]))  # local label <-> class, one to one
            assert len(pairs) == W == len({c for _, c in pairs}), f"episode {e}: labels {pairs}"
check_classes('sep.h5', 'sep-ep.h5', 20, 3, 2, 3, 2)
check_classes('hard.h5', 'hard-ep.h5', 30, 4, 3, 4, 2)
def check_groups(episodes, E, K, Q, split):
    with h5py.File('reg.h5') as d, h5py.File(episodes) as f:
        group, in_split = d['group'][()], d['group_split'][()] == split
        s, q = f['episodes/support'][()], f['episodes/query'][()]
        assert s.shape == (E, K) and q.shape == (E, Q) and 'ways' not in f['episodes'].attrs
        for e in range(E):
            rows = np.concatenate([s[e], q[e]])
            assert len(set(rows)) == len(rows) and len(set(group[rows])) == 1, f"episode {e}: {rows}"
            assert in_split[group[rows[0]]], f"episode {e}: group {group[rows[0]]} outside the split"
check_groups('reg-ep.h5', 25, 4, 5, 2)
check_groups('reg-val.h5', 5, 2, 3, 1)
EOF

# json FILE METHOD: the JSON line of METHOD in FILE, as Python checks it (mean finite).
result() {
    $PY - "$@" <<'EOF'
import json, math, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
[r] = [r for r in lines if r['method'] == sys.argv[2]]
assert isinstance(r['mean'], float) and math.isfinite(r['mean']), r
print(r['mean'])
EOF
}

"$baselines" sep.h5 --episodes sep-ep.h5 --method centroid --json > centroid.json || fail "centroid"
grep -q '"mean": 1.0, "ci95": 0.0, "episodes": 20' centroid.json || fail "centroid on separable bags: $(cat centroid.json)"
"$baselines" sep.h5 --episodes sep-ep.h5 --method centroid | grep -q '^centroid: accuracy 1.0000 ± 0.0000 ' ||
    fail "centroid: no summary line"

"$baselines" reg.h5 --episodes reg-ep.h5 --method global-mean --method item-mean --json > means.json || fail "means"
$PY - <<'EOF' || fail "the mean predictors: $(cat means.json)"
import h5py, json
with h5py.File('reg.h5') as d, h5py.File('reg-ep.h5') as f:
    tokens, y, group, split = (d[k][()].tolist() for k in ('tokens', 'targets', 'group', 'group_split'))
    queries = f['episodes/query'][()].tolist()
train = [i for i in range(len(y)) if split[group[i]] == 0]
mean = sum(y[i][0] for i in train) / len(train)
item = {}
for i in train:
    if tokens[i][0] >= 0: item.setdefault(tokens[i][0], []).append(y[i][0])
def predict(i):
    values = item.get(tokens[i][0])
    return sum(values) / len(values) if values else mean
def score(p):
    return sum(sum((y[i][0] - p(i)) ** 2 for i in q) / len(q) for q in queries) / len(queries)
got = {r['method']: r for r in map(json.loads, open('means.json'))}
assert any(tokens[i][0] not in item for q in queries for i in q), "no query row falls back"
for method, want in (('global-mean', score(lambda i: mean)), ('item-mean', score(predict))):
    assert abs(got[method]['mean'] - want) < 1e-6 * want, (method, got[method], want)
    assert got[method]['metric'] == 'mse' and got[method]['episodes'] == 25
EOF

"$baselines" hard.h5 --episodes hard-ep.h5 --method scratch --method centroid --steps 30 --json \
    --spec "input tokens 6, embed 110 8, relu, linear 16, relu, linear 4, xent" > hard.json || fail "scratch"
for m in scratch centroid; do
    acc=$(result hard.json $m) || fail "$m: $(cat hard.json)"
    $PY -c "assert 0 <= $acc <= 1" || fail "$m: accuracy $acc"
done
"$baselines" reg.h5 --episodes reg-ep.h5 --method finetune --pretrain-epochs 3 --batch 16 --json \
    --spec "input tokens 3, embed 20 8, relu, linear 8, relu, linear 1, mse" > finetune.json || fail "finetune"
result finetune.json pretrained > /dev/null && result finetune.json finetune > /dev/null || fail "finetune: $(cat finetune.json)"

# Tables of only the ids in use compute what the full table would: an episode's remapped bags, a
# table of the support's ids trained by Adam (scratch) then grown by the query's other ids, and a
# restricted copy tuned by SGD (finetune) give the full table's outputs and rows bit for bit,
# empty bags included.
$PY - "$baselines" <<'EOF' || fail "a restricted table computes differently from the full one"
import copy, importlib.machinery, sys, types
import numpy as np
b = types.ModuleType("baselines")
importlib.machinery.SourceFileLoader("baselines", sys.argv[1]).exec_module(b)
b.load_torch(types.SimpleNamespace(threads=1, seed=3))
torch, F = b.torch, b.F
spec = b.Spec("input tokens 5, embed 40 6, relu, linear 7, relu, linear 3, xent")
r = np.random.default_rng(0)
tokens = r.integers(0, 40, (24, 5))
tokens[r.random(tokens.shape) < 0.4] = -1
tokens[[3, 17]] = -1
y = torch.from_numpy(r.integers(0, 3, 12))
support, query = np.arange(12), np.arange(12, 24)
xs, xq, ids, k = b.episode_inputs(types.SimpleNamespace(tokens=tokens), spec, support, query)
assert 0 < k < len(ids) == len(set(ids)), (k, ids)
full_s, full_q = (b.bags(torch.from_numpy(tokens[rows])) for rows in (support, query))
def train(net, x, optimizer):
    opt = optimizer(net.parameters())
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
def same(small, full):
    assert torch.equal(small(xq), full(full_q)) and torch.equal(small.embed.weight, full.embed.weight[ids])
small, full = b.Net(spec, k), b.Net(spec, 40)
full.body = copy.deepcopy(small.body)
with torch.no_grad():
    full.embed.weight[ids[:k]] = small.embed.weight
for net, x in ((small, xs), (full, full_s)):
    train(net, x, lambda p: torch.optim.Adam(p, lr=0.01, foreach=True))
small.grow(len(ids) - k)
with torch.no_grad():  # the full table's rows of the query's other ids: never trained, still as drawn
    full.embed.weight[ids[k:]] = small.embed.weight[k:]
same(small, full)
small = full.restricted(torch.from_numpy(ids))
for net, x in ((small, xs), (full, full_s)):
    train(net, x, lambda p: torch.optim.SGD(p, lr=0.1))
same(small, full)
full.body = torch.nn.Sequential()  # what the body gets: the mean of a bag's rows, zeros for none
table = full.embed.weight.detach().numpy()
want = [table[t[t >= 0]].mean(0) if (t >= 0).any() else np.zeros(6) for t in tokens[query]]
assert np.allclose(full(full_q).detach().numpy(), want, atol=1e-6)
EOF

# metatrain eval takes the file: exactly its episodes, drawn from an images file.
prototype_images
tiny_classifier omni
"$episodes" images.h5 -o images-ep.h5 --count 4 --shots 1 --queries 2 --ways 5 --split train || fail "images.h5 episodes"
out=$("$METATRAIN" eval omni/checkpoint.h5 --json --set eval.episodes=images-ep.h5) || fail "metatrain eval: $out"
echo "$out" | grep -q '"tasks": 4,' || fail "metatrain eval: expected 4 tasks: $out"

# Refusals. refused PROGRAM PATTERN ARGS...: exits non-zero with one stderr line starting with the
# program's name and holding PATTERN, and leaves nothing in out/.
mkdir out
refused() {
    program=$1 pattern=$2
    shift 2
    code=0
    "$program" "$@" > /dev/null 2> err.txt || code=$?
    name=$(basename "$program")
    [ $code != 0 ] || fail "$name $*: accepted"
    [ "$(wc -l < err.txt)" = 1 ] || fail "$name $*: expected one line on stderr, got: $(cat err.txt)"
    grep -q "^$name: " err.txt || fail "$name $*: message lacks the program's name: $(cat err.txt)"
    grep -qF -- "$pattern" err.txt || fail "$name $*: message lacks '$pattern': $(cat err.txt)"
    [ -z "$(ls -A out)" ] || fail "$name $*: left $(ls -A out)"
}
few=(-o out/x.h5 --count 2 --queries 1)
refused "$episodes" "sep.h5: /class_split: split 'val' has 2 classes" sep.h5 "${few[@]}" --shots 1 --ways 3 --split val
refused "$episodes" "sep.h5: /labels: class 6 of split 'test' has 12 rows" sep.h5 "${few[@]}" --shots 12 --ways 2
refused "$episodes" "reg.h5: /group_split: split 'test' has no group" reg.h5 "${few[@]}" --shots 10
refused "$episodes" "none.h5: neither /labels" none.h5 "${few[@]}" --shots 1
refused "$episodes" "missing.h5: no such file" missing.h5 "${few[@]}" --shots 1
refused "$baselines" "sep.h5: /episodes: no such group" sep.h5 --episodes sep.h5 --method centroid
refused "$baselines" "reg.h5: method centroid is for classification" reg.h5 --episodes reg-ep.h5 --method centroid
refused "$baselines" "reg-ep.h5: /episodes: attribute ways missing, but sep.h5" sep.h5 --episodes reg-ep.h5 --method centroid
refused "$baselines" "hard.h5: --spec: classification with ways = 4 needs linear 4" hard.h5 --episodes hard-ep.h5 \
    --method scratch --spec "input tokens 6, embed 110 8, linear 3, xent"
refused "$baselines" "hard.h5: --spec: embed 50, but /tokens holds id" hard.h5 --episodes hard-ep.h5 \
    --method scratch --spec "input tokens 6, embed 50 8, linear 4, xent"
pass
