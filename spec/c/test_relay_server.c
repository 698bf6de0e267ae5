/*
 * relay/server: servers on a loop in the main thread (plain, TLS, with access control, rate
 * limited, short timers), clients in a test thread speaking raw HTTP/WebSocket with our own
 * codecs: authentication and its failures, forwarding both ways and batches, PEER_GONE for
 * absent and leaving peers, duplicate keys, rate limiting, a slow reader, /ping, /metrics, the
 * pkarr store, malformed HTTP and WebSocket input, the auth timeout and the dead-client close.
 */
#include "test.h"
#include "test_cert.h"
#include "discovery/pkarr.h"
#include "relay/frame.h"
#include "relay/server.h"
#include "util/error.h"
#include "web/http.h"
#include "web/stream.h"
#include "web/ws.h"

#include <arpa/inet.h>
#include <gnutls/x509.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static struct test_cert tc;

/* ---- servers ----------------------------------------------------------------------------------
 */

enum { S_PLAIN, S_TLS, S_ACL, S_RATE, S_SHORT, S_COUNT };
static int ports[S_COUNT];
static struct tun_relay_server *servers[S_COUNT];
static int closed_count;
static uv_async_t done_async;

static void on_closed(void *ud)
{
    (void)ud;
    closed_count++;
}

