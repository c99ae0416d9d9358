#!/bin/bash
# scripts/wordlists-to-h5: a fake dictionary tree (w* lists in UTF-8 and ISO-8859-1, a hunspell
# .dic with its count line and flags) becomes exactly the documented words, FNV-1a n-gram ids,
# padding, labels and attributes; the documented sample; missing and short dictionaries, bad
# encodings and an unwritable output are refused with one line naming the file, leaving no output.
# The language table itself keeps the promised split (every val and test script also trains).
. "$(dirname "$0")/lib.sh"

conv="$METATRAIN_SOURCE_DIR/scripts/wordlists-to-h5"
mkdir out

# The tree. da: 60 generated words plus extras, sampled to 45; eo: 44 words, all kept (NFC joins a
# decomposed ĉ; a mark with no precomposed letter stays); ru: hunspell, flags and fields stripped;
# sv: ISO-8859-1. Each language's expected words are listed beside it, by hand: lowercased,
# deduplicated, 2 to 8 characters, letters (and combining marks), with ' and - only inside.
/usr/bin/python3 - <<'PY'
import itertools, json, os
def gen(syllables, n):
    return ["".join(p) for p in itertools.islice(itertools.product(syllables, repeat=2), n)]
da = gen(["bå", "ke", "lø", "mi", "sæ", "to", "ru", "fa"], 60)
eo = gen(["ĉa", "ŝi", "ĝo", "bu", "ke", "la", "mu"], 40)
ru = gen(["ба", "ко", "ми", "ту", "ре", "ля", "жу"], 38)
sv = gen(["å", "öl", "la", "me", "ni", "so", "ku"], 49)
trees = {
    "usr/share/dict/danish": ("utf-8", da + ["Blåbær", "blåbær", "far's", "abc1", "x", "a b", "-ko", "ko-", "",
                                             "ninetynine"],
                              da + ["blåbær", "far's"]),
    "usr/share/dict/esperanto": ("utf-8", eo + ["Ŭato", "ĉu", "c\u0302evalo", "l'", "malsanulejo", "ĉu",
                                                "bu\u0331ko", "\u0331bu"],
                                 eo + ["ŭato", "ĉu", "ĉevalo", "bu\u0331ko"]),
    "usr/share/hunspell/ru_RU.dic": ("utf-8", ["45"] + [w + "/AB" for w in ru[:20]] + ru[20:] +
                                     ["Москва/Q", "ёлка\tpo:noun", "кто-то/X", "7й/A", "\tкомментарий", "кот/AB",
                                      "кот/CD st:кот", "ещё много"],
                                     ru + ["москва", "ёлка", "кто-то", "кот", "ещё"]),
    "usr/share/dict/swedish": ("iso8859-1", sv + ["Öl", "1öl", "ålder.", "öö"], sv + ["öl", "öö"]),
}
expected = {}
for path, (encoding, lines, words) in trees.items():
    os.makedirs(os.path.dirname("tree/" + path), exist_ok=True)
    with open("tree/" + path, "w", encoding=encoding) as f:
        f.write("\n".join(lines) + "\n")
    expected["/" + path] = sorted(set(words))
json.dump(expected, open("expected.json", "w"), ensure_ascii=False)
PY

# check FILE CODE: runs Python CODE with f, the HDF5 file, same(NAME, EXPECTED) (dataset NAME
# matches the numpy array EXPECTED in dtype, shape and every value), strings(NAME), expected (the
# words by file), and ids(word), an n-gram bag written here apart from the script.
check() {
    /usr/bin/python3 - "$@" <<'PY' || fail "$1: wrong contents"
import json, sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
def same(name, want):
    got = f[name][()]
    assert got.dtype == want.dtype and got.shape == want.shape and (got == want).all(), \
        f"{sys.argv[1]}: {name}: got {got.dtype} {got.shape} {got}, expected {want.dtype} {want.shape} {want}"
def strings(name):
    assert h5py.check_string_dtype(f[name].dtype).encoding == "utf-8", f"{name}: not UTF-8 strings"
    return list(f[name].asstr()[()])
def fnv1a(b):
    h = 0x811C9DC5
    for x in b:
        h = (h ^ x) * 0x01000193 % 2**32
    return h
assert [fnv1a(s) for s in (b"", b"a", b"foobar")] == [0x811C9DC5, 0xE40C292C, 0xBF9CF968]  # FNV's own test vectors
def ids(word, vocabulary=4096):
    w = f"<{word}>"
    grams = [w[i] for i in range(1, len(w) - 1)] + [w[i:i + 2] for i in range(len(w) - 1)] + \
            [w[i:i + 3] for i in range(len(w) - 2)]
    return [fnv1a(g.encode()) % vocabulary for g in grams]
expected = json.load(open("expected.json"))
exec(sys.argv[2])
PY
}

