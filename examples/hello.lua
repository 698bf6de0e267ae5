-- hello.lua: the smallest tunnel script. It shows versions, logging with a group of its own,
-- script arguments (`arg` and `...`), timers on the event loop and the exit status.
--
-- Run it:
--   tunnel examples/hello.lua                 greets "world", ticks three times, exits 0
--   tunnel examples/hello.lua Alice 3         greets Alice, then exits with status 3
--   tunnel -v examples/hello.lua              also shows debug log lines
--
-- Output for people goes to stdout; log lines (with time, level and group) go to stderr.
local tunnel = require "tunnel"

local log = tunnel.log.group("hello")

-- Arguments after the script name arrive in `arg` (arg[0] is the script) and in `...`.
local name = arg[1] or "world"
local status = tonumber(arg[2] or "0")
if not status or status ~= math.floor(status) or status < 0 or status > 255 then
  io.stderr:write("usage: tunnel examples/hello.lua [NAME] [EXIT_STATUS 0-255]\n")
  tunnel.exit(2)
end

print(("hello, %s"):format(name))

local v = tunnel.versions()
print(("tunnel %s on %s, libuv %s, luv %s"):format(tunnel.version, v.luajit, v.libuv, v.luv))
log.info("started with %d argument(s): %s", select("#", ...), table.concat(arg, " "))
log.debug("this line shows only with -v (or --log-level hello=debug)")

-- The script's main chunk ends here, then the event loop runs the timers below. The process
-- exits by itself once nothing is left to do, or when the script says so.
local started = tunnel.uv.now()

tunnel.after(0.05, function()
  log.info("one-shot timer fired after %d ms", tunnel.uv.now() - started)
end)

local ticks = 0
local timer
timer = tunnel.every(0.02, function()
  ticks = ticks + 1
  print(("tick %d"):format(ticks))
  if ticks == 3 then
    timer:close()
    -- A shutdown hook runs on every orderly exit: tunnel.exit, SIGINT/SIGTERM, end of work.
    tunnel.on_shutdown(function()
      log.info("goodbye, %s", name)
    end)
    tunnel.after(0.05, function()
      print(("exiting with status %d"):format(status))
      tunnel.exit(status)
    end)
  end
end)
