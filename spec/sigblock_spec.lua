-- tunnel.sigblock: the manual-mode OFFER / ANSWER / REJECT blocks, their checks and the reader.
local sb = require "tunnel.sigblock"
local core = require "tunnel.core.keys"
local cjson = require "cjson"

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local SERVER = { "offer" }
local CLIENT = { "answer", "reject" }

local function offer_fields()
  return {
    ufrag = "Xy7q",
    pwd = "abcdefghij0123456789+/",
    candidates = {
      "candidate:1 1 udp 2130706431 192.168.1.10 50000 typ host",
      "candidate:2 1 udp 1694498815 203.0.113.7 61000 typ srflx raddr 192.168.1.10 rport 50000",
      "candidate:3 1 udp 2130706175 fe80::1 50001 typ host",
    },
    source = "tcp://127.0.0.1:22",
    client_id = "ae5xq7bkzcrwk3mmy4ipyjm7l5qwzfhu6fsfe3wa6pq2l7fqsd5a",
    token = "iAbCdEfGhIjKlMnOpQ",
    session = "0123456789abcdef",
  }
end

local function answer_fields()
  return {
    ufrag = "srvU",
    pwd = "ZZZZZZZZZZZZZZZZZZZZZZZZ",
    candidates = { "candidate:9 1 udp 2130706431 10.0.0.2 40000 typ host" },
    server_id = "qnkz2bdwwfb3c5o7x2v6zrf5yq4xgkh2nrjtwlybu2a7mvx3y6aq",
    session = "0123456789abcdef",
  }
end

local function reject_fields()
  return { session = "0123456789abcdef", reason = "source tcp://127.0.0.1:22 is not allowed" }
end

