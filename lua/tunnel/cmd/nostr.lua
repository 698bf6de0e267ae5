--- `tunnel server nostr` and `tunnel client nostr`: ICE with the offer and answer carried as
-- encrypted Nostr events between two fixed key pairs. Progress goes to stderr.
local common = require "tunnel.cmd.common"
local manual_cmd = require "tunnel.cmd.manual"
local keys = require "tunnel.keys"
local host = require "tunnel.host"
local log = require("tunnel.log").group("nostr")

local M = {}

local fail, say = common.fail, manual_cmd.say

-- Options of the iroh-mode command that mean nothing in nostr mode.
local IROH_ONLY = {
  server = { listen = "--listen", auth_tokens = "--auth-tokens",
    auth_tokens_file = "--auth-tokens-file", secret = "--secret", secret_file = "--secret-file" },
  client = { server_node_id = "--server-node-id", server_addr = "--server-addr",
    auth_token = "--auth-token", auth_token_file = "--auth-token-file" },
}

--- argparse setup for the `nostr` subcommand of `server` or `client`.
function M.configure(c, role)
  c:option("--nsec", "This side's Nostr secret key, nsec1... or hex (prefer --nsec-file).")
    :argname("<nsec>")
  c:option("--nsec-file", "File holding this side's Nostr secret key " ..
    "(tunnel generate-nostr-key).")
    :argname("<file>")
  c:option("--peer-npub", "The other side's Nostr public key, npub1... or hex.")
    :argname("<npub>")
  c:option("--relay", "Nostr relay for signaling, ws:// or wss:// (repeatable; default: the " ..
    "config's list, else public relays).")
    :argname("<url>"):count("*")
  manual_cmd.ice_options(c)
  if role == "client" then
    c:option("--republish-interval", "Seconds before publishing the request again " ..
      "(doubled each time up to 60; default 5).")
      :argname("<s>"):convert(tonumber)
    c:option("--max-wait", "Give up when the server has not answered after this many " ..
      "seconds (default 120).")
      :argname("<s>"):convert(tonumber)
    c:epilog(table.concat({
      "The client asks the server (--peer-npub) for a session through the relays; both sides",
      "find a path with ICE and the tunnel runs over QUIC. Also takes -s/--source, -t/--target,",
      "-c/--config and --default-config, before or after `nostr`.",
      "Example:",
      "  tunnel client nostr --nsec-file client.nsec --peer-npub npub1... \\",
      "    --relay wss://relay.example --source tcp://127.0.0.1:22 --target 127.0.0.1:2222",
    }, "\n"))
  else
    c:epilog(table.concat({
      "Serves requests from the client key --peer-npub, up to --max-sessions at once (default",
      "10; 0: no limit). Also takes -c/--config, --default-config, --allowed-tcp and",
      "--allowed-udp (an empty allow-list refuses that protocol), before or after `nostr`.",
      "Example:",
      "  tunnel server nostr --nsec-file server.nsec --peer-npub npub1... \\",
      "    --relay wss://relay.example --allowed-tcp 127.0.0.0/8",
    }, "\n"))
  end
end

local function nonempty(list)
  return list and #list > 0 and list or nil
end

local function check_args(args, role)
  return manual_cmd.check_mode_args(args, role, "nostr", IROH_ONLY[role])
end

--- The validated [nostr] section for `role` and the forwards (client), or nil and why.
function M.settings(args, role)
  local ok, err = check_args(args, role)
  if not ok then
    return nil, err
  end
  local cli = {
    stun_servers = nonempty(args.stun_server), relays = nonempty(args.relay),
    peer_npub = args.peer_npub,
  }
  -- Either key flag replaces the file's pair (nsec and nsec_file exclude each other).
  if args.nsec or args.nsec_file then
    cli.nsec, cli.nsec_file = args.nsec, args.nsec_file
  end
  if role == "server" then
    cli.max_sessions = args.max_sessions
    cli.allowed_sources = { tcp = nonempty(args.allowed_tcp), udp = nonempty(args.allowed_udp) }
  else
    local fw, ferr = require("tunnel.cmd.client").cli_forwards(args)
    if not fw then
      return nil, ferr
    end
    cli.request_source, cli.target, cli.forward = fw[1], fw[2], fw[3]
    cli.republish_interval, cli.max_wait = args.republish_interval, args.max_wait
  end
  local section, whole = common.settings(args, role, "nostr", cli)
  if not section then
    return nil, whole
  end
  local secret, kerr
  if section.nsec_file then
    secret, kerr = keys.load_nsec_file(section.nsec_file)
  else
    secret, kerr = keys.parse_nsec(section.nsec)
  end
  if not secret then
    return nil, kerr
  end
  local peer, perr = keys.parse_npub(section.peer_npub)
  if not peer then
    return nil, "peer_npub: " .. tostring(perr)
  end
  section.secret, section.peer = secret, peer
  return section, role == "client" and require("tunnel.config").forwards(whole) or nil
