/*
 * net/udp: real sockets on loopback driven by a real libuv loop.
 *
 * The tests that need a route with a small MTU, a device without checksum offload or a slow
 * queue run in a forked child inside a network namespace of its own (unshare(CLONE_NEWNET), a
 * veth pair, iproute2's `ip` and `tc`); they are skipped with a message when that is not
 * possible (not root, no veth, no tc).
 */
#define _GNU_SOURCE
#include "net/udp.h"
#include "util/error.h"

#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/ip.h>
#include <sched.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#define MAX_PKT  256
#define COPY_MAX 65536
#define SKIP     77

static uv_loop_t loop;

/* ---- loop helpers --------------------------------------------------------------------------- */

static int timed_out;

static void on_guard(uv_timer_t *t)
{
    (void)t;
    timed_out = 1;
}

static void on_timer_closed(uv_handle_t *h)
{
    (void)h;
}

/* Run the loop until *counter reaches target. The guard only keeps a broken build from hanging
 * the suite; nothing here is expected to take more than a moment. */
static int run_until(const int *counter, int target)
{
    static uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    uv_timer_start(&guard, on_guard, 10000, 0);
    timed_out = 0;
    while (*counter < target && !timed_out)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, on_timer_closed);
    uv_run(&loop, UV_RUN_NOWAIT);
    if (timed_out)
        fprintf(stderr, "  (timed out waiting: %d of %d)\n", *counter, target);
    return *counter >= target;
}

static void loop_open(void)
{
    CHECK_INT_EQ(uv_loop_init(&loop), 0);
}

/* Every handle must be gone: uv_loop_close fails with UV_EBUSY otherwise. */
static void loop_done(void)
{
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

/* ---- socket helpers ------------------------------------------------------------------------- */

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

static int port_of(const void *sa)
{
    const struct sockaddr *s = sa;
    if (s->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (s->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return -1;
}

static const char *ip_of(const void *sa, char *buf, size_t size)
{
    const struct sockaddr *s = sa;
    if (s->sa_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, size);
    if (s->sa_family == AF_INET6)
        return inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, size);
    return "?";
}

/* A socket on `ip` port 0, or NULL with `*rc` set. */
static struct tun_udp *open_udp_rc(const char *ip, int *rc)
{
    struct sockaddr_storage ss = mkaddr(ip, 0);
    struct tun_udp *u = NULL;
    *rc = tun_udp_new(&loop, (struct sockaddr *)&ss, &u);
    return *rc == 0 ? u : NULL;
}

static struct tun_udp *open_udp(const char *ip)
{
    int rc;
    struct tun_udp *u = open_udp_rc(ip, &rc);
    CHECK_INT_EQ(rc, 0);
    return u;
}

/* Where to send to reach `u`: its port on `ip`. */
static struct sockaddr_storage dest_of(struct tun_udp *u, const char *ip)
{
    struct sockaddr_storage local;
    CHECK_INT_EQ(tun_udp_local_addr(u, &local), 0);
    return mkaddr(ip, port_of(&local));
}

static int local_port(struct tun_udp *u)
{
    struct sockaddr_storage local;
    CHECK_INT_EQ(tun_udp_local_addr(u, &local), 0);
    return port_of(&local);
}

static void on_closed(void *ud)
{
    (*(int *)ud)++;
}

static void close_udp(struct tun_udp *u)
{
    int done = 0;
    tun_udp_close(u, on_closed, &done);
    CHECK(run_until(&done, 1));
    CHECK_INT_EQ(done, 1);
}

static int have_ipv6(void)
{
    int rc;
    struct tun_udp *u = open_udp_rc("::1", &rc);
    if (!u)
        return 0;
    close_udp(u);
    return 1;
}

/* ---- a receiver that records what it gets ---------------------------------------------------- */

struct rx {
    int count, batches;
    size_t bytes;
    size_t len[MAX_PKT];
    unsigned ecn[MAX_PKT];
    struct sockaddr_storage from[MAX_PKT];
    uint8_t *data[MAX_PKT];
    int close_on_first; /* close the socket from inside the first callback */
    int after_close_send, after_close_start;
};

static struct rx *rx_new(void)
{
    struct rx *r = calloc(1, sizeof *r);
    CHECK(r != NULL);
    return r;
}

static void rx_free(struct rx *r)
{
    for (int i = 0; i < MAX_PKT; i++)
        free(r->data[i]);
    free(r);
}

static void on_recv(struct tun_udp *u, const struct sockaddr *from, const uint8_t *data, size_t len,
                    unsigned ecn, void *ud)
{
    struct rx *r = ud;
    if (r->count < MAX_PKT) {
        int i = r->count;
        r->len[i] = len;
        r->ecn[i] = ecn;
        memcpy(&r->from[i], from,
               from->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                          : sizeof(struct sockaddr_in6));
        r->data[i] = malloc(len < COPY_MAX ? len : COPY_MAX);
        memcpy(r->data[i], data, len < COPY_MAX ? len : COPY_MAX);
    }
    r->count++;
    r->bytes += len;
    if (r->close_on_first && r->count == 1) {
        tun_udp_close(u, NULL, NULL);
        uint8_t b = 1;
        r->after_close_send = tun_udp_send(u, from, &b, 1, 0, NULL);
        r->after_close_start = tun_udp_start(u, on_recv, NULL, r);
    }
}

static void on_batch(struct tun_udp *u, int more, void *ud)
{
    (void)u;
    if (!more)
        ((struct rx *)ud)->batches++;
}

static void fill(uint8_t *p, size_t len, size_t segsize, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)((i / segsize) * 31 + (i % segsize) * 7 + seed);
}

/* Datagram k of what fill() made must have arrived as r->data[k]. */
static void check_segments(const struct rx *r, const uint8_t *sent, size_t len, size_t segsize)
{
    size_t nseg = (len + segsize - 1) / segsize;
    CHECK_INT_EQ(r->count, nseg);
    int bad = 0;
    for (size_t k = 0; k < nseg && k < MAX_PKT && k < (size_t)r->count; k++) {
        size_t want = k + 1 < nseg ? segsize : len - k * segsize;
        if (r->len[k] != want || memcmp(r->data[k], sent + k * segsize, want) != 0)
            bad++;
    }
    CHECK_INT_EQ(bad, 0);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void roundtrip(const char *ip)
{
    loop_open();
    struct tun_udp *a = open_udp(ip), *b = open_udp(ip);
    struct rx *ra = rx_new(), *rb = rx_new();
    CHECK_INT_EQ(tun_udp_start(a, on_recv, on_batch, ra), 0);
    CHECK_INT_EQ(tun_udp_start(b, on_recv, on_batch, rb), 0);
    CHECK_INT_EQ(tun_udp_start(b, on_recv, on_batch, rb), UV_EALREADY);

    struct sockaddr_storage to_b = dest_of(b, ip);
    size_t sent = 99;
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_b, (const uint8_t *)"hello", 5, 0, &sent),
                 0);
    CHECK_INT_EQ(sent, 5);
    CHECK(run_until(&rb->count, 1));
    CHECK_INT_EQ(rb->len[0], 5);
    CHECK_MEM_EQ(rb->data[0], "hello", 5);
    CHECK_INT_EQ(rb->ecn[0], 0);
    CHECK_INT_EQ(rb->batches, 1);
    char buf[64];
    CHECK_INT_EQ(rb->from[0].ss_family, strchr(ip, ':') ? AF_INET6 : AF_INET);
    CHECK_STR_EQ(ip_of(&rb->from[0], buf, sizeof buf), ip);
    CHECK_INT_EQ(port_of(&rb->from[0]), local_port(a));

    /* Answer to the address the datagram came from. */
    CHECK_INT_EQ(
        tun_udp_send(b, (struct sockaddr *)&rb->from[0], (const uint8_t *)"world!", 6, 1200, &sent),
        0);
    CHECK_INT_EQ(sent, 6);
    CHECK(run_until(&ra->count, 1));
    CHECK_INT_EQ(ra->len[0], 6);
    CHECK_MEM_EQ(ra->data[0], "world!", 6);
    CHECK_INT_EQ(port_of(&ra->from[0]), local_port(b));

    /* The largest datagram fits the receive buffer and arrives whole: 65507 bytes over IPv4;
     * over IPv6 the loopback MTU (65536) is the limit, as we never fragment. */
    size_t max = strchr(ip, ':') ? 65536 - 48 : TUN_UDP_MAX_PAYLOAD4;
    uint8_t *big = malloc(max + 1);
    fill(big, max + 1, max + 1, 3);
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_b, big, max, 0, &sent), 0);
    CHECK_INT_EQ(sent, max);
    CHECK(run_until(&rb->count, 2));
    CHECK_INT_EQ(rb->len[1], max);
    CHECK(rb->count >= 2 && memcmp(rb->data[1], big, max) == 0);
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_b, big, max + 1, 0, &sent),
                 strchr(ip, ':') ? UV_EMSGSIZE : TUN_EINVAL);
    CHECK_INT_EQ(sent, 0);
    free(big);

    struct tun_udp_stats st;
    tun_udp_get_stats(a, &st);
    CHECK_INT_EQ(st.tx_packets, 2);
    CHECK_INT_EQ(st.tx_bytes, 5 + max);
    /* Over IPv6 the refused datagram cost a syscall (the kernel said EMSGSIZE). */
    CHECK_INT_EQ(st.tx_calls, strchr(ip, ':') ? 3 : 2);
    CHECK_INT_EQ(st.rx_packets, 1);
    CHECK_INT_EQ(st.rx_bytes, 6);
    CHECK_INT_EQ(st.tx_eagain, 0);
    tun_udp_get_stats(b, &st);
    CHECK_INT_EQ(st.rx_packets, 2);
    CHECK_INT_EQ(st.rx_bytes, 5 + max);
    CHECK_INT_EQ(st.rx_batches, rb->batches);
    CHECK(st.rx_calls >= 2);
    CHECK_INT_EQ(st.rx_truncated, 0);
    CHECK_INT_EQ(st.rx_drops, 0);
    CHECK(st.rcvbuf >= 2 * 1024 * 1024);
    CHECK(st.sndbuf >= 2 * 1024 * 1024);

    close_udp(a);
    close_udp(b);
    rx_free(ra);
    rx_free(rb);
    loop_done();
}

