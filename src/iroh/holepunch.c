#include "iroh/holepunch.h"

#include "disco/disco.h"
#include "disco/paths.h"
#include "ice/stun_client.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LOCAL      (TUN_DISCO_MAX_ADDRS)
#define FAST_MS        500   /* ping interval while no direct path is known, at first */
#define FAST_PERIOD_MS 15000 /* how long the fast interval lasts after a start or a CMM */
#define CMM_MS         5000  /* CALL_ME_MAYBE again this often while relayed */
#define TICK_MS        250

struct peer {
    int used;
    uint8_t key[32];
    uint8_t shared[32];
    struct tun_paths paths;
    struct tun_qconn *conn; /* the connection we dialled (we migrate it), or NULL */
    int current;            /* path index carrying the connection, -1: relay */
    uint64_t rx_packets;    /* of conn, at the last tick */
    uint64_t fast_until_ms, last_cmm_ms, last_fast_ms;
};

struct tun_holepunch {
    uv_loop_t *loop;
    struct tun_qep *ep;
    struct tun_relaypath *rp;
    struct tun_holepunch_cfg cfg;
    struct tun_holepunch_cbs cbs;
    void *ud;
    uint8_t pub[32];
    uv_timer_t *timer;
    struct tun_stun_probe *probe;
    struct sockaddr_storage local[MAX_LOCAL];
    size_t nlocal;
    struct peer peers[TUN_HOLEPUNCH_MAX_PEERS];
};

static uint64_t now_us(const struct tun_holepunch *hp)
{
    return uv_now(hp->loop) * 1000 + 1; /* > 0: paths treat 0 as "never" */
}

static void add_local(struct tun_holepunch *hp, const struct sockaddr *a)
{
    for (size_t i = 0; i < hp->nlocal; i++)
        if (tun_sockaddr_equal((struct sockaddr *)&hp->local[i], a))
            return;
    if (hp->nlocal < MAX_LOCAL)
        memcpy(&hp->local[hp->nlocal++], a, tun_sockaddr_len(a));
}

static struct peer *find_peer(struct tun_holepunch *hp, const uint8_t key[32], int create)
{
    struct peer *free_slot = NULL;
    for (size_t i = 0; i < TUN_HOLEPUNCH_MAX_PEERS; i++) {
        struct peer *p = &hp->peers[i];
        if (p->used && memcmp(p->key, key, 32) == 0)
            return p;
        if (!p->used && !free_slot)
            free_slot = p;
    }
    if (!create || !free_slot)
        return NULL;
    memset(free_slot, 0, sizeof(*free_slot));
    if (tun_disco_shared_key(free_slot->shared, hp->cfg.secret, key) != 0)
        return NULL;
    free_slot->used = 1;
    memcpy(free_slot->key, key, 32);
    tun_paths_init(&free_slot->paths);
    free_slot->current = -1;
    return free_slot;
}

/* ---- sending ----------------------------------------------------------------------------------
 */

static int seal(struct tun_holepunch *hp, struct peer *p, const struct tun_disco_msg *m,
                uint8_t *out, size_t cap)
{
    return tun_disco_seal(out, cap, hp->pub, p->shared, m);
}

static void send_cmm(struct tun_holepunch *hp, struct peer *p)
{
    struct tun_disco_msg m;
    memset(&m, 0, sizeof(m));
    m.type = TUN_DISCO_CALL_ME_MAYBE;
    for (size_t i = 0; i < hp->nlocal && m.n_addrs < TUN_DISCO_MAX_ADDRS; i++)
        m.addrs[m.n_addrs++] = hp->local[i];
    uint8_t pkt[TUN_DISCO_MAX_PACKET];
    int n = seal(hp, p, &m, pkt, sizeof(pkt));
    if (n > 0)
        tun_relaypath_send(hp->rp, p->key, pkt, (size_t)n);
    p->last_cmm_ms = uv_now(hp->loop);
}

static void ping(struct tun_holepunch *hp, struct peer *p, int idx)
{
    struct tun_disco_msg m;
    memset(&m, 0, sizeof(m));
    m.type = TUN_DISCO_PING;
    if (tun_disco_new_txid(m.txid) != 0)
        return;
    uint8_t pkt[TUN_DISCO_MAX_PACKET];
    int n = seal(hp, p, &m, pkt, sizeof(pkt));
    if (n <= 0)
        return;
    tun_qep_send_raw(hp->ep, (struct sockaddr *)&p->paths.p[idx].addr, pkt, (size_t)n);
    tun_paths_ping_sent(&p->paths, idx, m.txid, now_us(hp));
}

