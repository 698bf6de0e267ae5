/*
 * ICE agent (src/ice/agent.c): two agents in one process exchanging datagrams through an
 * in-memory network with simulated NATs and a simulated STUN server, on a simulated clock
 * (nothing sleeps). Scenarios: host/host, cone/cone via srflx, symmetric/cone via a
 * peer-reflexive candidate, symmetric/symmetric failing at fail_ms, role conflict, consent
 * and keepalives, bad credentials, 40% loss, the Linux conntrack pitfall (with and without
 * re-punch), candidate lines, and mutated checks fed to input().
 */
#include "ice/agent.h"
#include "util/sha1.h"
#include "ice/stun.h"
#include "ice/stun_server.h"
#include "util/error.h"
#include "util/log.h"
#include "test.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#define SA(x) ((const struct sockaddr *)(x))

static struct sockaddr_storage mkaddr(const char *ip, int port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons((uint16_t)port);
        CHECK_INT_EQ(inet_pton(AF_INET6, ip, &s->sin6_addr), 1);
    } else {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        s->sin_port = htons((uint16_t)port);
        CHECK_INT_EQ(inet_pton(AF_INET, ip, &s->sin_addr), 1);
    }
    return ss;
}

static int same(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
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

static int same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return a->ss_family == AF_INET && b->ss_family == AF_INET &&
           x->sin_addr.s_addr == y->sin_addr.s_addr;
}

static unsigned port(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)a)->sin_port)
                                   : ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
}

static uint64_t rng_state = 1;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* ---- the simulated network ------------------------------------------------------------------ */

enum nat_kind {
    NAT_NONE = 0,
    NAT_CONE,    /* endpoint-independent mapping, address-and-port-dependent filtering */
    NAT_CONE_AD, /* endpoint-independent mapping, address-dependent filtering */
    NAT_SYM,     /* a new port per destination, address-and-port-dependent filtering */
    NAT_PITFALL, /* NAT_CONE with the Linux conntrack pitfall (see test_pitfall) */
};

#define PITFALL_MS 30000

struct mapping {
    struct sockaddr_storage inside, dest; /* dest: family 0 for endpoint-independent */
    uint16_t pub_port;
    struct sockaddr_storage perm[16]; /* destinations sent to (the filter) */
    size_t nperm;
};

struct nat {
    int kind;
    struct sockaddr_storage pub; /* the public IP (port unused) */
    struct mapping map[32];
    size_t nmap;
    uint16_t next_port;
    struct {
        struct sockaddr_storage peer;
        uint64_t until;
    } poison[8];
    size_t npoison;
    unsigned poisoned; /* times the pitfall triggered */
};

struct pkt {
    uint64_t at;
    struct sockaddr_storage from, to;
    size_t len;
    uint8_t data[600];
};

struct node {
    struct tun_ice_agent *ag;
    struct sockaddr_storage sock, sock6; /* the socket's addresses (sock6 family 0: none) */
    struct nat nat;
    /* Observed. */
    uint64_t gathered_at, connected_at, failed_at, lost_at;
    int role_changes, candidates;
    struct tun_ice_pair_info pair;
    char reason[160];
    unsigned sent_req, sent_usecand, sent_ind, sent_ok, sent_err, sent_401, sent_487;
    unsigned sent_to_stun;
};

#define MAXPKT 2048

struct net {
    uint64_t now;
    struct node n[2];
    struct pkt q[MAXPKT];
    size_t nq;
    uint32_t latency;
    unsigned loss_pct;
    int drop_all;
    struct sockaddr_storage stun;
    unsigned spins; /* timeout() said 0 right after next_send() returned 0: must never happen */
    unsigned dropped_full;
};

static struct mapping *nat_find(struct nat *t, const struct sockaddr_storage *inside,
                                const struct sockaddr_storage *dest)
{
    for (size_t i = 0; i < t->nmap; i++) {
        struct mapping *m = &t->map[i];
        if (!same(&m->inside, inside))
            continue;
        if ((dest && same(&m->dest, dest)) || (!dest && m->dest.ss_family == 0))
            return m;
    }
    return NULL;
}

static struct mapping *nat_new(struct nat *t, const struct sockaddr_storage *inside,
                               const struct sockaddr_storage *dest, uint16_t pub_port)
{
    if (t->nmap == 32)
        return NULL;
    struct mapping *m = &t->map[t->nmap++];
    memset(m, 0, sizeof *m);
    m->inside = *inside;
    if (dest)
        m->dest = *dest;
    m->pub_port = pub_port;
    return m;
}

static int nat_sent_to(const struct nat *t, const struct sockaddr_storage *peer)
{
    for (size_t i = 0; i < t->nmap; i++)
        for (size_t k = 0; k < t->map[i].nperm; k++)
            if (same(&t->map[i].perm[k], peer))
                return 1;
    return 0;
}

static int nat_poisoned(const struct nat *t, const struct sockaddr_storage *peer, uint64_t now)
{
    for (size_t i = 0; i < t->npoison; i++)
        if (same(&t->poison[i].peer, peer) && now < t->poison[i].until)
            return 1;
    return 0;
}

/* Translate an outbound datagram's source; returns 0 when the NAT has no room. */
static int nat_out(struct nat *t, const struct sockaddr_storage *inside,
                   const struct sockaddr_storage *dest, uint64_t now, struct sockaddr_storage *src)
{
    struct mapping *m;
    if (t->kind == NAT_SYM) {
        m = nat_find(t, inside, dest);
        if (!m)
            m = nat_new(t, inside, dest, t->next_port++);
    } else if (t->kind == NAT_PITFALL && nat_poisoned(t, dest, now)) {
        /* The unsolicited entry holds (peer -> our port): conntrack picks another port for
         * our flow to that peer for as long as it exists. */
        m = nat_find(t, inside, dest);
        if (!m)
            m = nat_new(t, inside, dest, (uint16_t)(port(inside) + 1000 + t->nmap));
    } else {
        m = nat_find(t, inside, NULL);
        if (!m) /* Linux keeps the source port when it can */
            m = nat_new(t, inside, NULL, (uint16_t)port(inside));
    }
    if (!m)
        return 0;
    int known = 0;
    for (size_t k = 0; k < m->nperm; k++)
        known |= same(&m->perm[k], dest);
    if (!known && m->nperm < 16)
        m->perm[m->nperm++] = *dest;
    *src = t->pub;
    ((struct sockaddr_in *)src)->sin_port = htons(m->pub_port);
    return 1;
}

/* An inbound datagram to the NAT's public address: returns the inside address or 0. */
static int nat_in(struct nat *t, const struct sockaddr_storage *to,
                  const struct sockaddr_storage *from, uint64_t now,
                  struct sockaddr_storage *inside)
{
    for (size_t i = 0; i < t->nmap; i++) {
        struct mapping *m = &t->map[i];
        if (m->pub_port != port(to))
            continue;
        for (size_t k = 0; k < m->nperm; k++) {
            int ok = t->kind == NAT_CONE_AD ? same_ip(&m->perm[k], from) : same(&m->perm[k], from);
            if (ok) {
                *inside = m->inside;
                return 1;
            }
        }
    }
    /* Filtered. The pitfall NAT (MASQUERADE without an input drop) records the unsolicited
     * packet if we never sent to that peer; our next outbound to it then gets another port. */
    if (t->kind == NAT_PITFALL && !nat_sent_to(t, from) && !nat_poisoned(t, from, now) &&
        t->npoison < 8) {
        t->poison[t->npoison].peer = *from;
        t->poison[t->npoison++].until = now + PITFALL_MS;
        t->poisoned++;
    }
    return 0;
}

static void enqueue(struct net *w, const struct sockaddr_storage *from,
                    const struct sockaddr_storage *to, const uint8_t *data, size_t len)
{
    if (w->nq == MAXPKT || len > sizeof w->q[0].data) {
        w->dropped_full++;
        return;
    }
    struct pkt *p = &w->q[w->nq++];
    p->at = w->now + w->latency;
    p->from = *from;
    p->to = *to;
    p->len = len;
    memcpy(p->data, data, len);
}

static void count_sent(struct node *n, const uint8_t *d, size_t len)
{
    struct tun_stun_msg m;
    if (tun_stun_parse(d, len, &m) != 0) {
        CHECK(!"agent sent something that does not parse");
        return;
    }
    if (m.cls == TUN_STUN_REQUEST) {
        n->sent_req++;
        if (m.present & TUN_STUN_HAS_USE_CANDIDATE)
            n->sent_usecand++;
    } else if (m.cls == TUN_STUN_INDICATION) {
        n->sent_ind++;
    } else if (m.cls == TUN_STUN_SUCCESS) {
        n->sent_ok++;
    } else {
        n->sent_err++;
        n->sent_401 += m.error_code == 401;
        n->sent_487 += m.error_code == 487;
    }
}

