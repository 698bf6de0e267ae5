/*
 * Error codes shared by every layer.
 *
 * Functions return 0 (or a non-negative count) on success and a negative code on failure.
 * libuv's UV_E* codes (negative errno values) pass through unchanged, so our own codes start
 * at -1000 where they cannot collide with an errno.
 */
#ifndef TUN_UTIL_ERROR_H
#define TUN_UTIL_ERROR_H

#define TUN_ERRNO_MAP(XX)                                                                          \
    XX(EINVAL, -1000, "invalid argument")                                                          \
    XX(ENOMEM, -1001, "out of memory")                                                             \
    XX(EFORMAT, -1002, "malformed input")                                                          \
    XX(ELENGTH, -1003, "wrong length")                                                             \
    XX(ECHECKSUM, -1004, "checksum mismatch")                                                      \
    XX(ERANGE, -1005, "value out of range")                                                        \
    XX(ECRYPTO, -1006, "cryptographic operation failed")                                           \
    XX(EAGAIN, -1007, "try again later")                                                           \
    XX(EPROTO, -1008, "protocol violation")                                                        \
    XX(ETIMEDOUT, -1009, "timed out")                                                              \
    XX(ECLOSED, -1010, "already closed")                                                           \
    XX(EDENIED, -1011, "denied by policy")                                                         \
    XX(ETOOBIG, -1012, "too large")                                                                \
    XX(EINTERNAL, -1013, "internal error")

enum tun_errno {
#define XX(name, val, msg) TUN_##name = (val),
    TUN_ERRNO_MAP(XX)
#undef XX
};

/* Human-readable text for a TUN_E* code or a libuv/errno code. Never NULL. */
const char *tun_strerror(int err);

/* Symbolic name ("EINVAL") for a TUN_E* code or a libuv code. Never NULL. */
const char *tun_err_name(int err);

#endif
