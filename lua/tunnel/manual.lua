--- tunnel.manual: manual mode. The client prints an offer block, the server answers it, the
-- user carries the blocks across by hand; then ICE finds a path and QUIC runs over it, with the
-- server's identity pinned to the key in its answer and the client's to the key in its offer.
--
--   local m = assert(manual.client {
--     source = "tcp://127.0.0.1:22", target = "127.0.0.1:2222", stun_servers = {},
--     on_offer = function(block) print(block) end,
--     on_connected = function(m, info) print(info.kind) end,
--   })
--   local ok, err, again = m:answer(text_pasted_by_the_user)
local client_mod = require "tunnel.client"
local server_mod = require "tunnel.server"
local ice = require "tunnel.ice"
local sigblock = require "tunnel.sigblock"
local keys = require "tunnel.keys"
local ckeys = require "tunnel.core.keys"
local addr = require "tunnel.addr"
local host = require "tunnel.host"
local log = require("tunnel.log").group("manual")
local uv = require "luv"

local M = {}

local COMMON = {
  stun_servers = "table", hosts = "table", transport = "table", ice_timing = "table",
  on_connected = "function", on_failed = "function", on_closed = "function",
}
local CLIENT_OPTIONS = { source = "string", target = "string", on_offer = "function",
  on_offer_fields = "function", udp_idle_timeout = "number" }
local SERVER_OPTIONS = { allowed_tcp = "table", allowed_udp = "table", secret = "string",
  secret_file = "string", udp_idle_timeout = "number", on_answer = "function" }
for k, v in pairs(COMMON) do
  CLIENT_OPTIONS[k], SERVER_OPTIONS[k] = v, v
end

local function call(name, fn, ...)
  host.hook(log, name, fn, ...)
end

M.HINT_FAILED = "a direct path could not be found: both sides may be behind NATs that " ..
  "change ports per destination (symmetric), or a firewall drops UDP. iroh mode falls back " ..
  "to a relay and works through any NAT"

-- The server learns the client's candidates first (from the offer) and starts checking at
-- once, before its answer is even printed; the client holds its own first checks back a
-- little, so that the server's first check has usually opened the server's NAT and the
-- client's answers it with a triggered check. So the server's packets are the first through
-- its NAT whether the user pastes the answer in a minute or (in tests) in a millisecond, and
-- a server-side router that remembers unsolicited packets (the conntrack pitfall,
-- docs/ice.md) never sees the client's first.
M.CLIENT_HOLD_MS = 100

local function with_hold(timing, hold)
  local t = {}
  for k, v in pairs(timing or {}) do
    t[k] = v
  end
  if t.hold_ms == nil then
    t.hold_ms = hold
  end
  return t
end

---------------------------------------------------------------------------------------------------
-- Client

local Client = {}
Client.__index = Client
Client.__name = "tunnel.manual.client"

--- Start a manual-mode client: listeners bound, candidates gathered; on_offer(block) follows.
function M.client(opts)
  server_mod.check_options("tunnel.manual.client", opts, CLIENT_OPTIONS, 2)
  if not opts.source or not opts.target then
    error("tunnel.manual.client: source and target are required", 2)
  end
  local src, serr = addr.parse_source(opts.source)
  if not src then
    return nil, "source: " .. serr
  end
  local secret = keys.generate_secret()
  local self = setmetatable({
    source = src.text, token = keys.generate_token(), session = sigblock.new_session(),
    client_id = keys.endpoint_id(secret), on_connected = opts.on_connected,
    on_failed = opts.on_failed, on_closed = opts.on_closed, on_offer = opts.on_offer,
    on_offer_fields = opts.on_offer_fields, started = uv.hrtime(),
  }, Client)
  local c, err = client_mod.new({
    deferred = true, secret = secret, token = self.token, source = src.text,
    target = opts.target, transport = opts.transport, udp_idle_timeout = opts.udp_idle_timeout,
    on_ready = function(cl)
      self:_ready(cl)
    end,
    on_rejected = function(_, f, reason)
      log.warn("%s refused by the server: %s", f and f.source or "?", reason or "")
    end,
    on_closed = function(_, why)
      self:_finish(self.connected and "connection ended: " .. why
        or "cannot connect to the server: " .. why)
    end,
  })
  if not c then
    return nil, err
  end
  self.client = c
  self.ice_opts = { stun_servers = opts.stun_servers, hosts = opts.hosts,
    timing = opts.ice_timing }
  local sess, ierr = self:_new_ice(opts.ice_timing)
  if not sess then
    c:close()
    return nil, ierr
  end
  return self
