-- tunnel.toml: a TOML 1.0 decoder in plain Lua 5.1 / LuaJIT.
--
-- A hand-written recursive-descent scanner over the input byte string.
-- Bad input never raises: decode() returns nil plus a "line:col: message" error.
-- See docs/api/tunnel.toml.md for the value representation.

local byte, sub, find, match = string.byte, string.sub, string.find, string.match
local char, format, gsub = string.char, string.format, string.gsub
local concat = table.concat
local floor = math.floor
local type, tonumber, tostring, pairs, next = type, tonumber, tostring, pairs, next
local setmetatable, getmetatable = setmetatable, getmetatable
local error, pcall = error, pcall
local io_open = io.open

local ffi_ok, ffi = pcall(require, 'ffi')
local int64 = ffi_ok and ffi.typeof('int64_t') or nil

local M = {}

local array_mt = {__name = 'toml.array'}
local datetime_mt = {__name = 'toml.datetime'}
M.array_mt = array_mt
M.datetime_mt = datetime_mt

local INF = 1 / 0
local NAN = -(0 / 0)
local MAX_EXACT = 2 ^ 53

-- How deep tables and arrays may nest (the root table is level 0). Arrays and inline tables
-- are parsed by recursion, so without a bound hostile input such as 100000 '[' exhausts the Lua
-- stack and raises "stack overflow" instead of returning an error. Headers and dotted keys
-- ([a.a.a...]) do not recurse here but would hand a 100000-level structure to every recursive
-- consumer of the result, so they count too. Real files never come close; toml++ uses 256 too.
local MAX_DEPTH = 256
M.MAX_DEPTH = MAX_DEPTH

function M.is_array(v)
  return type(v) == 'table' and getmetatable(v) == array_mt
end

function M.is_datetime(v)
  return type(v) == 'table' and getmetatable(v) == datetime_mt
end

datetime_mt.__tostring = function(dt)
  local date, time
  if dt.year then
    date = format('%04d-%02d-%02d', dt.year, dt.month, dt.day)
  end
  if dt.hour then
    time = format('%02d:%02d:%02d', dt.hour, dt.min, dt.sec)
    if dt.frac then time = time .. '.' .. dt.frac end
    local off = dt.offset
    if off then
      if off == 0 then
        time = time .. 'Z'
      else
        local a = off < 0 and -off or off
        time = time .. format('%s%02d:%02d', off < 0 and '-' or '+', floor(a / 60), a % 60)
      end
    end
  end
  if date and time then return date .. 'T' .. time end
  return date or time or ''
end

-- Bytes allowed in bare keys: A-Z a-z 0-9 _ -
local BARE = {}
for b = 0, 255 do
  local c = char(b)
  if find(c, '^[A-Za-z0-9_%-]$') then BARE[b] = true end
end

local ESCAPES = {
  [98] = '\b', [116] = '\t', [110] = '\n', [102] = '\f', [114] = '\r', [34] = '"', [92] = '\\',
}

---------------------------------------------------------------------------------------------------
-- Parser state (module-level; decode() is not re-entrant but never yields or calls out).

local src, len, pos      -- input text, its length, cursor (byte offset)
local ascii_only         -- input has no bytes >= 0x80 (columns are then byte offsets)
local lines              -- lazily built array of line start offsets
local lc_line, lc_pos, lc_col  -- cache for linecol() scanning forward on one line
local err_msg, err_pos
local ERR = {}           -- sentinel raised by fail()
local kpos               -- [table or array] -> { key or index -> byte offset where written }
local hdr                -- [table] -> byte offset of the [header] / [[header]] defining it
local frozen             -- [table or array] -> true for inline tables and array literals
local dotted             -- [table] -> section number where dotted keys created/extended it
local section            -- number of the current [section] (0 = root)
local root, cur          -- document root and the table receiving key/value pairs
local cur_name           -- dotted name of the current [section] ('' at the root)
local level              -- [table or array] -> nesting level (root = 0), bounded by MAX_DEPTH

local function fail(msg, p)
  err_msg, err_pos = msg, p or pos
  error(ERR, 0)
end

local function build_lines()
  local ls, n, p = {1}, 1, 1
  while true do
    local q = find(src, '\n', p, true)
    if not q then break end
    n = n + 1
    ls[n] = q + 1
    p = q + 1
  end
  lines = ls
