--- Configuration: the schema of every setting, loading TOML files, validating Lua tables,
-- merging command-line values (see docs/config.md and docs/api/tunnel.config.md).
--
--   local config = require "tunnel.config"
--   local cfg, err = config.load("server.toml", { role = "server", mode = "iroh" })
--   if not cfg then io.stderr:write(err, "\n") os.exit(2) end
--   cfg = assert(config.validate(config.merge(cfg, cli_values), { complete = true }))
--
-- `M.schema` below is the single source of truth: docs/config.md documents exactly its keys
-- (spec/config_spec.lua compares the two).

local toml = require "tunnel.toml"
local addr = require "tunnel.addr"

local byte, sub, find, match, format, lower =
  string.byte, string.sub, string.find, string.match, string.format, string.lower
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge
local type, pairs, ipairs, tostring, tonumber, getmetatable, error =
  type, pairs, ipairs, tostring, tonumber, getmetatable, error

local M = {}

local SRV, CLI, VSRV, VCLI, RLY = "server", "client", "vpnserver", "vpnclient", "relay"
-- The tunnel roles: every mode section belongs to some of them. The relay (`tunnel relay`) has
-- no mode and one section of its own, [relay].
local ALL = { SRV, CLI, VSRV, VCLI }

M.ROLES = { SRV, CLI, VSRV, VCLI, RLY }
M.MODES = { "iroh", "manual", "nostr" }

--- Default file names under the config directory, by kind (`config.default_path(kind)`).
M.KINDS = {
  server = "server.toml",
  client = "client.toml",
  vpn_server = "vpn_server.toml",
  vpn_client = "vpn_client.toml",
  relay = "relay.toml",
}

local KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024

-- Public infrastructure the seed tool used by default. Users may rely on these defaults;
-- tests must always configure local servers instead.
local DEFAULT_STUN = { "stun.l.google.com:19302", "stun1.l.google.com:19302" }
local DEFAULT_NOSTR_RELAYS = {
  "wss://nos.lol", "wss://relay.nostr.net", "wss://relay.primal.net", "wss://relay.snort.social",
}

