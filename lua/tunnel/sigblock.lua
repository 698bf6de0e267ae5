--- Manual-mode signalling blocks: the OFFER, ANSWER and REJECT texts the user copies between
-- client and server (see docs/api/tunnel.sigblock.md for the exact layout).
--
--   local sigblock = require "tunnel.sigblock"
--   io.write(sigblock.encode("offer", { ufrag = ..., pwd = ..., candidates = {...}, ... }))
--   local f, err = sigblock.decode(text, { "answer", "reject" })   --> f.kind == "answer"
--   local r = sigblock.reader({ "offer" }, on_block, { on_error = print_and_ask_again })
--   r:feed(chunk_from_stdin) ... r:finish()
--
-- A block is "-----BEGIN TUNNEL <KIND>-----", base64 wrapped at 76 columns, then
-- "-----END TUNNEL <KIND>-----". The base64 holds a version byte (1), a JSON payload with sorted
-- keys and a big-endian CRC-32 of both. Everything here is pure: no I/O, no logging.
local core = require "tunnel.core.keys"
local addr = require "tunnel.addr"
local cjson = require("cjson").new() -- a private instance: nobody else's settings change our bytes
local bit = require "bit"

local byte, char, sub, find, match, format, gsub, upper =
  string.byte, string.char, string.sub, string.find, string.match, string.format, string.gsub,
  string.upper
local concat, sort = table.concat, table.sort
local floor = math.floor
local band, bxor, rshift, bnot = bit.band, bit.bxor, bit.rshift, bit.bnot
local type, pairs, ipairs, tostring, pcall, error, setmetatable =
  type, pairs, ipairs, tostring, pcall, error, setmetatable

local M = {}

M.VERSION = 1 -- the format version byte this code writes and reads
M.WRAP = 76 -- base64 characters per body line
M.MAX_SIZE = 65536 -- bound on a block's base64 text and on one pending input line

local LABEL = { offer = "OFFER", answer = "ANSWER", reject = "REJECT" }
local KIND_OF = { OFFER = "offer", ANSWER = "answer", REJECT = "reject" }
local ORDER = { "offer", "answer", "reject" }
local ARTICLE = { offer = "an", answer = "an", reject = "a" }
local PRINTED_BY = { offer = "client", answer = "server", reject = "server" }
local READ_BY = { offer = "server", answer = "client", reject = "client" }

local function begin_line(kind)
  return "-----BEGIN TUNNEL " .. LABEL[kind] .. "-----"
end

local function end_line(kind)
  return "-----END TUNNEL " .. LABEL[kind] .. "-----"
end

-- User-supplied text inside a message: one line, printable, bounded.
local function shown(s)
  s = tostring(s)
  if #s > 60 then
    s = sub(s, 1, 57) .. "..."
  end
  return (gsub(s, "[^\32-\126]", "?"))
end

local function q(s)
  return "'" .. shown(s) .. "'"
end

local function describe_char(c)
  local b = byte(c)
  if b > 32 and b < 127 then
    return "'" .. c .. "'"
  end
  return format("byte 0x%02x", b)
end

---------------------------------------------------------------------------------------------------
-- CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), the one zlib and PNG use.

local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if band(c, 1) == 1 then
      c = bxor(rshift(c, 1), 0xEDB88320)
    else
      c = rshift(c, 1)
    end
  end
  CRC_TABLE[i] = c
end

local function crc32_bytes(s)
  local c = -1 -- 0xFFFFFFFF as a 32-bit bit-op value
  for i = 1, #s do
    c = bxor(CRC_TABLE[band(bxor(c, byte(s, i)), 0xFF)], rshift(c, 8))
  end
  c = bnot(c)
  return char(band(rshift(c, 24), 0xFF), band(rshift(c, 16), 0xFF), band(rshift(c, 8), 0xFF),
    band(c, 0xFF))
end

--- CRC-32 of a string as an unsigned number (exposed for tests and docs).
function M.crc32(s)
  if type(s) ~= "string" then
    error("sigblock.crc32: expected a string, got " .. type(s), 2)
  end
  local b1, b2, b3, b4 = byte(crc32_bytes(s), 1, 4)
  return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
end

---------------------------------------------------------------------------------------------------
-- Field checks. Each returns nil when the value is fine, else the end of a sentence
-- ("must be ...") that encode and decode turn into their own messages.

