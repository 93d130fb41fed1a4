#!/usr/bin/env bash
# qcow2 space over time: costack-nbd against qemu-nbd --discard=unmap.
#
# The issue 24 workload, on a fresh 4 GiB image per server in /dev/shm:
# four cycles of REGION_MB written at 0, discarded, written at 2 GiB,
# zeroed (write-zeroes that may unmap), then FLUSH; plus, to rewrite
# compressed clusters, images that start with 16 MiB of compressed data
# (COMPRESSED=1, the default). Prints each file's length and allocated
# bytes after the servers stop, and costack-nbd's over qemu-nbd's (lower
# is better for costack-nbd). Space is deterministic: one run suffices.
#
#   bench/qcow2-space.sh                 # REGION_MB=384 (about a minute)
#   REGION_MB=64 bench/qcow2-space.sh    # quicker
set -euo pipefail
cd "$(dirname "$0")/.."

REGION_MB=${REGION_MB:-384}
COMPRESSED=${COMPRESSED:-1}
DIR=${DIR:-/dev/shm/costack-qcow2-space}
for tool in qemu-img qemu-io qemu-nbd; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install qemu-utils)" >&2; exit 1; }
done
cargo build --release -q -p costack-nbd
COSTACK=${COSTACK:-target/release/costack-nbd}
rm -rf "$DIR"; mkdir -p "$DIR"
trap 'rm -rf "$DIR"' EXIT

make_image() { # path
    if [ "$COMPRESSED" = 1 ]; then
        { yes 'qcow2 space ' || true; } | head -c $((16 << 20)) > "$DIR/start.raw"
        qemu-img convert -q -c -O qcow2 "$DIR/start.raw" "$1"
        qemu-img resize -q "$1" 4G
    else
        qemu-img create -q -f qcow2 "$1" 4G
    fi
}

cycles() { # url
    for k in 1 2 3 4; do
        local args=(-f raw)
        [ "$COMPRESSED" = 1 ] && args+=(-c "write -q -P $k 0 16M")
        args+=(-c "write -q -P $k 64M ${REGION_MB}M"
               -c "discard -q 64M ${REGION_MB}M"
               -c "write -q -P $k 2G ${REGION_MB}M"
               -c "write -q -z -u 2G ${REGION_MB}M"
               -c flush)
        qemu-io "${args[@]}" "$1" >/dev/null
    done
}

wait_socket() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

make_image "$DIR/costack.qcow2"
"$COSTACK" --discard=unmap -t -k "$DIR/costack.sock" "$DIR/costack.qcow2" >/dev/null &
pid=$!; wait_socket "$DIR/costack.sock"
cycles "nbd+unix:///?socket=$DIR/costack.sock"
kill -TERM "$pid"; wait "$pid"

make_image "$DIR/qemu.qcow2"
qemu-nbd -f qcow2 --discard=unmap -t -k "$DIR/qemu.sock" "$DIR/qemu.qcow2" &
pid=$!; wait_socket "$DIR/qemu.sock"
cycles "nbd+unix:///?socket=$DIR/qemu.sock"
kill -TERM "$pid"; wait "$pid" || true

for who in costack qemu; do
    qemu-img check -q "$DIR/$who.qcow2" || { echo "$who: qemu-img check failed" >&2; exit 1; }
done
len() { stat -c %s "$1"; }
alloc() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
cl=$(len "$DIR/costack.qcow2"); ql=$(len "$DIR/qemu.qcow2")
ca=$(alloc "$DIR/costack.qcow2"); qa=$(alloc "$DIR/qemu.qcow2")
printf '%-22s %14s %14s %8s\n' "after 4 cycles" costack-nbd qemu-nbd ratio
printf '%-22s %11s MiB %11s MiB %7.2fx\n' "file length" $((cl >> 20)) $((ql >> 20)) "$(awk -v a="$cl" -v b="$ql" 'BEGIN { print a / b }')"
printf '%-22s %11s MiB %11s MiB %7.2fx\n' "allocated" $((ca >> 20)) $((qa >> 20)) "$(awk -v a="$ca" -v b="$qa" 'BEGIN { print a / b }')"
echo "(REGION_MB=$REGION_MB, COMPRESSED=$COMPRESSED; qemu-img check clean for both)"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