static void test_v4(void)
{
    roundtrip("127.0.0.1");
}

static void test_v6(void)
{
    loop_open();
    int ok = have_ipv6();
    loop_done();
    if (!ok) {
        printf("SKIP test_v6: cannot bind ::1 (no IPv6 on this host)\n");
        return;
    }
    roundtrip("::1");
}

static void set_knob(const char *name, int on)
{
    if (on)
        setenv(name, "1", 1);
    else
        unsetenv(name);
}

/* `nseg` segments of `segsize` plus a `tail`-byte last one, from a sender with or without GSO to
 * a receiver with or without GRO. `want_calls` is the number of send syscalls expected. */
static void gso_case(int sender_gso, int receiver_gro, size_t nseg, size_t segsize, size_t tail,
                     uint64_t want_calls_gso, uint64_t want_calls_plain)
{
    loop_open();
    set_knob("TUNNEL_NO_GRO", !receiver_gro);
    struct tun_udp *rxs = open_udp("127.0.0.1");
    set_knob("TUNNEL_NO_GRO", 0);
    set_knob("TUNNEL_NO_GSO", !sender_gso);
    struct tun_udp *txs = open_udp("127.0.0.1");
    set_knob("TUNNEL_NO_GSO", 0);

    struct tun_udp_stats st;
    tun_udp_get_stats(rxs, &st);
    int gro = st.gro;
    if (!receiver_gro)
        CHECK_INT_EQ(gro, 0);
    else if (!gro)
        printf("note: kernel refused UDP_GRO; GRO splitting not exercised\n");
    tun_udp_get_stats(txs, &st);
    int gso = st.gso;
    if (!sender_gso)
        CHECK_INT_EQ(gso, 0);
    else if (!gso)
        printf("note: kernel refused UDP_SEGMENT; GSO not exercised\n");

    struct rx *r = rx_new();
    CHECK_INT_EQ(tun_udp_start(rxs, on_recv, on_batch, r), 0);
    size_t len = nseg * segsize + tail;
    uint8_t *data = malloc(len);
    fill(data, len, segsize, (unsigned)(nseg + tail));
    struct sockaddr_storage to = dest_of(rxs, "127.0.0.1");
    size_t sent = 0;
    CHECK_INT_EQ(tun_udp_send(txs, (struct sockaddr *)&to, data, len, segsize, &sent), 0);
    CHECK_INT_EQ(sent, len);

    size_t ndgram = nseg + (tail ? 1 : 0);
    tun_udp_get_stats(txs, &st);
    CHECK_INT_EQ(st.tx_packets, ndgram);
    CHECK_INT_EQ(st.tx_bytes, len);
    CHECK_INT_EQ(st.tx_calls, gso ? want_calls_gso : want_calls_plain);
    CHECK_INT_EQ(st.gso, gso);

    CHECK(run_until(&r->count, (int)ndgram));
    check_segments(r, data, len, segsize);
    int from_ok = 0;
    for (int i = 0; i < r->count && i < MAX_PKT; i++)
        from_ok += r->from[i].ss_family == AF_INET && port_of(&r->from[i]) == local_port(txs);
    CHECK_INT_EQ(from_ok, r->count);

    tun_udp_get_stats(rxs, &st);
    CHECK_INT_EQ(st.rx_packets, ndgram);
    CHECK_INT_EQ(st.rx_bytes, len);
    CHECK_INT_EQ(st.rx_batches, r->batches);
    CHECK(st.rx_batches >= 1 && st.rx_batches <= st.rx_calls);
    if (gro && gso && ndgram > 1)
        /* Over loopback the GSO super-datagram reaches a GRO socket in one piece. */
        CHECK(st.rx_gro >= 1);
    if (!gro)
        CHECK_INT_EQ(st.rx_gro, 0);

    free(data);
    rx_free(r);
    close_udp(rxs);
    close_udp(txs);
    loop_done();
}

static void test_gso_batch(void)
{
    /* 40 x 1200: one GSO sendmsg, or one sendmmsg. */
    for (int sgso = 1; sgso >= 0; sgso--)
        for (int rgro = 0; rgro <= 1; rgro++)
            gso_case(sgso, rgro, 40, 1200, 0, 1, 1);
}

