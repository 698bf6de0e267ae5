-- Mutation fuzzer for the TOML decoder (lua/tunnel/toml.lua).
--
--   build/tunnel fuzz/toml_fuzz.lua [iterations] [seed] [--no-cover] [--quiet]
--
-- iterations defaults to 200000 and seed to the clock; the seed is printed, and a run with the
-- same seed, corpus and decoder repeats exactly. Inputs that execute a new pair of decoder
-- lines (seen through a debug line hook, with the decoder interpreted) or give a new kind of
-- error join the corpus; --no-cover turns the line hook off. Ctrl-C stops with a summary.
-- The corpus is the toml-test 1.0 files (../shared/vectors/toml-test/tests, or $TOML_TEST_DIR)
-- plus a few samples below; each input is mutated (bit flips, token inserts, deep nesting,
-- digit runs, truncation, splicing) and checked against this oracle:
--
--   * toml.decode never raises;
--   * it returns a table, or nil and a message starting "line:col: " that points into the input;
--   * decoded values are well formed (UTF-8 strings, proper arrays, valid date-times, int64
--     cdata only beyond 2^53) and key positions cover every key;
--   * decoding again gives an equal result (errors included), and so does re-encoding the
--     result as TOML and decoding that.
--
-- On the first oracle failure the input is printed as a Lua %q string and the exit status is 1.
-- spec/toml_fuzz_spec.lua loads this file with require and calls M.run with a fixed seed.

local bit = require "bit"
local ffi = require "ffi"
local toml = require "tunnel.toml"

local byte, char, sub, rep, find, format = string.byte, string.char, string.sub, string.rep,
  string.find, string.format
local concat, sort = table.concat, table.sort
local floor, huge = math.floor, math.huge
local bxor, lshift, rshift, tobit = bit.bxor, bit.lshift, bit.rshift, bit.tobit

local M = {}

M.DEFAULT_ITERATIONS = 200000
M.MAX_LEN = 65536 -- mutated inputs are cut to this size so a run stays fast
M.MAX_CORPUS = 20000

---------------------------------------------------------------------------------------------------
-- Deterministic PRNG (xorshift32), independent of math.random so a seed always replays.

local state = 1

local function seed_rng(seed)
  state = tobit(floor(seed) % 4294967296)
  if state == 0 then
    state = 0x2545F491
  end
  for _ = 1, 8 do
    state = bxor(state, lshift(state, 13))
    state = bxor(state, rshift(state, 17))
    state = bxor(state, lshift(state, 5))
  end
end

-- Uniform integer in 1..n.
local function rand(n)
  state = bxor(state, lshift(state, 13))
  state = bxor(state, rshift(state, 17))
  state = bxor(state, lshift(state, 5))
  return state % n + 1
end

