-- Runs busted inside the tunnel binary, so specs exercise the real C modules:
--   build/tunnel spec/runner.lua spec/foo_spec.lua
-- arg[1..] are busted's own options and spec files.
package.path = "spec/?.lua;" .. package.path
-- busted ends with os.exit(); ours runs the host's orderly shutdown. Without this busted
-- raises a bare error() on failure under Lua 5.1, which would read as a crash.
require("busted.compatibility").exit = function(code)
  os.exit(code == 0 and 0 or 1)
end
require("busted.runner")({ standalone = false })
