--- tunnel.nostr: nostr mode. The ICE offer and answer of manual mode travel as Nostr events
-- between two fixed key pairs, through relays, encrypted to the peer (NIP-44 v2); then ICE finds
-- a path and QUIC runs over it exactly as in manual mode.
--
--   local c = assert(nostr.client {
--     secret = my_nsec_key, peer = server_npub_key, relays = { "wss://relay.example" },
--     source = "tcp://127.0.0.1:22", target = "127.0.0.1:2222",
--     on_connected = function(c, info) print(info.kind) end,
--   })
--
-- The flow (docs/nostr.md): the client publishes a REQUEST (its ICE credentials and
-- candidates, the source it wants, a session id) and republishes it with backoff until the
-- server answers with an OFFER (the server's ICE description and the key QUIC pins) or a
-- REJECT; the client then publishes an ANSWER that confirms the session. The server starts its
-- checks as soon as its OFFER is out.
local manual = require "tunnel.manual"
local pool_mod = require "tunnel.nostr.pool"
local sigblock = require "tunnel.sigblock"
local server_mod = require "tunnel.server"
local core = require "tunnel.core.nostr"
local ckeys = require "tunnel.core.keys"
local host = require "tunnel.host"
local log = require("tunnel.log").group("nostr")
local cjson = require("cjson").new()
local uv = require "luv"

local M = {}

--- The event kind of our signaling: in the ephemeral range (20000-29999), which relays pass
-- on to subscribers without storing, and used by no NIP we know of.
M.KIND = 25517
M.VERSION = 1
--- A request older (or newer) than this many seconds is ignored: it is a replay, or the
-- clocks are too far apart for the rest to work.
M.MAX_REQUEST_AGE = 30
--- The client's backoff between republished requests is capped here (seconds).
M.REPUBLISH_MAX = 60
--- Session ids the server remembers, to answer a republished request again instead of
-- starting a second session (and to refuse replays): how long and how many.
M.SEEN_TTL = 600
M.SEEN_MAX = 1000
--- A server session whose client has not connected this long after the offer ends.
M.CONNECT_TIMEOUT = 60
--- Who sends the first ICE check matters behind a router that records unsolicited packets
-- (the conntrack pitfall, docs/ice.md): the side behind it must send first. Round 1 lets the
-- server lead (it starts as soon as its offer is out); when no path is found ROUND_MS after
-- the offer, the client starts round 2 on a fresh socket with fresh credentials and leads,
-- while the server's fresh socket holds its first checks LEAD_HOLD_MS, long enough for the
-- offer to cross the relays. Fresh sockets on both sides mean fresh ports, so neither the stale
-- entry of round 1 nor the mapping it spoiled (Linux keeps one public port per local socket) is
-- in the way.
M.ROUNDS = 2
M.ROUND_MS = 10000
M.LEAD_HOLD_MS = 1500
-- The last round's ICE gives up this long after it started (about 40 s in all).
M.LAST_ROUND_FAIL_MS = 30000

local COMMON = {
  secret = "string", peer = "string", relays = "table", cafile = "string",
  stun_servers = "table", hosts = "table", transport = "table", ice_timing = "table",
  udp_idle_timeout = "number", on_status = "function",
}
local CLIENT_OPTIONS = { source = "string", target = "string", republish_interval = "number",
  max_wait = "number", on_connected = "function", on_failed = "function",
  on_closed = "function" }
local SERVER_OPTIONS = { allowed_tcp = "table", allowed_udp = "table", max_sessions = "number",
  on_session = "function" }
for k, v in pairs(COMMON) do
  CLIENT_OPTIONS[k], SERVER_OPTIONS[k] = v, v
end

local function call(name, fn, ...)
  host.hook(log, name, fn, ...)
end

local hex = ckeys.hex_encode

--- The pair tag: the same 32 hex characters for both sides, from both public keys (raw, 32
-- bytes each), so each side's subscription matches only this pair's events.
function M.pair_tag(a, b)
  if a > b then
    a, b = b, a
  end
  return hex(core.sha256("tunnel-nostr-pair/1" .. a .. b)):sub(1, 32)
end

local function check_common(what, opts, known)
  server_mod.check_options(what, opts, known, 3)
  if type(opts.secret) ~= "string" or #opts.secret ~= 32 then
    error(what .. ": secret must be the 32-byte Nostr secret key", 3)
  end
  if type(opts.peer) ~= "string" or #opts.peer ~= 32 then
    error(what .. ": peer must be the peer's 32-byte Nostr public key", 3)
  end
  if not opts.relays or #opts.relays == 0 then
    error(what .. ": relays must list at least one ws:// or wss:// URL", 3)
  end
end

-- What both roles share: keys, the pool, the subscription, sealing and opening messages.
-- `since`: the oldest events to receive (relays do not store ours, so anything older than our
-- start can only be a replay).
local function channel(self, opts, since)
  local me, err = ckeys.nostr_public(opts.secret)
  if not me then
    return nil, "the Nostr secret key is not valid: " .. tostring(err)
  end
  if me == opts.peer then
    return nil, "the peer's key is this side's own key: give the other side's npub"
  end
  local conv, cerr = core.conversation_key(opts.secret, opts.peer)
  if not conv then
    return nil, "cannot derive the key shared with the peer: " .. tostring(cerr)
  end
  self.secret, self.peer, self.me, self.conv = opts.secret, opts.peer, me, conv
  self.me_hex, self.peer_hex = hex(me), hex(opts.peer)
  self.pair = M.pair_tag(me, opts.peer)
  self.npub = ckeys.npub_encode(me)
  self.peer_npub = ckeys.npub_encode(opts.peer)
  self.relay_urls = opts.relays
  self.pool = pool_mod.new({
    relays = opts.relays, secret = opts.secret, cafile = opts.cafile,
    on_status = function(url, state, why)
      call("on_status", opts.on_status, url, state, why)
    end,
  })
  self.sub = self.pool:subscribe({ {
    kinds = { M.KIND }, authors = { self.peer_hex }, ["#p"] = { self.me_hex },
    ["#t"] = { self.pair }, since = since,
  } }, function(ev, url)
    self:_event(ev, url)
  end)
  return true
end

-- Seal `msg` (a table; v, type and ts are added) into a signed event for the peer.
local function seal(self, mtype, msg)
  local body = {}
  for k, v in pairs(msg) do
    body[k] = v
  end
  body.kind = nil
  body.v, body.type, body.ts = M.VERSION, mtype, os.time()
  local content = assert(core.encrypt(self.conv, cjson.encode(body)))
  return core.sign({
    kind = M.KIND, created_at = os.time(), content = content,
    tags = { { "p", self.peer_hex }, { "t", self.pair } },
  }, self.secret)
end

-- Open an event from the pool: the decoded message, or nil and why it is not one of ours.
local function open(self, ev)
  if ev.pubkey ~= self.peer_hex then
    return nil, "not from the peer"
  end
  if ev.kind ~= M.KIND then
    return nil, "another kind"
  end
  local text, err = core.decrypt(self.conv, ev.content or "")
  if not text then
    return nil, "cannot decrypt: " .. tostring(err)
  end
  local ok, msg = pcall(cjson.decode, text)
  if not ok or type(msg) ~= "table" then
    return nil, "not a JSON object"
  end
  if msg.v ~= M.VERSION then
    return nil, "protocol version " .. tostring(msg.v) .. " (this tunnel speaks " ..
      M.VERSION .. ": use the same version on both sides)"
  end
  if type(msg.type) ~= "string" or type(msg.ts) ~= "number" then
    return nil, "no type or timestamp"
  end
  return msg
end

local function publish(self, mtype, msg, what)
  local ev = seal(self, mtype, msg)
  self.pool:publish(ev, function(res)
    if res.accepted == 0 then
      log.warn("%s was not accepted by any relay: %s", what,
        #res.failed > 0 and table.concat(res.failed, "; ") or "no relay connected")
    else
      log.debug("%s accepted by %d relay(s)", what, res.accepted)
    end
  end)
  return ev
end

---------------------------------------------------------------------------------------------------
-- Client

local Client = {}
Client.__index = Client
Client.__name = "tunnel.nostr.client"

--- Start a nostr-mode client: listeners bound, relays connecting, candidates gathering; the
-- request goes out once they are gathered.
function M.client(opts)
  check_common("tunnel.nostr.client", opts, CLIENT_OPTIONS)
  if not opts.source or not opts.target then
    error("tunnel.nostr.client: source and target are required", 2)
  end
  local self = setmetatable({
    on_connected = opts.on_connected, on_failed = opts.on_failed, on_closed = opts.on_closed,
    republish = (opts.republish_interval or 5) * 1000, max_wait = (opts.max_wait or 120) * 1000,
    started = uv.hrtime(), round = 1,
  }, Client)
  local ok, err = channel(self, opts, os.time() - M.MAX_REQUEST_AGE)
  if not ok then
    return nil, err
  end
  local m, merr = manual.client({
    source = opts.source, target = opts.target, stun_servers = opts.stun_servers,
    hosts = opts.hosts, transport = opts.transport, udp_idle_timeout = opts.udp_idle_timeout,
    ice_timing = opts.ice_timing,
    on_offer_fields = function(fields)
      self:_request(fields)
    end,
    on_connected = function(_, info)
      self.connected = true
      if self.round_timer and not self.round_timer:is_closing() then
        self.round_timer:close()
      end
      info.round = self.round
      info.after_start_ms = (uv.hrtime() - self.started) / 1e6
      log.info("connected to the server %s via %s, %.0f ms after start", self.peer_npub,
        info.kind, info.after_start_ms)
      self:_quiet()
      call("on_connected", self.on_connected, self, info)
    end,
    on_failed = function(_, reason)
      self:_finish(reason)
    end,
    on_closed = function(_, reason)
      self:_finish(reason)
    end,
  })
  if not m then
    self.pool:close()
    return nil, merr
  end
  self.manual = m
  return self
end

function Client:_request(fields)
  if self.done then
    return
  end
  local msg = fields
  if self.round > 1 then
    msg = {}
    for k, v in pairs(fields) do
      msg[k] = v
    end
    msg.lead = "client"
  end
  self.request = msg
  self.session = fields.session
  self.answered = false
  if self.timer and not self.timer:is_closing() then
    self.timer:close()
  end
  local timer = uv.new_timer()
  self.timer = timer
  local wait = self.republish
  local function send()
    if self.done or self.answered or self.timer ~= timer then
      return
    end
    local elapsed = (uv.hrtime() - self.started) / 1e6
    if elapsed >= self.max_wait then
      return self:_finish(self:_no_answer(elapsed))
    end
    publish(self, "request", msg, "the request")
    log.info("request %s%s published (%d of %d relay(s) connected); waiting for the server",
      self.session, self.round > 1 and (" (round " .. self.round .. ", we lead)") or "",
      self.pool:open_count(), #self.relay_urls)
    -- Republish until answered: the server may have started after us, or a relay may have
    -- dropped the event. Each copy is a new event, so the relays pass it on again.
    local next_in = math.min(wait, self.max_wait - elapsed)
    wait = math.min(wait * 2, M.REPUBLISH_MAX * 1000)
    timer:start(math.max(1, math.floor(next_in)), 0, send)
  end
  send()
end

-- No path ROUND_MS after the offer: ask for a new session in which we send first.
function Client:_next_round()
  if self.done or self.connected or self.round >= M.ROUNDS then
    return
  end
  local old = self.session
  local ok, err = self.manual:restart({ hold_ms = 0, fail_ms = M.LAST_ROUND_FAIL_MS })
  if not ok then
    log.debug("no second round: %s", tostring(err))
    return
  end
  self.round = self.round + 1
  log.info("no path after %.0f s with the server leading; trying again with this side " ..
    "leading (round %d)", M.ROUND_MS / 1000, self.round)
  publish(self, "cancel", { session = old }, "the cancellation")
end

function Client:_no_answer(elapsed)
  local up = {}
  for _, st in ipairs(self.pool:status()) do
    if st.state == "open" then
      up[#up + 1] = st.url
    end
  end
  if #up == 0 then
    local why = {}
    for _, st in ipairs(self.pool:status()) do
      why[#why + 1] = st.url .. " (" .. tostring(st.last_error or st.state) .. ")"
    end
    return string.format("no Nostr relay could be reached in %.0f s: %s; check --relay",
      elapsed / 1000, table.concat(why, ", "))
  end
  return string.format("no answer from the server %s after %.0f s: is `tunnel server nostr` " ..
    "running with --peer-npub %s, and does it use one of these relays: %s?", self.peer_npub,
    elapsed / 1000, self.npub, table.concat(up, ", "))
end

function Client:_event(ev)
  if self.done or self.answered then
    return
  end
  local msg, why = open(self, ev)
  if not msg then
    log.debug("event %s ignored: %s", tostring(ev.id), why)
    return
  end
  if msg.session ~= self.session or (msg.type ~= "offer" and msg.type ~= "reject") then
    return
  end
  if msg.type == "reject" then
    local fields = sigblock.fields("reject", msg)
    return self:_finish("the server refused the request: " .. (fields and fields.reason or
      "(no readable reason)"))
  end
  local fields, name, ferr = sigblock.fields("answer", msg)
  if not fields then
    return self:_finish(string.format("the server's offer is unusable: field '%s' %s", name,
      ferr))
  end
  local ok, err = self.manual:answer(fields)
  if not ok then
    return self:_finish("the server's offer is unusable: " .. tostring(err))
  end
  self.answered = true
  self.server_id = fields.server_id
  if self.timer and not self.timer:is_closing() then
    self.timer:close()
  end
  self.offer_ms = (uv.hrtime() - self.started) / 1e6
  log.info("offer from the server received after %.0f ms; looking for a path", self.offer_ms)
  publish(self, "answer", { session = self.session }, "the answer")
  if self.round < M.ROUNDS then
    local t = uv.new_timer()
    self.round_timer = t
    t:start(M.ROUND_MS, 0, function()
      t:close()
      if self.round_timer == t then
        self.round_timer = nil
        self:_next_round()
      end
    end)
  end
end

-- Once connected, signaling is over: leave the relays (after the answer had time to go out).
function Client:_quiet()
  if self.quiet_timer then
    return
  end
  self.quiet_timer = uv.new_timer()
  self.quiet_timer:start(1000, 0, function()
    self.quiet_timer:close()
    self.pool:close()
  end)
end

--- The listen addresses: { {proto=, listen=, source=} }.
function Client:forwards()
  return self.manual:forwards()
end

function Client:stats()
  return self.manual:stats()
end

function Client:relays()
  return self.pool:status()
end

function Client:_finish(reason)
  if self.done then
    return
  end
  self.done = true
  self.reason = reason
  if self.timer and not self.timer:is_closing() then
    self.timer:close()
  end
  for _, k in ipairs({ "quiet_timer", "round_timer" }) do
    if self[k] and not self[k]:is_closing() then
      self[k]:close()
    end
  end
  self.pool:close()
  if self.manual then
    self.manual:close()
  end
  if self.connected then
    call("on_closed", self.on_closed, self, reason)
  else
    call("on_failed", self.on_failed, self, reason)
  end
end

function Client:close()
  self:_finish("closed")
end

---------------------------------------------------------------------------------------------------
-- Server

local Server = {}
Server.__index = Server
Server.__name = "tunnel.nostr.server"

--- Start a nostr-mode server: it listens on the relays for the peer's requests and serves up
-- to max_sessions (0: no limit) sessions at once, each with its own ICE and QUIC.
function M.server(opts)
  check_common("tunnel.nostr.server", opts, SERVER_OPTIONS)
  local self = setmetatable({
    sessions = {}, seen = {}, active = 0, max_sessions = opts.max_sessions or 10,
    on_session = opts.on_session,
    session_opts = {
      allowed_tcp = opts.allowed_tcp or {}, allowed_udp = opts.allowed_udp or {},
      stun_servers = opts.stun_servers, hosts = opts.hosts, transport = opts.transport,
      udp_idle_timeout = opts.udp_idle_timeout, ice_timing = opts.ice_timing,
    },
  }, Server)
  -- Requests made before this server started are replays (or too late): a restarted server
  -- must not serve a request captured from its previous life.
  local ok, err = channel(self, opts, os.time())
  if not ok then
    return nil, err
  end
  self.sweeper = uv.new_timer()
  self.sweeper:start(60000, 60000, function()
    self:_sweep()
  end)
  return self
end

function Server:_sweep()
  local now = os.time()
  for id, s in pairs(self.seen) do
    if s.done and now - s.at > M.SEEN_TTL then
      self.seen[id] = nil
    end
  end
end

function Server:_count_seen()
  local n, oldest, oldest_at = 0, nil, math.huge
  for id, s in pairs(self.seen) do
    n = n + 1
    if s.done and s.at < oldest_at then
      oldest, oldest_at = id, s.at
    end
  end
  return n, oldest
end

function Server:_event(ev)
  if self.closed then
    return
  end
  local msg, why = open(self, ev)
  if not msg then
    log.debug("event %s ignored: %s", tostring(ev.id), why)
    return
  end
  if msg.type == "answer" then
    local s = type(msg.session) == "string" and self.seen[msg.session]
    if s and not s.confirmed then
      s.confirmed = true
      log.info("session %s: the client has the offer", msg.session)
    end
    return
  end
  if msg.type == "cancel" then
    local s = type(msg.session) == "string" and self.sessions[msg.session]
    if s and not s.connected and s.manual then
      log.info("session %s: the client gave it up for a new round", msg.session)
      s.manual:close()
    end
    return
  end
  if msg.type ~= "request" then
    return
  end
  local now = os.time()
  local age = now - msg.ts
  if math.abs(age) > M.MAX_REQUEST_AGE or math.abs(now - (ev.created_at or 0)) >
    M.MAX_REQUEST_AGE then
    log.info("request ignored: made %d s %s (more than %d s: a replay, or a clock is off)",
      math.abs(age), age >= 0 and "ago" or "in the future", M.MAX_REQUEST_AGE)
    return
  end
  if type(msg.session) ~= "string" or not msg.session:match("^%x+$") or #msg.session ~= 16 then
    log.info("request ignored: it has no valid session id")
    return
  end
  local seen = self.seen[msg.session]
  if seen then
    -- The client republished: it did not get our reply (or it crossed it). Say it again,
    -- freshly signed; never start a second session for one id.
    if seen.reply then
      log.debug("session %s: request repeated; replying again", msg.session)
      publish(self, seen.reply_type, seen.reply, "the repeated " .. seen.reply_type)
    end
    return
  end
  local n, oldest = self:_count_seen()
  if n >= M.SEEN_MAX and oldest then
    self.seen[oldest] = nil
  end
  seen = { at = now }
  self.seen[msg.session] = seen
  if self.max_sessions > 0 and self.active >= self.max_sessions then
    return self:_reply(seen, "reject", { session = msg.session, reason = string.format(
      "the server is at capacity (%d/%d sessions); try again later", self.active,
      self.max_sessions) })
  end
  local fields, name, ferr = sigblock.fields("offer", msg)
  if not fields then
    return self:_reply(seen, "reject", { session = msg.session,
      reason = ("bad request: field '%s' %s"):format(name, ferr):sub(1, 512) })
  end
  -- A failure of ours must still answer the client, not leave it waiting for max_wait.
  local sok, serr = pcall(self._start, self, seen, fields, msg.lead == "client")
  if not sok then
    log.error("session %s: %s", msg.session, tostring(serr))
    if not seen.reply then
      self:_reply(seen, "reject", { session = msg.session,
        reason = "the server failed to start the session (internal error; see its log)" })
    end
  end
end

function Server:_reply(seen, mtype, msg)
  seen.reply_type, seen.reply = mtype, msg
  if mtype == "reject" then
    seen.done = true
    log.warn("session %s refused: %s", msg.session, msg.reason)
    call("on_session", self.on_session, self, { event = "rejected", session = msg.session,
      reason = msg.reason })
  end
  publish(self, mtype, msg, "the " .. mtype)
end

function Server:_start(seen, fields, client_leads)
  local id = fields.session
  local o = self.session_opts
  local timing = o.ice_timing
  if client_leads then
    -- The client sends first this round: hold our first checks until the offer has crossed
    -- the relays and the client's checks have opened its router.
    timing = {}
    for k, v in pairs(o.ice_timing or {}) do
      timing[k] = v
    end
    timing.hold_ms = M.LEAD_HOLD_MS
    timing.fail_ms = timing.fail_ms or M.LAST_ROUND_FAIL_MS
  end
  local s = { id = id, source = fields.source, started = uv.hrtime() }
  local function ended(ok, reason)
    if s.ended then
      return
    end
    s.ended = true
    seen.done = true
    seen.at = os.time()
    self.sessions[id] = nil
    self.active = self.active - 1
    if s.timer and not s.timer:is_closing() then
      s.timer:close()
    end
    log.info("session %s %s: %s", id, ok and "ended" or "failed", reason)
    call("on_session", self.on_session, self, { event = ok and "closed" or "failed",
      session = id, reason = reason })
  end
  local m, err = manual.server({
    allowed_tcp = o.allowed_tcp, allowed_udp = o.allowed_udp, stun_servers = o.stun_servers,
    hosts = o.hosts, transport = o.transport, udp_idle_timeout = o.udp_idle_timeout,
    ice_timing = timing,
    on_connected = function(_, info)
      s.connected = true
      info.session = id
      log.info("session %s: client connected via %s, serving %s", id, info.kind, info.source)
      call("on_session", self.on_session, self, { event = "connected", session = id,
        kind = info.kind, source = info.source, remote = info.remote })
    end,
    on_failed = function(_, reason)
      ended(false, reason)
    end,
    on_closed = function(_, reason)
      ended(true, reason)
    end,
  })
  if not m then
    seen.done = true
    return self:_reply(seen, "reject", { session = id,
      reason = ("the server cannot start a session: %s"):format(err):sub(1, 512) })
  end
  s.manual = m
  self.sessions[id] = s
  self.active = self.active + 1
  m:consider(fields, function(reply, rerr)
    if not reply then
      m:close()
      return self:_reply(seen, "reject", { session = id,
        reason = ("bad request: %s"):format(rerr):sub(1, 512) })
    end
    if reply.kind == "reject" then
      m:close()
      return self:_reply(seen, "reject", reply)
    end
    log.info("session %s: offer for %s published", id, fields.source)
    self:_reply(seen, "offer", reply)
    -- A client that never shows up must not hold a session slot.
    s.timer = uv.new_timer()
    s.timer:start(M.CONNECT_TIMEOUT * 1000, 0, function()
      s.timer:close()
      if not s.connected and not s.ended then
        m:close()
      end
    end)
  end)
end

--- { {session=, source=, connected=, age_s=} } for the live sessions.
function Server:list()
  local out = {}
  for id, s in pairs(self.sessions) do
    out[#out + 1] = { session = id, source = s.source, connected = s.connected == true,
      age_s = (uv.hrtime() - s.started) / 1e9 }
  end
  table.sort(out, function(a, b)
    return a.age_s > b.age_s
  end)
  return out
end

function Server:relays()
  return self.pool:status()
end

function Server:close()
  if self.closed then
    return
  end
  self.closed = true
  if not self.sweeper:is_closing() then
    self.sweeper:close()
  end
  self.pool:close()
  for _, s in pairs(self.sessions) do
    if s.manual then
      s.manual:close()
    end
  end
end

return M
