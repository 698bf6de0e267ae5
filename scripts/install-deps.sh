#!/bin/sh
# Install the Debian 12 packages tunnel needs to build, test and run.
# As root: installs what is missing with apt-get. Otherwise: prints the one command to run.
set -eu

PACKAGES="build-essential cmake pkg-config python3 git
luajit2 libluajit2-5.1-dev libuv1-dev lua-luv lua-luv-dev
libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev gnutls-bin
libsodium-dev libsecp256k1-dev libcurl4-gnutls-dev libedit-dev
lua-cjson lua-cjson-dev lua-argparse lua-busted lua-check luarocks clang-format
iproute2 iptables coturn stun-client dante-server"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi

echo "install-deps: missing:$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run this as root (or with sudo):" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
echo "install-deps: done"
