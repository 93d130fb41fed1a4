#!/usr/bin/env bash
# The yardstick of issue 23: QEMU's own iotests, from the source of the
# installed qemu, run once with the real qemu-nbd and once with costack-nbd
# as QEMU_NBD_PROG. Prints, per mode, the pass/fail/not-run counts both ways
# and the tests that pass with qemu-nbd but fail with costack-nbd.
#
# The suite is GPL and is never copied into this repository: it is fetched
# at test time from Debian's source archive (the package whose version
# `qemu-utils` has, through a private apt source list for
# bookworm-backports) and cached under $COSTACK_IOTESTS_DIR
# (default target/qemu-iotests).
#
# Which tests, in which modes:
#   - `-nbd -raw`: every test; `check` itself skips (not run) the ones whose
#     _supported_proto excludes nbd, in well under a second each. Every test
#     it keeps serves its image through $QEMU_NBD_PROG.
#   - `-file -raw` and `-file -qcow2`: the tests that start qemu-nbd
#     themselves (their source names QEMU_NBD, qemu_nbd or the common.nbd
#     helpers), found by grep at run time.
# There is no qemu-system on these machines: QEMU_PROG is a stub that
# answers `-machine help` (check insists) and marks any test that tries to
# start a VM as "not run", whatever check says of it.
#
# Exit status: 0 when every run completed in time and every test that passes with
# qemu-nbd passes with costack-nbd or is listed, with its mode, in
# scripts/qemu-iotests-exceptions.txt (the README says why for each);
# 1 otherwise, or when the suite or a tool cannot be had.
#
# Environment:
#   COSTACK_IOTESTS_DIR      cache and scratch directory (target/qemu-iotests)
#   COSTACK_IOTESTS_TIMEOUT  seconds allowed for each `check` run (900)
#   COSTACK_IOTESTS_SUITES   the Debian suites of the deb-src lines
#                            ("bookworm-backports bookworm": qemu 10 is a
#                            backport on bookworm)
#   COSTACK_NBD              a costack-nbd binary to use instead of building one
# Takes about 3 minutes on 2 cores (fetch included; each server's three runs
# about 90 s: the ~25 tests that run take 1-3 s each, the ~340 skipped ones
# a fraction of a second).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${COSTACK_IOTESTS_DIR:-$root/target/qemu-iotests}
run_timeout=${COSTACK_IOTESTS_TIMEOUT:-900}
suites=${COSTACK_IOTESTS_SUITES:-bookworm-backports bookworm}
exceptions=$root/scripts/qemu-iotests-exceptions.txt

die() {
    echo "qemu-iotests: $*" >&2
    exit 1
}

for tool in qemu-img qemu-io qemu-nbd qemu-storage-daemon python3 timeout apt-get tar xz dpkg-query sha256sum; do
    command -v "$tool" >/dev/null || die "required tool '$tool' is missing (apt-get install qemu-utils python3 xz-utils)"
done

# --- the suite, from the source of the installed qemu -----------------------
debver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null) ||
    die "qemu-utils is not installed as a Debian package: cannot tell which qemu source to fetch"
