--- tunnel.server{...}: a port-forwarding server (see docs/api/tunnel.server.md).
--
--   local tunnel = require "tunnel"
--   local srv = assert(tunnel.server {
--     listen = "0.0.0.0:4433", secret_file = "server.key", tokens = { "i..." },
--     allowed_tcp = { "127.0.0.0/8" },
--     on_request = function(req) return req.port ~= 25, "no mail" end,
--   })
local core = require "tunnel.core.fwd"
local ckeys = require "tunnel.core.keys"
local core_host = require "tunnel.core.host"
local keys = require "tunnel.keys"
local addr = require "tunnel.addr"
local policy = require "tunnel.policy"
local log = require("tunnel.log").group("auth")
local flog = require("tunnel.log").group("fwd")
local dlog = require("tunnel.log").group("discovery")
local slog = require("tunnel.log").group("server")
local uv = require "luv"
local host = require "tunnel.host"

local M = {}

-- Codes of the wire protocol (docs/protocol.md).
M.CODE = { DENIED = 1, LIMIT = 2, BAD_REQUEST = 3, CONNECT = 4, RESOLVE = 5, RATE_LIMITED = 6,
  BAD_TOKEN = 7, INTERNAL = 8 }
M.CLOSE = { DONE = 0, AUTH_FAILED = 1, AUTH_TIMEOUT = 2, RATE_LIMITED = 3, PROTOCOL = 4,
  SHUTDOWN = 5, KICKED = 6 }

local CC = { bbr = 0, cubic = 1, reno = 2, newreno = 2, new_reno = 2 }

local OPTIONS = {
  listen = "string", secret = "string", secret_file = "string", tokens = "table",
  tokens_file = "string", allowed_tcp = "table", allowed_udp = "table", max_sessions = "number",
  on_auth = "function", on_request = "function", on_session = "function",
  on_session_closed = "function", on_connection_closed = "function", transport = "table",
  auth_timeout = "number", udp_idle_timeout = "number", name = "string",
  relay_urls = "table", socks5_proxy = "string", relay_cafile = "string", relay_only = "boolean",
  stun_servers = "table", dns_server = "string", lan_announce = "boolean",
}

