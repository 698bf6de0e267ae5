/*
 * web/wsclient against a WebSocket server written here on the same loop with the server side
 * of src/web (stream.c for TCP/TLS, http.c for the upgrade, ws.c for frames): text and binary
 * echo, a large fragmented message with a ping between fragments, pings and pongs both ways,
 * closing handshakes started by either side, 404, a bad Sec-WebSocket-Accept, a refused port,
 * a server that never answers, dead_ms, the queue bound, invalid UTF-8 and oversized messages
 * from the server, a connection cut without a close frame, a server that stops reading (the
 * queue fills, then drains intact), wss:// with a private CA (and without it), a SOCKS5 proxy
 * (socks5h: the name goes to the proxy) and a dead one, and the callback rules (none inside
 * API calls, none after close, close from inside a callback).
 */
#include "test.h"
#include "test_cert.h"
#include "util/error.h"
#include "web/http.h"
#include "web/stream.h"
#include "web/ws.h"
#include "web/wsclient.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static uv_loop_t loop;
static struct test_cert tc;

/* ---- the server ----------------------------------------------------------------------------- */

enum mode { M_ECHO, M_404, M_BADACCEPT, M_SILENT, M_MUTE };

struct srv {
    uv_tcp_t listener;
    gnutls_certificate_credentials_t cred;
    int port;
    struct sconn *conns;
    /* what the server saw */
    int close_code;
    char close_reason[128];
    char x_test[64];
    char protocol[32];
    int pongs, pings;
    size_t messages;
};

struct sconn {
    struct srv *v;
    struct tun_wstream *s;
    struct tun_http_parser hp;
    struct tun_ws_reader wr;
    int mode, upgraded, ended, sent_close;
    uint8_t *buf, *asm_buf;
    size_t len, cap;
    struct sconn *next;
};

#define SRV_MAX_MESSAGE (4 * 1024 * 1024)

static void sc_end(struct sconn *k)
{
    if (!k->ended) {
        k->ended = 1;
        tun_wstream_close(k->s);
    }
}

static void sc_frame(struct sconn *k, int fin, int opcode, const void *data, size_t len)
{
    uint8_t *f = malloc(len + TUN_WS_MAX_HEADER);
    int n = tun_ws_frame_write(f, len + TUN_WS_MAX_HEADER, fin, opcode, data, len, NULL);
    CHECK(n > 0);
    CHECK_INT_EQ(tun_wstream_write(k->s, f, (size_t)n), 0);
    free(f);
}

static void sc_close(struct sconn *k, int code, const char *reason)
{
    uint8_t f[TUN_WS_MAX_HEADER + 125];
    int n = tun_ws_close_write(f, sizeof(f), code, reason, reason ? strlen(reason) : 0, NULL);
    CHECK(n > 0);
    tun_wstream_write(k->s, f, (size_t)n);
    k->sent_close = 1;
}

/* Binary echoes come back in 4 KiB fragments with a ping in the middle, so the client
 * reassembles and answers control frames between fragments. */
static void sc_send_fragmented(struct sconn *k, const uint8_t *data, size_t len)
{
    size_t off = 0;
    int first = 1;
    do {
        size_t n = len - off > 4096 ? 4096 : len - off;
        sc_frame(k, off + n == len, first ? TUN_WS_BINARY : TUN_WS_CONT, data + off, n);
        if (first && off + n < len)
            sc_frame(k, 1, TUN_WS_PING, "mid", 3);
        first = 0;
        off += n;
    } while (off < len);
}

static void sc_command(struct sconn *k, const char *cmd, size_t len)
{
    char text[256];
    snprintf(text, sizeof(text), "%.*s", (int)(len < 255 ? len : 255), cmd);
    int code;
    char reason[128];
    unsigned long n;
    if (sscanf(text, "close:%d:%127[^\n]", &code, reason) == 2) {
        sc_close(k, code, reason);
    } else if (strcmp(text, "ping") == 0) {
        sc_frame(k, 1, TUN_WS_PING, "srv-ping", 8);
    } else if (sscanf(text, "big:%lu", &n) == 1) {
        uint8_t *b = calloc(1, n);
        sc_frame(k, 1, TUN_WS_BINARY, b, n);
        free(b);
    } else if (strcmp(text, "badutf8") == 0) {
        sc_frame(k, 1, TUN_WS_TEXT, "\xc3\x28", 2);
    } else if (strcmp(text, "drop") == 0) {
        sc_end(k);
    } else {
        sc_frame(k, 1, TUN_WS_TEXT, cmd, len);
    }
}

