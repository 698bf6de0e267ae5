-- examples/server.lua and examples/client.lua, run as real processes on loopback.
local H = require "helper"
local uv = require "luv"

local function free_port()
  local s = uv.new_tcp()
  s:bind("127.0.0.1", 0)
  local port = s:getsockname().port
  s:close()
  return port
end

-- A TCP echo service inside this process (driven while we wait).
local function echo_service()
  local srv = uv.new_tcp()
  assert(srv:bind("127.0.0.1", 0))
  assert(srv:listen(16, function()
    local c = uv.new_tcp()
    srv:accept(c)
    c:read_start(function(_, data)
      if data then c:write(data) else c:close() end
    end)
  end))
  return srv, srv:getsockname().port
end

local function new_token()
  return (H.tunnel({ "generate-token" }).stdout:gsub("%s+$", ""))
end

--- A server key in dir/k: its EndpointId, and a fresh token.
local function identity(dir)
  assert.equal(0, H.tunnel({ "generate-server-key", "--output", dir .. "/k" }).code)
  local id = H.tunnel({ "show-server-id", "--secret-file", dir .. "/k" }).stdout:gsub("%s+$", "")
  return id, new_token()
end

-- The last line of `s`, without its line break.
local function last_line(s)
  return s:match("([^\n]*)\n$")
end

local function roundtrip(port, msg)
  local got, done = "", false
  local c = uv.new_tcp()
  c:connect("127.0.0.1", port, function(err)
    if err then done = true return end
    c:write(msg)
    c:read_start(function(_, data)
      if data then got = got .. data end
      if not data or #got >= #msg then
        done = true
        c:close()
      end
    end)
  end)
  H.wait_until(function() return done end, 10)
  if not c:is_closing() then c:close() end
  return got
end

