/* One WebSocket client connection on the loop: curl connects, we frame. See wsclient.h. */
#include "web/wsclient.h"

#include "net/curl_uv.h"
#include "util/error.h"
#include "util/log.h"
#include "web/http.h"
#include "web/ws.h"

#include <curl/curl.h>
#include <gnutls/gnutls.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Room kept beyond max_queued for control frames (pongs, pings, the close), so a full queue
 * of messages never stops us answering a ping or closing. */
#define CONTROL_ROOM (8 * (TUN_WS_MAX_HEADER + TUN_WS_MAX_CONTROL))
/* Reads per poll event before we let the loop run other work (the rest follows from idle). */
#define READS_PER_TURN 64
#define REASON_MAX     (TUN_WS_MAX_CLOSE_REASON + 1)

struct tun_wsclient {
    uv_loop_t *loop;
    struct tun_wsclient_cfg cfg;
    struct tun_wsclient_cbs cbs;
    void *ud;
    char *curl_url; /* http(s)://authority/target: all curl needs to connect */
    char *host;     /* the authority, for the Host field and messages */
    char *proxy, *cafile, *protocol;
    char proxy_shown[300]; /* the proxy without user:password@, for messages */
    uint8_t *req;          /* the upgrade request, written once at creation */
    size_t req_len;
    char ws_key[TUN_WS_KEY_LEN + 1];

    struct tun_curl_uv *curl;
    CURL *easy;
    char errbuf[CURL_ERROR_SIZE];
    uv_poll_t poll;  /* curl's socket, once connected */
    int poll_active; /* initialised and not yet closing */
    int armed;       /* events the poll is started with: re-arming costs an epoll_ctl */
    uv_timer_t timer;
    uv_check_t check;     /* flush after the I/O callbacks of this turn ... */
    uv_prepare_t prepare; /* ... or before the loop blocks, whichever comes first */
    uv_idle_t more;       /* keep reading next turn when one poll event did not drain it */
    int flush_armed, more_armed;
    int handles; /* uv handles not yet closed */
    int released;

    int state;
    int connected, upgraded;
    int close_sent, close_received;
    int report_code, report_pending;
    char report_reason[REASON_MAX];

    struct tun_http_parser hp;
    struct tun_ws_reader wr;
    uint8_t *rbuf, *asm_buf, *wbuf;
    size_t rlen, rcap, woff, wlen, wcap;
    size_t resv_hl; /* header length the last tun_wsclient_reserve() left room for */

    uint8_t rnd[256]; /* frame masks, drawn 256 bytes at a time */
    size_t rnd_off;
    uint64_t last_rx, last_ping;
    uint8_t ping_data[8];
    uint64_t ping_sent_us;
    struct tun_wsclient_stats st;
};

static void update_poll(struct tun_wsclient *c);
static void schedule(struct tun_wsclient *c);

static uint64_t now_ms(struct tun_wsclient *c)
{
    return uv_now(c->loop);
}

/* ---- URL ------------------------------------------------------------------------------------ */

static int prefix_nocase(const char *s, const char *p)
{
    return strncasecmp(s, p, strlen(p)) == 0;
}

/* Split url into its scheme's TLS flag, the authority and the target. Returns 0 or TUN_EINVAL
 * with *why set. */
static int parse_url(const char *url, int *tls, const char **auth, size_t *auth_len,
                     const char **why)
{
    *why = NULL;
    if (!url)
        return *why = "no URL", TUN_EINVAL;
    const char *rest;
    if (prefix_nocase(url, "ws://") || prefix_nocase(url, "wss://")) {
        *tls = url[2] == 's' || url[2] == 'S';
        rest = url + (*tls ? 6 : 5);
    } else if (prefix_nocase(url, "http://") || prefix_nocase(url, "https://")) {
        *tls = url[4] == 's' || url[4] == 'S';
        rest = url + (*tls ? 8 : 7);
    } else {
        *why = "the URL must start with ws://, wss://, http:// or https://";
        return TUN_EINVAL;
    }
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return *why = "the URL contains spaces or control characters", TUN_EINVAL;
    if (strchr(url, '#'))
        return *why = "a WebSocket URL has no #fragment", TUN_EINVAL;
    size_t n = strcspn(rest, "/?");
    if (n == 0)
        return *why = "the URL has no host", TUN_EINVAL;
    if (n > 255)
        return *why = "the URL's host and port are longer than 255 bytes", TUN_EINVAL;
    if (memchr(rest, '@', n))
        return *why = "user:password@ is not supported in a WebSocket URL", TUN_EINVAL;
    if (rest[0] == ':')
        return *why = "the URL has no host", TUN_EINVAL;
    *auth = rest;
    *auth_len = n;
    return 0;
}

int tun_wsclient_check_url(const char *url, const char **why)
{
    const char *w, *auth;
    size_t n;
    int tls;
    int rc = parse_url(url, &tls, &auth, &n, &w);
    if (why)
        *why = w;
    return rc;
}

