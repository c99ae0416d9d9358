#!/bin/bash
# scripts/movielens-to-h5 and scripts/synthetic-ratings: both MovieLens layouts (ml-100k's u.data,
# u.item and u.genre; the newer ratings.csv and movies.csv) become exactly the grouped format with
# token inputs; every bad input is refused with one line naming the file and line, leaving no
# output; the synthetic population is the same bytes for the same seed and its users matter.
. "$(dirname "$0")/lib.sh"

conv="$METATRAIN_SOURCE_DIR/scripts/movielens-to-h5"
synth="$METATRAIN_SOURCE_DIR/scripts/synthetic-ratings"
mkdir out

# check FILE CODE: runs Python CODE with f, the HDF5 file, same(NAME, EXPECTED) (dataset NAME
# matches the numpy array EXPECTED in dtype, shape and every value) and strings(NAME).
check() {
    /usr/bin/python3 - "$@" <<'PY' || fail "$1: wrong contents"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
def same(name, expected):
    got = f[name][()]
    assert got.dtype == expected.dtype and got.shape == expected.shape and (got == expected).all(), \
        f"{sys.argv[1]}: {name}: got {got.dtype} {got.shape} {got}, expected {expected.dtype} {expected.shape} " \
        f"{expected}"
strings = lambda name: [s.decode() for s in f[name][()]]
i32 = lambda v: np.array(v, np.int32)
i64 = lambda v: np.array(v, np.int64)
f32 = lambda v: np.array(v, np.float32)
def split(users, seed, fractions):  # the documented permutation
    s, perm = np.full(users, 2, np.int32), np.random.default_rng(seed).permutation(users)
    train = round(fractions[0] * users)
    s[perm[:train]], s[perm[train:train + round(fractions[1] * users)]] = 0, 1
    return s
exec(sys.argv[2])
PY
}

# ml-100k: u.item in Latin-1 (Café), a genre-less "unknown" movie, u.genre with its trailing blank
# line, u.data unsorted with a repeated (user, item) whose later rating wins and a user (9) below
# --min-ratings 2, whose movie 5 is then no item.
mkdir old
/usr/bin/python3 - <<'PY'
names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
         "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
open("old/u.genre", "w").write("".join(f"{n}|{i}\n" for i, n in enumerate(names)) + "\n")
def item(i, title, *genres):
    flags = "|".join("1" if n in genres else "0" for n in names)
    return f"{i}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?{i}|{flags}\n"
open("old/u.item", "wb").write((item(1, "Toy Story (1995)", "Animation", "Children's", "Comedy")
    + item(2, "Café au lait (1993)", "Comedy") + item(3, "Heat (1995)", "Action", "Crime", "Thriller")
    + "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n" + item(5, "Unrated (1990)", "Drama")).encode("latin-1"))
rows = [(7, 1, 4, 100), (2, 1, 5, 5), (7, 2, 3, 100), (2, 2, 1, 10), (9, 5, 2, 1), (2, 1, 2, 20), (7, 3, 5, 50)]
open("old/u.data", "w").writelines("\t".join(map(str, r)) + "\n" for r in rows)
PY
"$conv" old -o old.h5 --min-ratings 2 > summary.txt 2> err.txt || fail "ml-100k: $(cat err.txt)"
grep -q "dropped 1 of 3 users with fewer than 2 ratings (1 ratings)" err.txt || fail "ml-100k: no drop: $(cat err.txt)"
grep -q "1 repeated (user, item)" err.txt || fail "ml-100k: repeat not reported: $(cat err.txt)"
grep -q "2 users (1 train, 0 val, 1 test), 3 items, 19 genres, 5 ratings" summary.txt ||
    fail "ml-100k summary: $(cat summary.txt)"
