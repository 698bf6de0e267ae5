-- The REPL: pretty printer, evaluation engine and helpers (in process), and `tunnel repl`
-- driven through a pseudo-terminal and through a pipe.
local H = require "helper"
local uv = require "luv"
local pretty = require "tunnel.pretty"
local repl = require "tunnel.repl"
local log = require "tunnel.log"

describe("tunnel.pretty", function()
  it("prints scalars like Lua source", function()
    assert.equal("42", pretty.format(42))
    assert.equal("-0.5", pretty.format(-0.5))
    assert.equal("0.1", pretty.format(0.1))
    assert.equal("9007199254740992", pretty.format(2 ^ 53))
    assert.equal("1e+20", pretty.format(1e20))
    assert.equal("0.30000000000000004", pretty.format(0.1 + 0.2)) -- exact, not rounded
    assert.equal("inf\t-inf\tnan", pretty.format(1 / 0, -1 / 0, 0 / 0))
    assert.equal("nil\ttrue\tfalse", pretty.format(nil, true, false))
    assert.equal('"a\\nb\\t\\"q\\"\\\\\\000\\127"', pretty.format('a\nb\t"q"\\\0\127'))
    assert.equal('"héllo"', pretty.format("héllo")) -- UTF-8 stays readable
  end)

  it("keeps sequences compact and sorts keys: numbers first, then strings", function()
    assert.equal("{ 1, 2, 3 }", pretty.format({ 1, 2, 3 }))
    assert.equal('{ 1, 2, [-1] = 0, [5] = "five", a = 1, b = 2, ["not id"] = 3 }',
      pretty.format({ 1, 2, b = 2, a = 1, [5] = "five", ["not id"] = 3, [-1] = 0 }))
    local s = pretty.format({ [3] = "c", [1.5] = "x", z = 1, y = 2, ["end"] = 3 })
    assert.equal('{ [1.5] = "x", [3] = "c", ["end"] = 3, y = 2, z = 1 }', s)
    assert.equal("{}", pretty.format({}))
  end)

  it("indents nested tables that do not fit on one line", function()
    local t = { name = "server", peers = { { id = "a", rtt = 12 }, { id = "b", rtt = 30 } },
      counters = { bytes_in = 123456789, bytes_out = 987654321, streams = 42 } }
    assert.equal(table.concat({
      "{",
      "  counters = { bytes_in = 123456789, bytes_out = 987654321, streams = 42 },",
      '  name = "server",',
      '  peers = { { id = "a", rtt = 12 }, { id = "b", rtt = 30 } }',
      "}",
    }, "\n"), pretty.format(t))
  end)

  it("shows cycles as <cycle> and shared tables in full", function()
    local shared = { 1 }
    local t = { a = shared, b = shared }
    t.self = t
    assert.equal("{ a = { 1 }, b = { 1 }, self = <cycle> }", pretty.format(t))
  end)

  it("limits depth, entries per table and total size", function()
    local deep = {}
    local cur = deep
    for _ = 1, 20 do
      cur.next = {}
      cur = cur.next
    end
    cur.x = 1
    local s = pretty.value(deep, { depth = 3 })
    assert.equal("{ next = { next = { next = {...} } } }", s)
    local many = {}
    for i = 1, 100 do
      many[i] = i
    end
    assert.equal("{ 1, 2, 3, ...(97 more) }", pretty.value(many, { items = 3 }))
    local big = {}
    for i = 1, 10000 do
      big[i] = ("x"):rep(100)
    end
    local out = pretty.value(big, { length = 5000 })
    assert.is_true(#out < 6000)
    assert.matches("<output truncated>$", out)
    assert.matches("%.%.%.%(%d+ more bytes%)", pretty.value({ ("y"):rep(100) }, { string = 10 }))
    assert.has_error(function()
      pretty.value(1, { colour = true })
    end)
  end)

  it("shows functions, userdata and objects with __tostring by tostring", function()
    local obj = setmetatable({}, { __tostring = function()
      return "peer<abc>"
    end })
    local bad = setmetatable({}, { __tostring = function()
      error("no")
    end })
    local s = pretty.format(print, io.stdout, obj, bad)
    local parts = {}
    for p in s:gmatch("[^\t]+") do
      parts[#parts + 1] = p
    end
    assert.equal(tostring(print), parts[1])
    assert.equal(tostring(io.stdout), parts[2])
    assert.equal("peer<abc>", parts[3])
    assert.matches("__tostring failed", parts[4])
  end)

  it("separates several results by tabs, or by newlines when one spans lines", function()
    assert.equal('1\t"a"\t{ 2 }', pretty.format(1, "a", { 2 }))
    local long = {}
    for i = 1, 40 do
      long["key" .. i] = i
    end
    local s = pretty.format(1, long)
    assert.matches("^1\n{\n", s)
    assert.equal("", pretty.format())
  end)
end)

describe("tunnel.repl", function()
  local s
  before_each(function()
    s = repl.session()
  end)
  after_each(function()
    log.set_level(nil, "info")
  end)

  it("evaluates expressions, with every result", function()
    local r = s:eval("1 + 1")
    assert.is_true(r.ok)
    assert.equal("2", r.result)
    r = s:eval("return 1, nil, 'x'")
    assert.equal(3, r.values.n)
    assert.equal('1\tnil\t"x"', r.result)
    assert.equal('{ a = 1 }', s:eval("{ a = 1 }").result)
  end)

  it("runs statements and keeps variables within the session, never in _G", function()
    local r = s:eval("x_repl_spec = 41")
    assert.is_true(r.ok)
    assert.equal("", r.result)
    assert.equal("42", s:eval("x_repl_spec + 1").result)
    assert.equal("function", s:eval("function double_it(a) return a * 2 end; return "
      .. "type(double_it)").result:match("%a+"))
    assert.equal("84", s:eval("double_it(42)").result)
    assert.is_nil(rawget(_G, "x_repl_spec"))
    assert.is_nil(rawget(_G, "double_it"))
    -- another session does not see them
    assert.equal("nil", repl.session():eval("x_repl_spec").result)
    -- but globals are readable, and _G.name is the way to set one on purpose
    assert.equal('"table"', s:eval("type(string)").result)
    s:eval("_G.repl_spec_global = 1")
    assert.equal(1, rawget(_G, "repl_spec_global"))
    rawset(_G, "repl_spec_global", nil)
  end)

  it("says when the input is incomplete, and accepts it once complete", function()
    for _, code in ipairs({ "function f(a)", "for i = 1, 3 do", "x = {", "f(1,", "1 +",
      "if x then", "[[long", "--[[ comment", "local t = { a = 1," }) do
      assert.is_true(s:eval(code).incomplete, code)
      assert.is_true(repl.incomplete(code), code)
    end
    local r = s:eval("function f(a)\n  return a * 3\nend")
    assert.is_true(r.ok)
    assert.equal("9", s:eval("f(3)").result)
    for _, code in ipairs({ "end", "x x", "return return", "'unfinished" }) do
      assert.is_false(repl.incomplete(code), code)
      local e = s:eval(code)
      assert.is_false(e.ok, code)
      assert.matches("^repl:1:", e.error)
    end
  end)

  it("returns runtime errors with a traceback that ends at the evaluated code", function()
    local r = s:eval("local function inner() error('boom') end\ninner()")
    assert.is_false(r.ok)
    assert.matches("^repl:1: boom", r.error)
    assert.matches("stack traceback:", r.error)
    assert.matches("in function 'inner'", r.error)
    assert.matches("repl:2: in main chunk$", r.error)
    assert.not_matches("repl%.lua", r.error) -- the engine's own frames are cut
    r = s:eval("error('top')")
    assert.matches("^repl:1: top", r.error)
    r = s:eval("error({ code = 7 })")
    assert.matches("{ code = 7 }", r.error)
    r = s:eval("nil + 1")
    assert.matches("attempt to perform arithmetic", r.error)
    -- the session survives its errors
    assert.equal("3", s:eval("1 + 2").result)
  end)

  it("captures print output during an evaluation and restores print", function()
    local real = print
    local r = s:eval("print('a', 1, nil); print({} ~= nil); return 5")
    assert.equal("a\t1\tnil\ntrue\n", r.out)
    assert.equal("5", r.result)
    assert.equal(real, print)
    r = s:eval("print('before'); error('after print')")
    assert.equal("before\n", r.out)
    assert.is_false(r.ok)
    assert.equal(real, print)
  end)

  it("offers help(), stats() and log_level() only inside sessions", function()
    assert.is_nil(rawget(_G, "help"))
    assert.is_nil(rawget(_G, "stats"))
    assert.is_nil(rawget(_G, "log_level"))
    local r = s:eval("help()")
    assert.is_true(r.ok)
    assert.matches("stats%(%)", r.out)
    assert.matches("log_level%(group%[, level%]%)", r.out)
    local st = s:eval("stats()").values[1]
    assert.equal(uv.os_getpid(), st.pid)
    assert.is_true(st.rss > 0)
    assert.is_true(st.lua_memory > 0)
    assert.is_true(st.uptime >= 0)
    assert.equal("info", st.log_levels.ctl)
  end)

  it("gets and sets log levels, and returns bad levels as errors", function()
    assert.equal('"info"', s:eval("log_level('quic')").result)
    assert.is_true(s:eval("log_level('quic', 'debug')").ok)
    assert.equal("debug", log.get_level("quic"))
    local r = s:eval("log_level('quic', 'loud')")
    assert.is_false(r.ok)
    assert.matches("unknown log level 'loud'", r.error)
    assert.equal("debug", log.get_level("quic"))
    r = s:eval("log_level('no-such-group')")
    assert.is_false(r.ok)
    assert.matches("unknown log group", r.error)
    assert.is_true(s:eval("log_level('*', 'warn')").ok)
    assert.equal("warn", log.get_level("relay"))
    assert.equal("warn", s:eval("log_level()").values[1].ctl)
  end)

  it("lets modules add helpers and stats", function()
    repl.add_helper("peers_spec", function()
      return { "a", "b" }
    end, "peers_spec(): the peers of this spec")
    repl.add_stats("spec_section", function()
      return { streams = 3 }
    end)
    repl.add_stats("spec_broken", function()
      error("nope")
    end)
    assert.equal('{ "a", "b" }', s:eval("peers_spec()").result)
    assert.matches("the peers of this spec", s:eval("help()").out)
    local st = s:eval("stats()").values[1]
    assert.equal(3, st.spec_section.streams)
    assert.matches("^error: ", st.spec_broken)
    assert.is_nil(rawget(_G, "peers_spec"))
    assert.has_error(function()
      repl.add_helper("bad name", print)
    end)
    assert.has_error(function()
      repl.add_stats("x", "not a function")
    end)
  end)
end)

-- A small expect-like driver for interactive programs, run with python3's pty module.
local PTY_DRIVER = [=[
import json, os, pty, select, sys, termios, time
spec = json.load(open(sys.argv[1]))
pid, fd = pty.fork()
if pid == 0:
    os.environ.update(spec.get("env", {}))
    os.execvp(spec["argv"][0], spec["argv"])
transcript = b""
def read_until(expect, limit=30):
    # limit only bounds a hung program; success never depends on timing
    global transcript
    seen, deadline = b"", time.time() + limit
    while expect is None or expect.encode() not in seen:
        if time.time() > deadline:
            return False, seen
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                return expect is None, seen
            seen += data
            transcript += data
    return True, seen
def flags():
    l = termios.tcgetattr(fd)[3]
    return "icanon=%d echo=%d" % (bool(l & termios.ICANON), bool(l & termios.ECHO))
ok, _ = read_until(spec["first"])
during = flags()
for send, expect in spec["steps"]:
    if not ok:
        break
    os.write(fd, send.encode())
    ok, seen = read_until(expect)
    if not ok:
        print("EXPECTATION FAILED: %r not in %r" % (expect, seen))
if ok:
    ok, _ = read_until(None)  # the program must end by itself
after = flags()
_, status = os.waitpid(pid, 0)
print(transcript.decode("utf-8", "replace").replace("\r\n", "\n"))
print("DURING " + during)
print("AFTER " + after)
print("STATUS %d" % (os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1))
sys.exit(0 if ok else 1)
]=]

describe("tunnel repl", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(H.cleanup)

  local function drive(argv, env, first, steps)
    local driver = H.write_file(dir .. "/pty_driver.py", PTY_DRIVER)
    local cjson = require "cjson"
    for _, step in ipairs(steps) do
      step[2] = step[2] or cjson.null -- false: no expectation, just wait for the end
    end
    local spec = H.write_file(dir .. "/steps.json", cjson.encode({
      argv = argv, env = env, first = first, steps = steps }))
    return H.spawn({ "python3", driver, spec }):wait(120)
  end

  it("edits lines on a terminal: multi-line input, pretty results, Ctrl-C, history", function()
    local state = dir .. "/state"
    local p = drive({ H.BIN, "repl" }, { XDG_STATE_HOME = state }, "\r\n> ", {
      { "function twice(a)\r", "\r\n>> " },
      { "  return a * 2\r", "\r\n>> " },
      { "end\r", "\r\n> " },
      { "twice(21), { 1, 2, name = 'x' }\r", "\r\n> " },
      { "error('bad')\r", "\r\n> " },
      { "half typed\3", "\r\n> " }, -- Ctrl-C drops the line and stays
      { "for i = 1, 2 do\r", "\r\n>> " },
      { "\3", "\r\n> " }, -- and abandons an unfinished chunk
      { "print('out')\r", "\r\n> " },
      { "\4", false }, -- Ctrl-D leaves
    })
    assert.equal(0, p.code, p.stdout .. p.stderr)
    local out = p.stdout
    assert.matches('\n42\t{ 1, 2, name = "x" }\n> ', out, 1, true)
    assert.matches("\n> function twice%(a%)\n>>   return a %* 2\n>> end\n> ", out)
    assert.matches("repl:1: bad\nstack traceback:", out, 1, true)
    assert.matches("half typed^C\n> ", out, 1, true)
    assert.matches("\nout\n> ", out, 1, true)
    assert.matches("STATUS 0", out, 1, true)
    assert.matches("DURING icanon=0 echo=0", out, 1, true) -- libedit owned the terminal
    assert.matches("AFTER icanon=1 echo=1", out, 1, true) -- and gave it back
    local hist = state .. "/tunnel/history"
    local st = assert(uv.fs_stat(hist))
    assert.equal(tonumber("600", 8), st.mode % 512)
    local text = H.read_file(hist)
    assert.matches("twice", text)
    assert.not_matches("half", text) -- an interrupted line is not history
  end)

  it("restores the terminal when the process is told to stop", function()
    local p = drive({ H.BIN, "repl" }, { XDG_STATE_HOME = dir }, "\r\n> ", {
      { "require('luv').kill(require('luv').os_getpid(), 'sigterm')\r", "shutting down" },
    })
    assert.matches("STATUS 0", p.stdout, 1, true)
    assert.matches("AFTER icanon=1 echo=1", p.stdout, 1, true)
  end)

  it("evaluates a pipe chunk by chunk: results to stdout, errors to stderr", function()
    local p = H.tunnel({ "repl" }, { stdin = table.concat({
      "x = 20",
      "",
      "function add(a)",
      "  return a + x",
      "end",
      "return add(22)",
      "error('piped')",
      "print('printed'); return { 1, 'two' }",
    }, "\n") })
    assert.equal(1, p.code) -- one evaluation failed
    assert.equal('42\nprinted\n{ 1, "two" }\n', p.stdout)
    assert.matches("^repl:1: piped\nstack traceback:", p.stderr)
    p = H.tunnel({ "repl" }, { stdin = "return 1\nfor i = 1, 2 do\n" })
    assert.equal(1, p.code)
    assert.equal("1\n", p.stdout)
    assert.matches("'end' expected", p.stderr)
    assert.equal(0, H.tunnel({ "repl" }, { stdin = "return 'ok'\n" }).code)
  end)
end)
