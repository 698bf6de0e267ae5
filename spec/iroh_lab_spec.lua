-- iroh mode through real NATs (root): the NAT lab of spec/lab.lua with `tunnel relay` (and its
-- STUN responder) on the public segment, the server behind NAT 2 (namespace b), the client
-- behind NAT 1 (namespace a). The client knows the server only by its EndpointId and the
-- relay URL. Deadlines only bound a test; the times printed are measurements, not assertions.
local H = require "helper"
local Lab = require "lab"

local MiB = 1024 * 1024

local TITLE = "iroh mode in the NAT lab"

if not Lab.guard(TITLE, { "python3" }) then
  return
end

local URL = Lab.RELAY_URL

-- iroh mode across the lab (Lab:iroh_session); o.relay_only: both sides with --relay-only.
local function start(lab, o)
  local early
  local w = lab:iroh_session({ args = o.relay_only and { "--relay-only" } or nil,
    started = o.early_bulk and function()
      -- Connect as soon as the client listens (before the tunnel is up): the first bytes go
      -- through the relay, the rest over whatever path the connection moves to.
      early = lab:spawn("a", { "sh", "-c", string.format("for i in $(seq 200); do python3 %s " ..
        "tcp-bulk --port 7000 --bytes %d --timeout 200 && exit 0; sleep 0.02; done; exit 1",
        H.NETCHECK, o.early_bulk) })
    end })
  w.early = early
  return w
end

local function bulk(lab, n)
  return lab:tcp_bulk("a", 7000, n)
end

local function ms_between(log, a, b)
  local function t(pat)
    local h, m, s = log:match("T(%d+):(%d+):([%d.]+)Z [^\n]*" .. pat)
    return h and ((tonumber(h) * 60 + tonumber(m)) * 60 + tonumber(s)) * 1000
  end
  local ta, tb = t(a), t(b)
  return ta and tb and (tb - ta)
end

describe(TITLE, function()
  local lab

  after_each(Lab.teardown_all)

  it("starts relayed and goes direct through two endpoint-independent NATs, mid-transfer",
    function()
      lab = Lab.new({ a = "cone", b = "cone" })
      local w = start(lab, { early_bulk = 30 * MiB })
      assert.matches("(relayed,", w.cli.stderr, 1, true)
      -- 30 MiB, sent from the first moment, while the path changes under it.
      w.early:wait(210)
      local sent, recv, bytes = w.early.stdout:match("SENT (%x+) RECV (%x+) BYTES (%d+)")
      assert.equal(30 * MiB, tonumber(bytes), lab:logs())
      assert.equal(sent, recv, lab:logs())
      assert(w.cli:wait_output("path: relay %-> direct 203%.0%.113%.2:%d+", 30),
        "no direct path" .. lab:logs())
      io.stderr:write(string.format("\n  [measure] connected -> direct: %s ms\n",
        tostring(ms_between(w.cli.stderr, "forwarding tcp", "path: relay"))))
    end)

  it("stays on the relay between two symmetric NATs, and the transfer works", function()
    lab = Lab.new({ a = "symmetric", b = "symmetric" })
    local w = start(lab, {})
    local sent, recv, bytes = bulk(lab, 10 * MiB)
    assert.equal(10 * MiB, tonumber(bytes), lab:logs())
    assert.equal(sent, recv, lab:logs())
    assert.is_nil(w.cli.stderr:find("path: relay -> direct", 1, true), lab:logs())
  end)

  it("keeps a relayed session when the relay is killed and restarted on its address",
    function()
      lab = Lab.new({ a = "symmetric", b = "symmetric" })
      local w = start(lab, {})
      local sent, recv = bulk(lab, 2 * MiB)
      assert.equal(sent, recv, lab:logs())
      -- A connection opened before the relay goes away must survive it.
      local hold = lab:spawn("a", { "python3", "-c", table.concat({
        "import socket, sys",
        "s = socket.create_connection(('127.0.0.1', 7000), timeout=120)",
        "s.sendall(b'before\\n'); assert s.recv(7) == b'before\\n'",
        "print('OPEN', flush=True)",
        "sys.stdin.readline()",
        "s.sendall(b'after\\n'); got = b''",
        "while len(got) < 6: got += s.recv(6 - len(got))",
        "print('GOT', got.decode().strip(), flush=True)",
      }, "\n") }, { stdin = true })
      assert(hold:wait_output("OPEN", 30, "stdout"), "held connection" .. lab:logs())
      w.relay:kill("sigkill")
      w.relay:wait(10)
      lab:start_relay({ stun = true })
      -- Both sides come back to the relay...
      for _, p in ipairs({ w.cli, w.srv }) do
        H.wait_until(function()
          return H.count(p.stderr, "relay " .. URL .. ": connected", true) >= 2
        end, 40)
      end
      -- ...and the session carries on: the held connection and a new transfer.
      hold:write("go\n")
      assert(hold:wait_output("GOT after", 60, "stdout"), "held connection after the restart" ..
        lab:logs())
      sent, recv = bulk(lab, 2 * MiB)
      assert.equal(sent, recv, lab:logs())
      assert.is_false(w.cli.done, lab:logs())
    end)

  it("never leaves the relay with --relay-only", function()
    lab = Lab.new({ a = "cone", b = "cone" })
    local w = start(lab, { relay_only = true })
    local sent, recv = bulk(lab, 5 * MiB)
    assert.equal(sent, recv, lab:logs())
    assert.is_nil(w.cli.stderr:find("path: relay -> direct", 1, true), lab:logs())
  end)

  it("finds the server on the same LAN by EndpointId alone, with no relay or server", function()
    lab = Lab.new({ lan = true, nat = "cone" })
    local w = lab:iroh_server({ ready = "Listening: " })
    local cli = lab:iroh_client(w)
    local b_ip = lab:addr("b"):gsub("%p", "%%%0")
    assert.matches("found " .. w.id .. " on the local network at " .. b_ip, cli.stderr)
    assert.matches("(direct,", cli.stderr, 1, true)
    local sent, recv = bulk(lab, 5 * MiB)
    assert.equal(sent, recv, lab:logs())
  end)

  it("connects to the direct address a discovery record gives, with no relay", function()
    lab = Lab.new({ lan = true, nat = "cone" })
    lab:start_relay()
    local dns = { "--dns-server", URL .. "/pkarr" }
    -- The server has published its record once it says so (on stderr).
    local w = lab:iroh_server({ args = dns, ready = "published ", which = "stderr" })
    local cli = lab:iroh_client(w, { args = dns })
    local b_ip = lab:addr("b"):gsub("%p", "%%%0")
    assert.matches("found " .. w.id .. " at " .. b_ip .. ":%d+", cli.stderr)
    assert.matches("(direct,", cli.stderr, 1, true)
    local sent, recv = bulk(lab, 5 * MiB)
    assert.equal(sent, recv, lab:logs())
  end)
end)
