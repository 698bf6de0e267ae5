/*
 * tunnel.core.stun: ask STUN servers which address our packets come from (stun.probe), and a
 * standalone STUN responder (stun.server) for tests and labs.
 *
 * A probe owns a tun_udp socket and a tun_stun_probe driver. The driver's `done` callback can
 * run inside tun_stun_probe_input, that is inside the socket's receive loop, so it only copies
 * the results and starts an idle handle; Lua's on_done runs from that idle callback, after the
 * socket and the driver have been closed, so the handler may do anything (even exit).
 */
#include "lua/modules.h"

#include "lua/bind.h"
#include "lua/opts.h"

#include "ice/stun_client.h"
#include "ice/stun_server.h"
#include "net/udp.h"
#include "util/error.h"
#include "util/sockaddr.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <luv/luv.h>
#include <stdlib.h>
#include <string.h>

#define PROBE_MT  "tunnel.stun.probe"
#define SERVER_MT "tunnel.stun.server"

/* Longest "[v6]:port" text we accept or print. */
#define ADDR_MAX 80

static const char *const status_names[] = {"pending", "ok", "timeout", "error", "bad"};

/* One open object (probe or server); both kinds sit on one list for the host's closer. */
struct sobj {
    int is_server;
    lua_State *L;
    int self_ref, cb_ref;
    struct tun_lua_link link;
    int closing;
    /* probe */
    struct tun_udp *udp;
    struct tun_stun_probe *probe;
    uv_idle_t idle;     /* delivers the results to Lua */
    uv_timer_t timer;   /* overall deadline (timeout_ms) */
    int timer_on;       /* the deadline timer was initialised */
    int finished;       /* results copied, delivery queued */
    int pending_closes; /* libuv handles still closing; the struct is freed at zero */
    struct tun_stun_client results;
    struct sockaddr_storage local;
    /* server */
    struct tun_stun_server *srv;
};

static void live_close(struct tun_lua_link *n);
static struct tun_lua_live live = {.close = live_close};

/* ---- lifecycle ------------------------------------------------------------------------------- */

static void close_done(struct sobj *o)
{
    if (--o->pending_closes == 0)
        free(o);
}

static void on_handle_closed(uv_handle_t *h)
{
    close_done(h->data);
}

static void on_inner_closed(void *ud)
{
    close_done(ud);
}

/* Close every C resource of `o` and drop the Lua references; the Lua userdata forgets `o`.
 * Every handle is closing when this returns (the host's closer relies on it). */
static void obj_close(struct sobj *o)
{
    if (o->closing)
        return;
    o->closing = 1;
    tun_lua_link_remove(&live.head, &o->link);
    tun_lua_box_release(o->L, &o->self_ref, o);
    luaL_unref(o->L, LUA_REGISTRYINDEX, o->cb_ref);
    o->cb_ref = LUA_NOREF;
    /* One extra count, dropped at the end, so nothing is freed while we are still here. */
    o->pending_closes = 1;
    if (o->is_server) {
        if (o->srv) {
            o->pending_closes++;
            tun_stun_server_close(o->srv, on_inner_closed, o);
            o->srv = NULL;
        }
    } else {
        if (o->probe) {
            tun_stun_probe_close(o->probe); /* frees itself from the loop */
            o->probe = NULL;
        }
        if (o->udp) {
            o->pending_closes++;
            tun_udp_close(o->udp, on_inner_closed, o);
            o->udp = NULL;
        }
        if (o->timer_on) {
            o->pending_closes++;
            uv_close((uv_handle_t *)&o->timer, on_handle_closed);
        }
        o->pending_closes++;
        uv_close((uv_handle_t *)&o->idle, on_handle_closed);
    }
    close_done(o);
}

static void live_close(struct tun_lua_link *n)
{
    obj_close(TUN_LUA_CONTAINER(n, struct sobj, link));
}

/* A new object for the userdata pushed by this function; anchored while open so that a
 * forgotten variable neither stops a responder nor loses a probe's results. */