# The four languages of the tree, the others skipped with a one-line note; V = 4096, L = 8.
args=(--dict-root tree --allow-missing --words-per-language 45 --vocabulary 4096 --max-length 8 --seed 3)
"$conv" -o out/lang.h5 "${args[@]}" > summary.txt 2> note.txt || fail "conversion: $(cat note.txt)"
[ "$(wc -l < note.txt)" = 1 ] && grep -q "^wordlists-to-h5: note: skipped 58 languages whose file is missing: " note.txt \
    || fail "expected one note on the skipped languages, got: $(cat note.txt)"
grep -qx "wordlists-to-h5: out/lang.h5: 4 languages (2 train, 1 val, 1 test), 177 words, [0-9]* distinct n-grams, [0-9]* colliding" \
    summary.txt || fail "summary: $(cat summary.txt)"
[ "$(ls -A out)" = lang.h5 ] || fail "left $(ls -A out)"
check out/lang.h5 '
assert sorted(f) == ["class_names", "class_split", "labels", "tokens", "words"], sorted(f)
assert strings("class_names") == ["da Danish", "eo Esperanto", "ru Russian", "sv Swedish"]
same("class_split", np.array([2, 1, 0, 0], np.int32))
# da and sv sampled as documented: sorted words, default_rng([seed, *code]), kept in sorted order
def sample(code, words):
    rng = np.random.default_rng([3, *code.encode()])
    return [words[i] for i in np.sort(rng.choice(len(words), 45, replace=False))]
files = ["/usr/share/dict/danish", "/usr/share/dict/esperanto", "/usr/share/hunspell/ru_RU.dic", "/usr/share/dict/swedish"]
want = [sample("da", expected[files[0]]), expected[files[1]], expected[files[2]], sample("sv", expected[files[3]])]
assert [len(w) for w in want] == [45, 44, 43, 45] and "blåbær" in want[0]
words = strings("words")
for c, w in enumerate(want):
    assert words[:len(w)] == w, f"class {c}: got {words[:len(w)]}, expected {w}"
    words = words[len(w):]
same("labels", np.repeat(np.arange(4, dtype=np.int32), [len(w) for w in want]))
# tokens: the bag of every word, then -1; one word checked against ids computed by hand (in C)
rows = [ids(w) + [-1] * (25 - len(ids(w))) for w in sum(want, [])]
same("tokens", np.array(rows, np.int32))
row = sum(want, []).index("ĉu")
assert list(f["tokens"][row]) == [238, 3088, 2348, 1025, 3178, 1819, 3885] + [-1] * 18, list(f["tokens"][row])
grams = {g for w in sum(want, []) for n in (1, 2, 3) for g in [f"<{w}>"[i:i + n] for i in range(len(w) + 3 - n)]} - {"<", ">"}
per_id = np.bincount([fnv1a(g.encode()) % 4096 for g in grams])
a = dict(f.attrs)
assert a.pop("vocabulary") == 4096 and a.pop("ngrams") == "1,2,3" and a.pop("hash") == "fnv1a-32 of the UTF-8 bytes, modulo vocabulary"
assert a.pop("distinct_ngrams") == len(grams) and a.pop("collisions") == per_id[per_id > 1].sum() > 0
assert json.loads(a.pop("source")) == {c: "tree" + p for c, p in zip(["da", "eo", "ru", "sv"], files)}
assert not a, a
assert all(isinstance(f.attrs[k], np.int64) for k in ("vocabulary", "distinct_ngrams", "collisions"))'

# The same again, bit for bit; a language less changes no other's words.
"$conv" -o out/again.h5 "${args[@]}" > /dev/null 2>&1 && h5diff out/lang.h5 out/again.h5 > /dev/null \
    || fail "a second run differs"
