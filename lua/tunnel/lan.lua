--- tunnel.lan: finding peers on the local network without any server. A server announces its
-- signed discovery record (the same bytes as on a discovery server: its EndpointId, direct
-- addresses and relays, signed by its key) by UDP multicast; a client that knows only the
-- EndpointId asks the group and takes the first announcement whose signature checks.
--
--   local ann = lan.announcer{ secret = secret, addrs = { "192.168.1.5:4433" } }
--   lan.find(endpoint_id, function(rec, err) print(rec and rec.addrs[1] or err) end)
--
-- Datagram: "tunnel-lan1" then 'A' and a signed packet (announcement), or 'Q' and a 32-byte key
-- (query: the announcer with that key answers at once). Group 239.255.77.77, port 49488.
local core = require "tunnel.core.discovery"
local keys = require "tunnel.keys"
local uv = require "luv"
local host = require "tunnel.host"
local log = require("tunnel.log").group("discovery")

local M = {}

M.GROUP = "239.255.77.77"
M.PORT = 49488
local MAGIC = "tunnel-lan1"

local function check_table(what, t, known, level)
  if type(t) ~= "table" then
    error(what .. " expects an option table", level + 1)
  end
  for k in pairs(t) do
    if not known[k] then
      error(string.format("%s: unknown option '%s'", what, tostring(k)), level + 1)
    end
  end
end

--- A UDP socket in the group (reuse-address, so several processes on a host can share it).
local function group_socket(port, on_packet)
  local u = uv.new_udp()
  local ok, err = u:bind("0.0.0.0", port, { reuseaddr = true })
  if not ok then
    u:close()
    return nil, "cannot bind UDP port " .. port .. ": " .. tostring(err)
  end
  ok, err = u:set_membership(M.GROUP, "0.0.0.0", "join")
  if not ok then
    u:close()
    return nil, "cannot join the multicast group " .. M.GROUP .. ": " .. tostring(err) ..
      " (no multicast route on this host?)"
  end
  u:set_multicast_loop(true)
  u:set_multicast_ttl(1) -- the local network only, never routed
  u:recv_start(function(rerr, data, addr)
    if rerr or not data or #data <= #MAGIC or data:sub(1, #MAGIC) ~= MAGIC then
      return
    end
    local ok2, herr = host.pcall(on_packet, data:sub(#MAGIC + 1, #MAGIC + 1),
      data:sub(#MAGIC + 2), addr)
    if not ok2 then
      log.error("LAN discovery handler failed: %s", tostring(herr))
    end
  end)
  host.on_shutdown(function()
    if not u:is_closing() then
      u:close()
    end
  end)
  return u
end

local Announcer = {}
Announcer.__index = Announcer

--- Announce `secret`'s record on the LAN: at start, every `interval` seconds (default 10) and
-- whenever asked. opts: secret (32 bytes), addrs (list of "ip:port"), relay_urls, port.
function M.announcer(opts)
  check_table("lan.announcer", opts, { secret = true, addrs = true, relay_urls = true,
    interval = true, port = true }, 2)
  if type(opts.secret) ~= "string" or #opts.secret ~= 32 then
    error("lan.announcer: option 'secret' must be the 32-byte identity secret", 2)
  end
  local self = setmetatable({ secret = opts.secret, port = opts.port or M.PORT,
    key = keys.public_key(opts.secret), interval = opts.interval or 10,
    relay_urls = opts.relay_urls or {}, addrs = opts.addrs or {} }, Announcer)
  local ok, err = self:_sign()
  if not ok then
    return nil, err
  end
  local u, uerr = group_socket(self.port, function(kind, body)
    if kind == "Q" and body == self.key then
      self:send()
    end
  end)
  if not u then
    return nil, uerr
  end
  self.udp = u
  self.timer = uv.new_timer()
  self.timer:start(0, self.interval * 1000, function()
    self:send()
  end)
  host.on_shutdown(function()
    self:close()
  end)
  return self
end

function Announcer:_sign()
  local pkt, err = core.sign(self.secret, { relays = self.relay_urls, addrs = self.addrs,
    ttl = 30 }, core.now_us())
  if not pkt then
    return nil, err
  end
  self.packet = pkt
  return true
end

--- Announce a new record at once: opts.addrs and/or opts.relay_urls replace the old lists.
-- Returns true, or nil and an error (the old record stays).
function Announcer:update(opts)
  check_table("announcer:update", opts, { addrs = true, relay_urls = true }, 2)
  local old_a, old_r = self.addrs, self.relay_urls
  self.addrs, self.relay_urls = opts.addrs or old_a, opts.relay_urls or old_r
  local ok, err = self:_sign()
  if not ok then
    self.addrs, self.relay_urls = old_a, old_r
    return nil, err
  end
  self:send()
  return true
end

function Announcer:send()
  if self.udp and not self.udp:is_closing() then
    self.udp:send(MAGIC .. "A" .. self.packet, M.GROUP, self.port, function() end)
  end
end

function Announcer:close()
  if self.timer and not self.timer:is_closing() then
    self.timer:close()
  end
  if self.udp and not self.udp:is_closing() then
    self.udp:close()
  end
end

--- Ask the LAN for `endpoint_id`'s record: cb(record, nil) with {addrs, relays, ...} from the
-- first announcement signed by that key, or cb(nil, err) after `timeout` seconds (default 5).
function M.find(endpoint_id, cb, opts)
  opts = opts or {}
  check_table("lan.find", opts, { timeout = true, port = true }, 2)
  local key = keys.parse_endpoint_id(endpoint_id)
  if not key then
    error("lan.find: not an EndpointId: " .. tostring(endpoint_id), 2)
  end
  local port = opts.port or M.PORT
  local done = false
  local u, timer, asker
  local function finish(rec, err)
    if done then
      return
    end
    done = true
    for _, h in ipairs({ u, timer, asker }) do
      if h and not h:is_closing() then
        h:close()
      end
    end
    cb(rec, err)
  end
  local uerr
  u, uerr = group_socket(port, function(kind, body)
    if kind ~= "A" then
      return
    end
    local k, rec = core.open(body)
    if k == key then
      finish(rec)
    end
  end)
  if not u then
    -- Report from the loop, never from inside the call.
    local t = uv.new_timer()
    t:start(0, 0, function()
      t:close()
      finish(nil, uerr)
    end)
    return
  end
  -- Ask now and every half second: an announcer answers at once.
  asker = uv.new_timer()
  asker:start(0, 500, function()
    u:send(MAGIC .. "Q" .. key, M.GROUP, port, function() end)
  end)
  timer = uv.new_timer()
  timer:start((opts.timeout or 5) * 1000, 0, function()
    finish(nil, string.format("no announcement for %s on the local network within %d s " ..
      "(is the server on this LAN, and does the network pass multicast?)", endpoint_id,
      opts.timeout or 5))
  end)
end

return M
