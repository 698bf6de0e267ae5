#!/usr/bin/env bash
# Memory soak of `tunnel relay` and `tunnel server` under churn, on loopback.
#
#   bench/soak.sh [MINUTES]        default 30; prints a table and writes bench/results/soak-<date>.md
#
# For MINUTES, in a loop: a `tunnel client` finds the server through the relay by EndpointId,
# moves 1 MiB through it both ways, and exits; every 10th round a fresh `tunnel server` with a
# new key also registers and publishes a discovery record (so the relay's client table and its
# record store churn as well), and is stopped again. The long-lived relay and server are
# sampled (VmRSS from /proc) every 10 s. "Flat" means: after the first tenth of the run (caches
# and allocator arenas warming up), RSS stops growing. The binary is build/tunnel or $TUNNEL.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
TUNNEL=${TUNNEL:-$root/build/tunnel}
MINUTES=${1:-30}
case $MINUTES in '' | *[!0-9]*) echo "bench/soak.sh: MINUTES must be a whole number" >&2; exit 2 ;; esac
[ -x "$TUNNEL" ] || { echo "bench/soak.sh: $TUNNEL not found: run make first" >&2; exit 1; }

work=$(mktemp -d /tmp/tunnel-soak.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
export XDG_RUNTIME_DIR=$work HOME=$work

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_for() { # FILE PATTERN SECONDS
    local i
    for ((i = 0; i < $3 * 10; i++)); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "bench/soak.sh: '$2' did not appear in $1:" >&2; cat "$1" >&2; return 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

rport=$(free_port)
"$TUNNEL" relay --listen "127.0.0.1:$rport" >"$work/relay.out" 2>"$work/relay.err" &
relay=$!; pids+=("$relay")
wait_for "$work/relay.out" "relay listening" 20
url="http://127.0.0.1:$rport"

python3 "$root/spec/tools/netcheck.py" tcp-echo --port 0 --timeout $((MINUTES * 60 + 600)) \
    >"$work/echo.out" 2>&1 &
pids+=("$!")
wait_for "$work/echo.out" "PORT" 10
eport=$(sed -n 's/^PORT \([0-9]*\)$/\1/p' "$work/echo.out")

"$TUNNEL" generate-server-key --output "$work/server.key" >/dev/null 2>&1
token=$("$TUNNEL" generate-token)
start_server() { # KEYFILE OUTFILE -> pid on stdout
    "$TUNNEL" server --listen 127.0.0.1:0 --secret-file "$1" --auth-tokens "$token" \
        --allowed-tcp 127.0.0.0/8 --relay-url "$url" --relay-only >"$2" 2>"$2.err" &
    echo $!
}
server=$(start_server "$work/server.key" "$work/server.out"); pids+=("$server")
wait_for "$work/server.out" "Relay: " 20
id=$(sed -n 's/^EndpointId: //p' "$work/server.out")

samples="$work/samples.csv"
echo "seconds,relay_kb,server_kb,rounds,failures" >"$samples"
start=$(date +%s)
end=$((start + MINUTES * 60))
rounds=0 failures=0 next_sample=$start
while :; do
    now=$(date +%s)
    if [ "$now" -ge "$next_sample" ]; then
        echo "$((now - start)),$(rss_kb "$relay"),$(rss_kb "$server"),$rounds,$failures" >>"$samples"
        next_sample=$((next_sample + 10))
    fi
    [ "$now" -ge "$end" ] && break
    lport=$(free_port)
    "$TUNNEL" client --server-node-id "$id" --relay-url "$url" --relay-only --auth-token "$token" \
        --source "tcp://127.0.0.1:$eport" --target "127.0.0.1:$lport" >"$work/client.out" 2>&1 &
    client=$!
    if wait_for "$work/client.out" "forwarding tcp" 20 2>/dev/null &&
        python3 "$root/spec/tools/netcheck.py" tcp-bulk --port "$lport" --bytes 1048576 \
            --timeout 30 | grep -q "BYTES 1048576"; then :; else failures=$((failures + 1)); fi
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    rounds=$((rounds + 1))
    if [ $((rounds % 10)) = 0 ]; then
        "$TUNNEL" generate-server-key --output "$work/extra.key" --force >/dev/null 2>&1
        extra=$(start_server "$work/extra.key" "$work/extra.out")
        wait_for "$work/extra.out" "Relay: " 20 2>/dev/null || failures=$((failures + 1))
        kill "$extra" 2>/dev/null || true
        wait "$extra" 2>/dev/null || true
    fi
done

mkdir -p "$here/results"
out="$here/results/soak-$(date -u +%Y-%m-%d-%H%M%S).md"
python3 - "$samples" "$MINUTES" "$rounds" "$failures" >"$out" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
minutes, rounds, failures = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def col(name):
    return [int(r[name]) for r in rows]
n = len(rows)
warm = max(1, n // 10)
print(f"## Soak: {minutes} min of churn on loopback, {rounds} client sessions ({failures} failed)\n")
print("| process | RSS after warm-up (KiB) | RSS at the end (KiB) | peak (KiB) | growth after warm-up |")
print("|---|---:|---:|---:|---:|")
for name, label in (("relay_kb", "tunnel relay"), ("server_kb", "tunnel server")):
    v = col(name)
    a, b = v[warm], v[-1]
    print(f"| {label} | {a} | {b} | {max(v)} | {b - a:+d} KiB ({(b - a) / a * 100:+.1f} %) |")
print("\nSamples every 10 s (seconds, relay KiB, server KiB, rounds so far):\n")
step = max(1, n // 20)
print("```")
for r in rows[::step] + ([rows[-1]] if (n - 1) % step else []):
    print(f"{r['seconds']:>6} {r['relay_kb']:>8} {r['server_kb']:>8} {r['rounds']:>6}")
print("```")
EOF
cat "$out"
echo "bench/soak.sh: written to $out"
