#!/bin/bash
# scripts/csv-to-h5: CSV tables (with and without header, quoted fields, labels, groups, stdin,
# several streaming chunks) become exactly the grouped format's arrays; every bad input is refused
# with one line naming the file, line and column, leaving no output; metatrain trains on the result.
. "$(dirname "$0")/lib.sh"

conv="$METATRAIN_SOURCE_DIR/scripts/csv-to-h5"
mkdir out

# check FILE CODE: runs Python CODE with f, the HDF5 file, and same(NAME, EXPECTED), which demands
# that dataset NAME match the numpy array EXPECTED in dtype, shape and every value.
check() {
    /usr/bin/python3 - "$@" <<'PY' || fail "$1: wrong contents"
import random, sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
def same(name, expected):
    got = f[name][()]
    assert got.dtype == expected.dtype and got.shape == expected.shape and (got == expected).all(), \
        f"{sys.argv[1]}: {name}: got {got.dtype} {got.shape} {got}, expected {expected.dtype} {expected.shape} {expected}"
def names(*expected):
    assert sorted(f) == sorted(expected), f"{sys.argv[1]}: datasets {sorted(f)}, expected {sorted(expected)}"
f32 = lambda v: np.array(v, np.float32)
i32 = lambda v: np.array(v, np.int32)
exec(sys.argv[2])
PY
}

# With a header: every column is a feature by default, parsed as Python's float() would.
printf 'a,b,c\n1,2,3\n4.5,-6, 7e-1 \n\n-0,1e-3,+8\n' > header.csv
"$conv" -o header.h5 header.csv || fail "header.csv"
check header.h5 '
names("features")
same("features", f32([[1, 2, 3], [4.5, -6, 0.7], [-0.0, 1e-3, 8]]))
assert list(f["features"].attrs["columns"]) == ["a", "b", "c"]'

# Without a header: columns are 0-based indices; targets keep their --target order.
printf '1,2,3\n4,5,6\n' > plain.csv
"$conv" --no-header --target 2 --target 0 -o plain.h5 plain.csv || fail "plain.csv"
check plain.h5 '
names("features", "targets")
same("features", f32([[2], [5]]))
same("targets", f32([[3, 1], [6, 4]]))'

# Quoted fields: delimiters, quotes and a newline inside them; --features picks and orders columns.
printf '"x, first","say ""hi""",note,y\n"1.5","2",plain,"10"\n"-3"," 4 ","two\nlines",20\n' > quoted.csv
"$conv" --features 'say "hi"' --target y -o quoted.h5 quoted.csv || fail "quoted.csv"
check quoted.h5 '
same("features", f32([[2], [4]]))
same("targets", f32([[10], [20]]))'
tr , ';' < plain.csv > semicolon.csv
"$conv" --no-header --delimiter ';' --features 1,0 -o semicolon.h5 semicolon.csv || fail "semicolon.csv"
check semicolon.h5 'names("features"); same("features", f32([[2, 1], [5, 4]]))'

# A label column: int32 [N] class labels.
printf 'x1,cls,x2\n0.5,2,1\n0.25,0,-1\n1,1,0\n' > label.csv
"$conv" --label cls -o label.h5 label.csv || fail "label.csv"
check label.h5 '
names("features", "targets")
same("features", f32([[0.5, 1], [0.25, -1], [1, 0]]))
same("targets", i32([2, 0, 1]))'

# A group column (MovieLens-like): ids in order of first appearance, all train; the same from stdin.
printf 'user,movie,rating\nalice,7,4\n"bob",3,5\n alice ,9,1\ncarol,7,2\n' > ratings.csv
"$conv" --group user --target rating -o ratings.h5 ratings.csv || fail "ratings.csv"
check ratings.h5 '
names("features", "targets", "group", "group_split", "group_names")
same("features", f32([[7], [3], [9], [7]]))
same("targets", f32([[4], [5], [1], [2]]))
same("group", i32([0, 1, 0, 2]))
same("group_split", i32([0, 0, 0]))
assert [s.decode() for s in f["group_names"][()]] == ["alice", "bob", "carol"]'
"$conv" --group user --target rating -o stdin.h5 - < ratings.csv || fail "stdin"
h5diff ratings.h5 stdin.h5 > /dev/null || fail "stdin: differs from the file's conversion"

# --split-fractions: the groups shuffled by random.Random(seed), as documented.
/usr/bin/python3 -c 'print("g,x"); [print(f"g{i % 10},{i}") for i in range(40)]' > ten.csv
"$conv" --group g --split-fractions 0.6,0.2,0.2 --seed 7 -o ten.h5 ten.csv || fail "ten.csv"
check ten.h5 '
order = list(range(10))
random.Random(7).shuffle(order)
split = np.zeros(10, np.int32)
split[order[6:8]], split[order[8:]] = 1, 2
same("group_split", split)
same("group", i32([i % 10 for i in range(40)]))'

# Many rows: several streaming chunks, values and groups intact across their boundaries.
/usr/bin/python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((40000, 3)).astype(np.float32)
with open("many.csv", "w") as f:
    f.write("u,x0,x1,y,x2\n")
    f.writelines(f"user{i * 7919 % 1000},{float(x[i, 0])!r},{float(x[i, 1])!r},{i},{float(x[i, 2])!r}\n" for i in range(40000))
