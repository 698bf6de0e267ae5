/*
 * The endpoint: one UDP socket, the connection-ID routing table, accepting connections,
 * stateless resets and version negotiation, and the deferred flush that sends what the
 * connections have to say.
 */
#include "quic/internal.h"
#include "util/error.h"
#include "util/log.h"

#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

uint64_t tun__now(void)
{
    return uv_hrtime();
}

void tun_quic_config_default(struct tun_quic_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->cc = TUN_QUIC_CC_BBR;
    cfg->stream_window = 1 << 20;
    cfg->max_stream_window = 16 << 20;
    cfg->conn_window = 4 << 20;
    cfg->max_conn_window = 64 << 20;
    cfg->idle_timeout_ms = 30000;
    cfg->keepalive_ms = 10000;
    cfg->handshake_timeout_ms = 10000;
    cfg->max_streams = 1024;
    cfg->stream_send_buffer = 4 << 20;
    cfg->datagram_queue = 16384;
}

/* ---- connection-ID routing ------------------------------------------------------------- */

static uint64_t cid_hash(const uint8_t *id, size_t len)
{
    /* CIDs are random (ours) or chosen by a client; a keyed hash keeps a hostile client from
     * steering its IDs into one bucket chain. */
    static uint8_t key[crypto_shorthash_KEYBYTES];
    static int keyed;
    if (!keyed) {
        randombytes_buf(key, sizeof(key));
        keyed = 1;
    }
    uint8_t out[crypto_shorthash_BYTES];
    crypto_shorthash(out, id, len, key);
    uint64_t h;
    memcpy(&h, out, sizeof(h));
    return h;
}

static struct cid_slot *cid_find_slot(struct tun_qep *ep, const uint8_t *id, size_t len, int insert)
{
    if (!ep->ncid_slots)
        return NULL;
    size_t mask = ep->ncid_slots - 1;
    size_t i = (size_t)cid_hash(id, len) & mask;
    struct cid_slot *tomb = NULL;
    for (size_t n = 0; n < ep->ncid_slots; n++, i = (i + 1) & mask) {
        struct cid_slot *s = &ep->cids[i];
        if (s->len == 0)
            return insert && tomb ? tomb : (insert ? s : NULL);
        if (s->len == 255) {
            if (!tomb)
                tomb = s;
            continue;
        }
        if (s->len == len && memcmp(s->id, id, len) == 0)
            return s;
    }
    return insert ? tomb : NULL;
}

static int cid_grow(struct tun_qep *ep)
{
    size_t n = ep->ncid_slots ? ep->ncid_slots * 2 : 64;
    struct cid_slot *old = ep->cids;
    size_t oldn = ep->ncid_slots;
    ep->cids = calloc(n, sizeof(*ep->cids));
    if (!ep->cids) {
        ep->cids = old;
        return TUN_ENOMEM;
    }
    ep->ncid_slots = n;
    ep->ncids = ep->ncid_used = 0;
    for (size_t i = 0; i < oldn; i++) {
        if (old[i].len && old[i].len != 255) {
            struct cid_slot *s = cid_find_slot(ep, old[i].id, old[i].len, 1);
            *s = old[i];
            ep->ncids++;
            ep->ncid_used++;
        }
    }
    free(old);
    return 0;
}

int tun__qep_add_cid(struct tun_qep *ep, const uint8_t *id, size_t len, struct tun_qconn *c)
{
    if (len == 0 || len > NGTCP2_MAX_CIDLEN)
        return TUN_EINVAL;
    if ((ep->ncid_used + 1) * 4 >= ep->ncid_slots * 3 && cid_grow(ep) != 0)
        return TUN_ENOMEM;
    struct cid_slot *s = cid_find_slot(ep, id, len, 1);
    if (s->len == 0)
        ep->ncid_used++;
    if (s->len == 0 || s->len == 255)
        ep->ncids++;
    s->len = (uint8_t)len;
    memcpy(s->id, id, len);
    s->conn = c;
    ep->last_cid.len = 0;
    return 0;
}

