/* QUIC endpoints on loopback in one process: handshake with pinned raw keys, a stream echo
 * with FIN both ways, datagrams, backpressure on a fast writer, streams taking turns, and the
 * identity-mismatch failure. */
#include "quic/quic.h"
#include "quic/internal.h" /* tun_sockaddr_equal */
#include "util/error.h"
#include "test.h"

#include <arpa/inet.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAYLOAD (4u << 20)

struct ctx {
    uv_loop_t *loop;
    struct tun_qep *srv, *cli;
    struct tun_qconn *cconn, *sconn;       /* sconn: the server's, once it has a stream */
    struct tun_qconn_cbs srv_conn_cbs;     /* for the server's connections (setup_with) */
    struct tun_qstream_cbs srv_stream_cbs; /* for every stream the server accepts */
    uint8_t srv_pub[32], cli_seen_srv[32];
    size_t echoed, received, mismatches;
    int srv_fin, cli_fin, ready, closed, dgram_back, srv_saw_client_key;
    struct tun_qclose_info why;
    int endpoints_closed;
    struct tun_udp_stats cli_udp, srv_udp; /* when the client's connection closed */
};

static uint8_t pattern(size_t i)
{
    return (uint8_t)(i * 31 + (i >> 11));
}

/* --- server: echo every stream and datagram back --- */
static void srv_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    struct ctx *x = ud;
    /* Half the echo goes through the in-place API a socket read uses (splice.c), in pieces
     * that leave chunks short; the other half through tun_qstream_write. */
    if ((x->echoed / 65536) % 2) {
        tun_qstream_write(s, d, n);
    } else {
        for (size_t done = 0; done < n;) {
            uint8_t *buf;
            size_t room, k;
            CHECK_INT_EQ(tun_qstream_reserve(s, 3000, &buf, &room), 0);
            CHECK(room >= 3000);
            k = n - done < room ? n - done : room;
            if (k > 2999)
                k = 2999;
            memcpy(buf, d + done, k);
            CHECK(tun_qstream_commit(s, k) >= 0);
            done += k;
        }
    }
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
/* The server side of setup_with: its connections and streams get the callbacks kept in the
 * ctx (the first member of `ud`). */
static void any_srv_stream(struct tun_qconn *c, struct tun_qstream *s, void *ud)
{
    struct ctx *x = ud;
    x->sconn = c;
    tun_qstream_set_cbs(s, &x->srv_stream_cbs, ud);
}
static void any_srv_conn(struct tun_qep *ep, struct tun_qconn *c, void *ud)
{
    (void)ep;
    struct tun_qconn_cbs cbs = ((struct ctx *)ud)->srv_conn_cbs;
    cbs.on_stream = any_srv_stream;
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
    tun_qep_get_udp_stats(x->cli, &x->cli_udp);
    tun_qep_get_udp_stats(x->srv, &x->srv_udp);
    tun_qep_close(x->cli, 0, ep_closed, x);
    tun_qep_close(x->srv, 0, ep_closed, x);
}

/* Two endpoints on loopback and a connection from one to the other; `ud` (whose first member
 * is the ctx) goes to every callback. The server's connections get `scbs` (its on_stream is
 * ours) and its streams `sscbs`; the client's connection gets `ccbs`. */
