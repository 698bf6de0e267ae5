-- nostr mode through real NATs (root): the NAT lab of spec/lab.lua with a third-party Nostr
-- relay (spec/nostr/relay.js) and coturn's STUN on the public segment, the server behind NAT 2
-- (namespace b), the client behind NAT 1 (namespace a). The two sides know each other only by
-- their npubs and the relay URL. What the relay sees is checked with nostr-tools (the harness
-- of spec/tools/nostr.lua). Deadlines only bound a test; the times printed are measurements for
-- docs/benchmarks.md, never assertions.
local H = require "helper"
local Lab = require "lab"
local nostr = require "tools.nostr"
local sigblock = require "tunnel.sigblock"
local core = require "tunnel.core.nostr"
local cjson = require "cjson"
local uv = require "luv"

local TITLE = "nostr mode in the NAT lab"
local MiB = 1024 * 1024
local KIND = 25517

if not Lab.guard(TITLE, { "turnserver", "python3" }) then
  return
end
if not nostr.guard(TITLE) then
  return
end

local SRV1, SRV2 = Lab.SRV_IPS[1], Lab.SRV_IPS[2]
local URL = "ws://" .. SRV1 .. ":7447"

-- Connects to the client's forward as soon as it listens (retrying while it does not yet),
-- sends one byte and prints the time from argv[1] (the client's start, epoch seconds) to the
-- echo. The forward holds the connection until the tunnel is up.
local FIRST_BYTE = [[
import socket, sys, time
t0, port = float(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 150
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.005)
s.settimeout(150)
s.sendall(b"x")
assert s.recv(1) == b"x"
print("FIRSTBYTE %.1f" % ((time.time() - t0) * 1000), flush=True)
]]

local function tohex(s)
  return (s:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

local function unhex(h)
  return (h:gsub("..", function(x)
    return string.char(tonumber(x, 16))
  end))
end

-- The pair tag as docs/nostr.md defines it: the first 32 hex digits of
-- sha256("tunnel-nostr-pair/1" || lower key || higher key), raw 32-byte keys. Computed here
-- independently of tunnel.nostr so the test checks the wire format.
local function pair_tag(pk1, pk2)
  local a, b = unhex(pk1), unhex(pk2)
  if a > b then
    a, b = b, a
  end
  return tohex(core.sha256("tunnel-nostr-pair/1" .. a .. b)):sub(1, 32)
end

local function random_session()
  return tohex(assert(uv.random(8)))
end

local function now_epoch()
  local sec, usec = uv.gettimeofday()
  return sec + usec / 1e6
end

local function logs(w)
  local text = w.lab:logs()
  if w.relay then
    local p = w.relay.proc
    text = text .. string.format("\n--- relay.js (pid %s, done %s)\n%s%s", tostring(p.pid),
      tostring(p.done), p.stdout, p.stderr)
  end
  return text
end

local function wait_plain(p, text, timeout, which)
  H.wait_until(function()
    return p[which or "stderr"]:find(text, 1, true) or p.done
  end, timeout)
  return p[which or "stderr"]:find(text, 1, true) ~= nil
end

--- A Nostr key made by `tunnel generate-nostr-key` in namespace `ns`: { file, npub, sk, pk }
-- (sk, pk: hex, decoded by nostr-tools).
local function make_key(lab, ns, name)
  local file = lab:tmpdir() .. "/" .. name .. ".nsec"
  local ok, out, err = lab:exec(ns, { H.BIN, "generate-nostr-key", "--output", file })
  assert(ok, "generate-nostr-key: " .. out .. err)
  local npub = assert((out .. err):match("npub: (npub1%w+)"), "no npub printed: " .. out .. err)
  local nsec = H.read_file(file):gsub("%s+$", "")
  local r = nostr.batch({ { "decode", nsec }, { "decode", npub } })
  assert(r[1].type == "nsec" and r[2].type == "npub", cjson.encode(r))
  return { file = file, npub = npub, sk = r[1].data, pk = r[2].data }
end

--- The common world of a test: a lab (o.a, o.b: nat types), coturn's STUN, the relay (with a
-- --log of every message it received), keys for both sides, an echo service in b, and the
-- server in b, subscribed to the relay. o.relays: the relay list of both sides (default the lab
-- relay only); o.before_server(lab): called just before the server starts. Returns w = { lab,
-- relay, server, client (keys), srv (process), eport, stun, pair }.
local function world(o)
  local lab = Lab.new({ a = o.a or "cone", b = o.b or "cone" })
  local w = { lab = lab, relays = o.relays or { URL } }
  w.env = lab:env()
  lab:start_coturn("srv", { ips = { SRV1 } })
  w.stun = { "--stun-server", SRV1 .. ":3478" }
  w.relay = nostr.start_relay({ host = SRV1, port = 7447, netns = lab:ns("srv"),
    log = lab:tmpdir() .. "/relay.log" })
  assert(w.relay.url == URL, w.relay.url)
  w.server = make_key(lab, "b", "server")
  w.client = make_key(lab, "a", "client")
  w.pair = pair_tag(w.server.pk, w.client.pk)
  w.eport = select(2, lab:service("b", { "tcp-echo", "--port", 0 }))
  if o.before_server then
    o.before_server(lab)
  end
  local argv = { H.BIN, "server", "nostr", "--nsec-file", w.server.file, "--peer-npub",
    w.client.npub, "--allowed-tcp", "127.0.0.0/8" }
  for _, u in ipairs(w.relays) do
    argv[#argv + 1], argv[#argv + 2] = "--relay", u
  end
  for _, a in ipairs(w.stun) do
    argv[#argv + 1] = a
  end
  w.srv = lab:spawn("b", argv, { env = w.env })
  -- Its subscription is on the relay: a request published now reaches it.
  assert(wait_plain(w.srv, "relay " .. URL .. " connected", 30), "server" .. logs(w))
  return w
end

--- Start a client in a whose forward listens on 127.0.0.1:`port` (default 7000). o.relays,
-- o.probe (start the first-byte probe with it). Returns the process (.t0: its start, epoch s).
local function client(w, port, o)
  o = o or {}
  port = port or 7000
  local argv = { H.BIN, "client", "nostr", "--nsec-file", w.client.file, "--peer-npub",
    w.server.npub, "--source", "tcp://127.0.0.1:" .. w.eport, "--target",
    "127.0.0.1:" .. port }
  for _, u in ipairs(o.relays or w.relays) do
    argv[#argv + 1], argv[#argv + 2] = "--relay", u
  end
  for _, a in ipairs(w.stun) do
    argv[#argv + 1] = a
  end
  local t0 = now_epoch()
  local cli = w.lab:spawn("a", argv, { env = w.env })
  cli.t0 = t0
  if o.probe then
    cli.probe = w.lab:spawn("a", { "python3", "-c", FIRST_BYTE, string.format("%.6f", t0),
      port })
  end
  return cli
end

--- Wait until `cli` reports "Connected:" (true) or exits (false).
local function connected(cli, timeout)
  return wait_plain(cli, "Connected: ", timeout or 60)
end

--- Move `n` bytes both ways through the forward on `port` in a; returns the result process.
local function bulk_start(w, n, port)
  return w.lab:netcheck("a", { "tcp-bulk", "--port", port or 7000, "--bytes", n, "--timeout",
    200 })
end

local function bulk_result(p)
  p:wait(210)
  return p.stdout:match("SENT (%x+) RECV (%x+) BYTES (%d+)")
end

local function bulk(w, n, port)
  return bulk_result(bulk_start(w, n, port))
end

local function after_start(cli)
  return tonumber(cli.stderr:match("Connected: [^\n]*, (%d+) ms after start"))
end

local function note(what, cli)
  local first = "-"
  if cli.probe then
    H.wait_until(function()
      return cli.probe.stdout:find("FIRSTBYTE", 1, true) or cli.probe.done
    end, 30)
    first = tostring(cli.probe.stdout:match("FIRSTBYTE ([%d.]+)"))
  end
  io.stderr:write(string.format("\n  [measure] nostr, %s: connected %s ms, first byte echoed %s " ..
    "ms after the client started\n", what, tostring(after_start(cli)), first))
end

--- The EVENT messages the relay received (from its --log), in order.
local function logged_events(w)
  return w.relay.events()
end

-- The secret key (hex) that decrypts `ev` and the key of the other side, from the two known
-- pairs; nil for an event of neither.
local function keys_for(w, ev)
  if ev.pubkey == w.client.pk then
    return w.client.sk, w.server.pk
  elseif ev.pubkey == w.server.pk then
    return w.server.sk, w.client.pk
  end
end

--- Decrypt each event of `events` with the pair's keys (nostr-tools); returns a list of
-- decoded messages (nil where decryption or JSON failed) and the raw results.
local function decrypt_all(w, events)
  local calls = {}
  for i, ev in ipairs(events) do
    local sk, other = keys_for(w, ev)
    calls[i] = { "decrypt", sk or w.server.sk, other or w.client.pk, ev.content }
  end
  local res = #calls > 0 and nostr.batch(calls) or {}
  local msgs = {}
  for i, r in ipairs(res) do
    if r.plaintext then
      local ok, v = pcall(cjson.decode, r.plaintext)
      msgs[i] = ok and type(v) == "table" and v or nil
    end
  end
  return msgs, res
end

describe(TITLE, function()
  local w

  after_each(function()
    nostr.stop_all()
    -- Every lab built, even by a world() that failed half-way.
    Lab.teardown_all()
    w = nil
  end)

  it("connects two endpoint-independent NATs with coturn's STUN and moves 50 MiB intact",
    function()
      w = world({ a = "cone", b = "cone" })
      local cli = client(w, 7000, { probe = true })
      assert.is_true(connected(cli), logs(w))
      assert.is_true(wait_plain(w.srv, ": connected via ", 30), logs(w))
      assert.matches("NAT traversal (server-reflexive", cli.stderr, 1, true)
      assert.matches("Session %x+: connected via NAT traversal %(server%-reflexive", w.srv.stderr)
      -- The server's address the client reports is its NAT's public one.
      assert.matches("at " .. w.lab:public_ip("b"):gsub("%.", "%%.") .. ":%d+", cli.stderr)
      local sent, recv, bytes = bulk(w, 50 * MiB)
      assert.equal(50 * MiB, tonumber(bytes), logs(w))
      assert.equal(sent, recv, logs(w))
      note("cone/cone, coturn", cli)
    end)

  it("shows the relay only signed NIP-44 ciphertext between the two configured keys",
    function()
      w = world({ a = "cone", b = "cone" })
      -- A nostr-tools subscriber on the relay, for everything of our kind.
      local sub = nostr.subscribe(URL, { kinds = { KIND } }, 120, { netns = w.lab:ns("srv") })
      assert.is_true(sub:ready(), "subscription" .. logs(w))
      local cli = client(w)
      assert.is_true(connected(cli), logs(w))
      -- The answer goes out before the checks start, but the relay may log it a moment after
      -- the client reports its connection: wait until request, offer and answer are all there.
      local events, msgs
      local function complete()
        events = logged_events(w)
        msgs = decrypt_all(w, events)
        local types = {}
        for i = 1, #events do
          types[msgs[i] and msgs[i].type or "?"] = true
        end
        return types.request and types.offer and types.answer
      end
      local deadline = uv.now() + 30000
      while not complete() and uv.now() < deadline do
        H.wait_until(function()
          return false
        end, 0.5)
      end
      assert.is_truthy(complete(), "request, offer and answer on the relay" .. logs(w))
      local seen = sub:wait(1)

      local _, plain = decrypt_all(w, events)
      local verdicts = {}
      for i, ev in ipairs(events) do
        verdicts[i] = { "verify", ev }
      end
      verdicts = nostr.batch(verdicts)
      local pubkeys, sessions, by_id = {}, {}, {}
      local texts = {}
      for i, ev in ipairs(events) do
        local what = string.format("event %d (%s): %s", i, tostring(ev.id), cjson.encode(ev))
        by_id[ev.id] = true
        assert.is_true(verdicts[i].ok, what .. " " .. tostring(verdicts[i].reason))
        assert.equal(KIND, ev.kind, what)
        local sk, other = keys_for(w, ev)
        assert.is_truthy(sk, "signed by neither configured key: " .. what)
        pubkeys[ev.pubkey] = true
        -- Exactly one p tag (the other side) and one t tag (the pair's), nothing else.
        assert.equal(2, #ev.tags, what)
        local tags = {}
        for _, t in ipairs(ev.tags) do
          assert.equal(2, #t, what)
          assert.is_nil(tags[t[1]], what)
          tags[t[1]] = t[2]
        end
        assert.equal(other, tags.p, what)
        assert.equal(w.pair, tags.t, what)
        -- NIP-44 v2: base64 of version byte 2 (so "A" then one of g..v), and nothing readable.
        assert.matches("^A[g-v][A-Za-z0-9+/]+=*$", ev.content, 1, false, what)
        for _, needle in ipairs({ "10.0.", "203.0.113.", "ufrag", "tcp://", "candidate",
          "session", "127.0.0.1" }) do
          assert.is_nil(ev.content:find(needle, 1, true), needle .. " in " .. what)
        end
        -- Decrypted with the right keys: our JSON message.
        local m = msgs[i]
        assert.is_table(m, "cannot decrypt " .. what .. ": " .. cjson.encode(plain[i]))
        assert.equal(1, m.v, what)
        local types = ev.pubkey == w.client.pk and { request = true, answer = true }
          or { offer = true }
        assert.is_true(types[m.type] == true, "type " .. tostring(m.type) .. " from " .. what)
        sessions[m.session] = true
        texts[#texts + 1] = plain[i].plaintext
      end
      -- The two configured keys, both, and nothing else; one session.
      assert.same({ [w.client.pk] = true, [w.server.pk] = true }, pubkeys)
      local n = 0
      for _ in pairs(sessions) do
        n = n + 1
      end
      assert.equal(1, n, "sessions: " .. cjson.encode(sessions))
      -- The checks above are not vacuous: what was hidden is really in the messages.
      local all = table.concat(texts, "\n")
      assert.matches(w.lab:public_ip("a"), all, 1, true)
      assert.matches(w.lab:public_ip("b"), all, 1, true)
      assert.matches("ufrag", all, 1, true)
      local sources = {}
      for _, m in pairs(msgs) do
        if m.source then
          sources[m.source] = true
        end
      end
      assert.same({ ["tcp://127.0.0.1:" .. w.eport] = true }, sources)
      -- The subscriber got the session's events (kind 25517 is ephemeral: delivered, not
      -- stored), and no others.
      assert.is_true(#seen >= 3, "the subscriber saw " .. #seen .. " event(s)")
      for _, ev in ipairs(seen) do
        assert.is_true(by_id[ev.id] == true, "not in the relay's log: " .. cjson.encode(ev))
      end
      -- Each side subscribed for its peer's events to itself, with the pair tag.
      local reqs = 0
      for _, m in ipairs(w.relay.messages()) do
        if type(m) == "table" and m[1] == "REQ" and type(m[3]) == "table" and m[3]["#t"] then
          local f = m[3]
          reqs = reqs + 1
          assert.same({ w.pair }, f["#t"])
          assert.same({ KIND }, f.kinds)
          local me, peer = f["#p"][1], f.authors[1]
          assert.is_true((me == w.client.pk and peer == w.server.pk)
            or (me == w.server.pk and peer == w.client.pk), cjson.encode(m))
        end
      end
      assert.is_true(reqs >= 2, "subscriptions with the pair tag: " .. reqs)
    end)

  it("ignores a stranger's request and still serves the real client afterwards", function()
    w = world({ a = "cone", b = "cone" })
    local ns = w.lab:ns("srv")
    -- A well-formed request: the offer of a manual-mode client (manual mode's offer fields are
    -- what a nostr request carries), taken before it goes away.
    local m = w.lab:spawn("a", { H.BIN, "client", "manual", "--no-stun", "--source",
      "tcp://127.0.0.1:" .. w.eport, "--target", "127.0.0.1:7009" }, { stdin = true,
      env = w.env })
    assert.is_true(wait_plain(m, "-----END TUNNEL OFFER-----", 30, "stdout"), logs(w))
    local fields = assert(sigblock.decode(m.stdout))
    m:kill("sigterm")
    m:wait(10)
    local function request(session)
      local r = { v = 1, type = "request", ts = os.time() }
      for k, v in pairs(fields) do
        if k ~= "kind" then
          r[k] = v
        end
      end
      r.session = session
      return nostr.json(r)
    end
    local stranger = nostr.tool("keygen")
    local s_strange, s_control = random_session(), random_session()
    local enc = nostr.batch({
      { "encrypt", stranger.sk, w.server.pk, request(s_strange) },
      { "encrypt", w.client.sk, w.server.pk, request(s_control) },
    })
    local tags = { { "p", w.server.pk }, { "t", w.pair } }
    local signed = nostr.batch({
      { "sign", stranger.sk, { kind = KIND, tags = tags, content = enc[1].payload } },
      { "sign", w.client.sk, { kind = KIND, tags = tags, content = enc[2].payload } },
    })
    local from_server = nostr.subscribe(URL, { kinds = { KIND }, authors = { w.server.pk } },
      120, { netns = ns })
    assert.is_true(from_server:ready(), "subscription" .. logs(w))
    -- The stranger first; the relay accepts it (it is a valid event).
    local res = nostr.tool_in(ns, "publish", URL, signed[1])
    assert.is_true(res.ok, cjson.encode(res))
    -- Then the same request from the client's key, as a barrier: the relay hands the server
    -- events in order, so once the server answers this one it has had every chance to answer
    -- the stranger. (Its ICE checks go to a manual client that is gone; that session fails
    -- later, and takes one of ten slots meanwhile.)
    res = nostr.tool_in(ns, "publish", URL, signed[2])
    assert.is_true(res.ok, cjson.encode(res))
    local replies, msgs
    H.wait_until(function()
      replies = from_server.events()
      msgs = decrypt_all(w, replies)
      for i = 1, #replies do
        if msgs[i] and msgs[i].session == s_control then
          return true
        end
      end
    end, 30)
    local control_answered = false
    for i, ev in ipairs(replies) do
      assert.is_truthy(msgs[i], "undecryptable server event " .. cjson.encode(ev))
      assert.not_equal(s_strange, msgs[i].session, "the server answered the stranger")
      for _, t in ipairs(ev.tags) do
        assert.not_equal(stranger.pk, t[2], "the server wrote to the stranger")
      end
      if msgs[i].session == s_control and msgs[i].type == "offer" then
        control_answered = true
      end
    end
    assert.is_true(control_answered, "no offer for the control request" .. logs(w))
    -- The stranger's event did reach the relay, and the server said nothing about it.
    local delivered = false
    for _, ev in ipairs(logged_events(w)) do
      delivered = delivered or ev.id == signed[1].id
    end
    assert.is_true(delivered)
    assert.is_nil(w.srv.stderr:find(s_strange, 1, true), logs(w))
    assert.is_nil(w.srv.stderr:find("Session ", 1, true), logs(w))
    -- A real client still gets through.
    local cli = client(w)
    assert.is_true(connected(cli), logs(w))
    local sent, recv = bulk(w, MiB)
    assert.equal(sent, recv, logs(w))
    assert.is_nil(w.srv.stderr:find(s_strange, 1, true), logs(w))
    assert.matches("Session %x+: connected via ", w.srv.stderr)
  end)

  it("serves two clients with the same key at once, each on its own session", function()
    w = world({ a = "cone", b = "cone" })
    local c1 = client(w, 7000)
    local c2 = client(w, 7001)
    assert.is_true(connected(c1), logs(w))
    assert.is_true(connected(c2), logs(w))
    H.wait_until(function()
      return select(2, w.srv.stderr:gsub("Session %x+: connected via", "")) >= 2 or w.srv.done
    end, 30)
    local ids = {}
    for id in w.srv.stderr:gmatch("Session (%x+): connected via") do
      ids[#ids + 1] = id
    end
    assert.equal(2, #ids, logs(w))
    assert.not_equal(ids[1], ids[2])
    -- Both forwards at the same time.
    local b1, b2 = bulk_start(w, 5 * MiB, 7000), bulk_start(w, 5 * MiB, 7001)
    local s1, r1, n1 = bulk_result(b1)
    local s2, r2, n2 = bulk_result(b2)
    assert.equal(5 * MiB, tonumber(n1), logs(w))
    assert.equal(5 * MiB, tonumber(n2), logs(w))
    assert.equal(s1, r1, logs(w))
    assert.equal(s2, r2, logs(w))
    note("second of two clients", c2)
  end)

  -- A relay that is down: nothing listens there (the connection is refused at once), or its
  -- address swallows every packet (the connection attempt hangs until it times out).
  for _, down in ipairs({ "refuses connections", "drops every packet" }) do
    it("connects with two relays configured when one of them " .. down, function()
      local dead = "ws://" .. SRV2 .. ":7447"
      w = world({ a = "cone", b = "cone", relays = { dead, URL },
        before_server = function(lab)
          if down == "drops every packet" then
            lab:must("srv", { "iptables", "-A", "INPUT", "-d", SRV2, "-p", "tcp", "--dport",
              "7447", "-j", "DROP" })
          end
        end })
      local cli = client(w, 7000, { probe = true })
      assert.is_true(connected(cli), logs(w))
      local sent, recv = bulk(w, MiB)
      assert.equal(sent, recv, logs(w))
      assert.matches("through 2 relay(s)", cli.stderr, 1, true)
      if down == "drops every packet" then
        -- Both sides did try the dead relay: its rule dropped their SYNs.
        local _, out = w.lab:exec("srv", { "iptables", "-L", "INPUT", "-v", "-n", "-x" })
        local dropped = tonumber(out:match("\n%s*(%d+)%s+%d+%s+DROP"))
        assert.is_true((dropped or 0) >= 2, out)
      end
      note("two relays, one " .. down, cli)
    end)
  end

  -- The conntrack pitfall (docs/ice.md): a router without the usual drop of unsolicited WAN
  -- input records the peer's first packet, and the NAT then gives our own packets to that peer
  -- another port. The side behind it must send first. In nostr mode the server starts its
  -- checks when its offer is out, before the client can: survived on the server's side.
  it("survives the conntrack pitfall router on the server's side", function()
    w = world({ a = "cone", b = "pitfall" })
    local cli = client(w, 7000, { probe = true })
    assert.is_true(connected(cli, 90), logs(w))
    local sent, recv = bulk(w, 5 * MiB)
    assert.equal(sent, recv, logs(w))
    note("pitfall router on the server's side", cli)
  end)

  -- On the client's side the server's early checks create the stale entry; a second ICE round
  -- in which the client sends first is what gets through (being added to tunnel.nostr).
  it("survives the conntrack pitfall router on the client's side", function()
    w = world({ a = "pitfall", b = "cone" })
    local cli = client(w, 7000, { probe = true })
    assert.is_true(connected(cli, 150), logs(w))
    local sent, recv = bulk(w, 5 * MiB)
    assert.equal(sent, recv, logs(w))
    note("pitfall router on the client's side", cli)
  end)

  it("fails clearly between two symmetric NATs and recommends iroh mode", function()
    w = world({ a = "symmetric", b = "symmetric" })
    local cli = client(w)
    assert.is_false(connected(cli, 150), logs(w))
    cli:wait(30)
    assert.is_true(cli.done, logs(w))
    assert.equal(1, cli.code, logs(w))
    assert.matches("ICE failed", cli.stderr, 1, true)
    assert.matches("iroh mode", cli.stderr, 1, true)
    -- The log line and the session line come one after the other: wait for the second.
    assert(w.srv:wait_output("\nSession %x+ failed: ICE failed", 30), logs(w))
    -- The server keeps running for the next client.
    assert.is_false(w.srv.done, logs(w))
  end)
end)
