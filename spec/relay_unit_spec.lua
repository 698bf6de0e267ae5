-- examples/tunnel-relay.service: the command line the unit runs is valid. Its ExecStart is run
-- with this build's binary, a certificate made for the test in place of the credentials, and
-- port 0 in place of 443/3478 (nothing here runs systemd).
local H = require "helper"

local UNIT = "examples/tunnel-relay.service"

--- The ExecStart command of the unit as a list of words (continuation lines joined).
local function exec_start()
  local text = assert(H.read_file(UNIT))
  text = text:gsub("\\\n%s*", " ")
  local line = assert(text:match("\nExecStart=([^\n]+)"), "no ExecStart in " .. UNIT)
  local words = {}
  for w in line:gmatch("%S+") do
    words[#words + 1] = w
  end
  return words
end

describe("examples/tunnel-relay.service", function()
  after_each(H.cleanup)

  it("runs a TLS relay with STUN from its ExecStart line", function()
    local dir = H.tmpdir()
    assert.equal(0, os.execute(string.format(
      "certtool --generate-privkey --key-type=ecdsa --outfile %s/key >/dev/null 2>&1", dir)))
    H.write_file(dir .. "/tmpl", 'cn = "localhost"\nexpiration_days = 1\ntls_www_server\n')
    assert.equal(0, os.execute(string.format("certtool --generate-self-signed --load-privkey " ..
      "%s/key --template %s/tmpl --outfile %s/cert >/dev/null 2>&1", dir, dir, dir)))
    local words = exec_start()
    assert.equal("/usr/local/bin/tunnel", words[1])
    local argv = {}
    for i = 2, #words do
      local w = words[i]:gsub("%%d", dir):gsub("0%.0%.0%.0:%d+", "127.0.0.1:0")
      argv[#argv + 1] = w
    end
    assert.same({ "relay", "--listen", "127.0.0.1:0", "--tls-cert", dir .. "/cert", "--tls-key",
      dir .. "/key", "--stun-listen", "127.0.0.1:0" }, argv)
    local p = H.start(argv, { env = { XDG_RUNTIME_DIR = dir } })
    local ok = p:wait_output("relay listening on https://127%.0%.0%.1:%d+", 20, "stdout")
    p:kill("sigterm")
    p:wait(10)
    assert.is_true(ok, p.stdout .. p.stderr)
    assert.matches("STUN responder on 127%.0%.0%.1:%d+", p.stdout)
    assert.equal(0, p.code, p.stderr)
  end)
end)