static void test_gso_limits(void)
{
    /* 100 x 1200 + 500: 54 segments fill one 65507-byte IPv4 datagram, so GSO needs two calls
     * (54 + 47); sendmmsg takes 64 + 37. The short tail crosses the GRO split. */
    gso_case(1, 1, 100, 1200, 500, 2, 2);
    gso_case(0, 1, 100, 1200, 500, 2, 2);
    gso_case(1, 0, 100, 1200, 500, 2, 2);
    /* 64 x 1000 is the kernel's segment limit in one call; one more segment needs a second. */
    gso_case(1, 1, 64, 1000, 0, 1, 1);
    gso_case(1, 1, 65, 1000, 0, 2, 2);
    /* A datagram shorter than segsize is one plain datagram. */
    gso_case(1, 1, 0, 1200, 700, 1, 1);
}

/* The fd behind `u`, found by its local address: the GSO fallback test needs a socket option
 * that the API rightly does not offer. */
static int fd_of(struct tun_udp *u)
{
    struct sockaddr_storage want;
    CHECK_INT_EQ(tun_udp_local_addr(u, &want), 0);
    for (int fd = 3; fd < 4096; fd++) {
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof ss);
        socklen_t len = sizeof ss;
        int type = 0;
        socklen_t tlen = sizeof type;
        if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 || type != SOCK_DGRAM)
            continue;
        if (memcmp(&ss, &want, sizeof ss) == 0)
            return fd;
    }
    return -1;
}

/* When the kernel refuses a GSO send but takes the datagrams one by one, the socket turns GSO
 * off and still delivers everything. SO_NO_CHECK (no UDP checksum) is a real way to get there:
 * the kernel rejects GSO without checksums with EINVAL, like a NIC without checksum offload
 * made it return EIO before Linux 6.9. */
static void test_gso_fallback(void)
{
    loop_open();
    struct tun_udp *rxs = open_udp("127.0.0.1"), *txs = open_udp("127.0.0.1");
    struct tun_udp_stats st;
    tun_udp_get_stats(txs, &st);
    if (!st.gso) {
        printf("SKIP test_gso_fallback: no GSO on this kernel\n");
    } else {
        int fd = fd_of(txs), one = 1;
        CHECK(fd >= 0);
        CHECK_INT_EQ(setsockopt(fd, SOL_SOCKET, SO_NO_CHECK, &one, sizeof one), 0);
        struct rx *r = rx_new();
        CHECK_INT_EQ(tun_udp_start(rxs, on_recv, NULL, r), 0);
        struct sockaddr_storage to = dest_of(rxs, "127.0.0.1");
        uint8_t data[10 * 1200];
        fill(data, sizeof data, 1200, 5);
        size_t sent = 0;
        CHECK_INT_EQ(tun_udp_send(txs, (struct sockaddr *)&to, data, sizeof data, 1200, &sent), 0);
        CHECK_INT_EQ(sent, sizeof data);
        tun_udp_get_stats(txs, &st);
        CHECK_INT_EQ(st.gso, 0);
        CHECK_INT_EQ(st.tx_packets, 10);
        /* The refused GSO call, the first segment alone, one sendmmsg for the other nine. */
        CHECK_INT_EQ(st.tx_calls, 3);
        CHECK(run_until(&r->count, 10));
        check_segments(r, data, sizeof data, 1200);
        /* From now on: sendmmsg straight away. */
        CHECK_INT_EQ(tun_udp_send(txs, (struct sockaddr *)&to, data, sizeof data, 1200, &sent), 0);
        tun_udp_get_stats(txs, &st);
        CHECK_INT_EQ(st.tx_calls, 4);
        CHECK(run_until(&r->count, 20));
        rx_free(r);
    }
    close_udp(rxs);
    close_udp(txs);
    loop_done();
}

struct bounded {
    struct rx *r;
    int last_count, max_per_batch, batches, iterations, batch_iteration_repeats, last_iteration;
    int mids, mid_gap_max, last_mid_count;
};

static void on_prepare(uv_prepare_t *p)
{
    ((struct bounded *)p->data)->iterations++;
}

static void on_bounded_batch(struct tun_udp *u, int more, void *ud)
{
    (void)u;
    struct bounded *b = (struct bounded *)((struct rx *)ud + 1);
    int since = b->r->count - b->last_mid_count;
    b->last_mid_count = b->r->count;
    if (since > b->mid_gap_max)
        b->mid_gap_max = since;
    if (more) { /* one full receive call inside a wake-up */
        b->mids++;
        return;
    }
    int n = b->r->count - b->last_count;
    b->last_count = b->r->count;
    if (n > b->max_per_batch)
        b->max_per_batch = n;
    if (b->batches > 0 && b->iterations == b->last_iteration)
        b->batch_iteration_repeats++;
    b->last_iteration = b->iterations;
    b->batches++;
}

/* A long queue is handled in bounded slices (at most 1024 datagrams per wake-up), and the loop
 * runs a full iteration between two slices. */
static void test_bounded_batches(void)
{
    loop_open();
    set_knob("TUNNEL_NO_GRO", 1);
    struct tun_udp *rxs = open_udp("127.0.0.1");
    set_knob("TUNNEL_NO_GRO", 0);
    struct tun_udp *txs = open_udp("127.0.0.1");
    /* The rx record and the bookkeeping in one block, so the batch callback finds both. */
    struct rx *r = calloc(1, sizeof(struct rx) + sizeof(struct bounded));
    struct bounded *b = (struct bounded *)(r + 1);
    b->r = r;
    uv_prepare_t prep;
    uv_prepare_init(&loop, &prep);
    prep.data = b;
    uv_prepare_start(&prep, on_prepare);

    /* 3000 small datagrams wait in the receive buffer before reading starts. */
    struct sockaddr_storage to = dest_of(rxs, "127.0.0.1");
    uint8_t data[50 * 100];
    fill(data, sizeof data, 100, 0);
    for (int i = 0; i < 60; i++)
        CHECK_INT_EQ(tun_udp_send(txs, (struct sockaddr *)&to, data, sizeof data, 100, NULL), 0);
    CHECK_INT_EQ(tun_udp_start(rxs, on_recv, on_bounded_batch, r), 0);
    CHECK(run_until(&r->count, 3000));
    CHECK(b->max_per_batch <= 1024);
    CHECK(b->batches >= 3);
    /* Within a wake-up the consumer hears after each full receive call, not only at its end. */
    CHECK(b->mids > 0);
    CHECK(b->mid_gap_max < b->max_per_batch);
    CHECK_INT_EQ(b->batch_iteration_repeats, 0);
    struct tun_udp_stats st;
    tun_udp_get_stats(rxs, &st);
    CHECK_INT_EQ(st.rx_batches, b->batches);
    CHECK_INT_EQ(st.rx_drops, 0);

    uv_close((uv_handle_t *)&prep, NULL);
    rx_free(r);
    close_udp(rxs);
    close_udp(txs);
    loop_done();
}

