#!/usr/bin/env bash
# Runs costack's core suite (tests/core.rs, tests/overflow.rs,
# tests/backends.rs) on every switch backend but the default one (plain
# `cargo test` covers x86_64 asm), and the checkers:
#
#   x86_64 Linux, ucontext      cargo test --features ucontext (+ sync, aio, net, fs)
#   aarch64 Linux, asm          under qemu-aarch64-static
#   riscv64 Linux, asm          under qemu-riscv64-static
#   x86_64 Windows, asm         under Wine
#   x86_64 Windows, fibers      under Wine, --features fibers
#   x86_64 Linux, thread        --features thread-backend (OS thread + baton)
#   x86_64 Linux, asm           tests/core.rs under Valgrind memcheck (stacks
#                               are registered with client requests)
#
# Needs what .ci/setup-cross.sh installs (it is run first, and is quick when
# everything is in place); fails loudly when a tool is missing. Cross builds
# are cached in target/<triple>/.
#
#   bash .ci/backends.sh            # all of the above
#   bash .ci/backends.sh miri       # sync, generator, cancel, scope, core tests under Miri (thread backend;
#                                   # opt-in: needs nightly, minutes)
#   bash .ci/backends.sh asan       # core tests under AddressSanitizer with
#                                   # the fiber annotations (opt-in: nightly)
#   bash .ci/backends.sh tsan       # the same under ThreadSanitizer (opt-in:
#                                   # nightly, rust-src; builds std, minutes),
#                                   # with the channels' cross-thread tests
#   bash .ci/backends.sh loom       # the loom model of the channels' hand-off
#                                   # (tests/channel_loom.rs; stable, ~1 min)
#   bash .ci/backends.sh linux-ucontext aarch64 ...   # a subset, by name
set -Eeuo pipefail

CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$CI_DIR/.." && pwd)
cd "$ROOT"

STEP=start
die() { printf '\nbackends: FAILED during [%s]: %s\n' "$STEP" "$*" >&2; exit 1; }
trap 'printf "\nbackends: FAILED during [%s] (exit %s): %s\n" "$STEP" "$?" "$BASH_COMMAND" >&2' ERR

