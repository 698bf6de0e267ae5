#include "util/error.h"

#include <uv.h>

const char *tun_strerror(int err)
{
    switch (err) {
#define XX(name, val, msg)                                                                         \
    case TUN_##name:                                                                               \
        return msg;
        TUN_ERRNO_MAP(XX)
#undef XX
    default:
        break;
    }
    /* Everything else is a negative errno that libuv knows how to describe. */
    return uv_strerror(err);
}

const char *tun_err_name(int err)
{
    switch (err) {
#define XX(name, val, msg)                                                                         \
    case TUN_##name:                                                                               \
        return #name;
        TUN_ERRNO_MAP(XX)
#undef XX
    default:
        break;
    }
    return uv_err_name(err);
}
