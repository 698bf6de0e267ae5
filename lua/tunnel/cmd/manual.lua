--- `tunnel server manual` and `tunnel client manual`: ICE with the offer and answer carried by
-- hand. Blocks go to stdout, prompts and progress to stderr, pasted blocks come from stdin.
local common = require "tunnel.cmd.common"
local host = require "tunnel.host"
local log = require("tunnel.log").group("manual")
local uv = require "luv"

local M = {}

local fail = common.fail

-- Options of the iroh-mode command that mean nothing in manual mode.
local IROH_ONLY = {
  server = { listen = "--listen", auth_tokens = "--auth-tokens",
    auth_tokens_file = "--auth-tokens-file", max_sessions = "--max-sessions",
    secret = "--secret", secret_file = "--secret-file" },
  client = { server_node_id = "--server-node-id", server_addr = "--server-addr",
    auth_token = "--auth-token", auth_token_file = "--auth-token-file" },
}

--- The ICE options of the modes that run ICE (manual, nostr).
function M.ice_options(c)
  c:option("--stun-server", "STUN server host[:port] for server-reflexive candidates " ..
    "(repeatable; default: the config's list, else public servers).")
    :argname("<host:port>"):count("*")
  c:flag("--no-stun", "Do not use STUN: host candidates only (same LAN, or offline).")
  c:option("--ice-host", "Use only this local address as a host candidate (repeatable; " ..
    "default: every non-loopback interface address).")
    :argname("<ip>"):count("*")
end

--- argparse setup for the `manual` subcommand of `server` or `client`.
function M.configure(c, role)
  M.ice_options(c)
  if role == "client" then
    c:epilog(table.concat({
      "The client prints an OFFER block: give it to the server's operator, who pastes it into",
      "`tunnel server manual`; paste the ANSWER block the server prints back here.",
      "Also takes -s/--source, -t/--target, -c/--config and --default-config, before or",
      "after `manual`.",
      "Example:",
      "  tunnel client manual --source tcp://127.0.0.1:22 --target 127.0.0.1:2222",
    }, "\n"))
  else
    c:epilog(table.concat({
      "Paste the client's OFFER block; give the ANSWER block this prints to the client.",
      "One session per process: the server exits when it ends.",
      "Also takes -c/--config, --default-config, --allowed-tcp and --allowed-udp (an empty",
      "allow-list refuses that protocol), before or after `manual`.",
      "Example:",
      "  tunnel server manual --allowed-tcp 127.0.0.0/8",
    }, "\n"))
  end
end