static void sc_upgrade(struct sconn *k)
{
    const struct tun_http_head *h = &k->hp.head;
    const char *t = h->target;
    k->mode = strcmp(t, "/404") == 0         ? M_404
              : strcmp(t, "/badaccept") == 0 ? M_BADACCEPT
              : strcmp(t, "/silent") == 0    ? M_SILENT
              : strcmp(t, "/mute") == 0      ? M_MUTE
                                             : M_ECHO;
    const struct tun_http_header *x = tun_http_find(h, "x-test");
    if (x)
        snprintf(k->v->x_test, sizeof(k->v->x_test), "%s", x->value);
    uint8_t out[1024];
    struct tun_http_writer w;
    if (k->mode == M_SILENT)
        return;
    if (k->mode == M_404) {
        tun_http_begin_response(&w, out, sizeof(out), 404, NULL);
        tun_http_add(&w, "Content-Length", "9");
        int n = tun_http_end(&w);
        tun_wstream_write(k->s, out, (size_t)n);
        tun_wstream_write(k->s, "not found", 9);
        sc_end(k);
        return;
    }
    CHECK_INT_EQ(tun_ws_check_request(h, NULL), 0);
    static const char *const protos[] = {"chat"};
    int p = tun_ws_select_protocol(h, protos, 1);
    if (p >= 0)
        snprintf(k->v->protocol, sizeof(k->v->protocol), "%s", protos[p]);
    if (k->mode == M_BADACCEPT) {
        tun_http_begin_response(&w, out, sizeof(out), 101, NULL);
        tun_http_add(&w, "Upgrade", "websocket");
        tun_http_add(&w, "Connection", "Upgrade");
        tun_http_add(&w, "Sec-WebSocket-Accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    } else {
        tun_ws_begin_response(&w, out, sizeof(out), h, p >= 0 ? protos[p] : NULL);
    }
    int n = tun_http_end(&w);
    CHECK(n > 0);
    tun_wstream_write(k->s, out, (size_t)n);
    k->upgraded = 1;
}

static void sc_on_data(struct tun_wstream *s, const uint8_t *data, size_t len, void *ud)
{
    struct sconn *k = ud;
    if (k->len + len > k->cap) {
        k->cap = (k->len + len) * 2;
        k->buf = realloc(k->buf, k->cap);
    }
    memcpy(k->buf + k->len, data, len);
    k->len += len;
    tun_wstream_consume(s, len);
    size_t off = 0;
    if (!k->upgraded) {
        size_t used = 0;
        int rc = tun_http_parse(&k->hp, k->buf, k->len, &used);
        if (rc == 0) {
            k->len = 0;
            return;
        }
        CHECK_INT_EQ(rc, 1);
        sc_upgrade(k);
        if (!k->upgraded || k->ended)
            return;
        off = used;
    }
    while (!k->ended && off < k->len) {
        struct tun_ws_event ev;
        int n = tun_ws_read(&k->wr, k->buf + off, k->len - off, &ev);
        if (n == 0)
            break;
        if (n < 0) {
            sc_end(k);
            return;
        }
        off += (size_t)n;
        if (k->mode == M_MUTE)
            continue;
        if (ev.type == TUN_WS_EV_MESSAGE) {
            k->v->messages++;
            if (ev.opcode == TUN_WS_TEXT)
                sc_command(k, (const char *)ev.data, ev.len);
            else
                sc_send_fragmented(k, ev.data, ev.len);
        } else if (ev.type == TUN_WS_EV_PING) {
            k->v->pings++;
            sc_frame(k, 1, TUN_WS_PONG, ev.data, ev.len);
        } else if (ev.type == TUN_WS_EV_PONG) {
            if (ev.len == 8 && memcmp(ev.data, "srv-ping", 8) == 0)
                k->v->pongs++;
        } else if (ev.type == TUN_WS_EV_CLOSE) {
            k->v->close_code = ev.close_code;
            snprintf(k->v->close_reason, sizeof(k->v->close_reason), "%.*s", (int)ev.reason_len,
                     ev.reason ? ev.reason : "");
            /* Answer a close the client started; after ours, the client's is the answer. */
            if (!k->sent_close)
                sc_close(k, ev.close_code == TUN_WS_CLOSE_NO_STATUS ? 0 : ev.close_code, NULL);
            sc_end(k);
            return;
        }
    }
    if (k->ended)
        return;
    memmove(k->buf, k->buf + off, k->len - off);
    k->len -= off;
}

static void sc_on_end(struct tun_wstream *s, int err, void *ud)
{
    (void)s;
    (void)err;
    sc_end(ud);
}

static void srv_on_conn(uv_stream_t *l, int status)
{
    struct srv *v = l->data;
    CHECK_INT_EQ(status, 0);
    struct sconn *k = calloc(1, sizeof(*k));
    k->v = v;
    k->asm_buf = malloc(SRV_MAX_MESSAGE);
    tun_http_parser_init(&k->hp, TUN_HTTP_REQUEST);
    tun_ws_reader_init(&k->wr, TUN_WS_SERVER, SRV_MAX_MESSAGE, k->asm_buf, SRV_MAX_MESSAGE);
    struct tun_wstream_cfg cfg = {.write_limit = 64 * 1024 * 1024, .linger_ms = 1000};
    struct tun_wstream_cbs cbs = {NULL, sc_on_data, NULL, sc_on_end};
    CHECK_INT_EQ(tun_wstream_accept(l, v->cred, &cfg, &cbs, k, &k->s), 0);
    k->next = v->conns;
    v->conns = k;
}

static void srv_start(struct srv *v, gnutls_certificate_credentials_t cred)
{
    memset(v, 0, sizeof(*v));
    v->cred = cred;
    uv_tcp_init(&loop, &v->listener);
    v->listener.data = v;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    CHECK_INT_EQ(uv_tcp_bind(&v->listener, (struct sockaddr *)&a, 0), 0);
    CHECK_INT_EQ(uv_listen((uv_stream_t *)&v->listener, 16, srv_on_conn), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&v->listener, (struct sockaddr *)&a, &len);
    v->port = ntohs(a.sin_port);
}

static void srv_reset(struct srv *v)
{
    v->close_code = v->pongs = v->pings = 0;
    v->messages = 0;
    v->close_reason[0] = v->x_test[0] = v->protocol[0] = '\0';
}

static void srv_stop(struct srv *v)
{
    uv_close((uv_handle_t *)&v->listener, NULL);
    while (v->conns) {
        struct sconn *k = v->conns;
        v->conns = k->next;
        sc_end(k);
        free(k->buf);
        free(k->asm_buf);
        free(k);
    }
}

/* ---- the client side ------------------------------------------------------------------------ */

struct cli {
    struct tun_wsclient *c;
    int opened, closes, close_code, in_api, bad_timing;
    char reason[512];
    size_t messages, text_messages;
    uint8_t *last;
    size_t last_len;
    int last_opcode;
    int close_in_message; /* call tun_wsclient_close from on_message */
    int shutdown_in_message;
};

static void on_open(struct tun_wsclient *c, void *ud)
{
    (void)c;
    struct cli *k = ud;
    if (k->in_api)
        k->bad_timing++;
    k->opened++;
}

static void on_message(struct tun_wsclient *c, int opcode, const uint8_t *data, size_t len,
                       void *ud)
{
    struct cli *k = ud;
    if (k->in_api)
        k->bad_timing++;
    k->messages++;
    if (opcode == TUN_WS_TEXT)
        k->text_messages++;
    free(k->last);
    k->last = malloc(len + 1);
    memcpy(k->last, data, len);
    k->last[len] = 0;
    k->last_len = len;
    k->last_opcode = opcode;
    if (k->close_in_message) {
        tun_wsclient_close(c, 1000, "from a callback");
        k->c = NULL;
    } else if (k->shutdown_in_message) {
        k->in_api = 1;
        CHECK_INT_EQ(tun_wsclient_shutdown(c, 4010, "in callback"), 0);
        k->in_api = 0;
    }
}

static void on_close(struct tun_wsclient *c, int code, const char *reason, void *ud)
{
    (void)c;
    struct cli *k = ud;
    if (k->in_api)
        k->bad_timing++;
    k->closes++;
    k->close_code = code;
    snprintf(k->reason, sizeof(k->reason), "%s", reason);
}

static const struct tun_wsclient_cbs cbs = {on_open, on_message, on_close};

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static uv_timer_t tick;

/* Run the loop until cond() or about `ms` of loop time passed. */
static int run_until(int (*cond)(void *), void *arg, uint64_t ms)
{
    uv_timer_start(&tick, tick_cb, 10, 10);
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + ms;
    int ok;
    while (!(ok = cond(arg)) && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    return ok;
}

static int is_open(void *a)
{
    return ((struct cli *)a)->opened > 0;
}

static int is_closed(void *a)
{
    return ((struct cli *)a)->closes > 0;
}

static size_t want_messages;

static int got_messages(void *a)
{
    return ((struct cli *)a)->messages >= want_messages;
}

static int srv_closed(void *a)
{
    return ((struct srv *)a)->close_code != 0;
}

static int srv_pongs(void *a)
{
    return ((struct srv *)a)->pongs > 0;
}

static int srv_pings(void *a)
{
    return ((struct srv *)a)->pings > 0;
}

static struct tun_wsclient *cli_start(struct cli *k, const struct tun_wsclient_cfg *cfg)
{
    free(k->last);
    memset(k, 0, sizeof(*k));
    k->in_api = 1;
    int rc = tun_wsclient_new(&loop, cfg, &cbs, k, &k->c);
    k->in_api = 0;
    CHECK_INT_EQ(rc, 0);
    return rc == 0 ? k->c : NULL;
}

static int cli_send(struct cli *k, int opcode, const void *data, size_t len)
{
    k->in_api = 1;
    int rc = tun_wsclient_send(k->c, opcode, data, len);
    k->in_api = 0;
    return rc;
}

static void cli_free(struct cli *k)
{
    if (k->c) {
        k->in_api = 1;
        tun_wsclient_close(k->c, 0, NULL);
        k->in_api = 0;
        k->c = NULL;
    }
    CHECK_INT_EQ(k->bad_timing, 0);
}

/* Connect to url, expect a failure of kind `failure` whose text holds `needle`. */
static void expect_failure(const struct tun_wsclient_cfg *cfg, int failure, const char *needle)
{
    struct cli k = {0};
    if (!cli_start(&k, cfg))
        return;
    CHECK(run_until(is_closed, &k, 10000));
    CHECK_INT_EQ(k.opened, failure == TUN_WSCLIENT_FAIL_DEAD); /* only dead_ms needs an upgrade */
    CHECK_INT_EQ(k.closes, 1);
    CHECK_INT_EQ(k.close_code, TUN_WS_CLOSE_ABNORMAL);
    struct tun_wsclient_stats st;
    tun_wsclient_stats(k.c, &st);
    CHECK_INT_EQ(st.failure, failure);
    CHECK_INT_EQ(st.state, TUN_WSCLIENT_CLOSED);
    if (!strstr(k.reason, needle))
        fprintf(stderr, "expected \"%s\" in \"%s\"\n", needle, k.reason);
    else if (getenv("TEST_VERBOSE"))
        printf("failure %d: %s\n", failure, k.reason);
    CHECK(strstr(k.reason, needle) != NULL);
    cli_free(&k);
    free(k.last);
}

/* ---- a SOCKS5 proxy: one connection, in a thread, with blocking sockets -----------------------
 */

struct socks {
    int fd, port;
    pthread_t th;
    char seen_host[256];
    int seen_atyp;
};

static int read_full(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n) {
        ssize_t r = recv(fd, p, n, 0);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void *socks_thread(void *arg)
{
    struct socks *s = arg;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    uint8_t b[512];
    int t = -1;
    if (read_full(c, b, 2) || read_full(c, b + 2, b[1]))
        goto out;
    send(c, "\x05\x00", 2, 0);
    if (read_full(c, b, 4))
        goto out;
    s->seen_atyp = b[3];
    struct sockaddr_in a = {.sin_family = AF_INET};
    if (b[3] == 1) {
        if (read_full(c, &a.sin_addr, 4))
            goto out;
        inet_ntop(AF_INET, &a.sin_addr, s->seen_host, sizeof(s->seen_host));
    } else if (b[3] == 3) {
        if (read_full(c, b, 1) || read_full(c, b + 1, b[0]))
            goto out;
        snprintf(s->seen_host, sizeof(s->seen_host), "%.*s", b[0], (char *)b + 1);
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr); /* every name is this host here */
    } else {
        goto out;
    }
    if (read_full(c, &a.sin_port, 2))
        goto out;
    t = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(t, (struct sockaddr *)&a, sizeof(a)) != 0) {
        send(c, "\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00", 10, 0);
        goto out;
    }
    send(c, "\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00", 10, 0);
    struct pollfd p[2] = {{.fd = c, .events = POLLIN}, {.fd = t, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, 10000) <= 0)
            break;
        int from = (p[0].revents & (POLLIN | POLLHUP | POLLERR)) ? 0 : 1;
        ssize_t n = recv(p[from].fd, b, sizeof(b), 0);
        if (n <= 0 || send(p[1 - from].fd, b, (size_t)n, MSG_NOSIGNAL) != n)
            break;
    }
out:
    if (t >= 0)
        close(t);
    close(c);
    return NULL;
}

