/*
 * STUN client (sans-IO core on a fake clock, then the uv driver on loopback against our
 * responder) and STUN responder (answers, errors, silence, rate limit).
 */
#include "ice/stun.h"
#include "ice/stun_client.h"
#include "ice/stun_server.h"
#include "net/udp.h"
#include "util/error.h"
#include "test.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static struct sockaddr_storage mkaddr(const char *ip, int port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':'))
        CHECK_INT_EQ(uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ss), 0);
    else
        CHECK_INT_EQ(uv_ip4_addr(ip, port, (struct sockaddr_in *)&ss), 0);
    return ss;
}

#define SA(x) ((const struct sockaddr *)(x))

static int same_sockaddr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && !memcmp(&x->sin6_addr, &y->sin6_addr, 16);
}

/* ---- core on a fake clock ------------------------------------------------------------------- */

struct sent {
    uint64_t at;
    struct sockaddr_storage to;
    uint8_t txid[TUN_STUN_TXID_LEN];
};

/* Take every datagram due at `now`, checking each is a Binding request with FINGERPRINT. */
static size_t drain(struct tun_stun_client *c, uint64_t now, struct sent *log, size_t n, size_t max)
{
    uint8_t buf[128];
    struct sockaddr_storage to;
    int len;
    while ((len = tun_stun_client_next_send(c, now, buf, sizeof buf, &to)) > 0) {
        struct tun_stun_msg m;
        CHECK_INT_EQ(tun_stun_parse(buf, (size_t)len, &m), 0);
        CHECK_INT_EQ(m.method, TUN_STUN_BINDING);
        CHECK_INT_EQ(m.cls, TUN_STUN_REQUEST);
        CHECK(m.present & TUN_STUN_HAS_FINGERPRINT);
        if (n < max) {
            log[n].at = now;
            log[n].to = to;
            memcpy(log[n].txid, m.txid, TUN_STUN_TXID_LEN);
        }
        n++;
    }
    CHECK_INT_EQ(len, 0);
    return n;
}

/* Run a client to completion on a fake clock, answering nothing; returns the send count. */
static size_t run_silent(struct tun_stun_client *c, uint64_t *now, struct sent *log, size_t max,
                         uint64_t *finished_at)
{
    size_t n = 0;
    for (int guard = 0; guard < 100; guard++) {
        n = drain(c, *now, log, n, max);
        int64_t t = tun_stun_client_timeout(c, *now);
        if (t < 0)
            break;
        *now += (uint64_t)t;
    }
    *finished_at = *now;
    return n;
}