static void net_send(struct net *w, int k, const struct sockaddr_storage *to, const uint8_t *d,
                     size_t len)
{
    struct node *n = &w->n[k];
    if (same(to, &w->stun))
        n->sent_to_stun++;
    else
        count_sent(n, d, len);
    if (w->drop_all || (w->loss_pct && rnd() % 100 < w->loss_pct))
        return;
    struct sockaddr_storage from = to->ss_family == AF_INET6 ? n->sock6 : n->sock;
    if (from.ss_family != to->ss_family)
        return; /* no route */
    if (n->nat.kind != NAT_NONE && !nat_out(&n->nat, &n->sock, to, w->now, &from))
        return;
    enqueue(w, &from, to, d, len);
}

static void deliver(struct net *w, const struct pkt *p)
{
    if (same(&p->to, &w->stun)) {
        uint8_t out[128];
        int len = tun_stun_respond(p->data, p->len, SA(&p->from), out, sizeof out);
        if (len > 0 && !(w->loss_pct && rnd() % 100 < w->loss_pct) && !w->drop_all)
            enqueue(w, &w->stun, &p->from, out, (size_t)len);
        return;
    }
    for (int k = 0; k < 2; k++) {
        struct node *n = &w->n[k];
        struct sockaddr_storage inside;
        if (n->nat.kind == NAT_NONE) {
            if (!same(&p->to, &n->sock) && !same(&p->to, &n->sock6))
                continue;
        } else {
            if (!same_ip(&p->to, &n->nat.pub) ||
                !nat_in(&n->nat, &p->to, &p->from, w->now, &inside))
                continue;
        }
        int rc = tun_ice_agent_input(n->ag, SA(&p->from), p->data, p->len, w->now);
        CHECK(rc >= 0);
    }
    /* Anything else (a private address of another site) is lost. */
}

static void poll_events(struct net *w)
{
    for (int k = 0; k < 2; k++) {
        struct node *n = &w->n[k];
        struct tun_ice_event ev;
        while (tun_ice_agent_next_event(n->ag, &ev)) {
            switch (ev.type) {
            case TUN_ICE_EV_CANDIDATE:
                n->candidates++;
                break;
            case TUN_ICE_EV_GATHERED:
                n->gathered_at = w->now;
                break;
            case TUN_ICE_EV_CONNECTED:
                n->connected_at = w->now;
                n->pair = ev.pair;
                break;
            case TUN_ICE_EV_FAILED:
                n->failed_at = w->now;
                snprintf(n->reason, sizeof n->reason, "%s", ev.reason);
                break;
            case TUN_ICE_EV_CONSENT_LOST:
                n->lost_at = w->now;
                snprintf(n->reason, sizeof n->reason, "%s", ev.reason);
                break;
            case TUN_ICE_EV_ROLE_CHANGED:
                n->role_changes++;
                CHECK_INT_EQ(ev.controlling, tun_ice_agent_controlling(n->ag));
                break;
            default:
                CHECK(!"unknown event");
            }
        }
    }
}

/* Everything due at w->now: deliveries, sends, events, until quiet. */
static void settle(struct net *w)
{
    for (int guard = 0; guard < 10000; guard++) {
        int progress = 0;
        for (size_t i = 0; i < w->nq;) {
            if (w->q[i].at <= w->now) {
                struct pkt p = w->q[i];
                w->q[i] = w->q[--w->nq];
                deliver(w, &p);
                progress = 1;
            } else {
                i++;
            }
        }
        for (int k = 0; k < 2; k++) {
            uint8_t buf[600];
            struct sockaddr_storage to;
            int len;
            while ((len = tun_ice_agent_next_send(w->n[k].ag, w->now, buf, sizeof buf, &to)) > 0) {
                net_send(w, k, &to, buf, (size_t)len);
                progress = 1;
            }
            CHECK_INT_EQ(len, 0);
        }
        poll_events(w);
        if (!progress)
            return;
    }
    CHECK(!"settle did not converge");
}

typedef int (*stop_fn)(const struct net *w);

/* Advance simulated time to `end` (or until stop() holds), jumping from one due time to the
 * next as the agents' timeouts and the packets in flight say. */
static void run(struct net *w, uint64_t end, stop_fn stop)
{
    for (;;) {
        settle(w);
        if (stop && stop(w))
            return;
        if (w->now >= end)
            return;
        uint64_t next = end;
        for (int k = 0; k < 2; k++) {
            int64_t t = tun_ice_agent_timeout(w->n[k].ag, w->now);
            if (t == 0)
                w->spins++;
            if (t >= 0 && w->now + (uint64_t)t < next)
                next = w->now + (uint64_t)t;
        }
        for (size_t i = 0; i < w->nq; i++)
            if (w->q[i].at < next)
                next = w->q[i].at;
        w->now = next > w->now ? next : w->now + 1;
    }
}

static int both_gathered(const struct net *w)
{
    return w->n[0].gathered_at && w->n[1].gathered_at;
}

static int both_done(const struct net *w)
{
    return (w->n[0].connected_at || w->n[0].failed_at) &&
           (w->n[1].connected_at || w->n[1].failed_at);
}

struct scen {
    int nat[2];
    int controlling[2];
    int v6;
    int stun;
    uint32_t latency;
    unsigned loss_pct;
    uint64_t seed;
    struct tun_ice_cfg cfg;
};

/* Build two nodes, gather, exchange descriptions (as candidate lines, parsed back) at one
 * instant, which is returned. */
static uint64_t setup(struct net *w, const struct scen *s)
{
    memset(w, 0, sizeof *w);
    w->now = 1000;
    w->latency = s->latency ? s->latency : 20;
    rng_state = s->seed ? s->seed : 1;
    w->stun = mkaddr("198.51.100.1", 3478);
    static const char *pub[2] = {"192.0.2.1", "192.0.2.2"};
    static const char *priv[2] = {"10.0.1.2", "10.0.2.2"};
    static const char *natpub[2] = {"203.0.113.1", "203.0.113.2"};
    static const char *v6[2] = {"2001:db8::1", "2001:db8::2"};
    for (int k = 0; k < 2; k++) {
        struct node *n = &w->n[k];
        struct tun_ice_cfg cfg = s->cfg;
        cfg.controlling = s->controlling[k];
        CHECK_INT_EQ(tun_ice_agent_new(&cfg, &n->ag), 0);
        n->nat.kind = s->nat[k];
        n->nat.next_port = 40000;
        if (s->nat[k] == NAT_NONE) {
            n->sock = mkaddr(pub[k], 5000 + k);
        } else {
            n->sock = mkaddr(priv[k], 5000 + k);
            n->nat.pub = mkaddr(natpub[k], 0);
        }
        CHECK_INT_EQ(tun_ice_agent_add_host(n->ag, SA(&n->sock)), 0);
        if (s->v6) {
            n->sock6 = mkaddr(v6[k], 5000 + k);
            CHECK_INT_EQ(tun_ice_agent_add_host(n->ag, SA(&n->sock6)), 0);
        }
        CHECK_INT_EQ(tun_ice_agent_gather(n->ag, &w->stun, s->stun ? 1 : 0, w->now), 0);
    }
    run(w, w->now + 10000, both_gathered);
    CHECK(both_gathered(w));
    uint64_t t0 = w->now;
    w->loss_pct = s->loss_pct; /* gathering under loss is another matter (see test_loss) */
    for (int k = 0; k < 2; k++) {
        struct tun_ice_agent *me = w->n[k].ag, *peer = w->n[1 - k].ag;
        CHECK_INT_EQ(
            tun_ice_agent_set_remote(me, tun_ice_agent_ufrag(peer), tun_ice_agent_pwd(peer), t0),
            0);
        struct tun_ice_cand c[TUN_ICE_MAX_LOCAL];
        size_t n = tun_ice_agent_local_candidates(peer, c, TUN_ICE_MAX_LOCAL);
        for (size_t i = 0; i < n; i++) {
            char line[TUN_ICE_CAND_STRMAX];
            struct tun_ice_cand back;
            int len = tun_ice_cand_format(&c[i], line, sizeof line);
            CHECK(len > 0);
            CHECK_INT_EQ(tun_ice_cand_parse(line, (size_t)len, &back), 0);
            CHECK_INT_EQ(tun_ice_agent_add_remote(me, &back, t0), 0);
        }
        tun_ice_agent_end_of_candidates(me);
    }
    return t0;
}

