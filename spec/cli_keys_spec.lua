-- The key and token commands, run as a user would: spawning the tunnel binary.
local H = require "helper"
local uv = require "luv"
local bit = require "bit"

local function mode_of(path)
  return bit.band(assert(uv.fs_stat(path)).mode, 511)
end

local ALPHABET_RE = "^i[A-Za-z0-9%-_%.]+$"

describe("tunnel key commands", function()
  local dir
  before_each(function()
    dir = H.tmpdir()
  end)
  after_each(H.cleanup)

  describe("generate-server-key / show-server-id", function()
    it("writes a 0600 key and prints the EndpointId that show-server-id prints", function()
      local key = dir .. "/conf/server.key"
      local p = H.tunnel({ "generate-server-key", "--output", key })
      assert.equal(0, p.code, p.stderr)
      local id = p.stdout:match("^EndpointId: ([a-z2-7]+)\n$")
      assert.is_not_nil(id, p.stdout)
      assert.equal(52, #id)
      assert.equal("", p.stderr)
      assert.equal(tonumber("600", 8), mode_of(key))
      local text = H.read_file(key)
      assert.equal(44, #text)
      assert.matches("^[%w+/]+=$", text)

      local s = H.tunnel({ "show-server-id", "--secret-file", key })
      assert.equal(0, s.code, s.stderr)
      assert.equal(id .. "\n", s.stdout)
      local short = H.tunnel({ "show-server-id", "-s", key })
      assert.equal(id .. "\n", short.stdout)
    end)

    it("refuses to overwrite without --force and replaces the key with it", function()
      local key = dir .. "/server.key"
      local first = H.tunnel({ "generate-server-key", "-o", key })
      assert.equal(0, first.code)
      local before = H.read_file(key)

      local again = H.tunnel({ "generate-server-key", "-o", key })
      assert.equal(1, again.code)
      assert.equal("", again.stdout)
      assert.equal("tunnel: " .. key .. " already exists; use --force to overwrite\n",
        again.stderr)
      assert.equal(before, H.read_file(key))

      local forced = H.tunnel({ "generate-server-key", "-o", key, "--force" })
      assert.equal(0, forced.code, forced.stderr)
      assert.are_not.equal(before, H.read_file(key))
      assert.are_not.equal(first.stdout, forced.stdout)
      assert.equal(tonumber("600", 8), mode_of(key))
      local show = H.tunnel({ "show-server-id", "-s", key })
      assert.equal(forced.stdout, "EndpointId: " .. show.stdout)
    end)

    it("with --output - prints the secret on stdout and the id on stderr", function()
      local p = H.tunnel({ "generate-server-key", "--output", "-" })
      assert.equal(0, p.code, p.stderr)
      local secret = p.stdout:match("^([%w+/]+=)\n$")
      assert.is_not_nil(secret, p.stdout)
      assert.equal(44, #secret)
      local id = p.stderr:match("^EndpointId: ([a-z2-7]+)\n$")
      assert.is_not_nil(id, p.stderr)
      -- The printed secret is the key of the printed id.
      local key = H.write_file(dir .. "/piped.key", p.stdout, tonumber("600", 8))
      assert.equal(id .. "\n", H.tunnel({ "show-server-id", "-s", key }).stdout)
    end)

    it("explains unreadable and malformed secret files, exit 1", function()
      local p = H.tunnel({ "show-server-id", "-s", dir .. "/missing.key" })
      assert.equal(1, p.code)
      assert.equal("", p.stdout)
      assert.equal("tunnel: cannot read secret file " .. dir
        .. "/missing.key: no such file or directory\n", p.stderr)

      local bad = H.write_file(dir .. "/bad.key", "c2hvcnQ=", tonumber("600", 8))
      p = H.tunnel({ "show-server-id", "-s", bad })
      assert.equal(1, p.code)
      assert.equal("tunnel: secret file " .. bad .. " holds 5 bytes, expected 32\n", p.stderr)

      -- The public id where the secret belongs (show-server-id's output saved by mistake).
      local key = dir .. "/real.key"
      assert.equal(0, H.tunnel({ "generate-server-key", "-o", key }).code)
      local id = H.tunnel({ "show-server-id", "-s", key }).stdout
      local idf = H.write_file(dir .. "/id.key", id, tonumber("600", 8))
      p = H.tunnel({ "show-server-id", "-s", idf })
      assert.equal(1, p.code)
      assert.equal("tunnel: secret file " .. idf .. " holds an EndpointId (a public id), not a " ..
        "secret key: give the file written by `tunnel generate-server-key --output FILE`\n",
        p.stderr)
    end)

    it("warns about a secret file other users can read, and still works", function()
      local key = dir .. "/open.key"
      assert.equal(0, H.tunnel({ "generate-server-key", "-o", key }).code)
      assert(uv.fs_chmod(key, tonumber("644", 8)))
      local p = H.tunnel({ "show-server-id", "-s", key })
      assert.equal(0, p.code)
      assert.matches("^[a-z2-7]+\n$", p.stdout)
      assert.matches("can be accessed by other users %(mode 0644%)", p.stderr)
      assert.matches("chmod 600", p.stderr)
    end)

    it("rejects a missing --output as a usage error", function()
      local p = H.tunnel({ "generate-server-key" })
      assert.equal(2, p.code)
      assert.matches("missing option '%-o'", p.stderr)
    end)
  end)

  describe("generate-token", function()
    it("prints one valid token by default", function()
      local p = H.tunnel({ "generate-token" })
      assert.equal(0, p.code, p.stderr)
      local tok = p.stdout:match("^(%S+)\n$")
      assert.is_not_nil(tok)
      assert.equal(18, #tok)
      assert.matches(ALPHABET_RE, tok)
      assert.is_true(require("tunnel.keys").validate_token(tok))
    end)

    it("prints --count distinct tokens, one per line", function()
      local p = H.tunnel({ "generate-token", "--count", "5" })
      assert.equal(0, p.code, p.stderr)
      local seen, n = {}, 0
      for tok in p.stdout:gmatch("([^\n]+)\n") do
        n = n + 1
        assert.is_true(require("tunnel.keys").validate_token(tok))
        assert.is_nil(seen[tok])
        seen[tok] = true
      end
      assert.equal(5, n)
      assert.equal(5 * 19, #p.stdout)
      assert.equal(3, select(2, H.tunnel({ "generate-token", "-c", "3" }).stdout:gsub("\n", "")))
    end)

    it("rejects a bad count", function()
      for _, c in ipairs({ "0", "-1", "1.5", "many" }) do
        local p = H.tunnel({ "generate-token", "--count=" .. c })
        assert.is_true(p.code ~= 0, c)
        assert.equal("", p.stdout)
        assert.matches("count", p.stderr)
      end
    end)
  end)

  describe("generate-nostr-key / show-npub", function()
    it("writes an nsec file (0600) and prints the npub that show-npub prints", function()
      local path = dir .. "/n/nostr.nsec"
      local p = H.tunnel({ "generate-nostr-key", "--output", path })
      assert.equal(0, p.code, p.stderr)
      local npub = p.stdout:match("^npub: (npub1[a-z0-9]+)\n$")
      assert.is_not_nil(npub, p.stdout)
      assert.equal(63, #npub)
      local text = H.read_file(path)
      assert.matches("^nsec1[a-z0-9]+$", text)
      assert.equal(63, #text)
      assert.equal(tonumber("600", 8), mode_of(path))

      local s = H.tunnel({ "show-npub", "--nsec-file", path })
      assert.equal(0, s.code, s.stderr)
      assert.equal(npub .. "\n", s.stdout)
      assert.equal(npub .. "\n", H.tunnel({ "show-npub", "-n", path }).stdout)

      local again = H.tunnel({ "generate-nostr-key", "-o", path })
      assert.equal(1, again.code)
      assert.equal("tunnel: " .. path .. " already exists; use --force to overwrite\n",
        again.stderr)
      assert.equal(text, H.read_file(path))
      assert.equal(0, H.tunnel({ "generate-nostr-key", "-o", path, "--force" }).code)
      assert.are_not.equal(text, H.read_file(path))
    end)

    it("with --output - prints the nsec on stdout and the npub on stderr", function()
      local p = H.tunnel({ "generate-nostr-key", "-o", "-" })
      assert.equal(0, p.code, p.stderr)
      assert.matches("^nsec1[a-z0-9]+\n$", p.stdout)
      local npub = p.stderr:match("^npub: (npub1[a-z0-9]+)\n$")
      assert.is_not_nil(npub, p.stderr)
      local f = H.write_file(dir .. "/k.nsec", p.stdout, tonumber("600", 8))
      assert.equal(npub .. "\n", H.tunnel({ "show-npub", "-n", f }).stdout)
    end)

    it("accepts the NIP-19 example key as bech32 or hex", function()
      local npub = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg\n"
      local a = H.write_file(dir .. "/a",
        "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5\n", tonumber("600", 8))
      local b = H.write_file(dir .. "/b",
        "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa", tonumber("600", 8))
      assert.equal(npub, H.tunnel({ "show-npub", "-n", a }).stdout)
      assert.equal(npub, H.tunnel({ "show-npub", "-n", b }).stdout)
    end)

    it("explains a file holding the wrong kind of key", function()
      local f = H.write_file(dir .. "/pub",
        "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg", tonumber("600", 8))
      local p = H.tunnel({ "show-npub", "-n", f })
      assert.equal(1, p.code)
      assert.equal("", p.stdout)
      assert.equal("tunnel: nsec file " .. f .. ": expected a secret key (nsec1...), got a "
        .. "public key (npub1...)\n", p.stderr)
    end)
  end)
end)