static void test_schedule(void)
{
    struct tun_stun_client c;
    tun_stun_client_init(&c, NULL);
    struct sockaddr_storage srv = mkaddr("192.0.2.1", 3478);
    CHECK_INT_EQ(tun_stun_client_timeout(&c, 0), -1);
    CHECK_INT_EQ(tun_stun_client_start(&c, 0), TUN_EINVAL); /* no servers */
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&srv)), 0);
    CHECK_INT_EQ(tun_stun_client_start(&c, 0), 0);
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&srv)), TUN_EINVAL); /* started */
    CHECK_INT_EQ(tun_stun_client_timeout(&c, 0), 0);

    struct sent log[16];
    uint64_t now = 0, end;
    size_t n = run_silent(&c, &now, log, 16, &end);
    static const uint64_t want[] = {0, 500, 1500, 3500, 7500, 15500, 31500};
    CHECK_INT_EQ(n, 7);
    for (size_t i = 0; i < 7 && i < n; i++) {
        CHECK_INT_EQ(log[i].at, want[i]);
        CHECK(same_sockaddr(&log[i].to, &srv));
        CHECK_MEM_EQ(log[i].txid, log[0].txid, TUN_STUN_TXID_LEN); /* one transaction */
    }
    CHECK_INT_EQ(end, 39500); /* 31500 + 16 x 500 */
    const struct tun_stun_result *r = tun_stun_client_result(&c, 0);
    CHECK_INT_EQ(r->status, TUN_STUN_RES_TIMEOUT);
    CHECK_INT_EQ(r->transmissions, 7);
    CHECK(tun_stun_client_done(&c));
    CHECK(tun_stun_client_result(&c, 1) == NULL);

    /* Not a millisecond early: at 39499 it is still pending. */
    struct tun_stun_client c2;
    tun_stun_client_init(&c2, NULL);
    CHECK_INT_EQ(tun_stun_client_add_server(&c2, SA(&srv)), 0);
    CHECK_INT_EQ(tun_stun_client_start(&c2, 1000), 0);
    uint64_t t = 1000;
    n = 0;
    for (int guard = 0; n < 7 && guard < 20; guard++) {
        n = drain(&c2, t, log, n, 16);
        if (n < 7 && tun_stun_client_timeout(&c2, t) > 0)
            t += (uint64_t)tun_stun_client_timeout(&c2, t);
    }
    CHECK_INT_EQ(t, 32500);
    CHECK_INT_EQ(tun_stun_client_timeout(&c2, t), 8000);
    CHECK_INT_EQ(drain(&c2, 40499, log, 0, 0), 0);
    CHECK_INT_EQ(tun_stun_client_result(&c2, 0)->status, TUN_STUN_RES_PENDING);
    CHECK_INT_EQ(tun_stun_client_timeout(&c2, 40499), 1);
    CHECK_INT_EQ(drain(&c2, 40500, log, 0, 0), 0);
    CHECK_INT_EQ(tun_stun_client_result(&c2, 0)->status, TUN_STUN_RES_TIMEOUT);
    CHECK_INT_EQ(tun_stun_client_timeout(&c2, 40500), -1);

    /* Configured values. */
    struct tun_stun_client_cfg cfg = {.rto_ms = 10, .rc = 3, .rm = 4};
    tun_stun_client_init(&c2, &cfg);
    CHECK_INT_EQ(tun_stun_client_add_server(&c2, SA(&srv)), 0);
    CHECK_INT_EQ(tun_stun_client_start(&c2, 0), 0);
    now = 0;
    n = run_silent(&c2, &now, log, 16, &end);
    CHECK_INT_EQ(n, 3);
    CHECK_INT_EQ(log[0].at, 0);
    CHECK_INT_EQ(log[1].at, 10);
    CHECK_INT_EQ(log[2].at, 30);
    CHECK_INT_EQ(end, 70);
}

static void test_add_server_limits(void)
{
    struct tun_stun_client c;
    tun_stun_client_init(&c, NULL);
    struct sockaddr_storage s = mkaddr("192.0.2.1", 1);
    for (int i = 0; i < TUN_STUN_CLIENT_MAX; i++)
        CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&s)), i);
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&s)), TUN_ERANGE);
    struct sockaddr_storage un;
    memset(&un, 0, sizeof un);
    un.ss_family = AF_UNIX;
    tun_stun_client_init(&c, NULL);
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&un)), TUN_EINVAL);
}