static void test_dual_stack(void)
{
    loop_open();
    int rc;
    struct tun_udp *d = open_udp_rc("::", &rc);
    if (!d) {
        printf("SKIP test_dual_stack: cannot bind [::] (%s)\n", tun_strerror(rc));
        loop_done();
        return;
    }
    struct sockaddr_storage local;
    CHECK_INT_EQ(tun_udp_local_addr(d, &local), 0);
    CHECK_INT_EQ(local.ss_family, AF_INET6);

    struct tun_udp *v4 = open_udp("127.0.0.1");
    struct rx *rd = rx_new(), *r4 = rx_new();
    CHECK_INT_EQ(tun_udp_start(d, on_recv, on_batch, rd), 0);
    CHECK_INT_EQ(tun_udp_start(v4, on_recv, on_batch, r4), 0);

    /* An IPv4 peer shows up as AF_INET. */
    struct sockaddr_storage to_d = dest_of(d, "127.0.0.1");
    CHECK_INT_EQ(tun_udp_send(v4, (struct sockaddr *)&to_d, (const uint8_t *)"v4", 2, 0, NULL), 0);
    CHECK(run_until(&rd->count, 1));
    char buf[64];
    CHECK_INT_EQ(rd->from[0].ss_family, AF_INET);
    CHECK_STR_EQ(ip_of(&rd->from[0], buf, sizeof buf), "127.0.0.1");
    CHECK_INT_EQ(port_of(&rd->from[0]), local_port(v4));

    /* An AF_INET destination on the dual-stack socket, and the IPv4-mapped form too. */
    CHECK_INT_EQ(
        tun_udp_send(d, (struct sockaddr *)&rd->from[0], (const uint8_t *)"back", 4, 0, NULL), 0);
    struct sockaddr_storage mapped = mkaddr("::ffff:127.0.0.1", local_port(v4));
    CHECK_INT_EQ(tun_udp_send(d, (struct sockaddr *)&mapped, (const uint8_t *)"mapped", 6, 0, NULL),
                 0);
    CHECK(run_until(&r4->count, 2));
    CHECK_INT_EQ(r4->len[0], 4);
    CHECK_MEM_EQ(r4->data[0], "back", 4);
    CHECK_INT_EQ(r4->len[1], 6);
    CHECK_MEM_EQ(r4->data[1], "mapped", 6);
    CHECK_INT_EQ(port_of(&r4->from[0]), local_port(d));

    /* GSO to an IPv4 peer from the dual-stack socket (the 65507-byte IPv4 limit applies). */
    uint8_t data[60 * 1200];
    fill(data, sizeof data, 1200, 9);
    size_t sent = 0;
    CHECK_INT_EQ(tun_udp_send(d, (struct sockaddr *)&rd->from[0], data, sizeof data, 1200, &sent),
                 0);
    CHECK_INT_EQ(sent, sizeof data);
    CHECK(run_until(&r4->count, 62));
    int bad = 0;
    for (int k = 0; k < 60 && 2 + k < r4->count; k++)
        bad += r4->len[2 + k] != 1200 || memcmp(r4->data[2 + k], data + k * 1200, 1200) != 0;
    CHECK_INT_EQ(bad, 0);

    /* An IPv6 peer stays AF_INET6. */
    struct tun_udp *v6 = open_udp_rc("::1", &rc);
    if (v6) {
        struct sockaddr_storage to_d6 = dest_of(d, "::1");
        CHECK_INT_EQ(tun_udp_send(v6, (struct sockaddr *)&to_d6, (const uint8_t *)"v6", 2, 0, NULL),
                     0);
        CHECK(run_until(&rd->count, 2));
        CHECK_INT_EQ(rd->from[1].ss_family, AF_INET6);
        CHECK_STR_EQ(ip_of(&rd->from[1], buf, sizeof buf), "::1");
        close_udp(v6);
    } else {
        printf("SKIP dual-stack IPv6 peer: no ::1\n");
    }

    close_udp(d);
    close_udp(v4);
    rx_free(rd);
    rx_free(r4);
    loop_done();
}

static void test_v4_only(void)
{
    loop_open();
    struct tun_udp *a = open_udp("0.0.0.0"), *b = open_udp("127.0.0.1");
    struct rx *rb = rx_new();
    CHECK_INT_EQ(tun_udp_start(b, on_recv, NULL, rb), 0);
    struct sockaddr_storage local;
    CHECK_INT_EQ(tun_udp_local_addr(a, &local), 0);
    CHECK_INT_EQ(local.ss_family, AF_INET);

    struct sockaddr_storage v6 = mkaddr("::1", local_port(b));
    size_t sent = 7;
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&v6, (const uint8_t *)"x", 1, 0, &sent),
                 UV_EAFNOSUPPORT);
    CHECK_INT_EQ(sent, 0);
    /* An IPv4-mapped IPv6 destination is unmapped. */
    struct sockaddr_storage mapped = mkaddr("::ffff:127.0.0.1", local_port(b));
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&mapped, (const uint8_t *)"m", 1, 0, &sent), 0);
    CHECK(run_until(&rb->count, 1));
    CHECK_INT_EQ(rb->len[0], 1);
    CHECK_INT_EQ(rb->from[0].ss_family, AF_INET);
    close_udp(a);
    close_udp(b);
    rx_free(rb);
    loop_done();
}

/* Send one datagram with ECN `ecn` from `tx` to `to` and check `r` reports it. */
static void ecn_one(struct tun_udp *tx, const struct sockaddr_storage *to, struct rx *r,
                    unsigned ecn)
{
    int before = r->count;
    CHECK_INT_EQ(tun_udp_set_ecn(tx, ecn), 0);
    CHECK_INT_EQ(tun_udp_send(tx, (const struct sockaddr *)to, (const uint8_t *)"e", 1, 0, NULL),
                 0);
    CHECK(run_until(&r->count, before + 1));
    if (r->count > before)
        CHECK_INT_EQ(r->ecn[before], ecn);
}

static void test_ecn(void)
{
    loop_open();
    struct tun_udp *a = open_udp("127.0.0.1"), *b = open_udp("127.0.0.1");
    struct rx *rb = rx_new();
    CHECK_INT_EQ(tun_udp_start(b, on_recv, NULL, rb), 0);
    struct sockaddr_storage to_b = dest_of(b, "127.0.0.1");
    ecn_one(a, &to_b, rb, 2); /* ECT(0) */
    ecn_one(a, &to_b, rb, 1); /* ECT(1) */
    ecn_one(a, &to_b, rb, 3); /* CE */
    ecn_one(a, &to_b, rb, 0);
    CHECK_INT_EQ(tun_udp_set_ecn(a, 4), TUN_EINVAL);

    /* A plain socket with IP_TOS: DSCP bits are not reported, only the two ECN bits. */
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(fd >= 0);
    int tos = 0xb8 | 2; /* DSCP EF + ECT(0) */
    CHECK_INT_EQ(setsockopt(fd, IPPROTO_IP, IP_TOS, &tos, sizeof tos), 0);
    CHECK_INT_EQ(sendto(fd, "t", 1, 0, (struct sockaddr *)&to_b, sizeof(struct sockaddr_in)), 1);
    close(fd);
    CHECK(run_until(&rb->count, 5));
    CHECK_INT_EQ(rb->ecn[4], 2);

    /* GSO segments all carry the mark. */
    CHECK_INT_EQ(tun_udp_set_ecn(a, 1), 0);
    uint8_t data[10 * 1000];
    fill(data, sizeof data, 1000, 1);
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_b, data, sizeof data, 1000, NULL), 0);
    CHECK(run_until(&rb->count, 15));
    int marked = 0;
    for (int i = 5; i < 15 && i < rb->count; i++)
        marked += rb->ecn[i] == 1;
    CHECK_INT_EQ(marked, 10);

    int rc;
    struct tun_udp *d = open_udp_rc("::", &rc);
    struct tun_udp *c6 = d ? open_udp_rc("::1", &rc) : NULL;
    if (d && c6) {
        struct rx *rd = rx_new(), *r6 = rx_new();
        CHECK_INT_EQ(tun_udp_start(d, on_recv, NULL, rd), 0);
        /* IPv4 peer → dual-stack socket: IP_TOS on the IPv6 socket. */
        struct sockaddr_storage to_d4 = dest_of(d, "127.0.0.1");
        ecn_one(a, &to_d4, rd, 2);
        /* IPv6 → IPv6: IPV6_TCLASS. */
        struct sockaddr_storage to_d6 = dest_of(d, "::1");
        ecn_one(c6, &to_d6, rd, 3);
        /* Dual-stack socket → IPv4 peer. */
        ecn_one(d, &to_b, rb, 1);
        /* Dual-stack socket → IPv6 peer. */
        CHECK_INT_EQ(tun_udp_start(c6, on_recv, NULL, r6), 0);
        struct sockaddr_storage to_c6 = dest_of(c6, "::1");
        ecn_one(d, &to_c6, r6, 2);
        close_udp(c6);
        rx_free(r6);
        rx_free(rd);
    } else {
        printf("SKIP IPv6 ECN checks: no IPv6\n");
        if (c6)
            close_udp(c6);
    }
    if (d)
        close_udp(d);
    close_udp(a);
    close_udp(b);
    rx_free(rb);
    loop_done();
}

