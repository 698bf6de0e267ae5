-- echo_server.lua: a TCP echo service written with luv on tunnel's event loop. It shows
-- listening and accepting, one log line per connection, flow control (stop reading while the
-- peer is not reading our replies), a stats() entry for `tunnel attach`, and a clean shutdown
-- on SIGINT/SIGTERM through tunnel.on_shutdown.
--
-- Run it:
--   tunnel --name echo examples/echo_server.lua [PORT]
--     PORT defaults to 0: the system picks a free port. The first line on stdout says which:
--     "echo server listening on 127.0.0.1:PORT".
-- Then, from another terminal:
--   nc 127.0.0.1 PORT                         type lines, get them back
--   echo 'return stats().echo' | tunnel attach echo
--   kill -TERM <pid>   (or Ctrl-C)            closes every connection and exits 0
local tunnel = require "tunnel"
local uv = tunnel.uv

local log = tunnel.log.group("echo")

local HOST = "127.0.0.1"
local HIGH_WATER = 256 * 1024 -- bytes queued for a peer before we stop reading from it

local port = tonumber(arg[1] or "0")
if not port or port ~= math.floor(port) or port < 0 or port > 65535 then
  io.stderr:write("usage: tunnel examples/echo_server.lua [PORT]   (0-65535, 0 = any free port)\n")
  tunnel.exit(2)
end

local server = uv.new_tcp()
local ok, err = server:bind(HOST, port)
if not ok then
  io.stderr:write(("echo server: cannot listen on %s:%d: %s\n"):format(HOST, port, err))
  tunnel.exit(1)
end

local clients = {} -- open connections: handle -> { id = n, peer = "ip:port" }
local stats = { accepted = 0, open = 0, bytes = 0, pauses = 0 }

local function close_client(client, why)
  local c = clients[client]
  if not c then
    return
  end
  clients[client] = nil
  stats.open = stats.open - 1
  log.info("connection %d from %s closed (%s), %d bytes echoed", c.id, c.peer, why, c.bytes)
  if not client:is_closing() then
    client:close()
  end
end

local function on_read(client, rerr, data)
  local c = clients[client]
  if rerr then
    close_client(client, rerr)
  elseif data then
    c.bytes = c.bytes + #data
    stats.bytes = stats.bytes + #data
    client:write(data, function()
      -- Reading resumes once the replies have drained (see below).
      if c.paused and clients[client] and client:get_write_queue_size() == 0 then
        c.paused = false
        client:read_start(function(e, d)
          on_read(client, e, d)
        end)
      end
    end)
    if client:get_write_queue_size() > HIGH_WATER and not c.paused then
      -- The peer sends faster than it reads: stop reading rather than buffer without bound.
      c.paused = true
      stats.pauses = stats.pauses + 1
      log.debug("connection %d: peer reads slowly, pausing", c.id)
      client:read_stop()
    end
  else
    -- End of input: finish sending what is queued, then close.
    client:shutdown(function()
      close_client(client, "end of input")
    end)
  end
end

local listening, lerr = server:listen(128, function(aerr)
  if aerr then
    log.warn("accept failed: %s", aerr)
    return
  end
  local client = uv.new_tcp()
  if not server:accept(client) then
    client:close()
    return
  end
  stats.accepted = stats.accepted + 1
  stats.open = stats.open + 1
  local addr = client:getpeername() or { ip = "?", port = 0 }
  local c = { id = stats.accepted, peer = ("%s:%d"):format(addr.ip, addr.port), bytes = 0 }
  clients[client] = c
  log.info("connection %d from %s", c.id, c.peer)
  client:nodelay(true)
  client:read_start(function(e, d)
    on_read(client, e, d)
  end)
end)
if not listening then
  io.stderr:write(("echo server: cannot listen on %s:%d: %s\n"):format(HOST, port, lerr))
  tunnel.exit(1)
end

local bound = server:getsockname()
-- stdout is a pipe when a program starts us: flush so the line is seen at once.
io.stdout:write(("echo server listening on %s:%d\n"):format(bound.ip, bound.port))
io.stdout:flush()

-- stats() in `tunnel attach` gets an "echo" section. tunnel.repl may be absent from a
-- stripped-down build, so the example works without it.
local has_repl, repl = pcall(require, "tunnel.repl")
if has_repl then
  repl.add_stats("echo", function()
    return { port = bound.port, accepted = stats.accepted, open = stats.open,
      bytes = stats.bytes, pauses = stats.pauses }
  end)
else
  log.debug("tunnel.repl not available, no stats() entry: %s", tostring(repl))
end

tunnel.on_shutdown(function()
  for client in pairs(clients) do
    close_client(client, "server shutting down")
  end
  server:close()
  log.info("stopped after %d connection(s), %d bytes echoed", stats.accepted, stats.bytes)
end)
