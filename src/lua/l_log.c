/*
 * tunnel.core.log: the C logging sink as seen from Lua. tunnel.log builds the friendly API
 * (formatting, per-module loggers) on top of this.
 */
#include "util/error.h"
#include "util/log.h"

#include "lua/modules.h"

#include <lauxlib.h>
#include <string.h>

static int check_group(lua_State *L, int idx, int create)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int g = (int)lua_tointeger(L, idx);
        if (g < 0 || g >= tun_log_group_count())
            luaL_argerror(L, idx, "no such log group");
        return g;
    }
    const char *name = luaL_checkstring(L, idx);
    int g = create ? tun_log_group(name) : tun_log_group_find(name);
    if (g < 0)
        luaL_argerror(L, idx, lua_pushfstring(L, "unknown log group '%s'", name));
    return g;
}

static int check_level(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int lvl = (int)lua_tointeger(L, idx);
        if (lvl < TUN_LOG_OFF || lvl > TUN_LOG_TRACE)
            luaL_argerror(L, idx, "log level out of range");
        return lvl;
    }
    const char *s = luaL_checkstring(L, idx);
    int lvl = tun_log_level_parse(s);
    if (lvl == TUN_EINVAL)
        luaL_argerror(L, idx,
                      lua_pushfstring(L,
                                      "unknown log level '%s' (use error, warn, info, "
                                      "debug, trace or off)",
                                      s));
    return lvl;
}

/* write(group, level, message) */
static int l_log_write(lua_State *L)
{
    int g = check_group(L, 1, 1);
    int lvl = check_level(L, 2);
    size_t len;
    const char *msg = luaL_checklstring(L, 3, &len);
    if (lvl >= TUN_LOG_ERROR)
        tun_log_write(g, lvl, msg, len);
    return 0;
}

/* enabled(group, level) -> boolean */
static int l_log_enabled(lua_State *L)
{
    int g = check_group(L, 1, 1);
    lua_pushboolean(L, tun_log_enabled(g, check_level(L, 2)));
    return 1;
}

/* group(name) -> id (created when new) */
static int l_log_group(lua_State *L)
{
    lua_pushinteger(L, check_group(L, 1, 1));
    return 1;
}

/* set_level(group|nil, level): nil or "*" changes every group and the default. */
static int l_log_set_level(lua_State *L)
{
    int lvl = check_level(L, 2);
    int g = -1;
    if (!lua_isnil(L, 1) &&
        !(lua_type(L, 1) == LUA_TSTRING && strcmp(lua_tostring(L, 1), "*") == 0))
        g = check_group(L, 1, 1);
    tun_log_set_level(g, lvl);
    return 0;
}

/* get_level(group) -> level name */
static int l_log_get_level(lua_State *L)
{
    int g = lua_isnoneornil(L, 1) ? -1 : check_group(L, 1, 0);
    lua_pushstring(L, tun_log_level_name(tun_log_get_level(g)));
    return 1;
}

/* groups() -> { name = level, ... } */
static int l_log_groups(lua_State *L)
{
    lua_newtable(L);
    for (int i = 0; i < tun_log_group_count(); i++) {
        lua_pushstring(L, tun_log_level_name(tun_log_get_level(i)));
        lua_setfield(L, -2, tun_log_group_name(i));
    }
    return 1;
}

static int l_log_set_color(lua_State *L)
{
    tun_log_set_color(lua_toboolean(L, 1));
    return 0;
}

int luaopen_tunnel_core_log(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"write", l_log_write},         {"enabled", l_log_enabled},
        {"group", l_log_group},         {"set_level", l_log_set_level},
        {"get_level", l_log_get_level}, {"groups", l_log_groups},
        {"set_color", l_log_set_color}, {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