static int writable_fired;
static void *writable_ud;

static void on_writable(struct tun_udp *u, void *ud)
{
    (void)u;
    writable_fired++;
    writable_ud = ud;
}

static void test_writable_one_shot(void)
{
    loop_open();
    struct tun_udp *a = open_udp("127.0.0.1");
    writable_fired = 0;
    /* Before tun_udp_start: ud is NULL. */
    CHECK_INT_EQ(tun_udp_want_writable(a, on_writable), 0);
    CHECK(run_until(&writable_fired, 1));
    CHECK(writable_ud == NULL);
    /* One-shot: an always-writable socket does not fire again. */
    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(writable_fired, 1);

    struct rx *r = rx_new();
    CHECK_INT_EQ(tun_udp_start(a, on_recv, NULL, r), 0);
    CHECK_INT_EQ(tun_udp_want_writable(a, on_writable), 0);
    CHECK(run_until(&writable_fired, 2));
    CHECK(writable_ud == r);

    /* Cancelled before the loop ran: never fires. */
    CHECK_INT_EQ(tun_udp_want_writable(a, on_writable), 0);
    CHECK_INT_EQ(tun_udp_want_writable(a, NULL), 0);
    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(writable_fired, 2);

    /* Pending at close: never fires either. */
    CHECK_INT_EQ(tun_udp_want_writable(a, on_writable), 0);
    close_udp(a);
    CHECK_INT_EQ(writable_fired, 2);
    rx_free(r);
    loop_done();
}

static void test_stop_start(void)
{
    loop_open();
    struct tun_udp *a = open_udp("127.0.0.1"), *b = open_udp("127.0.0.1");
    struct rx *r1 = rx_new(), *r2 = rx_new();
    struct sockaddr_storage to_b = dest_of(b, "127.0.0.1");
    CHECK_INT_EQ(tun_udp_start(b, on_recv, on_batch, r1), 0);
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_b, (const uint8_t *)"1", 1, 0, NULL), 0);
    CHECK(run_until(&r1->count, 1));
    CHECK_INT_EQ(tun_udp_stop(b), 0);
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_b, (const uint8_t *)"2", 1, 0, NULL), 0);
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_b, (const uint8_t *)"3", 1, 0, NULL), 0);
    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(r1->count, 1);
    /* Nothing was lost while stopped; the new callbacks get it. */
    CHECK_INT_EQ(tun_udp_start(b, on_recv, on_batch, r2), 0);
    CHECK(run_until(&r2->count, 2));
    CHECK_INT_EQ(r1->count, 1);
    CHECK(r2->count == 2 && r2->data[0][0] == '2' && r2->data[1][0] == '3');
    close_udp(a);
    close_udp(b);
    rx_free(r1);
    rx_free(r2);
    loop_done();
}

static void test_close(void)
{
    loop_open();
    /* Closed from inside the first recv callback: no more callbacks (not even the batch one),
     * later calls say TUN_ECLOSED, memory is freed by the loop (ASan checks). */
    struct tun_udp *a = open_udp("127.0.0.1"), *b = open_udp("127.0.0.1");
    struct rx *rb = rx_new();
    rb->close_on_first = 1;
    CHECK_INT_EQ(tun_udp_start(b, on_recv, on_batch, rb), 0);
    struct sockaddr_storage to_b = dest_of(b, "127.0.0.1");
    for (int i = 0; i < 5; i++)
        CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_b, (const uint8_t *)"c", 1, 0, NULL),
                     0);
    CHECK(run_until(&rb->count, 1));
    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(rb->count, 1);
    CHECK_INT_EQ(rb->batches, 0);
    CHECK_INT_EQ(rb->after_close_send, TUN_ECLOSED);
    CHECK_INT_EQ(rb->after_close_start, TUN_ECLOSED);
    rx_free(rb);

    /* The port is free as soon as tun_udp_close returns. */
    int port = local_port(a);
    int done = 0;
    tun_udp_close(a, on_closed, &done);
    CHECK_INT_EQ(done, 0); /* the callback comes from the loop, not from tun_udp_close */
    struct sockaddr_storage same = mkaddr("127.0.0.1", port);
    struct tun_udp *again = NULL;
    CHECK_INT_EQ(tun_udp_new(&loop, (struct sockaddr *)&same, &again), 0);
    CHECK(run_until(&done, 1));
    if (again)
        close_udp(again);

    /* Never started. */
    close_udp(open_udp("127.0.0.1"));
    loop_done();
}

/* A connected socket for one peer: that peer's datagrams arrive through it (and reach the same
 * callback, from the same address), everyone else's through the main socket; what it sends
 * leaves from the main socket's port; the port stays closed to other programs; after
 * tun_udp_conn_close the peer is served by the main socket again. */
