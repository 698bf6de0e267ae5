/* STUN Binding client: see stun_client.h. */
#include "ice/stun_client.h"
#include "util/error.h"
#include "util/log.h"

#include <stdlib.h>
#include <string.h>

/* ---- addresses ------------------------------------------------------------------------------ */

/* Reduce an address to (family, 16 address bytes, port) so that 1.2.3.4 and ::ffff:1.2.3.4 (a
 * dual-stack socket may report either) compare equal. Returns 0 for other families. */
static int addr_key(const struct sockaddr *sa, uint8_t ip[16], uint16_t *port)
{
    memset(ip, 0, 16);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        ip[10] = ip[11] = 0xff;
        memcpy(ip + 12, &s->sin_addr, 4);
        *port = s->sin_port;
        return 1;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        memcpy(ip, &s->sin6_addr, 16);
        *port = s->sin6_port;
        return 1;
    }
    return 0;
}

static int same_addr(const struct sockaddr *a, const struct sockaddr *b)
{
    uint8_t ia[16], ib[16];
    uint16_t pa, pb;
    if (!addr_key(a, ia, &pa) || !addr_key(b, ib, &pb))
        return 0;
    return pa == pb && memcmp(ia, ib, 16) == 0;
}

/* ---- core ----------------------------------------------------------------------------------- */

void tun_stun_client_init(struct tun_stun_client *c, const struct tun_stun_client_cfg *cfg)
{
    memset(c, 0, sizeof *c);
    if (cfg)
        c->cfg = *cfg;
    if (!c->cfg.rto_ms)
        c->cfg.rto_ms = TUN_STUN_DEFAULT_RTO;
    if (!c->cfg.rc)
        c->cfg.rc = TUN_STUN_DEFAULT_RC;
    if (!c->cfg.rm)
        c->cfg.rm = TUN_STUN_DEFAULT_RM;
}

int tun_stun_client_add_server(struct tun_stun_client *c, const struct sockaddr *addr)
{
    if (!c || !addr || c->started)
        return TUN_EINVAL;
    size_t sz;
    if (addr->sa_family == AF_INET)
        sz = sizeof(struct sockaddr_in);
    else if (addr->sa_family == AF_INET6)
        sz = sizeof(struct sockaddr_in6);
    else
        return TUN_EINVAL;
    if (c->n >= TUN_STUN_CLIENT_MAX)
        return TUN_ERANGE;
    struct tun_stun_tx *t = &c->tx[c->n];
    memset(t, 0, sizeof *t);
    memcpy(&t->r.server, addr, sz);
    return (int)c->n++;
}

int tun_stun_client_start(struct tun_stun_client *c, uint64_t now_ms)
{
    if (!c || !c->n || c->started)
        return TUN_EINVAL;
    for (size_t i = 0; i < c->n; i++) {
        struct tun_stun_tx *t = &c->tx[i];
        int rc = tun_stun_new_txid(t->txid);
        if (rc < 0)
            return rc;
        t->r.status = TUN_STUN_RES_PENDING;
        t->next_ms = now_ms;
        t->interval = c->cfg.rto_ms;
    }
    c->started = 1;
    return 0;
}

int tun_stun_client_next_send(struct tun_stun_client *c, uint64_t now_ms, uint8_t *out, size_t cap,
                              struct sockaddr_storage *to)
{
    if (!c->started)
        return 0;
    for (size_t i = 0; i < c->n; i++) {
        struct tun_stun_tx *t = &c->tx[i];
        if (t->r.status != TUN_STUN_RES_PENDING || now_ms < t->next_ms)
            continue;
        if (t->r.transmissions >= c->cfg.rc) {
            /* The final Rm x RTO wait is over. */
            t->r.status = TUN_STUN_RES_TIMEOUT;
            continue;
        }
        int len = tun_stun_binding_request(out, cap, t->txid, NULL, 0);
        if (len < 0)
            return len;
        t->r.transmissions++;
        t->last_sent_ms = now_ms;
        if (t->r.transmissions < c->cfg.rc) {
            t->next_ms = now_ms + t->interval;
            t->interval *= 2;
        } else {
            t->next_ms = now_ms + (uint64_t)c->cfg.rm * c->cfg.rto_ms;
        }
        memcpy(to, &t->r.server, sizeof *to);
        return len;
    }
    return 0;
}

int64_t tun_stun_client_timeout(const struct tun_stun_client *c, uint64_t now_ms)
{
    int64_t best = -1;
    if (!c->started)
        return -1;
    for (size_t i = 0; i < c->n; i++) {
        const struct tun_stun_tx *t = &c->tx[i];
        if (t->r.status != TUN_STUN_RES_PENDING)
            continue;
        int64_t d = t->next_ms > now_ms ? (int64_t)(t->next_ms - now_ms) : 0;
        if (best < 0 || d < best)
            best = d;
    }
    return best;
}

