/*
 * tunnel.core.relay: the relay server (relay/server.h) as a Lua object.
 *
 *   local s, err = relay.server{ listen = "0.0.0.0:3340", tls_cert = f, tls_key
 * = f, stun_listen = "0.0.0.0:3478", allow = { key32, ... }, tokens = { "t",
 * ... }, rate = n, burst = n, pkarr_capacity = n, queue_bytes = n, queue_count
 * = n, auth_timeout_ms = n, http_timeout_ms = n, ping_ms = n, dead_ms = n }
 *   s:local_addr() s:stun_addr() s:stats() s:metrics() s:close() s:closed()
 *
 * Open servers are anchored in the registry and closed by the host's closer at
 * shutdown. The TLS credentials belong to the binding; they are freed once the
 * server has closed.
 */
#include "lua/modules.h"

#include "lua/bind.h"
#include "lua/opts.h"

#include "relay/server.h"
#include "util/error.h"
#include "util/sockaddr.h"
#include "web/stream.h"

#include <lauxlib.h>
#include <luv/luv.h>
#include <stdlib.h>
#include <string.h>

#define SERVER_MT "tunnel.relay.server"
#define ADDR_MAX  80

struct robj {
    lua_State *L;
    int self_ref;
    struct tun_lua_link link;
    struct tun_relay_server *srv;
    gnutls_certificate_credentials_t cred;
};

static void live_close(struct tun_lua_link *n);
static struct tun_lua_live live = {.close = live_close};

static void on_server_closed(void *ud)
{
    struct robj *o = ud;
    if (o->cred)
        gnutls_certificate_free_credentials(o->cred);
    free(o);
}

static void obj_close(struct robj *o)
{
    tun_lua_link_remove(&live.head, &o->link);
    tun_lua_box_release(o->L, &o->self_ref, o);
    if (o->srv)
        tun_relay_server_close(o->srv, on_server_closed, o);
    else
        on_server_closed(o);
}

static void live_close(struct tun_lua_link *n)
{
    obj_close(TUN_LUA_CONTAINER(n, struct robj, link));
}

/* ---- options
 * ---------------------------------------------------------------------------------
 */

static const char *const server_keys[] = {
    "listen",          "tls_cert",    "tls_key",        "stun_listen",
    "allow",           "tokens",      "rate",           "burst",
    "queue_bytes",     "queue_count", "pkarr_capacity", "auth_timeout_ms",
    "http_timeout_ms", "ping_ms",     "dead_ms",        NULL,
};

/* Optional "ip:port" option; 1 when present. */
static int opt_addr(lua_State *L, int t, const char *k, struct sockaddr_storage *ss)
{
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (lua_type(L, -1) != LUA_TSTRING || tun_sockaddr_parse(lua_tostring(L, -1), ss, 1) != 0)
        luaL_error(L,
                   "option '%s' must be a numeric address with a port (0.0.0.0:3340 or "
                   "[::]:3340)",
                   k);
    lua_pop(L, 1);
    return 1;
}

/* A list option: its length (0 when absent); leaves nothing on the stack. */
static size_t opt_list_len(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    size_t n = 0;
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            luaL_error(L, "option '%s' must be a list", k);
        n = lua_objlen(L, -1);
    }
    lua_pop(L, 1);
    return n;
}

/* ---- server
 * ----------------------------------------------------------------------------------
 */

