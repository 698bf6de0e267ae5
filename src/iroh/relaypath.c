#include "iroh/relaypath.h"

#include "disco/disco.h"
#include "util/error.h"
#include "util/log.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 100.127.0.0/16: inside 100.64.0.0/10 (shared address space), never a real peer of ours. */
#define NET   0x647F0000u
#define SELF  0x647F0001u
#define FIRST 0x647F0100u /* the first peer: 100.127.1.0 */

struct peer {
    uint8_t key[32];
    uint64_t used_ms; /* last packet to or from it (loop time) */
    int via;          /* relay index the peer was last heard through (replies go there), -1: home */
    uint8_t avoid;    /* bit i: relay i said the peer is not connected there */
};

struct relay {
    struct tun_relaypath *rp;
    struct tun_relay_client *rc;
    char url[200];
    int index, ready;
};

struct tun_relaypath {
    uv_loop_t *loop;
    uint64_t recycle_ms; /* a peer silent this long may give its address to a new one */
    struct tun_qep *ep;
    struct relay relays[TUN_RELAYPATH_MAX_RELAYS];
    size_t nrelays;
    struct tun_relaypath_cbs cbs;
    void *ud;
    uint16_t port;
    struct peer *peers; /* index i is peer address FIRST + i */
    size_t n, cap;
    uint32_t *buckets; /* key hash -> index + 1 chain heads; chains through `chain` */
    uint32_t *chain;
    size_t nbuckets;
};

static uint32_t key_hash(const uint8_t key[32])
{
    /* Keys are public and the table is per process: their own bits are hash enough. */
    uint32_t h;
    memcpy(&h, key, sizeof(h));
    return h;
}

static int find(const struct tun_relaypath *rp, const uint8_t key[32])
{
    uint32_t i = rp->buckets[key_hash(key) & (rp->nbuckets - 1)];
    while (i) {
        if (memcmp(rp->peers[i - 1].key, key, 32) == 0)
            return (int)(i - 1);
        i = rp->chain[i - 1];
    }
    return -1;
}

static void link_key(struct tun_relaypath *rp, size_t idx)
{
    uint32_t *head = &rp->buckets[key_hash(rp->peers[idx].key) & (rp->nbuckets - 1)];
    rp->chain[idx] = *head;
    *head = (uint32_t)idx + 1;
}

static void unlink_key(struct tun_relaypath *rp, size_t idx)
{
    uint32_t *p = &rp->buckets[key_hash(rp->peers[idx].key) & (rp->nbuckets - 1)];
    while (*p && *p != idx + 1)
        p = &rp->chain[*p - 1];
    if (*p)
        *p = rp->chain[idx];
}

/* Every client of a server comes with a fresh key, so over days a server meets far more keys
 * than it can hold addresses for. When the table is full, the peer silent the longest gives
 * its address to the new one — only after recycle_ms without a packet either way, far longer
 * than any QUIC idle timeout, so no live connection still uses that address. */
static int recycle(struct tun_relaypath *rp, const uint8_t key[32])
{
    uint64_t now = uv_now(rp->loop);
    size_t lru = 0;
    for (size_t i = 1; i < rp->n; i++)
        if (rp->peers[i].used_ms < rp->peers[lru].used_ms)
            lru = i;
    if (rp->n == 0 || now - rp->peers[lru].used_ms < rp->recycle_ms)
        return TUN_ERANGE;
    unlink_key(rp, lru);
    memcpy(rp->peers[lru].key, key, 32);
    rp->peers[lru].via = -1;
    rp->peers[lru].avoid = 0;
    rp->peers[lru].used_ms = now;
    link_key(rp, lru);
    return (int)lru;
}

static int add(struct tun_relaypath *rp, const uint8_t key[32])
{
    int i = find(rp, key);
    if (i >= 0) {
        rp->peers[i].used_ms = uv_now(rp->loop);
        return i;
    }
    if (rp->n == TUN_RELAYPATH_MAX_PEERS)
        return recycle(rp, key);
    if (rp->n == rp->cap) {
        size_t cap = rp->cap ? rp->cap * 2 : 16;
        struct peer *p = realloc(rp->peers, cap * sizeof(*p));
        if (!p)
            return TUN_ENOMEM;
        rp->peers = p;
        uint32_t *ch = realloc(rp->chain, cap * sizeof(*ch));
        if (!ch)
            return TUN_ENOMEM;
        rp->chain = ch;
        rp->cap = cap;
    }
    size_t idx = rp->n++;
    memcpy(rp->peers[idx].key, key, 32);
    rp->peers[idx].via = -1;
    rp->peers[idx].avoid = 0;
    rp->peers[idx].used_ms = uv_now(rp->loop);
    link_key(rp, idx);
    return (int)idx;
}

