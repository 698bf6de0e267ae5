--- Logging from Lua into the one C sink (see docs/api/tunnel.log.md).
--
--   local log = require "tunnel.log"
--   log.info("listening on %s", addr)          -- group "lua"
--   local qlog = log.group("myapp")            -- a group of your own
--   qlog.debug("state %s", s)
--   log.set_level("quic", "debug")             -- per group, at run time
local core = require "tunnel.core.log"

local M = {}

local LEVELS = { "error", "warn", "info", "debug", "trace" }
M.LEVELS = LEVELS

local format, select, tostring = string.format, select, tostring

local function emit(group, level, fmt, ...)
  if not core.enabled(group, level) then
    return
  end
  local msg
  if select("#", ...) > 0 then
    msg = format(fmt, ...)
  else
    msg = tostring(fmt)
  end
  core.write(group, level, msg)
end

local groups = {}

--- A logger bound to `name`: a table with error/warn/info/debug/trace(fmt, ...).
function M.group(name)
  if type(name) ~= "string" or name == "" then
    error("log group name must be a non-empty string", 2)
  end
  local g = groups[name]
  if g then
    return g
  end
  core.group(name)
  g = { name = name }
  for _, level in ipairs(LEVELS) do
    g[level] = function(fmt, ...)
      return emit(name, level, fmt, ...)
    end
  end
  g.enabled = function(level)
    return core.enabled(name, level)
  end
  groups[name] = g
  return g
end

local default = M.group("lua")
for _, level in ipairs(LEVELS) do
  M[level] = default[level]
end

--- Set the threshold of `group` (or of every group when group is nil or "*").
function M.set_level(group, level)
  local ok, err = pcall(core.set_level, group, level)
  if not ok then
    error(err, 2)
  end
end

--- Current threshold of `group` (or the default when nil), as a level name.
function M.get_level(group)
  return core.get_level(group)
end

--- Every group with its threshold: { quic = "info", ... }.
function M.levels()
  return core.groups()
end

--- Apply a level specification such as "debug" or "info,quic=debug,ctl=trace".
-- Returns true, or nil and a message naming the bad part.
function M.apply_spec(spec)
  for part in tostring(spec):gmatch("[^,%s]+") do
    local group, level = part:match("^([%w_%-%.]+)=(%a+)$")
    local ok, err
    if group then
      ok, err = pcall(core.set_level, group, level)
    else
      ok, err = pcall(core.set_level, nil, part)
    end
    if not ok then
      return nil, format("bad log level '%s': %s", part, (err:gsub("^.-: ", "")))
    end
  end
  return true
end

return M
