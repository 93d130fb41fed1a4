#!/usr/bin/env bash
# Runs crossbeam-channel's own integration tests (tests/*.rs of the
# published crate, about 11,000 lines) against costack::channel, unchanged.
#
# The tests are not copied into this repository: cargo downloads the
# crate (the version costack's dev-dependencies lock) into its registry,
# and this script builds a throw-away crate under target/ named
# `crossbeam-channel` whose lib only re-exports costack::channel, with the
# suite's tests copied in from the registry and its dev-dependencies.
#
#   bash scripts/crossbeam-suite.sh            # the whole suite
#   bash scripts/crossbeam-suite.sh -- golang  # test-name filter, as for cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

# The crate's source, as cargo fetched it for costack's dev-dependencies.
cargo fetch -q
version=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys
pk = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "crossbeam-channel"]
print(pk[0]["version"])')
src=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, os, sys
pk = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "crossbeam-channel"]
print(os.path.dirname(pk[0]["manifest_path"]))')
[[ -d "$src/tests" ]] || { echo "crossbeam-suite: no tests in $src" >&2; exit 1; }

shim="$ROOT/target/crossbeam-suite"
rm -rf "$shim/tests" "$shim/src"
mkdir -p "$shim/src" "$shim/tests"
cp "$src"/tests/*.rs "$shim/tests/"
cat >"$shim/Cargo.toml" <<TOML
[package]
name = "crossbeam-channel"
version = "$version"
edition = "2021"
publish = false

[lib]
path = "src/lib.rs"

[dependencies]
costack = { path = "$ROOT/costack" }

# The suite's own dev-dependencies (crossbeam-channel's Cargo.toml).
[dev-dependencies]
crossbeam-utils = "0.8"
num_cpus = "1.13"
rand = "0.8"
signal-hook = "0.3"

[workspace]
TOML
cat >"$shim/src/lib.rs" <<'RS'
//! crossbeam-channel's API, served by costack::channel.
pub use costack::channel::*;
RS
echo "crossbeam-suite: crossbeam-channel $version's tests ($(cat "$shim"/tests/*.rs | wc -l) lines) against costack::channel" >&2
cd "$shim"
export CARGO_TARGET_DIR="$ROOT/target/crossbeam-suite-target"
if [ $# -gt 0 ]; then
    cargo test --tests "$@"
    exit
fi
# golang.rs's select2 checks that 100,000 selects allocate next to
# nothing by counting every allocation in the process meanwhile. Beside
# the other tests it counts theirs too, and on two cores it fails now and
# then for their sake; so it runs alone, after the rest.
cargo test --tests -- --skip select2::main
cargo test --test golang -- --exact select2::main