static void setup_with(struct ctx *x, uv_loop_t *loop, const uint8_t *pin,
                       const struct tun_qconn_cbs *scbs, const struct tun_qstream_cbs *sscbs,
                       const struct tun_qconn_cbs *ccbs, void *ud)
{
    memset(x, 0, sizeof(*x));
    x->loop = loop;
    if (scbs)
        x->srv_conn_cbs = *scbs;
    x->srv_stream_cbs = *sscbs;
    uint8_t ssec[32], csec[32], sk[64];
    randombytes_buf(ssec, 32);
    randombytes_buf(csec, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(x->srv_pub, sk, ssec), 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    struct tun_qep_cbs epcbs = {.on_conn = any_srv_conn};
    CHECK_INT_EQ(tun_qep_new(loop, (struct sockaddr *)&a, ssec, 1, NULL, &epcbs, ud, &x->srv), 0);
    CHECK_INT_EQ(tun_qep_new(loop, (struct sockaddr *)&a, csec, 0, NULL, NULL, ud, &x->cli), 0);
    struct sockaddr_storage sa;
    tun_qep_local_addr(x->srv, &sa);
    CHECK_INT_EQ(tun_qep_connect(x->cli, (struct sockaddr *)&sa, pin ? pin : x->srv_pub, ccbs, ud,
                                 &x->cconn),
                 0);
}

static void setup(struct ctx *x, uv_loop_t *loop, const uint8_t *pin)
{
    struct tun_qconn_cbs ccbs = {
        .on_ready = cli_ready, .on_datagram = cli_dgram, .on_closed = cli_closed};
    struct tun_qconn_cbs scbs = {.on_ready = srv_ready, .on_datagram = srv_dgram};
    struct tun_qstream_cbs sscbs = {.on_data = srv_data, .on_fin = srv_fin};
    setup_with(x, loop, pin, &scbs, &sscbs, &ccbs, x);
}

/* Connect, hand the ready connection to `ready` (with `ud`, whose first member is `x`), run until
 * it closed the connection, and check that everything shut down. */
static void run_ready(struct ctx *x, void (*ready)(struct tun_qconn *, void *), void *ud)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    setup(x, &loop, NULL);
    struct tun_qconn_cbs ccbs = {.on_ready = ready, .on_closed = cli_closed};
    tun_qconn_set_cbs(x->cconn, &ccbs, ud);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(x->closed);
    CHECK_INT_EQ(x->endpoints_closed, 2);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
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
    if (!(x.closed && x.why.local && x.why.app))
        fprintf(stderr, "closed: local=%d app=%d code=%llu err=%d reason=%s\n", x.why.local,
                x.why.app, (unsigned long long)x.why.code, x.why.err, x.why.reason);
    CHECK_INT_EQ(x.endpoints_closed, 2);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    /* After the handshake each side sent and received through a socket connected to the other
     * (net/udp.c, tun_udp_connect); the client's closed with its connection, the server's
     * stays until its connection has finished closing. */
    CHECK_INT_EQ(x.cli_udp.conns_opened, 1);
    CHECK_INT_EQ(x.cli_udp.conns, 0);
    CHECK_INT_EQ(x.srv_udp.conns_opened, 1);
    CHECK_INT_EQ(x.srv_udp.conns, 1);
    /* Nearly everything: 4 MiB each way is about 3,000 packets; only the handshake's (and
     * what left before the connection's first flush after it) went through the main socket. */
    CHECK(x.cli_udp.tx_conn > 2500 && x.cli_udp.tx_conn + 30 > x.cli_udp.tx_packets);
    CHECK(x.cli_udp.rx_conn > 2500 && x.cli_udp.rx_conn + 30 > x.cli_udp.rx_packets);
    CHECK(x.srv_udp.tx_conn > 2500 && x.srv_udp.tx_conn + 30 > x.srv_udp.tx_packets);
    CHECK(x.srv_udp.rx_conn > 2500 && x.srv_udp.rx_conn + 30 > x.srv_udp.rx_packets);
}

/* Without connected sockets (TUNNEL_NO_UDP_CONNECT=1) everything goes through the endpoint's
 * socket, as before. */
static void test_echo_unconnected(void)
{
    setenv("TUNNEL_NO_UDP_CONNECT", "1", 1);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct ctx x;
    setup(&x, &loop, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    unsetenv("TUNNEL_NO_UDP_CONNECT");
    CHECK_INT_EQ(x.received, PAYLOAD);
    CHECK_INT_EQ(x.mismatches, 0);
    CHECK(x.dgram_back);
    CHECK_INT_EQ(x.cli_udp.conns_opened, 0);
    CHECK_INT_EQ(x.srv_udp.conns_opened, 0);
    CHECK_INT_EQ(x.cli_udp.rx_conn + x.srv_udp.rx_conn + x.cli_udp.tx_conn + x.srv_udp.tx_conn, 0);
    CHECK_INT_EQ(x.endpoints_closed, 2);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

/* --- request/response: the answer carries the ACK (conn.c, hold_ack) ---
 * The server answers each 64-byte message at once; the client sends the next one when the
 * answer is in. Each side should send one packet per round trip, not two (one ACK-only). At
 * the end the client sends a message that gets no answer: it must still be acknowledged. */
#define PP_ROUNDS 300
#define PP_SKIP   20 /* round trips left out of the count: handshake, first RTT samples */

struct pp {
    struct ctx x;
    struct tun_qstream *s;
    int rounds, got, silent;
    uint64_t ctx0, stx0, ctx1, stx1;
    uint64_t in_flight_after;
    uv_timer_t t;
};

static void pp_srv_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    struct pp *p = ud;
    tun_qstream_consume(s, n);
    if (!p->silent)
        tun_qstream_write(s, d, n);
}
static uint64_t pp_tx(struct tun_qconn *c)
{
    struct tun_qconn_stats st;
    tun_qconn_get_stats(c, &st);
    return st.tx_packets;
}
static void pp_send(struct pp *p)
{
    uint8_t msg[64];
    memset(msg, p->rounds & 0xff, sizeof(msg));
    tun_qstream_write(p->s, msg, sizeof(msg));
}
static void pp_done_cb(uv_timer_t *t)
{
    struct pp *p = t->data;
    struct tun_qconn_stats st;
    tun_qconn_get_stats(p->x.cconn, &st);
    p->in_flight_after = st.bytes_in_flight;
    uv_close((uv_handle_t *)&p->t, NULL);
    tun_qconn_close(p->x.cconn, 0, "done");
}
static void pp_cli_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    (void)d;
    struct pp *p = ud;
    tun_qstream_consume(s, n);
    p->got += (int)n;
    if (p->got < 64)
        return;
    p->got = 0;
    p->rounds++;
    if (p->rounds == PP_SKIP) {
        p->ctx0 = pp_tx(p->x.cconn);
        p->stx0 = pp_tx(p->x.sconn);
    }
    if (p->rounds == PP_SKIP + PP_ROUNDS) {
        p->ctx1 = pp_tx(p->x.cconn);
        p->stx1 = pp_tx(p->x.sconn);
        /* A last message without an answer: its ACK must come on its own. */
        p->silent = 1;
        pp_send(p);
        uv_timer_init(p->x.loop, &p->t);
        p->t.data = p;
        uv_timer_start(&p->t, pp_done_cb, 100, 0);
        return;
    }
    pp_send(p);
}
static void pp_cli_ready(struct tun_qconn *c, void *ud)
{
    struct pp *p = ud;
    CHECK_INT_EQ(tun_qconn_open_stream(c, &p->s), 0);
    struct tun_qstream_cbs cbs = {.on_data = pp_cli_data};
    tun_qstream_set_cbs(p->s, &cbs, ud);
    pp_send(p);
}