int tun_stun_client_input(struct tun_stun_client *c, const struct sockaddr *from,
                          const uint8_t *data, size_t len, uint64_t now_ms)
{
    struct tun_stun_msg m;
    if (!c->started || !tun_stun_is_stun(data, len) || tun_stun_parse(data, len, &m) < 0)
        return 0;
    if (m.method != TUN_STUN_BINDING || (m.cls != TUN_STUN_SUCCESS && m.cls != TUN_STUN_ERROR))
        return 0;
    for (size_t i = 0; i < c->n; i++) {
        struct tun_stun_tx *t = &c->tx[i];
        if (t->r.status != TUN_STUN_RES_PENDING || t->r.transmissions == 0 ||
            memcmp(t->txid, m.txid, TUN_STUN_TXID_LEN) != 0)
            continue;
        if (!same_addr(from, (const struct sockaddr *)&t->r.server)) {
            tun_log_debug(ICE, "STUN answer with a matching transaction id from another address "
                               "ignored");
            return 0;
        }
        t->r.rtt_ms = now_ms - t->last_sent_ms;
        if (m.cls == TUN_STUN_ERROR) {
            t->r.status = TUN_STUN_RES_ERROR;
            t->r.error_code = (m.present & TUN_STUN_HAS_ERROR) ? m.error_code : 0;
            size_t n =
                m.reason_len < sizeof t->r.reason - 1 ? m.reason_len : sizeof t->r.reason - 1;
            if (n)
                memcpy(t->r.reason, m.reason, n);
            t->r.reason[n] = 0;
        } else if (m.present & TUN_STUN_HAS_XOR_MAPPED) {
            t->r.status = TUN_STUN_RES_OK;
            t->r.mapped = m.xor_mapped;
        } else if (m.present & TUN_STUN_HAS_MAPPED) {
            t->r.status = TUN_STUN_RES_OK;
            t->r.mapped = m.mapped;
        } else {
            t->r.status = TUN_STUN_RES_BAD;
        }
        return 1;
    }
    return 0;
}

int tun_stun_client_done(const struct tun_stun_client *c)
{
    return c->started && tun_stun_client_timeout(c, 0) < 0;
}

const struct tun_stun_result *tun_stun_client_result(const struct tun_stun_client *c, size_t i)
{
    return c && i < c->n ? &c->tx[i].r : NULL;
}

/* ---- driver --------------------------------------------------------------------------------- */

struct tun_stun_probe {
    uv_timer_t timer;
    struct tun_stun_client c;
    tun_stun_send_fn send;
    tun_stun_probe_done_fn done;
    void *ud;
    int finished, closing;
};

static void pump(struct tun_stun_probe *p);

static void on_timer(uv_timer_t *t)
{
    pump((struct tun_stun_probe *)t->data);
}

/* Send everything due, then either report completion or sleep until the next action. */
static void pump(struct tun_stun_probe *p)
{
    if (p->finished || p->closing)
        return;
    uint64_t now = uv_now(p->timer.loop);
    uint8_t buf[128];
    struct sockaddr_storage to;
    int len;
    while ((len = tun_stun_client_next_send(&p->c, now, buf, sizeof buf, &to)) > 0) {
        int rc = p->send(p->ud, (const struct sockaddr *)&to, buf, (size_t)len);
        if (rc < 0)
            tun_log_debug(ICE, "STUN send failed: %s", tun_strerror(rc));
        if (p->closing)
            return;
    }
    int64_t wait = tun_stun_client_timeout(&p->c, now);
    if (wait < 0) {
        p->finished = 1;
        uv_timer_stop(&p->timer);
        p->done(p, &p->c, p->ud);
        return;
    }
    uv_timer_start(&p->timer, on_timer, (uint64_t)wait, 0);
}

int tun_stun_probe_start(uv_loop_t *loop, tun_stun_send_fn send, void *ud,
                         const struct sockaddr_storage *servers, size_t n,
                         const struct tun_stun_client_cfg *cfg, tun_stun_probe_done_fn done,
                         struct tun_stun_probe **out)
{
    if (!loop || !send || !servers || !n || !done || !out)
        return TUN_EINVAL;
    if (n > TUN_STUN_CLIENT_MAX)
        return TUN_ERANGE;
    struct tun_stun_probe *p = calloc(1, sizeof *p);
    if (!p)
        return TUN_ENOMEM;
    tun_stun_client_init(&p->c, cfg);
    int rc = 0;
    for (size_t i = 0; i < n && rc >= 0; i++)
        rc = tun_stun_client_add_server(&p->c, (const struct sockaddr *)&servers[i]);
    if (rc >= 0)
        rc = tun_stun_client_start(&p->c, uv_now(loop));
    if (rc >= 0)
        rc = uv_timer_init(loop, &p->timer);
    if (rc < 0) {
        free(p);
        return rc;
    }
    p->timer.data = p;
    p->send = send;
    p->done = done;
    p->ud = ud;
    *out = p;
    /* The first transmissions go out from the loop, so `done` can never run before the
     * caller has *out. */
    uv_timer_start(&p->timer, on_timer, 0, 0);
    return 0;
}

int tun_stun_probe_input(struct tun_stun_probe *p, const struct sockaddr *from, const uint8_t *data,
                         size_t len)
{
    if (!p || p->closing || p->finished)
        return 0;
    int used = tun_stun_client_input(&p->c, from, data, len, uv_now(p->timer.loop));
    if (used)
        pump(p);
    return used;
}

const struct tun_stun_client *tun_stun_probe_client(const struct tun_stun_probe *p)
{
    return &p->c;
}

static void on_probe_closed(uv_handle_t *h)
{
    free(h->data);
}

void tun_stun_probe_close(struct tun_stun_probe *p)
{
    if (!p || p->closing)
        return;
    p->closing = 1;
    uv_close((uv_handle_t *)&p->timer, on_probe_closed);
}
