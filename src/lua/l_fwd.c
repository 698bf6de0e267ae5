/*
 * tunnel.core.fwd: port-forwarding servers and clients as Lua objects.
 *
 * Events from the C layers (which may arrive inside packet processing) are queued and
 * delivered to the object's Lua `on_event` function from an idle callback, so Lua never runs
 * inside ngtcp2 or GnuTLS. Lua answers through methods that name sessions and streams by id.
 */
#include "lua/modules.h"

#include "fwd/client.h"
#include "fwd/server.h"
#include "iroh/holepunch.h"
#include "iroh/relaypath.h"
#include "lua/bind.h"
#include "lua/l_shared.h"
#include "lua/opts.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <lauxlib.h>
#include <sodium.h>
#include <luv/luv.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SERVER_MT "tunnel.server"
#define CLIENT_MT "tunnel.client"

enum ev_type {
    EV_SESSION,
    EV_AUTH,
    EV_REQUEST,
    EV_REFUSED,
    EV_CHAN_CLOSED,
    EV_SESSION_CLOSED,
    EV_READY,
    EV_AUTH_FAILED,
    EV_REJECTED,
    EV_CLOSED,
    EV_RELAY,
    EV_PATH,
    EV_ADDRS,
};

static const char *const ev_names[] = {
    "session",     "auth",     "request", "refused", "chan_closed", "session_closed", "ready",
    "auth_failed", "rejected", "closed",  "relay",   "path",        "addrs",
};
/* One name per event type: a new type without its name fails to compile. */
_Static_assert(sizeof(ev_names) / sizeof(ev_names[0]) == EV_ADDRS + 1, "ev_names");

struct lev {
    struct tun_lua_qnode node;
    enum ev_type type;
    uint64_t session;
    int64_t stream;
    int udp, code, fwd;
    uint16_t port;
    char *text; /* token, host or reason */
    size_t textlen;
    struct tun_qclose_info why;
    struct tun_fwd_chan_info chan;
    struct sockaddr_storage addr; /* EV_PATH: the direct path, family 0 for the relay */
    uint64_t rtt_us;
};

struct lobj {
    int is_server;
    lua_State *L;
    int self_ref, cb_ref;
    struct tun_lua_queue q; /* of struct lev */
    struct tun_fwd_server *srv;
    struct tun_fwd_client *cli;
    struct tun_relaypath *rp; /* QUIC through a relay, when relay() was called */
    struct tun_holepunch *hp; /* and from there to direct paths */
    uint8_t peer_key[32];     /* client: the server dialled through the relay */
    int dialled_key;
    int closing, closed;
    struct tun_lua_link link;
};

void (*tun_lua_endpoint_closing)(struct tun_qep *ep);

static void live_close(struct tun_lua_link *n);
static struct tun_lua_live live = {.close = live_close};

/* ---- event queue -------------------------------------------------------------------------- */

static struct lev *ev_new(struct lobj *o, enum ev_type type)
{
    struct lev *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->type = type;
    tun_lua_queue_push(&o->q, &e->node);
    return e;
}

static void ev_text(struct lev *e, const void *p, size_t n)
{
    e->text = malloc(n + 1);
    if (!e->text)
        return;
    memcpy(e->text, p, n);
    e->text[n] = '\0';
    e->textlen = n;
}

static void ev_free(void *owner, struct tun_lua_qnode *n)
{
    (void)owner;
    struct lev *e = TUN_LUA_CONTAINER(n, struct lev, node);
    if (e->text) {
        /* May hold a token. */
        memset(e->text, 0, e->textlen);
        free(e->text);
    }
    free(e);
}

static void push_why(lua_State *L, const struct tun_qclose_info *why)
{
    lua_newtable(L);
    lua_pushboolean(L, why->local);
    lua_setfield(L, -2, "local_close");
    lua_pushboolean(L, why->app);
    lua_setfield(L, -2, "app");
    lua_pushnumber(L, (lua_Number)why->code);
    lua_setfield(L, -2, "code");
    if (why->err) {
        lua_pushstring(L, tun_err_name(why->err));
        lua_setfield(L, -2, "err");
    }
    lua_pushstring(L, why->reason);
    lua_setfield(L, -2, "reason");
}