static void connect_case(const char *bind_ip, const char *peer_ip)
{
    loop_open();
    int rc;
    struct tun_udp *a = open_udp_rc(bind_ip, &rc);
    if (!a) {
        printf("SKIP connect %s: %s\n", bind_ip, tun_strerror(rc));
        loop_done();
        return;
    }
    struct tun_udp *p1 = open_udp(peer_ip), *p2 = open_udp(peer_ip);
    struct rx *ra = rx_new(), *r1 = rx_new(), *r2 = rx_new();
    CHECK_INT_EQ(tun_udp_start(a, on_recv, on_batch, ra), 0);
    CHECK_INT_EQ(tun_udp_start(p1, on_recv, on_batch, r1), 0);
    CHECK_INT_EQ(tun_udp_start(p2, on_recv, on_batch, r2), 0);
    struct sockaddr_storage to_a = dest_of(a, peer_ip), to_p1 = dest_of(p1, peer_ip);

    struct tun_udp_conn *c = NULL;
    CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&to_p1, &c), 0);
    CHECK(c != NULL);
    char buf[64];
    const struct sockaddr *cr = tun_udp_conn_remote(c);
    CHECK_INT_EQ(cr->sa_family, strchr(peer_ip, ':') ? AF_INET6 : AF_INET);
    CHECK_STR_EQ(ip_of(cr, buf, sizeof buf), peer_ip);
    CHECK_INT_EQ(port_of(cr), local_port(p1));

    /* Another program cannot take the port (SO_REUSEPORT is only shared with those that set
     * it before binding). */
    struct sockaddr_storage taken = dest_of(a, bind_ip);
    struct tun_udp *thief = NULL;
    CHECK_INT_EQ(tun_udp_new(&loop, (struct sockaddr *)&taken, &thief), UV_EADDRINUSE);

    for (int i = 0; i < 5; i++) {
        CHECK_INT_EQ(tun_udp_send(p1, (struct sockaddr *)&to_a, (const uint8_t *)"one", 3, 0, NULL),
                     0);
        CHECK_INT_EQ(tun_udp_send(p2, (struct sockaddr *)&to_a, (const uint8_t *)"two", 3, 0, NULL),
                     0);
    }
    CHECK(run_until(&ra->count, 10));
    int from1 = 0, from2 = 0;
    for (int i = 0; i < ra->count && i < MAX_PKT; i++) {
        int port = port_of(&ra->from[i]);
        CHECK_INT_EQ(ra->from[i].ss_family, strchr(peer_ip, ':') ? AF_INET6 : AF_INET);
        if (port == local_port(p1) && memcmp(ra->data[i], "one", 3) == 0)
            from1++;
        else if (port == local_port(p2) && memcmp(ra->data[i], "two", 3) == 0)
            from2++;
    }
    CHECK_INT_EQ(from1, 5);
    CHECK_INT_EQ(from2, 5);
    struct tun_udp_stats st;
    tun_udp_get_stats(a, &st);
    CHECK_INT_EQ(st.rx_packets, 10);
    CHECK_INT_EQ(st.rx_conn, 5);
    CHECK_INT_EQ(st.conns, 1);
    CHECK_INT_EQ(st.conns_opened, 1);

    /* Sent through the connected socket, from the main socket's port; GSO too. */
    size_t sent = 0;
    CHECK_INT_EQ(tun_udp_conn_send(c, (const uint8_t *)"back", 4, 0, &sent), 0);
    CHECK_INT_EQ(sent, 4);
    uint8_t data[20 * 1200];
    fill(data, sizeof data, 1200, 5);
    CHECK_INT_EQ(tun_udp_conn_send(c, data, sizeof data, 1200, &sent), 0);
    CHECK_INT_EQ(sent, sizeof data);
    CHECK(run_until(&r1->count, 21));
    CHECK_INT_EQ(r1->len[0], 4);
    CHECK_MEM_EQ(r1->data[0], "back", 4);
    CHECK_INT_EQ(port_of(&r1->from[0]), local_port(a));
    int bad = 0;
    for (int k = 0; k < 20 && 1 + k < r1->count; k++)
        bad += r1->len[1 + k] != 1200 || memcmp(r1->data[1 + k], data + k * 1200, 1200) != 0 ||
               port_of(&r1->from[1 + k]) != local_port(a);
    CHECK_INT_EQ(bad, 0);
    /* tun_udp_send to the same peer still works (through the main socket). */
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&to_p1, (const uint8_t *)"main", 4, 0, NULL),
                 0);
    CHECK(run_until(&r1->count, 22));
    CHECK_MEM_EQ(r1->data[21], "main", 4);
    tun_udp_get_stats(a, &st);
    CHECK_INT_EQ(st.tx_conn, 21);
    CHECK_INT_EQ(st.tx_packets, 22);

    /* Closed: the peer's datagrams come through the main socket again. */
    tun_udp_conn_close(c);
    tun_udp_get_stats(a, &st);
    CHECK_INT_EQ(st.conns, 0);
    CHECK_INT_EQ(tun_udp_send(p1, (struct sockaddr *)&to_a, (const uint8_t *)"again", 5, 0, NULL),
                 0);
    CHECK(run_until(&ra->count, 11));
    CHECK_MEM_EQ(ra->data[10], "again", 5);
    CHECK_INT_EQ(port_of(&ra->from[10]), local_port(p1));
    tun_udp_get_stats(a, &st);
    CHECK_INT_EQ(st.rx_conn, 5);

    /* Open again, and left open at tun_udp_close: closed with the endpoint (ASan checks). */
    CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&to_p1, &c), 0);
    close_udp(a);
    close_udp(p1);
    close_udp(p2);
    rx_free(ra);
    rx_free(r1);
    rx_free(r2);
    loop_done();
}

static void test_connect(void)
{
    connect_case("127.0.0.1", "127.0.0.1");
    loop_open();
    int v6 = have_ipv6();
    loop_done();
    if (v6) {
        connect_case("::1", "::1");
        /* A dual-stack socket with an IPv4 peer. */
        connect_case("::", "127.0.0.1");
    } else {
        printf("SKIP connect over IPv6: no ::1\n");
    }
}

/* A connected socket closed from inside the callback of a datagram it delivered: no more
 * deliveries from it, nothing touched after it is gone (ASan), and the endpoint goes on. */
struct conn_rx {
    struct tun_udp_conn *c;
    int count;
};

static void on_recv_close_conn(struct tun_udp *u, const struct sockaddr *from, const uint8_t *data,
                               size_t len, unsigned ecn, void *ud)
{
    (void)u;
    (void)from;
    (void)data;
    (void)len;
    (void)ecn;
    struct conn_rx *r = ud;
    r->count++;
    if (r->c) {
        tun_udp_conn_close(r->c);
        r->c = NULL;
    }
}

static void test_connect_close_in_callback(void)
{
    loop_open();
    struct tun_udp *a = open_udp("127.0.0.1"), *p = open_udp("127.0.0.1");
    struct conn_rx r = {0};
    CHECK_INT_EQ(tun_udp_start(a, on_recv_close_conn, NULL, &r), 0);
    struct sockaddr_storage to_a = dest_of(a, "127.0.0.1"), to_p = dest_of(p, "127.0.0.1");
    CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&to_p, &r.c), 0);
    for (int i = 0; i < 3; i++)
        CHECK_INT_EQ(tun_udp_send(p, (struct sockaddr *)&to_a, (const uint8_t *)"x", 1, 0, NULL),
                     0);
    CHECK(run_until(&r.count, 1));
    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    /* The other two were queued on the connected socket and went with it. */
    CHECK_INT_EQ(r.count, 1);
    CHECK_INT_EQ(tun_udp_send(p, (struct sockaddr *)&to_a, (const uint8_t *)"y", 1, 0, NULL), 0);
    CHECK(run_until(&r.count, 2));
    close_udp(a);
    close_udp(p);
    loop_done();
}

/* ICMP port unreachable reaches a connected socket's error callback, from the poll (the error
 * left on the socket) or from the next send (which then went out again). */
struct refused {
    int count, err;
};

static void on_conn_error(struct tun_udp_conn *c, int err, void *ud)
{
    (void)c;
    struct refused *r = ud;
    r->count++;
    r->err = err;
}

