/*
 * tunnel.core.ice: ICE sessions (src/ice/agent.h) on the socket of a tunnel.core.fwd server or
 * client, so that the pair ICE finds is the very path QUIC then uses.
 *
 * The agent is sans-IO; this file is its driver: one uv_timer for its timeouts, the endpoint's
 * non-QUIC handler for input (shared by every session on that endpoint: each datagram is offered
 * to each session until one takes it, which the ufrag and transaction ids make unambiguous),
 * tun_qep_send_raw for output. Agent events are queued and delivered to Lua from an idle
 * callback, never from inside packet processing.
 */
#include "lua/modules.h"

#include "ice/agent.h"
#include "lua/bind.h"
#include "lua/l_shared.h"
#include "lua/opts.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <lauxlib.h>
#include <luv/luv.h>
#include <stdlib.h>
#include <string.h>

#define ICE_MT "tunnel.ice"

struct qev {
    struct tun_lua_qnode node;
    struct tun_ice_event ev;
};

struct lice {
    lua_State *L;
    int self_ref, cb_ref;
    struct tun_ice_agent *agent;
    struct tun_qep *ep; /* NULL once the endpoint closed */
    uv_timer_t timer;
    struct tun_lua_queue q; /* of struct qev */
    int pending_handles;
    int closing;
    struct tun_lua_link link;
};

static void live_close(struct tun_lua_link *n);
static struct tun_lua_live live = {.close = live_close};

#define LICE(n) TUN_LUA_CONTAINER(n, struct lice, link)

static void pump(struct lice *s);

/* ---- endpoint demultiplexing ---------------------------------------------------------------- */

static void ep_input(void *ud, const struct sockaddr *local, const struct sockaddr *from,
                     const uint8_t *data, size_t len)
{
    (void)local;
    struct tun_qep *ep = ud;
    for (struct tun_lua_link *n = live.head; n; n = n->next) {
        struct lice *s = LICE(n);
        if (s->ep != ep || s->closing)
            continue;
        int rc = tun_ice_agent_input(s->agent, from, data, len, uv_now(s->timer.loop));
        if (rc != 0) {
            if (rc < 0) {
                char buf[80];
                tun_log_debug(ICE, "malformed STUN from %s dropped: %s",
                              tun_sockaddr_format(from, buf, sizeof(buf)), tun_strerror(rc));
            }
            pump(s);
            return;
        }
    }
}

static void ep_attach(struct tun_qep *ep)
{
    tun_qep_set_other_handler(ep, ep_input, ep);
}

static void ep_detach_if_unused(struct tun_qep *ep)
{
    for (struct tun_lua_link *n = live.head; n; n = n->next)
        if (LICE(n)->ep == ep && !LICE(n)->closing)
            return;
    tun_qep_set_other_handler(ep, NULL, NULL);
}

static void endpoint_closing(struct tun_qep *ep)
{
    for (struct tun_lua_link *n = live.head; n; n = n->next)
        if (LICE(n)->ep == ep)
            LICE(n)->ep = NULL;
}

/* ---- driver --------------------------------------------------------------------------------- */

static void timer_cb(uv_timer_t *t)
{
    pump(t->data);
}

static void pump(struct lice *s)
{
    if (s->closing)
        return;
    uint64_t now = uv_now(s->timer.loop);
    uint8_t buf[1500];
    struct sockaddr_storage to;
    for (int i = 0; i < 64; i++) {
        int n = tun_ice_agent_next_send(s->agent, now, buf, sizeof(buf), &to);
        if (n <= 0) {
            if (n < 0)
                tun_log_warn(ICE, "cannot build a STUN message: %s", tun_strerror(n));
            break;
        }
        if (s->ep) {
            int rc = tun_qep_send_raw(s->ep, (struct sockaddr *)&to, buf, (size_t)n);
            if (rc < 0) {
                char a[80];
                tun_log_debug(ICE, "send to %s failed: %s",
                              tun_sockaddr_format((struct sockaddr *)&to, a, sizeof(a)),
                              tun_strerror(rc));
            }
        }
    }
    struct tun_ice_event ev;
    while (tun_ice_agent_next_event(s->agent, &ev)) {
        struct qev *q = malloc(sizeof(*q));
        if (!q)
            break;
        q->ev = ev;
        tun_lua_queue_push(&s->q, &q->node);
    }
    int64_t t = tun_ice_agent_timeout(s->agent, now);
    if (t < 0)
        uv_timer_stop(&s->timer);
    else
        uv_timer_start(&s->timer, timer_cb, (uint64_t)t, 0);
}

