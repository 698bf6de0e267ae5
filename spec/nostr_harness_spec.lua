-- The Nostr test harness itself (spec/nostr, spec/tools/nostr.lua): a relay built on
-- @nostr-relay/core and nostr-tools as its client. Other specs trust its verdicts, so this one
-- shows that the relay delivers, stores and refuses what it should, that its log is complete,
-- and that the NIP-19 and NIP-44 commands agree with themselves and with the published vectors.
local H = require "helper"
local nostr = require "tools.nostr"

if not nostr.guard("the Nostr test harness") then
  return
end

-- NIP-19 test pair (nostr-protocol/nips 19.md).
local NPUB = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg"
local NPUB_HEX = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"
local NSEC = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5"
local NSEC_HEX = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa"

local function flip_hex(s, i)
  local c = s:sub(i, i)
  return s:sub(1, i - 1) .. (c == "0" and "1" or "0") .. s:sub(i + 1)
end

describe("the Nostr test harness", function()
  local relay, alice

  lazy_setup(function()
    relay = nostr.start_relay({ log = true })
    alice = nostr.tool("keygen")
  end)

  lazy_teardown(function()
    nostr.stop_all()
    H.cleanup()
  end)

  it("starts relay.js, which prints its URL once and exits cleanly on SIGTERM", function()
    local r = nostr.start_relay({})
    assert.matches("^ws://127%.0%.0%.1:%d+$", r.url)
    assert.is_true(r.port > 0)
    assert.equal("ready " .. r.url .. "\n", r.proc.stdout)
    local code, signal = r.stop()
    assert.equal(0, code, r.proc.stderr)
    assert.equal(0, signal)
  end)

  it("reports a port it cannot listen on", function()
    local ok, err = pcall(nostr.start_relay, { port = relay.port })
    assert.is_false(ok)
    assert.matches("relay.js did not start", err, 1, true)
    assert.matches("cannot listen on", err, 1, true)
  end)

  it("delivers an ephemeral event published with nostr-tools to a live subscription", function()
    local sub = nostr.subscribe(relay.url, { kinds = { 21000 }, authors = { alice.pk } }, 30,
      { count = 1 })
    assert.is_true(sub:ready(), sub.proc.stderr)
    local ev = nostr.tool("sign", alice.sk, { kind = 21000, content = "ping \"1\"\n",
      tags = { { "p", alice.pk }, { "t", "harness" } } })
    assert.is_nil(ev.error)
    local res = nostr.tool("publish", relay.url, ev)
    assert.same({ ok = true, message = "" }, res)
    local got = sub:wait()
    assert.equal(1, #got, sub.proc.stderr)
    assert.same(ev, got[1])
    -- The log has the REQ and the EVENT exactly as the clients sent them.
    local seen_req, seen_ev
    for _, m in ipairs(relay.messages()) do
      if m[1] == "REQ" and m[3].kinds and m[3].kinds[1] == 21000 then
        seen_req = true
      elseif m[1] == "EVENT" and m[2].id == ev.id then
        seen_ev = m[2]
      end
    end
    assert.is_true(seen_req)
    assert.same(ev, seen_ev)
  end)

  it("stores regular events but not ephemeral ones", function()
    local bob = nostr.tool("keygen")
    local regular = nostr.tool("sign", bob.sk, { kind = 1, content = "kept" })
    local ephemeral = nostr.tool("sign", bob.sk, { kind = 20001, content = "gone" })
    assert.is_true(nostr.tool("publish", relay.url, regular).ok)
    assert.is_true(nostr.tool("publish", relay.url, ephemeral).ok)
    local _, stored = nostr.tool("query", relay.url, { authors = { bob.pk } })
    assert.equal(1, #stored)
    assert.same(regular, stored[1])
    local again = nostr.tool("publish", relay.url, regular)
    assert.is_true(again.ok)
    assert.matches("^duplicate:", again.message)
  end)

  it("rejects a bad signature or a wrong id with OK false \"invalid:\" and broadcasts neither",
    function()
      local sub = nostr.subscribe(relay.url, { kinds = { 21001 } }, 30, { count = 1 })
      assert.is_true(sub:ready(), sub.proc.stderr)
      local ev = nostr.tool("sign", alice.sk, { kind = 21001, content = "x" })
      local bad_sig = {}
      for k, v in pairs(ev) do
        bad_sig[k] = v
      end
      bad_sig.sig = flip_hex(ev.sig, 5)
      assert.is_false(nostr.tool("verify", bad_sig).ok)
      local res = nostr.tool("publish", relay.url, bad_sig)
      assert.is_false(res.ok)
      assert.matches("^invalid:", res.message)
      assert.matches("signature", res.message)

      local bad_id = nostr.tool("sign", alice.sk, { kind = 21001, content = "y" })
      bad_id.content = "z" -- the id and signature were made for "y"
      res = nostr.tool("publish", relay.url, bad_id)
      assert.is_false(res.ok)
      assert.matches("^invalid:", res.message)
      assert.matches("id", res.message)

      local malformed = nostr.tool("publish", relay.url, { id = string.rep("0", 64), kind = 1 })
      assert.is_false(malformed.ok)
      assert.matches("^invalid", malformed.message)

      -- Both refusals were answered before this one was sent, so had either been broadcast it
      -- would be the subscriber's first event.
      assert.is_true(nostr.tool("publish", relay.url, ev).ok)
      local got = sub:wait()
      assert.equal(1, #got)
      assert.equal(ev.id, got[1].id)
    end)

  it("round-trips keys through keygen, pubkey, npub, nsec and decode", function()
    local k = nostr.tool("keygen")
    assert.matches("^%x+$", k.sk)
    assert.equal(64, #k.sk)
    assert.same({ pk = k.pk }, nostr.tool("pubkey", k.sk))
    assert.same({ npub = k.npub }, nostr.tool("npub", k.pk))
    assert.same({ nsec = k.nsec }, nostr.tool("nsec", k.sk))
    assert.same({ type = "npub", data = k.pk }, nostr.tool("decode", k.npub))
    assert.same({ type = "nsec", data = k.sk }, nostr.tool("decode", k.nsec))
    -- The published test pair.
    assert.same({ type = "npub", data = NPUB_HEX }, nostr.tool("decode", NPUB))
    assert.same({ type = "nsec", data = NSEC_HEX }, nostr.tool("decode", NSEC))
    assert.same({ npub = NPUB }, nostr.tool("npub", NPUB_HEX))
    assert.same({ nsec = NSEC }, nostr.tool("nsec", NSEC_HEX))
    -- Failures come back as { error = ... }, not as a crash.
    assert.is_string(nostr.tool("decode", NPUB:sub(1, -2) .. "q").error)
    assert.is_string(nostr.tool("nsec", "abc").error)
  end)

  it("runs many commands in one batch, with NUL and unicode in arguments", function()
    local b = nostr.tool("keygen")
    local text = "nul \0 tab \t emoji \xF0\x9F\x9A\x80 quote \" backslash \\"
    local r = nostr.batch({
      { "conv", alice.sk, b.pk },
      { "conv", b.sk, alice.pk },
      { "encrypt", alice.sk, b.pk, text },
      { "pubkey", alice.sk },
    })
    assert.equal(4, #r)
    assert.matches("^%x+$", r[1].key)
    assert.equal(r[1].key, r[2].key)
    assert.equal(alice.pk, r[4].pk)
    local d = nostr.batch({ { "decrypt", b.sk, alice.pk, r[3].payload } })
    assert.equal(text, d[1].plaintext)
  end)

  it("encrypts with NIP-44 deterministically for a given nonce", function()
    local b = nostr.tool("keygen")
    local nonce = string.rep("ab", 32)
    local one = nostr.tool("encrypt", alice.sk, b.pk, "hello", nonce)
    local two = nostr.tool("encrypt", b.sk, alice.pk, "hello", nonce)
    assert.equal(one.payload, two.payload)
    assert.same({ plaintext = "hello" }, nostr.tool("decrypt", b.sk, alice.pk, one.payload))
    local other = nostr.tool("encrypt", alice.sk, b.pk, "hello")
    assert.are_not.equal(one.payload, other.payload)
    local tampered = one.payload:sub(1, 40) .. (one.payload:sub(41, 41) == "A" and "B" or "A")
      .. one.payload:sub(42)
    assert.is_string(nostr.tool("decrypt", b.sk, alice.pk, tampered).error)
  end)

  it("demands NIP-42 AUTH before events when started with auth", function()
    local r = nostr.start_relay({ auth = true })
    local ev = nostr.tool("sign", alice.sk, { kind = 21002, content = "who am I" })
    local res = nostr.tool("publish", r.url, ev)
    assert.is_false(res.ok)
    assert.matches("^auth%-required:", res.message)
    res = nostr.tool("publish", r.url, ev, "--auth", alice.sk)
    assert.is_true(res.ok, res.message)
    r.stop()
  end)

  describe("in a network namespace", function()
    local ns

    lazy_setup(function()
      local p = H.spawn({ "id", "-u" }):wait()
      if p.stdout:match("^(%d+)") ~= "0" then
        return
      end
      local name = string.format("tn%dnostr", require("luv").os_getpid())
      if H.spawn({ "ip", "netns", "add", name }):wait().code == 0 then
        ns = name
        assert(H.spawn({ "ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up" }):wait()
          .code == 0)
      end
    end)

    lazy_teardown(function()
      nostr.stop_all()
      if ns then
        H.spawn({ "ip", "netns", "del", ns }):wait()
      end
    end)

    it("runs the relay and the client inside it", function()
      if not ns then
        if os.getenv("TUNNEL_LAB_REQUIRE") == "1" then
          error("TUNNEL_LAB_REQUIRE=1 but no network namespace could be made (needs root)", 0)
        end
        pending("needs root and network namespaces")
        return
      end
      local r = nostr.start_relay({ netns = ns, log = true })
      local ev = nostr.tool_in(ns, "sign", alice.sk, { kind = 1, content = "inside" })
      assert.same({ ok = true, message = "" }, nostr.tool_in(ns, "publish", r.url, ev))
      local _, stored = nostr.tool_in(ns, "query", r.url, { ids = { ev.id } })
      assert.same({ ev }, stored)
      local logged = r.messages()
      assert.equal("EVENT", logged[1][1])
      assert.equal(ev.id, logged[1][2].id)
      local code = r.stop()
      assert.equal(0, code)
    end)
  end)
end)
