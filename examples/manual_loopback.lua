-- Manual mode with the signaling done in Lua: a manual-mode server and client in one process,
-- the offer and answer handed over as strings instead of pasted (any channel would do: a file,
-- a chat bot, a QR code). ICE runs on 127.0.0.1, then one message goes through the tunnel to a
-- small echo service and back.
--
--   tunnel examples/manual_loopback.lua [message]
local tunnel = require "tunnel"
local manual = require "tunnel.manual"
local uv = tunnel.uv

local message = arg[1] or "hello through manual mode"

-- The service the server side forwards to: echoes what it receives.
local echo = uv.new_tcp()
assert(echo:bind("127.0.0.1", 0))
assert(echo:listen(8, function()
  local c = uv.new_tcp()
  echo:accept(c)
  c:read_start(function(_, data)
    if data then
      c:write(data)
    else
      c:close()
    end
  end)
end))
local echo_port = echo:getsockname().port

local function fail(what)
  io.stderr:write("manual_loopback: ", what, "\n")
  tunnel.exit(1)
end

-- Send `message` through the client's local port and print the echo.
local function roundtrip(port)
  local c = uv.new_tcp()
  c:connect("127.0.0.1", port, function(err)
    if err then
      return fail("connect: " .. err)
    end
    c:write(message)
    local got = ""
    c:read_start(function(_, data)
      got = got .. (data or "")
      if not data or #got >= #message then
        c:close()
        print("echoed: " .. got)
        tunnel.exit(got == message and 0 or 1)
      end
    end)
  end)
end

local local_only = { "127.0.0.1" } -- host candidates: loopback only, and no STUN

local server = assert(manual.server {
  allowed_tcp = { "127.0.0.0/8" }, hosts = local_only, stun_servers = {},
  on_connected = function(_, info)
    print("server: client connected via " .. info.kind)
  end,
  on_failed = function(_, reason)
    fail("server: " .. reason)
  end,
})

local client
client = assert(manual.client {
  source = "tcp://127.0.0.1:" .. echo_port, target = "127.0.0.1:0",
  hosts = local_only, stun_servers = {},
  on_offer = function(offer)
    print("client: offer ready (" .. #offer .. " characters)")
    server:offer(offer, function(answer, err)
      if err then
        return fail("server refused: " .. err)
      end
      print("server: answer ready (" .. #answer .. " characters)")
      assert(client:answer(answer))
    end)
  end,
  on_connected = function(_, info)
    print("client: connected via " .. info.kind)
    roundtrip(tonumber(info.forwards[1].listen:match(":(%d+)$")))
  end,
  on_failed = function(_, reason)
    fail("client: " .. reason)
  end,
})

tunnel.after(30, function()
  fail("no connection within 30 s")
end)
