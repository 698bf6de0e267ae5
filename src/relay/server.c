#include "relay/server.h"
#include "discovery/pkarr.h"
#include "relay/iplimit.h"
#include "ice/stun_server.h"
#include "relay/frame.h"
#include "relay/queue.h"
#include "util/error.h"
#include "util/log.h"
#include "util/tokbucket.h"
#include "web/http.h"
#include "web/stream.h"
#include "web/ws.h"

#include <sodium.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

/* A server frame header is at most 10 bytes (no mask): frames are built after this much room
 * so the header can be put in front of them without moving the payload. */
#define HDR_ROOM   10
#define READ_LIMIT (128 * 1024) /* must hold one whole WebSocket frame of the largest size */
#define RECENT_MAX 32           /* senders remembered per client, for PEER_GONE on leave */
#define RECENT_MS  60000        /* ... who sent within this long */
#define GONE_MAX   8            /* unknown destinations remembered per client */
#define GONE_MS    1000         /* at most one PEER_GONE(not here) per destination per this */
/* RESTARTING on shutdown: come back after this, and keep trying this long (a restart by a
 * service manager takes about a second; a relay gone for good costs clients nothing more than
 * their usual backoff). */
#define RESTART_IN_MS  1000
#define RESTART_FOR_MS 60000
#define EXPIRE_MS      60000 /* pkarr store sweep */
#define MIN_QUEUE      (TUN_RELAY_MAX_FRAME + HDR_ROOM + TUN_RELAY_QUEUE_OVERHEAD)
#define PKARR_CTYPE    "application/pkarr.org/relays#payload"
#define METRICS_CTYPE  "text/plain; version=0.0.4; charset=utf-8"

enum { ST_HTTP, ST_BODY, ST_WS, ST_DONE };

struct recent {
    uint8_t key[TUN_RELAY_KEY_LEN];
    uint64_t ms;
};

struct conn {
    struct tun_relay_server *srv;
    struct tun_wstream *s;
    uv_timer_t timer;
    struct conn *prev, *next; /* all connections */
    struct conn *hnext;       /* hash chain of authenticated clients */
    int state, closing, authed, in_table;
    /* HTTP phase */
    struct tun_http_parser *http;
    uint8_t *body;
    size_t body_len, body_need;
    uint8_t pkey[TUN_PKARR_KEY_LEN];
    /* WebSocket phase */
    struct tun_ws_reader rd;
    uint8_t *asm_buf; /* only while a fragmented message arrives */
    uint8_t key[TUN_RELAY_KEY_LEN];
    uint8_t challenge[TUN_RELAY_CHALLENGE_LEN];
    uint64_t last_rx_ms, next_ping_ms;
    struct tun_relay_queue q;
    uint8_t *qbuf; /* only while writes are refused */
    struct tun_tokbucket tb;
    int rate_limited, queue_dropping, health3_pending;
    uint64_t ping_seq;
    struct recent senders[RECENT_MAX];
    struct recent gone[GONE_MAX];
};

struct tun_relay_server {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    uv_timer_t expire;
    struct tun_stun_server *stun;
    gnutls_certificate_credentials_t tls;
    int backlog;
    uint32_t rate, burst;
    size_t queue_bytes, queue_count, write_limit;
    uint64_t auth_ms, http_ms, ping_ms, dead_ms;
    uint8_t (*allow)[TUN_RELAY_KEY_LEN];
    size_t n_allow;
    uint8_t (*tokens)[TUN_RELAY_MAX_TOKEN];
    size_t *token_len;
    size_t n_tokens;
    struct tun_pkarr_store *pkarr;
    struct tun_iplimit pkarr_limit;
    struct conn **tab;
    size_t tab_size, tab_n;
    uint8_t hkey[crypto_shorthash_KEYBYTES];
    struct conn *conns;
    struct tun_relay_server_stats st;
    int closing, pending;
    void (*closed)(void *ud);
    void *closed_ud;
    uint8_t scratch[HDR_ROOM + TUN_RELAY_MAX_FRAME];
};

static const char *const protocols[] = {TUN_RELAY_WS_PROTOCOL};

static uint64_t now_ms(struct tun_relay_server *srv)
{
    return uv_now(srv->loop);
}

static uint64_t wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

static const char *peer(const struct conn *c)
{
    return c->s ? tun_wstream_peer(c->s) : "?";
}

/* "192.0.2.1:443" -> "192.0.2.1", "[2001:db8::1]:443" -> "2001:db8::1": the source without
 * its port, for per-address limits. */
static const char *addr_key(const char *p, char *out, size_t cap)
{
    const char *start = p, *end;
    if (*p == '[') {
        start = p + 1;
        end = strchr(start, ']');
    } else {
        end = strrchr(p, ':');
    }
    size_t n = end ? (size_t)(end - start) : strlen(start);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, start, n);
    out[n] = '\0';
    return out;
}

/* ---- the client table ----------------------------------------------------------------------- */

static size_t slot_of(const struct tun_relay_server *srv, const uint8_t *key, size_t size)
{
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, key, TUN_RELAY_KEY_LEN, srv->hkey);
    uint64_t v;
    memcpy(&v, h, sizeof(v));
    return (size_t)(v & (size - 1));
}

static struct conn *lookup(const struct tun_relay_server *srv, const uint8_t *key)
{
    for (struct conn *c = srv->tab[slot_of(srv, key, srv->tab_size)]; c; c = c->hnext)
        if (memcmp(c->key, key, TUN_RELAY_KEY_LEN) == 0)
            return c;
    return NULL;
}

static void table_remove(struct tun_relay_server *srv, struct conn *c)
{
    if (!c->in_table)
        return;
    struct conn **pp = &srv->tab[slot_of(srv, c->key, srv->tab_size)];
    while (*pp && *pp != c)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = c->hnext;
    c->hnext = NULL;
    c->in_table = 0;
    srv->tab_n--;
}

/* Grows the table when full; a failed growth only makes chains longer. */
static void table_insert(struct tun_relay_server *srv, struct conn *c)
{
    if (srv->tab_n >= srv->tab_size) {
        size_t nsize = srv->tab_size * 2;
        struct conn **nt = calloc(nsize, sizeof(*nt));
        if (nt) {
            for (size_t i = 0; i < srv->tab_size; i++) {
                struct conn *e = srv->tab[i];
                while (e) {
                    struct conn *next = e->hnext;
                    size_t j = slot_of(srv, e->key, nsize);
                    e->hnext = nt[j];
                    nt[j] = e;
                    e = next;
                }
            }
            free(srv->tab);
            srv->tab = nt;
            srv->tab_size = nsize;
        }
    }
    size_t j = slot_of(srv, c->key, srv->tab_size);
    c->hnext = srv->tab[j];
    srv->tab[j] = c;
    c->in_table = 1;
    srv->tab_n++;
}

