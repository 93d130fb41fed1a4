#!/usr/bin/env bash
# qcow2: costack-nbd against qemu-nbd -f qcow2, in one run, interleaved.
#
# Reads and 4 KiB overwrites go to a fully allocated qcow2 (64 KiB
# clusters, QEMU's default) converted from random data, one copy per
# server, in /dev/shm. Allocating writes go to a fresh, empty 8 GiB image
# per server, each round into a new 512 MiB region, so that every write
# allocates (at most 8 rounds). Compressed reads go to a 256 MiB image of
# compressible data made by `qemu-img convert -c`; chain reads to the top
# of a 3-deep backing chain (the allocated image, then two overlays each
# holding every third cluster), both served read-only by every server.
# Each workload runs ROUNDS times, alternating the servers;
# prints medians and the ratio of costack-nbd to qemu-nbd (higher is
# better for costack-nbd).
#
#   bench/qcow2-vs-qemu-nbd.sh          # full run (about 3 minutes)
#   ROUNDS=1 bench/qcow2-vs-qemu-nbd.sh # smoke run
#   ONLY=alloc bench/qcow2-vs-qemu-nbd.sh # workloads matching a regex
#   BASELINE=/tmp/old-costack-nbd bench/qcow2-vs-qemu-nbd.sh # and a previous build
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
[ "$ROUNDS" -le 8 ] || { echo "ROUNDS must be at most 8 (the fresh images hold 8 regions)" >&2; exit 1; }
ONLY=${ONLY:-.}
RAW=${RAW:-/dev/shm/costack-nbd-bench.raw}
IMG=${IMG:-/dev/shm/costack-nbd-bench.qcow2}
SIZE_MB=${SIZE_MB:-1024}
PORT_BASE=${PORT_BASE:-21009}

for tool in qemu-img qemu-nbd; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install qemu-utils)" >&2; exit 1; }
done
cargo build --release -q -p costack-nbd
COSTACK=${COSTACK:-target/release/costack-nbd}
BASELINE=${BASELINE:-}
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
# A baseline built before qemu-nbd's command line (issue 23) serves until
# stopped and knows no -t; a later one needs it, as costack-nbd does.
baseline_args=()
if [ -n "$BASELINE" ]; then
    case $("$BASELINE" --help 2>/dev/null || true) in
        *--persistent*) baseline_args=(-t -e 8) ;;
    esac
fi

# The allocated image must hold random data throughout. A source that
# earlier write benchmarks overwrote with zeros converts to an almost
# empty image, whose reads read nothing: then start over.
if [ ! -f "$IMG" ] || [ ! -f "$RAW" ] || [ "$RAW" -nt "$IMG" ] \
    || [ "$(stat -c %s "$IMG")" -lt $((SIZE_MB << 20)) ]; then
    echo "writing $RAW ($SIZE_MB MiB of random data), converting it to $IMG"
    head -c $((SIZE_MB << 20)) /dev/urandom > "$RAW"
    qemu-img convert -f raw -O qcow2 "$RAW" "$IMG"
fi
COMP=${COMP:-/dev/shm/costack-nbd-bench-comp.qcow2}
if [ ! -f "$COMP" ]; then
    echo "creating $COMP (256 MiB of compressible data, compressed)"
    head -c $((192 << 20)) /dev/urandom | base64 -w 0 | head -c $((256 << 20)) > "$COMP.raw"
    qemu-img convert -c -f raw -O qcow2 "$COMP.raw" "$COMP"
    rm -f "$COMP.raw"
fi
CHAIN=${CHAIN:-/dev/shm/costack-nbd-bench-chain}
if [ ! -f "$CHAIN-top.qcow2" ] || [ "$IMG" -nt "$CHAIN-top.qcow2" ]; then
    echo "creating the backing chain $CHAIN-{mid,top}.qcow2 over $IMG"
    qemu-img create -q -f qcow2 -b "$IMG" -F qcow2 "$CHAIN-mid.qcow2"
    qemu-img create -q -f qcow2 -b "$CHAIN-mid.qcow2" -F qcow2 "$CHAIN-top.qcow2"
    # Every third 64 KiB cluster in each overlay (1, 4, 7, ... and 2, 5, 8, ...).
    for layer in mid top; do
        first=1; [ $layer = top ] && first=2
        for ((c = first; c < SIZE_MB * 16; c += 3)); do
            echo "write -q -P 0x5a $((c * 65536)) 64k"
        done > "$CHAIN.cmds"
        qemu-io -f qcow2 "$CHAIN-$layer.qcow2" < "$CHAIN.cmds" >/dev/null
    done
    rm -f "$CHAIN.cmds"
fi
servers=(costack qemu-nbd)
[ -z "$BASELINE" ] || servers+=(baseline)
# Each server writes its own copies.
for who in "${servers[@]}"; do
    cp "$IMG" "/dev/shm/qcow2-bench-$who.qcow2"
    rm -f "/dev/shm/qcow2-bench-$who-fresh.qcow2"
    qemu-img create -q -f qcow2 "/dev/shm/qcow2-bench-$who-fresh.qcow2" 8G
