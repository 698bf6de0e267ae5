#include "relay/client.h"

#include "relay/frame.h"
#include "util/error.h"
#include "util/log.h"
#include "web/http.h"
#include "web/ws.h"

#include <curl/curl.h>
#include <stdarg.h>
#include <gnutls/gnutls.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROTOCOL    "tunnel-relay-v1"
#define MAX_MESSAGE (TUN_RELAY_MAX_FRAME + 64)
#define RBUF_CAP    (TUN_WS_MAX_HEADER + MAX_MESSAGE + 65536)

/* One socket curl (or we, after the connect) want polled. */
struct cpoll {
    uv_poll_t poll;
    struct tun_relay_client *c;
    curl_socket_t fd;
    int curl_events; /* UV_READABLE/UV_WRITABLE curl asked for */
    int armed;       /* events the poll is started with (re-arming costs an epoll_ctl) */
    struct cpoll *next;
};

struct tun_relay_client {
    uv_loop_t *loop;
    struct tun_relay_client_cfg cfg;
    char *url, *proxy, *cafile, *token, *host;
    struct tun_relay_client_cbs cbs;
    void *ud;
    uint8_t pub[32];

    CURLM *multi;
    CURL *easy;
    uv_timer_t curl_timer; /* curl's timeouts */
    uv_timer_t timer;      /* backoff, auth deadline, pings and liveness */
    uv_check_t flusher;    /* sends what the loop turn queued in one go */
    int flush_armed;
    uint8_t rnd[256]; /* randomness for frame masks, drawn 256 bytes at a time */
    size_t rnd_off;
    struct cpoll *polls;
    struct cpoll *data; /* the connection's socket once connected */
    int state, upgraded, closing, handles;

    struct tun_http_parser hp;
    struct tun_ws_reader wr;
    uint8_t *rbuf; /* raw bytes from the socket */
    size_t rlen;
    uint8_t *asm_buf;
    uint8_t *wbuf; /* frames waiting for the socket */
    size_t woff, wlen;
    char ws_key[TUN_WS_KEY_LEN + 1];

    uint64_t connected_at, last_rx, last_ping, ping_sent_us;
    uint8_t ping_data[TUN_RELAY_PING_LEN];
    unsigned failures_in_row;
    uint32_t next_delay_ms; /* set by RESTARTING */
    struct tun_relay_client_stats st;
};

static void schedule(struct tun_relay_client *c);
static void start_attempt(struct tun_relay_client *c);

static uint64_t now_ms(struct tun_relay_client *c)
{
    return uv_now(c->loop);
}

static void set_state(struct tun_relay_client *c, int state, const char *why)
{
    if (c->state == state && !why)
        return;
    c->state = state;
    c->st.state = state;
    if (c->cbs.on_state && !c->closing)
        c->cbs.on_state(c, state, why, c->ud);
}

/* ---- polls ------------------------------------------------------------------------------------
 */

static void poll_closed(uv_handle_t *h)
{
    struct cpoll *p = h->data;
    struct tun_relay_client *c = p->c;
    free(p);
    if (c->closing && --c->handles == 0) {
        free(c->rbuf);
        free(c->asm_buf);
        free(c->wbuf);
        free(c);
    }
}

static void cpoll_close(struct tun_relay_client *c, struct cpoll *p)
{
    struct cpoll **pp = &c->polls;
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    if (*pp)
        *pp = p->next;
    if (c->data == p)
        c->data = NULL;
    if (c->closing)
        c->handles++;
    uv_close((uv_handle_t *)&p->poll, poll_closed);
}

static void poll_cb(uv_poll_t *h, int status, int events);

static struct cpoll *cpoll_find(struct tun_relay_client *c, curl_socket_t fd)
{
    for (struct cpoll *p = c->polls; p; p = p->next)
        if (p->fd == fd)
            return p;
    return NULL;
}

static struct cpoll *cpoll_get(struct tun_relay_client *c, curl_socket_t fd)
{
    struct cpoll *found = cpoll_find(c, fd);
    if (found)
        return found;
    struct cpoll *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    if (uv_poll_init_socket(c->loop, &p->poll, fd) != 0) {
        free(p);
        return NULL;
    }
    p->poll.data = p;
    p->c = c;
    p->fd = fd;
    p->next = c->polls;
    c->polls = p;
    return p;
}

