-- `tunnel stun` through real NATs (root): the NAT lab of spec/lab.lua with coturn and our own
-- responder (`tunnel stun --serve`) on the public segment. What we learn is checked against
-- Debian's `stun` client (RFC 3489; it talks to coturn but not to our RFC 8489-only
-- responder) and coturn's `turnutils_stunclient` (which talks to both).
local H = require "helper"
local Lab = require "lab"
local uv = require "luv"

local STUN = require("tunnel.cmd.stun")

if not Lab.guard("tunnel stun in the NAT lab", { "turnserver", "stun", "turnutils_stunclient",
  "timeout" }) then
  return
end

local SRV1, SRV2 = Lab.SRV_IPS[1], Lab.SRV_IPS[2]
local COTURN, OURS = 3478, 3490

--- Run `tunnel stun ARGS...` inside namespace `ns`; returns the exit code and the output, and
-- the mapped address per server ("ip:port" -> "ip:port").
local function tunnel_stun(lab, ns, args)
  local argv = { H.BIN, "stun" }
  for _, a in ipairs(args) do
    argv[#argv + 1] = a
  end
  local ok, out, err, code = lab:exec(ns, argv, 60)
  local mapped = {}
  for line in out:gmatch("[^\n]+") do
    local server, m = line:match("^(%S+).-: mapped (%S+), rtt")
    if server then
      mapped[line:match("%((%S+)%)") or server] = m
    end
  end
  return code, out .. err, mapped, ok
end

--- What Debian's stun client learns from `server` when sending from port `port`.
local function debian_stun(lab, ns, server, port)
  local ok, out, err = lab:exec(ns, string.format("timeout 30 stun %s -v -p %d 2>&1", server,
    port), 60)
  return out:match("MappedAddress = (%S+)"), out .. err, ok
end

--- A UDP port for the client side of a test; each call gives a new one, so the conntrack
-- entries of one test never serve another.
local next_port = 40000
local function client_port()
  next_port = next_port + 10
  return next_port
end

local function port_of(a)
  return tonumber(a:match(":(%d+)$"))
end

local function ip_of(a)
  return a:match("^(.*):%d+$")
end

-- One lab per NAT type, host a behind it (side b left out), coturn and our responder on srv.
local SCENARIOS = {
  { nat = "none", mapping = "local" },
  { nat = "cone", mapping = "independent" },
  { nat = "symmetric", mapping = "dependent" },
  { nat = "pitfall", mapping = "independent" }, -- no input drop; mapping like a cone
}

for _, sc in ipairs(SCENARIOS) do
  describe("tunnel stun behind a '" .. sc.nat .. "' router", function()
    local lab

    lazy_setup(function()
      lab = Lab.new({ a = sc.nat, b = false })
      lab:start_coturn("srv")
      lab:start_responder("srv", { port = OURS })
    end)

    lazy_teardown(function()
      assert.same({}, Lab.teardown_all())
    end)

    it("learns the same mapped address as Debian's stun client from coturn", function()
      local port = client_port()
      local theirs, tout = debian_stun(lab, "a", SRV1, port)
      assert.is_not_nil(theirs, "stun client learnt nothing:\n" .. tout .. lab:logs())
      -- Same local port and server: the same conntrack entry, so the same mapping even on a
      -- symmetric NAT.
      local code, out, mapped = tunnel_stun(lab, "a", { "--bind", "0.0.0.0:" .. port,
        SRV1 .. ":" .. COTURN })
      assert.equal(0, code, out .. lab:logs())
      assert.equal(theirs, mapped[SRV1 .. ":" .. COTURN], out)
      assert.equal(lab:public_ip("a"), ip_of(theirs))
      if sc.nat == "none" then
        assert.equal(lab:addr("a") .. ":" .. port, theirs)
      end
    end)

    it("tells how the NAT maps from two coturn addresses and two of our responders", function()
      local code, out, mapped = tunnel_stun(lab, "a", { SRV1, SRV2, SRV1 .. ":" .. OURS,
        SRV2 .. ":" .. OURS })
      assert.equal(0, code, out .. lab:logs())
      local list = {}
      for _, s in ipairs({ SRV1 .. ":" .. COTURN, SRV2 .. ":" .. COTURN, SRV1 .. ":" .. OURS,
        SRV2 .. ":" .. OURS }) do
        assert.is_not_nil(mapped[s], "no answer from " .. s .. ":\n" .. out .. lab:logs())
        assert.equal(lab:public_ip("a"), ip_of(mapped[s]), out)
        list[#list + 1] = mapped[s]
      end
      local localport = port_of(out:match("local address: (%S+)"))
      if sc.mapping == "local" then
        for _, m in ipairs(list) do
          assert.equal(lab:addr("a") .. ":" .. localport, m)
        end
        assert.matches(STUN.VERDICT_NONAT, out, 1, true)
      elseif sc.mapping == "independent" then
        for _, m in ipairs(list) do
          assert.equal(list[1], m, out)
        end
        assert.matches(STUN.VERDICT_EIM, out, 1, true)
      else
        local ports = {}
        for _, m in ipairs(list) do
          ports[port_of(m)] = true
        end
        assert.is_true(next(ports, next(ports)) ~= nil, "one port for every server:\n" .. out)
        assert.matches(STUN.VERDICT_SYM, out, 1, true)
      end
      if sc.mapping ~= "local" then
        assert.not_matches("no NAT", out, 1, true)
      end
    end)

    it("our responder gives a third-party client (turnutils_stunclient) its public address",
      function()
        local ok, out, err = lab:exec("a", string.format("timeout 20 turnutils_stunclient -p %d %s",
          OURS, SRV1), 60)
        local refl = out:match("UDP reflexive addr: (%S+)")
        assert.is_true(ok and refl ~= nil, out .. err .. lab:logs())
        assert.equal(lab:public_ip("a"), ip_of(refl))
      end)
  end)
end

describe("tunnel stun on a LAN behind one cone NAT", function()
  local lab

  lazy_setup(function()
    lab = Lab.new({ lan = true, nat = "cone" })
    lab:start_coturn("srv", { ips = { SRV1 } })
    lab:start_responder("b", { port = OURS })
  end)

  lazy_teardown(Lab.teardown_all)

  it("gives a and b the router's public address", function()
    for _, h in ipairs({ "a", "b" }) do
      local code, out, mapped = tunnel_stun(lab, h, { SRV1 })
      assert.equal(0, code, out .. lab:logs())
      assert.equal("203.0.113.1", ip_of(mapped[SRV1 .. ":" .. COTURN]), out)
    end
  end)

  it("reaches b directly over the LAN, without NAT", function()
    local b = lab:addr("b") .. ":" .. OURS
    local code, out, mapped = tunnel_stun(lab, "a", { b })
    assert.equal(0, code, out .. lab:logs())
    assert.equal(lab:addr("a"), ip_of(mapped[b]), out)
    assert.matches(STUN.VERDICT_NONAT, out, 1, true)
  end)
end)

describe("the NAT lab", function()
  it("leaves no namespace and no process behind after teardown", function()
    local lab = Lab.new({ a = "cone", b = "symmetric" })
    local ok, err = pcall(function()
      local turn = lab:start_coturn("srv")
      local ours = lab:start_responder("nat2", { port = OURS })
      local before = lab:leftovers()
      assert.equal(6, #before) -- a b nat1 nat2 pub srv
      lab:teardown()
      assert.same({}, lab:leftovers())
      local list = H.spawn({ "ip", "netns", "list" }):wait(10).stdout
      assert.is_nil(list:find(lab.prefix, 1, true), list)
      for _, p in ipairs({ turn, ours }) do
        assert.is_true(p.done, p.label)
      end
      assert.is_nil(uv.fs_stat(turn.config), "the lab's temp dir is removed")
    end)
    lab:teardown()
    assert(ok, err)
  end)

  it("refuses an unknown nat type and cleans up", function()
    local err = select(2, pcall(Lab.new, { a = "fullcone" }))
    assert.matches("unknown nat type 'fullcone'", tostring(err), 1, true)
  end)
end)
