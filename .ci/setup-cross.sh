#!/usr/bin/env bash
# Prepare this machine (Debian 12, x86_64) to run the test suite on other
# targets and under other checkers. Idempotent, and fast when all is in place:
# every step checks before it installs.
#
#   bash .ci/setup-cross.sh            # install/prepare, then print the env
#   bash .ci/setup-cross.sh --verify   # ... and also build+run a hello world
#                                      #     on each cross target (a few s)
#   source .ci/cross-env.sh            # then: cargo test --target X
#
# Prepares:
#   1. Debian packages: cross gcc + libc for aarch64 and riscv64, qemu-user-static,
#      mingw-w64 gcc, Wine (64-bit), valgrind, gdb.
#   2. rustup: targets aarch64-unknown-linux-gnu, riscv64gc-unknown-linux-gnu,
#      x86_64-pc-windows-gnu on stable (and on the repo's active toolchain if
#      that is not stable); nightly with miri + rust-src, and miri's sysroot.
#   3. A private Wine prefix at ${COSTACK_WINEPREFIX:-<repo>/target/wineprefix},
#      initialised headless, with a bcryptprimitives.dll stand-in
#      (.ci/cross/bcryptprimitives.c) that Debian 12's Wine 8 lacks and that
#      every Rust >= 1.78 Windows program imports (ProcessPrng); without it
#      they all exit with code 53. `cargo clean` deletes the prefix: rerun.
#
# Environment knobs: COSTACK_WINEPREFIX (prefix path),
#   COSTACK_SKIP_MIRI=1 (skip nightly/miri), COSTACK_SKIP_WINE=1 (skip the
#   Windows target's Wine prefix and DLL).
set -Eeuo pipefail

CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$CI_DIR/.." && pwd)
WINEPREFIX_DIR="${COSTACK_WINEPREFIX:-$ROOT/target/wineprefix}"

VERIFY=0
for arg in "$@"; do
    case "$arg" in
        --verify) VERIFY=1 ;;
        -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "setup-cross: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

STEP="start"
log() { printf 'setup-cross: %s\n' "$*" >&2; }
die() { printf '\nsetup-cross: ERROR during [%s]: %s\n' "$STEP" "$*" >&2; exit 1; }
# shellcheck disable=SC2154
trap 'rc=$?; printf "\nsetup-cross: ERROR during [%s]: command failed (exit %s) at line %s: %s\n" "$STEP" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

START=$SECONDS

# ---------------------------------------------------------------- 1. apt
STEP="apt packages"
APT_PACKAGES=(
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
    qemu-user-static
    gcc-mingw-w64-x86-64
    wine wine64
    valgrind gdb
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    SUDO=()
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing[*]}"
        SUDO=(sudo)
    fi
    log "installing Debian packages: ${missing[*]}"
    "${SUDO[@]}" apt-get update -q >/dev/null \
        || die "apt-get update failed"
    # Recommends are not needed (no X, no 32-bit Wine) and would pull in
    # hundreds of MB of graphics and sound libraries.
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" \
        || die "apt-get install failed for: ${missing[*]}"
else
    log "Debian packages: all present"
fi
for tool in aarch64-linux-gnu-gcc riscv64-linux-gnu-gcc x86_64-w64-mingw32-gcc \
            qemu-aarch64-static qemu-riscv64-static wineboot wineserver valgrind gdb; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not on PATH after installing packages"
done
[[ -d /usr/aarch64-linux-gnu/lib && -d /usr/riscv64-linux-gnu/lib ]] \
    || die "cross sysroots /usr/aarch64-linux-gnu or /usr/riscv64-linux-gnu missing"

# ---------------------------------------------------------------- 2. rustup
STEP="rustup targets"
command -v rustup >/dev/null 2>&1 || die "rustup not found on PATH"
CROSS_TARGETS=(aarch64-unknown-linux-gnu riscv64gc-unknown-linux-gnu x86_64-pc-windows-gnu)

have_toolchain() { # no pipe into grep -q: under pipefail the writer may die of SIGPIPE
    local list
    list=$(rustup toolchain list) || return 1
    awk -v t="$1" '$1 == t || index($1, t "-") == 1 { found = 1 } END { exit !found }' <<<"$list"
}

