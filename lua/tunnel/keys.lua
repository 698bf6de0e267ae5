--- Identities, auth tokens and Nostr keys, in memory and in files (see docs/api/tunnel.keys.md).
--
--   local keys = require "tunnel.keys"
--   local secret = keys.generate_secret()
--   assert(keys.write_secret_file("server.key", secret))       -- base64, mode 0600
--   print(keys.endpoint_id(secret))                            -- 52 base32 characters
--   local tokens = assert(keys.load_tokens_file("tokens.txt"))
--
-- Keys are binary strings of 32 bytes. Misuse raises; bad input or a failed file operation
-- returns nil and a message (plus a code such as "ECHECKSUM" when the codec gave one).
-- Messages never contain secret material.
local core = require "tunnel.core.keys"
local uv = require "luv"
local bit = require "bit"

local M = {}

local KEY_LEN = 32
local MAX_FILE = 65536 -- key and token files are tiny; refuse to slurp anything big
local MODE_PRIVATE = 384 -- 0600
local MODE_DIR = 448 -- 0700 for directories we create to hold keys

local config_log -- created on first warning, so requiring this module logs nothing

local function warn(msg)
  if not config_log then
    local ok, log = pcall(require, "tunnel.log")
    if ok then
      config_log = log.group("config")
    else
      local clog = require "tunnel.core.log"
      config_log = { warn = function(m) clog.write("config", "warn", m) end }
    end
  end
  config_log.warn(msg)
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function check_string(v, n, what, level)
  if type(v) ~= "string" then
    error(string.format("%s must be a string, got %s", what, type(v)), level + 1)
  end
  if n and #v ~= n then
    error(string.format("%s must be %d bytes, got %d", what, n, #v), level + 1)
  end
end

local function check_path(path, level)
  if type(path) ~= "string" or path == "" then
    error("path must be a non-empty string", level + 1)
  end
end

local function check_opts(opts, level)
  if opts == nil then
    return false
  end
  if type(opts) ~= "table" then
    error("options must be a table, got " .. type(opts), level + 1)
  end
  for k in pairs(opts) do
    if k ~= "force" then
      error(string.format("unknown option '%s' (known: force)", tostring(k)), level + 1)
    end
  end
  if opts.force ~= nil and type(opts.force) ~= "boolean" then
    error("option 'force' must be a boolean", level + 1)
  end
  return opts.force == true
end

-- "~" and "~/x" mean the home directory, as in a shell; config files rely on it.
local function expand(path)
  if path == "~" or path:sub(1, 2) == "~/" then
    local home = os.getenv("HOME")
    if home and home ~= "" then
      return home .. path:sub(2)
    end
  end
  return path
end

-- luv's "ENOENT: no such file or directory: /x" -> "no such file or directory".
local function reason(err, name, path)
  local r = tostring(err)
  if name then
    r = r:gsub("^" .. name .. ": ", "")
  end
  if path and r:sub(-#path - 2) == ": " .. path then
    r = r:sub(1, -#path - 3)
  end
  return r
end

local function dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  if d == nil then
    return "."
  end
  return d == "" and "/" or d
end

-- mkdir -p, creating missing directories owner-only.
local function mkdir_p(dir)
  if dir == "." or dir == "/" then
    return true
  end
  local st = uv.fs_stat(dir)
  if st then
    if st.type ~= "directory" then
      return nil, string.format("cannot create directory %s: a file of that name exists", dir)
    end
    return true
  end
  local ok, err = mkdir_p(dirname(dir))
  if not ok then
    return nil, err
  end
  local _, merr, mname = uv.fs_mkdir(dir, MODE_DIR)
  if merr and mname ~= "EEXIST" then
    return nil, string.format("cannot create directory %s: %s", dir, reason(merr, mname, dir))
  end
  return true
end

local function write_all(fd, data)
  local off = 0
  while off < #data do
    local n, err, name = uv.fs_write(fd, data:sub(off + 1), off)
    if not n then
      return nil, reason(err, name)
    end
    off = off + n
  end
  local ok, err, name = uv.fs_fsync(fd)
  if not ok then
    return nil, reason(err, name)
  end
  return true
end

-- Create `path` (mode 0600) holding `content`. Without force the file must not exist (O_EXCL,
-- so nothing is ever overwritten by accident, even in a race); with force the content goes to
-- a temporary file in the same directory that is renamed over `path`, so readers see the old
-- file or the new one, never a half-written one.
local function write_private(path, content, force)
  local real = expand(path)
  local ok, err = mkdir_p(dirname(real))
  if not ok then
    return nil, err
  end
  local target = real
  if force then
    local st = uv.fs_stat(real)
    if st and st.type == "directory" then
      return nil, string.format("cannot write %s: it is a directory", path)
    end
    target = string.format("%s/.%s.tmp-%s", dirname(real), real:match("[^/]*$"),
      core.hex_encode(core.ed25519_secret():sub(1, 6)))
  end
  local fd, oerr, oname = uv.fs_open(target, "wx", MODE_PRIVATE)
  if not fd then
    if oname == "EEXIST" and not force then
      return nil, string.format("%s already exists; use --force to overwrite", path)
    end
    return nil, string.format("cannot create %s: %s", path, reason(oerr, oname, target))
  end
  -- The umask can only take bits away from 0600; this makes the mode exact.
  uv.fs_fchmod(fd, MODE_PRIVATE)
  local wok, werr = write_all(fd, content)
  uv.fs_close(fd)
  if wok and force then
    local rok, rerr, rname = uv.fs_rename(target, real)
    if not rok then
      wok, werr = nil, reason(rerr, rname)
    end
  end
  if not wok then
    uv.fs_unlink(target)
    return nil, string.format("cannot write %s: %s", path, werr)
  end
  return true
end

-- Read a small private file; warn when other users can get at it.
local function read_private(path, what)
  local real = expand(path)
  local fd, err, name = uv.fs_open(real, "r", 0)
  if not fd then
    return nil, string.format("cannot read %s %s: %s", what, path, reason(err, name, real))
  end
  local st = uv.fs_fstat(fd)
  if st and st.type == "directory" then
    uv.fs_close(fd)
    return nil, string.format("cannot read %s %s: it is a directory", what, path)
  end
  if st and st.type == "file" then
    if st.size > MAX_FILE then
      uv.fs_close(fd)
      return nil, string.format("%s %s is too large (%d bytes) to be a %s", what, path, st.size,
        what)
    end
    local perm = bit.band(st.mode, 511)
    if bit.band(perm, 63) ~= 0 then
      warn(string.format("%s %s can be accessed by other users (mode %04o); restrict it: "
        .. "chmod 600 %s", what, path, perm, path))
    end
  end
  local parts, total = {}, 0
  while true do
    local chunk, rerr, rname = uv.fs_read(fd, 4096, total)
    if not chunk then
      uv.fs_close(fd)
      return nil, string.format("cannot read %s %s: %s", what, path, reason(rerr, rname))
    end
    if chunk == "" then
      break
    end
    parts[#parts + 1] = chunk
    total = total + #chunk
    if total > MAX_FILE then
      uv.fs_close(fd)
      return nil, string.format("%s %s is too large to be a %s", what, path, what)
    end
  end
  uv.fs_close(fd)
  return table.concat(parts)
end

---------------------------------------------------------------------------------------------------
-- Ed25519 identities

--- A fresh 32-byte secret (Ed25519 seed).
function M.generate_secret()
  return core.ed25519_secret()
end

--- The 32-byte Ed25519 public key of `secret`.
function M.public_key(secret)
  check_string(secret, KEY_LEN, "secret", 2)
  return assert(core.ed25519_public(secret))
end

--- EndpointId text (52 lowercase base32 characters) of a 32-byte public key.
function M.format_endpoint_id(pub)
  check_string(pub, KEY_LEN, "public key", 2)
  return core.endpoint_id(pub)
end

--- EndpointId text of the identity `secret`.
function M.endpoint_id(secret)
  check_string(secret, KEY_LEN, "secret", 2)
  return core.endpoint_id(assert(core.ed25519_public(secret)))
end

--- Public key from EndpointId text (52 base32 or 64 hex characters, surrounding space ignored).
-- Returns the 32-byte key, or nil, message, code.
function M.parse_endpoint_id(text)
  check_string(text, nil, "EndpointId", 2)
  return core.parse_endpoint_id(trim(text))
end

--- The text stored in a secret file: standard base64 with padding (44 characters).
function M.encode_secret(secret)
  check_string(secret, KEY_LEN, "secret", 2)
  return core.base64_encode(secret)
end

local function decode_secret(text, label)
  local t = trim(text)
  if t == "" then
    return nil, label .. " is empty"
  end
  local bytes
  if #t == 52 and t:match("^[a-z2-7]+$") then
    return nil, label .. " holds an EndpointId (a public id), not a secret key: give the file " ..
      "written by `tunnel generate-server-key --output FILE`"
  end
  if #t == 64 and t:match("^%x+$") then
    bytes = core.hex_decode(t)
  else
    bytes = core.base64_decode(t)
  end
  if not bytes then
    return nil, label .. " is not valid base64 or hex"
  end
  if #bytes ~= KEY_LEN then
    return nil, string.format("%s holds %d bytes, expected %d", label, #bytes, KEY_LEN)
  end
  return bytes
end

--- Secret from text: base64 (standard, padded) or 64 hex characters, surrounding space ignored.
function M.load_secret(text)
  check_string(text, nil, "secret text", 2)
  return decode_secret(text, "secret")
end

--- Read a secret file (as written by write_secret_file, or 64 hex). Warns when other users can
-- read it. Returns the 32-byte secret, or nil and a message naming the file.
function M.load_secret_file(path)
  check_path(path, 2)
  local text, err = read_private(path, "secret file")
  if not text then
    return nil, err
  end
  return decode_secret(text, "secret file " .. path)
end

--- Write `secret` to `path` as base64 (no newline), mode 0600, creating parent directories.
-- opts.force replaces an existing file (atomically); otherwise an existing file is an error.
function M.write_secret_file(path, secret, opts)
  check_path(path, 2)
  check_string(secret, KEY_LEN, "secret", 2)
  local force = check_opts(opts, 2)
  return write_private(path, core.base64_encode(secret), force)
end

---------------------------------------------------------------------------------------------------
-- Tokens

--- A fresh random token (18 characters, "i" + 16 + Luhn mod 65 check character).
function M.generate_token()
  return core.token_generate()
end

--- true, or nil, message, code saying what is wrong with `s`.
function M.validate_token(s)
  check_string(s, nil, "token", 2)
  return core.token_validate(s)
end

-- Iterate over the entries of a token file: line number and the entry without comments.
local function entries(text)
  local lines = {}
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local hash = line:find("#", 1, true)
    if hash then
      line = line:sub(1, hash - 1)
    end
    line = trim(line)
    if line ~= "" then
      lines[#lines + 1] = { n, line }
    end
  end
  return lines
end

--- Every token in a server's tokens file: one per line, '#' comments (whole-line or after a
-- token) and blank lines ignored, duplicates dropped. Any invalid entry fails the whole file
-- with "path:line: message". An empty list is returned for a file without entries.
function M.load_tokens_file(path)
  check_path(path, 2)
  local text, err = read_private(path, "tokens file")
  if not text then
    return nil, err
  end
  local list, seen = {}, {}
  for _, e in ipairs(entries(text)) do
    local ok, verr = core.token_validate(e[2])
    if not ok then
      return nil, string.format("%s:%d: %s", path, e[1], verr)
    end
    if not seen[e[2]] then
      seen[e[2]] = true
      list[#list + 1] = e[2]
    end
  end
  return list
end

--- The token a client should use from `path`: the first valid entry. Invalid entries before it
-- are skipped with a warning; a file without a valid entry is an error.
function M.load_token_file(path)
  check_path(path, 2)
  local text, err = read_private(path, "token file")
  if not text then
    return nil, err
  end
  local first_err
  for _, e in ipairs(entries(text)) do
    local ok, verr = core.token_validate(e[2])
    if ok then
      return e[2]
    end
    local msg = string.format("%s:%d: %s", path, e[1], verr)
    warn("skipping invalid token: " .. msg)
    first_err = first_err or msg
  end
  if first_err then
    return nil, string.format("no valid token in %s (%s)", path, first_err)
  end
  return nil, string.format("no token in %s: expected a line like iAbCdEfGhIjKlMnOpQ "
    .. "(create one with: tunnel generate-token)", path)
end

---------------------------------------------------------------------------------------------------
-- Nostr keys

--- A fresh secp256k1 secret key (32 bytes).
function M.generate_nostr_secret()
  return core.nostr_secret()
end

--- The 32-byte x-only public key of a Nostr secret key.
function M.nostr_public(secret)
  check_string(secret, KEY_LEN, "secret", 2)
  return core.nostr_public(secret)
end

--- "nsec1..." text of a secret key.
function M.nsec(secret)
  check_string(secret, KEY_LEN, "secret", 2)
  return core.nsec_encode(secret)
end

--- "npub1..." text of a public key.
function M.npub(pub)
  check_string(pub, KEY_LEN, "public key", 2)
  return core.npub_encode(pub)
end

--- Secret key from "nsec1..." or 64 hex (surrounding space ignored); nil, message, code.
function M.parse_nsec(text)
  check_string(text, nil, "nsec", 2)
  return core.parse_nsec(trim(text))
end

--- Public key from "npub1..." or 64 hex (surrounding space ignored); nil, message, code.
function M.parse_npub(text)
  check_string(text, nil, "npub", 2)
  return core.parse_npub(trim(text))
end

--- Write `secret` to `path` as "nsec1..." (no newline), with write_secret_file's rules.
function M.write_nsec_file(path, secret, opts)
  check_path(path, 2)
  check_string(secret, KEY_LEN, "secret", 2)
  local force = check_opts(opts, 2)
  return write_private(path, core.nsec_encode(secret), force)
end

--- Read an nsec file ("nsec1..." or 64 hex). Returns the secret, or nil and a message.
function M.load_nsec_file(path)
  check_path(path, 2)
  local text, err = read_private(path, "nsec file")
  if not text then
    return nil, err
  end
  local sk, perr, code = core.parse_nsec(trim(text))
  if not sk then
    if trim(text) == "" then
      return nil, string.format("nsec file %s is empty", path)
    end
    return nil, string.format("nsec file %s: %s", path, perr), code
  end
  return sk
end

return M