/* ---- events to Lua ----------------------------------------------------------------------------
 */

/* t[field] = "ip:port" when ss is set (the table is new: nil leaves the field out). */
static void set_addr(lua_State *L, const struct sockaddr_storage *ss, const char *field)
{
    tun_lua_push_addr(L, (const struct sockaddr *)ss);
    lua_setfield(L, -2, field);
}

static void push_ip_port(lua_State *L, const struct sockaddr_storage *ss)
{
    char ip[64] = "";
    if (ss->ss_family == AF_INET)
        uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof(ip));
    else if (ss->ss_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof(ip));
    lua_pushstring(L, ip);
    lua_setfield(L, -2, "remote_ip");
    lua_pushinteger(L, tun_sockaddr_port((const struct sockaddr *)ss));
    lua_setfield(L, -2, "remote_port");
}

static void push_pair(lua_State *L, const struct tun_ice_pair_info *p)
{
    set_addr(L, &p->remote.addr, "remote");
    push_ip_port(L, &p->remote.addr);
    lua_pushstring(L, tun_ice_cand_type_name(p->remote.type));
    lua_setfield(L, -2, "remote_type");
    lua_pushstring(L, tun_ice_cand_type_name(p->local_type));
    lua_setfield(L, -2, "local_type");
    set_addr(L, &p->seen, "seen");
    lua_pushnumber(L, (lua_Number)p->rtt_ms);
    lua_setfield(L, -2, "rtt_ms");
}

static void push_cand_line(lua_State *L, const struct tun_ice_cand *c)
{
    char line[TUN_ICE_CAND_STRMAX + 1];
    int n = tun_ice_cand_format(c, line, sizeof(line));
    if (n < 0)
        lua_pushnil(L);
    else
        lua_pushlstring(L, line, (size_t)n);
}

static void push_event(lua_State *L, const struct tun_ice_event *ev)
{
    static const char *const names[] = {"none",   "candidate",    "gathered", "connected",
                                        "failed", "consent_lost", "role"};
    lua_newtable(L);
    int t = ev->type >= 0 && ev->type <= TUN_ICE_EV_ROLE_CHANGED ? ev->type : 0;
    lua_pushstring(L, names[t]);
    lua_setfield(L, -2, "type");
    switch (ev->type) {
    case TUN_ICE_EV_CANDIDATE:
        push_cand_line(L, &ev->cand);
        lua_setfield(L, -2, "candidate");
        lua_pushstring(L, tun_ice_cand_type_name(ev->cand.type));
        lua_setfield(L, -2, "candidate_type");
        break;
    case TUN_ICE_EV_CONNECTED:
        push_pair(L, &ev->pair);
        break;
    case TUN_ICE_EV_FAILED:
    case TUN_ICE_EV_CONSENT_LOST:
        lua_pushstring(L, ev->reason);
        lua_setfield(L, -2, "reason");
        break;
    case TUN_ICE_EV_ROLE_CHANGED:
        lua_pushboolean(L, ev->controlling);
        lua_setfield(L, -2, "controlling");
        break;
    default:
        break;
    }
}

static void ev_free(void *owner, struct tun_lua_qnode *n)
{
    (void)owner;
    free(TUN_LUA_CONTAINER(n, struct qev, node));
}