cp -r tree tree-no-ru && rm tree-no-ru/usr/share/hunspell/ru_RU.dic
"$conv" -o out/no-ru.h5 "${args[@]/tree/tree-no-ru}" > /dev/null 2>&1 || fail "tree-no-ru"
check out/no-ru.h5 '
g = h5py.File("out/lang.h5", "r")
keep = g["labels"][()] != 2
assert list(f["words"].asstr()[()]) == list(g["words"].asstr()[()][keep])
assert (f["tokens"][()] == g["tokens"][()][keep]).all()'
rm out/*

# Refusals. refused PATTERN ARGS...: wordlists-to-h5 -o out/x.h5 ARGS... exits non-zero with exactly
# one stderr line that holds PATTERN, and leaves nothing in out/ (no temporary either).
refused() {
    pattern=$1
    shift
    refused_by "$pattern" "$conv" -o out/x.h5 "$@"
}
small=(--words-per-language 45 --max-length 8)
refused "tree/usr/share/dict/french (wfrench), " --dict-root tree "${small[@]}"
refused "tree/usr/share/hunspell/vi_VN.dic (hunspell-vi): missing (scripts/install-deps --text installs them)" \
    --dict-root tree "${small[@]}"
grep -q "ru_RU\|danish" err.txt && fail "the missing files include a present one: $(cat err.txt)"
refused "empty/: none of the dictionaries is there (scripts/install-deps --text installs them)" --dict-root empty/ --allow-missing

cp -r tree short && head -39 tree/usr/share/dict/esperanto > short/usr/share/dict/esperanto
echo "1x" >> short/usr/share/dict/esperanto
refused "short/usr/share/dict/esperanto: 39 usable words, eo needs at least 40" --dict-root short --allow-missing "${small[@]}"
cp -r tree utf8 && iconv -f iso8859-1 -t utf-8 tree/usr/share/dict/swedish > utf8/usr/share/dict/swedish
refused "utf8/usr/share/dict/swedish: is UTF-8, not iso8859-1 as the table says" --dict-root utf8 --allow-missing
cp -r tree latin1 && printf 'ok\nbra\nsm\xf8r\n' >> latin1/usr/share/dict/danish
refused "latin1/usr/share/dict/danish:73: not utf-8 (byte 0xf8)" --dict-root latin1 --allow-missing
refused "--words-per-language 0: must be from 1" --words-per-language 0

# An unwritable output directory: refused before reading anything. Root ignores mode bits, but
# sysfs refuses new files even to root.
mkdir ro && chmod 555 ro
unwritable=ro
[ "$(id -u)" != 0 ] || unwritable=/sys
code=0
"$conv" -o $unwritable/x.h5 --dict-root tree --allow-missing > /dev/null 2> err.txt || code=$?
[ $code != 0 ] && [ "$(wc -l < err.txt)" = 1 ] && grep -qx "wordlists-to-h5: $unwritable/x.h5: cannot create: Permission denied" err.txt \
    || fail "unwritable $unwritable: exit $code, $(cat err.txt)"
[ -z "$(find $unwritable -maxdepth 1 -name '*x.h5*')" ] || fail "left a file in $unwritable"
refused "out/missing/x.h5: directory out/missing does not exist" -o out/missing/x.h5 --dict-root tree --allow-missing

# A refusal keeps an existing OUT.
"$conv" -o out/keep.h5 "${args[@]}" > /dev/null 2>&1 || fail "keep.h5"
before=$(md5sum < out/keep.h5)
"$conv" -o out/keep.h5 --dict-root short --allow-missing "${small[@]}" 2> /dev/null && fail "short: accepted"
[ "$(md5sum < out/keep.h5)" = "$before" ] && [ "$(ls -A out)" = keep.h5 ] || fail "a refusal touched out/: $(ls -A out)"

# The table: ~12 test and ~8 val languages, each in a script that also trains; a script of one
# language trains; codes unique; the docstring's table says the same; install-deps --text has
# every package.
/usr/bin/python3 - "$conv" "$METATRAIN_SOURCE_DIR/scripts/install-deps" <<'PY' || fail "the language table"
import collections, importlib.machinery, importlib.util, re, sys
loader = importlib.machinery.SourceFileLoader("wordlists", sys.argv[1])
m = importlib.util.module_from_spec(importlib.util.spec_from_loader("wordlists", loader))
loader.exec_module(m)
codes = [lang[0] for lang in m.LANGUAGES]
assert len(codes) == len(set(codes)) and 55 <= len(codes) <= 65, codes
by = collections.defaultdict(lambda: ([], [], []))
for code, _, script, split, *_ in m.LANGUAGES:
    by[script][split].append(code)
counts = [sum(len(s[k]) for s in by.values()) for k in range(3)]
assert 10 <= counts[2] <= 14 and 6 <= counts[1] <= 10, counts
for script, (train, val, test) in by.items():
    assert train or not (val or test), f"{script}: val or test without training languages"
table = {}
for row in re.findall(r"^\|.*\|$", m.__doc__, re.M)[2:]:
    cells = [c.strip() for c in row.strip("|").split("|")]
    if cells[0] == "one language each":
        for code, script in re.findall(r"(\w+) \((\w+)\)", cells[1]):
            table[script] = ([code], [], [])
    else:
        table[cells[0]] = tuple(sorted(c.split()) for c in cells[1:])
assert table == {s: tuple(sorted(c) for c in v) for s, v in by.items()}, (table, dict(by))
assert re.search(rf"train \({counts[0]}\) \| val \({counts[1]}\) \| test \({counts[2]}\)", m.__doc__)
text = re.search(r'^text="([^"]*)"', open(sys.argv[2]).read(), re.M).group(1).replace("\\", " ").split()
assert {lang[4] for lang in m.LANGUAGES} | {"python3", "python3-numpy", "python3-h5py"} == set(text)
PY
pass