static void test_connect_refused(void)
{
    loop_open();
    struct tun_udp *a = open_udp("127.0.0.1"), *gone = open_udp("127.0.0.1");
    struct sockaddr_storage to = dest_of(gone, "127.0.0.1");
    close_udp(gone);
    struct rx *ra = rx_new();
    CHECK_INT_EQ(tun_udp_start(a, on_recv, on_batch, ra), 0);
    struct tun_udp_conn *c = NULL;
    CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&to, &c), 0);
    struct refused r = {0};
    tun_udp_conn_set_error_cb(c, on_conn_error, &r);
    CHECK_INT_EQ(tun_udp_conn_send(c, (const uint8_t *)"anyone?", 7, 0, NULL), 0);
    CHECK(run_until(&r.count, 1));
    CHECK_INT_EQ(r.err, UV_ECONNREFUSED);
    /* Again, this time without letting the loop see the error first: the next send meets it,
     * reports it, and still goes out. */
    CHECK_INT_EQ(tun_udp_conn_send(c, (const uint8_t *)"x", 1, 0, NULL), 0);
    CHECK_INT_EQ(tun_udp_conn_send(c, (const uint8_t *)"y", 1, 0, NULL), 0);
    CHECK(run_until(&r.count, 2));
    CHECK_INT_EQ(r.err, UV_ECONNREFUSED);
    struct tun_udp_stats st;
    tun_udp_get_stats(a, &st);
    CHECK_INT_EQ(st.tx_conn, 3);
    CHECK_INT_EQ(ra->count, 0);
    close_udp(a);
    rx_free(ra);
    loop_done();
}

/* Connected sockets are capped at a sixteenth of RLIMIT_NOFILE: past that tun_udp_connect says
 * TUN_ERANGE and the endpoint goes on serving the peer through its main socket. */
static void test_connect_cap(void)
{
    struct rlimit old, low;
    CHECK_INT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = 48; /* a cap of 3 */
    CHECK_INT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
    loop_open();
    struct tun_udp *a = open_udp("127.0.0.1");
    CHECK_INT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
    struct tun_udp_conn *c[4] = {0};
    for (int i = 0; i < 4; i++) {
        struct sockaddr_storage peer = mkaddr("127.0.0.1", 40000 + i);
        CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&peer, &c[i]), i < 3 ? 0 : TUN_ERANGE);
    }
    CHECK(c[3] == NULL);
    /* A closed one makes room. */
    tun_udp_conn_close(c[0]);
    struct sockaddr_storage peer = mkaddr("127.0.0.1", 40003);
    CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&peer, &c[3]), 0);
    struct tun_udp_stats st;
    tun_udp_get_stats(a, &st);
    CHECK_INT_EQ(st.conns, 3);
    CHECK_INT_EQ(st.conns_opened, 4);
    close_udp(a);
    loop_done();
}

static void test_connect_errors(void)
{
    loop_open();
    struct tun_udp *a = open_udp("127.0.0.1"), *v6 = NULL;
    struct sockaddr_storage peer = mkaddr("127.0.0.1", 9), peer6 = mkaddr("::1", 9);
    struct tun_udp_conn *c = (struct tun_udp_conn *)&peer;
    CHECK_INT_EQ(tun_udp_connect(NULL, (struct sockaddr *)&peer, &c), TUN_EINVAL);
    CHECK_INT_EQ(tun_udp_connect(a, NULL, &c), TUN_EINVAL);
    CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&peer, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&peer6, &c), UV_EAFNOSUPPORT);
    CHECK(c == NULL);
    setenv("TUNNEL_NO_UDP_CONNECT", "1", 1);
    CHECK_INT_EQ(tun_udp_connect(a, (struct sockaddr *)&peer, &c), UV_ENOTSUP);
    unsetenv("TUNNEL_NO_UDP_CONNECT");
    CHECK_INT_EQ(tun_udp_conn_send(NULL, (const uint8_t *)"x", 1, 0, NULL), TUN_EINVAL);
    tun_udp_conn_close(NULL);
    struct tun_udp_stats st;
    tun_udp_get_stats(a, &st);
    CHECK_INT_EQ(st.conns, 0);
    CHECK_INT_EQ(st.conns_opened, 0);
    (void)v6;
    close_udp(a);
    loop_done();
}

static void test_errors(void)
{
    loop_open();
    struct tun_udp *u = NULL;
    struct sockaddr_storage v4 = mkaddr("127.0.0.1", 0);
    CHECK_INT_EQ(tun_udp_new(NULL, (struct sockaddr *)&v4, &u), TUN_EINVAL);
    CHECK_INT_EQ(tun_udp_new(&loop, NULL, &u), TUN_EINVAL);
    CHECK_INT_EQ(tun_udp_new(&loop, (struct sockaddr *)&v4, NULL), TUN_EINVAL);
    struct sockaddr_storage unix_sa;
    memset(&unix_sa, 0, sizeof unix_sa);
    unix_sa.ss_family = AF_UNIX;
    CHECK_INT_EQ(tun_udp_new(&loop, (struct sockaddr *)&unix_sa, &u), TUN_EINVAL);
    CHECK(u == NULL);

    struct tun_udp *a = open_udp("127.0.0.1");
    struct sockaddr_storage taken = dest_of(a, "127.0.0.1");
    CHECK_INT_EQ(tun_udp_new(&loop, (struct sockaddr *)&taken, &u), UV_EADDRINUSE);
    struct sockaddr_storage nowhere = mkaddr("192.0.2.123", 0); /* TEST-NET-1, not ours */
    int rc = tun_udp_new(&loop, (struct sockaddr *)&nowhere, &u);
    CHECK(rc == UV_EADDRNOTAVAIL || rc == 0);
    if (rc == 0)
        close_udp(u);

    CHECK_INT_EQ(tun_udp_start(a, NULL, NULL, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_udp_start(NULL, on_recv, NULL, NULL), TUN_EINVAL);
    size_t sent = 5;
    uint8_t b[16] = {0};
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&taken, b, 0, 0, &sent), TUN_EINVAL);
    CHECK_INT_EQ(sent, 0);
    CHECK_INT_EQ(tun_udp_send(a, NULL, b, 1, 0, &sent), TUN_EINVAL);
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&unix_sa, b, 1, 0, &sent), TUN_EINVAL);
    uint8_t *big = calloc(1, 140000);
    CHECK_INT_EQ(tun_udp_send(a, (struct sockaddr *)&taken, big, 140000, 65508, &sent), TUN_EINVAL);
    free(big);
    CHECK_INT_EQ(tun_udp_local_addr(a, NULL), TUN_EINVAL);
    CHECK_INT_EQ(tun_udp_want_writable(NULL, NULL), TUN_EINVAL);
    close_udp(a);
    loop_done();
}

/* ---- tests in a private network namespace ---------------------------------------------------- */

/* Enter a new network namespace with a veth pair: va 10.9.0.1/24 and fd00:9::1/64 (MTU 1500),
 * with permanent neighbours 10.9.0.2 / fd00:9::2 behind it so nothing waits for ARP/ND.
 * Returns 0, or SKIP with a message. Child process only. */
static int enter_netns(const char *name, const char *extra)
{
    if (unshare(CLONE_NEWNET) != 0) {
        printf("SKIP %s: cannot create a network namespace (%s)\n", name, strerror(errno));
        return SKIP;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "PATH=$PATH:/usr/sbin:/sbin; exec >/dev/null 2>&1; "
             "ip link set lo up && ip link add va type veth peer name vb && "
             "ip link set va up mtu 1500 && ip link set vb up && "
             "ip addr add 10.9.0.1/24 dev va && ip -6 addr add fd00:9::1/64 dev va nodad && "
             "ip neigh add 10.9.0.2 lladdr 02:00:00:00:09:02 dev va nud permanent && "
             "ip -6 neigh add fd00:9::2 lladdr 02:00:00:00:09:02 dev va nud permanent %s",
             extra);
    if (system(cmd) != 0) {
        printf("SKIP %s: cannot set up a veth pair%s with iproute2\n", name,
               *extra ? " and a tbf qdisc" : "");
        return SKIP;
    }
    return 0;
}