static void update_poll(struct tun_relay_client *c, struct cpoll *p)
{
    int ev = p->curl_events;
    if (p == c->data && c->upgraded >= 0) {
        ev |= UV_READABLE;
        if (c->wlen > c->woff)
            ev |= UV_WRITABLE;
    }
    if (ev == p->armed)
        return;
    p->armed = ev;
    if (ev)
        uv_poll_start(&p->poll, ev, poll_cb);
    else
        uv_poll_stop(&p->poll);
}

/* ---- failure and teardown of one attempt ------------------------------------------------------
 */

static void drop_connection(struct tun_relay_client *c)
{
    while (c->polls)
        cpoll_close(c, c->polls);
    c->data = NULL;
    if (c->easy) {
        curl_multi_remove_handle(c->multi, c->easy);
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
    }
    c->rlen = c->woff = c->wlen = 0;
    c->upgraded = 0;
}

static void fail(struct tun_relay_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail(struct tun_relay_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->st.last_error, sizeof(c->st.last_error), fmt, ap);
    va_end(ap);
    int was_ready = c->state == TUN_RELAY_CLIENT_READY;
    drop_connection(c);
    c->st.failures++;
    c->failures_in_row = was_ready ? 0 : c->failures_in_row + 1;
    tun_log_debug(RELAY, "relay %s: %s", c->url, c->st.last_error);
    set_state(c, TUN_RELAY_CLIENT_WAITING, c->st.last_error);
    if (!c->closing)
        schedule(c);
}

/* ---- writing ----------------------------------------------------------------------------------
 */

static void flush(struct tun_relay_client *c)
{
    while (c->woff < c->wlen && c->easy) {
        size_t n = 0;
        CURLcode rc = curl_easy_send(c->easy, c->wbuf + c->woff, c->wlen - c->woff, &n);
        if (rc == CURLE_AGAIN)
            break;
        if (rc != CURLE_OK) {
            fail(c, "sending to the relay failed: %s", curl_easy_strerror(rc));
            return;
        }
        c->woff += n;
    }
    if (c->woff == c->wlen)
        c->woff = c->wlen = 0;
    if (c->data)
        update_poll(c, c->data);
}

/* Reserve room for a frame of `len` payload bytes; returns where the payload goes (after the
 * WebSocket header, which ws_commit fills), or NULL when the queue is full. */
static uint8_t *ws_reserve(struct tun_relay_client *c, size_t len)
{
    if (c->wlen + TUN_WS_MAX_HEADER + len > c->cfg.max_queued) {
        if (c->woff) {
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
        }
        if (c->wlen + TUN_WS_MAX_HEADER + len > c->cfg.max_queued)
            return NULL;
    }
    return c->wbuf + c->wlen + TUN_WS_MAX_HEADER;
}

/* Frame the `len` bytes placed by ws_reserve as one masked binary (or other) message. */
static void ws_commit(struct tun_relay_client *c, int opcode, size_t len)
{
    uint8_t mask[4];
    uint8_t hdr[TUN_WS_MAX_HEADER];
    /* One getrandom per 64 frames instead of one per frame. */
    if (c->rnd_off + sizeof(mask) > sizeof(c->rnd)) {
        randombytes_buf(c->rnd, sizeof(c->rnd));
        c->rnd_off = 0;
    }
    memcpy(mask, c->rnd + c->rnd_off, sizeof(mask));
    c->rnd_off += sizeof(mask);
    int hl = tun_ws_header_encode(hdr, 1, opcode, len, mask);
    uint8_t *payload = c->wbuf + c->wlen + TUN_WS_MAX_HEADER;
    tun_ws_mask(payload, len, mask, 0);
    /* Close the gap between the header and the payload. */
    memcpy(c->wbuf + c->wlen + TUN_WS_MAX_HEADER - hl, hdr, (size_t)hl);
    memmove(c->wbuf + c->wlen, c->wbuf + c->wlen + TUN_WS_MAX_HEADER - hl, (size_t)hl + len);
    c->wlen += (size_t)hl + len;
}

static int send_frame(struct tun_relay_client *c, const uint8_t *frame, size_t len)
{
    uint8_t *p = ws_reserve(c, len);
    if (!p)
        return TUN_EAGAIN;
    memcpy(p, frame, len);
    ws_commit(c, TUN_WS_BINARY, len);
    flush(c);
    return 0;
}

/* ---- reading ----------------------------------------------------------------------------------
 */

