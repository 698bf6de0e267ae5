-- The server's discovery record in the NAT lab (root): `tunnel relay` with its STUN responder on
-- the public segment, the server behind a cone NAT (namespace b). The record a client fetches
-- from the relay's /pkarr must name the server's public mapping (learnt by STUN on the QUIC
-- socket), and follow the server's interface addresses when they change. Deadlines only bound
-- the waits; nothing here measures time.
local H = require "helper"
local Lab = require "lab"

local TITLE = "the discovery record in the NAT lab"

if not Lab.guard(TITLE) then
  return
end

local URL = Lab.RELAY_URL

-- Run inside a namespace: resolve the record as a client does and print its lists.
local RESOLVE = [[
local discovery = require "tunnel.discovery"
local host = require "tunnel.host"
local url, id = ...
local ok, err = discovery.resolve(url, id, function(rec, rerr)
  if rec then
    io.stdout:write("RELAYS ", table.concat(rec.relays, " "), "\n")
    io.stdout:write("ADDRS ", table.concat(rec.addrs, " "), "\n")
    io.stdout:flush()
    host.stop(0)
  else
    io.stderr:write("resolve failed: ", tostring(rerr), "\n")
    host.stop(1)
  end
end, { fresh = true })
if not ok then
  io.stderr:write("resolve: ", tostring(err), "\n")
  host.exit(2)
end
]]

local function has(list, want)
  for _, a in ipairs(list) do
    if a == want or (want:sub(1, 1) == "^" and a:match(want)) then
      return a
    end
  end
end

describe(TITLE, function()
  local lab, id, script, last

  after_each(Lab.teardown_all)

  -- Fetch the record from namespace a (behind NAT 1, like a client); nil when not found.
  local function fetch()
    local ok, out, err = lab:exec("a", { H.BIN, script, URL .. "/pkarr", id }, 20)
    last = out .. err
    if not ok then
      return nil
    end
    local rec = { relays = {}, addrs = {} }
    for a in (out:match("ADDRS ([^\n]*)") or ""):gmatch("%S+") do
      rec.addrs[#rec.addrs + 1] = a
    end
    for r in (out:match("RELAYS ([^\n]*)") or ""):gmatch("%S+") do
      rec.relays[#rec.relays + 1] = r
    end
    return rec
  end

  -- Fetch until cond(record) holds (bounded by `timeout` s); returns the last record.
  local function fetch_until(cond, timeout)
    local rec
    H.wait_until(function()
      rec = fetch()
      if rec and cond(rec) then
        return true
      end
      H.wait_until(function() return false end, 0.5)
      return false
    end, timeout)
    return rec
  end

  it("names the public mapping and follows interface changes", function()
    lab = Lab.new({ a = "cone", b = "cone" })
    script = lab:tmpdir() .. "/resolve.lua"
    H.write_file(script, RESOLVE)
    lab:start_relay({ stun = true })
    -- No echo service: no client connects here.
    local w = lab:iroh_server({ echo = false, args = { "--relay-url", URL } })
    local srv = w.srv
    id = w.id
    assert(id, "no EndpointId" .. lab:logs())

    -- 1. The public mapping, as the relay's STUN responder saw the server's QUIC socket.
    local pub = "^" .. lab:public_ip("b"):gsub("%p", "%%%0") .. ":%d+$"
    local rec = fetch_until(function(r)
      return has(r.addrs, pub) ~= nil
    end, 60)
    assert(rec and has(rec.addrs, pub), "no public mapping in the record: " .. tostring(last) ..
      lab:logs())
    assert.same({ URL }, rec.relays)
    local own = has(rec.addrs, "^" .. lab:addr("b"):gsub("%p", "%%%0") .. ":%d+$")
    assert(own, "no interface address in the record: " .. last)
    local port = own:match(":(%d+)$")
    -- Nothing the other side could not use: no loopback, no link-local.
    for _, a in ipairs(rec.addrs) do
      assert.is_nil(a:match("^127%.") or a:match("^%[::1%]") or a:match("^%[fe80:"), a)
    end

    -- 2. A new interface address: republished without a restart.
    local new = "10.0.2.77:" .. port
    assert(lab:exec("b", { "ip", "addr", "add", "10.0.2.77/24", "dev", "eth0" }))
    rec = fetch_until(function(r)
      return has(r.addrs, new) ~= nil
    end, 90)
    assert(rec and has(rec.addrs, new), "the record did not gain " .. new .. ": " ..
      tostring(last) .. lab:logs())
    assert(has(rec.addrs, pub), "the public mapping went missing: " .. last)
    assert.matches("addresses changed: [^\n]*10%.0%.2%.77:" .. port, srv.stderr)

    -- 3. And the address gone again: republished without it.
    assert(lab:exec("b", { "ip", "addr", "del", "10.0.2.77/24", "dev", "eth0" }))
    rec = fetch_until(function(r)
      return has(r.addrs, new) == nil
    end, 90)
    assert(rec and not has(rec.addrs, new), "the record still names " .. new .. ": " ..
      tostring(last) .. lab:logs())
    assert(has(rec.addrs, pub), "the public mapping went missing: " .. last)
  end)
end)
