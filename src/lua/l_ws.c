/*
 * tunnel.core.ws: a WebSocket client connection (web/wsclient.h) as a Lua object.
 *
 *   local c = ws.connect{ url = "wss://relay.example/", cafile = nil, proxy = nil,
 *                         connect_ms = n, handshake_ms = n, ping_ms = n, dead_ms = n,
 *                         max_message = n, max_queued = n,
 *                         on_open = function(c) end,
 *                         on_message = function(c, data, is_binary) end,
 *                         on_close = function(c, code, reason) end }
 *   c:send(data [, is_binary]) -> true | nil, err
 *   c:close([code [, reason]])  c:state()  c:stats()  c:url()
 *
 * The client's callbacks run from libuv callbacks, never inside curl or inside one of these
 * methods, so Lua is called directly from them; errors in Lua handlers are logged. A
 * connection is anchored in the registry from connect until on_close has run, so a script may
 * drop its reference. At host shutdown the closer sends a 1001 close frame (without waiting)
 * and frees every connection without calling on_close.
 */
#include "lua/modules.h"

#include "lua/bind.h"
#include "lua/opts.h"

#include "util/error.h"
#include "web/ws.h"
#include "web/wsclient.h"

#include <lauxlib.h>
#include <luv/luv.h>
#include <stdlib.h>
#include <string.h>

#define CLIENT_MT "tunnel.ws.client"

static const char *const state_names[] = {"connecting", "open", "closing", "closed"};

/* The userdata itself; it cannot be collected while anchored, and the C client is closed
 * before the anchor goes, so the client's ud never dangles. */
struct wobj {
    lua_State *L;
    int self_ref, open_ref, msg_ref, close_ref;
    struct tun_wsclient *ws; /* NULL once released */
    struct tun_wsclient_stats final;
    char *url;
    size_t max_queued;
    struct tun_lua_link link;
};

static void live_close(struct tun_lua_link *n);
static struct tun_lua_live live = {.close = live_close};

/* ---- lifecycle ------------------------------------------------------------------------------ */

/* Free the C client (no callback after this) and drop every reference: the object keeps only
 * its final stats. */
static void release(struct wobj *o, int code, const char *reason)
{
    if (!o->ws)
        return;
    tun_wsclient_stats(o->ws, &o->final);
    o->final.state = TUN_WSCLIENT_CLOSED;
    tun_wsclient_close(o->ws, code, reason);
    o->ws = NULL;
    tun_lua_link_remove(&live.head, &o->link);
    lua_State *L = o->L;
    luaL_unref(L, LUA_REGISTRYINDEX, o->open_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, o->msg_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, o->close_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, o->self_ref);
    o->open_ref = o->msg_ref = o->close_ref = o->self_ref = LUA_NOREF;
}

static void live_close(struct tun_lua_link *n)
{
    release(TUN_LUA_CONTAINER(n, struct wobj, link), TUN_WS_CLOSE_GOING_AWAY, "shutting down");
}

/* ---- callbacks ------------------------------------------------------------------------------ */

/* Push the handler `ref` and the object; 0 when there is no handler. */
static int push_handler(struct wobj *o, int ref)
{
    if (ref == LUA_NOREF || o->self_ref == LUA_NOREF)
        return 0;
    lua_rawgeti(o->L, LUA_REGISTRYINDEX, ref);
    lua_rawgeti(o->L, LUA_REGISTRYINDEX, o->self_ref);
    return 1;
}

static void c_on_open(struct tun_wsclient *c, void *ud)
{
    (void)c;
    struct wobj *o = ud;
    int top = lua_gettop(o->L);
    if (push_handler(o, o->open_ref))
        tun_lua_call_handler(o->L, 1, "a WebSocket on_open handler");
    lua_settop(o->L, top);
}

static void c_on_message(struct tun_wsclient *c, int opcode, const uint8_t *data, size_t len,
                         void *ud)
{
    (void)c;
    struct wobj *o = ud;
    lua_State *L = o->L;
    int top = lua_gettop(L);
    if (push_handler(o, o->msg_ref)) {
        lua_pushlstring(L, (const char *)data, len);
        lua_pushboolean(L, opcode == TUN_WS_BINARY);
        tun_lua_call_handler(L, 3, "a WebSocket on_message handler");
    }
    lua_settop(L, top);
}

