/*
 * relay/client against relay/server, both on one loop: authentication, datagrams both ways,
 * peer gone, access tokens, TLS with a private CA (and refusal without it), and reconnection
 * after the relay restarts on the same port.
 */
#include "relay/client.h"
#include "relay/frame.h"
#include "relay/server.h"
#include "test.h"
#include "test_cert.h"
#include "util/error.h"

#include <gnutls/x509.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <unistd.h>

static uv_loop_t loop;

struct peer {
    struct tun_relay_client *c;
    uint8_t secret[32], pub[32];
    int state, ready_count;
    size_t got, got_bytes, gone;
    uint8_t last_src[32], gone_key[32];
    int gone_reason;
    char why[200];
    uint8_t expect_byte; /* every datagram i carries bytes (i & 0xff) */
    int bad;
};

static void on_state(struct tun_relay_client *c, int state, const char *why, void *ud)
{
    (void)c;
    struct peer *p = ud;
    p->state = state;
    if (state == TUN_RELAY_CLIENT_READY)
        p->ready_count++;
    if (why)
        snprintf(p->why, sizeof(p->why), "%s", why);
}

static void on_datagram(struct tun_relay_client *c, const uint8_t src[32], const uint8_t *data,
                        size_t len, void *ud)
{
    (void)c;
    struct peer *p = ud;
    memcpy(p->last_src, src, 32);
    for (size_t i = 0; i < len; i++)
        if (data[i] != (uint8_t)(p->got & 0xff))
            p->bad++;
    p->got++;
    p->got_bytes += len;
}

static void on_peer_gone(struct tun_relay_client *c, const uint8_t key[32], int reason, void *ud)
{
    (void)c;
    struct peer *p = ud;
    memcpy(p->gone_key, key, 32);
    p->gone_reason = reason;
    p->gone++;
}

static const struct tun_relay_client_cbs cbs = {on_state, on_datagram, on_peer_gone, NULL};

