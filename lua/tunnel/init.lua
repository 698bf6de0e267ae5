--- The public Lua API: `local tunnel = require "tunnel"` (see docs/api/tunnel.md).
local uv = require "luv"
local host = require "tunnel.host"

local M = {}

M.version = require("tunnel.core.host").versions().tunnel
M.log = require "tunnel.log"
M.uv = uv

M.exit = host.exit
M.stop = host.stop
M.on_shutdown = host.on_shutdown
M.versions = host.versions

local function check_timer_args(seconds, fn)
  if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then
    error("seconds must be a non-negative number", 3)
  end
  if type(fn) ~= "function" then
    error("expected a function to call", 3)
  end
end

--- Call `fn` once after `seconds`. Returns the luv timer (call :close() to cancel).
function M.after(seconds, fn)
  check_timer_args(seconds, fn)
  local t = uv.new_timer()
  t:start(math.floor(seconds * 1000 + 0.5), 0, function()
    t:close()
    fn()
  end)
  return t
end

--- Call `fn` every `seconds` (first call after one period). Returns the luv timer.
function M.every(seconds, fn)
  check_timer_args(seconds, fn)
  local ms = math.max(1, math.floor(seconds * 1000 + 0.5))
  local t = uv.new_timer()
  t:start(ms, ms, fn)
  return t
end

--- Start a port-forwarding server: see docs/api/tunnel.server.md.
function M.server(opts)
  return require("tunnel.server").new(opts) -- a tail call: misuse errors point at the caller
end

--- Start a port-forwarding client: see docs/api/tunnel.client.md.
function M.client(opts)
  return require("tunnel.client").new(opts)
end

-- Submodules load on first use, so `require "tunnel"` stays cheap.
local LAZY = {
  config = "tunnel.config",
  keys = "tunnel.keys",
  toml = "tunnel.toml",
  addr = "tunnel.addr",
  ctl = "tunnel.ctl",
  repl = "tunnel.repl",
  pretty = "tunnel.pretty",
  policy = "tunnel.policy",
}

return setmetatable(M, {
  __index = function(t, k)
    local name = LAZY[k]
    if not name then
      return nil
    end
    local mod = require(name)
    rawset(t, k, mod)
    return mod
  end,
})