check old.h5 '
names = ["genres", "group", "group_split", "item_ids", "item_titles", "targets", "tokens", "user_ids"]
assert sorted(f) == names, sorted(f)
# items 1, 2, 3 are tokens 0, 1, 2; genre g is 3 + g (Animation 3, Children 4, Comedy 5, Action 1, Crime 6, Thriller 16)
toy, cafe, heat = [0, 6, 7, 8], [1, 8, -1, -1], [2, 4, 9, 19]
# user 2 (group 0): item 2 at 10, item 1 at 20 (rating 2, not the earlier 5); user 7: item 3 at 50, items 1, 2 at 100
same("tokens", i32([cafe, toy, heat, toy, cafe]))
same("targets", f32([[1], [2], [5], [4], [3]]))
same("group", i32([0, 0, 1, 1, 1]))
same("group_split", split(2, 1, (0.7, 0.1, 0.2)))
same("user_ids", i64([2, 7]))
same("item_ids", i64([1, 2, 3]))
assert strings("item_titles") == ["Toy Story (1995)", "Café au lait (1993)", "Heat (1995)"], strings("item_titles")
assert strings("genres")[:5] == ["unknown", "Action", "Adventure", "Animation", "Children\x27s"]
assert len(strings("genres")) == 19
assert f.attrs["vocabulary"] == 22 and f.attrs["vocabulary"].dtype == np.int64, f.attrs["vocabulary"]
assert "u.data" in f.attrs["source"], f.attrs["source"]'
# Without u.genre: the same, from ml-100k's fixed list.
mkdir old-nogenre && cp old/u.data old/u.item old-nogenre/
"$conv" old-nogenre -o old-nogenre.h5 --min-ratings 2 > /dev/null 2>&1 || fail "ml-100k without u.genre"
for d in tokens targets group genres item_titles; do
    h5diff -q old.h5 old-nogenre.h5 /$d /$d || fail "ml-100k without u.genre: /$d differs"
done

# The newer layout: a quoted title with a comma, half stars, "(no genres listed)", genres named
# in movies.csv (sorted: Adventure Animation Children Comedy Drama Fantasy Romance), user 3 below
# --min-ratings 3 with the only rating of movie 11.
mkdir new
printf '%s\n' 'movieId,title,genres' '1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy' \
    '2,"American President, The (1995)",Comedy|Drama|Romance' '10,Nothing (2019),(no genres listed)' \
    '11,Unrated (2000),Drama' > new/movies.csv
printf '%s\n' 'userId,movieId,rating,timestamp' 1,1,3.5,1000 1,2,4.0,900 1,10,0.5,1000 2,1,5.0,10 2,2,2.5,20 \
    2,10,3,30 3,2,4.5,5 3,11,1,6 > new/ratings.csv
"$conv" new -o new.h5 --min-ratings 3 --split 0.5,0.5,0 --seed 3 > summary.txt 2> err.txt ||
    fail "ratings.csv: $(cat err.txt)"
grep -q "dropped 1 of 3 users with fewer than 3 ratings (2 ratings)" err.txt || fail "ratings.csv: $(cat err.txt)"
grep -q "2 users (1 train, 1 val, 0 test), 3 items, 7 genres, 6 ratings, mean rating 3.083" summary.txt ||
    fail "ratings.csv summary: $(cat summary.txt)"
check new.h5 '
toy, president, nothing = [0, 3, 4, 5, 6, 8], [1, 6, 7, 9, -1, -1], [2, -1, -1, -1, -1, -1]
same("tokens", i32([president, toy, nothing, toy, president, nothing]))
same("targets", f32([[4], [3.5], [0.5], [5], [2.5], [3]]))
same("group", i32([0, 0, 0, 1, 1, 1]))
same("group_split", split(2, 3, (0.5, 0.5, 0)))
same("user_ids", i64([1, 2]))
same("item_ids", i64([1, 2, 10]))
assert strings("item_titles") == ["Toy Story (1995)", "American President, The (1995)", "Nothing (2019)"]
assert strings("genres") == ["Adventure", "Animation", "Children", "Comedy", "Drama", "Fantasy", "Romance"]
assert f.attrs["vocabulary"] == 10'

# Many rows: several parsing blocks, then a bad rating deep in the file, named by its line.
/usr/bin/python3 - <<'PY'
import numpy as np
r = np.random.default_rng(0)
n = 900_000
rows = np.c_[r.integers(1, 2001, n), r.integers(1, 11, n), r.integers(1, 11, n), r.integers(0, 10**9, n)]
with open("big-ratings.csv", "w") as f:
    f.write("userId,movieId,rating,timestamp\n")
    f.writelines(f"{u},{m},{h / 2},{t}\n" for u, m, h, t in rows.tolist())