/* ---- closing -------------------------------------------------------------------------------- */

static void server_maybe_done(struct tun_relay_server *srv)
{
    if (!srv->closing || srv->pending > 0)
        return;
    void (*cb)(void *) = srv->closed;
    void *ud = srv->closed_ud;
    tun_iplimit_free(&srv->pkarr_limit);
    if (srv->pkarr) {
        tun_pkarr_store_free(srv->pkarr);
        free(srv->pkarr);
    }
    free(srv->tab);
    free(srv->allow);
    free(srv->tokens);
    free(srv->token_len);
    free(srv);
    if (cb)
        cb(ud);
}

static void conn_free(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct tun_relay_server *srv = c->srv;
    free(c->http);
    free(c->body);
    free(c->asm_buf);
    free(c->qbuf);
    free(c);
    srv->pending--;
    server_maybe_done(srv);
}

static int send_frame(struct conn *c, size_t flen, int datagram);

/* Tell the recent senders of a client that left. */
static void notify_leave(struct conn *c)
{
    struct tun_relay_server *srv = c->srv;
    uint64_t now = now_ms(srv);
    for (size_t i = 0; i < RECENT_MAX; i++) {
        struct recent *r = &c->senders[i];
        if (!r->ms || now - r->ms > RECENT_MS)
            continue;
        struct conn *d = lookup(srv, r->key);
        if (!d || d == c || d->closing)
            continue;
        int n = tun_relay_encode_peer_gone(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME, c->key,
                                           TUN_RELAY_GONE_DISCONNECTED);
        if (n > 0 && send_frame(d, (size_t)n, 0) == 0)
            srv->st.peer_gone++;
    }
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    struct tun_relay_server *srv = c->srv;
    c->closing = 1;
    c->state = ST_DONE;
    if (c->in_table) {
        table_remove(srv, c);
        if (!srv->closing) /* everyone is leaving: nobody to tell */
            notify_leave(c);
    }
    if (c->authed)
        srv->st.clients--;
    if (c->s) {
        if (c->srv->closing)
            tun_wstream_close_now(c->s); /* the host stops the loop right after its closers */
        else
            tun_wstream_close(c->s);
    }
    c->s = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    srv->st.connections--;
    srv->st.closed++;
    uv_close((uv_handle_t *)&c->timer, conn_free);
}

/* Send a WebSocket close frame (ahead of anything queued: the connection ends) and close. */
static void ws_close(struct conn *c, int code, const char *reason)
{
    if (c->closing)
        return;
    uint8_t buf[TUN_WS_MAX_HEADER + TUN_WS_MAX_CONTROL];
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > TUN_WS_MAX_CLOSE_REASON)
        rlen = TUN_WS_MAX_CLOSE_REASON;
    int n = tun_ws_close_write(buf, sizeof(buf), code, reason, rlen, NULL);
    if (n > 0 && c->s)
        (void)tun_wstream_write(c->s, buf, (size_t)n);
    conn_close(c);
}

static void protocol_error(struct conn *c, int code, const char *why)
{
    c->srv->st.protocol_errors++;
    tun_log_info(RELAY, "closing %s (%s): %s", peer(c), c->authed ? "client" : "unauthenticated",
                 why);
    ws_close(c, code, why);
}

/* ---- sending to a client -------------------------------------------------------------------- */

/* A complete WebSocket message to c: written at once, or queued behind what is already
 * waiting. Returns 0, or TUN_EAGAIN when it was dropped (queue full). */
static int deliver(struct conn *c, const uint8_t *msg, size_t len)
{
    struct tun_relay_server *srv = c->srv;
    if (c->closing || !c->s)
        return TUN_ECLOSED;
    if (!c->qbuf || c->q.count == 0) {
        int rc = tun_wstream_write(c->s, msg, len);
        if (rc == 0)
            return 0;
        if (rc != TUN_EAGAIN)
            return rc; /* the stream ends; on_end closes the connection */
        if (!c->qbuf) {
            /* The queue exists only while the socket is backed up. */
            c->qbuf = malloc(srv->queue_bytes);
            if (!c->qbuf || tun_relay_queue_init(&c->q, c->qbuf, srv->queue_bytes, srv->queue_count,
                                                 TUN_RELAY_DROP_NEWEST) != 0) {
                free(c->qbuf);
                c->qbuf = NULL;
                return TUN_EAGAIN;
            }
        }
    }
    int rc = tun_relay_queue_push(&c->q, msg, len, 0);
    if (rc != 0) {
        if (!c->queue_dropping) {
            c->queue_dropping = 1;
            c->health3_pending = 1;
            tun_log_debug(RELAY, "send queue of %s full: dropping", peer(c));
        }
        return TUN_EAGAIN;
    }
    return 0;
}

/* Send the relay frame of flen bytes at srv->scratch + HDR_ROOM. */
static int send_frame(struct conn *c, size_t flen, int datagram)
{
    (void)datagram;
    struct tun_relay_server *srv = c->srv;
    uint8_t hdr[TUN_WS_MAX_HEADER];
    int h = tun_ws_header_encode(hdr, 1, TUN_WS_BINARY, flen, NULL);
    if (h < 0 || h > HDR_ROOM)
        return TUN_EINVAL;
    uint8_t *p = srv->scratch + HDR_ROOM - h;
    memcpy(p, hdr, (size_t)h);
    return deliver(c, p, (size_t)h + flen);
}

static void send_health(struct conn *c, uint8_t status, const char *text)
{
    struct tun_relay_server *srv = c->srv;
    int n = tun_relay_encode_health(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME, status, text,
                                    strlen(text));
    if (n > 0)
        (void)send_frame(c, (size_t)n, 0);
}

