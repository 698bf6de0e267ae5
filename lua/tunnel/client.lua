--- tunnel.client{...}: a port-forwarding client (see docs/api/tunnel.client.md).
--
--   local client = assert(tunnel.client {
--     server_id = "<EndpointId>", server_addr = "203.0.113.5:4433", token = "i...",
--     forwards = { { source = "tcp://127.0.0.1:22", target = "127.0.0.1:2222" } },
--     on_ready = function(c) print("up") end,
--   })
local core = require "tunnel.core.fwd"
local keys = require "tunnel.keys"
local addr = require "tunnel.addr"
local server_mod = require "tunnel.server"
local log = require("tunnel.log").group("fwd")
local uv = require "luv"
local host = require "tunnel.host"

local M = {}

local OPTIONS = {
  server_id = "string", server_addr = "string", token = "string", token_file = "string",
  secret = "string", secret_file = "string", forwards = "table", source = "string",
  target = "string", transport = "table", udp_idle_timeout = "number", on_ready = "function",
  on_closed = "function", on_rejected = "function", on_auth_failed = "function",
  deferred = "boolean", relay_urls = "table", socks5_proxy = "string", relay_cafile = "string",
  relay_only = "boolean", stun_servers = "table", on_path = "function", server_addrs = "table",
  bind = "string",
}

-- At most this many addresses are tried, one after the other.
local MAX_ADDRS = 8

local CODE_TEXT = {
  [1] = "denied", [2] = "session limit", [3] = "bad request", [4] = "connect failed",
  [5] = "resolve failed", [6] = "rate limited", [7] = "invalid token", [8] = "internal error",
}

local Client = {}
Client.__index = Client
Client.__name = "tunnel.client"

function Client:__tostring()
  return string.format("tunnel.client(%s)", self.server_id or "not connected")
end

