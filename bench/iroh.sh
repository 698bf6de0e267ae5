# iroh-mode section of bench/run.sh (sourced by it; uses its helpers and variables).
#
# A third namespace "rly" runs `tunnel relay` on 10.99.3.1 (an address on its loopback), reached
# from "srv" over veth 10.99.1.0/24 and from "cli" over veth 10.99.2.0/24; the srv-cli veth
# (10.99.0.0/24) is the direct path hole punching finds. So relayed packets cross two veths and
# the relay process, direct ones one veth, as on a real network, and the relay is a process of
# its own whose CPU time is measured like the tunnel processes'.
# A fourth namespace "one" has only loopback: relay, server, client and sink all on 127.0.0.1
# (the "relayed throughput >= 1 Gbit/s on loopback" target).
# shellcheck shell=bash disable=SC2154,SC2034 # SC2034: variables of run.sh (GEN_EXTRA)

NS_R="$tag-rly"
NS_O="$tag-one"
RELAY_IP=10.99.3.1
RELAY_PORT=3340
RELAY_URL="http://$RELAY_IP:$RELAY_PORT"
if [ $QUICK = 1 ]; then FB_RUNS=3; else FB_RUNS=7; fi
echo "iroh_fb_runs=$FB_RUNS" >>"$work/meta-extra.txt"
echo "iroh=1" >>"$work/meta-extra.txt"
echo "classic=$CLASSIC" >>"$work/meta-extra.txt"

ip netns add "$NS_R" || die "cannot create network namespace $NS_R"
created_ns+=("$NS_R")
ip netns add "$NS_O" || die "cannot create network namespace $NS_O"
created_ns+=("$NS_O")
ip link add "${tag}rs" netns "$NS_R" type veth peer name "${tag}sr" netns "$NS_S" ||
    die "cannot create the veth pair relay-server"
ip link add "${tag}rc" netns "$NS_R" type veth peer name "${tag}cr" netns "$NS_C" ||
    die "cannot create the veth pair relay-client"
ip -n "$NS_R" addr add 10.99.1.1/24 dev "${tag}rs"
ip -n "$NS_S" addr add 10.99.1.2/24 dev "${tag}sr"
ip -n "$NS_R" addr add 10.99.2.1/24 dev "${tag}rc"
ip -n "$NS_C" addr add 10.99.2.2/24 dev "${tag}cr"
ip -n "$NS_R" addr add "$RELAY_IP/32" dev lo
for ns in "$NS_R" "$NS_O"; do ip -n "$ns" link set lo up; done
ip -n "$NS_R" link set "${tag}rs" up
ip -n "$NS_R" link set "${tag}rc" up
ip -n "$NS_S" link set "${tag}sr" up
ip -n "$NS_C" link set "${tag}cr" up
ip -n "$NS_S" route add "$RELAY_IP/32" via 10.99.1.1
ip -n "$NS_C" route add "$RELAY_IP/32" via 10.99.2.1
say "iroh: relay namespace $NS_R ($RELAY_IP, veths to both sides), loopback namespace $NS_O"

start relay "$NS_R" "$TUN" relay --listen "$RELAY_IP:$RELAY_PORT"
wait_line relay "relay listening" 10 "tunnel relay on $RELAY_IP:$RELAY_PORT"

"$TUN" generate-server-key --output "$work/server-ro.key" >/dev/null ||
    die "tunnel generate-server-key failed"
ID_I=$("$TUN" show-server-id --secret-file "$work/server.key")
ID_RO=$("$TUN" show-server-id --secret-file "$work/server-ro.key")
# Two iroh servers registered with the relay: a normal one (direct path allowed) and a
# --relay-only one, since the relayed throughput needs --relay-only on both sides.
start isrv "$NS_S" "$TUN" --name "$tag-isrv" server --listen "$SRV_IP:4434" \
    --secret-file "$work/server.key" --auth-tokens "$TOKEN" --allowed-tcp 127.0.0.0/8 \
    --max-sessions 0 --relay-url "$RELAY_URL"
