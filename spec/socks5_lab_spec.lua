-- iroh mode behind a SOCKS5 proxy (root): the NAT lab of spec/lab.lua with `tunnel relay` on
-- the public segment, the server behind NAT 2 (namespace b) and the client behind NAT 1
-- (namespace a). A firewall rule in a refuses every direct TCP connection to the relay's port;
-- Debian's dante (`danted`) runs on the router nat1 (LAN side 10.0.1.1:1080) and is the only way
-- out to the relay. The client names the relay by a host name that only the proxy can resolve,
-- so a working forward shows that the relay connection went through the proxy with socks5h.
-- --relay-only keeps QUIC on the relay: hole punching is UDP and never uses the proxy.
-- Deadlines only bound a test.
local H = require "helper"
local Lab = require "lab"

local TITLE = "a client behind a SOCKS5 proxy in the NAT lab"
local MiB = 1024 * 1024

if not Lab.guard(TITLE, { "python3", "danted", "mount" }) then
  return
end

local SRV1 = Lab.SRV_IPS[1]
local RELAY_PORT = Lab.RELAY_PORT
local URL = Lab.RELAY_URL
-- Resolvable inside the proxy's process only (see start_dante); unknown to the client's host.
local NAME = "relay.lab.test"
local NAME_URL = "http://" .. NAME .. ":" .. RELAY_PORT
local PROXY_PORT = 1080

-- danted on router nat1: clients from a's LAN, connects out of wan0 (its own public address, so
-- no NAT rule is involved), every session logged. The host name of the relay is put into an
-- /etc/hosts of the proxy's own: `ip netns exec` runs the command in a private mount
-- namespace, so the bind mount is seen by danted alone and vanishes with it.
local function start_dante(lab)
  local dir = lab:tmpdir()
  local lan = lab:addr("a"):gsub("%.%d+$", ".0") .. "/24"
  local proxy_ip = lab:addr("a"):gsub("%.%d+$", ".1")
  local conf, log, pid, hosts = dir .. "/danted.conf", dir .. "/danted.log", dir .. "/danted.pid",
    dir .. "/hosts"
  H.write_file(hosts, "127.0.0.1 localhost\n" .. SRV1 .. " " .. NAME .. "\n")
  H.write_file(conf, table.concat({
    "logoutput: stderr " .. log,
    "internal: " .. proxy_ip .. " port = " .. PROXY_PORT,
    "external: wan0",
    "user.privileged: root",
    "user.unprivileged: nobody",
    "clientmethod: none",
    "socksmethod: none",
    "client pass {",
    "  from: " .. lan .. " to: 0.0.0.0/0",
    "  log: connect disconnect error",
    "}",
    "socks pass {",
    "  from: " .. lan .. " to: 0.0.0.0/0",
    "  command: connect",
    "  log: connect disconnect error",
    "}",
    "socks block {",
    "  from: 0.0.0.0/0 to: 0.0.0.0/0",
    "  log: connect error",
    "}",
    "",
  }, "\n"))
  local p = lab:spawn("nat1", { "sh", "-c", string.format(
    "mount --bind %s /etc/hosts && exec danted -f %s -p %s -N 1", hosts, conf, pid) })
  assert(p:wait_output("running", 20), "danted did not start" .. lab:logs())
  p.log, p.ip = log, proxy_ip
  p.url = string.format("socks5h://%s:%d", proxy_ip, PROXY_PORT)
  return p
end

-- Whether a TCP connection from `ns` to host:port is accepted (python3, 5 s bound).
local function can_connect(lab, ns, host, port)
  local ok = lab:exec(ns, { "python3", "-c", string.format(
    "import socket; socket.create_connection((%q, %d), timeout=5).close()", host, port) }, 20)
  return ok
end

-- A client in a (not waited for) with the relay `url`, --relay-only and `extra`, forwarding
-- 127.0.0.1:lport to the echo service in b.
local function client(lab, w, url, lport, extra)
  local args = { "--relay-url", url, "--relay-only" }
  for _, a in ipairs(extra or {}) do
    args[#args + 1] = a
  end
  return lab:iroh_client(w, { args = args, port = lport, wait = false })
end

describe(TITLE, function()
  local lab, w

  lazy_setup(function()
    lab = Lab.new({ a = "cone", b = "cone" })
    -- The client's host may not talk TCP to the relay; everything else (its LAN, the proxy)
    -- stays open.
    lab:must("a", { "iptables", "-A", "OUTPUT", "-p", "tcp", "-d", SRV1, "--dport", RELAY_PORT,
      "-j", "REJECT", "--reject-with", "tcp-reset" })
    local dante = start_dante(lab)
    lab:start_relay()
    w = lab:iroh_server({ args = { "--relay-url", URL, "--relay-only" } })
    w.dante = dante
  end)

  lazy_teardown(function()
    assert.same({}, Lab.teardown_all())
  end)

  it("leaves the proxy as the only way from the client's host to the relay", function()
    assert.is_false(can_connect(lab, "a", SRV1, RELAY_PORT))
    assert.is_true(can_connect(lab, "nat1", SRV1, RELAY_PORT))
    assert.is_true(can_connect(lab, "a", w.dante.ip, PROXY_PORT))
    -- The host name is the proxy's secret.
    local ok = lab:exec("a", { "getent", "hosts", NAME })
    assert.is_false(ok)
  end)

  it("reaches the relay through the proxy (socks5h) and carries 5 MiB intact", function()
    local cli = client(lab, w, NAME_URL, 7000, { "--socks5-proxy", w.dante.url })
    assert(cli:wait_output("forwarding tcp ", 30), "client" .. lab:logs())
    assert.matches("(relayed,", cli.stderr, 1, true)
    local sent, recv, bytes = lab:tcp_bulk("a", 7000, 5 * MiB)
    assert.equal(5 * MiB, tonumber(bytes), lab:logs())
    assert.equal(sent, recv, lab:logs())
    assert.is_nil(cli.stderr:find("path: relay -> direct", 1, true), lab:logs())
    -- dante logged the session: from the client's address, out of its own public address to
    -- the relay (by the address it looked up for the name).
    local function esc(ip)
      return (ip:gsub("%.", "%%."))
    end
    assert.matches("pass%(%d+%): tcp/connect %[: " .. esc(lab:addr("a")) .. "%.%d+ [^\n]*%-> " ..
      esc(lab:addr("nat1")) .. "%.%d+ " .. esc(SRV1) .. "%." .. RELAY_PORT,
      H.read_file(w.dante.log) or "")
  end)

  it("cannot reach the relay without --socks5-proxy, and says so", function()
    local cli = client(lab, w, URL, 7001)
    -- Two attempts refused, and the client keeps trying rather than giving up.
    local line = "relay " .. URL:gsub("%p", "%%%0") .. ": cannot reach the relay: [^\n]*retrying"
    assert(cli:wait_output(line .. ".*" .. line, 30), "no error line" .. lab:logs())
    assert.is_false(cli.done, lab:logs())
    assert.is_nil(cli.stderr:find("forwarding tcp ", 1, true), lab:logs())
    assert.is_nil(cli.stderr:find("relay[^\n]*: connected"), lab:logs())
  end)
end)