local function pick(list)
  return list[rand(#list)]
end

---------------------------------------------------------------------------------------------------
-- Corpus

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

-- The toml-test "tests" directory (holding files-toml-1.0.0), or nil.
function M.find_suite()
  local candidates = {}
  local env = os.getenv("TOML_TEST_DIR")
  if env and env ~= "" then
    candidates[#candidates + 1] = env .. "/tests"
    candidates[#candidates + 1] = env
  end
  candidates[#candidates + 1] = "../shared/vectors/toml-test/tests"
  for _, dir in ipairs(candidates) do
    local f = io.open(dir .. "/files-toml-1.0.0", "rb")
    if f then
      f:close()
      return dir
    end
  end
  return nil
end

local SAMPLES = {
  "",
  "a = 1\n",
  '[server]\nlisten = "0.0.0.0:4433"\nsecret_file = "/etc/tunnel/server.key"\n'
    .. 'allowed_tcp = ["127.0.0.1/32", "::1/128"]\nmax_sessions = 100\n\n'
    .. '[[forward]]\nname = "ssh"\nsource = "tcp://127.0.0.1:2222"\n'
    .. 'target = { host = "127.0.0.1", port = 22 }\n\n[[forward]]\nname = "dns"\n'
    .. 'source = "udp://[::1]:5353"\n',
  'str = "tab\\t quote\\" uni\\u00E9 \\U0001F600 bs\\\\"\nlit = \'C:\\path\'\n'
    .. 'ml = """\nline1 \\\n   line2"""\nmll = \'\'\'\nraw \\n ""\' \'\'\'\n',
  "int = [+99, -17, 0, 1_000, 0xDEAD_beef, 0o755, 0b1101, 9223372036854775807, "
    .. "-9223372036854775808]\nflt = [+1.0, 3.1415, -0.01, 5e+22, 1e06, -2E-2, 6.626e-34, "
    .. "inf, -inf, nan, -0.0, 224_617.445_991]\n",
  "odt = 1979-05-27T07:32:00Z\nodt2 = 1979-05-27 00:32:00.999999-07:00\n"
    .. "ldt = 1979-05-27T07:32:00.5\nld = 1979-05-27\nlt = 00:32:00.999\nleap = 2024-02-29\n",
  'a.b.c = 1\na.d = 2\n"quoted key".x = true\n\'lit\'.y = false\n[x.y.z]\nw = {}\n'
    .. '[[arr.of.tables]]\n[[arr.of.tables]]\nk = [[1, 2], ["a", \'b\'], [{c = 1}]]\n',
  "# comment\r\nkey = \"value\" # trailing\r\n[t] # header comment\r\n\r\n  v = [\r\n 1,\r\n"
    .. " # inside\r\n 2,\r\n]\r\n",
  "\239\187\191bom = \"ok\"\nunicode = \"\206\187 \226\130\172 \240\159\152\128\"\n"
    .. "\"\206\187\" = 1\n",
  "points = [ { x = 1, y = 2, z = 3 },\n           { x = 7, y = 8, z = 9 } ]\n"
    .. "nested = { a = { b = { c = [ { d = 'e' } ] } } }\n",
}

-- Load the corpus: every .toml file named in files-toml-1.0.0 plus SAMPLES.
function M.load_corpus(dir)
  local corpus = {}
  for _, s in ipairs(SAMPLES) do
    corpus[#corpus + 1] = s
  end
  local nfiles = 0
  if dir then
    for line in io.lines(dir .. "/files-toml-1.0.0") do
      if line:find("%.toml$") then
        local s = read_file(dir .. "/" .. line)
        if s then
          corpus[#corpus + 1] = s
          nfiles = nfiles + 1
        end
      end
    end
  end
  return corpus, nfiles
end

---------------------------------------------------------------------------------------------------
-- Mutations

local TOKENS = {
  "[", "]", "[[", "]]", "{", "}", '"', "'", "'''", '"""', "=", ".", ",", "\\", "\\u", "\\U",
  "\\u00", "\\UFFFFFFFF", "\\uD800", "\\x", "#", "\n", "\r", "\r\n", "\0", "\255", "\127",
  "\t", " ", "_", "+", "-", ":", "T", "Z", "z", "e", "E", "0x", "0o", "0b", "inf", "nan",
  "-0", "0", "1", "9", "true", "false", "a", "a.b", "= 1", "a = ", "\n[", "\n[[a]]\n",
  "\n[a]\n", "{}", "[]", "{ a = 1 }", "\"\"", "''", "1979-05-27", "07:32:00", "T07:32:00",
  "1979-05-27T07:32:00Z", "+07:00", ".999", "2000-02-30", "24:00:00", "9223372036854775807",
  "9223372036854775808", "-9223372036854775809", "0x7FFFFFFFFFFFFFFF", "0xFFFFFFFFFFFFFFFF",
  "0o1777777777777777777777", "1e400", "1e-400", "1.", ".1", "1__0", "\206\187", "\226\130",
  "\240\159\152\128", "\237\160\128", "\192\128", "\244\144\128\128", "\194", "\239\187\191",
}

-- Well-formed values, so that overwriting a value often still gives a valid document.
local VALUES = {
  "1", "-0", "+0.0", "-0.0", "0.1", "1e-300", "1.7976931348623157e308", "4.9e-324", "1_000.0_1",
  "9007199254740992", "9007199254740993", "-9007199254740993", "0x1F_ffff_ffff_ffff",
  "0b1_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0000_0001", "0o7_7777_7777",
  "inf", "-inf", "+nan", "true", "false", '""', "''", [["\u0000\u007F\U0010FFFF"]],
  [["a\tb\"c"]], "'''\n'x'\n'''", '"""\n""\\""\n"""', '"""a\\\n  b"""', "'\206\187'",
  "1979-05-27T07:32:00Z", "1979-05-27t07:32:00.123456789+05:45", "2000-02-29 23:59:60-23:59",
  "0000-01-01", "9999-12-31T23:59:59", "00:00:00", "23:59:60.5", "[]",
  "[1, 'two', [3.0], {four = 4}]", "[\n  1, # c\n  2,\n]", "{}",
  "{ a = 1, b.c = [2], 'd' = { e = {} } }",
}

local function random_pos(s)
  return rand(#s + 1) -- 1..#s+1, an insertion point before that byte
end

local function insert(s, at, t)
  return sub(s, 1, at - 1) .. t .. sub(s, at)
end

local function digits(n, alphabet)
  local t = {}
  for i = 1, n do
    local k = rand(#alphabet)
    t[i] = sub(alphabet, k, k)
  end
  return concat(t)
end

local NEST_SIZES = { 2, 10, 100, 255, 256, 257, 300, 1000 }

local function nesting()
  local n = rand(3) == 1 and pick(NEST_SIZES) or rand(600)
  local kind = rand(6)
  if kind == 1 then
    return rep("[", n)
  elseif kind == 2 then
    return rep("{a=", n)
  elseif kind == 3 then
    return rep("[", n) .. rep("]", n)
  elseif kind == 4 then
    return rep("{a=", n) .. "1" .. rep("}", n)
  elseif kind == 5 then
    return rep("[{a=", n) .. "1" .. rep("}]", n)
  end
  return rep("a.", n) .. "a = 1\n"
end

local function big_number()
  local n = rand(4) == 1 and rand(3000) or rand(40)
  local kind = rand(6)
  if kind == 1 then
    return digits(n, "0123456789")
  elseif kind == 2 then
    return "0x" .. digits(n, "0123456789abcdefABCDEF_")
  elseif kind == 3 then
    return "0b" .. digits(n, "01")
  elseif kind == 4 then
    return "0o" .. digits(n, "01234567")
  elseif kind == 5 then
    return "1." .. digits(n, "0123456789") .. "e" .. digits(rand(6), "0123456789")
  end
  return "-" .. digits(n, "0123456789_")
end

local function mutate_once(s, corpus)
  local op = rand(14)
  local len = #s
  if op == 1 and len > 0 then -- flip one bit
    local i = rand(len)
    return sub(s, 1, i - 1) .. char(bxor(byte(s, i), lshift(1, rand(8) - 1))) .. sub(s, i + 1)
  elseif op == 2 and len > 0 then -- replace a byte with anything
    local i = rand(len)
    return sub(s, 1, i - 1) .. char(rand(256) - 1) .. sub(s, i + 1)
  elseif op <= 5 then -- insert an interesting token
    return insert(s, random_pos(s), pick(TOKENS))
  elseif op == 6 and len > 0 then -- delete a range
    local i = rand(len)
    local n = rand(rand(2) == 1 and 4 or 64)
    return sub(s, 1, i - 1) .. sub(s, i + n)
  elseif op == 7 and len > 0 then -- duplicate a range somewhere
    local i = rand(len)
    local piece = sub(s, i, i + rand(64) - 1)
    return insert(s, random_pos(s), piece)
  elseif op == 8 then -- truncate
    return sub(s, 1, rand(len + 1) - 1)
  elseif op == 9 then -- splice: head of this input + tail of another
    local o = pick(corpus)
    return sub(s, 1, rand(len + 1) - 1) .. sub(o, rand(#o + 1))
  elseif op == 10 then -- insert a line of another input
    local o = pick(corpus)
    local a = rand(#o + 1)
    local b = find(o, "\n", a, true) or #o
    return insert(s, random_pos(s), sub(o, a, b))
  elseif op == 11 then
    return insert(s, random_pos(s), big_number())
  elseif op == 12 then
    return insert(s, random_pos(s), nesting())
  elseif op == 13 and len > 0 then -- overwrite a value after '='
    local i = find(s, "=", rand(len), true)
    if i then
      local e = find(s, "[\n,}]", i + 1) or len + 1
      local r = rand(4)
      local v = r <= 2 and pick(VALUES) or r == 3 and pick(TOKENS) or big_number()
      return sub(s, 1, i) .. " " .. v .. sub(s, e)
    end
  end
  -- swap two bytes (also the fallback for empty input)
  if len < 2 then
    return s .. pick(TOKENS)
  end
  local i, j = rand(len), rand(len)
  if i > j then
    i, j = j, i
  end
  if i == j then
    return s
  end
  return sub(s, 1, i - 1) .. sub(s, j, j) .. sub(s, i + 1, j - 1) .. sub(s, i, i) .. sub(s, j + 1)
end

function M.mutate(s, corpus)
  local n = rand(8)
  n = n <= 4 and 1 or n <= 6 and 2 or n == 7 and 3 or rand(8)
  for _ = 1, n do
    s = mutate_once(s, corpus)
  end
  if #s > M.MAX_LEN then
    s = sub(s, 1, M.MAX_LEN)
  end
  return s
end

---------------------------------------------------------------------------------------------------
-- Oracle

local array_mt, datetime_mt = toml.array_mt, toml.datetime_mt
local MAX_EXACT = 2 ^ 53
local int64_t = ffi.typeof("int64_t")

local Failure = {}
Failure.__index = Failure

local function oracle_fail(fmt, ...)
  error(setmetatable({ reason = format(fmt, ...) }, Failure), 0)
end

local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local p = find(s, "[\128-\255]", i)
    if not p then
      return true
    end
    local b = byte(s, p)
    local k, lo, hi
    if b >= 0xC2 and b <= 0xDF then
      k, lo, hi = 1, 0x80, 0xBF
    elseif b == 0xE0 then
      k, lo, hi = 2, 0xA0, 0xBF
    elseif b == 0xED then
      k, lo, hi = 2, 0x80, 0x9F
    elseif b >= 0xE1 and b <= 0xEF then
      k, lo, hi = 2, 0x80, 0xBF
    elseif b == 0xF0 then
      k, lo, hi = 3, 0x90, 0xBF
    elseif b >= 0xF1 and b <= 0xF3 then
      k, lo, hi = 3, 0x80, 0xBF
    elseif b == 0xF4 then
      k, lo, hi = 3, 0x80, 0x8F
    else
      return false
    end
    for j = 1, k do
      local c = byte(s, p + j)
      if not c or c < lo or c > hi then
        return false
      end
      lo, hi = 0x80, 0xBF
    end
    i = p + k + 1
  end
  return true
end

local DT_KINDS = {
  ["offset-datetime"] = { date = true, time = true, offset = true },
  ["local-datetime"] = { date = true, time = true },
  ["local-date"] = { date = true },
  ["local-time"] = { time = true },
}

local function is_int(v, lo, hi)
  return type(v) == "number" and v == floor(v) and v >= lo and v <= hi
end

local function check_datetime(dt, path)
  local k = DT_KINDS[dt.kind]
  if not k then
    oracle_fail("%s: date-time with bad kind %s", path, tostring(dt.kind))
  end
  if (k.date or false) ~= (dt.year ~= nil) or (k.time or false) ~= (dt.hour ~= nil) or
    (k.offset or false) ~= (dt.offset ~= nil) then
    oracle_fail("%s: date-time fields do not match kind %s", path, dt.kind)
  end
  if k.date and not (is_int(dt.year, 0, 9999) and is_int(dt.month, 1, 12) and
    is_int(dt.day, 1, 31)) then
    oracle_fail("%s: date out of range: %s", path, tostring(dt))
  end
  if k.time and not (is_int(dt.hour, 0, 23) and is_int(dt.min, 0, 59) and
    is_int(dt.sec, 0, 60)) then
    oracle_fail("%s: time out of range: %s", path, tostring(dt))
  end
  if dt.frac ~= nil and (type(dt.frac) ~= "string" or not dt.frac:find("^%d+$")) then
    oracle_fail("%s: bad fraction %s", path, tostring(dt.frac))
  end
  if k.offset and not is_int(dt.offset, -(23 * 60 + 59), 23 * 60 + 59) then
    oracle_fail("%s: offset out of range: %s", path, tostring(dt.offset))
  end
end

-- Every key of t, in next() order. The oracle walks tables with next() instead of pairs():
-- Debian 12's LuaJIT (2.1.0~beta3+git20220320) miscompiles hot nested pairs() loops (LuaJIT
-- issue #827; fixed upstream after that snapshot): iteration stops early or the trace crashes.
-- This fuzzer tripped over it ("array with holes", SIGSEGV in compiled code) before the switch.
local function keys_of(t)
  local list, n = {}, 0
  local k = next(t)
  while k ~= nil do
    n = n + 1
    list[n] = k
    k = next(t, k)
  end
  return list, n
end

local function key_path(path, k)
  return path .. "." .. tostring(k)
end

-- Is v a well-formed decoded value? pos (optional) is the positions map to check too.
local function check_value(v, path, pos, lines, nodes)
  local t = type(v)
  if t == "string" then
    if not valid_utf8(v) then
      oracle_fail("%s: string is not valid UTF-8: %q", path, v)
    end
  elseif t == "number" or t == "boolean" then
    return
  elseif t == "cdata" then
    if not ffi.istype(int64_t, v) then
      oracle_fail("%s: unexpected cdata %s", path, tostring(v))
    end
    if v >= -MAX_EXACT and v <= MAX_EXACT then
      oracle_fail("%s: int64 %s should have been a Lua number", path, tostring(v))
    end
  elseif t == "table" then
    local mt = getmetatable(v)
    if mt == datetime_mt then
      return check_datetime(v, path)
    end
    if nodes[v] then
      oracle_fail("%s: the same table appears twice in the result", path)
    end
    nodes[v] = true
    if mt ~= nil and mt ~= array_mt then
      oracle_fail("%s: table with an unknown metatable", path)
    end
    local p = pos and pos[v]
    if pos and not p then
      oracle_fail("%s: no key positions for this %s", path, mt and "array" or "table")
    end
    local keys, n = keys_of(v)
    for i = 1, n do
      local k = keys[i]
      local e = v[k]
      if mt == array_mt then
        if type(k) ~= "number" or k ~= floor(k) or k < 1 or k > n then
          oracle_fail("%s: array has a non-sequence key %s", path, tostring(k))
        end
      elseif type(k) ~= "string" then
        oracle_fail("%s: table key of type %s", path, type(k))
      elseif not valid_utf8(k) then
        oracle_fail("%s: key is not valid UTF-8: %q", path, k)
      end
      if p then
        local kp = p[k]
        if type(kp) ~= "table" or not is_int(kp.line, 1, lines) or not is_int(kp.col, 1, huge) then
          oracle_fail("%s: bad or missing position for key %s", path, tostring(k))
        end
      end
      check_value(e, key_path(path, k), pos, lines, nodes)
    end
    if mt == array_mt and n ~= #v then
      oracle_fail("%s: array with holes", path)
    end
  else
    oracle_fail("%s: unexpected %s in the result", path, t)
  end
end

-- Deep equality of decoded values (NaN equals NaN, -0.0 differs from 0).
local function same(a, b)
  local ta = type(a)
  if ta ~= type(b) then
    return false
  end
  if ta == "number" then
    if a ~= a then
      return b ~= b
    end
    return a == b and (a ~= 0 or 1 / a == 1 / b)
  elseif ta == "cdata" then
    return tostring(a) == tostring(b)
  elseif ta ~= "table" then
    return a == b
  end
  local mt = getmetatable(a)
  if mt ~= getmetatable(b) then
    return false
  end
  if mt == datetime_mt then
    return a.kind == b.kind and a.year == b.year and a.month == b.month and a.day == b.day and
      a.hour == b.hour and a.min == b.min and a.sec == b.sec and a.frac == b.frac and
      a.offset == b.offset
  end
  local ka, na = keys_of(a)
  for i = 1, na do
    if not same(a[ka[i]], b[ka[i]]) then
      return false
    end
  end
  local kb, nb = keys_of(b)
  for i = 1, nb do
    if a[kb[i]] == nil then
      return false
    end
  end
  return true
end

-- A small TOML encoder so decoded results can be written back and decoded again.
local encode

local function encode_string(s)
  return '"' .. s:gsub('[%z\1-\31"\\\127]', function(c)
    if c == '"' or c == "\\" then
      return "\\" .. c
    end
    return format("\\u%04X", byte(c))
  end) .. '"'
end

local function encode_number(v)
  if v ~= v then
    return "nan"
  elseif v == huge then
    return "inf"
  elseif v == -huge then
    return "-inf"
  elseif v == 0 then
    return 1 / v < 0 and "-0.0" or "0"
  elseif v == floor(v) and v >= -MAX_EXACT and v <= MAX_EXACT then
    return format("%d", v)
  end
  local s = format("%.17g", v)
  if not s:find("[%.e]") then
    s = s .. ".0"
  end
  return s
end

encode = function(v)
  local t = type(v)
  if t == "string" then
    return encode_string(v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "number" then
    return encode_number(v)
  elseif t == "cdata" then
    return (tostring(v):gsub("LL$", ""))
  end
  local mt = getmetatable(v)
  if mt == datetime_mt then
    return tostring(v)
  end
  local parts = {}
  if mt == array_mt then
    for i = 1, #v do
      parts[i] = encode(v[i])
    end
    return "[" .. concat(parts, ", ") .. "]"
  end
  local keys = keys_of(v)
  sort(keys)
  for i, k in ipairs(keys) do
    parts[i] = encode_string(k) .. " = " .. encode(v[k])
  end
  return "{" .. concat(parts, ", ") .. "}"
end
M.encode = encode

-- The root table as top-level `key = value` lines (no extra nesting level).
local function encode_document(root)
  local keys = keys_of(root)
  sort(keys)
  local out = {}
  for i, k in ipairs(keys) do
    out[i] = encode_string(k) .. " = " .. encode(root[k])
  end
  return concat(out, "\n")
end

local function count_lines(s)
  local n = 1
  for _ in s:gmatch("\n") do
    n = n + 1
  end
  return n
end

local function call_decode(text, opts)
  local ok, r1, r2 = pcall(toml.decode, text, opts)
  if not ok then
    oracle_fail("toml.decode raised an error: %s", tostring(r1))
  end
  return r1, r2
end

local function check_error(msg, text, prefix)
  if type(msg) ~= "string" then
    oracle_fail("decode returned nil and a %s instead of a message", type(msg))
  end
  local l, c, rest = msg:match("^" .. (prefix or "") .. "(%d+):(%d+): (.*)$")
  if not l then
    oracle_fail("error message does not start with 'line:col: ': %q", msg)
  end
  l, c = tonumber(l), tonumber(c)
  if l < 1 or l > count_lines(text) or c < 1 then
    oracle_fail("error position %d:%d is outside the input: %q", l, c, msg)
  end
  if rest == "" or find(rest, "[%z\1-\31]") or not valid_utf8(rest) then
    oracle_fail("error message text is empty, has control characters or bad UTF-8: %q", msg)
  end
  return rest
end

-- The kind of an error: its text up to the first quoted part, digits folded. A new kind makes
-- an input interesting, like new coverage.
local function error_class(rest)
  return (rest:gsub("['\"].*$", ""):gsub("\\[uU]%x*", "\\uX"):gsub("0x%x+", "0xX")
    :gsub("U%+%x+", "U+X"):gsub("%d+", "N"))
end

---------------------------------------------------------------------------------------------------
-- Coverage feedback: which (previous line, line) pairs of the decoder an input executed.
-- Only the first decode of each input runs under the hook, so oracle code is not counted.

local edges, nedges, cover_new, prev_line = {}, 0, false, 0

local function cover_hook(_, line)
  local e = prev_line * 65536 + line
  prev_line = line
  if not edges[e] then
    edges[e] = true
    nedges = nedges + 1
    cover_new = true
  end
end

local function covered_decode(text)
  cover_new, prev_line = false, 0
  local hook, mask, count = debug.gethook() -- e.g. luacov's; put back afterwards
  debug.sethook(cover_hook, "l")
  local ok, r1, r2 = pcall(toml.decode, text)
  if hook then
    debug.sethook(hook, mask, count)
  else
    debug.sethook()
  end
  if not ok then
    oracle_fail("toml.decode raised an error: %s", tostring(r1))
  end
  return r1, r2
end

-- Check one input against the oracle; deep adds the slower checks (source option, re-encoding)
-- and cover records coverage. Returns "ok" or "error" and the error kind; raises a Failure.
function M.check(text, deep, cover)
  local r1, r2
  if cover then
    r1, r2 = covered_decode(text)
  else
    r1, r2 = call_decode(text)
  end
  if r1 == nil then
    local rest = check_error(r2, text)
    local a, b = call_decode(text)
    if a ~= nil or b ~= r2 then
      oracle_fail("decoding the same input twice gave different errors: %q then %q", r2,
        tostring(b))
    end
    if deep then
      local _, e = call_decode(text, { source = "in.toml", positions = true })
      check_error(e, text, "in%.toml:")
      if e ~= "in.toml:" .. r2 then
        oracle_fail("opts.source changed the error: %q vs %q", r2, tostring(e))
      end
    end
    return "error", error_class(rest)
  end
  if type(r1) ~= "table" or getmetatable(r1) ~= nil then
    oracle_fail("decode returned %s instead of a table or nil", tostring(r1))
  end
  if r2 ~= nil then
    oracle_fail("decode without opts.positions returned a second value %s", tostring(r2))
  end
  local again, pos = call_decode(text, { positions = true })
  if type(again) ~= "table" then
    oracle_fail("decoding the same input again failed: %s", tostring(pos))
  end
  if again == r1 then
    oracle_fail("decoding twice returned the same table object")
  end
  if not same(r1, again) then
    oracle_fail("decoding the same input twice gave different results")
  end
  if type(pos) ~= "table" then
    oracle_fail("opts.positions did not return a positions table")
  end
  check_value(again, "root", pos, count_lines(text), {})
  if deep then
    local doc = encode_document(r1)
    local back, err = call_decode(doc)
    if back == nil then
      if not err:find("nested too deeply", 1, true) then
        oracle_fail("re-encoded result does not decode: %s\n%s", tostring(err), doc)
      end
    elseif not same(r1, back) then
      oracle_fail("re-encoded result decodes to a different value:\n%s", doc)
    end
  end
  return "ok", "ok"
end

-- Fixed hostile inputs: nesting far beyond the limit and very long tokens.
function M.fixed_inputs()
  local N = 100000
  local deep = toml.MAX_DEPTH or 256
  return {
    rep("[", N),
    "a = " .. rep("[", N),
    "a = " .. rep("[", N) .. rep("]", N),
    "a = " .. rep("{a=", N),
    "a = " .. rep("{a=", N) .. "1" .. rep("}", N),
    "a = " .. rep("[{a=", N) .. "1" .. rep("}]", N),
    "a = " .. rep("[", deep) .. rep("]", deep),
    "a = " .. rep("[", deep + 1) .. rep("]", deep + 1),
    "a = " .. rep("{a=", deep) .. "1" .. rep("}", deep),
    "a = " .. rep("{a=", deep + 1) .. "1" .. rep("}", deep + 1),
    rep("[[", N),
    "[" .. rep("a.", N) .. "a]",
    "[" .. rep("a.", deep - 1) .. "a]\nb = 1",
    "[" .. rep("a.", deep) .. "a]\nb = 1",
    "[[" .. rep("a.", deep - 2) .. "a]]\nb = 1",
    "[[" .. rep("a.", deep - 1) .. "a]]\nb = 1",
    "[" .. rep("a.", 200) .. "a]\n" .. rep("b.", 50) .. "b = " .. rep("[", 10) .. rep("]", 10),
    rep("a.", N) .. "a = 1",
    rep("[[a]]\n", 10000),
    "a = " .. rep("9", N),
    "a = 0x" .. rep("f", N),
    "a = 1." .. rep("5", N) .. "e" .. rep("9", 100),
    'a = "' .. rep("\\u00e9", N) .. '"',
    "a = '''" .. rep("'", N),
    'a = """' .. rep('\\\n', N) .. '"""',
    "a = [" .. rep("1,", N) .. "]",
    "a = {" .. rep("b=1,", 1) .. "}",
    rep("#", N),
    rep("\n", N) .. "a = 1\na = 2",
    rep("\206\187", N) .. " = 1",
  }
end

---------------------------------------------------------------------------------------------------
-- Driver

--- Run the fuzzer. opts: iterations, seed, cover (default true), corpus_dir (false: samples
-- only), fixed (check M.fixed_inputs() first, default true), log (fn(msg)), progress (log every
-- n iterations, 0 = never), should_stop (fn() polled every 1000 iterations). Returns a report;
-- report.failure is nil when the oracle held, else { reason = ..., input = ..., iteration = n }.
function M.run(opts)
  opts = opts or {}
  local iterations = opts.iterations or M.DEFAULT_ITERATIONS
  local seed = opts.seed or 1
  local cover = opts.cover ~= false
  local log = opts.log or function() end
  local progress = opts.progress or 0
  local dir = opts.corpus_dir
  if dir == nil then
    dir = M.find_suite()
  end
  seed_rng(seed)
  edges, nedges = {}, 0
  local corpus, nfiles = M.load_corpus(dir or nil)
  local report = {
    seed = seed, iterations = 0, ok = 0, errors = 0, corpus_files = nfiles,
    corpus_start = #corpus, slowest = 0, slowest_len = 0,
  }
  local classes = {}
  local current_input, current_iter

  -- Returns true when the input did something new: new decoder edges or a new kind of error.
  local function one(text, deep, no_cover)
    current_input = text
    local kind, class = M.check(text, deep, cover and not no_cover)
    if kind == "ok" then
      report.ok = report.ok + 1
    else
      report.errors = report.errors + 1
    end
    local new = not classes[class]
    classes[class] = true
    return new or (cover and cover_new)
  end

  -- With coverage on, the JIT is off for the whole run. Compiled traces never call line hooks,
  -- so coverage (and with it the corpus, and a seed's replay) would depend on what the JIT
  -- happened to compile. Worse, turning a line hook on and off around each decode from
  -- compiled code corrupted LuaJIT 2.1.0-beta3's state: runs crashed (SIGSEGV) or saw
  -- impossible results after some 10^5..10^6 inputs, varying with address randomisation.
  local jit_was_on = cover and jit.status()
  if jit_was_on then
    jit.off()
    jit.flush()
  end
  local ok, err = pcall(function()
    current_iter = 0
    if opts.fixed ~= false then
      for _, s in ipairs(M.fixed_inputs()) do
        one(s, true, true) -- huge inputs: slow under the hook, and they add nothing to the corpus
      end
    end
    for _, s in ipairs(corpus) do
      one(s, true)
    end
    local clock = os.clock
    for i = 1, iterations do
      current_iter = i
      local text = M.mutate(pick(corpus), corpus)
      local t0 = clock()
      local new = one(text, i % 16 == 0)
      local dt = clock() - t0
      if dt > report.slowest then
        report.slowest, report.slowest_len = dt, #text
      end
      if new and #corpus < M.MAX_CORPUS then
        corpus[#corpus + 1] = text
      end
      report.iterations = i
      if progress > 0 and i % progress == 0 then
        log(format("%d iterations: %d decoded, %d rejected, corpus %d, %d edges", i, report.ok,
          report.errors, #corpus, nedges))
      end
      if opts.should_stop and i % 1000 == 0 and opts.should_stop() then
        report.stopped = i
        break
      end
    end
  end)
  if jit_was_on then
    jit.on()
  end
  report.corpus_end = #corpus
  local n = 0
  for _ in pairs(classes) do
    n = n + 1
  end
  report.error_kinds = n
  report.edges = nedges
  if not ok then
    if getmetatable(err) == Failure then
      report.failure = { reason = err.reason, input = current_input, iteration = current_iter }
    else
      report.failure = { reason = "fuzzer bug: " .. tostring(err), input = current_input,
        iteration = current_iter }
    end
    -- Check the input once more from a clean slate with the JIT off: a failure that does not
    -- come back points at state left by earlier inputs, or at the JIT, not at the input alone.
    local jit_on = jit.status()
    jit.off()
    jit.flush()
    local rok, rerr = pcall(M.check, current_input or "", true, false)
    if jit_on then
      jit.on()
    end
    if rok then
      report.failure.recheck = "passes when checked again alone with the JIT off"
    else
      report.failure.recheck = "fails again when checked alone with the JIT off: "
        .. (getmetatable(rerr) == Failure and rerr.reason or tostring(rerr))
    end
  elseif report.stopped then
    report.iterations = report.stopped
  end
  return report
end

-- Text for a failure: the reason and the input as a Lua string literal (cut to `limit` bytes
-- of input, default 16 KiB, so a huge input does not flood the terminal).
function M.describe_failure(report, limit)
  local f = report.failure
  limit = limit or 16384
  local input = f.input or ""
  local note = ""
  if #input > limit then
    note = format("-- input cut to %d of %d bytes\n", limit, #input)
    input = sub(input, 1, limit)
  end
  return format("oracle failed at iteration %d (seed %d): %s\n%s%sinput = %q\n", f.iteration,
    report.seed, f.reason, f.recheck and ("-- the input " .. f.recheck .. "\n") or "", note,
    input)
end

local function main(args)
  local iterations, seed
  local cover, quiet = true, false
  for _, a in ipairs(args) do
    if a == "--no-cover" then
      cover = false
    elseif a == "--quiet" then
      quiet = true
    elseif not iterations and tonumber(a) then
      iterations = tonumber(a)
    elseif not seed and tonumber(a) then
      seed = tonumber(a)
    else
      io.stderr:write("usage: tunnel fuzz/toml_fuzz.lua [iterations] [seed] [--no-cover] "
        .. "[--quiet]\n")
      return 2
    end
  end
  iterations = iterations or M.DEFAULT_ITERATIONS
  seed = seed or (os.time() + floor(os.clock() * 1e6)) % 2147483647
  local dir = M.find_suite()
  if not dir then
    io.stderr:write("toml_fuzz: toml-test suite not found (set TOML_TEST_DIR); "
      .. "using built-in samples only\n")
  end
  io.stdout:write(format("toml_fuzz: seed %d, %d iterations%s\n", seed, iterations,
    cover and ", coverage feedback" or ", no coverage feedback"))
  io.stdout:flush()
  local start = os.clock()
  -- The loop below never returns to the event loop, where SIGINT/SIGTERM are handled; let
  -- them in now and then so Ctrl-C ends a long run with its summary. (Without luv, e.g. under
  -- a plain luajit with LUA_PATH=./lua/?.lua;; to try another LuaJIT, Ctrl-C just kills.)
  local has_uv, uv = pcall(require, "luv")
  local stop_signal
  local signals = {}
  for _, name in ipairs(has_uv and { "sigint", "sigterm" } or {}) do
    local sig = uv.new_signal()
    sig:start(name, function()
      stop_signal = name
    end)
    signals[#signals + 1] = sig
  end
  local report = M.run({
    iterations = iterations, seed = seed, cover = cover, corpus_dir = dir or false,
    progress = quiet and 0 or 100000,
    should_stop = has_uv and function()
      uv.run("nowait")
      return stop_signal ~= nil
    end or nil,
    log = function(msg)
      io.stdout:write("toml_fuzz: ", msg, "\n")
      io.stdout:flush()
    end,
  })
  for _, sig in ipairs(signals) do
    sig:close()
  end
  if stop_signal then
    io.stdout:write(format("toml_fuzz: stopped by %s after %d iterations\n", stop_signal:upper(),
      report.iterations))
  end
  if report.failure then
    io.stderr:write(M.describe_failure(report))
    local path = format("%s/toml_fuzz-failure-%d-%d.toml", os.getenv("TMPDIR") or "/tmp", seed,
      report.failure.iteration)
    local f = io.open(path, "wb")
    if f then
      f:write(report.failure.input or "")
      f:close()
      io.stderr:write("toml_fuzz: the whole input is in ", path, "\n")
    end
    return 1
  end
  io.stdout:write(format("toml_fuzz: done: %d iterations in %.1f s (seed %d): %d decoded, "
    .. "%d rejected with an error, 0 oracle failures; corpus %d -> %d (%d toml-test files), "
    .. "%d error kinds, %d edges; slowest input %.3f s (%d bytes)\n", report.iterations,
    os.clock() - start, seed, report.ok, report.errors, report.corpus_start, report.corpus_end,
    report.corpus_files, report.error_kinds, report.edges, report.slowest, report.slowest_len))
  return 0
end

if type(...) == "string" and (...):find("toml_fuzz$") then
  return M -- loaded with require (the spec)
end
os.exit(main(arg or {}))
