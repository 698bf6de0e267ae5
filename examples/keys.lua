-- keys.lua: identities and auth tokens with tunnel.keys, all in memory. It mints (or loads) a
-- server identity and prints its EndpointId, the name clients use to reach the server; then
-- it mints auth tokens, checks each one, and shows how a mistyped token is caught.
-- The secret key itself is never printed.
--
-- Run it:
--   tunnel examples/keys.lua                  new identity, 3 tokens
--   tunnel examples/keys.lua 5                new identity, 5 tokens
--   tunnel examples/keys.lua 1 server.key     the identity stored in server.key, 1 token
--     (create such a file with: tunnel generate-server-key --output server.key)
local tunnel = require "tunnel"
local keys = require "tunnel.keys"

local count = tonumber(arg[1] or "3")
if not count or count ~= math.floor(count) or count < 1 or count > 1000 then
  io.stderr:write("usage: tunnel examples/keys.lua [TOKEN_COUNT 1-1000] [SECRET_FILE]\n")
  tunnel.exit(2)
end

-- An identity is a 32-byte Ed25519 secret; its public key, in base32, is the EndpointId.
local secret, err
if arg[2] then
  secret, err = keys.load_secret_file(arg[2])
  if not secret then
    io.stderr:write("keys.lua: ", err, "\n")
    tunnel.exit(1)
  end
else
  secret = keys.generate_secret()
end
local id = keys.endpoint_id(secret)
print(("EndpointId: %s (%s identity)"):format(id, arg[2] and "loaded" or "new"))

-- The EndpointId is all a client needs: it parses back to the server's public key.
assert(keys.parse_endpoint_id(id) == keys.public_key(secret))

-- Tokens: 18 characters, "i" + 16 random + a check character that catches typos.
for i = 1, count do
  local token = keys.generate_token()
  assert(keys.validate_token(token))
  print(("token %d: %s"):format(i, token))
end

-- Change one character of a fresh token and see the check fail.
local token = keys.generate_token()
local pos = 10
local c = token:sub(pos, pos)
local typo = token:sub(1, pos - 1) .. (c == "A" and "B" or "A") .. token:sub(pos + 1)
local valid, why = keys.validate_token(typo)
print(("mistyped token rejected: %s"):format(valid and "no!" or why))
