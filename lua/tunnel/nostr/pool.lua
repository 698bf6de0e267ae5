--- tunnel.nostr.pool: a set of Nostr relays used as one (NIP-01 client side, NIP-42 AUTH).
-- Publishes go to every relay, subscriptions run on every relay and survive reconnects, events
-- arrive once however many relays deliver them, and only with a valid id and signature. A relay
-- that is down is retried with backoff and jitter while the others carry on.
--
--   local p = pool.new { relays = { "ws://127.0.0.1:7000" }, secret = sk }
--   local sub = p:subscribe({ { kinds = { 25517 }, ["#p"] = { me } } }, function(ev, url) end)
--   p:publish(signed_event, function(res) print(res.accepted) end)
local ws = require "tunnel.core.ws"
local nostr = require "tunnel.core.nostr"
local host = require "tunnel.host"
local log = require("tunnel.log").group("nostr")
local cjson = require "cjson"
local uv = require "luv"

local M = {}

M.AUTH_KIND = 22242
-- How long a publish waits for the relays' OK before it reports what it has.
M.PUBLISH_TIMEOUT_MS = 10000
-- An event waiting for a relay to (re)connect is dropped after this long: relays refuse
-- ephemeral events more than about a minute old anyway.
M.QUEUE_MAX_AGE_MS = 45000
-- Event ids remembered to drop the copies other relays deliver.
M.SEEN_MAX = 4096

local OPTIONS = {
  relays = "table", secret = "string", cafile = "string", proxy = "string",
  connect_ms = "number", backoff_min_ms = "number", backoff_max_ms = "number",
  on_status = "function",
}

local Pool = {}
Pool.__index = Pool
Pool.__name = "tunnel.nostr.pool"

local function call(name, fn, ...)
  host.hook(log, name, fn, ...)
end

local function now_ms()
  return uv.now()
end

-- Short relay names for logs: the URL without a trailing slash.
local function shown(url)
  return (url:gsub("/$", ""))
end

local function check_url(u)
  if type(u) ~= "string" or not u:match("^wss?://[^/%s]+") then
    return nil
  end
  return u
end