local function lines_of(text)
  local t = {}
  for l in text:gmatch("([^\n]*)\n") do
    t[#t + 1] = l
  end
  return t
end

local function pack32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

-- A block around arbitrary bytes; `crc` = false leaves the checksum out of step.
local function raw_block(label, data, crc)
  local bytes = data .. (crc == false and "\0\0\0\0" or pack32(sb.crc32(data)))
  local b64 = core.base64_encode(bytes)
  local out = { "-----BEGIN TUNNEL " .. label .. "-----" }
  for i = 1, #b64, 76 do
    out[#out + 1] = b64:sub(i, i + 75)
  end
  out[#out + 1] = "-----END TUNNEL " .. label .. "-----"
  return table.concat(out, "\n") .. "\n"
end

-- A raw block whose payload is the given table, encoded with cjson (no key order needed).
local function json_block(label, t, version)
  return raw_block(label, string.char(version or 1) .. cjson.encode(t))
end

local function fails(text, expect)
  local f, err, kind = sb.decode(text, expect)
  assert.is_nil(f)
  assert.is_string(err)
  assert.is_string(kind)
  return err, kind
end

describe("tunnel.sigblock", function()
  describe("crc32", function()
    it("is the IEEE CRC-32", function()
      assert.are.equal(0xCBF43926, sb.crc32("123456789"))
      assert.are.equal(0, sb.crc32(""))
      assert.are.equal(0x414FA339, sb.crc32("The quick brown fox jumps over the lazy dog"))
    end)
  end)

  describe("encode", function()
    it("writes the documented layout", function()
      local text = sb.encode("offer", offer_fields())
      local lines = lines_of(text)
      assert.are.equal("-----BEGIN TUNNEL OFFER-----", lines[1])
      assert.are.equal("-----END TUNNEL OFFER-----", lines[#lines])
      assert.are.equal("\n", text:sub(-1))
      local body = table.concat(lines, "", 2, #lines - 1)
      for i = 2, #lines - 1 do
        assert.is_true(#lines[i] <= 76)
        if i < #lines - 1 then
          assert.are.equal(76, #lines[i])
        end
        assert.is_nil(lines[i]:find("[^A-Za-z0-9+/=]"))
      end
      local data = assert(core.base64_decode(body))
      assert.are.equal(1, data:byte(1))
      local payload = data:sub(2, -5)
      assert.are.equal(pack32(sb.crc32(data:sub(1, -5))), data:sub(-4))
      -- Keys sorted, "kind" inside, no spaces.
      assert.are.equal('{"candidates":["candidate:1 1 udp 2130706431 192.168.1.10 50000 typ host",'
        .. '"candidate:2 1 udp 1694498815 203.0.113.7 61000 typ srflx raddr 192.168.1.10 rport '
        .. '50000","candidate:3 1 udp 2130706175 fe80::1 50001 typ host"],"client_id":'
        .. '"ae5xq7bkzcrwk3mmy4ipyjm7l5qwzfhu6fsfe3wa6pq2l7fqsd5a","kind":"offer",'
        .. '"pwd":"abcdefghij0123456789+\\/","session":"0123456789abcdef",'
        .. '"source":"tcp:\\/\\/127.0.0.1:22","token":"iAbCdEfGhIjKlMnOpQ","ufrag":"Xy7q"}',
        payload)
    end)

    it("is deterministic whatever the table's insertion order", function()
      local a = sb.encode("answer", answer_fields())
      local f = answer_fields()
      local g = {}
      for _, k in ipairs({ "session", "server_id", "pwd", "ufrag", "candidates" }) do
        g[k] = f[k]
      end
      assert.are.equal(a, sb.encode("answer", g))
      assert.are.equal(a, sb.encode("answer", answer_fields()))
    end)

    it("keeps every line within 76 columns for the largest blocks", function()
      local f = offer_fields()
      f.candidates = {}
      for i = 1, 32 do
        f.candidates[i] = ("/"):rep(190) .. string.format("%10d", i)
      end
      f.ufrag, f.pwd = ("u"):rep(256), ("/"):rep(256)
      f.source = "udp://" .. ("a"):rep(60) .. "." .. ("b"):rep(60) .. ".example:53"
      f.token = ('"'):rep(64)
      local text = sb.encode("offer", f)
      for _, l in ipairs(lines_of(text)) do
        assert.is_true(#l <= 76)
      end
      assert.is_true(#text < sb.MAX_SIZE)
      assert.are.same(f.candidates, assert(sb.decode(text, SERVER)).candidates)
    end)

    it("refuses misuse with a message naming the field", function()
      local function enc_err(kind, fields)
        local ok, err = pcall(function()
          sb.encode(kind, fields) -- not a tail call, so the error names this line
        end)
        assert.is_false(ok)
        return err
      end
      assert.matches("kind must be 'offer', 'answer' or 'reject', got 'nope'",
        enc_err("nope", {}), 1, true)
      assert.matches("fields must be a table", enc_err("offer", "x"), 1, true)
      local f = offer_fields()
      f.server_id = answer_fields().server_id
      assert.matches("unknown field 'server_id' for an offer", enc_err("offer", f), 1, true)
      f = offer_fields()
      f.kind = "answer"
      assert.matches("fields.kind is 'answer' but kind is 'offer'", enc_err("offer", f), 1, true)
      local cases = {
        { "offer", "ufrag", "abc", "must be 4 to 256 characters long, got 3" },
        { "offer", "ufrag", "ab-cd", "has '-' at position 3" },
        { "offer", "pwd", ("a"):rep(21), "must be 22 to 256 characters long, got 21" },
        { "offer", "pwd", ("a"):rep(257), "got 257" },
        { "offer", "candidates", {}, "must hold 1 to 32 candidates, got 0" },
        { "offer", "candidates", "x", "must be an array of strings, got string" },
        { "offer", "candidates", { a = "x" }, "it has the key 'a'" },
        { "offer", "candidates", { ("c"):rep(201) }, "entry 1 must be 1 to 200 characters" },
        { "offer", "candidates", { "ok", "bad\n" }, "entry 2 has byte 0x0a at position 4" },
        { "offer", "source", "ssh://h:22", "is not a valid 'tcp://host:port'" },
        { "offer", "source", "tcp://h", "is not a valid 'tcp://host:port'" },
        { "offer", "source", "tcp://h :22", "without spaces" },
        { "offer", "client_id", ("a"):rep(51), "52 base32 characters, got 51" },
        { "offer", "client_id", ("a"):rep(51) .. "1", "has '1' at position 52" },
        { "offer", "client_id", ("A"):rep(52), "has 'A' at position 1" },
        { "offer", "token", ("t"):rep(65), "at most 64 characters long, got 65" },
        { "offer", "token", "t\27", "has byte 0x1b at position 2" },
        { "offer", "session", "0123456789ABCDEF", "16 lowercase hex characters" },
        { "offer", "session", "012345", "16 lowercase hex characters" },
        { "answer", "server_id", 5, "must be a string, got number" },
        { "reject", "reason", "", "must be 1 to 512 bytes long, got 0" },
        { "reject", "reason", ("r"):rep(513), "got 513" },
        { "reject", "reason", "a\27[31mred", "control character (U+001B) at position 2" },
        { "reject", "reason", "a\194\155b", "control character (U+009B) at position 2" },
        { "reject", "reason", "x\226\128\174y", "control character (U+202E)" },
        { "reject", "reason", "a\255", "not valid UTF-8 (byte 0xff at position 2)" },
        { "reject", "reason", "a\192\129", "not valid UTF-8" },
        { "reject", "reason", "a\237\160\128", "bad character at position 2" },
        { "reject", "reason", "caf\195", "cut-off character at position 4" },
      }
      local base = { offer = offer_fields, answer = answer_fields, reject = reject_fields }
      for _, c in ipairs(cases) do
        local kind, field, value, want = c[1], c[2], c[3], c[4]
        local t = base[kind]()
        t[field] = value
        local err = enc_err(kind, t)
        assert.matches("sigblock_spec.lua:%d+: sigblock.encode: " .. kind .. " field '" .. field
          .. "' ", err)
        assert.matches(want, err, 1, true)
      end
      for _, kind in ipairs({ "offer", "answer", "reject" }) do
        local t = base[kind]()
        t.session = nil
        assert.matches(kind .. " field 'session' is missing", enc_err(kind, t), 1, true)
      end
    end)

    it("treats the token as optional and accepts UTF-8 reasons", function()
      local f = offer_fields()
      f.token = nil
      local d = assert(sb.decode(sb.encode("offer", f), SERVER))
      assert.is_nil(d.token)
      f.token = ""
      assert.are.equal("", assert(sb.decode(sb.encode("offer", f), SERVER)).token)
      local r = reject_fields()
      r.reason = "Quelle refusée : tcp://10.0.0.1:22 — ☃ 𝄞"
      assert.are.equal(r.reason, assert(sb.decode(sb.encode("reject", r), CLIENT)).reason)
    end)
  end)

  describe("decode", function()
    it("round-trips every kind", function()
      for kind, make in pairs({ offer = offer_fields, answer = answer_fields,
        reject = reject_fields }) do
        local f = make()
        local d = assert(sb.decode(sb.encode(kind, f), { kind }))
        f.kind = kind
        assert.are.same(f, d)
        -- The decoded table encodes to the same text.
        assert.are.equal(sb.encode(kind, make()), sb.encode(kind, d))
      end
    end)

    it("accepts expect as a list, a set, one kind or nil", function()
      local text = sb.encode("reject", reject_fields())
      assert.are.equal("reject", assert(sb.decode(text, CLIENT)).kind)
      assert.are.equal("reject", assert(sb.decode(text, { reject = true })).kind)
      assert.are.equal("role", select(3, sb.decode(text, { reject = false, offer = true })))
      assert.are.equal("reject", assert(sb.decode(text, "reject")).kind)
      assert.are.equal("reject", assert(sb.decode(text)).kind)
      assert.has_error(function() sb.decode(text, { "offr" }) end)
      assert.has_error(function() sb.decode(text, {}) end)
      assert.has_error(function() sb.decode(text, 5) end)
      assert.has_error(function() sb.decode(nil, SERVER) end)
    end)

    it("tolerates prompts, CRLF, indentation, quoting, spaces and joined lines", function()
      local text = sb.encode("offer", offer_fields())
      local want = assert(sb.decode(text, SERVER))
      local variants = {
        "user@host:~$ tunnel client manual --source tcp://127.0.0.1:22\n\n" .. text
          .. "user@host:~$ \n",
        (text:gsub("\n", "\r\n")),
        (text:gsub("\n", "\n    ")),
        "> " .. text:gsub("\n", "\n> "),
        "> > " .. text:gsub("\n", "\n> > "),
        (text:gsub("([A-Za-z0-9+/=])\n", "%1   \t\n")),
        (text:gsub("\n", " ")),
        (text:gsub("\n", "")),
        (text:gsub("(\n)", "%1\n")), -- blank lines everywhere
        -- Loose markers: other dash counts, spaces, any case.
        (text:gsub("^[^\n]*", "--- begin  tunnel offer ---"):gsub(
          "%-%-%-%-%-END TUNNEL OFFER%-%-%-%-%-", "-----End Tunnel Offer-----")),
        (text:gsub("%-%-%-%-%-", "-------")),
        text .. "\nanything after the END line\n" .. sb.encode("answer", answer_fields()),
      }
      for i, v in ipairs(variants) do
        local d, err = sb.decode(v, SERVER)
        assert.is_nil(err, "variant " .. i)
        assert.are.same(want, d, "variant " .. i)
      end
    end)

    it("says what to paste when there is no BEGIN line", function()
      assert.are.equal("no '-----BEGIN TUNNEL OFFER-----' line found: paste the whole block the "
        .. "client printed, from BEGIN to END", (fails("", SERVER)))
      assert.are.equal("no '-----BEGIN TUNNEL ANSWER-----' line found: paste the whole block the "
        .. "server printed, from BEGIN to END", (fails("hello\nworld", CLIENT)))
      local _, kind = fails("just text", SERVER)
      assert.are.equal("nobegin", kind)
    end)

    it("refuses a block meant for the other role", function()
      local err, kind = fails(sb.encode("answer", answer_fields()), SERVER)
      assert.are.equal("role", kind)
      assert.are.equal("this is an ANSWER block, printed by a server: paste it into the client, "
        .. "and paste the client's OFFER here", err)
      err = fails(sb.encode("reject", reject_fields()), SERVER)
      assert.are.equal("this is a REJECT block, printed by a server: paste it into the client, "
        .. "and paste the client's OFFER here", err)
      err = fails(sb.encode("offer", offer_fields()), CLIENT)
      assert.are.equal("this is an OFFER block, printed by a client: paste it into the server, "
        .. "and paste the server's ANSWER here", err)
    end)

    it("detects a block cut off at any line", function()
      local text = sb.encode("offer", offer_fields())
      local lines = lines_of(text)
      for n = 1, #lines - 1 do
        local cut = table.concat(lines, "\n", 1, n) .. "\n"
        local err, kind = fails(cut, SERVER)
        assert.are.equal("truncated", kind)
        assert.are.equal("the OFFER block ends before its END line: it was cut off while copying; "
          .. "paste it again in full", err)
      end
      -- Cut at the top: only the END line is left of the frame.
      for n = 2, #lines do
        local err, kind = fails(table.concat(lines, "\n", n) .. "\n", SERVER)
        assert.are.equal("truncated", kind)
        assert.matches("found '-----END TUNNEL OFFER-----' but no BEGIN line before it: the start "
          .. "of the block was cut off", err, 1, true)
      end
      -- One line lost in the middle.
      for n = 2, #lines - 1 do
        local t = {}
        for i, l in ipairs(lines) do
          if i ~= n then
            t[#t + 1] = l
          end
        end
        local _, kind = fails(table.concat(t, "\n"), SERVER)
        assert.is_truthy(kind == "base64" or kind == "checksum" or kind == "empty", kind)
      end
    end)

    it("refuses an END line of another kind", function()
      local text = sb.encode("offer", offer_fields()):gsub("END TUNNEL OFFER", "END TUNNEL ANSWER")
      local err, kind = fails(text, SERVER)
      assert.are.equal("mismatch", kind)
      assert.are.equal("the block starts with '-----BEGIN TUNNEL OFFER-----' but ends with "
        .. "'-----END TUNNEL ANSWER-----': parts of two blocks were mixed while copying; paste "
        .. "one block in full", err)
    end)

    it("refuses an empty block", function()
      local err, kind = fails("-----BEGIN TUNNEL OFFER-----\n\n-----END TUNNEL OFFER-----",
        SERVER)
      assert.are.equal("empty", kind)
      assert.matches("nothing between its BEGIN and END lines", err, 1, true)
    end)

    it("names the line and column of a character that is not base64", function()
      local lines = lines_of(sb.encode("offer", offer_fields()))
      lines[3] = "  " .. lines[3]:sub(1, 9) .. "*" .. lines[3]:sub(11)
      local err, kind = fails(table.concat(lines, "\n"), SERVER)
      assert.are.equal("base64", kind)
      assert.are.equal("line 2 of the OFFER block (after BEGIN), column 12: '*' is not a base64 "
        .. "character: the block was changed while copying; paste it again exactly as printed", err)
      lines = lines_of(sb.encode("offer", offer_fields()))
      lines[2] = lines[2]:sub(1, 5) .. "\1" .. lines[2]:sub(6)
      err = fails(table.concat(lines, "\n"), SERVER)
      assert.matches("line 1 of the OFFER block (after BEGIN), column 6: byte 0x01 is not", err,
        1, true)
    end)

    it("reports lost characters and bad padding as base64 errors", function()
      local lines = lines_of(sb.encode("offer", offer_fields()))
      lines[2] = lines[2]:sub(2)
      local err, kind = fails(table.concat(lines, "\n"), SERVER)
      assert.are.equal("base64", kind)
      assert.matches("base64 characters, which is not a multiple of 4: characters were lost or "
        .. "added while copying", err, 1, true)
      lines = lines_of(sb.encode("offer", offer_fields()))
      lines[2] = "AA==" .. lines[2]:sub(5)
      err, kind = fails(table.concat(lines, "\n"), SERVER)
      assert.are.equal("base64", kind)
      assert.matches("not valid base64", err, 1, true)
    end)

    it("reports a checksum mismatch", function()
      local err, kind = fails(raw_block("OFFER", "\1" .. cjson.encode(offer_fields()), false),
        SERVER)
      assert.are.equal("checksum", kind)
      assert.are.equal("the block is damaged (checksum mismatch): a character was changed or lost "
        .. "while copying; paste it again exactly as printed", err)
      local _, k = fails("-----BEGIN TUNNEL OFFER-----\nAAAA\n-----END TUNNEL OFFER-----", SERVER)
      assert.are.equal("checksum", k)
    end)

    it("refuses other format versions", function()
      local f = offer_fields()
      f.kind = "offer"
      local err, kind = fails(json_block("OFFER", f, 2), SERVER)
      assert.are.equal("version", kind)
      assert.are.equal("this block was made by a newer version of tunnel (format 2; this one "
        .. "reads format 1): use the same version on both sides", err)
      err = fails(json_block("OFFER", f, 0), SERVER)
      assert.are.equal("this block was made by an older version of tunnel (format 0; this one "
        .. "reads format 1): use the same version on both sides", err)
    end)

    it("refuses blocks of other tools and unknown kinds", function()
      local text = sb.encode("offer", offer_fields())
      local err, kind = fails((text:gsub("TUNNEL OFFER", "TUNNEL-RS MANUAL OFFER")), SERVER)
      assert.are.equal("foreign", kind)
      assert.matches("was printed by tunnel-rs, whose format this tunnel does not read", err, 1,
        true)
      err = fails((text:gsub("TUNNEL OFFER", "TUNNEL REQUEST")), SERVER)
      assert.matches("'-----BEGIN TUNNEL REQUEST-----' is not a block this version of tunnel "
        .. "knows", err, 1, true)
      err = fails("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", SERVER)
      assert.are.equal("'-----BEGIN CERTIFICATE-----' starts some other kind of text, not a "
        .. "tunnel block: paste the client's OFFER, from '-----BEGIN TUNNEL OFFER-----' to its "
        .. "END line", err)
      -- A label from the input is shown clipped and without control characters.
      err = fails("-----BEGIN \27[31m" .. ("X"):rep(500) .. "-----\n", SERVER)
      assert.is_nil(err:find("[^\32-\126]"))
      assert.is_true(#err < 300)
      assert.matches("'-----BEGIN ?[31MXXX", err, 1, true)
    end)

    it("checks the payload: JSON object, kind, fields", function()
      local err, kind = fails(raw_block("OFFER", "\1not json"), SERVER)
      assert.are.equal("payload", kind)
      assert.matches("not a JSON object although its checksum is right", err, 1, true)
      for _, payload in ipairs({ "[1,2]", '"offer"', "null", '{"kind":"offer"} x' }) do
        local e, k = fails(raw_block("OFFER", "\1" .. payload), SERVER)
        assert.are.equal("payload", k, payload)
        assert.matches("not a JSON object", e, 1, true)
      end
      local f = offer_fields()
      err, kind = fails(json_block("OFFER", f), SERVER)
      assert.are.equal("payload", kind)
      assert.matches("do not say whether it is an offer, an answer or a reject", err, 1, true)
      f.kind = "answer"
      err, kind = fails(json_block("OFFER", f), SERVER)
      assert.are.equal("mismatch", kind)
      assert.are.equal("the block's BEGIN line says OFFER but its contents are an ANSWER: the "
        .. "BEGIN and END lines were edited; paste the block exactly as printed", err)
      f.kind = "offer"
      f.session = "XYZ"
      err, kind = fails(json_block("OFFER", f), SERVER)
      assert.are.equal("field", kind)
      assert.are.equal("the OFFER's field 'session' must be 16 lowercase hex characters, got "
        .. "'XYZ': the block was not made by a matching tunnel; use the same version on both "
        .. "sides", err)
      f.session = nil
      err = fails(json_block("OFFER", f), SERVER)
      assert.matches("the OFFER's field 'session' is missing", err, 1, true)
      f = offer_fields()
      f.kind, f.candidates = "offer", { x = "y" }
      err = fails(json_block("OFFER", f), SERVER)
      assert.matches("field 'candidates' must be an array of strings", err, 1, true)
      local r = reject_fields()
      r.kind, r.reason = "reject", "\27]0;owned\7"
      err = fails(json_block("REJECT", r), CLIENT)
      assert.matches("field 'reason' has a control character (U+001B)", err, 1, true)
    end)

    it("ignores unknown payload keys", function()
      local f = answer_fields()
      f.kind, f.future = "answer", { nested = true }
      f.relay = "https://relay.example"
      local d = assert(sb.decode(json_block("ANSWER", f), CLIENT))
      assert.is_nil(d.future)
      assert.is_nil(d.relay)
      local want = answer_fields()
      want.kind = "answer"
      assert.are.same(want, d)
    end)

    it("refuses a huge block", function()
      local big = "-----BEGIN TUNNEL OFFER-----\n" .. (("A"):rep(76) .. "\n"):rep(900)
        .. "-----END TUNNEL OFFER-----\n"
      local err, kind = fails(big, SERVER)
      assert.are.equal("toolarge", kind)
      assert.matches("larger than 64 KiB", err, 1, true)
    end)

    it("detects every one-character change in the body", function()
      local text = sb.encode("offer", offer_fields())
      local lines = lines_of(text)
      local alphabet = B64 .. "="
      local tried = 0
      for li = 2, #lines - 1 do
        local l = lines[li]
        for pos = 1, #l do
          for ci = 1, #alphabet do
            local c = alphabet:sub(ci, ci)
            if c ~= l:sub(pos, pos) then
              local copy = { unpack(lines) }
              copy[li] = l:sub(1, pos - 1) .. c .. l:sub(pos + 1)
              local f, err = sb.decode(table.concat(copy, "\n"), SERVER)
              if f ~= nil then
                error(string.format("line %d pos %d -> %s decoded", li, pos, c))
              end
              assert(type(err) == "string")
              tried = tried + 1
            end
          end
          -- A lost character too.
          local copy = { unpack(lines) }
          copy[li] = l:sub(1, pos - 1) .. l:sub(pos + 1)
          assert.is_nil((sb.decode(table.concat(copy, "\n"), SERVER)))
        end
      end
      assert.is_true(tried > 64 * 300)
    end)

    it("never throws on random input and never returns a wrong block", function()
      math.randomseed(20240611)
      local rnd = math.random
      local good = sb.encode("answer", answer_fields())
      local want = assert(sb.decode(good, CLIENT))
      local pieces = { "-----BEGIN TUNNEL ANSWER-----", "-----END TUNNEL ANSWER-----",
        "-----BEGIN TUNNEL OFFER-----", "-----END TUNNEL REJECT-----", "\n", "\r\n", "> ", "=",
        "AAAA", "-----", "BEGIN", "TUNNEL", " " }
      local function random_text()
        local t = {}
        for _ = 1, rnd(0, 40) do
          local r = rnd(1, 3)
          if r == 1 then
            t[#t + 1] = pieces[rnd(#pieces)]
          elseif r == 2 then
            local i = rnd(1, #B64)
            t[#t + 1] = B64:sub(i, i):rep(rnd(1, 80))
          else
            t[#t + 1] = string.char(rnd(0, 255))
          end
        end
        return table.concat(t)
      end
      local function mutate(s)
        for _ = 1, rnd(1, 4) do
          local p = rnd(1, #s)
          local r = rnd(1, 4)
          if r == 1 then
            s = s:sub(1, p - 1) .. string.char(rnd(0, 255)) .. s:sub(p + 1)
          elseif r == 2 then
            s = s:sub(1, p - 1) .. s:sub(p + 1)
          elseif r == 3 then
            s = s:sub(1, p) .. pieces[rnd(#pieces)] .. s:sub(p + 1)
          else
            local q = rnd(p, math.min(#s, p + 100))
            s = s:sub(1, p - 1) .. s:sub(q + 1)
          end
        end
        return s
      end
      for i = 1, 3000 do
        local input = (i % 2 == 0) and random_text() or mutate(good)
        local ok, f, err, kind = pcall(sb.decode, input, CLIENT)
        assert(ok, f)
        if f then
          -- Only edits outside the block's content (whitespace, junk) may still decode.
          assert.are.same(want, f)
        else
          assert(type(err) == "string" and type(kind) == "string", "bad error values")
        end
      end
    end)
  end)

  describe("reader", function()
    local function collect(expect, opts)
      local got = { blocks = {}, errors = {}, kinds = {} }
      opts = opts or {}
      opts.on_error = function(err, kind)
        got.errors[#got.errors + 1] = err
        got.kinds[#got.kinds + 1] = kind
      end
      got.r = sb.reader(expect, function(f)
        got.blocks[#got.blocks + 1] = f
      end, opts)
      return got
    end

    local function feed_bytes(r, s)
      for i = 1, #s do
        r:feed(s:sub(i, i))
      end
    end

    it("reads a block fed one byte at a time, with CRLF and junk before it", function()
      local g = collect(SERVER)
      local text = sb.encode("offer", offer_fields())
      feed_bytes(g.r, "$ tunnel client manual\r\nsome junk\r\n\r\n" .. text:gsub("\n", "\r\n"))
      assert.are.equal(1, #g.blocks)
      assert.are.equal(0, #g.errors)
      assert.are.same(assert(sb.decode(text, SERVER)), g.blocks[1])
      assert.is_true(g.r:finish())
    end)

    it("accepts the END line without a final newline", function()
      local g = collect(CLIENT)
      local text = sb.encode("answer", answer_fields())
      g.r:feed(text:sub(1, -2))
      assert.are.equal(1, #g.blocks)
      g.r:feed("\n")
      assert.are.equal(1, #g.blocks)
      assert.are.equal(0, #g.errors)
      assert.is_true(g.r:finish())
    end)

    it("delivers two blocks in a row, in any chunking", function()
      local text = sb.encode("answer", answer_fields()) .. sb.encode("reject", reject_fields())
      math.randomseed(7)
      for _ = 1, 50 do
        local g = collect(CLIENT)
        local pos = 1
        while pos <= #text do
          local n = math.random(1, 40)
          g.r:feed(text:sub(pos, pos + n - 1))
          pos = pos + n
        end
        assert.are.equal(2, #g.blocks)
        assert.are.equal("answer", g.blocks[1].kind)
        assert.are.equal("reject", g.blocks[2].kind)
        assert.are.equal(0, #g.errors)
      end
    end)

    it("reports a bad block and then reads a good one", function()
      local g = collect(SERVER)
      local good = sb.encode("offer", offer_fields())
      local bad = good:gsub("\n([A-Za-z0-9+/])", "\n%1%1", 1)
      g.r:feed(bad)
      assert.are.equal(0, #g.blocks)
      assert.are.same({ "base64" }, g.kinds)
      g.r:feed(good)
      assert.are.equal(1, #g.blocks)
      assert.are.equal(1, #g.errors)
      assert.is_true(g.r:finish())
    end)

    it("reports a wrong-role block once and then reads the right one", function()
      local g = collect(SERVER)
      g.r:feed(sb.encode("answer", answer_fields()))
      assert.are.same({ "role" }, g.kinds)
      g.r:feed(sb.encode("offer", offer_fields()))
      assert.are.same({ "role" }, g.kinds)
      assert.are.equal(1, #g.blocks)
    end)

    it("reports a cut-off block when a new BEGIN arrives, and reads the new block", function()
      local g = collect(SERVER)
      local text = sb.encode("offer", offer_fields())
      local lines = lines_of(text)
      g.r:feed(table.concat(lines, "\n", 1, 3) .. "\n")
      g.r:feed(text)
      assert.are.same({ "truncated" }, g.kinds)
      assert.matches("the OFFER block ends before its END line: it was cut off while copying",
        g.errors[1], 1, true)
      assert.are.equal(1, #g.blocks)
    end)

    it("finish() reports a block in progress or no block at all", function()
      local g = collect(SERVER)
      local lines = lines_of(sb.encode("offer", offer_fields()))
      g.r:feed(table.concat(lines, "\n", 1, 2))
      local ok, err, kind = g.r:finish()
      assert.is_nil(ok)
      assert.are.equal("truncated", kind)
      assert.matches("the input ended while it was being pasted", err, 1, true)
      assert.has_error(function() g.r:feed("x") end)

      g = collect(SERVER)
      g.r:feed("nothing here\n")
      ok, err, kind = g.r:finish()
      assert.is_nil(ok)
      assert.are.equal("nobegin", kind)
      assert.are.equal("the input ended before any block was pasted: no '-----BEGIN TUNNEL "
        .. "OFFER-----' line found: paste the whole block the client printed, from BEGIN to END",
        err)

      g = collect(SERVER)
      g.r:feed(sb.encode("answer", answer_fields()))
      ok, err = g.r:finish()
      assert.is_nil(ok)
      assert.matches("before a valid block was pasted (last problem: this is an ANSWER block",
        err, 1, true)
    end)

    it("bounds what it buffers", function()
      local g = collect(SERVER, { max_size = 4096 })
      g.r:feed(("x"):rep(3000))
      g.r:feed(("x"):rep(3000))
      assert.are.same({ "toolarge" }, g.kinds)
      assert.matches("a pasted line is longer than 4 KiB", g.errors[1], 1, true)
      g.r:feed(("x"):rep(10000) .. "\n") -- the rest of that line is dropped silently
      assert.are.equal(1, #g.errors)
      g.r:feed(sb.encode("offer", offer_fields()))
      assert.are.equal(1, #g.blocks)

      g = collect(SERVER, { max_size = 4096 })
      g.r:feed("-----BEGIN TUNNEL OFFER-----\n")
      for _ = 1, 100 do
        g.r:feed(("A"):rep(76) .. "\n")
      end
      assert.are.same({ "toolarge" }, g.kinds)
      g.r:feed("-----END TUNNEL OFFER-----\n")
      assert.are.equal(1, #g.errors) -- the END of the refused block is not a second error
      g.r:feed(sb.encode("offer", offer_fields()))
      assert.are.equal(1, #g.blocks)
    end)

    it("refuses misuse", function()
      assert.has_error(function() sb.reader(SERVER) end)
      assert.has_error(function() sb.reader(SERVER, print, { bogus = 1 }) end)
      assert.has_error(function() sb.reader(SERVER, print, { on_error = 1 }) end)
      assert.has_error(function() sb.reader(SERVER, print, { max_size = 10 }) end)
      assert.has_error(function() sb.reader({ "x" }, print) end)
      local r = sb.reader(SERVER, print)
      assert.has_error(function() r:feed(1) end)
    end)

    it("never throws on random chunks", function()
      math.randomseed(99)
      local good = sb.encode("offer", offer_fields())
      for _ = 1, 300 do
        local n = 0
        local r = sb.reader(SERVER, function() n = n + 1 end, { on_error = function() end })
        for _ = 1, math.random(1, 30) do
          local c = math.random(1, 3)
          if c == 1 then
            r:feed(good:sub(math.random(1, #good), math.random(1, #good)))
          elseif c == 2 then
            local t = {}
            for i = 1, math.random(0, 200) do
              t[i] = string.char(math.random(0, 255))
            end
            r:feed(table.concat(t))
          else
            r:feed(good)
          end
        end
        r:feed(good)
        assert.is_true(n >= 1)
        r:finish()
      end
    end)
  end)

  describe("new_session", function()
    it("gives 16 lowercase hex characters, different each time", function()
      local seen = {}
      for _ = 1, 200 do
        local s = sb.new_session()
        assert.matches("^[0-9a-f]+$", s)
        assert.are.equal(16, #s)
        assert.is_nil(seen[s])
        seen[s] = true
      end
    end)
  end)

  describe("docs/api/tunnel.sigblock.md", function()
    it("shows a block that decodes to the payload it quotes", function()
      local fh = assert(io.open("docs/api/tunnel.sigblock.md"))
      local doc = fh:read("*a")
      fh:close()
      local block = assert(doc:match("(%-%-%-%-%-BEGIN TUNNEL OFFER.-%-%-%-%-%-END TUNNEL "
        .. "OFFER%-%-%-%-%-\n)"))
      local f = assert(sb.decode(block, SERVER))
      assert.are.equal("0123456789abcdef", f.session)
      assert.are.equal(block, sb.encode("offer", f))
      local body = block:match("%-\n(.*)\n%-"):gsub("\n", "")
      local data = assert(core.base64_decode(body))
      assert.matches("the body is " .. #data .. " bytes long", doc, 1, true)
      local crc = data:sub(-4):gsub(".", function(c)
        return string.format("%02x ", c:byte())
      end)
      assert.matches("`" .. crc:sub(1, -2) .. "`", doc, 1, true)
    end)
  end)

  describe("begin_line / end_line", function()
    it("gives the marker lines", function()
      assert.are.equal("-----BEGIN TUNNEL ANSWER-----", sb.begin_line("answer"))
      assert.are.equal("-----END TUNNEL REJECT-----", sb.end_line("reject"))
      assert.has_error(function() sb.begin_line("x") end)
    end)
  end)
end)
