--- `tunnel server`: the port-forwarding server (iroh mode flags; direct addresses for now).
local common = require "tunnel.cmd.common"
local server = require "tunnel.server"
local log = require("tunnel.log").group("server")
local uv = require "luv"

local M = {}

local fail = common.fail

--- argparse setup for the `server` command (called by tunnel.cli).
function M.configure(c)
  common.config_options(c, "server")
  c:option("--listen", "UDP address to listen on (default 0.0.0.0:4433)."):argname("<addr:port>")
  c:option("--allowed-tcp", "Network clients may reach over TCP (repeatable).")
    :argname("<cidr>"):count("*")
  c:option("--allowed-udp", "Network clients may reach over UDP (repeatable).")
    :argname("<cidr>"):count("*")
  c:option("--auth-tokens", "Token clients may authenticate with (repeatable).")
    :argname("<token>"):count("*")
  c:option("--auth-tokens-file", "File with one token per line."):argname("<file>")
  c:option("--max-sessions", "iroh mode: concurrent forwarded connections and UDP flows " ..
    "(default 100); nostr mode: concurrent sessions (default 10); 0: no limit.")
    :argname("<n>"):convert(tonumber)
  c:option("--secret-file", "Secret key file (tunnel generate-server-key)."):argname("<file>")
  c:option("--secret", "Secret key, base64 (prefer --secret-file)."):argname("<base64>")
  common.relay_options(c)
  c:command_target("mode"):require_command(false)
  require("tunnel.cmd.manual").configure(c:command("manual", "Manual mode: ICE with the " ..
    "offer and answer copied by hand (one session)."), "server")
  require("tunnel.cmd.nostr").configure(c:command("nostr", "Nostr mode: ICE with the " ..
    "offer and answer sent as encrypted Nostr events (many sessions)."), "server")
end

local function nonempty(list)
  return list and #list > 0 and list or nil
end

--- Build the validated iroh section from the config file and the command line.
function M.settings(args)
  -- A file name given where tokens go: say which option takes files.
  for _, t in ipairs(args.auth_tokens or {}) do
    if not require("tunnel.keys").validate_token(t) and uv.fs_stat(t) then
      return nil, string.format("--auth-tokens takes tokens, and '%s' is a file: give " ..
        "--auth-tokens-file %s", t, t)
    end
  end
  return common.settings(args, "server", "iroh", {
    bind_addr = args.listen,
    secret = args.secret,
    secret_file = args.secret_file,
    auth_tokens = nonempty(args.auth_tokens),
    auth_tokens_file = args.auth_tokens_file,
    max_sessions = args.max_sessions,
    allowed_sources = { tcp = nonempty(args.allowed_tcp), udp = nonempty(args.allowed_udp) },
    relay_urls = nonempty(args.relay_url),
    relay_only = args.relay_only or nil,
    socks5_proxy = args.socks5_proxy,
    dns_server = args.dns_server,
  }, { bind_addr = "--listen" })
end

local function register_repl(srv)
  local ok, repl = pcall(require, "tunnel.repl")
  if not ok then
    return
  end
  repl.add_helper("sessions", function()
    return srv:sessions()
  end, "sessions(): live client sessions with their counters")
  repl.add_helper("kick", function(id, reason)
    return srv:kick(id, reason)
  end, "kick(id[, reason]): close a session")
  repl.add_helper("allowed", function(proto, list)
    if list then
      assert(srv:set_allowed(proto, list))
    end
    return srv:allowed_list(proto)
  end, "allowed(proto[, list]): show or replace the tcp/udp allow-list")
  repl.add_helper("max_sessions", function(n)
    srv:set_max_sessions(n)
    return n
  end, "max_sessions(n): change the limit of concurrent connections and flows")
  repl.add_stats("server", function()
    return srv:stats()
  end)
end

--- The validated [manual] section.
function M.manual_settings(args)
  return common.settings(args, "server", "manual", {
    stun_servers = nonempty(args.stun_server),
    allowed_sources = { tcp = nonempty(args.allowed_tcp), udp = nonempty(args.allowed_udp) },
  })
end

function M.run(args)
  local mode = common.mode(args, "server")
  if mode == "manual" then
    return require("tunnel.cmd.manual").server(args, M.manual_settings)
  elseif mode == "nostr" then
    return require("tunnel.cmd.nostr").server(args)
  end
  local s, err = M.settings(args)
  if not s then
    return fail(err)
  end
  local srv, serr = server.new({
    listen = s.bind_addr or "0.0.0.0:4433",
    secret = s.secret,
    secret_file = s.secret_file,
    tokens = s.auth_tokens,
    tokens_file = s.auth_tokens_file,
    allowed_tcp = s.allowed_sources and s.allowed_sources.tcp or {},
    allowed_udp = s.allowed_sources and s.allowed_sources.udp or {},
    max_sessions = s.max_sessions,
    transport = s.transport,
    udp_idle_timeout = s.transport and s.transport.udp_idle_timeout,
    relay_urls = common.texts(s.relay_urls),
    relay_only = s.relay_only or nil,
    socks5_proxy = common.text(s.socks5_proxy),
    dns_server = common.dns_url(s, common.texts(s.relay_urls)) or "none",
    lan_announce = true,
  })
  if not srv then
    return fail(serr)
  end
  local addr, port = srv:address()
  local tcp, udp = srv:allowed_list("tcp"), srv:allowed_list("udp")
  log.info("server listening on %s (UDP)", addr)
  log.info("EndpointId: %s", srv.endpoint_id)
  log.info("allowed: tcp %s; udp %s", #tcp > 0 and table.concat(tcp, ", ") or "none",
    #udp > 0 and table.concat(udp, ", ") or "none")
  io.stdout:write(string.format("EndpointId: %s\nListening: %s\n", srv.endpoint_id, addr))
  if srv.relay_url then
    io.stdout:write(string.format("Relay: %s\n", srv.relay_url))
    if srv.discovery_url then
      io.stdout:write(string.format("Discovery: %s\n", srv.discovery_url))
    end
    io.stdout:write(string.format("Connect with: tunnel client --server-node-id %s " ..
      "%s --auth-token <token> --source tcp://HOST:PORT --target 127.0.0.1:PORT\n",
      srv.endpoint_id, srv.discovery_url and ("--dns-server " .. srv.discovery_url)
        or ("--relay-url " .. srv.relay_url)))
  else
    io.stdout:write(string.format("Connect with: tunnel client --server-node-id %s " ..
      "--server-addr <this-host>:%d --auth-token <token> --source tcp://HOST:PORT " ..
      "--target 127.0.0.1:PORT\n", srv.endpoint_id, port))
  end
  io.stdout:flush()
  register_repl(srv)
  local ctl_ok, ctl = pcall(require, "tunnel.ctl")
  if ctl_ok then
    local c, cerr = ctl.listen({ name = args.name or ("server-" .. uv.os_getpid()) })
    if not c then
      log.warn("control socket not started: %s", tostring(cerr))
    end
  end
  return nil
end

return M
