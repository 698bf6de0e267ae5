#!/usr/bin/env bash
# Side-by-side benchmark of `tunnel` against raw veth, `ssh -L` and socat, on this machine.
#
#   sudo bench/run.sh            full run (1 GiB transfers, medians of 3)
#   sudo bench/run.sh --quick    256 MiB transfers, one run each
#   sudo bench/run.sh --profile  also record perf profiles of both tunnel processes during an
#                                extra transfer (needs `perf`) and add the top symbols
#   --wait-idle SECONDS          wait up to SECONDS for other processes to leave the CPUs idle
#                                before measuring (default: warn and go on)
#   --nice N                     run everything at nice level N (e.g. -20 on a machine that
#                                other jobs keep busy; default: unchanged)
#   --iroh-only                  only the iroh-mode section (relay, first byte, time to direct,
#                                relayed vs direct throughput, relay CPU; bench/iroh.sh)
#   --no-iroh                    only the classic side-by-side comparison
#
# Two network namespaces joined by a veth pair: "srv" (10.99.0.1) runs the target services,
# sshd, `tunnel server` and socat's listener; "cli" (10.99.0.2) runs `tunnel client`, `ssh -L`,
# the client-side socat and the load generators (bench/bench.py). Nothing leaves those
# namespaces. The iroh section (bench/iroh.sh) adds "rly" (`tunnel relay`, with a veth to each
# side) and "one" (loopback only). The binary is build/tunnel, or $TUNNEL; this script builds
# nothing.
# Results: a Markdown table on stdout and in bench/results/<date>.md. See docs/benchmarks.md.
# PID_<name> variables are assigned by start() through printf -v.
# shellcheck disable=SC2154
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

QUICK=0
PROFILE=0
CLASSIC=1
IROH=1
WAIT_IDLE=0
NICE=""
usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}
ARGS="$*"
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --profile) PROFILE=1 ;;
    --iroh-only) CLASSIC=0; IROH=1 ;;
    --no-iroh) CLASSIC=1; IROH=0 ;;
    --wait-idle)
        [ $# -ge 2 ] && [ "$2" -ge 0 ] 2>/dev/null ||
            { echo "bench/run.sh: --wait-idle needs a number of seconds" >&2; exit 2; }
        WAIT_IDLE=$2
        shift ;;
    --nice)
        [ $# -ge 2 ] && [ "$2" -ge -20 ] 2>/dev/null && [ "$2" -le 19 ] ||
            { echo "bench/run.sh: --nice needs a level from -20 to 19" >&2; exit 2; }
        NICE=$2
        shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench/run.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '%s\n' "$*"; }