static void test_pingpong(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct pp p;
    memset(&p, 0, sizeof(p));
    struct ctx *x = &p.x;
    struct tun_qconn_cbs ccbs = {.on_ready = pp_cli_ready, .on_closed = cli_closed};
    struct tun_qstream_cbs sscbs = {.on_data = pp_srv_data};
    setup_with(x, &loop, NULL, NULL, &sscbs, &ccbs, &p);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(p.rounds, PP_SKIP + PP_ROUNDS);
    uint64_t c = p.ctx1 - p.ctx0, sv = p.stx1 - p.stx0;
    /* One packet per round trip each way, plus a few (key updates, flow-control credit). With
     * a separate ACK per message it would be two. */
    if (c > PP_ROUNDS * 11 / 10 || sv > PP_ROUNDS * 11 / 10)
        fprintf(stderr, "ping-pong: %d round trips, client sent %llu packets, server %llu\n",
                PP_ROUNDS, (unsigned long long)c, (unsigned long long)sv);
    CHECK(c <= PP_ROUNDS * 11 / 10);
    CHECK(sv <= PP_ROUNDS * 11 / 10);
    CHECK_INT_EQ(p.in_flight_after, 0); /* the unanswered message was acknowledged */
    CHECK(x->closed);
    CHECK_INT_EQ(x->endpoints_closed, 2);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

/* --- backlog: a fast writer is told to wait once a megabyte waits unsent ---
 * The send window (4 MiB here) is far from used when the stream reports full: what is read
 * ahead of the pacer stays in the kernel, where it does not go cold (stream.c, unsent()). */
#define BL_TOTAL (12u << 20)
#define BL_BLOCK (64u << 10)

struct bl {
    struct ctx x;
    struct tun_qstream *s;
    uint8_t block[BL_BLOCK];
    size_t written, first_full, received, resumes, max_unsent, bad_resumes;
};

static void bl_srv_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    (void)d;
    struct bl *b = ud;
    b->received += n;
    tun_qstream_consume(s, n);
}
/* Write blocks until the stream reports full or everything is written. */
static void bl_fill(struct bl *b)
{
    while (b->written < BL_TOTAL) {
        int full = tun_qstream_write(b->s, b->block, BL_BLOCK);
        CHECK(full >= 0);
        b->written += BL_BLOCK;
        size_t unsent = (size_t)(b->s->written - b->s->sent);
        if (unsent > b->max_unsent)
            b->max_unsent = unsent;
        if (full == 1) {
            if (!b->first_full)
                b->first_full = b->written;
            return;
        }
    }
    tun_qstream_finish(b->s);
}
static void bl_writable(struct tun_qstream *s, void *ud)
{
    struct bl *b = ud;
    b->resumes++;
    if (s->written - s->sent > TUN_QSTREAM_UNSENT_MAX / 2)
        b->bad_resumes++;
    bl_fill(b);
}
static void bl_cli_fin(struct tun_qstream *s, void *ud)
{
    (void)s;
    struct bl *b = ud;
    tun_qconn_close(b->x.cconn, 0, "done");
}
static void bl_cli_ready(struct tun_qconn *c, void *ud)
{
    struct bl *b = ud;
    CHECK_INT_EQ(tun_qconn_open_stream(c, &b->s), 0);
    struct tun_qstream_cbs cbs = {.on_writable = bl_writable, .on_fin = bl_cli_fin};
    tun_qstream_set_cbs(b->s, &cbs, ud);
    bl_fill(b);
}