static void peer_start(struct peer *p, const char *url, const char *token, const char *cafile)
{
    memset(p, 0, sizeof(*p));
    randombytes_buf(p->secret, 32);
    uint8_t sk[64];
    crypto_sign_seed_keypair(p->pub, sk, p->secret);
    struct tun_relay_client_cfg cfg = {
        .url = url, .token = token, .cafile = cafile, .backoff_min_ms = 20, .backoff_max_ms = 200};
    memcpy(cfg.secret, p->secret, 32);
    CHECK_INT_EQ(tun_relay_client_new(&loop, &cfg, &cbs, p, &p->c), 0);
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until cond() or about `ms` of loop time passed. */
static int run_until(int (*cond)(void *), void *arg, uint64_t ms)
{
    static uv_timer_t tick; /* keeps UV_RUN_ONCE short; closed at the end of main */
    static int tick_init;
    if (!tick_init) {
        uv_timer_init(&loop, &tick);
        uv_unref((uv_handle_t *)&tick);
        tick_init = 1;
    }
    uv_timer_start(&tick, tick_cb, 10, 10);
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + ms;
    int ok;
    while (!(ok = cond(arg)) && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    if (arg == NULL) /* the final call: close it */
        uv_close((uv_handle_t *)&tick, NULL);
    return ok;
}

static int always(void *arg)
{
    (void)arg;
    return 1;
}

static int both_ready(void *arg)
{
    struct peer *p = arg;
    return p[0].state == TUN_RELAY_CLIENT_READY && p[1].state == TUN_RELAY_CLIENT_READY;
}

static int got_n(void *arg)
{
    struct peer *p = arg;
    return p->got >= 200;
}

static int gone_seen(void *arg)
{
    return ((struct peer *)arg)->gone > 0;
}

static int waiting_with_why(void *arg)
{
    struct peer *p = arg;
    return p->state == TUN_RELAY_CLIENT_WAITING && p->why[0];
}

static int one_ready(void *arg)
{
    return ((struct peer *)arg)->state == TUN_RELAY_CLIENT_READY;
}

static struct tun_relay_server *server_start(int port, gnutls_certificate_credentials_t tls,
                                             const char *const *tokens, size_t n_tokens)
{
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    struct tun_relay_server_cfg cfg = {
        .listen = (struct sockaddr *)&a, .tls = tls, .tokens = tokens, .n_tokens = n_tokens};
    struct tun_relay_server *s = NULL;
    CHECK_INT_EQ(tun_relay_server_new(&loop, &cfg, &s), 0);
    return s;
}

static int server_port(struct tun_relay_server *s)
{
    struct sockaddr_storage ss;
    tun_relay_server_local_addr(s, &ss);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void finish(struct peer *p, size_t n, struct tun_relay_server *s)
{
    for (size_t i = 0; i < n; i++)
        tun_relay_client_close(p[i].c);
    if (s)
        tun_relay_server_close(s, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
}

static struct test_cert tc;

/* A sends 200 datagrams of 1..1400 bytes to B; B must get them all, from A, intact. */
static void exchange(struct peer *p)
{
    uint8_t buf[1400];
    for (size_t i = 0; i < 200; i++) {
        size_t len = 1 + (i * 37) % sizeof(buf);
        memset(buf, (int)(i & 0xff), len);
        CHECK_INT_EQ(tun_relay_client_send(p[0].c, p[1].pub, buf, len), 0);
    }
    CHECK(run_until(got_n, &p[1], 5000));
    CHECK_INT_EQ(p[1].got, 200);
    CHECK_INT_EQ(p[1].bad, 0);
    CHECK_MEM_EQ(p[1].last_src, p[0].pub, 32);
    size_t gone_before = p[1].gone;
    memset(buf, 0, 10);
    CHECK_INT_EQ(tun_relay_client_send(p[1].c, p[0].pub, buf, 10), 0);
    run_until(gone_seen, &p[1], 100);
    CHECK_INT_EQ(p[1].gone, gone_before); /* nothing "gone" about a live peer */
}

int main(void)
{
    CHECK_INT_EQ(sodium_init() < 0, 0);
    signal(SIGPIPE, SIG_IGN); /* as the host does: a peer closing must not kill us */
    uv_loop_init(&loop);
    char url[128];
    struct peer p[3];

    /* Plain HTTP: two clients, datagrams, peer gone. */
    struct tun_relay_server *s = server_start(0, NULL, NULL, 0);
    int port = server_port(s);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    peer_start(&p[0], url, NULL, NULL);
    peer_start(&p[1], url, NULL, NULL);
    CHECK(run_until(both_ready, p, 5000));
    exchange(p);
    uint8_t nobody[32];
    randombytes_buf(nobody, 32);
    CHECK_INT_EQ(tun_relay_client_send(p[0].c, nobody, (const uint8_t *)"x", 1), 0);
    CHECK(run_until(gone_seen, &p[0], 3000));
    CHECK_MEM_EQ(p[0].gone_key, nobody, 32);
    struct tun_relay_client_stats st;
    tun_relay_client_stats(p[0].c, &st);
    CHECK_INT_EQ(st.tx_datagrams, 201);
    CHECK_INT_EQ(st.connects, 1);

    /* The relay restarts on the same port: both clients notice, back off and come back. */
    tun_relay_server_close(s, NULL, NULL);
    CHECK(run_until(waiting_with_why, &p[0], 5000));
    /* An orderly shutdown says RESTARTING, and when to come back. */
    CHECK(strstr(p[0].why, "restarting (back in 1000 ms)") != NULL);
    s = server_start(port, NULL, NULL, 0);
    p[0].got = p[1].got = 0;
    CHECK(run_until(both_ready, p, 10000));
    CHECK_INT_EQ(p[0].ready_count, 2);
    exchange(p);
    tun_relay_client_stats(p[1].c, &st);
    CHECK_INT_EQ(st.connects, 2);
    finish(p, 2, s);

    /* Access tokens: without one the client says what is missing; with it, it connects. */
    const char *tokens[] = {"relay-token-1"};
    s = server_start(0, NULL, tokens, 1);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/relay", server_port(s));
    peer_start(&p[0], url, NULL, NULL);
    CHECK(run_until(waiting_with_why, &p[0], 5000));
    CHECK(strstr(p[0].why, "token") != NULL);
    peer_start(&p[1], url, "relay-token-1", NULL);
    CHECK(run_until(one_ready, &p[1], 5000));
    peer_start(&p[2], url, "wrong", NULL);
    CHECK(run_until(waiting_with_why, &p[2], 5000));
    CHECK(strstr(p[2].why, "refused") != NULL);
    CHECK(p[0].state != TUN_RELAY_CLIENT_READY);
    finish(p, 3, s);

    /* TLS with a private CA: trusted → ready; untrusted → a clear certificate failure. */
    test_cert_make(&tc);
    gnutls_certificate_credentials_t cred;
    gnutls_certificate_allocate_credentials(&cred);
    CHECK_INT_EQ(gnutls_certificate_set_x509_key_file(cred, tc.cert, tc.key, GNUTLS_X509_FMT_PEM),
                 0);
    s = server_start(0, cred, NULL, 0);
    snprintf(url, sizeof(url), "https://127.0.0.1:%d", server_port(s));
    peer_start(&p[0], url, NULL, tc.cert);
    peer_start(&p[1], url, NULL, tc.cert);
    CHECK(run_until(both_ready, p, 5000));
    exchange(p);
    peer_start(&p[2], url, NULL, NULL);
    CHECK(run_until(waiting_with_why, &p[2], 5000));
    CHECK(strstr(p[2].why, "cannot reach the relay") != NULL);
    finish(p, 3, s);
    gnutls_certificate_free_credentials(cred);

    /* Bad configuration is refused up front. */
    struct tun_relay_client *bad;
    struct tun_relay_client_cfg cfg = {.url = "ftp://127.0.0.1/"};
    CHECK_INT_EQ(tun_relay_client_new(&loop, &cfg, &cbs, NULL, &bad), TUN_EINVAL);
    cfg.url = "http:///relay";
    CHECK_INT_EQ(tun_relay_client_new(&loop, &cfg, &cbs, NULL, &bad), TUN_EINVAL);

    test_cert_remove(&tc);
    run_until(always, NULL, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    return TEST_DONE();
}
