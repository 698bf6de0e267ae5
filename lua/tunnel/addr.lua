--- Address parsing shared by the config, the modes and the policy code (see
-- docs/api/tunnel.addr.md).
--
--   local addr = require "tunnel.addr"
--   local net = assert(addr.parse_cidr("10.0.0.0/8"))
--   addr.cidr_contains(net, "10.1.2.3")             --> true
--   addr.parse_hostport("[::1]:2222")       --> {host = "::1", port = 2222, family = 6, ...}
--   addr.parse_source("udp://127.0.0.1:51820")      --> {proto = "udp", host = ..., port = ...}
--
-- Parsers never raise on bad input: they return nil and a message that quotes the input, says
-- what is wrong with it and, where it can, what to write instead. IP addresses are carried as
-- tables {family = 4|6, bytes = <4 or 16 byte string>, text = <canonical text>}.

local byte, char, sub, find, match, format, lower =
  string.byte, string.char, string.sub, string.find, string.match, string.format, string.lower
local concat = table.concat
local floor = math.floor
local type, tonumber, tostring, error = type, tonumber, tostring, error

local M = {}

-- Quote user input in messages; long or multi-line input is shortened so an error stays one line.
-- Option tables reject unknown keys, so a misspelt option is not silently ignored.
local function check_opts(fname, opts, known)
  if opts == nil then return end
  if type(opts) ~= "table" then error(fname .. ": opts must be a table", 3) end
  for k in pairs(opts) do
    if not known[k] then error(fname .. ": unknown option '" .. tostring(k) .. "'", 3) end
  end
end

local function q(s)
  s = tostring(s)
  if #s > 60 then s = sub(s, 1, 57) .. "..." end
  return "'" .. s:gsub("[%c]", "?") .. "'"
end

---------------------------------------------------------------------------------------------------
-- IP addresses

local function parse_ipv4(s)
  local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then
    return nil, q(s) .. " is not an IPv4 address (expected four numbers 0-255 separated by dots)"
  end
  local parts = { a, b, c, d }
  local out = {}
  for i = 1, 4 do
    local p = parts[i]
    -- "010" reads as octal to inet_aton() and as decimal to most people: refuse to guess.
    if #p > 1 and sub(p, 1, 1) == "0" then
      return nil, q(s) .. " is not an IPv4 address: '" .. p .. "' has a leading zero"
    end
    local n = #p <= 3 and tonumber(p)
    if not n or n > 255 then
      return nil, q(s) .. " is not an IPv4 address: '" .. p .. "' is greater than 255"
    end
    out[i] = char(n)
  end
  return concat(out)
end

