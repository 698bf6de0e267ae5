--- The command line: `tunnel <command> ...`, `tunnel script.lua [args...]`, `tunnel -e CODE`.
-- Parsing is lua-argparse; each command's work lives in tunnel.cmd.*.
local argparse = require "argparse"
local uv = require "luv"
local host = require "tunnel.host"
local log = require "tunnel.log"

local M = {}

-- Exit codes: 0 success, 1 runtime failure, 2 usage error.
M.EXIT_OK, M.EXIT_FAILURE, M.EXIT_USAGE = 0, 1, 2

local function add_globals(p)
  p:flag("-v --verbose", "More log output (-v debug, -vv trace)."):count("*"):target("verbose")
  p:flag("-q --quiet", "Less log output (-q warnings and errors, -qq errors only).")
    :count("*"):target("quiet")
  p:option("--log-level", "Log levels: LEVEL or LEVEL,GROUP=LEVEL,... "
    .. "(error, warn, info, debug, trace, off).")
    :argname("<spec>")
  p:option("--name", "Name of this process's control socket (for tunnel attach).")
    :argname("<name>")
  p:option("-e --execute", "Run Lua CODE on the event loop (repeatable, before any script).")
    :argname("<code>"):count("*"):target("execute")
end

local function command(p, name, summary, epilog)
  local c = p:command(name, summary)
  if epilog then
    c:epilog(epilog)
  end
  return c
end

local EXTERNAL = { "server", "client", "stun", "relay" }

local COMMANDS = {
  server = { "tunnel.cmd.server", "run",
    summary = "Serve port forwarding: clients reach allowed TCP/UDP services through it.",
    epilog = table.concat({
      "Examples:",
      "  tunnel server --secret-file server.key --auth-tokens TOKEN \\",
      "      --allowed-tcp 127.0.0.0/8 --listen 0.0.0.0:4433",
      "  tunnel server -c ~/.config/tunnel/server.toml",
      "A protocol with no --allowed-tcp/--allowed-udp entry is refused entirely.",
    }, "\n") },
  client = { "tunnel.cmd.client", "run",
    summary = "Forward a local port to a service that the server can reach.",
    epilog = table.concat({
      "Examples:",
      "  tunnel client --server-node-id ID --server-addr 203.0.113.5:4433 \\",
      "      --auth-token TOKEN --source tcp://127.0.0.1:22 --target 127.0.0.1:2222",
      "  tunnel client -c client.toml        several forwards from a config file",
    }, "\n") },
  stun = { "tunnel.cmd.stun", "run",
    summary = "Show this host's public UDP address and what its NAT does (STUN).",
    epilog = table.concat({
      "Examples:",
      "  tunnel stun                          ask two public Google STUN servers",
      "  tunnel stun stun.example.net 198.51.100.7:3478",
      "  tunnel stun --serve 0.0.0.0:3478     answer STUN requests (for tests and labs)",
      "Exit status 0 when at least one server answered, 1 otherwise.",
    }, "\n") },
  relay = { "tunnel.cmd.relay", "run",
    summary = "Run a relay for iroh mode (WebSocket relay, discovery store, optional STUN).",
    epilog = table.concat({
      "Examples:",
      "  tunnel relay --listen 0.0.0.0:3340 --stun-listen 0.0.0.0:3478",
      "  tunnel relay --listen [::]:443 --tls-cert cert.pem --tls-key key.pem --token TOKEN",
      "  tunnel relay -c /etc/tunnel/relay.toml             settings from a file ([relay])",
      "Routes, limits and metrics: docs/relay.md.",
    }, "\n") },
  ["generate-server-key"] = { "tunnel.cmd.keys", "generate_server_key" },
  ["show-server-id"] = { "tunnel.cmd.keys", "show_server_id" },
  ["generate-token"] = { "tunnel.cmd.keys", "generate_token" },
  ["generate-nostr-key"] = { "tunnel.cmd.keys", "generate_nostr_key" },
  ["show-npub"] = { "tunnel.cmd.keys", "show_npub" },
  ["repl"] = { "tunnel.cmd.repl", "run" },
  ["attach"] = { "tunnel.cmd.attach", "run" },
}

