-- tunnel.config: loading and validating TOML files and Lua tables, merging the command line,
-- default paths, the example configs and the reference page docs/config.md.
local config = require "tunnel.config"
local keys = require "tunnel.keys"
local toml_mod = require "tunnel.toml"
local H = require "helper"
local uv = require "luv"

-- The specs below change directory; keep the binary reachable.
if H.BIN:sub(1, 1) ~= "/" then H.BIN = uv.cwd() .. "/" .. H.BIN end

-- Real keys (valid points) made by tunnel.keys from fixed secrets, and valid tokens.
local ENDPOINT = "rkeohxlubhyzl7ks3mwtzos5olfgocn7dwkbeg7toseadnapn5oa"
local ENDPOINT_HEX = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
local SECRET = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
local NSEC = "nsec1qgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqxjfw7x"
local NPUB_A = "npub1f49ke5fkzqev4x7j46uajq92f4zan6kcpty5yvm5c3g6wf2dqanqn7qsy2"
local NPUB_B = "npub12v07vp5px3gr6ferzvez0jr84j86djpu2dlf53xrck7mmjcluvms5dn8ru"
local TOKEN1, TOKEN2 = "iABCDEF1234567890k", "i0123456789abcdef5"

local dir, old_cwd

-- Write `text` as dir/name and load it by its bare name from inside dir, so messages read
-- exactly as a user would see them ("server.toml:7:1: ...").
local function load(name, text, opts)
  H.write_file(dir .. "/" .. name, text)
  return config.load(name, opts)
end

