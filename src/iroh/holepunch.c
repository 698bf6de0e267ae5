#include "iroh/holepunch.h"

#include "disco/disco.h"
#include "disco/paths.h"
#include "ice/stun_client.h"
#include "util/error.h"
#include "util/log.h"
#include "util/sockaddr.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LOCAL TUN_HOLEPUNCH_MAX_ADDRS
_Static_assert(MAX_LOCAL <= TUN_DISCO_MAX_ADDRS, "one CALL_ME_MAYBE carries every address");
#define FAST_MS        500   /* ping interval while no direct path is known, at first */
#define FAST_PERIOD_MS 15000 /* how long the fast interval lasts after a start or a CMM */
#define CMM_MS         5000  /* CALL_ME_MAYBE again this often while relayed */
#define TICK_MS        250
#define SILENCE_MS     1000   /* sending on a direct path with nothing back this long: probe it */
#define PROBE_MS       1000   /* and distrust it when the probe is not answered this long */
#define IFACE_MS       15000  /* re-read the interface addresses this often (getifaddrs: cheap) */
#define STUN_MS        180000 /* ask the STUN servers again this often */
#define SEEN_TTL_MS    600000 /* a mapping a peer reported stays advertised this long unrefreshed */
#define MAX_SEEN       4
#define NEVER          UINT64_MAX

struct peer {
    int used;
    uint8_t key[32];
    uint8_t shared[32];
    struct tun_paths paths;
    struct tun_qconn *conn;          /* the connection we dialled (we migrate it), or NULL */
    int current;                     /* path index carrying the connection, -1: relay */
    uint64_t rx_packets;             /* of conn, at the last tick */
    uint64_t tx_packets;             /* of conn, at the last tick */
    uint64_t last_rx_ms, last_tx_ms; /* when conn's packet counters last moved (direct path) */
    uint64_t probe_ms;               /* a silence probe of the current path went out then */
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
    /* What we advertise (CALL_ME_MAYBE, and through on_addrs the discovery record) is the
     * union of three sources, rebuilt when one changes: */
    struct sockaddr_storage ifaces[MAX_LOCAL]; /* interface addresses with our port */
    size_t nifaces;
    struct sockaddr_storage mapped[TUN_HOLEPUNCH_MAX_STUN]; /* the last STUN probe's answers */
    size_t nmapped;
    struct {
        struct sockaddr_storage addr;
        uint64_t at_ms;
    } seen[MAX_SEEN]; /* how peers saw us (PONGs) */
    size_t nseen;
    struct sockaddr_storage local[MAX_LOCAL];
    size_t nlocal;
    uint64_t next_gather_ms, next_stun_ms;
    int restun; /* the interfaces changed while a probe ran: probe again when it ends */
    struct peer peers[TUN_HOLEPUNCH_MAX_PEERS];
};

static uint64_t now_us(const struct tun_holepunch *hp)
{
    return uv_now(hp->loop) * 1000 + 1; /* > 0: paths treat 0 as "never" */
}

static int in_list(const struct sockaddr_storage *list, size_t n, const struct sockaddr *a)
{
    for (size_t i = 0; i < n; i++)
        if (tun_sockaddr_equal((const struct sockaddr *)&list[i], a))
            return 1;
    return 0;
}

/* Append `a` unless it is there already or the list is full. */
static void add_addr(struct sockaddr_storage *list, size_t *n, size_t max, const struct sockaddr *a)
{
    if (*n < max && !in_list(list, *n, a)) {
        memset(&list[*n], 0, sizeof(list[*n]));
        memcpy(&list[(*n)++], a, tun_sockaddr_len(a));
    }
}

/* Both lists hold distinct addresses: same set, whatever the order. */
static int same_set(const struct sockaddr_storage *a, size_t na, const struct sockaddr_storage *b,
                    size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i < na; i++)
        if (!in_list(b, nb, (const struct sockaddr *)&a[i]))
            return 0;
    return 1;
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

/* ---- our addresses -------------------------------------------------------------------------- */

static void log_addrs(const struct tun_holepunch *hp)
{
    if (!tun_log_enabled(TUN_LOG_G_DISCO, TUN_LOG_DEBUG))
        return;
    char text[MAX_LOCAL * 50 + 8] = "", b[80];
    size_t len = 0;
    for (size_t i = 0; i < hp->nlocal && len < sizeof(text); i++) {
        int n = snprintf(text + len, sizeof(text) - len, "%s%s", i ? " " : "",
                         tun_sockaddr_format((const struct sockaddr *)&hp->local[i], b, sizeof(b)));
        if (n < 0)
            break;
        len += (size_t)n;
    }
    tun_log_debug(DISCO, "our addresses: %s", hp->nlocal ? text : "none");
}

