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
  stdout:read_start(function(_, data)
    if data then
      p.stdout = p.stdout .. data
    else
      stdout:close()
      maybe_done()
    end
  end)
  stderr:read_start(function(_, data)
    if data then
      p.stderr = p.stderr .. data
    else
      stderr:close()
      maybe_done()
    end
  end)
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

--- Start spec/tools/netcheck.py with `args` (its subcommand first), tracked in `procs`;
--- `opts` as for H.spawn.
function H.netcheck(procs, args, opts)
  local cmd = { "python3", "spec/tools/netcheck.py" }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = tostring(a)
  end
  return H.track(procs, H.spawn(cmd, opts), "netcheck " .. args[1])
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

--- Run the tunnel binary to completion: H.tunnel({"generate-token"}, opts) -> process.
function H.tunnel(args, opts)
  local cmd = { H.BIN }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = a
  end
  return H.spawn(cmd, opts):wait(opts and opts.timeout)
end

--- Start the tunnel binary and return at once (see H.spawn).
function H.start(args, opts)
  local cmd = { H.BIN }
  for _, a in ipairs(args) do
    cmd[#cmd + 1] = a
  end
  return H.spawn(cmd, opts)
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
