-- Nostr mode end to end on loopback: real `tunnel server nostr` and `tunnel client nostr`
-- processes, signaling through the third-party relay of spec/nostr (relay.js), ICE on 127.0.0.1
-- (--ice-host, --no-stun), then data through the tunnel (spec/tools/netcheck.py). Requests
-- made by hand are encrypted and signed with nostr-tools (tools.js), so the server is also
-- checked against another implementation. Deadlines only bound a wait; no result depends on
-- how long something took.
local H = require "helper"
local nostr = require "tools.nostr"
local cjson = require "cjson"
local uv = require "luv"

if not nostr.guard("nostr mode") then
  return
end

local MiB = 1024 * 1024
local KIND = 25517

-- Keys made once for the file (by nostr-tools: {sk, pk, nsec, npub}) and their nsec files.
local S, C
local KEYDIR

-- One test's world: its temp dir, environment and every process it started.
local T
local P = H.bind(function() return T.procs end)
local track, logs, tool, service = P.track, P.logs, P.netcheck, P.service

local count = H.count

local function esc(s)
  return (s:gsub("%p", "%%%0"))
end

local function hexrand(n)
  local keys = require "tunnel.core.keys"
  local raw = require("tunnel.keys").generate_secret()
  return keys.hex_encode(raw):sub(1, n)
end

---------------------------------------------------------------------------------------------------
-- Processes

local function relay_of(r)
  return type(r) == "table" and r.url or r
end

