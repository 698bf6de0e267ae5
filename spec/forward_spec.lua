-- Port forwarding end to end: a real `tunnel server` and `tunnel client` on 127.0.0.1, with
-- echo services and checkers from spec/tools/netcheck.py (python3). Deadlines only bound a
-- test; no result depends on how long something took.
local H = require "helper"
local uv = require "luv"

local MODE_700 = tonumber("700", 8)
local MiB = 1024 * 1024

-- One test's world: its temp dir, server key and token, and every process it started.
local T
local P = H.bind(function() return T.procs end)
-- tool(args, opts): start netcheck; service(args): a netcheck service and its port.
local track, logs, tool, service = P.track, P.logs, P.netcheck, P.service

local count = H.count

--- Run a netcheck check to completion (bounded by `timeout` seconds).
local function check(args, timeout)
  return tool(args):wait(timeout or 60)
end

local free_port = H.free_port

--- Start `tunnel server` on an ephemeral port. o: tcp, udp (lists of CIDRs; default
-- 127.0.0.0/8 each, {} for none), max_sessions, name, wrap (command prefix), env (more
-- environment variables).
local function start_server(o)
  o = o or {}
  local cmd = o.wrap and { unpack(o.wrap) } or {}
  cmd[#cmd + 1] = H.BIN
  local function add(...)
    for _, v in ipairs({ ... }) do
      cmd[#cmd + 1] = tostring(v)
    end
  end
  if o.name then
    add("--name", o.name)
  end
  add("server", "--listen", "127.0.0.1:" .. (o.port or 0), "--secret-file", T.key,
    "--auth-tokens", T.token)
  for _, c in ipairs(o.tcp or { "127.0.0.0/8" }) do
    add("--allowed-tcp", c)
  end
  for _, c in ipairs(o.udp or { "127.0.0.0/8" }) do
    add("--allowed-udp", c)
  end
  if o.max_sessions then
    add("--max-sessions", o.max_sessions)
  end
  local env = T.env
  if o.env then
    env = {}
    for k, v in pairs(T.env) do
      env[k] = v
    end
    for k, v in pairs(o.env) do
      env[k] = v
    end
  end
  local p = track(H.spawn(cmd, { env = env }), "tunnel server")
  H.wait_until(function()
    return p.stdout:match("Listening: [^\n]*:%d+\n") or p.done
  end, 30)
  local port = tonumber(p.stdout:match("Listening: [^\n]*:(%d+)\n"))
  assert(port, "tunnel server did not start:" .. logs())
  assert.equal(T.id, p.stdout:match("EndpointId: (%S+)\n"))
  T.server, T.port = p, port
  return p
end

--- Start `tunnel client` with the test's server, token and `args` (source/target or -c ...).
local function start_client(args, o)
  o = o or {}
  local cmd = { "client" }
  if not o.bare then
    cmd = { "client", "--server-node-id", o.id or T.id, "--server-addr",
      "127.0.0.1:" .. T.port, "--auth-token", o.token or T.token }
  end
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = tostring(a)
  end
  return track(H.start(cmd, { env = T.env }), "tunnel client")
end

--- Wait until the client says it forwards `n` addresses.
local function wait_ready(c, n)
  H.wait_until(function()
    return count(c.stderr, "forwarding %a+ ") >= (n or 1) or c.done
  end, 30)
  assert(not c.done and count(c.stderr, "forwarding %a+ ") >= (n or 1),
    "the client did not get ready:" .. logs())
  assert.matches("connected to " .. T.id, c.stderr, 1, true)
end

--- A client forwarding one `source` to a free local port; returns the client and the port.
local function forward(source, o)
  local proto = source:match("^(%a+)://")
  local lport = free_port(proto)
  local args = { "--source", source, "--target", "127.0.0.1:" .. lport }
  for _, a in ipairs(o and o.args or {}) do
    args[#args + 1] = a
  end
  local c = start_client(args, o)
  wait_ready(c)
  assert.matches("forwarding " .. proto .. " 127.0.0.1:" .. lport .. " -> " .. source, c.stderr,
    1, true)
  return c, lport
end

local function new_key(path)
  local p = H.tunnel({ "generate-server-key", "--output", path })
  assert.equal(0, p.code, p.stderr)
  return assert(p.stdout:match("EndpointId: (%w+)"), p.stdout)
end

local function new_token()
  local p = H.tunnel({ "generate-token" })
  assert.equal(0, p.code, p.stderr)
  return assert(p.stdout:match("^(%S+)\n$"), p.stdout)
end

--- The reason the client logged for refusing `source`, and the one the server logged.
local function refusal(c, source)
  local esc = source:gsub("%p", "%%%0")
  return c.stderr:match("WARN  fwd: " .. esc .. " refused by the server: ([^\n]+)"),
    T.server.stderr:match(esc .. " refused: ([^\n]+)")
end

--- refusal(c, source) once the client logged one, or after 10 s.
local function wait_refusal(c, source)
  H.wait_until(function()
    return refusal(c, source) or c.done
  end, 10)
  return refusal(c, source)
end

--- How many times netcheck service `p` printed `word` ("ACCEPT "), once it printed it `n`
-- times (default 1), or after 10 s.
local function wait_count(p, word, n)
  H.wait_until(function()
    return count(p.stdout, word) >= (n or 1)
  end, 10)
  return count(p.stdout, word)
end

--- How a test can run `tunnel server` where "localhost" resolves to both 127.0.0.1 and ::1:
-- {} when it already does here, else a command prefix that gives the server a private
-- /etc/hosts (unshare -m, needs root), or nil and why neither works.
local can_unshare
local function dual_localhost()
  local function both(text)
    return text:find("127.0.0.1", 1, true) and text:find("::1", 1, true)
  end
  local found = {}
  for _, r in ipairs(uv.getaddrinfo("localhost", nil, { socktype = "stream" }) or {}) do
    found[#found + 1] = r.addr
  end
  if both(table.concat(found, " ")) then
    return {}
  end
  local hosts = H.write_file(T.dir .. "/hosts", "127.0.0.1 localhost\n::1 localhost\n")
  local wrap = { "unshare", "-m", "--", "sh", "-c",
    'mount --bind "$1" /etc/hosts && shift && exec "$@"', "sh", hosts }
  if can_unshare == nil then
    local cmd = { unpack(wrap) }
    cmd[#cmd + 1] = "getent"
    cmd[#cmd + 1] = "ahosts"
    cmd[#cmd + 1] = "localhost"
    local ok, p = pcall(H.spawn, cmd)
    can_unshare = ok and both(p:wait(10).stdout) and true or false
  end
  if not can_unshare then
    return nil, "localhost resolves to " .. table.concat(found, ", ") .. " only here (see " ..
      "/etc/hosts), and a private /etc/hosts for the server (unshare -m) is not available"
  end
  return wrap
end

describe("tunnel port forwarding", function()
  before_each(function()
    local dir = H.tmpdir()
    local run = dir .. "/run"
    assert(uv.fs_mkdir(run, MODE_700))
    T = { dir = dir, procs = {}, env = { XDG_RUNTIME_DIR = run } }
    T.key = dir .. "/server.key"
    T.id = new_key(T.key)
    T.token = new_token()
  end)

  after_each(function()
    H.kill_all(T.procs)
    H.cleanup()
  end)

  describe("TCP", function()
    it("carries 200 MiB both ways intact", function()
      local echo, eport = service({ "tcp-echo", "--port", 0 })
      start_server()
      local _, lport = forward("tcp://127.0.0.1:" .. eport)
      local n = 200 * MiB
      local p = check({ "tcp-bulk", "--port", lport, "--bytes", n, "--timeout", 290 }, 300)
      local sent, recv, bytes = p.stdout:match("SENT (%x+) RECV (%x+) BYTES (%d+)")
      assert.is_not_nil(sent, "no result from tcp-bulk:" .. logs())
      assert.equal(n, tonumber(bytes), logs())
      assert.equal(sent, recv, logs())
      assert.equal(0, p.code, logs())
      assert.equal(1, count(echo.stdout, "ACCEPT "))
    end)

    it("serves 200 connections open at the same time", function()
      local echo, eport = service({ "tcp-echo", "--port", 0 })
      -- --max-sessions limits forwarded connections at once; the default (100) is too few.
      start_server({ max_sessions = 1000 })
      local _, lport = forward("tcp://127.0.0.1:" .. eport)
      local p = check({ "tcp-many", "--port", lport, "--count", 200, "--bytes", 10000 }, 240)
      assert.equal("OK 200\n", p.stdout, logs())
      assert.equal(0, p.code)
      assert.equal(200, count(echo.stdout, "ACCEPT "))
    end)

    it("raises its open-file limit: 300 connections under a soft limit of 128", function()
      local hard = H.spawn({ "/bin/sh", "-c", "ulimit -Hn" }):wait(10).stdout:match("%S+")
      if hard ~= "unlimited" and (tonumber(hard) or 0) < 1024 then
        print("SKIP open-file limit: the hard limit is " .. tostring(hard))
        return
      end
      -- Both processes start with 128 open files allowed; 300 connections need 300 on each.
      local wrap = { "/bin/sh", "-c", 'ulimit -Sn 128 && exec "$@"', "sh" }
      local echo, eport = service({ "tcp-echo", "--port", 0 })
      start_server({ max_sessions = 1000, wrap = wrap })
      local lport = free_port("tcp")
      local cmd = H.append({ unpack(wrap) }, { H.BIN, "client", "--server-node-id", T.id,
        "--server-addr", "127.0.0.1:" .. T.port, "--auth-token", T.token, "--source",
        "tcp://127.0.0.1:" .. eport, "--target", "127.0.0.1:" .. lport })
      local c = track(H.spawn(cmd, { env = T.env }), "tunnel client")
      wait_ready(c)
      local p = check({ "tcp-many", "--port", lport, "--count", 300, "--bytes", 1000 }, 240)
      assert.equal("OK 300\n", p.stdout, logs())
      assert.equal(300, count(echo.stdout, "ACCEPT "))
    end)

    it("keeps the other direction open after a half-close", function()
      local echo, eport = service({ "tcp-echo", "--port", 0, "--reply-after-eof",
        "answer sent after your EOF" })
      start_server()
      local _, lport = forward("tcp://127.0.0.1:" .. eport)
      local p = check({ "tcp-halfclose", "--port", lport, "--send", "hello world" })
      assert.equal("RECV answer sent after your EOF\n", p.stdout, logs())
      assert.equal(0, p.code)
      -- the service saw every byte, then the EOF, before it answered
      assert.matches("EOF 11\n", echo.stdout)
    end)

    it("carries a reset from the service to the application as a reset", function()
      local _, eport = service({ "tcp-rst", "--port", 0 })
      start_server()
      local _, lport = forward("tcp://127.0.0.1:" .. eport)
      local p = check({ "tcp-reset-probe", "--port", lport })
      assert.equal("RESET\n", p.stdout, logs())
    end)

    it("carries a reset from the application to the service as a reset", function()
      local echo, eport = service({ "tcp-echo", "--port", 0 })
      start_server()
      local _, lport = forward("tcp://127.0.0.1:" .. eport)
      local p = check({ "tcp-reset-probe", "--port", lport, "--abort" })
      assert.equal("ECHO\nABORTED\n", p.stdout, logs())
      assert.equal(1, wait_count(echo, "RESET"), "the service saw no reset:" .. logs())
    end)
  end)

  describe("UDP", function()
    it("forgets a flow after udp_idle_timeout; the sender's next datagram starts a new one",
      function()
        local echo, eport = service({ "udp-echo", "--port", 0 })
        start_server()
        local conf = H.write_file(T.dir .. "/client.toml", 'role = "client"\n' ..
          "[iroh.transport]\nudp_idle_timeout = 1\n")
        local lport = free_port("udp")
        local c = start_client({ "-c", conf, "--source", "udp://127.0.0.1:" .. eport,
          "--target", "127.0.0.1:" .. lport })
        wait_ready(c)
        -- One local socket: a datagram, silence well past the timeout, another datagram. The
        -- echo service sees a new peer (the server's socket of a new flow) for the second.
        local p = check({ "udp-pause", "--port", lport, "--pause", 4 })
        assert.equal("OK\n", p.stdout, logs())
        assert.equal(2, wait_count(echo, "PEER ", 2), logs())
        -- A new sender (a new flow) sending twice without a pause: one new peer, not two.
        assert.equal("OK\n", check({ "udp-pause", "--port", lport, "--pause", 0 }).stdout)
        assert.equal(3, wait_count(echo, "PEER ", 3), logs())
      end)

    it("sends each local sender only its own replies", function()
      local echo, eport = service({ "udp-echo", "--port", 0 })
      start_server()
      local _, lport = forward("udp://127.0.0.1:" .. eport)
      local p = check({ "udp-senders", "--port", lport, "--senders", 3, "--count", 50 }, 240)
      assert.matches("^OK senders=3 count=50", p.stdout, nil, logs())
      assert.equal(0, p.code)
      assert.is_true(count(echo.stdout, "PEER ") >= 1)
    end)

    it("delivers a 60 KB datagram intact (too big for a DATAGRAM frame)", function()
      local _, eport = service({ "udp-echo", "--port", 0 })
      start_server()
      local _, lport = forward("udp://127.0.0.1:" .. eport)
      local p = check({ "udp-big", "--port", lport, "--size", 60000 }, 60)
      assert.equal("OK 60000\n", p.stdout, logs())
      assert.equal(0, p.code)
    end)
  end)

  describe("authentication", function()
    it("rejects a wrong token with a clear message, exit 1", function()
      start_server()
      local wrong = new_token()
      local c = start_client({ "--source", "tcp://127.0.0.1:9", "--target",
        "127.0.0.1:" .. free_port() }, { token = wrong })
      c:wait(60)
      assert.is_nil(c.timed_out, "the client kept running:" .. logs())
      assert.equal(1, c.code, logs())
      assert.matches("tunnel: authentication failed: ", c.stderr, 1, true)
      -- tokens are never logged, not even wrong ones
      assert.is_nil(c.stderr:find(wrong, 1, true))
      assert.is_nil(T.server.stderr:find(wrong, 1, true))
      assert.is_nil(T.server.stderr:find(T.token, 1, true))
    end)

    -- Runs clients with `tokens` (all at once) and returns what each wrote on stderr.
    local function attempts(tokens)
      local cs = {}
      for i, t in ipairs(tokens) do
        cs[i] = start_client({ "--source", "tcp://127.0.0.1:9", "--target",
          "127.0.0.1:" .. free_port() }, { token = t })
      end
      local errs = {}
      for i, c in ipairs(cs) do
        c:wait(60)
        assert.is_nil(c.timed_out, "a client kept running:" .. logs())
        assert.equal(1, c.code, logs())
        errs[i] = c.stderr
      end
      return errs
    end

    it("limits failed attempts per token: the sixth try of a wrong token is refused unseen",
      function()
        start_server()
        local wrong = new_token()
        for _, e in ipairs(attempts({ wrong, wrong, wrong, wrong, wrong })) do
          assert.matches("invalid authentication token", e, 1, true)
        end
        local e = attempts({ wrong })[1]
        assert.matches("too many failed attempts; wait a minute and check your token", e, 1, true)
        -- Another token is still checked.
        assert.matches("invalid authentication token", attempts({ new_token() })[1], 1, true)
      end)

    it("limits failed attempts in total: after 30 in a minute even the right token waits",
      function()
        start_server()
        local wrong = {}
        for i = 1, 30 do
          wrong[i] = new_token()
        end
        for _, e in ipairs(attempts(wrong)) do
          assert.matches("invalid authentication token", e, 1, true)
        end
        local e = attempts({ T.token })[1]
        assert.matches("too many failed attempts", e, 1, true)
        assert.matches("too many failed attempts, refusing", T.server.stderr, 1, true)
      end)

    it("tells a tokens file given as a token, and an empty tokens file", function()
      local key = T.dir .. "/s.key"
      new_key(key)
      local f = H.write_file(T.dir .. "/tokens", "", tonumber("600", 8))
      local p = H.tunnel({ "server", "--secret-file", key, "--auth-tokens", f, "--allowed-tcp",
        "127.0.0.1/32", "--listen", "127.0.0.1:0" }, { env = T.env })
      assert.equal(1, p.code)
      assert.equal(("tunnel: --auth-tokens takes tokens, and '%s' is a file: give " ..
        "--auth-tokens-file %s\n"):format(f, f), p.stderr)
      p = H.tunnel({ "server", "--secret-file", key, "--auth-tokens-file", f, "--allowed-tcp",
        "127.0.0.1/32", "--listen", "127.0.0.1:0" }, { env = T.env })
      assert.equal(1, p.code)
      assert.equal(("tunnel: the tokens file %s holds no token: add one with `tunnel " ..
        "generate-token >> %s`\n"):format(f, f), p.stderr)
    end)

    it("says so at once when nothing listens at the server address", function()
      start_server()
      local port = free_port("udp")
      local c = H.start({ "client", "--server-node-id", T.id, "--server-addr",
        "127.0.0.1:" .. port, "--auth-token", T.token, "--source", "tcp://127.0.0.1:9",
        "--target", "127.0.0.1:" .. free_port() }, { env = T.env })
      track(c, "tunnel client")
      c:wait(60)
      assert.is_nil(c.timed_out, "the client kept running:" .. logs())
      assert.equal(1, c.code, logs())
      -- Not the handshake timeout's "no answer": the host's port unreachable, reported.
      assert.matches(("tunnel: cannot connect to 127.0.0.1:%d: nothing is listening on that " ..
        "port"):format(port), c.stderr, 1, true)
    end)

    it("tries the next server address when one does not answer, keeping local connections",
      function()
        local _, eport = service({ "tcp-echo", "--port", 0 })
        start_server()
        local silent = uv.new_udp()
        assert(silent:bind("127.0.0.1", 0))
        local sport = silent:getsockname().port
        local dead = free_port("udp")
        local conf = H.write_file(T.dir .. "/client.toml", table.concat({
          'role = "client"',
          "[iroh]",
          ('server_addrs = ["127.0.0.1:%d", "127.0.0.1:%d", "127.0.0.1:%d"]'):format(dead, sport,
            T.port),
          "[iroh.transport]",
          "connect_timeout = 2",
        }, "\n") .. "\n")
        local lport = free_port()
        local c = start_client({ "-c", conf, "-n", T.id, "--auth-token", T.token, "--source",
          "tcp://127.0.0.1:" .. eport, "--target", "127.0.0.1:" .. lport }, { bare = true })
        -- A local connection while the second (silent) address is tried: it waits, and goes
        -- through once the third one answers.
        assert(H.wait_until(function()
          return c.stderr:find("trying 127.0.0.1:" .. sport, 1, true) or c.done
        end, 30), logs())
        local p = check({ "tcp-bulk", "--port", lport, "--bytes", MiB })
        silent:close()
        assert.matches("BYTES " .. MiB .. "\n", p.stdout, 1, true)
        assert.equal(0, p.code, logs())
        assert.matches(("cannot connect to 127.0.0.1:%d: nothing is listening on that port"):
          format(dead), c.stderr, 1, true)
        assert.matches(("cannot connect to 127.0.0.1:%d: handshake timed out after 2 s: no " ..
          "answer from the peer; trying 127.0.0.1:%d"):format(sport, T.port), c.stderr, 1, true)
        assert.matches("connected to " .. T.id .. " at 127.0.0.1:" .. T.port, c.stderr, 1, true)
      end)

    it("sends from bind_addr", function()
      start_server()
      local bport = free_port("udp")
      local conf = H.write_file(T.dir .. "/client.toml",
        ('role = "client"\n[iroh]\nbind_addr = "127.0.0.1:%d"\n'):format(bport))
      local c, lport = forward("tcp://127.0.0.1:9", { args = { "-c", conf } })
      assert(lport and c)
      assert.matches(("session 1 from 127.0.0.1:%d "):format(bport), T.server.stderr, 1, true)
      local bad = H.write_file(T.dir .. "/bad.toml", 'role = "client"\n[iroh]\n' ..
        'bind_addr = "127.0.0.1:0"\nserver_addrs = ["[::1]:9"]\n')
      local p = H.tunnel({ "client", "-c", bad, "-n", T.id, "--auth-token", T.token, "-s",
        "tcp://127.0.0.1:9", "-t", "127.0.0.1:" .. free_port() }, { env = T.env })
      assert.equal(1, p.code)
      assert.equal("tunnel: bind: 127.0.0.1:0 is IPv4 but the server address [::1]:9 is IPv6\n",
        p.stderr)
    end)

    it("gives up after [transport] connect_timeout when the server address is silent", function()
      -- A bound socket that never reads: datagrams vanish, no port unreachable comes back.
      local silent = uv.new_udp()
      assert(silent:bind("127.0.0.1", 0))
      local port = silent:getsockname().port
      local conf = H.write_file(T.dir .. "/client.toml",
        'role = "client"\n[iroh.transport]\nconnect_timeout = 2\n')
      local id = new_key(T.dir .. "/k.key")
      local c = H.start({ "client", "-c", conf, "--server-node-id", id,
        "--server-addr", "127.0.0.1:" .. port, "--auth-token", new_token(),
        "--source", "tcp://127.0.0.1:9", "--target", "127.0.0.1:" .. free_port() },
        { env = T.env })
      track(c, "tunnel client")
      c:wait(60)
      silent:close()
      assert.is_nil(c.timed_out, "the client kept running:" .. logs())
      assert.equal(1, c.code, logs())
      -- Said at once, so that the wait is not silent.
      assert.matches(("INFO  client: connecting to %s at 127.0.0.1:%d\n"):format(id, port),
        c.stderr, 1, true)
      assert.matches(("tunnel: cannot connect to 127.0.0.1:%d: handshake timed out after 2 s: " ..
        "no answer from the peer"):format(port), c.stderr, 1, true)
    end)

    it("refuses a server whose EndpointId is not the expected one", function()
      start_server()
      local other = new_key(T.dir .. "/other.key")
      local c = start_client({ "--source", "tcp://127.0.0.1:9", "--target",
        "127.0.0.1:" .. free_port() }, { id = other })
      c:wait(60)
      assert.is_nil(c.timed_out, "the client kept running:" .. logs())
      assert.equal(1, c.code, logs())
      assert.matches(("tunnel: cannot connect to 127.0.0.1:%d: server identity mismatch: " ..
        "expected %s, got %s"):format(T.port, other, T.id), c.stderr, 1, true)
    end)
  end)

  describe("allow-lists", function()
    it("refuses a source outside the allowed networks without connecting to it", function()
      local echo, eport = service({ "tcp-echo", "--port", 0 })
      start_server({ tcp = { "10.0.0.0/8" }, udp = { "10.0.0.0/8" } })
      local source = "tcp://127.0.0.1:" .. eport
      local c, lport = forward(source)
      local p = check({ "tcp-hold", "--port", lport, "--count", 1 })
      assert.equal("OPEN 0 CLOSED 1 PENDING 0\n", p.stdout, logs())
      local client_reason, server_reason = wait_refusal(c, source)
      assert.is_not_nil(client_reason, "the client did not log the refusal:" .. logs())
      assert.equal(server_reason, client_reason)
      assert.matches("allowed", client_reason)
      assert.is_false(c.done, "a refused source must not end the client")
      -- A direct connection as a marker: had the server connected, its ACCEPT would come first.
      assert.equal("OPEN 1 CLOSED 0 PENDING 0\n",
        check({ "tcp-hold", "--port", eport, "--count", 1 }).stdout)
      assert.equal(1, wait_count(echo, "ACCEPT "), "the server connected to the source")
    end)

    it("denies UDP entirely when its allow-list is empty", function()
      local echo, eport = service({ "udp-echo", "--port", 0 })
      start_server({ tcp = { "127.0.0.0/8" }, udp = {} })
      local source = "udp://127.0.0.1:" .. eport
      local c, lport = forward(source)
      local p = check({ "udp-senders", "--port", lport, "--senders", 1, "--count", 1,
        "--retries", 2, "--wait", 1 })
      assert.matches("^FAIL", p.stdout)
      local client_reason, server_reason = wait_refusal(c, source)
      assert.is_not_nil(client_reason, "the client did not log the refusal:" .. logs())
      assert.equal(server_reason, client_reason)
      assert.equal(0, count(echo.stdout, "PEER "), "a datagram reached the source")
    end)

    describe("with a name that resolves to allowed and disallowed addresses", function()
      local function server_for_localhost(tcp)
        local wrap, why = dual_localhost()
        if not wrap then
          pending(why)
        end
        return start_server({ tcp = tcp, wrap = #wrap > 0 and wrap or nil })
      end

      -- The service listens only on the disallowed address; the allowed one has nothing.
      for _, case in ipairs({
        { listen = "::1", allow = "127.0.0.0/8" },
        { listen = "127.0.0.1", allow = "::1/128" },
      }) do
        it(("never reaches %s when only %s is allowed"):format(case.listen, case.allow),
          function()
            local echo, eport = service({ "tcp-echo", "--host", case.listen, "--port", 0 })
            server_for_localhost({ case.allow })
            local source = "tcp://localhost:" .. eport
            local c, lport = forward(source)
            local p = check({ "tcp-hold", "--port", lport, "--count", 1 })
            assert.equal("OPEN 0 CLOSED 1 PENDING 0\n", p.stdout, logs())
            assert.is_not_nil(wait_refusal(c, source), "the client did not log the refusal:" ..
              logs())
            assert.equal("OPEN 1 CLOSED 0 PENDING 0\n",
              check({ "tcp-hold", "--host", case.listen, "--port", eport, "--count", 1 }).stdout)
            assert.equal(1, wait_count(echo, "ACCEPT "),
              "the server connected to a disallowed address")
          end)
      end

      it("reaches 127.0.0.1 when 127.0.0.0/8 is allowed", function()
        local echo, eport = service({ "tcp-echo", "--host", "127.0.0.1", "--port", 0 })
        server_for_localhost({ "127.0.0.0/8" })
        local _, lport = forward("tcp://localhost:" .. eport)
        local p = check({ "tcp-hold", "--port", lport, "--count", 1 })
        assert.equal("OPEN 1 CLOSED 0 PENDING 0\n", p.stdout, logs())
        assert.equal(1, count(echo.stdout, "ACCEPT "))
      end)

      -- Both allowed, the service on one of them: the address that refuses is passed over.
      for _, host in ipairs({ "127.0.0.1", "::1" }) do
        it(("falls back to %s when the other address refuses, both allowed"):format(host),
          function()
            local echo, eport = service({ "tcp-echo", "--host", host, "--port", 0 })
            server_for_localhost({ "127.0.0.0/8", "::1/128" })
            local _, lport = forward("tcp://localhost:" .. eport)
            local p = check({ "tcp-hold", "--port", lport, "--count", 2 })
            assert.equal("OPEN 2 CLOSED 0 PENDING 0\n", p.stdout, logs())
            assert.equal(2, count(echo.stdout, "ACCEPT "), logs())
          end)
      end

      -- Both allowed, one address silent (its SYNs are dropped): the next gets its try after
      -- Happy Eyeballs' delay instead of waiting for the silent one to time out.
      for _, case in ipairs({ { yes = "127.0.0.1", no = "::1" },
        { yes = "::1", no = "127.0.0.1" } }) do
        it(("reaches %s while %s does not answer, both allowed"):format(case.yes, case.no),
          function()
            local echo, eport = service({ "tcp-echo", "--host", case.yes, "--port", 0 })
            service({ "tcp-blackhole", "--host", case.no, "--port", eport })
            server_for_localhost({ "127.0.0.0/8", "::1/128" })
            local _, lport = forward("tcp://localhost:" .. eport)
            local p = check({ "tcp-hold", "--port", lport, "--count", 2, "--wait", 60 })
            assert.equal("OPEN 2 CLOSED 0 PENDING 0\n", p.stdout, logs())
            assert.equal(2, count(echo.stdout, "ACCEPT "), logs())
          end)
      end

      -- Both addresses serve the same port: the connection must land on the allowed one only.
      for _, case in ipairs({
        { allow = "::1/128", yes = "::1", no = "127.0.0.1" },
        { allow = "127.0.0.0/8", yes = "127.0.0.1", no = "::1" },
      }) do
        it(("with services on both, reaches only %s when %s is allowed"):format(case.yes,
          case.allow), function()
          local first, eport = service({ "tcp-echo", "--host", case.yes, "--port", 0 })
          local second = service({ "tcp-echo", "--host", case.no, "--port", eport })
          server_for_localhost({ case.allow })
          local _, lport = forward("tcp://localhost:" .. eport)
          local p = check({ "tcp-hold", "--port", lport, "--count", 2 })
          assert.equal("OPEN 2 CLOSED 0 PENDING 0\n", p.stdout, logs())
          assert.equal(2, count(first.stdout, "ACCEPT "), logs())
          -- marker on the other service, as above
          check({ "tcp-hold", "--host", case.no, "--port", eport, "--count", 1 })
          assert.equal(1, wait_count(second, "ACCEPT "),
            "the server connected to a disallowed address")
        end)
      end
    end)
  end)

  it("enforces --max-sessions and frees a slot when a connection ends", function()
    local echo, eport = service({ "tcp-echo", "--port", 0 })
    start_server({ max_sessions = 2 })
    local c, lport = forward("tcp://127.0.0.1:" .. eport)
    local hold = tool({ "tcp-hold", "--port", lport, "--count", 3 }, { stdin = true })
    assert.is_true(hold:wait_output("OPEN %d+ CLOSED %d+ PENDING %d+\n", 60, "stdout"), logs())
    assert.equal("OPEN 2 CLOSED 1 PENDING 0\n", hold.stdout, logs())
    assert.matches("session limit reached", T.server.stderr, 1, true)
    assert.matches("refused by the server: session limit reached", c.stderr, 1, true)
    assert.equal(2, count(echo.stdout, "ACCEPT "))
    hold:close_stdin()
    hold:wait(30)
    assert.equal(0, hold.code)
    -- The slots come back once the held connections are closed (the server learns of it
    -- asynchronously, so ask again until it does or the deadline ends the test).
    local last
    H.wait_until(function()
      last = check({ "tcp-hold", "--port", lport, "--count", 2 }).stdout
      return last == "OPEN 2 CLOSED 0 PENDING 0\n"
    end, 30)
    assert.equal("OPEN 2 CLOSED 0 PENDING 0\n", last, logs())
  end)

  describe("when the server goes away", function()
    -- A server, and a client with one connection held open through it; returns the client.
    local function held_session(idle_timeout)
      local _, eport = service({ "tcp-echo", "--port", 0 })
      start_server()
      local conf = H.write_file(T.dir .. "/client.toml", table.concat({
        'role = "client"',
        "[iroh.transport]",
        "idle_timeout = " .. idle_timeout,
        "keep_alive_interval = 1",
      }, "\n") .. "\n")
      local lport = free_port()
      local c = start_client({ "-c", conf, "--source", "tcp://127.0.0.1:" .. eport,
        "--target", "127.0.0.1:" .. lport })
      wait_ready(c)
      assert.equal("OPEN 1 CLOSED 0 PENDING 0\n",
        check({ "tcp-hold", "--port", lport, "--count", 1 }).stdout, logs())
      return c, lport
    end

    local function exits_saying(c, says)
      c:wait(120)
      assert.is_nil(c.timed_out, "the client did not notice:" .. logs())
      assert.equal(1, c.code, logs())
      assert.matches(says, c.stderr, 1, true)
    end

    for _, case in ipairs({
      { sig = "sigkill", says = "tunnel: connection to the server ended: " },
      { sig = "sigterm", says = "tunnel: connection to the server ended: the server shut down" },
    }) do
      it("the client reports it and exits 1 (" .. case.sig .. ")", function()
        -- A short idle timeout so that a silently vanished server is noticed quickly.
        local c = held_session(3)
        T.server:kill(case.sig)
        exits_saying(c, case.says)
        if case.sig == "sigterm" then
          T.server:wait(30)
          assert.equal(0, T.server.code, logs())
        end
      end)
    end

    it("the client reports a restarted server's stateless reset and exits 1", function()
      -- Long idle timeout: only the new server's stateless reset can end the session soon.
      local c, lport = held_session(600)
      local port = T.port
      T.server:kill("sigkill")
      T.server:wait(30)
      -- Same key, same port, no memory of the session: it answers the client's next packet
      -- (a keep-alive, or the new connection's request) with the connection's reset token.
      start_server({ port = port })
      tool({ "tcp-hold", "--port", lport, "--count", 1 })
      exits_saying(c, "connection to the server ended: the peer reset the connection " ..
        "(stateless reset)")
    end)
  end)

  -- Two echo services and two free local ports; check(c) proves each port reaches its own.
  local function two_forwards()
    local a, aport = service({ "tcp-echo", "--port", 0 })
    local b, bport = service({ "tcp-echo", "--port", 0 })
    start_server()
    local la = free_port()
    local lb
    repeat
      lb = free_port()
    until lb ~= la
    local function verify(c)
      wait_ready(c, 2)
      for _, f in ipairs({ { la, a, b }, { lb, b, a } }) do
        local lport, to, other = f[1], f[2], f[3]
        local before = count(other.stdout, "ACCEPT ")
        local p = check({ "tcp-bulk", "--port", lport, "--bytes", MiB })
        assert.matches("BYTES " .. MiB .. "\n", p.stdout, 1, true)
        assert.equal(0, p.code, logs())
        assert.equal(1, count(to.stdout, "ACCEPT "))
        assert.equal(before, count(other.stdout, "ACCEPT "))
      end
    end
    return aport, bport, la, lb, verify
  end

  it("runs several forwards from one config file", function()
    local aport, bport, la, lb, verify = two_forwards()
    local conf = H.write_file(T.dir .. "/client.toml", table.concat({
      'role = "client"',
      'mode = "iroh"',
      "[iroh]",
      ('server_node_id = "%s"'):format(T.id),
      ('auth_token = "%s"'):format(T.token),
      ('server_addrs = ["127.0.0.1:%d"]'):format(T.port),
      "[[iroh.forward]]",
      ('source = "tcp://127.0.0.1:%d"'):format(aport),
      ('target = "127.0.0.1:%d"'):format(la),
      "[[iroh.forward]]",
      ('source = "tcp://127.0.0.1:%d"'):format(bport),
      ('target = "127.0.0.1:%d"'):format(lb),
    }, "\n") .. "\n")
    verify(start_client({ "-c", conf }, { bare = true }))
  end)

  it("runs several forwards given as --source/--target pairs", function()
    local aport, bport, la, lb, verify = two_forwards()
    verify(start_client({ "--source", "tcp://127.0.0.1:" .. aport, "--target", "127.0.0.1:" .. la,
      "-s", "tcp://127.0.0.1:" .. bport, "-t", "127.0.0.1:" .. lb }))
    local c = H.tunnel({ "client", "-n", T.id, "--server-addr", "127.0.0.1:" .. T.port,
      "--auth-token", T.token, "-s", "tcp://127.0.0.1:1", "-t", "127.0.0.1:" .. la, "-s",
      "tcp://127.0.0.1:2" }, { env = T.env })
    assert.equal(1, c.code)
    assert.equal("tunnel: --source and --target go in pairs, one --target per --source: got 2 " ..
      "--source and 1 --target\n", c.stderr)
  end)

  it("names the flag, not the config key, of a bad value on the command line", function()
    local s = H.tunnel({ "server", "--listen", "127.0.0.1:99999", "--secret-file", T.key,
      "--auth-tokens", T.token, "--max-sessions", "-3", "--allowed-tcp", "10.0.0.1/8" },
      { env = T.env })
    assert.equal(1, s.code)
    assert.matches("tunnel: --max-sessions: is out of range: got -3, allowed 0 to 1000000\n",
      s.stderr, 1, true)
    assert.matches("\n--allowed-tcp: is invalid: '10.0.0.1/8' has host bits set", s.stderr, 1, true)
    assert.matches("\n--listen: is invalid: '127.0.0.1:99999': port 99999 is out of range",
      s.stderr, 1, true)
    local c = H.tunnel({ "client", "-n", T.id, "--server-addr", "127.0.0.1:0", "--auth-token",
      T.token, "-s", "tcp://127.0.0.1:1", "-t", "127.0.0.1:77777" }, { env = T.env })
    assert.equal(1, c.code)
    assert.matches("--target: is invalid: '127.0.0.1:77777'", c.stderr, 1, true)
    assert.matches("--server-addr: is invalid: '127.0.0.1:0': port 0 is out of range",
      c.stderr, 1, true)
    -- From a file, the key and its line are named as before.
    local conf = H.write_file(T.dir .. "/bad.toml", 'role = "server"\n[iroh]\nmax_sessions = -3\n')
    s = H.tunnel({ "server", "-c", conf, "--secret-file", T.key, "--auth-tokens", T.token },
      { env = T.env })
    assert.equal(1, s.code)
    assert.matches("bad.toml:3:1: 'max_sessions' is out of range: got -3", s.stderr, 1, true)
  end)

  it("takes a lone --target as the new address of the file's request_source", function()
    -- The command line's forward replaces the file's forwards ([[forward]] too); the missing
    -- half comes from the file.
    local a, aport = service({ "tcp-echo", "--port", 0 })
    start_server()
    local la = free_port()
    local conf = H.write_file(T.dir .. "/client.toml", table.concat({
      'role = "client"',
      "[iroh]",
      ('request_source = "tcp://127.0.0.1:%d"'):format(aport),
      'target = "127.0.0.1:1"',
      "[[iroh.forward]]",
      'source = "tcp://127.0.0.1:2"',
      'target = "127.0.0.1:3"',
    }, "\n") .. "\n")
    local c = start_client({ "-c", conf, "--target", "127.0.0.1:" .. la })
    wait_ready(c, 1)
    assert.equal(1, count(c.stderr, "forwarding %a+ "), logs())
    assert.matches(("forwarding tcp 127.0.0.1:%d -> tcp://127.0.0.1:%d"):format(la, aport),
      c.stderr, 1, true)
    local p = check({ "tcp-bulk", "--port", la, "--bytes", MiB })
    assert.matches("BYTES " .. MiB .. "\n", p.stdout, 1, true)
    assert.equal(1, count(a.stdout, "ACCEPT "))
  end)

  it("polls for the next packet during a busy exchange, as busy_poll says", function()
    -- The server's longest poll comes from TUNNEL_BUSY_POLL_US, the client's from [transport].
    local _, eport = service({ "tcp-echo", "--port", 0 })
    local name = "fwd-spec-bp-" .. uv.os_getpid()
    start_server({ name = name, env = { TUNNEL_BUSY_POLL_US = "1000" } })
    local la = free_port()
    local conf = H.write_file(T.dir .. "/client.toml", table.concat({
      'role = "client"',
      "[iroh]",
      ('server_node_id = "%s"'):format(T.id),
      ('auth_token = "%s"'):format(T.token),
      ('server_addrs = ["127.0.0.1:%d"]'):format(T.port),
      ('request_source = "tcp://127.0.0.1:%d"'):format(eport),
      ('target = "127.0.0.1:%d"'):format(la),
      "[iroh.transport]",
      "busy_poll = 0",
    }, "\n") .. "\n")
    local c = track(H.start({ "--name", name .. "-c", "client", "-c", conf }, { env = T.env }),
      "tunnel client")
    wait_ready(c, 1)
    local p = check({ "tcp-pingpong", "--port", la, "--count", 2000 })
    assert.equal(0, p.code, p.stderr .. logs())
    local function poller(who)
      local a = H.tunnel({ "attach", who }, { stdin = "local b = stats().busy_poll; " ..
        "return b.max_us, b.polls, b.caught, b.poll_ms\n", env = T.env, timeout = 30 })
      assert.equal(0, a.code, a.stderr .. logs())
      local v = {}
      for n in a.stdout:gmatch("%d+") do
        v[#v + 1] = tonumber(n)
      end
      assert.equal(4, #v, a.stdout)
      return v
    end
    -- The server's local echo answers within the millisecond: the server polled for it, and
    -- caught some answers without sleeping.
    local s = poller(name)
    assert.equal(1000, s[1])
    assert.is_true(s[2] > 0 and s[3] > 0, "the server never polled: " .. table.concat(s, " "))
    local cl = poller(name .. "-c")
    assert.same({ 0, 0, 0, 0 }, cl)
  end)

  it("lists sessions in the REPL and kick() ends one", function()
    local _, eport = service({ "tcp-echo", "--port", 0 })
    local name = "fwd-spec-" .. uv.os_getpid()
    start_server({ name = name })
    local c = forward("tcp://127.0.0.1:" .. eport)
    local function attach(code)
      return H.tunnel({ "attach", name }, { stdin = code, env = T.env, timeout = 30 })
    end
    local a = attach("return sessions()\n")
    assert.equal(0, a.code, a.stderr .. logs())
    assert.matches("id = %d+", a.stdout)
    a = attach("return #sessions(), sessions()[1].id\n")
    assert.equal(0, a.code, a.stderr)
    local id = a.stdout:match("^1\t(%d+)\n$")
    assert.is_not_nil(id, "expected one session, got: " .. a.stdout)
    a = attach(("return kick(%s)\n"):format(id))
    assert.equal(0, a.code, a.stderr)
    assert.equal("true\n", a.stdout)
    c:wait(30)
    assert.is_nil(c.timed_out, "the kicked client kept running:" .. logs())
    assert.equal(1, c.code, logs())
    assert.matches("tunnel: [^\n]*kicked", c.stderr)
    assert.is_false(T.server.done, "kicking a session must not stop the server")
  end)
end)

describe("tunnel.server and tunnel.client option tables", function()
  local client = require "tunnel.client"
  local server = require "tunnel.server"
  local id = "54vwehvxwzgtmaf4zomqeo7athnn5fv5yu6gdjvewzt2e6dm44ba"

  it("reject unknown and mistyped transport keys at the caller's line", function()
    local function cli(t)
      local c = client.new({ server_id = id, server_addr = "127.0.0.1:9", token = "x",
        source = "tcp://127.0.0.1:9", target = "127.0.0.1:9", transport = t })
      return c -- not a tail call: the error names this line
    end
    local ok, err = pcall(cli, { idle_timout = 5 })
    assert.is_false(ok)
    assert.matches("^[^:]*forward_spec.lua:%d+: tunnel.client transport: unknown option " ..
      "'idle_timout' %(known: busy_poll, congestion_controller, connect_timeout, ", err)
    ok, err = pcall(cli, { connect_timeout = "2" })
    assert.is_false(ok)
    assert.matches("tunnel.client transport: option 'connect_timeout' must be a number, got " ..
      "string", err, 1, true)
    ok, err = pcall(server.new, { listen = "127.0.0.1:0", tokens = {},
      transport = { congestion_controller = "vegas" } })
    assert.is_false(ok)
    assert.matches("tunnel.server transport: congestion_controller must be bbr, cubic or " ..
      "reno, got 'vegas'", err, 1, true)
  end)

  it("reject forwards entries that are not { source =, target = } tables", function()
    local token = new_token()
    local function cli(fw)
      local c = client.new({ server_id = id, server_addr = "127.0.0.1:9", token = token,
        forwards = fw })
      return c
    end
    local ok, err = pcall(cli, { "tcp://127.0.0.1:22" })
    assert.is_false(ok)
    assert.matches("forward_spec.lua:%d+: tunnel.client: forwards%[1%] expects an option table",
      err)
    ok, err = pcall(cli, { { source = "tcp://127.0.0.1:22", target = "127.0.0.1:1", bogus = 1 } })
    assert.is_false(ok)
    assert.matches("tunnel.client: forwards[1]: unknown option 'bogus' (known: proto, source, " ..
      "target)", err, 1, true)
    ok, err = pcall(cli, { { source = "tcp://127.0.0.1:22" } })
    assert.is_false(ok)
    assert.matches("tunnel.client: forwards[1] needs source and target", err, 1, true)
  end)

  it("reject numbers out of range and allow-list entries with host bits set", function()
    local function srv(o)
      o.listen, o.tokens = "127.0.0.1:0", { "x" }
      local s = server.new(o)
      return s
    end
    local ok, err = pcall(srv, { max_sessions = -1 })
    assert.is_false(ok)
    assert.matches("forward_spec.lua:%d+: tunnel.server: option 'max_sessions' is out of range: " ..
      "got %-1, allowed 0 to", err)
    ok, err = pcall(srv, { max_sessions = 1.5 })
    assert.is_false(ok)
    assert.matches("option 'max_sessions' must be an integer, got 1.5", err, 1, true)
    ok, err = pcall(srv, { transport = { receive_window = 10 } })
    assert.is_false(ok)
    assert.matches("tunnel.server transport: option 'receive_window' is out of range", err, 1, true)
    ok, err = pcall(srv, { transport = { busy_poll = 20.5 } })
    assert.is_false(ok)
    assert.matches("tunnel.server transport: option 'busy_poll' must be an integer", err, 1, true)
    ok, err = pcall(srv, { udp_idle_timeout = 0 })
    assert.is_false(ok)
    assert.matches("option 'udp_idle_timeout' is out of range: got 0", err, 1, true)
    local s, serr = server.new({ listen = "127.0.0.1:0", tokens = { (new_token()) },
      allowed_tcp = { "10.0.0.5/24" } })
    assert.is_nil(s)
    assert.matches("allowed_tcp: allow-list entry 1: '10.0.0.5/24' has host bits set", serr, 1,
      true)
    s = assert(server.new({ listen = "127.0.0.1:0", tokens = { (new_token()) } }))
    local r, rerr = s:set_allowed("tcp", { "192.168.1.1/16" })
    assert.is_nil(r)
    assert.matches("has host bits set", rerr, 1, true)
    ok, err = pcall(s.set_allowed, s, "tcp", "10.0.0.0/8")
    assert.is_false(ok)
    assert.matches("set_allowed: the list must be a table of CIDR strings, got string", err, 1,
      true)
    ok, err = pcall(s.set_max_sessions, s, "5")
    assert.is_false(ok)
    assert.matches("set_max_sessions: expected a number, got string", err, 1, true)
    assert.is_true(s:set_allowed("tcp", { "10.0.0.0/8" }))
    assert.same({ "10.0.0.0/8" }, s:allowed_list("tcp"))
    s:close()
  end)
end)
