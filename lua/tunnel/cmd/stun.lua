--- `tunnel stun`: ask STUN servers which public address our UDP packets get, and say what that
-- means for direct connections. `--serve` runs a STUN responder instead (tests, labs).
local addr = require "tunnel.addr"
local common = require "tunnel.cmd.common"
local host = require "tunnel.host"
local stun = require "tunnel.core.stun"
local uv = require "luv"

local M = {}

local fail = common.fail

M.DEFAULT_PORT = 3478
M.DEFAULT_SERVERS = { "stun.l.google.com:19302", "stun1.l.google.com:19302" }
M.MAX_SERVERS = 8

M.VERDICT_EIM = "mapping: endpoint-independent (same public address for every server): " ..
  "direct connections through this NAT usually work"
M.VERDICT_SYM = "mapping: depends on the destination (symmetric NAT): direct connections are " ..
  "unlikely; use iroh mode, which falls back to a relay"
M.VERDICT_NONAT = "no NAT (mapped address is local)"

--- argparse setup (called by tunnel.cli).
function M.configure(c)
  c:argument("server", "STUN server host[:port] (default port " .. M.DEFAULT_PORT .. "); " ..
    "without any: " .. table.concat(M.DEFAULT_SERVERS, ", ") .. ".")
    :args("*")
  c:option("--bind", "Local UDP address to send from (default 0.0.0.0:0, any port).")
    :argname("<addr:port>")
  c:option("--timeout", "Seconds to wait for the answers (default 5).")
    :argname("<seconds>")
    :convert(function(s)
      local n = tonumber(s)
      if not n or n <= 0 or n > 3600 then
        return nil, "timeout must be a number of seconds greater than 0 (at most 3600)"
      end
      return n
    end)
  c:option("--serve", "Answer STUN Binding requests on ADDR:PORT (repeatable) until " ..
    "interrupted, instead of asking servers.")
    :argname("<addr:port>"):count("*")
end

local function ip_of(hostport)
  return hostport:match("^%[(.*)%]:%d+$") or hostport:match("^(.*):%d+$")
end

--- Resolve "host[:port]" to a numeric "ip:port". `want6`: false when the socket is IPv4 only.
function M.resolve(s, want6)
  local hp, err = addr.parse_hostport(s, { default_port = M.DEFAULT_PORT })
  if not hp then
    return nil, err
  end
  if hp.family then
    if hp.family == 6 and not want6 then
      return nil, "an IPv6 server cannot be reached from an IPv4 --bind address"
    end
    return addr.hostport_text(hp.host, hp.port)
  end
  local res, gerr = uv.getaddrinfo(hp.host, nil, { socktype = "dgram" })
  if not res or not res[1] then
    return nil, string.format("cannot resolve %s (%s); check the name and your DNS", hp.host,
      tostring(gerr or "no address"))
  end
  -- IPv4 first: it is the family that NATs apply to.
  for _, fam in ipairs({ "inet", "inet6" }) do
    for _, r in ipairs(res) do
      if r.family == fam and (fam == "inet" or want6) then
        return addr.hostport_text(r.addr, hp.port)
      end
    end
  end
  return nil, string.format("%s has no IPv4 address to reach from an IPv4 --bind address",
    hp.host)
end

--- The local interface addresses, as a set of IP strings.
local function local_ips()
  local set = {}
  for _, list in pairs(uv.interface_addresses() or {}) do
    for _, a in ipairs(list) do
      set[a.ip] = true
    end
  end
  return set
end

