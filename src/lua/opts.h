/* Option-table helpers shared by the tunnel.core.* bindings. */
#ifndef TUN_LUA_OPTS_H
#define TUN_LUA_OPTS_H

#include <lua.h>

/* Raise a Lua error for a key of table `t` that is not in the NULL-terminated `known` list:
 * "unknown <what> 'k'" (what: "option", "record field", ...). */
void tun_lua_check_keys(lua_State *L, int t, const char *const *known, const char *what);

#endif
