#!/usr/bin/env bash
# Compile-only CI for the systems no machine here runs: macOS (aarch64,
# x86_64) and FreeBSD (x86_64). For each target it
#
#   cargo build -p costack --lib --target T      # codegen: the switch's
#                                                # assembly is assembled for
#                                                # Mach-O or ELF
#   cargo check -p costack --tests --examples --benches --target T
#   cargo clippy -p costack --all-targets --target T -- -D warnings
#
# with warnings as errors (a warning that only one target's cfg shows is
# caught here, not on a Mac). Nothing is linked or run: an rlib and a check
# need no linker and no C compiler for the target, only rustup's standard
# library for it, which this script installs. Their outputs are cached in
# target/<triple>/.
#
#   bash .ci/targets.sh                          # all three
#   bash .ci/targets.sh x86_64-unknown-freebsd   # a subset, by triple
set -Eeuo pipefail

CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$CI_DIR/.." && pwd)
cd "$ROOT"

STEP=start
die() { printf '\ntargets: FAILED during [%s]: %s\n' "$STEP" "$*" >&2; exit 1; }
trap 'printf "\ntargets: FAILED during [%s] (exit %s): %s\n" "$STEP" "$?" "$BASH_COMMAND" >&2' ERR

ALL=(aarch64-apple-darwin x86_64-apple-darwin x86_64-unknown-freebsd)
if (($#)); then WANT=("$@"); else WANT=("${ALL[@]}"); fi
for t in "${WANT[@]}"; do
    [[ " ${ALL[*]} " == *" $t "* ]] || die "unknown target '$t' (known: ${ALL[*]})"
done

command -v rustup >/dev/null 2>&1 || die "rustup is not installed"
STEP="rustup target add"
installed=$(rustup target list --installed)
missing=()
for t in "${WANT[@]}"; do
    grep -qx "$t" <<<"$installed" || missing+=("$t")
done
if ((${#missing[@]})); then
    rustup target add "${missing[@]}" || die "cannot install the standard library for ${missing[*]}"
fi

export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
for t in "${WANT[@]}"; do
    t0=$SECONDS
    STEP="$t: build --lib"
    echo "targets: == $STEP" >&2
    cargo build -p costack --lib --target "$t"
    STEP="$t: check --tests --examples --benches"
    echo "targets: == $STEP" >&2
    cargo check -p costack --tests --examples --benches --target "$t"
    STEP="$t: clippy --all-targets"
    echo "targets: == $STEP" >&2
    cargo clippy -p costack --all-targets --target "$t" -- -D warnings
    echo "targets: == $t passed in $((SECONDS - t0)) s" >&2
done
echo "targets: all passed (${WANT[*]}): compiled only, nothing run" >&2