static void set_addr(struct sockaddr_storage *ss, uint32_t ip, uint16_t port)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(ip);
    a->sin_port = htons(port);
}

int tun_relaypath_is_relay(const struct sockaddr *a)
{
    return a->sa_family == AF_INET &&
           (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) & 0xFFFF0000u) == NET;
}

int tun_relaypath_addr(struct tun_relaypath *rp, const uint8_t key[32],
                       struct sockaddr_storage *local, struct sockaddr_storage *remote)
{
    int i = add(rp, key);
    if (i < 0)
        return i;
    set_addr(local, SELF, rp->port);
    set_addr(remote, FIRST + (uint32_t)i, 1);
    return 0;
}

int tun_relaypath_key(const struct tun_relaypath *rp, const struct sockaddr *remote,
                      uint8_t key[32])
{
    if (!tun_relaypath_is_relay(remote))
        return TUN_EINVAL;
    uint32_t ip = ntohl(((const struct sockaddr_in *)remote)->sin_addr.s_addr);
    if (ip < FIRST || ip - FIRST >= rp->n)
        return TUN_EINVAL;
    memcpy(key, rp->peers[ip - FIRST].key, 32);
    return 0;
}

void tun_relaypath_new_port(struct tun_relaypath *rp)
{
    rp->port = (uint16_t)(rp->port == 65535 ? 1 : rp->port + 1);
}

/* The home relay: the connected one with the lowest RTT (unmeasured ones after measured),
 * preferring relays the peer has not asked us to avoid and that are not stale (silent). */
static int home(const struct tun_relaypath *rp, uint8_t avoid)
{
    int best = -1;
    uint64_t best_rtt = UINT64_MAX;
    for (size_t pass = 0; pass < 2 && best < 0; pass++) {
        for (size_t i = 0; i < rp->nrelays; i++) {
            const struct relay *r = &rp->relays[i];
            if (!r->ready || (pass == 0 && ((avoid & (1u << i)) || tun_relay_client_stale(r->rc))))
                continue;
            struct tun_relay_client_stats st;
            tun_relay_client_stats(r->rc, &st);
            uint64_t rtt = st.rtt_us ? st.rtt_us : UINT64_MAX - 1;
            if (best < 0 || rtt < best_rtt) {
                best = (int)i;
                best_rtt = rtt;
            }
        }
    }
    return best;
}

/* Through which relay to reach peer i (or -1: none is connected). */
static int relay_for(struct tun_relaypath *rp, int i)
{
    struct peer *p = &rp->peers[i];
    if (p->via >= 0 && rp->relays[p->via].ready && !(p->avoid & (1u << p->via)) &&
        !tun_relay_client_stale(rp->relays[p->via].rc))
        return p->via;
    return home(rp, p->avoid);
}

static int send_to(struct tun_relaypath *rp, int peer, const uint8_t *data, size_t len)
{
    int r = relay_for(rp, peer);
    if (r < 0)
        return TUN_EAGAIN;
    return tun_relay_client_send(rp->relays[r].rc, rp->peers[peer].key, data, len);
}

/* The endpoint's path sender: a packet for a synthetic address goes to that key. */
static int path_send(void *ud, const struct sockaddr *local, const struct sockaddr *remote,
                     const uint8_t *data, size_t len)
{
    (void)local;
    struct tun_relaypath *rp = ud;
    if (!tun_relaypath_is_relay(remote))
        return TUN_EINVAL;
    uint32_t ip = ntohl(((const struct sockaddr_in *)remote)->sin_addr.s_addr);
    if (ip < FIRST || ip - FIRST >= rp->n)
        return TUN_EINVAL;
    rp->peers[ip - FIRST].used_ms = uv_now(rp->loop);
    /* Not ready or congested: the packet is lost, and QUIC's recovery takes it from there. */
    return send_to(rp, (int)(ip - FIRST), data, len);
}

static void on_state(struct tun_relay_client *c, int state, const char *why, void *ud)
{
    (void)c;
    struct relay *r = ud;
    r->ready = state == TUN_RELAY_CLIENT_READY;
    if (r->rp->cbs.on_state)
        r->rp->cbs.on_state(r->rp, r->url, state, why, r->rp->ud);
}