static void on_frame(struct tun_relay_client *c, const uint8_t *buf, size_t len)
{
    struct tun_relay_frame f;
    int rc = tun_relay_decode(buf, len, TUN_RELAY_FROM_RELAY, &f);
    if (rc != 0) {
        fail(c, "malformed frame from the relay: %s", tun_strerror(rc));
        return;
    }
    if (!f.known)
        return;
    uint8_t out[512]; /* the largest frame we send here: CLIENT_AUTH, 354 bytes */
    switch (f.type) {
    case TUN_RELAY_SERVER_CHALLENGE: {
        if (c->state == TUN_RELAY_CLIENT_READY)
            return;
        if ((f.info.flags & TUN_RELAY_FLAG_TOKEN_REQUIRED) && !c->token) {
            fail(c, "the relay requires an access token and none is configured");
            return;
        }
        uint8_t binding[32];
        size_t blen = 0;
        if (f.info.flags & TUN_RELAY_FLAG_BINDING) {
            /* The TLS exporter of this very connection, so the signature is useless to any
             * other relay (docs/protocol.md). */
            const struct curl_tlssessioninfo *ti = NULL;
            if (curl_easy_getinfo(c->easy, CURLINFO_TLS_SSL_PTR, &ti) != CURLE_OK || !ti ||
                ti->backend != CURLSSLBACKEND_GNUTLS || !ti->internals ||
                gnutls_prf_rfc5705((gnutls_session_t)ti->internals, 24, "EXPORTER-tunnel-relay-v1",
                                   0, "", sizeof(binding), (char *)binding) != 0) {
                fail(c, "the relay asks for a TLS channel binding, which this connection cannot "
                        "provide (plain http?)");
                return;
            }
            blen = sizeof(binding);
        }
        uint8_t sig[TUN_RELAY_SIG_LEN];
        if (tun_relay_challenge_sign(sig, c->cfg.secret, f.challenge, blen ? binding : NULL,
                                     blen) != 0) {
            fail(c, "cannot sign the relay's challenge");
            return;
        }
        int n = tun_relay_encode_auth(out, sizeof(out), c->pub, sig, (const uint8_t *)c->token,
                                      c->token ? strlen(c->token) : 0);
        if (n < 0 || send_frame(c, out, (size_t)n) != 0)
            fail(c, "cannot send the authentication");
        return;
    }
    case TUN_RELAY_AUTH_OK: {
        c->failures_in_row = 0;
        c->st.connects++;
        c->st.last_error[0] = '\0';
        tun_log_debug(RELAY, "relay %s: connected", c->url);
        /* A first ping at once: its RTT ranks this relay against the others right away. */
        uint8_t pb[16];
        randombytes_buf(c->ping_data, sizeof(c->ping_data));
        int pn = tun_relay_encode_ping(pb, sizeof(pb), TUN_RELAY_PING, c->ping_data);
        if (pn > 0 && send_frame(c, pb, (size_t)pn) == 0)
            c->ping_sent_us = uv_hrtime() / 1000;
        c->last_ping = now_ms(c);
        set_state(c, TUN_RELAY_CLIENT_READY, NULL);
        schedule(c);
        return;
    }
    case TUN_RELAY_AUTH_DENIED:
        fail(c, "the relay refused us: %.*s (code %d)", (int)(f.len > 100 ? 100 : f.len),
             (const char *)f.data, f.code);
        return;
    case TUN_RELAY_RECV:
        c->st.rx_datagrams++;
        c->st.rx_bytes += f.len;
        if (c->cbs.on_datagram)
            c->cbs.on_datagram(c, f.key, f.data, f.len, c->ud);
        return;
    case TUN_RELAY_RECV_BATCH: {
        size_t n = tun_relay_batch_count(&f);
        for (size_t i = 0; i < n && !c->closing && c->easy; i++) {
            const uint8_t *d;
            size_t dl;
            if (tun_relay_batch_get(&f, i, &d, &dl) != 0)
                break;
            c->st.rx_datagrams++;
            c->st.rx_bytes += dl;
            if (c->cbs.on_datagram)
                c->cbs.on_datagram(c, f.key, d, dl, c->ud);
        }
        return;
    }
    case TUN_RELAY_PEER_GONE:
        if (c->cbs.on_peer_gone)
            c->cbs.on_peer_gone(c, f.key, f.code, c->ud);
        return;
    case TUN_RELAY_PING: {
        int n = tun_relay_encode_ping(out, sizeof(out), TUN_RELAY_PONG, f.data);
        if (n > 0)
            send_frame(c, out, (size_t)n);
        return;
    }
    case TUN_RELAY_PONG:
        if (c->ping_sent_us && memcmp(f.data, c->ping_data, TUN_RELAY_PING_LEN) == 0) {
            c->st.rtt_us = uv_hrtime() / 1000 - c->ping_sent_us;
            c->ping_sent_us = 0;
        }
        return;
    case TUN_RELAY_HEALTH:
        if (c->cbs.on_health)
            c->cbs.on_health(c, f.code, (const char *)f.data, f.len, c->ud);
        return;
    case TUN_RELAY_RESTARTING:
        c->next_delay_ms = f.reconnect_in_ms;
        fail(c, "the relay is restarting (back in %u ms)", (unsigned)f.reconnect_in_ms);
        return;
    default:
        return;
    }
}

