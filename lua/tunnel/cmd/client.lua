--- `tunnel client`: forward local ports to a server's sources.
local config = require "tunnel.config"
local common = require "tunnel.cmd.common"
local client = require "tunnel.client"
local host = require "tunnel.host"
local log = require("tunnel.log").group("client")
local uv = require "luv"

local M = {}

local fail = common.fail

function M.configure(c)
  common.config_options(c, "client")
  c:option("-n --server-node-id", "The server's EndpointId."):argname("<id>")
  c:option("--server-addr", "The server's UDP address (host:port)."):argname("<host:port>")
  c:option("-s --source", "What to reach, as the server sees it: tcp://host:port or " ..
    "udp://host:port. Repeat with --target for more forwards (pairs in order)."):argname("<url>")
    :count("*")
  c:option("-t --target", "Local address to listen on (host:port), one per --source.")
    :argname("<host:port>"):count("*")
  c:option("--auth-token", "Authentication token."):argname("<token>")
  c:option("--auth-token-file", "File holding the token."):argname("<file>")
  common.relay_options(c)
  c:command_target("mode"):require_command(false)
  require("tunnel.cmd.manual").configure(c:command("manual", "Manual mode: ICE with the " ..
    "offer and answer copied by hand."), "client")
  require("tunnel.cmd.nostr").configure(c:command("nostr", "Nostr mode: ICE with the " ..
    "offer and answer sent as encrypted Nostr events."), "client")
end

