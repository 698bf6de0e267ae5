-- A port-forwarding client configured in Lua: several forwards, and a status line every
-- few seconds.
--
--   tunnel examples/client.lua SERVER_ID SERVER_ADDR TOKEN SOURCE TARGET [SOURCE TARGET]...
--
-- e.g. tunnel examples/client.lua <EndpointId> 127.0.0.1:4433 <token> \
--          tcp://127.0.0.1:22 127.0.0.1:2222 udp://127.0.0.1:53 127.0.0.1:5353
-- It exits with status 1 when the connection ends (the message says why).
local tunnel = require "tunnel"

local id, server, token = arg[1], arg[2], arg[3]
local forwards = {}
for i = 4, #arg, 2 do
  forwards[#forwards + 1] = { source = arg[i], target = arg[i + 1] }
end
if not id or not server or not token or #forwards == 0 or #arg % 2 ~= 1 then
  io.stderr:write("usage: tunnel examples/client.lua SERVER_ID SERVER_ADDR TOKEN " ..
    "SOURCE TARGET [SOURCE TARGET]...\n")
  os.exit(2)
end

local log = tunnel.log.group("example")
local ticker
local client, err = tunnel.client {
  server_id = id,
  server_addr = server,
  token = token,
  forwards = forwards,
  on_ready = function(c)
    for _, f in ipairs(c:list()) do
      log.info("ready: %s -> %s", f.listen, f.source)
    end
    io.stdout:write("READY\n")
    io.stdout:flush()
    ticker = tunnel.every(5, function()
      local st = c:stats()
      if st then
        log.info("rtt %.2f ms, %d bytes sent, %d received", st.rtt_ms, st.tx_bytes, st.rx_bytes)
      end
    end)
  end,
  on_rejected = function(_, f, reason)
    log.warn("%s refused: %s", f and f.source or "?", reason)
  end,
  on_closed = function(_, text)
    if ticker then ticker:close() end
    log.error("connection ended: %s", text)
    tunnel.exit(1)
  end,
}
if not client then
  io.stderr:write("examples/client.lua: ", err, "\n")
  os.exit(1)
end