static void process_input(struct tun_relay_client *c)
{
    size_t off = 0;
    if (!c->upgraded) {
        size_t used = 0;
        int rc = tun_http_parse(&c->hp, c->rbuf, c->rlen, &used);
        if (rc == 0) {
            c->rlen = 0; /* the parser keeps its own copy */
            return;
        }
        if (rc < 0) {
            fail(c, "the relay's answer is not HTTP: %s", c->hp.err_why ? c->hp.err_why : "?");
            return;
        }
        const char *offered[] = {PROTOCOL};
        const char *why = NULL;
        if (tun_ws_check_response(&c->hp.head, c->ws_key, offered, 1, NULL, &why) != 0) {
            if (c->hp.head.status != 101)
                fail(c, "the relay answered %d %.*s instead of upgrading (is %s a relay URL?)",
                     c->hp.head.status, (int)c->hp.head.reason_len, c->hp.head.reason, c->url);
            else
                fail(c, "bad WebSocket upgrade from the relay: %s", why ? why : "?");
            return;
        }
        c->upgraded = 1;
        off = used;
    }
    while (off < c->rlen && c->easy && !c->closing) {
        struct tun_ws_event ev;
        int n = tun_ws_read(&c->wr, c->rbuf + off, c->rlen - off, &ev);
        if (n == 0)
            break;
        if (n < 0) {
            fail(c, "WebSocket error from the relay: %s", c->wr.why ? c->wr.why : tun_strerror(n));
            return;
        }
        off += (size_t)n;
        c->last_rx = now_ms(c);
        if (ev.type == TUN_WS_EV_MESSAGE) {
            if (ev.opcode == TUN_WS_BINARY)
                on_frame(c, ev.data, ev.len);
        } else if (ev.type == TUN_WS_EV_PING) {
            uint8_t *p = ws_reserve(c, ev.len);
            if (p) {
                memcpy(p, ev.data, ev.len);
                ws_commit(c, TUN_WS_PONG, ev.len);
                flush(c);
            }
        } else if (ev.type == TUN_WS_EV_CLOSE) {
            fail(c, "the relay closed the connection (%d %.*s)", ev.close_code, (int)ev.reason_len,
                 ev.reason ? ev.reason : "");
            return;
        }
    }
    if (!c->easy)
        return;
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
}