static void push_event(lua_State *L, struct lev *e)
{
    lua_newtable(L);
    lua_pushstring(L, ev_names[e->type]);
    lua_setfield(L, -2, "type");
    switch (e->type) {
    case EV_AUTH:
        lua_pushlstring(L, e->text ? e->text : "", e->textlen);
        lua_setfield(L, -2, "token");
        break;
    case EV_REQUEST:
    case EV_REFUSED:
        lua_pushnumber(L, (lua_Number)e->stream);
        lua_setfield(L, -2, "stream");
        lua_pushstring(L, e->udp ? "udp" : "tcp");
        lua_setfield(L, -2, "proto");
        lua_pushinteger(L, e->port);
        lua_setfield(L, -2, "port");
        if (e->type == EV_REFUSED) {
            lua_pushinteger(L, e->code);
            lua_setfield(L, -2, "code");
            lua_pushstring(L, e->why.reason);
            lua_setfield(L, -2, "reason");
        }
        break;
    case EV_CHAN_CLOSED:
        lua_pushnumber(L, (lua_Number)e->chan.stream);
        lua_setfield(L, -2, "stream");
        lua_pushstring(L, e->chan.udp ? "udp" : "tcp");
        lua_setfield(L, -2, "proto");
        lua_pushstring(L, e->chan.target);
        lua_setfield(L, -2, "target");
        TUN_LUA_SET_NUMBER(L, e->chan, up);
        TUN_LUA_SET_NUMBER(L, e->chan, down);
        lua_pushboolean(L, e->chan.reset);
        lua_setfield(L, -2, "reset");
        break;
    case EV_SESSION_CLOSED:
    case EV_CLOSED:
        push_why(L, &e->why);
        lua_setfield(L, -2, "why");
        break;
    case EV_PATH:
        tun_lua_push_addr(L, (struct sockaddr *)&e->addr); /* nil for the relay */
        lua_setfield(L, -2, "direct");
        lua_pushnumber(L, (lua_Number)e->rtt_us / 1000.0);
        lua_setfield(L, -2, "rtt_ms");
        break;
    case EV_RELAY:
        lua_pushstring(L, e->code == TUN_RELAY_CLIENT_READY        ? "ready"
                          : e->code == TUN_RELAY_CLIENT_CONNECTING ? "connecting"
                                                                   : "waiting");
        lua_setfield(L, -2, "state");
        lua_pushstring(L, e->why.reason);
        lua_setfield(L, -2, "url");
        break;
    case EV_AUTH_FAILED:
    case EV_REJECTED:
        lua_pushinteger(L, e->code);
        lua_setfield(L, -2, "code");
        lua_pushinteger(L, e->fwd + 1);
        lua_setfield(L, -2, "forward");
        break;
    default:
        break;
    }
    if (e->session) {
        lua_pushnumber(L, (lua_Number)e->session);
        lua_setfield(L, -2, "session");
    }
    if (e->text && e->type != EV_AUTH) {
        lua_pushstring(L, e->text);
        lua_setfield(L, -2, e->type == EV_REQUEST || e->type == EV_REFUSED ? "host" : "reason");
    }
}

static void deliver(void *owner, struct tun_lua_qnode *n)
{
    struct lobj *o = owner;
    struct lev *e = TUN_LUA_CONTAINER(n, struct lev, node);
    if (!o->closed && o->cb_ref != LUA_NOREF) {
        lua_rawgeti(o->L, LUA_REGISTRYINDEX, o->cb_ref);
        push_event(o->L, e);
        char what[64];
        snprintf(what, sizeof(what), "%s event handler", ev_names[e->type]);
        tun_lua_call_handler(o->L, 1, what);
    }
    ev_free(o, n);
}

/* ---- C callbacks -> events ------------------------------------------------------------------ */

static void s_on_session(struct tun_fwd_server *srv, uint64_t session, void *ud)
{
    (void)srv;
    struct lev *e = ev_new(ud, EV_SESSION);
    if (e)
        e->session = session;
}

static void s_on_auth(struct tun_fwd_server *srv, uint64_t session, const uint8_t *token,
                      size_t len, void *ud)
{
    (void)srv;
    struct lev *e = ev_new(ud, EV_AUTH);
    if (!e)
        return;
    e->session = session;
    ev_text(e, token, len);
}

/* An event about stream request `req`. */
static struct lev *ev_request(struct lobj *o, enum ev_type type, const struct tun_fwd_request *req)
{
    struct lev *e = ev_new(o, type);
    if (!e)
        return NULL;
    e->session = req->session;
    e->stream = req->stream;
    e->udp = req->udp;
    e->port = req->port;
    ev_text(e, req->host, strlen(req->host));
    return e;
}

static void s_on_request(struct tun_fwd_server *srv, const struct tun_fwd_request *req, void *ud)
{
    (void)srv;
    ev_request(ud, EV_REQUEST, req);
}

static void s_on_refused(struct tun_fwd_server *srv, const struct tun_fwd_request *req, int code,
                         const char *reason, void *ud)
{
    (void)srv;
    struct lev *e = ev_request(ud, EV_REFUSED, req);
    if (!e)
        return;
    e->code = code;
    snprintf(e->why.reason, sizeof(e->why.reason), "%s", reason ? reason : "");
}

static void s_on_chan_closed(struct tun_fwd_server *srv, const struct tun_fwd_chan_info *info,
                             void *ud)
{
    (void)srv;
    struct lev *e = ev_new(ud, EV_CHAN_CLOSED);
    if (!e)
        return;
    e->session = info->session;
    e->chan = *info;
}

static void s_on_session_closed(struct tun_fwd_server *srv, uint64_t session,
                                const struct tun_qclose_info *why, void *ud)
{
    (void)srv;
    struct lev *e = ev_new(ud, EV_SESSION_CLOSED);
    if (!e)
        return;
    e->session = session;
    e->why = *why;
}

static void c_on_ready(struct tun_fwd_client *c, void *ud)
{
    struct lobj *o = ud;
    /* Dialled through the relay: look for a direct path now (deferred callback: no ngtcp2
     * call is on the stack). */
    if (o->hp && o->dialled_key)
        tun_holepunch_dial(o->hp, o->peer_key, tun_fwd_client_conn(c));
    ev_new(ud, EV_READY);
}

static void c_on_auth_failed(struct tun_fwd_client *c, int code, const char *reason, void *ud)
{
    (void)c;
    struct lev *e = ev_new(ud, EV_AUTH_FAILED);
    if (!e)
        return;
    e->code = code;
    ev_text(e, reason, strlen(reason));
}

static void c_on_rejected(struct tun_fwd_client *c, int fwd, int code, const char *reason, void *ud)
{
    (void)c;
    struct lev *e = ev_new(ud, EV_REJECTED);
    if (!e)
        return;
    e->fwd = fwd;
    e->code = code;
    ev_text(e, reason, strlen(reason));
}

