#!/usr/bin/env bash
# costack-nbd against qemu-nbd and nbdkit, in one run, interleaved.
#
# The same raw image in /dev/shm is served by each server in turn; each
# workload runs ROUNDS times, cycling through the servers every round, so
# that machine noise hits them alike. Prints medians and the ratios of
# costack-nbd to each peer (higher is better for costack-nbd).
#
#   bench/nbd-vs-peers.sh            # full run (a few minutes)
#   ROUNDS=1 QUICK=1 bench/nbd-vs-peers.sh   # smoke run
#   ONLY='4k-read' bench/nbd-vs-peers.sh     # workloads matching a regex
#   BASELINE=/tmp/old-costack-nbd bench/nbd-vs-peers.sh
#       # also serve another costack-nbd build in the same rotation (A/B)
#   CEILING=1 bench/nbd-vs-peers.sh
#       # also serve two servers that store nothing on disk: costack-nbd's
#       # in-memory disk and nbdkit's null plugin. Where they are no faster
#       # than costack-nbd on the file, the storage is not what bounds the
#       # cell: the client and the socket path are.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
ONLY=${ONLY:-.}
QUICK=${QUICK:-0}
IMG=${IMG:-/dev/shm/costack-nbd-bench.raw}
SIZE_MB=${SIZE_MB:-1024}
PORT_BASE=${PORT_BASE:-20809}

for tool in qemu-img qemu-nbd nbdkit nbdcopy; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install qemu-utils nbdkit libnbd-bin)" >&2; exit 1; }
done
cargo build --release -q -p costack-nbd
COSTACK=${COSTACK:-target/release/costack-nbd}   # or another build, to compare
BASELINE=${BASELINE:-}
CEILING=${CEILING:-0}
[ -z "$BASELINE" ] || [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
# A baseline built before qemu-nbd's command line (issue 23) serves until
# stopped and knows no -t; a later one needs it, as costack-nbd does.
baseline_args=()
if [ -n "$BASELINE" ]; then
    case $("$BASELINE" --help 2>/dev/null || true) in
        *--persistent*) baseline_args=(-t -e 8 -f raw) ;;
    esac
fi

# Fresh random data every run: reads must move data. (An image left
# from an earlier run holds what its writes wrote; and costack-nbd sends
# zero blocks of a read as holes, so reads of zeros would flatter it.)
echo "writing $IMG ($SIZE_MB MiB of random data)"
head -c $((SIZE_MB << 20)) /dev/urandom > "$IMG"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start_server() { # name port
    case $1 in
        costack) "$COSTACK" -t -e 8 -f raw -p "$2" "$IMG" >/dev/null & ;;
        baseline) "$BASELINE" "${baseline_args[@]}" -p "$2" "$IMG" >/dev/null & ;;
        qemu-nbd) qemu-nbd -f raw -t -e 8 --cache=writeback --aio=threads -p "$2" "$IMG" & ;;
        nbdkit) nbdkit -f -p "$2" file "$IMG" & ;;
        costack-mem) "$COSTACK" -t -e 8 --size "${SIZE_MB}M" -p "$2" >/dev/null & ;;
        nbdkit-null) nbdkit -f -p "$2" null "${SIZE_MB}M" & ;;
    esac
    pids+=($!)
    for _ in $(seq 100); do
        qemu-img info "nbd://127.0.0.1:$2" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server $1 did not come up" >&2; exit 1
}

servers=(costack qemu-nbd nbdkit)
[ -z "$BASELINE" ] || servers+=(baseline)
[ "$CEILING" = 0 ] || servers+=(costack-mem nbdkit-null)
declare -A port
i=0
for s in "${servers[@]}"; do
    port[$s]=$((PORT_BASE + i)); i=$((i + 1))
    start_server "$s" "${port[$s]}"
done
# The memory disk starts empty, and costack-nbd sends zeros as holes:
# give it the image's random data, so that its reads move data too.
[ "$CEILING" = 0 ] || nbdcopy "$IMG" "nbd://127.0.0.1:${port[costack-mem]}"

