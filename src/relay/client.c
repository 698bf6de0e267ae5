/*
 * The relay client: relay frames, authentication, reconnection and stats on top of one
 * tun_wsclient per attempt (src/web/wsclient.h does the connection, the upgrade and the
 * WebSocket framing, and batches our sends per loop turn).
 */
#include "relay/client.h"

#include "relay/frame.h"
#include "util/error.h"
#include "util/log.h"
#include "web/ws.h"
#include "web/wsclient.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROTOCOL    "tunnel-relay-v1"
#define MAX_MESSAGE (TUN_RELAY_MAX_FRAME + 64)

struct tun_relay_client {
    uv_loop_t *loop;
    struct tun_relay_client_cfg cfg;
    char *url, *proxy, *cafile, *token;
    struct tun_relay_client_cbs cbs;
    void *ud;
    uint8_t pub[32];

    struct tun_wsclient *ws; /* this attempt's connection, or NULL while waiting */
    uv_timer_t timer;        /* backoff, the connect + auth deadline, pings */
    int state, closing;

    uint64_t last_ping, ping_sent_us;
    uint64_t last_rx_ms, last_tx_ms; /* any frame from the relay / a datagram sent (loop ms) */
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

/* ---- failure of one attempt ------------------------------------------------------------------ */

static void drop_connection(struct tun_relay_client *c)
{
    if (c->ws) {
        tun_wsclient_close(c->ws, 0, NULL); /* no callback from it after this */
        c->ws = NULL;
    }
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
    c->ping_sent_us = 0;
    c->st.stale = 0;
    c->st.failures++;
    c->failures_in_row = was_ready ? 0 : c->failures_in_row + 1;
    tun_log_debug(RELAY, "relay %s: %s", c->url, c->st.last_error);
    set_state(c, TUN_RELAY_CLIENT_WAITING, c->st.last_error);
    if (!c->closing)
        schedule(c);
}

static int send_frame(struct tun_relay_client *c, const uint8_t *frame, size_t len)
{
    return c->ws ? tun_wsclient_send(c->ws, TUN_WS_BINARY, frame, len) : TUN_EAGAIN;
}

/* ---- relay frames ---------------------------------------------------------------------------- */

static void on_frame(struct tun_relay_client *c, const uint8_t *buf, size_t len)
{
    struct tun_relay_frame f;
    c->last_rx_ms = now_ms(c);
    if (c->st.stale) {
        c->st.stale = 0;
        tun_log_info(RELAY, "relay %s answers again", c->url);
    }
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
            if (tun_wsclient_tls_export(c->ws, "EXPORTER-tunnel-relay-v1", binding,
                                        sizeof(binding)) != 0) {
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
        c->st.stale = 0;
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
        for (size_t i = 0; i < n && !c->closing && c->ws; i++) {
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

/* ---- the connection's callbacks ------------------------------------------------------------- */

static void ws_on_message(struct tun_wsclient *ws, int opcode, const uint8_t *data, size_t len,
                          void *ud)
{
    (void)ws;
    struct tun_relay_client *c = ud;
    if (opcode == TUN_WS_BINARY)
        on_frame(c, data, len);
}

/* The connection ended: say why in the relay's terms, then back off. */
static void ws_on_close(struct tun_wsclient *ws, int code, const char *reason, void *ud)
{
    struct tun_relay_client *c = ud;
    struct tun_wsclient_stats st;
    tun_wsclient_stats(ws, &st);
    switch (st.failure) {
    case TUN_WSCLIENT_FAIL_NONE:
        fail(c, "the relay closed the connection (%d %s)", code, reason);
        return;
    case TUN_WSCLIENT_FAIL_HTTP:
        fail(c, "the relay answered %d %s instead of upgrading (is %s a relay URL?)",
             st.http_status, st.http_reason, c->url);
        return;
    case TUN_WSCLIENT_FAIL_UPGRADE:
        fail(c, "bad WebSocket upgrade from the relay: %s", reason);
        return;
    case TUN_WSCLIENT_FAIL_PROTOCOL:
        fail(c, "WebSocket error from the relay: %s", reason);
        return;
    case TUN_WSCLIENT_FAIL_DEAD:
        fail(c, "no frame from the relay for %u ms", (unsigned)c->cfg.dead_ms);
        return;
    case TUN_WSCLIENT_FAIL_EOF:
        fail(c, "the relay closed the connection");
        return;
    case TUN_WSCLIENT_FAIL_IO:
        fail(c, "the connection to the relay failed: %s", reason);
        return;
    default: /* DNS, CONNECT, PROXY, TLS, TIMEOUT, INTERNAL */
        fail(c, "cannot reach the relay: %s", reason);
        return;
    }
}

static const struct tun_wsclient_cbs ws_cbs = {NULL, ws_on_message, ws_on_close};

/* ---- the schedule: attempts, deadlines, pings -------------------------------------------------
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
    /* READY; the connection itself watches dead_ms (and reconnects). A relay that dies without
     * closing would hold our traffic that long, so a ping that stays unanswered for stale_ms
     * marks it stale and the relay path carries the traffic through another relay meanwhile.
     * Pings go every ping_ms, and at once when the relay fell silent while we were sending. */
    if (c->ping_sent_us) {
        if (!c->st.stale && now - c->last_ping >= c->cfg.stale_ms) {
            c->st.stale = 1;
            tun_log_warn(RELAY,
                         "relay %s: no answer to a ping for %u ms; using another relay "
                         "while it is silent",
                         c->url, (unsigned)(now - c->last_ping));
        }
    } else if (now - c->last_ping >= c->cfg.ping_ms ||
               (c->last_tx_ms > c->last_rx_ms && now - c->last_rx_ms >= c->cfg.stale_ms &&
                now - c->last_ping >= c->cfg.stale_ms)) {
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
        /* Often enough to notice silence within stale_ms; cheap (one timer per relay). */
        delay = c->cfg.stale_ms / 4 ? c->cfg.stale_ms / 4 : 1;
    }
    uv_timer_start(&c->timer, timer_cb, delay, 0);
}

static void start_attempt(struct tun_relay_client *c)
{
    drop_connection(c);
    struct tun_wsclient_cfg wcfg = {
        .url = c->url,
        .proxy = c->proxy,
        .cafile = c->cafile,
        .protocol = PROTOCOL,
        .connect_ms = c->cfg.connect_ms,
        .handshake_ms = c->cfg.auth_ms,
        .dead_ms = c->cfg.dead_ms,
        .max_message = MAX_MESSAGE,
        .max_queued = c->cfg.max_queued,
    };
    set_state(c, TUN_RELAY_CLIENT_CONNECTING, NULL);
    int rc = tun_wsclient_new(c->loop, &wcfg, &ws_cbs, c, &c->ws);
    if (rc != 0) {
        c->ws = NULL;
        fail(c, "cannot start the connection: %s", tun_strerror(rc));
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

static void free_strings(struct tun_relay_client *c)
{
    free(c->url);
    free(c->proxy);
    free(c->cafile);
    if (c->token) {
        sodium_memzero(c->token, strlen(c->token));
        free(c->token);
    }
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
    if (hl == 0 || hl > 255 || (cfg->token && strlen(cfg->token) > TUN_RELAY_MAX_TOKEN) ||
        tun_wsclient_check_url(u, NULL) != 0)
        return TUN_EINVAL;
    if (cfg->proxy && strncmp(cfg->proxy, "socks5://", 9) != 0 &&
        strncmp(cfg->proxy, "socks5h://", 10) != 0)
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
    if (!c->cfg.stale_ms)
        c->cfg.stale_ms = 2000;
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
    c->proxy = dup_or_null(cfg->proxy);
    c->cafile = dup_or_null(cfg->cafile);
    c->token = dup_or_null(cfg->token);
    if (!c->url || (cfg->proxy && !c->proxy) || (cfg->cafile && !c->cafile) ||
        (cfg->token && !c->token) || !derive_pub(c->pub, cfg->secret)) {
        free_strings(c);
        sodium_memzero(c->cfg.secret, sizeof(c->cfg.secret));
        free(c);
        return TUN_ENOMEM;
    }
    snprintf(c->url, need, "%s%s", u, *path == '/' ? "" : "/relay");
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    start_attempt(c);
    *out = c;
    return 0;
}

int tun_relay_client_send(struct tun_relay_client *c, const uint8_t dst[32], const uint8_t *data,
                          size_t len)
{
    if (c->state != TUN_RELAY_CLIENT_READY || !c->ws)
        return TUN_EAGAIN;
    if (len == 0 || len > TUN_RELAY_MAX_DATAGRAM)
        return TUN_ETOOBIG;
    /* Straight into the connection's queue, which the QUIC layer's burst leaves in one send
     * at the end of this loop turn. */
    uint8_t *p = tun_wsclient_reserve(c->ws, TUN_RELAY_DATAGRAM_HEADER + len);
    if (!p)
        return TUN_EAGAIN;
    tun_relay_datagram_header(p, TUN_RELAY_SEND, dst);
    memcpy(p + TUN_RELAY_DATAGRAM_HEADER, data, len);
    tun_wsclient_commit(c->ws, TUN_RELAY_DATAGRAM_HEADER + len);
    c->last_tx_ms = now_ms(c);
    c->st.tx_datagrams++;
    c->st.tx_bytes += len;
    return 0;
}

int tun_relay_client_state(const struct tun_relay_client *c)
{
    return c->state;
}

int tun_relay_client_stale(const struct tun_relay_client *c)
{
    return c->state == TUN_RELAY_CLIENT_READY && c->st.stale;
}

void tun_relay_client_stats(const struct tun_relay_client *c, struct tun_relay_client_stats *st)
{
    *st = c->st;
    st->state = c->state;
}

static void timer_closed(uv_handle_t *h)
{
    free(h->data);
}

void tun_relay_client_close(struct tun_relay_client *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    drop_connection(c);
    free_strings(c);
    c->url = c->proxy = c->cafile = c->token = NULL;
    sodium_memzero(c->cfg.secret, sizeof(c->cfg.secret));
    uv_close((uv_handle_t *)&c->timer, timer_closed);
}