static void deliver(void *owner, struct tun_lua_qnode *n)
{
    struct lice *s = owner;
    struct qev *q = TUN_LUA_CONTAINER(n, struct qev, node);
    if (!s->closing && s->cb_ref != LUA_NOREF) {
        lua_rawgeti(s->L, LUA_REGISTRYINDEX, s->cb_ref);
        push_event(s->L, &q->ev);
        tun_lua_call_handler(s->L, 1, "an ICE event handler");
    }
    ev_free(s, n);
}

/* ---- lifecycle --------------------------------------------------------------------------------
 */

static void handle_closed(uv_handle_t *h)
{
    struct lice *s = h->data;
    if (--s->pending_handles > 0)
        return;
    tun_lua_queue_clear(&s->q, ev_free);
    tun_ice_agent_free(s->agent);
    free(s);
}

static void ice_close(struct lice *s)
{
    if (s->closing)
        return;
    s->closing = 1;
    tun_lua_link_remove(&live.head, &s->link);
    if (s->ep)
        ep_detach_if_unused(s->ep);
    s->ep = NULL;
    tun_lua_box_release(s->L, &s->self_ref, s);
    luaL_unref(s->L, LUA_REGISTRYINDEX, s->cb_ref);
    s->cb_ref = LUA_NOREF;
    s->pending_handles = 2;
    uv_close((uv_handle_t *)&s->timer, handle_closed);
    tun_lua_queue_close(&s->q, handle_closed);
}

static void live_close(struct tun_lua_link *n)
{
    ice_close(LICE(n));
}

static struct lice *check_ice(lua_State *L)
{
    struct lice **p = luaL_checkudata(L, 1, ICE_MT);
    if (!*p || (*p)->closing)
        luaL_error(L, "ICE session is closed");
    return *p;
}

/* ---- options ----------------------------------------------------------------------------------
 */

static uint32_t opt_u32(lua_State *L, int t, const char *k)
{
    lua_getfield(L, t, k);
    uint32_t v = 0;
    if (!lua_isnil(L, -1)) {
        lua_Number n = luaL_checknumber(L, -1);
        if (n < 0 || n > 3600000)
            luaL_error(L, "option '%s' out of range", k);
        v = (uint32_t)n;
    }
    lua_pop(L, 1);
    return v;
}

/* Host candidates: the addresses given, or every usable interface address. */
static void add_hosts(lua_State *L, struct tun_ice_agent *a, int opts, const struct sockaddr *base)
{
    int dual = base->sa_family == AF_INET6;
    unsigned port = tun_sockaddr_port(base);
    lua_getfield(L, opts, "hosts");
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TTABLE);
        for (int i = 1;; i++) {
            lua_rawgeti(L, -1, i);
            const char *ip = lua_tostring(L, -1);
            if (!ip) {
                lua_pop(L, 1);
                break;
            }
            struct sockaddr_storage ss;
            memset(&ss, 0, sizeof(ss));
            if (uv_ip4_addr(ip, (int)port, (struct sockaddr_in *)&ss) != 0 &&
                uv_ip6_addr(ip, (int)port, (struct sockaddr_in6 *)&ss) != 0)
                luaL_error(L, "hosts[%d]: '%s' is not an IP address", i, ip);
            if (ss.ss_family == AF_INET6 && !dual)
                luaL_error(L, "hosts[%d]: %s is IPv6 but the socket is IPv4 only", i, ip);
            tun_ice_agent_add_host(a, (struct sockaddr *)&ss);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    uv_interface_address_t *ifs;
    int n;
    if (uv_interface_addresses(&ifs, &n) != 0)
        return;
    /* IPv4 first: the agent also ranks it higher, and the table is bounded. */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            struct sockaddr_storage ss;
            memset(&ss, 0, sizeof(ss));
            if (ifs[i].is_internal)
                continue;
            if (pass == 0 && ifs[i].address.address4.sin_family == AF_INET) {
                memcpy(&ss, &ifs[i].address.address4, sizeof(struct sockaddr_in));
                /* 169.254/16 is link-local: not routable between sites. */
                if ((ntohl(ifs[i].address.address4.sin_addr.s_addr) >> 16) == 0xA9FE)
                    continue;
                ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
            } else if (pass == 1 && dual && ifs[i].address.address6.sin6_family == AF_INET6) {
                const struct in6_addr *a6 = &ifs[i].address.address6.sin6_addr;
                /* Link-local addresses need a zone that a candidate line cannot carry. */
                if (IN6_IS_ADDR_LINKLOCAL(a6) || IN6_IS_ADDR_V4MAPPED(a6))
                    continue;
                memcpy(&ss, &ifs[i].address.address6, sizeof(struct sockaddr_in6));
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
                ((struct sockaddr_in6 *)&ss)->sin6_scope_id = 0;
            } else {
                continue;
            }
            tun_ice_agent_add_host(a, (struct sockaddr *)&ss);
        }
    }
    uv_free_interface_addresses(ifs, n);
}