np.save("big.npy", rows)
PY
mkdir big && mv big-ratings.csv big/ratings.csv
{ echo movieId,title,genres; printf '%s,Movie,Drama\n' {1..10}; } > big/movies.csv
"$conv" big -o big.h5 --min-ratings 1 > /dev/null 2>&1 || fail "a large ratings.csv"
check big.h5 '
rows = np.load("big.npy")
key = rows[:, 0] * 100 + rows[:, 1]
last = {}
for i, k in enumerate(key.tolist()):  # the latest rating of each (user, item), later lines win ties
    if k not in last or rows[i, 3] >= rows[last[k], 3]:
        last[k] = i
kept = np.array(sorted(last.values(), key=lambda i: (rows[i, 0], rows[i, 3], rows[i, 1])))
same("targets", f32(rows[kept, 2:3] / 2))
same("tokens", i32(np.c_[rows[kept, 1] - 1, np.full(len(kept), 10)]))
same("user_ids", i64(np.unique(rows[:, 0])))'

# Refusals. refused PATTERN DIR [ARGS...]: movielens-to-h5 DIR -o out/x.h5 ARGS... exits non-zero
# with one stderr line holding PATTERN, and leaves nothing in out/ (no temporary either).
refused() {
    pattern=$1
    shift
    refused_by "$pattern" "$conv" "$@"
}
# bad NAME FROM FILE CONTENT PATTERN: NAME, a copy of the directory FROM with FILE's content
# replaced (printf %b escapes), is refused with PATTERN.
bad() {
    rm -rf "$1" && cp -r "$2" "$1" && printf '%b' "$4" > "$1/$3"
    refused "$5" "$1" -o out/x.h5
}
h='userId,movieId,rating,timestamp\n'
bad r1 old u.data '7\t1\t4\t100\n2\t1\t5\t5\n7\t2\t6\t100\n' "r1/u.data:3: rating 6 is outside [0.5, 5]"
bad r2 old u.data '7\t1\t4\t100\n2\t1\t\t5\n'              "r2/u.data:2: rating '' is not a number"
bad r3 old u.data '7\t1\t4\t100\n2\t4\t5\t5\n'             "r3/u.data:2: item 4 is not in r3/u.item"
bad r4 old u.data '7\t1\t4\t100\n2\t1\t5\n'                "r4/u.data:2: expected 4 fields"
bad r5 old u.data '7\t1\t4\t100\nx\t1\t5\t5\n'             "r5/u.data:2: user id 'x' is not an integer"
bad r6 old u.item '1|Toy|d||url|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n' "r6/u.item:1: expected 24 fields"
bad r7 new ratings.csv "${h}1,1,3.5,1000\n\n1,2,x,900\n"   "r7/ratings.csv:4: rating 'x' is not a number"
bad r8 new ratings.csv "${h}1,1,0.4,1000\n"                "r8/ratings.csv:2: rating 0.4 is outside [0.5, 5]"
bad r9 new ratings.csv "${h}1,1,3,1000\n1,99,3,1000\n"     "r9/ratings.csv:3: item 99 is not in r9/movies.csv"
bad r10 new ratings.csv 'user,movie,rating,time\n1,1,3,1000\n' "r10/ratings.csv:1: expected the header userId,movieId"
bad r11 new movies.csv 'movieId,title,genres\n1,Toy Story,Comedy,extra\n' "r11/movies.csv:2: expected 3 fields, got 4"
bad r12 new movies.csv 'movieId,title,genres\n1,Caf\xe9,Comedy\n' "r12/movies.csv:2: not UTF-8"
bad both new u.data '1\t1\t3\t5\n' "both: both ml-100k files (u.data) and newer ones"
cp -r big r13 && sed '890001s/,[^,]*,\([^,]*\)$/,7,\1/' big/ratings.csv > r13/ratings.csv # in the second block
refused "r13/ratings.csv:890001: rating 7 is outside [0.5, 5]" r13 -o out/x.h5
mkdir half && cp new/ratings.csv half/ && refused "half/movies.csv: missing" half -o out/x.h5
mkdir empty && refused "empty: neither u.data" empty -o out/x.h5
refused "out/missing/x.h5: cannot create: No such file or directory" old -o out/missing/x.h5
: > plain && refused "plain/x.h5: cannot create: Not a directory" old -o plain/x.h5
refused "old: no user has 4 ratings" old -o out/x.h5 --min-ratings 4
cp new.h5 out/keep.h5
"$conv" r1 -o out/keep.h5 2> /dev/null && fail "r1: accepted"
h5diff -q new.h5 out/keep.h5 || fail "a refusal changed the existing output"
rm out/keep.h5