done

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f /dev/shm/qcow2-bench-*.qcow2
}
trap cleanup EXIT

start_server() { # name port
    local img=/dev/shm/qcow2-bench-${1%-fresh}.qcow2 ro=()
    case $1 in
        *-fresh) img=/dev/shm/qcow2-bench-$1.qcow2 ;;
        *-comp) img=$COMP; ro=(-r) ;;
        *-chain) img=$CHAIN-top.qcow2; ro=(-r) ;;
    esac
    case $1 in
        costack*) "$COSTACK" -f qcow2 "${ro[@]}" -t -e 8 -p "$2" "$img" >/dev/null & ;;
        baseline*) "$BASELINE" -f qcow2 "${ro[@]}" "${baseline_args[@]}" -p "$2" "$img" >/dev/null & ;;
        qemu-nbd*) qemu-nbd -f qcow2 "${ro[@]}" -t -e 8 --cache=writeback --aio=threads -p "$2" "$img" & ;;
    esac
    pids+=($!)
    for _ in $(seq 100); do
        qemu-img info "nbd://127.0.0.1:$2" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server $1 did not come up" >&2; exit 1
}

declare -A port
i=0
for s in "${servers[@]}" "${servers[@]/%/-fresh}" "${servers[@]/%/-comp}" "${servers[@]/%/-chain}"; do
    port[$s]=$((PORT_BASE + i)); i=$((i + 1))
    start_server "$s" "${port[$s]}"
done

workloads=(
    "4k-read-qd1|-c 100000 -d 1 -s 4k -S 1236992"
    "4k-read-qd32|-c 400000 -d 32 -s 4k -S 1236992"
    "64k-read-qd16|-c 60000 -d 16 -s 64k -S 1245184"
    "4k-overwrite-qd32|-w --pattern 165 -c 400000 -d 32 -s 4k -S 1236992"
    "64k-alloc-write-qd16|-w --pattern 165 -c 8192 -d 16 -s 64k"
    "4k-alloc-write-qd32|-w --pattern 165 -c 2600 -d 32 -s 4k -S 196608"
    "comp-64k-read-qd16|-c 20000 -d 16 -s 64k -S 1245184"
    "chain-4k-read-qd32|-c 200000 -d 32 -s 4k -S 1236992"
)

selected=()
for w in "${workloads[@]}"; do
    if [[ ${w%%|*} =~ $ONLY ]]; then selected+=("$w"); fi
done

declare -A results
bench_once() { # server args -> ops/s
    local out secs count
    # shellcheck disable=SC2086
    out=$(qemu-img bench -f raw -t none -i threads $2 "nbd://127.0.0.1:${port[$1]}" 2>&1)
    secs=$(sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")
    count=$(sed -n 's/.*-c \([0-9]*\).*/\1/p' <<<"$2")
    [ -n "$secs" ] || { echo "qemu-img bench failed on $1: $out" >&2; exit 1; }
    awk -v c="$count" -v s="$secs" 'BEGIN { printf "%.0f", c / s }'
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

for w in "${selected[@]}"; do
    name=${w%%|*}; args=${w#*|}
    for round in $(seq "$ROUNDS"); do
        for s in "${servers[@]}"; do
            if [[ $name == *alloc* ]]; then
                # A new 512 MiB region of the fresh image each round: the
                # first 4 GiB for 64 KiB writes, the next for 4 KiB ones
                # (each into a new cluster, 192 KiB apart).
                base=0; [[ $name == 4k* ]] && base=4096
                v=$(bench_once "$s-fresh" "$args -o $(( base + (round - 1) * 512 ))M")
            elif [[ $name == comp-* ]]; then
                v=$(bench_once "$s-comp" "$args")
            elif [[ $name == chain-* ]]; then
                v=$(bench_once "$s-chain" "$args")
            else
                v=$(bench_once "$s" "$args")
            fi
            results[$name,$s]="${results[$name,$s]:-} $v"
        done
    done
    echo "done: $name" >&2
done

printf '\n%-20s %12s %12s %10s' workload costack-nbd qemu-nbd vs-qemu
[ -z "$BASELINE" ] || printf ' %12s %10s' baseline vs-base
echo
for w in "${selected[@]}"; do
    name=${w%%|*}
    c=$(median <<<"${results[$name,costack]}")
    q=$(median <<<"${results[$name,qemu-nbd]}")
    printf '%-20s %12s %12s %9.2fx' "$name" "$c" "$q" "$(awk -v a="$c" -v b="$q" 'BEGIN { print a / b }')"
    if [ -n "$BASELINE" ]; then
        b=$(median <<<"${results[$name,baseline]}")
        printf ' %12s %9.2fx' "$b" "$(awk -v a="$c" -v b="$b" 'BEGIN { print a / b }')"
    fi
    echo
done
echo "(qcow2, IOPS of qemu-img bench; medians of $ROUNDS interleaved rounds)"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