static void test_response(void)
{
    struct tun_stun_client c;
    tun_stun_client_init(&c, NULL);
    struct sockaddr_storage srv = mkaddr("192.0.2.1", 3478);
    struct sockaddr_storage mapped = mkaddr("198.51.100.7", 40000);
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&srv)), 0);
    CHECK_INT_EQ(tun_stun_client_start(&c, 0), 0);
    struct sent log[8];
    size_t n = drain(&c, 0, log, 0, 8);
    n = drain(&c, 500, log, n, 8);
    CHECK_INT_EQ(n, 2);

    uint8_t buf[128];
    int len;
    uint8_t bad[TUN_STUN_TXID_LEN];
    memcpy(bad, log[0].txid, sizeof bad);
    bad[11] ^= 1;
    /* Wrong transaction id. */
    len = tun_stun_binding_success(buf, sizeof buf, bad, SA(&mapped), NULL, 0);
    CHECK(len > 0);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&srv), buf, (size_t)len, 550), 0);
    /* Right id, wrong source: another port, then another address. */
    len = tun_stun_binding_success(buf, sizeof buf, log[0].txid, SA(&mapped), NULL, 0);
    struct sockaddr_storage other = mkaddr("192.0.2.1", 3479);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&other), buf, (size_t)len, 550), 0);
    other = mkaddr("192.0.2.2", 3478);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&other), buf, (size_t)len, 550), 0);
    /* Right id, but a request rather than a response; then garbage. */
    int rl = tun_stun_binding_request(buf + 64, 64, log[0].txid, NULL, 0);
    CHECK(rl > 0);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&srv), buf + 64, (size_t)rl, 550), 0);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&srv), (const uint8_t *)"hello", 5, 550), 0);
    CHECK_INT_EQ(tun_stun_client_result(&c, 0)->status, TUN_STUN_RES_PENDING);

    /* The answer, from the server's address seen as IPv4-mapped IPv6 (a dual-stack socket). */
    struct sockaddr_storage mapped6 = mkaddr("::ffff:192.0.2.1", 3478);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&mapped6), buf, (size_t)len, 600), 1);
    const struct tun_stun_result *r = tun_stun_client_result(&c, 0);
    CHECK_INT_EQ(r->status, TUN_STUN_RES_OK);
    CHECK(same_sockaddr(&r->mapped, &mapped));
    CHECK_INT_EQ(r->rtt_ms, 100);
    CHECK_INT_EQ(r->transmissions, 2);
    /* Retransmission stopped, a duplicate answer is not consumed. */
    CHECK_INT_EQ(tun_stun_client_timeout(&c, 600), -1);
    CHECK_INT_EQ(drain(&c, 100000, log, 0, 0), 0);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&srv), buf, (size_t)len, 700), 0);
    CHECK(tun_stun_client_done(&c));
}

static void test_error_and_bad(void)
{
    struct tun_stun_client c;
    tun_stun_client_init(&c, NULL);
    struct sockaddr_storage a = mkaddr("192.0.2.1", 3478), b = mkaddr("2001:db8::1", 3478);
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&a)), 0);
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&b)), 1);
    CHECK_INT_EQ(tun_stun_client_start(&c, 0), 0);
    struct sent log[8];
    CHECK_INT_EQ(drain(&c, 0, log, 0, 8), 2);
    CHECK(same_sockaddr(&log[0].to, &a));
    CHECK(same_sockaddr(&log[1].to, &b));
    CHECK(memcmp(log[0].txid, log[1].txid, TUN_STUN_TXID_LEN) != 0);

    uint8_t buf[256];
    int len =
        tun_stun_binding_error(buf, sizeof buf, log[0].txid, 401, "Unauthorized", NULL, 0, NULL, 0);
    CHECK(len > 0);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&a), buf, (size_t)len, 40), 1);
    const struct tun_stun_result *r = tun_stun_client_result(&c, 0);
    CHECK_INT_EQ(r->status, TUN_STUN_RES_ERROR);
    CHECK_INT_EQ(r->error_code, 401);
    CHECK_STR_EQ(r->reason, "Unauthorized");
    CHECK_INT_EQ(tun_stun_client_result(&c, 1)->status, TUN_STUN_RES_PENDING);
    CHECK(!tun_stun_client_done(&c));
    CHECK_INT_EQ(tun_stun_client_timeout(&c, 40), 460); /* only b's retransmission is left */

    /* A success without any mapped address. */
    struct tun_stun_writer w;
    tun_stun_begin(&w, buf, sizeof buf, TUN_STUN_BINDING, TUN_STUN_SUCCESS, log[1].txid);
    tun_stun_add_fingerprint(&w);
    len = tun_stun_end(&w);
    CHECK(len > 0);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&b), buf, (size_t)len, 50), 1);
    CHECK_INT_EQ(tun_stun_client_result(&c, 1)->status, TUN_STUN_RES_BAD);
    CHECK(tun_stun_client_done(&c));
}