local function build_parser()
  local p = argparse("tunnel")
    :description("Peer-to-peer TCP/UDP port forwarding over end-to-end encrypted QUIC, "
      .. "with an embedded LuaJIT runtime.")
    :usage_margin(2)
    :help_max_width(100)
    :command_target("command")
    :require_command(false)
    :add_help_command({ summary = "Show help for a command." })
  p:usage(table.concat({
    "Usage: tunnel [options] <command> [<args>]",
    "       tunnel [options] <script.lua> [<args>]",
    "       tunnel [options] -e <code>",
  }, "\n"))
  p:epilog(table.concat({
    "Examples:",
    "  tunnel generate-server-key --output server.key",
    "  tunnel generate-token --count 3",
    "  tunnel myscript.lua --port 8080      run a Lua script on the event loop",
    "  tunnel -e 'print(require(\"tunnel\").version)'",
    "  tunnel attach --list                 list running tunnels",
    "",
    "Exit status: 0 success, 1 failure, 2 bad usage.",
    "Docs: docs/ in the source tree, or `tunnel help <command>`.",
  }, "\n"))
  p:flag("--version", "Print the version of tunnel and its libraries, then exit.")
  add_globals(p)

  local c = command(p, "generate-server-key",
    "Create a server identity (Ed25519 secret key) and print its EndpointId.",
    "Examples:\n  tunnel generate-server-key --output ~/.config/tunnel/server.key\n"
      .. "  tunnel generate-server-key --output - > server.key   (id goes to stderr)")
  c:option("-o --output", "Where to write the secret ('-' for stdout)."):argname("<file>")
    :args(1):count(1)
  c:flag("--force", "Overwrite an existing file.")

  c = command(p, "show-server-id", "Print the EndpointId of a secret key file.",
    "Example:\n  tunnel show-server-id --secret-file server.key")
  c:option("-s --secret-file", "Secret key file."):argname("<file>"):count(1)

  c = command(p, "generate-token", "Generate authentication tokens, one per line.",
    "Example:\n  tunnel generate-token --count 5 >> tokens.txt")
  c:option("-c --count", "How many tokens."):argname("<n>"):default("1")
    :convert(function(s)
      local n = tonumber(s)
      if not n or n < 1 or n ~= math.floor(n) or n > 100000 then
        return nil, "count must be a whole number from 1 to 100000"
      end
      return n
    end)

  c = command(p, "generate-nostr-key", "Create a Nostr key pair (nsec file) and print the npub.",
    "Example:\n  tunnel generate-nostr-key --output ~/.config/tunnel/nostr.nsec")
  c:option("-o --output", "Where to write the nsec ('-' for stdout)."):argname("<file>")
    :count(1)
  c:flag("--force", "Overwrite an existing file.")

  c = command(p, "show-npub", "Print the npub of an nsec file.",
    "Example:\n  tunnel show-npub --nsec-file nostr.nsec")
  c:option("-n --nsec-file", "File holding an nsec1... or 64-hex secret key."):argname("<file>")
    :count(1)

  command(p, "repl", "Interactive Lua prompt on the tunnel runtime.",
    "Line editing and history; an incomplete statement continues on the next line.\n"
      .. "Example:\n  tunnel repl")

  c = command(p, "attach", "Open a REPL inside a running tunnel process.",
    "Examples:\n  tunnel attach --list\n  tunnel attach myserver\n"
      .. "  echo 'return stats()' | tunnel attach myserver")
  c:argument("target", "Name or socket path of the tunnel (optional when only one runs).")
    :args("?")
  c:flag("-l --list", "List running tunnels and exit.")

  command(p, "version", "Print the version of tunnel and its libraries.")

  -- Commands whose module describes its own options (configure(c)).
  for _, name in ipairs(EXTERNAL) do
    local spec = COMMANDS[name]
    local ok, mod = pcall(require, spec[1])
    if ok and mod.configure then
      local cc = command(p, name, spec.summary, spec.epilog)
      mod.configure(cc)
    end
  end
  return p
end