/* ---- path changes ------------------------------------------------------------------------------
 */

static void apply_selection(struct tun_holepunch *hp, struct peer *p)
{
    int sel = hp->cfg.no_direct ? -1 : tun_paths_select(&p->paths, now_us(hp));
    if (sel == p->current)
        return;
    char a[80], b[80];
    const char *from =
        p->current < 0
            ? "relay"
            : tun_sockaddr_format((struct sockaddr *)&p->paths.p[p->current].addr, a, sizeof(a));
    uint64_t rtt = sel >= 0 ? p->paths.p[sel].rtt_us : 0;
    if (sel >= 0)
        tun_log_info(DISCO, "path: %s -> direct %s, rtt %.1f ms", from,
                     tun_sockaddr_format((struct sockaddr *)&p->paths.p[sel].addr, b, sizeof(b)),
                     (double)rtt / 1000.0);
    else
        tun_log_info(DISCO, "path: direct %s -> relay (the direct path stopped answering)", from);
    p->current = sel;
    if (p->conn) {
        struct sockaddr_storage local, remote;
        int rc;
        if (sel >= 0) {
            tun_qep_local_addr(hp->ep, &local);
            rc = tun_qconn_migrate(p->conn, (struct sockaddr *)&local,
                                   (struct sockaddr *)&p->paths.p[sel].addr, 1);
        } else {
            /* A path ngtcp2 never validated (a fresh synthetic port): see relaypath.h. */
            tun_relaypath_new_port(hp->rp);
            rc = tun_relaypath_addr(hp->rp, p->key, &local, &remote);
            if (rc == 0)
                rc = tun_qconn_migrate(p->conn, (struct sockaddr *)&local,
                                       (struct sockaddr *)&remote, 1);
        }
        if (rc != 0)
            tun_log_warn(DISCO, "migration failed: %s (staying on the old path)", tun_strerror(rc));
    }
    if (hp->cbs.on_path)
        hp->cbs.on_path(hp, p->key, sel >= 0 ? (struct sockaddr *)&p->paths.p[sel].addr : NULL, rtt,
                        hp->ud);
}

static void tick(uv_timer_t *t);

/* ---- receiving ---------------------------------------------------------------------------------
 */

static void handle(struct tun_holepunch *hp, struct peer *p, const struct tun_disco_msg *m,
                   const struct sockaddr *from)
{
    uint64_t now_ms = uv_now(hp->loop);
    switch (m->type) {
    case TUN_DISCO_CALL_ME_MAYBE:
        for (size_t i = 0; i < m->n_addrs; i++) {
            int idx = tun_paths_add(&p->paths, (const struct sockaddr *)&m->addrs[i]);
            if (idx >= 0 && !p->paths.p[idx].last_ping_us)
                ping(hp, p, idx);
        }
        p->fast_until_ms = now_ms + FAST_PERIOD_MS;
        /* Answer with our own addresses unless we just did. */
        if (now_ms - p->last_cmm_ms >= 1000 || !p->last_cmm_ms)
            send_cmm(hp, p);
        break;
    case TUN_DISCO_PING: {
        if (!from)
            return; /* pings travel on the socket only */
        struct tun_disco_msg pong;
        memset(&pong, 0, sizeof(pong));
        pong.type = TUN_DISCO_PONG;
        memcpy(pong.txid, m->txid, sizeof(pong.txid));
        memcpy(&pong.addr, from, tun_sockaddr_len(from));
        uint8_t pkt[TUN_DISCO_MAX_PACKET];
        int n = seal(hp, p, &pong, pkt, sizeof(pkt));
        if (n > 0)
            tun_qep_send_raw(hp->ep, from, pkt, (size_t)n);
        /* Where the peer's packets come from is a path too (its NAT's mapping towards us):
         * ping it back, which also opens our NAT for it. */
        int idx = tun_paths_add(&p->paths, from);
        if (idx >= 0 && (!p->paths.p[idx].last_pong_us || p->paths.p[idx].awaiting == 0))
            if (now_us(hp) - p->paths.p[idx].last_ping_us > 200000 || !p->paths.p[idx].last_ping_us)
                ping(hp, p, idx);
        break;
    }
    case TUN_DISCO_PONG:
        if (!from)
            return;
        if (tun_paths_pong(&p->paths, m->txid, from, now_us(hp)) >= 0) {
            /* The peer told us how it sees us: a mapping of ours, worth advertising. */
            add_local(hp, (const struct sockaddr *)&m->addr);
            /* Decide (and migrate) from the timer, outside the endpoint's receive path. */
            uv_timer_start(hp->timer, tick, 0, TICK_MS);
        }
        break;
    default:
        break;
    }
}