/* Rebuild the advertised list from its sources. When the set changed (and `notify`), tell the
 * peers we are not talking to directly — they may find us at the new addresses — and the
 * owner (on_addrs), who republishes the discovery record. */
static void rebuild(struct tun_holepunch *hp, int notify)
{
    uint64_t now_ms = uv_now(hp->loop);
    size_t k = 0;
    for (size_t i = 0; i < hp->nseen; i++)
        if (now_ms - hp->seen[i].at_ms < SEEN_TTL_MS)
            hp->seen[k++] = hp->seen[i];
    hp->nseen = k;
    struct sockaddr_storage list[MAX_LOCAL];
    size_t n = 0;
    for (size_t i = 0; i < hp->nifaces; i++)
        add_addr(list, &n, MAX_LOCAL, (struct sockaddr *)&hp->ifaces[i]);
    for (size_t i = 0; i < hp->nmapped; i++)
        add_addr(list, &n, MAX_LOCAL, (struct sockaddr *)&hp->mapped[i]);
    for (size_t i = 0; i < hp->nseen; i++)
        add_addr(list, &n, MAX_LOCAL, (struct sockaddr *)&hp->seen[i].addr);
    if (same_set(list, n, hp->local, hp->nlocal))
        return;
    memcpy(hp->local, list, n * sizeof(list[0]));
    hp->nlocal = n;
    log_addrs(hp);
    if (!notify)
        return;
    if (!hp->cfg.no_direct)
        for (size_t i = 0; i < TUN_HOLEPUNCH_MAX_PEERS; i++)
            if (hp->peers[i].used && hp->peers[i].current < 0)
                send_cmm(hp, &hp->peers[i]);
    if (hp->cbs.on_addrs)
        hp->cbs.on_addrs(hp, hp->ud);
}

/* A peer's PONG says how it sees us: one of our mappings, worth advertising while peers keep
 * confirming it. */
static void saw_us(struct tun_holepunch *hp, const struct sockaddr *a)
{
    if (a->sa_family != AF_INET && a->sa_family != AF_INET6)
        return;
    uint64_t now_ms = uv_now(hp->loop);
    size_t oldest = 0;
    for (size_t i = 0; i < hp->nseen; i++) {
        if (tun_sockaddr_equal((struct sockaddr *)&hp->seen[i].addr, a)) {
            hp->seen[i].at_ms = now_ms;
            return;
        }
        if (hp->seen[i].at_ms < hp->seen[oldest].at_ms)
            oldest = i;
    }
    size_t slot = hp->nseen < MAX_SEEN ? hp->nseen++ : oldest;
    memset(&hp->seen[slot].addr, 0, sizeof(hp->seen[slot].addr));
    memcpy(&hp->seen[slot].addr, a, tun_sockaddr_len(a));
    hp->seen[slot].at_ms = now_ms;
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
            saw_us(hp, (const struct sockaddr *)&m->addr);
            /* Decide (and migrate), and advertise a new mapping, from the timer, outside the
             * endpoint's receive path. */
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
    /* The mappings are what the servers say now: one no server reports any more (a new NAT,
     * a rebooted router) is dropped, even if every server failed this time. */
    hp->nmapped = 0;
    for (size_t i = 0; i < c->n; i++) {
        const struct tun_stun_result *r = tun_stun_client_result(c, i);
        if (r && r->status == TUN_STUN_RES_OK) {
            char b[80];
            tun_log_debug(DISCO, "public address %s (STUN)",
                          tun_sockaddr_format((struct sockaddr *)&r->mapped, b, sizeof(b)));
            add_addr(hp->mapped, &hp->nmapped, TUN_HOLEPUNCH_MAX_STUN,
                     (struct sockaddr *)&r->mapped);
        }
    }
    tun_stun_probe_close(pr);
    hp->probe = NULL;
    uint64_t now_ms = uv_now(hp->loop);
    hp->next_stun_ms = hp->restun ? now_ms : now_ms + STUN_MS;
    hp->restun = 0;
    rebuild(hp, 1);
}