--- Print the versions table (tunnel version / --version).
function M.print_version()
  local v = host.versions()
  local out = { "tunnel " .. v.tunnel }
  local names = {}
  for k in pairs(v) do
    if k ~= "tunnel" then
      names[#names + 1] = k
    end
  end
  table.sort(names)
  for _, k in ipairs(names) do
    out[#out + 1] = string.format("  %-13s %s", k, v[k])
  end
  io.stdout:write(table.concat(out, "\n"), "\n")
  return 0
end

local function apply_logging(args)
  local env = os.getenv("TUNNEL_LOG")
  if env and env ~= "" then
    local ok, err = log.apply_spec(env)
    if not ok then
      return nil, "TUNNEL_LOG: " .. err
    end
  end
  local v, q = args.verbose or 0, args.quiet or 0
  if v > 0 or q > 0 then
    local idx = 3 + v - q -- info is 3rd in LEVELS
    if idx < 1 then
      log.set_level(nil, "error")
    else
      log.set_level(nil, log.LEVELS[math.min(idx, #log.LEVELS)])
    end
  end
  if args.log_level then
    local ok, err = log.apply_spec(args.log_level)
    if not ok then
      return nil, err
    end
  end
  return true
end

local function usage_error(msg)
  io.stderr:write("tunnel: ", msg, "\nRun 'tunnel --help' for usage.\n")
  return M.EXIT_USAGE
end

-- Index of the first argument that is neither a global option nor its value.
local GLOBAL_WITH_VALUE = { ["--log-level"] = true, ["--name"] = true, ["-e"] = true,
  ["--execute"] = true }
local function first_positional(argv)
  local i = 1
  while argv[i] do
    local a = argv[i]
    if a == "--" then
      return i + 1
    elseif GLOBAL_WITH_VALUE[a] then
      i = i + 2
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      i = i + 1
    else
      return i
    end
  end
  return nil
end

local function run_chunk(fn, ...)
  -- Errors propagate to the host, which prints the traceback and exits 1.
  return fn(...)
end

--- `tunnel WORD` where WORD is neither a command nor a file: most likely a mistyped command.
local function unknown_command(word)
  local names, by_norm = {}, {}
  for name in pairs(COMMANDS) do
    names[#names + 1] = name
  end
  names[#names + 1] = "version"
  names[#names + 1] = "help"
  table.sort(names)
  local norms = {}
  for i, name in ipairs(names) do
    norms[i] = name:gsub("-", "_")
    by_norm[norms[i]] = name
  end
  local guess = require("tunnel.config").suggest(word, norms)
  io.stderr:write("tunnel: '", word, "' is not a command", guess and
    (" — did you mean '" .. by_norm[guess] .. "'?") or "", " (and no script file of that name)",
    "\nCommands: ", table.concat(names, ", "), ". Run 'tunnel --help' for usage.\n")
  return M.EXIT_USAGE
end

local function run_script(path, script_args, exe)
  local fn, err
  if path == "-" then
    fn, err = loadstring(io.stdin:read("*a"), "=stdin")
  else
    fn, err = loadfile(path)
  end
  if not fn then
    if not err:find(path, 1, true) then
      err = path .. ": " .. err
    end
    io.stderr:write("tunnel: cannot run script: ", err, "\n")
    return false
  end
  local a = { [0] = path, [-1] = exe }
  for i, v in ipairs(script_args) do
    a[i] = v
  end
  rawset(_G, "arg", a)
  run_chunk(fn, unpack(script_args))
  return true
end

local function basename(p)
  return (p:gsub("/+$", ""):match("([^/]+)$") or p):gsub("%.lua$", "")
end

-- A script (or -e code) that left the loop with work to do gets a control socket, so
-- `tunnel attach` can reach it.
local function maybe_start_ctl(name)
  if host.exiting() or not uv.loop_alive() then
    return
  end
  local ok, ctl = pcall(require, "tunnel.ctl")
  if not ok then
    log.debug("control socket unavailable: %s", tostring(ctl))
    return
  end
  if #ctl.servers() > 0 then
    return -- the script opened its own
  end
  local srv, err = ctl.listen({ name = name })
  if not srv then
    log.warn("control socket not started: %s", tostring(err))
  end
end

--- Entry point called by the host with argv (argv[0] is the executable).
-- Returns an exit code when the command is finished, or nil to keep running the event loop.
function M.main(argv)
  os.exit = host.exit -- luacheck: ignore 122 (orderly shutdown instead of a bare exit())
  local exe = argv[0]
  local args_list = {}
  for i = 1, #argv do
    args_list[i] = argv[i]
  end

  local parser = build_parser()
  local pos = first_positional(args_list)
  local script, script_args
  if pos and not COMMANDS[args_list[pos]] and args_list[pos] ~= "version"
    and args_list[pos] ~= "help" then
    -- `tunnel [options] script.lua args...`: only the options before the script are ours.
    script = args_list[pos]
    script_args = { unpack(args_list, pos + 1) }
    local prefix = { unpack(args_list, 1, pos - 1) }
    if prefix[#prefix] == "--" then
      prefix[#prefix] = nil
    end
    args_list = prefix
  end

  -- argparse reads "-5" as an unknown option, so "--max-sessions -5" would say nothing useful:
  -- a long option followed by a negative number becomes "--opt=-5" and gets the option's own
  -- range check.
  local joined = {}
  local at = 1
  while at <= #args_list do
    local a, nxt = args_list[at], args_list[at + 1]
    if a:match("^%-%-[%w-]+$") and nxt and nxt:match("^%-%d+%.?%d*$") then
      joined[#joined + 1] = a .. "=" .. nxt
      at = at + 2
    else
      joined[#joined + 1] = a
      at = at + 1
    end
  end
  args_list = joined

  -- parse (not pparse): --help and usage errors leave through os.exit/host.exit, and pparse
  -- would turn that exit into an error string.
  parser.error = function(_, msg)
    usage_error(msg)
    host.exit(M.EXIT_USAGE)
  end
  local args = parser:parse(args_list)
  local lok, lerr = apply_logging(args)
  if not lok then
    return usage_error(lerr)
  end
  if args.version or args.command == "version" then
    return M.print_version()
  end

  if args.command then
    local spec = COMMANDS[args.command]
    local mod = require(spec[1])
    return mod[spec[2]](args)
  end

  if #args.execute == 0 and not script then
    io.stderr:write(parser:get_usage(), "\n\nRun 'tunnel --help' for commands and examples.\n")
    return M.EXIT_USAGE
  end
  rawset(_G, "arg", { [0] = exe })
  for i, code in ipairs(args.execute) do
    local fn, err = loadstring(code, "=(command line -e #" .. i .. ")")
    if not fn then
      io.stderr:write("tunnel: -e: ", err, "\n")
      return M.EXIT_FAILURE
    end
    run_chunk(fn)
  end
  if script and not script:find("[/.]") and not uv.fs_stat(script) then
    return unknown_command(script)
  end
  if script and not run_script(script, script_args, exe) then
    return M.EXIT_FAILURE
  end
  maybe_start_ctl(args.name or (script and basename(script) or "tunnel") .. "-" .. uv.os_getpid())
  return nil
end

return M