--- Check an option table against `known` (name -> type); misuse raises at the caller's line.
local function check_options(what, opts, known, level)
  if type(opts) ~= "table" then
    error(what .. " expects an option table", level + 1)
  end
  for k, v in pairs(opts) do
    local want = known[k]
    if not want then
      local names = {}
      for n in pairs(known) do
        names[#names + 1] = n
      end
      table.sort(names)
      error(string.format("%s: unknown option '%s' (known: %s)", what, tostring(k),
        table.concat(names, ", ")), level + 1)
    end
    if type(v) ~= want then
      error(string.format("%s: option '%s' must be a %s, got %s", what, k, want, type(v)),
        level + 1)
    end
  end
end
M.check_options = check_options

-- The [transport] keys (docs/config.md) a `transport` option table may hold.
local TRANSPORT = {
  congestion_controller = "string", receive_window = "number", send_window = "number",
  idle_timeout = "number", keep_alive_interval = "number", connect_timeout = "number",
  udp_idle_timeout = "number", busy_poll = "number",
}

-- Ranges of numeric options (after the type check): { min, max, integer }. The same limits
-- as the config file's (lua/tunnel/config.lua); seconds may be fractions.
local RANGES = {
  max_sessions = { 0, 0xfffffffe, true }, auth_timeout = { 0.001, 3600 },
  udp_idle_timeout = { 0.001, 86400 },
  receive_window = { 1024, 1024 ^ 3, true }, send_window = { 1024, 1024 ^ 3, true },
  idle_timeout = { 0.001, 3600 }, keep_alive_interval = { 0, 3600 },
  connect_timeout = { 0.001, 600 }, busy_poll = { 0, 1000, true },
}

--- Check that the numeric options of `t` named in RANGES are in range.
local function check_ranges(what, t, level)
  for k, v in pairs(t) do
    local r = RANGES[k]
    if r and type(v) == "number" then
      if r[3] and v ~= math.floor(v) then
        error(string.format("%s: option '%s' must be an integer, got %s", what, k, tostring(v)),
          level + 1)
      end
      if v ~= v or v < r[1] or v > r[2] then
        error(string.format("%s: option '%s' is out of range: got %s, allowed %s to %s", what, k,
          tostring(v), tostring(r[1]), string.format("%.0f", r[2])), level + 1)
      end
    end
  end
end
M.check_ranges = check_ranges

--- Check a `transport` option (if any) the way check_options checks the options.
local function check_transport(what, t, level)
  if t == nil then
    return
  end
  check_options(what .. " transport", t, TRANSPORT, level + 1)
  check_ranges(what .. " transport", t, level + 1)
  if t.congestion_controller and not CC[t.congestion_controller] then
    error(string.format("%s transport: congestion_controller must be bbr, cubic or reno, got '%s'",
      what, t.congestion_controller), level + 1)
  end
end
M.check_transport = check_transport

--- QUIC settings from a [transport] table (docs/config.md).
function M.quic_options(t)
  t = t or {}
  local q = {}
  if t.congestion_controller then
    q.cc = CC[t.congestion_controller]
  end
  if t.receive_window then
    q.max_stream_window = t.receive_window
    q.max_conn_window = t.receive_window * 2
  end
  if t.send_window then
    q.stream_send_buffer = t.send_window
  end
  if t.idle_timeout then
    q.idle_timeout_ms = t.idle_timeout * 1000
  end
  if t.keep_alive_interval then
    q.keepalive_ms = t.keep_alive_interval * 1000
  end
  if t.connect_timeout then
    q.handshake_timeout_ms = t.connect_timeout * 1000
  end
  return q
end

--- Apply the settings of a [transport] table that belong to the whole process rather than to
-- one connection: `busy_poll`, the longest poll before sleeping (µs; src/net/busypoll.h). The
-- server or client started last decides.
function M.apply_process_transport(t)
  if t and t.busy_poll then
    core_host.busy_poll(t.busy_poll)
  end
end

local function endpoint_text(key)
  return key and ckeys.endpoint_id(key) or "?"
end

-- Failed authentications are limited per token and in total, so guessing is slow and a flood
-- of bad attempts cannot keep the server busy.
local RATE_WINDOW, PER_TOKEN, GLOBAL = 60, 5, 30

local function rate_limiter()
  local per, all = {}, {}
  local function prune(list, now)
    while list[1] and now - list[1] > RATE_WINDOW do
      table.remove(list, 1)
    end
  end
  local r = {}
  function r.limited(token)
    local now = uv.now() / 1000
    prune(all, now)
    local p = per[token]
    if p then
      prune(p, now)
    end
    return #all >= GLOBAL or (p ~= nil and #p >= PER_TOKEN)
  end
  function r.failed(token)
    local now = uv.now() / 1000
    all[#all + 1] = now
    local p = per[token]
    if not p then
      -- Bound memory: keys are attacker-chosen strings.
      local n = 0
      for _ in pairs(per) do
        n = n + 1
      end
      if n > 1000 then
        per = {}
      end
      p = {}
      per[token] = p
    end
    p[#p + 1] = now
  end
  return r
end

--- Run a deciding hook (on_auth, on_request): an error in it denies (fails closed) and is
-- logged; the caller denies a nonsense answer.
local function call_hook(name, fn, arg)
  local ok, a, b = host.pcall(fn, arg)
  if not ok then
    host.log_error(log, name .. " hook failed (denying): ", a)
    return false, "denied by server policy (hook error)"
  end
  return a, b
end

local Server = {}
Server.__index = Server
Server.__name = "tunnel.server"

function Server:__tostring()
  return string.format("tunnel.server(%s %s)", self.endpoint_id, self.address_text or "?")
end

local function auth_event(self, ev)
  local core_srv = self.core
  local sess = core_srv:session(ev.session)
  local remote = sess and sess.remote or "?"
  local token = ev.token
  if self.limiter.limited(token) then
    log.warn("session %d from %s: too many failed attempts, refusing", ev.session, remote)
    core_srv:auth(ev.session, false, M.CODE.RATE_LIMITED,
      "too many failed attempts; wait a minute and check your token", M.CLOSE.RATE_LIMITED)
    return
  end
  -- Compare against every configured token without stopping at a match.
  local match = false
  for _, t in ipairs(self.tokens) do
    if ckeys.equal(t, token) then
      match = true
    end
  end
  local reason = "invalid authentication token"
  local ok = match
  if self.on_auth then
    local info = { session = ev.session, remote = remote, token_valid = match,
      client_id = sess and endpoint_text(sess.peer_key), token = token }
    local a, why = call_hook("on_auth", self.on_auth, info)
    if a == true then
      ok = true
    elseif a == false or a == nil then
      ok = false
      reason = why or (match and "denied by server policy" or reason)
    else
      log.error("on_auth returned %s (expected true, or nil and a reason): denying", type(a))
      ok = false
      reason = "denied by server policy"
    end
  end
  if ok then
    log.info("session %d from %s authenticated (client %s)", ev.session, remote,
      sess and endpoint_text(sess.peer_key) or "?")
    core_srv:auth(ev.session, true)
  else
    self.limiter.failed(token)
    log.warn("session %d from %s: authentication failed: %s", ev.session, remote, reason)
    core_srv:auth(ev.session, false, M.CODE.BAD_TOKEN, reason, M.CLOSE.AUTH_FAILED)
  end
end

--- Why an on_request rewrite table is unusable, or nil when it is fine.
local function rewrite_error(a)
  for k in pairs(a) do
    if k ~= "host" and k ~= "port" then
      return "unknown key '" .. tostring(k) .. "'; a rewrite has host and/or port"
    end
  end
  if a.host ~= nil and (type(a.host) ~= "string" or a.host == "") then
    return "host must be a non-empty string, got " .. type(a.host)
  end
  local p = a.port
  if p ~= nil and (type(p) ~= "number" or p ~= math.floor(p) or p < 1 or p > 65535) then
    return "port must be an integer 1-65535, got " .. tostring(p)
  end
  return nil
end

local function request_event(self, ev)
  local core_srv = self.core
  local hostport = addr.hostport_text(ev.host, ev.port)
  local src = ev.proto .. "://" .. hostport
  local function reject(code, reason)
    flog.info("session %d: %s refused: %s", ev.session, src, reason)
    core_srv:reject(ev.session, ev.stream, code, reason)
  end
  local req = { session = ev.session, proto = ev.proto, host = ev.host, port = ev.port,
    source = src }
  if self.on_request then
    local a, why = call_hook("on_request", self.on_request, req)
    if a == false or a == nil then
      return reject(M.CODE.DENIED, why or "denied by server policy")
    elseif type(a) == "table" then
      -- A rewrite: the hook names another host and/or port (still subject to the allow-list).
      local bad = rewrite_error(a)
      if bad then
        log.error("on_request returned an invalid rewrite (%s): denying", bad)
        return reject(M.CODE.DENIED, "denied by server policy")
      end
      req.host = a.host or req.host
      req.port = a.port or req.port
    elseif a ~= true then
      log.error("on_request returned %s: denying", type(a))
      return reject(M.CODE.DENIED, "denied by server policy")
    end
  end
  self:vet(ev.proto, req.host, req.port, function(list, code, reason)
    if core_srv:closed() then
      return
    end
    if not list then
      return reject(code, reason)
    end
    flog.debug("session %d: %s allowed, connecting to %s", ev.session, src,
      table.concat(list.ips, ", "))
    -- Whatever goes wrong here, the request gets an answer: a stream left unanswered would
    -- hold its local connection open and its --max-sessions slot until the session ends.
    local ok, err = pcall(core_srv.accept, core_srv, ev.session, ev.stream, list)
    if not ok then
      log.error("session %d: cannot accept %s: %s", ev.session, src, tostring(err))
      reject(M.CODE.INTERNAL, "internal error")
    end
  end)
end

--- Check `proto` host:port against the allow-list, resolving names off the loop.
-- cb(list) with list = { {ip, port}, ..., ips = {...} } in connection order, or
-- cb(nil, code, reason) when refused.
function Server:vet(proto, name, port, cb)
  local hostport = addr.hostport_text(name, port)
  local src = proto .. "://" .. hostport
  local allow = self.allowed[proto]
  if not allow then
    return cb(nil, M.CODE.BAD_REQUEST, "unknown protocol " .. tostring(proto))
  end
  if #allow == 0 then
    return cb(nil, M.CODE.DENIED, string.format("%s forwarding is not allowed on this server",
      proto:upper()))
  end
  policy.resolve(name, proto, function(ips, err)
    if not ips then
      return cb(nil, M.CODE.RESOLVE, err)
    end
    local ok_ips = {}
    for _, ip in ipairs(ips) do
      if policy.allowed(allow, ip) then
        ok_ips[#ok_ips + 1] = ip
      end
    end
    if #ok_ips == 0 then
      return cb(nil, M.CODE.DENIED, string.format("%s (resolved to %s) is not in the allowed " ..
        "networks (%s)", src, table.concat(ips, ", "), policy.describe(allow)))
    end
    local list = { ips = policy.order(ok_ips) }
    for _, ip in ipairs(list.ips) do
      list[#list + 1] = { ip, port }
    end
    cb(list)
  end)
end

--- The addresses a server listening on `listen_ip`:`port` can be reached at from the
-- network: that address, or every non-loopback IPv4 interface address for a wildcard; none for
-- a loopback listener (nothing to tell the network about).
local function direct_addrs(listen_ip, port)
  local addrs = {}
  if listen_ip:match("^127%.") or listen_ip == "::1" then
    return addrs
  elseif listen_ip ~= "0.0.0.0" and listen_ip ~= "::" then
    addrs[1] = (listen_ip:find(":", 1, true) and ("[" .. listen_ip .. "]") or listen_ip) ..
      ":" .. port
  else
    for _, list in pairs(uv.interface_addresses()) do
      for _, a in ipairs(list) do
        if not a.internal and a.family == "inet" and #addrs < 16 then
          addrs[#addrs + 1] = a.ip .. ":" .. port
        end
      end
    end
  end
  return addrs
end

-- Addresses that mean nothing to another host: loopback and link-local.
local function host_only(a)
  return a:match("^127%.") or a:match("^169%.254%.") or a:match("^%[::1%]:") or
    a:lower():match("^%[fe[89ab]") or a:lower():match("^%[::ffff:127%.")
end

--- The direct addresses of the record: for a wildcard listener with hole punching (a relay),
-- the addresses hole punching advertises (interfaces, and the public mappings STUN and peers
-- report) without loopback and link-local ones; otherwise direct_addrs. At most 16, distinct.
local function record_addrs(self)
  local list = not self.listen_specific and self.core:local_addrs()
  if not list then
    return direct_addrs(self.listen_ip, self.port)
  end
  local out, seen = {}, {}
  for _, a in ipairs(list) do
    if not seen[a] and not host_only(a) and #out < 16 then
      seen[a] = true
      out[#out + 1] = a
    end
  end
  return out
end

--- Announce the server on the local network (multicast: tunnel.lan), so that clients on the
-- same LAN find it by EndpointId with no relay or discovery server. Best effort: a network
-- without multicast only loses this convenience.
local function announce_lan(self, secret, addrs)
  if #addrs == 0 then
    return
  end
  local ok, ann, err = pcall(require("tunnel.lan").announcer, { secret = secret, addrs = addrs,
    relay_urls = self.relay_urls })
  if not ok or not ann then
    flog.debug("LAN announcements off: %s", tostring(ok and err or ann))
    return
  end
  self.lan = ann
  flog.debug("announcing %s on the LAN: %s", self.endpoint_id, table.concat(addrs, ", "))
end

--- Publish the record (relays and direct addresses) where clients look the server up by
-- EndpointId: opts.dns_server, else the first relay's /pkarr; "none" turns it off.
local function publish(self, secret, opts, addrs)
  local dns = opts.dns_server
  if dns == nil and self.relay_url then
    dns = self.relay_url:gsub("/+$", "") .. "/pkarr"
  end
  if not dns or dns == "none" then
    return
  end
  local ok, pub = pcall(require("tunnel.discovery").publisher, {
    url = dns, secret = secret, relay_urls = self.relay_urls or {}, addrs = addrs,
    proxy = opts.socks5_proxy, cafile = opts.relay_cafile,
  })
  if ok then
    self.publisher = pub
    self.discovery_url = dns
  else
    log.warn("discovery not started: %s", tostring(pub))
  end
end

--- Log relay connection changes; `ev.state` is ready, connecting or waiting, `ev.url` which
-- relay. `states` keeps the last state per URL (so a retry loop logs once).
function M.log_relay(states, ev)
  local rlog = require("tunnel.log").group("relay")
  local before = states[ev.url]
  states[ev.url] = ev.state
  if ev.state == "ready" then
    rlog.info("relay %s: connected", ev.url)
  elseif ev.state == "waiting" and before ~= "waiting" then
    rlog.warn("relay %s: %s (retrying)", ev.url, ev.reason or "connection lost")
  end
end

--- Start the relay path of a core object: every relay of opts.relay_urls (at most 4) is
-- connected; traffic takes the home relay (lowest RTT) and fails over to the others.
-- Returns the first URL (the one published for discovery) or nil and an error.
function M.start_relay(core_obj, secret, opts)
  local url = opts.relay_urls[1]
  for _, u in ipairs(opts.relay_urls) do
    if type(u) ~= "string" then
      return nil, "relay_urls: expected a list of http:// or https:// URLs"
    end
  end
  if #opts.relay_urls > 4 then
    return nil, "relay_urls: at most 4 relays"
  end
  -- STUN for hole punching: the given servers, else the relay's host on the STUN port (a
  -- `tunnel relay --stun-listen` answers there; if nothing does, punching relies on the
  -- addresses the peer sees in pings).
  local stun = {}
  local list = opts.stun_servers
  if not list then
    local u = addr.parse_url(url, { schemes = { "http", "https" } })
    list = u and { (u.family == 6 and ("[" .. u.host .. "]") or u.host) .. ":3478" } or {}
  end
  for _, s in ipairs(list) do
    local hp = addr.parse_hostport(s, { default_port = 3478 })
    if hp then
      local ip = hp.family and hp.host
      if not ip then
        local res = uv.getaddrinfo(hp.host, nil, { socktype = "dgram", family = "inet" })
        ip = res and res[1] and res[1].addr
      end
      if ip and not ip:find(":", 1, true) then
        stun[#stun + 1] = ip .. ":" .. hp.port
      end
    end
  end
  local ok, err = core_obj:relay({ urls = opts.relay_urls, secret = secret,
    proxy = opts.socks5_proxy,
    cafile = opts.relay_cafile, stun = stun, relay_only = opts.relay_only })
  if not ok then
    return nil, err
  end
  return url
end

local function same(a, b)
  if #a ~= #b then
    return false
  end
  for i = 1, #a do
    if a[i] ~= b[i] then
      return false
    end
  end
  return true
end

--- Hole punching says our addresses changed (a new interface address, a new public mapping):
-- republish the record and re-announce on the LAN with the new list.
local function addrs_event(self)
  local addrs = record_addrs(self)
  if same(addrs, self.addrs or {}) then
    return
  end
  self.addrs = addrs
  dlog.info("addresses changed: %s", #addrs > 0 and table.concat(addrs, ", ") or "none")
  if self.publisher then
    local ok, err = pcall(self.publisher.update, self.publisher, { addrs = addrs })
    if not ok then
      dlog.warn("cannot republish the record: %s", tostring(err))
    end
  end
  if self.lan and self.lan.update then
    local ok, res, err = pcall(self.lan.update, self.lan, { addrs = addrs })
    if not ok or not res then
      dlog.warn("cannot update the LAN announcement: %s", tostring(ok and err or res))
    end
  elseif self.start_lan then
    self.start_lan(addrs)
  end
end

local function on_event(self, ev)
  local t = ev.type
  if t == "addrs" then
    addrs_event(self)
    return
  elseif t == "relay" then
    self.relay_states = self.relay_states or {}
    M.log_relay(self.relay_states, ev)
    return
  elseif t == "path" then
    self.direct = ev.direct
    return
  end
  if t == "auth" then
    auth_event(self, ev)
  elseif t == "request" then
    request_event(self, ev)
  elseif t == "session" then
    local s = self.core:session(ev.session)
    flog.debug("session %d: handshake done with %s", ev.session, s and s.remote or "?")
    if self.on_session then
      host.hook(slog, "on_session", self.on_session, s or { id = ev.session })
    end
  elseif t == "refused" then
    flog.info("session %d: %s://%s:%d refused: %s", ev.session, ev.proto, ev.host, ev.port,
      ev.reason or ("code " .. ev.code))
  elseif t == "chan_closed" then
    flog.debug("session %d: %s to %s closed (%d bytes up, %d down%s)", ev.session, ev.proto,
      ev.target, ev.up, ev.down, ev.reset and ", reset" or "")
    if self.on_connection_closed then
      host.hook(slog, "on_connection_closed", self.on_connection_closed, ev)
    end
  elseif t == "session_closed" then
    local w = ev.why
    flog.info("session %d closed %s%s", ev.session,
      w.local_close and "by the server" or "by the client",
      w.reason ~= "" and (": " .. w.reason) or "")
    if self.on_session_closed then
      host.hook(slog, "on_session_closed", self.on_session_closed, ev)
    end
  end
end

local function load_tokens(opts)
  local list = {}
  for _, t in ipairs(opts.tokens or {}) do
    local ok, err = keys.validate_token(t)
    if not ok then
      return nil, "auth token: " .. err
    end
    list[#list + 1] = t
  end
  if opts.tokens_file then
    local more, err = keys.load_tokens_file(opts.tokens_file)
    if not more then
      return nil, err
    end
    for _, t in ipairs(more) do
      list[#list + 1] = t
    end
  end
  return list
end

--- Create and start a server. Returns the server, or nil and an error message.
function M.new(opts)
  check_options("tunnel.server", opts, OPTIONS, 2)
  check_ranges("tunnel.server", opts, 2)
  check_transport("tunnel.server", opts.transport, 2)
  local secret, err
  if opts.secret and opts.secret_file then
    error("tunnel.server: give secret or secret_file, not both", 2)
  end
  if opts.secret then
    secret = #opts.secret == 32 and opts.secret or nil
    if not secret then
      secret, err = keys.load_secret(opts.secret)
    end
  elseif opts.secret_file then
    secret, err = keys.load_secret_file(opts.secret_file)
  else
    secret = keys.generate_secret() -- an ephemeral identity: fine for tests and one-offs
  end
  if not secret then
    return nil, err
  end
  local tokens, terr = load_tokens(opts)
  if not tokens then
    return nil, terr
  end
  if #tokens == 0 and not opts.on_auth then
    if opts.tokens_file and not opts.tokens then
      return nil, string.format("the tokens file %s holds no token: add one with " ..
        "`tunnel generate-token >> %s`", opts.tokens_file, opts.tokens_file)
    end
    return nil, "no authentication tokens: give at least one (tunnel generate-token) or an " ..
      "on_auth hook"
  end
  local allowed = {}
  for _, proto in ipairs({ "tcp", "udp" }) do
    local c, cerr = policy.compile(opts["allowed_" .. proto])
    if not c then
      return nil, "allowed_" .. proto .. ": " .. cerr
    end
    allowed[proto] = c
  end
  local hp, herr = addr.parse_hostport(opts.listen or "0.0.0.0:0", { allow_zero = true })
  if not hp then
    return nil, "listen: " .. herr
  end
  if not hp.family then
    return nil, "listen: use an IP address (e.g. 0.0.0.0:4433 or [::]:4433), not a name"
  end
  local self = setmetatable({
    tokens = tokens, allowed = allowed, limiter = rate_limiter(),
    on_auth = opts.on_auth, on_request = opts.on_request, on_session = opts.on_session,
    on_session_closed = opts.on_session_closed, on_connection_closed = opts.on_connection_closed,
    endpoint_id = keys.endpoint_id(secret), public_key = keys.public_key(secret),
  }, Server)
  local max = opts.max_sessions or 100
  M.apply_process_transport(opts.transport)
  local srv, cerr = core.server({
    ip = hp.host, port = hp.port, secret = secret,
    max_active = max == 0 and 0xffffffff or max,
    auth_timeout_ms = (opts.auth_timeout or 10) * 1000,
    flow_idle_ms = (opts.udp_idle_timeout or 60) * 1000,
    quic = M.quic_options(opts.transport),
    on_event = function(ev)
      on_event(self, ev)
    end,
  })
  if not srv then
    return nil, cerr
  end
  self.core = srv
  if opts.relay_urls and #opts.relay_urls > 0 then
    local url, rerr = M.start_relay(srv, secret, opts)
    if not url then
      srv:close()
      return nil, rerr
    end
    self.relay_url = url
    self.relay_urls = opts.relay_urls
  end
  local ip, port = srv:local_addr()
  self.address_text, self.port = ip, port
  self.listen_ip = hp.host
  self.listen_specific = hp.host ~= "0.0.0.0" and hp.host ~= "::"
  local addrs = record_addrs(self)
  self.addrs = addrs
  publish(self, secret, opts, addrs)
  if opts.lan_announce then
    announce_lan(self, secret, addrs)
    if not self.lan then
      -- Nothing to announce yet (or no multicast): try again when addresses appear.
      self.start_lan = function(list)
        announce_lan(self, secret, list)
        if self.lan then
          self.start_lan = nil
        end
      end
    end
  end
  return self
end

--- "ip:port" the server listens on, and the port.
function Server:address()
  return self.address_text, self.port
end

--- Live sessions: a list of tables (id, remote, client_id, authenticated, streams, up, down,
-- quic = {rtt_ms, cwnd, ...}).
function Server:sessions()
  local list = self.core:sessions()
  for _, s in ipairs(list) do
    s.client_id = s.peer_key and endpoint_text(s.peer_key) or nil
    s.peer_key = nil
    -- 100.127.0.0/16 are the relay's synthetic paths (src/iroh/relaypath.h).
    if type(s.remote) == "string" and s.remote:match("^100%.127%.") then
      s.path = "relay " .. tostring(self.relay_url)
    else
      s.path = "direct " .. tostring(s.remote)
    end
  end
  table.sort(list, function(a, b)
    return a.id < b.id
  end)
  return list
end

--- Close session `id` (the client sees "kicked"). Returns true if it existed.
function Server:kick(id, reason)
  local ok = self.core:kick(id, reason)
  if ok then
    flog.info("session %d kicked%s", id, reason and (": " .. reason) or "")
  end
  return ok
end

--- Replace the allow-list of "tcp" or "udp". Returns true or nil, err.
function Server:set_allowed(proto, list)
  if proto ~= "tcp" and proto ~= "udp" then
    error("set_allowed: protocol must be 'tcp' or 'udp'", 2)
  end
  if type(list) ~= "table" then
    error("set_allowed: the list must be a table of CIDR strings, got " .. type(list), 2)
  end
  local c, err = policy.compile(list)
  if not c then
    return nil, err
  end
  self.allowed[proto] = c
  return true
end

function Server:allowed_list(proto)
  local out = {}
  for _, c in ipairs(self.allowed[proto] or {}) do
    out[#out + 1] = c.text
  end
  return out
end

--- Change the limit on concurrent connections and flows (0: no limit).
function Server:set_max_sessions(n)
  if type(n) ~= "number" then
    error("set_max_sessions: expected a number, got " .. type(n), 2)
  end
  check_ranges("set_max_sessions", { max_sessions = n }, 2)
  self.core:set_max_active(n == 0 and 0xffffffff or n)
end

--- Counters: sessions, active connections and flows.
function Server:stats()
  return { sessions = #self.core:sessions(), active = self.core:active(),
    endpoint_id = self.endpoint_id, listen = self.address_text }
end

--- Stop: closes every session (they see "shutdown") and the socket.
function Server:close()
  if self.lan then
    self.lan:close()
  end
  if self.publisher then
    self.publisher:close()
  end
  self.core:close()
end

return M
