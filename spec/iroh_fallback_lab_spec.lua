-- iroh mode when the direct path dies (root): the NAT lab of spec/lab.lua with `tunnel relay`
-- on the public segment, the server behind NAT 2, the client behind NAT 1. The session goes
-- direct; then the routers start dropping the UDP between the two NATs (the relay stays
-- reachable): the traffic must return to the relay, the forwarded TCP connection must live on,
-- and once the path is back the session must go direct again. Deadlines only bound a test; the
-- times printed are measurements, not assertions.
local H = require "helper"
local Lab = require "lab"

local TOOL = "spec/tools/netcheck.py"

local available, why = Lab.available({ "python3" })
if not available then
  describe("iroh mode: direct path lost and found again", function()
    pending("skipped: " .. why)
  end)
  return
end

local uv = require "luv"

local SRV1 = Lab.SRV_IPS[1]

-- Let the loop run (the processes' output keeps arriving) for `s` seconds.
local function pause(s)
  H.wait_until(function()
    return false
  end, s)
end

local function now()
  uv.update_time()
  return uv.now() / 1000
end
local URL = "http://" .. SRV1 .. ":3340"

-- One TCP connection through the forward for as long as stdin stays open: a line every
-- 100 ms, each echo awaited. Prints "STEADY <lines> MAXGAP <ms>" at the end, or "BROKEN ..."
-- when the connection failed.
local STEADY = [[
import socket, sys, time, threading
s = socket.create_connection(("127.0.0.1", 7000), timeout=60)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
n, gap, last = 0, 0.0, time.monotonic()
print("READY", flush=True)
try:
    while not stop.is_set():
        msg = ("line %08d\n" % n).encode()
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(len(msg) - len(got))
            if not chunk:
                raise OSError("connection closed")
            got += chunk
        assert got == msg, (got, msg)
        now = time.monotonic()
        gap = max(gap, now - last)
        last = now
        n += 1
        time.sleep(0.1)
    print("STEADY %d MAXGAP %.0f" % (n, gap * 1000), flush=True)
except Exception as e:
    print("BROKEN after %d lines: %s" % (n, e), flush=True)
    sys.exit(1)
]]

local function start(lab)
  local env = { TUNNEL_LOG = os.getenv("SPEC_TUNNEL_LOG") or false, XDG_RUNTIME_DIR = lab:tmpdir() }
  local dir = lab:tmpdir()
  local relay = lab:spawn("srv", { H.BIN, "relay", "--listen", SRV1 .. ":3340", "--stun-listen",
    SRV1 .. ":3478" }, { env = env })
  assert(relay:wait_output("relay listening", 20, "stdout"), "relay" .. lab:logs())
  local key = dir .. "/server.key"
  assert(lab:exec("b", { H.BIN, "generate-server-key", "--output", key }))
  local _, token = lab:exec("b", { H.BIN, "generate-token" })
  token = token:gsub("%s+$", "")
  local echo = lab:spawn("b", { "python3", TOOL, "tcp-echo", "--port", 0 })
  assert(echo:wait_output("PORT %d+", 20, "stdout"), "echo" .. lab:logs())
  local eport = echo.stdout:match("PORT (%d+)")
  local srv = lab:spawn("b", { H.BIN, "server", "--listen", "0.0.0.0:0", "--secret-file", key,
    "--auth-tokens", token, "--allowed-tcp", "127.0.0.0/8", "--relay-url", URL }, { env = env })
  assert(srv:wait_output("Relay: ", 20, "stdout"), "server" .. lab:logs())
  local id = srv.stdout:match("EndpointId: (%S+)")
  local cli = lab:spawn("a", { H.BIN, "client", "--server-node-id", id, "--relay-url", URL,
    "--auth-token", token, "--source", "tcp://127.0.0.1:" .. eport, "--target",
    "127.0.0.1:7000" }, { env = env })
  assert(cli:wait_output("forwarding tcp ", 30), "client" .. lab:logs())
  return { cli = cli, srv = srv, relay = relay }
end

-- Drop (or stop dropping) the UDP between the two NATs' public addresses, in NAT 1: the
-- direct path dies while both still reach the relay.
local function direct_path(lab, up)
  local op = up and "-D" or "-I"
  local peer = lab:public_ip("b")
  for _, dir in ipairs({ "-d", "-s" }) do
    assert(lab:exec("nat1", { "iptables", op, "FORWARD", "-p", "udp", dir, peer, "-j", "DROP" }))
  end
end

local function count(s, plain)
  return H.count(s, plain, true)
end

describe("iroh mode: direct path lost and found again", function()
  local lab

  after_each(function()
    if lab then
      lab:teardown()
      lab = nil
    end
  end)

  it("falls back to the relay and goes direct again, and the TCP connection lives on",
    function()
      lab = Lab.new({ a = "cone", b = "cone" })
      local w = start(lab)
      assert(w.cli:wait_output("path: relay %-> direct 203%.0%.113%.2:%d+", 30),
        "no direct path" .. lab:logs())
      local steady = lab:spawn("a", { "python3", "-c", STEADY }, { stdin = true })
      assert(steady:wait_output("READY", 20, "stdout"), "steady client" .. lab:logs())
      pause(1)

      direct_path(lab, false)
      local t0 = now()
      assert(w.cli:wait_output("path: direct [^\n]* %-> relay", 30),
        "did not fall back to the relay" .. lab:logs())
      local fell_back = now() - t0
      -- The connection keeps echoing over the relay (the client would exit on an error).
      pause(2)
      assert.is_false(steady.done, "the connection broke on the relay: " .. steady.stdout ..
        lab:logs())

      direct_path(lab, true)
      local t1 = now()
      H.wait_until(function()
        return count(w.cli.stderr, "path: relay -> direct") >= 2
      end, 60)
      assert.equal(2, count(w.cli.stderr, "path: relay -> direct"), "not direct again" ..
        lab:logs())
      local back = now() - t1
      pause(1)
      steady:close_stdin()
      steady:wait(20)
      assert.equal(0, steady.code, steady.stdout .. lab:logs())
      local lines, gap = steady.stdout:match("STEADY (%d+) MAXGAP (%d+)")
      assert.truthy(lines, steady.stdout)
      io.stderr:write(string.format("\n  [measure] direct path cut -> relay: %.1f s; path back " ..
        "-> direct: %.1f s; one TCP connection, %s lines, longest wait for an echo %s ms\n",
        fell_back, back, lines, gap))
    end)
end)
