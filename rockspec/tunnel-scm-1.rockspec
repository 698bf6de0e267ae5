rockspec_format = "3.0"
package = "tunnel"
version = "scm-1"
source = {
  url = "git+file:///dev/null",
}
description = {
  summary = "Peer-to-peer TCP/UDP port forwarder and VPN with NAT traversal, scriptable in Lua",
  detailed = [[
tunnel forwards TCP and UDP ports (and routes subnets) between machines behind NAT over an
end-to-end encrypted QUIC connection. C does the per-packet work; an embedded LuaJIT runtime
runs modes, configuration, policy hooks and the command line. The rock installs the `tunnel`
binary (which embeds its Lua modules) and the Lua sources.
]],
  license = "MIT",
  labels = { "networking", "quic", "vpn", "nat-traversal" },
}
dependencies = {
  "lua >= 5.1",
}
-- System libraries come from Debian packages: see scripts/install-deps.sh.
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    BUILD_TESTING = "OFF",
    TUNNEL_WERROR = "OFF",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    BINDIR = "$(BINDIR)",
    LUADIR = "$(LUADIR)",
  },
}
test = {
  type = "command",
  command = "make test",
}
