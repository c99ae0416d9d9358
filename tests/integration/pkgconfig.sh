#!/bin/bash
# The installed library serves a program built out of tree: install the build into a prefix,
# compile src/examples/sinusoid_adapt.c with nothing but pkg-config's flags, and run it on a
# trained checkpoint, also under valgrind (no errors, no definite leaks). The program never
# calls MPI_Init. The library installs as libmetatrain.a: pkg-config --static adds what it needs.
. "$(dirname "$0")/lib.sh"
build=$(dirname "$METATRAIN")
cmake --install "$build" --prefix "$WORK/prefix" > install.log || fail "cmake --install: $(tail -3 install.log)"
libdir=$(ls -d "$WORK"/prefix/lib*/pkgconfig | head -1)
export PKG_CONFIG_PATH="$libdir"
flags=$(pkg-config --static --cflags --libs metatrain) || fail "pkg-config knows no metatrain in $libdir"
# A sanitizer build's library needs the sanitizers' runtime in the program too; valgrind cannot
# run such a program, and ASan checks it instead.
sanitize=""
grep -q '^METATRAIN_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" && sanitize="-fsanitize=address,undefined"
cc -std=c11 -Wall -Werror $sanitize "$METATRAIN_SOURCE_DIR/src/examples/sinusoid_adapt.c" $flags -lm -o sinusoid_adapt ||
    fail "the example does not build against the installed library ($flags)"
"$METATRAIN" train "$CONFIGS/sinusoid-maml.ini" --set train.iterations=50 --set output.dir=run --quiet > /dev/null

./sinusoid_adapt run/checkpoint.h5 > out.txt || fail "the example failed: $(cat out.txt)"
grep -q 'after 10 steps on 10 points' out.txt || fail "unexpected output: $(cat out.txt)"

if [ -n "$sanitize" ]; then
    : # the run above was checked by ASan and UBSan
elif command -v valgrind > /dev/null; then
    valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
        --show-leak-kinds=definite --suppressions="$METATRAIN_SOURCE_DIR/tests/sanitizer/valgrind.supp" \
        ./sinusoid_adapt run/checkpoint.h5 > vg.txt 2>&1 || fail "valgrind: $(tail -30 vg.txt)"
else
    fail "valgrind is not installed (scripts/install-deps --fuzz)"
fi
cat out.txt
pass
