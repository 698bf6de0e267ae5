-- tunnel.core.ws against a WebSocket server we did not write: Node.js's `ws` package
-- (spec/tools/ws_echo.js, with ws from spec/nostr/node_modules). Echo of text and binary,
-- fragmented and large messages, pings both ways, closing handshakes from either side,
-- failures (404, refused port, cut connection, oversized or invalid messages, dead_ms), the
-- object staying alive without a reference, handler errors being logged, and misuse.
local H = require "helper"
local uv = require "luv"
local ws = require "tunnel.core.ws"

local WS_PACKAGE = "spec/nostr/node_modules/ws/package.json"

local function wait(cond, timeout)
  return H.wait_until(cond, timeout or 10)
end

describe("tunnel.core.ws misuse", function()
  it("rejects unknown options, bad URLs, proxies, handlers and close arguments", function()
    local ok, err = pcall(ws.connect, { url = "ws://127.0.0.1:1/", colour = "red" })
    assert.is_false(ok)
    assert.matches("unknown option 'colour'", err)
    ok, err = pcall(ws.connect, { url = "ftp://127.0.0.1/" })
    assert.is_false(ok)
    assert.matches("bad url 'ftp://127.0.0.1/'.*ws://, wss://", err)
    ok, err = pcall(ws.connect, { url = "ws://user:pw@127.0.0.1/" })
    assert.is_false(ok)
    assert.matches("user:password@", err)
    ok, err = pcall(ws.connect, {})
    assert.is_false(ok)
    assert.matches("'url' is required", err)
    ok, err = pcall(ws.connect, { url = "ws://127.0.0.1:1/", proxy = "http://127.0.0.1:3128" })
    assert.is_false(ok)
    assert.matches("socks5", err)
    ok, err = pcall(ws.connect, { url = "ws://127.0.0.1:1/", on_open = "yes" })
    assert.is_false(ok)
    assert.matches("'on_open' must be a function", err)
    ok, err = pcall(ws.connect, { url = "ws://127.0.0.1:1/", ping_ms = -1 })
    assert.is_false(ok)
    assert.matches("'ping_ms' must be a whole number", err)
    -- A valid connection (to a closed port) for the method checks.
    local c = ws.connect { url = "ws://127.0.0.1:1/" }
    ok, err = pcall(c.close, c, 1005)
    assert.is_false(ok)
    assert.matches("close code", err)
    ok, err = pcall(c.close, c, 1000, string.rep("x", 124))
    assert.is_false(ok)
    assert.matches("123 bytes", err)
    c:close()
  end)
end)