static void on_done(uv_async_t *a)
{
    for (int i = 0; i < S_COUNT; i++)
        tun_relay_server_close(servers[i], on_closed, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

/* ---- a blocking client -------------------------------------------------------------------- */

struct wc {
    int fd;
    gnutls_session_t t;
    gnutls_certificate_credentials_t cc;
    uint8_t buf[256 * 1024];
    size_t len;
    struct tun_ws_reader rd;
    int close_code; /* the server's close code once read */
    uint8_t seed[32], pk[32];
};

static int tcp_connect(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static struct wc *wc_open(int port, int tls, int rcvbuf)
{
    struct wc *c = calloc(1, sizeof(*c));
    c->fd = tcp_connect(port, rcvbuf);
    CHECK(c->fd >= 0);
    if (tls) {
        gnutls_certificate_allocate_credentials(&c->cc);
        gnutls_certificate_set_x509_trust_file(c->cc, tc.cert, GNUTLS_X509_FMT_PEM);
        gnutls_init(&c->t, GNUTLS_CLIENT);
        gnutls_set_default_priority(c->t);
        gnutls_credentials_set(c->t, GNUTLS_CRD_CERTIFICATE, c->cc);
        gnutls_server_name_set(c->t, GNUTLS_NAME_DNS, "localhost", 9);
        gnutls_session_set_verify_cert(c->t, "localhost", 0);
        gnutls_transport_set_int(c->t, c->fd);
        int rc;
        do
            rc = gnutls_handshake(c->t);
        while (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED);
        CHECK_INT_EQ(rc, 0);
    }
    tun_ws_reader_init(&c->rd, TUN_WS_CLIENT, TUN_RELAY_MAX_FRAME, NULL, 0);
    return c;
}

static void wc_free(struct wc *c)
{
    if (c->t) {
        gnutls_bye(c->t, GNUTLS_SHUT_WR);
        gnutls_deinit(c->t);
        gnutls_certificate_free_credentials(c->cc);
    }
    close(c->fd);
    free(c);
}

static int wc_send(struct wc *c, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t w = c->t ? gnutls_record_send(c->t, p, n) : send(c->fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read more bytes into buf: the count, 0 at the end, <0 on error or timeout. */
static ssize_t wc_fill(struct wc *c)
{
    if (c->len == sizeof(c->buf))
        return -1;
    ssize_t r = c->t ? gnutls_record_recv(c->t, c->buf + c->len, sizeof(c->buf) - c->len)
                     : recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
    if (r > 0)
        c->len += (size_t)r;
    return r;
}

/* An HTTP exchange on a fresh connection: the status, with the body in body[] (NUL-ended). */
static int http_req(int port, int tls, const char *req, size_t req_len, char *body, size_t cap)
{
    struct wc *c = wc_open(port, tls, 0);
    CHECK_INT_EQ(wc_send(c, req, req_len), 0);
    while (wc_fill(c) > 0)
        ;
    int status = -1;
    struct tun_http_parser *p = malloc(sizeof(*p));
    tun_http_parser_init(p, TUN_HTTP_RESPONSE);
    size_t used = 0;
    if (tun_http_parse(p, c->buf, c->len, &used) == 1) {
        status = p->head.status;
        size_t n = c->len - used < cap - 1 ? c->len - used : cap - 1;
        if (body) {
            memcpy(body, c->buf + used, n);
            body[n] = 0;
        }
        if (p->head.has_content_length)
            CHECK_INT_EQ(p->head.content_length, c->len - used);
        CHECK(tun_http_has_token(&p->head, "Connection", "close"));
    }
    free(p);
    wc_free(c);
    return status;
}

static int http_get(int port, const char *path, char *body, size_t cap)
{
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path);
    return http_req(port, 0, req, (size_t)n, body, cap);
}

static uint64_t metric(int port, const char *name)
{
    static char body[16384];
    CHECK_INT_EQ(http_get(port, "/metrics", body, sizeof(body)), 200);
    char pat[128];
    snprintf(pat, sizeof(pat), "\n%s ", name);
    const char *p = strstr(body, pat);
    CHECK(p != NULL);
    return p ? strtoull(p + strlen(pat), NULL, 10) : (uint64_t)-1;
}

/* WebSocket upgrade; the status of the answer (101 on success). */
static int wc_upgrade(struct wc *c, const char *protocols)
{
    char key[TUN_WS_KEY_LEN + 1];
    CHECK_INT_EQ(tun_ws_new_key(key), 0);
    uint8_t req[1024];
    struct tun_http_writer w;
    tun_ws_begin_request(&w, req, sizeof(req), "localhost", "/relay", key, protocols);
    int n = tun_http_end(&w);
    CHECK(n > 0);
    CHECK_INT_EQ(wc_send(c, req, (size_t)n), 0);
    struct tun_http_parser *p = malloc(sizeof(*p));
    tun_http_parser_init(p, TUN_HTTP_RESPONSE);
    int status = -1;
    for (;;) {
        size_t used = 0;
        int rc = tun_http_parse(p, c->buf, c->len, &used);
        if (rc == 1) {
            status = p->head.status;
            if (status == 101) {
                const char *offered[] = {TUN_RELAY_WS_PROTOCOL};
                int sel = -2;
                CHECK_INT_EQ(tun_ws_check_response(&p->head, key, offered, 1, &sel, NULL), 0);
                CHECK_INT_EQ(sel, protocols ? 0 : -1);
            }
            memmove(c->buf, c->buf + used, c->len - used);
            c->len -= used;
            break;
        }
        if (rc < 0 || wc_fill(c) <= 0)
            break;
        if (rc == 0) {
            /* the parser copied what it consumed */
            memmove(c->buf, c->buf + used, c->len - used);
            c->len -= used;
        }
    }
    free(p);
    return status;
}

/* The next binary message into out: its length, or -1 (the close code, if any, is kept). */
static int wc_msg(struct wc *c, uint8_t *out, size_t cap)
{
    for (;;) {
        struct tun_ws_event ev;
        int n = tun_ws_read(&c->rd, c->buf, c->len, &ev);
        if (n < 0)
            return -1;
        if (n == 0) {
            if (wc_fill(c) <= 0)
                return -1;
            continue;
        }
        int ret = -2;
        if (ev.type == TUN_WS_EV_MESSAGE && ev.len <= cap) {
            memcpy(out, ev.data, ev.len);
            ret = (int)ev.len;
        } else if (ev.type == TUN_WS_EV_CLOSE) {
            c->close_code = ev.close_code;
            ret = -1;
        }
        memmove(c->buf, c->buf + n, c->len - (size_t)n);
        c->len -= (size_t)n;
        if (ret != -2)
            return ret;
    }
}

/* The next relay frame that is not a PING; its decoded form points into out. */
static int wc_frame(struct wc *c, uint8_t *out, size_t cap, struct tun_relay_frame *f)
{
    for (;;) {
        int n = wc_msg(c, out, cap);
        if (n < 0)
            return -1;
        if (tun_relay_decode(out, (size_t)n, TUN_RELAY_FROM_RELAY, f) != 0)
            return -1;
        if (f->type != TUN_RELAY_PING)
            return f->type;
    }
}

static int wc_send_msg(struct wc *c, int opcode, const uint8_t *frame, size_t len)
{
    static uint8_t out[TUN_WS_MAX_HEADER + TUN_RELAY_MAX_FRAME];
    uint8_t mask[4];
    CHECK_INT_EQ(tun_ws_new_mask(mask), 0);
    int n = tun_ws_frame_write(out, sizeof(out), 1, opcode, frame, len, mask);
    CHECK(n > 0);
    return wc_send(c, out, (size_t)n);
}

static uint8_t fbuf[TUN_RELAY_MAX_FRAME];

static int wc_send_datagram(struct wc *c, const uint8_t *dst, const uint8_t *data, size_t len)
{
    int n = tun_relay_encode_datagram(fbuf, sizeof(fbuf), TUN_RELAY_SEND, dst, data, len);
    CHECK(n > 0);
    return wc_send_msg(c, TUN_WS_BINARY, fbuf, (size_t)n);
}

/* Open, upgrade and authenticate with the key of seed byte `s`; `sig_ok` 0 corrupts the
 * signature. Returns the first frame type after CLIENT_AUTH (AUTH_OK or AUTH_DENIED), with
 * the denial code in *code. */
static int wc_login(struct wc *c, uint8_t s, const char *token, int sig_ok, int *code)
{
    memset(c->seed, s, sizeof(c->seed));
    uint8_t sk[64];
    CHECK_INT_EQ(crypto_sign_seed_keypair(c->pk, sk, c->seed), 0);
    CHECK_INT_EQ(wc_upgrade(c, TUN_RELAY_WS_PROTOCOL), 101);
    static uint8_t in[TUN_RELAY_MAX_FRAME];

    struct tun_relay_frame f;
    if (wc_frame(c, in, sizeof(in), &f) != TUN_RELAY_SERVER_CHALLENGE)
        return -1;
    CHECK_INT_EQ(f.info.version, 1);
    CHECK_INT_EQ(f.info.max_datagram, TUN_RELAY_MAX_DATAGRAM);
    uint8_t sig[64];
    CHECK_INT_EQ(tun_relay_challenge_sign(sig, c->seed, f.challenge, NULL, 0), 0);
    if (!sig_ok)
        sig[5] ^= 1;
    uint8_t out[512];
    int n = tun_relay_encode_auth(out, sizeof(out), c->pk, sig, (const uint8_t *)token,
                                  token ? strlen(token) : 0);
    CHECK(n > 0);
    CHECK_INT_EQ(wc_send_msg(c, TUN_WS_BINARY, out, (size_t)n), 0);
    int t = wc_frame(c, in, sizeof(in), &f);
    if (code)
        *code = t == TUN_RELAY_AUTH_DENIED ? f.code : 0;
    return t;
}

static struct wc *client(int srv, uint8_t s)
{
    struct wc *c = wc_open(ports[srv], srv == S_TLS, 0);
    CHECK_INT_EQ(wc_login(c, s, NULL, 1, NULL), TUN_RELAY_AUTH_OK);
    return c;
}

/* ---- scenarios ------------------------------------------------------------------------------ */

static uint8_t in[TUN_RELAY_MAX_FRAME];

/* A relay PING and its PONG: the server has processed everything c sent before. */
static void sync_client(struct wc *c)
{
    uint8_t pd[8] = {7, 7, 7, 7, 7, 7, 7, 7};
    int n = tun_relay_encode_ping(fbuf, sizeof(fbuf), TUN_RELAY_PING, pd);
    CHECK_INT_EQ(wc_send_msg(c, TUN_WS_BINARY, fbuf, (size_t)n), 0);
    struct tun_relay_frame f;
    CHECK_INT_EQ(wc_frame(c, in, sizeof(in), &f), TUN_RELAY_PONG);
}

static void exchange(int srv)
{
    struct wc *a = client(srv, 1), *b = client(srv, 2);
    struct tun_relay_frame f;
    static uint8_t data[TUN_RELAY_MAX_DATAGRAM];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 13 + 7);
    /* a -> b, b -> a, sizes 1 .. max */
    size_t sizes[] = {1, 100, 1200, TUN_RELAY_MAX_DATAGRAM};
    for (size_t i = 0; i < 4; i++) {
        CHECK_INT_EQ(wc_send_datagram(a, b->pk, data, sizes[i]), 0);
        CHECK_INT_EQ(wc_frame(b, in, sizeof(in), &f), TUN_RELAY_RECV);
        CHECK_MEM_EQ(f.key, a->pk, 32);
        CHECK_INT_EQ(f.len, sizes[i]);
        CHECK(f.len == sizes[i] && memcmp(f.data, data, f.len) == 0);
        CHECK_INT_EQ(wc_send_datagram(b, a->pk, data + 1, sizes[i] - 1 ? sizes[i] - 1 : 1), 0);
        CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_RECV);
        CHECK_MEM_EQ(f.key, b->pk, 32);
    }
    /* a batch of 3 datagrams of 1000 and one of 500 */
    int n =
        tun_relay_encode_batch(fbuf, sizeof(fbuf), TUN_RELAY_SEND_BATCH, b->pk, 1000, data, 3500);
    CHECK(n > 0);
    CHECK_INT_EQ(wc_send_msg(a, TUN_WS_BINARY, fbuf, (size_t)n), 0);
    CHECK_INT_EQ(wc_frame(b, in, sizeof(in), &f), TUN_RELAY_RECV_BATCH);
    CHECK_MEM_EQ(f.key, a->pk, 32);
    CHECK_INT_EQ(f.segment, 1000);
    CHECK_INT_EQ(tun_relay_batch_count(&f), 4);
    CHECK(f.len == 3500 && memcmp(f.data, data, 3500) == 0);
    /* a SEND in two WebSocket fragments */
    n = tun_relay_encode_datagram(fbuf, sizeof(fbuf), TUN_RELAY_SEND, b->pk, data, 5000);
    CHECK(n > 0);
    {
        static uint8_t out[2 * TUN_WS_MAX_HEADER + TUN_RELAY_MAX_FRAME];
        uint8_t mask[4] = {1, 2, 3, 4};
        int n1 = tun_ws_frame_write(out, sizeof(out), 0, TUN_WS_BINARY, fbuf, 100, mask);
        int n2 = tun_ws_frame_write(out + n1, sizeof(out) - (size_t)n1, 1, TUN_WS_CONT, fbuf + 100,
                                    (size_t)n - 100, mask);
        CHECK(n1 > 0 && n2 > 0);
        CHECK_INT_EQ(wc_send(a, out, (size_t)(n1 + n2)), 0);
    }
    CHECK_INT_EQ(wc_frame(b, in, sizeof(in), &f), TUN_RELAY_RECV);
    CHECK(f.len == 5000 && memcmp(f.data, data, 5000) == 0);
    /* relay-level ping */
    uint8_t pd[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    n = tun_relay_encode_ping(fbuf, sizeof(fbuf), TUN_RELAY_PING, pd);
    CHECK_INT_EQ(wc_send_msg(a, TUN_WS_BINARY, fbuf, (size_t)n), 0);
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_PONG);
    CHECK_MEM_EQ(f.data, pd, 8);
    /* WebSocket-level ping */
    CHECK_INT_EQ(wc_send_msg(a, TUN_WS_PING, pd, 8), 0);
    /* a normal close: the server answers with a close frame */
    CHECK_INT_EQ(wc_send_msg(b, TUN_WS_CLOSE, (const uint8_t *)"\x03\xe8", 2), 0);
    CHECK_INT_EQ(wc_msg(b, in, sizeof(in)), -1);
    CHECK_INT_EQ(b->close_code, 1000);
    /* b left: a sent to it recently, so a hears PEER_GONE(disconnected) */
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_PEER_GONE);
    CHECK_MEM_EQ(f.key, b->pk, 32);
    CHECK_INT_EQ(f.code, TUN_RELAY_GONE_DISCONNECTED);
    wc_free(b);
    wc_free(a);
}

static void peer_gone_and_unauthenticated(void)
{
    struct wc *a = client(S_PLAIN, 3);
    /* c upgrades but does not authenticate: it is not reachable, and gets nothing */
    struct wc *c = wc_open(ports[S_PLAIN], 0, 0);
    CHECK_INT_EQ(wc_upgrade(c, TUN_RELAY_WS_PROTOCOL), 101);
    struct tun_relay_frame f;
    CHECK_INT_EQ(wc_frame(c, in, sizeof(in), &f), TUN_RELAY_SERVER_CHALLENGE);
    uint8_t cpk[32], sk[64], seed[32];
    memset(seed, 4, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(cpk, sk, seed), 0);
    uint8_t absent[32];
    memset(absent, 0x55, 32);
    CHECK_INT_EQ(wc_send_datagram(a, cpk, (const uint8_t *)"x", 1), 0);
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_PEER_GONE);
    CHECK_MEM_EQ(f.key, cpk, 32);
    CHECK_INT_EQ(f.code, TUN_RELAY_GONE_UNKNOWN);
    /* more sends to an absent key within a second: one PEER_GONE (then a PONG proves the
     * order: nothing else arrived before it) */
    for (int i = 0; i < 5; i++)
        CHECK_INT_EQ(wc_send_datagram(a, absent, (const uint8_t *)"y", 1), 0);
    uint8_t pd[8] = {9, 9, 9, 9, 9, 9, 9, 9};
    int n = tun_relay_encode_ping(fbuf, sizeof(fbuf), TUN_RELAY_PING, pd);
    CHECK_INT_EQ(wc_send_msg(a, TUN_WS_BINARY, fbuf, (size_t)n), 0);
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_PEER_GONE);
    CHECK_MEM_EQ(f.key, absent, 32);
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_PONG);
    /* c then sends a datagram before authenticating: protocol error 1002, and the only
     * frame it ever saw was the challenge */
    CHECK_INT_EQ(wc_send_datagram(c, a->pk, (const uint8_t *)"z", 1), 0);
    CHECK_INT_EQ(wc_msg(c, in, sizeof(in)), -1);
    CHECK_INT_EQ(c->close_code, TUN_WS_CLOSE_PROTOCOL_ERROR);
    wc_free(c);
    wc_free(a);
}

