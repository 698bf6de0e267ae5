#include "disco/paths.h"
#include "util/error.h"
#include "util/sockaddr.h"

#include <netinet/in.h>
#include <string.h>

void tun_paths_init(struct tun_paths *ps)
{
    memset(ps, 0, sizeof(*ps));
    ps->best = -1;
}

int tun_paths_find(const struct tun_paths *ps, const struct sockaddr *addr)
{
    for (size_t i = 0; i < ps->n; i++)
        if (tun_sockaddr_equal((const struct sockaddr *)&ps->p[i].addr, addr))
            return (int)i;
    return TUN_ERANGE;
}

int tun_paths_add(struct tun_paths *ps, const struct sockaddr *addr)
{
    if (!ps || !addr || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) ||
        tun_sockaddr_port(addr) == 0)
        return TUN_EINVAL;
    int i = tun_paths_find(ps, addr);
    if (i >= 0)
        return i;
    if (ps->n == TUN_PATHS_MAX)
        return TUN_ETOOBIG;
    struct tun_path *p = &ps->p[ps->n];
    memset(p, 0, sizeof(*p));
    memcpy(&p->addr, addr, tun_sockaddr_len(addr));
    return (int)ps->n++;
}

int tun_paths_ping_sent(struct tun_paths *ps, int idx, const uint8_t txid[TUN_DISCO_TXID_LEN],
                        uint64_t now_us)
{
    if (!ps || !txid || now_us == 0)
        return TUN_EINVAL;
    if (idx < 0 || (size_t)idx >= ps->n)
        return TUN_ERANGE;
    struct tun_path *p = &ps->p[idx];
    memcpy(p->txid, txid, TUN_DISCO_TXID_LEN);
    p->awaiting = 1;
    p->last_ping_us = now_us;
    return 0;
}

int tun_paths_pong(struct tun_paths *ps, const uint8_t txid[TUN_DISCO_TXID_LEN],
                   const struct sockaddr *from, uint64_t now_us)
{
    if (!ps || !txid || !from)
        return TUN_EINVAL;
    for (size_t i = 0; i < ps->n; i++) {
        struct tun_path *p = &ps->p[i];
        if (!p->awaiting || memcmp(p->txid, txid, TUN_DISCO_TXID_LEN) != 0)
            continue;
        /* The txid is secret and random, but a pong from elsewhere proves nothing about
         * the path we pinged. */
        if (!tun_sockaddr_equal((const struct sockaddr *)&p->addr, from))
            return TUN_EPROTO;
        p->awaiting = 0;
        p->rtt_us = now_us > p->last_ping_us ? now_us - p->last_ping_us : 0;
        p->last_pong_us = now_us;
        if (p->trusted_until_us < now_us + TUN_PATH_TRUST_US)
            p->trusted_until_us = now_us + TUN_PATH_TRUST_US;
        return (int)i;
    }
    return TUN_EPROTO;
}

void tun_paths_traffic(struct tun_paths *ps, uint64_t now_us)
{
    if (ps->best < 0)
        return;
    struct tun_path *p = &ps->p[ps->best];
    if (p->trusted_until_us < now_us + TUN_PATH_TRUST_US)
        p->trusted_until_us = now_us + TUN_PATH_TRUST_US;
}

void tun_paths_distrust(struct tun_paths *ps, int idx)
{
    if (idx >= 0 && (size_t)idx < ps->n)
        ps->p[idx].trusted_until_us = 0;
}

static int trusted(const struct tun_path *p, uint64_t now_us)
{
    return p->trusted_until_us > now_us;
}

int tun_paths_select(struct tun_paths *ps, uint64_t now_us)
{
    int fastest = -1;
    for (size_t i = 0; i < ps->n; i++)
        if (trusted(&ps->p[i], now_us) && (fastest < 0 || ps->p[i].rtt_us < ps->p[fastest].rtt_us))
            fastest = (int)i;
    if (ps->best >= 0 && trusted(&ps->p[ps->best], now_us)) {
        /* Hysteresis: a small RTT difference is noise and not worth a migration. */
        if (fastest >= 0 && ps->p[fastest].rtt_us + TUN_PATH_SWITCH_US <= ps->p[ps->best].rtt_us)
            ps->best = fastest;
    } else {
        ps->best = fastest;
    }
    return ps->best;
}

/* When path i is next due for a ping. */
static uint64_t due(const struct tun_paths *ps, size_t i)
{
    const struct tun_path *p = &ps->p[i];
    if (p->last_ping_us == 0)
        return 0;
    if (ps->best < 0)
        return p->last_ping_us + TUN_PATH_PING_US;
    if ((int)i == ps->best) {
        /* Refresh before trust runs out; traffic keeps pushing the evidence forward. */
        uint64_t evidence = p->trusted_until_us - TUN_PATH_TRUST_US;
        uint64_t from = p->last_ping_us > evidence ? p->last_ping_us : evidence;
        return from + TUN_PATH_PING_US;
    }
    return p->last_ping_us + TUN_PATH_UPGRADE_US;
}

int tun_paths_next_ping(const struct tun_paths *ps, uint64_t now_us, uint64_t *next_us)
{
    uint64_t soonest = UINT64_MAX;
    int pick = -1;
    for (size_t i = 0; i < ps->n; i++) {
        uint64_t d = due(ps, i);
        if (d < soonest) {
            soonest = d;
            pick = (int)i;
        }
    }
    if (pick >= 0 && soonest <= now_us)
        return pick;
    if (next_us)
        *next_us = soonest;
    return -1;
}
