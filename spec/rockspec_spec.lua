-- `luarocks make` with our rockspec gives a working tunnel in a local tree.
local H = require "helper"

describe("rockspec", function()
  after_each(H.cleanup)

  it("installs a working tunnel with luarocks make --deps-mode=none", function()
    local dir = H.tmpdir()
    local src, tree = dir .. "/src", dir .. "/tree"
    -- Build from a copy so the rock's build directory never lands in the working tree.
    local cp = H.spawn({ "sh", "-c", "mkdir -p '" .. src .. "' && tar -C . --exclude=./build"
      .. " --exclude='./build-*' --exclude=./build.luarocks --exclude=./.git"
      .. " --exclude=./spec/nostr/node_modules -cf - . | tar -C '"
      .. src .. "' -xf -" }):wait(60)
    assert.equal(0, cp.code, cp.stderr)
    local p = H.spawn({ "luarocks", "make", "--tree", tree, "--deps-mode=none",
      "rockspec/tunnel-scm-1.rockspec" }, { cwd = src }):wait(600)
    assert.equal(0, p.code, p.stdout .. p.stderr)
    local bin = tree .. "/bin/tunnel"
    local v = H.spawn({ bin, "--version" }):wait()
    assert.equal(0, v.code, v.stderr)
    assert.matches("^tunnel %d+%.%d+%.%d+", v.stdout)
    local t = H.spawn({ bin, "generate-token" }):wait()
    assert.equal(0, t.code, t.stderr)
    assert.matches("^i[%w%-_%.]+\n$", t.stdout)
    -- The Lua sources are installed too, for scripts and for reading.
    local found = H.spawn({ "sh", "-c", "find '" .. tree .. "' -path '*tunnel/cli.lua'" }):wait()
    assert.matches("cli%.lua", found.stdout)
  end)
end)
