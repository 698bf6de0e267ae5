--- `tunnel attach [NAME|PATH] [--list]`: a REPL inside a running tunnel process, over its
-- control socket (see docs/ctl.md).
local uv = require "luv"
local ctl = require "tunnel.ctl"
local console = require "tunnel.cmd.repl"
local core_host = require "tunnel.core.host"

local M = {}

local function err(fmt, ...)
  io.stderr:write("tunnel attach: ", string.format(fmt, ...), "\n")
end

local function print_list(list, out)
  local w = 4
  for _, t in ipairs(list) do
    w = math.max(w, #t.name)
  end
  out:write(string.format("%-" .. w .. "s  %7s  %s\n", "NAME", "PID", "SCRIPT"))
  for _, t in ipairs(list) do
    out:write(string.format("%-" .. w .. "s  %7s  %s\n", t.name, t.pid or "?",
      t.script or "-"))
  end
end

local function list(dir)
  ctl.list({ dir = dir }, function(l)
    if #l == 0 then
      io.stdout:write("no tunnels are running (no live control socket in ", dir, ")\n")
    else
      print_list(l, io.stdout)
    end
    io.stdout:flush()
    core_host.stop(0)
  end)
  return nil
end

-- Talk to the server at `path`: a prompt on a terminal, otherwise evaluate stdin.
local function attach(path, label)
  local client, con, hello
  local waiting = {} -- request id -> callback
  local finished = false

  local function finish(code)
    if not finished then
      finished = true
      if con then
        con.close()
      end
      client:close()
      io.stdout:flush()
      core_host.stop(code)
    end
  end

  local function eval(code, cb)
    waiting[client:eval(code)] = cb
  end

  local function start()
    local name = hello.name or label
    if uv.guess_handle(0) ~= "tty" then
      console.read_stdin(function(text, rerr)
        if not text then
          err("cannot read stdin: %s", tostring(rerr))
          finish(1)
          return
        end
        console.batch(text, eval, function(failures)
          finish(failures > 0 and 1 or 0)
        end)
      end)
      return
    end
    con = console.console({
      eval = eval,
      prompt = name .. "> ",
      cont = name .. ">> ",
      banner = string.format("Attached to tunnel %s (pid %s%s, tunnel %s).\n"
        .. "Code runs inside that process; help() lists the helpers; Ctrl-D detaches.",
        name, tostring(hello.pid), hello.script and (", " .. hello.script) or "",
        tostring(hello.version)),
      on_exit = function()
        finish(0)
      end,
    })
  end

  client = ctl.connect(path, {
    on_hello = function(h)
      hello = h
      start()
    end,
    on_reply = function(r)
      local cb = r.id and waiting[r.id]
      if cb then
        waiting[r.id] = nil
        cb(r)
      elseif not r.ok and r.error then
        err("%s", r.error)
      end
    end,
    on_close = function(cerr)
      if finished then
        return
      end
      if con then
        con.close()
        con = nil
      end
      io.stdout:flush()
      if not hello then
        err("cannot attach to %s: %s", label, tostring(cerr))
      else
        err("tunnel %s closed the connection", hello.name or label)
      end
      finished = true
      core_host.stop(1)
    end,
  })
  return nil
end

--- Entry point: args.target (NAME or PATH, optional) and args.list (boolean).
-- Returns nil while attached (the loop runs), or an exit code.
function M.run(args)
  local dir = ctl.dir()
  if args.list then
    return list(dir)
  end
  local target = args.target
  if not target then
    local live = ctl.list({ dir = dir })
    if #live == 1 then
      return attach(live[1].path, live[1].name)
    elseif #live == 0 then
      err("no tunnel is running (no live control socket in %s)", dir)
      return 1
    end
    err("%d tunnels are running; say which one:", #live)
    print_list(live, io.stderr)
    io.stderr:write("hint: tunnel attach NAME\n")
    return 1
  end
  local path = ctl.resolve(target, dir)
  if not ctl.alive(path) then
    if target:find("/", 1, true) then
      err("no tunnel is listening on %s (see tunnel attach --list)", path)
    else
      err("no tunnel named %s is running (see tunnel attach --list)", target)
    end
    return 1
  end
  local label = target:find("/", 1, true) and path or target
  return attach(path, label)
end

return M
