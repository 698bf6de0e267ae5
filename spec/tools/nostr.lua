--- The third-party Nostr harness for specs: a relay built on @nostr-relay/core (spec/nostr/
-- relay.js) and nostr-tools as the reference client (spec/nostr/tools.js), both run by Node.js
-- from spec/nostr/node_modules (installed by scripts/install-deps.sh). See spec/nostr/README.md.
--
--   local nostr = require "tools.nostr"
--   if not nostr.guard("my nostr spec") then return end
--   local relay = nostr.start_relay { log = true }     -- relay.url, relay:stop()
--   local keys = nostr.tool("keygen")                  -- { sk=, pk=, nsec=, npub= }
--   local ev = nostr.tool("sign", keys.sk, { kind = 20001, content = "hi" })
--   assert(nostr.tool("publish", relay.url, ev).ok)
--
-- Every relay and subscription started here is remembered and stopped (by PID) by
-- nostr.stop_all(), which specs call in their teardown; a safety net kills what is left when the
-- host shuts down. Deadlines only bound a wait; they never decide a result.
local H = require "helper"
local uv = require "luv"
local cjson = require "cjson"

local M = {}

--- Node.js major version the modules need (nostr-tools' @noble libraries, lru-cache 11).
M.NODE_MIN = 20

-- spec/nostr, absolute: this file is spec/tools/nostr.lua.
local function harness_dir()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/tools/[^/]+$") or "spec"
  if dir:sub(1, 1) ~= "/" then
    dir = uv.cwd() .. "/" .. dir
  end
  return dir .. "/nostr"
end

M.DIR = harness_dir()
M.RELAY = M.DIR .. "/relay.js"
M.TOOLS = M.DIR .. "/tools.js"

local live = {} -- processes not stopped yet, for stop_all and the shutdown safety net

---------------------------------------------------------------------------------------------------
-- JSON. cjson cannot tell an empty array from an empty object, and an event's tags must be an
-- array, so values are encoded here: a table is an array when it has [1] or was marked with
-- M.array(); an empty unmarked table is an object. Strings go through cjson (valid JSON, bytes
-- >= 0x80 verbatim).

local ARRAY = {}

--- Mark table `t` (default a new one) as a JSON array, even when empty; returns it.
function M.array(t)
  return setmetatable(t or {}, ARRAY)
end

local encode

-- Tags are an array of arrays whatever their length.
local function encode_tags(tags, out)
  out[#out + 1] = "["
  for i, tag in ipairs(tags) do
    out[#out + 1] = i > 1 and ",[" or "["
    for j, x in ipairs(tag) do
      if j > 1 then
        out[#out + 1] = ","
      end
      encode(x, out)
    end
    out[#out + 1] = "]"
  end
  out[#out + 1] = "]"
end

function encode(v, out)
  local tv = type(v)
  if tv == "string" then
    out[#out + 1] = cjson.encode(v)
  elseif tv == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("cannot encode " .. tostring(v) .. " as JSON", 3)
    end
    out[#out + 1] = (v == math.floor(v) and math.abs(v) < 2 ^ 53) and string.format("%d", v)
      or string.format("%.17g", v)
  elseif tv == "boolean" then
    out[#out + 1] = tostring(v)
  elseif v == nil or v == cjson.null then
    out[#out + 1] = "null"
  elseif tv == "table" then
    if getmetatable(v) == ARRAY or v[1] ~= nil then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then
          out[#out + 1] = ","
        end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then
          error("cannot encode a table with key " .. tostring(k) .. " as a JSON object", 3)
        end
        keys[#keys + 1] = k
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        out[#out + 1] = (i > 1 and "," or "") .. cjson.encode(k) .. ":"
        if k == "tags" and type(v[k]) == "table" then
          encode_tags(v[k], out)
        else
          encode(v[k], out)
        end
      end
      out[#out + 1] = "}"
    end
  else
    error("cannot encode a " .. tv .. " as JSON", 3)
  end
end

--- JSON text of a Lua value (see above for arrays). A "tags" field is always an array of
-- arrays, so events and templates can be passed as they are.
function M.json(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

local function arg_text(a)
  if type(a) == "table" then
    return M.json(a)
  end
  return tostring(a)
end

-- Decode each line of `text` as JSON; returns the list, or nil and the bad line.
local function decode_lines(text)
  local list = {}
  for line in text:gmatch("[^\n]+") do
    local ok, v = pcall(cjson.decode, line)
    if not ok then
      return nil, line
    end
    list[#list + 1] = v
  end
  return list
end

---------------------------------------------------------------------------------------------------
-- Availability

local function have(cmd)
  local r = os.execute("command -v '" .. cmd .. "' >/dev/null 2>&1")
  return r == 0 or r == true
end

local function mtime(path)
  local st = uv.fs_stat(path)
  return st and (st.mtime.sec + st.mtime.nsec / 1e9)
end

local checked, checked_why

--- Whether the harness can run here: true, or false and the reason (with what to do). Checks
-- for node (>= M.NODE_MIN), installed and current node_modules, and that tools.js loads.
function M.available()
  if checked ~= nil then
    return checked, checked_why
  end
  local why
  local fix = "run scripts/install-deps.sh (as root if Node.js is missing)"
  if not have("node") then
    why = "Node.js ('node') is not installed; " .. fix
  else
    local stamp = mtime(M.DIR .. "/node_modules/.package-lock.json")
    local lock = mtime(M.DIR .. "/package-lock.json")
    if not lock then
      why = M.DIR .. "/package-lock.json is missing"
    elseif not stamp then
      why = "the Node modules of the Nostr harness are not installed (" .. M.DIR ..
        "/node_modules); " .. fix
    elseif stamp < lock then
      why = "the Node modules in " .. M.DIR .. "/node_modules are older than package-lock.json; "
        .. fix
    else
      local p = H.spawn({ "node", M.TOOLS, "versions" }):wait(60)
      local v = p.code == 0 and select(2, pcall(cjson.decode, p.stdout))
      local major = type(v) == "table" and tonumber(tostring(v.node):match("^(%d+)"))
      if not major then
        why = "spec/nostr/tools.js does not run: " .. (p.stderr ~= "" and p.stderr or p.stdout)
          .. "; " .. fix
      elseif major < M.NODE_MIN then
        why = string.format("Node.js %s is too old for the Nostr harness (needs %d or newer)",
          v.node, M.NODE_MIN)
      else
        M.versions = v
      end
    end
  end
  checked, checked_why = why == nil, why
  return checked, checked_why
end

--- For a spec file's top level: when the harness is available, returns true. Otherwise declares
-- a describe block named `title` that fails with the reason when TUNNEL_LAB_REQUIRE=1 (so CI
-- cannot skip it by accident) and is pending otherwise, and returns false (the spec returns).
function M.guard(title)
  local ok, why = M.available()
  if ok then
    return true
  end
  -- busted's describe/it/pending live in the spec file's environment, not in _G.
  local env = getfenv(2)
  env.describe(title, function()
    if os.getenv("TUNNEL_LAB_REQUIRE") == "1" then
      env.it("has the Nostr harness (spec/nostr)", function()
        error("TUNNEL_LAB_REQUIRE=1 but " .. why, 0)
      end)
    else
      env.pending("skipped: " .. why)
    end
  end)
  return false
end

---------------------------------------------------------------------------------------------------
-- Processes

local function in_netns(ns, argv)
  if not ns then
    return argv
  end
  local full = { "ip", "netns", "exec", ns }
  for _, a in ipairs(argv) do
    full[#full + 1] = a
  end
  return full
end

local function stop_proc(p)
  live[p] = nil
  H.stop(p)
  p:wait(5) -- collects the output and closes the handle
  return p.code, p.signal
end

local function check_opts(o, allowed, fname)
  for k in pairs(o) do
    if not allowed[k] then
      error(fname .. ": unknown option '" .. tostring(k) .. "'", 3)
    end
  end
end

local RELAY_OPTS = { host = true, port = true, netns = true, log = true, auth = true,
  timeout = true, tls_cert = true, tls_key = true }

--- Start relay.js. o.host (default "127.0.0.1"), o.port (default 0: a free port, read back from
-- the ready line), o.netns (run inside `ip netns exec NS`), o.log (a file that gets every
-- client->relay message; true: a temp file), o.auth (demand NIP-42 AUTH before EVENT),
-- o.timeout (seconds to wait for the ready line, default 30). Raises when it does not start.
-- Returns a handle: url, host, port, pid, proc (the helper.spawn process), log (the path),
-- :messages() (the logged messages, decoded), :events(pubkey, kind) (the events of the logged
-- EVENT messages, in order; optionally only those of `pubkey` and `kind`), :stop() (SIGTERM,
-- then SIGKILL; returns the exit code and signal; safe to call twice).
function M.start_relay(o)
  o = o or {}
  check_opts(o, RELAY_OPTS, "start_relay")
  local host = o.host or "127.0.0.1"
  local argv = { "node", M.RELAY, "--host", host, "--port", tostring(o.port or 0) }
  local log = o.log
  if log == true then
    log = H.tmpdir() .. "/relay.log"
  end
  if log then
    argv[#argv + 1], argv[#argv + 2] = "--log", log
  end
  if o.auth then
    argv[#argv + 1] = "--auth"
  end
  if o.tls_cert then
    argv[#argv + 1], argv[#argv + 2] = "--tls-cert", o.tls_cert
    argv[#argv + 1], argv[#argv + 2] = "--tls-key", o.tls_key
  end
  local p = H.spawn(in_netns(o.netns, argv))
  p.label = "relay.js" .. (o.netns and (" in " .. o.netns) or "")
  live[p] = true
  H.wait_until(function()
    return p.stdout:find("\n", 1, true) or p.done
  end, o.timeout or 30)
  local url = p.stdout:match("^ready (wss?://%S+)\n")
  if not url then
    stop_proc(p)
    error(string.format("relay.js did not start (%s): stdout %q, stderr %q", table.concat(argv,
      " "), p.stdout, p.stderr), 2)
  end
  local r = { url = url, host = host, port = tonumber(url:match(":(%d+)$")), pid = p.pid,
    proc = p, log = log }
  function r.stop()
    return stop_proc(p)
  end
  function r.messages()
    local list = {}
    for line in (H.read_file(log or "/dev/null") or ""):gmatch("[^\n]+") do
      local ok, v = pcall(cjson.decode, line)
      list[#list + 1] = ok and v or line
    end
    return list
  end
  function r.events(pubkey, kind)
    local list = {}
    for _, m in ipairs(r.messages()) do
      local ev = type(m) == "table" and m[1] == "EVENT" and m[2]
      if type(ev) == "table" and (not pubkey or ev.pubkey == pubkey) and
        (not kind or ev.kind == kind) then
        list[#list + 1] = ev
      end
    end
    return list
  end
  return r
end

--- Run `node tools.js ARGS...` to completion (in network namespace `ns` when given). Table
-- arguments are passed as JSON (M.json). Returns the first JSON value it printed, the list of
-- all of them and the process. A command that failed gives { error = "..." }; output that is
-- not JSON raises, with tools.js's stderr.
function M.tool_in(ns, ...)
  local argv = { "node", M.TOOLS }
  for i = 1, select("#", ...) do
    argv[#argv + 1] = arg_text((select(i, ...)))
  end
  local p = H.spawn(in_netns(ns, argv)):wait(120)
  local list, bad = decode_lines(p.stdout)
  if not list or (#list == 0 and p.code ~= 0) or p.timed_out then
    error(string.format("tools.js %s failed (exit %s%s): %s%s", tostring(argv[3]),
      tostring(p.code), p.timed_out and ", timed out" or "", bad or p.stdout, p.stderr), 2)
  end
  return list[1], list, p
end

--- M.tool_in without a namespace.
function M.tool(...)
  return M.tool_in(nil, ...)
end

--- Run many tools.js commands in one Node process: `calls` is a list of argument lists
-- ({ {"verify", ev}, {"id", ev} }); returns the list of results, one per call, in order.
function M.batch(calls)
  local lines = {}
  for i, call in ipairs(calls) do
    local a = M.array({})
    for j, x in ipairs(call) do
      a[j] = arg_text(x)
    end
    lines[i] = M.json(a)
  end
  local p = H.spawn({ "node", M.TOOLS, "batch" }, { stdin = table.concat(lines, "\n") .. "\n" })
    :wait(300)
  local list, bad = decode_lines(p.stdout)
  if not list or #list ~= #calls or p.code ~= 0 then
    error(string.format("tools.js batch failed (exit %s, %d of %d results): %s%s",
      tostring(p.code), list and #list or 0, #calls, bad or "", p.stderr), 2)
  end
  return list
end

local SUB_OPTS = { netns = true, auth = true, count = true }

--- Start `tools.js sub URL FILTER SECONDS [COUNT]` in the background: a nostr-tools subscriber
-- that ends after `seconds` or o.count events. o.netns, o.auth (secret hex for NIP-42).
-- Returns a handle: proc, :ready(timeout) (true once the relay sent EOSE: the subscription is
-- live), :events() (decoded so far), :wait(timeout) (waits for the end, returns :events()),
-- :stop().
function M.subscribe(url, filter, seconds, o)
  o = o or {}
  check_opts(o, SUB_OPTS, "subscribe")
  local argv = { "node", M.TOOLS, "sub", url, M.json(filter), tostring(seconds) }
  if o.count then
    argv[#argv + 1] = tostring(o.count)
  end
  if o.auth then
    argv[#argv + 1], argv[#argv + 2] = "--auth", o.auth
  end
  local p = H.spawn(in_netns(o.netns, argv))
  p.label = "tools.js sub"
  live[p] = true
  local s = { proc = p }
  function s.ready(_, timeout)
    H.wait_until(function()
      return p.stderr:find("eose ", 1, true) or p.done
    end, timeout or 30)
    return p.stderr:find("eose ", 1, true) ~= nil
  end
  function s.events()
    local list = {}
    for line in p.stdout:gmatch("[^\n]+") do
      local ok, v = pcall(cjson.decode, line)
      if ok and type(v) == "table" and not v.error then
        list[#list + 1] = v
      end
    end
    return list
  end
  function s.wait(_, timeout)
    H.wait_until(function()
      return p.done
    end, timeout or (seconds + 30))
    stop_proc(p)
    return s.events()
  end
  function s.stop()
    return stop_proc(p)
  end
  return s
end

--- Stop every relay and subscriber started here that still runs (for a spec's teardown).
function M.stop_all()
  local list = {}
  for p in pairs(live) do
    list[#list + 1] = p
  end
  for _, p in ipairs(list) do
    stop_proc(p)
  end
end

-- Safety net: a spec that dies before its teardown leaves no Node process behind. Blocking and
-- loop-free, since it runs during the host's shutdown.
do
  local ok, host = pcall(require, "tunnel.host")
  if ok then
    host.on_shutdown(function()
      for p in pairs(live) do
        if not p.done and p.pid then
          uv.kill(p.pid, "sigkill")
        end
      end
    end)
  end
end

return M