--- Resolve "host:port" strings to the addresses to try, in order: { {ip=, port=, text=}, ... },
-- every address of a name (blocking getaddrinfo: used once, at start), no duplicates.
local function resolve_all(list)
  local out, seen = {}, {}
  for _, s in ipairs(list) do
    local hp, err = addr.parse_hostport(s)
    if not hp then
      return nil, err
    end
    local ips = { hp.host }
    if not hp.family then
      local res, gerr = uv.getaddrinfo(hp.host, nil, { socktype = "dgram" })
      if not res or not res[1] then
        return nil, "cannot resolve " .. hp.host .. ": " .. tostring(gerr or "no address")
      end
      ips = {}
      for _, r in ipairs(res) do
        ips[#ips + 1] = r.addr
      end
    end
    for _, ip in ipairs(ips) do
      local text = addr.hostport_text(ip, hp.port)
      if not seen[text] and #out < MAX_ADDRS then
        seen[text] = true
        out[#out + 1] = { ip = ip, port = hp.port, text = text }
      end
    end
  end
  return out
end

local function call(fn, ...)
  host.hook(log, "client", fn, ...)
end

local function describe_close(why)
  if why.err == "ECRYPTO" or why.err == "ETIMEDOUT" then
    return why.reason
  end
  if why.app then
    local names = { [0] = "closed by the server", [1] = "authentication failed",
      [2] = "authentication timed out", [3] = "rate limited after failed attempts",
      [4] = "protocol error", [5] = "the server shut down", [6] = "kicked by the server operator" }
    local base = names[why.code] or ("closed with code " .. tostring(why.code))
    if why.local_close then
      return "closed" .. (why.reason ~= "" and (": " .. why.reason) or "")
    end
    return base
  end
  return why.reason ~= "" and why.reason or "connection lost"
end
M.describe_close = describe_close

--- Create a client and start connecting. Returns the client, or nil and an error message.
function M.new(opts)
  server_mod.check_options("tunnel.client", opts, OPTIONS, 2)
  server_mod.check_ranges("tunnel.client", opts, 2)
  server_mod.check_transport("tunnel.client", opts.transport, 2)
  local server_key, err
  local addr_list = {}
  if opts.server_addr then
    addr_list[1] = opts.server_addr
  end
  for i, a in ipairs(opts.server_addrs or {}) do
    if type(a) ~= "string" then
      error(string.format("tunnel.client: server_addrs[%d] must be a string, got %s", i,
        type(a)), 2)
    end
    addr_list[#addr_list + 1] = a
  end
  local via_relay = opts.relay_urls and #opts.relay_urls > 0 and #addr_list == 0
    and not opts.deferred
  if via_relay then
    -- Dial by EndpointId through the relay (no direct address): the endpoint starts deferred
    -- and dials once the relay connection is up.
    if not opts.server_id then
      error("tunnel.client: option 'server_id' (the server's EndpointId) is required", 2)
    end
    server_key, err = keys.parse_endpoint_id(opts.server_id)
    if not server_key then
      return nil, "server id: " .. err
    end
  elseif opts.deferred then
    -- The server's address and identity come later (ICE, signaling): see Client:connect.
    if opts.server_id or #addr_list > 0 then
      error("tunnel.client: a deferred client takes server_id and server_addr in connect()", 2)
    end
  else
    if not opts.server_id then
      error("tunnel.client: option 'server_id' (the server's EndpointId) is required", 2)
    end
    if #addr_list == 0 then
      error("tunnel.client: option 'server_addr' (host:port) is required", 2)
    end
    server_key, err = keys.parse_endpoint_id(opts.server_id)
    if not server_key then
      return nil, "server id: " .. err
    end
  end
  local token = opts.token
  if opts.token and opts.token_file then
    error("tunnel.client: give token or token_file, not both", 2)
  end
  if opts.token_file then
    token, err = keys.load_token_file(opts.token_file)
    if not token then
      return nil, err
    end
  end
  if not token then
    return nil, "no authentication token: give token or token_file"
  end
  local ok, terr = keys.validate_token(token)
  if not ok then
    return nil, "auth token: " .. terr
  end
  local secret
  if opts.secret_file then
    secret, err = keys.load_secret_file(opts.secret_file)
  elseif opts.secret then
    secret = #opts.secret == 32 and opts.secret or nil
    if not secret then
      secret, err = keys.load_secret(opts.secret)
    end
  else
    secret = keys.generate_secret() -- a fresh identity per run
  end
  if not secret then
    return nil, err
  end
  local forwards = {}
  for i, f in ipairs(opts.forwards or {}) do
    local what = string.format("tunnel.client: forwards[%d]", i)
    -- (proto: as tunnel.config.forwards() lists them; it follows from source.)
    server_mod.check_options(what, f, { source = "string", target = "string", proto = "string" },
      2)
    if not (f.source and f.target) then
      error(what .. " needs source and target, e.g. { source = \"tcp://127.0.0.1:22\", " ..
        "target = \"127.0.0.1:2222\" }", 2)
    end
    forwards[#forwards + 1] = f
  end
  if opts.source or opts.target then
    if not (opts.source and opts.target) then
      error("tunnel.client: source and target go together", 2)
    end
    table.insert(forwards, 1, { source = opts.source, target = opts.target })
  end
  if #forwards == 0 then
    return nil, "nothing to forward: give source and target (or forwards)"
  end
  local parsed = {}
  for i, f in ipairs(forwards) do
    local src, serr = addr.parse_source(f.source)
    if not src then
      return nil, string.format("forward %d: %s", i, serr)
    end
    local tgt, gerr = addr.parse_hostport(f.target, { allow_zero = true })
    if not tgt then
      return nil, string.format("forward %d: target: %s", i, gerr)
    end
    local ip = tgt.host
    if not tgt.family then
      local res = uv.getaddrinfo(tgt.host, nil, { socktype = "stream" })
      if not res or not res[1] then
        return nil, string.format("forward %d: cannot resolve %s", i, tgt.host)
      end
      ip = res[1].addr
    end
    parsed[i] = { source = src.text, proto = src.proto, ip = ip, port = tgt.port }
  end
  local addrs, sip, sport
  if not opts.deferred and not via_relay then
    local aerr
    addrs, aerr = resolve_all(addr_list)
    if not addrs then
      return nil, "server address: " .. aerr
    end
    sip, sport = addrs[1].ip, addrs[1].port
  end
  local bind, v4, v6
  for _, a in ipairs(addrs or {}) do
    if a.ip:find(":", 1, true) then v6 = a.text else v4 = a.text end
  end
  if opts.bind then
    local berr
    bind, berr = addr.parse_hostport(opts.bind, { allow_zero = true })
    if not bind then
      return nil, "bind: " .. berr
    end
    if not bind.family then
      return nil, "bind: use an IP address (e.g. 0.0.0.0:0 or [::]:0), not a name"
    end
    if bind.family == 4 and v6 then
      return nil, string.format("bind: %s is IPv4 but the server address %s is IPv6", opts.bind,
        v6)
    end
    if bind.family == 6 and v4 and bind.host ~= "::" then
      return nil, string.format("bind: %s is IPv6 but the server address %s is IPv4", opts.bind,
        v4)
    end
  end

  local self = setmetatable({
    server_id = server_key and keys.format_endpoint_id(server_key), forwards = parsed,
    on_ready = opts.on_ready, on_closed = opts.on_closed, on_rejected = opts.on_rejected,
    on_path = opts.on_path,
    on_auth_failed = opts.on_auth_failed,
    server_addr = sip and addr.hostport_text(sip, sport),
    started = uv.hrtime(), addrs = addrs, addr_i = 1, key = server_key,
  }, Client)
  self.via_relay = via_relay
  server_mod.apply_process_transport(opts.transport)
  local c, cerr = core.client({
    server_ip = sip, server_port = sport, server_key = sip and server_key, secret = secret,
    token = token, flow_idle_ms = (opts.udp_idle_timeout or 60) * 1000,
    quic = server_mod.quic_options(opts.transport),
    bind_ip = bind and bind.host, bind_port = bind and bind.port,
    dual_stack = (v4 and v6) and true or nil, spare_addrs = addrs and #addrs - 1 or 0,
    on_event = function(ev)
      self:_event(ev)
    end,
  })
  if not c then
    return nil, cerr
  end
  self.core = c
  if opts.relay_urls and #opts.relay_urls > 0 then
    local url, rerr = server_mod.start_relay(c, secret, opts)
    if not url then
      c:close()
      return nil, rerr
    end
    self.relay_url = url
    if via_relay then
      self.server_key = server_key
      self.server_addr = "relay " .. url
    end
  end
  for i, f in ipairs(parsed) do
    local idx, aerr = c:add(f.ip, f.port, f.source)
    if not idx then
      c:close()
      return nil, string.format("forward %d (%s): %s", i, f.source, aerr)
    end
    f.listen = c:listen_addr(idx)
  end
  return self
end

function Client:_event(ev)
  if ev.type == "relay" then
    self.relay_states = self.relay_states or {}
    server_mod.log_relay(self.relay_states, ev)
    if ev.state == "ready" and self.via_relay and not self.dialled then
      self.dialled = true
      self.started = uv.hrtime()
      local ok, err = self.core:connect_key(self.server_key)
      if not ok then
        log.error("%s", err)
      end
    end
    return
  end
  if ev.type == "path" then
    self.direct = ev.direct
    call(self.on_path, self, ev.direct, ev.rtt_ms)
    return
  end
  if ev.type == "ready" then
    self.ready = true
    self.connected_after = (uv.hrtime() - self.started) / 1e6
    call(self.on_ready, self)
  elseif ev.type == "auth_failed" then
    self.auth_error = ev.reason
    call(self.on_auth_failed, self, ev.reason)
  elseif ev.type == "rejected" then
    local f = self.forwards[ev.forward]
    log.warn("%s refused by the server: %s", f and f.source or "?", ev.reason or "")
    call(self.on_rejected, self, f, ev.reason, CODE_TEXT[ev.code])
  elseif ev.type == "closed" then
    local text = describe_close(ev.why)
    -- Not reached at this address (no answer, nothing listening): the next one, if any. The
    -- core says whether the failure allows it (not after an identity mismatch, say).
    local nxt = not self.ready and self.addrs and self.addrs[self.addr_i + 1]
    if nxt and self.core:redial(nxt.ip, nxt.port, self.key) then
      log.warn("cannot connect to %s: %s; trying %s", self.server_addr, text, nxt.text)
      self.addr_i = self.addr_i + 1
      self.server_addr = nxt.text
      return
    end
    self.closed_why = ev.why
    if self.on_closed then
      call(self.on_closed, self, text, ev.why)
    elseif self.ready then
      -- Without a hook nobody else would say it: the listeners stay but forward nothing.
      log.error("connection to the server ended: %s", text)
    else
      log.error("cannot connect to %s: %s", self.server_addr or self.server_id or "the server",
        text)
    end
  end
end

--- Dial the server of a deferred client: `ip` and `port` numeric (as ICE selected them),
-- `server_id` its EndpointId (pinned). Returns true, or nil and an error message.
function Client:connect(ip, port, server_id)
  if self.server_id then
    error("tunnel.client: connect() is for deferred clients, once", 2)
  end
  local key, err = keys.parse_endpoint_id(server_id)
  if not key then
    return nil, "server id: " .. err
  end
  local ok, cerr = self.core:connect(ip, port, key)
  if not ok then
    return nil, cerr
  end
  self.server_id = keys.format_endpoint_id(key)
  self.server_addr = addr.hostport_text(ip, port)
  self.started = uv.hrtime()
  return true
end

--- Move a deferred client that has not dialled yet to a fresh UDP socket (a new local port,
-- hence new NAT mappings), e.g. before a second round of ICE. Returns true, or nil and an error.
function Client:rebind()
  if self.server_id then
    return nil, "already dialled " .. self.server_id
  end
  return self.core:rebind()
end

--- Connection statistics: rtt_ms, cwnd, bytes and packets, remote, ready; nil once closed.
function Client:stats()
  return self.core:stats()
end

--- The forwards with the addresses they listen on.
function Client:list()
  return self.forwards
end

function Client:close()
  self.core:close()
end

return M
