/* QUIC endpoints on loopback in one process: handshake with pinned raw keys, a stream echo
 * with FIN both ways, datagrams, and the identity-mismatch failure. */
#include "quic/quic.h"
#include "util/error.h"
#include "test.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define PAYLOAD (4u << 20)

struct ctx {
    uv_loop_t *loop;
    struct tun_qep *srv, *cli;
    struct tun_qconn *cconn;
    uint8_t srv_pub[32], cli_seen_srv[32];
    size_t echoed, received, mismatches;
    int srv_fin, cli_fin, ready, closed, dgram_back, srv_saw_client_key;
    struct tun_qclose_info why;
    int endpoints_closed;
};

static uint8_t pattern(size_t i)
{
    return (uint8_t)(i * 31 + (i >> 11));
}

/* --- server: echo every stream and datagram back --- */
static void srv_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    struct ctx *x = ud;
    tun_qstream_write(s, d, n);
    tun_qstream_consume(s, n);
    x->echoed += n;
}
static void srv_fin(struct tun_qstream *s, void *ud)
{
    ((struct ctx *)ud)->srv_fin = 1;
    tun_qstream_finish(s);
}
static void srv_stream(struct tun_qconn *c, struct tun_qstream *s, void *ud)
{
    (void)c;
    struct tun_qstream_cbs cbs = {.on_data = srv_data, .on_fin = srv_fin};
    tun_qstream_set_cbs(s, &cbs, ud);
}
static void srv_dgram(struct tun_qconn *c, const uint8_t *d, size_t n, void *ud)
{
    (void)ud;
    tun_qconn_send_datagram(c, d, n);
}
static void srv_ready(struct tun_qconn *c, void *ud)
{
    struct ctx *x = ud;
    x->srv_saw_client_key = tun_qconn_peer_key(c) != NULL;
}
static void srv_conn(struct tun_qep *ep, struct tun_qconn *c, void *ud)
{
    (void)ep;
    struct tun_qconn_cbs cbs = {
        .on_ready = srv_ready, .on_stream = srv_stream, .on_datagram = srv_dgram};
    tun_qconn_set_cbs(c, &cbs, ud);
}

/* --- client --- */
static void cli_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    struct ctx *x = ud;
    for (size_t i = 0; i < n; i++)
        if (d[i] != pattern(x->received + i))
            x->mismatches++;
    x->received += n;
    tun_qstream_consume(s, n);
}
static void cli_fin(struct tun_qstream *s, void *ud)
{
    struct ctx *x = ud;
    (void)s;
    x->cli_fin = 1;
    if (x->dgram_back)
        tun_qconn_close(x->cconn, 0, "done");
}
static void cli_dgram(struct tun_qconn *c, const uint8_t *d, size_t n, void *ud)
{
    struct ctx *x = ud;
    x->dgram_back = n == 5 && memcmp(d, "hello", 5) == 0;
    if (x->cli_fin)
        tun_qconn_close(c, 0, "done");
}
static void cli_ready(struct tun_qconn *c, void *ud)
{
    struct ctx *x = ud;
    x->ready = 1;
    memcpy(x->cli_seen_srv, tun_qconn_peer_key(c), 32);
    struct tun_qstream *s;
    CHECK_INT_EQ(tun_qconn_open_stream(c, &s), 0);
    struct tun_qstream_cbs cbs = {.on_data = cli_data, .on_fin = cli_fin};
    tun_qstream_set_cbs(s, &cbs, ud);
    uint8_t *buf = malloc(PAYLOAD);
    for (size_t i = 0; i < PAYLOAD; i++)
        buf[i] = pattern(i);
    tun_qstream_write(s, buf, PAYLOAD);
    tun_qstream_finish(s);
    free(buf);
    CHECK(tun_qconn_max_datagram(c) > 1000);
    CHECK_INT_EQ(tun_qconn_send_datagram(c, (const uint8_t *)"hello", 5), 0);
    uint8_t big[70000] = {0};
    CHECK_INT_EQ(tun_qconn_send_datagram(c, big, sizeof(big)), TUN_ETOOBIG);
}
static void ep_closed(void *ud)
{
    ((struct ctx *)ud)->endpoints_closed++;
}
static void cli_closed(struct tun_qconn *c, const struct tun_qclose_info *why, void *ud)
{
    struct ctx *x = ud;
    (void)c;
    x->closed = 1;
    x->why = *why;
    tun_qep_close(x->cli, 0, ep_closed, x);
    tun_qep_close(x->srv, 0, ep_closed, x);
}

static void setup(struct ctx *x, uv_loop_t *loop, const uint8_t *pin)
{
    memset(x, 0, sizeof(*x));
    x->loop = loop;
    uint8_t ssec[32], csec[32], sk[64];
    randombytes_buf(ssec, 32);
    randombytes_buf(csec, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(x->srv_pub, sk, ssec), 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    struct tun_qep_cbs scbs = {.on_conn = srv_conn};
    CHECK_INT_EQ(tun_qep_new(loop, (struct sockaddr *)&a, ssec, 1, NULL, &scbs, x, &x->srv), 0);
    CHECK_INT_EQ(tun_qep_new(loop, (struct sockaddr *)&a, csec, 0, NULL, NULL, x, &x->cli), 0);
    struct sockaddr_storage sa;
    tun_qep_local_addr(x->srv, &sa);
    struct tun_qconn_cbs ccbs = {
        .on_ready = cli_ready, .on_datagram = cli_dgram, .on_closed = cli_closed};
    CHECK_INT_EQ(tun_qep_connect(x->cli, (struct sockaddr *)&sa, pin ? pin : x->srv_pub, &ccbs, x,
                                 &x->cconn),
                 0);
}

static void test_echo(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct ctx x;
    setup(&x, &loop, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(x.ready);
    CHECK(memcmp(x.cli_seen_srv, x.srv_pub, 32) == 0);
    CHECK(x.srv_saw_client_key);
    CHECK_INT_EQ(x.echoed, PAYLOAD);
    CHECK_INT_EQ(x.received, PAYLOAD);
    CHECK_INT_EQ(x.mismatches, 0);
    CHECK(x.srv_fin && x.cli_fin);
    CHECK(x.dgram_back);
    CHECK(x.closed && x.why.local && x.why.app);
    CHECK_INT_EQ(x.endpoints_closed, 2);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

static void test_identity_mismatch(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct ctx x;
    uint8_t wrong[32];
    randombytes_buf(wrong, 32);
    setup(&x, &loop, wrong);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(!x.ready);
    CHECK(x.closed);
    CHECK_INT_EQ(x.why.err, TUN_ECRYPTO);
    CHECK(strstr(x.why.reason, "server identity mismatch") != NULL);
    CHECK_INT_EQ(x.endpoints_closed, 2);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    test_echo();
    test_identity_mismatch();
    return TEST_DONE();
}
