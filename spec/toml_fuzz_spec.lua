-- The TOML fuzzer (fuzz/toml_fuzz.lua) run in-process for a fixed, deterministic budget, so CI
-- exercises the oracle on every run. The long runs are `build/tunnel fuzz/toml_fuzz.lua N`.
package.path = "./fuzz/?.lua;" .. package.path

local ITERATIONS = 20000
local SEED = 20240501

-- A fresh copy of the fuzzer bound to `decoder` (default: the real tunnel.toml).
local function load_fuzzer(decoder)
  local saved = package.loaded["tunnel.toml"]
  package.loaded["toml_fuzz"] = nil
  if decoder then
    package.loaded["tunnel.toml"] = decoder
  end
  local ok, fuzz = pcall(require, "toml_fuzz")
  package.loaded["tunnel.toml"] = saved
  package.loaded["toml_fuzz"] = nil
  assert(ok, fuzz)
  return fuzz
end

-- The real decoder with decode() replaced by `fn(real_decode, text, opts)`.
local function wrap_decoder(fn)
  local real = require "tunnel.toml"
  local w = {}
  for k, v in pairs(real) do
    w[k] = v
  end
  w.decode = function(text, opts)
    return fn(real.decode, text, opts)
  end
  return w
end

describe("toml fuzzer", function()
  it("finds the toml-test corpus", function()
    local fuzz = load_fuzzer()
    local dir = fuzz.find_suite()
    assert.is_string(dir, "toml-test suite not found: set TOML_TEST_DIR")
    local corpus, nfiles = fuzz.load_corpus(dir)
    assert.is_true(nfiles > 600)
    assert.is_true(#corpus > nfiles)
  end)

  it("holds the oracle for " .. ITERATIONS .. " mutated inputs (seed " .. SEED .. ")", function()
    local fuzz = load_fuzzer()
    local report = fuzz.run({ iterations = ITERATIONS, seed = SEED })
    if report.failure then
      error(fuzz.describe_failure(report, 4096), 0)
    end
    assert.equal(ITERATIONS, report.iterations)
    -- Both outcomes must be exercised, or the mutations have gone wrong.
    assert.is_true(report.ok > ITERATIONS / 50, "too few inputs decoded: " .. report.ok)
    assert.is_true(report.errors > ITERATIONS / 2, "too few inputs rejected: " .. report.errors)
    assert.is_true(report.corpus_end > report.corpus_start, "coverage feedback added nothing")
  end)

  it("is deterministic for a given seed", function()
    local opts = { iterations = 1000, seed = 7, corpus_dir = false, fixed = false }
    local a = load_fuzzer().run(opts)
    local b = load_fuzzer().run(opts)
    assert.is_nil(a.failure)
    assert.same({ a.ok, a.errors, a.corpus_end, a.edges },
      { b.ok, b.errors, b.corpus_end, b.edges })
  end)

  it("rejects hostile nesting with an error instead of a stack overflow", function()
    local toml = require "tunnel.toml"
    local fuzz = load_fuzzer()
    for _, s in ipairs(fuzz.fixed_inputs()) do
      local ok, res, err = pcall(toml.decode, s)
      assert.is_true(ok, res)
      if res == nil then
        assert.matches("^%d+:%d+: ", err)
      end
    end
    local _, err = toml.decode("a = " .. string.rep("[", 100000))
    assert.equal("1:" .. (4 + toml.MAX_DEPTH + 1) .. ": array nested too deeply (more than "
      .. toml.MAX_DEPTH .. " levels of tables and arrays)", err)
  end)

  it("allows exactly MAX_DEPTH levels of tables and arrays, however they are written", function()
    local toml = require "tunnel.toml"
    local rep, D = string.rep, toml.MAX_DEPTH
    -- each builder gives a document whose deepest table or array is at level n
    local builders = {
      array = function(n)
        return "a = " .. rep("[", n) .. rep("]", n)
      end,
      ["inline table"] = function(n)
        return "a = " .. rep("{b = ", n) .. "1" .. rep("}", n)
      end,
      table = function(n)
        return "[" .. rep("a.", n - 1) .. "a]"
      end,
      ["dotted key"] = function(n)
        return rep("a.", n) .. "a = 1"
      end,
      ["array of tables"] = function(n)
        return "[[" .. rep("a.", n - 2) .. "a]]"
      end,
      mixed = function(n)
        return "[x.y]\n" .. rep("a.", n - 4) .. "a = [{}]"
      end,
    }
    for name, build in pairs(builders) do
      local t, err = toml.decode(build(D))
      assert.is_table(t, name .. ": " .. tostring(err))
      t, err = toml.decode(build(D + 1))
      assert.is_nil(t, name)
      assert.matches("^%d+:%d+: [%a ]+ nested too deeply %(more than " .. D .. " levels", err)
      -- the deepest table really is at level D
      local v, depth = toml.decode(build(D)), 0
      while type(v) == "table" do
        local _, child = next(v)
        v, depth = child, depth + 1
      end
      assert.equal(D, depth - 1, name)
    end
  end)

  it("holds the oracle with the JIT on (no coverage hook)", function()
    local fuzz = load_fuzzer()
    local report = fuzz.run({ iterations = 5000, seed = SEED + 1, cover = false })
    if report.failure then
      error(fuzz.describe_failure(report, 4096), 0)
    end
    assert.equal(5000, report.iterations)
  end)

  -- Regression: key positions used to be collected with nested pairs() loops, which the LuaJIT
  -- in Debian 12 miscompiles once hot (LuaJIT issue #827): after some 40000 decodes the map
  -- silently lost entries. The fuzzer found it; this is the reduced case.
  it("keeps every key position over many decodes", function()
    local toml = require "tunnel.toml"
    local doc = "[a]\nx=1\ny=2\n[b]\nx=1\ny=2\n[c]\nx=1\ny=2\n[d]\nx=1\ny=2\n[e]\nx=1\ny=2\n"
    local function other_loop() -- makes the trace return to the interpreter, as in #827
      for _ = 1, 100 do
      end
    end
    for i = 1, 50000 do
      other_loop()
      local t, pos = toml.decode(doc, { positions = true })
      local name, sub = next(t)
      while name ~= nil do
        local p = pos[sub]
        if not (p and p.x and p.y) then
          error(("decode #%d: positions missing for [%s]"):format(i, name))
        end
        name, sub = next(t, name)
      end
    end
  end)

  describe("fails when the decoder misbehaves", function()
    local function run_broken(fn)
      local fuzz = load_fuzzer(wrap_decoder(fn))
      return fuzz.run({ iterations = 3000, seed = 1, corpus_dir = false, fixed = false }), fuzz
    end

    it("a decoder that raises", function()
      local report, fuzz = run_broken(function(real, text, opts)
        if text:find("]]", 1, true) then
          error("boom")
        end
        return real(text, opts)
      end)
      assert.is_table(report.failure)
      assert.matches("raised an error: .*boom", report.failure.reason)
      assert.matches("]]", report.failure.input, 1, true)
      -- the report shows the input as a Lua string literal that reads back to the input
      local text = fuzz.describe_failure(report, math.huge)
      local lit = text:match("\ninput = (.*)\n$")
      assert.equal(report.failure.input, assert(loadstring("return " .. lit))())
    end)

    it("a decoder whose errors have no position", function()
      local report = run_broken(function(real, text, opts)
        local t, err = real(text, opts)
        if t == nil then
          return nil, (err:gsub("^%d+:%d+: ", ""))
        end
        return t, err
      end)
      assert.matches("line:col", report.failure.reason)
    end)

    it("a decoder that is not deterministic", function()
      local n = 0
      local report = run_broken(function(real, text, opts)
        n = n + 1
        local t, err = real(text, opts)
        if t and n % 2 == 0 then
          t.extra = n
        end
        return t, err
      end)
      assert.matches("different", report.failure.reason)
    end)

    it("a decoder that mangles strings", function()
      local report = run_broken(function(real, text, opts)
        local t, p = real(text, opts)
        if t then
          for k, v in pairs(t) do
            if type(v) == "string" and #v > 0 then
              t[k] = v .. "\255"
            end
          end
        end
        return t, p
      end)
      assert.matches("UTF%-8", report.failure.reason)
    end)
  end)
end)
