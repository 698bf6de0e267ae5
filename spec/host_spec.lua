-- The tunnel binary as a Lua host: scripts, -e, exit codes, signals, callback errors.
local H = require "helper"

describe("tunnel host", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(H.cleanup)

  local function script(name, body)
    return H.write_file(dir .. "/" .. name, body)
  end

  it("runs a script with arg and ... like lua", function()
    local s = script("args.lua", [[
      io.write(arg[0], "|", arg[1], "|", arg[2], "|", select("#", ...), "|", (...), "\n")
    ]])
    local p = H.tunnel({ s, "one", "two words" })
    assert.equal(0, p.code)
    assert.equal(s .. "|one|two words|2|one\n", p.stdout)
  end)

  it("passes options after the script to the script, not to tunnel", function()
    local s = script("opts.lua", 'io.write(table.concat(arg, ","), "\\n")')
    local p = H.tunnel({ s, "--version", "-v" })
    assert.equal(0, p.code)
    assert.equal("--version,-v\n", p.stdout)
  end)

  it("reports a script error with file:line and a traceback, exit 1", function()
    local s = script("boom.lua", "local x = 1\nerror('boom here')\n")
    local p = H.tunnel({ s })
    assert.equal(1, p.code)
    assert.matches(s:gsub("%p", "%%%0") .. ":2: boom here", p.stderr)
    assert.matches("stack traceback", p.stderr)
  end)

  it("reports a syntax error naming the file, exit 1", function()
    local s = script("syntax.lua", "local = 3\n")
    local p = H.tunnel({ s })
    assert.equal(1, p.code)
    assert.matches("syntax.lua:1:", p.stderr)
  end)

  it("says clearly when the script does not exist", function()
    local p = H.tunnel({ dir .. "/missing.lua" })
    assert.equal(1, p.code)
    assert.matches("cannot run script: .*missing.lua", p.stderr)
  end)

  it("runs -e code, and os.exit / tunnel.exit set the exit status", function()
    assert.equal("3\n", H.tunnel({ "-e", "print(1 + 2)" }).stdout)
    assert.equal(7, H.tunnel({ "-e", "os.exit(7)" }).code)
    assert.equal(4, H.tunnel({ "-e", "require('tunnel').exit(4)" }).code)
    assert.equal(1, H.tunnel({ "-e", "os.exit(false)" }).code)
  end)

  it("runs the event loop after the script until no work is left", function()
    local s = script("loop.lua", [[
      local tunnel = require "tunnel"
      local n = 0
      local t
      t = tunnel.every(0.01, function()
        n = n + 1
        if n == 3 then t:close(); print("ticks", n) end
      end)
      tunnel.after(0, function() print("after") end)
    ]])
    local p = H.tunnel({ s })
    assert.equal(0, p.code)
    assert.equal("after\nticks\t3\n", p.stdout)
  end)

  it("logs an error in a luv callback and keeps running", function()
    local s = script("cb.lua", [[
      local tunnel = require "tunnel"
      tunnel.after(0.01, function() error("callback failed") end)
      tunnel.after(0.05, function() print("still alive") end)
    ]])
    local p = H.tunnel({ s })
    assert.equal(0, p.code)
    assert.equal("still alive\n", p.stdout)
    assert.matches("ERROR lua: error in callback: .*cb.lua:2: callback failed", p.stderr)
  end)

  for _, sig in ipairs({ "sigterm", "sigint" }) do
    it("shuts down cleanly on " .. sig .. " and runs shutdown hooks", function()
      local marker = dir .. "/marker"
      local s = script("srv.lua", ([[
        local tunnel = require "tunnel"
        local uv = require "luv"
        local server = uv.new_tcp()
        assert(server:bind("127.0.0.1", 0))
        assert(server:listen(8, function() end))
        tunnel.on_shutdown(function()
          local f = assert(io.open(%q, "w")); f:write("bye"); f:close()
        end)
        io.stdout:write("ready\n"); io.stdout:flush()
      ]]):format(marker))
      local p = H.start({ "--name", "sigtest-" .. sig, s },
        { env = { XDG_RUNTIME_DIR = dir } })
      assert.is_true(p:wait_output("ready", 10, "stdout"))
      p:kill(sig)
      p:wait(10)
      assert.equal(0, p.code)
      assert.equal("bye", H.read_file(marker))
      assert.matches("shutting down", p.stderr)
    end)
  end

  it("exits with status 1 after `tunnel.exit(1)` inside a callback", function()
    local p = H.tunnel({ "-e", "require('tunnel').after(0.01, function() os.exit(1) end)" })
    assert.equal(1, p.code)
    assert.equal("", p.stderr)
  end)

  it("can load Lua modules from the source tree (TUNNEL_LUA_DEV)", function()
    local code = "print(debug.getinfo(require('tunnel.log').group).source)"
    local dev = H.tunnel({ "-e", code }, { env = { TUNNEL_LUA_DEV = "1" } }).stdout
    assert.matches("^@/.+/lua/tunnel/log%.lua\n$", dev)
    local embedded = H.tunnel({ "-e", code }, { env = { TUNNEL_LUA_DEV = "0" } }).stdout
    assert.equal("@lua/tunnel/log.lua\n", embedded)
    -- Another tree (a copy with one module changed) wins over the embedded copy too.
    local tree = H.tmpdir()
    os.execute("cp -r lua/tunnel '" .. tree .. "/'")
    H.write_file(tree .. "/tunnel/pretty.lua", "return { marker = 42 }")
    local other = H.tunnel({ "-e", "print(require('tunnel.pretty').marker)" },
      { env = { TUNNEL_LUA_DEV = tree } })
    assert.equal("42\n", other.stdout)
  end)

  it("shares one luv and one loop with scripts", function()
    local p = H.tunnel({ "-e", "print(require('luv') == require('tunnel').uv)" })
    assert.equal("true\n", p.stdout)
  end)
end)

