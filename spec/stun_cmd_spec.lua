-- `tunnel stun` and tunnel.core.stun on loopback (no root): our responder, the probe binding,
-- the command's output and exit status, and the verdict logic.
local H = require "helper"
local uv = require "luv"
local stun = require "tunnel.core.stun"
local cmd = require "tunnel.cmd.stun"

--- A UDP port on 127.0.0.1 that nothing listens on right now.
local function dead_port()
  return H.free_port("udp")
end

local procs = {}

--- Start `tunnel stun --serve` on `n` ephemeral loopback ports; returns the process and the
-- "127.0.0.1:port" addresses.
local function responder(n)
  local args = { "stun" }
  for _ = 1, n or 1 do
    args[#args + 1] = "--serve"
    args[#args + 1] = "127.0.0.1:0"
  end
  local p = H.start(args)
  procs[#procs + 1] = p
  H.wait_until(function()
    return select(2, p.stdout:gsub("STUN responder on ", "")) >= (n or 1) or p.done
  end, 20)
  local addrs = {}
  for a in p.stdout:gmatch("STUN responder on (%S+)") do
    addrs[#addrs + 1] = a
  end
  assert(#addrs == (n or 1), "responder did not start: " .. p.stdout .. p.stderr)
  return p, addrs
end

local function mapped_of(out, server)
  for line in out:gmatch("[^\n]+") do
    if line:sub(1, #server + 1) == server .. ":" then
      return line:match(": mapped (%S+),")
    end
  end
end

describe("tunnel stun on loopback", function()
  after_each(function()
    for _, p in ipairs(procs) do
      p:kill()
      p:wait(10)
    end
    procs = {}
  end)

  it("learns 127.0.0.1 and the local port from our responder, and says there is no NAT",
    function()
      local _, addrs = responder(2)
      local p = H.tunnel({ "stun", addrs[1], addrs[2] })
      assert.equal(0, p.code, p.stdout .. p.stderr)
      local localport = p.stdout:match("local address: 0%.0%.0%.0:(%d+)\n")
      assert.is_not_nil(localport, p.stdout)
      for _, a in ipairs(addrs) do
        assert.equal("127.0.0.1:" .. localport, mapped_of(p.stdout, a), p.stdout)
      end
      assert.matches(cmd.VERDICT_NONAT, p.stdout, 1, true)
    end)

  it("sends from --bind", function()
    local _, addrs = responder(1)
    local port = dead_port()
    local p = H.tunnel({ "stun", "--bind", "127.0.0.1:" .. port, addrs[1] })
    assert.equal(0, p.code, p.stdout .. p.stderr)
    assert.equal("127.0.0.1:" .. port, mapped_of(p.stdout, addrs[1]), p.stdout)
  end)

  it("resolves names and uses port 3478 by default", function()
    -- localhost comes from /etc/hosts; port 3478 may be anyone's, so only the default port
    -- is checked, through the name's resolution line.
    local _, addrs = responder(1)
    local port = addrs[1]:match(":(%d+)$")
    local p = H.tunnel({ "stun", "localhost:" .. port })
    assert.equal(0, p.code, p.stdout .. p.stderr)
    assert.matches("localhost:" .. port .. " %(127%.0%.0%.1:" .. port .. "%): mapped 127%.0%.0%.1:",
      p.stdout)
    local hp = assert(require("tunnel.addr").parse_hostport("127.0.0.1",
      { default_port = cmd.DEFAULT_PORT }))
    assert.equal(3478, hp.port)
    assert.equal("127.0.0.1:3478", cmd.resolve("127.0.0.1", true))
  end)

  it("fails with status 1 and says why when no server answers", function()
    local port = dead_port()
    local p = H.tunnel({ "stun", "--timeout", "1", "127.0.0.1:" .. port })
    assert.equal(1, p.code, p.stdout .. p.stderr)
    assert.matches("127.0.0.1:" .. port .. ": no answer %(%d+ requests? sent%)", p.stdout)
    assert.matches("no STUN server answered", p.stderr, 1, true)
  end)

  it("still succeeds when one of two servers is dead, and reports both", function()
    local _, addrs = responder(1)
    local dead = "127.0.0.1:" .. dead_port()
    local p = H.tunnel({ "stun", "--timeout", "1", addrs[1], dead })
    assert.equal(0, p.code, p.stdout .. p.stderr)
    assert.is_not_nil(mapped_of(p.stdout, addrs[1]), p.stdout)
    assert.matches(dead .. ": no answer", p.stdout, 1, true)
  end)

  it("rejects bad usage with a message", function()
    local p = H.tunnel({ "stun", "--serve", "127.0.0.1:0", "127.0.0.1:3478" })
    assert.equal(1, p.code)
    assert.matches("--serve runs a responder", p.stderr, 1, true)
    p = H.tunnel({ "stun", "--bind", "nonsense", "127.0.0.1:3478" })
    assert.equal(1, p.code)
    assert.matches("--bind nonsense", p.stderr, 1, true)
    p = H.tunnel({ "stun", "--timeout", "0", "127.0.0.1:3478" })
    assert.equal(2, p.code)
    p = H.tunnel({ "stun", "1", "2", "3", "4", "5", "6", "7", "8", "9" })
    assert.equal(1, p.code)
    assert.matches("at most 8 servers", p.stderr, 1, true)
  end)

  it("shuts down cleanly on SIGTERM while a probe and a responder are open", function()
    -- The host's closer must close both (ASan builds check that nothing leaks).
    local code = table.concat({
      "local stun = require 'tunnel.core.stun'",
      "local s = assert(stun.server{ bind = '127.0.0.1:0' })",
      "assert(stun.probe{ servers = { '127.0.0.1:" .. dead_port() .. "' },",
      "  on_done = function() print('done?') end })",
      "print('started ' .. s:local_addr()); io.stdout:flush()",
    }, "\n")
    local p = H.start({ "-e", code })
    procs[#procs + 1] = p
    assert.is_true(p:wait_output("started", 20, "stdout"), p.stdout .. p.stderr)
    p:kill("sigterm")
    p:wait(20)
    assert.equal(0, p.code, p.stderr)
    assert.not_matches("done?", p.stdout, 1, true)
  end)

  it("--serve stops on SIGTERM with status 0", function()
    local p = responder(1)
    p:kill("sigterm")
    p:wait(10)
    assert.equal(0, p.code, p.stderr)
  end)
end)

describe("tunnel.core.stun", function()
  local servers = {}

  after_each(function()
    for _, s in ipairs(servers) do
      s:close()
    end
    servers = {}
  end)

  local function server()
    local s = assert(stun.server({ bind = "127.0.0.1:0" }))
    servers[#servers + 1] = s
    return s
  end

  local function probe(opts)
    local got
    opts.on_done = opts.on_done or function(results, local_addr)
      got = { results = results, local_addr = local_addr }
    end
    local p, err = stun.probe(opts)
    assert(p, err)
    H.wait_until(function()
      return got ~= nil
    end, 30)
    return got, p
  end

  it("probes several servers and reports every result field", function()
    local s1, s2 = server(), server()
    local dead = "127.0.0.1:" .. dead_port()
    local got, p = probe({ servers = { s1:local_addr(), dead, s2:local_addr() },
      bind = "127.0.0.1:0", timeout_ms = 1200 })
    assert.is_not_nil(got, "on_done never ran")
    assert.is_true(p:closed())
    local r = got.results
    assert.equal(3, #r)
    assert.equal(s1:local_addr(), r[1].server)
    assert.equal("ok", r[1].status)
    assert.equal(got.local_addr, r[1].mapped)
    assert.equal(got.local_addr, r[3].mapped)
    assert.is_number(r[1].rtt_ms)
    assert.is_true(r[1].transmissions >= 1)
    assert.equal(dead, r[2].server)
    assert.equal("timeout", r[2].status)
    assert.is_nil(r[2].mapped)
    assert.is_true(r[2].transmissions >= 1)
    assert.equal(1, s1:stats().answered)
    assert.matches("^127%.0%.0%.1:%d+$", got.local_addr)
  end)

  it("never calls on_done after close()", function()
    local s = server()
    local called = false
    local p = assert(stun.probe({ servers = { s:local_addr() }, on_done = function()
      called = true
    end }))
    assert.matches("^0%.0%.0%.0:%d+$", p:local_addr())
    p:close()
    p:close()
    assert.is_true(p:closed())
    -- Let the request go out and its answer come back, if anything were still running.
    local t = uv.new_timer()
    local ticks = 0
    t:start(0, 20, function()
      ticks = ticks + 1
    end)
    H.wait_until(function()
      return ticks >= 5
    end, 10)
    t:close()
    assert.is_false(called)
    assert.equal(0, s:stats().answered)
  end)

  it("survives an error in on_done", function()
    local s = server()
    local ran = false
    assert(stun.probe({ servers = { s:local_addr() }, on_done = function()
      ran = true
      error("boom (an expected error: this test checks that it is only logged)")
    end }))
    H.wait_until(function()
      return ran
    end, 10)
    assert.is_true(ran)
    -- The process is still here and the binding still works.
    local got = probe({ servers = { s:local_addr() } })
    assert.equal("ok", got.results[1].status)
  end)

  it("rejects bad options", function()
    local f = function() end
    assert.has_error(function()
      stun.probe({ servers = { "127.0.0.1:1" }, on_done = f, colour = 1 })
    end, "unknown option 'colour'")
    assert.has_error(function()
      stun.probe({ servers = {}, on_done = f })
    end)
    assert.has_error(function()
      stun.probe({ servers = { "localhost:3478" }, on_done = f })
    end)
    assert.has_error(function()
      stun.probe({ servers = { "[::1]:3478" }, bind = "0.0.0.0:0", on_done = f })
    end)
    assert.has_error(function()
      stun.probe({ servers = { "127.0.0.1:1" } })
    end)
    assert.has_error(function()
      stun.server({ bind = "127.0.0.1" })
    end)
  end)

  it("returns nil and a message when it cannot bind", function()
    local s = server()
    local p, err = stun.probe({ servers = { "127.0.0.1:1" }, bind = s:local_addr(),
      on_done = function() end })
    assert.is_nil(p)
    assert.matches("cannot open a UDP socket on 127.0.0.1:%d+", err)
    local s2, err2 = stun.server({ bind = s:local_addr() })
    assert.is_nil(s2)
    assert.matches("cannot answer STUN on 127.0.0.1:%d+", err2)
  end)
end)

describe("tunnel stun's verdict", function()
  local none = {}
  local function ok(server, mapped)
    return { server = server, status = "ok", mapped = mapped, rtt_ms = 1, transmissions = 1 }
  end

  it("says endpoint-independent when every server sees the same address", function()
    local v = cmd.verdict({ ok("198.51.100.1:3478", "203.0.113.5:4000"),
      ok("198.51.100.2:3478", "203.0.113.5:4000") }, none)
    assert.same({ cmd.VERDICT_EIM }, v)
  end)

  it("says symmetric when the address depends on the server", function()
    local v = cmd.verdict({ ok("198.51.100.1:3478", "203.0.113.5:4000"),
      ok("198.51.100.2:3478", "203.0.113.5:4001") }, none)
    assert.same({ cmd.VERDICT_SYM }, v)
  end)

  it("says no NAT when the mapped address is local", function()
    local v = cmd.verdict({ ok("198.51.100.1:3478", "192.0.2.7:4000") }, { ["192.0.2.7"] = true })
    assert.matches(cmd.VERDICT_NONAT, v[1], 1, true)
  end)

  it("needs two answers to judge the mapping, and one to say anything", function()
    local v = cmd.verdict({ ok("198.51.100.1:3478", "203.0.113.5:4000"),
      { server = "198.51.100.2:3478", status = "timeout", transmissions = 3 } }, none)
    assert.matches("only one server answered", v[1], 1, true)
    assert.same({}, cmd.verdict({ { server = "x", status = "timeout", transmissions = 1 } }, none))
  end)
end)