static void teardown(struct net *w)
{
    CHECK_INT_EQ(w->spins, 0);
    CHECK_INT_EQ(w->dropped_full, 0);
    for (int k = 0; k < 2; k++)
        tun_ice_agent_free(w->n[k].ag);
}

static struct net W; /* large: keep it off the stack */

static void report(const char *name, const struct net *w, uint64_t t0)
{
    for (int k = 0; k < 2; k++) {
        const struct node *n = &w->n[k];
        char ra[64] = "-";
        if (n->connected_at)
            inet_ntop(
                n->pair.remote.addr.ss_family,
                n->pair.remote.addr.ss_family == AF_INET
                    ? (const void *)&((const struct sockaddr_in *)&n->pair.remote.addr)->sin_addr
                    : (const void *)&((const struct sockaddr_in6 *)&n->pair.remote.addr)->sin6_addr,
                ra, sizeof ra);
        printf("  %-10s %c: %s %6llu ms  remote %s %s:%u local %s  checks %u  %s\n", name, 'A' + k,
               n->connected_at ? "connected" : (n->failed_at ? "failed   " : "pending  "),
               (unsigned long long)((n->connected_at ? n->connected_at
                                     : n->failed_at  ? n->failed_at
                                                     : w->now) -
                                    t0),
               n->connected_at ? tun_ice_cand_type_name(n->pair.remote.type) : "-", ra,
               n->connected_at ? port(&n->pair.remote.addr) : 0,
               n->connected_at ? tun_ice_cand_type_name(n->pair.local_type) : "-", n->sent_req,
               n->reason);
    }
}

/* ---- (a) host <-> host ---------------------------------------------------------------------- */

static void test_host(void)
{
    struct scen s = {.controlling = {1, 0}, .v6 = 1};
    struct net *w = &W;
    uint64_t t0 = setup(w, &s);
    CHECK_INT_EQ(tun_ice_agent_state(w->n[0].ag), TUN_ICE_CHECKING);
    run(w, t0 + 60000, both_done);
    report("host", w, t0);
    for (int k = 0; k < 2; k++) {
        struct node *n = &w->n[k], *p = &w->n[1 - k];
        CHECK(n->connected_at > 0);
        CHECK_INT_EQ(n->failed_at, 0);
        CHECK_INT_EQ(tun_ice_agent_state(n->ag), TUN_ICE_CONNECTED);
        /* IPv4 host pair: above the IPv6 one although both work. */
        CHECK(same(&n->pair.remote.addr, &p->sock));
        CHECK_INT_EQ(n->pair.remote.type, TUN_ICE_HOST);
        CHECK_INT_EQ(n->pair.local_type, TUN_ICE_HOST);
        CHECK(same(&n->pair.seen, &n->sock));
        CHECK_INT_EQ(n->pair.nominated, 1);
        struct tun_ice_pair_info info;
        CHECK_INT_EQ(tun_ice_agent_selected(n->ag, &info), 0);
        CHECK(same(&info.remote.addr, &n->pair.remote.addr));
        CHECK_INT_EQ(n->candidates, 0); /* no STUN: no srflx */
        CHECK_INT_EQ(n->role_changes, 0);
    }
    CHECK_INT_EQ(tun_ice_agent_controlling(w->n[0].ag), 1);
    CHECK_INT_EQ(tun_ice_agent_controlling(w->n[1].ag), 0);
    CHECK(w->n[0].sent_usecand >= 1); /* the controlling side nominates */
    CHECK_INT_EQ(w->n[1].sent_usecand, 0);
    /* Connected within a few round trips (20 ms one way) and Ta steps. */
    CHECK(w->n[0].connected_at - t0 < 1000);
    teardown(w);
}

/* ---- (b) cone <-> cone: srflx --------------------------------------------------------------- */

static void test_cone(void)
{
    struct scen s = {.nat = {NAT_CONE, NAT_CONE}, .controlling = {1, 0}, .stun = 1};
    struct net *w = &W;
    uint64_t t0 = setup(w, &s);
    for (int k = 0; k < 2; k++) {
        struct node *n = &w->n[k];
        CHECK_INT_EQ(n->candidates, 1);
        struct sockaddr_storage mapped;
        CHECK_INT_EQ(tun_ice_agent_stun_result(n->ag, 0, &mapped), 1);
        CHECK(same_ip(&mapped, &n->nat.pub));
        CHECK_INT_EQ(port(&mapped), port(&n->sock)); /* port preserved */
        struct tun_ice_cand c[4];
        CHECK_INT_EQ(tun_ice_agent_local_candidates(n->ag, c, 4), 2);
        CHECK_INT_EQ(c[1].type, TUN_ICE_SRFLX);
        CHECK(same(&c[1].rel, &n->sock));
        CHECK(c[0].priority > c[1].priority);
        CHECK(strcmp(c[0].foundation, c[1].foundation) != 0);
    }
    run(w, t0 + 60000, both_done);
    report("cone/cone", w, t0);
    for (int k = 0; k < 2; k++) {
        struct node *n = &w->n[k], *p = &w->n[1 - k];
        CHECK(n->connected_at > 0);
        CHECK_INT_EQ(n->pair.remote.type, TUN_ICE_SRFLX);
        CHECK(same_ip(&n->pair.remote.addr, &p->nat.pub));
        CHECK_INT_EQ(n->pair.local_type, TUN_ICE_SRFLX);
    }
    CHECK(w->n[0].connected_at - t0 < 2000);
    teardown(w);
}

/* ---- (c) symmetric <-> cone: peer-reflexive ------------------------------------------------- */

static void test_sym_cone(void)
{
    /* The cone side filters by address only: against a port-restricted cone a symmetric NAT's
     * new port is filtered and nothing can work without a relay (docs/ice.md). */
    struct scen s = {.nat = {NAT_SYM, NAT_CONE_AD}, .controlling = {1, 0}, .stun = 1};
    struct net *w = &W;
    uint64_t t0 = setup(w, &s);
    run(w, t0 + 60000, both_done);
    report("sym/cone", w, t0);
    struct node *a = &w->n[0], *b = &w->n[1];
    CHECK(a->connected_at > 0);
    CHECK(b->connected_at > 0);
    /* A (symmetric) reached B's srflx, and was seen from a port it never advertised. */
    CHECK_INT_EQ(a->pair.remote.type, TUN_ICE_SRFLX);
    CHECK_INT_EQ(a->pair.local_type, TUN_ICE_PRFLX);
    /* B learnt that port from A's check: a peer-reflexive remote candidate. */
    CHECK_INT_EQ(b->pair.remote.type, TUN_ICE_PRFLX);
    CHECK(same(&b->pair.remote.addr, &a->pair.seen));
    CHECK_INT_EQ(b->pair.local_type, TUN_ICE_SRFLX);
    teardown(w);

    /* The same with the roles swapped. */
    s.controlling[0] = 0;
    s.controlling[1] = 1;
    t0 = setup(w, &s);
    run(w, t0 + 60000, both_done);
    report("cone/sym", w, t0);
    CHECK(w->n[0].connected_at > 0 && w->n[1].connected_at > 0);
    CHECK_INT_EQ(w->n[1].pair.remote.type, TUN_ICE_PRFLX);
    CHECK_INT_EQ(w->n[0].pair.local_type, TUN_ICE_PRFLX);
    teardown(w);
}

/* ---- (d) symmetric <-> symmetric: failure --------------------------------------------------- */

static void test_sym_sym(void)
{
    struct scen s = {.nat = {NAT_SYM, NAT_SYM}, .controlling = {1, 0}, .stun = 1};
    struct net *w = &W;
    uint64_t t0 = setup(w, &s);
    run(w, t0 + 60000, both_done);
    report("sym/sym", w, t0);
    for (int k = 0; k < 2; k++) {
        struct node *n = &w->n[k];
        CHECK_INT_EQ(n->connected_at, 0);
        CHECK_INT_EQ(n->failed_at, t0 + 40000);
        CHECK_INT_EQ(tun_ice_agent_state(n->ag), TUN_ICE_FAILED);
        CHECK_STR_EQ(n->reason, "no candidate pair answered after 40 s: 2 pairs checked, 0 "
                                "responses, 0 checks received");
        /* Re-punching kept going until the end: far more than one transaction per pair. */
        CHECK(n->sent_req > 2 * 7);
        CHECK_INT_EQ(tun_ice_agent_timeout(n->ag, w->now), -1);
    }
    /* Failed is final: nothing more is sent. */
    unsigned before = w->n[0].sent_req;
    run(w, w->now + 60000, NULL);
    CHECK_INT_EQ(w->n[0].sent_req, before);
    teardown(w);
}

