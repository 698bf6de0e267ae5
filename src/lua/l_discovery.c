/*
 * tunnel.core.discovery: the discovery client (discovery/client.h) as a Lua object.
 *
 *   local c = core.client{ proxy = s, cafile = s, connect_timeout_ms = n, timeout_ms = n,
 *                          cache_min_ttl = n, cache_max_ttl = n }
 *   c:publish(url, secret32, { relays = {...}, addrs = {...}, ttl = n }, timestamp_us, cb)
 *       cb(ok, message, status, code)
 *   c:resolve(url, key32, cb [, fresh])
 *       cb(record | nil, message, status, code)
 *           record = { relays = {...}, addrs = {...}, ttl, timestamp, cached }
 *   (status: the HTTP status or nil; code: nil on success, else an error name such as
 *   "ENOENT" (404), "EDENIED" (409 or a rollback), "ECRYPTO", "ECONNREFUSED", "ETIMEDOUT")
 *   c:close()  c:closed()
 *   core.now_us()  core.z32(key32)  core.parse_z32(text) -> key32 | nil, err
 *
 * Results are queued by the C callbacks and delivered from an idle handle, so Lua never runs
 * inside the client's completion path. After close, no callback runs. Open clients are
 * anchored in the registry and closed by the host's closer at shutdown.
 */
#include "lua/modules.h"

#include "lua/bind.h"
#include "lua/opts.h"

#include "discovery/client.h"
#include "util/error.h"
#include "util/sockaddr.h"

#include <lauxlib.h>
#include <luv/luv.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define CLIENT_MT "tunnel.discovery.client"

struct dev {
    struct tun_lua_qnode node;
    int cb_ref, is_resolve;
    int err, cached;
    long status;
    char *message;
    int has_record;
    struct tun_pkarr_record rec;
    uint64_t timestamp;
};

struct dobj {
    lua_State *L;
    int self_ref;
    struct tun_disc_client *c;
    struct tun_lua_queue q; /* of struct dev */
    int closed;
    struct tun_lua_link *reqs; /* requests whose result has not come yet (struct lreq) */
    struct tun_lua_link link;
};

struct lreq {
    struct dobj *o;
    int cb_ref, is_resolve;
    struct tun_lua_link link;
};

static void live_close(struct tun_lua_link *n);
static struct tun_lua_live live = {.close = live_close};

/* ---- requests and events -------------------------------------------------------------------- */

/* Forget request `q` and drop its callback (its result will not come). */
static void req_free(lua_State *L, struct lreq *q)
{
    tun_lua_link_remove(&q->o->reqs, &q->link);
    luaL_unref(L, LUA_REGISTRYINDEX, q->cb_ref);
    free(q);
}

static void on_result(struct tun_disc_client *c, const struct tun_disc_result *r, void *ud)
{
    (void)c;
    struct lreq *q = ud;
    struct dobj *o = q->o;
    struct dev *e = calloc(1, sizeof(*e));
    if (!e) {
        /* Nothing to report with: the callback is lost, but its reference must not leak. */
        req_free(o->L, q);
        return;
    }
    tun_lua_link_remove(&o->reqs, &q->link);
    e->cb_ref = q->cb_ref;
    e->is_resolve = q->is_resolve;
    free(q);
    e->err = r->err;
    e->status = r->status;
    e->cached = r->cached;
    e->message = strdup(r->message ? r->message : "");
    if (r->record) {
        e->has_record = 1;
        e->rec = *r->record;
        e->timestamp = r->timestamp;
    }
    tun_lua_queue_push(&o->q, &e->node);
}