/* ---- handles and teardown ------------------------------------------------------------------- */

static void free_client(struct tun_wsclient *c)
{
    free(c->curl_url);
    free(c->host);
    free(c->proxy);
    free(c->cafile);
    free(c->protocol);
    free(c->req);
    free(c->rbuf);
    free(c->asm_buf);
    free(c->wbuf);
    free(c);
}

static void handle_closed(uv_handle_t *h)
{
    struct tun_wsclient *c = h->data;
    if (--c->handles == 0 && c->released)
        free_client(c);
}

static void stop_flusher(struct tun_wsclient *c)
{
    if (c->flush_armed) {
        uv_check_stop(&c->check);
        uv_prepare_stop(&c->prepare);
        c->flush_armed = 0;
    }
    if (c->more_armed) {
        uv_idle_stop(&c->more);
        c->more_armed = 0;
    }
}

/* Close the socket and curl: the poll first (it stops watching at once), so curl closing
 * the fd never leaves a stale watcher behind. */
static void drop_connection(struct tun_wsclient *c)
{
    if (c->poll_active) {
        c->poll_active = 0;
        c->armed = 0;
        uv_close((uv_handle_t *)&c->poll, handle_closed);
    }
    if (c->easy) {
        tun_curl_uv_remove(c->curl, c->easy);
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
    }
    if (c->curl) {
        tun_curl_uv_close(c->curl);
        c->curl = NULL;
    }
    stop_flusher(c);
    uv_timer_stop(&c->timer);
    c->rlen = c->woff = c->wlen = 0;
}

/* The end: drop what is left, then on_close once. */
static void finish(struct tun_wsclient *c, int code, const char *reason)
{
    if (c->state == TUN_WSCLIENT_CLOSED)
        return;
    drop_connection(c);
    c->state = c->st.state = TUN_WSCLIENT_CLOSED;
    c->report_pending = 0;
    if (!c->released && c->cbs.on_close)
        c->cbs.on_close(c, code, reason ? reason : "", c->ud);
}

static void fail(struct tun_wsclient *c, int failure, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct tun_wsclient *c, int failure, const char *fmt, ...)
{
    if (c->state == TUN_WSCLIENT_CLOSED)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    c->st.failure = failure;
    tun_log_debug(NET, "websocket %s: %s", c->host, msg);
    finish(c, TUN_WS_CLOSE_ABNORMAL, msg);
}

/* ---- writing -------------------------------------------------------------------------------- */

static void flush_cb(uv_check_t *h);
static void prepare_cb(uv_prepare_t *h);

/* Write at the end of this loop turn: one send for everything the turn queued. */
static void arm_flush(struct tun_wsclient *c)
{
    /* While the socket is full the poll's writable event flushes; no need to try earlier. */
    if (c->flush_armed || !c->poll_active || (c->armed & UV_WRITABLE))
        return;
    c->flush_armed = 1;
    uv_check_start(&c->check, flush_cb);
    uv_prepare_start(&c->prepare, prepare_cb);
}

static void maybe_finish_close(struct tun_wsclient *c)
{
    if (c->state == TUN_WSCLIENT_CLOSING && c->close_sent && c->close_received &&
        c->woff == c->wlen)
        finish(c, c->report_code, c->report_reason);
}

static void flush(struct tun_wsclient *c)
{
    while (c->woff < c->wlen && c->easy) {
        size_t n = 0;
        CURLcode rc = curl_easy_send(c->easy, c->wbuf + c->woff, c->wlen - c->woff, &n);
        if (rc == CURLE_AGAIN)
            break;
        if (rc != CURLE_OK) {
            fail(c, TUN_WSCLIENT_FAIL_IO, "sending to %s failed: %s", c->host,
                 curl_easy_strerror(rc));
            return;
        }
        c->woff += n;
    }
    if (c->woff == c->wlen)
        c->woff = c->wlen = 0;
    update_poll(c);
    maybe_finish_close(c);
}

static void flush_now(struct tun_wsclient *c)
{
    if (c->flush_armed) {
        uv_check_stop(&c->check);
        uv_prepare_stop(&c->prepare);
        c->flush_armed = 0;
    }
    if (c->easy)
        flush(c);
}

static void flush_cb(uv_check_t *h)
{
    flush_now(h->data);
}

static void prepare_cb(uv_prepare_t *h)
{
    flush_now(h->data);
}

static size_t header_len(size_t len)
{
    return (len < 126 ? 2 : len <= 0xFFFF ? 4 : 10) + 4;
}

/* Room for a frame of `len` payload bytes within `limit` queued bytes; returns where the
 * payload goes (the header is written in front of it at commit), or NULL. */