static void test_parallel(void)
{
    struct tun_stun_client_cfg cfg = {.rto_ms = 10, .rc = 3, .rm = 4};
    struct tun_stun_client c;
    tun_stun_client_init(&c, &cfg);
    struct sockaddr_storage a = mkaddr("192.0.2.1", 3478), b = mkaddr("192.0.2.2", 19302);
    struct sockaddr_storage mapped = mkaddr("203.0.113.9", 5555);
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&a)), 0);
    CHECK_INT_EQ(tun_stun_client_add_server(&c, SA(&b)), 1);
    CHECK_INT_EQ(tun_stun_client_start(&c, 0), 0);
    struct sent log[16];
    size_t n = drain(&c, 0, log, 0, 16);
    CHECK_INT_EQ(n, 2);
    n = drain(&c, 10, log, n, 16);
    CHECK_INT_EQ(n, 4);
    /* a's transaction id arriving from b's address is not an answer to anything. */
    uint8_t buf[128];
    int len = tun_stun_binding_success(buf, sizeof buf, log[0].txid, SA(&mapped), NULL, 0);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&b), buf, (size_t)len, 15), 0);
    len = tun_stun_binding_success(buf, sizeof buf, log[1].txid, SA(&mapped), NULL, 0);
    CHECK_INT_EQ(tun_stun_client_input(&c, SA(&b), buf, (size_t)len, 15), 1);
    CHECK_INT_EQ(tun_stun_client_result(&c, 1)->status, TUN_STUN_RES_OK);
    CHECK_INT_EQ(tun_stun_client_result(&c, 1)->rtt_ms, 5);
    /* a carries on alone: 30, then failure at 70. */
    uint64_t now = 15, end;
    struct sent rest[8];
    n = run_silent(&c, &now, rest, 8, &end);
    CHECK_INT_EQ(n, 1);
    CHECK_INT_EQ(rest[0].at, 30);
    CHECK(same_sockaddr(&rest[0].to, &a));
    CHECK_INT_EQ(end, 70);
    CHECK_INT_EQ(tun_stun_client_result(&c, 0)->status, TUN_STUN_RES_TIMEOUT);
    CHECK_INT_EQ(tun_stun_client_result(&c, 1)->status, TUN_STUN_RES_OK);
}

/* ---- responder ------------------------------------------------------------------------------ */