end

local function line_of(p)
  if not lines then build_lines() end
  local ls = lines
  local lo, hi = 1, #ls
  while lo < hi do
    local mid = floor((lo + hi + 1) / 2)
    if ls[mid] <= p then lo = mid else hi = mid - 1 end
  end
  return lo
end

-- 1-based line and column (in characters) of byte offset p.
local function linecol(p)
  local l = line_of(p)
  local s = lines[l]
  if ascii_only then return l, p - s + 1 end
  local i, col = s, 1
  if lc_line == l and lc_pos <= p then i, col = lc_pos, lc_col end
  for j = i, p - 1 do
    local b = byte(src, j)
    if b < 0x80 or b >= 0xC0 then col = col + 1 end
  end
  lc_line, lc_pos, lc_col = l, p, col
  return l, col
end

-- Describe the character at p for error messages.
local function what(p)
  local b = byte(src, p)
  if not b then return 'end of input' end
  if b == 10 then return 'end of line' end
  if b == 13 then
    return byte(src, p + 1) == 10 and 'end of line' or 'carriage return'
  end
  if b >= 32 and b < 127 then return "'" .. char(b) .. "'" end
  if b < 128 then return format('control character U+%04X', b) end
  local n = b >= 0xF0 and 4 or b >= 0xE0 and 3 or 2
  return "'" .. sub(src, p, p + n - 1) .. "'"
end

local function quote_key(k)
  if k ~= '' and not find(k, '[^A-Za-z0-9_%-]') then return k end
  return '"' .. gsub(k, '[%z\1-\31"\\\127]', function(c)
    if c == '"' or c == '\\' then return '\\' .. c end
    return format('\\u%04X', byte(c))
  end) .. '"'
end

local function keystr(keys, n)
  local parts = {}
  for i = 1, n do parts[i] = quote_key(keys[i]) end
  return concat(parts, '.')
end

local function vkind(v)
  local t = type(v)
  if t == 'table' then
    local mt = getmetatable(v)
    if mt == array_mt then return 'an array' end
    if mt == datetime_mt then return 'a date-time' end
    return 'a table'
  elseif t == 'boolean' then
    return 'a boolean'
  elseif t == 'string' then
    return 'a string'
  end
  return 'a number'
end

local function is_table(v)
  return type(v) == 'table' and getmetatable(v) == nil
end

local function check_level(l, kind, p)
  if l > MAX_DEPTH then
    fail(format('%s nested too deeply (more than %d levels of tables and arrays)', kind,
      MAX_DEPTH), p)
  end
end

-- A new table at nesting level l; p is the byte offset blamed if l is too deep.
local function new_table(l, kind, p)
  check_level(l, kind, p)
  local t = {}
  kpos[t] = {}
  level[t] = l
  return t
end

---------------------------------------------------------------------------------------------------
-- Encoding checks

local function check_utf8()
  local p = find(src, '[\128-\255]')
  ascii_only = p == nil
  while p do
    local b = byte(src, p)
    local n, lo, hi = 0, 0x80, 0xBF
    if b >= 0xC2 and b <= 0xDF then
      n = 1
    elseif b == 0xE0 then
      n, lo = 2, 0xA0
    elseif (b >= 0xE1 and b <= 0xEC) or b == 0xEE or b == 0xEF then
      n = 2
    elseif b == 0xED then
      n, hi = 2, 0x9F
    elseif b == 0xF0 then
      n, lo = 3, 0x90
    elseif b >= 0xF1 and b <= 0xF3 then
      n = 3
    elseif b == 0xF4 then
      n, hi = 3, 0x8F
    else
      fail(format('invalid UTF-8 byte 0x%02X', b), p)
    end
    for i = 1, n do
      local c = byte(src, p + i)
      if not c or c < lo or c > hi then fail('invalid UTF-8 sequence', p) end
      lo, hi = 0x80, 0xBF
    end
    p = find(src, '[\128-\255]', p + n + 1)
  end
end

local function fail_control(p)
  local b = byte(src, p)
  if b == 13 then fail('carriage return not followed by line feed', p) end
  fail(format('control character U+%04X is not allowed here', b), p)
