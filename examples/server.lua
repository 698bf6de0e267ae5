-- A port-forwarding server configured in Lua, with a policy hook and live counters.
--
--   tunnel examples/server.lua KEYFILE TOKEN [LISTEN]
--
-- KEYFILE comes from `tunnel generate-server-key --output KEYFILE`, TOKEN from
-- `tunnel generate-token`. Clients may reach TCP services on this machine's loopback only,
-- except port 25. LISTEN defaults to 0.0.0.0:4433. The control socket is "example-server":
--   echo 'return sessions()' | tunnel attach example-server
local tunnel = require "tunnel"

local keyfile, token, listen = arg[1], arg[2], arg[3] or "0.0.0.0:4433"
if not keyfile or not token then
  io.stderr:write("usage: tunnel examples/server.lua KEYFILE TOKEN [LISTEN]\n")
  os.exit(2)
end

local log = tunnel.log.group("example")
local srv = assert(tunnel.server {
  listen = listen,
  secret_file = keyfile,
  tokens = { token },
  allowed_tcp = { "127.0.0.0/8", "::1" },
  on_request = function(req)
    if req.port == 25 then
      return nil, "no mail relaying from here"
    end
    return true
  end,
  on_connection_closed = function(ev)
    log.info("%s to %s done: %d bytes in, %d out", ev.proto, ev.target, ev.up, ev.down)
  end,
})

local addr = srv:address()
io.stdout:write("EndpointId: ", srv.endpoint_id, "\nListening: ", addr, "\n")
io.stdout:flush()

-- REPL helpers for `tunnel attach example-server`.
local repl = require "tunnel.repl"
repl.add_helper("sessions", function() return srv:sessions() end, "sessions(): live sessions")
repl.add_helper("kick", function(id) return srv:kick(id) end, "kick(id): close a session")
assert(require("tunnel.ctl").listen { name = "example-server" })

tunnel.on_shutdown(function()
  log.info("stopping after %d session(s)", #srv:sessions())
end)