static void do_read(struct tun_relay_client *c)
{
    for (int i = 0; i < 64 && c->easy; i++) {
        if (c->rlen == RBUF_CAP) {
            fail(c, "a frame from the relay is larger than %d bytes", (int)MAX_MESSAGE);
            return;
        }
        size_t n = 0;
        CURLcode rc = curl_easy_recv(c->easy, c->rbuf + c->rlen, RBUF_CAP - c->rlen, &n);
        if (rc == CURLE_AGAIN)
            return;
        if (rc != CURLE_OK) {
            fail(c, "reading from the relay failed: %s", curl_easy_strerror(rc));
            return;
        }
        if (n == 0) {
            fail(c, "the relay closed the connection");
            return;
        }
        c->rlen += n;
        process_input(c);
    }
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    struct cpoll *p = h->data;
    struct tun_relay_client *c = p->c;
    if (c->closing)
        return;
    if (p == c->data && c->connected_at) {
        if (status < 0) {
            fail(c, "socket error: %s", uv_strerror(status));
            return;
        }
        if (events & UV_WRITABLE)
            flush(c);
        if (c->easy && (events & UV_READABLE))
            do_read(c);
        return;
    }
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(c->multi, p->fd, flags, &running);
    /* The connect finished (or failed)? */
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE || m->easy_handle != c->easy)
            continue;
        if (m->data.result != CURLE_OK) {
            fail(c, "cannot reach the relay: %s%s", curl_easy_strerror(m->data.result),
                 m->data.result == CURLE_PEER_FAILED_VERIFICATION
                     ? " (the relay's TLS certificate is not trusted here: a relay with a "
                       "private CA needs that CA file configured)"
                     : "");
            return;
        }
        curl_socket_t fd;
        if (curl_easy_getinfo(c->easy, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK ||
            fd == CURL_SOCKET_BAD) {
            fail(c, "connected, but curl gave no socket");
            return;
        }
        c->data = cpoll_get(c, fd);
        if (!c->data) {
            fail(c, "cannot poll the relay socket");
            return;
        }
        c->connected_at = now_ms(c);
        /* The upgrade request. */
        tun_ws_new_key(c->ws_key);
        struct tun_http_writer w;
        uint8_t *dst = ws_reserve(c, 1024) - TUN_WS_MAX_HEADER;
        if (tun_ws_begin_request(&w, dst, 1024, c->host, strchr(strstr(c->url, "://") + 3, '/'),
                                 c->ws_key, PROTOCOL) != 0 ||
            tun_http_add(&w, "User-Agent", "tunnel") != 0) {
            fail(c, "cannot write the upgrade request");
            return;
        }
        int len = tun_http_end(&w);
        if (len < 0) {
            fail(c, "cannot write the upgrade request");
            return;
        }
        c->wlen += (size_t)len;
        tun_http_parser_init(&c->hp, TUN_HTTP_RESPONSE);
        tun_ws_reader_init(&c->wr, TUN_WS_CLIENT, MAX_MESSAGE, c->asm_buf, MAX_MESSAGE);
        flush(c);
        return;
    }
}

/* ---- curl callbacks ----------------------------------------------------------------------------
 */

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)e;
    (void)socketp;
    struct tun_relay_client *c = userp;
    if (what == CURL_POLL_REMOVE) {
        struct cpoll *p = cpoll_find(c, fd);
        if (!p)
            return 0;
        p->curl_events = 0;
        if (p != c->data)
            cpoll_close(c, p);
        else
            update_poll(c, p);
        return 0;
    }
    struct cpoll *p = cpoll_get(c, fd);
    if (!p)
        return -1;
    p->curl_events =
        (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    update_poll(c, p);
    return 0;
}

static void curl_timer_cb(uv_timer_t *t)
{
    struct tun_relay_client *c = t->data;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->multi, &left)))
        if (m->msg == CURLMSG_DONE && m->easy_handle == c->easy && m->data.result != CURLE_OK) {
            fail(c, "cannot reach the relay: %s", curl_easy_strerror(m->data.result));
            return;
        }
}

static int timer_fn(CURLM *m, long ms, void *userp)
{
    (void)m;
    struct tun_relay_client *c = userp;
    if (ms < 0)
        uv_timer_stop(&c->curl_timer);
    else
        uv_timer_start(&c->curl_timer, curl_timer_cb, (uint64_t)ms, 0);
    return 0;
}

/* ---- the schedule: attempts, deadlines, pings --------------------------------------------------
 */

static void timer_cb(uv_timer_t *t)
{
    struct tun_relay_client *c = t->data;
    uint64_t now = now_ms(c);
    if (c->state == TUN_RELAY_CLIENT_WAITING) {
        start_attempt(c);
        return;
    }
    if (c->state == TUN_RELAY_CLIENT_CONNECTING) {
        fail(c, "no answer from the relay within %u ms",
             (unsigned)(c->cfg.connect_ms + c->cfg.auth_ms));
        return;
    }
    /* READY */
    if (now - c->last_rx >= c->cfg.dead_ms) {
        fail(c, "no frame from the relay for %u ms", (unsigned)c->cfg.dead_ms);
        return;
    }
    if (now - c->last_ping >= c->cfg.ping_ms) {
        uint8_t out[16];
        randombytes_buf(c->ping_data, sizeof(c->ping_data));
        int n = tun_relay_encode_ping(out, sizeof(out), TUN_RELAY_PING, c->ping_data);
        if (n > 0 && send_frame(c, out, (size_t)n) == 0) {
            c->ping_sent_us = uv_hrtime() / 1000;
            c->last_ping = now;
        }
    }
    schedule(c);
}

