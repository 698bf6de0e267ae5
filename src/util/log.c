#include "util/log.h"
#include "util/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define GROUP_NAME_MAX 31

signed char tun_log__levels[TUN_LOG_MAX_GROUPS];

static char group_names[TUN_LOG_MAX_GROUPS][GROUP_NAME_MAX + 1];
static int group_count;
static int default_level = TUN_LOG_INFO;
static int color = -1; /* -1: decide on first use */
static tun_log_change_cb change_cb;
static tun_log_sink_cb sink_cb;
static void *sink_ud;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};
static const char *const level_tags[] = {"ERROR", "WARN ", "INFO ", "DEBUG", "TRACE"};
static const char *const level_colors[] = {"\033[31m", "\033[33m", "\033[32m", "\033[36m",
                                           "\033[90m"};

static void init_builtin(void)
{
    static const char *const builtin[] = {
#define XX(id, name) name,
        TUN_LOG_GROUPS(XX)
#undef XX
    };
    if (group_count)
        return;
    for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++) {
        snprintf(group_names[i], sizeof(group_names[i]), "%s", builtin[i]);
        tun_log__levels[i] = (signed char)default_level;
    }
    group_count = TUN_LOG_G_BUILTIN_COUNT;
}

/* Built-in groups must work before anyone calls into this file, so the level table starts
 * at "info" through a constructor rather than relying on a setup call. */
__attribute__((constructor)) static void log_ctor(void)
{
    init_builtin();
}

int tun_log_group_find(const char *name)
{
    for (int i = 0; i < group_count; i++)
        if (strcmp(group_names[i], name) == 0)
            return i;
    return TUN_EINVAL;
}

int tun_log_group(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len > GROUP_NAME_MAX)
        return TUN_EINVAL;
    int id = tun_log_group_find(name);
    if (id >= 0)
        return id;
    if (group_count >= TUN_LOG_MAX_GROUPS)
        return TUN_ETOOBIG;
    memcpy(group_names[group_count], name, len + 1);
    tun_log__levels[group_count] = (signed char)default_level;
    return group_count++;
}

const char *tun_log_group_name(int group)
{
    if (group < 0 || group >= group_count)
        return "?";
    return group_names[group];
}

int tun_log_group_count(void)
{
    return group_count;
}

int tun_log_level_parse(const char *s)
{
    if (!s)
        return TUN_EINVAL;
    for (int i = 0; i <= TUN_LOG_TRACE; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return TUN_LOG_WARN;
    if (strcasecmp(s, "off") == 0 || strcasecmp(s, "none") == 0)
        return TUN_LOG_OFF;
    return TUN_EINVAL;
}

const char *tun_log_level_name(int level)
{
    if (level == TUN_LOG_OFF)
        return "off";
    if (level < 0 || level > TUN_LOG_TRACE)
        return "?";
    return level_names[level];
}

void tun_log_set_level(int group, int level)
{
    if (level < TUN_LOG_OFF)
        level = TUN_LOG_OFF;
    if (level > TUN_LOG_TRACE)
        level = TUN_LOG_TRACE;
    if (group < 0) {
        default_level = level;
        for (int i = 0; i < group_count; i++)
            tun_log__levels[i] = (signed char)level;
    } else if (group < group_count) {
        tun_log__levels[group] = (signed char)level;
    } else {
        return;
    }
    if (change_cb)
        change_cb(group, level);
}

int tun_log_get_level(int group)
{
    if (group < 0 || group >= group_count)
        return default_level;
    return tun_log__levels[group];
}

void tun_log_set_change_cb(tun_log_change_cb cb)
{
    change_cb = cb;
}

void tun_log_set_sink(tun_log_sink_cb cb, void *ud)
{
    sink_cb = cb;
    sink_ud = ud;
}

void tun_log_set_color(int on)
{
    color = on ? 1 : 0;
}

/* Format "2026-11-25T20:41:05.123Z LEVEL group: " into buf; returns its length. */
static size_t format_prefix(char *buf, size_t cap, int group, int level, int colored)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s%s%s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), colored ? level_colors[level] : "",
                     level_tags[level], colored ? "\033[0m" : "", tun_log_group_name(group));
    return n < 0 ? 0 : ((size_t)n >= cap ? cap - 1 : (size_t)n);
}

/* Copy msg into out, escaping control characters so a peer-supplied string can never forge
 * a log line or move the terminal cursor. */
static size_t append_escaped(char *out, size_t cap, const char *msg, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < len && o + 4 < cap; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c == '\n' && i + 1 == len)
            break; /* a trailing newline is noise, not content */
        if (c < 0x20 && c != '\t') {
            out[o++] = '\\';
            if (c == '\n') {
                out[o++] = 'n';
            } else {
                out[o++] = 'x';
                out[o++] = hex[c >> 4];
                out[o++] = hex[c & 15];
            }
        } else if (c == 0x7f) {
            memcpy(out + o, "\\x7f", 4);
            o += 4;
        } else {
            out[o++] = (char)c;
        }
    }
    return o;
}

static void emit(int group, int level, const char *msg, size_t len)
{
    char line[4096];
    if (color < 0) {
        const char *nc = getenv("NO_COLOR");
        color = isatty(STDERR_FILENO) && !(nc && *nc);
    }
    int colored = sink_cb ? 0 : color;
    size_t n = format_prefix(line, sizeof(line), group, level, colored);
    n += append_escaped(line + n, sizeof(line) - n - 1, msg, len);
    if (sink_cb) {
        sink_cb(group, level, line, n, sink_ud);
        return;
    }
    line[n++] = '\n';
    /* One write per line keeps lines whole when several processes share a terminal. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

void tun_vlog(int group, int level, const char *fmt, va_list ap)
{
    if (!tun_log_enabled(group, level))
        return;
    char msg[3072];
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (n < 0)
        return;
    emit(group, level, msg, (size_t)n >= sizeof(msg) ? sizeof(msg) - 1 : (size_t)n);
}

void tun_log(int group, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tun_vlog(group, level, fmt, ap);
    va_end(ap);
}

void tun_log_write(int group, int level, const char *msg, size_t len)
{
    if (!tun_log_enabled(group, level))
        return;
    emit(group, level, msg, len);
}