--- Refuse the flags of `iroh_only` (option name -> flag) given to `mode` (manual, nostr), and
-- --no-stun with --stun-server. Returns true, or nil and the message.
function M.check_mode_args(args, role, mode, iroh_only)
  for k, flag in pairs(iroh_only) do
    local v = args[k]
    if v ~= nil and not (type(v) == "table" and #v == 0) then
      return nil, flag .. " is an iroh-mode option; " .. mode .. " mode takes none (see " ..
        "`tunnel " .. role .. " " .. mode .. " --help`)"
    end
  end
  if args.no_stun and #(args.stun_server or {}) > 0 then
    return nil, "--no-stun and --stun-server contradict each other: give one"
  end
  return true
end

local function check_args(args, role)
  return M.check_mode_args(args, role, "manual", IROH_ONLY[role])
end

--- The STUN servers to use: none with --no-stun, else the validated section's list.
function M.stun_list(args, section)
  if args.no_stun then
    return {}
  end
  return common.texts(section.stun_servers)
end

--- Read blocks from stdin: on_text(chunk) for every chunk, on_eof() at the end.
local function read_stdin(on_text, on_eof)
  local kind = uv.guess_handle(0)
  if kind == "file" then
    -- A regular file cannot be watched by the loop; it is all there already.
    local data = io.stdin:read("*a") or ""
    local t = uv.new_timer()
    t:start(0, 0, function()
      t:close()
      on_text(data)
      on_eof()
    end)
    return { close = function() end }
  end
  local h = kind == "tty" and uv.new_tty(0, true) or uv.new_pipe(false)
  if kind ~= "tty" then
    h:open(0)
  end
  h:read_start(function(err, chunk)
    if err or not chunk then
      h:read_stop()
      on_eof(err)
    else
      on_text(chunk)
    end
  end)
  host.on_shutdown(function()
    if not h:is_closing() then
      h:close()
    end
  end)
  return {
    close = function()
      if not h:is_closing() then
        h:read_stop()
        h:close()
      end
    end,
  }
end

--- Progress for the user: stderr, flushed.
function M.say(...)
  io.stderr:write(...)
  io.stderr:flush()
end

local say = M.say

local function print_block(block)
  io.stdout:write(block, block:sub(-1) == "\n" and "" or "\n")
  io.stdout:flush()
end

--- Add a stats source to the REPL (when one is attached).
function M.register_stats(name, fn)
  local ok, repl = pcall(require, "tunnel.repl")
  if ok then
    repl.add_stats(name, fn)
  end
end

--- The validated settings for `role` (and the second value of settings_fn), or nil and the
-- exit status after printing why.
local function prepare(args, role, settings_fn)
  local ok, err = check_args(args, role)
  if not ok then
    return nil, fail(err)
  end
  local s, extra = settings_fn(args)
  if not s then
    return nil, fail(extra)
  end
  return s, extra
end

function M.client(args, settings_fn)
  local manual, sigblock = require "tunnel.manual", require "tunnel.sigblock"
  local s, forwards = prepare(args, "client", settings_fn)
  if not s then
    return forwards
  end
  local f = forwards[1]
  if not f then
    return fail("nothing to forward: give --source and --target (or request_source and " ..
      "target in [manual])")
  end
  local stdin
  local m, merr = manual.client({
    source = f.source, target = f.target, stun_servers = M.stun_list(args, s),
    hosts = args.ice_host and #args.ice_host > 0 and args.ice_host or nil,
    transport = s.transport, udp_idle_timeout = s.transport and s.transport.udp_idle_timeout,
    on_offer = function(block, self)
      say("\nGive this OFFER to the server (it runs `tunnel server manual`):\n\n")
      print_block(block)
      say("\nThen paste the server's ANSWER block here:\n")
      local reader = sigblock.reader({ "answer", "reject" }, function(fields)
        local aok, aerr, again = self:answer(fields)
        if aok then
          say("Answer accepted: looking for a path to the server...\n")
          stdin.close()
        elseif again then
          say("tunnel: ", aerr, "\nPaste the ANSWER block again:\n")
        end
      end, {
        on_error = function(e)
          say("tunnel: ", e, "\nPaste the ANSWER block again:\n")
        end,
      })
      stdin = read_stdin(function(chunk)
        reader:feed(chunk)
      end, function()
        if not self.answered and not self.done then
          local _, e = reader:finish()
          self:_finish("no answer: standard input ended" .. (e and (" (" .. e .. ")") or ""))
        end
      end)
    end,
    on_connected = function(_, info)
      say(string.format("Connected: %s (server %s at %s, %.0f ms after the answer)\n",
        info.kind, info.server_id, info.remote, info.after_answer_ms or 0))
      for _, fw in ipairs(info.forwards) do
        say(string.format("Forwarding %s %s -> %s\n", fw.proto, fw.listen or "?", fw.source))
      end
    end,
    on_failed = function(_, reason)
      if stdin then
        stdin.close()
      end
      say("tunnel: ", reason, "\n")
      host.stop(1)
    end,
    on_closed = function(_, reason)
      say("tunnel: ", reason, "\n")
      host.stop(1)
    end,
  })
  if not m then
    return fail(merr)
  end
  for _, fw in ipairs(m:forwards()) do
    log.info("listening on %s %s for %s", fw.proto, fw.listen or "?", fw.source)
  end
  say("Gathering network candidates...\n")
  M.register_stats("client", function()
    return m:stats()
  end)
  return nil
end

function M.server(args, settings_fn)
  local manual, sigblock = require "tunnel.manual", require "tunnel.sigblock"
  local s, status = prepare(args, "server", settings_fn)
  if not s then
    return status
  end
  local allowed = s.allowed_sources or {}
  local stdin, reader
  local m, merr = manual.server({
    allowed_tcp = allowed.tcp or {}, allowed_udp = allowed.udp or {},
    stun_servers = M.stun_list(args, s), transport = s.transport,
    hosts = args.ice_host and #args.ice_host > 0 and args.ice_host or nil,
    udp_idle_timeout = s.transport and s.transport.udp_idle_timeout,
    on_connected = function(_, info)
      say(string.format("Connected: %s (client %s from %s), serving %s\n", info.kind,
        info.client_id, tostring(info.remote), info.source))
    end,
    on_failed = function(_, reason)
      if stdin then
        stdin.close()
      end
      say("tunnel: ", reason, "\n")
      host.stop(1)
    end,
    on_closed = function(_, reason)
      say(reason, "\n")
      host.stop(0)
    end,
  })
  if not m then
    return fail(merr)
  end
  say(string.format("Manual-mode server %s\nPaste the client's OFFER block:\n", m.server_id))
  reader = sigblock.reader({ "offer" }, function(fields)
    m:offer(fields, function(block, e, again)
      if block and not e then
        say("\nGive this ANSWER to the client:\n\n")
        print_block(block)
        say("\nWaiting for the client to connect...\n")
        stdin.close()
      elseif block then
        say("tunnel: refused: ", e, "\nGive this REJECT block to the client so it can " ..
          "show why:\n\n")
        print_block(block)
        say("\nPaste another OFFER block, or stop with Ctrl-C:\n")
      elseif again then
        say("tunnel: ", e, "\nPaste the OFFER block again:\n")
      end
    end)
  end, {
    on_error = function(e)
      say("tunnel: ", e, "\nPaste the OFFER block again:\n")
    end,
  })
  stdin = read_stdin(function(chunk)
    reader:feed(chunk)
  end, function()
    if not m.offer_fields and not m.done and not m.checking then
      local _, e = reader:finish()
      m:_finish(false, "no offer: standard input ended" .. (e and (" (" .. e .. ")") or ""))
    end
  end)
  M.register_stats("server", function()
    return m.server:stats()
  end)
  return nil
end

return M