upstream=${debver#*:}
upstream=${upstream%%+*}
upstream=${upstream%%-*}
installed=$(qemu-img --version | sed -n '1s/^qemu-img version \([0-9.]*\).*/\1/p')
[ "$installed" = "$upstream" ] ||
    die "qemu-img says version '$installed' but qemu-utils is '$debver': mixed installation?"
src=$dir/qemu-$upstream
mkdir -p "$dir"
if [ ! -x "$src/tests/qemu-iotests/check" ]; then
    echo "qemu-iotests: fetching the source of qemu $debver (deb-src $suites)"
    apt_dir=$dir/apt
    rm -rf "$apt_dir"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/download"
    for suite in $suites; do
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main"
    done >"$apt_dir/sources.list"
    apt=(apt-get -q -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
        -o "Dir::State::Lists=$apt_dir/lists" -o Debug::NoLocking=true)
    "${apt[@]}" update >"$apt_dir/update.log" 2>&1 ||
        die "apt-get update of the private source list failed (see $apt_dir/update.log)"
    # The orig tarball has the suite; its SHA256 comes from the signed
    # Sources index. The Debian diff and .dsc are not needed (and some
    # mirrors refuse them), so a failure to fetch those alone is not fatal.
    uris=$(cd "$apt_dir/download" && "${apt[@]}" source --print-uris "qemu=$debver" 2>"$apt_dir/source.log") ||
        die "no source package qemu=$debver in deb-src $suites (see $apt_dir/source.log)"
    orig=$(awk -v v="qemu_$upstream" '$2 ~ "^" v "[^-]*\\.orig\\.tar\\." {print $2, $4; exit}' <<<"$uris")
    [ -n "$orig" ] || die "the source of qemu=$debver has no orig tarball: $uris"
    read -r orig_name orig_sum <<<"$orig"
    (cd "$apt_dir/download" && "${apt[@]}" source --download-only "qemu=$debver") >>"$apt_dir/source.log" 2>&1 || true
    [ -f "$apt_dir/download/$orig_name" ] ||
        die "could not download $orig_name (see $apt_dir/source.log)"
    echo "${orig_sum#SHA256:}  $apt_dir/download/$orig_name" | sha256sum -c --quiet ||
        die "$orig_name does not match the SHA256 of the signed Sources index"
    rm -rf "$src.tmp"
    mkdir -p "$src.tmp"
    tar -xf "$apt_dir/download/$orig_name" -C "$src.tmp" --strip-components=1 \
        --wildcards '*/tests/qemu-iotests' '*/python' ||
        die "could not extract the iotests from $orig_name"
    [ -x "$src.tmp/tests/qemu-iotests/check" ] || die "$orig_name has no tests/qemu-iotests/check"
    rm -rf "$src" "$apt_dir/download"
    mv "$src.tmp" "$src"
fi
iotests=$src/tests/qemu-iotests

# --- costack-nbd --------------------------------------------------------------
if [ -n "${COSTACK_NBD:-}" ]; then
    costack=$COSTACK_NBD
else
    (cd "$root" && cargo build -q --release -p costack-nbd --features tls) ||
        die "cargo build --release -p costack-nbd --features tls failed"
    costack=${CARGO_TARGET_DIR:-$root/target}/release/costack-nbd
fi
[ -x "$costack" ] || die "no costack-nbd binary at $costack"

# --- the qemu-system stub -------------------------------------------------------
stub=$dir/qemu-system-stub
cat >"$stub" <<'EOF'
#!/bin/sh
# check insists on a QEMU_PROG and asks it for its machines; anything else
# is a test that needs a real qemu-system, which is not installed: mark it.
if [ "$*" = "-machine help" ]; then
    echo "Supported machines are:"
    echo "pc                   Standard PC (i440FX + PIIX, 1996) (default)"
    exit 0
fi
name=${TEST_DIR##*/}; name=${name#*-}; name=${name#*-}
echo "needs qemu-system, which is not installed" >"$TEST_DIR/$name.notrun"
: >"$TEST_DIR/needs-qemu-system"
echo "qemu-system-stub: no qemu-system here" >&2
exit 1
EOF
chmod +x "$stub"

file_tests=$(cd "$iotests" && grep -lE 'QEMU_NBD|qemu_nbd|common\.nbd|nbd_server_start' [0-9][0-9][0-9] tests/* |
    grep -v '\.out$' | sed 's|^tests/||' | sort | tr '\n' ' ')
modes=("nbd raw" "file raw" "file qcow2")

# One `check` run: $1 server name, $2 binary, $3 proto, $4 fmt, then tests.
# Writes "<test> pass|fail|notrun" lines to $dir/results/<server>-<proto>-<fmt>.
run_check() {
    local server=$1 prog=$2 proto=$3 fmt=$4
    shift 4
    local tag=$server-$proto-$fmt scratch=$dir/scratch/$server-$proto-$fmt
    local log=$dir/logs/$tag.log out=$dir/results/$tag
    rm -rf "$scratch"
    mkdir -p "$scratch" "$dir/logs" "$dir/results"
    local rc=0
    (cd "$iotests" && QEMU_PROG=$stub QEMU_IMG_PROG=$(command -v qemu-img) \
        QEMU_IO_PROG=$(command -v qemu-io) QEMU_NBD_PROG=$prog \
        QSD_PROG=$(command -v qemu-storage-daemon) TEST_DIR=$scratch \
        timeout -k 10 "$run_timeout" ./check -tap "-$proto" "-$fmt" "$@") >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "qemu-iotests: $tag timed out after ${run_timeout}s; unfinished tests count as failed" >&2
        timed_out+=("$tag")
    fi
    # Servers a failed or killed test left behind, by the pid files the
    # tests' own helpers write.
    find "$scratch" -name '*.pid' -exec cat {} + 2>/dev/null | while read -r pid; do
        kill "$pid" 2>/dev/null || true
    done
    local all
    if [ $# -gt 0 ]; then all=$*; else all=$(cd "$iotests" && QEMU_PROG=$stub ./check -n "-$proto" "-$fmt" | tr '\n' ' '); fi
    : >"$out"
    local t status
    for t in $all; do
        status=$(awk -v t="$t" -v f="$fmt" '
            $0 == "ok " f " " t { s = "pass" }
            $0 == "not ok " f " " t { s = "fail" }
            $0 == "ok " f " " t " # SKIP" { s = "notrun" }
            END { print s ? s : "fail" }' "$log")
        [ -e "$scratch/$fmt-$proto-$t/needs-qemu-system" ] && status=notrun
        echo "$t $status" >>"$out"
    done
}

start=$(date +%s)
timed_out=()
for server in qemu-nbd costack-nbd; do
    if [ "$server" = qemu-nbd ]; then prog=$(command -v qemu-nbd); else prog=$costack; fi
    for mode in "${modes[@]}"; do
        read -r proto fmt <<<"$mode"
        echo "qemu-iotests: $server, -$proto -$fmt"
        if [ "$proto" = nbd ]; then
            run_check "$server" "$prog" "$proto" "$fmt"
        else
            # shellcheck disable=SC2086
            run_check "$server" "$prog" "$proto" "$fmt" $file_tests
        fi
    done
done

counts() { awk '{n[$2]++} END {printf "%3d pass %3d fail %3d not run", n["pass"], n["fail"], n["notrun"]}' "$1"; }
echo
echo "QEMU $debver iotests ($(($(date +%s) - start)) s)"
printf '%-12s %-34s %s\n' mode qemu-nbd costack-nbd
status=0
regressions=()
for mode in "${modes[@]}"; do
    read -r proto fmt <<<"$mode"
    q=$dir/results/qemu-nbd-$proto-$fmt
    c=$dir/results/costack-nbd-$proto-$fmt
    printf '%-12s %-34s %s\n' "$proto-$fmt" "$(counts "$q")" "$(counts "$c")"
    while read -r t; do
        regressions+=("$proto-$fmt $t")
    done < <(join <(awk '$2 == "pass" {print $1}' "$q" | sort) <(awk '$2 != "pass" {print $1}' "$c" | sort))
done
echo
echo "pass with qemu-nbd, fail with costack-nbd: ${#regressions[@]}"
for r in "${regressions[@]}"; do
    if grep -qx "$r\( .*\)\?" "$exceptions" 2>/dev/null; then
        echo "  $r (known: $(grep -m1 "^$r " "$exceptions" | cut -d' ' -f3-))"
    else
        echo "  $r NEW"
        status=1
    fi
done
# Exceptions that no longer fail: the list (and README) should drop them.
while read -r m t _; do
    case "$m" in '' | '#'*) continue ;; esac
    printf '%s\n' "${regressions[@]}" | grep -qx "$m $t" ||
        echo "  note: $m $t is listed in $(basename "$exceptions") but no longer fails"
done <"$exceptions"
echo "logs: $dir/logs, per-test output: $dir/scratch"
if [ ${#timed_out[@]} -gt 0 ]; then
    echo "qemu-iotests: incomplete, timed out: ${timed_out[*]}" >&2
    status=1
fi
exit $status