end

function Client:_new_ice(timing)
  local o = self.ice_opts
  -- Events of a session replaced by restart() are dropped (they may still be queued).
  local token = {}
  self.ice_token = token
  local sess, err = ice.new(self.client, {
    controlling = true, stun_servers = o.stun_servers, hosts = o.hosts,
    timing = with_hold(timing, M.CLIENT_HOLD_MS),
    on_gathered = function(desc)
      if self.ice_token == token then
        self:_gathered(desc)
      end
    end,
    on_connected = function(_, pair)
      if self.ice_token == token then
        self:_ice_connected(pair)
      end
    end,
    on_failed = function(_, reason)
      if self.ice_token == token then
        self:_finish("ICE failed: " .. reason .. ". " .. M.HINT_FAILED)
      end
    end,
    on_consent_lost = function(_, reason)
      if self.ice_token == token then
        self:_finish("the path to the server stopped working: " .. reason)
      end
    end,
  })
  self.ice = sess
  return sess, err
end

--- Start over with a fresh ICE session (new credentials, a new session id, a new UDP socket,
-- the same listeners): on_offer / on_offer_fields follow again once gathered. `timing` overrides
-- the ICE timing of the new session (e.g. { hold_ms = 0 } to lead). For signaling channels
-- that can carry a second offer (nostr mode); not after an answer led to a connection.
-- Returns true, or nil and an error.
function Client:restart(timing)
  if self.done or self.dialled then
    return nil, self.done and "this client has finished" or "already connecting over a path"
  end
  local t = {}
  for k, v in pairs(self.ice_opts.timing or {}) do
    t[k] = v
  end
  for k, v in pairs(timing or {}) do
    t[k] = v
  end
  local old = self.ice
  self.ice = nil
  if old then
    old:close()
  end
  -- A fresh socket: a NAT that keeps one public port per local socket (Linux) would otherwise
  -- keep sending our packets from the port the first round spoiled.
  local rok, rerr = self.client:rebind()
  if not rok then
    self:_finish("cannot restart ICE: " .. tostring(rerr))
    return nil, rerr
  end
  self.answered, self.server_id, self.answered_at = nil, nil, nil
  self.session = sigblock.new_session()
  local sess, err = self:_new_ice(t)
  if not sess then
    self:_finish("cannot restart ICE: " .. tostring(err))
    return nil, err
  end
  return true
end