/* Run `fn` in a forked child inside its own network namespace. */
static void in_netns(const char *name, const char *extra, void (*fn)(void))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        /* Count only this child's failures. */
        test_failures = 0;
        int rc = enter_netns(name, extra);
        if (rc) {
            fflush(stdout);
            _exit(rc);
        }
        fn();
        fflush(stdout);
        fflush(stderr);
        _exit(test_failures ? 1 : 0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    if (WIFEXITED(status) && WEXITSTATUS(status) == SKIP)
        return;
    test_checks++;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        test_failures++;
        fprintf(stderr, "%s: failed in the network namespace (status %d)\n", name, status);
    }
}

/* Datagrams above the route MTU fail with EMSGSIZE: never fragmented, over IPv4 and IPv6.
 * A GSO send whose segments exceed the MTU reports EMSGSIZE too and keeps GSO on. */
static void ns_msgsize(void)
{
    loop_open();
    static uint8_t data[3 * 1600];
    struct tun_udp *u = open_udp("0.0.0.0");
    struct sockaddr_storage peer = mkaddr("10.9.0.2", 9);
    size_t sent = 1;
    CHECK_INT_EQ(tun_udp_send(u, (struct sockaddr *)&peer, data, 1472, 0, &sent), 0);
    CHECK_INT_EQ(tun_udp_send(u, (struct sockaddr *)&peer, data, 1473, 0, &sent), UV_EMSGSIZE);
    CHECK_INT_EQ(sent, 0);
    struct tun_udp_stats st;
    tun_udp_get_stats(u, &st);
    int gso = st.gso;
    CHECK_INT_EQ(tun_udp_send(u, (struct sockaddr *)&peer, data, sizeof data, 1600, &sent),
                 UV_EMSGSIZE);
    CHECK_INT_EQ(sent, 0);
    tun_udp_get_stats(u, &st);
    CHECK_INT_EQ(st.gso, gso);
    CHECK_INT_EQ(tun_udp_send(u, (struct sockaddr *)&peer, data, 3 * 1400, 1400, &sent), 0);
    CHECK_INT_EQ(sent, 3 * 1400);
    close_udp(u);

    int rc;
    struct tun_udp *d = open_udp_rc("::", &rc);
    if (d) {
        struct sockaddr_storage peer6 = mkaddr("fd00:9::2", 9);
        CHECK_INT_EQ(tun_udp_send(d, (struct sockaddr *)&peer6, data, 1452, 0, &sent), 0);
        CHECK_INT_EQ(tun_udp_send(d, (struct sockaddr *)&peer6, data, 1453, 0, &sent), UV_EMSGSIZE);
        /* IPv4 through the dual-stack socket: IP_MTU_DISCOVER applies. */
        CHECK_INT_EQ(tun_udp_send(d, (struct sockaddr *)&peer, data, 1473, 0, &sent), UV_EMSGSIZE);
        CHECK_INT_EQ(tun_udp_send(d, (struct sockaddr *)&peer, data, 1472, 0, &sent), 0);
        close_udp(d);
    }
    loop_done();
}

struct blaster {
    struct tun_udp *u;
    struct tun_udp_conn *conn; /* send through it when set */
    struct sockaddr_storage peer;
    uint8_t *data;
    size_t len, segsize, off;
    int eagains, writables, done;
};

/* Send the rest of b->data; on TUN_EAGAIN wait for the socket to drain. */
static void blast_more(struct tun_udp *u, void *ud)
{
    struct blaster *b = ud;
    if (u)
        b->writables++;
    while (b->off < b->len) {
        size_t sent = 0;
        int rc = b->conn ? tun_udp_conn_send(b->conn, b->data + b->off, b->len - b->off, b->segsize,
                                             &sent)
                         : tun_udp_send(b->u, (struct sockaddr *)&b->peer, b->data + b->off,
                                        b->len - b->off, b->segsize, &sent);
        CHECK_INT_EQ(sent % b->segsize, 0);
        b->off += sent;
        if (rc == TUN_EAGAIN) {
            b->eagains++;
            CHECK_INT_EQ(tun_udp_want_writable(b->u, blast_more), 0);
            return;
        }
        CHECK_INT_EQ(rc, 0);
        if (rc != 0)
            break;
    }
    b->done = 1;
}

/* A slow qdisc (tbf) holds datagrams, so they keep counting against the send buffer: sends
 * return TUN_EAGAIN (whole GSO calls, or a prefix of a sendmmsg batch), the writable callback
 * fires once the queue drains, and the rest goes out. */
static void ns_eagain_case(int gso, int connected)
{
    set_knob("TUNNEL_NO_GSO", !gso);
    struct tun_udp *u = open_udp("10.9.0.1");
    set_knob("TUNNEL_NO_GSO", 0);
    struct tun_udp_stats st;
    tun_udp_get_stats(u, &st);
    /* Enough data to fill the send buffer at least twice. */
    struct blaster b = {.u = u, .peer = mkaddr("10.9.0.2", 9), .segsize = 1000};
    if (connected)
        CHECK_INT_EQ(tun_udp_connect(u, (struct sockaddr *)&b.peer, &b.conn), 0);
    b.len = (size_t)st.sndbuf * 2;
    b.len -= b.len % 64000;
    b.data = calloc(1, b.len);
    CHECK_INT_EQ(tun_udp_start(u, on_recv, NULL, &b), 0);
    blast_more(NULL, &b);
    CHECK(b.eagains >= 1);
    CHECK(run_until(&b.done, 1));
    CHECK(b.writables >= 1);
    CHECK_INT_EQ(b.off, b.len);
    tun_udp_get_stats(u, &st);
    CHECK_INT_EQ(st.tx_eagain, b.eagains);
    CHECK_INT_EQ(st.tx_bytes, b.len);
    CHECK_INT_EQ(st.tx_packets, b.len / 1000);
    CHECK_INT_EQ(st.tx_conn, connected ? b.len / 1000 : 0);
    free(b.data);
    tun_udp_conn_close(b.conn);
    close_udp(u);
}

static void ns_eagain(void)
{
    loop_open();
    ns_eagain_case(1, 0);
    ns_eagain_case(0, 0);
    /* The same through a connected socket: its full buffer is what the callback waits for. */
    ns_eagain_case(1, 1);
    ns_eagain_case(0, 1);
    loop_done();
}

int main(void)
{
    unsetenv("TUNNEL_NO_GSO");
    unsetenv("TUNNEL_NO_GRO");
    unsetenv("TUNNEL_UDP_BATCH");
    unsetenv("TUNNEL_NO_UDP_CONNECT");
    test_v4();
    test_v6();
    test_gso_batch();
    test_gso_limits();
    test_gso_fallback();
    test_bounded_batches();
    test_dual_stack();
    test_v4_only();
    test_ecn();
    test_writable_one_shot();
    test_stop_start();
    test_close();
    test_errors();
    test_connect();
    test_connect_close_in_callback();
    test_connect_errors();
    test_connect_cap();
    test_connect_refused();
    in_netns("ns_msgsize", "", ns_msgsize);
    in_netns("ns_eagain", "&& tc qdisc add dev va root tbf rate 200mbit burst 256kb limit 64mb",
             ns_eagain);
    return TEST_DONE();
}