describe("tunnel.core.ws against Node's ws", function()
  if not uv.fs_stat(WS_PACKAGE) then
    pending("spec/nostr/node_modules/ws is missing: run scripts/install-deps.sh (or npm ci in "
      .. "spec/nostr) to test tunnel.core.ws against Node's ws")
    return
  end

  local server, port
  setup(function()
    server = H.spawn({ "node", "spec/tools/ws_echo.js" }, { stdin = true })
    assert(server:wait_output("listening %d+", 15, "stdout"), "ws_echo.js did not start: "
      .. server.stderr)
    port = tonumber(server.stdout:match("listening (%d+)"))
  end)

  teardown(function()
    if server then
      server:close_stdin()
      server:wait(5)
    end
  end)

  -- Connect to `path` on the echo server; the returned table records every callback.
  local function connect(path, extra)
    local ev = { opened = 0, messages = {}, closes = {} }
    local opts = {
      url = "ws://127.0.0.1:" .. port .. path,
      on_open = function(c)
        ev.opened = ev.opened + 1
        ev.open_state = c:state()
      end,
      on_message = function(_, data, is_binary)
        ev.messages[#ev.messages + 1] = { data = data, binary = is_binary }
      end,
      on_close = function(c, code, reason)
        ev.closes[#ev.closes + 1] = { code = code, reason = reason, state = c:state() }
      end,
    }
    for k, v in pairs(extra or {}) do
      opts[k] = v
    end
    return ws.connect(opts), ev
  end

  local function opened(ev)
    return function()
      return ev.opened > 0 or #ev.closes > 0
    end
  end

  local function messages(ev, n)
    return function()
      return #ev.messages >= n or #ev.closes > 0
    end
  end

  local function closed(ev)
    return function()
      return #ev.closes > 0
    end
  end

  it("echoes text and binary, with stats, state and url", function()
    local c, ev = connect("/echo")
    assert.equal("connecting", c:state())
    assert.equal("ws://127.0.0.1:" .. port .. "/echo", c:url())
    local ok, err = c:send("too early")
    assert.is_nil(ok)
    assert.matches("not open %(it is connecting%)", err)
    assert.is_true(wait(opened(ev)))
    assert.equal(1, ev.opened)
    assert.equal("open", ev.open_state)
    assert.equal("open", c:state())
    assert.is_true(c:send("héllo"))
    assert.is_true(c:send("\0\1\2\255", true))
    assert.is_true(c:send(""))
    assert.is_true(wait(messages(ev, 3)))
    assert.same({ data = "héllo", binary = false }, ev.messages[1])
    assert.same({ data = "\0\1\2\255", binary = true }, ev.messages[2])
    assert.same({ data = "", binary = false }, ev.messages[3])
    ok, err = c:send("\255\254")
    assert.is_nil(ok)
    assert.matches("UTF%-8", err)
    local st = c:stats()
    assert.same({ tx_messages = 3, rx_messages = 3, tx_bytes = 10, rx_bytes = 10, queued = 0 }, st)
    c:close()
    assert.equal("closing", c:state())
    assert.is_true(wait(closed(ev)))
    assert.same({ { code = 1000, reason = "", state = "closed" } }, ev.closes)
    assert.equal("closed", c:state())
    assert.equal(3, c:stats().rx_messages)
  end)

  it("reassembles fragmented messages and carries large ones", function()
    local c, ev = connect("/echo")
    assert.is_true(wait(opened(ev)))
    assert.is_true(c:send("frag:250000"))
    assert.is_true(wait(messages(ev, 1)))
    local m = ev.messages[1]
    assert.is_true(m.binary)
    assert.equal(250000, #m.data)
    assert.equal(string.char(0, 1, 2), m.data:sub(1, 3))
    assert.equal(string.char(249 % 251, 250, 0), m.data:sub(250, 252))
    local big = {}
    for i = 1, 6000 do
      big[i] = string.format("%07d|", i) .. string.rep(string.char(65 + i % 26), 92)
    end
    big = table.concat(big)
    assert.is_true(c:send(big, true))
    assert.is_true(wait(messages(ev, 2)))
    assert.equal(#big, #ev.messages[2].data)
    assert.is_true(big == ev.messages[2].data)
    c:close(4000, "done here")
    assert.is_true(wait(closed(ev)))
    assert.same({ code = 4000, reason = "done here", state = "closed" }, ev.closes[1])
  end)

  it("answers the server's pings and pings it", function()
    local c, ev = connect("/echo", { ping_ms = 20 })
    assert.is_true(wait(opened(ev)))
    assert.is_true(c:send("ping"))
    assert.is_true(c:send("ping"))
    -- Our pongs reach the server after its pings: ask until it has counted both.
    local answer
    for _ = 1, 50 do
      local n = #ev.messages
      assert.is_true(c:send("pongs?"))
      assert.is_true(wait(messages(ev, n + 1)))
      answer = ev.messages[#ev.messages].data
      if answer == "pongs:2" then
        break
      end
    end
    assert.equal("pongs:2", answer)
    c:close()
    assert.is_true(wait(closed(ev)))
    assert.equal(1000, ev.closes[1].code)
  end)

  it("reports the server's close code and reason, once", function()
    local c, ev = connect("/echo")
    assert.is_true(wait(opened(ev)))
    assert.is_true(c:send("close:4321:server is done"))
    assert.is_true(wait(closed(ev)))
    assert.same({ { code = 4321, reason = "server is done", state = "closed" } }, ev.closes)
    c:close() -- idempotent, and no second on_close
    c:close(4000)
    local ok, err = c:send("late")
    assert.is_nil(ok)
    assert.matches("not open %(it is closed%)", err)
    wait(function()
      return #ev.closes > 1
    end, 0.2)
    assert.equal(1, #ev.closes)
  end)

  it("closes while connecting with on_close still once", function()
    local c, ev = connect("/echo")
    c:close(4001, "changed my mind")
    c:close()
    assert.is_true(wait(closed(ev)))
    assert.same({ { code = 4001, reason = "changed my mind", state = "closed" } }, ev.closes)
    assert.equal(0, ev.opened)
  end)

  it("fails with code nil and says what failed", function()
    local _, ev = connect("/404")
    assert.is_true(wait(closed(ev)))
    assert.is_nil(ev.closes[1].code)
    assert.matches("HTTP/1.1 404 Not Found", ev.closes[1].reason)
    assert.equal(0, ev.opened)

    local free = H.free_port()
    local ev2
    local c2 = ws.connect {
      url = "ws://127.0.0.1:" .. free .. "/",
      on_close = function(_, code, reason)
        ev2 = { code = code, reason = reason }
      end,
    }
    assert.is_true(wait(function()
      return ev2 ~= nil
    end))
    assert.is_nil(ev2.code)
    assert.matches("cannot connect to 127.0.0.1:" .. free .. ": Connection refused", ev2.reason)
    assert.equal("closed", c2:state())

    local c3, ev3 = connect("/echo")
    assert.is_true(wait(opened(ev3)))
    c3:send("terminate")
    assert.is_true(wait(closed(ev3)))
    assert.is_nil(ev3.closes[1].code)
    assert.matches("without a close frame", ev3.closes[1].reason)

    local c4, ev4 = connect("/echo", { max_message = 1000 })
    assert.is_true(wait(opened(ev4)))
    c4:send("big:1001")
    assert.is_true(wait(closed(ev4)))
    assert.is_nil(ev4.closes[1].code)
    assert.matches("too big", ev4.closes[1].reason)

    local c5, ev5 = connect("/echo")
    assert.is_true(wait(opened(ev5)))
    c5:send("badutf8")
    assert.is_true(wait(closed(ev5)))
    assert.is_nil(ev5.closes[1].code)
    assert.matches("UTF%-8", ev5.closes[1].reason)

    local _, ev6 = connect("/mute", { ping_ms = 30, dead_ms = 300 })
    assert.is_true(wait(closed(ev6)))
    assert.equal(1, ev6.opened)
    assert.is_nil(ev6.closes[1].code)
    assert.matches("nothing received from 127.0.0.1:%d+ for 300 ms", ev6.closes[1].reason)
  end)

  it("stays alive while connecting and open without a reference", function()
    local ev = { opened = 0, messages = {}, closes = {} }
    local weak = setmetatable({}, { __mode = "v" })
    do
      weak[1] = ws.connect {
        url = "ws://127.0.0.1:" .. port .. "/echo",
        on_open = function(c)
          ev.opened = ev.opened + 1
          collectgarbage("collect")
          c:send("still here")
        end,
        on_message = function(c, data)
          ev.messages[#ev.messages + 1] = data
          collectgarbage("collect")
          c:close(4002, "bye")
        end,
        on_close = function(_, code)
          ev.closes[#ev.closes + 1] = code
        end,
      }
    end
    collectgarbage("collect")
    collectgarbage("collect")
    assert.is_not_nil(weak[1])
    assert.is_true(wait(function()
      collectgarbage("collect")
      return #ev.closes > 0
    end))
    assert.same({ "still here" }, ev.messages)
    assert.same({ 4002 }, ev.closes)
    -- Released after on_close: nothing holds it any more.
    assert.is_true(wait(function()
      collectgarbage("collect")
      return weak[1] == nil
    end, 2))
  end)

  it("logs errors in handlers and keeps going; shutdown with an open connection", function()
    local dir = H.tmpdir()
    local script = H.write_file(dir .. "/ws_errors.lua", [[
      local ws = require "tunnel.core.ws"
      local n = 0
      ws.connect {
        url = arg[1],
        on_open = function(c)
          c:send("first")
          error("boom in on_open")
        end,
        on_message = function(c, data)
          n = n + 1
          print("got " .. data)
          io.stdout:flush()
          if n == 1 then
            c:send("second")
            error({ "not a string" })
          end
          -- Leave this one open: the host's shutdown closes it.
          require("tunnel.core.host").stop(0)
        end,
      }
    ]])
    local p = H.tunnel({ script, "ws://127.0.0.1:" .. port .. "/echo" }, { timeout = 20 })
    assert.equal(0, p.code, p.stderr)
    assert.matches("got first\ngot second\n", p.stdout)
    assert.matches("error in a WebSocket on_open handler: [^\n]*boom in on_open", p.stderr)
    assert.matches("error in a WebSocket on_message handler: table", p.stderr)
  end)
end)
