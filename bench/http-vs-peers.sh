#!/usr/bin/env bash
# The keep-alive HTTP/1.1 server of costack/examples/http.rs on costack's
# event loop against the same server (same parser) on tokio and on may, the
# other stackful runtime, in one run, interleaved.
#
# Each server runs pinned to CPU 0 and wrk to CPU 1 (the machine has 2
# cores); every cell runs ROUNDS times, rotating the order of the servers
# each round, so that machine noise hits all alike. Prints median
# requests/s, the ratios costack/tokio and costack/may (higher is better
# for costack), and each server's CPU time per request (utime + stime from
# /proc, lower is better): when one wrk thread is the bottleneck,
# requests/s ties and CPU per request is what tells the servers apart.
#
# LOOPS=N runs costack with N loops, tokio multi_thread with N workers and
# may with N workers, and lets the servers use every CPU (no pinning; wrk
# shares them).
#
#   bench/http-vs-peers.sh                 # 5 rounds of 5 s per cell
#   ROUNDS=1 SECS=2 bench/http-vs-peers.sh # smoke run
#   LOOPS=2 bench/http-vs-peers.sh         # two loops / workers each
#   SERVERS="costack@io_uring costack tokio may" bench/http-vs-peers.sh
#                                          # costack on COSTACK_AIO=io_uring too
#   SERVERS="costack tokio epoll" PATHS=/ bench/http-vs-peers.sh
#                                          # against the floor: a bare epoll
#                                          # loop (one loop; no /sleep)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-5}
CONNS=${CONNS:-"64 256"}
PATHS=${PATHS:-"/ /sleep"}
LOOPS=${LOOPS:-1}
PORT_BASE=${PORT_BASE:-18081}
SERVERS=${SERVERS:-"costack tokio may"}

command -v wrk >/dev/null || { echo "missing wrk (apt-get install wrk)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "missing taskset (apt-get install util-linux)" >&2; exit 1; }
cargo build --release -q -p costack --example http
BIN=target/release/examples/http
ulimit -n 65536 2>/dev/null || true
if [ "$LOOPS" -gt 1 ]; then SERVER_CPUS=0-$(($(nproc) - 1)); WRK_CPUS=$SERVER_CPUS; else SERVER_CPUS=0; WRK_CPUS=1; fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

declare -A pid_of port_of
start() { # server port (a server is a runtime, or costack@BACKEND: COSTACK_AIO=BACKEND)
    local env=()
    [[ $1 == *@* ]] && env=(env "COSTACK_AIO=${1#*@}")
    taskset -c "$SERVER_CPUS" "${env[@]}" "$BIN" "${1%@*}" "127.0.0.1:$2" --loops "$LOOPS" >/dev/null &
    pids+=($!)
    pid_of[$1]=$!
    port_of[$1]=$2
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "server $1 did not come up" >&2
    exit 1
}
read -r -a servers <<<"$SERVERS"
i=0
for s in "${servers[@]}"; do start "$s" $((PORT_BASE + i)); i=$((i + 1)); done

cpu_ticks() { # pid -> utime + stime, in clock ticks (all threads)
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
rps() { # server conns path -> "requests/s microseconds-of-server-CPU-per-request"
    local before after out
    before=$(cpu_ticks "${pid_of[$1]}")
    out=$(taskset -c "$WRK_CPUS" wrk -t1 -c"$2" -d"${SECS}s" "http://127.0.0.1:${port_of[$1]}$3")
    after=$(cpu_ticks "${pid_of[$1]}")
    awk -v t=$((after - before)) -v us="$TICK_US" -v secs="$SECS" \
        '/^Requests\/sec:/ { printf "%s %.3f\n", $2, t * us / ($2 * secs) }' <<<"$out"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); rounds: $ROUNDS x ${SECS}s; loops: $LOOPS; wrk -t1 on CPU $WRK_CPUS, servers on CPU $SERVER_CPUS"
printf '%-18s' "cell"
for s in "${servers[@]}"; do printf ' %12s %8s' "$s req/s" "us/req"; done
for s in "${servers[@]:1}"; do printf ' %10s' "vs $s"; done
echo
for c in $CONNS; do
    for p in $PATHS; do
        declare -A res=()
        for r in $(seq "$ROUNDS"); do
            # Rotate who goes first each round.
            n=${#servers[@]}
            for k in $(seq 0 $((n - 1))); do
                s=${servers[$(((k + r) % n))]}
                [[ $s == epoll && $p == /sleep ]] && continue
                res[$s]="${res[$s]:-}$(rps "$s" "$c" "$p")"$'\n'
            done
        done
        printf '%-18s' "c=$c GET $p"
        declare -A med=()
        for s in "${servers[@]}"; do
            if [ -z "${res[$s]:-}" ]; then med[$s]=nan; printf ' %12s %8s' - -; continue; fi
            med[$s]=$(grep . <<<"${res[$s]}" | cut -d' ' -f1 | median)
            us=$(grep . <<<"${res[$s]}" | cut -d' ' -f2 | median)
            printf ' %12.0f %8s' "${med[$s]}" "$us"
        done
        for s in "${servers[@]:1}"; do
            if [ "${med[$s]}" = nan ] || [ "${med[${servers[0]}]}" = nan ]; then printf ' %10s' -; continue; fi
            printf ' %9.2fx' "$(awk -v a="${med[${servers[0]}]}" -v b="${med[$s]}" 'BEGIN { print a / b }')"
        done
        echo
        unset res med
    done
done
