/*
 * QUIC over the relay, in one process: a relay server, a QUIC server endpoint and a QUIC client
 * endpoint, each endpoint with a relay path whose relay identity is its QUIC identity. The
 * client dials the server by its key alone (its synthetic relay address): handshake, 2 MiB
 * echoed on a stream, a datagram, all through the relay; and a disco packet sent through the
 * relay arrives at on_disco, not at QUIC.
 */
#include "disco/disco.h"
#include "iroh/relaypath.h"
#include "relay/server.h"
#include "test.h"
#include "util/error.h"

#include <signal.h>
#include <sodium.h>
#include <stdlib.h>

#define PAYLOAD (2u << 20)

static uv_loop_t loop;

struct side {
    struct tun_qep *ep;
    struct tun_relaypath *rp;
    uint8_t secret[32], pub[32];
    int relay_ready, discos;
    uint8_t disco_src[32];
};

static struct side S, C;
static struct tun_qconn *cconn;
static size_t echoed, received, mismatches;
static int ready, fin, dgram_back, closed, peer_key_ok;

static uint8_t pattern(size_t i)
{
    return (uint8_t)(i * 13 + (i >> 9));
}

static void rp_state(struct tun_relaypath *rp, const char *url, int state, const char *why,
                     void *ud)
{
    (void)rp;
    (void)url;
    (void)why;
    ((struct side *)ud)->relay_ready = state == TUN_RELAY_CLIENT_READY;
}

static void rp_disco(struct tun_relaypath *rp, const uint8_t src[32], const uint8_t *d, size_t n,
                     void *ud)
{
    (void)rp;
    (void)d;
    (void)n;
    struct side *s = ud;
    s->discos++;
    memcpy(s->disco_src, src, 32);
}

/* --- the QUIC server: echo --- */
static void srv_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    (void)ud;
    tun_qstream_write(s, d, n);
    tun_qstream_consume(s, n);
    echoed += n;
}
static void srv_fin(struct tun_qstream *s, void *ud)
{
    (void)ud;
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
static void srv_conn(struct tun_qep *ep, struct tun_qconn *c, void *ud)
{
    (void)ep;
    struct tun_qconn_cbs cbs = {.on_stream = srv_stream, .on_datagram = srv_dgram};
    tun_qconn_set_cbs(c, &cbs, ud);
}

/* --- the QUIC client --- */
static void cli_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    (void)ud;
    for (size_t i = 0; i < n; i++)
        if (d[i] != pattern(received + i))
            mismatches++;
    received += n;
    tun_qstream_consume(s, n);
}
static void cli_fin(struct tun_qstream *s, void *ud)
{
    (void)s;
    (void)ud;
    fin = 1;
}
static void cli_dgram(struct tun_qconn *c, const uint8_t *d, size_t n, void *ud)
{
    (void)c;
    (void)ud;
    dgram_back = n == 4 && memcmp(d, "ping", 4) == 0;
}
static void cli_ready(struct tun_qconn *c, void *ud)
{
    ready = 1;
    peer_key_ok = memcmp(tun_qconn_peer_key(c), S.pub, 32) == 0;
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
    tun_qconn_send_datagram(c, (const uint8_t *)"ping", 4);
}
static void cli_closed(struct tun_qconn *c, const struct tun_qclose_info *why, void *ud)
{
    (void)c;
    (void)why;
    (void)ud;
    closed = 1;
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static int run_until(int *flag, uint64_t ms)
{
    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, tick_cb, 10, 10);
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + ms;
    while (!*flag && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_NOWAIT); /* finish closing tick before it goes out of scope */
    return *flag;
}

static void side_start(struct side *s, int is_server, const char *url)
{
    randombytes_buf(s->secret, 32);
    uint8_t sk[64];
    crypto_sign_seed_keypair(s->pub, sk, s->secret);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    struct tun_qep_cbs scbs = {.on_conn = srv_conn};
    CHECK_INT_EQ(tun_qep_new(&loop, (struct sockaddr *)&a, s->secret, is_server, NULL,
                             is_server ? &scbs : NULL, NULL, &s->ep),
                 0);
    struct tun_relay_client_cfg rcfg = {.url = url, .backoff_min_ms = 20};
    memcpy(rcfg.secret, s->secret, 32); /* reachable through the relay by its EndpointId */
    struct tun_relaypath_cbs cbs = {.on_state = rp_state, .on_disco = rp_disco};
    CHECK_INT_EQ(tun_relaypath_new(&loop, s->ep, &rcfg, &cbs, s, &s->rp), 0);
}

static int both_relays;
static int done_all;