--- The command line's forwards: the first pair, and a [[forward]] list of the others. One
-- --source or one --target alone is left to the file's other half (docs/config.md).
local function cli_forwards(args)
  local srcs, tgts = args.source or {}, args.target or {}
  if (#srcs > 1 or #tgts > 1) and #srcs ~= #tgts then
    return nil, string.format("--source and --target go in pairs, one --target per --source: " ..
      "got %d --source and %d --target", #srcs, #tgts)
  end
  local more = {}
  for i = 2, #srcs do
    more[#more + 1] = { source = srcs[i], target = tgts[i] }
  end
  return { srcs[1], tgts[1], more }
end
M.cli_forwards = cli_forwards

function M.settings(args)
  local fw, ferr = cli_forwards(args)
  if not fw then
    return nil, ferr
  end
  if args.auth_token and args.auth_token_file then
    return nil, "give --auth-token or --auth-token-file, not both"
  end
  local section, whole = common.settings(args, "client", "iroh", {
    server_node_id = args.server_node_id,
    server_addrs = args.server_addr and { args.server_addr } or nil,
    request_source = fw[1],
    target = fw[2],
    forward = fw[3],
    auth_token = args.auth_token,
    auth_token_file = args.auth_token_file,
    relay_urls = args.relay_url and #args.relay_url > 0 and args.relay_url or nil,
    relay_only = args.relay_only or nil,
    socks5_proxy = args.socks5_proxy,
    dns_server = args.dns_server,
  }, { server_addrs = "--server-addr", request_source = "--source", target = "--target" })
  if not section then
    return nil, whole
  end
  return section, config.forwards(whole)
end

--- The validated [manual] section and the forward.
function M.manual_settings(args)
  local fw, ferr = cli_forwards(args)
  if not fw then
    return nil, ferr
  end
  if #fw[3] > 0 then
    return nil, "manual mode forwards one --source to one --target"
  end
  local stun = args.stun_server and #args.stun_server > 0 and args.stun_server or nil
  local section, whole = common.settings(args, "client", "manual", {
    stun_servers = stun, request_source = fw[1], target = fw[2],
  }, { request_source = "--source", target = "--target" })
  if not section then
    return nil, whole
  end
  return section, config.forwards(whole)
end

function M.run(args)
  local mode = common.mode(args, "client")
  if mode == "manual" then
    return require("tunnel.cmd.manual").client(args, M.manual_settings)
  elseif mode == "nostr" then
    return require("tunnel.cmd.nostr").client(args)
  end
  local s, forwards = M.settings(args)
  if not s then
    return fail(forwards)
  end
  if #forwards == 0 then
    return fail("nothing to forward: give --source and --target (or forwards in the config)")
  end
  local relays = common.texts(s.relay_urls)
  local direct = not s.relay_only and s.server_addrs and s.server_addrs[1] or nil
  local dns = s.dns_server and common.dns_url(s, relays)
  local lan = not direct and #relays == 0 and not dns
  if not s.auth_token and not s.auth_token_file then
    return fail("no token: give --auth-token or --auth-token-file")
  end
  -- The addresses after the first are tried in turn when one does not answer.
  local more = not s.relay_only and { unpack(common.texts(s.server_addrs), 2) } or {}
  local function start(relay_urls)
    local status
    local c, err = client.new({
      server_id = s.server_node_id,
      server_addr = common.text(direct),
      server_addrs = direct and #more > 0 and more or nil,
      bind = common.text(s.bind_addr),
      relay_urls = relay_urls,
      relay_only = s.relay_only or nil,
      socks5_proxy = common.text(s.socks5_proxy),
      token = s.auth_token,
      token_file = s.auth_token_file,
      secret = s.secret,
      secret_file = s.secret_file,
      forwards = forwards,
      transport = s.transport,
      udp_idle_timeout = s.transport and s.transport.udp_idle_timeout,
      on_ready = function(cl)
        local st = cl:stats() or {}
        log.info("connected to %s at %s (%s, rtt %.1f ms, %s; ready after %.0f ms)",
          cl.server_id, cl.via_relay and cl.server_addr or (st.remote or cl.server_addr),
          cl.via_relay and "relayed" or "direct", st.rtt_ms or 0, st.cipher or "?",
          cl.connected_after or 0)
        for _, f in ipairs(cl:list()) do
          log.info("forwarding %s %s -> %s", f.proto, f.listen or "?", f.source)
        end
      end,
      on_auth_failed = function(_, reason)
        -- The token hint only where the token is the trouble (not a policy's refusal).
        status = "authentication failed: " .. tostring(reason) ..
          (tostring(reason):find("invalid authentication token", 1, true) and
            " (check --auth-token; the server operator can list valid tokens)" or "")
      end,
      on_closed = function(cl, why, info)
        if not status and info and info.app and info.code == 1 and not info.local_close then
          status = "authentication failed: the server did not accept the token (check " ..
            "--auth-token)"
        end
        if not status then
          if cl.ready then
            status = "connection to the server ended: " .. why
          else
            status = "cannot connect to " .. cl.server_addr .. ": " .. why
          end
        end
        io.stderr:write("tunnel: ", status, "\n")
        host.stop(1)
      end,
    })
    if not c then
      return nil, err
    end
    if not c.via_relay then
      -- A handshake may take up to connect_timeout: say what is going on meanwhile.
      log.info("connecting to %s at %s", c.server_id, c.server_addr)
    end
    local ok, repl = pcall(require, "tunnel.repl")
    if ok then
      repl.add_stats("client", function()
        return c:stats()
      end)
    end
    return c
  end
  local ctl_ok, ctl = pcall(require, "tunnel.ctl")
  if ctl_ok then
    local cs, cerr = ctl.listen({ name = args.name or ("client-" .. uv.os_getpid()) })
    if not cs then
      log.warn("control socket not started: %s", tostring(cerr))
    end
  end
  if direct or #relays > 0 then
    local c, err = start(relays)
    if not c then
      return fail(err)
    end
    return nil
  end
  if lan then
    -- Nothing but the EndpointId: ask the local network (the server announces itself there).
    log.info("looking for %s on the local network", s.server_node_id)
    require("tunnel.lan").find(s.server_node_id, function(rec, err)
      if not rec then
        io.stderr:write("tunnel: cannot find the server: ", tostring(err), "; give " ..
          "--relay-url URL (the relay the server uses), --dns-server URL (where it publishes " ..
          "its address) or --server-addr HOST:PORT\n")
        host.stop(1)
        return
      end
      direct = rec.addrs[1]
      log.info("found %s on the local network at %s", s.server_node_id, tostring(direct))
      local c, cerr = start(rec.relays)
      if not c then
        io.stderr:write("tunnel: ", cerr, "\n")
        host.stop(1)
      end
    end)
    return nil
  end
  -- Only the EndpointId: look up the server's relay in its discovery record first.
  log.info("looking up %s at %s", s.server_node_id, dns)
  local discovery = require "tunnel.discovery"
  local proxy = common.text(s.socks5_proxy)
  -- Through the proxy too: a client that must not reach the relay directly must not reach the
  -- discovery server directly either.
  local ropts = proxy and { client = discovery.client({ proxy = proxy }) } or nil
  discovery.resolve(dns, s.server_node_id, function(rec, err)
    if not rec then
      io.stderr:write("tunnel: cannot find the server: ", tostring(err), "\n")
      host.stop(1)
      return
    end
    if (not rec.relays or #rec.relays == 0) and (not rec.addrs or #rec.addrs == 0) then
      io.stderr:write("tunnel: the server's discovery record names no relay and no address " ..
        "(it has no --relay-url?)\n")
      host.stop(1)
      return
    end
    if #rec.relays > 0 then
      -- Through the relay at once; hole punching finds the direct path if there is one.
      log.info("found %s: relay %s", s.server_node_id, rec.relays[1])
    else
      direct = rec.addrs[1]
      log.info("found %s at %s", s.server_node_id, direct)
    end
    local c, cerr = start(rec.relays)
    if not c then
      io.stderr:write("tunnel: ", cerr, "\n")
      host.stop(1)
    end
  end, ropts)
  return nil
end

return M
