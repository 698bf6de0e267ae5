-- tunnel.nostr.pool against the third-party relay of spec/nostr (relay.js, @nostr-relay/core):
-- publishing to several relays, subscriptions that survive a relay restart, dedupe, signature
-- checks, NIP-42 AUTH. Events are signed here (tunnel.core.nostr) or with nostr-tools. The
-- checks of what the pool does with messages no honest relay sends feed Pool:_message
-- directly. Deadlines only bound a wait; no result depends on how long something took.
local H = require "helper"
local nostr = require "tools.nostr"
local cjson = require "cjson"

if not nostr.guard("tunnel.nostr.pool") then
  return
end

local pool = require "tunnel.nostr.pool"
local core = require "tunnel.core.nostr"
local ckeys = require "tunnel.core.keys"
local keys = require "tunnel.keys"

local KIND = 21517 -- ephemeral: relayed to live subscriptions, never stored

local function new_key()
  local sk = keys.generate_nostr_secret()
  return { sk = sk, pk = ckeys.hex_encode(assert(keys.nostr_public(sk))) }
end

local ME = new_key()

local function sign(content, key)
  return core.sign({ kind = KIND, created_at = os.time(), content = content, tags = {
    { "t", "pool-spec" } } }, (key or ME).sk)
end

local pools = {}