static int l_server(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    tun_lua_check_keys(L, 1, server_keys, "option");
    struct sockaddr_storage listen_ss, stun_ss;
    if (!opt_addr(L, 1, "listen", &listen_ss))
        return luaL_error(L, "option 'listen' is required");
    int has_stun = opt_addr(L, 1, "stun_listen", &stun_ss);
    const char *cert = tun_lua_opt_str(L, 1, "tls_cert"), *key = tun_lua_opt_str(L, 1, "tls_key");
    if (!cert != !key)
        return luaL_error(L, "options 'tls_cert' and 'tls_key' go together");
    struct tun_relay_server_cfg cfg = {
        .listen = (struct sockaddr *)&listen_ss,
        .stun_listen = has_stun ? (struct sockaddr *)&stun_ss : NULL,
        .rate = (uint32_t)tun_lua_opt_uint(L, 1, "rate", 0, UINT32_MAX),
        .burst = (uint32_t)tun_lua_opt_uint(L, 1, "burst", 0, UINT32_MAX),
        .queue_bytes = (size_t)tun_lua_opt_uint(L, 1, "queue_bytes", 0, 1u << 30),
        .queue_count = (size_t)tun_lua_opt_uint(L, 1, "queue_count", 0, 1u << 20),
        .pkarr_capacity = (size_t)tun_lua_opt_uint(L, 1, "pkarr_capacity", 0, 1u << 24),
        .auth_timeout_ms = tun_lua_opt_uint(L, 1, "auth_timeout_ms", 0, 86400000),
        .http_timeout_ms = tun_lua_opt_uint(L, 1, "http_timeout_ms", 0, 86400000),
        .ping_ms = tun_lua_opt_uint(L, 1, "ping_ms", 0, 86400000),
        .dead_ms = tun_lua_opt_uint(L, 1, "dead_ms", 0, 86400000),
    };
    /* Lists are copied into userdata-free scratch that lives until the call
     * returns: the server copies them. */
    size_t n_allow = opt_list_len(L, 1, "allow"), n_tokens = opt_list_len(L, 1, "tokens");
    uint8_t(*allow)[32] = n_allow ? lua_newuserdata(L, n_allow * 32) : NULL;
    const char **tokens = n_tokens ? lua_newuserdata(L, n_tokens * sizeof(char *)) : NULL;
    if (n_allow) {
        lua_getfield(L, 1, "allow");
        for (size_t i = 0; i < n_allow; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            size_t len = 0;
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (!s || len != 32)
                return luaL_error(L, "allow[%d] must be a 32-byte public key", (int)i + 1);
            memcpy(allow[i], s, 32);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    if (n_tokens) {
        lua_getfield(L, 1, "tokens");
        for (size_t i = 0; i < n_tokens; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            size_t len = 0;
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (!s || len == 0 || len > 255 || strlen(s) != len)
                return luaL_error(L, "tokens[%d] must be a string of 1 to 255 bytes", (int)i + 1);
            tokens[i] = s; /* anchored by the tokens table */
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    cfg.allow = (const uint8_t(*)[32])allow;
    cfg.n_allow = n_allow;
    cfg.tokens = tokens;
    cfg.n_tokens = n_tokens;

    struct robj *o = calloc(1, sizeof(*o));
    if (!o)
        return luaL_error(L, "out of memory");
    if (cert) {
        char err[512];
        if (tun_wstream_load_cert(cert, key, &o->cred, err, sizeof(err)) != 0) {
            free(o);
            lua_pushnil(L);
            lua_pushstring(L, err);
            return 2;
        }
        cfg.tls = o->cred;
    }
    int rc = tun_relay_server_new(luv_loop(L), &cfg, &o->srv);
    if (rc != 0) {
        if (o->cred)
            gnutls_certificate_free_credentials(o->cred);
        free(o);
        char a[ADDR_MAX];
        tun_sockaddr_format((struct sockaddr *)&listen_ss, a, sizeof(a));
        return tun_lua_push_fail(L, rc, "cannot start the relay on %s%s", a,
                                 has_stun ? " or its STUN responder" : "");
    }
    o->L = luv_state(L);
    o->self_ref = tun_lua_box_new(L, SERVER_MT, o);
    tun_lua_live_add(&live, &o->link);
    return 1;
}

static struct robj *check_server(lua_State *L)
{
    struct robj **p = luaL_checkudata(L, 1, SERVER_MT);
    if (!*p)
        luaL_error(L, "the relay server is closed");
    return *p;
}

static int l_local_addr(lua_State *L)
{
    struct robj *o = check_server(L);
    struct sockaddr_storage ss;
    return tun_lua_push_addr_result(L, tun_relay_server_local_addr(o->srv, &ss), &ss);
}

static int l_stun_addr(lua_State *L)
{
    struct robj *o = check_server(L);
    struct sockaddr_storage ss;
    if (tun_relay_server_stun_addr(o->srv, &ss) != 0)
        return 0;
    tun_lua_push_addr(L, (struct sockaddr *)&ss);
    return 1;
}

static int l_stats(lua_State *L)
{
    struct robj *o = check_server(L);
    struct tun_relay_server_stats st;
    tun_relay_server_stats(o->srv, &st);
    lua_newtable(L);
#define F(name) TUN_LUA_SET_NUMBER(L, st, name)
    F(connections);
    F(clients);
    F(accepted);
    F(closed);
    F(http_requests);
    F(http_errors);
    F(upgrades);
    F(auth_ok);
    F(auth_failed);
    F(auth_timeouts);
    F(datagrams);
    F(bytes);
    F(dropped_queue);
    F(dropped_rate);
    F(dropped_no_peer);
    F(peer_gone);
    F(duplicates);
    F(pings_timeout);
    F(protocol_errors);
    F(pkarr_puts);
    F(pkarr_put_rejected);
    F(pkarr_conflicts);
    F(pkarr_gets);
    F(pkarr_misses);
#undef F
    return 1;
}

static int l_metrics(lua_State *L)
{
    struct robj *o = check_server(L);
    char buf[16384];
    int n = tun_relay_server_metrics(o->srv, buf, sizeof(buf));
    if (n < 0)
        return tun_lua_push_error(L, n);
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

static int l_close(lua_State *L)
{
    struct robj **p = lua_touserdata(L, 1);
    if (p && *p)
        obj_close(*p);
    return 0;
}

static int l_closed(lua_State *L)
{
    struct robj **p = luaL_checkudata(L, 1, SERVER_MT);
    lua_pushboolean(L, !*p);
    return 1;
}

static int l_tostring(lua_State *L)
{
    struct robj **p = lua_touserdata(L, 1);
    lua_pushfstring(L, "%s (%s)", SERVER_MT, p && *p ? "open" : "closed");
    return 1;
}

int luaopen_tunnel_core_relay(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"local_addr", l_local_addr},
        {"stun_addr", l_stun_addr},
        {"stats", l_stats},
        {"metrics", l_metrics},
        {"close", l_close},
        {"closed", l_closed},
        {NULL, NULL},
    };
    tun_lua_new_class(L, SERVER_MT, methods, l_close, l_tostring);
    static const luaL_Reg fns[] = {
        {"server", l_server},
        {NULL, NULL},
    };
    tun_lua_new_module(L, fns);
    return 1;
}
