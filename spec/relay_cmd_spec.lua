-- `tunnel relay` on loopback: HTTP answers over a raw luv TCP connection (/ping, /metrics, 404,
-- the WebSocket upgrade), the STUN responder's address, SIGTERM ending with status 0, usage
-- errors; the same relay configured by a TOML file (-c, --default-config, command line over
-- file, file:line errors, access tokens from tokens_file checked with a real relay client);
-- and tunnel.core.relay in this process.
local H = require "helper"
local uv = require "luv"
local config = require "tunnel.config"
local fwd = require "tunnel.core.fwd"
local keys = require "tunnel.keys"
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

--- Start `tunnel relay` with exactly `args` (opts as for H.start) and wait for its "listening"
-- line. Returns the process and the port it listens on.
local function start_relay(args, opts)
  return H.start_relay(procs, args, opts)
end

--- Start `tunnel relay --listen 127.0.0.1:0` with more `args`.
local function start(args)
  local a = { "--listen", "127.0.0.1:0" }
  for _, x in ipairs(args or {}) do
    a[#a + 1] = x
  end
  return start_relay(a)
end

describe("tunnel relay", function()
  after_each(function()
    H.kill_all(procs)
    procs = {}
  end)

  it("tells its clients it is restarting, and exits 0 on SIGTERM with clients connected",
    function()
      -- Under ASan (make test SANITIZE=1) a connection the shutdown leaves behind is a leak
      -- report and a non-zero exit.
      local p, port = start()
      local dir = H.tmpdir()
      local key = dir .. "/server.key"
      assert.equal(0, H.tunnel({ "generate-server-key", "--output", key }).code)
      local token = H.tunnel({ "generate-token" }).stdout:gsub("%s+$", "")
      local srv = H.start({ "server", "--listen", "127.0.0.1:0", "--secret-file", key,
        "--auth-tokens", token, "--allowed-tcp", "127.0.0.0/8", "--relay-url",
        "http://127.0.0.1:" .. port }, { env = { XDG_RUNTIME_DIR = dir, HOME = dir } })
      procs[#procs + 1] = srv
      assert(srv:wait_output("relay http://127%.0%.0%.1:%d+: connected", 20),
        "server did not connect: " .. srv.stderr)
      p:kill("sigterm")
      p:wait(20)
      assert.equal(0, p.code, p.stderr)
      assert(srv:wait_output("the relay is restarting %(back in 1000 ms%)", 10),
        "no RESTARTING seen by the client: " .. srv.stderr)
    end)

  it("limits discovery requests per address with 429 and Retry-After", function()
    local _, port = start()
    local key = "/pkarr/" .. string.rep("y", 52)
    local codes, limited = {}, nil
    for _ = 1, 60 do
      local status, answer = get(port, key)
      local k = tostring(status)
      codes[k] = (codes[k] or 0) + 1
      if status == 429 then
        limited = answer
      end
    end
    -- A burst of 30 (and a few refilled meanwhile) are answered (400: not a valid key); the
    -- rest are refused before anything is parsed.
    assert.truthy(60 - (codes["429"] or 0) >= 30, "codes: " .. require("cjson").encode(codes))
    assert.truthy(codes["429"], "never limited")
    assert.matches("\r\nRetry%-After: %d+\r\n", limited)
    local _, body = get(port, "/metrics")
    assert.matches("\ntunnel_relay_pkarr_rate_limited_total [1-9]%d*\n", body)
    -- Other routes are not limited.
    assert.equal(200, (get(port, "/ping")))
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
    assert.matches("'tls_cert' needs 'tls_key': give both to serve HTTPS, or neither; on the " ..
      "command line: --tls-cert and --tls-key", p.stderr, 1, true)
    p = H.tunnel({ "relay", "--listen", "127.0.0.1:0", "--burst", "100" })
    assert.equal(1, p.code)
    assert.matches("'burst' only applies with 'rate'", p.stderr, 1, true)
    p = H.tunnel({ "relay", "--listen", "127.0.0.1:0", "--allow-key", "nonsense" })
    assert.equal(1, p.code)
    assert.matches("--allow-key nonsense", p.stderr, 1, true)
    p = H.tunnel({ "relay", "--listen", "127.0.0.1:0", "--token", string.rep("s", 256) })
    assert.equal(1, p.code)
    assert.matches("--token: a token must be 1 to 255 bytes long", p.stderr, 1, true)
    assert.not_matches("sssss", p.stderr, 1, true)
    p = H.tunnel({ "relay", "--listen", "127.0.0.1:0", "--rate", "0" })
    assert.equal(2, p.code)
    -- neither --listen nor a config file
    p = H.tunnel({ "relay" })
    assert.equal(1, p.code)
    assert.equal("tunnel: relay: needs 'listen' (TCP address for HTTP(S) and the WebSocket " ..
      "relay, e.g. 0.0.0.0:3340); on the command line: --listen\n", p.stderr)
  end)

  it("fails with status 1 when the port is taken", function()
    local _, port = start()
    local p = H.tunnel({ "relay", "--listen", "127.0.0.1:" .. port })
    assert.equal(1, p.code)
    assert.matches("cannot start the relay on 127.0.0.1:" .. port, p.stderr, 1, true)
  end)
end)

--- A relay client with a fresh identity (a tunnel.core.fwd server using the relay, as
-- `tunnel server` does) for the relay on 127.0.0.1:port, presenting `token` (nil: none).
-- Returns "ready" once the relay accepted it, else the client's error from its first attempt.
local function relay_client(port, token)
  local s = assert(fwd.server({ ip = "127.0.0.1", port = 0, secret = keys.generate_secret(),
    on_event = function() end }))
  assert(s:relay({ url = "http://127.0.0.1:" .. port, secret = keys.generate_secret(),
    token = token, relay_only = true }))
  local st
  H.wait_until(function()
    st = s:relay_stats()[1]
    return st.state == "ready" or st.error ~= nil
  end, 20)
  s:close()
  return st.state == "ready" and "ready" or tostring(st.error)
end

local function metric(text, name)
  return tonumber(text:match("\n" .. name .. " (%d+)\n"))
end

describe("tunnel relay with a config file", function()
  local dir

  before_each(function()
    dir = H.tmpdir()
  end)

  after_each(function()
    H.kill_all(procs)
    procs = {}
    H.cleanup()
    uv.run("nowait") -- let closed relay clients finish closing
  end)

  local function relay_toml(lines)
    return H.write_file(dir .. "/relay.toml", table.concat(lines, "\n") .. "\n")
  end

  it("listens where the file says and applies its settings (-c)", function()
    local port = H.free_port()
    local file = relay_toml({ 'role = "relay"', "[relay]", 'listen = "127.0.0.1:' .. port .. '"',
      'stun_listen = "127.0.0.1:0"', "pkarr_slots = 0", "rate = 100000" })
    local p, got = start_relay({ "-c", file })
    assert.equal(port, got)
    assert.matches("STUN responder on 127%.0%.0%.1:%d+", p.stdout)
    local status, body = get(port, "/ping")
    assert.equal(200, status, body)
    assert.matches("\r\n\r\npong\n$", body)
    -- pkarr_slots = 0: no discovery store, so /pkarr/... is an unknown route (404, not 400)
    assert.equal(404, (get(port, "/pkarr/not-a-key")))
    assert.matches("access: any key, no token required; rate 100000 bytes/s per client; " ..
      "discovery store off", p.stderr, 1, true)
    p:kill("sigterm")
    p:wait(20)
    assert.equal(0, p.code, p.stderr)
  end)

  it("reads ~/.config/tunnel/relay.toml with --default-config", function()
    assert(uv.fs_mkdir(dir .. "/.config", 448))
    assert(uv.fs_mkdir(dir .. "/.config/tunnel", 448))
    H.write_file(dir .. "/.config/tunnel/relay.toml",
      'role = "relay"\n[relay]\nlisten = "127.0.0.1:0"\nstun_listen = "127.0.0.1:0"\n')
    local env = { HOME = dir, XDG_CONFIG_HOME = false, XDG_RUNTIME_DIR = dir }
    local p, port = start_relay({ "--default-config" }, { env = env })
    assert.matches("STUN responder on 127%.0%.0%.1:%d+", p.stdout)
    assert.equal(200, (get(port, "/ping")))
    local empty = H.tmpdir()
    local q = H.tunnel({ "relay", "--default-config" },
      { env = { HOME = empty, XDG_CONFIG_HOME = false, XDG_RUNTIME_DIR = empty } })
    assert.equal(1, q.code)
    assert.matches(empty .. "/.config/tunnel/relay.toml: cannot read the config file", q.stderr,
      1, true)
  end)

  it("lets options on the command line win over the file", function()
    -- Hold a port, so that a relay on the file's address cannot start.
    local holder = uv.new_tcp()
    assert(holder:bind("127.0.0.1", 0))
    assert(holder:listen(1, function() end))
    local held = holder:getsockname().port
    local file = relay_toml({ 'role = "relay"', "[relay]", 'listen = "127.0.0.1:' .. held .. '"',
      "pkarr_slots = 0", 'tokens_file = "no-such-file"' })
    -- The file alone: its tokens file is missing.
    local p = H.tunnel({ "relay", "-c", file })
    assert.equal(1, p.code, p.stderr)
    assert.matches("cannot read the tokens file " .. dir .. "/no-such-file", p.stderr, 1, true)
    -- --token replaces tokens_file; the address is still the file's.
    p = H.tunnel({ "relay", "-c", file, "--token", "cli-token" })
    assert.equal(1, p.code, p.stderr)
    assert.matches("cannot start the relay on 127.0.0.1:" .. held, p.stderr, 1, true)
    -- --listen and --pkarr-slots replace the file's too.
    local _, port = start_relay({ "-c", file, "--token", "cli-token", "--listen", "127.0.0.1:0",
      "--pkarr-slots", "8" })
    holder:close()
    assert.are_not.equal(held, port)
    assert.equal(400, (get(port, "/pkarr/not-a-key"))) -- the store is on: a bad key is a 400
    assert.equal("the relay requires an access token and none is configured",
      relay_client(port))
    assert.equal("ready", relay_client(port, "cli-token"))
  end)

  it("reports every mistake in the file with file:line:col, never echoing a token", function()
    local long = string.rep("k", 256)
    local file = relay_toml({
      'role = "relay"',
      'mode = "iroh"',
      "[relay]",
      'listen = "localhost:3340"',
      'stun_listen = "127.0.0.1:99999"',
      'allow_keys = ["nonsense"]',
      'tokens = ["' .. long .. '"]',
      'tokens_file = "t"',
      "rate = 0",
      "pkarr_slots = 1.5",
      'tls-cert = "c.pem"',
      "[iroh]",
    })
    local p = H.tunnel({ "relay", "-c", file })
    assert.equal(1, p.code)
    local f = file
    assert.equal(table.concat({
      "tunnel: " .. f .. ":2:1: 'mode' does not apply to role 'relay' (a relay serves iroh " ..
        "mode and has no other); remove it",
      f .. ":4:1: 'listen' is invalid: 'localhost:3340': give a numeric IP address (0.0.0.0 " ..
        "or [::] for all)",
      f .. ":5:1: 'stun_listen' is invalid: '127.0.0.1:99999': port 99999 is out of range " ..
        "0-65535",
      f .. ":6:15: 'allow_keys[1]' is invalid: EndpointId must be 52 base32 characters or 64 " ..
        "hex characters, got 8 characters",
      f .. ":7:11: 'tokens[1]' must be 1 to 255 bytes long, got 256 bytes",
      f .. ":8:1: 'tokens' and 'tokens_file' are alternatives; set only one of them",
      f .. ":9:1: 'rate' is out of range: got 0, allowed 1 to 4294967295",
      f .. ":10:1: 'pkarr_slots' must be an integer, got a float (1.5)",
      f .. ":11:1: unknown key 'tls-cert' in [relay] — did you mean 'tls_cert'?",
      f .. ":12:2: [iroh] is not used by role 'relay' (tunnel relay reads only [relay]); " ..
        "remove this section",
    }, "\n") .. "\n", p.stderr)
    assert.not_matches("kkkk", p.stderr, 1, true)
    -- a list written as a string: described by its length only
    relay_toml({ 'role = "relay"', "[relay]", 'tokens = "sekrit-value"' })
    p = H.tunnel({ "relay", "-c", file, "--listen", "127.0.0.1:0" })
    assert.equal("tunnel: " .. f .. ":3:1: 'tokens' must be a list ([...]), got a string of " ..
      "12 characters\n", p.stderr)
    -- a file of another role
    relay_toml({ 'role = "server"' })
    p = H.tunnel({ "relay", "-c", file, "--listen", "127.0.0.1:0" })
    assert.equal(1, p.code)
    assert.matches(f .. ":1:1: role 'server' does not match the command, which runs a relay",
      p.stderr, 1, true)
    -- what the run still needs, once the command line is merged in
    relay_toml({ 'role = "relay"', "[relay]", 'tls_cert = "cert.pem"', "burst = 5" })
    p = H.tunnel({ "relay", "-c", file })
    assert.equal(1, p.code)
    assert.equal(table.concat({
      "tunnel: relay: needs 'listen' (TCP address for HTTP(S) and the WebSocket relay, e.g. " ..
        "0.0.0.0:3340); on the command line: --listen",
      "relay.tls_cert: 'tls_cert' needs 'tls_key': give both to serve HTTPS, or neither; on " ..
        "the command line: --tls-cert and --tls-key",
      "relay.burst: 'burst' only applies with 'rate': set rate (bytes per second) too, or " ..
        "remove burst; on the command line: --rate",
    }, "\n") .. "\n", p.stderr)
  end)

  it("takes access tokens from tokens_file and refuses clients without one", function()
    H.write_file(dir .. "/tokens", "# who may use this relay\n\n  open-sesame-1  \n" ..
      "second.token   # bob\nopen-sesame-1\n", 384)
    -- tokens_file is relative to the config file's directory, not to the working directory
    local file = relay_toml({ 'role = "relay"', "[relay]", 'listen = "127.0.0.1:0"',
      'tokens_file = "tokens"' })
    local p, port = start_relay({ "-c", file })
    assert.equal("the relay requires an access token and none is configured",
      relay_client(port))
    assert.matches("^the relay refused us: .*%(code 4%)$", relay_client(port, "open-sesame"))
    assert.equal("ready", relay_client(port, "open-sesame-1"))
    assert.equal("ready", relay_client(port, "second.token"))
    local _, text = get(port, "/metrics")
    assert.equal(2, metric(text, "tunnel_relay_auth_ok_total"), text)
    assert.is_true(metric(text, "tunnel_relay_auth_failures_total") >= 1, text)
    assert.matches("access: any key, one of 2 token(s) required", p.stderr, 1, true)
    assert.not_matches("sesame", p.stdout .. p.stderr, 1, true)
    assert.not_matches("second.token", p.stdout .. p.stderr, 1, true)
  end)

  it("refuses a tokens file without tokens or with a bad line", function()
    local file = relay_toml({ 'role = "relay"', "[relay]", 'listen = "127.0.0.1:0"',
      'tokens_file = "tokens"' })
    H.write_file(dir .. "/tokens", "# nothing here yet\n\n", 384)
    local p = H.tunnel({ "relay", "-c", file })
    assert.equal(1, p.code)
    assert.matches("the tokens file " .. dir .. "/tokens has no token: write one access " ..
      "token per line", p.stderr, 1, true)
    H.write_file(dir .. "/tokens", "good-token\n" .. string.rep("z", 300) .. "\n", 384)
    p = H.tunnel({ "relay", "-c", file })
    assert.equal(1, p.code)
    assert.equal("tunnel: " .. dir .. "/tokens:2: a token must be 1 to 255 bytes long, this " ..
      "one has 300\n", p.stderr)
    -- --tokens-file on the command line, read by anyone: a warning, and it still runs
    H.write_file(dir .. "/open", "good-token\n", 420)
    local r, port = start_relay({ "--listen", "127.0.0.1:0", "--tokens-file", dir .. "/open" })
    assert.matches("tokens file " .. dir .. "/open can be read by other users (mode 0644)",
      r.stderr, 1, true)
    assert.equal("ready", relay_client(port, "good-token"))
  end)

  it("runs examples/relay.toml", function()
    local cfg = assert(config.load("examples/relay.toml", { role = "relay", complete = true }))
    assert.same({ role = "relay", relay = { listen = "0.0.0.0:3340",
      stun_listen = "0.0.0.0:3478", allow_keys = {}, rate = 12500000, pkarr_slots = 4096 } }, cfg)
    local p, port = start_relay({ "-c", "examples/relay.toml", "--listen", "127.0.0.1:0",
      "--stun-listen", "127.0.0.1:0" })
    assert.matches("STUN responder on 127%.0%.0%.1:%d+", p.stdout)
    assert.equal(200, (get(port, "/ping")))
    assert.matches("rate 12500000 bytes/s per client; discovery store 4096 slots", p.stderr, 1,
      true)
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
