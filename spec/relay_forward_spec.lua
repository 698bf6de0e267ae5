-- Port forwarding through a relay on loopback: `tunnel relay`, a `tunnel server` that registers
-- with it, and a `tunnel client` that has no address for the server at all, only its EndpointId
-- and the relay URL. Deadlines only bound a test; no result depends on timing.
local H = require "helper"

local MiB = 1024 * 1024

local T
local P = H.bind(function() return T.procs end)
local track, logs, tool = P.track, P.logs, P.netcheck

local function start_relay(port)
  local p, got = H.start_relay(T.procs, { "--listen", "127.0.0.1:" .. (port or 0) },
    { env = T.env })
  return p, "http://127.0.0.1:" .. got
end

--- Send `text` through the forward on `lport` with tcp-halfclose (each try bounded by `try` s,
-- its process by `wait` s) until the echo comes back or `within` s pass; returns the last try.
local function send_until(lport, text, try, wait, within)
  local p
  H.wait_until(function()
    p = tool({ "tcp-halfclose", "--port", lport, "--send", text, "--timeout", try })
    p:wait(wait)
    return p.stdout:find("RECV " .. text, 1, true) ~= nil
  end, within)
  return p
end

describe("forwarding through a relay", function()
  before_each(function()
    T = H.world()
    T.key = T.dir .. "/server.key"
    assert.equal(0, H.tunnel({ "generate-server-key", "--output", T.key }).code)
    T.token = H.tunnel({ "generate-token" }).stdout:gsub("%s+$", "")
  end)

  after_each(function()
    H.kill_all(T.procs)
    H.cleanup()
  end)

  --- An echo service, o.relays relays (default 1), a server registered with them all and a
  -- client that knows it by its EndpointId and the relay URLs alone, once it forwards a free
  -- local port to the echo service. o.relay_only: both sides with --relay-only. Returns w with
  -- the relays (and their URLs) in order and the first one as w.relay, w.url.
  local function setup(o)
    o = o or {}
    local echo, eport = P.service({ "tcp-echo", "--port", 0 })
    local relays, urls, via = {}, {}, {}
    for i = 1, o.relays or 1 do
      relays[i], urls[i] = start_relay()
      via[#via + 1], via[#via + 2] = "--relay-url", urls[i]
    end
    if o.relay_only then
      via[#via + 1] = "--relay-only"
    end
    local sargs = { "server", "--listen", "127.0.0.1:0", "--secret-file", T.key, "--auth-tokens",
      T.token, "--allowed-tcp", "127.0.0.0/8" }
    local srv = track(H.start(H.append(sargs, via), { env = T.env }), "tunnel server")
    assert(srv:wait_output("Relay: http", 20, "stdout"), "server" .. logs())
    local id = srv.stdout:match("EndpointId: (%S+)")
    local lport = H.free_port()
    local cargs = H.append({ "client", "--server-node-id", id }, via)
    local cli = track(H.start(H.append(cargs, { "--auth-token", T.token, "--source",
      "tcp://127.0.0.1:" .. eport, "--target", "127.0.0.1:" .. lport }), { env = T.env }),
      "tunnel client")
    assert(cli:wait_output("forwarding tcp ", 30), "client did not connect" .. logs())
    return { echo = echo, relay = relays[1], url = urls[1], relays = relays, urls = urls,
      srv = srv, cli = cli, lport = lport, id = id }
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
    local p = send_until(w.lport, "after the restart", 20, 30, 60)
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
    local w = setup({ relays = 2, relay_only = true })
    local r1, url1, url2, cli = w.relays[1], w.urls[1], w.urls[2], w.cli
    assert(cli:wait_output("relay " .. url2:gsub("%p", "%%%0") .. ": connected", 20),
      "second relay not connected" .. logs())
    r1:kill("sigkill")
    r1:wait(10)
    local p = send_until(w.lport, "over the other relay", 10, 15, 30)
    assert.matches("RECV over the other relay", p.stdout, 1, true)
    assert.matches("relay " .. url1 .. ": [^\n]*retrying", cli.stderr)
    assert.is_false(cli.done, logs())
  end)

  it("moves the traffic to the other relay when the one carrying it stops answering", function()
    -- A relay that hangs (here: SIGSTOP) keeps its TCP connections open and says nothing; the
    -- clients notice the unanswered ping and use their other relay long before the 30 s after
    -- which they reconnect.
    local w = setup({ relays = 2, relay_only = true })
    local r1, r2, url1, url2 = w.relays[1], w.relays[2], w.urls[1], w.urls[2]
    local srv, cli, lport = w.srv, w.cli, w.lport
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
    local p = send_until(lport, "around the silent relay", 10, 15, 25)
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