--- A pool closed after the test.
local function new_pool(opts)
  local p = pool.new(opts)
  pools[#pools + 1] = p
  return p
end

local function wait(cond, what, timeout)
  H.wait_until(cond, timeout or 30)
  assert(cond(), "timed out waiting for " .. what)
end

--- Publish and wait for the callback's result.
local function publish(p, ev)
  local res
  p:publish(ev, function(r)
    res = r
  end)
  wait(function()
    return res
  end, "the publish result", 40)
  return res
end

--- Subscribe to our kind from `author`; returns the sub and a record of what arrived:
-- got = { {ev, url} }, eose = { [url] = count }.
local function watch(p, author)
  local rec = { got = {}, eose = {} }
  rec.sub = p:subscribe({ { kinds = { KIND }, authors = { (author or ME).pk } } },
    function(ev, url)
      rec.got[#rec.got + 1] = { ev = ev, url = url }
    end,
    function(url)
      rec.eose[url] = (rec.eose[url] or 0) + 1
    end)
  return rec
end

local function got_id(rec, id)
  local n = 0
  for _, g in ipairs(rec.got) do
    if g.ev.id == id then
      n = n + 1
    end
  end
  return n
end

--- Count what reached the pool from the relays, before dedupe: raw[subid][id] = n.
local function count_raw(p)
  local raw = {}
  local class_event = getmetatable(p).__index._event
  p._event = function(self, r, subid, ev)
    if type(subid) == "string" and type(ev) == "table" and ev.id then
      raw[subid] = raw[subid] or {}
      raw[subid][ev.id] = (raw[subid][ev.id] or 0) + 1
    end
    return class_event(self, r, subid, ev)
  end
  return raw
end

local function dead_url()
  return "ws://127.0.0.1:" .. H.free_port()
end

describe("tunnel.nostr.pool", function()
  local r1, r2

  lazy_setup(function()
    r1 = nostr.start_relay({ log = true })
    r2 = nostr.start_relay({ log = true })
  end)

  lazy_teardown(function()
    nostr.stop_all()
    H.cleanup()
  end)

  after_each(function()
    for _, p in ipairs(pools) do
      p:close()
    end
    pools = {}
    H.wait_until(function()
      return false
    end, 0.1) -- let the closing handshakes go out
  end)

  it("checks its options", function()
    local function err(opts)
      local ok, e = pcall(pool.new, opts)
      assert.is_false(ok)
      return e
    end
    assert.matches("options table expected", err(nil), 1, true)
    assert.matches("unknown option 'relay'", err({ relay = { r1.url } }), 1, true)
    assert.matches("at least one ws:// or wss:// URL", err({ relays = {} }), 1, true)
    assert.matches("relay 2 (http://x) is not a ws:// or wss:// URL",
      err({ relays = { r1.url, "http://x" } }), 1, true)
    assert.matches("secret must be a 32-byte key", err({ relays = { r1.url }, secret = "x" }), 1,
      true)
    assert.matches("option 'connect_ms' must be a number",
      err({ relays = { r1.url }, connect_ms = "5" }), 1, true)
    -- The same URL twice is one relay.
    local p = new_pool({ relays = { r1.url, r1.url } })
    assert.equal(1, #p:status())
  end)

  it("publishes to every relay and delivers an event once however many relays carry it",
    function()
      local p = new_pool({ relays = { r1.url, r2.url } })
      local raw = count_raw(p)
      local rec = watch(p)
      wait(function()
        return rec.eose[r1.url] and rec.eose[r2.url]
      end, "EOSE from both relays")
      assert.equal(2, p:open_count())
      -- Another pool publishes to both.
      local q = new_pool({ relays = { r1.url, r2.url } })
      local ev = sign("to both")
      local res = publish(q, ev)
      assert.equal(2, res.accepted, cjson.encode(res))
      assert.same({}, res.failed)
      assert.is_true(res.results[r1.url].ok)
      assert.is_true(res.results[r2.url].ok)
      -- Both copies reached the pool; the subscriber saw one.
      wait(function()
        return (raw[rec.sub.id] or {})[ev.id] == 2
      end, "both relays' copies")
      assert.equal(1, got_id(rec, ev.id))
      assert.equal(1, #rec.got)
      -- An event only one relay carries comes from that relay (published with nostr-tools).
      local only = nostr.tool("sign", ckeys.hex_encode(ME.sk), { kind = KIND, content = "r2",
        tags = { { "t", "pool-spec" } } })
      assert.is_true(nostr.tool("publish", r2.url, only).ok)
      wait(function()
        return got_id(rec, only.id) == 1
      end, "the event published on r2 only")
      assert.equal(r2.url, rec.got[2].url)
      assert.equal("r2", rec.got[2].ev.content)
    end)

  it("speaks wss:// to a relay with a private CA, and refuses an unknown certificate",
    function()
      -- A self-signed certificate for 127.0.0.1, made with GnuTLS's certtool.
      local dir = H.tmpdir()
      local key, cert, tmpl = dir .. "/key.pem", dir .. "/cert.pem", dir .. "/cert.cfg"
      H.write_file(tmpl, 'cn = "127.0.0.1"\nip_address = "127.0.0.1"\nexpiration_days = 2\n' ..
        "tls_www_server\nca\ncert_signing_key\n")
      assert.equal(0, H.spawn({ "certtool", "--generate-privkey", "--key-type", "ecdsa",
        "--outfile", key }):wait(30).code)
      local made = H.spawn({ "certtool", "--generate-self-signed", "--load-privkey", key,
        "--template", tmpl, "--outfile", cert }):wait(30)
      assert.equal(0, made.code, made.stderr)
      local r = nostr.start_relay({ tls_cert = cert, tls_key = key })
      assert.matches("^wss://127%.0%.0%.1:%d+$", r.url)
      local p = new_pool({ relays = { r.url }, cafile = cert })
      local rec = watch(p)
      wait(function()
        return rec.eose[r.url]
      end, "EOSE over wss")
      local res = publish(p, sign("over TLS"))
      assert.equal(1, res.accepted, cjson.encode(res))
      -- Without the CA the certificate is not trusted: the relay never opens.
      local states = {}
      local q = new_pool({ relays = { r.url }, on_status = function(_, state, why)
        states[#states + 1] = state .. " " .. tostring(why)
      end })
      wait(function()
        return #states >= 2
      end, "a failed attempt")
      assert.equal(0, q:open_count())
      assert.matches("waiting .*TLS", table.concat(states, "\n"))
      r.stop()
    end)

  it("gives an event to every subscription it matches", function()
    local p = new_pool({ relays = { r1.url } })
    local raw = count_raw(p)
    local a, b = watch(p), watch(p)
    wait(function()
      return a.eose[r1.url] and b.eose[r1.url]
    end, "EOSE for both subscriptions")
    local ev = sign("two subscriptions")
    assert.equal(1, publish(p, ev).accepted)
    wait(function()
      return (raw[a.sub.id] or {})[ev.id] and (raw[b.sub.id] or {})[ev.id]
    end, "the relay's copy for each subscription")
    assert.equal(1, got_id(a, ev.id), "first subscription")
    assert.equal(1, got_id(b, ev.id), "second subscription")
  end)

  it("stops delivering to a closed subscription and tells the relays", function()
    local p = new_pool({ relays = { r1.url } })
    local a, b = watch(p), watch(p)
    wait(function()
      return a.eose[r1.url] and b.eose[r1.url]
    end, "EOSE for both subscriptions")
    a.sub:close()
    a.sub:close() -- twice is harmless
    wait(function()
      for _, m in ipairs(r1.messages()) do
        if type(m) == "table" and m[1] == "CLOSE" and m[2] == a.sub.id then
          return true
        end
      end
    end, "CLOSE at the relay")
    local ev = sign("after close")
    assert.equal(1, publish(p, ev).accepted)
    wait(function()
      return got_id(b, ev.id) == 1
    end, "delivery to the open subscription")
    assert.equal(0, #a.got)
  end)

  it("resubscribes after a relay restarts, with its state reported on the way", function()
    local r = nostr.start_relay({})
    local port = r.port
    local states = {}
    local p = new_pool({ relays = { r.url }, backoff_min_ms = 50, backoff_max_ms = 200,
      on_status = function(url, state, why)
        states[#states + 1] = { url = url, state = state, why = why }
      end })
    local rec = watch(p)
    wait(function()
      return rec.eose[r.url] == 1
    end, "the first EOSE")
    assert.equal("open", p:status()[1].state)
    r.stop()
    wait(function()
      return p:status()[1].state ~= "open"
    end, "the pool to notice the relay went away")
    r = nostr.start_relay({ port = port })
    wait(function()
      return rec.eose[r.url] == 2
    end, "EOSE after the reconnection")
    local ev = nostr.tool("sign", ckeys.hex_encode(ME.sk), { kind = KIND, content = "again" })
    assert.is_true(nostr.tool("publish", r.url, ev).ok)
    wait(function()
      return got_id(rec, ev.id) == 1
    end, "the event after the restart")
    -- connecting, open, then waiting (with why) at least once, then open again.
    local seq, waiting = {}, nil
    for _, s in ipairs(states) do
      assert.equal(r.url, s.url)
      if seq[#seq] ~= s.state then
        seq[#seq + 1] = s.state
      end
      if s.state == "waiting" then
        waiting = waiting or s.why
      end
    end
    assert.same({ "connecting", "open" }, { seq[1], seq[2] })
    assert.equal("open", seq[#seq])
    assert.is_string(waiting)
    assert.is_string(p:status()[1].last_error)
  end)

  it("sends a publish made while connecting once the relay is open", function()
    local p = new_pool({ relays = { r1.url } })
    assert.equal("connecting", p:status()[1].state)
    local ev = sign("queued")
    local res = publish(p, ev)
    assert.equal(1, res.accepted, cjson.encode(res))
    local seen = false
    for _, m in ipairs(r1.messages()) do
      if type(m) == "table" and m[1] == "EVENT" and type(m[2]) == "table" and
        m[2].id == ev.id then
        seen = true
      end
    end
    assert.is_true(seen)
  end)

  it("reports a publish that no relay took, and why", function()
    local url = dead_url()
    local p = new_pool({ relays = { url } })
    local res = publish(p, sign("nowhere"))
    assert.equal(0, res.accepted)
    assert.equal(1, #res.failed)
    assert.matches(url .. ": ", res.failed[1], 1, true)
    assert.matches("cannot connect", res.failed[1], 1, true)
    assert.is_false(res.results[url].ok)
  end)

  it("drops events that fail verification, and copies of one it delivered", function()
    local p = new_pool({ relays = { r1.url } })
    local rec = watch(p)
    wait(function()
      return rec.eose[r1.url]
    end, "EOSE")
    local r = p.relays[r1.url]
    local function feed(ev, subid)
      p:_message(r, '["EVENT",' .. cjson.encode(subid or rec.sub.id) .. ',' .. nostr.json(ev)
        .. "]")
    end
    local ev = sign("genuine")
    local copy = function()
      return cjson.decode(nostr.json(ev))
    end
    local tampered = copy()
    tampered.content = "forged"
    local badsig = copy()
    badsig.sig = (badsig.sig:sub(1, 1) == "0" and "1" or "0") .. badsig.sig:sub(2)
    local stranger = core.sign({ kind = KIND, created_at = os.time(), content = "genuine",
      tags = { { "t", "pool-spec" } } }, new_key().sk)
    local wrong_id = copy()
    wrong_id.id = stranger.id
    feed(tampered)
    feed(badsig)
    feed(wrong_id)
    feed({ id = ev.id, content = "no other fields" })
    p:_message(r, "not json")
    p:_message(r, '{"EVENT":1}')
    p:_message(r, '["EVENT","' .. rec.sub.id .. '","not an event"]')
    assert.equal(0, #rec.got)
    -- A forged copy came first under the genuine id; the genuine one still gets through, once.
    feed(ev)
    feed(ev)
    assert.equal(1, #rec.got)
    assert.equal("genuine", rec.got[1].ev.content)
    assert.equal(r1.url, rec.got[1].url)
    -- A valid event for a subscription id the pool does not have is ignored.
    feed(sign("unknown subscription"), "nobody")
    assert.equal(1, #rec.got)
    -- A stranger's validly signed event is delivered: checking the author is the caller's job.
    feed(stranger)
    assert.equal(2, #rec.got)
  end)

  it("authenticates (NIP-42) to a relay that demands it before taking events", function()
    local ra = nostr.start_relay({ auth = true, log = true })
    -- Without a key the pool cannot: the relay's refusal is reported.
    local anon = new_pool({ relays = { ra.url } })
    local res = publish(anon, sign("anonymous"))
    assert.equal(0, res.accepted)
    assert.matches("auth%-required:", res.failed[1])
    -- With a key, the event is refused, the pool answers the challenge, and it goes again.
    local p = new_pool({ relays = { ra.url }, secret = ME.sk })
    local rec = watch(p)
    local ev = sign("authenticated")
    res = publish(p, ev)
    assert.equal(1, res.accepted, cjson.encode(res))
    assert.is_true(p:status()[1].authed)
    wait(function()
      return got_id(rec, ev.id) == 1
    end, "our own event through our subscription")
    local auth
    for _, m in ipairs(ra.messages()) do
      if type(m) == "table" and m[1] == "AUTH" and type(m[2]) == "table" then
        auth = m[2]
      end
    end
    assert(auth, "no AUTH message at the relay")
    assert.equal(22242, auth.kind)
    assert.equal(ME.pk, auth.pubkey)
    assert.is_true(core.verify(auth))
    local tags = {}
    for _, t in ipairs(auth.tags) do
      tags[t[1]] = t[2]
    end
    assert.equal(ra.url, tags.relay)
    assert.is_string(tags.challenge)
  end)

  it("sends a refused REQ and EVENT again once its AUTH is accepted", function()
    -- A relay that asks for AUTH on subscriptions too (relay.js does not): its messages are
    -- fed to the pool, and what the pool sends is recorded.
    local url = dead_url()
    local p = new_pool({ relays = { url }, secret = ME.sk, backoff_min_ms = 600000,
      backoff_max_ms = 600000 })
    local r = p.relays[url]
    wait(function()
      return r.state == "waiting"
    end, "the first connection attempt to fail")
    local sent = {}
    r.conn = {
      send = function(_, text)
        sent[#sent + 1] = cjson.decode(text)
        return true
      end,
      close = function() end,
    }
    p:_opened(r)
    local rec = watch(p)
    assert.equal("REQ", sent[#sent][1])
    assert.equal(rec.sub.id, sent[#sent][2])
    p:_message(r, cjson.encode({ "CLOSED", rec.sub.id, "auth-required: log in first" }))
    local ev = sign("needs auth")
    local res
    p:publish(ev, function(x)
      res = x
    end)
    assert.equal("EVENT", sent[#sent][1])
    assert.equal(ev.id, sent[#sent][2].id)
    p:_message(r, cjson.encode({ "OK", ev.id, false, "auth-required: log in first" }))
    assert.is_nil(res)
    local n = #sent
    p:_message(r, cjson.encode({ "AUTH", "challenge-42" }))
    assert.equal(n + 1, #sent)
    local auth = sent[#sent][2]
    assert.equal("AUTH", sent[#sent][1])
    assert.is_true(core.verify(auth))
    assert.equal(22242, auth.kind)
    assert.same({ { "relay", url }, { "challenge", "challenge-42" } }, auth.tags)
    assert.is_false(p:status()[1].authed)
    p:_message(r, cjson.encode({ "OK", auth.id, true, "" }))
    assert.is_true(p:status()[1].authed)
    local again = {}
    for i = n + 2, #sent do
      again[#again + 1] = sent[i][1] .. ":" .. (sent[i][1] == "EVENT" and sent[i][2].id or
        sent[i][2])
    end
    table.sort(again)
    assert.same({ "EVENT:" .. ev.id, "REQ:" .. rec.sub.id }, again)
    p:_message(r, cjson.encode({ "OK", ev.id, true, "" }))
    assert.equal(1, res and res.accepted)
  end)

  it("backs off further each time a relay accepts and drops the connection at once", function()
    -- A WebSocket server that closes every connection as soon as it is open.
    local script = table.concat({
      "const { WebSocketServer } = require(process.argv[1]);",
      "const w = new WebSocketServer({ host: '127.0.0.1', port: 0 });",
      "let n = 0;",
      "w.on('listening', () => console.log('PORT ' + w.address().port));",
      "w.on('connection', ws => { n++; console.log('CONN ' + n); ws.close(1011, 'go away'); });",
      "process.stdin.on('end', () => process.exit(0)); process.stdin.resume();",
    }, "\n")
    local srv = H.spawn({ "node", "-e", script, nostr.DIR .. "/node_modules/ws" },
      { stdin = true })
    local ok, err = pcall(function()
      wait(function()
        return srv.stdout:match("PORT %d+") or srv.done
      end, "the closing server")
      local url = "ws://127.0.0.1:" .. assert(srv.stdout:match("PORT (%d+)"), srv.stderr)
      local p = new_pool({ relays = { url }, backoff_min_ms = 20, backoff_max_ms = 600000 })
      wait(function()
        return srv.stdout:find("CONN 4\n", 1, true) and p:status()[1].state == "waiting"
      end, "four connections")
      -- Each short-lived connection counts as a failure, so the delay doubles each time.
      assert.is_true(p.relays[url].failures >= 3, "failures in a row: " ..
        tostring(p.relays[url].failures))
    end)
    srv:close_stdin()
    srv:kill("sigterm")
    srv:wait(10)
    assert(ok, err)
  end)

  it("reports its relays, and refuses to publish once closed", function()
    local url = dead_url()
    local p = new_pool({ relays = { r1.url, url } })
    wait(function()
      return p:open_count() == 1 and p:status()[2].state == "waiting"
    end, "one relay open and one waiting")
    local st = p:status()
    assert.equal(r1.url, st[1].url)
    assert.equal("open", st[1].state)
    assert.is_false(st[1].authed)
    assert.equal(url, st[2].url)
    assert.matches("cannot connect", st[2].last_error, 1, true)
    p:close()
    p:close()
    assert.equal(0, p:open_count())
    for _, s in ipairs(p:status()) do
      assert.equal("closed", s.state)
    end
    local res
    p:publish(sign("late"), function(x)
      res = x
    end)
    assert.same({ accepted = 0, results = {}, failed = { "the pool is closed" } }, res)
  end)
end)
