/*
 * discovery/client against an in-process relay with its pkarr store, on one loop: publish and
 * resolve, the cache, a newer record replacing the old one, 409 for an older one, 404 for an
 * unknown key, a server that is not there, several requests in flight, and a tiny fake HTTP
 * server that answers with a record signed by another key (refused by verification) or with an
 * older record than one already seen (refused as a rollback), or never answers (cancelled by
 * close without a callback).
 */
#include "discovery/client.h"
#include "relay/server.h"
#include "test.h"
#include "util/error.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uv_loop_t loop;

struct res {
    int done, err, cached;
    long status;
    char msg[512];
    struct tun_pkarr_record rec;
    uint64_t ts;
};

static void on_result(struct tun_disc_client *c, const struct tun_disc_result *r, void *ud)
{
    (void)c;
    struct res *x = ud;
    x->done++;
    x->err = r->err;
    x->status = r->status;
    x->cached = r->cached;
    snprintf(x->msg, sizeof(x->msg), "%s", r->message);
    if (r->record) {
        x->rec = *r->record;
        x->ts = r->timestamp;
    }
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

static uv_timer_t tick;

/* Run the loop until x->done or about 15 s of loop time (a bound, not a verdict). */
static int wait_done(struct res *x, int n)
{
    uv_timer_start(&tick, tick_cb, 10, 10);
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + 15000;
    while (x->done < n && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    return x->done >= n;
}

/* Run the loop until *flag reaches 0 (or about 15 s). */
static int wait_zero(const int *flag)
{
    uv_timer_start(&tick, tick_cb, 10, 10);
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + 15000;
    while (*flag && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    return *flag == 0;
}

/* ---- a fake discovery server ---------------------------------------------------------------- */

enum { FAKE_REPLY, FAKE_HANG };

struct fake {
    uv_tcp_t listener;
    int mode;
    uint8_t payload[TUN_PKARR_MAX_PAYLOAD];
    size_t payload_len;
    int requests;
    int open; /* accepted connections not yet closed */
};

struct fconn {
    uv_tcp_t tcp;
    struct fake *f;
    char head[4096];
    size_t len;
    int answered;
    char out[4096];
};

static void fconn_closed(uv_handle_t *h)
{
    struct fconn *fc = h->data;
    fc->f->open--;
    free(fc);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    struct fconn *fc = h->data;
    buf->base = fc->head + fc->len;
    buf->len = sizeof(fc->head) - fc->len - 1;
}

static void written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct fconn *fc = s->data;
    if (n < 0) {
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, fconn_closed);
        return;
    }
    fc->len += (size_t)n;
    fc->head[fc->len] = '\0';
    if (fc->answered || !strstr(fc->head, "\r\n\r\n"))
        return;
    fc->answered = 1;
    fc->f->requests++;
    if (fc->f->mode == FAKE_HANG)
        return;
    int hl = snprintf(fc->out, sizeof(fc->out),
                      "HTTP/1.1 200 OK\r\nContent-Type: application/pkarr.org/relays#payload\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      fc->f->payload_len);
    memcpy(fc->out + hl, fc->f->payload, fc->f->payload_len);
    uv_write_t *w = malloc(sizeof(*w));
    uv_buf_t b = uv_buf_init(fc->out, (unsigned)(hl + (int)fc->f->payload_len));
    uv_write(w, s, &b, 1, written);
}

static void on_conn(uv_stream_t *l, int status)
{
    if (status < 0)
        return;
    struct fake *f = l->data;
    struct fconn *fc = calloc(1, sizeof(*fc));
    fc->f = f;
    f->open++;
    uv_tcp_init(&loop, &fc->tcp);
    fc->tcp.data = fc;
    if (uv_accept(l, (uv_stream_t *)&fc->tcp) == 0)
        uv_read_start((uv_stream_t *)&fc->tcp, alloc_cb, read_cb);
    else
        uv_close((uv_handle_t *)&fc->tcp, fconn_closed);
}

static int fake_start(struct fake *f)
{
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_init(&loop, &f->listener);
    f->listener.data = f;
    CHECK_INT_EQ(uv_tcp_bind(&f->listener, (struct sockaddr *)&sa, 0), 0);
    CHECK_INT_EQ(uv_listen((uv_stream_t *)&f->listener, 16, on_conn), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&f->listener, (struct sockaddr *)&ss, &len);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* A callback that closes its own client, with another request still in flight. */
static struct tun_disc_client *closing_client;
static void close_in_cb(struct tun_disc_client *c, const struct tun_disc_result *r, void *ud)
{
    on_result(c, r, ud);
    tun_disc_client_close(c);
    closing_client = NULL;
}

/* ---- helpers --------------------------------------------------------------------------------- */

static void make_record(struct tun_pkarr_record *r, const char *relay, const char *ip4,
                        uint16_t port)
{
    memset(r, 0, sizeof(*r));
    r->ttl = TUN_PKARR_DEFAULT_TTL;
    r->n_relays = 1;
    snprintf(r->relays[0], sizeof(r->relays[0]), "%s", relay);
    r->n_addrs = 2;
    uv_ip4_addr(ip4, port, (struct sockaddr_in *)&r->addrs[0]);
    uv_ip6_addr("2001:db8::1", 7842, (struct sockaddr_in6 *)&r->addrs[1]);
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
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

static int same_record(const struct tun_pkarr_record *a, const struct tun_pkarr_record *b)
{
    if (a->n_relays != b->n_relays || a->n_addrs != b->n_addrs)
        return 0;
    for (size_t i = 0; i < a->n_relays; i++)
        if (strcmp(a->relays[i], b->relays[i]) != 0)
            return 0;
    for (size_t i = 0; i < a->n_addrs; i++)
        if (!same_addr(&a->addrs[i], &b->addrs[i]))
            return 0;
    return 1;
}

static void keypair(uint8_t secret[32], uint8_t pub[32])
{
    uint8_t sk[64];
    randombytes_buf(secret, 32);
    CHECK_INT_EQ(crypto_sign_seed_keypair(pub, sk, secret), 0);
}

static int server_closed;
static void on_server_closed(void *ud)
{
    (void)ud;
    server_closed = 1;
}

int main(void)
{
    CHECK_INT_EQ(sodium_init() >= 0, 1);
    CHECK_INT_EQ(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &tick);

    struct sockaddr_in listen;
    uv_ip4_addr("127.0.0.1", 0, &listen);
    struct tun_relay_server_cfg scfg = {.listen = (struct sockaddr *)&listen, .pkarr_capacity = 16};
    struct tun_relay_server *srv = NULL;
    CHECK_INT_EQ(tun_relay_server_new(&loop, &scfg, &srv), 0);
    struct sockaddr_storage ss;
    CHECK_INT_EQ(tun_relay_server_local_addr(srv, &ss), 0);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    char base[128];
    snprintf(base, sizeof(base), "http://127.0.0.1:%d/pkarr", port);

    struct tun_disc_client *c = NULL;
    CHECK_INT_EQ(tun_disc_client_new(&loop, NULL, &c), 0);

    uint8_t secret[32], pub[32];
    keypair(secret, pub);
    uint64_t t0 = (uint64_t)time(NULL) * 1000000u;
    struct tun_pkarr_record r1, r2;
    make_record(&r1, "http://relay-one.example/", "192.0.2.7", 41641);
    make_record(&r2, "https://relay-two.example/", "198.51.100.9", 5000);

    /* Misuse is refused without a callback. */
    struct res bad = {0};
    CHECK_INT_EQ(tun_disc_publish(c, "ftp://x/pkarr", secret, &r1, t0, on_result, &bad),
                 TUN_EINVAL);
    CHECK_INT_EQ(tun_disc_resolve(c, "http://", pub, 0, on_result, &bad), TUN_EINVAL);

    /* Publish, then resolve: the same record comes back. */
    struct res p1 = {0};
    CHECK_INT_EQ(tun_disc_publish(c, base, secret, &r1, t0, on_result, &p1), 0);
    CHECK_INT_EQ(p1.done, 0); /* never inside the call */
    CHECK(wait_done(&p1, 1));
    CHECK_INT_EQ(p1.err, 0);
    CHECK_INT_EQ(p1.status, 204);

    struct res g1 = {0};
    CHECK_INT_EQ(tun_disc_resolve(c, base, pub, 0, on_result, &g1), 0);
    CHECK(wait_done(&g1, 1));
    CHECK_INT_EQ(g1.err, 0);
    CHECK_INT_EQ(g1.status, 200);
    CHECK_INT_EQ(g1.cached, 0);
    CHECK(same_record(&g1.rec, &r1));
    CHECK(g1.ts == t0);
    CHECK_INT_EQ(g1.rec.ttl, TUN_PKARR_DEFAULT_TTL);

    /* A second resolve is answered from the cache, still asynchronously. */
    struct res g2 = {0};
    char base_slash[140];
    snprintf(base_slash, sizeof(base_slash), "%s/", base);
    CHECK_INT_EQ(tun_disc_resolve(c, base_slash, pub, 0, on_result, &g2), 0);
    CHECK_INT_EQ(g2.done, 0);
    CHECK(wait_done(&g2, 1));
    CHECK_INT_EQ(g2.err, 0);
    CHECK_INT_EQ(g2.cached, 1);
    CHECK(same_record(&g2.rec, &r1));

    /* A newer record replaces it; a fresh resolve shows it. */
    struct res p2 = {0};
    CHECK_INT_EQ(tun_disc_publish(c, base, secret, &r2, t0 + 1000000, on_result, &p2), 0);
    CHECK(wait_done(&p2, 1));
    CHECK_INT_EQ(p2.err, 0);
    struct res g3 = {0};
    CHECK_INT_EQ(tun_disc_resolve(c, base, pub, TUN_DISC_FRESH, on_result, &g3), 0);
    CHECK(wait_done(&g3, 1));
    CHECK_INT_EQ(g3.err, 0);
    CHECK_INT_EQ(g3.cached, 0);
    CHECK(same_record(&g3.rec, &r2));
    CHECK(!same_record(&g3.rec, &r1));
    CHECK(g3.ts == t0 + 1000000);

    /* An older timestamp: 409. */
    struct res p3 = {0};
    CHECK_INT_EQ(tun_disc_publish(c, base, secret, &r1, t0 + 500000, on_result, &p3), 0);
    CHECK(wait_done(&p3, 1));
    CHECK_INT_EQ(p3.err, TUN_EDENIED);
    CHECK_INT_EQ(p3.status, 409);
    CHECK(strstr(p3.msg, "at least as new") != NULL);

    /* A key nobody published: 404 with advice. */
    uint8_t secret2[32], pub2[32];
    keypair(secret2, pub2);
    struct res g4 = {0};
    CHECK_INT_EQ(tun_disc_resolve(c, base, pub2, 0, on_result, &g4), 0);
    CHECK(wait_done(&g4, 1));
    CHECK_INT_EQ(g4.err, UV_ENOENT);
    CHECK_INT_EQ(g4.status, 404);
    CHECK(strstr(g4.msg, "no record for this EndpointId") != NULL);
    CHECK(strstr(g4.msg, "is the server running and publishing to the same discovery server?"));

    /* Several requests in flight at once. */
    struct res many[6];
    memset(many, 0, sizeof(many));
    int total = 0;
    for (int i = 0; i < 6; i++)
        CHECK_INT_EQ(
            tun_disc_resolve(c, base, i % 2 ? pub2 : pub, TUN_DISC_FRESH, on_result, &many[i]), 0);
    for (int i = 0; i < 6; i++) {
        CHECK(wait_done(&many[i], 1));
        total += many[i].done;
        CHECK_INT_EQ(many[i].err, i % 2 ? UV_ENOENT : 0);
    }
    CHECK_INT_EQ(total, 6);

    /* A port where nothing listens: a connect error. */
    struct fake dead = {0};
    int dead_port = fake_start(&dead);
    uv_close((uv_handle_t *)&dead.listener, NULL);
    char dead_base[128];
    snprintf(dead_base, sizeof(dead_base), "http://127.0.0.1:%d/pkarr", dead_port);
    struct res g5 = {0};
    CHECK_INT_EQ(tun_disc_resolve(c, dead_base, pub2, 0, on_result, &g5), 0);
    CHECK(wait_done(&g5, 1));
    CHECK_INT_EQ(g5.err, UV_ECONNREFUSED);
    CHECK_INT_EQ(g5.status, 0);
    CHECK(strstr(g5.msg, "cannot reach the discovery server") != NULL);
    struct res p4 = {0};
    CHECK_INT_EQ(tun_disc_publish(c, dead_base, secret, &r2, t0 + 2000000, on_result, &p4), 0);
    CHECK(wait_done(&p4, 1));
    CHECK_INT_EQ(p4.err, UV_ECONNREFUSED);

    /* A fake server answers for `pub` with a record signed by `secret2`: refused. */
    struct fake f = {.mode = FAKE_REPLY};
    int fport = fake_start(&f);
    char fbase[128];
    snprintf(fbase, sizeof(fbase), "http://127.0.0.1:%d/pkarr", fport);
    uint8_t pkt[TUN_PKARR_MAX_PACKET];
    int n = tun_pkarr_publish(pkt, sizeof(pkt), secret2, t0 + 9000000, &r1);
    CHECK(n > 0);
    f.payload_len = (size_t)n - 32;
    memcpy(f.payload, pkt + 32, f.payload_len);
    struct res g6 = {0};
    CHECK_INT_EQ(tun_disc_resolve(c, fbase, pub, TUN_DISC_FRESH, on_result, &g6), 0);
    CHECK(wait_done(&g6, 1));
    CHECK_INT_EQ(f.requests, 1);
    CHECK_INT_EQ(g6.err, TUN_ECRYPTO);
    CHECK_INT_EQ(g6.status, 200);
    CHECK(strstr(g6.msg, "does not verify") != NULL);

    /* The same server answers with a genuine but older record of `pub`: a rollback. */
    n = tun_pkarr_publish(pkt, sizeof(pkt), secret, t0, &r1);
    CHECK(n > 0);
    f.payload_len = (size_t)n - 32;
    memcpy(f.payload, pkt + 32, f.payload_len);
    struct res g7 = {0};
    CHECK_INT_EQ(tun_disc_resolve(c, fbase, pub, TUN_DISC_FRESH, on_result, &g7), 0);
    CHECK(wait_done(&g7, 1));
    CHECK_INT_EQ(g7.err, TUN_EDENIED);
    CHECK(strstr(g7.msg, "older than one already seen") != NULL);

    /* The cached record is still the newest one. */
    struct res g8 = {0};
    CHECK_INT_EQ(tun_disc_resolve(c, fbase, pub, 0, on_result, &g8), 0);
    CHECK(wait_done(&g8, 1));
    CHECK_INT_EQ(g8.cached, 1);
    CHECK(same_record(&g8.rec, &r2));

    /* A server that never answers: close cancels, and no callback runs afterwards. */
    f.mode = FAKE_HANG;
    int before = f.requests;
    struct res g9 = {0}, p5 = {0}, g10 = {0};
    CHECK_INT_EQ(tun_disc_resolve(c, fbase, pub2, 0, on_result, &g9), 0);
    CHECK_INT_EQ(tun_disc_publish(c, fbase, secret, &r2, t0 + 3000000, on_result, &p5), 0);
    uv_timer_start(&tick, tick_cb, 10, 10);
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + 15000;
    while (f.requests < before + 2 && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&tick);
    CHECK_INT_EQ(f.requests, before + 2);
    CHECK_INT_EQ(tun_disc_resolve(c, base, pub, 0, on_result, &g10), 0); /* a cache hit */
    tun_disc_client_close(c);
    CHECK_INT_EQ(tun_disc_resolve(c, base, pub, 0, on_result, &g10), TUN_ECLOSED);
    /* curl closed its connections to the fake server: the requests are really gone. */
    CHECK(wait_zero(&f.open));
    CHECK_INT_EQ(g9.done + p5.done, 0);
    CHECK_INT_EQ(g10.done, 0);

    /* A second client closed from inside its own callback: the other request never reports. */
    CHECK_INT_EQ(tun_disc_client_new(&loop, NULL, &closing_client), 0);
    struct res g11 = {0}, g12 = {0};
    CHECK_INT_EQ(tun_disc_resolve(closing_client, fbase, pub, 0, on_result, &g12), 0);
    CHECK_INT_EQ(tun_disc_resolve(closing_client, base, pub2, 0, close_in_cb, &g11), 0);
    CHECK(wait_done(&g11, 1));
    CHECK_INT_EQ(g11.err, UV_ENOENT);
    CHECK(closing_client == NULL);
    CHECK(wait_zero(&f.open));
    CHECK_INT_EQ(g12.done, 0);
    CHECK_INT_EQ(g11.done, 1);

    tun_relay_server_close(srv, on_server_closed, NULL);
    uv_close((uv_handle_t *)&f.listener, NULL);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(server_closed, 1);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    return TEST_DONE();
}
