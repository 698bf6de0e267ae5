--- The REPL evaluation engine, shared by `tunnel repl` and the control socket
-- (see docs/api/tunnel.repl.md).
--
--   local repl = require "tunnel.repl"
--   local s = repl.session()
--   local r = s:eval("x = 41")            --> { ok = true, result = "", out = "", ... }
--   r = s:eval("return x + 1")            --> { ok = true, result = "42", ... }
--   r = s:eval("for i = 1, 3 do")         --> { incomplete = true }
--   repl.add_helper("peers", function() ... end, "list connected peers")
local uv = require "luv"
local pretty = require "tunnel.pretty"
local log = require "tunnel.log"
local core_log = require "tunnel.core.log"
local core_host = require "tunnel.core.host"

local M = {}

local type, tostring, select, pcall, xpcall = type, tostring, select, pcall, xpcall
local format, concat = string.format, table.concat

--- Most bytes of print() output kept from one evaluation.
M.MAX_OUTPUT = 1024 * 1024

local loaded_at = uv.hrtime()

local function pack(...)
  return { n = select("#", ...), ... }
end

-- A syntax error that could go away with more input: the parser ran out of text.
-- A quoted string cannot go on to the next line, so an open one is an error, not a reason to
-- wait for more.
local function at_eof(err)
  return type(err) == "string" and (err:sub(-5) == "<eof>" or err:sub(-7) == "'<eof>'")
    and not err:find("unfinished string", 1, true)
end

--- Compile `code` for the REPL: as an expression first (`return <code>`), then as a chunk.
-- Returns fn, or nil, message, incomplete (true when more lines could complete the code).
function M.compile(code, chunkname)
  if type(code) ~= "string" then
    error("repl.compile: code must be a string", 2)
  end
  chunkname = chunkname or "=repl"
  local fn, rerr = loadstring("return " .. code, chunkname)
  if fn then
    -- Same expression list, but not a tail call, so the chunk's frame (and the line of an
    -- error) shows in tracebacks. The newline keeps a trailing comment from eating the ")".
    return loadstring("return select(1, " .. code .. "\n)", chunkname) or fn
  end
  local err
  fn, err = loadstring(code, chunkname)
  if fn then
    return fn
  end
  return nil, err, at_eof(err) or at_eof(rerr)
end

--- True when `code` is an unfinished statement or expression (more lines are needed).
function M.incomplete(code)
  local _, _, inc = M.compile(code)
  return inc == true
end

-- Helpers visible in every session's environment (never in _G).
local helpers, helper_order = {}, {}
local stats_fns, stats_order = {}, {}

local function check_name(name, what)
  if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
    error(what .. ": name must be a Lua identifier, got " .. tostring(name), 3)
  end
end

