--- `tunnel repl`: an interactive Lua prompt on the tunnel runtime (see docs/ctl.md).
--
-- Also the terminal front end shared with `tunnel attach`: M.console (line editing on a tty)
-- and M.batch (evaluate everything read from a pipe or file). Both take an `eval(code, cb)`
-- function, so the code may run here or in another process.
local uv = require "luv"
local repl = require "tunnel.repl"
local core_host = require "tunnel.core.host"

local M = {}

local function write_out(s)
  if s and s ~= "" then
    io.stdout:write(s)
  end
end

-- Print one evaluation's outcome: printed output and result on stdout, errors on stderr.
-- Returns true when it succeeded.
function M.show(r)
  write_out(r.out)
  if r.ok then
    if r.result and r.result ~= "" then
      io.stdout:write(r.result, "\n")
    end
    io.stdout:flush()
    if r.exiting then
      io.stderr:write("(the process is shutting down)\n")
    end
    return true
  end
  io.stdout:flush()
  io.stderr:write(r.error or "error", "\n")
  io.stderr:flush()
  return false
end

local function mkdir_p(dir)
  local path = ""
  for part in dir:gmatch("[^/]+") do
    path = path .. "/" .. part
    if not uv.fs_stat(path) then
      uv.fs_mkdir(path, tonumber("700", 8))
    end
  end
  return uv.fs_stat(dir) ~= nil
end

--- Where line history is kept: $XDG_STATE_HOME/tunnel/history or
-- ~/.local/state/tunnel/history.
function M.history_path()
  local state = os.getenv("XDG_STATE_HOME")
  if not state or state == "" then
    local home = os.getenv("HOME")
    if not home or home == "" then
      return nil
    end
    state = home .. "/.local/state"
  end
  return (state:gsub("/+$", "")) .. "/tunnel/history"
end

--- Read everything on stdin (pipe or file) without blocking the loop; cb(text) or
-- cb(nil, err).
function M.read_stdin(cb)
  local parts = {}
  local function step()
    uv.fs_read(0, 65536, -1, function(err, data)
      if err then
        cb(nil, err)
      elseif data == nil or data == "" then
        cb(table.concat(parts))
      else
        parts[#parts + 1] = data
        step()
      end
    end)
  end
  step()
end

--- Evaluate `text` chunk by chunk (a line that leaves the code incomplete continues onto the
-- next lines). `eval(code, cb)` runs one chunk and calls cb(result) with a result table as
-- repl.Session:eval returns it. done(failures) is called at the end; `done` is also called
-- early by the caller if the evaluator goes away.
function M.batch(text, eval, done)
  local lines = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line
  end
  if text:sub(-1) == "\n" then
    lines[#lines] = nil -- the split above adds an empty last line after a final newline
  end
  local i, failures, pending = 0, 0, nil
  local function next_chunk()
    while i < #lines do
      i = i + 1
      local line = lines[i]
      if pending or not line:match("^%s*$") then
        pending = pending and (pending .. "\n" .. line) or line
        if not repl.incomplete(pending) then
          local code = pending
          pending = nil
          eval(code, function(r)
            if r.incomplete then
              r = { ok = false, error = "incomplete input: " .. code }
            end
            if not M.show(r) then
              failures = failures + 1
            end
            next_chunk()
          end)
          return
        end
      end
    end
    if pending then
      local _, err = repl.compile(pending)
      M.show({ ok = false, error = err or "incomplete input at end of file" })
      failures = failures + 1
      pending = nil
    end
    done(failures)
  end
  next_chunk()
end

--- Interactive prompt with line editing on the terminal. opts:
--   eval(code, cb)   run a complete chunk, cb(result) (as repl.Session:eval returns)
--   prompt           main prompt (default "> "); continuation is `cont` (default ">> ")
--   cont
--   banner           printed first (optional)
--   on_exit()        called after Ctrl-D (default: stop the process with status 0)
-- Returns an object with :close() (restores the terminal).
function M.console(opts)
  local rl = require "tunnel.core.readline"
  local prompt, cont = opts.prompt or "> ", opts.cont or ">> "
  local hist = M.history_path()
  local have_hist = hist and mkdir_p(hist:match("^(.*)/[^/]*$"))
  if have_hist then
    rl.read_history(hist)
  end

  local self = { closed = false }
  local poll = uv.new_poll(0)
  local winch = uv.new_signal()
  local buffer -- lines of an unfinished chunk
  local busy = false -- an evaluation is running (remote ones answer later)
  local unhook

  function self.close()
    if self.closed then
      return
    end
    self.closed = true
    rl.stop()
    if have_hist then
      rl.write_history(hist)
    end
    if not poll:is_closing() then
      poll:close()
    end
    if not winch:is_closing() then
      winch:close()
    end
    if unhook then
      unhook()
      unhook = nil
    end
  end

  local function show_prompt()
    if not self.closed then
      rl.prompt(buffer and cont or prompt)
      poll:start("r", self.on_readable)
    end
  end

  local function on_line(line)
    if not buffer and line:match("^%s*$") then
      show_prompt()
      return
    end
    if not line:match("^%s*$") then
      rl.add_history(line)
    end
    local code = buffer and (buffer .. "\n" .. line) or line
    if repl.incomplete(code) then
      buffer = code
      show_prompt()
      return
    end
    buffer = nil
    busy = true
    -- Until the answer is shown the terminal is back in its normal mode: keystrokes wait in
    -- it, and Ctrl-C is SIGINT again, which ends this process (not the one it is attached to)
    -- if a remote evaluation never finishes.
    poll:stop()
    rl.stop()
    opts.eval(code, function(r)
      busy = false
      if self.closed then
        return
      end
      M.show(r)
      show_prompt()
    end)
  end

  function self.on_readable(err)
    if err or self.closed then
      return
    end
    while not busy and not self.closed do
      local line, ev = rl.read_char()
      if line then
        on_line(line)
      elseif ev == "eof" then
        io.stdout:write("\n")
        io.stdout:flush()
        self.close()
        if opts.on_exit then
          opts.on_exit()
        else
          core_host.stop(0)
        end
        return
      elseif ev == "interrupt" then
        buffer = nil
        show_prompt()
      else
        return
      end
    end
  end

  -- The terminal must come back in its normal state whichever way the process ends.
  local ok, host = pcall(require, "tunnel.host")
  if ok then
    unhook = host.on_shutdown(self.close)
  end
  winch:start("sigwinch", function()
    rl.resize()
  end)
  winch:unref()
  if opts.banner then
    io.stdout:write(opts.banner, "\n")
    io.stdout:flush()
  end
  show_prompt()
  return self
end

local function interactive()
  return uv.guess_handle(0) == "tty"
end

--- `tunnel repl`. Returns nil while the prompt runs on the loop, or an exit code.
function M.run()
  local session = repl.session({ name = "repl" })
  local function eval(code, cb)
    cb(session:eval(code))
  end
  if not interactive() then
    M.read_stdin(function(text, err)
      if not text then
        io.stderr:write("tunnel repl: cannot read stdin: ", tostring(err), "\n")
        core_host.stop(1)
        return
      end
      M.batch(text, eval, function(failures)
        core_host.stop(failures > 0 and 1 or 0)
      end)
    end)
    return nil
  end
  local v = core_host.versions()
  M.console({
    eval = eval,
    banner = string.format("tunnel %s (%s). help() lists the helpers; Ctrl-D leaves.",
      v.tunnel, jit and jit.version or _VERSION),
  })
  return nil
end

return M