--- What the answers say: a list of lines (empty when nothing answered).
-- `results` as given by tunnel.core.stun's on_done; `locals`: set of local IPs.
function M.verdict(results, locals)
  local answered = {}
  for _, r in ipairs(results) do
    if r.status == "ok" then
      answered[#answered + 1] = r
    end
  end
  if #answered == 0 then
    return {}
  end
  for _, r in ipairs(answered) do
    if locals[ip_of(r.mapped)] then
      return { M.VERDICT_NONAT .. ": direct connections work when the peer can reach this " ..
        "address" }
    end
  end
  if #answered < 2 then
    return { "mapping: unknown (only one server answered; name two or more servers to tell " ..
      "how the NAT maps)" }
  end
  for i = 2, #answered do
    if answered[i].mapped ~= answered[1].mapped then
      return { M.VERDICT_SYM }
    end
  end
  return { M.VERDICT_EIM }
end

local function describe(name, r)
  local label = name == r.server and name or string.format("%s (%s)", name, r.server)
  if r.status == "ok" then
    return string.format("%s: mapped %s, rtt %d ms", label, r.mapped, r.rtt_ms)
  elseif r.status == "timeout" then
    return string.format("%s: no answer (%d request%s sent)", label, r.transmissions,
      r.transmissions == 1 and "" or "s")
  elseif r.status == "error" then
    return string.format("%s: error %d %s", label, r.error_code, r.reason or "")
  end
  return string.format("%s: the answer carried no mapped address", label)
end

local function serve(list)
  local out = {}
  for _, s in ipairs(list) do
    local hp, err = addr.parse_hostport(s, { default_port = M.DEFAULT_PORT, allow_zero = true })
    if not hp or not hp.family then
      return fail(string.format("--serve %s: %s", s, err or "give a numeric IP address"))
    end
    local srv, serr = stun.server({ bind = addr.hostport_text(hp.host, hp.port) })
    if not srv then
      return fail(serr .. " (is another STUN server using that port?)")
    end
    out[#out + 1] = "STUN responder on " .. srv:local_addr()
  end
  io.stdout:write(table.concat(out, "\n"), "\n")
  io.stdout:flush()
  return nil -- runs until SIGINT/SIGTERM; the host closes the responders
end

function M.run(args)
  if #args.serve > 0 then
    if #args.server > 0 or args.bind then
      return fail("--serve runs a responder; it does not take servers or --bind")
    end
    return serve(args.serve)
  end
  local names = #args.server > 0 and args.server or M.DEFAULT_SERVERS
  if #names > M.MAX_SERVERS then
    return fail(string.format("at most %d servers at once", M.MAX_SERVERS))
  end
  local bind, want6 = nil, true
  if args.bind then
    local hp, err = addr.parse_hostport(args.bind, { allow_zero = true })
    if not hp or not hp.family then
      return fail("--bind " .. args.bind .. ": " .. (err or "give a numeric IP address"))
    end
    bind, want6 = addr.hostport_text(hp.host, hp.port), hp.family == 6
  end
  local servers, label, lines = {}, {}, {}
  for _, name in ipairs(names) do
    local ipport, err = M.resolve(name, want6)
    if ipport then
      servers[#servers + 1] = ipport
      label[#servers] = name
    else
      lines[#lines + 1] = name .. ": " .. err
    end
  end
  if #servers == 0 then
    io.stdout:write(table.concat(lines, "\n"), "\n")
    return fail("no STUN server to ask: every name failed to resolve")
  end
  local probe, perr = stun.probe({
    servers = servers,
    bind = bind,
    timeout_ms = math.floor((args.timeout or 5) * 1000),
    on_done = function(results, local_addr)
      io.stdout:write("local address: ", tostring(local_addr), "\n")
      for i, r in ipairs(results) do
        lines[#lines + 1] = describe(label[i], r)
      end
      local v = M.verdict(results, local_ips())
      for _, l in ipairs(v) do
        lines[#lines + 1] = l
      end
      io.stdout:write(table.concat(lines, "\n"), "\n")
      io.stdout:flush()
      if #v == 0 then
        fail("no STUN server answered; check the addresses, and that outgoing UDP to them is " ..
          "not blocked by a firewall")
        host.stop(1)
      else
        host.stop(0)
      end
    end,
  })
  if not probe then
    return fail(perr)
  end
  return nil
end

return M