int main(void)
{
    CHECK_INT_EQ(sodium_init() < 0, 0);
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&loop);
    struct sockaddr_in la;
    uv_ip4_addr("127.0.0.1", 0, &la);
    struct tun_relay_server_cfg scfg = {.listen = (struct sockaddr *)&la};
    struct tun_relay_server *relay;
    CHECK_INT_EQ(tun_relay_server_new(&loop, &scfg, &relay), 0);
    struct sockaddr_storage ra;
    tun_relay_server_local_addr(relay, &ra);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(((struct sockaddr_in *)&ra)->sin_port));

    side_start(&S, 1, url);
    side_start(&C, 0, url);
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + 5000;
    while (!(S.relay_ready && C.relay_ready) && uv_now(&loop) < end)
        run_until(&both_relays, 20);
    CHECK(S.relay_ready && C.relay_ready);

    /* The synthetic addresses: stable per key, recognised, and mapped back. */
    struct sockaddr_storage local, remote, r2, l2;
    CHECK_INT_EQ(tun_relaypath_addr(C.rp, S.pub, &local, &remote), 0);
    CHECK_INT_EQ(tun_relaypath_addr(C.rp, S.pub, &l2, &r2), 0);
    CHECK(memcmp(&remote, &r2, sizeof(remote)) == 0);
    CHECK(tun_relaypath_is_relay((struct sockaddr *)&remote));
    CHECK(tun_relaypath_is_relay((struct sockaddr *)&local));
    CHECK(!tun_relaypath_is_relay((struct sockaddr *)&ra));
    uint8_t k[32];
    CHECK_INT_EQ(tun_relaypath_key(C.rp, (struct sockaddr *)&remote, k), 0);
    CHECK_MEM_EQ(k, S.pub, 32);
    CHECK_INT_EQ(tun_relaypath_key(C.rp, (struct sockaddr *)&ra, k), TUN_EINVAL);

    /* Dial the server by its key alone, through the relay. */
    struct tun_qconn_cbs ccbs = {
        .on_ready = cli_ready, .on_datagram = cli_dgram, .on_closed = cli_closed};
    CHECK_INT_EQ(tun_qep_connect_via(C.ep, (struct sockaddr *)&local, (struct sockaddr *)&remote,
                                     S.pub, &ccbs, NULL, &cconn),
                 0);
    end = uv_now(&loop) + 30000;
    while (!(fin && dgram_back) && !closed && uv_now(&loop) < end)
        run_until(&done_all, 50);
    CHECK(ready);
    CHECK(peer_key_ok);
    CHECK(fin);
    CHECK(dgram_back);
    CHECK_INT_EQ(received, PAYLOAD);
    CHECK_INT_EQ(echoed, PAYLOAD);
    CHECK_INT_EQ(mismatches, 0);
    struct tun_relay_server_stats st;
    tun_relay_server_stats(relay, &st);
    CHECK(st.datagrams > 100); /* it really went through the relay */

    /* A disco packet through the relay reaches on_disco, not QUIC. */
    uint8_t shared[32], pkt[512];
    CHECK_INT_EQ(tun_disco_shared_key(shared, C.secret, S.pub), 0);
    struct tun_disco_msg m = {.type = TUN_DISCO_PING};
    CHECK_INT_EQ(tun_disco_new_txid(m.txid), 0);
    int pl = tun_disco_seal(pkt, sizeof(pkt), C.pub, shared, &m);
    CHECK(pl > 0);
    CHECK_INT_EQ(tun_relaypath_send(C.rp, S.pub, pkt, (size_t)pl), 0);
    end = uv_now(&loop) + 5000;
    while (!S.discos && uv_now(&loop) < end)
        run_until(&S.discos, 50);
    CHECK_INT_EQ(S.discos, 1);
    CHECK_MEM_EQ(S.disco_src, C.pub, 32);

    tun_qconn_close(cconn, 0, "done");
    run_until(&closed, 2000);

    /* A full table: every client brings a fresh key, so addresses must be recycled. The server
     * already knows the client's key; fill the rest with strangers. */
    uint8_t keys[TUN_RELAYPATH_MAX_PEERS][32];
    struct sockaddr_storage first_remote;
    int full = 0;
    for (int i = 0; i < TUN_RELAYPATH_MAX_PEERS; i++) {
        randombytes_buf(keys[i], 32);
        int rc = tun_relaypath_addr(S.rp, keys[i], &l2, &r2);
        if (i == 0)
            first_remote = r2;
        if (rc == TUN_ERANGE) {
            full = i;
            break;
        }
        CHECK_INT_EQ(rc, 0);
    }
    CHECK_INT_EQ(full, TUN_RELAYPATH_MAX_PEERS - 1); /* the client's key took one slot */
    /* Everyone was heard from just now: no address to give. */
    CHECK_INT_EQ(tun_relaypath_addr(S.rp, keys[full], &l2, &r2), TUN_ERANGE);
    /* Once peers are silent long enough, the least recently used address goes to the new key
     * (here the client's, the oldest), and maps back to it. */
    tun_relaypath_set_recycle_ms(S.rp, 1);
    uv_sleep(5);
    uv_update_time(&loop);
    CHECK_INT_EQ(tun_relaypath_addr(S.rp, keys[full], &l2, &r2), 0);
    CHECK_INT_EQ(tun_relaypath_key(S.rp, (struct sockaddr *)&r2, k), 0);
    CHECK_MEM_EQ(k, keys[full], 32);
    /* Known keys keep their address; the next newcomer takes the next oldest (keys[0]'s). */
    struct sockaddr_storage again;
    CHECK_INT_EQ(tun_relaypath_addr(S.rp, keys[full], &l2, &again), 0);
    CHECK(memcmp(&again, &r2, sizeof(r2)) == 0);
    uint8_t newcomer[32];
    randombytes_buf(newcomer, 32);
    uv_sleep(5);
    uv_update_time(&loop);
    CHECK_INT_EQ(tun_relaypath_addr(S.rp, newcomer, &l2, &again), 0);
    CHECK(memcmp(&again, &first_remote, sizeof(again)) == 0);
    CHECK_INT_EQ(tun_relaypath_key(S.rp, (struct sockaddr *)&first_remote, k), 0);
    CHECK_MEM_EQ(k, newcomer, 32);

    tun_relaypath_free(C.rp);
    tun_relaypath_free(S.rp);
    tun_qep_close(C.ep, 0, NULL, NULL);
    tun_qep_close(S.ep, 0, NULL, NULL);
    tun_relay_server_close(relay, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    return TEST_DONE();
}
