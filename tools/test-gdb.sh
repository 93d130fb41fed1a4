#!/usr/bin/env bash
# Checks tools/costack-gdb.py: gdb, in batch mode, stops a program while a
# coroutine is suspended and prints that coroutine's backtrace.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v gdb >/dev/null || { echo "test-gdb: gdb is not installed" >&2; exit 1; }
cargo build -q -p costack --example suspended
out=$(gdb -q -batch -nx \
    -ex "source tools/costack-gdb.py" \
    -ex "break suspended::breakpoint_here" \
    -ex "run" \
    -ex "frame 1" \
    -ex "costack-bt co" \
    target/debug/examples/suspended 2>&1)
# The suspended coroutine's frames: three levels of recursion below the
# yield, then the coroutine's base.
n=$(grep -c "deep_in_the_coroutine" <<<"$out" || true)
if ((n < 4)) || ! grep -q "yield_now" <<<"$out"; then
    echo "$out" >&2
    echo "test-gdb: costack-bt did not show the suspended coroutine's frames" >&2
    exit 1
fi
echo "test-gdb: costack-bt shows the suspended coroutine ($n frames of deep_in_the_coroutine)"