static void test_respond(void)
{
    uint8_t txid[TUN_STUN_TXID_LEN], req[128], out[256];
    struct tun_stun_msg m;
    CHECK_INT_EQ(tun_stun_new_txid(txid), 0);
    const char *froms[] = {"203.0.113.5", "2001:db8::42"};
    for (int i = 0; i < 2; i++) {
        struct sockaddr_storage from = mkaddr(froms[i], 4242);
        int len = tun_stun_binding_request(req, sizeof req, txid, NULL, 0);
        int n = tun_stun_respond(req, (size_t)len, SA(&from), out, sizeof out);
        CHECK(n > 0);
        CHECK_INT_EQ(tun_stun_parse(out, (size_t)n, &m), 0);
        CHECK_INT_EQ(m.cls, TUN_STUN_SUCCESS);
        CHECK_INT_EQ(m.method, TUN_STUN_BINDING);
        CHECK_MEM_EQ(m.txid, txid, TUN_STUN_TXID_LEN);
        CHECK(m.present & TUN_STUN_HAS_XOR_MAPPED);
        CHECK(m.present & TUN_STUN_HAS_FINGERPRINT);
        CHECK(same_sockaddr(&m.xor_mapped, &from));
        /* Too small a buffer is an error, not a truncated answer. */
        CHECK(tun_stun_respond(req, (size_t)len, SA(&from), out, 24) < 0);
    }
    struct sockaddr_storage from = mkaddr("203.0.113.5", 4242);

    /* Unknown comprehension-required attributes: 420 listing them. An unknown optional one
     * (>= 0x8000) is fine. */
    struct tun_stun_writer w;
    tun_stun_begin(&w, req, sizeof req, TUN_STUN_BINDING, TUN_STUN_REQUEST, txid);
    tun_stun_add_u32(&w, 0x0033, 1);
    tun_stun_add_u32(&w, 0x8123, 2);
    tun_stun_add_u32(&w, 0x7777, 3);
    tun_stun_add_fingerprint(&w);
    int len = tun_stun_end(&w);
    CHECK(len > 0);
    int n = tun_stun_respond(req, (size_t)len, SA(&from), out, sizeof out);
    CHECK(n > 0);
    CHECK_INT_EQ(tun_stun_parse(out, (size_t)n, &m), 0);
    CHECK_INT_EQ(m.cls, TUN_STUN_ERROR);
    CHECK_INT_EQ(m.error_code, 420);
    CHECK_MEM_EQ(m.txid, txid, TUN_STUN_TXID_LEN);
    CHECK(m.present & TUN_STUN_HAS_FINGERPRINT);
    CHECK_INT_EQ(m.unknown_attrs_count, 2);
    if (m.unknown_attrs_count == 2) {
        CHECK_INT_EQ(m.unknown_attrs[0] << 8 | m.unknown_attrs[1], 0x0033);
        CHECK_INT_EQ(m.unknown_attrs[2] << 8 | m.unknown_attrs[3], 0x7777);
    }
    tun_stun_begin(&w, req, sizeof req, TUN_STUN_BINDING, TUN_STUN_REQUEST, txid);
    tun_stun_add_u32(&w, 0x8123, 2);
    len = tun_stun_end(&w);
    n = tun_stun_respond(req, (size_t)len, SA(&from), out, sizeof out);
    CHECK_INT_EQ(tun_stun_parse(out, (size_t)n, &m), 0);
    CHECK_INT_EQ(m.cls, TUN_STUN_SUCCESS);

    /* Another method: 400. */
    tun_stun_begin(&w, req, sizeof req, 0x003, TUN_STUN_REQUEST, txid);
    len = tun_stun_end(&w);
    n = tun_stun_respond(req, (size_t)len, SA(&from), out, sizeof out);
    CHECK(n > 0);
    CHECK_INT_EQ(tun_stun_parse(out, (size_t)n, &m), 0);
    CHECK_INT_EQ(m.cls, TUN_STUN_ERROR);
    CHECK_INT_EQ(m.error_code, 400);

    /* A sound header with a USERNAME claiming 12 bytes of which 4 are there: 400. */
    tun_stun_begin(&w, req, sizeof req, TUN_STUN_BINDING, TUN_STUN_REQUEST, txid);
    len = tun_stun_end(&w);
    static const uint8_t attr[] = {0x00, 0x06, 0x00, 0x0c, 'a', 'b', 'c', 'd'};
    memcpy(req + len, attr, sizeof attr);
    req[3] = sizeof attr;
    n = tun_stun_respond(req, (size_t)len + sizeof attr, SA(&from), out, sizeof out);
    CHECK(n > 0);
    CHECK_INT_EQ(tun_stun_parse(out, (size_t)n, &m), 0);
    CHECK_INT_EQ(m.cls, TUN_STUN_ERROR);
    CHECK_INT_EQ(m.error_code, 400);
    CHECK_MEM_EQ(m.txid, txid, TUN_STUN_TXID_LEN);
    /* The same bytes with a length field that does not match the datagram: silence. */
    req[3] = 4;
    CHECK_INT_EQ(tun_stun_respond(req, (size_t)len + sizeof attr, SA(&from), out, sizeof out), 0);

    /* Silence: indication, response, wrong FINGERPRINT, garbage, empty. */
    len = tun_stun_binding_indication(req, sizeof req, txid);
    CHECK_INT_EQ(tun_stun_respond(req, (size_t)len, SA(&from), out, sizeof out), 0);
    len = tun_stun_binding_success(req, sizeof req, txid, SA(&from), NULL, 0);
    CHECK_INT_EQ(tun_stun_respond(req, (size_t)len, SA(&from), out, sizeof out), 0);
    len = tun_stun_binding_request(req, sizeof req, txid, NULL, 0);
    req[len - 1] ^= 0x55;
    CHECK_INT_EQ(tun_stun_respond(req, (size_t)len, SA(&from), out, sizeof out), 0);
    static const uint8_t quic[] = {0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0};
    CHECK_INT_EQ(tun_stun_respond(quic, sizeof quic, SA(&from), out, sizeof out), 0);
    CHECK_INT_EQ(tun_stun_respond((const uint8_t *)"x", 0, SA(&from), out, sizeof out), 0);
}