static void input(struct tun_holepunch *hp, const uint8_t *src_hint, const struct sockaddr *from,
                  const uint8_t *data, size_t len)
{
    const uint8_t *sender = tun_disco_sender(data, len);
    if (!sender)
        return;
    if (src_hint && memcmp(src_hint, sender, 32) != 0)
        return; /* relayed from one key, claiming another */
    /* Only peers we talk to through the relay (or dial) may make us compute a shared key:
     * relayed packets are from authenticated relay clients; on the socket, unknown senders
     * are dropped before any crypto. */
    struct peer *p = find_peer(hp, sender, src_hint != NULL);
    if (!p)
        return;
    struct tun_disco_msg m;
    if (tun_disco_open(data, len, p->shared, &m) != 0)
        return;
    handle(hp, p, &m, from);
}

void tun_holepunch_relay_input(struct tun_holepunch *hp, const uint8_t src[32], const uint8_t *data,
                               size_t len)
{
    input(hp, src, NULL, data, len);
}

static void other_cb(void *ud, const struct sockaddr *local, const struct sockaddr *from,
                     const uint8_t *data, size_t len)
{
    (void)local;
    struct tun_holepunch *hp = ud;
    if (tun_disco_is_disco(data, len)) {
        input(hp, NULL, from, data, len);
        return;
    }
    if (hp->probe)
        tun_stun_probe_input(hp->probe, from, data, len);
}

/* ---- STUN: our public mapping on this very socket ------------------------------------------- */

static int stun_send(void *ud, const struct sockaddr *to, const uint8_t *data, size_t len)
{
    return tun_qep_send_raw(((struct tun_holepunch *)ud)->ep, to, data, len);
}

static void stun_done(struct tun_stun_probe *pr, const struct tun_stun_client *c, void *ud)
{
    struct tun_holepunch *hp = ud;
    for (size_t i = 0; i < c->n; i++) {
        const struct tun_stun_result *r = tun_stun_client_result(c, i);
        if (r && r->status == TUN_STUN_RES_OK) {
            char b[80];
            tun_log_debug(DISCO, "public address %s (STUN)",
                          tun_sockaddr_format((struct sockaddr *)&r->mapped, b, sizeof(b)));
            add_local(hp, (struct sockaddr *)&r->mapped);
        }
    }
    tun_stun_probe_close(pr);
    hp->probe = NULL;
    /* Tell the peers we already talk to. */
    for (size_t i = 0; i < TUN_HOLEPUNCH_MAX_PEERS; i++)
        if (hp->peers[i].used && hp->peers[i].current < 0)
            send_cmm(hp, &hp->peers[i]);
}

/* ---- the schedule ------------------------------------------------------------------------------
 */

static void tick(uv_timer_t *t)
{
    struct tun_holepunch *hp = t->data;
    uint64_t now_ms = uv_now(hp->loop);
    for (size_t i = 0; i < TUN_HOLEPUNCH_MAX_PEERS; i++) {
        struct peer *p = &hp->peers[i];
        if (!p->used || hp->cfg.no_direct)
            continue;
        if (p->current < 0 && p->conn && now_ms - p->last_cmm_ms >= CMM_MS)
            send_cmm(hp, p);
        /* QUIC packets keep arriving on the direct path: it works, whatever happened to the
         * probes (a path whose acks flow is never dropped for a lost pong). */
        if (p->conn && p->current >= 0) {
            struct tun_qconn_stats st;
            tun_qconn_get_stats(p->conn, &st);
            if (st.rx_packets > p->rx_packets)
                tun_paths_traffic(&p->paths, now_us(hp));
            p->rx_packets = st.rx_packets;
        }
        if (p->current < 0 && now_ms < p->fast_until_ms) {
            if (now_ms - p->last_fast_ms >= FAST_MS) {
                p->last_fast_ms = now_ms;
                for (size_t k = 0; k < p->paths.n; k++)
                    ping(hp, p, (int)k);
            }
        } else {
            int idx;
            while ((idx = tun_paths_next_ping(&p->paths, now_us(hp), NULL)) >= 0)
                ping(hp, p, idx);
        }
        apply_selection(hp, p);
    }
}

/* ---- API ----------------------------------------------------------------------------------------
 */

