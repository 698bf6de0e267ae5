--- The NAT lab for specs (root only): network namespaces, veth pairs, one bridge and iptables
-- rules that behave like home routers on the internet. See docs/lab.md.
--
--   a 10.0.1.2 -- nat1 [lan0 10.0.1.1 | wan0 203.0.113.1] --+
--                                                           +-- br0 (in ns "pub") -- srv
--   b 10.0.2.2 -- nat2 [lan0 10.0.2.1 | wan0 203.0.113.2] --+   203.0.113.10 and .11
--
-- Lab.new{ lan = true } puts a (10.0.1.2) and b (10.0.1.3) on one LAN behind nat1 instead.
-- Every namespace is named <prefix>-<role> with a per-run prefix "tl<pid>x<n>"; the lab kills
-- only the processes it started (by PID) and deletes only its own namespaces.
local H = require "helper"
local uv = require "luv"

local Lab = {}
Lab.__index = Lab

Lab.NAT_TYPES = { none = true, cone = true, symmetric = true, pitfall = true }
Lab.SRV_IPS = { "203.0.113.10", "203.0.113.11" }

local counter = 0
local live = {} -- labs not torn down yet, for the shutdown safety net

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Run argv (a list) to completion in the root namespace; returns ok, stdout, stderr.
local function run(argv, timeout)
  local p = H.spawn(argv):wait(timeout or 30)
  return p.code == 0 and not p.timed_out, p.stdout, p.stderr
end

local function have(cmd)
  local r = os.execute("command -v " .. q(cmd) .. " >/dev/null 2>&1")
  return r == 0 or r == true
end

-- Why the lab cannot run here (nil when it can). With TUNNEL_LAB_REQUIRE=1 it raises instead,
-- blaming the caller of Lab.available or Lab.guard.
local function why_not(tools)
  local why
  local ok, out = run({ "id", "-u" })
  if not ok or out:match("^%s*(%d+)") ~= "0" then
    why = "the NAT lab needs root (network namespaces and iptables); run the spec as root"
  else
    local need = { "ip", "iptables" }
    for _, t in ipairs(tools or {}) do
      need[#need + 1] = t
    end
    for _, t in ipairs(need) do
      if not why and not have(t) then
        why = "the NAT lab needs '" .. t .. "'; run scripts/install-deps.sh as root"
      end
    end
  end
  if not why then
    -- Root in a container without CAP_SYS_ADMIN cannot make namespaces.
    local name = string.format("tl%dprobe", uv.os_getpid())
    local made, _, err = run({ "ip", "netns", "add", name })
    if made then
      run({ "ip", "netns", "del", name })
    else
      why = "cannot create a network namespace (" .. err:gsub("%s+$", "") .. ")"
    end
  end
  if why and os.getenv("TUNNEL_LAB_REQUIRE") == "1" then
    error("TUNNEL_LAB_REQUIRE=1 but " .. why, 3)
  end
  return why
end

--- Whether the lab can run here: true, or false and the reason. `tools` lists extra commands a
-- spec needs (e.g. {"turnserver", "stun"}). With TUNNEL_LAB_REQUIRE=1 a missing piece raises an
-- error instead, so a CI job cannot skip the lab by accident.
function Lab.available(tools)
  local why = why_not(tools)
  return why == nil, why
end

--- For a spec file's top level: true when the lab can run here (Lab.available(tools), which
-- raises with TUNNEL_LAB_REQUIRE=1). Otherwise declares a describe block named `title` that is
-- pending with the reason, and returns false (the spec returns).
--   if not Lab.guard("my lab spec", { "python3" }) then return end
function Lab.guard(title, tools)
  local why = why_not(tools)
  if not why then
    return true
  end
  -- busted's describe and pending live in the spec file's environment, not in _G.
  local env = getfenv(2)
  env.describe(title, function()
    env.pending("skipped: " .. why)
  end)
  return false
end

--- The namespace name of role `ns` ("a", "b", "nat1", "nat2", "srv", "pub").
function Lab:ns(ns)
  assert(self.roles[ns], "no namespace '" .. tostring(ns) .. "' in this lab")
  return self.prefix .. "-" .. ns