static void test_backlog(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct bl *b = calloc(1, sizeof(*b));
    struct ctx *x = &b->x;
    struct tun_qconn_cbs ccbs = {.on_ready = bl_cli_ready, .on_closed = cli_closed};
    struct tun_qstream_cbs sscbs = {.on_data = bl_srv_data, .on_fin = srv_fin};
    setup_with(x, &loop, NULL, NULL, &sscbs, &ccbs, b);
    CHECK(x->cli->cfg.stream_send_buffer >= 4 * TUN_QSTREAM_UNSENT_MAX);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* Full came at the unsent limit, long before the send window, and at most a block over. */
    CHECK(b->first_full >= TUN_QSTREAM_UNSENT_MAX);
    CHECK(b->first_full <= TUN_QSTREAM_UNSENT_MAX + BL_BLOCK);
    CHECK(b->max_unsent <= TUN_QSTREAM_UNSENT_MAX + BL_BLOCK);
    /* The writer was woken again each time half the backlog had gone, and all of it arrived. */
    CHECK(b->resumes >= BL_TOTAL / TUN_QSTREAM_UNSENT_MAX - 1);
    CHECK_INT_EQ(b->bad_resumes, 0);
    CHECK_INT_EQ(b->written, BL_TOTAL);
    CHECK_INT_EQ(b->received, BL_TOTAL);
    CHECK(x->closed);
    CHECK_INT_EQ(x->endpoints_closed, 2);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    free(b);
}

/* --- fairness: streams with data to send take turns, a packet at a time ---
 * Three streams written at once: when the first has all arrived, so has most of the others.
 * First come, first served would deliver them one after the other. */
#define FR_STREAMS 3
#define FR_BYTES   (2u << 20)

struct fr {
    struct ctx x;
    size_t got[FR_STREAMS], at_first_done[FR_STREAMS];
    int done, finished;
};

static void fr_srv_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    (void)d;
    struct fr *f = ud;
    int64_t i = tun_qstream_id(s) / 4;
    CHECK(i >= 0 && i < FR_STREAMS);
    if (i < 0 || i >= FR_STREAMS)
        return;
    f->got[i] += n;
    if (f->got[i] == FR_BYTES && !f->done) {
        f->done = 1;
        memcpy(f->at_first_done, f->got, sizeof(f->got));
    }
    tun_qstream_consume(s, n);
}
static void fr_srv_fin(struct tun_qstream *s, void *ud)
{
    struct fr *f = ud;
    tun_qstream_finish(s);
    if (++f->finished == FR_STREAMS)
        tun_qconn_close(tun_qstream_conn(s), 0, "done");
}
static void fr_cli_ready(struct tun_qconn *c, void *ud)
{
    (void)ud;
    uint8_t *buf = calloc(1, FR_BYTES);
    for (int i = 0; i < FR_STREAMS; i++) {
        struct tun_qstream *s;
        CHECK_INT_EQ(tun_qconn_open_stream(c, &s), 0);
        CHECK(tun_qstream_write(s, buf, FR_BYTES) >= 0);
        tun_qstream_finish(s);
    }
    free(buf);
}