function Client:_gathered(desc)
  if self.done then
    return
  end
  if #desc.candidates == 0 then
    return self:_finish("no ICE candidates: this machine has no usable network address " ..
      "(only loopback?) and no STUN server answered")
  end
  local fields = {
    ufrag = desc.ufrag, pwd = desc.pwd, candidates = desc.candidates, source = self.source,
    client_id = self.client_id, token = self.token, session = self.session,
  }
  log.info("offer ready: %d candidate(s), session %s", #desc.candidates, self.session)
  if self.on_offer_fields then
    call("on_offer_fields", self.on_offer_fields, fields, self)
  end
  if self.on_offer then
    self.offer = sigblock.encode("offer", fields)
    call("on_offer", self.on_offer, self.offer, self)
  end
end

--- The listen addresses: { {proto=, listen=, source=} }.
function Client:forwards()
  return self.client:list()
end

--- Give the server's answer: the pasted text or the fields sigblock.decode returned.
-- Returns true; or nil, an error message and `again` (true when pasting again may help).
function Client:answer(text)
  if self.done then
    return nil, "this client has finished", false
  end
  if self.answered then
    return nil, "an answer was already accepted", false
  end
  local a = text
  if type(text) == "string" then
    local err
    a, err = sigblock.decode(text, { "answer", "reject" })
    if not a then
      return nil, err, true
    end
  end
  if a.session ~= self.session then
    return nil, string.format("this %s answers another offer (session %s, ours is %s): paste " ..
      "the answer to the offer this client printed", a.kind, tostring(a.session), self.session),
      true
  end
  if a.kind == "reject" then
    local msg = "the server refused the offer: " .. tostring(a.reason)
    self:_finish(msg)
    return nil, msg, false
  end
  local ok, serr = self.ice:set_remote(a)
  if not ok then
    return nil, "the answer is unusable: " .. serr, true
  end
  self.answered = true
  self.server_id = a.server_id
  self.answered_at = uv.hrtime()
  log.info("answer accepted from server %s; looking for a path", a.server_id)
  return true
end

function Client:_ice_connected(pair)
  if self.done or self.dialled then
    return
  end
  self.dialled = true
  self.pair = pair
  local ok, err = self.client:connect(pair.remote_ip, pair.remote_port, self.server_id)
  if not ok then
    self:_finish(err)
  end
end

function Client:_ready(cl)
  self.connected = true
  local st = cl:stats() or {}
  local info = {
    kind = self.pair and self.pair.kind or "?", remote = st.remote or cl.server_addr,
    rtt_ms = st.rtt_ms, server_id = cl.server_id, pair = self.pair,
    after_answer_ms = self.answered_at and (uv.hrtime() - self.answered_at) / 1e6,
    forwards = cl:list(),
  }
  log.info("connected to %s via %s at %s (rtt %.1f ms, %.0f ms after the answer)",
    cl.server_id, info.kind, info.remote, st.rtt_ms or 0, info.after_answer_ms or 0)
  call("on_connected", self.on_connected, self, info)
end

function Client:_finish(reason)
  if self.done then
    return
  end
  self.done = true
  self.reason = reason
  if self.ice then
    self.ice:close()
  end
  if self.client then
    self.client:close()
  end
  if self.connected then
    call("on_closed", self.on_closed, self, reason)
  else
    call("on_failed", self.on_failed, self, reason)
  end
end

function Client:stats()
  return self.client:stats()
end

function Client:close()
  self:_finish("closed")
end

---------------------------------------------------------------------------------------------------
-- Server

local Server = {}
Server.__index = Server
Server.__name = "tunnel.manual.server"

--- Start a manual-mode server: a fresh identity (unless given) and gathering at once; then
-- offer(block, cb) for the client's offer.
function M.server(opts)
  server_mod.check_options("tunnel.manual.server", opts, SERVER_OPTIONS, 2)
  local self = setmetatable({
    on_connected = opts.on_connected, on_failed = opts.on_failed, on_closed = opts.on_closed,
    on_answer = opts.on_answer, started = uv.hrtime(),
  }, Server)
  local srv, err
  -- One dual-stack socket; where IPv6 is disabled it cannot exist: IPv4 alone.
  for _, listen in ipairs({ "[::]:0", "0.0.0.0:0" }) do
    srv, err = server_mod.new({
      listen = listen, secret = opts.secret, secret_file = opts.secret_file,
      allowed_tcp = opts.allowed_tcp, allowed_udp = opts.allowed_udp,
      transport = opts.transport, udp_idle_timeout = opts.udp_idle_timeout, max_sessions = 0,
      on_auth = function(info)
        return self:_auth(info)
      end,
      on_request = function(req)
        return self:_request(req)
      end,
      on_session_closed = function(ev)
        if self.session_id and ev.session == self.session_id then
          local why = ev.why or {}
          self:_finish(true, "session ended" .. ((why.reason or "") ~= "" and (": " ..
            why.reason) or ""))
        end
      end,
    })
    if srv then
      break
    end
  end
  if not srv then
    return nil, err
  end
  self.server = srv
  self.server_id = srv.endpoint_id
  self.ice_opts = { stun_servers = opts.stun_servers, hosts = opts.hosts,
    timing = opts.ice_timing }
  -- Gather now, while the user is still copying the offer.
  local sess, ierr = self:_new_ice()
  if not sess then
    srv:close()
    return nil, ierr
  end
  return self
end

function Server:_new_ice()
  local o = self.ice_opts
  local sess, err = ice.new(self.server, {
    controlling = false, stun_servers = o.stun_servers, hosts = o.hosts,
    timing = with_hold(o.timing, 0),
    on_connected = function(_, pair)
      self.pair = pair
      log.info("path to the client found: %s", pair.kind)
    end,
    on_failed = function(_, reason)
      self:_finish(false, "ICE failed: " .. reason .. ". " .. M.HINT_FAILED)
    end,
    on_consent_lost = function(_, reason)
      self:_finish(self.session_id ~= nil, "the path to the client stopped working: " .. reason)
    end,
  })
  self.ice = sess
  return sess, err
end

--- The client's offer (pasted text or decoded fields). cb(block, err, again) runs once: with the
-- answer block to give the client; or with a REJECT block and the reason when the server
-- refuses the source; or with nil, an error and again = true when the paste was bad.
function Server:offer(text, cb)
  return self:consider(text, function(fields, err, again)
    cb(fields and sigblock.encode(fields.kind, fields), err, again)
  end)
end

--- Like offer, but cb gets the fields of the answer or reject (what other signaling channels,
-- such as Nostr events, carry) instead of a block.
function Server:consider(text, cb)
  if self.done or self.offer_fields then
    return cb(nil, self.done and "this server has finished" or "an offer was already accepted",
      false)
  end
  local o = text
  if type(text) == "string" then
    local err
    o, err = sigblock.decode(text, { "offer" })
    if not o then
      return cb(nil, err, true)
    end
  end
  local src, serr = addr.parse_source(o.source)
  if not src then
    return self:_reject(o, "bad source: " .. serr, cb)
  end
  self.checking = true
  self.server:vet(src.proto, src.host, src.port, function(list, _, reason)
    self.checking = false
    if self.done then
      return
    end
    if not list then
      return self:_reject(o, reason, cb)
    end
    self.offer_fields = o
    self.source = src
    self.ice:on_gathered(function(desc)
      if self.done then
        return
      end
      local ok, ierr = self.ice:set_remote(o)
      if not ok then
        self.offer_fields = nil
        return cb(nil, "the offer is unusable: " .. ierr, true)
      end
      local fields = {
        kind = "answer", ufrag = desc.ufrag, pwd = desc.pwd, candidates = desc.candidates,
        server_id = self.server_id, session = o.session,
      }
      self.answered_at = uv.hrtime()
      log.info("offer for %s accepted (session %s); answer ready", src.text, o.session)
      call("on_answer", self.on_answer, self, fields)
      cb(fields)
    end)
  end)
end

function Server._reject(_, o, reason, cb)
  log.warn("offer refused: %s", reason)
  cb({ kind = "reject", session = o.session, reason = reason:sub(1, 512) }, reason, false)
end

function Server:_auth(info)
  local o = self.offer_fields
  if not o then
    return nil, "no offer accepted yet"
  end
  if self.session_id then
    return nil, "this manual-mode server already serves its one session"
  end
  -- The client proves it made the offer twice over: its TLS key and the token it carried.
  local key_ok = info.client_id ~= nil and ckeys.equal(info.client_id, o.client_id)
  local token_ok = ckeys.equal(info.token or "", o.token)
  if not (key_ok and token_ok) then
    return nil, "not the client that made the offer"
  end
  self.session_id = info.session
  local pair = self.pair
  log.info("client %s connected via %s", o.client_id, pair and pair.kind or "?")
  call("on_connected", self.on_connected, self, {
    kind = pair and pair.kind or "?", remote = info.remote, client_id = o.client_id,
    source = self.source.text, pair = pair,
    after_answer_ms = self.answered_at and (uv.hrtime() - self.answered_at) / 1e6,
  })
  return true
end

function Server:_request(req)
  local s = self.source
  if req.proto ~= s.proto or req.port ~= s.port or req.host ~= s.host then
    return nil, string.format("this session may only reach %s (as offered)", s.text)
  end
  return true
end

function Server:_finish(ok, reason)
  if self.done then
    return
  end
  self.done = true
  self.reason = reason
  if self.ice then
    self.ice:close()
  end
  self.server:close()
  if ok then
    call("on_closed", self.on_closed, self, reason)
  else
    call("on_failed", self.on_failed, self, reason)
  end
end

function Server:close()
  self:_finish(self.session_id ~= nil, "closed")
end

return M
