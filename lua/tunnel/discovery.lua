--- tunnel.discovery: publish this endpoint's record to a discovery server and resolve other
-- endpoints' records (see docs/api/tunnel.discovery.md and docs/protocol.md, "Discovery
-- records").
--
--   local discovery = require "tunnel.discovery"
--   local pub = discovery.publisher{ url = "http://relay.example:3340/pkarr", secret = secret,
--     relay_urls = { "https://relay.example/" }, addrs = { "192.0.2.7:41641" } }
--   pub:update{ addrs = { "192.0.2.7:41641", "[2001:db8::1]:41641" } }
--   discovery.resolve("http://relay.example:3340/pkarr", endpoint_id, function(rec, err) end)
local core = require "tunnel.core.discovery"
local keys = require "tunnel.keys"
local host = require "tunnel.host"
local log = require("tunnel.log").group("discovery")
local uv = require "luv"

local M = {}

M.DEFAULT_INTERVAL = 300 -- seconds between republications
M.DEFAULT_RETRY_MIN = 1 -- first retry after a failure, doubling each time
M.DEFAULT_RETRY_MAX = 60

local CLIENT_OPTS = {
  proxy = "string", cafile = "string", connect_timeout_ms = "number", timeout_ms = "number",
  cache_min_ttl = "number", cache_max_ttl = "number",
}
local PUBLISHER_OPTS = {
  url = "string", secret = "string", relay_urls = "table", addrs = "table", ttl = "number",
  interval = "number", retry_min = "number", retry_max = "number", client = "userdata",
  proxy = "string", cafile = "string", on_result = "function",
}
local UPDATE_OPTS = { relay_urls = "table", addrs = "table", ttl = "number" }
local RESOLVE_OPTS = { fresh = "boolean", client = "userdata" }

local function check_table(what, t, known, level)
  if type(t) ~= "table" then
    error(string.format("%s expects an option table, got %s", what, type(t)), level + 1)
  end
  for k, v in pairs(t) do
    local want = known[k]
    if not want then
      error(string.format("%s: unknown option '%s'", what, tostring(k)), level + 1)
    end
    if type(v) ~= want then
      error(string.format("%s: option '%s' must be a %s, got %s", what, k, want, type(v)),
        level + 1)
    end
  end
end

local function check_url(what, url, level)
  if type(url) ~= "string" or not url:match("^https?://[^/%s]") or url:find("%s") then
    error(string.format("%s: the discovery URL must start with http:// or https:// and name a " ..
      "host, e.g. http://relay.example:3340/pkarr (got %s)", what, tostring(url)), level + 1)
  end
end

--- A discovery client of its own (proxy, CA file, timeouts, cache bounds). Most callers use
-- the shared default one, which publisher and resolve create when not given a client.
function M.client(opts)
  check_table("discovery.client", opts or {}, CLIENT_OPTS, 2)
  return core.client(opts or {})
end

local default_client
local function shared_client()
  if not default_client or default_client:closed() then
    default_client = core.client({})
  end
  return default_client
end

--- The 32-byte key of `id`: 32 raw bytes, an EndpointId text (base32 or hex), or "pk:" and
-- the z-base-32 text of a discovery URL. Returns the key or nil and an error.
function M.parse_key(id)
  if type(id) ~= "string" then
    return nil, "EndpointId must be a string, got " .. type(id)
  end
  if #id == 32 then
    return id
  end
  if id:sub(1, 3) == "pk:" then
    local key, err = core.parse_z32(id)
    if not key then
      return nil, "EndpointId " .. id .. " is " .. err
    end
    return key
  end
  return keys.parse_endpoint_id(id)
end

--- The z-base-32 text under which `key` (32 bytes) is filed: the last part of its URL.
function M.z32(key)
  return core.z32(key)
end

--- Resolve the record of `endpoint_id` at the discovery server `url`. cb(record, err, info)
-- runs later from the loop: record = { relays = {...}, addrs = {...}, ttl = s,
-- timestamp = us, cached = bool } or nil and a message; info = { status = n|nil,
-- code = "ENOENT"|... }. Returns true, or nil and an error when the EndpointId is malformed.
function M.resolve(url, endpoint_id, cb, opts)
  check_url("discovery.resolve", url, 2)
  if type(cb) ~= "function" then
    error("discovery.resolve: the callback must be a function", 2)
  end
  opts = opts or {}
  check_table("discovery.resolve", opts, RESOLVE_OPTS, 2)
  local key, err = M.parse_key(endpoint_id)
  if not key then
    return nil, err
  end
  local client = opts.client or shared_client()
  return client:resolve(url, key, function(rec, msg, status, code)
    local info = { status = status, code = code }
    if rec then
      host.hook(log, "discovery.resolve callback", cb, rec, nil, info)
    else
      host.hook(log, "discovery.resolve callback", cb, nil, msg, info)
    end
  end, opts.fresh)
end

-- ---- publisher ----------------------------------------------------------------------------

local Publisher = {}
Publisher.__index = Publisher
Publisher.__name = "tunnel.discovery.publisher"

local function copy_list(t)
  local out = {}
  for i, v in ipairs(t or {}) do
    out[i] = v
  end
  return out
end

local function same_list(a, b)
  if #a ~= #b then
    return false
  end
  for i = 1, #a do
    if a[i] ~= b[i] then
      return false
    end
  end
  return true
end

local function positive(what, v, name, level)
  if v ~= nil and (v ~= v or v <= 0) then
    error(string.format("%s: option '%s' must be a positive number of seconds", what, name),
      level + 1)
  end
end