start irsrv "$NS_S" "$TUN" --name "$tag-irsrv" server --listen "$SRV_IP:4435" --relay-only \
    --secret-file "$work/server-ro.key" --auth-tokens "$TOKEN" --allowed-tcp 127.0.0.0/8 \
    --max-sessions 0 --relay-url "$RELAY_URL"
wait_line isrv "relay \S+: connected" 15 "tunnel server registering with the relay"
wait_line irsrv "relay \S+: connected" 15 "tunnel server --relay-only registering with the relay"
wait_line isrv "published" 15 "tunnel server publishing its record on the relay"

# ------------------------------------------------------------------ relay RTT
progress "iroh: relay RTT, 20 x GET /ping from the client side"
gen "$NS_C" 60 "GET /ping to the relay" http-ping "$RELAY_IP:$RELAY_PORT" 20
record iroh-ping relay "$GEN_JSON"

# ------------------------------------------------------------------ first byte, time to direct
# Each run starts a fresh `tunnel client` (its start is time zero), connects to its forward as
# soon as it accepts, and stops when one byte came back from the echo service.
fb_client() { # variant: the tunnel client command line
    local common=(--auth-token "$TOKEN" --source "tcp://127.0.0.1:$ECHO_PORT"
        --target 127.0.0.1:7501)
    case $1 in
    relay-url) echo "$TUN" client --server-node-id "$ID_I" --relay-url "$RELAY_URL" \
        "${common[@]}" ;;
    dns) echo "$TUN" client --server-node-id "$ID_I" --dns-server "$RELAY_URL/pkarr" \
        "${common[@]}" ;;
    relay-only) echo "$TUN" client --server-node-id "$ID_RO" --relay-url "$RELAY_URL" \
        --relay-only "${common[@]}" ;;
    esac
}
for variant in relay-url dns relay-only; do
    case $variant in
    relay-url) what="--relay-url, server allows direct" ; dsecs=5 ;;
    dns) what="--dns-server (discovery on the relay), server allows direct"; dsecs=5 ;;
    relay-only) what="--relay-only on both"; dsecs=0 ;;
    esac
    progress "iroh: first byte and time to direct, $what, $FB_RUNS runs"
    echo
    for run in $(seq 1 "$FB_RUNS"); do
        printf '        run %d: ' "$run"
        # shellcheck disable=SC2046 # the command line is plain words
        gen "$NS_C" 60 "first byte ($what)" first-byte 127.0.0.1:7501 20 "$dsecs" -- \
            $(fb_client "$variant")
        record iroh-fb "$variant" "$GEN_JSON" ",\"run\":$run"
    done
done

# ------------------------------------------------------------------ throughput
icli_common=(--auth-token "$TOKEN" --source "tcp://127.0.0.1:$SINK_PORT")
start icli-addr "$NS_C" "$TUN" --name "$tag-icli-addr" client --server-node-id "$ID_I" \
    --server-addr "$SRV_IP:4434" "${icli_common[@]}" --target 127.0.0.1:7601
start icli "$NS_C" "$TUN" --name "$tag-icli" client --server-node-id "$ID_I" \
    --relay-url "$RELAY_URL" "${icli_common[@]}" --target 127.0.0.1:7602
start icli-ro "$NS_C" "$TUN" --name "$tag-icli-ro" client --server-node-id "$ID_RO" \
    --relay-url "$RELAY_URL" --relay-only "${icli_common[@]}" --target 127.0.0.1:7603
wait_line icli-addr "forwarding" 15 "tunnel client --server-addr"
wait_line icli "path: relay -> direct" 15 "tunnel client via the relay, moving to direct"
wait_line icli-ro "forwarding" 15 "tunnel client --relay-only"
# the one-namespace loopback case
start osink "$NS_O" "$PY" "$here/bench.py" sink "127.0.0.1:$SINK_PORT"
start orelay "$NS_O" "$TUN" relay --listen "127.0.0.1:$RELAY_PORT"
wait_line osink listening 10 "sink in $NS_O"
wait_line orelay "relay listening" 10 "tunnel relay in $NS_O"
start osrv "$NS_O" "$TUN" --name "$tag-osrv" server --listen 127.0.0.1:4435 --relay-only \
    --secret-file "$work/server-ro.key" --auth-tokens "$TOKEN" --allowed-tcp 127.0.0.0/8 \
    --max-sessions 0 --relay-url "http://127.0.0.1:$RELAY_PORT"
