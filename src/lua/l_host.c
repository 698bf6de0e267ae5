/*
 * tunnel.core.host: the process as seen from Lua (exit, stop, shutdown hook, versions).
 */
#include "host/host.h"
#include "lua/state.h"
#include "net/busypoll.h"
#include "quic/version.h"

#include <curl/curl.h>
#include <gnutls/gnutls.h>
#include "lua/modules.h"

#include <lauxlib.h>
#include <luajit.h>
#include <sodium.h>
#include <uv.h>

/* exit([code]): leave now. Runs the shutdown sequence, then exits with `code` (default 0). */
static int l_host_exit(lua_State *L)
{
    struct tun_host *h = tun_host_get();
    int code = 0;
    if (lua_isboolean(L, 1))
        code = lua_toboolean(L, 1) ? 0 : 1;
    else
        code = (int)luaL_optinteger(L, 1, 0);
    tun_host_stop(h, code);
    return tun_lua_raise_exit(L);
}

/* stop([code]): finish the current callback, then shut down and exit with `code`. */
static int l_host_stop(lua_State *L)
{
    tun_host_stop(tun_host_get(), (int)luaL_optinteger(L, 1, 0));
    return 0;
}

static int l_host_exiting(lua_State *L)
{
    lua_pushboolean(L, tun_host_get()->exiting);
    return 1;
}

/* set_shutdown(fn): the one Lua function the host calls at shutdown (tunnel.host owns it). */
static int l_host_set_shutdown(lua_State *L)
{
    if (!lua_isnil(L, 1))
        luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "tunnel.shutdown");
    return 0;
}

/* is_exit(err): whether an error value is the exit sentinel (code that catches errors with
 * pcall must re-raise it, or tunnel.exit() would not leave). */
static int l_host_is_exit(lua_State *L)
{
    lua_pushboolean(L, tun_lua_is_exit(L, 1));
    return 1;
}

static int l_host_versions(lua_State *L)
{
    lua_newtable(L);
    lua_pushstring(L, TUNNEL_VERSION);
    lua_setfield(L, -2, "tunnel");
    lua_pushstring(L, LUAJIT_VERSION);
    lua_setfield(L, -2, "luajit");
    lua_pushstring(L, uv_version_string());
    lua_setfield(L, -2, "libuv");
    lua_pushstring(L, tun_quic_ngtcp2_version());
    lua_setfield(L, -2, "ngtcp2");
    lua_pushstring(L, gnutls_check_version(NULL));
    lua_setfield(L, -2, "gnutls");
    lua_pushstring(L, sodium_version_string());
    lua_setfield(L, -2, "libsodium");
    lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
    lua_setfield(L, -2, "libcurl");
    lua_pushstring(L, TUNNEL_SECP256K1_VERSION);
    lua_setfield(L, -2, "libsecp256k1");
    lua_pushstring(L, TUNNEL_LIBEDIT_VERSION);
    lua_setfield(L, -2, "libedit");
    return 1;
}

static int l_host_dev_mode(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_getfield(L, -1, "tunnel.cli");
    lua_pushboolean(L, lua_isnil(L, -1));
    return 1;
}

/* busy_poll([us]): set the longest poll before sleeping (µs, 0 turns it off; net/busypoll.h),
 * and return the poller's state: max_us, window_us, polls (times it started), caught (data
 * that arrived while it polled), poll_ms (time spent polling). */
static int l_host_busy_poll(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) {
        lua_Integer us = luaL_checkinteger(L, 1);
        luaL_argcheck(L, us >= 0 && us <= TUN_BUSYPOLL_MAX_US, 1, "must be 0 to 1000 (µs)");
        tun_busypoll_set_max_us((unsigned)us);
    }
    struct tun_bp_state s = tun_busypoll_state();
    lua_createtable(L, 0, 5);
    lua_pushnumber(L, (lua_Number)(s.max_ns / 1000));
    lua_setfield(L, -2, "max_us");
    lua_pushnumber(L, (lua_Number)(s.window_ns / 1000));
    lua_setfield(L, -2, "window_us");
    lua_pushnumber(L, (lua_Number)s.polls);
    lua_setfield(L, -2, "polls");
    lua_pushnumber(L, (lua_Number)s.caught);
    lua_setfield(L, -2, "caught");
    lua_pushnumber(L, (lua_Number)(s.poll_ns / 1000000));
    lua_setfield(L, -2, "poll_ms");
    return 1;
}

int luaopen_tunnel_core_host(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"exit", l_host_exit},
        {"stop", l_host_stop},
        {"exiting", l_host_exiting},
        {"set_shutdown", l_host_set_shutdown},
        {"versions", l_host_versions},
        {"is_exit", l_host_is_exit},
        {"dev_mode", l_host_dev_mode},
        {"busy_poll", l_host_busy_poll},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
