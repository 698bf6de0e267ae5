-- tunnel.keys and tunnel.core.keys: codecs, identities, tokens, Nostr keys and key files.
local H = require "helper"
local uv = require "luv"
local bit = require "bit"
local core = require "tunnel.core.keys"
local keys = require "tunnel.keys"

local ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."

local function hex(s)
  return assert(core.hex_decode(s))
end

local function mode_of(path)
  return bit.band(assert(uv.fs_stat(path)).mode, 511)
end

local function files_in(dir)
  local names = {}
  local req = assert(uv.fs_scandir(dir))
  while true do
    local name = uv.fs_scandir_next(req)
    if not name then
      break
    end
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

-- Reference Luhn mod 65 written from the description, independent of the C code.
local function luhn_valid(tok)
  local sum, factor = 0, 1
  for i = #tok, 2, -1 do
    local a = (ALPHA:find(tok:sub(i, i), 1, true) - 1) * factor
    sum = sum + math.floor(a / 65) + a % 65
    factor = 3 - factor
  end
  return sum % 65 == 0
end

describe("tunnel.core.keys codecs", function()
  it("encodes and decodes base32 (RFC 4648 vectors, lowercase, no padding)", function()
    local vec = { [""] = "", f = "my", fo = "mzxq", foo = "mzxw6", foob = "mzxw6yq",
      fooba = "mzxw6ytb", foobar = "mzxw6ytboi" }
    for plain, text in pairs(vec) do
      assert.equal(text, core.base32_encode(plain))
      assert.equal(plain, core.base32_decode(text))
      assert.equal(plain, core.base32_decode(text:upper()))
    end
  end)

  it("rejects bad base32 with a distinct message each", function()
    local _, err, code = core.base32_decode("mzx")
    assert.equal("ELENGTH", code)
    assert.matches("3 characters", err)
    _, err, code = core.base32_decode("mz0w6ytb")
    assert.equal("EFORMAT", code)
    assert.equal("base32 text has '0' at position 3, which is not base32 (a-z, 2-7)", err)
    _, err, code = core.base32_decode("my======")
    assert.equal("EINVAL", code)
    assert.matches("padding %(position 3%)", err)
    _, err, code = core.base32_decode("mz")
    assert.equal("ERANGE", code)
    assert.matches("not canonical", err)
  end)

  it("round-trips bech32 and follows BIP-173", function()
    local hrp, data = core.bech32_decode("A12UEL5L")
    assert.equal("a", hrp)
    assert.equal("", data)
    assert.equal("a12uel5l", core.bech32_encode("a", ""))
    for n = 0, 40 do
      local bytes = core.ed25519_secret():rep(2):sub(1, n)
      local text = assert(core.bech32_encode("test", bytes))
      local h, d = core.bech32_decode(text)
      assert.equal("test", h)
      assert.equal(bytes, d)
    end
    local cases = {
      { "a12UEL5L", "EINVAL", "mixes upper%- and lowercase" },
      { "A1G7SGD8", "ECHECKSUM", "checksum is invalid" },
      { "pzry9x0s0muk", "EFORMAT", "no '1' separator" },
      { "1pzry9x0s0muk", "ERANGE", "nothing before its '1'" },
      { "x1b4n0q5v", "EFORMAT", "'b' at position 3, which is not a bech32 character" },
      { "li1dgmt3", "ELENGTH", "too short" },
      { " 1nwldj5", "ERANGE", "a space at position 1" },
      { "a1" .. ("q"):rep(89), "ELENGTH", "91 characters long" },
    }
    for _, c in ipairs(cases) do
      local r, err, code = core.bech32_decode(c[1])
      assert.is_nil(r)
      assert.equal(c[2], code)
      assert.matches(c[3], err)
    end
    local _, err = core.bech32_encode("NPUB", "x")
    assert.matches("lowercase", err)
    _, err = core.bech32_encode("a", ("x"):rep(52))
    assert.matches("exceed", err)
  end)

  it("encodes base64 (standard, padded) and hex, and rejects malformed text", function()
    assert.equal("Zm9vYmFy", core.base64_encode("foobar"))
    assert.equal("Zm9vYg==", core.base64_encode("foob"))
    assert.equal("foob", core.base64_decode("Zm9vYg=="))
    assert.is_nil(core.base64_decode("Zm9vYg"))   -- padding required
    assert.is_nil(core.base64_decode("Zm9vYh==")) -- unused bits set
    assert.is_nil(core.base64_decode("Zm9v Yg=="))
    assert.is_nil(core.base64_decode("Zm9vYg==x"))
    -- libsodium 1.0.18 alone reads bytes >= 0x80 as '/': "Zm9v" and "Zm9\x80" would both pass.
    assert.equal("foo", core.base64_decode("Zm9v"))
    assert.is_nil(core.base64_decode("Zm9\x80"))
    assert.is_nil(core.base64_decode("\xffm9v"))
    assert.equal("00ff7f", core.hex_encode("\0\255\127"))
    assert.equal("\0\255\127", core.hex_decode("00FF7f"))
    local _, err, code = core.hex_decode("abc")
    assert.equal("ELENGTH", code)
    assert.matches("odd number", err)
    _, err = core.hex_decode("zz")
    assert.equal("hex text has 'z' at position 1, which is not a hex digit", err)
  end)

  it("raises on misuse (wrong key sizes and types)", function()
    assert.has_error(function() core.ed25519_public("short") end)
    assert.has_error(function() core.endpoint_id(("x"):rep(31)) end)
    assert.has_error(function() core.nsec_encode({}) end)
    assert.has_error(function() keys.endpoint_id(("x"):rep(33)) end)
    assert.has_error(function() keys.validate_token(42) end)
    assert.has_error(function() keys.write_secret_file("x", ("s"):rep(32), { froce = true }) end)
    assert.has_error(function() keys.write_secret_file("x", ("s"):rep(32), { force = "yes" }) end)
  end)
end)

