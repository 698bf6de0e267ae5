-- `tunnel relay` on loopback: HTTP answers over a raw luv TCP connection (/ping, /metrics, 404,
-- the WebSocket upgrade), the STUN responder's address, SIGTERM ending with status 0, usage
-- errors; and tunnel.core.relay in this process.
local H = require "helper"
local uv = require "luv"
local relay = require "tunnel.core.relay"

local procs = {}

--- Send `req` to 127.0.0.1:port and collect everything until the server closes.
-- Returns the status code, the whole answer text.
local function http(port, req)
  local tcp = uv.new_tcp()
  local answer, done, err = "", false, nil
  tcp:connect("127.0.0.1", port, function(cerr)
    if cerr then
      err, done = cerr, true
      return
    end
    tcp:write(req)
    tcp:read_start(function(rerr, data)
      if rerr or not data then
        err, done = rerr, true
        return
      end
      answer = answer .. data
    end)
  end)
  H.wait_until(function()
    return done
  end, 10)
  if not tcp:is_closing() then
    tcp:close()
  end
  assert(done, "no answer from the relay")
  assert(not err, tostring(err))
  return tonumber(answer:match("^HTTP/1%.1 (%d%d%d) ")), answer
end

local function get(port, path)
  return http(port, "GET " .. path .. " HTTP/1.1\r\nHost: localhost\r\n\r\n")
end

--- Start `tunnel relay` with `args` and wait for its "listening" line.
local function start(args)
  local a = { "relay", "--listen", "127.0.0.1:0" }
  for _, x in ipairs(args or {}) do
    a[#a + 1] = x
  end
  local p = H.start(a)
  procs[#procs + 1] = p
  H.wait_until(function()
    return p.stdout:find("relay listening on http://127%.0%.0%.1:%d+\n") or p.done
  end, 20)
  local port = tonumber(p.stdout:match("relay listening on http://127%.0%.0%.1:(%d+)"))
  assert(port, "relay did not start: " .. p.stdout .. p.stderr)
  return p, port
end

describe("tunnel relay", function()
  after_each(function()
    for _, p in ipairs(procs) do
      p:kill("sigkill")
      p:wait(10)
    end
    procs = {}
  end)

  it("answers /ping, /metrics and 404, and exits 0 on SIGTERM", function()
    local p, port = start({ "--stun-listen", "127.0.0.1:0" })
    assert.matches("STUN responder on 127%.0%.0%.1:%d+", p.stdout)
    local status, body = get(port, "/ping")
    assert.equal(200, status, body)
    assert.matches("\r\n\r\npong\n$", body)
    status, body = get(port, "/metrics")
    assert.equal(200, status, body)
    assert.matches("# TYPE tunnel_relay_clients gauge\n", body, 1, true)
    -- /ping and this request
    assert.matches("\ntunnel_relay_connections_accepted_total 2\n", body, 1, true)
    assert.matches("\ntunnel_relay_http_errors_total 0\n", body, 1, true)
    status = get(port, "/nothing-here")
    assert.equal(404, status)
    status = http(port, "BROKEN\r\n\r\n")
    assert.equal(400, status)
    status, body = http(port, table.concat({
      "GET /relay HTTP/1.1", "Host: localhost", "Upgrade: websocket", "Connection: Upgrade",
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
      "Sec-WebSocket-Protocol: tunnel-relay-v1", "", "",
    }, "\r\n") .. "\136\128\0\0\0\0") -- then a masked close frame
    assert.equal(101, status, body)
    assert.matches("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", body, 1, true)
    assert.matches("Sec-WebSocket-Protocol: tunnel-relay-v1\r\n", body, 1, true)
    p:kill("sigterm")
    p:wait(20)
    assert.is_true(p.done)
    assert.equal(0, p.code, p.stderr)
  end)

  it("rejects bad usage with a message", function()
    local p = H.tunnel({ "relay", "--listen", "localhost:1" })
    assert.equal(1, p.code)
    assert.matches("give a numeric IP address", p.stderr, 1, true)
    p = H.tunnel({ "relay", "--listen", "127.0.0.1:0", "--tls-cert", "x.pem" })
    assert.equal(1, p.code)
    assert.matches("--tls-cert and --tls-key go together", p.stderr, 1, true)
    p = H.tunnel({ "relay", "--listen", "127.0.0.1:0", "--allow-key", "nonsense" })
    assert.equal(1, p.code)
    assert.matches("--allow-key nonsense", p.stderr, 1, true)
    p = H.tunnel({ "relay", "--listen", "127.0.0.1:0", "--rate", "0" })
    assert.equal(2, p.code)
    p = H.tunnel({ "relay" })
    assert.equal(2, p.code)
  end)

  it("fails with status 1 when the port is taken", function()
    local _, port = start()
    local p = H.tunnel({ "relay", "--listen", "127.0.0.1:" .. port })
    assert.equal(1, p.code)
    assert.matches("cannot start the relay on 127.0.0.1:" .. port, p.stderr, 1, true)
  end)
end)

describe("tunnel.core.relay", function()
  it("runs a server in this process, with stats and metrics", function()
    local s = assert(relay.server({ listen = "127.0.0.1:0", pkarr_capacity = 4 }))
    local port = tonumber(s:local_addr():match(":(%d+)$"))
    assert.is_nil(s:stun_addr())
    local status = get(port, "/ping")
    assert.equal(200, status)
    status = get(port, "/pkarr/not-a-key")
    assert.equal(400, status)
    H.wait_until(function()
      return s:stats().closed == 2
    end, 10)
    local st = s:stats()
    assert.equal(2, st.accepted)
    assert.equal(2, st.closed)
    assert.equal(1, st.http_errors)
    assert.matches("\ntunnel_relay_http_requests_total 2\n", s:metrics(), 1, true)
    s:close()
    assert.is_true(s:closed())
    assert.has_error(function()
      s:stats()
    end, "the relay server is closed")
  end)

  it("checks its options", function()
    assert.has_error(function()
      relay.server({ listen = "127.0.0.1:0", bogus = 1 })
    end, "unknown option 'bogus'")
    assert.has_error(function()
      relay.server({})
    end, "option 'listen' is required")
    assert.has_error(function()
      relay.server({ listen = "127.0.0.1:0", allow = { "short" } })
    end, "allow[1] must be a 32-byte public key")
    assert.has_error(function()
      relay.server({ listen = "127.0.0.1:0", tls_cert = "x" })
    end, "options 'tls_cert' and 'tls_key' go together")
    local s, err = relay.server({ listen = "127.0.0.1:0", tls_cert = "/nonexistent.pem",
      tls_key = "/nonexistent.key" })
    assert.is_nil(s)
    assert.is_string(err)
  end)
end)