ALL=(linux-ucontext thread valgrind aarch64 riscv64 windows-asm windows-fibers)
# Opt-in (not in the default list; miri, asan and tsan need nightly): miri asan tsan loom
if (($#)); then WANT=("$@"); else WANT=("${ALL[@]}"); fi
for w in "${WANT[@]}"; do
    [[ " ${ALL[*]} miri asan tsan loom " == *" $w "* ]] || die "unknown backend '$w' (known: ${ALL[*]})"
done

STEP="setup-cross"
mkdir -p "$ROOT/target"
COSTACK_SKIP_MIRI=1 bash "$CI_DIR/setup-cross.sh" >/dev/null 2>"$ROOT/target/setup-cross.log" \
    || { cat "$ROOT/target/setup-cross.log" >&2; die "setup-cross.sh failed"; }
# shellcheck source=.ci/cross-env.sh disable=SC1091
source "$CI_DIR/cross-env.sh"

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed (run .ci/setup-cross.sh)"; }

# qemu-user ignores MADV_GUARD_INSTALL, so under it costack falls back to
# mprotect guards: two mappings per stack. The 100k-coroutine test needs
# more than the default vm.max_map_count (65530) then.
ORIG_MAP_COUNT=$(cat /proc/sys/vm/max_map_count)
restore_map_count() {
    if [[ $(cat /proc/sys/vm/max_map_count) != "$ORIG_MAP_COUNT" ]]; then
        echo "$ORIG_MAP_COUNT" >/proc/sys/vm/max_map_count 2>/dev/null || true
    fi
}
trap restore_map_count EXIT
# raise_map_count N WHY: at least N mappings, or skip the 100k test.
raise_map_count() {
    local cur want=$1
    cur=$(cat /proc/sys/vm/max_map_count)
    SKIP_BIG=()
    if ((cur < want)); then
        if echo "$want" >/proc/sys/vm/max_map_count 2>/dev/null; then
            echo "backends: raised vm.max_map_count $cur -> $want for $2 (restored on exit)" >&2
        else
            SKIP_BIG=(--skip a_hundred_thousand_live_coroutines)
            echo "backends: vm.max_map_count is $cur and read-only: skipping the 100k-coroutine test ($2)" >&2
        fi
    fi
}
SKIP_BIG=()

run() { # name, cargo args..., -- test args...
    local name=$1; shift
    STEP="$name"
    echo "backends: == $name" >&2
    local t0=$SECONDS
    cargo test -p costack "$@"
    echo "backends: == $name passed in $((SECONDS - t0)) s" >&2
}

TESTS=(--test core --test overflow --test backends)
# On Linux targets the locks, the event loop and its I/O run on every
# backend too (io_uring falls back to the thread pool under qemu-user).
LINUX_TESTS=("${TESTS[@]}" --test sync --test sync_model --test sync_loops --test aio --test aio_threads --test net --test fs)
# On Windows the event loop (WSAPoll), TCP, the locks, generators and
# CoFutures run the suites that are written for every system.
WINDOWS_TESTS=(--test loop_portable --test join --test sync_loops --test sync --test sync_model --test generator --test future)
for w in "${WANT[@]}"; do
    case "$w" in
        linux-ucontext)
            run "$w" --features ucontext "${LINUX_TESTS[@]}"
            ;;
        thread)
            # The 100k-coroutine test would start 100k OS threads; an
            # overflow is std's thread-overflow abort here, not costack's.
            # The locks and generators too: their per-thread state must be
            # the logical thread's (a coroutine is an OS thread here).
            run "$w" --features thread-backend --test core --test backends \
                --test sync --test sync_model --test generator \
                -- --skip a_hundred_thousand_live_coroutines
            ;;
        miri)
            need rustup
            STEP="$w (setup)"
            bash "$CI_DIR/setup-cross.sh" >/dev/null 2>"$ROOT/target/setup-cross.log" \
                || { cat "$ROOT/target/setup-cross.log" >&2; die "setup-cross.sh (with miri) failed"; }
            # Tests that make thousands of coroutines (threads, under Miri)
            # take too long interpreted; the rest covers every code path of
            # the core. The overflow test's child cannot run under Miri.
            STEP="$w"
            echo "backends: == $w" >&2
            # The locks first: their intrusive waiter lists are the riskiest
            # unsafe code of the crate. Then the channels touched from
            # several threads (waiter lists, the ring, rendezvous packets).
            cargo +nightly miri test -p costack --test sync --test sync_model --test generator
            # Cancellation on a real loop (epoll, edge-triggered under Miri):
            # the wait points, timeouts, shields and scopes.
            cargo +nightly miri test -p costack --test cancel --test scope
            MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-disable-isolation" \
                cargo +nightly miri test -p costack --test channel_threads
            cargo +nightly miri test -p costack --test core -- \
                --skip a_hundred_thousand_live_coroutines --skip chain_of_25000 \
                --skip nesting_to_depth_1000 --skip coroutines_on_several_threads \
                --skip backtrace
            ;;
        asan)
            grep -q '^nightly' <<<"$(rustup toolchain list)" || die "no nightly toolchain (run .ci/setup-cross.sh)"
            STEP="$w"
            echo "backends: == $w" >&2
            # Without the annotations ASan warns that it ignores
            # __asan_handle_no_return on an unknown stack; any ASan report
            # fails the run.
            out=$(RUSTFLAGS="-Zsanitizer=address" cargo +nightly test -p costack --features asan \
                --target x86_64-unknown-linux-gnu --test core --test backends \
                -- --skip a_hundred_thousand_live_coroutines 2>&1) || { echo "$out" >&2; die "tests failed under ASan"; }
            if grep -qE "WARNING: ASan|ERROR: AddressSanitizer" <<<"$out"; then echo "$out" >&2; die "ASan complained"; fi
            grep "test result" <<<"$out"
            ;;
        tsan)
            grep -q '^nightly' <<<"$(rustup toolchain list)" || die "no nightly toolchain (run .ci/setup-cross.sh)"
            STEP="$w"
            echo "backends: == $w" >&2
            # TSan needs an instrumented std (-Zbuild-std).
            out=$(RUSTFLAGS="-Zsanitizer=thread" cargo +nightly test -Zbuild-std -p costack --features tsan \
                --target x86_64-unknown-linux-gnu --test core --test backends --test channel_threads \
                -- --skip a_hundred_thousand_live_coroutines 2>&1) || { echo "$out" >&2; die "tests failed under TSan"; }
            if grep -q "WARNING: ThreadSanitizer" <<<"$out"; then echo "$out" >&2; die "TSan complained"; fi
            grep "test result" <<<"$out"
            ;;
        loom)
            STEP="$w"
            echo "backends: == $w" >&2
            # The real channel code on loom's atomics, locks and threads
            # (--cfg costack_loom), every interleaving up to 2 preemptions.
            RUSTFLAGS="--cfg costack_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR="$ROOT/target/loom" \
                cargo test -p costack --release --test channel_loom
            ;;
        valgrind)
            need valgrind
            STEP="$w (build)"
            bin=$(cargo test -p costack --test core --no-run --message-format=json 2>/dev/null \
                | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
            [[ -x "$bin" ]] || die "could not find the core test binary"
            STEP="$w"
            echo "backends: == $w" >&2
            # Without the stack registration memcheck warns "client switching
            # stacks?" on every switch; any memcheck error fails the run.
            out=$(valgrind --error-exitcode=99 "$bin" --test-threads=1 \
                --skip a_hundred_thousand_live_coroutines 2>&1) || { echo "$out" >&2; die "memcheck failed"; }
            if grep -q "switching stacks" <<<"$out"; then echo "$out" >&2; die "Valgrind saw unregistered stack switches"; fi
            grep "test result" <<<"$out"
            ;;
        aarch64)
            need qemu-aarch64-static; need aarch64-linux-gnu-gcc
            raise_map_count 262144 "mprotect guards under qemu"
            run "$w" --target aarch64-unknown-linux-gnu "${LINUX_TESTS[@]}" -- "${SKIP_BIG[@]}"
            ;;
        riscv64)
            need qemu-riscv64-static; need riscv64-linux-gnu-gcc
            raise_map_count 262144 "mprotect guards under qemu"
            run "$w" --target riscv64gc-unknown-linux-gnu "${LINUX_TESTS[@]}" -- "${SKIP_BIG[@]}"
            ;;
        windows-asm|windows-fibers)
            need x86_64-w64-mingw32-gcc; need wineserver
            # Every target (tests, benches, examples) must build for Windows,
            # not only the ones run below.
            win_features=(); [[ $w == windows-fibers ]] && win_features=(--features fibers)
            STEP="$w (clippy)"
            cargo clippy -p costack --all-targets --target x86_64-pc-windows-gnu "${win_features[@]}" -- -D warnings
            if [[ $w == windows-fibers ]]; then
                # Not the overflow test: Wine 8 gives a fiber one guard page
                # and no room to dispatch the fault, so it ends the thread
                # ("stack overflow ... bytes") and the child hangs; real
                # Windows raises STATUS_STACK_OVERFLOW within the guarantee.
                # Wine maps each fiber's stack and guard separately, on top
                # of costack's own reservation: 100k fibers need ~400k
                # mappings.
                raise_map_count 1048576 "100k fibers under Wine"
                run "$w" --target x86_64-pc-windows-gnu --features fibers --test core \
                    "${WINDOWS_TESTS[@]}" -- "${SKIP_BIG[@]}"
            else
                # Wine maps each stack and its guard page separately (real
                # Windows has no such limit). Without this the step passed
                # only after an earlier backend had raised the limit.
                raise_map_count 262144 "100k stacks under Wine"
                run "$w" --target x86_64-pc-windows-gnu "${TESTS[@]}" "${WINDOWS_TESTS[@]}" \
                    -- "${SKIP_BIG[@]}"
            fi
            ;;
    esac
done
STEP="done"
echo "backends: all of ${WANT[*]} passed" >&2