end

---------------------------------------------------------------------------------------------------
-- Whitespace, comments, newlines

local function skip_ws()
  local p = pos
  local b = byte(src, p)
  while b == 32 or b == 9 do
    p = p + 1
    b = byte(src, p)
  end
  pos = p
  return b
end

-- At '#': skip to the end of the line (the newline itself is not consumed).
local function skip_comment()
  local p = pos + 1
  while true do
    local q = find(src, '[%z\1-\8\10-\31\127]', p)
    if not q then
      pos = len + 1
      return
    end
    local b = byte(src, q)
    if b == 10 or (b == 13 and byte(src, q + 1) == 10) then
      pos = q
      return
    end
    fail_control(q)
  end
end

-- Skip whitespace, comments and newlines; return the next byte.
local function skip_wscnl()
  while true do
    local b = byte(src, pos)
    if b == 32 or b == 9 or b == 10 then
      pos = pos + 1
    elseif b == 13 then
      if byte(src, pos + 1) ~= 10 then fail_control(pos) end
      pos = pos + 2
    elseif b == 35 then
      skip_comment()
    else
      return b
    end
  end
end

-- After a key/value pair or header: optional whitespace and comment, then newline or EOF.
local function end_of_line(ctx)
  local b = skip_ws()
  if b == 35 then
    skip_comment()
    b = byte(src, pos)
  end
  if b == nil then return end
  if b == 10 then
    pos = pos + 1
    return
  end
  if b == 13 and byte(src, pos + 1) == 10 then
    pos = pos + 2
    return
  end
  fail(format('expected end of line after %s, found %s', ctx, what(pos)))
end

---------------------------------------------------------------------------------------------------
-- Strings