static void push_record(lua_State *L, const struct dev *e)
{
    lua_newtable(L);
    lua_newtable(L);
    for (size_t i = 0; i < e->rec.n_relays; i++) {
        lua_pushstring(L, e->rec.relays[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "relays");
    lua_newtable(L);
    for (size_t i = 0; i < e->rec.n_addrs; i++) {
        tun_lua_push_addr(L, (const struct sockaddr *)&e->rec.addrs[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "addrs");
    lua_pushnumber(L, e->rec.ttl);
    lua_setfield(L, -2, "ttl");
    lua_pushnumber(L, (lua_Number)e->timestamp);
    lua_setfield(L, -2, "timestamp");
    lua_pushboolean(L, e->cached);
    lua_setfield(L, -2, "cached");
}

static void ev_free(void *owner, struct tun_lua_qnode *n)
{
    struct dobj *o = owner;
    struct dev *e = TUN_LUA_CONTAINER(n, struct dev, node);
    if (e->cb_ref != LUA_NOREF)
        luaL_unref(o->L, LUA_REGISTRYINDEX, e->cb_ref);
    free(e->message);
    free(e);
}

static void deliver(void *owner, struct tun_lua_qnode *n)
{
    struct dobj *o = owner;
    struct dev *e = TUN_LUA_CONTAINER(n, struct dev, node);
    lua_State *L = o->L;
    if (!o->closed) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, e->cb_ref);
        if (e->has_record)
            push_record(L, e);
        else if (e->is_resolve)
            lua_pushnil(L);
        else
            lua_pushboolean(L, e->err == 0);
        lua_pushstring(L, e->message ? e->message : "out of memory");
        if (e->status)
            lua_pushnumber(L, (lua_Number)e->status);
        else
            lua_pushnil(L);
        if (e->err)
            lua_pushstring(L, tun_err_name(e->err));
        else
            lua_pushnil(L);
        tun_lua_call_handler(L, 4, "a discovery callback");
    }
    ev_free(o, n);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void idle_closed(uv_handle_t *h)
{
    struct dobj *o = h->data;
    tun_lua_queue_clear(&o->q, ev_free);
    free(o);
}

static void obj_close(struct dobj *o)
{
    if (o->closed)
        return;
    o->closed = 1;
    tun_lua_link_remove(&live.head, &o->link);
    tun_disc_client_close(o->c); /* no result comes after this */
    while (o->reqs)
        req_free(o->L, TUN_LUA_CONTAINER(o->reqs, struct lreq, link));
    tun_lua_box_release(o->L, &o->self_ref, o);
    tun_lua_queue_close(&o->q, idle_closed);
}

static void live_close(struct tun_lua_link *n)
{
    obj_close(TUN_LUA_CONTAINER(n, struct dobj, link));
}

/* ---- options -------------------------------------------------------------------------------- */

static const char *const client_keys[] = {
    "proxy", "cafile", "connect_timeout_ms", "timeout_ms", "cache_min_ttl", "cache_max_ttl", NULL,
};

static const char *const record_keys[] = {"relays", "addrs", "ttl", NULL};

/* The record table at index t -> *r. Raises on misuse. */
static void get_record(lua_State *L, int t, struct tun_pkarr_record *r)
{
    luaL_checktype(L, t, LUA_TTABLE);
    tun_lua_check_keys(L, t, record_keys, "record field");
    memset(r, 0, sizeof(*r));
    r->ttl = TUN_PKARR_DEFAULT_TTL;
    lua_getfield(L, t, "ttl");
    if (!lua_isnil(L, -1)) {
        lua_Number n = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || n < 0 || n > 86400 || n != (lua_Number)(int)n)
            luaL_error(L, "record field 'ttl' must be a whole number of seconds from 0 to 86400");
        r->ttl = (uint32_t)n;
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "relays");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            luaL_error(L, "record field 'relays' must be a list of URLs");
        size_t n = lua_objlen(L, -1);
        if (n > TUN_PKARR_MAX_RELAYS)
            luaL_error(L, "a record holds at most %d relay URLs, got %d", TUN_PKARR_MAX_RELAYS,
                       (int)n);
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            size_t len = 0;
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (!s || len > TUN_PKARR_URL_MAX)
                luaL_error(L, "relays[%d] must be a URL of at most %d bytes", (int)i + 1,
                           TUN_PKARR_URL_MAX);
            memcpy(r->relays[i], s, len);
            r->relays[i][len] = '\0';
            lua_pop(L, 1);
        }
        r->n_relays = n;
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "addrs");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            luaL_error(L, "record field 'addrs' must be a list of \"ip:port\" strings");
        size_t n = lua_objlen(L, -1);
        if (n > TUN_PKARR_MAX_ADDRS)
            luaL_error(L, "a record holds at most %d addresses, got %d", TUN_PKARR_MAX_ADDRS,
                       (int)n);
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            if (lua_type(L, -1) != LUA_TSTRING ||
                tun_sockaddr_parse(lua_tostring(L, -1), &r->addrs[i], 0) != 0)
                luaL_error(L,
                           "addrs[%d] must be a numeric address with a port (192.0.2.7:41641 "
                           "or [2001:db8::1]:41641)",
                           (int)i + 1);
            lua_pop(L, 1);
        }
        r->n_addrs = n;
    }
    lua_pop(L, 1);
}