static void on_drain(struct tun_wstream *s, void *ud)
{
    (void)s;
    struct conn *c = ud;
    if (c->closing || !c->qbuf)
        return;
    const uint8_t *p;
    size_t len;
    while (tun_relay_queue_peek(&c->q, &p, &len, NULL) == 0) {
        int rc = tun_wstream_write(c->s, p, len);
        if (rc == TUN_EAGAIN)
            return; /* want_drain is set again */
        if (rc != 0)
            return;
        tun_relay_queue_pop(&c->q);
    }
    free(c->qbuf);
    c->qbuf = NULL;
    memset(&c->q, 0, sizeof(c->q));
    c->queue_dropping = 0;
    if (c->health3_pending) {
        c->health3_pending = 0;
        send_health(c, TUN_RELAY_QUEUE_FULL, "send queue was full: datagrams were dropped");
    }
}

/* ---- HTTP ----------------------------------------------------------------------------------- */

static void respond(struct conn *c, int status, const char *ctype, const void *body, size_t blen,
                    const char *const *extra)
{
    struct tun_relay_server *srv = c->srv;
    uint8_t head[1024];
    struct tun_http_writer w;
    tun_http_begin_response(&w, head, sizeof(head), status, NULL);
    if (ctype)
        tun_http_add(&w, "Content-Type", ctype);
    if (status != 204 && status != 304) /* both never carry a body (RFC 9110 §8.6) */
        tun_http_add_u64(&w, "Content-Length", blen);
    tun_http_add(&w, "Connection", "close");
    for (size_t i = 0; extra && extra[i]; i += 2)
        tun_http_add(&w, extra[i], extra[i + 1]);
    int n = tun_http_end(&w);
    if (status >= 400)
        srv->st.http_errors++;
    if (n > 0 && c->s) {
        (void)tun_wstream_write(c->s, head, (size_t)n);
        if (blen)
            (void)tun_wstream_write(c->s, body, blen);
    }
    /* One request per connection: simpler, and the relay's HTTP clients open one per probe. */
    conn_close(c);
}

static void respond_text(struct conn *c, int status, const char *text)
{
    char body[256];
    int n = snprintf(body, sizeof(body), "%s\n", text);
    respond(c, status, "text/plain; charset=utf-8", body, (size_t)n, NULL);
}

struct metric {
    const char *name, *type, *help;
    size_t off;
};

#define M(n, t, h, f)                                                                              \
    {                                                                                              \
        n, t, h, offsetof(struct tun_relay_server_stats, f)                                        \
    }
static const struct metric metrics[] = {
    M("tunnel_relay_connections", "gauge", "Open TCP connections.", connections),
    M("tunnel_relay_clients", "gauge", "Authenticated relay clients connected.", clients),
    M("tunnel_relay_connections_accepted_total", "counter", "TCP connections accepted.", accepted),
    M("tunnel_relay_connections_closed_total", "counter", "TCP connections closed.", closed),
    M("tunnel_relay_http_requests_total", "counter", "HTTP request heads received.", http_requests),
    M("tunnel_relay_http_errors_total", "counter", "HTTP answers with a 4xx or 5xx status.",
      http_errors),
    M("tunnel_relay_upgrades_total", "counter", "WebSocket upgrades to the relay protocol.",
      upgrades),
    M("tunnel_relay_auth_ok_total", "counter", "Clients authenticated.", auth_ok),
    M("tunnel_relay_auth_failures_total", "counter", "Clients denied (AUTH_DENIED).", auth_failed),
    M("tunnel_relay_auth_timeouts_total", "counter", "Connections closed without CLIENT_AUTH.",
      auth_timeouts),
    M("tunnel_relay_datagrams_forwarded_total", "counter", "Datagrams forwarded.", datagrams),
    M("tunnel_relay_bytes_forwarded_total", "counter", "Datagram bytes forwarded.", bytes),
    M("tunnel_relay_dropped_queue_full_total", "counter",
      "Datagrams dropped because the destination's send queue was full.", dropped_queue),
    M("tunnel_relay_dropped_rate_limited_total", "counter",
      "Datagrams dropped because the sender exceeded its rate.", dropped_rate),
    M("tunnel_relay_dropped_no_peer_total", "counter",
      "Datagrams dropped because the destination was not connected.", dropped_no_peer),
    M("tunnel_relay_peer_gone_total", "counter", "PEER_GONE frames sent.", peer_gone),
    M("tunnel_relay_duplicates_total", "counter",
      "Clients replaced by a newer connection with the same key.", duplicates),
    M("tunnel_relay_ping_timeouts_total", "counter", "Clients closed for silence.", pings_timeout),
    M("tunnel_relay_protocol_errors_total", "counter",
      "Connections closed for a WebSocket or relay protocol violation.", protocol_errors),
    M("tunnel_relay_pkarr_puts_total", "counter", "Discovery packets stored.", pkarr_puts),
    M("tunnel_relay_pkarr_put_rejected_total", "counter",
      "Discovery PUTs refused as invalid or too large.", pkarr_put_rejected),
    M("tunnel_relay_pkarr_conflicts_total", "counter",
      "Discovery PUTs refused as not newer than the stored packet.", pkarr_conflicts),
    M("tunnel_relay_pkarr_gets_total", "counter", "Discovery GETs answered with a packet.",
      pkarr_gets),
    M("tunnel_relay_pkarr_misses_total", "counter", "Discovery GETs for an unknown key.",
      pkarr_misses),
    M("tunnel_relay_pkarr_rate_limited_total", "counter",
      "Discovery requests refused with 429 (over the per-address rate).", pkarr_rate_limited),
};
#undef M

int tun_relay_server_metrics(const struct tun_relay_server *srv, char *buf, size_t cap)
{
    size_t len = 0;
    for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++) {
        const struct metric *m = &metrics[i];
        uint64_t v;
        memcpy(&v, (const char *)&srv->st + m->off, sizeof(v));
        int n = snprintf(buf + len, cap - len, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", m->name,
                         m->help, m->name, m->type, m->name, (unsigned long long)v);
        if (n < 0 || (size_t)n >= cap - len)
            return TUN_ETOOBIG;
        len += (size_t)n;
    }
    return (int)len;
}

static void http_date(char out[40], uint64_t unix_s)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    snprintf(out, 40, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* IMF-fixdate only (what every current client sends); -1 when it does not parse. */
static int64_t parse_http_date(const char *s)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    char wd[4], mon[4];
    int d, y, h, mi, se;
    if (sscanf(s, "%3s, %d %3s %d %d:%d:%d GMT", wd, &d, mon, &y, &h, &mi, &se) != 7)
        return -1;
    const char *p = strstr(months, mon);
    if (!p || strlen(mon) != 3 || (p - months) % 3)
        return -1;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = (int)((p - months) / 3),
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = se};
    time_t t = timegm(&tm);
    return t == (time_t)-1 ? -1 : (int64_t)t;
}

