/*
 * Calls between the Lua bindings that share a QUIC endpoint: tunnel.core.fwd owns endpoints,
 * tunnel.core.ice runs ICE sessions on their sockets.
 */
#ifndef TUN_LUA_L_SHARED_H
#define TUN_LUA_L_SHARED_H

#include "quic/quic.h"

#include <lua.h>

/* The endpoint of the tunnel.core.fwd server or client at stack index idx, or NULL (not one,
 * or closed). */
struct tun_qep *tun_lua_fwd_endpoint(lua_State *L, int idx);

/* Called (when set) just before a tunnel.core.fwd object closes its endpoint; tunnel.core.ice
 * sets it so that its sessions stop using that socket. A hook rather than a direct call keeps
 * tunnel.core.fwd usable without tunnel.core.ice. */
extern void (*tun_lua_endpoint_closing)(struct tun_qep *ep);

#endif