static uint8_t *reserve(struct tun_wsclient *c, size_t len, size_t limit)
{
    size_t hl = header_len(len);
    if (len > limit || c->wlen + hl + len > limit) {
        if (c->woff) {
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        if (len > limit || c->wlen + hl + len > limit)
            return NULL;
    }
    c->resv_hl = hl;
    return c->wbuf + c->wlen + hl;
}

/* Frame the `len` bytes placed after reserve() as one masked frame. */
static void commit(struct tun_wsclient *c, int opcode, size_t len)
{
    uint8_t mask[4];
    /* One getrandom per 64 frames instead of one per frame. */
    if (c->rnd_off + sizeof(mask) > sizeof(c->rnd)) {
        randombytes_buf(c->rnd, sizeof(c->rnd));
        c->rnd_off = 0;
    }
    memcpy(mask, c->rnd + c->rnd_off, sizeof(mask));
    c->rnd_off += sizeof(mask);
    size_t hl = header_len(len);
    uint8_t *frame = c->wbuf + c->wlen;
    if (hl != c->resv_hl) /* committed less than reserved, across a length boundary */
        memmove(frame + hl, frame + c->resv_hl, len);
    tun_ws_header_encode(frame, 1, opcode, len, mask);
    tun_ws_mask(frame + hl, len, mask, 0);
    c->wlen += hl + len;
    arm_flush(c);
}

/* A control frame; dropped (with a log line) when even the control room is used up. */
static int send_control(struct tun_wsclient *c, int opcode, const uint8_t *data, size_t len)
{
    uint8_t *p = reserve(c, len, c->wcap);
    if (!p) {
        tun_log_debug(NET, "websocket %s: no room for a control frame", c->host);
        return TUN_EAGAIN;
    }
    if (len)
        memcpy(p, data, len);
    commit(c, opcode, len);
    return 0;
}

static int send_close(struct tun_wsclient *c, int code, const char *reason)
{
    uint8_t body[2 + TUN_WS_MAX_CLOSE_REASON];
    size_t n = 0;
    if (code) {
        size_t rl = reason ? strlen(reason) : 0;
        if (rl > TUN_WS_MAX_CLOSE_REASON)
            rl = TUN_WS_MAX_CLOSE_REASON;
        body[0] = (uint8_t)(code >> 8);
        body[1] = (uint8_t)code;
        if (rl)
            memcpy(body + 2, reason, rl);
        n = 2 + rl;
    }
    c->close_sent = 1;
    return send_control(c, TUN_WS_CLOSE, body, n);
}

/* ---- reading -------------------------------------------------------------------------------- */

static void set_report(struct tun_wsclient *c, int code, const char *reason, size_t len)
{
    c->report_code = code;
    if (len >= sizeof(c->report_reason))
        len = sizeof(c->report_reason) - 1;
    if (len)
        memcpy(c->report_reason, reason, len);
    c->report_reason[len] = '\0';
}

/* A protocol violation by the server: tell it why (one attempt), then fail. */
static void protocol_error(struct tun_wsclient *c, int close_code, const char *why)
{
    if (!c->close_sent && c->upgraded) {
        send_close(c, close_code, why);
        flush_now(c);
    }
    fail(c, TUN_WSCLIENT_FAIL_PROTOCOL, "WebSocket protocol error from %s: %s (closed with %d)",
         c->host, why, close_code);
}

static void on_upgraded(struct tun_wsclient *c)
{
    c->upgraded = 1;
    c->state = c->st.state = TUN_WSCLIENT_OPEN;
    c->last_rx = c->last_ping = now_ms(c);
    schedule(c);
    if (!c->released && c->cbs.on_open)
        c->cbs.on_open(c, c->ud);
}

/* The answer to the upgrade request; returns the bytes of rbuf it used, or -1 when the
 * client ended (or still needs more). */
static long read_answer(struct tun_wsclient *c)
{
    size_t used = 0;
    int rc = tun_http_parse(&c->hp, c->rbuf, c->rlen, &used);
    if (rc == 0) {
        c->rlen = 0; /* the parser keeps its own copy */
        return -1;
    }
    const struct tun_http_head *h = &c->hp.head;
    if (h->status) {
        c->st.http_status = h->status;
        snprintf(c->st.http_reason, sizeof(c->st.http_reason), "%.*s", (int)h->reason_len,
                 h->reason ? h->reason : "");
    }
    if (rc < 0 && !h->status) {
        fail(c, TUN_WSCLIENT_FAIL_UPGRADE, "the answer from %s is not HTTP: %s", c->host,
             c->hp.err_why ? c->hp.err_why : tun_strerror(rc));
        return -1;
    }
    if (h->status != 101) {
        fail(c, TUN_WSCLIENT_FAIL_HTTP,
             "%s answered \"HTTP/1.%d %d %.*s\" instead of switching to WebSocket", c->host,
             h->version == 10 ? 0 : 1, h->status, (int)h->reason_len, h->reason ? h->reason : "");
        return -1;
    }
    const char *offered[] = {c->protocol};
    const char *why = NULL;
    if (rc < 0 || tun_ws_check_response(h, c->ws_key, offered, c->protocol ? 1 : 0, NULL, &why)) {
        fail(c, TUN_WSCLIENT_FAIL_UPGRADE, "bad WebSocket answer from %s: %s", c->host,
             rc < 0 ? (c->hp.err_why ? c->hp.err_why : tun_strerror(rc))
             : why  ? why
                    : "?");
        return -1;
    }
    return (long)used;
}

static void on_ping(struct tun_wsclient *c, const uint8_t *data, size_t len)
{
    if (c->state == TUN_WSCLIENT_OPEN)
        send_control(c, TUN_WS_PONG, data, len);
}

static void on_pong(struct tun_wsclient *c, const uint8_t *data, size_t len)
{
    if (c->ping_sent_us && len == sizeof(c->ping_data) &&
        memcmp(data, c->ping_data, sizeof(c->ping_data)) == 0) {
        c->st.rtt_us = uv_hrtime() / 1000 - c->ping_sent_us;
        c->ping_sent_us = 0;
    }
}

static void on_close_frame(struct tun_wsclient *c, const struct tun_ws_event *ev)
{
    c->close_received = 1;
    if (!c->close_sent) {
        /* The server closes first: ours echoes its code, and on_close reports the server's. */
        set_report(c, ev->close_code, ev->reason, ev->reason_len);
        c->state = c->st.state = TUN_WSCLIENT_CLOSING;
        send_close(c, ev->close_code == TUN_WS_CLOSE_NO_STATUS ? 0 : ev->close_code, NULL);
        schedule(c);
        flush_now(c);
        return;
    }
    maybe_finish_close(c);
}

static int alive(struct tun_wsclient *c)
{
    return c->easy && c->state != TUN_WSCLIENT_CLOSED;
}

static void process_input(struct tun_wsclient *c)
{
    size_t off = 0;
    if (!c->upgraded) {
        long used = read_answer(c);
        if (used < 0)
            return;
        off = (size_t)used;
        on_upgraded(c);
        if (!alive(c))
            return;
    }
    while (off < c->rlen && alive(c) && !c->close_received) {
        struct tun_ws_event ev;
        int n = tun_ws_read(&c->wr, c->rbuf + off, c->rlen - off, &ev);
        if (n == 0)
            break;
        if (n < 0) {
            protocol_error(c, c->wr.close_code ? c->wr.close_code : TUN_WS_CLOSE_PROTOCOL_ERROR,
                           c->wr.why ? c->wr.why : tun_strerror(n));
            return;
        }
        off += (size_t)n;
        switch (ev.type) {
        case TUN_WS_EV_MESSAGE:
            c->st.rx_messages++;
            c->st.rx_bytes += ev.len;
            /* After our close frame the server may still send: nobody listens any more. */
            if (c->state == TUN_WSCLIENT_OPEN && !c->released && c->cbs.on_message)
                c->cbs.on_message(c, ev.opcode, ev.data, ev.len, c->ud);
            break;
        case TUN_WS_EV_PING:
            on_ping(c, ev.data, ev.len);
            break;
        case TUN_WS_EV_PONG:
            on_pong(c, ev.data, ev.len);
            break;
        case TUN_WS_EV_CLOSE:
            on_close_frame(c, &ev);
            break;
        default:
            break;
        }
    }
    if (!alive(c))
        return;
    if (c->close_received)
        c->rlen = 0; /* nothing may follow a close frame */
    else if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
}

static void more_cb(uv_idle_t *h);

static void do_read(struct tun_wsclient *c)
{
    for (int i = 0; i < READS_PER_TURN; i++) {
        if (!alive(c))
            return;
        if (c->rlen == c->rcap) {
            /* Cannot happen: the reader refuses a frame larger than the buffer from its
             * header. Kept so a bug shows as an error rather than a busy loop. */
            protocol_error(c, TUN_WS_CLOSE_TOO_BIG, "frame larger than the receive buffer");
            return;
        }
        size_t n = 0;
        CURLcode rc = curl_easy_recv(c->easy, c->rbuf + c->rlen, c->rcap - c->rlen, &n);
        if (rc == CURLE_AGAIN)
            return;
        if (rc != CURLE_OK) {
            fail(c, TUN_WSCLIENT_FAIL_IO, "reading from %s failed: %s", c->host,
                 curl_easy_strerror(rc));
            return;
        }
        if (n == 0) {
            if (c->close_sent)
                /* We asked to close and the server hung up: as good as its close frame. */
                finish(c, c->report_code, c->report_reason);
            else
                fail(c, TUN_WSCLIENT_FAIL_EOF, "%s closed the connection %s", c->host,
                     c->upgraded ? "without a close frame" : "before answering the upgrade");
            return;
        }
        c->rlen += n;
        c->last_rx = now_ms(c);
        process_input(c);
    }
    /* Still more, possibly inside TLS where the poll cannot see it: go on next turn. */
    if (alive(c) && !c->more_armed) {
        c->more_armed = 1;
        uv_idle_start(&c->more, more_cb);
    }
}

static void more_cb(uv_idle_t *h)
{
    struct tun_wsclient *c = h->data;
    uv_idle_stop(h);
    c->more_armed = 0;
    do_read(c);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct tun_wsclient *c = h->data;
    if (!alive(c))
        return;
    if (status < 0) {
        fail(c, TUN_WSCLIENT_FAIL_IO, "socket error with %s: %s", c->host, uv_strerror(status));
        return;
    }
    if (events & UV_WRITABLE)
        flush_now(c);
    if (alive(c) && (events & UV_READABLE))
        do_read(c);
}

static void update_poll(struct tun_wsclient *c)
{
    if (!c->poll_active)
        return;
    int ev = UV_READABLE | (c->wlen > c->woff ? UV_WRITABLE : 0);
    if (ev == c->armed)
        return;
    c->armed = ev;
    uv_poll_start(&c->poll, ev, poll_cb);
}

/* ---- connecting ----------------------------------------------------------------------------- */

static void connect_failed(struct tun_wsclient *c, CURLcode result)
{
    const char *detail = c->errbuf[0] ? c->errbuf : curl_easy_strerror(result);
    long os_errno = 0;
    if (c->easy)
        curl_easy_getinfo(c->easy, CURLINFO_OS_ERRNO, &os_errno);
    switch (result) {
    case CURLE_COULDNT_RESOLVE_HOST:
        fail(c, TUN_WSCLIENT_FAIL_DNS, "cannot resolve the host of %s (DNS): %s", c->host, detail);
        return;
    case CURLE_COULDNT_RESOLVE_PROXY:
        fail(c, TUN_WSCLIENT_FAIL_PROXY, "cannot resolve the proxy's host %s (DNS): %s",
             c->proxy_shown, detail);
        return;
    case CURLE_PROXY:
        fail(c, TUN_WSCLIENT_FAIL_PROXY, "the proxy %s did not connect us to %s: %s",
             c->proxy_shown, c->host, detail);
        return;
    case CURLE_COULDNT_CONNECT:
        /* The errno says it best ("Connection refused"); curl's text when there is none. */
        if (c->proxy)
            fail(c, TUN_WSCLIENT_FAIL_PROXY, "cannot connect to the proxy %s: %s", c->proxy_shown,
                 os_errno ? strerror((int)os_errno) : detail);
        else
            fail(c, TUN_WSCLIENT_FAIL_CONNECT, "cannot connect to %s: %s", c->host,
                 os_errno ? strerror((int)os_errno) : detail);
        return;
    case CURLE_OPERATION_TIMEDOUT:
        fail(c, TUN_WSCLIENT_FAIL_TIMEOUT, "no connection to %s within %u ms%s: %s", c->host,
             (unsigned)c->cfg.connect_ms, c->proxy ? " (through the proxy)" : "", detail);
        return;
    case CURLE_PEER_FAILED_VERIFICATION:
        fail(c, TUN_WSCLIENT_FAIL_TLS,
             "TLS with %s failed: %s (the server's certificate is not trusted here: a server with "
             "a private CA needs that CA file configured)",
             c->host, detail);
        return;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
        fail(c, TUN_WSCLIENT_FAIL_TLS, "TLS with %s failed: %s", c->host, detail);
        return;
    default:
        fail(c, TUN_WSCLIENT_FAIL_CONNECT, "cannot connect to %s: %s", c->host, detail);
        return;
    }
}

/* curl_uv's done: the CONNECT_ONLY transfer finished, after curl returned. */
static void on_curl_done(CURL *easy, CURLcode result, void *ud)
{
    struct tun_wsclient *c = ud;
    if (easy != c->easy || c->state != TUN_WSCLIENT_CONNECTING || c->connected)
        return;
    if (result != CURLE_OK) {
        connect_failed(c, result);
        return;
    }
    curl_socket_t fd = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(easy, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK || fd == CURL_SOCKET_BAD) {
        fail(c, TUN_WSCLIENT_FAIL_INTERNAL, "connected to %s, but curl gave no socket", c->host);
        return;
    }
    int rc = uv_poll_init_socket(c->loop, &c->poll, fd);
    if (rc != 0) {
        fail(c, TUN_WSCLIENT_FAIL_INTERNAL, "cannot poll the socket to %s: %s", c->host,
             uv_strerror(rc));
        return;
    }
    c->poll.data = c;
    c->poll_active = 1;
    c->handles++;
    c->connected = 1;
    memcpy(c->wbuf, c->req, c->req_len);
    c->woff = 0;
    c->wlen = c->req_len;
    tun_http_parser_init(&c->hp, TUN_HTTP_RESPONSE);
    tun_ws_reader_init(&c->wr, TUN_WS_CLIENT, c->cfg.max_message, c->asm_buf, c->cfg.max_message);
    schedule(c);
    flush_now(c);
}

/* ---- timers --------------------------------------------------------------------------------- */

static void send_ping(struct tun_wsclient *c)
{
    uint64_t t = uv_hrtime();
    memcpy(c->ping_data, &t, sizeof(c->ping_data));
    if (send_control(c, TUN_WS_PING, c->ping_data, sizeof(c->ping_data)) == 0)
        c->ping_sent_us = t / 1000;
    c->last_ping = now_ms(c);
}

static void timer_cb(uv_timer_t *t)
{
    struct tun_wsclient *c = t->data;
    uint64_t now = now_ms(c);
    if (c->report_pending) {
        finish(c, c->report_code, c->report_reason);
        return;
    }
    switch (c->state) {
    case TUN_WSCLIENT_CONNECTING:
        if (!c->connected)
            fail(c, TUN_WSCLIENT_FAIL_TIMEOUT, "no connection to %s within %u ms", c->host,
                 (unsigned)c->cfg.connect_ms);
        else
            fail(c, TUN_WSCLIENT_FAIL_TIMEOUT,
                 "%s accepted the connection but gave no WebSocket answer within %u ms", c->host,
                 (unsigned)c->cfg.handshake_ms);
        return;
    case TUN_WSCLIENT_OPEN:
        if (c->cfg.dead_ms && now - c->last_rx >= c->cfg.dead_ms) {
            fail(c, TUN_WSCLIENT_FAIL_DEAD, "nothing received from %s for %u ms", c->host,
                 (unsigned)c->cfg.dead_ms);
            return;
        }
        if (c->cfg.ping_ms && now - c->last_ping >= c->cfg.ping_ms)
            send_ping(c);
        schedule(c);
        return;
    case TUN_WSCLIENT_CLOSING:
        /* The closing handshake ran out of time: end it from our side. */
        finish(c, c->report_code, c->report_reason);
        return;
    default:
        return;
    }
}

static void schedule(struct tun_wsclient *c)
{
    uint64_t now = now_ms(c), delay = 0;
    switch (c->state) {
    case TUN_WSCLIENT_CONNECTING:
        /* Before the connection, curl's own connect timeout usually speaks first (with
         * more detail); this is the backstop. */
        delay = c->connected ? c->cfg.handshake_ms : (uint64_t)c->cfg.connect_ms + 1000;
        break;
    case TUN_WSCLIENT_OPEN: {
        uint64_t next = UINT64_MAX;
        if (c->cfg.ping_ms)
            next = c->last_ping + c->cfg.ping_ms;
        if (c->cfg.dead_ms && c->last_rx + c->cfg.dead_ms < next)
            next = c->last_rx + c->cfg.dead_ms;
        if (next == UINT64_MAX) {
            uv_timer_stop(&c->timer);
            return;
        }
        delay = next > now ? next - now : 0;
        /* The dead check is rescheduled only as the timer fires, not on every read. */
        break;
    }
    case TUN_WSCLIENT_CLOSING:
        delay = c->cfg.close_ms;
        break;
    default:
        return;
    }
    uv_timer_start(&c->timer, timer_cb, delay, 0);
}

/* ---- API ------------------------------------------------------------------------------------ */

static char *dup_or_null(const char *s, int *bad)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *bad = 1;
    return d;
}