/* ---- (e) role conflict ---------------------------------------------------------------------- */

static void test_conflict(void)
{
    struct net *w = &W;
    for (int both = 1; both >= 0; both--) {
        struct scen s = {.controlling = {both, both}};
        uint64_t t0 = setup(w, &s);
        run(w, t0 + 60000, both_done);
        report(both ? "both-ctrl" : "both-ctld", w, t0);
        CHECK(w->n[0].connected_at > 0 && w->n[1].connected_at > 0);
        CHECK_INT_EQ(tun_ice_agent_controlling(w->n[0].ag) + tun_ice_agent_controlling(w->n[1].ag),
                     1);
        CHECK_INT_EQ(w->n[0].role_changes + w->n[1].role_changes, 1);
        CHECK(w->n[0].sent_487 + w->n[1].sent_487 >= 1 ||
              w->n[0].role_changes + w->n[1].role_changes == 1);
        int ctl = tun_ice_agent_controlling(w->n[0].ag) ? 0 : 1;
        CHECK(w->n[ctl].sent_usecand >= 1);
        CHECK_INT_EQ(w->n[1 - ctl].sent_usecand, 0);
        CHECK(same(&w->n[0].pair.remote.addr, &w->n[1].sock));
        CHECK(same(&w->n[1].pair.remote.addr, &w->n[0].sock));
        teardown(w);
    }
}

/* ---- (f) keepalives and consent ------------------------------------------------------------- */

static void test_consent(void)
{
    struct scen s = {.controlling = {1, 0}};
    struct net *w = &W;
    uint64_t t0 = setup(w, &s);
    run(w, t0 + 60000, both_done);
    CHECK(w->n[0].connected_at && w->n[1].connected_at);
    uint64_t c = w->now;

    /* Idle for 61 s: a keepalive every 15 s; consent checks every 4..6 s, all answered. */
    unsigned ind0 = w->n[0].sent_ind, req0 = w->n[0].sent_req;
    run(w, c + 61000, NULL);
    unsigned kas = w->n[0].sent_ind - ind0, consents = w->n[0].sent_req - req0;
    printf("  idle 61 s: %u keepalives, %u consent checks\n", kas, consents);
    CHECK_INT_EQ(kas, 4);
    CHECK(consents >= 10 && consents <= 16);
    CHECK_INT_EQ(tun_ice_agent_state(w->n[0].ag), TUN_ICE_CONNECTED);
    CHECK_INT_EQ(w->n[0].lost_at, 0);

    /* Traffic reported every second: no keepalives, consent checks go on. */
    ind0 = w->n[0].sent_ind;
    req0 = w->n[0].sent_req;
    for (int i = 0; i < 60; i++) {
        tun_ice_agent_traffic(w->n[0].ag, w->now);
        run(w, w->now + 1000, NULL);
    }
    CHECK_INT_EQ(w->n[0].sent_ind - ind0, 0);
    CHECK(w->n[0].sent_req - req0 >= 10);

    /* Now the path dies. */
    uint64_t cut = w->now;
    w->drop_all = 1;
    run(w, cut + 60000, NULL);
    for (int k = 0; k < 2; k++) {
        struct node *n = &w->n[k];
        CHECK(n->lost_at > 0);
        /* consent_timeout_ms after the last answer, which came at most ~6 s before the cut
         * (or just after it, when it was in flight). */
        CHECK(n->lost_at > cut + 30000 - 6100);
        CHECK(n->lost_at <= cut + 30000 + 2 * w->latency); /* an answer was in flight */
        CHECK_INT_EQ(tun_ice_agent_state(n->ag), TUN_ICE_DISCONNECTED);
        CHECK(strstr(n->reason, "consent") != NULL);
    }
    printf("  consent lost %llu ms after the path died\n",
           (unsigned long long)(w->n[0].lost_at - cut));
    /* Disconnected: quiet, but peer checks are still answered. */
    CHECK_INT_EQ(tun_ice_agent_timeout(w->n[0].ag, w->now), -1);
    teardown(w);
}

/* ---- (g) bad credentials -------------------------------------------------------------------- */

struct req_opts {
    const char *user;
    const char *key; /* NULL: no MESSAGE-INTEGRITY */
    int priority, role, use_cand, fingerprint;
    uint64_t tiebreaker;
};

static int mk_req(uint8_t *buf, size_t cap, const struct req_opts *o)
{
    uint8_t id[TUN_STUN_TXID_LEN];
    CHECK_INT_EQ(tun_stun_new_txid(id), 0);
    struct tun_stun_writer wr;
    tun_stun_begin(&wr, buf, cap, TUN_STUN_BINDING, TUN_STUN_REQUEST, id);
    if (o->user)
        tun_stun_add_bytes(&wr, TUN_STUN_ATTR_USERNAME, o->user, strlen(o->user));
    if (o->priority)
        tun_stun_add_u32(&wr, TUN_STUN_ATTR_PRIORITY, 0x6E7FFFFF);
    if (o->role)
        tun_stun_add_u64(&wr,
                         o->role > 0 ? TUN_STUN_ATTR_ICE_CONTROLLING : TUN_STUN_ATTR_ICE_CONTROLLED,
                         o->tiebreaker);
    if (o->use_cand)
        tun_stun_add_flag(&wr, TUN_STUN_ATTR_USE_CANDIDATE);
    if (o->key)
        tun_stun_add_integrity(&wr, (const uint8_t *)o->key, strlen(o->key));
    if (o->fingerprint)
        tun_stun_add_fingerprint(&wr);
    return tun_stun_end(&wr);
}

/* Feed one request to `ag` from `from`; return the error code of the answer (0 = success, -1
 * none) and count any further datagram (a triggered check) into *more. */
static int ask(struct tun_ice_agent *ag, const struct sockaddr_storage *from,
               const struct req_opts *o, int *rc_out, unsigned *more)
{
    uint8_t req[512], out[600];
    int len = mk_req(req, sizeof req, o);
    CHECK(len > 0);
    *rc_out = tun_ice_agent_input(ag, SA(from), req, (size_t)len, 5000);
    struct sockaddr_storage to;
    int n = tun_ice_agent_next_send(ag, 5000, out, sizeof out, &to);
    int code = -1;
    if (n > 0) {
        struct tun_stun_msg m;
        CHECK_INT_EQ(tun_stun_parse(out, (size_t)n, &m), 0);
        CHECK(same(&to, from));
        CHECK_MEM_EQ(m.txid, req + 8, TUN_STUN_TXID_LEN);
        if (m.cls == TUN_STUN_SUCCESS) {
            code = 0;
            CHECK(m.present & TUN_STUN_HAS_XOR_MAPPED);
            CHECK(same(&m.xor_mapped, from));
            const char *pwd = tun_ice_agent_pwd(ag);
            CHECK_INT_EQ(
                tun_stun_check_integrity(out, (size_t)n, &m, (const uint8_t *)pwd, strlen(pwd)), 0);
        } else if (m.cls == TUN_STUN_ERROR) {
            code = m.error_code;
        }
    }
    *more = 0;
    while (tun_ice_agent_next_send(ag, 5000 + 1000 * (*more + 1), out, sizeof out, &to) > 0 &&
           *more < 50)
        (*more)++;
    return code;
}

