-- Forwarded connections share a slow link (root): the NAT lab of spec/lab.lua with the client
-- in a (its router does no NAT) and `tunnel server` on the public segment, reached by its
-- address. The router's uplink is shaped to 20 Mbit/s (tbf), far slower than a local source,
-- so a bulk upload through one forward always has data waiting. An interactive connection
-- through a second forward of the same client must still get its round trips through while
-- the upload runs: the streams of a connection take turns (src/quic/stream.c). With first
-- come, first served the upload held every packet until it ended. Deadlines only bound a test.
local H = require "helper"
local Lab = require "lab"

local TITLE = "two forwards of one client on a 20 Mbit/s uplink"
local MiB = 1024 * 1024
local SRV = Lab.SRV_IPS[1]
local PORT = 4433
local BULK = 16 * MiB -- about 7 s at 20 Mbit/s

if not Lab.guard(TITLE, { "python3", "tc" }) then
  return
end

describe(TITLE, function()
  local lab, cli, echo

  lazy_setup(function()
    lab = Lab.new({ a = "none", b = false })
    lab:must("nat1", { "tc", "qdisc", "add", "dev", "wan0", "root", "tbf", "rate", "20mbit",
      "burst", "32k", "latency", "50ms" })
    local dir = lab:tmpdir()
    local key = dir .. "/server.key"
    assert(lab:exec("srv", { H.BIN, "generate-server-key", "--output", key }))
    local _, token = lab:exec("srv", { H.BIN, "generate-token" })
    token = token:gsub("%s+$", "")
    local eport
    echo, eport = lab:service("srv", { "tcp-echo", "--port", 0 })
    local srv = lab:spawn("srv", { H.BIN, "server", "--listen", SRV .. ":" .. PORT,
      "--secret-file", key, "--auth-tokens", token, "--allowed-tcp", "127.0.0.0/8" },
      { env = lab:env() })
    assert(srv:wait_output("EndpointId: ", 20, "stdout"), "server" .. lab:logs())
    local id = srv.stdout:match("EndpointId: (%S+)")
    local conf = dir .. "/client.toml"
    H.write_file(conf, table.concat({
      'role = "client"',
      'mode = "iroh"',
      "[iroh]",
      'request_source = "tcp://127.0.0.1:' .. eport .. '"',
      'target = "127.0.0.1:7001"',
      "[[iroh.forward]]",
      'source = "tcp://127.0.0.1:' .. eport .. '"',
      'target = "127.0.0.1:7002"',
      "",
    }, "\n"))
    cli = lab:spawn("a", { H.BIN, "client", "-c", conf, "--server-node-id", id,
      "--server-addr", SRV .. ":" .. PORT, "--auth-token", token }, { env = lab:env() })
    assert(cli:wait_output("forwarding tcp 127%.0%.0%.1:7002", 30), "client" .. lab:logs())
  end)

  lazy_teardown(function()
    assert.same({}, Lab.teardown_all())
  end)

  it("answers an interactive connection while an upload fills the link", function()
    local bulk = lab:netcheck("a", { "tcp-bulk", "--port", 7001, "--bytes", BULK, "--timeout",
      120 })
    -- Once the upload reached the service, give it a second to fill the link and the queues.
    assert(echo:wait_output("ACCEPT", 30, "stdout"), "the upload did not start" .. lab:logs())
    assert.is_false(H.wait_until(function()
      return bulk.done
    end, 1), "the upload ended within a second" .. lab:logs())
    local ping = lab:netcheck("a", { "tcp-pingpong", "--port", 7002, "--count", 20, "--timeout",
      120 })
    ping:wait(125)
    assert.equal(0, ping.code, lab:logs())
    assert.matches("ROUNDTRIPS 20", ping.stdout)
    -- The round trips got through while the upload was still going.
    assert.is_nil(bulk.code, "the upload ended before the round trips did: " .. ping.stdout ..
      lab:logs())
    bulk:wait(125)
    assert.equal(0, bulk.code, lab:logs())
    local sent, recv, bytes = bulk.stdout:match("SENT (%x+) RECV (%x+) BYTES (%d+)")
    assert.equal(BULK, tonumber(bytes), lab:logs())
    assert.equal(sent, recv)
  end)
end)