static void auth_failures(void)
{
    int code = 0;
    /* wrong signature (plain server, no ACL) */
    struct wc *c = wc_open(ports[S_PLAIN], 0, 0);
    CHECK_INT_EQ(wc_login(c, 5, NULL, 0, &code), TUN_RELAY_AUTH_DENIED);
    CHECK_INT_EQ(code, TUN_RELAY_DENY_SIGNATURE);
    CHECK_INT_EQ(wc_msg(c, in, sizeof(in)), -1);
    CHECK_INT_EQ(c->close_code, TUN_WS_CLOSE_POLICY);
    wc_free(c);
    /* ACL server: key 0x21 and token "secret" allowed */
    c = wc_open(ports[S_ACL], 0, 0);
    CHECK_INT_EQ(wc_login(c, 0x21, "secret", 1, &code), TUN_RELAY_AUTH_OK);
    struct wc *d = wc_open(ports[S_ACL], 0, 0);
    CHECK_INT_EQ(wc_login(d, 0x21, "wrong", 1, &code), TUN_RELAY_AUTH_DENIED);
    CHECK_INT_EQ(code, TUN_RELAY_DENY_TOKEN);
    wc_free(d);
    d = wc_open(ports[S_ACL], 0, 0);
    CHECK_INT_EQ(wc_login(d, 0x21, NULL, 1, &code), TUN_RELAY_AUTH_DENIED);
    CHECK_INT_EQ(code, TUN_RELAY_DENY_TOKEN);
    wc_free(d);
    d = wc_open(ports[S_ACL], 0, 0);
    CHECK_INT_EQ(wc_login(d, 0x22, "secret", 1, &code), TUN_RELAY_AUTH_DENIED);
    CHECK_INT_EQ(code, TUN_RELAY_DENY_KEY);
    wc_free(d);
    /* the denied ones never got the datagram sent to their key */
    uint8_t pk22[32], sk[64], seed[32];
    memset(seed, 0x22, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(pk22, sk, seed), 0);
    CHECK_INT_EQ(wc_send_datagram(c, pk22, (const uint8_t *)"x", 1), 0);
    struct tun_relay_frame f;
    CHECK_INT_EQ(wc_frame(c, in, sizeof(in), &f), TUN_RELAY_PEER_GONE);
    wc_free(c);
    CHECK_INT_EQ(metric(ports[S_ACL], "tunnel_relay_auth_failures_total"), 3);
    CHECK_INT_EQ(metric(ports[S_ACL], "tunnel_relay_auth_ok_total"), 1);
}

