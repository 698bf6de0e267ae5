--- `tunnel relay`: run a relay for iroh mode (WebSocket relay, /ping, /metrics, the pkarr
-- discovery store and optionally a STUN responder). Settings come from the options and/or a
-- config file of role "relay" (docs/config.md, [relay]). Behaviour: docs/relay.md.
local addr = require "tunnel.addr"
local bit = require "bit"
local common = require "tunnel.cmd.common"
local keys = require "tunnel.keys"
local log = require("tunnel.log").group("relay")
local relay = require "tunnel.core.relay"
local uv = require "luv"

local M = {}

local fail = common.fail

M.DEFAULT_STUN_PORT = 3478
M.DEFAULT_PKARR_SLOTS = 4096

local function whole(min, max, what)
  return function(s)
    local n = tonumber(s)
    if not n or n ~= math.floor(n) or n < min or n > max then
      return nil, string.format("%s must be a whole number from %d to %d", what, min, max)
    end
    return n
  end
end

--- argparse setup (called by tunnel.cli).
function M.configure(c)
  common.config_options(c, "relay")
  c:option("--listen", "TCP address for HTTP(S) and the WebSocket relay, e.g. 0.0.0.0:3340 " ..
    "(here or as listen in the config file).")
    :argname("<addr:port>")
  c:option("--tls-cert", "PEM certificate chain: serve HTTPS (needs --tls-key).")
    :argname("<file>")
  c:option("--tls-key", "PEM private key of --tls-cert.")
    :argname("<file>")
  c:option("--stun-listen", "Also answer STUN Binding requests on this UDP address " ..
    "(default port " .. M.DEFAULT_STUN_PORT .. ").")
    :argname("<addr:port>")
  c:option("--allow-key", "Only this EndpointId may connect (repeatable; default: anyone).")
    :argname("<id>"):count("*"):target("allow_key")
  c:option("--token", "Require one of these access tokens (repeatable; 1-255 bytes).")
    :argname("<token>"):count("*"):target("token")
  c:option("--tokens-file", "Require one of the access tokens in this file (one per line).")
    :argname("<file>")
  c:option("--rate", "Per-client limit on relayed bytes per second (default: unlimited).")
    :argname("<bytes/s>"):convert(whole(1, 4294967295, "--rate"))
  c:option("--burst", "Per-client burst in bytes for --rate (default: max(rate, 65535)).")
    :argname("<bytes>"):convert(whole(1, 4294967295, "--burst"))
  c:option("--pkarr-slots", "Discovery records kept (0 disables /pkarr; default " ..
    M.DEFAULT_PKARR_SLOTS .. ").")
    :argname("<n>"):convert(whole(0, 16777216, "--pkarr-slots"))
end

local function numeric(opt, s, default_port)
  local hp, err = addr.parse_hostport(s, { default_port = default_port, allow_zero = true })
  if not hp then
    return nil, string.format("%s %s: %s", opt, s, err)
  end
  if not hp.family then
    return nil, string.format("%s %s: give a numeric IP address (0.0.0.0 or [::] for all)", opt,
      s)
  end
  return hp.text
end

-- Options checked one by one, so that a mistake names the option; the config file's values
-- are checked by tunnel.config, and pairs (--tls-cert/--tls-key, --burst/--rate) once merged.
local function check_options(args)
  local _, err
  if args.listen then
    _, err = numeric("--listen", args.listen)
    if err then
      return nil, err
    end
  end
  if args.stun_listen then
    _, err = numeric("--stun-listen", args.stun_listen, M.DEFAULT_STUN_PORT)
    if err then
      return nil, err
    end
  end
  for _, id in ipairs(args.allow_key) do
    local pub, perr = keys.parse_endpoint_id(id)
    if not pub then
      return nil, string.format("--allow-key %s: %s", id, tostring(perr))
    end
  end
  for _, t in ipairs(args.token) do
    if #t < 1 or #t > 255 then
      return nil, "--token: a token must be 1 to 255 bytes long" -- never echo a token
    end
  end
  return true
end