static void test_credentials(void)
{
    struct tun_ice_agent *a, *b;
    CHECK_INT_EQ(tun_ice_agent_new(NULL, &a), 0);
    CHECK_INT_EQ(tun_ice_agent_new(NULL, &b), 0);
    CHECK_INT_EQ(strlen(tun_ice_agent_ufrag(a)), TUN_ICE_UFRAG_LEN);
    CHECK_INT_EQ(strlen(tun_ice_agent_pwd(a)), TUN_ICE_PWD_LEN);
    CHECK(strcmp(tun_ice_agent_pwd(a), tun_ice_agent_pwd(b)) != 0);
    struct sockaddr_storage host = mkaddr("192.0.2.2", 5000);
    CHECK_INT_EQ(tun_ice_agent_add_host(b, SA(&host)), 0);
    CHECK_INT_EQ(tun_ice_agent_gather(b, NULL, 0, 0), 0);
    CHECK_INT_EQ(tun_ice_agent_set_remote(b, tun_ice_agent_ufrag(a), tun_ice_agent_pwd(a), 0), 0);
    struct tun_ice_event ev;
    while (tun_ice_agent_next_event(b, &ev))
        ;

    char good[64], wrong_local[64], wrong_remote[64];
    snprintf(good, sizeof good, "%s:%s", tun_ice_agent_ufrag(b), tun_ice_agent_ufrag(a));
    snprintf(wrong_local, sizeof wrong_local, "XXXXXXXX:%s", tun_ice_agent_ufrag(a));
    snprintf(wrong_remote, sizeof wrong_remote, "%s:YYYY", tun_ice_agent_ufrag(b));
    const char *bpwd = tun_ice_agent_pwd(b);
    struct sockaddr_storage evil = mkaddr("192.0.2.66", 666);
    int rc;
    unsigned more;

    /* Wrong password. */
    struct req_opts o = {good, "this-is-not-the-password", 1, 1, 1, 1, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 401);
    CHECK_INT_EQ(rc, 1);
    CHECK_INT_EQ(more, 0);
    /* Wrong ufrag (ours): not for this agent, still told so. */
    o = (struct req_opts){wrong_local, bpwd, 1, 1, 1, 1, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 401);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(more, 0);
    /* Right password, but the remote ufrag is not the peer's. */
    o = (struct req_opts){wrong_remote, bpwd, 1, 1, 1, 1, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 401);
    CHECK_INT_EQ(more, 0);
    /* Missing MESSAGE-INTEGRITY, USERNAME, FINGERPRINT, PRIORITY, role: 400. */
    o = (struct req_opts){good, NULL, 1, 1, 0, 1, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 400);
    o = (struct req_opts){NULL, bpwd, 1, 1, 0, 1, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 400);
    o = (struct req_opts){good, bpwd, 1, 1, 0, 0, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 400);
    o = (struct req_opts){good, bpwd, 0, 1, 0, 1, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 400);
    o = (struct req_opts){good, bpwd, 1, 0, 0, 1, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 400);
    CHECK_INT_EQ(more, 0);
    CHECK(tun_ice_agent_next_event(b, &ev) == 0); /* nothing learnt, no role change */
    CHECK_INT_EQ(tun_ice_agent_controlling(b), 0);

    /* The genuine article: answered, and the unknown source is checked back (peer-reflexive).
     * ICE-CONTROLLING with tie-breaker 7 against a controlled agent: no conflict. */
    o = (struct req_opts){good, bpwd, 1, 1, 0, 1, 7};
    CHECK_INT_EQ(ask(b, &evil, &o, &rc, &more), 0);
    CHECK_INT_EQ(rc, 1);
    CHECK(more >= 1);

    /* Responses: one that does not verify with the peer's password is not believed. */
    tun_ice_agent_free(b);
    CHECK_INT_EQ(tun_ice_agent_new(NULL, &b), 0);
    CHECK_INT_EQ(tun_ice_agent_add_host(b, SA(&host)), 0);
    CHECK_INT_EQ(tun_ice_agent_set_remote(b, tun_ice_agent_ufrag(a), tun_ice_agent_pwd(a), 0), 0);
    struct tun_ice_cand rc_a = {.type = TUN_ICE_HOST, .priority = 2130706431, .foundation = "x"};
    rc_a.addr = mkaddr("192.0.2.1", 5000);
    CHECK_INT_EQ(tun_ice_agent_add_remote(b, &rc_a, 0), 0);
    uint8_t out[600], resp[200];
    struct sockaddr_storage to;
    int n = tun_ice_agent_next_send(b, 100, out, sizeof out, &to);
    CHECK(n > 0);
    struct tun_stun_msg m;
    CHECK_INT_EQ(tun_stun_parse(out, (size_t)n, &m), 0);
    /* The check itself: USERNAME "theirs:ours", keyed with the peer's password. */
    CHECK(m.username_len == 2 * TUN_ICE_UFRAG_LEN + 1);
    CHECK(!memcmp(m.username, tun_ice_agent_ufrag(a), TUN_ICE_UFRAG_LEN));
    CHECK(m.present & TUN_STUN_HAS_PRIORITY);
    CHECK(m.present & TUN_STUN_HAS_CONTROLLED);
    CHECK(m.present & TUN_STUN_HAS_FINGERPRINT);
    const char *apwd = tun_ice_agent_pwd(a);
    CHECK_INT_EQ(tun_stun_check_integrity(out, (size_t)n, &m, (const uint8_t *)apwd, strlen(apwd)),
                 0);
    int rl = tun_stun_binding_success(resp, sizeof resp, m.txid, SA(&host),
                                      (const uint8_t *)"wrong-password-wrong-password", 29);
    CHECK_INT_EQ(tun_ice_agent_input(b, SA(&to), resp, (size_t)rl, 120), 0);
    /* Unsigned success: ignored too. */
    rl = tun_stun_binding_success(resp, sizeof resp, m.txid, SA(&host), NULL, 0);
    CHECK_INT_EQ(tun_ice_agent_input(b, SA(&to), resp, (size_t)rl, 120), 0);
    /* Right password, wrong source: the check fails (non-symmetric). */
    rl = tun_stun_binding_success(resp, sizeof resp, m.txid, SA(&host), (const uint8_t *)apwd,
                                  strlen(apwd));
    CHECK_INT_EQ(tun_ice_agent_input(b, SA(&evil), resp, (size_t)rl, 120), 1);
    struct tun_ice_pair_info info;
    CHECK_INT_EQ(tun_ice_agent_selected(b, &info), TUN_EINVAL);
    /* Garbage is an error, a non-Binding message is not ours. */
    CHECK(tun_ice_agent_input(b, SA(&to), (const uint8_t *)"hello", 5, 130) < 0);
    tun_ice_agent_free(a);
    tun_ice_agent_free(b);
}

/* ---- (h) 40% loss --------------------------------------------------------------------------- */

static void test_loss(void)
{
    /*
     * 40% of the datagrams in each direction are lost (seeded; the agents' own randomness,
     * the stagger and transaction ids, still varies the pattern from run to run). With the
     * default fail_ms of 40 s about 1 run in 3000 fails (measured over 30000 runs); the test
     * gives ICE 120 s, which no run of 30000 needed (the slowest took 68 s), and reports how
     * many made it within 40 s.
     */
    struct net *w = &W;
    uint64_t worst = 0, sum = 0;
    int runs = 20, ok = 0, within40 = 0;
    for (int i = 0; i < runs; i++) {
        struct scen s = {.nat = {NAT_CONE, NAT_CONE},
                         .controlling = {1, 0},
                         .stun = 1,
                         .loss_pct = 40,
                         .seed = 1000 + (uint64_t)i,
                         .cfg = {.fail_ms = 120000}};
        uint64_t t0 = setup(w, &s);
        run(w, t0 + 130000, both_done);
        int both = w->n[0].connected_at && w->n[1].connected_at;
        ok += both;
        if (!both)
            report("loss", w, t0);
        if (both) {
            uint64_t t = (w->n[0].connected_at > w->n[1].connected_at ? w->n[0].connected_at
                                                                      : w->n[1].connected_at) -
                         t0;
            sum += t;
            worst = t > worst ? t : worst;
            within40 += t < 40000;
            CHECK(same(&w->n[0].pair.remote.addr, &w->n[1].pair.seen));
            CHECK(same(&w->n[1].pair.remote.addr, &w->n[0].pair.seen));
        }
        teardown(w);
    }
    printf("  40%% loss, cone/cone: %d/%d connected (%d within 40 s), mean %llu ms, worst %llu "
           "ms\n",
           ok, runs, within40, (unsigned long long)(ok ? sum / (uint64_t)ok : 0),
           (unsigned long long)worst);
    CHECK_INT_EQ(ok, runs);
}

/* ---- (i) the conntrack pitfall -------------------------------------------------------------- */

/*
 * B's NAT behaves like Linux MASQUERADE without the usual "drop unsolicited input" rule: a
 * packet from A that arrives before B ever sent to A leaves a conntrack entry (A -> B's
 * port), and B's own packets to A are then mapped to *another* port while that entry lives
 * (PITFALL_MS here; 30 s is conntrack's unreplied-UDP timeout). A's NAT filters by address
 * and port, so B's packets from the new port are dropped, and A's packets to the advertised
 * port hit the stale entry: nothing gets through in either direction for 30 s.
 *
 * B is the controlled side, so its first ordinary check is staggered and A's first check
 * reaches B's NAT first: the pitfall triggers deterministically.
 */
