--- Server-side policy for forwarding requests: allow-lists per protocol, host name resolution
-- without blocking the loop, and the order in which allowed addresses are tried
-- (see docs/api/tunnel.policy.md).
local uv = require "luv"
local addr = require "tunnel.addr"

local M = {}

--- Compile a list of CIDR strings. Returns a list of parsed prefixes, or nil, err.
function M.compile(list)
  local out = {}
  for i, s in ipairs(list or {}) do
    -- Strict, as in config files: "10.0.0.5/24" is a typo of one of two meanings.
    local c, err = addr.parse_cidr(s)
    if not c then
      return nil, string.format("allow-list entry %d: %s", i, err)
    end
    out[#out + 1] = c
  end
  return out
end

--- Whether `ip` (text) is inside any prefix of `compiled`. An empty list allows nothing.
function M.allowed(compiled, ip)
  local parsed = addr.parse_ip(ip)
  if not parsed then
    return false
  end
  for _, c in ipairs(compiled) do
    if addr.cidr_contains(c, parsed) then
      return true
    end
  end
  return false
end

local function describe(compiled)
  local t = {}
  for _, c in ipairs(compiled) do
    t[#t + 1] = c.text
  end
  return #t > 0 and table.concat(t, ", ") or "none"
end
M.describe = describe

--- Resolve `host` (an IP literal or a name) to a list of IP texts, then call cb(ips) or
-- cb(nil, err). Names resolve on libuv's thread pool, never blocking the loop.
function M.resolve(host, proto, cb)
  local lit = addr.parse_ip(host)
  if lit then
    cb({ lit.text })
    return
  end
  local ok, err = uv.getaddrinfo(host, nil, { socktype = proto == "udp" and "dgram" or "stream" },
    function(gerr, res)
      if gerr or not res then
        cb(nil, "cannot resolve " .. host .. ": " .. tostring(gerr or "no address"))
        return
      end
      local seen, ips = {}, {}
      for _, r in ipairs(res) do
        if r.addr and not seen[r.addr] then
          seen[r.addr] = true
          ips[#ips + 1] = r.addr
        end
      end
      cb(ips)
    end)
  if not ok then
    cb(nil, "cannot resolve " .. host .. ": " .. tostring(err))
  end
end

local function is_loopback(ip)
  return ip:match("^127%.") or ip == "::1"
end

--- Order addresses for Happy Eyeballs (RFC 8305): alternate IPv6 and IPv4 starting with IPv6,
-- except that loopback-only results try IPv4 first (a service on "localhost" usually listens
-- on 127.0.0.1 only).
function M.order(ips)
  local v4, v6 = {}, {}
  local all_loop = true
  for _, ip in ipairs(ips) do
    if ip:find(":", 1, true) then
      v6[#v6 + 1] = ip
    else
      v4[#v4 + 1] = ip
    end
    all_loop = all_loop and is_loopback(ip)
  end
  local first, second = v6, v4
  if all_loop then
    first, second = v4, v6
  end
  local out = {}
  for i = 1, math.max(#first, #second) do
    out[#out + 1] = first[i]
    out[#out + 1] = second[i]
  end
  return out
end

return M