# synthetic-ratings: the same bytes for the same seed, other ones for another; the format; and
# with the defaults, a user's taste matters (the item mean is far from the oracle).
"$synth" -o s1.h5 --users 300 --items 200 --seed 5 > /dev/null || fail "synthetic-ratings"
"$synth" -o s2.h5 --users 300 --items 200 --seed 5 > /dev/null || fail "synthetic-ratings, again"
cmp -s s1.h5 s2.h5 || fail "synthetic-ratings: two runs with the same seed differ"
h5diff s1.h5 s2.h5 > /dev/null || fail "synthetic-ratings: two runs with the same seed differ in a dataset"
"$synth" -o s3.h5 --users 300 --items 200 --seed 6 > /dev/null || fail "synthetic-ratings --seed 6"
cmp -s s1.h5 s3.h5 && fail "synthetic-ratings: --seed 6 gives the bytes of --seed 5"
check s1.h5 '
assert sorted(f) == ["genres", "group", "group_split", "item_ids", "targets", "tokens", "user_ids"], sorted(f)
tokens, group, y = f["tokens"][()], f["group"][()], f["targets"][()]
n = len(group)
assert tokens.dtype == np.int32 and tokens.ndim == 2 and 2 <= tokens.shape[1] <= 5 and tokens.shape[0] == n
assert y.dtype == np.float32 and y.shape == (n, 1) and set(np.unique(y)) <= {1, 2, 3, 4, 5}
assert group.dtype == np.int32 and (np.diff(group) >= 0).all() and group[0] == 0 and group[-1] == 299
counts = np.bincount(group)
assert counts.min() >= 20 and counts.max() <= 100, (counts.min(), counts.max())
assert (tokens[:, 0] >= 0).all() and (tokens[:, 0] < 200).all()
genres = tokens[:, 1:]
assert (((genres >= 200) & (genres < 218)) | (genres == -1)).all()
assert (np.diff(genres == -1, axis=1) >= 0).all(), "padding only at the end"
assert f["group_split"].dtype == np.int32 and list(np.bincount(f["group_split"][()])) == [210, 30, 60]
same("item_ids", i64(range(200)))
same("user_ids", i64(range(300)))
assert strings("genres") == [f"genre{g:02d}" for g in range(18)]
assert f.attrs["vocabulary"] == 218 and f.attrs["vocabulary"].dtype == np.int64
for item in range(200):  # an item has one bag
    bags = np.unique(tokens[tokens[:, 0] == item], axis=0)
    assert len(bags) <= 1, bags'
"$synth" -o out/x.h5 --users 300 --items 200 --min-per-user 300 2> err.txt > /dev/null &&
    fail "synthetic-ratings: more ratings per user than items"
[ "$(wc -l < err.txt)" = 1 ] || fail "synthetic-ratings: expected one line on stderr, got: $(cat err.txt)"
[ -z "$(ls -A out)" ] || fail "synthetic-ratings: a refusal left $(ls -A out)"
"$synth" -o out/missing/x.h5 2> err.txt > /dev/null && fail "synthetic-ratings: no directory"
grep -q "^synthetic-ratings: out/missing/x.h5: cannot write: No such file" err.txt || fail "$(cat err.txt)"
"$synth" -o report.h5 --report > report.txt || fail "synthetic-ratings --report"
/usr/bin/python3 - <<'PY' || fail "synthetic-ratings --report: $(cat report.txt)"
import re
mse = dict(re.findall(r"MSE (.+?) ([0-9.]+)$", open("report.txt").read(), re.M))
glob, item, oracle = float(mse["global mean"]), float(mse["item mean"]), float(mse["oracle (knows u, b_u)"])
assert glob > item > oracle + 0.3 and oracle > 0, mse
PY
pass
