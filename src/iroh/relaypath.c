#include "iroh/relaypath.h"

#include "disco/disco.h"
#include "util/error.h"
#include "util/log.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

/* 100.127.0.0/16: inside 100.64.0.0/10 (shared address space), never a real peer of ours. */
#define NET   0x647F0000u
#define SELF  0x647F0001u
#define FIRST 0x647F0100u /* the first peer: 100.127.1.0 */

struct peer {
    uint8_t key[32];
    struct peer *next; /* hash chain */
};

struct tun_relaypath {
    struct tun_qep *ep;
    struct tun_relay_client *rc;
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

static int add(struct tun_relaypath *rp, const uint8_t key[32])
{
    int i = find(rp, key);
    if (i >= 0)
        return i;
    if (rp->n == TUN_RELAYPATH_MAX_PEERS)
        return TUN_ERANGE;
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
    uint32_t *head = &rp->buckets[key_hash(key) & (rp->nbuckets - 1)];
    rp->chain[idx] = *head;
    *head = (uint32_t)idx + 1;
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

/* The endpoint's path sender: a packet for a synthetic address goes to that key. */
static int path_send(void *ud, const struct sockaddr *local, const struct sockaddr *remote,
                     const uint8_t *data, size_t len)
{
    (void)local;
    struct tun_relaypath *rp = ud;
    uint8_t key[32];
    if (tun_relaypath_key(rp, remote, key) != 0)
        return TUN_EINVAL;
    /* Not ready or congested: the packet is lost, and QUIC's recovery takes it from there. */
    return tun_relay_client_send(rp->rc, key, data, len);
}

static void on_state(struct tun_relay_client *c, int state, const char *why, void *ud)
{
    (void)c;
    struct tun_relaypath *rp = ud;
    if (rp->cbs.on_state)
        rp->cbs.on_state(rp, state, why, rp->ud);
}

static void on_datagram(struct tun_relay_client *c, const uint8_t src[32], const uint8_t *data,
                        size_t len, void *ud)
{
    (void)c;
    struct tun_relaypath *rp = ud;
    if (tun_disco_is_disco(data, len)) {
        if (rp->cbs.on_disco)
            rp->cbs.on_disco(rp, src, data, len, rp->ud);
        return;
    }
    struct sockaddr_storage local, remote;
    if (tun_relaypath_addr(rp, src, &local, &remote) != 0) {
        tun_log_debug(RELAY, "relayed packet dropped: too many peers");
        return;
    }
    tun_qep_input(rp->ep, (struct sockaddr *)&local, (struct sockaddr *)&remote, data, len);
}

static void on_peer_gone(struct tun_relay_client *c, const uint8_t key[32], int reason, void *ud)
{
    (void)c;
    struct tun_relaypath *rp = ud;
    if (rp->cbs.on_peer_gone)
        rp->cbs.on_peer_gone(rp, key, reason, rp->ud);
}

int tun_relaypath_new(uv_loop_t *loop, struct tun_qep *ep, const struct tun_relay_client_cfg *rcfg,
                      const struct tun_relaypath_cbs *cbs, void *ud, struct tun_relaypath **out)
{
    struct tun_relaypath *rp = calloc(1, sizeof(*rp));
    if (!rp)
        return TUN_ENOMEM;
    rp->ep = ep;
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
    static const struct tun_relay_client_cbs rcbs = {on_state, on_datagram, on_peer_gone, NULL};
    int rc = tun_relay_client_new(loop, rcfg, &rcbs, rp, &rp->rc);
    if (rc != 0) {
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
    return tun_relay_client_send(rp->rc, key, data, len);
}

struct tun_relay_client *tun_relaypath_client(struct tun_relaypath *rp)
{
    return rp->rc;
}

void tun_relaypath_free(struct tun_relaypath *rp)
{
    tun_qep_set_path_sender(rp->ep, NULL, NULL);
    tun_relay_client_close(rp->rc);
    free(rp->peers);
    free(rp->chain);
    free(rp->buckets);
    free(rp);
}