static void duplicate_key(void)
{
    struct wc *a = client(S_PLAIN, 6), *s = client(S_PLAIN, 7);
    /* s sent to a: it must hear when the (new) a leaves */
    CHECK_INT_EQ(wc_send_datagram(s, a->pk, (const uint8_t *)"hi", 2), 0);
    struct tun_relay_frame f;
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_RECV);
    struct wc *a2 = client(S_PLAIN, 6);
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_HEALTH);
    CHECK_INT_EQ(f.code, TUN_RELAY_DUPLICATE);
    CHECK_INT_EQ(wc_msg(a, in, sizeof(in)), -1);
    CHECK_INT_EQ(a->close_code, TUN_WS_CLOSE_POLICY);
    wc_free(a);
    /* the new connection gets the datagrams; nobody heard PEER_GONE for the old one */
    CHECK_INT_EQ(wc_send_datagram(s, a2->pk, (const uint8_t *)"again", 5), 0);
    CHECK_INT_EQ(wc_frame(a2, in, sizeof(in), &f), TUN_RELAY_RECV);
    CHECK(f.len == 5 && memcmp(f.data, "again", 5) == 0);
    uint8_t pk[32];
    memcpy(pk, a2->pk, 32);
    wc_free(a2);
    CHECK_INT_EQ(wc_frame(s, in, sizeof(in), &f), TUN_RELAY_PEER_GONE);
    CHECK_MEM_EQ(f.key, pk, 32);
    CHECK_INT_EQ(f.code, TUN_RELAY_GONE_DISCONNECTED);
    wc_free(s);
}