static void c_on_closed(struct tun_fwd_client *c, const struct tun_qclose_info *why, void *ud)
{
    (void)c;
    struct lobj *o = ud;
    /* The connection is freed after this: hole punching must not touch it any more. */
    if (o->hp && o->dialled_key)
        tun_holepunch_forget(o->hp, o->peer_key);
    struct lev *e = ev_new(ud, EV_CLOSED);
    if (e)
        e->why = *why;
}

/* ---- object lifecycle ------------------------------------------------------------------------ */

static void obj_freed(uv_handle_t *h)
{
    struct lobj *o = h->data;
    tun_lua_queue_clear(&o->q, ev_free);
    free(o);
}

/* Close the C object; every handle is closing when this returns (the host relies on it). */
static void obj_close(struct lobj *o)
{
    if (o->closing)
        return;
    o->closing = 1;
    tun_lua_link_remove(&live.head, &o->link);
    /* The relay path and ICE sessions on this endpoint's socket stop using it first. */
    if (o->hp) {
        tun_holepunch_free(o->hp);
        o->hp = NULL;
    }
    if (o->rp) {
        tun_relaypath_free(o->rp);
        o->rp = NULL;
    }
    if (tun_lua_endpoint_closing)
        tun_lua_endpoint_closing(o->is_server ? tun_fwd_server_endpoint(o->srv)
                                              : tun_fwd_client_endpoint(o->cli));
    if (o->is_server)
        tun_fwd_server_close(o->srv, NULL, NULL);
    else
        tun_fwd_client_close(o->cli, NULL, NULL);
    o->closed = 1;
    /* The Lua object outlives the C one (it is freed after its handles close): forget it. */
    tun_lua_box_release(o->L, &o->self_ref, o);
    luaL_unref(o->L, LUA_REGISTRYINDEX, o->cb_ref);
    o->cb_ref = LUA_NOREF;
    tun_lua_queue_close(&o->q, obj_freed);
}

static void live_close(struct tun_lua_link *n)
{
    obj_close(TUN_LUA_CONTAINER(n, struct lobj, link));
}

static struct lobj **check_obj(lua_State *L, int idx, const char *mt)
{
    struct lobj **p = luaL_checkudata(L, idx, mt);
    if (!*p || (*p)->closing)
        luaL_error(L, "%s is closed", mt);
    return p;
}

/* The object for option table `opts` (its on_event function is required); pushes the userdata. */
static struct lobj *new_obj(lua_State *L, int is_server, int opts)
{
    lua_getfield(L, opts, "on_event");
    luaL_checktype(L, -1, LUA_TFUNCTION);
    int cb_idx = lua_gettop(L);
    struct lobj *o = calloc(1, sizeof(*o));
    if (!o)
        luaL_error(L, "out of memory");
    o->is_server = is_server;
    o->L = luv_state(L);
    tun_lua_queue_init(luv_loop(L), &o->q, o, deliver);
    lua_pushvalue(L, cb_idx);
    o->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* While open, the object is anchored: a forgotten variable must not stop a server. */
    o->self_ref = tun_lua_box_new(L, is_server ? SERVER_MT : CLIENT_MT, o);
    tun_lua_live_add(&live, &o->link);
    return o;
}

static void discard_obj(lua_State *L, struct lobj *o)
{
    /* Construction failed after new_obj: undo without touching a C object. */
    tun_lua_link_remove(&live.head, &o->link);
    luaL_unref(L, LUA_REGISTRYINDEX, o->cb_ref);
    tun_lua_box_release(L, &o->self_ref, o);
    tun_lua_queue_close(&o->q, obj_freed);
}

/* ---- results -------------------------------------------------------------------------------- */

/* ip, port: the two results of the address methods. */
static int push_addr_port(lua_State *L, const struct sockaddr_storage *ss)
{
    tun_lua_push_addr(L, (const struct sockaddr *)ss);
    lua_pushinteger(L, tun_sockaddr_port((const struct sockaddr *)ss));
    return 2;
}

/* The results of a call that returned rc: true, or nil and "<what>: <why>" (what: `fmt`
 * formatted). */