static void test_pitfall(void)
{
    struct net *w = &W;
    struct scen s = {.nat = {NAT_CONE, NAT_PITFALL}, .controlling = {1, 0}, .stun = 1};

    /* With re-punch (the default 2 s): each failed pair is checked again, so when the entry
     * has expired B's next check leaves from the advertised port, A's NAT lets it in (A has
     * been sending there), and the pair works. */
    uint64_t t0 = setup(w, &s);
    run(w, t0 + 60000, both_done);
    report("pitfall", w, t0);
    CHECK(w->n[1].nat.poisoned >= 1);
    uint64_t poisoned_until = w->n[1].nat.poison[0].until;
    for (int k = 0; k < 2; k++) {
        CHECK(w->n[k].connected_at > 0);
        CHECK(w->n[k].connected_at >= poisoned_until); /* not a moment before */
        CHECK(w->n[k].connected_at < t0 + 40000);
        CHECK_INT_EQ(w->n[k].pair.remote.type, TUN_ICE_SRFLX);
    }
    printf("  pitfall with re-punch: connected %llu ms after the entry expired\n",
           (unsigned long long)(w->n[0].connected_at - poisoned_until));
    teardown(w);

    /* Without re-punch (repunch_ms beyond fail_ms): every pair has used its 7 transmissions
     * (12.75 s) long before the entry expires, nobody sends again, and ICE fails. */
    s.cfg.repunch_ms = 60000;
    t0 = setup(w, &s);
    run(w, t0 + 60000, both_done);
    report("no-repunch", w, t0);
    CHECK(w->n[1].nat.poisoned >= 1);
    for (int k = 0; k < 2; k++) {
        CHECK_INT_EQ(w->n[k].connected_at, 0);
        CHECK_INT_EQ(w->n[k].failed_at, t0 + 40000);
        CHECK_INT_EQ(w->n[k].sent_req, 2 * 7); /* two pairs, one transaction each */
    }
    teardown(w);

    /* The pitfall on the controlling side does not trigger: its check leaves before the
     * controlled side's (staggered) first packet arrives. */
    s.cfg.repunch_ms = 0;
    s.nat[0] = NAT_PITFALL;
    s.nat[1] = NAT_CONE;
    t0 = setup(w, &s);
    run(w, t0 + 60000, both_done);
    report("pitfall-A", w, t0);
    CHECK_INT_EQ(w->n[0].nat.poisoned, 0);
    CHECK(w->n[0].connected_at > 0 && w->n[0].connected_at - t0 < 2000);
    teardown(w);
}

/* ---- misc API ------------------------------------------------------------------------------- */

static void test_api(void)
{
    struct tun_ice_agent *a;
    CHECK_INT_EQ(tun_ice_agent_new(NULL, &a), 0);
    CHECK_INT_EQ(tun_ice_agent_state(a), TUN_ICE_NEW);
    struct sockaddr_storage h4 = mkaddr("192.0.2.1", 5000), h4b = mkaddr("192.0.2.9", 5000);
    struct sockaddr_storage h6 = mkaddr("2001:db8::1", 5000), zero = mkaddr("192.0.2.3", 0);
    struct sockaddr_storage mapped6 = mkaddr("::ffff:192.0.2.1", 5000);
    CHECK_INT_EQ(tun_ice_agent_add_host(a, SA(&h6)), 0);
    CHECK_INT_EQ(tun_ice_agent_add_host(a, SA(&h4)), 0);
    CHECK_INT_EQ(tun_ice_agent_add_host(a, SA(&h4b)), 0);
    CHECK_INT_EQ(tun_ice_agent_add_host(a, SA(&h4)), 0);      /* duplicate */
    CHECK_INT_EQ(tun_ice_agent_add_host(a, SA(&mapped6)), 0); /* the same, v4-mapped */
    CHECK_INT_EQ(tun_ice_agent_add_host(a, SA(&zero)), TUN_EINVAL);
    struct tun_ice_cand c[8];
    CHECK_INT_EQ(tun_ice_agent_local_candidates(a, c, 8), 3);
    /* IPv4 above IPv6, the caller's order kept within IPv4. */
    CHECK(c[1].priority > c[2].priority);
    CHECK(c[2].priority > c[0].priority);
    CHECK_INT_EQ(c[1].priority, tun_ice_priority(TUN_ICE_HOST, 65535));
    CHECK_INT_EQ(tun_ice_priority(TUN_ICE_HOST, 65535), 126u << 24 | 65535u << 8 | 255u);
    struct sockaddr_storage srv[5];
    for (int i = 0; i < 5; i++)
        srv[i] = mkaddr("198.51.100.1", 3478 + i);
    CHECK_INT_EQ(tun_ice_agent_gather(a, srv, 5, 0), TUN_ERANGE);
    CHECK_INT_EQ(tun_ice_agent_gather(a, srv, 4, 0), 0);
    CHECK_INT_EQ(tun_ice_agent_state(a), TUN_ICE_GATHERING);
    CHECK_INT_EQ(tun_ice_agent_gather(a, srv, 1, 0), TUN_EINVAL);
    CHECK_INT_EQ(tun_ice_agent_add_host(a, SA(&h4)), TUN_EINVAL); /* gathering started */
    /* STUN requests are paced by Ta. */
    uint8_t out[600];
    struct sockaddr_storage to;
    uint64_t times[4];
    int sent = 0;
    for (uint64_t t = 0; t < 200 && sent < 4; t++)
        while (sent < 4 && tun_ice_agent_next_send(a, t, out, sizeof out, &to) > 0)
            times[sent++] = t;
    CHECK_INT_EQ(sent, 4);
    for (int i = 0; i < sent; i++)
        CHECK_INT_EQ(times[i], 50 * i);
    CHECK_INT_EQ(tun_ice_agent_stun_result(a, 0, NULL), 0);
    /* Nobody answers: gathering ends at gather_ms. */
    struct tun_ice_event ev;
    CHECK_INT_EQ(tun_ice_agent_timeout(a, 4000) <= 1000, 1);
    while (tun_ice_agent_next_send(a, 5000, out, sizeof out, &to) > 0)
        ;
    CHECK_INT_EQ(tun_ice_agent_next_event(a, &ev), 1);
    CHECK_INT_EQ(ev.type, TUN_ICE_EV_GATHERED);
    CHECK_INT_EQ(tun_ice_agent_state(a), TUN_ICE_GATHERED);
    CHECK_INT_EQ(tun_ice_agent_stun_result(a, 0, NULL), -1);
    CHECK_INT_EQ(tun_ice_agent_stun_result(a, 9, NULL), -1);

    /* Remote description. */
    CHECK_INT_EQ(tun_ice_agent_set_remote(a, "abc", "0123456789012345678901", 0), TUN_EINVAL);
    CHECK_INT_EQ(tun_ice_agent_set_remote(a, "abcd", "012345678901234567890", 0), TUN_EINVAL);
    CHECK_INT_EQ(tun_ice_agent_set_remote(a, "ab:d", "0123456789012345678901", 0), TUN_EINVAL);
    CHECK_INT_EQ(tun_ice_agent_set_remote(a, "abcd", "0123456789012345678901", 6000), 0);
    CHECK_INT_EQ(tun_ice_agent_set_remote(a, "abcd", "0123456789012345678901", 6000), 0);
    CHECK_INT_EQ(tun_ice_agent_set_remote(a, "abce", "0123456789012345678901", 6000), TUN_EINVAL);
    CHECK_INT_EQ(tun_ice_agent_state(a), TUN_ICE_CHECKING);
    struct tun_ice_cand r = {.type = TUN_ICE_HOST, .priority = 1, .foundation = "f"};
    r.addr = mkaddr("192.0.2.200", 1);
    CHECK_INT_EQ(tun_ice_agent_add_remote(a, &r, 6000), 0);
    CHECK_INT_EQ(tun_ice_agent_add_remote(a, &r, 6000), 0); /* duplicate */
    r.type = 9;
    CHECK_INT_EQ(tun_ice_agent_add_remote(a, &r, 6000), TUN_EINVAL);
    r.type = TUN_ICE_HOST;
    int full = 0;
    for (int i = 0; i < 40; i++) {
        r.addr = mkaddr("192.0.2.201", 1000 + i);
        if (tun_ice_agent_add_remote(a, &r, 6000) == TUN_ERANGE)
            full++;
    }
    CHECK_INT_EQ(full, 40 - (TUN_ICE_MAX_REMOTE - 1));
    /* Checks are paced by Ta too; this agent is controlled (the default), so its first
     * ordinary check waits Ta + 0..Ta. */
    sent = 0;
    uint64_t last = 0, first = 0;
    int paced = 1;
    uint8_t ids[64][TUN_STUN_TXID_LEN];
    for (uint64_t t = 6000; t < 6400; t++) {
        while (tun_ice_agent_next_send(a, t, out, sizeof out, &to) > 0) {
            struct tun_stun_msg m;
            CHECK_INT_EQ(tun_stun_parse(out, 0 + (size_t)(out[2] << 8 | out[3]) + 20, &m), 0);
            int seen_id = 0;
            for (int k = 0; k < sent && k < 64; k++)
                seen_id |= !memcmp(ids[k], m.txid, TUN_STUN_TXID_LEN);
            if (m.cls == TUN_STUN_REQUEST && !seen_id) {
                if (sent && t - last < 50)
                    paced = 0;
                if (!sent)
                    first = t;
                last = t;
                if (sent < 64)
                    memcpy(ids[sent], m.txid, TUN_STUN_TXID_LEN);
                sent++;
            }
        }
    }
    CHECK(paced);
    CHECK(first >= 6050 && first <= 6100);
    CHECK(sent >= 6 && sent <= 7);

    /* Stop: nothing more is sent or reported; checks are still answered. */
    tun_ice_agent_stop(a);
    CHECK_INT_EQ(tun_ice_agent_next_send(a, 7000, out, sizeof out, &to), 0);
    CHECK_INT_EQ(tun_ice_agent_timeout(a, 7000), -1);
    CHECK_INT_EQ(tun_ice_agent_next_event(a, &ev), 0);
    char user[64];
    snprintf(user, sizeof user, "%s:abcd", tun_ice_agent_ufrag(a));
    struct req_opts o = {user, tun_ice_agent_pwd(a), 1, 1, 1, 1, 7};
    int rc;
    unsigned more;
    struct sockaddr_storage src = mkaddr("192.0.2.77", 7);
    CHECK_INT_EQ(ask(a, &src, &o, &rc, &more), 0);
    CHECK_INT_EQ(more, 0);
    CHECK_INT_EQ(tun_ice_agent_controlling(a), 0);
    CHECK_INT_EQ(tun_ice_agent_next_event(a, &ev), 0);
    tun_ice_agent_free(a);
    tun_ice_agent_free(NULL);

    /* Checks that arrive before the remote credentials: answered, remembered, checked later. */
    struct tun_ice_agent *b;
    CHECK_INT_EQ(tun_ice_agent_new(NULL, &b), 0);
    CHECK_INT_EQ(tun_ice_agent_add_host(b, SA(&h4)), 0);
    snprintf(user, sizeof user, "%s:efgh", tun_ice_agent_ufrag(b));
    o = (struct req_opts){user, tun_ice_agent_pwd(b), 1, 1, 1, 1, 7};
    CHECK_INT_EQ(ask(b, &src, &o, &rc, &more), 0);
    CHECK_INT_EQ(rc, 1);
    CHECK_INT_EQ(more, 0);
    CHECK_INT_EQ(tun_ice_agent_set_remote(b, "efgh", "0123456789012345678901", 9000), 0);
    int n = tun_ice_agent_next_send(b, 9000, out, sizeof out, &to);
    CHECK(n > 0);
    CHECK(same(&to, &src));
    tun_ice_agent_free(b);
}

