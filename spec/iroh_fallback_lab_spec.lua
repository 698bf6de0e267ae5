-- iroh mode when the direct path dies (root): the NAT lab of spec/lab.lua with `tunnel relay`
-- on the public segment, the server behind NAT 2, the client behind NAT 1. The session goes
-- direct; then the routers start dropping the UDP between the two NATs (the relay stays
-- reachable): the traffic must return to the relay, the forwarded TCP connection must live on,
-- and once the path is back the session must go direct again. Deadlines only bound a test; the
-- times printed are measurements, not assertions.
local H = require "helper"
local Lab = require "lab"

local TITLE = "iroh mode: direct path lost and found again"

if not Lab.guard(TITLE, { "python3" }) then
  return
end

local uv = require "luv"

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

describe(TITLE, function()
  local lab

  after_each(Lab.teardown_all)

  it("falls back to the relay and goes direct again, and the TCP connection lives on",
    function()
      lab = Lab.new({ a = "cone", b = "cone" })
      local w = lab:iroh_session()
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