/*
 * new(fwd_object, { controlling=, stun={"ip:port",...}, hosts={"ip",...}, ta_ms=, rto_ms=,
 *                   max_tries=, repunch_ms=, keepalive_ms=, consent_ms=, consent_timeout_ms=,
 *                   fail_ms=, gather_ms=, on_event= })
 */
static int l_ice_new(lua_State *L)
{
    struct tun_qep *ep = tun_lua_fwd_endpoint(L, 1);
    if (!ep)
        return luaL_argerror(L, 1, "an open tunnel.core.fwd server or client");
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "on_event");
    luaL_checktype(L, -1, LUA_TFUNCTION);
    int cb_idx = lua_gettop(L);

    struct tun_ice_cfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    lua_getfield(L, 2, "controlling");
    cfg.controlling = lua_toboolean(L, -1);
    lua_pop(L, 1);
    cfg.ta_ms = opt_u32(L, 2, "ta_ms");
    cfg.rto_ms = opt_u32(L, 2, "rto_ms");
    cfg.rto_max_ms = opt_u32(L, 2, "rto_max_ms");
    cfg.max_tries = opt_u32(L, 2, "max_tries");
    cfg.repunch_ms = opt_u32(L, 2, "repunch_ms");
    cfg.keepalive_ms = opt_u32(L, 2, "keepalive_ms");
    cfg.consent_ms = opt_u32(L, 2, "consent_ms");
    cfg.consent_timeout_ms = opt_u32(L, 2, "consent_timeout_ms");
    cfg.fail_ms = opt_u32(L, 2, "fail_ms");
    cfg.gather_ms = opt_u32(L, 2, "gather_ms");
    /* hold_ms: nil = the role's default, 0 = none, > 0 = that long. */
    lua_getfield(L, 2, "hold_ms");
    if (!lua_isnil(L, -1)) {
        uint32_t h = opt_u32(L, 2, "hold_ms");
        cfg.hold_ms = h ? h : TUN_ICE_NO_HOLD;
    }
    lua_pop(L, 1);

    struct sockaddr_storage stun[TUN_ICE_MAX_STUN];
    size_t nstun = 0;
    lua_getfield(L, 2, "stun");
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TTABLE);
        for (int i = 1;; i++) {
            lua_rawgeti(L, -1, i);
            const char *s = lua_tostring(L, -1);
            if (!s) {
                lua_pop(L, 1);
                break;
            }
            if (nstun == TUN_ICE_MAX_STUN)
                luaL_error(L, "at most %d STUN servers", TUN_ICE_MAX_STUN);
            if (tun_sockaddr_parse(s, &stun[nstun], 0) != 0)
                luaL_error(L, "stun[%d]: '%s' is not IP:PORT", i, s);
            nstun++;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);

    struct sockaddr_storage base;
    if (tun_qep_local_addr(ep, &base) != 0)
        return luaL_error(L, "the endpoint has no local address");
    /* A STUN server of a family the socket cannot reach would only time out. */
    if (base.ss_family == AF_INET)
        for (size_t i = 0; i < nstun; i++)
            if (stun[i].ss_family != AF_INET)
                luaL_error(L, "STUN server %d is IPv6 but the socket is IPv4 only", (int)i + 1);

    struct tun_ice_agent *agent;
    int rc = tun_ice_agent_new(&cfg, &agent);
    if (rc != 0)
        return tun_lua_push_fail(L, rc, "cannot start ICE");
    add_hosts(L, agent, 2, (struct sockaddr *)&base);

    struct lice *s = calloc(1, sizeof(*s));
    if (!s) {
        tun_ice_agent_free(agent);
        return luaL_error(L, "out of memory");
    }
    s->L = luv_state(L);
    s->agent = agent;
    s->ep = ep;
    uv_timer_init(luv_loop(L), &s->timer);
    s->timer.data = s;
    tun_lua_queue_init(luv_loop(L), &s->q, s, deliver);
    lua_pushvalue(L, cb_idx);
    s->cb_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->self_ref = tun_lua_box_new(L, ICE_MT, s);
    tun_lua_live_add(&live, &s->link);
    ep_attach(ep);
    rc = tun_ice_agent_gather(agent, stun, nstun, uv_now(luv_loop(L)));
    if (rc != 0) {
        ice_close(s);
        return tun_lua_push_fail(L, rc, "cannot gather candidates");
    }
    pump(s);
    return 1;
}