static void pkarr_get(struct conn *c)
{
    struct tun_relay_server *srv = c->srv;
    struct tun_pkarr_entry e;
    if (!tun_pkarr_store_get(srv->pkarr, c->pkey, wall_us(), &e)) {
        srv->st.pkarr_misses++;
        respond_text(c, 404, "no packet for this key");
        return;
    }
    uint64_t ts = e.timestamp / 1000000u;
    const struct tun_http_header *ims = tun_http_find(&c->http->head, "If-Modified-Since");
    if (ims) {
        int64_t t = parse_http_date(ims->value);
        if (t >= 0 && (uint64_t)t >= ts) {
            respond(c, 304, NULL, NULL, 0, NULL);
            return;
        }
    }
    char cc[48], lm[40];
    snprintf(cc, sizeof(cc), "public, max-age=%u", (unsigned)e.min_ttl);
    http_date(lm, ts);
    const char *extra[] = {"Cache-Control", cc, "Last-Modified", lm, NULL};
    srv->st.pkarr_gets++;
    respond(c, 200, PKARR_CTYPE, e.packet + TUN_PKARR_KEY_LEN, e.len - TUN_PKARR_KEY_LEN, extra);
}

static void pkarr_put_done(struct conn *c)
{
    struct tun_relay_server *srv = c->srv;
    int rc = tun_pkarr_store_put_payload(srv->pkarr, c->pkey, c->body, c->body_len, wall_us());
    switch (rc) {
    case 0:
        srv->st.pkarr_puts++;
        respond(c, 204, NULL, NULL, 0, NULL);
        return;
    case TUN_EDENIED:
        srv->st.pkarr_conflicts++;
        respond_text(c, 409, "a packet at least as new is stored");
        return;
    case TUN_ETOOBIG:
        srv->st.pkarr_put_rejected++;
        respond_text(c, 413, "payload too large");
        return;
    default:
        srv->st.pkarr_put_rejected++;
        respond_text(c, 400, tun_strerror(rc));
        return;
    }
}

static void start_ws(struct conn *c, const char *proto);