local function nonempty(list)
  return list and #list > 0 and list or nil
end

--- The validated [relay] section: the config file (-c / --default-config) if any, overridden by
-- the options given. Returns the section, or nil and an error message.
function M.settings(args)
  local ok, err = check_options(args)
  if not ok then
    return nil, err
  end
  return common.settings(args, "relay", nil, {
    listen = args.listen,
    tls_cert = args.tls_cert,
    tls_key = args.tls_key,
    stun_listen = args.stun_listen,
    allow_keys = nonempty(args.allow_key),
    tokens = nonempty(args.token),
    tokens_file = args.tokens_file,
    rate = args.rate,
    burst = args.burst,
    pkarr_slots = args.pkarr_slots,
  })
end

--- The access tokens in `path`: one per line, spaces around it trimmed; blank lines and '#'
-- comments skipped; duplicates dropped. A file without any token is an error: whoever names
-- one wants the relay closed to clients without a token. Messages never include a token.
function M.read_tokens_file(path)
  local f, oerr = io.open(path, "rb")
  if not f then
    return nil, string.format("cannot read the tokens file %s: %s", path,
      (tostring(oerr):gsub("^[^:]*: ", "")))
  end
  local text, rerr = f:read("*a")
  f:close()
  if not text then
    return nil, string.format("cannot read the tokens file %s: %s", path, tostring(rerr))
  end
  local st = uv.fs_stat(path)
  if st and st.type == "file" and bit.band(st.mode, 63) ~= 0 then
    log.warn("tokens file %s can be read by other users (mode %04o); restrict it: chmod 600 %s",
      path, bit.band(st.mode, 511), path)
  end
  local list, seen, n = {}, {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local t = line:gsub("#.*$", ""):match("^%s*(.-)%s*$")
    if #t > 255 then
      return nil, string.format("%s:%d: a token must be 1 to 255 bytes long, this one has %d",
        path, n, #t)
    end
    if t ~= "" and not seen[t] then
      seen[t] = true
      list[#list + 1] = t
    end
  end
  if #list == 0 then
    return nil, string.format("the tokens file %s has no token: write one access token per " ..
      "line (tunnel generate-token makes one), or drop tokens_file to let anyone in", path)
  end
  return list
end

function M.run(args)
  local s, err = M.settings(args)
  if not s then
    return fail(err)
  end
  local allow = {}
  for _, id in ipairs(s.allow_keys or {}) do
    allow[#allow + 1] = assert(keys.parse_endpoint_id(id)) -- validated above
  end
  local tokens = s.tokens
  if s.tokens_file then
    tokens, err = M.read_tokens_file(s.tokens_file)
    if not tokens then
      return fail(err)
    end
  end
  tokens = nonempty(tokens)
  local stun = s.stun_listen
  local srv, serr = relay.server({
    listen = s.listen,
    tls_cert = s.tls_cert,
    tls_key = s.tls_key,
    stun_listen = stun,
    allow = nonempty(allow),
    tokens = tokens,
    rate = s.rate,
    burst = s.burst,
    pkarr_capacity = s.pkarr_slots or M.DEFAULT_PKARR_SLOTS,
  })
  if not srv then
    return fail(serr .. " (is another process using that port?)")
  end
  -- Counts only: the tokens themselves are never logged.
  log.info("access: %s%s; rate %s; discovery store %s", #allow > 0 and
    string.format("%d allowed key(s)", #allow) or "any key", tokens and
    string.format(", one of %d token(s) required", #tokens) or ", no token required",
    s.rate and string.format("%d bytes/s per client", s.rate) or "unlimited",
    s.pkarr_slots == 0 and "off" or string.format("%d slots", s.pkarr_slots))
  local out = { string.format("relay listening on %s://%s", s.tls_cert and "https" or "http",
    srv:local_addr()) }
  if stun then
    out[#out + 1] = "STUN responder on " .. srv:stun_addr()
  end
  io.stdout:write(table.concat(out, "\n"), "\n")
  io.stdout:flush()
  return nil -- runs until SIGINT/SIGTERM; the host's closer closes the server
end

return M