static int l_ice_credentials(lua_State *L)
{
    struct lice *s = check_ice(L);
    lua_pushstring(L, tun_ice_agent_ufrag(s->agent));
    lua_pushstring(L, tun_ice_agent_pwd(s->agent));
    return 2;
}

static int l_ice_candidates(lua_State *L)
{
    struct lice *s = check_ice(L);
    struct tun_ice_cand c[TUN_ICE_MAX_LOCAL];
    size_t n = tun_ice_agent_local_candidates(s->agent, c, TUN_ICE_MAX_LOCAL);
    if (n > TUN_ICE_MAX_LOCAL)
        n = TUN_ICE_MAX_LOCAL;
    lua_createtable(L, (int)n, 0);
    int k = 1;
    for (size_t i = 0; i < n; i++) {
        push_cand_line(L, &c[i]);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        lua_rawseti(L, -2, k++);
    }
    return 1;
}

static int l_ice_stun_results(lua_State *L)
{
    struct lice *s = check_ice(L);
    lua_newtable(L);
    for (size_t i = 0; i < TUN_ICE_MAX_STUN; i++) {
        struct sockaddr_storage m;
        memset(&m, 0, sizeof(m));
        int r = tun_ice_agent_stun_result(s->agent, i, &m);
        lua_newtable(L);
        lua_pushstring(L, r > 0 ? "ok" : r == 0 ? "pending" : "failed");
        lua_setfield(L, -2, "status");
        if (r > 0)
            set_addr(L, &m, "mapped");
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* set_remote(ufrag, pwd) -> true | nil, err */
static int l_ice_set_remote(lua_State *L)
{
    struct lice *s = check_ice(L);
    const char *u = luaL_checkstring(L, 2);
    const char *pw = luaL_checkstring(L, 3);
    int rc = tun_ice_agent_set_remote(s->agent, u, pw, uv_now(s->timer.loop));
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, "invalid remote ICE credentials (ufrag 4-256 and password 22-256 "
                          "characters of A-Z a-z 0-9 + /)");
        return 2;
    }
    pump(s);
    lua_pushboolean(L, 1);
    return 1;
}

/* The candidate line at stack index idx into *c: 0, or (when it is not one) 2 after pushing
 * nil, err. */
