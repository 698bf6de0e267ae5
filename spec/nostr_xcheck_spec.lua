-- Our Nostr code against third-party implementations: tunnel.core.nostr and tunnel.core.keys
-- against nostr-tools (the reference client) and a relay built on @nostr-relay/core, both run
-- by the harness in spec/nostr (spec/tools/nostr.lua). Every check goes both ways: what we make
-- must pass theirs, and what they make must pass ours.
local H = require "helper"
local harness = require "tools.nostr"

if not harness.guard("tunnel.core.nostr against nostr-tools") then
  return
end

local N = require "tunnel.core.nostr"
local keys = require "tunnel.core.keys"
local hex, unhex = keys.hex_encode, keys.hex_decode

-- NIP-19 test pair (nostr-protocol/nips 19.md).
local NPUB = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg"
local NPUB_HEX = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"
local NSEC = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5"
local NSEC_HEX = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa"

-- Contents that serializers get wrong: every byte NIP-01 escapes, the control bytes it does not
-- name (\u00xx, as JSON.stringify writes them), DEL and non-ASCII (verbatim), and JSON-looking
-- text.
local CONTENTS = {
  "",
  "hello",
  "unicode: h\xC3\xA9llo w\xC3\xB6rld \xE2\x9C\x93 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E " ..
    "\xF0\x9F\x9A\x80 U+2028 \xE2\x80\xA8 U+2029 \xE2\x80\xA9 BOM \xEF\xBB\xBF",
  "quotes \" and \\ backslashes \\\" a slash / </script> &amp; 'single'",
  "newlines\nand\r\nCR LF\ttab",
  "control: NUL \0 SOH \1 BS \b FF \f VT \v ESC \27 US \31 DEL \127 end",
  "{\"kind\":1,\"tags\":[[\"p\",\"x\"]],\"content\":\"\\n\"}",
  string.rep("long content \xC3\xA9 ", 800),
}

