--- tunnel.ice: an ICE session (RFC 8445) on the UDP socket of a tunnel server or client, so
-- that the path ICE finds is the one QUIC then uses. Signaling is up to the caller (manual
-- mode pastes blocks; nostr mode sends events): exchange `description()` tables.
--
--   local sess = assert(ice.new(client, { controlling = true, stun_servers = { "..." },
--     on_connected = function(s, pair) ... end, on_failed = function(s, reason) ... end }))
--   sess:on_gathered(function(desc) send(desc) end)
--   sess:set_remote(their_desc)
local core = require "tunnel.core.ice"
local addr = require "tunnel.addr"
local host = require "tunnel.host"
local log = require("tunnel.log").group("ice")
local uv = require "luv"

local M = {}

local OPTIONS = {
  controlling = "boolean", stun_servers = "table", hosts = "table", timing = "table",
  on_connected = "function", on_failed = "function", on_consent_lost = "function",
  on_gathered = "function", on_candidate = "function",
}
local TIMING = {
  ta_ms = true, rto_ms = true, rto_max_ms = true, max_tries = true, repunch_ms = true,
  keepalive_ms = true, consent_ms = true, consent_timeout_ms = true, fail_ms = true,
  gather_ms = true, hold_ms = true,
}

M.MAX_STUN = 4

local Session = {}
Session.__index = Session
Session.__name = "tunnel.ice"

local function check_table(what, t, known, level)
  for k, v in pairs(t) do
    local want = known[k]
    if not want then
      error(string.format("%s: unknown option '%s'", what, tostring(k)), level + 1)
    end
    if want ~= true and type(v) ~= want then
      error(string.format("%s: option '%s' must be a %s, got %s", what, k, want, type(v)),
        level + 1)
    end
  end
end

local function call(name, fn, ...)
  host.hook(log, name, fn, ...)
end