static struct sobj *new_obj(lua_State *L, int is_server)
{
    struct sobj *o = calloc(1, sizeof(*o));
    if (!o)
        luaL_error(L, "out of memory");
    o->is_server = is_server;
    o->L = luv_state(L);
    o->cb_ref = LUA_NOREF;
    o->self_ref = tun_lua_box_new(L, is_server ? SERVER_MT : PROBE_MT, o);
    tun_lua_live_add(&live, &o->link);
    return o;
}

/* ---- options --------------------------------------------------------------------------------- */

static void check_addr(lua_State *L, const char *what, const char *s, struct sockaddr_storage *ss)
{
    if (tun_sockaddr_parse(s, ss, 1) != 0)
        luaL_error(L,
                   "%s '%s' is not a numeric address with a port (1.2.3.4:3478 or "
                   "[2001:db8::1]:3478)",
                   what, s);
}

/* ---- probe ----------------------------------------------------------------------------------- */

static void deliver_cb(uv_idle_t *h);

/* Keep the results and let the idle handle hand them to Lua. */
static void finish(struct sobj *o, const struct tun_stun_client *c)
{
    if (o->finished || o->closing)
        return;
    o->finished = 1;
    o->results = *c;
    if (o->timer_on)
        uv_timer_stop(&o->timer);
    uv_idle_start(&o->idle, deliver_cb);
}

static void on_probe_done(struct tun_stun_probe *p, const struct tun_stun_client *c, void *ud)
{
    (void)p;
    finish(ud, c);
}

static void on_deadline(uv_timer_t *t)
{
    struct sobj *o = t->data;
    /* Transactions still pending keep that status in the copy; they are reported as
     * timeouts. */
    if (o->probe)
        finish(o, tun_stun_probe_client(o->probe));
}

static int udp_send(void *ud, const struct sockaddr *to, const uint8_t *data, size_t len)
{
    struct sobj *o = ud;
    if (!o->udp)
        return TUN_ECLOSED;
    return tun_udp_send(o->udp, to, data, len, 0, NULL);
}

static void on_recv(struct tun_udp *u, const struct sockaddr *from, const uint8_t *data, size_t len,
                    unsigned ecn, void *ud)
{
    (void)u;
    (void)ecn;
    struct sobj *o = ud;
    if (o->probe && !o->finished)
        tun_stun_probe_input(o->probe, from, data, len);
}

static void push_results(lua_State *L, const struct tun_stun_client *c)
{
    lua_createtable(L, (int)c->n, 0);
    for (size_t i = 0; i < c->n; i++) {
        const struct tun_stun_result *r = &c->tx[i].r;
        int st = r->status == TUN_STUN_RES_PENDING ? TUN_STUN_RES_TIMEOUT : r->status;
        if (st < 0 || st > TUN_STUN_RES_BAD)
            st = TUN_STUN_RES_BAD;
        lua_newtable(L);
        tun_lua_push_addr(L, (const struct sockaddr *)&r->server);
        lua_setfield(L, -2, "server");
        lua_pushstring(L, status_names[st]);
        lua_setfield(L, -2, "status");
        lua_pushinteger(L, (lua_Integer)r->transmissions);
        lua_setfield(L, -2, "transmissions");
        if (st == TUN_STUN_RES_OK) {
            tun_lua_push_addr(L, (const struct sockaddr *)&r->mapped);
            lua_setfield(L, -2, "mapped");
            lua_pushnumber(L, (lua_Number)r->rtt_ms);
            lua_setfield(L, -2, "rtt_ms");
        } else if (st == TUN_STUN_RES_ERROR) {
            lua_pushinteger(L, r->error_code);
            lua_setfield(L, -2, "error_code");
            lua_pushstring(L, r->reason);
            lua_setfield(L, -2, "reason");
        }
        lua_rawseti(L, -2, (int)i + 1);
    }
}