---------------------------------------------------------------------------------------------------
-- The schema
--
-- A table spec has `fields`: an ordered list of key specs. A key spec has
--   name      the key
--   type      string, boolean, integer, seconds, size, enum, path, cidr, ip, hostport, source,
--             target, url, endpoint_id, token, relay_token, secret_key, nsec, npub, ifname,
--             list, table
--   roles     roles the key belongs to (default: the enclosing table's roles)
--   default   value filled in when absent (for the roles the key belongs to)
--   doc       one line for humans; docs/config.md says more
--   flag      the command-line flag that sets the same value, if any
--   sensitive never echo the value in messages
--   alias_of  this key is another name for a sibling key
--   required  (list entries) the key must be present
--   required_for  roles for which the key must be set once the configuration is complete
-- plus type parameters (min, max, values, aliases, family, schemes, of, fields, ...).
-- A table spec may also list `exclusive` pairs, `one_of` requirements (checked when complete)
-- and named cross-key `checks` / `complete_checks` (functions in CHECKS below).

local function transport(roles)
  return {
    name = "transport", type = "table", roles = roles,
    doc = "QUIC connection and flow tuning",
    fields = {
      { name = "congestion_controller", type = "enum", values = { "bbr", "cubic", "reno" },
        aliases = { newreno = "reno", new_reno = "reno" }, default = "bbr",
        doc = "congestion control algorithm" },
      { name = "receive_window", type = "size", min = KiB, max = GiB, default = 16 * MiB,
        doc = "largest flow-control window the peer may fill (bytes)" },
      { name = "send_window", type = "size", min = KiB, max = GiB, default = 16 * MiB,
        doc = "most unacknowledged bytes buffered for sending, per stream (bytes)" },
      { name = "idle_timeout", type = "seconds", min = 1, max = 3600, default = 60,
        doc = "close the connection after this long without a packet" },
      { name = "keep_alive_interval", type = "seconds", min = 0, max = 3600, default = 15,
        doc = "send a keep-alive after this long without traffic; 0 turns them off" },
      { name = "connect_timeout", type = "seconds", min = 1, max = 600, default = 10,
        doc = "give up a connection attempt after this long" },
      { name = "udp_idle_timeout", type = "seconds", min = 1, max = 86400, default = 60,
        roles = { SRV, CLI }, doc = "forget a UDP flow after this long without a datagram" },
      { name = "busy_poll", type = "integer", min = 0, max = 1000,
        doc = "longest poll for the next packet before sleeping (µs); 0 turns it off" },
    },
    checks = { "keep_alive" },
  }
end

local function allowed_sources()
  return {
    name = "allowed_sources", type = "table", roles = { SRV },
    doc = "networks clients may reach, per protocol; an empty list denies that protocol",
    fields = {
      { name = "tcp", type = "list", of = { type = "cidr" }, default = {}, flag = "--allowed-tcp",
        doc = "CIDRs allowed as TCP sources" },
      { name = "udp", type = "list", of = { type = "cidr" }, default = {}, flag = "--allowed-udp",
        doc = "CIDRs allowed as UDP sources" },
    },
  }
end

local function stun_servers()
  return { name = "stun_servers", type = "list", of = { type = "hostport", default_port = 3478 },
    roles = { SRV, CLI }, default = DEFAULT_STUN, flag = "--stun-server",
    doc = "STUN servers for server-reflexive candidates; an empty list turns STUN off" }
end

-- The client's forwards: one pair of keys, and (iroh, nostr) a list of more pairs.
local function forward_keys(fields, with_list)
  fields[#fields + 1] = { name = "request_source", type = "source", roles = { CLI },
    flag = "--source",
    doc = "service to reach, as seen from the server: tcp:// or udp://host:port" }
  fields[#fields + 1] = { name = "source", alias_of = "request_source" }
  fields[#fields + 1] = { name = "target", type = "target", roles = { CLI }, flag = "--target",
    doc = "local address to listen on for the request_source" }
  if with_list then
    fields[#fields + 1] = { name = "forward", type = "list", roles = { CLI }, default = {},
      clears = { "request_source", "target" },
      doc = "more forwards: a list of tables with source and target",
      of = { type = "table", fields = {
        { name = "source", type = "source", required = true,
          doc = "service to reach, as seen from the server" },
        { name = "request_source", alias_of = "source" },
        { name = "target", type = "target", required = true, doc = "local address to listen on" },
      } } }
  end
  return fields
end

local iroh = {
  name = "iroh", type = "table", roles = ALL,
  doc = "iroh mode: peers addressed by EndpointId, relay and hole punching",
  fields = {
    { name = "secret", type = "secret_key", roles = ALL, sensitive = true, flag = "--secret",
      doc = "this endpoint's secret key, base64 (prefer secret_file)" },
    { name = "secret_file", type = "path", roles = ALL, flag = "--secret-file",
      doc = "file holding this endpoint's secret key" },
    { name = "server_node_id", type = "endpoint_id", roles = { CLI, VCLI },
      required_for = { CLI, VCLI }, flag = "--server-node-id", doc = "the server's EndpointId" },
    { name = "auth_tokens", type = "list", of = { type = "token" }, roles = { SRV, VSRV },
      sensitive = true, flag = "--auth-tokens", doc = "tokens clients may authenticate with" },
    { name = "auth_tokens_file", type = "path", roles = { SRV, VSRV }, flag = "--auth-tokens-file",
      doc = "file with one token per line" },
    { name = "auth_token", type = "token", roles = { CLI, VCLI }, sensitive = true,
      flag = "--auth-token", doc = "token to authenticate with" },
    { name = "auth_token_file", type = "path", roles = { CLI, VCLI }, flag = "--auth-token-file",
      doc = "file holding the token" },
    { name = "max_sessions", type = "integer", min = 0, max = 1000000, roles = { SRV },
      default = 100, flag = "--max-sessions",
      doc = "concurrent forwarded TCP connections and UDP flows over all clients; 0 = no limit" },
    allowed_sources(),
    -- request_source, source, target, forward are inserted here
    { name = "relay_urls", type = "list", of = { type = "url", schemes = { "http", "https" } },
      roles = ALL, default = {}, flag = "--relay-url",
      doc = "relay servers, in order of preference" },
    { name = "relay_only", type = "boolean", roles = ALL, default = false, flag = "--relay-only",
      doc = "never use a direct path" },
    { name = "dns_server", type = "url", schemes = { "http", "https" }, none = true, roles = ALL,
      flag = "--dns-server", doc = "discovery server URL, or \"none\"" },
    { name = "socks5_proxy", type = "url", schemes = { "socks5", "socks5h" }, userinfo = true,
      roles = ALL, flag = "--socks5-proxy", doc = "reach relays and discovery through this proxy" },
    { name = "bind_addr", type = "hostport", allow_zero = true, roles = ALL,
      doc = "local UDP address and port of the endpoint" },
    { name = "server_addrs", type = "list", of = { type = "hostport" }, roles = { CLI, VCLI },
      default = {}, doc = "direct addresses of the server to try besides discovery" },
    -- VPN server
    { name = "network", type = "cidr", family = 4, roles = { VSRV },
      doc = "IPv4 pool the server assigns client addresses from" },
    { name = "server_ip", type = "ip", family = 4, roles = { VSRV },
      doc = "the server's own address in network (default: the first)" },
    { name = "network6", type = "cidr", family = 6, roles = { VSRV },
      doc = "IPv6 pool; one /128 per client" },
    { name = "server_ip6", type = "ip", family = 6, roles = { VSRV },
      doc = "the server's own address in network6 (default: the first)" },
    { name = "drop_on_full", type = "boolean", roles = { VSRV }, default = false,
      doc = "drop packets for a client whose queue is full instead of waiting" },
    { name = "client_channel_size", type = "integer", min = 1, max = 65536, roles = { VSRV },
      default = 1024, doc = "packets queued per client" },
    { name = "tun_writer_channel_size", type = "integer", min = 1, max = 65536, roles = { VSRV },
      default = 512, doc = "packets queued for the TUN device" },
    { name = "disable_spoofing_check", type = "boolean", roles = { VSRV }, default = false,
      doc = "accept packets whose source is another client's address" },
    -- VPN client
    { name = "routes", type = "list", of = { type = "cidr" }, roles = { VCLI }, default = {},
      flag = "--route", doc = "extra networks to route through the VPN" },
    { name = "routes6", type = "list", of = { type = "cidr", family = 6 }, roles = { VCLI },
      default = {}, flag = "--route6", doc = "extra IPv6 networks to route through the VPN" },
    { name = "auto_reconnect", type = "boolean", roles = { VCLI }, default = true,
      flag = "--auto-reconnect / --no-auto-reconnect", doc = "reconnect after losing the server" },
    { name = "max_reconnect_attempts", type = "integer", min = 1, max = 1000000, roles = { VCLI },
      flag = "--max-reconnect-attempts",
      doc = "give up after this many attempts (default: never)" },
    -- VPN, both sides
    { name = "mtu", type = "integer", min = 576, max = 1500, roles = { VSRV, VCLI },
      default = 1280, flag = "--mtu", doc = "MTU of the TUN device" },
    { name = "tun_name", type = "ifname", roles = { VSRV, VCLI },
      doc = "name of the TUN device (default: chosen by the kernel)" },
    transport(ALL),
  },
  exclusive = {
    { "secret", "secret_file" }, { "auth_tokens", "auth_tokens_file" },
    { "auth_token", "auth_token_file" },
  },
  one_of = {
    { "secret", "secret_file", roles = { SRV, VSRV },
      why = "a server needs a persistent identity (create a key with " ..
        "`tunnel generate-server-key --output FILE`)" },
    { "auth_tokens", "auth_tokens_file", roles = { SRV, VSRV },
      why = "clients authenticate with a token (create one with `tunnel generate-token`)" },
    { "auth_token", "auth_token_file", roles = { CLI, VCLI },
      why = "the server requires a token" },
  },
  checks = { "forwards", "vpn_addresses" },
  complete_checks = { "forwards_present", "allow_list_present", "vpn_network", "relay_only" },
}

local manual = {
  name = "manual", type = "table", roles = { SRV, CLI },
  doc = "manual mode: ICE with offer and answer copied by hand",
  fields = {
    stun_servers(),
    allowed_sources(),
    transport({ SRV, CLI }),
  },
  checks = { "forwards" },
  complete_checks = { "forwards_present", "allow_list_present" },
}

local nostr = {
  name = "nostr", type = "table", roles = { SRV, CLI },
  doc = "nostr mode: ICE with offer and answer exchanged through Nostr relays",
  fields = {
    { name = "nsec", type = "nsec", roles = { SRV, CLI }, sensitive = true, flag = "--nsec",
      doc = "this side's Nostr secret key, nsec1... or hex (prefer nsec_file)" },
    { name = "nsec_file", type = "path", roles = { SRV, CLI }, flag = "--nsec-file",
      doc = "file holding this side's Nostr secret key" },
    { name = "peer_npub", type = "npub", roles = { SRV, CLI }, required_for = { SRV, CLI },
      flag = "--peer-npub", doc = "the other side's Nostr public key, npub1... or hex" },
    { name = "relays", type = "list", of = { type = "url", schemes = { "ws", "wss" } },
      roles = { SRV, CLI }, default = DEFAULT_NOSTR_RELAYS, flag = "--relay",
      doc = "Nostr relays used for signaling" },
    stun_servers(),
    { name = "max_sessions", type = "integer", min = 0, max = 1000000, roles = { SRV },
      default = 10, flag = "--max-sessions", doc = "concurrent sessions; 0 = no limit" },
    allowed_sources(),
    { name = "republish_interval", type = "seconds", min = 1, max = 3600, roles = { CLI },
      default = 5, flag = "--republish-interval",
      doc = "first wait before publishing the request again (doubles, up to 60 s)" },
    { name = "max_wait", type = "seconds", min = 1, max = 86400, roles = { CLI }, default = 120,
      flag = "--max-wait", doc = "give up when the server has not answered after this long" },
    transport({ SRV, CLI }),
  },
  exclusive = { { "nsec", "nsec_file" } },
  one_of = {
    { "nsec", "nsec_file", roles = { SRV, CLI },
      why = "nostr mode signs with a static key (create one with " ..
        "`tunnel generate-nostr-key --output FILE`)" },
  },
  checks = { "forwards" },
  complete_checks = { "forwards_present", "allow_list_present" },
}

-- Insert the client's forward keys after allowed_sources (docs order).
local function insert_forwards(sec, with_list)
  local fields, out = sec.fields, {}
  for _, f in ipairs(fields) do
    out[#out + 1] = f
    if f.name == "allowed_sources" then forward_keys(out, with_list) end
  end
  sec.fields = out
end
insert_forwards(iroh, true)
insert_forwards(manual, false)
insert_forwards(nostr, true)

-- `tunnel relay`: the same values and limits as its command-line options.
local relay = {
  name = "relay", type = "table", roles = { RLY },
  doc = "tunnel relay: WebSocket relay, discovery store and STUN responder for iroh mode",
  fields = {
    { name = "listen", type = "hostport", numeric = true, allow_zero = true,
      required_for = { RLY }, flag = "--listen",
      doc = "TCP address for HTTP(S) and the WebSocket relay, e.g. 0.0.0.0:3340" },
    { name = "tls_cert", type = "path", flag = "--tls-cert",
      doc = "PEM certificate chain: serve HTTPS (needs tls_key)" },
    { name = "tls_key", type = "path", flag = "--tls-key", doc = "PEM private key of tls_cert" },
    { name = "stun_listen", type = "hostport", numeric = true, allow_zero = true,
      default_port = 3478, flag = "--stun-listen",
      doc = "also answer STUN Binding requests on this UDP address" },
    { name = "allow_keys", type = "list", of = { type = "endpoint_id" }, default = {},
      flag = "--allow-key", doc = "only these EndpointIds may connect; empty: anyone" },
    { name = "tokens", type = "list", of = { type = "relay_token", sensitive = true },
      sensitive = true,
      flag = "--token", doc = "access tokens; a client must present one of them" },
    { name = "tokens_file", type = "path", flag = "--tokens-file",
      doc = "file with one access token per line" },
    { name = "rate", type = "integer", min = 1, max = 4294967295, flag = "--rate",
      doc = "per-client limit on relayed bytes per second (default: unlimited)" },
    { name = "burst", type = "integer", min = 1, max = 4294967295, flag = "--burst",
      doc = "per-client burst in bytes for rate (default: max(rate, 65535))" },
    { name = "pkarr_slots", type = "integer", min = 0, max = 16777216, default = 4096,
      flag = "--pkarr-slots", doc = "discovery records kept; 0 disables /pkarr" },
  },
  exclusive = { { "tokens", "tokens_file" } },
  complete_checks = { "relay_pairs" },
}

M.schema = {
  fields = {
    { name = "role", type = "enum", values = M.ROLES, roles = M.ROLES,
      doc = "what this file configures: server, client, vpnserver, vpnclient or relay" },
    { name = "mode", type = "enum", values = M.MODES, roles = ALL, default = "iroh",
      doc = "connection mode; VPN roles use iroh only; the relay has none" },
    iroh, manual, nostr, relay,
  },
}

-- Index the schema: name lookups, role sets, aliases, and what a key clears when merged.
local function index(spec, parent_roles)
  spec.by_name = {}
  spec.role_set = {}
  for _, r in ipairs(spec.roles or parent_roles or ALL) do spec.role_set[r] = true end
  for _, f in ipairs(spec.fields) do spec.by_name[f.name] = f end
  for _, f in ipairs(spec.fields) do
    if f.alias_of then
      local target = spec.by_name[f.alias_of]
      f.target = target
      target.alias_names = target.alias_names or {}
      target.alias_names[#target.alias_names + 1] = f.name
    end
  end
  for _, f in ipairs(spec.fields) do
    local roles = f.roles or (f.alias_of and spec.by_name[f.alias_of].roles) or spec.roles
      or parent_roles
    f.roles = roles
    f.role_set = {}
    for _, r in ipairs(roles or ALL) do f.role_set[r] = true end
    if f.type == "table" then index(f, roles) end
    if f.type == "list" and f.of.type == "table" then index(f.of, roles) end
  end
  for _, pair in ipairs(spec.exclusive or {}) do
    for i = 1, 2 do
      local f = spec.by_name[pair[i]]
      f.clears = f.clears or {}
      f.clears[#f.clears + 1] = pair[3 - i]
    end
  end
end
index(M.schema, ALL)
-- A forward given on the command line replaces the file's list of forwards.
iroh.by_name.request_source.clears = { "forward" }
iroh.by_name.target.clears = { "forward" }
nostr.by_name.request_source.clears = { "forward" }
nostr.by_name.target.clears = { "forward" }

local SECTIONS = { iroh = iroh, manual = manual, nostr = nostr, relay = relay }
-- Sections in the order they are checked: one per mode, then the relay's.
local SECTION_NAMES = { "iroh", "manual", "nostr", "relay" }

-- The section a role runs from: the mode's, or [relay] for the relay.
local function active_section(role, mode)
  if role == RLY then return "relay" end
  return mode
end

---------------------------------------------------------------------------------------------------
-- Small helpers

local function is_list(v)
  if type(v) ~= "table" then return false end
  local mt = getmetatable(v)
  if mt == toml.array_mt then return true end
  if mt ~= nil then return false end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  for i = 1, n do
    if v[i] == nil then return false end
  end
  return true
end

-- A table of key = value settings: TOML tables have no metatable; `{}` counts as both.
local function is_record(v)
  if type(v) ~= "table" or getmetatable(v) ~= nil then return false end
  return next(v) == nil or not is_list(v)
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return out
end

local function quote(s)
  if #s > 60 then s = sub(s, 1, 57) .. "..." end
  return '"' .. s:gsub("[%c\"\\]", function(c) return format("\\%03d", byte(c)) end) .. '"'
end

local function int_text(v)
  return (tostring(v):gsub("[UL]+$", ""))
end

-- What the user gave, for "expected X, got Y" messages.
local function describe(v, sensitive)
  local tv = type(v)
  if tv == "string" then
    if sensitive then return format("a string of %d characters", #v) end
    return "a string (" .. quote(v) .. ")"
  elseif tv == "number" then
    if v ~= v or v == huge or v == -huge then return "a float (" .. tostring(v) .. ")" end
    if v == floor(v) then return format("an integer (%.0f)", v) end
    return "a float (" .. tostring(v) .. ")"
  elseif tv == "cdata" then
    return "an integer (" .. int_text(v) .. ")"
  elseif tv == "boolean" then
    return "a boolean (" .. tostring(v) .. ")"
  elseif tv == "table" then
    if toml.is_datetime(v) then return "a date/time (" .. tostring(v) .. ")" end
    if next(v) == nil then return "an empty table" end
    return is_list(v) and "a list" or "a table"
  end
  return "a " .. tv
end

local function expect(what, v, f)
  return "must be " .. what .. ", got " .. describe(v, f and f.sensitive)
end

local function num_text(n)
  if n == floor(n) then return format("%.0f", n) end
  return tostring(n)
end

local function range_err(f, v, unit)
  unit = unit or ""
  return format("is out of range: got %s%s, allowed %s to %s%s", v, unit, num_text(f.min),
    num_text(f.max), unit)
end

-- Optimal string alignment distance (Damerau-Levenshtein with adjacent transpositions).
local function distance(a, b)
  local la, lb = #a, #b
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 0, lb do d[0][j] = j end
  for i = 1, la do
    local ca = byte(a, i)
    for j = 1, lb do
      local cb = byte(b, j)
      local cost = ca == cb and 0 or 1
      local v = d[i - 1][j] + 1
      if d[i][j - 1] + 1 < v then v = d[i][j - 1] + 1 end
      if d[i - 1][j - 1] + cost < v then v = d[i - 1][j - 1] + cost end
      if i > 1 and j > 1 and ca == byte(b, j - 1) and byte(a, i - 1) == cb
        and d[i - 2][j - 2] + 1 < v then
        v = d[i - 2][j - 2] + 1
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end
M._distance = distance

--- The closest of `candidates` to `word`, if it is close enough to be a likely typo.
local function suggest(word, candidates)
  local norm = lower(word):gsub("-", "_")
  local best, best_d
  for _, c in ipairs(candidates) do
    local d = norm == c and 0 or distance(norm, c)
    if not best_d or d < best_d then best, best_d = c, d end
  end
  if not best then return nil end
  local limit = #word <= 4 and 1 or #word <= 8 and 2 or 3
  if best_d <= limit then return best end
  return nil
end
M.suggest = suggest

local function role_text(roles)
  return concat(roles, "/")
end

---------------------------------------------------------------------------------------------------
-- Paths

--- Expand "~" and "~/..." using `home` (default $HOME). "~user" is refused.
-- Returns the path or nil, err.
function M.expand_path(p, home)
  if type(p) ~= "string" then error("config.expand_path: path must be a string", 2) end
  if home ~= nil and type(home) ~= "string" then
    error("config.expand_path: home must be a string", 2)
  end
  if sub(p, 1, 1) ~= "~" then return p end
  local rest = sub(p, 2)
  if rest ~= "" and sub(rest, 1, 1) ~= "/" then
    local user = match(rest, "^[^/]*")
    return nil, format("'%s': '~%s' (another user's home directory) is not supported; write " ..
      "the full path instead, e.g. '/home/%s%s'", p, user, user, sub(rest, #user + 1))
  end
  home = home or os.getenv("HOME")
  if not home or home == "" then
    return nil, format("'%s': cannot expand '~' because HOME is not set; write an absolute path",
      p)
  end
  home = home:gsub("/+$", "")
  if rest == "" then return home == "" and "/" or home end
  return home .. rest
end

local function cwd()
  local ok, uv = pcall(require, "luv")
  local d = ok and uv.cwd and uv.cwd()
  return d or os.getenv("PWD") or "."
end

local function dirname(p)
  local d = match(p, "^(.*)/[^/]*$")
  if d == nil then return "." end
  if d == "" then return "/" end
  return d
end

local function join(dir, p)
  if sub(p, 1, 1) == "/" then return p end
  while sub(p, 1, 2) == "./" do p = sub(p, 3) end
  if dir == "." then dir = cwd() end
  if sub(dir, 1, 1) ~= "/" then dir = cwd() .. "/" .. dir end
  if p == "." or p == "" then return dir end
  return (dir:gsub("/+$", "")) .. "/" .. p
end

--- Default config file for `kind` ("server", "client", "vpn_server", "vpn_client"):
-- $XDG_CONFIG_HOME/tunnel/<file>, or ~/.config/tunnel/<file>. `env` (optional) replaces
-- os.getenv: a table with HOME and XDG_CONFIG_HOME. Returns the path or nil, err.
function M.default_path(kind, env)
  local file = M.KINDS[kind]
  if not file then
    local names = {}
    for k in pairs(M.KINDS) do names[#names + 1] = k end
    sort(names)
    error(format("config.default_path: unknown kind '%s' (one of %s)", tostring(kind),
      concat(names, ", ")), 2)
  end
  if env ~= nil and type(env) ~= "table" then
    error("config.default_path: env must be a table", 2)
  end
  local function get(name)
    if env then return env[name] end
    return os.getenv(name)
  end
  local xdg = get("XDG_CONFIG_HOME")
  -- The XDG spec says relative values are invalid and must be ignored.
  if xdg and sub(xdg, 1, 1) == "/" then
    return (xdg:gsub("/+$", "")) .. "/tunnel/" .. file
  end
  local home = get("HOME")
  if not home or home == "" then
    return nil, "cannot find the config directory: neither XDG_CONFIG_HOME nor HOME is set; " ..
      "pass the file with -c"
  end
  return (home:gsub("/+$", "")) .. "/.config/tunnel/" .. file
end

---------------------------------------------------------------------------------------------------
-- Value types. Each returns the normalised value, or nil and a predicate completing the
-- sentence "'<key>' ...".

-- Keys and tokens are checked by tunnel.keys (the same codecs the commands use), loaded on first
-- use so that reading this module needs no C code.
local keys_mod
local function keys_lib()
  keys_mod = keys_mod or require "tunnel.keys"
  return keys_mod
end

local function key_value(v, f, what, parse)
  if type(v) ~= "string" then return nil, expect(what, v, f) end
  if v == "" then return nil, "must not be empty: give " .. what .. " or remove the key" end
  local ok, err = parse(v)
  if not ok then return nil, "is invalid: " .. tostring(err) end
  return ok
end

local function path_value(v, f, ctx)
  if type(v) ~= "string" then return nil, expect("a file path (string)", v, f) end
  if v == "" then return nil, "must not be empty: give a file path or remove the key" end
  if find(v, "%z") then return nil, "contains a NUL byte" end
  local p, err = M.expand_path(v, ctx.home)
  if not p then return nil, "cannot be used: " .. err end
  if ctx.base_dir then p = join(ctx.base_dir, p) end
  return p
end

local TYPES = {}

TYPES.string = function(v, f)
  if type(v) ~= "string" then return nil, expect("a string", v, f) end
  if v == "" then return nil, "must not be empty" end
  return v
end

TYPES.boolean = function(v, f)
  if type(v) ~= "boolean" then return nil, expect("true or false", v, f) end
  return v
end

TYPES.integer = function(v, f)
  local n = v
  if type(v) == "cdata" then
    -- Only int64 cdata (TOML integers beyond 2^53) get here; none fits any of our ranges.
    return nil, range_err(f, int_text(v))
  end
  if type(n) ~= "number" or n ~= n or n == huge or n == -huge or n ~= floor(n) then
    return nil, expect("an integer", v, f)
  end
  if n < f.min or n > f.max then return nil, range_err(f, num_text(n)) end
  return n
end

TYPES.seconds = function(v, f)
  if type(v) == "cdata" then
    return nil, range_err(f, int_text(v), " s")
  end
  if type(v) ~= "number" or v ~= v then return nil, expect("a number of seconds", v, f) end
  if v < f.min or v > f.max then return nil, range_err(f, num_text(v), " s") end
  return v
end

local SIZE_UNITS = { [""] = 1, b = 1, k = KiB, kib = KiB, m = MiB, mib = MiB, g = GiB, gib = GiB }

TYPES.size = function(v, f)
  local n = v
  if type(v) == "string" then
    local num, unit = match(v, "^%s*(%d+)%s*(%a*)%s*$")
    local mul = num and SIZE_UNITS[lower(unit)]
    if not mul then
      return nil, format("must be a size such as 16777216, \"16 MiB\" or \"512 KiB\", got %s" ..
        " (units: B, KiB, MiB, GiB)", quote(v))
    end
    n = tonumber(num) * mul
  elseif type(v) == "cdata" then
    return nil, range_err(f, int_text(v), " bytes")
  elseif type(v) ~= "number" or v ~= floor(v) then
    return nil, expect("a size in bytes (an integer, or a string such as \"16 MiB\")", v, f)
  end
  if n < f.min or n > f.max then return nil, range_err(f, num_text(n), " bytes") end
  return n
end

TYPES.enum = function(v, f)
  local list = concat(f.values, ", ")
  if type(v) ~= "string" then return nil, expect("one of " .. list, v, f) end
  local l = lower(v)
  for _, x in ipairs(f.values) do
    if x == l then return x end
  end
  if f.aliases and f.aliases[l] then return f.aliases[l] end
  local all = {}
  for _, x in ipairs(f.values) do all[#all + 1] = x end
  for a in pairs(f.aliases or {}) do all[#all + 1] = a end
  local s = suggest(v, all)
  return nil, format("must be one of %s, got %s%s", list, quote(v),
    s and " — did you mean '" .. s .. "'?" or "")
end

TYPES.path = path_value

local function family_name(fam)
  return fam == 4 and "an IPv4" or fam == 6 and "an IPv6" or "a"
end

TYPES.cidr = function(v, f)
  local what = family_name(f.family) .. " CIDR string such as " ..
    (f.family == 6 and "\"fd00::/64\"" or "\"10.0.0.0/8\"")
  if type(v) ~= "string" then return nil, expect(what, v, f) end
  local c, err = addr.parse_cidr(v)
  if not c then return nil, "is invalid: " .. err end
  if f.family and c.family ~= f.family then
    return nil, format("must be %s CIDR, got %s", family_name(f.family), quote(v))
  end
  return c.text
end

TYPES.ip = function(v, f)
  local what = family_name(f.family) .. " address"
  if type(v) ~= "string" then return nil, expect(what .. " string", v, f) end
  local ip, err = addr.parse_ip(v)
  if not ip then return nil, "is invalid: " .. err end
  if f.family and ip.family ~= f.family then
    return nil, format("must be %s, got %s", what, quote(v))
  end
  return ip.text
end

TYPES.hostport = function(v, f)
  if type(v) ~= "string" then return nil, expect("a \"host:port\" string", v, f) end
  local hp, err = addr.parse_hostport(v, { default_port = f.default_port,
    allow_zero = f.allow_zero })
  if not hp then return nil, "is invalid: " .. err end
  if f.numeric and not hp.family then
    -- A listening address: resolving a name here would pick one of its addresses silently.
    return nil, format("is invalid: '%s': give a numeric IP address (0.0.0.0 or [::] for all)",
      v)
  end
  return hp.text
end

TYPES.source = function(v, f)
  if type(v) ~= "string" then
    return nil, expect("a source string such as \"tcp://127.0.0.1:22\"", v, f)
  end
  if find(v, "^%s*$") then
    return nil, "must not be empty: write tcp://host:port or udp://host:port"
  end
  local s, err = addr.parse_source(v)
  if not s then return nil, "is invalid: " .. err end
  return s.text
end

-- A local listen address: host:port, or tcp:// / udp:// host:port whose scheme must then match
-- the source's (checked by the "forwards" rule).
TYPES.target = function(v, f)
  if type(v) ~= "string" then
    return nil, expect("a \"host:port\" string such as \"127.0.0.1:2222\"", v, f)
  end
  if find(v, "://", 1, true) then
    local s, err = addr.parse_source(v)
    if not s then return nil, "is invalid: " .. err end
    return s.text
  end
  local hp, err = addr.parse_hostport(v)
  if not hp then return nil, "is invalid: " .. err end
  return hp.text
end

TYPES.url = function(v, f)
  local want = concat(f.schemes, "://, ") .. "://"
  if type(v) ~= "string" then
    return nil, expect("an URL (" .. want .. ")" .. (f.none and " or \"none\"" or ""), v, f)
  end
  if f.none and lower(v) == "none" then return "none" end
  local u, err = addr.parse_url(v, { schemes = f.schemes })
  if not u then return nil, "is invalid: " .. err end
  if u.userinfo and not f.userinfo then
    return nil, format("is invalid: %s: user names and passwords are not allowed here", quote(v))
  end
  return u.text
end

TYPES.endpoint_id = function(v, f)
  local pub, err = key_value(v, f, "an EndpointId (52 base32 characters, or 64 hex digits)",
    function(x) return keys_lib().parse_endpoint_id(x) end)
  if not pub then return nil, err end
  return keys_lib().format_endpoint_id(pub)
end

TYPES.token = function(v, f)
  local ok, err = key_value(v, f, "a token string",
    function(x) return keys_lib().validate_token(x) end)
  if not ok then return nil, err end
  return v
end

-- A relay access token: any string the operator chooses (tunnel generate-token makes good
-- ones); the relay protocol carries 1 to 255 bytes.
TYPES.relay_token = function(v, f)
  if type(v) ~= "string" then return nil, expect("a token string", v, f) end
  if #v < 1 or #v > 255 then
    return nil, format("must be 1 to 255 bytes long, got %d bytes", #v)
  end
  return v
end

TYPES.secret_key = function(v, f)
  local ok, err = key_value(v, f, "a secret key (base64 of 32 bytes, or 64 hex digits)",
    function(x) return keys_lib().load_secret(x) end)
  if not ok then return nil, err end
  return v
end

TYPES.nsec = function(v, f)
  local ok, err = key_value(v, f, "a Nostr secret key (nsec1... or 64 hex digits)",
    function(x) return keys_lib().parse_nsec(x) end)
  if not ok then return nil, err end
  return v
end

TYPES.npub = function(v, f)
  local ok, err = key_value(v, f, "a Nostr public key (npub1... or 64 hex digits)",
    function(x) return keys_lib().parse_npub(x) end)
  if not ok then return nil, err end
  return v
end

TYPES.ifname = function(v, f)
  if type(v) ~= "string" then return nil, expect("an interface name", v, f) end
  if #v < 1 or #v > 15 or not find(v, "^[%w_.%-%%]+$") then
    return nil, format("must be an interface name of 1 to 15 letters, digits, '-', '_', '.' " ..
      "(and %%d for a number the kernel picks), got %s", quote(v))
  end
  return v
end

---------------------------------------------------------------------------------------------------
-- Validation context, locations and error reports

-- A location is {t = container, k = key, up = parent location, path = "iroh.tcp[2]",
-- name = path below the section}. Errors in files cite the position of the nearest located key.
local function child(loc, t, k)
  local seg = type(k) == "number" and "[" .. k .. "]" or k
  local sep = type(k) == "number" and "" or "."
  local path = loc.path == "" and seg or loc.path .. sep .. seg
  -- Names in messages are relative to the section: 'allowed_sources.tcp[2]'.
  local name = loc.depth <= 1 and seg or loc.name .. sep .. seg
  return { t = t, k = k, up = loc, path = path, name = name, depth = loc.depth + 1 }
end

local function position(ctx, loc)
  local pos = ctx.pos
  while pos and loc do
    local m = loc.t and pos[loc.t]
    local p = m and m[loc.k]
    if p then return p end
    loc = loc.up
  end
  return nil
end

local function report(ctx, loc, msg)
  local p = loc and position(ctx, loc)
  local e = { msg = msg, line = p and p.line or 0, col = p and p.col or 0,
    path = loc and loc.path ~= "" and loc.path or nil, n = #ctx.errs + 1 }
  ctx.errs[#ctx.errs + 1] = e
end

-- A value error: "'<key>' <predicate>" in files, "<path>: <predicate>" for Lua tables.
local function report_value(ctx, loc, pred)
  if ctx.file then
    report(ctx, loc, "'" .. loc.name .. "' " .. pred)
  else
    report(ctx, loc, pred)
  end
end

local function table_label(loc)
  if loc.path == "" then return "the top level" end
  if find(loc.path, "%]$") then return "'" .. loc.path .. "'" end
  return "[" .. loc.path .. "]"
end

-- The subject of a sentence about a whole table: "[iroh] " in files; nothing for Lua tables,
-- whose messages already start with the path ("iroh: needs ...").
local function subject(ctx, loc)
  return ctx.file and table_label(loc) .. " " or ""
end

local function for_this(ctx)
  return ctx.file and "this file is for role" or "this configuration is for role"
end

local function role_ok(ctx, f)
  return not ctx.role or f.role_set[ctx.role]
end

-- Hints for keys people bring from the command line or from other tools.
local HINTS = {
  allowed_tcp = "allow-lists go in a table: [<section>.allowed_sources] tcp = [...]",
  allowed_udp = "allow-lists go in a table: [<section>.allowed_sources] udp = [...]",
  tunnels = "several forwards are written as [[<section>.forward]] tables with source and target",
}

local function unknown_key(ctx, spec, t, k, loc)
  local kloc = child(loc, t, k)
  local msg = format("unknown key '%s' in %s", k, table_label(loc))
  local cands = {}
  for _, f in ipairs(spec.fields) do
    if role_ok(ctx, f) then cands[#cands + 1] = f.name end
  end
  local s = suggest(k, cands)
  local norm = lower(k):gsub("-", "_")
  local all = {}
  for _, f in ipairs(spec.fields) do all[#all + 1] = f.name end
  local other = not s and suggest(k, all)
  if s then
    msg = msg .. " — did you mean '" .. s .. "'?"
  elseif other then
    -- The likely intended key exists, but for another role: say so rather than suggest it.
    msg = msg .. format(" — the closest key, '%s', is a %s setting; %s '%s'", other,
      role_text(spec.by_name[other].roles), for_this(ctx), ctx.role)
  elseif HINTS[norm] then
    local sec = loc.path ~= "" and match(loc.path, "^[^.%[]+") or ctx.mode or "iroh"
    msg = msg .. " — " .. HINTS[norm]:gsub("<section>", sec)
  elseif loc.path == "" then
    -- A section key written above the section headers (or without one).
    local sec = SECTIONS[active_section(ctx.role, ctx.mode)] or iroh
    if sec.by_name[norm] then
      msg = msg .. format(" — '%s' belongs in a section: move it below the [%s] header", k,
        sec.name)
    end
  else
    local where = {}
    for _, name in ipairs(M.MODES) do
      if spec ~= SECTIONS[name] and SECTIONS[name].by_name[norm] and SECTIONS[spec.name] then
        where[#where + 1] = "[" .. name .. "]"
      end
    end
    if #where > 0 then
      msg = msg .. format(" — '%s' is a setting of %s", k, concat(where, " and "))
    end
  end
  report(ctx, kloc, msg)
end

local function wrong_role(ctx, spec, t, f, k, loc)
  local msg = format("'%s' is a %s setting; %s '%s'", k, role_text(f.roles), for_this(ctx),
    ctx.role)
  local cands = {}
  for _, g in ipairs(spec.fields) do
    if g ~= f and role_ok(ctx, g) then cands[#cands + 1] = g.name end
  end
  local s = suggest(k, cands)
  if s then msg = msg .. " — did you mean '" .. s .. "'?" end
  report(ctx, child(loc, t, k), msg)
end

local check_table

local function check_value(ctx, f, v, loc)
  if f.type == "list" then
    if not is_list(v) then
      local what = f.of.type == "table" and "a list of tables" or "a list"
      report_value(ctx, loc, expect(what .. " ([...])", v, f))
      return nil
    end
    local out = {}
    for i = 1, #v do
      local ev = check_value(ctx, f.of, v[i], child(loc, v, i))
      if ev ~= nil then out[#out + 1] = ev end
    end
    return out
  elseif f.type == "table" then
    if not is_record(v) then
      report_value(ctx, loc, expect("a table of settings", v, f))
      return nil
    end
    return check_table(ctx, f, v, loc)
  end
  local nv, pred = TYPES[f.type](v, f, ctx)
  if nv == nil then report_value(ctx, loc, pred) end
  return nv
end

local CHECKS = {}

-- Validate table `t` against table spec `spec`; returns the normalised copy.
check_table = function(ctx, spec, t, loc)
  local out = {}
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, function(a, b)
    if type(a) ~= type(b) then return type(a) == "number" end
    return a < b
  end)
  for _, k in ipairs(keys) do
    if type(k) ~= "string" then
      report(ctx, loc, format("unexpected list item [%s] in %s: expected key = value settings",
        tostring(k), table_label(loc)))
    else
      local f = spec.by_name[k]
      if not f then
        unknown_key(ctx, spec, t, k, loc)
      elseif not role_ok(ctx, f) then
        wrong_role(ctx, spec, t, f, k, loc)
      end
    end
  end
  for _, f in ipairs(spec.fields) do
    if not f.alias_of and role_ok(ctx, f) then
      local key, v = f.name, t[f.name]
      for _, a in ipairs(f.alias_names or {}) do
        if t[a] ~= nil then
          if v ~= nil then
            report(ctx, child(loc, t, a), format("'%s' is another name for '%s'; set only one " ..
              "of them", a, f.name))
          else
            key, v = a, t[a]
          end
        end
      end
      local kloc = child(loc, t, key)
      if v ~= nil then
        out[f.name] = check_value(ctx, f, v, kloc)
      elseif f.required then
        report(ctx, loc, format("%sneeds '%s'", subject(ctx, loc), f.name))
      elseif f.type == "table" then
        out[f.name] = check_table(ctx, f, {}, kloc)
      elseif f.default ~= nil then
        out[f.name] = deep_copy(f.default)
      end
    end
  end
  for _, pair in ipairs(spec.exclusive or {}) do
    local a, b = pair[1], pair[2]
    local ka, kb = a, b
    for _, al in ipairs(spec.by_name[a].alias_names or {}) do if t[al] ~= nil then ka = al end end
    if t[ka] ~= nil and t[kb] ~= nil and role_ok(ctx, spec.by_name[a]) then
      local la, lb = child(loc, t, ka), child(loc, t, kb)
      local pa, pb = position(ctx, la), position(ctx, lb)
      local later = lb
      if pa and pb and (pa.line > pb.line or (pa.line == pb.line and pa.col > pb.col)) then
        later = la
      end
      report(ctx, later, format("'%s' and '%s' are alternatives; set only one of them", ka, kb))
    end
  end
  for _, name in ipairs(spec.checks or {}) do CHECKS[name](ctx, out, t, loc) end
  return out
end

---------------------------------------------------------------------------------------------------
-- Cross-key rules

local function scheme_of(s) return match(s, "^(%a+)://") end

-- Every forward's target scheme (if any) matches its source; no two forwards listen on the same
-- local address.
CHECKS.forwards = function(ctx, out, t, loc)
  local seen = {}
  local function one(src, tgt, raw, tk, label)
    if not tgt then return end
    local ts = scheme_of(tgt)
    if src and ts and ts ~= scheme_of(src) then
      report(ctx, child(loc, raw, tk), format("%starget %s is %s but its source %s is %s; " ..
        "use the same protocol or write the target as host:port", label, tgt, ts, src,
        scheme_of(src)))
    end
    local key = (scheme_of(src or "") or ts or "tcp") .. "://" .. (tgt:gsub("^%a+://", ""))
    if seen[key] then
      report(ctx, child(loc, raw, tk), format("%starget %s is already used by %s; each " ..
        "forward needs its own local address", label, tgt, seen[key]))
    else
      seen[key] = label == "" and "'target'" or label:gsub(": $", "")
    end
  end
  if out.target then
    one(out.request_source, out.target, t, "target", "")
  end
  local raw = t.forward
  for i, e in ipairs(out.forward or {}) do
    local re = raw and raw[i] or {}
    one(e.source, e.target, re, "target", format("forward[%d]: ", i))
  end
end

-- The last address of a prefix (all host bits set): the IPv4 broadcast address.
local function last_address(c)
  local out = {}
  for i = 1, #c.bytes do
    local keep = c.prefix - (i - 1) * 8
    local b = byte(c.bytes, i)
    if keep <= 0 then
      b = 255
    elseif keep < 8 then
      b = b + 2 ^ (8 - keep) - 1
    end
    out[i] = string.char(b)
  end
  return concat(out)
end

-- VPN pools: each server address lies inside its pool and is a usable host address; pools leave
-- room for the server and a client; IPv6 needs an MTU of at least 1280.
CHECKS.vpn_addresses = function(ctx, out, t, loc)
  for _, v in ipairs({ { "server_ip", "network" }, { "server_ip6", "network6" } }) do
    local ipk, netk = v[1], v[2]
    local ip, net = out[ipk], out[netk]
    if ip and t[netk] == nil then
      report(ctx, child(loc, t, ipk), format("'%s' needs '%s' (the pool it belongs to)", ipk,
        netk))
    elseif ip and net then
      local c, parsed = addr.parse_cidr(net), addr.parse_ip(ip)
      if not addr.cidr_contains(c, parsed) then
        report(ctx, child(loc, t, ipk), format("'%s' %s is not inside %s %s", ipk, ip, netk, net))
      elseif parsed.bytes == c.bytes or (c.family == 4 and parsed.bytes == last_address(c)) then
        report(ctx, child(loc, t, ipk), format("'%s' %s is the %s address of %s; pick a host " ..
          "address", ipk, ip, parsed.bytes == c.bytes and "network" or "broadcast", net))
      end
    end
  end
  for _, k in ipairs({ "network", "network6" }) do
    local net = out[k]
    if net then
      local c = addr.parse_cidr(net)
      local maxp = c.family == 4 and 32 or 128
      if c.prefix > maxp - 2 then
        report(ctx, child(loc, t, k), format("'%s' %s is too small: the pool needs room for the " ..
          "server and at least one client (use /%d or shorter)", k, net, maxp - 2))
      end
    end
  end
  if out.network6 and out.mtu and out.mtu < 1280 then
    report(ctx, child(loc, t, "mtu"), format("'mtu' %d is too small for IPv6 (network6 is set): " ..
      "IPv6 needs at least 1280", out.mtu))
  end
end

CHECKS.keep_alive = function(ctx, out, t, loc)
  local ka, idle = out.keep_alive_interval, out.idle_timeout
  if ka and idle and ka > 0 and ka >= idle then
    local k = t.keep_alive_interval ~= nil and "keep_alive_interval" or "idle_timeout"
    report(ctx, child(loc, t, k), format("keep_alive_interval (%s s) must be shorter than " ..
      "idle_timeout (%s s), or the connection times out between keep-alives", num_text(ka),
      num_text(idle)))
  end
end

-- Complete-configuration rules: what must be known before a command can run.

-- Whether the user wrote key `k` (or an alias of it) at all; an invalid value is reported once,
-- as invalid, not again as missing.
local function written(spec, t, k)
  if t[k] ~= nil then return true end
  for _, a in ipairs(spec.by_name[k].alias_names or {}) do
    if t[a] ~= nil then return true end
  end
  return false
end

local function flag_hint(f)
  return f and f.flag and "; on the command line: " .. f.flag or ""
end

CHECKS.forwards_present = function(ctx, _, t, loc, spec)
  if ctx.role ~= CLI then return end
  local has_src, has_tgt = written(spec, t, "request_source"), written(spec, t, "target")
  if has_src and not has_tgt then
    report(ctx, loc, "'request_source' has no 'target': set target = \"host:port\" (the local " ..
      "address to listen on)" .. flag_hint(spec.by_name.target))
  elseif has_tgt and not has_src then
    report(ctx, loc, "'target' has no 'request_source': set request_source = " ..
      "\"tcp://host:port\" (the service as seen from the server)" ..
      flag_hint(spec.by_name.request_source))
  end
  local list = spec.by_name.forward and t.forward
  if not (has_src or has_tgt) and not (type(list) == "table" and next(list) ~= nil) then
    report(ctx, loc, format("%shas nothing to forward: set request_source and target%s; on " ..
      "the command line: --source and --target", subject(ctx, loc), spec.by_name.forward and
        ", or add [[" .. spec.name .. ".forward]] tables" or ""))
  end
end

CHECKS.allow_list_present = function(ctx, _, t, loc)
  if ctx.role ~= SRV then return end
  local a = t.allowed_sources
  local function empty(l) return type(l) ~= "table" or next(l) == nil end
  if type(a) ~= "table" or (empty(a.tcp) and empty(a.udp)) then
    report(ctx, loc, format("%sallows no source at all, so every request would be denied: " ..
      "list networks in [%s.allowed_sources] tcp = [...] / udp = [...]; on the command line: " ..
      "--allowed-tcp / --allowed-udp", subject(ctx, loc), loc.path))
  end
end

CHECKS.vpn_network = function(ctx, out, _, loc)
  if ctx.role ~= VSRV then return end
  if not out.network and not out.network6 then
    report(ctx, loc, format("%sneeds an address pool: set network = \"10.0.0.0/24\" and/or " ..
      "network6 = \"fd00::/64\"", subject(ctx, loc)))
  end
end

-- The relay's pairs: a certificate needs its key (and the reverse); a burst needs a rate.
CHECKS.relay_pairs = function(ctx, out, t, loc)
  if (out.tls_cert == nil) ~= (out.tls_key == nil) then
    local k = out.tls_cert ~= nil and "tls_cert" or "tls_key"
    report(ctx, child(loc, t, k), format("'%s' needs '%s': give both to serve HTTPS, or " ..
      "neither; on the command line: --tls-cert and --tls-key", k,
      k == "tls_cert" and "tls_key" or "tls_cert"))
  end
  if out.burst ~= nil and out.rate == nil then
    report(ctx, child(loc, t, "burst"), "'burst' only applies with 'rate': set rate (bytes " ..
      "per second) too, or remove burst; on the command line: --rate")
  end
end

CHECKS.relay_only = function(ctx, out, _, loc)
  if out.relay_only and #(out.relay_urls or {}) == 0 then
    report(ctx, loc, "'relay_only' is set but 'relay_urls' is empty: add a relay URL; on the " ..
      "command line: --relay-url")
  end
end

local function check_complete(ctx, spec, out, t, loc)
  for _, f in ipairs(spec.fields) do
    if f.required_for and out[f.name] == nil and not written(spec, t, f.name) then
      for _, r in ipairs(f.required_for) do
        if r == ctx.role then
          report(ctx, loc, format("%sneeds '%s' (%s)%s", subject(ctx, loc), f.name, f.doc,
            flag_hint(f)))
        end
      end
    end
  end
  for _, rule in ipairs(spec.one_of or {}) do
    local applies = false
    for _, r in ipairs(rule.roles) do if r == ctx.role then applies = true end end
    if applies then
      local set = false
      for i = 1, 2 do
        local v = out[rule[i]]
        if (v ~= nil and not (type(v) == "table" and #v == 0)) or
          (v == nil and written(spec, t, rule[i])) then
          set = true
        end
      end
      if not set then
        local fa, fb = spec.by_name[rule[1]], spec.by_name[rule[2]]
        report(ctx, loc, format("%sneeds '%s' or '%s': %s%s", subject(ctx, loc), rule[1],
          rule[2], rule.why, (fa.flag and fb.flag) and
            format("; on the command line: %s / %s", fa.flag, fb.flag) or ""))
      end
    end
  end
  for _, name in ipairs(spec.complete_checks or {}) do CHECKS[name](ctx, out, t, loc, spec) end
end

---------------------------------------------------------------------------------------------------
-- Top level

local OPTS = { role = true, mode = true, home = true, base_dir = true, complete = true }

local function check_opts(fname, opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(fname .. ": opts must be a table", 3) end
  for k in pairs(opts) do
    if not OPTS[k] or (fname == "config.load" and k == "base_dir") then
      error(format("%s: unknown option '%s'", fname, tostring(k)), 3)
    end
  end
  local function one_of(k, list)
    local v = opts[k]
    if v == nil then return end
    for _, x in ipairs(list) do if x == v then return end end
    error(format("%s: opts.%s must be one of %s, got %s", fname, k, concat(list, ", "),
      tostring(v)), 3)
  end
  one_of("role", M.ROLES)
  one_of("mode", M.MODES)
  return opts
end

local function format_errors(ctx)
  local errs = ctx.errs
  if ctx.file then
    sort(errs, function(a, b)
      if a.line ~= b.line then return a.line < b.line end
      if a.col ~= b.col then return a.col < b.col end
      return a.n < b.n
    end)
  end
  local lines = {}
  for i, e in ipairs(errs) do
    local where
    if ctx.file then
      where = e.line > 0 and format("%s:%d:%d", ctx.file, e.line, e.col) or ctx.file
    else
      where = e.path
    end
    lines[i] = where and where .. ": " .. e.msg or e.msg
  end
  return concat(lines, "\n")
end

local function validate_root(ctx, root, opts)
  local rloc = { t = root, path = "", name = "", depth = 0 }
  local out = {}
  if not is_record(root) then
    report(ctx, nil, "the configuration must be a table, got " .. describe(root))
    return nil
  end
  local fields = M.schema.by_name
  -- role: from the file, else from the command
  local role
  if root.role ~= nil then
    role = check_value(ctx, fields.role, root.role, child(rloc, root, "role"))
    if role and opts.role and role ~= opts.role then
      report(ctx, child(rloc, root, "role"), format("role '%s' does not match the command, " ..
        "which runs a %s; use a %s configuration or the %s command", role, opts.role, opts.role,
        role))
    end
  elseif opts.role then
    role = opts.role
  else
    report(ctx, nil, "missing 'role': add role = \"server\" (or \"client\", \"vpnserver\", " ..
      "\"vpnclient\", \"relay\") at the top")
  end
  ctx.role = role or opts.role
  out.role = role
  -- mode: from the file, else from the command, else iroh; the relay has none
  local mode
  if ctx.role == RLY then
    if root.mode ~= nil then
      report(ctx, child(rloc, root, "mode"), "'mode' does not apply to role 'relay' (a relay " ..
        "serves iroh mode and has no other); remove it")
    end
  elseif root.mode ~= nil then
    local mloc = child(rloc, root, "mode")
    mode = check_value(ctx, fields.mode, root.mode, mloc)
    if mode and opts.mode and mode ~= opts.mode then
      report(ctx, mloc, format("mode '%s' does not match the command's mode '%s'; change the " ..
        "mode here or on the command line", mode, opts.mode))
    end
    if mode and mode ~= "iroh" and (role == VSRV or role == VCLI) then
      report(ctx, mloc, format("role '%s' runs in iroh mode only, got mode '%s'", role, mode))
    end
  else
    mode = opts.mode or "iroh"
  end
  ctx.mode = mode
  out.mode = mode
  -- unknown top-level keys
  local keys = {}
  for k in pairs(root) do keys[#keys + 1] = k end
  sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    if type(k) ~= "string" then
      report(ctx, nil, format("unexpected list item [%s] at the top level", tostring(k)))
    elseif not fields[k] then
      unknown_key(ctx, M.schema, root, k, rloc)
    end
  end
  -- sections
  local active = active_section(ctx.role, mode)
  for _, name in ipairs(SECTION_NAMES) do
    local spec, v = SECTIONS[name], root[name]
    local sloc = child(rloc, root, name)
    if v ~= nil then
      if not is_record(v) then
        report_value(ctx, sloc, expect("a table ([" .. name .. "])", v))
      elseif role and not spec.role_set[role] then
        local why = (role == VSRV or role == VCLI) and name ~= "relay" and
          " (VPN roles run in iroh mode only)" or role == RLY and
          " (tunnel relay reads only [relay])" or name == "relay" and
          " ([relay] configures tunnel relay, in a file of role 'relay')" or ""
        report(ctx, sloc, format("[%s] is not used by role '%s'%s; remove this section", name,
          role, why))
      else
        out[name] = check_table(ctx, spec, v, sloc)
      end
    elseif name == active and (not role or spec.role_set[role]) then
      out[name] = check_table(ctx, spec, {}, sloc)
    end
  end
  if opts.complete and role and out[active] then
    check_complete(ctx, SECTIONS[active], out[active], root[active] or {},
      child(rloc, root, active))
  end
  return out
end

local function run(root, opts, file, pos, base_dir)
  local ctx = { errs = {}, file = file, pos = pos, home = opts.home,
    base_dir = base_dir or opts.base_dir, complete = opts.complete }
  local out = validate_root(ctx, root, opts)
  if #ctx.errs > 0 then
    return nil, format_errors(ctx), ctx.errs
  end
  return out
end

--- Validate a configuration table built in Lua; errors cite key paths ("iroh.target").
-- opts: role, mode (what the command runs), complete (also require what a run needs),
-- home (for "~"), base_dir (resolve relative paths against it).
-- Returns the normalised table, or nil, "one error per line", {error records}.
function M.validate(tbl, opts)
  opts = check_opts("config.validate", opts)
  return run(tbl, opts, nil, nil, nil)
end

--- Read, decode and validate a TOML config file; errors cite file:line:col.
-- opts: role, mode, complete, home as for validate. Relative paths in the file are resolved
-- against the file's directory. Returns the normalised table, or nil, err[, {error records}].
function M.load(path, opts)
  if type(path) ~= "string" then error("config.load: path must be a string", 2) end
  opts = check_opts("config.load", opts)
  local full, perr = M.expand_path(path, opts.home)
  if not full then return nil, perr end
  local f, err = io.open(full, "rb")
  if not f then
    return nil, format("%s: cannot read the config file (%s)", path,
      (tostring(err):gsub("^[^:]*: ", "")))
  end
  local text, rerr = f:read("*a")
  f:close()
  if not text then
    return nil, format("%s: cannot read the config file (%s)", path, tostring(rerr))
  end
  local tbl, pos = toml.decode(text, { source = path, positions = true })
  if not tbl then return nil, pos end
  return run(tbl, opts, path, pos, dirname(full))
end

---------------------------------------------------------------------------------------------------
-- Merging

local function is_set(v)
  if v == nil then return false end
  if type(v) == "table" and next(v) == nil then return false end
  return true
end

local function merge_into(dst, src, spec)
  local set = {}
  for k, v in pairs(src) do
    if is_set(v) then
      local f = spec and spec.by_name and spec.by_name[k]
      if f and f.alias_of then k, f = f.alias_of, f.target end
      set[k] = { v = v, f = f }
    end
  end
  for k, s in pairs(set) do
    local v, f = s.v, s.f
    if is_record(v) and is_record(dst[k]) then
      merge_into(dst[k], v, f)
    else
      dst[k] = deep_copy(v)
      if f then
        for _, a in ipairs(f.alias_names or {}) do dst[a] = nil end
        for _, c in ipairs(f.clears or {}) do
          if not set[c] then dst[c] = nil end
        end
      end
    end
  end
end

--- Command line over file: every value in `cli_values` that is set (not nil, not an empty list)
-- replaces the file's value; tables merge key by key. Setting one of a pair of alternatives
-- (secret / secret_file, ...) drops the file's other one; a forward given on the command line
-- (request_source / target) drops the file's [[forward]] list. Returns a new table; validate it
-- again (with complete = true) before use.
function M.merge(file_cfg, cli_values)
  if type(file_cfg) ~= "table" then error("config.merge: argument 1 must be a table", 2) end
  if cli_values ~= nil and type(cli_values) ~= "table" then
    error("config.merge: argument 2 must be a table or nil", 2)
  end
  local out = deep_copy(file_cfg)
  if cli_values then merge_into(out, cli_values, M.schema) end
  return out
end

---------------------------------------------------------------------------------------------------
-- Accessors

--- The forwards of a client section (or of a whole validated config, using its mode):
-- a list of {source = "tcp://h:p", target = "h:p", proto = "tcp"|"udp"}, single keys first.
function M.forwards(cfg)
  if type(cfg) ~= "table" then error("config.forwards: expected a config or section table", 2) end
  local sec = cfg
  if cfg.mode and type(cfg[cfg.mode]) == "table" then sec = cfg[cfg.mode] end
  local list = {}
  local function add(src, tgt)
    local s, err = addr.parse_source(src)
    if not s then error("config.forwards: " .. err, 3) end
    list[#list + 1] = { source = s.text, target = (tgt:gsub("^%a+://", "")), proto = s.proto }
  end
  if sec.request_source and sec.target then add(sec.request_source, sec.target) end
  for _, e in ipairs(sec.forward or {}) do add(e.source, e.target) end
  return list
end

return M