static void start_stun(struct tun_holepunch *hp)
{
    uint64_t now_ms = uv_now(hp->loop);
    if (hp->probe || !hp->cfg.n_stun || hp->cfg.no_direct || now_ms < hp->next_stun_ms)
        return;
    int rc = tun_stun_probe_start(hp->loop, stun_send, hp, hp->cfg.stun, hp->cfg.n_stun, NULL,
                                  stun_done, &hp->probe);
    if (rc != 0) {
        hp->probe = NULL;
        hp->next_stun_ms = now_ms + STUN_MS;
        tun_log_debug(DISCO, "STUN probe not started: %s", tun_strerror(rc));
        return;
    }
    hp->next_stun_ms = NEVER; /* until it ends */
}

/* ---- the schedule ------------------------------------------------------------------------------
 */

static int gather_interfaces(struct tun_holepunch *hp);

/* We keep sending on the direct path but nothing has come back for SILENCE_MS: the peer
 * would be acknowledging, so the path may have died. Ping it at once rather than at the next
 * regular ping; no pong within PROBE_MS either, and it loses its trust, so traffic goes back to
 * the relay within about two seconds instead of the ~6.5 s trust window. A path whose packets
 * keep arriving is never touched (the counters reset the clock). */
static void silence_check(struct tun_holepunch *hp, struct peer *p, uint64_t now_ms)
{
    if (p->last_tx_ms <= p->last_rx_ms || now_ms - p->last_rx_ms < SILENCE_MS)
        return;
    if (!p->probe_ms) {
        p->probe_ms = now_ms;
        ping(hp, p, p->current);
        return;
    }
    if (now_ms - p->probe_ms >= PROBE_MS &&
        p->paths.p[p->current].last_pong_us / 1000 < p->probe_ms) {
        /* Whatever broke this path (a NAT reboot, a new network) most likely broke the other
         * direct candidates too: keep only those that answered since the probe went out. */
        for (size_t k = 0; k < p->paths.n; k++)
            if (p->paths.p[k].last_pong_us / 1000 < p->probe_ms)
                tun_paths_distrust(&p->paths, (int)k);
        tun_log_debug(DISCO, "direct path silent for %u ms and a probe went unanswered",
                      (unsigned)(now_ms - p->last_rx_ms));
        p->probe_ms = 0;
    }
}

static void tick(uv_timer_t *t)
{
    struct tun_holepunch *hp = t->data;
    uint64_t now_ms = uv_now(hp->loop);
    if (now_ms >= hp->next_gather_ms) {
        hp->next_gather_ms = now_ms + IFACE_MS;
        /* A new interface address may mean a new network, with another public mapping. */
        if (gather_interfaces(hp)) {
            if (hp->probe)
                hp->restun = 1;
            else
                hp->next_stun_ms = now_ms;
        }
    }
    start_stun(hp);
    rebuild(hp, 1);
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
            if (st.rx_path_packets > p->rx_packets) {
                tun_paths_traffic(&p->paths, now_us(hp));
                p->last_rx_ms = now_ms;
                p->probe_ms = 0;
            }
            if (st.tx_packets > p->tx_packets)
                p->last_tx_ms = now_ms;
            p->rx_packets = st.rx_path_packets;
            p->tx_packets = st.tx_packets;
            silence_check(hp, p, now_ms);
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

/* Read the interface addresses (with the endpoint's port) into hp->ifaces; 1 when the set
 * changed. */
static int gather_interfaces(struct tun_holepunch *hp)
{
    struct sockaddr_storage sock;
    if (tun_qep_local_addr(hp->ep, &sock) != 0)
        return 0;
    unsigned port = tun_sockaddr_port((struct sockaddr *)&sock);
    int dual = sock.ss_family == AF_INET6;
    uv_interface_address_t *ifs;
    int n;
    if (uv_interface_addresses(&ifs, &n) != 0)
        return 0; /* keep what we had: a transient failure is no change */
    struct sockaddr_storage list[MAX_LOCAL];
    size_t nlist = 0;
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
        add_addr(list, &nlist, MAX_LOCAL, (struct sockaddr *)&a);
    }
    uv_free_interface_addresses(ifs, n);
    if (same_set(list, nlist, hp->ifaces, hp->nifaces))
        return 0;
    memcpy(hp->ifaces, list, nlist * sizeof(list[0]));
    hp->nifaces = nlist;
    return 1;
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
    rebuild(hp, 0); /* the owner reads the first list with tun_holepunch_local_addrs */
    hp->next_gather_ms = uv_now(loop) + IFACE_MS;
    tun_qep_set_other_handler(ep, other_cb, hp);
    start_stun(hp);
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
