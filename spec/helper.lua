-- Shared test helpers: spawn the tunnel binary (or anything) with luv on the host's loop,
-- temp dirs, waiting with deadlines. Deadlines only bound a test; they never decide a result.
local uv = require "luv"

local H = {}

H.BIN = os.getenv("TUNNEL_BIN") or "build/tunnel"

local function environ(extra)
  local env = {}
  local base = uv.os_environ()
  for k, v in pairs(extra or {}) do
    base[k] = v or nil
    if v == false then
      base[k] = nil
    end
  end
  for k, v in pairs(base) do
    env[#env + 1] = k .. "=" .. v
  end
  return env
end

--- Drive the loop until cond() is true or `timeout` seconds pass. Returns cond()'s last value.
function H.wait_until(cond, timeout)
  local deadline = uv.now() + (timeout or 10) * 1000
  local r = cond()
  local t = uv.new_timer()
  t:start(10, 10, function() end) -- keeps uv.run("once") from blocking forever
  while not r and uv.now() < deadline do
    uv.run("once")
    uv.update_time()
    r = cond()
  end
  t:close()
  return r
end

--- Start a process. `cmd` is a list (cmd[1] is the program). opts: env (extra variables;
-- false removes one), stdin (string written then closed, or true to keep it open), cwd.
-- Returns an object with .stdout/.stderr (accumulated text), :wait(timeout), :kill(sig),
-- :write(s), :close_stdin(), :wait_output(pattern, timeout, which).
function H.spawn(cmd, opts)
  opts = opts or {}
  local p = { stdout = "", stderr = "", done = false }
  local stdin, stdout, stderr = uv.new_pipe(false), uv.new_pipe(false), uv.new_pipe(false)
  local args = {}
  for i = 2, #cmd do
    args[#args + 1] = cmd[i]
  end
  local closed = 0
  local function maybe_done()
    closed = closed + 1
  end
  local handle, pid = uv.spawn(cmd[1], {
    args = args,
    stdio = { stdin, stdout, stderr },
    env = environ(opts.env),
    cwd = opts.cwd,
  }, function(code, signal)
    p.code, p.signal, p.done = code, signal, true
  end)
  if not handle then
    error("cannot spawn " .. cmd[1] .. ": " .. tostring(pid))
  end
  p.handle, p.pid = handle, pid
  -- Accumulate what `pipe` delivers in p[field] until it ends.
  local function collect(pipe, field)
    pipe:read_start(function(_, data)
      if data then
        p[field] = p[field] .. data
      else
        pipe:close()
        maybe_done()
      end
    end)
  end
  collect(stdout, "stdout")
  collect(stderr, "stderr")
  function p.write(_, s)
    stdin:write(s)
  end
  function p.close_stdin()
    if not stdin:is_closing() then
      stdin:shutdown(function()
        stdin:close()
      end)
    end
  end
  if type(opts.stdin) == "string" then
    stdin:write(opts.stdin)
    p:close_stdin()
  elseif opts.stdin ~= true then
    p:close_stdin()
  end
  function p.wait(_, timeout)
    H.wait_until(function()
      return p.done and closed == 2
    end, timeout or 30)
    if not p.done then
      p:kill("sigkill")
      H.wait_until(function()
        return p.done
      end, 5)
      p.timed_out = true
    end
    if not handle:is_closing() then
      handle:close()
    end
    return p
  end
  function p.kill(_, sig)
    if not p.done then
      handle:kill(sig or "sigterm")
    end
  end
  function p.wait_output(_, pattern, timeout, which)
    return H.wait_until(function()
      return p[which or "stderr"]:find(pattern) ~= nil or p.done
    end, timeout or 10) and p[which or "stderr"]:find(pattern) ~= nil
  end
  return p
end

--- Remember process `p` under `label` in the list `procs` (for H.logs and cleanup); returns p.
function H.track(procs, p, label)
  p.label = label
  procs[#procs + 1] = p
  return p
end

--- The stdout/stderr of every process in `procs`, for assertion messages.
function H.logs(procs)
  local parts = {}
  for _, p in ipairs(procs) do
    parts[#parts + 1] = string.format("--- %s (pid %s, done %s, code %s)\n%s%s", p.label,
      tostring(p.pid), tostring(p.done), tostring(p.code), p.stdout, p.stderr)
  end
  return "\n" .. table.concat(parts, "\n")
end

--- End process `p` if it still runs: SIGTERM, then SIGKILL when it has not ended within 5 s.
function H.stop(p)
  if p.done then
    return
  end
  p:kill("sigterm")
  H.wait_until(function()
    return p.done
  end, 5)
  if not p.done then
    p:kill("sigkill")
    H.wait_until(function()
      return p.done
    end, 5)
  end
end

--- A test's teardown: SIGKILL every process in `procs` that still runs, then wait for each
-- (up to `timeout` s, default 10) and close its handle.
function H.kill_all(procs, timeout)
  for _, p in ipairs(procs) do
    p:kill("sigkill")
  end
  for _, p in ipairs(procs) do
    p:wait(timeout or 10)
  end
end

H.NETCHECK = "spec/tools/netcheck.py"

--- Start spec/tools/netcheck.py with `args` (its subcommand first), tracked in `procs`;
--- `opts` as for H.spawn.
function H.netcheck(procs, args, opts)
  local cmd = { "python3", H.NETCHECK }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = tostring(a)
  end
  return H.track(procs, H.spawn(cmd, opts), "netcheck " .. args[1])
end

--- Wait (up to 20 s) for the netcheck service `p` (tcp-echo, udp-echo) to print the port it
-- listens on. Returns p and the port; raises when it did not start, with `logs()` appended.
function H.port_of(p, logs)
  H.wait_until(function()
    return p.stdout:match("PORT %d+\n") or p.done
  end, 20)
  local port = tonumber(p.stdout:match("PORT (%d+)\n"))
  if not port then
    error(tostring(p.label) .. " did not start:" .. logs(), 2)
  end
  return p, port
end

--- Start a netcheck service (`args` as for H.netcheck), tracked in `procs`; returns it and the
-- port it listens on (see H.port_of).
function H.service(procs, args, opts)
  return H.port_of(H.netcheck(procs, args, opts), function()
    return H.logs(procs)
  end)
end

--- Start `tunnel relay` with `args` (opts as for H.spawn), tracked in `procs`, and wait (up to
-- 20 s) for its "relay listening on http://127.0.0.1:PORT" line. Returns the process and the
-- port; raises with its output when it did not start.
function H.start_relay(procs, args, opts)
  local p = H.track(procs, H.start(H.append({ "relay" }, args), opts), "tunnel relay")
  H.wait_until(function()
    return p.stdout:find("relay listening on http://127%.0%.0%.1:%d+\n") or p.done
  end, 20)
  local port = tonumber(p.stdout:match("relay listening on http://127%.0%.0%.1:(%d+)"))
  if not port then
    error("relay did not start: " .. p.stdout .. p.stderr, 2)
  end
  return p, port
end

--- Wait (up to `timeout` s, default 60) until `p` wrote `pattern` (`plain`: a plain string) on
-- stderr, or ended; raises with `logs()` appended when it did not.
function H.wait_err(p, pattern, plain, timeout, logs)
  H.wait_until(function()
    return p.stderr:find(pattern, 1, plain) or p.done
  end, timeout or 60)
  if not p.stderr:find(pattern, 1, plain) then
    error("expected '" .. pattern .. "' from " .. tostring(p.label) .. logs(), 2)
  end
end

--- The first signaling block of `kind` ("OFFER", "ANSWER", "REJECT") in `text`, BEGIN to END.
function H.block_of(text, kind)
  return text:match("(%-%-%-%-%-BEGIN TUNNEL " .. kind .. "%-%-%-%-%-.-%-%-%-%-%-END TUNNEL " ..
    kind .. "%-%-%-%-%-)")
end

--- Wait (up to `timeout` s) for `p` to print a `kind` block on stdout and return it; raises
-- with `logs()` appended when it did not.
function H.wait_block(p, kind, timeout, logs)
  H.wait_until(function()
    return H.block_of(p.stdout, kind) or p.done
  end, timeout)
  local block = H.block_of(p.stdout, kind)
  if not block then
    error("no " .. kind .. " block from " .. tostring(p.label) .. logs(), 2)
  end
  return block
end

--- One test's world for specs that make one per test: a temp dir (`dir`, default a new
-- H.tmpdir()), an environment that keeps the tunnel processes' runtime files and home there
-- and leaves TUNNEL_LOG unset, and an empty list of processes.
function H.world(dir)
  dir = dir or H.tmpdir()
  return { procs = {}, dir = dir, env = { XDG_RUNTIME_DIR = dir, HOME = dir, TUNNEL_LOG = false } }
end

--- For specs whose tests each keep their processes in a list of their own: H.track, H.logs,
-- H.netcheck, H.service and H.wait_err (with those logs) bound to the list that `get()` returns
-- at the time of the call.
--   local T
--   local P = H.bind(function() return T.procs end)
--   P.track(p, label); P.logs(); P.netcheck(args, opts); P.service(args, opts)
--   P.wait_err(p, pattern, plain, timeout)
function H.bind(get)
  local P = {}
  function P.track(p, label)
    return H.track(get(), p, label)
  end
  function P.logs()
    return H.logs(get())
  end
  function P.netcheck(args, opts)
    return H.netcheck(get(), args, opts)
  end
  function P.service(args, opts)
    return H.service(get(), args, opts)
  end
  function P.wait_err(p, pattern, plain, timeout)
    return H.wait_err(p, pattern, plain, timeout, P.logs)
  end
  return P
end

--- How many times `pattern` occurs in `s` (without overlaps; `plain`: a plain string).
function H.count(s, pattern, plain)
  local n, i = 0, 1
  while true do
    local a, b = s:find(pattern, i, plain)
    if not a then
      return n
    end
    n, i = n + 1, b + 1
  end
end

--- A local TCP (or UDP, proto = "udp") port on 127.0.0.1 that is free right now.
function H.free_port(proto)
  local h = proto == "udp" and uv.new_udp() or uv.new_tcp()
  assert(h:bind("127.0.0.1", 0))
  local port = h:getsockname().port
  h:close()
  uv.run("nowait")
  return port
end

--- Append the items of list `more` (may be nil) to `list`; returns `list`.
function H.append(list, more)
  for _, a in ipairs(more or {}) do
    list[#list + 1] = a
  end
  return list
end

--- Start the tunnel binary and return at once (see H.spawn).
function H.start(args, opts)
  return H.spawn(H.append({ H.BIN }, args), opts)
end

--- Run the tunnel binary to completion: H.tunnel({"generate-token"}, opts) -> process.
-- opts as for H.spawn, and timeout (seconds, as for :wait).
function H.tunnel(args, opts)
  return H.start(args, opts):wait(opts and opts.timeout)
end

--- A fresh temporary directory, removed by H.cleanup().
local tmpdirs = {}
function H.tmpdir()
  local d = assert(uv.fs_mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/tunnel-spec-XXXXXX"))
  tmpdirs[#tmpdirs + 1] = d
  return d
end

function H.cleanup()
  for _, d in ipairs(tmpdirs) do
    os.execute("rm -rf '" .. d .. "'")
  end
  tmpdirs = {}
end

function H.write_file(path, content, mode)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  if mode then
    assert(uv.fs_chmod(path, mode))
  end
  return path
end

function H.read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

return H