describe("identities", function()
  -- RFC 8032 section 7.1, TEST 1.
  local SECRET = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
  local PUBLIC = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
  local ID = "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena"

  it("derives the Ed25519 public key and its EndpointId", function()
    assert.equal(PUBLIC, keys.public_key(SECRET))
    assert.equal(ID, keys.endpoint_id(SECRET))
    assert.equal(ID, keys.format_endpoint_id(PUBLIC))
  end)

  it("parses both EndpointId forms, either case, trimming whitespace", function()
    assert.equal(PUBLIC, keys.parse_endpoint_id(ID))
    assert.equal(PUBLIC, keys.parse_endpoint_id(ID:upper()))
    assert.equal(PUBLIC, keys.parse_endpoint_id("  " .. ID .. "\n"))
    assert.equal(PUBLIC, keys.parse_endpoint_id(core.hex_encode(PUBLIC)))
    assert.equal(PUBLIC, keys.parse_endpoint_id(core.hex_encode(PUBLIC):upper()))
  end)

  it("generates distinct secrets whose ids round-trip", function()
    local seen = {}
    for _ = 1, 50 do
      local s = keys.generate_secret()
      assert.equal(32, #s)
      assert.is_nil(seen[s])
      seen[s] = true
      local id = keys.endpoint_id(s)
      assert.matches("^[a-z2-7]+$", id)
      assert.equal(52, #id)
      assert.equal(keys.public_key(s), keys.parse_endpoint_id(id))
    end
  end)

  it("explains what is wrong with a bad EndpointId", function()
    local _, err, code = keys.parse_endpoint_id(ID:sub(1, 51))
    assert.equal("ELENGTH", code)
    assert.equal("EndpointId must be 52 base32 characters or 64 hex characters, got 51 "
      .. "characters", err)
    _, err = keys.parse_endpoint_id(ID:sub(1, 10) .. "1" .. ID:sub(12))
    assert.equal("EndpointId has '1' at position 11, which is not base32 (a-z, 2-7)", err)
    _, err = keys.parse_endpoint_id(core.hex_encode(PUBLIC):sub(1, 63) .. "x")
    assert.equal("EndpointId has 'x' at position 64, which is not a hex digit", err)
    _, err, code = keys.parse_endpoint_id(ID:sub(1, 51) .. "b")
    assert.equal("ERANGE", code)
    assert.matches("last character 'b'", err)
    _, err, code = keys.parse_endpoint_id(("0"):rep(64))
    assert.equal("ECRYPTO", code)
    assert.equal("EndpointId is not a valid Ed25519 public key (a typo?)", err)
  end)
end)

describe("tokens", function()
  it("computes the check character of the documented vectors", function()
    assert.equal("k", core.token_check_char("ABCDEF1234567890"))
    assert.equal("A", core.token_check_char("AAAAAAAAAAAAAAAA"))
    assert.equal("5", core.token_check_char("0123456789abcdef"))
    for _, t in ipairs({ "iABCDEF1234567890k", "iAAAAAAAAAAAAAAAAA", "i0123456789abcdef5" }) do
      assert.is_true(keys.validate_token(t))
      assert.is_true(luhn_valid(t))
    end
    local _, err = core.token_check_char("ABC+")
    assert.matches("'%+' at position 4", err)
  end)

  it("generates valid, distinct tokens that use the whole alphabet", function()
    local seen, chars = {}, {}
    for _ = 1, 1000 do
      local t = keys.generate_token()
      assert.equal(18, #t)
      assert.equal("i", t:sub(1, 1))
      assert.is_true(keys.validate_token(t))
      assert.is_true(luhn_valid(t))
      assert.is_nil(seen[t])
      seen[t] = true
      for i = 2, 17 do
        chars[t:sub(i, i)] = true
      end
    end
    for i = 1, #ALPHA do
      assert.is_true(chars[ALPHA:sub(i, i)], "never generated " .. ALPHA:sub(i, i))
    end
  end)

  it("rejects every single-character substitution outside the Luhn mod 65 blind spot", function()
    -- At even positions 2..16 (weight 2), indices x and x+32 give the same Luhn term: the one
    -- class of single substitutions the specified checksum cannot see. Everything else must
    -- be rejected; the blind spots must match the independent Lua reference exactly.
    local tokens = { "iABCDEF1234567890k", "i0123456789abcdef5", "iAAAAAAAAAAAAAAAAA" }
    for _ = 1, 5 do
      tokens[#tokens + 1] = keys.generate_token()
    end
    for _, tok in ipairs(tokens) do
      local blind = 0
      for pos = 1, 18 do
        for b = 0, 255 do
          local c = string.char(b)
          if c ~= tok:sub(pos, pos) then
            local t = tok:sub(1, pos - 1) .. c .. tok:sub(pos + 1)
            local ok = keys.validate_token(t)
            local from = ALPHA:find(tok:sub(pos, pos), 1, true)
            local to = ALPHA:find(c, 1, true)
            local in_blind_spot = pos > 1 and (pos - 1) % 2 == 0 and pos <= 17 and to ~= nil
              and from > 1 and to > 1 and math.abs(from - to) == 32
            if in_blind_spot then
              blind = blind + 1
              assert.is_true(ok, t)
              assert.is_true(luhn_valid(t))
            else
              assert.is_nil(ok, t)
            end
          end
        end
      end
      assert.is_true(blind <= 8)
    end
    assert.is_true(keys.validate_token("iAhCDEF1234567890k")) -- 'B' -> 'h' at position 3
  end)

  it("says which rule a bad token breaks", function()
    local cases = {
      { "iABCDEF1234567890j", "ECHECKSUM", "token checksum is invalid — a typo?" },
      { "iABCDEF123456789", "ELENGTH", "token must be 18 characters, got 16" },
      { "iABCDEF1234567890", "ELENGTH", "token must be 18 characters, got 17" },
      { "xABCDEF1234567890k", "EPROTO", "token must start with 'i'" },
      { "iABC!EF1234567890k", "EFORMAT",
        "token has '!' at position 5, which is not allowed (use A-Z a-z 0-9 - _ .)" },
      { "iABC EF1234567890k", "EFORMAT",
        "token has a space at position 5, which is not allowed (use A-Z a-z 0-9 - _ .)" },
      { "iABCDEF1234567890é", "ERANGE", "token has a non-ASCII character at position 18" },
    }
    for _, c in ipairs(cases) do
      local ok, err, code = keys.validate_token(c[1])
      assert.is_nil(ok)
      assert.equal(c[3], err)
      assert.equal(c[2], code)
    end
  end)
end)

describe("nostr keys", function()
  local NSEC = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5"
  local NSEC_HEX = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa"
  local NPUB = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg"
  local NPUB_HEX = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"

  it("matches the NIP-19 examples in both directions", function()
    local sk = assert(keys.parse_nsec(NSEC))
    assert.equal(NSEC_HEX, core.hex_encode(sk))
    assert.equal(NSEC, keys.nsec(sk))
    local pub = assert(keys.parse_npub(NPUB))
    assert.equal(NPUB_HEX, core.hex_encode(pub))
    assert.equal(NPUB, keys.npub(pub))
    -- The two examples are one key pair (checked independently with big-integer arithmetic).
    assert.equal(pub, keys.nostr_public(sk))
    assert.equal(sk, keys.parse_nsec(NSEC_HEX))
    assert.equal(pub, keys.parse_npub(" " .. NPUB_HEX:upper() .. "\n"))
    assert.equal(pub, keys.parse_npub(NPUB:upper()))
  end)

  it("generates keys that round-trip through nsec/npub", function()
    for _ = 1, 20 do
      local sk = keys.generate_nostr_secret()
      local pub = assert(keys.nostr_public(sk))
      assert.equal(sk, keys.parse_nsec(keys.nsec(sk)))
      assert.equal(pub, keys.parse_npub(keys.npub(pub)))
      assert.matches("^nsec1[02-9ac-hj-np-z]+$", keys.nsec(sk))
      assert.equal(63, #keys.npub(pub))
    end
  end)

  it("explains bad keys without echoing secret material", function()
    local _, err, code = keys.parse_nsec(NPUB)
    assert.equal("EPROTO", code)
    assert.equal("expected a secret key (nsec1...), got a public key (npub1...)", err)
    _, err = keys.parse_npub(NSEC)
    assert.matches("got a secret key %(nsec1...%)", err)
    assert.is_nil(err:find(NSEC:sub(6, 20), 1, true))
    local typo = NSEC:sub(1, 30) .. (NSEC:sub(31, 31) == "q" and "p" or "q") .. NSEC:sub(32)
    _, err, code = keys.parse_nsec(typo)
    assert.equal("ECHECKSUM", code)
    assert.equal("nsec checksum is invalid — a typo?", err)
    _, err, code = keys.parse_nsec("nsec1abc")
    assert.equal("ELENGTH", code)
    assert.equal("nsec must be nsec1... (63 characters) or 64 hex characters, got 8 characters",
      err)
    _, err = keys.parse_nsec(NSEC_HEX:sub(1, 63) .. "g")
    assert.equal("nsec has 'g' at position 64, which is not a hex digit", err)
    _, err, code = keys.parse_nsec(("0"):rep(64))
    assert.equal("ECRYPTO", code)
    assert.equal("nsec is not a valid secp256k1 secret key (a typo?)", err)
    _, err = keys.parse_nsec(NSEC_HEX:sub(1, 40))
    assert.equal("nsec must be nsec1... (63 characters) or 64 hex characters, got 40 characters",
      err)
    assert.is_nil(err:find(NSEC_HEX:sub(1, 10), 1, true))
  end)
end)

describe("key files", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(H.cleanup)

  it("writes a secret file: base64, 44 bytes, no newline, mode 0600, parents created", function()
    local secret = keys.generate_secret()
    local path = dir .. "/a/b/server.key"
    assert.is_true(keys.write_secret_file(path, secret))
    local text = H.read_file(path)
    assert.equal(44, #text)
    assert.matches("^[%w+/]+=$", text)
    assert.equal(secret, core.base64_decode(text))
    assert.equal(tonumber("600", 8), mode_of(path))
    assert.equal(tonumber("700", 8), mode_of(dir .. "/a/b"))
    assert.equal(secret, keys.load_secret_file(path))
  end)

  it("refuses to overwrite without force and replaces atomically with it", function()
    local path = dir .. "/server.key"
    local first, second = keys.generate_secret(), keys.generate_secret()
    assert.is_true(keys.write_secret_file(path, first))
    local ok, err = keys.write_secret_file(path, second)
    assert.is_nil(ok)
    assert.equal(path .. " already exists; use --force to overwrite", err)
    ok, err = keys.write_secret_file(path, second, { force = false })
    assert.is_nil(ok)
    assert.matches("already exists", err)
    assert.equal(first, keys.load_secret_file(path))

    -- With force the old file (even one with loose permissions) is replaced by a 0600 one.
    assert(uv.fs_chmod(path, tonumber("644", 8)))
    assert.is_true(keys.write_secret_file(path, second, { force = true }))
    assert.equal(second, keys.load_secret_file(path))
    assert.equal(tonumber("600", 8), mode_of(path))
    assert.same({ "server.key" }, files_in(dir)) -- no temporary file left behind
    -- force also creates a file that does not exist yet.
    assert.is_true(keys.write_secret_file(dir .. "/new.key", first, { force = true }))
    assert.equal(first, keys.load_secret_file(dir .. "/new.key"))
  end)

  it("reports write failures", function()
    H.write_file(dir .. "/file", "x")
    local ok, err = keys.write_secret_file(dir .. "/file/sub/k", keys.generate_secret())
    assert.is_nil(ok)
    assert.matches("cannot create directory .*/file: a file of that name exists", err)
    ok, err = keys.write_secret_file(dir, keys.generate_secret(), { force = true })
    assert.is_nil(ok)
    assert.matches("it is a directory", err)
  end)

  it("loads secrets as base64 or hex, trimming whitespace", function()
    local secret = keys.generate_secret()
    assert.equal(secret, keys.load_secret("  " .. core.base64_encode(secret) .. "\r\n"))
    assert.equal(secret, keys.load_secret(core.hex_encode(secret)))
    H.write_file(dir .. "/k", core.hex_encode(secret):upper() .. "\n", tonumber("600", 8))
    assert.equal(secret, keys.load_secret_file(dir .. "/k"))
  end)

  it("names the problem with a bad secret file and never shows its content", function()
    local p = dir .. "/k"
    local short = core.base64_encode(("s"):rep(31))
    H.write_file(p, short, tonumber("600", 8))
    local s, err = keys.load_secret_file(p)
    assert.is_nil(s)
    assert.equal("secret file " .. p .. " holds 31 bytes, expected 32", err)
    assert.is_nil(err:find(short, 1, true))

    H.write_file(p, "not a key at all!", tonumber("600", 8))
    s, err = keys.load_secret_file(p)
    assert.is_nil(s)
    assert.equal("secret file " .. p .. " is not valid base64 or hex", err)

    H.write_file(p, "\n  \n", tonumber("600", 8))
    s, err = keys.load_secret_file(p)
    assert.is_nil(s)
    assert.equal("secret file " .. p .. " is empty", err)

    s, err = keys.load_secret_file(dir .. "/missing")
    assert.is_nil(s)
    assert.equal("cannot read secret file " .. dir .. "/missing: no such file or directory", err)

    s, err = keys.load_secret_file(dir)
    assert.is_nil(s)
    assert.matches("it is a directory", err)

    s, err = keys.load_secret("abc")
    assert.is_nil(s)
    assert.equal("secret is not valid base64 or hex", err)
  end)

  it("writes and reads nsec files", function()
    local sk = keys.generate_nostr_secret()
    local p = dir .. "/x/nostr.nsec"
    assert.is_true(keys.write_nsec_file(p, sk))
    local text = H.read_file(p)
    assert.equal(keys.nsec(sk), text)
    assert.equal(63, #text)
    assert.equal(tonumber("600", 8), mode_of(p))
    assert.equal(sk, keys.load_nsec_file(p))
    local ok, err = keys.write_nsec_file(p, keys.generate_nostr_secret())
    assert.is_nil(ok)
    assert.equal(p .. " already exists; use --force to overwrite", err)
    local other = keys.generate_nostr_secret()
    assert.is_true(keys.write_nsec_file(p, other, { force = true }))
    assert.equal(other, keys.load_nsec_file(p))

    H.write_file(p, "\n" .. core.hex_encode(sk) .. "\n", tonumber("600", 8))
    assert.equal(sk, keys.load_nsec_file(p))
    H.write_file(p, keys.npub(assert(keys.nostr_public(sk))), tonumber("600", 8))
    local r, lerr = keys.load_nsec_file(p)
    assert.is_nil(r)
    assert.equal("nsec file " .. p .. ": expected a secret key (nsec1...), got a public key "
      .. "(npub1...)", lerr)
  end)
end)

describe("token files", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(H.cleanup)

  local T1, T2, T3 = "iABCDEF1234567890k", "iAAAAAAAAAAAAAAAAA", "i0123456789abcdef5"

  it("loads every token, ignoring comments, blank lines and duplicates", function()
    local p = H.write_file(dir .. "/tokens", table.concat({
      "# tokens for the lab",
      "",
      T1,
      "   " .. T2 .. "   # alice's laptop",
      "\t",
      T3 .. "#no space before the comment\r",
      T1 .. " # again",
      "   # indented comment",
    }, "\n"), tonumber("600", 8))
    assert.same({ T1, T2, T3 }, keys.load_tokens_file(p))
  end)

  it("returns an empty list for a file with only comments", function()
    local p = H.write_file(dir .. "/tokens", "# nothing yet\n\n", tonumber("600", 8))
    assert.same({}, keys.load_tokens_file(p))
  end)

  it("fails on an invalid entry with path:line and the reason", function()
    local p = H.write_file(dir .. "/tokens",
      "# c\n" .. T1 .. "\n\n" .. T2:sub(1, 17) .. "B # typo\n" .. T3 .. "\n",
      tonumber("600", 8))
    local list, err = keys.load_tokens_file(p)
    assert.is_nil(list)
    assert.equal(p .. ":4: token checksum is invalid — a typo?", err)

    H.write_file(p, T1 .. "\nshort\n")
    list, err = keys.load_tokens_file(p)
    assert.is_nil(list)
    assert.equal(p .. ":2: token must be 18 characters, got 5", err)

    list, err = keys.load_tokens_file(dir .. "/none")
    assert.is_nil(list)
    assert.equal("cannot read tokens file " .. dir .. "/none: no such file or directory", err)
  end)

  it("gives a client the first valid token", function()
    local p = H.write_file(dir .. "/token", "# mine\n\n  " .. T2 .. "  # home\n" .. T1 .. "\n",
      tonumber("600", 8))
    assert.equal(T2, keys.load_token_file(p))
    H.write_file(p, "oops\n" .. T3 .. "\n")
    assert.equal(T3, keys.load_token_file(p))
  end)

  it("explains a client token file without a valid token", function()
    local p = H.write_file(dir .. "/token", "# nothing\n", tonumber("600", 8))
    local tok, err = keys.load_token_file(p)
    assert.is_nil(tok)
    assert.matches("^no token in " .. p:gsub("%p", "%%%0") .. ": expected a line like", err)
    H.write_file(p, "\n" .. T1:sub(1, 17) .. "x\n")
    tok, err = keys.load_token_file(p)
    assert.is_nil(tok)
    assert.equal("no valid token in " .. p .. " (" .. p .. ":2: token checksum is invalid — "
      .. "a typo?)", err)
  end)
end)