describe("tunnel command line", function()
  it("prints every library version", function()
    for _, args in ipairs({ { "--version" }, { "version" } }) do
      local p = H.tunnel(args)
      assert.equal(0, p.code)
      for _, lib in ipairs({ "^tunnel %d", "luajit", "luv", "libuv", "ngtcp2", "gnutls",
        "libsodium", "libsecp256k1", "libcurl", "lua%-cjson", "lua%-argparse" }) do
        assert.matches(lib, p.stdout)
      end
    end
  end)

  it("exits 2 with a hint on bad usage", function()
    local p = H.tunnel({ "--no-such-flag" })
    assert.equal(2, p.code)
    assert.matches("unknown option '%-%-no%-such%-flag'", p.stderr)
    assert.matches("tunnel %-%-help", p.stderr)
    assert.equal(2, H.tunnel({}).code)
    assert.equal(2, H.tunnel({ "generate-token", "--count", "0" }).code)
  end)

  it("takes a word that is neither a command nor a file for a mistyped command", function()
    local p = H.tunnel({ "serve" })
    assert.equal(2, p.code)
    assert.matches("^tunnel: 'serve' is not a command — did you mean 'server'%? %(and no script " ..
      "file of that name%)\nCommands: attach, client, ", p.stderr)
    p = H.tunnel({ "generate-tokens" })
    assert.equal(2, p.code)
    assert.matches("did you mean 'generate-token'?", p.stderr, 1, true)
    p = H.tunnel({ "zzzz" })
    assert.equal(2, p.code)
    assert.matches("^tunnel: 'zzzz' is not a command %(and no script", p.stderr)
    -- A path is a script, even a missing one.
    p = H.tunnel({ "nosuch.lua" })
    assert.equal(1, p.code)
    assert.matches("cannot run script: cannot open nosuch.lua", p.stderr, 1, true)
  end)

  it("shows help with examples for commands", function()
    local p = H.tunnel({ "--help" })
    assert.equal(0, p.code)
    assert.matches("Examples:", p.stdout)
    for _, c in ipairs({ "generate%-server%-key", "show%-server%-id", "generate%-token",
      "generate%-nostr%-key", "show%-npub", "repl", "attach", "version" }) do
      assert.matches(c, p.stdout)
    end
    p = H.tunnel({ "help", "generate-server-key" })
    assert.equal(0, p.code)
    assert.matches("%-%-output", p.stdout)
    assert.matches("Example", p.stdout)
  end)
end)