-- Processes the tests below start; each test's leftovers (a failed assertion skips its own
-- cleanup) are killed after it.
local started = {}
local function start(args, opts)
  local p = H.start(args, opts)
  started[#started + 1] = p
  return p
end
local function kill_started()
  for _, p in ipairs(started) do
    if not p.done then
      p:kill("sigkill")
      p:wait(5)
    end
  end
  started = {}
end

describe("examples/server.lua and examples/client.lua", function()
  local dir, procs
  before_each(function()
    dir = H.tmpdir()
    procs = {}
  end)
  after_each(function()
    for _, p in ipairs(procs) do
      p:kill("sigkill")
      p:wait(5)
    end
    H.cleanup()
  end)

  it("forward through the example server, refuse port 25, and end when the server stops", function()
    local env = { XDG_RUNTIME_DIR = dir }
    local id, token = identity(dir)
    local echo, echo_port = echo_service()
    local srv = H.start({ "examples/server.lua", dir .. "/k", token, "127.0.0.1:0" }, { env = env })
    procs[#procs + 1] = srv
    assert.is_true(srv:wait_output("Listening: 127%.0%.0%.1:%d+", 10, "stdout"), srv.stderr)
    local sport = srv.stdout:match("Listening: 127%.0%.0%.1:(%d+)")
    local p1, p2 = free_port(), free_port()
    local cli = H.start({ "examples/client.lua", id, "127.0.0.1:" .. sport, token,
      "tcp://127.0.0.1:" .. echo_port, "127.0.0.1:" .. p1,
      "tcp://127.0.0.1:25", "127.0.0.1:" .. p2 }, { env = env })
    procs[#procs + 1] = cli
    assert.is_true(cli:wait_output("READY", 10, "stdout"), cli.stderr)

    assert.equal("hello through the example", roundtrip(p1, "hello through the example"))
    assert.equal("", roundtrip(p2, "mail?"))
    assert.is_true(cli:wait_output("refused: no mail relaying from here", 10))

    local a = H.tunnel({ "attach", "example-server" }, { env = env, stdin = "return #sessions()" })
    assert.equal(0, a.code, a.stderr)
    assert.matches("^1", a.stdout)

    srv:kill("sigterm")
    srv:wait(10)
    assert.equal(0, srv.code)
    cli:wait(10)
    assert.equal(1, cli.code)
    assert.matches("connection ended: the server shut down", cli.stderr)
    echo:close()
  end)
end)

describe("tunnel.server's on_request hook", function()
  after_each(kill_started)
  it("denies a rewrite it cannot use, answers at once and frees the session slot", function()
    local dir = H.tmpdir()
    local env = { XDG_RUNTIME_DIR = dir }
    local id, token = identity(dir)
    local echo, echo_port = echo_service()
    -- One session at a time; port 7 is rewritten to a port that cannot exist.
    local script = dir .. "/server.lua"
    local f = assert(io.open(script, "w"))
    f:write(([[
local tunnel = require "tunnel"
local srv = assert(tunnel.server { listen = "127.0.0.1:0", secret_file = %q, tokens = { %q },
  allowed_tcp = { "127.0.0.0/8" }, max_sessions = 1,
  on_request = function(req)
    if req.port == 7 then return { port = 70000 } end
    if req.port == 9 then return { host = 127 } end
    return true
  end })
io.stdout:write("Listening: ", srv:address(), "\n")
io.stdout:flush()
]]):format(dir .. "/k", token))
    f:close()
    local srv = start({ script }, { env = env })
    assert.is_true(srv:wait_output("Listening: 127%.0%.0%.1:%d+", 10, "stdout"), srv.stderr)
    local sport = srv.stdout:match("Listening: 127%.0%.0%.1:(%d+)")
    local p1, p2, p3 = free_port(), free_port(), free_port()
    local cli = start({ "examples/client.lua", id, "127.0.0.1:" .. sport, token,
      "tcp://127.0.0.1:7", "127.0.0.1:" .. p1, "tcp://127.0.0.1:9", "127.0.0.1:" .. p2,
      "tcp://127.0.0.1:" .. echo_port, "127.0.0.1:" .. p3 }, { env = env })
    assert.is_true(cli:wait_output("READY", 10, "stdout"), cli.stderr)
    -- Refused (the local connection closes), not left hanging.
    assert.equal("", roundtrip(p1, "x"))
    assert.is_true(cli:wait_output("refused: denied by server policy", 10), cli.stderr)
    assert.equal("", roundtrip(p2, "y"))
    assert.is_true(srv:wait_output("on_request returned an invalid rewrite %(port must be " ..
      "an integer 1%-65535, got 70000%): denying", 10), srv.stderr)
    assert.is_true(srv:wait_output("on_request returned an invalid rewrite %(host must be a " ..
      "non%-empty string, got number%): denying", 10), srv.stderr)
    -- The only session slot is free again.
    assert.equal("still works", roundtrip(p3, "still works"))
    cli:kill("sigkill")
    cli:wait(5)
    srv:kill("sigterm")
    srv:wait(10)
    assert.equal(0, srv.code, srv.stderr)
    echo:close()
    H.cleanup()
  end)
end)

describe("tunnel.server's on_auth hook", function()
  after_each(kill_started)
  it("allows, denies with a reason, and denies (logged) on an error or a bad answer", function()
    local dir = H.tmpdir()
    local env = { XDG_RUNTIME_DIR = dir }
    local id = identity(dir)
    local tok = {}
    for i = 1, 5 do
      tok[i] = new_token()
    end
    -- tok[1] is configured; the hook admits tok[2] too, refuses tok[3] with a reason, fails on
    -- tok[4] and answers nonsense for tok[5].
    local script = dir .. "/server.lua"
    local f = assert(io.open(script, "w"))
    f:write(([[
local tunnel = require "tunnel"
local T = { %q, %q, %q, %q, %q }
local srv = assert(tunnel.server { listen = "127.0.0.1:0", secret_file = %q, tokens = { T[1] },
  allowed_tcp = { "127.0.0.0/8" },
  on_auth = function(info)
    if info.token == T[2] then return true end
    if info.token == T[3] then return nil, "you are not on the list" end
    if info.token == T[4] then error({ code = 1 }) end
    if info.token == T[5] then return "yes" end
    assert(info.token_valid and #info.client_id == 52)
    return true
  end })
io.stdout:write("Listening: ", srv:address(), "\n")
io.stdout:flush()
]]):format(tok[1], tok[2], tok[3], tok[4], tok[5], dir .. "/k"))
    f:close()
    local srv = start({ script }, { env = env })
    assert.is_true(srv:wait_output("Listening: 127%.0%.0%.1:%d+", 10, "stdout"), srv.stderr)
    local sport = srv.stdout:match("Listening: 127%.0%.0%.1:(%d+)")
    local function client(t, o)
      local args = { "client", "-n", id, "--server-addr", "127.0.0.1:" .. sport, "--auth-token",
        t, "-s", "tcp://127.0.0.1:9", "-t", "127.0.0.1:" .. free_port() }
      if o then
        return start(args, { env = env })
      end
      return H.tunnel(args, { env = env, timeout = 30 })
    end
    for i = 1, 2 do
      local c = client(tok[i], true)
      assert.is_true(c:wait_output("forwarding tcp", 10), c.stderr)
      c:kill("sigkill")
      c:wait(5)
    end
    local r = client(tok[3])
    assert.equal(1, r.code)
    assert.equal("tunnel: authentication failed: you are not on the list", last_line(r.stderr))
    r = client(tok[4])
    assert.equal(1, r.code)
    assert.equal("tunnel: authentication failed: denied by server policy (hook error)",
      last_line(r.stderr))
    assert.is_true(srv:wait_output("on_auth hook failed %(denying%): error object %(table%): " ..
      "table: 0x%x+\n", 10), srv.stderr)
    assert.is_true(srv:wait_output("\n[^\n]* ERROR auth:   stack traceback:\n", 10), srv.stderr)
    r = client(tok[5])
    assert.equal(1, r.code)
    assert.equal("tunnel: authentication failed: denied by server policy", last_line(r.stderr))
    assert.is_true(srv:wait_output("on_auth returned string %(expected true, or nil and a " ..
      "reason%): denying", 10), srv.stderr)
    srv:kill("sigterm")
    srv:wait(10)
    H.cleanup()
  end)
end)

describe("tunnel.client without on_closed", function()
  after_each(kill_started)
  it("logs why it could not connect", function()
    local dir = H.tmpdir()
    local id, token = identity(dir)
    local dead = uv.new_udp()
    assert(dead:bind("127.0.0.1", 0))
    local port = dead:getsockname().port
    dead:close() -- nothing listens there now: the host answers "port unreachable"
    local script = dir .. "/client.lua"
    local f = assert(io.open(script, "w"))
    f:write(([[
local tunnel = require "tunnel"
assert(tunnel.client { server_id = %q, server_addr = "127.0.0.1:%d", token = %q,
  source = "tcp://127.0.0.1:9", target = "127.0.0.1:0" })
]]):format(id, port, token))
    f:close()
    local c = start({ script }, { env = { XDG_RUNTIME_DIR = dir } })
    assert.is_true(c:wait_output(("cannot connect to 127%%.0%%.0%%.1:%d: nothing is listening"):
      format(port), 20), c.stderr)
    c:kill("sigkill")
    c:wait(5)
    H.cleanup()
  end)
end)

describe("examples/manual_loopback.lua", function()
  it("connects a manual-mode pair in one process and echoes the message", function()
    local dir = H.tmpdir()
    local p = H.tunnel({ "examples/manual_loopback.lua", "ping through ICE" },
      { env = { XDG_RUNTIME_DIR = dir }, timeout = 60 })
    H.cleanup()
    assert.equal(0, p.code, p.stdout .. p.stderr)
    assert.matches("client: offer ready", p.stdout, 1, true)
    assert.matches("server: answer ready", p.stdout, 1, true)
    assert.matches("client: connected via direct connection (host candidates)", p.stdout, 1, true)
    assert.matches("server: client connected via direct connection (host candidates)", p.stdout,
      1, true)
    assert.matches("echoed: ping through ICE\n", p.stdout, 1, true)
  end)
end)