static void on_datagram(struct tun_relay_client *c, const uint8_t src[32], const uint8_t *data,
                        size_t len, void *ud)
{
    (void)c;
    struct relay *r = ud;
    struct tun_relaypath *rp = r->rp;
    int i = add(rp, src);
    if (i >= 0) {
        /* Answer the way the peer reaches us: it is connected there. */
        rp->peers[i].via = r->index;
        rp->peers[i].avoid &= (uint8_t) ~(1u << r->index);
    }
    if (tun_disco_is_disco(data, len)) {
        if (rp->cbs.on_disco)
            rp->cbs.on_disco(rp, src, data, len, rp->ud);
        return;
    }
    if (i < 0) {
        tun_log_debug(RELAY, "relayed packet dropped: too many peers");
        return;
    }
    struct sockaddr_storage local, remote;
    set_addr(&local, SELF, rp->port);
    set_addr(&remote, FIRST + (uint32_t)i, 1);
    tun_qep_input(rp->ep, (struct sockaddr *)&local, (struct sockaddr *)&remote, data, len);
}

static void on_peer_gone(struct tun_relay_client *c, const uint8_t key[32], int reason, void *ud)
{
    (void)c;
    struct relay *r = ud;
    struct tun_relaypath *rp = r->rp;
    int i = find(rp, key);
    if (i >= 0) {
        /* Not (or no longer) there: try the peer through another relay. */
        rp->peers[i].avoid |= (uint8_t)(1u << r->index);
        if (rp->peers[i].via == r->index)
            rp->peers[i].via = -1;
    }
    if (rp->cbs.on_peer_gone)
        rp->cbs.on_peer_gone(rp, key, reason, rp->ud);
}

int tun_relaypath_add(struct tun_relaypath *rp, uv_loop_t *loop,
                      const struct tun_relay_client_cfg *rcfg)
{
    if (rp->nrelays == TUN_RELAYPATH_MAX_RELAYS)
        return TUN_ERANGE;
    struct relay *r = &rp->relays[rp->nrelays];
    memset(r, 0, sizeof(*r));
    r->rp = rp;
    r->index = (int)rp->nrelays;
    snprintf(r->url, sizeof(r->url), "%s", rcfg->url ? rcfg->url : "");
    static const struct tun_relay_client_cbs rcbs = {on_state, on_datagram, on_peer_gone, NULL};
    int rc = tun_relay_client_new(loop, rcfg, &rcbs, r, &r->rc);
    if (rc != 0)
        return rc;
    return (int)rp->nrelays++;
}

int tun_relaypath_new(uv_loop_t *loop, struct tun_qep *ep, const struct tun_relay_client_cfg *rcfg,
                      const struct tun_relaypath_cbs *cbs, void *ud, struct tun_relaypath **out)
{
    struct tun_relaypath *rp = calloc(1, sizeof(*rp));
    if (!rp)
        return TUN_ENOMEM;
    rp->ep = ep;
    rp->loop = loop;
    rp->recycle_ms = TUN_RELAYPATH_RECYCLE_MS;
    rp->port = 1;
    if (cbs)
        rp->cbs = *cbs;
    rp->ud = ud;
    rp->nbuckets = 1024;
    rp->buckets = calloc(rp->nbuckets, sizeof(*rp->buckets));
    if (!rp->buckets) {
        free(rp);
        return TUN_ENOMEM;
    }
    int rc = tun_relaypath_add(rp, loop, rcfg);
    if (rc < 0) {
        free(rp->buckets);
        free(rp);
        return rc;
    }
    tun_qep_set_path_sender(ep, path_send, rp);
    *out = rp;
    return 0;
}

int tun_relaypath_send(struct tun_relaypath *rp, const uint8_t key[32], const uint8_t *data,
                       size_t len)
{
    int i = add(rp, key);
    if (i < 0)
        return i;
    return send_to(rp, i, data, len);
}

void tun_relaypath_set_recycle_ms(struct tun_relaypath *rp, uint64_t ms)
{
    rp->recycle_ms = ms;
}

size_t tun_relaypath_count(const struct tun_relaypath *rp)
{
    return rp->nrelays;
}

struct tun_relay_client *tun_relaypath_client(struct tun_relaypath *rp, size_t i)
{
    return i < rp->nrelays ? rp->relays[i].rc : NULL;
}

const char *tun_relaypath_url(const struct tun_relaypath *rp, size_t i)
{
    return i < rp->nrelays ? rp->relays[i].url : NULL;
}

int tun_relaypath_home(const struct tun_relaypath *rp)
{
    return home(rp, 0);
}

void tun_relaypath_free(struct tun_relaypath *rp)
{
    tun_qep_set_path_sender(rp->ep, NULL, NULL);
    for (size_t i = 0; i < rp->nrelays; i++)
        tun_relay_client_close(rp->relays[i].rc);
    free(rp->peers);
    free(rp->chain);
    free(rp->buckets);
    free(rp);
}