np.save("many.npy", x)
PY
"$conv" --group u --target y -o many.h5 many.csv || fail "many.csv"
check many.h5 '
same("features", np.load("many.npy"))
same("targets", f32(np.arange(40000)[:, None]))
first = {}
same("group", i32([first.setdefault(i * 7919 % 1000, len(first)) for i in range(40000)]))'

# Refusals. refused PATTERN ARGS...: csv-to-h5 -o out/x.h5 ARGS... exits non-zero with exactly one
# stderr line that holds PATTERN (file, line, column), and leaves nothing in out/ (no temporary).
refused() {
    pattern=$1
    shift
    refused_by "$pattern" "$conv" -o out/x.h5 "$@"
}
bad() { # NAME CONTENT: writes CONTENT, with its \n escapes, to NAME
    printf '%b' "$2" > "$1"
}
bad word.csv 'a,b\n1,2\n3,x\n';               refused "word.csv:3: column b: not a number" word.csv
bad empty-value.csv 'a,b\n1,\n';              refused "empty-value.csv:2: column b: empty" empty-value.csv
bad nan.csv 'a,b\n1,2\nnan,3\n';              refused "nan.csv:3: column a: not finite" nan.csv
bad inf.csv 'a,b\n1,2\n3,-inf\n';             refused "inf.csv:3: column b: not finite" inf.csv --target b
bad big.csv 'a,b\n1,1e39\n';                  refused "big.csv:2: column b: out of float32 range" big.csv
bad width.csv 'a,b\n1,2\n3,4,5\n';            refused "width.csv:3: expected 2 columns, got 3" width.csv
bad short.csv '1,2\n3\n';                     refused "short.csv:2: expected 2 columns, got 1" --no-header short.csv
refused "ratings.csv:1: column nope: not in the header" --target nope ratings.csv
refused "plain.csv:1: column 7: no such column" --no-header --label 7 plain.csv
refused "ratings.csv:1: column rating: in --features" --features movie,rating --target rating ratings.csv
bad neg.csv 'x,c\n1,0\n2,-1\n';               refused "neg.csv:3: column c: not a class label" --label c neg.csv
bad frac.csv 'x,c\n1,0.5\n';                  refused "frac.csv:2: column c: not a class label" --label c frac.csv
bad huge.csv 'x,c\n1,2147483648\n';           refused "huge.csv:2: column c: not a class label" --label c huge.csv
bad nogroup.csv 'g,x\na,1\n ,2\n';            refused "nogroup.csv:3: column g: empty group" --group g nogroup.csv
: > empty.csv;                                refused "empty.csv: no data rows" empty.csv
bad header-only.csv 'a,b\n\n';                refused "header-only.csv: no data rows" header-only.csv
bad twice.csv 'a,b,a\n1,2,3\n';               refused "twice.csv:1: column a: appears twice" twice.csv
# The line of the first row of a record, after a quoted field spanning lines, and the first error
# in file order though a later row of the same chunk is also bad.
bad inrecord.csv 'a,b\n1,2\n"3\n",x\n';        refused "inrecord.csv:3: column b: not a number" inrecord.csv
bad multiline.csv 'a,note\n1,"x\ny\nz"\n2,ok\nq,ok\n3\n'; refused "multiline.csv:6: column a: not a number" --features a multiline.csv
sed '30002s/,[^,]*$/,oops/' many.csv > late.csv; refused "late.csv:30002: column x2: not a number" --group u late.csv
refused "<stdin>:3: column b" - < word.csv
bad latin1.csv 'a,b\n1,2\n3,\xe9\n';          refused "latin1.csv:3: not UTF-8 (byte 0xe9" latin1.csv
refused "out/missing/x.h5: directory out/missing does not exist" -o out/missing/x.h5 header.csv
refused "--target and --label are exclusive" --target a --label b header.csv
"$conv" -o header.h5 word.csv 2> /dev/null && fail "word.csv: accepted"
check header.h5 'same("features", f32([[1, 2, 3], [4.5, -6, 0.7], [-0.0, 1e-3, 8]]))' # a refusal keeps the old OUT

# metatrain trains on a converted grouped regression table: 4 groups of 30 rows, y = w_g . x + b_g.
/usr/bin/python3 - <<'PY'
import numpy as np
rng = np.random.default_rng(1)
with open("grouped.csv", "w") as f:
    f.write("user,x0,x1,y\n")
    for g in range(4):
        w, b = rng.standard_normal(2), rng.standard_normal()
        for x in rng.standard_normal((30, 2)):
            f.write(f"user{g},{x[0]:.6f},{x[1]:.6f},{x @ w + b:.6f}\n")
PY
"$conv" --group user --target y -o grouped.h5 grouped.csv || fail "grouped.csv"
"$METATRAIN" train --set task.kind=grouped --set task.path=grouped.h5 --set task.shots=5 --set task.queries=5 \
    --set 'model.spec=input 2, linear 8, relu, linear 1, mse' --set train.iterations=5 --set train.meta_batch=2 \
    --set output.dir=run --quiet > train.txt 2>&1 || fail "metatrain refused the converted file: $(cat train.txt)"
[ -f run/checkpoint.h5 ] || fail "metatrain wrote no checkpoint: $(cat train.txt)"
pass