static void c_on_close(struct tun_wsclient *c, int code, const char *reason, void *ud)
{
    (void)c;
    struct wobj *o = ud;
    lua_State *L = o->L;
    int top = lua_gettop(L);
    int have = push_handler(o, o->close_ref);
    if (have) {
        if (code == TUN_WS_CLOSE_ABNORMAL)
            lua_pushnil(L); /* a failure: reason says what failed */
        else
            lua_pushinteger(L, code);
        lua_pushstring(L, reason);
    }
    /* Released first: the handler sees state "closed" and may connect again at once. */
    release(o, 0, NULL);
    if (have)
        tun_lua_call_handler(L, 3, "a WebSocket on_close handler");
    lua_settop(L, top);
}

static const struct tun_wsclient_cbs client_cbs = {c_on_open, c_on_message, c_on_close};

/* ---- options -------------------------------------------------------------------------------- */

static const char *const connect_keys[] = {
    "url",         "cafile",     "proxy",   "connect_ms", "handshake_ms", "ping_ms", "dead_ms",
    "max_message", "max_queued", "on_open", "on_message", "on_close",     NULL,
};

/* A handler option: checked by check_fn before anything is allocated, then referenced. */
static void check_fn(lua_State *L, const char *k)
{
    lua_getfield(L, 1, k);
    if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
        luaL_error(L, "ws.connect: option '%s' must be a function", k);
    lua_pop(L, 1);
}

