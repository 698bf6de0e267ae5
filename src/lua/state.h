/*
 * The C side of the Lua boundary: creating the state that shares the host's libuv loop.
 */
#ifndef TUN_LUA_STATE_H
#define TUN_LUA_STATE_H

#include <lua.h>
#include <uv.h>

/*
 * Create a LuaJIT state bound to `loop`: standard libraries, luv on the same loop (with our
 * callback error handler, which logs and never exits), the tunnel.core.* C modules and the
 * tunnel.* Lua modules in package.preload.
 *
 * With `dev_dir` (a directory holding tunnel/<module>.lua), the Lua modules are loaded from there
 * instead of the copies compiled into the binary. Returns NULL when out of memory.
 */
lua_State *tun_lua_new(uv_loop_t *loop, const char *dev_dir);

/* Message handler for lua_pcall: appends a traceback to string errors and passes any other
 * error value (such as the exit sentinel) through unchanged. */
int tun_lua_traceback(lua_State *L);

/*
 * lua_pcall with tun_lua_traceback as the handler. On error the message is left on the stack
 * (like lua_pcall) and the Lua status is returned.
 */
int tun_lua_pcall(lua_State *L, int nargs, int nresults);

/* True when the value at `idx` is the sentinel raised by os.exit()/tunnel.exit(). */
int tun_lua_is_exit(lua_State *L, int idx);
/* Raise the exit sentinel. */
int tun_lua_raise_exit(lua_State *L);

#endif