static void deliver_cb(uv_idle_t *h)
{
    struct sobj *o = h->data;
    uv_idle_stop(&o->idle);
    if (o->closing)
        return;
    lua_State *L = o->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, o->cb_ref);
    push_results(L, &o->results);
    tun_lua_push_addr(L, (struct sockaddr *)&o->local);
    /* Release the socket first: the handler may start another probe on the same port. */
    obj_close(o);
    tun_lua_call_handler(L, 2, "the STUN on_done handler");
    lua_settop(L, top);
}

static const char *const probe_keys[] = {"servers", "bind",       "rto_ms",  "rc",
                                         "rm",      "timeout_ms", "on_done", NULL};

/* probe{ servers = {"ip:port", ...}, bind =, rto_ms =, rc =, rm =, timeout_ms =, on_done = } */
static int l_probe(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    tun_lua_check_keys(L, 1, probe_keys, "option");

    struct sockaddr_storage servers[TUN_STUN_CLIENT_MAX];
    size_t n = 0;
    int any6 = 0;
    lua_getfield(L, 1, "servers");
    if (!lua_istable(L, -1))
        return luaL_error(L, "option 'servers' must be a list of \"ip:port\" strings");
    size_t len = lua_objlen(L, -1);
    if (len == 0 || len > TUN_STUN_CLIENT_MAX)
        return luaL_error(L, "option 'servers' must hold 1 to %d addresses", TUN_STUN_CLIENT_MAX);
    for (size_t i = 1; i <= len; i++) {
        lua_rawgeti(L, -1, (int)i);
        const char *s = lua_tostring(L, -1);
        if (!s || lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "servers[%d] must be an \"ip:port\" string", (int)i);
        check_addr(L, "server", s, &servers[n]);
        any6 |= servers[n].ss_family == AF_INET6;
        n++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    struct sockaddr_storage bind_ss;
    lua_getfield(L, 1, "bind");
    if (lua_isnil(L, -1)) {
        /* A dual-stack socket only when an IPv6 server needs one. */
        tun_sockaddr_parse(any6 ? "[::]:0" : "0.0.0.0:0", &bind_ss, 1);
    } else {
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "option 'bind' must be an \"ip:port\" string");
        check_addr(L, "bind address", lua_tostring(L, -1), &bind_ss);
        if (bind_ss.ss_family == AF_INET && any6)
            return luaL_error(L, "an IPv4 bind address cannot reach an IPv6 server");
    }
    lua_pop(L, 1);

    struct tun_stun_client_cfg cfg = {
        .rto_ms = (uint32_t)tun_lua_opt_uint(L, 1, "rto_ms", 0, 60000),
        .rc = (uint32_t)tun_lua_opt_uint(L, 1, "rc", 0, 20),
        .rm = (uint32_t)tun_lua_opt_uint(L, 1, "rm", 0, 100),
    };
    uint32_t timeout_ms = (uint32_t)tun_lua_opt_uint(L, 1, "timeout_ms", 0, 3600000);

    lua_getfield(L, 1, "on_done");
    luaL_checktype(L, -1, LUA_TFUNCTION);
    int cb = lua_gettop(L);

    uv_loop_t *loop = luv_loop(L);
    struct sobj *o = new_obj(L, 0);
    lua_pushvalue(L, cb);
    o->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    uv_idle_init(loop, &o->idle);
    o->idle.data = o;
    uv_timer_init(loop, &o->timer);
    o->timer.data = o;
    o->timer_on = 1;

    char bindtxt[ADDR_MAX];
    tun_sockaddr_format((struct sockaddr *)&bind_ss, bindtxt, sizeof(bindtxt));
    int rc = tun_udp_new(loop, (struct sockaddr *)&bind_ss, &o->udp);
    const char *what = "cannot open a UDP socket on";
    if (rc == 0)
        rc = tun_udp_local_addr(o->udp, &o->local);
    if (rc == 0)
        rc = tun_udp_start(o->udp, on_recv, NULL, o);
    if (rc == 0) {
        what = "cannot start the STUN probe from";
        rc = tun_stun_probe_start(loop, udp_send, o, servers, n, &cfg, on_probe_done, &o->probe);
    }
    if (rc != 0) {
        obj_close(o);
        return tun_lua_push_fail(L, rc, "%s %s", what, bindtxt);
    }
    if (timeout_ms)
        uv_timer_start(&o->timer, on_deadline, timeout_ms, 0);
    return 1;
}

