#!/bin/sh
# `make demo`: a real tunnel on this machine. An echo service, a relay, a tunnel server and a
# tunnel client run on loopback; the client knows the server only by its EndpointId and the
# relay; data goes through the tunnel; then the commands for two machines.
# Everything lives in a temporary directory and every process started here is stopped.
set -eu
TUNNEL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
work=$(mktemp -d "${TMPDIR:-/tmp}/tunnel-demo-XXXXXX")
export XDG_RUNTIME_DIR="$work/run"
mkdir -m 700 "$XDG_RUNTIME_DIR"
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; }
wait_for() { # file pattern
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 200 ]; then echo "demo: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1; fi
        sleep 0.05
    done
}
free_port() {
    "$TUNNEL" -e 'local uv = require "luv"; local s = uv.new_tcp(); s:bind("127.0.0.1", 0)
      print(s:getsockname().port); s:close()'
}
cd "$work"

step "1. An echo service (a stand-in for SSH, a database, ...) on 127.0.0.1"
ECHO_PORT=$(free_port)
cat > echo.lua <<'LUA'
-- TCP echo service on the tunnel runtime (any TCP service would do).
local uv = require "luv"
local server = uv.new_tcp()
assert(server:bind("127.0.0.1", tonumber(arg[1])))
assert(server:listen(64, function()
  local c = uv.new_tcp()
  server:accept(c)
  c:read_start(function(err, data)
    if data then c:write(data) else c:close() end
  end)
end))
io.stdout:write("echo service on 127.0.0.1:", arg[1], "\n"); io.stdout:flush()
LUA
"$TUNNEL" echo.lua "$ECHO_PORT" > echo.log 2>&1 &
pids="$pids $!"
wait_for echo.log "echo service"
cat echo.log

step "2. A relay: both sides connect out to it, so neither needs an open port"
RELAY_PORT=$(free_port)
show "tunnel relay --listen 127.0.0.1:$RELAY_PORT"
"$TUNNEL" relay --listen "127.0.0.1:$RELAY_PORT" > relay.out 2> relay.log &
pids="$pids $!"
wait_for relay.out "relay listening"
sed 's/^/  /' relay.out
RELAY="http://127.0.0.1:$RELAY_PORT"

step "3. The server: an identity, a token, what clients may reach, and the relay"
show "tunnel generate-server-key --output server.key"
"$TUNNEL" generate-server-key --output server.key
TOKEN=$("$TUNNEL" generate-token)
show "tunnel generate-token"
echo "$TOKEN"
show "tunnel server --secret-file server.key --auth-tokens $TOKEN --allowed-tcp 127.0.0.0/8 --listen 127.0.0.1:0 --relay-url $RELAY"
"$TUNNEL" --name demo-server server --secret-file server.key --auth-tokens "$TOKEN" \
    --allowed-tcp 127.0.0.0/8 --listen 127.0.0.1:0 --relay-url "$RELAY" > server.out 2> server.log &
pids="$pids $!"
wait_for server.out "Relay:"
wait_for server.log "connected"
wait_for server.log "published"
ID=$("$TUNNEL" show-server-id --secret-file server.key)
sed 's/^/  /' server.out | head -2

step "4. The client: only the server's EndpointId (it finds the relay in the server's signed record)"
LOCAL_PORT=$(free_port)
show "tunnel client --server-node-id $ID --dns-server $RELAY/pkarr --auth-token $TOKEN --source tcp://127.0.0.1:$ECHO_PORT --target 127.0.0.1:$LOCAL_PORT"
"$TUNNEL" --name demo-client client --server-node-id "$ID" --dns-server "$RELAY/pkarr" \
    --auth-token "$TOKEN" --source "tcp://127.0.0.1:$ECHO_PORT" \
    --target "127.0.0.1:$LOCAL_PORT" 2> client.log &
pids="$pids $!"
wait_for client.log "forwarding"
wait_for client.log "path: relay -> direct"
sed 's/^/  /' client.log
echo "  (The first bytes went through the relay; hole punching then found a direct path and the"
echo "   QUIC connection migrated to it. Through NATs that allow no direct path it stays relayed.)"

step "5. Data through the tunnel (end-to-end encrypted): 1 MiB to 127.0.0.1:$LOCAL_PORT and back"
cat > send.lua <<'LUA'
-- Send 1 MiB through the forwarded port, read the echo, compare.
local uv = require "luv"
local port, n = tonumber(arg[1]), 1024 * 1024
local chunk = string.rep("tunnel!\n", 128)
local sent = string.rep(chunk, n / #chunk)
local got, t0 = {}, uv.hrtime()
local c = uv.new_tcp()
c:connect("127.0.0.1", port, function(err)
  assert(not err, err)
  c:write(sent)
  c:read_start(function(rerr, data)
    assert(not rerr, rerr)
    if data then got[#got + 1] = data end
    local all = table.concat(got)
    if #all >= n then
      local ms = (uv.hrtime() - t0) / 1e6
      print(string.format("sent %d bytes, got %d back, %s, in %.1f ms", n, #all,
        all == sent and "identical" or "DIFFERENT", ms))
      c:close()
      if all ~= sent then os.exit(1) end
    end
  end)
end)
LUA
show "tunnel send.lua $LOCAL_PORT"
"$TUNNEL" send.lua "$LOCAL_PORT"

step "6. Inside the running server, with tunnel attach"
show "echo 'return sessions()' | tunnel attach demo-server"
echo 'local s = sessions()[1]; return { id = s.id, path = s.path, client = s.client_id, rtt_ms = s.quic.rtt_ms, up = s.up, down = s.down }' \
    | "$TUNNEL" attach demo-server

step "7. On real machines"
cat <<TXT
On a machine both sides can reach (a small VPS; TLS and more in docs/relay.md):
  tunnel relay --listen 0.0.0.0:3340
On the machine with the service (server), no open port needed:
  tunnel generate-server-key --output ~/.config/tunnel/server.key
  (umask 077; tunnel generate-token > ~/.config/tunnel/tokens)
  tunnel server --secret-file ~/.config/tunnel/server.key \\
      --auth-tokens-file ~/.config/tunnel/tokens --allowed-tcp 127.0.0.1/32 \\
      --relay-url http://<relay-host>:3340
On the other machine (client), which needs only the EndpointId and the discovery server:
  tunnel client --server-node-id <EndpointId printed by the server> \\
      --dns-server http://<relay-host>:3340/pkarr --auth-token <token> \\
      --source tcp://127.0.0.1:22 --target 127.0.0.1:2222
  ssh -p 2222 localhost
With a direct address instead of a relay: --server-addr <server-host>:4433 on the client and
--listen 0.0.0.0:4433 on the server. Without any server in between: docs/manual.md.
How it works and what is next: docs/iroh-design.md.
TXT