local function check_ice(lo, hi)
  return function(v)
    if type(v) ~= "string" then
      return "must be a string, got " .. type(v)
    end
    if #v < lo or #v > hi then
      return format("must be %d to %d characters long, got %d", lo, hi, #v)
    end
    local p = find(v, "[^A-Za-z0-9+/]")
    if p then
      return format("has %s at position %d; only A-Z a-z 0-9 + / are allowed",
        describe_char(sub(v, p, p)), p)
    end
  end
end

local function check_printable(v, lo, hi)
  if type(v) ~= "string" then
    return "must be a string, got " .. type(v)
  end
  if #v < lo or #v > hi then
    if lo == 0 then
      return format("must be at most %d characters long, got %d", hi, #v)
    end
    return format("must be %d to %d characters long, got %d", lo, hi, #v)
  end
  local p = find(v, "[^\32-\126]")
  if p then
    return format("has %s at position %d; only printable ASCII is allowed",
      describe_char(sub(v, p, p)), p)
  end
end

local function check_candidates(v)
  if type(v) ~= "table" then
    return "must be an array of strings, got " .. type(v)
  end
  local n = #v
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
      return "must be an array of strings (it has the key " .. q(k) .. ")"
    end
  end
  if n < 1 or n > 32 then
    return format("must hold 1 to 32 candidates, got %d", n)
  end
  for i = 1, n do
    local err = check_printable(v[i], 1, 200)
    if err then
      return format("entry %d %s", i, err)
    end
  end
end

local function check_source(v)
  if type(v) ~= "string" then
    return "must be a string, got " .. type(v)
  end
  if #v > 300 then
    return format("must be at most 300 characters long, got %d", #v)
  end
  if find(v, "[^\33-\126]") then
    return "must be printable ASCII without spaces, like 'tcp://127.0.0.1:22'"
  end
  local ok, err = addr.parse_source(v)
  if not ok then
    return "is not a valid 'tcp://host:port' or 'udp://host:port' source: " .. err
  end
end

local function check_endpoint_id(v)
  if type(v) ~= "string" then
    return "must be a string, got " .. type(v)
  end
  if #v ~= 52 then
    return format("must be an EndpointId of 52 base32 characters, got %d characters", #v)
  end
  local p = find(v, "[^a-z2-7]")
  if p then
    return format("has %s at position %d; an EndpointId uses only a-z and 2-7",
      describe_char(sub(v, p, p)), p)
  end
end

local function check_session(v)
  if type(v) ~= "string" then
    return "must be a string, got " .. type(v)
  end
  if #v ~= 16 or find(v, "[^0-9a-f]") then
    return "must be 16 lowercase hex characters, got " .. q(v)
  end
end

local function check_token(v)
  return check_printable(v, 0, 64)
end

-- A reason is shown on the client's terminal, so besides being valid UTF-8 it must not carry
-- anything a terminal acts on: C0/C1 controls (ESC, CSI), DEL, line separators and the
-- bidirectional overrides that reorder what is displayed.
local function check_reason(v)
  if type(v) ~= "string" then
    return "must be a string, got " .. type(v)
  end
  if #v < 1 or #v > 512 then
    return format("must be 1 to 512 bytes long, got %d", #v)
  end
  local i, n = 1, #v
  while i <= n do
    local c = byte(v, i)
    local len, cp, min
    if c < 0x80 then
      len, cp, min = 1, c, 0
    elseif c >= 0xC2 and c <= 0xDF then
      len, cp, min = 2, c - 0xC0, 0x80
    elseif c >= 0xE0 and c <= 0xEF then
      len, cp, min = 3, c - 0xE0, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then
      len, cp, min = 4, c - 0xF0, 0x10000
    else
      return format("is not valid UTF-8 (byte 0x%02x at position %d)", c, i)
    end
    if i + len - 1 > n then
      return format("is not valid UTF-8 (cut-off character at position %d)", i)
    end
    for j = i + 1, i + len - 1 do
      local cc = byte(v, j)
      if cc < 0x80 or cc > 0xBF then
        return format("is not valid UTF-8 (byte 0x%02x at position %d)", cc, j)
      end
      cp = cp * 64 + (cc - 0x80)
    end
    if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then
      return format("is not valid UTF-8 (bad character at position %d)", i)
    end
    if cp < 0x20 or (cp >= 0x7F and cp <= 0x9F) or cp == 0x2028 or cp == 0x2029
      or cp == 0x200E or cp == 0x200F or (cp >= 0x202A and cp <= 0x202E)
      or (cp >= 0x2066 and cp <= 0x2069) then
      return format("has a control character (U+%04X) at position %d", cp, i)
    end
    i = i + len
  end
end

local ICE_UFRAG, ICE_PWD = check_ice(4, 256), check_ice(22, 256)

-- Fields per kind, in the (sorted) order they are written. `opt` fields may be absent.
local SCHEMA = {
  offer = {
    { name = "candidates", check = check_candidates },
    { name = "client_id", check = check_endpoint_id },
    { name = "pwd", check = ICE_PWD },
    { name = "session", check = check_session },
    { name = "source", check = check_source },
    { name = "token", check = check_token, opt = true },
    { name = "ufrag", check = ICE_UFRAG },
  },
  answer = {
    { name = "candidates", check = check_candidates },
    { name = "pwd", check = ICE_PWD },
    { name = "server_id", check = check_endpoint_id },
    { name = "session", check = check_session },
    { name = "ufrag", check = ICE_UFRAG },
  },
  reject = {
    { name = "reason", check = check_reason },
    { name = "session", check = check_session },
  },
}

-- Returns nil, or the field name and what is wrong with it.
local function validate(kind, t)
  for _, f in ipairs(SCHEMA[kind]) do
    local v = t[f.name]
    if v == nil then
      if not f.opt then
        return f.name, "is missing"
      end
    else
      local err = f.check(v)
      if err then
        return f.name, err
      end
    end
  end
end

-- The payload JSON, built by hand so that the key order (sorted) and so the bytes are fixed.
local function payload_json(kind, t)
  local parts = {}
  local names = { "kind" }
  for _, f in ipairs(SCHEMA[kind]) do
    if t[f.name] ~= nil then
      names[#names + 1] = f.name
    end
  end
  sort(names)
  for _, name in ipairs(names) do
    local v = name == "kind" and kind or t[name]
    local enc
    if type(v) == "table" then
      local items = {}
      for i = 1, #v do
        items[i] = cjson.encode(v[i])
      end
      enc = "[" .. concat(items, ",") .. "]"
    else
      enc = cjson.encode(v)
    end
    parts[#parts + 1] = cjson.encode(name) .. ":" .. enc
  end
  return "{" .. concat(parts, ",") .. "}"
end

---------------------------------------------------------------------------------------------------
-- Encoding

--- The block text for `kind` ("offer", "answer" or "reject") and its fields. Every line ends
-- with "\n". Misuse (unknown kind, unknown or invalid field) raises.
function M.encode(kind, fields)
  if type(kind) ~= "string" or not LABEL[kind] then
    error("sigblock.encode: kind must be 'offer', 'answer' or 'reject', got " .. q(kind), 2)
  end
  if type(fields) ~= "table" then
    error("sigblock.encode: fields must be a table, got " .. type(fields), 2)
  end
  local known = {}
  for _, f in ipairs(SCHEMA[kind]) do
    known[f.name] = true
  end
  for k in pairs(fields) do
    if k == "kind" then
      if fields.kind ~= kind then
        error("sigblock.encode: fields.kind is " .. q(fields.kind) .. " but kind is " .. q(kind),
          2)
      end
    elseif not known[k] then
      error("sigblock.encode: unknown field " .. q(k) .. " for " .. ARTICLE[kind] .. " " .. kind,
        2)
    end
  end
  local name, err = validate(kind, fields)
  if name then
    error("sigblock.encode: " .. kind .. " field '" .. name .. "' " .. err, 2)
  end
  local data = char(M.VERSION) .. payload_json(kind, fields)
  local b64 = core.base64_encode(data .. crc32_bytes(data))
  local lines = { begin_line(kind) }
  for i = 1, #b64, M.WRAP do
    lines[#lines + 1] = sub(b64, i, i + M.WRAP - 1)
  end
  lines[#lines + 1] = end_line(kind)
  lines[#lines + 1] = ""
  return concat(lines, "\n")
end

--- 16 lowercase hex characters from the CSPRNG (libsodium's randombytes), for `session`.
function M.new_session()
  -- An Ed25519 secret seed is, by definition, uniformly random bytes straight from
  -- randombytes_buf; eight of them are a session id.
  return core.hex_encode(sub(core.ed25519_secret(), 1, 8))
end

---------------------------------------------------------------------------------------------------
-- Decoding: a line-driven parser shared by decode() (whole text) and reader() (streamed input).

-- `expect` as a set; nil means every kind. Raises on misuse at the caller's caller.
local function expect_set(expect, fname)
  if expect == nil then
    return { offer = true, answer = true, reject = true }
  end
  if type(expect) == "string" then
    expect = { expect }
  end
  if type(expect) ~= "table" then
    error(fname .. ": expect must be a list or set of kinds, got " .. type(expect), 3)
  end
  local set, n = {}, 0
  for k, v in pairs(expect) do
    local kind = v
    if type(v) == "boolean" then
      kind = v and k
    end
    if kind ~= false and (type(kind) ~= "string" or not LABEL[kind]) then
      error(fname .. ": expect holds " .. q(kind) .. "; kinds are 'offer', 'answer', 'reject'", 3)
    end
    if kind and not set[kind] then
      set[kind] = true
      n = n + 1
    end
  end
  if n == 0 then
    error(fname .. ": expect is empty", 3)
  end
  return set
end

-- The first expected kind (offer, answer, reject order): the one advice names.
local function wanted(set)
  for _, kind in ipairs(ORDER) do
    if set[kind] then
      return kind
    end
  end
end

-- True when the caller accepts blocks from both roles, so advice cannot name one.
local function mixed_roles(set)
  local by = PRINTED_BY[wanted(set)]
  for k in pairs(set) do
    if PRINTED_BY[k] ~= by then
      return true
    end
  end
  return false
end

local function paste_advice(set)
  if mixed_roles(set) then
    return "the tunnel block"
  end
  local kind = wanted(set)
  return "the " .. PRINTED_BY[kind] .. "'s " .. LABEL[kind]
end

local function nobegin_message(set)
  local kind = wanted(set)
  local who = mixed_roles(set) and "the other side" or "the " .. PRINTED_BY[kind]
  return format("no '%s' line found: paste the whole block %s printed, from BEGIN to END",
    begin_line(kind), who)
end

local function role_message(kind, set)
  return format("this is %s %s block, printed by a %s: paste it into the %s, and paste %s here",
    ARTICLE[kind], LABEL[kind], PRINTED_BY[kind], READ_BY[kind], paste_advice(set))
end

-- "BEGIN"/"END" and the label when `s` (already stripped) is a marker line, else nil.
-- Tolerant of 3+ dashes, spaces inside the dashes and lower case.
local function marker(s)
  local word, label = match(s, "^%-%-%-+%s*(%a+)%s+(.-)%s*%-%-%-+$")
  if not word then
    return nil
  end
  word = upper(word)
  if word ~= "BEGIN" and word ~= "END" then
    return nil
  end
  return word, upper(gsub(label, "%s+", " "))
end

local function label_kind(label)
  local l = match(label, "^TUNNEL (%u+)$")
  return l and KIND_OF[l]
end

local function foreign_message(label, set)
  label = shown(label)
  if find(label, "^TUNNEL%-RS") then
    return format("this block ('-----BEGIN %s-----') was printed by tunnel-rs, whose format this "
      .. "tunnel does not read: run this tunnel on both sides", label)
  end
  if find(label, "^TUNNEL ") then
    return format("'-----BEGIN %s-----' is not a block this version of tunnel knows (it reads "
      .. "OFFER, ANSWER and REJECT blocks): use the same version on both sides", label)
  end
  return format("'-----BEGIN %s-----' starts some other kind of text, not a tunnel block: "
    .. "paste %s, from '%s' to its END line", label, paste_advice(set), begin_line(wanted(set)))
end

local function damaged(what)
  return "the block is damaged (" .. what .. "): a character was changed or lost while copying; "
    .. "paste it again exactly as printed"
end

local FIELD_ADVICE = ": the block was not made by a matching tunnel; use the same version on "
  .. "both sides"

-- Base64 text between BEGIN and END → fields, or nil, err, errkind.
local function decode_body(kind, b64)
  if b64 == "" then
    return nil, "the block has nothing between its BEGIN and END lines: paste it again in full, "
      .. "with the lines between them", "empty"
  end
  if #b64 % 4 ~= 0 then
    return nil, format("the block has %d base64 characters, which is not a multiple of 4: "
      .. "characters were lost or added while copying; paste it again exactly as printed",
      #b64), "base64"
  end
  local data = core.base64_decode(b64)
  if not data then
    return nil, "the block is not valid base64 ('=' in the wrong place or a wrong last "
      .. "character): it was changed while copying; paste it again exactly as printed", "base64"
  end
  if #data < 7 then -- version byte + "{}" + CRC
    return nil, damaged("too short to hold anything"), "checksum"
  end
  -- The version byte first, then a CRC-32 trailer over everything before it: every format
  -- version keeps this frame, so a changed block is told apart from one of another version.
  local body = sub(data, 1, -5)
  if crc32_bytes(body) ~= sub(data, -4) then
    return nil, damaged("checksum mismatch"), "checksum"
  end
  local version = byte(body, 1)
  if version ~= M.VERSION then
    return nil, format("this block was made by %s version of tunnel (format %d; this one reads "
      .. "format %d): use the same version on both sides",
      version > M.VERSION and "a newer" or "an older", version, M.VERSION), "version"
  end
  local ok, obj = pcall(cjson.decode, sub(body, 2))
  if not ok or type(obj) ~= "table" or obj[1] ~= nil then -- (cjson gives arrays integer keys)
    return nil, "the block's contents are not a JSON object although its checksum is right"
      .. FIELD_ADVICE, "payload"
  end
  local inner = obj.kind
  if type(inner) ~= "string" or not LABEL[inner] then
    return nil, "the block's contents do not say whether it is an offer, an answer or a reject"
      .. FIELD_ADVICE, "payload"
  end
  if inner ~= kind then
    return nil, format("the block's BEGIN line says %s but its contents are %s %s: the BEGIN and "
      .. "END lines were edited; paste the block exactly as printed", LABEL[kind],
      ARTICLE[inner], LABEL[inner]), "mismatch"
  end
  local out, name, err = M.fields(kind, obj)
  if not out then
    return nil, format("the %s's field '%s' %s%s", LABEL[kind], name, err, FIELD_ADVICE), "field"
  end
  return out
end

--- Check the decoded fields `obj` of an offer, answer or reject however they travelled (a
-- pasted block, a Nostr event): returns a clean copy with `kind` set, or nil, the name of the
-- first bad field and what is wrong with it. Unknown keys are dropped: a newer tunnel may add
-- fields an older one can ignore.
function M.fields(kind, obj)
  if not LABEL[kind] then
    error("sigblock.fields: kind must be 'offer', 'answer' or 'reject', got " .. q(kind), 2)
  end
  local name, err = validate(kind, obj)
  if name then
    return nil, name, err
  end
  local out = { kind = kind }
  for _, f in ipairs(SCHEMA[kind]) do
    local v = obj[f.name]
    if type(v) == "table" then
      local copy = {}
      for i = 1, #v do
        copy[i] = v[i]
      end
      v = copy
    end
    out[f.name] = v
  end
  return out
end

local Parser = {}
Parser.__index = Parser

-- emit(fields) for a good block, emit(nil, err, errkind) for a bad one.
local function new_parser(set, emit, max_size)
  return setmetatable({ set = set, emit = emit, max = max_size, state = "idle" }, Parser)
end

function Parser:fail(err, errkind)
  self.emit(nil, err, errkind)
end

-- One marker or body line; `col` is the column of s[1] in the physical input line.
function Parser:segment(s, col)
  local prefix = #match(s, "^[%s>]*") -- indentation and "> " mail/chat quoting
  local stripped = gsub(sub(s, prefix + 1), "%s+$", "")
  local word, label = marker(stripped)
  local state = self.state
  if word == "BEGIN" then
    if state == "body" then
      self:fail(format("the %s block ends before its END line: it was cut off while copying "
        .. "(a new BEGIN line came first); paste it again in full", LABEL[self.kind]), "truncated")
    end
    local kind = label_kind(label)
    if not kind then
      self.state = "skip"
      return self:fail(foreign_message(label, self.set), "foreign")
    end
    if not self.set[kind] then
      self.state = "skip"
      return self:fail(role_message(kind, self.set), "role")
    end
    self.state, self.kind, self.label, self.lineno = "body", kind, label, 0
    self.parts, self.size, self.bad, self.badkind = {}, 0, nil, nil
  elseif word == "END" then
    if state == "body" then
      self.state = "idle"
      if label ~= self.label then
        return self:fail(format("the block starts with '-----BEGIN %s-----' but ends with "
          .. "'-----END %s-----': parts of two blocks were mixed while copying; paste one block "
          .. "in full", self.label, shown(label)), "mismatch")
      end
      if self.bad then
        return self:fail(self.bad, self.badkind)
      end
      local fields, err, errkind = decode_body(self.kind, concat(self.parts))
      self.parts = nil
      if fields then
        return self.emit(fields)
      end
      return self:fail(err, errkind)
    elseif state == "skip" then
      self.state = "idle"
    elseif label_kind(label) then
      self:fail(format("found '-----END %s-----' but no BEGIN line before it: the start of the "
        .. "block was cut off while copying; paste the whole block, from BEGIN to END", label),
        "truncated")
    end
  elseif state == "body" then
    if self.bad or stripped == "" then
      return
    end
    local p = find(s, "[^A-Za-z0-9+/=%s]", prefix + 1)
    if p then
      self.bad = format("line %d of the %s block (after BEGIN), column %d: %s is not a base64 "
        .. "character: the block was changed while copying; paste it again exactly as printed",
        self.lineno, LABEL[self.kind], col + p - 1, describe_char(sub(s, p, p)))
      self.badkind = "base64"
      return
    end
    local b64 = gsub(stripped, "%s+", "")
    self.size = self.size + #b64
    if self.size > self.max then
      self.state = "skip"
      return self:fail(format("the %s block is larger than %d KiB, far more than any tunnel "
        .. "block: this is not a tunnel block; paste %s", LABEL[self.kind], floor(self.max / 1024),
        paste_advice(self.set)), "toolarge")
    end
    self.parts[#self.parts + 1] = b64
  end
end

-- A physical input line (without its "\n"). A chat app may have joined a whole block into one
-- line, so BEGIN/END markers inside a line split it into segments.
function Parser:line(l)
  if self.state == "body" then
    self.lineno = self.lineno + 1
  end
  local pos = 1
  while true do
    local a, b = find(l, "%-*%-%-%-%-%-BEGIN .-%-%-%-%-%-%-*", pos)
    local c, d = find(l, "%-*%-%-%-%-%-END .-%-%-%-%-%-%-*", pos)
    if c and (not a or c < a) then
      a, b = c, d
    end
    if not a then
      break
    end
    if match(sub(l, pos, a - 1), "[^%s>]") then
      self:segment(sub(l, pos, a - 1), pos)
    end
    self:segment(sub(l, a, b), a)
    pos = b + 1
  end
  if pos == 1 then
    self:segment(l, 1)
  elseif match(sub(l, pos), "%S") then
    self:segment(sub(l, pos), pos)
  end
end

--- Decodes the first block in `text`. `expect`: the kinds the caller accepts, as a list
-- ({"answer", "reject"}), a set ({offer = true}) or one kind ("offer"); nil accepts all.
-- Returns the fields (with .kind), or nil, err, errkind.
function M.decode(text, expect)
  if type(text) ~= "string" then
    error("sigblock.decode: text must be a string, got " .. type(text), 2)
  end
  local set = expect_set(expect, "sigblock.decode")
  local res, rerr, rkind
  local done = false
  local p = new_parser(set, function(f, err, errkind)
    if not done then
      done, res, rerr, rkind = true, f, err, errkind
    end
  end, M.MAX_SIZE)
  text = gsub(text, "\r\n?", "\n")
  local pos = 1
  while not done and pos <= #text + 1 do
    local nl = find(text, "\n", pos, true) or #text + 1
    p:line(sub(text, pos, nl - 1))
    pos = nl + 1
  end
  if done then
    return res, rerr, rkind
  end
  if p.state == "body" then
    return nil, format("the %s block ends before its END line: it was cut off while copying; "
      .. "paste it again in full", LABEL[p.kind]), "truncated"
  end
  return nil, nobegin_message(set), "nobegin"
end

---------------------------------------------------------------------------------------------------
-- Interactive reading

local Reader = {}
Reader.__index = Reader

--- A reader for blocks arriving in chunks (stdin). on_block(fields) runs for every valid block;
-- opts.on_error(err, errkind) for every bad one, after which the reader is ready for the next
-- paste. opts.max_size bounds a block and a pending line (default M.MAX_SIZE).
function M.reader(expect, on_block, opts)
  local set = expect_set(expect, "sigblock.reader")
  if type(on_block) ~= "function" then
    error("sigblock.reader: on_block must be a function, got " .. type(on_block), 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("sigblock.reader: opts must be a table, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "on_error" and k ~= "max_size" then
      error("sigblock.reader: unknown option " .. q(k), 2)
    end
  end
  if opts.on_error ~= nil and type(opts.on_error) ~= "function" then
    error("sigblock.reader: on_error must be a function, got " .. type(opts.on_error), 2)
  end
  local max = opts.max_size or M.MAX_SIZE
  if type(max) ~= "number" or max < 1024 or max % 1 ~= 0 then
    error("sigblock.reader: max_size must be an integer >= 1024, got " .. q(max), 2)
  end
  local r = setmetatable({ set = set, max = max, pend = {}, plen = 0, discard = false,
    blocks = 0, finished = false }, Reader)
  local on_error = opts.on_error
  r.parser = new_parser(set, function(fields, err, errkind)
    if fields then
      r.blocks = r.blocks + 1
      on_block(fields)
    else
      r.last_error = err
      if on_error then
        on_error(err, errkind)
      end
    end
  end, max)
  return r
end

function Reader:take_line()
  local l = concat(self.pend)
  self.pend, self.plen = {}, 0
  return (gsub(l, "\r$", ""))
end

--- Feed bytes as they come (any chunking, LF or CRLF line ends).
function Reader:feed(chunk)
  if self.finished then
    error("sigblock reader: feed() after finish()", 2)
  end
  if type(chunk) ~= "string" then
    error("sigblock reader: feed() expects a string, got " .. type(chunk), 2)
  end
  local pos = 1
  while true do
    local nl = find(chunk, "\n", pos, true)
    if not nl then
      break
    end
    if self.discard then -- the rest of an over-long line
      self.discard = false
    else
      self.pend[#self.pend + 1] = sub(chunk, pos, nl - 1)
      self.parser:line(self:take_line())
    end
    pos = nl + 1
  end
  if pos > #chunk or self.discard then
    return
  end
  local rest = sub(chunk, pos)
  self.pend[#self.pend + 1] = rest
  self.plen = self.plen + #rest
  if self.plen > self.max then
    self.pend, self.plen, self.discard = {}, 0, true
    if self.parser.state == "body" then
      self.parser.state = "skip"
    end
    self.parser:fail(format("a pasted line is longer than %d KiB, far more than any tunnel block "
      .. "line: this is not a tunnel block; paste %s", floor(self.max / 1024),
      paste_advice(self.set)), "toolarge")
    return
  end
  -- A pasted block often lacks the final newline: accept its END line as soon as it is whole.
  -- (Only short lines can be one, which keeps a flood of dashes from costing quadratic time.)
  if self.parser.state == "body" and self.plen <= 200 and match(rest, "%-%s*$") then
    local l = gsub(concat(self.pend), "%s+$", "")
    local word = marker((gsub(l, "^[%s>]*", "")))
    if word == "END" then
      self.pend, self.plen = {}, 0
      self.parser:line(l)
    end
  end
end

--- End of input. Returns true when at least one valid block arrived, else nil, err, errkind
-- (a block cut off by the end of input, or none at all).
function Reader:finish()
  if not self.finished then
    self.finished = true
    if self.plen > 0 and not self.discard then
      self.parser:line(self:take_line())
    end
  end
  local p = self.parser
  if p.state == "body" then
    return nil, format("the %s block ends before its END line: the input ended while it was "
      .. "being pasted; paste it again in full", LABEL[p.kind]), "truncated"
  end
  if self.blocks > 0 then
    return true
  end
  if self.last_error then
    return nil, "the input ended before a valid block was pasted (last problem: "
      .. self.last_error .. ")", "nobegin"
  end
  return nil, "the input ended before any block was pasted: " .. nobegin_message(self.set),
    "nobegin"
end

--- The BEGIN / END line of a kind, e.g. for prompts ("paste the block starting with ...").
function M.begin_line(kind)
  if not LABEL[kind] then
    error("sigblock.begin_line: unknown kind " .. q(kind), 2)
  end
  return begin_line(kind)
end

function M.end_line(kind)
  if not LABEL[kind] then
    error("sigblock.end_line: unknown kind " .. q(kind), 2)
  end
  return end_line(kind)
end

return M
