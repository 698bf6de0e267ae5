-- tunnel.addr: IP, CIDR, host:port, source and URL parsing.
local addr = require "tunnel.addr"

local function ip(s)
  local r, err = addr.parse_ip(s)
  return r and r.text, err
end

describe("tunnel.addr", function()
  describe("parse_ip", function()
    it("parses IPv4 dotted quads", function()
      local r = assert(addr.parse_ip("192.168.1.20"))
      assert.are.equal(4, r.family)
      assert.are.equal("\192\168\1\20", r.bytes)
      assert.are.equal("192.168.1.20", r.text)
      assert.are.equal("0.0.0.0", ip("0.0.0.0"))
      assert.are.equal("255.255.255.255", ip("255.255.255.255"))
    end)

    it("rejects malformed IPv4 and says why", function()
      local _, err = addr.parse_ip("256.1.1.1")
      assert.are.equal("'256.1.1.1' is not an IPv4 address: '256' is greater than 255", err)
      _, err = addr.parse_ip("010.0.0.1")
      assert.are.equal("'010.0.0.1' is not an IPv4 address: '010' has a leading zero", err)
      for _, bad in ipairs({ "1.2.3", "1.2.3.4.5", "1.2.3.", "a.b.c.d", " 1.2.3.4", "1.2.3.4 " }) do
        local r, e = addr.parse_ip(bad)
        assert.is_nil(r, bad)
        assert.matches("is not an IPv4 address", e, 1, true)
      end
      local r, e = addr.parse_ip("")
      assert.is_nil(r)
      assert.are.equal("empty IP address", e)
    end)

    it("parses IPv6 and prints the RFC 5952 form", function()
      local cases = {
        ["::"] = "::",
        ["::1"] = "::1",
        ["1::"] = "1::",
        ["2001:DB8::1"] = "2001:db8::1",
        ["2001:0db8:0000:0000:0000:0000:0000:0001"] = "2001:db8::1",
        ["2001:db8:0:0:1:0:0:1"] = "2001:db8::1:0:0:1", -- first of two equal runs
        ["2001:db8:0:1:1:1:1:1"] = "2001:db8:0:1:1:1:1:1", -- a single 0 group stays
        ["1:2:3:4:5:6:7::"] = "1:2:3:4:5:6:7:0",
        ["::ffff:10.0.0.1"] = "::ffff:10.0.0.1",
        ["::ffff:a00:1"] = "::ffff:10.0.0.1",
        ["2001:db8::1.2.3.4"] = "2001:db8::102:304",
        ["fe80::1:0:0:0:1"] = "fe80:0:0:1::1",
      }
      for input, want in pairs(cases) do
        assert.are.equal(want, ip(input), input)
      end
      local r = assert(addr.parse_ip("::1"))
      assert.are.equal(6, r.family)
      assert.are.equal(string.rep("\0", 15) .. "\1", r.bytes)
    end)

    it("rejects malformed IPv6 and says why", function()
      local cases = {
        ["1::2::3"] = "'::' may appear only once",
        ["1:2:3:4:5:6:7:8:9"] = "it has 9 groups, expected 8",
        ["1:2:3"] = "it has 3 groups, expected 8",
        ["12345::"] = "more than 4 hex digits",
        [":1:2:3:4:5:6:7"] = "empty group",
        ["::1.2.3.4:5"] = "an IPv4 part may appear only at the end",
        ["1.2.3.4::"] = "an IPv4 part may appear only at the end",
        ["::1.2.3.256"] = "'256' is greater than 255",
        ["fe80::1%eth0"] = "zone indexes ('%eth0') are not supported",
        ["::g"] = "only hex digits",
        ["1:2:3:4:5:6:7:8::"] = "too many groups",
      }
      for input, want in pairs(cases) do
        local r, err = addr.parse_ip(input)
        assert.is_nil(r, input)
        assert.matches("is not an IPv6 address", err, 1, true)
        assert.matches(want, err, 1, true)
      end
    end)

    it("reports a non-string argument", function()
      local r, err = addr.parse_ip(42)
      assert.is_nil(r)
      assert.are.equal("expected an IP address string, got number", err)
    end)
  end)

  describe("parse_cidr", function()
    it("parses networks of both families", function()
      local c = assert(addr.parse_cidr("10.0.0.0/8"))
      assert.are.same({ family = 4, bytes = "\10\0\0\0", prefix = 8, text = "10.0.0.0/8" }, c)
      assert.are.equal("0.0.0.0/0", addr.parse_cidr("0.0.0.0/0").text)
      assert.are.equal("2001:db8::/32", addr.parse_cidr("2001:0DB8::/32").text)
      assert.are.equal("::/0", addr.parse_cidr("::/0").text)
      assert.are.equal(128, addr.parse_cidr("::1/128").prefix)
    end)

    it("reads a bare address as a single host", function()
      assert.are.equal("10.1.2.3/32", addr.parse_cidr("10.1.2.3").text)
      assert.are.equal("::1/128", addr.parse_cidr("::1").text)
    end)

    it("rejects host bits with both readings spelled out", function()
      local r, err = addr.parse_cidr("10.0.0.5/24")
      assert.is_nil(r)
      assert.are.equal("'10.0.0.5/24' has host bits set after the /24 prefix: write " ..
        "'10.0.0.0/24' for the whole network or '10.0.0.5/32' for the single address", err)
      r, err = addr.parse_cidr("2001:db8::1/64")
      assert.is_nil(r)
      assert.matches("write '2001:db8::/64' for the whole network or '2001:db8::1/128'", err, 1,
        true)
      -- bits below a byte boundary count too
      assert.are.equal("10.0.0.128/25", addr.parse_cidr("10.0.0.128/25").text)
      assert.is_nil((addr.parse_cidr("10.0.0.64/25")))
    end)

    it("says that allow-lists take no port", function()
      local r, err = addr.parse_cidr("127.0.0.1:22")
      assert.is_nil(r)
      assert.are.equal("'127.0.0.1:22' is not a CIDR: allow-lists take networks such as " ..
        "'127.0.0.1/32', without a port", err)
      r, err = addr.parse_cidr("[::1]:22")
      assert.is_nil(r)
      assert.matches("such as '::1/128', without a port", err, 1, true)
      r, err = addr.parse_cidr("10.0.0.0/8,192.168.0.0/16")
      assert.is_nil(r)
      assert.matches("is not a CIDR: one network per entry (on the command line, repeat the " ..
        "option", err, 1, true)
    end)

    it("clears host bits with opts.mask", function()
      assert.are.equal("10.0.0.0/24", addr.parse_cidr("10.0.0.5/24", { mask = true }).text)
      assert.are.equal("10.0.0.0/25", addr.parse_cidr("10.0.0.64/25", { mask = true }).text)
      assert.are.equal("2001:db8::/32",
        addr.parse_cidr("2001:db8:ffff::1/32", { mask = true }).text)
      assert.has_error(function() addr.parse_cidr("10.0.0.0/8", { masks = true }) end,
        "addr.parse_cidr: unknown option 'masks'")
    end)

    it("rejects bad prefixes and addresses", function()
      local cases = {
        ["10.0.0.0/33"] = "prefix length '33' must be a number from 0 to 32",
        ["::/129"] = "prefix length '129' must be a number from 0 to 128",
        ["10.0.0.0/"] = "prefix length '' must be",
        ["10.0.0.0/-1"] = "prefix length '-1' must be",
        ["10.0.0.0/8/8"] = "prefix length '8/8' must be",
        ["/8"] = "the address is missing",
        ["10.0.0/8"] = "is not an IPv4 address",
        ["example.com/8"] = "is not an IPv4 address",
      }
      for input, want in pairs(cases) do
        local r, err = addr.parse_cidr(input)
        assert.is_nil(r, input)
        assert.matches(want, err, 1, true)
      end
    end)
  end)

  describe("cidr_contains", function()
    it("tests membership for IPv4 and IPv6", function()
      assert.is_true(addr.cidr_contains("10.0.0.0/8", "10.255.255.255"))
      assert.is_false(addr.cidr_contains("10.0.0.0/8", "11.0.0.0"))
      assert.is_true(addr.cidr_contains("192.168.1.0/25", "192.168.1.127"))
      assert.is_false(addr.cidr_contains("192.168.1.0/25", "192.168.1.128"))
      assert.is_true(addr.cidr_contains("0.0.0.0/0", "203.0.113.9"))
      assert.is_true(addr.cidr_contains("10.1.2.3/32", "10.1.2.3"))
      assert.is_false(addr.cidr_contains("10.1.2.3/32", "10.1.2.4"))
      assert.is_true(addr.cidr_contains("2001:db8::/32", "2001:db8:ffff::1"))
      assert.is_false(addr.cidr_contains("2001:db8::/32", "2001:db9::1"))
      assert.is_true(addr.cidr_contains("::1/128", "::1"))
      assert.is_true(addr.cidr_contains("::/0", "2001:db8::1"))
    end)

    it("treats IPv4-mapped IPv6 as the IPv4 address, but ::/0 does not admit IPv4", function()
      assert.is_true(addr.cidr_contains("10.0.0.0/8", "::ffff:10.1.2.3"))
      assert.is_false(addr.cidr_contains("10.0.0.0/8", "::ffff:11.1.2.3"))
      assert.is_true(addr.cidr_contains("::ffff:10.0.0.0/104", "10.9.9.9"))
      assert.is_false(addr.cidr_contains("::/0", "10.9.9.9"))
      assert.is_false(addr.cidr_contains("0.0.0.0/0", "::1"))
    end)

    it("accepts parsed tables", function()
      local net = assert(addr.parse_cidr("127.0.0.0/8"))
      assert.is_true(addr.cidr_contains(net, assert(addr.parse_ip("127.0.0.53"))))
    end)

    it("raises on unparsable arguments", function()
      assert.has_error(function() addr.cidr_contains("10.0.0.0/99", "10.0.0.1") end,
        "addr.cidr_contains: '10.0.0.0/99' is not a CIDR: prefix length '99' must be a " ..
        "number from 0 to 32")
      assert.has_error(function() addr.cidr_contains("10.0.0.0/8", "nope") end)
      assert.has_error(function() addr.cidr_contains(nil, "10.0.0.1") end)
    end)
  end)

  describe("parse_hostport", function()
    it("parses names, IPv4 and bracketed IPv6", function()
      assert.are.same({ host = "127.0.0.1", port = 22, family = 4, text = "127.0.0.1:22" },
        addr.parse_hostport("127.0.0.1:22"))
      assert.are.same({ host = "::1", port = 2222, family = 6, text = "[::1]:2222" },
        addr.parse_hostport("[0:0::1]:2222"))
      assert.are.same({ host = "relay.example.net", port = 443, text = "relay.example.net:443" },
        addr.parse_hostport("Relay.Example.NET:443"))
      assert.are.equal("localhost:1", addr.parse_hostport("localhost:1").text)
      assert.are.equal("a:65535", addr.parse_hostport("a:65535").text)
      assert.are.equal("host.example.:80", addr.parse_hostport("host.example.:80").text)
    end)

    it("supports a default port and port 0 on request", function()
      assert.are.equal("stun.example.net:3478",
        addr.parse_hostport("stun.example.net", { default_port = 3478 }).text)
      assert.are.equal("[::1]:3478", addr.parse_hostport("[::1]", { default_port = 3478 }).text)
      assert.are.equal(0, addr.parse_hostport("0.0.0.0:0", { allow_zero = true }).port)
      assert.has_error(function() addr.parse_hostport("a:1", { bogus = 1 }) end,
        "addr.parse_hostport: unknown option 'bogus'")
    end)

    it("gives precise errors", function()
      local cases = {
        ["host"] = "'host' has no port: write host:port, e.g. 'host:8080'",
        ["[::1]"] = "'[::1]' has no port: write host:port, e.g. '[::1]:8080'",
        ["host:"] = "'host:': the port after ':' is missing",
        ["host:0"] = "'host:0': port 0 is out of range 1-65535",
        ["host:65536"] = "'host:65536': port 65536 is out of range 1-65535",
        ["host:http"] = "'host:http': port 'http' is not a number",
        ["::1:22"] = "'::1:22': an IPv6 address with a port needs brackets, e.g. '[::1]:22'",
        [":80"] = "':80': the host is missing (e.g. 127.0.0.1 or 0.0.0.0)",
        ["[::1:22"] = "'[::1:22': '[' without a closing ']'",
        ["[::1]x"] = "'[::1]x': unexpected 'x' after ']' (expected ':port')",
        ["[10.0.0.1]:1"] = "'[10.0.0.1]:1': '10.0.0.1' is not an IPv6 address",
        ["1.2.3:4"] = "'1.2.3:4': '1.2.3' is not an IPv4 address",
        ["300.1.1.1:4"] = "'300.1.1.1:4': '300.1.1.1' is not an IPv4 address: '300' is greater",
        ["a..b:1"] = "'a..b:1': host name has an empty label ('..')",
        ["-a:1"] = "'-a:1': host name label '-a' starts or ends with '-'",
        ["a b:1"] = "'a b:1': spaces are not allowed in host:port",
        ["tcp://a:1"] = "'tcp://a:1': expected host:port without a scheme",
        ["h*st:1"] = "'h*st:1': 'h*st' is not a valid host name",
        [""] = "empty address: expected host:port, e.g. 127.0.0.1:8080",
      }
      for input, want in pairs(cases) do
        local r, err = addr.parse_hostport(input)
        assert.is_nil(r, input)
        assert.are.equal(want, err:sub(1, #want), input)
      end
      local long = string.rep("a", 64) .. ".example:1"
      assert.matches("label longer than 63", select(2, addr.parse_hostport(long)), 1, true)
    end)
  end)

  describe("parse_source", function()
    it("parses tcp:// and udp:// sources", function()
      local s = assert(addr.parse_source("tcp://127.0.0.1:22"))
      assert.are.same({ proto = "tcp", host = "127.0.0.1", port = 22, family = 4,
        text = "tcp://127.0.0.1:22" }, s)
      s = assert(addr.parse_source("UDP://[::1]:51820"))
      assert.are.equal("udp", s.proto)
      assert.are.equal("udp://[::1]:51820", s.text)
      assert.are.equal("tcp://db.internal:5432", addr.parse_source("tcp://db.internal:5432").text)
    end)

    it("gives precise errors", function()
      local cases = {
        ["127.0.0.1:22"] = "'127.0.0.1:22' is not a source: write tcp://host:port or " ..
          "udp://host:port",
        ["http://a:1"] = "'http://a:1': unsupported protocol 'http' (use tcp:// or udp://)",
        ["tcp://a"] = "'tcp://a': 'a' has no port",
        ["tcp://a:1/x"] = "'tcp://a:1/x': unexpected '/x' after the port",
        ["udp://a:99999"] = "'udp://a:99999': port 99999 is out of range 1-65535",
        ["tcp://"] = "'tcp://': empty address",
      }
      for input, want in pairs(cases) do
        local r, err = addr.parse_source(input)
        assert.is_nil(r, input)
        assert.are.equal(want, err:sub(1, #want), input)
      end
    end)
  end)

  describe("parse_url", function()
    local web = { schemes = { "http", "https" } }

    it("parses URLs", function()
      local u = assert(addr.parse_url("https://relay.example.net", web))
      assert.are.equal("https", u.scheme)
      assert.are.equal("relay.example.net", u.host)
      assert.is_nil(u.port)
      assert.are.equal("", u.path)
      u = assert(addr.parse_url("HTTP://[::1]:3340/pkarr?x=1", web))
      assert.are.same({ scheme = "http", host = "::1", port = 3340, family = 6,
        path = "/pkarr?x=1", text = "http://[::1]:3340/pkarr?x=1" }, u)
      u = assert(addr.parse_url("socks5h://user:pw@127.0.0.1:9050"))
      assert.are.equal("user:pw", u.userinfo)
      assert.has_error(function() addr.parse_url("http://a", { scheme = { "http" } }) end,
        "addr.parse_url: unknown option 'scheme'")
    end)

    it("gives precise errors", function()
      local cases = {
        ["ftp://x"] = "'ftp://x': scheme 'ftp' is not accepted here (use http://, https://)",
        ["relay.example.net"] = "'relay.example.net' is not an URL: expected http://, " ..
          "https:// followed by a host",
        ["https://"] = "'https://': the host is missing",
        ["https://x:0"] = "'https://x:0': port 0 is out of range 1-65535",
        ["https://x/#a"] = "'https://x/#a': a '#fragment' is not allowed",
        ["https://x y"] = "'https://x y': spaces are not allowed in an URL",
      }
      for input, want in pairs(cases) do
        local r, err = addr.parse_url(input, web)
        assert.is_nil(r, input)
        assert.are.equal(want, err:sub(1, #want), input)
      end
    end)
  end)
end)
