#!/bin/sh
# Install the Debian 12 packages tunnel needs to build, test and run, then the Node.js modules
# of the Nostr test harness (spec/nostr: a third-party relay and reference client).
# As root: installs what is missing with apt-get. Otherwise: prints the one command to run.
set -eu

PACKAGES="build-essential cmake pkg-config python3 git
luajit2 libluajit2-5.1-dev libuv1-dev lua-luv lua-luv-dev
libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev gnutls-bin
libsodium-dev libsecp256k1-dev libcurl4-gnutls-dev libedit-dev
lua-cjson lua-cjson-dev lua-argparse lua-busted lua-check luarocks clang-format
iproute2 iptables coturn stun-client dante-server"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NOSTR="$ROOT/spec/nostr"
NODE_MAJOR_MIN=20

is_root() {
    [ "$(id -u)" -eq 0 ]
}

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
else
    echo "install-deps: missing:$missing"
    if ! is_root; then
        echo "install-deps: run this as root (or with sudo):" >&2
        echo "  apt-get update && apt-get install -y --no-install-recommends$missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
    echo "install-deps: done"
fi

# ---- Node.js for the Nostr harness (spec/nostr) -----------------------------------------------
# Checked by command, not by package: a Node.js installed another way (e.g. NodeSource's
# nodejs, which brings its own npm) is as good as Debian's.
node_missing=""
command -v node >/dev/null 2>&1 || node_missing="$node_missing nodejs"
command -v npm >/dev/null 2>&1 || node_missing="$node_missing npm"
if [ -n "$node_missing" ]; then
    echo "install-deps: missing:$node_missing (Node.js runs the Nostr test relay in spec/nostr)"
    if ! is_root; then
        echo "install-deps: run this as root (or with sudo):" >&2
        echo "  apt-get update && apt-get install -y --no-install-recommends$node_missing" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    if ! apt-get install -y -q --no-install-recommends $node_missing; then
        echo "install-deps: installing Debian's$node_missing failed (see above); install" \
            "Node.js $NODE_MAJOR_MIN or newer with npm another way and rerun $0" >&2
        exit 1
    fi
fi

node_version=$(node -e 'process.stdout.write(process.versions.node)' 2>/dev/null || true)
if [ -z "$node_version" ]; then
    echo "install-deps: 'node' is installed but does not run (node -e failed); repair or" \
        "reinstall Node.js and rerun $0" >&2
    exit 1
fi
if [ "${node_version%%.*}" -lt "$NODE_MAJOR_MIN" ]; then
    echo "install-deps: Node.js $node_version is too old for spec/nostr (nostr-tools and" \
        "@nostr-relay need $NODE_MAJOR_MIN or newer; Debian 12's own nodejs is 18). Install" \
        "Node.js $NODE_MAJOR_MIN+ (e.g. NodeSource's nodejs package) and rerun $0" >&2
    exit 1
fi

# npm ci writes node_modules/.package-lock.json last: when it is missing or older than the
# lock file, the modules are absent, half-installed or stale.
stamp="$NOSTR/node_modules/.package-lock.json"
if [ ! -f "$stamp" ] || [ -n "$(find "$NOSTR/package-lock.json" -newer "$stamp")" ]; then
    echo "install-deps: installing the Nostr harness's Node modules (npm ci in spec/nostr)"
    if ! (cd "$NOSTR" && npm ci --no-audit --no-fund); then
        echo "install-deps: 'npm ci' in $NOSTR failed (see npm's message above). It needs the" \
            "npm registry ($(npm config get registry 2>/dev/null || echo '?')); check the" \
            "network or proxy settings and rerun $0. Without these modules the Nostr specs are" \
            "pending, or fail when TUNNEL_LAB_REQUIRE=1." >&2
        exit 1
    fi
else
    echo "install-deps: Nostr harness modules up to date (spec/nostr/node_modules)"
fi