static void socks_start(struct socks *s)
{
    memset(s, 0, sizeof(*s));
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    CHECK_INT_EQ(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    CHECK_INT_EQ(listen(s->fd, 4), 0);
    socklen_t al = sizeof(a);
    getsockname(s->fd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    pthread_create(&s->th, NULL, socks_thread, s);
}

/* A port where nothing listens: bound (so nobody else takes it) but not listening. */
static int dead_port(uv_tcp_t *h)
{
    uv_tcp_init(&loop, h);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    CHECK_INT_EQ(uv_tcp_bind(h, (struct sockaddr *)&a, 0), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(h, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

/* ---- a server that stops reading after the upgrade (for backpressure) ------------------------ */

struct slow {
    uv_tcp_t listener, conn;
    struct tun_http_parser hp;
    int upgraded, accepted;
    size_t received; /* bytes after the request head */
    uint8_t rbuf[65536];
};

static void slow_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct slow *w = h->data;
    *buf = uv_buf_init((char *)w->rbuf, sizeof(w->rbuf));
}

static void slow_written(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void slow_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct slow *w = s->data;
    if (n <= 0)
        return;
    if (w->upgraded) {
        w->received += (size_t)n;
        return;
    }
    size_t used = 0;
    if (tun_http_parse(&w->hp, (const uint8_t *)buf->base, (size_t)n, &used) != 1)
        return;
    w->received += (size_t)n - used;
    static uint8_t out[512];
    struct tun_http_writer hw;
    tun_ws_begin_response(&hw, out, sizeof(out), &w->hp.head, NULL);
    int len = tun_http_end(&hw);
    CHECK(len > 0);
    uv_write_t *req = malloc(sizeof(*req));
    uv_buf_t b = uv_buf_init((char *)out, (unsigned)len);
    uv_write(req, s, &b, 1, slow_written);
    w->upgraded = 1;
    uv_read_stop(s); /* and now nothing is read until the test says so */
}

static void slow_conn(uv_stream_t *l, int status)
{
    struct slow *w = l->data;
    CHECK_INT_EQ(status, 0);
    uv_tcp_init(&loop, &w->conn);
    w->conn.data = w;
    CHECK_INT_EQ(uv_accept(l, (uv_stream_t *)&w->conn), 0);
    w->accepted = 1;
    /* Small buffers, so the client's socket fills after a few hundred KiB. */
    int small = 32 * 1024;
    uv_recv_buffer_size((uv_handle_t *)&w->conn, &small);
    uv_read_start((uv_stream_t *)&w->conn, slow_alloc, slow_read);
}

static size_t want_received;

static int slow_got_all(void *a)
{
    return ((struct slow *)a)->received >= want_received;
}

static void test_backpressure(void)
{
    struct slow w;
    memset(&w, 0, sizeof(w));
    tun_http_parser_init(&w.hp, TUN_HTTP_REQUEST);
    uv_tcp_init(&loop, &w.listener);
    w.listener.data = &w;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    CHECK_INT_EQ(uv_tcp_bind(&w.listener, (struct sockaddr *)&a, 0), 0);
    CHECK_INT_EQ(uv_listen((uv_stream_t *)&w.listener, 4, slow_conn), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&w.listener, (struct sockaddr *)&a, &len);
    char url[128];
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/", ntohs(a.sin_port));
    struct tun_wsclient_cfg cfg = {.url = url, .max_queued = 256 * 1024};
    struct cli k = {0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));

    /* Send while the loop runs until the queue stays full: the kernel's buffers are full too
     * and the client waits for the socket to become writable. */
    static uint8_t m[16384];
    size_t sent = 0;
    int stalled = 0;
    for (int round = 0; round < 100000 && stalled < 50 && sent < 4096; round++) {
        int any = 0;
        while (cli_send(&k, TUN_WS_BINARY, m, sizeof(m)) == 0) {
            m[0] = (uint8_t)++sent;
            any = 1;
        }
        stalled = any ? 0 : stalled + 1;
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    CHECK_INT_EQ(stalled, 50);
    struct tun_wsclient_stats st;
    tun_wsclient_stats(k.c, &st);
    CHECK(st.queued > 256 * 1024 - sizeof(m) - 8);
    CHECK_INT_EQ(k.closes, 0);

    /* The server reads again: everything arrives, and the queue empties. */
    uv_read_start((uv_stream_t *)&w.conn, slow_alloc, slow_read);
    want_received = sent * (sizeof(m) + 8);
    CHECK(run_until(slow_got_all, &w, 20000));
    CHECK_INT_EQ(w.received, want_received);
    tun_wsclient_stats(k.c, &st);
    CHECK_INT_EQ(st.queued, 0);
    CHECK_INT_EQ(st.tx_messages, sent);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_BINARY, m, sizeof(m)), 0);
    cli_free(&k);
    free(k.last);
    uv_close((uv_handle_t *)&w.conn, NULL);
    uv_close((uv_handle_t *)&w.listener, NULL);
    run_until(is_closed, &k, 50);
}

/* ---- the tests ------------------------------------------------------------------------------ */

static void test_echo(struct srv *v)
{
    char url[128];
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/echo?x=1", v->port);
    struct tun_wsclient_cfg cfg = {
        .url = url, .protocol = "chat", .headers = "X-Test: hello there\r\nX-Other:  2 \n"};
    struct cli k = {0};
    struct tun_wsclient *c = cli_start(&k, &cfg);
    CHECK_INT_EQ(tun_wsclient_state(c), TUN_WSCLIENT_CONNECTING);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "early", 5), TUN_EAGAIN);
    CHECK(run_until(is_open, &k, 5000));
    CHECK_INT_EQ(tun_wsclient_state(c), TUN_WSCLIENT_OPEN);
    CHECK_STR_EQ(v->x_test, "hello there");
    CHECK_STR_EQ(v->protocol, "chat");
    uint8_t key[32];
    CHECK_INT_EQ(tun_wsclient_tls_export(c, "EXPORTER-test", key, sizeof(key)), TUN_EPROTO);

    /* Text, then binary (echoed back in fragments). */
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "h\xc3\xa9llo", 6), 0);
    want_messages = 1;
    CHECK(run_until(got_messages, &k, 5000));
    CHECK_INT_EQ(k.last_opcode, TUN_WS_TEXT);
    CHECK_STR_EQ((char *)k.last, "h\xc3\xa9llo");
    uint8_t bin[300];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (uint8_t)i;
    CHECK_INT_EQ(cli_send(&k, TUN_WS_BINARY, bin, sizeof(bin)), 0);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "", 0), 0);
    want_messages = 3;
    CHECK(run_until(got_messages, &k, 5000));
    CHECK_INT_EQ(k.last_len, 0);
    CHECK_INT_EQ(k.text_messages, 2);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "\xc3\x28", 2), TUN_EFORMAT);
    CHECK_INT_EQ(cli_send(&k, 0x9, "x", 1), TUN_EINVAL);

    /* A large message: one frame out, 4 KiB fragments with a ping among them back. */
    size_t big = 900 * 1024;
    uint8_t *b = malloc(big);
    randombytes_buf(b, big);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_BINARY, b, big), 0);
    want_messages = 4;
    CHECK(run_until(got_messages, &k, 10000));
    CHECK_INT_EQ(k.last_len, big);
    CHECK_INT_EQ(k.last_opcode, TUN_WS_BINARY);
    if (k.last_len == big)
        CHECK_MEM_EQ(k.last, b, big);
    CHECK(v->pings == 0); /* the ping among the fragments came from the server */

    /* Zero-copy send. */
    uint8_t *p = tun_wsclient_reserve(c, 200); /* 10 needs a shorter header than 200 */
    CHECK(p != NULL);
    memset(p, 7, 10);
    tun_wsclient_commit(c, 10);
    want_messages = 5;
    CHECK(run_until(got_messages, &k, 5000));
    CHECK_INT_EQ(k.last_len, 10);
    CHECK_INT_EQ(k.last[9], 7);

    /* The server pings; we answer with its payload. */
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "ping", 4), 0);
    CHECK(run_until(srv_pongs, v, 5000));

    struct tun_wsclient_stats st;
    tun_wsclient_stats(c, &st);
    CHECK_INT_EQ(st.tx_messages, 6);
    CHECK_INT_EQ(st.rx_messages, 5);
    CHECK_INT_EQ(st.tx_bytes, 6 + 300 + big + 10 + 4);
    CHECK_INT_EQ(st.rx_bytes, 6 + 300 + big + 10);
    CHECK_INT_EQ(st.http_status, 101);

    /* Our closing handshake: the server sees our code and reason, we report them. */
    k.in_api = 1;
    CHECK_INT_EQ(tun_wsclient_shutdown(c, 4001, "bye now"), 0);
    CHECK_INT_EQ(tun_wsclient_shutdown(c, 4001, "bye now"), TUN_ECLOSED);
    k.in_api = 0;
    CHECK_INT_EQ(tun_wsclient_state(c), TUN_WSCLIENT_CLOSING);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "late", 4), TUN_ECLOSED);
    CHECK(run_until(is_closed, &k, 5000));
    CHECK_INT_EQ(k.closes, 1);
    CHECK_INT_EQ(k.close_code, 4001);
    CHECK_STR_EQ(k.reason, "bye now");
    CHECK_INT_EQ(v->close_code, 4001);
    CHECK_STR_EQ(v->close_reason, "bye now");
    tun_wsclient_stats(c, &st);
    CHECK_INT_EQ(st.failure, TUN_WSCLIENT_FAIL_NONE);
    CHECK_INT_EQ(tun_wsclient_state(c), TUN_WSCLIENT_CLOSED);
    run_until(is_open, &k, 50); /* nothing else arrives */
    CHECK_INT_EQ(k.closes, 1);
    cli_free(&k);
    free(b);
    free(k.last);
}