/* ---- (j) candidate lines -------------------------------------------------------------------- */

static void test_lines(void)
{
    struct tun_ice_cand c = {.type = TUN_ICE_SRFLX, .priority = 1686052607, .foundation = "a1+/"};
    c.addr = mkaddr("203.0.113.7", 61000);
    c.rel = mkaddr("10.0.0.2", 5000);
    char buf[TUN_ICE_CAND_STRMAX];
    int n = tun_ice_cand_format(&c, buf, sizeof buf);
    CHECK_STR_EQ(buf, "candidate:a1+/ 1 udp 1686052607 203.0.113.7 61000 typ srflx raddr 10.0.0.2 "
                      "rport 5000");
    CHECK_INT_EQ(n, (int)strlen(buf));
    struct tun_ice_cand p;
    CHECK_INT_EQ(tun_ice_cand_parse(buf, (size_t)n, &p), 0);
    CHECK_INT_EQ(p.type, c.type);
    CHECK_INT_EQ(p.priority, c.priority);
    CHECK_STR_EQ(p.foundation, c.foundation);
    CHECK(same(&p.addr, &c.addr));
    CHECK(same(&p.rel, &c.rel));
    CHECK_INT_EQ(tun_ice_cand_format(&c, buf, 20), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_ice_cand_format(&c, buf, (size_t)n), TUN_ETOOBIG);
    CHECK_INT_EQ(tun_ice_cand_format(&c, buf, (size_t)n + 1), n);

    static const int types[] = {TUN_ICE_HOST, TUN_ICE_SRFLX, TUN_ICE_PRFLX, TUN_ICE_RELAY};
    static const char *ips[] = {"192.0.2.1", "2001:db8::1", "fe80::1", "::1", "0.0.0.1"};
    for (int t = 0; t < 4; t++) {
        for (int i = 0; i < 5; i++) {
            struct tun_ice_cand x = {.type = types[t], .priority = 0x7FFFFFFF, .foundation = "0"};
            x.addr = mkaddr(ips[i], 65535);
            n = tun_ice_cand_format(&x, buf, sizeof buf);
            CHECK(n > 0);
            CHECK_INT_EQ(tun_ice_cand_parse(buf, (size_t)n, &p), 0);
            CHECK(same(&p.addr, &x.addr));
            CHECK_INT_EQ(p.type, x.type);
            CHECK_INT_EQ(p.rel.ss_family, 0);
            CHECK_STR_EQ(tun_ice_cand_type_name(p.type), tun_ice_cand_type_name(x.type));
        }
    }

    static const char *good[] = {
        "candidate:1 1 udp 2130706431 192.0.2.5 50000 typ host",
        "a=candidate:1 1 UDP 2130706431 192.0.2.5 50000 typ host generation 0 network-id 1",
        "1 1 Udp 2130706431 192.0.2.5 50000 typ host",
        "candidate:842163049 1 udp 1677729535 198.51.100.3 53705 typ srflx raddr 0.0.0.0 rport 0 "
        "generation 0 ufrag 8ewc network-cost 999",
        "candidate:abc 1 udp 1 2001:db8::5 1 typ relay raddr 2001:db8::6 rport 9",
        "candidate:x 1 udp 100 192.0.2.5 9 typ prflx ufrag abcd\r\n",
        "  candidate:x 1 udp 100 192.0.2.5 9 typ host  \n",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        int rc = tun_ice_cand_parse(good[i], strlen(good[i]), &p);
        if (rc != 0)
            fprintf(stderr, "rejected: %s\n", good[i]);
        CHECK_INT_EQ(rc, 0);
    }
    CHECK_INT_EQ(tun_ice_cand_parse(good[3], strlen(good[3]), &p), 0);
    CHECK_INT_EQ(p.type, TUN_ICE_SRFLX);
    CHECK_INT_EQ(port(&p.addr), 53705);
    CHECK_INT_EQ(p.rel.ss_family, AF_INET);
    CHECK_INT_EQ(port(&p.rel), 0);

    static const char *bad[] = {
        "",
        "candidate:",
        "candidate:1 1 udp 2130706431 192.0.2.5 50000 typ",
        "candidate:1 1 udp 2130706431 192.0.2.5 50000 host",
        "candidate:1 2 udp 2130706431 192.0.2.5 50000 typ host",
        "candidate:1 01 udp 2130706431 192.0.2.5 50000 typ host",
        "candidate:1 1 tcp 2130706431 192.0.2.5 50000 typ host",
        "candidate:1 1 udp 0 192.0.2.5 50000 typ host",
        "candidate:1 1 udp 2147483648 192.0.2.5 50000 typ host",
        "candidate:1 1 udp 99999999999 192.0.2.5 50000 typ host",
        "candidate:1 1 udp 0100 192.0.2.5 50000 typ host",
        "candidate:1 1 udp -1 192.0.2.5 50000 typ host",
        "candidate:1 1 udp +1 192.0.2.5 50000 typ host",
        "candidate:1 1 udp 1 192.0.2.5 0 typ host",
        "candidate:1 1 udp 1 192.0.2.5 65536 typ host",
        "candidate:1 1 udp 1 192.0.2.5 5x typ host",
        "candidate:1 1 udp 1 example.com 5000 typ host",
        "candidate:1 1 udp 1 abcd.local 5000 typ host",
        "candidate:1 1 udp 1 192.0.2 5000 typ host",
        "candidate:1 1 udp 1 192.0.2.256 5000 typ host",
        "candidate:1 1 udp 1 fe80::1%eth0 5000 typ host",
        "candidate:1 1 udp 1 [2001:db8::1] 5000 typ host",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ foo",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ Host",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ host raddr 10.0.0.1",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ host raddr 10.0.0.1 rport",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ host rport 5 raddr 10.0.0.1",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ host raddr x rport 5",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ host raddr 10.0.0.1 rport 70000",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ host raddr 1.2.3.4 rport 1 raddr 1.2.3.4 rport 1",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ host generation",
        "candidate:1 1 udp 1 192.0.2.5 5000 typ host typ host",
        "candidate:123456789012345678901234567890123 1 udp 1 192.0.2.5 5000 typ host",
        "candidate:a-b 1 udp 1 192.0.2.5 5000 typ host",
        "candidate:a\x01 1 udp 1 192.0.2.5 5000 typ host",
        "candidate:a 1 udp 1 192.0.2.5 5000 typ host\x7f",
        "candidate:a 1 udp 1 192.0.2.5 5000 typ host \xc3\xa9 x",
        "candidate:a 1 udp 1 192.0.2.5 5000\ntyp host",
        "a=candidate:",
        "candidate:candidate:1 1 udp 1 192.0.2.5 5000 typ host",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&p, 0x5a, sizeof p);
        int rc = tun_ice_cand_parse(bad[i], strlen(bad[i]), &p);
        if (rc != TUN_EFORMAT)
            fprintf(stderr, "accepted: %s\n", bad[i]);
        CHECK_INT_EQ(rc, TUN_EFORMAT);
        CHECK_INT_EQ(p.priority, 0x5a5a5a5a); /* no partial result */
    }
    /* A NUL inside the given length, and a line far too long. */
    static const char nul[] = "candidate:1 1 udp 1 192.0.2.5 5000 typ host\0 x";
    CHECK_INT_EQ(tun_ice_cand_parse(nul, sizeof nul - 1, &p), TUN_EFORMAT);
    char longl[2100];
    n = snprintf(longl, sizeof longl, "candidate:1 1 udp 1 192.0.2.5 5000 typ host");
    while ((size_t)n < sizeof longl - 10)
        n += snprintf(longl + n, sizeof longl - (size_t)n, " k v");
    CHECK_INT_EQ(tun_ice_cand_parse(longl, (size_t)n, &p), TUN_EFORMAT);
    /* The length bounds the parse: a prefix of a valid line is judged as it is. */
    const char *l = good[0];
    CHECK_INT_EQ(tun_ice_cand_parse(l, strlen(l) - 5, &p), TUN_EFORMAT);
}

