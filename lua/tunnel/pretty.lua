--- Pretty printer for REPL results (see docs/api/tunnel.repl.md).
--
--   pretty.format({ 1, 2, name = "x" })   --> '{ 1, 2, name = "x" }'
--   pretty.format(1, nil, "a")            --> '1\tnil\t"a"'
--   pretty.value(t, { depth = 2 })        -- one value, with limits
local M = {}

local type, tostring, pairs, next, select = type, tostring, pairs, next, select
local format, rep, concat, sort = string.format, string.rep, table.concat, table.sort
local floor, huge = math.floor, math.huge
local getmetatable, rawget, pcall = getmetatable, rawget, pcall

local DEFAULTS = {
  depth = 8, -- nesting shown before a table turns into {...}
  items = 500, -- entries shown per table
  string = 4096, -- bytes shown of a string nested in a table
  length = 1024 * 1024, -- total characters, then "<output truncated>"
  width = 80, -- a table that fits in this many columns stays on one line
  indent = "  ",
}
M.defaults = DEFAULTS

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
  repeat return then true until while]]):gmatch("%a+") do
  KEYWORDS[w] = true
end

local ESCAPES = {
  ["\\"] = "\\\\",
  ['"'] = '\\"',
  ["\n"] = "\\n",
  ["\r"] = "\\r",
  ["\t"] = "\\t",
  ["\a"] = "\\a",
  ["\b"] = "\\b",
  ["\f"] = "\\f",
  ["\v"] = "\\v",
}

--- Quote a string the way Lua source would, keeping printable bytes (UTF-8 included) as
-- they are. `limit` (optional) cuts long strings and says how much was left out.
function M.quote(s, limit)
  local cut = ""
  if limit and #s > limit then
    cut = format("...(%d more bytes)", #s - limit)
    s = s:sub(1, limit)
  end
  s = s:gsub('[%c\\"]', function(c)
    return ESCAPES[c] or format("\\%03d", c:byte())
  end)
  return '"' .. s .. '"' .. cut
end

local function number(n)
  if n ~= n then
    return "nan"
  elseif n == huge then
    return "inf"
  elseif n == -huge then
    return "-inf"
  elseif floor(n) == n and n > -1e16 and n < 1e16 then
    return format("%d", n)
  end
  local s = tostring(n)
  if tonumber(s) ~= n then
    s = format("%.17g", n) -- tostring rounds to 14 digits; show the exact value
  end
  return s
end

-- tostring that survives a failing __tostring.
local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then
    return s
  end
  return "<" .. type(v) .. ": __tostring failed>"
end

local function has_tostring(t)
  local mt = getmetatable(t)
  return type(mt) == "table" and rawget(mt, "__tostring") ~= nil
end

local KEY_ORDER = { number = 1, string = 2, boolean = 3 }

-- Numbers first, then strings, then booleans, then anything else (by type, then text).
local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    local oa, ob = KEY_ORDER[ta] or 4, KEY_ORDER[tb] or 4
    if oa ~= ob then
      return oa < ob
    end
    return ta < tb
  end
  if ta == "number" or ta == "string" then
    return a < b
  elseif ta == "boolean" then
    return not a and b
  end
  return safe_tostring(a) < safe_tostring(b)
end

local function key_text(k, scalar)
  if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then
    return k
  end
  return "[" .. scalar(k) .. "]"
end

local function new_printer(opts)
  local o = {}
  for k, v in pairs(DEFAULTS) do
    o[k] = v
  end
  if opts then
    for k, v in pairs(opts) do
      if DEFAULTS[k] == nil then
        error("pretty: unknown option '" .. tostring(k) .. "'", 3)
      end
      o[k] = v
    end
  end
  local budget = o.length
  local truncated = false

  local function scalar(v, nested)
    local tv = type(v)
    if tv == "string" then
      return M.quote(v, nested and o.string or o.length)
    elseif tv == "number" then
      return number(v)
    elseif tv == "nil" or tv == "boolean" then
      return tostring(v)
    end
    return safe_tostring(v)
  end

  local render
  -- Returns the text of `t` at nesting `level`; `open` holds the tables being printed
  -- (a table met again while it is open is a cycle). Contents are read raw: metamethods
  -- such as __index never run while printing.
  local function render_table(t, level, open)
    if open[t] then
      return "<cycle>"
    end
    if has_tostring(t) then
      return safe_tostring(t)
    end
    if next(t) == nil then
      return "{}"
    end
    if level >= o.depth then
      return "{...}"
    end
    open[t] = true
    local parts, shown, total = {}, 0, 0
    local n = 0
    while rawget(t, n + 1) ~= nil do
      n = n + 1
    end
    local nseq = 0 -- parts[1..nseq] are sequence items
    for i = 1, n do
      total = total + 1
      if shown < o.items and budget > 0 then
        local s = render(rawget(t, i), level + 1, open)
        parts[#parts + 1] = s
        budget = budget - #s
        shown = shown + 1
        nseq = shown
      end
    end
    local keys = {}
    for k in next, t do
      if not (type(k) == "number" and k >= 1 and k <= n and floor(k) == k) then
        keys[#keys + 1] = k
      end
    end
    sort(keys, key_less)
    for _, k in ipairs(keys) do
      total = total + 1
      if shown < o.items and budget > 0 then
        local s = key_text(k, scalar) .. " = " .. render(rawget(t, k), level + 1, open)
        parts[#parts + 1] = s
        budget = budget - #s
        shown = shown + 1
      end
    end
    open[t] = nil
    if total > shown then
      if budget <= 0 then
        truncated = true
      end
      parts[#parts + 1] = format("...(%d more)", total - shown)
    end
    local one = "{ " .. concat(parts, ", ") .. " }"
    local pad = rep(o.indent, level + 1)
    if #one + #pad <= o.width and not one:find("\n", 1, true) then
      return one
    end
    -- One entry per line, except that runs of short sequence items share lines.
    local lines, cur = {}, nil
    for i, s in ipairs(parts) do
      local short = i <= nseq and not s:find("\n", 1, true)
      if short and cur and #pad + #cur + 2 + #s <= o.width then
        cur = cur .. ", " .. s
      else
        if cur then
          lines[#lines + 1] = cur
        end
        cur = s
      end
      if not short then
        lines[#lines + 1] = cur
        cur = nil
      end
    end
    lines[#lines + 1] = cur
    return "{\n" .. pad .. concat(lines, ",\n" .. pad) .. "\n" .. rep(o.indent, level) .. "}"
  end

  function render(v, level, open)
    if type(v) == "table" then
      return render_table(v, level, open)
    end
    return scalar(v, level > 0)
  end

  return function(v)
    local s = render(v, 0, {})
    if truncated or budget < 0 then
      s = s .. "\n<output truncated>"
    end
    return s
  end
end

--- Text of one value. `opts` may set depth, items, string, length, width and indent.
function M.value(v, opts)
  return new_printer(opts)(v)
end

--- Text of every argument: separated by tabs when each fits on one line, by newlines
-- otherwise. No arguments give "".
function M.format(...)
  local n = select("#", ...)
  local parts, multiline = {}, false
  for i = 1, n do
    local s = new_printer()((select(i, ...)))
    parts[i] = s
    multiline = multiline or s:find("\n", 1, true) ~= nil
  end
  return concat(parts, multiline and "\n" or "\t")
end

--- Like format, but from a table packed with n (as returned by table.pack / repl results).
function M.packed(t)
  return M.format(unpack(t, 1, t.n or #t))
end

return M