static void test_server_close(struct srv *v)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", v->port); /* http:// = ws://, no path */
    struct tun_wsclient_cfg cfg = {.url = url, .ping_ms = 20};
    struct cli k = {0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));
    CHECK_STR_EQ(v->protocol, ""); /* none offered */
    /* Our pings reach the server and its pongs give an RTT. */
    CHECK(run_until(srv_pings, v, 5000));
    struct tun_wsclient_stats st;
    for (int i = 0; i < 100; i++) {
        tun_wsclient_stats(k.c, &st);
        if (st.rtt_us)
            break;
        run_until(is_closed, &k, 20);
    }
    CHECK(st.rtt_us > 0);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "close:4002:server says bye", 26), 0);
    CHECK(run_until(is_closed, &k, 5000));
    CHECK_INT_EQ(k.close_code, 4002);
    CHECK_STR_EQ(k.reason, "server says bye");
    CHECK(run_until(srv_closed, v, 5000)); /* our answer, with the server's code */
    CHECK_INT_EQ(v->close_code, 4002);
    cli_free(&k);
    free(k.last);
}

static void test_fail_cases(struct srv *v)
{
    char url[160];
    struct tun_wsclient_cfg cfg = {.url = url};

    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/404", v->port);
    expect_failure(&cfg, TUN_WSCLIENT_FAIL_HTTP, "\"HTTP/1.1 404 Not Found\"");

    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/badaccept", v->port);
    expect_failure(&cfg, TUN_WSCLIENT_FAIL_UPGRADE, "Sec-WebSocket-Accept");

    uv_tcp_t hold;
    int port = dead_port(&hold);
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/", port);
    expect_failure(&cfg, TUN_WSCLIENT_FAIL_CONNECT, "Connection refused");

    /* A dead proxy, then a SOCKS5 proxy that works, given the name (socks5h). */
    char proxy[64];
    snprintf(proxy, sizeof(proxy), "socks5h://127.0.0.1:%d", port);
    cfg.proxy = proxy;
    snprintf(url, sizeof(url), "ws://localhost:%d/", v->port);
    expect_failure(&cfg, TUN_WSCLIENT_FAIL_PROXY, "proxy");
    uv_close((uv_handle_t *)&hold, NULL);

    struct socks s;
    socks_start(&s);
    snprintf(proxy, sizeof(proxy), "socks5h://127.0.0.1:%d", s.port);
    snprintf(url, sizeof(url), "ws://localhost:%d/echo", v->port);
    struct cli k = {0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));
    CHECK_INT_EQ(s.seen_atyp, 3);
    CHECK_STR_EQ(s.seen_host, "localhost");
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "via proxy", 9), 0);
    want_messages = 1;
    CHECK(run_until(got_messages, &k, 5000));
    CHECK_STR_EQ((char *)k.last, "via proxy");
    cli_free(&k);
    free(k.last);
    pthread_join(s.th, NULL);
    close(s.fd);
    cfg.proxy = NULL;

    /* The server accepts and never answers the upgrade. */
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/silent", v->port);
    cfg.handshake_ms = 200;
    expect_failure(&cfg, TUN_WSCLIENT_FAIL_TIMEOUT, "no WebSocket answer");
    cfg.handshake_ms = 0;

    /* The server upgrades, then neither answers pings nor sends anything. */
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/mute", v->port);
    cfg.ping_ms = 50;
    cfg.dead_ms = 300;
    expect_failure(&cfg, TUN_WSCLIENT_FAIL_DEAD, "nothing received");
    cfg.ping_ms = cfg.dead_ms = 0;

    /* Protocol errors from the server: we close with the right code and say why. */
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/echo", v->port);
    cfg.max_message = 1000;
    srv_reset(v);
    k = (struct cli){0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "big:5000", 8), 0);
    CHECK(run_until(is_closed, &k, 5000));
    CHECK(strstr(k.reason, "too big") != NULL);
    CHECK(run_until(srv_closed, v, 5000));
    CHECK_INT_EQ(v->close_code, TUN_WS_CLOSE_TOO_BIG);
    cli_free(&k);
    free(k.last);
    cfg.max_message = 0;

    srv_reset(v);
    k = (struct cli){0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "badutf8", 7), 0);
    CHECK(run_until(is_closed, &k, 5000));
    CHECK(strstr(k.reason, "UTF-8") != NULL);
    CHECK(run_until(srv_closed, v, 5000));
    CHECK_INT_EQ(v->close_code, TUN_WS_CLOSE_INVALID_DATA);
    struct tun_wsclient_stats st;
    tun_wsclient_stats(k.c, &st);
    CHECK_INT_EQ(st.failure, TUN_WSCLIENT_FAIL_PROTOCOL);
    cli_free(&k);
    free(k.last);

    /* The server cuts the connection without a close frame. */
    k = (struct cli){0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "drop", 4), 0);
    CHECK(run_until(is_closed, &k, 5000));
    CHECK(strstr(k.reason, "without a close frame") != NULL);
    tun_wsclient_stats(k.c, &st);
    CHECK_INT_EQ(st.failure, TUN_WSCLIENT_FAIL_EOF);
    cli_free(&k);
    free(k.last);
}