local function lines(err)
  local out = {}
  for l in (err .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

-- Assert that loading fails with exactly these error lines.
local function fails(name, text, opts, want)
  local cfg, err = load(name, text, opts)
  assert.is_nil(cfg)
  assert.are.same(want, lines(err))
end

local function toml(...) return table.concat({ ... }, "\n") .. "\n" end

describe("tunnel.config", function()
  before_each(function()
    dir = H.tmpdir()
    old_cwd = uv.cwd()
    assert(uv.chdir(dir))
  end)

  after_each(function()
    assert(uv.chdir(old_cwd))
    H.cleanup()
  end)

  describe("load: valid configurations", function()
    it("reads an iroh server and fills in defaults", function()
      local cfg, err = load("server.toml", toml(
        'role = "server"',
        'mode = "iroh"',
        '',
        '[iroh]',
        'secret_file = "keys/server.key"',
        'auth_tokens = ["' .. TOKEN1 .. '", "' .. TOKEN2 .. '"]',
        'max_sessions = 7',
        'relay_urls = ["https://relay.example.net", "http://[::1]:3340"]',
        'dns_server = "none"',
        '',
        '[iroh.allowed_sources]',
        'tcp = ["127.0.0.0/8", "::1", "2001:DB8::/32"]',
        '',
        '[iroh.transport]',
        'congestion_controller = "new_reno"',
        'receive_window = "4 MiB"',
        'send_window = 65536',
        'idle_timeout = 30.5'), { role = "server", mode = "iroh", complete = true })
      assert.is_nil(err)
      assert.are.same({
        role = "server",
        mode = "iroh",
        iroh = {
          secret_file = uv.cwd() .. "/keys/server.key",
          auth_tokens = { TOKEN1, TOKEN2 },
          max_sessions = 7,
          relay_urls = { "https://relay.example.net", "http://[::1]:3340" },
          relay_only = false,
          dns_server = "none",
          allowed_sources = { tcp = { "127.0.0.0/8", "::1/128", "2001:db8::/32" }, udp = {} },
          transport = {
            congestion_controller = "reno",
            receive_window = 4 * 1024 * 1024,
            send_window = 65536,
            idle_timeout = 30.5,
            keep_alive_interval = 15,
            connect_timeout = 10,
            udp_idle_timeout = 60,
          },
        },
      }, cfg)
    end)

    it("reads an iroh client with several forwards", function()
      local cfg = assert(load("client.toml", toml(
        'role = "client"',
        '[iroh]',
        'server_node_id = "' .. ENDPOINT_HEX .. '"',
        'auth_token = "' .. TOKEN1 .. '"',
        'secret = "' .. SECRET .. '"',
        'source = "tcp://127.0.0.1:22"',
        'target = "127.0.0.1:2222"',
        'server_addrs = ["192.0.2.7:4433"]',
        '[[iroh.forward]]',
        'source = "udp://127.0.0.1:51820"',
        'target = "udp://0.0.0.0:51820"',
        '[[iroh.forward]]',
        'request_source = "tcp://db.internal:5432"',
        'target = "[::1]:5432"'), { complete = true }))
      local s = cfg.iroh
      assert.are.equal("iroh", cfg.mode)
      assert.are.equal(ENDPOINT, s.server_node_id) -- hex input, base32 out
      assert.are.equal("tcp://127.0.0.1:22", s.request_source)
      assert.is_nil(s.source)
      assert.are.same({ "192.0.2.7:4433" }, s.server_addrs)
      assert.are.same({
        { source = "udp://127.0.0.1:51820", target = "udp://0.0.0.0:51820" },
        { source = "tcp://db.internal:5432", target = "[::1]:5432" },
      }, s.forward)
      assert.is_nil(s.max_sessions) -- a server default is not filled in for a client
      assert.are.equal(60, s.transport.udp_idle_timeout)
      assert.are.same({
        { source = "tcp://127.0.0.1:22", target = "127.0.0.1:2222", proto = "tcp" },
        { source = "udp://127.0.0.1:51820", target = "0.0.0.0:51820", proto = "udp" },
        { source = "tcp://db.internal:5432", target = "[::1]:5432", proto = "tcp" },
      }, config.forwards(cfg))
    end)

    it("reads manual server and client configs", function()
      local srv = assert(load("s.toml", toml(
        'role = "server"', 'mode = "manual"', '[manual]', 'stun_servers = []',
        '[manual.allowed_sources]', 'udp = ["10.0.0.0/8"]'),
        { role = "server", mode = "manual", complete = true }))
      assert.are.same({}, srv.manual.stun_servers) -- an explicit empty list turns STUN off
      assert.are.same({ tcp = {}, udp = { "10.0.0.0/8" } }, srv.manual.allowed_sources)
      assert.is_nil(srv.iroh) -- other sections appear only when written
      local cli = assert(load("c.toml", toml(
        'role = "client"', 'mode = "manual"', '[manual]',
        'request_source = "udp://127.0.0.1:53"', 'target = "127.0.0.1:5353"'),
        { complete = true }))
      -- Without stun_servers the schema's defaults apply (public servers: tests never use them).
      local defaults = require("tunnel.config").schema.by_name.manual.by_name.stun_servers.default
      assert.is_true(#defaults > 0)
      assert.are.same(defaults, cli.manual.stun_servers)
      assert.are.equal("bbr", cli.manual.transport.congestion_controller)
    end)

    it("reads nostr server and client configs", function()
      local srv = assert(load("s.toml", toml(
        'role = "server"', 'mode = "nostr"', '[nostr]',
        'nsec = "' .. NSEC .. '"', 'peer_npub = "' .. NPUB_A .. '"',
        'relays = ["wss://nostr.example.net", "ws://127.0.0.1:7777"]',
        'stun_servers = ["127.0.0.1"]',
        '[nostr.allowed_sources]', 'tcp = ["0.0.0.0/0"]'), { complete = true }))
      assert.are.equal(10, srv.nostr.max_sessions)
      assert.are.same({ "127.0.0.1:3478" }, srv.nostr.stun_servers)
      assert.is_nil(srv.nostr.republish_interval) -- client-only default
      local cli = assert(load("c.toml", toml(
        'role = "client"', 'mode = "nostr"', '[nostr]',
        'nsec_file = "~/client.nsec"', 'peer_npub = "' .. NPUB_B .. '"',
        'max_wait = 30',
        '[[nostr.forward]]', 'source = "tcp://127.0.0.1:22"', 'target = "127.0.0.1:2222"'),
        { complete = true, home = "/home/ada" }))
      assert.are.equal("/home/ada/client.nsec", cli.nostr.nsec_file)
      assert.are.equal(5, cli.nostr.republish_interval)
      assert.are.equal(30, cli.nostr.max_wait)
      assert.are.equal(4, #cli.nostr.relays)
    end)

    it("reads VPN server and client configs", function()
      local srv = assert(load("vs.toml", toml(
        'role = "vpnserver"', '[iroh]', 'secret_file = "/etc/k"',
        'auth_tokens_file = "/etc/t"', 'network = "10.8.0.0/24"', 'server_ip = "10.8.0.1"',
        'network6 = "fd00:8::/64"', 'server_ip6 = "fd00:8::1"'),
        { role = "vpnserver", complete = true }))
      assert.are.equal(1280, srv.iroh.mtu)
      assert.are.equal(1024, srv.iroh.client_channel_size)
      assert.are.equal(512, srv.iroh.tun_writer_channel_size)
      assert.is_false(srv.iroh.drop_on_full)
      assert.is_false(srv.iroh.disable_spoofing_check)
      assert.is_nil(srv.iroh.transport.udp_idle_timeout) -- not a VPN setting
      local cli = assert(load("vc.toml", toml(
        'role = "vpnclient"', '[iroh]', 'server_node_id = "' .. ENDPOINT .. '"',
        'auth_token_file = "tok"', 'routes = ["192.168.0.0/16", "fd01::/16"]',
        'routes6 = ["fd02::/16"]', 'auto_reconnect = false', 'max_reconnect_attempts = 3',
        'tun_name = "tun%d"'), { complete = true }))
      assert.are.equal(uv.cwd() .. "/tok", cli.iroh.auth_token_file)
      assert.are.same({ "192.168.0.0/16", "fd01::/16" }, cli.iroh.routes)
      assert.is_false(cli.iroh.auto_reconnect)
      assert.are.equal(3, cli.iroh.max_reconnect_attempts)
    end)

    it("takes role and mode from the command when the file has none", function()
      local cfg = assert(load("c.toml", '[nostr]\npeer_npub = "' .. NPUB_A .. '"\n',
        { role = "client", mode = "nostr" }))
      assert.are.equal("client", cfg.role)
      assert.are.equal("nostr", cfg.mode)
      cfg = assert(load("s.toml", 'role = "server"\n'))
      assert.are.equal("iroh", cfg.mode) -- iroh is the default mode
      assert.are.equal(100, cfg.iroh.max_sessions)
    end)

    it("validates again to the same table", function()
      local cfg = assert(config.load(old_cwd .. "/examples/config/client.toml"))
      assert.are.same(cfg, assert(config.validate(cfg)))
    end)
  end)

  describe("load: errors", function()
    it("cites line and column of an unknown key and suggests the closest one", function()
      fails("server.toml", toml(
        'role = "server"',
        'mode = "iroh"',
        '',
        '[iroh]',
        'secret_file = "server.key"',
        '',
        'alowed_sources = { tcp = ["10.0.0.0/8"] }'), nil, {
        "server.toml:7:1: unknown key 'alowed_sources' in [iroh] — did you mean " ..
          "'allowed_sources'?",
      })
    end)

    it("suggests across typos, transpositions, dashes and sections", function()
      fails("server.toml", toml(
        'role = "server"',
        'moed = "iroh"',
        '[iorh]',
        '[iroh]',
        'secret-file = "k"',
        'max_sesions = 3',
        '[iroh.allowed_sources]',
        'tpc = []',
        'allowed_tcp = 1',
        '[iroh.transport]',
        'recieve_window = 1',
        'stun_servers = []',
        'zzz = 1'), nil, {
        "server.toml:2:1: unknown key 'moed' in the top level — did you mean 'mode'?",
        "server.toml:3:2: unknown key 'iorh' in the top level — did you mean 'iroh'?",
        "server.toml:5:1: unknown key 'secret-file' in [iroh] — did you mean 'secret_file'?",
        "server.toml:6:1: unknown key 'max_sesions' in [iroh] — did you mean 'max_sessions'?",
        "server.toml:8:1: unknown key 'tpc' in [iroh.allowed_sources] — did you mean 'tcp'?",
        "server.toml:9:1: unknown key 'allowed_tcp' in [iroh.allowed_sources] — allow-lists " ..
          "go in a table: [iroh.allowed_sources] tcp = [...]",
        "server.toml:11:1: unknown key 'recieve_window' in [iroh.transport] — did you mean " ..
          "'receive_window'?",
        "server.toml:12:1: unknown key 'stun_servers' in [iroh.transport]",
        "server.toml:13:1: unknown key 'zzz' in [iroh.transport]",
      })
    end)

    it("says where a key of another section or of a section belongs", function()
      fails("client.toml", toml(
        'role = "client"',
        'target = "127.0.0.1:1"',
        '[iroh]',
        'stun_servers = ["a:1"]',
        '[manual]',
        'forward = []'), nil, {
        "client.toml:2:1: unknown key 'target' in the top level — 'target' belongs in a " ..
          "section: move it below the [iroh] header",
        "client.toml:4:1: unknown key 'stun_servers' in [iroh] — 'stun_servers' is a setting " ..
          "of [manual] and [nostr]",
        "client.toml:6:1: unknown key 'forward' in [manual] — 'forward' is a setting of " ..
          "[iroh] and [nostr]",
      })
    end)

    it("rejects keys of another role", function()
      fails("client.toml", toml(
        'role = "client"',
        'mode = "iroh"',
        '[iroh]',
        'allowed_sources = { tcp = ["10.0.0.0/8"] }',
        'auth_tokens = ["' .. TOKEN1 .. '"]',
        'network = "10.0.0.0/24"',
        'max_session = 3',
        '[iroh.transport]',
        'udp_idle_timeout = 5'), nil, {
        "client.toml:4:1: 'allowed_sources' is a server setting; this file is for role 'client'",
        "client.toml:5:1: 'auth_tokens' is a server/vpnserver setting; this file is for role " ..
          "'client' — did you mean 'auth_token'?",
        "client.toml:6:1: 'network' is a vpnserver setting; this file is for role 'client'",
        "client.toml:7:1: unknown key 'max_session' in [iroh] — the closest key, " ..
          "'max_sessions', is a server setting; this file is for role 'client'",
      })
      fails("vpn.toml", toml(
        'role = "vpnserver"',
        '[iroh]',
        'target = "127.0.0.1:1"',
        '[iroh.transport]',
        'udp_idle_timeout = 5',
        '[nostr]'), nil, {
        "vpn.toml:3:1: 'target' is a client setting; this file is for role 'vpnserver'",
        "vpn.toml:5:1: 'udp_idle_timeout' is a server/client setting; this file is for role " ..
          "'vpnserver'",
        "vpn.toml:6:2: [nostr] is not used by role 'vpnserver' (VPN roles run in iroh mode " ..
          "only); remove this section",
      })
    end)

    it("says which type was expected and what was given", function()
      fails("server.toml", toml(
        'role = "server"',
        '[iroh]',
        'max_sessions = "100"',
        'relay_only = "yes"',
        'relay_urls = "https://relay.example.net"',
        'secret_file = 5',
        'auth_tokens = [1]',
        'allowed_sources = ["10.0.0.0/8"]',
        'transport = { idle_timeout = "30s", receive_window = 1.5, send_window = "16MB" }',
        'dns_server = 1979-05-27'), nil, {
        "server.toml:3:1: 'max_sessions' must be an integer, got a string (\"100\")",
        "server.toml:4:1: 'relay_only' must be true or false, got a string (\"yes\")",
        "server.toml:5:1: 'relay_urls' must be a list ([...]), got a string " ..
          "(\"https://relay.example.net\")",
        "server.toml:6:1: 'secret_file' must be a file path (string), got an integer (5)",
        "server.toml:7:16: 'auth_tokens[1]' must be a token string, got an integer (1)",
        "server.toml:8:1: 'allowed_sources' must be a table of settings, got a list",
        "server.toml:9:15: 'transport.idle_timeout' must be a number of seconds, got a string " ..
          "(\"30s\")",
        "server.toml:9:37: 'transport.receive_window' must be a size in bytes (an integer, or " ..
          "a string such as \"16 MiB\"), got a float (1.5)",
        "server.toml:9:59: 'transport.send_window' must be a size such as 16777216, \"16 MiB\" " ..
          "or \"512 KiB\", got \"16MB\" (units: B, KiB, MiB, GiB)",
        "server.toml:10:1: 'dns_server' must be an URL (http://, https://) or \"none\", got a " ..
          "date/time (1979-05-27)",
      })
    end)

    it("gives the range of out-of-range values", function()
      fails("server.toml", toml(
        'role = "vpnserver"',
        '[iroh]',
        'mtu = 9000',
        'client_channel_size = 0',
        'tun_writer_channel_size = 9223372036854775807',
        '[iroh.transport]',
        'receive_window = "2 GiB"',
        'keep_alive_interval = -1',
        'connect_timeout = 601',
        'busy_poll = 5000'), nil, {
        "server.toml:3:1: 'mtu' is out of range: got 9000, allowed 576 to 1500",
        "server.toml:4:1: 'client_channel_size' is out of range: got 0, allowed 1 to 65536",
        "server.toml:5:1: 'tun_writer_channel_size' is out of range: got 9223372036854775807, " ..
          "allowed 1 to 65536",
        "server.toml:7:1: 'transport.receive_window' is out of range: got 2147483648 bytes, " ..
          "allowed 1024 to 1073741824 bytes",
        "server.toml:8:1: 'transport.keep_alive_interval' is out of range: got -1 s, allowed " ..
          "0 to 3600 s",
        "server.toml:9:1: 'transport.connect_timeout' is out of range: got 601 s, allowed 1 to " ..
          "600 s",
        "server.toml:10:1: 'transport.busy_poll' is out of range: got 5000, allowed 0 to 1000",
      })
    end)

    it("checks enums and suggests the closest value", function()
      fails("s.toml", toml(
        'role = "sever"',
        'mode = "irho"',
        '[iroh.transport]',
        'congestion_controller = "BBR2"'), nil, {
        "s.toml:1:1: 'role' must be one of server, client, vpnserver, vpnclient, relay, got " ..
          "\"sever\"" ..
          " — did you mean 'server'?",
        "s.toml:2:1: 'mode' must be one of iroh, manual, nostr, got \"irho\" — did you mean " ..
          "'iroh'?",
        "s.toml:4:1: 'transport.congestion_controller' must be one of bbr, cubic, reno, got " ..
          "\"BBR2\" — did you mean 'bbr'?",
      })
      local cfg = assert(load("ok.toml", 'role = "server"\n[iroh.transport]\n' ..
        'congestion_controller = "NewReno"\n'))
      assert.are.equal("reno", cfg.iroh.transport.congestion_controller)
    end)

    it("checks role and mode against the command", function()
      fails("client.toml", 'role = "client"\nmode = "manual"\n',
        { role = "server", mode = "nostr" }, {
          "client.toml:1:1: role 'client' does not match the command, which runs a server; " ..
            "use a server configuration or the client command",
          "client.toml:2:1: mode 'manual' does not match the command's mode 'nostr'; change the " ..
            "mode here or on the command line",
        })
      fails("vpn.toml", 'role = "vpnclient"\nmode = "nostr"\n', nil, {
        "vpn.toml:2:1: role 'vpnclient' runs in iroh mode only, got mode 'nostr'",
      })
      fails("none.toml", '[iroh]\n', nil, {
        "none.toml: missing 'role': add role = \"server\" (or \"client\", \"vpnserver\", " ..
          "\"vpnclient\", \"relay\") at the top",
      })
    end)

    it("rejects both keys of a pair of alternatives, at the later one", function()
      fails("s.toml", toml(
        'role = "server"',
        '[iroh]',
        'secret_file = "k"',
        'auth_tokens_file = "t"',
        'secret = "' .. SECRET .. '"',
        'auth_tokens = ["' .. TOKEN1 .. '"]'), nil, {
        "s.toml:5:1: 'secret' and 'secret_file' are alternatives; set only one of them",
        "s.toml:6:1: 'auth_tokens' and 'auth_tokens_file' are alternatives; set only one of them",
      })
      fails("c.toml", toml(
        'role = "client"',
        '[iroh]',
        'auth_token = "' .. TOKEN1 .. '"',
        'auth_token_file = "t"',
        '[nostr]',
        'nsec_file = "n"',
        'nsec = "' .. NSEC .. '"'), nil, {
        "c.toml:4:1: 'auth_token' and 'auth_token_file' are alternatives; set only one of them",
        "c.toml:7:1: 'nsec' and 'nsec_file' are alternatives; set only one of them",
      })
    end)

    it("rejects an alias given together with its key", function()
      fails("c.toml", toml(
        'role = "client"',
        '[iroh]',
        'request_source = "tcp://127.0.0.1:22"',
        'source = "tcp://127.0.0.1:23"'), nil, {
        "c.toml:4:1: 'source' is another name for 'request_source'; set only one of them",
      })
    end)

    it("checks addresses, keys and tokens and says what is wrong", function()
      fails("c.toml", toml(
        'role = "client"',
        '[iroh]',
        'server_node_id = "' .. ENDPOINT:sub(1, 51) .. '"',
        'auth_token = "' .. TOKEN1:sub(1, 17) .. 'x"',
        'request_source = "http://127.0.0.1:22"',
        'target = "127.0.0.1"',
        'relay_urls = ["wss://relay.example.net"]',
        'server_addrs = ["[::1]:0"]',
        'secret = "' .. SECRET:sub(1, 40) .. '"'), nil, {
        "c.toml:3:1: 'server_node_id' is invalid: " ..
          select(2, keys.parse_endpoint_id(ENDPOINT:sub(1, 51))),
        "c.toml:4:1: 'auth_token' is invalid: " ..
          select(2, keys.validate_token(TOKEN1:sub(1, 17) .. "x")),
        "c.toml:5:1: 'request_source' is invalid: 'http://127.0.0.1:22': unsupported protocol " ..
          "'http' (use tcp:// or udp://)",
        "c.toml:6:1: 'target' is invalid: '127.0.0.1' has no port: write host:port, e.g. " ..
          "'127.0.0.1:8080'",
        "c.toml:7:15: 'relay_urls[1]' is invalid: 'wss://relay.example.net': scheme 'wss' is " ..
          "not accepted here (use http://, https://)",
        "c.toml:8:17: 'server_addrs[1]' is invalid: '[::1]:0': port 0 is out of range 1-65535",
        "c.toml:9:1: 'secret' is invalid: " .. select(2, keys.load_secret(SECRET:sub(1, 40))),
      })
    end)

    it("checks CIDRs, with the host-bits mistake explained", function()
      fails("s.toml", toml(
        'role = "server"',
        '[iroh.allowed_sources]',
        'tcp = ["10.0.0.0/8", "192.168.1.5/24", "10.0.0.0/40"]',
        'udp = ["fd00::/8", "example.com"]'), nil, {
        "s.toml:3:22: 'allowed_sources.tcp[2]' is invalid: '192.168.1.5/24' has host bits set " ..
          "after the /24 prefix: write '192.168.1.0/24' for the whole network or " ..
          "'192.168.1.5/32' for the single address",
        "s.toml:3:40: 'allowed_sources.tcp[3]' is invalid: '10.0.0.0/40' is not a CIDR: " ..
          "prefix length '40' must be a number from 0 to 32",
        "s.toml:4:20: 'allowed_sources.udp[2]' is invalid: 'example.com' is not a CIDR: " ..
          "'example.com' is not an IPv4 address (expected four numbers 0-255 separated by dots)",
      })
    end)

    it("checks VPN pools and addresses", function()
      fails("vs.toml", toml(
        'role = "vpnserver"',
        '[iroh]',
        'network = "10.0.0.0/31"',
        'server_ip = "10.0.1.1"',
        'network6 = "10.1.0.0/16"',
        'server_ip6 = "fd00::1"',
        'routes = ["10.0.0.0/8"]'), nil, {
        "vs.toml:3:1: 'network' 10.0.0.0/31 is too small: the pool needs room for the server " ..
          "and at least one client (use /30 or shorter)",
        "vs.toml:4:1: 'server_ip' 10.0.1.1 is not inside network 10.0.0.0/31",
        "vs.toml:5:1: 'network6' must be an IPv6 CIDR, got \"10.1.0.0/16\"",
        "vs.toml:7:1: 'routes' is a vpnclient setting; this file is for role 'vpnserver'",
      })
      fails("vs2.toml", toml(
        'role = "vpnserver"',
        '[iroh]',
        'network = "10.0.0.0/24"',
        'server_ip = "10.0.0.255"',
        'server_ip6 = "fd00::1"',
        'network6 = "fd00::/64"',
        'mtu = 1200'), nil, {
        "vs2.toml:4:1: 'server_ip' 10.0.0.255 is the broadcast address of 10.0.0.0/24; pick " ..
          "a host address",
        "vs2.toml:7:1: 'mtu' 1200 is too small for IPv6 (network6 is set): IPv6 needs at " ..
          "least 1280",
      })
      fails("vs3.toml", 'role = "vpnserver"\n[iroh]\nserver_ip6 = "fd00::1"\n', nil, {
        "vs3.toml:3:1: 'server_ip6' needs 'network6' (the pool it belongs to)",
      })
    end)

    it("checks forwards: matching protocols, unique targets, complete entries", function()
      fails("c.toml", toml(
        'role = "client"',
        '[iroh]',
        'request_source = "tcp://127.0.0.1:22"',
        'target = "udp://127.0.0.1:2222"',
        '[[iroh.forward]]',
        'source = "tcp://127.0.0.1:23"',
        'target = "127.0.0.1:2223"',
        '[[iroh.forward]]',
        'source = "tcp://127.0.0.1:24"',
        'target = "127.0.0.1:2223"',
        '[[iroh.forward]]',
        'source = "udp://127.0.0.1:24"',
        'target = "127.0.0.1:2223"',
        '[[iroh.forward]]',
        'sorce = "udp://127.0.0.1:25"'), nil, {
        "c.toml:4:1: target udp://127.0.0.1:2222 is udp but its source tcp://127.0.0.1:22 is " ..
          "tcp; use the same protocol or write the target as host:port",
        "c.toml:10:1: forward[2]: target 127.0.0.1:2223 is already used by forward[1]; each " ..
          "forward needs its own local address",
        "c.toml:14:8: 'iroh.forward[4]' needs 'source'",
        "c.toml:14:8: 'iroh.forward[4]' needs 'target'",
        "c.toml:15:1: unknown key 'sorce' in 'iroh.forward[4]' — did you mean 'source'?",
      })
    end)

    it("reports every problem at once, one per line, in file order", function()
      local _, err, list = load("s.toml", toml(
        'role = "server"',
        '[iroh]',
        'max_sessions = -5',
        'bogus = 1',
        '[iroh.transport]',
        'send_window = 1'))
      assert.are.equal(3, #lines(err))
      assert.are.equal(3, #list)
      assert.are.same({ 3, 4, 6 }, { list[1].line, list[2].line, list[3].line })
      assert.are.equal("iroh.transport.send_window", list[3].path)
    end)

    it("never echoes secrets", function()
      local secret = "not-base64-but-very-secret"
      local _, err = load("s.toml", toml(
        'role = "server"',
        '[iroh]',
        'secret = "' .. secret .. '"',
        'auth_tokens = ["' .. secret .. '"]',
        '[nostr]',
        'nsec = "' .. secret .. '"'))
      assert.is_string(err)
      assert.are.equal(3, #lines(err))
      assert.is_nil(err:find("very-secret", 1, true))
    end)

    it("passes TOML syntax errors through with their position", function()
      local text = 'role = "server"\n[iroh]\nmax_sessions = = 3\n'
      local _, want = toml_mod.decode(text, { source = "bad.toml" })
      assert.matches("^bad%.toml:3:16: ", want)
      fails("bad.toml", text, nil, { want })
    end)

    it("reports a missing file", function()
      local cfg, err = config.load("missing.toml")
      assert.is_nil(cfg)
      assert.are.equal("missing.toml: cannot read the config file (No such file or directory)",
        err)
    end)

    it("refuses ~user paths with advice", function()
      fails("c.toml", 'role = "client"\n[iroh]\nauth_token_file = "~bob/token"\n', nil, {
        "c.toml:3:1: 'auth_token_file' cannot be used: '~bob/token': '~bob' (another user's " ..
          "home directory) is not supported; write the full path instead, e.g. " ..
          "'/home/bob/token'",
      })
    end)

    it("rejects unknown options", function()
      assert.has_error(function() config.load("x.toml", { rol = "server" }) end,
        "config.load: unknown option 'rol'")
      assert.has_error(function() config.load("x.toml", { role = "peer" }) end,
        "config.load: opts.role must be one of server, client, vpnserver, vpnclient, relay, " ..
          "got peer")
      assert.has_error(function() config.validate({}, { mode = "ice" }) end,
        "config.validate: opts.mode must be one of iroh, manual, nostr, got ice")
    end)
  end)

  describe("complete configurations", function()
    it("says what a server still needs, with the matching flags", function()
      fails("s.toml", 'role = "server"\n\n[iroh]\nmax_sessions = 5\n', { complete = true }, {
        "s.toml:3:2: [iroh] needs 'secret' or 'secret_file': a server needs a persistent " ..
          "identity (create a key with `tunnel generate-server-key --output FILE`); on the " ..
          "command line: --secret / --secret-file",
        "s.toml:3:2: [iroh] needs 'auth_tokens' or 'auth_tokens_file': clients authenticate " ..
          "with a token (create one with `tunnel generate-token`); on the command line: " ..
          "--auth-tokens / --auth-tokens-file",
        "s.toml:3:2: [iroh] allows no source at all, so every request would be denied: list " ..
          "networks in [iroh.allowed_sources] tcp = [...] / udp = [...]; on the command line: " ..
          "--allowed-tcp / --allowed-udp",
      })
    end)

    it("says what a client still needs", function()
      fails("c.toml", 'role = "client"\n[iroh]\ntarget = "127.0.0.1:1"\n', { complete = true }, {
        "c.toml:2:2: [iroh] needs 'server_node_id' (the server's EndpointId); on the command " ..
          "line: --server-node-id",
        "c.toml:2:2: [iroh] needs 'auth_token' or 'auth_token_file': the server requires a " ..
          "token; on the command line: --auth-token / --auth-token-file",
        "c.toml:2:2: 'target' has no 'request_source': set request_source = " ..
          "\"tcp://host:port\" (the service as seen from the server); on the command line: " ..
          "--source",
      })
      fails("n.toml", 'role = "client"\nmode = "nostr"\n', { complete = true }, {
        "n.toml: [nostr] needs 'peer_npub' (the other side's Nostr public key, npub1... or " ..
          "hex); on the command line: --peer-npub",
        "n.toml: [nostr] needs 'nsec' or 'nsec_file': nostr mode signs with a static key " ..
          "(create one with `tunnel generate-nostr-key --output FILE`); on the command line: " ..
          "--nsec / --nsec-file",
        "n.toml: [nostr] has nothing to forward: set request_source and target, or add " ..
          "[[nostr.forward]] tables; on the command line: --source and --target",
      })
    end)

    it("checks VPN pools and relay-only", function()
      fails("v.toml", 'role = "vpnserver"\n[iroh]\nsecret_file = "k"\nauth_tokens_file = "t"\n' ..
        'relay_only = true\n', { complete = true }, {
          "v.toml:2:2: [iroh] needs an address pool: set network = \"10.0.0.0/24\" and/or " ..
            "network6 = \"fd00::/64\"",
          "v.toml:2:2: 'relay_only' is set but 'relay_urls' is empty: add a relay URL; on the " ..
            "command line: --relay-url",
        })
    end)
  end)

  describe("validate (Lua tables)", function()
    it("normalises a table and cites key paths in errors", function()
      local input = {
        role = "server",
        iroh = {
          secret_file = "/k",
          allowed_sources = { tcp = { "10.0.0.0/8", "10.0.0.1/8" }, udp = { 53 } },
          transport = { congestion_controller = "cubic", recieve_window = 1 },
          max_sessions = 2.5,
        },
        extra = true,
      }
      local cfg, err, list = config.validate(input)
      assert.is_nil(cfg)
      assert.are.same({
        "extra: unknown key 'extra' in the top level",
        "iroh.max_sessions: must be an integer, got a float (2.5)",
        "iroh.allowed_sources.tcp[2]: is invalid: '10.0.0.1/8' has host bits set after the /8 " ..
          "prefix: write '10.0.0.0/8' for the whole network or '10.0.0.1/32' for the single " ..
          "address",
        "iroh.allowed_sources.udp[1]: must be a CIDR string such as \"10.0.0.0/8\", got an " ..
          "integer (53)",
        "iroh.transport.recieve_window: unknown key 'recieve_window' in [iroh.transport] — " ..
          "did you mean 'receive_window'?",
      }, lines(err))
      assert.are.equal(5, #list)
      assert.are.equal(0, list[1].line)
      -- the input is left alone
      assert.are.equal(1, input.iroh.transport.recieve_window)
    end)

    it("validates the forward list with paths to each entry", function()
      local _, err = config.validate({
        role = "client",
        mode = "nostr",
        nostr = { forward = { { source = "tcp://a:1", target = "127.0.0.1:1" },
          { source = "tcp://a:2" }, "x" } },
      })
      assert.are.same({
        "nostr.forward[2]: needs 'target'",
        "nostr.forward[3]: must be a table of settings, got a string (\"x\")",
      }, lines(err))
    end)

    it("accepts a complete Lua configuration", function()
      local cfg = assert(config.validate({
        role = "client",
        iroh = {
          server_node_id = ENDPOINT,
          auth_token = TOKEN2,
          forward = { { source = "udp://127.0.0.1:53", target = "127.0.0.1:5353" } },
          transport = { receive_window = "512 KiB" },
        },
      }, { complete = true, role = "client", mode = "iroh" }))
      assert.are.equal(512 * 1024, cfg.iroh.transport.receive_window)
      assert.are.same({}, cfg.iroh.relay_urls)
    end)

    it("keeps relative paths relative unless given base_dir, and expands ~ with home", function()
      local cfg = assert(config.validate({ role = "client", iroh = { auth_token_file = "t",
        secret_file = "~/.config/tunnel/id" } }, { home = "/home/ada" }))
      assert.are.equal("t", cfg.iroh.auth_token_file)
      assert.are.equal("/home/ada/.config/tunnel/id", cfg.iroh.secret_file)
      cfg = assert(config.validate({ role = "client", iroh = { auth_token_file = "./t" } },
        { base_dir = "/etc/tunnel" }))
      assert.are.equal("/etc/tunnel/t", cfg.iroh.auth_token_file)
    end)

    it("rejects a non-table", function()
      local cfg, err = config.validate("role = server")
      assert.is_nil(cfg)
      assert.are.equal("the configuration must be a table, got a string (\"role = server\")",
        err)
    end)
  end)

  describe("merge", function()
    local file_cfg

    before_each(function()
      file_cfg = assert(config.validate({
        role = "server",
        iroh = {
          secret_file = "/etc/tunnel/server.key",
          auth_tokens = { TOKEN1 },
          max_sessions = 5,
          relay_urls = { "https://relay.example.net" },
          allowed_sources = { tcp = { "10.0.0.0/8" }, udp = { "10.0.0.0/8" } },
        },
      }))
    end)

    it("lets set command-line values win: defaults < file < command line", function()
      local merged = config.merge(file_cfg, {
        iroh = {
          max_sessions = 9,
          relay_urls = {}, -- an empty list is "not given": the file's value stays
          relay_only = nil,
          allowed_sources = { tcp = { "192.168.0.0/16" } },
        },
      })
      local cfg = assert(config.validate(merged, { complete = true }))
      assert.are.equal(9, cfg.iroh.max_sessions)
      assert.are.same({ "https://relay.example.net" }, cfg.iroh.relay_urls)
      assert.are.same({ "192.168.0.0/16" }, cfg.iroh.allowed_sources.tcp) -- replaced, not added
      assert.are.same({ "10.0.0.0/8" }, cfg.iroh.allowed_sources.udp) -- tables merge by key
      assert.are.equal("bbr", cfg.iroh.transport.congestion_controller) -- default stays
      assert.are.equal(5, file_cfg.iroh.max_sessions) -- inputs are not modified
    end)

    it("drops the file's alternative when the command line sets the other one", function()
      local cfg = assert(config.validate(config.merge(file_cfg, {
        iroh = { secret = SECRET, auth_tokens_file = "/etc/tunnel/tokens" },
      }), { complete = true }))
      assert.are.equal(SECRET, cfg.iroh.secret)
      assert.is_nil(cfg.iroh.secret_file)
      assert.are.equal("/etc/tunnel/tokens", cfg.iroh.auth_tokens_file)
      assert.is_nil(cfg.iroh.auth_tokens)
    end)

    it("replaces the file's forwards with a forward from the command line", function()
      local client = assert(config.load(old_cwd .. "/examples/config/client.toml"))
      local cfg = assert(config.validate(config.merge(client, {
        iroh = { source = "udp://127.0.0.1:9", target = "127.0.0.1:9" },
      }), { complete = true }))
      assert.are.same({ { source = "udp://127.0.0.1:9", target = "127.0.0.1:9", proto = "udp" } },
        config.forwards(cfg))
      -- a target alone keeps the file's request_source but still drops its forward list
      cfg = assert(config.validate(config.merge(client, { iroh = { target = "127.0.0.1:7" } }),
        { complete = true }))
      assert.are.same({ { source = "tcp://127.0.0.1:22", target = "127.0.0.1:7", proto = "tcp" } },
        config.forwards(cfg))
    end)

    it("keeps the file untouched when nothing is given", function()
      assert.are.same(file_cfg, config.merge(file_cfg, nil))
      assert.are.same(file_cfg, config.merge(file_cfg, { iroh = {} }))
    end)
  end)

  describe("paths", function()
    it("expands ~ and ~/", function()
      assert.are.equal("/home/ada", config.expand_path("~", "/home/ada"))
      assert.are.equal("/home/ada/k", config.expand_path("~/k", "/home/ada/"))
      assert.are.equal("/k", config.expand_path("~/k", "/"))
      assert.are.equal("rel/~/k", config.expand_path("rel/~/k", "/home/ada"))
      assert.are.equal("/abs", config.expand_path("/abs", "/home/ada"))
      local p, err = config.expand_path("~ada/k", "/home/x")
      assert.is_nil(p)
      assert.matches("'~ada' (another user's home directory) is not supported", err, 1, true)
      assert.has_error(function() config.expand_path(nil) end,
        "config.expand_path: path must be a string")
    end)

    it("uses $HOME when no home is given (in a child process)", function()
      local code = "local p, e = require('tunnel.config').expand_path('~/x') print(p, e)"
      local p = H.tunnel({ "-e", code }, { env = { HOME = "/home/zed" } })
      assert.are.equal(0, p.code)
      assert.are.equal("/home/zed/x\tnil\n", p.stdout)
      p = H.tunnel({ "-e", code }, { env = { HOME = false } })
      assert.are.equal("nil\t'~/x': cannot expand '~' because HOME is not set; write an " ..
        "absolute path\n", p.stdout)
    end)

    it("finds default config files", function()
      assert.are.equal("/home/ada/.config/tunnel/server.toml",
        config.default_path("server", { HOME = "/home/ada" }))
      assert.are.equal("/xdg/tunnel/vpn_client.toml",
        config.default_path("vpn_client", { HOME = "/home/ada", XDG_CONFIG_HOME = "/xdg/" }))
      -- a relative XDG_CONFIG_HOME is invalid and ignored
      assert.are.equal("/home/ada/.config/tunnel/client.toml",
        config.default_path("client", { HOME = "/home/ada", XDG_CONFIG_HOME = "rel" }))
      local p, err = config.default_path("vpn_server", {})
      assert.is_nil(p)
      assert.matches("neither XDG_CONFIG_HOME nor HOME is set", err, 1, true)
      assert.are.equal("/home/ada/.config/tunnel/relay.toml",
        config.default_path("relay", { HOME = "/home/ada" }))
      assert.has_error(function() config.default_path("relays") end,
        "config.default_path: unknown kind 'relays' (one of client, relay, server, vpn_client, " ..
        "vpn_server)")
      local proc = H.tunnel({ "-e", "print(require('tunnel.config').default_path('client'))" },
        { env = { HOME = "/home/zed", XDG_CONFIG_HOME = false } })
      assert.are.equal("/home/zed/.config/tunnel/client.toml\n", proc.stdout)
    end)

    it("loads a file named with ~", function()
      H.write_file(dir .. "/c.toml", 'role = "client"\n[iroh]\nauth_token_file = "t"\n')
      local cfg = assert(config.load("~/c.toml", { home = dir }))
      assert.are.equal(dir .. "/t", cfg.iroh.auth_token_file)
    end)
  end)

  describe("suggestions", function()
    it("measures edits with adjacent transpositions", function()
      assert.are.equal(0, config._distance("mode", "mode"))
      assert.are.equal(1, config._distance("moed", "mode"))
      assert.are.equal(1, config._distance("alowed_sources", "allowed_sources"))
      assert.are.equal(2, config._distance("relya_url", "relay_urls"))
      assert.are.equal(3, config._distance("", "abc"))
      assert.are.equal("relay_urls", config.suggest("Relay-URL", { "relay_urls", "relays" }))
      assert.is_nil(config.suggest("zzz", { "mode", "role" }))
    end)
  end)

  describe("examples/config", function()
    it("every example loads and is complete", function()
      local names = {}
      local req = assert(uv.fs_scandir(old_cwd .. "/examples/config"))
      while true do
        local name = uv.fs_scandir_next(req)
        if not name then break end
        if name:match("%.toml$") then names[#names + 1] = name end
      end
      table.sort(names)
      assert.are.same({ "client.toml", "manual_client.toml", "manual_server.toml",
        "nostr_client.toml", "nostr_server.toml", "server.toml", "vpn_client.toml",
        "vpn_server.toml" }, names)
      for _, name in ipairs(names) do
        local cfg, err = config.load(old_cwd .. "/examples/config/" .. name, { complete = true })
        assert(cfg, err)
      end
      local client = assert(config.load(old_cwd .. "/examples/config/client.toml"))
      assert.are.equal(3, #config.forwards(client))
    end)
  end)

  describe("docs/config.md", function()
    -- Parse the reference page: for each heading, the rows of its key table.
    local function doc_tables()
      local text = assert(H.read_file(old_cwd .. "/docs/config.md"))
      local tables, current = {}, nil
      for line in text:gmatch("[^\n]*") do
        local heading = line:match("^#+%s+(.*)$")
        if heading then
          current = { heading = heading, rows = {} }
          tables[#tables + 1] = current
        elseif current then
          line = line:gsub("\\|", "/") -- "`a` \| `b`" inside a cell
          local key, typ, default, roles = line:match(
            "^|%s*`([%w_]+)`%s*|([^|]*)|([^|]*)|([^|]*)|")
          if key then
            current.rows[key] = { type = typ, default = default:match("^%s*(.-)%s*$"),
              roles = roles:match("^%s*(.-)%s*$") }
          end
        end
      end
      return tables
    end

    local function render_default(f)
      local d = f.default
      if d == nil or f.type == "table" then return nil end
      if f.type == "size" then return string.format("%d MiB", d / 1048576) end
      if type(d) == "string" then return '"' .. d .. '"' end
      if type(d) == "table" then
        if #d == 0 then return "[]" end
        local parts = {}
        for i, v in ipairs(d) do parts[i] = '"' .. v .. '"' end
        return "[" .. table.concat(parts, ", ") .. "]"
      end
      return tostring(d)
    end

    -- Every table spec of the schema with the heading text it is documented under.
    local function schema_tables()
      local out = {}
      local function walk(spec, path)
        out[#out + 1] = { spec = spec, path = path }
        for _, f in ipairs(spec.fields) do
          local p = path == "" and f.name or path .. "." .. f.name
          if f.type == "table" then walk(f, p) end
          if f.type == "list" and f.of.type == "table" then walk(f.of, p) end
        end
      end
      walk(config.schema, "")
      return out
    end

    it("documents exactly the schema's keys, roles and defaults", function()
      local docs = doc_tables()
      local checked = {}
      for _, st in ipairs(schema_tables()) do
        local want = st.path == "" and "Top level" or "[" .. st.path .. "]"
        local doc
        for _, t in ipairs(docs) do
          if t.heading:find(want, 1, true) then doc = t break end
        end
        assert(doc, "docs/config.md has no heading for " .. want)
        checked[doc] = checked[doc] or {}
        for _, f in ipairs(st.spec.fields) do
          local row = doc.rows[f.name]
          assert(row, string.format("docs/config.md: %s lacks key '%s'", want, f.name))
          checked[doc][f.name] = checked[doc][f.name] or {}
          for _, r in ipairs(f.roles) do checked[doc][f.name][r] = true end
          local d = render_default(f)
          if d then
            assert(row.default:find(d, 1, true), string.format(
              "docs/config.md: %s '%s' default should show %s, shows %s", want, f.name, d,
              row.default))
          elseif not f.alias_of and f.type ~= "table" then
            assert.are.equal("—", row.default, want .. " " .. f.name)
          end
        end
      end
      -- roles: the union over every place a documented table is used; and no stale rows
      for doc, known in pairs(checked) do
        for key, row in pairs(doc.rows) do
          assert(known[key], string.format("docs/config.md: %s documents '%s', which the " ..
            "schema does not have", doc.heading, key))
          local roles = {}
          for _, r in ipairs(config.ROLES) do
            if known[key][r] then roles[#roles + 1] = r end
          end
          local text = #roles == 4 and "all" or table.concat(roles, ", ")
          assert.are.equal(text, row.roles, doc.heading .. " " .. key)
        end
      end
    end)
  end)
end)
