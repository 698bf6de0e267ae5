/* STUN responder: see stun_server.h. */
#include "ice/stun_server.h"
#include "ice/stun.h"
#include "net/udp.h"
#include "util/error.h"
#include "util/log.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define BAD_REQUEST  "Bad Request"
#define UNKNOWN_ATTR "Unknown Attribute"

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* The header alone is a sound request (the parse failed on the attributes), so the sender can
 * be told 400 with its transaction id. */
static int header_is_request(const uint8_t *req, size_t len)
{
    if (len < TUN_STUN_HEADER || !tun_stun_is_stun(req, len))
        return 0;
    uint16_t type = rd16(req), mlen = rd16(req + 2);
    if ((size_t)mlen + TUN_STUN_HEADER != len || mlen % 4)
        return 0;
    /* Class bits are 0x0100 and 0x0010 of the type; both clear means a request. */
    return (type & 0x0110) == 0;
}

int tun_stun_respond(const uint8_t *req, size_t len, const struct sockaddr *from, uint8_t *out,
                     size_t cap)
{
    if (!req || !from || !out)
        return TUN_EINVAL;
    struct tun_stun_msg m;
    int rc = tun_stun_parse(req, len, &m);
    if (rc == TUN_ECHECKSUM)
        return 0; /* RFC 8489 §7.3: a bad FINGERPRINT means it is not STUN for us */
    if (rc < 0) {
        if (!header_is_request(req, len))
            return 0;
        return tun_stun_binding_error(out, cap, req + 8, 400, BAD_REQUEST, NULL, 0, NULL, 0);
    }
    if (m.cls != TUN_STUN_REQUEST)
        return 0;
    if (m.n_unknown)
        return tun_stun_binding_error(out, cap, m.txid, 420, UNKNOWN_ATTR, m.unknown, m.n_unknown,
                                      NULL, 0);
    if (m.method != TUN_STUN_BINDING)
        return tun_stun_binding_error(out, cap, m.txid, 400, BAD_REQUEST, NULL, 0, NULL, 0);
    return tun_stun_binding_success(out, cap, m.txid, from, NULL, 0);
}

/* ---- rate limit ----------------------------------------------------------------------------- */

void tun_stun_ratelimit_init(struct tun_stun_ratelimit *rl)
{
    memset(rl, 0, sizeof *rl);
    /* A random seed keeps a sender from choosing sources that collide with a victim's slot. */
    if (sodium_init() >= 0)
        rl->seed = randombytes_random();
}

static size_t slot_of(const struct tun_stun_ratelimit *rl, const struct sockaddr *sa)
{
    const uint8_t *p;
    size_t n;
    if (sa->sa_family == AF_INET) {
        p = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
        n = 4;
    } else {
        /* The /64 is what one IPv6 host can vary freely. */
        p = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        n = 8;
    }
    uint32_t h = 2166136261u ^ rl->seed; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h % TUN_STUN_RL_SLOTS;
}

int tun_stun_ratelimit_allow(struct tun_stun_ratelimit *rl, const struct sockaddr *from,
                             uint64_t now_ms)
{
    if (from->sa_family != AF_INET && from->sa_family != AF_INET6)
        return 0;
    size_t i = slot_of(rl, from);
    uint64_t full = (uint64_t)TUN_STUN_RL_BURST * 1000;
    if (!rl->slot[i].used) {
        rl->slot[i].used = 1;
        rl->slot[i].tokens_milli = (uint32_t)full;
        rl->slot[i].last_ms = now_ms;
    }
    if (now_ms > rl->slot[i].last_ms) {
        uint64_t t = rl->slot[i].tokens_milli + (now_ms - rl->slot[i].last_ms) * TUN_STUN_RL_RATE;
        rl->slot[i].tokens_milli = (uint32_t)(t > full ? full : t);
        rl->slot[i].last_ms = now_ms;
    }
    if (rl->slot[i].tokens_milli < 1000)
        return 0;
    rl->slot[i].tokens_milli -= 1000;
    return 1;
}

/* ---- standalone responder ------------------------------------------------------------------- */

struct tun_stun_server {
    uv_loop_t *loop;
    struct tun_udp *udp;
    struct tun_stun_ratelimit rl;
    struct tun_stun_server_stats st;
    void (*closed)(void *ud);
    void *closed_ud;
};

static void on_recv(struct tun_udp *u, const struct sockaddr *from, const uint8_t *data, size_t len,
                    unsigned ecn, void *ud)
{
    (void)ecn;
    struct tun_stun_server *s = ud;
    uint8_t out[256];
    int n = tun_stun_respond(data, len, from, out, sizeof out);
    if (n <= 0) {
        s->st.ignored++;
        return;
    }
    if (!tun_stun_ratelimit_allow(&s->rl, from, uv_now(s->loop))) {
        s->st.limited++;
        return;
    }
    int rc = tun_udp_send(u, from, out, (size_t)n, 0, NULL);
    if (rc < 0)
        tun_log_debug(ICE, "STUN answer not sent: %s", tun_strerror(rc));
    else
        s->st.answered++;
}

int tun_stun_server_start(uv_loop_t *loop, const struct sockaddr *bind_addr,
                          struct tun_stun_server **out)
{
    if (!loop || !bind_addr || !out)
        return TUN_EINVAL;
    struct tun_stun_server *s = calloc(1, sizeof *s);
    if (!s)
        return TUN_ENOMEM;
    s->loop = loop;
    tun_stun_ratelimit_init(&s->rl);
    int rc = tun_udp_new(loop, bind_addr, &s->udp);
    if (rc < 0) {
        free(s);
        return rc;
    }
    rc = tun_udp_start(s->udp, on_recv, NULL, s);
    if (rc < 0) {
        tun_udp_close(s->udp, free, s);
        return rc;
    }
    *out = s;
    return 0;
}

int tun_stun_server_local_addr(struct tun_stun_server *s, struct sockaddr_storage *ss)
{
    return s ? tun_udp_local_addr(s->udp, ss) : TUN_EINVAL;
}

void tun_stun_server_get_stats(const struct tun_stun_server *s, struct tun_stun_server_stats *st)
{
    *st = s->st;
}

static void on_closed(void *ud)
{
    struct tun_stun_server *s = ud;
    void (*cb)(void *) = s->closed;
    void *cb_ud = s->closed_ud;
    free(s);
    if (cb)
        cb(cb_ud);
}

void tun_stun_server_close(struct tun_stun_server *s, void (*closed)(void *ud), void *ud)
{
    if (!s)
        return;
    s->closed = closed;
    s->closed_ud = ud;
    tun_udp_close(s->udp, on_closed, s);
}