static void test_ratelimit(void)
{
    static struct tun_stun_ratelimit rl;
    tun_stun_ratelimit_init(&rl);
    struct sockaddr_storage a = mkaddr("203.0.113.5", 1), a2 = mkaddr("203.0.113.5", 2);
    struct sockaddr_storage b = mkaddr("2001:db8::1", 1);
    int ok = 0;
    for (int i = 0; i < 100; i++)
        ok += tun_stun_ratelimit_allow(&rl, SA(&a), 1000);
    CHECK_INT_EQ(ok, TUN_STUN_RL_BURST);
    CHECK_INT_EQ(tun_stun_ratelimit_allow(&rl, SA(&a2), 1000), 0); /* the port does not matter */
    CHECK_INT_EQ(tun_stun_ratelimit_allow(&rl, SA(&a), 1049), 0);
    CHECK_INT_EQ(tun_stun_ratelimit_allow(&rl, SA(&a), 1050), 1); /* 20/s: one per 50 ms */
    CHECK_INT_EQ(tun_stun_ratelimit_allow(&rl, SA(&a), 1050), 0);
    /* Another source has its own bucket unless the hash collides (1 in 256 per seed). */
    int other = 0;
    for (int i = 0; i < TUN_STUN_RL_BURST; i++)
        other += tun_stun_ratelimit_allow(&rl, SA(&b), 1050);
    CHECK(other == TUN_STUN_RL_BURST || other == 0);
    /* Refills up to the burst, not beyond. */
    ok = 0;
    for (int i = 0; i < 100; i++)
        ok += tun_stun_ratelimit_allow(&rl, SA(&a), 1000000);
    CHECK_INT_EQ(ok, TUN_STUN_RL_BURST);
}

/* ---- end to end on a real loop -------------------------------------------------------------- */

static uv_loop_t loop;
static int timed_out;

static void on_guard(uv_timer_t *t)
{
    (void)t;
    timed_out = 1;
}

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

/* The guard only keeps a broken build from hanging the suite. */
static int run_until(const int *flag)
{
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    uv_timer_start(&guard, on_guard, 10000, 0);
    timed_out = 0;
    while (!*flag && !timed_out)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, on_handle_closed);
    uv_run(&loop, UV_RUN_NOWAIT);
    return *flag;
}

struct e2e {
    struct tun_udp *sock;
    struct tun_stun_probe *probe;
    int done;
    struct tun_stun_result res[TUN_STUN_CLIENT_MAX];
    size_t n;
};

static int send_udp(void *ud, const struct sockaddr *to, const uint8_t *data, size_t len)
{
    struct e2e *e = ud;
    return tun_udp_send(e->sock, to, data, len, 0, NULL);
}

static void on_recv(struct tun_udp *u, const struct sockaddr *from, const uint8_t *data, size_t len,
                    unsigned ecn, void *ud)
{
    (void)u;
    (void)ecn;
    struct e2e *e = ud;
    if (e->probe)
        tun_stun_probe_input(e->probe, from, data, len);
}

static void on_done(struct tun_stun_probe *p, const struct tun_stun_client *c, void *ud)
{
    struct e2e *e = ud;
    CHECK(p == e->probe);
    e->n = c->n;
    for (size_t i = 0; i < c->n; i++)
        e->res[i] = *tun_stun_client_result(c, i);
    e->done++;
    /* Closing from inside the callback must be safe. */
    tun_stun_probe_close(p);
    e->probe = NULL;
}

static void on_closed(void *ud)
{
    (*(int *)ud)++;
}