/* The extra header lines into the request; TUN_EINVAL for a malformed one. Sets *has_ua. */
static int add_headers(struct tun_http_writer *w, const char *headers, int *has_ua)
{
    const char *p = headers;
    while (p && *p) {
        size_t n = strcspn(p, "\n");
        size_t end = n;
        if (end && p[end - 1] == '\r')
            end--;
        if (end) {
            const char *colon = memchr(p, ':', end);
            if (!colon)
                return TUN_EINVAL;
            size_t nl = (size_t)(colon - p);
            const char *v = colon + 1, *ve = p + end;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            if (tun_http_eq_nocase(p, nl, "user-agent"))
                *has_ua = 1;
            if (tun_http_add_n(w, p, nl, v, (size_t)(ve - v)) != 0)
                return TUN_EINVAL;
        }
        p += n;
        if (*p == '\n')
            p++;
    }
    return 0;
}

static int build_request(struct tun_wsclient *c, const char *target)
{
    struct tun_http_writer w;
    uint8_t *buf = malloc(TUN_HTTP_MAX_HEAD);
    if (!buf)
        return TUN_ENOMEM;
    int has_ua = 0;
    int rc = tun_ws_new_key(c->ws_key);
    if (rc == 0)
        rc = tun_ws_begin_request(&w, buf, TUN_HTTP_MAX_HEAD, c->host, target, c->ws_key,
                                  c->protocol);
    if (rc == 0)
        rc = add_headers(&w, c->cfg.headers, &has_ua);
    if (rc == 0 && !has_ua)
        rc = tun_http_add(&w, "User-Agent", "tunnel");
    int len = rc == 0 ? tun_http_end(&w) : rc;
    if (len < 0) {
        free(buf);
        return len == TUN_ECRYPTO ? len : TUN_EINVAL;
    }
    c->req = buf;
    c->req_len = (size_t)len;
    return 0;
}

