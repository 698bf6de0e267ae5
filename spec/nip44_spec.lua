-- tunnel.core.nostr against every NIP-44 v2 test vector (paulmillr/nip44, public domain), read
-- from <repo>/../shared/vectors/nostr/nip44.vectors.json.
local cjson = require "cjson"
local keys = require "tunnel.core.keys"
local nostr = require "tunnel.core.nostr"

-- The published file's SHA-256 (docs/REFERENCE.md, vectors/README.md).
local VECTORS_SHA256 = "269ed0f69e4c192512cc779e78c555090cebc7c785b609e338a62afc3ce25040"

-- The repository root, found from this file's path so that the cwd does not matter.
local function repo_root()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]+$") or "."
  return dir .. "/.."
end

local VECTORS = repo_root() .. "/../shared/vectors/nostr/nip44.vectors.json"

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return nil
  end
  local s = f:read("*a")
  f:close()
  return s
end

local function unhex(s)
  return assert(keys.hex_decode(s))
end

local function tohex(s)
  return keys.hex_encode(s)
end

-- Our reason for each kind of invalid payload in the vectors (their "note" field).
local REASONS = {
  { "^unknown encryption version", "^unknown encryption version" },
  { "^invalid base64", "^payload is not valid base64$" },
  { "^invalid MAC", "^MAC does not match" },
  { "^invalid padding", "^invalid padding$" },
  { "^invalid payload length", "^payload must be 132 to 87472 characters long$" },
}

local function expected_reason(note)
  for _, r in ipairs(REASONS) do
    if note:find(r[1]) then
      return r[2]
    end
  end
  error("no expected reason for note: " .. note)
end

