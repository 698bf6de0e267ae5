#!/bin/sh
# `make demo`: a guided tour of what this build of tunnel does, run on this machine only.
# Everything happens in a temporary directory that is removed at the end.
set -eu
TUNNEL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
work=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-demo-XXXXXX")
export XDG_RUNTIME_DIR="$work/run"
mkdir -m 700 "$XDG_RUNTIME_DIR"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cd "$work"
step "1. A server identity: an Ed25519 key; its public half is the EndpointId clients pin"
run "$TUNNEL" generate-server-key --output server.key
printf 'file mode: %s\n' "$(stat -c %a server.key)"
run "$TUNNEL" show-server-id --secret-file server.key

step "2. Authentication tokens (18 characters with a Luhn mod 65 check character)"
run "$TUNNEL" generate-token --count 3 | tee tokens.txt

step "3. A Nostr identity for nostr mode"
run "$TUNNEL" generate-nostr-key --output nostr.nsec
run "$TUNNEL" show-npub --nsec-file nostr.nsec

step "4. Lua on the event loop: a script that serves TCP, and a REPL attached to it"
cat > echo.lua <<'LUA'
-- A tiny TCP echo service on the tunnel runtime; `tunnel attach demo` can inspect it.
local tunnel = require "tunnel"
local uv = require "luv"
local served = 0
local server = uv.new_tcp()
assert(server:bind("127.0.0.1", 0))
assert(server:listen(16, function()
  local c = uv.new_tcp()
  server:accept(c)
  served = served + 1
  c:read_start(function(err, data)
    if data then c:write(data) else c:close() end
  end)
end))
tunnel.log.info("echo service on 127.0.0.1:%d", server:getsockname().port)
require("tunnel.repl").add_stats("echo", function() return { connections = served } end)
LUA
"$TUNNEL" --name demo echo.lua 2> echo.log &
pid=$!
i=0
while ! "$TUNNEL" attach --list 2>/dev/null | grep -q demo; do
    i=$((i + 1)); [ $i -gt 100 ] && { cat echo.log; exit 1; }; sleep 0.05
done
cat echo.log
run "$TUNNEL" attach --list
printf '$ echo "return stats()" | tunnel attach demo\n'
echo 'return stats()' | "$TUNNEL" attach demo
printf '$ echo "log_level(\"quic\", \"debug\"); return log_level(\"quic\")" | tunnel attach demo\n'
echo 'log_level("quic", "debug"); return log_level("quic")' | "$TUNNEL" attach demo
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""

step "Next"
cat <<TXT
Port forwarding between two machines (tunnel server / tunnel client) arrives with the QUIC
transport. Meanwhile try:
  $TUNNEL repl                      an interactive Lua prompt on the runtime
  $TUNNEL --help                    every command, with examples
TXT