--- `tunnel <role> nostr` with this file's keys, --no-stun and --ice-host 127.0.0.1; o.relays
-- (handles or URLs), o.args (more arguments), o.env (more environment).
local function start(role, o)
  local me, peer = role == "server" and S or C, role == "server" and C or S
  local cmd = { H.BIN, role, "nostr", "--nsec-file", me.file, "--peer-npub", peer.npub,
    "--no-stun", "--ice-host", "127.0.0.1" }
  for _, r in ipairs(o.relays) do
    cmd[#cmd + 1] = "--relay"
    cmd[#cmd + 1] = relay_of(r)
  end
  for _, a in ipairs(o.args or {}) do
    cmd[#cmd + 1] = tostring(a)
  end
  local env = {}
  for k, v in pairs(T.env) do
    env[k] = v
  end
  for k, v in pairs(o.env or {}) do
    env[k] = v
  end
  return track(H.spawn(cmd, { env = env }), o.label or ("tunnel " .. role .. " nostr"))
end

--- Wait until `p` logged that it connected to `relay` (n times); fail when it did not.
local function wait_relay(p, relay, n)
  H.wait_until(function()
    return count(p.stderr, "relay " .. relay_of(relay) .. " connected", true) >= (n or 1) or
      p.done
  end, 60)
  assert(count(p.stderr, "relay " .. relay_of(relay) .. " connected", true) >= (n or 1),
    p.label .. " did not connect to " .. relay_of(relay) .. logs())
end

--- `tunnel server nostr`, returned once it is connected to the relays given as handles (those
-- given as URLs are meant to be unreachable), so that a client's first request reaches it.
local function start_server(relays, args, o)
  o = o or {}
  o.relays, o.args = relays, args or { "--allowed-tcp", "127.0.0.0/8" }
  local p = start("server", o)
  for _, r in ipairs(relays) do
    if type(r) == "table" then
      wait_relay(p, r)
    end
  end
  return p
end

--- A client forwarding `source` to a free local port: the process and the port.
local function start_client(relays, source, args, o)
  o = o or {}
  local lport = H.free_port(source:match("^(%a+)://"))
  local a = { "--source", source, "--target", "127.0.0.1:" .. lport }
  for _, x in ipairs(args or {}) do
    a[#a + 1] = x
  end
  o.relays, o.args = relays, a
  return start("client", o), lport
end

--- Wait until `p` wrote `pattern` on stderr (or ended); fail with every log when it did not.
local wait_err = P.wait_err

--- Wait until `p` ended (bounded); fail when it did not.
local function wait_exit(p, timeout)
  H.wait_until(function()
    return p.done
  end, timeout or 60)
  assert(p.done, p.label .. " did not exit" .. logs())
  return p.code
end

local function connected(srv, cli)
  wait_err(cli, "Connected: ", true)
  wait_err(srv, "Session %x+: connected via ")
end

--- Send `bytes` through the local port and check the echo (equal SHA-256 and length).
local function bulk(lport, bytes)
  local p = tool({ "tcp-bulk", "--port", lport, "--bytes", bytes, "--timeout", 120 }):wait(130)
  local sent, recv, n = p.stdout:match("SENT (%x+) RECV (%x+) BYTES (%d+)")
  assert(sent, "no result from tcp-bulk:" .. logs())
  assert.equal(bytes, tonumber(n), logs())
  assert.equal(sent, recv, logs())
  assert.equal(0, p.code, logs())
end

---------------------------------------------------------------------------------------------------
-- Events at the relay

--- The events of our kind that `relay` received from `pk`, as they came.
local function raw_events(relay, pk)
  return relay.events(pk, KIND)
end

--- The events of our kind `relay` received from `pk`, decrypted with nostr-tools by the peer:
-- { {ev=, msg=} }.
local function events_from(relay, pk)
  local evs = raw_events(relay, pk)
  if #evs == 0 then
    return {}
  end
  local me, peer = pk == C.pk and S or C, pk == C.pk and C or S
  local calls = {}
  for i, ev in ipairs(evs) do
    calls[i] = { "decrypt", me.sk, peer.pk, ev.content }
  end
  local out = {}
  for i, r in ipairs(nostr.batch(calls)) do
    assert(r.plaintext, "cannot decrypt an event with nostr-tools: " .. tostring(r.error))
    out[i] = { ev = evs[i], msg = cjson.decode(r.plaintext) }
  end
  return out
end

local function of_type(list, t)
  local out = {}
  for _, e in ipairs(list) do
    if e.msg.type == t then
      out[#out + 1] = e
    end
  end
  return out
end

--- The pair tag ("#t") of the server's subscription, as the relay saw it (waits for it).
local function pair_tag(relay)
  local tag
  H.wait_until(function()
    for _, m in ipairs(relay.messages()) do
      if type(m) == "table" and m[1] == "REQ" and type(m[3]) == "table" and
        type(m[3].authors) == "table" and m[3].authors[1] == C.pk then
        tag = m[3]["#t"][1]
      end
    end
    return tag
  end, 60)
  return assert(tag, "the relay never saw the server's subscription" .. logs())
end

--- A request made with nostr-tools as if by the client: o.session, o.ts (inner timestamp),
-- o.created_at, o.source, o.tag (the pair tag), o.set (fields to replace).
local function craft_request(o)
  local msg = {
    v = 1, type = "request", ts = o.ts, session = o.session,
    ufrag = "crft" .. hexrand(8), pwd = "crafted" .. hexrand(24),
    candidates = { "candidate:1 1 udp 2130706431 127.0.0.1 " .. H.free_port("udp") ..
      " typ host" },
    source = o.source, client_id = require("tunnel.keys").endpoint_id(
      require("tunnel.keys").generate_secret()),
  }
  for k, v in pairs(o.set or {}) do
    msg[k] = v
  end
  local enc = nostr.tool("encrypt", C.sk, S.pk, nostr.json(msg))
  assert(enc.payload, "nostr-tools cannot encrypt: " .. tostring(enc.error))
  local ev = nostr.tool("sign", C.sk, { kind = KIND, created_at = o.created_at,
    content = enc.payload, tags = { { "p", S.pk }, { "t", o.tag } } })
  assert(ev.sig, "nostr-tools cannot sign: " .. tostring(ev.error))
  return ev
end

local function publish(relay, ev)
  local res = nostr.tool("publish", relay.url, ev)
  assert(res.ok, "the relay refused the event: " .. cjson.encode(res))
end

---------------------------------------------------------------------------------------------------

describe("nostr mode", function()
  lazy_setup(function()
    KEYDIR = H.tmpdir()
    local k = nostr.batch({ { "keygen" }, { "keygen" } })
    S, C = k[1], k[2]
    for name, key in pairs({ server = S, client = C }) do
      key.file = H.write_file(KEYDIR .. "/" .. name .. ".nsec", key.nsec, tonumber("600", 8))
    end
  end)

  lazy_teardown(function()
    nostr.stop_all()
    H.cleanup()
  end)

  before_each(function()
    T = H.world(assert(uv.fs_mkdtemp(KEYDIR .. "/t-XXXXXX")))
  end)

  after_each(function()
    H.kill_all(T.procs)
    nostr.stop_all()
  end)

  describe("forwarding", function()
    it("connects through a relay and carries TCP both ways intact", function()
      local relay = nostr.start_relay({ log = true })
      local echo, eport = service({ "tcp-echo", "--port", 0 })
      local srv = start_server({ relay })
      local cli, lport = start_client({ relay }, "tcp://127.0.0.1:" .. eport)
      connected(srv, cli)
      assert.matches("direct connection (host candidates)", cli.stderr, 1, true)
      wait_err(cli, "Forwarding tcp 127.0.0.1:" .. lport .. " -> tcp://127.0.0.1:" .. eport, true)
      -- A small round trip, then a few MiB with equal digests.
      local p = tool({ "tcp-halfclose", "--port", lport, "--send", "hello nostr" }):wait(60)
      assert.equal("RECV hello nostr\n", p.stdout, logs())
      bulk(lport, 4 * MiB)
      assert.equal(2, count(echo.stdout, "ACCEPT ", true), logs())
      -- The signaling really went through the relay, encrypted: a request and an answer from
      -- the client, an offer from the server, none of it readable by the relay.
      local from_c, from_s = events_from(relay, C.pk), events_from(relay, S.pk)
      assert.is_true(#of_type(from_c, "request") >= 1, logs())
      assert.equal(1, #of_type(from_c, "answer"), logs())
      assert.equal(1, #of_type(from_s, "offer"), logs())
      for _, e in ipairs(from_c) do
        assert.is_nil(e.ev.content:find("127.0.0.1", 1, true))
      end
      assert.equal("tcp://127.0.0.1:" .. eport, of_type(from_c, "request")[1].msg.source)
    end)

    it("stops cleanly on SIGTERM: the server sees the session end", function()
      local relay = nostr.start_relay({})
      local _, eport = service({ "tcp-echo", "--port", 0 })
      local srv = start_server({ relay })
      local cli = start_client({ relay }, "tcp://127.0.0.1:" .. eport)
      connected(srv, cli)
      local sid = srv.stderr:match("Session (%x+): connected via ")
      cli:kill("sigterm")
      assert.equal(0, wait_exit(cli), logs())
      wait_err(srv, "Session " .. sid .. " closed: ", true)
      assert.is_false(srv.done, logs())
      srv:kill("sigterm")
      assert.equal(0, wait_exit(srv), logs())
      assert.is_nil(srv.stderr:find("Sanitizer", 1, true), logs())
      assert.is_nil(cli.stderr:find("Sanitizer", 1, true), logs())
    end)

    it("carries UDP (the source's scheme makes a host:port target a UDP listener)", function()
      local relay = nostr.start_relay({})
      local echo, eport = service({ "udp-echo", "--port", 0 })
      local srv = start_server({ relay }, { "--allowed-udp", "127.0.0.0/8" })
      local cli, lport = start_client({ relay }, "udp://127.0.0.1:" .. eport)
      connected(srv, cli)
      wait_err(cli, "Forwarding udp 127.0.0.1:" .. lport .. " -> udp://127.0.0.1:" .. eport, true)
      local p = tool({ "udp-senders", "--port", lport, "--senders", 3, "--count", 30 }):wait(240)
      assert.matches("^OK senders=3 count=30", p.stdout, nil, logs())
      assert.equal(0, p.code, logs())
      assert.is_true(count(echo.stdout, "PEER ", true) >= 1, logs())
    end)

    it("connects when one of two relays is down", function()
      local relay = nostr.start_relay({})
      local dead = "ws://127.0.0.1:" .. H.free_port()
      local _, eport = service({ "tcp-echo", "--port", 0 })
      local srv = start_server({ dead, relay })
      local cli, lport = start_client({ relay, dead }, "tcp://127.0.0.1:" .. eport)
      connected(srv, cli)
      bulk(lport, 64 * 1024)
    end)

    it("takes keys, peer and relays from a [nostr] config file as from flags", function()
      local relay = nostr.start_relay({})
      local _, eport = service({ "tcp-echo", "--port", 0 })
      local lport = H.free_port()
      local scfg = H.write_file(T.dir .. "/server.toml", table.concat({
        'role = "server"', 'mode = "nostr"', "[nostr]", 'nsec_file = "' .. S.file .. '"',
        'peer_npub = "' .. C.npub .. '"', 'relays = ["' .. relay.url .. '"]',
        "stun_servers = []", "max_sessions = 2", "[nostr.allowed_sources]",
        'tcp = ["127.0.0.0/8"]',
      }, "\n") .. "\n")
      local ccfg = H.write_file(T.dir .. "/client.toml", table.concat({
        'role = "client"', 'mode = "nostr"', "[nostr]", 'nsec_file = "' .. C.file .. '"',
        'peer_npub = "' .. S.npub .. '"', 'relays = ["' .. relay.url .. '"]',
        "stun_servers = []", 'request_source = "tcp://127.0.0.1:' .. eport .. '"',
        'target = "127.0.0.1:' .. lport .. '"', "max_wait = 60",
      }, "\n") .. "\n")
      -- The server without the word `nostr` (the file's mode decides), the client with it.
      local srv = track(H.spawn({ H.BIN, "server", "-c", scfg }, { env = T.env }), "server -c")
      wait_relay(srv, relay)
      local cli = track(H.spawn({ H.BIN, "client", "-c", ccfg, "nostr", "--ice-host",
        "127.0.0.1" }, { env = T.env }), "client -c nostr")
      connected(srv, cli)
      assert.matches("Nostr-mode server " .. S.npub, srv.stderr, 1, true)
      assert.matches("up to 2 session(s)", srv.stderr, 1, true)
      assert.matches("Nostr-mode client " .. C.npub, cli.stderr, 1, true)
      bulk(lport, 256 * 1024)
    end)
  end)

  describe("refusals", function()
    it("shows the server's reason when the source is outside its allow-list", function()
      local relay = nostr.start_relay({})
      local srv = start_server({ relay }, { "--allowed-tcp", "10.99.0.0/16" })
      local cli = start_client({ relay }, "tcp://127.0.0.1:9")
      assert.equal(1, wait_exit(cli), logs())
      assert.matches("the server refused the request: [^\n]*not in the allowed networks",
        cli.stderr, nil, logs())
      wait_err(srv, "refused", true)
      assert.matches("Session %x+ refused: [^\n]*not in the allowed networks", srv.stderr, nil,
        logs())
      assert.is_nil(cli.stderr:find("Connected: ", 1, true), logs())
      assert.is_false(srv.done, logs())
    end)

    it("refuses a second client at --max-sessions 1 while the first works, then frees the slot",
      function()
        local relay = nostr.start_relay({})
        local _, eport = service({ "tcp-echo", "--port", 0 })
        local srv = start_server({ relay }, { "--allowed-tcp", "127.0.0.0/8", "--max-sessions", 1 })
        local first, lport = start_client({ relay }, "tcp://127.0.0.1:" .. eport,
          nil, { label = "first client" })
        connected(srv, first)
        local second = start_client({ relay }, "tcp://127.0.0.1:" .. eport, nil,
          { label = "second client" })
        assert.equal(1, wait_exit(second), logs())
        assert.matches("the server refused the request: [^\n]*at capacity", second.stderr, nil,
          logs())
        assert.matches("refused: [^\n]*at capacity %(1/1", srv.stderr, nil, logs())
        assert.is_false(first.done, logs())
        bulk(lport, 1 * MiB)
        -- When the first leaves, its slot is free again.
        local sid = srv.stderr:match("Session (%x+): connected via ")
        first:kill("sigterm")
        wait_err(srv, "Session " .. sid .. " %a+: ")
        local third, tport = start_client({ relay }, "tcp://127.0.0.1:" .. eport, nil,
          { label = "third client" })
        wait_err(third, "Connected: ", true)
        bulk(tport, 64 * 1024)
      end)
  end)

  describe("failures", function()
    it("gives up after --max-wait when no server answers, naming the npubs to check", function()
      local relay = nostr.start_relay({ log = true })
      local cli = start_client({ relay }, "tcp://127.0.0.1:9", { "--max-wait", 3,
        "--republish-interval", 1 })
      assert.equal(1, wait_exit(cli, 60), logs())
      assert.matches("no answer from the server " .. S.npub, cli.stderr, 1, true)
      assert.matches("--peer-npub " .. C.npub, cli.stderr, 1, true)
      assert.matches(relay.url, cli.stderr:match("no answer from the server[^\n]*"), 1, true)
      -- It republished before giving up (every 1 s, then 2 s: at least twice within 3 s).
      assert.is_true(#of_type(events_from(relay, C.pk), "request") >= 2, logs())
    end)

    it("says the relay could not be reached when none is", function()
      local dead = "ws://127.0.0.1:" .. H.free_port()
      local cli = start_client({ dead }, "tcp://127.0.0.1:9", { "--max-wait", 3,
        "--republish-interval", 1 })
      assert.equal(1, wait_exit(cli, 60), logs())
      assert.matches("no Nostr relay could be reached[^\n]*" .. esc(dead), cli.stderr, nil,
        logs())
      assert.matches("check --relay", cli.stderr, 1, true)
    end)
  end)

  describe("timing of the two sides", function()
    it("connects when the server starts after the client (the request is republished)",
      function()
        local relay = nostr.start_relay({ log = true })
        local _, eport = service({ "tcp-echo", "--port", 0 })
        local cli, lport = start_client({ relay }, "tcp://127.0.0.1:" .. eport,
          { "--republish-interval", 1 })
        -- The first request reached the relay while no server listened.
        -- (Until an offer comes, all the client publishes are requests.)
        H.wait_until(function()
          return #raw_events(relay, C.pk) >= 1 or cli.done
        end, 60)
        local before = #raw_events(relay, C.pk)
        assert.is_true(before >= 1, "no request from the client" .. logs())
        local srv = start_server({ relay })
        connected(srv, cli)
        -- The one answered was published after the server was there.
        assert.is_true(#of_type(events_from(relay, C.pk), "request") > before, logs())
        bulk(lport, 64 * 1024)
      end)

    it("reconnects the server to a relay that restarted, and a new client connects", function()
      local relay = nostr.start_relay({})
      local port = relay.port
      local _, eport = service({ "tcp-echo", "--port", 0 })
      local srv = start_server({ relay })
      relay.stop()
      wait_err(srv, "relay " .. relay.url .. ": [^\n]*retrying in")
      relay = nostr.start_relay({ port = port })
      wait_relay(srv, relay, 2)
      local cli, lport = start_client({ relay }, "tcp://127.0.0.1:" .. eport)
      connected(srv, cli)
      bulk(lport, 64 * 1024)
    end)
  end)

  describe("NIP-42", function()
    it("connects through a relay that demands AUTH before accepting events", function()
      local relay = nostr.start_relay({ auth = true, log = true })
      -- The relay does refuse an unauthenticated publisher.
      local probe = nostr.tool("sign", C.sk, { kind = 20001, content = "probe" })
      local res = nostr.tool("publish", relay.url, probe)
      assert.is_false(res.ok)
      assert.matches("^auth%-required:", res.message)
      local _, eport = service({ "tcp-echo", "--port", 0 })
      local srv = start_server({ relay })
      local cli, lport = start_client({ relay }, "tcp://127.0.0.1:" .. eport)
      connected(srv, cli)
      bulk(lport, 64 * 1024)
      local authed = {}
      for _, m in ipairs(relay.messages()) do
        if type(m) == "table" and m[1] == "AUTH" and type(m[2]) == "table" then
          authed[m[2].pubkey] = m[2].kind
        end
      end
      assert.equal(22242, authed[S.pk], logs())
      assert.equal(22242, authed[C.pk], logs())
    end)
  end)

  describe("replay protection", function()
    it("starts no new session for a request replayed after its session ended", function()
      local relay = nostr.start_relay({ log = true })
      local _, eport = service({ "tcp-echo", "--port", 0 })
      local srv = start_server({ relay }, nil, { env = { TUNNEL_LOG = "nostr=debug" } })
      local cli = start_client({ relay }, "tcp://127.0.0.1:" .. eport)
      connected(srv, cli)
      local sid = srv.stderr:match("Session (%x+): connected via ")
      local req
      for _, e in ipairs(of_type(events_from(relay, C.pk), "request")) do
        if e.msg.session == sid then
          req = e.ev
        end
      end
      assert(req, "no request for session " .. tostring(sid) .. " at the relay" .. logs())
      cli:kill("sigterm")
      wait_exit(cli)
      wait_err(srv, "Session " .. sid .. " %a+: ")
      local tag = pair_tag(relay)
      -- The same event again (the pool drops an id it has seen), then a new event for the same
      -- session id, as a republishing client would send (the server only answers it again).
      publish(relay, req)
      publish(relay, craft_request({ session = sid, ts = os.time(), created_at = os.time(),
        source = "tcp://127.0.0.1:" .. eport, tag = tag }))
      wait_err(srv, "session " .. sid .. ": request repeated", true)
      -- A fresh request after them: once the server answered that one, it has seen them all.
      local fresh = hexrand(16)
      publish(relay, craft_request({ session = fresh, ts = os.time(), created_at = os.time(),
        source = "tcp://127.0.0.1:9", tag = tag }))
      wait_err(srv, "session " .. fresh .. ": offer for ", true)
      assert.equal(1, count(srv.stderr, "session " .. sid .. ": offer for ", true), logs())
      assert.equal(1, count(srv.stderr, "Session " .. sid .. ": connected", true), logs())
      assert.equal(1, count(srv.stderr, "session " .. sid .. ": request repeated", true), logs())
    end)

    it("ignores requests more than 30 s old (or ahead), and answers a fresh one", function()
      local relay = nostr.start_relay({ log = true })
      local srv = start_server({ relay }, nil, { env = { TUNNEL_LOG = "nostr=debug" } })
      local tag = pair_tag(relay)
      -- A crafted fresh request is answered: the crafting is right, and the subscription live.
      local warm = hexrand(16)
      local now = os.time()
      publish(relay, craft_request({ session = warm, ts = now, created_at = now,
        source = "tcp://127.0.0.1:9", tag = tag }))
      wait_err(srv, "session " .. warm .. ": offer for ", true)
      -- Old in both timestamps; old inside only; ahead inside only.
      local old, old_inner, ahead = hexrand(16), hexrand(16), hexrand(16)
      now = os.time()
      publish(relay, craft_request({ session = old, ts = now - 60, created_at = now - 60,
        source = "tcp://127.0.0.1:9", tag = tag }))
      publish(relay, craft_request({ session = old_inner, ts = now - 60, created_at = now,
        source = "tcp://127.0.0.1:9", tag = tag }))
      publish(relay, craft_request({ session = ahead, ts = now + 60, created_at = now,
        source = "tcp://127.0.0.1:9", tag = tag }))
      local fresh = hexrand(16)
      publish(relay, craft_request({ session = fresh, ts = os.time(), created_at = os.time(),
        source = "tcp://127.0.0.1:9", tag = tag }))
      wait_err(srv, "session " .. fresh .. ": offer for ", true)
      for _, sid in ipairs({ old, old_inner, ahead }) do
        assert.is_nil(srv.stderr:find(sid, 1, true), logs())
      end
      assert.matches("request ignored: made 6%d s ago", srv.stderr, nil, logs())
      assert.matches("request ignored: made %d+ s in the future", srv.stderr, nil, logs())
      -- Nothing went out for them either: the server's offers are for warm and fresh only
      -- (the log line comes before the offer reaches the relay: wait for both).
      H.wait_until(function()
        return #raw_events(relay, S.pk) >= 2
      end, 20)
      local offers = {}
      for _, e in ipairs(of_type(events_from(relay, S.pk), "offer")) do
        offers[e.msg.session] = true
      end
      assert.same({ [warm] = true, [fresh] = true }, offers)
    end)
  end)

  describe("malformed requests", function()
    it("refuses one with a bad field, saying which, and leaves the server serving", function()
      local relay = nostr.start_relay({ log = true })
      local srv = start_server({ relay })
      local tag = pair_tag(relay)
      local bad = hexrand(16)
      publish(relay, craft_request({ session = bad, ts = os.time(), created_at = os.time(),
        source = "tcp://127.0.0.1:9", tag = tag, set = { candidates = nostr.array() } }))
      wait_err(srv, "Session " .. bad .. " refused: ", true)
      assert.matches("Session " .. bad .. " refused: bad request: field 'candidates'", srv.stderr,
        1, true)
      -- The reject went to the client, encrypted, with the same reason. The server logs the
      -- refusal before its event reaches the relay: wait for the event.
      H.wait_until(function()
        return #raw_events(relay, S.pk) >= 1
      end, 20)
      local rejects = of_type(events_from(relay, S.pk), "reject")
      assert.equal(1, #rejects, logs())
      assert.equal(bad, rejects[1].msg.session)
      assert.matches("field 'candidates'", rejects[1].msg.reason, 1, true)
      -- A request without a valid session id gets no answer at all.
      publish(relay, craft_request({ session = "not-hex", ts = os.time(), created_at = os.time(),
        source = "tcp://127.0.0.1:9", tag = tag }))
      wait_err(srv, "request ignored: it has no valid session id", true)
      assert.is_false(srv.done, logs())
      local _, eport = service({ "tcp-echo", "--port", 0 })
      local cli, lport = start_client({ relay }, "tcp://127.0.0.1:" .. eport)
      connected(srv, cli)
      bulk(lport, 64 * 1024)
    end)
  end)

  describe("command line", function()
    local function run(args)
      local p = H.tunnel(args, { env = T.env })
      return p.code, p.stdout .. p.stderr
    end
    local SRC = { "--source", "tcp://127.0.0.1:1", "--target", "127.0.0.1:1" }
    local function client_args(extra)
      local a = { "client", "nostr", "--relay", "ws://127.0.0.1:1" }
      for _, x in ipairs(extra) do
        a[#a + 1] = x
      end
      for _, x in ipairs(SRC) do
        a[#a + 1] = x
      end
      return a
    end

    it("requires --peer-npub", function()
      local code, out = run(client_args({ "--nsec-file", C.file, "--no-stun" }))
      assert.equal(1, code, out)
      assert.matches("peer_npub", out, 1, true)
      assert.matches("--peer-npub", out, 1, true)
    end)

    it("says so when an npub is given as --nsec", function()
      local code, out = run(client_args({ "--nsec", C.npub, "--peer-npub", S.npub, "--no-stun" }))
      assert.equal(1, code, out)
      assert.matches("expected a secret key (nsec1...), got a public key (npub1...)", out, 1,
        true)
    end)

    it("refuses the client's own key as --peer-npub", function()
      local code, out = run(client_args({ "--nsec-file", C.file, "--peer-npub", C.npub,
        "--no-stun" }))
      assert.equal(1, code, out)
      assert.matches("own key", out, 1, true)
    end)

    it("refuses --no-stun with --stun-server", function()
      local code, out = run(client_args({ "--nsec-file", C.file, "--peer-npub", S.npub,
        "--no-stun", "--stun-server", "127.0.0.1:3478" }))
      assert.equal(1, code, out)
      assert.matches("--no-stun and --stun-server", out, 1, true)
    end)

    it("rejects iroh-mode options with a clear message", function()
      local code, out = run(client_args({ "--nsec-file", C.file, "--peer-npub", S.npub,
        "--no-stun", "--auth-token", "x" }))
      assert.equal(1, code, out)
      assert.matches("--auth-token is an iroh-mode option", out, 1, true)
      code, out = run({ "server", "nostr", "--nsec-file", S.file, "--peer-npub", C.npub,
        "--relay", "ws://127.0.0.1:1", "--no-stun", "--allowed-tcp", "127.0.0.0/8",
        "--auth-tokens", "x" })
      assert.equal(1, code, out)
      assert.matches("--auth-tokens is an iroh-mode option", out, 1, true)
    end)

    it("rejects a relay that is not ws:// or wss://, and a target of the wrong protocol",
      function()
        local code, out = run(client_args({ "--nsec-file", C.file, "--peer-npub", S.npub,
          "--no-stun", "--relay", "http://127.0.0.1:1" }))
        assert.equal(1, code, out)
        assert.matches("http", out, 1, true)
        assert.matches("ws://", out, 1, true)
        code, out = run({ "client", "nostr", "--nsec-file", C.file, "--peer-npub", S.npub,
          "--relay", "ws://127.0.0.1:1", "--no-stun", "--source", "udp://127.0.0.1:1",
          "--target", "tcp://127.0.0.1:2" })
        assert.equal(1, code, out)
        assert.matches("is tcp but its source udp://127.0.0.1:1 is udp", out, 1, true)
      end)

    it("refuses a server with no allow-list", function()
      local code, out = run({ "server", "nostr", "--nsec-file", S.file, "--peer-npub", C.npub,
        "--relay", "ws://127.0.0.1:1", "--no-stun" })
      assert.equal(1, code, out)
      assert.matches("--allowed-tcp", out, 1, true)
    end)

    it("lists the flags in `server nostr --help` and `client nostr --help`", function()
      local code, out = run({ "server", "nostr", "--help" })
      assert.equal(0, code, out)
      for _, flag in ipairs({ "--nsec ", "--nsec-file", "--peer-npub", "--relay", "--stun-server",
        "--no-stun", "--ice-host", "--max-sessions", "--allowed-tcp", "--allowed-udp" }) do
        assert.matches(flag, out, 1, true)
      end
      code, out = run({ "client", "nostr", "--help" })
      assert.equal(0, code, out)
      for _, flag in ipairs({ "--nsec ", "--nsec-file", "--peer-npub", "--relay", "--stun-server",
        "--no-stun", "--ice-host", "--republish-interval", "--max-wait", "--source",
        "--target" }) do
        assert.matches(flag, out, 1, true)
      end
    end)
  end)
end)