static void test_queue_and_callbacks(struct srv *v)
{
    char url[128];
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/echo", v->port);
    struct tun_wsclient_cfg cfg = {.url = url, .max_queued = 64 * 1024};
    struct cli k = {0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));
    /* Nothing is written before the loop turns, so the queue fills deterministically. */
    uint8_t m[8192];
    memset(m, 1, sizeof(m));
    int sent = 0, rc;
    while ((rc = cli_send(&k, TUN_WS_BINARY, m, sizeof(m))) == 0)
        sent++;
    CHECK_INT_EQ(rc, TUN_EAGAIN);
    CHECK_INT_EQ(sent, 7); /* 7 x (8192 + 8) fit in 64 KiB, an 8th does not */
    struct tun_wsclient_stats st;
    tun_wsclient_stats(k.c, &st);
    CHECK(st.queued <= 64 * 1024);
    CHECK_INT_EQ(st.queued, 7 * (8192 + 8));
    CHECK(tun_wsclient_reserve(k.c, 8192) == NULL);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_BINARY, m, 70000), TUN_ETOOBIG);
    want_messages = 7;
    CHECK(run_until(got_messages, &k, 5000));
    tun_wsclient_stats(k.c, &st);
    CHECK_INT_EQ(st.queued, 0);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_BINARY, m, sizeof(m)), 0);

    /* Closing from inside on_message: no callback afterwards, not even on_close. */
    k.close_in_message = 1;
    want_messages = 8;
    CHECK(run_until(got_messages, &k, 5000));
    CHECK(k.c == NULL);
    run_until(is_closed, &k, 100);
    CHECK_INT_EQ(k.closes, 0);
    CHECK(run_until(srv_closed, v, 5000));
    CHECK_INT_EQ(v->close_code, 1000);
    CHECK_STR_EQ(v->close_reason, "from a callback");
    cli_free(&k);
    free(k.last);

    /* shutdown from inside on_message: on_close follows, later. */
    srv_reset(v);
    k = (struct cli){0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));
    k.shutdown_in_message = 1;
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "x", 1), 0);
    CHECK(run_until(is_closed, &k, 5000));
    CHECK_INT_EQ(k.close_code, 4010);
    CHECK_INT_EQ(v->close_code, 4010);
    cli_free(&k);
    free(k.last);

    /* shutdown while connecting: on_close with our code, in a later turn. */
    k = (struct cli){0};
    cli_start(&k, &cfg);
    k.in_api = 1;
    CHECK_INT_EQ(tun_wsclient_shutdown(k.c, 1000, NULL), 0);
    CHECK_INT_EQ(tun_wsclient_shutdown(k.c, 1000, NULL), TUN_ECLOSED);
    CHECK_INT_EQ(tun_wsclient_shutdown(k.c, 1005, NULL), TUN_EINVAL);
    k.in_api = 0;
    CHECK_INT_EQ(k.closes, 0);
    CHECK(run_until(is_closed, &k, 5000));
    CHECK_INT_EQ(k.close_code, 1000);
    CHECK_INT_EQ(k.opened, 0);
    cli_free(&k);
    free(k.last);

    /* close while connecting, and right after creation: nothing is ever called. */
    k = (struct cli){0};
    cli_start(&k, &cfg);
    cli_free(&k);
    run_until(is_closed, &k, 100);
    CHECK_INT_EQ(k.closes + k.opened, 0);
    free(k.last);
}