die() {
    printf 'bench/run.sh: error: %s\n' "$*" >&2
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    die "needs root for network namespaces and sshd: run it as 'sudo bench/run.sh $ARGS'"
fi

if [ -n "$NICE" ]; then
    # With autogroup scheduling (kernel.sched_autogroup_enabled=1) CPU is shared between
    # sessions first, so nice alone would not help against other sessions' jobs: run in a
    # session of our own and give that session's group the nice level too.
    if [ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" = 1 ] &&
        [ -z "${TUNNEL_BENCH_SESSION:-}" ]; then
        export TUNNEL_BENCH_SESSION=1
        setsid "${BASH_SOURCE[0]}" "${ORIG_ARGS[@]}" &
        child=$!
        trap 'kill -TERM "$child" 2>/dev/null' INT TERM
        rc=0
        wait "$child" || rc=$?
        while kill -0 "$child" 2>/dev/null; do rc=0; wait "$child" || rc=$?; done
        exit $rc
    fi
    if [ -w /proc/self/autogroup ]; then
        echo "$NICE" >/proc/self/autogroup 2>/dev/null || true
    fi
    renice -n "$NICE" -p $$ >/dev/null || die "renice -n $NICE failed"
fi

# ----------------------------------------------------------------------------- parameters
if [ $QUICK = 1 ]; then
    TPUT_BYTES=$((256 * 1024 * 1024)); TPUT_LABEL="256 MiB"; RUNS=1
    PING_COUNT=10000; UDP_SECONDS=2
else
    TPUT_BYTES=$((1024 * 1024 * 1024)); TPUT_LABEL="1 GiB"; RUNS=3
    PING_COUNT=10000; UDP_SECONDS=3
fi
PING_ROUNDS=5                  # the round trips are split into interleaved rounds
LOAD_COUNT=1000 LOAD_ROUNDS=3  # round trips next to a transfer on the same forwarder
UDP_RATES="100 300 500 1000"   # Mbit/s offered, 1200-byte datagrams
HOLD_CONNS=1000
SRV_IP=10.99.0.1
CLI_IP=10.99.0.2
# The namespaces are created fresh by this run, so these ports are always free in them.
SINK_PORT=5001 ECHO_PORT=5002 UDP_PORT=5003 SSHD_PORT=2222 TUN_PORT=4433
SOCAT_S_SINK=6001 SOCAT_S_ECHO=6002 SOCATB_S_SINK=6011 SOCATB_S_ECHO=6012

# ----------------------------------------------------------------------------- dependencies
need_pkgs=()
need() { # command package
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || need_pkgs+=("$2")
}
need sshd openssh-server
need ssh openssh-client
need ssh-keygen openssh-client
need socat socat
need ip iproute2
need ps procps
need python3 python3
need timeout coreutils
if [ ${#need_pkgs[@]} -gt 0 ]; then
    mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
    command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
    say "Installing with apt-get: ${need_pkgs[*]}"
    case " ${need_pkgs[*]} " in *" openssh-server "*)
        say "  (openssh-server's package scripts may enable the system sshd service; this" \
            "benchmark runs its own sshd inside a namespace and never uses it)" ;;
    esac
    DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        die "apt-get update failed; install ${need_pkgs[*]} by hand and re-run"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need_pkgs[@]}" || die "apt-get install ${need_pkgs[*]} failed"
fi
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=$(command -v python3); fi
PERF=$(command -v perf || true)
if [ $PROFILE = 1 ] && [ -z "$PERF" ]; then
    die "--profile needs perf (Debian: apt-get install linux-perf)"
fi

TUNNEL_SRC=${TUNNEL:-$repo/build/tunnel}
[ -x "$TUNNEL_SRC" ] ||
    die "no tunnel binary at $TUNNEL_SRC: build it first ('make' in $repo)" \
        "or set TUNNEL=/path/to/tunnel"

# The build type matters: an unoptimised build (Debug: -O0) understates the tunnel's own code.
# What counts is the C flags CMake generated next to the binary, not the cache entry alone
# (an empty CMAKE_BUILD_TYPE means the project's default, RelWithDebInfo).
BUILD_TYPE=unknown
bdir=$(dirname "$TUNNEL_SRC")
if [ -f "$bdir/CMakeCache.txt" ]; then
    BUILD_TYPE=$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$bdir/CMakeCache.txt")
    BUILD_TYPE=${BUILD_TYPE:-project default}
fi
if [ -f "$bdir/CMakeFiles/tuncore.dir/flags.make" ]; then
    opt=$(sed -n 's/^C_FLAGS = //p' "$bdir/CMakeFiles/tuncore.dir/flags.make" |
        grep -o -- '-O[0-9sgz]*' | tail -n 1 || true)
    opt=${opt:--O0}
    BUILD_TYPE="$BUILD_TYPE, $opt"
    case "$opt" in
    -O0 | -Og)
        say "WARNING: $TUNNEL_SRC was compiled with $opt (CMake build type $BUILD_TYPE); the"
        say "         numbers will understate the tunnel. Measure the project's default build:"
        say "         cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo && make -C build" ;;
    esac
fi

# ----------------------------------------------------------------------------- run state
work=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-bench-XXXXXX")
chmod 700 "$work"
tag="tb$$"
NS_S="$tag-srv"
NS_C="$tag-cli"
VETH_S="${tag}s"
VETH_C="${tag}c"
PIDS=()
declare -A NAME_OF=()
KEEP_WORK=0
created_ns=()
made_run_sshd=0
ok=0

descendants() { # pid...: the pids and all their live descendants
    local p c
    for p in "$@"; do
        echo "$p"
        for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do descendants "$c"; done
    done
}

cleanup() {
    local rc=$? all p i
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then
        mapfile -t all < <(descendants "${PIDS[@]}")
        for p in "${all[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        for i in $(seq 1 30); do # up to 3 s for a clean exit, then SIGKILL
            alive=0
            for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            [ $alive = 0 ] && break
            sleep 0.1
        done
        for p in "${all[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
        for p in "${PIDS[@]}"; do # collect exit statuses; name the ones that crashed
            st=0
            wait "$p" 2>/dev/null || st=$?
            if [ $st -gt 128 ] && [ $st != 143 ] && [ $st != 137 ] && [ $st != 255 ]; then
                echo "bench/run.sh: note: ${NAME_OF[$p]:-pid $p} ended with signal" \
                    "$((st - 128)) when stopped (logs: $work/${NAME_OF[$p]:-?}.err)" >&2
                KEEP_WORK=1
            fi
        done
    fi
    for ns in "${created_ns[@]}"; do ip netns delete "$ns" 2>/dev/null || true; done
    if [ $made_run_sshd = 1 ]; then rmdir /run/sshd 2>/dev/null || true; fi
    if [ $ok = 1 ] && [ $rc = 0 ] && [ $KEEP_WORK = 0 ]; then
        rm -rf "$work"
    else
        echo "bench/run.sh: logs of this run are kept in $work" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A copy, so that a rebuild of build/tunnel during the run cannot change what is measured.
cp "$TUNNEL_SRC" "$work/tunnel" || die "cannot copy $TUNNEL_SRC"
TUN="$work/tunnel"

nss() { ip netns exec "$NS_S" "$@"; }
nsc() { ip netns exec "$NS_C" "$@"; }

# start NAME NS cmd...: run in the background in a namespace, logs in $work/NAME.{out,err}
start() {
    local name=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$@" >"$work/$name.out" 2>"$work/$name.err" </dev/null &
    PIDS+=($!)
    NAME_OF[$!]=$name
    printf -v "PID_${name//-/_}" '%s' "$!"
}

show_log() { # name
    local f
    for f in "$work/$1.out" "$work/$1.err"; do
        [ -s "$f" ] && { echo "--- $f (last lines):" >&2; tail -n 15 "$f" >&2; }
    done
    return 0
}

# wait_line NAME PATTERN SECONDS WHAT: wait until PATTERN appears in NAME's out or err
wait_line() {
    local name=$1 pat=$2 secs=$3 what=$4 pidvar="PID_${1//-/_}" i
    for i in $(seq 1 $((secs * 20))); do
        grep -qE "$pat" "$work/$name.out" "$work/$name.err" 2>/dev/null && return 0
        if ! kill -0 "${!pidvar}" 2>/dev/null; then
            show_log "$name"
            die "$what: the process exited before it was ready"
        fi
        sleep 0.05
    done
    show_log "$name"
    die "$what: not ready after ${secs} s (waited for /$pat/ in its output)"
}

wait_port() { # ns addr:port seconds what
    ip netns exec "$1" "$PY" "$here/bench.py" wait-port "$2" "$3" ||
        die "$4: nothing accepts connections on $2 after $3 s"
}

rss_kib() { # pid [field]: VmRSS (or another field) in KiB
    awk -v f="${2:-VmRSS}:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

sum_rss() { # pid...: VmRSS of the pids and their descendants, KiB
    local t=0 p
    for p in $(descendants "$@"); do t=$((t + $(rss_kib "$p"))); done
    echo $t
}

cpu_of() { "$PY" "$here/bench.py" cpu "$@"; }

# tunnel_stats: one JSON object with the client's stats() and the server's sessions(), read
# through the control sockets (tunnel attach); {} if that fails (it is diagnostics only).
tunnel_stats() {
    local c s
    c=$(echo 'return require("cjson").encode(stats().client or {})' |
        timeout 10 "$TUN" attach "$tag-client" 2>/dev/null) || c=""
    s=$(echo 'return require("cjson").encode(sessions())' |
        timeout 10 "$TUN" attach "$tag-server" 2>/dev/null) || s=""
    "$PY" -c '
import json, sys
def dec(t):
    try:
        return json.loads(json.loads(t))
    except Exception:
        return None
print(json.dumps({"client": dec(sys.argv[1]), "server": dec(sys.argv[2])}))' "$c" "$s"
}

# udp_counters NS: the namespace's kernel UDP counters (/proc/net/snmp) as JSON
udp_counters() {
    ip netns exec "$1" cat /proc/net/snmp | awk '
        $1 == "Udp:" && !h { for (i = 2; i <= NF; i++) k[i] = $i; h = 1; next }
        $1 == "Udp:" && h { printf "{"; for (i = 2; i <= NF; i++) printf "%s\"%s\":%s",
            (i > 2 ? "," : ""), k[i], $i; print "}" }'
}

RESULTS="$work/results.jsonl"
: >"$RESULTS"
GEN_EXTRA=""
record() { # kind path json [extra json fields...]; adds the last generator's other-load figure
    printf '{"kind":"%s","path":"%s","data":%s%s%s}\n' "$1" "$2" "$3" "${4:-}" "$GEN_EXTRA" \
        >>"$RESULTS"
    GEN_EXTRA=""
}

# profile_transfer LABEL ADDR PREFIX PIDVAR:NAME...: perf record -g on the processes in $PID_<PIDVAR>
# during one TCP transfer to ADDR; a summary of each in $work/profile-<PREFIX><NAME>.txt (report.py).
profile_transfer() {
    local label=$1 addr=$2 prefix=$3 secs=8 spec who name f p perf_pids=()
    shift 3
    for spec in "$@"; do
        who=${spec%%:*} name=$prefix${spec#*:}
        pidv="PID_$who"
        timeout 60 "$PERF" record -q -e cpu-clock -F 999 --call-graph dwarf,16384 \
            -p "${!pidv}" -o "$work/perf-$name.data" -- sleep $secs >"$work/perf-$name.log" 2>&1 &
        PIDS+=($!)
        perf_pids+=($!)
    done
    sleep 0.5
    gen "$NS_C" 900 "TCP transfer $label (profiled)" tput "$addr" "$TPUT_BYTES"
    GEN_EXTRA=""
    for p in "${perf_pids[@]}"; do wait "$p" || true; done
    for spec in "$@"; do
        name=$prefix${spec#*:}
        f="$work/perf-$name.data"
        rep() { timeout 300 "$PERF" report -i "$f" --stdio "$@" -g none 2>/dev/null |
            grep -E '^ +[0-9]' | sed 's/[[:space:]]*$//'; }
        {
            echo "by library (self time):"
            rep --no-children --sort dso | head -8
            echo "top symbols (self time):"
            rep --no-children --sort dso,sym | head -20
            echo "inclusive of callees (children, self), named symbols only:"
            rep --children --sort dso,sym | grep -v '\] 0x0000' | head -25
        } >"$work/profile-$name.txt" || true
    done
}

STEP=0
TOTAL_STEPS=0
# iroh section (bench/iroh.sh): relay RTT, 3 first-byte variants, 4 paths x RUNS, profile
[ $IROH = 1 ] && TOTAL_STEPS=$((4 + 4 * RUNS + PROFILE))
progress() { STEP=$((STEP + 1)); printf '[%d/%d] %s ... ' "$STEP" "$TOTAL_STEPS" "$*"; }

# gen NS SECONDS WHAT args...: run a load generator; its JSON line on stdout, summary shown.
# Also measures how much CPU processes outside this run took meanwhile (other people's load).
gen() {
    local ns=$1 secs=$2 what=$3 out err snap others
    shift 3
    out="$work/gen.out"
    err="$work/gen.err"
    snap=$("$PY" "$here/bench.py" snap $$)
    if ! timeout --kill-after=5 "$secs" ip netns exec "$ns" "$PY" "$here/bench.py" "$@" \
        >"$out" 2>"$err"; then
        echo "FAILED"
        cat "$err" >&2
        for who in tclient tserver; do
            pv="PID_$who"
            if [ -n "${!pv:-}" ] && ! kill -0 "${!pv}" 2>/dev/null; then
                echo "the $who process is gone; the end of its log:" >&2
                tail -n 10 "$work/$who.err" >&2
            fi
        done
        die "$what failed (bench.py $*); logs in $work"
    fi
    others=$("$PY" "$here/bench.py" others "$snap" $$)
    GEN_EXTRA=",\"others_pct\":$others"
    if [ "${others%.*}" -ge 5 ]; then
        echo "$(cat "$err") [other processes used ${others}% of the CPUs meanwhile]"
    else
        cat "$err"
    fi
    GEN_JSON=$(tail -n 1 "$out")
}


# ----------------------------------------------------------------------------- quiet machine?
read -r busy busiest < <("$PY" "$here/bench.py" top 2) || busy=0
if [ "$busy" -gt 20 ] && [ "$WAIT_IDLE" -gt 0 ]; then
    say "The CPUs are ${busy}% busy ($busiest); waiting up to $WAIT_IDLE s for them to calm down"
    deadline=$((SECONDS + WAIT_IDLE))
    while [ "$busy" -gt 20 ] && [ $SECONDS -lt $deadline ]; do
        read -r busy busiest < <("$PY" "$here/bench.py" top 5) || busy=0
    done
fi
if [ "$busy" -gt 20 ]; then
    say "WARNING: other processes keep ${busy}% of the CPUs busy ($busiest)."
    say "         Every path shares the same CPUs, so the numbers will be low and noisy; each"
    say "         result shows how much CPU others took meanwhile (--nice -20 or --wait-idle"
    say "         help)."
fi
BUSY_BEFORE=$busy
RUN_DATE=$(date -u '+%Y-%m-%d %H:%M UTC') # when the measurements start

# ----------------------------------------------------------------------------- network
say "== tunnel benchmark ($( [ $QUICK = 1 ] && echo quick || echo full ) run), work dir $work"
ip netns add "$NS_S" || die "cannot create network namespace $NS_S"
created_ns+=("$NS_S")
ip netns add "$NS_C" || die "cannot create network namespace $NS_C"
created_ns+=("$NS_C")
ip link add "$VETH_S" netns "$NS_S" type veth peer name "$VETH_C" netns "$NS_C" ||
    die "cannot create the veth pair $VETH_S/$VETH_C"
ip -n "$NS_S" addr add "$SRV_IP/24" dev "$VETH_S"
ip -n "$NS_C" addr add "$CLI_IP/24" dev "$VETH_C"
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$VETH_S" up
ip -n "$NS_C" link set "$VETH_C" up
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
say "namespaces $NS_S ($SRV_IP) and $NS_C ($CLI_IP), veth $VETH_S/$VETH_C, open files $(ulimit -n)"

meta() { # key=value lines describing the machine and the run, for report.py
    echo "date=$RUN_DATE"
    echo "quick=$QUICK"
    echo "runs=$RUNS"
    echo "tput_bytes=$TPUT_BYTES"
    echo "ping_count=$PING_COUNT"
    echo "ping_rounds=$PING_ROUNDS"
    echo "load_count=$LOAD_COUNT"
    echo "load_rounds=$LOAD_ROUNDS"
    echo "udp_seconds=$UDP_SECONDS"
    echo "hold_conns=$HOLD_CONNS"
    echo "nproc=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "tunnel=$("$TUN" --version 2>&1 | head -1)"
    echo "build_type=$BUILD_TYPE"
    echo "binary=$TUNNEL_SRC"
    local git dirty=""
    git=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "$(git -C "$repo" status --porcelain -- src lua CMakeLists.txt 2>/dev/null)" ] &&
        dirty=" + uncommitted changes"
    # Only describes the binary when it is this checkout's build/tunnel.
    if [ -z "${TUNNEL:-}" ]; then
        echo "tunnel_git=$git$dirty"
    else # another binary: the caller may say what it is
        echo "tunnel_git=${TUNNEL_REV:-?}"
    fi
    echo "ssh=$(ssh -V 2>&1)"
    echo "socat=$(socat -V 2>/dev/null | sed -n 's/^socat version \([^ ]*\).*/\1/p')"
    echo "python=$("$PY" -c 'import platform; print(platform.python_version())')"
    echo "ssh_cipher=$SSH_CIPHER"
    echo "ssh_aes_cipher=$SSH_AES_CIPHER"
    echo "profile=$PROFILE"
    echo "busy_before=$BUSY_BEFORE"
    echo "nice=${NICE:-0}"
}
# ----------------------------------------------------------------------------- services
start sink "$NS_S" "$PY" "$here/bench.py" sink "127.0.0.1:$SINK_PORT"
start sink-veth "$NS_S" "$PY" "$here/bench.py" sink "$SRV_IP:$SINK_PORT"
start echo "$NS_S" "$PY" "$here/bench.py" echo "127.0.0.1:$ECHO_PORT"
start echo-veth "$NS_S" "$PY" "$here/bench.py" echo "$SRV_IP:$ECHO_PORT"
start udp "$NS_S" "$PY" "$here/bench.py" udp-sink "0.0.0.0:$UDP_PORT"
for s in sink sink-veth echo echo-veth udp; do wait_line "$s" listening 10 "target service $s"; done

# tunnel server keys and token (classic and iroh sections)
"$TUN" generate-server-key --output "$work/server.key" >/dev/null ||
    die "tunnel generate-server-key failed"
TOKEN=$("$TUN" generate-token) || die "tunnel generate-token failed"
export XDG_RUNTIME_DIR="$work/run"
mkdir -m 700 "$XDG_RUNTIME_DIR"
SSH_CIPHER="" SSH_AES_CIPHER=""
: >"$work/meta-extra.txt" # key=value lines added by the sections; meta.txt is written last

# The classic side-by-side comparison (skipped by --iroh-only); not re-indented, it is long.
if [ $CLASSIC = 1 ]; then
# sshd: temp host key and authorized key, no system config (-f /dev/null), own pid file.
ssh-keygen -q -t ed25519 -N '' -C tunnel-bench-host -f "$work/ssh_host_key"
ssh-keygen -q -t ed25519 -N '' -C tunnel-bench-client -f "$work/id_ed25519"
cp "$work/id_ed25519.pub" "$work/authorized_keys"
if [ ! -d /run/sshd ]; then # sshd's compiled-in privilege separation directory
    mkdir -m 755 /run/sshd
    made_run_sshd=1
fi
# Without PAM, sshd refuses an account whose password field starts with "!" (locked root, as on
# many installs); Debian's PAM stack accepts key logins for it.
use_pam=no
case "$(getent shadow root | cut -d: -f2)" in
'!'*) [ -f /etc/pam.d/sshd ] && use_pam=yes ;;
esac
start sshd "$NS_S" "$SSHD" -D -e -f /dev/null -p "$SSHD_PORT" -h "$work/ssh_host_key" \
    -o ListenAddress="$SRV_IP" -o PidFile="$work/sshd.pid" \
    -o AuthorizedKeysFile="$work/authorized_keys" -o StrictModes=no -o UsePAM="$use_pam" \
    -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no \
    -o KbdInteractiveAuthentication=no -o AllowTcpForwarding=yes -o UseDNS=no \
    -o MaxStartups=100 -o LogLevel=INFO
wait_line sshd "Server listening" 10 "sshd on $SRV_IP:$SSHD_PORT"

# tunnel server
start tserver "$NS_S" "$TUN" --name "$tag-server" server --listen "$SRV_IP:$TUN_PORT" \
    --secret-file "$work/server.key" \
    --auth-tokens "$TOKEN" --allowed-tcp 127.0.0.0/8 --allowed-udp 127.0.0.0/8 --max-sessions 0
wait_line tserver "^Listening" 10 "tunnel server"
ENDPOINT_ID=$(awk '/^EndpointId:/ { print $2; exit }' "$work/tserver.out")
[ -n "$ENDPOINT_ID" ] || { show_log tserver; die "tunnel server printed no EndpointId"; }
# The same pair with busy polling off (docs/net.md, "Busy polling"): what the polling buys and
# what it costs, measured side by side.
start tserver0 "$NS_S" env TUNNEL_BUSY_POLL_US=0 "$TUN" --name "$tag-server0" server \
    --listen "$SRV_IP:$((TUN_PORT + 1))" --secret-file "$work/server.key" \
    --auth-tokens "$TOKEN" --allowed-tcp 127.0.0.0/8 --max-sessions 0
wait_line tserver0 "^Listening" 10 "tunnel server (busy polling off)"

# socat: a listener on the server side and a forwarder on the client side, like the tunnel's
# two processes (default 8 KiB buffer, and -b 131072).
start socat-s "$NS_S" socat "TCP-LISTEN:$SOCAT_S_SINK,bind=$SRV_IP,reuseaddr,fork" \
    "TCP:127.0.0.1:$SINK_PORT"
start socat-s2 "$NS_S" socat "TCP-LISTEN:$SOCAT_S_ECHO,bind=$SRV_IP,reuseaddr,fork" \
    "TCP:127.0.0.1:$ECHO_PORT"
start socatb-s "$NS_S" socat -b 131072 "TCP-LISTEN:$SOCATB_S_SINK,bind=$SRV_IP,reuseaddr,fork" \
    "TCP:127.0.0.1:$SINK_PORT"
start socatb-s2 "$NS_S" socat -b 131072 "TCP-LISTEN:$SOCATB_S_ECHO,bind=$SRV_IP,reuseaddr,fork" \
    "TCP:127.0.0.1:$ECHO_PORT"

# client side: tunnel client (one process, three forwards), ssh -L twice, socat forwarders
cat >"$work/client.toml" <<EOF
# tunnel client for bench/run.sh: one QUIC connection, three forwards
role = "client"
mode = "iroh"

[iroh]
server_node_id = "$ENDPOINT_ID"
server_addrs = ["$SRV_IP:$TUN_PORT"]
auth_token = "$TOKEN"
request_source = "tcp://127.0.0.1:$SINK_PORT"
target = "127.0.0.1:7001"

[[iroh.forward]]
source = "tcp://127.0.0.1:$ECHO_PORT"
target = "127.0.0.1:7002"

[[iroh.forward]]
source = "udp://127.0.0.1:$UDP_PORT"
target = "127.0.0.1:7003"
EOF
start tclient "$NS_C" "$TUN" --name "$tag-client" client -c "$work/client.toml"
wait_line tclient "forwarding udp" 15 "tunnel client (connecting to $SRV_IP:$TUN_PORT)"
start tclient0 "$NS_C" env TUNNEL_BUSY_POLL_US=0 "$TUN" --name "$tag-client0" client \
    --server-node-id "$ENDPOINT_ID" --server-addr "$SRV_IP:$((TUN_PORT + 1))" \
    --auth-token "$TOKEN" -s "tcp://127.0.0.1:$SINK_PORT" -t 127.0.0.1:7011 \
    -s "tcp://127.0.0.1:$ECHO_PORT" -t 127.0.0.1:7012
wait_line tclient0 "forwarding tcp 127.0.0.1:7012" 15 \
    "tunnel client, busy polling off (connecting to $SRV_IP:$((TUN_PORT + 1)))"

ssh_opts=(-F /dev/null -N -T -v -i "$work/id_ed25519" -p "$SSHD_PORT" -o BatchMode=yes
    -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
    -o ExitOnForwardFailure=yes -o ConnectTimeout=10)
start ssh "$NS_C" ssh "${ssh_opts[@]}" -L "127.0.0.1:7101:127.0.0.1:$SINK_PORT" \
    -L "127.0.0.1:7102:127.0.0.1:$ECHO_PORT" "root@$SRV_IP"
start ssh-aes "$NS_C" ssh "${ssh_opts[@]}" -c aes128-gcm@openssh.com \
    -L "127.0.0.1:7201:127.0.0.1:$SINK_PORT" -L "127.0.0.1:7202:127.0.0.1:$ECHO_PORT" \
    "root@$SRV_IP"
start socat-c "$NS_C" socat "TCP-LISTEN:7301,bind=127.0.0.1,reuseaddr,fork" \
    "TCP:$SRV_IP:$SOCAT_S_SINK"
start socat-c2 "$NS_C" socat "TCP-LISTEN:7302,bind=127.0.0.1,reuseaddr,fork" \
    "TCP:$SRV_IP:$SOCAT_S_ECHO"
start socatb-c "$NS_C" socat -b 131072 "TCP-LISTEN:7401,bind=127.0.0.1,reuseaddr,fork" \
    "TCP:$SRV_IP:$SOCATB_S_SINK"
start socatb-c2 "$NS_C" socat -b 131072 "TCP-LISTEN:7402,bind=127.0.0.1,reuseaddr,fork" \
    "TCP:$SRV_IP:$SOCATB_S_ECHO"
for p in 7101 7102 7201 7202; do
    wait_port "$NS_C" "127.0.0.1:$p" 15 "ssh -L (logs: $work/ssh.err, $work/ssh-aes.err)"
done
for p in 7301 7302 7401 7402; do wait_port "$NS_C" "127.0.0.1:$p" 10 "socat forwarder"; done
if [ -n "$NICE" ]; then
    # sshd puts each connection in a new session (setsid), hence in a new autogroup that would
    # not get our nice level: give it the same one, so ssh is measured on equal terms.
    for p in $(descendants "$PID_sshd"); do
        [ -w "/proc/$p/autogroup" ] && echo "$NICE" >"/proc/$p/autogroup" 2>/dev/null || true
    done
fi
SSH_CIPHER=$(sed -n 's/.*kex: client->server cipher: \([^ ]*\).*/\1/p' "$work/ssh.err" | head -1)
SSH_AES_CIPHER=$(sed -n 's/.*kex: client->server cipher: \([^ ]*\).*/\1/p' "$work/ssh-aes.err" |
    head -1)
say "ready: sshd, tunnel server and client ($ENDPOINT_ID), ssh -L ($SSH_CIPHER," \
    "$SSH_AES_CIPHER), socat"

# ----------------------------------------------------------------------------- paths
# name|label|sink addr|echo addr|relay pid variables (for CPU accounting)
PATHS=(
    "direct|raw veth (direct)|$SRV_IP:$SINK_PORT|$SRV_IP:$ECHO_PORT|"
    "tunnel|tunnel|127.0.0.1:7001|127.0.0.1:7002|PID_tclient PID_tserver"
    "tunnel-nopoll|tunnel, busy polling off|127.0.0.1:7011|127.0.0.1:7012|PID_tclient0 PID_tserver0"
    "ssh|ssh -L ($SSH_CIPHER)|127.0.0.1:7101|127.0.0.1:7102|PID_ssh PID_sshd"
    "ssh-aes|ssh -L -c aes128-gcm@openssh.com|127.0.0.1:7201|127.0.0.1:7202|PID_ssh_aes PID_sshd"
    "socat|socat (8 KiB buffer, unencrypted)|127.0.0.1:7301|127.0.0.1:7302|PID_socat_c PID_socat_s"
    "socat-b|socat -b 131072 (unencrypted)|127.0.0.1:7401|127.0.0.1:7402|PID_socatb_c PID_socatb_s"
)
n_paths=${#PATHS[@]}
n_rates=$(echo "$UDP_RATES" | wc -w)
TOTAL_STEPS=$((TOTAL_STEPS + 2 + n_paths * (PING_ROUNDS + LOAD_ROUNDS) + n_paths * RUNS + 2 * n_rates \
    + PROFILE))

# cpu_since: CPU seconds of each relay in $pids since the readings in c0, comma-separated (the
# client-side relay first, then the server side).
cpu_since() {
    local each="" i=0 rp
    for rp in $pids; do
        each="$each${each:+,}$("$PY" -c "print(round($(cpu_of "$rp") - ${c0[$i]}, 4))")"
        i=$((i + 1))
    done
    echo "$each"
}

relay_pids() { # "VAR VAR": their values
    local v out=""
    for v in $1; do out="$out ${!v}"; done
    echo "${out# }"
}

# ----------------------------------------------------------------------------- memory
rss_report() { # label: RSS of tunnel server and client into results
    local s c
    s=$(rss_kib "$PID_tserver")
    c=$(rss_kib "$PID_tclient")
    record rss "$1" "{\"server_kib\":$s,\"client_kib\":$c}"
    echo "server $((s / 1024)) MiB ($s KiB), client $((c / 1024)) MiB ($c KiB)"
}

hold_conns() { # name addr relay-pids-vars: open HOLD_CONNS idle connections, measure RSS
    local name=$1 addr=$2 vars=$3 hpid before after v pids
    pids=$(relay_pids "$vars")
    before=""
    for v in $pids; do before="$before $(sum_rss "$v")"; done
    ip netns exec "$NS_C" "$PY" "$here/bench.py" hold "$addr" "$HOLD_CONNS" \
        >"$work/hold-$name.out" 2>"$work/hold-$name.err" </dev/null &
    hpid=$!
    PIDS+=("$hpid")
    printf -v "PID_hold_$name" '%s' "$hpid"
    wait_line "hold-$name" '"ready"' 180 "$HOLD_CONNS connections through $name"
    sleep 1 # let both processes settle (buffers, timers) before reading RSS
    after=""
    for v in $pids; do after="$after $(sum_rss "$v")"; done
    HOLD_MSG=$(tail -n 1 "$work/hold-$name.err")
    kill "$hpid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$hpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$hpid" 2>/dev/null || true
    wait "$hpid" 2>/dev/null || true
    read -r -a HOLD_BEFORE <<<"$before"
    read -r -a HOLD_AFTER <<<"$after"
}

hold_json() { # the last hold_conns result as JSON
    printf '{"server_kib":%s,"client_kib":%s,"server_before_kib":%s,"client_before_kib":%s,' \
        "${HOLD_AFTER[0]}" "${HOLD_AFTER[1]}" "${HOLD_BEFORE[0]}" "${HOLD_BEFORE[1]}"
    printf '"conns":%s}' "$HOLD_CONNS"
}

progress "memory: tunnel server and client, idle after connect"
sleep 1
rss_report idle

progress "memory: $HOLD_CONNS idle TCP connections through tunnel, then through ssh -L"
echo
hold_conns tunnel 127.0.0.1:7002 "PID_tserver PID_tclient"
record rss "hold" "$(hold_json)"
printf '        tunnel: %s; server %s -> %s KiB, client %s -> %s KiB\n' "$HOLD_MSG" \
    "${HOLD_BEFORE[0]}" "${HOLD_AFTER[0]}" "${HOLD_BEFORE[1]}" "${HOLD_AFTER[1]}"
# ssh for comparison: the ssh client, and sshd with its per-connection children
hold_conns ssh 127.0.0.1:7202 "PID_sshd PID_ssh_aes"
record rss "hold-ssh" "$(hold_json)"
printf '        ssh -L: %s; sshd %s -> %s KiB, ssh %s -> %s KiB\n' "$HOLD_MSG" \
    "${HOLD_BEFORE[0]}" "${HOLD_AFTER[0]}" "${HOLD_BEFORE[1]}" "${HOLD_AFTER[1]}"
sleep 2
echo "        tunnel after the connections closed: $(rss_report after-hold)"
record stats after-hold "$(tunnel_stats)"

# ----------------------------------------------------------------------------- latency
# Interleaved rounds, each starting at the next path: a machine whose speed drifts during the
# run (other guests on the host, frequency) then shifts every path alike instead of whichever
# one happened to run in the slow minute. The report takes the median of each path's rounds.
per_round=$((PING_COUNT / PING_ROUNDS))
for round in $(seq 1 $PING_ROUNDS); do
    for i in $(seq 0 $((n_paths - 1))); do
        p=${PATHS[$(((i + round - 1) % n_paths))]}
        IFS='|' read -r name label sink echo_addr vars <<<"$p"
        progress "$label: $per_round round trips of 64 bytes, round $round of $PING_ROUNDS"
        pids=$(relay_pids "$vars")
        c0=()
        for rp in $pids; do c0+=("$(cpu_of "$rp")"); done
        gen "$NS_C" 300 "ping-pong through $label" ping "$echo_addr" "$per_round" 64
        record ping "$name" "$GEN_JSON" ",\"round\":$round,\"relay_cpu_each\":[$(cpu_since)]"
    done
done

# ----------------------------------------------------------------------------- latency under load
# The same ping-pong while a bulk transfer runs through the same forwarder (for the tunnel and
# ssh: another forward of the same connection): what an interactive session sees next to a
# download. The transfer starts half a second before the round trips and stops after them.
for round in $(seq 1 $LOAD_ROUNDS); do
    for i in $(seq 0 $((n_paths - 1))); do
        p=${PATHS[$(((i + round - 1) % n_paths))]}
        IFS='|' read -r name label sink echo_addr vars <<<"$p"
        progress "$label: $LOAD_COUNT round trips during a transfer, round $round of $LOAD_ROUNDS"
        gen "$NS_C" 300 "ping-pong during a transfer through $label" ping-load "$sink" \
            "$echo_addr" "$LOAD_COUNT" 64
        record ping-load "$name" "$GEN_JSON" ",\"round\":$round"
    done
done

# ----------------------------------------------------------------------------- throughput
for run in $(seq 1 $RUNS); do
    for p in "${PATHS[@]}"; do
        IFS='|' read -r name label sink echo_addr vars <<<"$p"
        progress "$label: $TPUT_LABEL, run $run of $RUNS"
        pids=$(relay_pids "$vars")
        c0=()
        for rp in $pids; do c0+=("$(cpu_of "$rp")"); done
        gen "$NS_C" 900 "TCP transfer through $label" tput "$sink" "$TPUT_BYTES"
        sleep 0.3 # per-connection children (socat, sshd) exit and are reaped into cutime
        record tput "$name" "$GEN_JSON" ",\"run\":$run,\"relay_cpu_each\":[$(cpu_since)]"
    done
done

# ----------------------------------------------------------------------------- UDP
for rate in $UDP_RATES; do
    for name in direct tunnel; do
        if [ $name = direct ]; then addr="$SRV_IP:$UDP_PORT"; label="raw veth (direct)"
        else addr="127.0.0.1:7003"; label="tunnel"; fi
        progress "UDP $label: $rate Mbit/s offered, 1200-byte datagrams, $UDP_SECONDS s"
        k0c=$(udp_counters "$NS_C")
        k0s=$(udp_counters "$NS_S")
        q0=$(tunnel_stats)
        gen "$NS_C" $((UDP_SECONDS + 30)) "UDP at $rate Mbit/s through $label" \
            udp "$addr" "$rate" "$UDP_SECONDS" 1200
        k1c=$(udp_counters "$NS_C")
        k1s=$(udp_counters "$NS_S")
        q1=$(tunnel_stats)
        record udp "$name" "$GEN_JSON" \
            ",\"kernel\":{\"cli\":[$k0c,$k1c],\"srv\":[$k0s,$k1s]},\"tunnel_stats\":[$q0,$q1]"
    done
done

# ----------------------------------------------------------------------------- profile
if [ $PROFILE = 1 ]; then
    progress "profile: perf record -g on tunnel server and client during a $TPUT_LABEL transfer"
    profile_transfer "through tunnel" 127.0.0.1:7001 "" tserver:server tclient:client
fi

# ----------------------------------------------------------------------------- report
for who in tserver tclient; do
    pv="PID_$who"
    record peak "$who" "{\"hwm_kib\":$(rss_kib "${!pv}" VmHWM),\"rss_kib\":$(rss_kib "${!pv}")}"
done
for who in tserver tclient; do
    pv="PID_$who"
    kill -0 "${!pv}" 2>/dev/null || { show_log "$who"; die "$who exited during the run"; }
done

# Orderly shutdown of the tunnel processes (SIGTERM), as a user would stop them.
SHUTDOWN=""
for who in tclient tserver; do
    pv="PID_$who"
    pid=${!pv}
    kill -TERM "$pid" 2>/dev/null || true
    st=timeout
    for _ in $(seq 1 50); do
        if ! kill -0 "$pid" 2>/dev/null; then st=0; wait "$pid" 2>/dev/null || st=$?; break; fi
        sleep 0.1
    done
    case $st in
    0) SHUTDOWN="$SHUTDOWN $who=clean" ;;
    timeout) SHUTDOWN="$SHUTDOWN $who=still-running-after-5s"; KEEP_WORK=1 ;;
    *) if [ "$st" -gt 128 ]; then SHUTDOWN="$SHUTDOWN $who=signal-$((st - 128))"
       else SHUTDOWN="$SHUTDOWN $who=exit-$st"; fi
       KEEP_WORK=1
       echo "WARNING: $who did not stop cleanly on SIGTERM ($st); its log: $work/$who.err" >&2
       tail -n 20 "$work/$who.err" >&2 ;;
    esac
done
SHUTDOWN=${SHUTDOWN# }
echo "shutdown=${SHUTDOWN// /, }" >>"$work/meta-extra.txt"
fi # CLASSIC

# ----------------------------------------------------------------------------- iroh mode
if [ $IROH = 1 ]; then
    # shellcheck source=bench/iroh.sh
    . "$here/iroh.sh"
fi

mkdir -p "$here/results"
stamp=$(date '+%Y-%m-%d-%H%M%S')
out="$here/results/$stamp.md"
{ meta; cat "$work/meta-extra.txt"; } >"$work/meta.txt"
"$PY" "$here/report.py" "$work/meta.txt" "$RESULTS" "$work" >"$work/report.md" ||
    die "report generation failed (raw results: $RESULTS)"
{ echo "# tunnel benchmark"; echo; cat "$work/report.md"; } >"$out"
cp "$RESULTS" "$here/results/$stamp.jsonl"
cp "$work/meta.txt" "$here/results/$stamp.meta" # report.py META JSONL regenerates the tables
echo
cat "$work/report.md"
echo
say "Written to $out (raw numbers in ${out%.md}.jsonl)"
ok=1
