#!/usr/bin/env bash
# The keep-alive HTTP/1.1 server of costack/examples/http.rs on one costack
# event loop against the same server (same parser) on tokio's
# current_thread runtime, in one run, interleaved.
#
# Each server runs pinned to CPU 0 and wrk to CPU 1 (the machine has 2
# cores); every cell runs ROUNDS times, alternating the servers each round,
# so that machine noise hits both alike. Prints median requests/s and the
# ratio costack / tokio (higher is better for costack), and the server's
# CPU time per request (utime + stime from /proc, lower is better): when
# one wrk thread is the bottleneck, requests/s ties and CPU per request is
# what tells the servers apart.
#
#   bench/http-vs-tokio.sh                 # 5 rounds of 5 s per cell
#   ROUNDS=1 SECS=2 bench/http-vs-tokio.sh # smoke run
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-5}
CONNS=${CONNS:-"64 256"}
PATHS=${PATHS:-"/ /sleep"}
PORT_COSTACK=${PORT_COSTACK:-18081}
PORT_TOKIO=${PORT_TOKIO:-18082}

command -v wrk >/dev/null || { echo "missing wrk (apt-get install wrk)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "missing taskset (apt-get install util-linux)" >&2; exit 1; }
cargo build --release -q -p costack --example http
BIN=target/release/examples/http
ulimit -n 65536 2>/dev/null || true

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

declare -A pid_of
start() { # runtime port
    taskset -c 0 "$BIN" "$1" "127.0.0.1:$2" >/dev/null &
    pids+=($!)
    pid_of[$2]=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "server $1 did not come up" >&2
    exit 1
}
start costack "$PORT_COSTACK"
start tokio "$PORT_TOKIO"

cpu_ticks() { # pid -> utime + stime, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
rps() { # port conns path -> "requests/s microseconds-of-server-CPU-per-request"
    local before after out
    before=$(cpu_ticks "${pid_of[$1]}")
    out=$(taskset -c 1 wrk -t1 -c"$2" -d"${SECS}s" "http://127.0.0.1:$1$3")
    after=$(cpu_ticks "${pid_of[$1]}")
    awk -v t=$((after - before)) -v us="$TICK_US" -v secs="$SECS" \
        '/^Requests\/sec:/ { printf "%s %.3f\n", $2, t * us / ($2 * secs) }' <<<"$out"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); rounds: $ROUNDS x ${SECS}s; wrk -t1, server on CPU 0, wrk on CPU 1"
printf '%-22s %14s %14s %10s %12s %12s %10s\n' "cell" "costack req/s" "tokio req/s" "ratio" "costack us/r" "tokio us/r" "CPU ratio"
for c in $CONNS; do
    for p in $PATHS; do
        co=(); to=()
        for r in $(seq "$ROUNDS"); do
            if (( r % 2 )); then
                co+=("$(rps "$PORT_COSTACK" "$c" "$p")"); to+=("$(rps "$PORT_TOKIO" "$c" "$p")")
            else
                to+=("$(rps "$PORT_TOKIO" "$c" "$p")"); co+=("$(rps "$PORT_COSTACK" "$c" "$p")")
            fi
        done
        mc=$(printf '%s\n' "${co[@]}" | cut -d' ' -f1 | median)
        mt=$(printf '%s\n' "${to[@]}" | cut -d' ' -f1 | median)
        uc=$(printf '%s\n' "${co[@]}" | cut -d' ' -f2 | median)
        ut=$(printf '%s\n' "${to[@]}" | cut -d' ' -f2 | median)
        printf '%-22s %14.0f %14.0f %9.2fx %12s %12s %9.2fx\n' "c=$c GET $p" "$mc" "$mt" \
            "$(awk -v a="$mc" -v b="$mt" 'BEGIN { print a / b }')" "$uc" "$ut" \
            "$(awk -v a="$uc" -v b="$ut" 'BEGIN { print b / a }')"
    done
done
