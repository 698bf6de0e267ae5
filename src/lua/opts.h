/* Option-table helpers shared by the tunnel.core.* bindings. */
#ifndef TUN_LUA_OPTS_H
#define TUN_LUA_OPTS_H

#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>

/* Raise a Lua error for a key of table `t` that is not in the NULL-terminated `known` list:
 * "unknown <what> 'k'" (what: "option", "record field", ...). */
void tun_lua_check_keys(lua_State *L, int t, const char *const *known, const char *what);

/*
 * Register the metatable `name` of a binding's objects: `methods` as __index, `gc` as __gc
 * (bindings anchor open objects in the registry, so __gc only meets closed ones, or runs at
 * lua_close after the host's closer: their close is idempotent), `tostring` as __tostring,
 * and __name. Leaves the stack as it found it.
 */
void tun_lua_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                       lua_CFunction tostring);

/* Option `k` of the option table at `t`: `def` when absent, else a whole number from 0 to
 * `max`; anything else raises "option 'k' must be ...". */
uint64_t tun_lua_opt_uint(lua_State *L, int t, const char *k, uint64_t def, uint64_t max);
/* Option `k`: NULL when absent, else a string (kept alive by the option table); anything else
 * raises "option 'k' must be a string". */
const char *tun_lua_opt_str(lua_State *L, int t, const char *k);

/* A module table of `fns`, pushed. */
void tun_lua_new_module(lua_State *L, const luaL_Reg *fns);

#endif