static void test_fair(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fr f;
    memset(&f, 0, sizeof(f));
    struct tun_qconn_cbs ccbs = {.on_ready = fr_cli_ready};
    struct tun_qconn_cbs scbs = {.on_closed = cli_closed};
    struct tun_qstream_cbs sscbs = {.on_data = fr_srv_data, .on_fin = fr_srv_fin};
    setup_with(&f.x, &loop, NULL, &scbs, &sscbs, &ccbs, &f);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(f.done);
    for (int i = 0; i < FR_STREAMS; i++) {
        CHECK_INT_EQ(f.got[i], FR_BYTES);
        if (f.at_first_done[i] < FR_BYTES * 3 / 4)
            fprintf(stderr, "fair: stream %d had %zu of %u bytes when the first was done\n", i,
                    f.at_first_done[i], FR_BYTES);
        CHECK(f.at_first_done[i] >= FR_BYTES * 3 / 4);
    }
    CHECK(f.x.closed);
    CHECK_INT_EQ(f.x.endpoints_closed, 2);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

/* --- the unsent megabyte is shared by the streams waiting to send --- */
static void share_ready(struct tun_qconn *c, void *ud)
{
    (void)ud;
    static uint8_t block[64 << 10];
    struct tun_qstream *s[4];
    size_t at_full[4] = {0}, written[4] = {0};
    for (int i = 0; i < 4; i++)
        CHECK_INT_EQ(tun_qconn_open_stream(c, &s[i]), 0);
    /* Nothing is sent while this callback runs: written bytes are unsent bytes. */
    for (int round = 0; round < 32; round++)
        for (int i = 0; i < 4; i++)
            if (!at_full[i]) {
                written[i] += sizeof(block);
                if (tun_qstream_write(s[i], block, sizeof(block)) == 1)
                    at_full[i] = written[i];
            }
    for (int i = 0; i < 4; i++)
        CHECK_INT_EQ(at_full[i], TUN_QSTREAM_UNSENT_MAX / 4);
    tun_qconn_close(c, 0, "done");
}

static void test_share(void)
{
    struct ctx x;
    run_ready(&x, share_ready, &x);
}

/* tun_qstream_reserve/commit: an empty reservation leaves no chunk behind. */
static void rs_ready(struct tun_qconn *c, void *ud)
{
    struct ctx *x = ud;
    struct tun_qstream *s;
    CHECK_INT_EQ(tun_qconn_open_stream(c, &s), 0);
    size_t free0 = x->cli->nfree_chunks;
    uint8_t *buf;
    size_t room;
    CHECK_INT_EQ(tun_qstream_reserve(s, 1, &buf, &room), 0);
    CHECK(s->head != NULL && room == SBUF_CHUNK);
    CHECK_INT_EQ(tun_qstream_commit(s, 0), 0); /* EAGAIN: nothing read */
    CHECK(s->head == NULL && s->tail == NULL);
    CHECK_INT_EQ(x->cli->nfree_chunks, free0 + (free0 < 64 ? 1 : 0));
    CHECK_INT_EQ(tun_qstream_buffered(s), 0);
    /* Room below `min` at the end starts a new chunk; the short one keeps its bytes. */
    CHECK_INT_EQ(tun_qstream_reserve(s, 1, &buf, &room), 0);
    memset(buf, 'a', room - 10);
    CHECK_INT_EQ(tun_qstream_commit(s, room - 10), 0);
    CHECK_INT_EQ(tun_qstream_reserve(s, 100, &buf, &room), 0);
    CHECK(s->head != s->tail && room == SBUF_CHUNK);
    CHECK_INT_EQ(tun_qstream_commit(s, 5), 0);
    CHECK_INT_EQ(tun_qstream_buffered(s), SBUF_CHUNK - 10 + 5);
    tun_qstream_finish(s);
    CHECK_INT_EQ(tun_qstream_reserve(s, 1, &buf, &room), TUN_ECLOSED);
    tun_qconn_close(c, 0, "done");
}

static void test_reserve(void)
{
    struct ctx x;
    run_ready(&x, rs_ready, &x);
}

/* Stream operations (credit, reset) are queued per stream: a flush visits only the streams
 * queued, however many are open. */
struct ops {
    struct ctx x;
    struct tun_qconn *c;
    struct tun_qstream *s[50];
    uv_timer_t t;
};
static size_t ops_len(struct tun_qconn *c)
{
    size_t n = 0;
    for (struct tun_qstream *s = c->ops; s; s = s->ops_next)
        n++;
    return n;
}
static void ops_check_cb(uv_timer_t *t)
{
    struct ops *o = t->data;
    CHECK_INT_EQ(ops_len(o->c), 0); /* the flush after on_ready applied them */
    CHECK(!o->s[7]->in_ops && o->s[7]->consume_pending == 0);
    /* A queued stream that goes away leaves the queue. */
    tun_qstream_consume(o->s[20], 0);
    tun_qstream_consume(o->s[30], 0);
    CHECK_INT_EQ(ops_len(o->c), 2);
    uv_close((uv_handle_t *)t, NULL);
    tun_qconn_close(o->c, 0, "done"); /* frees the streams, queued or not */
}
static void ops_ready(struct tun_qconn *c, void *ud)
{
    struct ops *o = ud;
    o->c = c;
    for (int i = 0; i < 50; i++)
        CHECK_INT_EQ(tun_qconn_open_stream(c, &o->s[i]), 0);
    CHECK_INT_EQ(ops_len(c), 0);
    tun_qstream_consume(o->s[7], 100);
    tun_qstream_consume(o->s[7], 50);
    CHECK_INT_EQ(ops_len(c), 1);
    CHECK(c->ops == o->s[7] && o->s[7]->consume_pending == 150);
    tun_qstream_reset(o->s[9], 5);
    CHECK_INT_EQ(ops_len(c), 2);
    uv_timer_init(o->x.loop, &o->t);
    o->t.data = o;
    uv_timer_start(&o->t, ops_check_cb, 0, 0);
}

static void test_ops(void)
{
    struct ops o;
    memset(&o, 0, sizeof(o));
    run_ready(&o.x, ops_ready, &o);
}

/* --- dialling a port where nothing listens: the host's ICMP port unreachable, learnt through
 * the client's connected socket, ends the attempt after a retransmission instead of at the
 * handshake timeout; a server that comes up before the retransmission is still reached. --- */

static struct sockaddr_in free_udp_port(void)
{
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(fd >= 0);
    socklen_t len = sizeof(a);
    CHECK_INT_EQ(bind(fd, (struct sockaddr *)&a, len), 0);
    CHECK_INT_EQ(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return a;
}

static void unreach_closed(struct tun_qconn *c, const struct tun_qclose_info *why, void *ud)
{
    struct ctx *x = ud;
    (void)c;
    x->closed = 1;
    x->why = *why;
    tun_qep_close(x->cli, 0, ep_closed, x);
}

static void test_port_unreachable(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct ctx x;
    memset(&x, 0, sizeof(x));
    uint8_t csec[32], key[32];
    randombytes_buf(csec, 32);
    randombytes_buf(key, 32);
    struct sockaddr_in any, to = free_udp_port();
    uv_ip4_addr("127.0.0.1", 0, &any);
    CHECK_INT_EQ(tun_qep_new(&loop, (struct sockaddr *)&any, csec, 0, NULL, NULL, &x, &x.cli), 0);
    struct tun_qconn_cbs ccbs = {.on_closed = unreach_closed};
    CHECK_INT_EQ(tun_qep_connect(x.cli, (struct sockaddr *)&to, key, &ccbs, &x, &x.cconn), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(x.closed);
    CHECK_INT_EQ(x.why.err, UV_ECONNREFUSED);
    CHECK(x.why.local);
    CHECK(strstr(x.why.reason, "nothing is listening on that port") != NULL);
    CHECK_INT_EQ(x.endpoints_closed, 1);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

struct late {
    struct ctx x; /* first: the server callbacks take it */
    uv_timer_t t;
    struct sockaddr_in addr;
    uint8_t ssec[32];
};

static void late_server_cb(uv_timer_t *t)
{
    struct late *l = t->data;
    struct tun_qep_cbs epcbs = {.on_conn = any_srv_conn};
    CHECK_INT_EQ(tun_qep_new(l->x.loop, (struct sockaddr *)&l->addr, l->ssec, 1, NULL, &epcbs,
                             &l->x, &l->x.srv),
                 0);
    uv_close((uv_handle_t *)t, NULL);
}

static void late_ready(struct tun_qconn *c, void *ud)
{
    ((struct ctx *)ud)->ready = 1;
    tun_qconn_close(c, 0, "done");
}

static void test_server_starts_late(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    static struct late l;
    memset(&l, 0, sizeof(l));
    l.x.loop = &loop;
    struct tun_qstream_cbs sscbs = {.on_data = srv_data, .on_fin = srv_fin};
    l.x.srv_stream_cbs = sscbs;
    uint8_t csec[32], sk[64];
    randombytes_buf(l.ssec, 32);
    randombytes_buf(csec, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(l.x.srv_pub, sk, l.ssec), 0);
    struct sockaddr_in any;
    uv_ip4_addr("127.0.0.1", 0, &any);
    l.addr = free_udp_port();
    CHECK_INT_EQ(tun_qep_new(&loop, (struct sockaddr *)&any, csec, 0, NULL, NULL, &l.x, &l.x.cli),
                 0);
    struct tun_qconn_cbs ccbs = {.on_ready = late_ready, .on_closed = cli_closed};
    CHECK_INT_EQ(
        tun_qep_connect(l.x.cli, (struct sockaddr *)&l.addr, l.x.srv_pub, &ccbs, &l.x, &l.x.cconn),
        0);
    /* The first Initial is refused; the server is up long before the retransmission (the
     * first PTO of a handshake is about a second). */
    uv_timer_init(&loop, &l.t);
    l.t.data = &l;
    uv_timer_start(&l.t, late_server_cb, 100, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(l.x.ready);
    CHECK(l.x.closed && l.x.why.local && l.x.why.app);
    CHECK_INT_EQ(l.x.endpoints_closed, 2);
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

/* --- migration to a relayed path: packets for synthetic addresses go through a queue that an
 * idle handle delivers to the other endpoint, as a relay would. --- */

struct pkt {
    struct pkt *next;
    int to_server;
    size_t len;
    uint8_t data[1500];
};

struct mig {
    uv_loop_t *loop;
    struct tun_qep *srv, *cli;
    struct tun_qconn *cconn, *sconn;
    uint8_t srv_pub[32];
    struct sockaddr_in cli_syn, srv_syn;
    struct pkt *q, *qtail;
    uv_idle_t relay;
    uv_timer_t later; /* runs what must not happen inside a (sync) callback */
    size_t phase_bytes[2];
    int phase, relayed[2], done, mig_rc, eps_closed;
    struct sockaddr_storage cli_path_local, srv_remote;
    struct tun_udp_stats cli_udp[2]; /* at the end of each phase */
};

static void relay_cb(uv_idle_t *h)
{
    struct mig *m = h->data;
    struct pkt *p = m->q;
    m->q = m->qtail = NULL;
    while (p) {
        struct pkt *next = p->next;
        if (p->to_server)
            tun_qep_input(m->srv, (struct sockaddr *)&m->srv_syn, (struct sockaddr *)&m->cli_syn,
                          p->data, p->len);
        else
            tun_qep_input(m->cli, (struct sockaddr *)&m->cli_syn, (struct sockaddr *)&m->srv_syn,
                          p->data, p->len);
        m->relayed[p->to_server]++;
        free(p);
        p = next;
    }
}

static int path_send(struct mig *m, int to_server, const uint8_t *data, size_t len)
{
    struct pkt *p = malloc(sizeof(*p));
    if (!p || len > sizeof(p->data)) {
        free(p);
        return -1;
    }
    p->next = NULL;
    p->to_server = to_server;
    p->len = len;
    memcpy(p->data, data, len);
    if (m->qtail)
        m->qtail->next = p;
    else
        m->q = p;
    m->qtail = p;
    return 0;
}

static int cli_path_send(void *ud, const struct sockaddr *local, const struct sockaddr *remote,
                         const uint8_t *data, size_t len)
{
    (void)local;
    (void)remote;
    return path_send(ud, 1, data, len);
}

static int srv_path_send(void *ud, const struct sockaddr *local, const struct sockaddr *remote,
                         const uint8_t *data, size_t len)
{
    (void)local;
    (void)remote;
    return path_send(ud, 0, data, len);
}

static void mig_start_phase(struct mig *m);

static void mig_ep_closed(void *ud)
{
    struct mig *m = ud;
    if (++m->eps_closed == 2) {
        uv_close((uv_handle_t *)&m->relay, NULL);
        uv_close((uv_handle_t *)&m->later, NULL);
    }
}

static void mig_later_cb(uv_timer_t *t)
{
    struct mig *m = t->data;
    if (m->phase == 1 && !m->done) {
        m->mig_rc = tun_qconn_migrate(m->cconn, (struct sockaddr *)&m->cli_syn,
                                      (struct sockaddr *)&m->srv_syn, 1);
        mig_start_phase(m);
    } else if (m->done) {
        tun_qep_close(m->cli, 0, mig_ep_closed, m);
        tun_qep_close(m->srv, 0, mig_ep_closed, m);
    }
}

static void mig_cli_data(struct tun_qstream *s, const uint8_t *d, size_t n, void *ud)
{
    struct mig *m = ud;
    (void)d;
    m->phase_bytes[m->phase] += n;
    tun_qep_get_udp_stats(m->cli, &m->cli_udp[m->phase]);
    tun_qstream_consume(s, n);
}

static void mig_cli_fin(struct tun_qstream *s, void *ud)
{
    struct mig *m = ud;
    (void)s;
    if (m->phase == 0) {
        /* First stream echoed over UDP: move to the relayed path (outside this callback),
         * then echo again. */
        m->phase = 1;
    } else {
        struct sockaddr_storage l, r;
        tun_qconn_path(m->cconn, &l, &r);
        m->cli_path_local = l;
        memcpy(&m->srv_remote, tun_qconn_remote(m->sconn), sizeof(struct sockaddr_in));
        m->done = 1;
    }
    uv_timer_start(&m->later, mig_later_cb, 0, 0);
}

static void mig_start_phase(struct mig *m)
{
    struct tun_qstream *s;
    CHECK_INT_EQ(tun_qconn_open_stream(m->cconn, &s), 0);
    struct tun_qstream_cbs cbs = {.on_data = mig_cli_data, .on_fin = mig_cli_fin};
    tun_qstream_set_cbs(s, &cbs, m);
    static uint8_t buf[1 << 20];
    tun_qstream_write(s, buf, sizeof(buf));
    tun_qstream_finish(s);
}

static void mig_cli_ready(struct tun_qconn *c, void *ud)
{
    (void)c;
    mig_start_phase(ud);
}

static void mig_srv_conn(struct tun_qep *ep, struct tun_qconn *c, void *ud)
{
    (void)ep;
    struct mig *m = ud;
    m->sconn = c;
    struct tun_qconn_cbs cbs = {.on_stream = srv_stream};
    static struct ctx dummy;
    tun_qconn_set_cbs(c, &cbs, &dummy);
}

static void test_migration(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    static struct mig m;
    memset(&m, 0, sizeof(m));
    uint8_t ssec[32], csec[32], sk[64];
    randombytes_buf(ssec, 32);
    randombytes_buf(csec, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(m.srv_pub, sk, ssec), 0);
    uv_ip4_addr("100.127.0.1", 1, &m.cli_syn);
    uv_ip4_addr("100.127.0.2", 1, &m.srv_syn);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    struct tun_qep_cbs scbs = {.on_conn = mig_srv_conn};
    CHECK_INT_EQ(tun_qep_new(&loop, (struct sockaddr *)&a, ssec, 1, NULL, &scbs, &m, &m.srv), 0);
    CHECK_INT_EQ(tun_qep_new(&loop, (struct sockaddr *)&a, csec, 0, NULL, NULL, &m, &m.cli), 0);
    tun_qep_set_path_sender(m.cli, cli_path_send, &m);
    tun_qep_set_path_sender(m.srv, srv_path_send, &m);
    uv_idle_init(&loop, &m.relay);
    m.relay.data = &m;
    uv_idle_start(&m.relay, relay_cb);
    uv_timer_init(&loop, &m.later);
    m.later.data = &m;
    struct sockaddr_storage sa;
    tun_qep_local_addr(m.srv, &sa);
    struct tun_qconn_cbs ccbs = {.on_ready = mig_cli_ready};
    CHECK_INT_EQ(tun_qep_connect(m.cli, (struct sockaddr *)&sa, m.srv_pub, &ccbs, &m, &m.cconn), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(m.mig_rc, 0);
    CHECK(m.done);
    CHECK_INT_EQ(m.phase_bytes[0], 1 << 20);
    CHECK_INT_EQ(m.phase_bytes[1], 1 << 20);
    /* After the switch both directions went through the relay, and both ends see the new path. */
    CHECK(m.relayed[0] > 10 && m.relayed[1] > 10);
    CHECK(tun_sockaddr_equal((struct sockaddr *)&m.cli_path_local, (struct sockaddr *)&m.cli_syn));
    CHECK(tun_sockaddr_equal((struct sockaddr *)&m.srv_remote, (struct sockaddr *)&m.cli_syn));
    /* The connected socket served the direct path and closed when the path moved to the relay. */
    CHECK_INT_EQ(m.cli_udp[0].conns, 1);
    CHECK(m.cli_udp[0].rx_conn > 100);
    CHECK_INT_EQ(m.cli_udp[1].conns, 0);
    CHECK_INT_EQ(m.cli_udp[1].conns_opened, 1);
    while (m.q) {
        struct pkt *p = m.q;
        m.q = p->next;
        free(p);
    }
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

static void test_demux(void)
{
    /* A STUN Binding request: type 0x0001, length 0, the magic cookie, a transaction id. */
    uint8_t stun[20] = {0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42};
    CHECK(tun_qep_is_other(stun, sizeof(stun)));
    CHECK(!tun_qep_is_other(stun, 19));
    /* A short-header packet with the QUIC bit greased (first bits 00) is still QUIC. */
    uint8_t quic[40] = {0x03, 0x11, 0x22, 0x33, 0x44, 0x55};
    CHECK(!tun_qep_is_other(quic, sizeof(quic)));
    quic[0] = 0x43;
    CHECK(!tun_qep_is_other(quic, sizeof(quic)));
    /* Our connection IDs never put the cookie where a short header would show it. */
    for (int i = 0; i < 1000; i++) {
        uint8_t cid[16];
        tun__random_cid(cid, sizeof(cid));
        CHECK(!(cid[3] == 0x21 && cid[4] == 0x12 && cid[5] == 0xa4 && cid[6] == 0x42));
    }
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    test_demux();
    test_echo();
    test_echo_unconnected();
    test_port_unreachable();
    test_server_starts_late();
    test_pingpong();
    test_backlog();
    test_fair();
    test_share();
    test_reserve();
    test_ops();
    test_identity_mismatch();
    test_migration();
    return TEST_DONE();
}