wait_line osrv "relay \S+: connected" 15 "tunnel server in $NS_O"
start ocli "$NS_O" "$TUN" --name "$tag-ocli" client --server-node-id "$ID_RO" \
    --relay-url "http://127.0.0.1:$RELAY_PORT" --relay-only "${icli_common[@]}" \
    --target 127.0.0.1:7603
wait_line ocli "forwarding" 15 "tunnel client in $NS_O"

relay_pids() { # "VAR VAR": their values (as in run.sh's classic section)
    local v out=""
    for v in $1; do out="$out ${!v}"; done
    echo "${out# }"
}

relay_metrics() { # path name: the /metrics counters of the relay that path uses, or null
    case $1 in
    iroh-relay) ip netns exec "$NS_C" "$PY" "$here/bench.py" relay-metrics \
        "$RELAY_IP:$RELAY_PORT" 2>/dev/null || echo null ;;
    iroh-relay-lo) ip netns exec "$NS_O" "$PY" "$here/bench.py" relay-metrics \
        "127.0.0.1:$RELAY_PORT" 2>/dev/null || echo null ;;
    *) echo null ;;
    esac
}

# name|label|namespace|address|pid variables: client side, server side[, relay]
IPATHS=(
    "iroh-addr|tunnel, direct address (--server-addr)|$NS_C|127.0.0.1:7601|PID_icli_addr PID_isrv"
    "iroh-direct|tunnel via relay, after the move to direct|$NS_C|127.0.0.1:7602|PID_icli PID_isrv"
    "iroh-relay|tunnel relayed (--relay-only)|$NS_C|127.0.0.1:7603|PID_icli_ro PID_irsrv PID_relay"
    "iroh-relay-lo|tunnel relayed, all on loopback|$NS_O|127.0.0.1:7603|PID_ocli PID_osrv \
PID_orelay"
)
for run in $(seq 1 $RUNS); do
    for p in "${IPATHS[@]}"; do
        IFS='|' read -r name label ns addr vars <<<"$p"
        progress "iroh: $label: $TPUT_LABEL, run $run of $RUNS"
        pids=$(relay_pids "$vars")
        c0=()
        for rp in $pids; do c0+=("$(cpu_of "$rp")"); done
        m0=$(relay_metrics "$name")
        gen "$ns" 900 "TCP transfer through $label" tput "$addr" "$TPUT_BYTES"
        m1=$(relay_metrics "$name")
        each=""
        i=0
        for rp in $pids; do
            each="$each${each:+,}$("$PY" -c "print(round($(cpu_of "$rp") - ${c0[$i]}, 3))")"
            i=$((i + 1))
        done
        record tput "$name" "$GEN_JSON" \
            ",\"run\":$run,\"relay_cpu_each\":[$each],\"relay_metrics\":[$m0,$m1]"
    done
done
# Did the direct client stay direct (a fall back to the relay would be logged)?
echo "iroh_direct_fallbacks=$(grep -c 'path: direct -> relay' "$work/icli.err" || true)" \
    >>"$work/meta-extra.txt"

# ------------------------------------------------------------------ profile
if [ $PROFILE = 1 ]; then
    progress "iroh: perf record -g on relay, server and client during a relayed transfer"
    profile_transfer relayed 127.0.0.1:7603 i relay:relay irsrv:irsrv icli_ro:icli_ro
fi

for who in relay isrv irsrv icli icli_ro icli_addr orelay osrv ocli; do
    pv="PID_$who"
    kill -0 "${!pv}" 2>/dev/null || { show_log "${who//_/-}"; die "$who exited during the run"; }
done
record peak relay "{\"hwm_kib\":$(rss_kib "$PID_relay" VmHWM),\"rss_kib\":$(rss_kib "$PID_relay")}"