static void route(struct conn *c)
{
    struct tun_relay_server *srv = c->srv;
    const struct tun_http_head *h = &c->http->head;
    srv->st.http_requests++;
    size_t plen = strcspn(h->target, "?");
    const char *path = h->target;
    int get = strcmp(h->method, "GET") == 0;
    if (plen == 6 && memcmp(path, "/relay", 6) == 0) {
        if (!get) {
            const char *allow[] = {"Allow", "GET", NULL};
            respond(c, 405, "text/plain; charset=utf-8", "method not allowed\n", 19, allow);
            return;
        }
        const char *why = NULL;
        int rc = tun_ws_check_request(h, &why);
        if (rc == TUN_EPROTO) {
            const char *extra[] = {"Sec-WebSocket-Version", "13", NULL};
            respond(c, 426, "text/plain; charset=utf-8", "WebSocket version 13 required\n", 30,
                    extra);
            return;
        }
        if (rc != 0) {
            respond_text(c, 400, why ? why : "bad WebSocket upgrade");
            return;
        }
        const char *proto = NULL;
        if (tun_http_find(h, "Sec-WebSocket-Protocol")) {
            if (tun_ws_select_protocol(h, protocols, 1) < 0) {
                respond_text(c, 400, "unsupported subprotocol: offer " TUN_RELAY_WS_PROTOCOL);
                return;
            }
            proto = protocols[0];
        }
        start_ws(c, proto);
        return;
    }
    if (plen == 5 && memcmp(path, "/ping", 5) == 0) {
        if (!get) {
            const char *allow[] = {"Allow", "GET", NULL};
            respond(c, 405, "text/plain; charset=utf-8", "method not allowed\n", 19, allow);
            return;
        }
        respond(c, 200, "text/plain; charset=utf-8", "pong\n", 5, NULL);
        return;
    }
    if (plen == 8 && memcmp(path, "/metrics", 8) == 0) {
        if (!get) {
            const char *allow[] = {"Allow", "GET", NULL};
            respond(c, 405, "text/plain; charset=utf-8", "method not allowed\n", 19, allow);
            return;
        }
        char *buf = malloc(16384);
        int n = buf ? tun_relay_server_metrics(srv, buf, 16384) : TUN_ENOMEM;
        if (n < 0)
            respond_text(c, 500, "metrics unavailable");
        else
            respond(c, 200, METRICS_CTYPE, buf, (size_t)n, NULL);
        free(buf);
        return;
    }
    if (srv->pkarr && plen > 7 && memcmp(path, "/pkarr/", 7) == 0) {
        int put = strcmp(h->method, "PUT") == 0;
        /* Per source address, so that one host cannot flood the store or scan it. */
        char key[TUN_IPLIMIT_KEY_MAX];
        uint32_t retry = 0;
        if (tun_iplimit_take(&srv->pkarr_limit, addr_key(peer(c), key, sizeof(key)),
                             uv_hrtime() / 1000, &retry) != 0) {
            char ra[16];
            snprintf(ra, sizeof(ra), "%u", (unsigned)retry);
            const char *extra[] = {"Retry-After", ra, NULL};
            srv->st.pkarr_rate_limited++;
            respond(c, 429, "text/plain; charset=utf-8", "too many requests\n", 18, extra);
            return;
        }
        if (!get && !put) {
            const char *allow[] = {"Allow", "GET, PUT", NULL};
            respond(c, 405, "text/plain; charset=utf-8", "method not allowed\n", 19, allow);
            return;
        }
        if (tun_pkarr_key_parse(c->pkey, path + 7, plen - 7) != 0) {
            if (put)
                srv->st.pkarr_put_rejected++;
            respond_text(c, 400, "not a z-base-32 public key");
            return;
        }
        if (get) {
            pkarr_get(c);
            return;
        }
        if (!h->has_content_length) {
            respond_text(c, 411, "Content-Length required");
            return;
        }
        if (h->content_length > TUN_PKARR_MAX_PAYLOAD) {
            srv->st.pkarr_put_rejected++;
            respond_text(c, 413, "payload too large");
            return;
        }
        c->body_need = (size_t)h->content_length;
        c->body_len = 0;
        c->body = malloc(c->body_need ? c->body_need : 1);
        if (!c->body) {
            respond_text(c, 500, "out of memory");
            return;
        }
        if (tun_http_has_token(h, "Expect", "100-continue"))
            (void)tun_wstream_write(c->s, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        c->state = ST_BODY;
        if (c->body_need == 0)
            pkarr_put_done(c);
        return;
    }
    respond_text(c, 404, "not found");
}

/* ---- relay protocol ------------------------------------------------------------------------- */

static void timer_cb(uv_timer_t *t);

static void schedule(struct conn *c)
{
    struct tun_relay_server *srv = c->srv;
    uint64_t now = now_ms(srv), at = c->next_ping_ms;
    if (c->last_rx_ms + srv->dead_ms < at)
        at = c->last_rx_ms + srv->dead_ms;
    uv_timer_start(&c->timer, timer_cb, at > now ? at - now : 0, 0);
}

static void start_ws(struct conn *c, const char *proto)
{
    struct tun_relay_server *srv = c->srv;
    uint8_t head[512];
    struct tun_http_writer w;
    tun_ws_begin_response(&w, head, sizeof(head), &c->http->head, proto);
    int n = tun_http_end(&w);
    if (n < 0 || tun_relay_challenge_new(c->challenge) != 0) {
        respond_text(c, 500, "cannot upgrade");
        return;
    }
    if (tun_wstream_write(c->s, head, (size_t)n) != 0) {
        conn_close(c);
        return;
    }
    srv->st.upgrades++;
    free(c->http);
    c->http = NULL;
    c->state = ST_WS;
    tun_ws_reader_init(&c->rd, TUN_WS_SERVER, TUN_RELAY_MAX_FRAME, NULL, 0);
    struct tun_relay_info info = {
        .version = TUN_RELAY_VERSION,
        .flags = srv->n_tokens ? TUN_RELAY_FLAG_TOKEN_REQUIRED : 0,
        .max_datagram = TUN_RELAY_MAX_DATAGRAM,
        .rate = srv->rate,
        .burst = srv->rate ? srv->burst : 0,
    };
    n = tun_relay_encode_challenge(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME, &info,
                                   c->challenge);
    if (n < 0 || send_frame(c, (size_t)n, 0) != 0) {
        conn_close(c);
        return;
    }
    c->last_rx_ms = now_ms(srv);
    uv_timer_start(&c->timer, timer_cb, srv->auth_ms, 0);
}

static void deny(struct conn *c, uint8_t code, const char *why)
{
    struct tun_relay_server *srv = c->srv;
    srv->st.auth_failed++;
    tun_log_info(RELAY, "denied %s: %s", peer(c), why);
    int n = tun_relay_encode_denied(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME, code, why,
                                    strlen(why));
    if (n > 0)
        (void)send_frame(c, (size_t)n, 0);
    ws_close(c, TUN_WS_CLOSE_POLICY, why);
}

static int token_ok(const struct tun_relay_server *srv, const uint8_t *tok, size_t len)
{
    int ok = 0;
    /* Every token is compared, in constant time for equal lengths, so timing says little. */
    for (size_t i = 0; i < srv->n_tokens; i++)
        if (srv->token_len[i] == len && sodium_memcmp(srv->tokens[i], tok, len) == 0)
            ok = 1;
    return ok;
}

static void client_auth(struct conn *c, const uint8_t *buf, size_t len)
{
    struct tun_relay_server *srv = c->srv;
    struct tun_relay_frame f;
    if (tun_relay_decode(buf, len, TUN_RELAY_FROM_CLIENT, &f) != 0) {
        deny(c, TUN_RELAY_DENY_MALFORMED, "malformed CLIENT_AUTH");
        return;
    }
    if (f.code != TUN_RELAY_VERSION) {
        deny(c, TUN_RELAY_DENY_VERSION, "unsupported relay protocol version");
        return;
    }
    if (tun_relay_challenge_verify(f.sig, f.key, c->challenge, NULL, 0) != 0) {
        deny(c, TUN_RELAY_DENY_SIGNATURE, "bad signature");
        return;
    }
    if (srv->n_tokens && !token_ok(srv, f.data, f.len)) {
        deny(c, TUN_RELAY_DENY_TOKEN, "access token missing or wrong");
        return;
    }
    if (srv->n_allow) {
        size_t i = 0;
        while (i < srv->n_allow && memcmp(srv->allow[i], f.key, TUN_RELAY_KEY_LEN) != 0)
            i++;
        if (i == srv->n_allow) {
            deny(c, TUN_RELAY_DENY_KEY, "key not on the allow-list");
            return;
        }
    }
    memcpy(c->key, f.key, TUN_RELAY_KEY_LEN);
    int n = tun_relay_encode_auth_ok(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME);
    if (n < 0 || send_frame(c, (size_t)n, 0) != 0) {
        conn_close(c);
        return;
    }
    struct conn *old = lookup(srv, c->key);
    if (old) {
        /* The newest connection wins (a client that reconnects before the relay noticed the
         * old one died); the old one's recent senders still want to hear if this one leaves. */
        memcpy(c->senders, old->senders, sizeof(c->senders));
        table_remove(srv, old);
        srv->st.duplicates++;
        tun_log_info(RELAY, "%s replaces an older connection of the same key from %s", peer(c),
                     peer(old));
        send_health(old, TUN_RELAY_DUPLICATE, "same key connected elsewhere");
        ws_close(old, TUN_WS_CLOSE_POLICY, "same key connected elsewhere");
    }
    table_insert(srv, c);
    c->authed = 1;
    srv->st.auth_ok++;
    srv->st.clients++;
    tun_tokbucket_init(&c->tb, srv->rate, srv->burst, uv_hrtime() / 1000);
    uint64_t now = now_ms(srv);
    c->last_rx_ms = now;
    c->next_ping_ms = now + srv->ping_ms;
    schedule(c);
    tun_log_debug(RELAY, "client %s authenticated", peer(c));
}

/* A SEND to a key that is not here: PEER_GONE, at most once per destination per second. */
static void not_here(struct conn *c, const uint8_t *key)
{
    struct tun_relay_server *srv = c->srv;
    uint64_t now = now_ms(srv);
    struct recent *slot = &c->gone[0];
    for (size_t i = 0; i < GONE_MAX; i++) {
        struct recent *g = &c->gone[i];
        if (g->ms && memcmp(g->key, key, TUN_RELAY_KEY_LEN) == 0) {
            if (now - g->ms < GONE_MS)
                return;
            slot = g;
            break;
        }
        if (g->ms < slot->ms)
            slot = g;
    }
    memcpy(slot->key, key, TUN_RELAY_KEY_LEN);
    slot->ms = now ? now : 1;
    int n = tun_relay_encode_peer_gone(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME, key,
                                       TUN_RELAY_GONE_UNKNOWN);
    if (n > 0 && send_frame(c, (size_t)n, 0) == 0)
        srv->st.peer_gone++;
}

/* Remember that `from` sent to `to` now (bounded: the least recent entry is replaced). */
static void note_sender(struct conn *to, const uint8_t *from, uint64_t now)
{
    struct recent *slot = &to->senders[0];
    for (size_t i = 0; i < RECENT_MAX; i++) {
        struct recent *r = &to->senders[i];
        if (r->ms && memcmp(r->key, from, TUN_RELAY_KEY_LEN) == 0) {
            r->ms = now;
            return;
        }
        if (r->ms < slot->ms)
            slot = r;
    }
    memcpy(slot->key, from, TUN_RELAY_KEY_LEN);
    slot->ms = now ? now : 1;
}

static void forward(struct conn *c, const struct tun_relay_frame *f)
{
    struct tun_relay_server *srv = c->srv;
    int batch = f->type == TUN_RELAY_SEND_BATCH;
    size_t count = batch ? tun_relay_batch_count(f) : 1;
    if (srv->rate) {
        int rc = tun_tokbucket_take(&c->tb, uv_hrtime() / 1000, f->len, NULL);
        if (rc != 0) {
            srv->st.dropped_rate += count;
            if (!c->rate_limited) {
                c->rate_limited = 1;
                tun_log_debug(RELAY, "client %s over its rate: dropping", peer(c));
                send_health(c, TUN_RELAY_RATE_LIMITED, "rate limited");
            }
            return;
        }
        if (c->rate_limited) {
            c->rate_limited = 0;
            send_health(c, TUN_RELAY_HEALTHY, "");
        }
    }
    struct conn *d = lookup(srv, f->key);
    if (!d || d->closing) {
        srv->st.dropped_no_peer += count;
        not_here(c, f->key);
        return;
    }
    note_sender(d, c->key, now_ms(srv));
    int n;
    uint8_t *p = srv->scratch + HDR_ROOM;
    if (batch) {
        n = tun_relay_encode_batch(p, TUN_RELAY_MAX_FRAME, TUN_RELAY_RECV_BATCH, c->key, f->segment,
                                   f->data, f->len);
    } else {
        n = tun_relay_datagram_header(p, TUN_RELAY_RECV, c->key);
        if (n > 0) {
            memcpy(p + n, f->data, f->len);
            n += (int)f->len;
        }
    }
    if (n < 0)
        return;
    if (send_frame(d, (size_t)n, 1) == 0) {
        srv->st.datagrams += count;
        srv->st.bytes += f->len;
    } else {
        srv->st.dropped_queue += count;
    }
}

static void relay_message(struct conn *c, const uint8_t *buf, size_t len)
{
    struct tun_relay_server *srv = c->srv;
    if (!c->authed) {
        if (len > 0 && buf[0] == TUN_RELAY_CLIENT_AUTH)
            client_auth(c, buf, len);
        else
            protocol_error(c, TUN_WS_CLOSE_PROTOCOL_ERROR, "frame before CLIENT_AUTH");
        return;
    }
    struct tun_relay_frame f;
    int rc = tun_relay_decode(buf, len, TUN_RELAY_FROM_CLIENT, &f);
    if (rc != 0) {
        char why[64];
        snprintf(why, sizeof(why), "bad relay frame (type 0x%02x): %s", len ? buf[0] : 0,
                 tun_err_name(rc));
        protocol_error(c, TUN_WS_CLOSE_PROTOCOL_ERROR, why);
        return;
    }
    switch (f.type) {
    case TUN_RELAY_SEND:
    case TUN_RELAY_SEND_BATCH:
        forward(c, &f);
        return;
    case TUN_RELAY_PING: {
        int n = tun_relay_encode_ping(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME, TUN_RELAY_PONG,
                                      f.data);
        if (n > 0)
            (void)send_frame(c, (size_t)n, 0);
        return;
    }
    case TUN_RELAY_PONG:
        return; /* liveness is any frame */
    default:
        protocol_error(c, TUN_WS_CLOSE_PROTOCOL_ERROR, "unexpected relay frame");
        return;
    }
}

static void ws_event(struct conn *c, const struct tun_ws_event *ev)
{
    switch (ev->type) {
    case TUN_WS_EV_MESSAGE:
        if (ev->opcode != TUN_WS_BINARY) {
            protocol_error(c, TUN_WS_CLOSE_UNSUPPORTED, "text message");
            return;
        }
        relay_message(c, ev->data, ev->len);
        return;
    case TUN_WS_EV_PING: {
        uint8_t buf[TUN_WS_MAX_HEADER + TUN_WS_MAX_CONTROL];
        int n = tun_ws_frame_write(buf, sizeof(buf), 1, TUN_WS_PONG, ev->data, ev->len, NULL);
        if (n > 0)
            (void)deliver(c, buf, (size_t)n);
        return;
    }
    case TUN_WS_EV_CLOSE: {
        int code = ev->close_code == TUN_WS_CLOSE_NO_STATUS ? 0 : ev->close_code;
        tun_log_debug(RELAY, "%s closed the WebSocket (%d)", peer(c), ev->close_code);
        ws_close(c, code ? TUN_WS_CLOSE_NORMAL : 0, NULL);
        return;
    }
    default:
        return;
    }
}

/* WebSocket bytes: returns how many were consumed. */
static size_t ws_data(struct conn *c, uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (!c->closing && off < len) {
        if (!c->rd.asm_buf) {
            /* The assembly buffer is only needed for fragmented messages, which relay clients
             * have no reason to send: allocate it when one starts. */
            struct tun_ws_frame fh;
            if (tun_ws_header_decode(buf + off, len - off, TUN_WS_SERVER, &fh, NULL) > 0 &&
                !fh.fin && (fh.opcode == TUN_WS_BINARY || fh.opcode == TUN_WS_TEXT)) {
                c->asm_buf = malloc(TUN_RELAY_MAX_FRAME);
                if (!c->asm_buf) {
                    protocol_error(c, TUN_WS_CLOSE_INTERNAL, "out of memory");
                    break;
                }
                c->rd.asm_buf = c->asm_buf;
                c->rd.asm_cap = TUN_RELAY_MAX_FRAME;
            }
        }
        struct tun_ws_event ev;
        int n = tun_ws_read(&c->rd, buf + off, len - off, &ev);
        if (n == 0)
            break;
        if (n < 0) {
            protocol_error(c, c->rd.close_code ? c->rd.close_code : TUN_WS_CLOSE_PROTOCOL_ERROR,
                           c->rd.why ? c->rd.why : tun_strerror(n));
            break;
        }
        off += (size_t)n;
        c->last_rx_ms = now_ms(c->srv);
        if (ev.type != TUN_WS_EV_NONE)
            ws_event(c, &ev);
    }
    return off;
}

/* ---- stream callbacks ----------------------------------------------------------------------- */

static void on_data(struct tun_wstream *s, const uint8_t *data, size_t len, void *ud)
{
    struct conn *c = ud;
    /* tun_ws_read unmasks frames in place: the offered bytes are the stream's own heap
     * buffer, which nobody else reads, so writing them is safe. */
    uint8_t *buf = (uint8_t *)(uintptr_t)data;
    size_t off = 0;
    while (!c->closing && off < len) {
        if (c->state == ST_HTTP) {
            size_t used = 0;
            int rc = tun_http_parse(c->http, buf + off, len - off, &used);
            off += used;
            if (rc < 0) {
                tun_log_debug(RELAY, "bad request from %s: %s", peer(c), c->http->err_why);
                c->srv->st.http_requests++;
                respond_text(c, c->http->err_status ? c->http->err_status : 400,
                             c->http->err_why ? c->http->err_why : "bad request");
                break;
            }
            if (rc == 0)
                break;
            route(c);
        } else if (c->state == ST_BODY) {
            size_t n =
                len - off < c->body_need - c->body_len ? len - off : c->body_need - c->body_len;
            memcpy(c->body + c->body_len, buf + off, n);
            c->body_len += n;
            off += n;
            if (c->body_len == c->body_need)
                pkarr_put_done(c);
        } else if (c->state == ST_WS) {
            size_t n = ws_data(c, buf + off, len - off);
            off += n;
            if (n == 0)
                break;
        } else {
            off = len;
        }
    }
    if (!c->closing)
        tun_wstream_consume(s, off);
}

static void on_end(struct tun_wstream *s, int err, void *ud)
{
    (void)s;
    struct conn *c = ud;
    if (err)
        tun_log_debug(RELAY, "connection from %s ended: %s", peer(c), tun_strerror(err));
    conn_close(c);
}

static void timer_cb(uv_timer_t *t)
{
    struct conn *c = t->data;
    struct tun_relay_server *srv = c->srv;
    if (c->closing)
        return;
    if (c->state == ST_HTTP || c->state == ST_BODY) {
        tun_log_debug(RELAY, "request from %s timed out", peer(c));
        conn_close(c);
        return;
    }
    if (!c->authed) {
        srv->st.auth_timeouts++;
        tun_log_info(RELAY, "no CLIENT_AUTH from %s in time", peer(c));
        ws_close(c, TUN_WS_CLOSE_POLICY, "authentication timeout");
        return;
    }
    uint64_t now = now_ms(srv);
    if (now >= c->last_rx_ms + srv->dead_ms) {
        srv->st.pings_timeout++;
        tun_log_info(RELAY, "client %s silent for %llu ms: closing", peer(c),
                     (unsigned long long)(now - c->last_rx_ms));
        ws_close(c, TUN_WS_CLOSE_GOING_AWAY, "no answer to ping");
        return;
    }
    if (now >= c->next_ping_ms) {
        uint8_t data[TUN_RELAY_PING_LEN];
        c->ping_seq++;
        for (int i = 0; i < TUN_RELAY_PING_LEN; i++)
            data[i] = (uint8_t)(c->ping_seq >> (8 * (7 - i)));
        int n = tun_relay_encode_ping(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME, TUN_RELAY_PING,
                                      data);
        if (n > 0)
            (void)send_frame(c, (size_t)n, 0);
        c->next_ping_ms = now + srv->ping_ms;
    }
    schedule(c);
}

static void on_conn(uv_stream_t *l, int status)
{
    struct tun_relay_server *srv = l->data;
    if (status < 0) {
        tun_log_warn(RELAY, "accept: %s", tun_strerror(status));
        return;
    }
    if (srv->closing)
        return;
    struct conn *c = calloc(1, sizeof(*c));
    if (c)
        c->http = malloc(sizeof(*c->http));
    if (!c || !c->http) {
        if (c)
            free(c);
        /* Take the connection off the backlog so it does not wake us again. */
        uv_tcp_t *tmp = malloc(sizeof(*tmp));
        if (tmp && uv_tcp_init(srv->loop, tmp) == 0) {
            (void)uv_accept(l, (uv_stream_t *)tmp);
            uv_close((uv_handle_t *)tmp, (uv_close_cb)free);
        } else {
            free(tmp);
        }
        return;
    }
    c->srv = srv;
    tun_http_parser_init(c->http, TUN_HTTP_REQUEST);
    uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    srv->pending++;
    struct tun_wstream_cfg wc = {.read_limit = READ_LIMIT, .write_limit = srv->write_limit};
    struct tun_wstream_cbs cbs = {NULL, on_data, on_drain, on_end};
    int rc = tun_wstream_accept(l, srv->tls, &wc, &cbs, c, &c->s);
    if (rc != 0) {
        tun_log_debug(RELAY, "accept: %s", tun_strerror(rc));
        c->closing = 1;
        uv_close((uv_handle_t *)&c->timer, conn_free);
        return;
    }
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->st.accepted++;
    srv->st.connections++;
    uv_timer_start(&c->timer, timer_cb, srv->http_ms, 0);
}

static void expire_cb(uv_timer_t *t)
{
    struct tun_relay_server *srv = t->data;
    if (srv->pkarr)
        tun_pkarr_store_expire(srv->pkarr, wall_us());
}

/* ---- API ------------------------------------------------------------------------------------ */

static void handle_closed(uv_handle_t *h)
{
    struct tun_relay_server *srv = h->data;
    srv->pending--;
    server_maybe_done(srv);
}

static void stun_closed(void *ud)
{
    struct tun_relay_server *srv = ud;
    srv->pending--;
    server_maybe_done(srv);
}

int tun_relay_server_new(uv_loop_t *loop, const struct tun_relay_server_cfg *cfg,
                         struct tun_relay_server **out)
{
    if (!loop || !cfg || !cfg->listen || !out || (cfg->n_allow && !cfg->allow) ||
        (cfg->n_tokens && !cfg->tokens))
        return TUN_EINVAL;
    for (size_t i = 0; i < cfg->n_tokens; i++) {
        size_t n = cfg->tokens[i] ? strlen(cfg->tokens[i]) : 0;
        if (n == 0 || n > TUN_RELAY_MAX_TOKEN)
            return TUN_EINVAL;
    }
    if (sodium_init() < 0)
        return TUN_ECRYPTO;
    struct tun_relay_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return TUN_ENOMEM;
    srv->loop = loop;
    srv->tls = cfg->tls;
    srv->backlog = cfg->backlog > 0 ? cfg->backlog : 128;
    srv->rate = cfg->rate;
    srv->burst = cfg->burst;
    if (srv->rate && !srv->burst)
        srv->burst = srv->rate > TUN_RELAY_MAX_DATAGRAM ? srv->rate : TUN_RELAY_MAX_DATAGRAM;
    srv->queue_bytes = cfg->queue_bytes ? cfg->queue_bytes : 512 * 1024;
    if (srv->queue_bytes < MIN_QUEUE)
        srv->queue_bytes = MIN_QUEUE;
    srv->queue_count = cfg->queue_count ? cfg->queue_count : 512;
    srv->write_limit = cfg->write_limit ? cfg->write_limit : 256 * 1024;
    srv->auth_ms = cfg->auth_timeout_ms ? cfg->auth_timeout_ms : 10000;
    srv->http_ms = cfg->http_timeout_ms ? cfg->http_timeout_ms : 10000;
    srv->ping_ms = cfg->ping_ms ? cfg->ping_ms : 15000;
    srv->dead_ms = cfg->dead_ms ? cfg->dead_ms : 30000;
    randombytes_buf(srv->hkey, sizeof(srv->hkey));
    srv->tab_size = 64;
    srv->tab = calloc(srv->tab_size, sizeof(*srv->tab));
    int rc = srv->tab ? 0 : TUN_ENOMEM;
    if (rc == 0 && cfg->n_allow) {
        srv->allow = malloc(cfg->n_allow * sizeof(*srv->allow));
        if (srv->allow) {
            memcpy(srv->allow, cfg->allow, cfg->n_allow * sizeof(*srv->allow));
            srv->n_allow = cfg->n_allow;
        } else {
            rc = TUN_ENOMEM;
        }
    }
    if (rc == 0 && cfg->n_tokens) {
        srv->tokens = calloc(cfg->n_tokens, sizeof(*srv->tokens));
        srv->token_len = calloc(cfg->n_tokens, sizeof(*srv->token_len));
        if (srv->tokens && srv->token_len) {
            for (size_t i = 0; i < cfg->n_tokens; i++) {
                srv->token_len[i] = strlen(cfg->tokens[i]);
                memcpy(srv->tokens[i], cfg->tokens[i], srv->token_len[i]);
            }
            srv->n_tokens = cfg->n_tokens;
        } else {
            rc = TUN_ENOMEM;
        }
    }
    if (rc == 0 && cfg->pkarr_capacity)
        rc = tun_iplimit_init(&srv->pkarr_limit, 256, cfg->pkarr_rate ? cfg->pkarr_rate : 10,
                              cfg->pkarr_burst ? cfg->pkarr_burst : 30);
    if (rc == 0 && cfg->pkarr_capacity) {
        srv->pkarr = calloc(1, sizeof(*srv->pkarr));
        rc = srv->pkarr ? tun_pkarr_store_init(srv->pkarr, cfg->pkarr_capacity) : TUN_ENOMEM;
        if (rc != 0) {
            free(srv->pkarr);
            srv->pkarr = NULL;
        }
    }
    if (rc != 0) {
        tun_iplimit_free(&srv->pkarr_limit);
        free(srv->tab);
        free(srv->allow);
        free(srv->tokens);
        free(srv->token_len);
        free(srv);
        return rc;
    }
    /* From here on, failures close handles: the memory goes through server_maybe_done. */
    uv_tcp_init(loop, &srv->tcp);
    srv->tcp.data = srv;
    uv_timer_init(loop, &srv->expire);
    srv->expire.data = srv;
    rc = uv_tcp_bind(&srv->tcp, cfg->listen, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->tcp, srv->backlog, on_conn);
    if (rc == 0 && cfg->stun_listen)
        rc = tun_stun_server_start(loop, cfg->stun_listen, &srv->stun);
    if (rc != 0) {
        tun_relay_server_close(srv, NULL, NULL);
        return rc;
    }
    if (srv->pkarr)
        uv_timer_start(&srv->expire, expire_cb, EXPIRE_MS, EXPIRE_MS);
    *out = srv;
    return 0;
}

void tun_relay_server_close(struct tun_relay_server *srv, void (*closed)(void *ud), void *ud)
{
    if (!srv || srv->closing)
        return;
    srv->closing = 1;
    srv->closed = closed;
    srv->closed_ud = ud;
    srv->pending += 2;
    uv_close((uv_handle_t *)&srv->tcp, handle_closed);
    uv_close((uv_handle_t *)&srv->expire, handle_closed);
    if (srv->stun) {
        srv->pending++;
        tun_stun_server_close(srv->stun, stun_closed, srv);
        srv->stun = NULL;
    }
    while (srv->conns) {
        struct conn *c = srv->conns;
        if (c->state == ST_WS && c->authed) {
            /* Tell clients when to come back instead of letting them hammer a restarting
             * relay with their fastest backoff. */
            int n = tun_relay_encode_restarting(srv->scratch + HDR_ROOM, TUN_RELAY_MAX_FRAME,
                                                RESTART_IN_MS, RESTART_FOR_MS);
            if (n > 0)
                (void)send_frame(c, (size_t)n, 0);
        }
        if (c->state == ST_WS)
            ws_close(c, TUN_WS_CLOSE_GOING_AWAY, "relay shutting down");
        else
            conn_close(c);
    }
}

void tun_relay_server_stats(const struct tun_relay_server *srv, struct tun_relay_server_stats *st)
{
    *st = srv->st;
}

int tun_relay_server_local_addr(const struct tun_relay_server *srv, struct sockaddr_storage *ss)
{
    int len = sizeof(*ss);
    return uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)ss, &len);
}

int tun_relay_server_stun_addr(const struct tun_relay_server *srv, struct sockaddr_storage *ss)
{
    if (!srv->stun)
        return TUN_EINVAL;
    return tun_stun_server_local_addr(srv->stun, ss);
}
