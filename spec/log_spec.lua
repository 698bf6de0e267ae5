-- The logging sink, from Lua and through the command line.
local H = require "helper"
local log = require "tunnel.log"

describe("tunnel.log", function()
  after_each(function()
    log.set_level(nil, "info")
  end)

  it("changes levels per group at run time", function()
    log.set_level("quic", "debug")
    assert.equal("debug", log.get_level("quic"))
    assert.equal("info", log.get_level("relay"))
    log.set_level("*", "warn")
    assert.equal("warn", log.get_level("quic"))
    assert.equal("warn", log.levels().ctl)
  end)

  it("rejects unknown levels with a message listing the valid ones", function()
    assert.has_error(function() log.set_level("quic", "loud") end)
    local ok, err = log.apply_spec("info,quic=loud")
    assert.is_nil(ok)
    assert.matches("quic=loud", err)
    assert.matches("debug", err)
  end)

  it("creates groups for scripts", function()
    local g = log.group("myapp")
    assert.equal(g, log.group("myapp"))
    assert.equal("info", log.get_level("myapp"))
    assert.is_true(g.enabled("info"))
    assert.is_false(g.enabled("debug"))
  end)
end)

describe("log output", function()
  local code = [[
    local log = require "tunnel.log"
    log.info("info %d", 1)
    log.debug("debug %s", "two")
    log.group("quic").debug("quic debug")
    log.trace("trace")
    log.warn("evil\n2026-01-01T00:00:00.000Z ERROR host: forged\27[2J")
  ]]

  it("has a timestamp, level and group, and escapes control characters", function()
    local p = H.tunnel({ "-e", code })
    assert.equal(0, p.code)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ INFO  lua: info 1\n", p.stderr)
    assert.not_matches("debug two", p.stderr)
    -- The newline inside a message cannot start a new (forged) line.
    assert.matches("WARN  lua: evil\\n2026%-01%-01T00:00:00.000Z ERROR host: forged\\x1b%[2J\n",
      p.stderr)
    local lines = select(2, p.stderr:gsub("\n", ""))
    assert.equal(2, lines)
  end)

  it("-v shows debug, -vv trace, -q hides info", function()
    assert.matches("debug two", H.tunnel({ "-v", "-e", code }).stderr)
    assert.not_matches("lua: trace", H.tunnel({ "-v", "-e", code }).stderr)
    assert.matches("lua: trace", H.tunnel({ "-vv", "-e", code }).stderr)
    local q = H.tunnel({ "-q", "-e", code }).stderr
    assert.not_matches("info 1", q)
    assert.matches("evil", q)
  end)

  it("--log-level and TUNNEL_LOG set levels per group", function()
    local s = H.tunnel({ "--log-level", "warn,quic=debug", "-e", code }).stderr
    assert.matches("quic: quic debug", s)
    assert.not_matches("info 1", s)
    s = H.tunnel({ "-e", code }, { env = { TUNNEL_LOG = "quic=debug" } }).stderr
    assert.matches("quic: quic debug", s)
    assert.not_matches("debug two", s)
    local p = H.tunnel({ "--log-level", "quic=chatty", "-e", "" })
    assert.equal(2, p.code)
    assert.matches("bad log level 'quic=chatty'", p.stderr)
  end)
end)