void tun__qep_remove_cid(struct tun_qep *ep, const uint8_t *id, size_t len)
{
    struct cid_slot *s = cid_find_slot(ep, id, len, 0);
    if (!s)
        return;
    s->len = 255;
    s->conn = NULL;
    ep->ncids--;
    ep->last_cid.len = 0;
}

static struct tun_qconn *cid_lookup(struct tun_qep *ep, const uint8_t *id, size_t len)
{
    struct cid_slot *last = &ep->last_cid;
    if (len && last->len == len && memcmp(last->id, id, len) == 0)
        return last->conn;
    struct cid_slot *s = cid_find_slot(ep, id, len, 0);
    if (!s)
        return NULL;
    *last = *s;
    return s->conn;
}

void tun__qep_reset_token(struct tun_qep *ep, const uint8_t *cid, size_t cidlen,
                          uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN])
{
    /* A token derived from the CID lets us answer for connections we no longer remember
     * (after a restart with the same secret, or after freeing the connection). */
    if (crypto_generichash(token, NGTCP2_STATELESS_RESET_TOKENLEN, cid, cidlen, ep->reset_secret,
                           sizeof(ep->reset_secret)) != 0)
        randombytes_buf(token, NGTCP2_STATELESS_RESET_TOKENLEN);
}

/* ---- deferred flush --------------------------------------------------------------------- */

static void flush_all(struct tun_qep *ep)
{
    struct tun_qconn *list = ep->dirty;
    ep->dirty = NULL;
    while (list) {
        struct tun_qconn *c = list;
        list = c->dirty_next;
        c->in_dirty = 0;
        c->dirty_next = NULL;
        tun__qconn_flush(c);
    }
}

static void flush_idle_cb(uv_idle_t *h)
{
    struct tun_qep *ep = h->data;
    flush_all(ep);
    if (!ep->dirty) {
        uv_idle_stop(&ep->flush_idle);
        ep->flush_scheduled = 0;
    }
}

void tun__qep_mark_dirty(struct tun_qep *ep, struct tun_qconn *c)
{
    if (c->in_dirty || c->notified_closed)
        return;
    c->in_dirty = 1;
    c->dirty_next = ep->dirty;
    ep->dirty = c;
    if (!ep->flush_scheduled && !ep->closing) {
        ep->flush_scheduled = 1;
        uv_idle_start(&ep->flush_idle, flush_idle_cb);
    }
}

/* ---- sub-millisecond deadlines ----------------------------------------------------------
 * libuv's timers count whole milliseconds, while a connection's nearest deadlines are tens of
 * microseconds away: the delayed ACK (RTT / 8) and the pacer's next send. Rounded up, each
 * would add a millisecond to a round trip; a 0 ms libuv timer instead spins the loop until the
 * deadline passes, burning the CPU that the other processes on the path need (on a two-CPU
 * machine that spin cost the ping-pong benchmark ~20 us per round trip). One timerfd per
 * endpoint serves the near deadlines of all its connections; far ones stay on libuv timers. */

