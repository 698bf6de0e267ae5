-- tunnel.core.nostr NIP-01 events: serialization, ids, signing, and verification of events
-- that arrive as decoded JSON (every field untrusted).
local cjson = require "cjson"
local keys = require "tunnel.core.keys"
local nostr = require "tunnel.core.nostr"

local SK_HEX = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa"
local PK_HEX = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"

local function unhex(s)
  return assert(keys.hex_decode(s))
end

-- A note published on relays in 2023 by another client, as a relay sends it.
local REAL = '{"id":"1b71f57e1c3365f32b2a0abd8ded19f2a5e217a6eeaf3df11fa5c904bfb90dd6",'
  .. '"pubkey":"35d26e4690cbe1a898af61cc3515661eb5fa763b57bd0b42e45099c8b32fd50f",'
  .. '"created_at":1681157953,"kind":1,"tags":[["r","https://btcplusplus.dev/talks#nostr"]],'
  .. '"content":"I will be giving a talk on Nostr at the Bitcoin++ conference in Austin TX, end'
  .. ' of this month, hoping to meet some other nostr people!  '
  .. 'https://btcplusplus.dev/talks#nostr",'
  .. '"sig":"ec6e37c3d492654a4b8b5411b1872fc1dd7bbc3920d2c0818b177b42bd9429e206b878ad3b8fa0e72'
  .. '993b58182024d32a345ce487072de897bd0061d1c5e2189"}'

