#include "lua/bind.h"

#include "host/host.h"
#include "lua/state.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <lauxlib.h>

/* ---- results --------------------------------------------------------------------------------- */

void tun_lua_push_addr(lua_State *L, const struct sockaddr *sa)
{
    if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) {
        lua_pushnil(L);
        return;
    }
    char buf[80];
    lua_pushstring(L, tun_sockaddr_format(sa, buf, sizeof(buf)));
}

int tun_lua_push_error(lua_State *L, int rc)
{
    lua_pushnil(L);
    lua_pushstring(L, tun_strerror(rc));
    return 2;
}

int tun_lua_push_failv(lua_State *L, int rc, const char *fmt, va_list ap)
{
    lua_pushnil(L);
    const char *what = lua_pushvfstring(L, fmt, ap);
    lua_pushfstring(L, "%s: %s", what, tun_strerror(rc));
    lua_remove(L, -2);
    return 2;
}

int tun_lua_push_fail(lua_State *L, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tun_lua_push_failv(L, rc, fmt, ap);
    va_end(ap);
    return 2;
}

int tun_lua_push_addr_result(lua_State *L, int rc, const struct sockaddr_storage *ss)
{
    if (rc != 0)
        return tun_lua_push_error(L, rc);
    tun_lua_push_addr(L, (const struct sockaddr *)ss);
    return 1;
}

void tun_lua_call_handler(lua_State *L, int nargs, const char *what)
{
    if (tun_lua_pcall(L, nargs, 0) != 0) {
        if (!tun_lua_is_exit(L, -1)) {
            const char *msg = lua_tostring(L, -1);
            tun_log_error(LUA, "error in %s: %s", what, msg ? msg : luaL_typename(L, -1));
        }
        lua_pop(L, 1);
    }
}

/* ---- open objects ---------------------------------------------------------------------------- */

void tun_lua_link_push(struct tun_lua_link **head, struct tun_lua_link *n)
{
    n->prev = NULL;
    n->next = *head;
    if (*head)
        (*head)->prev = n;
    *head = n;
}

void tun_lua_link_remove(struct tun_lua_link **head, struct tun_lua_link *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else if (*head == n)
        *head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    n->next = n->prev = NULL;
}

static void live_close_all(void *ud)
{
    struct tun_lua_live *live = ud;
    while (live->head)
        live->close(live->head);
}

void tun_lua_live_add(struct tun_lua_live *live, struct tun_lua_link *n)
{
    tun_lua_link_push(&live->head, n);
    /* No host (a bare Lua state in tests): nobody to close them at shutdown. */
    struct tun_host *h = tun_host_get();
    if (!live->closer_registered && h) {
        tun_host_add_closer(h, live_close_all, live);
        live->closer_registered = 1;
    }
}

int tun_lua_box_new(lua_State *L, const char *mt, void *obj)
{
    void **p = lua_newuserdata(L, sizeof(*p));
    *p = obj;
    luaL_getmetatable(L, mt);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

void tun_lua_box_release(lua_State *L, int *ref, const void *obj)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
    void **p = lua_touserdata(L, -1);
    if (p && *p == obj)
        *p = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, *ref);
    *ref = LUA_NOREF;
}

/* ---- event queues ---------------------------------------------------------------------------- */

static void queue_idle_cb(uv_idle_t *h)
{
    struct tun_lua_queue *q = TUN_LUA_CONTAINER(h, struct tun_lua_queue, idle);
    /* Deliver what is queued now; events queued by the handlers wait for the next round. */
    struct tun_lua_qnode *n = q->head;
    q->head = q->tail = NULL;
    uv_idle_stop(&q->idle);
    q->active = 0;
    while (n) {
        struct tun_lua_qnode *next = n->next;
        q->deliver(h->data, n);
        n = next;
    }
}

void tun_lua_queue_init(uv_loop_t *loop, struct tun_lua_queue *q, void *owner,
                        void (*deliver)(void *owner, struct tun_lua_qnode *n))
{
    uv_idle_init(loop, &q->idle);
    q->idle.data = owner;
    q->head = q->tail = NULL;
    q->active = q->closed = 0;
    q->deliver = deliver;
}

void tun_lua_queue_push(struct tun_lua_queue *q, struct tun_lua_qnode *n)
{
    n->next = NULL;
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    if (!q->active && !q->closed) {
        q->active = 1;
        uv_idle_start(&q->idle, queue_idle_cb);
    }
}

void tun_lua_queue_close(struct tun_lua_queue *q, uv_close_cb cb)
{
    q->closed = 1;
    uv_idle_stop(&q->idle);
    uv_close((uv_handle_t *)&q->idle, cb);
}

void tun_lua_queue_clear(struct tun_lua_queue *q,
                         void (*discard)(void *owner, struct tun_lua_qnode *n))
{
    struct tun_lua_qnode *n = q->head;
    q->head = q->tail = NULL;
    while (n) {
        struct tun_lua_qnode *next = n->next;
        discard(q->idle.data, n);
        n = next;
    }
}
