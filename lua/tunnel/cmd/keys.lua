--- The key and token commands of the command line (generate-server-key, show-server-id,
-- generate-token, generate-nostr-key, show-npub). Each takes argparse's result table and
-- returns the exit code: 0, or 1 after printing "tunnel: <message>" on stderr.
local keys = require "tunnel.keys"

local M = {}

local function fail(msg)
  io.stderr:write("tunnel: ", msg, "\n")
  return 1
end

-- argparse gives a string, or a one-element list for options declared with args(1).
local function single(v)
  if type(v) == "table" then
    return v[1]
  end
  return v
end

local function required(args, field, flag)
  local v = single(args[field])
  if type(v) ~= "string" or v == "" then
    return nil, string.format("%s is required", flag)
  end
  return v
end

-- Write a new secret with `write` (a tunnel.keys writer) or to stdout for "-". `stdout_text`
-- is what "-" prints; `info` is the line for the user, which goes to stderr in that case so
-- that stdout carries the secret alone.
local function write_key(args, write, secret, stdout_text, info)
  local output, err = required(args, "output", "--output")
  if not output then
    return fail(err)
  end
  if output == "-" then
    io.stdout:write(stdout_text, "\n")
    io.stderr:write(info, "\n")
    return 0
  end
  local ok, werr = write(output, secret, { force = args.force == true })
  if not ok then
    return fail(werr)
  end
  io.stdout:write(info, "\n")
  return 0
end

--- generate-server-key --output FILE|- [--force]
function M.generate_server_key(args)
  local secret = keys.generate_secret()
  return write_key(args, keys.write_secret_file, secret, keys.encode_secret(secret),
    "EndpointId: " .. keys.endpoint_id(secret))
end

--- show-server-id --secret-file FILE
function M.show_server_id(args)
  local path, err = required(args, "secret_file", "--secret-file")
  if not path then
    return fail(err)
  end
  local secret, lerr = keys.load_secret_file(path)
  if not secret then
    return fail(lerr)
  end
  io.stdout:write(keys.endpoint_id(secret), "\n")
  return 0
end

--- generate-token [--count N]
function M.generate_token(args)
  local count = args.count
  if count == nil then
    count = 1
  end
  count = tonumber(count)
  if not count or count < 1 or count ~= math.floor(count) then
    return fail("--count must be a whole number, 1 or more")
  end
  local out = {}
  for i = 1, count do
    out[i] = keys.generate_token()
  end
  out[#out + 1] = ""
  io.stdout:write(table.concat(out, "\n"))
  return 0
end

--- generate-nostr-key --output FILE|- [--force]
function M.generate_nostr_key(args)
  local secret = keys.generate_nostr_secret()
  local pub = assert(keys.nostr_public(secret))
  local nsec = keys.nsec(secret)
  return write_key(args, keys.write_nsec_file, secret, nsec, "npub: " .. keys.npub(pub))
end

--- show-npub --nsec-file FILE
function M.show_npub(args)
  local path, err = required(args, "nsec_file", "--nsec-file")
  if not path then
    return fail(err)
  end
  local secret, lerr = keys.load_nsec_file(path)
  if not secret then
    return fail(lerr)
  end
  io.stdout:write(keys.npub(assert(keys.nostr_public(secret))), "\n")
  return 0
end

return M