static int ref_fn(lua_State *L, const char *k)
{
    lua_getfield(L, 1, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return LUA_NOREF;
    }
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---- functions and methods ------------------------------------------------------------------ */

#define DAY_MS 86400000u

static int l_connect(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    tun_lua_check_keys(L, 1, connect_keys, "option");
    const char *url = tun_lua_opt_str(L, 1, "url");
    if (!url)
        return luaL_error(L, "ws.connect: option 'url' is required (ws://host:port/path)");
    const char *why = NULL;
    if (tun_wsclient_check_url(url, &why) != 0)
        return luaL_error(L, "ws.connect: bad url '%s': %s", url, why);
    const char *proxy = tun_lua_opt_str(L, 1, "proxy");
    if (proxy && strncmp(proxy, "socks5://", 9) != 0 && strncmp(proxy, "socks5h://", 10) != 0)
        return luaL_error(L, "ws.connect: proxy must be socks5://host:port or socks5h://host:port "
                             "(socks5h lets the proxy resolve names)");
    struct tun_wsclient_cfg cfg = {
        .url = url,
        .proxy = proxy,
        .cafile = tun_lua_opt_str(L, 1, "cafile"),
        .connect_ms = (uint32_t)tun_lua_opt_uint(L, 1, "connect_ms", 10000, DAY_MS),
        .handshake_ms = (uint32_t)tun_lua_opt_uint(L, 1, "handshake_ms", 10000, DAY_MS),
        .ping_ms = (uint32_t)tun_lua_opt_uint(L, 1, "ping_ms", 30000, DAY_MS),
        .dead_ms = (uint32_t)tun_lua_opt_uint(L, 1, "dead_ms", 90000, DAY_MS),
        .max_message = (size_t)tun_lua_opt_uint(L, 1, "max_message", TUN_WS_DEFAULT_MAX_MESSAGE,
                                                TUN_WS_MAX_MESSAGE_LIMIT),
        .max_queued =
            (size_t)tun_lua_opt_uint(L, 1, "max_queued", 1024 * 1024, TUN_WS_MAX_MESSAGE_LIMIT),
    };
    if (cfg.connect_ms == 0 || cfg.handshake_ms == 0 || cfg.max_message == 0 || cfg.max_queued == 0)
        return luaL_error(L, "ws.connect: connect_ms, handshake_ms, max_message and max_queued "
                             "must be above 0 (ping_ms and dead_ms take 0 for never)");
    check_fn(L, "on_open");
    check_fn(L, "on_message");
    check_fn(L, "on_close");
    char *url_copy = strdup(url);
    if (!url_copy)
        return luaL_error(L, "out of memory");
    struct wobj *o = lua_newuserdata(L, sizeof(*o));
    memset(o, 0, sizeof(*o));
    o->L = luv_state(L);
    o->url = url_copy;
    o->max_queued = cfg.max_queued;
    o->self_ref = o->open_ref = o->msg_ref = o->close_ref = LUA_NOREF;
    luaL_getmetatable(L, CLIENT_MT);
    lua_setmetatable(L, -2);
    int rc = tun_wsclient_new(luv_loop(L), &cfg, &client_cbs, o, &o->ws);
    if (rc != 0) {
        o->ws = NULL;
        return tun_lua_push_fail(L, rc, "cannot start a WebSocket connection to %s", url);
    }
    o->open_ref = ref_fn(L, "on_open");
    o->msg_ref = ref_fn(L, "on_message");
    o->close_ref = ref_fn(L, "on_close");
    lua_pushvalue(L, -1);
    o->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    tun_lua_live_add(&live, &o->link);
    return 1;
}

static struct wobj *check_client(lua_State *L)
{
    return luaL_checkudata(L, 1, CLIENT_MT);
}

static int obj_state(const struct wobj *o)
{
    return o->ws ? tun_wsclient_state(o->ws) : TUN_WSCLIENT_CLOSED;
}

static int l_send(lua_State *L)
{
    struct wobj *o = check_client(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    int binary = lua_toboolean(L, 3);
    int state = obj_state(o);
    if (state != TUN_WSCLIENT_OPEN) {
        lua_pushnil(L);
        lua_pushfstring(L, "the WebSocket to %s is not open (it is %s)", o->url,
                        state_names[state]);
        return 2;
    }
    int rc = tun_wsclient_send(o->ws, binary ? TUN_WS_BINARY : TUN_WS_TEXT, data, len);
    if (rc == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    if (rc == TUN_EAGAIN) {
        struct tun_wsclient_stats st;
        tun_wsclient_stats(o->ws, &st);
        lua_pushfstring(L,
                        "the send queue to %s is full (%d bytes waiting for the network; "
                        "max_queued is %d): try again later",
                        o->url, (int)st.queued, (int)o->max_queued);
    } else if (rc == TUN_ETOOBIG) {
        lua_pushfstring(L, "a message of %d bytes does not fit the send queue (max_queued %d)",
                        (int)len, (int)o->max_queued);
    } else if (rc == TUN_EFORMAT) {
        lua_pushstring(L, "text messages must be UTF-8 (send other bytes as binary)");
    } else {
        lua_pushfstring(L, "cannot send to %s: %s", o->url, tun_strerror(rc));
    }
    return 2;
}

static int l_close(lua_State *L)
{
    struct wobj *o = check_client(L);
    int code = (int)luaL_optinteger(L, 2, TUN_WS_CLOSE_NORMAL);
    size_t rl = 0;
    const char *reason = luaL_optlstring(L, 3, NULL, &rl);
    if (!tun_ws_close_code_ok(code))
        return luaL_argerror(L, 2, "a close code is 1000-1003, 1007-1014 or 3000-4999");
    if (reason && (rl > TUN_WS_MAX_CLOSE_REASON || strlen(reason) != rl ||
                   !tun_ws_utf8_valid((const uint8_t *)reason, rl)))
        return luaL_argerror(L, 3, "a close reason is UTF-8 text of at most 123 bytes");
    int state = obj_state(o);
    if (state == TUN_WSCLIENT_CONNECTING || state == TUN_WSCLIENT_OPEN)
        tun_wsclient_shutdown(o->ws, code, reason);
    return 0;
}

static int l_state(lua_State *L)
{
    struct wobj *o = check_client(L);
    lua_pushstring(L, state_names[obj_state(o)]);
    return 1;
}

static int l_stats(lua_State *L)
{
    struct wobj *o = check_client(L);
    struct tun_wsclient_stats st;
    if (o->ws)
        tun_wsclient_stats(o->ws, &st);
    else
        st = o->final;
    lua_createtable(L, 0, 5);
#define F(name) TUN_LUA_SET_NUMBER(L, st, name)
    F(tx_messages);
    F(rx_messages);
    F(tx_bytes);
    F(rx_bytes);
    F(queued);
#undef F
    return 1;
}

static int l_url(lua_State *L)
{
    struct wobj *o = check_client(L);
    lua_pushstring(L, o->url);
    return 1;
}

static int l_gc(lua_State *L)
{
    struct wobj *o = lua_touserdata(L, 1);
    /* Only unanchored (released) objects are collected, except at lua_close, after the
     * host's closer: either way there is nothing left but the URL. */
    if (o->ws)
        release(o, 0, NULL);
    free(o->url);
    o->url = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    struct wobj *o = check_client(L);
    lua_pushfstring(L, "%s (%s %s)", CLIENT_MT, state_names[obj_state(o)], o->url ? o->url : "?");
    return 1;
}

int luaopen_tunnel_core_ws(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"send", l_send},   {"close", l_close}, {"state", l_state},
        {"stats", l_stats}, {"url", l_url},     {NULL, NULL},
    };
    tun_lua_new_class(L, CLIENT_MT, methods, l_gc, l_tostring);
    static const luaL_Reg fns[] = {
        {"connect", l_connect},
        {NULL, NULL},
    };
    tun_lua_new_module(L, fns);
    return 1;
}