static const uint8_t *check_bytes(lua_State *L, int idx, const char *what)
{
    size_t len = 0;
    const char *s = luaL_checklstring(L, idx, &len);
    if (len != 32)
        luaL_argerror(L, idx, lua_pushfstring(L, "%s must be 32 bytes, got %d", what, (int)len));
    return (const uint8_t *)s;
}

/* ---- client --------------------------------------------------------------------------------- */

static int l_client(lua_State *L)
{
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    tun_lua_check_keys(L, 1, client_keys, "option");
    struct tun_disc_client_cfg cfg = {
        .proxy = tun_lua_opt_str(L, 1, "proxy"),
        .cafile = tun_lua_opt_str(L, 1, "cafile"),
        .connect_ms = (uint32_t)tun_lua_opt_uint(L, 1, "connect_timeout_ms", 0, 3600000),
        .timeout_ms = (uint32_t)tun_lua_opt_uint(L, 1, "timeout_ms", 0, 3600000),
        .cache_min_ttl = (uint32_t)tun_lua_opt_uint(L, 1, "cache_min_ttl", 0, 86400),
        .cache_max_ttl = (uint32_t)tun_lua_opt_uint(L, 1, "cache_max_ttl", 0, 86400),
    };
    struct dobj *o = calloc(1, sizeof(*o));
    if (!o)
        return luaL_error(L, "out of memory");
    int rc = tun_disc_client_new(luv_loop(L), &cfg, &o->c);
    if (rc != 0) {
        free(o);
        if (rc == TUN_EINVAL)
            return luaL_error(L, "option 'cache_min_ttl' must not exceed 'cache_max_ttl'");
        return tun_lua_push_fail(L, rc, "cannot create the discovery client");
    }
    o->L = luv_state(L);
    tun_lua_queue_init(luv_loop(L), &o->q, o, deliver);
    o->self_ref = tun_lua_box_new(L, CLIENT_MT, o);
    tun_lua_live_add(&live, &o->link);
    return 1;
}

static struct dobj *check_client(lua_State *L)
{
    struct dobj **p = luaL_checkudata(L, 1, CLIENT_MT);
    if (!*p)
        luaL_error(L, "the discovery client is closed");
    return *p;
}

static struct lreq *new_req(lua_State *L, struct dobj *o, int cb_idx)
{
    luaL_checktype(L, cb_idx, LUA_TFUNCTION);
    struct lreq *q = calloc(1, sizeof(*q));
    if (!q)
        luaL_error(L, "out of memory");
    q->o = o;
    lua_pushvalue(L, cb_idx);
    q->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    tun_lua_link_push(&o->reqs, &q->link);
    return q;
}

static int req_failed(lua_State *L, struct lreq *q, int rc, const char *url)
{
    req_free(L, q);
    if (rc == TUN_EINVAL)
        return luaL_error(L,
                          "discovery URL must start with http:// or https:// and name a host "
                          "(e.g. http://relay.example:3340/pkarr), got '%s'",
                          url);
    return tun_lua_push_error(L, rc);
}

static int l_publish(lua_State *L)
{
    struct dobj *o = check_client(L);
    const char *url = luaL_checkstring(L, 2);
    const uint8_t *secret = check_bytes(L, 3, "secret");
    struct tun_pkarr_record r;
    get_record(L, 4, &r);
    lua_Number ts = luaL_checknumber(L, 5);
    if (ts < 0 || ts > 9007199254740992.0)
        luaL_argerror(L, 5, "timestamp must be microseconds since the UNIX epoch");
    struct lreq *q = new_req(L, o, 6);
    int rc = tun_disc_publish(o->c, url, secret, &r, (uint64_t)ts, on_result, q);
    if (rc == TUN_EINVAL && (!strncmp(url, "http://", 7) || !strncmp(url, "https://", 8))) {
        req_free(L, q);
        return luaL_error(L, "the record cannot be published: relay URLs must be http:// or "
                             "https:// without spaces, addresses need a port");
    }
    if (rc == TUN_ETOOBIG) {
        req_free(L, q);
        lua_pushnil(L);
        lua_pushstring(L, "the record is larger than 1000 bytes: publish fewer addresses");
        return 2;
    }
    if (rc != 0)
        return req_failed(L, q, rc, url);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_resolve(lua_State *L)
{
    struct dobj *o = check_client(L);
    const char *url = luaL_checkstring(L, 2);
    const uint8_t *key = check_bytes(L, 3, "key");
    int fresh = lua_toboolean(L, 5);
    struct lreq *q = new_req(L, o, 4);
    q->is_resolve = 1;
    int rc = tun_disc_resolve(o->c, url, key, fresh ? TUN_DISC_FRESH : 0, on_result, q);
    if (rc != 0)
        return req_failed(L, q, rc, url);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_invalidate(lua_State *L)
{
    struct dobj *o = check_client(L);
    tun_disc_invalidate(o->c, check_bytes(L, 2, "key"));
    return 0;
}

static int l_close(lua_State *L)
{
    struct dobj **p = lua_touserdata(L, 1);
    if (p && *p)
        obj_close(*p);
    return 0;
}

static int l_closed(lua_State *L)
{
    struct dobj **p = luaL_checkudata(L, 1, CLIENT_MT);
    lua_pushboolean(L, !*p);
    return 1;
}

static int l_tostring(lua_State *L)
{
    struct dobj **p = lua_touserdata(L, 1);
    lua_pushfstring(L, "%s (%s)", CLIENT_MT, p && *p ? "open" : "closed");
    return 1;
}

/* ---- functions ------------------------------------------------------------------------------ */

static int l_now_us(lua_State *L)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (lua_Number)tv.tv_sec * 1e6 + (lua_Number)tv.tv_usec);
    return 1;
}