static void precise_arm(struct tun_qep *ep, uint64_t deadline)
{
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(deadline / 1000000000u);
    its.it_value.tv_nsec = (long)(deadline % 1000000000u);
    if (timerfd_settime(ep->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        ep->tfd_armed = deadline;
}

int tun__qep_set_precise(struct tun_qep *ep, struct tun_qconn *c, uint64_t deadline)
{
    if (ep->tfd < 0)
        return deadline ? -1 : 0;
    if (!deadline) {
        if (c->pdeadline) {
            if (c->pprev)
                c->pprev->pnext = c->pnext;
            else
                ep->precise = c->pnext;
            if (c->pnext)
                c->pnext->pprev = c->pprev;
            c->pnext = c->pprev = NULL;
            c->pdeadline = 0;
        }
        /* The timerfd stays armed: a wake-up with nothing due only re-arms it. */
        return 0;
    }
    if (!c->pdeadline) {
        c->pnext = ep->precise;
        c->pprev = NULL;
        if (ep->precise)
            ep->precise->pprev = c;
        ep->precise = c;
    }
    c->pdeadline = deadline;
    if (!ep->tfd_armed || deadline < ep->tfd_armed)
        precise_arm(ep, deadline);
    return 0;
}

static void precise_cb(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    struct tun_qep *ep = h->data;
    uint64_t ticks;
    if (read(ep->tfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
        tun_log_debug(QUIC, "timerfd read: %s", strerror(errno));
    ep->tfd_armed = 0;
    uint64_t now = tun__now(), next = 0;
    struct tun_qconn *c = ep->precise, *n;
    for (; c; c = n) {
        n = c->pnext;
        if (c->pdeadline <= now) {
            tun__qep_set_precise(ep, c, 0);
            tun__qconn_expire(c); /* only marks it dirty: the list stays intact */
        } else if (!next || c->pdeadline < next) {
            next = c->pdeadline;
        }
    }
    if (next)
        precise_arm(ep, next);
}

static void writable_cb(struct tun_udp *u, void *ud)
{
    (void)u;
    struct tun_qep *ep = ud;
    for (struct tun_qconn *c = ep->conns; c; c = c->next) {
        if (c->write_blocked) {
            c->write_blocked = 0;
            tun__qep_mark_dirty(ep, c);
        }
    }
}

int tun__qep_send(struct tun_qep *ep, struct tun_qconn *c, const struct sockaddr *local,
                  const struct sockaddr *to, const uint8_t *data, size_t len, size_t segsize)
{
    if (local && !tun_sockaddr_equal(local, (const struct sockaddr *)&ep->local)) {
        /* Not the socket's path: hand each packet to the path sender (a relay). */
        if (!ep->path_send)
            return 0;
        size_t seg = segsize ? segsize : len;
        for (size_t off = 0; off < len; off += seg)
            ep->path_send(ep->path_send_ud, local, to, data + off,
                          len - off < seg ? len - off : seg);
        return 0;
    }
    size_t sent = 0;
    int rc;
    if (c && c->uconn && tun_sockaddr_equal(to, tun_udp_conn_remote(c->uconn)))
        rc = tun_udp_conn_send(c->uconn, data, len, segsize ? segsize : len, &sent);
    else
        rc = tun_udp_send(ep->udp, to, data, len, segsize ? segsize : len, &sent);
    if (rc == TUN_EAGAIN) {
        /* The socket buffer is full. The unsent packets count as lost; QUIC's loss recovery
         * resends their contents once the socket drains. */
        tun_udp_want_writable(ep->udp, writable_cb);
        return rc;
    }
    if (rc < 0)
        tun_log_debug(QUIC, "send failed: %s", tun_strerror(rc));
    return 0;
}

/* ---- receive ---------------------------------------------------------------------------- */

static void send_stateless_reset(struct tun_qep *ep, const struct sockaddr *local,
                                 const struct sockaddr *from, const uint8_t *dcid, size_t dcidlen,
                                 size_t pktlen)
{
    /* A reset is one byte shorter than the packet that caused it, so two endpoints that have
     * both forgotten a connection cannot keep answering each other (RFC 9000 10.3.3), and
     * carries at least 5 random bytes before the 16-byte token: a keep-alive PING (38 bytes)
     * is answered too, so an idle client learns of a restarted server at its next PING. */
    if (pktlen < NGTCP2_STATELESS_RESET_TOKENLEN + NGTCP2_MIN_STATELESS_RESET_RANDLEN + 1)
        return;
    size_t len = pktlen - 1 < 64 ? pktlen - 1 : 64;
    uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN], rnd[64], buf[64];
    tun__qep_reset_token(ep, dcid, dcidlen, token);
    randombytes_buf(rnd, sizeof(rnd));
    ngtcp2_ssize n = ngtcp2_pkt_write_stateless_reset(buf, len, token, rnd,
                                                      len - NGTCP2_STATELESS_RESET_TOKENLEN);
    if (n > 0)
        tun__qep_send(ep, NULL, local, from, buf, (size_t)n, 0);
}

static void send_version_negotiation(struct tun_qep *ep, const struct sockaddr *local,
                                     const struct sockaddr *from, const ngtcp2_version_cid *vc)
{
    uint8_t buf[256];
    uint32_t sv[] = {NGTCP2_PROTO_VER_V1};
    uint8_t r;
    randombytes_buf(&r, 1);
    ngtcp2_ssize n = ngtcp2_pkt_write_version_negotiation(
        buf, sizeof(buf), r, vc->scid, vc->scidlen, vc->dcid, vc->dcidlen, sv, 1);
    if (n > 0)
        tun__qep_send(ep, NULL, local, from, buf, (size_t)n, 0);
}

static void route(struct tun_qep *ep, const struct sockaddr *local, const struct sockaddr *from,
                  const uint8_t *data, size_t len, unsigned ecn)
{
    if (ep->closing || len == 0)
        return;
    if (tun_qep_is_other(data, len)) {
        if (ep->other)
            ep->other(ep->other_ud, local, from, data, len);
        return;
    }
    ngtcp2_version_cid vc;
    int rv = ngtcp2_pkt_decode_version_cid(&vc, data, len, TUN_QUIC_CIDLEN);
    if (rv == NGTCP2_ERR_VERSION_NEGOTIATION) {
        if (ep->is_server)
            send_version_negotiation(ep, local, from, &vc);
        return;
    }
    if (rv != 0)
        return;
    struct tun_qconn *c = cid_lookup(ep, vc.dcid, vc.dcidlen);
    if (!c && !ep->is_server) {
        /* A stateless reset (RFC 9000 10.3) looks like a short-header packet for a CID we never
         * issued. Hand it to the connection with the peer it came from: ngtcp2 compares its
         * last 16 bytes with the reset token that peer gave us, and drops it otherwise. */
        if (data[0] & 0x80)
            return;
        for (c = ep->conns; c; c = c->next)
            if (tun_sockaddr_equal(from, (const struct sockaddr *)&c->remote))
                break;
        if (!c)
            return;
    } else if (!c) {
        if (!(data[0] & 0x80)) {
            send_stateless_reset(ep, local, from, vc.dcid, vc.dcidlen, len);
            return;
        }
        ngtcp2_pkt_hd hd;
        if (ngtcp2_accept(&hd, data, len) != 0)
            return;
        if (tun__qconn_new(ep, 1, local, from, &hd, NULL, &c) != 0)
            return;
        tun_log_debug(QUIC, "conn %llu: new connection", (unsigned long long)c->id);
        if (ep->cbs.on_conn)
            ep->cbs.on_conn(ep, c, ep->ud);
    }
    tun__qconn_read(c, local, from, data, len, ecn);
}

static void recv_cb(struct tun_udp *u, const struct sockaddr *from, const uint8_t *data, size_t len,
                    unsigned ecn, void *ud)
{
    (void)u;
    struct tun_qep *ep = ud;
    route(ep, (const struct sockaddr *)&ep->local, from, data, len, ecn);
}

void tun_qep_input(struct tun_qep *ep, const struct sockaddr *local, const struct sockaddr *remote,
                   const uint8_t *data, size_t len)
{
    route(ep, local, remote, data, len, 0);
}

int tun_qep_is_other(const uint8_t *data, size_t len)
{
    /* ngtcp2 0.12 always advertises "greasing the QUIC bit" (RFC 9287), so a QUIC packet may
     * start with 00 like STUN does. The STUN magic cookie at bytes 4-7 settles it: for a short
     * header those are bytes 3-6 of our own connection ID, which never hold the cookie (see
     * get_new_cid_cb); a long header never starts with 00. */
    return len >= 20 && (data[0] & 0xc0) == 0 && data[4] == 0x21 && data[5] == 0x12 &&
           data[6] == 0xa4 && data[7] == 0x42;
}

void tun_qep_set_other_handler(struct tun_qep *ep, tun_qep_other_fn fn, void *ud)
{
    ep->other = fn;
    ep->other_ud = ud;
}

int tun_qep_send_raw(struct tun_qep *ep, const struct sockaddr *to, const uint8_t *data, size_t len)
{
    if (ep->closing)
        return TUN_ECLOSED;
    size_t sent = 0;
    return tun_udp_send(ep->udp, to, data, len, 0, &sent);
}

void tun_qep_get_udp_stats(struct tun_qep *ep, struct tun_udp_stats *st)
{
    tun_udp_get_stats(ep->udp, st);
}

void tun_qep_set_path_sender(struct tun_qep *ep, tun_qep_path_send_fn fn, void *ud)
{
    ep->path_send = fn;
    ep->path_send_ud = ud;
}

static void batch_cb(struct tun_udp *u, int more, void *ud)
{
    (void)u;
    /* At the end of a wake-up, nothing here: the connections touched are marked dirty, and
     * the flush runs from the idle handle on the next loop iteration. By then everything
     * queued was read (one ACK covers many packets) and the application has had its turn (the
     * forwarding layer writes received bytes to TCP in the check phase), so acknowledgements
     * never delay data. In the middle of a long wake-up (one full receive call of many), flush
     * now: the ACK lets a sender held by its congestion window go on while we decrypt the rest
     * (6-11 % more single-stream throughput on the benchmark's veth). */
    if (more)
        flush_all(ud);
}

/* ---- lifecycle -------------------------------------------------------------------------- */

int tun_qep_rebind(struct tun_qep *ep)
{
    if (ep->closing)
        return TUN_ECLOSED;
    if (ep->conns)
        return TUN_EINVAL;
    struct sockaddr_storage bind_addr = ep->local;
    if (bind_addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&bind_addr)->sin_port = 0;
    else
        ((struct sockaddr_in6 *)&bind_addr)->sin6_port = 0;
    struct tun_udp *u = NULL;
    struct sockaddr_storage local;
    int rc = tun_udp_new(ep->loop, (struct sockaddr *)&bind_addr, &u);
    if (rc == 0)
        rc = tun_udp_local_addr(u, &local);
    if (rc == 0)
        rc = tun_udp_start(u, recv_cb, batch_cb, ep);
    if (rc != 0) {
        if (u)
            tun_udp_close(u, NULL, NULL);
        return rc;
    }
    tun_udp_close(ep->udp, NULL, NULL);
    ep->udp = u;
    ep->local = local;
    ep->locallen = tun_sockaddr_len((struct sockaddr *)&ep->local);
    return 0;
}

int tun_qep_new(uv_loop_t *loop, const struct sockaddr *bind_addr, const uint8_t secret[32],
                int is_server, const struct tun_quic_config *cfg, const struct tun_qep_cbs *cbs,
                void *ud, struct tun_qep **out)
{
    struct tun_qep *ep = calloc(1, sizeof(*ep));
    if (!ep)
        return TUN_ENOMEM;
    ep->loop = loop;
    ep->tfd = -1;
    ep->is_server = is_server;
    memcpy(ep->secret, secret, 32);
    /* Reset tokens come from the identity secret, so a server restarted with its key answers
     * packets of connections it lost with tokens their clients recognise: they learn at their
     * next packet, not after the idle timeout. (One-way: a token reveals nothing of the key.) */
    static const char ctx[] = "tunnel/1 stateless reset tokens";
    if (crypto_generichash(ep->reset_secret, sizeof(ep->reset_secret), (const uint8_t *)ctx,
                           sizeof(ctx) - 1, ep->secret, 32) != 0)
        randombytes_buf(ep->reset_secret, sizeof(ep->reset_secret));
    if (cfg)
        ep->cfg = *cfg;
    else
        tun_quic_config_default(&ep->cfg);
    if (cbs)
        ep->cbs = *cbs;
    ep->ud = ud;
    int rc = tun_tls_ctx_new(secret, is_server, TUN_ALPN_TUNNEL, &ep->tls);
    if (rc == 0)
        rc = tun_udp_new(loop, bind_addr, &ep->udp);
    if (rc == 0)
        rc = tun_udp_local_addr(ep->udp, &ep->local);
    if (rc == 0)
        rc = tun_udp_start(ep->udp, recv_cb, batch_cb, ep);
    if (rc != 0) {
        if (ep->udp)
            tun_udp_close(ep->udp, NULL, NULL);
        tun_tls_ctx_free(ep->tls);
        free(ep);
        return rc;
    }
    ep->locallen = tun_sockaddr_len((struct sockaddr *)&ep->local);
    uv_idle_init(loop, &ep->flush_idle);
    ep->flush_idle.data = ep;
    ep->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (ep->tfd >= 0 && uv_poll_init(loop, &ep->tfd_poll, ep->tfd) != 0) {
        close(ep->tfd);
        ep->tfd = -1;
    }
    if (ep->tfd >= 0) {
        ep->tfd_poll.data = ep;
        uv_poll_start(&ep->tfd_poll, UV_READABLE, precise_cb);
    } else {
        tun_log_debug(QUIC, "no timerfd: sub-millisecond deadlines poll the loop");
    }
    *out = ep;
    return 0;
}

int tun_qep_local_addr(struct tun_qep *ep, struct sockaddr_storage *ss)
{
    memcpy(ss, &ep->local, sizeof(*ss));
    return 0;
}

int tun_qep_connect(struct tun_qep *ep, const struct sockaddr *remote, const uint8_t server_key[32],
                    const struct tun_qconn_cbs *cbs, void *ud, struct tun_qconn **out)
{
    return tun_qep_connect_via(ep, NULL, remote, server_key, cbs, ud, out);
}

int tun_qep_connect_via(struct tun_qep *ep, const struct sockaddr *local,
                        const struct sockaddr *remote, const uint8_t server_key[32],
                        const struct tun_qconn_cbs *cbs, void *ud, struct tun_qconn **out)
{
    if (ep->closing)
        return TUN_ECLOSED;
    struct tun_qconn *c;
    int rc = tun__qconn_new(ep, 0, local ? local : (const struct sockaddr *)&ep->local, remote,
                            NULL, server_key, &c);
    if (rc != 0)
        return rc;
    tun_qconn_set_cbs(c, cbs, ud);
    tun__qep_mark_dirty(ep, c); /* sends the Initial */
    *out = c;
    return 0;
}

static void ep_part_closed(struct tun_qep *ep)
{
    if (--ep->pending_closes > 0 || !ep->closing)
        return;
    void (*cb)(void *) = ep->user_closed_cb;
    void *cud = ep->user_closed_ud;
    while (ep->free_chunks) {
        struct sbuf_chunk *ch = ep->free_chunks;
        ep->free_chunks = ch->next;
        free(ch);
    }
    free(ep->cids);
    tun_tls_ctx_free(ep->tls);
    sodium_memzero(ep->secret, sizeof(ep->secret));
    free(ep);
    if (cb)
        cb(cud);
}

static void idle_closed_cb(uv_handle_t *h)
{
    ep_part_closed(h->data);
}

static void tfd_closed_cb(uv_handle_t *h)
{
    struct tun_qep *ep = h->data;
    close(ep->tfd);
    ep->tfd = -1;
    ep_part_closed(ep);
}

static void udp_closed_cb(void *ud)
{
    ep_part_closed(ud);
}

void tun__qep_handle_closed(struct tun_qep *ep)
{
    ep_part_closed(ep);
}

void tun_qep_close(struct tun_qep *ep, uint64_t code, void (*closed)(void *ud), void *ud)
{
    if (ep->closing)
        return;
    ep->user_closed_cb = closed;
    ep->user_closed_ud = ud;
    /* Send CONNECTION_CLOSE on every connection and tear them down now. Every handle of the
     * endpoint is closing when this returns (the host's shutdown relies on it); memory is
     * freed once the last close callback has run. */
    for (struct tun_qconn *c = ep->conns; c; c = c->next)
        if (!c->closed)
            tun__qconn_abort(c, code, "endpoint closing");
    ep->closing = 1;
    while (ep->conns)
        tun__qconn_flush(ep->conns);
    ep->dirty = NULL;
    ep->pending_closes += 2;
    uv_close((uv_handle_t *)&ep->flush_idle, idle_closed_cb);
    if (ep->tfd >= 0) {
        ep->pending_closes++;
        uv_close((uv_handle_t *)&ep->tfd_poll, tfd_closed_cb);
    }
    tun_udp_close(ep->udp, udp_closed_cb, ep);
}