static void schedule(struct tun_relay_client *c)
{
    if (c->closing)
        return;
    uint64_t delay;
    if (c->state == TUN_RELAY_CLIENT_WAITING) {
        if (c->next_delay_ms) {
            delay = c->next_delay_ms;
            c->next_delay_ms = 0;
        } else {
            unsigned shift = c->failures_in_row > 16 ? 16 : c->failures_in_row;
            delay = (uint64_t)c->cfg.backoff_min_ms << (shift ? shift - 1 : 0);
            if (delay > c->cfg.backoff_max_ms)
                delay = c->cfg.backoff_max_ms;
            /* +-25 %, so that many clients of a restarted relay do not return in step. */
            delay = delay * (75 + randombytes_uniform(51)) / 100;
        }
    } else if (c->state == TUN_RELAY_CLIENT_CONNECTING) {
        delay = (uint64_t)c->cfg.connect_ms + c->cfg.auth_ms;
    } else {
        /* Often enough to ping on time and to notice a dead relay within a third of dead_ms. */
        delay = c->cfg.ping_ms < c->cfg.dead_ms / 3 ? c->cfg.ping_ms : c->cfg.dead_ms / 3;
        if (delay == 0)
            delay = 1;
    }
    uv_timer_start(&c->timer, timer_cb, delay, 0);
}

static void start_attempt(struct tun_relay_client *c)
{
    drop_connection(c);
    c->connected_at = 0;
    c->last_rx = now_ms(c);
    c->easy = curl_easy_init();
    if (!c->easy) {
        fail(c, "cannot start curl");
        return;
    }
    curl_easy_setopt(c->easy, CURLOPT_URL, c->url);
    curl_easy_setopt(c->easy, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS, (long)c->cfg.connect_ms);
    curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->easy, CURLOPT_TCP_NODELAY, 1L);
    if (c->proxy)
        curl_easy_setopt(c->easy, CURLOPT_PROXY, c->proxy);
    if (c->cafile)
        curl_easy_setopt(c->easy, CURLOPT_CAINFO, c->cafile);
    set_state(c, TUN_RELAY_CLIENT_CONNECTING, NULL);
    if (curl_multi_add_handle(c->multi, c->easy) != CURLM_OK) {
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
        fail(c, "cannot start curl");
        return;
    }
    schedule(c);
}

/* ---- API ----------------------------------------------------------------------------------------
 */