end

local function relay_status(url, state, why)
  if state == "open" then
    log.info("relay %s connected", url)
  elseif state == "waiting" then
    log.debug("relay %s down: %s", url, tostring(why))
  end
end

function M.client(args)
  local nostr = require "tunnel.nostr"
  local s, forwards = M.settings(args, "client")
  if not s then
    return fail(forwards)
  end
  if #forwards == 0 then
    return fail("nothing to forward: give --source and --target (or request_source and " ..
      "target in [nostr])")
  end
  local relays = common.texts(s.relays)
  -- Each forward is a session of its own (its own ICE path and QUIC connection), all asked
  -- for through the same relays; the first to fail ends the process.
  local clients, stopping = {}, false
  local function stop_all(reason)
    if stopping then
      return
    end
    stopping = true
    say("tunnel: ", reason, "\n")
    for _, c in ipairs(clients) do
      c:close()
    end
    host.stop(1)
  end
  for _, f in ipairs(forwards) do
    local c, err = nostr.client({
      secret = s.secret, peer = s.peer, relays = relays,
      source = f.source, target = f.target, stun_servers = manual_cmd.stun_list(args, s),
      hosts = nonempty(args.ice_host), transport = s.transport,
      udp_idle_timeout = s.transport and s.transport.udp_idle_timeout,
      republish_interval = s.republish_interval, max_wait = s.max_wait,
      on_status = relay_status,
      on_connected = function(cl, info)
        say(string.format("Connected: %s (server %s at %s, %.0f ms after start)\n", info.kind,
          cl.peer_npub, tostring(info.remote), info.after_start_ms or 0))
        for _, fw in ipairs(info.forwards) do
          say(string.format("Forwarding %s %s -> %s\n", fw.proto, fw.listen or "?", fw.source))
        end
      end,
      on_failed = function(_, reason)
        stop_all(reason)
      end,
      on_closed = function(_, reason)
        stop_all(reason)
      end,
    })
    if not c then
      for _, other in ipairs(clients) do
        other:close()
      end
      return fail(err)
    end
    clients[#clients + 1] = c
    for _, fw in ipairs(c:forwards()) do
      log.info("listening on %s %s for %s", fw.proto, fw.listen or "?", fw.source)
    end
  end
  say(string.format("Nostr-mode client %s\nAsking the server %s through %d relay(s)...\n",
    clients[1].npub, clients[1].peer_npub, #relays))
  manual_cmd.register_stats("client", function()
    local out = {}
    for i, c in ipairs(clients) do
      out[i] = c:stats()
    end
    return #out == 1 and out[1] or out
  end)
  host.on_shutdown(function()
    stopping = true
    for _, c in ipairs(clients) do
      c:close()
    end
  end)
  return nil
end

function M.server(args)
  local nostr = require "tunnel.nostr"
  local s, err = M.settings(args, "server")
  if not s then
    return fail(err)
  end
  local allowed = s.allowed_sources or {}
  local srv, serr = nostr.server({
    secret = s.secret, peer = s.peer, relays = common.texts(s.relays),
    allowed_tcp = allowed.tcp or {}, allowed_udp = allowed.udp or {},
    max_sessions = s.max_sessions, stun_servers = manual_cmd.stun_list(args, s),
    hosts = nonempty(args.ice_host), transport = s.transport,
    udp_idle_timeout = s.transport and s.transport.udp_idle_timeout,
    on_status = relay_status,
    on_session = function(_, ev)
      if ev.event == "connected" then
        say(string.format("Session %s: connected via %s (client at %s), serving %s\n",
          ev.session, ev.kind, tostring(ev.remote), ev.source))
      elseif ev.event == "rejected" then
        say(string.format("Session %s refused: %s\n", ev.session, ev.reason))
      else
        say(string.format("Session %s %s: %s\n", ev.session, ev.event, ev.reason))
      end
    end,
  })
  if not srv then
    return fail(serr)
  end
  say(string.format("Nostr-mode server %s\nServing %s through %d relay(s); up to %s " ..
    "session(s)\n", srv.npub, srv.peer_npub, #common.texts(s.relays),
    s.max_sessions == 0 and "unlimited" or tostring(s.max_sessions)))
  host.on_shutdown(function()
    srv:close()
  end)
  local ok, repl = pcall(require, "tunnel.repl")
  if ok then
    repl.add_helper("sessions", function()
      return srv:list()
    end, "sessions(): live nostr-mode sessions")
    repl.add_helper("relays", function()
      return srv:relays()
    end, "relays(): the Nostr relays and their state")
  end
  return nil
end

return M
