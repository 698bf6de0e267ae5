-- Every script in examples/ run as a real process through the tunnel binary, checked for what
-- its header promises.
local H = require "helper"
local uv = require "luv"

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do
    t[#t + 1] = l
  end
  return t
end

-- What a failed run printed, for assertion messages.
local function output(p)
  return ("exit %s\n--- stdout\n%s--- stderr\n%s"):format(tostring(p.code), p.stdout, p.stderr)
end

describe("examples", function()
  local dir, env
  before_each(function()
    dir = H.tmpdir()
    -- scripts that keep the loop running open a control socket; keep it in our temp dir
    env = { XDG_RUNTIME_DIR = dir }
  end)
  after_each(function()
    H.cleanup()
    -- let handles closed by the test finish closing, so none outlives the spec
    uv.run("nowait")
  end)

  local function run(args, opts)
    opts = opts or {}
    opts.env = opts.env or env
    return H.tunnel(args, opts)
  end

  describe("hello.lua", function()
    it("greets, shows versions, ticks on timers and exits 0", function()
      local p = run({ "examples/hello.lua" })
      assert.equal(0, p.code, output(p))
      local tunnel = require "tunnel"
      local v = tunnel.versions()
      assert.same({
        "hello, world",
        ("tunnel %s on %s, libuv %s, luv %s"):format(tunnel.version, v.luajit, v.libuv, v.luv),
        "tick 1", "tick 2", "tick 3",
        "exiting with status 0",
      }, lines(p.stdout))
      assert.matches("INFO  hello: started with 0 argument", p.stderr)
      assert.matches("INFO  hello: one%-shot timer fired after %d+ ms", p.stderr)
      assert.matches("INFO  hello: goodbye, world", p.stderr)
      assert.not_matches("only with %-v", p.stderr)
    end)

    it("takes a name and an exit status from its arguments", function()
      local p = run({ "examples/hello.lua", "Alice", "3" })
      assert.equal(3, p.code, output(p))
      assert.equal("hello, Alice", lines(p.stdout)[1])
      assert.matches("exiting with status 3\n$", p.stdout)
      assert.matches("started with 2 argument%(s%): Alice 3", p.stderr)
      assert.matches("goodbye, Alice", p.stderr)
    end)

    it("shows debug lines with -v", function()
      local p = run({ "-v", "examples/hello.lua" })
      assert.equal(0, p.code, output(p))
      assert.matches("DEBUG hello: this line shows only with %-v", p.stderr)
    end)

    it("rejects a bad exit status with usage and status 2", function()
      local p = run({ "examples/hello.lua", "Bob", "300" })
      assert.equal(2, p.code, output(p))
      assert.matches("usage: tunnel examples/hello.lua", p.stderr)
      assert.equal("", p.stdout)
    end)
  end)

  describe("echo_server.lua", function()
    -- A luv TCP client: .received collects what comes back, .eof when the server closed.
    local function connect(port)
      local c = { parts = {}, n = 0, eof = false }
      local tcp = uv.new_tcp()
      c.tcp = tcp
      tcp:connect("127.0.0.1", port, function(err)
        c.connected, c.err = err == nil, err
      end)
      assert(H.wait_until(function()
        return c.connected ~= nil
      end, 10), "connect timed out")
      assert(c.connected, c.err)
      function c.start()
        tcp:read_start(function(err, data)
          if err then
            c.err = err
          elseif data then
            c.parts[#c.parts + 1] = data
            c.n = c.n + #data
          else
            c.eof = true
          end
        end)
      end
      function c.received()
        return table.concat(c.parts)
      end
      function c.close()
        if not tcp:is_closing() then
          tcp:close()
        end
      end
      return c
    end

    local function start_server(name, args)
      local cmd = { "--name", name, "examples/echo_server.lua" }
      for _, a in ipairs(args or {}) do
        cmd[#cmd + 1] = a
      end
      local p = H.start(cmd, { env = env })
      assert(p:wait_output("listening on 127%.0%.0%.1:%d+\n", 10, "stdout"), output(p))
      local port = tonumber(p.stdout:match("echo server listening on 127%.0%.0%.1:(%d+)"))
      return p, port
    end

    it("echoes, reports stats to tunnel attach, and exits 0 on SIGTERM", function()
      local p, port = start_server("echo-spec")
      local clients = {}
      finally(function()
        for _, c in ipairs(clients) do
          c.close()
        end
        p:kill("sigkill")
        p:wait(5)
      end)

      -- a short exchange, closed by the client
      local a = connect(port)
      clients[1] = a
      a.start()
      a.tcp:write("hello\n")
      assert(H.wait_until(function()
        return a.n >= 6
      end, 10), "no echo")
      assert.equal("hello\n", a.received())
      a.tcp:shutdown()
      assert(H.wait_until(function()
        return a.eof
      end, 10), "server did not close after our end of input")

      -- 16 MiB while the client stops reading for a moment, so the server has to stop
      -- reading too (flow control) and then resume; every byte must come back in order
      local chunks = {}
      for i = 1, 16 * 65536 do
        chunks[i] = ("%015d\n"):format(i)
      end
      local big = table.concat(chunks)
      local b = connect(port)
      clients[2] = b
      local wrote
      b.tcp:write(big, function(err)
        wrote = err or true
      end)
      b.tcp:shutdown()
      local t = uv.new_timer()
      t:start(300, 0, function()
        t:close()
        b.start()
      end)
      assert(H.wait_until(function()
        return b.eof or b.err
      end, 60), "bulk echo did not finish")
      assert.is_nil(b.err)
      assert.equal(true, wrote)
      assert.equal(#big, b.n)
      assert.is_true(b.received() == big, "echoed data differs")

      -- a connection still open when the server stops
      local c = connect(port)
      clients[3] = c
      c.start()
      c.tcp:write("x")
      assert(H.wait_until(function()
        return c.n == 1
      end, 10))

      local at = run({ "attach", "echo-spec" }, { stdin = "return stats().echo\n" })
      assert.equal(0, at.code, output(at))
      local total = 6 + #big + 1
      assert.matches("accepted = 3", at.stdout)
      assert.matches("open = 1", at.stdout)
      assert.matches("bytes = " .. total, at.stdout)
      assert.matches("port = " .. port, at.stdout)

      p:kill("sigterm")
      p:wait(20)
      assert.equal(0, p.code, output(p))
      assert(H.wait_until(function()
        return c.eof
      end, 10), "open connection not closed at shutdown")
      assert.matches("INFO  echo: connection 1 from 127%.0%.0%.1:%d+\n", p.stderr)
      assert.matches("connection 1 from 127%.0%.0%.1:%d+ closed %(end of input%), 6 bytes echoed",
        p.stderr)
      assert.matches("connection 2 from [%d.:]+ closed %(end of input%), " .. #big, p.stderr)
      assert.matches("connection 3 from [%d.:]+ closed %(server shutting down%)", p.stderr)
      assert.matches("stopped after 3 connection%(s%), " .. total .. " bytes echoed", p.stderr)
    end)

    it("listens on the port given as argument, and says so when it is taken", function()
      local busy = uv.new_tcp()
      finally(function()
        if not busy:is_closing() then
          busy:close()
        end
      end)
      assert(busy:bind("127.0.0.1", 0))
      assert(busy:listen(1, function() end))
      local port = busy:getsockname().port
      local p = run({ "examples/echo_server.lua", tostring(port) })
      assert.equal(1, p.code, output(p))
      assert.matches("cannot listen on 127%.0%.0%.1:" .. port .. ": EADDRINUSE", p.stderr)

      -- the same port once it is free
      local closed = false
      busy:close(function()
        closed = true
      end)
      assert(H.wait_until(function()
        return closed
      end, 10))
      local s, sport = start_server("echo-port", { tostring(port) })
      assert.equal(port, sport)
      local c = connect(port)
      c.start()
      c.tcp:write("ping")
      assert(H.wait_until(function()
        return c.n == 4
      end, 10))
      assert.equal("ping", c.received())
      c.close()
      s:kill("sigint")
      s:wait(20)
      assert.equal(0, s.code, output(s))
    end)

    it("rejects a bad port with usage and status 2", function()
      local p = run({ "examples/echo_server.lua", "70000" })
      assert.equal(2, p.code, output(p))
      assert.matches("usage: tunnel examples/echo_server.lua", p.stderr)
    end)
  end)

  describe("keys.lua", function()
    local keys = require "tunnel.keys"

    local function parse(stdout)
      local id = stdout:match("^EndpointId: (%S+) %((%a+) identity%)\n")
      local tokens = {}
      for n, t in stdout:gmatch("token (%d+): (%S+)\n") do
        tokens[tonumber(n)] = t
      end
      return id, tokens, stdout:match("mistyped token rejected: ([^\n]*)\n")
    end

    it("mints a new identity and valid, distinct tokens", function()
      local p = run({ "examples/keys.lua", "4" })
      assert.equal(0, p.code, output(p))
      local id, tokens, rejected = parse(p.stdout)
      assert.matches("^[a-z2-7]+$", id)
      assert.equal(52, #id)
      assert.is_string(keys.parse_endpoint_id(id))
      assert.equal(4, #tokens)
      local seen = {}
      for _, t in ipairs(tokens) do
        assert.equal(18, #t)
        assert.is_true(keys.validate_token(t))
        assert.is_nil(seen[t])
        seen[t] = true
      end
      assert.is_string(rejected)
      assert.not_equal("no!", rejected)
      assert.matches("checksum", rejected)
      -- a second run is a different identity
      local id2 = parse(run({ "examples/keys.lua", "1" }).stdout)
      assert.is_string(id2)
      assert.not_equal(id, id2)
    end)

    it("loads an identity from a secret file without printing the secret", function()
      local file = dir .. "/server.key"
      local g = run({ "generate-server-key", "--output", file })
      assert.equal(0, g.code, output(g))
      local shown = run({ "show-server-id", "--secret-file", file })
      assert.equal(0, shown.code, output(shown))
      local p = run({ "examples/keys.lua", "1", file })
      assert.equal(0, p.code, output(p))
      local id, tokens = parse(p.stdout)
      assert.equal(shown.stdout:match("(%S+)%s*$"), id)
      assert.matches("%(loaded identity%)", p.stdout)
      assert.equal(1, #tokens)
      local secret_text = H.read_file(file):match("%S+")
      assert.is_nil(p.stdout:find(secret_text, 1, true))
      assert.is_nil(p.stderr:find(secret_text, 1, true))
    end)

    it("reports an unreadable secret file with status 1", function()
      local p = run({ "examples/keys.lua", "1", dir .. "/missing.key" })
      assert.equal(1, p.code, output(p))
      assert.matches("missing%.key", p.stderr)
      assert.equal("", p.stdout)
    end)
  end)

  describe("config_check.lua", function()
    local keys = require "tunnel.keys"

    it("prints a valid file normalised, with secrets hidden", function()
      local token = keys.generate_token()
      local file = H.write_file(dir .. "/server.toml", ([[
role = "server"

[iroh]
secret_file = "keys/server.key"   # relative to this file
auth_tokens = ["%s"]
max_sessions = 5
allowed_sources.tcp = ["127.0.0.1/32"]
]]):format(token))
      local p = run({ "examples/config_check.lua", file })
      assert.equal(0, p.code, output(p))
      local out = lines(p.stdout)
      assert.equal("# " .. file .. " is valid (role server, mode iroh)", out[1])
      local set = {}
      for i = 2, #out do
        local k, v = out[i]:match("^(%S+) = (.*)$")
        assert(k, "not a key = value line: " .. out[i])
        set[k] = v
      end
      assert.equal('"server"', set.role)
      assert.equal('"iroh"', set.mode) -- a default, filled in
      assert.equal("5", set["iroh.max_sessions"])
      assert.equal('["127.0.0.1/32"]', set["iroh.allowed_sources.tcp"])
      assert.equal("[]", set["iroh.allowed_sources.udp"])
      assert.equal('"' .. dir .. '/keys/server.key"', set["iroh.secret_file"])
      assert.equal("<hidden>", set["iroh.auth_tokens"])
      assert.is_nil(p.stdout:find(token, 1, true))
      -- sorted, so the output is stable
      local sorted = { unpack(out, 2) }
      table.sort(sorted)
      assert.same(sorted, { unpack(out, 2) })
    end)

    it("lists every problem with file:line:col and exits 1", function()
      local file = H.write_file(dir .. "/bad.toml", [[
role = "server"
[iroh]
max_sesions = 5
relay_only = "yes"
]])
      local p = run({ "examples/config_check.lua", file })
      assert.equal(1, p.code, output(p))
      assert.equal("", p.stdout)
      assert.matches(file:gsub("%p", "%%%0") .. ":3:1: unknown key 'max_sesions'.*max_sessions",
        p.stderr)
      assert.matches(file:gsub("%p", "%%%0") .. ":4:1: 'relay_only' must be true or false",
        p.stderr)
      assert.matches("2 problem%(s%) found", p.stderr)
    end)

    it("reports TOML syntax errors and missing files", function()
      local file = H.write_file(dir .. "/syntax.toml", 'role = "client"\n[iroh\n')
      local p = run({ "examples/config_check.lua", file })
      assert.equal(1, p.code, output(p))
      assert.matches("syntax%.toml:2:%d+: ", p.stderr)
      p = run({ "examples/config_check.lua", dir .. "/none.toml" })
      assert.equal(1, p.code, output(p))
      assert.matches("none%.toml: cannot read", p.stderr)
    end)

    it("checks that a run has what it needs with --complete", function()
      local file = H.write_file(dir .. "/client.toml", ([[
role = "client"
[iroh]
server_node_id = "%s"
auth_token = "%s"
]]):format(keys.endpoint_id(keys.generate_secret()), keys.generate_token()))
      local p = run({ "examples/config_check.lua", file })
      assert.equal(0, p.code, output(p))
      assert.matches("iroh%.auth_token = <hidden>", p.stdout)
      p = run({ "examples/config_check.lua", file, "--complete" })
      assert.equal(1, p.code, output(p))
      assert.matches("client%.toml", p.stderr)
      assert.matches("forward", p.stderr)
    end)

    it("prints usage and exits 2 without a file", function()
      local p = run({ "examples/config_check.lua" })
      assert.equal(2, p.code, output(p))
      assert.matches("usage: tunnel examples/config_check.lua", p.stderr)
    end)
  end)

  it("are listed in examples/README.md and start with a header saying how to run them",
    function()
      local readme = assert(H.read_file("examples/README.md"))
      for _, name in ipairs({ "hello.lua", "echo_server.lua", "keys.lua", "config_check.lua" }) do
        local quoted = name:gsub("%p", "%%%0")
        assert.matches("%[" .. quoted .. "%]%(" .. quoted .. "%)", readme)
        local src = assert(H.read_file("examples/" .. name))
        assert.matches("^%-%- " .. quoted .. ": ", src)
        assert.matches("\n%-%-%s+tunnel [^\n]*examples/" .. quoted, src)
      end
    end)
end)
