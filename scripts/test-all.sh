#!/usr/bin/env bash
# The whole test suite, as README.md documents it: installs what the tests
# need on a fresh Debian machine, then runs them. Fails loudly when a
# required tool cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in qemu-utils libnbd-bin python3-libnbd nbdkit fio gdb gnutls-bin libssl-dev pkg-config python3 xz-utils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "test-all: installing ${need_apt[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "test-all: need root to apt-get install ${need_apt[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
for tool in qemu-img qemu-io qemu-nbd qemu-storage-daemon nbdinfo nbdcopy nbdkit fio gdb certtool psktool python3 xz; do
    command -v "$tool" >/dev/null || { echo "test-all: required tool '$tool' is missing" >&2; exit 1; }
done

# Real clients are required: the NBD tests must not skip them.
export COSTACK_REQUIRE_CLIENTS=1
cargo test --workspace
# The benchmark servers' own tests (examples are built above, not tested).
cargo test -p costack --example http
# crossbeam-channel's own test suite (the published crate's tests/, fetched
# by cargo, never copied here) against costack::channel, on plain threads.
bash scripts/crossbeam-suite.sh
# costack-nbd with TLS (the `tls` feature, system OpenSSL): its unit tests
# and NBD over TLS against qemu, nbdinfo/nbdcopy and libnbd's Python.
cargo test -p costack-nbd --features tls --lib --test tls --test tls_list
# The yardstick (issue 23): QEMU's own iotests, fetched from Debian's source
# archive at test time, with qemu-nbd and then costack-nbd as QEMU_NBD_PROG;
# fails on a test that passes with qemu-nbd, fails with costack-nbd and is
# not in scripts/qemu-iotests-exceptions.txt. About 3 minutes, plus a
# release build of costack-nbd (about 2 minutes from scratch).
bash scripts/qemu-iotests.sh
# The tracing feature's events (zero cost, and not compiled, when off).
cargo test -p costack --features tracing --test tracing --test core
# The event loop's suites on each backend, chosen as users choose them
# (COSTACK_AIO; the default run above took io_uring where the kernel has
# it). A backend that is unavailable fails the run: never a silent skip.
for backend in io_uring epoll poll; do
    echo "test-all: event loop suites on COSTACK_AIO=$backend"
    COSTACK_AIO=$backend cargo test -p costack --test aio --test aio_threads --test aio_backend --test loop_portable --test net \
        --test net_ready --test fs --test fs_inline --test fs_no_uring --test fs_map --test sync --test sync_model \
        --test sync_loops --test join --test future --test cancel --test scope --test cancel_model \
        --test channel --test udp
done
# The tokio feature: a current_thread runtime entered on costack's loop is
# refused clearly instead of hanging.
cargo test -p costack --features tokio --test future

# The gdb helper backtraces a suspended coroutine.
tools/test-gdb.sh

# The same core suite on every other backend and under the checkers
# (cross targets under qemu-user and Wine; Valgrind; Miri, ASan and TSan on
# nightly).
bash .ci/backends.sh
bash .ci/backends.sh miri asan tsan loom
bash .ci/targets.sh # macOS (aarch64, x86_64), FreeBSD (x86_64): compiled, not run

# The docs as docs.rs builds them (nightly, `--cfg docsrs`: platform badges),
# warnings denied; nightly was installed by backends.sh above.
RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo +nightly doc -p costack --no-deps --features tracing,tokio
# Every public item rustdoc expects an example on has one.
cargo +nightly rustdoc -q -p costack --lib -- -Z unstable-options --show-coverage \
    --output-format json | python3 -c '
import json, sys
missing = {f: c["total_examples"] - c["with_examples"]
           for f, c in json.load(sys.stdin).items() if c["with_examples"] < c["total_examples"]}
if missing:
    sys.exit(f"test-all: public items without an example: {missing}")
print("test-all: every public item rustdoc counts has an example")'

# The NBD parsers under libFuzzer, for a bounded time per target.
FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash .ci/fuzz.sh