end

--- Run `cmd` inside namespace `ns`: a string (run by sh -c) or an argv list. Returns ok (exit
-- status 0), stdout, stderr, and the exit code.
function Lab:exec(ns, cmd, timeout)
  local argv = { "ip", "netns", "exec", self:ns(ns) }
  if type(cmd) == "string" then
    argv[#argv + 1], argv[#argv + 2], argv[#argv + 3] = "sh", "-c", cmd
  else
    for _, a in ipairs(cmd) do
      argv[#argv + 1] = tostring(a)
    end
  end
  local p = H.spawn(argv):wait(timeout or 30)
  return p.code == 0 and not p.timed_out, p.stdout, p.stderr, p.code
end

-- Setup step: like exec (ns nil: the root namespace) but raises with the command and its
-- stderr on failure.
function Lab:must(ns, argv)
  local ok, out, err
  if ns then
    ok, out, err = self:exec(ns, argv)
  else
    ok, out, err = run(argv)
  end
  if not ok then
    error(string.format("lab setup failed: %s%s: %s", ns and ("[" .. ns .. "] ") or "",
      table.concat(argv, " "), err ~= "" and err or out), 0)
  end
  return out
end

--- Start argv inside namespace `ns` in the background (`ip netns exec` execs, so the PID is the
-- program's). opts as for helper.spawn (env, stdin, cwd). The handle has pid, stdout, stderr
-- (accumulated), :kill(sig), :wait(timeout), :wait_output(pattern, timeout, which); the lab
-- kills it at teardown if it still runs.
function Lab:spawn(ns, argv, opts)
  local full = { "ip", "netns", "exec", self:ns(ns) }
  for _, a in ipairs(argv) do
    full[#full + 1] = tostring(a)
  end
  local p = H.spawn(full, opts)
  p.label = ns .. ": " .. table.concat(argv, " ")
  self.procs[#self.procs + 1] = p
  return p
end

--- The main IPv4 address of `ns`: a host's own address, a router's public (wan0) address, or
-- the first server address.
function Lab:addr(ns)
  assert(self.roles[ns], "no namespace '" .. tostring(ns) .. "' in this lab")
  return self.addrs[ns]
end

--- The address that servers on the public segment see for host `ns` ("a" or "b"): its
-- router's wan0 address behind a NAT, its own address with nat type "none".
function Lab:public_ip(ns)
  local nat = self.nat[ns]
  if nat == "none" then
    return self.addrs[ns]
  end
  return self.addrs[self.router[ns]]
end

--- The nat type of host `ns`'s router.
function Lab:nat_type(ns)
  return self.nat[ns]
end

--- The environment of tunnel processes in the lab: their runtime dir in the lab's temp dir, and
-- no TUNNEL_LOG (unless SPEC_TUNNEL_LOG gives one, for debugging a spec).
function Lab:env()
  return { TUNNEL_LOG = os.getenv("SPEC_TUNNEL_LOG") or false, XDG_RUNTIME_DIR = self:tmpdir() }
end

--- Start spec/tools/netcheck.py with `args` (its subcommand first) in namespace `ns`; opts as
-- for Lab:spawn.
function Lab:netcheck(ns, args, opts)
  return self:spawn(ns, H.append({ "python3", H.NETCHECK }, args), opts)
end

--- Start a netcheck service (tcp-echo, udp-echo) in `ns`; returns it and the port it listens
-- on (see helper.port_of).
function Lab:service(ns, args)
  return H.port_of(self:netcheck(ns, args), function()
    return self:logs()
  end)
end

--- Move `n` bytes both ways through 127.0.0.1:`port` in `ns` with netcheck tcp-bulk (bounded
-- by 200 s); returns what it printed: the digests sent and received, and the bytes echoed.
function Lab:tcp_bulk(ns, port, n)
  local p = self:netcheck(ns, { "tcp-bulk", "--port", port, "--bytes", n, "--timeout", 200 })
  p:wait(210)
  return p.stdout:match("SENT (%x+) RECV (%x+) BYTES (%d+)")
end

--- Everything the lab's processes printed, for assertion messages.
function Lab:logs()
  return H.logs(self.procs)
end

--- A temporary directory of the lab's own, removed at teardown.
function Lab:tmpdir()
  if not self.dir then
    self.dir = assert(uv.fs_mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/tunnel-lab-XXXXXX"))
  end
  return self.dir
end

-- iptables rules of a home router (`nat` type) whose internet side is wan0.
local function router_rules(nat)
  local r = {}
  if nat == "none" then
    return r
  end
  local masq = { "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE" }
  if nat == "symmetric" then
    masq[#masq + 1] = "--random-fully"
  end
  r[#r + 1] = masq
  if nat ~= "pitfall" then
    for _, chain in ipairs({ "INPUT", "FORWARD" }) do
      r[#r + 1] = { "iptables", "-A", chain, "-i", "wan0", "-m", "conntrack", "--ctstate",
        "ESTABLISHED,RELATED", "-j", "ACCEPT" }
      r[#r + 1] = { "iptables", "-A", chain, "-i", "wan0", "-j", "DROP" }
    end
  end
  return r
end

function Lab:_build(o)
  local lan = o.lan
  local sides = lan and { "a" } or { "a", "b" }
  local hosts = {}
  self.roles = { pub = true, srv = true, a = true, nat1 = true }
  self.nat, self.router, self.addrs = {}, { a = "nat1" }, {}
  if lan then
    self.roles.b = true
    self.router.b = "nat1"
    self.nat.a = o.nat or o.a or "cone"
    self.nat.b = self.nat.a
  else
    self.nat.a = o.a or "cone"
    if o.b ~= false then
      self.roles.b, self.roles.nat2 = true, true
      self.router.b = "nat2"
      self.nat.b = o.b or "cone"
    else
      sides = { "a" }
    end
  end
  for _, s in ipairs({ "a", "b" }) do
    if self.nat[s] and not Lab.NAT_TYPES[self.nat[s]] then
      error("unknown nat type '" .. tostring(self.nat[s]) .. "' (none, cone, symmetric, pitfall)",
        3)
    end
  end

  for role in pairs(self.roles) do
    self:must(nil, { "ip", "netns", "add", self:ns(role) })
    self.made[#self.made + 1] = self:ns(role)
    self:must(role, { "ip", "link", "set", "lo", "up" })
  end
  local function veth(ns1, if1, ns2, if2)
    self:must(nil, { "ip", "link", "add", if1, "netns", self:ns(ns1), "type", "veth", "peer",
      "name", if2, "netns", self:ns(ns2) })
  end
  local function addr(ns, ifname, cidr)
    self:must(ns, { "ip", "addr", "add", cidr, "dev", ifname })
  end
  local function up(ns, ifname)
    self:must(ns, { "ip", "link", "set", ifname, "up" })
  end

  -- The public segment: a bridge in a namespace of its own, so the root namespace (and its
  -- firewall) is never involved.
  self:must("pub", { "ip", "link", "add", "br0", "type", "bridge" })
  up("pub", "br0")
  local function to_pub(ns, ifname, port)
    veth(ns, ifname, "pub", port)
    self:must("pub", { "ip", "link", "set", port, "master", "br0" })
    up("pub", port)
    up(ns, ifname)
  end
  to_pub("srv", "eth0", "srv")
  for _, ip in ipairs(Lab.SRV_IPS) do
    addr("srv", "eth0", ip .. "/24")
  end
  self.addrs.srv = Lab.SRV_IPS[1]

  local routers = lan and { "nat1" } or (self.roles.nat2 and { "nat1", "nat2" } or { "nat1" })
  for i, r in ipairs(routers) do
    local side = i == 1 and "a" or "b"
    to_pub(r, "wan0", r)
    local wan = "203.0.113." .. i
    addr(r, "wan0", wan .. "/24")
    self.addrs[r] = wan
    -- /proc/sys/net is per namespace; no need for sysctl(8) (procps).
    self:must(r, { "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward" })
    for _, rule in ipairs(router_rules(self.nat[side])) do
      self:must(r, rule)
    end
  end

  if lan then
    -- a and b on one bridge in nat1, which holds the LAN address 10.0.1.1.
    self:must("nat1", { "ip", "link", "add", "lan0", "type", "bridge" })
    addr("nat1", "lan0", "10.0.1.1/24")
    up("nat1", "lan0")
    for i, h in ipairs({ "a", "b" }) do
      veth(h, "eth0", "nat1", "lan-" .. h)
      self:must("nat1", { "ip", "link", "set", "lan-" .. h, "master", "lan0" })
      up("nat1", "lan-" .. h)
      hosts[#hosts + 1] = { h, "10.0.1." .. (i + 1), "10.0.1.1" }
    end
  else
    for i, h in ipairs(sides) do
      local r = "nat" .. i
      veth(h, "eth0", r, "lan0")
      addr(r, "lan0", "10.0." .. i .. ".1/24")
      up(r, "lan0")
      hosts[#hosts + 1] = { h, "10.0." .. i .. ".2", "10.0." .. i .. ".1" }
    end
  end
  for _, hst in ipairs(hosts) do
    local h, ip, gw = hst[1], hst[2], hst[3]
    addr(h, "eth0", ip .. "/24")
    up(h, "eth0")
    self:must(h, { "ip", "route", "add", "default", "via", gw })
    self.addrs[h] = ip
  end
  -- A network without NAT is routed: the server and the other router learn the way to it.
  -- Networks behind a NAT stay unroutable, as private ranges are on the internet.
  if not lan then
    for i, h in ipairs(sides) do
      if self.nat[h] == "none" then
        local net, via = "10.0." .. i .. ".0/24", "203.0.113." .. i
        self:must("srv", { "ip", "route", "add", net, "via", via })
        if #sides == 2 then
          self:must("nat" .. (3 - i), { "ip", "route", "add", net, "via", via })
        end
      end
    end
  elseif self.nat.a == "none" then
    self:must("srv", { "ip", "route", "add", "10.0.1.0/24", "via", "203.0.113.1" })
  end
end

--- Build a lab. o.a, o.b: nat type of each side ("none", "cone", "symmetric", "pitfall";
-- default "cone"; b = false leaves side b out). o.lan = true: a and b share one LAN behind nat1
-- (o.nat: its type). Raises (after cleaning up) when a setup step fails.
function Lab.new(o)
  o = o or {}
  for k in pairs(o) do
    if k ~= "a" and k ~= "b" and k ~= "lan" and k ~= "nat" then
      error("Lab.new: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  counter = counter + 1
  local self = setmetatable({
    prefix = string.format("tl%dx%d", uv.os_getpid(), counter),
    procs = {},
    made = {},
    roles = {},
  }, Lab)
  live[self] = true
  local ok, err = pcall(self._build, self, o)
  if not ok then
    self:teardown()
    error(err, 2)
  end
  return self
end

--- Kill the lab's processes (by PID: SIGTERM, then SIGKILL), delete its namespaces (with their
-- interfaces and bridges) and its temp dir. Safe to call twice.
function Lab:teardown()
  for _, p in ipairs(self.procs) do
    H.stop(p)
    if p.handle and not p.handle:is_closing() then
      p.handle:close()
    end
  end
  for i = #self.made, 1, -1 do
    os.execute("ip netns del " .. q(self.made[i]) .. " 2>/dev/null")
  end
  self.made = {}
  if self.dir then
    os.execute("rm -rf " .. q(self.dir))
    self.dir = nil
  end
  live[self] = nil
end

--- Tear down every lab not torn down yet (a spec's after_each, whatever its test built).
-- Returns the names of their namespaces that still exist (see Lab:leftovers; none expected).
function Lab.teardown_all()
  local left = {}
  for lab in pairs(live) do
    lab:teardown()
    H.append(left, lab:leftovers())
  end
  return left
end

--- Names of this lab's namespaces that still exist (teardown should leave none).
function Lab:leftovers()
  local _, out = run({ "ip", "netns", "list" })
  local left = {}
  for name in out:gmatch("(%S+)[^\n]*") do
    if name:sub(1, #self.prefix + 1) == self.prefix .. "-" then
      left[#left + 1] = name
    end
  end
  return left
end

-- Safety net: a spec that dies before its teardown still leaves nothing behind. Blocking and
-- loop-free, since it runs during the host's shutdown.
do
  local ok, host = pcall(require, "tunnel.host")
  if ok then
    host.on_shutdown(function()
      for lab in pairs(live) do
        for _, p in ipairs(lab.procs) do
          if not p.done and p.pid then
            uv.kill(p.pid, "sigkill")
          end
        end
        for i = #lab.made, 1, -1 do
          os.execute("ip netns del " .. q(lab.made[i]) .. " 2>/dev/null")
        end
        if lab.dir then
          os.execute("rm -rf " .. q(lab.dir))
        end
      end
    end)
  end
end

---------------------------------------------------------------------------------------------------
-- Servers

-- Poll until `tunnel stun ADDR` run inside `from` gets an answer (bounded by `timeout` s).
function Lab:wait_stun(from, addr, timeout)
  local deadline = uv.now() + (timeout or 20) * 1000
  local ok, out, err
  repeat
    ok, out, err = self:exec(from, { H.BIN, "stun", "--timeout", "0.5", addr })
    uv.update_time()
  until ok or uv.now() > deadline
  return ok, out .. err
end

--- Start coturn (turnserver) in `ns` (default "srv"). o.ips: listening IPs (default both
-- server addresses; two enable RFC 5780), o.port (3478), o.user ("lab"), o.password ("lab"),
-- o.realm ("lab.test"), o.min_port/o.max_port (relay ports, 49160-49200). Waits until it
-- answers STUN and returns the process handle with .ips, .port, .user, .password, .realm,
-- .config (the file) and .log (its log file).
function Lab:start_coturn(ns, o)
  ns, o = ns or "srv", o or {}
  local ips = o.ips or (ns == "srv" and Lab.SRV_IPS) or { self:addr(ns) }
  local port = o.port or 3478
  local dir = self:tmpdir()
  local tag = string.format("turn-%s-%d", ns, #self.procs + 1)
  local user, pass, realm = o.user or "lab", o.password or "lab", o.realm or "lab.test"
  local lines = {}
  for _, ip in ipairs(ips) do
    lines[#lines + 1] = "listening-ip=" .. ip
  end
  local conf = dir .. "/" .. tag .. ".conf"
  local log = dir .. "/" .. tag .. ".log"
  for _, l in ipairs({
    "listening-port=" .. port,
    "relay-ip=" .. ips[1],
    "min-port=" .. (o.min_port or 49160),
    "max-port=" .. (o.max_port or 49200),
    "lt-cred-mech",
    "realm=" .. realm,
    "user=" .. user .. ":" .. pass,
    "no-tls",
    "no-dtls",
    "no-cli",
    "fingerprint",
    "userdb=" .. dir .. "/" .. tag .. ".db",
    "log-file=" .. log,
    "pidfile=" .. dir .. "/" .. tag .. ".pid",
    "simple-log",
    "no-stdout-log",
  }) do
    lines[#lines + 1] = l
  end
  H.write_file(conf, table.concat(lines, "\n") .. "\n")
  local p = self:spawn(ns, { "turnserver", "-c", conf })
  p.ips, p.port, p.user, p.password, p.realm, p.config, p.log = ips, port, user, pass, realm, conf,
    log
  for _, ip in ipairs(ips) do
    local ok, out = self:wait_stun(ns, ip .. ":" .. port)
    if not ok then
      error(string.format("coturn in %s does not answer on %s:%d: %s\n%s", ns, ip, port, out,
        H.read_file(log) or ""), 2)
    end
  end
  return p
end

--- Start our own STUN responder (`tunnel stun --serve`) in `ns` (default "srv") on o.ips
-- (default both server addresses) and o.port (default 3490: coturn takes 3478 and, with two
-- IPs, 3479 too). Returns the process handle with .ips and .port once it listens.
function Lab:start_responder(ns, o)
  ns, o = ns or "srv", o or {}
  local ips = o.ips or (ns == "srv" and Lab.SRV_IPS) or { self:addr(ns) }
  local port = o.port or 3490
  local argv = { H.BIN, "stun" }
  for _, ip in ipairs(ips) do
    argv[#argv + 1] = "--serve"
    argv[#argv + 1] = ip .. ":" .. port
  end
  local p = self:spawn(ns, argv)
  p.ips, p.port = ips, port
  H.wait_until(function()
    return select(2, p.stdout:gsub("STUN responder on ", "")) >= #ips or p.done
  end, 20)
  if p.done or select(2, p.stdout:gsub("STUN responder on ", "")) < #ips then
    error("the STUN responder did not start:" .. self:logs(), 2)
  end
  return p
end

---------------------------------------------------------------------------------------------------
-- iroh mode

Lab.RELAY_PORT = 3340
Lab.RELAY_URL = "http://" .. Lab.SRV_IPS[1] .. ":" .. Lab.RELAY_PORT

--- Start `tunnel relay` in "srv" at Lab.RELAY_URL (o.stun: with its STUN responder on port 3478
-- of the same address) and wait until it listens.
function Lab:start_relay(o)
  o = o or {}
  local ip = Lab.SRV_IPS[1]
  local argv = { H.BIN, "relay", "--listen", ip .. ":" .. Lab.RELAY_PORT }
  if o.stun then
    H.append(argv, { "--stun-listen", ip .. ":3478" })
  end
  local p = self:spawn("srv", argv, { env = self:env() })
  assert(p:wait_output("relay listening", 20, "stdout"), "relay" .. self:logs())
  return p
end

--- The server side of iroh mode, in b: a server key and an access token made there, a TCP echo
-- service (unless o.echo == false) and `tunnel server` with --allowed-tcp 127.0.0.0/8 and
-- o.args, once it printed o.ready (a pattern, default "Relay: ") on o.which (default
-- "stdout"). Returns w = { key, token, eport, srv, id }.
function Lab:iroh_server(o)
  o = o or {}
  local w = { key = self:tmpdir() .. "/server.key" }
  assert(self:exec("b", { H.BIN, "generate-server-key", "--output", w.key }))
  local _, token = self:exec("b", { H.BIN, "generate-token" })
  w.token = token:gsub("%s+$", "")
  if o.echo ~= false then
    w.eport = select(2, self:service("b", { "tcp-echo", "--port", 0 }))
  end
  w.srv = self:spawn("b", H.append({ H.BIN, "server", "--listen", "0.0.0.0:0", "--secret-file",
    w.key, "--auth-tokens", w.token, "--allowed-tcp", "127.0.0.0/8" }, o.args),
    { env = self:env() })
  assert(w.srv:wait_output(o.ready or "Relay: ", 20, o.which or "stdout"), "server" ..
    self:logs())
  w.id = w.srv.stdout:match("EndpointId: (%S+)")
  return w
end

--- `tunnel client` in a for the server of `w` (Lab:iroh_server): by w.id and w.token, with
-- o.args, forwarding 127.0.0.1:(o.port or 7000) to the echo service. o.started(): called as
-- soon as it is started. Waits until it forwards unless o.wait == false.
function Lab:iroh_client(w, o)
  o = o or {}
  local argv = H.append({ H.BIN, "client", "--server-node-id", w.id }, o.args)
  H.append(argv, { "--auth-token", w.token, "--source", "tcp://127.0.0.1:" .. w.eport, "--target",
    "127.0.0.1:" .. (o.port or 7000) })
  local cli = self:spawn("a", argv, { env = self:env() })
  if o.started then
    o.started()
  end
  if o.wait ~= false then
    assert(cli:wait_output("forwarding tcp ", 30), "client" .. self:logs())
  end
  return cli
end

--- iroh mode across the lab: `tunnel relay` with its STUN responder, the server side in b
-- registered with it and a client in a that knows the server by its EndpointId and the relay
-- URL alone, returned once the client forwards. o.args: more arguments for both sides;
-- o.started: as for Lab:iroh_client. Returns w as Lab:iroh_server does, with relay and cli.
function Lab:iroh_session(o)
  o = o or {}
  local relay = self:start_relay({ stun = true })
  local args = H.append({ "--relay-url", Lab.RELAY_URL }, o.args)
  local w = self:iroh_server({ args = args })
  w.relay = relay
  w.cli = self:iroh_client(w, { args = args, started = o.started })
  return w
end

return Lab
