#!/bin/bash
# A bad config stops every rank before training with one message, from rank 0, naming the file,
# line and key; usage errors likewise.
. "$(dirname "$0")/lib.sh"

# expect_config_error RANKS TEXT PATTERN: the config is refused with exactly one error line.
expect_config_error() {
    printf '%b' "$2" > bad.ini
    code=0
    mpi "$1" train bad.ini --set output.dir=never > out.txt 2> err.txt || code=$?
    [ "$code" = 2 ] || fail "exit $code, expected 2, for: $2 ($(cat err.txt))"
    [ "$(grep -c 'error' err.txt)" = 1 ] || fail "expected one error line at $1 ranks, got: $(cat err.txt)"
    grep -q "$3" err.txt || fail "message lacks '$3': $(cat err.txt)"
    [ ! -e never ] || fail "work started despite the bad config"
    [ "$1" = 3 ] && report "config: $(printf '%b' "$2" | tr '\n' ' ' | sed 's/ *$//') (3 ranks)" "exit 2, printed once: \`$(message err.txt)\`"
    return 0
}

for ranks in 1 3; do
    expect_config_error $ranks "[train]\niterations = 10\n[meta]\ninner_lrr = 0.1\n" "bad.ini:4: meta.inner_lrr"
    expect_config_error $ranks "[meta]\n\ninner_lr = -0.1\n" "bad.ini:3: meta.inner_lr"
    expect_config_error $ranks "[meta]\nalgorithm = mamlx\n" "bad.ini:2: meta.algorithm"
    expect_config_error $ranks "[model]\nspec = input 1, linear 40, relu, linear 1\n" "model.spec"
done
code=0
"$METATRAIN" train no-such-file.ini 2> err.txt || code=$?
[ "$code" = 2 ] && grep -q "no-such-file.ini" err.txt || fail "a missing config: exit $code, $(cat err.txt)"
code=0
"$METATRAIN" frobnicate 2> err.txt || code=$?
[ "$code" = 2 ] || fail "an unknown verb exited $code"
"$METATRAIN" --help | grep -q "train" || fail "--help"
"$METATRAIN" --version | grep -q "metatrain" || fail "--version"
for verb in train eval info bench adapt predict; do
    "$METATRAIN" $verb --help | grep -q "usage: metatrain $verb" || fail "$verb --help"
done
pass