-- Parses the text form of RFC 4291 section 2.2, including an embedded dotted IPv4 tail.
local function parse_ipv6(s)
  local function bad(why)
    return nil, q(s) .. " is not an IPv6 address: " .. why
  end
  if find(s, "%%") then
    return bad("zone indexes ('%" .. (match(s, "%%(.*)$") or "") .. "') are not supported")
  end
  if not find(s, "^[%x:.]+$") then
    return bad("only hex digits, ':' and (in a final IPv4 part) '.' may appear")
  end
  local head, tail = s, nil
  local dc = find(s, "::", 1, true)
  if dc then
    if find(s, "::", dc + 1, true) then return bad("'::' may appear only once") end
    head, tail = sub(s, 1, dc - 1), sub(s, dc + 2)
  end
  local function groups(part, is_last)
    local out = {}
    if part == "" then return out end
    local list = {}
    for g in (part .. ":"):gmatch("([^:]*):") do list[#list + 1] = g end
    for i = 1, #list do
      local g = list[i]
      if g == "" then return nil, "empty group (a single ':' at the start or end?)" end
      if find(g, ".", 1, true) then
        -- An IPv4 tail is only valid as the very last group of the whole address.
        if not is_last or i ~= #list then
          return nil, "an IPv4 part may appear only at the end"
        end
        local v4, err = parse_ipv4(g)
        if not v4 then return nil, err end
        out[#out + 1] = byte(v4, 1) * 256 + byte(v4, 2)
        out[#out + 1] = byte(v4, 3) * 256 + byte(v4, 4)
      else
        if #g > 4 then return nil, "group '" .. g .. "' has more than 4 hex digits" end
        out[#out + 1] = tonumber(g, 16)
      end
    end
    return out
  end
  local hg, err = groups(head, tail == nil)
  if not hg then return bad(err) end
  local tg = {}
  if tail then
    tg, err = groups(tail, true)
    if not tg then return bad(err) end
  end
  local n = #hg + #tg
  local words = {}
  if dc then
    if n > 7 then return bad("too many groups for '::' to stand for any") end
    for i = 1, #hg do words[#words + 1] = hg[i] end
    for _ = 1, 8 - n do words[#words + 1] = 0 end
    for i = 1, #tg do words[#words + 1] = tg[i] end
  else
    if n ~= 8 then return bad(format("it has %d groups, expected 8 (or use '::')", n)) end
    words = hg
  end
  local out = {}
  for i = 1, 8 do
    local w = words[i]
    out[#out + 1] = char(floor(w / 256), w % 256)
  end
  return concat(out)
end

local function format_ipv4(b)
  return format("%d.%d.%d.%d", byte(b, 1, 4))
end

-- RFC 5952: lower case, no leading zeros, the longest run of two or more zero groups
-- (the first on a tie) becomes "::", and IPv4-mapped addresses keep their dotted tail.
local function format_ipv6(b)
  local w = {}
  for i = 1, 8 do w[i] = byte(b, 2 * i - 1) * 256 + byte(b, 2 * i) end
  if w[1] == 0 and w[2] == 0 and w[3] == 0 and w[4] == 0 and w[5] == 0 and w[6] == 0xffff then
    return "::ffff:" .. format_ipv4(sub(b, 13, 16))
  end
  local best, best_len, i = nil, 1, 1
  while i <= 8 do
    if w[i] == 0 then
      local j = i
      while j <= 8 and w[j] == 0 do j = j + 1 end
      if j - i > best_len then best, best_len = i, j - i end
      i = j
    else
      i = i + 1
    end
  end
  local parts = {}
  for k = 1, 8 do parts[k] = format("%x", w[k]) end
  if not best then return concat(parts, ":") end
  return concat(parts, ":", 1, best - 1) .. "::" .. concat(parts, ":", best + best_len, 8)
end

local function ip_text(family, bytes)
  return family == 4 and format_ipv4(bytes) or format_ipv6(bytes)
end

--- Parse an IPv4 or IPv6 address (no brackets, no zone, no prefix).
-- Returns {family = 4|6, bytes = string, text = canonical text} or nil, err.
function M.parse_ip(s)
  if type(s) ~= "string" then
    return nil, "expected an IP address string, got " .. type(s)
  end
  if s == "" then return nil, "empty IP address" end
  if find(s, ":", 1, true) then
    local b, err = parse_ipv6(s)
    if not b then return nil, err end
    return { family = 6, bytes = b, text = format_ipv6(b) }
  end
  local b, err = parse_ipv4(s)
  if not b then return nil, err end
  return { family = 4, bytes = b, text = format_ipv4(b) }
end

--- Canonical text of an address table (RFC 5952 for IPv6).
function M.format_ip(ip)
  if type(ip) ~= "table" or (ip.family ~= 4 and ip.family ~= 6) then
    error("addr.format_ip: expected an address table from addr.parse_ip", 2)
  end
  return ip_text(ip.family, ip.bytes)
end

---------------------------------------------------------------------------------------------------
-- CIDR prefixes

-- Keep the first `bits` bits of `bytes`, zero the rest.
local function mask(bytes, bits)
  local out = {}
  for i = 1, #bytes do
    local keep = bits - (i - 1) * 8
    local b = byte(bytes, i)
    if keep <= 0 then
      b = 0
    elseif keep < 8 then
      b = b - b % 2 ^ (8 - keep)
    end
    out[i] = char(b)
  end
  return concat(out)
end

--- Parse "address/prefix"; a bare address means a single host (/32 or /128).
-- Host bits set beyond the prefix ("10.0.0.5/24") are an error unless opts.mask is true, in which
-- case they are cleared: in an allow-list such input is usually a typo, and the reader of the
-- config file should not have to guess which of the two meanings was intended.
-- Returns {family, bytes (network), prefix, text = "network/prefix"} or nil, err.
function M.parse_cidr(s, opts)
  if type(s) ~= "string" then
    return nil, "expected a CIDR string such as '10.0.0.0/8', got " .. type(s)
  end
  check_opts("addr.parse_cidr", opts, { mask = true })
  local a, p = match(s, "^([^/]*)/(.*)$")
  if not a then a = s end
  if find(s, ",", 1, true) then
    return nil, q(s) .. " is not a CIDR: one network per entry (on the command line, repeat the " ..
      "option: --allowed-tcp A --allowed-tcp B)"
  end
  local hp = not p and find(s, "%]?:%d+$") and M.parse_hostport(s)
  if hp and hp.family then
    return nil, format("%s is not a CIDR: allow-lists take networks such as '%s/%d', without a " ..
      "port", q(s), hp.host, hp.family == 4 and 32 or 128)
  end
  if a == "" then return nil, q(s) .. " is not a CIDR: the address is missing" end
  local ip, err = M.parse_ip(a)
  if not ip then return nil, q(s) .. " is not a CIDR: " .. err end
  local maxp = ip.family == 4 and 32 or 128
  local prefix = maxp
  if p then
    prefix = find(p, "^%d%d?%d?$") and tonumber(p)
    if not prefix or prefix > maxp then
      return nil, format("%s is not a CIDR: prefix length %s must be a number from 0 to %d",
        q(s), q(p), maxp)
    end
  end
  local net = mask(ip.bytes, prefix)
  if net ~= ip.bytes and not (opts and opts.mask) then
    local nt = ip_text(ip.family, net)
    return nil, format("%s has host bits set after the /%d prefix: write '%s/%d' for the whole " ..
      "network or '%s/%d' for the single address", q(s), prefix, nt, prefix, ip.text, maxp)
  end
  return { family = ip.family, bytes = net, prefix = prefix,
    text = ip_text(ip.family, net) .. "/" .. prefix }
end

local V4MAPPED = string.rep("\0", 10) .. "\255\255"

-- View an address in the family of a prefix; IPv4-mapped IPv6 (::ffff:a.b.c.d) and IPv4 are the
-- same host, which is what a dual-stack socket reports for IPv4 peers.
local function as_family(ip, family)
  if ip.family == family then return ip.bytes end
  if family == 4 and sub(ip.bytes, 1, 12) == V4MAPPED then return sub(ip.bytes, 13, 16) end
  return nil
end

--- Whether `ip` lies inside `cidr`. Both may be strings or parsed tables; unparsable input raises
-- an error (it is a programming error: parse and report user input first).
function M.cidr_contains(cidr, ip)
  if type(cidr) == "string" then
    local c, err = M.parse_cidr(cidr, { mask = true })
    if not c then error("addr.cidr_contains: " .. err, 2) end
    cidr = c
  elseif type(cidr) ~= "table" or not cidr.prefix then
    error("addr.cidr_contains: argument 1 must be a CIDR string or table", 2)
  end
  if type(ip) == "string" then
    local i, err = M.parse_ip(ip)
    if not i then error("addr.cidr_contains: " .. err, 2) end
    ip = i
  elseif type(ip) ~= "table" or not ip.bytes then
    error("addr.cidr_contains: argument 2 must be an IP string or table", 2)
  end
  local b = as_family(ip, cidr.family)
  -- An IPv4 address lies in an IPv6 prefix only if the prefix is inside ::ffff:0:0/96: "::/0"
  -- written as "every IPv6 address" must not quietly admit all of IPv4 too.
  if not b and cidr.family == 6 and cidr.prefix >= 96 and sub(cidr.bytes, 1, 12) == V4MAPPED then
    b = V4MAPPED .. ip.bytes
  end
  if not b then return false end
  return mask(b, cidr.prefix) == cidr.bytes
end

---------------------------------------------------------------------------------------------------
-- Host names, host:port, URLs

-- RFC 1123 host names; '_' is tolerated because internal DNS zones use it.
local function check_hostname(h, whole)
  local name = sub(h, -1) == "." and sub(h, 1, -2) or h
  if #name > 253 then return nil, q(whole) .. ": host name longer than 253 characters" end
  local last
  for label in (name .. "."):gmatch("([^.]*)%.") do
    if label == "" then return nil, q(whole) .. ": host name has an empty label ('..')" end
    if #label > 63 then
      return nil, q(whole) .. ": host name label longer than 63 characters"
    end
    if not find(label, "^[%w_-]+$") then
      return nil, format("%s: %s is not a valid host name (letters, digits, '-', '.' only)",
        q(whole), q(h))
    end
    if sub(label, 1, 1) == "-" or sub(label, -1) == "-" then
      return nil, format("%s: host name label %s starts or ends with '-'", q(whole), q(label))
    end
    last = label
  end
  -- An all-numeric last label is a mistyped IPv4 address ("10.0.0"), never a real name.
  if find(last, "^%d+$") then
    local _, err = parse_ipv4(h)
    return nil, q(whole) .. ": " .. (err or "not a valid IPv4 address")
  end
  return true
end

-- Split "host:port" / "[v6]:port" / "host"; returns host, port-string-or-nil, bracketed.
local function split_hostport(s)
  if sub(s, 1, 1) == "[" then
    local h, rest = match(s, "^%[([^%]]*)%](.*)$")
    if not h then return nil, q(s) .. ": '[' without a closing ']'" end
    if rest == "" then return h, nil, true end
    local p = match(rest, "^:(.*)$")
    if not p then
      return nil, format("%s: unexpected %s after ']' (expected ':port')", q(s), q(rest))
    end
    return h, p, true
  end
  local h, p = match(s, "^(.*):([^:]*)$")
  if not h then return s, nil, false end
  if find(h, ":", 1, true) then
    return nil, format("%s: an IPv6 address with a port needs brackets, e.g. '[%s]:%s'",
      q(s), h, p)
  end
  return h, p, false
end

local function check_port(s, p, allow_zero)
  if p == "" then return nil, q(s) .. ": the port after ':' is missing" end
  local n = find(p, "^%d+$") and #p <= 5 and tonumber(p)
  if not n then return nil, format("%s: port %s is not a number", q(s), q(p)) end
  local lo = allow_zero and 0 or 1
  if n < lo or n > 65535 then
    return nil, format("%s: port %s is out of range %d-65535", q(s), p, lo)
  end
  return n
end

-- Parse a host (IP literal or name); returns host text, family (4, 6 or nil for names).
local function parse_host(whole, h, bracketed)
  if h == "" then
    return nil, q(whole) .. ": the host is missing (e.g. 127.0.0.1 or 0.0.0.0)"
  end
  if bracketed then
    local b, err = parse_ipv6(h)
    if not b then return nil, q(whole) .. ": " .. err end
    return format_ipv6(b), 6
  end
  if find(h, "^[%d.]+$") then
    local b, err = parse_ipv4(h)
    if not b then return nil, q(whole) .. ": " .. err end
    return format_ipv4(b), 4
  end
  local ok, err = check_hostname(h, whole)
  if not ok then return nil, err end
  return lower(h), nil
end

local function join_hostport(host, family, port)
  if family == 6 then return "[" .. host .. "]:" .. port end
  return host .. ":" .. port
end

--- "host:port" for a host and a port, with brackets around an IPv6 address.
function M.hostport_text(host, port)
  return join_hostport(host, find(host, ":", 1, true) and 6 or 4, port)
end


--- Parse "host:port" or "[v6]:port". Ports are 1-65535 (0 too with opts.allow_zero); with
-- opts.default_port a missing port takes that value.
-- Returns {host, port, family = 4|6|nil (a name), text = canonical "host:port"} or nil, err.
function M.parse_hostport(s, opts)
  check_opts("addr.parse_hostport", opts, { allow_zero = true, default_port = true })
  if type(s) ~= "string" then
    return nil, "expected a 'host:port' string, got " .. type(s)
  end
  if s == "" then return nil, "empty address: expected host:port, e.g. 127.0.0.1:8080" end
  if find(s, "%s") then return nil, q(s) .. ": spaces are not allowed in host:port" end
  if find(s, "://", 1, true) then
    return nil, q(s) .. ": expected host:port without a scheme"
  end
  local h, p, br = split_hostport(s)
  if not h then return nil, p end
  local host, family = parse_host(s, h, br)
  if not host then return nil, family end
  local port
  if p == nil then
    if opts and opts.default_port then
      port = opts.default_port
    else
      return nil, format("%s has no port: write host:port, e.g. '%s'", q(s),
        join_hostport(host, family, 8080))
    end
  else
    local err
    port, err = check_port(s, p, opts and opts.allow_zero)
    if not port then return nil, err end
  end
  return { host = host, port = port, family = family, text = join_hostport(host, family, port) }
end

--- Parse a forwarding source "tcp://host:port" or "udp://host:port".
-- Returns {proto = "tcp"|"udp", host, port, family, text} or nil, err.
function M.parse_source(s)
  if type(s) ~= "string" then
    return nil, "expected a source such as 'tcp://127.0.0.1:22', got " .. type(s)
  end
  local scheme, rest = match(s, "^([%a][%w+.-]*)://(.*)$")
  if not scheme then
    return nil, format("%s is not a source: write tcp://host:port or udp://host:port", q(s))
  end
  local proto = lower(scheme)
  if proto ~= "tcp" and proto ~= "udp" then
    return nil, format("%s: unsupported protocol '%s' (use tcp:// or udp://)", q(s), scheme)
  end
  local path = match(rest, "[/?#].*$")
  if path then
    return nil, format("%s: unexpected %s after the port (a source is only protocol://host:port)",
      q(s), q(path))
  end
  local hp, err = M.parse_hostport(rest)
  if not hp then
    -- "'a:99999': port ..." would repeat the input that q(s) already shows.
    return nil, q(s) .. ": " .. err:gsub("^'[^']*': ", "")
  end
  hp.proto = proto
  hp.text = proto .. "://" .. hp.text
  return hp
end

--- Parse an URL "scheme://[userinfo@]host[:port][/path][?query]".
-- opts.schemes: list of accepted schemes (lower case). Returns {scheme, userinfo, host, port,
-- family, path, text} or nil, err. `port` is nil when the URL has none.
function M.parse_url(s, opts)
  check_opts("addr.parse_url", opts, { schemes = true })
  if type(s) ~= "string" then return nil, "expected an URL string, got " .. type(s) end
  local schemes = opts and opts.schemes
  local want = schemes and concat(schemes, "://, ") .. "://" or "scheme://"
  local scheme, rest = match(s, "^([%a][%w+.-]*)://(.*)$")
  if not scheme then
    return nil, format("%s is not an URL: expected %s followed by a host", q(s), want)
  end
  scheme = lower(scheme)
  if schemes then
    local ok = false
    for i = 1, #schemes do if schemes[i] == scheme then ok = true end end
    if not ok then
      return nil, format("%s: scheme '%s' is not accepted here (use %s)", q(s), scheme, want)
    end
  end
  if find(s, "%s") then return nil, q(s) .. ": spaces are not allowed in an URL" end
  if find(rest, "#", 1, true) then return nil, q(s) .. ": a '#fragment' is not allowed" end
  local authority, path = match(rest, "^([^/?]*)(.*)$")
  local userinfo, hostport = match(authority, "^(.*)@([^@]*)$")
  if not userinfo then hostport = authority end
  local h, p, br = split_hostport(hostport)
  if not h then return nil, p end
  local host, family = parse_host(s, h, br)
  if not host then return nil, family end
  local port
  if p ~= nil then
    local err
    port, err = check_port(s, p, false)
    if not port then return nil, err end
  end
  local text = scheme .. "://" .. (userinfo and userinfo .. "@" or "") ..
    (family == 6 and "[" .. host .. "]" or host) .. (port and ":" .. port or "") .. path
  return { scheme = scheme, userinfo = userinfo, host = host, port = port, family = family,
    path = path, text = text }
end

return M
