-- The control socket and `tunnel attach`: a real script in its own process, real Unix
-- sockets, and a server inside the spec process for the protocol's edge cases.
local H = require "helper"
local uv = require "luv"
local cjson = require "cjson"
local ctl = require "tunnel.ctl"

local MODE_700, MODE_600 = tonumber("700", 8), tonumber("600", 8)

-- A script that keeps the loop alive and listens on a control socket of its own.
local SERVICE = [[
local uv = require "luv"
local keep = uv.new_timer()
keep:start(3600000, 3600000, function() end)
counter = 0 -- a global of the script, visible to attached sessions
local srv = assert(require("tunnel.ctl").listen { name = %q })
io.stdout:write("ready ", srv.path, "\n")
io.stdout:flush()
]]

-- Drives `tunnel attach NAME` on a pseudo-terminal (python3's pty module).
-- argv: tunnel-binary name runtime-dir state-dir mode ("session" or "dies").
local ATTACH_PTY = [=[
import os, pty, select, sys, time
bin, name, run, state, mode = sys.argv[1:6]
pid, fd = pty.fork()
if pid == 0:
    os.environ["XDG_RUNTIME_DIR"] = run
    os.environ["XDG_STATE_HOME"] = state
    os.execvp(bin, [bin, "attach", name])
out = b""
def until(s):
    # the deadline only bounds a hung program; success never depends on timing
    global out
    end = time.time() + 30
    while (s is None or s.encode() not in out) and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try: d = os.read(fd, 4096)
            except OSError: d = b""
            if not d: return
            out += d
until(name + "> ")
if mode == "session":
    os.write(fd, b"y = 2\r"); until("y = 2\r\n" + name + "> ")
    os.write(fd, b"function f()\r"); until(name + ">> ")
    os.write(fd, b"return y * 21 end\r"); until("end\r\n" + name + "> ")
    os.write(fd, b"f(), { ok = true }\r"); until("}\r\n" + name + "> ")
    os.write(fd, b"\x04")
else:
    print("PROMPT", flush=True)
until(None)
_, st = os.waitpid(pid, 0)
print(out.decode().replace("\r\n", "\n"))
print("STATUS", os.WEXITSTATUS(st))
]=]

describe("tunnel attach", function()
  local dir, run, p, name, sock
  local n = 0

  local function attach(args, stdin)
    local a = { "attach" }
    for _, v in ipairs(args) do
      a[#a + 1] = v
    end
    return H.tunnel(a, { stdin = stdin, env = { XDG_RUNTIME_DIR = run } })
  end

  before_each(function()
    dir = H.tmpdir()
    run = dir .. "/run"
    assert(uv.fs_mkdir(run, MODE_700))
    n = n + 1
    name = "svc" .. n
    local script = H.write_file(dir .. "/service.lua", SERVICE:format(name))
    -- --name too, so the automatic control socket of the CLI cannot add a second one
    p = H.start({ "--name", name, script }, { env = { XDG_RUNTIME_DIR = run } })
    assert.is_true(p:wait_output("ready", 20, "stdout"), p.stderr)
    sock = run .. "/tunnel/" .. name .. ".sock"
  end)

  after_each(function()
    p:kill("sigkill")
    p:wait(10)
    H.cleanup()
  end)

  it("listens on an owner-only socket in an owner-only directory", function()
    assert.matches("ready " .. sock:gsub("%p", "%%%0"), p.stdout)
    local d = assert(uv.fs_stat(run .. "/tunnel"))
    assert.equal("directory", d.type)
    assert.equal(MODE_700, d.mode % 512)
    local s = assert(uv.fs_stat(sock))
    assert.equal("socket", s.type)
    assert.equal(MODE_600, s.mode % 512)
  end)

  it("evaluates piped code inside the process: echo 'return stats()' | tunnel attach NAME",
    function()
      local a = attach({ name }, "return stats()\n")
      assert.equal(0, a.code, a.stderr)
      assert.matches("pid = " .. p.pid .. ",", a.stdout, 1, true)
      assert.matches("rss = %d+", a.stdout)
      assert.matches("log_levels = {", a.stdout, 1, true)
      assert.equal("", a.stderr)
    end)

  it("returns errors to the client and keeps the process running", function()
    local a = attach({ name }, "error('remote boom')\n_G.counter = counter + 1\nreturn counter\n")
    assert.equal(1, a.code)
    assert.matches("^repl:1: remote boom\nstack traceback:", a.stderr)
    assert.equal("1\n", a.stdout) -- the lines after the error still ran
    assert.is_false(p.done)
    a = attach({ name }, "_G.counter = counter + 1\nreturn counter, 'still here'\n")
    assert.equal(0, a.code, a.stderr)
    assert.equal('2\t"still here"\n', a.stdout)
    a = attach({ name }, "log_level('quic', 'deafening')\n")
    assert.equal(1, a.code)
    assert.matches("unknown log level 'deafening'", a.stderr)
    assert.is_false(p.done)
  end)

  it("keeps variables within one session, and sessions apart", function()
    local a = attach({ name }, table.concat({
      "x = 20",
      "local function add(v)",
      "  return v + x",
      "end",
      "function add2(v) return v + x + 2 end",
      "print('printed remotely')",
      "return add2(20)",
    }, "\n"))
    assert.equal(0, a.code, a.stderr)
    assert.equal("printed remotely\n42\n", a.stdout)
    a = attach({ name }, "return x, add2\n")
    assert.equal("nil\tnil\n", a.stdout) -- a new session, and no global was created
  end)

  it("logs every command under ctl, but never the results", function()
    local a = attach({ name }, "return ('quiet'):upper() .. '-RESULT'\n")
    assert.equal('"QUIET-RESULT"\n', a.stdout)
    assert.is_true(p:wait_output("attach #%d+: return %('quiet'%):upper%(%)", 10))
    assert.matches("INFO  ctl: attach #%d+: return %('quiet'%):upper%(%) %.%. '%-RESULT' %-> ok",
      p.stderr)
    assert.not_matches("QUIET%-RESULT", p.stderr)
  end)

  it("lists live tunnels and attaches by name, by path or to the only one", function()
    local l = attach({ "--list" })
    assert.equal(0, l.code, l.stderr)
    assert.matches("NAME%s+PID%s+SCRIPT\n", l.stdout)
    assert.matches(name .. "%s+" .. p.pid .. "%s+.*service%.lua", l.stdout)
    local a = attach({ sock }, "return 6 * 7\n")
    assert.equal(0, a.code, a.stderr)
    assert.equal("42\n", a.stdout)
    a = attach({}, "return 'only one'\n")
    assert.equal(0, a.code, a.stderr)
    assert.equal('"only one"\n', a.stdout)
  end)

  it("says clearly when there is no such tunnel", function()
    local a = attach({ "nosuch" }, "return 1\n")
    assert.equal(1, a.code)
    assert.matches("no tunnel named nosuch is running %(see tunnel attach %-%-list%)", a.stderr)
    a = attach({ dir .. "/nothing.sock" }, "return 1\n")
    assert.equal(1, a.code)
    assert.matches("no tunnel is listening on", a.stderr)
  end)

  it("removes its socket on SIGTERM", function()
    assert.is_truthy(uv.fs_stat(sock))
    p:kill("sigterm")
    p:wait(20)
    assert.equal(0, p.code)
    assert.is_nil(uv.fs_stat(sock))
  end)

  it("replaces a stale socket, and refuses a live one", function()
    p:kill("sigkill") -- dies without cleaning up: the socket file stays, nobody listens
    p:wait(10)
    assert.is_truthy(uv.fs_stat(sock))
    assert.is_false(ctl.alive(sock))
    local script = H.write_file(dir .. "/service.lua", SERVICE:format(name))
    p = H.start({ script }, { env = { XDG_RUNTIME_DIR = run } })
    assert.is_true(p:wait_output("ready", 20, "stdout"), p.stderr)
    assert.matches("removing stale control socket", p.stderr)
    assert.equal("1\n", attach({ name }, "return 1\n").stdout)
    -- a second process cannot take the name of a live one
    local q = H.tunnel({ "-e", ("assert(require('tunnel.ctl').listen { name = %q })"):format(
      name) }, { env = { XDG_RUNTIME_DIR = run } })
    assert.equal(1, q.code)
    assert.matches("a tunnel named '" .. name .. "' is already running", q.stderr)
    assert.matches("%-%-name", q.stderr)
    assert.equal("1\n", attach({ name }, "return 1\n").stdout) -- and did not disturb it
  end)

  local function drive(mode)
    local py = H.write_file(dir .. "/attach_pty.py", ATTACH_PTY)
    return H.spawn({ "python3", py, H.BIN, name, run, dir, mode })
  end

  it("attaches interactively on a terminal with the tunnel's name in the prompt", function()
    local d = drive("session"):wait(120)
    assert.matches("Attached to tunnel " .. name .. " %(pid " .. p.pid, d.stdout)
    assert.matches("\n" .. name .. "> function f%(%)\n" .. name .. ">> return y %* 21 end\n",
      d.stdout)
    assert.matches('\n42\t{ ok = true }\n' .. name .. '> ', d.stdout, 1, true)
    assert.matches("STATUS 0", d.stdout, 1, true)
  end)

  it("tells the client when the process goes away while attached", function()
    local d = drive("dies")
    assert.is_true(d:wait_output("PROMPT", 60, "stdout"), d.stdout)
    p:kill("sigterm")
    d:wait(60)
    assert.matches("tunnel " .. name .. " closed the connection", d.stdout, 1, true)
    assert.matches("STATUS 1", d.stdout, 1, true)
  end)
end)

describe("tunnel.ctl", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(H.cleanup)

  -- A raw protocol client: send lines, collect reply lines until `count` arrived or EOF.
  local function raw(path, send, count)
    local pipe = uv.new_pipe(false)
    local got, eof, buf = {}, false, ""
    pipe:connect(path, function(err)
      assert(not err, err)
      pipe:read_start(function(_, data)
        if not data then
          eof = true
          pipe:close()
          return
        end
        buf = buf .. data
        for line in buf:gmatch("([^\n]*)\n") do
          got[#got + 1] = cjson.decode(line)
        end
        buf = buf:match("[^\n]*$")
      end)
      pipe:write(send)
    end)
    H.wait_until(function()
      return eof or #got >= count
    end, 20)
    if not pipe:is_closing() then
      pipe:close()
    end
    return got, eof
  end

  it("greets with pid and name, answers JSON requests, and rejects junk", function()
    local srv = assert(ctl.listen({ name = "proto", dir = dir .. "/d" }))
    local got = raw(srv.path, table.concat({
      '{"id":1,"code":"return 1 + 1"}',
      '{"id":"two","code":"error(\'x\')"}',
      '{"id":3,"code":"for i = 1, 2 do"}',
      'this is not json',
      '{"id":5,"op":"ping"}',
      '{"id":6,"op":"format-disk"}',
      '{"id":7,"code":"print(\'p\'); return {1}"}',
    }, "\n") .. "\n", 8)
    srv:close()
    assert.equal("tunnel-ctl", got[1].hello)
    assert.equal(uv.os_getpid(), got[1].pid)
    assert.equal("proto", got[1].name)
    assert.equal(ctl.PROTOCOL, got[1].protocol)
    assert.same({ id = 1, ok = true, result = "2", out = "" }, got[2])
    assert.equal("two", got[3].id)
    assert.is_false(got[3].ok)
    assert.matches("^repl:1: x", got[3].error)
    assert.same({ id = 3, incomplete = true }, got[4])
    assert.is_false(got[5].ok)
    assert.matches("bad request", got[5].error)
    assert.same({ id = 5, ok = true }, got[6])
    assert.matches("unknown op", got[7].error)
    assert.same({ id = 7, ok = true, result = "{ 1 }", out = "p\n" }, got[8])
  end)

  it("answers an oversized request with an error and hangs up", function()
    local srv = assert(ctl.listen({ name = "big", dir = dir }))
    local got, eof = raw(srv.path, ("x"):rep(ctl.MAX_REQUEST + 4096), 2)
    assert.is_true(eof)
    assert.is_false(got[2].ok)
    assert.matches("request too large", got[2].error)
    -- and still serves others
    got = raw(srv.path, '{"id":1,"code":"return 3"}\n', 2)
    assert.equal("3", got[2].result)
    srv:close()
  end)

  it("survives a client that leaves before its answer", function()
    local srv = assert(ctl.listen({ name = "rude", dir = dir }))
    for _ = 1, 5 do
      local pipe = uv.new_pipe(false)
      pipe:connect(srv.path, function()
        pipe:write('{"id":1,"code":"return string.rep(\'x\', 200000)"}\n', function()
          pipe:close()
        end)
      end)
    end
    H.wait_until(function()
      return srv:clients() == 0
    end, 10)
    local got = raw(srv.path, '{"id":1,"code":"return \'fine\'"}\n', 2)
    assert.equal('"fine"', got[2].result)
    srv:close()
  end)

  it("removes the socket on close, and is idempotent", function()
    local srv = assert(ctl.listen({ name = "closing", dir = dir }))
    assert.is_truthy(uv.fs_stat(srv.path))
    assert.same({ srv }, ctl.servers())
    srv:close()
    srv:close()
    assert.is_nil(uv.fs_stat(srv.path))
    assert.same({}, ctl.servers())
  end)

  it("refuses a live name and a directory others can reach", function()
    local srv = assert(ctl.listen({ name = "taken", dir = dir }))
    local none, err = ctl.listen({ name = "taken", dir = dir })
    assert.is_nil(none)
    assert.matches("already running.*%-%-name", err)
    srv:close()

    local open = dir .. "/open"
    assert(uv.fs_mkdir(open, MODE_700))
    assert(uv.fs_chmod(open, tonumber("755", 8)))
    none, err = ctl.listen({ name = "x", dir = open })
    assert.is_nil(none)
    assert.matches("refusing to use .*permissions are 755.*chmod 700", err)

    if uv.os_get_passwd().uid == 0 then -- as root we can hand a directory to someone else
      local foreign = dir .. "/foreign"
      assert(uv.fs_mkdir(foreign, MODE_700))
      assert(uv.fs_chown(foreign, 1, 1))
      none, err = ctl.listen({ name = "x", dir = foreign })
      assert.is_nil(none)
      assert.matches("belongs to uid 1", err)
    end

    assert.is_nil((ctl.listen({ name = "../escape", dir = dir })))
    assert.has_error(function()
      ctl.listen({ name = "x", port = 1 })
    end)
  end)

  it("lists only live sockets", function()
    local a = assert(ctl.listen({ name = "alpha", dir = dir }))
    local b = assert(ctl.listen({ name = "beta", dir = dir }))
    local stale = uv.new_pipe(false) -- bound, never listening: what a crash leaves behind
    assert(stale:bind(dir .. "/gamma.sock"))
    stale:close()
    local names = {}
    for _, t in ipairs(ctl.list({ dir = dir })) do
      names[#names + 1] = t.name
    end
    assert.same({ "alpha", "beta" }, names)
    local full
    ctl.list({ dir = dir }, function(l)
      full = l
    end)
    H.wait_until(function()
      return full ~= nil
    end, 10)
    assert.equal(uv.os_getpid(), full[1].pid)
    a:close()
    b:close()
  end)

  it("defaults to $XDG_RUNTIME_DIR/tunnel, else /tmp/tunnel-<uid>", function()
    local saved = os.getenv("XDG_RUNTIME_DIR")
    uv.os_setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert.equal("/run/user/4242/tunnel", ctl.dir())
    uv.os_unsetenv("XDG_RUNTIME_DIR")
    assert.equal("/tmp/tunnel-" .. uv.os_get_passwd().uid, ctl.dir())
    if saved then
      uv.os_setenv("XDG_RUNTIME_DIR", saved)
    end
  end)
end)