static void test_tls(void)
{
    gnutls_certificate_credentials_t cred;
    gnutls_certificate_allocate_credentials(&cred);
    CHECK_INT_EQ(gnutls_certificate_set_x509_key_file(cred, tc.cert, tc.key, GNUTLS_X509_FMT_PEM),
                 0);
    struct srv v;
    srv_start(&v, cred);
    char url[128];
    snprintf(url, sizeof(url), "wss://localhost:%d/echo", v.port);
    struct tun_wsclient_cfg cfg = {.url = url, .cafile = tc.cert};
    struct cli k = {0};
    cli_start(&k, &cfg);
    CHECK(run_until(is_open, &k, 5000));
    uint8_t key1[32], key2[32];
    CHECK_INT_EQ(tun_wsclient_tls_export(k.c, "EXPORTER-test", key1, sizeof(key1)), 0);
    CHECK_INT_EQ(tun_wsclient_tls_export(k.c, "EXPORTER-other", key2, sizeof(key2)), 0);
    CHECK(memcmp(key1, key2, 32) != 0);
    size_t big = 200 * 1024;
    uint8_t *b = malloc(big);
    randombytes_buf(b, big);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_BINARY, b, big), 0);
    CHECK_INT_EQ(cli_send(&k, TUN_WS_TEXT, "over tls", 8), 0);
    want_messages = 2;
    CHECK(run_until(got_messages, &k, 10000));
    CHECK_STR_EQ((char *)k.last, "over tls");
    k.in_api = 1;
    CHECK_INT_EQ(tun_wsclient_shutdown(k.c, 1000, "done"), 0);
    k.in_api = 0;
    CHECK(run_until(is_closed, &k, 5000));
    CHECK_INT_EQ(k.close_code, 1000);
    CHECK_INT_EQ(v.close_code, 1000);
    cli_free(&k);
    free(k.last);
    free(b);

    cfg.cafile = NULL;
    expect_failure(&cfg, TUN_WSCLIENT_FAIL_TLS, "not trusted");
    srv_stop(&v);
    run_until(is_closed, &k, 100);
    gnutls_certificate_free_credentials(cred);
}

