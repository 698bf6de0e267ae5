/*
 * One logging sink for C and Lua.
 *
 * Messages belong to a named group ("quic", "ctl", "gnutls", ...) and carry a level. Each group
 * has its own threshold, changeable at run time (from the command line, from Lua, or from a
 * REPL attached to a live process). Hot paths test tun_log_enabled() before formatting.
 *
 * Secrets (keys, tokens) must never be passed to this sink.
 */
#ifndef TUN_UTIL_LOG_H
#define TUN_UTIL_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum tun_log_level {
    TUN_LOG_OFF = -1, /* only as a threshold: nothing is printed */
    TUN_LOG_ERROR = 0,
    TUN_LOG_WARN,
    TUN_LOG_INFO,
    TUN_LOG_DEBUG,
    TUN_LOG_TRACE,
};

/* Built-in groups have fixed ids so C code can use them without a lookup. */
#define TUN_LOG_GROUPS(XX)                                                                         \
    XX(HOST, "host")                                                                               \
    XX(LUA, "lua")                                                                                 \
    XX(CTL, "ctl")                                                                                 \
    XX(CONFIG, "config")                                                                           \
    XX(GNUTLS, "gnutls")                                                                           \
    XX(NGTCP2, "ngtcp2")                                                                           \
    XX(QUIC, "quic")                                                                               \
    XX(NET, "net")                                                                                 \
    XX(FWD, "fwd")                                                                                 \
    XX(AUTH, "auth")                                                                               \
    XX(ICE, "ice")                                                                                 \
    XX(RELAY, "relay")                                                                             \
    XX(DISCO, "disco")                                                                             \
    XX(DISCOVERY, "discovery")                                                                     \
    XX(NOSTR, "nostr")                                                                             \
    XX(TUN, "tun")

enum tun_log_group_id {
#define XX(id, name) TUN_LOG_G_##id,
    TUN_LOG_GROUPS(XX)
#undef XX
        TUN_LOG_G_BUILTIN_COUNT
};

#define TUN_LOG_MAX_GROUPS 64

/* Called whenever a threshold changes, so libraries with their own verbosity knob
 * (GnuTLS) can follow. */
typedef void (*tun_log_change_cb)(int group, int level);

/* Where finished lines go. The default writes them to stderr. `line` has no newline. */
typedef void (*tun_log_sink_cb)(int group, int level, const char *line, size_t len, void *ud);

/* Id of the group called `name`, creating it (at the default level) when new.
 * Returns TUN_EINVAL for an empty or over-long name, TUN_ETOOBIG when the table is full. */
int tun_log_group(const char *name);
/* Id of an existing group, or TUN_EINVAL. */
int tun_log_group_find(const char *name);
const char *tun_log_group_name(int group);
int tun_log_group_count(void);

/* Parse "error|warn|info|debug|trace|off" (case-insensitive). Returns the level or TUN_EINVAL. */
int tun_log_level_parse(const char *s);
const char *tun_log_level_name(int level);

/* group < 0 sets every group and the default for groups created later. */
void tun_log_set_level(int group, int level);
int tun_log_get_level(int group);

extern signed char tun_log__levels[TUN_LOG_MAX_GROUPS];

static inline int tun_log_enabled(int group, int level)
{
    return group >= 0 && group < TUN_LOG_MAX_GROUPS && level <= tun_log__levels[group];
}

void tun_log(int group, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void tun_vlog(int group, int level, const char *fmt, va_list ap);
/* Log an already formatted message (from Lua). Control characters are escaped. */
void tun_log_write(int group, int level, const char *msg, size_t len);

void tun_log_set_change_cb(tun_log_change_cb cb);
/* NULL restores the stderr sink. */
void tun_log_set_sink(tun_log_sink_cb cb, void *ud);
/* Force or forbid colour on stderr (default: colour when stderr is a terminal and NO_COLOR is
 * unset). */
void tun_log_set_color(int on);

#define TUN_LOG(group, level, ...)                                                                 \
    do {                                                                                           \
        if (tun_log_enabled((group), (level)))                                                     \
            tun_log((group), (level), __VA_ARGS__);                                                \
    } while (0)

#define tun_log_error(g, ...) TUN_LOG(TUN_LOG_G_##g, TUN_LOG_ERROR, __VA_ARGS__)
#define tun_log_warn(g, ...)  TUN_LOG(TUN_LOG_G_##g, TUN_LOG_WARN, __VA_ARGS__)
#define tun_log_info(g, ...)  TUN_LOG(TUN_LOG_G_##g, TUN_LOG_INFO, __VA_ARGS__)
#define tun_log_debug(g, ...) TUN_LOG(TUN_LOG_G_##g, TUN_LOG_DEBUG, __VA_ARGS__)
#define tun_log_trace(g, ...) TUN_LOG(TUN_LOG_G_##g, TUN_LOG_TRACE, __VA_ARGS__)

#endif
