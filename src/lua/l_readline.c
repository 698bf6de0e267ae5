/*
 * tunnel.core.readline: line editing for the REPL with libedit, driven by the libuv loop.
 *
 * libedit's blocking readline() would stall every tunnel in the process, so this uses the
 * alternate (callback) interface: Lua polls fd 0 with luv and calls read_char() when it is
 * readable; libedit consumes the keystroke and, when a line is finished, our line handler
 * queues it here. Lua is never called from inside libedit, so a Lua error can never unwind
 * through libedit's stack.
 *
 * Terminal ownership: while a prompt is installed the terminal is in libedit's edit mode. We
 * turn ISIG off in that mode so Ctrl-C reaches us as a byte (clearing the line) instead of
 * becoming SIGINT, which the host treats as "shut down". libedit's own signal handlers are
 * disabled (rl_catch_signals = 0): they re-raise signals to the whole process group, which
 * would fight libuv's handlers. stop() (called from the Lua shutdown hook) and an atexit()
 * safety net restore the terminal.
 */
#include "lua/modules.h"

#include <editline/readline.h>
#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <lauxlib.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#define HISTORY_SIZE 1000
#define QUEUE_MAX    64

enum ev_kind { EV_LINE, EV_EOF, EV_INTERRUPT };

struct event {
    enum ev_kind kind;
    char *line; /* EV_LINE only, malloc'ed */
};

static struct {
    int initialized;
    int installed;
    int utf8;        /* decode UTF-8 input into code points for libedit */
    int interrupted; /* Ctrl-C seen by getc, not yet turned into an event */
    int input_closed;
    int atexit_done;
    struct event queue[QUEUE_MAX];
    int qhead, qlen;
} rl;

static void push_event(enum ev_kind kind, char *line)
{
    if (rl.qlen == QUEUE_MAX) {
        /* Lua drains the queue after every read_char(), so this means a runaway paste;
         * dropping the line is better than growing without bound. */
        free(line);
        return;
    }
    struct event *e = &rl.queue[(rl.qhead + rl.qlen) % QUEUE_MAX];
    e->kind = kind;
    e->line = line;
    rl.qlen++;
}

/* libuv made fd 0 non-blocking when Lua started polling it; a key sequence can still arrive
 * in pieces, so wait for the rest of it here. */
static ssize_t read_byte(unsigned char *c)
{
    for (;;) {
        ssize_t n = read(STDIN_FILENO, c, 1);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
            poll(&pfd, 1, -1);
        } else if (errno != EINTR) {
            return n;
        }
    }
}

/* True when fd 0 has bytes (or an end of file / error condition) to hand to libedit. */
static int input_ready(void)
{
    struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
    return poll(&pfd, 1, 0) > 0 && pfd.revents != 0;
}

/*
 * libedit reads every byte through here (installed before rl_initialize). Two jobs:
 * Ctrl-C is turned into "finish this line" plus a flag, so the line handler can report an
 * interrupt; and with a UTF-8 locale, multi-byte sequences are assembled into one code point,
 * which is what libedit's wide-character core expects from a custom getc.
 */
static int tty_getc(FILE *stream)
{
    (void)stream;
    unsigned char c;
    if (read_byte(&c) != 1) {
        rl.input_closed = 1;
        return EOF;
    }
    if (c == 3) { /* Ctrl-C */
        rl.interrupted = 1;
        fputs("^C", rl_outstream ? rl_outstream : stdout);
        return '\n';
    }
    if (!rl.utf8 || c < 0xc0 || c > 0xf4)
        return c;
    int extra = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : 1;
    int cp = c & (0x3f >> extra);
    for (int i = 0; i < extra; i++) {
        unsigned char cc;
        if (read_byte(&cc) != 1) {
            rl.input_closed = 1;
            return EOF;
        }
        if ((cc & 0xc0) != 0x80)
            return 0xfffd; /* malformed: show a replacement character, drop the rest */
        cp = (cp << 6) | (cc & 0x3f);
    }
    return cp;
}

static void line_handler(char *line)
{
    /* Keep libedit from drawing the next prompt right away: Lua prints the result first and
     * then shows the right prompt (">" or ">>") through prompt(). */
    rl_set_prompt("");
    if (rl.interrupted) {
        rl.interrupted = 0;
        free(line);
        push_event(EV_INTERRUPT, NULL);
    } else if (line) {
        push_event(EV_LINE, line);
    } else {
        push_event(EV_EOF, NULL);
    }
}

static void restore_terminal(void)
{
    if (rl.installed) {
        rl_callback_handler_remove();
        rl.installed = 0;
    }
}