local function utf8_encode(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then
    return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
  end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64,
    0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

-- p at a backslash; returns the decoded text and the offset after the escape.
local function parse_escape(p)
  local e = byte(src, p + 1)
  local s = ESCAPES[e]
  if s then return s, p + 2 end
  if e == 117 or e == 85 then -- \u, \U
    local n = e == 117 and 4 or 8
    local hex = match(src, '^%x+', p + 2)
    if not hex or #hex < n then
      fail(format('\\%s escape needs exactly %d hex digits', char(e), n), p)
    end
    hex = sub(hex, 1, n)
    local cp = tonumber(hex, 16)
    if cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then
      fail(format('\\%s%s is not a Unicode scalar value', char(e), hex), p)
    end
    return utf8_encode(cp), p + 2 + n
  end
  if e == nil then fail('unterminated string', p) end
  if e > 32 and e < 127 then fail('invalid escape sequence \\' .. char(e), p) end
  fail('invalid escape sequence: backslash followed by ' .. what(p + 1), p)
end

-- pos at the opening quote of "..."
local function parse_basic_string()
  local start = pos
  local p = pos + 1
  local buf, n = nil, 0
  while true do
    local q = find(src, '["\\%z\1-\8\10-\31\127]', p)
    if not q then fail('unterminated string', start) end
    local b = byte(src, q)
    if b == 34 then
      pos = q + 1
      if not buf then return sub(src, p, q - 1) end
      buf[n + 1] = sub(src, p, q - 1)
      return concat(buf, '', 1, n + 1)
    elseif b == 92 then
      buf = buf or {}
      buf[n + 1] = sub(src, p, q - 1)
      buf[n + 2], p = parse_escape(q)
      n = n + 2
    elseif b == 10 or (b == 13 and byte(src, q + 1) == 10) then
      fail('unterminated string (line ended before the closing quote)', start)
    else
      fail_control(q)
    end
  end
end

-- pos at the opening quote of '...'
local function parse_literal_string()
  local start = pos
  local q = find(src, "['%z\1-\8\10-\31\127]", pos + 1)
  if not q then fail('unterminated string', start) end
  local b = byte(src, q)
  if b == 39 then
    local s = sub(src, pos + 1, q - 1)
    pos = q + 1
    return s
  elseif b == 10 or (b == 13 and byte(src, q + 1) == 10) then
    fail('unterminated string (line ended before the closing quote)', start)
  end
  fail_control(q)
end

-- pos at """ or '''; quote is the delimiter byte. Returns the string value.
local function parse_ml_string(quote)
  local start = pos
  local literal = quote == 39
  local pat = literal and "['\13%z\1-\8\11\12\14-\31\127]" or '["\\\13%z\1-\8\11\12\14-\31\127]'
  local p = pos + 3
  -- a newline right after the opening delimiter is trimmed
  local b = byte(src, p)
  if b == 10 then
    p = p + 1
  elseif b == 13 and byte(src, p + 1) == 10 then
    p = p + 2
  end
  local buf, n = {}, 0
  while true do
    local q = find(src, pat, p)
    if not q then fail('unterminated multi-line string', start) end
    b = byte(src, q)
    if b == quote then
      local e = q
      while byte(src, e) == quote do e = e + 1 end
      local nq = e - q
      if nq >= 3 then
        if nq > 5 then nq = 5 end
        buf[n + 1] = sub(src, p, q + nq - 4)
        pos = q + nq
        return concat(buf, '', 1, n + 1)
      end
      n = n + 1
      buf[n] = sub(src, p, e - 1)
      p = e
    elseif b == 13 then
      if byte(src, q + 1) ~= 10 then fail_control(q) end
      buf[n + 1] = sub(src, p, q - 1)
      buf[n + 2] = '\n'
      n = n + 2
      p = q + 2
    elseif b == 92 then
      n = n + 1
      buf[n] = sub(src, p, q - 1)
      local r = q + 1
      local c = byte(src, r)
      while c == 32 or c == 9 do
        r = r + 1
        c = byte(src, r)
      end
      if c == 10 or (c == 13 and byte(src, r + 1) == 10) then
        -- line-ending backslash: drop all whitespace and newlines that follow
        while true do
          c = byte(src, r)
          if c == 32 or c == 9 or c == 10 then
            r = r + 1
          elseif c == 13 and byte(src, r + 1) == 10 then
            r = r + 2
          else
            break
          end
        end
        p = r
      else
        n = n + 1
        buf[n], p = parse_escape(q)
      end
    else
      fail_control(q)
    end
  end
end

---------------------------------------------------------------------------------------------------
-- Keys

local function parse_simple_key()
  local b = byte(src, pos)
  if b == 34 or b == 39 then
    if byte(src, pos + 1) == b and byte(src, pos + 2) == b then
      fail('multi-line strings cannot be used as keys')
    end
    if b == 34 then return parse_basic_string() end
    return parse_literal_string()
  end
  local p = pos
  while BARE[b] do
    p = p + 1
    b = byte(src, p)
  end
  if p == pos then fail('expected a key, found ' .. what(pos)) end
  local k = sub(src, pos, p - 1)
  pos = p
  return k
end

-- Returns the key segments, their start offsets and their count.
local function parse_key()
  local keys, kp, n = {}, {}, 0
  while true do
    n = n + 1
    kp[n] = pos
    keys[n] = parse_simple_key()
    local b = skip_ws()
    if b ~= 46 then return keys, kp, n end
    pos = pos + 1
    skip_ws()
  end
end

---------------------------------------------------------------------------------------------------
-- Numbers and date-times

local function underscores_ok(s)
  return s ~= '' and not find(s, '^_') and not find(s, '_$') and not find(s, '__', 1, true)
end

-- Exact integer from digits (no sign/underscores) in base; neg applies a minus sign.
local function make_int(digits, base, neg, start)
  digits = match(digits, '^0*(.-)$')
  local bits = base == 16 and 4 or base == 8 and 3 or base == 2 and 1 or nil
  local small
  if bits then small = #digits * bits <= 52 else small = #digits <= 15 end
  if small then
    local v = 0
    for i = 1, #digits do
      local d = tonumber(sub(digits, i, i), base)
      v = v * base + d
    end
    if neg and v ~= 0 then v = -v end
    return v
  end
  local over
  if base == 10 then
    over = #digits > 19 or
      (#digits == 19 and digits > (neg and '9223372036854775808' or '9223372036854775807'))
  elseif base == 16 then
    over = #digits > 16 or (#digits == 16 and tonumber(sub(digits, 1, 1), 16) > 7)
  elseif base == 8 then
    over = #digits > 21
  else
    over = #digits > 63
  end
  if over then fail('integer out of 64-bit range', start) end
  if not int64 then fail('integer too large for a Lua number (LuaJIT FFI needed)', start) end
  local v = int64(0)
  for i = 1, #digits do
    v = v * base - tonumber(sub(digits, i, i), base)
  end
  if not neg then v = -v end
  if v >= -MAX_EXACT and v <= MAX_EXACT then return tonumber(v) end
  return v
end

local function days_in_month(y, m)
  if m == 2 then
    if y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then return 29 end
    return 28
  end
  if m == 4 or m == 6 or m == 9 or m == 11 then return 30 end
  return 31
end

-- Parse HH:MM:SS[.frac] at pos into dt.
local function parse_time(dt)
  local start = pos
  local h, mi, s = match(src, '^(%d%d):(%d%d):(%d%d)', pos)
  if not h then fail('invalid time (expected HH:MM:SS)', start) end
  h, mi, s = tonumber(h), tonumber(mi), tonumber(s)
  if h > 23 or mi > 59 or s > 60 then fail('time out of range', start) end
  dt.hour, dt.min, dt.sec = h, mi, s
  pos = pos + 8
  if byte(src, pos) == 46 then
    local frac = match(src, '^%d+', pos + 1)
    if not frac then fail('expected digits after decimal point in time') end
    dt.frac = frac
    pos = pos + 1 + #frac
  end
end

local function parse_datetime()
  local start = pos
  local dt = {}
  if byte(src, pos + 2) == 58 then -- HH: -> local time
    parse_time(dt)
    dt.kind = 'local-time'
    return setmetatable(dt, datetime_mt)
  end
  local y, mo, d = match(src, '^(%d%d%d%d)%-(%d%d)%-(%d%d)', pos)
  if not y then fail('invalid date (expected YYYY-MM-DD)', start) end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo < 1 or mo > 12 or d < 1 or d > days_in_month(y, mo) then
    fail('date out of range', start)
  end
  dt.year, dt.month, dt.day = y, mo, d
  pos = pos + 10
  local b = byte(src, pos)
  if b == 84 or b == 116 or (b == 32 and find(src, '^%d%d:', pos + 1)) then
    pos = pos + 1
    parse_time(dt)
    b = byte(src, pos)
    if b == 90 or b == 122 then
      dt.offset = 0
      pos = pos + 1
      dt.kind = 'offset-datetime'
    elseif b == 43 or b == 45 then
      local oh, om = match(src, '^(%d%d):(%d%d)', pos + 1)
      if not oh then fail('invalid time offset (expected +HH:MM or -HH:MM)') end
      oh, om = tonumber(oh), tonumber(om)
      if oh > 23 or om > 59 then fail('time offset out of range') end
      dt.offset = (b == 45 and -1 or 1) * (oh * 60 + om)
      pos = pos + 6
      dt.kind = 'offset-datetime'
    else
      dt.kind = 'local-datetime'
    end
  else
    dt.kind = 'local-date'
  end
  return setmetatable(dt, datetime_mt)
end

local function parse_number()
  local start = pos
  if find(src, '^%d%d%d%d%-', pos) or find(src, '^%d%d:', pos) then return parse_datetime() end
  local _, e = find(src, '^[%w_%.%+%-]+', pos)
  local tok = sub(src, pos, e)
  pos = e + 1
  local sign, body = match(tok, '^([%+%-]?)(.*)$')
  if body == 'inf' then return sign == '-' and -INF or INF end
  if body == 'nan' then return NAN end
  local prefix = sub(body, 1, 2)
  if prefix == '0x' or prefix == '0o' or prefix == '0b' then
    if sign ~= '' then fail("a sign is not allowed on '" .. prefix .. "' integers", start) end
    local digits = sub(body, 3)
    local base, bad = 16, '[^%x]'
    if prefix == '0o' then
      base, bad = 8, '[^0-7]'
    elseif prefix == '0b' then
      base, bad = 2, '[^01]'
    end
    if not underscores_ok(digits) then fail("invalid number '" .. tok .. "'", start) end
    digits = gsub(digits, '_', '')
    if find(digits, bad) then fail("invalid number '" .. tok .. "'", start) end
    return make_int(digits, base, false, start)
  end
  local ip, rest = match(body, '^([%d_]+)(.*)$')
  if not ip or not underscores_ok(ip) then fail("invalid number '" .. tok .. "'", start) end
  local is_int = rest == ''
  if not is_int then
    local fr, r2 = match(rest, '^%.([%d_]*)(.*)$')
    if fr then
      if not underscores_ok(fr) then fail("invalid number '" .. tok .. "'", start) end
      rest = r2
    end
    if rest ~= '' then
      local ed = match(rest, '^[eE][%+%-]?([%d_]*)$')
      if not ed or not underscores_ok(ed) then fail("invalid number '" .. tok .. "'", start) end
    end
  end
  if #ip > 1 and byte(ip, 1) == 48 then
    fail("leading zeros are not allowed in '" .. tok .. "'", start)
  end
  if is_int then return make_int(gsub(ip, '_', ''), 10, sign == '-', start) end
  local v = tonumber((gsub(tok, '_', '')))
  if not v then fail("invalid number '" .. tok .. "'", start) end
  return v
end

---------------------------------------------------------------------------------------------------
-- Values, key/value pairs, tables

local parse_value

-- lvl is the nesting level the array will have.
local function parse_array(lvl)
  local start = pos
  check_level(lvl, 'array', start)
  pos = pos + 1
  local arr = setmetatable({}, array_mt)
  local ap = {}
  kpos[arr] = ap
  level[arr] = lvl
  local n = 0
  while true do
    local b = skip_wscnl()
    if b == 93 then break end
    if b == nil then fail("unterminated array (missing ']')", start) end
    n = n + 1
    ap[n] = pos
    arr[n] = parse_value(lvl + 1)
    b = skip_wscnl()
    if b == 44 then
      pos = pos + 1
    elseif b == 93 then
      break
    elseif b == nil then
      fail("unterminated array (missing ']')", start)
    else
      fail("expected ',' or ']' after array element, found " .. what(pos))
    end
  end
  pos = pos + 1
  frozen[arr] = true
  return arr
end

local parse_keyval

local function parse_inline_table(lvl)
  local start = pos
  local t = new_table(lvl, 'inline table', start)
  pos = pos + 1
  local b = skip_ws()
  if b ~= 125 then
    while true do
      parse_keyval(t)
      b = skip_ws()
      if b == 44 then
        pos = pos + 1
        b = skip_ws()
        if b == 125 then fail('trailing comma is not allowed in an inline table') end
      elseif b == 125 then
        break
      elseif b == nil then
        fail("unterminated inline table (missing '}')", start)
      elseif b == 10 or b == 13 then
        fail('newlines are not allowed in an inline table')
      else
        fail("expected ',' or '}' in inline table, found " .. what(pos))
      end
    end
  end
  pos = pos + 1
  frozen[t] = true
  return t
end

local function invalid_value()
  local _, e = find(src, '^[%w_%.%+%-:]+', pos)
  if e then fail("invalid value '" .. sub(src, pos, e) .. "'") end
  fail('expected a value, found ' .. what(pos))
end

-- lvl is the nesting level an array or table value would have.
parse_value = function(lvl)
  local b = byte(src, pos)
  if b == 34 or b == 39 then
    if byte(src, pos + 1) == b and byte(src, pos + 2) == b then return parse_ml_string(b) end
    if b == 34 then return parse_basic_string() end
    return parse_literal_string()
  elseif b == 116 then
    if sub(src, pos, pos + 3) == 'true' and not BARE[byte(src, pos + 4)] then
      pos = pos + 4
      return true
    end
  elseif b == 102 then
    if sub(src, pos, pos + 4) == 'false' and not BARE[byte(src, pos + 5)] then
      pos = pos + 5
      return false
    end
  elseif b == 91 then
    return parse_array(lvl)
  elseif b == 123 then
    return parse_inline_table(lvl)
  elseif b and ((b >= 48 and b <= 57) or b == 43 or b == 45 or b == 105 or b == 110) then
    return parse_number()
  end
  invalid_value()
end

-- Name of the table reached by keys[1..i] under a section called prefix, for messages.
local function tname(prefix, keys, i)
  local s = keystr(keys, i)
  if prefix and prefix ~= '' then return prefix .. '.' .. s end
  return s
end

local function first_line(t, k)
  local p = kpos[t] and kpos[t][k]
  return p and line_of(p) or '?'
end

-- Parse `key = value` and store it in table t. prefix names t in messages (document level).
parse_keyval = function(t, prefix)
  local keys, kp, n = parse_key()
  if byte(src, pos) ~= 61 then
    fail(format("expected '=' after key '%s', found %s", keystr(keys, n), what(pos)))
  end
  pos = pos + 1
  skip_ws()
  for i = 1, n - 1 do
    local k = keys[i]
    local v = t[k]
    if v == nil then
      v = new_table(level[t] + 1, 'dotted key', kp[i])
      t[k] = v
      kpos[t][k] = kp[i]
      dotted[v] = section
    elseif is_table(v) then
      if frozen[v] then
        fail(format("cannot add keys to inline table '%s' (defined at line %s)",
          tname(prefix, keys, i), first_line(t, k)), kp[i])
      end
      if hdr[v] then
        fail(format("cannot add keys to table '%s' with dotted keys: it was defined by a " ..
          "[table] header at line %s", tname(prefix, keys, i), line_of(hdr[v])), kp[i])
      end
      local d = dotted[v]
      if d and d ~= section then
        fail(format("cannot add keys to table '%s' with dotted keys outside the section " ..
          "where it was defined (line %s)", tname(prefix, keys, i), first_line(t, k)), kp[i])
      end
      dotted[v] = section
    else
      fail(format("key '%s' is already %s (line %s), not a table", tname(prefix, keys, i), vkind(v),
        first_line(t, k)), kp[i])
    end
    t = v
  end
  local k = keys[n]
  if t[k] ~= nil then
    fail(format("duplicate key '%s' (first defined at line %s)", keystr(keys, n),
      first_line(t, k)), kp[n])
  end
  t[k] = parse_value(level[t] + 1)
  kpos[t][k] = kp[n]
end

-- pos at '[': parse a [table] or [[array of tables]] header and make it current.
local function parse_header()
  local start = pos
  local aot = byte(src, pos + 1) == 91
  pos = pos + (aot and 2 or 1)
  skip_ws()
  local keys, kp, n = parse_key()
  if aot then
    if byte(src, pos) ~= 93 or byte(src, pos + 1) ~= 93 then
      fail("expected ']]' to close array of tables header, found " .. what(pos))
    end
    pos = pos + 2
  else
    if byte(src, pos) ~= 93 then fail("expected ']' to close table header, found " .. what(pos)) end
    pos = pos + 1
  end
  section = section + 1
  local t = root
  for i = 1, n - 1 do
    local k = keys[i]
    local v = t[k]
    if v == nil then
      v = new_table(level[t] + 1, 'table', kp[i])
      t[k] = v
      kpos[t][k] = kp[i]
    elseif frozen[v] then
      fail(format("cannot extend '%s': it is %s defined inline at line %s", keystr(keys, i),
        vkind(v), first_line(t, k)), kp[i])
    elseif type(v) == 'table' and getmetatable(v) == array_mt then
      v = v[#v]
    elseif not is_table(v) then
      fail(format("key '%s' is already %s (line %s), not a table", keystr(keys, i), vkind(v),
        first_line(t, k)), kp[i])
    end
    t = v
  end
  local k = keys[n]
  local v = t[k]
  local name = keystr(keys, n)
  if aot then
    if v == nil then
      check_level(level[t] + 1, 'array of tables', kp[n])
      v = setmetatable({}, array_mt)
      kpos[v] = {}
      level[v] = level[t] + 1
      t[k] = v
      kpos[t][k] = kp[n]
    elseif frozen[v] or not (type(v) == 'table' and getmetatable(v) == array_mt) then
      fail(format("cannot define array of tables '%s': key is already %s (line %s)", name,
        vkind(v), first_line(t, k)), kp[n])
    end
    local e = new_table(level[v] + 1, 'array of tables', kp[n])
    local i = #v + 1
    v[i] = e
    kpos[v][i] = kp[n]
    hdr[e] = start
    cur, cur_name = e, name
  else
    if v == nil then
      v = new_table(level[t] + 1, 'table', kp[n])
      t[k] = v
      kpos[t][k] = kp[n]
    elseif not is_table(v) then
      fail(format("cannot define table '%s': key is already %s (line %s)", name, vkind(v),
        first_line(t, k)), kp[n])
    elseif hdr[v] then
      fail(format("table '%s' is already defined (line %s)", name, line_of(hdr[v])), kp[n])
    elseif frozen[v] or dotted[v] then
      fail(format("table '%s' is already defined by %s at line %s", name,
        frozen[v] and 'an inline table' or 'dotted keys', first_line(t, k)), kp[n])
    end
    hdr[v] = start
    cur, cur_name = v, name
  end
end

local function parse_document()
  check_utf8()
  root = new_table(0)
  cur, cur_name = root, ''
  pos = sub(src, 1, 3) == '\239\187\191' and 4 or 1
  while true do
    local b = skip_ws()
    if b == nil then break end
    if b == 10 then
      pos = pos + 1
    elseif b == 13 then
      if byte(src, pos + 1) ~= 10 then fail_control(pos) end
      pos = pos + 2
    elseif b == 35 then
      skip_comment()
    elseif b == 91 then
      parse_header()
      end_of_line('table header')
    else
      parse_keyval(cur, cur_name)
      end_of_line('value')
    end
  end
  return root
end

-- The loops below step with next() on purpose: a pairs() loop is compiled as BC_ITERN, which
-- the LuaJIT in Debian 12 (2.1.0~beta3+git20220320) miscompiles when such loops nest and run
-- hot (LuaJIT issue #827, fixed upstream in 1cdff194 and follow-ups): iteration stops early,
-- and the fuzzer also saw crashes in the generated code. next() takes another, correct path.
local function convert_positions()
  local out = setmetatable({}, {__mode = 'k'})
  local t, m = next(kpos)
  while t ~= nil do
    local o = {}
    local k, p = next(m)
    while k ~= nil do
      local l, c = linecol(p)
      o[k] = {line = l, col = c}
      k, p = next(m, k)
    end
    out[t] = o
    t, m = next(kpos, t)
  end
  return out
end

local function reset(text)
  src, len, pos = text, text and #text, 1
  lines, lc_line, lc_pos, lc_col = nil, nil, nil, nil
  err_msg, err_pos = nil, nil
  if text then
    kpos, hdr, frozen, dotted, level = {}, {}, {}, {}, {}
  else
    kpos, hdr, frozen, dotted, level = nil, nil, nil, nil, nil
  end
  section, root, cur, cur_name = 0, nil, nil, nil
end

---------------------------------------------------------------------------------------------------
-- Public API

--- Decode TOML text. Returns table [, positions] or nil, "line:col: message".
function M.decode(text, opts)
  if type(text) ~= 'string' then
    error('toml.decode: expected a string, got ' .. type(text), 2)
  end
  if opts ~= nil and type(opts) ~= 'table' then
    error('toml.decode: opts must be a table, got ' .. type(opts), 2)
  end
  reset(text)
  local ok, res = pcall(parse_document)
  if not ok then
    if res ~= ERR then
      reset(nil)
      error(res, 0)
    end
    local l, c = linecol(err_pos)
    local msg = l .. ':' .. c .. ': ' .. err_msg
    if opts and opts.source then msg = tostring(opts.source) .. ':' .. msg end
    reset(nil)
    return nil, msg
  end
  local positions
  if opts and opts.positions then positions = convert_positions() end
  reset(nil)
  return res, positions
end

--- Decode a TOML file. Errors name the file.
function M.decode_file(path, opts)
  if type(path) ~= 'string' then
    error('toml.decode_file: expected a path string, got ' .. type(path), 2)
  end
  if opts ~= nil and type(opts) ~= 'table' then
    error('toml.decode_file: opts must be a table, got ' .. type(opts), 2)
  end
  local f, err = io_open(path, 'rb')
  if not f then return nil, err end
  local text, rerr = f:read('*a')
  f:close()
  if not text then return nil, path .. ': ' .. tostring(rerr) end
  local o = {source = path}
  if opts then
    for k, v in pairs(opts) do o[k] = v end
    if o.source == nil then o.source = path end
  end
  return M.decode(text, o)
end

return M