static void test_end_to_end(void)
{
    CHECK_INT_EQ(uv_loop_init(&loop), 0);
    struct sockaddr_storage any = mkaddr("127.0.0.1", 0);
    struct tun_stun_server *srv = NULL;
    CHECK_INT_EQ(tun_stun_server_start(&loop, SA(&any), &srv), 0);
    if (!srv)
        return;
    struct sockaddr_storage srv_addr, client_addr, silent_addr;
    CHECK_INT_EQ(tun_stun_server_local_addr(srv, &srv_addr), 0);

    struct e2e e;
    memset(&e, 0, sizeof e);
    CHECK_INT_EQ(tun_udp_new(&loop, SA(&any), &e.sock), 0);
    CHECK_INT_EQ(tun_udp_local_addr(e.sock, &client_addr), 0);
    CHECK_INT_EQ(tun_udp_start(e.sock, on_recv, NULL, &e), 0);
    /* A socket that is never started: requests to it sit in its queue, unanswered. */
    struct tun_udp *silent = NULL;
    CHECK_INT_EQ(tun_udp_new(&loop, SA(&any), &silent), 0);
    CHECK_INT_EQ(tun_udp_local_addr(silent, &silent_addr), 0);

    /* 1. One real server with the default schedule: the answer is our own socket's address. */
    CHECK_INT_EQ(tun_stun_probe_start(&loop, send_udp, &e, &srv_addr, 1, NULL, on_done, &e.probe),
                 0);
    CHECK(run_until(&e.done));
    CHECK_INT_EQ(e.n, 1);
    CHECK_INT_EQ(e.res[0].status, TUN_STUN_RES_OK);
    CHECK(same_sockaddr(&e.res[0].mapped, &client_addr));
    CHECK(same_sockaddr(&e.res[0].server, &srv_addr));
    struct tun_stun_server_stats st;
    tun_stun_server_get_stats(srv, &st);
    CHECK(st.answered >= 1);

    /* 2. The real server and a silent one in parallel, short timers: one answer, one
     * timeout after exactly rc transmissions, and `done` only once both are settled. */
    struct tun_stun_client_cfg cfg = {.rto_ms = 5, .rc = 3, .rm = 2};
    struct sockaddr_storage both[2] = {silent_addr, srv_addr};
    e.done = 0;
    CHECK_INT_EQ(tun_stun_probe_start(&loop, send_udp, &e, both, 2, &cfg, on_done, &e.probe), 0);
    CHECK(run_until(&e.done));
    CHECK_INT_EQ(e.done, 1);
    CHECK_INT_EQ(e.n, 2);
    CHECK_INT_EQ(e.res[0].status, TUN_STUN_RES_TIMEOUT);
    CHECK_INT_EQ(e.res[0].transmissions, 3);
    CHECK_INT_EQ(e.res[1].status, TUN_STUN_RES_OK);
    CHECK(same_sockaddr(&e.res[1].mapped, &client_addr));

    /* 3. Closing a probe before it finishes: no callback afterwards. */
    e.done = 0;
    CHECK_INT_EQ(
        tun_stun_probe_start(&loop, send_udp, &e, &silent_addr, 1, &cfg, on_done, &e.probe), 0);
    tun_stun_probe_close(e.probe);
    e.probe = NULL;
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(e.done, 0);

    CHECK_INT_EQ(tun_stun_probe_start(&loop, NULL, &e, &srv_addr, 1, NULL, on_done, &e.probe),
                 TUN_EINVAL);
    CHECK_INT_EQ(tun_stun_probe_start(&loop, send_udp, &e, both, 9, NULL, on_done, &e.probe),
                 TUN_ERANGE);

    int closed = 0;
    tun_udp_close(e.sock, on_closed, &closed);
    tun_udp_close(silent, on_closed, &closed);
    tun_stun_server_close(srv, on_closed, &closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(closed, 3);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

int main(void)
{
    test_schedule();
    test_add_server_limits();
    test_response();
    test_error_and_bad();
    test_parallel();
    test_respond();
    test_ratelimit();
    test_end_to_end();
    return TEST_DONE();
}
