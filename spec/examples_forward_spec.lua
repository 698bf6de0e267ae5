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
    assert.equal(0, H.tunnel({ "generate-server-key", "--output", dir .. "/k" }).code)
    local token = H.tunnel({ "generate-token" }).stdout:gsub("%s+$", "")
    local id = H.tunnel({ "show-server-id", "--secret-file", dir .. "/k" }).stdout:gsub("%s+$", "")
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