describe("NIP-44 v2 vectors", function()
  local text = read_file(VECTORS)
  if not text then
    pending("NIP-44 vectors not found at " .. VECTORS)
    return
  end
  local v2 = cjson.decode(text).v2
  local valid, invalid = v2.valid, v2.invalid

  it("come from the published file", function()
    assert.equals(VECTORS_SHA256, tohex(nostr.sha256(text)))
  end)

  it("are all present", function()
    assert.equals(35, #valid.get_conversation_key)
    assert.equals(32, #valid.get_message_keys.keys)
    assert.equals(24, #valid.calc_padded_len)
    assert.equals(10, #valid.encrypt_decrypt)
    assert.equals(3, #valid.encrypt_decrypt_long_msg)
    assert.equals(4, #invalid.encrypt_msg_lengths)
    assert.equals(8, #invalid.get_conversation_key)
    assert.equals(12, #invalid.decrypt)
  end)

  describe("valid get_conversation_key", function()
    for i, c in ipairs(valid.get_conversation_key) do
      it("#" .. i, function()
        local conv, err = nostr.conversation_key(unhex(c.sec1), unhex(c.pub2))
        assert.is_nil(err)
        assert.equals(c.conversation_key, tohex(conv))
      end)
    end
  end)

  describe("valid get_message_keys", function()
    local conv = unhex(valid.get_message_keys.conversation_key)
    for i, c in ipairs(valid.get_message_keys.keys) do
      it("#" .. i, function()
        local ck, cn, hk = nostr.message_keys(conv, unhex(c.nonce))
        assert.equals(c.chacha_key, tohex(ck))
        assert.equals(c.chacha_nonce, tohex(cn))
        assert.equals(c.hmac_key, tohex(hk))
      end)
    end
  end)

  it("valid calc_padded_len", function()
    for _, c in ipairs(valid.calc_padded_len) do
      assert.equals(c[2], nostr.calc_padded_len(c[1]), "length " .. c[1])
    end
  end)

  describe("valid encrypt_decrypt", function()
    for i, c in ipairs(valid.encrypt_decrypt) do
      it("#" .. i, function()
        local sec1, sec2 = unhex(c.sec1), unhex(c.sec2)
        local pub1, pub2 = keys.nostr_public(sec1), keys.nostr_public(sec2)
        local conv = assert(nostr.conversation_key(sec1, pub2))
        assert.equals(c.conversation_key, tohex(conv))
        -- Either side derives the same key.
        assert.equals(conv, assert(nostr.conversation_key(sec2, pub1)))
        local payload = assert(nostr.encrypt(conv, c.plaintext, unhex(c.nonce)))
        assert.equals(c.payload, payload)
        assert.equals(c.plaintext, assert(nostr.decrypt(conv, c.payload)))
      end)
    end
  end)

  describe("valid encrypt_decrypt_long_msg", function()
    for i, c in ipairs(valid.encrypt_decrypt_long_msg) do
      it("#" .. i .. " (" .. c["repeat"] .. " x '" .. c.pattern .. "')", function()
        local conv = unhex(c.conversation_key)
        local plaintext = c.pattern:rep(c["repeat"])
        assert.equals(c.plaintext_sha256, tohex(nostr.sha256(plaintext)))
        local payload = assert(nostr.encrypt(conv, plaintext, unhex(c.nonce)))
        assert.equals(c.payload_sha256, tohex(nostr.sha256(payload)))
        assert.equals(plaintext, assert(nostr.decrypt(conv, payload)))
      end)
    end
  end)

  describe("invalid encrypt_msg_lengths", function()
    local conv = unhex(("ab"):rep(32))
    for _, len in ipairs(invalid.encrypt_msg_lengths) do
      it(tostring(len), function()
        local payload, err, code = nostr.encrypt(conv, ("x"):rep(len))
        assert.is_nil(payload)
        assert.equals("plaintext must be 1 to 65535 bytes, got " .. len, err)
        assert.equals("ELENGTH", code)
      end)
    end
  end)

  describe("invalid get_conversation_key", function()
    for _, c in ipairs(invalid.get_conversation_key) do
      it(c.note, function()
        local conv, err = nostr.conversation_key(unhex(c.sec1), unhex(c.pub2))
        assert.is_nil(conv)
        if c.note:find("^sec1") then
          assert.matches("^secret key is not valid", err)
        else
          assert.matches("^public key is not valid", err)
        end
      end)
    end
  end)

  describe("invalid decrypt", function()
    for i, c in ipairs(invalid.decrypt) do
      it("#" .. i .. " " .. c.note, function()
        local plaintext, err = nostr.decrypt(unhex(c.conversation_key), c.payload)
        assert.is_nil(plaintext)
        assert.matches(expected_reason(c.note), err)
      end)
    end
  end)
end)

describe("tunnel.core.nostr NIP-44 API", function()
  local conv = unhex(("42"):rep(32))

  it("round-trips with random nonces, never repeating a payload", function()
    local seen = {}
    for _, n in ipairs({ 1, 32, 33, 300, 65535 }) do
      local msg = ("\0\255z"):rep(n):sub(1, n)
      local p = assert(nostr.encrypt(conv, msg))
      assert.is_nil(seen[p])
      seen[p] = true
      assert.equals(msg, nostr.decrypt(conv, p))
    end
  end)

  it("rejects a payload under another key or with one character changed", function()
    local p = assert(nostr.encrypt(conv, "hello"))
    local other = unhex(("43"):rep(32))
    local pt, err, code = nostr.decrypt(other, p)
    assert.is_nil(pt)
    assert.matches("^MAC does not match", err)
    assert.equals("ECHECKSUM", code)
    local changed = p:sub(1, 60) .. (p:sub(61, 61) == "A" and "B" or "A") .. p:sub(62)
    assert.is_nil(nostr.decrypt(conv, changed))
  end)

  it("accepts only the base64 alphabet (no byte above 0x7f standing in for '/')", function()
    local p
    repeat
      p = assert(nostr.encrypt(conv, "slash"))
    until p:find("/", 5, true) and p:find("/", 5, true) < #p - 4
    local at = p:find("/", 5, true)
    for _, c in ipairs({ "\128", "\239", "\255" }) do
      local pt, err, code = nostr.decrypt(conv, p:sub(1, at - 1) .. c .. p:sub(at + 1))
      assert.is_nil(pt)
      assert.equals("payload is not valid base64", err)
      assert.equals("EFORMAT", code)
    end
    assert.equals("slash", nostr.decrypt(conv, p))
  end)

  it("refuses an over-long payload before decoding it", function()
    local pt, err, code = nostr.decrypt(conv, ("A"):rep(1000000))
    assert.is_nil(pt)
    assert.equals("payload must be 132 to 87472 characters long", err)
    assert.equals("ELENGTH", code)
  end)

  it("raises on wrong-sized keys and nonces and on bad lengths for calc_padded_len", function()
    assert.has_error(function() nostr.encrypt(("x"):rep(31), "hi") end,
      "bad argument #1 to 'encrypt' (conversation key must be 32 bytes, got 31)")
    assert.has_error(function() nostr.encrypt(conv, "hi", "short") end,
      "bad argument #3 to 'encrypt' (nonce must be 32 bytes, got 5)")
    assert.has_error(function() nostr.decrypt(conv, nil) end)
    assert.has_error(function() nostr.message_keys(conv, "") end)
    assert.has_error(function() nostr.conversation_key(("\1"):rep(32), ("\2"):rep(33)) end,
      "bad argument #2 to 'conversation_key' (public key must be 32 bytes, got 33)")
    assert.has_error(function() nostr.calc_padded_len(0) end)
    assert.has_error(function() nostr.calc_padded_len(1.5) end)
    assert.has_error(function() nostr.calc_padded_len("x") end)
    assert.equals(32, nostr.calc_padded_len(1))
  end)

  it("sha256 matches FIPS 180-2's examples", function()
    assert.equals("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      tohex(nostr.sha256("")))
    assert.equals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      tohex(nostr.sha256("abc")))
  end)
end)