static int proxy_ok(const char *p)
{
    return !p || prefix_nocase(p, "socks5://") || prefix_nocase(p, "socks5h://");
}

static int start_curl(struct tun_wsclient *c)
{
    if (tun_curl_uv_new(c->loop, on_curl_done, c, &c->curl) != 0)
        return TUN_ENOMEM;
    c->easy = curl_easy_init();
    if (!c->easy)
        return TUN_ENOMEM;
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_URL, c->curl_url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->cfg.connect_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    if (c->proxy)
        curl_easy_setopt(e, CURLOPT_PROXY, c->proxy);
    if (c->cafile)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->cafile);
    if (tun_curl_uv_add(c->curl, e) != 0) {
        curl_easy_cleanup(e);
        c->easy = NULL;
        return TUN_EINTERNAL;
    }
    return 0;
}

int tun_wsclient_new(uv_loop_t *loop, const struct tun_wsclient_cfg *cfg,
                     const struct tun_wsclient_cbs *cbs, void *ud, struct tun_wsclient **out)
{
    const char *why, *auth;
    size_t auth_len;
    int tls;
    if (!loop || !cfg || !out || parse_url(cfg->url, &tls, &auth, &auth_len, &why) != 0 ||
        !proxy_ok(cfg->proxy))
        return TUN_EINVAL;
    if (cfg->protocol && (!*cfg->protocol || strpbrk(cfg->protocol, "\r\n")))
        return TUN_EINVAL;
    struct tun_wsclient *c = calloc(1, sizeof(*c));
    if (!c)
        return TUN_ENOMEM;
    c->loop = loop;
    c->cfg = *cfg;
    c->cfg.url = c->cfg.proxy = c->cfg.cafile = c->cfg.protocol = NULL;
    if (!c->cfg.connect_ms)
        c->cfg.connect_ms = 10000;
    if (!c->cfg.handshake_ms)
        c->cfg.handshake_ms = 10000;
    if (!c->cfg.close_ms)
        c->cfg.close_ms = 5000;
    if (!c->cfg.max_message)
        c->cfg.max_message = TUN_WS_DEFAULT_MAX_MESSAGE;
    if (c->cfg.max_message > TUN_WS_MAX_MESSAGE_LIMIT)
        c->cfg.max_message = TUN_WS_MAX_MESSAGE_LIMIT;
    if (!c->cfg.max_queued)
        c->cfg.max_queued = 1024 * 1024;
    if (cbs)
        c->cbs = *cbs;
    c->ud = ud;
    c->rnd_off = sizeof(c->rnd);

    const char *target = auth + auth_len;
    int bad = 0;
    c->host = strndup(auth, auth_len);
    size_t ul = strlen(cfg->url) + 16;
    c->curl_url = malloc(ul);
    c->proxy = dup_or_null(cfg->proxy, &bad);
    c->cafile = dup_or_null(cfg->cafile, &bad);
    c->protocol = dup_or_null(cfg->protocol, &bad);
    if (bad || !c->host || !c->curl_url) {
        free_client(c);
        return TUN_ENOMEM;
    }
    /* curl only connects: the scheme says TLS or not, the authority where to. */
    snprintf(c->curl_url, ul, "%s://%s/", tls ? "https" : "http", c->host);
    if (c->proxy) {
        /* Messages name the proxy, never its password. */
        const char *at = strrchr(c->proxy, '@'), *sep = strstr(c->proxy, "://");
        if (at && sep)
            snprintf(c->proxy_shown, sizeof(c->proxy_shown), "%.*s%s", (int)(sep + 3 - c->proxy),
                     c->proxy, at + 1);
        else
            snprintf(c->proxy_shown, sizeof(c->proxy_shown), "%s", c->proxy);
    }
    char *tgt = NULL;
    if (*target != '/') {
        tgt = malloc(strlen(target) + 2);
        if (!tgt) {
            free_client(c);
            return TUN_ENOMEM;
        }
        tgt[0] = '/';
        strcpy(tgt + 1, target);
    }
    int rc = build_request(c, tgt ? tgt : target);
    free(tgt);
    if (rc != 0) {
        free_client(c);
        return rc;
    }
    c->rcap = TUN_WS_MAX_HEADER + c->cfg.max_message + 65536;
    c->wcap = (c->cfg.max_queued > c->req_len ? c->cfg.max_queued : c->req_len) + CONTROL_ROOM;
    /* Large, but untouched pages cost nothing: the kernel backs them as they are written. */
    c->rbuf = malloc(c->rcap);
    c->asm_buf = malloc(c->cfg.max_message);
    c->wbuf = malloc(c->wcap);
    if (!c->rbuf || !c->asm_buf || !c->wbuf) {
        free_client(c);
        return TUN_ENOMEM;
    }
    uv_timer_init(loop, &c->timer);
    uv_check_init(loop, &c->check);
    uv_prepare_init(loop, &c->prepare);
    uv_idle_init(loop, &c->more);
    c->timer.data = c->check.data = c->prepare.data = c->more.data = c;
    c->handles = 4;
    c->state = c->st.state = TUN_WSCLIENT_CONNECTING;
    rc = start_curl(c);
    if (rc != 0) {
        tun_wsclient_close(c, 0, NULL);
        return rc;
    }
    schedule(c);
    *out = c;
    return 0;
}

