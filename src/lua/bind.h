/*
 * Helpers the tunnel.core.* bindings share for what they hand to Lua and for the objects they
 * keep open (option tables and class registration are in opts.h).
 */
#ifndef TUN_LUA_BIND_H
#define TUN_LUA_BIND_H

#include <lua.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

/* The struct of type `type` whose member `member` is at `ptr`. */
#define TUN_LUA_CONTAINER(ptr, type, member)                                                       \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- results --------------------------------------------------------------------------------- */

/* Push "1.2.3.4:5" or "[::1]:5" for an IPv4 or IPv6 address, nil for any other family (an
 * address not set). */
void tun_lua_push_addr(lua_State *L, const struct sockaddr *sa);

/* The `nil, tun_strerror(rc)` of a failed call: pushes both, returns 2. */
int tun_lua_push_error(lua_State *L, int rc);

/* The `nil, "<what>: <tun_strerror(rc)>"` of a failed call, `what` formatted by
 * lua_pushfstring from `fmt`: pushes both, returns 2. */
int tun_lua_push_fail(lua_State *L, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same with the arguments in `ap` (for helpers that take a format of their own). */
int tun_lua_push_failv(lua_State *L, int rc, const char *fmt, va_list ap);

/* t.<field> = s.<field> as a number, t the table on top of the stack: a C stats struct
 * becomes a Lua table under the same names. */
#define TUN_LUA_SET_NUMBER(L, s, field)                                                            \
    (lua_pushnumber((L), (lua_Number)(s).field), lua_setfield((L), -2, #field))

/* The results of a call that returned `rc` after filling *ss: its address (1), or nil and the
 * error (2). */
int tun_lua_push_addr_result(lua_State *L, int rc, const struct sockaddr_storage *ss);

/* Call the Lua function below the `nargs` arguments on top of the stack (tun_lua_pcall),
 * popping them all. An error is logged as "error in <what>: <message>", except the exit
 * sentinel, which the host has already seen. */
void tun_lua_call_handler(lua_State *L, int nargs, const char *what);

/* ---- open objects ---------------------------------------------------------------------------- */

/* A node of an intrusive doubly-linked list, embedded in the object listed. */
struct tun_lua_link {
    struct tun_lua_link *next, *prev;
};

/* Insert `n` at the front of the list `*head`. */
void tun_lua_link_push(struct tun_lua_link **head, struct tun_lua_link *n);
/* Take `n` out of the list `*head`; a node not in it is left alone. */
void tun_lua_link_remove(struct tun_lua_link **head, struct tun_lua_link *n);

/*
 * The open objects of a binding. The first tun_lua_live_add registers a closer with the host
 * that, at shutdown, calls `close` on the first object until the list is empty: `close` must
 * take its object out of the list (tun_lua_link_remove on &live->head).
 */
struct tun_lua_live {
    struct tun_lua_link *head;
    void (*close)(struct tun_lua_link *n);
    int closer_registered;
};

void tun_lua_live_add(struct tun_lua_live *live, struct tun_lua_link *n);

/*
 * Bindings hand Lua a userdata "box" holding a pointer to their C object, anchored in the
 * registry while the object is open (so a forgotten variable does not close it), and emptied
 * when it closes (the box may outlive the object).
 *
 * tun_lua_box_new pushes a box for `obj` with the metatable `mt` and returns its anchor.
 * tun_lua_box_release empties the box anchored by *ref if it still holds `obj`, drops the
 * anchor and sets *ref to LUA_NOREF.
 */
int tun_lua_box_new(lua_State *L, const char *mt, void *obj);
void tun_lua_box_release(lua_State *L, int *ref, const void *obj);

/* ---- event queues ---------------------------------------------------------------------------- */

/* A node of an event queue, embedded in the event. */
struct tun_lua_qnode {
    struct tun_lua_qnode *next;
};

/*
 * Events that C callbacks (possibly inside packet processing) queue for Lua, handed over from
 * an idle callback, so that Lua never runs inside a C library. `deliver(owner, node)` runs for
 * every event queued before that round (events queued by the handlers wait for the next one)
 * and owns the event: it frees it.
 */
struct tun_lua_queue {
    uv_idle_t idle; /* idle.data is the owner */
    struct tun_lua_qnode *head, *tail;
    int active, closed;
    void (*deliver)(void *owner, struct tun_lua_qnode *n);
};

void tun_lua_queue_init(uv_loop_t *loop, struct tun_lua_queue *q, void *owner,
                        void (*deliver)(void *owner, struct tun_lua_qnode *n));
/* Append `n`; starts the delivery unless the queue is closed. */
void tun_lua_queue_push(struct tun_lua_queue *q, struct tun_lua_qnode *n);
/* Stop delivering and close the idle handle; `cb` runs once it is closed (the events still in
 * q->head are then the owner's to free). */
void tun_lua_queue_close(struct tun_lua_queue *q, uv_close_cb cb);
/* Hand every event still queued to `discard(owner, node)`, which frees it (for the owner's
 * close callback). */
void tun_lua_queue_clear(struct tun_lua_queue *q,
                         void (*discard)(void *owner, struct tun_lua_qnode *n));

#endif