local function tags_for(i, pk)
  local sets = {
    {},
    { { "p", pk } },
    { { "e", string.rep("ab", 32), "wss://relay.example.com/", "root" }, { "p", pk },
      { "t", "\xC3\xBCn\xC3\xAFc\xC3\xB6de" } },
    { { "x", "" }, { "empty" }, { "q", "quote \" backslash \\ newline \n ctl \1 del \127" } },
    { { "d", "tunnel" }, { "expiration", "4102444800" } },
  }
  return sets[(i - 1) % #sets + 1]
end

local KINDS = { 1, 0, 25517, 21059, 30078, 65535, 4, 20000 }
local CREATED = { 1700000000, 0, 4102444800, os.time() }

local function template(i, pk)
  return {
    kind = KINDS[(i - 1) % #KINDS + 1],
    created_at = CREATED[(i - 1) % #CREATED + 1],
    tags = tags_for(i, pk),
    content = CONTENTS[i],
  }
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = type(v) == "table" and copy(v) or v
  end
  return c
end

local function flip(s, i)
  local c = s:sub(i, i)
  return s:sub(1, i - 1) .. (c == "0" and "1" or "0") .. s:sub(i + 1)
end

describe("tunnel.core.nostr against nostr-tools", function()
  local sk, pk -- ours: raw 32-byte strings
  local theirs -- a nostr-tools key pair (hex)

  lazy_setup(function()
    sk = keys.nostr_secret()
    pk = keys.nostr_public(sk)
    theirs = harness.tool("keygen")
  end)

  lazy_teardown(function()
    harness.stop_all()
    H.cleanup()
  end)

  describe("NIP-01 events", function()
    it("events we sign verify in nostr-tools, with the same id and serialization", function()
      local calls, evs = {}, {}
      for i = 1, #CONTENTS do
        local ev = N.sign(template(i, hex(pk)), sk)
        assert.equal(hex(pk), ev.pubkey)
        assert.equal(ev.id, N.event_id(ev))
        assert.is_true(N.verify(ev))
        evs[i] = ev
        calls[#calls + 1] = { "verify", ev }
        calls[#calls + 1] = { "id", ev }
        calls[#calls + 1] = { "serialize", ev }
      end
      local r = harness.batch(calls)
      for i, ev in ipairs(evs) do
        local what = string.format("event %d (kind %d, content %q)", i, ev.kind, ev.content)
        assert.same({ ok = true }, r[3 * i - 2], what)
        assert.equal(ev.id, r[3 * i - 1].id, what)
        assert.equal(r[3 * i].serialized, N.serialize(ev), what)
      end
    end)

    it("events nostr-tools signs verify with us, with the same id and serialization", function()
      local calls = {}
      for i = 1, #CONTENTS do
        calls[i] = { "sign", theirs.sk, template(i, theirs.pk) }
      end
      local signed = harness.batch(calls)
      local ser = {}
      for i, ev in ipairs(signed) do
        assert.is_nil(ev.error, ev.error)
        ser[i] = { "serialize", ev }
      end
      ser = harness.batch(ser)
      for i, ev in ipairs(signed) do
        local what = string.format("event %d (kind %d, content %q)", i, ev.kind, ev.content)
        assert.equal(theirs.pk, ev.pubkey)
        local ok, why = N.verify(ev)
        assert.is_true(ok, what .. ": " .. tostring(why))
        assert.equal(ev.id, N.event_id(ev), what)
        assert.equal(ser[i].serialized, N.serialize(ev), what)
      end
    end)

    it("both refuse a changed content, tag, kind, time, key or signature", function()
      local base = N.sign(template(3, hex(pk)), sk)
      local changes = {
        content = function(e) e.content = e.content .. " " end,
        tag = function(e) e.tags[1][2] = flip(e.tags[1][2], 1) end,
        kind = function(e) e.kind = e.kind + 1 end,
        created_at = function(e) e.created_at = e.created_at + 1 end,
        pubkey = function(e) e.pubkey = theirs.pk end,
        sig = function(e) e.sig = flip(e.sig, 70) end,
      }
      local names, calls = {}, {}
      for name, change in pairs(changes) do
        local e = copy(base)
        change(e)
        local ok, why = N.verify(e)
        assert.is_nil(ok, name)
        assert.is_string(why, name)
        names[#names + 1] = name
        calls[#calls + 1] = { "verify", e }
      end
      local r = harness.batch(calls)
      for i, name in ipairs(names) do
        assert.is_false(r[i].ok, name .. " changed, yet nostr-tools accepts it")
      end
    end)
  end)

  describe("NIP-19", function()
    it("our nsec and npub strings are nostr-tools' and decode to our keys there", function()
      local calls, list = {}, {}
      for i = 1, 4 do
        local s = keys.nostr_secret()
        local p = keys.nostr_public(s)
        list[i] = { s = s, p = p }
        calls[#calls + 1] = { "pubkey", hex(s) }
        calls[#calls + 1] = { "nsec", hex(s) }
        calls[#calls + 1] = { "npub", hex(p) }
        calls[#calls + 1] = { "decode", keys.nsec_encode(s) }
        calls[#calls + 1] = { "decode", keys.npub_encode(p) }
      end
      local r = harness.batch(calls)
      for i, k in ipairs(list) do
        local o = 5 * (i - 1)
        assert.equal(hex(k.p), r[o + 1].pk)
        assert.equal(keys.nsec_encode(k.s), r[o + 2].nsec)
        assert.equal(keys.npub_encode(k.p), r[o + 3].npub)
        assert.same({ type = "nsec", data = hex(k.s) }, r[o + 4])
        assert.same({ type = "npub", data = hex(k.p) }, r[o + 5])
      end
    end)

    it("nostr-tools' keys and strings parse to the same keys with us", function()
      local calls = {}
      for i = 1, 4 do
        calls[i] = { "keygen" }
      end
      for _, k in ipairs(harness.batch(calls)) do
        assert.equal(k.sk, hex(keys.parse_nsec(k.nsec)))
        assert.equal(k.pk, hex(keys.parse_npub(k.npub)))
        assert.equal(k.pk, hex(keys.nostr_public(unhex(k.sk))))
        assert.equal(k.nsec, keys.nsec_encode(unhex(k.sk)))
        assert.equal(k.npub, keys.npub_encode(unhex(k.pk)))
      end
    end)

    it("agrees on the published test pair", function()
      assert.equal(NPUB_HEX, hex(keys.parse_npub(NPUB)))
      assert.equal(NSEC_HEX, hex(keys.parse_nsec(NSEC)))
      assert.equal(NPUB, keys.npub_encode(unhex(NPUB_HEX)))
      assert.equal(NSEC, keys.nsec_encode(unhex(NSEC_HEX)))
      local r = harness.batch({ { "decode", NPUB }, { "decode", NSEC } })
      assert.same({ type = "npub", data = NPUB_HEX }, r[1])
      assert.same({ type = "nsec", data = NSEC_HEX }, r[2])
    end)
  end)

  describe("NIP-44 v2", function()
    -- Lengths around the padding steps (32, 64, 256 ...) and the maximum, in valid UTF-8 (nostr-
    -- tools takes strings).
    local PLAINTEXTS = {
      "a",
      string.rep("b", 31),
      string.rep("c", 32),
      string.rep("d", 33),
      string.rep("e", 257),
      "unicode \xC3\xA9\xE2\x9C\x93\xF0\x9F\x9A\x80 NUL \0 ctl \1 \31 \127 quote \" \\ \n",
      string.rep("0123456789abcdef", 4096):sub(1, 65535),
    }

    it("derives the conversation keys nostr-tools derives, symmetrically", function()
      local tsk, tpk = unhex(theirs.sk), unhex(theirs.pk)
      local ours = N.conversation_key(sk, tpk)
      assert.equal(32, #ours)
      assert.equal(ours, N.conversation_key(tsk, pk))
      local r = harness.batch({ { "conv", theirs.sk, hex(pk) }, { "conv", hex(sk), theirs.pk } })
      assert.equal(hex(ours), r[1].key)
      assert.equal(hex(ours), r[2].key)
    end)

    it("encrypts to the very payload nostr-tools makes for the same nonce", function()
      local conv = N.conversation_key(sk, unhex(theirs.pk))
      local calls, nonces = {}, {}
      for i, pt in ipairs(PLAINTEXTS) do
        nonces[i] = keys.nostr_secret() -- 32 random bytes
        calls[i] = { "encrypt", hex(sk), theirs.pk, pt, hex(nonces[i]) }
      end
      local r = harness.batch(calls)
      for i, pt in ipairs(PLAINTEXTS) do
        assert.is_nil(r[i].error, r[i].error)
        assert.equal(r[i].payload, N.encrypt(conv, pt, nonces[i]), "plaintext " .. i .. " (" ..
          #pt .. " bytes)")
      end
    end)

    it("what we encrypt nostr-tools decrypts, and what it encrypts we decrypt", function()
      local conv = N.conversation_key(sk, unhex(theirs.pk))
      local calls = {}
      for _, pt in ipairs(PLAINTEXTS) do
        calls[#calls + 1] = { "decrypt", theirs.sk, hex(pk), N.encrypt(conv, pt) }
        calls[#calls + 1] = { "encrypt", theirs.sk, hex(pk), pt }
      end
      local r = harness.batch(calls)
      for i, pt in ipairs(PLAINTEXTS) do
        local what = "plaintext " .. i .. " (" .. #pt .. " bytes)"
        assert.equal(pt, r[2 * i - 1].plaintext, what .. ": " .. tostring(r[2 * i - 1].error))
        local got, err = N.decrypt(conv, r[2 * i].payload)
        assert.equal(pt, got, what .. ": " .. tostring(err))
      end
    end)

    it("both refuse a payload changed anywhere, and an empty plaintext", function()
      local conv = N.conversation_key(sk, unhex(theirs.pk))
      local theirs_payload = harness.tool("encrypt", theirs.sk, hex(pk), "secret offer").payload
      local ours_payload = N.encrypt(conv, "secret offer")
      local calls = {}
      -- The version byte, the nonce, the ciphertext and the MAC.
      for _, at in ipairs({ 1, 10, 50, #ours_payload - 3 }) do
        local function change(p)
          local c = p:sub(at, at)
          return p:sub(1, at - 1) .. (c == "A" and "B" or "A") .. p:sub(at + 1)
        end
        local got = N.decrypt(conv, change(theirs_payload))
        assert.is_nil(got, "we accepted nostr-tools' payload changed at " .. at)
        calls[#calls + 1] = { "decrypt", theirs.sk, hex(pk), change(ours_payload) }
      end
      calls[#calls + 1] = { "encrypt", theirs.sk, hex(pk), "" }
      local r = harness.batch(calls)
      for i = 1, #calls - 1 do
        assert.is_string(r[i].error, "nostr-tools accepted our payload changed (" .. i .. ")")
      end
      assert.is_string(r[#r].error)
      local ok, got = pcall(N.encrypt, conv, "")
      assert.is_true(not ok or got == nil, "we encrypted an empty plaintext")
    end)
  end)

  describe("through the relay", function()
    local relay

    lazy_setup(function()
      relay = harness.start_relay({ log = true })
    end)

    it("accepts events we sign and delivers them intact to a nostr-tools subscriber", function()
      local sub = harness.subscribe(relay.url, { kinds = { 25517 }, authors = { hex(pk) } }, 60,
        { count = 3 })
      assert.is_true(sub:ready(), sub.proc.stderr)
      local sent = {}
      for i, c in ipairs({ CONTENTS[3], CONTENTS[6], CONTENTS[4] }) do
        local ev = N.sign({ kind = 25517, created_at = os.time(), content = c,
          tags = i == 1 and {} or { { "p", theirs.pk }, { "t", "x\n\"y\"" } } }, sk)
        local res = harness.tool("publish", relay.url, ev)
        assert.same({ ok = true, message = "" }, res, "event " .. i)
        sent[i] = ev
      end
      local got = sub:wait()
      assert.equal(#sent, #got, sub.proc.stderr)
      for i, ev in ipairs(got) do
        assert.same(sent[i], ev)
        assert.is_true(N.verify(ev))
      end
    end)

    it("stores a regular event we sign and serves it back by id", function()
      local ev = N.sign({ kind = 1, created_at = os.time(), content = CONTENTS[6],
        tags = { { "p", theirs.pk } } }, sk)
      assert.is_true(harness.tool("publish", relay.url, ev).ok)
      local _, stored = harness.tool("query", relay.url, { ids = { ev.id } })
      assert.equal(1, #stored)
      assert.same(ev, stored[1])
      assert.is_true(N.verify(stored[1]))
    end)

    it("refuses our event once its signature is broken", function()
      local ev = N.sign({ kind = 25517, created_at = os.time(), content = "x", tags = {} }, sk)
      ev.sig = flip(ev.sig, 3)
      local res = harness.tool("publish", relay.url, ev)
      assert.is_false(res.ok)
      assert.matches("^invalid:", res.message)
    end)
  end)

  -- Our relay pool (tunnel.nostr.pool) speaking to the relay on its own: its wire encoding of
  -- events and filters, its signature checks on delivery, and its NIP-42 AUTH.
  describe("our relay pool", function()
    -- The pool needs the WebSocket client binding; without it there is nothing to test yet.
    -- Once that is built, a pool that does not load is a failure.
    local has_ws, ws_err = pcall(require, "tunnel.core.ws")
    if not has_ws then
      it("talks to the relay", function()
        pending("tunnel.core.ws is not built: " .. tostring(ws_err):match("^[^\n]*"))
      end)
      return
    end

    local pool, relay, p

    lazy_setup(function()
      pool = require "tunnel.nostr.pool"
      relay = harness.start_relay({ auth = true, log = true })
      p = pool.new({ relays = { relay.url }, secret = sk })
      H.wait_until(function()
        return p:open_count() == 1
      end, 30)
    end)

    lazy_teardown(function()
      if p then
        p:close()
      end
    end)

    local function publish(ev)
      local res
      p:publish(ev, function(r)
        res = r
      end)
      H.wait_until(function()
        return res ~= nil
      end, 30)
      return res
    end

    it("publishes our events, with and without tags, past NIP-42 AUTH", function()
      assert.equal(1, p:open_count(), relay.proc.stderr)
      local sub = harness.subscribe(relay.url, { kinds = { 25517 }, authors = { hex(pk) } }, 60,
        { count = 2, auth = theirs.sk })
      assert.is_true(sub:ready(), sub.proc.stderr)
      local evs = {
        N.sign({ kind = 25517, created_at = os.time(), content = CONTENTS[6], tags = {} }, sk),
        N.sign({ kind = 25517, created_at = os.time(), content = CONTENTS[3],
          tags = { { "p", theirs.pk } } }, sk),
      }
      for i, ev in ipairs(evs) do
        local res = publish(ev)
        assert.equal(1, res.accepted, "event " .. i .. ": " .. table.concat(res.failed, "; ") ..
          "\nthe relay saw: " .. (H.read_file(relay.log) or ""))
      end
      local got = sub:wait()
      assert.equal(2, #got, sub.proc.stderr)
      assert.same(evs[1], got[1])
      assert.same(evs[2], got[2])
    end)

    it("delivers an event nostr-tools publishes, verified, to our subscription", function()
      local got = {}
      local live
      local s = p:subscribe({ { kinds = { 25518 }, authors = { theirs.pk } } }, function(ev)
        got[#got + 1] = ev
      end, function()
        live = true
      end)
      assert.is_true(H.wait_until(function()
        return live
      end, 30), "no EOSE for our subscription")
      local ev = harness.tool("sign", theirs.sk, { kind = 25518, content = CONTENTS[5],
        tags = { { "p", hex(pk) } } })
      assert.is_true(harness.tool("publish", relay.url, ev, "--auth", theirs.sk).ok)
      assert.is_true(H.wait_until(function()
        return #got > 0
      end, 30), "our pool got nothing")
      assert.equal(ev.id, got[1].id)
      assert.equal(ev.content, got[1].content)
      s:close()
    end)
  end)
end)
