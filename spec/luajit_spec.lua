-- The LuaJIT we run on must not miscompile nested pairs() loops (LuaJIT issue #827, present
-- in Debian 12's luajit 2.1.0~beta3+git20220320 and fixed in luajit2 2.1-20230119, which
-- scripts/install-deps.sh installs). Config validation and policy code iterate tables this way.
describe("LuaJIT", function()
  it("iterates nested pairs() loops correctly once they are compiled", function()
    local t = { 1, 2, 3, 4, 5 }
    local tab = { a = t, b = t, c = t, d = t, e = t }
    local function f()
      for _ = 1, 100 do -- luacheck: ignore
      end
    end
    local bad
    for i = 1, 100000 do
      f() -- returns to the interpreter, which is what the bug needs
      local c = 0
      for _, v in pairs(tab) do
        for _ in pairs(v) do -- luacheck: ignore
        end
        c = c + 1
      end
      if c ~= 5 then
        bad = string.format("iteration %d counted %d keys instead of 5", i, c)
        break
      end
    end
    assert.is_nil(bad, "this LuaJIT miscompiles pairs() (issue #827): install luajit2")
  end)
end)
