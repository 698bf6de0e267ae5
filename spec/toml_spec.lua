-- Spec for tunnel.toml: the toml-test conformance suite (TOML 1.0 files) plus unit tests.
-- Run from the repository root: busted --lua=luajit spec/toml_spec.lua

package.path = './lua/?.lua;./lua/?/init.lua;' .. package.path

local toml = require 'tunnel.toml'

---------------------------------------------------------------------------------------------------
-- Helpers

local function read_file(path)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local s = f:read('*a')
  f:close()
  return s
end

local function file_exists(path)
  local f = io.open(path, 'rb')
  if f then f:close() end
  return f ~= nil
end

-- Directory holding files-toml-1.0.0, valid/ and invalid/, or nil.
local function find_suite()
  local candidates = {}
  local env = os.getenv('TOML_TEST_DIR')
  if env and env ~= '' then
    candidates[#candidates + 1] = env .. '/tests'
    candidates[#candidates + 1] = env
  end
  candidates[#candidates + 1] = '../shared/vectors/toml-test/tests'
  for _, dir in ipairs(candidates) do
    if file_exists(dir .. '/files-toml-1.0.0') then return dir end
  end
  return nil
end

-- Minimal JSON decoder; arrays get JSON_ARRAY as metatable so [] and {} differ.
local JSON_ARRAY = {}

local function json_decode(s)
  local pos = 1
  local value

  local function ws()
    pos = s:find('[^ \t\r\n]', pos) or #s + 1
  end

  local function utf8(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then
      return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
    end
    if cp < 0x10000 then
      return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64,
        0x80 + cp % 64)
    end
    return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
      0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end

  local simple = {b = '\b', f = '\f', n = '\n', r = '\r', t = '\t', ['"'] = '"',
    ['\\'] = '\\', ['/'] = '/'}

  local function str()
    pos = pos + 1
    local buf = {}
    while true do
      local q = s:find('["\\]', pos)
      assert(q, 'json: unterminated string')
      buf[#buf + 1] = s:sub(pos, q - 1)
      if s:sub(q, q) == '"' then
        pos = q + 1
        return table.concat(buf)
      end
      local e = s:sub(q + 1, q + 1)
      if e == 'u' then
        local cp = tonumber(s:sub(q + 2, q + 5), 16)
        pos = q + 6
        if cp >= 0xD800 and cp <= 0xDBFF and s:sub(pos, pos + 1) == '\\u' then
          local lo = tonumber(s:sub(pos + 2, pos + 5), 16)
          cp = 0x10000 + (cp - 0xD800) * 1024 + (lo - 0xDC00)
          pos = pos + 6
        end
        buf[#buf + 1] = utf8(cp)
      else
        buf[#buf + 1] = assert(simple[e], 'json: bad escape')
        pos = q + 2
      end
    end
  end

  value = function()
    ws()
    local c = s:sub(pos, pos)
    if c == '{' then
      local t = {}
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == '}' then
        pos = pos + 1
        return t
      end
      while true do
        ws()
        local k = str()
        ws()
        assert(s:sub(pos, pos) == ':', 'json: expected :')
        pos = pos + 1
        t[k] = value()
        ws()
        c = s:sub(pos, pos)
        pos = pos + 1
        if c == '}' then return t end
        assert(c == ',', 'json: expected , or }')
      end
    elseif c == '[' then
      local t = setmetatable({}, JSON_ARRAY)
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == ']' then
        pos = pos + 1
        return t
      end
      while true do
        t[#t + 1] = value()
        ws()
        c = s:sub(pos, pos)
        pos = pos + 1
        if c == ']' then return t end
        assert(c == ',', 'json: expected , or ]')
      end
    elseif c == '"' then
      return str()
    elseif s:sub(pos, pos + 3) == 'true' then
      pos = pos + 4
      return true
    elseif s:sub(pos, pos + 4) == 'false' then
      pos = pos + 5
      return false
    end
    local num = s:match('^-?%d+%.?%d*[eE]?[-+]?%d*', pos)
    assert(num, 'json: unexpected ' .. c)
    pos = pos + #num
    return tonumber(num)
  end

  local v = value()
  ws()
  assert(pos > #s, 'json: trailing data')
  return v
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function is_tagged(e)
  return getmetatable(e) == nil and count(e) == 2 and type(e.type) == 'string' and
    type(e.value) == 'string'
end

local function describe_value(a)
  if toml.is_array(a) then return 'array' end
  if toml.is_datetime(a) then return 'datetime ' .. tostring(a) end
  if type(a) == 'string' then return string.format('string %q', a) end
  return type(a) .. ' ' .. tostring(a)
end

-- Decimal text of an integer result (Lua number or int64 cdata).
local function int_text(a)
  if type(a) == 'number' then
    if a ~= a or a == math.huge or a == -math.huge or a ~= math.floor(a) then return nil end
    if a == 0 then return '0' end
    return string.format('%.0f', a)
  elseif type(a) == 'cdata' then
    return (tostring(a):gsub('U?LL$', ''))
  end
  return nil
end

local function norm_int(s)
  s = s:gsub('^%+', '')
  if s == '-0' then s = '0' end
  return s
end

-- Normalised RFC 3339 text: 'T' separator, '+00:00' for UTC, no trailing fraction zeros.
local function norm_datetime(s)
  s = s:gsub('^(%d%d%d%d%-%d%d%-%d%d)[Tt ]', '%1T')
  s = s:gsub('[zZ]$', '+00:00'):gsub('%-00:00$', '+00:00')
  s = s:gsub('%.(%d+)', function(f)
    f = f:gsub('0+$', '')
    return f == '' and '' or '.' .. f
  end)
  return s
end

local DT_KINDS = {
  ['datetime'] = 'offset-datetime',
  ['datetime-local'] = 'local-datetime',
  ['date-local'] = 'local-date',
  ['time-local'] = 'local-time',
}

local function compare_scalar(a, e, path)
  local ty, ev = e.type, e.value
  local bad = string.format('%s: expected %s %s, got %s', path, ty, ev, describe_value(a))
  if ty == 'string' then
    if a ~= ev then return bad end
  elseif ty == 'bool' then
    if a ~= (ev == 'true') then return bad end
  elseif ty == 'integer' then
    if int_text(a) ~= norm_int(ev) then return bad end
  elseif ty == 'float' then
    if type(a) ~= 'number' then return bad end
    local v = ev:gsub('^%+', '')
    if v == 'nan' or v == '-nan' then
      if a == a then return bad end
    elseif v == 'inf' then
      if a ~= math.huge then return bad end
    elseif v == '-inf' then
      if a ~= -math.huge then return bad end
    else
      local n = tonumber(v)
      if a ~= n or (n == 0 and 1 / a ~= 1 / n) then return bad end
    end
  elseif DT_KINDS[ty] then
    if not toml.is_datetime(a) or a.kind ~= DT_KINDS[ty] or
      norm_datetime(tostring(a)) ~= norm_datetime(ev) then
      return bad
    end
  else
    return path .. ': unknown type tag ' .. tostring(ty)
  end
  return nil
end

local function compare(a, e, path)
  if getmetatable(e) == JSON_ARRAY then
    if not toml.is_array(a) then return path .. ': expected array, got ' .. describe_value(a) end
    if #a ~= #e then return string.format('%s: expected %d elements, got %d', path, #e, #a) end
    for i = 1, #e do
      local err = compare(a[i], e[i], path .. '[' .. i .. ']')
      if err then return err end
    end
    return nil
  end
  if is_tagged(e) then return compare_scalar(a, e, path) end
  if type(a) ~= 'table' or getmetatable(a) ~= nil then
    return path .. ': expected table, got ' .. describe_value(a)
  end
  for k, ev in pairs(e) do
    if a[k] == nil then return path .. ': missing key ' .. string.format('%q', k) end
    local err = compare(a[k], ev, path .. '.' .. k)
    if err then return err end
  end
  for k in pairs(a) do
    if e[k] == nil then return path .. ': unexpected key ' .. string.format('%q', tostring(k)) end
  end
  return nil
end

---------------------------------------------------------------------------------------------------
-- Conformance suite

describe('toml-test (TOML 1.0.0)', function()
  local dir = find_suite()
  if not dir then
    pending('toml-test suite not found (set TOML_TEST_DIR or place it at '
      .. '../shared/vectors/toml-test)')
    return
  end

  for line in io.lines(dir .. '/files-toml-1.0.0') do
    local rel = line:gsub('%s+$', '')
    if rel:match('^valid/.*%.toml$') then
      it(rel, function()
        local text = assert(read_file(dir .. '/' .. rel), 'cannot read ' .. rel)
        local json = assert(read_file(dir .. '/' .. rel:gsub('%.toml$', '.json')),
          'cannot read json for ' .. rel)
        local ok, t, err = pcall(toml.decode, text)
        assert(ok, 'decoder raised: ' .. tostring(t))
        assert(t ~= nil, 'rejected valid input: ' .. tostring(err))
        local diff = compare(t, json_decode(json), '$')
        assert(diff == nil, diff)
      end)
    elseif rel:match('^invalid/.*%.toml$') then
      it(rel, function()
        local text = assert(read_file(dir .. '/' .. rel), 'cannot read ' .. rel)
        local ok, t, err = pcall(toml.decode, text)
        assert(ok, 'decoder raised: ' .. tostring(t))
        assert(t == nil, 'accepted invalid input')
        assert(type(err) == 'string' and err:match('^%d+:%d+: .'),
          'bad error message: ' .. tostring(err))
      end)
    end
  end
end)

---------------------------------------------------------------------------------------------------
-- Unit tests

describe('tunnel.toml', function()
  local function fails(text, expected)
    local t, err = toml.decode(text)
    assert.is_nil(t)
    assert.are.equal(expected, err)
  end

  describe('error messages', function()
    it('reports duplicate keys with the first definition', function()
      fails('port = 1\nhost = "x"\n  port = 2\n',
        "3:3: duplicate key 'port' (first defined at line 1)")
      fails('a.b = 1\na.b = 2', "2:3: duplicate key 'a.b' (first defined at line 1)")
      fails('t = {x = 1, x = 2}', "1:13: duplicate key 'x' (first defined at line 1)")
    end)

    it("reports a missing '='", function()
      fails('\n\n\n\nname "x"', "5:6: expected '=' after key 'name', found '\"'")
      fails('key\n', "1:4: expected '=' after key 'key', found end of line")
    end)

    it('reports unterminated strings at the opening quote', function()
      fails('a = 1\nb = "abc\nc = 2', '2:5: unterminated string (line ended before the '
        .. 'closing quote)')
      fails("s = 'abc", '1:5: unterminated string')
      fails('s = """abc\n\n', '1:5: unterminated multi-line string')
    end)

    it('reports bad escapes', function()
      fails('s = "a\\qb"', '1:7: invalid escape sequence \\q')
      fails('s = "\\uD800"', '1:6: \\uD800 is not a Unicode scalar value')
      fails('s = "\\u12"', '1:6: \\u escape needs exactly 4 hex digits')
      fails('s = "\\x41"', '1:6: invalid escape sequence \\x')
    end)

    it('reports table redefinition', function()
      fails('[a]\nx = 1\n\n[a]\n', "4:2: table 'a' is already defined (line 1)")
      fails('[t]\ns.v = 0\n[t.s]\n', "3:4: table 't.s' is already defined by dotted keys at line 2")
      fails('a = 1\n[a]', "2:2: cannot define table 'a': key is already a number (line 1)")
      fails('[a.b]\n[a]\nb.c = 1', "3:1: cannot add keys to table 'a.b' with dotted keys: it "
        .. 'was defined by a [table] header at line 1')
      fails('a = [1]\n[[a]]', "2:3: cannot define array of tables 'a': key is already an "
        .. 'array (line 1)')
    end)

    it('counts columns in characters and handles CRLF', function()
      fails('s = "é" x', "1:9: expected end of line after value, found 'x'")
      fails('a = 1\r\nb = 2 3\r\n', "2:7: expected end of line after value, found '3'")
    end)

    it('reports other errors with positions', function()
      fails('a = 0123', "1:5: leading zeros are not allowed in '0123'")
      fails('a = 9223372036854775808', '1:5: integer out of 64-bit range')
      fails('a = 2021-02-29', '1:5: date out of range')
      fails('a = {x = 1,}', '1:12: trailing comma is not allowed in an inline table')
      fails('a = [1, 2', "1:5: unterminated array (missing ']')")
      fails('# \1\n', '1:3: control character U+0001 is not allowed here')
      fails('a = "\255"', '1:6: invalid UTF-8 byte 0xFF')
      fails('a = tru', "1:5: invalid value 'tru'")
    end)

    it('prefixes opts.source', function()
      local t, err = toml.decode('x = ', {source = 'server.toml'})
      assert.is_nil(t)
      assert.are.equal('server.toml:1:5: expected a value, found end of input', err)
    end)

    it('raises on misuse only', function()
      assert.has_error(function() toml.decode(42) end)
      assert.has_error(function() toml.decode('a = 1', 'x') end)
      assert.has_error(function() toml.decode_file(nil) end)
    end)
  end)

  describe('values', function()
    it('decodes scalars, arrays and tables', function()
      local t = assert(toml.decode([==[
str = "a\tb \u00e9 \U0001F600"
lit = 'C:\path'
ml = """
one \
  two"""
int = -17
hex = 0xDEAD_BEEF
oct = 0o755
bin = 0b1101
flt = 6.626e-34
inf = -inf
nan = nan
negzero = -0.0
yes = true
empty = []
nested = [[1, 2], ["a"]]
[tbl]
inline = { x = 1, y.z = 2 }
[[aot]]
n = 1
[[aot]]
n = 2
]==]))
      assert.are.equal('a\tb \195\169 \240\159\152\128', t.str)
      assert.are.equal('C:\\path', t.lit)
      assert.are.equal('one two', t.ml)
      assert.are.equal(-17, t.int)
      assert.are.equal(0xDEADBEEF, t.hex)
      assert.are.equal(493, t.oct)
      assert.are.equal(13, t.bin)
      assert.are.equal(6.626e-34, t.flt)
      assert.are.equal(-math.huge, t.inf)
      assert.is_true(t.nan ~= t.nan)
      assert.are.equal(-math.huge, 1 / t.negzero)
      assert.is_true(t.yes)
      assert.is_true(toml.is_array(t.empty))
      assert.are.equal(0, #t.empty)
      assert.is_false(toml.is_array(t.tbl))
      assert.are.equal(2, t.nested[1][2])
      assert.are.equal(2, t.tbl.inline.y.z)
      assert.are.equal(2, #t.aot)
      assert.are.equal(2, t.aot[2].n)
      assert.are.equal(toml.array_mt, getmetatable(t.aot))
    end)

    it('keeps large integers exact as int64 cdata', function()
      local t = assert(toml.decode(table.concat({
        'max = 9223372036854775807',
        'min = -9223372036854775808',
        'big = 9007199254740993',
        'edge = 9007199254740992',
        'hex = 0x7FFFFFFFFFFFFFFF',
      }, '\n')))
      assert.are.equal('cdata', type(t.max))
      assert.are.equal('9223372036854775807LL', tostring(t.max))
      assert.are.equal('-9223372036854775808LL', tostring(t.min))
      assert.are.equal('9007199254740993LL', tostring(t.big))
      assert.are.equal('number', type(t.edge))
      assert.are.equal(2 ^ 53, t.edge)
      assert.are.equal('9223372036854775807LL', tostring(t.hex))
      assert.is_nil((toml.decode('x = 0x8000000000000000')))
      assert.is_nil((toml.decode('x = -9223372036854775809')))
    end)

    it('represents date-times', function()
      local t = assert(toml.decode(table.concat({
        'odt = 1979-05-27T07:32:00.999999-07:00',
        'utc = 1979-05-27 07:32:00z',
        'ldt = 1979-05-27T07:32:00',
        'ld = 1979-05-27',
        'lt = 00:32:00.5',
      }, '\n')))
      assert.is_true(toml.is_datetime(t.odt))
      assert.are.equal('offset-datetime', t.odt.kind)
      assert.are.equal(-420, t.odt.offset)
      assert.are.equal('999999', t.odt.frac)
      assert.are.equal(1979, t.odt.year)
      assert.are.equal(32, t.odt.min)
      assert.are.equal('1979-05-27T07:32:00.999999-07:00', tostring(t.odt))
      assert.are.equal('1979-05-27T07:32:00Z', tostring(t.utc))
      assert.are.equal('local-datetime', t.ldt.kind)
      assert.are.equal('1979-05-27T07:32:00', tostring(t.ldt))
      assert.are.equal('local-date', t.ld.kind)
      assert.are.equal('1979-05-27', tostring(t.ld))
      assert.is_nil(t.ld.hour)
      assert.are.equal('local-time', t.lt.kind)
      assert.are.equal('00:32:00.5', tostring(t.lt))
      assert.is_nil(t.lt.year)
      assert.is_false(toml.is_datetime({}))
    end)
  end)

  describe('positions', function()
    it('maps each table to key positions', function()
      local text = table.concat({
        'title = "x"',
        '[server]',
        '  port = 80',
        '  tls.cert = "c"',
        '[[peer]]',
        'name = "é"',
        'list = [1,',
        '  2]',
      }, '\n')
      local t, pos = toml.decode(text, {positions = true})
      assert.is_table(t)
      assert.are.equal('k', getmetatable(pos).__mode)
      assert.are.same({line = 1, col = 1}, pos[t].title)
      assert.are.same({line = 2, col = 2}, pos[t].server)
      assert.are.same({line = 3, col = 3}, pos[t.server].port)
      assert.are.same({line = 4, col = 3}, pos[t.server].tls)
      assert.are.same({line = 4, col = 7}, pos[t.server.tls].cert)
      assert.are.same({line = 5, col = 3}, pos[t].peer)
      assert.are.same({line = 5, col = 3}, pos[t.peer][1])
      assert.are.same({line = 6, col = 1}, pos[t.peer[1]].name)
      assert.are.same({line = 7, col = 1}, pos[t.peer[1]].list)
      assert.are.same({line = 8, col = 3}, pos[t.peer[1].list][2])
    end)

    it('counts columns in characters', function()
      local t, pos = toml.decode('a = { "é" = 1, b = 2 }', {positions = true})
      assert.are.same({line = 1, col = 7}, pos[t.a]['é'])
      assert.are.same({line = 1, col = 16}, pos[t.a].b)
    end)

    it('returns no positions unless asked', function()
      local t, pos = toml.decode('a = 1')
      assert.are.equal(1, t.a)
      assert.is_nil(pos)
    end)
  end)

  describe('decode_file', function()
    local tmp = os.tmpname()

    teardown(function() os.remove(tmp) end)

    it('decodes a file', function()
      local f = assert(io.open(tmp, 'wb'))
      f:write('[a]\nb = "c"\n')
      f:close()
      local t = assert(toml.decode_file(tmp))
      assert.are.equal('c', t.a.b)
    end)

    it('names the file in parse errors', function()
      local f = assert(io.open(tmp, 'wb'))
      f:write('[a]\nb = \n')
      f:close()
      local t, err = toml.decode_file(tmp)
      assert.is_nil(t)
      assert.are.equal(tmp .. ':2:5: expected a value, found end of line', err)
    end)

    it('names the file when it cannot be opened', function()
      local path = tmp .. '.does-not-exist.toml'
      local t, err = toml.decode_file(path)
      assert.is_nil(t)
      assert.is_string(err)
      assert.truthy(err:find(path, 1, true))
    end)
  end)
end)