static void rate_limit(void)
{
    /* S_RATE: 100000 B/s, burst 65535 */
    struct wc *a = client(S_RATE, 8), *b = client(S_RATE, 9);
    static uint8_t data[60000];
    memset(data, 0xab, sizeof(data));
    for (int i = 0; i < 10; i++)
        CHECK_INT_EQ(wc_send_datagram(a, b->pk, data, sizeof(data)), 0);
    struct tun_relay_frame f;
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_HEALTH);
    CHECK_INT_EQ(f.code, TUN_RELAY_RATE_LIMITED);
    /* small datagrams until one passes: HEALTH 0 comes back (exactly once) */
    int healthy = 0;
    for (int i = 0; i < 200 && !healthy; i++) {
        CHECK_INT_EQ(wc_send_datagram(a, b->pk, data, 10), 0);
        struct pollfd p = {a->fd, POLLIN, 0};
        if (a->len || poll(&p, 1, 50) > 0) {
            CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_HEALTH);
            CHECK_INT_EQ(f.code, TUN_RELAY_HEALTHY);
            healthy = 1;
        }
    }
    CHECK(healthy);
    sync_client(a);
    uint64_t dropped = metric(ports[S_RATE], "tunnel_relay_dropped_rate_limited_total");
    uint64_t fwd = metric(ports[S_RATE], "tunnel_relay_datagrams_forwarded_total");
    CHECK(dropped >= 1);
    /* b received exactly what was forwarded */
    uint64_t got = 0;
    while (got < fwd && wc_frame(b, in, sizeof(in), &f) == TUN_RELAY_RECV)
        got++;
    CHECK_INT_EQ(got, fwd);
    wc_free(a);
    wc_free(b);
}

