#!/usr/bin/env bash
# Fuzzes the costack-nbd protocol parsers (handshake, request reader, proto
# decoders) with cargo-fuzz / libFuzzer for a bounded time per target.
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 30)
#   FUZZ_TARGETS    space-separated targets (default: every target)
#   FUZZ_TOOLCHAIN  nightly toolchain to build with (default: nightly)
#   FUZZ_ARGS       extra libFuzzer arguments
#
# Installs cargo-fuzz (and the nightly toolchain) when missing and fails
# loudly if it cannot. A crash fails the script; the reproducer is left in
# costack-nbd/fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz run
# <target> <file>). The growing corpus lives in costack-nbd/fuzz/corpus/
# (not versioned); costack-nbd/fuzz/seeds/ holds versioned seed inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

secs=${FUZZ_SECONDS:-30}
toolchain=${FUZZ_TOOLCHAIN:-nightly}

die() {
    echo "fuzz: $*" >&2
    exit 1
}

command -v rustup >/dev/null || die "rustup is required (cargo-fuzz needs a nightly toolchain)"
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the $toolchain toolchain"
    rustup toolchain install "$toolchain" --profile minimal ||
        die "cannot install the $toolchain toolchain"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked || die "cannot install cargo-fuzz"
    cargo fuzz --version >/dev/null 2>&1 || die "cargo-fuzz installed but 'cargo fuzz' does not run"
fi

cd costack-nbd
targets=${FUZZ_TARGETS:-$(cargo +"$toolchain" fuzz list)}
[ -n "$targets" ] || die "no fuzz targets found"

echo "== cargo fuzz build"
cargo +"$toolchain" fuzz build

for t in $targets; do
    echo "== fuzz $t for ${secs}s"
    mkdir -p "fuzz/corpus/$t"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of arguments
    if ! cargo +"$toolchain" fuzz run "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 ${FUZZ_ARGS:-}; then
        echo "fuzz: target '$t' failed; reproducer(s):" >&2
        ls -l "fuzz/artifacts/$t" >&2 || true
        exit 1
    fi
done
echo "fuzz: all targets ran ${secs}s without a finding"