local function copy(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = type(v) == "table" and copy(v) or v
  end
  return c
end

local function signed()
  local ev = { created_at = 1700000000, kind = 21059, tags = { { "p", PK_HEX } },
    content = "offer\n\"quoted\"" }
  return nostr.sign(ev, unhex(SK_HEX))
end

describe("tunnel.core.nostr events", function()
  describe("serialize and event_id", function()
    it("write NIP-01's canonical form with JSON.stringify's escapes", function()
      local ev = { pubkey = PK_HEX, created_at = 1700000000, kind = 1,
        tags = { { "p", "a\"b\\c" }, { "e" }, {} },
        content = "l1\nl2\r\t\b\f\0\1\31\127 é€" }
      local want = '[0,"' .. PK_HEX .. '",1700000000,1,[["p","a\\"b\\\\c"],["e"],[]],'
        .. '"l1\\nl2\\r\\t\\b\\f\\u0000\\u0001\\u001f\127 é€"]'
      assert.equals(want, nostr.serialize(ev))
      assert.equals(keys.hex_encode(nostr.sha256(want)), nostr.event_id(ev))
    end)

    it("compute the id another client computed", function()
      local ev = cjson.decode(REAL)
      assert.equals(ev.id, nostr.event_id(ev))
    end)

    it("raise on malformed events", function()
      assert.has_error(function() nostr.serialize("x") end)
      assert.has_error(function() nostr.serialize({ created_at = 1, kind = 1, tags = {},
        content = "" }) end, "bad argument #1 to 'serialize' (field pubkey missing)")
      assert.has_error(function() nostr.event_id({ pubkey = PK_HEX:upper(), created_at = 1,
        kind = 1, tags = {}, content = "" }) end,
        "bad argument #1 to 'event_id' (field pubkey invalid: must be 64 lowercase hex characters)")
    end)
  end)

  describe("sign", function()
    it("sets pubkey, id and sig as lowercase hex and returns the event", function()
      local ev = { created_at = 1, kind = 1, tags = {}, content = "hi" }
      local ret = nostr.sign(ev, unhex(SK_HEX))
      assert.equals(ev, ret)
      assert.equals(PK_HEX, ev.pubkey)
      assert.matches("^[0-9a-f]+$", ev.id)
      assert.equals(64, #ev.id)
      assert.matches("^[0-9a-f]+$", ev.sig)
      assert.equals(128, #ev.sig)
      assert.equals(nostr.event_id(ev), ev.id)
      assert.is_true(nostr.verify(ev))
    end)

    it("replaces a pubkey that was already there", function()
      local ev = nostr.sign({ pubkey = ("1"):rep(64), created_at = 1, kind = 1, tags = {},
        content = "" }, unhex(SK_HEX))
      assert.equals(PK_HEX, ev.pubkey)
    end)

    it("works with a fresh key and survives a JSON round trip", function()
      local sk = keys.nostr_secret()
      local ev = nostr.sign({ created_at = os.time(), kind = 1059,
        tags = { { "p", PK_HEX, "wss://relay.example" } }, content = "ünïcödé 🦄" }, sk)
      assert.equals(keys.hex_encode(keys.nostr_public(sk)), ev.pubkey)
      local back = cjson.decode(cjson.encode(ev))
      assert.is_true(nostr.verify(back))
    end)

    it("raises on misuse", function()
      local sk = unhex(SK_HEX)
      local function ev(over)
        local e = { created_at = 1, kind = 1, tags = {}, content = "" }
        for k, v in pairs(over) do
          e[k] = v
        end
        return e
      end
      local cases = {
        { ev({ created_at = false }), "field created_at invalid" },
        { ev({ created_at = 1.5 }), "field created_at invalid" },
        { ev({ created_at = -1 }), "field created_at invalid" },
        { ev({ kind = "1" }), "field kind invalid" },
        { ev({ kind = 65536 }), "field kind invalid" },
        { ev({ content = 5 }), "field content invalid: must be a string" },
        { ev({ tags = "p" }), "field tags invalid" },
        { ev({ tags = { "p" } }), "field tags invalid: tag 1 must be an array" },
        { ev({ tags = { { "p", 5 } } }), "field tags invalid: tag 1 value 2 is not a string" },
        { ev({ tags = { { "p", x = "y" } } }), "field tags invalid: tag 1 must be an array" },
        { ev({ tags = { [2] = { "p" } } }), "field tags invalid: must be an array" },
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(nostr.sign, c[1], sk)
        assert.is_false(ok)
        assert.matches(c[2], err, 1, true)
      end
      local missing = ev({})
      missing.kind = nil
      assert.has_error(function() nostr.sign(missing, sk) end,
        "bad argument #1 to 'sign' (field kind missing)")
      assert.has_error(function() nostr.sign(ev({}), sk:sub(2)) end,
        "bad argument #2 to 'sign' (secret must be 32 bytes, got 31)")
      assert.has_error(function() nostr.sign(ev({}), ("\0"):rep(32)) end,
        "bad argument #2 to 'sign' (secret is not a valid secp256k1 secret key)")
      assert.has_error(function() nostr.sign(ev({})) end)
      assert.has_error(function() nostr.sign(nil, sk) end)
    end)

    it("refuses more than 256 tags or 16 values in a tag", function()
      local sk = unhex(SK_HEX)
      local tags = {}
      for i = 1, 256 do
        tags[i] = { "t", tostring(i) }
      end
      local ev = nostr.sign({ created_at = 1, kind = 1, tags = tags, content = "" }, sk)
      assert.is_true(nostr.verify(ev))
      tags[257] = { "t" }
      assert.has_error(function() nostr.sign({ created_at = 1, kind = 1, tags = tags,
        content = "" }, sk) end,
        "bad argument #1 to 'sign' (field tags invalid: must be an array of at most 256 tags)")
      local long = { "t" }
      for i = 2, 17 do
        long[i] = "v"
      end
      assert.has_error(function() nostr.sign({ created_at = 1, kind = 1, tags = { long },
        content = "" }, sk) end)
      long[17] = nil
      assert.truthy(nostr.sign({ created_at = 1, kind = 1, tags = { long }, content = "" }, sk))
    end)

    it("refuses an event whose serialization exceeds 1 MiB", function()
      assert.has_error(function() nostr.sign({ created_at = 1, kind = 1, tags = {},
        content = ("\1"):rep(200000) }, unhex(SK_HEX)) end,
        "bad argument #1 to 'sign' (event is too large: its serialization exceeds 1048576 bytes)")
    end)
  end)

  describe("verify", function()
    it("accepts an event signed by another client", function()
      assert.is_true(nostr.verify(cjson.decode(REAL)))
    end)

    it("accepts its own events and ignores extra fields", function()
      local ev = signed()
      ev.relay = "wss://x"
      assert.is_true(nostr.verify(ev))
    end)

    it("reports tampering", function()
      local function check(mutate, want)
        local ev = signed()
        mutate(ev)
        local ok, err = nostr.verify(ev)
        assert.is_nil(ok)
        assert.equals(want, err)
      end
      check(function(ev) ev.content = ev.content .. " " end, "id does not match the content")
      check(function(ev) ev.created_at = ev.created_at + 1 end, "id does not match the content")
      check(function(ev) ev.kind = 1 end, "id does not match the content")
      check(function(ev) ev.tags[1][2] = ("0"):rep(64) end, "id does not match the content")
      check(function(ev) ev.tags = {} end, "id does not match the content")
      check(function(ev) ev.id = ("0"):rep(64) end, "id does not match the content")
      check(function(ev) ev.sig = ev.sig:sub(1, 127) .. (ev.sig:sub(128) == "0" and "1" or "0") end,
        "bad signature")
      check(function(ev) ev.pubkey = ("0"):rep(64) end, "pubkey is not a valid key")
      check(function(ev) ev.pubkey = ("f"):rep(64) end, "pubkey is not a valid key")
      -- Someone else's key with a matching id: only the signature can tell.
      check(function(ev)
        ev.pubkey = cjson.decode(REAL).pubkey
        ev.id = nostr.event_id(ev)
      end, "bad signature")
      -- Content re-signed by the attacker's own key is a valid event, just not ours.
      local ev = signed()
      ev.content = "changed"
      nostr.sign(ev, keys.nostr_secret())
      assert.is_true(nostr.verify(ev))
      assert.not_equals(PK_HEX, ev.pubkey)
    end)

    it("never raises on bad field values", function()
      local cases = {
        { "pubkey", nil, "field pubkey missing" },
        { "pubkey", 5, "field pubkey invalid: must be 64 lowercase hex characters" },
        { "pubkey", PK_HEX:upper(), "field pubkey invalid: must be 64 lowercase hex characters" },
        { "pubkey", PK_HEX .. "00", "field pubkey invalid: must be 64 lowercase hex characters" },
        { "pubkey", cjson.null, "field pubkey invalid: must be 64 lowercase hex characters" },
        { "id", nil, "field id missing" },
        { "id", ("g"):rep(64), "field id invalid: must be 64 lowercase hex characters" },
        { "sig", nil, "field sig missing" },
        { "sig", {}, "field sig invalid: must be 128 lowercase hex characters" },
        { "sig", ("a"):rep(64), "field sig invalid: must be 128 lowercase hex characters" },
        { "created_at", nil, "field created_at missing" },
        { "created_at", "1700000000", "field created_at invalid: must be an integer from 0 to "
          .. "9007199254740991" },
        { "created_at", 0 / 0, "field created_at invalid: must be an integer from 0 to "
          .. "9007199254740991" },
        { "created_at", math.huge, "field created_at invalid: must be an integer from 0 to "
          .. "9007199254740991" },
        { "created_at", 2 ^ 53, "field created_at invalid: must be an integer from 0 to "
          .. "9007199254740991" },
        { "kind", 1.25, "field kind invalid: must be an integer from 0 to 65535" },
        { "kind", -1, "field kind invalid: must be an integer from 0 to 65535" },
        { "kind", true, "field kind invalid: must be an integer from 0 to 65535" },
        { "content", nil, "field content missing" },
        { "content", cjson.null, "field content invalid: must be a string" },
        { "tags", nil, "field tags missing" },
        { "tags", "x", "field tags invalid: must be an array of arrays of strings" },
        { "tags", { a = { "p" } }, "field tags invalid: must be an array of at most 256 tags" },
        { "tags", { { "p" }, nil, { "e" } },
          "field tags invalid: must be an array of at most 256 tags" },
        { "tags", { cjson.null },
          "field tags invalid: tag 1 must be an array of at most 16 strings" },
        { "tags", { { "p" }, { "p", cjson.null } },
          "field tags invalid: tag 2 value 2 is not a string" },
        { "tags", { { "p", 1 } }, "field tags invalid: tag 1 value 2 is not a string" },
      }
      for _, c in ipairs(cases) do
        local ev = signed()
        ev[c[1]] = c[2]
        local ok, err = nostr.verify(ev)
        assert.is_nil(ok, c[3])
        assert.equals(c[3], err)
      end
      local ok, err = nostr.verify({})
      assert.is_nil(ok)
      assert.equals("field pubkey missing", err)
    end)

    it("survives whatever JSON a relay might send", function()
      local texts = {
        '{"id":1,"pubkey":[],"created_at":{},"kind":"x","tags":{},"content":[],"sig":null}',
        '{"pubkey":"' .. PK_HEX .. '","created_at":1e300,"kind":1,"tags":[],"content":""}',
        '{"pubkey":"' .. PK_HEX .. '","created_at":1,"kind":1,"tags":[[[]]],"content":""}',
        '{"pubkey":"' .. PK_HEX .. '","created_at":1,"kind":1,"tags":[{"a":"b"}],"content":""}',
      }
      for _, t in ipairs(texts) do
        local ok, err = nostr.verify(cjson.decode(t))
        assert.is_nil(ok)
        assert.is_string(err)
      end
      -- Random field mutations of a valid event: verify answers, never raises.
      math.randomseed(7)
      local values = { cjson.null, true, 0, -1, 1.5, 2 ^ 60, "", ("a"):rep(64), ("a"):rep(128),
        {}, { {} }, { { 1 } }, { "p" }, ("\0"):rep(10) }
      local fields = { "id", "pubkey", "created_at", "kind", "tags", "content", "sig" }
      for _ = 1, 500 do
        local ev = copy(signed())
        for _ = 1, math.random(1, 3) do
          ev[fields[math.random(#fields)]] = values[math.random(#values)]
        end
        local ok, res, err = pcall(nostr.verify, ev)
        assert.is_true(ok, tostring(res))
        assert.is_true(res == true or (res == nil and type(err) == "string"))
      end
    end)

    it("reads fields raw, not through metatables", function()
      local ev = setmetatable({}, { __index = signed() })
      local ok, err = nostr.verify(ev)
      assert.is_nil(ok)
      assert.equals("field pubkey missing", err)
    end)

    it("refuses oversized events without raising", function()
      local ev = signed()
      ev.content = ("\1"):rep(200000)
      local ok, err = nostr.verify(ev)
      assert.is_nil(ok)
      assert.equals("event is too large: its serialization exceeds 1048576 bytes", err)
      local tags = {}
      for i = 1, 300 do
        tags[i] = { "t" }
      end
      ev = signed()
      ev.tags = tags
      ok, err = nostr.verify(ev)
      assert.is_nil(ok)
      assert.equals("field tags invalid: must be an array of at most 256 tags", err)
    end)

    it("raises only when the event is not a table", function()
      assert.has_error(function() nostr.verify("{}") end)
      assert.has_error(function() nostr.verify() end)
    end)
  end)
end)