static int push_done(lua_State *L, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int push_done(lua_State *L, int rc, const char *fmt, ...)
{
    if (rc == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    va_list ap;
    va_start(ap, fmt);
    tun_lua_push_failv(L, rc, fmt, ap);
    va_end(ap);
    return 2;
}

/* nil, "<what>: <why>" and the error's name (such as "EADDRINUSE"). */
static int push_fail_named(lua_State *L, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int push_fail_named(lua_State *L, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tun_lua_push_failv(L, rc, fmt, ap);
    va_end(ap);
    lua_pushstring(L, tun_err_name(rc));
    return 3;
}

/* ---- option helpers ------------------------------------------------------------------------- */

static int opt_field(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    return !lua_isnil(L, -1);
}

static int parse_addr(lua_State *L, const char *ip, int port, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (port < 0 || port > 65535)
        return luaL_error(L, "port %d out of range", port);
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(ip, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return luaL_error(L, "'%s' is not an IP address", ip);
}

static void get_bytes32(lua_State *L, int t, const char *k, uint8_t out[32], int required)
{
    size_t n = 0;
    lua_getfield(L, t, k);
    const char *s = lua_tolstring(L, -1, &n);
    if (!s) {
        if (required)
            luaL_error(L, "option '%s' is required (32 bytes)", k);
        lua_pop(L, 1);
        return;
    }
    if (n != 32)
        luaL_error(L, "option '%s' must be 32 bytes, got %d", k, (int)n);
    memcpy(out, s, 32);
    lua_pop(L, 1);
}

static uint64_t get_u64(lua_State *L, int t, const char *k, uint64_t def)
{
    uint64_t v = def;
    if (opt_field(L, t, k)) {
        lua_Number n = luaL_checknumber(L, -1);
        if (n < 0)
            luaL_error(L, "option '%s' must not be negative", k);
        v = (uint64_t)n;
    }
    lua_pop(L, 1);
    return v;
}

static void read_quic(lua_State *L, int t, struct tun_quic_config *q)
{
    if (!opt_field(L, t, "quic")) {
        lua_pop(L, 1);
        return;
    }
    int qt = lua_gettop(L);
    q->cc = (int)get_u64(L, qt, "cc", (uint64_t)q->cc);
    q->stream_window = get_u64(L, qt, "stream_window", q->stream_window);
    q->max_stream_window = get_u64(L, qt, "max_stream_window", q->max_stream_window);
    q->conn_window = get_u64(L, qt, "conn_window", q->conn_window);
    q->max_conn_window = get_u64(L, qt, "max_conn_window", q->max_conn_window);
    q->idle_timeout_ms = get_u64(L, qt, "idle_timeout_ms", q->idle_timeout_ms);
    q->keepalive_ms = get_u64(L, qt, "keepalive_ms", q->keepalive_ms);
    q->handshake_timeout_ms = get_u64(L, qt, "handshake_timeout_ms", q->handshake_timeout_ms);
    q->max_streams = get_u64(L, qt, "max_streams", q->max_streams);
    q->stream_send_buffer = (size_t)get_u64(L, qt, "stream_send_buffer", q->stream_send_buffer);
    lua_pop(L, 1);
}

/* ---- server ---------------------------------------------------------------------------------- */

/* server{ ip=, port=, secret=, max_active=, auth_timeout_ms=, flow_idle_ms=, quic={}, on_event= }
 */
static int l_fwd_server(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct tun_fwd_server_config cfg;
    tun_fwd_server_config_default(&cfg);
    uint8_t secret[32];
    get_bytes32(L, 1, "secret", secret, 1);
    lua_getfield(L, 1, "ip");
    const char *ip = luaL_optstring(L, -1, "0.0.0.0");
    int port = (int)get_u64(L, 1, "port", 0);
    struct sockaddr_storage ss;
    parse_addr(L, ip, port, &ss);
    cfg.max_active = (uint32_t)get_u64(L, 1, "max_active", cfg.max_active);
    cfg.auth_timeout_ms = get_u64(L, 1, "auth_timeout_ms", cfg.auth_timeout_ms);
    cfg.flow_idle_ms = get_u64(L, 1, "flow_idle_ms", cfg.flow_idle_ms);
    read_quic(L, 1, &cfg.quic);
    struct lobj *o = new_obj(L, 1, 1);
    struct tun_fwd_server_cbs cbs = {
        .on_session = s_on_session,
        .on_auth = s_on_auth,
        .on_request = s_on_request,
        .on_refused = s_on_refused,
        .on_chan_closed = s_on_chan_closed,
        .on_session_closed = s_on_session_closed,
    };
    int rc =
        tun_fwd_server_new(luv_loop(L), (struct sockaddr *)&ss, secret, &cfg, &cbs, o, &o->srv);
    memset(secret, 0, sizeof(secret));
    if (rc != 0) {
        discard_obj(L, o);
        return push_fail_named(L, rc, "cannot listen on %s port %d", ip, port);
    }
    return 1;
}

static int l_server_local_addr(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    struct sockaddr_storage ss;
    tun_fwd_server_local_addr(o->srv, &ss);
    return push_addr_port(L, &ss);
}

static uint64_t check_id(lua_State *L, int idx)
{
    lua_Number n = luaL_checknumber(L, idx);
    return (uint64_t)n;
}

/* auth(session, ok[, code, reason, close_code]) */
static int l_server_auth(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    uint64_t sess = check_id(L, 2);
    int ok = lua_toboolean(L, 3);
    int code = (int)luaL_optinteger(L, 4, 7);
    const char *reason = luaL_optstring(L, 5, "invalid authentication token");
    uint64_t cc = (uint64_t)luaL_optinteger(L, 6, 1);
    lua_pushboolean(L, tun_fwd_session_auth(o->srv, sess, ok, code, reason, cc) == 0);
    return 1;
}

/* accept(session, stream, { {ip, port}, ... }) */
static int l_server_accept(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    uint64_t sess = check_id(L, 2);
    int64_t sid = (int64_t)luaL_checknumber(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    struct sockaddr_storage addrs[16];
    size_t n = 0;
    for (int i = 1; n < 16; i++) {
        lua_rawgeti(L, 4, i);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            break;
        }
        luaL_checktype(L, -1, LUA_TTABLE);
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        parse_addr(L, luaL_checkstring(L, -2), (int)luaL_checkinteger(L, -1), &addrs[n++]);
        lua_pop(L, 3);
    }
    lua_pushboolean(L, tun_fwd_server_accept(o->srv, sess, sid, addrs, n) == 0);
    return 1;
}

/* reject(session, stream, code, reason) */
static int l_server_reject(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    uint64_t sess = check_id(L, 2);
    int64_t sid = (int64_t)luaL_checknumber(L, 3);
    int code = (int)luaL_checkinteger(L, 4);
    const char *reason = luaL_checkstring(L, 5);
    lua_pushboolean(L, tun_fwd_server_reject(o->srv, sess, sid, code, reason) == 0);
    return 1;
}

static int l_server_kick(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    lua_pushboolean(L,
                    tun_fwd_session_kick(o->srv, check_id(L, 2), luaL_optstring(L, 3, NULL)) == 0);
    return 1;
}

static void push_quic_stats(lua_State *L, const struct tun_qconn_stats *st)
{
    lua_newtable(L);
    lua_pushnumber(L, (lua_Number)st->srtt_us / 1000.0);
    lua_setfield(L, -2, "rtt_ms");
    lua_pushnumber(L, (lua_Number)st->min_rtt_us / 1000.0);
    lua_setfield(L, -2, "min_rtt_ms");
    TUN_LUA_SET_NUMBER(L, *st, cwnd);
    lua_pushnumber(L, (lua_Number)st->bytes_in_flight);
    lua_setfield(L, -2, "in_flight");
    TUN_LUA_SET_NUMBER(L, *st, tx_bytes);
    TUN_LUA_SET_NUMBER(L, *st, rx_bytes);
    TUN_LUA_SET_NUMBER(L, *st, tx_packets);
    TUN_LUA_SET_NUMBER(L, *st, rx_packets);
    TUN_LUA_SET_NUMBER(L, *st, datagrams_dropped);
    lua_pushinteger(L, st->streams);
    lua_setfield(L, -2, "streams");
    lua_pushstring(L, st->cipher);
    lua_setfield(L, -2, "cipher");
}

static int push_session(lua_State *L, struct lobj *o, uint64_t id)
{
    struct tun_fwd_session_info info;
    if (tun_fwd_session_info(o->srv, id, &info) != 0)
        return 0;
    lua_newtable(L);
    lua_pushnumber(L, (lua_Number)info.id);
    lua_setfield(L, -2, "id");
    lua_pushboolean(L, info.authenticated);
    lua_setfield(L, -2, "authenticated");
    if (info.have_key) {
        lua_pushlstring(L, (const char *)info.peer_key, 32);
        lua_setfield(L, -2, "peer_key");
    }
    tun_lua_push_addr(L, (struct sockaddr *)&info.remote);
    lua_setfield(L, -2, "remote");
    lua_pushinteger(L, info.chans);
    lua_setfield(L, -2, "streams");
    TUN_LUA_SET_NUMBER(L, info, up);
    TUN_LUA_SET_NUMBER(L, info, down);
    push_quic_stats(L, &info.quic);
    lua_setfield(L, -2, "quic");
    return 1;
}

static int l_server_sessions(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    uint64_t ids[1024];
    size_t n = tun_fwd_server_sessions(o->srv, ids, 1024);
    if (n > 1024)
        n = 1024;
    lua_newtable(L);
    int k = 1;
    for (size_t i = 0; i < n; i++)
        if (push_session(L, o, ids[i]))
            lua_rawseti(L, -2, k++);
    return 1;
}

static int l_server_session(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    if (!push_session(L, o, check_id(L, 2)))
        lua_pushnil(L);
    return 1;
}

static int l_server_set_max_active(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "must not be negative");
    tun_fwd_server_set_max_active(o->srv, (uint32_t)n);
    return 0;
}

static int l_server_active(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, SERVER_MT);
    lua_pushinteger(L, tun_fwd_server_active(o->srv));
    return 1;
}

static int l_obj_close(lua_State *L)
{
    struct lobj **p = lua_touserdata(L, 1);
    if (p && *p && !(*p)->closing)
        obj_close(*p);
    return 0;
}

static int l_obj_closed(lua_State *L)
{
    struct lobj **p = lua_touserdata(L, 1);
    lua_pushboolean(L, !p || !*p || (*p)->closing);
    return 1;
}

/* ---- client ---------------------------------------------------------------------------------- */

/* client{ server_ip=, server_port=, server_key=, secret=, token=, flow_idle_ms=, quic={},
 *         bind_ip=, bind_port=, dual_stack=, spare_addrs=, on_event= } */
static int l_fwd_client(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    struct tun_fwd_client_config cfg;
    tun_fwd_client_config_default(&cfg);
    uint8_t secret[32], key[32];
    get_bytes32(L, 1, "secret", secret, 1);
    /* Without server_ip only the endpoint starts: connect() dials later (after ICE). */
    lua_getfield(L, 1, "server_ip");
    const char *ip = luaL_optstring(L, -1, NULL);
    struct sockaddr_storage ss;
    if (ip) {
        get_bytes32(L, 1, "server_key", key, 1);
        parse_addr(L, ip, (int)get_u64(L, 1, "server_port", 0), &ss);
    }
    lua_getfield(L, 1, "token");
    const char *token = luaL_checkstring(L, -1);
    cfg.flow_idle_ms = get_u64(L, 1, "flow_idle_ms", cfg.flow_idle_ms);
    read_quic(L, 1, &cfg.quic);
    lua_getfield(L, 1, "bind_ip");
    const char *bind_ip = luaL_optstring(L, -1, NULL);
    if (bind_ip)
        parse_addr(L, bind_ip, (int)get_u64(L, 1, "bind_port", 0), &cfg.bind);
    lua_getfield(L, 1, "dual_stack");
    cfg.dual_stack = lua_toboolean(L, -1);
    cfg.spare_addrs = (unsigned)get_u64(L, 1, "spare_addrs", 0);
    struct lobj *o = new_obj(L, 0, 1);
    struct tun_fwd_client_cbs cbs = {
        .on_ready = c_on_ready,
        .on_auth_failed = c_on_auth_failed,
        .on_rejected = c_on_rejected,
        .on_closed = c_on_closed,
    };
    int rc = tun_fwd_client_new(luv_loop(L), ip ? (struct sockaddr *)&ss : NULL, key, secret, token,
                                &cfg, &cbs, o, &o->cli);
    memset(secret, 0, sizeof(secret));
    if (rc != 0) {
        discard_obj(L, o);
        return push_fail_named(L, rc, "cannot start the client");
    }
    return 1;
}

/* ---- relay -------------------------------------------------------------------------------- */

static void rp_on_state(struct tun_relaypath *rp, const char *url, int state, const char *why,
                        void *ud)
{
    (void)rp;
    struct lev *e = ev_new(ud, EV_RELAY);
    if (!e)
        return;
    e->code = state;
    snprintf(e->why.reason, sizeof(e->why.reason), "%s", url);
    if (why)
        ev_text(e, why, strlen(why));
}

static void rp_on_disco(struct tun_relaypath *rp, const uint8_t src[32], const uint8_t *data,
                        size_t len, void *ud)
{
    (void)rp;
    struct lobj *o = ud;
    if (o->hp)
        tun_holepunch_relay_input(o->hp, src, data, len);
}

static void hp_on_path(struct tun_holepunch *hp, const uint8_t peer[32],
                       const struct sockaddr *direct, uint64_t rtt_us, void *ud)
{
    (void)hp;
    (void)peer;
    struct lev *e = ev_new(ud, EV_PATH);
    if (!e)
        return;
    if (direct)
        memcpy(&e->addr, direct, tun_sockaddr_len(direct));
    e->rtt_us = rtt_us;
}

static void hp_on_addrs(struct tun_holepunch *hp, void *ud)
{
    (void)hp;
    struct lobj *o = ud;
    /* One queued event says it all: Lua reads the current list with local_addrs(). */
    for (struct tun_lua_qnode *n = o->q.head; n; n = n->next)
        if (TUN_LUA_CONTAINER(n, struct lev, node)->type == EV_ADDRS)
            return;
    ev_new(o, EV_ADDRS);
}

static struct lobj *check_any(lua_State *L)
{
    struct lobj **p = luaL_testudata(L, 1, SERVER_MT);
    if (!p)
        p = luaL_checkudata(L, 1, CLIENT_MT);
    if (!*p || (*p)->closing)
        luaL_error(L, "the object is closed");
    return *p;
}

/* relay{ url=, secret= (32 bytes: our identity), proxy=, cafile=, token= } -> true | nil, err.
 * QUIC packets for peers reached through the relay go through it from now on. */
static int l_obj_relay(lua_State *L)
{
    struct lobj *o = check_any(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (o->rp)
        return luaL_error(L, "relay() was already called");
    struct tun_relay_client_cfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    /* urls = { ... } (or url = "..."): every relay is connected; see relaypath.h. */
    const char *urls[TUN_RELAYPATH_MAX_RELAYS];
    size_t nurls = 0;
    lua_getfield(L, 2, "urls");
    if (lua_istable(L, -1)) {
        for (int i = 1; nurls < TUN_RELAYPATH_MAX_RELAYS; i++) {
            lua_rawgeti(L, -1, i);
            const char *u = lua_tostring(L, -1);
            lua_pop(L, 1);
            if (!u)
                break;
            urls[nurls++] = u; /* referenced by the option table */
        }
    }
    lua_pop(L, 1);
    if (nurls == 0 && (urls[0] = tun_lua_opt_str(L, 2, "url")) != NULL)
        nurls = 1;
    if (nurls == 0)
        return luaL_error(L, "relay: option 'urls' (or 'url') is required");
    cfg.url = urls[0];
    cfg.proxy = tun_lua_opt_str(L, 2, "proxy");
    cfg.cafile = tun_lua_opt_str(L, 2, "cafile");
    cfg.token = tun_lua_opt_str(L, 2, "token");
    get_bytes32(L, 2, "secret", cfg.secret, 1);
    struct tun_qep *ep =
        o->is_server ? tun_fwd_server_endpoint(o->srv) : tun_fwd_client_endpoint(o->cli);
    struct tun_relaypath_cbs cbs = {.on_state = rp_on_state, .on_disco = rp_on_disco};
    int rc = tun_relaypath_new(luv_loop(L), ep, &cfg, &cbs, o, &o->rp);
    for (size_t i = 1; rc == 0 && i < nurls; i++) {
        cfg.url = urls[i];
        int ra = tun_relaypath_add(o->rp, luv_loop(L), &cfg);
        if (ra < 0) {
            tun_log_warn(RELAY, "relay %s not used: %s", urls[i],
                         ra == TUN_EINVAL ? "not an http:// or https:// URL" : tun_strerror(ra));
        }
    }
    if (rc != 0) {
        memset(cfg.secret, 0, sizeof(cfg.secret));
        lua_pushnil(L);
        lua_pushfstring(L, "cannot use relay %s: %s", cfg.url,
                        rc == TUN_EINVAL ? "not an http:// or https:// URL" : tun_strerror(rc));
        return 2;
    }
    /* Hole punching, unless direct paths are off: STUN servers as "ip:port" strings. */
    struct tun_holepunch_cfg hcfg;
    memset(&hcfg, 0, sizeof(hcfg));
    memcpy(hcfg.secret, cfg.secret, 32);
    memset(cfg.secret, 0, sizeof(cfg.secret));
    lua_getfield(L, 2, "relay_only");
    hcfg.no_direct = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 2, "stun");
    if (lua_istable(L, -1)) {
        for (int i = 1; hcfg.n_stun < TUN_HOLEPUNCH_MAX_STUN; i++) {
            lua_rawgeti(L, -1, i);
            const char *st = lua_tostring(L, -1);
            lua_pop(L, 1);
            if (!st)
                break;
            if (tun_sockaddr_parse(st, &hcfg.stun[hcfg.n_stun], 0) == 0)
                hcfg.n_stun++;
        }
    }
    lua_pop(L, 1);
    struct tun_holepunch_cbs hcbs = {.on_path = hp_on_path, .on_addrs = hp_on_addrs};
    rc = tun_holepunch_new(luv_loop(L), ep, o->rp, &hcfg, &hcbs, o, &o->hp);
    sodium_memzero(hcfg.secret, sizeof(hcfg.secret));
    if (rc != 0)
        tun_log_warn(DISCO, "hole punching unavailable: %s (staying on the relay)",
                     tun_strerror(rc));
    lua_pushboolean(L, 1);
    return 1;
}

/* relay_stats() -> { {url, home, state, rtt_ms, tx/rx datagrams and bytes, connects, failures,
 * error}, ... } one per relay, or nil without relays */
static int l_obj_relay_stats(lua_State *L)
{
    struct lobj *o = check_any(L);
    if (!o->rp) {
        lua_pushnil(L);
        return 1;
    }
    int home = tun_relaypath_home(o->rp);
    lua_newtable(L);
    for (size_t i = 0; i < tun_relaypath_count(o->rp); i++) {
        struct tun_relay_client_stats st;
        tun_relay_client_stats(tun_relaypath_client(o->rp, i), &st);
        lua_newtable(L);
        lua_pushstring(L, tun_relaypath_url(o->rp, i));
        lua_setfield(L, -2, "url");
        lua_pushboolean(L, (int)i == home);
        lua_setfield(L, -2, "home");
        lua_pushstring(L, st.state == TUN_RELAY_CLIENT_READY        ? "ready"
                          : st.state == TUN_RELAY_CLIENT_CONNECTING ? "connecting"
                                                                    : "waiting");
        lua_setfield(L, -2, "state");
        lua_pushnumber(L, (lua_Number)st.rtt_us / 1000.0);
        lua_setfield(L, -2, "rtt_ms");
        TUN_LUA_SET_NUMBER(L, st, tx_datagrams);
        TUN_LUA_SET_NUMBER(L, st, rx_datagrams);
        TUN_LUA_SET_NUMBER(L, st, tx_bytes);
        TUN_LUA_SET_NUMBER(L, st, rx_bytes);
        TUN_LUA_SET_NUMBER(L, st, connects);
        TUN_LUA_SET_NUMBER(L, st, failures);
        if (st.last_error[0]) {
            lua_pushstring(L, st.last_error);
            lua_setfield(L, -2, "error");
        }
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* local_addrs() -> { "ip:port", ... }: the addresses hole punching advertises (interfaces,
 * STUN and peer-reported mappings), or nil without relay() (no hole punching). An "addrs"
 * event says when they changed. */
static int l_obj_local_addrs(lua_State *L)
{
    struct lobj *o = check_any(L);
    if (!o->hp) {
        lua_pushnil(L);
        return 1;
    }
    struct sockaddr_storage list[TUN_HOLEPUNCH_MAX_ADDRS];
    size_t n = tun_holepunch_local_addrs(o->hp, list, TUN_HOLEPUNCH_MAX_ADDRS);
    if (n > TUN_HOLEPUNCH_MAX_ADDRS)
        n = TUN_HOLEPUNCH_MAX_ADDRS;
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        tun_lua_push_addr(L, (struct sockaddr *)&list[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* connect_key(server_key) -> true | nil, err: dial the server through the relay. */
static int l_client_connect_key(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, CLIENT_MT);
    size_t kl = 0;
    const char *key = luaL_checklstring(L, 2, &kl);
    if (kl != 32)
        return luaL_argerror(L, 2, "server key must be 32 bytes");
    if (!o->rp)
        return luaL_error(L, "connect_key() needs relay() first");
    struct sockaddr_storage local, remote;
    memcpy(o->peer_key, key, 32);
    o->dialled_key = 1;
    int rc = tun_relaypath_addr(o->rp, (const uint8_t *)key, &local, &remote);
    if (rc == 0)
        rc = tun_fwd_client_connect_via(o->cli, (struct sockaddr *)&local,
                                        (struct sockaddr *)&remote, (const uint8_t *)key);
    return push_done(L, rc, "cannot connect through the relay");
}

/* connect() and redial(): (ip, port, server_key) -> true | nil, err, by `dial`. */
static int client_dial(lua_State *L, int (*dial)(struct tun_fwd_client *, const struct sockaddr *,
                                                 const uint8_t *))
{
    struct lobj *o = *check_obj(L, 1, CLIENT_MT);
    const char *ip = luaL_checkstring(L, 2);
    int port = (int)luaL_checkinteger(L, 3);
    size_t kl = 0;
    const char *key = luaL_checklstring(L, 4, &kl);
    if (kl != 32)
        return luaL_argerror(L, 4, "server key must be 32 bytes");
    struct sockaddr_storage ss;
    parse_addr(L, ip, port, &ss);
    int rc = dial(o->cli, (struct sockaddr *)&ss, (const uint8_t *)key);
    return push_done(L, rc, "cannot connect to %s port %d", ip, port);
}

/* connect(ip, port, server_key): dial a deferred client's server (once). */
static int l_client_connect(lua_State *L)
{
    return client_dial(L, tun_fwd_client_connect);
}

/* redial(ip, port, server_key): after a failed attempt, the next address
 * (tun_fwd_client_redial says when that is allowed). */
static int l_client_redial(lua_State *L)
{
    return client_dial(L, tun_fwd_client_redial);
}

/* rebind() -> true | nil, err: a deferred client that has not dialled moves to a fresh UDP
 * socket (a new port, so new NAT mappings) before another round of ICE. */
static int l_client_rebind(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, CLIENT_MT);
    int rc = tun_qep_rebind(tun_fwd_client_endpoint(o->cli));
    return push_done(L, rc, "cannot move to a new UDP socket");
}

/* endpoint_addr() -> ip, port of the QUIC socket */
static int l_client_endpoint_addr(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, CLIENT_MT);
    struct sockaddr_storage ss;
    tun_qep_local_addr(tun_fwd_client_endpoint(o->cli), &ss);
    return push_addr_port(L, &ss);
}

struct tun_qep *tun_lua_fwd_endpoint(lua_State *L, int idx)
{
    struct lobj **p = luaL_testudata(L, idx, SERVER_MT);
    if (!p)
        p = luaL_testudata(L, idx, CLIENT_MT);
    if (!p || !*p || (*p)->closing)
        return NULL;
    return (*p)->is_server ? tun_fwd_server_endpoint((*p)->srv)
                           : tun_fwd_client_endpoint((*p)->cli);
}

/* add(listen_ip, listen_port, source) -> index (1-based) | nil, err */
static int l_client_add(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, CLIENT_MT);
    const char *ip = luaL_checkstring(L, 2);
    int port = (int)luaL_checkinteger(L, 3);
    const char *source = luaL_checkstring(L, 4);
    struct sockaddr_storage ss;
    parse_addr(L, ip, port, &ss);
    int rc = tun_fwd_client_add(o->cli, (struct sockaddr *)&ss, source);
    if (rc < 0)
        return push_fail_named(L, rc, "cannot listen on %s port %d", ip, port);
    lua_pushinteger(L, rc + 1);
    return 1;
}

static int l_client_listen_addr(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, CLIENT_MT);
    struct sockaddr_storage ss;
    if (tun_fwd_client_listen_addr(o->cli, (int)luaL_checkinteger(L, 2) - 1, &ss) != 0)
        return 0;
    return push_addr_port(L, &ss);
}

static int l_client_stats(lua_State *L)
{
    struct lobj *o = *check_obj(L, 1, CLIENT_MT);
    struct tun_qconn_stats st;
    struct sockaddr_storage remote;
    if (tun_fwd_client_stats(o->cli, &st, &remote) != 0) {
        lua_pushnil(L);
        return 1;
    }
    push_quic_stats(L, &st);
    tun_lua_push_addr(L, (struct sockaddr *)&remote);
    lua_setfield(L, -2, "remote");
    lua_pushboolean(L, tun_fwd_client_ready(o->cli));
    lua_setfield(L, -2, "ready");
    return 1;
}

static int l_obj_tostring(lua_State *L)
{
    struct lobj **p = lua_touserdata(L, 1);
    int srv = luaL_testudata(L, 1, SERVER_MT) != NULL;
    lua_pushfstring(L, "%s (%s)", srv ? SERVER_MT : CLIENT_MT,
                    p && *p && !(*p)->closing ? "open" : "closed");
    return 1;
}

int luaopen_tunnel_core_fwd(lua_State *L)
{
    static const luaL_Reg server_methods[] = {
        {"local_addr", l_server_local_addr},
        {"auth", l_server_auth},
        {"accept", l_server_accept},
        {"reject", l_server_reject},
        {"kick", l_server_kick},
        {"sessions", l_server_sessions},
        {"session", l_server_session},
        {"set_max_active", l_server_set_max_active},
        {"active", l_server_active},
        {"close", l_obj_close},
        {"closed", l_obj_closed},
        {"relay", l_obj_relay},
        {"relay_stats", l_obj_relay_stats},
        {"local_addrs", l_obj_local_addrs},
        {NULL, NULL},
    };
    static const luaL_Reg client_methods[] = {
        {"add", l_client_add},
        {"listen_addr", l_client_listen_addr},
        {"connect", l_client_connect},
        {"redial", l_client_redial},
        {"rebind", l_client_rebind},
        {"endpoint_addr", l_client_endpoint_addr},
        {"stats", l_client_stats},
        {"close", l_obj_close},
        {"closed", l_obj_closed},
        {"relay", l_obj_relay},
        {"relay_stats", l_obj_relay_stats},
        {"connect_key", l_client_connect_key},
        {"local_addrs", l_obj_local_addrs},
        {NULL, NULL},
    };
    const char *names[] = {SERVER_MT, CLIENT_MT};
    const luaL_Reg *methods[] = {server_methods, client_methods};
    for (int i = 0; i < 2; i++)
        tun_lua_new_class(L, names[i], methods[i], l_obj_close, l_obj_tostring);
    static const luaL_Reg fns[] = {
        {"server", l_fwd_server},
        {"client", l_fwd_client},
        {NULL, NULL},
    };
    tun_lua_new_module(L, fns);
    return 1;
}