--- Resolve STUN servers "host[:port]" (default port 3478) to numeric "ip:port" strings.
-- Names are resolved once, at start (getaddrinfo). Returns the list and a list of warnings,
-- or nil and an error when a server is malformed.
function M.resolve_stun(list)
  local out, warnings = {}, {}
  for i, s in ipairs(list or {}) do
    local hp, err = addr.parse_hostport(s, { default_port = 3478 })
    if not hp then
      return nil, string.format("STUN server %d (%s): %s", i, s, err)
    end
    local ips = {}
    if hp.family then
      ips[1] = hp.host
    else
      local res, gerr = uv.getaddrinfo(hp.host, nil, { socktype = "dgram" })
      if not res or not res[1] then
        warnings[#warnings + 1] = string.format("STUN server %s: cannot resolve %s (%s): " ..
          "skipped", s, hp.host, tostring(gerr or "no address"))
      else
        -- One address per family: a second one of the same server would tell nothing new.
        local seen = {}
        for _, r in ipairs(res) do
          if not seen[r.family] then
            seen[r.family] = true
            ips[#ips + 1] = r.addr
          end
        end
      end
    end
    for _, ip in ipairs(ips) do
      if #out < M.MAX_STUN then
        out[#out + 1] = addr.hostport_text(ip, hp.port)
      end
    end
  end
  return out, warnings
end

--- Start an ICE session on `peer` (a tunnel.server or tunnel.client object, or their core).
-- Gathering starts at once. Returns the session, or nil and an error message.
function M.new(peer, opts)
  opts = opts or {}
  check_table("tunnel.ice", opts, OPTIONS, 2)
  if opts.timing then
    check_table("tunnel.ice timing", opts.timing, TIMING, 2)
  end
  local fwd = peer and (peer.core or peer)
  local stun, warnings = M.resolve_stun(opts.stun_servers)
  if not stun then
    return nil, warnings
  end
  for _, w in ipairs(warnings) do
    log.warn("%s", w)
  end
  local self = setmetatable({
    on_connected = opts.on_connected, on_failed = opts.on_failed,
    on_consent_lost = opts.on_consent_lost, on_candidate = opts.on_candidate,
    gathered_cbs = {}, started = uv.hrtime(), stun = stun,
  }, Session)
  if opts.on_gathered then
    self.gathered_cbs[1] = opts.on_gathered
  end
  local copts = {
    controlling = opts.controlling and true or false, stun = stun, hosts = opts.hosts,
    on_event = function(ev)
      self:_event(ev)
    end,
  }
  for k, v in pairs(opts.timing or {}) do
    copts[k] = v
  end
  local ok, s, err = pcall(core.new, fwd, copts)
  if not ok then
    return nil, tostring(s)
  end
  if not s then
    return nil, err
  end
  self.core = s
  local cands = s:candidates()
  log.debug("gathering: %d host candidate(s), %d STUN server(s)", #cands, #stun)
  return self
end

function Session:_event(ev)
  local t = ev.type
  if t == "candidate" then
    log.debug("local candidate: %s", ev.candidate)
    call("on_candidate", self.on_candidate, self, ev.candidate)
  elseif t == "gathered" then
    self.gathered = true
    local desc = self:description()
    log.info("gathered %d candidate(s) in %.0f ms", #desc.candidates,
      (uv.hrtime() - self.started) / 1e6)
    local cbs = self.gathered_cbs
    self.gathered_cbs = {}
    for _, fn in ipairs(cbs) do
      call("on_gathered", fn, desc)
    end
  elseif t == "connected" then
    self.pair = ev
    self.connected_after = (uv.hrtime() - (self.remote_at or self.started)) / 1e6
    ev.kind = M.describe_pair(ev)
    log.info("ICE connected: %s, %s <-> %s, rtt %d ms", ev.kind, ev.seen or "?", ev.remote,
      ev.rtt_ms or 0)
    call("on_connected", self.on_connected, self, ev)
  elseif t == "failed" then
    self.failed = ev.reason
    call("on_failed", self.on_failed, self, ev.reason)
  elseif t == "consent_lost" then
    call("on_consent_lost", self.on_consent_lost, self, ev.reason)
  elseif t == "role" then
    log.debug("ICE role conflict resolved: now %s", ev.controlling and "controlling"
      or "controlled")
  end
end

--- "direct (host)", "NAT traversal (server-reflexive)", ... for a connected event or pair.
function M.describe_pair(p)
  local l, r = p.local_type, p.remote_type
  if l == "host" and r == "host" then
    return "direct connection (host candidates)"
  end
  local names = { srflx = "server-reflexive", prflx = "peer-reflexive", relay = "relayed",
    host = "host" }
  local kind = (l == "prflx" or r == "prflx") and "peer-reflexive"
    or ((l == "srflx" or r == "srflx") and "server-reflexive") or names[r] or r
  return string.format("NAT traversal (%s; local %s, remote %s)", kind, names[l] or l,
    names[r] or r)
end

--- Call fn(description) once gathering is complete (at once if it already is).
function Session:on_gathered(fn)
  if self.gathered then
    call("on_gathered", fn, self:description())
  else
    self.gathered_cbs[#self.gathered_cbs + 1] = fn
  end
end

--- { ufrag =, pwd =, candidates = { "candidate:..." } }: what the peer needs.
function Session:description()
  local u, p = self.core:credentials()
  return { ufrag = u, pwd = p, candidates = self.core:candidates() }
end

--- The peer's description (all candidates at once). Returns true, or nil and an error that
-- names the bad field; nothing is applied when the description is invalid.
function Session:set_remote(desc)
  if type(desc) ~= "table" or type(desc.ufrag) ~= "string" or type(desc.pwd) ~= "string"
    or type(desc.candidates) ~= "table" then
    return nil, "the peer's ICE description needs ufrag, pwd and candidates"
  end
  if #desc.candidates == 0 then
    return nil, "the peer sent no ICE candidates (no usable network address on its side?)"
  end
  for i, c in ipairs(desc.candidates) do
    local ok, err = core.parse_candidate(c)
    if not ok then
      return nil, string.format("candidate %d: %s", i, err)
    end
  end
  local ok, err = self.core:set_remote(desc.ufrag, desc.pwd)
  if not ok then
    return nil, err
  end
  self.remote_at = uv.hrtime()
  local used = 0
  for _, c in ipairs(desc.candidates) do
    local added, aerr = self.core:add_remote(c)
    if added then
      used = used + 1
    else
      log.warn("%s", aerr)
    end
  end
  self.core:end_of_candidates()
  log.info("checking %d remote candidate(s)", used)
  return true
end

function Session:state()
  return self.core:state()
end

function Session:selected()
  return self.core:selected()
end

--- Results of the STUN servers queried while gathering: { {server=, status=, mapped=} }.
function Session:stun_results()
  local res = self.core:stun_results()
  local out = {}
  for i, s in ipairs(self.stun) do
    local r = res[i] or {}
    out[i] = { server = s, status = r.status, mapped = r.mapped }
  end
  return out
end

function Session:close()
  if self.core then
    self.core:close()
  end
end

M.parse_candidate = core.parse_candidate

return M
