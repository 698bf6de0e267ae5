-- Manual mode end to end on loopback: real `tunnel server manual` and `tunnel client manual`
-- processes, blocks carried between their stdout and stdin as a user would paste them, ICE on
-- 127.0.0.1 (--ice-host, --no-stun), then data through the tunnel. The NAT cases are in
-- manual_lab_spec.lua. Deadlines only bound a test; no result depends on timing.
local H = require "helper"

local MiB = 1024 * 1024

local T
local P = H.bind(function() return T.procs end)
local track, logs, tool, wait_err = P.track, P.logs, P.netcheck, P.wait_err

local function echo_service()
  return P.service({ "tcp-echo", "--port", 0 })
end

local free_port = H.free_port

local function wait_block(p, kind)
  return H.wait_block(p, kind, 30, logs)
end

local function start(role, args)
  local cmd = { H.BIN, role, "manual", "--no-stun", "--ice-host", "127.0.0.1" }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = tostring(a)
  end
  return track(H.spawn(cmd, { stdin = true, env = T.env }), "tunnel " .. role .. " manual")
end

describe("manual mode", function()
  before_each(function()
    T = H.world()
  end)

  after_each(function()
    H.kill_all(T.procs)
    H.cleanup()
  end)

  --- A connected pair forwarding 127.0.0.1:lport to `source`.
  local function connect(source, srv_args)
    local lport = free_port()
    local srv = start("server", srv_args or { "--allowed-tcp", "127.0.0.0/8" })
    local cli = start("client", { "--source", source, "--target", "127.0.0.1:" .. lport })
    local offer = wait_block(cli, "OFFER")
    srv:write(offer .. "\n")
    local answer = wait_block(srv, "ANSWER")
    cli:write(answer .. "\n")
    wait_err(cli, "Connected: ", true)
    wait_err(srv, "Connected: ", true)
    return srv, cli, lport
  end

  it("connects over host candidates and carries 20 MiB both ways intact", function()
    local echo, eport = echo_service()
    local srv, cli, lport = connect("tcp://127.0.0.1:" .. eport)
    assert.matches("direct connection (host candidates)", cli.stderr, 1, true)
    assert.matches("direct connection (host candidates)", srv.stderr, 1, true)
    local n = 20 * MiB
    local p = tool({ "tcp-bulk", "--port", lport, "--bytes", n, "--timeout", 120 })
    p:wait(130)
    local sent, recv, bytes = p.stdout:match("SENT (%x+) RECV (%x+) BYTES (%d+)")
    assert.is_not_nil(sent, "no result from tcp-bulk:" .. logs())
    assert.equal(n, tonumber(bytes), logs())
    assert.equal(sent, recv, logs())
    assert.equal(1, select(2, echo.stdout:gsub("ACCEPT ", "")), logs())
  end)

  it("lets the user paste again after garbage, a damaged block and a block of the wrong role",
    function()
      local _, eport = echo_service()
      local srv = start("server", { "--allowed-tcp", "127.0.0.0/8" })
      local cli = start("client", { "--source", "tcp://127.0.0.1:" .. eport, "--target",
        "127.0.0.1:" .. free_port() })
      local offer = wait_block(cli, "OFFER")
      -- Garbage between BEGIN and END.
      srv:write("-----BEGIN TUNNEL OFFER-----\nnot base64 at all!\n-----END TUNNEL OFFER-----\n")
      wait_err(srv, "Paste the OFFER block again", true)
      -- One character changed.
      local lines = {}
      for l in offer:gmatch("[^\n]+") do
        lines[#lines + 1] = l
      end
      local body = lines[2]
      local c = body:sub(5, 5)
      lines[2] = body:sub(1, 4) .. (c == "A" and "B" or "A") .. body:sub(6)
      srv.stderr = ""
      srv:write(table.concat(lines, "\n") .. "\n")
      wait_err(srv, "Paste the OFFER block again", true)
      assert.matches("checksum", srv.stderr, 1, true)
      -- The client's own offer pasted back into the client.
      cli:write(offer .. "\n")
      wait_err(cli, "Paste the ANSWER block again", true)
      assert.matches("OFFER", cli.stderr, 1, true)
      -- And then the real thing works.
      srv:write(offer .. "\n")
      cli:write(wait_block(srv, "ANSWER") .. "\n")
      wait_err(cli, "Connected: ", true)
    end)

  it("refuses a source outside the allow-list and shows why on both sides", function()
    local srv = start("server", { "--allowed-tcp", "10.99.0.0/16" })
    local cli = start("client", { "--source", "tcp://127.0.0.1:9", "--target",
      "127.0.0.1:" .. free_port() })
    srv:write(wait_block(cli, "OFFER") .. "\n")
    wait_err(srv, "refused", true)
    assert.matches("not in the allowed networks", srv.stderr, 1, true)
    cli:write(wait_block(srv, "REJECT") .. "\n")
    cli:wait(20)
    assert.is_true(cli.done, logs())
    assert.equal(1, cli.code, logs())
    assert.matches("the server refused the offer: .*not in the allowed networks", cli.stderr)
  end)

  it("reports the end of the session on the client when the server dies", function()
    local _, eport = echo_service()
    local srv, cli = connect("tcp://127.0.0.1:" .. eport)
    srv:kill("sigkill")
    cli:wait(90)
    assert.is_true(cli.done, logs())
    assert.equal(1, cli.code, logs())
    assert.matches("tunnel: ", cli.stderr, 1, true)
  end)

  it("ends the server with status 0 when the client closes the session", function()
    local _, eport = echo_service()
    local srv, cli = connect("tcp://127.0.0.1:" .. eport)
    cli:kill("sigterm")
    srv:wait(60)
    assert.is_true(srv.done, logs())
    assert.equal(0, srv.code, logs())
  end)

  it("rejects iroh-mode options and contradictory STUN flags with usage errors", function()
    local p = H.tunnel({ "server", "manual", "--listen", "0.0.0.0:1", "--allowed-tcp",
      "127.0.0.0/8" })
    assert.equal(1, p.code)
    assert.matches("--listen is an iroh-mode option", p.stderr, 1, true)
    p = H.tunnel({ "client", "manual", "--no-stun", "--stun-server", "127.0.0.1:3478",
      "--source", "tcp://127.0.0.1:1", "--target", "127.0.0.1:1" })
    assert.equal(1, p.code)
    assert.matches("--no-stun and --stun-server", p.stderr, 1, true)
  end)

  it("takes manual mode and its settings from a config file's mode key", function()
    local _, eport = echo_service()
    local lport = free_port()
    local ccfg = H.write_file(T.dir .. "/client.toml", table.concat({
      'role = "client"', 'mode = "manual"', "[manual]", "stun_servers = []",
      'request_source = "tcp://127.0.0.1:' .. eport .. '"', 'target = "127.0.0.1:' .. lport .. '"',
    }, "\n") .. "\n")
    local scfg = H.write_file(T.dir .. "/server.toml", table.concat({
      'role = "server"', 'mode = "manual"', "[manual]", "stun_servers = []",
      "[manual.allowed_sources]", 'tcp = ["127.0.0.0/8"]',
    }, "\n") .. "\n")
    local cli = track(H.spawn({ H.BIN, "client", "-c", ccfg, "manual", "--ice-host", "127.0.0.1" },
      { stdin = true, env = T.env }), "client -c")
    local srv = track(H.spawn({ H.BIN, "server", "-c", scfg, "manual", "--ice-host", "127.0.0.1" },
      { stdin = true, env = T.env }), "server -c")
    srv:write(wait_block(cli, "OFFER") .. "\n")
    cli:write(wait_block(srv, "ANSWER") .. "\n")
    wait_err(cli, "Forwarding tcp 127.0.0.1:" .. lport, true)
    -- Without the word `manual` the file's mode decides.
    local p = track(H.spawn({ H.BIN, "server", "-c", scfg }, { env = T.env }), "server -c bare")
    p:wait(20)
    assert.matches("Paste the client's OFFER block", p.stderr, 1, true)
    assert.matches("no offer: standard input ended", p.stderr, 1, true)
    assert.equal(1, p.code, logs())
  end)
end)