static int parse_cand(lua_State *L, int idx, struct tun_ice_cand *c)
{
    size_t len;
    const char *line = luaL_checklstring(L, idx, &len);
    if (tun_ice_cand_parse(line, len, c) == 0)
        return 0;
    lua_pushnil(L);
    lua_pushfstring(L, "not a valid ICE candidate: %.80s", line);
    return 2;
}

/* add_remote(candidate_line) -> true | nil, err */
static int l_ice_add_remote(lua_State *L)
{
    struct lice *s = check_ice(L);
    struct tun_ice_cand c;
    int nres = parse_cand(L, 2, &c);
    if (nres)
        return nres;
    const char *line = lua_tostring(L, 2);
    int rc = tun_ice_agent_add_remote(s->agent, &c, uv_now(s->timer.loop));
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot use candidate %.80s: %s", line,
                        rc == TUN_ERANGE ? "too many candidates" : tun_strerror(rc));
        return 2;
    }
    pump(s);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_ice_end_of_candidates(lua_State *L)
{
    struct lice *s = check_ice(L);
    tun_ice_agent_end_of_candidates(s->agent);
    pump(s);
    return 0;
}

static int l_ice_state(lua_State *L)
{
    static const char *const names[] = {"new",       "gathering", "gathered",    "checking",
                                        "connected", "failed",    "disconnected"};
    struct lice *s = check_ice(L);
    int st = tun_ice_agent_state(s->agent);
    lua_pushstring(L, st >= 0 && st <= TUN_ICE_DISCONNECTED ? names[st] : "?");
    lua_pushboolean(L, tun_ice_agent_controlling(s->agent));
    return 2;
}

static int l_ice_selected(lua_State *L)
{
    struct lice *s = check_ice(L);
    struct tun_ice_pair_info pi;
    if (tun_ice_agent_selected(s->agent, &pi) != 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_newtable(L);
    push_pair(L, &pi);
    return 1;
}

static int l_ice_stop(lua_State *L)
{
    struct lice *s = check_ice(L);
    tun_ice_agent_stop(s->agent);
    pump(s);
    return 0;
}

static int l_ice_close(lua_State *L)
{
    struct lice **p = luaL_checkudata(L, 1, ICE_MT);
    if (*p)
        ice_close(*p);
    return 0;
}

static int l_ice_tostring(lua_State *L)
{
    struct lice **p = luaL_checkudata(L, 1, ICE_MT);
    lua_pushfstring(L, "tunnel.ice (%s)", *p && !(*p)->closing ? "open" : "closed");
    return 1;
}

/* Candidate line helpers, usable without a session (validation of pasted descriptions). */
static int l_ice_parse_candidate(lua_State *L)
{
    struct tun_ice_cand c;
    int nres = parse_cand(L, 1, &c);
    if (nres)
        return nres;
    lua_newtable(L);
    set_addr(L, &c.addr, "address");
    lua_pushstring(L, tun_ice_cand_type_name(c.type));
    lua_setfield(L, -2, "type");
    lua_pushnumber(L, c.priority);
    lua_setfield(L, -2, "priority");
    set_addr(L, &c.rel, "related");
    return 1;
}

int luaopen_tunnel_core_ice(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"credentials", l_ice_credentials},
        {"candidates", l_ice_candidates},
        {"stun_results", l_ice_stun_results},
        {"set_remote", l_ice_set_remote},
        {"add_remote", l_ice_add_remote},
        {"end_of_candidates", l_ice_end_of_candidates},
        {"state", l_ice_state},
        {"selected", l_ice_selected},
        {"stop", l_ice_stop},
        {"close", l_ice_close},
        {NULL, NULL},
    };
    tun_lua_endpoint_closing = endpoint_closing;
    tun_lua_new_class(L, ICE_MT, methods, l_ice_close, l_ice_tostring);
    static const luaL_Reg fns[] = {
        {"new", l_ice_new},
        {"parse_candidate", l_ice_parse_candidate},
        {NULL, NULL},
    };
    tun_lua_new_module(L, fns);
    return 1;
}