int tun_wsclient_send(struct tun_wsclient *c, int opcode, const void *data, size_t len)
{
    if (!c || (!data && len) || (opcode != TUN_WS_TEXT && opcode != TUN_WS_BINARY))
        return TUN_EINVAL;
    if (c->state == TUN_WSCLIENT_CONNECTING)
        return TUN_EAGAIN;
    if (c->state != TUN_WSCLIENT_OPEN || c->released)
        return TUN_ECLOSED;
    if (len > c->cfg.max_queued || header_len(len) + len > c->cfg.max_queued)
        return TUN_ETOOBIG;
    if (opcode == TUN_WS_TEXT && !tun_ws_utf8_valid(data, len))
        return TUN_EFORMAT;
    uint8_t *p = reserve(c, len, c->cfg.max_queued);
    if (!p)
        return TUN_EAGAIN;
    if (len)
        memcpy(p, data, len);
    commit(c, opcode, len);
    c->st.tx_messages++;
    c->st.tx_bytes += len;
    return 0;
}

uint8_t *tun_wsclient_reserve(struct tun_wsclient *c, size_t len)
{
    if (!c || c->state != TUN_WSCLIENT_OPEN || c->released)
        return NULL;
    return reserve(c, len, c->cfg.max_queued);
}

void tun_wsclient_commit(struct tun_wsclient *c, size_t len)
{
    commit(c, TUN_WS_BINARY, len);
    c->st.tx_messages++;
    c->st.tx_bytes += len;
}