static void slow_reader(void)
{
    struct wc *a = client(S_PLAIN, 10);
    struct wc *b = wc_open(ports[S_PLAIN], 0, 4096);
    CHECK_INT_EQ(wc_login(b, 11, NULL, 1, NULL), TUN_RELAY_AUTH_OK);
    static uint8_t data[60000];
    memset(data, 0x5a, sizeof(data));
    uint64_t fwd0 = metric(ports[S_PLAIN], "tunnel_relay_datagrams_forwarded_total");
    uint64_t drop0 = metric(ports[S_PLAIN], "tunnel_relay_dropped_queue_full_total");
    const int total = 300; /* 18 MB: far more than the write limit, queue and socket buffers */
    for (int i = 0; i < total; i++)
        CHECK_INT_EQ(wc_send_datagram(a, b->pk, data, sizeof(data)), 0);
    sync_client(a);
    /* the server still answers others while b does not read */
    char body[64];
    CHECK_INT_EQ(http_get(ports[S_PLAIN], "/ping", body, sizeof(body)), 200);
    struct wc *c = client(S_PLAIN, 12);
    CHECK_INT_EQ(wc_send_datagram(c, a->pk, (const uint8_t *)"ok", 2), 0);
    struct tun_relay_frame f;
    CHECK_INT_EQ(wc_frame(a, in, sizeof(in), &f), TUN_RELAY_RECV);
    CHECK(f.len == 2 && memcmp(f.data, "ok", 2) == 0);
    uint64_t fwd = metric(ports[S_PLAIN], "tunnel_relay_datagrams_forwarded_total") - fwd0;
    uint64_t drop = metric(ports[S_PLAIN], "tunnel_relay_dropped_queue_full_total") - drop0;
    CHECK(drop > 0);
    CHECK_INT_EQ(fwd + drop, total + 1);
    /* b reads everything that was forwarded to it, and HEALTH 3: sent (once per episode of
     * drops) when its queue has drained, so at least once, after the drops began */
    uint64_t got = 0, health3 = 0;
    while (got < fwd - 1 || !health3) {
        int t = wc_frame(b, in, sizeof(in), &f);
        if (t == TUN_RELAY_RECV) {
            got++;
        } else if (t == TUN_RELAY_HEALTH) {
            CHECK_INT_EQ(f.code, TUN_RELAY_QUEUE_FULL);
            health3++;
        } else {
            CHECK(0);
            break;
        }
    }
    CHECK_INT_EQ(got, fwd - 1);
    CHECK(health3 >= 1);
    wc_free(b);
    wc_free(c);
    wc_free(a);
}

static void http_routes(void)
{
    char body[16384];
    int p = ports[S_PLAIN];
    CHECK_INT_EQ(http_get(p, "/ping", body, sizeof(body)), 200);
    CHECK_STR_EQ(body, "pong\n");
    CHECK_INT_EQ(http_get(p, "/nope", body, sizeof(body)), 404);
    const char bad[] = "GARBAGE\r\n\r\n";
    CHECK_INT_EQ(http_req(p, 0, bad, sizeof(bad) - 1, body, sizeof(body)), 400);
    const char te[] = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK_INT_EQ(http_req(p, 0, te, sizeof(te) - 1, body, sizeof(body)), 501);
    const char post[] = "POST /ping HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
    CHECK_INT_EQ(http_req(p, 0, post, sizeof(post) - 1, body, sizeof(body)), 405);
    const char noup[] = "GET /relay HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK_INT_EQ(http_req(p, 0, noup, sizeof(noup) - 1, body, sizeof(body)), 400);
    /* over TLS too */
    const char tping[] = "GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n";
    CHECK_INT_EQ(http_req(ports[S_TLS], 1, tping, sizeof(tping) - 1, body, sizeof(body)), 200);
    /* a wrong subprotocol is refused, none is accepted */
    struct wc *c = wc_open(p, 0, 0);
    CHECK_INT_EQ(wc_upgrade(c, "iroh-relay-v2"), 400);
    wc_free(c);
    c = wc_open(p, 0, 0);
    CHECK_INT_EQ(wc_upgrade(c, NULL), 101);
    wc_free(c);
    /* garbage after the upgrade: close 1002 */
    c = wc_open(p, 0, 0);
    CHECK_INT_EQ(wc_upgrade(c, TUN_RELAY_WS_PROTOCOL), 101);
    struct tun_relay_frame f;
    CHECK_INT_EQ(wc_frame(c, in, sizeof(in), &f), TUN_RELAY_SERVER_CHALLENGE);
    CHECK_INT_EQ(wc_send(c, "\xff\xff\xff\xff garbage", 12), 0);
    CHECK_INT_EQ(wc_msg(c, in, sizeof(in)), -1);
    CHECK_INT_EQ(c->close_code, TUN_WS_CLOSE_PROTOCOL_ERROR);
    wc_free(c);
    /* an unknown relay frame type after auth: 1002 */
    c = client(S_PLAIN, 13);
    CHECK_INT_EQ(wc_send_msg(c, TUN_WS_BINARY, (const uint8_t *)"\x7f\x00", 2), 0);
    CHECK_INT_EQ(wc_msg(c, in, sizeof(in)), -1);
    CHECK_INT_EQ(c->close_code, TUN_WS_CLOSE_PROTOCOL_ERROR);
    wc_free(c);
    /* a text message: 1003 */
    c = client(S_PLAIN, 14);
    CHECK_INT_EQ(wc_send_msg(c, TUN_WS_TEXT, (const uint8_t *)"hello", 5), 0);
    CHECK_INT_EQ(wc_msg(c, in, sizeof(in)), -1);
    CHECK_INT_EQ(c->close_code, TUN_WS_CLOSE_UNSUPPORTED);
    wc_free(c);
    /* metrics: HELP and TYPE lines */
    CHECK_INT_EQ(http_get(p, "/metrics", body, sizeof(body)), 200);
    CHECK(strstr(body, "# HELP tunnel_relay_clients ") != NULL);
    CHECK(strstr(body, "# TYPE tunnel_relay_clients gauge\n") != NULL);
    CHECK(strstr(body, "# TYPE tunnel_relay_datagrams_forwarded_total counter\n") != NULL);
}

