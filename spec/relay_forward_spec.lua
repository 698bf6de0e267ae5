-- Port forwarding through a relay on loopback: `tunnel relay`, a `tunnel server` that registers
-- with it, and a `tunnel client` that has no address for the server at all, only its EndpointId
-- and the relay URL. Deadlines only bound a test; no result depends on timing.
local H = require "helper"

local MiB = 1024 * 1024

local T

local function track(p, label)
  return H.track(T.procs, p, label)
end

local function logs()
  return H.logs(T.procs)
end

local function tool(args)
  return H.netcheck(T.procs, args)
end

local function start_relay(port)
  local p = track(H.start({ "relay", "--listen", "127.0.0.1:" .. (port or 0) }, { env = T.env }),
    "tunnel relay")
  assert(p:wait_output("relay listening on http://127%.0%.0%.1:%d+", 20, "stdout"),
    "relay did not start" .. logs())
  return p, p.stdout:match("(http://127%.0%.0%.1:%d+)")
end

describe("forwarding through a relay", function()
  before_each(function()
    T = { procs = {}, dir = H.tmpdir() }
    T.env = { XDG_RUNTIME_DIR = T.dir, HOME = T.dir, TUNNEL_LOG = false }
    T.key = T.dir .. "/server.key"
    assert.equal(0, H.tunnel({ "generate-server-key", "--output", T.key }).code)
    T.token = H.tunnel({ "generate-token" }).stdout:gsub("%s+$", "")
  end)

  after_each(function()
    for _, p in ipairs(T.procs) do
      if not p.done then
        p:kill("sigkill")
      end
    end
    H.wait_until(function()
      for _, p in ipairs(T.procs) do
        if not p.done then
          return false
        end
      end
      return true
    end, 10)
    H.cleanup()
  end)

  local function setup()
    local echo = tool({ "tcp-echo", "--port", 0 })
    H.wait_until(function()
      return echo.stdout:match("PORT %d+\n") or echo.done
    end, 20)
    local eport = assert(tonumber(echo.stdout:match("PORT (%d+)\n")), "echo" .. logs())
    local relay, url = start_relay()
    local srv = track(H.start({ "server", "--listen", "127.0.0.1:0", "--secret-file", T.key,
      "--auth-tokens", T.token, "--allowed-tcp", "127.0.0.0/8", "--relay-url", url },
      { env = T.env }), "tunnel server")
    assert(srv:wait_output("Relay: http", 20, "stdout"), "server" .. logs())
    local id = srv.stdout:match("EndpointId: (%S+)")
    local lport = H.free_port()
    local cli = track(H.start({ "client", "--server-node-id", id, "--relay-url", url,
      "--auth-token", T.token, "--source", "tcp://127.0.0.1:" .. eport, "--target",
      "127.0.0.1:" .. lport }, { env = T.env }), "tunnel client")
    assert(cli:wait_output("forwarding tcp ", 30), "client did not connect" .. logs())
    return { echo = echo, relay = relay, url = url, srv = srv, cli = cli, lport = lport, id = id }
  end

  it("reaches the server by EndpointId alone and carries 20 MiB both ways intact", function()
    local w = setup()
    assert.matches("(relayed,", w.cli.stderr, 1, true)
    assert.matches("at relay " .. w.url, w.cli.stderr, 1, true)
    local n = 20 * MiB
    local p = tool({ "tcp-bulk", "--port", w.lport, "--bytes", n, "--timeout", 200 })
    p:wait(210)
    local sent, recv, bytes = p.stdout:match("SENT (%x+) RECV (%x+) BYTES (%d+)")
    assert.is_not_nil(sent, "no result from tcp-bulk:" .. logs())
    assert.equal(n, tonumber(bytes), logs())
    assert.equal(sent, recv, logs())
  end)

  it("keeps the session when the relay is killed and restarted on the same port", function()
    local w = setup()
    local port = w.url:match(":(%d+)$")
    w.relay:kill("sigkill")
    w.relay:wait(10)
    assert(w.cli:wait_output("relay http[^\n]*retrying", 20), "no reconnect note" .. logs())
    start_relay(port)
    -- A new connection through the old QUIC session, once both sides are back on the relay.
    local p
    H.wait_until(function()
      p = tool({ "tcp-halfclose", "--port", w.lport, "--send", "after the restart",
        "--timeout", 20 })
      p:wait(30)
      return p.stdout:find("RECV after the restart", 1, true) ~= nil
    end, 60)
    assert.matches("RECV after the restart", p.stdout, 1, true)
    assert.is_false(w.cli.done, logs())
    -- The same session (no second "forwarding" line), over a new relay connection.
    assert.equal(1, select(2, w.cli.stderr:gsub("forwarding tcp ", "")), logs())
    -- Both rejoin the relay in the background (the session may already run direct, so the
    -- connection above need not have waited for that).
    local function rejoined(p2)
      return select(2, p2.stderr:gsub("relay http[^\n]*: connected", "")) == 2
    end
    H.wait_until(function()
      return rejoined(w.cli) and rejoined(w.srv)
    end, 20)
    assert.equal(2, select(2, w.cli.stderr:gsub("relay http[^\n]*: connected", "")), logs())
    assert.equal(2, select(2, w.srv.stderr:gsub("relay http[^\n]*: connected", "")), logs())
  end)

  it("finds the server's relay by EndpointId through the discovery record it published",
    function()
      local w = setup()
      assert.matches("Discovery: " .. w.url .. "/pkarr", w.srv.stdout, 1, true)
      assert(w.srv:wait_output("published ", 20), "the server did not publish" .. logs())
      local lport = H.free_port()
      local echo_port = w.cli.stderr:match("%-> tcp://127%.0%.0%.1:(%d+)")
      local c2 = track(H.start({ "client", "--server-node-id", w.id, "--dns-server",
        w.url .. "/pkarr", "--auth-token", T.token, "--source", "tcp://127.0.0.1:" .. echo_port,
        "--target", "127.0.0.1:" .. lport }, { env = T.env }), "client by discovery")
      assert(c2:wait_output("forwarding tcp ", 30), "no connection via discovery" .. logs())
      assert.matches("found " .. w.id .. ": relay " .. w.url, c2.stderr, 1, true)
      local p = tool({ "tcp-halfclose", "--port", lport, "--send", "found by id" })
      p:wait(30)
      assert.matches("RECV found by id", p.stdout, 1, true)
      -- An EndpointId that published nothing: a clear message, exit 1.
      local other = T.dir .. "/other.key"
      assert.equal(0, H.tunnel({ "generate-server-key", "--output", other }).code)
      local oid = H.tunnel({ "show-server-id", "--secret-file", other }).stdout:gsub("%s+$", "")
      local c3 = H.tunnel({ "client", "--server-node-id", oid, "--dns-server", w.url .. "/pkarr",
        "--auth-token", T.token, "--source", "tcp://127.0.0.1:1", "--target",
        "127.0.0.1:" .. H.free_port() }, { env = T.env, timeout = 30 })
      assert.equal(1, c3.code, c3.stderr)
      assert.matches("cannot find the server: ", c3.stderr, 1, true)
    end)

  it("fails over to the second relay when the first one dies", function()
    local echo = tool({ "tcp-echo", "--port", 0 })
    assert(echo:wait_output("PORT %d+", 20, "stdout"), "echo" .. logs())
    local eport = echo.stdout:match("PORT (%d+)")
    local r1, url1 = start_relay()
    local _, url2 = start_relay()
    local srv = track(H.start({ "server", "--listen", "127.0.0.1:0", "--secret-file", T.key,
      "--auth-tokens", T.token, "--allowed-tcp", "127.0.0.0/8", "--relay-url", url1,
      "--relay-url", url2, "--relay-only" }, { env = T.env }), "tunnel server")
    assert(srv:wait_output("Relay: http", 20, "stdout"), "server" .. logs())
    local id = srv.stdout:match("EndpointId: (%S+)")
    local lport = H.free_port()
    local cli = track(H.start({ "client", "--server-node-id", id, "--relay-url", url1,
      "--relay-url", url2, "--relay-only", "--auth-token", T.token, "--source",
      "tcp://127.0.0.1:" .. eport, "--target", "127.0.0.1:" .. lport }, { env = T.env }),
      "tunnel client")
    assert(cli:wait_output("forwarding tcp ", 30), "client did not connect" .. logs())
    assert(cli:wait_output("relay " .. url2:gsub("%p", "%%%0") .. ": connected", 20),
      "second relay not connected" .. logs())
    r1:kill("sigkill")
    r1:wait(10)
    local p
    H.wait_until(function()
      p = tool({ "tcp-halfclose", "--port", lport, "--send", "over the other relay",
        "--timeout", 10 })
      p:wait(15)
      return p.stdout:find("RECV over the other relay", 1, true) ~= nil
    end, 30)
    assert.matches("RECV over the other relay", p.stdout, 1, true)
    assert.matches("relay " .. url1 .. ": [^\n]*retrying", cli.stderr)
    assert.is_false(cli.done, logs())
  end)

  it("moves the traffic to the other relay when the one carrying it stops answering", function()
    -- A relay that hangs (here: SIGSTOP) keeps its TCP connections open and says nothing; the
    -- clients notice the unanswered ping and use their other relay long before the 30 s after
    -- which they reconnect.
    local echo = tool({ "tcp-echo", "--port", 0 })
    assert(echo:wait_output("PORT %d+", 20, "stdout"), "echo" .. logs())
    local eport = echo.stdout:match("PORT (%d+)")
    local r1, url1 = start_relay()
    local r2, url2 = start_relay()
    local srv = track(H.start({ "server", "--listen", "127.0.0.1:0", "--secret-file", T.key,
      "--auth-tokens", T.token, "--allowed-tcp", "127.0.0.0/8", "--relay-url", url1,
      "--relay-url", url2, "--relay-only" }, { env = T.env }), "tunnel server")
    assert(srv:wait_output("Relay: http", 20, "stdout"), "server" .. logs())
    local id = srv.stdout:match("EndpointId: (%S+)")
    local lport = H.free_port()
    local cli = track(H.start({ "client", "--server-node-id", id, "--relay-url", url1,
      "--relay-url", url2, "--relay-only", "--auth-token", T.token, "--source",
      "tcp://127.0.0.1:" .. eport, "--target", "127.0.0.1:" .. lport }, { env = T.env }),
      "tunnel client")
    assert(cli:wait_output("forwarding tcp ", 30), "client did not connect" .. logs())
    for _, u in ipairs({ url1, url2 }) do
      assert(cli:wait_output("relay " .. u:gsub("%p", "%%%0") .. ": connected", 20),
        "relay not connected" .. logs())
    end
    -- Which relay carries the session: the one whose forwarded-bytes counter moves.
    local function forwarded(url)
      local port = tonumber(url:match(":(%d+)$"))
      local p = H.spawn({ "python3", "-c", "import urllib.request,sys;sys.stdout.write(" ..
        "urllib.request.urlopen('http://127.0.0.1:" .. port .. "/metrics',timeout=5)" ..
        ".read().decode())" }):wait(10)
      return tonumber(p.stdout:match("\ntunnel_relay_bytes_forwarded_total (%d+)")) or 0
    end
    local b1, b2 = forwarded(url1), forwarded(url2)
    local warm = tool({ "tcp-bulk", "--port", lport, "--bytes", MiB, "--timeout", 60 })
    warm:wait(70)
    assert.matches("SENT (%x+) RECV %1", warm.stdout)
    local d1, d2 = forwarded(url1) - b1, forwarded(url2) - b2
    local carrier, other_url = r1, url2
    if d2 > d1 then
      carrier, other_url = r2, url1
    end
    carrier:kill("sigstop")
    local t0 = os.time()
    local p
    H.wait_until(function()
      p = tool({ "tcp-halfclose", "--port", lport, "--send", "around the silent relay",
        "--timeout", 10 })
      p:wait(15)
      return p.stdout:find("RECV around the silent relay", 1, true) ~= nil
    end, 25)
    carrier:kill("sigcont")
    assert.matches("RECV around the silent relay", p.stdout, 1, true)
    assert.matches("no answer to a ping", cli.stderr .. srv.stderr, 1, true)
    io.stderr:write(string.format("\n  [measure] silent relay: traffic through %s within %d s\n",
      other_url, os.time() - t0))
    assert.is_false(cli.done, logs())
  end)

  it("says clearly when the discovery server cannot be reached", function()
    local id = H.tunnel({ "show-server-id", "--secret-file", T.key }).stdout:gsub("%s+$", "")
    -- A discovery server that is not there (on loopback: the LAN lookup, which a client with
    -- nothing at all given would do, is multicast and has its own lab test).
    local p = H.tunnel({ "client", "--server-node-id", id, "--dns-server",
      "http://127.0.0.1:1/pkarr", "--auth-token", T.token, "--source", "tcp://127.0.0.1:1",
      "--target", "127.0.0.1:" .. H.free_port() }, { env = T.env, timeout = 30 })
    assert.equal(1, p.code)
    assert.matches("cannot find the server: ", p.stderr, 1, true)
  end)
end)
