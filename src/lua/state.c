#include "lua/state.h"
#include "lua/embedded.h"
#include "lua/modules.h"
#include "util/log.h"

#include <lauxlib.h>
#include <lualib.h>
#include <luv/luv.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    lua_CFunction open;
} core_modules[] = {
#define XX(n) {"tunnel.core." #n, luaopen_tunnel_core_##n},
#include "core_modules.h"
#undef XX
    {NULL, NULL},
};

static char exit_sentinel;

int tun_lua_is_exit(lua_State *L, int idx)
{
    return lua_touserdata(L, idx) == &exit_sentinel;
}

int tun_lua_raise_exit(lua_State *L)
{
    lua_pushlightuserdata(L, &exit_sentinel);
    return lua_error(L);
}

int tun_lua_traceback(lua_State *L)
{
    if (!lua_isstring(L, 1))
        return 1; /* the exit sentinel, or an error object the caller wants intact */
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 2);
    lua_call(L, 2, 1);
    return 1;
}

int tun_lua_pcall(lua_State *L, int nargs, int nresults)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, tun_lua_traceback);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return rc;
}

/*
 * luv calls this for every Lua callback (timers, sockets, processes, ...). luv's default
 * handler exits the process on an uncaught error; a tunnel must keep serving its other
 * sessions, so we log the traceback and carry on.
 */
static int luv_callback_pcall(lua_State *L, int nargs, int nresults, int flags)
{
    int base = lua_gettop(L) - nargs; /* index of the function */
    lua_pushcfunction(L, tun_lua_traceback);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    if (rc == 0)
        return nresults == LUA_MULTRET ? lua_gettop(L) - base + 1 : nresults;
    if (!tun_lua_is_exit(L, -1)) {
        const char *msg = lua_tostring(L, -1);
        tun_log(TUN_LOG_G_LUA, TUN_LOG_ERROR, "error in callback: %s",
                msg ? msg : "(error object is not a string)");
    }
    lua_pop(L, 1);
    return -rc;
}

static int preload_blob(lua_State *L)
{
    const struct tun_lua_blob *b = lua_touserdata(L, lua_upvalueindex(1));
    char chunk[256];
    snprintf(chunk, sizeof(chunk), "=%s", b->name);
    if (luaL_loadbuffer(L, (const char *)b->data, b->len, chunk) != 0)
        return lua_error(L);
    lua_pushvalue(L, 1); /* the module name, as require passes it */
    lua_call(L, 1, 1);
    return 1;
}

static void set_dev_path(lua_State *L, const char *dir)
{
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

lua_State *tun_lua_new(uv_loop_t *loop, const char *dev_dir)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return NULL;
    luaL_openlibs(L);

    /* Both hooks must be set before luaopen_luv, or luv makes its own loop and handler. */
    luv_set_loop(L, loop);
    luv_set_callback(L, luv_callback_pcall);
    luaopen_luv(L);
    /* uv.walk would hand luv every handle of the loop, including C ones whose data luv would
     * misread; C subsystems own most handles here, so walking is refused. */
    if (luaL_loadstring(L, "local uv = ...; uv.walk = function() error('uv.walk is not "
                           "available in tunnel: the loop also runs C handles', 2) end") == 0) {
        lua_pushvalue(L, -2);
        lua_call(L, 1, 0);
    } else {
        lua_pop(L, 1);
    }
    /* require "luv" must give this instance, never a second luv.so with its own loop. */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "luv");
    lua_pop(L, 3);

    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (int i = 0; core_modules[i].name; i++) {
        lua_pushcfunction(L, core_modules[i].open);
        lua_setfield(L, -2, core_modules[i].name);
    }
    if (!dev_dir) {
        for (const struct tun_lua_blob *b = tun_lua_blobs; b->name; b++) {
            lua_pushlightuserdata(L, (void *)b);
            lua_pushcclosure(L, preload_blob, 1);
            lua_setfield(L, -2, b->name);
        }
    }
    lua_pop(L, 2);
    if (dev_dir)
        set_dev_path(L, dev_dir);
    return L;
}