# name | qemu-img bench arguments (count scaled for ~1-3 s per run).
# Writes write the byte 0xa5, not qemu-img's default zeros: later reads
# of the same offsets must read data, not zero blocks.
if [ "$QUICK" = 1 ]; then scale=10; else scale=1; fi
workloads=(
    "4k-read-qd1|-c $((100000 / scale)) -d 1 -s 4k -S 1236992"
    "4k-read-qd32|-c $((400000 / scale)) -d 32 -s 4k -S 1236992"
    "4k-write-qd1|-w --pattern 165 -c $((100000 / scale)) -d 1 -s 4k -S 1236992"
    "4k-write-qd32|-w --pattern 165 -c $((400000 / scale)) -d 32 -s 4k -S 1236992"
    "64k-read-qd16|-c $((60000 / scale)) -d 16 -s 64k -S 1245184"
    "64k-write-qd16|-w --pattern 165 -c $((60000 / scale)) -d 16 -s 64k -S 1245184"
    "1m-read-qd4|-c $((6000 / scale)) -d 4 -s 1M -S 5242880"
    "1m-write-qd4|-w --pattern 165 -c $((6000 / scale)) -d 4 -s 1M -S 5242880"
)

all=("${workloads[@]}" "nbdcopy-read|")
selected=()
for w in "${all[@]}"; do
    if [[ ${w%%|*} =~ $ONLY ]]; then selected+=("$w"); fi
done

declare -A results
bench_once() { # server workload-args -> ops/s
    local out secs count
    # shellcheck disable=SC2086
    out=$(qemu-img bench -f raw -t none -i threads $2 "nbd://127.0.0.1:${port[$1]}" 2>&1)
    secs=$(sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out")
    count=$(sed -n 's/.*-c \([0-9]*\).*/\1/p' <<<"$2")
    [ -n "$secs" ] || { echo "qemu-img bench failed on $1: $out" >&2; exit 1; }
    awk -v c="$count" -v s="$secs" 'BEGIN { printf "%.0f", c / s }'
}

copy_once() { # server -> MB/s (nbdcopy of the whole image to /dev/null)
    local t0 t1
    t0=$(date +%s.%N)
    nbdcopy --connections=4 "nbd://127.0.0.1:${port[$1]}" null: >/dev/null
    t1=$(date +%s.%N)
    awk -v t0="$t0" -v t1="$t1" -v mb="$SIZE_MB" 'BEGIN { printf "%.0f", mb / (t1 - t0) }'
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

for w in "${selected[@]}"; do
    name=${w%%|*}; args=${w#*|}
    for _ in $(seq "$ROUNDS"); do
        for s in "${servers[@]}"; do
            # (nbdcopy would skip the null plugin's zeros: no ceiling there.)
            if [ "$name" = nbdcopy-read ]; then
                [ "$s" != nbdkit-null ] || continue
                v=$(copy_once "$s")
            else v=$(bench_once "$s" "$args"); fi
            results[$name,$s]="${results[$name,$s]:-} $v"
        done
    done
    echo "done: $name" >&2
done

extra_head=(); [ -z "$BASELINE" ] || extra_head=(baseline vs-base)
printf '\n%-16s %12s %12s %12s %10s %10s' workload costack-nbd qemu-nbd nbdkit vs-qemu vs-nbdkit
[ -z "$BASELINE" ] || printf ' %12s %10s' "${extra_head[@]}"
[ "$CEILING" = 0 ] || printf ' %12s %12s' costack-mem nbdkit-null
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { print a / b }'; }
for w in "${selected[@]}"; do
    name=${w%%|*}
    c=$(median <<<"${results[$name,costack]}")
    q=$(median <<<"${results[$name,qemu-nbd]}")
    k=$(median <<<"${results[$name,nbdkit]}")
    printf '%-16s %12s %12s %12s %9.2fx %9.2fx' "$name" "$c" "$q" "$k" "$(ratio "$c" "$q")" "$(ratio "$c" "$k")"
    if [ -n "$BASELINE" ]; then
        b=$(median <<<"${results[$name,baseline]}")
        printf ' %12s %9.2fx' "$b" "$(ratio "$c" "$b")"
    fi
    if [ "$CEILING" != 0 ]; then
        printf ' %12s %12s' "$(median <<<"${results[$name,costack-mem]}")" \
            "$(median <<<"${results[$name,nbdkit-null]:-}")"
    fi
    echo
done
echo "(IOPS for qemu-img bench workloads, MB/s for nbdcopy; medians of $ROUNDS interleaved rounds)"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