/* ---- (k) mutated checks --------------------------------------------------------------------- */

/* Repair a mutated message so it gets past the cheap checks: length, integrity, fingerprint. */
static size_t repair(uint8_t *m, size_t len, const char *key)
{
    if (len < 20 || len % 4)
        return len;
    m[2] = (uint8_t)((len - 20) >> 8);
    m[3] = (uint8_t)(len - 20);
    /* Find MESSAGE-INTEGRITY by walking the attributes. */
    size_t off = 20;
    while (off + 4 <= len) {
        unsigned type = (unsigned)(m[off] << 8 | m[off + 1]),
                 alen = (unsigned)(m[off + 2] << 8 | m[off + 3]);
        size_t next = off + 4 + ((alen + 3) & ~3u);
        if (next > len)
            break;
        if (type == TUN_STUN_ATTR_MESSAGE_INTEGRITY && alen == 20 && key) {
            uint8_t hdr[20];
            memcpy(hdr, m, 20);
            hdr[2] = (uint8_t)((off + 24 - 20) >> 8);
            hdr[3] = (uint8_t)(off + 24 - 20);
            struct tun_hmac_sha1 h;
            tun_hmac_sha1_init(&h, (const uint8_t *)key, strlen(key));
            tun_hmac_sha1_update(&h, hdr, 20);
            tun_hmac_sha1_update(&h, m + 20, off - 20);
            tun_hmac_sha1_final(&h, m + off + 4);
        }
        if (type == TUN_STUN_ATTR_FINGERPRINT && alen == 4 && next == len) {
            uint32_t c = 0xFFFFFFFFu;
            for (size_t i = 0; i < off; i++) {
                c ^= m[i];
                for (int k = 0; k < 8; k++)
                    c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
            }
            c = ~c ^ TUN_STUN_FP_XOR;
            for (int i = 0; i < 4; i++)
                m[off + 4 + i] = (uint8_t)(c >> (24 - 8 * i));
        }
        off = next;
    }
    return len;
}

static void test_mutations(void)
{
    struct scen s = {.controlling = {1, 0}, .v6 = 1};
    struct net *w = &W;
    uint64_t t0 = setup(w, &s);
    /* Capture a few real datagrams of each kind from A (checks) and B (answers). */
    uint8_t seeds[16][600];
    size_t seed_len[16], nseeds = 0;
    for (uint64_t t = t0; t < t0 + 400 && nseeds < 16; t += 10) {
        for (int k = 0; k < 2 && nseeds < 16; k++) {
            struct sockaddr_storage to;
            int len = tun_ice_agent_next_send(w->n[k].ag, t, seeds[nseeds], 600, &to);
            if (len > 0) {
                seed_len[nseeds++] = (size_t)len;
                /* and deliver it so that the other side answers */
                struct sockaddr_storage from =
                    to.ss_family == AF_INET6 ? w->n[k].sock6 : w->n[k].sock;
                tun_ice_agent_input(w->n[1 - k].ag, SA(&from), seeds[nseeds - 1], (size_t)len, t);
            }
        }
    }
    CHECK(nseeds >= 6);
    rng_state = 42;
    unsigned used = 0, errors = 0;
    for (int it = 0; it < 30000; it++) {
        size_t k = rnd() % nseeds, len = seed_len[k];
        uint8_t m[700];
        memcpy(m, seeds[k], len);
        int rounds = 1 + (int)(rnd() % 3);
        for (int r = 0; r < rounds; r++) {
            switch (rnd() % 5) {
            case 0:
                m[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
                break;
            case 1:
                if (len > 20)
                    m[20 + rnd() % (len - 20)] = (uint8_t)rnd();
                break;
            case 2:
                len = 20 + rnd() % (len - 19);
                break;
            case 3:
                if (len + 8 <= sizeof m) {
                    for (int i = 0; i < 8; i++)
                        m[len + (size_t)i] = (uint8_t)rnd();
                    len += 4 * (1 + rnd() % 2);
                }
                break;
            default: /* attribute length fields */
                if (len >= 26)
                    m[22 + 4 * (rnd() % ((len - 22) / 4))] = (uint8_t)rnd();
                break;
            }
            if (len < 20)
                len = 20;
        }
        int dest = (int)(rnd() % 2);
        const char *key =
            rnd() % 2 ? tun_ice_agent_pwd(w->n[dest].ag) : tun_ice_agent_pwd(w->n[1 - dest].ag);
        if (rnd() % 4)
            len = repair(m, len, key);
        uint8_t *exact = malloc(len);
        memcpy(exact, m, len);
        struct sockaddr_storage from = w->n[1 - dest].sock;
        int rc = tun_ice_agent_input(w->n[dest].ag, SA(&from), exact, len, t0 + 500 + (uint64_t)it);
        free(exact);
        CHECK(rc == 0 || rc == 1 || (rc < 0 && rc >= TUN_EINTERNAL));
        used += rc == 1;
        errors += rc < 0;
        uint8_t out[600];
        struct sockaddr_storage to;
        while (tun_ice_agent_next_send(w->n[dest].ag, t0 + 500 + (uint64_t)it, out, sizeof out,
                                       &to) > 0)
            ;
        struct tun_ice_event ev;
        while (tun_ice_agent_next_event(w->n[dest].ag, &ev))
            ;
    }
    printf("  30000 mutated datagrams: %u used, %u rejected as malformed\n", used, errors);
    CHECK(used > 100);
    CHECK(errors > 100);
    w->spins = 0;
    teardown(w);
}

int main(void)
{
    tun_log_set_level(TUN_LOG_G_ICE, TUN_LOG_WARN);
    test_api();
    test_lines();
    test_credentials();
    printf("simulated scenarios (A/B: time from descriptions to the event):\n");
    test_host();
    test_cone();
    test_sym_cone();
    test_sym_sym();
    test_conflict();
    test_consent();
    test_loss();
    test_pitfall();
    test_mutations();
    return TEST_DONE();
}
