#!/usr/bin/env bash
# NBD over TLS: costack-nbd against qemu-nbd and nbdkit (both GnuTLS), in
# one run, interleaved.
#
# Each server exports the same raw image in /dev/shm with TLS required and
# the same X.509 credentials (made here with certtool). fio's libnbd engine
# is the client; it reads its credentials from $HOME/.pki/libnbd, so HOME
# points at a scratch directory for fio only. Each workload runs ROUNDS
# times, cycling through the servers every round. Prints median IOPS and
# the ratios of costack-nbd to each peer (higher is better for it).
#
#   bench/nbd-tls-vs-peers.sh                 # full run (about 4 minutes)
#   ROUNDS=1 SECS=2 bench/nbd-tls-vs-peers.sh # smoke run
#   ONLY=qd32 bench/nbd-tls-vs-peers.sh       # workloads matching a regex
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
SECS=${SECS:-8}
ONLY=${ONLY:-.}
IMG=${IMG:-/dev/shm/costack-nbd-tls-bench.raw}
SIZE_MB=${SIZE_MB:-1024}
PORT_BASE=${PORT_BASE:-20909}

for tool in qemu-nbd nbdkit fio certtool; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (apt-get install qemu-utils nbdkit fio gnutls-bin)" >&2; exit 1; }
done
cargo build --release -q -p costack-nbd --features tls
COSTACK=${COSTACK:-target/release/costack-nbd}

if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" -ne $((SIZE_MB << 20)) ]; then
    echo "creating $IMG ($SIZE_MB MiB of data)"
    head -c $((SIZE_MB << 20)) /dev/urandom > "$IMG"
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Credentials, as qemu's and nbdkit's tests make them.
mkdir -p "$work/server" "$work/home/.pki/libnbd"
printf 'cn = bench CA\nca\ncert_signing_key\n' > "$work/ca.info"
printf 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\n' > "$work/server.info"
printf 'cn = client\ntls_www_client\nencryption_key\nsigning_key\n' > "$work/client.info"
certtool -q --generate-privkey --outfile "$work/ca-key.pem" 2>/dev/null
certtool -q --generate-self-signed --load-privkey "$work/ca-key.pem" --template "$work/ca.info" \
    --outfile "$work/ca-cert.pem" 2>/dev/null
sign() { # dir role
    certtool -q --generate-privkey --outfile "$1/$2-key.pem" 2>/dev/null
    certtool -q --generate-certificate --load-ca-certificate "$work/ca-cert.pem" \
        --load-ca-privkey "$work/ca-key.pem" --load-privkey "$1/$2-key.pem" \
        --template "$work/$2.info" --outfile "$1/$2-cert.pem" 2>/dev/null
    cp "$work/ca-cert.pem" "$1/"
}
sign "$work/server" server
sign "$work/home/.pki/libnbd" client

# X.509 (fio cannot use PSK: libnbd refuses a key file named in a URI
# unless the program allows it, and fio's engine does not).
costack_tls=(--tls require --tls-certificates "$work/server")
qemu_tls=(--object "tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,dir=$work/server" --tls-creds tls0)
nbdkit_tls=(--tls=require "--tls-certificates=$work/server")

start_server() { # name port
    case $1 in
        costack) "$COSTACK" -t -e 8 -f raw -p "$2" "${costack_tls[@]}" "$IMG" >/dev/null 2>&1 & ;;
        qemu-nbd) qemu-nbd -f raw -t -e 8 --cache=writeback --aio=threads -p "$2" \
            "${qemu_tls[@]}" "$IMG" 2>/dev/null & ;;
        nbdkit) nbdkit -f -p "$2" "${nbdkit_tls[@]}" file "$IMG" 2>/dev/null & ;;
    esac
    pids+=($!)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "server $1 did not come up" >&2; exit 1
}

servers=(costack qemu-nbd nbdkit)
declare -A port
i=0
for s in "${servers[@]}"; do
    port[$s]=$((PORT_BASE + i)); i=$((i + 1))
    start_server "$s" "${port[$s]}"
done

# name | fio arguments
workloads=(
    "4k-randread-qd1|--rw=randread --bs=4k --iodepth=1"
    "4k-randread-qd32|--rw=randread --bs=4k --iodepth=32"
    "4k-randwrite-qd32|--rw=randwrite --bs=4k --iodepth=32"
)
selected=()
for w in "${workloads[@]}"; do
    if [[ ${w%%|*} =~ $ONLY ]]; then selected+=("$w"); fi
done

declare -A results
bench_once() { # server fio-args -> IOPS
    local json="$work/fio.json"
    # shellcheck disable=SC2086
    HOME="$work/home" fio --name=bench --ioengine=nbd \
        "--uri=nbds://localhost:${port[$1]}/" $2 \
        --runtime="$SECS" --time_based --ramp_time=1 \
        --output-format=json --output="$json" >/dev/null 2>&1 || {
        echo "fio failed on $1" >&2; cat "$json" >&2; exit 1; }
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(round(j["read"]["iops"] + j["write"]["iops"]))' "$json"
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

for w in "${selected[@]}"; do
    name=${w%%|*}; args=${w#*|}
    for _ in $(seq "$ROUNDS"); do
        for s in "${servers[@]}"; do
            results[$name,$s]="${results[$name,$s]:-} $(bench_once "$s" "$args")"
        done
    done
    echo "done: $name" >&2
done

printf '\n%-18s %12s %12s %12s %10s %10s\n' workload costack-nbd qemu-nbd nbdkit vs-qemu vs-nbdkit
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { print a / b }'; }
for w in "${selected[@]}"; do
    name=${w%%|*}
    c=$(median <<<"${results[$name,costack]}")
    q=$(median <<<"${results[$name,qemu-nbd]}")
    k=$(median <<<"${results[$name,nbdkit]}")
    printf '%-18s %12s %12s %12s %9.2fx %9.2fx\n' "$name" "$c" "$q" "$k" "$(ratio "$c" "$q")" "$(ratio "$c" "$k")"
done
echo "(fio libnbd engine over TLS (X.509), IOPS, medians of $ROUNDS interleaved rounds of ${SECS}s)"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%Y-%m-%d)"