static void gather_interfaces(struct tun_holepunch *hp)
{
    struct sockaddr_storage sock;
    if (tun_qep_local_addr(hp->ep, &sock) != 0)
        return;
    unsigned port = tun_sockaddr_port((struct sockaddr *)&sock);
    int dual = sock.ss_family == AF_INET6;
    uv_interface_address_t *ifs;
    int n;
    if (uv_interface_addresses(&ifs, &n) != 0)
        return;
    for (int i = 0; i < n; i++) {
        struct sockaddr_storage a;
        memset(&a, 0, sizeof(a));
        if (ifs[i].address.address4.sin_family == AF_INET) {
            memcpy(&a, &ifs[i].address.address4, sizeof(struct sockaddr_in));
            ((struct sockaddr_in *)&a)->sin_port = htons((uint16_t)port);
        } else if (dual && ifs[i].address.address6.sin6_family == AF_INET6 &&
                   !IN6_IS_ADDR_LINKLOCAL(&ifs[i].address.address6.sin6_addr)) {
            memcpy(&a, &ifs[i].address.address6, sizeof(struct sockaddr_in6));
            ((struct sockaddr_in6 *)&a)->sin6_port = htons((uint16_t)port);
            ((struct sockaddr_in6 *)&a)->sin6_scope_id = 0;
        } else {
            continue;
        }
        /* Loopback only helps two processes on one machine, which is what the tests are. */
        add_local(hp, (struct sockaddr *)&a);
    }
    uv_free_interface_addresses(ifs, n);
}

int tun_holepunch_new(uv_loop_t *loop, struct tun_qep *ep, struct tun_relaypath *rp,
                      const struct tun_holepunch_cfg *cfg, const struct tun_holepunch_cbs *cbs,
                      void *ud, struct tun_holepunch **out)
{
    struct tun_holepunch *hp = calloc(1, sizeof(*hp));
    if (!hp)
        return TUN_ENOMEM;
    hp->timer = malloc(sizeof(*hp->timer));
    if (!hp->timer) {
        free(hp);
        return TUN_ENOMEM;
    }
    hp->loop = loop;
    hp->ep = ep;
    hp->rp = rp;
    hp->cfg = *cfg;
    if (cbs)
        hp->cbs = *cbs;
    hp->ud = ud;
    uint8_t sk[64];
    int rc = crypto_sign_seed_keypair(hp->pub, sk, cfg->secret);
    sodium_memzero(sk, sizeof(sk));
    if (rc != 0) {
        free(hp->timer);
        free(hp);
        return TUN_ECRYPTO;
    }
    gather_interfaces(hp);
    tun_qep_set_other_handler(ep, other_cb, hp);
    if (cfg->n_stun && !cfg->no_direct)
        tun_stun_probe_start(loop, stun_send, hp, cfg->stun, cfg->n_stun, NULL, stun_done,
                             &hp->probe);
    uv_timer_init(loop, hp->timer);
    hp->timer->data = hp;
    uv_timer_start(hp->timer, tick, TICK_MS, TICK_MS);
    *out = hp;
    return 0;
}

int tun_holepunch_dial(struct tun_holepunch *hp, const uint8_t peer[32], struct tun_qconn *conn)
{
    struct peer *p = find_peer(hp, peer, 1);
    if (!p)
        return TUN_ERANGE;
    p->conn = conn;
    p->fast_until_ms = uv_now(hp->loop) + FAST_PERIOD_MS;
    if (!hp->cfg.no_direct)
        send_cmm(hp, p);
    return 0;
}

void tun_holepunch_forget(struct tun_holepunch *hp, const uint8_t peer[32])
{
    struct peer *p = find_peer(hp, peer, 0);
    if (p) {
        sodium_memzero(p->shared, sizeof(p->shared));
        p->used = 0;
        p->conn = NULL;
    }
}

size_t tun_holepunch_local_addrs(const struct tun_holepunch *hp, struct sockaddr_storage *out,
                                 size_t max)
{
    size_t n = hp->nlocal < max ? hp->nlocal : max;
    memcpy(out, hp->local, n * sizeof(*out));
    return hp->nlocal;
}

static void timer_closed(uv_handle_t *h)
{
    free(h);
}

void tun_holepunch_free(struct tun_holepunch *hp)
{
    tun_qep_set_other_handler(hp->ep, NULL, NULL);
    if (hp->probe)
        tun_stun_probe_close(hp->probe);
    uv_close((uv_handle_t *)hp->timer, timer_closed);
    sodium_memzero(hp, sizeof(*hp));
    free(hp);
}