static int ensure_init(lua_State *L)
{
    if (rl.initialized)
        return 1;
    /* Follow the user's character set so libedit can display what they type. */
    setlocale(LC_CTYPE, "");
    rl.utf8 = strcmp(nl_langinfo(CODESET), "UTF-8") == 0;
    if (rl_initialize() != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "line editing could not be initialised (libedit rl_initialize failed)");
        return 0;
    }
    /* Ctrl-C must arrive as a byte while editing (see tty_getc). */
    rl_parse_and_bind("setty -d -isig");
    /* No completion source: TAB inserts itself, which suits indenting multi-line code. */
    rl_inhibit_completion = 1;
    stifle_history(HISTORY_SIZE);
    if (!rl.atexit_done) {
        atexit(restore_terminal);
        rl.atexit_done = 1;
    }
    rl.initialized = 1;
    return 1;
}

/* prompt(text): show `text` and start (or restart) editing a new line. */
static int l_prompt(lua_State *L)
{
    const char *p = luaL_checkstring(L, 1);
    if (!ensure_init(L))
        return 2;
    /* Removing and reinstalling redraws from a clean state: libedit prints the prompt when
     * the handler is installed. */
    if (rl.installed)
        rl_callback_handler_remove();
    rl.interrupted = 0;
    rl_callback_handler_install(p, line_handler);
    rl.installed = 1;
    fflush(rl_outstream ? rl_outstream : stdout);
    lua_pushboolean(L, 1);
    return 1;
}

/* stop(): stop editing and give the terminal back its original settings. Idempotent. */
static int l_stop(lua_State *L)
{
    restore_terminal();
    return 0;
}

static int pop_event(lua_State *L)
{
    if (rl.qlen == 0)
        return 0;
    struct event e = rl.queue[rl.qhead];
    rl.qhead = (rl.qhead + 1) % QUEUE_MAX;
    rl.qlen--;
    switch (e.kind) {
    case EV_LINE:
        lua_pushstring(L, e.line);
        free(e.line);
        return 1;
    case EV_EOF:
        lua_pushnil(L);
        lua_pushliteral(L, "eof");
        return 2;
    case EV_INTERRUPT:
        lua_pushnil(L);
        lua_pushliteral(L, "interrupt");
        return 2;
    }
    return 0;
}

/*
 * read_char(): feed the input waiting on fd 0 to libedit. Returns the next finished event:
 * a line (string), or nil, "eof" (Ctrl-D on an empty line, or input closed), or nil,
 * "interrupt" (Ctrl-C); returns nothing while the line is still being edited. Processing stops
 * at the first finished line so Lua can print its result before the next prompt appears.
 */
static int l_read_char(lua_State *L)
{
    if (rl.qlen > 0)
        return pop_event(L);
    if (!rl.installed)
        return luaL_error(L, "read_char called without a prompt (call prompt() first)");
    while (input_ready()) {
        rl_callback_read_char();
        if (rl.qlen == 0 && rl.interrupted) {
            /* Ctrl-C consumed by a mode that does not end the line (e.g. history search). */
            rl.interrupted = 0;
            push_event(EV_INTERRUPT, NULL);
        }
        if (rl.qlen == 0 && rl.input_closed)
            push_event(EV_EOF, NULL);
        if (rl.qlen > 0)
            break;
    }
    return pop_event(L);
}

static int l_add_history(lua_State *L)
{
    const char *line = luaL_checkstring(L, 1);
    if (!ensure_init(L))
        return 2;
    add_history(line);
    return 0;
}

static int l_read_history(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (!ensure_init(L))
        return 2;
    if (access(path, F_OK) != 0) {
        lua_pushboolean(L, 1); /* no history yet is not an error */
        return 1;
    }
    int rc = read_history(path);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot read history %s: %s", path, strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_write_history(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (!ensure_init(L))
        return 2;
    /* History can contain anything typed into a live tunnel: owner-only, created that way so
     * there is no window in which it is readable by others. */
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || fchmod(fd, 0600) != 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        lua_pushnil(L);
        lua_pushfstring(L, "cannot write history %s: %s", path, strerror(err));
        return 2;
    }
    close(fd);
    int rc = write_history(path);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot write history %s: %s", path, strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* resize(): the window changed size (SIGWINCH); libedit re-reads it. */
static int l_resize(lua_State *L)
{
    if (rl.initialized)
        rl_resize_terminal();
    return 0;
}

static int l_installed(lua_State *L)
{
    lua_pushboolean(L, rl.installed);
    return 1;
}

int luaopen_tunnel_core_readline(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"prompt", l_prompt},
        {"stop", l_stop},
        {"read_char", l_read_char},
        {"add_history", l_add_history},
        {"read_history", l_read_history},
        {"write_history", l_write_history},
        {"resize", l_resize},
        {"installed", l_installed},
        {NULL, NULL},
    };
    /* Both must be set before libedit initialises (rl_initialize reads them once). */
    rl_catch_signals = 0;
    rl_getc_function = tty_getc;
    rl_readline_name = "tunnel";
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
