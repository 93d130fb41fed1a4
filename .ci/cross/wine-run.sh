#!/usr/bin/env bash
# Cargo runner for x86_64-pc-windows-gnu: runs a Windows test binary under
# Wine 64-bit, in the private prefix that .ci/setup-cross.sh prepared.
#
#   CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=/abs/path/.ci/cross/wine-run.sh
#
# The prefix is ${COSTACK_WINEPREFIX:-<repo>/target/wineprefix}; any other
# WINEPREFIX in the environment is deliberately ignored, because only the
# private prefix has the bcryptprimitives.dll stand-in that Rust needs.
# The Windows program's exit code is passed through.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

export WINEPREFIX="${COSTACK_WINEPREFIX:-$root/target/wineprefix}"
export WINEDEBUG="${WINEDEBUG:--all}"
# Never offer to download Mono/Gecko (no network, no display).
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml=}"
# No display: keep Wine from trying to open windows (and from hanging on them).
unset DISPLAY WAYLAND_DISPLAY

if [[ ! -f "$WINEPREFIX/system.reg" ]]; then
    echo "wine-run.sh: no Wine prefix at $WINEPREFIX (was target/ cleaned?); run .ci/setup-cross.sh first" >&2
    exit 127
fi

# Debian 12 ships the 64-bit loader as /usr/lib/wine/wine64 (no wine64 on
# PATH); other layouts have wine64 on PATH.
if [[ -x /usr/lib/wine/wine64 ]]; then
    wine=/usr/lib/wine/wine64
    export WINELOADER="${WINELOADER:-$wine}"
elif command -v wine64 >/dev/null 2>&1; then
    wine=$(command -v wine64)
elif command -v wine >/dev/null 2>&1; then
    wine=$(command -v wine)
else
    echo "wine-run.sh: wine not found; run .ci/setup-cross.sh first" >&2
    exit 127
fi

# Start the prefix's wineserver and the Wine services (winedevice.exe, ...)
# with stdio on /dev/null before the test: otherwise the first test's Wine
# spawns them holding its stdout/stderr, which keeps a pipe reader (`| tee`,
# cargo-nextest, which then calls the test "leaky") waiting after the test
# exits. `wineserver -p10` returns 2 at once if a server is already up, else
# starts one that lingers 10 s after its last client. Costs ~0.5 s when cold.
# The lock keeps parallel runners (nextest) from racing the start.
wineserver_bin=$(command -v wineserver || echo /usr/lib/wine/wineserver64)
{
    flock -w 120 9 || { echo "wine-run.sh: timed out waiting for $WINEPREFIX/.wine-run.lock" >&2; exit 1; }
    # 9>&-: the long-lived processes must not inherit (and hold) the lock.
    if "$wineserver_bin" -p10 </dev/null >/dev/null 2>&1 9>&-; then
        "$wine" cmd /c exit </dev/null >/dev/null 2>&1 9>&- || true
    fi
} 9>"$WINEPREFIX/.wine-run.lock"

exec "$wine" "$@"