--- Publish `secret`'s record (relay_urls, addrs) to `url` now, again on :update with a
-- different record, and every `interval` seconds; after a failure retry after retry_min
-- seconds, doubling up to retry_max. Each outcome is logged (group "discovery") and passed to
-- on_result(ok, err, info) when given. Misuse raises.
function M.publisher(opts)
  local what = "discovery.publisher"
  check_table(what, opts, PUBLISHER_OPTS, 2)
  check_url(what, opts.url, 2)
  if type(opts.secret) ~= "string" or #opts.secret ~= 32 then
    error(what .. ": option 'secret' must be the 32-byte identity secret " ..
      "(keys.load_secret_file)", 2)
  end
  positive(what, opts.interval, "interval", 2)
  positive(what, opts.retry_min, "retry_min", 2)
  positive(what, opts.retry_max, "retry_max", 2)
  if opts.client and (opts.proxy or opts.cafile) then
    error(what .. ": give either 'client' or 'proxy'/'cafile', not both", 2)
  end
  local self = setmetatable({
    url = opts.url,
    secret = opts.secret,
    relay_urls = copy_list(opts.relay_urls),
    addrs = copy_list(opts.addrs),
    ttl = opts.ttl,
    interval = opts.interval or M.DEFAULT_INTERVAL,
    retry_min = opts.retry_min or M.DEFAULT_RETRY_MIN,
    retry_max = opts.retry_max or M.DEFAULT_RETRY_MAX,
    on_result = opts.on_result,
    published = 0,
    failures = 0,
    last_ts = 0,
    closed = false,
  }, Publisher)
  if opts.client then
    self.client = opts.client
  elseif opts.proxy or opts.cafile then
    self.client = core.client({ proxy = opts.proxy, cafile = opts.cafile })
    self.own_client = true
  else
    self.client = shared_client()
  end
  self.timer = uv.new_timer()
  -- The first publication checks the record, so a bad one raises from here.
  local ok, err = pcall(self._publish, self)
  if not ok then
    self:close()
    error(what .. ": " .. tostring(err):gsub("^[^:]*:%d+: ", ""), 2)
  end
  return self
end

function Publisher:_record()
  return { relays = self.relay_urls, addrs = self.addrs, ttl = self.ttl }
end

function Publisher:_schedule(seconds)
  if self.closed then
    return
  end
  self.timer:stop()
  self.timer:start(math.floor(seconds * 1000), 0, function()
    self:_publish()
  end)
end

function Publisher:_done(ok, msg, status, code)
  self.inflight = false
  if self.closed then
    return
  end
  local n_r, n_a = #self.sent_relays, #self.sent_addrs
  local info = { status = status, code = code }
  if ok then
    self.published = self.published + 1
    self.failures = 0
    self.last_error = nil
    log.info("published %d relay URL%s and %d address%s to %s", n_r, n_r == 1 and "" or "s",
      n_a, n_a == 1 and "" or "es", self.url)
    self:_schedule(self.interval)
  else
    self.failures = self.failures + 1
    self.last_error = msg
    local delay = math.min(self.retry_min * 2 ^ (self.failures - 1), self.retry_max,
      self.interval)
    log.warn("publishing to %s failed: %s; retrying in %g s", self.url, msg, delay)
    self:_schedule(delay)
  end
  host.hook(log, "discovery publisher on_result", self.on_result, ok, not ok and msg or nil,
    info)
  if self.pending and not self.closed then
    self.pending = false
    self:_publish()
  end
end

function Publisher:_publish()
  if self.closed then
    return
  end
  if self.inflight then
    self.pending = true -- publish the newest record once this request ends
    return
  end
  -- Each packet must be newer than the last one, even if the clock stepped back.
  local ts = math.max(core.now_us(), self.last_ts + 1)
  self.sent_relays, self.sent_addrs = self.relay_urls, self.addrs
  local ok, err = self.client:publish(self.url, self.secret, self:_record(), ts,
    function(...)
      self:_done(...)
    end)
  if not ok then
    self.failures = self.failures + 1
    self.last_error = err
    log.warn("cannot publish to %s: %s", self.url, tostring(err))
    self:_schedule(math.min(self.retry_max, self.interval))
    return
  end
  self.inflight = true
  self.last_ts = ts
  self.timer:stop()
end

--- Replace parts of the record (relay_urls, addrs, ttl); publishes at once when it changed.
-- Returns true when a publication was started (or queued behind one in flight).
function Publisher:update(opts)
  check_table("publisher:update", opts, UPDATE_OPTS, 2)
  if self.closed then
    error("publisher:update: the publisher is closed", 2)
  end
  local relays = opts.relay_urls and copy_list(opts.relay_urls) or self.relay_urls
  local addrs = opts.addrs and copy_list(opts.addrs) or self.addrs
  local ttl = opts.ttl or self.ttl
  if same_list(relays, self.relay_urls) and same_list(addrs, self.addrs) and ttl == self.ttl then
    return false
  end
  local old_r, old_a, old_t = self.relay_urls, self.addrs, self.ttl
  self.relay_urls, self.addrs, self.ttl = relays, addrs, ttl
  self.failures = 0
  local ok, err = pcall(self._publish, self)
  if not ok then
    self.relay_urls, self.addrs, self.ttl = old_r, old_a, old_t
    error("publisher:update: " .. tostring(err):gsub("^[^:]*:%d+: ", ""), 2)
  end
  return true
end

--- Counters: published (successes), failures (in a row), last_error, inflight.
function Publisher:status()
  return { published = self.published, failures = self.failures, last_error = self.last_error,
    inflight = self.inflight or false }
end

--- Stop republishing. A request in flight is abandoned (its result is ignored).
function Publisher:close()
  if self.closed then
    return
  end
  self.closed = true
  if not self.timer:is_closing() then
    self.timer:close()
  end
  if self.own_client then
    self.client:close()
  end
end

return M