--- Create a pool and start connecting to every relay at once.
function M.new(opts)
  if type(opts) ~= "table" then
    error("tunnel.nostr.pool.new: options table expected", 2)
  end
  for k, v in pairs(opts) do
    local want = OPTIONS[k]
    if not want then
      error("tunnel.nostr.pool.new: unknown option '" .. tostring(k) .. "'", 2)
    end
    if type(v) ~= want then
      error(string.format("tunnel.nostr.pool.new: option '%s' must be a %s, got %s", k, want,
        type(v)), 2)
    end
  end
  if not opts.relays or #opts.relays == 0 then
    error("tunnel.nostr.pool.new: relays must list at least one ws:// or wss:// URL", 2)
  end
  if opts.secret and #opts.secret ~= 32 then
    error("tunnel.nostr.pool.new: secret must be a 32-byte key", 2)
  end
  local self = setmetatable({
    relays = {}, order = {}, subs = {}, next_sub = 1, pending = {}, seen = {}, seen_list = {},
    secret = opts.secret, cafile = opts.cafile, proxy = opts.proxy,
    connect_ms = opts.connect_ms or 10000,
    backoff_min = opts.backoff_min_ms or 500, backoff_max = opts.backoff_max_ms or 30000,
    on_status = opts.on_status, closed = false,
  }, Pool)
  for i, u in ipairs(opts.relays) do
    if not check_url(u) then
      error(string.format("tunnel.nostr.pool.new: relay %d (%s) is not a ws:// or wss:// URL",
        i, tostring(u)), 2)
    end
    if not self.relays[u] then
      local r = { url = u, state = "idle", failures = 0, queue = {}, authed = false }
      self.relays[u] = r
      self.order[#self.order + 1] = r
    end
  end
  for _, r in ipairs(self.order) do
    self:_connect(r)
  end
  return self
end

---------------------------------------------------------------------------------------------------
-- Connections

function Pool:_set_state(r, state, why)
  r.state = state
  call("on_status", self.on_status, r.url, state, why)
end

function Pool:_connect(r)
  if self.closed then
    return
  end
  r.authed = false
  r.auth_event = nil
  self:_set_state(r, "connecting")
  local c, err = ws.connect({
    url = r.url, cafile = self.cafile, proxy = self.proxy, connect_ms = self.connect_ms,
    ping_ms = 30000, dead_ms = 90000,
    on_open = function()
      self:_opened(r)
    end,
    on_message = function(_, data, binary)
      if not binary then
        self:_message(r, data)
      end
    end,
    on_close = function(_, code, reason)
      self:_closed(r, code, reason)
    end,
  })
  if not c then
    -- Only a malformed URL fails here, and new() checked those; retry like any failure.
    self:_closed(r, nil, err)
    return
  end
  r.conn = c
end

function Pool:_opened(r)
  -- The backoff starts over only once a connection has stayed up a while (see _closed): a
  -- relay that accepts and then drops us must not be hammered.
  r.opened_at = now_ms()
  log.debug("relay %s connected", shown(r.url))
  self:_set_state(r, "open")
  for id, sub in pairs(self.subs) do
    self:_req(r, id, sub)
  end
  self:_flush(r)
end

function Pool:_closed(r, code, reason)
  r.conn = nil
  if self.closed then
    r.state = "closed"
    return
  end
  -- A connection that stayed up a while was healthy: start the backoff over.
  if r.opened_at and now_ms() - r.opened_at > 60000 then
    r.failures = 0
  end
  r.opened_at = nil
  r.failures = r.failures + 1
  local base = math.min(self.backoff_max, self.backoff_min * 2 ^ (r.failures - 1))
  local delay = math.floor(base * (0.75 + math.random() * 0.5))
  local why = code and string.format("closed (%d%s)", code, (reason and reason ~= "")
    and (": " .. reason) or "") or tostring(reason)
  if r.failures == 1 or log.enabled("debug") then
    log.warn("relay %s: %s; retrying in %.1f s", shown(r.url), why, delay / 1000)
  end
  r.last_error = why
  self:_set_state(r, "waiting", why)
  -- Publishes waiting for this relay's OK will not get one.
  for _, p in pairs(self.pending) do
    if p.waiting[r.url] then
      p.waiting[r.url] = nil
      p.results[r.url] = { ok = false, message = "connection lost: " .. why }
      self:_check_done(p)
    end
  end
  local t = uv.new_timer()
  r.timer = t
  t:start(delay, 0, function()
    t:close()
    r.timer = nil
    self:_connect(r)
  end)
end

-- cjson writes an empty table as {}, and NIP-01 wants "tags": [] (relays refuse an object):
-- events are written field by field, with tags always as arrays.
local function event_json(ev)
  local tags = {}
  for i, t in ipairs(ev.tags or {}) do
    local vals = {}
    for j, v in ipairs(t) do
      vals[j] = cjson.encode(tostring(v))
    end
    tags[i] = "[" .. table.concat(vals, ",") .. "]"
  end
  return string.format('{"id":%s,"pubkey":%s,"created_at":%d,"kind":%d,"tags":[%s],' ..
    '"content":%s,"sig":%s}', cjson.encode(ev.id), cjson.encode(ev.pubkey), ev.created_at,
    ev.kind, table.concat(tags, ","), cjson.encode(ev.content), cjson.encode(ev.sig))
end

function Pool._send(_, r, msg)
  if r.state ~= "open" or not r.conn then
    return nil, "not connected"
  end
  local text
  if (msg[1] == "EVENT" or msg[1] == "AUTH") and type(msg[2]) == "table" then
    text = "[" .. cjson.encode(msg[1]) .. "," .. event_json(msg[2]) .. "]"
  else
    text = cjson.encode(msg)
  end
  return r.conn:send(text)
end

---------------------------------------------------------------------------------------------------
-- Incoming messages

local function is_array(t)
  return type(t) == "table" and t[1] ~= nil
end

function Pool:_message(r, data)
  local ok, msg = pcall(cjson.decode, data)
  if not ok or not is_array(msg) or type(msg[1]) ~= "string" then
    log.debug("relay %s sent something that is not a Nostr message; ignored", shown(r.url))
    return
  end
  local t = msg[1]
  if t == "EVENT" then
    self:_event(r, msg[2], msg[3])
  elseif t == "OK" then
    self:_ok(r, msg[2], msg[3], msg[4])
  elseif t == "EOSE" then
    local sub = self.subs[msg[2]]
    if sub and sub.on_eose then
      call("on_eose", sub.on_eose, r.url)
    end
  elseif t == "CLOSED" then
    self:_sub_closed(r, msg[2], msg[3])
  elseif t == "NOTICE" then
    log.info("relay %s says: %s", shown(r.url), tostring(msg[2]):sub(1, 300))
  elseif t == "AUTH" then
    self:_auth(r, msg[2])
  end
end

function Pool:_remember(id)
  if self.seen[id] then
    return false
  end
  self.seen[id] = true
  local list = self.seen_list
  list[#list + 1] = id
  if #list > M.SEEN_MAX then
    -- Forget the older half at once rather than one id per event.
    local keep = {}
    for i = #list - M.SEEN_MAX / 2 + 1, #list do
      keep[#keep + 1] = list[i]
    end
    for i = 1, #list - #keep do
      self.seen[list[i]] = nil
    end
    self.seen_list = keep
  end
  return true
end

function Pool:_event(r, subid, ev)
  local sub = type(subid) == "string" and self.subs[subid]
  if not sub or type(ev) ~= "table" then
    return
  end
  -- Once per subscription, however many relays deliver it.
  local seen_key = type(ev.id) == "string" and (subid .. " " .. ev.id)
  if not seen_key or self.seen[seen_key] then
    return
  end
  local ok, why = nostr.verify(ev)
  if not ok then
    log.warn("relay %s delivered an event with %s; dropped", shown(r.url), why)
    return
  end
  self:_remember(seen_key)
  call("on_event", sub.on_event, ev, r.url)
end

function Pool:_ok(r, id, accepted, message)
  if type(id) ~= "string" then
    return
  end
  message = type(message) == "string" and message or ""
  if r.auth_event == id then
    r.auth_event = nil
    if accepted == true then
      r.authed = true
      log.debug("relay %s: authenticated", shown(r.url))
      -- What was refused for want of AUTH goes again.
      for sid, sub in pairs(self.subs) do
        if sub.auth_wait and sub.auth_wait[r.url] then
          sub.auth_wait[r.url] = nil
          self:_req(r, sid, sub)
        end
      end
      self:_flush(r)
    else
      log.warn("relay %s refused our authentication: %s", shown(r.url), message)
    end
    return
  end
  local p = self.pending[id]
  if not p or not p.waiting[r.url] then
    return
  end
  if accepted ~= true and message:match("^auth%-required:") and self.secret and not r.authed then
    -- Sent again once AUTH is through (the relay sent or will send its challenge).
    r.queue[#r.queue + 1] = { ev = p.ev, at = now_ms() }
    return
  end
  p.waiting[r.url] = nil
  p.results[r.url] = { ok = accepted == true, message = message }
  self:_check_done(p)
end

function Pool:_sub_closed(r, subid, message)
  local sub = type(subid) == "string" and self.subs[subid]
  if not sub then
    return
  end
  message = type(message) == "string" and message or ""
  if message:match("^auth%-required:") and self.secret then
    sub.auth_wait = sub.auth_wait or {}
    sub.auth_wait[r.url] = true
    return
  end
  log.warn("relay %s ended our subscription: %s", shown(r.url), message:sub(1, 300))
end

function Pool:_auth(r, challenge)
  if type(challenge) ~= "string" or #challenge > 1024 then
    return
  end
  if not self.secret then
    log.warn("relay %s asks for authentication (NIP-42) but this pool has no key", shown(r.url))
    return
  end
  local ev = nostr.sign({
    kind = M.AUTH_KIND, created_at = os.time(), content = "",
    tags = { { "relay", r.url }, { "challenge", challenge } },
  }, self.secret)
  r.auth_event = ev.id
  self:_send(r, { "AUTH", ev })
end

---------------------------------------------------------------------------------------------------
-- Subscriptions

function Pool:_req(r, id, sub)
  local msg = { "REQ", id }
  for _, f in ipairs(sub.filters) do
    msg[#msg + 1] = f
  end
  self:_send(r, msg)
end

local Sub = {}
Sub.__index = Sub

function Sub:close()
  local p = self.pool
  if p.subs[self.id] ~= self then
    return
  end
  p.subs[self.id] = nil
  for _, r in ipairs(p.order) do
    p:_send(r, { "CLOSE", self.id })
  end
end

--- Subscribe on every relay (now and after each reconnect) with NIP-01 `filters` (an array of
-- filter tables). on_event(ev, relay_url) gets each verified event once. Returns an object
-- with close().
function Pool:subscribe(filters, on_event, on_eose)
  if type(filters) ~= "table" or not is_array(filters) then
    error("subscribe: filters must be an array of filter tables", 2)
  end
  if type(on_event) ~= "function" then
    error("subscribe: on_event must be a function", 2)
  end
  -- Subscription ids are only ours to tell apart on one connection.
  local id = string.format("tunnel-%x-%d", uv.hrtime() % 0x1000000, self.next_sub)
  self.next_sub = self.next_sub + 1
  local sub = setmetatable({ id = id, pool = self, filters = filters, on_event = on_event,
    on_eose = on_eose }, Sub)
  self.subs[id] = sub
  for _, r in ipairs(self.order) do
    if r.state == "open" then
      self:_req(r, id, sub)
    end
  end
  return sub
end

---------------------------------------------------------------------------------------------------
-- Publishing

function Pool:_check_done(p)
  if p.done or next(p.waiting) then
    return
  end
  p.done = true
  self.pending[p.ev.id] = nil
  if p.timer and not p.timer:is_closing() then
    p.timer:close()
  end
  local accepted, failed = 0, {}
  for url, res in pairs(p.results) do
    if res.ok then
      accepted = accepted + 1
    else
      failed[#failed + 1] = shown(url) .. ": " .. res.message
    end
  end
  table.sort(failed)
  if p.cb then
    call("publish callback", p.cb, { accepted = accepted, results = p.results, failed = failed })
  end
end

function Pool:_flush(r)
  local q = r.queue
  r.queue = {}
  local t = now_ms()
  for _, item in ipairs(q) do
    local p = self.pending[item.ev.id]
    if t - item.at <= M.QUEUE_MAX_AGE_MS and p and not p.done then
      p.waiting[r.url] = true
      self:_send(r, { "EVENT", item.ev })
    end
  end
end

--- Publish a signed event to every relay: at once to the connected ones, on (re)connection
-- to the others (for a while). cb({accepted = n, results = {[url] = {ok, message}},
-- failed = {"url: why", ...}}) runs once every relay answered or after PUBLISH_TIMEOUT_MS.
function Pool:publish(ev, cb)
  if type(ev) ~= "table" or type(ev.id) ~= "string" or type(ev.sig) ~= "string" then
    error("publish: a signed event is required", 2)
  end
  if self.closed then
    if cb then
      cb({ accepted = 0, results = {}, failed = { "the pool is closed" } })
    end
    return
  end
  local p = { ev = ev, cb = cb, waiting = {}, results = {} }
  self.pending[ev.id] = p
  for _, r in ipairs(self.order) do
    if r.state == "open" then
      p.waiting[r.url] = true
      local ok, err = self:_send(r, { "EVENT", ev })
      if not ok then
        p.waiting[r.url] = nil
        p.results[r.url] = { ok = false, message = tostring(err) }
      end
    else
      r.queue[#r.queue + 1] = { ev = ev, at = now_ms() }
      p.waiting[r.url] = true
    end
  end
  p.timer = uv.new_timer()
  p.timer:start(M.PUBLISH_TIMEOUT_MS, 0, function()
    p.timer:close()
    for url in pairs(p.waiting) do
      p.results[url] = { ok = false, message = "no answer from the relay (not connected?)" }
    end
    p.waiting = {}
    self:_check_done(p)
  end)
  self:_check_done(p)
end

---------------------------------------------------------------------------------------------------
-- State

--- { {url=, state=, last_error=, authed=}, ... } in the configured order.
function Pool:status()
  local out = {}
  for i, r in ipairs(self.order) do
    out[i] = { url = r.url, state = r.state, last_error = r.last_error, authed = r.authed }
  end
  return out
end

--- How many relays are connected now.
function Pool:open_count()
  local n = 0
  for _, r in ipairs(self.order) do
    if r.state == "open" then
      n = n + 1
    end
  end
  return n
end

function Pool:close()
  if self.closed then
    return
  end
  self.closed = true
  for _, r in ipairs(self.order) do
    if r.timer and not r.timer:is_closing() then
      r.timer:close()
    end
    if r.conn then
      r.conn:close(1000, "bye")
    end
    r.state = "closed"
  end
  for _, p in pairs(self.pending) do
    if p.timer and not p.timer:is_closing() then
      p.timer:close()
    end
  end
  self.pending = {}
  self.subs = {}
end

return M