static int derive_pub(uint8_t pub[32], const uint8_t secret[32])
{
    uint8_t sk[64];
    int ok = crypto_sign_seed_keypair(pub, sk, secret) == 0;
    sodium_memzero(sk, sizeof(sk));
    return ok;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int tun_relay_client_new(uv_loop_t *loop, const struct tun_relay_client_cfg *cfg,
                         const struct tun_relay_client_cbs *cbs, void *ud,
                         struct tun_relay_client **out)
{
    if (!cfg || !cfg->url)
        return TUN_EINVAL;
    const char *u = cfg->url;
    int https = strncmp(u, "https://", 8) == 0;
    if (!https && strncmp(u, "http://", 7) != 0)
        return TUN_EINVAL;
    const char *h = u + (https ? 8 : 7);
    size_t hl = strcspn(h, "/?#");
    if (hl == 0 || hl > 255 || (cfg->token && strlen(cfg->token) > TUN_RELAY_MAX_TOKEN))
        return TUN_EINVAL;
    struct tun_relay_client *c = calloc(1, sizeof(*c));
    if (!c)
        return TUN_ENOMEM;
    c->loop = loop;
    c->cfg = *cfg;
    if (!c->cfg.connect_ms)
        c->cfg.connect_ms = 10000;
    if (!c->cfg.auth_ms)
        c->cfg.auth_ms = 10000;
    if (!c->cfg.ping_ms)
        c->cfg.ping_ms = 15000;
    if (!c->cfg.dead_ms)
        c->cfg.dead_ms = 30000;
    if (!c->cfg.backoff_min_ms)
        c->cfg.backoff_min_ms = 100;
    if (!c->cfg.backoff_max_ms)
        c->cfg.backoff_max_ms = 10000;
    if (!c->cfg.max_queued)
        c->cfg.max_queued = 1024 * 1024;
    if (c->cfg.max_queued < TUN_WS_MAX_HEADER + TUN_RELAY_MAX_FRAME + 1024)
        c->cfg.max_queued = TUN_WS_MAX_HEADER + TUN_RELAY_MAX_FRAME + 1024;
    if (cbs)
        c->cbs = *cbs;
    c->ud = ud;
    /* The path defaults to /relay. */
    const char *path = h + hl;
    size_t need = strlen(u) + 8;
    c->url = malloc(need);
    c->host = strndup(h, hl);
    c->proxy = dup_or_null(cfg->proxy);
    c->cafile = dup_or_null(cfg->cafile);
    c->token = dup_or_null(cfg->token);
    c->rbuf = malloc(RBUF_CAP);
    c->asm_buf = malloc(MAX_MESSAGE);
    c->wbuf = malloc(c->cfg.max_queued);
    c->multi = curl_multi_init();
    if (!c->url || !c->host || !c->rbuf || !c->asm_buf || !c->wbuf || !c->multi ||
        (cfg->proxy && !c->proxy) || (cfg->cafile && !c->cafile) || (cfg->token && !c->token) ||
        !derive_pub(c->pub, cfg->secret)) {
        free(c->url);
        free(c->host);
        free(c->proxy);
        free(c->cafile);
        free(c->token);
        free(c->rbuf);
        free(c->asm_buf);
        free(c->wbuf);
        if (c->multi)
            curl_multi_cleanup(c->multi);
        free(c);
        return TUN_ENOMEM;
    }
    snprintf(c->url, need, "%s%s", u, *path == '/' ? "" : "/relay");
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    uv_timer_init(loop, &c->curl_timer);
    uv_timer_init(loop, &c->timer);
    uv_check_init(loop, &c->flusher);
    c->curl_timer.data = c->timer.data = c->flusher.data = c;
    c->rnd_off = sizeof(c->rnd);
    start_attempt(c);
    *out = c;
    return 0;
}

static void flusher_cb(uv_check_t *h)
{
    struct tun_relay_client *c = h->data;
    uv_check_stop(h);
    c->flush_armed = 0;
    if (!c->closing && c->easy)
        flush(c);
}

int tun_relay_client_send(struct tun_relay_client *c, const uint8_t dst[32], const uint8_t *data,
                          size_t len)
{
    if (c->state != TUN_RELAY_CLIENT_READY || !c->easy)
        return TUN_EAGAIN;
    if (len == 0 || len > TUN_RELAY_MAX_DATAGRAM)
        return TUN_ETOOBIG;
    uint8_t *p = ws_reserve(c, TUN_RELAY_DATAGRAM_HEADER + len);
    if (!p)
        return TUN_EAGAIN;
    tun_relay_datagram_header(p, TUN_RELAY_SEND, dst);
    memcpy(p + TUN_RELAY_DATAGRAM_HEADER, data, len);
    ws_commit(c, TUN_WS_BINARY, TUN_RELAY_DATAGRAM_HEADER + len);
    c->st.tx_datagrams++;
    c->st.tx_bytes += len;
    /* The QUIC layer writes its packets in bursts: send the burst with one call, at the end of
     * this loop turn, rather than one system call per packet. */
    if (!c->flush_armed) {
        c->flush_armed = 1;
        uv_check_start(&c->flusher, flusher_cb);
    }
    return 0;
}

int tun_relay_client_state(const struct tun_relay_client *c)
{
    return c->state;
}

void tun_relay_client_stats(const struct tun_relay_client *c, struct tun_relay_client_stats *st)
{
    *st = c->st;
    st->state = c->state;
}

static void timer_closed(uv_handle_t *h)
{
    struct tun_relay_client *c = h->data;
    if (--c->handles == 0) {
        free(c->rbuf);
        free(c->asm_buf);
        free(c->wbuf);
        free(c);
    }
}

void tun_relay_client_close(struct tun_relay_client *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->handles = 3; /* two timers and the flusher; each poll adds one as it closes */
    drop_connection(c);
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    free(c->url);
    free(c->host);
    free(c->proxy);
    free(c->cafile);
    if (c->token) {
        sodium_memzero(c->token, strlen(c->token));
        free(c->token);
    }
    sodium_memzero(c->cfg.secret, sizeof(c->cfg.secret));
    uv_close((uv_handle_t *)&c->curl_timer, timer_closed);
    uv_close((uv_handle_t *)&c->timer, timer_closed);
    uv_close((uv_handle_t *)&c->flusher, timer_closed);
}
