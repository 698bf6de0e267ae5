#include "host/host.h"
#include "lua/state.h"
#include "net/busypoll.h"
#include "util/error.h"
#include "util/log.h"

#include <gnutls/gnutls.h>
#include <lauxlib.h>
#include <luv/lhandle.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static struct tun_host *the_host;

struct tun_host *tun_host_get(void)
{
    return the_host;
}

/* GnuTLS has one global verbosity knob; keep it in step with our "gnutls" group. */
static void gnutls_log_cb(int level, const char *msg)
{
    size_t len = strlen(msg);
    tun_log_write(TUN_LOG_G_GNUTLS, level <= 2 ? TUN_LOG_DEBUG : TUN_LOG_TRACE, msg, len);
}

static void log_level_changed(int group, int level)
{
    if (group >= 0 && group != TUN_LOG_G_GNUTLS)
        return;
    int lvl = tun_log_get_level(TUN_LOG_G_GNUTLS);
    gnutls_global_set_log_level(lvl >= TUN_LOG_TRACE ? 9 : lvl >= TUN_LOG_DEBUG ? 2 : 0);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    struct tun_host *h = sig->data;
    if (h->exiting) {
        tun_log_warn(HOST, "second %s: exiting now", signum == SIGINT ? "SIGINT" : "SIGTERM");
        _exit(128 + signum);
    }
    tun_log_info(HOST, "received %s, shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
    tun_host_stop(h, 0);
}

/* Every forwarded TCP connection holds a file descriptor on each side (and each peer a connected
 * UDP socket, net/udp.c), so the usual default soft limit of 1,024 open files would cap a server
 * or client at about a thousand connections, failing the rest with EMFILE. The soft limit is
 * only a default: raise it to the hard limit (at most 2^20, Linux's default fs.nr_open), as Go's
 * runtime does at start-up. Processes started from Lua inherit the raised limit. */
#define NOFILE_MAX ((rlim_t)1 << 20)

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want =
        rl.rlim_max == RLIM_INFINITY || rl.rlim_max > NOFILE_MAX ? NOFILE_MAX : rl.rlim_max;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rl.rlim_cur = want;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int tun_host_init(struct tun_host *h, const char *lua_dev_dir)
{
    memset(h, 0, sizeof(*h));
    raise_nofile();
    if (sodium_init() < 0) {
        fprintf(stderr, "tunnel: libsodium failed to initialise\n");
        return TUN_ECRYPTO;
    }
    gnutls_global_set_log_function(gnutls_log_cb);
    tun_log_set_change_cb(log_level_changed);
    log_level_changed(-1, 0);

    int rc = uv_loop_init(&h->loop);
    if (rc < 0)
        return rc;
    rc = tun_busypoll_init(&h->loop);
    if (rc < 0) {
        uv_loop_close(&h->loop);
        return rc;
    }
    h->L = tun_lua_new(&h->loop, lua_dev_dir);
    if (!h->L) {
        tun_busypoll_close();
        uv_run(&h->loop, UV_RUN_NOWAIT);
        uv_loop_close(&h->loop);
        return TUN_ENOMEM;
    }
    the_host = h;

    /* Signal handles are unreferenced: they must not keep an idle process alive. */
    uv_signal_init(&h->loop, &h->sigint);
    uv_signal_init(&h->loop, &h->sigterm);
    h->sigint.data = h->sigterm.data = h;
    uv_signal_start(&h->sigint, on_signal, SIGINT);
    uv_signal_start(&h->sigterm, on_signal, SIGTERM);
    uv_unref((uv_handle_t *)&h->sigint);
    uv_unref((uv_handle_t *)&h->sigterm);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

void tun_host_stop(struct tun_host *h, int code)
{
    if (!h->exiting)
        h->exit_code = code;
    h->exiting = 1;
    uv_stop(&h->loop);
}

int tun_host_add_closer(struct tun_host *h, tun_host_closer_fn fn, void *ud)
{
    if (h->nclosers >= TUN_HOST_MAX_CLOSERS)
        return TUN_ETOOBIG;
    h->closers[h->nclosers].fn = fn;
    h->closers[h->nclosers].ud = ud;
    h->nclosers++;
    return 0;
}

int tun_host_run(struct tun_host *h, int argc, char **argv)
{
    lua_State *L = h->L;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "tunnel.cli");
    if (tun_lua_pcall(L, 1, 1) != 0)
        goto fail;
    lua_getfield(L, -1, "main");
    lua_remove(L, -2);
    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    if (tun_lua_pcall(L, 1, 1) != 0)
        goto fail;
    if (lua_isnumber(L, -1)) {
        /* The command finished; nothing more to run. */
        if (!h->exiting)
            tun_host_stop(h, (int)lua_tointeger(L, -1));
    }
    lua_pop(L, 1);
    if (!h->exiting)
        uv_run(&h->loop, UV_RUN_DEFAULT);
    return h->exit_code;

fail:
    if (!tun_lua_is_exit(L, -1)) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "tunnel: %s\n", msg ? msg : "(error object is not a string)");
        if (!h->exiting)
            tun_host_stop(h, 1);
    }
    lua_pop(L, 1);
    return h->exit_code;
}

/* Any handle still open at this point belongs to luv (every C subsystem has closed its own in
 * its closer), so it is closed through luv to keep luv's bookkeeping right. */
static void close_luv_handle(uv_handle_t *handle, void *arg)
{
    lua_State *L = arg;
    if (uv_is_closing(handle))
        return;
    luv_handle_t *data = handle->data;
    /* A luv handle's data is luv's record, whose ctx is this state's luv context. Anything else
     * is a C handle that outlives its subsystem by design (a static, unreferenced helper
     * handle): close it without a callback. */
    if (!data || data->ctx != luv_context(L)) {
        tun_log_debug(HOST, "closing a %s handle owned by C", uv_handle_type_name(handle->type));
        uv_close(handle, NULL);
        return;
    }
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "luv");
    lua_getfield(L, -1, "close");
    lua_rawgeti(L, LUA_REGISTRYINDEX, data->ref);
    if (tun_lua_pcall(L, 1, 0) != 0) {
        tun_log_warn(HOST, "closing a handle failed: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 3);
}

static void run_lua_shutdown(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "tunnel.shutdown");
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    if (tun_lua_pcall(L, 0, 0) != 0) {
        if (!tun_lua_is_exit(L, -1))
            tun_log_error(LUA, "shutdown hook failed: %s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

int tun_host_close(struct tun_host *h)
{
    run_lua_shutdown(h->L);
    for (int i = h->nclosers - 1; i >= 0; i--)
        h->closers[i].fn(h->closers[i].ud);
    h->nclosers = 0;
    uv_close((uv_handle_t *)&h->sigint, NULL);
    uv_close((uv_handle_t *)&h->sigterm, NULL);
    tun_busypoll_close();
    uv_walk(&h->loop, close_luv_handle, h->L);
    /* A pending uv_stop() makes the first uv_run return without iterating, so run until the
     * loop reports nothing left: every close callback (some of them Lua) must run before
     * lua_close. */
    while (uv_run(&h->loop, UV_RUN_DEFAULT) != 0)
        ;
    lua_close(h->L);
    h->L = NULL;
    /* Closing the Lua state may have closed more handles (garbage-collected luv objects). */
    uv_run(&h->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&h->loop);
    if (rc != 0)
        tun_log_warn(HOST, "event loop did not close cleanly: %s", uv_strerror(rc));
    the_host = NULL;
    return h->exit_code;
}