static int close_args_ok(int code, const char *reason)
{
    size_t rl = reason ? strlen(reason) : 0;
    return tun_ws_close_code_ok(code) && rl <= TUN_WS_MAX_CLOSE_REASON &&
           tun_ws_utf8_valid((const uint8_t *)reason, rl);
}

int tun_wsclient_shutdown(struct tun_wsclient *c, int code, const char *reason)
{
    if (!c || !close_args_ok(code, reason))
        return TUN_EINVAL;
    if (c->state != TUN_WSCLIENT_CONNECTING && c->state != TUN_WSCLIENT_OPEN)
        return TUN_ECLOSED;
    set_report(c, code, reason, reason ? strlen(reason) : 0);
    if (c->state == TUN_WSCLIENT_CONNECTING) {
        /* Nothing to say goodbye to yet; report in the next turn, not from inside this call. */
        drop_connection(c);
        c->state = c->st.state = TUN_WSCLIENT_CLOSING;
        c->report_pending = 1;
        uv_timer_start(&c->timer, timer_cb, 0, 0);
        return 0;
    }
    c->state = c->st.state = TUN_WSCLIENT_CLOSING;
    send_close(c, code, reason);
    schedule(c);
    return 0;
}

void tun_wsclient_close(struct tun_wsclient *c, int code, const char *reason)
{
    if (!c || c->released)
        return;
    c->released = 1;
    if (code && c->state == TUN_WSCLIENT_OPEN && c->easy && close_args_ok(code, reason)) {
        send_close(c, code, reason);
        flush_now(c);
    }
    drop_connection(c);
    c->state = c->st.state = TUN_WSCLIENT_CLOSED;
    uv_close((uv_handle_t *)&c->timer, handle_closed);
    uv_close((uv_handle_t *)&c->check, handle_closed);
    uv_close((uv_handle_t *)&c->prepare, handle_closed);
    uv_close((uv_handle_t *)&c->more, handle_closed);
}

int tun_wsclient_state(const struct tun_wsclient *c)
{
    return c->state;
}

void tun_wsclient_stats(const struct tun_wsclient *c, struct tun_wsclient_stats *st)
{
    *st = c->st;
    st->state = c->state;
    st->queued = c->wlen - c->woff;
}

int tun_wsclient_tls_export(struct tun_wsclient *c, const char *label, uint8_t *out, size_t len)
{
    if (!c || !label || !out)
        return TUN_EINVAL;
    const struct curl_tlssessioninfo *ti = NULL;
    if (!c->easy || !c->connected ||
        curl_easy_getinfo(c->easy, CURLINFO_TLS_SSL_PTR, &ti) != CURLE_OK || !ti ||
        ti->backend != CURLSSLBACKEND_GNUTLS || !ti->internals)
        return TUN_EPROTO;
    if (gnutls_prf_rfc5705((gnutls_session_t)ti->internals, strlen(label), label, 0, "", len,
                           (char *)out) != 0)
        return TUN_ECRYPTO;
    return 0;
}
