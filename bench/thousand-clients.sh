#!/usr/bin/env bash
# 1,000 clients connecting at once (issue 23): each negotiates (fixed
# newstyle, NBD_OPT_GO), reads 4 KiB and disconnects, all started
# together against one server; the time until the last is served, and how
# many were not. costack-nbd, qemu-nbd and nbdkit (file plugin) serve the
# same 64 MiB raw file with no client limit (-e 0 / nbdkit's default),
# interleaved for ROUNDS rounds; ratios are of medians, peer time over
# costack-nbd's (above 1: costack-nbd is faster).
#
# The clients are one Python asyncio process (the same for every server),
# so its own cost is in every time: the ratios understate differences.
#
# Environment: ROUNDS (5), CLIENTS (1000), COSTACK_NBD (a built binary;
# default: cargo build --release).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-5}
clients=${CLIENTS:-1000}
for tool in qemu-nbd nbdkit python3; do
    command -v "$tool" >/dev/null || { echo "thousand-clients: $tool is missing" >&2; exit 1; }
done
costack=${COSTACK_NBD:-}
if [ -z "$costack" ]; then
    cargo build --release -q -p costack-nbd --manifest-path "$root/Cargo.toml"
    costack=${CARGO_TARGET_DIR:-$root/target}/release/costack-nbd
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
head -c $((64 << 20)) /dev/urandom >"$work/disk.raw"
# Connections beyond the default limits would be refused by the shell,
# not the servers.
ulimit -n 8192

cat >"$work/clients.py" <<'EOF'
import asyncio, struct, sys, time

PORT, N = int(sys.argv[1]), int(sys.argv[2])

async def one():
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    greeting = await r.readexactly(18)
    assert greeting[:16] == b"NBDMAGICIHAVEOPT"
    w.write(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    w.write(b"IHAVEOPT" + struct.pack(">III", 7, 6, 0) + struct.pack(">H", 0))
    while True:  # NBD_OPT_GO replies until the ack
        _, _, typ, length = struct.unpack(">QIII", await r.readexactly(20))
        await r.readexactly(length)
        if typ == 1:
            break
        if typ & (1 << 31):
            raise RuntimeError("NBD_OPT_GO refused")
    w.write(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 4096))
    magic, err, _ = struct.unpack(">IIQ", await r.readexactly(16))
    assert magic == 0x67446698 and err == 0
    await r.readexactly(4096)
    w.write(struct.pack(">IHHQQI", 0x25609513, 0, 2, 2, 0, 0))
    await w.drain()
    w.close()

async def main():
    start = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(N)), return_exceptions=True)
    took = time.monotonic() - start
    failed = sum(1 for x in results if isinstance(x, BaseException))
    print(f"{took:.4f} {failed}")

asyncio.run(main())
EOF

# Below the ephemeral range (32768 up), which the clients' sockets use.
port=$((20000 + RANDOM % 10000))
start_server() {
    case $1 in
    costack) "$costack" -t -e 0 -f raw -b 127.0.0.1 -p "$port" "$work/disk.raw" 2>"$work/log" & ;;
    qemu-nbd) qemu-nbd -t -e 0 -f raw -b 127.0.0.1 -p "$port" "$work/disk.raw" 2>"$work/log" & ;;
    nbdkit) nbdkit -f -i 127.0.0.1 -p "$port" file "$work/disk.raw" 2>"$work/log" & ;;
    esac
    pid=$!
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $port)).close()" 2>/dev/null && return
        sleep 0.05
    done
    echo "thousand-clients: $1 did not start on port $port:" >&2
    cat "$work/log" >&2
    exit 1
}

declare -A times
for round in $(seq "$rounds"); do
    for server in costack qemu-nbd nbdkit; do
        port=$((port + 1))
        start_server "$server"
        read -r took failed < <(python3 "$work/clients.py" "$port" "$clients")
        kill "$pid"; wait "$pid" 2>/dev/null || true
        echo "round $round $server: ${took}s, $failed of $clients not served"
        times[$server]+="$took "
        [ "$failed" -eq 0 ] || echo "thousand-clients: $server lost $failed clients" >&2
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
c=$(median "${times[costack]}")
for server in qemu-nbd nbdkit; do
    m=$(median "${times[$server]}")
    printf '%s: median %ss, costack-nbd %ss: %.2fx\n' "$server" "$m" "$c" "$(echo "$m / $c" | bc -l)"
done