static int l_z32(lua_State *L)
{
    char z[TUN_PKARR_Z32_LEN + 1];
    tun_pkarr_key_format(z, check_bytes(L, 1, "key"));
    lua_pushstring(L, z);
    return 1;
}

static int l_parse_z32(lua_State *L)
{
    size_t len = 0;
    const char *s = luaL_checklstring(L, 1, &len);
    uint8_t key[TUN_PKARR_KEY_LEN];
    int rc = tun_pkarr_key_parse(key, s, len);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, rc == TUN_ECRYPTO ? "not a valid Ed25519 public key"
                                            : "not 52 z-base-32 characters");
        return 2;
    }
    lua_pushlstring(L, (const char *)key, sizeof(key));
    return 1;
}

/* sign(secret, record, timestamp_us) -> signed packet (key | sig | ts | dns), for announcing
 * it somewhere other than an HTTP server (the LAN). */
static int l_sign(lua_State *L)
{
    const uint8_t *secret = check_bytes(L, 1, "secret");
    struct tun_pkarr_record r;
    get_record(L, 2, &r);
    lua_Number ts = luaL_checknumber(L, 3);
    if (ts < 1)
        return luaL_argerror(L, 3, "a timestamp in microseconds");
    uint8_t pkt[TUN_PKARR_MAX_PACKET];
    int n = tun_pkarr_publish(pkt, sizeof(pkt), secret, (uint64_t)ts, &r);
    if (n < 0)
        return tun_lua_push_fail(L, n, "cannot sign the record");
    lua_pushlstring(L, (const char *)pkt, (size_t)n);
    return 1;
}

/* open(packet) -> key (32 bytes), record {relays, addrs, ttl, timestamp} | nil, err: verify the
 * signature and decode our record. */
static int l_open(lua_State *L)
{
    size_t len;
    const uint8_t *pkt = (const uint8_t *)luaL_checklstring(L, 1, &len);
    if (len < TUN_PKARR_KEY_LEN) {
        lua_pushnil(L);
        lua_pushstring(L, "too short for a signed record");
        return 2;
    }
    struct dev e;
    memset(&e, 0, sizeof(e));
    int rc = tun_pkarr_read_payload(&e.rec, &e.timestamp, pkt, pkt + TUN_PKARR_KEY_LEN,
                                    len - TUN_PKARR_KEY_LEN);
    if (rc != 0)
        return tun_lua_push_fail(L, rc, "not a valid signed record");
    lua_pushlstring(L, (const char *)pkt, TUN_PKARR_KEY_LEN);
    push_record(L, &e);
    return 2;
}

int luaopen_tunnel_core_discovery(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"publish", l_publish}, {"resolve", l_resolve}, {"invalidate", l_invalidate},
        {"close", l_close},     {"closed", l_closed},   {NULL, NULL},
    };
    tun_lua_new_class(L, CLIENT_MT, methods, l_close, l_tostring);
    static const luaL_Reg fns[] = {
        {"client", l_client}, {"now_us", l_now_us}, {"z32", l_z32}, {"parse_z32", l_parse_z32},
        {"sign", l_sign},     {"open", l_open},     {NULL, NULL},
    };
    tun_lua_new_module(L, fns);
    return 1;
}
