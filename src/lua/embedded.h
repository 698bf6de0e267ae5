#ifndef TUN_LUA_EMBEDDED_H
#define TUN_LUA_EMBEDDED_H

#include <stddef.h>

/* One Lua module compiled to LuaJIT bytecode at build time (see CMakeLists.txt). */
struct tun_lua_blob {
    const char *name; /* module name, e.g. "tunnel.cli" */
    const unsigned char *data;
    size_t len;
};

/* Terminated by an entry whose name is NULL. */
extern const struct tun_lua_blob tun_lua_blobs[];

#endif
