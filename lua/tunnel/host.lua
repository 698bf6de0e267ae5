--- The process: orderly exit and shutdown hooks (see docs/api/tunnel.host.md).
local core = require "tunnel.core.host"
local log = require "tunnel.log"

local M = {}

local hooks = {}

--- Register `fn` to run at orderly shutdown (SIGINT, SIGTERM, tunnel.exit, end of the loop).
-- Hooks run in reverse order of registration; an error in one is logged and the rest still run.
-- Returns a function that unregisters the hook.
function M.on_shutdown(fn)
  if type(fn) ~= "function" then
    error("on_shutdown expects a function", 2)
  end
  hooks[#hooks + 1] = fn
  return function()
    for i = #hooks, 1, -1 do
      if hooks[i] == fn then
        table.remove(hooks, i)
      end
    end
  end
end

core.set_shutdown(function()
  local list = hooks
  hooks = {}
  for i = #list, 1, -1 do
    local ok, err = xpcall(list[i], debug.traceback)
    if not ok and not core.is_exit(err) then
      log.error("shutdown hook failed: %s", tostring(err))
    end
  end
end)

--- Leave now: runs the shutdown sequence, then exits with `code` (default 0).
M.exit = core.exit
--- Shut down after the current callback returns, then exit with `code` (default 0).
M.stop = core.stop
--- True once an exit has been requested.
M.exiting = core.exiting
--- Whether an error caught with pcall is the unwinding of tunnel.exit(); re-raise it with
-- error(err, 0) so the exit goes through.
M.is_exit = core.is_exit

--- xpcall(fn, debug.traceback, ...) that lets tunnel.exit() through. Returns ok, err/results.
function M.pcall(fn, ...)
  local r = { xpcall(fn, function(e)
    if core.is_exit(e) then
      return e
    end
    if type(e) ~= "string" then
      -- error(table) and the like: name it (its __tostring, if any) so that the log says more
      -- than an address, and keep the traceback.
      local ok, text = pcall(tostring, e)
      e = "error object (" .. type(e) .. "): " .. (ok and text or "?")
    end
    return debug.traceback(e, 2)
  end, ...) }
  if not r[1] and core.is_exit(r[2]) then
    error(r[2], 0)
  end
  return unpack(r, 1, table.maxn(r))
end

--- Run a user hook: fn(...) when fn is set. An error in it is logged through `logger` (a
-- tunnel.log group) naming the hook `what`, and does not propagate (tunnel.exit does).
function M.hook(logger, what, fn, ...)
  if not fn then
    return
  end
  local ok, err = M.pcall(fn, ...)
  if not ok then
    M.log_error(logger, what .. " hook failed: ", err)
  end
end

--- Log `text` (an error with its traceback) through `logger` at error level, one record per
-- line: the log escapes line breaks, so a traceback in one record would read as one long line.
function M.log_error(logger, prefix, text)
  local n = 0
  for line in (tostring(text) .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if n == 1 then
      logger.error("%s%s", prefix, line)
    elseif line ~= "" then
      logger.error("  %s", (line:gsub("^\t+", "")))
    end
  end
end

--- Versions of tunnel and of every library it is built on.
function M.versions()
  local v = core.versions()
  local luv = require "luv"
  v.luv = luv.version_string()
  local ok, cjson = pcall(require, "cjson")
  v["lua-cjson"] = ok and cjson._VERSION and cjson._VERSION:gsub("^lua%-cjson%s*", "") or "?"
  local ok2, argparse = pcall(require, "argparse")
  v["lua-argparse"] = ok2 and argparse.version or "?"
  return v
end

return M
