/*
 * The process: one libuv loop, one Lua state sharing it, signals and the shutdown order.
 *
 * Shutdown always runs in this order: Lua shutdown hooks -> C subsystem closers -> close every
 * remaining handle -> run the loop until the close callbacks have run -> lua_close ->
 * uv_loop_close.
 */
#ifndef TUN_HOST_HOST_H
#define TUN_HOST_HOST_H

#include <lua.h>
#include <uv.h>

#define TUN_HOST_MAX_CLOSERS 32

typedef void (*tun_host_closer_fn)(void *ud);

struct tun_host {
    uv_loop_t loop;
    lua_State *L;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    int exit_code;
    int exiting; /* exit requested (os.exit, tunnel.exit or a signal) */
    struct {
        tun_host_closer_fn fn;
        void *ud;
    } closers[TUN_HOST_MAX_CLOSERS];
    int nclosers;
};

/* The process has one host; C modules reach it through here. NULL before tun_host_init. */
struct tun_host *tun_host_get(void);

/* Set up the loop, the Lua state and signal handlers. Returns 0 or a negative error. */
int tun_host_init(struct tun_host *h, const char *lua_dev_dir);

/* Run `require("tunnel.cli").main(args)` and then the loop. Returns the process exit code. */
int tun_host_run(struct tun_host *h, int argc, char **argv);

/* Ask the loop to stop and the process to exit with `code` once shutdown has run. Safe to
 * call from any loop callback, never from inside a protocol library callback. */
void tun_host_stop(struct tun_host *h, int code);

/* Register a function that closes a C subsystem's handles at shutdown. */
int tun_host_add_closer(struct tun_host *h, tun_host_closer_fn fn, void *ud);

/* Run the shutdown sequence and free everything. Returns the exit code. */
int tun_host_close(struct tun_host *h);

#endif
