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
    logger.error("%s hook failed: %s", what, tostring(err))
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