static int pkarr_put(int port, const char *z32, const uint8_t *body, size_t len, size_t claim)
{
    static char req[4096];
    int n = snprintf(req, sizeof(req),
                     "PUT /pkarr/%s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %zu\r\n\r\n",
                     z32, claim);
    memcpy(req + n, body, len);
    return http_req(port, 0, req, (size_t)n + len, NULL, 0);
}

static void pkarr(void)
{
    int p = ports[S_PLAIN];
    static struct tun_pkarr_record r;
    memset(&r, 0, sizeof(r));
    r.ttl = 30;
    r.n_relays = 1;
    strcpy(r.relays[0], "https://relay.example.org/");
    uint8_t seed[32], pk[32], sk[64];
    memset(seed, 0x31, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(pk, sk, seed), 0);
    char z32[TUN_PKARR_Z32_LEN + 1];
    tun_pkarr_key_format(z32, pk);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t now = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
    uint8_t pkt[TUN_PKARR_MAX_PACKET], old[TUN_PKARR_MAX_PACKET];
    int n = tun_pkarr_publish(pkt, sizeof(pkt), seed, now, &r);
    int no = tun_pkarr_publish(old, sizeof(old), seed, now - 1000000, &r);
    CHECK(n > 0 && no > 0);
    char path[80];
    snprintf(path, sizeof(path), "/pkarr/%s", z32);
    static char body[2048];
    CHECK_INT_EQ(http_get(p, path, body, sizeof(body)), 404);
    CHECK_INT_EQ(pkarr_put(p, z32, pkt + 32, (size_t)n - 32, (size_t)n - 32), 204);
    CHECK_INT_EQ(pkarr_put(p, z32, pkt + 32, (size_t)n - 32, (size_t)n - 32), 204);
    /* GET returns the same payload (read raw to compare bytes and headers) */
    {
        struct wc *c = wc_open(p, 0, 0);
        char req[256];
        int rn = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path);
        CHECK_INT_EQ(wc_send(c, req, (size_t)rn), 0);
        while (wc_fill(c) > 0)
            ;
        struct tun_http_parser *hp = malloc(sizeof(*hp));
        tun_http_parser_init(hp, TUN_HTTP_RESPONSE);
        size_t used = 0;
        CHECK_INT_EQ(tun_http_parse(hp, c->buf, c->len, &used), 1);
        CHECK_INT_EQ(hp->head.status, 200);
        const struct tun_http_header *cc = tun_http_find(&hp->head, "Cache-Control");
        CHECK(cc && strcmp(cc->value, "public, max-age=30") == 0);
        const struct tun_http_header *lm = tun_http_find(&hp->head, "Last-Modified");
        CHECK(lm != NULL);
        if (lm) {
            /* a conditional GET with that date: 304 */
            char creq[256];
            int cn = snprintf(creq, sizeof(creq),
                              "GET %s HTTP/1.1\r\nHost: localhost\r\nIf-Modified-Since: %s\r\n\r\n",
                              path, lm->value);
            CHECK_INT_EQ(http_req(p, 0, creq, (size_t)cn, NULL, 0), 304);
            cn = snprintf(creq, sizeof(creq),
                          "GET %s HTTP/1.1\r\nHost: localhost\r\nIf-Modified-Since: Thu, 01 Jan "
                          "1970 00:00:00 GMT\r\n\r\n",
                          path);
            CHECK_INT_EQ(http_req(p, 0, creq, (size_t)cn, NULL, 0), 200);
        }
        CHECK_INT_EQ(c->len - used, (size_t)n - 32);
        CHECK(c->len - used == (size_t)n - 32 && memcmp(c->buf + used, pkt + 32, n - 32) == 0);
        free(hp);
        wc_free(c);
    }
    /* older timestamp: 409; bad signature: 400; too large: 413; bad key: 400 */
    CHECK_INT_EQ(pkarr_put(p, z32, old + 32, (size_t)no - 32, (size_t)no - 32), 409);
    pkt[40] ^= 1;
    CHECK_INT_EQ(pkarr_put(p, z32, pkt + 32, (size_t)n - 32, (size_t)n - 32), 400);
    static uint8_t big[2000];
    CHECK_INT_EQ(pkarr_put(p, z32, big, 0, sizeof(big)), 413);
    CHECK_INT_EQ(pkarr_put(p, "notakey", pkt + 32, (size_t)n - 32, (size_t)n - 32), 400);
    /* unknown key */
    memset(seed, 0x32, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(pk, sk, seed), 0);
    tun_pkarr_key_format(z32, pk);
    snprintf(path, sizeof(path), "/pkarr/%s", z32);
    CHECK_INT_EQ(http_get(p, path, body, sizeof(body)), 404);
    CHECK_INT_EQ(metric(p, "tunnel_relay_pkarr_puts_total"), 2);
    CHECK_INT_EQ(metric(p, "tunnel_relay_pkarr_conflicts_total"), 1);
    CHECK_INT_EQ(metric(p, "tunnel_relay_pkarr_gets_total"), 2);
    CHECK_INT_EQ(metric(p, "tunnel_relay_pkarr_misses_total"), 2);
    /* /pkarr is disabled on a server without a store */
    CHECK_INT_EQ(http_get(ports[S_ACL], path, body, sizeof(body)), 404);
}

