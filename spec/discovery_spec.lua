-- tunnel.discovery against a real `tunnel relay` process: publish and resolve, the publisher's
-- update and retry, 404 and connection errors, a forged record, option checking.
local H = require "helper"
local uv = require "luv"
local discovery = require "tunnel.discovery"
local keys = require "tunnel.keys"

local procs = {}

--- Start `tunnel relay` on loopback; returns the process and its /pkarr URL.
local function start_relay()
  local p, port = H.start_relay(procs, { "--listen", "127.0.0.1:0" })
  return p, "http://127.0.0.1:" .. port .. "/pkarr", port
end

--- Resolve and wait; returns record, err, info.
local function resolve(url, id, opts)
  local done, rec, err, info = false, nil, nil, nil
  assert(discovery.resolve(url, id, function(r, e, i)
    done, rec, err, info = true, r, e, i
  end, opts))
  assert(H.wait_until(function()
    return done
  end, 20), "no answer to resolve")
  return rec, err, info
end

describe("tunnel.discovery", function()
  after_each(function()
    H.kill_all(procs)
    procs = {}
  end)

  it("publishes to a relay and resolves the same record, then an updated one", function()
    local _, url = start_relay()
    local secret = keys.generate_secret()
    local id = keys.endpoint_id(secret)
    local results = {}
    local pub = discovery.publisher({
      url = url, secret = secret, relay_urls = { "http://relay.example:3340/" },
      addrs = { "192.0.2.7:41641", "[2001:db8::1]:7842" },
      on_result = function(ok, err, info)
        results[#results + 1] = { ok = ok, err = err, info = info }
      end,
    })
    assert.is_true(H.wait_until(function()
      return #results == 1
    end, 20))
    assert.is_true(results[1].ok, results[1].err)
    assert.equal(204, results[1].info.status)
    assert.equal(1, pub:status().published)

    local rec, err = resolve(url, id, { fresh = true })
    assert.is_nil(err)
    assert.same({ "http://relay.example:3340/" }, rec.relays)
    assert.same({ "192.0.2.7:41641", "[2001:db8::1]:7842" }, rec.addrs)
    assert.equal(30, rec.ttl)
    assert.is_false(rec.cached)
    -- the same answer again, from the cache
    rec = resolve(url, id)
    assert.is_true(rec.cached)

    assert.is_false(pub:update({ addrs = { "192.0.2.7:41641", "[2001:db8::1]:7842" } }))
    assert.is_true(pub:update({ addrs = { "198.51.100.1:9" } }))
    assert.is_true(H.wait_until(function()
      return #results == 2
    end, 20))
    assert.is_true(results[2].ok, results[2].err)
    rec, err = resolve(url, id, { fresh = true })
    assert.is_nil(err)
    assert.same({ "198.51.100.1:9" }, rec.addrs)
    assert.same({ "http://relay.example:3340/" }, rec.relays)
    -- the EndpointId may also be given as raw bytes or as the z-base-32 text
    rec = resolve(url, keys.public_key(secret))
    assert.same({ "198.51.100.1:9" }, rec.addrs)
    rec = resolve(url, "pk:" .. discovery.z32(keys.public_key(secret)))
    assert.same({ "198.51.100.1:9" }, rec.addrs)
    pub:close()
    pub:close()
    assert.has_error(function()
      pub:update({ addrs = {} })
    end, "publisher:update: the publisher is closed")
  end)

  it("says when there is no record, and when the server is not there", function()
    local _, url = start_relay()
    local rec, err, info = resolve(url, keys.endpoint_id(keys.generate_secret()))
    assert.is_nil(rec)
    assert.equal(404, info.status)
    assert.equal("ENOENT", info.code)
    assert.matches("no record for this EndpointId", err, 1, true)
    assert.matches("is the server running and publishing to the same discovery server?", err, 1,
      true)

    local dead = "http://127.0.0.1:" .. H.free_port() .. "/pkarr"
    rec, err, info = resolve(dead, keys.endpoint_id(keys.generate_secret()))
    assert.is_nil(rec)
    assert.is_nil(info.status)
    assert.equal("ECONNREFUSED", info.code)
    assert.matches("cannot reach the discovery server", err, 1, true)
  end)

  it("retries a failed publication and succeeds once the server is up", function()
    local port = H.free_port()
    local url = "http://127.0.0.1:" .. port .. "/pkarr"
    local results = {}
    local secret = keys.generate_secret()
    local pub = discovery.publisher({
      url = url, secret = secret, addrs = { "192.0.2.1:1" }, retry_min = 0.05, retry_max = 0.2,
      on_result = function(ok, err)
        results[#results + 1] = { ok = ok, err = err }
      end,
    })
    assert.is_true(H.wait_until(function()
      return #results >= 2
    end, 20))
    assert.is_false(results[1].ok)
    assert.matches("cannot reach the discovery server", results[1].err, 1, true)
    assert.is_true(pub:status().failures >= 2)
    -- a relay on that very port: the next retry gets through
    local p = H.start({ "relay", "--listen", "127.0.0.1:" .. port })
    procs[#procs + 1] = p
    assert.is_true(H.wait_until(function()
      return results[#results].ok
    end, 20), H.logs(procs))
    assert.equal(0, pub:status().failures)
    local rec = resolve(url, keys.endpoint_id(secret), { fresh = true })
    assert.same({ "192.0.2.1:1" }, rec.addrs)
    pub:close()
  end)

  it("refuses a record signed by another key", function()
    -- A one-shot HTTP server that answers any request with the payload of `other`'s record.
    local other = keys.generate_secret()
    local core = require "tunnel.core.discovery"
    local server = uv.new_tcp()
    assert(server:bind("127.0.0.1", 0))
    local port = server:getsockname().port
    local _, relay_url = start_relay()
    -- get a genuine payload of `other` from the relay
    local done
    local c = discovery.client()
    c:publish(relay_url, other, { addrs = { "203.0.113.5:4433" } }, core.now_us(), function(ok)
      done = ok
    end)
    assert.is_true(H.wait_until(function()
      return done ~= nil
    end, 20))
    assert.is_true(done)
    local payload
    local t = uv.new_tcp()
    t:connect("127.0.0.1", tonumber(relay_url:match(":(%d+)/")), function()
      t:write("GET /pkarr/" .. discovery.z32(keys.public_key(other)) ..
        " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local buf = ""
      t:read_start(function(_, data)
        if data then
          buf = buf .. data
        else
          payload = buf:match("\r\n\r\n(.*)$")
          t:close()
        end
      end)
    end)
    assert.is_truthy(H.wait_until(function()
      return payload
    end, 20))
    assert.is_true(#payload >= 72)
    server:listen(8, function()
      local conn = uv.new_tcp()
      server:accept(conn)
      conn:read_start(function(_, data)
        if data and data:find("\r\n\r\n") then
          conn:write("HTTP/1.1 200 OK\r\nContent-Length: " .. #payload ..
            "\r\nConnection: close\r\n\r\n" .. payload, function()
              conn:close()
            end)
        elseif not data then
          conn:close()
        end
      end)
    end)
    local victim = keys.generate_secret()
    local rec, err, info = resolve("http://127.0.0.1:" .. port .. "/pkarr",
      keys.endpoint_id(victim), { client = c })
    assert.is_nil(rec)
    assert.equal("ECRYPTO", info.code)
    assert.matches("does not verify for this EndpointId", err, 1, true)
    server:close()
    c:close()
    assert.is_true(c:closed())
  end)

  it("checks its arguments", function()
    local secret = keys.generate_secret()
    assert.has_error(function()
      discovery.publisher({ url = "http://x/pkarr", secret = secret, bogus = 1 })
    end, "discovery.publisher: unknown option 'bogus'")
    assert.has_error(function()
      discovery.publisher({ url = "ftp://x/pkarr", secret = secret })
    end)
    assert.has_error(function()
      discovery.publisher({ url = "http://x/pkarr", secret = "short" })
    end)
    assert.has_error(function()
      discovery.publisher({ url = "http://x/pkarr", secret = secret, addrs = { "nonsense" } })
    end)
    assert.has_error(function()
      discovery.publisher({ url = "http://x/pkarr", secret = secret, interval = 0 })
    end)
    assert.has_error(function()
      discovery.resolve("http://x/pkarr", "abc")
    end, "discovery.resolve: the callback must be a function")
    assert.has_error(function()
      discovery.resolve("http://x/pkarr", "abc", function() end, { nope = true })
    end, "discovery.resolve: unknown option 'nope'")
    local ok, err = discovery.resolve("http://x/pkarr", "not-an-id", function() end)
    assert.is_nil(ok)
    assert.matches("EndpointId", err)
    assert.has_error(function()
      discovery.client({ proxy = 1 })
    end, "discovery.client: option 'proxy' must be a string, got number")
  end)
end)
