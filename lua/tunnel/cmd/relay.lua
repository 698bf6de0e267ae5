--- `tunnel relay`: run a relay for iroh mode (WebSocket relay, /ping, /metrics, the pkarr
-- discovery store and optionally a STUN responder). Behaviour: docs/relay.md.
local addr = require "tunnel.addr"
local common = require "tunnel.cmd.common"
local keys = require "tunnel.keys"
local relay = require "tunnel.core.relay"

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
  c:option("--listen", "TCP address for HTTP(S) and the WebSocket relay, e.g. 0.0.0.0:3340.")
    :argname("<addr:port>"):count(1)
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

function M.run(args)
  local listen, err = numeric("--listen", args.listen)
  if not listen then
    return fail(err)
  end
  local stun
  if args.stun_listen then
    stun, err = numeric("--stun-listen", args.stun_listen, M.DEFAULT_STUN_PORT)
    if not stun then
      return fail(err)
    end
  end
  if (args.tls_cert == nil) ~= (args.tls_key == nil) then
    return fail("--tls-cert and --tls-key go together: give both to serve HTTPS, or neither")
  end
  if args.burst and not args.rate then
    return fail("--burst only applies with --rate")
  end
  local allow = {}
  for _, id in ipairs(args.allow_key) do
    local pub, perr = keys.parse_endpoint_id(id)
    if not pub then
      return fail(string.format("--allow-key %s: %s", id, tostring(perr)))
    end
    allow[#allow + 1] = pub
  end
  for _, t in ipairs(args.token) do
    if #t < 1 or #t > 255 then
      return fail("--token: a token must be 1 to 255 bytes long")
    end
  end
  local srv, serr = relay.server({
    listen = listen,
    tls_cert = args.tls_cert,
    tls_key = args.tls_key,
    stun_listen = stun,
    allow = #allow > 0 and allow or nil,
    tokens = #args.token > 0 and args.token or nil,
    rate = args.rate,
    burst = args.burst,
    pkarr_capacity = args.pkarr_slots or M.DEFAULT_PKARR_SLOTS,
  })
  if not srv then
    return fail(serr .. " (is another process using that port?)")
  end
  local out = { string.format("relay listening on %s://%s", args.tls_cert and "https" or "http",
    srv:local_addr()) }
  if stun then
    out[#out + 1] = "STUN responder on " .. srv:stun_addr()
  end
  io.stdout:write(table.concat(out, "\n"), "\n")
  io.stdout:flush()
  return nil -- runs until SIGINT/SIGTERM; the host's closer closes the server
end

return M