static void timers(void)
{
    /* S_SHORT: auth 1 s, ping 100 ms, dead 400 ms */
    struct wc *c = wc_open(ports[S_SHORT], 0, 0);
    CHECK_INT_EQ(wc_upgrade(c, TUN_RELAY_WS_PROTOCOL), 101);
    struct tun_relay_frame f;
    CHECK_INT_EQ(wc_frame(c, in, sizeof(in), &f), TUN_RELAY_SERVER_CHALLENGE);
    CHECK_INT_EQ(wc_msg(c, in, sizeof(in)), -1);
    CHECK_INT_EQ(c->close_code, TUN_WS_CLOSE_POLICY);
    wc_free(c);
    CHECK_INT_EQ(metric(ports[S_SHORT], "tunnel_relay_auth_timeouts_total"), 1);
    /* an authenticated client that never answers: pings, then close 1001 */
    c = client(S_SHORT, 15);
    int pings = 0, n;
    while ((n = wc_msg(c, in, sizeof(in))) > 0)
        if (in[0] == TUN_RELAY_PING)
            pings++;
    CHECK(pings >= 1);
    CHECK_INT_EQ(c->close_code, TUN_WS_CLOSE_GOING_AWAY);
    wc_free(c);
    CHECK_INT_EQ(metric(ports[S_SHORT], "tunnel_relay_ping_timeouts_total"), 1);
    /* a silent HTTP connection is closed too */
    c = wc_open(ports[S_SHORT], 0, 0);
    CHECK(wc_fill(c) == 0);
    wc_free(c);
}

static void *test_thread(void *arg)
{
    (void)arg;
    exchange(S_PLAIN);
    exchange(S_TLS);
    peer_gone_and_unauthenticated();
    auth_failures();
    duplicate_key();
    rate_limit();
    slow_reader();
    http_routes();
    pkarr();
    timers();
    /* final counts on the plain server */
    CHECK_INT_EQ(metric(ports[S_PLAIN], "tunnel_relay_clients"), 0);
    CHECK(metric(ports[S_PLAIN], "tunnel_relay_peer_gone_total") >= 4);
    CHECK_INT_EQ(metric(ports[S_PLAIN], "tunnel_relay_duplicates_total"), 1);
    uv_async_send(&done_async);
    return NULL;
}

int main(void)
{
    CHECK(sodium_init() >= 0);
    test_cert_make(&tc);
    gnutls_certificate_credentials_t cred = NULL;
    char err[256];
    CHECK_INT_EQ(tun_wstream_load_cert(tc.cert, tc.key, &cred, err, sizeof(err)), 0);

    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_async_init(&loop, &done_async, on_done);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uint8_t allow[1][32], sk[64], seed[32];
    memset(seed, 0x21, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(allow[0], sk, seed), 0);
    const char *tokens[] = {"other", "secret"};
    for (int i = 0; i < S_COUNT; i++) {
        struct tun_relay_server_cfg cfg = {.listen = (struct sockaddr *)&a};
        if (i == S_PLAIN) {
            cfg.pkarr_capacity = 16;
            cfg.queue_bytes = 256 * 1024;
            cfg.write_limit = 64 * 1024;
            cfg.stun_listen = (struct sockaddr *)&a;
        }
        if (i == S_TLS)
            cfg.tls = cred;
        if (i == S_ACL) {
            cfg.allow = (const uint8_t(*)[32])allow;
            cfg.n_allow = 1;
            cfg.tokens = tokens;
            cfg.n_tokens = 2;
        }
        if (i == S_RATE) {
            cfg.rate = 100000;
            cfg.burst = 65535;
        }
        if (i == S_SHORT) {
            /* short, yet long enough for a loaded machine to finish a request in time */
            cfg.auth_timeout_ms = 1000;
            cfg.http_timeout_ms = 1000;
            cfg.ping_ms = 100;
            cfg.dead_ms = 400;
        }
        CHECK_INT_EQ(tun_relay_server_new(&loop, &cfg, &servers[i]), 0);
        struct sockaddr_storage ss;
        CHECK_INT_EQ(tun_relay_server_local_addr(servers[i], &ss), 0);
        ports[i] = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    struct sockaddr_storage ss;
    CHECK_INT_EQ(tun_relay_server_stun_addr(servers[S_PLAIN], &ss), 0);
    CHECK(ntohs(((struct sockaddr_in *)&ss)->sin_port) != 0);
    CHECK_INT_EQ(tun_relay_server_stun_addr(servers[S_TLS], &ss), TUN_EINVAL);
    /* a bad configuration */
    struct tun_relay_server *bad = NULL;
    struct tun_relay_server_cfg bcfg = {.listen = NULL};
    CHECK_INT_EQ(tun_relay_server_new(&loop, &bcfg, &bad), TUN_EINVAL);

    pthread_t th;
    pthread_create(&th, NULL, test_thread, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK_INT_EQ(closed_count, S_COUNT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    gnutls_certificate_free_credentials(cred);
    test_cert_remove(&tc);
    return TEST_DONE();
}