static void test_config(void)
{
    struct tun_wsclient *c;
    const char *why = NULL;
    struct tun_wsclient_cfg cfg = {.url = "ftp://127.0.0.1/"};
    CHECK_INT_EQ(tun_wsclient_new(&loop, &cfg, &cbs, NULL, &c), TUN_EINVAL);
    CHECK_INT_EQ(tun_wsclient_check_url("ftp://x/", &why), TUN_EINVAL);
    CHECK(why && strstr(why, "ws://"));
    CHECK_INT_EQ(tun_wsclient_check_url("ws:///path", &why), TUN_EINVAL);
    CHECK_INT_EQ(tun_wsclient_check_url("ws://user:pw@host/", &why), TUN_EINVAL);
    CHECK_INT_EQ(tun_wsclient_check_url("ws://host/a#frag", &why), TUN_EINVAL);
    CHECK_INT_EQ(tun_wsclient_check_url("ws://host/a b", &why), TUN_EINVAL);
    CHECK_INT_EQ(tun_wsclient_check_url("WSS://[::1]:443/x?y=1", &why), 0);
    CHECK_INT_EQ(tun_wsclient_check_url("ws://host", &why), 0);
    cfg.url = "ws://127.0.0.1:1/";
    cfg.proxy = "http://127.0.0.1:8080";
    CHECK_INT_EQ(tun_wsclient_new(&loop, &cfg, &cbs, NULL, &c), TUN_EINVAL);
    cfg.proxy = NULL;
    cfg.headers = "no colon here";
    CHECK_INT_EQ(tun_wsclient_new(&loop, &cfg, &cbs, NULL, &c), TUN_EINVAL);
    cfg.headers = "Bad Name: x";
    CHECK_INT_EQ(tun_wsclient_new(&loop, &cfg, &cbs, NULL, &c), TUN_EINVAL);
    cfg.headers = NULL;
    cfg.protocol = "a\r\nb";
    CHECK_INT_EQ(tun_wsclient_new(&loop, &cfg, &cbs, NULL, &c), TUN_EINVAL);
}

int main(void)
{
    CHECK_INT_EQ(sodium_init() < 0, 0);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &tick);
    uv_unref((uv_handle_t *)&tick);
    test_cert_make(&tc);

    struct srv v;
    srv_start(&v, NULL);
    test_config();
    test_echo(&v);
    srv_reset(&v);
    test_server_close(&v);
    srv_reset(&v);
    test_fail_cases(&v);
    srv_reset(&v);
    test_queue_and_callbacks(&v);
    srv_stop(&v);
    test_backpressure();
    test_tls();

    test_cert_remove(&tc);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    return TEST_DONE();
}
