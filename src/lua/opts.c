#include "lua/opts.h"

#include <lauxlib.h>
#include <string.h>

void tun_lua_check_keys(lua_State *L, int t, const char *const *known, const char *what)
{
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        int ok = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *k = known; *k && !ok; k++)
                ok = strcmp(*k, lua_tostring(L, -1)) == 0;
        if (!ok) {
            if (lua_type(L, -1) == LUA_TSTRING)
                luaL_error(L, "unknown %s '%s'", what, lua_tostring(L, -1));
            luaL_error(L, "%s names must be strings, got a %s", what, luaL_typename(L, -1));
        }
    }
}

void tun_lua_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction gc,
                       lua_CFunction tostring)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

void tun_lua_new_module(lua_State *L, const luaL_Reg *fns)
{
    lua_newtable(L);
    luaL_register(L, NULL, fns);
}

uint64_t tun_lua_opt_uint(lua_State *L, int t, const char *k, uint64_t def, uint64_t max)
{
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    if (lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "option '%s' must be a number", k);
    lua_Number n = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (n < 0 || n > (lua_Number)max || n != (lua_Number)(uint64_t)n)
        luaL_error(L, "option '%s' must be a whole number from 0 to %llu", k,
                   (unsigned long long)max);
    return (uint64_t)n;
}

const char *tun_lua_opt_str(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    const char *s = NULL;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "option '%s' must be a string", k);
        s = lua_tostring(L, -1); /* kept alive by the option table */
    }
    lua_pop(L, 1);
    return s;
}
