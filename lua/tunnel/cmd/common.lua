--- What the `server`, `client` and `relay` commands share: error output and the config
-- layering (defaults < config file < command line).
local config = require "tunnel.config"

local M = {}

--- Print "tunnel: msg" on stderr; returns the exit status 1.
function M.fail(msg)
  io.stderr:write("tunnel: ", msg, "\n")
  return 1
end

-- The command-line flag that set the value at `path` ("iroh.allowed_sources.tcp[2]"), if the
-- value came from `cli` (the section's values from the command line): `flags[key]` for the
-- section's own keys, else the schema's `flag`. nil when the value came from the file.
local function flag_of(section, cli, flags, path)
  local rest = path:match("^" .. section .. "%.(.+)$")
  if not rest or not cli then
    return nil
  end
  local spec, v = config.schema.by_name[section], cli
  for seg in rest:gsub("%[%d+%]", ""):gmatch("[^.]+") do
    local f = spec and spec.by_name and spec.by_name[seg]
    v = type(v) == "table" and v[seg] or nil
    if v == nil or not f then
      return nil
    end
    spec = f
  end
  return flags and flags[rest:gsub("%[%d+%]$", "")] or spec.flag
end

--- Name the flag in errors about values given on the command line: "--listen: ..." rather
-- than "iroh.bind_addr: ...", which the user never wrote.
local function flag_errors(section, cli, flags, err, records)
  if not records then
    return err
  end
  local lines = {}
  for i, e in ipairs(records) do
    local flag = e.path and flag_of(section, cli, flags, e.path)
    local where = flag or e.path
    lines[i] = where and where .. ": " .. e.msg or e.msg
  end
  return table.concat(lines, "\n")
end

--- The validated `mode` section for `role` (the [relay] section for role "relay", which has no
-- mode: pass nil): the config file (-c / --default-config) if any, overridden by `cli` (a
-- table in the config's shape, nil for options not given). `flags` names the flag of a `cli`
-- key whose schema entry has none or another (bind_addr = "--listen"), for error messages.
-- Returns the section and the whole validated config, or nil and an error message.
function M.settings(args, role, mode, cli, flags)
  local section = mode or role
  local file = { role = role, mode = mode }
  if args.config or args.default_config then
    local path = args.config or config.default_path(role)
    local cfg, err = config.load(path, { role = role, mode = mode })
    if not cfg then
      return nil, err
    end
    file = cfg
  end
  local merged = config.merge(file, { [section] = cli })
  local v, err, records = config.validate(merged, { role = role, mode = mode, complete = true })
  if not v then
    return nil, flag_errors(section, cli, flags, err, records)
  end
  return v[section], v
end

--- The mode a command runs in: the mode subcommand if given, else the config file's `mode`
-- key, else iroh.
function M.mode(args, role)
  if args.mode then
    return args.mode
  end
  if args.config or args.default_config then
    -- Only the mode key is read here; the whole file is validated (with its errors reported)
    -- once the mode is known.
    local path = config.expand_path(args.config or config.default_path(role))
    local t = path and require("tunnel.toml").decode_file(path)
    if type(t) == "table" and type(t.mode) == "string" then
      return t.mode
    end
  end
  return "iroh"
end

--- iroh-mode relay options (server and client).
function M.relay_options(c)
  c:option("--relay-url", "Relay server (http:// or https://; repeatable, up to 4: all are " ..
    "connected, the lowest-latency one carries the traffic and the others take over).")
    :argname("<url>"):count("*"):target("relay_url")
  c:flag("--relay-only", "Never use a direct address: everything goes through the relay.")
  c:option("--socks5-proxy", "Reach relays through this proxy (socks5h://host:port).")
    :argname("<url>")
  c:option("--dns-server", "Discovery server (http(s)://host/pkarr), or none (default: the " ..
    "relay's /pkarr).")
    :argname("<url|none>")
end

--- The discovery URL: an explicit --dns-server / dns_server (nil for "none"), else the first
-- relay's /pkarr. Returns the URL or nil.
function M.dns_url(section, relays)
  local d = section.dns_server
  if type(d) == "table" then
    d = d.text or d[1]
  end
  if d == "none" or d == false then
    return nil
  end
  if type(d) == "string" then
    return d
  end
  if relays and relays[1] then
    return (relays[1]:gsub("/+$", "")) .. "/pkarr"
  end
  return nil
end

--- The plain string of a validated value (a string, or a parsed {text=...}); nil stays nil.
function M.text(v)
  return type(v) == "table" and (v.text or v[1]) or v
end

--- Plain strings from a validated list (entries may be strings or {text=...}).
function M.texts(list)
  local out = {}
  for _, v in ipairs(list or {}) do
    out[#out + 1] = M.text(v)
  end
  return out
end

--- Options every mode command has (called from a command's configure()).
function M.config_options(c, role)
  c:option("-c --config", "TOML config file (see docs/config.md)."):argname("<file>")
  c:flag("--default-config", "Use ~/.config/tunnel/" .. role .. ".toml.")
end

return M