static int l_probe_local_addr(lua_State *L)
{
    struct sobj **p = luaL_checkudata(L, 1, PROBE_MT);
    if (!*p)
        return 0;
    tun_lua_push_addr(L, (struct sockaddr *)&(*p)->local);
    return 1;
}

/* ---- server ---------------------------------------------------------------------------------- */

static const char *const server_keys[] = {"bind", NULL};

/* server{ bind = "ip:port" } -> handle | nil, err */
static int l_server(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    tun_lua_check_keys(L, 1, server_keys, "option");
    lua_getfield(L, 1, "bind");
    if (lua_type(L, -1) != LUA_TSTRING)
        return luaL_error(L, "option 'bind' must be an \"ip:port\" string");
    const char *bindtxt = lua_tostring(L, -1);
    struct sockaddr_storage ss;
    check_addr(L, "bind address", bindtxt, &ss);
    struct sobj *o = new_obj(L, 1);
    int rc = tun_stun_server_start(luv_loop(L), (struct sockaddr *)&ss, &o->srv);
    if (rc != 0) {
        obj_close(o);
        return tun_lua_push_fail(L, rc, "cannot answer STUN on %s", bindtxt);
    }
    return 1;
}

static struct sobj *check_server(lua_State *L)
{
    struct sobj **p = luaL_checkudata(L, 1, SERVER_MT);
    if (!*p)
        luaL_error(L, "the STUN server is closed");
    return *p;
}

static int l_server_local_addr(lua_State *L)
{
    struct sobj *o = check_server(L);
    struct sockaddr_storage ss;
    return tun_lua_push_addr_result(L, tun_stun_server_local_addr(o->srv, &ss), &ss);
}

static int l_server_stats(lua_State *L)
{
    struct sobj *o = check_server(L);
    struct tun_stun_server_stats st;
    tun_stun_server_get_stats(o->srv, &st);
    lua_newtable(L);
    TUN_LUA_SET_NUMBER(L, st, answered);
    TUN_LUA_SET_NUMBER(L, st, ignored);
    TUN_LUA_SET_NUMBER(L, st, limited);
    return 1;
}

/* ---- shared methods -------------------------------------------------------------------------- */

static int l_obj_close(lua_State *L)
{
    struct sobj **p = lua_touserdata(L, 1);
    if (p && *p)
        obj_close(*p);
    return 0;
}

static int l_obj_closed(lua_State *L)
{
    struct sobj **p = lua_touserdata(L, 1);
    lua_pushboolean(L, !p || !*p);
    return 1;
}

static int l_obj_tostring(lua_State *L)
{
    struct sobj **p = lua_touserdata(L, 1);
    int srv = luaL_testudata(L, 1, SERVER_MT) != NULL;
    lua_pushfstring(L, "%s (%s)", srv ? SERVER_MT : PROBE_MT, p && *p ? "open" : "closed");
    return 1;
}

int luaopen_tunnel_core_stun(lua_State *L)
{
    static const luaL_Reg probe_methods[] = {
        {"local_addr", l_probe_local_addr},
        {"close", l_obj_close},
        {"closed", l_obj_closed},
        {NULL, NULL},
    };
    static const luaL_Reg server_methods[] = {
        {"local_addr", l_server_local_addr},
        {"stats", l_server_stats},
        {"close", l_obj_close},
        {"closed", l_obj_closed},
        {NULL, NULL},
    };
    const char *names[] = {PROBE_MT, SERVER_MT};
    const luaL_Reg *methods[] = {probe_methods, server_methods};
    for (int i = 0; i < 2; i++)
        tun_lua_new_class(L, names[i], methods[i], l_obj_close, l_obj_tostring);
    static const luaL_Reg fns[] = {
        {"probe", l_probe},
        {"server", l_server},
        {NULL, NULL},
    };
    tun_lua_new_module(L, fns);
    return 1;
}