--- Make `fn` callable as `name(...)` in every REPL session (local and attached).
-- `doc` is the one-line description shown by help().
function M.add_helper(name, fn, doc)
  check_name(name, "repl.add_helper")
  if type(fn) ~= "function" then
    error("repl.add_helper: fn must be a function", 2)
  end
  if doc ~= nil and type(doc) ~= "string" then
    error("repl.add_helper: doc must be a string", 2)
  end
  if not helpers[name] then
    helper_order[#helper_order + 1] = name
  end
  helpers[name] = { fn = fn, doc = doc or "" }
end

--- Add a section to stats(): `fn()` is called each time and its value shown under `name`.
function M.add_stats(name, fn)
  check_name(name, "repl.add_stats")
  if type(fn) ~= "function" then
    error("repl.add_stats: fn must be a function", 2)
  end
  if not stats_fns[name] then
    stats_order[#stats_order + 1] = name
  end
  stats_fns[name] = fn
end

--- The registered helpers: a list of { name = , doc = } in registration order.
function M.helpers()
  local list = {}
  for i, name in ipairs(helper_order) do
    list[i] = { name = name, doc = helpers[name].doc }
  end
  return list
end

-- Seconds since the process started (from /proc), or since this module was loaded.
local function uptime()
  local f = io.open("/proc/self/stat", "r")
  if f then
    local s = f:read("*a")
    f:close()
    local rest = s and s:match("%) (.*)$")
    if rest then
      local fields = {}
      for w in rest:gmatch("%S+") do
        fields[#fields + 1] = w
      end
      -- Field 22 (starttime, in clock ticks of 1/100 s) is the 20th after the command name.
      local start = tonumber(fields[20])
      local up = uv.uptime()
      if start and up and up >= start / 100 then
        return math.floor((up - start / 100) * 10 + 0.5) / 10
      end
    end
  end
  return math.floor((uv.hrtime() - loaded_at) / 1e8) / 10
end

--- The table stats() returns.
function M.stats()
  local s = {
    pid = uv.os_getpid(),
    version = core_host.versions().tunnel,
    uptime = uptime(),
    rss = uv.resident_set_memory(),
    lua_memory = math.floor(collectgarbage("count") * 1024),
    log_levels = core_log.groups(),
    busy_poll = core_host.busy_poll(),
  }
  for _, name in ipairs(stats_order) do
    local ok, v = pcall(stats_fns[name])
    s[name] = ok and v or ("error: " .. tostring(v))
  end
  return s
end

-- The message inside "bad argument #2 to 'set_level' (unknown log level ...)".
local function clean(err)
  err = tostring(err)
  return err:match("^[^(]-%((.*)%)$") or err:gsub("^.-:%d+: ", "")
end

--- log_level(group[, level]): the level of `group`, or set it. "*" (or no group) means every
-- group: getting returns a table of all levels. Unknown levels raise an error.
function M.log_level(group, level)
  if group ~= nil and type(group) ~= "string" then
    error("log_level: group must be a string such as \"quic\" or \"*\"", 2)
  end
  local all = group == nil or group == "*"
  if level ~= nil then
    local ok, err = pcall(core_log.set_level, all and "*" or group, level)
    if not ok then
      error("log_level: " .. clean(err), 2)
    end
    log.group("ctl").info("log level of %s set to %s", all and "every group" or group, level)
  end
  if all then
    return core_log.groups()
  end
  local ok, lvl = pcall(core_log.get_level, group)
  if not ok then
    error("log_level: " .. clean(lvl) .. " (see log_level() for the list)", 2)
  end
  return lvl
end

--- help(): prints the helpers available in the REPL.
function M.help()
  local lines = {
    (jit and jit.version or _VERSION) .. " inside tunnel " .. core_host.versions().tunnel
      .. ". Type Lua statements or expressions; results are pretty-printed.",
    "Variables you set stay in this session and never become globals (use _G.x for that).",
    "",
    "Helpers:",
  }
  -- A doc may start with its usage, "name(args): text"; that goes in the first column.
  local rows, width = {}, 0
  for i, name in ipairs(helper_order) do
    local doc = helpers[name].doc
    local usage, text = doc:match("^(" .. name .. "%b()):%s*(.*)$")
    rows[i] = { usage or name .. "()", text or doc }
    width = math.max(width, #rows[i][1])
  end
  for _, row in ipairs(rows) do
    lines[#lines + 1] = format("  %-" .. width .. "s  %s", row[1], row[2])
  end
  print(concat(lines, "\n"))
end

M.add_helper("help", M.help, "this list")
M.add_helper("stats", M.stats,
  "pid, uptime (s), rss and Lua memory (bytes), log levels, and more")
M.add_helper("log_level", M.log_level,
  "log_level(group[, level]): get or set a log level; \"*\" means every group")

local function frame_text(info)
  local where = info.what == "C" and "[C]" or (info.short_src .. ":" .. (info.currentline or "?"))
  if info.what == "main" then
    return where .. ": in main chunk"
  elseif info.name then
    return where .. ": in function '" .. info.name .. "'"
  elseif info.what == "C" then
    return where .. ": ?"
  end
  return where .. ": in function <" .. info.short_src .. ":" .. info.linedefined .. ">"
end

-- "msg\nstack traceback:..." from the frame that raised the error down to the evaluated chunk
-- `fn`: the frames below it are the REPL's own machinery and only noise.
local MAX_FRAMES = 40
local function traceback(msg, fn, level)
  local lines = { msg, "stack traceback:" }
  local n = 0
  while true do
    local info = debug.getinfo(level, "Slnf")
    if not info or info.func == xpcall then
      break -- a tail call hid the chunk's frame; xpcall is ours
    end
    n = n + 1
    if n <= MAX_FRAMES then
      lines[#lines + 1] = "\t" .. frame_text(info)
    elseif n == MAX_FRAMES + 1 then
      lines[#lines + 1] = "\t..."
    end
    if info.func == fn then
      break
    end
    level = level + 1
  end
  return concat(lines, "\n")
end

local EXIT = {} -- marks the exit sentinel of os.exit()/tunnel.exit() raised by evaluated code

local Session = {}
Session.__index = Session

--- A REPL session: its own environment whose lookups fall back to the helpers, then _G.
-- opts: name (shown in tostring), chunkname (default "=repl").
function M.session(opts)
  opts = opts or {}
  for k in pairs(opts) do
    if k ~= "name" and k ~= "chunkname" then
      error("repl.session: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  local env = setmetatable({}, {
    __index = function(_, k)
      local h = helpers[k]
      if h then
        return h.fn
      end
      return _G[k]
    end,
  })
  return setmetatable({
    env = env,
    name = opts.name or "repl",
    chunkname = opts.chunkname or "=repl",
  }, Session)
end

function Session:__tostring()
  return "repl.session: " .. self.name
end

--- Evaluate `code` in the session. Returns a table:
--   { incomplete = true }                       more lines are needed; nothing ran
--   { ok = true, result = text, values = {n=..}, out = printed }
--   { ok = false, error = text, out = printed }  syntax or runtime error (with traceback)
-- `out` is what print() wrote during the evaluation. Never raises.
function Session:eval(code)
  local fn, err, incomplete = M.compile(code, self.chunkname)
  if not fn then
    if incomplete then
      return { incomplete = true }
    end
    return { ok = false, error = err, out = "" }
  end
  setfenv(fn, self.env)

  local out, size, cut = {}, 0, false
  local real_print = _G.print
  local tostr = _G.tostring
  -- print() is redirected while the code runs, so output reaches whoever asked (a socket
  -- client in another process) and not the process's stdout.
  local function capture(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do
      parts[i] = tostr((select(i, ...)))
    end
    local line = concat(parts, "\t") .. "\n"
    if size + #line > M.MAX_OUTPUT then
      cut = true
      return
    end
    size = size + #line
    out[#out + 1] = line
  end
  local function handler(e)
    if type(e) == "userdata" and core_host.exiting() then
      return EXIT
    end
    if type(e) ~= "string" then
      e = "(error object) " .. pretty.value(e, { depth = 3 })
    end
    return traceback(e, fn, 3)
  end

  _G.print = capture
  local r = pack(xpcall(fn, handler))
  if _G.print == capture then
    _G.print = real_print
  end

  if cut then
    out[#out + 1] = "<print output truncated>\n"
  end
  local text = concat(out)
  if not r[1] then
    if r[2] == EXIT then
      return { ok = true, result = "", values = { n = 0 }, out = text, exiting = true }
    end
    return { ok = false, error = tostring(r[2]), out = text }
  end
  local values = { n = r.n - 1, unpack(r, 2, r.n) }
  local ok, result = pcall(pretty.format, unpack(values, 1, values.n))
  if not ok then
    result = "<result could not be printed: " .. tostring(result) .. ">"
  end
  return { ok = true, result = result, values = values, out = text }
end

return M