ensure_targets() { # toolchain
    local tc=$1 t need=() installed
    installed=$(rustup target list --installed --toolchain "$tc") \
        || die "cannot list targets of toolchain $tc"
    for t in "${CROSS_TARGETS[@]}"; do
        grep -qx "$t" <<<"$installed" || need+=("$t")
    done
    if ((${#need[@]})); then
        log "rustup: adding targets to $tc: ${need[*]}"
        rustup target add --toolchain "$tc" "${need[@]}" \
            || die "rustup target add --toolchain $tc ${need[*]} failed"
    else
        log "rustup: $tc has all cross targets"
    fi
}

if ! have_toolchain stable; then
    log "rustup: installing stable toolchain"
    rustup toolchain install stable --profile minimal || die "rustup toolchain install stable failed"
fi
ensure_targets stable
# If the repo pins another toolchain (rust-toolchain.toml), `cargo` in the repo
# uses that one: give it the targets too.
active=$(cd "$ROOT" && rustup show active-toolchain 2>/dev/null | awk 'NR==1{print $1}') || active=""
if [[ -n "$active" && "$active" != stable-* ]]; then
    ensure_targets "$active"
fi

if [[ "${COSTACK_SKIP_MIRI:-0}" != 1 ]]; then
    STEP="rustup nightly (miri, rust-src)"
    if ! have_toolchain nightly; then
        log "rustup: installing nightly toolchain with miri, rust-src"
        rustup toolchain install nightly --profile minimal --component miri,rust-src \
            || die "rustup toolchain install nightly failed"
    fi
    comps=$(rustup component list --installed --toolchain nightly) \
        || die "cannot list nightly components"
    need=()
    for c in miri rust-src; do
        grep -q "^$c\(-\|$\)" <<<"$comps" || need+=("$c")
    done
    if ((${#need[@]})); then
        log "rustup: adding nightly components: ${need[*]}"
        # On a nightly whose miri is broken this fails; then pin a dated
        # nightly that has it (see https://rust-lang.github.io/rustup-components-history/).
        rustup component add --toolchain nightly "${need[@]}" \
            || die "rustup component add --toolchain nightly ${need[*]} failed"
    else
        log "rustup: nightly has miri and rust-src"
    fi
    STEP="miri sysroot"
    # Builds miri's std once (~25 s); a ~0.1 s check afterwards.
    miri_log=$(mktemp)
    if ! (cd "$ROOT" && cargo +nightly miri setup) >"$miri_log" 2>&1; then
        cat "$miri_log" >&2; rm -f "$miri_log"
        die "cargo +nightly miri setup failed"
    fi
    rm -f "$miri_log"
fi

# ---------------------------------------------------------------- 3. Wine
if [[ "${COSTACK_SKIP_WINE:-0}" != 1 ]]; then
    STEP="Wine prefix"
    export WINEPREFIX="$WINEPREFIX_DIR" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
    unset DISPLAY WAYLAND_DISPLAY          # headless: never wait for a display
    if [[ -x /usr/lib/wine/wine64 ]]; then  # Debian 12 layout
        WINE=/usr/lib/wine/wine64; export WINELOADER=$WINE
    elif command -v wine64 >/dev/null 2>&1; then
        WINE=$(command -v wine64)
    else
        WINE=$(command -v wine) || die "no wine64/wine binary found"
    fi

    # Wine rebuilds a prefix whose .update-timestamp differs from wine.inf's
    # mtime (e.g. after a Wine upgrade); do that here rather than in a test.
    boot_mode=""
    if [[ ! -f "$WINEPREFIX/system.reg" ]]; then
        boot_mode="-i"
    elif [[ -f /usr/share/wine/wine.inf && -f "$WINEPREFIX/.update-timestamp" ]]; then
        stamp=$(tr -dc "0-9a-z" <"$WINEPREFIX/.update-timestamp")  # file ends in CRLF
        if [[ "$stamp" != disable* && "$stamp" != "$(stat -c %Y /usr/share/wine/wine.inf)" ]]; then
            boot_mode="-u"
        fi
    fi
    if [[ -n "$boot_mode" ]]; then
        [[ -e "$WINEPREFIX" && ! -O "$WINEPREFIX" ]] \
            && die "$WINEPREFIX exists but is not owned by $(id -un); Wine refuses it. Remove it or set COSTACK_WINEPREFIX"
        mkdir -p "$(dirname "$WINEPREFIX")"
        log "Wine: wineboot $boot_mode in $WINEPREFIX (headless, time-limited)"
        wine_log=$(mktemp)
        if ! timeout --kill-after=10 240 "$WINE" wineboot "$boot_mode" </dev/null >"$wine_log" 2>&1; then
            cat "$wine_log" >&2
            wineserver -k 2>/dev/null || true
            rm -f "$wine_log"
            die "wineboot $boot_mode failed or timed out (240 s) for $WINEPREFIX"
        fi
        # wineboot returns before wineserver has flushed the registry to disk.
        if ! timeout 60 wineserver -w; then
            wineserver -k 2>/dev/null || true
            rm -f "$wine_log"
            die "wineserver did not exit within 60 s after wineboot"
        fi
        rm -f "$wine_log"
    else
        log "Wine: prefix $WINEPREFIX is initialised"
    fi
    SYS32="$WINEPREFIX/drive_c/windows/system32"
    [[ -f "$WINEPREFIX/system.reg" && -d "$SYS32" ]] \
        || die "Wine prefix $WINEPREFIX looks incomplete (no system.reg or system32)"

    STEP="bcryptprimitives.dll stand-in"
    DLL_SRC="$CI_DIR/cross/bcryptprimitives.c"
    DLL_DST="$SYS32/bcryptprimitives.dll"
    builtin=""
    for d in /usr/lib/x86_64-linux-gnu/wine/x86_64-windows /usr/lib/wine/x86_64-windows /usr/lib64/wine/x86_64-windows; do
        [[ -f "$d/bcryptprimitives.dll" ]] && builtin="$d/bcryptprimitives.dll"
    done
    if [[ -n "$builtin" ]]; then
        log "Wine: has its own bcryptprimitives.dll ($builtin); no stand-in needed"
    elif [[ -f "$DLL_DST" && "$DLL_DST" -nt "$DLL_SRC" ]]; then
        log "Wine: bcryptprimitives.dll stand-in is installed"
    else
        [[ -f "$DLL_SRC" ]] || die "missing $DLL_SRC"
        log "Wine: building bcryptprimitives.dll stand-in"
        tmp_dll=$(mktemp --suffix=.dll)
        x86_64-w64-mingw32-gcc -shared -O2 -s -Wall -Wextra -Werror \
            -o "$tmp_dll" "$DLL_SRC" -ladvapi32 \
            || { rm -f "$tmp_dll"; die "x86_64-w64-mingw32-gcc failed to build $DLL_SRC"; }
        # Capture first: under pipefail, `objdump | grep -q` fails at random when
        # grep exits at the match and objdump dies of SIGPIPE (exit 141).
        dll_headers=$(x86_64-w64-mingw32-objdump -p "$tmp_dll") \
            || { rm -f "$tmp_dll"; die "x86_64-w64-mingw32-objdump cannot read $tmp_dll"; }
        grep -q '\] ProcessPrng$' <<<"$dll_headers" \
            || { rm -f "$tmp_dll"; die "built DLL does not export ProcessPrng"; }
        install -m 0644 "$tmp_dll" "$DLL_DST" || { rm -f "$tmp_dll"; die "cannot install $DLL_DST"; }
        rm -f "$tmp_dll"
    fi
fi

# ---------------------------------------------------------------- verify
if ((VERIFY)); then
    STEP="verify"
    vdir=$(mktemp -d)
    trap 'rm -rf "$vdir"' EXIT
    cat >"$vdir/hello.rs" <<'EOF'
use std::collections::HashMap;
fn main() {
    let h = std::thread::spawn(|| { let mut m = HashMap::new(); m.insert(1u8, "ok"); m[&1] });
    println!("hello-cross {}", h.join().unwrap());
}
EOF
    verify_one() { # linux-target linker runner...
        local t=$1 linker=$2; shift 2
        local out
        rustc +stable --edition 2021 --target "$t" -C "linker=$linker" -o "$vdir/hello-$t" "$vdir/hello.rs" \
            || die "rustc could not build for $t"
        out=$("$@" "$vdir/hello-$t" 2>&1) || die "running the $t hello world failed (exit $?): $out"
        [[ "$out" == *"hello-cross ok"* ]] || die "$t hello world printed: $out"
        log "verify: $t OK"
    }
    verify_one aarch64-unknown-linux-gnu aarch64-linux-gnu-gcc qemu-aarch64-static -L /usr/aarch64-linux-gnu
    verify_one riscv64gc-unknown-linux-gnu riscv64-linux-gnu-gcc qemu-riscv64-static -L /usr/riscv64-linux-gnu
    if [[ "${COSTACK_SKIP_WINE:-0}" != 1 ]]; then
        cp "$vdir/hello.rs" "$vdir/hellow.rs"
        rustc +stable --edition 2021 --target x86_64-pc-windows-gnu -C linker=x86_64-w64-mingw32-gcc \
            -o "$vdir/hellow.exe" "$vdir/hellow.rs" || die "rustc could not build for x86_64-pc-windows-gnu"
        out=$("$CI_DIR/cross/wine-run.sh" "$vdir/hellow.exe" 2>&1) \
            || die "running the Windows hello world under Wine failed (exit $?; 53 = missing DLL): $out"
        [[ "$out" == *"hello-cross ok"* ]] || die "x86_64-pc-windows-gnu hello world printed: $out"
        log "verify: x86_64-pc-windows-gnu OK"
    fi
fi

STEP="done"
log "ready in $((SECONDS - START)) s. Export these (or: source .ci/cross-env.sh):"
bash "$CI_DIR/cross-env.sh"
